//! Why a run is where it is, and what can be done about it: a pure function of the
//! inspection, so it needs no queries of its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{AttemptInspection, DeadlineStatus, RunInspection};
use crate::actions::Suspension;
use crate::journal::RunStatus;
use crate::plan::StepState;
use crate::spec::Mode;
use crate::vocab::{AttemptStatus, CompensationStatus};

/// The one reason a run is where it is, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The run ended.
    Terminal,
    /// The run is stopped at a pause or approval gate.
    ManualInterventionRequired,
    /// A step failed for good and completed steps are being undone.
    Compensating,
    /// An attempt's outcome is recorded but not applied yet (its worker stopped in between).
    CompletedResultPendingApply,
    /// A claimed attempt's lease expired: a worker will redeliver it.
    ExpiredClaim,
    /// A step's action cannot run yet: its version is not approved in the catalog, or its
    /// key is disabled. The step waits; approving or enabling the action moves it on.
    WaitingForAction,
    /// An attempt is visible and waits for a worker to claim it.
    AttemptVisible,
    /// Steps wait for dependencies that are still running or scheduled.
    WaitingForDependencies,
    /// An attempt is claimed and running.
    AttemptClaimed,
    /// The next attempt (a retry, or a deferred continuation) becomes visible later.
    AttemptScheduledForLater,
    /// Nothing is open, yet the run has not ended.
    Stalled,
}

impl Reason {
    /// The reason as text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminal => "terminal",
            Self::ManualInterventionRequired => "manual_intervention_required",
            Self::Compensating => "compensating",
            Self::CompletedResultPendingApply => "completed_result_pending_apply",
            Self::ExpiredClaim => "expired_claim",
            Self::WaitingForAction => "waiting_for_action",
            Self::AttemptVisible => "attempt_visible",
            Self::WaitingForDependencies => "waiting_for_dependencies",
            Self::AttemptClaimed => "attempt_claimed",
            Self::AttemptScheduledForLater => "attempt_scheduled_for_later",
            Self::Stalled => "stalled",
        }
    }
}

/// Something an operator (or the host) can do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextAction {
    /// Read the outcome (status, error, compensation) of the ended run.
    InspectTerminalRun,
    /// Start a new run from this one's trigger and input (`replay`).
    Replay,
    /// Resume the pause, or approve or reject the approval (`resume`, `approve`, `reject`).
    ResolveManualStep,
    /// Cancel the run (`cancel`).
    CancelRun,
    /// A worker on the run's queue will claim the visible attempt: make sure one runs.
    WaitForWorker,
    /// The next `execute_next` on the queue applies the recorded outcome without re-running it.
    ApplyPendingResult,
    /// The next `execute_next` on the queue redelivers the attempt whose lease expired.
    RecoverExpiredClaim,
    /// Wait for the claimed attempt to finish (or its lease to expire).
    WaitForAttemptCompletion,
    /// Wait until the scheduled attempt becomes visible.
    WaitUntilAttemptVisible,
    /// Approve the action version the step waits for (`squid-mesh actions approve`).
    ApproveAction,
    /// Enable the disabled action the step waits for (`squid-mesh actions enable`).
    EnableAction,
    /// Read the journal: the derived state does not explain the run.
    InspectHistory,
    /// A deadline is overdue or escalated: apply the host's escalation policy.
    ApplyHostEscalationPolicy,
    /// A deadline is due soon: check the deadline policy.
    InspectDeadlinePolicy,
}

/// Why a run is where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Run id.
    pub run_id: String,
    /// Workflow.
    pub workflow: String,
    /// Version label.
    pub version: Option<String>,
    /// Queue.
    pub queue: String,
    /// Run status.
    pub status: RunStatus,
    /// The reason.
    pub reason: Reason,
    /// The step the reason is about.
    pub step: Option<String>,
    /// One sentence.
    pub summary: String,
    /// Facts specific to the reason.
    pub details: Map<String, Value>,
    /// What can be done next, most relevant first.
    pub next_actions: Vec<NextAction>,
    /// Counts and policies behind the explanation.
    pub evidence: Map<String, Value>,
}

fn keys(attempts: &[&AttemptInspection]) -> Value {
    json!(
        attempts
            .iter()
            .map(|a| a.runnable_key.clone())
            .collect::<Vec<_>>()
    )
}

