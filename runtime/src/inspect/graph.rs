//! The run graph: nodes (steps and compensations) and edges (transitions, dependencies and
//! compensations) with their statuses, in a stable JSON form for user interfaces.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{AttemptInspection, DeadlineState, Recovery, RunInspection};
use crate::actions::StepError;
use crate::journal::RunStatus;
use crate::plan::StepState;
use crate::spec::{Condition, Outcome, WorkflowSpec};
use crate::vocab::AttemptStatus;

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Not planned yet (the run is still going).
    Waiting,
    /// Never reached: the run ended without planning it.
    Skipped,
    /// An attempt is waiting for a worker.
    Pending,
    /// An attempt is claimed (or its outcome awaits application).
    Running,
    /// A failed attempt's retry is scheduled.
    Retrying,
    /// The run is stopped at this gate.
    Paused,
    /// Succeeded.
    Completed,
    /// Failed for good.
    Failed,
    /// Completed, then undone by its compensation.
    Compensated,
    /// Planned, then abandoned because the run ended.
    Cancelled,
    /// A node of dynamic work recorded for inspection only: it never runs.
    Recorded,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A workflow step.
    Step,
    /// The compensation of a step.
    Compensation,
    /// A node of dynamic work.
    Dynamic,
    /// The join of a dynamic work.
    Join,
}

/// A node of the run graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    /// The step name (compensations: `compensate:<step>`).
    pub id: String,
    /// Step or compensation.
    pub kind: NodeKind,
    /// Action key or `builtin:<kind>`.
    pub action: String,
    /// Status.
    pub status: NodeStatus,
    /// Whether the run is here now.
    pub current: bool,
    /// Number of attempts so far.
    pub attempt_count: u32,
    /// Recovery policy.
    pub recovery: Recovery,
    /// The open deadline, evaluated now.
    pub deadline: Option<DeadlineState>,
    /// Input of the latest attempt (with `include_history`).
    pub input: Option<Map<String, Value>>,
    /// Output of the success (with `include_history`).
    pub output: Option<Map<String, Value>>,
    /// Error of the latest failed attempt (with `include_history`).
    pub error: Option<StepError>,
    /// Every attempt (with `include_history`).
    pub attempts: Vec<AttemptInspection>,
}

/// What an edge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// An `on ok|error` transition.
    Transition,
    /// An `after` dependency.
    Dependency,
    /// A step to its compensation.
    Compensation,
    /// An edge of a dynamic work's overlay.
    Dynamic,
}

/// Where an edge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeStatus {
    /// Taken.
    Selected,
    /// Not taken, and will not be.
    Skipped,
    /// Not decided yet.
    Pending,
    /// Cannot be taken: its source failed.
    Blocked,
}

/// An edge of the run graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// Stable id: `from:ok:to`, `from:ok:to:condition:<index>`, `from:dependency:to`,
    /// `from:compensation:compensate:from`.
    pub id: String,
    /// Source node.
    pub from: String,
    /// Target node; `complete` ends the run.
    pub to: String,
    /// Transition, dependency or compensation.
    pub kind: EdgeKind,
    /// Status.
    pub status: EdgeStatus,
    /// `ok` or `error` (transitions).
    pub outcome: Option<Outcome>,
    /// The condition of a conditional transition.
    pub condition: Option<Condition>,
    /// Recovery label of an error route.
    pub recovery: Option<String>,
}

/// A child run started from a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildLink {
    /// The parent step.
    pub from: String,
    /// The child run.
    pub child_run_id: String,
    /// The child key (auditor scope only).
    pub child_key: Option<String>,
    /// The child's workflow.
    pub workflow: Option<String>,
    /// The child's status.
    pub status: Option<RunStatus>,
}

/// What one dynamic work adds to the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicOverlay {
    /// The work's key.
    pub key: String,
    /// Where it stands.
    pub status: super::WorkStatus,
    /// The node it grows from (its origin step).
    pub origin_node_id: String,
    /// The nodes it adds (the join last).
    pub node_ids: Vec<String>,
    /// The edges it adds.
    pub edge_ids: Vec<String>,
    /// Why it was added (not shown to external viewers).
    pub reason: Option<String>,
}

