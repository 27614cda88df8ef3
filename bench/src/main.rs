//! Fixed-workload benchmarks that print their figures as a table and as JSON.
//!
//! ```sh
//! cargo run --release -p squid-mesh-bench -- wasm          # full workload
//! cargo run --release -p squid-mesh-bench -- durable       # commit floor, drain and closed loop
//! cargo run --release -p squid-mesh-bench -- closed        # the closed loop alone (see bench/dbos)
//! cargo run --release -p squid-mesh-bench -- read          # list/inspect with 10^4 and 10^6 runs
//! cargo run --release -p squid-mesh-bench -- latency       # one run at a time: 1, 5, 10 steps
//! cargo run --release -p squid-mesh-bench -- fanout        # 500 parallel steps and a join
//! cargo run --release -p squid-mesh-bench -- scale         # start/execute_next at 10^3 vs 10^6 runs
//! cargo run --release -p squid-mesh-bench -- wakeup        # start -> first step, idle pool
//! cargo run --release -p squid-mesh-bench -- langs         # per action language (scripts/build-guests first)
//! cargo run --release -p squid-mesh-bench -- schedules     # fire lateness, idle CPU, 1,000 schedules
//! cargo run --release -p squid-mesh-bench -- catalog       # approval -> first step, first use, claims
//! cargo run --release -p squid-mesh-bench -- dynamic       # schedule and drain 10^3, 10^4 dynamic nodes
//! cargo run --release -p squid-mesh-bench -- chaos         # minutes of SIGKILLs (build e2e-worker too)
//! cargo run --release -p squid-mesh-bench -- telemetry     # steps/s with and without OpenTelemetry
//! cargo run --release -p squid-mesh-bench -- dashboard     # dashboard pages with 10^6 runs
//! cargo run --release -p squid-mesh-bench -- durable --sqlite-normal     # SQLite synchronous=NORMAL
//! cargo run --release -p squid-mesh-bench -- fanout --fanout-width=2000  # a wider fan-out
//! cargo run --release -p squid-mesh-bench -- wasm --smoke  # tiny workload, for CI
//! ```
//!
//! `durable` uses SQLite in a temporary directory and the Postgres at `SQUID_MESH_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, a fresh schema), skipping
//! Postgres with a message when it cannot be reached.

mod catalog;
mod chaos;
mod dashboard;
mod dynamic;
mod langs;
mod read;
mod schedules;
mod shapes;
mod telemetry;
mod wakeup;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use squid_mesh::actions::{
    ActionHost, ActionKey, ActionRegistry, HostConfig, LoadSource, RegisteredAction, StepContext,
    StepOutcome,
};
use squid_mesh::{ActionTarget, Digest};
use squid_mesh_example_artifacts as artifacts;

#[derive(Debug)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<String>,
}

