//! Real-process tests: `cairn serve` nodes on 127.0.0.1 with free ports and
//! temporary data directories. Every process is killed when its cluster is
//! dropped, panics included. The tests share the machine's cores, so they run
//! one at a time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cairn_core::version::ReleaseId;
use cairn_node::client::Client;
use cairn_node::config::{FileConfig, TimingFile};
use cairn_node::local_cluster::{write_configs, LocalCluster};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const READY: Duration = Duration::from_secs(30);

/// Faster background work than production defaults, so repairs finish
/// within a test's patience.
fn fast(cfg: &mut FileConfig) {
    cfg.timing = TimingFile {
        anti_entropy_interval_ms: Some(40),
        hint_retry_ms: Some(200),
        peer_down_after_ms: Some(1000),
        ..TimingFile::default()
    };
}

struct Harness {
    cluster: LocalCluster,
    /// The bearer token every client sends, if the nodes require one.
    token: Option<String>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start(n: usize, tweak: &dyn Fn(usize, &mut FileConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let configs = write_configs(dir.path(), n, &|c| fast(c)).unwrap();
        for (i, path) in configs.iter().enumerate() {
            let mut c = FileConfig::read(path).unwrap();
            c.initial_cluster_version = None;
            tweak(i, &mut c);
            // Bootstrap at the release each node runs, as local-cluster does.
            if c.initial_cluster_version.is_none() {
                c.initial_cluster_version = Some(
                    c.release
                        .clone()
                        .unwrap_or_else(|| ReleaseId::current().version().into()),
                );
            }
            std::fs::write(path, c.to_string()).unwrap();
        }
        let token = FileConfig::read(&configs[0]).unwrap().token;
        let cluster =
            LocalCluster::start_with(Path::new(env!("CARGO_BIN_EXE_cairn")), dir.path(), &configs)
                .unwrap();
        Harness {
            cluster,
            token,
            _dir: dir,
        }
    }

    fn client(&self, i: usize) -> Client {
        Client::with_timeout(
            &self.cluster.nodes[i].http,
            self.token.clone(),
            Duration::from_secs(5),
        )
    }

    fn urls(&self) -> Vec<String> {
        self.cluster.nodes.iter().map(|n| n.http.clone()).collect()
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.cluster.nodes[i].log).unwrap_or_default()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.cluster.dir.join(format!("data-{}", i + 1))
    }

    /// Rewrites node `i`'s config file.
    fn edit_config(&self, i: usize, f: impl FnOnce(&mut FileConfig)) {
        let path = &self.cluster.nodes[i].config;
        let mut c = FileConfig::read(path).unwrap();
        f(&mut c);
        std::fs::write(path, c.to_string()).unwrap();
    }

