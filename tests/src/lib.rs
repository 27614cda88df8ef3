//! End-to-end tests of Squid Mesh: real components, real databases, real processes.
//!
//! The `e2e-worker` binary is a minimal host process the tests start, stop and kill.
