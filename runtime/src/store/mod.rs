//! Storage: the only module that speaks SQL.
//!
//! One [`Store`] trait (begin a read or write transaction, heartbeat a claim) and one
//! [`StoreTx`] trait (the statements of a transaction), implemented once per backend:
//! SQLite on rusqlite (`sqlite_tx.rs`: the writer connection and a pool of readers), Postgres
//! on sqlx (`tx.rs`, with write-behind in `postgres.rs`). The SQL text is shared: both
//! dialects accept `$n` parameters, `RETURNING` and partial indexes; the differences are row
//! locks and `SKIP LOCKED`. Each row type declares its columns once (`rows.rs`), with one
//! decoder that reads either driver's rows, and the values a row write binds come from one
//! list per statement (`RunRow::update_args` and the like). Statements that need nothing
//! backend-specific are written once on [`Statements`] (the schedules').
//!
//! Files: `error.rs` (StoreError, passing or lasting), `rows.rs` (rows, decoders, bind
//! lists), `sql.rs` (SQL text), `tx.rs` (Postgres' transactions), `sqlite_tx.rs` (SQLite's),
//! `sqlite.rs` / `postgres.rs` (the stores, SQLite's migrations), `schedules.rs` (schedule
//! rows and statements).

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
                Arg::Bytes(v) => q.bind(v),
            };
        }
        q
    }};
}

#[macro_use]
mod rows;
mod catalog;
mod error;
mod postgres;
mod schedules;
mod sql;
mod sqlite;
mod sqlite_tx;
mod tx;
mod workflows;

use std::future::Future;

use crate::vocab::AttemptStatus;
pub use error::{StoreError, StoreResult};
pub(crate) use rows::Arg;
pub use rows::{AttemptRow, ChildRow, DeadlineRow, FactRow, ListQuery, RunRow, SummaryRow};
use rows::{Columns, FromColumns};
use sql::HEARTBEAT_SQL;
pub(crate) use tx::{Write, WriteRef};

pub use catalog::{ActionVersionRow, ActionWaitRow, CatalogEventRow, CatalogTx};
pub(crate) use postgres::{DueRows, Fence, HeldRows};
pub use postgres::{PgTx, PostgresStore};
pub use schedules::{FireRow, ScheduleEventRow, ScheduleRow, ScheduleTx};
pub use sqlite::{SqliteStore, SqliteTx, Synchronous};
pub use workflows::{WorkflowRow, WorkflowTx};

/// Whether a read locks the rows it returns until the transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// A plain read.
    None,
    /// Locked for update (Postgres `FOR UPDATE`; a SQLite write transaction holds the whole
    /// database already).
    Update,
}

impl Lock {
    /// The suffix of the read: `suffix` when locking, else nothing.
    pub(crate) fn suffix(self, suffix: &'static str) -> &'static str {
        match self {
            Lock::None => "",
            Lock::Update => suffix,
        }
    }
}

/// A database holding Squid Mesh's tables.
pub trait Store: Clone + Send + Sync + 'static {
    /// The transaction type.
    type Tx: StoreTx + ScheduleTx + CatalogTx + WorkflowTx;

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
        wake: Wakeups,
        listening: Box<dyn FnOnce() + Send>,
    ) -> impl Future<Output = ()> + Send;

    /// The action catalog's version, read outside any transaction (one statement).
    fn catalog_version(&self) -> impl Future<Output = StoreResult<i64>> + Send;

    /// Whether `queue` has an attempt due by `now` (engine clock, microseconds), read
    /// outside any transaction (one statement): a claim that would find nothing is not
    /// worth a write transaction.
    fn any_due(&self, queue: &str, now: i64) -> impl Future<Output = StoreResult<bool>> + Send;

    /// The stored status of a run, read outside any transaction (one statement).
    fn run_status(&self, run_id: &str) -> impl Future<Output = StoreResult<Option<String>>> + Send;

    /// A run's row and its attempts (by `seq`, `runnable_key`), as of one moment.
    fn run_with_attempts(
        &self,
        run_id: &str,
    ) -> impl Future<Output = StoreResult<Option<(RunRow, Vec<AttemptRow>)>>> + Send;

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

/// What a notification listener ([`Store::listen`]) signals.
#[derive(Debug, Clone)]
pub struct Wakeups {
    /// Notified when another process made work due (and when the subscription broke, so
    /// waiters poll).
    pub work: std::sync::Arc<tokio::sync::Notify>,
    /// Set when another process changed the action catalog (and when the subscription
    /// broke, since changes may have been missed).
    pub catalog_changed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether the subscription holds now.
    pub live: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Where a group-commit lane begins its write transactions.
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

/// What a backend's transaction does, in plain statements with bound values: the base on
/// which [`StoreTx`] and [`ScheduleTx`] are written once for every backend.
pub(crate) trait Statements: Send + Sized {
    /// Appended to a read that locks its row (empty on SQLite, whose write transaction
    /// holds the whole database).
    const LOCK: &'static str;
    /// Appended to a queue read: lock the row, skip rows other transactions hold.
    const SKIP: &'static str;
    /// Appended to the queue read joined with runs: lock and skip the attempt only.
    const SKIP_ATTEMPT: &'static str;
    /// Whether the run's next due attempt is found in one ordered index step however many
    /// attempts the run has. Postgres plans by statistics that predate a large fan-out and
    /// may sort all of the run's due attempts instead, so a completion chains only within
    /// the run's declared steps there.
    const ORDERED_RUN_SCAN: bool;

