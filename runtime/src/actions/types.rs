//! Values shared by the registry, the sandbox and the built-in step kinds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::builtin::Builtin;
pub use crate::vocab::{
    ActionKey, Digest, LogLevel, StepError, StepErrorKind, StepOutcome, Suspension,
};
use crate::vocab::{InvalidActionKey, InvalidDigest};

/// Resource limits applied to every invocation of one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionLimits {
    /// Wall-clock budget of one invocation, in milliseconds (default 30,000).
    pub timeout_ms: u64,
    /// Cap on the component's linear memory, in bytes (default 64 MiB).
    pub memory_bytes: u64,
    /// Optional deterministic budget of WebAssembly operators.
    pub fuel: Option<u64>,
    /// Largest output (or step error) the action may return, in bytes (default 1 MiB).
    pub max_output_bytes: u64,
    /// Bytes of logs, stdout and stderr kept per invocation (default 64 KiB).
    pub max_log_bytes: u64,
    /// Most dynamic nodes (joins included) one step of this action may schedule through
    /// the `schedule-work` host import, over all its calls and retries (default 10,000).
    pub max_dynamic_nodes: u32,
}

impl Default for ActionLimits {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            memory_bytes: 64 << 20,
            fuel: None,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            max_dynamic_nodes: 10_000,
        }
    }
}

impl ActionLimits {
    /// Largest `timeout_ms`: one day.
    pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
    /// Largest `memory_bytes`: 4 GiB, all a 32-bit linear memory can address.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
    /// Largest `max_output_bytes` and `max_log_bytes`: 64 MiB.
    pub const MAX_CAPTURE_BYTES: u64 = 64 << 20;
    /// Largest `max_dynamic_nodes`: one million.
    pub const MAX_DYNAMIC_NODES: u32 = 1_000_000;

    /// The wall-clock timeout as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// What an action may touch beyond pure computation. Nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Environment variables the action sees.
    pub env: BTreeMap<String, String>,
    /// Host directories mounted into the action's file system.
    pub dirs: Vec<DirGrant>,
    /// Socket addresses the action may connect to or bind, as `ip:port`; `ip:*` allows every
    /// port of that address. Empty means no sockets at all.
    pub network: Vec<String>,
    /// Whether the action may resolve host names.
    pub dns: bool,
    /// Whether the action may start child runs (the `start-child-run` host import).
    pub child_runs: bool,
    /// Whether the action may add dynamic work to its run (the `schedule-work` host import).
    pub dynamic_work: bool,
}

/// A host directory granted to an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the action sees it under.
    pub guest: String,
    /// Whether the action may only read it (default true).
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

/// Where a step attempt sits in its workflow run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepContext {
    /// Identifier of the run.
    pub run_id: String,
    /// Name of the workflow.
    pub workflow: String,
    /// Name of the step.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Durable key of the runnable being executed.
    pub runnable_key: String,
    /// Key of this attempt (`<run_id>:<step>:<attempt>`), stable across its redeliveries.
    pub idempotency_key: String,
    /// Key of the step in the run (`<run_id>:<step>`), stable across its retries and
    /// redeliveries: the one to give a payment provider.
    pub step_idempotency_key: String,
    /// The W3C `traceparent` of the step's span, for the action's outbound calls (the
    /// `trace-parent` host call returns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl StepContext {
    /// The step idempotency key of `step` in run `run_id`.
    pub fn step_key(run_id: &str, step: &str) -> String {
        format!("{run_id}:{step}")
    }
}

/// One log record written by an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub message: String,
}

/// What an invocation wrote besides its result, bounded by [`ActionLimits::max_log_bytes`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Records written through the host's `log` import.
    pub logs: Vec<LogRecord>,
    /// What the action wrote to standard output (lossy UTF-8).
    pub stdout: String,
    /// What the action wrote to standard error (lossy UTF-8); holds the panic message of a
    /// Rust action that panicked.
    pub stderr: String,
    /// Bytes dropped because the bound was reached.
    pub dropped_bytes: u64,
}

