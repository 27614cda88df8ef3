//! Errors of the engine's public calls.

use crate::actions::ActionError;
use crate::spec::SpecProblem;
use crate::store::StoreError;

/// Why an engine call failed. [`EngineError::code`] is stable; [`EngineError::is_retryable`]
/// says whether calling again may succeed; invalid input carries every problem with its path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The workflow spec is invalid.
    #[error("invalid workflow spec: {}", join(.0))]
    InvalidSpec(Vec<SpecProblem>),
    /// The payload does not match the trigger's fields.
    #[error("invalid payload: {}", join(.0))]
    InvalidPayload(Vec<SpecProblem>),
    /// An option is invalid.
    #[error("invalid option {}", join(.0))]
    InvalidOption(Vec<SpecProblem>),
    /// Dynamic work is invalid, or does not fit the run as it stands.
    #[error("invalid dynamic work: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidDynamicWork(Vec<super::WorkProblem>),
    /// No workflow is registered under the name.
    #[error("workflow {name} is not registered")]
    UnknownWorkflow {
        /// The name.
        name: String,
    },
    /// The workflow has no such trigger.
    #[error("workflow {workflow} has no trigger {trigger:?}")]
    UnknownTrigger {
        /// The workflow.
        workflow: String,
        /// The trigger asked for.
        trigger: String,
    },
    /// No schedule exists for this workflow and trigger.
    #[error("no schedule for workflow {workflow}{}", if trigger.is_empty() { String::new() } else { format!(" trigger {trigger}") })]
    ScheduleNotFound {
        /// The workflow.
        workflow: String,
        /// The trigger (empty when none was named).
        trigger: String,
    },
    /// No run has this id.
    #[error("run {run_id} not found")]
    RunNotFound {
        /// The id.
        run_id: String,
    },
    /// The run id is not a UUID.
    #[error("malformed run id {value:?}: expected a UUID")]
    InvalidRunId {
        /// What was given.
        value: String,
    },
    /// A run with this id or idempotency key exists with a different payload.
    #[error("run {run_id} conflicts: {message}")]
    IdempotencyConflict {
        /// The run.
        run_id: String,
        /// What differs.
        message: String,
    },
    /// The command does not apply to the run in its current state.
    #[error("run {run_id} is {status}: cannot {command}")]
    InvalidTransition {
        /// The run.
        run_id: String,
        /// Its status.
        status: String,
        /// The refused command.
        command: String,
    },
    /// The run is paused at a gate of another kind (resume on an approval, approve on a pause).
    #[error("run {run_id} is paused at {kind} step {step}: {command} does not apply")]
    WrongManualStep {
        /// The run.
        run_id: String,
        /// The gate step.
        step: String,
        /// `pause` or `approval`.
        kind: String,
        /// The refused command.
        command: String,
    },
    /// Replay would repeat irreversible effects; pass `allow_irreversible` to proceed.
    #[error("replaying run {run_id} needs explicit approval (allow_irreversible; the CLI's --allow-irreversible): it completed irreversible or non-compensatable steps or dynamic nodes {}", .steps.join(", "))]
    UnsafeReplay {
        /// The source run.
        run_id: String,
        /// The steps that make it unsafe.
        steps: Vec<String>,
    },
    /// The step context does not match a running attempt of the parent run.
    #[error("stale step context for run {run_id}: {message}")]
    StaleStepContext {
        /// The parent run.
        run_id: String,
        /// What does not match.
        message: String,
    },
    /// This worker's claim no longer holds; its outcome was discarded and changed nothing.
    #[error("stale claim on {runnable_key}: {reason}")]
    StaleClaim {
        /// The attempt.
        runnable_key: String,
        /// Why.
        reason: String,
    },
    /// The step was interrupted and its claim given back, due at once, because its worker
    /// was asked to stop (see [`ExecuteOptions::give_back`](super::ExecuteOptions)).
    #[error("step {runnable_key} given back: its worker is stopping")]
    GivenBack {
        /// The attempt.
        runnable_key: String,
    },
    /// The action host failed.
    #[error(transparent)]
    Action(#[from] ActionError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value could not be read back.
    #[error("corrupt {what}: {message}")]
    Corrupt {
        /// Which value.
        what: String,
        /// Why.
        message: String,
    },
    /// Raised by the `crash_after_record` test hook (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    #[error("simulated crash after recording an outcome")]
    SimulatedCrash,
}

fn join(problems: &[SpecProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl EngineError {
    /// A stored value that cannot be decoded.
    pub(crate) fn corrupt(what: impl Into<String>, message: impl ToString) -> Self {
        Self::Corrupt {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// Decodes a stored JSON value of run `run_id`, naming it in the error.
pub(crate) fn parse_stored<T: serde::de::DeserializeOwned>(
    what: &str,
    run_id: &str,
    text: &str,
) -> super::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| EngineError::corrupt(format!("{what} of run {run_id}"), e))
}

impl From<crate::vocab::InvalidActionKey> for EngineError {
    fn from(e: crate::vocab::InvalidActionKey) -> Self {
        Self::Action(e.into())
    }
}

impl From<crate::vocab::InvalidDigest> for EngineError {
    fn from(e: crate::vocab::InvalidDigest) -> Self {
        Self::Action(e.into())
    }
}

impl From<crate::journal::InvalidRunId> for EngineError {
    fn from(e: crate::journal::InvalidRunId) -> Self {
        Self::InvalidRunId { value: e.0 }
    }
}

impl EngineError {
    /// An [`EngineError::InvalidOption`] with one problem at `path` (code `invalid_option`).
    pub fn invalid_option(path: &str, message: &str) -> Self {
        Self::InvalidOption(vec![SpecProblem {
            path: path.to_owned(),
            code: "invalid_option".to_owned(),
            message: message.to_owned(),
        }])
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "invalid_spec",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::InvalidOption(_) => "invalid_option",
            Self::InvalidDynamicWork(_) => "invalid_dynamic_work",
            Self::UnknownWorkflow { .. } => "unknown_workflow",
            Self::UnknownTrigger { .. } => "unknown_trigger",
            Self::RunNotFound { .. } => "run_not_found",
            Self::ScheduleNotFound { .. } => "schedule_not_found",
            Self::InvalidRunId { .. } => "invalid_run_id",
            Self::IdempotencyConflict { .. } => "idempotency_conflict",
            Self::StaleClaim { .. } => "stale_claim",
            Self::GivenBack { .. } => "given_back",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::WrongManualStep { .. } => "wrong_manual_step",
            Self::UnsafeReplay { .. } => "unsafe_replay",
            Self::StaleStepContext { .. } => "stale_step_context",
            Self::Action(e) => e.code(),
            Self::Store(_) => "store_error",
            Self::Corrupt { .. } => "corrupt_state",
            #[cfg(feature = "test-hooks")]
            Self::SimulatedCrash => "simulated_crash",
        }
    }

    /// Whether calling again may succeed without changing the input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Action(e) => e.is_retryable(),
            Self::Store(e) => e.is_retryable(),
            Self::StaleClaim { .. } | Self::GivenBack { .. } => true,
            #[cfg(feature = "test-hooks")]
            Self::SimulatedCrash => true,
            _ => false,
        }
    }

    /// The problems of invalid input (spec, payload, option), each with a path.
    pub fn problems(&self) -> &[SpecProblem] {
        match self {
            Self::InvalidSpec(p) | Self::InvalidPayload(p) | Self::InvalidOption(p) => p,
            _ => &[],
        }
    }
}
