//! The facts of a run's journal: what the decision core emits and the journal stores.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::Route;
use crate::spec::RetryPolicy;
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
    /// The dynamic node this runnable runs (`None` for a declared step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<AttemptNode>,
}

/// One node of dynamic work: an approved action run as part of a run, beside its declared
/// steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicNode {
    /// The node's id, unique in the run (it is also the step name of its attempts).
    pub id: String,
    /// The action key.
    pub action: String,
    /// The action digest pinned when the work was scheduled (`None` when only recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The node's input.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub input: Map<String, Value>,
    /// Retries; without one a failed node is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Context key the node's output is stored under (`None`: the output stays on the attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Free-form metadata, for inspection.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// An edge of a dynamic work's graph overlay. An edge between two nodes orders them: the
/// target runs once every node with an edge to it has succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicEdge {
    /// Stable id (default `<from>:dynamic:<to>`).
    pub id: String,
    /// The origin step or a node of the work.
    pub from: String,
    /// A node of the work.
    pub to: String,
}

/// The attempt a dynamic work grew from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicOrigin {
    /// Its step.
    pub step: String,
    /// Its attempt number.
    pub attempt: u32,
    /// Its runnable key.
    pub runnable_key: String,
}

/// Runtime-authored work added to a run: nodes running approved actions, the edges drawn
/// from its origin step, and an optional join that runs once every node has succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicWork {
    /// The work's key, unique in the run: repeating the same work under it changes nothing.
    pub key: String,
    /// Where it grew from.
    pub origin: DynamicOrigin,
    /// The nodes.
    pub nodes: Vec<DynamicNode>,
    /// The overlay's edges.
    pub edges: Vec<DynamicEdge>,
    /// The fan-in node: runs once after every node succeeded, with their outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<DynamicNode>,
    /// Whether the nodes were planned (`false`: recorded for inspection only).
    pub scheduled: bool,
    /// Scheduled by the origin step's running action: the step's successors wait for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_action: bool,
    /// Whether a replay may repeat the nodes' effects without review.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_replay: bool,
    /// Why the work was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl DynamicWork {
    /// The work's nodes, the join last.
    pub fn all_nodes(&self) -> impl Iterator<Item = &DynamicNode> {
        self.nodes.iter().chain(self.join.as_ref())
    }
}

/// What an attempt of a dynamic node carries (stored with the attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptNode {
    /// The work's key.
    pub work: String,
    /// The node's position in the work (the join's is the node count).
    pub index: u32,
    /// Whether it is the work's join.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// The action key.
    pub action: String,
    /// The pinned digest.
    pub digest: Option<String>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Context key of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Whether a replay may repeat it without review.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_replay: bool,
}

/// A node waiting for nodes of its work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingNode {
    /// Its position in the work.
    pub index: u32,
    /// The node.
    pub node: DynamicNode,
    /// The nodes it still waits for.
    pub after: Vec<String>,
}

/// A scheduled work that has not finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWork {
    /// The work's key.
    pub key: String,
    /// Its origin step.
    pub origin_step: String,
    /// Whether the origin step's successors wait for the work.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_origin: bool,
    /// Whether a replay may repeat its nodes without review.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_replay: bool,
    /// Nodes (not the join) not yet applied.
    pub pending: u32,
    /// Nodes not yet planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitingNode>,
    /// The join, until it is planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<DynamicNode>,
    /// Whether the join was planned and is not applied yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join_running: bool,
    /// The origin step succeeded and waits for the work; its successors become visible at
    /// this instant (or when the work completes, if later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_done: Option<Timestamp>,
}

/// The dynamic work of a run (stored with the run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicState {
    /// Scheduled works not finished yet (every work, recorded or scheduled, is in the
    /// journal: `dynamic_work_recorded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<OpenWork>,
    /// The run reached its end while works were open: it completes when they finish.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub completion_deferred: bool,
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
    /// Dynamic work was added to the run (scheduled, or recorded for inspection only).
    DynamicWorkRecorded {
        /// The work.
        work: Box<DynamicWork>,
    },
    /// A scheduled dynamic work finished: every node (and its join) succeeded.
    DynamicWorkCompleted {
        /// The work's key.
        key: String,
        /// Its origin step.
        origin_step: String,
        /// Whether the origin step waited for the work and completes now.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        origin_completed: bool,
        /// The route the origin step took once the work finished (when it waited for it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        route: Option<Route>,
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
            Self::DynamicWorkRecorded { .. } => "dynamic_work_recorded",
            Self::DynamicWorkCompleted { .. } => "dynamic_work_completed",
        }
    }
}
