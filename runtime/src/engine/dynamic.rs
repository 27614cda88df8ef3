//! Dynamic work: nodes running approved actions, added to a live run by host code
//! ([`Engine::preview_dynamic_work`], [`Engine::record_dynamic_work`],
//! [`Engine::schedule_dynamic_work`]) or by a running step's action (the `schedule-work`
//! host import, [`StepWork`]).
//!
//! Every way in shares one validation ([`Engine::validated_work`]): stable ids, an origin
//! that is an applied attempt of the run (or, from an action, the running attempt itself),
//! no collision with declared steps or earlier nodes, known and enabled action keys, edges
//! between known nodes without cycles, a bounded node count, bounded JSON. A work is named by
//! its key: repeating exactly the same work changes nothing, another work under the same key
//! is refused. What it may say is decided by the core ([`crate::decide`]): the work is
//! journaled, its nodes planned, its join planned with the nodes' outputs after the last one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Engine;
use super::{EngineError, Lock, Result, apply, existing_run, refusal};
use crate::actions::{ActionKey, StepContext};
use crate::decide::fact::{DynamicEdge, DynamicNode, DynamicOrigin, DynamicWork};
use crate::decide::{self, Event};
use crate::spec::{RetryPolicy, WorkflowSpec, valid_name};
use crate::store::{AttemptRow, RunRow, Store, StoreTx};
use crate::vocab::{AttemptStatus, RunId};

/// Most nodes (the join included) one call may add, unless the engine says otherwise
/// ([`crate::EngineBuilder::max_dynamic_nodes`]); an action's own bound is its
/// `max_dynamic_nodes` limit.
pub const DEFAULT_MAX_DYNAMIC_NODES: u32 = 10_000;

/// Longest work key.
const MAX_KEY_LEN: usize = 200;

/// Dynamic work as host code (or an action) describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicWorkSpec {
    /// The work's key, unique in the run: the same work under the same key is added once.
    pub key: String,
    /// The applied attempt it grows from (host code); an action's work grows from the
    /// action's own attempt and leaves this out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<WorkOrigin>,
    /// The nodes (at least one).
    pub nodes: Vec<DynamicNodeSpec>,
    /// Edges; by default one from the origin step to every node. An edge from one node to
    /// another orders them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<DynamicEdgeSpec>,
    /// A node that runs once every node has succeeded, with their outputs in its input's
    /// `results` (`[{"id", "output"}]`, in node order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<DynamicNodeSpec>,
    /// Why the work is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Let a replay of the run repeat the nodes' effects without review (dynamic nodes are
    /// replay-unsafe by default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_replay: bool,
}

impl DynamicWorkSpec {
    /// Reads a work from JSON text (a work file, an editor's request).
    ///
    /// # Errors
    ///
    /// Every problem found, with its JSON pointer: malformed JSON, unknown or missing fields,
    /// wrong types, nesting deeper than [`crate::json::MAX_DEPTH`].
    pub fn from_json(text: &str) -> std::result::Result<Self, Vec<WorkProblem>> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let code = if e.to_string().contains("recursion") {
                "too_deep"
            } else {
                "invalid_syntax"
            };
            vec![WorkProblem {
                path: String::new(),
                code: code.into(),
                message: e.to_string(),
            }]
        })?;
        Self::from_value(&value)
    }

    /// Reads a work from TOML text.
    ///
    /// # Errors
    ///
    /// As [`DynamicWorkSpec::from_json`].
    pub fn from_toml(text: &str) -> std::result::Result<Self, Vec<WorkProblem>> {
        let value: Value = toml::from_str(text).map_err(|e| {
            vec![WorkProblem {
                path: String::new(),
                code: "invalid_syntax".into(),
                message: e.message().to_owned(),
            }]
        })?;
        Self::from_value(&value)
    }

    /// Reads a work from a JSON value.
    ///
    /// # Errors
    ///
    /// As [`DynamicWorkSpec::from_json`].
    pub fn from_value(value: &Value) -> std::result::Result<Self, Vec<WorkProblem>> {
        if crate::json::depth(value) > crate::json::MAX_DEPTH + 4 {
            return Err(vec![WorkProblem {
                path: String::new(),
                code: "too_deep".into(),
                message: format!(
                    "the work nests deeper than {} levels",
                    crate::json::MAX_DEPTH + 4
                ),
            }]);
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let p = crate::spec::editor::serde_problem("", &e);
            vec![WorkProblem {
                path: p.path,
                code: p.code,
                message: p.message,
            }]
        })
    }

    /// A work under `key` growing from the latest applied attempt of `origin_step`.
    pub fn new(key: impl Into<String>, origin_step: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            origin: Some(WorkOrigin {
                step: origin_step.into(),
                attempt: None,
            }),
            ..Self::default()
        }
    }

    /// Adds a node.
    #[must_use]
    pub fn node(mut self, node: DynamicNodeSpec) -> Self {
        self.nodes.push(node);
        self
    }

    /// Adds an edge from `from` (the origin step or a node) to node `to`.
    #[must_use]
    pub fn edge(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.edges.push(DynamicEdgeSpec {
            id: None,
            from: from.into(),
            to: to.into(),
        });
        self
    }

    /// Sets the join node.
    #[must_use]
    pub fn join(mut self, node: DynamicNodeSpec) -> Self {
        self.join = Some(node);
        self
    }
}

