//! The read side: what a run looks like now, why it is where it is, and which runs exist.
//!
//! - [`Engine::inspect_run`](crate::Engine::inspect_run) returns a [`RunInspection`]: the run's state, attempts (never a
//!   claim token or its hash), command history, parent and child runs, route decisions and
//!   the most urgent [`Deadline`], evaluated against the clock.
//! - [`Engine::inspect_run_graph`](crate::Engine::inspect_run_graph) returns a [`RunGraph`]: nodes and edges with statuses, for
//!   user interfaces.
//! - [`Engine::explain_run`](crate::Engine::explain_run) returns an [`Explanation`]: one reason, a summary, the valid next
//!   actions and the evidence. [`Explanation::from_inspection`] is pure.
//! - [`Engine::list_runs`](crate::Engine::list_runs) returns a [`RunPage`] of payload-free [`RunSummary`]s, newest first,
//!   with keyset pagination over indexed columns.
//! - [`redact`] narrows any of these views to what an actor may see ([`Scope`]).

mod explain;
mod graph;
pub(crate) mod list;
mod read;
pub use read::RegisteredDiff;
pub mod render;
mod visibility;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::vocab::{Deadline, DeadlineState, DeadlineStatus, most_urgent};
pub use explain::{Explanation, NextAction, Reason};
pub use graph::{
    ChildLink, DynamicOverlay, EdgeKind, EdgeStatus, GraphEdge, GraphNode, NodeKind, NodeStatus,
    RunGraph,
};
pub use list::{Page, RunCounts, RunFilter, RunPage, RunSummary, StatusCount};
pub use visibility::{Redact, Scope, ScopeTable, VisibilityError, VisibilityPolicy, redact};

use crate::actions::{StepError, StepOutcome, Suspension};
use crate::engine::{Definition, EngineError, Result};
use crate::journal::{
    CommandReceipt, Compensation, Fact, ManualGate, ParentLink, RunId, RunStatus,
};
use crate::plan::StepState;
use crate::spec::{DeadlineSpec, Mode, Outcome, RetryPolicy, WorkflowSpec};
use crate::store::{AttemptRow, ChildRow, FactRow, RunRow};
use crate::vocab::Timestamp;

/// Anything that names a run: a [`RunId`] or its text (checked, so a malformed id is an
/// [`EngineError::InvalidRunId`], not a lookup miss).
pub trait RunRef {
    /// The run id.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidRunId`] when the text is not a UUID.
    fn to_run_id(&self) -> Result<RunId>;
}

impl RunRef for RunId {
    fn to_run_id(&self) -> Result<RunId> {
        Ok(*self)
    }
}

impl RunRef for &RunId {
    fn to_run_id(&self) -> Result<RunId> {
        Ok(**self)
    }
}

impl RunRef for &str {
    fn to_run_id(&self) -> Result<RunId> {
        Ok(self.trim().parse()?)
    }
}

impl RunRef for String {
    fn to_run_id(&self) -> Result<RunId> {
        self.as_str().to_run_id()
    }
}

impl RunRef for &String {
    fn to_run_id(&self) -> Result<RunId> {
        self.as_str().to_run_id()
    }
}

/// Options of the read calls.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct InspectOptions {
    /// Include the journal facts (inspection) or node details (graph).
    pub include_history: bool,
    /// Evaluate deadlines and leases at this instant instead of the engine's clock.
    pub now: Option<Timestamp>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl InspectOptions {
    /// Sets `include_history`.
    #[must_use]
    pub fn include_history(mut self, value: bool) -> Self {
        self.include_history = value;
        self
    }

    /// Sets `now`.
    #[must_use]
    pub fn now(mut self, value: Timestamp) -> Self {
        self.now = Some(value);
        self
    }
}

impl InspectOptions {
    /// Options that include the history.
    pub fn with_history() -> Self {
        Self {
            include_history: true,
            now: None,
        }
    }
}

/// What a step declares about recovery, for operators deciding what to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// Retry policy (`None`: one attempt).
    pub retry: Option<RetryPolicy>,
    /// Compensating action.
    pub compensate: Option<String>,
    /// The effect cannot be undone; replay needs explicit approval.
    pub irreversible: bool,
    /// Whether the effect can be compensated.
    pub compensatable: bool,
    /// Error routes leaving the step, with their recovery labels.
    pub error_routes: Vec<String>,
}