    /// Runs the `cairn` binary; returns (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
        cmd.args(args);
        if let Some(t) = &self.token {
            cmd.env("CAIRN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("$ cairn {}\n{o}{e}", args.join(" "));
        (out.status.success(), o, e)
    }

    fn config_path(&self, i: usize) -> String {
        self.cluster.nodes[i].config.display().to_string()
    }

    fn status(&self, i: usize) -> Value {
        self.client(i).json("/v1/status").unwrap()
    }

    /// Waits until every node sees every other as up.
    fn wait_all_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for i in 0..self.cluster.nodes.len() {
            loop {
                let ok = self.client(i).json("/v1/status").is_ok_and(|s| {
                    s["peers"].as_array().is_some_and(|p| {
                        p.iter()
                            .all(|p| p["up"] == true && p["release"].is_string())
                    })
                });
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} never saw all peers up",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writers putting distinct keys at random live nodes; they remember every
/// acknowledged key.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(urls: Vec<String>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..writers)
            .map(|w| {
                let stop = stop.clone();
                let urls = urls.clone();
                std::thread::spawn(move || {
                    let clients: Vec<Client> = urls
                        .iter()
                        .map(|u| Client::with_timeout(u, None, Duration::from_secs(4)))
                        .collect();
                    let mut acked = Vec::new();
                    let mut i = 0usize;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let key = format!("load-{w}-{i}");
                        let c = &clients[(i + w) % clients.len()];
                        i += 1;
                        if c.put(&key, format!("v-{key}").as_bytes(), None).is_ok() {
                            acked.push(key);
                        } else {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    acked
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// Every acknowledged key reads back with its value from every node.
fn check_acked(h: &Harness, acked: &[String]) {
    assert!(!acked.is_empty(), "the load acknowledged nothing");
    eprintln!("checking {} acknowledged writes on every node", acked.len());
    for i in 0..h.cluster.nodes.len() {
        let c = h.client(i);
        for key in acked {
            let mut last = None;
            let ok = (0..20).any(|_| match c.get(key) {
                Ok(r) if r.values == vec![format!("v-{key}").into_bytes()] => true,
                other => {
                    last = Some(format!("{other:?}"));
                    std::thread::sleep(Duration::from_millis(100));
                    false
                }
            });
            assert!(
                ok,
                "acknowledged {key} not read back from node {}: {last:?}",
                i + 1
            );
        }
    }
}

fn key_count(h: &Harness, i: usize) -> Option<u64> {
    h.client(i).json("/v1/status").ok()?["keys"].as_u64()
}

#[test]
fn write_on_one_node_is_read_on_another() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, c| c.token = Some("client-token".into()));
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    let (a, b, c) = (h.client(0), h.client(1), h.client(2));

    // The token guards the key-value API.
    let anonymous = Client::new(&h.cluster.nodes[0].http, None);
    let err = anonymous.put("greeting", b"x", None).unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    let wrong = Client::new(&h.cluster.nodes[0].http, Some("client-tokem".into()));
    assert_eq!(wrong.get("greeting").unwrap_err().status(), Some(401));

    a.put("greeting", b"hello", None).unwrap();
    let r = b.get("greeting").unwrap();
    assert_eq!(r.values, vec![b"hello".to_vec()]);
    assert_eq!(c.get("greeting").unwrap().values, vec![b"hello".to_vec()]);

    // Raw form: 200 with the bytes and the context header.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let url = format!("{}/v1/kv/greeting", h.cluster.nodes[2].http);
    let bearer = "Bearer client-token";
    let mut resp = agent
        .get(&url)
        .header("Authorization", bearer)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("x-cairn-context").is_some());
    assert_eq!(resp.body_mut().read_to_vec().unwrap(), b"hello");

    // Two blind writes are concurrent: both survive as siblings (300).
    a.put("greeting", b"hi", None).unwrap();
    let r = c.get("greeting").unwrap();
    assert_eq!(r.values.len(), 2, "{r:?}");
    let resp = agent
        .get(&url)
        .header("Authorization", bearer)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 300);
    // A write with the read's context supersedes both.
    b.put("greeting", b"merged", Some(&r.context)).unwrap();
    assert_eq!(a.get("greeting").unwrap().values, vec![b"merged".to_vec()]);

    // Delete with context; then the key is gone.
    let r = a.get("greeting").unwrap();
    c.delete("greeting", Some(&r.context)).unwrap();
    assert!(b.get("greeting").unwrap().values.is_empty());
    let resp = agent
        .get(&url)
        .header("Authorization", bearer)
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // Bad input is refused, never a crash.
    let err = a.put("k", b"v", Some("%%%")).unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let err = a.put("k", b"v", Some("AQID")).unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let big = vec![b'x'; (1 << 20) + 1];
    let err = a.put("big", &big, None).unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    let long = "k".repeat(2000);
    let err = a.put(&long, b"v", None).unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");

    // Operational endpoints.
    assert_eq!(a.text("/health").unwrap().0, 200);
    assert!(a.ready());
    let s = h.status(0);
    assert_eq!(s["peers"].as_array().unwrap().len(), 2);
    assert!(s["release"].is_string() && s["protocols"]["max"].is_number());
    for p in s["peers"].as_array().unwrap() {
        assert_eq!(p["up"], true);
        assert_eq!(p["drift"], "current");
        assert!(p["release"].is_string());
    }
    let v = a.json("/v1/version").unwrap();
    assert!(v["release"].is_string());
    let (code, m) = a.text("/metrics").unwrap();
    assert_eq!(code, 200);
    for needle in [
        "cairn_http_requests_total{op=\"put\",outcome=\"ok\"}",
        "cairn_http_request_duration_seconds_bucket",
        "cairn_core_quorum_timeouts_total",
        "cairn_core_hints_stored_total",
        "cairn_core_anti_entropy_rounds_total",
        "cairn_storage_batches_total",
        "cairn_version_info",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}");
    }

    // SIGTERM: a clean shutdown that exits 0.
    for i in 0..3 {
        h.cluster.stop(i, Duration::from_secs(15));
    }
    for i in 0..3 {
        assert!(h.log(i).contains("clean shutdown complete"), "{}", h.log(i));
    }
}

/// A PUT with a raw context header; answers (status, error kind, message).
fn put_with_context(h: &Harness, i: usize, key: &str, context: &str) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        // Room for the largest header sent.
        .output_buffer_size(1 << 20)
        .build()
        .into();
    let url = format!("{}/v1/kv/{key}", h.cluster.nodes[i].http);
    let mut resp = agent
        .put(&url)
        .header("X-Cairn-Context", context)
        .send(&b"hostile"[..])
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let kind = v["kind"].as_str().unwrap_or_default().to_string();
    let message = v["error"].as_str().unwrap_or(&body).to_string();
    (status, kind, message)
}

/// The outside test that found contexts trusted blindly: a PUT through
/// node 1 claiming `{n2.e1: 10^12, n3.e1: 10^12}` was accepted, and every
/// later blind PUT through nodes 2 and 3 vanished; contexts naming tens of
/// thousands of made-up nodes bloated a key beyond use. Now every such
/// context is refused with 400 `bad_context`, and nothing is lost.
#[test]
fn forged_foreign_truncated_and_oversized_contexts_are_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use cairn_core::context::{self, TAG_LEN};
    use cairn_core::{Actor, NodeId, VersionVector};

    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    let (a, b, c) = (h.client(0), h.client(1), h.client(2));
    a.put("k", b"first", None).unwrap();

    let actor = |n: u32| Actor {
        node: NodeId(n),
        epoch: 1,
    };
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let forged =
        VersionVector::from_entries([(actor(2), 1_000_000_000_000), (actor(3), 1_000_000_000_000)]);
    let refuse = |what: &str, key: &str, ctx: &str, needle: &str| {
        let (status, kind, message) = put_with_context(&h, 0, key, ctx);
        assert_eq!(
            (status, kind.as_str()),
            (400, "bad_context"),
            "{what}: {message}"
        );
        assert!(message.contains(needle), "{what}: {message}");
        eprintln!("{what}: {message}");
    };
    // The forged claim as contexts were encoded before they had tags, and
    // as a token with a made-up tag.
    refuse(
        "old format",
        "k",
        &b64(&context::legacy_encoding(&forged)),
        "unknown format",
    );
    refuse(
        "made-up tag",
        "k",
        &b64(context::with_tag(&forged, [0x42; TAG_LEN]).as_bytes()),
        "does not match",
    );
    // A context read from another key.
    a.put("other", b"x", None).unwrap();
    let of_other = b.get("other").unwrap().context;
    assert!(!of_other.is_empty());
    refuse("another key's", "k", &of_other, "another key");
    // Cut short.
    let raw = URL_SAFE_NO_PAD.decode(&of_other).unwrap();
    refuse(
        "truncated",
        "other",
        &b64(&raw[..raw.len() - 3]),
        "malformed",
    );
    // Oversized: more entries than the limit, and far more bytes.
    let many = |n: u32| VersionVector::from_entries((0..n).map(|i| (actor(100 + i), 1)));
    refuse(
        "2,000 made-up nodes",
        "k",
        &b64(context::with_tag(&many(2_000), [1; TAG_LEN]).as_bytes()),
        "oversized",
    );
    refuse(
        "50,000 made-up nodes, old format",
        "k",
        &b64(&context::legacy_encoding(&many(50_000))),
        "oversized",
    );
    refuse(
        "50,000 made-up nodes",
        "k",
        &b64(context::with_tag(&many(50_000), [1; TAG_LEN]).as_bytes()),
        "oversized",
    );

    // Nothing changed, and blind writes through nodes 2 and 3 all survive.
    assert_eq!(c.get("other").unwrap().values, vec![b"x".to_vec()]);
    let mut want = vec![b"first".to_vec()];
    for i in 0..6 {
        let v = format!("blind {i}").into_bytes();
        h.client(1 + i % 2).put("k", &v, None).unwrap();
        want.push(v);
    }
    want.sort();
    for i in 0..3 {
        let mut got = h.client(i).get("k").unwrap().values;
        got.sort();
        assert_eq!(got, want, "read through node {}", i + 1);
    }
    // The key's context stayed small, and a context read from it works,
    // through any node.
    let r = a.get("k").unwrap();
    assert!(
        r.context.len() < 200,
        "context of {} bytes",
        r.context.len()
    );
    c.put("k", b"resolved", Some(&r.context)).unwrap();
    for i in 0..3 {
        assert_eq!(
            h.client(i).get("k").unwrap().values,
            vec![b"resolved".to_vec()]
        );
    }
    let (_, m) = a.text("/metrics").unwrap();
    let refused: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("cairn_core_bad_contexts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no bad_contexts counter in {m}"));
    assert!(refused >= 3.0, "{refused}");
}

