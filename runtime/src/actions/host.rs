//! The wasmtime sandbox that runs action components.
//!
//! One [`Engine`] per host (epoch interruption and fuel on, the pooling allocator where the
//! machine allows it); each component compiled once per digest and cached on disk, keyed by
//! digest and engine, so a restart deserializes instead of recompiling; one `InstancePre` per
//! digest; a fresh `Store` per invocation, because an instance that trapped or was cancelled
//! cannot be entered again.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::OnceCell;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::builtin::emit;
use super::output::{Capture, Stream};
use super::registry::{ActionRegistry, ComponentSource, RegisteredAction, parse_addr_pattern};
use super::types::{
    ActionDescription, ActionError, ActionKey, ActionTarget, Digest, Invocation, LogLevel,
    StepContext, StepError, StepErrorKind, StepOutcome, StepServices,
};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "action",
        imports: {
            "squid-mesh:step/host.start-child-run": async,
            "squid-mesh:step/host.schedule-work": async,
        },
        exports: { default: async },
    });
}

use bindings::squid_mesh::step::{host as wit_host, types as wit_types};

/// Settings of the sandbox host.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// Directory for compiled artifacts; `None` compiles every component at first use after
    /// each start.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator (falls back to on-demand if the machine refuses).
    pub pooling: bool,
    /// Most instances alive at once (sizes the pool).
    pub max_instances: u32,
    /// Largest memory cap any action may be given, in bytes.
    pub max_memory_bytes: u64,
    /// Memory kept resident per pooled slot between instances, in bytes: trades idle RSS for
    /// instantiation that scales across cores.
    pub keep_resident_bytes: u64,
    /// Granularity of wall-clock timeouts.
    pub epoch_tick: Duration,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl HostConfig {
    /// Sets `cache_dir`.
    #[must_use]
    pub fn cache_dir(mut self, value: PathBuf) -> Self {
        self.cache_dir = Some(value);
        self
    }

    /// Sets `pooling`.
    #[must_use]
    pub fn pooling(mut self, value: bool) -> Self {
        self.pooling = value;
        self
    }

    /// Sets `max_instances`.
    #[must_use]
    pub fn max_instances(mut self, value: u32) -> Self {
        self.max_instances = value;
        self
    }

    /// Sets `max_memory_bytes`.
    #[must_use]
    pub fn max_memory_bytes(mut self, value: u64) -> Self {
        self.max_memory_bytes = value;
        self
    }

    /// Sets `keep_resident_bytes`.
    #[must_use]
    pub fn keep_resident_bytes(mut self, value: u64) -> Self {
        self.keep_resident_bytes = value;
        self
    }

    /// Sets `epoch_tick`.
    #[must_use]
    pub fn epoch_tick(mut self, value: Duration) -> Self {
        self.epoch_tick = value;
        self
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            pooling: true,
            max_instances: 128,
            max_memory_bytes: 1 << 30,
            keep_resident_bytes: 16 << 20,
            epoch_tick: Duration::from_millis(10),
        }
    }
}

/// Runs actions: registered WebAssembly components in the sandbox, and native built-ins.
///
/// Cheap to clone; clones share the engine, the compiled components and the registry.
#[derive(Debug, Clone)]
pub struct ActionHost {
    registry: ActionRegistry,
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<Digest, Arc<OnceCell<Arc<Prepared>>>>>,
    cache_dir: Option<PathBuf>,
    pooling: bool,
    max_memory_bytes: u64,
    ticker: Ticker,
    closed: AtomicBool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("cache_dir", &self.cache_dir)
            .field("pooling", &self.pooling)
            .finish_non_exhaustive()
    }
}

struct Prepared {
    pre: bindings::ActionPre<HostState>,
    description: OnceCell<ActionDescription>,
}

