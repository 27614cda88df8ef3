//! The action catalog: how soon a running worker runs an action approved by another engine,
//! what the first use of a digest costs when its bytes come from the database (with and
//! without the disk cache), and whether claims cost the same with 1,000 approved actions as
//! with 10.
//!
//! Engines here stand for processes: each has its own action host and, where it says so, its
//! own disk cache; they share only the database.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use squid_mesh::actions::{ActionRegistry, HostConfig, LoadSource, RegisteredAction};
use squid_mesh::engine::{Approval, CatalogCommand, ExecuteOptions};
use squid_mesh::spec::{Step, Trigger};
use squid_mesh::{ActionKey, Engine, StartOptions, Worker, WorkflowSpec};
use squid_mesh_example_artifacts as artifacts;

use crate::{Backend, Figure, percentile};

async fn engine(backend: &Backend, cache: Option<&Path>) -> Result<Engine> {
    let config = match cache {
        Some(dir) => HostConfig::default().cache_dir(dir.to_owned()),
        None => HostConfig::default(),
    };
    let b = Engine::builder()
        .registry(ActionRegistry::new())
        .host_config(config);
    let b = match backend {
        Backend::Sqlite(path) => b.sqlite(path),
        Backend::Postgres { url, schema } => b.postgres(url).postgres_schema(schema),
    };
    Ok(b.build().await?)
}

fn one_step(key: &str) -> WorkflowSpec {
    WorkflowSpec::builder(format!("use_{}", key.replace('.', "_")))
        .trigger(Trigger::manual("m").integer("n"))
        .step(Step::action("only", key).output("only"))
        .build()
}

fn approval(key: &str, bytes: &[u8]) -> Result<Approval> {
    Ok(Approval::new(
        ActionKey::new(key)?,
        bytes.to_vec(),
        CatalogCommand::by("bench"),
    ))
}

