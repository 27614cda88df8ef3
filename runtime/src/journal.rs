//! The journal: the facts of a run, and the projection that folds them into its state.
//!
//! Facts are the source of truth; the `runs` and `attempts` rows are derived from them in the
//! same transaction. [`Projection::fold`] rebuilds a run from its facts alone, so the derived
//! rows can always be checked ([`Projection::diff`]). Pure: no IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::Route;
use crate::vocab::{
    AttemptStatus, CommandKind, CompensationStatus, Deadline, StepOutcome, StepState, Suspension,
    Timestamp,
};
pub use crate::vocab::{InvalidRunId, RunId, RunStatus};

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

/// A run's state, folded from its facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projection {
    /// Status.
    pub status: Option<RunStatus>,
    /// Outputs merged in the order applied.
    pub context: Map<String, Value>,
    /// State of every step that was planned.
    pub steps: BTreeMap<String, StepState>,
    /// Status of every attempt, by runnable key.
    pub attempts: BTreeMap<String, AttemptStatus>,
    /// The open manual gate.
    pub manual: Option<ManualGate>,
    /// The error of a failed run.
    pub error: Option<Value>,
    /// Saga compensation state.
    pub compensation: Option<Compensation>,
}

impl Projection {
    /// Folds facts, oldest first.
    pub fn fold<'a>(facts: impl IntoIterator<Item = &'a Fact>) -> Self {
        let mut p = Self::default();
        for fact in facts {
            match fact {
                Fact::RunStarted { context, .. } => {
                    p.status = Some(RunStatus::Idle);
                    p.context.clone_from(context);
                }
                Fact::RunnablesPlanned { runnables } => {
                    for r in runnables {
                        p.attempts
                            .insert(r.runnable_key.clone(), AttemptStatus::Scheduled);
                        p.steps.insert(r.step.clone(), StepState::Planned);
                    }
                }
                Fact::AttemptClaimed { runnable_key, .. } => {
                    p.attempts
                        .insert(runnable_key.clone(), AttemptStatus::Claimed);
                }
                Fact::AttemptRecorded { runnable_key, .. } => {
                    p.attempts
                        .insert(runnable_key.clone(), AttemptStatus::Recorded);
                }
                Fact::RunnableApplied {
                    runnable_key,
                    step,
                    attempt_status,
                    step_state,
                    context_patch,
                    ..
                } => {
                    p.attempts.insert(runnable_key.clone(), *attempt_status);
                    if let Some(state) = step_state {
                        p.steps.insert(step.clone(), *state);
                    }
                    for (k, v) in context_patch {
                        p.context.insert(k.clone(), v.clone());
                    }
                }
                Fact::ManualStepPaused { gate } => {
                    p.manual = Some(gate.clone());
                }
                Fact::CommandReceived { .. } | Fact::ChildRunStarted { .. } => {}
                Fact::ManualStepResolved {
                    step,
                    action,
                    context_patch,
                    ..
                } => {
                    p.manual = None;
                    let state = if action == "rejected" {
                        StepState::Failed
                    } else {
                        StepState::Completed
                    };
                    p.steps.insert(step.clone(), state);
                    for (k, v) in context_patch {
                        p.context.insert(k.clone(), v.clone());
                    }
                }
                Fact::CompensationUpdated { state } => {
                    if p.compensation.is_none() {
                        // Compensation starts by abandoning the forward steps still open.
                        for s in p.attempts.values_mut() {
                            if s.is_open() {
                                *s = AttemptStatus::Cancelled;
                            }
                        }
                    }
                    p.compensation = Some(state.clone());
                }
                Fact::RunTerminal { status, error } => {
                    p.status = Some(*status);
                    p.error = error.clone();
                    p.manual = None;
                    for s in p.attempts.values_mut() {
                        if s.is_open() {
                            *s = AttemptStatus::Cancelled;
                        }
                    }
                }
            }
        }
        if p.status.is_some_and(|s| !s.is_terminal()) {
            p.status = Some(if p.manual.is_some() {
                RunStatus::Paused
            } else if p.steps.values().any(|s| *s == StepState::Planned) {
                RunStatus::Running
            } else {
                RunStatus::Idle
            });
        }
        p
    }

    /// Differences between this projection and another (empty when they agree).
    pub fn diff(&self, derived: &Projection) -> Vec<String> {
        let mut out = Vec::new();
        if self.status != derived.status {
            out.push(format!(
                "status: journal says {:?}, rows say {:?}",
                self.status, derived.status
            ));
        }
        if self.context != derived.context {
            out.push(format!(
                "context: journal says {}, rows say {}",
                Value::Object(self.context.clone()),
                Value::Object(derived.context.clone())
            ));
        }
        if self.steps != derived.steps {
            out.push(format!(
                "steps: journal says {:?}, rows say {:?}",
                self.steps, derived.steps
            ));
        }
        if self.attempts != derived.attempts {
            out.push(format!(
                "attempts: journal says {:?}, rows say {:?}",
                self.attempts, derived.attempts
            ));
        }
        if self.manual != derived.manual {
            out.push(format!(
                "manual gate: journal says {:?}, rows say {:?}",
                self.manual, derived.manual
            ));
        }
        if self.compensation != derived.compensation {
            out.push(format!(
                "compensation: journal says {:?}, rows say {:?}",
                self.compensation, derived.compensation
            ));
        }
        if self.error != derived.error {
            out.push(format!(
                "error: journal says {:?}, rows say {:?}",
                self.error, derived.error
            ));
        }
        out
    }
}