/// The result of running an action once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// Success, step error or manual gate.
    pub outcome: StepOutcome,
    /// Logs and captured output.
    pub diagnostics: Diagnostics,
    /// Wall-clock time of the invocation, in microseconds.
    pub elapsed_us: u64,
    /// Fuel consumed, when the action has a fuel budget.
    pub fuel_consumed: Option<u64>,
}

/// What an action says about itself (the WIT `describe` export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDescription {
    /// Name of the action.
    pub name: String,
    /// Version of the action.
    pub version: String,
    /// One sentence saying what it does.
    pub summary: String,
    /// JSON Schema of the input object.
    pub input_schema: Option<Value>,
    /// JSON Schema of the output object.
    pub output_schema: Option<Value>,
}

/// Starts child runs for actions that call the `start-child-run` host import. The engine
/// passes one to [`crate::actions::ActionHost::invoke_with`]; it is bound to the step attempt.
pub trait ChildRunStarter: Send + Sync + std::fmt::Debug {
    /// Starts (or finds) the child run; returns its run id, or a message saying why not.
    fn start_child_run(
        &self,
        workflow: String,
        trigger: Option<String>,
        payload: Value,
        child_key: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'static>>;
}

/// Schedules dynamic work for actions that call the `schedule-work` host import. The engine
/// passes one to [`crate::actions::ActionHost::invoke_action`]; it is bound to the step attempt.
pub trait WorkScheduler: Send + Sync + std::fmt::Debug {
    /// Schedules the work (a JSON object: key, nodes, edges, join...) from the running
    /// attempt, at most `max_nodes` nodes for the step; returns the receipt as JSON, or a
    /// message (starting with an error code) saying why not.
    fn schedule_work(
        &self,
        work: Value,
        max_nodes: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, String>> + Send + 'static>>;
}

/// What a running step may ask of its run through host imports, each granted by a
/// capability.
#[derive(Debug, Clone, Default)]
pub struct StepServices {
    /// Starts child runs (`child_runs`).
    pub children: Option<std::sync::Arc<dyn ChildRunStarter>>,
    /// Schedules dynamic work (`dynamic_work`).
    pub work: Option<std::sync::Arc<dyn WorkScheduler>>,
}

/// The code a step runs: a registered component or a native built-in.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionTarget {
    /// A WebAssembly component resolved through the registry.
    Wasm(ActionKey),
    /// A native step kind.
    Builtin(Builtin),
}

/// A fault of the action host: the action could not be resolved, loaded or started.
///
/// These are never shown to a guest as business errors. [`ActionError::is_retryable`] says
/// whether trying again later can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// The key has characters outside the allowed set or a bad length.
    #[error(
        "invalid action key {key:?}: use 1-128 characters from A-Z a-z 0-9 . _ - : /, starting with a letter or digit"
    )]
    InvalidKey {
        /// The rejected key.
        key: String,
    },
    /// The digest is not `sha256:` followed by 64 hex digits.
    #[error("invalid digest {digest:?}: expected sha256:<64 hex digits>")]
    InvalidDigest {
        /// The rejected digest.
        digest: String,
    },
    /// No action is registered under the key.
    #[error("action {key} is not registered")]
    UnknownAction {
        /// The key.
        key: ActionKey,
    },
    /// The action is registered but disabled.
    #[error("action {key} is disabled")]
    Disabled {
        /// The key.
        key: ActionKey,
    },
    /// The component's bytes do not match the pinned digest. The message leaves out the
    /// digest of the bytes found (they may be an unrelated file's); `actual` holds it.
    #[error("component of action {key} does not match its pinned digest {expected}")]
    DigestMismatch {
        /// The key.
        key: ActionKey,
        /// The pinned digest.
        expected: Digest,
        /// The digest of the bytes found.
        actual: Digest,
    },
    /// The component file could not be read.
    #[error("cannot read component {path} of action {key}: {source}")]
    Io {
        /// The key.
        key: ActionKey,
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The bytes are not a component implementing the `squid-mesh:step` action world.
    #[error("action {key} is not a valid squid-mesh:step action component: {message}")]
    InvalidComponent {
        /// The key.
        key: ActionKey,
        /// What is wrong.
        message: String,
    },
    /// The manifest could not be read or parsed.
    #[error("invalid action manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, with the location.
        message: String,
    },
    /// The limits make no sense (zero timeout, memory above the host's maximum...).
    #[error("invalid limits for action {key}: {message}")]
    InvalidLimits {
        /// The key.
        key: ActionKey,
        /// What is wrong.
        message: String,
    },
    /// A granted capability cannot be set up (missing directory, malformed address).
    #[error("invalid capability for action {key}: {message}")]
    InvalidCapability {
        /// The key.
        key: ActionKey,
        /// What is wrong.
        message: String,
    },
    /// The host has no room for another instance right now, or could not set one up.
    #[error("cannot instantiate action {key}: {message}")]
    Instantiate {
        /// The key.
        key: ActionKey,
        /// What failed.
        message: String,
    },
    /// The version was revoked in the action catalog: it never runs again.
    #[error("action {key} version {digest} is revoked")]
    Revoked {
        /// The key.
        key: ActionKey,
        /// The revoked version.
        digest: Digest,
    },
    /// The component's bytes could not be fetched from the action catalog's store.
    /// Retryable when the store failed; not when the bytes are missing.
    #[error("cannot fetch the component of action {key} ({digest}) from the catalog: {message}")]
    Fetch {
        /// The key.
        key: ActionKey,
        /// The version.
        digest: Digest,
        /// What went wrong.
        message: String,
        /// Whether trying again can help (a store error, not missing bytes).
        retryable: bool,
    },
    /// The action catalog has no such version of the key (or the key has no current
    /// version to act on).
    #[error("{message}")]
    NotInCatalog {
        /// The key.
        key: ActionKey,
        /// What is missing, and what to do.
        message: String,
    },
    /// The host was configured wrongly (engine or cache directory).
    #[error("action host configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
    /// The host was closed ([`crate::actions::ActionHost::close`]); the step was not run.
    /// Retryable: another process (or this one, reopened) can run it.
    #[error("the action host is closed")]
    Closed,
}

