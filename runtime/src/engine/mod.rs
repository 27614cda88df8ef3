//! The engine: the public handle hosts use to start runs and execute them.
//!
//! It composes the pure modules (`spec`, `plan`, `journal`) with the store and the action
//! host. The execution protocol (DESIGN.md section 4): **claim** the oldest due attempt in one
//! transaction, **run** its action outside any transaction (heartbeating the lease if asked),
//! then **complete** in one transaction that checks the fence (same claim, lease not expired,
//! run not ended), records the outcome and applies it: successors, retry, error route, or the
//! end of the run. A step is two write units (claim, complete), which the group commit
//! (`batch`) shares with other workers' units when they arrive together.

/// Runs `$body` with `$s` bound to the concrete store.
macro_rules! with_store {
    ($engine:expr, $s:ident => $body:expr) => {
        match $engine.any_store() {
            $crate::engine::AnyStore::Sqlite($s) => $body,
            $crate::engine::AnyStore::Postgres($s) => $body,
        }
    };
}
pub(crate) use with_store;

mod apply;
mod batch;
mod control;
mod error;
mod schedule;
pub mod signal;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::actions::{
    ActionHost, ActionKey, ActionRegistry, ActionTarget, ChildRunStarter, Digest, HostConfig,
    StepContext, StepError, StepErrorKind, StepOutcome,
};
use crate::journal::{
    CommandReceipt, Fact, ParentLink, PlannedRunnable, Projection, RunId, RunStatus,
};
use crate::plan;
use crate::redact::RedactionPolicy;
use crate::spec::{SpecProblem, WorkflowSpec, valid_name};
use crate::store::{AttemptRow, PostgresStore, RunRow, SqliteStore, Store, StoreTx, Synchronous};
use crate::vocab::AttemptStatus;
use crate::vocab::{Clock, SystemClock, Timestamp};

pub use control::{ChildOptions, ChildRun, CommandOptions, ReplayOptions};
pub use error::EngineError;
pub(crate) use error::parse_stored;
pub use schedule::{
    BackfillReport, FireOrigin, FireOutcome, MAX_BACKFILL_WINDOWS, ScheduleCommand, ScheduleDetail,
    ScheduleEvent, ScheduleFire, ScheduleInfo, ScheduleState, Schedules,
};
pub use signal::{ManualAttrs, Signal, SignalKind};
pub use snapshot::{AttemptView, RunSnapshot};

use crate::decide::{self, AttemptRef, CompletedStep, Event, Refusal, decide};
use crate::vocab::Suspension;
use batch::{Claim, ClaimedAttempt, Completed};

/// Result of engine calls.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A workflow, by registered name or as a spec value.
#[derive(Debug, Clone, Copy)]
pub enum WorkflowRef<'a> {
    /// A workflow registered with [`Engine::register_workflow`].
    Name(&'a str),
    /// A spec value (for example written at run time by an editor).
    Spec(&'a WorkflowSpec),
}

impl<'a> From<&'a str> for WorkflowRef<'a> {
    fn from(name: &'a str) -> Self {
        Self::Name(name)
    }
}

impl<'a> From<&'a WorkflowSpec> for WorkflowRef<'a> {
    fn from(spec: &'a WorkflowSpec) -> Self {
        Self::Spec(spec)
    }
}

/// Options of [`Engine::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Use this run id (starting twice with the same id and payload returns the same run).
    pub run_id: Option<RunId>,
    /// Derive the run id from this key: the same key and payload return the same run, the
    /// same key with a different payload is a conflict.
    pub idempotency_key: Option<String>,
    /// Queue for the run's attempts (default: the engine's default queue).
    pub queue: Option<String>,
}

/// Options of [`Engine::execute_next`].
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    /// Queue to take work from (default: the engine's default queue).
    pub queue: Option<String>,
    /// Identity of the worker, recorded on claims.
    pub owner_id: String,
    /// How long a claim holds before another worker may take the attempt over.
    pub lease_for: Duration,
    /// Extend the lease at this interval while the step runs; if the claim is lost the step
    /// is interrupted and its result discarded.
    pub heartbeat_interval: Option<Duration>,
    /// After a step, claim its run's next visible step in the completion's own transaction
    /// and run it in the same call, up to this many more steps (0, the default: one step per
    /// call). Each chained step saves a claim transaction. Worker pools chain.
    pub chain: u32,
    /// Stop chaining once this is set (a worker pool sets it when it shuts down, so a
    /// stopping pool claims nothing new).
    pub chain_stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Test hook (feature `test-hooks`): commit the recorded outcome and stop before
    /// applying it, as a crash between the two would.
    #[cfg(feature = "test-hooks")]
    pub crash_after_record: bool,
    /// Test hook (feature `test-hooks`): after the claim commits, signal `claimed` and wait
    /// for `proceed`.
    #[cfg(feature = "test-hooks")]
    pub after_claim: Option<AfterClaim>,
}

/// What one `execute_next` call did.
struct Progress {
    /// Steps run (more than one when chained).
    steps: u32,
    /// The run's snapshot afterwards, when asked for.
    snapshot: Option<RunSnapshot>,
}

/// Test hook of [`ExecuteOptions::after_claim`] (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Default)]
pub struct AfterClaim {
    /// Notified once the claim is committed.
    pub claimed: Arc<tokio::sync::Notify>,
    /// Awaited before the step runs.
    pub proceed: Arc<tokio::sync::Notify>,
}

#[cfg(feature = "test-hooks")]
impl ExecuteOptions {
    fn after_record(&self) -> AfterRecord {
        if self.crash_after_record {
            AfterRecord::Stop
        } else {
            AfterRecord::Apply
        }
    }
}

impl ExecuteOptions {
    /// Takes work from `queue`.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Records claims as `owner_id`.
    #[must_use]
    pub fn owner_id(mut self, owner_id: impl Into<String>) -> Self {
        self.owner_id = owner_id.into();
        self
    }

    /// Holds claims for `lease_for`.
    #[must_use]
    pub fn lease_for(mut self, lease_for: Duration) -> Self {
        self.lease_for = lease_for;
        self
    }

    /// Extends the lease every `interval` while a step runs.
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Chains up to `steps` more steps of the same run in one call.
    #[must_use]
    pub fn chain(mut self, steps: u32) -> Self {
        self.chain = steps;
        self
    }

    /// Stops chaining once `flag` is set.
    #[must_use]
    pub fn chain_stop(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.chain_stop = Some(flag);
        self
    }
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        Self {
            queue: None,
            owner_id: "squid-mesh".into(),
            lease_for: Duration::from_secs(300),
            heartbeat_interval: None,
            chain: 0,
            chain_stop: None,
            #[cfg(feature = "test-hooks")]
            crash_after_record: false,
            #[cfg(feature = "test-hooks")]
            after_claim: None,
        }
    }
}

/// Starts child runs for the action of one step attempt (the `start-child-run` import).
#[derive(Debug)]
struct StepChildren {
    engine: Engine,
    ctx: StepContext,
}

