//! Applying a recorded outcome to a run: the pure part (what to plan, route, retry, end) and
//! writing its result in the caller's transaction.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Definition, Result, now_us, planned_row, to_json};
use crate::actions::{StepOutcome, Suspension};
use crate::inspect::Deadline;
use crate::journal::{CommandReceipt, Compensation, Fact, ManualGate, PlannedRunnable, RunStatus};
use crate::plan::{self, RetryDecision, StepState};
use crate::spec::{Mode, Outcome};
use crate::store::{AttemptRow, RunRow, StoreTx};
use crate::vocab::Timestamp;
use crate::vocab::{AttemptStatus, CompensationStatus};

pub(super) struct Applier<'a> {
    def: Option<&'a Definition>,
    now: Timestamp,
    run_id: String,
    input: Map<String, Value>,
    context: Map<String, Value>,
    steps: BTreeMap<String, StepState>,
    manual: Option<ManualGate>,
    new_gate: bool,
    error: Option<Value>,
    terminal: Option<RunStatus>,
    pub(super) facts: Vec<Fact>,
    planned: Vec<PlannedRunnable>,
    compensation: Option<Compensation>,
    compensation_changed: bool,
    cancel_open: bool,
    /// Succeeded attempts of the run, newest first (loaded when an outcome may need them).
    pub(super) completed: Vec<CompletedStep>,
}

/// A step attempt that succeeded, for compensation.
#[derive(Debug, Clone)]
pub(super) struct CompletedStep {
    pub(super) step: String,
    pub(super) runnable_key: String,
    pub(super) input: Value,
    pub(super) output: Value,
}

/// Prefix of the step names of compensation runnables.
pub(super) const COMPENSATE: &str = "compensate:";

fn parse<T: serde::de::DeserializeOwned>(run: &RunRow, what: &str, text: &str) -> Result<T> {
    super::error::parse_stored(what, &run.run_id, text)
}

impl<'a> Applier<'a> {
    pub(super) fn new(def: &'a Definition, run: &RunRow, now: Timestamp) -> Result<Self> {
        let mut a = Self::orphan(run, now)?;
        a.def = Some(def);
        Ok(a)
    }

    /// An applier without a definition: it can only end the run.
    pub(super) fn orphan(run: &RunRow, now: Timestamp) -> Result<Self> {
        Ok(Self {
            def: None,
            now,
            run_id: run.run_id.clone(),
            input: parse(run, "input", &run.input)?,
            context: parse(run, "context", &run.context)?,
            steps: parse(run, "steps", &run.steps)?,
            manual: run
                .manual
                .as_deref()
                .map(|m| parse(run, "manual gate", m))
                .transpose()?,
            new_gate: false,
            error: run
                .error
                .as_deref()
                .map(|e| parse(run, "error", e))
                .transpose()?,
            terminal: None,
            facts: Vec::new(),
            planned: Vec::new(),
            compensation: run
                .compensation
                .as_deref()
                .map(|c| parse(run, "compensation", c))
                .transpose()?,
            compensation_changed: false,
            cancel_open: false,
            completed: Vec::new(),
        })
    }

    fn known(&self) -> Value {
        plan::knowledge(&self.input, &self.context)
    }

