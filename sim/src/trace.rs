//! The trace: every delivered or dropped message, fault, client operation and
//! oracle check.
//!
//! Each record is hashed incrementally (xxh3-64 over a compact binary
//! encoding), so the trace hash proves determinism whether or not the trace
//! is written out. JSON lines are formatted only when a trace file is open.
//!
//! A trace file starts with a header line (see [`header`]): the seed,
//! scenario, options, planted bugs, release and time unit of the run. It
//! describes the run rather than recording an event, so it is not hashed and
//! not counted in [`Trace::records`]: the hash of a run is the same whether
//! or not its trace is written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use cairn_core::Time;
use serde_json::json;
use xxhash_rust::xxh3::Xxh3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The network's random loss.
    Lost,
    /// The link is blocked by a partition.
    Partitioned,
    /// The link's in-flight queue is full.
    QueueFull,
    /// The destination is not running.
    NodeDown,
}

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Lost => "lost",
            DropReason::Partitioned => "partitioned",
            DropReason::QueueFull => "queue-full",
            DropReason::NodeDown => "node-down",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Crash,
    Shutdown,
    ShutdownComplete,
    /// A clean shutdown did not finish in time and became a crash.
    ShutdownKilled,
    Restart,
    Partition,
    Isolate,
    OneWay,
    Heal,
    Clog,
    Unclog,
    /// A node halted itself (fatal storage error) and is restarted.
    Halted,
    /// A sync failed (I/O error or full disk); `detail` 1 = full disk.
    SyncFailed,
    /// A node's disk filled up; `detail` is how long, in µs.
    DiskFull,
    /// Durable records were damaged (corruption, torn or misdirected
    /// writes); `detail` counts them.
    DiskDamage,
    /// A node's clock stepped; `detail` is the step in µs, as two's
    /// complement.
    ClockStep,
    /// A frame no honest peer sends reached the node; `detail` is the
    /// sender's node id (see [`crate::hostile`]).
    HostileFrame,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Shutdown => "shutdown",
            FaultKind::ShutdownComplete => "shutdown-complete",
            FaultKind::ShutdownKilled => "shutdown-killed",
            FaultKind::Restart => "restart",
            FaultKind::Partition => "partition",
            FaultKind::Isolate => "isolate",
            FaultKind::OneWay => "one-way",
            FaultKind::Heal => "heal",
            FaultKind::Clog => "clog",
            FaultKind::Unclog => "unclog",
            FaultKind::Halted => "halted",
            FaultKind::SyncFailed => "sync-failed",
            FaultKind::DiskFull => "disk-full",
            FaultKind::DiskDamage => "disk-damage",
            FaultKind::ClockStep => "clock-step",
            FaultKind::HostileFrame => "hostile-frame",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put,
    Delete,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    Read,
    Written,
    /// The node answered with an error other than a timeout.
    Failed,
    /// The node timed the request out (indeterminate for writes).
    TimedOut,
    /// The client gave up waiting (indeterminate).
    GaveUp,
}

