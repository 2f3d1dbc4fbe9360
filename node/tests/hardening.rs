//! Real-process tests of how a node holds up against misbehaving clients
//! and unauthenticated peers: idle and slow connections, oversized
//! requests and frames, readiness after a restore, uniform error bodies.
//!
//! Every node is a `cairn serve` child process on 127.0.0.1, killed when its
//! handle is dropped (panics included). The tests share the machine's cores,
//! so they run one at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_core::version::ReleaseId;
use cairn_node::config::{FileConfig, QuorumFile};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Patience for anything that should happen "soon" on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1, below the ephemeral range.
fn free_port() -> u16 {
    for _ in 0..500 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// One `cairn serve` process.
struct Node {
    config: PathBuf,
    log: PathBuf,
    http: String,
    peer: String,
    /// `ulimit -n` for the process, if set.
    nofile: Option<u64>,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let exe = env!("CARGO_BIN_EXE_cairn");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.nofile {
            // `exec` keeps the pid: it is the node's.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!(
                        "ulimit -n {n} && exec \"$0\" serve --config \"$1\""
                    ))
                    .arg(exe)
                    .arg(&self.config);
                c
            }
            None => {
                let mut c = Command::new(exe);
                c.arg("serve").arg("--config").arg(&self.config);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `path` answers 200.
    fn wait_for(&mut self, path: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if matches!(get(&self.http, path), Ok((200, _))) {
                return;
            }
            assert!(self.running(), "node exited:\n{}", self.log_text());
            assert!(
                Instant::now() < deadline,
                "{path} never answered 200:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` nodes of one cluster in `dir`, not started; `tweak` adjusts each config.
fn cluster(dir: &Path, n: usize, tweak: &dyn Fn(&mut FileConfig)) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let replicas = n.min(3) as u8;
    (0..n)
        .map(|i| {
            let mut cfg = FileConfig {
                id: Some(i as u32 + 1),
                peer_addr: Some(format!("127.0.0.1:{}", ports[i].0)),
                http_addr: Some(format!("127.0.0.1:{}", ports[i].1)),
                data_dir: Some(dir.join(format!("data-{}", i + 1))),
                members: members.clone(),
                secret: Some("hardening tests' cluster secret".into()),
                quorum: QuorumFile {
                    n: replicas,
                    r: replicas / 2 + 1,
                    w: replicas / 2 + 1,
                },
                worker_threads: Some(1),
                initial_cluster_version: Some(ReleaseId::current().version().into()),
                ..FileConfig::default()
            };
            tweak(&mut cfg);
            let config = dir.join(format!("node-{}.toml", i + 1));
            std::fs::write(&config, cfg.to_string()).unwrap();
            Node {
                config,
                log: dir.join(format!("node-{}.log", i + 1)),
                http: cfg.http_addr.clone().unwrap(),
                peer: cfg.peer_addr.clone().unwrap(),
                nofile: None,
                child: None,
            }
        })
        .collect()
}

/// Sends `raw` on a new connection and reads the answer until the server
/// closes it: (status, body). Each read waits at most `PATIENCE`.
fn exchange(addr: &str, raw: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(raw)?;
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
}

/// The documented error body: `{"error": "...", "kind": "..."}`.
fn json_error(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .into(),
        v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .into(),
    )
}

/// True once the server has closed `s` (EOF or reset); reads at most
/// `wait` for it, discarding whatever arrives.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Raises this test process's own open-file limit to its hard limit.
fn raise_own_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The scenario: under an open-file limit of 1024, 1,100 idle
/// connections used to exhaust the node's descriptors (and then fjall's,
/// halting it). Now the connections over the cap the limit allows are
/// answered 503 and closed at once, the others once idle for the timeout,
/// and the node serves throughout.
#[test]
fn idle_connections_cannot_exhaust_descriptors() {
    let _g = serial();
    assert!(
        raise_own_nofile() >= 1300,
        "this test needs 1300 descriptors"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 1, &|c| {
        // Long enough for the flood to be opened before any is idle.
        c.http_idle_timeout_ms = Some(15_000);
        c.http_header_timeout_ms = Some(15_000);
    });
    let node = &mut nodes[0];
    node.nofile = Some(1024);
    node.start();
    node.wait_for("/ready");
    let opening = Instant::now();
    let mut conns: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(&node.http).unwrap())
        .collect();
    eprintln!("1100 connections opened in {:?}", opening.elapsed());
    // Refused ones got the 503 answer, then end of stream; the others end
    // (without a byte) once idle for 15 s.
    let mut refused = 0;
    for s in &mut conns {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("an idle connection was never closed: {e}"),
        }
        let text = String::from_utf8_lossy(&got);
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("\"kind\":\"too_many_connections\""), "{text}");
            refused += 1;
        } else {
            assert!(got.is_empty(), "{text}");
        }
    }
    eprintln!("1100 idle connections: {refused} refused at once, the rest closed when idle");
    // The open-file limit of 1024 leaves room for 512 client connections.
    assert!(
        (400..=700).contains(&refused),
        "{refused} of 1100 refused at once:\n{}",
        node.log_text()
    );
    drop(conns);
    assert!(node.running(), "node exited:\n{}", node.log_text());
    assert_eq!(get(&node.http, "/health").unwrap().0, 200);
    let put = b"PUT /v1/kv/after-flood HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    assert_eq!(exchange(&node.http, put).unwrap().0, 204);
    let (code, body) = get(&node.http, "/v1/kv/after-flood").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
    let log = node.log_text();
    assert!(log.contains("refusing client connections"), "{log}");
    assert!(log.contains("lowers max_client_connections"), "{log}");
}

