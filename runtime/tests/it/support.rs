//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};
use squid_mesh::ActionTarget;
use squid_mesh::actions::{
    ActionHost, ActionKey, ActionRegistry, HostConfig, Invocation, RegisteredAction, StepContext,
    StepError, StepOutcome,
};

/// A compiled-artifact cache shared by the tests of this process, so each component is
/// compiled once per run rather than once per test.
pub fn shared_cache() -> PathBuf {
    let dir = std::env::temp_dir().join("squid-mesh-it-cache");
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}

pub fn host(registry: ActionRegistry) -> ActionHost {
    ActionHost::new(registry, HostConfig::default().cache_dir(shared_cache())).expect("host builds")
}

pub fn key(k: &str) -> ActionKey {
    ActionKey::new(k).expect("valid key")
}

pub fn ctx(step: &str, attempt: u32) -> StepContext {
    StepContext {
        run_id: "0b9a4c1e-7d39-4c4e-9a8e-4a3c2f1d0e11".into(),
        workflow: "tests".into(),
        step: step.into(),
        attempt,
        runnable_key: format!("tests:{step}:{attempt}"),
        idempotency_key: format!("tests:{step}:{attempt}"),
        step_idempotency_key: format!("tests:{step}"),
        trace_parent: None,
    }
}

pub fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("expected an object, got {other}"),
    }
}

pub fn wat_action(key_str: &str, wat: &str) -> RegisteredAction {
    let bytes = wat::parse_str(wat).expect("test WAT parses");
    RegisteredAction::from_bytes(key(key_str), Arc::<[u8]>::from(bytes))
}

pub fn file_action(key_str: &str, path: &Path) -> RegisteredAction {
    let bytes = std::fs::read(path).expect("component built by the artifacts crate");
    RegisteredAction::from_file(key(key_str), path, squid_mesh::Digest::of(&bytes))
}

pub async fn invoke(host: &ActionHost, key_str: &str, input: Value) -> Invocation {
    host.invoke(
        &ActionTarget::Wasm(key(key_str)),
        &ctx("step", 1),
        &obj(input),
    )
    .await
    .expect("the host runs the action")
}

pub fn expect_ok(inv: &Invocation) -> &Map<String, Value> {
    match &inv.outcome {
        StepOutcome::Succeeded { output, .. } => output,
        other => panic!("expected success, got {other:?}"),
    }
}

pub fn expect_err(inv: &Invocation) -> &StepError {
    match &inv.outcome {
        StepOutcome::Failed(e) => e,
        other => panic!("expected a step error, got {other:?}"),
    }
}
