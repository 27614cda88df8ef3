//! Postgres: production. Tables live in their own schema (default `squid_mesh`); claims use
//! `FOR UPDATE SKIP LOCKED` so many workers on many hosts share one queue.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use sqlx::PgConnection;

use super::{
    Arg, AttemptRow, FromColumns, HEARTBEAT_SQL, RunRow, Statements, Store, StoreError,
    StoreResult, Write, WriteRef, sql,
};

/// How long a first connection to Postgres may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A transaction on a Postgres store. Row writes that return nothing (run and attempt
/// updates, attempt inserts, journal appends) are held back and sent together, as one
/// statement of data-modifying CTEs, before the transaction's next read or its commit: a
/// step's writes cost one round trip instead of four or five.
#[derive(Debug)]
pub struct PgTx {
    tx: sqlx::Transaction<'static, Postgres>,
    held: Vec<Write>,
    /// The rows (and journals) the held writes touch.
    held_keys: std::collections::HashSet<(u8, String)>,
    /// The values the held writes bind.
    held_binds: usize,
    /// Whom the commit wakes.
    out: Outgoing,
}

/// What a transaction's commit wakes: idle workers of this process, and workers of others.
#[derive(Debug)]
struct Outgoing {
    /// Attempts inserted for any worker to claim (see `Statements::work_left`).
    left: u32,
    /// Wake-up payloads to send at commit, with the last held writes.
    notify: Vec<String>,
    /// This store's name in its wake-up payloads (its own listener ignores them).
    sender: std::sync::Arc<str>,
}

impl Outgoing {
    fn new(sender: &std::sync::Arc<str>) -> Self {
        Self {
            left: 0,
            notify: Vec::new(),
            sender: sender.clone(),
        }
    }

    /// Queues a wake-up for `queue`: `<store> <queue>`, but catalog changes (`:catalog`)
    /// bare, as every version's listener reads them.
    fn notify(&mut self, queue: &str) {
        let payload = if queue.starts_with(':') {
            queue.to_owned()
        } else {
            format!("{} {queue}", self.sender)
        };
        if !self.notify.contains(&payload) {
            self.notify.push(payload);
        }
    }
}

/// Most values one statement of held-back writes binds (Postgres allows 65,535).
const MAX_BINDS: usize = 30_000;
/// Most held-back writes one statement carries (planning time grows with the CTEs).
const MAX_HELD: usize = 256;

/// `sql` with its `$n` parameters moved up by `offset`.
fn shifted(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0usize;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n * 10 + d as usize;
                chars.next();
            }
            out.push_str(&(n + offset).to_string());
        }
    }
    out
}

impl PgTx {
    pub(super) async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Whether `write` must not join the held writes: it touches a row they touch, or the
    /// statement would grow past its bounds.
    pub(super) fn must_flush_before(&self, write: &Write, binds: usize) -> bool {
        let (kind, key) = write.key();
        self.held.len() >= MAX_HELD
            || self.held_binds + binds > MAX_BINDS
            || self.held_keys.contains(&(kind, key.to_owned()))
    }

    pub(super) fn hold(&mut self, write: Write, binds: usize) {
        let (kind, key) = write.key();
        self.held_keys.insert((kind, key.to_owned()));
        self.held_binds += binds;
        self.held.push(write);
    }

    /// Sends the held-back writes as one statement.
    pub(super) async fn flush(&mut self) -> StoreResult<()> {
        self.flush_and(Vec::new()).await
    }

    /// Sends the held-back writes and the wake-up notifications as one statement (the
    /// notifications go out when the transaction commits).
    async fn flush_with_notify(&mut self) -> StoreResult<()> {
        let notify = std::mem::take(&mut self.out.notify);
        self.flush_and(notify).await
    }

    async fn flush_and(&mut self, notify: Vec<String>) -> StoreResult<()> {
        let held = std::mem::take(&mut self.held);
        self.held_keys.clear();
        self.held_binds = 0;
        let Some((text, binds)) = held_statement(&held, &notify, None) else {
            return Ok(());
        };
        bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), binds)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}

