//! Group commit: the claims and completions of every worker of an engine go through one
//! queue, and whatever is queued when the writer is free is written in one transaction.
//! Under load one commit (one fsync) carries several steps; alone, a unit costs what it did
//! before plus a channel hop.
//!
//! Units run back to back in the transaction. If one fails, the transaction is rolled back
//! and every unit runs again alone (the failing one fails again, with its own error). If
//! the commit itself fails, completions are retried one transaction each (their outcome is
//! worth keeping) and claims report the error (nothing was claimed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{AnyStore, Definition, Engine, EngineError, NewRun, Result, Written};
use crate::actions::StepOutcome;
use crate::journal::RunId;
use crate::store::{
    AttemptRow, DueRows, Fence, HeldRows, Pooled, RunRow, SqliteStore, Store, StoreError, StoreTx,
    WriteSource,
};
use crate::vocab::{RunStatus, StepState};

/// Most units per transaction.
const MAX_BATCH: usize = 64;

/// What a claim found.
pub(crate) enum Claim {
    /// A recorded outcome was applied (no step to run).
    Applied(RunId),
    /// An attempt was claimed for this worker.
    Claimed(Box<ClaimedAttempt>),
    /// An attempt was claimed by a statement that also saw its run alive (a fenced
    /// claim): it runs without a separate check that the run was not cancelled meanwhile.
    Alive(Box<ClaimedAttempt>),
}

/// An attempt claimed for a worker, with what running it needs.
pub(crate) struct ClaimedAttempt {
    pub(crate) run_id: RunId,
    pub(crate) attempt: AttemptRow,
    pub(crate) run: RunRow,
    pub(crate) def: Option<Arc<Definition>>,
    pub(crate) token_hash: String,
    /// The action catalog's version read by the claim (not by a chained claim).
    pub(crate) catalog_version: Option<i64>,
    /// The claim took over an expired lease.
    pub(crate) redelivery: bool,
}

/// How a completion ended.
pub(crate) enum Completed {
    /// Recorded and applied; with the next step when the completion chained a claim (the
    /// run's next step, or with [`Chain::across_runs`] the queue's oldest due one).
    Applied(Option<Box<ClaimedAttempt>>),
    /// Recorded and applied; the chained claim found nothing due on the queue (as of the
    /// completion's transaction), so the worker can wait for a wake-up instead of looking.
    Drained,
    /// Not run: its action cannot run yet, and the attempt was given back to wait for it.
    Waiting,
    /// Recorded only (the `crash_after_record` test hook).
    #[cfg(feature = "test-hooks")]
    Crashed,
}

/// Where a completion claims its run's next step for the same worker.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub(crate) queue: String,
    pub(crate) owner: String,
    pub(crate) lease_for: Duration,
    /// When the run has no next step for this worker, claim the queue's oldest due step
    /// (of any run) in the same transaction: a worker pool's slot goes from one run to the
    /// next without a claim transaction of its own.
    pub(crate) across_runs: bool,
}

enum Job {
    Start {
        engine: Engine,
        new: Box<NewRun>,
        reply: oneshot::Sender<Result<Written>>,
    },
    Claim {
        engine: Engine,
        queue: String,
        owner: String,
        lease_for: Duration,
        reply: oneshot::Sender<Result<Option<Claim>>>,
    },
    Complete {
        unit: Box<Completion>,
        reply: oneshot::Sender<Result<Completed>>,
    },
}

/// A step's outcome to record and apply, fenced by its claim.
pub(crate) struct Completion {
    pub(crate) engine: Engine,
    pub(crate) attempt: AttemptRow,
    pub(crate) token_hash: String,
    pub(crate) outcome: StepOutcome,
    pub(crate) def: Option<Arc<Definition>>,
    /// Apply after recording, or stop (the `crash_after_record` test hook).
    #[cfg(feature = "test-hooks")]
    pub(crate) after_record: super::AfterRecord,
    /// Claim the run's next step for the same worker in the same transaction.
    pub(crate) chain: Option<Chain>,
    /// The run row as the worker's claim (or the completion before it) left it: on
    /// Postgres the completion is first tried from it, fenced (see [`Completion::fenced`]).
    pub(crate) in_hand: Option<RunRow>,
}