/// Where a component came from on its first use in this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Already loaded in this host.
    Memory,
    /// Deserialized from the on-disk cache.
    DiskCache,
    /// Compiled from the component's bytes.
    Compiled,
    /// Fetched from the action catalog's store by digest, checked, and compiled.
    Fetched,
}

struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    capture: Capture,
    ctx: Arc<StepContext>,
    reported_log_drop: bool,
    services: StepServices,
    max_dynamic_nodes: u32,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_types::Host for HostState {}

impl wit_host::Host for HostState {
    async fn start_child_run(
        &mut self,
        workflow: String,
        trigger: Option<String>,
        payload: String,
        child_key: String,
    ) -> Result<String, String> {
        let Some(children) = self.services.children.clone() else {
            return Err("child runs are not granted to this action (capability child_runs)".into());
        };
        let payload: Value =
            serde_json::from_str(&payload).map_err(|e| format!("payload is not JSON: {e}"))?;
        children
            .start_child_run(workflow, trigger, payload, child_key)
            .await
    }

    async fn schedule_work(&mut self, work: String) -> Result<String, String> {
        let Some(scheduler) = self.services.work.clone() else {
            return Err(
                "dynamic work is not granted to this action (capability dynamic_work)".into(),
            );
        };
        let work: Value =
            serde_json::from_str(&work).map_err(|e| format!("work is not JSON: {e}"))?;
        if crate::json::depth(&work) > crate::json::MAX_DEPTH + 4 {
            return Err("invalid_dynamic_work: the work is nested too deeply".into());
        }
        scheduler
            .schedule_work(work, self.max_dynamic_nodes)
            .await
            .map(|receipt| receipt.to_string())
    }

    fn trace_parent(&mut self) -> Option<String> {
        self.ctx.trace_parent.clone()
    }

    fn log(&mut self, level: wit_host::Level, message: String) {
        let level = match level {
            wit_host::Level::Trace => LogLevel::Trace,
            wit_host::Level::Debug => LogLevel::Debug,
            wit_host::Level::Info => LogLevel::Info,
            wit_host::Level::Warn => LogLevel::Warn,
            wit_host::Level::Error => LogLevel::Error,
        };
        emit(level, &self.ctx, &message);
        if !self.capture.log(level, message) && !self.reported_log_drop {
            self.reported_log_drop = true;
            tracing::warn!(
                target: "squid_mesh::action",
                run_id = %self.ctx.run_id,
                step = %self.ctx.step,
                "action log budget exhausted; further records are dropped"
            );
        }
    }
}