/// One statement of held-back writes (data-modifying CTEs of distinct rows, so the order
/// they run in does not matter) and wake-up notifications; `None` when there is nothing to
/// send.
///
/// With a `fence` (its `SELECT … FOR UPDATE` text and values), the fence is the first CTE,
/// `g`: every write and notification happens only if it finds its row, and the statement
/// returns that one row (rows affected: 1 when written, 0 when not).
fn held_statement<'a>(
    held: &'a [Write],
    notify: &'a [String],
    fence: Option<(&str, Vec<Arg<'a>>)>,
) -> Option<(String, Vec<Arg<'a>>)> {
    let mut parts: Vec<String> = Vec::with_capacity(held.len() + 2);
    let mut binds: Vec<Arg<'a>> = Vec::new();
    let fenced = fence.is_some();
    if let Some((text, args)) = fence {
        parts.push(text.to_owned());
        binds.extend(args);
    }
    for w in held {
        if let Some((text, args)) = w.as_ref().statement() {
            let text = if fenced {
                fenced_write(&text)?
            } else {
                text.into_owned()
            };
            parts.push(shifted(&text, binds.len()));
            binds.extend(args);
        }
    }
    let calls: Vec<String> = (0..notify.len())
        .map(|i| {
            format!(
                "pg_notify(current_schema() || '_squid_mesh_wakeup', ${})",
                binds.len() + i + 1
            )
        })
        .collect();
    binds.extend(notify.iter().map(|n| Arg::Text(n)));
    // Last: a plain SELECT runs only as the statement's main part, not as a CTE.
    if fenced {
        let select = if calls.is_empty() {
            "1".to_owned()
        } else {
            calls.join(", ")
        };
        parts.push(format!("SELECT {select} FROM g"));
    } else if !calls.is_empty() {
        parts.push(format!("SELECT {}", calls.join(", ")));
    }
    let last = parts.pop()?;
    if parts.is_empty() {
        return Some((last, binds));
    }
    let ctes: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if fenced && i == 0 {
                format!("g AS ({p})")
            } else {
                format!("w{i} AS ({p})")
            }
        })
        .collect();
    Some((format!("WITH {} {last}", ctes.join(", ")), binds))
}

/// A held write made to depend on the fence `g`: an `UPDATE` gains `AND EXISTS (SELECT 1
/// FROM g)`, an `INSERT … VALUES` selects its rows only if `g` has one. `None` for any
/// other shape.
fn fenced_write(sql: &str) -> Option<String> {
    const ONLY_IF: &str = "EXISTS (SELECT 1 FROM g)";
    if sql.contains(" RETURNING ") || sql.contains(" ON CONFLICT ") {
        return None;
    }
    if sql.starts_with("UPDATE ") && sql.contains(" WHERE ") {
        return Some(format!("{sql} AND {ONLY_IF}"));
    }
    if sql.starts_with("INSERT INTO ") {
        let (head, rows) = sql.split_once(" VALUES ")?;
        return Some(format!(
            "{head} SELECT * FROM (VALUES {rows}) AS v WHERE {ONLY_IF}"
        ));
    }
    None
}

/// What a statement written outside any transaction depends on (see [`PgFenced`]).
#[derive(Debug, Clone)]
pub(crate) enum Fence {
    /// A completion: the run and the claim as the worker holds them.
    Held(HeldRows),
    /// A start: its run is new. The run's insert is the fence (a run of its id exists:
    /// nothing is written), and carries the run as the start's writes leave it.
    NewRun,
    /// A claim: the due attempt and its run as read without a lock.
    Due(DueRows),
}

/// What a claim read, without a lock, of the attempt it claims: the claim is written only
/// if neither the attempt nor its run changed since.
#[derive(Debug, Clone)]
pub(crate) struct DueRows {
    pub(crate) runnable_key: String,
    pub(crate) claims: i64,
    pub(crate) attempt_updated_at: i64,
    pub(crate) run_id: String,
    pub(crate) revision: i64,
    pub(crate) run_updated_at: i64,
}