fn first_step(attempts: &[&AttemptInspection]) -> Option<String> {
    attempts.first().map(|a| a.step.clone())
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

impl Explanation {
    /// Explains an inspected run. Pure: the same inspection gives the same explanation.
    pub fn from_inspection(insp: &RunInspection) -> Self {
        let now = insp.as_of;
        let open = |status: AttemptStatus| -> Vec<&AttemptInspection> {
            insp.attempts
                .iter()
                .filter(|a| a.status == status)
                .collect()
        };
        let recorded = open(AttemptStatus::Recorded);
        let claimed = open(AttemptStatus::Claimed);
        let expired: Vec<&AttemptInspection> = insp.expired_claims();
        let live_claims: Vec<&AttemptInspection> = claimed
            .iter()
            .copied()
            .filter(|a| !expired.iter().any(|e| e.runnable_key == a.runnable_key))
            .collect();
        let scheduled = open(AttemptStatus::Scheduled);
        let visible: Vec<&AttemptInspection> = scheduled
            .iter()
            .copied()
            .filter(|a| a.visible_at <= now)
            .collect();
        let later: Vec<&AttemptInspection> = scheduled
            .iter()
            .copied()
            .filter(|a| a.visible_at > now)
            .collect();
        let waiting = waiting_steps(insp);

        let mut next = Vec::new();
        let (reason, step, summary, details) = if insp.terminal {
            next.extend([NextAction::InspectTerminalRun, NextAction::Replay]);
            let mut d = obj(json!({"terminal_status": insp.status.as_str()}));
            if let Some(code) = insp.error.as_ref().and_then(|e| e.get("code")) {
                d.insert("error_code".into(), code.clone());
            }
            if let Some(c) = &insp.compensation {
                d.insert("compensation_status".into(), json!(c.status));
            }
            let step = insp
                .error
                .as_ref()
                .and_then(|e| e.get("step"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let summary = match insp.status {
                RunStatus::Completed => "The run completed.".to_owned(),
                RunStatus::Cancelled => "The run was cancelled.".to_owned(),
                _ => match (&step, &insp.compensation) {
                    (Some(s), Some(c)) => format!(
                        "The run failed at step {s}; compensation ended {}.",
                        c.status
                    ),
                    (Some(s), None) => format!("The run failed at step {s}."),
                    (None, _) => "The run failed.".to_owned(),
                },
            };
            (Reason::Terminal, step, summary, d)
        } else if let Some(m) = &insp.manual {
            next.push(NextAction::ResolveManualStep);
            let commands = match m.kind {
                Suspension::Pause => json!(["resume"]),
                Suspension::Approval => json!(["approve", "reject"]),
            };
            let d = obj(json!({
                "kind": m.kind,
                "paused_at": m.paused_at,
                "commands": commands,
                "ok_target": m.ok_target,
                "error_target": m.error_target,
            }));
            let summary = match m.kind {
                Suspension::Pause => {
                    format!("The run is paused at step {} and waits for resume.", m.step)
                }
                Suspension::Approval => format!(
                    "The run waits for an approval at step {}: approve or reject it.",
                    m.step
                ),
            };
            (
                Reason::ManualInterventionRequired,
                Some(m.step.clone()),
                summary,
                d,
            )
        } else if let Some(c) = insp
            .compensation
            .as_ref()
            .filter(|c| c.status == CompensationStatus::Compensating)
        {
            let comp: Vec<&AttemptInspection> = insp
                .attempts
                .iter()
                .filter(|a| a.is_open() && a.step.starts_with("compensate:"))
                .collect();
            next.push(
                if comp
                    .iter()
                    .any(|a| expired.iter().any(|e| e.runnable_key == a.runnable_key))
                {
                    NextAction::RecoverExpiredClaim
                } else if comp
                    .iter()
                    .any(|a| a.status == AttemptStatus::Scheduled && a.visible_at > now)
                {
                    NextAction::WaitUntilAttemptVisible
                } else if comp.iter().any(|a| a.status == AttemptStatus::Claimed) {
                    NextAction::WaitForAttemptCompletion
                } else {
                    NextAction::WaitForWorker
                },
            );
            let d = obj(json!({
                "pending": c.pending,
                "compensated": c.compensated,
                "runnable_keys": keys(&comp),
            }));
            let step = c.pending.first().cloned();
            let summary = match &step {
                Some(s) => format!(
                    "A step failed for good; the run is undoing step {s} and {} more.",
                    c.pending.len() - 1
                ),
                None => "A step failed for good; the run is finishing its compensation.".to_owned(),
            };
            (Reason::Compensating, step, summary, d)
        } else if !recorded.is_empty() {
            next.push(NextAction::ApplyPendingResult);
            let d = obj(
                json!({"pending_result_count": recorded.len(), "runnable_keys": keys(&recorded)}),
            );
            let s = first_step(&recorded);
            let summary = format!(
                "Step {} finished and its outcome is recorded, but not applied yet; the next worker on queue {} applies it without running the step again.",
                s.as_deref().unwrap_or("?"),
                insp.queue
            );
            (Reason::CompletedResultPendingApply, s, summary, d)
        } else if !expired.is_empty() {
            next.push(NextAction::RecoverExpiredClaim);
            let oldest = expired.iter().filter_map(|a| a.lease_until).min();
            let owners: Vec<Option<String>> = expired.iter().map(|a| a.owner.clone()).collect();
            let d = obj(json!({
                "expired_claim_count": expired.len(),
                "runnable_keys": keys(&expired),
                "oldest_lease_until": oldest,
                "owners": owners,
            }));
            let s = first_step(&expired);
            let summary = format!(
                "The worker running step {} stopped renewing its lease; the next worker on queue {} redelivers the attempt.",
                s.as_deref().unwrap_or("?"),
                insp.queue
            );
            (Reason::ExpiredClaim, s, summary, d)
        } else if let Some((a, w)) = scheduled
            .iter()
            .find_map(|a| a.waiting_for_action.as_ref().map(|w| (*a, w)))
        {
            next.push(if w.code == "action_disabled" {
                NextAction::EnableAction
            } else {
                NextAction::ApproveAction
            });
            let d = obj(json!({
                "action": w.action,
                "digest": w.digest,
                "code": w.code,
                "waiting_since": w.since,
                "checked_at": w.checked_at,
                "next_check_at": a.visible_at,
                "runnable_key": a.runnable_key,
            }));
            let summary = format!(
                "Step {} waits for action {}: {}",
                a.step, w.action, w.message
            );
            (Reason::WaitingForAction, Some(a.step.clone()), summary, d)
        } else if !visible.is_empty() {
            next.push(NextAction::WaitForWorker);
            let d = obj(json!({
                "visible_attempt_count": visible.len(),
                "runnable_keys": keys(&visible),
                "visible_since": visible.iter().map(|a| a.visible_at).min(),
            }));
            let s = first_step(&visible);
            let summary = format!(
                "Step {} is ready and waits for a worker on queue {}.",
                s.as_deref().unwrap_or("?"),
                insp.queue
            );
            (Reason::AttemptVisible, s, summary, d)
        } else if !waiting.is_empty() && (!live_claims.is_empty() || !later.is_empty()) {
            next.push(if !live_claims.is_empty() {
                NextAction::WaitForAttemptCompletion
            } else {
                NextAction::WaitUntilAttemptVisible
            });
            let blocking: Vec<&AttemptInspection> =
                live_claims.iter().chain(later.iter()).copied().collect();
            let (first, deps) = waiting
                .iter()
                .next()
                .map(|(s, d)| (s.clone(), d.clone()))
                .unwrap_or_default();
            let d = obj(json!({
                "waiting_steps": waiting,
                "blocking_runnable_keys": keys(&blocking),
            }));
            let summary = format!("Step {first} waits for {}.", deps.join(", "));
            (Reason::WaitingForDependencies, Some(first), summary, d)
        } else if !live_claims.is_empty() {
            next.push(NextAction::WaitForAttemptCompletion);
            let d = obj(json!({
                "claimed_attempt_count": live_claims.len(),
                "runnable_keys": keys(&live_claims),
                "earliest_lease_until": live_claims.iter().filter_map(|a| a.lease_until).min(),
                "owners": live_claims.iter().map(|a| a.owner.clone()).collect::<Vec<_>>(),
            }));
            let s = first_step(&live_claims);
            let summary = format!(
                "Step {} is claimed by a worker and running.",
                s.as_deref().unwrap_or("?")
            );
            (Reason::AttemptClaimed, s, summary, d)
        } else if !later.is_empty() {
            next.push(NextAction::WaitUntilAttemptVisible);
            let retry = later.iter().any(|a| a.attempt > 1);
            let at = later.iter().map(|a| a.visible_at).min();
            let d = obj(json!({
                "scheduled_attempt_count": later.len(),
                "runnable_keys": keys(&later),
                "next_visible_at": at,
                "retry": retry,
            }));
            let s = first_step(&later);
            let summary = format!(
                "{} of step {} is scheduled for {}.",
                if retry { "A retry" } else { "The next attempt" },
                s.as_deref().unwrap_or("?"),
                at.map(|t| t.to_string()).unwrap_or_default()
            );
            (Reason::AttemptScheduledForLater, s, summary, d)
        } else {
            next.extend([NextAction::InspectHistory, NextAction::Replay]);
            let d = obj(json!({"attempt_count": insp.attempts.len()}));
            let summary =
                "The run has not ended, but no attempt, gate or compensation is open to move it."
                    .to_owned();
            (Reason::Stalled, None, summary, d)
        };

        let mut details = details;
        if let Some(dl) = &insp.deadline {
            details.insert("deadline_status".into(), json!(dl.status));
            details.insert("deadline_due_at".into(), json!(dl.due_at));
            details.insert("deadline_step".into(), json!(dl.step));
            details.insert("deadline_escalation".into(), json!(dl.escalation));
            match dl.status {
                DeadlineStatus::Overdue | DeadlineStatus::Escalated => {
                    next.push(NextAction::ApplyHostEscalationPolicy);
                }
                DeadlineStatus::DueSoon => next.push(NextAction::InspectDeadlinePolicy),
                DeadlineStatus::OnTime => {}
            }
        }
        if !insp.terminal {
            next.push(NextAction::CancelRun);
        }
        if let Some(last) = insp.commands.last() {
            details.insert("command_count".into(), json!(insp.commands.len()));
            details.insert("latest_command".into(), json!(last.command));
        }
        if !insp.dynamic_work.is_empty() {
            details.insert("dynamic_work_count".into(), json!(insp.dynamic_work.len()));
            details.insert(
                "dynamic_work_keys".into(),
                json!(
                    insp.dynamic_work
                        .iter()
                        .map(|w| w.key.as_str())
                        .collect::<Vec<_>>()
                ),
            );
        }

        Self {
            run_id: insp.run_id.to_string(),
            workflow: insp.workflow.clone(),
            version: insp.version.clone(),
            queue: insp.queue.clone(),
            status: insp.status,
            reason,
            step,
            summary,
            details,
            next_actions: next,
            evidence: evidence(insp, reason),
        }
    }
}

/// Steps of a dependency-mode run that are not planned yet, with the dependencies they
/// still wait for.
fn waiting_steps(insp: &RunInspection) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    if insp.mode != Some(Mode::Dependencies) || insp.terminal {
        return out;
    }
    let state = |name: &str| {
        insp.steps
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.state)
    };
    for s in insp
        .steps
        .iter()
        .filter(|s| !s.after.is_empty() && s.state.is_none())
    {
        if s.name.starts_with("compensate:") {
            continue;
        }
        let unmet: Vec<String> = s
            .after
            .iter()
            .filter(|d| state(d) != Some(StepState::Completed))
            .cloned()
            .collect();
        if !unmet.is_empty() {
            out.insert(s.name.clone(), unmet);
        }
    }
    out
}

fn evidence(insp: &RunInspection, reason: Reason) -> Map<String, Value> {
    let mut command_counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in &insp.commands {
        *command_counts.entry(c.command.as_str()).or_default() += 1;
        let key = match &c.idempotency_key {
            Some(k) => format!("key:{k}"),
            None => format!("payload:{}", json!(c.payload)),
        };
        *groups.entry((c.command.to_string(), key)).or_default() += 1;
    }
    let duplicates: Vec<Value> = groups
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|((command, key), n)| json!({"command": command, "group": key, "count": n}))
        .collect();
    let mut attempt_counts: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &insp.attempts {
        *attempt_counts.entry(a.status.as_str()).or_default() += 1;
    }
    let recovery: BTreeMap<&str, Value> = insp
        .steps
        .iter()
        .map(|s| (s.name.as_str(), json!(s.recovery)))
        .collect();
    let planned = insp.steps.iter().filter(|s| s.state.is_some()).count();
    let applied = insp
        .steps
        .iter()
        .filter(|s| matches!(s.state, Some(StepState::Completed | StepState::Failed)))
        .count();
    let mut work_counts: BTreeMap<&str, u64> = BTreeMap::new();
    for w in &insp.dynamic_work {
        *work_counts
            .entry(match w.status {
                super::WorkStatus::Recorded => "recorded",
                super::WorkStatus::Running => "running",
                super::WorkStatus::Completed => "completed",
                super::WorkStatus::Abandoned => "abandoned",
            })
            .or_default() += 1;
    }
    let dynamic_nodes: usize = insp.dynamic_work.iter().map(|w| w.nodes.len()).sum();
    obj(json!({
        "reason": reason.as_str(),
        "dynamic_work": {
            "count": insp.dynamic_work.len(),
            "by_status": work_counts,
            "node_count": dynamic_nodes,
        },
        "definition_hash": insp.definition_hash,
        "definition_available": insp.definition_available,
        "revision": insp.revision,
        "terminal_status": insp.terminal.then(|| insp.status.as_str()),
        "command_counts": command_counts,
        "duplicate_commands": duplicates,
        "attempt_counts": attempt_counts,
        "planned_step_count": planned,
        "applied_step_count": applied,
        "next_visible_at": insp.next_visible_at,
        "deadline": insp.deadline,
        "recovery_policies": recovery,
        "parent_run_id": insp.parent.as_ref().map(|p| p.run_id.clone()),
        "child_run_count": insp.children.len(),
        "replayed_from": insp.replayed_from,
        "schedule": insp.schedule,
    }))
}
