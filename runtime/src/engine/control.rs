//! Control commands: resume, approve, reject, cancel, replay, child runs, and `apply_signal`
//! that routes every one of them (and starts) through one path.

use serde_json::{Map, Value, json};

use super::signal::{ManualAttrs, Signal, SignalKind};
use super::{
    Engine, EngineError, NewRun, Result, RunSnapshot, StartOptions, WorkflowRef, now_us, receipt,
};
use super::{apply, existing_run, refusal};
use crate::actions::StepContext;
use crate::decide::{self, Command, Event, GateAction, decide};
use crate::journal::{ParentLink, RunId};
use crate::spec::{SpecProblem, valid_name};
use crate::store::{Lock, Store, StoreTx};
use crate::vocab::AttemptStatus;

/// Options of `cancel`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CommandOptions {
    /// Repeating the command with this key returns the first result and writes nothing.
    pub idempotency_key: Option<String>,
    /// Free metadata (secret-looking keys are redacted).
    pub metadata: Map<String, Value>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl CommandOptions {
    /// Sets `idempotency_key`.
    #[must_use]
    pub fn idempotency_key(mut self, value: impl Into<String>) -> Self {
        self.idempotency_key = Some(value.into());
        self
    }

    /// Sets `metadata`.
    #[must_use]
    pub fn metadata(mut self, value: Map<String, Value>) -> Self {
        self.metadata = value;
        self
    }
}

/// Options of `start_child_run`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ChildOptions {
    /// Queue of the child's attempts (default: the engine's default queue).
    pub queue: Option<String>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl ChildOptions {
    /// Sets `queue`.
    #[must_use]
    pub fn queue(mut self, value: impl Into<String>) -> Self {
        self.queue = Some(value.into());
        self
    }
}

/// Options of `replay`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReplayOptions {
    /// Replay even though the source completed irreversible or non-compensatable steps.
    pub allow_irreversible: bool,
    /// Repeating the replay with this key returns the same new run.
    pub idempotency_key: Option<String>,
    /// Free metadata (secret-looking keys are redacted).
    pub metadata: Map<String, Value>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl ReplayOptions {
    /// Sets `allow_irreversible`.
    #[must_use]
    pub fn allow_irreversible(mut self, value: bool) -> Self {
        self.allow_irreversible = value;
        self
    }

    /// Sets `idempotency_key`.
    #[must_use]
    pub fn idempotency_key(mut self, value: impl Into<String>) -> Self {
        self.idempotency_key = Some(value.into());
        self
    }

    /// Sets `metadata`.
    #[must_use]
    pub fn metadata(mut self, value: Map<String, Value>) -> Self {
        self.metadata = value;
        self
    }
}

fn problem(path: &str, message: &str) -> SpecProblem {
    SpecProblem {
        path: path.to_owned(),
        code: "invalid_option".to_owned(),
        message: message.to_owned(),
    }
}

impl Engine {
    fn manual_signal(&self, kind: SignalKind, run_id: RunId, attrs: ManualAttrs) -> Signal {
        let mut s = Signal::new(kind, Some(run_id), self.inner.clock.now());
        if let Some(actor) = attrs.actor {
            s.payload.insert("actor".into(), actor);
        }
        if let Some(comment) = attrs.comment {
            s.payload.insert("comment".into(), Value::String(comment));
        }
        s.metadata = attrs.metadata;
        s.idempotency_key = attrs.idempotency_key;
        s
    }