/// Caps linear memory growth and remembers whether the cap was hit, so the trap that a
/// guest allocator raises after a refused `memory.grow` is reported as `memory_limit`.
struct MemoryLimiter {
    cap: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Advances the engine's epoch at a fixed interval; stopped and joined by
/// [`ActionHost::close`] or on drop.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> Result<Self, ActionError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("squid-mesh-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| ActionError::Config {
                message: format!("cannot start the epoch ticker thread: {e}"),
            })?;
        Ok(Self {
            stop,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Stops the thread and waits for it (at most one tick).
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // The thread only sleeps and increments a counter; it cannot panic.
            let _ = handle.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn engine_config(config: &HostConfig, pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.consume_fuel(true);
    cfg.wasm_component_model(true);
    if pooling {
        let n = config.max_instances.max(1);
        let keep = usize::try_from(config.keep_resident_bytes).unwrap_or(usize::MAX);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(4))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(keep)
            .table_keep_resident(keep)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), a slot is reset by restoring
            // only the pages the last instance touched, instead of a memset of the first
            // `keep` bytes of every memory.
            .pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

impl ActionHost {
    /// Builds a host over `registry`.
    ///
    /// # Errors
    ///
    /// [`ActionError::Config`] when the engine cannot be created or the cache directory
    /// cannot be made.
    pub fn new(registry: ActionRegistry, config: HostConfig) -> Result<Self, ActionError> {
        let (engine, pooling) = match config.pooling {
            true => match Engine::new(&engine_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(
                        "pooling allocator unavailable ({e:#}); using on-demand allocation"
                    );
                    (Self::plain_engine(&config)?, false)
                }
            },
            false => (Self::plain_engine(&config)?, false),
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(config_error)?;
        bindings::Action::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(config_error)?;
        let cache_dir = match &config.cache_dir {
            Some(dir) => {
                let mut hasher = std::hash::DefaultHasher::new();
                engine.precompile_compatibility_hash().hash(&mut hasher);
                let dir = dir.join(format!("engine-{:016x}", hasher.finish()));
                std::fs::create_dir_all(&dir).map_err(|e| ActionError::Config {
                    message: format!("cannot create cache directory {}: {e}", dir.display()),
                })?;
                Some(dir)
            }
            None => None,
        };
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self {
            registry,
            inner: Arc::new(Inner {
                engine,
                linker,
                compiled: Mutex::new(HashMap::new()),
                cache_dir,
                pooling,
                max_memory_bytes: config.max_memory_bytes,
                ticker,
                closed: AtomicBool::new(false),
            }),
        })
    }

    fn plain_engine(config: &HostConfig) -> Result<Engine, ActionError> {
        Engine::new(&engine_config(config, false)).map_err(config_error)
    }

    /// The registry this host resolves action keys through.
    pub fn registry(&self) -> &ActionRegistry {
        &self.registry
    }

    /// Whether the pooling allocator is in use.
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Verifies, compiles and describes an action, then registers it: a component that is not
    /// a valid action never enters the registry.
    ///
    /// # Errors
    ///
    /// Any [`RegisteredAction::verify`] error, [`ActionError::InvalidComponent`] when the
    /// component does not implement the action world, or [`ActionError::InvalidLimits`] when
    /// its memory cap exceeds the host's maximum.
    pub async fn register(
        &self,
        action: RegisteredAction,
    ) -> Result<ActionDescription, ActionError> {
        let description = self.check(&action).await?;
        self.registry.register(action)?;
        Ok(description)
    }

    /// Verifies, compiles and describes an action without registering it: what
    /// [`ActionHost::register`] checks. The compiled component stays loaded (and in the disk
    /// cache), so a later first run of the same digest starts at once.
    ///
    /// # Errors
    ///
    /// As [`ActionHost::register`].
    pub async fn check(&self, action: &RegisteredAction) -> Result<ActionDescription, ActionError> {
        action.verify()?;
        self.check_host_limits(action)?;
        let (prepared, _) = self.prepared(action).await?;
        self.describe_prepared(action, &prepared).await
    }

    /// Loads `action` (from memory, the disk cache, by fetching or by compiling it) and
    /// returns its self-description and where it was loaded from.
    ///
    /// # Errors
    ///
    /// Load errors ([`ActionError::DigestMismatch`], [`ActionError::InvalidComponent`], ...).
    pub async fn prepare_action(
        &self,
        action: &RegisteredAction,
    ) -> Result<(ActionDescription, LoadSource), ActionError> {
        let (prepared, source) = self.prepared(action).await?;
        Ok((self.describe_prepared(action, &prepared).await?, source))
    }

    /// Runs an action the caller resolved (the engine's catalog resolves runs' pinned
    /// versions itself), with the step services it is granted (`child_runs`, `dynamic_work`).
    ///
    /// # Errors
    ///
    /// As [`ActionHost::invoke`].
    pub async fn invoke_action(
        &self,
        action: &RegisteredAction,
        ctx: &StepContext,
        input: &Map<String, Value>,
        services: StepServices,
    ) -> Result<Invocation, ActionError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(ActionError::Closed);
        }
        self.check_host_limits(action)?;
        let (prepared, _) = self.prepared(action).await?;
        let services = StepServices {
            children: services.children.filter(|_| action.capabilities.child_runs),
            work: services.work.filter(|_| action.capabilities.dynamic_work),
        };
        self.run(action, &prepared, ctx, input, services).await
    }

    /// Loads the action registered under `key` (from memory, the disk cache or by compiling
    /// it) and returns its self-description and where it was loaded from.
    ///
    /// # Errors
    ///
    /// Resolution errors ([`ActionError::UnknownAction`], [`ActionError::Disabled`]) and load
    /// errors ([`ActionError::DigestMismatch`], [`ActionError::InvalidComponent`], ...).
    pub async fn prepare(
        &self,
        key: &ActionKey,
    ) -> Result<(ActionDescription, LoadSource), ActionError> {
        let action = self.registry.resolve(key)?;
        let (prepared, source) = self.prepared(&action).await?;
        Ok((self.describe_prepared(&action, &prepared).await?, source))
    }

    /// Runs an action once.
    ///
    /// A step error, a trap or a limit hit is an `Ok` [`Invocation`] whose outcome is
    /// [`StepOutcome::Failed`]; `Err` means the host could not run the action at all.
    ///
    /// # Errors
    ///
    /// [`ActionError`] when the key cannot be resolved, the component cannot be loaded, or
    /// the host has no room for another instance (retryable).
    pub async fn invoke(
        &self,
        target: &ActionTarget,
        ctx: &StepContext,
        input: &Map<String, Value>,
    ) -> Result<Invocation, ActionError> {
        self.invoke_with(target, ctx, input, StepServices::default())
            .await
    }

    /// Stops the epoch ticker thread and waits for it. Later WebAssembly invocations (on
    /// any clone of this host) fail with the retryable [`ActionError::Closed`]; built-ins
    /// still answer. Blocks for at most one tick.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.ticker.stop();
    }

    /// Like [`ActionHost::invoke`], with the step services an action may be granted
    /// (child runs, dynamic work).
    ///
    /// # Errors
    ///
    /// As [`ActionHost::invoke`].
    pub async fn invoke_with(
        &self,
        target: &ActionTarget,
        ctx: &StepContext,
        input: &Map<String, Value>,
        services: StepServices,
    ) -> Result<Invocation, ActionError> {
        match target {
            ActionTarget::Builtin(builtin) => Ok(super::builtin::invoke(builtin, ctx)),
            ActionTarget::Wasm(_) if self.inner.closed.load(Ordering::SeqCst) => {
                Err(ActionError::Closed)
            }
            ActionTarget::Wasm(key) => {
                let action = self.registry.resolve(key)?;
                self.invoke_action(&action, ctx, input, services).await
            }
        }
    }

    fn check_host_limits(&self, action: &RegisteredAction) -> Result<(), ActionError> {
        if self.inner.pooling && action.limits.memory_bytes > self.inner.max_memory_bytes {
            return Err(ActionError::InvalidLimits {
                key: action.key.clone(),
                message: format!(
                    "memory_bytes {} exceeds the host's maximum of {}",
                    action.limits.memory_bytes, self.inner.max_memory_bytes
                ),
            });
        }
        Ok(())
    }

    async fn prepared(
        &self,
        action: &RegisteredAction,
    ) -> Result<(Arc<Prepared>, LoadSource), ActionError> {
        let cell = {
            let mut compiled = self
                .inner
                .compiled
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            compiled.entry(action.digest).or_default().clone()
        };
        if let Some(prepared) = cell.get() {
            return Ok((prepared.clone(), LoadSource::Memory));
        }
        let mut source = LoadSource::Memory;
        let prepared = cell
            .get_or_try_init(|| async {
                let mut action = action.clone();
                let fetch = match &action.source {
                    ComponentSource::Fetch(fetch) => Some(fetch.clone()),
                    _ => None,
                };
                // A component kept in the store: from the disk cache when it is there, else
                // fetched (and checked against its digest) first.
                let cached = self
                    .inner
                    .cache_path(action.digest)
                    .is_some_and(|p| p.is_file());
                let mut fetched = false;
                if let Some(fetch) = &fetch
                    && !cached
                {
                    action.source = ComponentSource::Bytes(
                        fetch.fetch(action.key.clone(), action.digest).await?,
                    );
                    fetched = true;
                }
                let mut loaded = self.load_blocking(&action).await;
                if let (Err(_), Some(fetch), false) = (&loaded, &fetch, fetched) {
                    // The cached artifact was unusable (and is gone now): fetch and compile.
                    action.source = ComponentSource::Bytes(
                        fetch.fetch(action.key.clone(), action.digest).await?,
                    );
                    fetched = true;
                    loaded = self.load_blocking(&action).await;
                }
                let (prepared, from) = loaded?;
                source = if fetched && from == LoadSource::Compiled {
                    LoadSource::Fetched
                } else {
                    from
                };
                Ok::<_, ActionError>(Arc::new(prepared))
            })
            .await?;
        Ok((prepared.clone(), source))
    }

    async fn load_blocking(
        &self,
        action: &RegisteredAction,
    ) -> Result<(Prepared, LoadSource), ActionError> {
        let inner = self.inner.clone();
        let action = action.clone();
        tokio::task::spawn_blocking(move || inner.load(&action))
            .await
            .map_err(|e| ActionError::Config {
                message: format!("component loading task failed: {e}"),
            })?
    }

    async fn describe_prepared(
        &self,
        action: &RegisteredAction,
        prepared: &Prepared,
    ) -> Result<ActionDescription, ActionError> {
        prepared
            .description
            .get_or_try_init(|| async {
                let ctx = StepContext {
                    run_id: String::new(),
                    workflow: String::new(),
                    step: String::new(),
                    attempt: 0,
                    runnable_key: String::new(),
                    idempotency_key: String::new(),
                    step_idempotency_key: String::new(),
                    trace_parent: None,
                };
                let (mut store, _) = self.new_store(action, Arc::new(ctx))?;
                let invalid = |message: String| ActionError::InvalidComponent {
                    key: action.key.clone(),
                    message,
                };
                let call = async {
                    let instance = prepared.pre.instantiate_async(&mut store).await?;
                    instance.call_describe(&mut store).await
                };
                let d = match tokio::time::timeout(action.limits.timeout() + GRACE, call).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => return Err(invalid(format!("describe failed: {e:#}"))),
                    Err(_) => return Err(invalid("describe timed out".into())),
                };
                let schema = |s: Option<String>, which: &str| match s {
                    None => Ok(None),
                    Some(s) => serde_json::from_str::<Value>(&s)
                        .map(Some)
                        .map_err(|e| invalid(format!("{which} schema is not JSON: {e}"))),
                };
                Ok(ActionDescription {
                    name: d.name,
                    version: d.version,
                    summary: d.summary,
                    input_schema: schema(d.input_schema, "input")?,
                    output_schema: schema(d.output_schema, "output")?,
                })
            })
            .await
            .cloned()
    }

    fn new_store(
        &self,
        action: &RegisteredAction,
        ctx: Arc<StepContext>,
    ) -> Result<(Store<HostState>, Capture), ActionError> {
        let capture = Capture::new(action.limits.max_log_bytes);
        let wasi = build_wasi(action, &capture)?;
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: usize::try_from(action.limits.memory_bytes).unwrap_or(usize::MAX),
                hit: false,
            },
            capture: capture.clone(),
            ctx,
            reported_log_drop: false,
            services: StepServices::default(),
            max_dynamic_nodes: action.limits.max_dynamic_nodes,
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(action.limits.fuel.unwrap_or(u64::MAX))
            .map_err(config_error)?;
        let deadline = Instant::now() + action.limits.timeout();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok((store, capture))
    }

    async fn run(
        &self,
        action: &RegisteredAction,
        prepared: &Prepared,
        ctx: &StepContext,
        input: &Map<String, Value>,
        services: StepServices,
    ) -> Result<Invocation, ActionError> {
        let started = Instant::now();
        let (mut store, capture) = self.new_store(action, Arc::new(ctx.clone()))?;
        store.data_mut().services = services;
        let wit_ctx = wit_types::StepContext {
            run_id: ctx.run_id.clone(),
            workflow: ctx.workflow.clone(),
            step: ctx.step.clone(),
            attempt: ctx.attempt,
            runnable_key: ctx.runnable_key.clone(),
            idempotency_key: ctx.idempotency_key.clone(),
            step_idempotency_key: ctx.step_idempotency_key.clone(),
        };
        let input = serde_json::to_string(input).map_err(|e| ActionError::Instantiate {
            key: action.key.clone(),
            message: format!("input does not serialize: {e}"),
        })?;
        let mut instantiated = false;
        let call = async {
            let instance = prepared.pre.instantiate_async(&mut store).await?;
            instantiated = true;
            instance.call_run(&mut store, &wit_ctx, &input).await
        };
        let result = tokio::time::timeout(action.limits.timeout() + GRACE, call).await;
        let limits = &action.limits;
        let outcome = match result {
            Err(_elapsed) => StepOutcome::Failed(timeout_error(limits.timeout_ms)),
            Ok(Ok(Ok(success))) => success_outcome(limits.max_output_bytes, success),
            Ok(Ok(Err(error))) => error_outcome(limits.max_output_bytes, error),
            Ok(Err(e)) => {
                let memory_hit = store.data().limiter.hit;
                if !instantiated && !memory_hit && e.downcast_ref::<Trap>().is_none() {
                    return Err(ActionError::Instantiate {
                        key: action.key.clone(),
                        message: format!("{e:#}"),
                    });
                }
                StepOutcome::Failed(classify_trap(&e, memory_hit, limits, &capture))
            }
        };
        let fuel_consumed = limits
            .fuel
            .map(|budget| budget.saturating_sub(store.get_fuel().unwrap_or(0)));
        drop(store);
        let diagnostics = capture.finish();
        for (stream, text) in [
            ("stdout", &diagnostics.stdout),
            ("stderr", &diagnostics.stderr),
        ] {
            if !text.is_empty() {
                tracing::debug!(
                    target: "squid_mesh::action",
                    action = %action.key,
                    run_id = %ctx.run_id,
                    step = %ctx.step,
                    stream,
                    "{}",
                    text.trim_end()
                );
            }
        }
        Ok(Invocation {
            outcome,
            diagnostics,
            elapsed_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            fuel_consumed,
        })
    }
}

