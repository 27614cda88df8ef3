//! Squid Mesh: an embedded durable workflow runtime whose steps run as sandboxed
//! WebAssembly components.
//!
//! A host application adds this crate, points it at its own database, registers approved
//! actions by key, starts workflows and runs workers. There is no separate server.
//!
//! This crate is organised as:
//!
//! - [`spec`]: workflow specs (builder, JSON/TOML, validation, fingerprint). Pure.
//! - [`plan`]: what runs next (payload, input mapping, routes, retries). Pure.
//! - [`actions`]: the action registry (key -> pinned component, limits, capabilities), the
//!   wasmtime sandbox that runs components, and the native built-in step kinds.
//! - [`clock`]: injected time.
//! - [`inspect`]: the read side (inspection, run graph, explanation, listing, deadlines,
//!   actor-scoped redaction).
//! - [`worker`]: a supervised worker pool around `execute_next`.
#![deny(missing_docs)]

pub mod actions;
pub mod clock;
pub mod engine;
pub mod inspect;
pub mod journal;
pub mod plan;
pub mod spec;
pub mod store;
pub mod worker;

pub use engine::{Engine, EngineBuilder, EngineError, ExecuteOptions, RunSnapshot, StartOptions};
pub use journal::{RunId, RunStatus};
pub use spec::WorkflowSpec;
pub use worker::Worker;

pub use actions::{
    ActionError, ActionHost, ActionKey, ActionLimits, ActionRegistry, ActionTarget, Builtin,
    Capabilities, Digest, HostConfig, Invocation, StepContext, StepError, StepOutcome,
};