/// The attempt a work grows from: `{"step": name, "attempt": n}`, or just the step's name
/// (its latest applied attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkOrigin {
    /// A declared step of the run.
    pub step: String,
    /// Its attempt number (default: its latest applied attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl<'de> Deserialize<'de> for WorkOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            step: String,
            #[serde(default)]
            attempt: Option<u32>,
        }
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = WorkOrigin;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"a step name, or {"step": name, "attempt": n}"#)
            }

            fn visit_str<E: serde::de::Error>(
                self,
                step: &str,
            ) -> std::result::Result<WorkOrigin, E> {
                Ok(WorkOrigin {
                    step: step.to_owned(),
                    attempt: None,
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<WorkOrigin, A::Error> {
                let full = Full::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(WorkOrigin {
                    step: full.step,
                    attempt: full.attempt,
                })
            }
        }
        d.deserialize_any(Form)
    }
}

/// One node as described.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicNodeSpec {
    /// The node's id, unique in the run (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
    pub id: String,
    /// The approved action it runs.
    pub action: String,
    /// Its input.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub input: Map<String, Value>,
    /// Retries (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Context key the output is stored under (by default it stays on the attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl DynamicNodeSpec {
    /// A node running `action`.
    pub fn new(id: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            action: action.into(),
            ..Self::default()
        }
    }

    /// Sets the input (a JSON object; anything else is an empty input).
    #[must_use]
    pub fn input(mut self, input: Value) -> Self {
        self.input = match input {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self
    }

    /// Retries a failed attempt up to `max_attempts` attempts in all.
    #[must_use]
    pub fn retry(mut self, max_attempts: u32) -> Self {
        self.retry = Some(RetryPolicy {
            max_attempts,
            backoff: None,
        });
        self
    }

    /// Stores the output in the run's context under `key`.
    #[must_use]
    pub fn output(mut self, key: impl Into<String>) -> Self {
        self.output = Some(key.into());
        self
    }
}

/// One edge as described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicEdgeSpec {
    /// Stable id (default `<from>:dynamic:<to>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The origin step or a node.
    pub from: String,
    /// A node.
    pub to: String,
}

/// One problem of a dynamic work, with its JSON pointer into the work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkProblem {
    /// Where, as a JSON pointer: for example `/nodes/3/action`.
    pub path: String,
    /// Stable code: `invalid_key`, `missing_origin`, `unknown_origin`, `origin_not_applied`,
    /// `run_terminal`, `no_nodes`, `too_many_nodes`, `invalid_id`, `duplicate_id`,
    /// `collides_with_step`, `collides_with_node`, `invalid_action_key`, `unknown_action`,
    /// `action_disabled`, `invalid_retry`, `invalid_backoff`, `invalid_output_key`,
    /// `too_deep`, `too_large`, `unknown_node`, `duplicate_edge`, `invalid_edge`, `cycle`,
    /// `key_conflict`, `origin_not_allowed`.
    pub code: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for WorkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{at}: {} ({})", self.message, self.code)
    }
}

