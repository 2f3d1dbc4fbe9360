//! `cairn bench`: put throughput and latency against a 3-node loopback
//! cluster (N=3, R=2, W=2, acknowledged only once durable on W replicas),
//! with 1 and with 64 concurrent clients. The same load generator can target
//! an etcd cluster through its JSON gateway (`--etcd`), so both systems are
//! measured by identical clients (see `node/bench/etcd.sh`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

use crate::client::Client;
use crate::local_cluster::{write_configs, LocalCluster};

/// What to benchmark and how hard.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub value_size: usize,
    /// etcd client URLs; empty means start and measure a cairn cluster.
    pub etcd: Vec<String>,
    /// Where the cairn cluster keeps its data (a fresh temporary directory if None).
    pub dir: Option<PathBuf>,
    pub json: bool,
}

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub system: String,
    pub clients: usize,
    pub puts: u64,
    pub errors: u64,
    pub seconds: f64,
    pub puts_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

enum Target {
    Cairn(Client),
    Etcd { agent: ureq::Agent, url: String },
}

impl Target {
    fn put(&self, key: &str, value: &[u8]) -> bool {
        match self {
            Target::Cairn(c) => c.put(key, value, None).is_ok(),
            Target::Etcd { agent, url } => {
                let body = serde_json::json!({
                    "key": STANDARD.encode(key),
                    "value": STANDARD.encode(value),
                })
                .to_string();
                match agent
                    .post(url)
                    .header("Content-Type", "application/json")
                    .send(body.as_bytes())
                {
                    Ok(mut r) => {
                        let ok = r.status().is_success();
                        let _ = r.body_mut().read_to_vec();
                        ok
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

fn make_target(endpoint: &str, etcd: bool) -> Target {
    if etcd {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Target::Etcd {
            agent: ureq::Agent::new_with_config(config),
            url: format!("{}/v3/kv/put", endpoint.trim_end_matches('/')),
        }
    } else {
        Target::Cairn(Client::new(endpoint, None))
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs `clients` threads putting distinct keys for `warmup + duration`;
/// only the last `duration` is measured.
pub fn measure(
    system: &str,
    endpoints: &[String],
    etcd: bool,
    clients: usize,
    opts: &BenchOptions,
) -> BenchRow {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let run_id = Instant::now().elapsed().as_nanos() ^ std::process::id() as u128;
    let value: Vec<u8> = (0..opts.value_size)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut handles = Vec::new();
    for t in 0..clients {
        let target = make_target(&endpoints[t % endpoints.len()], etcd);
        let stop = stop.clone();
        let measuring = measuring.clone();
        let value = value.clone();
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench-{run_id:x}-{t}-{i}");
                i += 1;
                let started = Instant::now();
                let ok = target.put(&key, &value);
                let us = started.elapsed().as_micros() as u64;
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        lat.push(us);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    std::thread::sleep(opts.warmup);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(opts.duration);
    measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((lat, e)) = h.join() {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort_unstable();
    BenchRow {
        system: system.to_string(),
        clients,
        puts: all.len() as u64,
        errors,
        seconds,
        puts_per_sec: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

pub fn print_table(rows: &[BenchRow]) {
    println!(
        "{:<8} {:>8} {:>10} {:>9} {:>9} {:>8}",
        "system", "clients", "puts/s", "p50 ms", "p99 ms", "errors"
    );
    for r in rows {
        println!(
            "{:<8} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>8}",
            r.system, r.clients, r.puts_per_sec, r.p50_ms, r.p99_ms, r.errors
        );
    }
}

/// `cairn bench`.
pub fn run(opts: BenchOptions) -> anyhow::Result<()> {
    if opts.clients.is_empty() || opts.clients.contains(&0) {
        bail!("--clients needs positive numbers");
    }
    let mut rows = Vec::new();
    if !opts.etcd.is_empty() {
        for &c in &opts.clients {
            rows.push(measure("etcd", &opts.etcd, true, c, &opts));
        }
    } else {
        let (dir, temporary) = match &opts.dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("cairn-bench-{}", std::process::id())),
                true,
            ),
        };
        let configs = write_configs(&dir, 3, &|c| c.log_format = None)?;
        let mut cluster = LocalCluster::start(&dir, &configs)?;
        let result = (|| {
            cluster.wait_ready(Duration::from_secs(30))?;
            // Let handshakes and failure detection settle.
            std::thread::sleep(Duration::from_millis(500));
            let endpoints: Vec<String> = cluster.nodes.iter().map(|n| n.http.clone()).collect();
            for &c in &opts.clients {
                rows.push(measure("cairn", &endpoints, false, c, &opts));
            }
            Ok::<(), anyhow::Error>(())
        })();
        cluster.stop_all(Duration::from_secs(10));
        drop(cluster);
        if temporary {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result?;
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}
