//! Workload shapes beyond raw throughput: sequential latency (1, 5 and 10 steps, one run at a
//! time), a 500-branch fan-out with a join, and the cost of `start` and `execute_next` with
//! 10^3 and 10^6 runs already stored.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use squid_mesh::actions::ActionRegistry;
use squid_mesh::engine::ExecuteOptions;
use squid_mesh::spec::{Step, Trigger};
use squid_mesh::{Engine, StartOptions, Worker, WorkflowSpec};

use crate::{Backend, Figure, commit_floor, drop_schema, echo_action, percentile, pg_backend};

fn linear(steps: usize) -> WorkflowSpec {
    let mut b =
        WorkflowSpec::builder(format!("linear_{steps}")).trigger(Trigger::manual("m").integer("n"));
    for i in 0..steps {
        b = b.step(
            Step::action(format!("s{i}"), "echo")
                .input(["n"])
                .output(format!("s{i}")),
        );
    }
    for i in 1..steps {
        b = b.on_ok(&format!("s{}", i - 1), &format!("s{i}"));
    }
    b.build()
}

fn fan_out(width: usize) -> WorkflowSpec {
    let mut b =
        WorkflowSpec::builder(format!("fan_{width}")).trigger(Trigger::manual("m").integer("n"));
    let names: Vec<String> = (0..width).map(|i| format!("b{i}")).collect();
    for n in &names {
        b = b.step(
            Step::action(n.clone(), "echo")
                .input(["n"])
                .output(n.clone()),
        );
    }
    b.step(
        Step::action("join", "echo")
            .input(["n"])
            .after(names)
            .output("join"),
    )
    .build()
}

pub(crate) async fn backends(dir: &std::path::Path, tag: &str) -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite(dir.join(format!("{tag}.db")))];
    if let Some(Backend::Postgres { url, schema }) = pg_backend().await {
        out.push(Backend::Postgres {
            url,
            schema: format!("{schema}_{tag}"),
        });
    }
    out
}

async fn run_to_end(engine: &Engine, spec: &WorkflowSpec, n: i64) -> Result<Duration> {
    let t = Instant::now();
    let run = engine
        .start(spec, None, json!({"n": n}), StartOptions::default())
        .await?;
    loop {
        // Chained like a worker pool's slot: the next step is claimed by the completion.
        let opts = ExecuteOptions::default().chain(8);
        match engine.execute_next(opts).await? {
            Some(s) if s.run_id == run.run_id && s.is_terminal() => break,
            Some(_) => {}
            None => bail!("run {} stalled", run.run_id),
        }
    }
    Ok(t.elapsed())
}

/// One run at a time of 1-, 5- and 10-step workflows, drained by `execute_next` in the same
/// task: per-run p50/p99 and per-step latency against one commit of the same backend.
pub(crate) async fn latency(smoke: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let mut figures = Vec::new();
    let runs = if smoke { 5 } else { 200 };
    for backend in backends(dir.path(), "latency").await {
        let name = backend.name();
        let floor = commit_floor(&backend, 1, if smoke { 40 } else { 1_000 }).await?;
        let commit_ms = 1e3 / floor;
        figures.push(Figure {
            name: format!("{name} one commit (1-committer floor)"),
            value: commit_ms,
            unit: "ms",
            target: None,
        });
        let engine = backend.engine(&registry, dir.path()).await?;
        let mut p50s = Vec::new();
        for steps in [1usize, 5, 10] {
            let spec = linear(steps);
            run_to_end(&engine, &spec, -1).await?;
            let mut lat = Vec::with_capacity(runs);
            for i in 0..runs {
                lat.push(run_to_end(&engine, &spec, i as i64).await?);
            }
            lat.sort();
            let p50 = percentile(&lat, 0.5) / 1e3;
            figures.push(Figure {
                name: format!("{name} sequential {steps}-step run p50"),
                value: p50,
                unit: "ms",
                target: None,
            });
            figures.push(Figure {
                name: format!("{name} sequential {steps}-step run p99"),
                value: percentile(&lat, 0.99) / 1e3,
                unit: "ms",
                target: None,
            });
            figures.push(Figure {
                name: format!("{name} whole run / steps / one commit, {steps} steps"),
                value: p50 / steps as f64 / commit_ms,
                unit: "x",
                target: None,
            });
            p50s.push(p50);
        }
        // What each step adds: the 10-step run less the 1-step run (whose start and first
        // claim are the per-run cost), over the 9 steps between.
        let per_step = (p50s[2] - p50s[0]) / 9.0;
        figures.push(Figure {
            name: format!("{name} per-step latency (10-step less 1-step run, / 9)"),
            value: per_step,
            unit: "ms",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} per-step latency / one commit"),
            value: per_step / commit_ms,
            unit: "x",
            target: Some("<= 1.5".into()),
        });
        drop_schema(&backend).await;
    }
    Ok(figures)
}

