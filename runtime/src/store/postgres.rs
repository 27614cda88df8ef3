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
}

impl PostgresStore {
    /// Connects to `url`, keeping Squid Mesh's tables in `schema`.
    ///
    /// # Errors
    ///
    /// When the URL is invalid, the schema name is not an identifier, or the server cannot
    /// be reached.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> StoreResult<Self> {
        let ident_ok = schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && schema.len() <= 63;
        if !ident_ok {
            return Err(StoreError::Corrupt {
                what: "postgres schema name".into(),
                message: format!("{schema:?} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"),
            });
        }
        let options = PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
        })
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
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn begin_write(&self) -> StoreResult<Self::Tx> {
        Ok(self.pool.begin().await?)
    }

    async fn begin_read(&self) -> StoreResult<Self::Tx> {
        Ok(self.pool.begin().await?)
    }

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
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
