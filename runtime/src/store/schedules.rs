//! The statements of schedules: their rows, the windows they fired and their audit trail.
//!
//! Written once, on [`Statements`] (plain statements with bound arguments), for every
//! backend; only the row-lock suffixes differ.

use std::future::Future;

use super::{Arg, Lock, Statements, StoreResult, StoreTx};
use crate::vocab::{FireOrigin, FireOutcome, ScheduleEventKind, ScheduleState};

stored_row! {
    /// One row of `schedules`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ScheduleRow {
        /// Workflow name.
        workflow: String,
        /// The cron trigger.
        trigger_name: String,
        /// The pinned definition runs start from.
        definition_hash: String,
        /// Cron expression.
        cron: String,
        /// IANA zone.
        timezone: String,
        /// JSON of the policy.
        policy: String,
        /// Queue of the runs.
        queue: String,
        /// Whether it fires.
        state: ScheduleState,
        /// First window not yet handled.
        next_fire_at: Option<i64>,
        /// When a scheduler must look next.
        due_at: Option<i64>,
        /// A window waiting for the previous run (overlap `queue_one`).
        queued_at: Option<i64>,
        /// Latest window that started a run.
        last_fired_at: Option<i64>,
        /// The run it started.
        last_run_id: Option<String>,
        /// Windows given up by the catch-up policy.
        missed: i64,
        /// Created.
        created_at: i64,
        /// Last written.
        updated_at: i64,
    }
}

stored_row! {
    /// One row of `schedule_fires`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FireRow {
        /// Workflow name.
        workflow: String,
        /// The cron trigger.
        trigger_name: String,
        /// The window.
        scheduled_at: i64,
        /// What happened to the window.
        outcome: FireOutcome,
        /// Who handled it.
        origin: FireOrigin,
        /// The run started for it.
        run_id: Option<String>,
        /// When it was handled.
        fired_at: i64,
    }
}

stored_row! {
    /// One row of `schedule_events`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ScheduleEventRow {
        /// Position in the schedule's trail.
        id: i64,
        /// Workflow name.
        workflow: String,
        /// The cron trigger.
        trigger_name: String,
        /// What happened.
        kind: ScheduleEventKind,
        /// Who.
        actor: Option<String>,
        /// Why.
        comment: Option<String>,
        /// JSON details.
        detail: String,
        /// When.
        occurred_at: i64,
    }
}

stored_row! {
    /// The earliest `due_at` of all schedules.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EarliestRow {
        due_at: Option<i64>,
    }
}