impl Completion {
    /// Records and applies it in the caller's transaction.
    async fn within<T: StoreTx>(&self, tx: &mut T) -> Result<Completed> {
        self.engine.complete_in(tx, self, true, None).await
    }

    /// On Postgres, records and applies it from the rows in hand as one statement outside
    /// any transaction, fenced by the run's revision and the claim: one round trip where the
    /// locking path takes four (`BEGIN`, the locking read, the writes, `COMMIT`). Tried only
    /// for a run with this step alone in flight and no gate, compensation or dynamic work
    /// (where other writers rarely come between claim and completion). `None` when it was
    /// not written (a step that needs a read, such as the run's history for compensation;
    /// a run or claim that changed; any failure): nothing was written then, and the
    /// completion takes the locking path, which sees what changed.
    async fn fenced(&self) -> Option<Completed> {
        use std::sync::atomic::Ordering::Relaxed;
        let run = self.in_hand.as_ref()?;
        let AnyStore::Postgres(pg) = &self.engine.inner.store else {
            return None;
        };
        #[cfg(feature = "test-hooks")]
        if self.after_record == super::AfterRecord::Stop {
            return None;
        }
        if !alone_in_flight(run) {
            return None;
        }
        let mut tx = pg.fenced(Fence::Held(HeldRows {
            run_id: run.run_id.clone(),
            revision: run.revision,
            updated_at: run.updated_at,
            runnable_key: self.attempt.runnable_key.clone(),
            claim_id: self.attempt.claim_id.clone(),
            token_hash: self.token_hash.clone(),
        }))?;
        let in_hand = (self.attempt.clone(), run.clone());
        // Decided in memory: a step that needs a read gives up here, before any round trip.
        // It does not claim another run's step (a read): when its run has nothing more for
        // the worker, the worker claims on its own, and the run's end is durable sooner.
        let done = self
            .engine
            .complete_in(&mut tx, self, false, Some(in_hand))
            .await
            .ok()?;
        let written = self.engine.commit_and_wake(tx).await;
        let result = if written.is_ok() { "written" } else { "missed" };
        metrics::counter!(crate::telemetry::names::FENCED_WRITES, "kind" => "completion", "result" => result)
            .increment(1);
        match written {
            Ok(()) => {
                self.engine.inner.fenced[0].fetch_add(1, Relaxed);
                Some(done)
            }
            Err(e) => {
                tracing::debug!(runnable_key = %self.attempt.runnable_key, error = %e, "fenced completion not written; writing it under lock");
                self.engine.inner.fenced[1].fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Records and applies it in a transaction of its own. When that fails and the unit
    /// would claim across runs, it runs once more without: a claim of another run's step
    /// that cannot be made must not cost this step its outcome.
    async fn alone<W: WriteSource>(&self, source: &mut W) -> Result<Completed> {
        match self.alone_as(source, true).await {
            Err(_) if self.chain.as_ref().is_some_and(|c| c.across_runs) => {
                self.alone_as(source, false).await
            }
            done => done,
        }
    }

    async fn alone_as<W: WriteSource>(&self, source: &mut W, across: bool) -> Result<Completed> {
        let mut tx = source.begin().await?;
        match self.engine.complete_in(&mut tx, self, across, None).await {
            Ok(done) => {
                self.engine.commit_and_wake(tx).await?;
                Ok(done)
            }
            Err(e) => {
                tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// Lanes of group commit on Postgres: it commits concurrent transactions in parallel, so
/// several batches in flight beat one (SQLite has one writer, so one lane).
const POSTGRES_LANES: usize = 8;

/// The engine's queues into its group-commit tasks.
#[derive(Debug, Default)]
pub(crate) struct Batcher {
    lanes: [Mutex<Option<Lane>>; POSTGRES_LANES],
    next: std::sync::atomic::AtomicUsize,
    /// Set by [`Batcher::close`]: no lane starts again, calls write alone.
    closed: std::sync::atomic::AtomicBool,
}

/// A running lane: its queue and what runs it.
#[derive(Debug)]
struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    runner: Runner,
}

/// What runs a lane: a task on the runtime, or SQLite's embedded writer thread.
#[derive(Debug)]
enum Runner {
    Task(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

impl Batcher {
    /// Stops every lane once its queued jobs are written, and waits for it to end. Later
    /// claims and completions write in transactions of their own.
    pub(crate) async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        for lane in &self.lanes {
            let taken = lane.lock().unwrap_or_else(|e| e.into_inner()).take();
            let Some(Lane { tx, runner }) = taken else {
                continue;
            };
            drop(tx);
            match runner {
                Runner::Task(task) => {
                    let _ = task.await;
                }
                Runner::Thread(thread) => {
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                }
            }
        }
    }
}

impl Drop for Batcher {
    /// The engine is gone, so no job is queued (each holds an engine): closing the queues
    /// ends the lanes; the writer thread is joined, tasks end on their own. When the last
    /// engine handle is dropped by the writer thread itself (a job it just wrote held it),
    /// that thread cannot join itself: it ends on its own once its queue is closed.
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            let taken = lane.get_mut().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(Lane { tx, runner }) = taken {
                drop(tx);
                if let Runner::Thread(thread) = runner
                    && thread.thread().id() != std::thread::current().id()
                {
                    let _ = thread.join();
                }
            }
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Start { .. } => "Job::Start",
            Job::Claim { .. } => "Job::Claim",
            Job::Complete { .. } => "Job::Complete",
        })
    }
}

fn gone() -> EngineError {
    EngineError::Store(StoreError::LaneGone)
}

fn batch_error(e: &StoreError) -> EngineError {
    EngineError::Store(StoreError::GroupCommit {
        message: e.to_string(),
        retryable: e.is_retryable(),
    })
}

impl Batcher {
    /// Queues `job` on its lane, starting the lane's task on the current runtime if there is
    /// none (or the runtime that ran it is gone). A completion goes to its run's lane, so two
    /// completions of one run never wait on each other's locks from different lanes.
    fn submit(&self, store: &AnyStore, job: Job) -> std::result::Result<(), Box<Job>> {
        let lanes = match store {
            AnyStore::Sqlite(_) => 1,
            AnyStore::Postgres(_) => POSTGRES_LANES,
        };
        let by_run = |run_id: &str| {
            run_id.bytes().fold(0usize, |h, b| {
                h.wrapping_mul(31).wrapping_add(usize::from(b))
            })
        };
        let lane = match &job {
            Job::Claim { .. } => self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Job::Start { new, .. } => by_run(&new.run_id.to_string()),
            Job::Complete { unit, .. } => by_run(&unit.attempt.run_id),
        } % lanes;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Box::new(job));
        }
        let mut sender = self.lanes[lane].lock().unwrap_or_else(|e| e.into_inner());
        let job = match sender.as_ref() {
            Some(s) => match s.tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err(Box::new(job));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = match store {
            AnyStore::Sqlite(s) => {
                // The writer's own runtime: the engine code it drives is async, and a
                // current-thread runtime polls it properly (no IO or timer driver: the
                // rusqlite connection never waits on either, and if something ever did, the
                // runtime says so instead of spinning).
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
                    return Err(Box::new(job));
                };
                let store = s.clone();
                let spawned = std::thread::Builder::new()
                    .name("squid-mesh-sqlite-writer".into())
                    .spawn(move || run_on_thread(&runtime, store, rx));
                match spawned {
                    Ok(thread) => Runner::Thread(thread),
                    Err(_) => return Err(Box::new(job)),
                }
            }
            AnyStore::Postgres(s) => Runner::Task(handle.spawn(run(s.clone(), rx))),
        };
        let result = tx
            .send(job)
            .map_err(|mpsc::error::SendError(job)| Box::new(job));
        *sender = Some(Lane { tx, runner });
        result
    }
}

/// Writes a new run: fenced, else through the group commit (or directly when it cannot
/// run). Commits only a new run; a start that repeats one writes nothing.
pub(super) async fn start<S: Store>(store: &S, engine: &Engine, new: NewRun) -> Result<Written> {
    if let Some(written) = start_fenced(engine, &new).await {
        return Ok(written);
    }
    let (reply, answer) = oneshot::channel();
    let job = Job::Start {
        engine: engine.clone(),
        new: Box::new(new),
        reply,
    };
    match engine.inner.batcher.submit(&engine.inner.store, job) {
        Ok(()) => answer.await.unwrap_or_else(|_| Err(gone())),
        Err(job) => match *job {
            Job::Start { new, .. } => start_alone(engine, &mut Pooled(store.clone()), &new).await,
            _ => Err(gone()),
        },
    }
}

/// On Postgres, a start as one statement outside any transaction, its run's insert the
/// fence: a run of its id exists (a repeated start), and nothing is written. One round trip
/// where the group commit's transaction takes four (`BEGIN`, the insert, the other writes,
/// `COMMIT`). Like a start in a batch, it claims the first step for a waiting worker slot
/// and hands it over once written. `None` when it was not written (a start that needs a
/// read: a child run, a keyed command, a definition this engine has not stored yet; a run
/// that exists; any failure): the start then goes through the group commit, which sees why.
async fn start_fenced(engine: &Engine, new: &NewRun) -> Option<Written> {
    let AnyStore::Postgres(pg) = &engine.inner.store else {
        return None;
    };
    if new.parent.is_some() || new.command_key.is_some() {
        return None;
    }
    let mut tx = pg.fenced(Fence::NewRun)?;
    // A slot taken here and not used is dropped: its worker then claims as usual.
    let slot = engine.take_idle(&new.queue);
    let hand = slot.as_ref().map(|s| (s.owner.as_str(), s.lease_for));
    let written = engine
        .write_new_run(&mut tx, new.clone(), hand)
        .await
        .ok()?;
    if !matches!(written, Written::New(..)) {
        return None;
    }
    let committed = engine.commit_and_wake(tx).await;
    let result = if committed.is_ok() {
        "written"
    } else {
        "missed"
    };
    metrics::counter!(crate::telemetry::names::FENCED_WRITES, "kind" => "start", "result" => result)
        .increment(1);
    if let Err(e) = committed {
        tracing::debug!(run_id = %new.run_id, error = %e, "fenced start not written; writing it in a transaction");
        return None;
    }
    engine.inner.fenced[2].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match Answered::Start(Ok(written), slot).hand_over() {
        Answered::Start(Ok(written), _) => Some(written),
        _ => None,
    }
}

async fn start_alone<W: WriteSource>(
    engine: &Engine,
    source: &mut W,
    new: &NewRun,
) -> Result<Written> {
    let mut tx = source.begin().await?;
    match engine.write_new_run(&mut tx, new.clone(), None).await {
        Ok(written @ Written::New(..)) => {
            engine.commit_and_wake(tx).await?;
            Ok(written)
        }
        Ok(written) => {
            tx.rollback().await;
            Ok(written)
        }
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}

/// Claims through the group commit (or directly when it cannot run), if anything is due.
pub(super) async fn claim<S: Store>(
    engine: &Engine,
    store: &S,
    queue: &str,
    owner: &str,
    lease_for: Duration,
) -> Result<Option<Claim>> {
    match claim_fenced(engine, queue, owner, lease_for).await {
        Tried::Claimed(claim) => return Ok(Some(claim)),
        Tried::NothingDue => return Ok(None),
        Tried::SomethingDue => {}
        Tried::Skipped => {
            // A claim that would find nothing costs one read, not a write transaction (and,
            // on SQLite, not a trip through the writer). Expired leases and recorded
            // outcomes waiting to be applied are due too, so nothing a claim would act on
            // is skipped.
            let now = super::now_us(engine.inner.clock.now());
            if !store.any_due(queue, now).await? {
                return Ok(None);
            }
        }
    }
    let (reply, answer) = oneshot::channel();
    let job = Job::Claim {
        engine: engine.clone(),
        queue: queue.to_owned(),
        owner: owner.to_owned(),
        lease_for,
        reply,
    };
    match engine.inner.batcher.submit(&engine.inner.store, job) {
        Ok(()) => answer.await.unwrap_or_else(|_| Err(gone())),
        Err(_) => claim_alone(engine, &mut Pooled(store.clone()), queue, owner, lease_for).await,
    }
}

/// What a fenced claim did.
enum Tried {
    Claimed(Claim),
    /// The read found nothing due: there is nothing to claim.
    NothingDue,
    /// Something is due, but the claim was not written: the locking claim takes it.
    SomethingDue,
    /// Not tried (not Postgres, a host's pool, or expired leases to put back first).
    Skipped,
}

/// Oldest due attempts concurrent fenced claims of one engine spread over.
const CLAIM_SPREAD: u32 = 8;

/// The place in the queue's head a fenced claim reads, held while it is under way: the
/// first place no other claim of this engine holds (the last when all are held).
struct Claiming<'a> {
    taken: &'a std::sync::atomic::AtomicU64,
    bit: u64,
    place: u32,
}

impl<'a> Claiming<'a> {
    fn take(taken: &'a std::sync::atomic::AtomicU64) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let mut seen = taken.load(Relaxed);
        loop {
            let place = (!seen).trailing_zeros();
            if place >= CLAIM_SPREAD {
                return Self {
                    taken,
                    bit: 0,
                    place: CLAIM_SPREAD - 1,
                };
            }
            let bit = 1 << place;
            match taken.compare_exchange_weak(seen, seen | bit, Relaxed, Relaxed) {
                Ok(_) => return Self { taken, bit, place },
                Err(now) => seen = now,
            }
        }
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.taken
            .fetch_and(!self.bit, std::sync::atomic::Ordering::Relaxed);
    }
}

/// On Postgres, claims as two statements outside any transaction instead of a locking
/// claim's four or more: a read of a due attempt and its run without a lock, then the claim
/// decided from them and written as one statement fenced by them ([`Fence::Due`]). Only for
/// a scheduled attempt of a run that has not ended, when expired leases are not to be put
/// back first; recorded outcomes to apply and expired leases to take over go through the
/// locking claim, which sees what changed, as does a claim whose fence missed.
async fn claim_fenced(engine: &Engine, queue: &str, owner: &str, lease_for: Duration) -> Tried {
    use std::sync::atomic::Ordering::Relaxed;
    let AnyStore::Postgres(pg) = &engine.inner.store else {
        return Tried::Skipped;
    };
    let now = engine.inner.clock.now();
    if !pg.fences() || engine.requeue_due(now) {
        return Tried::Skipped;
    }
    // A claim alone takes the oldest due attempt; concurrent claims of this engine read the
    // ones after it, instead of all reading one row that only one of them can claim.
    let claiming = Claiming::take(&engine.inner.claiming);
    let spread = i64::from(claiming.place) + 1;
    let at = super::now_us(now);
    let (attempt, run, catalog_version) = match pg.peek_due(queue, at, spread).await {
        Ok(Some(found)) => found,
        Ok(None) => return Tried::NothingDue,
        Err(_) => return Tried::Skipped,
    };
    if attempt.status != crate::vocab::AttemptStatus::Scheduled || run.status.is_terminal() {
        return Tried::SomethingDue;
    }
    let Ok(run_id) = attempt.run_id.parse::<RunId>() else {
        return Tried::SomethingDue;
    };
    let Some(mut tx) = pg.fenced(Fence::Due(DueRows {
        runnable_key: attempt.runnable_key.clone(),
        claims: attempt.claims,
        attempt_updated_at: attempt.updated_at,
        run_id: run.run_id.clone(),
        revision: run.revision,
        run_updated_at: run.updated_at,
    })) else {
        return Tried::SomethingDue;
    };
    let due = super::execute::DueAttempt {
        run_id,
        attempt,
        run,
        catalog_version,
    };
    // Decided in memory: a claim that needs a read (a definition not cached) gives up here.
    let Ok(claimed) = engine.claim_due(&mut tx, due, now, owner, lease_for).await else {
        return Tried::SomethingDue;
    };
    let written = engine.commit_and_wake(tx).await;
    let result = if written.is_ok() { "written" } else { "missed" };
    metrics::counter!(crate::telemetry::names::FENCED_WRITES, "kind" => "claim", "result" => result)
        .increment(1);
    match written {
        Ok(()) => {
            engine.inner.fenced[3].fetch_add(1, Relaxed);
            Tried::Claimed(Claim::Alive(Box::new(claimed)))
        }
        Err(e) => {
            tracing::debug!(error = %e, "fenced claim not written; claiming under lock");
            engine.inner.fenced[4].fetch_add(1, Relaxed);
            Tried::SomethingDue
        }
    }
}

/// Completes fenced, else through the group commit (or directly when it cannot run).
pub(super) async fn complete<S: Store>(store: &S, unit: Completion) -> Result<Completed> {
    if let Some(done) = unit.fenced().await {
        return Ok(done);
    }
    let (reply, answer) = oneshot::channel();
    let engine = unit.engine.clone();
    let job = Job::Complete {
        unit: Box::new(unit),
        reply,
    };
    match engine.inner.batcher.submit(&engine.inner.store, job) {
        Ok(()) => answer.await.unwrap_or_else(|_| Err(gone())),
        Err(job) => match *job {
            Job::Complete { unit, .. } => unit.alone(&mut Pooled(store.clone())).await,
            _ => Err(gone()),
        },
    }
}

async fn claim_alone<W: WriteSource>(
    engine: &Engine,
    source: &mut W,
    queue: &str,
    owner: &str,
    lease_for: Duration,
) -> Result<Option<Claim>> {
    let mut tx = source.begin().await?;
    match engine.claim_in(&mut tx, queue, owner, lease_for).await {
        Ok(claim) => {
            engine.commit_and_wake(tx).await?;
            Ok(claim)
        }
        Err(e) => {
            tx.rollback().await;
            Err(e)
        }
    }
}

/// A lane on the runtime: writes through the store's pool.
async fn run<S: Store>(store: S, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut pooled = Pooled(store);
    while let Some(first) = rx.recv().await {
        let jobs = gather(first, &mut rx);
        write(&mut pooled, jobs).await;
    }
}

/// SQLite's lane on a thread of its own, which waits on the disk so the async workers do
/// not: its transactions begin and commit inline (see `sqlite_tx::off_workers`).
fn run_on_thread(
    runtime: &tokio::runtime::Runtime,
    store: SqliteStore,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    SqliteStore::mark_lane_thread();
    let mut pooled = Pooled(store);
    while let Some(first) = rx.blocking_recv() {
        let jobs = gather(first, &mut rx);
        runtime.block_on(write(&mut pooled, jobs));
    }
}

/// `first` and whatever else is queued, up to a batch.
fn gather(first: Job, rx: &mut mpsc::UnboundedReceiver<Job>) -> Vec<Job> {
    let mut jobs = vec![first];
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs
}

/// A unit as written in a batch, kept so it can run again alone.
enum Unit {
    Start {
        engine: Engine,
        new: Box<NewRun>,
    },
    Claim {
        engine: Engine,
        queue: String,
        owner: String,
        lease_for: Duration,
    },
    Complete(Box<Completion>),
}

impl Unit {
    /// Runs the unit in a transaction of its own.
    async fn alone<W: WriteSource>(&self, source: &mut W) -> Answered {
        match self {
            Unit::Start { engine, new } => {
                Answered::Start(start_alone(engine, source, new).await, None)
            }
            Unit::Claim {
                engine,
                queue,
                owner,
                lease_for,
            } => Answered::Claim(claim_alone(engine, source, queue, owner, *lease_for).await),
            Unit::Complete(unit) => Answered::Complete(unit.alone(source).await),
        }
    }
}

/// A unit's result before it is sent.
enum Answered {
    /// With the idle worker slot the start claimed its first step for.
    Start(Result<Written>, Option<IdleSlot>),
    Claim(Result<Option<Claim>>),
    Complete(Result<Completed>),
}

async fn write<W: WriteSource>(source: &mut W, jobs: Vec<Job>) {
    // Split each job into what to run and where to answer.
    let mut units = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job {
            Job::Start { engine, new, reply } => {
                units.push(Unit::Start { engine, new });
                replies.push(Reply::Start(reply));
            }
            Job::Claim {
                engine,
                queue,
                owner,
                lease_for,
                reply,
            } => {
                units.push(Unit::Claim {
                    engine,
                    queue,
                    owner,
                    lease_for,
                });
                replies.push(Reply::Claim(reply));
            }
            Job::Complete { unit, reply } => {
                units.push(Unit::Complete(unit));
                replies.push(Reply::Complete(reply));
            }
        }
    }
    let engine = units.first().map(|u| match u {
        Unit::Start { engine, .. } | Unit::Claim { engine, .. } => engine.clone(),
        Unit::Complete(c) => c.engine.clone(),
    });
    let backend = engine
        .as_ref()
        .map_or("unknown", |e| e.inner.store.backend());
    let started = std::time::Instant::now();
    // None: the batch could not be written as one (no transaction, or a unit failed and the
    // transaction is dropped, rolling it back).
    let committed = match source.begin().await {
        Ok(mut tx) => match (batched(&mut tx, &units).await, &engine) {
            (Some(answers), Some(engine)) => Some((answers, engine.commit_and_wake(tx).await)),
            _ => {
                tx.rollback().await;
                None
            }
        },
        Err(_) => None,
    };
    match committed {
        Some((answers, commit)) => match commit {
            Ok(()) => {
                crate::telemetry::commit(backend, units.len(), started.elapsed().as_secs_f64());
                for (reply, answer) in replies.into_iter().zip(answers) {
                    reply.send(answer.hand_over());
                }
            }
            // The commit failed: nothing was claimed; completions are worth keeping.
            Err(e) => {
                for ((reply, unit), answer) in replies.into_iter().zip(&units).zip(answers) {
                    let answer = match (unit, answer) {
                        (Unit::Complete(u), Answered::Complete(Ok(_))) => {
                            Answered::Complete(u.alone(source).await)
                        }
                        (_, Answered::Complete(Err(x))) => Answered::Complete(Err(x)),
                        (_, Answered::Complete(Ok(_))) => Answered::Complete(Err(batch_error(&e))),
                        (_, Answered::Claim(_)) => Answered::Claim(Err(batch_error(&e))),
                        (_, Answered::Start(..)) => Answered::Start(Err(batch_error(&e)), None),
                    };
                    reply.send(answer);
                }
            }
        },
        // Every unit runs alone (a failing one fails again, with its own error).
        None => {
            for (reply, unit) in replies.into_iter().zip(&units) {
                reply.send(unit.alone(source).await);
            }
        }
    }
}

impl Answered {
    /// After the commit: gives a start's claimed first step to the worker slot it was
    /// claimed for. (A slot whose worker is gone leaves the step to its lease.)
    fn hand_over(self) -> Self {
        match self {
            Answered::Start(Ok(Written::New(run_id, snapshot, Some(claimed))), Some(slot)) => {
                if slot.give.send(Handed(claimed)).is_err() {
                    tracing::debug!(%run_id, "a worker slot left before its step was handed over");
                }
                Answered::Start(Ok(Written::New(run_id, snapshot, None)), None)
            }
            other => other,
        }
    }
}

/// A worker slot waiting for work on a queue, offered to starts: a start that plans a
/// step on that queue claims it for the slot in its own transaction and hands it over, so
/// the slot needs no claim transaction of its own.
#[derive(Debug)]
pub(crate) struct IdleSlot {
    id: u64,
    queue: String,
    owner: String,
    lease_for: Duration,
    give: oneshot::Sender<Handed>,
}

/// A step claimed for a worker slot by a start, handed over after the start committed.
pub(crate) struct Handed(pub(crate) Box<ClaimedAttempt>);

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Handed")
            .field(&self.0.attempt.runnable_key)
            .finish()
    }
}

