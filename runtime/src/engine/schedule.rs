//! Schedules: cron triggers that fire on time, in their zone, once per window across every
//! process on one database.
//!
//! `apply` stores a row per cron trigger of a spec (with the pinned definition its runs
//! start from). Any process may then call [`Schedules::fire_due`] (worker pools do, in a
//! loop): it takes the most overdue schedule row under a row lock (Postgres skips rows
//! another process holds; SQLite has one writer), decides with the pure
//! [`crate::schedule::plan_fires`] which windows fire, and in the same transaction records
//! each window in `schedule_fires` (primary key: workflow, trigger, window) and starts its
//! run under an idempotency key derived from the window. No leader is needed: a window can
//! be recorded once, and its run id is the same in every process (and for a host's own
//! timer sending `cron_start` for the same window).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    Definition, Engine, EngineError, NewRun, Result, RunSnapshot, Signal, SignalKind, Written,
    now_us, receipt, to_json,
};
use crate::journal::RunId;
use crate::plan;
use crate::schedule::{CronSchedule, jitter, plan_fires, window_key};
use crate::spec::{
    DynamicDefault, Overlap, SchedulePolicy, SpecProblem, TriggerKind, WorkflowSpec, valid_name,
};
use crate::store::{FireRow, Lock, ScheduleEventRow, ScheduleRow, ScheduleTx, Store, StoreTx};
use crate::vocab::Timestamp;
pub use crate::vocab::{FireOrigin, FireOutcome, ScheduleEventKind, ScheduleState};

/// Most windows one backfill may start.
pub const MAX_BACKFILL_WINDOWS: usize = 1_000;

/// Windows a backfill starts per transaction.
const BACKFILL_CHUNK: usize = 100;

/// Most schedules one [`Schedules::fire_due`] call handles (the rest wait for the next).
const SCHEDULES_PER_CALL: usize = 1_000;

/// How often a schedule whose window waits for the previous run (overlap `queue_one`)
/// looks again whether that run has ended.
const QUEUED_RECHECK_US: i64 = 1_000_000;

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// Workflow name.
    pub workflow: String,
    /// The cron trigger.
    pub trigger: String,
    /// Cron expression.
    pub cron: String,
    /// IANA zone.
    pub timezone: String,
    /// Catch-up, overlap, jitter and validity window.
    pub policy: SchedulePolicy,
    /// Queue of the runs it starts.
    pub queue: String,
    /// Active or paused.
    pub state: ScheduleState,
    /// The next window to fire (`None`: past `end_at`).
    pub next_fire_at: Option<Timestamp>,
    /// That window in the schedule's zone.
    pub next_fire_local: Option<String>,
    /// A window waiting for the previous run to end (overlap `queue_one`).
    pub queued_window: Option<Timestamp>,
    /// The latest window that started a run.
    pub last_fired_at: Option<Timestamp>,
    /// The run it started.
    pub last_run_id: Option<String>,
    /// Windows given up by the catch-up policy so far.
    pub missed: u64,
    /// The pinned definition its runs start from.
    pub definition_hash: String,
    /// When it was first applied.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// One window a schedule handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleFire {
    /// Workflow name.
    pub workflow: String,
    /// The cron trigger.
    pub trigger: String,
    /// The window (its scheduled time).
    pub scheduled_at: Timestamp,
    /// What happened.
    pub outcome: FireOutcome,
    /// Who handled it.
    pub origin: FireOrigin,
    /// The run started for it.
    pub run_id: Option<String>,
    /// When it was handled.
    pub fired_at: Timestamp,
    /// `fired_at - scheduled_at`, in milliseconds.
    pub lateness_ms: i64,
}

/// One entry of a schedule's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEvent {
    /// What happened.
    pub kind: ScheduleEventKind,
    /// Who.
    pub actor: Option<String>,
    /// Why.
    pub comment: Option<String>,
    /// Details (for a backfill: the range and counts).
    pub detail: Value,
    /// When.
    pub occurred_at: Timestamp,
}

/// A schedule with its latest windows and its audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDetail {
    /// The schedule.
    pub schedule: ScheduleInfo,
    /// The latest windows handled, newest first.
    pub fires: Vec<ScheduleFire>,
    /// What operators did, oldest first.
    pub events: Vec<ScheduleEvent>,
}

/// Who does something to a schedule, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleCommand {
    /// Who.
    pub actor: Option<String>,
    /// Why.
    pub comment: Option<String>,
}

impl ScheduleCommand {
    /// A command by `actor`.
    pub fn by(actor: impl Into<String>) -> Self {
        Self {
            actor: Some(actor.into()),
            comment: None,
        }
    }

    /// With a comment.
    #[must_use]
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

/// What a backfill did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReport {
    /// The end of the range it covered: the range's end, or now when the range reaches into
    /// the future (later windows are the scheduler's).
    pub until: Timestamp,
    /// Windows in the range, up to `until`.
    pub windows: usize,
    /// Runs started, one per window not handled before.
    pub started: Vec<String>,
    /// Windows that were handled before (by the scheduler, a signal or an earlier backfill).
    pub already: usize,
}

/// The schedules of an engine's database; see [`Engine::schedules`].
#[derive(Debug, Clone, Copy)]
pub struct Schedules<'a> {
    engine: &'a Engine,
}

fn problem(path: &str, code: &str, message: impl Into<String>) -> SpecProblem {
    SpecProblem {
        path: path.to_owned(),
        code: code.to_owned(),
        message: message.into(),
    }
}

fn not_found(workflow: &str, trigger: &str) -> EngineError {
    EngineError::ScheduleNotFound {
        workflow: workflow.to_owned(),
        trigger: trigger.to_owned(),
    }
}

