//! Group commit: the claims and completions of every worker of an engine go through one
//! queue, and whatever is queued when the writer is free is written in one transaction.
//! Under load one commit (one fsync) carries several steps;
//! alone, a unit costs what it did before plus a channel hop.
//!
//! Units run back to back in the transaction. If one fails, the transaction is rolled back,
//! the failing unit is answered with its error and every other unit is run again alone. If
//! the commit itself fails, completions are retried one transaction each (their outcome is
//! worth keeping) and claims report the error (nothing was claimed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{AnyStore, Definition, Engine, EngineError, Result};
use crate::actions::StepOutcome;
use crate::journal::RunId;
use crate::store::{AttemptRow, RunRow, Store, StoreError, StoreTx};

/// Most units per transaction.
const MAX_BATCH: usize = 64;

/// What a claim found.
pub(crate) enum Claim {
    /// A recorded outcome was applied (no step to run).
    Applied(RunId),
    /// An attempt was claimed for this worker.
    Claimed(Box<ClaimedAttempt>),
}

/// An attempt claimed for a worker, with what running it needs.
pub(crate) struct ClaimedAttempt {
    pub(crate) run_id: RunId,
    pub(crate) attempt: AttemptRow,
    pub(crate) run: RunRow,
    pub(crate) def: Option<Arc<Definition>>,
    pub(crate) token_hash: String,
}

/// How a completion ended.
pub(crate) enum Completed {
    /// Recorded and applied; with the run's next step when the completion chained a claim.
    Applied(Option<Box<ClaimedAttempt>>),
    /// Recorded only (the `crash_after_record` test hook).
    Crashed,
}

/// Where a completion claims its run's next step for the same worker.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub(crate) queue: String,
    pub(crate) owner: String,
    pub(crate) lease_for: Duration,
}

enum Job {
    Claim {
        engine: Engine,
        queue: String,
        owner: String,
        lease_for: Duration,
        reply: oneshot::Sender<Result<Option<Claim>>>,
    },
    Complete {
        engine: Engine,
        attempt: Box<AttemptRow>,
        token_hash: String,
        outcome: StepOutcome,
        def: Option<Arc<Definition>>,
        crash: bool,
        chain: Option<Chain>,
        reply: oneshot::Sender<Result<Completed>>,
    },
}

/// Lanes of group commit on Postgres: it commits concurrent transactions in parallel, so
/// several batches in flight beat one (SQLite has one writer, so one lane).
const POSTGRES_LANES: usize = 4;

/// The engine's queues into its group-commit tasks.
#[derive(Debug, Default)]
pub(crate) struct Batcher {
    lanes: [Mutex<Option<mpsc::UnboundedSender<Job>>>; POSTGRES_LANES],
    next: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Claim { .. } => "Job::Claim",
            Job::Complete { .. } => "Job::Complete",
        })
    }
}

fn gone() -> EngineError {
    EngineError::Store(StoreError::Database(sqlx::Error::PoolClosed))
}

fn batch_error(e: &StoreError) -> EngineError {
    EngineError::Store(StoreError::Database(sqlx::Error::Protocol(format!(
        "group commit failed: {e}"
    ))))
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
        let lane = match &job {
            Job::Claim { .. } => self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Job::Complete { attempt, .. } => attempt.run_id.bytes().fold(0usize, |h, b| {
                h.wrapping_mul(31).wrapping_add(usize::from(b))
            }),
        } % lanes;
        let mut sender = self.lanes[lane].lock().unwrap_or_else(|e| e.into_inner());
        let job = match sender.as_ref() {
            Some(s) => match s.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Err(Box::new(job));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        match store.clone() {
            AnyStore::Sqlite(s) => handle.spawn(run(s, rx)),
            AnyStore::Postgres(s) => handle.spawn(run(s, rx)),
        };
        let result = tx
            .send(job)
            .map_err(|mpsc::error::SendError(job)| Box::new(job));
        *sender = Some(tx);
        result
    }
}

/// Claims through the group commit (or directly when it cannot run).
pub(super) async fn claim<S: Store>(
    engine: &Engine,
    store: &S,
    queue: &str,
    owner: &str,
    lease_for: Duration,
) -> Result<Option<Claim>> {
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
        Err(_) => claim_alone(engine, store, queue, owner, lease_for).await,
    }
}

/// Completes through the group commit (or directly when it cannot run).
#[allow(clippy::too_many_arguments)]
pub(super) async fn complete<S: Store>(
    engine: &Engine,
    store: &S,
    attempt: AttemptRow,
    token_hash: String,
    outcome: StepOutcome,
    def: Option<Arc<Definition>>,
    crash: bool,
    chain: Option<Chain>,
) -> Result<Completed> {
    let (reply, answer) = oneshot::channel();
    let job = Job::Complete {
        engine: engine.clone(),
        attempt: Box::new(attempt),
        token_hash,
        outcome,
        def,
        crash,
        chain,
        reply,
    };
    match engine.inner.batcher.submit(&engine.inner.store, job) {
        Ok(()) => answer.await.unwrap_or_else(|_| Err(gone())),
        Err(job) => match *job {
            Job::Complete {
                engine,
                attempt,
                token_hash,
                outcome,
                def,
                crash,
                chain,
                ..
            } => {
                Retry {
                    engine,
                    attempt,
                    token_hash,
                    outcome,
                    def,
                    crash,
                    chain,
                }
                .alone(store)
                .await
            }
            Job::Claim { .. } => Err(gone()),
        },
    }
}

async fn claim_alone<S: Store>(
    engine: &Engine,
    store: &S,
    queue: &str,
    owner: &str,
    lease_for: Duration,
) -> Result<Option<Claim>> {
    let mut tx = store.begin_write().await?;
    let claim = engine.claim_in(&mut tx, queue, owner, lease_for).await?;
    tx.commit().await?;
    Ok(claim)
}

