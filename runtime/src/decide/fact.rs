//! The facts of a run's journal: what the decision core emits and the journal stores.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::Route;
use crate::vocab::{
    AttemptStatus, CommandKind, CompensationStatus, Deadline, RunStatus, StepOutcome, StepState,
    Suspension, Timestamp,
};

/// A runnable planned for execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRunnable {
    /// `<run_id>:<step>:<attempt>`; also the idempotency key handed to the action.
    pub runnable_key: String,
    /// Step name.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Not claimable before this instant.
    pub visible_at: Timestamp,
    /// The step's input.
    pub input: Map<String, Value>,
    /// The step's deadline, from its visible time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Deadline>,
}

/// A manual gate the run is stopped at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualGate {
    /// The gate step.
    pub step: String,
    /// Pause or approval.
    pub kind: Suspension,
    /// Where an ok resolution goes (`None` completes the run), captured at pause time.
    pub ok_target: Option<String>,
    /// Where a rejection goes (`None` completes the run), captured at pause time.
    pub error_target: Option<String>,
    /// Key the decision is stored under.
    pub output_key: Option<String>,
    /// When the run paused.
    pub paused_at: Timestamp,
    /// The gate's deadline, from its pause time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Deadline>,
}

/// The link from a child run to the step that started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent run.
    pub run_id: String,
    /// The parent step.
    pub step: String,
    /// The parent attempt's runnable key.
    pub runnable_key: String,
    /// The child key.
    pub child_key: String,
}

/// A received control command, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReceipt {
    /// Signal id.
    pub signal_id: String,
    /// The command.
    pub command: CommandKind,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Who issued it.
    pub actor: Option<Value>,
    /// Comment.
    pub comment: Option<String>,
    /// Arguments, redacted.
    pub payload: Map<String, Value>,
    /// Metadata, redacted.
    pub metadata: Map<String, Value>,
    /// When it was issued.
    pub occurred_at: Timestamp,
}

/// Progress and outcome of a failed run's saga compensation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    /// Where the compensation stands.
    pub status: CompensationStatus,
    /// The failure that started it.
    pub failure: Value,
    /// Steps still to undo, next first.
    pub pending: Vec<String>,
    /// Steps undone, in order.
    pub compensated: Vec<String>,
    /// Steps left as they were because a compensation failed.
    pub not_compensated: Vec<String>,
    /// The step whose compensation failed.
    pub failed: Option<String>,
}

/// One fact of a run's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fact {
    /// The run was created.
    RunStarted {
        /// Workflow name.
        workflow: String,
        /// Version label.
        version: Option<String>,
        /// Fingerprint of the executable shape.
        fingerprint: String,
        /// Hash of the pinned definition.
        definition_hash: String,
        /// Trigger name.
        trigger: String,
        /// Queue.
        queue: String,
        /// Resolved payload.
        input: Map<String, Value>,
        /// Idempotency key of the start, if any.
        idempotency_key: Option<String>,
        /// The run this one replays.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replayed_from: Option<String>,
        /// The parent run and step of a child run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentLink>,
        /// The run's context at start (`schedule` for a scheduled run).
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        context: Map<String, Value>,
    },
    /// A control command was received (its effect is in the same transaction).
    CommandReceived {
        /// The command, with secret-looking metadata redacted.
        command: CommandReceipt,
    },
    /// A manual gate was resolved.
    ManualStepResolved {
        /// The gate step.
        step: String,
        /// `resumed`, `approved` or `rejected`.
        action: String,
        /// Merged into the context (the decision, under the gate's output key).
        context_patch: Map<String, Value>,
        /// Where the run went (`None`: it completed).
        target: Option<String>,
    },
    /// The run's saga compensation advanced.
    CompensationUpdated {
        /// The compensation state after this change.
        state: Compensation,
    },
    /// A child run was started from one of this run's steps.
    ChildRunStarted {
        /// The parent step.
        step: String,
        /// The key naming the child within the step.
        child_key: String,
        /// The child run.
        child_run_id: String,
        /// The child's workflow.
        workflow: String,
    },
    /// Runnables were planned.
    RunnablesPlanned {
        /// The runnables.
        runnables: Vec<PlannedRunnable>,
    },
    /// A worker claimed an attempt.
    AttemptClaimed {
        /// Which attempt.
        runnable_key: String,
        /// The claim's id (the token stays with the worker).
        claim_id: String,
        /// Worker identity.
        owner: String,
        /// Lease end.
        lease_until: Timestamp,
        /// Whether an earlier claim of this attempt expired.
        redelivery: bool,
    },
    /// An attempt's outcome was recorded.
    AttemptRecorded {
        /// Which attempt.
        runnable_key: String,
        /// The claim that produced it.
        claim_id: Option<String>,
        /// The outcome.
        outcome: StepOutcome,
    },
    /// A recorded outcome was applied to the run.
    RunnableApplied {
        /// Which attempt.
        runnable_key: String,
        /// Its step.
        step: String,
        /// Final status of the attempt: `succeeded`, `failed` or `suspended`.
        attempt_status: AttemptStatus,
        /// New state of the step, when the outcome changed it.
        step_state: Option<StepState>,
        /// Merged into the run's context.
        context_patch: Map<String, Value>,
        /// Route taken (transition mode).
        route: Option<Route>,
    },
    /// The run stopped at a manual gate.
    ManualStepPaused {
        /// The gate.
        gate: ManualGate,
    },
    /// The run ended.
    RunTerminal {
        /// Completed, failed or cancelled.
        status: RunStatus,
        /// The error of a failed run.
        error: Option<Value>,
    },
}

impl Fact {
    /// The fact's kind as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RunStarted { .. } => "run_started",
            Self::RunnablesPlanned { .. } => "runnables_planned",
            Self::AttemptClaimed { .. } => "attempt_claimed",
            Self::AttemptRecorded { .. } => "attempt_recorded",
            Self::RunnableApplied { .. } => "runnable_applied",
            Self::ManualStepPaused { .. } => "manual_step_paused",
            Self::RunTerminal { .. } => "run_terminal",
            Self::CommandReceived { .. } => "command_received",
            Self::ManualStepResolved { .. } => "manual_step_resolved",
            Self::CompensationUpdated { .. } => "compensation_updated",
            Self::ChildRunStarted { .. } => "child_run_started",
        }
    }
}
