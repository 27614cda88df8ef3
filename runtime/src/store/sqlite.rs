//! SQLite: the embedded default. WAL; one writer connection (`BEGIN IMMEDIATE`, behind a
//! mutex) and a small pool of readers, all rusqlite (see `sqlite_tx`); a busy timeout so
//! several processes can share one file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Mutex;

use super::sqlite_tx::{self, Conn, Readers};
use super::{AttemptRow, Lock, RunRow, Store, StoreError, StoreResult, StoreTx, sql};

pub use super::sqlite_tx::SqliteTx;

/// How hard SQLite syncs commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL at every commit: a committed step survives power loss.
    #[default]
    Full,
    /// fsync only at checkpoints: a committed step survives a process crash but the last
    /// commits may be lost on power loss. Roughly twice the commit rate.
    Normal,
}

/// A SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// Every write transaction of this process holds it.
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Readers>,
}

/// The migrations, applied with the bookkeeping of `sqlx migrate` (same columns and
/// checksums) in a history table of the runtime's own, `squid_mesh_migrations`, so a host
/// application's own sqlx migrations in the same file are not touched.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The runtime's migration history in a SQLite file.
const HISTORY: &str = "squid_mesh_migrations";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened.
    pub async fn open(path: impl AsRef<Path>, synchronous: Synchronous) -> StoreResult<Self> {
        let path = path.as_ref().to_owned();
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                sqlite_tx::open(&path, synchronous, sqlite_tx::Role::Writer)
            })
            .await
        };
        let writer = match opened {
            Ok(conn) => conn?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        Ok(Self {
            readers: Arc::new(Readers::new(path.clone(), synchronous)),
            path,
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    /// `sql` with the runtime's table and index names as they are in a SQLite file: each
    /// carries the prefix `squid_mesh_` (`runs` is `squid_mesh_runs`), so the runtime can
    /// share a host application's database. For hosts and tools that read the runtime's
    /// tables directly; `$n` parameters become SQLite's `?n`.
    pub fn qualify(sql: &str) -> String {
        sqlite_tx::sqlite_text(sql)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The group-commit lane's writes (the caller marks its thread, see
    /// [`sqlite_tx::mark_lane_thread`]).
    pub(crate) fn mark_lane_thread() {
        sqlite_tx::mark_lane_thread();
    }

    async fn writer(&self) -> Conn {
        Conn::Writer(Arc::clone(&self.writer).lock_owned().await)
    }
}

/// Applies the migrations not yet applied, each in a transaction of its own (re-checked
/// inside it, so two processes migrating one file apply each once). Every table and index
/// is named with [`sqlite_tx::SQLITE_PREFIX`]; a file laid out by an earlier version (names
/// without the prefix, history in `_sqlx_migrations`) is renamed first.
fn migrate(conn: &Connection) -> StoreResult<()> {
    adopt_unprefixed(conn)?;
    let exists = |name: &str| -> StoreResult<bool> {
        Ok(conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )? > 0)
    };
    if !exists(HISTORY)? {
        // Tables with our names but no history of ours belong to someone else: refuse
        // before writing anything (not even the history).
        let mut st = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'squid\\_mesh\\_%' ESCAPE '\\' ORDER BY name",
        )?;
        let clash: Vec<String> = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !clash.is_empty() {
            return Err(StoreError::InvalidSetting(format!(
                "the database already has tables Squid Mesh did not create ({}); give the engine a file of its own",
                clash.join(", ")
            )));
        }
    }
    create_history(conn)?;
    for m in MIGRATOR.iter() {
        if !m.migration_type.is_up_migration() {
            continue;
        }
        let started = std::time::Instant::now();
        in_transaction(conn, || {
            let done: Option<(bool, Vec<u8>)> = conn
                .query_row(
                    &format!("SELECT success, checksum FROM {HISTORY} WHERE version = ?1"),
                    [m.version],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match done {
                Some((true, checksum)) if checksum == *m.checksum => Ok(()),
                Some((true, _)) => Err(StoreError::InvalidSetting(format!(
                    "migration {} was changed after it was applied to this database",
                    m.version
                ))),
                Some((false, _)) => Err(StoreError::InvalidSetting(format!(
                    "migration {} failed earlier and left this database partly migrated",
                    m.version
                ))),
                None => {
                    conn.execute_batch(&sqlite_tx::sqlite_text(m.sql.as_str()))?;
                    let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
                    conn.execute(
                        &format!("INSERT INTO {HISTORY} (version, description, success, checksum, execution_time) VALUES (?1, ?2, TRUE, ?3, ?4)"),
                        params![m.version, &*m.description, &*m.checksum, nanos],
                    )?;
                    Ok(())
                }
            }
        })?;
    }
    Ok(())
}

/// Creates [`HISTORY`] (the columns of sqlx's `_sqlx_migrations`) unless it exists.
fn create_history(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {HISTORY} (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        );"
    ))?;
    Ok(())
}

