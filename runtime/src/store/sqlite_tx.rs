//! SQLite's transactions, on rusqlite connections the store owns: one writer connection
//! (behind a mutex: `BEGIN IMMEDIATE`, so the writers of one process queue here instead of
//! on SQLite's file lock) and a small pool of readers. Statements run where they are called,
//! back to back with no hop between threads; only what may wait on the disk or on another
//! process (`BEGIN IMMEDIATE`, `COMMIT`, an autocommit write) moves off the async workers,
//! to the blocking pool, except on the group-commit lane's own thread, which runs it inline.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::vocab::AttemptStatus;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{
    CachedStatement, Connection, OpenFlags, OptionalExtension, Row, ToSql, params, params_from_iter,
};
use tokio::sync::OwnedMutexGuard;

use super::{
    Arg, AttemptRow, ChildRow, Columns, DeadlineRow, FactRow, FromColumns, ListQuery, RunRow,
    Statements, StoreError, StoreResult, StoreTx, SummaryRow, Synchronous, sql,
};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let code = e.sqlite_error().map(|f| f.extended_code);
        StoreError::Sqlite {
            code,
            message: e.to_string(),
        }
    }
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Text(v) | Arg::OptText(Some(v)) => ValueRef::Text(v.as_bytes()),
            Arg::Int(v) | Arg::OptInt(Some(v)) => ValueRef::Integer(v),
            Arg::OptText(None) | Arg::OptInt(None) => ValueRef::Null,
        }))
    }
}

/// Opens a connection to `path` with the store's settings (the writer creates the file).
pub(crate) fn open(path: &Path, synchronous: Synchronous, writer: bool) -> StoreResult<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if writer {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    if writer {
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    } else {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Idle readers kept open.
const IDLE_READERS: usize = 4;

/// The store's read connections.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    synchronous: Synchronous,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, synchronous: Synchronous) -> Self {
        Self {
            path,
            synchronous,
            idle: Mutex::default(),
        }
    }

    /// An idle reader, or a new one.
    pub(crate) fn get(self: &Arc<Self>) -> StoreResult<Reader> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(c) => c,
            None => open(&self.path, self.synchronous, false)?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: Arc::clone(self),
        })
    }
}

/// A reader checked out of [`Readers`]; back in the pool when dropped.
#[derive(Debug)]
pub(crate) struct Reader {
    conn: Option<Connection>,
    pool: Arc<Readers>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// The connection a transaction runs on.
#[derive(Debug)]
pub(crate) enum Conn {
    /// The store's writer (held for the whole transaction).
    Writer(OwnedMutexGuard<Connection>),
    /// A reader.
    Reader(Reader),
}

impl Conn {
    pub(crate) fn get(&self) -> &Connection {
        match self {
            Conn::Writer(c) => c,
            Conn::Reader(r) => r
                .conn
                .as_ref()
                .expect("a checked-out reader holds its connection"),
        }
    }
}

thread_local! {
    /// Set on the group-commit lane's thread: it is there to wait on the disk.
    static LANE: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as the SQLite group-commit lane (see [`off_workers`]).
pub(crate) fn mark_lane_thread() {
    LANE.with(|l| l.set(true));
}

/// Runs `f` on `conn` where waiting is harmless: inline on the lane's thread or outside any
/// runtime, else on the runtime's blocking pool, so `BEGIN IMMEDIATE` waiting on another
/// process or a commit's fsync never stalls the async workers.
pub(crate) async fn off_workers<T, F>(conn: Conn, f: F) -> (Conn, StoreResult<T>)
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    if LANE.with(Cell::get) || tokio::runtime::Handle::try_current().is_err() {
        let out = f(conn.get());
        return (conn, out);
    }
    match tokio::task::spawn_blocking(move || {
        let out = f(conn.get());
        (conn, out)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `$n` parameters (shared with Postgres) as SQLite's numbered `?n`, so arguments bind by
/// number whatever order the text names them in.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A transaction on a SQLite store: a write transaction on the writer (`BEGIN IMMEDIATE`),
/// or a read on a reader (`BEGIN`, one snapshot); rolled back when dropped uncommitted.
#[derive(Debug)]
pub struct SqliteTx {
    conn: Option<Conn>,
}

impl SqliteTx {
    /// Begins a transaction on `conn`.
    pub(crate) async fn begin(conn: Conn) -> StoreResult<Self> {
        let conn = match conn {
            Conn::Writer(_) => {
                let (conn, begun) = off_workers(conn, |c| {
                    c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
                    Ok(())
                })
                .await;
                begun?;
                conn
            }
            Conn::Reader(_) => {
                conn.get().prepare_cached("BEGIN")?.execute([])?;
                conn
            }
        };
        Ok(Self { conn: Some(conn) })
    }

    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("an open transaction holds its connection")
            .get()
    }

    fn stmt(&self, sql: &str) -> StoreResult<CachedStatement<'_>> {
        Ok(self.conn().prepare_cached(&numbered(sql))?)
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            let _ = conn.get().execute_batch("ROLLBACK");
        }
    }
}

impl Statements for SqliteTx {
    const LOCK: &'static str = "";
    const SKIP: &'static str = "";

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let n = self.stmt(sql)?.execute(params_from_iter(args))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    async fn fetch_all<T: FromColumns + Send>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> StoreResult<Vec<T>> {
        let mut st = self.stmt(sql)?;
        let rows = st.query_map(params_from_iter(args), |r| T::from_columns(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Columns for Row<'_> {
    type Error = rusqlite::Error;

    fn text(&self, name: &str) -> rusqlite::Result<String> {
        self.get(name)
    }

    fn opt_text(&self, name: &str) -> rusqlite::Result<Option<String>> {
        self.get(name)
    }

    fn int(&self, name: &str) -> rusqlite::Result<i64> {
        self.get(name)
    }

    fn opt_int(&self, name: &str) -> rusqlite::Result<Option<i64>> {
        self.get(name)
    }

    fn unknown(name: &str, text: &str) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown status {text:?} in column {name}").into(),
        )
    }
}

impl StoreTx for SqliteTx {
    async fn commit(mut self) -> StoreResult<()> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let commit = |c: &Connection| -> StoreResult<()> {
            c.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        };
        match conn {
            Conn::Reader(_) => commit(conn.get()),
            Conn::Writer(_) => {
                let (conn, done) = off_workers(conn, commit).await;
                if done.is_err() {
                    // Failed to commit: roll back on drop.
                    self.conn = Some(conn);
                }
                done
            }
        }
    }