impl ActionError {
    /// Whether trying the same operation later can succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Instantiate { .. }
                | Self::Io { .. }
                | Self::Closed
                | Self::Fetch {
                    retryable: true,
                    ..
                }
        )
    }

    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidKey { .. } => "invalid_action_key",
            Self::InvalidDigest { .. } => "invalid_digest",
            Self::UnknownAction { .. } => "unknown_action",
            Self::Disabled { .. } => "action_disabled",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::Io { .. } => "component_unreadable",
            Self::InvalidComponent { .. } => "invalid_component",
            Self::Manifest { .. } => "invalid_manifest",
            Self::InvalidLimits { .. } => "invalid_limits",
            Self::InvalidCapability { .. } => "invalid_capability",
            Self::Instantiate { .. } => "instantiate_failed",
            Self::Config { .. } => "host_config",
            Self::Revoked { .. } => "action_revoked",
            Self::NotInCatalog { .. } => "not_in_catalog",
            Self::Fetch { .. } => "component_fetch_failed",
            Self::Closed => "host_closed",
        }
    }
}

impl From<InvalidActionKey> for ActionError {
    fn from(e: InvalidActionKey) -> Self {
        Self::InvalidKey { key: e.key }
    }
}

impl From<InvalidDigest> for ActionError {
    fn from(e: InvalidDigest) -> Self {
        Self::InvalidDigest { digest: e.digest }
    }
}
