//! The main job: a real order workflow, real WASM actions, embedded SQLite.
//!
//! ```sh
//! cargo run -p squid-mesh-examples --bin order-demo [WORK_DIR]
//! ```
//!
//! Builds the example actions from source, pins them in a manifest, creates a fresh SQLite
//! database (`WORK_DIR/demo.db`, default `target/order-demo`), approves the actions into its
//! action catalog (checking each spec's data flow against their schemas) and starts two orders
//! of the `order_fulfilment` workflow, driven by a pool of workers:
//!
//! 1. validate the order, charge it (the gateway is down on the first attempt: retried with
//!    exponential backoff; the charge declares a refund as its compensation), wait for a
//!    reviewer's approval, book a carrier, then start a `packing` child run whose picking and
//!    labelling run in parallel before the box is sealed;
//! 2. the same, to a country no carrier serves: booking fails for good, so the run undoes the
//!    charge (the refund runs) and ends failed and compensated.
//!
//! The demo approves both orders as a reviewer, then prints each run's graph and
//! explanation, and checks every run against its journal. The database stays behind, so the
//! `squid-mesh` CLI can inspect it afterwards.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use squid_mesh::actions::LogLevel;
use squid_mesh::engine::{CatalogCommand, ManualAttrs};
use squid_mesh::inspect::{InspectOptions, render};
use squid_mesh::spec::{DeadlineSpec, Field, FieldType, Step, Trigger, WorkflowSpec};
use squid_mesh::{Engine, HostConfig, RunId, RunStatus, StartOptions, Worker};

fn order_fulfilment() -> WorkflowSpec {
    WorkflowSpec::builder("order_fulfilment")
        .version("2026-11-25")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .list("items")
                .string("country")
                .field(
                    Field::of("gateway_down_until_attempt", FieldType::Integer)
                        .default_value(json!(0)),
                )
                // What the last step hands to the packing workflow it starts.
                .field(Field::of("packing", FieldType::Map).default_value(json!({
                    "workflow": "packing", "key": "box-1", "payload": {}
                }))),
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
                .output("payment")
                .retry_exponential(3, Duration::from_millis(200), Duration::from_secs(2))
                .compensate("payments.refund"),
        )
        .step(
            Step::approval("review")
                .output("review")
                .deadline(DeadlineSpec {
                    within_ms: 3_600_000,
                    due_soon_ms: Some(600_000),
                    escalate_after_ms: Some(3_600_000),
                    escalation: Some("page_the_shift_lead".into()),
                }),
        )
        .step(
            Step::action("book_shipment", "shipping.book")
                .input(["order_id", "country"])
                .output("shipment"),
        )
        .step(
            Step::action("start_packing", "echo")
                .input_path("start_child", ["packing"])
                .output("packing_run"),
        )
        .step(Step::log(
            "notify_rejection",
            LogLevel::Warn,
            "order rejected by review; customer notified",
        ))
        .on_ok("validate", "charge")
        .on_ok("charge", "review")
        .on_ok("review", "book_shipment")
        .on_error("review", "notify_rejection")
        .on_ok("book_shipment", "start_packing")
        .on_ok("start_packing", "complete")
        .on_ok("notify_rejection", "complete")
        .build()
}

/// Picking and labelling run in parallel; the box is sealed when both are done.
fn packing() -> WorkflowSpec {
    WorkflowSpec::builder("packing")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("pick_items", "echo").output("picked"))
        .step(Step::action("print_label", "echo").output("label"))
        .step(
            Step::action("seal_box", "echo")
                .after(["pick_items", "print_label"])
                .output("sealed"),
        )
        .build()
}

