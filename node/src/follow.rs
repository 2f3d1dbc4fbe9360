//! `cairn finalize --wait` and `cairn status --wait`: follow the schema
//! migrations a cluster version asks for until every node has finished.
//!
//! A node knows only its own HTTP address, so the follower polls one node's
//! `/v1/status`: what the node says of itself (live schema, migration state,
//! refusal) and what gossip says of each peer (live schema, health, whether
//! it is up). Gossip carries a member's own report, so a peer listed as
//! serving the target schema has finished its migration. A node refusing to
//! serve (a migration that kept failing, a release the cluster cannot take)
//! or halted ends the wait with its reason; anything else is waited for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_core::version::ReleaseId;
use serde_json::Value;

use crate::client::Client;

/// How one member stands, as the polled node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Member {
    Done,
    /// Still to finish: what it is doing.
    Pending(String),
    /// Will not finish without an operator: why.
    Failed(String),
}

/// Where the cluster stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every node serves `schema` and no migration runs.
    Done,
    /// One line per node, in node order.
    Pending(Vec<String>),
    /// A node that will not finish, and why.
    Failed(String),
}

/// The schema a cluster version asks every node to keep its data in.
pub fn schema_of(cluster_version: &str) -> Option<u16> {
    ReleaseId::by_version(cluster_version).map(|r| r.release().schema)
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// Judges one `/v1/status` document against `schema`.
pub fn judge(status: &Value, schema: u16) -> Verdict {
    let mut members: BTreeMap<u64, (String, Member)> = BTreeMap::new();
    if let Some(id) = num(&status["id"]) {
        members.insert(id, (format!("node {id}"), judge_self(status, schema)));
    }
    for p in status["peers"].as_array().into_iter().flatten() {
        if let Some(id) = num(&p["id"]) {
            members.insert(id, (format!("node {id}"), judge_peer(p, schema)));
        }
    }
    let mut lines = Vec::new();
    let mut done = true;
    for (name, m) in members.values() {
        match m {
            Member::Failed(why) => return Verdict::Failed(format!("{name}: {why}")),
            Member::Pending(what) => {
                done = false;
                lines.push(format!("{name}: {what}"));
            }
            Member::Done => lines.push(format!("{name}: schema {schema} live, serving")),
        }
    }
    if done && !members.is_empty() {
        Verdict::Done
    } else {
        Verdict::Pending(lines)
    }
}

fn judge_self(s: &Value, schema: u16) -> Member {
    let live = num(&s["live_schema"]);
    let migration = &s["migration"];
    if let Some(why) = s["refusal"].as_str() {
        return Member::Failed(format!("refuses to serve: {why}"));
    }
    if let Some(why) = s["halt_reason"].as_str() {
        return Member::Failed(format!("halted: {why}"));
    }
    if migration["state"] == "running" {
        return Member::Pending(format!(
            "migrating schema {} to {}",
            migration["from"], migration["to"]
        ));
    }
    if live != Some(schema as u64) {
        return Member::Pending(format!(
            "schema {} live, migration to schema {schema} not started",
            live.map_or("?".into(), |l| l.to_string())
        ));
    }
    if s["health"] != "Serving" {
        return Member::Pending(format!(
            "schema {schema} live, {}",
            s["health"].as_str().unwrap_or("not serving")
        ));
    }
    Member::Done
}

fn judge_peer(p: &Value, schema: u16) -> Member {
    let health = p["health"].as_str().unwrap_or("unknown");
    let live = num(&p["schema"]);
    match health {
        "Refusing" => {
            return Member::Failed(format!(
                "refuses to serve (release {}; its own status says why)",
                p["release"].as_str().unwrap_or("?")
            ))
        }
        "Halted" => return Member::Failed("halted (its own status says why)".into()),
        _ => {}
    }
    let last = match live {
        Some(l) => format!("schema {l} live, {health}"),
        None => "nothing heard yet".into(),
    };
    if p["up"] != true {
        return Member::Pending(format!("down (last heard: {last})"));
    }
    if live == Some(schema as u64) && health == "Serving" {
        return Member::Done;
    }
    if health == "Migrating" {
        return Member::Pending(format!("migrating ({last})"));
    }
    Member::Pending(last)
}

/// Polls `client`'s status every `every` until [`judge`] says done (Ok),
/// failed or `timeout` passes (Err, with the reason). `progress` is called
/// with each new state of the cluster (one line per node).
pub fn follow(
    client: &Client,
    schema: u16,
    timeout: Duration,
    every: Duration,
    mut progress: impl FnMut(&[String]),
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<Vec<String>> = None;
    loop {
        let last_error = match client.json("/v1/status") {
            Ok(status) => match judge(&status, schema) {
                Verdict::Done => return Ok(()),
                Verdict::Failed(why) => return Err(why),
                Verdict::Pending(lines) => {
                    if last.as_ref() != Some(&lines) {
                        progress(&lines);
                        last = Some(lines);
                    }
                    None
                }
            },
            Err(e) => Some(e.to_string()),
        };
        if Instant::now() >= deadline {
            let state = match (last_error, last) {
                (Some(e), _) => format!("the node did not answer: {e}"),
                (None, Some(lines)) => lines.join("; "),
                (None, None) => "no status".into(),
            };
            return Err(format!(
                "timed out after {}s waiting for schema {schema} on every node: {state}",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(peers: Value) -> Value {
        json!({
            "id": 1, "live_schema": 2, "health": "Serving", "refusal": null,
            "halt_reason": null, "migration": {"state": "finished", "from": 1, "to": 2},
            "peers": peers,
        })
    }

    fn peer(id: u64, schema: u64, health: &str, up: bool) -> Value {
        json!({"id": id, "schema": schema, "health": health, "up": up, "release": "0.2.0"})
    }

    #[test]
    fn done_once_every_node_serves_the_schema() {
        let s = status(json!([
            peer(2, 2, "Serving", true),
            peer(3, 2, "Serving", true)
        ]));
        assert_eq!(judge(&s, 2), Verdict::Done);
    }

    #[test]
    fn a_migrating_or_down_peer_is_waited_for() {
        let s = status(json!([
            peer(2, 1, "Migrating", true),
            peer(3, 1, "Serving", false)
        ]));
        let Verdict::Pending(lines) = judge(&s, 2) else {
            panic!("should wait");
        };
        assert_eq!(lines[0], "node 1: schema 2 live, serving");
        assert!(lines[1].starts_with("node 2: migrating"), "{lines:?}");
        assert!(lines[2].starts_with("node 3: down"), "{lines:?}");
    }

    #[test]
    fn a_refusing_node_fails_the_wait() {
        let s = status(json!([
            peer(2, 1, "Refusing", true),
            peer(3, 2, "Serving", true)
        ]));
        let Verdict::Failed(why) = judge(&s, 2) else {
            panic!("should fail");
        };
        assert!(why.starts_with("node 2: refuses to serve"), "{why}");
        let mut s = status(json!([]));
        s["refusal"] = json!("migration failed 5 times: disk full");
        s["health"] = json!("Refusing");
        let Verdict::Failed(why) = judge(&s, 2) else {
            panic!("should fail");
        };
        assert!(why.contains("disk full"), "{why}");
    }

    #[test]
    fn the_polled_nodes_running_migration_is_waited_for() {
        let mut s = status(json!([]));
        s["live_schema"] = json!(1);
        s["health"] = json!("Migrating");
        s["migration"] = json!({"state": "running", "from": 1, "to": 2});
        assert_eq!(
            judge(&s, 2),
            Verdict::Pending(vec!["node 1: migrating schema 1 to 2".into()])
        );
    }
}
