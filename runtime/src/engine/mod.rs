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
pub(crate) mod batch;
mod builder;
mod catalog;
mod control;
mod dynamic;
mod error;
mod execute;
mod options;
mod schedule;
pub mod signal;
mod snapshot;
mod start;
mod workflows;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::actions::{
    ActionHost, ActionKey, ActionRegistry, ActionTarget, Digest, HostConfig, StepContext,
    StepError, StepErrorKind, StepOutcome, StepServices,
};
use crate::journal::{
    CommandReceipt, Fact, ParentLink, PlannedRunnable, Projection, RunId, RunStatus,
};
use crate::plan;
use crate::redact::RedactionPolicy;
use crate::spec::{SpecProblem, WorkflowSpec, valid_name};
use crate::store::{
    AttemptRow, Lock, PostgresStore, RunRow, SqliteStore, Store, StoreResult, StoreTx, Synchronous,
};
use crate::vocab::AttemptStatus;
use crate::vocab::{Clock, SystemClock, Timestamp};

pub use builder::EngineBuilder;
pub use catalog::{
    ActionDetail, Approval, BlobCheck, Catalog, CatalogAction, CatalogCommand, CatalogEvent,
    ImportReport, MAX_COMPONENT_BYTES,
};
pub use control::{ChildOptions, ChildRun, CommandOptions, ReplayOptions};
pub use dynamic::{
    DEFAULT_MAX_DYNAMIC_NODES, DynamicEdgeSpec, DynamicNodeSpec, DynamicWorkPreview,
    DynamicWorkReceipt, DynamicWorkSpec, WorkOrigin, WorkProblem,
};
pub use error::EngineError;
pub(crate) use error::parse_stored;
pub use execute::MAX_DELIVERIES;
#[cfg(feature = "test-hooks")]
pub use options::AfterClaim;
pub use options::{ExecuteOptions, StartOptions, WorkflowRef};
pub use schedule::{
    BackfillReport, FireOrigin, FireOutcome, MAX_BACKFILL_WINDOWS, ScheduleCommand, ScheduleDetail,
    ScheduleEvent, ScheduleEventKind, ScheduleFire, ScheduleInfo, ScheduleState, Schedules,
};
pub use signal::{ManualAttrs, Signal, SignalKind};
pub use snapshot::{AttemptView, RunSnapshot};
pub use workflows::{StoredWorkflow, WorkflowStore};

use crate::decide::{self, AttemptRef, CompletedStep, Event, Refusal, decide};
use crate::vocab::Suspension;
use batch::{Claim, ClaimedAttempt, Completed};
#[cfg(feature = "test-hooks")]
use execute::AfterRecord;
pub(crate) use execute::refusal;
pub(crate) use start::receipt;
use start::{NewRun, StepChildren, Written};

/// Result of engine calls.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

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

impl AnyStore {
    /// The backend's name, as metrics label it.
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
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
    /// Idle worker slots offered to starts (see [`batch::IdleSlot`]).
    idle: Mutex<Vec<batch::IdleSlot>>,
    next_idle: std::sync::atomic::AtomicU64,
    /// Definition hashes known to be stored (a start that wrote one committed; stored
    /// definitions are never deleted): later starts skip writing them again.
    stored_definitions: Mutex<std::collections::HashSet<String>>,
    wakeup: Arc<tokio::sync::Notify>,
    /// What counts as a secret in command metadata and step errors.
    redaction: RedactionPolicy,
    /// Most nodes one call of host code may add as dynamic work.
    max_dynamic_nodes: u32,
    /// Signalled when a schedule of this process changes (applied, resumed).
    schedule_wakeup: Arc<tokio::sync::Notify>,
    /// The group-commit queue of claims and completions (started on first use).
    batcher: batch::Batcher,
    /// This process's view of the action catalog.
    catalog: catalog::CatalogCache,
    /// When (engine clock, microseconds) a claim next puts expired leases back in the order
    /// their attempts became visible (see `execute::REQUEUE_EVERY`).
    next_requeue: std::sync::atomic::AtomicI64,
    /// Step outcomes this engine recorded: succeeded, failed, suspended.
    outcomes: [std::sync::atomic::AtomicU64; 3],
    /// Writes outside any transaction (Postgres): completions fenced by the rows in hand
    /// written, completions that then went under lock, starts written, claims written,
    /// claims that then went under lock (see `batch::Completion::fenced`,
    /// `batch::start_fenced` and `batch::claim_fenced`).
    fenced: [std::sync::atomic::AtomicU64; 5],
    /// Which of the queue's oldest due attempts fenced claims of this engine under way are
    /// reading, one bit each (see `batch::claim_fenced`).
    claiming: std::sync::atomic::AtomicU64,
    /// Queues the last metrics sample saw (a queue that empties is set to zero).
    sampled_queues: Mutex<Vec<String>>,
    /// Callers of [`Engine::wait_for_run`], by run id: (their wake-up, how many wait).
    run_waiters: Mutex<HashMap<String, (Arc<tokio::sync::Notify>, usize)>>,
}

