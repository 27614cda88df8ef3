//! Registers the example actions from a manifest and runs each one through the sandbox.
//!
//! ```sh
//! cargo run -p squid-mesh-examples --bin run-actions [WORK_DIR]
//! ```
//!
//! It copies the example components into `WORK_DIR/components`, pins their digests in
//! `WORK_DIR/actions.toml`, loads the registry from that manifest (as a deployment would),
//! and prints what every invocation returned, including the typed errors of failing steps.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use squid_mesh::ActionTarget;
use squid_mesh::actions::{
    ActionHost, ActionKey, ActionRegistry, HostConfig, StepContext, StepOutcome,
};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let work_dir = match std::env::args().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join("squid-mesh-run-actions"),
    };
    let manifest_path = squid_mesh_examples::write_manifest(&work_dir)?;
    println!("manifest: {}", manifest_path.display());

    let registry = ActionRegistry::from_manifest(&manifest_path).context("loading the manifest")?;
    let host = ActionHost::new(
        registry,
        HostConfig::default().cache_dir(work_dir.join("cache")),
    )?;

    let order = json!({
        "order_id": "ord-1001",
        "items": [
            {"sku": "green-tea", "quantity": 2, "unit_price_cents": 450},
            {"sku": "teapot", "quantity": 1, "unit_price_cents": 3900}
        ]
    });
    let runs: [(&str, &str, u32, Value); 7] = [
        ("orders.validate", "validate a good order", 1, order),
        (
            "orders.validate",
            "validate an empty order",
            1,
            json!({"order_id": "ord-1002", "items": []}),
        ),
        (
            "payments.charge",
            "charge, gateway down on attempt 1",
            1,
            json!({"order_id": "ord-1001", "amount_cents": 4800, "succeed_on_attempt": 2, "retry_after_ms": 500}),
        ),
        (
            "payments.charge",
            "charge, attempt 2",
            2,
            json!({"order_id": "ord-1001", "amount_cents": 4800, "succeed_on_attempt": 2}),
        ),
        (
            "payments.charge",
            "charge a declined card",
            1,
            json!({"order_id": "ord-1003", "amount_cents": 100, "decline": true}),
        ),
        (
            "payments.refund",
            "refund the charge",
            1,
            json!({"charge_id": "ch_5b2f", "amount_cents": 4800}),
        ),
        ("echo", "echo", 1, json!({"hello": "sandbox"})),
    ];
    for (key, label, attempt, input) in runs {
        let key = ActionKey::new(key)?;
        let (description, loaded) = host.prepare(&key).await?;
        let ctx = StepContext {
            run_id: "demo-run".into(),
            workflow: "demo".into(),
            step: label.replace(' ', "_"),
            attempt,
            runnable_key: format!("demo-run:{key}:{attempt}"),
            idempotency_key: format!("demo-run:{key}"),
            step_idempotency_key: format!("demo-run:{key}"),
            trace_parent: None,
        };
        let Value::Object(input) = input else {
            unreachable!("inputs above are objects")
        };
        let inv = host
            .invoke(&ActionTarget::Wasm(key.clone()), &ctx, &input)
            .await?;
        let outcome = match &inv.outcome {
            StepOutcome::Succeeded { output, .. } => {
                format!("ok    {}", Value::Object(output.clone()))
            }
            StepOutcome::Failed(e) => format!(
                "error {} (retryable: {}, retry after: {:?} ms): {}",
                e.code, e.retryable, e.retry_after_ms, e.message
            ),
            StepOutcome::Suspended(s) => format!("suspended {s:?}"),
        };
        println!(
            "{key:<16} {label:<36} {:>6} us  [{} v{}, {:?}]\n    {outcome}",
            inv.elapsed_us, description.name, description.version, loaded
        );
        for log in &inv.diagnostics.logs {
            println!("    log {:?}: {}", log.level, log.message);
        }
    }
    Ok(())
}
