//! cairn-node: the production driver of the sans-IO core.
//!
//! The core (`cairn-core`) decides everything; this crate gives it real time,
//! real TCP and real storage:
//! - [`config`]: the TOML file, environment overrides and validation.
//! - [`driver`]: the one task that owns the core `Node` and drains its outputs.
//! - [`storage`]: fjall on the blocking pool, with group commit.
//! - [`peers`]: authenticated TCP connections carrying core envelopes.
//! - [`http`]: the client API, status, health and metrics endpoints.
//! - [`metrics`]: Prometheus metrics.
//! - [`logging`]: text or JSON log lines.
//! - [`server`]: `cairn serve`, wiring the above and handling signals.
//! - [`backup`]: the on-disk backup format; [`offline`]: restore and the
//!   migration dry run on a stopped node.
//! - [`client`], [`local_cluster`], [`bench`], [`follow`]: the CLI's tools.

pub mod backup;
pub mod bench;
pub mod client;
pub mod config;
pub mod driver;
pub mod follow;
pub mod http;
pub mod local_cluster;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod peers;
pub mod server;
pub mod storage;
