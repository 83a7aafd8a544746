//! One-input functions for the fuzz targets of identityd, one per parser of untrusted input.
//!
//! Each module is compiled twice: here, for the libFuzzer targets in `fuzz_targets/` (nightly,
//! `scripts/fuzz`), and by `#[path]` into the owning crate's `tests/fuzz_corpus.rs`, which
//! replays the checked-in seeds of `corpus/<target>/` on stable in `make test`. A function
//! returns `Ok` when the parser accepts the input, `Err(message)` when it rejects it, and
//! panics when a promise of the parser breaks: that is what the fuzzer looks for.

pub mod certs;
pub mod cluster;
pub mod corpus;
pub mod envoy;
pub mod wg;