/// What adding a work would do, without doing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicWorkPreview {
    /// The run.
    pub run_id: String,
    /// The work as it would be journaled (ids, default edges, pinned digests).
    pub work: DynamicWork,
    /// The graph node the work grows from (its origin step).
    pub origin_node_id: String,
    /// The nodes it adds (the join last).
    pub added_node_ids: Vec<String>,
    /// The edges it adds.
    pub added_edge_ids: Vec<String>,
    /// Whether recording it would append a fact (`false` for an exact repeat).
    pub recordable: bool,
    /// Whether the same work is already in the run under its key.
    pub duplicate: bool,
    /// Things worth knowing that do not stop it.
    pub warnings: Vec<WorkProblem>,
}

/// What recording or scheduling a work did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicWorkReceipt {
    /// The run.
    pub run_id: String,
    /// The work's key.
    pub key: String,
    /// The same work was already there: nothing was written.
    pub duplicate: bool,
    /// Whether its nodes are planned (`false`: recorded for inspection only).
    pub scheduled: bool,
    /// Nodes of the work (the join included).
    pub nodes: u32,
}

/// How a work is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Preview,
    Record,
    Schedule,
}

/// Where a work comes from, for validation.
enum Source<'a> {
    /// Host code: the origin must be an applied attempt.
    Host { max_nodes: u32 },
    /// A running action: the origin is its attempt, which must still be claimed.
    Step {
        ctx: &'a StepContext,
        max_nodes: u32,
    },
}

/// A validated work: what to journal, and whether it repeats one already there.
struct Validated {
    work: DynamicWork,
    duplicate: bool,
    warnings: Vec<WorkProblem>,
}

#[derive(Default)]
struct Problems(Vec<WorkProblem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, code: &str, message: impl Into<String>) {
        self.0.push(WorkProblem {
            path: path.into(),
            code: code.into(),
            message: message.into(),
        });
    }
}

impl Engine {
    /// What adding `work` to the run would do: the normalized work, its graph overlay and
    /// whether it would append anything. Writes nothing.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidDynamicWork`] with every problem and its path;
    /// [`EngineError::RunNotFound`].
    pub async fn preview_dynamic_work(
        &self,
        run_id: RunId,
        work: &DynamicWorkSpec,
    ) -> Result<DynamicWorkPreview> {
        let v = self
            .add_work(run_id, work, Mode::Preview, self.host_source())
            .await?;
        Ok(preview(run_id, v))
    }

    /// Journals `work` for inspection only (`dynamic_work_recorded`): its nodes are drawn in
    /// the run's graph but never run. Repeating the same work changes nothing.
    ///
    /// # Errors
    ///
    /// As [`Engine::preview_dynamic_work`].
    pub async fn record_dynamic_work(
        &self,
        run_id: RunId,
        work: &DynamicWorkSpec,
    ) -> Result<DynamicWorkReceipt> {
        let v = self
            .add_work(run_id, work, Mode::Record, self.host_source())
            .await?;
        Ok(receipt(run_id, &v))
    }

    /// Journals `work` and plans its nodes in one transaction: workers run them like steps
    /// (through the action catalog or registry, each node's action pinned now), the join after
    /// the last node, and the run completes only when every node is applied. A node that
    /// fails for good fails the run (with compensation, like a step). Repeating the same
    /// work changes nothing.
    ///
    /// # Errors
    ///
    /// As [`Engine::preview_dynamic_work`].
    pub async fn schedule_dynamic_work(
        &self,
        run_id: RunId,
        work: &DynamicWorkSpec,
    ) -> Result<DynamicWorkReceipt> {
        let v = self
            .add_work(run_id, work, Mode::Schedule, self.host_source())
            .await?;
        Ok(receipt(run_id, &v))
    }

