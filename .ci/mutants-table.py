#!/usr/bin/env python3
"""The mutation-score table of cairn-core, from the outcomes `.ci/mutants` left.

    mutants-table.py exclusions LIST_JSON CONFIG_TOML OUT_JSON
        Checks that every `exclude_re` of CONFIG_TOML matches some mutant of
        LIST_JSON (`cargo mutants --list --json --no-config`), and writes
        how many each file loses to them to OUT_JSON.

    mutants-table.py survivors SIM_DIR
        Prints one anchored regex per mutant the simulator missed (for
        `cargo mutants -F`).

    mutants-table.py table --out FILE RUN_DIR...
        Merges the outcomes of one or more runs (CI's shards) and writes the
        Markdown table.

A RUN_DIR holds `meta.json`, `excluded.json`, `sim/mutants.out/` (the
simulator pass) and, if any mutant survived it, `core/mutants.out/` (the
same survivors against `cargo test -p cairn-core`).

A later RUN_DIR may re-test mutants of an earlier one on newer code (the
survivors of a sample, after new oracles): its `supersedes.json` lists the
earlier names it replaces (`{"old name": "new name or null"}`, null for a
mutant whose code is gone or which is now excluded). Runs are merged in the
order given.
"""

import json
import math
import re
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

# cargo-mutants' summaries.
CAUGHT, MISSED, TIMEOUT, UNVIABLE = "CaughtMutant", "MissedMutant", "Timeout", "Unviable"
FAIL_LINE = re.compile(r"mutation-sweep: FAIL scenario=(\S+) seed=(\d+) outcome=\"([^\"]*)\"")


def mutant_outcomes(out_dir):
    """{name: (file, summary, log path)} of the mutants in a mutants.out."""
    path = Path(out_dir) / "mutants.out" / "outcomes.json"
    if not path.exists():
        return {}
    result = {}
    for o in json.loads(path.read_text())["outcomes"]:
        scenario = o["scenario"]
        if not isinstance(scenario, dict) or "Mutant" not in scenario:
            continue  # the baseline
        m = scenario["Mutant"]
        log = Path(out_dir) / "mutants.out" / o["log_path"]
        result[m["name"]] = (m["file"], o["summary"], log)
    return result


def exclusions(list_json, config_toml, out_json):
    names = [m["name"] for m in json.loads(Path(list_json).read_text())]
    patterns = tomllib.loads(Path(config_toml).read_text()).get("exclude_re", [])
    excluded = Counter()
    stale = []
    for p in patterns:
        rx = re.compile(p)
        hits = [n for n in names if rx.search(n)]
        if not hits:
            stale.append(p)
        for n in hits:
            excluded[n] += 1
    if stale:
        sys.exit(
            "exclude_re entries of %s that match no mutant (the code moved or "
            "changed; update them):\n  %s" % (config_toml, "\n  ".join(stale))
        )
    per_file = Counter(n.split(":", 1)[0] for n in excluded)
    Path(out_json).write_text(json.dumps(dict(sorted(per_file.items())), indent=1) + "\n")
    print(f"{len(excluded)} of {len(names)} mutants excluded by {len(patterns)} exclude_re entries")


def rust_regex_escape(text):
    # The characters the regex crate treats as meta characters.
    return re.sub(r"([\\.+*?()|\[\]{}^$#&\-~])", r"\\\1", text)


def survivors(sim_dir):
    for name, (_, summary, _) in sorted(mutant_outcomes(sim_dir).items()):
        if summary == MISSED:
            print("^" + rust_regex_escape(name) + "$")


def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


def pct(k, n):
    return f"{100 * k / n:.1f}%" if n else "-"


