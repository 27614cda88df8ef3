//! The snapshot of a run returned by `start`, `execute_next` and `snapshot`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::parse_stored;
use super::{EngineError, Result};
use crate::actions::StepOutcome;
use crate::journal::{Compensation, ManualGate, Projection, RunId, RunStatus};
use crate::plan::StepState;
use crate::store::{AttemptRow, RunRow};
use crate::vocab::AttemptStatus;
use crate::vocab::Timestamp;

/// One attempt of a run. Never carries the claim token or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    /// `<run_id>:<step>:<attempt>`.
    pub runnable_key: String,
    /// Step name.
    pub step: String,
    /// Attempt number.
    pub attempt: u32,
    /// Where the attempt stands.
    pub status: AttemptStatus,
    /// Not claimable before.
    pub visible_at: Timestamp,
    /// Worker that holds (or last held) the claim.
    pub owner: Option<String>,
    /// End of the current lease.
    pub lease_until: Option<Timestamp>,
    /// How many times it was claimed (more than one means redelivery).
    pub claims: u32,
    /// The step's input.
    pub input: Map<String, Value>,
    /// Output or error, once recorded.
    pub outcome: Option<StepOutcome>,
    /// The dynamic node the attempt runs (`None` for a declared step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<crate::decide::fact::AttemptNode>,
}

/// A run as stored now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSnapshot {
    /// Run id.
    pub run_id: RunId,
    /// Workflow name.
    pub workflow: String,
    /// Version label.
    pub version: Option<String>,
    /// Fingerprint of the executable shape.
    pub fingerprint: String,
    /// Hash of the pinned definition.
    pub definition_hash: String,
    /// Trigger name.
    pub trigger: String,
    /// Queue.
    pub queue: String,
    /// Status.
    pub status: RunStatus,
    /// Resolved payload.
    pub input: Map<String, Value>,
    /// Outputs merged in the order applied.
    pub context: Map<String, Value>,
    /// State of every planned step.
    pub steps: BTreeMap<String, StepState>,
    /// The open manual gate.
    pub manual: Option<ManualGate>,
    /// Error of a failed run.
    pub error: Option<Value>,
    /// Saga compensation of a failed run: what was undone and what was not.
    pub compensation: Option<Compensation>,
    /// The run's dynamic work: counters and the works not finished yet.
    pub dynamic: crate::decide::fact::DynamicState,
    /// The run this one replays.
    pub replayed_from: Option<String>,
    /// The parent run of a child run.
    pub parent_run_id: Option<String>,
    /// Attempts, oldest first.
    pub attempts: Vec<AttemptView>,
    /// Idempotency key of the start.
    pub idempotency_key: Option<String>,
    /// Earliest time a scheduled attempt becomes visible.
    pub next_visible_at: Option<Timestamp>,
    /// Number of journal facts.
    pub revision: i64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl RunSnapshot {
    pub(super) fn from_rows(run: RunRow, attempts: Vec<AttemptRow>) -> Result<Self> {
        let id = run.run_id.clone();
        let attempts = attempts
            .into_iter()
            .map(|a| {
                Ok(AttemptView {
                    outcome: a
                        .outcome
                        .as_deref()
                        .map(|o| parse_stored("outcome", &id, o))
                        .transpose()?,
                    input: parse_stored("attempt input", &id, &a.input)?,
                    node: a
                        .node
                        .as_deref()
                        .map(|n| parse_stored("dynamic node", &id, n))
                        .transpose()?,
                    runnable_key: a.runnable_key,
                    step: a.step,
                    attempt: u32::try_from(a.attempt).unwrap_or(u32::MAX),
                    status: a.status,
                    visible_at: Timestamp(a.visible_at),
                    owner: a.owner,
                    lease_until: a.lease_until.map(Timestamp),
                    claims: u32::try_from(a.claims).unwrap_or(u32::MAX),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let next_visible_at = attempts
            .iter()
            .filter(|a| a.status == AttemptStatus::Scheduled)
            .map(|a| a.visible_at)
            .min();
        Ok(Self {
            run_id: id.parse().map_err(|_| EngineError::Corrupt {
                what: "run id".into(),
                message: id.clone(),
            })?,
            status: run.status,
            input: parse_stored("input", &id, &run.input)?,
            context: parse_stored("context", &id, &run.context)?,
            steps: parse_stored("steps", &id, &run.steps)?,
            manual: run
                .manual
                .as_deref()
                .map(|m| parse_stored("manual gate", &id, m))
                .transpose()?,
            error: run
                .error
                .as_deref()
                .map(|e| parse_stored("error", &id, e))
                .transpose()?,
            compensation: run
                .compensation
                .as_deref()
                .map(|c| parse_stored("compensation", &id, c))
                .transpose()?,
            dynamic: run
                .dynamic
                .as_deref()
                .map(|d| parse_stored("dynamic work", &id, d))
                .transpose()?
                .unwrap_or_default(),
            replayed_from: run.replayed_from,
            parent_run_id: run.parent_run_id,
            workflow: run.workflow,
            version: run.version,
            fingerprint: run.fingerprint,
            definition_hash: run.definition_hash,
            trigger: run.trigger_name,
            queue: run.queue,
            attempts,
            idempotency_key: run.idempotency_key,
            next_visible_at,
            revision: run.revision,
            created_at: Timestamp(run.created_at),
            updated_at: Timestamp(run.updated_at),
        })
    }

    /// Whether the run has ended.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    /// The attempts of `step`, oldest first.
    pub fn attempts_of(&self, step: &str) -> Vec<&AttemptView> {
        self.attempts.iter().filter(|a| a.step == step).collect()
    }

    /// The state held by the derived rows, for comparison with the journal's fold.
    pub(crate) fn projection(&self) -> Projection {
        Projection {
            status: Some(self.status),
            context: self.context.clone(),
            steps: self.steps.clone(),
            attempts: self
                .attempts
                .iter()
                .map(|a| (a.runnable_key.clone(), a.status))
                .collect(),
            manual: self.manual.clone(),
            error: self.error.clone(),
            compensation: self.compensation.clone(),
            open_works: self.dynamic.open.iter().map(|w| w.key.clone()).collect(),
        }
    }
}
