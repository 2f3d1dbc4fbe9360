//! Scenario files: every built-in file loads, regressions and canaries
//! replay their seeds with the outcome they expect, and a malformed file is
//! refused with an error naming the file, line, column and field.

use std::path::Path;

use cairn_sim::scenario::{builtin, builtin_names};
use cairn_sim::scenario_file::{self, builtin_of_kind, Kind};
use cairn_sim::{run, RunConfig};

fn replay_seeds(kind: Kind) {
    let list = builtin_of_kind(kind);
    assert!(!list.is_empty());
    for s in list {
        assert!(!s.seeds.is_empty(), "{} names no seeds", s.name);
        for &seed in &s.seeds {
            let report = run(&RunConfig {
                seed,
                scenario: s.clone(),
                bugs: Vec::new(),
                trace: None,
            });
            assert!(
                s.expect.matches(&report.outcome),
                "{} seed {seed}: expected {}, got {}: {}",
                s.name,
                s.expect,
                report.outcome.label(),
                report.outcome.message()
            );
        }
    }
}

#[test]
fn regressions_replay_their_seeds() {
    replay_seeds(Kind::Regression);
}

#[test]
fn canaries_are_caught_by_their_oracles() {
    replay_seeds(Kind::Canary);
}

#[test]
fn there_are_at_least_twelve_sweepable_scenarios() {
    let all = scenario_file::resolve("all").expect("all");
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert!(names.len() >= 12, "{names:?}");
    for want in [
        "default",
        "quick",
        "steady",
        "partitions-heavy",
        "crash-storm",
        "majority-minority",
        "asymmetric-partitions",
        "flapping-partitions",
        "faulty-disks",
        "clock-jumps",
        "hinted-handoff",
        "anti-entropy-after-partition",
        "deletes-across-partitions",
    ] {
        assert!(names.contains(&want), "{want} is not swept by `all`");
    }
    for name in builtin_names() {
        let s = builtin(name).expect("listed scenarios exist");
        s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn a_malformed_file_names_file_line_column_and_field() {
    let dir = std::env::temp_dir().join(format!("cairn-scenarios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("foo.toml");
    std::fs::write(
        &path,
        "name = \"foo\"\n\
         description = \"a scenario with a typo\"\n\
         nodes = 5\n\
         \n\
         [quorum]\n\
         n = 3\n\
         r = 2\n\
         w = \"two\"\n",
    )
    .unwrap();
    let err = scenario_file::load(&path).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    let want = format!(
        "{}:8:5: field 'quorum.w': string \"two\", expected an integer",
        path.display()
    );
    assert_eq!(err, want);
}

#[test]
fn files_given_by_path_load_like_built_ins() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    for name in ["quick", "hinted-handoff"] {
        let path = root.join(format!("{name}.toml"));
        let loaded = scenario_file::load(&path).unwrap();
        assert_eq!(Some(loaded), builtin(name));
    }
}
