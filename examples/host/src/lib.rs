//! Helpers shared by the example host programs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use squid_mesh::actions::{ActionKey, Manifest, ManifestAction};
use squid_mesh::{ActionLimits, Capabilities, Digest};
use squid_mesh_example_artifacts as artifacts;

/// The example actions and the keys the examples register them under.
pub const EXAMPLE_ACTIONS: [(&str, &str); 5] = [
    ("orders.validate", artifacts::VALIDATE_ORDER),
    ("payments.charge", artifacts::CHARGE_PAYMENT),
    ("payments.refund", artifacts::REFUND_PAYMENT),
    ("shipping.book", artifacts::BOOK_SHIPMENT),
    ("echo", artifacts::ECHO),
];

/// Copies the example components into `dir/components` and writes `dir/actions.toml`
/// pinning each one's digest, as a deployment would (`echo` may start child runs). Returns
/// the manifest's path.
///
/// # Errors
///
/// When a component cannot be read or a file cannot be written.
pub fn write_manifest(dir: &Path) -> Result<PathBuf> {
    let components = dir.join("components");
    std::fs::create_dir_all(&components)
        .with_context(|| format!("creating {}", components.display()))?;
    let mut manifest = Manifest::default();
    for (key, path) in EXAMPLE_ACTIONS {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let file = PathBuf::from("components").join(format!("{key}.wasm"));
        std::fs::write(dir.join(&file), &bytes)?;
        manifest.actions.push(ManifestAction {
            key: ActionKey::new(key)?,
            component: file,
            digest: Digest::of(&bytes),
            enabled: true,
            limits: ActionLimits {
                timeout_ms: 5_000,
                ..ActionLimits::default()
            },
            capabilities: Capabilities {
                child_runs: key == "echo",
                ..Capabilities::default()
            },
        });
    }
    let path = dir.join("actions.toml");
    manifest.write(&path)?;
    Ok(path)
}