/// A registration in `run_waiters`, removed when the last waiter of its run leaves.
struct RunWaiter<'a> {
    engine: &'a Engine,
    run_id: String,
    notify: Arc<tokio::sync::Notify>,
}

impl Drop for RunWaiter<'_> {
    fn drop(&mut self) {
        let mut waiters = self
            .engine
            .inner
            .run_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = waiters.get_mut(&self.run_id) {
            *n -= 1;
            if *n == 0 {
                waiters.remove(&self.run_id);
            }
        }
    }
}

/// What an engine's workers did since it was built (see [`Engine::step_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepTotals {
    /// Step attempts this process recorded as succeeded.
    pub succeeded: u64,
    /// Step attempts this process recorded as failed (business errors, limits, timeouts).
    pub failed: u64,
    /// Step attempts that stopped their run at a pause or approval gate.
    pub suspended: u64,
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

    /// The store (for the `with_store!` macro).
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

    /// Waits until run `run_id` ends (completed, failed or cancelled) and returns its
    /// snapshot; when `timeout` passes first, returns the snapshot as it is then (check
    /// [`RunSnapshot::is_terminal`]). A run ended by this process's workers or commands wakes
    /// the caller at once; one ended by another process is seen within 50 ms (polling).
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`], or a store error.
    pub async fn wait_for_run(&self, run_id: RunId, timeout: Duration) -> Result<RunSnapshot> {
        const POLL: Duration = Duration::from_millis(50);
        let key = run_id.to_string();
        let notify = {
            let mut waiters = self
                .inner
                .run_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let entry = waiters
                .entry(key.clone())
                .or_insert_with(|| (Arc::new(tokio::sync::Notify::new()), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        let waiter = RunWaiter {
            engine: self,
            run_id: key,
            notify,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut woken = false;
        loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if woken {
                // Told the run may have ended: read it whole at once, not its status first.
                let snapshot = self.snapshot(run_id).await?;
                if snapshot.is_terminal() {
                    return Ok(snapshot);
                }
            } else {
                let Some(status) = with_store!(self, s => s.run_status(&waiter.run_id).await?)
                else {
                    return Err(EngineError::RunNotFound {
                        run_id: waiter.run_id.clone(),
                    });
                };
                if RunStatus::parse(&status).is_some_and(RunStatus::is_terminal) {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            woken = tokio::select! {
                () = notified => true,
                () = tokio::time::sleep(POLL) => false,
                () = tokio::time::sleep_until(deadline) => false,
            };
        }
        drop(waiter);
        self.snapshot(run_id).await
    }

    /// Wakes the callers of [`Engine::wait_for_run`] waiting on `run_id`, after a write
    /// that may have ended it committed.
    pub(crate) fn run_may_have_ended(&self, run_id: &str) {
        let waiters = self
            .inner
            .run_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((notify, _)) = waiters.get(run_id) {
            notify.notify_waiters();
        }
    }

    /// Step outcomes recorded by this engine's workers since it was built.
    pub fn step_totals(&self) -> StepTotals {
        use std::sync::atomic::Ordering::Relaxed;
        StepTotals {
            succeeded: self.inner.outcomes[0].load(Relaxed),
            failed: self.inner.outcomes[1].load(Relaxed),
            suspended: self.inner.outcomes[2].load(Relaxed),
        }
    }

    /// Completions written as one fenced statement, those that went under lock after
    /// trying, and starts written as one statement (Postgres; see
    /// `squid_mesh_fenced_writes_total`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn fenced_totals(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.fenced[0].load(Relaxed),
            self.inner.fenced[1].load(Relaxed),
            self.inner.fenced[2].load(Relaxed),
        )
    }

    /// Claims written as one fenced statement, and those that went under lock after trying
    /// (Postgres; see `squid_mesh_fenced_writes_total`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn fenced_claims(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.fenced[3].load(Relaxed),
            self.inner.fenced[4].load(Relaxed),
        )
    }

    /// Samples the gauges of [`crate::telemetry`] from the database: due attempts and the
    /// age of the oldest per queue, runs by status. Worker pools call it periodically when
    /// asked to ([`crate::worker::WorkerBuilder::sample_metrics_every`]); a queue that emptied is set
    /// to zero.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn sample_metrics(&self) -> Result<()> {
        use crate::telemetry::names;
        let now = self.inner.clock.now();
        let (depths, counts) = with_store!(self, s => {
            let mut tx = s.begin_read().await?;
            let depths = tx.queue_depths(now_us(now)).await?;
            let counts = tx.run_counts().await?;
            tx.commit().await?;
            (depths, counts)
        });
        let mut seen = self
            .inner
            .sampled_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for q in seen.iter() {
            if !depths.iter().any(|(name, ..)| name == q) {
                metrics::gauge!(names::QUEUE_DEPTH, "queue" => q.clone()).set(0.0);
                metrics::gauge!(names::QUEUE_OLDEST, "queue" => q.clone()).set(0.0);
            }
        }
        seen.clear();
        for (queue, due, oldest) in depths {
            let age = oldest.map_or(0.0, |o| (now_us(now) - o).max(0) as f64 / 1e6);
            metrics::gauge!(names::QUEUE_DEPTH, "queue" => queue.clone()).set(due as f64);
            metrics::gauge!(names::QUEUE_OLDEST, "queue" => queue.clone()).set(age);
            seen.push(queue);
        }
        for status in RunStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n);
            metrics::gauge!(names::RUNS, "status" => status.as_str()).set(n as f64);
        }
        Ok(())
    }

    /// The engine's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Signalled (`notify_waiters`) after a write of this process leaves work due for any
    /// worker to claim; workers wait on it (and poll, for work planned by other processes).
    /// A step a start hands straight to an idle pool slot, or one a completion chains for
    /// its own worker, signals nothing.
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
        self.listen_then(Box::new(|| {})).await;
    }

    /// [`Engine::listen_for_wakeups`], calling `listening` once the subscription holds.
    pub(crate) async fn listen_then(&self, listening: Box<dyn FnOnce() + Send>) {
        let wake = crate::store::Wakeups {
            work: self.inner.wakeup.clone(),
            catalog_changed: self.inner.catalog.stale.clone(),
            live: self.inner.catalog.listening.clone(),
        };
        with_store!(self, s => s.listen(wake, listening).await)
    }

    pub(crate) fn wake(&self) {
        self.inner.wakeup.notify_waiters();
    }

    /// Wakes the idle workers when a committed transaction left attempts for any worker to
    /// claim, and nobody when it left none (a step it claimed for a worker, or nothing new).
    /// All of them: waiters may look at other queues, so waking one could miss the one that
    /// looks at the right queue. (A start whose step an idle slot could take was handed to
    /// that slot instead, and left nothing.)
    pub(crate) fn wake_for(&self, attempts: u32) {
        if attempts > 0 {
            self.inner.wakeup.notify_waiters();
        }
    }

    /// Commits `tx`, then wakes the workers for the attempts it left (see
    /// [`Engine::wake_for`]).
    pub(crate) async fn commit_and_wake<T: StoreTx>(&self, mut tx: T) -> StoreResult<()> {
        let left = tx.left_for_workers();
        tx.commit().await?;
        self.wake_for(left);
        Ok(())
    }

    /// The default queue.
    pub fn default_queue(&self) -> &str {
        &self.inner.default_queue
    }

    /// Validates a spec against the registry and the action catalog (as this process last
    /// saw it: [`Engine::refresh_catalog`] reads it again) and makes it startable by name.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSpec`] with every problem.
    pub fn register_workflow(&self, spec: WorkflowSpec) -> Result<()> {
        spec.validate(Some(&self.actions_view()))
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

    /// The spec registered under `name` with [`Engine::register_workflow`], for comparing a
    /// draft with it ([`crate::spec::diff`]). Read-only; runs already started keep the
    /// definition they pinned, whatever is registered later.
    pub fn registered_spec(&self, name: &str) -> Option<WorkflowSpec> {
        self.registered(name).ok()
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

    /// The snapshot of a run.
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`] or a store error.
    pub async fn snapshot(&self, run_id: RunId) -> Result<RunSnapshot> {
        with_store!(self, s => self.snapshot_on(s, run_id).await)
    }

    async fn snapshot_on<S: Store>(&self, store: &S, run_id: RunId) -> Result<RunSnapshot> {
        let id = run_id.to_string();
        let Some((run, attempts)) = store.run_with_attempts(&id).await? else {
            return Err(EngineError::RunNotFound { run_id: id });
        };
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
        existing_run(&mut tx, &id, Lock::None).await?;
        let rows = tx.facts(&id).await?;
        decode_facts(rows)
    }

    /// Rebuilds a run from its journal and compares it with the derived rows; returns the
    /// differences (empty when they agree).
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`] or a store error.
    pub async fn verify_run(&self, run_id: RunId) -> Result<Vec<String>> {
        with_store!(self, s => self.verify_on(s, run_id).await)
    }

    /// The journal and the rows of one run, read in one transaction (one snapshot), so a
    /// worker writing the run meanwhile cannot make them disagree.
    async fn verify_on<S: Store>(&self, store: &S, run_id: RunId) -> Result<Vec<String>> {
        let mut tx = store.begin_read().await?;
        let id = run_id.to_string();
        let run = existing_run(&mut tx, &id, Lock::None).await?;
        let attempts = tx.run_attempts(&id).await?;
        let rows = tx.facts(&id).await?;
        drop(tx);
        let facts = decode_facts(rows)?;
        let rebuilt = Projection::fold(facts.iter().map(|(_, f)| f));
        let snap = RunSnapshot::from_rows(run, attempts)?;
        Ok(rebuilt.diff(&snap.projection()))
    }
}

impl From<Vec<SpecProblem>> for EngineError {
    fn from(problems: Vec<SpecProblem>) -> Self {
        Self::InvalidSpec(problems)
    }
}

/// A run's row, read with `lock`; [`EngineError::RunNotFound`] when there is none.
pub(crate) async fn existing_run<T: StoreTx>(
    tx: &mut T,
    run_id: &str,
    lock: Lock,
) -> Result<RunRow> {
    tx.load_run(run_id, lock)
        .await?
        .ok_or_else(|| EngineError::RunNotFound {
            run_id: run_id.to_owned(),
        })
}

/// Journal rows decoded into facts, oldest first.
fn decode_facts(rows: Vec<crate::store::FactRow>) -> Result<Vec<(Timestamp, Fact)>> {
    rows.into_iter()
        .map(|r| {
            let fact: Fact = serde_json::from_str(&r.data).map_err(|e| EngineError::Corrupt {
                what: format!("journal fact {} of run {}", r.id, r.run_id),
                message: e.to_string(),
            })?;
            Ok((Timestamp(r.occurred_at), fact))
        })
        .collect()
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
        node: r.node.as_ref().map(to_json),
    }
}
