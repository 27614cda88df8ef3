//! The decision core: the run state machine as a pure function.
//!
//! [`decide`] takes the typed state of one run ([`RunState`], decoded once where its row is
//! read), the run's pinned spec, one [`Event`] and the time, and returns a [`Decision`]: the
//! facts to append, the attempts to plan, the new status of the attempt the event is about,
//! and the run's new state. It does no IO, has no async and imports nothing above `plan`, so
//! every route, retry, gate, cancel and compensation is unit-tested as a table, without a
//! database (see `tests.rs`). The engine loads the state, calls [`decide`] and writes the
//! decision in the same transaction; a new kind of event (dynamic work, a schedule) is a new
//! [`Event`] variant and, where it needs one, a new field of [`Decision`], not a change to
//! the protocol code. One attempt's lease (claim, redelivery, the fence of a completion,
//! release) is decided the same way by [`decide_lease`].

pub mod fact;
mod lease;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::plan::{self, RetryDecision};
use crate::spec::{Mode, Outcome, WorkflowSpec};
use crate::vocab::{
    AttemptStatus, CommandKind, CompensationStatus, Deadline, RunStatus, StepOutcome, StepState,
    Suspension, Timestamp,
};
use fact::{
    AttemptNode, CommandReceipt, Compensation, DynamicNode, DynamicState, DynamicWork, Fact,
    ManualGate, OpenWork, PlannedRunnable, WaitingNode,
};
pub use lease::{Holder, LeaseEvent, LeaseState, Stale, decide_lease};

/// Prefix of the step names of compensation runnables.
pub const COMPENSATE: &str = "compensate:";

/// The typed state of one run: what its row holds, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// The run's id (its text form, as stored).
    pub run_id: String,
    /// Where the run stands.
    pub status: RunStatus,
    /// The resolved payload.
    pub input: Map<String, Value>,
    /// Outputs merged in the order applied.
    pub context: Map<String, Value>,
    /// The state of every planned step.
    pub steps: BTreeMap<String, StepState>,
    /// The open manual gate.
    pub manual: Option<ManualGate>,
    /// The error of a failed run.
    pub error: Option<Value>,
    /// The saga compensation of a failed run.
    pub compensation: Option<Compensation>,
    /// Succeeded (non-compensation) attempts, newest first. Loaded only for events that may
    /// need them ([`Event::needs_history`]); empty otherwise.
    pub completed: Vec<CompletedStep>,
    /// The run's dynamic work.
    pub dynamic: DynamicState,
    /// The outputs of a work's succeeded nodes as (index, node id, output), loaded only when
    /// the event may plan the work's join ([`needs_work_outputs`]); empty otherwise.
    pub work_outputs: Vec<(u32, String, Value)>,
}

/// A step attempt that succeeded, for compensation.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedStep {
    /// The step.
    pub step: String,
    /// Its runnable key.
    pub runnable_key: String,
    /// Its input.
    pub input: Value,
    /// Its output (`null` when not decodable).
    pub output: Value,
}

/// The attempt an outcome belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRef {
    /// `<run_id>:<step>:<attempt>`.
    pub runnable_key: String,
    /// The step (or `compensate:<step>`).
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The attempt's input (a retry reuses it).
    pub input: Map<String, Value>,
    /// The dynamic node it runs, if any.
    pub node: Option<AttemptNode>,
}

/// What resolves a manual gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAction {
    /// `resume` of a pause.
    Resume,
    /// `approve` of an approval.
    Approve,
    /// `reject` of an approval.
    Reject,
}

impl GateAction {
    /// The action as journaled in `manual_step_resolved`.
    pub fn journaled(self) -> &'static str {
        match self {
            Self::Resume => "resumed",
            Self::Approve => "approved",
            Self::Reject => "rejected",
        }
    }

    fn fits(self, kind: Suspension) -> bool {
        matches!(
            (self, kind),
            (Self::Resume, Suspension::Pause)
                | (Self::Approve | Self::Reject, Suspension::Approval)
        )
    }
}