fn check_command(cmd: &ScheduleCommand) -> Result<()> {
    let mut problems = Vec::new();
    if let Some(a) = &cmd.actor
        && (a.trim().is_empty() || a.len() > 256)
    {
        problems.push(problem(
            "actor",
            "invalid_actor",
            "must be 1-256 characters",
        ));
    }
    if cmd.comment.as_ref().is_some_and(|c| c.len() > 4096) {
        problems.push(problem(
            "comment",
            "invalid_comment",
            "must be at most 4096 characters",
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EngineError::InvalidOption(problems))
    }
}

/// A stored schedule with its parsed parts.
struct Loaded {
    row: ScheduleRow,
    cron: CronSchedule,
    policy: SchedulePolicy,
}

impl Loaded {
    fn new(row: ScheduleRow) -> Result<Self> {
        let what = || format!("schedule {}/{}", row.workflow, row.trigger_name);
        let cron = CronSchedule::parse(&row.cron, &row.timezone)
            .map_err(|e| EngineError::corrupt(what(), e))?;
        let policy =
            serde_json::from_str(&row.policy).map_err(|e| EngineError::corrupt(what(), e))?;
        Ok(Self { row, cron, policy })
    }

    fn jitter_of(&self, w: Timestamp) -> i64 {
        jitter(
            &self.row.workflow,
            &self.row.trigger_name,
            w,
            self.policy.jitter_ms,
        )
    }

    fn state(&self) -> ScheduleState {
        self.row.state
    }

    /// When a scheduler must look at it next: its next window (plus jitter) while active,
    /// and soon while a queued window waits for the previous run.
    fn refresh_due(&mut self, now: Timestamp) {
        let mut due = None;
        if self.state() == ScheduleState::Active {
            due = self
                .row
                .next_fire_at
                .map(|n| n + self.jitter_of(Timestamp(n)));
            if self.row.queued_at.is_some() {
                let soon = now.0 + QUEUED_RECHECK_US;
                due = Some(due.map_or(soon, |d: i64| d.min(soon)));
            }
        }
        self.row.due_at = due;
    }

    fn info(&self) -> ScheduleInfo {
        let r = &self.row;
        ScheduleInfo {
            workflow: r.workflow.clone(),
            trigger: r.trigger_name.clone(),
            cron: r.cron.clone(),
            timezone: r.timezone.clone(),
            policy: self.policy.clone(),
            queue: r.queue.clone(),
            state: self.state(),
            next_fire_at: r.next_fire_at.map(Timestamp),
            next_fire_local: r.next_fire_at.map(|t| self.cron.local(Timestamp(t))),
            queued_window: r.queued_at.map(Timestamp),
            last_fired_at: r.last_fired_at.map(Timestamp),
            last_run_id: r.last_run_id.clone(),
            missed: u64::try_from(r.missed).unwrap_or(0),
            definition_hash: r.definition_hash.clone(),
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
        }
    }
}

fn fire_view(f: FireRow) -> ScheduleFire {
    ScheduleFire {
        lateness_ms: (f.fired_at - f.scheduled_at) / 1_000,
        workflow: f.workflow,
        trigger: f.trigger_name,
        scheduled_at: Timestamp(f.scheduled_at),
        outcome: f.outcome,
        origin: f.origin,
        run_id: f.run_id,
        fired_at: Timestamp(f.fired_at),
    }
}

fn event_view(e: ScheduleEventRow) -> ScheduleEvent {
    ScheduleEvent {
        detail: serde_json::from_str(&e.detail).unwrap_or(Value::Null),
        kind: e.kind,
        actor: e.actor,
        comment: e.comment,
        occurred_at: Timestamp(e.occurred_at),
    }
}

/// One window to start a run for.
pub(super) struct Window<'a> {
    pub(super) workflow: &'a str,
    pub(super) trigger: &'a str,
    pub(super) cron: &'a CronSchedule,
    pub(super) scheduled_at: Timestamp,
    pub(super) origin: FireOrigin,
}

impl Window<'_> {
    /// The run id every process derives for this window.
    pub(super) fn run_id(&self) -> RunId {
        RunId::derived(&[self.workflow, self.trigger, &window_key(self.scheduled_at)])
    }

    /// The `schedule` context of the run.
    pub(super) fn context(&self, fired_at: Timestamp) -> Map<String, Value> {
        let window_end = self.cron.next_after(self.scheduled_at);
        let schedule = json!({
            "workflow": self.workflow,
            "trigger": self.trigger,
            "cron": self.cron.expression(),
            "timezone": self.cron.timezone(),
            "scheduled_at": self.scheduled_at.to_rfc3339(),
            "scheduled_local": self.cron.local(self.scheduled_at),
            "window_end": window_end.map(Timestamp::to_rfc3339),
            "intended_window": {
                "start_at": self.scheduled_at.to_rfc3339(),
                "end_at": window_end.map(Timestamp::to_rfc3339),
            },
            "fired_at": fired_at.to_rfc3339(),
            "lateness_ms": (fired_at.0 - self.scheduled_at.0) / 1_000,
            "key": window_key(self.scheduled_at),
            "origin": self.origin.as_str(),
        });
        Map::from_iter([("schedule".to_owned(), schedule)])
    }

    fn fire_row(&self, outcome: FireOutcome, run_id: Option<RunId>, now: Timestamp) -> FireRow {
        FireRow {
            workflow: self.workflow.to_owned(),
            trigger_name: self.trigger.to_owned(),
            scheduled_at: self.scheduled_at.0,
            outcome,
            origin: self.origin,
            run_id: run_id.map(|r| r.to_string()),
            fired_at: now.0,
        }
    }
}

