//! Fixed-workload benchmarks that print their figures as a table and as JSON.
//!
//! ```sh
//! cargo run --release -p squid-mesh-bench -- wasm          # full workload
//! cargo run --release -p squid-mesh-bench -- wasm --smoke  # tiny workload, for CI
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use squid_mesh::actions::{
    ActionHost, ActionKey, ActionRegistry, HostConfig, LoadSource, RegisteredAction, StepContext,
    StepOutcome,
};
use squid_mesh::{ActionTarget, Digest};
use squid_mesh_example_artifacts as artifacts;

#[derive(Debug)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<String>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let workloads: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let workloads = if workloads.is_empty() {
        vec!["wasm"]
    } else {
        workloads
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    for w in workloads {
        match w {
            "wasm" => figures.extend(runtime.block_on(wasm(smoke))?),
            other => bail!("unknown workload {other:?}; known: wasm"),
        }
    }
    print_table(&figures);
    let json: Vec<Value> = figures
        .iter()
        .map(|f| json!({"name": f.name, "value": f.value, "unit": f.unit, "target": f.target}))
        .collect();
    println!(
        "{}",
        serde_json::to_string(&json!({"smoke": smoke, "figures": json}))?
    );
    Ok(())
}

fn print_table(figures: &[Figure]) {
    println!("{:<52} {:>14} {:<6} target", "figure", "value", "unit");
    for f in figures {
        println!(
            "{:<52} {:>14.2} {:<6} {}",
            f.name,
            f.value,
            f.unit,
            f.target.as_deref().unwrap_or("")
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

fn ctx() -> StepContext {
    StepContext {
        run_id: "bench".into(),
        workflow: "bench".into(),
        step: "echo".into(),
        attempt: 1,
        runnable_key: "bench:echo:1".into(),
        idempotency_key: "bench:echo:1".into(),
    }
}

fn echo_action() -> Result<RegisteredAction> {
    let bytes = std::fs::read(artifacts::ECHO).context("echo component")?;
    Ok(RegisteredAction::from_file(
        ActionKey::new("echo")?,
        artifacts::ECHO,
        Digest::of(&bytes),
    ))
}

/// WASM overhead without a database: warm invocation, cold compile, cold start with cache.
async fn wasm(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let cache = tempfile::tempdir()?;
    let config = || HostConfig {
        cache_dir: Some(cache.path().to_owned()),
        ..HostConfig::default()
    };
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let key = ActionKey::new("echo")?;

    // Cold: compile from bytes (empty cache).
    let host = ActionHost::new(registry.clone(), config())?;
    let t = Instant::now();
    let (_, source) = host.prepare(&key).await?;
    let cold_compile = t.elapsed();
    assert_eq!(source, LoadSource::Compiled);
    figures.push(Figure {
        name: "cold first use, compile (echo, 130 KB)".into(),
        value: cold_compile.as_secs_f64() * 1e3,
        unit: "ms",
        target: None,
    });
    drop(host);

    // Cold with cache: a new host (as after a restart) loads the compiled artifact.
    let rounds = if smoke { 3 } else { 20 };
    let mut cached = Vec::new();
    for _ in 0..rounds {
        let host = ActionHost::new(registry.clone(), config())?;
        let t = Instant::now();
        let (_, source) = host.prepare(&key).await?;
        let inv = host
            .invoke(
                &ActionTarget::Wasm(key.clone()),
                &ctx(),
                &serde_json::Map::new(),
            )
            .await?;
        cached.push(t.elapsed());
        assert_eq!(source, LoadSource::DiskCache);
        assert!(matches!(inv.outcome, StepOutcome::Succeeded { .. }));
    }
    cached.sort();
    figures.push(Figure {
        name: "cold first use with disk cache, p50 (load+invoke)".into(),
        value: percentile(&cached, 0.5) / 1e3,
        unit: "ms",
        target: Some("<= 20 ms".into()),
    });

    // Warm: new store + instantiate + call + JSON round trip, one at a time.
    let host = ActionHost::new(registry.clone(), config())?;
    let input: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"order_id": "o-1", "amount_cents": 1200, "note": "warm"}))?;
    let target = ActionTarget::Wasm(key.clone());
    host.invoke(&target, &ctx(), &input).await?;
    let n = if smoke { 200 } else { 20_000 };
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let inv = host.invoke(&target, &ctx(), &input).await?;
        samples.push(t.elapsed());
        debug_assert!(matches!(inv.outcome, StepOutcome::Succeeded { .. }));
    }
    samples.sort();
    figures.push(Figure {
        name: "warm invocation p50 (store+instantiate+call+JSON)".into(),
        value: percentile(&samples, 0.5),
        unit: "us",
        target: Some("<= 50 us".into()),
    });
    figures.push(Figure {
        name: "warm invocation p99".into(),
        value: percentile(&samples, 0.99),
        unit: "us",
        target: None,
    });

    // Throughput with 8 concurrent callers on the 2-thread runtime.
    let concurrency = 8;
    let per_task = n / concurrency;
    let t = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let host = host.clone();
            let target = target.clone();
            let input = input.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    host.invoke(&target, &ctx(), &input).await?;
                }
                Ok::<_, squid_mesh::ActionError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = t.elapsed();
    figures.push(Figure {
        name: format!("warm invocations/s, {concurrency} concurrent callers"),
        value: (per_task * concurrency) as f64 / elapsed.as_secs_f64(),
        unit: "ops/s",
        target: None,
    });
    figures.push(Figure {
        name: "pooling allocator in use (1 = yes)".into(),
        value: f64::from(u8::from(host.is_pooling())),
        unit: "",
        target: None,
    });
    Ok(figures)
}
