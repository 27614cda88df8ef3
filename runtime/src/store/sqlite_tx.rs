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

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{CachedStatement, Connection, OpenFlags, Row, ToSql, params_from_iter};
use tokio::sync::OwnedMutexGuard;

use super::{
    Arg, Columns, FromColumns, Statements, StoreError, StoreResult, Synchronous, WriteRef,
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
            Arg::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The store's one writer: creates the file, sets WAL.
    Writer,
    /// A reader: refuses writes (`query_only`).
    Reader,
}

/// Opens a connection to `path` with the store's settings.
pub(crate) fn open(path: &Path, synchronous: Synchronous, role: Role) -> StoreResult<Connection> {
    let writer = role == Role::Writer;
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
            None => open(&self.path, self.synchronous, Role::Reader)?,
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

/// The prefix of every table and index the runtime keeps in a SQLite file, so it can share
/// a host application's database (on Postgres they live in a schema of their own).
pub const SQLITE_PREFIX: &str = "squid_mesh_";

/// The runtime's tables and indexes, named without [`SQLITE_PREFIX`] in the SQL text shared
/// with Postgres (a test checks that every migration's names are here).
pub(crate) const SQLITE_NAMES: &[&str] = &[
    // Tables.
    "definitions",
    "runs",
    "attempts",
    "journal",
    "commands",
    "child_runs",
    "schedules",
    "schedule_fires",
    "schedule_events",
    "action_blobs",
    "action_versions",
    "action_events",
    "catalog_version",
    "action_waits",
    "workflow_versions",
    // Indexes.
    "runs_by_created",
    "runs_by_workflow",
    "runs_by_status",
    "runs_by_parent",
    "runs_by_queue",
    "runs_by_workflow_status",
    "runs_by_queue_status",
    "attempts_due",
    "attempts_by_run",
    "attempts_due_by_run",
    "attempts_leased",
    "journal_by_run",
    "schedules_due",
    "action_versions_current",
    "action_events_key",
    "action_waits_key",
    "action_waits_run",
];

fn ours(ident: &str) -> bool {
    SQLITE_NAMES.contains(&ident)
}

thread_local! {
    /// [`sqlite_text`] of the statements this thread ran: the runtime's statements are a
    /// small fixed set, so each is rewritten once, not at every execution.
    static REWRITTEN: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<str>>> =
        std::cell::RefCell::default();
}

/// [`sqlite_text`], remembered per thread (at most 1,024 texts; past that it starts over).
pub(crate) fn sqlite_cached(sql: &str) -> std::rc::Rc<str> {
    REWRITTEN.with(|cache| {
        if let Some(text) = cache.borrow().get(sql) {
            return text.clone();
        }
        let text: std::rc::Rc<str> = sqlite_text(sql).into();
        let mut cache = cache.borrow_mut();
        if cache.len() >= 1024 {
            cache.clear();
        }
        cache.insert(sql.to_owned(), text.clone());
        text
    })
}

/// SQL text shared with Postgres as SQLite runs it: `$n` parameters become numbered `?n` (so
/// arguments bind by number whatever order the text names them in), and the runtime's table
/// and index names get [`SQLITE_PREFIX`]. A name is left alone inside string literals, quoted
/// identifiers and comments, after a `.` (a column of an alias) and after `AS` (an alias).
pub(crate) fn sqlite_text(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 64);
    let (mut i, mut after_dot, mut after_as) = (0, false, false);
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' || c == b'`' {
            // A doubled quote inside is two literals back to back: the same text.
            let end = b[i + 1..]
                .iter()
                .position(|&x| x == c)
                .map_or(b.len(), |p| i + 1 + p + 1);
            out.push_str(&sql[i..end]);
            (i, after_dot, after_as) = (end, false, false);
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            let end = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p);
            out.push_str(&sql[i..end]);
            i = end;
        } else if c == b'$' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            out.push('?');
            (i, after_dot, after_as) = (i + 1, false, false);
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &sql[start..i];
            if !c.is_ascii_digit() && !after_dot && !after_as && ours(word) {
                out.push_str(SQLITE_PREFIX);
            }
            out.push_str(word);
            after_as = word.eq_ignore_ascii_case("as");
            after_dot = false;
        } else {
            if !c.is_ascii_whitespace() {
                (after_dot, after_as) = (c == b'.', false);
            }
            // Multi-byte characters are copied whole.
            let len = sql[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&sql[i..i + len]);
            i += len;
        }
    }
    out
}

/// A transaction on a SQLite store: a write transaction on the writer (`BEGIN IMMEDIATE`),
/// or a read on a reader (`BEGIN`, one snapshot); rolled back when dropped uncommitted.
#[derive(Debug)]
pub struct SqliteTx {
    conn: Option<Conn>,
    /// Attempts inserted for any worker to claim (see `Statements::work_left`).
    left: u32,
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
        Ok(Self {
            conn: Some(conn),
            left: 0,
        })
    }

    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("an open transaction holds its connection")
            .get()
    }

    fn stmt(&self, sql: &str) -> StoreResult<CachedStatement<'_>> {
        Ok(self.conn().prepare_cached(&sqlite_cached(sql))?)
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
    fn work_left(&mut self) -> &mut u32 {
        &mut self.left
    }

    fn notify(&mut self, _queue: &str) {}

    const LOCK: &'static str = "";
    const SKIP: &'static str = "";
    const SKIP_ATTEMPT: &'static str = "";
    /// SQLite's workers poll (and the engine wakes its own).
    const ORDERED_RUN_SCAN: bool = true;

    async fn write(&mut self, write: WriteRef<'_>) -> StoreResult<()> {
        if let Some((text, args)) = write.statement() {
            self.stmt(&text)?.execute(params_from_iter(args))?;
        }
        Ok(())
    }

    async fn abort(self) {
        // Dropping it rolls back, synchronously.
        drop(self);
    }

    async fn finish(mut self) -> StoreResult<()> {
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
                    // Not committed: rolled back when dropped.
                    self.conn = Some(conn);
                }
                done
            }
        }
    }

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

    fn bytes(&self, name: &str) -> rusqlite::Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::sqlite_text;

    #[test]
    fn numbered_parameters_keep_their_numbers() {
        assert_eq!(
            sqlite_text("VALUES ($1, $3, $4, $2) WHERE a = '$x'"),
            "VALUES (?1, ?3, ?4, ?2) WHERE a = '$x'"
        );
    }

    #[test]
    fn the_runtimes_names_get_the_prefix_and_nothing_else_does() {
        assert_eq!(
            sqlite_text(
                "SELECT r.runs, (SELECT version FROM catalog_version) AS catalog_version, 'runs' \
                 FROM runs r JOIN attempts a ON a.run_id = r.run_id -- runs\n\
                 WHERE runs.x = \"runs\" AND journal.seq > $12"
            ),
            "SELECT r.runs, (SELECT version FROM squid_mesh_catalog_version) AS catalog_version, 'runs' \
             FROM squid_mesh_runs r JOIN squid_mesh_attempts a ON a.run_id = r.run_id -- runs\n\
             WHERE squid_mesh_runs.x = \"runs\" AND squid_mesh_journal.seq > ?12"
        );
        assert_eq!(
            sqlite_text("CREATE INDEX attempts_due ON attempts (queue) WHERE x = 'it''s runs'"),
            "CREATE INDEX squid_mesh_attempts_due ON squid_mesh_attempts (queue) WHERE x = 'it''s runs'"
        );
        assert_eq!(sqlite_text("é runs"), "é squid_mesh_runs");
    }
}