/// Slow clients: headers that never end, a body declared but never sent,
/// a body that stalls, a connection left idle. None holds the node's
/// resources past its timeouts.
#[test]
fn slow_clients_are_cut_off() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 1, &|c| {
        c.http_idle_timeout_ms = Some(1000);
        c.http_header_timeout_ms = Some(1000);
    });
    let node = &mut nodes[0];
    node.start();
    node.wait_for("/ready");

    // Headers that never end: closed after the header timeout.
    let mut s = TcpStream::connect(&node.http).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").unwrap();
    assert!(closed_within(&mut s, PATIENCE), "unfinished headers kept");

    // Idle after a request: closed after the idle timeout.
    let mut s = TcpStream::connect(&node.http).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    assert!(closed_within(&mut s, PATIENCE), "idle connection kept");

    // Connected and silent: closed too.
    let mut s = TcpStream::connect(&node.http).unwrap();
    assert!(closed_within(&mut s, PATIENCE), "silent connection kept");

    // 100 GB declared, nothing sent: refused before reading the body.
    let (code, body) = exchange(
        &node.http,
        b"PUT /v1/kv/big HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000000\r\n\r\n",
    )
    .unwrap();
    assert_eq!(code, 413, "{body}");
    let (message, kind) = json_error(&body);
    assert_eq!(kind, "too_large");
    assert!(message.contains("100000000000"), "{message}");

    // A body that stalls: 408.
    let (code, body) = exchange(
        &node.http,
        b"PUT /v1/kv/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(code, 408, "{body}");
    assert_eq!(json_error(&body).1, "timeout");
    assert_eq!(get(&node.http, "/health").unwrap().0, 200);
}

/// Every error the HTTP API answers is `{"error", "kind"}` JSON.
#[test]
fn every_error_is_json() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 1, &|_| {});
    let node = &mut nodes[0];
    node.start();
    node.wait_for("/ready");

    let (code, body) = get(&node.http, "/no/such/path").unwrap();
    assert_eq!((code, json_error(&body).1.as_str()), (404, "not_found"));

    let (code, body) = exchange(
        &node.http,
        b"POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (code, json_error(&body).1.as_str()),
        (405, "method_not_allowed")
    );

    // Over 1 MiB declared: refused at once.
    let (code, body) = exchange(
        &node.http,
        b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!((code, json_error(&body).1.as_str()), (413, "too_large"));

    // Over 1 MiB in chunks: refused once the limit is passed.
    let mut req =
        b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..17 {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (code, body) = exchange(&node.http, &req).unwrap();
    assert_eq!((code, json_error(&body).1.as_str()), (413, "too_large"));

    // A key that is not UTF-8 once decoded: the router's rejection.
    let (code, body) = get(&node.http, "/v1/kv/%FF").unwrap();
    assert_eq!(code, 400, "{body}");
    json_error(&body);

    // The documented ones stay as they were.
    let (code, body) = get(&node.http, "/v1/kv/never-written").unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("siblings"), "{body}");
}

