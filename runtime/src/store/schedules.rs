//! The statements of schedules: their rows, the windows they fired and their audit trail.
//!
//! A separate trait from [`StoreTx`] because only the pooled transactions of a store
//! ([`Store::Tx`](super::Store::Tx)) run them; the group-commit lanes never do. One macro
//! writes both implementations; only the row-lock suffixes differ.

use std::future::Future;

use super::{Finish, PgTx, SqliteTx, StoreResult, StoreTx};
use crate::vocab::{FireOrigin, FireOutcome, ScheduleEventKind, ScheduleState};

/// One row of `schedules`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScheduleRow {
    /// Workflow name.
    pub workflow: String,
    /// The cron trigger.
    pub trigger_name: String,
    /// The pinned definition runs start from.
    pub definition_hash: String,
    /// Cron expression.
    pub cron: String,
    /// IANA zone.
    pub timezone: String,
    /// JSON of the policy.
    pub policy: String,
    /// Queue of the runs.
    pub queue: String,
    /// Whether it fires.
    #[sqlx(try_from = "String")]
    pub state: ScheduleState,
    /// First window not yet handled.
    pub next_fire_at: Option<i64>,
    /// When a scheduler must look next.
    pub due_at: Option<i64>,
    /// A window waiting for the previous run (overlap `queue_one`).
    pub queued_at: Option<i64>,
    /// Latest window that started a run.
    pub last_fired_at: Option<i64>,
    /// The run it started.
    pub last_run_id: Option<String>,
    /// Windows given up by the catch-up policy.
    pub missed: i64,
    /// Created.
    pub created_at: i64,
    /// Last written.
    pub updated_at: i64,
}

/// One row of `schedule_fires`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FireRow {
    /// Workflow name.
    pub workflow: String,
    /// The cron trigger.
    pub trigger_name: String,
    /// The window.
    pub scheduled_at: i64,
    /// What happened to the window.
    #[sqlx(try_from = "String")]
    pub outcome: FireOutcome,
    /// Who handled it.
    #[sqlx(try_from = "String")]
    pub origin: FireOrigin,
    /// The run started for it.
    pub run_id: Option<String>,
    /// When it was handled.
    pub fired_at: i64,
}

/// One row of `schedule_events`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScheduleEventRow {
    /// Position in the schedule's trail.
    pub id: i64,
    /// Workflow name.
    pub workflow: String,
    /// The cron trigger.
    pub trigger_name: String,
    /// What happened.
    #[sqlx(try_from = "String")]
    pub kind: ScheduleEventKind,
    /// Who.
    pub actor: Option<String>,
    /// Why.
    pub comment: Option<String>,
    /// JSON details.
    pub detail: String,
    /// When.
    pub occurred_at: i64,
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
        lock: bool,
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

const COLUMNS: &str = "workflow, trigger_name, definition_hash, cron, timezone, policy, queue, state, next_fire_at, due_at, queued_at, last_fired_at, last_run_id, missed, created_at, updated_at";

const PUT: &str = "INSERT INTO schedules (workflow, trigger_name, definition_hash, cron, timezone, policy, queue, state, next_fire_at, due_at, queued_at, last_fired_at, last_run_id, missed, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (workflow, trigger_name) DO UPDATE SET definition_hash = excluded.definition_hash, cron = excluded.cron, timezone = excluded.timezone, policy = excluded.policy, queue = excluded.queue, state = excluded.state, next_fire_at = excluded.next_fire_at, due_at = excluded.due_at, queued_at = excluded.queued_at, last_fired_at = excluded.last_fired_at, last_run_id = excluded.last_run_id, missed = excluded.missed, updated_at = excluded.updated_at";
const EARLIEST: &str = "SELECT MIN(due_at) FROM schedules WHERE due_at IS NOT NULL";
const DELETE: &str = "DELETE FROM schedules WHERE workflow = $1 AND trigger_name = $2";
const INSERT_FIRE: &str = "INSERT INTO schedule_fires (workflow, trigger_name, scheduled_at, outcome, origin, run_id, fired_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workflow, trigger_name, scheduled_at) DO NOTHING";
const UPDATE_FIRE: &str = "UPDATE schedule_fires SET outcome = $4, run_id = $5, fired_at = $6 WHERE workflow = $1 AND trigger_name = $2 AND scheduled_at = $3";
const FIRE_COLUMNS: &str =
    "workflow, trigger_name, scheduled_at, outcome, origin, run_id, fired_at";
const APPEND_EVENT: &str = "INSERT INTO schedule_events (id, workflow, trigger_name, kind, actor, comment, detail, occurred_at) SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM schedule_events WHERE workflow = $1 AND trigger_name = $2";
const EVENTS: &str = "SELECT id, workflow, trigger_name, kind, actor, comment, detail, occurred_at FROM schedule_events WHERE workflow = $1 AND trigger_name = $2 ORDER BY id";

