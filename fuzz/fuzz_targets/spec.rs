//! Workflow specs from JSON and TOML text: parse, validate, fingerprint, draw, diff.
#![no_main]

use libfuzzer_sys::fuzz_target;
use squid_mesh::spec::{WorkflowSpec, diff, preview_graph};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for spec in [WorkflowSpec::from_json(text), WorkflowSpec::from_toml(text)]
        .into_iter()
        .flatten()
    {
        let _ = spec.validate(None);
        let _ = spec.check(None);
        let _ = spec.fingerprint();
        let _ = preview_graph(&spec).to_json();
        let _ = diff(&spec, &spec);
        let _ = spec.to_json();
    }
});