    async fn insert_definition(
        &mut self,
        hash: &str,
        workflow: &str,
        fingerprint: &str,
        body: &str,
        now: i64,
    ) -> StoreResult<()> {
        self.stmt(sql::INSERT_DEFINITION)?.execute(params![
            hash,
            workflow,
            fingerprint,
            body,
            now
        ])?;
        Ok(())
    }

    async fn load_definition(&mut self, hash: &str) -> StoreResult<Option<String>> {
        Ok(self
            .stmt(sql::LOAD_DEFINITION)?
            .query_row([hash], |r| r.get(0))
            .optional()?)
    }

    async fn insert_run(&mut self, run: &RunRow) -> StoreResult<bool> {
        let n = self
            .stmt(&sql::insert_run())?
            .execute(params_from_iter(run.insert_args()))?;
        Ok(n == 1)
    }

    async fn load_run(&mut self, run_id: &str, _lock: bool) -> StoreResult<Option<RunRow>> {
        // The transaction holds SQLite's write lock: every read is locked already.
        Ok(self
            .stmt(&sql::load_run(""))?
            .query_row([run_id], |r| RunRow::decode(r))
            .optional()?)
    }

    async fn load_attempt_and_run(
        &mut self,
        runnable_key: &str,
        lock: bool,
    ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
        // No round trips to save here: two lookups.
        let Some(attempt) = self.load_attempt(runnable_key, lock).await? else {
            return Ok(None);
        };
        Ok(self
            .load_run(&attempt.run_id, lock)
            .await?
            .map(|run| (attempt, run)))
    }

    async fn update_run(&mut self, run: &RunRow) -> StoreResult<()> {
        self.stmt(sql::UPDATE_RUN)?
            .execute(params_from_iter(run.update_args()))?;
        Ok(())
    }

    async fn append_facts(
        &mut self,
        run_id: &str,
        facts: &[(String, String)],
        at: i64,
    ) -> StoreResult<()> {
        if facts.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&run_id, &at];
        for (kind, data) in facts {
            args.push(kind);
            args.push(data);
        }
        self.stmt(&sql::insert_facts(facts.len()))?
            .execute(args.as_slice())?;
        Ok(())
    }

