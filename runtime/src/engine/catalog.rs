//! The action catalog: approved WebAssembly components kept in the database, so every
//! process on it runs them without a restart.
//!
//! An approval stores the component's bytes once per digest and makes that version the key's
//! active one (the previous one is superseded: runs that pinned it keep running it). Disabling
//! a key makes new starts refuse it and steps that reach it wait; revoking a version makes
//! steps pinned to it fail closed. Every change is an audit fact and bumps the catalog version
//! in the same transaction; each process keeps a snapshot of the catalog and reloads it when
//! the version it reads (in each claim, before each start, or on a Postgres notification)
//! differs from the snapshot's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::*;
use crate::actions::{
    ActionDescription, ActionError, ActionLimits, Capabilities, ComponentSource, FetchComponent,
    Fetching, Manifest, ManifestAction, RegisteredAction,
};
use crate::spec::{ActionLookup, ActionSchemas, Availability, SpecReport};
use crate::store::{ActionVersionRow, ActionWaitRow, CatalogEventRow, CatalogTx};
use crate::vocab::{ActionState, CatalogEventKind};

/// The largest component the catalog stores: 64 MiB.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// How long a process without a live Postgres notification listener trusts its snapshot
/// before it reads the catalog version again.
const RECHECK: Duration = Duration::from_secs(1);

/// Who changes the catalog, and why: recorded with every change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatalogCommand {
    /// Who.
    pub actor: String,
    /// Why.
    pub comment: Option<String>,
}

impl CatalogCommand {
    /// A change made by `actor`.
    pub fn by(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            comment: None,
        }
    }

    /// Adds why.
    #[must_use]
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    fn check(&self) -> Result<()> {
        if self.actor.trim().is_empty() {
            return Err(EngineError::invalid_option(
                "actor",
                "say who changes the catalog (a user or service name)",
            ));
        }
        if self.actor.len() > 256 {
            return Err(EngineError::invalid_option(
                "actor",
                "must be at most 256 bytes",
            ));
        }
        if self.comment.as_ref().is_some_and(|c| c.len() > 4096) {
            return Err(EngineError::invalid_option(
                "comment",
                "must be at most 4096 bytes",
            ));
        }
        Ok(())
    }
}

/// A component to approve under a key, with what it is granted. Capabilities come only from
/// here: a component cannot grant itself anything.
#[derive(Debug, Clone)]
pub struct Approval {
    key: ActionKey,
    bytes: Arc<[u8]>,
    expected: Option<Digest>,
    limits: ActionLimits,
    capabilities: Capabilities,
    command: CatalogCommand,
}

impl Approval {
    /// Approves `bytes` under `key`, with default limits and no capabilities.
    pub fn new(key: ActionKey, bytes: impl Into<Arc<[u8]>>, command: CatalogCommand) -> Self {
        Self {
            key,
            bytes: bytes.into(),
            expected: None,
            limits: ActionLimits::default(),
            capabilities: Capabilities::default(),
            command,
        }
    }

    /// Approves the component file at `path`.
    ///
    /// # Errors
    ///
    /// [`ActionError::Io`] when the file cannot be read.
    pub fn from_file(
        key: ActionKey,
        path: impl AsRef<Path>,
        command: CatalogCommand,
    ) -> Result<Self> {
        use std::io::Read as _;
        let path = path.as_ref();
        let io = |source| ActionError::Io {
            key: key.clone(),
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(io(std::io::Error::other("not a regular file")).into());
        }
        // Read one byte past the bound, so a larger file is refused without reading it all.
        let mut bytes = Vec::new();
        file.take(MAX_COMPONENT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Ok(Self::new(key, bytes, command))
    }

    /// Replaces the limits.
    #[must_use]
    pub fn limits(mut self, limits: ActionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Grants capabilities.
    #[must_use]
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Refuses the bytes unless their digest is `digest` (a manifest's pin).
    #[must_use]
    pub fn expect_digest(mut self, digest: Digest) -> Self {
        self.expected = Some(digest);
        self
    }
}

/// One version of an action as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatalogAction {
    /// The key.
    pub key: ActionKey,
    /// The component's digest.
    pub digest: Digest,
    /// Whether it runs.
    pub state: ActionState,
    /// Per-invocation limits.
    pub limits: ActionLimits,
    /// Granted capabilities.
    pub capabilities: Capabilities,
    /// What the component says about itself (name, version, summary, schemas).
    pub description: ActionDescription,
    /// Who approved it.
    pub approved_by: String,
    /// When.
    pub approved_at: Timestamp,
    /// Last state change.
    pub updated_at: Timestamp,
}

/// An entry of the catalog's audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CatalogEvent {
    /// The catalog version the change produced.
    pub seq: i64,
    /// The key.
    pub key: ActionKey,
    /// The version.
    pub digest: Digest,
    /// What happened.
    pub kind: CatalogEventKind,
    /// Who.
    pub actor: String,
    /// Why.
    pub comment: Option<String>,
    /// Details (the superseded digest, the limits and capabilities granted).
    pub detail: Value,
    /// When.
    pub at: Timestamp,
}

/// A key with every version and its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionDetail {
    /// The key.
    pub key: ActionKey,
    /// The current version (active or disabled), if any.
    pub current: Option<CatalogAction>,
    /// Every version, oldest approval first.
    pub versions: Vec<CatalogAction>,
    /// The audit trail, oldest first.
    pub history: Vec<CatalogEvent>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Versions approved (new digests, or other limits or capabilities).
    pub approved: Vec<CatalogAction>,
    /// Keys whose active version was already the manifest's, unchanged.
    pub unchanged: Vec<ActionKey>,
    /// Keys the manifest lists as disabled, disabled by the import.
    pub disabled: Vec<ActionKey>,
    /// Keys the manifest lists as enabled, enabled by the import.
    pub enabled: Vec<ActionKey>,
}

