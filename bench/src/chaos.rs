//! Chaos, as long as wanted: worker processes (the `e2e-worker` binary built beside this
//! one, as `tests/tests/chaos.rs` uses) share one database and are killed with SIGKILL at
//! random and replaced; with `CHAOS_KILL_CONNECTIONS=1` the Postgres connections of the
//! database are terminated at random too. Afterwards every run must have completed with no
//! attempt recorded or applied twice, the journal must rebuild every run, and a step's side
//! effect (counted outside the database) may repeat only as often as leases expired.
//!
//! `CHAOS_RUNS` (default 1,000; smoke 40), `CHAOS_SECS` of killing (default 120; smoke 4),
//! `CHAOS_WORKERS` processes (default 4).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Backend, Figure, drop_schema, pg_backend};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Processes {
    worker: PathBuf,
    db: String,
    schema: Option<String>,
    effects: String,
}

impl Processes {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.worker);
        c.arg(&self.db).args(args).stderr(Stdio::null());
        if let Some(s) = &self.schema {
            c.env("SQUID_MESH_PG_SCHEMA", s);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd(args).output().context("e2e-worker starts")?;
        if !out.status.success() {
            bail!(
                "e2e-worker {args:?} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn spawn(&self) -> Result<Child> {
        Ok(self
            .cmd(&["chaos-work", &self.effects])
            .stdout(Stdio::null())
            .spawn()?)
    }
}

/// Terminates every other client connection to the database (the workers' pools reconnect).
async fn kill_connections(url: &str) -> Result<u64> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(url).await?;
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .fetch_all(&mut c)
    .await?;
    Ok(killed.iter().filter(|(k,)| *k).count() as u64)
}

pub(crate) async fn chaos(smoke: bool) -> Result<Vec<Figure>> {
    let worker = std::env::current_exe()?.with_file_name("e2e-worker");
    if !worker.exists() {
        bail!(
            "{} is missing: build it beside the bench (cargo build [--release] -p squid-mesh-e2e)",
            worker.display()
        );
    }
    let runs = env_or("CHAOS_RUNS", if smoke { 40 } else { 1_000 });
    let secs = env_or("CHAOS_SECS", if smoke { 4 } else { 120 });
    let slots = env_or("CHAOS_WORKERS", 4).max(1);
    let kill_conns = std::env::var("CHAOS_KILL_CONNECTIONS").as_deref() == Ok("1");
    let dir = tempfile::tempdir()?;
    let mut backends = vec![Backend::Sqlite(dir.path().join("chaos.db"))];
    if let Some(Backend::Postgres { url, schema }) = pg_backend().await {
        backends.push(Backend::Postgres {
            url,
            schema: format!("{schema}_chaos"),
        });
    }
    let mut figures = Vec::new();
    for backend in &backends {
        let name = backend.name();
        let (db, schema, url) = match backend {
            Backend::Sqlite(path) => (path.display().to_string(), None, None),
            Backend::Postgres { url, schema } => {
                (url.clone(), Some(schema.clone()), Some(url.clone()))
            }
        };
        let p = Processes {
            worker: worker.clone(),
            db,
            schema,
            effects: dir
                .path()
                .join(format!("{name}-effects.txt"))
                .display()
                .to_string(),
        };
        let started = Instant::now();
        p.run(&["chaos-start", &runs.to_string()])?;
        let mut workers = (0..slots)
            .map(|_| p.spawn())
            .collect::<Result<Vec<Child>>>()?;
        let mut seed = started.elapsed().as_nanos() as u64 | 1;
        let mut next = |below: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % below
        };
        let (mut kills, mut conn_kills) = (0u64, 0u64);
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(300 + next(1200))).await;
            let victim = next(workers.len() as u64) as usize;
            let mut dead = workers.swap_remove(victim);
            let killed = dead.kill();
            let _ = dead.wait();
            killed?;
            kills += 1;
            workers.push(p.spawn()?);
            if kill_conns
                && next(3) == 0
                && let Some(url) = &url
            {
                conn_kills += kill_connections(url).await?;
            }
        }
        let calm = Instant::now();
        loop {
            let pending: u64 = p.run(&["chaos-pending"])?.trim().parse()?;
            if pending == 0 {
                break;
            }
            if calm.elapsed() > Duration::from_secs(600) {
                bail!("{pending} runs still open ten minutes after the last kill");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let elapsed = started.elapsed();
        for mut w in workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let summary: Value = serde_json::from_str(p.run(&["chaos-verify", &p.effects])?.trim())?;
        let violations = summary["violations"].as_array().map_or(0, Vec::len);
        let redeliveries = summary["redeliveries"].as_u64().unwrap_or(0);
        let duplicates = summary["duplicate_effects"].as_u64().unwrap_or(0);
        if summary["runs"].as_u64() != Some(runs) || violations > 0 || duplicates > redeliveries {
            bail!("chaos on {name} broke an invariant: {summary}");
        }
        let figure = |what: &str, value: f64, unit: &'static str| Figure {
            name: format!("{name} chaos: {what}"),
            value,
            unit,
            target: None,
        };
        figures.extend([
            figure("runs, all completed", runs as f64, "runs"),
            figure("worker processes killed (SIGKILL)", kills as f64, "kills"),
            figure("database connections killed", conn_kills as f64, "conns"),
            figure(
                "redeliveries after expired leases",
                redeliveries as f64,
                "attempts",
            ),
            figure("side effects repeated", duplicates as f64, "effects"),
            figure("invariant violations", violations as f64, "violations"),
            figure("start to all completed", elapsed.as_secs_f64(), "s"),
        ]);
        drop_schema(backend).await;
    }
    Ok(figures)
}
