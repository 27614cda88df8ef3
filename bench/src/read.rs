//! The read side at scale: `list_runs`, `inspect_run` and `explain_run` latency with 10^4
//! and 10^6 runs stored, on SQLite and Postgres.
//!
//! A few real runs go through the engine; the bulk is inserted with one SQL statement per
//! table (the same row shapes: a run row, one settled attempt and two journal facts per run),
//! spread over ten workflows, four queues and five statuses.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use squid_mesh::actions::ActionRegistry;
use squid_mesh::inspect::{InspectOptions, Page, RunFilter};
use squid_mesh::{Engine, RunStatus, StartOptions};

use crate::{Backend, Figure, drop_schema, echo_action, percentile, pg_backend, three_steps};

/// Inserts runs `from..to` (1-based ids) copied from the shape of a real run.
pub(crate) async fn seed(
    backend: &Backend,
    from: u64,
    to: u64,
    definition_hash: &str,
    base_us: i64,
) -> Result<()> {
    use sqlx::Connection as _;
    // Synthetic runs are older than the real ones: created_at = base - (to_total - x) ms.
    let run_cols = "run_id, workflow, version, fingerprint, definition_hash, trigger_name, queue, status, input, context, steps, manual, compensation, error, idempotency_key, payload_hash, parent_run_id, replayed_from, created_at, updated_at, revision";
    let att_cols = "runnable_key, run_id, step, attempt, seq, queue, status, visible_at, due_at, claim_id, claim_token_hash, owner, lease_until, claims, input, outcome, deadline, created_at, updated_at";
    match backend {
        Backend::Sqlite(path) => {
            let mut c =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            let id = "printf('%08x-0000-4000-8000-%012x', x, x)";
            let series = format!(
                "WITH RECURSIVE c(x) AS (SELECT {from} UNION ALL SELECT x + 1 FROM c WHERE x < {to})"
            );
            let statements = [
                format!(
                    "{series} INSERT INTO runs ({run_cols}) SELECT {id}, 'wf_' || (x % 10), NULL, 'fp', '{definition_hash}', 'm', 'q' || (x % 4), \
                     CASE x % 5 WHEN 0 THEN 'running' WHEN 1 THEN 'paused' WHEN 2 THEN 'failed' ELSE 'completed' END, \
                     '{{\"n\":1}}', '{{\"one\":{{\"n\":1}}}}', '{{\"one\":\"completed\"}}', NULL, NULL, NULL, NULL, 'h', NULL, NULL, {base_us} - x * 1000, {base_us} - x * 1000, 3 FROM c"
                ),
                format!(
                    "{series} INSERT INTO attempts ({att_cols}) SELECT {id} || ':one:1', {id}, 'one', 1, 2, 'q' || (x % 4), 'succeeded', {base_us} - x * 1000, NULL, 'c', NULL, 'w', NULL, 1, '{{\"n\":1}}', '{{\"outcome\":\"succeeded\",\"output\":{{\"n\":1}},\"continue_after_ms\":null}}', NULL, {base_us} - x * 1000, {base_us} - x * 1000 FROM c"
                ),
                format!(
                    "{series} INSERT INTO journal (run_id, kind, data, occurred_at) SELECT {id}, k.kind, '{{}}', {base_us} - x * 1000 FROM c, (SELECT 'run_started' AS kind UNION ALL SELECT 'runnable_applied') k"
                ),
                "ANALYZE".to_owned(),
            ];
            for s in statements {
                let s = squid_mesh::store::SqliteStore::qualify(&s);
                sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut c).await?;
            }
        }
        Backend::Postgres { url, schema } => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                .execute(&mut c)
                .await?;
            let id = "lpad(to_hex(x), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(x), 12, '0')";
            let series = format!("generate_series({from}::bigint, {to}::bigint) AS x");
            let statements = [
                format!(
                    "INSERT INTO runs ({run_cols}) SELECT {id}, 'wf_' || (x % 10), NULL, 'fp', '{definition_hash}', 'm', 'q' || (x % 4), \
                     CASE x % 5 WHEN 0 THEN 'running' WHEN 1 THEN 'paused' WHEN 2 THEN 'failed' ELSE 'completed' END, \
                     '{{\"n\":1}}', '{{\"one\":{{\"n\":1}}}}', '{{\"one\":\"completed\"}}', NULL, NULL, NULL, NULL, 'h', NULL, NULL, {base_us} - x * 1000, {base_us} - x * 1000, 3 FROM {series}"
                ),
                format!(
                    "INSERT INTO attempts ({att_cols}) SELECT {id} || ':one:1', {id}, 'one', 1, 2, 'q' || (x % 4), 'succeeded', {base_us} - x * 1000, NULL, 'c', NULL, 'w', NULL, 1, '{{\"n\":1}}', '{{\"outcome\":\"succeeded\",\"output\":{{\"n\":1}},\"continue_after_ms\":null}}', NULL, {base_us} - x * 1000, {base_us} - x * 1000 FROM {series}"
                ),
                format!(
                    "INSERT INTO journal (run_id, kind, data, occurred_at) SELECT {id}, k.kind, '{{}}', {base_us} - x * 1000 FROM {series}, (VALUES ('run_started'), ('runnable_applied')) AS k(kind)"
                ),
                "ANALYZE".to_owned(),
            ];
            for s in statements {
                sqlx::query(sqlx::AssertSqlSafe(s)).execute(&mut c).await?;
            }
        }
    }
    Ok(())
}

