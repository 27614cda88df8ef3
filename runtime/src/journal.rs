//! The journal: the facts of a run, and the projection that folds them into its state.
//!
//! Facts are the source of truth; the `runs` and `attempts` rows are derived from them in the
//! same transaction. [`Projection::fold`] rebuilds a run from its facts alone, so the derived
//! rows can always be checked ([`Projection::diff`]). Pure: no IO.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub use crate::decide::fact::{
    CommandReceipt, Compensation, Fact, ManualGate, ParentLink, PlannedRunnable,
};
use crate::vocab::{AttemptStatus, StepState};
pub use crate::vocab::{InvalidRunId, RunId, RunStatus};

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
    /// Scheduled dynamic works not finished yet.
    pub open_works: std::collections::BTreeSet<String>,
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
                        if r.node.is_none() {
                            p.steps.insert(r.step.clone(), StepState::Planned);
                        }
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
                Fact::DynamicWorkRecorded { work } => {
                    if work.scheduled {
                        p.open_works.insert(work.key.clone());
                    }
                }
                Fact::DynamicWorkCompleted {
                    key,
                    origin_step,
                    origin_completed,
                    ..
                } => {
                    p.open_works.remove(key);
                    if *origin_completed {
                        p.steps.insert(origin_step.clone(), StepState::Completed);
                    }
                }
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
                    p.open_works.clear();
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
            } else if p.steps.values().any(|s| *s == StepState::Planned) || !p.open_works.is_empty()
            {
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
        if self.open_works != derived.open_works {
            out.push(format!(
                "open dynamic work: journal says {:?}, rows say {:?}",
                self.open_works, derived.open_works
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
