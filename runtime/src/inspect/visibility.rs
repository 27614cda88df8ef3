//! Who may see what: every read view can be narrowed to an actor's [`Scope`].
//!
//! - `external`: status and shape only (steps, statuses, routes, deadlines).
//! - `operator`: also errors (without their details), attempt timing and owners, and command
//!   types, but no payloads, inputs, outputs, comments, actors, keys or metadata values.
//! - `auditor`: everything.
//!
//! The host maps actors to scopes with a [`VisibilityPolicy`]; a policy that names an unknown
//! scope is an error, never a silent full view.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    AttemptInspection, CommandView, Explanation, RunGraph, RunInspection, RunPage, RunSummary,
};

/// How much of a run an actor may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Status and shape only.
    External,
    /// Also errors, attempt timing and command types; no payloads, outputs or metadata.
    Operator,
    /// Everything.
    Auditor,
}

impl Scope {
    /// The scope as text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::External => "external",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
        }
    }
}

impl FromStr for Scope {
    type Err = VisibilityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "external" => Ok(Self::External),
            "operator" => Ok(Self::Operator),
            "auditor" => Ok(Self::Auditor),
            other => Err(VisibilityError::InvalidScope(other.to_owned())),
        }
    }
}

/// Why a view could not be narrowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VisibilityError {
    /// The policy named a scope that does not exist.
    #[error("invalid visibility scope {0:?}: expected external, operator or auditor")]
    InvalidScope(String),
    /// The policy knows nothing about the actor.
    #[error("the visibility policy has no scope for actor {0:?}")]
    UnknownActor(String),
    /// The policy failed.
    #[error("visibility policy failed: {0}")]
    Policy(String),
}

impl VisibilityError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidScope(_) => "invalid_visibility_scope",
            Self::UnknownActor(_) => "unknown_actor",
            Self::Policy(_) => "invalid_visibility_policy",
        }
    }
}

/// Maps an actor to a scope. Implemented by the host (its roles, its tokens); a fixed
/// [`Scope`] and [`ScopeTable`] are provided.
pub trait VisibilityPolicy {
    /// The scope of `actor`.
    ///
    /// # Errors
    ///
    /// [`VisibilityError`] when the actor has no valid scope.
    fn scope_for(&self, actor: &str) -> Result<Scope, VisibilityError>;
}

impl VisibilityPolicy for Scope {
    fn scope_for(&self, _actor: &str) -> Result<Scope, VisibilityError> {
        Ok(*self)
    }
}

impl<F> VisibilityPolicy for F
where
    F: Fn(&str) -> Result<Scope, VisibilityError>,
{
    fn scope_for(&self, actor: &str) -> Result<Scope, VisibilityError> {
        self(actor)
    }
}

/// A policy from a table of actor -> scope name (as read from configuration), with an
/// optional default for actors not in the table. Scope names are checked when read.
#[derive(Debug, Clone, Default)]
pub struct ScopeTable {
    actors: BTreeMap<String, String>,
    default: Option<String>,
}

impl ScopeTable {
    /// An empty table (every actor unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `actor` the scope named `scope`.
    #[must_use]
    pub fn actor(mut self, actor: impl Into<String>, scope: impl Into<String>) -> Self {
        self.actors.insert(actor.into(), scope.into());
        self
    }

    /// The scope named `scope` for actors not in the table.
    #[must_use]
    pub fn default_scope(mut self, scope: impl Into<String>) -> Self {
        self.default = Some(scope.into());
        self
    }
}

impl VisibilityPolicy for ScopeTable {
    fn scope_for(&self, actor: &str) -> Result<Scope, VisibilityError> {
        match self.actors.get(actor).or(self.default.as_ref()) {
            Some(name) => name.parse(),
            None => Err(VisibilityError::UnknownActor(actor.to_owned())),
        }
    }
}

/// A view that can be narrowed to a scope.
pub trait Redact: Sized {
    /// The view as `scope` may see it.
    #[must_use]
    fn redacted(self, scope: Scope) -> Self;
}