/// The result of re-checking one stored component.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlobCheck {
    /// The key.
    pub key: ActionKey,
    /// The version.
    pub digest: Digest,
    /// Whether the stored bytes hash to the digest and load as an action.
    pub ok: bool,
    /// The error code when not.
    pub code: Option<String>,
    /// What is wrong.
    pub error: Option<String>,
}

/// The action catalog of an engine's database ([`Engine::catalog`]).
#[derive(Debug, Clone)]
pub struct Catalog {
    engine: Engine,
}

/// What a step pinned to an action may do now.
pub(crate) enum Resolved {
    /// Run this action.
    Run(Arc<RegisteredAction>),
    /// Not runnable yet (unknown, disabled): wait, explained.
    Wait { code: &'static str, message: String },
    /// Never runnable (revoked, replaced in a fixed registry): fail the step.
    Fail { code: &'static str, message: String },
}

/// Why a claimed step waits, and the catalog version that said so.
pub(super) struct ActionWait<'a> {
    pub(super) key: &'a ActionKey,
    pub(super) digest: Option<&'a Digest>,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// The snapshot's version when the step was resolved.
    pub(super) seen: i64,
}

/// This process's view of the catalog.
#[derive(Debug, Default)]
pub(crate) struct CatalogCache {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Set by a Postgres notification (or a change made here): reload before trusting it.
    pub(super) stale: Arc<AtomicBool>,
    /// Whether a Postgres notification listener is subscribed in this process.
    pub(super) listening: Arc<AtomicBool>,
    /// When the version was last read.
    checked: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    version: i64,
    versions: HashMap<(ActionKey, Digest), Arc<Version>>,
    /// The current (active or disabled) digest of each key.
    current: HashMap<ActionKey, Digest>,
}

#[derive(Debug)]
struct Version {
    state: ActionState,
    action: Arc<RegisteredAction>,
    description: Option<ActionDescription>,
}

impl CatalogCache {
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn version(&self) -> i64 {
        self.snapshot().version
    }
}

/// Fetches component bytes from the catalog's store.
#[derive(Debug)]
struct StoreFetch {
    store: AnyStore,
}

impl FetchComponent for StoreFetch {
    fn fetch(&self, key: ActionKey, digest: Digest) -> Fetching {
        let store = self.store.clone();
        Box::pin(async move {
            let failed = |message: String, retryable: bool| ActionError::Fetch {
                key: key.clone(),
                digest,
                message,
                retryable,
            };
            let bytes = match &store {
                AnyStore::Sqlite(s) => load_blob(s, &digest).await,
                AnyStore::Postgres(s) => load_blob(s, &digest).await,
            }
            .map_err(|e| failed(e.to_string(), true))?
            .ok_or_else(|| failed("no bytes are stored under this digest".into(), false))?;
            let actual = Digest::of(&bytes);
            if actual != digest {
                return Err(ActionError::DigestMismatch {
                    key,
                    expected: digest,
                    actual,
                });
            }
            Ok(bytes.into())
        })
    }
}

async fn load_blob<S: Store>(
    store: &S,
    digest: &Digest,
) -> crate::store::StoreResult<Option<Vec<u8>>> {
    let mut tx = store.begin_read().await?;
    tx.load_blob(&digest.to_string()).await
}

/// Keys as the engine resolves them: the host's fixed registry first, then the catalog.
pub(crate) struct ActionsView<'a> {
    registry: &'a ActionRegistry,
    snapshot: Arc<Snapshot>,
}