/// An offer of an idle worker slot (see [`Engine::offer_idle`]).
pub(crate) struct IdleOffer {
    pub(crate) id: u64,
    pub(crate) handed: oneshot::Receiver<Handed>,
}

impl Engine {
    /// Offers an idle worker slot of `owner` to starts on `queue`.
    pub(crate) fn offer_idle(&self, queue: &str, owner: &str, lease_for: Duration) -> IdleOffer {
        let (give, handed) = oneshot::channel();
        let id = self
            .inner
            .next_idle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|s| !s.give.is_closed());
        idle.push(IdleSlot {
            id,
            queue: queue.to_owned(),
            owner: owner.to_owned(),
            lease_for,
            give,
        });
        IdleOffer { id, handed }
    }

    /// Withdraws an offer; false when a start took it (its answer is on the way: a step, or
    /// nothing if the start did not commit or planned nothing on the queue).
    pub(crate) fn withdraw_idle(&self, id: u64) -> bool {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        match idle.iter().position(|s| s.id == id) {
            Some(i) => {
                idle.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Takes the slot that has waited longest on `queue`, if any.
    fn take_idle(&self, queue: &str) -> Option<IdleSlot> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|s| !s.give.is_closed());
        let i = idle.iter().position(|s| s.queue == queue)?;
        Some(idle.remove(i))
    }
}