    /// Resumes a run paused at a `pause` step; it goes on to the step's ok route.
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`], [`EngineError::InvalidTransition`] (nothing paused, or
    /// the run ended), [`EngineError::WrongManualStep`] (an approval gate),
    /// [`EngineError::InvalidOption`] for malformed attributes.
    pub async fn resume(&self, run_id: RunId, attrs: ManualAttrs) -> Result<RunSnapshot> {
        self.apply_signal(self.manual_signal(SignalKind::Resume, run_id, attrs))
            .await
    }

    /// Approves a run paused at an approval gate; an actor is required.
    ///
    /// # Errors
    ///
    /// As [`Engine::resume`]; a missing or empty actor is [`EngineError::InvalidOption`].
    pub async fn approve(&self, run_id: RunId, attrs: ManualAttrs) -> Result<RunSnapshot> {
        self.apply_signal(self.manual_signal(SignalKind::Approve, run_id, attrs))
            .await
    }

    /// Rejects a run paused at an approval gate; it goes on to the gate's error route.
    ///
    /// # Errors
    ///
    /// As [`Engine::approve`].
    pub async fn reject(&self, run_id: RunId, attrs: ManualAttrs) -> Result<RunSnapshot> {
        self.apply_signal(self.manual_signal(SignalKind::Reject, run_id, attrs))
            .await
    }

    /// Cancels a run that has not ended (running, idle or paused). A claimed attempt that has
    /// not started never runs; an attempt in flight finishes but its completion is refused.
    ///
    /// # Errors
    ///
    /// [`EngineError::RunNotFound`], [`EngineError::InvalidTransition`] for an ended run.
    pub async fn cancel(&self, run_id: RunId, opts: CommandOptions) -> Result<RunSnapshot> {
        let mut s = Signal::new(SignalKind::Cancel, Some(run_id), self.inner.clock.now());
        s.idempotency_key = opts.idempotency_key;
        s.metadata = opts.metadata;
        self.apply_signal(s).await
    }

    /// Starts a new run from a run's trigger and resolved input, linked by `replayed_from`.
    /// The source is left untouched.
    ///
    /// # Errors
    ///
    /// [`EngineError::UnsafeReplay`] listing the irreversible or non-compensatable steps the
    /// source completed (unless `allow_irreversible`), [`EngineError::RunNotFound`].
    pub async fn replay(&self, run_id: RunId, opts: ReplayOptions) -> Result<RunSnapshot> {
        let mut s = Signal::new(SignalKind::Replay, Some(run_id), self.inner.clock.now());
        s.payload.insert(
            "allow_irreversible".into(),
            Value::Bool(opts.allow_irreversible),
        );
        s.idempotency_key = opts.idempotency_key;
        s.metadata = opts.metadata;
        self.apply_signal(s).await
    }

    /// Applies any control command. Its receipt is written in the same transaction as its
    /// effect; a repeated idempotency key returns the first result and writes nothing.
    ///
    /// # Errors
    ///
    /// The errors of the command, and [`EngineError::InvalidOption`] for a malformed signal.
    pub async fn apply_signal(&self, signal: Signal) -> Result<RunSnapshot> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "squid_mesh.command",
            otel.name = %format_args!("command {}", signal.kind.as_str()),
            command = signal.kind.as_str(),
            run_id = tracing::field::Empty,
            actor = tracing::field::Empty,
            error_code = tracing::field::Empty,
        );
        if let Some(id) = &signal.run_id {
            span.record("run_id", tracing::field::display(id));
        }
        if let Some(actor) = signal.payload.get("actor").and_then(Value::as_str) {
            span.record("actor", actor);
        }
        self.apply_signal_inner(signal)
            .instrument(span.clone())
            .await
            .inspect(|s| {
                if s.is_terminal() {
                    self.run_may_have_ended(&s.run_id.to_string());
                }
            })
            .inspect_err(|e| {
                span.record("error_code", e.code());
            })
    }

    async fn apply_signal_inner(&self, signal: Signal) -> Result<RunSnapshot> {
        if let Some(key) = &signal.idempotency_key
            && (key.is_empty() || key.len() > 512)
        {
            return Err(EngineError::InvalidOption(vec![problem(
                "idempotency_key",
                "must be 1-512 characters",
            )]));
        }
        for (path, value) in [("payload", &signal.payload), ("metadata", &signal.metadata)] {
            if let Some(why) = crate::json::too_deep_map(value) {
                return Err(EngineError::InvalidOption(vec![SpecProblem {
                    path: path.into(),
                    code: "too_deep".into(),
                    message: format!("the signal's {path} {why}"),
                }]));
            }
        }
        match signal.kind {
            SignalKind::CronStart
                if signal.payload.contains_key("scheduled_for")
                    || signal.idempotency_key.is_none() =>
            {
                self.cron_start_signal(signal).await
            }
            SignalKind::Start | SignalKind::CronStart => {
                let workflow = signal
                    .payload
                    .get("workflow")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        EngineError::InvalidOption(vec![problem(
                            "payload.workflow",
                            "a start signal names its workflow",
                        )])
                    })?;
                let trigger = signal.payload.get("trigger").and_then(Value::as_str);
                let payload = signal
                    .payload
                    .get("payload")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                let opts = StartOptions {
                    run_id: None,
                    idempotency_key: signal.idempotency_key.clone(),
                    queue: signal
                        .payload
                        .get("queue")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                };
                self.refresh_catalog().await?;
                let new = self.prepare_start(
                    WorkflowRef::Name(workflow),
                    trigger,
                    &payload,
                    opts,
                    signal.occurred_at,
                    receipt(&signal, &self.inner.redaction),
                )?;
                self.start_new(new).await
            }
            SignalKind::Replay => self.replay_signal(signal).await,
            _ => with_store!(self, s => self.run_command_on(s, signal).await),
        }
    }

    async fn run_command_on<S: Store>(&self, store: &S, signal: Signal) -> Result<RunSnapshot> {
        let run_id = signal.run_id.ok_or_else(|| {
            EngineError::InvalidOption(vec![problem("run_id", "this command needs a run id")])
        })?;
        let id = run_id.to_string();
        let kind = signal.kind;
        if matches!(
            kind,
            SignalKind::Approve | SignalKind::Reject | SignalKind::Resume
        ) {
            validate_manual(&signal)?;
        }
        let now = self.inner.clock.now();
        let mut tx = store.begin_write().await?;
        if let Some(key) = &signal.idempotency_key
            && let Some(done) = self
                .repeated_command(&mut tx, key, kind.as_str(), &id)
                .await?
        {
            drop(tx);
            return self.snapshot_on(store, done).await;
        }
        let mut run = existing_run(&mut tx, &id, Lock::Update).await?;
        let def = self.definition_in(&mut tx, &run.definition_hash).await?;
        let command = match kind {
            SignalKind::Cancel => Command::Cancel,
            _ => {
                let (action, decision) = match kind {
                    SignalKind::Resume => (GateAction::Resume, None),
                    SignalKind::Approve => (GateAction::Approve, Some("approved")),
                    _ => (GateAction::Reject, Some("rejected")),
                };
                let mut result = Map::new();
                if let Some(d) = decision {
                    result.insert("decision".into(), json!(d));
                    result.insert("decided_at".into(), json!(now.to_rfc3339()));
                } else {
                    result.insert("resumed_at".into(), json!(now.to_rfc3339()));
                }
                if let Some(actor) = signal.payload.get("actor") {
                    result.insert("actor".into(), actor.clone());
                }
                if let Some(comment) = signal.payload.get("comment") {
                    result.insert("comment".into(), comment.clone());
                }
                if !signal.metadata.is_empty() {
                    result.insert(
                        "metadata".into(),
                        self.inner
                            .redaction
                            .keys(&Value::Object(signal.metadata.clone())),
                    );
                }
                Command::Resolve { action, result }
            }
        };
        let event = Event::Command {
            receipt: receipt(&signal, &self.inner.redaction),
            command,
        };
        let decision = decide(
            &apply::run_state(&run)?,
            def.as_deref().map(|d| &d.spec),
            event,
            now,
        )
        .map_err(|r| refusal(&id, kind.as_str(), r))?;
        if let Some(key) = &signal.idempotency_key {
            tx.insert_command(key, kind.as_str(), &id, &id, now_us(now))
                .await?;
        }
        apply::write_all(&mut tx, &mut run, decision, now).await?;
        tx.commit().await?;
        self.wake();
        self.snapshot_on(store, run_id).await
    }

    async fn replay_signal(&self, signal: Signal) -> Result<RunSnapshot> {
        let source_id = signal.run_id.ok_or_else(|| {
            EngineError::InvalidOption(vec![problem("run_id", "replay needs a run id")])
        })?;
        let allow = match signal.payload.get("allow_irreversible") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(EngineError::InvalidOption(vec![problem(
                    "payload.allow_irreversible",
                    "must be true or false",
                )]));
            }
        };
        let source = self.snapshot(source_id).await?;
        let def = with_store!(self, s => {
            let mut tx = s.begin_read().await?;
            self.definition_in(&mut tx, &source.definition_hash).await?
        })
        .ok_or_else(|| EngineError::Corrupt {
            what: format!("definition of run {source_id}"),
            message: "the run's pinned definition is missing or corrupt; it cannot be replayed"
                .into(),
        })?;
        let unsafe_steps = decide::replay_review(
            &def.spec,
            source.attempts.iter().map(|a| {
                (
                    a.step.as_str(),
                    a.status,
                    a.outcome.as_ref(),
                    a.node.as_ref(),
                )
            }),
        );
        if !unsafe_steps.is_empty() && !allow {
            return Err(EngineError::UnsafeReplay {
                run_id: source_id.to_string(),
                steps: unsafe_steps,
            });
        }
        let now = self.inner.clock.now();
        let run_id = match &signal.idempotency_key {
            Some(key) => RunId::derived(&["replay", &source_id.to_string(), key]),
            None => RunId::random(),
        };
        let new = NewRun {
            definition: def,
            trigger: source.trigger.clone(),
            input: source.input.clone(),
            queue: source.queue.clone(),
            run_id,
            idempotency_key: None,
            replayed_from: Some(source_id.to_string()),
            parent: None,
            receipt: receipt(&signal, &self.inner.redaction),
            command_key: signal.idempotency_key.clone().map(|k| {
                (
                    k,
                    SignalKind::Replay.as_str().to_owned(),
                    source_id.to_string(),
                )
            }),
            // A replay keeps the schedule window its source fired for.
            context: source
                .context
                .get("schedule")
                .map(|s| Map::from_iter([("schedule".to_owned(), s.clone())]))
                .unwrap_or_default(),
            now,
            trace: None,
            trace_resolved: None,
        };
        self.start_new(new).await
    }

    /// Starts a child run from a running step. The same `child_key` from the same parent step
    /// returns the same child, also across retries of the step.
    ///
    /// # Errors
    ///
    /// [`EngineError::StaleStepContext`] when `parent` is not a running attempt of its run,
    /// [`EngineError::InvalidTransition`] when the parent ended, the errors of `start`, and
    /// [`EngineError::InvalidOption`] for a malformed child key.
    pub async fn start_child_run<'a>(
        &self,
        parent: &StepContext,
        workflow: impl Into<WorkflowRef<'a>>,
        trigger: Option<&str>,
        payload: Value,
        child_key: &str,
        opts: ChildOptions,
    ) -> Result<RunSnapshot> {
        if !valid_name(child_key) {
            return Err(EngineError::InvalidOption(vec![problem(
                "child_key",
                "child keys must match [A-Za-z0-9][A-Za-z0-9_.-]*",
            )]));
        }
        let parent_id: RunId = parent.run_id.parse()?;
        let snapshot = self.snapshot(parent_id).await?;
        if snapshot.is_terminal() {
            return Err(EngineError::InvalidTransition {
                run_id: parent.run_id.clone(),
                status: snapshot.status.as_str().into(),
                command: "start_child".into(),
            });
        }
        let running = snapshot.attempts.iter().any(|a| {
            a.runnable_key == parent.runnable_key
                && a.step == parent.step
                && a.status == AttemptStatus::Claimed
        });
        if !running {
            return Err(EngineError::StaleStepContext {
                run_id: parent.run_id.clone(),
                message: format!(
                    "{} is not a running attempt of step {}",
                    parent.runnable_key, parent.step
                ),
            });
        }
        let now = self.inner.clock.now();
        let mut signal = Signal::new(SignalKind::Start, None, now);
        signal.payload.insert("child_key".into(), json!(child_key));
        signal
            .payload
            .insert("parent_run_id".into(), json!(parent.run_id));
        let opts = StartOptions {
            run_id: Some(RunId::derived(&[&parent.run_id, &parent.step, child_key])),
            idempotency_key: None,
            queue: opts.queue,
        };
        self.refresh_catalog().await?;
        let mut new = self.prepare_start(
            workflow.into(),
            trigger,
            &payload,
            opts,
            now,
            receipt(&signal, &self.inner.redaction),
        )?;
        new.trace = parent
            .trace_parent
            .as_deref()
            .and_then(crate::telemetry::TraceParent::parse);
        new.parent = Some(ParentLink {
            run_id: parent.run_id.clone(),
            step: parent.step.clone(),
            runnable_key: parent.runnable_key.clone(),
            child_key: child_key.to_owned(),
        });
        self.start_new(new).await
    }

    /// The child runs started from a run's steps, oldest first.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn children(&self, run_id: RunId) -> Result<Vec<ChildRun>> {
        let rows = with_store!(self, s => {
            let mut tx = s.begin_read().await?;
            tx.children(&run_id.to_string()).await?
        });
        rows.into_iter()
            .map(|(step, child_key, child)| {
                Ok(ChildRun {
                    step,
                    child_key,
                    run_id: child.parse()?,
                })
            })
            .collect()
    }
}

fn validate_manual(signal: &Signal) -> Result<()> {
    let mut problems = Vec::new();
    let actor_ok = match signal.payload.get("actor") {
        None => !matches!(signal.kind, SignalKind::Approve | SignalKind::Reject),
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => false,
    };
    if !actor_ok {
        problems.push(SpecProblem {
            path: "actor".into(),
            code: if signal.payload.get("actor").is_none() {
                "required".into()
            } else {
                "invalid_actor".into()
            },
            message: format!(
                "{} needs an actor: a non-empty string or object",
                signal.kind.as_str()
            ),
        });
    }
    match signal.payload.get("comment") {
        None => {}
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(_) => problems.push(SpecProblem {
            path: "comment".into(),
            code: "invalid_comment".into(),
            message: "a comment must be a non-empty string".into(),
        }),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EngineError::InvalidOption(problems))
    }
}

/// A child run, as its parent knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildRun {
    /// The parent step that started it.
    pub step: String,
    /// The key naming it within that step.
    pub child_key: String,
    /// The child run.
    pub run_id: RunId,
}