impl ActionLookup for ActionsView<'_> {
    fn availability(&self, key: &ActionKey) -> Availability {
        if self.registry.get(key).is_some() {
            return self.registry.availability(key);
        }
        match self
            .snapshot
            .current
            .get(key)
            .and_then(|d| self.snapshot.versions.get(&(key.clone(), *d)))
        {
            Some(v) if v.state == ActionState::Active => Availability::Active,
            Some(_) => Availability::Disabled,
            None => Availability::Unknown,
        }
    }

    fn schemas(&self, key: &ActionKey) -> Option<ActionSchemas> {
        if self.registry.get(key).is_some() {
            return None;
        }
        let current = self.snapshot.current.get(key)?;
        let d = self.snapshot.versions.get(&(key.clone(), *current))?;
        let d = d.description.as_ref()?;
        Some(ActionSchemas {
            input: d.input_schema.clone(),
            output: d.output_schema.clone(),
        })
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

impl Engine {
    /// The action catalog in this engine's database.
    pub fn catalog(&self) -> Catalog {
        Catalog {
            engine: self.clone(),
        }
    }

    /// The keys steps may use, as this process last saw the catalog.
    pub(crate) fn actions_view(&self) -> ActionsView<'_> {
        ActionsView {
            registry: self.registry(),
            snapshot: self.inner.catalog.snapshot(),
        }
    }

    /// Checks a spec against the registry and the action catalog (read again first): every
    /// problem (unknown or disabled actions, data flow that contradicts the actions' schemas)
    /// and every warning (actions whose data flow cannot be checked).
    ///
    /// # Errors
    ///
    /// A store error reading the catalog.
    pub async fn check_spec(&self, spec: &WorkflowSpec) -> Result<SpecReport> {
        self.refresh_catalog().await?;
        Ok(spec.check(Some(&self.actions_view())))
    }

    /// Reloads the catalog snapshot if the database holds a newer version (one read; on
    /// Postgres with a live notification listener, only after a notification or a second).
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn refresh_catalog(&self) -> Result<()> {
        let cache = &self.inner.catalog;
        let postgres = matches!(self.any_store(), AnyStore::Postgres(_));
        if postgres && !cache.stale.load(Ordering::SeqCst) {
            let checked = *cache.checked.lock().unwrap_or_else(|e| e.into_inner());
            if checked.is_some_and(|t| t.elapsed() < RECHECK)
                && cache.listening.load(Ordering::SeqCst)
            {
                return Ok(());
            }
        }
        let version = with_store!(self, s => s.catalog_version().await?);
        self.catalog_seen(version).await
    }

    /// Reloads the snapshot when `version` (read from the database) differs from it.
    pub(crate) async fn catalog_seen(&self, version: i64) -> Result<()> {
        let cache = &self.inner.catalog;
        *cache.checked.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if version == cache.version() && !cache.stale.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.reload_catalog().await
    }

    async fn reload_catalog(&self) -> Result<()> {
        let cache = &self.inner.catalog;
        cache.stale.store(false, Ordering::SeqCst);
        let (version, rows) = with_store!(self, s => {
            let mut tx = s.begin_read().await?;
            let version = tx.catalog_version().await?;
            (version, tx.action_versions().await?)
        });
        let fetch: Arc<dyn FetchComponent> = Arc::new(StoreFetch {
            store: self.any_store().clone(),
        });
        let mut snap = Snapshot {
            version,
            ..Snapshot::default()
        };
        // Entries whose row did not change keep their registered action, so compiled
        // components stay matched to them.
        let old = cache.snapshot();
        for row in rows {
            let key: ActionKey = ActionKey::new(&row.action_key)
                .map_err(|e| corrupt(&format!("catalog key {}", row.action_key), e))?;
            let digest: Digest = row
                .digest
                .parse()
                .map_err(|e| corrupt(&format!("catalog digest of {key}"), e))?;
            let limits: ActionLimits = serde_json::from_str(&row.limits)
                .map_err(|e| corrupt(&format!("catalog limits of {key}"), e))?;
            let capabilities: Capabilities = serde_json::from_str(&row.capabilities)
                .map_err(|e| corrupt(&format!("catalog capabilities of {key}"), e))?;
            let description = serde_json::from_str(&row.description).ok();
            if row.state.is_current() {
                snap.current.insert(key.clone(), digest);
            }
            let action = match old.versions.get(&(key.clone(), digest)) {
                Some(v) if v.action.limits == limits && v.action.capabilities == capabilities => {
                    v.action.clone()
                }
                _ => Arc::new(RegisteredAction {
                    key: key.clone(),
                    source: ComponentSource::Fetch(fetch.clone()),
                    digest,
                    enabled: true,
                    limits,
                    capabilities,
                }),
            };
            snap.versions.insert(
                (key, digest),
                Arc::new(Version {
                    state: row.state,
                    action,
                    description,
                }),
            );
        }
        let mut slot = cache.snapshot.write().unwrap_or_else(|e| e.into_inner());
        if slot.version <= snap.version {
            *slot = Arc::new(snap);
        }
        Ok(())
    }

    /// The digest a new start pins for `key`: the fixed registry's, else the catalog's
    /// active version.
    pub(crate) fn current_digest(&self, key: &ActionKey) -> Result<Digest> {
        if self.registry().get(key).is_some() {
            return Ok(self.registry().resolve(key)?.digest);
        }
        let snap = self.inner.catalog.snapshot();
        let current = snap
            .current
            .get(key)
            .and_then(|d| snap.versions.get(&(key.clone(), *d)));
        match current {
            Some(v) if v.state == ActionState::Active => Ok(v.action.digest),
            Some(_) => Err(ActionError::Disabled { key: key.clone() }.into()),
            None => Err(ActionError::UnknownAction { key: key.clone() }.into()),
        }
    }

    /// What a step of a run that pinned `pinned` for `key` may do now.
    pub(crate) async fn resolve_pinned(
        &self,
        key: &ActionKey,
        pinned: Option<&Digest>,
    ) -> Resolved {
        if let Some(entry) = self.registry().get(key) {
            return match pinned {
                Some(d) if *d != entry.digest => Resolved::Fail {
                    code: "action_digest_changed",
                    message: format!(
                        "action {key} is now {} but the run pinned {d}",
                        entry.digest
                    ),
                },
                None => Resolved::Fail {
                    code: "action_digest_changed",
                    message: format!(
                        "action {key} is now {} but the run pinned nothing",
                        entry.digest
                    ),
                },
                Some(_) if !entry.enabled => Resolved::Wait {
                    code: "action_disabled",
                    message: format!(
                        "action {key} is disabled in this host's registry; enable it to go on"
                    ),
                },
                Some(_) => Resolved::Run(entry),
            };
        }
        let Some(digest) = pinned else {
            return Resolved::Fail {
                code: "definition_unavailable",
                message: format!("the run's definition pins no version of action {key}"),
            };
        };
        let mut snap = self.inner.catalog.snapshot();
        if !snap.versions.contains_key(&(key.clone(), *digest)) {
            // Approved since this process last looked?
            if self.refresh_catalog().await.is_ok() {
                snap = self.inner.catalog.snapshot();
            }
        }
        let key_disabled = snap
            .current
            .get(key)
            .and_then(|d| snap.versions.get(&(key.clone(), *d)))
            .is_some_and(|v| v.state == ActionState::Disabled);
        match snap.versions.get(&(key.clone(), *digest)) {
            Some(v) if v.state == ActionState::Revoked => Resolved::Fail {
                code: "action_revoked",
                message: format!("action {key} version {digest} is revoked"),
            },
            Some(_) if key_disabled => Resolved::Wait {
                code: "action_disabled",
                message: format!(
                    "action {key} is disabled in the catalog; enable it (squid-mesh actions enable {key}) or cancel the run"
                ),
            },
            Some(v) => Resolved::Run(v.action.clone()),
            None => Resolved::Wait {
                code: "action_unknown",
                message: format!(
                    "action {key} version {digest} is not approved in the catalog; approve it (squid-mesh actions approve {key} FILE) or cancel the run"
                ),
            },
        }
    }

    /// Releases a claimed attempt whose action cannot run yet and records why; it is due
    /// again after a backoff that grows with the wait (1 s to a minute), or at once when
    /// the action is approved or enabled.
    pub(super) async fn wait_for_action<S: Store>(
        &self,
        store: &S,
        attempt: &AttemptRow,
        token_hash: &str,
        wait: ActionWait<'_>,
    ) -> Result<()> {
        let ActionWait {
            key,
            digest,
            code,
            message,
            seen,
        } = wait;
        let now = self.inner.clock.now();
        let mut tx = store.begin_write().await?;
        // Locked first, so an approval either committed before (the version moved: look
        // again at once) or runs after this commits (and wakes the attempt).
        let version = tx.lock_catalog().await?;
        let since = tx
            .action_wait(&attempt.runnable_key)
            .await?
            .map_or(now_us(now), |w| w.since);
        let waited = Duration::from_micros(u64::try_from(now_us(now) - since).unwrap_or(0));
        let delay = if version == seen {
            (waited / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
        } else {
            Duration::ZERO
        };
        if self
            .release_in(&mut tx, attempt, token_hash, now.plus(delay))
            .await?
        {
            tx.put_action_wait(&ActionWaitRow {
                runnable_key: attempt.runnable_key.clone(),
                run_id: attempt.run_id.clone(),
                action_key: key.to_string(),
                digest: digest.map(ToString::to_string),
                code: code.to_owned(),
                message,
                since,
                updated_at: now_us(now),
            })
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Catalog {
    /// Approves a component under its key: checks the limits, compiles the bytes and calls
    /// the component's `describe` (it must implement the action world), stores the bytes
    /// (once per digest) and makes this version the key's active one. The previous current
    /// version is superseded; steps waiting for the key are made due at once.
    ///
    /// Approving the current version again with the same limits and capabilities changes
    /// nothing (no new fact; a disabled one stays disabled); with others it records them as
    /// a new approval, active.
    ///
    /// # Errors
    ///
    /// [`EngineError::Action`] with [`ActionError::DigestMismatch`] (an expected digest),
    /// [`ActionError::InvalidLimits`], [`ActionError::InvalidCapability`],
    /// [`ActionError::InvalidComponent`] or [`ActionError::Revoked`] (a revoked digest is
    /// never approved again); [`EngineError::InvalidOption`] for a missing actor; a store
    /// error. Nothing is written on error.
    pub async fn approve(&self, approval: Approval) -> Result<CatalogAction> {
        Ok(self.approve_changed(approval).await?.0)
    }

    /// Everything an approval is checked for before anything is written: the actor, the
    /// bytes (WebAssembly, bounded, the expected digest), the limits, and the component
    /// itself (compiled and described). Its digest and self-description.
    async fn check_approval(&self, approval: &Approval) -> Result<(Digest, ActionDescription)> {
        approval.command.check()?;
        let invalid = |message: String| ActionError::InvalidComponent {
            key: approval.key.clone(),
            message,
        };
        if !approval.bytes.starts_with(b"\0asm") {
            return Err(invalid(
                "the file is not a WebAssembly binary (it does not start with \\0asm)".into(),
            )
            .into());
        }
        if approval.bytes.len() > MAX_COMPONENT_BYTES {
            return Err(invalid(format!(
                "the component is larger than {} MiB",
                MAX_COMPONENT_BYTES >> 20
            ))
            .into());
        }
        let candidate = RegisteredAction::from_bytes(approval.key.clone(), approval.bytes.clone())
            .with_limits(approval.limits.clone())
            .with_capabilities(approval.capabilities.clone());
        if let Some(expected) = approval.expected
            && expected != candidate.digest
        {
            return Err(ActionError::DigestMismatch {
                key: approval.key.clone(),
                expected,
                actual: candidate.digest,
            }
            .into());
        }
        let description = self.engine.action_host().check(&candidate).await?;
        Ok((candidate.digest, description))
    }

    /// [`Catalog::approve`], saying whether it changed anything.
    async fn approve_changed(&self, approval: Approval) -> Result<(CatalogAction, bool)> {
        let (digest, description) = self.check_approval(&approval).await?;
        let e = &self.engine;
        let (approved, changed) =
            with_store!(e, s => self.approve_on(s, &approval, digest, &description).await)?;
        if changed {
            e.catalog_changed().await;
        }
        Ok((approved, changed))
    }

    async fn approve_on<S: Store>(
        &self,
        store: &S,
        a: &Approval,
        digest: Digest,
        description: &ActionDescription,
    ) -> Result<(CatalogAction, bool)> {
        let now = now_us(self.engine.now());
        let key = a.key.to_string();
        let limits = to_json(&a.limits);
        let capabilities = to_json(&a.capabilities);
        let mut tx = store.begin_write().await?;
        tx.lock_catalog().await?;
        let versions = tx.versions_of(&key).await?;
        // A revoked digest stays revoked, under every key.
        if tx.digest_revoked(&digest.to_string()).await? {
            tx.rollback().await;
            return Err(ActionError::Revoked {
                key: a.key.clone(),
                digest,
            }
            .into());
        }
        let same = versions.iter().find(|v| v.digest == digest.to_string());
        if let Some(v) = same {
            // The current version again, as granted: nothing changes (a disabled one stays
            // disabled: enabling is its own decision).
            if v.state.is_current() && v.limits == limits && v.capabilities == capabilities {
                let unchanged = row_to_action(v.clone());
                tx.rollback().await;
                return Ok((unchanged?, false));
            }
        }
        let seq = tx.bump_catalog_version().await?;
        let previous = versions
            .iter()
            .find(|v| v.state.is_current() && v.digest != digest.to_string());
        if let Some(prev) = previous {
            let mut prev = prev.clone();
            prev.state = ActionState::Superseded;
            prev.updated_at = now;
            tx.put_action_version(&prev).await?;
        }
        tx.put_blob(&digest.to_string(), &a.bytes, now).await?;
        let row = ActionVersionRow {
            action_key: key.clone(),
            digest: digest.to_string(),
            state: ActionState::Active,
            limits,
            capabilities,
            description: to_json(description),
            approved_by: a.command.actor.clone(),
            approved_at: now,
            approved_seq: seq,
            updated_at: now,
        };
        tx.put_action_version(&row).await?;
        let detail = serde_json::json!({
            "superseded": previous.map(|p| p.digest.clone()),
            "limits": a.limits,
            "capabilities": a.capabilities,
            "size_bytes": a.bytes.len(),
            "name": description.name,
            "version": description.version,
        });
        let event = a
            .command
            .event(seq, &key, &digest.to_string(), CatalogEventKind::Approved);
        finish_change(tx, event.detail(&detail).at(now), true).await?;
        Ok((row_to_action(row)?, true))
    }

    /// Disables the key's current version: new starts refuse the key and steps that reach
    /// it wait until it is enabled. Disabling a disabled key changes nothing.
    ///
    /// # Errors
    ///
    /// [`ActionError::UnknownAction`] when the key has no current version.
    pub async fn disable(&self, key: &ActionKey, command: CatalogCommand) -> Result<CatalogAction> {
        self.set_current(key, command, ActionState::Disabled).await
    }

    /// Enables the key's disabled current version; waiting steps are made due at once.
    /// Enabling an active key changes nothing.
    ///
    /// # Errors
    ///
    /// [`ActionError::UnknownAction`] when the key has no current version.
    pub async fn enable(&self, key: &ActionKey, command: CatalogCommand) -> Result<CatalogAction> {
        self.set_current(key, command, ActionState::Active).await
    }

    async fn set_current(
        &self,
        key: &ActionKey,
        command: CatalogCommand,
        to: ActionState,
    ) -> Result<CatalogAction> {
        command.check()?;
        let e = &self.engine;
        let changed = with_store!(e, s => self.set_current_on(s, key, &command, to).await)?;
        e.catalog_changed().await;
        Ok(changed)
    }

    async fn set_current_on<S: Store>(
        &self,
        store: &S,
        key: &ActionKey,
        command: &CatalogCommand,
        to: ActionState,
    ) -> Result<CatalogAction> {
        let now = now_us(self.engine.now());
        let mut tx = store.begin_write().await?;
        tx.lock_catalog().await?;
        let versions = tx.versions_of(key.as_str()).await?;
        let known = !versions.is_empty();
        let Some(current) = versions.into_iter().find(|v| v.state.is_current()) else {
            tx.rollback().await;
            return Err(match known {
                false => ActionError::UnknownAction { key: key.clone() },
                true => ActionError::NotInCatalog {
                    key: key.clone(),
                    message: format!(
                        "action {key} has no current version (its versions are superseded or revoked); approve one first"
                    ),
                },
            }
            .into());
        };
        if current.state == to {
            tx.rollback().await;
            return row_to_action(current);
        }
        let seq = tx.bump_catalog_version().await?;
        let mut row = current;
        row.state = to;
        row.updated_at = now;
        tx.put_action_version(&row).await?;
        let kind = match to {
            ActionState::Active => CatalogEventKind::Enabled,
            _ => CatalogEventKind::Disabled,
        };
        let event = command.event(seq, key.as_str(), &row.digest, kind).at(now);
        finish_change(tx, event, to == ActionState::Active).await?;
        row_to_action(row)
    }

    /// Revokes a version (the key's current one when `digest` is `None`): steps pinned to
    /// it fail closed with `action_revoked`, and it can never be approved again. Revoking
    /// the current version leaves the key with none: new starts refuse it until another
    /// version is approved. Revoking a revoked version changes nothing.
    ///
    /// # Errors
    ///
    /// [`ActionError::UnknownAction`] when the key (or that version of it) is not in the
    /// catalog.
    pub async fn revoke(
        &self,
        key: &ActionKey,
        digest: Option<Digest>,
        command: CatalogCommand,
    ) -> Result<CatalogAction> {
        command.check()?;
        let e = &self.engine;
        let revoked = with_store!(e, s => self.revoke_on(s, key, digest, &command).await)?;
        e.catalog_changed().await;
        Ok(revoked)
    }

    async fn revoke_on<S: Store>(
        &self,
        store: &S,
        key: &ActionKey,
        digest: Option<Digest>,
        command: &CatalogCommand,
    ) -> Result<CatalogAction> {
        let now = now_us(self.engine.now());
        let mut tx = store.begin_write().await?;
        tx.lock_catalog().await?;
        let versions = tx.versions_of(key.as_str()).await?;
        let target = versions
            .iter()
            .find(|v| match digest {
                Some(d) => v.digest == d.to_string(),
                None => v.state.is_current(),
            })
            .cloned();
        let Some(mut row) = target else {
            tx.rollback().await;
            let error = match (versions.is_empty(), digest) {
                (true, _) => ActionError::UnknownAction { key: key.clone() },
                (false, Some(d)) => ActionError::NotInCatalog {
                    key: key.clone(),
                    message: format!("action {key} has no version {d} in the catalog"),
                },
                (false, None) => ActionError::NotInCatalog {
                    key: key.clone(),
                    message: format!(
                        "action {key} has no current version; name the version to revoke (--digest)"
                    ),
                },
            };
            return Err(error.into());
        };
        if row.state == ActionState::Revoked {
            tx.rollback().await;
            return row_to_action(row);
        }
        let seq = tx.bump_catalog_version().await?;
        let was = row.state;
        row.state = ActionState::Revoked;
        row.updated_at = now;
        tx.put_action_version(&row).await?;
        let event = command.event(seq, key.as_str(), &row.digest, CatalogEventKind::Revoked);
        // Steps waiting for it find out at once that it will never run.
        let event = event.detail(&serde_json::json!({"was": was})).at(now);
        finish_change(tx, event, true).await?;
        row_to_action(row)
    }

    /// One entry per key: its current version, or (for a key with none) its latest.
    ///
    /// # Errors
    ///
    /// A store error, or [`EngineError::Corrupt`] for an unreadable row.
    pub async fn list(&self) -> Result<Vec<CatalogAction>> {
        let e = &self.engine;
        let rows = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            tx.action_versions().await?
        });
        let mut out: Vec<CatalogAction> = Vec::new();
        let mut by_key: BTreeMap<String, ActionVersionRow> = BTreeMap::new();
        for row in rows {
            match by_key.get(&row.action_key) {
                Some(have) if have.state.is_current() => {}
                _ if row.state.is_current() => {
                    by_key.insert(row.action_key.clone(), row);
                }
                Some(have) if have.approved_seq > row.approved_seq => {}
                _ => {
                    by_key.insert(row.action_key.clone(), row);
                }
            }
        }
        for row in by_key.into_values() {
            out.push(row_to_action(row)?);
        }
        Ok(out)
    }

    /// A key's versions and history.
    ///
    /// # Errors
    ///
    /// [`ActionError::UnknownAction`] when the catalog never held the key.
    pub async fn show(&self, key: &ActionKey) -> Result<ActionDetail> {
        let e = &self.engine;
        let (rows, events) = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            let rows = tx.versions_of(key.as_str()).await?;
            (rows, tx.catalog_events(Some(key.as_str())).await?)
        });
        if rows.is_empty() {
            return Err(ActionError::UnknownAction { key: key.clone() }.into());
        }
        let versions = rows
            .into_iter()
            .map(row_to_action)
            .collect::<Result<Vec<_>>>()?;
        Ok(ActionDetail {
            key: key.clone(),
            current: versions.iter().find(|v| v.state.is_current()).cloned(),
            versions,
            history: events
                .into_iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>>>()?,
        })
    }

    /// The whole audit trail, oldest first.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn history(&self) -> Result<Vec<CatalogEvent>> {
        let e = &self.engine;
        let events = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            tx.catalog_events(None).await?
        });
        events.into_iter().map(event_from_row).collect()
    }

    /// The bytes of a stored component, checked against its digest.
    ///
    /// # Errors
    ///
    /// [`ActionError::Fetch`] when nothing is stored under the digest,
    /// [`ActionError::DigestMismatch`] when the stored bytes were altered.
    pub async fn component(&self, key: &ActionKey, digest: Digest) -> Result<Arc<[u8]>> {
        let fetch = StoreFetch {
            store: self.engine.any_store().clone(),
        };
        Ok(fetch.fetch(key.clone(), digest).await?)
    }

    /// Writes the current versions as a manifest: `dir/actions.toml` and one component file
    /// per version under `dir/components/`, checked against its digest. Keys with no current
    /// version are left out.
    ///
    /// # Errors
    ///
    /// [`ActionError::Manifest`] when a file cannot be written; fetch errors.
    pub async fn export(&self, dir: &Path) -> Result<Manifest> {
        let components = dir.join("components");
        std::fs::create_dir_all(&components).map_err(|e| ActionError::Manifest {
            path: components.clone(),
            message: e.to_string(),
        })?;
        let mut manifest = Manifest::default();
        for action in self.list().await? {
            if !action.state.is_current() {
                continue;
            }
            let bytes = self.component(&action.key, action.digest).await?;
            let name = format!(
                "{}-{}.wasm",
                action.key.as_str().replace(['/', ':'], "_"),
                &action.digest.hex()[..12]
            );
            let path = components.join(&name);
            std::fs::write(&path, &bytes).map_err(|e| ActionError::Manifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
            manifest.actions.push(ManifestAction {
                key: action.key.clone(),
                component: Path::new("components").join(name),
                digest: action.digest,
                enabled: action.state == ActionState::Active,
                limits: action.limits.clone(),
                capabilities: action.capabilities.clone(),
            });
        }
        manifest.write(&dir.join("actions.toml"))?;
        Ok(manifest)
    }

    /// Approves every action of a manifest (component paths relative to its folder, which
    /// they may not leave; each file checked against its pinned digest), all checked before
    /// anything is written. Actions the manifest marks disabled are disabled after.
    ///
    /// # Errors
    ///
    /// [`ActionError::Manifest`] for an unreadable manifest or a component path outside its
    /// folder, or any [`Catalog::approve`] error, naming the key. Actions approved before an
    /// error stay approved.
    pub async fn import(
        &self,
        manifest_path: &Path,
        command: CatalogCommand,
    ) -> Result<ImportReport> {
        command.check()?;
        let manifest = Manifest::read(manifest_path)?;
        let base = match manifest_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(base).map_err(|e| ActionError::Manifest {
            path: manifest_path.to_owned(),
            message: e.to_string(),
        })?;
        let base_real = base.canonicalize().unwrap_or_else(|_| base.clone());
        let mut approvals = Vec::new();
        for entry in &manifest.actions {
            let path = base.join(&entry.component);
            let outside = || ActionError::Manifest {
                path: manifest_path.to_owned(),
                message: format!(
                    "action {}: component {} is outside the manifest's folder",
                    entry.key,
                    entry.component.display()
                ),
            };
            let real = path.canonicalize().map_err(|source| ActionError::Io {
                key: entry.key.clone(),
                path: entry.component.clone(),
                source,
            })?;
            if !real.starts_with(&base_real) {
                return Err(outside().into());
            }
            let approval = Approval::from_file(entry.key.clone(), &real, command.clone())?
                .limits(entry.limits.clone())
                .capabilities(entry.capabilities.clone())
                .expect_digest(entry.digest);
            // Checked before anything is written: digest, limits, component.
            self.check_approval(&approval).await?;
            approvals.push((approval, entry.enabled));
        }
        let mut report = ImportReport::default();
        for (approval, enabled) in approvals {
            let key = approval.key.clone();
            let (approved, changed) = self.approve_changed(approval).await?;
            let state = approved.state;
            if changed {
                report.approved.push(approved);
            } else {
                report.unchanged.push(key.clone());
            }
            match (enabled, state) {
                (false, ActionState::Active) => {
                    self.disable(&key, command.clone()).await?;
                    report.disabled.push(key);
                }
                (true, ActionState::Disabled) => {
                    self.enable(&key, command.clone()).await?;
                    report.enabled.push(key);
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Loads every active version into this process's action host (from memory, the disk
    /// cache, or fetched from the database and compiled), so the first steps that use them
    /// start at once; says where each came from. Call it when a worker starts.
    ///
    /// # Errors
    ///
    /// A store error, or the first load error (naming the key).
    pub async fn warm(&self) -> Result<Vec<(ActionKey, crate::actions::LoadSource)>> {
        let e = &self.engine;
        e.inner.catalog.mark_stale();
        e.refresh_catalog().await?;
        let snap = e.inner.catalog.snapshot();
        let mut current: Vec<(&ActionKey, &Digest)> = snap.current.iter().collect();
        current.sort();
        let mut out = Vec::new();
        for (key, digest) in current {
            let Some(v) = snap.versions.get(&(key.clone(), *digest)) else {
                continue;
            };
            if v.state != ActionState::Active {
                continue;
            }
            let (_, from) = e.action_host().prepare_action(&v.action).await?;
            out.push((key.clone(), from));
        }
        Ok(out)
    }

    /// Re-checks every stored version: its bytes hash to its digest and load as an action.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn verify(&self) -> Result<Vec<BlobCheck>> {
        let e = &self.engine;
        let rows = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            tx.action_versions().await?
        });
        let mut out = Vec::new();
        for row in rows {
            if row.state == ActionState::Revoked {
                continue;
            }
            let action = row_to_action(row)?;
            let checked = async {
                let bytes = self.component(&action.key, action.digest).await?;
                let candidate = RegisteredAction::from_bytes(action.key.clone(), bytes)
                    .with_limits(action.limits.clone())
                    .with_capabilities(action.capabilities.clone());
                self.engine.action_host().check(&candidate).await?;
                Ok::<(), EngineError>(())
            }
            .await;
            out.push(BlobCheck {
                key: action.key,
                digest: action.digest,
                ok: checked.is_ok(),
                code: checked.as_ref().err().map(|e| e.code().to_owned()),
                error: checked.err().map(|e| e.to_string()),
            });
        }
        Ok(out)
    }
}

impl CatalogCommand {
    /// The trail entry of a change this command makes.
    fn event(&self, seq: i64, key: &str, digest: &str, kind: CatalogEventKind) -> CatalogEventRow {
        CatalogEventRow {
            seq,
            action_key: key.to_owned(),
            digest: digest.to_owned(),
            kind,
            actor: self.actor.clone(),
            comment: self.comment.clone(),
            detail: "{}".into(),
            occurred_at: 0,
        }
    }
}

impl CatalogEventRow {
    fn detail(mut self, detail: &Value) -> Self {
        self.detail = to_json(detail);
        self
    }

    fn at(mut self, now: i64) -> Self {
        self.occurred_at = now;
        self
    }
}

/// Ends a catalog change: its trail entry, the steps waiting for its key made due (`wake`),
/// the notification to other processes, the commit.
async fn finish_change<T: CatalogTx>(mut tx: T, event: CatalogEventRow, wake: bool) -> Result<()> {
    tx.append_catalog_event(&event).await?;
    if wake {
        tx.wake_action_waits(&event.action_key, event.occurred_at)
            .await?;
    }
    tx.notify_queue(CATALOG_CHANNEL).await?;
    tx.commit().await?;
    Ok(())
}

/// The payload of the notification a catalog change sends on the wake-up channel (queue
/// names cannot start with `:`).
pub(crate) const CATALOG_CHANNEL: &str = ":catalog";

impl Engine {
    /// After a change made by this process: reload the snapshot and wake local workers.
    async fn catalog_changed(&self) {
        self.inner.catalog.mark_stale();
        if let Err(e) = self.refresh_catalog().await {
            tracing::warn!("reloading the action catalog: {e}");
        }
        self.wake();
    }
}

fn row_to_action(row: ActionVersionRow) -> Result<CatalogAction> {
    let what = |field: &str| format!("catalog {field} of {}", row.action_key);
    Ok(CatalogAction {
        key: ActionKey::new(&row.action_key).map_err(|e| corrupt(&what("key"), e))?,
        digest: row
            .digest
            .parse()
            .map_err(|e| corrupt(&what("digest"), e))?,
        state: row.state,
        limits: serde_json::from_str(&row.limits).map_err(|e| corrupt(&what("limits"), e))?,
        capabilities: serde_json::from_str(&row.capabilities)
            .map_err(|e| corrupt(&what("capabilities"), e))?,
        description: serde_json::from_str(&row.description)
            .map_err(|e| corrupt(&what("description"), e))?,
        approved_by: row.approved_by,
        approved_at: Timestamp(row.approved_at),
        updated_at: Timestamp(row.updated_at),
    })
}

fn event_from_row(row: CatalogEventRow) -> Result<CatalogEvent> {
    let what = |field: &str| format!("catalog event {} {field}", row.seq);
    Ok(CatalogEvent {
        seq: row.seq,
        key: ActionKey::new(&row.action_key).map_err(|e| corrupt(&what("key"), e))?,
        digest: row
            .digest
            .parse()
            .map_err(|e| corrupt(&what("digest"), e))?,
        kind: row.kind,
        actor: row.actor,
        comment: row.comment,
        detail: serde_json::from_str(&row.detail).map_err(|e| corrupt(&what("detail"), e))?,
        at: Timestamp(row.occurred_at),
    })
}