/// One run whose 500 steps (`--fanout-width`) depend on nothing, joined by one step, drained
/// by 8 workers; the end is awaited with `wait_for_run` (woken, not polled).
pub(crate) async fn fanout(smoke: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let width = if smoke { 20 } else { crate::fanout_width() };
    let mut figures = Vec::new();
    for backend in backends(dir.path(), "fanout").await {
        let name = backend.name();
        let engine = backend.engine(&registry, dir.path()).await?;
        // Compile and load the component before timing.
        run_to_end(&engine, &linear(1), -1).await?;
        let spec = fan_out(width);
        let t = Instant::now();
        let run = engine
            .start(&spec, None, json!({"n": 1}), StartOptions::default())
            .await?;
        let planned = t.elapsed();
        let pool = Worker::builder(&engine).concurrency(8).start()?;
        let end = engine
            .wait_for_run(run.run_id, Duration::from_secs(1800))
            .await?;
        if !end.is_terminal() {
            bail!("fan-out did not finish in 30 minutes");
        }
        let total = t.elapsed();
        pool.shutdown(Duration::from_secs(5)).await;
        let snap = engine.snapshot(run.run_id).await?;
        if snap.status != squid_mesh::RunStatus::Completed {
            bail!("fan-out ended {:?}", snap.status);
        }
        figures.push(Figure {
            name: format!("{name} fan-out {width}+join: start (plans {width})"),
            value: planned.as_secs_f64() * 1e3,
            unit: "ms",
            target: None,
        });
        figures.push(Figure {
            name: format!("{name} fan-out {width}+join: start to completed, 8 workers"),
            value: total.as_secs_f64() * 1e3,
            unit: "ms",
            target: (width == 500).then(|| "<= 300".to_owned()),
        });
        figures.push(Figure {
            name: format!("{name} fan-out {width}+join: steps/s"),
            value: (width + 1) as f64 / total.as_secs_f64(),
            unit: "steps/s",
            target: None,
        });
        drop_schema(&backend).await;
    }
    Ok(figures)
}

/// `start` and `execute_next` latency with 10^3 and then 10^6 runs stored.
pub(crate) async fn scale(smoke: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let sizes: [u64; 2] = if smoke {
        [1_000, 5_000]
    } else {
        [1_000, 1_000_000]
    };
    let n = if smoke { 20 } else { 300 };
    let mut figures = Vec::new();
    for backend in backends(dir.path(), "scale").await {
        let name = backend.name();
        let engine = backend.engine(&registry, dir.path()).await?;
        let spec = linear(1);
        let first = engine
            .start(&spec, None, json!({"n": 0}), StartOptions::default())
            .await?;
        while engine
            .execute_next(ExecuteOptions::default())
            .await?
            .is_some()
        {}
        let hash = engine.snapshot(first.run_id).await?.definition_hash;
        let base = engine.now().0 - 1_000_000;
        let mut stored = 0;
        let mut results = Vec::new();
        for size in sizes {
            crate::read::seed(&backend, stored + 1, size, &hash, base).await?;
            stored = size;
            let mut starts = Vec::with_capacity(n);
            for i in 0..n {
                let t = Instant::now();
                engine
                    .start(&spec, None, json!({"n": i}), StartOptions::default())
                    .await?;
                starts.push(t.elapsed());
            }
            let mut steps = Vec::with_capacity(n);
            loop {
                let t = Instant::now();
                if engine
                    .execute_next(ExecuteOptions::default())
                    .await?
                    .is_none()
                {
                    break;
                }
                steps.push(t.elapsed());
            }
            starts.sort();
            steps.sort();
            results.push((size, percentile(&starts, 0.5), percentile(&steps, 0.5)));
        }
        for (size, start, step) in &results {
            figures.push(Figure {
                name: format!("{name} start p50, {size} runs stored"),
                value: start / 1e3,
                unit: "ms",
                target: None,
            });
            figures.push(Figure {
                name: format!("{name} execute_next p50 (1-step run), {size} runs stored"),
                value: step / 1e3,
                unit: "ms",
                target: None,
            });
        }
        let (small, large) = (&results[0], &results[1]);
        figures.push(Figure {
            name: format!("{name} start p50 ratio {}/{}", large.0, small.0),
            value: large.1 / small.1,
            unit: "x",
            target: Some("near 1".into()),
        });
        figures.push(Figure {
            name: format!("{name} execute_next p50 ratio {}/{}", large.0, small.0),
            value: large.2 / small.2,
            unit: "x",
            target: Some("near 1".into()),
        });
        drop_schema(&backend).await;
    }
    Ok(figures)
}
