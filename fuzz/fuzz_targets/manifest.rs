//! Action manifests (TOML).
#![no_main]

use libfuzzer_sys::fuzz_target;
use squid_mesh::actions::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(manifest) = toml::from_str::<Manifest>(text) {
        let _ = toml::to_string_pretty(&manifest);
    }
});
