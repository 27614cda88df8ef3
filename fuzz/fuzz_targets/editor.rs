//! Editor documents (JSON and TOML): every problem with a path, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use squid_mesh::spec::{EditorInput, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = validate(EditorInput::Json(text));
    let _ = validate(EditorInput::Toml(text));
});