    /// Tells workers of other processes that `queue` has work, at commit (nothing where
    /// they poll).
    fn notify(&mut self, queue: &str);

    /// How many attempts this transaction inserted for any worker to claim (not claimed by
    /// it): after the commit, that many idle workers of this process are worth waking.
    fn work_left(&mut self) -> &mut u32;

    /// Inserts a run unless one of its id exists; whether it did.
    fn insert_new_run(&mut self, run: &RunRow) -> impl Future<Output = StoreResult<bool>> + Send {
        async move { Ok(self.execute(&sql::insert_run(), &run.insert_args()).await? == 1) }
    }

    /// Writes a row change: at once, or held back until the next read or the commit.
    fn write(&mut self, write: WriteRef<'_>) -> impl Future<Output = StoreResult<()>> + Send;

    /// Sends what is held back and commits.
    fn finish(self) -> impl Future<Output = StoreResult<()>> + Send;

    /// Rolls back, now.
    fn abort(self) -> impl Future<Output = ()> + Send;

    /// Runs a statement; the rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Runs a query; its rows, decoded.
    fn fetch_all<T: FromColumns + Send>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = StoreResult<Vec<T>>> + Send;

    /// Runs a query; its first row, decoded.
    fn fetch_optional<T: FromColumns + Send>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = StoreResult<Option<T>>> + Send {
        async move { Ok(self.fetch_all(sql, args).await?.into_iter().next()) }
    }
}

/// The statements of one transaction.
pub trait StoreTx: Send {
    /// Commits.
    fn commit(self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Rolls back now, releasing its row locks before it returns (dropping a transaction
    /// also rolls it back, but Postgres may only send that later, holding the locks until
    /// then: other workers' `SKIP LOCKED` claims would pass the rows by).
    fn rollback(self) -> impl Future<Output = ()> + Send;
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
        lock: Lock,
    ) -> impl Future<Output = StoreResult<Option<RunRow>>> + Send;
    /// Loads an attempt and its run in one statement, locking both (run first) when `lock`
    /// is set; `None` when either is missing.
    fn load_attempt_and_run(
        &mut self,
        runnable_key: &str,
        lock: Lock,
    ) -> impl Future<Output = StoreResult<Option<(AttemptRow, RunRow)>>> + Send;
    /// Writes the mutable columns of a run.
    fn update_run(&mut self, run: &RunRow) -> impl Future<Output = StoreResult<()>> + Send;
    /// Writes the mutable columns of a run whose status is the stored one (the status
    /// indexes are left alone).
    fn update_run_same_status(
        &mut self,
        run: &RunRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Appends facts to a run's journal.
    fn append_facts(
        &mut self,
        run_id: &str,
        facts: &[(String, String)],
        at: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The journal of a run, oldest first.
    fn facts(&mut self, run_id: &str) -> impl Future<Output = StoreResult<Vec<FactRow>>> + Send;
    /// The facts of one kind of a run, oldest first.
    fn facts_of_kind(
        &mut self,
        run_id: &str,
        kind: &str,
    ) -> impl Future<Output = StoreResult<Vec<FactRow>>> + Send;
    /// Inserts an attempt.
    fn insert_attempt(
        &mut self,
        attempt: &AttemptRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// How many attempts this transaction inserted for any worker to claim (not inserted
    /// claimed): after it commits, that many idle workers of this process are worth waking.
    fn left_for_workers(&mut self) -> u32;
    /// Loads an attempt, locking it when `lock` is set.
    fn load_attempt(
        &mut self,
        runnable_key: &str,
        lock: Lock,
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
    /// Makes the attempts whose lease expired by `now` due at the time they became visible
    /// (they were due at their lease end), skipping rows other transactions hold; returns how
    /// many.
    fn requeue_expired(&mut self, now: i64) -> impl Future<Output = StoreResult<u64>> + Send;
    /// The oldest attempt on `queue` due at `now` (visible, lease expired, or recorded but not
    /// applied), locked and skipped by concurrent claimers where the database can, with its
    /// run (read, not locked) and the action catalog's version, in one statement.
    fn next_due_with_run(
        &mut self,
        queue: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<Option<(AttemptRow, RunRow, i64)>>> + Send;
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
    ) -> impl Future<Output = StoreResult<()>> + Send;
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
    /// Per queue, the attempts due at `now` and the oldest due time: (queue, count, oldest).
    fn queue_depths(
        &mut self,
        now: i64,
    ) -> impl Future<Output = StoreResult<Vec<(String, i64, Option<i64>)>>> + Send;
    /// Runs by status: (status, count).
    fn run_counts(&mut self) -> impl Future<Output = StoreResult<Vec<(String, i64)>>> + Send;
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
    /// See [`Statements::ORDERED_RUN_SCAN`].
    fn ordered_run_scan(&self) -> bool;
    /// A page of run summaries, newest first (`limit` rows at most).
    fn list_runs(
        &mut self,
        query: &ListQuery,
    ) -> impl Future<Output = StoreResult<Vec<SummaryRow>>> + Send;
    /// Runs matching the query's filters (its statuses ignored), by status, each count
    /// stopping at the query's limit: (status, count).
    fn count_runs(
        &mut self,
        query: &ListQuery,
    ) -> impl Future<Output = StoreResult<Vec<(String, i64)>>> + Send;
    /// The deadlines of the open attempts of these runs.
    fn open_deadlines(
        &mut self,
        run_ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<DeadlineRow>>> + Send;
}