/// A control command on a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// End the run as cancelled.
    Cancel,
    /// Resolve the open gate; `result` becomes the gate step's output.
    Resolve {
        /// Resume, approve or reject.
        action: GateAction,
        /// The decision record (actor, comment, time...).
        result: Map<String, Value>,
    },
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The run was created: journal the command and the start, plan the entry steps.
    Started {
        /// The start command's receipt.
        receipt: CommandReceipt,
        /// The `run_started` fact.
        started: Box<Fact>,
    },
    /// An attempt's recorded outcome is applied.
    Recorded {
        /// The attempt.
        attempt: AttemptRef,
        /// Its outcome.
        outcome: StepOutcome,
    },
    /// Dynamic work was added (validated by the engine): journal it and, when scheduled,
    /// plan its nodes.
    Work {
        /// The work.
        work: Box<DynamicWork>,
    },
    /// A control command arrived.
    Command {
        /// Its receipt, journaled first.
        receipt: CommandReceipt,
        /// The command.
        command: Command,
    },
}

impl Event {
    /// Whether deciding needs [`RunState::completed`] (the succeeded attempts): a failure
    /// may start compensation, and a compensation's outcome plans the next one.
    pub fn needs_history(&self) -> bool {
        match self {
            Self::Recorded { attempt, outcome } => {
                matches!(outcome, StepOutcome::Failed(_)) || attempt.step.starts_with(COMPENSATE)
            }
            _ => false,
        }
    }
}

/// The key of the work whose join `event` may plan (its last pending node succeeding): the
/// engine then loads the work's node outputs into [`RunState::work_outputs`].
pub fn needs_work_outputs<'a>(state: &RunState, event: &'a Event) -> Option<&'a str> {
    let Event::Recorded {
        attempt,
        outcome: StepOutcome::Succeeded { .. },
    } = event
    else {
        return None;
    };
    let node = attempt.node.as_ref().filter(|n| !n.join)?;
    state
        .dynamic
        .open
        .iter()
        .any(|w| w.key == node.work && w.pending == 1 && w.join.is_some())
        .then_some(node.work.as_str())
}

/// Why a command cannot apply to the run as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The run ended, or has no open gate for this command.
    InvalidTransition {
        /// The run's status.
        status: RunStatus,
    },
    /// The open gate is of another kind (a resume of an approval, say).
    WrongManualStep {
        /// The gate step.
        step: String,
        /// Its kind.
        kind: Suspension,
    },
}

/// What an event implies: written by the engine in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The run's state after the event.
    pub state: RunState,
    /// Facts to append, in order. `runnables_planned` among them lists [`Self::planned`].
    pub facts: Vec<Fact>,
    /// Attempts to insert (scheduled from their visible time).
    pub planned: Vec<PlannedRunnable>,
    /// Index in [`Self::facts`] of the `runnables_planned` fact (for attempt sequence numbers).
    pub planned_at: usize,
    /// The new status of the event's attempt ([`Event::Recorded`]).
    pub attempt_status: Option<AttemptStatus>,
    /// Close every open (scheduled or claimed) attempt of the run as cancelled, before the
    /// planned attempts are inserted.
    pub close_open_attempts: bool,
}

/// Decides what `event` does to a run in `state` whose pinned spec is `spec` (`None` when the
/// definition is missing or corrupt: the run can then only end).
///
/// # Errors
///
/// A [`Refusal`] when a command does not apply to the run as it stands.
pub fn decide(
    state: &RunState,
    spec: Option<&WorkflowSpec>,
    event: Event,
    now: Timestamp,
) -> Result<Decision, Refusal> {
    let mut d = Decider::new(state, spec, now);
    match event {
        Event::Started { receipt, started } => {
            d.facts.push(Fact::CommandReceived { command: receipt });
            d.facts.push(*started);
            d.plan_entry();
        }
        Event::Recorded { attempt, outcome } => d.apply(&attempt, outcome),
        Event::Work { work } => {
            if state.status.is_terminal() {
                return Err(Refusal::InvalidTransition {
                    status: state.status,
                });
            }
            d.add_work(*work);
        }
        Event::Command { receipt, command } => {
            if state.status.is_terminal() {
                return Err(Refusal::InvalidTransition {
                    status: state.status,
                });
            }
            match command {
                Command::Cancel => {
                    d.facts.push(Fact::CommandReceived { command: receipt });
                    d.end(RunStatus::Cancelled);
                }
                Command::Resolve { action, result } => {
                    let Some(gate) = d.state.manual.clone() else {
                        return Err(Refusal::InvalidTransition {
                            status: state.status,
                        });
                    };
                    if !action.fits(gate.kind) {
                        return Err(Refusal::WrongManualStep {
                            step: gate.step,
                            kind: gate.kind,
                        });
                    }
                    debug_assert!(matches!(
                        receipt.command,
                        CommandKind::Resume | CommandKind::Approve | CommandKind::Reject
                    ));
                    d.facts.push(Fact::CommandReceived { command: receipt });
                    d.resolve_gate(&gate, action, result);
                }
            }
        }
    }
    Ok(d.finish())
}