/// `--sqlite-normal`: SQLite runs with `synchronous = NORMAL` (fsync at checkpoints only)
/// instead of the default FULL, in the engines and the commit floor alike.
static SQLITE_NORMAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn sqlite_normal() -> bool {
    SQLITE_NORMAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// `--fanout-width=N`: the `fanout` workload's width (default 500).
static FANOUT_WIDTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(500);

fn fanout_width() -> usize {
    FANOUT_WIDTH.load(std::sync::atomic::Ordering::Relaxed)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    if args.iter().any(|a| a == "--sqlite-normal") {
        SQLITE_NORMAL.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(w) = args.iter().find_map(|a| a.strip_prefix("--fanout-width=")) {
        let w: usize = w
            .parse()
            .map_err(|_| anyhow::anyhow!("--fanout-width takes a number, not {w:?}"))?;
        FANOUT_WIDTH.store(w.max(1), std::sync::atomic::Ordering::Relaxed);
    }
    let workloads: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let workloads = if workloads.is_empty() {
        vec!["wasm"]
    } else {
        workloads
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    for w in workloads {
        match w {
            "wasm" => figures.extend(runtime.block_on(wasm(smoke))?),
            "durable" => figures.extend(runtime.block_on(durable(smoke))?),
            "closed" => figures.extend(runtime.block_on(closed(smoke))?),
            "read" => figures.extend(runtime.block_on(read::read(smoke))?),
            "wakeup" => figures.extend(runtime.block_on(wakeup::wakeup(smoke))?),
            "latency" => figures.extend(runtime.block_on(shapes::latency(smoke))?),
            "fanout" => figures.extend(runtime.block_on(shapes::fanout(smoke))?),
            "scale" => figures.extend(runtime.block_on(shapes::scale(smoke))?),
            "langs" => figures.extend(runtime.block_on(langs::langs(smoke))?),
            "schedules" => figures.extend(runtime.block_on(schedules::schedules(smoke))?),
            "catalog" => figures.extend(runtime.block_on(catalog::catalog(smoke))?),
            "dynamic" => figures.extend(runtime.block_on(dynamic::dynamic(smoke))?),
            "chaos" => figures.extend(runtime.block_on(chaos::chaos(smoke))?),
            "telemetry" => figures.extend(runtime.block_on(telemetry::telemetry(smoke))?),
            "dashboard" => figures.extend(runtime.block_on(dashboard::dashboard(smoke))?),
            other => bail!(
                "unknown workload {other:?}; known: wasm, durable, closed, latency, fanout, scale, read, wakeup, langs, schedules, catalog, dynamic, chaos, telemetry, dashboard"
            ),
        }
    }
    print_table(&figures);
    let json: Vec<Value> = figures
        .iter()
        .map(|f| json!({"name": f.name, "value": f.value, "unit": f.unit, "target": f.target}))
        .collect();
    println!(
        "{}",
        serde_json::to_string(&json!({"smoke": smoke, "figures": json}))?
    );
    Ok(())
}

fn print_table(figures: &[Figure]) {
    println!("{:<52} {:>14} {:<6} target", "figure", "value", "unit");
    for f in figures {
        println!(
            "{:<52} {:>14.2} {:<6} {}",
            f.name,
            f.value,
            f.unit,
            f.target.as_deref().unwrap_or("")
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

fn ctx() -> StepContext {
    StepContext {
        run_id: "bench".into(),
        workflow: "bench".into(),
        step: "echo".into(),
        attempt: 1,
        runnable_key: "bench:echo:1".into(),
        idempotency_key: "bench:echo:1".into(),
        step_idempotency_key: "bench:echo".into(),
        trace_parent: None,
    }
}

fn echo_action() -> Result<RegisteredAction> {
    let bytes = std::fs::read(artifacts::ECHO).context("echo component")?;
    Ok(RegisteredAction::from_file(
        ActionKey::new("echo")?,
        artifacts::ECHO,
        Digest::of(&bytes),
    ))
}

/// WASM overhead without a database: warm invocation, cold compile, cold start with cache.
async fn wasm(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let cache = tempfile::tempdir()?;
    let config = || HostConfig::default().cache_dir(cache.path().to_owned());
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let key = ActionKey::new("echo")?;

    // Cold: compile from bytes (empty cache).
    let host = ActionHost::new(registry.clone(), config())?;
    let t = Instant::now();
    let (_, source) = host.prepare(&key).await?;
    let cold_compile = t.elapsed();
    assert_eq!(source, LoadSource::Compiled);
    figures.push(Figure {
        name: "cold first use, compile (echo, 130 KB)".into(),
        value: cold_compile.as_secs_f64() * 1e3,
        unit: "ms",
        target: None,
    });
    drop(host);

    // Cold with cache: a new host (as after a restart) loads the compiled artifact.
    let rounds = if smoke { 3 } else { 20 };
    let mut cached = Vec::new();
    for _ in 0..rounds {
        let host = ActionHost::new(registry.clone(), config())?;
        let t = Instant::now();
        let (_, source) = host.prepare(&key).await?;
        let inv = host
            .invoke(
                &ActionTarget::Wasm(key.clone()),
                &ctx(),
                &serde_json::Map::new(),
            )
            .await?;
        cached.push(t.elapsed());
        assert_eq!(source, LoadSource::DiskCache);
        assert!(matches!(inv.outcome, StepOutcome::Succeeded { .. }));
    }
    cached.sort();
    figures.push(Figure {
        name: "cold first use with disk cache, p50 (load+invoke)".into(),
        value: percentile(&cached, 0.5) / 1e3,
        unit: "ms",
        target: Some("<= 20 ms".into()),
    });

    // Warm: new store + instantiate + call + JSON round trip, one at a time.
    let host = ActionHost::new(registry.clone(), config())?;
    let input: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"order_id": "o-1", "amount_cents": 1200, "note": "warm"}))?;
    let target = ActionTarget::Wasm(key.clone());
    host.invoke(&target, &ctx(), &input).await?;
    let n = if smoke { 200 } else { 20_000 };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let inv = host.invoke(&target, &ctx(), &input).await?;
        samples.push(t.elapsed());
        debug_assert!(matches!(inv.outcome, StepOutcome::Succeeded { .. }));
    }
    samples.sort();
    figures.push(Figure {
        name: "warm invocation p50 (store+instantiate+call+JSON)".into(),
        value: percentile(&samples, 0.5),
        unit: "us",
        target: Some("<= 20 us".into()),
    });
    figures.push(Figure {
        name: "warm invocation p99".into(),
        value: percentile(&samples, 0.99),
        unit: "us",
        target: None,
    });

    // Throughput with 8 concurrent callers on the 2-thread runtime.
    let concurrency = 8;
    let per_task = n / concurrency;
    let t = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let host = host.clone();
            let target = target.clone();
            let input = input.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    host.invoke(&target, &ctx(), &input).await?;
                }
                Ok::<_, squid_mesh::ActionError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = t.elapsed();
    figures.push(Figure {
        name: format!("warm invocations/s, {concurrency} concurrent callers"),
        value: (per_task * concurrency) as f64 / elapsed.as_secs_f64(),
        unit: "ops/s",
        target: None,
    });
    figures.push(Figure {
        name: "pooling allocator in use (1 = yes)".into(),
        value: f64::from(u8::from(host.is_pooling())),
        unit: "",
        target: None,
    });
    Ok(figures)
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) if sqlite_normal() => "sqlite (synchronous=NORMAL)",
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }

    fn builder(
        &self,
        registry: &ActionRegistry,
        cache: &std::path::Path,
    ) -> squid_mesh::EngineBuilder {
        let b = squid_mesh::Engine::builder()
            .registry(registry.clone())
            .host_config(HostConfig::default().cache_dir(cache.to_owned()));
        match self {
            Backend::Sqlite(path) => b.sqlite(path).synchronous(if sqlite_normal() {
                squid_mesh::store::Synchronous::Normal
            } else {
                squid_mesh::store::Synchronous::Full
            }),
            Backend::Postgres { url, schema } => b.postgres(url).postgres_schema(schema),
        }
    }

    async fn engine(
        &self,
        registry: &ActionRegistry,
        cache: &std::path::Path,
    ) -> Result<squid_mesh::Engine> {
        Ok(self.builder(registry, cache).build().await?)
    }
}

