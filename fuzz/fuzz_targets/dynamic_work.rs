//! Dynamic work files (JSON and TOML).
#![no_main]

use libfuzzer_sys::fuzz_target;
use squid_mesh::engine::DynamicWorkSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = DynamicWorkSpec::from_json(text);
    let _ = DynamicWorkSpec::from_toml(text);
});