/// The replay guard: the steps of a run that completed (succeeded, or recorded as a success
/// but not yet applied) and are irreversible or not compensatable, in first-seen order.
/// Replaying the run repeats their effects, so a replay needs explicit approval when this is
/// not empty.
/// Dynamic nodes need review unless their work allowed replay.
pub fn replay_review<'a>(
    spec: &WorkflowSpec,
    attempts: impl IntoIterator<
        Item = (
            &'a str,
            AttemptStatus,
            Option<&'a StepOutcome>,
            Option<&'a AttemptNode>,
        ),
    >,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (step, status, outcome, node) in attempts {
        let completed = status == AttemptStatus::Succeeded
            || (status == AttemptStatus::Recorded
                && matches!(outcome, Some(StepOutcome::Succeeded { .. })));
        let review = match node {
            Some(n) => !n.allow_replay,
            None => spec
                .step(step)
                .is_some_and(crate::spec::StepSpec::needs_replay_review),
        };
        if completed && review && !out.iter().any(|s| s == step) {
            out.push(step.to_owned());
        }
    }
    out
}

/// The error a run fails with when an attempt failed for good.
fn failure_of(attempt: &AttemptRef, error: &crate::vocab::StepError) -> Value {
    let mut failure = json!({
        "step": attempt.step,
        "runnable_key": attempt.runnable_key,
        "attempt": attempt.attempt,
        "kind": error.kind,
        "code": error.code,
        "message": error.message,
        "retryable": error.retryable,
    });
    if let Some(details) = &error.details {
        failure["details"] = Value::Object(details.clone());
    }
    failure
}

/// The working state of one decision.
struct Decider<'a> {
    spec: Option<&'a WorkflowSpec>,
    now: Timestamp,
    state: RunState,
    new_gate: bool,
    terminal: Option<RunStatus>,
    facts: Vec<Fact>,
    planned: Vec<PlannedRunnable>,
    compensation_changed: bool,
    close_open: bool,
    attempt_status: Option<AttemptStatus>,
}

impl<'a> Decider<'a> {
    fn new(state: &RunState, spec: Option<&'a WorkflowSpec>, now: Timestamp) -> Self {
        Self {
            spec,
            now,
            state: state.clone(),
            new_gate: false,
            terminal: None,
            facts: Vec::new(),
            planned: Vec::new(),
            compensation_changed: false,
            close_open: false,
            attempt_status: None,
        }
    }

    fn known(&self) -> Value {
        plan::knowledge(&self.state.input, &self.state.context)
    }

    /// Plans the entry step (transition mode) or every root (dependency mode).
    fn plan_entry(&mut self) {
        let Some(spec) = self.spec else { return };
        let entries: Vec<String> = spec.entry_steps().iter().map(|s| s.name.clone()).collect();
        for step in entries {
            self.plan_step(&step, self.now, 1, None);
        }
    }

    fn plan_step(
        &mut self,
        name: &str,
        visible_at: Timestamp,
        attempt: u32,
        input: Option<Map<String, Value>>,
    ) {
        let Some(spec) = self.spec else { return };
        let Some(step) = spec.step(name) else {
            self.fail_run(json!({"code": "definition_unavailable", "message": format!("step {name} is not in the pinned definition")}));
            return;
        };
        let input = match input {
            Some(i) => i,
            None => match plan::map_input(step, &self.known()) {
                Ok(i) => i,
                Err(missing) => {
                    self.fail_run(json!({
                        "code": "missing_input_path",
                        "message": format!("input path {} of step {} does not resolve: {} is missing", missing.path.join("."), missing.step, missing.missing_at),
                        "retryable": false,
                        "step": missing.step,
                        "target": missing.target,
                        "path": missing.path,
                        "missing_at": missing.missing_at,
                    }));
                    return;
                }
            },
        };
        self.state.steps.insert(name.to_owned(), StepState::Planned);
        let deadline = step
            .deadline
            .as_ref()
            .filter(|_| !step.is_manual())
            .map(|d| Deadline::plan(d, visible_at));
        self.planned.push(PlannedRunnable {
            runnable_key: format!("{}:{}:{}", self.state.run_id, name, attempt),
            step: name.to_owned(),
            attempt,
            visible_at,
            input,
            deadline,
            node: None,
        });
    }

