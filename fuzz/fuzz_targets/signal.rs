//! Command signals as CloudEvents-shaped JSON envelopes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use squid_mesh::engine::Signal;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(signal) = Signal::from_envelope(&value) {
        let _ = signal.to_envelope();
    }
});
