//! `cairn bench`: put throughput and latency against a 3-node loopback
//! cluster (N=3, R=2, W=2, acknowledged only once durable on W replicas),
//! with 1 and with 64 concurrent clients. The same load generator can target
//! an etcd cluster through its JSON gateway (`--etcd`), so both systems are
//! measured by identical clients (see `node/bench/etcd.sh`). The clients are
//! tasks on one thread, each with one keep-alive HTTP/1.1 connection, so the
//! load generator leaves the CPU to the servers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

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

/// Parses `http://host:port` into a socket address.
fn endpoint_addr(endpoint: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let hostport = endpoint
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{endpoint}: only http:// endpoints are supported"))?;
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{endpoint}: no address"))
}

/// The request a client sends for `key`: a cairn PUT or an etcd gateway put.
fn request(out: &mut Vec<u8>, host: &str, etcd: bool, key: &str, value: &[u8]) {
    out.clear();
    if etcd {
        let body = serde_json::json!({
            "key": STANDARD.encode(key),
            "value": STANDARD.encode(value),
        })
        .to_string();
        out.extend_from_slice(
            format!(
                "POST /v3/kv/put HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body.as_bytes());
    } else {
        out.extend_from_slice(
            format!(
                "PUT /v1/kv/{key} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
                value.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(value);
    }
}

/// Reads one HTTP/1.1 response (Content-Length framed) from `conn`, using
/// `buf` across calls. Returns the status and whether the server keeps the
/// connection open.
async fn response(
    conn: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    use tokio::io::AsyncReadExt as _;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 head"))?;
            let mut lines = head.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| bad("bad status line"))?;
            let mut len = 0usize;
            let mut keep = true;
            for l in lines {
                let Some((name, value)) = l.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.parse().map_err(|_| bad("bad content-length"))?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(bad("chunked responses are not supported"));
                } else if name.eq_ignore_ascii_case("connection") {
                    keep = !value.eq_ignore_ascii_case("close");
                }
            }
            let total = end + 4 + len;
            while buf.len() < total {
                if conn.read_buf(buf).await? == 0 {
                    return Err(bad("connection closed mid-body"));
                }
            }
            buf.drain(..total);
            return Ok((status, keep));
        }
        if conn.read_buf(buf).await? == 0 {
            return Err(bad("connection closed"));
        }
    }
}

/// One client: sequential puts of distinct keys over one keep-alive
/// connection (re-opened after an error). Returns latencies (microseconds)
/// of the successful puts made while `measuring`, and the failures.
async fn client_loop(
    addr: std::net::SocketAddr,
    etcd: bool,
    prefix: String,
    value: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> (Vec<u64>, u64) {
    use tokio::io::AsyncWriteExt as _;
    let host = addr.to_string();
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0u64;
    let mut conn: Option<tokio::net::TcpStream> = None;
    let (mut req, mut buf) = (Vec::with_capacity(512), Vec::with_capacity(4096));
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{prefix}-{i}");
        i += 1;
        request(&mut req, &host, etcd, &key, &value);
        let started = Instant::now();
        let outcome = async {
            if conn.is_none() {
                let c = tokio::net::TcpStream::connect(addr).await?;
                c.set_nodelay(true)?;
                conn = Some(c);
                buf.clear();
            }
            let c = conn.as_mut().expect("connected above");
            c.write_all(&req).await?;
            response(c, &mut buf).await
        }
        .await;
        let us = started.elapsed().as_micros() as u64;
        let ok = match outcome {
            Ok((status, keep)) => {
                if !keep {
                    conn = None;
                }
                (200..300).contains(&status)
            }
            Err(_) => {
                conn = None;
                false
            }
        };
        if measuring.load(Ordering::Relaxed) {
            if ok {
                lat.push(us);
            } else {
                errors += 1;
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    (lat, errors)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs `clients` concurrent clients putting distinct keys for
/// `warmup + duration`; only the last `duration` is measured. The clients
/// are tasks on one thread, each with its own keep-alive connection, so the
/// load generator takes as little CPU as possible from the servers.
pub fn measure(
    system: &str,
    endpoints: &[String],
    etcd: bool,
    clients: usize,
    opts: &BenchOptions,
) -> anyhow::Result<BenchRow> {
    let addrs = endpoints
        .iter()
        .map(|e| endpoint_addr(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        ^ std::process::id() as u128;
    let value: Arc<Vec<u8>> = Arc::new(
        (0..opts.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (warmup, duration) = (opts.warmup, opts.duration);
    let (all, errors, seconds) = rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|t| {
                tokio::spawn(client_loop(
                    addrs[t % addrs.len()],
                    etcd,
                    format!("bench-{run_id:x}-{t}"),
                    value.clone(),
                    stop.clone(),
                    measuring.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(warmup).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(duration).await;
        measuring.store(false, Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok(Ok((lat, e))) = tokio::time::timeout(Duration::from_secs(15), t).await {
                all.extend(lat);
                errors += e;
            }
        }
        (all, errors, seconds)
    });
    let mut all = all;
    all.sort_unstable();
    Ok(BenchRow {
        system: system.to_string(),
        clients,
        puts: all.len() as u64,
        errors,
        seconds,
        puts_per_sec: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    })
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
            rows.push(measure("etcd", &opts.etcd, true, c, &opts)?);
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
                rows.push(measure("cairn", &endpoints, false, c, &opts)?);
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