    /// Schedules work from the running attempt `ctx` (the `schedule-work` host import): the
    /// step's successors wait until the work finishes. `max_nodes` is the action's limit.
    pub(crate) async fn schedule_step_work(
        &self,
        ctx: &StepContext,
        work: &DynamicWorkSpec,
        max_nodes: u32,
    ) -> Result<DynamicWorkReceipt> {
        let run_id: RunId = ctx.run_id.parse()?;
        let source = Source::Step { ctx, max_nodes };
        let v = self.add_work(run_id, work, Mode::Schedule, source).await?;
        Ok(receipt(run_id, &v))
    }

    fn host_source(&self) -> Source<'static> {
        Source::Host {
            max_nodes: self.inner.max_dynamic_nodes,
        }
    }

    async fn add_work(
        &self,
        run_id: RunId,
        work: &DynamicWorkSpec,
        mode: Mode,
        source: Source<'_>,
    ) -> Result<Validated> {
        self.refresh_catalog().await?;
        with_store!(self, s => self.add_work_on(s, run_id, work, mode, source).await)
    }

    async fn add_work_on<S: Store>(
        &self,
        store: &S,
        run_id: RunId,
        spec: &DynamicWorkSpec,
        mode: Mode,
        source: Source<'_>,
    ) -> Result<Validated> {
        let id = run_id.to_string();
        let now = self.inner.clock.now();
        if mode == Mode::Preview {
            let mut tx = store.begin_read().await?;
            let run = existing_run(&mut tx, &id, Lock::None).await?;
            let v = self
                .validated_work(&mut tx, &run, spec, mode, &source)
                .await;
            tx.rollback().await;
            return v;
        }
        let mut tx = store.begin_write().await?;
        let mut run = existing_run(&mut tx, &id, Lock::Update).await?;
        let v = match self
            .validated_work(&mut tx, &run, spec, mode, &source)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tx.rollback().await;
                return Err(e);
            }
        };
        if v.duplicate {
            tx.rollback().await;
            return Ok(v);
        }
        let def = self.definition_in(&mut tx, &run.definition_hash).await?;
        let event = Event::Work {
            work: Box::new(v.work.clone()),
        };
        let decision = decide::decide(
            &apply::run_state(&run)?,
            def.as_deref().map(|d| &d.spec),
            event,
            now,
        )
        .map_err(|r| refusal(&id, "dynamic_work", r))?;
        apply::write_all(&mut tx, &mut run, decision, now).await?;
        tx.commit().await?;
        self.wake();
        Ok(v)
    }

    /// Checks `spec` against the run as it stands: every problem, or the work to journal.
    async fn validated_work<T: StoreTx>(
        &self,
        tx: &mut T,
        run: &RunRow,
        spec: &DynamicWorkSpec,
        mode: Mode,
        source: &Source<'_>,
    ) -> Result<Validated> {
        let mut p = Problems::default();
        let def = self.definition_in(tx, &run.definition_hash).await?;
        let declared = def.as_deref().map(|d| &d.spec);
        let origin = self
            .work_origin(tx, run, spec, source, declared, &mut p)
            .await?;
        let mut earlier: Vec<DynamicWork> = Vec::new();
        for row in tx
            .facts_of_kind(&run.run_id, "dynamic_work_recorded")
            .await?
        {
            if let Ok(decide::fact::Fact::DynamicWorkRecorded { work }) =
                serde_json::from_str(&row.data)
            {
                earlier.push(*work);
            }
        }
        let max_nodes = match source {
            Source::Host { max_nodes } | Source::Step { max_nodes, .. } => *max_nodes,
        };
        // An action's bound counts every node its step added, across calls and retries.
        let already = match (source, &origin) {
            (Source::Step { .. }, Some(o)) => earlier
                .iter()
                .filter(|w| w.origin.step == o.step && w.key != spec.key)
                .map(|w| w.all_nodes().count())
                .sum(),
            _ => 0,
        };
        let scheduled = mode != Mode::Record;
        let from_action = matches!(source, Source::Step { .. });
        let work = self
            .normalized(spec, origin, declared, &earlier, scheduled, &mut p)
            .map(|w| DynamicWork { from_action, ..w });
        let count = spec.nodes.len() + usize::from(spec.join.is_some());
        if count + already > max_nodes as usize {
            p.add(
                "/nodes",
                "too_many_nodes",
                format!(
                    "{count} nodes{} exceed the limit of {max_nodes} per {}",
                    if already > 0 {
                        format!(" (after {already} already added by this step)")
                    } else {
                        String::new()
                    },
                    match source {
                        Source::Host { .. } => "call",
                        Source::Step { .. } => "step",
                    }
                ),
            );
        }
        let repeat = |work: &DynamicWork| {
            earlier
                .iter()
                .any(|w| w.key == work.key && same_work(w, work))
        };
        if run.status.is_terminal() {
            // An exact repeat still answers as one, so a host may retry after the run ended.
            if let Some(work) = work.filter(|w| p.0.is_empty() && repeat(w)) {
                return Ok(duplicate(work));
            }
            return Err(EngineError::InvalidDynamicWork(vec![WorkProblem {
                path: String::new(),
                code: "run_terminal".into(),
                message: format!(
                    "run {} is {}: it takes no more work",
                    run.run_id, run.status
                ),
            }]));
        }
        let Some(work) = work.filter(|_| p.0.is_empty()) else {
            return Err(EngineError::InvalidDynamicWork(p.0));
        };
        if repeat(&work) {
            return Ok(duplicate(work));
        }
        if let Some(w) = earlier.iter().find(|w| w.key == work.key) {
            let what = if w.scheduled == work.scheduled {
                "different nodes or edges"
            } else if w.scheduled {
                "it was scheduled"
            } else {
                "it was recorded for inspection only"
            };
            return Err(EngineError::InvalidDynamicWork(vec![WorkProblem {
                path: "/key".into(),
                code: "key_conflict".into(),
                message: format!(
                    "the run already has a work under key {} ({what}); use another key",
                    work.key
                ),
            }]));
        }
        Ok(Validated {
            work,
            duplicate: false,
            warnings: Vec::new(),
        })
    }

    /// The origin attempt: the running attempt of an action, or an applied attempt named by
    /// host code.
    async fn work_origin<T: StoreTx>(
        &self,
        tx: &mut T,
        run: &RunRow,
        spec: &DynamicWorkSpec,
        source: &Source<'_>,
        declared: Option<&WorkflowSpec>,
        p: &mut Problems,
    ) -> Result<Option<DynamicOrigin>> {
        if let Source::Step { ctx, .. } = source {
            if spec.origin.is_some() {
                p.add(
                    "/origin",
                    "origin_not_allowed",
                    "work scheduled by an action grows from the action's own attempt: leave origin out",
                );
            }
            let running = tx
                .load_attempt(&ctx.runnable_key, Lock::None)
                .await?
                .filter(|a| a.run_id == run.run_id && a.status == AttemptStatus::Claimed);
            if running.is_none() {
                return Err(EngineError::StaleStepContext {
                    run_id: ctx.run_id.clone(),
                    message: format!("{} is not a running attempt", ctx.runnable_key),
                });
            }
            return Ok(Some(DynamicOrigin {
                step: ctx.step.clone(),
                attempt: ctx.attempt,
                runnable_key: ctx.runnable_key.clone(),
            }));
        }
        let Some(origin) = &spec.origin else {
            p.add(
                "/origin",
                "missing_origin",
                "name the applied step attempt the work grows from (origin.step)",
            );
            return Ok(None);
        };
        if declared.is_some_and(|d| d.step(&origin.step).is_none()) {
            p.add(
                "/origin/step",
                "unknown_origin",
                format!("the run's workflow has no step {:?}", origin.step),
            );
            return Ok(None);
        }
        let attempt: Option<AttemptRow> = match origin.attempt {
            Some(n) => {
                let key = format!("{}:{}:{n}", run.run_id, origin.step);
                tx.load_attempt(&key, Lock::None).await?
            }
            None => tx
                .run_attempts(&run.run_id)
                .await?
                .into_iter()
                .filter(|a| a.step == origin.step && a.node.is_none())
                .filter(|a| a.status.is_applied())
                .max_by_key(|a| a.attempt),
        };
        let Some(attempt) = attempt else {
            let what = origin.attempt.map_or_else(
                || "no applied attempt".to_owned(),
                |n| format!("no attempt {n}"),
            );
            p.add(
                "/origin",
                "unknown_origin",
                format!("step {} has {what} in run {}", origin.step, run.run_id),
            );
            return Ok(None);
        };
        if !attempt.status.is_applied() {
            p.add(
                "/origin",
                "origin_not_applied",
                format!(
                    "attempt {} is {}, not applied yet: work grows from an applied attempt",
                    attempt.runnable_key, attempt.status
                ),
            );
            return Ok(None);
        }
        Ok(Some(DynamicOrigin {
            step: origin.step.clone(),
            attempt: u32::try_from(attempt.attempt).unwrap_or(u32::MAX),
            runnable_key: attempt.runnable_key,
        }))
    }

    /// The work to journal, with its problems added to `p` (`None` when it cannot be built).
    fn normalized(
        &self,
        spec: &DynamicWorkSpec,
        origin: Option<DynamicOrigin>,
        declared: Option<&WorkflowSpec>,
        earlier: &[DynamicWork],
        scheduled: bool,
        p: &mut Problems,
    ) -> Option<DynamicWork> {
        if spec.key.is_empty()
            || spec.key.len() > MAX_KEY_LEN
            || spec.key.chars().any(char::is_control)
        {
            p.add(
                "/key",
                "invalid_key",
                format!("the work key must be 1 to {MAX_KEY_LEN} printable characters"),
            );
        }
        if spec.nodes.is_empty() {
            p.add("/nodes", "no_nodes", "a work needs at least one node");
        }
        for (at, value) in [
            ("/metadata", Value::Object(spec.metadata.clone())),
            (
                "/reason",
                Value::String(spec.reason.clone().unwrap_or_default()),
            ),
        ] {
            check_json(p, at, &value);
        }
        let taken: BTreeSet<&str> = earlier
            .iter()
            .filter(|w| w.key != spec.key)
            .flat_map(|w| w.all_nodes().map(|n| n.id.as_str()))
            .collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        let all = spec
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("/nodes/{i}"), n))
            .chain(spec.join.iter().map(|n| ("/join".to_owned(), n)));
        let mut join = None;
        for (at, n) in all {
            let node = self.node(p, &at, n, declared, &taken, &mut seen, scheduled);
            if at == "/join" {
                join = node;
            } else if let Some(node) = node {
                nodes.push(node);
            }
        }
        let origin = origin?;
        let edges = edges(p, spec, &origin.step);
        Some(DynamicWork {
            key: spec.key.clone(),
            origin,
            nodes,
            edges,
            join,
            scheduled,
            from_action: false,
            allow_replay: spec.allow_replay,
            reason: spec.reason.clone(),
            metadata: spec.metadata.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn node<'a>(
        &self,
        p: &mut Problems,
        at: &str,
        n: &'a DynamicNodeSpec,
        declared: Option<&WorkflowSpec>,
        taken: &BTreeSet<&str>,
        seen: &mut BTreeSet<&'a str>,
        scheduled: bool,
    ) -> Option<DynamicNode> {
        let before = p.0.len();
        if !valid_name(&n.id) || n.id == "complete" {
            p.add(
                format!("{at}/id"),
                "invalid_id",
                format!("node id {:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*", n.id),
            );
        } else if !seen.insert(n.id.as_str()) {
            p.add(
                format!("{at}/id"),
                "duplicate_id",
                format!("node id {} is used twice in this work", n.id),
            );
        } else if declared.is_some_and(|d| d.step(&n.id).is_some()) {
            p.add(
                format!("{at}/id"),
                "collides_with_step",
                format!("node id {} is a declared step of the workflow", n.id),
            );
        } else if taken.contains(n.id.as_str()) {
            p.add(
                format!("{at}/id"),
                "collides_with_node",
                format!("node id {} belongs to an earlier work of the run", n.id),
            );
        }
        let digest = match ActionKey::new(&n.action) {
            Err(e) => {
                p.add(format!("{at}/action"), "invalid_action_key", e.to_string());
                None
            }
            Ok(key) => match self.current_digest(&key) {
                Ok(d) => Some(d.to_string()),
                Err(EngineError::Action(crate::actions::ActionError::Disabled { .. })) => {
                    p.add(
                        format!("{at}/action"),
                        "action_disabled",
                        format!("action {key} is disabled"),
                    );
                    None
                }
                Err(_) => {
                    p.add(
                        format!("{at}/action"),
                        "unknown_action",
                        format!("action {key} is not approved (neither in the registry nor in the catalog)"),
                    );
                    None
                }
            },
        };
        check_json(p, &format!("{at}/input"), &Value::Object(n.input.clone()));
        check_json(
            p,
            &format!("{at}/metadata"),
            &Value::Object(n.metadata.clone()),
        );
        if let Some(r) = &n.retry {
            for (field, code, message) in crate::spec::retry_problems(r) {
                p.add(
                    format!("{at}/retry/{}", field.replace('.', "/")),
                    code,
                    message,
                );
            }
        }
        if n.output.as_deref().is_some_and(str::is_empty) {
            p.add(
                format!("{at}/output"),
                "invalid_output_key",
                "the output key must not be empty",
            );
        }
        (p.0.len() == before).then(|| DynamicNode {
            id: n.id.clone(),
            action: n.action.clone(),
            digest: digest.filter(|_| scheduled),
            input: n.input.clone(),
            retry: n.retry.clone(),
            output: n.output.clone(),
            metadata: n.metadata.clone(),
        })
    }
}

