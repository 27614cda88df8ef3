//! A supervised pool of workers calling `execute_next`.
//!
//! Each of `concurrency` slots loops: execute the next due attempt; when nothing is due, sleep
//! until the engine signals new work (in-process wake-up after every write that planned work)
//! or the poll interval passes (work planned by another process, delays coming due); on a
//! store error, back off exponentially. Shutdown is graceful: slots stop claiming at once,
//! in-flight steps get until a deadline to finish, and whatever is still running after it is
//! interrupted and given back, due at once, so another worker takes it without waiting for
//! the lease to expire. Hosts that own their own loop can
//! keep calling [`Engine::execute_next`] directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::engine::{Engine, EngineError, ExecuteOptions};
use crate::spec::valid_name;

/// Builds a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    engine: Engine,
    queues: Vec<String>,
    concurrency: usize,
    owner_id: String,
    lease_for: Duration,
    heartbeat_interval: Option<Duration>,
    poll_interval: Duration,
    max_backoff: Duration,
    schedules: bool,
    schedule_poll_interval: Duration,
    sample_metrics_every: Option<Duration>,
}

/// Steps a slot runs back to back on one run before it looks at the queue again (see
/// [`ExecuteOptions::chain`]): a sequential run saves a claim transaction per step, and a
/// slot never holds on to one run for long.
const CHAIN: u32 = 8;

/// How long a stopping pool waits for its in-flight steps to be given back.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(5);

/// Shortest sleep of the scheduler after a look that fired nothing.
const MIN_SCHEDULER_PAUSE: Duration = Duration::from_millis(50);

/// Counters of a worker pool.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// `execute_next` calls that made progress.
    pub executed: AtomicU64,
    /// Calls that failed (store errors, lost claims).
    pub errors: AtomicU64,
}

/// A running worker pool.
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use squid_mesh::actions::LogLevel;
/// use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
/// use squid_mesh::{Engine, StartOptions, Worker};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let path = std::env::temp_dir().join(format!("squid-mesh-worker-doc-{}.db", std::process::id()));
/// let engine = Engine::builder().sqlite(&path).build().await?;
/// let worker = Worker::builder(&engine).concurrency(4).start()?;
/// let spec = WorkflowSpec::builder("hello")
///     .trigger(Trigger::manual("manual"))
///     .step(Step::log("greet", LogLevel::Info, "hello"))
///     .build();
/// let run = engine.start(&spec, None, json!({}), StartOptions::default()).await?;
/// // The start wakes the pool at once; no polling delay.
/// while !engine.snapshot(run.run_id).await?.is_terminal() {
///     tokio::time::sleep(Duration::from_millis(5)).await;
/// }
/// let executed = worker.shutdown(Duration::from_secs(5)).await;
/// assert!(executed >= 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Worker {
    /// Parts not yet ready (the wake-up listener and every slot); see [`Worker::ready`].
    pending: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the drain deadline passes: in-flight steps are given back.
    give_back: watch::Sender<bool>,
    slots: JoinSet<()>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Starts a builder for a pool working for `engine`.
    pub fn builder(engine: &Engine) -> WorkerBuilder {
        WorkerBuilder {
            queues: vec![engine.default_queue().to_owned()],
            engine: engine.clone(),
            concurrency: 1,
            owner_id: format!("worker-{}", std::process::id()),
            lease_for: Duration::from_secs(300),
            heartbeat_interval: Some(Duration::from_secs(30)),
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            schedules: true,
            schedule_poll_interval: Duration::from_secs(1),
            sample_metrics_every: None,
        }
    }

    /// Waits until the pool is ready: every slot is looking for work and, on Postgres, the
    /// wake-up listener is subscribed, so work started from now on (in any process) wakes
    /// it at once. For health checks and tests; a pool works before it is ready, only
    /// through polling.
    pub async fn ready(&self) {
        let mut pending = self.pending.clone();
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// The pool's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Stops claiming, lets in-flight steps finish until `deadline`, then interrupts the
    /// rest and gives their claims back, due at once (another worker takes them now rather
    /// than after their lease). Returns the number of steps executed.
    pub async fn shutdown(mut self, deadline: Duration) -> u64 {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(deadline, async {
            while self.slots.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "worker shutdown deadline passed; giving in-flight steps back to the queue"
            );
            let _ = self.give_back.send(true);
            // Each give-back is one short transaction; a store that does not answer leaves
            // the rest to lease expiry.
            let gave_back = tokio::time::timeout(GIVE_BACK_WAIT, async {
                while self.slots.join_next().await.is_some() {}
            })
            .await;
            if gave_back.is_err() {
                tracing::warn!("in-flight steps not given back in time; left to lease expiry");
                self.slots.shutdown().await;
            }
        }
        self.stats.executed.load(Ordering::Relaxed)
    }
}

