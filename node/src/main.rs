//! `cairn`: run a node, a local cluster, a benchmark, or talk to a node.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cairn_node::bench::{self, BenchOptions};
use cairn_node::client::{Client, ReadResult};
use cairn_node::config::Config;
use cairn_node::{follow, local_cluster, logging, offline, server};
use clap::{Parser, Subcommand};

/// See the comment on transparent huge pages in `main`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes, for scripts (also in node/README.md).
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  error (node unreachable, request refused, ...)
  2  invalid configuration (serve), or bad command-line arguments
  3  finalize refused: some node blocks it
  4  get: the key does not exist (or was deleted)
  5  get: the key has concurrent values (siblings); they are listed on stderr,
     or printed with --json
  6  finalize --wait, status --wait: the migrations did not finish (a node
     refuses to serve or halted, or the wait timed out); the reason is on
     stderr";

/// `cairn get` found no value.
const EXIT_NOT_FOUND: u8 = 4;
/// `cairn get` found several concurrent values.
const EXIT_SIBLINGS: u8 = 5;
/// `--wait`: the migrations did not finish.
const EXIT_NOT_FINISHED: u8 = 6;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A Dynamo-style replicated key-value store",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Base URL of any node's HTTP API (`http://` if no scheme is given).
    #[arg(long, env = "CAIRN_NODE", default_value = "http://127.0.0.1:8101")]
    node: String,
    /// Bearer token, if the node requires one.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args)]