async fn run<S: Store>(store: S, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        write(&store, jobs).await;
    }
}

/// The answer to one unit, sent once the transaction's fate is known.
enum Answer {
    Claim(
        oneshot::Sender<Result<Option<Claim>>>,
        Result<Option<Claim>>,
    ),
    Complete(oneshot::Sender<Result<Completed>>, Result<Completed>),
}

/// A completion kept aside so it can be retried alone if the group commit fails.
struct Retry {
    engine: Engine,
    attempt: Box<AttemptRow>,
    token_hash: String,
    outcome: StepOutcome,
    def: Option<Arc<Definition>>,
    crash: bool,
    chain: Option<Chain>,
}

impl Retry {
    /// Completes in a transaction of its own.
    async fn alone<S: Store>(self, store: &S) -> Result<Completed> {
        let mut tx = store.begin_write().await?;
        let done = self
            .engine
            .complete_in(
                &mut tx,
                &self.attempt,
                &self.token_hash,
                self.outcome,
                self.def.as_deref(),
                self.crash,
                self.chain.as_ref(),
            )
            .await?;
        tx.commit().await?;
        Ok(done)
    }
}

impl Answer {
    /// Sends the unit's result to its caller.
    fn send(self) {
        match self {
            Answer::Claim(reply, r) => {
                let _ = reply.send(r);
            }
            Answer::Complete(reply, r) => {
                let _ = reply.send(r);
            }
        }
    }
}

async fn unit<T: StoreTx>(tx: &mut T, job: Job) -> (Answer, Option<Retry>) {
    match job {
        Job::Claim {
            engine,
            queue,
            owner,
            lease_for,
            reply,
        } => {
            let r = engine.claim_in(tx, &queue, &owner, lease_for).await;
            (Answer::Claim(reply, r), None)
        }
        Job::Complete {
            engine,
            attempt,
            token_hash,
            outcome,
            def,
            crash,
            chain,
            reply,
        } => {
            let r = engine
                .complete_in(
                    tx,
                    &attempt,
                    &token_hash,
                    outcome.clone(),
                    def.as_deref(),
                    crash,
                    chain.as_ref(),
                )
                .await;
            let retry = r.is_ok().then(|| Retry {
                engine,
                attempt,
                token_hash,
                outcome,
                def,
                crash,
                chain,
            });
            (Answer::Complete(reply, r), retry)
        }
    }
}

async fn write<S: Store>(store: &S, jobs: Vec<Job>) {
    let mut tx = match store.begin_write().await {
        Ok(tx) => tx,
        Err(e) => {
            for job in jobs {
                match job {
                    Job::Claim { reply, .. } => {
                        let _ = reply.send(Err(batch_error(&e)));
                    }
                    Job::Complete {
                        engine,
                        attempt,
                        token_hash,
                        outcome,
                        def,
                        crash,
                        chain,
                        reply,
                    } => {
                        let retry = Retry {
                            engine,
                            attempt,
                            token_hash,
                            outcome,
                            def,
                            crash,
                            chain,
                        };
                        let _ = reply.send(retry.alone(store).await);
                    }
                }
            }
            return;
        }
    };
    let mut answers = Vec::with_capacity(jobs.len());
    let mut retries = Vec::new();
    // Units run back to back without savepoints (each would cost statements on the hot
    // path). If one fails, the whole transaction is rolled back and every other unit is run
    // again alone, so a failing unit never takes the others' work with it.
    let mut claims = std::collections::HashMap::new();
    let mut failed = false;
    for job in jobs {
        if let Job::Claim {
            engine,
            queue,
            owner,
            lease_for,
            ..
        } = &job
        {
            claims.insert(
                answers.len(),
                (engine.clone(), queue.clone(), owner.clone(), *lease_for),
            );
        }
        let (answer, retry) = unit(&mut tx, job).await;
        failed |= match &answer {
            Answer::Claim(_, r) => r.is_err(),
            Answer::Complete(_, r) => r.is_err(),
        };
        answers.push(answer);
        retries.extend(retry.map(|r| (answers.len() - 1, r)));
    }
    if failed {
        drop(tx);
        let mut retries: std::collections::HashMap<usize, Retry> = retries.into_iter().collect();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Answer::Claim(reply, Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                Answer::Claim(reply, Ok(_)) => {
                    let r = match claims.remove(&i) {
                        Some((engine, queue, owner, lease_for)) => {
                            claim_alone(&engine, store, &queue, &owner, lease_for).await
                        }
                        None => Err(gone()),
                    };
                    let _ = reply.send(r);
                }
                Answer::Complete(reply, Err(e)) => {
                    let _ = reply.send(Err(e));
                }
                Answer::Complete(reply, Ok(_)) => {
                    let r = match retries.remove(&i) {
                        Some(x) => x.alone(store).await,
                        None => Err(gone()),
                    };
                    let _ = reply.send(r);
                }
            }
        }
        return;
    }
    match tx.commit().await {
        Ok(()) => answers.into_iter().for_each(Answer::send),
        Err(e) => {
            let mut retries: std::collections::HashMap<usize, Retry> =
                retries.into_iter().collect();
            for (i, answer) in answers.into_iter().enumerate() {
                match answer {
                    Answer::Claim(reply, _) => {
                        let _ = reply.send(Err(batch_error(&e)));
                    }
                    Answer::Complete(reply, r) => {
                        let r = match (retries.remove(&i), r) {
                            (Some(x), Ok(_)) => x.alone(store).await,
                            (_, Err(err)) => Err(err),
                            (None, Ok(_)) => Err(batch_error(&e)),
                        };
                        let _ = reply.send(r);
                    }
                }
            }
        }
    }
}