/// Narrows `view` to what `actor` may see under `policy`.
///
/// # Errors
///
/// [`VisibilityError`] when the policy gives no valid scope; the view is not returned.
///
/// # Examples
///
/// ```
/// use squid_mesh::inspect::{Scope, ScopeTable, VisibilityPolicy};
///
/// let policy = ScopeTable::new().actor("ana", "auditor").default_scope("external");
/// assert_eq!(policy.scope_for("ana").unwrap(), Scope::Auditor);
/// assert_eq!(policy.scope_for("bob").unwrap(), Scope::External);
/// let broken = ScopeTable::new().actor("eve", "root");
/// assert_eq!(broken.scope_for("eve").unwrap_err().code(), "invalid_visibility_scope");
/// ```
pub fn redact<V: Redact>(
    view: V,
    actor: &str,
    policy: &impl VisibilityPolicy,
) -> Result<V, VisibilityError> {
    let scope = policy.scope_for(actor)?;
    Ok(view.redacted(scope))
}

/// An error value as `scope` may see it: operators get it without `details`, external
/// actors not at all.
fn error_value(v: Option<Value>, scope: Scope) -> Option<Value> {
    match scope {
        Scope::Auditor => v,
        Scope::External => None,
        Scope::Operator => v.map(|v| strip_details(&v)),
    }
}