/// A step of the pinned definition, with where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInspection {
    /// Step name (compensations are `compensate:<step>`).
    pub name: String,
    /// What runs it: an action key or `builtin:<kind>`.
    pub action: String,
    /// `planned`, `completed` or `failed`; `None` while never planned.
    pub state: Option<StepState>,
    /// Steps it waits for (dependency mode).
    pub after: Vec<String>,
    /// Recovery policy.
    pub recovery: Recovery,
    /// Deadline policy.
    pub deadline: Option<DeadlineSpec>,
    /// The version of its action the run pinned at start (WebAssembly actions).
    pub digest: Option<String>,
}

/// Why an attempt waits for its action instead of running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionWait {
    /// The action key.
    pub action: String,
    /// The version the run pinned.
    pub digest: Option<String>,
    /// `action_unknown` (not approved in the catalog) or `action_disabled`.
    pub code: String,
    /// What to do, in a sentence.
    pub message: String,
    /// Since when it waits.
    pub since: Timestamp,
    /// When it was last checked.
    pub checked_at: Timestamp,
}

/// One attempt, never with its claim token or the token's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptInspection {
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
    /// Worker that holds or last held the claim.
    pub owner: Option<String>,
    /// End of the current lease.
    pub lease_until: Option<Timestamp>,
    /// Number of claims (more than one: redelivered).
    pub claims: u32,
    /// The step's input.
    pub input: Option<Map<String, Value>>,
    /// Output of a success.
    pub output: Option<Map<String, Value>>,
    /// Error of a failure.
    pub error: Option<StepError>,
    /// The gate a suspension opened.
    pub suspended: Option<Suspension>,
    /// The deadline persisted when the attempt was planned.
    pub deadline: Option<Deadline>,
    /// The deadline evaluated now (open attempts only).
    pub deadline_state: Option<DeadlineState>,
    /// Why a scheduled attempt waits for its action (not approved yet, disabled).
    pub waiting_for_action: Option<ActionWait>,
    /// Last change.
    pub updated_at: Timestamp,
}

impl AttemptInspection {
    /// Whether the attempt still needs a worker (scheduled, claimed or recorded).
    pub fn is_open(&self) -> bool {
        matches!(
            self.status,
            AttemptStatus::Scheduled | AttemptStatus::Claimed | AttemptStatus::Recorded
        )
    }
}

/// The open manual gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualState {
    /// The gate step.
    pub step: String,
    /// `pause` (resume) or `approval` (approve or reject).
    pub kind: Suspension,
    /// When the run paused.
    pub paused_at: Timestamp,
    /// Where an ok resolution goes (`None`: the run completes).
    pub ok_target: Option<String>,
    /// Where a rejection goes.
    pub error_target: Option<String>,
    /// The gate's deadline evaluated now.
    pub deadline: Option<DeadlineState>,
}

/// A command the run received, as journaled (secret-looking metadata already redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandView {
    /// The command.
    pub command: CommandKind,
    /// Signal id.
    pub signal_id: String,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Who issued it.
    pub actor: Option<Value>,
    /// Comment.
    pub comment: Option<String>,
    /// Arguments.
    pub payload: Option<Map<String, Value>>,
    /// Metadata.
    pub metadata: Option<Map<String, Value>>,
    /// When it was issued.
    pub occurred_at: Timestamp,
}

impl From<CommandReceipt> for CommandView {
    fn from(c: CommandReceipt) -> Self {
        Self {
            command: c.command,
            signal_id: c.signal_id,
            idempotency_key: c.idempotency_key,
            actor: c.actor,
            comment: c.comment,
            payload: Some(c.payload),
            metadata: Some(c.metadata),
            occurred_at: c.occurred_at,
        }
    }
}

/// A route a step took (transition mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDecision {
    /// Source step.
    pub step: String,
    /// The attempt whose outcome chose it (`None` for a gate resolution).
    pub runnable_key: Option<String>,
    /// `ok` or `error`.
    pub outcome: Outcome,
    /// Index of the transition in the spec (`None`: a step with no route completed the run).
    pub transition: Option<usize>,
    /// Target step; `None` completes the run.
    pub to: Option<String>,
}

/// A linked run (parent or child) with its current status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkedRun {
    /// The other run.
    pub run_id: String,
    /// Its workflow (`None` if the run is gone).
    pub workflow: Option<String>,
    /// Its status (`None` if the run is gone).
    pub status: Option<RunStatus>,
    /// The parent step that started the child.
    pub step: String,
    /// The child key (hidden outside the auditor scope: it may carry business data).
    pub child_key: Option<String>,
    /// The parent attempt (known for the parent link).
    pub runnable_key: Option<String>,
}

