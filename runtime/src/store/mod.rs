//! Storage: the only module that speaks SQL.
//!
//! One [`Store`] trait (begin a read or write transaction, heartbeat a claim) and one
//! [`StoreTx`] trait (the statements of a transaction), implemented for SQLite and Postgres
//! with sqlx. The SQL text is shared: both dialects accept `$n` parameters, `RETURNING` and
//! partial indexes; the only differences (row locks, `SKIP LOCKED`, the write transaction's
//! `BEGIN IMMEDIATE`) are passed to one macro that writes both implementations. The values a
//! row write binds come from one list per statement (`RunRow::update_args` and the like),
//! shared by the sqlx drivers, SQLite's embedded writer (`direct`) and Postgres' held-back
//! writes (`PgTx`).

/// Binds `args` to a sqlx query, in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for a in $args {
            q = match a {
                Arg::Text(v) => q.bind(v),
                Arg::OptText(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::OptInt(v) => q.bind(v),
            };
        }
        q
    }};
}

mod direct;
mod postgres;
mod schedules;
mod sqlite;

use std::future::Future;

use crate::vocab::{AttemptStatus, RunStatus};

/// A column holding one of the vocabulary's enums, parsed where the row is read: unknown
/// text is a decode error of the driver, so no row with a bad status leaves the store.
fn decode_column<T>(text: String, parse: fn(&str) -> Option<T>) -> Result<T, sqlx::Error> {
    parse(&text).ok_or_else(|| sqlx::Error::Decode(format!("unknown status {text:?}").into()))
}
pub use postgres::{PgTx, PostgresStore};
pub use schedules::{FireRow, ScheduleEventRow, ScheduleRow, ScheduleTx};
pub use sqlite::{SqliteStore, SqliteTx, Synchronous};

/// A storage failure. [`StoreError::is_retryable`] tells passing trouble (connection,
/// contention, serialization, a busy database) from lasting trouble (a constraint, a value
/// that does not decode, a failed migration).
///
/// The driver's error is shown in the message and is not also the `source()`, so a printed
/// chain says it once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an error or could not be reached.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A migration could not be applied.
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The engine's group-commit lane is gone (the engine was closed, or the runtime that ran
    /// the lane ended); the next call starts a new one.
    #[error("the engine's group-commit lane stopped")]
    LaneGone,
    /// A group commit shared by several calls failed; each call gets this copy.
    #[error("group commit failed: {message}")]
    GroupCommit {
        /// The failure.
        message: String,
        /// Whether the failure was passing.
        retryable: bool,
    },
    /// The store was configured with an unusable setting (a schema name, say).
    #[error("invalid store setting: {0}")]
    InvalidSetting(String),
    /// SQLite's embedded writer reported an error (`code`: SQLite's extended result code).
    #[error("database error: {message}")]
    Sqlite {
        /// SQLite's extended result code, when SQLite produced the error.
        code: Option<i32>,
        /// What went wrong.
        message: String,
    },
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {what}: {message}")]
    Corrupt {
        /// Which value.
        what: String,
        /// Why.
        message: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl StoreError {
    /// Whether retrying may succeed: connection trouble, contention (SQLite busy or locked,
    /// a Postgres serialization failure or deadlock), resource limits. A constraint
    /// violation, a value that does not decode, bad SQL, a setting or a migration are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => sqlx_retryable(e),
            Self::Sqlite { code, .. } => code.is_none_or(sqlite_retryable),
            Self::GroupCommit { retryable, .. } => *retryable,
            Self::LaneGone => true,
            Self::Migrate(_) | Self::InvalidSetting(_) | Self::Corrupt { .. } => false,
        }
    }
}

/// Whether SQLite's (extended) result code is passing: busy, locked, I/O, full, cannot open.
fn sqlite_retryable(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)
}

fn sqlx_retryable(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if !matches!(db.kind(), ErrorKind::Other) {
                // Unique, foreign key, not-null and check violations.
                return false;
            }
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            match code.parse::<i32>() {
                // SQLite reports its numeric result code.
                Ok(n) => sqlite_retryable(n),
                // Postgres SQLSTATE: data exceptions (22), integrity (23), syntax or access
                // (42) and similar are lasting; the rest (serialization 40001, deadlock
                // 40P01, connection 08, shutdown 57P, resources 53, lock 55P03) pass.
                Err(_) => !matches!(code.get(..2), Some("22" | "23" | "42" | "0A" | "2B" | "3F")),
            }
        }
        _ => false,
    }
}

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub(crate) run_id: String,
    pub(crate) workflow: String,
    pub(crate) version: Option<String>,
    pub(crate) fingerprint: String,
    pub(crate) definition_hash: String,
    pub(crate) trigger_name: String,
    pub(crate) queue: String,
    pub(crate) status: RunStatus,
    pub(crate) input: String,
    pub(crate) context: String,
    pub(crate) steps: String,
    pub(crate) manual: Option<String>,
    pub(crate) compensation: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) payload_hash: String,
    pub(crate) parent_run_id: Option<String>,
    pub(crate) replayed_from: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) revision: i64,
}