async fn wait_terminal(engine: &Engine, run: squid_mesh::RunId, limit: Duration) -> Result<()> {
    let t = Instant::now();
    while !engine.snapshot(run).await?.is_terminal() {
        if t.elapsed() > limit {
            bail!("run {run} did not end within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

pub(crate) async fn catalog(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let dir = tempfile::tempdir()?;
    let mut backends = vec![Backend::Sqlite(dir.path().join("catalog.db"))];
    if let Some(Backend::Postgres { url, schema }) = crate::pg_backend().await {
        backends.push(Backend::Postgres {
            url,
            schema: format!("{schema}_catalog"),
        });
    }
    for backend in &backends {
        figures.extend(approval_to_first_step(backend, dir.path(), smoke).await?);
        figures.extend(first_use(backend, dir.path()).await?);
    }
    for backend in &backends {
        figures.extend(claims_with_many_actions(backend, dir.path(), smoke).await?);
    }
    for backend in &backends {
        crate::drop_schema(backend).await;
    }
    Ok(figures)
}

/// A worker pool runs on one engine (its own empty disk cache); another engine approves a
/// new key and starts a run that uses it: the time until that run completed. The first
/// round fetches and compiles the component; later rounds approve new keys of the same
/// component (compiled already, so they measure the catalog's propagation alone).
async fn approval_to_first_step(backend: &Backend, dir: &Path, smoke: bool) -> Result<Vec<Figure>> {
    let name = backend.name();
    let worker_cache = tempfile::tempdir_in(dir)?;
    let admin_cache = tempfile::tempdir_in(dir)?;
    let worker = engine(backend, Some(worker_cache.path())).await?;
    let admin = engine(backend, Some(admin_cache.path())).await?;
    let pool = Worker::builder(&worker).concurrency(2).start()?;
    pool.ready().await;
    let bytes = std::fs::read(artifacts::ECHO)?;
    let rounds = if smoke { 2 } else { 20 };
    let mut cold = Duration::ZERO;
    let mut warm = Vec::new();
    for i in 0..rounds {
        let key = format!("new.action{i}");
        let spec = one_step(&key);
        let t = Instant::now();
        admin.catalog().approve(approval(&key, &bytes)?).await?;
        let run = admin
            .start(&spec, None, json!({"n": i}), StartOptions::default())
            .await?;
        wait_terminal(&admin, run.run_id, Duration::from_secs(30)).await?;
        if i == 0 {
            cold = t.elapsed();
        } else {
            warm.push(t.elapsed());
        }
    }
    pool.shutdown(Duration::from_secs(5)).await;
    warm.sort();
    let poll = match backend {
        Backend::Sqlite(_) => "SQLite: workers poll every 500 ms",
        Backend::Postgres { .. } => "Postgres: NOTIFY wakes the worker",
    };
    Ok(vec![
        Figure {
            name: format!("{name} approve -> first step done, fetch+compile on worker"),
            value: cold.as_secs_f64() * 1e3,
            unit: "ms",
            target: Some(poll.into()),
        },
        Figure {
            name: format!("{name} approve -> first step done p50 (compiled digest)"),
            value: percentile(&warm, 0.5) / 1e3,
            unit: "ms",
            target: None,
        },
    ])
}

/// The first use of a digest by a process that has never seen it: fetched from the
/// database, checked and compiled (no disk cache), or loaded from the disk cache; against
/// compiling the same bytes read from a file.
async fn first_use(backend: &Backend, dir: &Path) -> Result<Vec<Figure>> {
    // A database of its own: the one approved action is all `warm` loads.
    let own = match backend {
        Backend::Sqlite(path) => Backend::Sqlite(path.with_file_name("first-use.db")),
        Backend::Postgres { url, schema } => Backend::Postgres {
            url: url.clone(),
            schema: format!("{schema}_first"),
        },
    };
    let figures = first_use_on(&own, dir).await;
    crate::drop_schema(&own).await;
    figures
}

async fn first_use_on(backend: &Backend, dir: &Path) -> Result<Vec<Figure>> {
    let name = backend.name();
    let admin = engine(backend, None).await?;
    let bytes = std::fs::read(artifacts::CHARGE_PAYMENT)?;
    admin
        .catalog()
        .approve(approval("first.use", &bytes)?)
        .await?;

    // Baseline: the same bytes from a file, compiled by a fresh host that writes its own
    // empty disk cache, as the fetching engine does.
    let baseline_cache = tempfile::tempdir_in(dir)?;
    let host = squid_mesh::ActionHost::new(
        ActionRegistry::new(),
        HostConfig::default().cache_dir(baseline_cache.path().to_owned()),
    )?;
    let action = RegisteredAction::from_file(
        ActionKey::new("first.use")?,
        artifacts::CHARGE_PAYMENT,
        squid_mesh::Digest::of(&bytes),
    );
    let t = Instant::now();
    host.check(&action).await?;
    let from_file = t.elapsed();

    let cache = tempfile::tempdir_in(dir)?;
    let fresh = engine(backend, Some(cache.path())).await?;
    let t = Instant::now();
    let loaded = fresh.catalog().warm().await?;
    let fetched = t.elapsed();
    if !loaded.iter().any(|(_, from)| *from == LoadSource::Fetched) {
        bail!("{name}: the first use was not fetched: {loaded:?}");
    }
    // Another process on the same disk cache.
    let cached = engine(backend, Some(cache.path())).await?;
    let t = Instant::now();
    let loaded = cached.catalog().warm().await?;
    let from_disk = t.elapsed();
    if !loaded
        .iter()
        .any(|(_, from)| *from == LoadSource::DiskCache)
    {
        bail!("{name}: the second process did not use the disk cache: {loaded:?}");
    }
    Ok(vec![
        Figure {
            name: format!("{name} first use: fetch from db + verify + compile"),
            value: fetched.as_secs_f64() * 1e3,
            unit: "ms",
            target: Some(format!(
                "compile from a file (same cache): {:.1} ms",
                from_file.as_secs_f64() * 1e3
            )),
        },
        Figure {
            name: format!("{name} first use: from the disk cache (no fetch)"),
            value: from_disk.as_secs_f64() * 1e3,
            unit: "ms",
            target: None,
        },
    ])
}

/// Steps/s of one worker draining one-step runs, with 10 and with 1,000 approved actions,
/// measured in alternating rounds; the ratio should be 1 (claims read one version number,
/// not the catalog).
async fn claims_with_many_actions(
    backend: &Backend,
    dir: &Path,
    smoke: bool,
) -> Result<Vec<Figure>> {
    let name = backend.name();
    let bytes = std::fs::read(artifacts::ECHO)?;
    let runs = if smoke { 20 } else { 400 };
    let rounds = if smoke { 1 } else { 3 };
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let sizes = [10usize, 1_000];
    let mut engines = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let b = match backend {
            Backend::Sqlite(path) => Backend::Sqlite(path.with_file_name(format!("claims{i}.db"))),
            Backend::Postgres { url, schema } => Backend::Postgres {
                url: url.clone(),
                schema: format!("{schema}_claims{i}"),
            },
        };
        let cache = tempfile::tempdir_in(dir)?;
        let e = engine(&b, Some(cache.path())).await?;
        let count = if smoke { (*n).min(50) } else { *n };
        for k in 0..count {
            e.catalog()
                .approve(approval(&format!("a{k:04}"), &bytes)?)
                .await?;
        }
        engines.push((b, e, cache));
    }
    let spec = one_step("a0000");
    for _ in 0..rounds {
        for (i, (_, e, _)) in engines.iter().enumerate() {
            for n in 0..runs {
                e.start(&spec, None, json!({"n": n}), StartOptions::default())
                    .await?;
            }
            let t = Instant::now();
            let mut steps = 0;
            let opts = ExecuteOptions::default().owner_id("bench");
            while e.execute_next(opts.clone()).await?.is_some() {
                steps += 1;
            }
            rates[i].push(f64::from(steps) / t.elapsed().as_secs_f64());
        }
    }
    for (b, _, _) in &engines {
        crate::drop_schema(b).await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let few = median(&mut rates[0]);
    let many = median(&mut rates[1]);
    let label = if smoke { "50" } else { "1,000" };
    Ok(vec![
        Figure {
            name: format!("{name} steps/s, 1 worker, 10 approved actions"),
            value: few,
            unit: "/s",
            target: None,
        },
        Figure {
            name: format!("{name} steps/s, 1 worker, {label} approved actions"),
            value: many,
            unit: "/s",
            target: None,
        },
        Figure {
            name: format!("{name} claim cost ratio, {label} vs 10 actions"),
            value: few / many,
            unit: "x",
            target: Some("<= 1.10".into()),
        },
    ])
}
