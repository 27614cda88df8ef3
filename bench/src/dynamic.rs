//! Dynamic work: scheduling 1,000 and 10,000 nodes (and a join) onto a live run from host
//! code, then draining them with 8 workers, against the durable workload's 8-worker rate
//! measured in the same run on the same backend.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use squid_mesh::actions::ActionRegistry;
use squid_mesh::engine::{DynamicNodeSpec, DynamicWorkSpec, ManualAttrs};
use squid_mesh::inspect::{Page, RunFilter};
use squid_mesh::spec::{Step, Trigger};
use squid_mesh::{RunStatus, StartOptions, Worker, WorkflowSpec};

use crate::shapes::backends;
use crate::{Figure, drain_runs, drop_schema, echo_action};

/// prepare (echo) -> gate (pause): the work grows from `prepare`; resuming the gate ends the
/// declared graph, so the run completes exactly when the work does.
fn gated() -> WorkflowSpec {
    WorkflowSpec::builder("dyn_bench")
        .trigger(Trigger::manual("m"))
        .step(Step::action("prepare", "echo"))
        .step(Step::pause("gate"))
        .on_ok("prepare", "gate")
        .build()
}

pub(crate) async fn dynamic(smoke: bool) -> Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let sizes: &[usize] = if smoke { &[50, 200] } else { &[1_000, 10_000] };
    let mut figures = Vec::new();
    for backend in backends(dir.path(), "dynamic").await {
        let name = backend.name();
        let engine = backend
            .builder(&registry, dir.path())
            .max_dynamic_nodes(20_000)
            .build()
            .await?;
        // The baseline: the durable workload's drain with 8 workers, as many steps.
        let (durable, _, _) = drain_runs(&engine, sizes[0] / 3, 8).await?;
        figures.push(Figure {
            name: format!("{name} durable steps/s, 8 workers (baseline)"),
            value: durable,
            unit: "steps/s",
            target: None,
        });
        for &n in sizes {
            let run = engine
                .start(&gated(), None, json!({}), StartOptions::default())
                .await?
                .run_id;
            while engine
                .execute_next(squid_mesh::ExecuteOptions::default())
                .await?
                .is_some()
            {}
            let mut work = DynamicWorkSpec::new(format!("w{n}"), "prepare");
            for i in 0..n {
                work =
                    work.node(DynamicNodeSpec::new(format!("n{i}"), "echo").input(json!({"i": i})));
            }
            work = work.join(DynamicNodeSpec::new("join", "echo"));
            let t = Instant::now();
            let receipt = engine.schedule_dynamic_work(run, &work).await?;
            let scheduled = t.elapsed();
            if receipt.nodes as usize != n + 1 {
                bail!("scheduled {} nodes of {}", receipt.nodes, n + 1);
            }
            engine.resume(run, ManualAttrs::by("bench")).await?;
            let t = Instant::now();
            let pool = Worker::builder(&engine)
                .concurrency(8)
                .owner_id("bench")
                .start()?;
            let running = RunFilter::default().status(RunStatus::Running);
            while !engine
                .list_runs(&running, &Page::first(1))
                .await?
                .runs
                .is_empty()
            {
                if t.elapsed() > Duration::from_secs(900) {
                    bail!("dynamic work did not finish in 15 minutes");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let drained = t.elapsed();
            pool.shutdown(Duration::from_secs(5)).await;
            let status = engine.snapshot(run).await?.status;
            if status != RunStatus::Completed {
                bail!("the run ended {status:?}");
            }
            let rate = (n + 1) as f64 / drained.as_secs_f64();
            figures.extend([
                Figure {
                    name: format!("{name} schedule {n} dynamic nodes + join"),
                    value: scheduled.as_secs_f64() * 1e3,
                    unit: "ms",
                    target: None,
                },
                Figure {
                    name: format!("{name} {n} dynamic nodes: drain with 8 workers"),
                    value: drained.as_secs_f64() * 1e3,
                    unit: "ms",
                    target: None,
                },
                Figure {
                    name: format!("{name} {n} dynamic nodes: steps/s"),
                    value: rate,
                    unit: "steps/s",
                    target: None,
                },
                Figure {
                    name: format!("{name} {n} dynamic nodes: steps/s / durable steps/s"),
                    value: rate / durable,
                    unit: "x",
                    target: Some(">= 0.8".into()),
                },
            ]);
        }
        drop_schema(&backend).await;
    }
    Ok(figures)
}