/// Statements on schedules, inside one transaction.
pub trait ScheduleTx: StoreTx {
    /// Inserts or replaces a schedule row.
    fn put_schedule(&mut self, row: &ScheduleRow) -> impl Future<Output = StoreResult<()>> + Send;
    /// One schedule, locked for update when `lock`.
    fn load_schedule(
        &mut self,
        workflow: &str,
        trigger: &str,
        lock: Lock,
    ) -> impl Future<Output = StoreResult<Option<ScheduleRow>>> + Send;
    /// The schedule most overdue at `now`, locked; Postgres skips rows another process holds.
    fn next_due_schedule(
        &mut self,
        now: i64,
    ) -> impl Future<Output = StoreResult<Option<ScheduleRow>>> + Send;
    /// The earliest `due_at` of all schedules.
    fn earliest_schedule_due(&mut self) -> impl Future<Output = StoreResult<Option<i64>>> + Send;
    /// Every schedule, by workflow and trigger.
    fn list_schedules(&mut self) -> impl Future<Output = StoreResult<Vec<ScheduleRow>>> + Send;
    /// Deletes a schedule (its fires and trail stay); whether it existed.
    fn delete_schedule(
        &mut self,
        workflow: &str,
        trigger: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Records a window; `false` when it was recorded already (by any process).
    fn insert_fire(&mut self, row: &FireRow) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Sets the run and outcome of a recorded window.
    fn update_fire(&mut self, row: &FireRow) -> impl Future<Output = StoreResult<()>> + Send;
    /// One recorded window.
    fn load_fire(
        &mut self,
        workflow: &str,
        trigger: &str,
        scheduled_at: i64,
    ) -> impl Future<Output = StoreResult<Option<FireRow>>> + Send;
    /// The latest `limit` recorded windows, newest first.
    fn fires(
        &mut self,
        workflow: &str,
        trigger: &str,
        limit: i64,
    ) -> impl Future<Output = StoreResult<Vec<FireRow>>> + Send;
    /// Appends to a schedule's trail (the id is the next in that trail).
    fn append_schedule_event(
        &mut self,
        row: &ScheduleEventRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A schedule's trail, oldest first.
    fn schedule_events(
        &mut self,
        workflow: &str,
        trigger: &str,
    ) -> impl Future<Output = StoreResult<Vec<ScheduleEventRow>>> + Send;
}

const PUT: &str = "INSERT INTO schedules (workflow, trigger_name, definition_hash, cron, timezone, policy, queue, state, next_fire_at, due_at, queued_at, last_fired_at, last_run_id, missed, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (workflow, trigger_name) DO UPDATE SET definition_hash = excluded.definition_hash, cron = excluded.cron, timezone = excluded.timezone, policy = excluded.policy, queue = excluded.queue, state = excluded.state, next_fire_at = excluded.next_fire_at, due_at = excluded.due_at, queued_at = excluded.queued_at, last_fired_at = excluded.last_fired_at, last_run_id = excluded.last_run_id, missed = excluded.missed, updated_at = excluded.updated_at";
const EARLIEST: &str = "SELECT MIN(due_at) AS due_at FROM schedules WHERE due_at IS NOT NULL";
const DELETE: &str = "DELETE FROM schedules WHERE workflow = $1 AND trigger_name = $2";
const INSERT_FIRE: &str = "INSERT INTO schedule_fires (workflow, trigger_name, scheduled_at, outcome, origin, run_id, fired_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workflow, trigger_name, scheduled_at) DO NOTHING";
const UPDATE_FIRE: &str = "UPDATE schedule_fires SET outcome = $4, run_id = $5, fired_at = $6 WHERE workflow = $1 AND trigger_name = $2 AND scheduled_at = $3";
const APPEND_EVENT: &str = "INSERT INTO schedule_events (id, workflow, trigger_name, kind, actor, comment, detail, occurred_at) SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM schedule_events WHERE workflow = $1 AND trigger_name = $2";

impl<T: Statements> ScheduleTx for T {
    async fn put_schedule(&mut self, r: &ScheduleRow) -> StoreResult<()> {
        let args = [
            Arg::Text(&r.workflow),
            Arg::Text(&r.trigger_name),
            Arg::Text(&r.definition_hash),
            Arg::Text(&r.cron),
            Arg::Text(&r.timezone),
            Arg::Text(&r.policy),
            Arg::Text(&r.queue),
            Arg::Text(r.state.as_str()),
            Arg::OptInt(r.next_fire_at),
            Arg::OptInt(r.due_at),
            Arg::OptInt(r.queued_at),
            Arg::OptInt(r.last_fired_at),
            Arg::OptText(r.last_run_id.as_deref()),
            Arg::Int(r.missed),
            Arg::Int(r.created_at),
            Arg::Int(r.updated_at),
        ];
        self.execute(PUT, &args).await?;
        Ok(())
    }

    async fn load_schedule(
        &mut self,
        workflow: &str,
        trigger: &str,
        lock: Lock,
    ) -> StoreResult<Option<ScheduleRow>> {
        let sql = format!(
            "SELECT {} FROM schedules WHERE workflow = $1 AND trigger_name = $2{}",
            ScheduleRow::COLUMNS,
            lock.suffix(T::LOCK)
        );
        self.fetch_optional(&sql, &[Arg::Text(workflow), Arg::Text(trigger)])
            .await
    }

    async fn next_due_schedule(&mut self, now: i64) -> StoreResult<Option<ScheduleRow>> {
        let sql = format!(
            "SELECT {} FROM schedules WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT 1{}",
            ScheduleRow::COLUMNS,
            T::SKIP
        );
        self.fetch_optional(&sql, &[Arg::Int(now)]).await
    }

    async fn earliest_schedule_due(&mut self) -> StoreResult<Option<i64>> {
        let row: Option<EarliestRow> = self.fetch_optional(EARLIEST, &[]).await?;
        Ok(row.and_then(|r| r.due_at))
    }

    async fn list_schedules(&mut self) -> StoreResult<Vec<ScheduleRow>> {
        let sql = format!(
            "SELECT {} FROM schedules ORDER BY workflow, trigger_name",
            ScheduleRow::COLUMNS
        );
        self.fetch_all(&sql, &[]).await
    }

    async fn delete_schedule(&mut self, workflow: &str, trigger: &str) -> StoreResult<bool> {
        let n = self
            .execute(DELETE, &[Arg::Text(workflow), Arg::Text(trigger)])
            .await?;
        Ok(n == 1)
    }

    async fn insert_fire(&mut self, r: &FireRow) -> StoreResult<bool> {
        let args = [
            Arg::Text(&r.workflow),
            Arg::Text(&r.trigger_name),
            Arg::Int(r.scheduled_at),
            Arg::Text(r.outcome.as_str()),
            Arg::Text(r.origin.as_str()),
            Arg::OptText(r.run_id.as_deref()),
            Arg::Int(r.fired_at),
        ];
        Ok(self.execute(INSERT_FIRE, &args).await? == 1)
    }

    async fn update_fire(&mut self, r: &FireRow) -> StoreResult<()> {
        let args = [
            Arg::Text(&r.workflow),
            Arg::Text(&r.trigger_name),
            Arg::Int(r.scheduled_at),
            Arg::Text(r.outcome.as_str()),
            Arg::OptText(r.run_id.as_deref()),
            Arg::Int(r.fired_at),
        ];
        self.execute(UPDATE_FIRE, &args).await?;
        Ok(())
    }

    async fn load_fire(
        &mut self,
        workflow: &str,
        trigger: &str,
        scheduled_at: i64,
    ) -> StoreResult<Option<FireRow>> {
        let sql = format!(
            "SELECT {} FROM schedule_fires WHERE workflow = $1 AND trigger_name = $2 AND scheduled_at = $3",
            FireRow::COLUMNS
        );
        let args = [
            Arg::Text(workflow),
            Arg::Text(trigger),
            Arg::Int(scheduled_at),
        ];
        self.fetch_optional(&sql, &args).await
    }

    async fn fires(
        &mut self,
        workflow: &str,
        trigger: &str,
        limit: i64,
    ) -> StoreResult<Vec<FireRow>> {
        let sql = format!(
            "SELECT {} FROM schedule_fires WHERE workflow = $1 AND trigger_name = $2 ORDER BY scheduled_at DESC LIMIT $3",
            FireRow::COLUMNS
        );
        let args = [Arg::Text(workflow), Arg::Text(trigger), Arg::Int(limit)];
        self.fetch_all(&sql, &args).await
    }

    async fn append_schedule_event(&mut self, r: &ScheduleEventRow) -> StoreResult<()> {
        let args = [
            Arg::Text(&r.workflow),
            Arg::Text(&r.trigger_name),
            Arg::Text(r.kind.as_str()),
            Arg::OptText(r.actor.as_deref()),
            Arg::OptText(r.comment.as_deref()),
            Arg::Text(&r.detail),
            Arg::Int(r.occurred_at),
        ];
        self.execute(APPEND_EVENT, &args).await?;
        Ok(())
    }

    async fn schedule_events(
        &mut self,
        workflow: &str,
        trigger: &str,
    ) -> StoreResult<Vec<ScheduleEventRow>> {
        let sql = format!(
            "SELECT {} FROM schedule_events WHERE workflow = $1 AND trigger_name = $2 ORDER BY id",
            ScheduleEventRow::COLUMNS
        );
        self.fetch_all(&sql, &[Arg::Text(workflow), Arg::Text(trigger)])
            .await
    }
}
