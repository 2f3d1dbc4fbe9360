//! Scenario files: loading TOML with errors that name the file, line, column
//! and field; the built-in files embedded in the binary; resolving a
//! `--scenario NAME|PATH` argument.
//!
//! The format is documented in `scenarios/README.md`.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::scenario::Scenario;

/// What kind of built-in scenario a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `scenarios/*.toml`: swept by `--scenario all`; must pass.
    Scenario,
    /// `scenarios/regressions/*.toml`: seeds that once found a bug; must
    /// pass.
    Regression,
    /// `scenarios/canaries/*.toml`: a planted bug that must be caught.
    Canary,
}

/// A scenario file compiled into the binary.
pub struct Embedded {
    /// The path relative to the workspace root (used in error messages).
    pub path: &'static str,
    pub kind: Kind,
    pub text: &'static str,
}

macro_rules! embed {
    ($kind:ident, $path:literal) => {
        Embedded {
            path: $path,
            kind: Kind::$kind,
            text: include_str!(concat!("../../", $path)),
        }
    };
}

/// Every built-in scenario file, in the order `cairn-sim scenarios` lists
/// them. A file added under `scenarios/` must be added here too (a test
/// checks).
pub const BUILTIN_FILES: &[Embedded] = &[
    embed!(Scenario, "scenarios/default.toml"),
    embed!(Scenario, "scenarios/quick.toml"),
    embed!(Scenario, "scenarios/steady.toml"),
    embed!(Scenario, "scenarios/partitions-heavy.toml"),
    embed!(Scenario, "scenarios/majority-minority.toml"),
    embed!(Scenario, "scenarios/asymmetric-partitions.toml"),
    embed!(Scenario, "scenarios/flapping-partitions.toml"),
    embed!(Scenario, "scenarios/late-duplicates.toml"),
    embed!(Scenario, "scenarios/crash-storm.toml"),
    embed!(Scenario, "scenarios/sparse-keys.toml"),
    embed!(Scenario, "scenarios/clock-skew.toml"),
    embed!(Scenario, "scenarios/clock-jumps.toml"),
    embed!(Scenario, "scenarios/faulty-disks.toml"),
    embed!(Scenario, "scenarios/hostile-peers.toml"),
    embed!(Scenario, "scenarios/lost-journal.toml"),
    embed!(Scenario, "scenarios/lost-journal-peers-down.toml"),
    embed!(Scenario, "scenarios/hinted-handoff.toml"),
    embed!(Scenario, "scenarios/anti-entropy-after-partition.toml"),
    embed!(Scenario, "scenarios/deletes-across-partitions.toml"),
    embed!(Scenario, "scenarios/rolling-upgrade.toml"),
    embed!(Scenario, "scenarios/canary-upgrade.toml"),
    embed!(Scenario, "scenarios/rollback-before-finalization.toml"),
    embed!(Scenario, "scenarios/downgrade-after-finalization.toml"),
    embed!(Scenario, "scenarios/crash-mid-migration.toml"),
    embed!(Scenario, "scenarios/damaged-disk-mid-migration.toml"),
    embed!(Scenario, "scenarios/old-node-rejoins.toml"),
    embed!(Scenario, "scenarios/skip-a-release.toml"),
    embed!(Scenario, "scenarios/finalize-during-restart.toml"),
    embed!(Scenario, "scenarios/restore-backup.toml"),
    embed!(Regression, "scenarios/regressions/duplicated-forward.toml"),
    embed!(
        Regression,
        "scenarios/regressions/reaped-tombstone-stale-read.toml"
    ),
    embed!(Canary, "scenarios/canaries/ack-before-durable.toml"),
    embed!(Canary, "scenarios/canaries/reuse-dots-after-crash.toml"),
    embed!(Canary, "scenarios/canaries/trust-client-contexts.toml"),
];

