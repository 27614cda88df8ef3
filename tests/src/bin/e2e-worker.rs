//! A minimal host process for end-to-end tests.
//!
//! ```text
//! e2e-worker DATABASE start            start a checkout run; print its id
//! e2e-worker DATABASE step N           execute up to N steps (lease 1 s, heartbeat 200 ms)
//! e2e-worker DATABASE drain            execute until nothing is due
//! e2e-worker DATABASE show RUN_ID      print the run's snapshot as JSON
//! ```
//!
//! DATABASE is a SQLite path or a Postgres URL (schema from `SQUID_MESH_PG_SCHEMA`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use squid_mesh::actions::{ActionKey, ActionRegistry, RegisteredAction};
use squid_mesh::engine::ExecuteOptions;
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{Digest, Engine, HostConfig, RunId, StartOptions};
use squid_mesh_example_artifacts as artifacts;

fn checkout() -> WorkflowSpec {
    WorkflowSpec::builder("checkout")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .list("items")
                .integer("sleep_ms"),
        )
        .step(Step::action("validate", "orders.validate").output("validation"))
        .step(
            Step::action("slow_reserve", "echo")
                .input(["sleep_ms"])
                .output("reservation"),
        )
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["validation", "total_cents"])
                .output("payment"),
        )
        .on_ok("validate", "slow_reserve")
        .on_ok("slow_reserve", "charge")
        .build()
}

fn registry() -> Result<ActionRegistry> {
    let registry = ActionRegistry::new();
    for (key, path) in [
        ("orders.validate", artifacts::VALIDATE_ORDER),
        ("payments.charge", artifacts::CHARGE_PAYMENT),
        ("echo", artifacts::ECHO),
    ] {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        registry.register(RegisteredAction::from_file(
            ActionKey::new(key)?,
            path,
            Digest::of(&bytes),
        ))?;
    }
    Ok(registry)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(db), Some(cmd)) = (args.first(), args.get(1)) else {
        bail!("usage: e2e-worker DATABASE start|step N|drain|show RUN_ID");
    };
    let mut builder = Engine::builder()
        .database_url(db)
        .registry(registry()?)
        .host_config(HostConfig {
            cache_dir: Some(std::env::temp_dir().join("squid-mesh-e2e-cache")),
            ..HostConfig::default()
        });
    if let Ok(schema) = std::env::var("SQUID_MESH_PG_SCHEMA") {
        builder = builder.postgres_schema(schema);
    }
    let engine = builder.build().await.context("building the engine")?;
    engine.register_workflow(checkout())?;
    let opts = ExecuteOptions {
        owner_id: format!("pid-{}", std::process::id()),
        lease_for: Duration::from_secs(1),
        heartbeat_interval: Some(Duration::from_millis(200)),
        ..ExecuteOptions::default()
    };
    match cmd.as_str() {
        "start" => {
            let payload = json!({"order_id": "o-9", "items": [{"sku": "tea", "quantity": 3, "unit_price_cents": 300}], "sleep_ms": 2000});
            let run = engine
                .start("checkout", None, payload, StartOptions::default())
                .await?;
            println!("{}", run.run_id);
        }
        "step" => {
            let n: usize = args.get(2).context("step needs a count")?.parse()?;
            for _ in 0..n {
                if engine.execute_next(opts.clone()).await?.is_none() {
                    break;
                }
            }
        }
        "drain" => while engine.execute_next(opts.clone()).await?.is_some() {},
        "show" => {
            let id: RunId = args.get(2).context("show needs a run id")?.parse()?;
            println!("{}", serde_json::to_string(&engine.snapshot(id).await?)?);
            let diff = engine.verify_run(id).await?;
            if !diff.is_empty() {
                bail!("journal and rows disagree: {diff:?}");
            }
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}