/// Single-row inserts, one transaction each, from `committers` concurrent tasks: the rate at
/// which this machine commits durably with the runtime's settings.
async fn commit_floor(backend: &Backend, committers: usize, total: usize) -> Result<f64> {
    use sqlx::Connection as _;
    let per = total / committers;
    let started;
    match backend {
        Backend::Sqlite(path) => {
            // rusqlite, the runtime's SQLite driver, with the runtime's settings (WAL, the
            // same `synchronous`): each commit a thread of its own drives, as the runtime's
            // writer does.
            let floor = path.with_file_name("floor.db");
            let sync = if sqlite_normal() { "NORMAL" } else { "FULL" };
            let open = move |floor: &std::path::Path| -> rusqlite::Result<rusqlite::Connection> {
                let c = rusqlite::Connection::open(floor)?;
                c.busy_timeout(Duration::from_secs(30))?;
                c.execute_batch(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};"
                ))?;
                Ok(c)
            };
            open(&floor)?.execute_batch(
                "CREATE TABLE IF NOT EXISTS floor (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)",
            )?;
            started = Instant::now();
            let threads: Vec<_> = (0..committers)
                .map(|_| {
                    let floor = floor.clone();
                    std::thread::spawn(move || -> rusqlite::Result<()> {
                        let c = open(&floor)?;
                        let payload = "x".repeat(200);
                        for _ in 0..per {
                            c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
                            c.prepare_cached("INSERT INTO floor (payload) VALUES (?1)")?
                                .execute([&payload])?;
                            c.prepare_cached("COMMIT")?.execute([])?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for t in threads {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a floor thread panicked"))??;
            }
        }
        Backend::Postgres { url, schema } => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut c)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE IF NOT EXISTS {schema}.floor (id BIGSERIAL PRIMARY KEY, payload TEXT NOT NULL)")))
                .execute(&mut c)
                .await?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .test_before_acquire(false)
                .max_connections(committers as u32)
                .connect(url)
                .await?;
            let insert = format!("INSERT INTO {schema}.floor (payload) VALUES ($1)");
            started = Instant::now();
            let tasks: Vec<_> = (0..committers)
                .map(|_| {
                    let pool = pool.clone();
                    let insert = insert.clone();
                    tokio::spawn(async move {
                        for _ in 0..per {
                            let mut tx = pool.begin().await?;
                            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                                .bind("x".repeat(200))
                                .execute(&mut *tx)
                                .await?;
                            tx.commit().await?;
                        }
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
        }
    }
    Ok((per * committers) as f64 / started.elapsed().as_secs_f64())
}

fn three_steps() -> squid_mesh::WorkflowSpec {
    use squid_mesh::spec::{Step, Trigger};
    squid_mesh::WorkflowSpec::builder("bench_linear")
        .trigger(Trigger::manual("m").integer("n"))
        .step(Step::action("one", "echo").output("one"))
        .step(Step::action("two", "echo").input(["n"]).output("two"))
        .step(Step::action("three", "echo").input(["n"]).output("three"))
        .on_ok("one", "two")
        .on_ok("two", "three")
        .build()
}

/// Starts `runs` runs of a 3-step workflow, then drains them with a worker pool of
/// `workers` slots. Returns (steps/s, runs/s, start-to-complete latencies taken from each
/// run's `created_at` and `updated_at`, written by the engine's clock).
async fn drain_runs(
    engine: &squid_mesh::Engine,
    runs: usize,
    workers: usize,
) -> Result<(f64, f64, Vec<Duration>)> {
    use squid_mesh::inspect::{Page, RunFilter};
    let spec = three_steps();
    for i in 0..runs {
        engine
            .start(
                &spec,
                None,
                json!({"n": i}),
                squid_mesh::StartOptions::default(),
            )
            .await?;
    }
    let t = Instant::now();
    let pool = squid_mesh::Worker::builder(engine)
        .concurrency(workers)
        .owner_id("bench")
        .start()?;
    let running = RunFilter::default().status(squid_mesh::RunStatus::Running);
    while !engine
        .list_runs(&running, &Page::first(1))
        .await?
        .runs
        .is_empty()
    {
        if t.elapsed() > Duration::from_secs(1200) {
            bail!("runs did not finish in 20 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t.elapsed().as_secs_f64();
    pool.shutdown(Duration::from_secs(5)).await;
    let mut latencies = Vec::with_capacity(runs);
    let done = RunFilter::default().status(squid_mesh::RunStatus::Completed);
    let mut page = Page::first(1000);
    loop {
        let result = engine.list_runs(&done, &page).await?;
        for r in &result.runs {
            latencies.push(Duration::from_micros(
                (r.updated_at.0 - r.created_at.0).max(0) as u64,
            ));
        }
        match result.next_page {
            Some(token) => page = Page::after(1000, token),
            None => break,
        }
    }
    if latencies.len() != runs {
        bail!("{} of {runs} runs completed", latencies.len());
    }
    latencies.sort();
    Ok((
        (runs * 3) as f64 / elapsed,
        runs as f64 / elapsed,
        latencies,
    ))
}

/// The closed loop users (and DBOS' harness) run: `callers` tasks each start a run of the
/// 3-step workflow and await its end (`Engine::wait_for_run`), `runs` runs in all, against a
/// pool of `workers` slots; starts are inside the timed window. Returns steps/s.
async fn closed_loop(
    engine: &squid_mesh::Engine,
    runs: usize,
    callers: usize,
    workers: usize,
) -> Result<f64> {
    let pool = squid_mesh::Worker::builder(engine)
        .concurrency(workers)
        .owner_id("bench")
        .start()?;
    pool.ready().await;
    // Untimed warm-up, as DBOS' harness has: the action loaded, connections open.
    let spec = three_steps();
    for i in 0..callers {
        let run = engine
            .start(
                &spec,
                None,
                json!({"n": -1 - i as i64}),
                squid_mesh::StartOptions::default(),
            )
            .await?;
        engine
            .wait_for_run(run.run_id, Duration::from_secs(120))
            .await?;
    }
    let per = runs / callers;
    let t = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let spec = three_steps();
                for i in 0..per {
                    let run = engine
                        .start(
                            &spec,
                            None,
                            json!({"n": c * per + i}),
                            squid_mesh::StartOptions::default(),
                        )
                        .await?;
                    let end = engine
                        .wait_for_run(run.run_id, Duration::from_secs(120))
                        .await?;
                    if end.status != squid_mesh::RunStatus::Completed {
                        bail!("run {} ended {:?}", run.run_id, end.status);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = t.elapsed().as_secs_f64();
    pool.shutdown(Duration::from_secs(5)).await;
    Ok((per * callers * 3) as f64 / elapsed)
}

/// Resets this process's peak resident set size (Linux `clear_refs`), so the next
/// [`peak_rss_kib`] covers only what runs in between.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size of this process in KiB (`VmHWM`), if readable.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Drops a Postgres backend's schema (nothing for SQLite, whose files live in a temp dir).
async fn drop_schema(backend: &Backend) {
    if let Backend::Postgres { url, schema } = backend {
        use sqlx::Connection as _;
        if let Ok(mut c) = sqlx::PgConnection::connect(url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&mut c)
            .await;
        }
    }
}

async fn pg_backend() -> Option<Backend> {
    use sqlx::Connection as _;
    let url = std::env::var("SQUID_MESH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    match sqlx::PgConnection::connect(&url).await {
        Ok(c) => {
            let _ = c.close().await;
            Some(Backend::Postgres {
                url,
                schema: format!("sm_bench_{}", std::process::id()),
            })
        }
        Err(e) => {
            eprintln!("!!! skipping Postgres: {url} is not reachable ({e})");
            None
        }
    }
}

/// Commit floor and durable throughput on each backend.
async fn durable(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let mut backends = vec![];
    let pg = pg_backend().await;
    let floor_n = if smoke { 40 } else { 2_000 };
    let runs = if smoke { 16 } else { 2_000 };
    for workers in [1usize, 8] {
        backends.push((
            workers,
            Backend::Sqlite(dir.path().join(format!("bench-{workers}.db"))),
        ));
        if let Some(Backend::Postgres { url, schema }) = &pg {
            backends.push((
                workers,
                Backend::Postgres {
                    url: url.clone(),
                    schema: format!("{schema}_{workers}"),
                },
            ));
        }
    }
    let mut floors = std::collections::HashMap::new();
    for b in [Backend::Sqlite(dir.path().join("floor-dir.db"))]
        .into_iter()
        .chain(pg.clone())
    {
        for committers in [1usize, 8] {
            let rate = commit_floor(&b, committers, floor_n).await?;
            floors.insert((b.name(), committers), rate);
            figures.push(Figure {
                name: format!("{} commit floor, {committers} committer(s)", b.name()),
                value: rate,
                unit: "tx/s",
                target: None,
            });
        }
    }
    for (workers, backend) in &backends {
        let engine = backend.engine(&registry, dir.path()).await?;
        reset_peak_rss();
        let (steps, runs_s, lat) = drain_runs(&engine, runs, *workers).await?;
        if let Some(kib) = peak_rss_kib() {
            figures.push(Figure {
                name: format!(
                    "{} worker process peak RSS, {workers} worker(s)",
                    backend.name()
                ),
                value: kib as f64 / 1024.0,
                unit: "MiB",
                target: (*workers == 8).then(|| "<= 150".to_owned()),
            });
        }
        let floor = floors
            .get(&(backend.name(), 1))
            .copied()
            .unwrap_or(f64::NAN);
        let name = backend.name();
        figures.push(Figure {
            name: format!("{name} durable steps/s, {workers} worker(s)"),
            value: steps,
            unit: "steps/s",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} runs/s, {workers} worker(s)"),
            value: runs_s,
            unit: "runs/s",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} run latency p50, {workers} worker(s)"),
            value: percentile(&lat, 0.5) / 1e3,
            unit: "ms",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} run latency p99, {workers} worker(s)"),
            value: percentile(&lat, 0.99) / 1e3,
            unit: "ms",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} steps/s / 1-committer floor, {workers} worker(s)"),
            value: steps / floor,
            unit: "x",
            target: Some(if *workers == 8 { ">= 1.5" } else { ">= 1" }.to_owned()),
        });
    }
    figures.extend(closed_loops(&registry, dir.path(), pg.as_ref(), &floors, runs).await?);
    for backend in backends.iter().map(|(_, b)| b).chain(pg.as_ref()) {
        drop_schema(backend).await;
    }
    Ok(figures)
}

/// The closed loop alone, with the 1-committer floors (quicker than `durable`, for
/// comparing builds).
async fn closed(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let pg = pg_backend().await;
    let floor_n = if smoke { 40 } else { 2_000 };
    let runs = if smoke { 16 } else { 2_000 };
    let mut floors = std::collections::HashMap::new();
    for b in [Backend::Sqlite(dir.path().join("floor-dir.db"))]
        .into_iter()
        .chain(pg.clone())
    {
        let rate = commit_floor(&b, 1, floor_n).await?;
        floors.insert((b.name(), 1), rate);
        figures.push(Figure {
            name: format!("{} commit floor, 1 committer(s)", b.name()),
            value: rate,
            unit: "tx/s",
            target: None,
        });
    }
    figures.extend(closed_loops(&registry, dir.path(), pg.as_ref(), &floors, runs).await?);
    if let Some(pg) = &pg {
        drop_schema(pg).await;
    }
    Ok(figures)
}

/// The closed loop (8 callers, 8 workers, fresh database) on each backend, with its ratio
/// to the backend's 1-committer floor.
async fn closed_loops(
    registry: &ActionRegistry,
    dir: &std::path::Path,
    pg: Option<&Backend>,
    floors: &std::collections::HashMap<(&'static str, usize), f64>,
    runs: usize,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let callers = 8;
    let mut looped = vec![Backend::Sqlite(dir.join("closed-loop.db"))];
    if let Some(Backend::Postgres { url, schema }) = pg {
        looped.push(Backend::Postgres {
            url: url.clone(),
            schema: format!("{schema}_closed"),
        });
    }
    for backend in &looped {
        let engine = backend.engine(registry, dir).await?;
        let steps = closed_loop(&engine, runs, callers, 8).await?;
        let name = backend.name();
        let floor = floors.get(&(name, 1)).copied().unwrap_or(f64::NAN);
        figures.push(Figure {
            name: format!("{name} closed loop steps/s, {callers} callers, 8 workers"),
            value: steps,
            unit: "steps/s",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} closed loop / 1-committer floor"),
            value: steps / floor,
            unit: "x",
            target: None,
        });
        engine.close().await;
        drop_schema(backend).await;
    }
    Ok(figures)
}