/// The graph of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunGraph {
    /// Run id.
    pub run_id: String,
    /// Workflow.
    pub workflow: String,
    /// Version label.
    pub version: Option<String>,
    /// Run status.
    pub status: RunStatus,
    /// Whether the run has ended.
    pub terminal: bool,
    /// Nodes, in declaration order, compensations last.
    pub nodes: Vec<GraphNode>,
    /// Edges, in declaration order.
    pub edges: Vec<GraphEdge>,
    /// Where the run is now (empty once it ended).
    pub current_node_ids: Vec<String>,
    /// Child runs started from nodes.
    pub child_links: Vec<ChildLink>,
    /// The dynamic works drawn over the declared graph (their nodes and edges are in
    /// `nodes` and `edges`, after the declared ones).
    pub dynamic_work_overlays: Vec<DynamicOverlay>,
    /// Whether the pinned definition was available; without it the nodes come from the
    /// attempts and there are no edges.
    pub definition_available: bool,
}

impl RunGraph {
    /// The stable JSON form for user interfaces.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&GraphNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The edge with this id.
    pub fn edge(&self, id: &str) -> Option<&GraphEdge> {
        self.edges.iter().find(|e| e.id == id)
    }
}

fn node_status(
    insp: &RunInspection,
    id: &str,
    state: Option<StepState>,
    latest: Option<&AttemptInspection>,
) -> NodeStatus {
    if insp.manual.as_ref().is_some_and(|m| m.step == id) {
        return NodeStatus::Paused;
    }
    let compensated = insp
        .compensation
        .as_ref()
        .is_some_and(|c| c.compensated.iter().any(|s| s == id));
    if compensated {
        return NodeStatus::Compensated;
    }
    match state {
        Some(StepState::Completed) => return NodeStatus::Completed,
        Some(StepState::Failed) => return NodeStatus::Failed,
        _ => {}
    }
    match latest {
        None if insp.terminal => NodeStatus::Skipped,
        None => NodeStatus::Waiting,
        Some(a) => match a.status {
            AttemptStatus::Claimed | AttemptStatus::Recorded => NodeStatus::Running,
            AttemptStatus::Scheduled if a.attempt > 1 => NodeStatus::Retrying,
            AttemptStatus::Scheduled => NodeStatus::Pending,
            AttemptStatus::Cancelled => NodeStatus::Cancelled,
            AttemptStatus::Succeeded => NodeStatus::Completed,
            AttemptStatus::Failed => NodeStatus::Failed,
            // A suspended attempt whose gate is closed was resolved.
            AttemptStatus::Suspended => NodeStatus::Completed,
        },
    }
}

/// What every node of one graph is built from, computed once.
struct Nodes<'a> {
    insp: &'a RunInspection,
    /// Attempts by step, oldest first.
    by_step: HashMap<&'a str, Vec<&'a AttemptInspection>>,
    current: Vec<String>,
    history: bool,
    /// The kind of every dynamic node, by id.
    dynamic: HashMap<&'a str, NodeKind>,
}

fn kind_of(n: &Nodes<'_>, id: &str) -> NodeKind {
    if let Some(kind) = n.dynamic.get(id) {
        return *kind;
    }
    if id.starts_with("compensate:") {
        NodeKind::Compensation
    } else {
        NodeKind::Step
    }
}