/// One row of `attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub(crate) runnable_key: String,
    pub(crate) run_id: String,
    pub(crate) step: String,
    pub(crate) attempt: i64,
    pub(crate) seq: i64,
    pub(crate) queue: String,
    pub(crate) status: AttemptStatus,
    pub(crate) visible_at: i64,
    pub(crate) due_at: Option<i64>,
    pub(crate) claim_id: Option<String>,
    pub(crate) claim_token_hash: Option<String>,
    pub(crate) owner: Option<String>,
    pub(crate) lease_until: Option<i64>,
    pub(crate) claims: i64,
    pub(crate) input: String,
    pub(crate) outcome: Option<String>,
    pub(crate) deadline: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// One journal fact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactRow {
    pub(crate) id: i64,
    pub(crate) run_id: String,
    pub(crate) kind: String,
    pub(crate) data: String,
    pub(crate) occurred_at: i64,
}

/// The row a listing reads per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub(crate) run_id: String,
    pub(crate) workflow: String,
    pub(crate) version: Option<String>,
    pub(crate) trigger_name: String,
    pub(crate) queue: String,
    pub(crate) status: RunStatus,
    pub(crate) steps: String,
    pub(crate) manual: Option<String>,
    pub(crate) parent_run_id: Option<String>,
    pub(crate) replayed_from: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// A child run as listed for its parent: (parent step, child key, child run id, the child's
/// workflow and status when the child exists).
pub type ChildRow = (String, String, String, Option<String>, Option<String>);

/// An open attempt's deadline: (run id, step, runnable key, deadline JSON).
pub type DeadlineRow = (String, String, String, String);

/// A listing query over `runs`: every filter optional, keyset position, page size.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub(crate) workflow: Option<String>,
    pub(crate) statuses: Vec<String>,
    pub(crate) queue: Option<String>,
    pub(crate) created_from: Option<i64>,
    pub(crate) created_before: Option<i64>,
    /// A lower-case `LIKE` pattern with `\` escapes.
    pub(crate) search: Option<String>,
    pub(crate) after: Option<(i64, String)>,
    pub(crate) limit: i64,
}

/// One bound value. Every driver binds a row's values from the same list, in the order of
/// the shared SQL's `$n` parameters.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

impl RunRow {
    /// The values of `sql::insert_run()`.
    fn insert_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Text(&self.workflow),
            Arg::OptText(self.version.as_deref()),
            Arg::Text(&self.fingerprint),
            Arg::Text(&self.definition_hash),
            Arg::Text(&self.trigger_name),
            Arg::Text(&self.queue),
            Arg::Text(self.status.as_str()),
            Arg::Text(&self.input),
            Arg::Text(&self.context),
            Arg::Text(&self.steps),
            Arg::OptText(self.manual.as_deref()),
            Arg::OptText(self.compensation.as_deref()),
            Arg::OptText(self.error.as_deref()),
            Arg::OptText(self.idempotency_key.as_deref()),
            Arg::Text(&self.payload_hash),
            Arg::OptText(self.parent_run_id.as_deref()),
            Arg::OptText(self.replayed_from.as_deref()),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
            Arg::Int(self.revision),
        ]
    }

    /// The values of `sql::UPDATE_RUN`.
    fn update_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Text(self.status.as_str()),
            Arg::Text(&self.context),
            Arg::Text(&self.steps),
            Arg::OptText(self.manual.as_deref()),
            Arg::OptText(self.error.as_deref()),
            Arg::Int(self.updated_at),
            Arg::Int(self.revision),
            Arg::OptText(self.compensation.as_deref()),
        ]
    }
}

impl AttemptRow {
    /// The values of `sql::insert_attempt()`.
    fn insert_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Text(&self.run_id),
            Arg::Text(&self.step),
            Arg::Int(self.attempt),
            Arg::Int(self.seq),
            Arg::Text(&self.queue),
            Arg::Text(self.status.as_str()),
            Arg::Int(self.visible_at),
            Arg::OptInt(self.due_at),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::OptText(self.claim_token_hash.as_deref()),
            Arg::OptText(self.owner.as_deref()),
            Arg::OptInt(self.lease_until),
            Arg::Int(self.claims),
            Arg::Text(&self.input),
            Arg::OptText(self.outcome.as_deref()),
            Arg::OptText(self.deadline.as_deref()),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
        ]
    }

    /// The values of `sql::UPDATE_ATTEMPT`.
    fn update_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Text(self.status.as_str()),
            Arg::Int(self.visible_at),
            Arg::OptInt(self.due_at),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::OptText(self.claim_token_hash.as_deref()),
            Arg::OptText(self.owner.as_deref()),
            Arg::OptInt(self.lease_until),
            Arg::Int(self.claims),
            Arg::OptText(self.outcome.as_deref()),
            Arg::Int(self.updated_at),
        ]
    }
}

