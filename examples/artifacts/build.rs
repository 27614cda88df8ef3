//! Builds every example action under `examples/actions/` into a WebAssembly component
//! (`wasm32-wasip2`, profile `guest`) and records their paths for `src/lib.rs`.
//!
//! This follows the wasmtime `test-programs` pattern: tests, benchmarks and demos use real
//! components built from source, never checked-in binaries.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("examples/artifacts sits two levels below the workspace root")
        .to_path_buf();
    let actions_dir = root.join("examples/actions");

    for watched in [
        "wit",
        "guest-sdk/src",
        "guest-sdk/Cargo.toml",
        "examples/actions",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let mut crates: Vec<(String, String)> = Vec::new();
    for entry in fs::read_dir(&actions_dir).expect("examples/actions is readable") {
        let dir = entry.expect("directory entry is readable").path();
        if dir.join("Cargo.toml").is_file() {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .expect("action directory names are UTF-8")
                .to_owned();
            crates.push((format!("action-{name}"), name));
        }
    }
    crates.sort();

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guest-components");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in &crates {
        cmd.args(["-p", package]);
    }
    // The outer build's flags and wrappers (clippy, coverage) are for the host, not the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("cargo can be spawned to build the example actions");
    assert!(
        status.success(),
        "building the example actions failed; is the target installed? run `rustup target add wasm32-wasip2`"
    );

    let mut generated = String::new();
    let mut all = String::from(
        "/// Every example action: (crate directory name, component path).\npub const ALL: &[(&str, &str)] = &[\n",
    );
    for (package, name) in &crates {
        let file = target_dir
            .join("wasm32-wasip2/guest")
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(file.is_file(), "expected component {}", file.display());
        let constant = name.to_uppercase().replace('-', "_");
        writeln!(
            generated,
            "/// Path of the `{name}` example action component.\npub const {constant}: &str = {:?};",
            file.display().to_string()
        )
        .expect("writing to a String cannot fail");
        writeln!(all, "    ({name:?}, {constant}),").expect("writing to a String cannot fail");
    }
    all.push_str("];\n");
    generated.push_str(&all);
    writeln!(
        generated,
        "/// Directory the guest components are built into (`scripts/build-guests` writes the\n\
         /// Python and JavaScript ones to its `python/` and `javascript/` subdirectories).\n\
         pub const GUEST_COMPONENTS_DIR: &str = {:?};",
        target_dir.display().to_string()
    )
    .expect("writing to a String cannot fail");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("artifacts.rs");
    fs::write(out, generated).expect("OUT_DIR is writable");
}