/// A value from outside: bounded depth and size.
fn check_json(p: &mut Problems, at: &str, value: &Value) {
    /// Largest serialized input, metadata or reason of one node or work.
    const MAX_BYTES: usize = 1 << 20;
    if crate::json::depth(value) > crate::json::MAX_DEPTH {
        p.add(
            at,
            "too_deep",
            format!("nested more than {} levels deep", crate::json::MAX_DEPTH),
        );
    } else if serde_json::to_vec(value).map_or(0, |v| v.len()) > MAX_BYTES {
        p.add(at, "too_large", format!("larger than {MAX_BYTES} bytes"));
    }
}

/// The work's edges: the given ones checked (known ends, unique ids, no cycle), one from the
/// origin step to every node no edge leads to, and one from every node to the join.
fn edges(p: &mut Problems, spec: &DynamicWorkSpec, origin: &str) -> Vec<DynamicEdge> {
    let nodes: BTreeSet<&str> = spec.nodes.iter().map(|n| n.id.as_str()).collect();
    let join = spec.join.as_ref().map(|j| j.id.as_str());
    let id = |from: &str, to: &str| format!("{from}:dynamic:{to}");
    let mut out: Vec<DynamicEdge> = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, e) in spec.edges.iter().enumerate() {
        let at = format!("/edges/{i}");
        if e.from != origin && !nodes.contains(e.from.as_str()) {
            p.add(
                format!("{at}/from"),
                "unknown_node",
                format!(
                    "edge source {:?} is neither the origin step {origin} nor a node of the work",
                    e.from
                ),
            );
        }
        if !nodes.contains(e.to.as_str()) {
            let why = if Some(e.to.as_str()) == join {
                "the join follows every node by itself"
            } else {
                "it is not a node of the work"
            };
            p.add(
                format!("{at}/to"),
                "unknown_node",
                format!("edge target {:?}: {why}", e.to),
            );
        }
        if e.from == e.to {
            p.add(
                at.clone(),
                "invalid_edge",
                "an edge cannot loop on one node",
            );
        }
        let eid = e.id.clone().unwrap_or_else(|| id(&e.from, &e.to));
        if !ids.insert(eid.clone()) {
            p.add(
                format!("{at}/id"),
                "duplicate_edge",
                format!("edge id {eid} is used twice"),
            );
        }
        out.push(DynamicEdge {
            id: eid,
            from: e.from.clone(),
            to: e.to.clone(),
        });
    }
    if let Some(node) = cycle(&nodes, &out) {
        p.add(
            "/edges",
            "cycle",
            format!("the edges between nodes form a cycle through {node}"),
        );
    }
    // Every node no edge leads to hangs from the origin step.
    let targets: BTreeSet<String> = out.iter().map(|e| e.to.clone()).collect();
    for n in spec.nodes.iter().filter(|n| !targets.contains(&n.id)) {
        let eid = id(origin, &n.id);
        if ids.insert(eid.clone()) {
            out.push(DynamicEdge {
                id: eid,
                from: origin.to_owned(),
                to: n.id.clone(),
            });
        }
    }
    if let Some(j) = join {
        for n in &spec.nodes {
            out.push(DynamicEdge {
                id: id(&n.id, j),
                from: n.id.clone(),
                to: j.to_owned(),
            });
        }
    }
    out
}