/// Extra wall-clock time past an action's timeout before the host abandons the call even if
/// the guest is blocked in a host call (where epochs cannot interrupt it).
const GRACE: Duration = Duration::from_millis(250);

fn config_error(e: wasmtime::Error) -> ActionError {
    ActionError::Config {
        message: format!("{e:#}"),
    }
}

fn timeout_error(timeout_ms: u64) -> StepError {
    StepError::sandbox(
        StepErrorKind::Timeout,
        format!("action ran past its timeout of {timeout_ms} ms"),
    )
}

fn classify_trap(
    e: &wasmtime::Error,
    memory_hit: bool,
    limits: &super::types::ActionLimits,
    capture: &Capture,
) -> StepError {
    if memory_hit {
        return StepError::sandbox(
            StepErrorKind::MemoryLimit,
            format!(
                "action tried to grow its memory past {} bytes",
                limits.memory_bytes
            ),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => timeout_error(limits.timeout_ms),
        Some(Trap::OutOfFuel) => StepError::sandbox(
            StepErrorKind::FuelExhausted,
            format!(
                "action used up its fuel budget of {}",
                limits.fuel.unwrap_or(0)
            ),
        ),
        Some(Trap::StackOverflow) => StepError::sandbox(
            StepErrorKind::StackOverflow,
            "action exhausted its call stack",
        ),
        trap => {
            let reason = trap.map_or_else(|| format!("{e:#}"), |t| t.to_string());
            let stderr = capture.stderr_tail(1024);
            let mut err = StepError::sandbox(
                StepErrorKind::Trap,
                if stderr.is_empty() {
                    format!("action trapped: {reason}")
                } else {
                    format!("action trapped: {reason}; stderr: {stderr}")
                },
            );
            let mut details = Map::new();
            details.insert("trap".into(), Value::String(format!("{e:?}")));
            err.details = Some(details);
            err
        }
    }
}

fn success_outcome(max_bytes: u64, success: wit_types::StepSuccess) -> StepOutcome {
    if success.output.len() as u64 > max_bytes {
        return StepOutcome::Failed(too_large(success.output.len(), max_bytes));
    }
    let parsed = serde_json::from_str::<Value>(&success.output);
    if let Ok(v) = &parsed
        && let Some(why) = crate::json::too_deep(v)
    {
        return StepOutcome::Failed(StepError::sandbox(
            StepErrorKind::InvalidOutput,
            format!("output {why}"),
        ));
    }
    match parsed {
        Ok(Value::Object(output)) => StepOutcome::Succeeded {
            output,
            continue_after_ms: success.continue_after_ms,
        },
        Ok(other) => StepOutcome::Failed(StepError::sandbox(
            StepErrorKind::InvalidOutput,
            format!("output must be a JSON object, got {}", json_kind(&other)),
        )),
        Err(e) => StepOutcome::Failed(StepError::sandbox(
            StepErrorKind::InvalidOutput,
            format!("output is not valid JSON: {e}"),
        )),
    }
}

fn error_outcome(max_bytes: u64, error: wit_types::StepError) -> StepOutcome {
    let size =
        error.code.len() + error.message.len() + error.details.as_ref().map_or(0, String::len);
    if size as u64 > max_bytes {
        return StepOutcome::Failed(too_large(size, max_bytes));
    }
    let code_ok = !error.code.is_empty()
        && error.code.len() <= 128
        && error
            .code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
    if !code_ok {
        return StepOutcome::Failed(StepError::sandbox(
            StepErrorKind::InvalidOutput,
            format!(
                "step error code {:?} must be 1-128 characters from A-Z a-z 0-9 . _ - :",
                error.code
            ),
        ));
    }
    let details = match error.details {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) if crate::json::too_deep_map(&map).is_none() => Some(map),
            _ => {
                return StepOutcome::Failed(StepError::sandbox(
                    StepErrorKind::InvalidOutput,
                    format!(
                        "step error {} has details that are not a JSON object of at most {} levels",
                        error.code,
                        crate::json::MAX_DEPTH
                    ),
                ));
            }
        },
    };
    StepOutcome::Failed(StepError {
        kind: StepErrorKind::Action,
        code: error.code,
        message: error.message,
        retryable: error.retryable,
        retry_after_ms: error.retry_after_ms,
        details,
    })
}