/// A journal fact with the time it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the journal.
    pub seq: i64,
    /// When it was written.
    pub at: Timestamp,
    /// The fact.
    pub fact: Fact,
}

/// A run as it stands, for operators and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInspection {
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
    /// Whether the pinned definition could be loaded (steps and graph need it).
    pub definition_available: bool,
    /// Workflow mode.
    pub mode: Option<Mode>,
    /// Trigger name.
    pub trigger: String,
    /// Queue.
    pub queue: String,
    /// Status.
    pub status: RunStatus,
    /// Whether the run has ended.
    pub terminal: bool,
    /// Error of a failed run.
    pub error: Option<Value>,
    /// Saga compensation of a failed run.
    pub compensation: Option<Compensation>,
    /// Resolved payload.
    pub input: Option<Map<String, Value>>,
    /// Outputs merged in the order applied.
    pub context: Option<Map<String, Value>>,
    /// The open manual gate.
    pub manual: Option<ManualState>,
    /// Steps of the pinned definition (and planned compensations), in declaration order.
    pub steps: Vec<StepInspection>,
    /// Attempts, oldest first.
    pub attempts: Vec<AttemptInspection>,
    /// Commands received, oldest first.
    pub commands: Vec<CommandView>,
    /// Routes taken, oldest first.
    pub decisions: Vec<RouteDecision>,
    /// The parent of a child run.
    pub parent: Option<LinkedRun>,
    /// Child runs, oldest first.
    pub children: Vec<LinkedRun>,
    /// The run this one replays.
    pub replayed_from: Option<String>,
    /// The schedule window a scheduled run fired for (workflow, trigger, cron, zone,
    /// scheduled and local time, lateness, key, origin), from the run's `schedule` context.
    pub schedule: Option<Value>,
    /// Idempotency key of the start.
    pub idempotency_key: Option<String>,
    /// Earliest time a scheduled attempt becomes visible.
    pub next_visible_at: Option<Timestamp>,
    /// The most urgent open deadline.
    pub deadline: Option<DeadlineState>,
    /// The instant leases and deadlines were evaluated at.
    pub as_of: Timestamp,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// Number of journal facts.
    pub revision: i64,
    /// The journal, with `include_history`.
    pub history: Option<Vec<HistoryEntry>>,
    /// Dynamic work added to the run, oldest first.
    pub dynamic_work: Vec<DynamicWorkView>,
}

/// Where a dynamic work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkStatus {
    /// Recorded for inspection only: its nodes never run.
    Recorded,
    /// Scheduled; some node (or the join) has not finished.
    Running,
    /// Every node and the join succeeded.
    Completed,
    /// The run ended before the work finished.
    Abandoned,
}

/// A dynamic work of a run, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicWorkView {
    /// The work's key.
    pub key: String,
    /// Where it stands.
    pub status: WorkStatus,
    /// The step it grew from.
    pub origin_step: String,
    /// The attempt it grew from.
    pub origin_runnable_key: String,
    /// Added by the origin step's running action (the step's successors wait for it).
    pub from_action: bool,
    /// The nodes (the join last) as (id, action key).
    pub nodes: Vec<DynamicNodeView>,
    /// The join's id.
    pub join: Option<String>,
    /// The overlay's edges.
    pub edges: Vec<crate::decide::fact::DynamicEdge>,
    /// Whether a replay may repeat its effects without review.
    pub allow_replay: bool,
    /// Why it was added.
    pub reason: Option<String>,
    /// Its metadata (auditor scope only).
    pub metadata: Option<Map<String, Value>>,
    /// When it was added.
    pub added_at: Timestamp,
}

/// A node of a dynamic work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicNodeView {
    /// The node id.
    pub id: String,
    /// The action key.
    pub action: String,
    /// The pinned digest (scheduled works).
    pub digest: Option<String>,
}

impl RunInspection {
    /// The attempts of `step`, oldest first.
    pub fn attempts_of(&self, step: &str) -> impl Iterator<Item = &AttemptInspection> {
        self.attempts.iter().filter(move |a| a.step == step)
    }

