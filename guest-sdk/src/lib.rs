//! Write Squid Mesh actions in Rust.
//!
//! An action is a WebAssembly component that runs one step of a workflow. This crate hides the
//! WIT plumbing: implement [`Action`] with typed (serde) input and output, call
//! [`export_action!`] once, and build with `cargo build --target wasm32-wasip2`.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use squid_mesh_guest::{Action, ActionError, Context};
//!
//! #[derive(Deserialize)]
//! struct Input { amount_cents: i64 }
//!
//! #[derive(Serialize)]
//! struct Output { approved: bool }
//!
//! struct Approve;
//!
//! impl Action for Approve {
//!     type Input = Input;
//!     type Output = Output;
//!
//!     fn run(ctx: &Context, input: Input) -> Result<Output, ActionError> {
//!         if input.amount_cents <= 0 {
//!             return Err(ActionError::fatal("invalid_amount", "amount must be positive"));
//!         }
//!         squid_mesh_guest::log::info(&format!("approving for run {}", ctx.run_id()));
//!         Ok(Output { approved: true })
//!     }
//! }
//!
//! squid_mesh_guest::export_action!(Approve);
//! ```
//!
//! Errors returned from [`Action::run`] become step errors with a code. A panic aborts the
//! component: the host reports it as a `trap` step error (with the panic message it captured
//! from the guest's standard error) and keeps serving other steps.
#![deny(missing_docs)]

use std::cell::Cell;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bindings generated from the `squid-mesh:step` WIT package. Not part of the stable API.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unsafe_code, clippy::all)]
    wit_bindgen::generate!({
        path: "../wit",
        world: "action",
        pub_export_macro: true,
        export_macro_name: "__export_action_world",
        default_bindings_module: "::squid_mesh_guest::bindings",
    });
}

use bindings::squid_mesh::step::types as wit;

/// A step implementation: typed input in, typed output or a coded error out.
pub trait Action {
    /// The step's input; deserialized from the JSON object the host sends.
    type Input: DeserializeOwned;
    /// The step's output; must serialize to a JSON object.
    type Output: Serialize;

    /// Runs one attempt of the step.
    ///
    /// # Errors
    ///
    /// Return an [`ActionError`] to fail the attempt with a code; its `retryable` flag tells
    /// the host whether the step's retry policy may try again.
    fn run(ctx: &Context, input: Self::Input) -> Result<Self::Output, ActionError>;

    /// Name reported by `describe`; defaults to the crate name.
    const NAME: Option<&'static str> = None;
    /// Version reported by `describe`; defaults to the crate version.
    const VERSION: Option<&'static str> = None;
    /// One sentence reported by `describe`; defaults to the crate description.
    const SUMMARY: Option<&'static str> = None;

    /// JSON Schema of the input object, if the action declares one.
    fn input_schema() -> Option<serde_json::Value> {
        None
    }

    /// JSON Schema of the output object, if the action declares one.
    fn output_schema() -> Option<serde_json::Value> {
        None
    }
}

/// Where the current attempt sits in its workflow run.
#[derive(Debug)]
pub struct Context {
    inner: wit::StepContext,
    continue_after: Cell<Option<Duration>>,
}

impl Context {
    /// Identifier of the run.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// Name of the workflow.
    pub fn workflow(&self) -> &str {
        &self.inner.workflow
    }

    /// Name of the step.
    pub fn step(&self) -> &str {
        &self.inner.step
    }

    /// Attempt number, starting at 1. A retry increments it; a redelivery does not.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Durable key of the runnable this attempt executes.
    pub fn runnable_key(&self) -> &str {
        &self.inner.runnable_key
    }

    /// Key of this attempt, the same across its redeliveries (a retry gets a new one).
    pub fn idempotency_key(&self) -> &str {
        &self.inner.idempotency_key
    }

    /// Key of the step in the run, the same across its retries and redeliveries: pass it to
    /// a system that must act once per step (a payment provider), so a retry after a timeout
    /// does not repeat what already happened.
    pub fn step_idempotency_key(&self) -> &str {
        &self.inner.step_idempotency_key
    }

    /// The W3C `traceparent` of this step attempt's span: send it as the `traceparent`
    /// header of outbound calls so they join the run's trace.
    pub fn trace_parent(&self) -> Option<String> {
        bindings::squid_mesh::step::host::trace_parent()
    }

    /// Asks the host to continue the run only after `delay`, once this attempt succeeds.
    pub fn continue_after(&self, delay: Duration) {
        self.continue_after.set(Some(delay));
    }
}

/// A step error: a machine-readable code, a message, and whether a retry may help.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionError {
    code: String,
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
    details: Option<serde_json::Value>,
}

