//! `cairn local-cluster`: N nodes on 127.0.0.1 as child processes of this
//! binary, each with its own config file, data directory and log file in one
//! directory. Starting again on the same directory reuses the configs (same
//! ports, same secret) and the data; a different `--nodes` is refused, since
//! it would change the shape of the cluster the data belongs to.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::RngCore;

use crate::client::Client;
use crate::config::{FileConfig, QuorumFile};

/// One node of a local cluster.
pub struct LocalNode {
    pub id: u32,
    pub config: PathBuf,
    pub log: PathBuf,
    pub http: String,
    pub child: Option<Child>,
}

/// A set of child processes, stopped when dropped.
pub struct LocalCluster {
    /// The `cairn` binary the nodes run.
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub nodes: Vec<LocalNode>,
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for local use).
///
/// Chosen below the kernel's ephemeral range (32768 and up on Linux), so an
/// outgoing connection of an already running node cannot take it before the
/// node meant to listen on it binds.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..500 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Async runtime threads for each of `n` nodes sharing this machine: its
/// CPUs divided among them, at least one. More threads than CPUs only add
/// cross-thread wake-ups and context switches to every request.
pub fn threads_per_node(n: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    (cpus / n.max(1)).max(1)
}

/// The node ids of the `node-<i>.toml` configs in `dir`, sorted (empty if
/// there are none or `dir` does not exist).
pub fn existing_configs(dir: &Path) -> anyhow::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_prefix("node-")?.strip_suffix(".toml")?.parse().ok());
        if let Some(id) = id {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Refuses to run `n` nodes in a directory that holds a cluster of another
/// shape: new configs would take new ports, a new secret and a new member
/// list, and the existing data would not belong to the cluster they describe.
pub fn check_shape(dir: &Path, n: usize) -> anyhow::Result<()> {
    let ids = existing_configs(dir)?;
    if ids.is_empty() {
        return Ok(());
    }
    let expected: Vec<u32> = (1..=n as u32).collect();
    if ids != expected {
        let list: Vec<String> = ids.iter().map(|i| format!("node-{i}.toml")).collect();
        bail!(
            "{} already holds a cluster of {} node(s) ({}); --nodes {n} would change its shape \
             (ports, secret, member list), so nothing was changed. Run it with --nodes {}, \
             or use another --dir for a new cluster.",
            dir.display(),
            ids.len(),
            list.join(", "),
            ids.len()
        );
    }
    Ok(())
}

/// Writes `node-<i>.toml` for nodes 1..=n unless they exist, and returns the
/// paths. A directory holding configs for another number of nodes is
/// refused ([`check_shape`]). `tweak` may adjust each new config. The nodes share the machine's
/// CPUs ([`threads_per_node`]).
pub fn write_configs(
    dir: &Path,
    n: usize,
    tweak: &dyn Fn(&mut FileConfig),
) -> anyhow::Result<Vec<PathBuf>> {
    check_shape(dir, n)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let paths: Vec<PathBuf> = (1..=n)
        .map(|i| dir.join(format!("node-{i}.toml")))
        .collect();
    if paths.iter().all(|p| p.exists()) {
        return Ok(paths);
    }
    let mut secret = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((free_port()?, free_port()?));
    }
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let replicas = n.min(3) as u8;
    let threads = threads_per_node(n);
    for (i, path) in paths.iter().enumerate() {
        let mut cfg = FileConfig {
            id: Some(i as u32 + 1),
            peer_addr: Some(format!("127.0.0.1:{}", ports[i].0)),
            http_addr: Some(format!("127.0.0.1:{}", ports[i].1)),
            data_dir: Some(dir.join(format!("data-{}", i + 1))),
            members: members.clone(),
            secret: Some(secret.clone()),
            quorum: QuorumFile {
                n: replicas,
                r: replicas / 2 + 1,
                w: replicas / 2 + 1,
            },
            worker_threads: Some(threads),
            ..FileConfig::default()
        };
        tweak(&mut cfg);
        // A new cluster starts at the version of the release it runs.
        if cfg.initial_cluster_version.is_none() {
            cfg.initial_cluster_version = Some(
                cfg.release
                    .clone()
                    .unwrap_or_else(|| cairn_core::version::ReleaseId::current().version().into()),
            );
        }
        std::fs::write(path, cfg.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(paths)
}

impl LocalCluster {
    /// Starts one child process per config file.
    pub fn start(dir: &Path, configs: &[PathBuf]) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_with(&std::env::current_exe()?, dir, configs)
    }

    /// Like [`LocalCluster::start`], running the given `cairn` binary.
    pub fn start_with(exe: &Path, dir: &Path, configs: &[PathBuf]) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
        };
        for (i, config) in configs.iter().enumerate() {
            let file = FileConfig::read(config)?;
            let http = format!(
                "http://{}",
                file.http_addr.clone().context("config without http_addr")?
            );
            cluster.nodes.push(LocalNode {
                id: file.id.unwrap_or(i as u32 + 1),
                config: config.clone(),
                log: dir.join(format!("node-{}.log", i + 1)),
                http,
                child: None,
            });
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// (Re)starts node `i` (an index into `nodes`).
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let node = &mut self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("cannot open {}", node.log.display()))?;
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start a node process")?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until every node answers `/ready`.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.nodes.len() {
            self.wait_node_ready(i, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// Waits until node `i` answers `/ready`; fails early if it exits.
    pub fn wait_node_ready(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let c = Client::with_timeout(&self.nodes[i].http, None, Duration::from_secs(2));
        loop {
            if c.ready() {
                return Ok(());
            }
            if let Some(child) = self.nodes[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "node {} exited with {status}; see {}",
                        self.nodes[i].id,
                        self.nodes[i].log.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not ready after {timeout:?}; see {}",
                    self.nodes[i].id,
                    self.nodes[i].log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks node `i` to stop cleanly (SIGTERM) and waits; kills it after `grace`.
    pub fn stop(&mut self, i: usize, grace: Duration) {
        if let Some(mut child) = self.nodes[i].child.take() {
            terminate(&child);
            let deadline = Instant::now() + grace;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() > deadline => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills node `i` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for node `i` to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.nodes[i].child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Collects the nodes whose process has exited since the last call, and
    /// describes each: id, pid, exit status and log file.
    pub fn reap_exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                out.push(format!(
                    "node {} (pid {}) exited: {}; its log is {}",
                    node.id,
                    child.id(),
                    describe_exit(status),
                    node.log.display()
                ));
                node.child = None;
            }
        }
        out
    }

    pub fn stop_all(&mut self, grace: Duration) {
        for node in &self.nodes {
            if let Some(child) = &node.child {
                terminate(child);
            }
        }
        for i in 0..self.nodes.len() {
            self.stop(i, grace);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// "exit code 1", or "killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        None => status.to_string(),
    }
}

/// Sends SIGTERM to a child.
pub fn terminate(child: &Child) {
    // SAFETY: kill(2) with a pid we own and a valid signal has no memory effects.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// `cairn local-cluster`.
pub fn run(nodes: usize, dir: &Path) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    check_shape(dir, nodes)?;
    let configs = write_configs(dir, nodes, &|_| {})?;
    let mut cluster = LocalCluster::start(dir, &configs)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ready = cluster.wait_ready(Duration::from_secs(30));
    if let Err(e) = ready {
        cluster.stop_all(Duration::from_secs(5));
        return Err(e);
    }
    println!("cairn local cluster: {nodes} nodes in {}", dir.display());
    for n in &cluster.nodes {
        println!(
            "  node {}  {}  (pid {}, config {}, log {})",
            n.id,
            n.http,
            n.child.as_ref().map_or(0, Child::id),
            n.config.display(),
            n.log.display()
        );
    }
    let a = &cluster.nodes[0].http;
    let b = &cluster.nodes[nodes.min(2) - 1].http;
    println!();
    println!("try:");
    println!("  curl -X PUT --data-binary 'hello' {a}/v1/kv/greeting");
    println!("  curl -i {b}/v1/kv/greeting");
    println!("  curl -s {a}/v1/status");
    println!("  curl -s {a}/metrics");
    println!("  cairn get greeting --node {b}");
    println!();
    println!("Ctrl-C stops every node cleanly.");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let sig = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, std::io::Error>(Some("SIGTERM")),
                r = tokio::signal::ctrl_c() => return r.map(|_| Some("SIGINT")),
                _ = tick.tick() => {
                    for line in cluster.reap_exited() {
                        eprintln!("{line}");
                    }
                    if cluster.nodes.iter().all(|n| n.child.is_none()) {
                        return Ok(None);
                    }
                }
            }
        }
    })?;
    let Some(sig) = sig else {
        bail!("every node has exited");
    };
    eprintln!("{sig}: stopping nodes");
    cluster.stop_all(Duration::from_secs(15));
    eprintln!("stopped");
    Ok(())
}
