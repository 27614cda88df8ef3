//! Values shared by the registry, the sandbox and the built-in step kinds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::builtin::Builtin;

/// The key an action is registered and referenced by, for example `orders.validate`.
///
/// 1 to 128 characters from `A-Z a-z 0-9 . _ - : /`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ActionKey(String);

impl ActionKey {
    /// Validates and wraps an action key.
    ///
    /// # Errors
    ///
    /// [`ActionError::InvalidKey`] when the key is empty, too long or has a character outside
    /// the allowed set.
    pub fn new(key: impl Into<String>) -> Result<Self, ActionError> {
        let key = key.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "._-:/".contains(c);
        let starts_well = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if key.len() > 128 || !starts_well || !key.chars().all(valid_char) {
            return Err(ActionError::InvalidKey { key });
        }
        Ok(Self(key))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ActionKey {
    type Error = ActionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ActionKey> for String {
    fn from(key: ActionKey) -> Self {
        key.0
    }
}

impl FromStr for ActionKey {
    type Err = ActionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SHA-256 digest pinning a component's exact bytes; written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest([u8; 32]);

impl Digest {
    /// Computes the digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest as 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ActionError;

    /// Parses `sha256:<hex>` (the prefix may be omitted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        match hex::decode_to_slice(hex_part, &mut out) {
            Ok(()) => Ok(Self(out)),
            Err(_) => Err(ActionError::InvalidDigest {
                digest: s.to_owned(),
            }),
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = ActionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.to_string()
    }
}

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
}

impl Default for ActionLimits {
    fn default() -> Self {
        Self {
            timeout_ms: 30_000,
            memory_bytes: 64 << 20,
            fuel: None,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
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
}

impl StepContext {
    /// The step idempotency key of `step` in run `run_id`.
    pub fn step_key(run_id: &str, step: &str) -> String {
        format!("{run_id}:{step}")
    }
}

/// Why a step attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StepErrorKind {
    /// The action returned an error (its own code is in [`StepError::code`]).
    Action,
    /// The invocation ran past its wall-clock budget.
    Timeout,
    /// The action tried to grow its memory past its cap.
    MemoryLimit,
    /// The action used up its fuel budget.
    FuelExhausted,
    /// The action exhausted its call stack.
    StackOverflow,
    /// The action trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap,
    /// The action returned something that is not what the contract says (not a JSON object).
    InvalidOutput,
    /// The action returned more bytes than its limit allows.
    OutputTooLarge,
    /// The step could not run: its pinned definition or action is no longer available
    /// (unknown or disabled key, digest changed). The run fails closed.
    Unavailable,
}

impl StepErrorKind {
    /// The error code this kind is journaled with (for [`StepErrorKind::Action`], the
    /// action's own code is used instead).
    pub fn code(self) -> &'static str {
        match self {
            Self::Action => "action_error",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::FuelExhausted => "fuel_exhausted",
            Self::StackOverflow => "stack_overflow",
            Self::Trap => "trap",
            Self::InvalidOutput => "invalid_output",
            Self::OutputTooLarge => "output_too_large",
            Self::Unavailable => "action_unavailable",
        }
    }
}

/// A failed step attempt: journaled, inspectable, and routed by the step's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    /// What failed.
    pub kind: StepErrorKind,
    /// Machine-readable code: the action's own for [`StepErrorKind::Action`], else the kind's.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Whether retrying may succeed.
    pub retryable: bool,
    /// Earliest delay before a retry, in milliseconds.
    pub retry_after_ms: Option<u64>,
    /// Structured details (a JSON object).
    pub details: Option<Map<String, Value>>,
}

impl StepError {
    /// A sandbox-level failure of the given kind.
    ///
    /// A timeout is retryable (the next attempt may be faster); every other limit or trap is
    /// not, since running the same code on the same input hits it again.
    pub fn sandbox(kind: StepErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: kind.code().to_owned(),
            message: message.into(),
            retryable: kind == StepErrorKind::Timeout,
            retry_after_ms: None,
            details: None,
        }
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A manual gate a built-in step stops the run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suspension {
    /// Wait for `resume`.
    Pause,
    /// Wait for `approve` or `reject` by an actor.
    Approval,
}

/// What one invocation of an action produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step succeeded with this output.
    Succeeded {
        /// The output object.
        output: Map<String, Value>,
        /// Continue the run only after this many milliseconds.
        continue_after_ms: Option<u64>,
    },
    /// The step failed.
    Failed(StepError),
    /// The step stops the run at a manual gate.
    Suspended(Suspension),
}

/// Severity of a log record written by an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Very fine-grained diagnostics.
    Trace,
    /// Diagnostics for developers.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// Something failed.
    Error,
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
    /// The component's bytes do not match the pinned digest.
    #[error(
        "component of action {key} does not match its pinned digest: expected {expected}, found {actual}"
    )]
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
    /// The host was configured wrongly (engine or cache directory).
    #[error("action host configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}

impl ActionError {
    /// Whether trying the same operation later can succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Instantiate { .. } | Self::Io { .. })
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
        }
    }
}
