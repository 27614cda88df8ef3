//! Postgres: production. Tables live in their own schema (default `squid_mesh`); claims use
//! `FOR UPDATE SKIP LOCKED` so many workers on many hosts share one queue.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::{HEARTBEAT_SQL, Store, StoreError, StoreResult};

/// A Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: String,
    /// The pool belongs to the host, whose connections may have another `search_path`: set
    /// it at the start of every transaction.
    set_path: bool,
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
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            set_path: false,
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
        })
    }

    async fn begin(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        if self.set_path {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET LOCAL search_path TO \"{}\"",
                self.schema
            )))
            .execute(&mut *tx)
            .await?;
        }
        Ok(tx)
    }

    /// The connection pool (for hosts that share it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Store for PostgresStore {
    type Tx = sqlx::Transaction<'static, Postgres>;

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

    async fn begin_read(&self) -> StoreResult<Self::Tx> {
        self.begin().await
    }

    async fn listen(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let channel = format!("{}_squid_mesh_wakeup", self.schema);
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
                listener.listen(&channel).await?;
                loop {
                    listener.recv().await?;
                    wake.notify_waiters();
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            if let Err(e) = listening.await {
                tracing::warn!("wake-up listener on {channel}: {e}; reconnecting in {backoff:?}");
                // Work planned meanwhile is found by polling.
                wake.notify_waiters();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }

    async fn heartbeat(
        &self,
        runnable_key: &str,
        claim_id: &str,
        token_hash: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(HEARTBEAT_SQL)
            .bind(runnable_key)
            .bind(claim_id)
            .bind(token_hash)
            .bind(now)
            .bind(lease_until)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