struct FollowArgs {
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// TOML configuration file; CAIRN_* environment variables override it.
        #[arg(long, env = "CAIRN_CONFIG")]
        config: PathBuf,
    },
    /// Start N nodes on 127.0.0.1 as child processes; Ctrl-C stops them.
    LocalCluster {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for configs, data and logs (reused if it exists).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write a value; `-` reads it from stdin (byte for byte).
    Put {
        key: String,
        /// The value, or `-` for stdin.
        value: String,
        /// Causal context from a previous read.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Read a key: its value on stdout byte for byte (no newline added), the
    /// context on stderr.
    ///
    /// Not found exits 4. Concurrent values (siblings) exit 5 and are listed
    /// on stderr, nothing on stdout; with --json every value is printed.
    #[command(after_help = EXIT_CODES)]
    Get {
        key: String,
        /// Print the node's JSON document instead: {"key", "context",
        /// "siblings": [{"value", "encoding", "dot"}]}, each value as a JSON
        /// string if it is UTF-8 ("encoding": "utf8"), else base64
        /// ("encoding": "base64"). Exit codes are the same.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show a node's status (versions, peers, drift) as JSON.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// First wait until every node serves the schema the active cluster
        /// version asks for and no migration runs (progress on stderr).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        follow: FollowArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Raise the active cluster version (after every node runs the new release).
    #[command(after_help = EXIT_CODES)]
    Finalize {
        /// Release to finalize at (default: the node's release).
        #[arg(long)]
        target: Option<String>,
        /// Then follow the migrations it starts until every node serves the
        /// new schema (progress on stdout); exit 6 if one fails or the wait
        /// times out.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        follow: FollowArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Take a backup on a node now (kept in its data_dir/backups).
    Backup {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// List a node's backups, oldest first.
    Backups {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Offline: replace a stopped node's data with one of its backups.
    Restore {
        #[arg(long, env = "CAIRN_CONFIG")]
        config: PathBuf,
        /// The backup's label (see `cairn backups`).
        #[arg(long)]
        backup: String,
    },
    /// Offline: show the schema migration a start would run.
    Migrate {
        #[arg(long, env = "CAIRN_CONFIG")]
        config: PathBuf,
        /// Only report; write nothing (required: migrations run at start-up).
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure puts/s and latency on a 3-node loopback cluster.
    Bench {
        /// Concurrent clients, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        clients: Vec<usize>,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Unmeasured warm-up seconds per run.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Measure an etcd cluster instead (comma-separated client URLs).
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// Directory for the cairn cluster (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print JSON rows instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // mimalloc asks for transparent huge pages; the kernel then zeroes 2 MiB
    // on each first touch, which cost about a tenth of a node's CPU under
    // load. Plain pages are cheaper for this allocation pattern.
    // SAFETY: prctl with integer arguments only changes this process's flags.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: invalid configuration: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            logging::init(cfg.log_format, cfg.id.0);
            let rt = match cfg.worker_threads {
                Some(1) => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
                Some(n) => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .enable_all()
                    .build()?,
                None => tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?,
            };
            let code = rt.block_on(server::serve(cfg));
            // Do not wait for blocked tasks (for example a wedged disk).
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(ExitCode::from(code as u8))
        }
        Command::LocalCluster { nodes, dir } => {
            local_cluster::run(nodes, &dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Put {
            key,
            value,
            context,
            node,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut buf)
                    .context("cannot read the value from stdin")?;
                buf
            } else {
                value.into_bytes()
            };
            client(&node).put(&key, &value, context.as_deref())?;
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { key, json, node } => {
            let c = client(&node);
            let (doc, r) = if json {
                let doc = c.get_document(&key)?;
                let r = ReadResult::from_document(&doc);
                (Some(doc), r)
            } else {
                (None, c.get(&key)?)
            };
            let mut out = std::io::stdout().lock();
            if let Some(doc) = doc {
                serde_json::to_writer_pretty(&mut out, &doc)?;
                out.write_all(b"\n")?;
            } else if r.values.len() == 1 {
                out.write_all(&r.values[0])?;
            }
            out.flush()?;
            eprintln!("context: {}", r.context);
            match r.values.len() {
                0 => {
                    eprintln!("not found");
                    Ok(ExitCode::from(EXIT_NOT_FOUND))
                }
                1 => Ok(ExitCode::SUCCESS),
                n => {
                    eprintln!("{n} concurrent values (siblings); write with this context to resolve them:");
                    if !json {
                        for (i, (v, dot)) in r.values.iter().zip(&r.dots).enumerate() {
                            eprintln!("  [{}] dot {dot}, {} bytes: {}", i + 1, v.len(), show(v));
                        }
                    }
                    Ok(ExitCode::from(EXIT_SIBLINGS))
                }
            }
        }
        Command::Delete { key, context, node } => {
            client(&node).delete(&key, context.as_deref())?;
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { wait, follow, node } => {
            let c = client(&node);
            if wait {
                let s = c.json("/v1/status")?;
                let cv = s["active_cluster_version"].as_str().unwrap_or_default();
                let Some(schema) = follow::schema_of(cv) else {
                    anyhow::bail!("the node reports an unknown cluster version {cv:?}");
                };
                let progress = |lines: &[String]| eprintln!("waiting: {}", lines.join("; "));
                if let Err(why) = wait_for_migrations(&c, schema, &follow, progress) {
                    eprintln!("{why}");
                    return Ok(ExitCode::from(EXIT_NOT_FINISHED));
                }
                eprintln!("every node serves schema {schema}; no migration runs");
            }
            let s = c.json("/v1/status")?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Finalize {
            target,
            wait,
            follow,
            node,
        } => {
            let mut path = "/v1/admin/finalize".to_string();
            if let Some(t) = target {
                path.push_str(&format!("?target={t}"));
            }
            let c = client(&node);
            match c.post_json(&path) {
                Ok(v) => {
                    let cv = v["cluster_version"].as_str().unwrap_or("?");
                    println!("cluster version is now {cv}");
                    if !wait {
                        return Ok(ExitCode::SUCCESS);
                    }
                    let Some(schema) = follow::schema_of(cv) else {
                        anyhow::bail!("the node reports an unknown cluster version {cv:?}");
                    };
                    println!("waiting for every node to migrate to schema {schema}");
                    let progress = |lines: &[String]| println!("  {}", lines.join("; "));
                    match wait_for_migrations(&c, schema, &follow, progress) {
                        Ok(()) => {
                            println!("every node serves schema {schema}: migrations finished");
                            Ok(ExitCode::SUCCESS)
                        }
                        Err(why) => {
                            eprintln!("migrations not finished: {why}");
                            Ok(ExitCode::from(EXIT_NOT_FINISHED))
                        }
                    }
                }
                Err(e) if e.status() == Some(409) => {
                    eprintln!("finalize refused: {e}");
                    Ok(ExitCode::from(3))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Backup { node } => {
            let v = client(&node).post_json("/v1/admin/backup")?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backups { node } => {
            let v = client(&node).json("/v1/admin/backups")?;
            let list = v["backups"].as_array().cloned().unwrap_or_default();
            println!("backups in {}:", v["dir"].as_str().unwrap_or("?"));
            println!(
                "{:<24} {:<25} {:<8} {:>6} {:>6} {:>10}  reason",
                "label", "created", "release", "schema", "epoch", "bytes"
            );
            for b in &list {
                println!(
                    "{:<24} {:<25} {:<8} {:>6} {:>6} {:>10}  {}",
                    b["label"].as_str().unwrap_or("?"),
                    b["created"].as_str().unwrap_or("?"),
                    b["release"].as_str().unwrap_or("?"),
                    b["schema"].to_string(),
                    b["epoch"].to_string(),
                    b["bytes"].to_string(),
                    b["reason"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { config, backup } => {
            let cfg = load_config(&config)?;
            print!("{}", offline::restore(&cfg, &backup)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { config, dry_run } => {
            if !dry_run {
                anyhow::bail!(
                    "migrations run when the node starts (or online after `cairn finalize`); use --dry-run to see the plan"
                );
            }
            let cfg = load_config(&config)?;
            print!("{}", offline::migrate_plan(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            clients,
            seconds,
            warmup,
            value_size,
            etcd,
            dir,
            json,
        } => {
            bench::run(BenchOptions {
                clients,
                duration: Duration::from_secs_f64(seconds),
                warmup: Duration::from_secs_f64(warmup),
                value_size,
                etcd,
                dir,
                json,
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn wait_for_migrations(
    c: &Client,
    schema: u16,
    args: &FollowArgs,
    progress: impl FnMut(&[String]),
) -> Result<(), String> {
    follow::follow(
        c,
        schema,
        Duration::from_secs(args.timeout),
        Duration::from_millis(250),
        progress,
    )
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// A sibling for the listing on stderr: UTF-8 as an escaped string in
/// quotes, anything else as `base64:...`.
fn show(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("base64:{}", STANDARD.encode(v)),
    }
}

fn client(args: &NodeArgs) -> Client {
    Client::new(&args.node, args.token.clone())
}