impl ListQuery {
    /// The SQL and its arguments; the same text for both databases.
    fn sql(&self) -> (String, Vec<Arg<'_>>) {
        let mut args = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        fn push<'a>(args: &mut Vec<Arg<'a>>, a: Arg<'a>) -> String {
            args.push(a);
            format!("${}", args.len())
        }
        if let Some(w) = &self.workflow {
            let p = push(&mut args, Arg::Text(w));
            clauses.push(format!("workflow = {p}"));
        }
        if !self.statuses.is_empty() {
            let ps: Vec<String> = self
                .statuses
                .iter()
                .map(|s| push(&mut args, Arg::Text(s)))
                .collect();
            clauses.push(format!("status IN ({})", ps.join(", ")));
        }
        if let Some(q) = &self.queue {
            let p = push(&mut args, Arg::Text(q));
            clauses.push(format!("queue = {p}"));
        }
        if let Some(t) = self.created_from {
            let p = push(&mut args, Arg::Int(t));
            clauses.push(format!("created_at >= {p}"));
        }
        if let Some(t) = self.created_before {
            let p = push(&mut args, Arg::Int(t));
            clauses.push(format!("created_at < {p}"));
        }
        if let Some(pattern) = &self.search {
            let mut ors = Vec::new();
            for col in ["run_id", "workflow", "trigger_name"] {
                let p = push(&mut args, Arg::Text(pattern));
                ors.push(format!("LOWER({col}) LIKE {p} ESCAPE '\\'"));
            }
            let p = push(&mut args, Arg::Text(pattern));
            ors.push(format!(
                "EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = runs.run_id AND LOWER(a.step) LIKE {p} ESCAPE '\\')"
            ));
            clauses.push(format!("({})", ors.join(" OR ")));
        }
        if let Some((at, id)) = &self.after {
            let pa = push(&mut args, Arg::Int(*at));
            let pb = push(&mut args, Arg::Text(id));
            clauses.push(format!("(created_at, run_id) < ({pa}, {pb})"));
        }
        let limit = push(&mut args, Arg::Int(self.limit));
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (
            format!(
                "SELECT run_id, workflow, version, trigger_name, queue, status, steps, manual, parent_run_id, replayed_from, created_at, updated_at FROM runs{filter} ORDER BY created_at DESC, run_id DESC LIMIT {limit}"
            ),
            args,
        )
    }
}