    /// The latest attempt of `step`.
    pub fn latest_attempt(&self, step: &str) -> Option<&AttemptInspection> {
        self.attempts
            .iter()
            .filter(|a| a.step == step)
            .max_by_key(|a| a.attempt)
    }

    /// Open attempts whose claim expired at [`RunInspection::as_of`].
    pub fn expired_claims(&self) -> Vec<&AttemptInspection> {
        self.attempts
            .iter()
            .filter(|a| {
                a.status == AttemptStatus::Claimed && a.lease_until.is_some_and(|l| l <= self.as_of)
            })
            .collect()
    }

    /// The step a view should point at now: the gate, else the steps with open attempts.
    pub fn current_steps(&self) -> Vec<String> {
        if self.terminal {
            return Vec::new();
        }
        if let Some(m) = &self.manual {
            return vec![m.step.clone()];
        }
        let mut out: Vec<String> = Vec::new();
        for a in self.attempts.iter().filter(|a| a.is_open()) {
            if !out.contains(&a.step) {
                out.push(a.step.clone());
            }
        }
        out
    }
}

/// Everything a read of one run loads, in one read transaction.
pub(crate) struct RunRows {
    pub(crate) run: RunRow,
    pub(crate) attempts: Vec<AttemptRow>,
    pub(crate) facts: Vec<FactRow>,
    pub(crate) children: Vec<ChildRow>,
    pub(crate) parent: Option<RunRow>,
    pub(crate) waits: Vec<crate::store::ActionWaitRow>,
}

use crate::engine::parse_stored as parse;
use crate::vocab::{AttemptStatus, CommandKind};
fn summary_of(run: &RunRow) -> (Option<String>, Option<RunStatus>) {
    (Some(run.workflow.clone()), Some(run.status))
}

fn action_label(step: &crate::spec::StepSpec) -> String {
    match (&step.action, &step.builtin) {
        (Some(key), _) => key.to_string(),
        (None, Some(b)) => format!("builtin:{}", b.kind()),
        (None, None) => String::new(),
    }
}