fn make_node(
    n: &Nodes<'_>,
    id: &str,
    action: String,
    state: Option<StepState>,
    recovery: Recovery,
) -> GraphNode {
    let (insp, history) = (n.insp, n.history);
    let attempts: &[&AttemptInspection] = n.by_step.get(id).map_or(&[], Vec::as_slice);
    let latest = attempts.iter().max_by_key(|a| a.attempt).copied();
    GraphNode {
        id: id.to_owned(),
        kind: kind_of(n, id),
        action,
        status: node_status(insp, id, state, latest),
        current: n.current.iter().any(|c| c == id),
        attempt_count: u32::try_from(attempts.len()).unwrap_or(u32::MAX),
        recovery,
        deadline: if insp.manual.as_ref().is_some_and(|m| m.step == id) {
            insp.manual.as_ref().and_then(|m| m.deadline.clone())
        } else {
            latest.and_then(|a| a.deadline_state.clone())
        },
        input: history
            .then(|| latest.and_then(|a| a.input.clone()))
            .flatten(),
        output: history
            .then(|| attempts.iter().find_map(|a| a.output.clone()))
            .flatten(),
        error: history
            .then(|| attempts.iter().rev().find_map(|a| a.error.clone()))
            .flatten(),
        attempts: if history {
            attempts.iter().map(|a| (*a).clone()).collect()
        } else {
            Vec::new()
        },
    }
}

fn transition_edges(
    insp: &RunInspection,
    spec: &WorkflowSpec,
    nodes: &[GraphNode],
) -> Vec<GraphEdge> {
    let status_of = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| n.status);
    spec.transitions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let on = match t.on {
                Outcome::Ok => "ok",
                Outcome::Error => "error",
            };
            let id = match &t.condition {
                Some(_) => format!("{}:{on}:{}:condition:{i}", t.from, t.to),
                None => format!("{}:{on}:{}", t.from, t.to),
            };
            // The latest decision of the source step settles its edges.
            let decision = insp.decisions.iter().rev().find(|d| d.step == t.from);
            let status = match decision {
                Some(d) if d.transition == Some(i) => EdgeStatus::Selected,
                Some(_) => EdgeStatus::Skipped,
                None => match status_of(&t.from) {
                    Some(NodeStatus::Completed | NodeStatus::Compensated) => {
                        if t.on == Outcome::Ok {
                            EdgeStatus::Selected
                        } else {
                            EdgeStatus::Skipped
                        }
                    }
                    Some(NodeStatus::Failed) => {
                        if t.on == Outcome::Error {
                            EdgeStatus::Selected
                        } else {
                            EdgeStatus::Skipped
                        }
                    }
                    _ if insp.terminal => EdgeStatus::Skipped,
                    _ => EdgeStatus::Pending,
                },
            };
            GraphEdge {
                id,
                from: t.from.clone(),
                to: t.to.clone(),
                kind: EdgeKind::Transition,
                status,
                outcome: Some(t.on),
                condition: t.condition.clone(),
                recovery: t.recovery.clone(),
            }
        })
        .collect()
}

