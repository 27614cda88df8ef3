//! The claim / run / complete protocol: claiming due attempts, running their actions
//! under a lease, recording and applying outcomes through the decision core.

use super::*;
use crate::telemetry::names as telemetry;

/// What one `execute_next` call did.
pub(super) struct Progress {
    /// Steps run (more than one when chained).
    pub(super) steps: u32,
    /// The last chained claim found nothing due on the queue.
    pub(super) drained: bool,
    /// The run's snapshot afterwards, when asked for.
    pub(super) snapshot: Option<RunSnapshot>,
}

impl Engine {
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
        let progress =
            with_store!(self, s => self.execute_next_on(s, &queue, &opts, true, false).await)?;
        Ok(progress.and_then(|p| p.snapshot))
    }

    /// [`Engine::execute_next`] for a worker pool's slot: chains across runs, and does not
    /// read the snapshot afterwards. Returns how many steps ran (more than one when
    /// chained) and whether the last chained claim found the queue empty, if any work was
    /// due.
    pub(crate) async fn execute_step(&self, opts: ExecuteOptions) -> Result<Option<(u32, bool)>> {
        let queue = self.checked_queue(&opts)?;
        let progress =
            with_store!(self, s => self.execute_next_on(s, &queue, &opts, false, true).await)?;
        Ok(progress.map(|p| (p.steps, p.drained)))
    }

    pub(super) fn checked_queue(&self, opts: &ExecuteOptions) -> Result<String> {
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
    pub(super) async fn progress<S: Store>(
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
        Ok(Some(Progress {
            steps,
            snapshot,
            drained: false,
        }))
    }

    pub(super) async fn execute_next_on<S: Store>(
        &self,
        store: &S,
        queue: &str,
        opts: &ExecuteOptions,
        want: bool,
        across_runs: bool,
    ) -> Result<Option<Progress>> {
        let claim = batch::claim(self, store, queue, &opts.owner_id, opts.lease_for).await?;
        let (claimed, seen_alive) = match claim {
            None => return Ok(None),
            Some(Claim::Applied(run_id)) => {
                return self.progress(store, run_id, 1, want).await;
            }
            Some(Claim::Claimed(c)) => (c, false),
            Some(Claim::Alive(c)) => (c, true),
        };
        #[cfg(feature = "test-hooks")]
        let seen_alive = seen_alive && opts.after_claim.is_none();
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &opts.after_claim {
            hook.claimed.notify_one();
            hook.proceed.notified().await;
        }
        // A run cancelled after the claim never runs the claimed attempt's action. (A claim
        // whose own statement saw the run alive runs at once, as does a claim chained within
        // a run, made in the transaction that saw the run alive.)
        if !seen_alive && run_ended(store, &claimed.attempt.run_id).await? {
            return self.progress(store, claimed.run_id, 1, want).await;
        }
        self.run_chain(store, claimed, queue, opts, want, across_runs)
            .await
    }

    /// Runs a step a start claimed for this worker slot (and what its completions chain),
    /// as [`Engine::execute_step`] does for one it claims: the start's transaction saw the
    /// run alive, so there is no cancel check. Returns (steps, drained).
    pub(crate) async fn execute_handed(
        &self,
        handed: batch::Handed,
        opts: ExecuteOptions,
    ) -> Result<Option<(u32, bool)>> {
        let queue = handed.0.attempt.queue.clone();
        let progress =
            with_store!(self, s => self.run_chain(s, handed.0, &queue, &opts, false, true).await)?;
        Ok(progress.map(|p| (p.steps, p.drained)))
    }

    /// Gives a claimed attempt back in a transaction of its own, due at once, and wakes the
    /// workers.
    async fn release_now<S: Store>(
        &self,
        store: &S,
        attempt: &AttemptRow,
        token_hash: &str,
    ) -> Result<()> {
        self.release_after(store, attempt, token_hash, Duration::ZERO)
            .await?;
        self.wake();
        Ok(())
    }

    /// Runs `claimed` and the steps its completions chain, up to `opts.chain` more.
    async fn run_chain<S: Store>(
        &self,
        store: &S,
        mut claimed: Box<ClaimedAttempt>,
        queue: &str,
        opts: &ExecuteOptions,
        want: bool,
        across_runs: bool,
    ) -> Result<Option<Progress>> {
        let mut remaining = opts.chain;
        let mut steps = 1;
        loop {
            let run_id = claimed.run_id;
            let chain = (remaining > 0).then(|| batch::Chain {
                queue: queue.to_owned(),
                owner: opts.owner_id.clone(),
                lease_for: opts.lease_for,
                across_runs,
            });
            // The commit woke the workers its completion left work for.
            let done = self.run_claimed(store, *claimed, opts, chain).await?;
            match done {
                #[cfg(feature = "test-hooks")]
                Completed::Crashed => return Err(EngineError::SimulatedCrash),
                Completed::Applied(None) => return self.progress(store, run_id, steps, want).await,
                Completed::Drained => {
                    let progress = self.progress(store, run_id, steps, want).await?;
                    return Ok(progress.map(|p| Progress { drained: true, ..p }));
                }
                Completed::Waiting => return self.progress(store, run_id, steps - 1, want).await,
                Completed::Applied(Some(next)) => {
                    remaining -= 1;
                    steps += 1;
                    // A step of another run was claimed without locking that run: as after
                    // a fresh claim, a run cancelled meanwhile never runs it.
                    if next.run_id != run_id && run_ended(store, &next.attempt.run_id).await? {
                        return self.progress(store, next.run_id, steps - 1, want).await;
                    }
                    claimed = next;
                }
            }
        }
    }

    /// Runs a claimed attempt's action and completes it (claiming the run's next step when
    /// `chain` asks for it), in the step's span (see [`crate::telemetry`]).
    pub(super) async fn run_claimed<S: Store>(
        &self,
        store: &S,
        claimed: ClaimedAttempt,
        opts: &ExecuteOptions,
        chain: Option<batch::Chain>,
    ) -> Result<Completed> {
        use tracing::Instrument as _;
        let a = &claimed.attempt;
        let trace: Option<crate::telemetry::TraceParent> = claimed
            .run
            .trace_parent
            .as_deref()
            .and_then(crate::telemetry::TraceParent::parse);
        let span = crate::telemetry::step_span(&crate::telemetry::StepFields {
            run_id: &a.run_id,
            workflow: &claimed.run.workflow,
            step: &a.step,
            attempt: a.attempt,
            queue: &a.queue,
            redelivery: claimed.redelivery,
            trace: trace.as_ref(),
        });
        let labels = StepLabels {
            workflow: claimed.run.workflow.clone(),
            step: a.step.clone(),
            queue: a.queue.clone(),
            trace,
            started: std::time::Instant::now(),
        };
        if claimed.redelivery {
            metrics::counter!(telemetry::REDELIVERIES, "queue" => labels.queue.clone())
                .increment(1);
        } else if a.attempt > 1 && a.claims == 1 {
            metrics::counter!(telemetry::RETRIES, "workflow" => labels.workflow.clone(), "step" => labels.step.clone())
                .increment(1);
        }
        if a.claims == 1 {
            // Due since `visible_at`, claimed at `updated_at` (engine clock, microseconds).
            // A redelivery's row no longer says when its earlier lease ended: not counted.
            let waited = (a.updated_at - a.visible_at).max(0) as f64 / 1e6;
            metrics::histogram!(telemetry::QUEUE_DELAY, "queue" => labels.queue.clone())
                .record(waited);
        }
        let done = self
            .run_claimed_in_span(store, claimed, opts, chain, &labels)
            .instrument(span.clone())
            .await;
        if let Err(e) = &done {
            span.record("error_code", e.code());
        }
        done
    }

    async fn run_claimed_in_span<S: Store>(
        &self,
        store: &S,
        claimed: ClaimedAttempt,
        opts: &ExecuteOptions,
        chain: Option<batch::Chain>,
        labels: &StepLabels,
    ) -> Result<Completed> {
        use tracing::Instrument as _;
        let span = tracing::Span::current();
        let ClaimedAttempt {
            attempt,
            run,
            def,
            token_hash,
            catalog_version,
            ..
        } = claimed;
        if let Some(version) = catalog_version
            && let Err(e) = self.catalog_seen(version).await
        {
            // Without the catalog as of the claim, a revoked version could run: give the
            // attempt back.
            self.release(store, &attempt, &token_hash).await?;
            return Err(e);
        }
        let seen = self.inner.catalog.version();
        let outcome = match self.resolve_target(def.as_deref(), &attempt).await {
            Err(Unrunnable::Fail(unavailable)) => StepOutcome::Failed(unavailable),
            Err(Unrunnable::Wait {
                key,
                digest,
                code,
                message,
            }) => {
                let wait = catalog::ActionWait {
                    key: &key,
                    digest: digest.as_ref(),
                    code,
                    message,
                    seen,
                };
                self.wait_for_action(store, &attempt, &token_hash, wait)
                    .await?;
                return Ok(Completed::Waiting);
            }
            Ok(target) => {
                let ctx = StepContext {
                    run_id: attempt.run_id.clone(),
                    workflow: run.workflow.clone(),
                    step: attempt.step.clone(),
                    attempt: u32::try_from(attempt.attempt).unwrap_or(u32::MAX),
                    runnable_key: attempt.runnable_key.clone(),
                    idempotency_key: attempt.runnable_key.clone(),
                    step_idempotency_key: StepContext::step_key(&attempt.run_id, &attempt.step),
                    trace_parent: crate::telemetry::current_or(labels.trace.as_ref())
                        .map(|t| t.to_string()),
                };
                let action_label = match &target {
                    Target::Builtin(b) => format!("builtin:{}", b.kind()),
                    Target::Wasm(action) => {
                        span.record("digest", tracing::field::display(&action.digest));
                        action.key.to_string()
                    }
                };
                span.record("action", action_label.as_str());
                metrics::counter!(telemetry::STEPS_STARTED, "workflow" => labels.workflow.clone(), "step" => labels.step.clone(), "queue" => labels.queue.clone())
                    .increment(1);
                metrics::histogram!(telemetry::START_DELAY, "queue" => labels.queue.clone())
                    .record(labels.started.elapsed().as_secs_f64());
                let invoked = std::time::Instant::now();
                let input: Map<String, Value> =
                    serde_json::from_str(&attempt.input).map_err(|e| EngineError::Corrupt {
                        what: format!("input of {}", attempt.runnable_key),
                        message: e.to_string(),
                    })?;
                #[cfg(feature = "test-hooks")]
                if let Some(hook) = &opts.after_claim {
                    hook.invoking.notify_one();
                }
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
                    .instrument(tracing::info_span!("squid_mesh.run", action = %action_label))
                    .await?
                {
                    Ok(outcome) => {
                        metrics::histogram!(telemetry::ACTION_DURATION, "action" => action_label.clone())
                            .record(invoked.elapsed().as_secs_f64());
                        if let StepOutcome::Failed(e) = &outcome
                            && let Some(kind) = crate::telemetry::limit_kind(e.kind)
                        {
                            metrics::counter!(telemetry::LIMIT_HITS, "action" => action_label.clone(), "kind" => kind)
                                .increment(1);
                        }
                        outcome
                    }
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
            in_hand: Some(run),
        };
        // (label, slot in `outcomes`, error code)
        let (result, slot, code) = match &unit.outcome {
            StepOutcome::Succeeded { .. } => ("succeeded", 0, String::new()),
            StepOutcome::Failed(e) => ("failed", 1, e.code.clone()),
            StepOutcome::Suspended(_) => ("suspended", 2, String::new()),
        };
        let run_id = unit.attempt.run_id.clone();
        let done = batch::complete(store, unit)
            .instrument(tracing::info_span!("squid_mesh.complete"))
            .await?;
        let same_run =
            matches!(&done, Completed::Applied(Some(next)) if next.attempt.run_id == run_id);
        if !same_run {
            // The run's chain stopped: it may have ended.
            self.run_may_have_ended(&run_id);
        }
        self.inner.outcomes[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        span.record("outcome", result);
        if !code.is_empty() {
            span.record("error_code", code.as_str());
        }
        metrics::counter!(telemetry::STEPS_FINISHED, "workflow" => labels.workflow.clone(), "step" => labels.step.clone(), "queue" => labels.queue.clone(), "outcome" => result, "error_code" => code)
            .increment(1);
        metrics::histogram!(telemetry::STEP_DURATION, "workflow" => labels.workflow.clone(), "step" => labels.step.clone(), "outcome" => result)
            .record(labels.started.elapsed().as_secs_f64());
        Ok(done)
    }

    /// A step's outcome as it may be stored: secrets in an error's message and details
    /// redacted by the engine's policy (outputs are the action's data, kept as they are).
    pub(super) fn redacted(&self, outcome: StepOutcome) -> StepOutcome {
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

    /// Whether the next claim is to put expired leases back first (its turn has come): a
    /// claim that cannot do so (a fenced one) leaves this one to the locking path.
    pub(super) fn requeue_due(&self, now: Timestamp) -> bool {
        now_us(now)
            >= self
                .inner
                .next_requeue
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// At most once per [`REQUEUE_EVERY`] per engine, before a claim: attempts whose lease
    /// expired become due at the time they first became visible, ahead of the work that
    /// arrived while their step ran, instead of at their lease end behind it.
    async fn requeue_expired<T: StoreTx>(&self, tx: &mut T, now: Timestamp) -> Result<()> {
        use std::sync::atomic::Ordering;
        let next = &self.inner.next_requeue;
        let due = next.load(Ordering::Relaxed);
        let after = now_us(now.plus(REQUEUE_EVERY));
        if now_us(now) < due
            || next
                .compare_exchange(due, after, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(());
        }
        let requeued = tx.requeue_expired(now_us(now)).await?;
        if requeued > 0 {
            crate::telemetry::lease_expirations(requeued);
            tracing::debug!(requeued, "expired leases requeued ahead of newer work");
        }
        Ok(())
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
        self.requeue_expired(tx, now).await?;
        let Some((attempt, run, catalog_version)) =
            tx.next_due_with_run(queue, now_us(now)).await?
        else {
            return Ok(None);
        };
        let run_id: RunId = attempt.run_id.parse().map_err(|_| EngineError::Corrupt {
            what: format!("attempt {}", attempt.runnable_key),
            message: "run id is not a UUID".into(),
        })?;
        if attempt.status == AttemptStatus::Recorded {
            // A crash (or a failed transaction) came between recording and applying: apply
            // the recorded outcome now, without running the step again.
            self.apply_stored(tx, attempt, Vec::new(), now).await?;
            return Ok(Some(Claim::Applied(run_id)));
        }
        if attempt.status == AttemptStatus::Claimed && attempt.claims >= MAX_DELIVERIES {
            // Delivered again and again, and never recorded: its worker dies running it, or
            // its outcome cannot be stored. Fail it instead of running it once more.
            let error = StepError {
                code: "delivery_limit".into(),
                retryable: false,
                ..StepError::sandbox(
                    StepErrorKind::Unavailable,
                    format!(
                        "the step was delivered {} times without an outcome being recorded (its worker stopped, or its outcome could not be stored); it is not run again",
                        attempt.claims
                    ),
                )
            };
            self.fail_undelivered(tx, attempt, error, now).await?;
            return Ok(Some(Claim::Applied(run_id)));
        }
        let due = DueAttempt {
            run_id,
            attempt,
            run,
            catalog_version,
        };
        let claimed = self.claim_due(tx, due, now, owner, lease_for).await?;
        Ok(Some(Claim::Claimed(Box::new(claimed))))
    }

    /// Claims a due attempt found by a claim's read (not a chained claim), with its claim
    /// fact, in the caller's transaction.
    pub(super) async fn claim_due<T: StoreTx>(
        &self,
        tx: &mut T,
        due: DueAttempt,
        now: Timestamp,
        owner: &str,
        lease_for: Duration,
    ) -> Result<ClaimedAttempt> {
        let DueAttempt {
            run_id,
            attempt,
            run,
            catalog_version,
        } = due;
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
        let mut claimed = self.claim_row(tx, req, &mut journal).await?;
        claimed.catalog_version = Some(catalog_version);
        tx.append_facts(&claimed.attempt.run_id, &journal, now_us(now))
            .await?;
        Ok(claimed)
    }

    /// Records `error` as the outcome of an attempt whose claim expired and applies it, in
    /// the caller's transaction (the poison-pill rule).
    async fn fail_undelivered<T: StoreTx>(
        &self,
        tx: &mut T,
        mut attempt: AttemptRow,
        error: StepError,
        now: Timestamp,
    ) -> Result<()> {
        let outcome = StepOutcome::Failed(error);
        let recorded = Fact::AttemptRecorded {
            runnable_key: attempt.runnable_key.clone(),
            claim_id: None,
            outcome: outcome.clone(),
        };
        attempt.status = AttemptStatus::Recorded;
        attempt.outcome = Some(to_json(&outcome));
        attempt.claim_id = None;
        attempt.claim_token_hash = None;
        attempt.lease_until = None;
        let journal = vec![(recorded.kind().to_owned(), to_json(&recorded))];
        self.apply_stored(tx, attempt, journal, now).await
    }

    /// Applies the outcome stored on `attempt` to its run, locked and loaded here, and appends
    /// `journal` with the facts that implies, in the caller's transaction.
    async fn apply_stored<T: StoreTx>(
        &self,
        tx: &mut T,
        mut attempt: AttemptRow,
        mut journal: Vec<(String, String)>,
        now: Timestamp,
    ) -> Result<()> {
        let mut run = existing_run(tx, &attempt.run_id, Lock::Update).await?;
        let def = self.definition_in(tx, &run.definition_hash).await?;
        let unit = Unit {
            run: &mut run,
            def: def.as_deref(),
            attempt: &mut attempt,
            now,
        };
        self.apply_recorded(tx, unit, &mut journal, None).await?;
        tx.append_facts(&run.run_id, &journal, now_us(now)).await?;
        Ok(())
    }

    /// Claims an attempt (due now) in the caller's transaction, adding the claim fact to
    /// `journal`.
    pub(super) async fn claim_row<T: StoreTx>(
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
        let mut token = [0u8; 32];
        getrandom::fill(&mut token).map_err(|e| EngineError::Corrupt {
            what: "random claim token".into(),
            message: e.to_string(),
        })?;
        let token_hash = sha256_hex(&hex::encode(token));
        let event = decide::LeaseEvent::Claim {
            claim_id: uuid::Uuid::new_v4().to_string(),
            token_hash: token_hash.clone(),
            owner: owner.to_owned(),
            lease_for,
        };
        let decision = decide::decide_lease(apply::take_lease(&mut attempt), event, now)
            .map_err(|s| stale(&attempt.runnable_key, s))?;
        let redelivery = matches!(
            decision.fact,
            Some(Fact::AttemptClaimed {
                redelivery: true,
                ..
            })
        );
        apply::set_lease(&mut attempt, decision.state, now);
        match placement {
            Placement::Insert => tx.insert_attempt(&attempt).await?,
            Placement::Update => tx.update_attempt(&attempt).await?,
        }
        journal.extend(decision.fact.map(|f| (f.kind().into(), to_json(&f))));
        let def = self.definition_in(tx, &run.definition_hash).await?;
        Ok(ClaimedAttempt {
            run_id,
            attempt,
            run,
            def,
            token_hash,
            catalog_version: None,
            redelivery,
        })
    }

    /// The target of a step of a pinned definition: the pinned version of its action (fail
    /// closed when that version is revoked or replaced in a fixed registry; wait when it is
    /// not approved yet or disabled) or its built-in.
    pub(super) async fn resolve_target(
        &self,
        def: Option<&Definition>,
        attempt: &AttemptRow,
    ) -> std::result::Result<Target, Unrunnable> {
        let step = attempt.step.as_str();
        if let Some(node) = attempt.node.as_deref() {
            // A dynamic node: the action and digest pinned when its work was scheduled.
            let node: decide::fact::AttemptNode = serde_json::from_str(node).map_err(|e| {
                unavailable(
                    "definition_unavailable",
                    format!("dynamic node {step} is unreadable: {e}"),
                )
            })?;
            let key = ActionKey::new(&node.action).map_err(|e| {
                unavailable(
                    "definition_unavailable",
                    format!("dynamic node {step}: {e}"),
                )
            })?;
            let pinned = node
                .digest
                .as_deref()
                .and_then(|d| d.parse::<Digest>().ok());
            return self.pinned_target(key, pinned).await;
        }
        let Some(def) = def else {
            return Err(unavailable(
                "definition_unavailable",
                "the run's pinned workflow definition is missing or corrupt".into(),
            ));
        };
        let key = if let Some(origin) = step.strip_prefix(decide::COMPENSATE) {
            let key = def.spec.step(origin).and_then(|s| s.compensate.clone());
            let Some(key) = key else {
                return Err(unavailable(
                    "definition_unavailable",
                    format!("step {origin} declares no compensation"),
                ));
            };
            key
        } else {
            let Some(spec) = def.spec.step(step) else {
                return Err(unavailable(
                    "definition_unavailable",
                    format!("step {step} is not in the run's pinned definition"),
                ));
            };
            match (&spec.action, &spec.builtin) {
                (_, Some(b)) => return Ok(Target::Builtin(b.clone())),
                (Some(key), None) => key.clone(),
                (None, None) => {
                    return Err(unavailable(
                        "definition_unavailable",
                        format!("step {step} has no action"),
                    ));
                }
            }
        };
        let pinned = def.actions.get(&key).copied();
        self.pinned_target(key, pinned).await
    }

    /// The pinned version of an action as a step's target, or why it cannot run.
    async fn pinned_target(
        &self,
        key: ActionKey,
        pinned: Option<Digest>,
    ) -> std::result::Result<Target, Unrunnable> {
        match self.resolve_pinned(&key, pinned.as_ref()).await {
            catalog::Resolved::Run(action) => Ok(Target::Wasm(action)),
            catalog::Resolved::Fail { code, message } => Err(unavailable(code, message)),
            catalog::Resolved::Wait { code, message } => Err(Unrunnable::Wait {
                key,
                digest: pinned,
                code,
                message,
            }),
        }
    }

    /// Runs a claimed step, extending its lease while it runs (`opts.heartbeat_interval`);
    /// a lost claim interrupts it.
    pub(super) async fn invoke_with_heartbeat<S: Store>(
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
        let services = StepServices {
            children: Some(Arc::new(StepChildren {
                engine: self.clone(),
                ctx: ctx.clone(),
            })),
            work: Some(Arc::new(super::dynamic::StepWork {
                engine: self.clone(),
                ctx: ctx.clone(),
            })),
        };
        let host = &self.inner.host;
        let invoke = async {
            match target {
                Target::Builtin(b) => {
                    host.invoke_with(
                        &ActionTarget::Builtin(b.clone()),
                        ctx,
                        input,
                        StepServices::default(),
                    )
                    .await
                }
                Target::Wasm(action) => host.invoke_action(action, ctx, input, services).await,
            }
        };
        // A stopping pool past its drain deadline: interrupt the step and give it back.
        let give_back = async {
            match opts.give_back.clone() {
                Some(mut signal) => {
                    if signal.wait_for(|stop| *stop).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let given_back = || async {
            self.release_now(store, attempt, token_hash).await?;
            Err(EngineError::GivenBack {
                runnable_key: attempt.runnable_key.clone(),
            })
        };
        let Some(interval) = opts.heartbeat_interval else {
            return tokio::select! {
                r = invoke => Ok(r.map(|i| i.outcome)),
                () = give_back => given_back().await,
            };
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
            r = invoke => Some(Some(r)),
            _ = lost_rx => None,
            () = give_back => Some(None),
        };
        beat.abort();
        let _ = beat.await;
        match result {
            Some(Some(r)) => Ok(r.map(|i| i.outcome)),
            Some(None) => given_back().await,
            None => Err(EngineError::StaleClaim {
                runnable_key: attempt.runnable_key.clone(),
                reason: "the lease was lost while the step ran; the step was interrupted".into(),
            }),
        }
    }

    /// Gives a claimed attempt back (the host could not run it for a passing reason).
    pub(super) async fn release<S: Store>(
        &self,
        store: &S,
        attempt: &AttemptRow,
        token_hash: &str,
    ) -> Result<()> {
        self.release_after(store, attempt, token_hash, Duration::from_secs(1))
            .await
    }

    /// Gives a claimed attempt back in a transaction of its own, due again `after` now.
    async fn release_after<S: Store>(
        &self,
        store: &S,
        attempt: &AttemptRow,
        token_hash: &str,
        after: Duration,
    ) -> Result<()> {
        let now = self.inner.clock.now();
        let mut tx = store.begin_write().await?;
        self.release_in(&mut tx, attempt, token_hash, now.plus(after))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives a claimed attempt back in the caller's transaction, due again at `retry_at`;
    /// whether it did (a claim that is no longer this worker's has nothing to give back).
    pub(super) async fn release_in<T: StoreTx>(
        &self,
        tx: &mut T,
        attempt: &AttemptRow,
        token_hash: &str,
        retry_at: Timestamp,
    ) -> Result<bool> {
        let now = self.inner.clock.now();
        let Some(mut cur) = tx.load_attempt(&attempt.runnable_key, Lock::Update).await? else {
            return Ok(false);
        };
        let event = decide::LeaseEvent::Release {
            holder: decide::Holder {
                claim_id: attempt.claim_id.clone(),
                token_hash: token_hash.to_owned(),
            },
            retry_at,
        };
        let Ok(decision) = decide::decide_lease(apply::take_lease(&mut cur), event, now) else {
            return Ok(false);
        };
        apply::set_lease(&mut cur, decision.state, now);
        tx.update_attempt(&cur).await?;
        Ok(true)
    }

    /// Records and applies a step's outcome in the caller's transaction, fenced by the
    /// claim. One unit of a group commit. `in_hand`: the attempt and its run as the worker
    /// holds them, used instead of reading them under lock (by a transaction that writes
    /// only if they are still so).
    pub(super) async fn complete_in<T: StoreTx>(
        &self,
        tx: &mut T,
        unit: &batch::Completion,
        across: bool,
        in_hand: Option<(AttemptRow, RunRow)>,
    ) -> Result<Completed> {
        let attempt = &unit.attempt;
        let token_hash = unit.token_hash.as_str();
        let outcome = unit.outcome.clone();
        let def = unit.def.as_deref();
        let chain = unit.chain.as_ref();
        let now = self.inner.clock.now();
        let loaded = match in_hand {
            Some(both) => Some(both),
            None => {
                tx.load_attempt_and_run(&attempt.runnable_key, Lock::Update)
                    .await?
            }
        };
        let (mut cur, mut run) = match loaded {
            Some(both) => both,
            None => {
                // Say which one is missing.
                existing_run(tx, &attempt.run_id, Lock::Update).await?;
                return Err(EngineError::Corrupt {
                    what: format!("attempt {}", attempt.runnable_key),
                    message: "vanished".into(),
                });
            }
        };
        let stored_outcome = to_json(&outcome);
        let event = decide::LeaseEvent::Record {
            holder: decide::Holder {
                claim_id: attempt.claim_id.clone(),
                token_hash: token_hash.to_owned(),
            },
            outcome,
        };
        let decision = decide::decide_lease(apply::take_lease(&mut cur), event, now)
            .map_err(|s| stale(&attempt.runnable_key, s))?;
        apply::set_lease(&mut cur, decision.state, now);
        cur.outcome = Some(stored_outcome);
        let recorded = decision.fact.ok_or_else(|| EngineError::Corrupt {
            what: format!("attempt {}", attempt.runnable_key),
            message: "a recorded outcome without its fact".into(),
        })?;
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
                // A dynamic node's run may hold thousands of due nodes: any worker's claim
                // takes the next one where the run's own scan would not stay one step.
                let cheap = tx.ordered_run_scan() || cur.node.is_none();
                if alive && cheap {
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
            // Nothing more of this run for the worker: the queue's oldest due step.
            if let Some(chain) = chain.filter(|c| c.across_runs && across) {
                let claimed = self
                    .claim_in(tx, &chain.queue, &chain.owner, chain.lease_for)
                    .await?;
                return Ok(match claimed {
                    None => Completed::Drained,
                    Some(Claim::Applied(_)) => Completed::Applied(None),
                    Some(Claim::Claimed(next) | Claim::Alive(next)) => {
                        Completed::Applied(Some(next))
                    }
                });
            }
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

    /// Applies a recorded outcome and writes everything it implies in the caller's
    /// transaction, adding its facts to `journal`. `take`: see [`apply::write_decision`].
    pub(super) async fn apply_recorded<T: StoreTx>(
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
        // An outcome that cannot be read back fails its attempt (not retried) instead of
        // failing every transaction that tries to apply it.
        let read = serde_json::from_str(attempt.outcome.as_deref().unwrap_or("null"));
        let unreadable = read.is_err();
        let outcome: StepOutcome = read.unwrap_or_else(|e| {
            StepOutcome::Failed(StepError {
                code: "outcome_unreadable".into(),
                retryable: false,
                ..StepError::sandbox(
                    StepErrorKind::Unavailable,
                    format!("the step's recorded outcome cannot be read back: {e}"),
                )
            })
        });
        if unreadable {
            attempt.outcome = Some(to_json(&outcome));
        }
        let event = Event::Recorded {
            attempt: AttemptRef {
                runnable_key: attempt.runnable_key.clone(),
                step: attempt.step.clone(),
                attempt: u32::try_from(attempt.attempt).unwrap_or(u32::MAX),
                input: serde_json::from_str(&attempt.input).unwrap_or_default(),
                node: attempt_node(attempt)?,
            },
            outcome,
        };
        let mut state = apply::run_state(run)?;
        if def.is_some() && event.needs_history() {
            state.completed = self.completed_steps(tx, &run.run_id).await?;
        }
        if let Some(work) = decide::needs_work_outputs(&state, &event) {
            state.work_outputs = work_outputs(tx, &run.run_id, work).await?;
        }
        let decision = decide(&state, def.map(|d| &d.spec), event, now)
            .map_err(|r| refusal(&run.run_id, "apply", r))?;
        if let Some(status) = decision.attempt_status {
            attempt.status = status;
        }
        attempt.due_at = None;
        attempt.updated_at = now_us(now);
        tx.update_attempt(attempt).await?;
        let mut inserted = Vec::new();
        apply::write_decision(tx, run, decision, (journal, &mut inserted), take, now).await
    }

    /// The run's succeeded step attempts (not compensations), newest first.
    pub(super) async fn completed_steps<T: StoreTx>(
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
                let output = success_output(&a);
                CompletedStep {
                    input: serde_json::from_str(&a.input).unwrap_or(Value::Null),
                    step: a.step,
                    runnable_key: a.runnable_key,
                    output,
                }
            })
            .collect())
    }
}

/// The dynamic node an attempt runs, if any.
pub(super) fn attempt_node(attempt: &AttemptRow) -> Result<Option<decide::fact::AttemptNode>> {
    attempt
        .node
        .as_deref()
        .map(|n| {
            serde_json::from_str(n).map_err(|e| EngineError::Corrupt {
                what: format!("dynamic node of {}", attempt.runnable_key),
                message: e.to_string(),
            })
        })
        .transpose()
}

/// The output of a succeeded attempt (`null` when its outcome is not a readable success).
fn success_output(a: &AttemptRow) -> Value {
    match a
        .outcome
        .as_deref()
        .map(serde_json::from_str::<StepOutcome>)
    {
        Some(Ok(StepOutcome::Succeeded { output, .. })) => Value::Object(output),
        _ => Value::Null,
    }
}

/// The outputs of the succeeded nodes of work `work` (not its join), as (index, node, output).
async fn work_outputs<T: StoreTx>(
    tx: &mut T,
    run_id: &str,
    work: &str,
) -> Result<Vec<(u32, String, Value)>> {
    let mut out = Vec::new();
    for a in tx.run_attempts(run_id).await? {
        if a.status != AttemptStatus::Succeeded {
            continue;
        }
        let Some(node) = attempt_node(&a)? else {
            continue;
        };
        if node.work != work || node.join {
            continue;
        }
        let output = success_output(&a);
        out.push((node.index, a.step, output));
    }
    Ok(out)
}

/// The rows one recorded outcome is applied to.
pub(super) struct Unit<'a> {
    pub(super) run: &'a mut RunRow,
    pub(super) def: Option<&'a Definition>,
    pub(super) attempt: &'a mut AttemptRow,
    pub(super) now: Timestamp,
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
pub(super) enum Placement {
    /// Insert it, claimed.
    Insert,
    /// Update the existing row.
    Update,
}

/// One claim: the attempt (due now), its run, and who takes it for how long.
pub(super) struct ClaimRequest<'a> {
    pub(super) run_id: RunId,
    pub(super) attempt: AttemptRow,
    pub(super) run: RunRow,
    pub(super) now: Timestamp,
    pub(super) owner: &'a str,
    pub(super) lease_for: Duration,
    pub(super) placement: Placement,
}

/// A due attempt a claim's read found, with its run and the action catalog's version.
pub(super) struct DueAttempt {
    pub(super) run_id: RunId,
    pub(super) attempt: AttemptRow,
    pub(super) run: RunRow,
    pub(super) catalog_version: i64,
}

/// Whether run `run_id` has ended, as stored now (one statement, outside any transaction).
async fn run_ended<S: Store>(store: &S, run_id: &str) -> Result<bool> {
    let status = store.run_status(run_id).await?;
    Ok(status
        .as_deref()
        .and_then(RunStatus::parse)
        .is_some_and(RunStatus::is_terminal))
}

/// One invocation of a claimed step.
pub(super) struct Invoke<'a> {
    pub(super) target: &'a Target,
    pub(super) ctx: &'a StepContext,
    pub(super) input: &'a Map<String, Value>,
    pub(super) attempt: &'a AttemptRow,
    pub(super) token_hash: &'a str,
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

/// A lease refusal as the worker's error.
fn stale(runnable_key: &str, s: decide::Stale) -> EngineError {
    EngineError::StaleClaim {
        runnable_key: runnable_key.to_owned(),
        reason: s.reason().to_owned(),
    }
}

/// What a claimed step runs.
/// The labels of a step's metrics, the trace its span continues, and when its claim came
/// back.
pub(super) struct StepLabels {
    workflow: String,
    step: String,
    queue: String,
    trace: Option<crate::telemetry::TraceParent>,
    started: std::time::Instant,
}

pub(super) enum Target {
    /// A native step kind.
    Builtin(crate::actions::Builtin),
    /// The pinned version of a WebAssembly action.
    Wasm(Arc<crate::actions::RegisteredAction>),
}

/// How often (engine clock) a process puts expired leases back in visibility order before
/// a claim: a redelivery waits at most this long behind newer work.
pub(super) const REQUEUE_EVERY: Duration = Duration::from_secs(1);

/// How many times an attempt is delivered (claimed) without an outcome being recorded
/// before the next claim fails it with `delivery_limit` instead of running it again.
pub const MAX_DELIVERIES: i64 = 5;

/// A step that can never run: it fails with `code`.
fn unavailable(code: &str, message: String) -> Unrunnable {
    Unrunnable::Fail(StepError {
        code: code.to_owned(),
        ..StepError::sandbox(StepErrorKind::Unavailable, message)
    })
}

/// Why a claimed step cannot run its action.
pub(super) enum Unrunnable {
    /// Never: the step fails with this error.
    Fail(StepError),
    /// Not yet: the attempt waits for the action.
    Wait {
        key: ActionKey,
        digest: Option<Digest>,
        code: &'static str,
        message: String,
    },
}
