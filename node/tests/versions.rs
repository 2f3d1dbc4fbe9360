//! Real-process tests of releases across a cluster: how peers see a node
//! that refuses to serve, and `cairn finalize --wait`. `cairn serve` nodes
//! on 127.0.0.1 with free ports and temporary data directories; every
//! process is killed when its cluster is dropped, panics included. The tests
//! run one at a time.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
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
    token: Option<String>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Nodes running `release`, bootstrapped at cluster version `initial`.
    fn start(n: usize, release: &str, initial: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let configs = write_configs(dir.path(), n, &|c| fast(c)).unwrap();
        for path in &configs {
            let mut c = FileConfig::read(path).unwrap();
            c.release = Some(release.into());
            c.initial_cluster_version = Some(initial.into());
            std::fs::write(path, c.to_string()).unwrap();
        }
        let token = FileConfig::read(&configs[0]).unwrap().token;
        let cluster =
            LocalCluster::start_with(Path::new(env!("CARGO_BIN_EXE_cairn")), dir.path(), &configs)
                .unwrap();
        let mut h = Harness {
            cluster,
            token,
            _dir: dir,
        };
        h.cluster.wait_ready(READY).unwrap();
        h.wait_all_up(READY);
        h
    }

    fn client(&self, i: usize) -> Client {
        Client::with_timeout(
            &self.cluster.nodes[i].http,
            self.token.clone(),
            Duration::from_secs(5),
        )
    }

    fn edit_config(&self, i: usize, f: impl FnOnce(&mut FileConfig)) {
        let path = &self.cluster.nodes[i].config;
        let mut c = FileConfig::read(path).unwrap();
        f(&mut c);
        std::fs::write(path, c.to_string()).unwrap();
    }

    /// Runs the `cairn` binary; returns (exit code, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
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
        (out.status.code(), o, e)
    }

    fn status(&self, i: usize) -> Value {
        self.client(i).json("/v1/status").unwrap()
    }

    /// Waits until every node sees every other as up.
    fn wait_all_up(&self, timeout: Duration) {
        for i in 0..self.cluster.nodes.len() {
            wait_for(
                &format!("node {} to see all peers up", i + 1),
                timeout,
                || {
                    self.client(i).json("/v1/status").is_ok_and(|s| {
                        s["peers"].as_array().is_some_and(|p| {
                            p.iter()
                                .all(|p| p["up"] == true && p["release"].is_string())
                        })
                    })
                },
            );
        }
    }

    /// Stops node `i` and starts it again as `release`.
    fn restart_as(&mut self, i: usize, release: &str) {
        self.cluster.stop(i, Duration::from_secs(15));
        // (The bootstrap cluster version only matters to an empty data
        // directory; it must be one this release can serve at.)
        self.edit_config(i, |c| {
            c.release = Some(release.into());
            c.initial_cluster_version = Some(release.into());
        });
        self.cluster.spawn(i).unwrap();
        wait_for(
            &format!("node {} to refuse {release}", i + 1),
            READY,
            || {
                self.client(i)
                    .json("/v1/status")
                    .is_ok_and(|s| s["phase"] == "Refusing" && s["release"] == release)
            },
        );
    }

    /// Waits until nodes `others` list node `i` (1-based id `i + 1`) with
    /// `release` and as refusing.
    fn wait_seen_refusing(&self, i: usize, release: &str, others: &[usize]) {
        let id = (i + 1) as u64;
        for &j in others {
            let mut last = Value::Null;
            let ok = poll(Duration::from_secs(30), || {
                let Ok(s) = self.client(j).json("/v1/status") else {
                    return false;
                };
                let p = s["peers"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["id"] == id).cloned())
                    .unwrap_or(Value::Null);
                let seen = p["release"] == release && p["health"] == "Refusing";
                last = p;
                seen
            });
            assert!(
                ok,
                "node {} still lists node {} as {}: {last}",
                j + 1,
                i + 1,
                last["health"]
            );
        }
    }
}

fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(poll(timeout, f), "timed out waiting for {what}");
}

fn finalize(h: &Harness, i: usize, target: &str) -> bool {
    h.client(i)
        .post_json(&format!("/v1/admin/finalize?target={target}"))
        .is_ok()
}

/// Rows of the release table: (oldest, the next, the one after), when the
/// table has three releases.
fn three_releases() -> Option<(&'static str, &'static str, &'static str)> {
    let v = |i: u8| ReleaseId(i).get().map(|r| r.version);
    Some((v(0)?, v(1)?, v(2)?))
}

#[test]
fn peers_see_a_downgraded_node_refuse_with_its_release() {
    let _g = serial();
    let Some((old, new, _)) = three_releases() else {
        return;
    };
    let mut h = Harness::start(3, new, old);
    h.client(0).put("k", b"v", None).unwrap();
    wait_for("finalize to be accepted", Duration::from_secs(20), || {
        finalize(&h, 0, new)
    });
    wait_for(
        "every node to serve the new schema",
        Duration::from_secs(30),
        || {
            (0..3).all(|i| {
                h.client(i).json("/v1/status").is_ok_and(|s| {
                    s["live_schema"] == ReleaseId(1).release().schema && s["ready"] == true
                })
            })
        },
    );
    // The old release cannot open the new schema: node 1 refuses, but can
    // still talk to its peers.
    h.restart_as(0, old);
    h.wait_seen_refusing(0, old, &[1, 2]);
    // It talks to them, and they to it.
    for j in [1, 2] {
        let p = &h.status(j)["peers"][0];
        assert_eq!(p["up"], true, "{p}");
        assert!(p["refused"].is_null(), "{p}");
    }
}

#[test]
fn peers_see_a_node_of_a_release_they_cannot_talk_to_as_not_serving() {
    let _g = serial();
    let Some((old, _, newest)) = three_releases() else {
        return;
    };
    let mut h = Harness::start(3, old, old);
    // Two releases ahead: it needs a finalized cluster, and its peers share
    // no protocol with it.
    h.restart_as(0, newest);
    h.wait_seen_refusing(0, newest, &[1, 2]);
    for j in [1, 2] {
        let p = &h.status(j)["peers"][0];
        assert!(p["refused"].is_string(), "{p}");
        assert_eq!(p["up"], false, "{p}");
    }
}

#[test]
fn finalize_wait_returns_once_every_node_has_migrated() {
    let _g = serial();
    let Some((old, new, _)) = three_releases() else {
        return;
    };
    let h = Harness::start(3, new, old);
    for i in 0..50 {
        h.client(i % 3)
            .put(&format!("k{i}"), &[b'v'; 600], None)
            .unwrap();
    }
    let url = h.cluster.nodes[1].http.clone();
    let mut out = String::new();
    // Refused (exit 3) until gossip has told node 2 every peer runs `new`.
    wait_for(
        "finalize --wait to be accepted",
        Duration::from_secs(60),
        || {
            let (code, o, e) = h.cli(&[
                "finalize",
                "--wait",
                "--target",
                new,
                "--timeout",
                "60",
                "--node",
                &url,
            ]);
            assert_ne!(code, Some(6), "the wait failed: {o}{e}");
            out = o;
            code == Some(0)
        },
    );
    let schema = ReleaseId(1).release().schema;
    assert!(
        out.contains(&format!("every node serves schema {schema}")),
        "{out}"
    );
    // No waiting here: --wait returned only once every node was done.
    for i in 0..3 {
        let s = h.status(i);
        assert_eq!(s["live_schema"], schema, "node {}: {s}", i + 1);
        assert_eq!(s["migration"]["state"], "finished", "node {}: {s}", i + 1);
        assert_eq!(s["ready"], true, "node {}: {s}", i + 1);
    }
    // And status --wait agrees at once.
    let (code, _, err) = h.cli(&["status", "--wait", "--timeout", "30", "--node", &url]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("every node serves schema {schema}")),
        "{err}"
    );
}
