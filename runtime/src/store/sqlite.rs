//! SQLite: the embedded default. WAL, one writer connection (`BEGIN IMMEDIATE`) plus a read
//! pool, a busy timeout so several processes can share one file. The group commit of a
//! store opened from a path writes through its own connection instead (see `direct`); one
//! write lock per store orders the two writers.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Direct, HEARTBEAT_SQL, Store, StoreError, StoreResult};

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
    writer: SqlitePool,
    readers: SqlitePool,
    /// The file, when the store opened it (the embedded writer opens it again).
    path: Option<PathBuf>,
    synchronous: Synchronous,
    /// Held by every write transaction of this process.
    write_lock: Arc<Mutex<()>>,
}

/// A transaction on a SQLite store; a write transaction holds the store's write lock.
#[derive(Debug)]
pub struct SqliteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    _write: Option<OwnedMutexGuard<()>>,
}

impl SqliteTx {
    pub(super) async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for SqliteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened.
    pub async fn open(path: impl AsRef<Path>, synchronous: Synchronous) -> StoreResult<Self> {
        let url = format!("sqlite://{}", path.as_ref().display());
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        // No ping when a connection is checked out (a hop to its thread per transaction).
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            readers,
            path: Some(path.as_ref().to_owned()),
            synchronous,
            write_lock: Arc::default(),
        })
    }

    /// Opens the embedded writer's connection, when the store was opened from a path.
    pub(crate) fn direct_writer(&self) -> Option<(Direct, Arc<Mutex<()>>)> {
        let path = self.path.as_ref()?;
        match super::direct::open(path, self.synchronous) {
            Ok(conn) => Some((Direct(conn), self.write_lock.clone())),
            Err(e) => {
                tracing::warn!("SQLite embedded writer unavailable, using sqlx: {e}");
                None
            }
        }
    }
}

impl SqliteStore {
    /// Uses a pool the host owns for both reads and writes. Configure it for WAL and a busy
    /// timeout; a single-connection pool gives the same one-writer discipline as [`open`].
    ///
    /// [`open`]: SqliteStore::open
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            writer: pool.clone(),
            readers: pool,
            path: None,
            synchronous: Synchronous::Full,
            write_lock: Arc::default(),
        }
    }
}

impl Store for SqliteStore {
    type Tx = SqliteTx;

    async fn migrate(&self) -> StoreResult<()> {
        let _write = self.write_lock.lock().await;
        // A database whose tables share our names but that we never migrated belongs to
        // someone else: refuse before writing anything (not even the migration history).
        let (history,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.writer)
        .await?;
        if history == 0 {
            let clash: Vec<(String,)> = sqlx::query_as(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('definitions', 'runs', 'attempts', 'journal', 'commands', 'child_runs', 'schedules', 'schedule_fires', 'schedule_events') ORDER BY name",
            )
            .fetch_all(&self.writer)
            .await?;
            if !clash.is_empty() {
                let names: Vec<String> = clash.into_iter().map(|(n,)| n).collect();
                return Err(StoreError::InvalidSetting(format!(
                    "the database already has tables Squid Mesh did not create ({}); give the engine a file of its own",
                    names.join(", ")
                )));
            }
        }
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn begin_write(&self) -> StoreResult<Self::Tx> {
        let write = self.write_lock.clone().lock_owned().await;
        Ok(SqliteTx {
            tx: self.writer.begin_with("BEGIN IMMEDIATE").await?,
            _write: Some(write),
        })
    }

    async fn begin_read(&self) -> StoreResult<Self::Tx> {
        Ok(SqliteTx {
            tx: self.readers.begin().await?,
            _write: None,
        })
    }

    async fn listen(
        &self,
        _wake: std::sync::Arc<tokio::sync::Notify>,
        listening: Box<dyn FnOnce() + Send>,
    ) {
        listening();
    }

    async fn run_status(&self, run_id: &str) -> StoreResult<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(super::sql::RUN_STATUS)
            .bind(run_id)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|r| r.0))
    }

    async fn heartbeat(
        &self,
        runnable_key: &str,
        claim_id: &str,
        token_hash: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<bool> {
        let _write = self.write_lock.lock().await;
        let done = sqlx::query(HEARTBEAT_SQL)
            .bind(runnable_key)
            .bind(claim_id)
            .bind(token_hash)
            .bind(now)
            .bind(lease_until)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