    fn end(&mut self, status: RunStatus) {
        if status == RunStatus::Completed && !self.state.dynamic.open.is_empty() {
            // The run's own steps are done; it completes when its dynamic work finishes.
            self.state.dynamic.completion_deferred = true;
            return;
        }
        if self.terminal.is_none() {
            self.terminal = Some(status);
            self.state.manual = None;
        }
    }

    fn fail_run(&mut self, error: Value) {
        if self.terminal.is_none() {
            self.state.error = Some(error);
        }
        self.end(RunStatus::Failed);
    }

    fn applied(
        &mut self,
        attempt: &AttemptRef,
        status: AttemptStatus,
        step_state: Option<StepState>,
        context_patch: Map<String, Value>,
        route: Option<plan::Route>,
    ) {
        self.attempt_status = Some(status);
        self.facts.push(Fact::RunnableApplied {
            runnable_key: attempt.runnable_key.clone(),
            step: attempt.step.clone(),
            attempt_status: status,
            step_state,
            context_patch,
            route,
        });
    }

    /// Applies `outcome` to the run and settles `attempt`.
    fn apply(&mut self, attempt: &AttemptRef, outcome: StepOutcome) {
        let Some(spec) = self.spec else {
            // Without its definition the run cannot go on: fail it closed.
            self.attempt_status = Some(AttemptStatus::Failed);
            self.fail_run(json!({
                "code": "definition_unavailable",
                "message": "the run's pinned workflow definition is missing or corrupt",
                "step": attempt.step,
            }));
            return;
        };
        if let Some(origin) = attempt.step.strip_prefix(COMPENSATE) {
            self.apply_compensation(attempt, origin, outcome);
            return;
        }
        if let Some(node) = &attempt.node {
            self.apply_node(attempt, node, outcome);
            return;
        }
        let Some(step) = spec.step(&attempt.step) else {
            self.attempt_status = Some(AttemptStatus::Failed);
            self.fail_run(json!({"code": "definition_unavailable", "message": format!("step {} is not in the pinned definition", attempt.step)}));
            return;
        };
        let name = step.name.as_str();
        match outcome {
            StepOutcome::Succeeded {
                output,
                continue_after_ms,
            } => {
                let patch = plan::shape_output(step, output);
                for (k, v) in &patch {
                    self.state.context.insert(k.clone(), v.clone());
                }
                let visible = self.now.plus_millis(continue_after_ms.unwrap_or(0));
                let mut held = false;
                for work in &mut self.state.dynamic.open {
                    if work.holds_origin && work.origin_step == name {
                        work.origin_done = Some(visible);
                        held = true;
                    }
                }
                if held {
                    // The step's own dynamic work is still running: its successors wait.
                    self.applied(attempt, AttemptStatus::Succeeded, None, patch, None);
                    return;
                }
                self.state
                    .steps
                    .insert(name.to_owned(), StepState::Completed);
                let route = self.route_success(name, visible);
                self.applied(
                    attempt,
                    AttemptStatus::Succeeded,
                    Some(StepState::Completed),
                    patch,
                    route,
                );
            }
            StepOutcome::Failed(error) => {
                let decision = plan::retry_decision(
                    step.retry.as_ref(),
                    attempt.attempt,
                    error.retryable,
                    error.retry_after_ms,
                    &attempt.runnable_key,
                );
                if let RetryDecision::Retry { delay_ms } = decision {
                    self.plan_step(
                        name,
                        self.now.plus_millis(delay_ms),
                        attempt.attempt.saturating_add(1),
                        Some(attempt.input.clone()),
                    );
                    self.applied(attempt, AttemptStatus::Failed, None, Map::new(), None);
                    return;
                }
                self.state.steps.insert(name.to_owned(), StepState::Failed);
                let failure = failure_of(attempt, &error);
                let route = match spec.mode() {
                    Mode::Transitions => {
                        plan::select_route(spec, name, Outcome::Error, &self.known())
                    }
                    Mode::Dependencies => None,
                };
                match &route {
                    Some(r) => match &r.to {
                        Some(to) => self.plan_step(to, self.now, 1, None),
                        None => self.end(RunStatus::Completed),
                    },
                    None => self.fail_or_compensate(failure),
                }
                self.applied(
                    attempt,
                    AttemptStatus::Failed,
                    Some(StepState::Failed),
                    Map::new(),
                    route,
                );
            }
            StepOutcome::Suspended(kind) => {
                let target =
                    |on| plan::select_route(spec, name, on, &self.known()).and_then(|r| r.to);
                let gate = ManualGate {
                    step: name.to_owned(),
                    kind,
                    ok_target: target(Outcome::Ok),
                    error_target: match kind {
                        Suspension::Approval => target(Outcome::Error),
                        Suspension::Pause => None,
                    },
                    output_key: step.output.clone(),
                    paused_at: self.now,
                    deadline: step.deadline.as_ref().map(|d| Deadline::plan(d, self.now)),
                };
                self.applied(attempt, AttemptStatus::Suspended, None, Map::new(), None);
                self.state.manual = Some(gate);
                self.new_gate = true;
            }
        }
    }