/// The fence of a claim: the attempt is still scheduled as read (every claim counts in
/// `claims`, every attempt write sets `updated_at`) and its run is unchanged. Like the
/// locking claim it locks the attempt alone, and skips it when another claimer holds it.
const DUE_FENCE: &str = "SELECT 1 FROM attempts a JOIN runs r ON r.run_id = a.run_id WHERE a.runnable_key = $1 AND a.status = 'scheduled' AND a.claims = $2 AND a.updated_at = $3 AND r.run_id = $4 AND r.revision = $5 AND r.updated_at = $6 FOR UPDATE OF a SKIP LOCKED";

impl DueRows {
    fn args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Int(self.claims),
            Arg::Int(self.attempt_updated_at),
            Arg::Text(&self.run_id),
            Arg::Int(self.revision),
            Arg::Int(self.run_updated_at),
        ]
    }
}

/// What a worker holds of the step it completes: the run row as its claim (or the
/// completion before) left it, and its claim. A completion made from them is written only
/// if the run and the claim are still so.
#[derive(Debug, Clone)]
pub(crate) struct HeldRows {
    pub(crate) run_id: String,
    pub(crate) revision: i64,
    pub(crate) updated_at: i64,
    pub(crate) runnable_key: String,
    pub(crate) claim_id: Option<String>,
    pub(crate) token_hash: String,
}

/// The fence, as the first CTE of the statement: it locks the run, then the attempt (the
/// order of every writer), and finds them only if neither changed. Every run write changes
/// `updated_at` (and a decision's `revision`); another claim or a cancel changes the
/// attempt's claim or status; a heartbeat only lengthens the lease.
const FENCE: &str = "SELECT 1 FROM runs r JOIN attempts a ON a.run_id = r.run_id WHERE r.run_id = $1 AND r.revision = $2 AND r.updated_at = $3 AND a.runnable_key = $4 AND a.status = 'claimed' AND a.claim_id IS NOT DISTINCT FROM $5 AND a.claim_token_hash = $6 FOR UPDATE";

impl HeldRows {
    fn args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Int(self.revision),
            Arg::Int(self.updated_at),
            Arg::Text(&self.runnable_key),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::Text(&self.token_hash),
        ]
    }
}

/// A completion written as one statement outside any transaction, from the rows in hand
/// instead of rows read under lock, fenced (see [`Fence`]): no `BEGIN`, no locking read, no
/// `COMMIT`, one round trip. It cannot read: any read, or a write the one statement cannot
/// carry, fails with [`StoreError::Unfenced`], as does a fence that finds the run or the
/// claim changed; nothing is written then, and the engine takes the locking path.
#[derive(Debug)]
pub(crate) struct PgFenced {
    pool: PgPool,
    fence: Fence,
    /// The new run of a start ([`Fence::NewRun`]), as its last write left it.
    new_run: Option<RunRow>,
    held: Vec<Write>,
    held_keys: std::collections::HashSet<(u8, String)>,
    held_binds: usize,
    out: Outgoing,
}

impl Statements for PgFenced {
    fn work_left(&mut self) -> &mut u32 {
        &mut self.out.left
    }

    fn notify(&mut self, queue: &str) {
        self.out.notify(queue);
    }

    const LOCK: &'static str = PgTx::LOCK;
    const SKIP: &'static str = PgTx::SKIP;
    const SKIP_ATTEMPT: &'static str = PgTx::SKIP_ATTEMPT;
    const ORDERED_RUN_SCAN: bool = PgTx::ORDERED_RUN_SCAN;

    async fn insert_new_run(&mut self, run: &RunRow) -> StoreResult<bool> {
        match (&self.fence, &self.new_run) {
            (Fence::NewRun, None) => {
                self.new_run = Some(run.clone());
                Ok(true)
            }
            _ => Err(StoreError::Unfenced("a run insert")),
        }
    }