/// A database holding Squid Mesh's tables.
pub trait Store: Clone + Send + Sync + 'static {
    /// The transaction type.
    type Tx: StoreTx + ScheduleTx;

    /// Applies the embedded migrations.
    fn migrate(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// Begins a transaction that will write (SQLite: `BEGIN IMMEDIATE` on the writer).
    fn begin_write(&self) -> impl Future<Output = StoreResult<Self::Tx>> + Send;

    /// Begins a transaction that only reads (SQLite: on the read pool).
    fn begin_read(&self) -> impl Future<Output = StoreResult<Self::Tx>> + Send;

    /// Waits for wake-ups from other processes and calls `wake` for each, until dropped;
    /// calls `listening` once the first subscription holds. Returns at once (after
    /// `listening`) where the database has no notifications (SQLite: workers poll).
    fn listen(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        listening: Box<dyn FnOnce() + Send>,
    ) -> impl Future<Output = ()> + Send;

    /// The stored status of a run, read outside any transaction (one statement).
    fn run_status(&self, run_id: &str) -> impl Future<Output = StoreResult<Option<String>>> + Send;

    /// Extends a claim's lease if the claim still holds; returns whether it did.
    fn heartbeat(
        &self,
        runnable_key: &str,
        claim_id: &str,
        token_hash: &str,
        now: i64,
        lease_until: i64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

/// Where a group-commit lane begins its write transactions: a store's pool, or the
/// connection of SQLite's embedded writer.
pub(crate) trait WriteSource: Send {
    /// The transaction type.
    type Tx<'a>: StoreTx
    where
        Self: 'a;

    /// Begins a write transaction.
    fn begin(&mut self) -> impl Future<Output = StoreResult<Self::Tx<'_>>> + Send;
}

/// A store's own write transactions.
pub(crate) struct Pooled<S>(pub(crate) S);

impl<S: Store> WriteSource for Pooled<S> {
    type Tx<'a>
        = S::Tx
    where
        Self: 'a;

    fn begin(&mut self) -> impl Future<Output = StoreResult<S::Tx>> + Send {
        self.0.begin_write()
    }
}

/// The connection of SQLite's embedded writer.
pub(crate) struct Direct(rusqlite::Connection);

impl WriteSource for Direct {
    type Tx<'a> = direct::DirectTx<'a>;

    async fn begin(&mut self) -> StoreResult<direct::DirectTx<'_>> {
        direct::DirectTx::begin(&mut self.0)
    }
}

/// The statements of one transaction.
pub trait StoreTx: Send {
    /// Commits.
    fn commit(self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Stores a definition body under its hash, if absent.
    fn insert_definition(
        &mut self,
        hash: &str,
        workflow: &str,
        fingerprint: &str,
        body: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The body of a definition.
    fn load_definition(
        &mut self,
        hash: &str,
    ) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// Inserts a run; false when the id exists already.
    fn insert_run(&mut self, run: &RunRow) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Loads a run, locking its row for the rest of the transaction when `lock` is set.
    fn load_run(
        &mut self,
        run_id: &str,
        lock: bool,
    ) -> impl Future<Output = StoreResult<Option<RunRow>>> + Send;
    /// Loads an attempt and its run in one statement, locking both (run first) when `lock`
    /// is set; `None` when either is missing.
    fn load_attempt_and_run(
        &mut self,
        runnable_key: &str,
        lock: bool,
    ) -> impl Future<Output = StoreResult<Option<(AttemptRow, RunRow)>>> + Send;
    /// Writes the mutable columns of a run.
    fn update_run(&mut self, run: &RunRow) -> impl Future<Output = StoreResult<()>> + Send;
    /// Appends facts to a run's journal.
    fn append_facts(
        &mut self,
        run_id: &str,
        facts: &[(String, String)],
        at: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The journal of a run, oldest first.
    fn facts(&mut self, run_id: &str) -> impl Future<Output = StoreResult<Vec<FactRow>>> + Send;
    /// Inserts an attempt.
    fn insert_attempt(
        &mut self,
        attempt: &AttemptRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Loads an attempt, locking it when `lock` is set.
    fn load_attempt(
        &mut self,
        runnable_key: &str,
        lock: bool,
    ) -> impl Future<Output = StoreResult<Option<AttemptRow>>> + Send;
    /// Writes the mutable columns of an attempt.
    fn update_attempt(
        &mut self,
        attempt: &AttemptRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The attempts of a run, oldest first.
    fn run_attempts(
        &mut self,
        run_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<AttemptRow>>> + Send;
    /// The oldest attempt on `queue` due at `now` (visible, lease expired, or recorded but not
    /// applied), locked and skipped by concurrent claimers where the database can, with its
    /// run (read, not locked), in one statement.
    fn next_due_with_run(
        &mut self,
        queue: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<Option<(AttemptRow, RunRow)>>> + Send;
    /// The oldest scheduled attempt of `run_id` on `queue` that is visible at `now`, locked
    /// and skipped by concurrent claimers where the database can.
    fn next_due_of_run(
        &mut self,
        run_id: &str,
        queue: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<Option<AttemptRow>>> + Send;
    /// Settles every open attempt of a run with `status` (the run ended).
    fn close_open_attempts(
        &mut self,
        run_id: &str,
        status: AttemptStatus,
        now: i64,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Records a command's idempotency key; false when the key exists already.
    fn insert_command(
        &mut self,
        key: &str,
        kind: &str,
        run_id: &str,
        result_run_id: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The (kind, run id, result run id) recorded for a command key.
    fn load_command(
        &mut self,
        key: &str,
    ) -> impl Future<Output = StoreResult<Option<(String, String, String)>>> + Send;
    /// Links a child run to its parent step and key; false when the link exists already.
    fn insert_child(
        &mut self,
        parent: &str,
        step: &str,
        key: &str,
        child: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The child run linked to a parent step and key.
    fn load_child(
        &mut self,
        parent: &str,
        step: &str,
        key: &str,
    ) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// The child runs of a parent, oldest first: (step, key, child run id).
    fn children(
        &mut self,
        parent: &str,
    ) -> impl Future<Output = StoreResult<Vec<(String, String, String)>>> + Send;
    /// The child runs of a parent with each child's workflow and status, oldest first.
    fn child_summaries(
        &mut self,
        parent: &str,
    ) -> impl Future<Output = StoreResult<Vec<ChildRow>>> + Send;
    /// Tells workers in other processes that `queue` has new work, at commit (Postgres
    /// `NOTIFY`; nothing on SQLite, whose workers poll).
    fn notify_queue(&mut self, queue: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// A page of run summaries, newest first (`limit` rows at most).
    fn list_runs(
        &mut self,
        query: &ListQuery,
    ) -> impl Future<Output = StoreResult<Vec<SummaryRow>>> + Send;
    /// The deadlines of the open attempts of these runs.
    fn open_deadlines(
        &mut self,
        run_ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<DeadlineRow>>> + Send;
}

const RUN_COLUMNS: &str = "run_id, workflow, version, fingerprint, definition_hash, trigger_name, queue, status, input, context, steps, manual, compensation, error, idempotency_key, payload_hash, parent_run_id, replayed_from, created_at, updated_at, revision";
const ATTEMPT_COLUMNS: &str = "runnable_key, run_id, step, attempt, seq, queue, status, visible_at, due_at, claim_id, claim_token_hash, owner, lease_until, claims, input, outcome, deadline, created_at, updated_at";

macro_rules! run_from_row {
    ($r:expr) => {
        run_from_row!($r, "")
    };
    ($r:expr, $p:literal) => {{
        use sqlx::Row as _;
        let r = $r;
        RunRow {
            run_id: r.try_get(concat!($p, "run_id"))?,
            workflow: r.try_get(concat!($p, "workflow"))?,
            version: r.try_get(concat!($p, "version"))?,
            fingerprint: r.try_get(concat!($p, "fingerprint"))?,
            definition_hash: r.try_get(concat!($p, "definition_hash"))?,
            trigger_name: r.try_get(concat!($p, "trigger_name"))?,
            queue: r.try_get(concat!($p, "queue"))?,
            status: decode_column(
                r.try_get::<String, _>(concat!($p, "status"))?,
                RunStatus::parse,
            )?,
            input: r.try_get(concat!($p, "input"))?,
            context: r.try_get(concat!($p, "context"))?,
            steps: r.try_get(concat!($p, "steps"))?,
            manual: r.try_get(concat!($p, "manual"))?,
            compensation: r.try_get(concat!($p, "compensation"))?,
            error: r.try_get(concat!($p, "error"))?,
            idempotency_key: r.try_get(concat!($p, "idempotency_key"))?,
            payload_hash: r.try_get(concat!($p, "payload_hash"))?,
            parent_run_id: r.try_get(concat!($p, "parent_run_id"))?,
            replayed_from: r.try_get(concat!($p, "replayed_from"))?,
            created_at: r.try_get(concat!($p, "created_at"))?,
            updated_at: r.try_get(concat!($p, "updated_at"))?,
            revision: r.try_get(concat!($p, "revision"))?,
        }
    }};
}

macro_rules! attempt_from_row {
    ($r:expr) => {{
        use sqlx::Row as _;
        let r = $r;
        AttemptRow {
            runnable_key: r.try_get("runnable_key")?,
            run_id: r.try_get("run_id")?,
            step: r.try_get("step")?,
            attempt: r.try_get("attempt")?,
            seq: r.try_get("seq")?,
            queue: r.try_get("queue")?,
            status: decode_column(r.try_get::<String, _>("status")?, AttemptStatus::parse)?,
            visible_at: r.try_get("visible_at")?,
            due_at: r.try_get("due_at")?,
            claim_id: r.try_get("claim_id")?,
            claim_token_hash: r.try_get("claim_token_hash")?,
            owner: r.try_get("owner")?,
            lease_until: r.try_get("lease_until")?,
            claims: r.try_get("claims")?,
            input: r.try_get("input")?,
            outcome: r.try_get("outcome")?,
            deadline: r.try_get("deadline")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        }
    }};
}

/// Writes `StoreTx` for a sqlx transaction type. `$lock` is appended to
/// single-row reads that lock, `$skip` to the queue read, `$skip_attempt` to the queue read
/// joined with runs (it locks the attempt only).
macro_rules! impl_store_tx {
    ($ty:ty, lock = $lock:literal, skip = $skip:literal, skip_attempt = $skip_attempt:literal, notify = $notify:literal) => {
        impl StoreTx for $ty {
            async fn commit(self) -> StoreResult<()> {
                Finish::finish(self).await
            }

            async fn insert_definition(
                &mut self,
                hash: &str,
                workflow: &str,
                fingerprint: &str,
                body: &str,
                now: i64,
            ) -> StoreResult<()> {
                Finish::flush(self).await?;
                sqlx::query(sql::INSERT_DEFINITION)
                    .bind(hash)
                    .bind(workflow)
                    .bind(fingerprint)
                    .bind(body)
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn load_definition(&mut self, hash: &str) -> StoreResult<Option<String>> {
                Finish::flush(self).await?;
                let body: Option<(String,)> = sqlx::query_as(sql::LOAD_DEFINITION)
                    .bind(hash)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(body.map(|b| b.0))
            }

            async fn insert_run(&mut self, run: &RunRow) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = bind_args!(
                    sqlx::query(sqlx::AssertSqlSafe(sql::insert_run())),
                    run.insert_args()
                )
                .execute(&mut **self)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_run(&mut self, run_id: &str, lock: bool) -> StoreResult<Option<RunRow>> {
                Finish::flush(self).await?;
                let sql = sql::load_run(if lock { $lock } else { "" });
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(run_id)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some(run_from_row!(&r)),
                    None => None,
                })
            }

            async fn load_attempt_and_run(
                &mut self,
                runnable_key: &str,
                lock: bool,
            ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
                Finish::flush(self).await?;
                let sql = sql::load_attempt_and_run(if lock { $lock } else { "" });
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(runnable_key)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some((attempt_from_row!(&r), run_from_row!(&r, "r_"))),
                    None => None,
                })
            }

            async fn update_run(&mut self, run: &RunRow) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(self, Write::Run(run.clone())).await;
                }
                bind_args!(sqlx::query(sql::UPDATE_RUN), run.update_args())
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn append_facts(
                &mut self,
                run_id: &str,
                facts: &[(String, String)],
                at: i64,
            ) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(
                        self,
                        Write::Facts {
                            run_id: run_id.to_owned(),
                            facts: facts.to_vec(),
                            at,
                        },
                    )
                    .await;
                }
                if facts.is_empty() {
                    return Ok(());
                }
                // One statement for all the facts (in order: ids follow the VALUES order).
                let sql = sql::insert_facts(facts.len());
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run_id).bind(at);
                for (kind, data) in facts {
                    q = q.bind(kind).bind(data);
                }
                q.execute(&mut **self).await?;
                Ok(())
            }

            async fn facts(&mut self, run_id: &str) -> StoreResult<Vec<FactRow>> {
                Finish::flush(self).await?;
                let rows = sqlx::query(sql::FACTS)
                    .bind(run_id)
                    .fetch_all(&mut **self)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    use sqlx::Row as _;
                    out.push(FactRow {
                        id: r.try_get("id")?,
                        run_id: r.try_get("run_id")?,
                        kind: r.try_get("kind")?,
                        data: r.try_get("data")?,
                        occurred_at: r.try_get("occurred_at")?,
                    });
                }
                Ok(out)
            }

            async fn insert_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(self, Write::AttemptInsert(a.clone())).await;
                }
                bind_args!(
                    sqlx::query(sqlx::AssertSqlSafe(sql::insert_attempt())),
                    a.insert_args()
                )
                .execute(&mut **self)
                .await?;
                Ok(())
            }

            async fn load_attempt(
                &mut self,
                runnable_key: &str,
                lock: bool,
            ) -> StoreResult<Option<AttemptRow>> {
                Finish::flush(self).await?;
                let sql = sql::load_attempt(if lock { $lock } else { "" });
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(runnable_key)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some(attempt_from_row!(&r)),
                    None => None,
                })
            }

            async fn update_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(self, Write::AttemptUpdate(a.clone())).await;
                }
                bind_args!(sqlx::query(sql::UPDATE_ATTEMPT), a.update_args())
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn run_attempts(&mut self, run_id: &str) -> StoreResult<Vec<AttemptRow>> {
                Finish::flush(self).await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql::run_attempts()))
                    .bind(run_id)
                    .fetch_all(&mut **self)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(attempt_from_row!(r));
                }
                Ok(out)
            }

            async fn next_due_with_run(
                &mut self,
                queue: &str,
                now: i64,
            ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
                Finish::flush(self).await?;
                let sql = sql::next_due_with_run($skip_attempt);
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(queue)
                    .bind(now)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some((attempt_from_row!(&r), run_from_row!(&r, "r_"))),
                    None => None,
                })
            }

            async fn next_due_of_run(
                &mut self,
                run_id: &str,
                queue: &str,
                now: i64,
            ) -> StoreResult<Option<AttemptRow>> {
                Finish::flush(self).await?;
                let sql = sql::next_due_of_run($skip);
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(run_id)
                    .bind(queue)
                    .bind(now)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some(attempt_from_row!(&r)),
                    None => None,
                })
            }

            async fn close_open_attempts(
                &mut self,
                run_id: &str,
                status: AttemptStatus,
                now: i64,
            ) -> StoreResult<u64> {
                Finish::flush(self).await?;
                let done = sqlx::query(sql::CLOSE_OPEN_ATTEMPTS)
                    .bind(run_id)
                    .bind(status.as_str())
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn insert_command(
                &mut self,
                key: &str,
                kind: &str,
                run_id: &str,
                result_run_id: &str,
                now: i64,
            ) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = sqlx::query(sql::INSERT_COMMAND)
                    .bind(key)
                    .bind(kind)
                    .bind(run_id)
                    .bind(result_run_id)
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_command(
                &mut self,
                key: &str,
            ) -> StoreResult<Option<(String, String, String)>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(sql::LOAD_COMMAND)
                    .bind(key)
                    .fetch_optional(&mut **self)
                    .await?)
            }

            async fn insert_child(
                &mut self,
                parent: &str,
                step: &str,
                key: &str,
                child: &str,
                now: i64,
            ) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = sqlx::query(sql::INSERT_CHILD)
                    .bind(parent)
                    .bind(step)
                    .bind(key)
                    .bind(child)
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_child(
                &mut self,
                parent: &str,
                step: &str,
                key: &str,
            ) -> StoreResult<Option<String>> {
                Finish::flush(self).await?;
                let row: Option<(String,)> = sqlx::query_as(sql::LOAD_CHILD)
                    .bind(parent)
                    .bind(step)
                    .bind(key)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(row.map(|r| r.0))
            }

            async fn children(
                &mut self,
                parent: &str,
            ) -> StoreResult<Vec<(String, String, String)>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(sql::CHILDREN)
                    .bind(parent)
                    .fetch_all(&mut **self)
                    .await?)
            }

            async fn child_summaries(&mut self, parent: &str) -> StoreResult<Vec<ChildRow>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(sql::CHILD_SUMMARIES)
                    .bind(parent)
                    .fetch_all(&mut **self)
                    .await?)
            }

            async fn notify_queue(&mut self, queue: &str) -> StoreResult<()> {
                Finish::flush(self).await?;
                if !$notify.is_empty() {
                    sqlx::query($notify)
                        .bind(queue)
                        .execute(&mut **self)
                        .await?;
                }
                Ok(())
            }

            async fn list_runs(&mut self, query: &ListQuery) -> StoreResult<Vec<SummaryRow>> {
                Finish::flush(self).await?;
                let (sql, args) = query.sql();
                let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                    .fetch_all(&mut **self)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    use sqlx::Row as _;
                    out.push(SummaryRow {
                        run_id: r.try_get("run_id")?,
                        workflow: r.try_get("workflow")?,
                        version: r.try_get("version")?,
                        trigger_name: r.try_get("trigger_name")?,
                        queue: r.try_get("queue")?,
                        status: decode_column(r.try_get::<String, _>("status")?, RunStatus::parse)?,
                        steps: r.try_get("steps")?,
                        manual: r.try_get("manual")?,
                        parent_run_id: r.try_get("parent_run_id")?,
                        replayed_from: r.try_get("replayed_from")?,
                        created_at: r.try_get("created_at")?,
                        updated_at: r.try_get("updated_at")?,
                    });
                }
                Ok(out)
            }

            async fn open_deadlines(
                &mut self,
                run_ids: &[String],
            ) -> StoreResult<Vec<DeadlineRow>> {
                Finish::flush(self).await?;
                if run_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = sql::open_deadlines(run_ids.len());
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for id in run_ids {
                    q = q.bind(id);
                }
                Ok(q.fetch_all(&mut **self).await?)
            }
        }
    };
}