#[test]
fn kill_nine_under_load_loses_no_acknowledged_write() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    let load = Load::start(h.urls(), 4);
    std::thread::sleep(Duration::from_millis(1500));
    h.cluster.kill(2);
    std::thread::sleep(Duration::from_millis(1500));
    h.cluster.spawn(2).unwrap();
    h.cluster.wait_node_ready(2, READY).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let acked = load.finish();
    let unique: BTreeSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len());
    check_acked(&h, &acked);
    // The restarted node caught up: it holds as many keys as the others.
    wait_for("node 3 to catch up", Duration::from_secs(60), || {
        let n1 = key_count(&h, 0);
        n1.is_some() && n1 == key_count(&h, 2) && n1 == key_count(&h, 1)
    });
    let log = h.log(2);
    assert!(
        log.contains("clean=false"),
        "restart after kill -9 is unclean: {log}"
    );
}

#[test]
fn rolling_restart_under_load_loses_no_acknowledged_write() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    let load = Load::start(h.urls(), 4);
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..3 {
        h.cluster.stop(i, Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(300));
        h.cluster.spawn(i).unwrap();
        h.cluster.wait_node_ready(i, READY).unwrap();
        h.wait_all_up(READY);
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.finish();
    check_acked(&h, &acked);
    for i in 0..3 {
        let log = h.log(i);
        assert!(log.contains("clean shutdown complete"), "{log}");
        assert!(log.contains("clean=true"), "{log}");
    }
}