impl ChildRunStarter for StepChildren {
    fn start_child_run(
        &self,
        workflow: String,
        trigger: Option<String>,
        payload: Value,
        child_key: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<String, String>> + Send + 'static>,
    > {
        let engine = self.engine.clone();
        let ctx = self.ctx.clone();
        Box::pin(async move {
            engine
                .start_child_run(
                    &ctx,
                    WorkflowRef::Name(&workflow),
                    trigger.as_deref(),
                    payload,
                    &child_key,
                    ChildOptions::default(),
                )
                .await
                .map(|child| child.run_id.to_string())
                .map_err(|e| format!("{}: {e}", e.code()))
        })
    }
}

/// Everything a new run is created from.
struct NewRun {
    definition: Arc<Definition>,
    trigger: String,
    input: Map<String, Value>,
    queue: String,
    run_id: RunId,
    idempotency_key: Option<String>,
    replayed_from: Option<String>,
    parent: Option<ParentLink>,
    receipt: CommandReceipt,
    /// (idempotency key, command kind, source run) of a keyed command that creates the run.
    command_key: Option<(String, String, String)>,
    /// The run's context at start (for example `schedule`, for a scheduled run).
    context: Map<String, Value>,
    now: Timestamp,
}

/// What [`Engine::write_new_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Wrote a new run.
    New(RunId),
    /// Found the run the start repeats; wrote nothing.
    Existing(RunId),
}

impl Written {
    fn run_id(self) -> RunId {
        match self {
            Self::New(id) | Self::Existing(id) => id,
        }
    }
}

/// The journaled form of a signal, redacted by `policy`.
pub(crate) fn receipt(signal: &Signal, policy: &RedactionPolicy) -> CommandReceipt {
    let redacted = |m: &Map<String, Value>| match policy.keys(&Value::Object(m.clone())) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let payload = redacted(&signal.payload);
    CommandReceipt {
        signal_id: signal.id.clone(),
        command: signal.kind,
        idempotency_key: signal.idempotency_key.clone(),
        actor: payload.get("actor").cloned(),
        comment: payload
            .get("comment")
            .and_then(Value::as_str)
            .map(str::to_owned),
        payload,
        metadata: redacted(&signal.metadata),
        occurred_at: signal.occurred_at,
    }
}

/// The pinned, content-addressed form of a workflow a run executes: the spec and the digest
/// of every action it references, as resolved when the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// The spec.
    pub spec: WorkflowSpec,
    /// Action key -> digest at start time.
    pub actions: BTreeMap<ActionKey, Digest>,
}

impl Definition {
    fn body(&self) -> String {
        serde_json::to_string(self).expect("a definition always serializes")
    }
}

#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// The engine handle. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: AnyStore,
    host: ActionHost,
    clock: Arc<dyn Clock>,
    default_queue: String,
    workflows: RwLock<BTreeMap<String, WorkflowSpec>>,
    definitions: Mutex<HashMap<String, Arc<Definition>>>,
    wakeup: Arc<tokio::sync::Notify>,
    /// What counts as a secret in command metadata and step errors.
    redaction: RedactionPolicy,
    /// Signalled when a schedule of this process changes (applied, resumed).
    schedule_wakeup: Arc<tokio::sync::Notify>,
    /// The group-commit queue of claims and completions (started on first use).
    batcher: batch::Batcher,
}

/// Where the engine keeps its state.
#[derive(Debug, Clone)]
enum DatabaseConfig {
    Sqlite(PathBuf),
    Postgres(String),
    SqlitePool(sqlx::SqlitePool),
    PostgresPool(sqlx::PgPool),
}

/// Builds an [`Engine`].
#[derive(Debug)]
pub struct EngineBuilder {
    database: Option<DatabaseConfig>,
    registry: Option<ActionRegistry>,
    host: Option<ActionHost>,
    host_config: HostConfig,
    clock: Arc<dyn Clock>,
    default_queue: String,
    migrate: bool,
    synchronous: Synchronous,
    pg_schema: String,
    pg_max_connections: u32,
    redaction: RedactionPolicy,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            database: None,
            registry: None,
            host: None,
            host_config: HostConfig::default(),
            clock: Arc::new(SystemClock),
            default_queue: "default".into(),
            migrate: true,
            synchronous: Synchronous::Full,
            pg_schema: "squid_mesh".into(),
            pg_max_connections: 16,
            redaction: RedactionPolicy::default(),
        }
    }
}

impl EngineBuilder {
    /// Keeps state in the SQLite file at `path` (created if missing).
    #[must_use]
    pub fn sqlite(mut self, path: impl Into<PathBuf>) -> Self {
        self.database = Some(DatabaseConfig::Sqlite(path.into()));
        self
    }

    /// Keeps state in Postgres at `url`.
    #[must_use]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.database = Some(DatabaseConfig::Postgres(url.into()));
        self
    }

    /// Uses a SQLite pool the host already has (the tables live beside the host's own).
    #[must_use]
    pub fn sqlite_pool(mut self, pool: sqlx::SqlitePool) -> Self {
        self.database = Some(DatabaseConfig::SqlitePool(pool));
        self
    }

    /// Uses a Postgres pool the host already has; the tables live in
    /// [`EngineBuilder::postgres_schema`] whatever the connections' `search_path`.
    #[must_use]
    pub fn postgres_pool(mut self, pool: sqlx::PgPool) -> Self {
        self.database = Some(DatabaseConfig::PostgresPool(pool));
        self
    }

    /// `postgres://...` or `postgresql://...` selects Postgres; `sqlite://PATH` or a plain
    /// path selects SQLite.
    #[must_use]
    pub fn database_url(self, url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            self.postgres(url)
        } else {
            self.sqlite(url.strip_prefix("sqlite://").unwrap_or(url))
        }
    }

    /// Postgres schema holding the tables (default `squid_mesh`).
    #[must_use]
    pub fn postgres_schema(mut self, schema: impl Into<String>) -> Self {
        self.pg_schema = schema.into();
        self
    }

    /// Most Postgres connections (default 16).
    #[must_use]
    pub fn postgres_max_connections(mut self, n: u32) -> Self {
        self.pg_max_connections = n;
        self
    }

    /// SQLite durability (default [`Synchronous::Full`]).
    #[must_use]
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// The registry actions resolve through (default: empty).
    #[must_use]
    pub fn registry(mut self, registry: ActionRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// A ready action host (its registry is used); otherwise one is built from the registry
    /// and [`EngineBuilder::host_config`].
    #[must_use]
    pub fn action_host(mut self, host: ActionHost) -> Self {
        self.host = Some(host);
        self
    }

    /// Settings of the action host built by the engine.
    #[must_use]
    pub fn host_config(mut self, config: HostConfig) -> Self {
        self.host_config = config;
        self
    }

    /// The clock (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Queue used when none is given (default `default`).
    #[must_use]
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_queue = queue.into();
        self
    }

    /// What counts as a secret in command metadata and step errors (message and details),
    /// redacted before anything is stored (default: [`RedactionPolicy::default`]).
    #[must_use]
    pub fn redaction(mut self, policy: RedactionPolicy) -> Self {
        self.redaction = policy;
        self
    }

    /// Whether `build` applies migrations (default true).
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Connects, migrates and returns the engine.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] without a database or with a bad queue name,
    /// [`EngineError::Store`] when the database cannot be opened or migrated,
    /// [`EngineError::Action`] when the action host cannot be built.
    pub async fn build(self) -> Result<Engine> {
        if !valid_name(&self.default_queue) {
            return Err(EngineError::invalid_option(
                "default_queue",
                "queue names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        let store = match self.database {
            None => {
                return Err(EngineError::invalid_option(
                    "database",
                    "set a SQLite path or a Postgres URL",
                ));
            }
            Some(DatabaseConfig::Sqlite(path)) => {
                AnyStore::Sqlite(SqliteStore::open(&path, self.synchronous).await?)
            }
            Some(DatabaseConfig::SqlitePool(pool)) => {
                AnyStore::Sqlite(SqliteStore::from_pool(pool))
            }
            Some(DatabaseConfig::PostgresPool(pool)) => {
                AnyStore::Postgres(PostgresStore::from_pool(pool, &self.pg_schema)?)
            }
            Some(DatabaseConfig::Postgres(url)) => AnyStore::Postgres(
                PostgresStore::connect(&url, &self.pg_schema, self.pg_max_connections).await?,
            ),
        };
        if self.migrate {
            match &store {
                AnyStore::Sqlite(s) => s.migrate().await?,
                AnyStore::Postgres(s) => s.migrate().await?,
            }
        }
        let host = match self.host {
            Some(h) => h,
            None => ActionHost::new(self.registry.unwrap_or_default(), self.host_config)?,
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                host,
                clock: self.clock,
                default_queue: self.default_queue,
                workflows: RwLock::new(BTreeMap::new()),
                definitions: Mutex::new(HashMap::new()),
                wakeup: Arc::new(tokio::sync::Notify::new()),
                redaction: self.redaction,
                schedule_wakeup: Arc::new(tokio::sync::Notify::new()),
                batcher: batch::Batcher::default(),
            }),
        })
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("engine values always serialize")
}