/// A write a transaction may hold back, to send it with the writes after it in one
/// statement (Postgres: data-modifying CTEs) before its next read or its commit.
#[derive(Debug)]
pub(crate) enum Write {
    Run(RunRow),
    AttemptUpdate(AttemptRow),
    AttemptInsert(AttemptRow),
    Facts {
        run_id: String,
        facts: Vec<(String, String)>,
        at: i64,
    },
}

impl Write {
    /// The row (or journal) it writes: two writes of one key never share a statement.
    pub(crate) fn key(&self) -> (u8, &str) {
        match self {
            Write::Run(r) => (0, &r.run_id),
            Write::AttemptUpdate(a) | Write::AttemptInsert(a) => (1, &a.runnable_key),
            Write::Facts { run_id, .. } => (2, run_id),
        }
    }
}

/// How a sqlx transaction commits, and whether it holds writes back.
trait Finish: Send {
    /// Sends what is held back, then commits.
    fn finish(self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Whether writes are held back (see [`Write`]).
    fn holds_back(&self) -> bool;
    /// Holds a write back (sending what is held first if it writes the same key).
    fn defer(&mut self, write: Write) -> impl Future<Output = StoreResult<()>> + Send;
    /// Sends what is held back.
    fn flush(&mut self) -> impl Future<Output = StoreResult<()>> + Send;
}

impl Finish for SqliteTx {
    async fn finish(self) -> StoreResult<()> {
        self.commit().await
    }