/// An error in a scenario file, pointing at the offending place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// The file as it was named (a path, or `scenarios/x.toml` for a
    /// built-in).
    pub origin: String,
    /// 1-based line and column; `None` when the file could not be read.
    pub line: Option<(usize, usize)>,
    /// The dotted path of the field (`quorum.w`, `schedule[2].node`), if
    /// known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((l, c)) = self.line {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field '{field}': ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for FileError {}

/// Parses and validates a scenario file's text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Scenario, FileError> {
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            return Err(FileError {
                origin: origin.to_string(),
                line: e.span().map(|s| line_col(text, s.start)),
                field: None,
                message: first_line(e.message()),
            })
        }
    };
    let scenario = match Scenario::deserialize(toml::de::Deserializer::from(doc.clone())) {
        Ok(s) => s,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let (path, at) = path_at(doc.get_ref(), &span);
            let mut message = tidy(e.message());
            // A missing or unknown field is named by the message; point at
            // the table it belongs in.
            let field = if path.is_empty() { None } else { Some(path) };
            if field.is_none() && message.is_empty() {
                message = "invalid scenario".into();
            }
            return Err(FileError {
                origin: origin.to_string(),
                line: Some(line_col(text, at.unwrap_or(span.start))),
                field,
                message,
            });
        }
    };
    if let Err(e) = scenario.validate() {
        let (field, message) = match e.split_once(": ") {
            Some((f, m)) if !f.contains(' ') => (f.to_string(), m.to_string()),
            _ => (String::new(), e.clone()),
        };
        let at = locate(doc.get_ref(), &field);
        return Err(FileError {
            origin: origin.to_string(),
            line: Some(line_col(text, at)),
            field: (!field.is_empty()).then_some(field),
            message,
        });
    }
    Ok(scenario)
}

/// Loads a scenario file from disk.
pub fn load(path: &Path) -> Result<Scenario, FileError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        origin: origin.clone(),
        line: None,
        field: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &origin)
}

fn parse_embedded(e: &Embedded) -> Scenario {
    parse(e.text, e.path).unwrap_or_else(|err| panic!("built-in scenario file: {err}"))
}

/// The built-in file of this name.
pub fn builtin_file(name: &str) -> Option<Scenario> {
    BUILTIN_FILES
        .iter()
        .map(parse_embedded)
        .find(|s| s.name == name)
}

/// The names of the built-in files, in listing order.
pub fn builtin_file_names() -> Vec<&'static str> {
    BUILTIN_FILES
        .iter()
        .map(|e| {
            let stem = e.path.rsplit('/').next().unwrap_or(e.path);
            stem.strip_suffix(".toml").unwrap_or(stem)
        })
        .collect()
}

/// The built-in scenarios of one kind.
pub fn builtin_of_kind(kind: Kind) -> Vec<Scenario> {
    BUILTIN_FILES
        .iter()
        .filter(|e| e.kind == kind)
        .map(parse_embedded)
        .collect()
}

/// The kind of a built-in scenario (scenarios defined in Rust are
/// [`Kind::Scenario`]).
pub fn kind_of(name: &str) -> Kind {
    BUILTIN_FILES
        .iter()
        .zip(builtin_file_names())
        .find(|(_, n)| *n == name)
        .map_or(Kind::Scenario, |(e, _)| e.kind)
}

/// The scenarios `--scenario all` sweeps: every built-in that expects to
/// pass and is not a regression (regressions replay their own seeds).
pub fn sweepable() -> Vec<Scenario> {
    crate::scenario::builtin_names()
        .into_iter()
        .filter(|n| kind_of(n) == Kind::Scenario)
        .filter_map(crate::scenario::builtin)
        .filter(|s| s.expect.is_pass())
        .collect()
}

