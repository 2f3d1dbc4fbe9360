//! cairn-sim: a deterministic simulator for Cairn.
//!
//! It drives several `cairn_core::Node`s in virtual time under faults and
//! judges them with oracles. One `u64` seed determines a whole run: the
//! options drawn from it, every delay, every fault and every client choice.
//!
//! Map of the crate (a run flows top to bottom):
//! - [`scenario`]: the fixed shape of a run and the ranges seeds draw from.
//! - [`scenario_file`]: scenario files (TOML), the built-in ones embedded.
//! - [`options`]: the concrete choices one seed makes (swarm testing).
//! - [`rng`]: seed derivation, run -> node -> subsystem.
//! - [`world`]: the event queue and drive loop; owns everything below.
//!   - [`network`]: directed links with delay, loss, duplication, partitions,
//!     clogging and bounded queues.
//!   - [`disk`]: durable image, unsynced writes, crash loss, disk faults.
//!   - [`atlas`]: which disk faults and clock steps, kept recoverable by
//!     the fault atlas; swarm topology.
//!   - [`clock`]: per-node drift and offset.
//!   - [`nemesis`]: which fault next.
//!   - [`hostile`]: frames no honest peer sends (corrupt, unknown types,
//!     ill-formed states, foreign partitions), and how a node must react.
//!   - [`misconfig`]: an operator's configuration mistakes, tried (and
//!     refused) at every node start.
//!   - [`workload`]: the clients.
//!   - [`history`]: the truth model of client writes and causality.
//!   - [`oracle`]: the judgements.
//!   - [`placement`]: a reference model of the ring, which core's must
//!     match.
//!   - [`oracle_versions`]: the judgements about releases, cluster
//!     versions, migrations and restores.
//!   - [`upgrade`]: version scenarios and their orchestration plans (run by
//!     `world_versions.rs`).
//!   - [`trace`]: JSON-lines trace and its determinism hash.
//! - [`report`]: outcomes, exit codes, summaries.
//! - [`sweep`]: many seeds in parallel.
//! - [`shrink`]: delta debugging of a failing run down to a small scenario.
//! - [`planted`]: bugs that can be switched on in core to prove the oracles.
//! - [`power`]: how quickly sweeps find each planted bug; its scenarios.
//! - [`bench`]: simulator speed.
//!
//! Exit codes of the `cairn-sim` binary (see [`report::exit`]): 0 pass,
//! 1 safety violation, 2 liveness failure, 3 panic in the code under test,
//! 4 determinism mismatch, 64 usage error.

pub mod atlas;
pub mod bench;
pub mod clock;
pub mod disk;
pub mod fuzzing;
pub mod history;
pub mod hostile;
pub mod misconfig;
pub mod nemesis;
pub mod network;
pub mod options;
pub mod oracle;
pub mod oracle_versions;
pub mod placement;
pub mod planted;
pub mod power;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod scenario_file;
pub mod shrink;
pub mod sweep;
pub mod trace;
pub mod upgrade;
pub mod workload;
pub mod world;

pub use report::{exit, Outcome, RunReport};
pub use scenario::Scenario;
pub use world::{run, RunConfig};

use std::cell::RefCell;

thread_local! {
    /// Where the last panic on this thread happened; read (and cleared) when
    /// the panic is caught, so nothing survives from one run to the next.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes the location recorded by the hook of [`install_panic_hook`].
pub fn take_panic_location() -> Option<String> {
    PANIC_LOCATION.with(|l| l.borrow_mut().take())
}

/// Installs a panic hook that records where a panic happened (so a caught
/// panic in node code can be reported with its location). With `quiet` the
/// default report on stderr is suppressed (sweeps report panics themselves).
pub fn install_panic_hook(quiet: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(loc) = info.location() {
            let text = format!("{}:{}:{}", loc.file(), loc.line(), loc.column());
            PANIC_LOCATION.with(|l| *l.borrow_mut() = Some(text));
        }
        if !quiet {
            default(info);
        }
    }));
}
