//! What the dashboard's tests share: a fresh database per test (a SQLite file, a Postgres
//! schema), an engine whose actions come from the catalog, a seeded set of runs, and
//! requests through the real router.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use squid_mesh::actions::{ActionRegistry, HostConfig, LogLevel};
use squid_mesh::clock::{ManualClock, Timestamp};
use squid_mesh::engine::{Approval, CatalogCommand, ExecuteOptions, ManualAttrs};
use squid_mesh::spec::{DeadlineSpec, Step, Trigger, WorkflowSpec};
use squid_mesh::{ActionKey, Engine, RunId, StartOptions};
use squid_mesh_example_artifacts as artifacts;
use tower::ServiceExt as _;

/// 2026-11-25T12:00:00Z.
pub const T0: Timestamp = Timestamp(1_795_608_000_000_000);

#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl Db {
    pub async fn engine(&self, clock: Option<&ManualClock>) -> Engine {
        let cache = std::env::temp_dir().join("squid-mesh-dashboard-test-cache");
        let b = Engine::builder()
            .registry(ActionRegistry::new())
            .host_config(HostConfig::default().cache_dir(cache));
        let b = match clock {
            Some(c) => b.clock(c.clone()),
            None => b,
        };
        let b = match self {
            Db::Sqlite(path) => b.sqlite(path),
            Db::Postgres { url, schema } => b.postgres(url).postgres_schema(schema),
        };
        b.build().await.expect("engine builds")
    }

    /// The database as `squid-mesh --database` and `--schema` take it.
    pub fn cli_args(&self) -> Vec<String> {
        match self {
            Db::Sqlite(path) => vec!["--database".into(), path.display().to_string()],
            Db::Postgres { url, schema } => vec![
                "--database".into(),
                url.clone(),
                "--schema".into(),
                schema.clone(),
            ],
        }
    }
}

fn pg_url() -> Option<String> {
    if std::env::var_os("SQUID_MESH_SKIP_POSTGRES").is_some()
        && std::env::var("CI").as_deref() != Ok("true")
    {
        eprintln!("\n!!!!! SKIPPING POSTGRES: SQUID_MESH_SKIP_POSTGRES is set !!!!!\n");
        return None;
    }
    Some(
        std::env::var("SQUID_MESH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )
}

async fn psql(url: &str, statement: &str) -> Result<(), String> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    body(Db::Sqlite(dir.path().join("squid.db"))).await;
}

pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = pg_url() else { return };
    if let Err(e) = psql(&url, "SELECT 1").await {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PostgreSQL is required in CI but {url} refused: {e}");
        }
        eprintln!("\n!!!!! SKIPPING POSTGRES: {url} is not reachable ({e}) !!!!!\n");
        return;
    }
    let schema = format!("sm_dash_{}", RunId::random().to_string().replace('-', ""));
    body(Db::Postgres {
        url: url.clone(),
        schema: schema.clone(),
    })
    .await;
    let _ = psql(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
}

/// One test case per database: `name::sqlite` and `name::postgres`.
macro_rules! on_each_backend {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::support::on_sqlite(super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                crate::support::on_postgres(super::$name).await;
            }
        }
    )+};
}
pub(crate) use on_each_backend;

/// The orders workflow: a log step, a WebAssembly charge from the catalog, an approval gate
/// with a deadline, then ship or decline.
pub fn orders() -> WorkflowSpec {
    WorkflowSpec::builder("orders")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .integer("amount_cents")
                .string("card"),
        )
        .step(Step::log("received", LogLevel::Info, "order received"))
        .step(
            Step::action("charge", "pay.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["amount_cents"])
                .output("payment"),
        )
        .step(
            Step::approval("review")
                .output("review")
                .deadline(DeadlineSpec {
                    within_ms: 3_600_000,
                    due_soon_ms: Some(600_000),
                    escalate_after_ms: Some(7_200_000),
                    escalation: Some("page the on-call".into()),
                }),
        )
        .step(Step::log("ship", LogLevel::Info, "shipping"))
        .step(Step::log("decline", LogLevel::Info, "declined"))
        .on_ok("received", "charge")
        .on_ok("charge", "review")
        .on_ok("review", "ship")
        .on_error("review", "decline")
        .build()
}

