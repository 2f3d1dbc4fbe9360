//! Oracles: judgements of what the nodes did against the truth model.
//!
//! | oracle            | when                           | what                                             |
//! |-------------------|--------------------------------|--------------------------------------------------|
//! | `dot-unique`      | every `Event::WriteIssued`     | a dot names one client write, run-wide, unless no copy of its first issue survives anywhere (its node's disk lost it before it left) |
//! | `dot-mapping`     | every read / final state       | each sibling's dot was issued for a write of the key, and its value carries that write's id |
//! | `antichain`       | every read / final state       | no sibling happened before another               |
//! | `lost-ack`        | every read / final state       | every write acknowledged before the read is <= some sibling, unless a delete supersedes it |
//! | `stale-read`      | every read / final state       | no sibling happened before a write acknowledged before the read (deletes never resurrect) |
//! | `ack-durable`     | every `Response::Written`      | at least W replicas of the key hold the write durably |
//! | `ack-has-dot`     | every `Response::Written`      | an acknowledged write was issued a dot            |
//! | `context-refused` | every answer to a hostile write | a write whose context is forged, of another key, truncated or of the old format is refused as a bad context, and no dot was issued for it |
//! | `context-accepted` | every answer to another write | a write with a context a read of the same key returned (however long ago) is never refused for its context |
//! | `context-bounded` | every read's context, and the start of a run | a context handed out decodes, is no longer than `max_token_len` of its entries, and limits of exactly its size accept it; a context of the largest ids, epochs and counters takes exactly `max_token_len` |
//! | `decodable`       | every `Event::Undecodable`     | no node receives a message it cannot decode      |
//! | `hint-durable`    | every deletion of a live hint record | the hint's target already holds every sibling of the hint's last stored state durably (a reaped tombstone excepted) |
//! | `clean-restart`   | every `Event::Recovered` and `Event::Serving` after a clean shutdown | a node that shut down cleanly (serving, on a disk left undamaged) starts again, and serves, in the same epoch |
//! | `shutdown-completes` | a clean restart's deadline (`shutdown_bound_ms`) | a node asked to shut down cleanly has finished (or halted on a failed sync) |
//! | `config-refused`  | every node start                | each of an operator's one-field configuration mistakes ([`crate::misconfig`]) is refused by `Node::new`, naming its field |
//! | `config-accepted` | every node start                | the configuration at the edge of each rule, and the node's own, are accepted |
//! | `placement`       | the start of a run               | core's ring places every workload key and partition where the reference model ([`crate::placement`]) does |
//! | `metrics-truthful` | every node stop and the end of a run | a node's counters (client requests and errors, bad contexts, writes, syncs, undecodable, unknown and stale-protocol messages, damaged records, keys repaired by anti-entropy) match what it was seen to do since it started; a recovery reports as many damaged records as it flagged |
//! | `io-order`        | every storage output              | the io ids a node asks for increase (a driver matches completions by them) |
//! | `progress`        | liveness phase, after the final reads | the healed cluster acknowledges one more write of every key |
//! | `request-valid`   | every honest request refused as invalid | only the sibling limit refuses it: keys and values are exactly as long as the nodes' limits allow |
//! | `answered`        | every client timeout              | a node that took a request and is still the same running process answered it (its own request timeout is shorter than the client's); not judged on a node whose clock stepped backwards |
//! | `reaped`          | liveness phase, once converged    | every key that holds only deletes is reaped on every node before the liveness bound |
//! | `protocols-agreed` | liveness phase, once converged | every serving node holds, with each serving peer, the protocol their releases negotiate (none with a peer it refuses) |
//! | `hostile-frame`   | every frame of a hostile peer ([`crate::hostile`]) | the node reports it as its kind demands (undecodable, unknown type, or nothing) and answers none |
//! | `shutdown-answers` | every clean shutdown's `ShutdownComplete` | every client request the node took is answered before it stops |
//! | `status-truthful` | every `Serving`, `Refusing` and `Halted` event | the node's health, refusal and halt reason say the same |
//! | `corrupt-truthful` | every `Event::CorruptRecord`   | the record was damaged by the disk (a record the node wrote reads back) |
//! | `rejoin-bounded`  | every timer of a node that started on an empty disk | once a majority of the members (itself included) has served and been reachable for its probe timeout and two handshake retries, it no longer waits for the rest |
//! | `refusal-heeded`  | every handshake refusal sent or delivered | neither the node that refuses a peer nor the one it refuses holds a protocol with the other |
//! | `protocol-kept`   | every message sent (handshakes aside) | it travels at the protocol its sender agreed with the receiver |
//! | `reap-coordinated` | every reap query sent          | only a key's first replica (in the sender's ring) coordinates the reaping of its tombstone |
//! | `merkle-fresh`    | liveness phase, once converged | every node's Merkle roots equal roots built afresh from the states it holds |
//! | `convergence`     | liveness phase                 | replicas agree (states, Merkle roots), hints drain, final reads succeed |
//!
//! The version oracles (`no-early-format`, `migration-keeps-records`,
//! `cluster-version-monotone`, `restore-epoch`, `refusal-visible`,
//! `finalize-idempotent`,
//! `expectation`, and `decodable` for `Event::UnknownMessage`) are in
//! [`crate::oracle_versions`].
//!
//! With `--unlimited-faults` (see [`crate::atlas`]) `lost-ack`,
//! `stale-read` and `convergence` are not judged; the rest are.
//!
//! "Acknowledged before the read" uses the frontier of acknowledged writes
//! snapshotted when the read was sent; checking the frontier suffices since
//! every acknowledged write is <= a frontier element.

