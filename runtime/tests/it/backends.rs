//! Runs a test body against every database: a fresh SQLite file and a fresh Postgres schema.
//!
//! Postgres comes from `SQUID_MESH_PG_URL` (set by `scripts/test`), else the local server
//! at 127.0.0.1:5432. In CI (`CI=true`) an unreachable Postgres fails the test; elsewhere
//! the Postgres half is skipped with a loud message.

use std::future::Future;
use std::path::PathBuf;

use squid_mesh::actions::{ActionRegistry, HostConfig};
use squid_mesh::clock::{ManualClock, Timestamp};
use squid_mesh::{Engine, EngineBuilder};

/// 2026-11-25T12:00:00Z.
pub const T0: Timestamp = Timestamp(1_795_608_000_000_000);

/// Where a test's engine keeps its state; build more engines on it to simulate restarts.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Db {
    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres { .. } => "postgres",
        }
    }

    pub fn builder(&self, registry: &ActionRegistry, clock: &ManualClock) -> EngineBuilder {
        let b = Engine::builder()
            .registry(registry.clone())
            .clock(clock.clone())
            .host_config(HostConfig::default().cache_dir(crate::support::shared_cache()));
        match self {
            Db::Sqlite(path) => b.sqlite(path),
            Db::Postgres { url, schema } => b.postgres(url).postgres_schema(schema),
        }
    }

    /// Runs one SQL statement against the database behind the engine's back.
    pub async fn execute(&self, statement: &str) {
        use sqlx::Connection as _;
        match self {
            Db::Sqlite(path) => {
                let mut c =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .expect("connects");
                let statement = squid_mesh::store::SqliteStore::qualify(statement);
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut c)
                    .await
                    .expect("runs");
            }
            Db::Postgres { url, schema } => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("connects");
                sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                    .execute(&mut c)
                    .await
                    .expect("search path");
                sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                    .execute(&mut c)
                    .await
                    .expect("runs");
            }
        }
    }

    pub async fn engine(&self, registry: &ActionRegistry, clock: &ManualClock) -> Engine {
        self.builder(registry, clock)
            .build()
            .await
            .expect("engine builds")
    }
}

fn pg_url() -> Option<String> {
    if std::env::var_os("SQUID_MESH_SKIP_POSTGRES").is_some()
        && std::env::var("CI").as_deref() != Ok("true")
    {
        return None;
    }
    Some(
        std::env::var("SQUID_MESH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )
}

async fn pg_reachable(url: &str) -> bool {
    use sqlx::Connection as _;
    match sqlx::PgConnection::connect(url).await {
        Ok(c) => {
            let _ = c.close().await;
            true
        }
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL is required in CI but {url} refused: {e}");
            }
            eprintln!(
                "\n!!!!! SKIPPING POSTGRES: {url} is not reachable ({e}); start it or run scripts/test !!!!!\n"
            );
            false
        }
    }
}

/// The Postgres URL to test against, or `None` (after a loud message) when Postgres is to be
/// skipped outside CI.
pub async fn postgres_url() -> Option<String> {
    let url = pg_url()?;
    pg_reachable(&url).await.then_some(url)
}

/// Runs `body` on a fresh SQLite file with a fresh manual clock at [`T0`].
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Db, ManualClock) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    body(
        Db::Sqlite(dir.path().join("squid.db")),
        ManualClock::new(T0),
    )
    .await;
}

/// Runs `body` on a fresh Postgres schema (dropped afterwards) with a fresh manual clock at
/// [`T0`]; skipped loudly outside CI when Postgres is not reachable.
pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Db, ManualClock) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = pg_url() else {
        eprintln!("\n!!!!! SKIPPING POSTGRES: SQUID_MESH_SKIP_POSTGRES is set !!!!!\n");
        return;
    };
    if !pg_reachable(&url).await {
        return;
    }
    let schema = format!("sm_test_{}", uuid_hex());
    body(
        Db::Postgres {
            url: url.clone(),
            schema: schema.clone(),
        },
        ManualClock::new(T0),
    )
    .await;
    use sqlx::Connection as _;
    if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE"
        )))
        .execute(&mut c)
        .await;
    }
}

/// One test case per database from `async fn name(db: Db, clock: ManualClock)`: the cases
/// are `name::sqlite` and `name::postgres`, so each backend passes or fails by name.
macro_rules! on_each_backend {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::backends::on_sqlite(super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                crate::backends::on_postgres(super::$name).await;
            }
        }
    )+};
}
pub(crate) use on_each_backend;

fn uuid_hex() -> String {
    squid_mesh::RunId::random().to_string().replace('-', "")
}
