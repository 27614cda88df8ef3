//! Start payloads resolved against a trigger with every field type, default and dynamic
//! default.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use squid_mesh::clock::Timestamp;
use squid_mesh::spec::WorkflowSpec;

fn spec() -> &'static WorkflowSpec {
    static SPEC: OnceLock<WorkflowSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        WorkflowSpec::from_json(
            r#"{"name": "fuzzed", "triggers": [{"name": "m", "type": "manual", "payload": [
                {"name": "s", "type": "string"},
                {"name": "i", "type": "integer", "required": false, "default": 3},
                {"name": "f", "type": "float", "required": false},
                {"name": "b", "type": "boolean", "required": false},
                {"name": "m", "type": "map", "required": false},
                {"name": "l", "type": "list", "required": false},
                {"name": "d", "type": "string", "required": false, "default_from": "today"}
            ]}], "steps": [{"name": "a", "action": "x.y"}]}"#,
        )
        .expect("the fuzzed spec parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let trigger = &spec().triggers[0];
    let _ = squid_mesh::plan::resolve_payload(trigger, &payload, Timestamp(1_795_608_000_000_000));
});