use bytes::Bytes;
use cairn_core::context::{inspect, max_token_len};
use cairn_core::storage::{data_key, decode_context, decode_record, Record, META_KEY, SCHEMAS};
use cairn_core::{ClientError, Context, Dot, Limits, NodeId, Response};

use crate::history::{History, WriteId};

/// A failed judgement: the oracle's name and what it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub oracle: &'static str,
    pub message: String,
}

impl Violation {
    pub fn new(oracle: &'static str, message: String) -> Violation {
        Violation { oracle, message }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.oracle, self.message)
    }
}

fn describe(h: &History, w: WriteId) -> String {
    let x = h.write(w);
    let kind = if x.tombstone { "delete" } else { "put" };
    let dots: Vec<String> = x.dots.iter().map(|d| d.to_string()).collect();
    match x.acked_at {
        Some(a) => format!(
            "{kind} {w} [dot {}] sent {} acked {}",
            dots.join(","),
            x.sent_at,
            a
        ),
        None => format!(
            "{kind} {w} [dot {}] sent {} (not acked)",
            dots.join(","),
            x.sent_at
        ),
    }
}

fn list(h: &History, ws: &[WriteId]) -> String {
    if ws.is_empty() {
        return "none".into();
    }
    ws.iter()
        .map(|&w| describe(h, w))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `context-bounded`: a context handed to a client is a well-formed token
/// no longer than [`max_token_len`] of its entry count, and the tightest
/// limits that allow that many entries (and that length) accept it: the
/// limits are inclusive, so a node configured for `e` entries never refuses
/// a context of `e`.
pub fn check_context(
    context: &Context,
    what: &(impl std::fmt::Display + ?Sized),
) -> Result<(), Violation> {
    let token = context.as_bytes();
    if token.is_empty() {
        return Ok(());
    }
    let bad = |why: String| {
        Err(Violation::new(
            "context-bounded",
            format!("{what} returned a context of {} bytes {why}", token.len()),
        ))
    };
    let roomy = Limits {
        max_context_entries: usize::MAX,
        max_context_len: token.len(),
        ..Limits::default()
    };
    let entries = match inspect(token, &roomy) {
        Ok(vv) => vv.entries().len(),
        Err(e) => return bad(format!("that does not decode: {e}")),
    };
    let max = max_token_len(entries);
    if token.len() > max {
        return bad(format!(
            "for {entries} entries, more than the {max} bytes such a context can need"
        ));
    }
    let tight = Limits {
        max_context_entries: entries,
        max_context_len: max,
        ..Limits::default()
    };
    if let Err(e) = inspect(token, &tight) {
        return bad(format!(
            "that limits of exactly {entries} entries and {max} bytes refuse: {e}"
        ));
    }
    Ok(())
}

/// Checks the siblings of one read (already mapped to writes) against the
/// writes acknowledged before the read was sent. `what` names the read for
/// the message (e.g. "read 123 by client 4 via n2 at 3.1s").
pub fn check_read(
    h: &History,
    key: u32,
    siblings: &[WriteId],
    acked_before: &[WriteId],
    what: &(impl std::fmt::Display + ?Sized),
) -> Result<(), Violation> {
    let k = h.key_label(key);
    // (a) antichain.
    for &a in siblings {
        for &b in siblings {
            if h.lt(a, b) {
                let twice = [a, b]
                    .iter()
                    .find(|&&w| h.write(w).dots.len() > 1)
                    .map(|&w| {
                        format!(
                            " (write {w} was issued {} dots: one client write was applied more than once)",
                            h.write(w).dots.len()
                        )
                    })
                    .unwrap_or_default();
                return Err(Violation::new(
                    "antichain",
                    format!(
                        "{what} on key {k} returned write {a} together with its descendant {b}{twice}: {}",
                        list(h, siblings)
                    ),
                ));
            }
        }
    }
    // (b) no lost acknowledged write.
    for &f in acked_before {
        if siblings.iter().any(|&s| h.leq(f, s)) || h.deleted_by(f).is_some() {
            continue;
        }
        return Err(Violation::new(
            "lost-ack",
            format!(
                "{what} on key {k} lost acknowledged write {}: no returned sibling is it or a descendant, and no delete supersedes it; returned {}",
                describe(h, f),
                list(h, siblings)
            ),
        ));
    }
    // (c) no stale sibling / resurrection.
    for &s in siblings {
        if let Some(&f) = acked_before.iter().find(|&&f| h.lt(s, f)) {
            return Err(Violation::new(
                "stale-read",
                format!(
                    "{what} on key {k} returned write {s}, an ancestor of acknowledged write {}: returned {}",
                    describe(h, f),
                    list(h, siblings)
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a converged state of a key against every acknowledged write.
pub fn check_final_state(h: &History, key: u32, siblings: &[WriteId]) -> Result<(), Violation> {
    check_read(h, key, siblings, h.frontier(key), "the converged state")
}

/// True when a node's durable image holds a data record of `user_key`, in
/// the live schema (named by the durable metadata record), whose state
/// context covers one of `dots`. `durable` looks a storage key up.
pub fn durable_covers<'a>(
    durable: impl Fn(&[u8]) -> Option<&'a Bytes>,
    partition: u16,
    user_key: &[u8],
    dots: &[Dot],
) -> bool {
    durable(META_KEY)
        .and_then(|m| durable_schema(m))
        .is_some_and(|schema| durable_covers_in(durable, schema, partition, user_key, dots))
}

/// The live schema named by a durable metadata record.
pub fn durable_schema(meta: &[u8]) -> Option<u16> {
    match decode_record(META_KEY, meta) {
        Ok(Record::Meta(meta)) => Some(meta.schema),
        _ => None,
    }
}

/// [`durable_covers`] with the live schema already known.
pub fn durable_covers_in<'a>(
    durable: impl Fn(&[u8]) -> Option<&'a Bytes>,
    schema: u16,
    partition: u16,
    user_key: &[u8],
    dots: &[Dot],
) -> bool {
    let key = data_key(schema, partition, user_key);
    let Some(v) = durable(&key) else {
        return false;
    };
    // What `decode_record` does with a data record, without copying the
    // user key out of the record key.
    let s = u16::from(key[1]);
    if !SCHEMAS.contains(&s) {
        return false;
    }
    let user = if s >= 3 { key.get(4..) } else { key.get(2..) };
    if user != Some(user_key) {
        return false;
    }
    // Only the context matters: decode it without copying the values.
    match decode_context(&key, v) {
        Ok(context) => dots.iter().any(|&d| context.covers(d)),
        Err(_) => false,
    }
}

/// Judges the answer to a write (the `Written` or error it got): a hostile
/// write (`hostile` names how its context was made up) must be refused as a
/// bad context without a dot issued for it (`context-refused`); any other
/// write's context came from a read of its key and must never be refused
/// (`context-accepted`). `None` when the answer says nothing about
/// contexts (a legitimate write that succeeded or failed otherwise).
pub fn check_write_context(
    h: &History,
    write: WriteId,
    hostile: Option<&str>,
    answer: &Response,
    what: &(impl std::fmt::Display + ?Sized),
) -> Option<(&'static str, Result<(), Violation>)> {
    let x = h.write(write);
    let k = h.key_label(x.key);
    let a = |how: &str| {
        if how.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        }
    };
    let refused = match answer {
        Response::Error(ClientError::BadContext(why)) => Some(why),
        _ => None,
    };
    match (hostile, refused) {
        (Some(how), Some(_)) if !x.dots.is_empty() => Some((
            "context-refused",
            Err(Violation::new(
                "context-refused",
                format!(
                    "{what}: write {write} on key {k} with {} {how} context was refused as a bad context, but a coordinator issued dot {} for it",
                    a(how),
                    x.dots[0]
                ),
            )),
        )),
        (Some(_), Some(_)) => Some(("context-refused", Ok(()))),
        (Some(how), None) => Some((
            "context-refused",
            Err(Violation::new(
                "context-refused",
                format!(
                    "{what}: write {write} on key {k} with {} {how} context was answered {answer:?} instead of being refused as a bad context",
                    a(how)
                ),
            )),
        )),
        (None, Some(why)) => Some((
            "context-accepted",
            Err(Violation::new(
                "context-accepted",
                format!(
                    "{what}: write {write} on key {k}, with a context a read of that key returned, was refused: {why}"
                ),
            )),
        )),
        (None, None) => None,
    }
}

/// Acknowledgement only after W durable copies: `holders` lists each replica
/// of the key with whether its durable image covers the write.
pub fn check_ack_durable(
    h: &History,
    write: WriteId,
    holders: &[(NodeId, bool)],
    w: u8,
    what: &(impl std::fmt::Display + ?Sized),
) -> Result<(), Violation> {
    let x = h.write(write);
    if x.dots.is_empty() {
        return Err(Violation::new(
            "ack-has-dot",
            format!(
                "{what}: write {write} on key {} was acknowledged but no coordinator issued a dot for it",
                h.key_label(x.key)
            ),
        ));
    }
    let durable = holders.iter().filter(|(_, d)| *d).count();
    if durable < w as usize {
        let on: Vec<String> = holders
            .iter()
            .map(|(n, d)| format!("{n}:{}", if *d { "durable" } else { "missing" }))
            .collect();
        return Err(Violation::new(
            "ack-durable",
            format!(
                "{what}: {} on key {} acknowledged with {durable} durable replica(s), W={w} ({})",
                describe(h, write),
                h.key_label(x.key),
                on.join(" ")
            ),
        ));
    }
    Ok(())
}

/// `protocols-agreed`: in the converged cluster, every serving node holds,
/// for every other serving node, the protocol the handshake rules
/// ([`cairn_core::version::negotiate`]) give their two releases, and none
/// with a peer whose release they refuse.
pub fn check_protocols(nodes: &[&cairn_core::Node]) -> Result<(), Violation> {
    for a in nodes {
        for b in nodes {
            if a.id() == b.id() {
                continue;
            }
            let (ra, rb) = (a.release(), b.release());
            let want =
                cairn_core::version::negotiate(ra.version, ra.protocols, rb.version, rb.protocols)
                    .ok();
            let got = a.peer_protocol(b.id());
            if got != want {
                return Err(Violation::new(
                    "protocols-agreed",
                    format!(
                        "{} (release {}) holds protocol {got:?} with {} (release {}), but their releases agree on {want:?}",
                        a.id(),
                        ra.version,
                        b.id(),
                        rb.version
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `merkle-fresh`: a node's anti-entropy trees, kept up incrementally on
/// every change, equal trees built afresh from the states it holds (the
/// layout of [`cairn_core::merkle`]: a key's leaf, XORed into its bucket;
/// the root hashes the buckets in order).
pub fn check_merkle(node: &cairn_core::Node) -> Result<(), Violation> {
    use cairn_core::merkle::{bucket_of, leaf, BUCKETS};
    let ring = node.ring();
    let mut trees = vec![[0u64; BUCKETS]; ring.partitions() as usize];
    for (key, state) in node.keys() {
        let p = ring.partition_of(key) as usize;
        trees[p][bucket_of(key) as usize] ^= leaf(key, state.digest());
    }
    for (p, buckets) in trees.iter().enumerate() {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for b in buckets {
            h.update(&b.to_le_bytes());
        }
        let want = h.digest();
        let got = node.merkle_root(p as u16);
        if got != want {
            return Err(Violation::new(
                "merkle-fresh",
                format!(
                    "{} reports Merkle root {got:#x} for partition {p}, but its states hash to {want:#x}",
                    node.id()
                ),
            ));
        }
    }
    Ok(())
}

/// `status-truthful`: what a node says of itself (health, refusal, halt
/// reason), read by operators and orchestrators, agrees with the event it
/// just emitted: serving, refusing for a reason, or halted for one.
pub fn check_status(node: &cairn_core::Node, e: &cairn_core::Event) -> Result<(), Violation> {
    use cairn_core::wire::Health;
    use cairn_core::Event;
    if !matches!(
        e,
        Event::Serving | Event::Refusing { .. } | Event::Halted { .. }
    ) {
        return Ok(());
    }
    let (health, refusal, halt) = (node.health(), node.refusal(), node.halt_reason());
    let ok = match e {
        Event::Serving => health == Health::Serving && refusal.is_none() && halt.is_none(),
        Event::Refusing { reason } => {
            health == Health::Refusing && refusal == Some(reason.as_str())
        }
        Event::Halted { reason } => health == Health::Halted && halt == Some(reason.as_str()),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(Violation::new(
        "status-truthful",
        format!(
            "{} emitted {e:?} but reports health {health:?}, refusal {refusal:?}, halt reason {halt:?}",
            node.id()
        ),
    ))
}

/// `context-bounded`, for the largest contexts: a context of `n` entries
/// whose node ids, epochs and counters all take their most bytes encodes
/// to exactly [`max_token_len`]`(n)` (the bound is tight, so limits derived
/// from it neither refuse a real context nor waste room), and limits of
/// exactly that size accept it. Checked at the start of every run.
pub fn check_token_bound(key: &cairn_core::ContextKey) -> Result<(), Violation> {
    use cairn_core::context::ContextMac;
    use cairn_core::{Actor, VersionVector};
    let mac = ContextMac::new(key);
    for n in [1usize, 2, 3, 4, 7, 8, 127, 128, 129, 200] {
        let vv = VersionVector::from_entries((0..n as u32).map(|i| {
            let actor = Actor {
                node: NodeId(u32::MAX - i),
                epoch: u32::MAX,
            };
            (actor, u64::MAX)
        }));
        let token = mac.issue(b"bound", &vv);
        let max = max_token_len(n);
        let len = token.as_bytes().len();
        let tight = Limits {
            max_context_entries: n,
            max_context_len: max,
            ..Limits::default()
        };
        let refused = mac.verify(b"bound", token.as_bytes(), &tight).err();
        if len != max || refused.is_some() {
            return Err(Violation::new(
                "context-bounded",
                format!(
                    "a context of {n} entries of the largest ids, epochs and counters takes {len} bytes, but max_token_len({n}) = {max}{}",
                    refused.map_or(String::new(), |e| format!(", and limits of exactly that size refuse it: {e}"))
                ),
            ));
        }
    }
    Ok(())
}

/// `reap-coordinated`: a message `node` sends, if it is a reap query, comes
/// from the key's first replica (one coordinator a tombstone, so a reap
/// round costs one query and one commit a replica).
pub fn check_reap_query(node: &cairn_core::Node, bytes: &[u8]) -> Result<(), Violation> {
    use cairn_core::wire::{decode, Decoded, Message};
    let speaks = node.release().protocols;
    let Ok(Decoded::Known {
        message: Message::ReapQuery(q),
        ..
    }) = decode(bytes, speaks, usize::MAX)
    else {
        return Ok(());
    };
    let me = node.config().id;
    let first = node.ring().replicas_of(&q.key).first().copied();
    if first == Some(me) {
        return Ok(());
    }
    Err(Violation::new(
        "reap-coordinated",
        format!(
            "{me} asked to reap key {:?}, whose first replica is {}",
            String::from_utf8_lossy(&q.key),
            first.map_or("none".into(), |f| f.to_string())
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::encode_value;
    use cairn_core::{Actor, KeyState, RequestId, Time, VersionVector};

    fn dot(n: u32, c: u64) -> Dot {
        Dot {
            actor: Actor {
                node: NodeId(n),
                epoch: 1,
            },
            counter: c,
        }
    }

    /// key "k": w1 <- w2 (rmw), w3 blind and concurrent, d4 deletes w2.
    fn history() -> (History, [WriteId; 4]) {
        let mut h = History::new(&[Bytes::from_static(b"k")]);
        let w1 = h.begin_write(0, RequestId(1), &[], false, Time(10));
        h.write_issued(RequestId(1), b"k", dot(1, 1), false, 1, false)
            .unwrap();
        let w2 = h.begin_write(0, RequestId(2), &[w1], false, Time(20));
        h.write_issued(RequestId(2), b"k", dot(1, 2), false, 1, false)
            .unwrap();
        let w3 = h.begin_write(0, RequestId(3), &[], false, Time(30));
        h.write_issued(RequestId(3), b"k", dot(2, 1), false, 2, false)
            .unwrap();
        let d4 = h.begin_write(0, RequestId(4), &[w2], true, Time(40));
        (h, [w1, w2, w3, d4])
    }

    #[test]
    fn hostile_writes_must_be_refused_and_others_never_for_their_context() {
        let (h, [_, w2, _, d4]) = history();
        let bad = Response::Error(ClientError::BadContext("forged".into()));
        let verdict = |w, hostile, answer: &Response| {
            check_write_context(&h, w, hostile, answer, "write").map(|(o, r)| (o, r.is_ok()))
        };
        // d4 was never issued a dot: a refusal is right.
        assert_eq!(
            verdict(d4, Some("forged"), &bad),
            Some(("context-refused", true))
        );
        assert_eq!(
            verdict(d4, Some("forged"), &Response::Written),
            Some(("context-refused", false))
        );
        let timeout = Response::Error(ClientError::Timeout { acks: 0, needed: 2 });
        assert_eq!(
            verdict(d4, Some("replayed"), &timeout),
            Some(("context-refused", false))
        );
        // w2 was issued a dot: refused as a bad context, it still took effect.
        assert_eq!(
            verdict(w2, Some("truncated"), &bad),
            Some(("context-refused", false))
        );
        assert_eq!(verdict(w2, None, &bad), Some(("context-accepted", false)));
        assert_eq!(verdict(w2, None, &Response::Written), None);
        assert_eq!(verdict(w2, None, &timeout), None);
    }

    #[test]
    fn a_correct_read_passes() {
        let (mut h, [w1, w2, w3, _]) = history();
        h.acked(w1, Time(15));
        h.acked(w2, Time(25));
        h.acked(w3, Time(35));
        let snap = h.frontier(0).to_vec();
        assert_eq!(snap, vec![w2, w3]);
        assert_eq!(check_read(&h, 0, &[w2, w3], &snap, "read"), Ok(()));
        // A newer unacknowledged write may stand in for older ones.
        let (mut h2, [w1, w2, _, _]) = history();
        h2.acked(w1, Time(15));
        let snap = h2.frontier(0).to_vec();
        assert_eq!(check_read(&h2, 0, &[w2], &snap, "read"), Ok(()));
        assert_eq!(check_final_state(&h2, 0, &[w2]), Ok(()));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let (mut h, [w1, w2, w3, _]) = history();
        h.acked(w2, Time(25));
        h.acked(w3, Time(35));
        let snap = h.frontier(0).to_vec();
        let e = check_read(&h, 0, &[w2], &snap, "read 9").unwrap_err();
        assert_eq!(e.oracle, "lost-ack");
        assert!(
            e.message.contains("put 3") && e.message.contains("read 9"),
            "{}",
            e.message
        );
        // An empty read loses both.
        assert_eq!(
            check_read(&h, 0, &[], &snap, "read").unwrap_err().oracle,
            "lost-ack"
        );
        assert_eq!(
            check_final_state(&h, 0, &[w1, w3]).unwrap_err().oracle,
            "lost-ack"
        );
        assert_eq!(check_final_state(&h, 0, &[w2, w3]), Ok(()));
    }

    #[test]
    fn a_delete_that_supersedes_excuses_a_missing_write() {
        let (mut h, [_, w2, _, d4]) = history();
        h.acked(w2, Time(25));
        let snap = h.frontier(0).to_vec();
        // Not yet issued: the missing write is a violation.
        assert!(check_read(&h, 0, &[], &snap, "read").is_err());
        h.write_issued(RequestId(4), b"k", dot(3, 1), true, 3, false)
            .unwrap();
        assert_eq!(check_read(&h, 0, &[], &snap, "read"), Ok(()));
        assert_eq!(check_read(&h, 0, &[d4], &snap, "read"), Ok(()));
    }

    #[test]
    fn a_stale_read_is_caught() {
        let (mut h, [w1, w2, _, _]) = history();
        h.acked(w2, Time(25));
        let snap = h.frontier(0).to_vec();
        // Returning the superseded w1 instead of w2 loses w2.
        let e = check_read(&h, 0, &[w1], &snap, "read").unwrap_err();
        assert_eq!(e.oracle, "lost-ack");
        // Next to a descendant of w2 it is not maximal either.
        let w5 = h.begin_write(0, RequestId(5), &[w2], false, Time(50));
        let e = check_read(&h, 0, &[w5, w1], &snap, "read").unwrap_err();
        assert_eq!(e.oracle, "antichain");
    }

    #[test]
    fn a_resurrection_after_a_delete_is_caught() {
        let (mut h, [w1, w2, w3, d4]) = history();
        h.acked(w2, Time(25));
        h.write_issued(RequestId(4), b"k", dot(3, 1), true, 3, false)
            .unwrap();
        h.acked(d4, Time(45));
        let snap = h.frontier(0).to_vec();
        assert_eq!(snap, vec![d4]);
        // The tombstone was reaped: an empty read is fine, so is a concurrent value.
        assert_eq!(check_read(&h, 0, &[], &snap, "read"), Ok(()));
        assert_eq!(check_read(&h, 0, &[w3], &snap, "read"), Ok(()));
        // The deleted value coming back is not.
        let e = check_read(&h, 0, &[w2], &snap, "read 7").unwrap_err();
        assert_eq!(e.oracle, "stale-read");
        assert!(
            e.message
                .contains("ancestor of acknowledged write delete 4"),
            "{}",
            e.message
        );
        let e = check_read(&h, 0, &[w1, w3], &snap, "read").unwrap_err();
        assert_eq!(e.oracle, "stale-read");
        assert_eq!(
            check_final_state(&h, 0, &[w2]).unwrap_err().oracle,
            "stale-read"
        );
    }

    #[test]
    fn a_read_that_is_not_an_antichain_is_caught() {
        let (h, [w1, w2, w3, _]) = history();
        let e = check_read(&h, 0, &[w1, w2, w3], &[], "read").unwrap_err();
        assert_eq!(e.oracle, "antichain");
        assert!(
            e.message.contains("write 1") && e.message.contains("descendant 2"),
            "{}",
            e.message
        );
        assert_eq!(check_read(&h, 0, &[w1, w3], &[], "read"), Ok(()));
    }

    #[test]
    fn acknowledgement_needs_w_durable_replicas() {
        let (mut h, [w1, _, _, d4]) = history();
        h.acked(w1, Time(15));
        let yes = [(NodeId(1), true), (NodeId(2), true), (NodeId(3), false)];
        let no = [(NodeId(1), true), (NodeId(2), false), (NodeId(3), false)];
        assert_eq!(check_ack_durable(&h, w1, &yes, 2, "ack"), Ok(()));
        let e = check_ack_durable(&h, w1, &no, 2, "ack").unwrap_err();
        assert_eq!(e.oracle, "ack-durable");
        assert!(e.message.contains("n2:missing"), "{}", e.message);
        assert_eq!(
            check_ack_durable(&h, d4, &yes, 2, "ack")
                .unwrap_err()
                .oracle,
            "ack-has-dot"
        );
    }

    #[test]
    fn durable_records_are_read_through_the_storage_codec() {
        use cairn_core::storage::{encode_meta, encode_state, Meta, SCHEMAS};
        use std::collections::BTreeMap;
        for schema in SCHEMAS {
            let mut s = KeyState::new();
            s.apply_write(&VersionVector::new(), dot(1, 2), Some(encode_value(1, 8)));
            let mut disk: BTreeMap<Bytes, Bytes> = BTreeMap::new();
            let covers = |disk: &BTreeMap<Bytes, Bytes>, d: Dot| {
                durable_covers(|k| disk.get(k), 5, b"k", &[d])
            };
            let record_key = data_key(schema, 5, b"k");
            disk.insert(record_key.clone(), encode_state(schema, &record_key, &s));
            assert!(!covers(&disk, dot(1, 1)), "no metadata: nothing is live");
            let meta = Meta {
                epoch: 1,
                next_counter: 0,
                clean: false,
                schema,
                cluster_version: "0.2.0".into(),
                generation: 1,
            };
            disk.insert(Bytes::from_static(META_KEY), encode_meta(&meta));
            assert!(covers(&disk, dot(1, 1)));
            assert!(covers(&disk, dot(1, 2)));
            assert!(!covers(&disk, dot(1, 3)));
            assert!(!covers(&disk, dot(2, 1)));
            assert!(!durable_covers(|k| disk.get(k), 5, b"other", &[dot(1, 1)]));
            let mut torn = encode_state(schema, &record_key, &s).to_vec();
            torn.pop();
            disk.insert(data_key(schema, 5, b"k"), Bytes::from(torn));
            assert!(!covers(&disk, dot(1, 1)), "a torn record counts");
        }
    }
}