/// Resolves a `--scenario` argument: `all`, a built-in name, or the path of
/// a file (anything containing `/` or ending in `.toml`).
pub fn resolve(arg: &str) -> Result<Vec<Scenario>, String> {
    if arg == "all" {
        return Ok(sweepable());
    }
    let looks_like_path = arg.contains('/') || arg.ends_with(".toml");
    if !looks_like_path {
        if let Some(s) = crate::scenario::builtin(arg) {
            return Ok(vec![s]);
        }
    }
    let path = Path::new(arg);
    if path.exists() || looks_like_path {
        return load(path).map(|s| vec![s]).map_err(|e| e.to_string());
    }
    Err(format!(
        "unknown scenario {arg:?}: not a built-in ({}) and no such file",
        crate::scenario::builtin_names().join(", ")
    ))
}

// ----- locating errors ----------------------------------------------------

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn first_line(msg: &str) -> String {
    msg.lines().next().unwrap_or("").trim().to_string()
}

/// Makes serde's wording readable for people writing files.
fn tidy(msg: &str) -> String {
    let mut m = first_line(msg);
    for t in ["u8", "u16", "u32", "u64", "i64", "usize"] {
        m = m.replace(&format!("expected {t}"), "expected an integer");
    }
    m = m.replace("invalid type: ", "");
    m.replace('`', "'")
}

fn contains(span: &Range<usize>, at: &Range<usize>) -> bool {
    span.start <= at.start && at.end <= span.end && span.start < span.end
}

/// The dotted path of the innermost key whose key or value contains `at`,
/// and the offset to report. Tables written with a `[header]` do not span
/// their contents, so every nested table is searched.
fn path_at(table: &DeTable<'_>, at: &Range<usize>) -> (String, Option<usize>) {
    match find_in_table(table, at) {
        Some((path, off)) => (path, Some(off)),
        None => (String::new(), None),
    }
}

fn find_in_table(table: &DeTable<'_>, at: &Range<usize>) -> Option<(String, usize)> {
    for (k, v) in table.iter() {
        let (ks, vs) = (k.span(), v.span());
        let name = k.get_ref().to_string();
        let hit = contains(&ks, at) || contains(&vs, at);
        if let Some((sub, off)) = find_in_value(v.get_ref(), at) {
            let path = if sub.starts_with('[') {
                format!("{name}{sub}")
            } else {
                format!("{name}.{sub}")
            };
            return Some((path, off));
        }
        if hit {
            let off = if contains(&ks, at) {
                ks.start
            } else {
                vs.start
            };
            return Some((name, off));
        }
    }
    None
}

fn find_in_value(v: &DeValue<'_>, at: &Range<usize>) -> Option<(String, usize)> {
    match v {
        DeValue::Table(t) => find_in_table(t, at),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some((sub, off)) = find_in_value(item.get_ref(), at) {
                    let sep = if sub.starts_with('[') { "" } else { "." };
                    return Some((format!("[{i}]{sep}{sub}"), off));
                }
                let s = item.span();
                if contains(&s, at) {
                    return Some((format!("[{i}]"), s.start));
                }
            }
            None
        }
        _ => None,
    }
}

