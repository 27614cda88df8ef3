//! Start-to-first-step latency with an idle worker pool on SQLite: the pool must be woken by
//! the start (in-process notification), not find the work by polling.
//!
//! The pool polls only every 5 s, so a latency far below that can only come from the wake-up.
//! The latency is taken from the journal: the time of the first `attempt_claimed` fact minus
//! the time of `run_started`, both written by the engine's clock. The CPU the idle pool burns
//! is read from `/proc/self/stat` while nothing is scheduled.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use squid_mesh::actions::ActionRegistry;
use squid_mesh::journal::Fact;
use squid_mesh::spec::{Step, Trigger};
use squid_mesh::{StartOptions, Worker, WorkflowSpec};

use crate::{Backend, Figure, echo_action, percentile};

/// User + system CPU time of this process (Linux), if readable.
pub(crate) fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which ends with ')'): utime is 14th, stime 15th overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Clock ticks are 100 Hz on Linux.
    Some(Duration::from_millis((utime + stime) * 10))
}

pub(crate) async fn wakeup(smoke: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let backend = Backend::Sqlite(dir.path().join("wakeup.db"));
    let engine = backend.engine(&registry, dir.path()).await?;
    let spec = WorkflowSpec::builder("one_step")
        .trigger(Trigger::manual("m").integer("n"))
        .step(Step::action("only", "echo").output("only"))
        .build();
    let pool = Worker::builder(&engine)
        .concurrency(2)
        .poll_interval(Duration::from_secs(5))
        .start()?;
    // Warm the component and the connections.
    let warm = engine
        .start(&spec, None, json!({"n": -1}), StartOptions::default())
        .await?;
    while !engine.snapshot(warm.run_id).await?.is_terminal() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Idle CPU: nothing scheduled for a while.
    let idle_for = Duration::from_secs(if smoke { 1 } else { 3 });
    let cpu_before = cpu_time();
    tokio::time::sleep(idle_for).await;
    let idle_cpu = cpu_time()
        .zip(cpu_before)
        .map(|(a, b)| (a.saturating_sub(b)).as_secs_f64() / idle_for.as_secs_f64() * 100.0);

    let n = if smoke { 10 } else { 200 };
    let mut claim = Vec::with_capacity(n);
    let mut complete = Vec::with_capacity(n);
    for i in 0..n {
        // Let the pool go idle again before each start.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        let run = engine
            .start(&spec, None, json!({"n": i}), StartOptions::default())
            .await?;
        while !engine.snapshot(run.run_id).await?.is_terminal() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("run {} was not picked up within 10 s", run.run_id);
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        complete.push(t.elapsed());
        let journal = engine.journal(run.run_id).await?;
        let started = journal
            .iter()
            .find(|(_, f)| matches!(f, Fact::RunStarted { .. }))
            .map(|(at, _)| *at);
        let claimed = journal
            .iter()
            .find(|(_, f)| matches!(f, Fact::AttemptClaimed { .. }))
            .map(|(at, _)| *at);
        match (started, claimed) {
            (Some(s), Some(c)) => claim.push(Duration::from_micros((c.0 - s.0).max(0) as u64)),
            _ => bail!("run {} has no claim in its journal", run.run_id),
        }
    }
    pool.shutdown(Duration::from_secs(5)).await;
    claim.sort();
    complete.sort();
    let mut figures = vec![
        Figure {
            name: "sqlite start -> first step claimed p50 (idle pool, 5 s poll)".into(),
            value: percentile(&claim, 0.5) / 1e3,
            unit: "ms",
            target: Some("< 10".into()),
        },
        Figure {
            name: "sqlite start -> first step claimed p99 (idle pool, 5 s poll)".into(),
            value: percentile(&claim, 0.99) / 1e3,
            unit: "ms",
            target: None,
        },
        Figure {
            name: "sqlite start -> 1-step run completed p50 (idle pool)".into(),
            value: percentile(&complete, 0.5) / 1e3,
            unit: "ms",
            target: None,
        },
    ];
    if let Some(cpu) = idle_cpu {
        figures.push(Figure {
            name: "idle worker pool CPU (2 slots, whole process)".into(),
            value: cpu,
            unit: "%",
            target: Some("~0 (no busy polling)".into()),
        });
    }
    Ok(figures)
}