/// A workflow whose charge is declined: a failed run with error details.
pub fn declined() -> WorkflowSpec {
    WorkflowSpec::builder("declined")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .integer("amount_cents")
                .boolean("decline"),
        )
        .step(
            Step::action("charge", "pay.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["amount_cents"])
                .input_path("decline", ["decline"])
                .output("payment"),
        )
        .on_ok("charge", "complete")
        .build()
}

pub async fn approve_charge(engine: &Engine) {
    engine
        .catalog()
        .approve(Approval::new(
            ActionKey::new("pay.charge").unwrap(),
            std::fs::read(artifacts::CHARGE_PAYMENT).expect("component built"),
            CatalogCommand::by("ana").comment("first release"),
        ))
        .await
        .expect("approves");
}

pub async fn drain(engine: &Engine) {
    while engine
        .execute_next(ExecuteOptions::default())
        .await
        .expect("executes")
        .is_some()
    {}
}

/// Runs the tests look at.
pub struct Seeded {
    /// Approved and shipped.
    pub shipped: RunId,
    /// Waiting at the approval gate.
    pub waiting: RunId,
    /// The charge was declined (its details hold `o-details-SECRET`).
    pub failed: RunId,
}

/// Payment data nobody but auditors may see.
pub const CARD: &str = "4111-CARD-SECRET";
/// Command metadata nobody but auditors may see.
pub const TICKET: &str = "T-METADATA-SECRET";
/// A secret in command metadata: redacted before it is stored, so nobody sees it.
pub const API_KEY: &str = "sk_live_NEVER_SHOWN";

pub async fn seed(engine: &Engine, clock: &ManualClock) -> Seeded {
    approve_charge(engine).await;
    let start = |spec: WorkflowSpec, payload: Value| async move {
        let run = engine
            .start(&spec, None, payload, StartOptions::default())
            .await
            .expect("starts");
        run.run_id
    };
    let shipped = start(
        orders(),
        json!({"order_id": "o-1", "amount_cents": 900, "card": CARD}),
    )
    .await;
    clock.advance(Duration::from_secs(1));
    let waiting = start(
        orders(),
        json!({"order_id": "o-2", "amount_cents": 500, "card": CARD}),
    )
    .await;
    clock.advance(Duration::from_secs(1));
    let failed = start(
        declined(),
        json!({"order_id": "o-details-SECRET", "amount_cents": 100, "decline": true}),
    )
    .await;
    drain(engine).await;
    let mut metadata = serde_json::Map::new();
    metadata.insert("ticket".into(), json!(TICKET));
    metadata.insert("api_key".into(), json!(API_KEY));
    engine
        .approve(
            shipped,
            ManualAttrs::by("ana")
                .comment("looks fine")
                .metadata(metadata),
        )
        .await
        .expect("approves");
    drain(engine).await;
    Seeded {
        shipped,
        waiting,
        failed,
    }
}

/// A response: status, headers, body text.
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token the page's forms carry.
    pub fn csrf(&self) -> Option<String> {
        let at = self.body.find("data-csrf=\"")? + "data-csrf=\"".len();
        let end = self.body[at..].find('"')?;
        Some(self.body[at..at + end].to_owned())
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Reply {
    let r = app.clone().oneshot(req).await.expect("router answers");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = axum::body::to_bytes(r.into_body(), 10 << 20)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn get(app: &Router, path: &str, token: Option<&str>) -> Reply {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

pub async fn post(app: &Router, path: &str, form: &[(&str, &str)], token: Option<&str>) -> Reply {
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    send(app, b.body(Body::from(body)).unwrap()).await
}
