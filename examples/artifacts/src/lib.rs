//! Paths of the example action components, built from source by this crate's build script.
//!
//! Tests, benchmarks and demos depend on this crate to get real components without
//! checking binaries into the repository.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