#[test]
fn node_without_the_cluster_secret_is_refused() {
    let _g = serial();
    let mut h = Harness::start(3, &|i, c| {
        if i == 2 {
            c.secret = Some("not-the-cluster-secret-at-all".into());
        }
    });
    // Nodes 1 and 2 form a quorum; node 3 never gets in.
    h.cluster.wait_node_ready(0, READY).unwrap();
    h.cluster.wait_node_ready(1, READY).unwrap();
    wait_for("node 1 to refuse node 3", Duration::from_secs(20), || {
        h.log(0).contains("does not hold the cluster secret")
    });
    wait_for(
        "node 3 to report the refusal",
        Duration::from_secs(20),
        || {
            h.client(2).json("/v1/status").is_ok_and(|s| {
                s["peers"].as_array().is_some_and(|p| {
                    p.iter().all(|p| {
                        p["transport_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("cluster secret"))
                    })
                })
            })
        },
    );
    assert!(h.log(2).contains("peer refused"), "{}", h.log(2));
    let s = h.status(0);
    let n3 = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == 3)
        .unwrap()
        .clone();
    assert_eq!(n3["up"], false, "{n3}");
    assert!(n3["protocol"].is_null(), "{n3}");
    // The authenticated pair still serves.
    h.client(0).put("k", b"v", None).unwrap();
    assert_eq!(h.client(1).get("k").unwrap().values, vec![b"v".to_vec()]);
    // Node 3 has no quorum of its own.
    assert!(h.client(2).put("k", b"x", None).is_err());
    assert_eq!(h.client(0).get("k").unwrap().values, vec![b"v".to_vec()]);
}

/// Two rows of the release table whose protocol ranges do not overlap.
fn incompatible_releases() -> Option<(&'static str, &'static str)> {
    let rs = cairn_core::version::RELEASES;
    for a in rs {
        for b in rs {
            if a.protocols.max < b.protocols.min {
                return Some((a.version, b.version));
            }
        }
    }
    None
}

#[test]
fn node_of_an_incompatible_release_is_refused() {
    let Some((old, new)) = incompatible_releases() else {
        eprintln!("skipped: every release in the table can talk to every other");
        return;
    };
    let _g = serial();
    let mut h = Harness::start(3, &|i, c| {
        c.release = Some(if i == 2 { old } else { new }.to_string());
    });
    h.cluster.wait_node_ready(0, READY).unwrap();
    h.cluster.wait_node_ready(1, READY).unwrap();
    wait_for(
        "node 1 to refuse the old release",
        Duration::from_secs(20),
        || {
            h.client(0).json("/v1/status").is_ok_and(|s| {
                s["peers"].as_array().is_some_and(|p| {
                    p.iter().any(|p| {
                        p["id"] == 3 && p["refused"].as_str().is_some_and(|r| !r.is_empty())
                    })
                })
            })
        },
    );
    let s = h.status(0);
    let n3 = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == 3)
        .unwrap()
        .clone();
    let reason = n3["refused"].as_str().unwrap();
    eprintln!("{new} refused {old}: {reason}");
    assert!(reason.contains(old) || reason.contains(new), "{reason}");
    assert!(n3["protocol"].is_null(), "{n3}");
    assert!(
        h.log(0).contains("peer handshake refused") || h.log(2).contains("peer handshake refused"),
        "no refusal logged"
    );
    // The compatible pair serves.
    h.client(0).put("k", b"v", None).unwrap();
    assert_eq!(h.client(1).get("k").unwrap().values, vec![b"v".to_vec()]);
}