/// The offset of a dotted field path (`schedule[2].node`) in the document:
/// the deepest part of it that the file spells out.
fn locate(table: &DeTable<'_>, field: &str) -> usize {
    let mut best = 0;
    let mut table = Some(table);
    for part in field.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(t) = table else { break };
        let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        best = k.span().start;
        let mut current = v.get_ref();
        if let (Some(i), DeValue::Array(items)) = (index, current) {
            match items.get(i) {
                Some(item) => {
                    best = item.span().start;
                    current = item.get_ref();
                }
                None => break,
            }
        }
        table = match current {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_under_scenarios_is_embedded_and_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut on_disk = Vec::new();
        for dir in ["scenarios", "scenarios/regressions", "scenarios/canaries"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = entry.unwrap().path();
                if p.extension().is_some_and(|e| e == "toml") {
                    let name = p.file_name().unwrap().to_string_lossy().to_string();
                    on_disk.push(format!("{dir}/{name}"));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = BUILTIN_FILES.iter().map(|e| e.path.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "scenario files and BUILTIN_FILES differ");
        for (e, name) in BUILTIN_FILES.iter().zip(builtin_file_names()) {
            let s = parse(e.text, e.path).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(s.name, name, "{}: name differs from the file name", e.path);
            let disk = std::fs::read_to_string(root.join(e.path)).unwrap();
            assert_eq!(disk, e.text);
        }
    }

    #[test]
    fn files_agree_with_scenarios_still_defined_in_rust() {
        for name in crate::upgrade::SCENARIOS {
            let file = builtin_file(name).unwrap_or_else(|| panic!("no file for {name}"));
            let rust = crate::upgrade::builtin(name).unwrap();
            assert_eq!(
                file, rust,
                "scenarios/{name}.toml differs from upgrade::builtin"
            );
        }
    }

    #[test]
    fn a_wrong_type_names_file_line_column_and_field() {
        let text = "name = \"x\"\ndescription = \"y\"\n\n[quorum]\nn = 3\nr = 2\nw = \"two\"\n";
        let e = parse(text, "scenarios/foo.toml").unwrap_err();
        assert_eq!(e.line, Some((7, 5)));
        assert_eq!(e.field.as_deref(), Some("quorum.w"));
        let shown = e.to_string();
        assert!(
            shown.starts_with("scenarios/foo.toml:7:5: field 'quorum.w': "),
            "{shown}"
        );
        assert!(shown.contains("expected an integer"), "{shown}");
    }

    #[test]
    fn an_unknown_field_is_pointed_at() {
        let text = "name = \"x\"\ndescription = \"y\"\n[workload]\nclients = 3\nthinking_ms = 5\n";
        let e = parse(text, "f.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("f.toml:5:1: field 'workload.thinking_ms': "),
            "{e}"
        );
        assert!(e.contains("unknown field 'thinking_ms'"), "{e}");
    }

    #[test]
    fn a_bad_span_and_a_bad_event_are_pointed_at() {
        let text = "name = \"x\"\ndescription = \"y\"\n[network]\ndrop_ppm = [9, 1]\n";
        let e = parse(text, "f.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("f.toml:4:12: field 'network.drop_ppm': "),
            "{e}"
        );
        assert!(e.contains("min 9 is greater than max 1"), "{e}");

        let text = "name = \"x\"\ndescription = \"y\"\n\n[[schedule]]\nat_ms = 100\naction = \"crash\"\n\n[[schedule]]\nat_ms = 200\naction = \"crash\"\nnode = 9\n";
        let e = parse(text, "f.toml").unwrap_err().to_string();
        assert_eq!(
            e, "f.toml:4:1: field 'schedule[0].node': crash needs a node",
            "{e}"
        );
        let text = text.replace("action = \"crash\"\n\n", "action = \"crash\"\nnode = 1\n\n");
        let e = parse(&text, "f.toml").unwrap_err().to_string();
        assert_eq!(
            e, "f.toml:12:1: field 'schedule[1].node': no node 9 (nodes are 1..=5)",
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_and_syntax_errors_have_lines() {
        let text = "name = \"x\"\ndescription = \"y\"\nnodes = 3\n[quorum]\nn = 3\nw = 4\n";
        let e = parse(text, "f.toml").unwrap_err().to_string();
        assert_eq!(e, "f.toml:6:1: field 'quorum.w': 4 exceeds n=3");
        let e = parse("name = \"x\"\ndescription = \n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:2:"), "{e}");
        let e = parse("description = \"y\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field 'name'"), "{e}");
        let e = load(Path::new("/no/such/scenario.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/no/such/scenario.toml: cannot read"), "{e}");
    }

    #[test]
    fn resolve_takes_names_paths_and_all() {
        let all = resolve("all").unwrap();
        assert!(all.len() >= 12, "{}", all.len());
        assert!(all
            .iter()
            .all(|s| s.expect.is_pass() && s.planted_bugs.is_empty()));
        assert_eq!(resolve("quick").unwrap()[0].name, "quick");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/steady.toml");
        assert_eq!(resolve(path.to_str().unwrap()).unwrap()[0].name, "steady");
        assert!(resolve("no-such-scenario").is_err());
    }
}