/// Before authentication only handshake-sized frames are read: a frame
/// announcing 16 MiB closes the connection at once, so a flood of them
/// costs no memory; and unauthenticated connections beyond the bound are
/// closed as they arrive.
#[test]
fn unauthenticated_peers_cannot_make_the_node_allocate() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 1, &|_| {});
    let node = &mut nodes[0];
    node.start();
    node.wait_for("/ready");
    let before = node.rss_kib();
    // Each announces a 16 MiB frame and sends half of it.
    let half = vec![0u8; 8 << 20];
    let mut conns = Vec::new();
    let mut refused_writes = 0;
    for _ in 0..100 {
        let mut s = TcpStream::connect(&node.peer).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        let sent = s
            .write_all(&(16u32 << 20).to_be_bytes())
            .and_then(|_| s.write_all(&half));
        if sent.is_err() {
            refused_writes += 1;
        }
        conns.push(s);
    }
    let during = node.rss_kib();
    eprintln!(
        "peer port, 100 connections announcing 16 MiB and sending 8 MiB: RSS {} MB before, {} MB after; {refused_writes} writes refused",
        before / 1024,
        during / 1024
    );
    for s in &mut conns {
        assert!(
            closed_within(s, PATIENCE),
            "an unauthenticated connection was kept"
        );
    }
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );
    drop(conns);

    // 200 silent connections: at most 64 wait for their handshake, the rest
    // are closed as they arrive (well before the 5 s deadline).
    let mut silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&node.peer).unwrap())
        .collect();
    let started = Instant::now();
    let mut quick = 0;
    for s in &mut silent {
        let left = Duration::from_secs(4).saturating_sub(started.elapsed());
        if !left.is_zero() && closed_within(s, left.min(Duration::from_millis(20))) {
            quick += 1;
        }
    }
    eprintln!("200 silent peer connections: {quick} closed at once");
    assert!(quick >= 100, "only {quick} of 200 closed at once");
    for s in &mut silent {
        assert!(closed_within(s, PATIENCE), "a handshake never timed out");
    }
    assert!(node.running(), "node exited:\n{}", node.log_text());
    assert!(node.rss_kib() < before + 64 * 1024);
}

/// After a restore the node answers no reads until it has re-synced from
/// its replicas; `/ready` must say so all along, never 200 while a read
/// would be refused.
#[test]
fn ready_waits_for_the_resync_after_a_restore() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, &|_| {});
    for n in nodes.iter_mut() {
        n.start();
    }
    for n in nodes.iter_mut() {
        n.wait_for("/ready");
    }
    for i in 0..50 {
        let put = format!(
            "PUT /v1/kv/k{i} HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nv"
        );
        let (code, body) = exchange(&nodes[i % 3].http, put.as_bytes()).unwrap();
        assert_eq!(code, 204, "{body}");
    }
    let (code, body) = exchange(
        &nodes[1].http,
        b"POST /v1/admin/backup HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let label = serde_json::from_str::<Value>(&body).unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    nodes[1].kill();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["restore", "--config"])
        .arg(&nodes[1].config)
        .args(["--backup", &label])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    nodes[1].start();
    let node = &mut nodes[1];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready_since: Option<Instant> = None;
    let mut resync_reads = 0;
    let mut resync_reason_seen = false;
    loop {
        assert!(node.running(), "node exited:\n{}", node.log_text());
        assert!(Instant::now() < deadline, "never served reads again");
        let ready = get(&node.http, "/ready");
        let read = get(&node.http, "/v1/kv/k0");
        let (Ok((ready, ready_body)), Ok((read, read_body))) = (ready, read) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if ready == 200 {
            ready_since.get_or_insert_with(Instant::now);
        } else {
            assert_eq!(ready, 503, "{ready_body}");
            let (message, kind) = json_error(&ready_body);
            assert_eq!(kind, "not_ready");
            resync_reason_seen |= message.contains("re-syncing from replicas after a restore");
        }
        if read == 503 && read_body.contains("re-syncing") {
            resync_reads += 1;
            if let Some(t) = ready_since {
                panic!(
                    "/ready answered 200 {:?} before a read was refused: {read_body}",
                    t.elapsed()
                );
            }
        }
        if ready == 200 && read == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{resync_reads} reads refused while re-syncing, /ready 503 all along");
    if resync_reads > 0 {
        assert!(
            resync_reason_seen,
            "/ready never gave the re-sync as its reason"
        );
    }
}