/// Flips one byte of every occurrence of `needle` in every file under `dir`.
fn corrupt_files(dir: &Path, needle: &[u8]) -> usize {
    let mut hits = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let mut bytes = std::fs::read(&p).unwrap();
            let mut changed = false;
            let mut i = 0;
            while i + needle.len() <= bytes.len() {
                if &bytes[i..i + needle.len()] == needle {
                    bytes[i + 4] ^= 0x20;
                    changed = true;
                    hits += 1;
                    i += needle.len();
                } else {
                    i += 1;
                }
            }
            if changed {
                std::fs::write(&p, &bytes).unwrap();
            }
        }
    }
    hits
}

#[test]
fn corrupted_data_file_is_detected_and_never_served() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    let good = b"precious-value-Zq7Wm3Kx9Tb2".to_vec();
    let mut bad = good.clone();
    bad[4] ^= 0x20;
    h.client(0).put("precious", &good, None).unwrap();
    for i in 0..20 {
        h.client(1)
            .put(&format!("filler-{i}"), b"filler", None)
            .unwrap();
    }
    h.cluster.stop(0, Duration::from_secs(15));
    let hits = corrupt_files(&h.data_dir(0), &good);
    assert!(hits > 0, "the value was not found on disk");
    h.cluster.spawn(0).unwrap();
    let never_bad = |h: &Harness| {
        for i in 0..3 {
            if let Ok(r) = h.client(i).get("precious") {
                assert!(
                    !r.values.contains(&bad),
                    "node {} served corrupt data",
                    i + 1
                );
            }
        }
    };
    match h.cluster.wait_node_ready(0, READY) {
        Ok(()) => {
            eprintln!("node 1 restarted on the damaged data directory");
            // Started: the damaged record was dropped (by the storage engine's
            // or the core's checksums) and is repaired from the replicas.
            h.wait_all_up(READY);
            wait_for("the record to be repaired", Duration::from_secs(30), || {
                never_bad(&h);
                h.client(0)
                    .get("precious")
                    .is_ok_and(|r| r.values == vec![good.clone()])
            });
            let log = h.log(0);
            let reported = log.contains("corrupt") || log.contains("orrupt");
            let dropped = key_count(&h, 0).is_some();
            assert!(reported || dropped, "{log}");
        }
        Err(e) => {
            eprintln!("node 1 refused the damaged data directory: {e}");
            // Refused to start: it must say why, and exit non-zero.
            let code = h.cluster.wait_exit(0, Duration::from_secs(10));
            assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
            let log = h.log(0);
            eprintln!("{log}");
            assert!(log.contains("cannot open storage"), "{log}");
        }
    }
    never_bad(&h);
    assert_eq!(
        h.client(1).get("precious").unwrap().values,
        vec![good.clone()]
    );
}