impl ActionError {
    /// An error that retrying cannot fix (bad data, a declined card).
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(code, message, false)
    }

    /// An error that a later attempt may not hit (a timeout, a busy dependency).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(code, message, true)
    }

    fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable,
            retry_after: None,
            details: None,
        }
    }

    /// Asks for the next attempt no sooner than `delay`, overriding the step's backoff.
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Attaches structured details; only JSON objects are kept.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details.is_object().then_some(details);
        self
    }

    /// The error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Whether a retry may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    fn into_wit(self) -> wit::StepError {
        wit::StepError {
            code: self.code,
            message: self.message,
            retryable: self.retryable,
            retry_after_ms: self.retry_after.map(duration_ms),
            details: self.details.map(|d| d.to_string()),
        }
    }
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ActionError {}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts a child run of `workflow` from the current step; returns the child's run id.
///
/// The same `child_key` from the same step returns the same child, also across retries, so
/// it is safe to call again. The registry must grant the action the `child_runs` capability.
///
/// # Errors
///
/// An [`ActionError`] with code `child_run_refused` (retryable) carrying the host's reason.
pub fn start_child_run(
    workflow: &str,
    trigger: Option<&str>,
    payload: &impl Serialize,
    child_key: &str,
) -> Result<String, ActionError> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| ActionError::fatal("invalid_child_payload", e.to_string()))?;
    bindings::squid_mesh::step::host::start_child_run(workflow, trigger, &payload, child_key)
        .map_err(|reason| ActionError::retryable("child_run_refused", reason))
}

/// Adds dynamic work to the run from the current step (the host must grant the action the
/// `dynamic_work` capability): a JSON object with `key`, `nodes` (each `id`, `action`,
/// optional `input`, `retry`, `output`), optional `edges`, `join`, `reason`, `metadata`.
/// The nodes may start at once; the step's successors wait until every node (and the join)
/// has finished. The same work under the same key is added once, also across retries of the
/// step. Returns the host's receipt (`key`, `duplicate`, `nodes`, ...).
///
/// # Errors
///
/// An [`ActionError`] with code `invalid_dynamic_work` (not retryable) when the host refuses
/// the work as invalid (its message lists the problems with their paths), else
/// `dynamic_work_refused` (retryable) carrying the host's reason.
pub fn schedule_work(work: &impl Serialize) -> Result<serde_json::Value, ActionError> {
    let work = serde_json::to_string(work)
        .map_err(|e| ActionError::fatal("invalid_dynamic_work", e.to_string()))?;
    let receipt = bindings::squid_mesh::step::host::schedule_work(&work).map_err(|reason| {
        if reason.starts_with("invalid_dynamic_work") {
            ActionError::fatal("invalid_dynamic_work", reason)
        } else {
            ActionError::retryable("dynamic_work_refused", reason)
        }
    })?;
    serde_json::from_str(&receipt)
        .map_err(|e| ActionError::retryable("dynamic_work_refused", e.to_string()))
}

/// Logging through the host, attributed to the current step attempt.
pub mod log {
    use crate::bindings::squid_mesh::step::host::{self, Level};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        host::log(Level::Trace, message);
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        host::log(Level::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        host::log(Level::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        host::log(Level::Warn, message);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        host::log(Level::Error, message);
    }
}

/// Glue used by [`export_action!`]. Not part of the stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use bindings::squid_mesh::step::types::{
        ActionDescription, StepContext, StepError, StepSuccess,
    };

    /// Cargo metadata of the crate that exports the action.
    #[derive(Debug)]
    pub struct Package {
        pub name: &'static str,
        pub version: &'static str,
        pub description: &'static str,
    }

    pub fn run<A: Action>(ctx: StepContext, input: String) -> Result<StepSuccess, StepError> {
        let input: A::Input = serde_json::from_str(&input).map_err(|err| {
            ActionError::fatal("invalid_input", format!("input does not match: {err}")).into_wit()
        })?;
        let ctx = Context {
            inner: ctx,
            continue_after: Cell::new(None),
        };
        let output = A::run(&ctx, input).map_err(ActionError::into_wit)?;
        let output = serde_json::to_value(&output).map_err(|err| {
            ActionError::fatal(
                "invalid_output",
                format!("output cannot be serialized: {err}"),
            )
            .into_wit()
        })?;
        if !output.is_object() {
            return Err(ActionError::fatal(
                "invalid_output",
                "output must serialize to a JSON object",
            )
            .into_wit());
        }
        Ok(StepSuccess {
            output: output.to_string(),
            continue_after_ms: ctx.continue_after.get().map(duration_ms),
        })
    }

    pub fn describe<A: Action>(package: &Package) -> ActionDescription {
        ActionDescription {
            name: A::NAME.unwrap_or(package.name).to_owned(),
            version: A::VERSION.unwrap_or(package.version).to_owned(),
            summary: A::SUMMARY.unwrap_or(package.description).to_owned(),
            input_schema: A::input_schema().map(|s| s.to_string()),
            output_schema: A::output_schema().map(|s| s.to_string()),
        }
    }
}

/// Exports a type implementing [`Action`] as the component's `run` and `describe`.
///
/// Call it once per crate, at the crate root or in any module.
#[macro_export]
macro_rules! export_action {
    ($action:ty) => {
        #[doc(hidden)]
        pub struct __SquidMeshExport;

        impl $crate::bindings::Guest for __SquidMeshExport {
            fn run(
                ctx: $crate::__private::StepContext,
                input: ::std::string::String,
            ) -> ::std::result::Result<$crate::__private::StepSuccess, $crate::__private::StepError>
            {
                $crate::__private::run::<$action>(ctx, input)
            }

            fn describe() -> $crate::__private::ActionDescription {
                $crate::__private::describe::<$action>(&$crate::__private::Package {
                    name: env!("CARGO_PKG_NAME"),
                    version: env!("CARGO_PKG_VERSION"),
                    description: env!("CARGO_PKG_DESCRIPTION"),
                })
            }
        }

        $crate::bindings::__export_action_world!(__SquidMeshExport with_types_in $crate::bindings);
    };
}