    fn holds_back(&self) -> bool {
        false
    }

    async fn defer(&mut self, _write: Write) -> StoreResult<()> {
        Err(StoreError::InvalidSetting(
            "SQLite transactions write at once".into(),
        ))
    }

    async fn flush(&mut self) -> StoreResult<()> {
        Ok(())
    }
}

impl Finish for PgTx {
    async fn finish(mut self) -> StoreResult<()> {
        self.flush().await?;
        self.commit().await
    }

    fn holds_back(&self) -> bool {
        true
    }

    async fn defer(&mut self, write: Write) -> StoreResult<()> {
        if self.held_key(&write) {
            self.flush().await?;
        }
        self.hold(write);
        Ok(())
    }

    async fn flush(&mut self) -> StoreResult<()> {
        PgTx::flush(self).await
    }
}

impl_store_tx!(
    SqliteTx,
    lock = "",
    skip = "",
    skip_attempt = "",
    notify = ""
);
impl_store_tx!(
    PgTx,
    lock = " FOR UPDATE",
    skip = " FOR UPDATE SKIP LOCKED",
    skip_attempt = " FOR UPDATE OF a SKIP LOCKED",
    notify = "SELECT pg_notify(current_schema() || '_squid_mesh_wakeup', $1)"
);

/// The SQL text both drivers run (`$n` parameters; SQLite's embedded writer rewrites them
/// to `?n`). `lock` and `skip` are the Postgres row-lock suffixes, empty on SQLite.
mod sql {
    use super::{ATTEMPT_COLUMNS, RUN_COLUMNS};