    /// Plans what follows the success of step `name` (completed in the state): its route in
    /// transition mode, the steps it made ready in dependency mode; ends the run when
    /// nothing follows.
    fn route_success(&mut self, name: &str, visible: Timestamp) -> Option<plan::Route> {
        let spec = self.spec?;
        match spec.mode() {
            Mode::Transitions => {
                match plan::select_route(spec, name, Outcome::Ok, &self.known()) {
                    Some(r) => {
                        match &r.to {
                            Some(to) => self.plan_step(to, visible, 1, None),
                            None => self.end(RunStatus::Completed),
                        }
                        Some(r)
                    }
                    // A step without ok routes is a final step: the run completes.
                    None => {
                        self.end(RunStatus::Completed);
                        None
                    }
                }
            }
            Mode::Dependencies => {
                let ready: Vec<String> = plan::ready_steps(spec, &self.state.steps)
                    .iter()
                    .map(|s| s.name.clone())
                    .collect();
                for next in &ready {
                    self.plan_step(next, visible, 1, None);
                }
                let done = spec
                    .steps
                    .iter()
                    .all(|s| self.state.steps.get(&s.name) == Some(&StepState::Completed));
                if done {
                    self.end(RunStatus::Completed);
                }
                None
            }
        }
    }

    /// Journals a work and, when it is scheduled, plans every node that waits for no other.
    fn add_work(&mut self, work: DynamicWork) {
        if !work.scheduled {
            self.facts.push(Fact::DynamicWorkRecorded {
                work: Box::new(work),
            });
            return;
        }
        let ids: std::collections::HashSet<&str> =
            work.nodes.iter().map(|n| n.id.as_str()).collect();
        let mut open = OpenWork {
            key: work.key.clone(),
            origin_step: work.origin.step.clone(),
            holds_origin: work.from_action,
            allow_replay: work.allow_replay,
            pending: u32::try_from(work.nodes.len()).unwrap_or(u32::MAX),
            waiting: Vec::new(),
            join: work.join.clone(),
            join_running: false,
            origin_done: None,
        };
        let mut ready = Vec::new();
        for (i, node) in work.nodes.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let mut after: Vec<String> = Vec::new();
            for e in &work.edges {
                if e.to == node.id && ids.contains(e.from.as_str()) && !after.contains(&e.from) {
                    after.push(e.from.clone());
                }
            }
            if after.is_empty() {
                ready.push((index, node.clone()));
            } else {
                open.waiting.push(WaitingNode {
                    index,
                    node: node.clone(),
                    after,
                });
            }
        }
        for (index, node) in ready {
            self.plan_node(&open, index, false, &node, 1, self.now);
        }
        self.state.dynamic.open.push(open);
        self.facts.push(Fact::DynamicWorkRecorded {
            work: Box::new(work),
        });
    }

    /// Plans attempt `attempt` of a dynamic node.
    fn plan_node(
        &mut self,
        work: &OpenWork,
        index: u32,
        join: bool,
        node: &DynamicNode,
        attempt: u32,
        visible_at: Timestamp,
    ) {
        let meta = AttemptNode {
            work: work.key.clone(),
            index,
            join,
            action: node.action.clone(),
            digest: node.digest.clone(),
            retry: node.retry.clone(),
            output: node.output.clone(),
            allow_replay: work.allow_replay,
        };
        self.plan_node_attempt(&node.id, meta, attempt, visible_at, node.input.clone());
    }

    fn plan_node_attempt(
        &mut self,
        id: &str,
        node: AttemptNode,
        attempt: u32,
        visible_at: Timestamp,
        input: Map<String, Value>,
    ) {
        self.planned.push(PlannedRunnable {
            runnable_key: format!("{}:{}:{}", self.state.run_id, id, attempt),
            step: id.to_owned(),
            attempt,
            visible_at,
            input,
            deadline: None,
            node: Some(node),
        });
    }

    /// Applies the outcome of a dynamic node's attempt.
    fn apply_node(&mut self, attempt: &AttemptRef, node: &AttemptNode, outcome: StepOutcome) {
        let id = attempt.step.as_str();
        match outcome {
            StepOutcome::Succeeded { output, .. } => {
                let mut patch = Map::new();
                if let Some(key) = &node.output {
                    patch.insert(key.clone(), Value::Object(output.clone()));
                    self.state
                        .context
                        .insert(key.clone(), Value::Object(output.clone()));
                }
                self.applied(attempt, AttemptStatus::Succeeded, None, patch, None);
                self.node_succeeded(id, node, output);
            }
            StepOutcome::Failed(error) => {
                let decision = plan::retry_decision(
                    node.retry.as_ref(),
                    attempt.attempt,
                    error.retryable,
                    error.retry_after_ms,
                    &attempt.runnable_key,
                );
                if let RetryDecision::Retry { delay_ms } = decision {
                    self.plan_node_attempt(
                        id,
                        node.clone(),
                        attempt.attempt.saturating_add(1),
                        self.now.plus_millis(delay_ms),
                        attempt.input.clone(),
                    );
                    self.applied(attempt, AttemptStatus::Failed, None, Map::new(), None);
                    return;
                }
                let mut failure = failure_of(attempt, &error);
                failure["dynamic_work"] = json!(node.work);
                self.applied(attempt, AttemptStatus::Failed, None, Map::new(), None);
                self.fail_or_compensate(failure);
            }
            StepOutcome::Suspended(_) => {
                self.applied(attempt, AttemptStatus::Failed, None, Map::new(), None);
                self.fail_run(json!({
                    "step": id,
                    "runnable_key": attempt.runnable_key,
                    "dynamic_work": node.work,
                    "code": "invalid_outcome",
                    "message": "a dynamic node cannot pause the run",
                    "retryable": false,
                }));
            }
        }
    }

    /// A node succeeded: release the nodes waiting for it, plan the join after the last one,
    /// finish the work after its join.
    fn node_succeeded(&mut self, id: &str, node: &AttemptNode, output: Map<String, Value>) {
        let Some(pos) = self
            .state
            .dynamic
            .open
            .iter()
            .position(|w| w.key == node.work)
        else {
            return;
        };
        if node.join {
            self.state.dynamic.open[pos].join_running = false;
            self.finish_work(pos);
            return;
        }
        let mut work = self.state.dynamic.open[pos].clone();
        work.pending = work.pending.saturating_sub(1);
        let mut ready = Vec::new();
        work.waiting.retain_mut(|w| {
            w.after.retain(|a| a != id);
            if w.after.is_empty() {
                ready.push((w.index, w.node.clone()));
                false
            } else {
                true
            }
        });
        for (index, n) in &ready {
            self.plan_node(&work, *index, false, n, 1, self.now);
        }
        let finished = work.pending == 0;
        let join = if finished { work.join.take() } else { None };
        if let Some(join) = &join {
            let mut outputs = std::mem::take(&mut self.state.work_outputs);
            outputs.retain(|(_, n, _)| n != id);
            outputs.push((node.index, id.to_owned(), Value::Object(output)));
            outputs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let results: Vec<Value> = outputs
                .into_iter()
                .map(|(_, id, output)| json!({"id": id, "output": output}))
                .collect();
            let mut with_results = join.clone();
            with_results
                .input
                .insert("results".into(), Value::Array(results));
            work.join_running = true;
            self.plan_node(&work, u32::MAX, true, &with_results, 1, self.now);
        }
        self.state.dynamic.open[pos] = work;
        if finished && join.is_none() {
            self.finish_work(pos);
        }
    }

    /// A work finished: journal it, let its origin step go on if it waited, and complete
    /// the run if it only waited for its dynamic work.
    fn finish_work(&mut self, pos: usize) {
        let work = self.state.dynamic.open.remove(pos);
        let mut route = None;
        let mut origin_completed = false;
        let others = self
            .state
            .dynamic
            .open
            .iter()
            .any(|w| w.origin_step == work.origin_step && w.origin_done.is_some());
        if let Some(visible) = work.origin_done.filter(|_| !others) {
            origin_completed = true;
            self.state
                .steps
                .insert(work.origin_step.clone(), StepState::Completed);
            route = self.route_success(&work.origin_step, visible.max(self.now));
        }
        self.facts.push(Fact::DynamicWorkCompleted {
            key: work.key,
            origin_step: work.origin_step,
            origin_completed,
            route,
        });
        if self.state.dynamic.open.is_empty() && self.state.dynamic.completion_deferred {
            self.state.dynamic.completion_deferred = false;
            self.end(RunStatus::Completed);
        }
    }

    /// Resolves the open gate: the decision becomes the step's output, and the run goes to the
    /// target captured when it paused.
    fn resolve_gate(&mut self, gate: &ManualGate, action: GateAction, result: Map<String, Value>) {
        let patch = match &gate.output_key {
            Some(key) => Map::from_iter([(key.clone(), Value::Object(result))]),
            None => result,
        };
        for (k, v) in &patch {
            self.state.context.insert(k.clone(), v.clone());
        }
        let rejected = action == GateAction::Reject;
        self.state.steps.insert(
            gate.step.clone(),
            if rejected {
                StepState::Failed
            } else {
                StepState::Completed
            },
        );
        self.state.manual = None;
        let target = if rejected {
            gate.error_target.clone()
        } else {
            gate.ok_target.clone()
        };
        match &target {
            Some(to) => self.plan_step(to, self.now, 1, None),
            None => self.end(RunStatus::Completed),
        }
        self.facts.push(Fact::ManualStepResolved {
            step: gate.step.clone(),
            action: action.journaled().to_owned(),
            context_patch: patch,
            target,
        });
    }

    /// A step failed for good with no error route: undo the completed steps that declare a
    /// compensation, newest first, or fail the run when there are none.
    fn fail_or_compensate(&mut self, failure: Value) {
        let Some(spec) = self.spec else {
            self.fail_run(failure);
            return;
        };
        let mut pending: Vec<String> = Vec::new();
        for c in &self.state.completed {
            let declares = spec.step(&c.step).is_some_and(|s| s.compensate.is_some());
            if declares && !pending.contains(&c.step) {
                pending.push(c.step.clone());
            }
        }
        if pending.is_empty() {
            self.fail_run(failure);
            return;
        }
        self.state.compensation = Some(Compensation {
            status: CompensationStatus::Compensating,
            failure,
            pending,
            compensated: Vec::new(),
            not_compensated: Vec::new(),
            failed: None,
        });
        self.compensation_changed = true;
        self.close_open = true;
        self.plan_next_compensation();
    }

    fn plan_next_compensation(&mut self) {
        let Some(comp) = &self.state.compensation else {
            return;
        };
        let Some(origin) = comp.pending.first().cloned() else {
            let failure = comp.failure.clone();
            if let Some(comp) = &mut self.state.compensation {
                comp.status = CompensationStatus::Compensated;
            }
            self.compensation_changed = true;
            self.fail_run(failure);
            return;
        };
        let source = self.state.completed.iter().find(|c| c.step == origin);
        let input = json!({
            "source": {"run_id": self.state.run_id, "failure": comp.failure},
            "step": {
                "name": origin,
                "runnable_key": source.map(|c| c.runnable_key.clone()),
                "input": source.map_or(Value::Null, |c| c.input.clone()),
                "output": source.map_or(Value::Null, |c| c.output.clone()),
            },
        });
        let Value::Object(input) = input else { return };
        self.plan_compensation(&origin, 1, input, self.now);
    }

    fn plan_compensation(
        &mut self,
        origin: &str,
        attempt: u32,
        input: Map<String, Value>,
        visible_at: Timestamp,
    ) {
        let name = format!("{COMPENSATE}{origin}");
        self.state.steps.insert(name.clone(), StepState::Planned);
        self.planned.push(PlannedRunnable {
            runnable_key: format!("{}:{}:{}", self.state.run_id, name, attempt),
            step: name,
            attempt,
            visible_at,
            input,
            deadline: None,
            node: None,
        });
    }

    fn apply_compensation(&mut self, attempt: &AttemptRef, origin: &str, outcome: StepOutcome) {
        let (status, state) = match outcome {
            StepOutcome::Succeeded { .. } => {
                if let Some(c) = &mut self.state.compensation {
                    c.pending.retain(|p| p != origin);
                    c.compensated.push(origin.to_owned());
                }
                self.compensation_changed = true;
                self.plan_next_compensation();
                (AttemptStatus::Succeeded, Some(StepState::Completed))
            }
            StepOutcome::Failed(error) => {
                let policy = self
                    .spec
                    .and_then(|s| s.step(origin))
                    .and_then(|s| s.compensate_retry.clone());
                match plan::retry_decision(
                    policy.as_ref(),
                    attempt.attempt,
                    error.retryable,
                    error.retry_after_ms,
                    &attempt.runnable_key,
                ) {
                    RetryDecision::Retry { delay_ms } => {
                        self.plan_compensation(
                            origin,
                            attempt.attempt.saturating_add(1),
                            attempt.input.clone(),
                            self.now.plus_millis(delay_ms),
                        );
                        (AttemptStatus::Failed, None)
                    }
                    _ => {
                        let mut failure = Value::Null;
                        if let Some(c) = &mut self.state.compensation {
                            c.status = CompensationStatus::PartiallyCompensated;
                            c.failed = Some(origin.to_owned());
                            c.pending.retain(|p| p != origin);
                            c.not_compensated = std::mem::take(&mut c.pending);
                            failure = c.failure.clone();
                        }
                        self.compensation_changed = true;
                        self.fail_run(failure);
                        (AttemptStatus::Failed, Some(StepState::Failed))
                    }
                }
            }
            StepOutcome::Suspended(_) => (AttemptStatus::Failed, Some(StepState::Failed)),
        };
        if let Some(state) = state {
            self.state.steps.insert(attempt.step.clone(), state);
        }
        self.applied(attempt, status, state, Map::new(), None);
    }

    /// The decision: planned work dropped if the run ended, the closing facts, the status.
    fn finish(mut self) -> Decision {
        if self.terminal.is_some() {
            for p in &self.planned {
                if p.attempt == 1 {
                    self.state.steps.remove(&p.step);
                }
            }
            self.planned.clear();
            self.close_open = true;
            self.state.dynamic.open.clear();
            self.state.dynamic.completion_deferred = false;
        }
        let planned_at = self.facts.len();
        if !self.planned.is_empty() {
            self.facts.push(Fact::RunnablesPlanned {
                runnables: self.planned.clone(),
            });
        }
        if self.compensation_changed
            && let Some(comp) = &self.state.compensation
        {
            self.facts.push(Fact::CompensationUpdated {
                state: comp.clone(),
            });
        }
        if self.new_gate
            && let Some(gate) = &self.state.manual
        {
            self.facts
                .push(Fact::ManualStepPaused { gate: gate.clone() });
        }
        self.state.status = match self.terminal {
            Some(terminal) => {
                self.facts.push(Fact::RunTerminal {
                    status: terminal,
                    error: self.state.error.clone(),
                });
                terminal
            }
            None if self.state.manual.is_some() => RunStatus::Paused,
            None if self.state.steps.values().any(|s| *s == StepState::Planned)
                || !self.state.dynamic.open.is_empty() =>
            {
                RunStatus::Running
            }
            None => RunStatus::Idle,
        };
        Decision {
            state: self.state,
            facts: self.facts,
            planned: self.planned,
            planned_at,
            attempt_status: self.attempt_status,
            close_open_attempts: self.close_open,
        }
    }
}
