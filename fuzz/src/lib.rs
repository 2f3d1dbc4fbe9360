//! Fuzz targets for cairn-core. The checking code lives in [`checks`], which
//! cairn-core's `tests/fuzz_corpus.rs` also compiles to run the seed corpora
//! under `cargo test`. The `simulate` target's check is
//! `cairn_sim::fuzzing::check_simulate`, whose seeds cairn-sim's
//! `tests/fuzz_corpus.rs` runs.

pub mod checks;
