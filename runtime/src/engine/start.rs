//! Starting runs: resolving the payload, pinning the definition, writing the run with its
//! first decision, and the child runs actions start.

use super::*;
use crate::actions::ChildRunStarter;

/// Starts child runs for the action of one step attempt (the `start-child-run` import).
#[derive(Debug)]
pub(super) struct StepChildren {
    pub(super) engine: Engine,
    pub(super) ctx: StepContext,
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
#[derive(Clone)]
pub(super) struct NewRun {
    pub(super) definition: Arc<Definition>,
    pub(super) trigger: String,
    pub(super) input: Map<String, Value>,
    pub(super) queue: String,
    pub(super) run_id: RunId,
    pub(super) idempotency_key: Option<String>,
    pub(super) replayed_from: Option<String>,
    pub(super) parent: Option<ParentLink>,
    pub(super) receipt: CommandReceipt,
    /// (idempotency key, command kind, source run) of a keyed command that creates the run.
    pub(super) command_key: Option<(String, String, String)>,
    /// The run's context at start (for example `schedule`, for a scheduled run).
    pub(super) context: Map<String, Value>,
    pub(super) now: Timestamp,
    /// The trace a child run continues (its parent step's), when OpenTelemetry gives no
    /// current span.
    pub(super) trace: Option<crate::telemetry::TraceParent>,
    /// The run's trace parent when it is settled before the run is written (by the caller,
    /// whose span the run continues, when the write happens on a group-commit lane).
    pub(super) trace_resolved: Option<crate::telemetry::TraceParent>,
}

/// What [`Engine::write_new_run`] did.
pub(super) enum Written {
    /// Wrote a new run: its snapshot as written, and its first step when the start claimed
    /// it for a worker slot.
    New(RunId, Box<RunSnapshot>, Option<Box<super::ClaimedAttempt>>),
    /// Found the run the start repeats; wrote nothing.
    Existing(RunId),
}

impl Written {
    pub(super) fn run_id(self) -> RunId {
        match self {
            Self::New(id, ..) | Self::Existing(id) => id,
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

impl Engine {
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
        use tracing::Instrument as _;
        let workflow = workflow.into();
        let span = tracing::info_span!(
            "squid_mesh.start",
            workflow = %workflow.name(),
            trigger = trigger.unwrap_or_default(),
            run_id = tracing::field::Empty,
            error_code = tracing::field::Empty,
        );
        async {
            let now = self.inner.clock.now();
            let mut signal = Signal::new(SignalKind::Start, None, now);
            signal.idempotency_key = opts.idempotency_key.clone();
            self.refresh_catalog().await?;
            let new = self.prepare_start(
                workflow,
                trigger,
                &payload,
                opts,
                now,
                receipt(&signal, &self.inner.redaction),
            )?;
            self.start_new(new).await
        }
        .instrument(span.clone())
        .await
        .inspect(|s| {
            span.record("run_id", tracing::field::display(&s.run_id));
        })
        .inspect_err(|e| {
            span.record("error_code", e.code());
        })
    }

    /// The definition a run of `spec` executes: the spec and the digest of every action it
    /// references, as the registry resolves them now.
    ///
    /// # Errors
    ///
    /// [`EngineError::Action`] for an action key the registry does not resolve.
    pub(super) fn pin(&self, mut spec: WorkflowSpec) -> Result<Definition> {
        // The editor section is not executed: moving a node makes no new definition.
        spec.editor = None;
        let mut actions = BTreeMap::new();
        for step in &spec.steps {
            for key in step.action.iter().chain(step.compensate.iter()) {
                actions.insert(key.clone(), self.current_digest(key)?);
            }
        }
        Ok(Definition { spec, actions })
    }

    /// Resolves a start: spec, trigger, payload (defaults, validation), queue, run id and the
    /// pinned definition. Writes nothing.
    pub(super) fn prepare_start(
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
                spec.validate(Some(&self.actions_view()))
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
            trace: None,
            trace_resolved: None,
        })
    }

    pub(super) async fn start_new(&self, new: NewRun) -> Result<RunSnapshot> {
        with_store!(self, s => self.start_on(s, new).await)
    }