async fn timed<F, Fut, T>(reps: usize, mut f: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, squid_mesh::EngineError>>,
{
    // One untimed call warms caches and prepared statements.
    f().await?;
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f().await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// Latencies (p50, p99 in ms) of each read at the current size.
async fn measure(
    engine: &Engine,
    target: squid_mesh::RunId,
    reps: usize,
) -> Result<Vec<(&'static str, f64, f64)>> {
    let mut out = Vec::new();
    let mut push = |name, lat: Vec<Duration>| {
        out.push((
            name,
            percentile(&lat, 0.5) / 1e3,
            percentile(&lat, 0.99) / 1e3,
        ));
    };
    let all = RunFilter::default();
    let first = Page::first(50);
    push(
        "list_runs first page (50)",
        timed(reps, || engine.list_runs(&all, &first)).await?,
    );
    let filtered = RunFilter::default()
        .workflow("wf_3")
        .status(RunStatus::Completed);
    push(
        "list_runs workflow+status (50)",
        timed(reps, || engine.list_runs(&filtered, &first)).await?,
    );
    // wf_3 runs are never failed: the filter matches nothing and must not scan.
    let empty = RunFilter::default()
        .workflow("wf_3")
        .status(RunStatus::Failed);
    push(
        "list_runs no match (0)",
        timed(reps, || engine.list_runs(&empty, &first)).await?,
    );
    let search = RunFilter::default().search("wf_7");
    push(
        "list_runs text search (50)",
        timed(reps, || engine.list_runs(&search, &first)).await?,
    );
    let queue = RunFilter::default().queue("q1").status(RunStatus::Running);
    push(
        "list_runs queue+status (50)",
        timed(reps, || engine.list_runs(&queue, &first)).await?,
    );
    // A deep page: the token of the 50th page of the unfiltered listing.
    let mut page = Page::first(50);
    for _ in 0..50 {
        match engine.list_runs(&all, &page).await?.next_page {
            Some(t) => page = Page::after(50, t),
            None => break,
        }
    }
    push(
        "list_runs page 50 by token (50)",
        timed(reps, || engine.list_runs(&all, &page)).await?,
    );
    let opts = InspectOptions::default;
    push(
        "inspect_run",
        timed(reps, || engine.inspect_run(target, opts())).await?,
    );
    push(
        "explain_run",
        timed(reps, || engine.explain_run(target, opts())).await?,
    );
    Ok(out)
}

/// Two real runs, one finished and one in flight: the in-flight run's id (the one read) and
/// the definition hash the seeded runs share.
pub(crate) async fn real_runs(engine: &Engine) -> Result<(squid_mesh::RunId, String)> {
    let spec = three_steps();
    let done = engine
        .start(&spec, None, json!({"n": 1}), StartOptions::default())
        .await?;
    while engine
        .execute_next(squid_mesh::ExecuteOptions::default())
        .await?
        .is_some()
    {}
    let target = engine
        .start(&spec, None, json!({"n": 2}), StartOptions::default())
        .await?
        .run_id;
    engine
        .execute_next(squid_mesh::ExecuteOptions::default())
        .await?;
    let hash = engine.snapshot(done.run_id).await?.definition_hash;
    Ok((target, hash))
}

/// `list_runs`, `inspect_run` and `explain_run` latency with 10^4 and 10^6 runs stored.
pub(crate) async fn read(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let sizes: [u64; 2] = if smoke {
        [1_000, 5_000]
    } else {
        [10_000, 1_000_000]
    };
    let reps = if smoke { 5 } else { 200 };
    let mut backends = vec![Backend::Sqlite(dir.path().join("read.db"))];
    if let Some(Backend::Postgres { url, schema }) = pg_backend().await {
        backends.push(Backend::Postgres {
            url,
            schema: format!("{schema}_read"),
        });
    }
    for backend in &backends {
        let engine = backend.engine(&registry, dir.path()).await?;
        let (target, hash) = real_runs(&engine).await?;
        let base = engine.now().0;
        let mut stored = 0u64;
        let mut at_size = Vec::new();
        for size in sizes {
            let t = Instant::now();
            seed(backend, stored + 1, size, &hash, base).await?;
            eprintln!(
                "{}: seeded {} runs in {:.1} s",
                backend.name(),
                size - stored,
                t.elapsed().as_secs_f64()
            );
            stored = size;
            at_size.push((size, measure(&engine, target, reps).await?));
        }
        let name = backend.name();
        for (size, rows) in &at_size {
            for (what, p50, p99) in rows {
                figures.push(Figure {
                    name: format!("{name} {what} p50, {size} runs"),
                    value: *p50,
                    unit: "ms",
                    target: None,
                });
                figures.push(Figure {
                    name: format!("{name} {what} p99, {size} runs"),
                    value: *p99,
                    unit: "ms",
                    target: None,
                });
            }
        }
        let (small, large) = (&at_size[0].1, &at_size[1].1);
        for ((what, p_small, _), (_, p_large, _)) in small.iter().zip(large) {
            figures.push(Figure {
                name: format!("{name} {what} p50 ratio {}/{}", sizes[1], sizes[0]),
                value: p_large / p_small,
                unit: "x",
                target: Some("near 1".into()),
            });
        }
    }
    for backend in &backends {
        drop_schema(backend).await;
    }
    Ok(figures)
}
