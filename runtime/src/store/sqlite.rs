//! SQLite: the embedded default. WAL, one writer connection (`BEGIN IMMEDIATE`) plus a read
//! pool, a busy timeout so several processes can share one file.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::{HEARTBEAT_SQL, Store, StoreResult};

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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, readers })
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
        }
    }
}

impl Store for SqliteStore {
    type Tx = sqlx::Transaction<'static, Sqlite>;

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn begin_write(&self) -> StoreResult<Self::Tx> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn begin_read(&self) -> StoreResult<Self::Tx> {
        Ok(self.readers.begin().await?)
    }

    async fn listen(&self, _wake: std::sync::Arc<tokio::sync::Notify>) {}

    async fn heartbeat(
        &self,
        runnable_key: &str,
        claim_id: &str,
        token_hash: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<bool> {
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