/// Every file under `dir` with its contents, to prove nothing changed.
fn tree_state(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Asks node `i` to finalize; Ok(cluster version) or Err((status, reason)).
fn finalize(h: &Harness, i: usize, target: &str) -> Result<String, (Option<u16>, String)> {
    h.client(i)
        .post_json(&format!("/v1/admin/finalize?target={target}"))
        .map(|v| {
            v["cluster_version"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .map_err(|e| (e.status(), e.to_string()))
}

#[test]
fn rolling_upgrade_under_load_then_finalize_migrates_every_node() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, c| c.release = Some("0.1.0".into()));
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    for i in 0..3 {
        let s = h.status(i);
        assert_eq!(s["active_cluster_version"], "0.1.0", "{s}");
        assert_eq!(s["live_schema"], 1, "{s}");
    }
    let load = Load::start(h.urls(), 2);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        h.cluster.stop(i, Duration::from_secs(15));
        h.edit_config(i, |c| c.release = Some("0.2.0".into()));
        if i == 0 {
            // The plan, read from the stopped node's data; nothing changes.
            let before = tree_state(&h.data_dir(0));
            let (ok, out, _) = h.cli(&["migrate", "--dry-run", "--config", &h.config_path(0)]);
            assert!(ok);
            assert!(
                out.contains("live schema 1, cluster version 0.1.0"),
                "{out}"
            );
            assert!(out.contains("release 0.2.0"), "{out}");
            assert!(out.contains("records: schema 1:"), "{out}");
            assert!(
                out.contains("no migration at start-up") && out.contains("finalized at 0.2.0"),
                "{out}"
            );
            assert_eq!(
                before,
                tree_state(&h.data_dir(0)),
                "dry run changed the data"
            );
        }
        h.cluster.spawn(i).unwrap();
        h.cluster.wait_node_ready(i, READY).unwrap();
        h.wait_all_up(READY);
        if i < 2 {
            // Some node still runs 0.1.0: finalization names it.
            let (code, why) = finalize(&h, i, "0.2.0").unwrap_err();
            assert_eq!(code, Some(409), "{why}");
            assert!(why.contains("runs 0.1.0"), "{why}");
            assert_eq!(
                h.status(i)["live_schema"],
                1,
                "no new format before finalization"
            );
        }
    }
    // The dry run on a running node is refused.
    let (ok, _, err) = h.cli(&["migrate", "--dry-run", "--config", &h.config_path(1)]);
    assert!(!ok && err.contains("in use"), "{err}");
    // Every node runs 0.2.0: finalization is accepted once gossip has it.
    let mut last = String::new();
    wait_for(
        "finalize to be accepted",
        Duration::from_secs(20),
        || match finalize(&h, 2, "0.2.0") {
            Ok(v) => {
                assert_eq!(v, "0.2.0");
                true
            }
            Err((code, why)) => {
                assert_ne!(code, Some(400), "{why}");
                last = why;
                false
            }
        },
    );
    eprintln!("finalize accepted (last refusal: {last:?})");
    wait_for(
        "every node to migrate to schema 2",
        Duration::from_secs(30),
        || {
            (0..3).all(|i| {
                h.client(i).json("/v1/status").is_ok_and(|s| {
                    s["live_schema"] == 2
                        && s["active_cluster_version"] == "0.2.0"
                        && s["migration"]["state"] == "finished"
                        && s["ready"] == true
                })
            })
        },
    );
    for i in 0..3 {
        let b = h.client(i).json("/v1/admin/backups").unwrap();
        let list = b["backups"].as_array().unwrap();
        assert!(
            list.iter()
                .any(|m| m["reason"] == "before migration to schema 2" && m["schema"] == 1),
            "node {}: {b}",
            i + 1
        );
        assert!(h.log(i).contains("schema migration finished"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.finish();
    check_acked(&h, &acked);
}

#[test]
fn downgrade_after_finalization_is_refused_with_a_reason() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, c| {
        c.release = Some("0.2.0".into());
        c.initial_cluster_version = Some("0.1.0".into());
    });
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    h.client(0).put("k", b"v", None).unwrap();
    wait_for("finalize to be accepted", Duration::from_secs(20), || {
        finalize(&h, 0, "0.2.0").is_ok()
    });
    wait_for("node 2 to migrate", Duration::from_secs(30), || {
        h.client(1)
            .json("/v1/status")
            .is_ok_and(|s| s["live_schema"] == 2 && s["ready"] == true)
    });
    h.cluster.stop(1, Duration::from_secs(15));
    h.edit_config(1, |c| c.release = Some("0.1.0".into()));
    let (ok, out, _) = h.cli(&["migrate", "--dry-run", "--config", &h.config_path(1)]);
    assert!(ok && out.contains("refuse to start"), "{out}");
    h.cluster.spawn(1).unwrap();
    let mut status = Value::Null;
    wait_for("node 2 to report its refusal", READY, || {
        match h.client(1).json("/v1/status") {
            Ok(s) if s["refusal"].is_string() => {
                status = s;
                true
            }
            _ => false,
        }
    });
    // A 0.1.0 binary has never heard of 0.2.0: it names both releases.
    let why = status["refusal"].as_str().unwrap();
    assert!(
        why.contains("0.1.0") && why.contains("cluster version 0.2.0"),
        "{why}"
    );
    assert_eq!(status["ready"], false);
    assert_eq!(status["phase"], "Refusing");
    let (code, body) = h.client(1).text("/ready").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("cluster version 0.2.0"), "{body}");
    assert!(h.log(1).contains("refusing to serve"), "{}", h.log(1));
    // The others serve on.
    assert_eq!(h.client(0).get("k").unwrap().values, vec![b"v".to_vec()]);
}

#[test]
fn backup_then_restore_rejoins_and_resyncs() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, c| {
        c.token = Some("admin-token".into());
        c.backup_retention = Some(2);
    });
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    // The token guards the admin API too.
    let anonymous = Client::new(&h.cluster.nodes[1].http, None);
    assert_eq!(
        anonymous
            .post_json("/v1/admin/backup")
            .unwrap_err()
            .status(),
        Some(401)
    );
    assert_eq!(
        anonymous.json("/v1/admin/backups").unwrap_err().status(),
        Some(401)
    );
    for i in 0..20 {
        h.client(i % 3)
            .put(&format!("before-{i}"), b"old", None)
            .unwrap();
    }
    let node2 = h.cluster.nodes[1].http.clone();
    let (ok, out, _) = h.cli(&["backup", "--node", &node2]);
    assert!(ok, "{out}");
    let taken: Value = serde_json::from_str(&out).unwrap();
    let label = taken["label"].as_str().unwrap().to_string();
    assert_eq!(taken["reason"], "manual");
    assert!(taken["records"].as_u64().unwrap() >= 20, "{taken}");
    // Retention keeps the two newest.
    for _ in 0..2 {
        h.client(1).post_json("/v1/admin/backup").unwrap();
    }
    let (ok, out, _) = h.cli(&["backups", "--node", &node2]);
    assert!(
        ok && !out.contains(&label),
        "the oldest was not pruned: {out}"
    );
    let newest = h.client(1).json("/v1/admin/backups").unwrap()["backups"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..20 {
        h.client(i % 3)
            .put(&format!("after-{i}"), b"new", None)
            .unwrap();
    }
    let epoch_before = h.status(1)["epoch"].as_u64().unwrap();
    // Restoring a running node is refused.
    let cfg = h.config_path(1);
    let (ok, _, err) = h.cli(&["restore", "--config", &cfg, "--backup", &newest]);
    assert!(!ok && err.contains("in use"), "{err}");
    h.cluster.kill(1);
    let (ok, out, err) = h.cli(&["restore", "--config", &cfg, "--backup", &newest]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("from backup {newest}")) && out.contains("verified"),
        "{out}"
    );
    h.cluster.spawn(1).unwrap();
    h.cluster.wait_node_ready(1, READY).unwrap();
    let s = h.status(1);
    assert!(
        s["epoch"].as_u64().unwrap() > epoch_before,
        "restored node reuses an epoch: {s}"
    );
    assert!(h.log(1).contains("learned its epochs"), "{}", h.log(1));
    // Anti-entropy brings back what was written after the backup.
    wait_for("node 2 to re-sync", Duration::from_secs(30), || {
        let n = key_count(&h, 1);
        n.is_some() && n == key_count(&h, 0) && n == key_count(&h, 2)
    });
    assert_eq!(key_count(&h, 1), Some(40));
    // Until anti-entropy has found every replica equal, the restored node
    // answers no reads (it may lack writes it acknowledged).
    serves_again(&h, 1, "after", 20, b"new");
    // The backups survived the restore.
    let list = h.client(1).json("/v1/admin/backups").unwrap();
    assert!(list.to_string().contains(&newest), "{list}");
}