fn strip_details(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "details")
                .map(|(k, v)| (k.clone(), strip_details(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn attempt(mut a: AttemptInspection, scope: Scope) -> AttemptInspection {
    if scope == Scope::Auditor {
        return a;
    }
    a.input = None;
    a.output = None;
    match scope {
        Scope::Operator => {
            if let Some(e) = &mut a.error {
                e.details = None;
            }
        }
        _ => {
            a.error = None;
            a.owner = None;
            a.lease_until = None;
            a.claims = 0;
            a.waiting_for_action = None;
        }
    }
    a
}

fn command(c: CommandView, scope: Scope) -> Option<CommandView> {
    match scope {
        Scope::Auditor => Some(c),
        Scope::External => None,
        Scope::Operator => Some(CommandView {
            command: c.command,
            signal_id: c.signal_id,
            idempotency_key: None,
            actor: None,
            comment: None,
            payload: None,
            metadata: None,
            occurred_at: c.occurred_at,
        }),
    }
}

impl Redact for RunInspection {
    fn redacted(mut self, scope: Scope) -> Self {
        if scope == Scope::Auditor {
            return self;
        }
        self.input = None;
        self.context = None;
        self.idempotency_key = None;
        if scope == Scope::External {
            self.schedule = None;
        }
        self.history = None;
        self.error = error_value(self.error.take(), scope);
        if let Some(c) = &mut self.compensation {
            c.failure = error_value(Some(c.failure.take()), scope).unwrap_or(Value::Null);
        }
        self.attempts = std::mem::take(&mut self.attempts)
            .into_iter()
            .map(|a| attempt(a, scope))
            .collect();
        self.commands = std::mem::take(&mut self.commands)
            .into_iter()
            .filter_map(|c| command(c, scope))
            .collect();
        if let Some(p) = &mut self.parent {
            p.child_key = None;
        }
        for c in &mut self.children {
            c.child_key = None;
        }
        for w in &mut self.dynamic_work {
            w.metadata = None;
            if scope == Scope::External {
                w.reason = None;
            }
        }
        self
    }
}

impl Redact for RunGraph {
    fn redacted(mut self, scope: Scope) -> Self {
        if scope == Scope::Auditor {
            return self;
        }
        for n in &mut self.nodes {
            n.input = None;
            n.output = None;
            match scope {
                Scope::Operator => {
                    if let Some(e) = &mut n.error {
                        e.details = None;
                    }
                }
                _ => n.error = None,
            }
            n.attempts = std::mem::take(&mut n.attempts)
                .into_iter()
                .map(|a| attempt(a, scope))
                .collect();
        }
        for c in &mut self.child_links {
            c.child_key = None;
        }
        if scope == Scope::External {
            for o in &mut self.dynamic_work_overlays {
                o.reason = None;
            }
        }
        self
    }
}

/// Keys of explanation details an operator may see; external actors see only counts and
/// statuses.
const OPERATOR_DETAIL_KEYS: &[&str] = &[
    "terminal_status",
    "error_code",
    "compensation_status",
    "kind",
    "paused_at",
    "commands",
    "ok_target",
    "error_target",
    "pending",
    "compensated",
    "runnable_keys",
    "pending_result_count",
    "expired_claim_count",
    "oldest_lease_until",
    "owners",
    "visible_attempt_count",
    "visible_since",
    "waiting_steps",
    "blocking_runnable_keys",
    "claimed_attempt_count",
    "earliest_lease_until",
    "scheduled_attempt_count",
    "next_visible_at",
    "retry",
    "attempt_count",
    "deadline_status",
    "deadline_due_at",
    "deadline_step",
    "deadline_escalation",
    "command_count",
    "latest_command",
    "action",
    "digest",
    "code",
    "waiting_since",
    "checked_at",
    "next_check_at",
    "dynamic_work_count",
    "dynamic_work_keys",
];

const EXTERNAL_DETAIL_KEYS: &[&str] = &[
    "terminal_status",
    "compensation_status",
    "kind",
    "commands",
    "pending",
    "compensated",
    "pending_result_count",
    "expired_claim_count",
    "visible_attempt_count",
    "waiting_steps",
    "claimed_attempt_count",
    "scheduled_attempt_count",
    "next_visible_at",
    "retry",
    "attempt_count",
    "deadline_status",
    "deadline_due_at",
    "deadline_step",
    "dynamic_work_count",
];

const OPERATOR_EVIDENCE_KEYS: &[&str] = &[
    "reason",
    "definition_hash",
    "definition_available",
    "revision",
    "terminal_status",
    "command_counts",
    "attempt_counts",
    "planned_step_count",
    "applied_step_count",
    "next_visible_at",
    "deadline",
    "recovery_policies",
    "parent_run_id",
    "child_run_count",
    "replayed_from",
    "schedule",
    "dynamic_work",
];

const EXTERNAL_EVIDENCE_KEYS: &[&str] = &[
    "reason",
    "definition_hash",
    "revision",
    "terminal_status",
    "attempt_counts",
    "planned_step_count",
    "applied_step_count",
    "dynamic_work",
];

fn keep(map: Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect()
}

impl Redact for Explanation {
    fn redacted(mut self, scope: Scope) -> Self {
        match scope {
            Scope::Auditor => return self,
            Scope::Operator => {
                let dups = self.evidence.get("duplicate_commands").cloned();
                self.details = keep(std::mem::take(&mut self.details), OPERATOR_DETAIL_KEYS);
                self.evidence = keep(std::mem::take(&mut self.evidence), OPERATOR_EVIDENCE_KEYS);
                // Duplicates are grouped by key or payload: operators see only the counts.
                if let Some(Value::Array(items)) = dups {
                    let items: Vec<Value> = items
                        .iter()
                        .map(|d| {
                            serde_json::json!({"command": d.get("command"), "count": d.get("count")})
                        })
                        .collect();
                    self.evidence
                        .insert("duplicate_commands".into(), Value::Array(items));
                }
            }
            Scope::External => {
                self.details = keep(std::mem::take(&mut self.details), EXTERNAL_DETAIL_KEYS);
                self.evidence = keep(std::mem::take(&mut self.evidence), EXTERNAL_EVIDENCE_KEYS);
            }
        }
        self
    }
}

impl Redact for RunSummary {
    /// Summaries carry no payloads; external actors do not see lineage links either.
    fn redacted(mut self, scope: Scope) -> Self {
        if scope == Scope::External {
            self.parent_run_id = None;
            self.replayed_from = None;
        }
        self
    }
}

impl Redact for RunPage {
    fn redacted(mut self, scope: Scope) -> Self {
        self.runs = self.runs.into_iter().map(|r| r.redacted(scope)).collect();
        self
    }
}
