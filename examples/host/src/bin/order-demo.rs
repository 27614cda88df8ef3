//! The main job: real workflows, real WASM actions, embedded SQLite.
//!
//! ```sh
//! cargo run -p squid-mesh-examples --bin order-demo [WORK_DIR]
//! ```
//!
//! Builds the example actions from source, pins them in a manifest, creates a fresh SQLite
//! database, starts three runs and lets a pool of two workers drive them to the end:
//!
//! - a checkout whose payment gateway is down on the first attempt (retried with exponential
//!   backoff), then a durable wait, then shipping;
//! - a checkout whose card is declined (no retry: the error route notifies the customer);
//! - a packing run whose three steps run in parallel before a join.
//!
//! It prints each run's attempts, context and journal, checked against the derived rows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use squid_mesh::actions::{ActionRegistry, LogLevel, StepOutcome};
use squid_mesh::spec::{Step, Transition, Trigger, WorkflowSpec};
use squid_mesh::{Engine, HostConfig, RunId, StartOptions, Worker};

fn checkout() -> WorkflowSpec {
    WorkflowSpec::builder("checkout")
        .version("2026-11-25")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .list("items")
                .field(
                    squid_mesh::spec::Field::of(
                        "gateway_down_until_attempt",
                        squid_mesh::spec::FieldType::Integer,
                    )
                    .default_value(json!(0)),
                )
                .field(
                    squid_mesh::spec::Field::of("decline", squid_mesh::spec::FieldType::Boolean)
                        .default_value(json!(false)),
                ),
        )
        .step(
            Step::action("validate", "orders.validate")
                .input(["order_id", "items"])
                .output("validation"),
        )
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["validation", "total_cents"])
                .input_path("succeed_on_attempt", ["gateway_down_until_attempt"])
                .input_path("decline", ["decline"])
                .output("payment")
                .retry_exponential(3, 200, 2_000),
        )
        .step(Step::wait("settle", Duration::from_millis(300)))
        .step(Step::log(
            "ship",
            LogLevel::Info,
            "order handed to the courier",
        ))
        .step(Step::log(
            "notify_customer",
            LogLevel::Warn,
            "payment declined; customer notified",
        ))
        .on_ok("validate", "charge")
        .on_ok("charge", "settle")
        .on_ok("settle", "ship")
        .on_ok("ship", "complete")
        .transition(Transition::on_error("charge", "notify_customer").recovery("notify"))
        .on_ok("notify_customer", "complete")
        .build()
}

fn packing() -> WorkflowSpec {
    WorkflowSpec::builder("packing")
        .trigger(Trigger::manual("manual").string("order_id"))
        .step(
            Step::action("pick_items", "echo")
                .input(["order_id"])
                .output("picked"),
        )
        .step(
            Step::action("print_label", "echo")
                .input(["order_id"])
                .output("label"),
        )
        .step(
            Step::action("book_courier", "echo")
                .input(["order_id"])
                .output("courier"),
        )
        .step(
            Step::action("seal_box", "echo")
                .after(["pick_items", "print_label", "book_courier"])
                .input(["order_id"])
                .output("sealed"),
        )
        .build()
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("error").init();
    let dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("squid-mesh-order-demo"),
    };
    std::fs::create_dir_all(&dir)?;
    let manifest = squid_mesh_examples::write_manifest(&dir)?;
    let db = dir.join("demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let engine = Engine::builder()
        .sqlite(&db)
        .registry(ActionRegistry::from_manifest(&manifest)?)
        .host_config(HostConfig {
            cache_dir: Some(dir.join("wasm-cache")),
            ..HostConfig::default()
        })
        .build()
        .await?;
    engine.register_workflow(checkout())?;
    engine.register_workflow(packing())?;
    println!(
        "database  {}\nmanifest  {}\n",
        db.display(),
        manifest.display()
    );

    let items = json!([{"sku": "green-tea", "quantity": 2, "unit_price_cents": 450}, {"sku": "teapot", "quantity": 1, "unit_price_cents": 3900}]);
    let runs: Vec<RunId> = vec![
        engine
            .start(
                "checkout",
                None,
                json!({"order_id": "ord-1001", "items": items, "gateway_down_until_attempt": 2}),
                StartOptions::default(),
            )
            .await?
            .run_id,
        engine
            .start(
                "checkout",
                None,
                json!({"order_id": "ord-1002", "items": items, "decline": true}),
                StartOptions::default(),
            )
            .await?
            .run_id,
        engine
            .start(
                "packing",
                None,
                json!({"order_id": "ord-1001"}),
                StartOptions::default(),
            )
            .await?
            .run_id,
    ];

    // A pool of two workers drives the runs; it wakes as soon as work is planned.
    let started = Instant::now();
    let worker = Worker::builder(&engine)
        .concurrency(2)
        .owner_id("demo-worker")
        .start()?;
    for id in &runs {
        while !engine.snapshot(*id).await?.is_terminal() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("run {id} did not end within a minute");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    worker.shutdown(Duration::from_secs(5)).await;
    println!(
        "all runs ended in {:.0} ms\n",
        started.elapsed().as_secs_f64() * 1e3
    );

    for id in runs {
        let s = engine.snapshot(id).await?;
        println!(
            "run {}  workflow {}  status {:?}",
            s.run_id, s.workflow, s.status
        );
        for a in &s.attempts {
            let what = match &a.outcome {
                Some(StepOutcome::Succeeded {
                    output,
                    continue_after_ms,
                }) => {
                    let mut text = Value::Object(output.clone()).to_string();
                    if let Some(ms) = continue_after_ms {
                        text = format!("continue after {ms} ms");
                    }
                    text
                }
                Some(StepOutcome::Failed(e)) => {
                    format!("{} (retryable: {}): {}", e.code, e.retryable, e.message)
                }
                Some(StepOutcome::Suspended(k)) => format!("suspended at {k:?}"),
                None => String::new(),
            };
            println!(
                "  {:<16} #{} {:<10} {:<9} {}",
                a.step,
                a.attempt,
                a.status,
                a.owner.as_deref().unwrap_or("-"),
                truncate(&what, 90)
            );
        }
        if let Some(e) = &s.error {
            println!("  error: {e}");
        }
        println!(
            "  context: {}",
            truncate(&Value::Object(s.context.clone()).to_string(), 160)
        );
        let journal = engine.journal(id).await?;
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, fact) in &journal {
            match counts.iter_mut().find(|(k, _)| *k == fact.kind()) {
                Some((_, n)) => *n += 1,
                None => counts.push((fact.kind(), 1)),
            }
        }
        let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} x{n}")).collect();
        println!("  journal: {} facts ({})", journal.len(), counts.join(", "));
        let diff = engine.verify_run(id).await?;
        if !diff.is_empty() {
            bail!("run {id}: journal and rows disagree: {diff:?}");
        }
        println!("  rebuilt from its journal: matches the stored rows\n");
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}
