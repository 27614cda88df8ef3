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
//! - [`schedule`]: cron windows in a time zone and the catch-up rules. Pure.
//! - [`json`]: the depth bound on JSON values from outside.
//! - [`redact`]: the redaction policy for secrets in metadata and step errors.
//! - [`clock`]: injected time.
//! - [`inspect`]: the read side (inspection, run graph, explanation, listing, deadlines,
//!   actor-scoped redaction).
//! - [`worker`]: a supervised worker pool around `execute_next`.
//!
//! # Example
//!
//! A workflow with a log step and an approval gate, on a SQLite file, driven by hand (a
//! [`Worker`] pool does the same in the background). Steps that run WebAssembly actions are
//! declared with `Step::action(name, key)` against an [`ActionRegistry`].
//!
//! ```
//! use serde_json::json;
//! use squid_mesh::actions::LogLevel;
//! use squid_mesh::engine::{ExecuteOptions, ManualAttrs};
//! use squid_mesh::inspect::{InspectOptions, Reason};
//! use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
//! use squid_mesh::{Engine, RunStatus, StartOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let path = std::env::temp_dir().join(format!("squid-mesh-doc-{}.db", std::process::id()));
//! let engine = Engine::builder().sqlite(&path).build().await?;
//! let spec = WorkflowSpec::builder("refund_request")
//!     .trigger(Trigger::manual("manual").string("order_id"))
//!     .step(Step::log("received", LogLevel::Info, "refund requested"))
//!     .step(Step::approval("review").output("review"))
//!     .step(Step::log("refund", LogLevel::Info, "refunding"))
//!     .step(Step::log("decline", LogLevel::Info, "declined"))
//!     .on_ok("received", "review")
//!     .on_ok("review", "refund")
//!     .on_error("review", "decline")
//!     .build();
//! let run = engine
//!     .start(&spec, None, json!({"order_id": "o-1"}), StartOptions::default())
//!     .await?;
//! while engine.execute_next(ExecuteOptions::default()).await?.is_some() {}
//!
//! let why = engine.explain_run(run.run_id, InspectOptions::default()).await?;
//! assert_eq!(why.reason, Reason::ManualInterventionRequired);
//!
//! engine.approve(run.run_id, ManualAttrs::by("ana")).await?;
//! while engine.execute_next(ExecuteOptions::default()).await?.is_some() {}
//! assert_eq!(engine.snapshot(run.run_id).await?.status, RunStatus::Completed);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod actions;
pub(crate) mod decide;
pub mod engine;
pub mod inspect;
pub mod journal;
pub mod json;
pub mod plan;
pub mod redact;
pub mod schedule;
pub mod spec;
pub mod store;
pub mod telemetry;
pub mod vocab;
pub mod worker;

/// The guide's Rust examples, compiled and run as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
pub struct GuideExamples;

pub use engine::{Engine, EngineBuilder, EngineError, ExecuteOptions, RunSnapshot, StartOptions};
pub use journal::{RunId, RunStatus};
pub use spec::WorkflowSpec;
pub use vocab::clock;
pub use vocab::{ActionState, CatalogEventKind};
pub use worker::Worker;

pub use actions::{
    ActionError, ActionHost, ActionKey, ActionLimits, ActionRegistry, ActionTarget, Builtin,
    Capabilities, Digest, HostConfig, Invocation, StepContext, StepError, StepOutcome,
};