def table(out, run_dirs):
    sim, core, excluded, metas = {}, {}, Counter(), []
    retests = []
    for d in map(Path, run_dirs):
        if (d / "supersedes.json").exists():
            superseded = json.loads((d / "supersedes.json").read_text())
            commit = json.loads((d / "meta.json").read_text()).get("commit", "?") if (d / "meta.json").exists() else "?"
            what = json.loads((d / "meta.json").read_text()).get("retested") if (d / "meta.json").exists() else None
            gone = sum(1 for v in superseded.values() if v is None)
            # Distinct mutants re-tested (an old name and its new one may
            # both be keys), plus the ones gone.
            retested = len({v for v in superseded.values() if v is not None})
            retests.append((commit, retested + gone, gone, what))
            for old in superseded:
                sim.pop(old, None)
                core.pop(old, None)
        sim.update(mutant_outcomes(d / "sim"))
        core.update(mutant_outcomes(d / "core"))
        if (d / "excluded.json").exists():
            # Every run counts the whole tree's exclusions: take one count.
            excluded = Counter(json.loads((d / "excluded.json").read_text()))
        if (d / "meta.json").exists():
            metas.append(json.loads((d / "meta.json").read_text()))

    rows = defaultdict(Counter)
    killers = Counter()
    for name, (file, summary, log) in sim.items():
        row = rows[file]
        row["mutants"] += 1
        row[summary] += 1
        if summary == MISSED:
            core_summary = core.get(name, (None, None, None))[1]
            if core_summary in (CAUGHT, TIMEOUT):
                row["core"] += 1
            elif core_summary is None:
                row["core_untested"] += 1
        if summary == CAUGHT and log.exists():
            m = FAIL_LINE.search(log.read_text(errors="replace"))
            killers[f"{m.group(1)} ({m.group(3)})" if m else "(test failed without a sweep failure)"] += 1
    for file in excluded:
        rows[file]  # files with nothing left to mutate still get a row

    def module(file):
        return file.removeprefix("core/src/")

    total = Counter()
    lines = [
        "| module | mutants | killed | survived | timeouts | unviable | excluded | + core tests | survived both |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for file in sorted(rows):
        r = rows[file]
        r["excluded"] = excluded.get(file, 0)
        total.update(r)
        lines.append(
            f"| {module(file)} | {r['mutants']} | {r[CAUGHT]} | {r[MISSED]} | {r[TIMEOUT]} | "
            f"{r[UNVIABLE]} | {r['excluded']} | {r['core']} | {r[MISSED] - r['core']} |"
        )
    t = total
    lines.append(
        f"| **total** | **{t['mutants']}** | **{t[CAUGHT]}** | **{t[MISSED]}** | **{t[TIMEOUT]}** | "
        f"**{t[UNVIABLE]}** | **{t['excluded']}** | **{t['core']}** | **{t[MISSED] - t['core']}** |"
    )

    viable = t[CAUGHT] + t[MISSED] + t[TIMEOUT]
    sim_killed = t[CAUGHT] + t[TIMEOUT]
    both_killed = sim_killed + t["core"]
    lo, hi = wilson(sim_killed, viable)
    blo, bhi = wilson(both_killed, viable)

    # The latest run's sweep; every run's date, commit, selection and
    # command, in the order merged.
    meta = metas[-1] if metas else {}

    def in_order(key):
        return list(dict.fromkeys(m.get(key, "?") for m in metas)) or ["?"]

    dates, commits, selections, commands = (
        in_order(k) for k in ("date", "commit", "selection", "command"))
    doc = [
        "# Mutation score of cairn-core",
        "",
        "Written by `.ci/mutants` (README.md, \"Mutation score\"); do not edit by hand.",
        "",
        f"- date: {', '.join(dates)}; commit: {', '.join(commits)}; "
        f"cargo-mutants {meta.get('cargo_mutants', '?')}",
        f"- mutants: {', '.join(selections)} ({len(metas)} run(s) merged)",
        "- command(s): " + "; ".join(f"`{c}`" for c in commands),
    ]
    for commit, n, gone, what in retests:
        doc += [
            f"- re-tested on {commit}: {n - gone} mutant(s) "
            + (what or "an earlier run had not killed (survivors, and those it had not reached)")
            + (f"; {gone} no longer exist there (code removed, or excluded as equivalent) "
               f"and are not counted" if gone else "")
            + ".",
        ]
    if retests:
        rule = next((m["merge_rule"] for m in reversed(metas) if "merge_rule" in m),
                    "the later commits only add judgements, and change no passing run "
                    "before its final phases.")
        doc += [f"- a mutant killed by an earlier run stays killed unless a later run re-tests it: {rule}"]
    doc += [
        f"- sweep per mutant: `cargo test -p cairn-sim --test mutation_sweep -- --ignored` "
        f"(unmutated: {meta.get('baseline_secs', '?')} s wall; timeout {meta.get('timeout_secs', '?')} s)",
        "",
        f"**Simulator only: {pct(sim_killed, viable)} of viable mutants killed** "
        f"({sim_killed} of {viable}; 95% Wilson interval {100 * lo:.1f}%-{100 * hi:.1f}%).",
        "",
        (
            f"**Simulator + `cargo test -p cairn-core`: {pct(both_killed, viable)}** "
            f"({both_killed} of {viable}; 95% Wilson interval {100 * blo:.1f}%-{100 * bhi:.1f}%)."
            if not t["core_untested"]
            else f"**Simulator + `cargo test -p cairn-core`: at least {pct(both_killed, viable)}** "
            f"(the core-tests pass did not run on {t['core_untested']} survivor(s))."
        ),
        "",
        "Viable = killed + survived + timeouts; a timeout (the sweep ran past three",
        "times its unmutated time: a run that never ends) counts as killed.",
        "Unviable mutants do not build. Excluded mutants are never generated: planted-bug",
        "switches, text formatting and equivalent mutants, each with its reason in",
        "`.cargo/mutants.toml`; that column counts the whole tree, sampled or not.",
        "\"+ core tests\" are the simulator's survivors that `cargo test -p cairn-core`",
        "kills; \"survived both\" are left for new oracles, scenarios or tests.",
        "",
    ]
    if t["core_untested"]:
        doc += [f"({t['core_untested']} survivor(s) have no core-tests outcome.)", ""]
    doc += lines
    if killers:
        doc += [
            "",
            "## What killed them",
            "",
            "The first failing run of the sweep for each mutant the simulator killed",
            "(timeouts aside), by scenario and outcome:",
            "",
            "| scenario (outcome) | mutants |",
            "|---|---:|",
        ]
        doc += [f"| {k} | {n} |" for k, n in sorted(killers.items(), key=lambda kv: (-kv[1], kv[0]))]
    survived = sorted(
        n for n, (_, s, _) in sim.items() if s == MISSED and core.get(n, (0, None))[1] not in (CAUGHT, TIMEOUT)
    )
    if survived:
        doc += ["", "## Survived both", ""] + [f"- `{n}`" for n in survived]
    Path(out).write_text("\n".join(doc) + "\n")
    print(
        f"wrote {out}: simulator {sim_killed}/{viable} killed ({pct(sim_killed, viable)}, "
        f"95% CI {100 * lo:.1f}-{100 * hi:.1f}%); with core tests {both_killed}/{viable}"
    )


def main(argv):
    if len(argv) == 5 and argv[1] == "exclusions":
        exclusions(*argv[2:])
    elif len(argv) == 3 and argv[1] == "survivors":
        survivors(argv[2])
    elif len(argv) >= 5 and argv[1] == "table" and argv[2] == "--out":
        table(argv[3], argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