fn too_large(size: usize, max: u64) -> StepError {
    StepError::sandbox(
        StepErrorKind::OutputTooLarge,
        format!("action returned {size} bytes, more than its limit of {max}"),
    )
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn build_wasi(action: &RegisteredAction, capture: &Capture) -> Result<WasiCtx, ActionError> {
    let caps = &action.capabilities;
    let mut b = WasiCtxBuilder::new();
    b.stdout(capture.stream(Stream::Stdout));
    b.stderr(capture.stream(Stream::Stderr));
    for (k, v) in &caps.env {
        b.env(k, v);
    }
    for dir in &caps.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
            ActionError::InvalidCapability {
                key: action.key.clone(),
                message: format!(
                    "cannot open granted directory {}: {e:#}",
                    dir.host.display()
                ),
            }
        })?;
    }
    let allowed: Vec<_> = caps
        .network
        .iter()
        .filter_map(|a| parse_addr_pattern(a))
        .collect();
    let sockets = !allowed.is_empty();
    b.allow_tcp(sockets);
    b.allow_udp(sockets);
    b.allow_ip_name_lookup(caps.dns);
    let allowed = Arc::new(allowed);
    b.socket_addr_check(move |addr, use_| {
        // Connecting binds implicitly to the wildcard address on an ephemeral port; that is
        // part of an allowed outbound connection, not a listener.
        let implicit_bind = matches!(use_, SocketAddrUse::TcpBind | SocketAddrUse::UdpBind)
            && addr.ip().is_unspecified()
            && addr.port() == 0;
        let ok = implicit_bind
            || allowed
                .iter()
                .any(|(ip, port)| *ip == addr.ip() && port.is_none_or(|p| p == addr.port()));
        Box::pin(async move { ok })
    });
    Ok(b.build())
}