/// Runs `body` in a `BEGIN IMMEDIATE` transaction: committed when it succeeds, rolled back
/// when it fails.
fn in_transaction<T>(conn: &Connection, body: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match body() {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Renames the tables and indexes of a file laid out by an earlier version (unprefixed
/// names, our migrations recorded in `_sqlx_migrations`) to the prefixed names, and moves our
/// rows of the history to [`HISTORY`], in one transaction. Other rows of `_sqlx_migrations`
/// (a host's own) stay; the table is dropped only when nothing else is left in it.
fn adopt_unprefixed(conn: &Connection) -> StoreResult<()> {
    let Some(first) = MIGRATOR.iter().find(|m| m.migration_type.is_up_migration()) else {
        return Ok(());
    };
    in_transaction(conn, || {
        let tables: Vec<String> = {
            let mut st = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
            st.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let has = |name: &str| tables.iter().any(|t| t == name);
        if has(HISTORY) || !has("_sqlx_migrations") || !has("journal") || !has("attempts") {
            return Ok(());
        }
        let ours: bool = conn
            .query_row(
                "SELECT checksum FROM _sqlx_migrations WHERE version = ?1 AND success",
                [first.version],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .is_some_and(|c| c == *first.checksum);
        if !ours {
            return Ok(());
        }
        let indexes: Vec<(String, String)> = {
            let mut st = conn.prepare(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
            )?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter(|(name, _): &(String, String)| {
                    sqlite_tx::SQLITE_NAMES.contains(&name.as_str())
                })
                .collect()
        };
        for (name, _) in &indexes {
            conn.execute_batch(&format!("DROP INDEX \"{name}\""))?;
        }
        for table in sqlite_tx::SQLITE_NAMES.iter().filter(|t| has(t)) {
            conn.execute_batch(&format!(
                "ALTER TABLE \"{table}\" RENAME TO \"{}{table}\"",
                sqlite_tx::SQLITE_PREFIX
            ))?;
        }
        for (_, create) in &indexes {
            conn.execute_batch(&sqlite_tx::sqlite_text(create))?;
        }
        let versions: Vec<String> = MIGRATOR.iter().map(|m| m.version.to_string()).collect();
        let versions = versions.join(", ");
        create_history(conn)?;
        conn.execute_batch(&format!(
            "INSERT INTO {HISTORY} SELECT version, description, installed_on, success, checksum, execution_time FROM _sqlx_migrations WHERE version IN ({versions});
            DELETE FROM _sqlx_migrations WHERE version IN ({versions});"
        ))?;
        let left: i64 =
            conn.query_row("SELECT count(*) FROM _sqlx_migrations", [], |r| r.get(0))?;
        if left == 0 {
            conn.execute_batch("DROP TABLE _sqlx_migrations")?;
        }
        Ok(())
    })
}

impl Store for SqliteStore {
    type Tx = SqliteTx;

    async fn migrate(&self) -> StoreResult<()> {
        let (_, done) = sqlite_tx::off_workers(self.writer().await, migrate).await;
        done
    }

    async fn begin_write(&self) -> StoreResult<Self::Tx> {
        SqliteTx::begin(self.writer().await).await
    }

    async fn begin_read(&self) -> StoreResult<Self::Tx> {
        SqliteTx::begin(Conn::Reader(self.readers.get()?)).await
    }

    async fn listen(&self, _wake: super::Wakeups, listening: Box<dyn FnOnce() + Send>) {
        listening();
    }

    async fn catalog_version(&self) -> StoreResult<i64> {
        let reader = Conn::Reader(self.readers.get()?);
        Ok(reader
            .get()
            .prepare_cached(&sqlite_tx::sqlite_cached(sql::CATALOG_VERSION))?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0))
    }

    async fn any_due(&self, queue: &str, now: i64) -> StoreResult<bool> {
        let reader = Conn::Reader(self.readers.get()?);
        let due: i64 = reader
            .get()
            .prepare_cached(&sqlite_tx::sqlite_cached(sql::ANY_DUE))?
            .query_row(rusqlite::params![queue, now], |r| r.get(0))?;
        Ok(due != 0)
    }

    async fn run_status(&self, run_id: &str) -> StoreResult<Option<String>> {
        let reader = Conn::Reader(self.readers.get()?);
        Ok(reader
            .get()
            .prepare_cached(&sqlite_tx::sqlite_cached(sql::RUN_STATUS))?
            .query_row([run_id], |r| r.get(0))
            .optional()?)
    }

    async fn run_with_attempts(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<(RunRow, Vec<AttemptRow>)>> {
        // A read transaction: one snapshot for both statements.
        let mut tx = self.begin_read().await?;
        let Some(run) = tx.load_run(run_id, Lock::None).await? else {
            return Ok(None);
        };
        let attempts = tx.run_attempts(run_id).await?;
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
        let args = (
            runnable_key.to_owned(),
            claim_id.to_owned(),
            token_hash.to_owned(),
        );
        let (_, done) = sqlite_tx::off_workers(self.writer().await, move |c| {
            let n = c
                .prepare_cached(&sqlite_tx::sqlite_cached(sql::HEARTBEAT_SQL))?
                .execute(params![args.0, args.1, args.2, now, lease_until])?;
            Ok(n == 1)
        })
        .await;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::{MIGRATOR, sqlite_tx};

    /// Every table and index a migration creates is one the SQL text is rewritten for, so
    /// none is left without the prefix.
    #[test]
    fn every_migrated_name_gets_the_prefix() {
        for m in MIGRATOR.iter() {
            let words: Vec<&str> = m.sql.as_str().split_whitespace().collect();
            for w in words.windows(4) {
                let name = match w {
                    ["CREATE", "TABLE", name, ..]
                    | ["CREATE", "INDEX", name, ..]
                    | ["CREATE", "UNIQUE", "INDEX", name] => *name,
                    _ => continue,
                };
                assert!(
                    sqlite_tx::SQLITE_NAMES.contains(&name),
                    "{name} (migration {}) is missing from SQLITE_NAMES",
                    m.version
                );
            }
        }
    }
}