    pub(super) const INSERT_DEFINITION: &str = "INSERT INTO definitions (hash, workflow, fingerprint, body, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING";
    pub(super) const LOAD_DEFINITION: &str = "SELECT body FROM definitions WHERE hash = $1";
    pub(super) const RUN_STATUS: &str = "SELECT status FROM runs WHERE run_id = $1";
    pub(super) const UPDATE_RUN: &str = "UPDATE runs SET status = $2, context = $3, steps = $4, manual = $5, error = $6, updated_at = $7, revision = $8, compensation = $9 WHERE run_id = $1";
    pub(super) const FACTS: &str =
        "SELECT id, run_id, kind, data, occurred_at FROM journal WHERE run_id = $1 ORDER BY id";
    pub(super) const UPDATE_ATTEMPT: &str = "UPDATE attempts SET status = $2, visible_at = $3, due_at = $4, claim_id = $5, claim_token_hash = $6, owner = $7, lease_until = $8, claims = $9, outcome = $10, updated_at = $11 WHERE runnable_key = $1";
    pub(super) const CLOSE_OPEN_ATTEMPTS: &str = "UPDATE attempts SET status = $2, due_at = NULL, updated_at = $3 WHERE run_id = $1 AND status IN ('scheduled', 'claimed')";
    pub(super) const INSERT_COMMAND: &str = "INSERT INTO commands (idempotency_key, kind, run_id, result_run_id, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING";
    pub(super) const LOAD_COMMAND: &str =
        "SELECT kind, run_id, result_run_id FROM commands WHERE idempotency_key = $1";
    pub(super) const INSERT_CHILD: &str = "INSERT INTO child_runs (parent_run_id, parent_step, child_key, child_run_id, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (parent_run_id, parent_step, child_key) DO NOTHING";
    pub(super) const LOAD_CHILD: &str = "SELECT child_run_id FROM child_runs WHERE parent_run_id = $1 AND parent_step = $2 AND child_key = $3";
    pub(super) const CHILDREN: &str = "SELECT parent_step, child_key, child_run_id FROM child_runs WHERE parent_run_id = $1 ORDER BY created_at, child_key";
    pub(super) const CHILD_SUMMARIES: &str = "SELECT c.parent_step, c.child_key, c.child_run_id, r.workflow, r.status FROM child_runs c LEFT JOIN runs r ON r.run_id = c.child_run_id WHERE c.parent_run_id = $1 ORDER BY c.created_at, c.child_key";

    pub(super) fn insert_run() -> String {
        let params: Vec<String> = (1..=21).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES ({}) ON CONFLICT (run_id) DO NOTHING",
            params.join(", ")
        )
    }

    pub(super) fn load_run(lock: &str) -> String {
        format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1{lock}")
    }