fn now_us(t: Timestamp) -> i64 {
    t.0
}

impl Engine {
    /// Starts a builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The action registry (shared: changes apply at once).
    pub fn registry(&self) -> &ActionRegistry {
        self.inner.host.registry()
    }

    /// The action host.
    pub fn action_host(&self) -> &ActionHost {
        &self.inner.host
    }

    /// The store, for [`with_store!`].
    /// Stops the engine's background work and waits for it: the group-commit lanes write
    /// what is queued and end (SQLite's writer thread is joined), and the action host's
    /// epoch ticker stops. Call it after stopping the workers. Later claims and completions
    /// write in transactions of their own; WebAssembly steps are no longer run (a claimed
    /// one is released, not failed). Idempotent. Dropping the last clone of an engine
    /// also stops the lanes and the ticker.
    pub async fn close(&self) {
        self.inner.batcher.close().await;
        let host = self.inner.host.clone();
        let _ = tokio::task::spawn_blocking(move || host.close()).await;
    }

    pub(crate) fn any_store(&self) -> &AnyStore {
        &self.inner.store
    }

    /// The engine's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Signalled after every write that may have made work due in this process; workers wait
    /// on it (and poll, for work planned by other processes).
    pub fn wakeups(&self) -> Arc<tokio::sync::Notify> {
        self.inner.wakeup.clone()
    }

    /// Signalled when a schedule is applied or resumed in this process; schedulers wait on
    /// it (and poll, for changes made by other processes).
    pub fn schedule_wakeups(&self) -> Arc<tokio::sync::Notify> {
        self.inner.schedule_wakeup.clone()
    }

    /// Relays wake-ups from other processes (Postgres `LISTEN`) until dropped; finishes at
    /// once on SQLite. Worker pools run it for as long as they run.
    pub async fn listen_for_wakeups(&self) {
        let wake = self.inner.wakeup.clone();
        with_store!(self, s => s.listen(wake).await)
    }

    pub(crate) fn wake(&self) {
        self.inner.wakeup.notify_waiters();
    }

    /// The default queue.
    pub fn default_queue(&self) -> &str {
        &self.inner.default_queue
    }