impl OpOutcome {
    pub fn name(self) -> &'static str {
        match self {
            OpOutcome::Read => "read",
            OpOutcome::Written => "written",
            OpOutcome::Failed => "failed",
            OpOutcome::TimedOut => "timed-out",
            OpOutcome::GaveUp => "gave-up",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeEventKind {
    Started,
    Recovered,
    Serving,
    WriteIssued,
    Undecodable,
    Halted,
}

impl NodeEventKind {
    pub fn name(self) -> &'static str {
        match self {
            NodeEventKind::Started => "started",
            NodeEventKind::Recovered => "recovered",
            NodeEventKind::Serving => "serving",
            NodeEventKind::WriteIssued => "write-issued",
            NodeEventKind::Undecodable => "undecodable",
            NodeEventKind::Halted => "halted",
        }
    }
}

/// One trace record. Node numbers are `NodeId.0`.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    Phase {
        name: &'static str,
    },
    Deliver {
        from: u32,
        to: u32,
        msg_type: u16,
        len: u32,
        duplicate: bool,
    },
    Drop {
        from: u32,
        to: u32,
        msg_type: u16,
        len: u32,
        reason: DropReason,
    },
    /// A fault. `node`/`peer` are 0 when not applicable; `links` is the
    /// blocked-link matrix (bit `from_index * 8 + to_index`) for partitions,
    /// `detail` an extra number (clog delay in µs, epoch, ...).
    Fault {
        kind: FaultKind,
        node: u32,
        peer: u32,
        links: u64,
        detail: u64,
    },
    ClientSend {
        client: u32,
        request: u64,
        node: u32,
        op: OpKind,
        key: u32,
        write: u64,
    },
    ClientDone {
        client: u32,
        request: u64,
        outcome: OpOutcome,
        siblings: u32,
    },
    NodeEvent {
        node: u32,
        kind: NodeEventKind,
        detail: u64,
    },
    Check {
        oracle: &'static str,
        key: u32,
        request: u64,
        ok: bool,
    },
    Outcome {
        code: u8,
        message: &'a str,
    },
    /// A step or observation of the version orchestrator (release change,
    /// finalization and its answer, migration, backup, restore, refusal).
    Version {
        node: u32,
        action: &'static str,
        detail: &'a str,
    },
}

/// The message type name for a type code (from the envelope header).
pub fn message_name(msg_type: u16) -> &'static str {
    cairn_core::wire::MESSAGE_TYPES
        .iter()
        .find(|(code, _, _)| *code == msg_type)
        .map(|(_, name, _)| *name)
        .unwrap_or("unknown")
}

/// The message type code of an envelope, read from its header without
/// checking the body (0 when the bytes are too short to hold a header).
pub fn message_type(bytes: &[u8]) -> u16 {
    if bytes.len() >= cairn_core::wire::HEADER_LEN {
        u16::from_le_bytes([bytes[6], bytes[7]])
    } else {
        0
    }
}

fn links_json(links: u64) -> Vec<String> {
    let mut out = Vec::new();
    for bit in 0..64u32 {
        if links & (1u64 << bit) != 0 {
            out.push(format!("n{}->n{}", bit / 8 + 1, bit % 8 + 1));
        }
    }
    out
}

/// Version of the trace file's layout, in its header.
pub const TRACE_FORMAT: u32 = 1;

/// The first line of a trace file: `{"ev": "header", "format", "seed",
/// "scenario", "options", "planted_bugs", "release", "simulator",
/// "time_unit": "us"}`. `release` is the newest node release the simulator
/// embeds (the one a node runs unless its scenario says otherwise; the
/// options list each node's), `simulator` the simulator's version, and
/// `time_unit` the unit of every record's `t`. Nothing in it depends on the
/// wall clock, so two runs of a seed write identical files.
pub fn header(options: &crate::options::Options, bugs: &[String]) -> serde_json::Value {
    json!({
        "ev": "header",
        "format": TRACE_FORMAT,
        "seed": options.seed,
        "scenario": options.scenario,
        "options": options,
        "planted_bugs": bugs,
        "release": cairn_core::version::ReleaseId::current().version(),
        "simulator": env!("CARGO_PKG_VERSION"),
        "time_unit": "us",
    })
}

/// Bytes of encoded records gathered before they are fed to the hasher.
const HASH_CHUNK: usize = 4096;

pub struct Trace {
    hasher: Xxh3,
    buf: Vec<u8>,
    out: Option<BufWriter<File>>,
    records: u64,
    write_error: Option<String>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    /// A trace that is hashed but not written.
    pub fn new() -> Trace {
        Trace {
            hasher: Xxh3::new(),
            buf: Vec::with_capacity(HASH_CHUNK + 256),
            out: None,
            records: 0,
            write_error: None,
        }
    }