    async fn facts(&mut self, run_id: &str) -> StoreResult<Vec<FactRow>> {
        let mut st = self.stmt(&sql::facts())?;
        let rows = st.query_map([run_id], |r| FactRow::decode(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn insert_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
        self.stmt(&sql::insert_attempt())?
            .execute(params_from_iter(a.insert_args()))?;
        Ok(())
    }

    async fn load_attempt(
        &mut self,
        runnable_key: &str,
        _lock: bool,
    ) -> StoreResult<Option<AttemptRow>> {
        Ok(self
            .stmt(&sql::load_attempt(""))?
            .query_row([runnable_key], |r| AttemptRow::decode(r))
            .optional()?)
    }

    async fn update_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
        self.stmt(sql::UPDATE_ATTEMPT)?
            .execute(params_from_iter(a.update_args()))?;
        Ok(())
    }

    async fn run_attempts(&mut self, run_id: &str) -> StoreResult<Vec<AttemptRow>> {
        let mut st = self.stmt(&sql::run_attempts())?;
        let rows = st.query_map([run_id], |r| AttemptRow::decode(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn next_due_with_run(
        &mut self,
        queue: &str,
        now: i64,
    ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
        let attempt = self
            .stmt(&sql::next_due())?
            .query_row(params![queue, now], |r| AttemptRow::decode(r))
            .optional()?;
        let Some(attempt) = attempt else {
            return Ok(None);
        };
        Ok(self
            .load_run(&attempt.run_id, false)
            .await?
            .map(|run| (attempt, run)))
    }

    async fn next_due_of_run(
        &mut self,
        run_id: &str,
        queue: &str,
        now: i64,
    ) -> StoreResult<Option<AttemptRow>> {
        Ok(self
            .stmt(&sql::next_due_of_run(""))?
            .query_row(params![run_id, queue, now], |r| AttemptRow::decode(r))
            .optional()?)
    }

    async fn close_open_attempts(
        &mut self,
        run_id: &str,
        status: AttemptStatus,
        now: i64,
    ) -> StoreResult<u64> {
        let n =
            self.stmt(sql::CLOSE_OPEN_ATTEMPTS)?
                .execute(params![run_id, status.as_str(), now])?;
        Ok(n as u64)
    }

    async fn insert_command(
        &mut self,
        key: &str,
        kind: &str,
        run_id: &str,
        result_run_id: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let n = self.stmt(sql::INSERT_COMMAND)?.execute(params![
            key,
            kind,
            run_id,
            result_run_id,
            now
        ])?;
        Ok(n == 1)
    }

    async fn load_command(&mut self, key: &str) -> StoreResult<Option<(String, String, String)>> {
        Ok(self
            .stmt(sql::LOAD_COMMAND)?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?)
    }

    async fn insert_child(
        &mut self,
        parent: &str,
        step: &str,
        key: &str,
        child: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let n = self
            .stmt(sql::INSERT_CHILD)?
            .execute(params![parent, step, key, child, now])?;
        Ok(n == 1)
    }

    async fn load_child(
        &mut self,
        parent: &str,
        step: &str,
        key: &str,
    ) -> StoreResult<Option<String>> {
        Ok(self
            .stmt(sql::LOAD_CHILD)?
            .query_row([parent, step, key], |r| r.get(0))
            .optional()?)
    }

    async fn children(&mut self, parent: &str) -> StoreResult<Vec<(String, String, String)>> {
        let mut st = self.stmt(sql::CHILDREN)?;
        let rows = st.query_map([parent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn child_summaries(&mut self, parent: &str) -> StoreResult<Vec<ChildRow>> {
        let mut st = self.stmt(sql::CHILD_SUMMARIES)?;
        let rows = st.query_map([parent], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn notify_queue(&mut self, _queue: &str) -> StoreResult<()> {
        // SQLite workers poll (and the engine wakes its own workers).
        Ok(())
    }

    async fn list_runs(&mut self, query: &ListQuery) -> StoreResult<Vec<SummaryRow>> {
        let (text, args) = query.sql();
        let mut st = self.stmt(&text)?;
        let rows = st.query_map(params_from_iter(args), |r| SummaryRow::decode(r))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    async fn open_deadlines(&mut self, run_ids: &[String]) -> StoreResult<Vec<DeadlineRow>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut st = self.stmt(&sql::open_deadlines(run_ids.len()))?;
        let rows = st.query_map(params_from_iter(run_ids), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn numbered_parameters_keep_their_numbers() {
        assert_eq!(
            numbered("VALUES ($1, $3, $4, $2) WHERE a = '$x'"),
            "VALUES (?1, ?3, ?4, ?2) WHERE a = '$x'"
        );
    }
}
