//! The allowlist of approved actions: key -> component pinned by digest, limits, capabilities.
//!
//! The registry is host-owned data, shared by reference: every clone sees the same entries,
//! so registering, disabling or reloading an action takes effect for running workers at once,
//! with no recompilation and no restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::types::{ActionError, ActionKey, ActionLimits, Capabilities, Digest};

/// Where a component's bytes come from.
#[derive(Debug, Clone)]
pub enum ComponentSource {
    /// A component file, read when the action is first compiled.
    File(PathBuf),
    /// Component bytes held in memory.
    Bytes(Arc<[u8]>),
    /// Bytes fetched by digest when the component is first compiled and not in the disk
    /// cache (the action catalog's store).
    Fetch(Arc<dyn FetchComponent>),
}

impl PartialEq for ComponentSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::File(a), Self::File(b)) => a == b,
            (Self::Bytes(a), Self::Bytes(b)) => a == b,
            (Self::Fetch(a), Self::Fetch(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ComponentSource {}

/// A component's bytes, on their way.
pub type Fetching =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<[u8]>, ActionError>> + Send>>;

/// Fetches a component's bytes by digest (the engine's catalog store implements it).
pub trait FetchComponent: Send + Sync + std::fmt::Debug {
    /// The bytes stored under `digest`; the host checks them against it.
    fn fetch(&self, key: ActionKey, digest: Digest) -> Fetching;
}

impl ComponentSource {
    /// Reads the bytes and checks them against `expected`.
    pub(crate) fn load_verified(
        &self,
        key: &ActionKey,
        expected: Digest,
    ) -> Result<Arc<[u8]>, ActionError> {
        let bytes: Arc<[u8]> = match self {
            Self::Bytes(b) => b.clone(),
            Self::Fetch(_) => {
                return Err(ActionError::Config {
                    message: format!(
                        "the component of action {key} ({expected}) must be fetched before it is loaded"
                    ),
                });
            }
            Self::File(path) => std::fs::read(path)
                .map_err(|source| ActionError::Io {
                    key: key.clone(),
                    path: path.clone(),
                    source,
                })?
                .into(),
        };
        let actual = Digest::of(&bytes);
        if actual != expected {
            return Err(ActionError::DigestMismatch {
                key: key.clone(),
                expected,
                actual,
            });
        }
        Ok(bytes)
    }
}

/// One approved action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredAction {
    /// The key steps reference it by.
    pub key: ActionKey,
    /// Where the component comes from.
    pub source: ComponentSource,
    /// The pinned digest of the component's bytes.
    pub digest: Digest,
    /// Disabled actions stay registered but cannot run.
    pub enabled: bool,
    /// Per-invocation limits.
    pub limits: ActionLimits,
    /// Granted capabilities (none by default).
    pub capabilities: Capabilities,
}

impl RegisteredAction {
    /// An enabled action with default limits and no capabilities, pinned to the digest of
    /// `bytes`.
    pub fn from_bytes(key: ActionKey, bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        Self {
            key,
            digest: Digest::of(&bytes),
            source: ComponentSource::Bytes(bytes),
            enabled: true,
            limits: ActionLimits::default(),
            capabilities: Capabilities::default(),
        }
    }

    /// An enabled action with default limits and no capabilities, read from `path` and
    /// pinned to `digest`.
    pub fn from_file(key: ActionKey, path: impl Into<PathBuf>, digest: Digest) -> Self {
        Self {
            key,
            source: ComponentSource::File(path.into()),
            digest,
            enabled: true,
            limits: ActionLimits::default(),
            capabilities: Capabilities::default(),
        }
    }

    /// Replaces the limits.
    #[must_use]
    pub fn with_limits(mut self, limits: ActionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces the capabilities.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Checks the component's bytes against the pin and the limits for sanity.
    ///
    /// # Errors
    ///
    /// [`ActionError::DigestMismatch`], [`ActionError::Io`] or [`ActionError::InvalidLimits`].
    pub fn verify(&self) -> Result<(), ActionError> {
        let invalid = |message: &str| ActionError::InvalidLimits {
            key: self.key.clone(),
            message: message.to_owned(),
        };
        let l = &self.limits;
        if l.timeout_ms == 0 || l.timeout_ms > ActionLimits::MAX_TIMEOUT_MS {
            return Err(invalid(&format!(
                "timeout_ms must be 1 to {} (one day), not {}",
                ActionLimits::MAX_TIMEOUT_MS,
                l.timeout_ms
            )));
        }
        if l.memory_bytes < 64 << 10 || l.memory_bytes > ActionLimits::MAX_MEMORY_BYTES {
            return Err(invalid(&format!(
                "memory_bytes must be from one 64 KiB page to {} (4 GiB), not {}",
                ActionLimits::MAX_MEMORY_BYTES,
                l.memory_bytes
            )));
        }
        if l.max_output_bytes == 0 || l.max_output_bytes > ActionLimits::MAX_CAPTURE_BYTES {
            return Err(invalid(&format!(
                "max_output_bytes must be 1 to {} (64 MiB), not {}",
                ActionLimits::MAX_CAPTURE_BYTES,
                l.max_output_bytes
            )));
        }
        if l.max_log_bytes > ActionLimits::MAX_CAPTURE_BYTES {
            return Err(invalid(&format!(
                "max_log_bytes must be at most {} (64 MiB), not {}",
                ActionLimits::MAX_CAPTURE_BYTES,
                l.max_log_bytes
            )));
        }
        if self.limits.fuel == Some(0) {
            return Err(invalid("fuel must be positive when set"));
        }
        if l.max_dynamic_nodes > ActionLimits::MAX_DYNAMIC_NODES {
            return Err(invalid(&format!(
                "max_dynamic_nodes must be at most {}, not {}",
                ActionLimits::MAX_DYNAMIC_NODES,
                l.max_dynamic_nodes
            )));
        }
        for addr in &self.capabilities.network {
            parse_addr_pattern(addr).ok_or_else(|| ActionError::InvalidCapability {
                key: self.key.clone(),
                message: format!("network address {addr:?} is not ip:port or ip:*"),
            })?;
        }
        for dir in &self.capabilities.dirs {
            if !dir.host.is_dir() {
                return Err(ActionError::InvalidCapability {
                    key: self.key.clone(),
                    message: format!("granted directory {} does not exist", dir.host.display()),
                });
            }
        }
        self.source.load_verified(&self.key, self.digest).map(drop)
    }
}

/// Parses `ip:port` or `ip:*` into (ip, optional port).
pub(crate) fn parse_addr_pattern(s: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let ip = ip.parse().ok()?;
    let port = if port == "*" {
        None
    } else {
        Some(port.parse().ok()?)
    };
    Some((ip, port))
}

/// The allowlist of approved actions. Cheap to clone; clones share the entries.
#[derive(Debug, Clone, Default)]
pub struct ActionRegistry {
    entries: Arc<RwLock<BTreeMap<ActionKey, Arc<RegisteredAction>>>>,
}

impl ActionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the actions of a manifest file.
    ///
    /// # Errors
    ///
    /// [`ActionError::Manifest`] when the file cannot be read or parsed, or any error of
    /// [`RegisteredAction::verify`] for one of its actions.
    pub fn from_manifest(path: impl AsRef<Path>) -> Result<Self, ActionError> {
        let registry = Self::new();
        registry.reload_manifest(path)?;
        Ok(registry)
    }

    /// Registers (or replaces) an action after verifying its digest and limits.
    ///
    /// # Errors
    ///
    /// Any error of [`RegisteredAction::verify`]; the registry is unchanged then.
    pub fn register(&self, action: RegisteredAction) -> Result<Arc<RegisteredAction>, ActionError> {
        action.verify()?;
        let action = Arc::new(action);
        self.write().insert(action.key.clone(), action.clone());
        Ok(action)
    }

    /// Replaces every entry with the manifest's, all or nothing.
    ///
    /// # Errors
    ///
    /// As [`ActionRegistry::from_manifest`]; on error the registry is unchanged.
    pub fn reload_manifest(&self, path: impl AsRef<Path>) -> Result<(), ActionError> {
        let manifest = Manifest::read(path.as_ref())?;
        let mut fresh = BTreeMap::new();
        for action in manifest.resolve(path.as_ref()) {
            action.verify()?;
            fresh.insert(action.key.clone(), Arc::new(action));
        }
        *self.write() = fresh;
        Ok(())
    }

    /// Enables or disables an action.
    ///
    /// # Errors
    ///
    /// [`ActionError::UnknownAction`] when nothing is registered under `key`.
    pub fn set_enabled(&self, key: &ActionKey, enabled: bool) -> Result<(), ActionError> {
        let mut entries = self.write();
        let entry = entries
            .get_mut(key)
            .ok_or_else(|| ActionError::UnknownAction { key: key.clone() })?;
        Arc::make_mut(entry).enabled = enabled;
        Ok(())
    }

    /// Removes an action; returns whether it was registered.
    pub fn remove(&self, key: &ActionKey) -> bool {
        self.write().remove(key).is_some()
    }

    /// The enabled action registered under `key`.
    ///
    /// # Errors
    ///
    /// [`ActionError::UnknownAction`] or [`ActionError::Disabled`].
    pub fn resolve(&self, key: &ActionKey) -> Result<Arc<RegisteredAction>, ActionError> {
        let entry = self
            .read()
            .get(key)
            .cloned()
            .ok_or_else(|| ActionError::UnknownAction { key: key.clone() })?;
        if !entry.enabled {
            return Err(ActionError::Disabled { key: key.clone() });
        }
        Ok(entry)
    }

    /// The action registered under `key`, enabled or not.
    pub fn get(&self, key: &ActionKey) -> Option<Arc<RegisteredAction>> {
        self.read().get(key).cloned()
    }

    /// Every registered action, ordered by key.
    pub fn list(&self) -> Vec<Arc<RegisteredAction>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ActionKey, Arc<RegisteredAction>>> {
        // A panic while holding the lock cannot leave the map half-updated: every write is a
        // single insert, remove or swap, so a poisoned lock still guards consistent data.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<ActionKey, Arc<RegisteredAction>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// An actions manifest (TOML): the approved actions of a deployment.
///
/// ```toml
/// [[action]]
/// key = "orders.validate"
/// component = "components/validate_order.wasm"   # relative to the manifest
/// digest = "sha256:4f0c..."
/// enabled = true                                  # default
///
/// [action.limits]                                 # all optional
/// timeout_ms = 5000
/// memory_bytes = 33554432
/// fuel = 1000000000
/// max_output_bytes = 65536
///
/// [action.capabilities]                           # none by default
/// env = { API_BASE = "http://127.0.0.1:8080" }
/// network = ["127.0.0.1:8080"]
/// dirs = [{ host = "/srv/data", guest = "/data", read_only = true }]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The actions, in file order.
    #[serde(default, rename = "action")]
    pub actions: Vec<ManifestAction>,
}

/// One action in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestAction {
    /// The action key.
    pub key: ActionKey,
    /// Path of the component file, relative to the manifest's directory unless absolute.
    pub component: PathBuf,
    /// The pinned digest.
    pub digest: Digest,
    /// Whether the action may run (default true).
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    /// Limits (defaults apply to missing fields).
    #[serde(default)]
    pub limits: ActionLimits,
    /// Granted capabilities (none by default).
    #[serde(default)]
    pub capabilities: Capabilities,
}

fn enabled_default() -> bool {
    true
}

impl Manifest {
    /// Reads and parses a manifest file.
    ///
    /// # Errors
    ///
    /// [`ActionError::Manifest`] naming the file and, for parse errors, the location.
    pub fn read(path: &Path) -> Result<Self, ActionError> {
        let text = std::fs::read_to_string(path).map_err(|e| ActionError::Manifest {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let manifest: Self = toml::from_str(&text).map_err(|e| ActionError::Manifest {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for action in &manifest.actions {
            if !seen.insert(&action.key) {
                return Err(ActionError::Manifest {
                    path: path.to_owned(),
                    message: format!("action {} is listed twice", action.key),
                });
            }
        }
        Ok(manifest)
    }

    /// Writes the manifest as TOML.
    ///
    /// # Errors
    ///
    /// [`ActionError::Manifest`] when the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<(), ActionError> {
        let text = toml::to_string_pretty(self).map_err(|e| ActionError::Manifest {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(|e| ActionError::Manifest {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Turns the entries into registry actions, resolving component paths against the
    /// directory of `manifest_path`.
    pub fn resolve(&self, manifest_path: &Path) -> Vec<RegisteredAction> {
        let base = manifest_path.parent().unwrap_or(Path::new("."));
        self.actions
            .iter()
            .map(|a| RegisteredAction {
                key: a.key.clone(),
                source: ComponentSource::File(base.join(&a.component)),
                digest: a.digest,
                enabled: a.enabled,
                limits: a.limits.clone(),
                capabilities: a.capabilities.clone(),
            })
            .collect()
    }
}

impl crate::spec::ActionLookup for ActionRegistry {
    fn availability(&self, key: &ActionKey) -> crate::spec::Availability {
        match self.resolve(key) {
            Ok(_) => crate::spec::Availability::Active,
            Err(ActionError::Disabled { .. }) => crate::spec::Availability::Disabled,
            Err(_) => crate::spec::Availability::Unknown,
        }
    }
}