    /// A trace that is also written as JSON lines to `path`.
    pub fn to_file(path: &Path) -> std::io::Result<Trace> {
        let mut t = Trace::new();
        t.out = Some(BufWriter::new(File::create(path)?));
        Ok(t)
    }

    /// Like [`Trace::to_file`], the file starting with `header` (not hashed).
    pub fn to_file_with_header(path: &Path, header: &serde_json::Value) -> std::io::Result<Trace> {
        let mut out = BufWriter::new(File::create(path)?);
        writeln!(out, "{header}")?;
        let mut t = Trace::new();
        t.out = Some(out);
        Ok(t)
    }

    pub fn is_writing(&self) -> bool {
        self.out.is_some()
    }

    pub fn hash(&self) -> u64 {
        let mut h = self.hasher.clone();
        h.update(&self.buf);
        h.digest()
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes the file; returns the first write error, if any.
    pub fn finish(&mut self) -> Result<(), String> {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.write_error.get_or_insert(e.to_string());
            }
        }
        match self.write_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn record(&mut self, at: Time, rec: Record<'_>) {
        self.records += 1;
        // Records collect in a buffer hashed a few KiB at a time: the same
        // hash as record by record, with far fewer hasher calls.
        encode(&mut self.buf, at, &rec);
        if self.buf.len() >= HASH_CHUNK {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
        if let Some(out) = self.out.as_mut() {
            let line = to_json(at, &rec);
            if let Err(e) = writeln!(out, "{line}") {
                self.write_error.get_or_insert(e.to_string());
            }
        }
    }
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_str(b: &mut Vec<u8>, s: &str) {
    put32(b, s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}

fn encode(b: &mut Vec<u8>, at: Time, rec: &Record<'_>) {
    put64(b, at.as_micros());
    match *rec {
        Record::Phase { name } => {
            b.push(1);
            put_str(b, name);
        }
        Record::Deliver {
            from,
            to,
            msg_type,
            len,
            duplicate,
        } => {
            b.push(2);
            put32(b, from);
            put32(b, to);
            b.extend_from_slice(&msg_type.to_le_bytes());
            put32(b, len);
            b.push(duplicate as u8);
        }
        Record::Drop {
            from,
            to,
            msg_type,
            len,
            reason,
        } => {
            b.push(3);
            put32(b, from);
            put32(b, to);
            b.extend_from_slice(&msg_type.to_le_bytes());
            put32(b, len);
            b.push(reason as u8);
        }
        Record::Fault {
            kind,
            node,
            peer,
            links,
            detail,
        } => {
            b.push(4);
            b.push(kind as u8);
            put32(b, node);
            put32(b, peer);
            put64(b, links);
            put64(b, detail);
        }
        Record::ClientSend {
            client,
            request,
            node,
            op,
            key,
            write,
        } => {
            b.push(5);
            put32(b, client);
            put64(b, request);
            put32(b, node);
            b.push(op as u8);
            put32(b, key);
            put64(b, write);
        }
        Record::ClientDone {
            client,
            request,
            outcome,
            siblings,
        } => {
            b.push(6);
            put32(b, client);
            put64(b, request);
            b.push(outcome as u8);
            put32(b, siblings);
        }
        Record::NodeEvent { node, kind, detail } => {
            b.push(7);
            put32(b, node);
            b.push(kind as u8);
            put64(b, detail);
        }
        Record::Check {
            oracle,
            key,
            request,
            ok,
        } => {
            b.push(8);
            put_str(b, oracle);
            put32(b, key);
            put64(b, request);
            b.push(ok as u8);
        }
        Record::Outcome { code, message } => {
            b.push(9);
            b.push(code);
            put_str(b, message);
        }
        Record::Version {
            node,
            action,
            detail,
        } => {
            b.push(10);
            put32(b, node);
            put_str(b, action);
            put_str(b, detail);
        }
    }
}

fn to_json(at: Time, rec: &Record<'_>) -> serde_json::Value {
    let t = at.as_micros();
    match *rec {
        Record::Phase { name } => json!({"t": t, "ev": "phase", "phase": name}),
        Record::Deliver {
            from,
            to,
            msg_type,
            len,
            duplicate,
        } => {
            json!({"t": t, "ev": "deliver", "from": from, "to": to, "msg": message_name(msg_type), "len": len, "dup": duplicate})
        }
        Record::Drop {
            from,
            to,
            msg_type,
            len,
            reason,
        } => {
            json!({"t": t, "ev": "drop", "from": from, "to": to, "msg": message_name(msg_type), "len": len, "reason": reason.name()})
        }
        Record::Fault {
            kind,
            node,
            peer,
            links,
            detail,
        } => {
            json!({"t": t, "ev": "fault", "fault": kind.name(), "node": node, "peer": peer, "blocked": links_json(links), "detail": detail})
        }
        Record::ClientSend {
            client,
            request,
            node,
            op,
            key,
            write,
        } => {
            json!({"t": t, "ev": "send", "client": client, "req": request, "node": node, "op": op.name(), "key": key, "write": write})
        }
        Record::ClientDone {
            client,
            request,
            outcome,
            siblings,
        } => {
            json!({"t": t, "ev": "reply", "client": client, "req": request, "outcome": outcome.name(), "siblings": siblings})
        }
        Record::NodeEvent { node, kind, detail } => {
            json!({"t": t, "ev": "node", "node": node, "what": kind.name(), "detail": detail})
        }
        Record::Check {
            oracle,
            key,
            request,
            ok,
        } => {
            json!({"t": t, "ev": "check", "oracle": oracle, "key": key, "req": request, "ok": ok})
        }
        Record::Outcome { code, message } => {
            json!({"t": t, "ev": "outcome", "code": code, "message": message})
        }
        Record::Version {
            node,
            action,
            detail,
        } => json!({"t": t, "ev": "version", "node": node, "action": action, "detail": detail}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(t: &mut Trace, to: u32) {
        t.record(Time(1), Record::Phase { name: "safety" });
        t.record(
            Time(5),
            Record::Deliver {
                from: 1,
                to,
                msg_type: 4,
                len: 10,
                duplicate: false,
            },
        );
    }

    #[test]
    fn chunked_hashing_equals_hashing_record_by_record() {
        let mut t = Trace::new();
        let mut reference = Xxh3::new();
        let mut buf = Vec::new();
        for i in 0..2000u32 {
            let rec = Record::Deliver {
                from: 1 + i % 5,
                to: 2,
                msg_type: 4,
                len: i,
                duplicate: i % 7 == 0,
            };
            buf.clear();
            encode(&mut buf, Time(i as u64), &rec);
            reference.update(&buf);
            t.record(Time(i as u64), rec);
            if i % 333 == 0 {
                assert_eq!(t.hash(), reference.digest(), "after record {i}");
            }
        }
        assert_eq!(t.hash(), reference.digest());
    }

    #[test]
    fn hash_is_independent_of_writing_and_sensitive_to_content() {
        let dir = std::env::temp_dir().join(format!("cairn-sim-trace-{}", std::process::id()));
        let mut a = Trace::new();
        let mut b = Trace::to_file(&dir).unwrap();
        let mut c = Trace::new();
        fill(&mut a, 2);
        fill(&mut b, 2);
        fill(&mut c, 3);
        assert!(b.finish().is_ok());
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"msg\":\"Gossip\""), "{text}");
    }

    #[test]
    fn header_type_is_read_without_decoding() {
        let bytes = cairn_core::wire::seal(1, 13, b"xyz");
        assert_eq!(message_type(&bytes), 13);
        assert_eq!(message_name(13), "ReplicaPutAck");
        assert_eq!(message_type(b"short"), 0);
    }
}