/// A node on a cycle of the edges between nodes, if any (Kahn's algorithm, no recursion).
fn cycle(nodes: &BTreeSet<&str>, edges: &[DynamicEdge]) -> Option<String> {
    let mut indegree: BTreeMap<&str, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in edges {
        if nodes.contains(e.from.as_str()) && nodes.contains(e.to.as_str()) {
            *indegree.entry(e.to.as_str()).or_default() += 1;
            next.entry(e.from.as_str()).or_default().push(e.to.as_str());
        }
    }
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    while let Some(n) = ready.pop() {
        for m in next.get(n).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(m) {
                *d -= 1;
                if *d == 0 {
                    ready.push(m);
                }
            }
        }
        indegree.remove(n);
    }
    indegree.keys().next().map(|n| (*n).to_owned())
}

/// An exact repeat of a work already in the run: nothing to write.
fn duplicate(work: DynamicWork) -> Validated {
    Validated {
        warnings: vec![WorkProblem {
            path: "/key".into(),
            code: "duplicate".into(),
            message: format!(
                "work {} is already in the run; adding it again changes nothing",
                work.key
            ),
        }],
        work,
        duplicate: true,
    }
}

/// Whether two works are the same work (digests aside: a repeat may resolve a newer one).
fn same_work(a: &DynamicWork, b: &DynamicWork) -> bool {
    fn plain(w: &DynamicWork) -> DynamicWork {
        let mut w = w.clone();
        for n in w.nodes.iter_mut().chain(w.join.as_mut()) {
            n.digest = None;
        }
        w.origin.attempt = 0;
        w.origin.runnable_key.clear();
        w
    }
    plain(a) == plain(b)
}

