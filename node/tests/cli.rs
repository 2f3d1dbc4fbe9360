//! Real-process tests of the command line: `cairn get`/`put`, `cairn
//! local-cluster`, and what a node exposes to operators (metrics, logs).
//! Every process a test starts is stopped by the test, panics included. The
//! tests share the machine's cores, so they run one at a time.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_node::client::Client;
use cairn_node::config::FileConfig;
use cairn_node::local_cluster::{write_configs, LocalCluster};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const READY: Duration = Duration::from_secs(30);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cairn"))
}

/// Nodes started from `write_configs`, stopped when dropped.
struct Harness {
    cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(n: usize, tweak: &dyn Fn(&mut FileConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let configs = write_configs(dir.path(), n, tweak).unwrap();
        let mut cluster = LocalCluster::start_with(exe(), dir.path(), &configs).unwrap();
        cluster.wait_ready(READY).unwrap();
        Harness { cluster, _dir: dir }
    }

    fn http(&self, i: usize) -> &str {
        &self.cluster.nodes[i].http
    }

    fn client(&self, i: usize) -> Client {
        Client::with_timeout(self.http(i), None, Duration::from_secs(5))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.cluster.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cluster.stop_all(Duration::from_secs(10));
    }
}

/// Runs `cairn ARGS` with `stdin` as its input.
fn cairn(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(exe())
        .args(args)
        .env_remove("CAIRN_NODE")
        .env_remove("CAIRN_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "$ cairn {} -> {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn get_prints_one_value_byte_for_byte() {
    let _g = serial();
    let h = Harness::start(1, &|_| {});
    let node = h.http(0).to_string();
    let value = b"\x00\xffbinary\nwith a trailing newline\n".to_vec();
    h.client(0).put("bin", &value, None).unwrap();
    let out = cairn(&["get", "bin", "--node", &node], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, value, "stdout is the value, nothing added");
    assert!(stderr(&out).contains("context: "));

    // Text without a newline stays without one.
    h.client(0).put("text", b"hello", None).unwrap();
    let out = cairn(&["get", "text", "--node", &node], b"");
    assert_eq!(out.stdout, b"hello");
}

#[test]
fn put_dash_reads_the_value_from_stdin() {
    let _g = serial();
    let h = Harness::start(1, &|_| {});
    let node = h.http(0).to_string();
    let value = b"\x01\x02 from stdin\n\n\xfe".to_vec();
    let out = cairn(&["put", "piped", "-", "--node", &node], &value);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        h.client(0).get("piped").unwrap().values,
        vec![value.clone()]
    );
    let out = cairn(&["get", "piped", "--node", &node], b"");
    assert_eq!(out.stdout, value);
}

#[test]
fn siblings_exit_5_and_are_listed_on_stderr_or_as_json() {
    let _g = serial();
    let h = Harness::start(1, &|_| {});
    let node = h.http(0).to_string();
    // Two writes without a context are concurrent: both stay.
    h.client(0).put("k", b"one\ntwo", None).unwrap();
    h.client(0).put("k", b"\xff\x00", None).unwrap();

    let out = cairn(&["get", "k", "--node", &node], b"");
    assert_eq!(
        out.status.code(),
        Some(5),
        "siblings have their own exit code"
    );
    assert!(out.stdout.is_empty(), "no value is picked for stdout");
    let err = stderr(&out);
    assert!(err.contains("2 concurrent values (siblings)"), "{err}");
    assert!(
        err.contains(r#""one\ntwo""#),
        "a UTF-8 sibling, escaped: {err}"
    );
    assert!(
        err.contains("base64:/wA="),
        "a binary sibling, base64: {err}"
    );

    let out = cairn(&["get", "k", "--json", "--node", &node], b"");
    assert_eq!(out.status.code(), Some(5));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut sibs: Vec<(String, String)> = doc["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["dot"].is_string());
            (
                s["value"].as_str().unwrap().to_string(),
                s["encoding"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sibs.sort();
    assert_eq!(
        sibs,
        vec![
            ("/wA=".to_string(), "base64".to_string()),
            ("one\ntwo".to_string(), "utf8".to_string()),
        ]
    );
    assert!(doc["context"].as_str().is_some_and(|c| !c.is_empty()));
}

#[test]
fn not_found_exits_4_and_exit_codes_are_documented() {
    let _g = serial();
    let h = Harness::start(1, &|_| {});
    let out = cairn(&["get", "missing", "--node", h.http(0)], b"");
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("not found"));
    let out = cairn(&["get", "missing", "--json", "--node", h.http(0)], b"");
    assert_eq!(out.status.code(), Some(4));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["siblings"], serde_json::json!([]));

    let help = cairn(&["--help"], b"");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("4  get: the key does not exist"), "{help}");
    assert!(
        help.contains("5  get: the key has concurrent values"),
        "{help}"
    );
}

#[test]
fn node_without_a_scheme_means_http() {
    let _g = serial();
    let h = Harness::start(1, &|_| {});
    let addr = h.http(0).strip_prefix("http://").unwrap().to_string();
    let out = cairn(&["put", "plain", "v", "--node", &addr], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cairn(&["get", "plain", "--node", &addr], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"v");
    let out = cairn(&["status", "--node", &addr], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Every file under `dir` with its contents.
fn tree_state(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

/// A `cairn` process whose stdout and stderr lines arrive on a channel; it
/// is killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(exe())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`, and returns it.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    eprintln!("| {l}");
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Waits for the process to exit; kills it after `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        cairn_node::local_cluster::terminate(&self.child);
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            cairn_node::local_cluster::terminate(&self.child);
            if self.wait(Duration::from_secs(30)).is_none() {
                eprintln!("killed a process that did not stop");
            }
        }
    }
}

#[test]
fn local_cluster_refuses_to_change_the_shape_of_an_existing_one() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write_configs(dir.path(), 3, &|_| {}).unwrap();
    std::fs::create_dir(dir.path().join("data-1")).unwrap();
    std::fs::write(dir.path().join("data-1/marker"), b"data").unwrap();
    let before = tree_state(dir.path());
    for n in ["2", "4"] {
        let mut run = Running::start(&["local-cluster", "--nodes", n, "--dir", d]);
        // A refusal comes before any node starts; a run that starts nodes
        // instead would not exit by itself and is stopped here.
        let status = run.wait(Duration::from_secs(60));
        let msg = run.expect(
            "already holds a cluster of 3 node(s)",
            Duration::from_secs(5),
        );
        assert!(
            msg.contains(&format!("--nodes {n} would change its shape")),
            "{msg}"
        );
        assert!(msg.contains("--nodes 3"), "{msg}");
        let status = status.expect("local-cluster did not exit");
        assert!(!status.success());
        assert_eq!(tree_state(dir.path()), before, "--nodes {n} changed files");
    }
}

#[test]
fn local_cluster_reports_a_node_that_exits() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut run = Running::start(&["local-cluster", "--nodes", "2", "--dir", d]);
    let line = run.expect("  node 2  ", READY);
    let pid: i32 = line
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    run.expect("Ctrl-C stops every node", READY);
    // SAFETY: kill(2) on the pid local-cluster printed for its child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let report = run.expect("exited", Duration::from_secs(60));
    assert!(
        report.contains(&format!("node 2 (pid {pid}) exited")),
        "{report}"
    );
    assert!(report.contains("killed by signal 9 (SIGKILL)"), "{report}");
    let log = dir.path().join("node-2.log");
    assert!(report.contains(&log.display().to_string()), "{report}");
    let status = run.terminate().expect("local-cluster did not stop");
    assert!(status.success(), "{status}");
}

#[test]
fn json_logs_have_a_top_level_message_and_the_node_id_on_every_line() {
    let _g = serial();
    let mut h = Harness::start(2, &|c| {
        c.log_format = Some(cairn_node::config::LogFormat::Json);
    });
    h.client(0).put("k", b"v", None).unwrap();
    h.cluster.stop_all(Duration::from_secs(10));
    for i in 0..2 {
        let log = h.log(i);
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines.len() >= 2, "node {}: {log}", i + 1);
        for l in &lines {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "no top-level message: {l}"
            );
            assert!(v.get("fields").is_none(), "{l}");
            assert_eq!(v["node"], i + 1, "{l}");
            assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        }
        let starting = lines
            .iter()
            .find(|l| l.contains(r#""message":"starting""#))
            .unwrap_or_else(|| panic!("no start line: {log}"));
        let v: serde_json::Value = serde_json::from_str(starting).unwrap();
        assert!(
            v["release"].is_string(),
            "event fields are top-level: {starting}"
        );
    }
}

/// GETs `/metrics` with `accept`; returns (content type, body).
fn scrape(h: &Harness, accept: Option<&str>) -> (String, String) {
    let mut req = ureq::get(format!("{}/metrics", h.http(0)));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().unwrap();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ct, resp.body_mut().read_to_string().unwrap())
}

/// What a Prometheus 0.0.4 text parser makes of an exposition: each
/// sample's family and its type, failing on a sample of no declared family.
fn text_004_families(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut types = std::collections::BTreeMap::new();
    for l in text.lines() {
        assert!(!l.starts_with("# EOF") && !l.starts_with("# UNIT"), "{l}");
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        }
    }
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap();
        let family = if types.contains_key(name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    (types.get(base)? == "histogram").then_some(base)
                })
                .unwrap_or_else(|| panic!("sample of no declared family: {l}"))
        };
        let kind = &types[family];
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{family} is {kind}"
        );
        if kind == "counter" {
            assert!(family.ends_with("_total"), "{family}");
        }
    }
    types
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix}"))
}

#[test]
fn metrics_negotiate_their_format_and_name_units() {
    let _g = serial();
    let h = Harness::start(1, &|_| {});
    h.client(0).put("k", b"v", None).unwrap();
    h.client(0).post_json("/v1/admin/backup").unwrap();

    let (ct, text) = scrape(&h, Some("text/plain;version=0.0.4"));
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let types = text_004_families(&text);
    let (ct, default) = scrape(&h, None);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    text_004_families(&default);

    for (family, kind) in [
        ("cairn_http_requests_total", "counter"),
        ("cairn_core_quorum_timeouts_total", "counter"),
        ("cairn_storage_batches_total", "counter"),
        ("cairn_storage_persist_seconds", "histogram"),
        ("cairn_version_info", "gauge"),
        ("cairn_build_info", "gauge"),
        ("cairn_cluster_version", "gauge"),
        ("cairn_live_schema", "gauge"),
        ("cairn_migration_state", "gauge"),
        ("cairn_last_backup_timestamp_seconds", "gauge"),
        ("cairn_data_dir_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    for gone in ["cairn_storage_persist_microseconds", "cairn_storage_synced"] {
        assert!(!text.contains(gone), "{gone} is still exported");
    }
    assert!(sample(&text, "cairn_storage_persist_seconds_count") >= 1.0);
    assert!(sample(&text, "cairn_last_backup_timestamp_seconds") > 1.6e9);
    assert!(sample(&text, "cairn_data_dir_bytes") > 0.0);
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&text, "process_open_fds") > 0.0);
    let started = sample(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > 1.6e9 && started <= now + 5.0, "{started}");
    assert_eq!(sample(&text, "cairn_migration_state{state=\"none\"}"), 1.0);
    let release = cairn_core::version::ReleaseId::current().version();
    assert!(text.contains(&format!("cairn_cluster_version{{version=\"{release}\"}} 1")));
    assert!(text.contains(&format!("release=\"{release}\"")));

    // What Prometheus asks for.
    let (ct, om) = scrape(
        &h,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.ends_with("# EOF\n"));
    assert_eq!(om.matches("# EOF").count(), 1);
    assert!(om.contains("# TYPE cairn_http_requests counter"));
    assert!(om.contains("# TYPE process_cpu_seconds counter"));
}