    /// One statement for all the facts (ids follow the VALUES order).
    pub(super) fn insert_facts(n: usize) -> String {
        let values: Vec<String> = (0..n)
            .map(|i| format!("($1, ${}, ${}, $2)", 3 + 2 * i, 4 + 2 * i))
            .collect();
        format!(
            "INSERT INTO journal (run_id, kind, data, occurred_at) VALUES {}",
            values.join(", ")
        )
    }

    pub(super) fn insert_attempt() -> String {
        let params: Vec<String> = (1..=19).map(|i| format!("${i}")).collect();
        format!(
            "INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({})",
            params.join(", ")
        )
    }

    /// An attempt and its run (`r_` columns); `FROM runs` first, so Postgres locks the run
    /// before the attempt, as every other writer does.
    pub(super) fn load_attempt_and_run(lock: &str) -> String {
        format!(
            "SELECT {} FROM runs r JOIN attempts a ON a.run_id = r.run_id WHERE a.runnable_key = $1{lock}",
            attempt_and_run_columns()
        )
    }

    /// The due attempt joined with its run (`r_` columns).
    pub(super) fn next_due_with_run(skip: &str) -> String {
        format!(
            "SELECT {} FROM attempts a JOIN runs r ON r.run_id = a.run_id WHERE a.queue = $1 AND a.due_at IS NOT NULL AND a.due_at <= $2 ORDER BY a.due_at, a.runnable_key LIMIT 1{skip}",
            attempt_and_run_columns()
        )
    }

    /// The attempt's columns under their names, the run's prefixed `r_`.
    fn attempt_and_run_columns() -> String {
        let attempt: Vec<String> = ATTEMPT_COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect();
        let run: Vec<String> = RUN_COLUMNS
            .split(", ")
            .map(|c| format!("r.{c} AS r_{c}"))
            .collect();
        format!("{}, {}", attempt.join(", "), run.join(", "))
    }

    pub(super) fn load_attempt(lock: &str) -> String {
        format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE runnable_key = $1{lock}")
    }

    pub(super) fn run_attempts() -> String {
        format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY seq, runnable_key"
        )
    }

    /// The due attempt alone (SQLite's writer, where the run is a second lookup).
    pub(super) fn next_due() -> String {
        format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE queue = $1 AND due_at IS NOT NULL AND due_at <= $2 ORDER BY due_at, runnable_key LIMIT 1"
        )
    }

    pub(super) fn next_due_of_run(skip: &str) -> String {
        format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 AND queue = $2 AND status = 'scheduled' AND due_at IS NOT NULL AND due_at <= $3 ORDER BY due_at, runnable_key LIMIT 1{skip}"
        )
    }

    pub(super) fn open_deadlines(n: usize) -> String {
        let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        format!(
            "SELECT run_id, step, runnable_key, deadline FROM attempts WHERE run_id IN ({}) AND deadline IS NOT NULL AND status IN ('scheduled', 'claimed', 'recorded')",
            params.join(", ")
        )
    }
}

/// Extends a lease in one statement, fenced by claim id, token hash and expiry.
const HEARTBEAT_SQL: &str = "UPDATE attempts SET lease_until = $5, due_at = $5, updated_at = $4 WHERE runnable_key = $1 AND claim_id = $2 AND claim_token_hash = $3 AND status = 'claimed' AND lease_until > $4";

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[tokio::test]
    async fn lasting_database_errors_are_not_retryable() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("memory db");
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .execute(&pool)
            .await
            .expect("create");
        sqlx::query("INSERT INTO t VALUES ('a')")
            .execute(&pool)
            .await
            .expect("insert");
        let duplicate = sqlx::query("INSERT INTO t VALUES ('a')")
            .execute(&pool)
            .await
            .expect_err("constraint");
        let syntax = sqlx::query("SELEC 1")
            .execute(&pool)
            .await
            .expect_err("syntax");
        let missing = sqlx::query("SELECT k FROM t WHERE k = 'zz'")
            .fetch_one(&pool)
            .await
            .expect_err("no row");
        for e in [duplicate, syntax, missing] {
            let text = e.to_string();
            assert!(!StoreError::from(e).is_retryable(), "{text}");
        }
    }

    #[test]
    fn passing_errors_are_retryable() {
        let table = [
            (StoreError::Database(sqlx::Error::PoolTimedOut), true),
            (StoreError::Database(sqlx::Error::PoolClosed), true),
            (StoreError::Database(sqlx::Error::RowNotFound), false),
            (sqlite(Some(5)), true),     // busy
            (sqlite(Some(517)), true),   // busy (snapshot)
            (sqlite(Some(6)), true),     // locked
            (sqlite(Some(2067)), false), // unique constraint
            (sqlite(Some(11)), false),   // corrupt file
            (sqlite(None), true),
            (StoreError::LaneGone, true),
            (
                StoreError::GroupCommit {
                    message: "x".into(),
                    retryable: false,
                },
                false,
            ),
            (StoreError::InvalidSetting("schema".into()), false),
        ];
        for (e, want) in table {
            assert_eq!(e.is_retryable(), want, "{e:?}");
        }
    }

    fn sqlite(code: Option<i32>) -> StoreError {
        StoreError::Sqlite {
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn the_message_names_the_cause_once() {
        use std::error::Error as _;
        let e = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert!(e.to_string().contains("pool timed out"), "{e}");
        assert!(
            e.source().is_none(),
            "the cause is in the message, not also the source"
        );
    }
}