/// Where a unit's answer goes.
enum Reply {
    Start(oneshot::Sender<Result<Written>>),
    Claim(oneshot::Sender<Result<Option<Claim>>>),
    Complete(oneshot::Sender<Result<Completed>>),
}

impl Reply {
    /// Sends a unit's result to its caller (units and replies are paired by construction).
    fn send(self, answered: Answered) {
        match (self, answered) {
            (Reply::Start(r), Answered::Start(a, _)) => {
                let _ = r.send(a);
            }
            (Reply::Start(r), _) => {
                let _ = r.send(Err(gone()));
            }
            (Reply::Claim(r), Answered::Claim(a)) => {
                let _ = r.send(a);
            }
            (Reply::Complete(r), Answered::Complete(a)) => {
                let _ = r.send(a);
            }
            (Reply::Claim(r), _) => {
                let _ = r.send(Err(gone()));
            }
            (Reply::Complete(r), _) => {
                let _ = r.send(Err(gone()));
            }
        }
    }
}

/// Runs the units back to back in `tx` (no savepoints: each would cost statements on the
/// hot path). If one fails, says so; the caller then drops `tx` (rolling the batch back)
/// and runs every unit alone.
async fn batched<T: StoreTx>(tx: &mut T, units: &[Unit]) -> Option<Vec<Answered>> {
    let mut answers = Vec::with_capacity(units.len());
    for unit in units {
        let answered = match unit {
            // A start on a queue where a worker slot waits claims the run's first step for
            // that slot in the same transaction, and hands it over once committed. (One that
            // repeats a run has written nothing but, perhaps, its definition: harmless.)
            Unit::Start { engine, new } => {
                let slot = engine.take_idle(&new.queue);
                let hand = slot.as_ref().map(|s| (s.owner.as_str(), s.lease_for));
                let written = engine.write_new_run(tx, (**new).clone(), hand).await;
                Answered::Start(written, slot)
            }
            Unit::Claim {
                engine,
                queue,
                owner,
                lease_for,
            } => Answered::Claim(engine.claim_in(tx, queue, owner, *lease_for).await),
            Unit::Complete(u) => Answered::Complete(u.within(tx).await),
        };
        let failed = match &answered {
            Answered::Start(r, _) => r.is_err(),
            Answered::Claim(r) => r.is_err(),
            Answered::Complete(r) => r.is_err(),
        };
        if failed {
            return None;
        }
        answers.push(answered);
    }
    Some(answers)
}

/// Whether a run in this state has one step in flight and nothing that other writers (a
/// sibling's completion, a gate's command, compensation, dynamic work) change while it runs.
fn alone_in_flight(run: &RunRow) -> bool {
    if run.status != RunStatus::Running
        || run.manual.is_some()
        || run.compensation.is_some()
        || run.dynamic.is_some()
    {
        return false;
    }
    let Ok(steps) =
        serde_json::from_str::<std::collections::BTreeMap<String, StepState>>(&run.steps)
    else {
        return false;
    };
    steps.values().filter(|s| **s == StepState::Planned).count() == 1
}
