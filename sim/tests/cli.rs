//! The `cairn-sim` command line: seed arguments, thread defaults, progress
//! without a terminal, and the trace file's header.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Output, Stdio};

fn sim(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ cairn-sim {} -> {:?}\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bench_takes_a_seed_range_like_sweep_or_a_count() {
    let out = sim(&["bench", "--scenario", "quick", "--seeds", "3..5"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("bench: seeds 3..5"));
    assert!(text(&out.stdout).contains("scenario quick, 2 seeds"));

    let out = sim(&["bench", "--scenario", "quick", "--seeds", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("bench: seeds 0..2"));
    assert!(text(&out.stdout).contains("scenario quick, 2 seeds"));

    let out = sim(&["bench", "--scenario", "quick", "--seeds", "4..=4"]);
    assert!(text(&out.stderr).contains("bench: seeds 4..5"));

    let out = sim(&["bench", "--seeds", "3..5", "--start", "1"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "--start with a range is a usage error"
    );
}

#[test]
fn power_runs_on_every_core_by_default_like_sweep() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
        .args(["power", "--budget", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The line comes before any seed runs; the hunt itself is not needed.
    let _ = child.kill();
    let _ = child.wait();
    let jobs = cairn_sim::sweep::default_jobs();
    assert!(
        first.contains(&format!("on {jobs} thread(s)")),
        "power should default to {jobs} thread(s): {first:?}"
    );
}

#[test]
fn sweep_prints_progress_lines_when_stderr_is_not_a_terminal() {
    let out = sim(&[
        "sweep",
        "--scenario",
        "quick",
        "--seeds",
        "0..3",
        "--jobs",
        "1",
        "--recheck",
        "0",
        "--progress-every",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    for done in 1..=3 {
        assert!(
            err.contains(&format!("sweep: {done}/3 runs")),
            "no progress line for {done}/3: {err}"
        );
    }
    assert!(err.contains("0 failed"));

    // With the default interval a short sweep still ends with one line.
    let out = sim(&[
        "sweep",
        "--scenario",
        "quick",
        "--seeds",
        "0..2",
        "--recheck",
        "0",
    ]);
    let err = text(&out.stderr);
    assert!(err.contains("sweep: 2/2 runs (100.0%)"), "{err}");
}

/// The `trace hash: 0x...` line of `run`'s output.
fn hash_line(out: &Output) -> String {
    text(&out.stdout)
        .lines()
        .find(|l| l.starts_with("trace hash: "))
        .expect("a trace hash line")
        .to_string()
}

#[test]
fn the_trace_starts_with_a_header_that_leaves_the_hash_alone() {
    let path = std::env::temp_dir().join(format!("cairn-sim-cli-{}.jsonl", std::process::id()));
    let p = path.to_str().unwrap();
    let with = sim(&["run", "--seed", "7", "--scenario", "quick", "--trace", p]);
    let without = sim(&["run", "--seed", "7", "--scenario", "quick"]);
    let trace = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(with.status.code(), Some(0));
    assert_eq!(hash_line(&with), hash_line(&without));

    let mut lines = trace.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["ev"], "header");
    assert_eq!(header["format"], 1);
    assert_eq!(header["seed"], 7);
    assert_eq!(header["scenario"], "quick");
    assert_eq!(header["options"]["seed"], 7);
    assert!(header["options"]["nodes"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(header["planted_bugs"], serde_json::json!([]));
    assert_eq!(
        header["release"],
        cairn_core::version::ReleaseId::current().version()
    );
    assert!(header["simulator"].is_string());
    assert_eq!(header["time_unit"], "us");
    let first: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(first["t"].is_u64() && first["ev"].is_string());
}