/// Builds the inspection of a run from its rows. Pure.
pub(crate) fn build(
    rows: RunRows,
    def: Option<&Definition>,
    now: Timestamp,
    include_history: bool,
) -> Result<RunInspection> {
    let RunRows {
        run,
        attempts,
        facts,
        children,
        parent,
        waits,
    } = rows;
    let id = run.run_id.clone();
    let status = run.status;
    let terminal = status.is_terminal();
    let step_states: BTreeMap<String, StepState> = parse("steps", &id, &run.steps)?;
    let gate: Option<ManualGate> = run
        .manual
        .as_deref()
        .map(|m| parse("manual gate", &id, m))
        .transpose()?;

    let mut history = Vec::with_capacity(facts.len());
    for f in &facts {
        let fact: Fact = serde_json::from_str(&f.data)
            .map_err(|e| EngineError::corrupt(format!("journal fact {} of run {id}", f.id), e))?;
        history.push(HistoryEntry {
            seq: f.id,
            at: Timestamp(f.occurred_at),
            fact,
        });
    }

    let mut commands = Vec::new();
    let mut decisions = Vec::new();
    let mut works: Vec<DynamicWorkView> = Vec::new();
    let mut parent_link: Option<ParentLink> = None;
    for h in &history {
        match &h.fact {
            Fact::CommandReceived { command } => commands.push(CommandView::from(command.clone())),
            Fact::RunStarted { parent, .. } => parent_link.clone_from(parent),
            Fact::RunnableApplied {
                runnable_key,
                step,
                attempt_status,
                step_state,
                route,
                ..
            } => {
                let outcome = match attempt_status {
                    // A success without a new step state is a dynamic node's, or a step's
                    // whose successors wait for its dynamic work (decided when it finishes).
                    AttemptStatus::Succeeded if step_state.is_some() => Outcome::Ok,
                    AttemptStatus::Failed if step_state.is_some() => Outcome::Error,
                    _ => continue,
                };
                if route.is_some() || outcome == Outcome::Ok {
                    decisions.push(RouteDecision {
                        step: step.clone(),
                        runnable_key: Some(runnable_key.clone()),
                        outcome,
                        transition: route.as_ref().map(|r| r.transition),
                        to: route.as_ref().and_then(|r| r.to.clone()),
                    });
                }
            }
            Fact::ManualStepResolved {
                step,
                action,
                target,
                ..
            } => decisions.push(RouteDecision {
                step: step.clone(),
                runnable_key: None,
                outcome: if action == "rejected" {
                    Outcome::Error
                } else {
                    Outcome::Ok
                },
                transition: def.and_then(|d| {
                    let on = if action == "rejected" {
                        Outcome::Error
                    } else {
                        Outcome::Ok
                    };
                    let to = target.as_deref().unwrap_or("complete");
                    d.spec
                        .transitions
                        .iter()
                        .position(|t| t.from == *step && t.on == on && t.to == to)
                }),
                to: target.clone(),
            }),
            Fact::DynamicWorkRecorded { work } => works.push(DynamicWorkView {
                key: work.key.clone(),
                status: if work.scheduled {
                    WorkStatus::Running
                } else {
                    WorkStatus::Recorded
                },
                origin_step: work.origin.step.clone(),
                origin_runnable_key: work.origin.runnable_key.clone(),
                from_action: work.from_action,
                nodes: work
                    .all_nodes()
                    .map(|n| DynamicNodeView {
                        id: n.id.clone(),
                        action: n.action.clone(),
                        digest: n.digest.clone(),
                    })
                    .collect(),
                join: work.join.as_ref().map(|j| j.id.clone()),
                edges: work.edges.clone(),
                allow_replay: work.allow_replay,
                reason: work.reason.clone(),
                metadata: Some(work.metadata.clone()),
                added_at: h.at,
            }),
            Fact::DynamicWorkCompleted {
                key,
                origin_step,
                route,
                ..
            } => {
                if let Some(w) = works.iter_mut().find(|w| w.key == *key) {
                    w.status = WorkStatus::Completed;
                }
                if let Some(r) = route {
                    decisions.push(RouteDecision {
                        step: origin_step.clone(),
                        runnable_key: None,
                        outcome: Outcome::Ok,
                        transition: Some(r.transition),
                        to: r.to.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    if terminal {
        for w in works.iter_mut().filter(|w| w.status == WorkStatus::Running) {
            w.status = WorkStatus::Abandoned;
        }
    }
    // Routes only exist in transition mode.
    if def.is_some_and(|d| d.spec.mode() == Mode::Dependencies) {
        decisions.clear();
    }

    let mut attempt_views = Vec::with_capacity(attempts.len());
    for a in attempts {
        let outcome: Option<StepOutcome> = a
            .outcome
            .as_deref()
            .map(|o| parse("outcome", &id, o))
            .transpose()?;
        let deadline: Option<Deadline> = a
            .deadline
            .as_deref()
            .map(|d| parse("deadline", &id, d))
            .transpose()?;
        let (output, error, suspended) = match outcome {
            Some(StepOutcome::Succeeded { output, .. }) => (Some(output), None, None),
            Some(StepOutcome::Failed(e)) => (None, Some(e), None),
            Some(StepOutcome::Suspended(k)) => (None, None, Some(k)),
            None => (None, None, None),
        };
        let open = matches!(
            a.status,
            AttemptStatus::Scheduled | AttemptStatus::Claimed | AttemptStatus::Recorded
        );
        let waiting_for_action = waits
            .iter()
            .find(|w| w.runnable_key == a.runnable_key)
            .filter(|_| a.status == AttemptStatus::Scheduled && !terminal)
            .map(|w| ActionWait {
                action: w.action_key.clone(),
                digest: w.digest.clone(),
                code: w.code.clone(),
                message: w.message.clone(),
                since: Timestamp(w.since),
                checked_at: Timestamp(w.updated_at),
            });
        attempt_views.push(AttemptInspection {
            waiting_for_action,
            deadline_state: deadline
                .as_ref()
                .filter(|_| open && !terminal)
                .map(|d| d.evaluate(now, &a.step, Some(&a.runnable_key))),
            deadline,
            input: Some(parse("attempt input", &id, &a.input)?),
            output,
            error,
            suspended,
            attempt: u32::try_from(a.attempt).unwrap_or(u32::MAX),
            claims: u32::try_from(a.claims).unwrap_or(u32::MAX),
            visible_at: Timestamp(a.visible_at),
            lease_until: a.lease_until.map(Timestamp),
            updated_at: Timestamp(a.updated_at),
            runnable_key: a.runnable_key,
            step: a.step,
            status: a.status,
            owner: a.owner,
        });
    }

    let next_visible = attempt_views
        .iter()
        .filter(|a| a.status == AttemptStatus::Scheduled)
        .map(|a| a.visible_at)
        .min();
    let manual = gate.map(|g| ManualState {
        deadline: g.deadline.as_ref().map(|d| d.evaluate(now, &g.step, None)),
        step: g.step,
        kind: g.kind,
        paused_at: g.paused_at,
        ok_target: g.ok_target,
        error_target: g.error_target,
    });

    let mut steps = Vec::new();
    if let Some(def) = def {
        for s in &def.spec.steps {
            steps.push(StepInspection {
                name: s.name.clone(),
                action: action_label(s),
                digest: s
                    .action
                    .as_ref()
                    .and_then(|k| def.actions.get(k))
                    .map(ToString::to_string),
                state: step_states.get(&s.name).copied(),
                after: s.after.clone(),
                recovery: Recovery {
                    retry: s.retry.clone(),
                    compensate: s.compensate.as_ref().map(ToString::to_string),
                    irreversible: s.irreversible,
                    compensatable: s.compensatable.unwrap_or(!s.irreversible),
                    error_routes: def
                        .spec
                        .transitions
                        .iter()
                        .filter(|t| t.from == s.name && t.on == Outcome::Error)
                        .map(|t| match &t.recovery {
                            Some(r) => format!("{} ({r})", t.to),
                            None => t.to.clone(),
                        })
                        .collect(),
                },
                deadline: s.deadline.clone(),
            });
        }
        for s in &def.spec.steps {
            let Some(comp) = &s.compensate else { continue };
            let name = format!("compensate:{}", s.name);
            steps.push(StepInspection {
                state: step_states.get(&name).copied(),
                name,
                action: comp.to_string(),
                digest: def.actions.get(comp).map(ToString::to_string),
                after: vec![s.name.clone()],
                recovery: Recovery {
                    retry: s.compensate_retry.clone(),
                    compensate: None,
                    irreversible: false,
                    compensatable: false,
                    error_routes: Vec::new(),
                },
                deadline: None,
            });
        }
    }

    let deadline = if terminal {
        None
    } else {
        most_urgent(
            attempt_views
                .iter()
                .filter_map(|a| a.deadline_state.as_ref())
                .chain(manual.as_ref().and_then(|m| m.deadline.as_ref())),
        )
        .cloned()
    };

    let children = children
        .into_iter()
        .map(|(step, key, child, workflow, status)| LinkedRun {
            run_id: child,
            workflow,
            status: status.as_deref().and_then(RunStatus::parse),
            step,
            child_key: Some(key),
            runnable_key: None,
        })
        .collect();
    let parent = parent_link.map(|p| {
        let (workflow, status) = parent.as_ref().map(summary_of).unwrap_or((None, None));
        LinkedRun {
            run_id: p.run_id,
            workflow,
            status,
            step: p.step,
            child_key: Some(p.child_key),
            runnable_key: Some(p.runnable_key),
        }
    });

    let context: Map<String, Value> = parse("context", &id, &run.context)?;
    Ok(RunInspection {
        run_id: id
            .parse()
            .map_err(|_| EngineError::corrupt("run id", &id))?,
        workflow: run.workflow,
        version: run.version,
        fingerprint: run.fingerprint,
        definition_hash: run.definition_hash,
        definition_available: def.is_some(),
        mode: def.map(|d| d.spec.mode()),
        trigger: run.trigger_name,
        queue: run.queue,
        status,
        terminal,
        error: run
            .error
            .as_deref()
            .map(|e| parse("error", &id, e))
            .transpose()?,
        compensation: run
            .compensation
            .as_deref()
            .map(|c| parse("compensation", &id, c))
            .transpose()?,
        input: Some(parse("input", &id, &run.input)?),
        schedule: context.get("schedule").cloned(),
        context: Some(context),
        manual,
        steps,
        attempts: attempt_views,
        commands,
        decisions,
        parent,
        children,
        replayed_from: run.replayed_from,
        idempotency_key: run.idempotency_key,
        next_visible_at: if terminal { None } else { next_visible },
        deadline,
        as_of: now,
        created_at: Timestamp(run.created_at),
        updated_at: Timestamp(run.updated_at),
        revision: run.revision,
        history: include_history.then_some(history),
        dynamic_work: works,
    })
}

/// The spec of an inspection's definition, when the caller needs the graph.
pub(crate) fn graph_of(
    inspection: &RunInspection,
    spec: Option<&WorkflowSpec>,
    include_history: bool,
) -> RunGraph {
    graph::build(inspection, spec, include_history)
}