macro_rules! impl_schedule_tx {
    ($tx:ty, lock = $lock:literal, skip = $skip:literal) => {
        impl ScheduleTx for $tx {
            async fn put_schedule(&mut self, r: &ScheduleRow) -> StoreResult<()> {
                Finish::flush(self).await?;
                sqlx::query(PUT)
                    .bind(&r.workflow)
                    .bind(&r.trigger_name)
                    .bind(&r.definition_hash)
                    .bind(&r.cron)
                    .bind(&r.timezone)
                    .bind(&r.policy)
                    .bind(&r.queue)
                    .bind(r.state.as_str())
                    .bind(r.next_fire_at)
                    .bind(r.due_at)
                    .bind(r.queued_at)
                    .bind(r.last_fired_at)
                    .bind(&r.last_run_id)
                    .bind(r.missed)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn load_schedule(
                &mut self,
                workflow: &str,
                trigger: &str,
                lock: bool,
            ) -> StoreResult<Option<ScheduleRow>> {
                Finish::flush(self).await?;
                let sql = format!(
                    "SELECT {COLUMNS} FROM schedules WHERE workflow = $1 AND trigger_name = $2{}",
                    if lock { $lock } else { "" }
                );
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(workflow)
                    .bind(trigger)
                    .fetch_optional(&mut **self)
                    .await?)
            }

            async fn next_due_schedule(&mut self, now: i64) -> StoreResult<Option<ScheduleRow>> {
                Finish::flush(self).await?;
                let sql = format!(
                    "SELECT {COLUMNS} FROM schedules WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT 1{}",
                    $skip
                );
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .fetch_optional(&mut **self)
                    .await?)
            }

            async fn earliest_schedule_due(&mut self) -> StoreResult<Option<i64>> {
                Finish::flush(self).await?;
                let row: (Option<i64>,) = sqlx::query_as(EARLIEST).fetch_one(&mut **self).await?;
                Ok(row.0)
            }

            async fn list_schedules(&mut self) -> StoreResult<Vec<ScheduleRow>> {
                Finish::flush(self).await?;
                let sql =
                    format!("SELECT {COLUMNS} FROM schedules ORDER BY workflow, trigger_name");
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut **self)
                    .await?)
            }

            async fn delete_schedule(&mut self, workflow: &str, trigger: &str) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = sqlx::query(DELETE)
                    .bind(workflow)
                    .bind(trigger)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_fire(&mut self, r: &FireRow) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = sqlx::query(INSERT_FIRE)
                    .bind(&r.workflow)
                    .bind(&r.trigger_name)
                    .bind(r.scheduled_at)
                    .bind(r.outcome.as_str())
                    .bind(r.origin.as_str())
                    .bind(&r.run_id)
                    .bind(r.fired_at)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_fire(&mut self, r: &FireRow) -> StoreResult<()> {
                Finish::flush(self).await?;
                sqlx::query(UPDATE_FIRE)
                    .bind(&r.workflow)
                    .bind(&r.trigger_name)
                    .bind(r.scheduled_at)
                    .bind(r.outcome.as_str())
                    .bind(&r.run_id)
                    .bind(r.fired_at)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn load_fire(
                &mut self,
                workflow: &str,
                trigger: &str,
                scheduled_at: i64,
            ) -> StoreResult<Option<FireRow>> {
                Finish::flush(self).await?;
                let sql = format!(
                    "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE workflow = $1 AND trigger_name = $2 AND scheduled_at = $3"
                );
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(workflow)
                    .bind(trigger)
                    .bind(scheduled_at)
                    .fetch_optional(&mut **self)
                    .await?)
            }

            async fn fires(
                &mut self,
                workflow: &str,
                trigger: &str,
                limit: i64,
            ) -> StoreResult<Vec<FireRow>> {
                Finish::flush(self).await?;
                let sql = format!(
                    "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE workflow = $1 AND trigger_name = $2 ORDER BY scheduled_at DESC LIMIT $3"
                );
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(workflow)
                    .bind(trigger)
                    .bind(limit)
                    .fetch_all(&mut **self)
                    .await?)
            }

            async fn append_schedule_event(&mut self, r: &ScheduleEventRow) -> StoreResult<()> {
                Finish::flush(self).await?;
                sqlx::query(APPEND_EVENT)
                    .bind(&r.workflow)
                    .bind(&r.trigger_name)
                    .bind(r.kind.as_str())
                    .bind(&r.actor)
                    .bind(&r.comment)
                    .bind(&r.detail)
                    .bind(r.occurred_at)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn schedule_events(
                &mut self,
                workflow: &str,
                trigger: &str,
            ) -> StoreResult<Vec<ScheduleEventRow>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(EVENTS)
                    .bind(workflow)
                    .bind(trigger)
                    .fetch_all(&mut **self)
                    .await?)
            }
        }
    };
}

impl_schedule_tx!(SqliteTx, lock = "", skip = "");
impl_schedule_tx!(PgTx, lock = " FOR UPDATE", skip = " FOR UPDATE SKIP LOCKED");