fn preview(run_id: RunId, v: Validated) -> DynamicWorkPreview {
    DynamicWorkPreview {
        run_id: run_id.to_string(),
        origin_node_id: v.work.origin.step.clone(),
        added_node_ids: v.work.all_nodes().map(|n| n.id.clone()).collect(),
        added_edge_ids: v.work.edges.iter().map(|e| e.id.clone()).collect(),
        recordable: !v.duplicate,
        duplicate: v.duplicate,
        warnings: v.warnings,
        work: v.work,
    }
}

fn receipt(run_id: RunId, v: &Validated) -> DynamicWorkReceipt {
    DynamicWorkReceipt {
        run_id: run_id.to_string(),
        key: v.work.key.clone(),
        duplicate: v.duplicate,
        scheduled: v.work.scheduled,
        nodes: u32::try_from(v.work.all_nodes().count()).unwrap_or(u32::MAX),
    }
}

/// The `schedule-work` host import, bound to one running attempt.
#[derive(Debug)]
pub(crate) struct StepWork {
    pub(crate) engine: Engine,
    pub(crate) ctx: StepContext,
}

impl crate::actions::WorkScheduler for StepWork {
    fn schedule_work(
        &self,
        work: Value,
        max_nodes: u32,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<Value, String>> + Send + 'static>,
    > {
        let engine = self.engine.clone();
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let spec: DynamicWorkSpec =
                serde_json::from_value(work).map_err(|e| format!("invalid_dynamic_work: {e}"))?;
            match engine.schedule_step_work(&ctx, &spec, max_nodes).await {
                Ok(r) => Ok(serde_json::to_value(r).unwrap_or(Value::Null)),
                Err(EngineError::InvalidDynamicWork(problems)) => Err(format!(
                    "invalid_dynamic_work: {}",
                    serde_json::to_string(&problems).unwrap_or_default()
                )),
                Err(e) => Err(format!("{}: {e}", e.code())),
            }
        })
    }
}