    async fn write(&mut self, write: WriteRef<'_>) -> StoreResult<()> {
        // The parts of one statement do not see each other's rows: a start's update of its
        // new run goes into the run's insert.
        if let (WriteRef::Run(r) | WriteRef::RunSameStatus(r), Some(new)) =
            (write, &mut self.new_run)
            && r.run_id == new.run_id
        {
            new.clone_from(r);
            return Ok(());
        }
        let mut write = write.to_owned();
        if let Write::CloseOpen { run_id, except, .. } = &mut write {
            // As in `PgTx::write`, but there is no earlier statement to send first.
            for held in &self.held {
                if let Write::AttemptUpdate(a) | Write::AttemptInsert(a) = held
                    && a.run_id == *run_id
                {
                    if a.status.is_open() {
                        return Err(StoreError::Unfenced("an attempt left open is closed"));
                    }
                    except.push(a.runnable_key.clone());
                }
            }
        }
        let binds = write.as_ref().bind_count();
        let (kind, key) = write.key();
        if self.held.len() >= MAX_HELD
            || self.held_binds + binds > MAX_BINDS
            || !self.held_keys.insert((kind, key.to_owned()))
        {
            return Err(StoreError::Unfenced("the writes need two statements"));
        }
        self.held_binds += binds;
        self.held.push(write);
        Ok(())
    }

    async fn finish(self) -> StoreResult<()> {
        let fence = match (&self.fence, &self.new_run) {
            (Fence::Held(held), _) => (FENCE.to_owned(), held.args()),
            (Fence::Due(due), _) => (DUE_FENCE.to_owned(), due.args()),
            (Fence::NewRun, Some(run)) => (
                format!("{} RETURNING 1", sql::insert_run()),
                run.insert_args(),
            ),
            (Fence::NewRun, None) => return Err(StoreError::Unfenced("a start without its run")),
        };
        let (text, binds) = held_statement(&self.held, &self.out.notify, Some((&fence.0, fence.1)))
            .ok_or(StoreError::Unfenced("a write has no fenced form"))?;
        let done = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), binds)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::Unfenced(match self.fence {
                Fence::Held(_) => "the run or the claim changed",
                Fence::NewRun => "a run of this id exists",
                Fence::Due(_) => "the attempt was claimed or changed",
            }))
        }
    }

    async fn abort(self) {}

    async fn execute(&mut self, _sql: &str, _args: &[Arg<'_>]) -> StoreResult<u64> {
        Err(StoreError::Unfenced("a statement with its own result"))
    }

    async fn fetch_all<T: FromColumns + Send>(
        &mut self,
        _sql: &str,
        _args: &[Arg<'_>],
    ) -> StoreResult<Vec<T>> {
        Err(StoreError::Unfenced("a read"))
    }
}

impl std::ops::Deref for PgTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// A Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    /// The pool belongs to the host, whose connections may have another `search_path`: set
    /// it at the start of every transaction.
    set_path: bool,
    /// Names this store in the wake-up notifications it sends: its own listener skips
    /// them (its workers were woken in the process).
    sender: std::sync::Arc<str>,
}

/// A name for a new store's wake-up notifications.
fn new_sender() -> std::sync::Arc<str> {
    uuid::Uuid::new_v4().simple().to_string().into()
}

fn check_schema(schema: &str) -> StoreResult<()> {
    let ident_ok = schema
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && schema.len() <= 63;
    if ident_ok {
        Ok(())
    } else {
        Err(StoreError::InvalidSetting(format!(
            "postgres schema {schema:?} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
        )))
    }
}

