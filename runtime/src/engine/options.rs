//! The options of the engine's calls.

use super::*;

/// A workflow, by registered name or as a spec value.
#[derive(Debug, Clone, Copy)]
pub enum WorkflowRef<'a> {
    /// A workflow registered with [`Engine::register_workflow`].
    Name(&'a str),
    /// A spec value (for example written at run time by an editor).
    Spec(&'a WorkflowSpec),
}

impl WorkflowRef<'_> {
    /// The workflow's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(name) => name,
            Self::Spec(spec) => &spec.name,
        }
    }
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
#[non_exhaustive]
pub struct StartOptions {
    /// Use this run id (starting twice with the same id and payload returns the same run).
    pub run_id: Option<RunId>,
    /// Derive the run id from this key: the same key and payload return the same run, the
    /// same key with a different payload is a conflict.
    pub idempotency_key: Option<String>,
    /// Queue for the run's attempts (default: the engine's default queue).
    pub queue: Option<String>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl StartOptions {
    /// Sets `run_id`.
    #[must_use]
    pub fn run_id(mut self, value: RunId) -> Self {
        self.run_id = Some(value);
        self
    }

    /// Sets `idempotency_key`.
    #[must_use]
    pub fn idempotency_key(mut self, value: impl Into<String>) -> Self {
        self.idempotency_key = Some(value.into());
        self
    }

    /// Sets `queue`.
    #[must_use]
    pub fn queue(mut self, value: impl Into<String>) -> Self {
        self.queue = Some(value.into());
        self
    }
}

/// Options of [`Engine::execute_next`].
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// When this turns `true` while the step runs, the step is interrupted and its claim
    /// given back, due at once, so another worker takes it now instead of after the lease
    /// (a stopping pool's drain deadline passed). The call returns
    /// [`EngineError::GivenBack`](crate::EngineError::GivenBack).
    pub give_back: Option<tokio::sync::watch::Receiver<bool>>,
    /// Test hook (feature `test-hooks`): commit the recorded outcome and stop before
    /// applying it, as a crash between the two would.
    #[cfg(feature = "test-hooks")]
    pub crash_after_record: bool,
    /// Test hook (feature `test-hooks`): after the claim commits, signal `claimed` and wait
    /// for `proceed`.
    #[cfg(feature = "test-hooks")]
    pub after_claim: Option<AfterClaim>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl ExecuteOptions {
    #[cfg(feature = "test-hooks")]
    /// Sets `crash_after_record`.
    #[must_use]
    pub fn crash_after_record(mut self, value: bool) -> Self {
        self.crash_after_record = value;
        self
    }

    #[cfg(feature = "test-hooks")]
    /// Sets `after_claim`.
    #[must_use]
    pub fn after_claim(mut self, value: AfterClaim) -> Self {
        self.after_claim = Some(value);
        self
    }
}

/// Test hook of [`ExecuteOptions::after_claim`] (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
#[derive(Debug, Clone, Default)]
pub struct AfterClaim {
    /// Notified once the claim is committed.
    pub claimed: Arc<tokio::sync::Notify>,
    /// Awaited before the step runs.
    pub proceed: Arc<tokio::sync::Notify>,
    /// Notified when the action is about to be invoked (past the check that the run is
    /// still alive).
    pub invoking: Arc<tokio::sync::Notify>,
}

#[cfg(feature = "test-hooks")]
impl ExecuteOptions {
    pub(super) fn after_record(&self) -> AfterRecord {
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

    /// Sets `give_back`.
    #[must_use]
    pub fn give_back(mut self, signal: tokio::sync::watch::Receiver<bool>) -> Self {
        self.give_back = Some(signal);
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
            give_back: None,
            #[cfg(feature = "test-hooks")]
            crash_after_record: false,
            #[cfg(feature = "test-hooks")]
            after_claim: None,
        }
    }
}