impl Inner {
    fn cache_path(&self, digest: Digest) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}.cwasm", digest.hex())))
    }

    /// Loads a component: from the disk cache when possible, else by compiling its
    /// (digest-verified) bytes and writing the artifact to the cache.
    fn load(&self, action: &RegisteredAction) -> Result<(Prepared, LoadSource), ActionError> {
        let cached = self.cache_path(action.digest);
        if let Some(path) = &cached
            && let Some(component) = self.deserialize_cached(path)
        {
            return Ok((self.pre(action, &component)?, LoadSource::DiskCache));
        }
        let bytes = action.source.load_verified(&action.key, action.digest)?;
        let component =
            Component::new(&self.engine, &*bytes).map_err(|e| ActionError::InvalidComponent {
                key: action.key.clone(),
                message: format!("{e:#}"),
            })?;
        let prepared = self.pre(action, &component)?;
        if let Some(path) = &cached
            && let Err(e) = write_artifact(&component, path)
        {
            tracing::warn!(path = %path.display(), "cannot write compiled component to cache: {e}");
        }
        Ok((prepared, LoadSource::Compiled))
    }

    #[allow(unsafe_code)]
    fn deserialize_cached(&self, path: &Path) -> Option<Component> {
        if !path.is_file() {
            return None;
        }
        // SAFETY: the cache directory holds only artifacts this host serialized itself
        // (written to a temporary file and renamed into place), under a directory keyed by
        // the engine's compatibility hash. wasmtime still checks the header and engine
        // settings and rejects a mismatch, which we treat as a miss.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "discarding unusable cached component: {e:#}");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn pre(
        &self,
        action: &RegisteredAction,
        component: &Component,
    ) -> Result<Prepared, ActionError> {
        let invalid = |e: wasmtime::Error| ActionError::InvalidComponent {
            key: action.key.clone(),
            message: format!("{e:#}"),
        };
        let instance_pre = self.linker.instantiate_pre(component).map_err(invalid)?;
        let pre = bindings::ActionPre::new(instance_pre).map_err(invalid)?;
        Ok(Prepared {
            pre,
            description: OnceCell::new(),
        })
    }
}

fn write_artifact(component: &Component, path: &Path) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{{\"v\": {}1{}}}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn outputs_deeper_than_the_bound_fail_the_step() {
        let ok = success_outcome(
            1 << 20,
            wit_types::StepSuccess {
                output: nested(crate::json::MAX_DEPTH - 2),
                continue_after_ms: None,
            },
        );
        assert!(matches!(ok, StepOutcome::Succeeded { .. }), "{ok:?}");
        let deep = success_outcome(
            1 << 20,
            wit_types::StepSuccess {
                output: nested(crate::json::MAX_DEPTH),
                continue_after_ms: None,
            },
        );
        match deep {
            StepOutcome::Failed(e) => {
                assert_eq!(e.kind, StepErrorKind::InvalidOutput);
                assert!(!e.retryable);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