async fn wait_until(
    engine: &Engine,
    id: RunId,
    what: &str,
    done: impl Fn(RunStatus) -> bool,
) -> Result<()> {
    let started = Instant::now();
    while !done(engine.snapshot(id).await?.status) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("run {id} did not reach {what} within a minute");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn section(title: &str) {
    println!(
        "\n=== {title} {}",
        "=".repeat(76usize.saturating_sub(title.len()))
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("error").init();
    let dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/order-demo"),
    };
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let manifest = squid_mesh_examples::write_manifest(&dir)?;
    let db = dir.join("demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let engine = Engine::builder()
        .sqlite(&db)
        .host_config(HostConfig::default().cache_dir(dir.join("wasm-cache")))
        .build()
        .await?;
    let imported = engine
        .catalog()
        .import(&manifest, CatalogCommand::by("order-demo"))
        .await?;
    // Checked against the catalog: keys, and each mapping against the actions' schemas.
    let mut unchecked = 0;
    for spec in [order_fulfilment(), packing()] {
        unchecked += engine.check_spec(&spec).await?.warnings.len();
        engine.register_workflow(spec)?;
    }
    println!(
        "database  {}\nmanifest  {} ({} actions approved into the database's catalog;\n          specs checked against their schemas, {unchecked} steps use actions without one)",
        db.display(),
        manifest.display(),
        imported.approved.len()
    );

    let items = json!([
        {"sku": "green-tea", "quantity": 2, "unit_price_cents": 450},
        {"sku": "teapot", "quantity": 1, "unit_price_cents": 3900}
    ]);
    let start = |order: &'static str, country: &'static str| {
        let engine = engine.clone();
        let items = items.clone();
        async move {
            engine
                .start(
                    "order_fulfilment",
                    None,
                    json!({"order_id": order, "items": items, "country": country, "gateway_down_until_attempt": 2}),
                    StartOptions::default().idempotency_key(order.to_owned()),
                )
                .await
                .map(|s| s.run_id)
        }
    };
    let shipped = start("ord-1001", "NL").await?;
    let stranded = start("ord-1002", "AQ").await?;

    // A pool of four workers drives the runs; it wakes as soon as work is planned.
    let started = Instant::now();
    let worker = Worker::builder(&engine)
        .concurrency(4)
        .owner_id("demo-worker")
        .start()?;
    for id in [shipped, stranded] {
        wait_until(&engine, id, "the review gate", |s| s == RunStatus::Paused).await?;
    }
    section("ord-1001 waits for review");
    let why = engine
        .explain_run(shipped, InspectOptions::default())
        .await?;
    print!("{}", render::explanation_text(&why));

    for id in [shipped, stranded] {
        let mut decision = ManualAttrs::by("ana@shop.example");
        decision.comment = Some("stock checked, customer verified".into());
        engine.approve(id, decision).await?;
    }
    for id in [shipped, stranded] {
        wait_until(&engine, id, "its end", RunStatus::is_terminal).await?;
    }
    let children = engine.children(shipped).await?;
    for child in &children {
        wait_until(&engine, child.run_id, "its end", RunStatus::is_terminal).await?;
    }
    worker.shutdown(Duration::from_secs(5)).await;
    println!(
        "\nboth orders ended {:.0} ms after the workers started (including the reviewer)",
        started.elapsed().as_secs_f64() * 1e3
    );

    let mut all = vec![
        ("ord-1001: shipped", shipped),
        ("ord-1002: no carrier, charge refunded", stranded),
    ];
    for child in &children {
        all.push((
            "ord-1001: packing (child run, parallel branches)",
            child.run_id,
        ));
    }
    for (title, id) in all {
        section(title);
        let graph = engine
            .inspect_run_graph(id, InspectOptions::default())
            .await?;
        print!("{}", render::graph_text(&graph));
        let why = engine.explain_run(id, InspectOptions::default()).await?;
        println!("why: {} {}", why.reason.as_str(), why.summary);
        let run = engine.inspect_run(id, InspectOptions::default()).await?;
        if let Some(e) = &run.error {
            println!(
                "error: {}: {}",
                e["code"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("")
            );
        }
        if let Some(c) = &run.compensation {
            println!(
                "compensation: {} (undone: {})",
                c.status,
                c.compensated.join(", ")
            );
        }
        if let Some(ctx) = &run.context {
            let keys: Vec<&String> = ctx.keys().collect();
            println!("context keys: {keys:?}");
        }
        if let Some(shipment) = run.context.as_ref().and_then(|c| c.get("shipment")) {
            println!("shipment: {shipment}");
        }
        let diff = engine.verify_run(id).await?;
        if !diff.is_empty() {
            bail!("run {id}: journal and rows disagree: {diff:?}");
        }
        println!(
            "journal: {} facts; rebuilt from the journal, the run matches its stored rows",
            run.revision
        );
    }
    let s = engine.snapshot(shipped).await?;
    let f = engine.snapshot(stranded).await?;
    if s.status != RunStatus::Completed || f.status != RunStatus::Failed {
        bail!("unexpected outcome: {:?} / {:?}", s.status, f.status);
    }
    println!(
        "\ninspect it yourself:\n  cargo run -q -p squid-mesh-cli -- --database {} runs list\n  cargo run -q -p squid-mesh-cli -- --database {} actions list",
        db.display(),
        db.display()
    );
    Ok(())
}