#[test]
fn a_node_whose_disk_was_lost_rejoins_as_existing_with_a_new_epoch() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    for i in 0..20 {
        h.client(i % 3).put(&format!("k-{i}"), b"v", None).unwrap();
    }
    let epoch_before = h.status(1)["epoch"].as_u64().unwrap();
    // The disk is lost: an empty data directory, and the operator says the
    // node has run before.
    h.cluster.kill(1);
    std::fs::remove_dir_all(h.data_dir(1)).unwrap();
    h.edit_config(1, |c| c.initial_cluster_state = Some("existing".into()));
    h.cluster.spawn(1).unwrap();
    h.cluster.wait_node_ready(1, READY).unwrap();
    let s = h.status(1);
    assert!(
        s["epoch"].as_u64().unwrap() > epoch_before,
        "a node whose disk was lost reuses an epoch: {s}"
    );
    // It re-syncs from the replicas, then serves reads again.
    wait_for("node 2 to re-sync", Duration::from_secs(30), || {
        key_count(&h, 1) == Some(20)
    });
    serves_again(&h, 1, "k", 20, b"v");
}

#[test]
fn a_node_whose_journal_was_lost_takes_a_new_epoch_without_being_told() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    for i in 0..30 {
        h.client(1).put(&format!("k-{i}"), b"v", None).unwrap();
    }
    let epoch_before = h.status(1)["epoch"].as_u64().unwrap();
    // A clean stop, then every fjall journal file (`*.jnl`) is truncated to
    // nothing; the
    // rest of the data directory stays, and the configuration is as it was.
    h.cluster.stop(1, Duration::from_secs(10));
    let mut journals = 0;
    let mut dirs = vec![h.data_dir(1)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "jnl") {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                journals += 1;
            }
        }
    }
    assert!(
        journals > 0,
        "no journal file found under {:?}",
        h.data_dir(1)
    );
    h.cluster.spawn(1).unwrap();
    h.cluster.wait_node_ready(1, READY).unwrap();
    let s = h.status(1);
    assert!(
        s["epoch"].as_u64().unwrap() > epoch_before,
        "a node whose journal was lost reuses an epoch: {s}"
    );
    // Writes acknowledged through it afterwards are readable everywhere.
    wait_for("node 2 to take writes", Duration::from_secs(30), || {
        h.client(1).put("probe", b"p", None).is_ok()
    });
    for i in 0..100 {
        h.client(1).put(&format!("after-{i}"), b"w", None).unwrap();
    }
    for at in [0, 2] {
        for i in 0..100 {
            assert_eq!(
                h.client(at).get(&format!("after-{i}")).unwrap().values,
                vec![b"w".to_vec()],
                "after-{i} via node {}",
                at + 1
            );
        }
    }
    serves_again(&h, 1, "k", 30, b"v");
}

