//! SQLite: the embedded default. WAL; one writer connection (`BEGIN IMMEDIATE`, behind a
//! mutex) and a small pool of readers, all rusqlite (see `sqlite_tx`); a busy timeout so
//! several processes can share one file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Mutex;

use super::sqlite_tx::{self, Conn, Readers};
use super::{Store, StoreError, StoreResult, sql};

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

/// The migrations, applied with the bookkeeping of `sqlx migrate` (table
/// `_sqlx_migrations`, same checksums), so files migrated by earlier versions carry on.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

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
/// inside it, so two processes migrating one file apply each once).
fn migrate(conn: &Connection) -> StoreResult<()> {
    // A database whose tables share our names but that we never migrated belongs to
    // someone else: refuse before writing anything (not even the migration history).
    let history: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        [],
        |r| r.get(0),
    )?;
    if history == 0 {
        let mut st = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('definitions', 'runs', 'attempts', 'journal', 'commands', 'child_runs', 'schedules', 'schedule_fires', 'schedule_events') ORDER BY name",
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
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
            success BOOLEAN NOT NULL,
            checksum BLOB NOT NULL,
            execution_time BIGINT NOT NULL
        );",
    )?;
    for m in MIGRATOR.iter() {
        if !m.migration_type.is_up_migration() {
            continue;
        }
        let started = std::time::Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied = (|| -> StoreResult<()> {
            let done: Option<(bool, Vec<u8>)> = conn
                .query_row(
                    "SELECT success, checksum FROM _sqlx_migrations WHERE version = ?1",
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
                    conn.execute_batch(m.sql.as_str())?;
                    let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
                    conn.execute(
                        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (?1, ?2, TRUE, ?3, ?4)",
                        params![m.version, &*m.description, &*m.checksum, nanos],
                    )?;
                    Ok(())
                }
            }
        })();
        match applied {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(())
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
            .prepare_cached(sql::CATALOG_VERSION)?
            .query_row([], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0))
    }

    async fn run_status(&self, run_id: &str) -> StoreResult<Option<String>> {
        let reader = Conn::Reader(self.readers.get()?);
        Ok(reader
            .get()
            .prepare_cached(&sqlite_tx::numbered(sql::RUN_STATUS))?
            .query_row([run_id], |r| r.get(0))
            .optional()?)
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
                .prepare_cached(&sqlite_tx::numbered(sql::HEARTBEAT_SQL))?
                .execute(params![args.0, args.1, args.2, now, lease_until])?;
            Ok(n == 1)
        })
        .await;
        done
    }
}