impl PostgresStore {
    /// Connects to `url`, keeping Squid Mesh's tables in `schema`.
    ///
    /// # Errors
    ///
    /// When the URL is invalid, the schema name is not an identifier, or the server cannot
    /// be reached.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> StoreResult<Self> {
        check_schema(schema)?;
        let options = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
        // One connection first, on its own: a server that refuses or cannot be reached is
        // reported at once with its cause, not after the pool's 30 s of retries as
        // "pool timed out".
        {
            use sqlx::Connection as _;
            let first = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                .await
                .map_err(|_| {
                    sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer from the Postgres server within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        ),
                    ))
                })??;
            let _ = first.close().await;
        }
        // No ping when a connection is checked out: it would be a round trip per
        // transaction. A connection the server closed fails its first statement instead,
        // with a retryable error.
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            set_path: false,
            sender: new_sender(),
        })
    }

    /// Uses a pool the host owns. Its connections keep their own `search_path`; every
    /// transaction of Squid Mesh sets its schema first (one extra statement per transaction).
    ///
    /// # Errors
    ///
    /// When the schema name is not a plain identifier.
    pub fn from_pool(pool: PgPool, schema: &str) -> StoreResult<Self> {
        check_schema(schema)?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            set_path: true,
            sender: new_sender(),
        })
    }

    async fn begin(&self) -> StoreResult<PgTx> {
        self.begin_as(None).await
    }

    /// Whether writes go outside a transaction, fenced ([`PgFenced`]): not on a host's
    /// pool, whose connections need the schema set inside a transaction.
    pub(crate) fn fences(&self) -> bool {
        !self.set_path
    }

    /// A completion to write fenced by `fence` (see [`PgFenced`]); `None` on a host's pool,
    /// whose connections need the schema set inside a transaction.
    pub(crate) fn fenced(&self, fence: Fence) -> Option<PgFenced> {
        (!self.set_path).then(|| PgFenced {
            pool: self.pool.clone(),
            fence,
            new_run: None,
            held: Vec::new(),
            held_keys: std::collections::HashSet::new(),
            held_binds: 0,
            out: Outgoing::new(&self.sender),
        })
    }

    /// The due attempt a fenced claim tries (see [`Fence::Due`]), with its run and the
    /// action catalog's version: the `spread`-th oldest due on `queue` (the newest of fewer),
    /// read without a lock in one statement. `None` when nothing is due. Only on the
    /// engine's own pool (see [`PostgresStore::fences`]).
    pub(crate) async fn peek_due(
        &self,
        queue: &str,
        now: i64,
        spread: i64,
    ) -> StoreResult<Option<(AttemptRow, RunRow, i64)>> {
        if self.set_path {
            return Err(StoreError::Unfenced("a host's pool"));
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(sql::PEEK_DUE_WITH_RUN.as_str()))
            .bind(queue)
            .bind(now)
            .bind(spread)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(<(AttemptRow, RunRow, i64)>::from_columns(&row)?)),
            None => Ok(None),
        }
    }

    /// A transaction begun by `begin` (a `BEGIN` with its mode), else a plain `BEGIN`.
    ///
    /// The `BEGIN` runs on a task of its own. A caller that goes away while it waits for
    /// the answer (a timeout, an aborted task) would otherwise leave the server inside a
    /// transaction the driver does not count (sqlx raises its depth only after the answer):
    /// the connection would go back to the pool with it open, and writes sent later outside
    /// any transaction, such as fenced completions, would join it and never commit. On its
    /// own task the `BEGIN` finishes, and the unused transaction is rolled back.
    async fn begin_as(&self, begin: Option<&'static str>) -> StoreResult<PgTx> {
        let pool = self.pool.clone();
        let begun = tokio::spawn(async move {
            match begin {
                Some(statement) => pool.begin_with(statement).await,
                None => pool.begin().await,
            }
        });
        let mut tx = begun.await.map_err(|e| {
            sqlx::Error::Io(std::io::Error::other(format!(
                "the task beginning a transaction ended: {e}"
            )))
        })??;
        if self.set_path {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET LOCAL search_path TO \"{}\"",
                self.schema
            )))
            .execute(&mut *tx)
            .await?;
        }
        Ok(PgTx {
            tx,
            held: Vec::new(),
            held_keys: std::collections::HashSet::new(),
            held_binds: 0,
            out: Outgoing::new(&self.sender),
        })
    }

    /// The connection pool (for hosts that share it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Store for PostgresStore {
    type Tx = PgTx;

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            self.schema
        )))
        .execute(&self.pool)
        .await?;
        let mut conn = self.pool.acquire().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{}\"",
            self.schema
        )))
        .execute(&mut *conn)
        .await?;
        // `run_direct` on one connection, so the `search_path` set above applies (the plain
        // `run` takes an `Acquire` and trips a known higher-ranked lifetime error here).
        let migrated = sqlx::migrate!("../migrations/postgres")
            .run_direct(None, &mut *conn, false)
            .await;
        if self.set_path {
            // Give the host its connection back as it was.
            sqlx::query("RESET search_path").execute(&mut *conn).await?;
        }
        migrated?;
        Ok(())
    }

    async fn begin_write(&self) -> StoreResult<Self::Tx> {
        self.begin().await
    }

    /// One snapshot for every statement of the read, so a run's row, its attempts and its
    /// journal are read as of one moment while workers write.
    async fn begin_read(&self) -> StoreResult<Self::Tx> {
        self.begin_as(Some("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            .await
    }

    async fn listen(&self, wake: super::Wakeups, listening: Box<dyn FnOnce() + Send>) {
        use std::sync::atomic::Ordering;
        let channel = format!("{}_squid_mesh_wakeup", self.schema);
        let mut backoff = std::time::Duration::from_millis(100);
        let mut ready = Some(listening);
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                listener.listen(&channel).await?;
                // Catalog changes made while no subscription held are found by this.
                wake.catalog_changed.store(true, Ordering::SeqCst);
                wake.live.store(true, Ordering::SeqCst);
                if let Some(ready) = ready.take() {
                    ready();
                }
                loop {
                    let note = listener.recv().await?;
                    let (sender, queue) = note
                        .payload()
                        .split_once(' ')
                        .unwrap_or(("", note.payload()));
                    if queue == ":catalog" {
                        wake.catalog_changed.store(true, Ordering::SeqCst);
                    }
                    if sender != &*self.sender {
                        wake.work.notify_waiters();
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            let result = listening.await;
            wake.live.store(false, Ordering::SeqCst);
            if let Err(e) = result {
                tracing::warn!("wake-up listener on {channel}: {e}; reconnecting in {backoff:?}");
                // Work planned meanwhile is found by polling.
                wake.work.notify_waiters();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }

    async fn catalog_version(&self) -> StoreResult<i64> {
        let query = sqlx::query_as(sql::CATALOG_VERSION);
        let row: Option<(i64,)> = if self.set_path {
            let mut tx = self.begin().await?;
            query.fetch_optional(&mut *tx).await?
        } else {
            query.fetch_optional(&self.pool).await?
        };
        Ok(row.map_or(0, |r| r.0))
    }

    async fn any_due(&self, queue: &str, now: i64) -> StoreResult<bool> {
        let query = sqlx::query_as(sql::ANY_DUE).bind(queue).bind(now);
        let row: (bool,) = if self.set_path {
            let mut tx = self.begin().await?;
            query.fetch_one(&mut *tx).await?
        } else {
            query.fetch_one(&self.pool).await?
        };
        Ok(row.0)
    }

    async fn run_status(&self, run_id: &str) -> StoreResult<Option<String>> {
        let query = sqlx::query_as(sql::RUN_STATUS).bind(run_id);
        let row: Option<(String,)> = if self.set_path {
            // A host's connection: its search_path is set in a transaction.
            let mut tx = self.begin().await?;
            query.fetch_optional(&mut *tx).await?
        } else {
            query.fetch_optional(&self.pool).await?
        };
        Ok(row.map(|r| r.0))
    }

    async fn run_with_attempts(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<(RunRow, Vec<AttemptRow>)>> {
        // One statement reads both as of one moment, outside any transaction: one round trip
        // instead of a read transaction's four.
        let query = sqlx::query(sqlx::AssertSqlSafe(sql::RUN_WITH_ATTEMPTS.as_str())).bind(run_id);
        let row = if self.set_path {
            let mut tx = self.begin().await?;
            query.fetch_optional(&mut *tx).await?
        } else {
            query.fetch_optional(&self.pool).await?
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let run = RunRow::from_columns(&row)?;
        let attempts: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(&crate::store::rows::Columns::text(&row, "attempts_json")?)
                .map_err(|e| StoreError::Corrupt {
                    what: format!("attempts of run {run_id}"),
                    message: e.to_string(),
                })?;
        let attempts = attempts
            .iter()
            .map(AttemptRow::from_columns)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((run, attempts)))
    }

    async fn heartbeat(
        &self,
        runnable_key: &str,
        claim_id: &str,
        token_hash: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<bool> {
        let query = sqlx::query(HEARTBEAT_SQL)
            .bind(runnable_key)
            .bind(claim_id)
            .bind(token_hash)
            .bind(now)
            .bind(lease_until);
        let done = if self.set_path {
            // A host's connection: its search_path is set in a transaction.
            let mut tx = self.begin().await?;
            let done = query.execute(&mut *tx).await?;
            tx.commit().await?;
            done
        } else {
            query.execute(&self.pool).await?
        };
        Ok(done.rows_affected() == 1)
    }
}

impl Statements for PgTx {
    fn work_left(&mut self) -> &mut u32 {
        &mut self.out.left
    }

    fn notify(&mut self, queue: &str) {
        self.out.notify(queue);
    }

    const LOCK: &'static str = " FOR UPDATE";
    const SKIP: &'static str = " FOR UPDATE SKIP LOCKED";
    const SKIP_ATTEMPT: &'static str = " FOR UPDATE OF a SKIP LOCKED";
    const ORDERED_RUN_SCAN: bool = false;

    async fn write(&mut self, write: WriteRef<'_>) -> StoreResult<()> {
        let mut write = write.to_owned();
        if let Write::CloseOpen { run_id, except, .. } = &mut write {
            // One statement's parts all read the rows as they were before it: the run's
            // attempts that held writes leave settled are left to those writes, and one they
            // leave open (which the close must see settle) is sent first.
            let mut open = false;
            for held in &self.held {
                if let Write::AttemptUpdate(a) | Write::AttemptInsert(a) = held
                    && a.run_id == *run_id
                {
                    if a.status.is_open() {
                        open = true;
                    } else {
                        except.push(a.runnable_key.clone());
                    }
                }
            }
            if open {
                self.flush().await?;
                except.clear();
            }
        }
        let binds = write.as_ref().bind_count();
        if self.must_flush_before(&write, binds) {
            self.flush().await?;
        }
        self.hold(write, binds);
        Ok(())
    }

    async fn finish(mut self) -> StoreResult<()> {
        self.flush_with_notify().await?;
        self.commit().await
    }

    async fn abort(self) {
        // Held-back writes are simply dropped; a failed rollback closes the connection.
        let _ = self.tx.rollback().await;
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        self.flush().await?;
        let done = bind_args!(
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())),
            args.iter().copied()
        )
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }

    async fn fetch_all<T: FromColumns + Send>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> StoreResult<Vec<T>> {
        self.flush().await?;
        let rows = bind_args!(
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())),
            args.iter().copied()
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(T::from_columns(r)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{fenced_write, shifted};

    #[test]
    fn a_fenced_write_depends_on_the_fence() {
        assert_eq!(
            fenced_write("UPDATE runs SET a = $2 WHERE run_id = $1").as_deref(),
            Some("UPDATE runs SET a = $2 WHERE run_id = $1 AND EXISTS (SELECT 1 FROM g)")
        );
        assert_eq!(
            fenced_write("INSERT INTO journal (a, b) VALUES ($1, $2), ($1, $3)").as_deref(),
            Some(
                "INSERT INTO journal (a, b) SELECT * FROM (VALUES ($1, $2), ($1, $3)) AS v WHERE EXISTS (SELECT 1 FROM g)"
            )
        );
        for other in [
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING",
            "UPDATE t SET a = $1 WHERE k = $2 RETURNING a",
            "DELETE FROM t WHERE k = $1",
            "UPDATE t SET a = $1",
        ] {
            assert_eq!(fenced_write(other), None, "{other}");
        }
    }

    #[test]
    fn shifted_parameters_keep_their_order() {
        assert_eq!(
            shifted("SET a = $2, b = $10 WHERE k = $1 AND c = '$'", 11),
            "SET a = $13, b = $21 WHERE k = $12 AND c = '$'"
        );
    }
}