/// What tells a slot to stop claiming, and to give its step back.
struct Signals {
    stopped: watch::Receiver<bool>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    given_back: watch::Receiver<bool>,
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

impl WorkerBuilder {
    /// Queues to take work from, in turn (default: the engine's default queue).
    #[must_use]
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Steps run at once (default 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Worker identity recorded on claims (default `worker-<pid>`; slots add `/<n>`).
    #[must_use]
    pub fn owner_id(mut self, owner: impl Into<String>) -> Self {
        self.owner_id = owner.into();
        self
    }

    /// Lease of each claim (default 5 minutes).
    #[must_use]
    pub fn lease_for(mut self, lease: Duration) -> Self {
        self.lease_for = lease;
        self
    }

    /// Heartbeat interval while a step runs (default 30 s; `None` disables heartbeats).
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Longest sleep when nothing is due and no wake-up comes (default 500 ms).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Longest back-off after repeated store errors (default 10 s).
    #[must_use]
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Whether the pool fires due schedules (default true). Any number of pools and
    /// processes may: each window fires once.
    #[must_use]
    pub fn schedules(mut self, on: bool) -> Self {
        self.schedules = on;
        self
    }

    /// Longest sleep of the scheduler between looks at the schedules (default 1 s): how
    /// soon a schedule applied or resumed by another process is seen. Due windows are
    /// waited for exactly. At least 50 ms.
    #[must_use]
    pub fn schedule_poll_interval(mut self, interval: Duration) -> Self {
        self.schedule_poll_interval = interval.max(MIN_SCHEDULER_PAUSE);
        self
    }

    /// Samples the database gauges of [`crate::telemetry`] (queue depth, oldest due age, runs
    /// by status) this often, through [`Engine::sample_metrics`] (default: never; turn it on
    /// where a metrics recorder is installed).
    #[must_use]
    pub fn sample_metrics_every(mut self, every: Option<Duration>) -> Self {
        self.sample_metrics_every = every;
        self
    }

    /// Starts the pool on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] for a zero concurrency, no queues, a bad queue name, or
    /// heartbeat/lease settings `execute_next` would refuse.
    pub fn start(self) -> Result<Worker, EngineError> {
        if self.concurrency == 0 {
            return Err(EngineError::invalid_option(
                "concurrency",
                "must be at least 1",
            ));
        }
        if self.queues.is_empty() || self.queues.iter().any(|q| !valid_name(q)) {
            return Err(EngineError::invalid_option(
                "queues",
                "give at least one queue; names must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            ));
        }
        if self.lease_for.is_zero()
            || self
                .heartbeat_interval
                .is_some_and(|h| h < Duration::from_millis(10) || h >= self.lease_for)
        {
            return Err(EngineError::invalid_option(
                "heartbeat_interval",
                "must be at least 10 ms and shorter than a positive lease_for",
            ));
        }
        let (stop, stopped) = watch::channel(false);
        let (give_back, given_back) = watch::channel(false);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        let mut slots = JoinSet::new();
        let (ready, pending) = watch::channel(self.concurrency + 1);
        let ready = Arc::new(ready);
        let done = |ready: &Arc<watch::Sender<usize>>| {
            let ready = ready.clone();
            move || ready.send_modify(|n| *n = n.saturating_sub(1))
        };
        {
            let engine = self.engine.clone();
            let stopped = stopped.clone();
            let listening = Box::new(done(&ready));
            slots.spawn(async move {
                tokio::select! {
                    // Finishes at once without cross-process notifications (SQLite).
                    () = engine.listen_then(listening) => until_stopped(stopped).await,
                    () = until_stopped(stopped.clone()) => {}
                }
            });
        }
        if let Some(every) = self.sample_metrics_every {
            let engine = self.engine.clone();
            let mut stopped = stopped.clone();
            slots.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = engine.sample_metrics().await {
                                tracing::warn!("sampling metrics: {e}");
                            }
                        }
                        _ = stopped.changed() => return,
                    }
                }
            });
        }
        if self.schedules {
            let b = self.clone();
            let stopped = stopped.clone();
            slots.spawn(async move { b.run_scheduler(stopped).await });
        }
        for slot in 0..self.concurrency {
            let b = self.clone();
            let stats = stats.clone();
            let stopped = stopped.clone();
            let stopping = stopping.clone();
            let given_back = given_back.clone();
            let looking = done(&ready);
            slots.spawn(async move {
                b.run_slot(
                    slot,
                    Signals {
                        stopped,
                        stopping,
                        given_back,
                    },
                    stats,
                    Box::new(looking),
                )
                .await;
            });
        }
        Ok(Worker {
            pending,
            stop,
            stopping,
            give_back,
            slots,
            stats,
        })
    }

    /// Fires due schedules, then sleeps until the next one is due (at most the schedule
    /// poll interval, so schedules changed by other processes are seen), or until a
    /// schedule changes in this process.
    async fn run_scheduler(self, mut stopped: watch::Receiver<bool>) {
        let wake = self.engine.schedule_wakeups();
        let mut backoff = Duration::from_millis(50);
        loop {
            if *stopped.borrow() {
                return;
            }
            let notified = wake.notified();
            let schedules = self.engine.schedules();
            // One indexed read a look while nothing is due; firing only when something is.
            let due = match schedules.earliest_due().await {
                Ok(due) => {
                    backoff = Duration::from_millis(50);
                    due
                }
                Err(e) => {
                    tracing::warn!("scheduler: {e}; retrying in {backoff:?}");
                    backoff = (backoff * 2).min(self.max_backoff);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => {}
                    }
                    continue;
                }
            };
            let now = self.engine.now();
            let pause = match due {
                None => self.schedule_poll_interval,
                Some(due) if due > now => {
                    Duration::from_micros(u64::try_from(due.0 - now.0).unwrap_or(0))
                        .min(self.schedule_poll_interval)
                }
                Some(_) => match schedules.fire_due().await {
                    Ok(fired) if fired.is_empty() => {
                        // Due, yet nothing fired: another process holds the row. Look again
                        // after a short pause, not in a tight loop.
                        MIN_SCHEDULER_PAUSE
                    }
                    Ok(fired) => {
                        tracing::debug!("scheduler fired {} windows", fired.len());
                        Duration::ZERO
                    }
                    Err(e) => {
                        tracing::warn!("scheduler: {e}; retrying in {backoff:?}");
                        backoff = (backoff * 2).min(self.max_backoff);
                        backoff
                    }
                },
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.changed() => {}
            }
        }
    }

    /// Waits for work on `queue`: a wake-up, the poll interval or the pool stopping, while
    /// this slot is offered to starts on the queue. Returns the step a start claimed for it.
    async fn idle(
        &self,
        queue: &str,
        opts: &ExecuteOptions,
        notified: tokio::sync::futures::Notified<'_>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<crate::engine::batch::Handed> {
        let offer = self
            .engine
            .offer_idle(queue, &opts.owner_id, opts.lease_for);
        let mut handed = offer.handed;
        tokio::select! {
            h = &mut handed => return h.ok(),
            _ = notified => {}
            _ = tokio::time::sleep(self.poll_interval) => {}
            _ = stopped.changed() => {}
        }
        if self.engine.withdraw_idle(offer.id) {
            None
        } else {
            // A start took the offer: its answer comes when it commits.
            handed.await.ok()
        }
    }

    async fn run_slot(
        self,
        slot: usize,
        signals: Signals,
        stats: Arc<WorkerStats>,
        looking: Box<dyn FnOnce() + Send>,
    ) {
        let Signals {
            mut stopped,
            stopping,
            given_back,
        } = signals;
        let wake = self.engine.wakeups();
        let mut looking = Some(looking);
        let mut backoff = Duration::from_millis(50);
        let mut turn = slot;
        // A step a start claimed for this slot while it waited.
        let mut handed: Option<crate::engine::batch::Handed> = None;
        loop {
            // A step handed over before the stop is already claimed: it is in flight and
            // runs to its end like any other (the stop keeps it from chaining further).
            if *stopped.borrow() && handed.is_none() {
                return;
            }
            let queue = self.queues[turn % self.queues.len()].clone();
            turn += 1;
            let opts = ExecuteOptions::default()
                .queue(queue.clone())
                .owner_id(format!("{}/{slot}", self.owner_id))
                .lease_for(self.lease_for)
                .heartbeat_interval(self.heartbeat_interval)
                .chain(CHAIN)
                .chain_stop(stopping.clone())
                .give_back(given_back.clone());
            // Register for a wake-up before looking, so work planned meanwhile is not missed.
            let notified = wake.notified();
            if let Some(looking) = looking.take() {
                looking();
            }
            let done = match handed.take() {
                Some(h) => self.engine.execute_handed(h, opts.clone()).await,
                None => self.engine.execute_step(opts.clone()).await,
            };
            match done {
                Ok(Some((steps, drained))) => {
                    stats
                        .executed
                        .fetch_add(u64::from(steps), Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                    // The last claim saw the slot's only queue empty: wait as if idle. (With
                    // several queues, the slot looks at its next one first.)
                    if drained && self.queues.len() == 1 {
                        handed = self.idle(&queue, &opts, notified, &mut stopped).await;
                    }
                }
                Ok(None) => {
                    handed = self.idle(&queue, &opts, notified, &mut stopped).await;
                }
                Err(EngineError::GivenBack { runnable_key }) => {
                    tracing::info!("worker slot {slot}: gave {runnable_key} back while stopping");
                    return;
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, EngineError::StaleClaim { .. }) {
                        tracing::debug!("worker slot {slot}: {e}");
                        continue;
                    }
                    tracing::warn!("worker slot {slot}: {e}; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}
