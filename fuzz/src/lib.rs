//! Fuzz targets for cairn-core. The checking code lives in [`checks`], which
//! cairn-core's `tests/fuzz_corpus.rs` also compiles to run the seed corpora
//! under `cargo test`.

pub mod checks;
