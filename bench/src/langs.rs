//! What the action language costs: per language (Rust, Python, JavaScript), the component's
//! size, its cold compile, its first use after a restart with the disk cache, and the warm
//! invocation of the same `conformance` action doing the same transformation.
//!
//! The Python and JavaScript components come from `scripts/build-guests`; a language that is
//! not built fails the workload in CI (`CI=true`) and is skipped with a message elsewhere.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serde_json::{Map, Value, json};
use squid_mesh::actions::{
    ActionHost, ActionKey, ActionRegistry, HostConfig, LoadSource, RegisteredAction, StepContext,
    StepOutcome,
};
use squid_mesh::{ActionTarget, Digest};
use squid_mesh_example_artifacts as artifacts;

use crate::{Figure, percentile};

fn ctx() -> StepContext {
    StepContext {
        run_id: "bench".into(),
        workflow: "bench".into(),
        step: "transform".into(),
        attempt: 1,
        runnable_key: "bench:transform:1".into(),
        idempotency_key: "bench:transform:1".into(),
        step_idempotency_key: "bench:transform".into(),
        trace_parent: None,
    }
}

/// Per-language figures of the `conformance` action.
pub async fn langs(smoke: bool) -> Result<Vec<Figure>> {
    let in_ci = std::env::var("CI").as_deref() == Ok("true");
    let mut figures = Vec::new();
    let input: Map<String, Value> = serde_json::from_value(json!({
        "op": "transform",
        "text": "Squid Mesh runs this step",
        "numbers": [1, 2, 3, 4, 5, 6, 7, 8]
    }))?;
    for language in artifacts::languages() {
        let build = match language {
            Ok(build) => build,
            Err(unbuilt) if in_ci => bail!("{unbuilt} (required in CI)"),
            Err(unbuilt) => {
                eprintln!("!!! skipping {}: {unbuilt}", unbuilt.language);
                continue;
            }
        };
        let lang = build.language;
        let Some(path) = build.component("conformance") else {
            bail!("{lang} has no conformance component");
        };
        let bytes = std::fs::read(path)?;
        let key = ActionKey::new(format!("{lang}.conformance"))?;
        let registry = ActionRegistry::new();
        registry.register(RegisteredAction::from_file(
            key.clone(),
            path,
            Digest::of(&bytes),
        ))?;
        figures.push(Figure {
            name: format!("{lang}: component size"),
            value: bytes.len() as f64 / 1e6,
            unit: "MB",
            target: None,
        });

        let cache = tempfile::tempdir()?;
        let config = || HostConfig::default().cache_dir(cache.path().to_owned());

        // Cold: compile from the bytes (empty cache), then describe.
        let host = ActionHost::new(registry.clone(), config())?;
        let t = Instant::now();
        let (_, source) = host.prepare(&key).await?;
        let cold = t.elapsed();
        ensure!(source == LoadSource::Compiled, "{lang}: expected a compile");
        figures.push(Figure {
            name: format!("{lang}: cold first use (compile + describe)"),
            value: cold.as_secs_f64() * 1e3,
            unit: "ms",
            target: None,
        });
        drop(host);

        // Restart with the disk cache: a new host loads the artifact, describes and invokes.
        let rounds = if smoke { 2 } else { 10 };
        let mut cached = Vec::new();
        for _ in 0..rounds {
            let host = ActionHost::new(registry.clone(), config())?;
            let t = Instant::now();
            let (_, source) = host.prepare(&key).await?;
            let inv = host
                .invoke(&ActionTarget::Wasm(key.clone()), &ctx(), &input)
                .await?;
            cached.push(t.elapsed());
            ensure!(
                source == LoadSource::DiskCache,
                "{lang}: expected the disk cache"
            );
            ensure!(
                matches!(inv.outcome, StepOutcome::Succeeded { .. }),
                "{lang}: {:?}",
                inv.outcome
            );
        }
        cached.sort();
        figures.push(Figure {
            name: format!("{lang}: first use after restart, disk cache, p50"),
            value: percentile(&cached, 0.5) / 1e3,
            unit: "ms",
            target: Some("no compile".into()),
        });

        // Warm: a fresh store and instance per invocation, as every step gets.
        let host = ActionHost::new(registry.clone(), config())?;
        let target = ActionTarget::Wasm(key.clone());
        host.invoke(&target, &ctx(), &input).await?;
        let n = if smoke { 20 } else { 2_000 };
        let mut samples: Vec<Duration> = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let inv = host.invoke(&target, &ctx(), &input).await?;
            samples.push(t.elapsed());
            ensure!(
                matches!(inv.outcome, StepOutcome::Succeeded { .. }),
                "{lang}: {:?}",
                inv.outcome
            );
        }
        samples.sort();
        figures.push(Figure {
            name: format!("{lang}: warm invocation p50"),
            value: percentile(&samples, 0.5),
            unit: "us",
            target: None,
        });
        figures.push(Figure {
            name: format!("{lang}: warm invocation p99"),
            value: percentile(&samples, 0.99),
            unit: "us",
            target: None,
        });
    }
    Ok(figures)
}
