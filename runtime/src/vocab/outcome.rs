//! What one step attempt produced: success, a typed error, or a manual gate.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
