//! Schedules: how late windows fire with 1,000 schedules on one database and a pool of 4
//! workers, and what a pool with 1,000 schedules and nothing due costs in CPU, against the
//! same pool with no schedules, measured in the same run.
//!
//! Schedule `i` fires every minute at second `i mod 60`, so about 17 windows fall due each
//! second. Lateness is what the engine records per window: the time it handled the window
//! minus the window's time, both read from the engine's clock.

use std::time::Duration;

use anyhow::Result;
use squid_mesh::actions::{ActionRegistry, LogLevel};
use squid_mesh::engine::ScheduleCommand;
use squid_mesh::spec::{CatchUp, Overlap, SchedulePolicy, Step, Trigger};
use squid_mesh::{Engine, Worker, WorkflowSpec};

use crate::shapes::backends;
use crate::wakeup::cpu_time;
use crate::{Figure, drop_schema, percentile};

const SCHEDULES: usize = 1_000;

fn spec(i: usize, cron: &str) -> WorkflowSpec {
    WorkflowSpec::builder(format!("sched_{i}"))
        .trigger(
            Trigger::cron("tick", cron, "Europe/Amsterdam").policy(SchedulePolicy {
                catch_up: CatchUp::Skip,
                overlap: Overlap::Allow,
                ..SchedulePolicy::default()
            }),
        )
        .step(Step::log("note", LogLevel::Debug, "tick"))
        .build()
}

async fn apply_all(engine: &Engine, n: usize, cron: impl Fn(usize) -> String) -> Result<()> {
    for i in 0..n {
        engine
            .schedules()
            .apply(&spec(i, &cron(i)), None, ScheduleCommand::default())
            .await?;
    }
    Ok(())
}

/// CPU of this process while a 4-slot pool idles for `span`, in percent of one core.
async fn idle_cpu(engine: &Engine, span: Duration) -> Result<Option<f64>> {
    let pool = Worker::builder(engine).concurrency(4).start()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_time();
    tokio::time::sleep(span).await;
    let after = cpu_time();
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(after
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b).as_secs_f64() / span.as_secs_f64() * 100.0))
}

pub(crate) async fn schedules(smoke: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    let idle_span = Duration::from_secs(if smoke { 1 } else { 5 });
    let fire_span = Duration::from_secs(if smoke { 3 } else { 30 });
    let n = if smoke { 100 } else { SCHEDULES };
    let mut figures = Vec::new();
    for backend in backends(dir.path(), "schedules").await {
        let name = backend.name();
        let engine = backend.engine(&registry, dir.path()).await?;
        let baseline = idle_cpu(&engine, idle_span).await?;
        // Nothing due for a year.
        apply_all(&engine, n, |_| "0 0 1 1 *".into()).await?;
        let loaded = idle_cpu(&engine, idle_span).await?;
        if let (Some(base), Some(with)) = (baseline, loaded) {
            figures.push(Figure {
                name: format!("{name} idle pool CPU, no schedules (baseline)"),
                value: base,
                unit: "%",
                target: None,
            });
            figures.push(Figure {
                name: format!("{name} idle pool CPU, {n} schedules, none due"),
                value: with,
                unit: "%",
                target: Some("~ baseline".into()),
            });
        }

        // Every schedule fires once a minute, spread over the seconds.
        apply_all(&engine, n, |i| format!("{} * * * * *", i % 60)).await?;
        // Windows that passed while the schedules were being applied fire late by design;
        // only those due after the pool started count.
        let from = engine.now();
        let pool = Worker::builder(&engine).concurrency(4).start()?;
        tokio::time::sleep(fire_span).await;
        pool.shutdown(Duration::from_secs(10)).await;
        let mut lateness = Vec::new();
        for i in 0..n {
            let d = engine
                .schedules()
                .show(&format!("sched_{i}"), None, 1_000)
                .await?;
            lateness.extend(
                d.fires
                    .iter()
                    .filter(|f| f.scheduled_at >= from)
                    .map(|f| Duration::from_millis(u64::try_from(f.lateness_ms).unwrap_or(0))),
            );
        }
        lateness.sort();
        figures.push(Figure {
            name: format!("{name} windows fired ({n} schedules, 4 workers)"),
            value: lateness.len() as f64,
            unit: "",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} fire lateness p50"),
            value: percentile(&lateness, 0.5) / 1e3,
            unit: "ms",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} fire lateness p99"),
            value: percentile(&lateness, 0.99) / 1e3,
            unit: "ms",
            target: None,
        });
        drop_schema(&backend).await;
    }
    Ok(figures)
}