    pub(super) async fn start_on<S: Store>(
        &self,
        store: &S,
        mut new: NewRun,
    ) -> Result<RunSnapshot> {
        // A plain start joins the group commit. One that links a child to its parent writes
        // the link before it can tell it repeats a start: it commits alone, or not at all.
        let written = if new.parent.is_none() {
            // The trace of the caller's span, read here: the lane runs outside it.
            new.trace_resolved = Some(crate::telemetry::for_new_run(new.trace.as_ref()));
            super::batch::start(store, self, new).await?
        } else {
            let mut tx = store.begin_write().await?;
            let written = self.write_new_run(&mut tx, new, None).await?;
            if matches!(written, Written::New(..)) {
                self.commit_and_wake(tx).await?;
            }
            written
        };
        match written {
            Written::New(_, snapshot, _) => {
                self.inner
                    .stored_definitions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(snapshot.definition_hash.clone());
                // Built from the rows it wrote: no read after the commit.
                Ok(*snapshot)
            }
            Written::Existing(run_id) => self.snapshot_on(store, run_id).await,
        }
    }

    /// Writes a new run in `tx` (the caller commits), or finds the run it repeats: the same
    /// keyed command, child key, or run id with the same payload.
    ///
    /// # Errors
    ///
    /// [`EngineError::IdempotencyConflict`] when the id names a run with another payload,
    /// [`EngineError::InvalidTransition`] for a child of an ended parent, store errors.
    ///
    /// With `hand` (owner, lease), the run's first step due now on its queue is inserted
    /// claimed by that owner and returned with the new run.
    pub(super) async fn write_new_run<T: StoreTx>(
        &self,
        tx: &mut T,
        new: NewRun,
        hand: Option<(&str, Duration)>,
    ) -> Result<Written> {
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
            trace,
            trace_resolved,
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
            dynamic: None,
            trace_parent: Some(
                trace_resolved
                    .unwrap_or_else(|| crate::telemetry::for_new_run(trace.as_ref()))
                    .to_string(),
            ),
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
            let mut parent_row = existing_run(tx, &link.run_id, Lock::Update).await?;
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
            tx.update_run_same_status(&parent_row).await?;
            tx.append_facts(
                &link.run_id,
                &[(fact.kind().into(), to_json(&fact))],
                now_us(now),
            )
            .await?;
        }
        if !self.definition_stored(&hash) {
            tx.insert_definition(
                &hash,
                &definition.spec.name,
                &run.fingerprint,
                &body,
                now_us(now),
            )
            .await?;
        }
        if !tx.insert_run(&run).await? {
            let existing = tx.load_run(&run.run_id, Lock::None).await?.ok_or_else(|| {
                EngineError::Corrupt {
                    what: format!("run {run_id}"),
                    message: "insert conflicted but the run cannot be read".into(),
                }
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
        let mut journal = Vec::new();
        let mut attempts = Vec::new();
        let queue = run.queue.clone();
        let take = hand.map(|_| queue.as_str());
        let taken = apply::write_decision(
            tx,
            &mut run,
            decision,
            (&mut journal, &mut attempts),
            take,
            now,
        )
        .await?;
        let claimed = match (taken, hand) {
            (Some(row), Some((owner, lease_for))) => {
                let req = super::execute::ClaimRequest {
                    run_id,
                    attempt: row,
                    run: run.clone(),
                    now,
                    owner,
                    lease_for,
                    placement: super::execute::Placement::Insert,
                };
                let claimed = self.claim_row(tx, req, &mut journal).await?;
                attempts.push(claimed.attempt.clone());
                attempts.sort_by(|a, b| (a.seq, &a.runnable_key).cmp(&(b.seq, &b.runnable_key)));
                Some(Box::new(claimed))
            }
            _ => None,
        };
        tx.append_facts(&run.run_id, &journal, now_us(now)).await?;
        let snapshot = RunSnapshot::from_rows(run, attempts)?;
        Ok(Written::New(run_id, Box::new(snapshot), claimed))
    }

    /// The result run of a command already applied with this idempotency key, or a
    /// conflict when the key was used for another command.
    pub(super) async fn repeated_command<T: StoreTx>(
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

    /// Whether definition `hash` is known to be stored.
    fn definition_stored(&self, hash: &str) -> bool {
        self.inner
            .stored_definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(hash)
    }

    pub(super) fn cache_definition(&self, hash: &str, def: Arc<Definition>) {
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
}