    /// Plans the entry step (transition mode) or every root (dependency mode).
    pub(super) fn plan_entry(&mut self) {
        let Some(def) = self.def else { return };
        let entries: Vec<String> = def
            .spec
            .entry_steps()
            .iter()
            .map(|s| s.name.clone())
            .collect();
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
        let Some(def) = self.def else { return };
        let Some(step) = def.spec.step(name) else {
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
        self.steps.insert(name.to_owned(), StepState::Planned);
        let deadline = step
            .deadline
            .as_ref()
            .filter(|_| !step.is_manual())
            .map(|d| Deadline::plan(d, visible_at));
        self.planned.push(PlannedRunnable {
            runnable_key: format!("{}:{}:{}", self.run_id, name, attempt),
            step: name.to_owned(),
            attempt,
            visible_at,
            input,
            deadline,
        });
    }

    pub(super) fn fail_run(&mut self, error: Value) {
        if self.terminal.is_none() {
            self.terminal = Some(RunStatus::Failed);
            self.error = Some(error);
            self.manual = None;
        }
    }

    fn complete_run(&mut self) {
        if self.terminal.is_none() {
            self.terminal = Some(RunStatus::Completed);
            self.manual = None;
        }
    }

    /// Applies `outcome` to the run and settles `attempt`.
    pub(super) fn apply(&mut self, attempt: &mut AttemptRow, outcome: StepOutcome) {
        attempt.due_at = None;
        attempt.updated_at = now_us(self.now);
        let Some(def) = self.def else { return };
        if let Some(origin) = attempt.step.strip_prefix(COMPENSATE) {
            let origin = origin.to_owned();
            self.apply_compensation(attempt, &origin, outcome);
            return;
        }
        let Some(step) = def.spec.step(&attempt.step) else {
            attempt.status = AttemptStatus::Failed;
            self.fail_run(json!({"code": "definition_unavailable", "message": format!("step {} is not in the pinned definition", attempt.step)}));
            return;
        };
        let step_name = step.name.clone();
        let attempt_no = u32::try_from(attempt.attempt).unwrap_or(u32::MAX);
        match outcome {
            StepOutcome::Succeeded {
                output,
                continue_after_ms,
            } => {
                attempt.status = AttemptStatus::Succeeded;
                let patch = plan::shape_output(step, output);
                for (k, v) in &patch {
                    self.context.insert(k.clone(), v.clone());
                }
                self.steps.insert(step_name.clone(), StepState::Completed);
                let visible = self.now.plus_millis(continue_after_ms.unwrap_or(0));
                let mut route = None;
                match def.spec.mode() {
                    Mode::Transitions => {
                        match plan::select_route(&def.spec, &step_name, Outcome::Ok, &self.known())
                        {
                            Some(r) => {
                                match &r.to {
                                    Some(to) => self.plan_step(to, visible, 1, None),
                                    None => self.complete_run(),
                                }
                                route = Some(r);
                            }
                            // A step without ok routes is a final step: the run completes.
                            None => self.complete_run(),
                        }
                    }
                    Mode::Dependencies => {
                        let ready: Vec<String> = plan::ready_steps(&def.spec, &self.steps)
                            .iter()
                            .map(|s| s.name.clone())
                            .collect();
                        for name in &ready {
                            self.plan_step(name, visible, 1, None);
                        }
                        let done = def
                            .spec
                            .steps
                            .iter()
                            .all(|s| self.steps.get(&s.name) == Some(&StepState::Completed));
                        if done {
                            self.complete_run();
                        }
                    }
                }
                self.facts.push(Fact::RunnableApplied {
                    runnable_key: attempt.runnable_key.clone(),
                    step: step_name,
                    attempt_status: AttemptStatus::Succeeded,
                    step_state: Some(StepState::Completed),
                    context_patch: patch,
                    route,
                });
            }
            StepOutcome::Failed(error) => {
                attempt.status = AttemptStatus::Failed;
                let decision = plan::retry_decision(
                    step.retry.as_ref(),
                    attempt_no,
                    error.retryable,
                    error.retry_after_ms,
                    &attempt.runnable_key,
                );
                if let RetryDecision::Retry { delay_ms } = decision {
                    let input: Map<String, Value> =
                        serde_json::from_str(&attempt.input).unwrap_or_default();
                    self.plan_step(
                        &step_name,
                        self.now.plus_millis(delay_ms),
                        attempt_no.saturating_add(1),
                        Some(input),
                    );
                    self.facts.push(Fact::RunnableApplied {
                        runnable_key: attempt.runnable_key.clone(),
                        step: step_name,
                        attempt_status: AttemptStatus::Failed,
                        step_state: None,
                        context_patch: Map::new(),
                        route: None,
                    });
                    return;
                }
                self.steps.insert(step_name.clone(), StepState::Failed);
                let mut failure = json!({
                    "step": step_name,
                    "runnable_key": attempt.runnable_key,
                    "attempt": attempt_no,
                    "kind": error.kind,
                    "code": error.code,
                    "message": error.message,
                    "retryable": error.retryable,
                });
                if let Some(details) = &error.details {
                    failure["details"] = Value::Object(details.clone());
                }
                let route = match def.spec.mode() {
                    Mode::Transitions => {
                        plan::select_route(&def.spec, &step_name, Outcome::Error, &self.known())
                    }
                    Mode::Dependencies => None,
                };
                match &route {
                    Some(r) => match &r.to {
                        Some(to) => self.plan_step(to, self.now, 1, None),
                        None => self.complete_run(),
                    },
                    None => self.fail_or_compensate(failure),
                }
                self.facts.push(Fact::RunnableApplied {
                    runnable_key: attempt.runnable_key.clone(),
                    step: step_name,
                    attempt_status: AttemptStatus::Failed,
                    step_state: Some(StepState::Failed),
                    context_patch: Map::new(),
                    route,
                });
            }
            StepOutcome::Suspended(kind) => {
                attempt.status = AttemptStatus::Suspended;
                let target = |on| {
                    plan::select_route(&def.spec, &step_name, on, &self.known()).and_then(|r| r.to)
                };
                let gate = ManualGate {
                    step: step_name.clone(),
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
                self.facts.push(Fact::RunnableApplied {
                    runnable_key: attempt.runnable_key.clone(),
                    step: step_name,
                    attempt_status: AttemptStatus::Suspended,
                    step_state: None,
                    context_patch: Map::new(),
                    route: None,
                });
                self.manual = Some(gate);
                self.new_gate = true;
            }
        }
    }

    /// Records a command receipt.
    pub(super) fn receive(&mut self, receipt: CommandReceipt) {
        self.facts.push(Fact::CommandReceived { command: receipt });
    }

    /// The open manual gate.
    pub(super) fn gate(&self) -> Option<&ManualGate> {
        self.manual.as_ref()
    }

    /// Ends the run as cancelled.
    pub(super) fn cancel(&mut self) {
        if self.terminal.is_none() {
            self.terminal = Some(RunStatus::Cancelled);
            self.manual = None;
        }
    }

    /// Resolves the open gate: the decision becomes the step's output, and the run goes to the
    /// target captured when it paused.
    pub(super) fn resolve_gate(
        &mut self,
        gate: &ManualGate,
        action: &str,
        result: Map<String, Value>,
    ) {
        let patch = match &gate.output_key {
            Some(key) => Map::from_iter([(key.clone(), Value::Object(result))]),
            None => result,
        };
        for (k, v) in &patch {
            self.context.insert(k.clone(), v.clone());
        }
        let rejected = action == "rejected";
        self.steps.insert(
            gate.step.clone(),
            if rejected {
                StepState::Failed
            } else {
                StepState::Completed
            },
        );
        self.manual = None;
        let target = if rejected {
            gate.error_target.clone()
        } else {
            gate.ok_target.clone()
        };
        match &target {
            Some(to) => self.plan_step(to, self.now, 1, None),
            None => self.complete_run(),
        }
        self.facts.push(Fact::ManualStepResolved {
            step: gate.step.clone(),
            action: action.to_owned(),
            context_patch: patch,
            target,
        });
    }

    /// A step failed for good with no error route: undo the completed steps that declare a
    /// compensation, newest first, or fail the run when there are none.
    fn fail_or_compensate(&mut self, failure: Value) {
        let Some(def) = self.def else {
            self.fail_run(failure);
            return;
        };
        let mut pending: Vec<String> = Vec::new();
        for c in &self.completed {
            let declares = def
                .spec
                .step(&c.step)
                .is_some_and(|s| s.compensate.is_some());
            if declares && !pending.contains(&c.step) {
                pending.push(c.step.clone());
            }
        }
        if pending.is_empty() {
            self.fail_run(failure);
            return;
        }
        self.compensation = Some(Compensation {
            status: CompensationStatus::Compensating,
            failure,
            pending,
            compensated: Vec::new(),
            not_compensated: Vec::new(),
            failed: None,
        });
        self.compensation_changed = true;
        self.cancel_open = true;
        self.plan_next_compensation();
    }

    fn plan_next_compensation(&mut self) {
        let Some(state) = &self.compensation else {
            return;
        };
        let Some(origin) = state.pending.first().cloned() else {
            let failure = state.failure.clone();
            if let Some(state) = &mut self.compensation {
                state.status = CompensationStatus::Compensated;
            }
            self.compensation_changed = true;
            self.fail_run(failure);
            return;
        };
        let source = self.completed.iter().find(|c| c.step == origin);
        let input = json!({
            "source": {"run_id": self.run_id, "failure": state.failure},
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
        self.steps.insert(name.clone(), StepState::Planned);
        self.planned.push(PlannedRunnable {
            runnable_key: format!("{}:{}:{}", self.run_id, name, attempt),
            step: name,
            attempt,
            visible_at,
            input,
            deadline: None,
        });
    }

    fn apply_compensation(&mut self, attempt: &mut AttemptRow, origin: &str, outcome: StepOutcome) {
        let attempt_no = u32::try_from(attempt.attempt).unwrap_or(u32::MAX);
        let (status, state) = match outcome {
            StepOutcome::Succeeded { .. } => {
                if let Some(c) = &mut self.compensation {
                    c.pending.retain(|p| p != origin);
                    c.compensated.push(origin.to_owned());
                }
                self.compensation_changed = true;
                self.plan_next_compensation();
                (AttemptStatus::Succeeded, Some(StepState::Completed))
            }
            StepOutcome::Failed(error) => {
                let policy = self
                    .def
                    .and_then(|d| d.spec.step(origin))
                    .and_then(|s| s.compensate_retry.clone());
                match plan::retry_decision(
                    policy.as_ref(),
                    attempt_no,
                    error.retryable,
                    error.retry_after_ms,
                    &attempt.runnable_key,
                ) {
                    RetryDecision::Retry { delay_ms } => {
                        let input: Map<String, Value> =
                            serde_json::from_str(&attempt.input).unwrap_or_default();
                        self.plan_compensation(
                            origin,
                            attempt_no.saturating_add(1),
                            input,
                            self.now.plus_millis(delay_ms),
                        );
                        (AttemptStatus::Failed, None)
                    }
                    _ => {
                        let mut failure = Value::Null;
                        if let Some(c) = &mut self.compensation {
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
        attempt.status = status;
        if let Some(state) = state {
            self.steps.insert(attempt.step.clone(), state);
        }
        self.facts.push(Fact::RunnableApplied {
            runnable_key: attempt.runnable_key.clone(),
            step: attempt.step.clone(),
            attempt_status: status,
            step_state: state,
            context_patch: Map::new(),
            route: None,
        });
    }

    /// Writes the planned attempts, the run row and the facts.
    pub(super) async fn write<T: StoreTx>(self, tx: &mut T, run: &mut RunRow) -> Result<()> {
        let now = self.now;
        let mut journal = Vec::new();
        self.write_into(tx, run, &mut journal, None).await?;
        tx.append_facts(&run.run_id, &journal, now_us(now)).await?;
        Ok(())
    }

    /// Writes the planned attempts and the run row, and adds the facts to `journal` (the
    /// caller appends it). With `take` (a queue), the first planned attempt on that queue
    /// that is visible now is not inserted but returned, for the caller to claim and insert.
    pub(super) async fn write_into<T: StoreTx>(
        mut self,
        tx: &mut T,
        run: &mut RunRow,
        journal: &mut Vec<(String, String)>,
        take: Option<&str>,
    ) -> Result<Option<AttemptRow>> {
        let now = self.now;
        if self.terminal.is_some() {
            for p in &self.planned {
                if p.attempt == 1 {
                    self.steps.remove(&p.step);
                }
            }
            self.planned.clear();
        }
        if self.cancel_open {
            tx.close_open_attempts(&run.run_id, "cancelled", now_us(now))
                .await?;
        }
        let mut taken = None;
        if !self.planned.is_empty() {
            let seq = run.revision + i64::try_from(self.facts.len()).unwrap_or(0) + 1;
            for p in &self.planned {
                let row = planned_row(run, p, seq, now);
                let claimable =
                    take.is_some_and(|q| q == row.queue) && row.visible_at <= now_us(now);
                if taken.is_none() && claimable {
                    taken = Some(row);
                } else {
                    tx.insert_attempt(&row).await?;
                }
            }
            // Other workers hear of what this transaction leaves for them.
            if self.planned.len() > usize::from(taken.is_some()) {
                tx.notify_queue(&run.queue).await?;
            }
            self.facts.push(Fact::RunnablesPlanned {
                runnables: std::mem::take(&mut self.planned),
            });
        }
        if self.compensation_changed
            && let Some(state) = &self.compensation
        {
            self.facts.push(Fact::CompensationUpdated {
                state: state.clone(),
            });
        }
        if self.new_gate
            && let Some(gate) = &self.manual
        {
            self.facts
                .push(Fact::ManualStepPaused { gate: gate.clone() });
        }
        let status = match self.terminal {
            Some(terminal) => {
                tx.close_open_attempts(&run.run_id, "cancelled", now_us(now))
                    .await?;
                self.facts.push(Fact::RunTerminal {
                    status: terminal,
                    error: self.error.clone(),
                });
                terminal
            }
            None if self.manual.is_some() => RunStatus::Paused,
            None if self.steps.values().any(|s| *s == StepState::Planned) => RunStatus::Running,
            None => RunStatus::Idle,
        };
        run.status = status;
        run.context = to_json(&self.context);
        run.steps = to_json(&self.steps);
        run.manual = self.manual.as_ref().map(to_json);
        run.compensation = self.compensation.as_ref().map(to_json);
        run.error = self.error.as_ref().map(to_json);
        run.updated_at = now_us(now);
        run.revision += i64::try_from(self.facts.len()).unwrap_or(0);
        tx.update_run(run).await?;
        journal.extend(self.facts.iter().map(|f| (f.kind().to_owned(), to_json(f))));
        Ok(taken)
    }
}