/// A counter's value in node `i`'s `/metrics`.
fn counter(h: &Harness, i: usize, name: &str) -> u64 {
    let (_, m) = h.client(i).text("/metrics").unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[test]
fn restoring_a_backup_brings_back_no_delete_reaped_since() {
    let _g = serial();
    let mut h = Harness::start(3, &|_, _| {});
    h.cluster.wait_ready(READY).unwrap();
    h.wait_all_up(READY);
    for i in 0..100 {
        h.client(i % 3)
            .put(&format!("d-{i}"), b"old", None)
            .unwrap();
    }
    let node2 = h.cluster.nodes[1].http.clone();
    let (ok, out, _) = h.cli(&["backup", "--node", &node2]);
    assert!(ok, "{out}");
    let label = serde_json::from_str::<Value>(&out).unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..100 {
        let key = format!("d-{i}");
        let read = h.client(0).get(&key).unwrap();
        h.client(0).delete(&key, Some(&read.context)).unwrap();
    }
    let reaped = "cairn_core_tombstones_reaped_total";
    wait_for(
        "every tombstone to be reaped",
        Duration::from_secs(120),
        || counter(&h, 0, reaped) >= 100 && counter(&h, 2, reaped) >= 100,
    );
    h.cluster.kill(1);
    let cfg = h.config_path(1);
    let (ok, _, err) = h.cli(&["restore", "--config", &cfg, "--backup", &label]);
    assert!(ok, "{err}");
    h.cluster.spawn(1).unwrap();
    h.cluster.wait_node_ready(1, READY).unwrap();
    wait_for("node 2 to re-sync", Duration::from_secs(60), || {
        h.client(1).get("d-0").is_ok()
    });
    for at in [0, 1, 2] {
        for i in 0..100 {
            let read = h.client(at).get(&format!("d-{i}")).unwrap();
            assert!(
                read.values.is_empty(),
                "d-{i} came back through node {}: {:?}",
                at + 1,
                read.values
            );
        }
    }
    assert!(counter(&h, 1, "cairn_core_restored_keys_dropped_total") > 0);
}

/// Waits until node `i` answers reads again, then checks it reads
/// `{prefix}-0..n` as `value`.
fn serves_again(h: &Harness, i: usize, prefix: &str, n: usize, value: &[u8]) {
    wait_for(
        &format!("node {} to serve reads again", i + 1),
        Duration::from_secs(30),
        || h.client(i).get(&format!("{prefix}-0")).is_ok(),
    );
    for k in 0..n {
        assert_eq!(
            h.client(i).get(&format!("{prefix}-{k}")).unwrap().values,
            vec![value.to_vec()]
        );
    }
}