    /// Validates a spec against the registry and makes it startable by name.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSpec`] with every problem.
    pub fn register_workflow(&self, spec: WorkflowSpec) -> Result<()> {
        spec.validate(Some(self.registry()))
            .map_err(EngineError::InvalidSpec)?;
        self.inner
            .workflows
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), spec);
        Ok(())
    }

    /// A workflow registered with [`Engine::register_workflow`].
    fn registered(&self, name: &str) -> Result<WorkflowSpec> {
        self.inner
            .workflows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownWorkflow {
                name: name.to_owned(),
            })
    }

    /// Names of the registered workflows.
    pub fn workflows(&self) -> Vec<String> {
        self.inner
            .workflows
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Starts a run. The payload is resolved (defaults) and validated before anything is
    /// written.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnknownWorkflow`], [`EngineError::InvalidSpec`],
    /// [`EngineError::UnknownTrigger`], [`EngineError::InvalidPayload`] (every problem),
    /// [`EngineError::InvalidOption`], [`EngineError::IdempotencyConflict`] when the run id
    /// or idempotency key names a run with a different payload, or a store error.
    pub async fn start<'a>(
        &self,
        workflow: impl Into<WorkflowRef<'a>>,
        trigger: Option<&str>,
        payload: Value,
        opts: StartOptions,
    ) -> Result<RunSnapshot> {
        let now = self.inner.clock.now();
        let mut signal = Signal::new(SignalKind::Start, None, now);
        signal.idempotency_key = opts.idempotency_key.clone();
        let new = self.prepare_start(
            workflow.into(),
            trigger,
            &payload,
            opts,
            now,
            receipt(&signal, &self.inner.redaction),
        )?;
        self.start_new(new).await
    }

    /// The definition a run of `spec` executes: the spec and the digest of every action it
    /// references, as the registry resolves them now.
    ///
    /// # Errors
    ///
    /// [`EngineError::Action`] for an action key the registry does not resolve.
    fn pin(&self, spec: WorkflowSpec) -> Result<Definition> {
        let mut actions = BTreeMap::new();
        for step in &spec.steps {
            for key in step.action.iter().chain(step.compensate.iter()) {
                let entry = self.registry().resolve(key)?;
                actions.insert(key.clone(), entry.digest);
            }
        }
        Ok(Definition { spec, actions })
    }

    /// Resolves a start: spec, trigger, payload (defaults, validation), queue, run id and the
    /// pinned definition. Writes nothing.
    fn prepare_start(
        &self,
        workflow: WorkflowRef<'_>,
        trigger: Option<&str>,
        payload: &Value,
        opts: StartOptions,
        now: Timestamp,
        receipt: CommandReceipt,
    ) -> Result<NewRun> {
        let spec = match workflow {
            WorkflowRef::Spec(spec) => {
                spec.validate(Some(self.registry()))
                    .map_err(EngineError::InvalidSpec)?;
                spec.clone()
            }
            WorkflowRef::Name(name) => self.registered(name)?,
        };
        let trigger_spec = spec
            .trigger(trigger)
            .ok_or_else(|| EngineError::UnknownTrigger {
                workflow: spec.name.clone(),
                trigger: trigger.unwrap_or_default().to_owned(),
            })?;
        let queue = opts
            .queue
            .clone()
            .unwrap_or_else(|| self.inner.default_queue.clone());
        if !valid_name(&queue) {
            return Err(EngineError::invalid_option(
                "queue",
                "queue names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        if let Some(key) = &opts.idempotency_key
            && (key.is_empty() || key.len() > 512)
        {
            return Err(EngineError::invalid_option(
                "idempotency_key",
                "must be 1-512 characters",
            ));
        }
        let input = plan::resolve_payload(trigger_spec, payload, now)
            .map_err(EngineError::InvalidPayload)?;
        let trigger_name = trigger_spec.name.clone();
        let definition = self.pin(spec)?;
        let run_id = match (opts.run_id, &opts.idempotency_key) {
            (Some(id), _) => id,
            (None, Some(key)) => RunId::derived(&[&definition.spec.name, &trigger_name, key]),
            (None, None) => RunId::random(),
        };
        Ok(NewRun {
            definition: Arc::new(definition),
            trigger: trigger_name,
            input,
            queue,
            run_id,
            idempotency_key: opts.idempotency_key,
            replayed_from: None,
            parent: None,
            receipt,
            command_key: None,
            context: Map::new(),
            now,
        })
    }

    async fn start_new(&self, new: NewRun) -> Result<RunSnapshot> {
        with_store!(self, s => self.start_on(s, new).await)
    }

    async fn start_on<S: Store>(&self, store: &S, new: NewRun) -> Result<RunSnapshot> {
        let mut tx = store.begin_write().await?;
        let written = self.write_new_run(&mut tx, new).await?;
        if let Written::New(_) = written {
            tx.commit().await?;
            self.wake();
        } else {
            drop(tx);
        }
        self.snapshot_on(store, written.run_id()).await
    }

    /// Writes a new run in `tx` (the caller commits), or finds the run it repeats: the same
    /// keyed command, child key, or run id with the same payload.
    ///
    /// # Errors
    ///
    /// [`EngineError::IdempotencyConflict`] when the id names a run with another payload,
    /// [`EngineError::InvalidTransition`] for a child of an ended parent, store errors.
    async fn write_new_run<T: StoreTx>(&self, tx: &mut T, new: NewRun) -> Result<Written> {
        let NewRun {
            definition,
            trigger,
            input,
            queue,
            run_id,
            idempotency_key,
            replayed_from,
            parent,
            receipt,
            command_key,
            context,
            now,
        } = new;
        let body = definition.body();
        let hash = sha256_hex(&body);
        let fingerprint = definition.spec.fingerprint();
        let payload_hash = sha256_hex(&to_json(&(&definition.spec.name, &trigger, &input)));
        self.cache_definition(&hash, definition.clone());
        let mut run = RunRow {
            run_id: run_id.to_string(),
            workflow: definition.spec.name.clone(),
            version: definition.spec.version.clone(),
            fingerprint: fingerprint.clone(),
            definition_hash: hash.clone(),
            trigger_name: trigger.clone(),
            queue: queue.clone(),
            status: RunStatus::Idle,
            input: to_json(&input),
            context: to_json(&context),
            steps: "{}".into(),
            manual: None,
            compensation: None,
            error: None,
            idempotency_key: idempotency_key.clone(),
            payload_hash: payload_hash.clone(),
            parent_run_id: parent.as_ref().map(|p| p.run_id.clone()),
            replayed_from: replayed_from.clone(),
            created_at: now_us(now),
            updated_at: now_us(now),
            revision: 0,
        };
        let started = Fact::RunStarted {
            workflow: definition.spec.name.clone(),
            version: definition.spec.version.clone(),
            fingerprint,
            definition_hash: hash.clone(),
            trigger,
            queue,
            input,
            idempotency_key,
            replayed_from,
            parent: parent.clone(),
            context,
        };
        let decision = decide(
            &apply::run_state(&run)?,
            Some(&definition.spec),
            Event::Started {
                receipt,
                started: Box::new(started),
            },
            now,
        )
        .map_err(|r| refusal(&run.run_id, "start", r))?;
        if let Some((key, kind, source)) = &command_key
            && let Some(done) = self.repeated_command(tx, key, kind, source).await?
        {
            return Ok(Written::Existing(done));
        }
        if let Some(link) = &parent {
            let mut parent_row = self.load_run_locked(tx, &link.run_id).await?;
            if parent_row.status.is_terminal() {
                return Err(EngineError::InvalidTransition {
                    run_id: link.run_id.clone(),
                    status: parent_row.status.to_string(),
                    command: "start_child".into(),
                });
            }
            if let Some(existing) = tx
                .load_child(&link.run_id, &link.step, &link.child_key)
                .await?
            {
                return Ok(Written::Existing(existing.parse()?));
            }
            tx.insert_child(
                &link.run_id,
                &link.step,
                &link.child_key,
                &run.run_id,
                now_us(now),
            )
            .await?;
            let fact = Fact::ChildRunStarted {
                step: link.step.clone(),
                child_key: link.child_key.clone(),
                child_run_id: run.run_id.clone(),
                workflow: definition.spec.name.clone(),
            };
            parent_row.revision += 1;
            parent_row.updated_at = now_us(now);
            tx.update_run(&parent_row).await?;
            tx.append_facts(
                &link.run_id,
                &[(fact.kind().into(), to_json(&fact))],
                now_us(now),
            )
            .await?;
        }
        tx.insert_definition(
            &hash,
            &definition.spec.name,
            &run.fingerprint,
            &body,
            now_us(now),
        )
        .await?;
        if !tx.insert_run(&run).await? {
            let existing =
                tx.load_run(&run.run_id, false)
                    .await?
                    .ok_or_else(|| EngineError::Corrupt {
                        what: format!("run {run_id}"),
                        message: "insert conflicted but the run cannot be read".into(),
                    })?;
            if existing.payload_hash == payload_hash && existing.fingerprint == run.fingerprint {
                return Ok(Written::Existing(run_id));
            }
            return Err(EngineError::IdempotencyConflict {
                run_id: run_id.to_string(),
                message: "a run with this id or idempotency key exists with a different workflow, trigger or payload".into(),
            });
        }
        if let Some((key, kind, source)) = &command_key {
            tx.insert_command(key, kind, source, &run.run_id, now_us(now))
                .await?;
        }
        apply::write_all(tx, &mut run, decision, now).await?;
        Ok(Written::New(run_id))
    }

    /// The result run of a command already applied with this idempotency key, or a
    /// conflict when the key was used for another command.
    async fn repeated_command<T: StoreTx>(
        &self,
        tx: &mut T,
        key: &str,
        kind: &str,
        run_id: &str,
    ) -> Result<Option<RunId>> {
        match tx.load_command(key).await? {
            None => Ok(None),
            Some((k, r, result)) if k == kind && r == run_id => Ok(Some(result.parse()?)),
            Some((k, r, _)) => Err(EngineError::IdempotencyConflict {
                run_id: run_id.to_owned(),
                message: format!("idempotency key {key:?} was used for {k} on run {r}"),
            }),
        }
    }

    fn cache_definition(&self, hash: &str, def: Arc<Definition>) {
        self.inner
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_owned(), def);
    }

    pub(crate) async fn definition_in<T: StoreTx>(
        &self,
        tx: &mut T,
        hash: &str,
    ) -> Result<Option<Arc<Definition>>> {
        if let Some(d) = self
            .inner
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(Some(d.clone()));
        }
        let Some(body) = tx.load_definition(hash).await? else {
            return Ok(None);
        };
        // A body that does not hash to its key, or does not parse, is not runnable.
        if sha256_hex(&body) != hash {
            return Ok(None);
        }
        let Ok(def) = serde_json::from_str::<Definition>(&body) else {
            return Ok(None);
        };
        let def = Arc::new(def);
        self.cache_definition(hash, def.clone());
        Ok(Some(def))
    }

    /// Claims the oldest due attempt on the queue, runs it and applies its outcome.
    ///
    /// Returns the run's snapshot after any progress (also when the run failed), `None` when
    /// nothing is due.
    ///
    /// # Errors
    ///
    /// [`EngineError::StaleClaim`] when this worker's claim was lost before completion (the
    /// outcome is discarded; another worker owns the attempt), [`EngineError::Action`] when
    /// the action host could not run the action for a reason that may pass (the attempt is
    /// released), [`EngineError::InvalidOption`], or a store error.
    pub async fn execute_next(&self, opts: ExecuteOptions) -> Result<Option<RunSnapshot>> {
        let queue = self.checked_queue(&opts)?;
        let progress = with_store!(self, s => self.execute_next_on(s, &queue, &opts, true).await)?;
        Ok(progress.and_then(|p| p.snapshot))
    }

    /// [`Engine::execute_next`] without reading the snapshot afterwards (worker pools ignore
    /// it): returns how many steps ran (more than one when chained), if any work was due.
    pub(crate) async fn execute_step(&self, opts: ExecuteOptions) -> Result<Option<u32>> {
        let queue = self.checked_queue(&opts)?;
        let progress = with_store!(self, s => self.execute_next_on(s, &queue, &opts, false).await)?;
        Ok(progress.map(|p| p.steps))
    }

    fn checked_queue(&self, opts: &ExecuteOptions) -> Result<String> {
        let queue = opts
            .queue
            .clone()
            .unwrap_or_else(|| self.inner.default_queue.clone());
        if !valid_name(&queue) {
            return Err(EngineError::invalid_option(
                "queue",
                "queue names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        if opts.owner_id.trim().is_empty() {
            return Err(EngineError::invalid_option("owner_id", "must not be empty"));
        }
        if opts.lease_for.is_zero() {
            return Err(EngineError::invalid_option("lease_for", "must be positive"));
        }
        if opts
            .heartbeat_interval
            .is_some_and(|i| i < Duration::from_millis(10) || i >= opts.lease_for)
        {
            return Err(EngineError::invalid_option(
                "heartbeat_interval",
                "must be at least 10 ms and shorter than lease_for",
            ));
        }
        Ok(queue)
    }

    /// What an `execute_next` call did: `steps` steps of run `run_id` (its snapshot when
    /// asked for).
    async fn progress<S: Store>(
        &self,
        store: &S,
        run_id: RunId,
        steps: u32,
        want: bool,
    ) -> Result<Option<Progress>> {
        let snapshot = if want {
            Some(self.snapshot_on(store, run_id).await?)
        } else {
            None
        };
        Ok(Some(Progress { steps, snapshot }))
    }

    async fn execute_next_on<S: Store>(
        &self,
        store: &S,
        queue: &str,
        opts: &ExecuteOptions,
        want: bool,
    ) -> Result<Option<Progress>> {
        let claim = batch::claim(self, store, queue, &opts.owner_id, opts.lease_for).await?;
        let mut claimed = match claim {
            None => return Ok(None),
            Some(Claim::Applied(run_id)) => {
                self.wake();
                return self.progress(store, run_id, 1, want).await;
            }
            Some(Claim::Claimed(c)) => c,
        };
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &opts.after_claim {
            hook.claimed.notify_one();
            hook.proceed.notified().await;
        }
        // A run cancelled after the claim never runs the claimed attempt's action. (A chained
        // claim is made in the transaction that saw the run alive, and runs at once.)
        let status = store.run_status(&claimed.attempt.run_id).await?;
        if status
            .as_deref()
            .and_then(RunStatus::parse)
            .is_some_and(RunStatus::is_terminal)
        {
            return self.progress(store, claimed.run_id, 1, want).await;
        }
        let mut remaining = opts.chain;
        let mut steps = 1;
        loop {
            let run_id = claimed.run_id;
            let chain = (remaining > 0).then(|| batch::Chain {
                queue: queue.to_owned(),
                owner: opts.owner_id.clone(),
                lease_for: opts.lease_for,
            });
            let done = self.run_claimed(store, *claimed, opts, chain).await?;
            self.wake();
            match done {
                #[cfg(feature = "test-hooks")]
                Completed::Crashed => return Err(EngineError::SimulatedCrash),
                Completed::Applied(None) => return self.progress(store, run_id, steps, want).await,
                Completed::Applied(Some(next)) => {
                    remaining -= 1;
                    steps += 1;
                    claimed = next;
                }
            }
        }
    }

    /// Runs a claimed attempt's action and completes it (claiming the run's next step when
    /// `chain` asks for it).
    async fn run_claimed<S: Store>(
        &self,
        store: &S,
        claimed: ClaimedAttempt,
        opts: &ExecuteOptions,
        chain: Option<batch::Chain>,
    ) -> Result<Completed> {
        let ClaimedAttempt {
            attempt,
            run,
            def,
            token_hash,
            ..
        } = claimed;
        let outcome = match self.resolve_target(def.as_deref(), &attempt.step) {
            Err(unavailable) => StepOutcome::Failed(unavailable),
            Ok(target) => {
                let ctx = StepContext {
                    run_id: attempt.run_id.clone(),
                    workflow: run.workflow.clone(),
                    step: attempt.step.clone(),
                    attempt: u32::try_from(attempt.attempt).unwrap_or(u32::MAX),
                    runnable_key: attempt.runnable_key.clone(),
                    idempotency_key: attempt.runnable_key.clone(),
                    step_idempotency_key: StepContext::step_key(&attempt.run_id, &attempt.step),
                };
                let input: Map<String, Value> =
                    serde_json::from_str(&attempt.input).map_err(|e| EngineError::Corrupt {
                        what: format!("input of {}", attempt.runnable_key),
                        message: e.to_string(),
                    })?;
                match self
                    .invoke_with_heartbeat(
                        store,
                        Invoke {
                            target: &target,
                            ctx: &ctx,
                            input: &input,
                            attempt: &attempt,
                            token_hash: &token_hash,
                        },
                        opts,
                    )
                    .await?
                {
                    Ok(outcome) => outcome,
                    Err(e) if e.is_retryable() => {
                        self.release(store, &attempt, &token_hash).await?;
                        return Err(EngineError::Action(e));
                    }
                    Err(e) => StepOutcome::Failed(StepError::sandbox(
                        StepErrorKind::Unavailable,
                        e.to_string(),
                    )),
                }
            }
        };
        let outcome = self.redacted(outcome);
        // Checked after the step ran: a pool that began stopping meanwhile claims nothing new.
        let stopping = opts
            .chain_stop
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
        let unit = batch::Completion {
            engine: self.clone(),
            attempt,
            token_hash,
            outcome,
            def,
            #[cfg(feature = "test-hooks")]
            after_record: opts.after_record(),
            chain: chain.filter(|_| !stopping),
        };
        batch::complete(store, unit).await
    }

    /// A step's outcome as it may be stored: secrets in an error's message and details
    /// redacted by the engine's policy (outputs are the action's data, kept as they are).
    fn redacted(&self, outcome: StepOutcome) -> StepOutcome {
        match outcome {
            StepOutcome::Failed(mut e) => {
                let policy = &self.inner.redaction;
                e.message = policy.text(&e.message);
                e.details = e.details.map(|d| match policy.value(&Value::Object(d)) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                });
                StepOutcome::Failed(e)
            }
            other => other,
        }
    }

    /// Claims the oldest due attempt on `queue` in the caller's transaction (or applies a
    /// recorded outcome found there). One unit of a group commit.
    pub(super) async fn claim_in<T: StoreTx>(
        &self,
        tx: &mut T,
        queue: &str,
        owner: &str,
        lease_for: Duration,
    ) -> Result<Option<Claim>> {
        let now = self.inner.clock.now();
        let Some((mut attempt, run)) = tx.next_due_with_run(queue, now_us(now)).await? else {
            return Ok(None);
        };
        let run_id: RunId = attempt.run_id.parse().map_err(|_| EngineError::Corrupt {
            what: format!("attempt {}", attempt.runnable_key),
            message: "run id is not a UUID".into(),
        })?;
        if attempt.status == AttemptStatus::Recorded {
            // A crash (or a failed transaction) came between recording and applying: apply
            // the recorded outcome now, without running the step again.
            let mut run = self.load_run_locked(tx, &attempt.run_id).await?;
            let def = self.definition_in(tx, &run.definition_hash).await?;
            let mut journal = Vec::new();
            let unit = Unit {
                run: &mut run,
                def: def.as_deref(),
                attempt: &mut attempt,
                now,
            };
            self.apply_recorded(tx, unit, &mut journal, None).await?;
            tx.append_facts(&run.run_id, &journal, now_us(now)).await?;
            return Ok(Some(Claim::Applied(run_id)));
        }
        let mut journal = Vec::new();
        let req = ClaimRequest {
            run_id,
            attempt,
            run,
            now,
            owner,
            lease_for,
            placement: Placement::Update,
        };
        let claimed = self.claim_row(tx, req, &mut journal).await?;
        tx.append_facts(&claimed.attempt.run_id, &journal, now_us(now))
            .await?;
        Ok(Some(Claim::Claimed(Box::new(claimed))))
    }

    /// Claims an attempt (due now) in the caller's transaction, adding the claim fact to
    /// `journal`.
    async fn claim_row<T: StoreTx>(
        &self,
        tx: &mut T,
        req: ClaimRequest<'_>,
        journal: &mut Vec<(String, String)>,
    ) -> Result<ClaimedAttempt> {
        let ClaimRequest {
            run_id,
            mut attempt,
            run,
            now,
            owner,
            lease_for,
            placement,
        } = req;
        let redelivery = attempt.status == AttemptStatus::Claimed;
        let mut token = [0u8; 32];
        getrandom::fill(&mut token).map_err(|e| EngineError::Corrupt {
            what: "random claim token".into(),
            message: e.to_string(),
        })?;
        let token_hash = sha256_hex(&hex::encode(token));
        let claim_id = uuid::Uuid::new_v4().to_string();
        let lease_until = now.plus(lease_for);
        attempt.status = AttemptStatus::Claimed;
        attempt.claim_id = Some(claim_id.clone());
        attempt.claim_token_hash = Some(token_hash.clone());
        attempt.owner = Some(owner.to_owned());
        attempt.lease_until = Some(now_us(lease_until));
        attempt.due_at = Some(now_us(lease_until));
        attempt.claims += 1;
        attempt.updated_at = now_us(now);
        match placement {
            Placement::Insert => tx.insert_attempt(&attempt).await?,
            Placement::Update => tx.update_attempt(&attempt).await?,
        }
        let fact = Fact::AttemptClaimed {
            runnable_key: attempt.runnable_key.clone(),
            claim_id,
            owner: owner.to_owned(),
            lease_until,
            redelivery,
        };
        journal.push((fact.kind().into(), to_json(&fact)));
        let def = self.definition_in(tx, &run.definition_hash).await?;
        Ok(ClaimedAttempt {
            run_id,
            attempt,
            run,
            def,
            token_hash,
        })
    }

    /// The target of a step of a pinned definition, refusing an action whose registered
    /// digest no longer matches the pin (fail closed).
    fn resolve_target(
        &self,
        def: Option<&Definition>,
        step: &str,
    ) -> std::result::Result<ActionTarget, StepError> {
        let unavailable = |code: &str, message: String| StepError {
            code: code.to_owned(),
            ..StepError::sandbox(StepErrorKind::Unavailable, message)
        };
        let Some(def) = def else {
            return Err(unavailable(
                "definition_unavailable",
                "the run's pinned workflow definition is missing or corrupt".into(),
            ));
        };
        if let Some(origin) = step.strip_prefix(decide::COMPENSATE) {
            let key = def.spec.step(origin).and_then(|s| s.compensate.clone());
            let Some(key) = key else {
                return Err(unavailable(
                    "definition_unavailable",
                    format!("step {origin} declares no compensation"),
                ));
            };
            return self
                .pinned_action(def, &key)
                .map_err(|(code, msg)| unavailable(code, msg));
        }
        let Some(spec) = def.spec.step(step) else {
            return Err(unavailable(
                "definition_unavailable",
                format!("step {step} is not in the run's pinned definition"),
            ));
        };
        match (&spec.action, &spec.builtin) {
            (_, Some(b)) => Ok(ActionTarget::Builtin(b.clone())),
            (Some(key), None) => self
                .pinned_action(def, key)
                .map_err(|(code, msg)| unavailable(code, msg)),
            (None, None) => Err(unavailable(
                "definition_unavailable",
                format!("step {step} has no action"),
            )),
        }
    }

    /// The action `key` if the registry still holds the digest the run pinned.
    fn pinned_action(
        &self,
        def: &Definition,
        key: &ActionKey,
    ) -> std::result::Result<ActionTarget, (&'static str, String)> {
        let pinned = def.actions.get(key);
        match self.registry().resolve(key) {
            Ok(entry) if Some(&entry.digest) == pinned => Ok(ActionTarget::Wasm(key.clone())),
            Ok(entry) => Err((
                "action_digest_changed",
                format!(
                    "action {key} is now {} but the run pinned {}",
                    entry.digest,
                    pinned.map_or_else(|| "nothing".into(), ToString::to_string)
                ),
            )),
            Err(e) => Err(("action_unavailable", e.to_string())),
        }
    }

    /// Runs a claimed step, extending its lease while it runs (`opts.heartbeat_interval`);
    /// a lost claim interrupts it.
    async fn invoke_with_heartbeat<S: Store>(
        &self,
        store: &S,
        call: Invoke<'_>,
        opts: &ExecuteOptions,
    ) -> Result<std::result::Result<StepOutcome, crate::actions::ActionError>> {
        let Invoke {
            target,
            ctx,
            input,
            attempt,
            token_hash,
        } = call;
        let children: Arc<dyn ChildRunStarter> = Arc::new(StepChildren {
            engine: self.clone(),
            ctx: ctx.clone(),
        });
        let invoke = self
            .inner
            .host
            .invoke_with(target, ctx, input, Some(children));
        let Some(interval) = opts.heartbeat_interval else {
            return Ok(invoke.await.map(|i| i.outcome));
        };
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let beat = {
            let store = store.clone();
            let clock = self.inner.clock.clone();
            let key = attempt.runnable_key.clone();
            let claim_id = attempt.claim_id.clone().unwrap_or_default();
            let token_hash = token_hash.to_owned();
            let lease_for = opts.lease_for;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let now = clock.now();
                    let held = store
                        .heartbeat(
                            &key,
                            &claim_id,
                            &token_hash,
                            now_us(now),
                            now_us(now.plus(lease_for)),
                        )
                        .await;
                    // A store error is not proof the claim is gone; keep trying until the
                    // lease says otherwise.
                    if matches!(held, Ok(false)) {
                        let _ = lost_tx.send(());
                        return;
                    }
                }
            })
        };
        let result = tokio::select! {
            r = invoke => Some(r),
            _ = lost_rx => None,
        };
        beat.abort();
        let _ = beat.await;
        match result {
            Some(r) => Ok(r.map(|i| i.outcome)),
            None => Err(EngineError::StaleClaim {
                runnable_key: attempt.runnable_key.clone(),
                reason: "the lease was lost while the step ran; the step was interrupted".into(),
            }),
        }
    }

    /// Gives a claimed attempt back (the host could not run it for a passing reason).
    async fn release<S: Store>(
        &self,
        store: &S,
        attempt: &AttemptRow,
        token_hash: &str,
    ) -> Result<()> {
        let now = self.inner.clock.now();
        let mut tx = store.begin_write().await?;
        if let Some(mut cur) = tx.load_attempt(&attempt.runnable_key, true).await?
            && cur.status == AttemptStatus::Claimed
            && cur.claim_id == attempt.claim_id
            && cur.claim_token_hash.as_deref() == Some(token_hash)
        {
            let retry_at = now.plus(Duration::from_secs(1));
            cur.status = AttemptStatus::Scheduled;
            cur.visible_at = now_us(retry_at);
            cur.due_at = Some(now_us(retry_at));
            cur.claim_id = None;
            cur.claim_token_hash = None;
            cur.lease_until = None;
            cur.updated_at = now_us(now);
            tx.update_attempt(&cur).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records and applies a step's outcome in the caller's transaction, fenced by the
    /// claim. One unit of a group commit.
    pub(super) async fn complete_in<T: StoreTx>(
        &self,
        tx: &mut T,
        unit: &batch::Completion,
    ) -> Result<Completed> {
        let attempt = &unit.attempt;
        let token_hash = unit.token_hash.as_str();
        let outcome = unit.outcome.clone();
        let def = unit.def.as_deref();
        let chain = unit.chain.as_ref();
        let now = self.inner.clock.now();
        let (mut cur, mut run) = match tx.load_attempt_and_run(&attempt.runnable_key, true).await? {
            Some(both) => both,
            None => {
                // Say which one is missing.
                self.load_run_locked(tx, &attempt.run_id).await?;
                return Err(EngineError::Corrupt {
                    what: format!("attempt {}", attempt.runnable_key),
                    message: "vanished".into(),
                });
            }
        };
        let stale = |reason: &str| EngineError::StaleClaim {
            runnable_key: attempt.runnable_key.clone(),
            reason: reason.to_owned(),
        };
        if cur.status == AttemptStatus::Cancelled {
            return Err(stale(
                "the run ended while the step ran; its outcome is discarded",
            ));
        }
        if cur.status != AttemptStatus::Claimed
            || cur.claim_id != attempt.claim_id
            || cur.claim_token_hash.as_deref() != Some(token_hash)
        {
            return Err(stale(
                "another worker took the attempt over after this claim's lease expired",
            ));
        }
        if cur.lease_until.is_none_or(|l| l <= now_us(now)) {
            return Err(stale("the lease expired before the step completed"));
        }
        cur.status = AttemptStatus::Recorded;
        cur.outcome = Some(to_json(&outcome));
        cur.due_at = Some(now_us(now));
        cur.updated_at = now_us(now);
        let recorded = Fact::AttemptRecorded {
            runnable_key: cur.runnable_key.clone(),
            claim_id: cur.claim_id.clone(),
            outcome,
        };
        // Every fact of the completion goes in one statement at its end.
        let mut journal = vec![(recorded.kind().to_owned(), to_json(&recorded))];
        let at = now_us(now);
        #[cfg(feature = "test-hooks")]
        if unit.after_record == AfterRecord::Stop {
            tx.update_attempt(&cur).await?;
            tx.append_facts(&cur.run_id, &journal, at).await?;
            return Ok(Completed::Crashed);
        }
        let take = chain.map(|c| c.queue.as_str());
        let taken = self
            .apply_recorded(
                tx,
                Unit {
                    run: &mut run,
                    def,
                    attempt: &mut cur,
                    now,
                },
                &mut journal,
                take,
            )
            .await?;
        // The run's next step for the same worker: one it just planned (inserted claimed),
        // else the oldest one due.
        let next = match (chain, taken) {
            (None, _) => None,
            (Some(_), Some(row)) => Some((row, Placement::Insert)),
            (Some(chain), None) => {
                let alive = !run.status.is_terminal();
                if alive {
                    tx.next_due_of_run(&run.run_id, &chain.queue, at)
                        .await?
                        .map(|row| (row, Placement::Update))
                } else {
                    None
                }
            }
        };
        let (Some(chain), Some((next, placement))) = (chain, next) else {
            tx.append_facts(&run.run_id, &journal, at).await?;
            return Ok(Completed::Applied(None));
        };
        let run_id: RunId = run.run_id.parse().map_err(|_| EngineError::Corrupt {
            what: "run id".into(),
            message: run.run_id.clone(),
        })?;
        let run_key = run.run_id.clone();
        let req = ClaimRequest {
            run_id,
            attempt: next,
            run,
            now,
            owner: &chain.owner,
            lease_for: chain.lease_for,
            placement,
        };
        let claimed = self.claim_row(tx, req, &mut journal).await?;
        tx.append_facts(&run_key, &journal, at).await?;
        Ok(Completed::Applied(Some(Box::new(claimed))))
    }

    async fn load_run_locked<T: StoreTx>(&self, tx: &mut T, run_id: &str) -> Result<RunRow> {
        tx.load_run(run_id, true)
            .await?
            .ok_or_else(|| EngineError::RunNotFound {
                run_id: run_id.to_owned(),
            })
    }

    /// Applies a recorded outcome and writes everything it implies in the caller's
    /// transaction, adding its facts to `journal`. `take`: see [`apply::write_decision`].
    async fn apply_recorded<T: StoreTx>(
        &self,
        tx: &mut T,
        unit: Unit<'_>,
        journal: &mut Vec<(String, String)>,
        take: Option<&str>,
    ) -> Result<Option<AttemptRow>> {
        let Unit {
            run,
            def,
            attempt,
            now,
        } = unit;
        let outcome: StepOutcome =
            serde_json::from_str(attempt.outcome.as_deref().unwrap_or("null")).map_err(|e| {
                EngineError::Corrupt {
                    what: format!("outcome of {}", attempt.runnable_key),
                    message: e.to_string(),
                }
            })?;
        let event = Event::Recorded {
            attempt: AttemptRef {
                runnable_key: attempt.runnable_key.clone(),
                step: attempt.step.clone(),
                attempt: u32::try_from(attempt.attempt).unwrap_or(u32::MAX),
                input: serde_json::from_str(&attempt.input).unwrap_or_default(),
            },
            outcome,
        };
        let mut state = apply::run_state(run)?;
        if def.is_some() && event.needs_history() {
            state.completed = self.completed_steps(tx, &run.run_id).await?;
        }
        let decision = decide(&state, def.map(|d| &d.spec), event, now)
            .map_err(|r| refusal(&run.run_id, "apply", r))?;
        if let Some(status) = decision.attempt_status {
            attempt.status = status;
        }
        attempt.due_at = None;
        attempt.updated_at = now_us(now);
        tx.update_attempt(attempt).await?;
        apply::write_decision(tx, run, decision, journal, take, now).await
    }

    /// The run's succeeded step attempts (not compensations), newest first.
    async fn completed_steps<T: StoreTx>(
        &self,
        tx: &mut T,
        run_id: &str,
    ) -> Result<Vec<CompletedStep>> {
        let mut done: Vec<AttemptRow> = tx
            .run_attempts(run_id)
            .await?
            .into_iter()
            .filter(|a| {
                a.status == AttemptStatus::Succeeded && !a.step.starts_with(decide::COMPENSATE)
            })
            .collect();
        done.sort_by(|a, b| {
            (b.updated_at, b.seq, &b.runnable_key).cmp(&(a.updated_at, a.seq, &a.runnable_key))
        });
        Ok(done
            .into_iter()
            .map(|a| {
                let output = match a
                    .outcome
                    .as_deref()
                    .map(serde_json::from_str::<StepOutcome>)
                {
                    Some(Ok(StepOutcome::Succeeded { output, .. })) => Value::Object(output),
                    _ => Value::Null,
                };
                CompletedStep {
                    input: serde_json::from_str(&a.input).unwrap_or(Value::Null),
                    step: a.step,
                    runnable_key: a.runnable_key,
                    output,
                }
            })
            .collect())
    }

    /// The snapshot of a run.
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`] or a store error.
    pub async fn snapshot(&self, run_id: RunId) -> Result<RunSnapshot> {
        with_store!(self, s => self.snapshot_on(s, run_id).await)
    }

    async fn snapshot_on<S: Store>(&self, store: &S, run_id: RunId) -> Result<RunSnapshot> {
        let mut tx = store.begin_read().await?;
        let id = run_id.to_string();
        let run = tx
            .load_run(&id, false)
            .await?
            .ok_or_else(|| EngineError::RunNotFound { run_id: id.clone() })?;
        let attempts = tx.run_attempts(&id).await?;
        drop(tx);
        RunSnapshot::from_rows(run, attempts)
    }

    /// The journal of a run, oldest first, with the time each fact was written.
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`] or a store error.
    pub async fn journal(&self, run_id: RunId) -> Result<Vec<(Timestamp, Fact)>> {
        with_store!(self, s => self.journal_on(s, run_id).await)
    }

    async fn journal_on<S: Store>(
        &self,
        store: &S,
        run_id: RunId,
    ) -> Result<Vec<(Timestamp, Fact)>> {
        let mut tx = store.begin_read().await?;
        let id = run_id.to_string();
        if tx.load_run(&id, false).await?.is_none() {
            return Err(EngineError::RunNotFound { run_id: id });
        }
        let rows = tx.facts(&id).await?;
        rows.into_iter()
            .map(|r| {
                let fact: Fact =
                    serde_json::from_str(&r.data).map_err(|e| EngineError::Corrupt {
                        what: format!("journal fact {} of run {}", r.id, r.run_id),
                        message: e.to_string(),
                    })?;
                Ok((Timestamp(r.occurred_at), fact))
            })
            .collect()
    }

    /// Rebuilds a run from its journal and compares it with the derived rows; returns the
    /// differences (empty when they agree).
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`] or a store error.
    pub async fn verify_run(&self, run_id: RunId) -> Result<Vec<String>> {
        let facts = self.journal(run_id).await?;
        let rebuilt = Projection::fold(facts.iter().map(|(_, f)| f));
        let snap = self.snapshot(run_id).await?;
        Ok(rebuilt.diff(&snap.projection()))
    }
}

impl From<Vec<SpecProblem>> for EngineError {
    fn from(problems: Vec<SpecProblem>) -> Self {
        Self::InvalidSpec(problems)
    }
}

pub(crate) fn planned_row(
    run: &RunRow,
    r: &PlannedRunnable,
    seq: i64,
    now: Timestamp,
) -> AttemptRow {
    AttemptRow {
        runnable_key: r.runnable_key.clone(),
        run_id: run.run_id.clone(),
        step: r.step.clone(),
        attempt: i64::from(r.attempt),
        seq,
        queue: run.queue.clone(),
        status: AttemptStatus::Scheduled,
        visible_at: now_us(r.visible_at),
        due_at: Some(now_us(r.visible_at)),
        claim_id: None,
        claim_token_hash: None,
        owner: None,
        lease_until: None,
        claims: 0,
        input: to_json(&r.input),
        outcome: None,
        deadline: r.deadline.as_ref().map(to_json),
        created_at: now_us(now),
        updated_at: now_us(now),
    }
}

/// The rows one recorded outcome is applied to.
struct Unit<'a> {
    run: &'a mut RunRow,
    def: Option<&'a Definition>,
    attempt: &'a mut AttemptRow,
    now: Timestamp,
}

/// A refusal of the decision core as an engine error.
pub(crate) fn refusal(run_id: &str, command: &str, r: Refusal) -> EngineError {
    match r {
        Refusal::InvalidTransition { status } => EngineError::InvalidTransition {
            run_id: run_id.to_owned(),
            status: status.to_string(),
            command: command.to_owned(),
        },
        Refusal::WrongManualStep { step, kind } => EngineError::WrongManualStep {
            run_id: run_id.to_owned(),
            step,
            kind: match kind {
                Suspension::Pause => "pause".into(),
                Suspension::Approval => "approval".into(),
            },
            command: command.to_owned(),
        },
    }
}

/// Whether a claimed attempt row is new (planned by the claiming transaction) or exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Insert it, claimed.
    Insert,
    /// Update the existing row.
    Update,
}

/// One claim: the attempt (due now), its run, and who takes it for how long.
struct ClaimRequest<'a> {
    run_id: RunId,
    attempt: AttemptRow,
    run: RunRow,
    now: Timestamp,
    owner: &'a str,
    lease_for: Duration,
    placement: Placement,
}

/// One invocation of a claimed step.
struct Invoke<'a> {
    target: &'a ActionTarget,
    ctx: &'a StepContext,
    input: &'a Map<String, Value>,
    attempt: &'a AttemptRow,
    token_hash: &'a str,
}

/// What a completion does after recording the outcome (the `crash_after_record` hook).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterRecord {
    /// Apply it in the same transaction.
    Apply,
    /// Stop, as a crash between recording and applying would.
    Stop,
}