impl Engine {
    /// The schedules of this engine's database: apply cron triggers, list, pause, resume,
    /// backfill, and fire what is due.
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules { engine: self }
    }

    /// A new run for a schedule window, from the pinned definition, with the trigger's
    /// payload defaults resolved at the window's time.
    pub(super) fn window_run(
        &self,
        definition: Arc<Definition>,
        window: &Window<'_>,
        payload: &Value,
        queue: String,
        now: Timestamp,
    ) -> Result<NewRun> {
        let trigger = definition
            .spec
            .trigger(Some(window.trigger))
            .ok_or_else(|| EngineError::UnknownTrigger {
                workflow: window.workflow.to_owned(),
                trigger: window.trigger.to_owned(),
            })?;
        // `today` is the window's date where the schedule lives, not in UTC.
        let mut payload = payload.clone();
        if let Some(given) = payload.as_object_mut() {
            for f in &trigger.payload {
                if f.default.is_none()
                    && f.default_from == Some(DynamicDefault::Today)
                    && !given.contains_key(&f.name)
                {
                    given.insert(
                        f.name.clone(),
                        json!(window.cron.local_date(window.scheduled_at)),
                    );
                }
            }
        }
        let input = plan::resolve_payload(trigger, &payload, window.scheduled_at)
            .map_err(EngineError::InvalidPayload)?;
        let key = window_key(window.scheduled_at);
        let mut signal = Signal::new(SignalKind::CronStart, None, now);
        signal.idempotency_key = Some(key.clone());
        signal
            .payload
            .insert("workflow".into(), json!(window.workflow));
        signal
            .payload
            .insert("trigger".into(), json!(window.trigger));
        signal.payload.insert(
            "scheduled_for".into(),
            json!(window.scheduled_at.to_rfc3339()),
        );
        Ok(NewRun {
            trigger: trigger.name.clone(),
            definition,
            input,
            queue,
            run_id: window.run_id(),
            idempotency_key: Some(key),
            replayed_from: None,
            parent: None,
            receipt: receipt(&signal, &self.inner.redaction),
            command_key: None,
            context: window.context(now),
            now,
            trace: None,
            trace_resolved: None,
        })
    }

    /// Starts the run of a window in `tx` and records the window; `None` when the window
    /// was recorded before (by any process), in which case nothing is written.
    pub(super) async fn start_window<T: ScheduleTx>(
        &self,
        tx: &mut T,
        new: NewRun,
        window: &Window<'_>,
    ) -> Result<Option<RunId>> {
        let now = new.now;
        let run_id = new.run_id;
        if !tx
            .insert_fire(&window.fire_row(FireOutcome::Started, Some(run_id), now))
            .await?
        {
            return Ok(None);
        }
        match self.write_new_run(tx, new, None).await {
            Ok(written) => Ok(Some(written.run_id())),
            Err(EngineError::IdempotencyConflict { message, .. }) => {
                tracing::warn!(
                    workflow = window.workflow,
                    trigger = window.trigger,
                    "schedule window {} not started: {message}",
                    window.scheduled_at
                );
                tx.update_fire(&window.fire_row(FireOutcome::Skipped, None, now))
                    .await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Engine {
    /// A host's own timer fired a window (`cron_start` with `payload.scheduled_for`): the run
    /// is the one the scheduler starts for the same window (same run id), and the window is
    /// recorded as fired by a signal. `scheduled_for` is snapped to the nearest window of the
    /// schedule, within its grace; the applied schedule (when there is one) gives the
    /// definition, zone and queue, else the registered workflow does.
    pub(super) async fn cron_start_signal(&self, signal: Signal) -> Result<RunSnapshot> {
        let text = |k: &str| signal.payload.get(k).and_then(Value::as_str);
        let bad = |path: &str, code: &str, message: String| {
            EngineError::InvalidOption(vec![problem(path, code, message)])
        };
        let workflow = text("workflow").ok_or_else(|| {
            bad(
                "payload.workflow",
                "invalid_option",
                "a start signal names its workflow".into(),
            )
        })?;
        let Some(at) = text("scheduled_for") else {
            return Err(bad(
                "payload.scheduled_for",
                "missing_schedule_identity",
                "a cron_start signal needs payload.scheduled_for (the window, RFC 3339) or an idempotency key, so that two deliveries of one window start one run".into(),
            ));
        };
        let asked = chrono::DateTime::parse_from_rfc3339(at)
            .map(|t| Timestamp(t.timestamp_micros()))
            .map_err(|e| {
                bad(
                    "payload.scheduled_for",
                    "invalid_option",
                    format!("{at:?} is not an RFC 3339 time: {e}"),
                )
            })?;
        let stored = match self.schedules().key(workflow, text("trigger")).await {
            Ok(trigger) => with_store!(self, s => {
                let mut tx = s.begin_read().await?;
                tx.load_schedule(workflow, &trigger, Lock::None).await?
            }),
            Err(_) => None,
        };
        let (definition, trigger, cron, policy, queue) = match stored {
            Some(row) => {
                let loaded = Loaded::new(row)?;
                let definition = with_store!(self, s => {
                    let mut tx = s.begin_read().await?;
                    self.definition_in(&mut tx, &loaded.row.definition_hash).await?
                })
                .ok_or_else(|| {
                    EngineError::corrupt(
                        format!("schedule {workflow}"),
                        "its pinned definition is missing",
                    )
                })?;
                let Loaded { row, cron, policy } = loaded;
                (definition, row.trigger_name, cron, policy, row.queue)
            }
            None => {
                let spec = self.registered(workflow)?;
                let t =
                    spec.trigger(text("trigger"))
                        .ok_or_else(|| EngineError::UnknownTrigger {
                            workflow: workflow.to_owned(),
                            trigger: text("trigger").unwrap_or_default().to_owned(),
                        })?;
                let TriggerKind::Cron {
                    cron,
                    timezone,
                    policy,
                } = &t.kind
                else {
                    return Err(bad(
                        "payload.trigger",
                        "invalid_option",
                        format!("trigger {} is not a cron trigger", t.name),
                    ));
                };
                let cron = CronSchedule::parse(cron, timezone).map_err(|e| {
                    EngineError::InvalidSpec(vec![problem(
                        "trigger.cron",
                        "invalid_cron",
                        e.to_string(),
                    )])
                })?;
                let (name, policy) = (t.name.clone(), policy.clone());
                self.refresh_catalog().await?;
                (
                    Arc::new(self.pin(spec)?),
                    name,
                    cron,
                    policy,
                    self.default_queue().to_owned(),
                )
            }
        };
        let queue = text("queue").map_or(queue, str::to_owned);
        if !valid_name(&queue) {
            return Err(EngineError::invalid_option(
                "queue",
                "queue names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        // A timer fires at about the window's time: take the nearest window, within grace.
        let grace = i64::try_from(policy.grace_ms).unwrap_or(i64::MAX / 2) * 1_000;
        let scheduled_at = [cron.latest_at_or_before(asked), cron.next_after(asked)]
            .into_iter()
            .flatten()
            .min_by_key(|w| (w.0 - asked.0).abs())
            .filter(|w| (w.0 - asked.0).abs() <= grace)
            .ok_or_else(|| {
                bad(
                    "payload.scheduled_for",
                    "not_a_window",
                    format!(
                        "{at} is not within {} ms of a window of {:?} in {}",
                        policy.grace_ms,
                        cron.expression(),
                        cron.timezone()
                    ),
                )
            })?;
        let now = self.now();
        if scheduled_at.0 > now.0 + grace {
            return Err(bad(
                "payload.scheduled_for",
                "future_window",
                format!("window {scheduled_at} has not come yet (now {now})"),
            ));
        }
        let window = Window {
            workflow,
            trigger: &trigger,
            cron: &cron,
            scheduled_at,
            origin: FireOrigin::Signal,
        };
        let payload = signal
            .payload
            .get("payload")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let mut new = self.window_run(definition, &window, &payload, queue, now)?;
        new.receipt = receipt(&signal, &self.inner.redaction);
        let run_id = window.run_id();
        with_store!(self, s => {
            let mut tx = s.begin_write().await?;
            if self.start_window(&mut tx, new, &window).await?.is_some() {
                tx.commit().await?;
                self.wake();
            } else {
                drop(tx);
            }
            match self.snapshot_on(s, run_id).await {
                Err(EngineError::RunNotFound { .. }) => Err(bad(
                    "payload.scheduled_for",
                    "window_not_started",
                    format!("window {scheduled_at} of {workflow}/{trigger} was handled already and started no run (the previous run was still going)"),
                )),
                other => other,
            }
        })
    }
}

impl Schedules<'_> {
    /// Stores (or updates) a schedule for every cron trigger of `spec`, pinned to the
    /// actions the registry resolves now. Re-applying keeps the schedule's state and the
    /// windows it fired; a changed expression, zone or start moves the next window.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSpec`] for an invalid spec, one without cron triggers, or a
    /// cron trigger whose payload has a required field without a default (a scheduled run
    /// has no caller to supply it); [`EngineError::InvalidOption`] for a bad queue or
    /// command; action and store errors.
    pub async fn apply(
        self,
        spec: &WorkflowSpec,
        queue: Option<&str>,
        cmd: ScheduleCommand,
    ) -> Result<Vec<ScheduleInfo>> {
        let e = self.engine;
        check_command(&cmd)?;
        e.refresh_catalog().await?;
        spec.validate(Some(&e.actions_view()))
            .map_err(EngineError::InvalidSpec)?;
        if queue.is_some_and(|q| !valid_name(q)) {
            return Err(EngineError::invalid_option(
                "queue",
                "queue names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        let now = e.now();
        let mut problems = Vec::new();
        let mut crons = Vec::new();
        for (i, t) in spec.triggers.iter().enumerate() {
            let TriggerKind::Cron {
                cron,
                timezone,
                policy,
            } = &t.kind
            else {
                continue;
            };
            for (j, f) in t.payload.iter().enumerate() {
                if f.required && f.default.is_none() && f.default_from.is_none() {
                    problems.push(problem(
                        &format!("triggers[{i}].payload[{j}]"),
                        "cron_field_without_default",
                        format!(
                            "field {} of cron trigger {} is required but has no default; a scheduled run has no caller to supply it",
                            f.name, t.name
                        ),
                    ));
                }
            }
            let parsed = CronSchedule::parse(cron, timezone).map_err(|err| {
                EngineError::InvalidSpec(vec![problem(
                    &format!("triggers[{i}].cron"),
                    "invalid_cron",
                    err.to_string(),
                )])
            })?;
            // An expression with no window at all is a mistake; one whose `end_at` has
            // passed is a schedule that is over, and is stored as such.
            if parsed.next_after(now).is_none() {
                problems.push(problem(
                    &format!("triggers[{i}].cron"),
                    "schedule_never_fires",
                    format!("cron trigger {} has no window after now", t.name),
                ));
            }
            crons.push((t.name.clone(), parsed, policy.clone()));
        }
        if crons.is_empty() && self.of_workflow(&spec.name).await?.is_empty() {
            problems.push(problem(
                "triggers",
                "no_cron_trigger",
                format!("workflow {} has no cron trigger to schedule", spec.name),
            ));
        }
        if !problems.is_empty() {
            return Err(EngineError::InvalidSpec(problems));
        }
        let definition = Arc::new(e.pin(spec.clone())?);
        let body = definition.body();
        let hash = super::sha256_hex(&body);
        e.cache_definition(&hash, definition.clone());
        let out = with_store!(e, s => {
            let mut tx = s.begin_write().await?;
            tx.insert_definition(&hash, &spec.name, &definition.spec.fingerprint(), &body, now_us(now))
                .await?;
            // Schedules of cron triggers the spec no longer has stop firing.
            let kept: Vec<&str> = crons.iter().map(|(t, _, _)| t.as_str()).collect();
            for old in tx.list_schedules().await? {
                if old.workflow == spec.name && !kept.contains(&old.trigger_name.as_str()) {
                    delete_schedule(&mut tx, &old, &cmd, json!({
                        "reason": "the applied spec no longer has this cron trigger",
                        "definition_hash": hash,
                    }), now)
                    .await?;
                }
            }
            let mut out = Vec::new();
            for (trigger, cron, policy) in crons {
                let existing = tx.load_schedule(&spec.name, &trigger, Lock::Update).await?;
                let first = |from: Timestamp| first_window(&cron, &policy, from);
                let row = match existing {
                    Some(mut row) => {
                        let moved = row.cron != cron.expression()
                            || row.timezone != cron.timezone()
                            || serde_json::from_str::<SchedulePolicy>(&row.policy)
                                .map_or(true, |p| p.start_at != policy.start_at || p.end_at != policy.end_at);
                        if moved {
                            row.next_fire_at = first(now).map(|t| t.0);
                        }
                        row.definition_hash.clone_from(&hash);
                        row.cron = cron.expression().to_owned();
                        row.timezone = cron.timezone().to_owned();
                        row.policy = to_json(&policy);
                        if let Some(q) = queue {
                            q.clone_into(&mut row.queue);
                        }
                        row.updated_at = now.0;
                        row
                    }
                    None => ScheduleRow {
                        workflow: spec.name.clone(),
                        trigger_name: trigger.clone(),
                        definition_hash: hash.clone(),
                        cron: cron.expression().to_owned(),
                        timezone: cron.timezone().to_owned(),
                        policy: to_json(&policy),
                        queue: queue.unwrap_or(e.default_queue()).to_owned(),
                        state: ScheduleState::Active,
                        next_fire_at: first(now).map(|t| t.0),
                        due_at: None,
                        queued_at: None,
                        last_fired_at: None,
                        last_run_id: None,
                        missed: 0,
                        created_at: now.0,
                        updated_at: now.0,
                    },
                };
                let mut loaded = Loaded { row, cron, policy };
                loaded.refresh_due(now);
                tx.put_schedule(&loaded.row).await?;
                tx.append_schedule_event(&event_row(&loaded.row, ScheduleEventKind::Applied, &cmd, json!({
                    "definition_hash": hash,
                    "cron": loaded.row.cron,
                    "timezone": loaded.row.timezone,
                    "queue": loaded.row.queue,
                }), now))
                .await?;
                out.push(loaded.info());
            }
            tx.commit().await?;
            out
        });
        e.inner.schedule_wakeup.notify_waiters();
        Ok(out)
    }

    /// Every schedule, by workflow and trigger.
    ///
    /// # Errors
    ///
    /// Store errors. A row that does not decode is left out with an error in the log (the
    /// scheduler skips it too; `show` names the problem).
    pub async fn list(self) -> Result<Vec<ScheduleInfo>> {
        let rows = with_store!(self.engine, s => {
            let mut tx = s.begin_read().await?;
            tx.list_schedules().await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|r| match Loaded::new(r) {
                Ok(l) => Some(l.info()),
                Err(err) => {
                    tracing::error!("{err}");
                    None
                }
            })
            .collect())
    }

    /// The schedules of one workflow.
    async fn of_workflow(self, workflow: &str) -> Result<Vec<ScheduleInfo>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|s| s.workflow == workflow)
            .collect())
    }

    /// Resolves an optional trigger name: the workflow's only schedule when `None`.
    pub(super) async fn key(self, workflow: &str, trigger: Option<&str>) -> Result<String> {
        if let Some(t) = trigger {
            return Ok(t.to_owned());
        }
        let all = self.of_workflow(workflow).await?;
        match all.as_slice() {
            [one] => Ok(one.trigger.clone()),
            [] => Err(not_found(workflow, "")),
            _ => Err(EngineError::InvalidOption(vec![problem(
                "trigger",
                "ambiguous_schedule",
                format!(
                    "workflow {workflow} has {} schedules ({}); name the trigger",
                    all.len(),
                    all.iter()
                        .map(|s| s.trigger.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )])),
        }
    }

    /// One schedule with its latest `fires` windows and its audit trail. `trigger` may be
    /// left out when the workflow has one schedule.
    ///
    /// # Errors
    ///
    /// [`EngineError::ScheduleNotFound`], store errors.
    pub async fn show(
        self,
        workflow: &str,
        trigger: Option<&str>,
        fires: u32,
    ) -> Result<ScheduleDetail> {
        let trigger = self.key(workflow, trigger).await?;
        let (row, fire_rows, events) = with_store!(self.engine, s => {
            let mut tx = s.begin_read().await?;
            let row = tx
                .load_schedule(workflow, &trigger, Lock::None)
                .await?
                .ok_or_else(|| not_found(workflow, &trigger))?;
            let fire_rows = tx.fires(workflow, &trigger, i64::from(fires)).await?;
            let events = tx.schedule_events(workflow, &trigger).await?;
            (row, fire_rows, events)
        });
        Ok(ScheduleDetail {
            schedule: Loaded::new(row)?.info(),
            fires: fire_rows.into_iter().map(fire_view).collect(),
            events: events.into_iter().map(event_view).collect(),
        })
    }

    /// The next `n` windows of a schedule (at most 1,000), as it stands now.
    ///
    /// # Errors
    ///
    /// [`EngineError::ScheduleNotFound`], store errors.
    pub async fn next(
        self,
        workflow: &str,
        trigger: Option<&str>,
        n: usize,
    ) -> Result<Vec<Timestamp>> {
        let detail = self.show(workflow, trigger, 0).await?;
        let s = detail.schedule;
        let cron = CronSchedule::parse(&s.cron, &s.timezone)
            .map_err(|e| EngineError::corrupt(format!("schedule {workflow}"), e))?;
        let Some(mut first) = s.next_fire_at else {
            return Ok(Vec::new());
        };
        // A paused or lagging schedule: what comes from now on.
        let now = self.engine.now();
        if first < now {
            match cron.next_after(now) {
                Some(n) => first = n,
                None => return Ok(Vec::new()),
            }
        }
        let end = s.policy.end_at.map(|e| e.timestamp_micros());
        let mut out = vec![first];
        out.extend(cron.upcoming(first, n.clamp(1, 1_000) - 1));
        out.retain(|t| end.is_none_or(|e| t.0 <= e));
        out.truncate(n);
        Ok(out)
    }

    /// Pauses a schedule: nothing fires until it is resumed.
    ///
    /// # Errors
    ///
    /// [`EngineError::ScheduleNotFound`], [`EngineError::InvalidOption`] for a bad command,
    /// store errors.
    pub async fn pause(
        self,
        workflow: &str,
        trigger: Option<&str>,
        cmd: ScheduleCommand,
    ) -> Result<ScheduleInfo> {
        self.set_state(workflow, trigger, ScheduleState::Paused, cmd)
            .await
    }

    /// Resumes a paused schedule. Windows that passed while it was paused follow the
    /// catch-up policy.
    ///
    /// # Errors
    ///
    /// As [`Schedules::pause`].
    pub async fn resume(
        self,
        workflow: &str,
        trigger: Option<&str>,
        cmd: ScheduleCommand,
    ) -> Result<ScheduleInfo> {
        self.set_state(workflow, trigger, ScheduleState::Active, cmd)
            .await
    }

    async fn set_state(
        self,
        workflow: &str,
        trigger: Option<&str>,
        state: ScheduleState,
        cmd: ScheduleCommand,
    ) -> Result<ScheduleInfo> {
        check_command(&cmd)?;
        let trigger = self.key(workflow, trigger).await?;
        let now = self.engine.now();
        let info = with_store!(self.engine, s => {
            let mut tx = s.begin_write().await?;
            let row = tx
                .load_schedule(workflow, &trigger, Lock::Update)
                .await?
                .ok_or_else(|| not_found(workflow, &trigger))?;
            let mut loaded = Loaded::new(row)?;
            if loaded.state() != state {
                loaded.row.state = state;
                loaded.row.updated_at = now.0;
                loaded.refresh_due(now);
                tx.put_schedule(&loaded.row).await?;
                let kind = match state {
                    ScheduleState::Paused => ScheduleEventKind::Paused,
                    ScheduleState::Active => ScheduleEventKind::Resumed,
                };
                tx.append_schedule_event(&event_row(&loaded.row, kind, &cmd, json!({}), now))
                    .await?;
                tx.commit().await?;
            }
            loaded.info()
        });
        self.engine.inner.schedule_wakeup.notify_waiters();
        Ok(info)
    }

    /// Deletes a schedule; the windows it fired and its trail stay readable.
    ///
    /// # Errors
    ///
    /// [`EngineError::ScheduleNotFound`], store errors.
    pub async fn remove(
        self,
        workflow: &str,
        trigger: Option<&str>,
        cmd: ScheduleCommand,
    ) -> Result<()> {
        check_command(&cmd)?;
        let trigger = self.key(workflow, trigger).await?;
        let now = self.engine.now();
        with_store!(self.engine, s => {
            let mut tx = s.begin_write().await?;
            let row = tx
                .load_schedule(workflow, &trigger, Lock::Update)
                .await?
                .ok_or_else(|| not_found(workflow, &trigger))?;
            delete_schedule(&mut tx, &row, &cmd, json!({}), now).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Starts a run for every window in `[from, to]` not handled before (by any origin),
    /// whatever the overlap policy and the schedule's state; windows after now are left to
    /// the scheduler. Repeating it starts nothing more.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] when `to` is before `from` or the range holds more than
    /// [`MAX_BACKFILL_WINDOWS`] windows (nothing is started then);
    /// [`EngineError::ScheduleNotFound`], store errors.
    pub async fn backfill(
        self,
        workflow: &str,
        trigger: Option<&str>,
        from: Timestamp,
        to: Timestamp,
        cmd: ScheduleCommand,
    ) -> Result<BackfillReport> {
        check_command(&cmd)?;
        if to < from {
            return Err(EngineError::InvalidOption(vec![problem(
                "to",
                "invalid_backfill_range",
                format!("the range ends ({to}) before it starts ({from})"),
            )]));
        }
        let trigger = self.key(workflow, trigger).await?;
        let e = self.engine;
        let now = e.now();
        // Windows still to come are the scheduler's, not the backfill's.
        let until = to.min(now);
        with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            let row = tx
                .load_schedule(workflow, &trigger, Lock::None)
                .await?
                .ok_or_else(|| not_found(workflow, &trigger))?;
            let loaded = Loaded::new(row)?;
            let windows = if until < from {
                Vec::new()
            } else {
                loaded
                    .cron
                    .windows(from, until, MAX_BACKFILL_WINDOWS)
                    .map_err(|_| {
                        EngineError::InvalidOption(vec![problem(
                            "to",
                            "backfill_too_large",
                            format!(
                                "the range holds more than {MAX_BACKFILL_WINDOWS} windows; backfill it in parts"
                            ),
                        )])
                    })?
            };
            let definition = e
                .definition_in(&mut tx, &loaded.row.definition_hash)
                .await?
                .ok_or_else(|| EngineError::corrupt(
                    format!("schedule {workflow}/{trigger}"),
                    "its pinned definition is missing",
                ))?;
            drop(tx);
            let mut report = BackfillReport {
                until,
                windows: windows.len(),
                started: Vec::new(),
                already: 0,
            };
            // In chunks, so writers of this database are not held up for the whole range;
            // a repeat after a failure starts only what is missing.
            for chunk in windows.chunks(BACKFILL_CHUNK) {
                let mut tx = s.begin_write().await?;
                for &w in chunk {
                    let window = Window {
                        workflow,
                        trigger: &trigger,
                        cron: &loaded.cron,
                        scheduled_at: w,
                        origin: FireOrigin::Backfill,
                    };
                    let new = e.window_run(definition.clone(), &window, &json!({}), loaded.row.queue.clone(), now)?;
                    match e.start_window(&mut tx, new, &window).await? {
                        Some(run) => report.started.push(run.to_string()),
                        None => report.already += 1,
                    }
                }
                tx.commit().await?;
                e.wake();
            }
            let mut tx = s.begin_write().await?;
            tx.append_schedule_event(&event_row(&loaded.row, ScheduleEventKind::Backfilled, &cmd, json!({
                "from": from.to_rfc3339(),
                "to": to.to_rfc3339(),
                "windows": report.windows,
                "started": report.started.len(),
                "already": report.already,
            }), now))
            .await?;
            tx.commit().await?;
            Ok(report)
        })
    }

    /// When the next schedule is due (`None`: none is).
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn earliest_due(self) -> Result<Option<Timestamp>> {
        Ok(with_store!(self.engine, s => {
            let mut tx = s.begin_read().await?;
            tx.earliest_schedule_due().await?
        })
        .map(Timestamp))
    }

    /// Fires every window due now, in every schedule, and returns what it handled (windows
    /// another process handled are not repeated). Worker pools call it in a loop; hosts
    /// without a pool (or tests with a manual clock) may call it themselves.
    ///
    /// # Errors
    ///
    /// Store errors (what was committed before stays).
    pub async fn fire_due(self) -> Result<Vec<ScheduleFire>> {
        let mut out = Vec::new();
        // A read first: most calls find nothing due, and need not take the write lock.
        if self
            .earliest_due()
            .await?
            .is_none_or(|due| due > self.engine.now())
        {
            return Ok(out);
        }
        for _ in 0..SCHEDULES_PER_CALL {
            let now = self.engine.now();
            let fired = with_store!(self.engine, s => self.fire_one(s, now).await)?;
            match fired {
                None => break,
                Some(mut f) => out.append(&mut f),
            }
        }
        if !out.is_empty() {
            self.engine.wake();
        }
        Ok(out)
    }

    /// Handles the most overdue schedule; `None` when none is due.
    async fn fire_one<S: Store>(
        self,
        store: &S,
        now: Timestamp,
    ) -> Result<Option<Vec<ScheduleFire>>> {
        let mut tx = store.begin_write().await?;
        let Some(row) = tx.next_due_schedule(now.0).await? else {
            return Ok(None);
        };
        let (workflow, trigger) = (row.workflow.clone(), row.trigger_name.clone());
        match self.fire_row(&mut tx, row, now).await {
            Ok(handled) => {
                tx.commit().await?;
                Ok(Some(handled))
            }
            Err(err @ EngineError::Store(_)) => Err(err),
            Err(err) => {
                // One schedule that cannot fire must not hold up the others: it is parked
                // (applying its spec again wakes it), with the reason in its trail.
                drop(tx);
                tracing::error!(
                    "schedule {workflow}/{trigger} could not fire and is parked: {err}; apply its spec again to fire it"
                );
                let mut tx = store.begin_write().await?;
                if let Some(mut row) = tx.load_schedule(&workflow, &trigger, Lock::Update).await? {
                    row.due_at = None;
                    row.updated_at = now.0;
                    tx.put_schedule(&row).await?;
                    let detail = json!({"code": err.code(), "message": err.to_string()});
                    tx.append_schedule_event(&event_row(
                        &row,
                        ScheduleEventKind::Failed,
                        &ScheduleCommand::default(),
                        detail,
                        now,
                    ))
                    .await?;
                    tx.commit().await?;
                }
                Ok(Some(Vec::new()))
            }
        }
    }

    /// Fires the due windows of one schedule row, locked in `tx`; the caller commits.
    async fn fire_row<T: ScheduleTx>(
        self,
        tx: &mut T,
        row: ScheduleRow,
        now: Timestamp,
    ) -> Result<Vec<ScheduleFire>> {
        let e = self.engine;
        let mut loaded = Loaded::new(row)?;
        let definition = e
            .definition_in(tx, &loaded.row.definition_hash)
            .await?
            .ok_or_else(|| {
                EngineError::corrupt(
                    format!(
                        "schedule {}/{}",
                        loaded.row.workflow, loaded.row.trigger_name
                    ),
                    "its pinned definition is missing; apply the spec again",
                )
            })?;
        let mut alive = match &loaded.row.last_run_id {
            Some(id) => tx
                .load_run(id, Lock::None)
                .await?
                .is_some_and(|r| !r.status.is_terminal()),
            None => false,
        };
        let workflow = loaded.row.workflow.clone();
        let trigger = loaded.row.trigger_name.clone();
        let mut handled = Vec::new();
        // A queued window starts once the previous run has ended.
        if let Some(q) = loaded.row.queued_at
            && !alive
            && loaded.state() == ScheduleState::Active
        {
            let window = Window {
                workflow: &workflow,
                trigger: &trigger,
                cron: &loaded.cron,
                scheduled_at: Timestamp(q),
                origin: FireOrigin::Scheduler,
            };
            let new = e.window_run(
                definition.clone(),
                &window,
                &json!({}),
                loaded.row.queue.clone(),
                now,
            )?;
            let run = window.run_id();
            match e.write_new_run(tx, new, None).await {
                Ok(Written::New(..) | Written::Existing(_)) => {
                    let f = window.fire_row(FireOutcome::Started, Some(run), now);
                    tx.update_fire(&f).await?;
                    handled.push(fire_view(f));
                    alive = true;
                    loaded.row.last_fired_at = Some(q);
                    loaded.row.last_run_id = Some(run.to_string());
                }
                Err(EngineError::IdempotencyConflict { .. }) => {
                    let f = window.fire_row(FireOutcome::Skipped, None, now);
                    tx.update_fire(&f).await?;
                    handled.push(fire_view(f));
                }
                Err(err) => return Err(err),
            }
            loaded.row.queued_at = None;
        }
        if loaded.state() == ScheduleState::Active
            && let Some(due) = loaded.row.next_fire_at
        {
            let plan = plan_fires(&loaded.cron, &loaded.policy, Timestamp(due), now, |w| {
                loaded.jitter_of(w)
            });
            // Under `skip`, of several windows due at once (after a short stop) only the
            // newest may start; the older ones would only be skipped behind it.
            let newest = plan.fire.last().copied();
            for w in plan.fire {
                let superseded = loaded.policy.overlap == Overlap::Skip && Some(w) != newest;
                let window = Window {
                    workflow: &workflow,
                    trigger: &trigger,
                    cron: &loaded.cron,
                    scheduled_at: w,
                    origin: FireOrigin::Scheduler,
                };
                let held = match loaded.policy.overlap {
                    Overlap::Allow => None,
                    _ if superseded => Some(FireOutcome::Skipped),
                    _ if !alive => None,
                    Overlap::QueueOne if loaded.row.queued_at.is_none() => {
                        Some(FireOutcome::Queued)
                    }
                    _ => Some(FireOutcome::Skipped),
                };
                if let Some(outcome) = held {
                    let f = window.fire_row(outcome, None, now);
                    if tx.insert_fire(&f).await? {
                        if outcome == FireOutcome::Queued {
                            loaded.row.queued_at = Some(w.0);
                        }
                        handled.push(fire_view(f));
                    }
                    continue;
                }
                let new = e.window_run(
                    definition.clone(),
                    &window,
                    &json!({}),
                    loaded.row.queue.clone(),
                    now,
                )?;
                if let Some(run) = e.start_window(tx, new, &window).await? {
                    alive = true;
                    loaded.row.last_fired_at = Some(w.0);
                    loaded.row.last_run_id = Some(run.to_string());
                    handled.push(fire_view(window.fire_row(
                        FireOutcome::Started,
                        Some(run),
                        now,
                    )));
                }
            }
            loaded.row.missed += i64::try_from(plan.missed).unwrap_or(i64::MAX);
            loaded.row.next_fire_at = plan.next.map(|t| t.0);
        }
        loaded.row.updated_at = now.0;
        loaded.refresh_due(now);
        tx.put_schedule(&loaded.row).await?;
        Ok(handled)
    }
}

/// Deletes a schedule row, records its removal in the trail, and settles a window it had
/// waiting (overlap `queue_one`) as skipped.
async fn delete_schedule<T: ScheduleTx>(
    tx: &mut T,
    row: &ScheduleRow,
    cmd: &ScheduleCommand,
    detail: Value,
    now: Timestamp,
) -> Result<()> {
    tx.delete_schedule(&row.workflow, &row.trigger_name).await?;
    if let Some(q) = row.queued_at {
        tx.update_fire(&FireRow {
            workflow: row.workflow.clone(),
            trigger_name: row.trigger_name.clone(),
            scheduled_at: q,
            outcome: FireOutcome::Skipped,
            origin: FireOrigin::Scheduler,
            run_id: None,
            fired_at: now.0,
        })
        .await?;
    }
    tx.append_schedule_event(&event_row(
        row,
        ScheduleEventKind::Removed,
        cmd,
        detail,
        now,
    ))
    .await?;
    Ok(())
}

/// The first window after `from` within the policy's start and end.
fn first_window(
    cron: &CronSchedule,
    policy: &SchedulePolicy,
    from: Timestamp,
) -> Option<Timestamp> {
    let start = policy
        .start_at
        .map_or(from, |s| from.max(Timestamp(s.timestamp_micros() - 1)));
    cron.next_after(start)
        .filter(|n| policy.end_at.is_none_or(|e| n.0 <= e.timestamp_micros()))
}

fn event_row(
    row: &ScheduleRow,
    kind: ScheduleEventKind,
    cmd: &ScheduleCommand,
    detail: Value,
    now: Timestamp,
) -> ScheduleEventRow {
    ScheduleEventRow {
        id: 0,
        workflow: row.workflow.clone(),
        trigger_name: row.trigger_name.clone(),
        kind,
        actor: cmd.actor.clone(),
        comment: cmd.comment.clone(),
        detail: to_json(&detail),
        occurred_at: now.0,
    }
}