/// Builds the graph of an inspected run. Pure.
pub(super) fn build(insp: &RunInspection, spec: Option<&WorkflowSpec>, history: bool) -> RunGraph {
    let mut by_step: HashMap<&str, Vec<&AttemptInspection>> = HashMap::new();
    // Steps in the order their first attempt appears (the nodes without a definition).
    let mut seen: Vec<&str> = Vec::new();
    for a in &insp.attempts {
        let list = by_step.entry(a.step.as_str()).or_default();
        if list.is_empty() {
            seen.push(a.step.as_str());
        }
        list.push(a);
    }
    let mut dynamic = HashMap::new();
    for w in &insp.dynamic_work {
        for x in &w.nodes {
            let kind = if w.join.as_deref() == Some(x.id.as_str()) {
                NodeKind::Join
            } else {
                NodeKind::Dynamic
            };
            dynamic.insert(x.id.as_str(), kind);
        }
    }
    let n = Nodes {
        insp,
        by_step,
        current: insp.current_steps(),
        history,
        dynamic,
    };
    let mut edges = Vec::new();
    let mut nodes: Vec<GraphNode> = if spec.is_some() {
        insp.steps
            .iter()
            .map(|s| make_node(&n, &s.name, s.action.clone(), s.state, s.recovery.clone()))
            .collect()
    } else {
        // Without the definition, the attempts are all we know.
        seen.iter()
            .filter(|id| !n.dynamic.contains_key(**id))
            .map(|id| make_node(&n, id, String::new(), None, Recovery::default()))
            .collect()
    };
    if let Some(spec) = spec {
        edges.extend(transition_edges(insp, spec, &nodes));
        let status_of = |id: &str| nodes.iter().find(|n| n.id == id).map(|n| n.status);
        for s in &spec.steps {
            for dep in &s.after {
                let status = match status_of(dep) {
                    Some(NodeStatus::Completed | NodeStatus::Compensated) => EdgeStatus::Selected,
                    Some(NodeStatus::Failed | NodeStatus::Cancelled) => EdgeStatus::Blocked,
                    _ if insp.terminal => EdgeStatus::Blocked,
                    _ => EdgeStatus::Pending,
                };
                edges.push(GraphEdge {
                    id: format!("{dep}:dependency:{}", s.name),
                    from: dep.clone(),
                    to: s.name.clone(),
                    kind: EdgeKind::Dependency,
                    status,
                    outcome: None,
                    condition: None,
                    recovery: None,
                });
            }
        }
        for s in spec.steps.iter().filter(|s| s.compensate.is_some()) {
            let to = format!("compensate:{}", s.name);
            let planned = insp.attempts.iter().any(|a| a.step == to);
            let status = if planned {
                EdgeStatus::Selected
            } else if insp.terminal {
                EdgeStatus::Skipped
            } else {
                EdgeStatus::Pending
            };
            edges.push(GraphEdge {
                id: format!("{}:compensation:{to}", s.name),
                from: s.name.clone(),
                to,
                kind: EdgeKind::Compensation,
                status,
                outcome: Some(Outcome::Error),
                condition: None,
                recovery: Some("compensation".into()),
            });
        }
    }
    let mut overlays = Vec::new();
    let mut status_by_id: HashMap<String, NodeStatus> =
        nodes.iter().map(|x| (x.id.clone(), x.status)).collect();
    for w in &insp.dynamic_work {
        let recorded = w.status == super::WorkStatus::Recorded;
        for node in &w.nodes {
            let mut g = make_node(&n, &node.id, node.action.clone(), None, Recovery::default());
            if recorded {
                g.status = NodeStatus::Recorded;
            }
            status_by_id.insert(g.id.clone(), g.status);
            nodes.push(g);
        }
        for e in &w.edges {
            let from = status_by_id.get(&e.from).copied();
            let status = match from {
                _ if recorded => EdgeStatus::Skipped,
                Some(NodeStatus::Completed | NodeStatus::Compensated) => EdgeStatus::Selected,
                Some(NodeStatus::Failed | NodeStatus::Cancelled) => EdgeStatus::Blocked,
                // The origin step's edges exist because the work was added.
                _ if e.from == w.origin_step => EdgeStatus::Selected,
                _ if insp.terminal => EdgeStatus::Blocked,
                _ => EdgeStatus::Pending,
            };
            edges.push(GraphEdge {
                id: e.id.clone(),
                from: e.from.clone(),
                to: e.to.clone(),
                kind: EdgeKind::Dynamic,
                status,
                outcome: None,
                condition: None,
                recovery: None,
            });
        }
        overlays.push(DynamicOverlay {
            key: w.key.clone(),
            status: w.status,
            origin_node_id: w.origin_step.clone(),
            node_ids: w.nodes.iter().map(|x| x.id.clone()).collect(),
            edge_ids: w.edges.iter().map(|e| e.id.clone()).collect(),
            reason: w.reason.clone(),
        });
    }
    let child_links = insp
        .children
        .iter()
        .map(|c| ChildLink {
            from: c.step.clone(),
            child_run_id: c.run_id.clone(),
            child_key: c.child_key.clone(),
            workflow: c.workflow.clone(),
            status: c.status,
        })
        .collect();
    RunGraph {
        run_id: insp.run_id.to_string(),
        workflow: insp.workflow.clone(),
        version: insp.version.clone(),
        status: insp.status,
        terminal: insp.terminal,
        current_node_ids: insp.current_steps(),
        nodes,
        edges,
        child_links,
        dynamic_work_overlays: overlays,
        definition_available: spec.is_some(),
    }
}
