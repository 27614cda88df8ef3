//! Listing runs: filters over indexed columns, newest first, keyset pagination, summaries
//! without payloads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Deadline, DeadlineState, most_urgent};
use crate::engine::{EngineError, Result};
use crate::journal::{ManualGate, RunStatus};
use crate::plan::StepState;
use crate::spec::SpecProblem;
use crate::store::{DeadlineRow, SummaryRow};
use crate::vocab::Timestamp;

/// Which runs to list. Every filter is optional; they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunFilter {
    /// Workflow name (exact).
    pub workflow: Option<String>,
    /// Statuses (any of).
    #[serde(default)]
    pub statuses: Vec<RunStatus>,
    /// Queue (exact).
    pub queue: Option<String>,
    /// Created at or after.
    pub created_from: Option<Timestamp>,
    /// Created before.
    pub created_before: Option<Timestamp>,
    /// Case-insensitive text over run id, workflow, trigger and step names.
    pub search: Option<String>,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`).
impl RunFilter {
    /// Sets `statuses`.
    #[must_use]
    pub fn statuses(mut self, value: Vec<RunStatus>) -> Self {
        self.statuses = value;
        self
    }

    /// Sets `created_from`.
    #[must_use]
    pub fn created_from(mut self, value: Timestamp) -> Self {
        self.created_from = Some(value);
        self
    }

    /// Sets `created_before`.
    #[must_use]
    pub fn created_before(mut self, value: Timestamp) -> Self {
        self.created_before = Some(value);
        self
    }
}

impl RunFilter {
    /// Runs of `workflow`.
    #[must_use]
    pub fn workflow(mut self, workflow: impl Into<String>) -> Self {
        self.workflow = Some(workflow.into());
        self
    }

    /// Runs in `status` (adds to the statuses already asked for).
    #[must_use]
    pub fn status(mut self, status: RunStatus) -> Self {
        self.statuses.push(status);
        self
    }

    /// Runs on `queue`.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Runs created in `[from, before)`.
    #[must_use]
    pub fn created_between(mut self, from: Option<Timestamp>, before: Option<Timestamp>) -> Self {
        self.created_from = from;
        self.created_before = before;
        self
    }

    /// Runs whose id, workflow, trigger or a step name contains `text`.
    #[must_use]
    pub fn search(mut self, text: impl Into<String>) -> Self {
        self.search = Some(text.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut add = |path: &str, code: &str, message: String| {
            problems.push(SpecProblem {
                path: path.into(),
                code: code.into(),
                message,
            });
        };
        if self
            .workflow
            .as_deref()
            .is_some_and(|w| w.trim().is_empty())
        {
            add(
                "filter.workflow",
                "invalid_filter",
                "workflow must not be empty".into(),
            );
        }
        if self.queue.as_deref().is_some_and(|q| q.trim().is_empty()) {
            add(
                "filter.queue",
                "invalid_filter",
                "queue must not be empty".into(),
            );
        }
        if let Some(s) = &self.search {
            if s.trim().is_empty() {
                add(
                    "filter.search",
                    "invalid_filter",
                    "search text must not be empty".into(),
                );
            } else if s.len() > 200 {
                add(
                    "filter.search",
                    "invalid_filter",
                    "search text is longer than 200 bytes".into(),
                );
            }
        }
        if let (Some(from), Some(before)) = (self.created_from, self.created_before)
            && from >= before
        {
            add(
                "filter.created_before",
                "invalid_filter",
                format!("created_before ({before}) must be later than created_from ({from})"),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::InvalidOption(problems))
        }
    }
}

/// Which page to return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// At most this many runs (1 to 1000).
    pub limit: u32,
    /// The `next_page` token of the previous page.
    pub after: Option<String>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: 50,
            after: None,
        }
    }
}

impl Page {
    /// The first page of `limit` runs.
    pub fn first(limit: u32) -> Self {
        Self { limit, after: None }
    }

    /// The page after `token`.
    pub fn after(limit: u32, token: impl Into<String>) -> Self {
        Self {
            limit,
            after: Some(token.into()),
        }
    }

    /// The keyset position the token names: (created_at, run_id).
    pub(crate) fn cursor(&self) -> Result<Option<(i64, String)>> {
        let invalid = |path: &str, message: String| {
            EngineError::InvalidOption(vec![SpecProblem {
                path: path.into(),
                code: "invalid_page".into(),
                message,
            }])
        };
        if self.limit == 0 || self.limit > 1000 {
            return Err(invalid(
                "page.limit",
                format!("limit must be between 1 and 1000, got {}", self.limit),
            ));
        }
        let Some(token) = &self.after else {
            return Ok(None);
        };
        let bad = || invalid("page.after", format!("malformed page token {token:?}"));
        let (at, id) = token.split_once('~').ok_or_else(bad)?;
        let at: i64 = at.parse().map_err(|_| bad())?;
        let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
        Ok(Some((at, id.hyphenated().to_string())))
    }
}

fn token(created_at: i64, run_id: &str) -> String {
    format!("{created_at}~{run_id}")
}

/// A run in a listing: shape and status, never payloads, outputs or metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Workflow.
    pub workflow: String,
    /// Version label.
    pub version: Option<String>,
    /// Trigger.
    pub trigger: String,
    /// Queue.
    pub queue: String,
    /// Status.
    pub status: RunStatus,
    /// Whether it ended.
    pub terminal: bool,
    /// Where it is now: the gate, or the planned steps.
    pub current_steps: Vec<String>,
    /// The most urgent open deadline.
    pub deadline: Option<DeadlineState>,
    /// Parent run of a child run.
    pub parent_run_id: Option<String>,
    /// The run it replays.
    pub replayed_from: Option<String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// A page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunSummary>,
    /// Token of the next page; `None` on the last page.
    pub next_page: Option<String>,
}

/// Runs by status, from [`Engine::count_runs`](crate::Engine::count_runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    /// Every status with its count (at most `cap`), in [`RunStatus::ALL`] order.
    pub by_status: Vec<StatusCount>,
    /// Where counting stopped.
    pub cap: u32,
}

/// The count of one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCount {
    /// The status.
    pub status: RunStatus,
    /// Runs counted, at most the cap.
    pub runs: u64,
    /// More runs than the cap have this status.
    pub more: bool,
}

impl RunCounts {
    pub(crate) fn from_rows(rows: Vec<(String, i64)>, cap: u32) -> Self {
        let by_status = RunStatus::ALL
            .iter()
            .map(|s| {
                let n = rows
                    .iter()
                    .find(|(name, _)| name == s.as_str())
                    .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
                StatusCount {
                    status: *s,
                    runs: n.min(u64::from(cap)),
                    more: n > u64::from(cap),
                }
            })
            .collect();
        Self { by_status, cap }
    }

    /// The count of `status`.
    pub fn of(&self, status: RunStatus) -> Option<&StatusCount> {
        self.by_status.iter().find(|c| c.status == status)
    }
}

/// Builds a page from the rows (one more than `limit` means there is a next page).
pub(crate) fn page(
    mut rows: Vec<SummaryRow>,
    deadlines: Vec<DeadlineRow>,
    limit: usize,
    now: Timestamp,
) -> Result<RunPage> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut by_run: BTreeMap<String, Vec<DeadlineState>> = BTreeMap::new();
    for (run_id, step, key, text) in deadlines {
        let d: Deadline = serde_json::from_str(&text)
            .map_err(|e| EngineError::corrupt(format!("deadline of {key}"), e))?;
        by_run
            .entry(run_id)
            .or_default()
            .push(d.evaluate(now, &step, Some(&key)));
    }
    let mut runs = Vec::with_capacity(rows.len());
    for r in &rows {
        let status = r.status;
        let terminal = status.is_terminal();
        let gate: Option<ManualGate> = r
            .manual
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| EngineError::corrupt(format!("manual gate of run {}", r.run_id), e))?;
        let steps: BTreeMap<String, StepState> = serde_json::from_str(&r.steps)
            .map_err(|e| EngineError::corrupt(format!("steps of run {}", r.run_id), e))?;
        let current_steps = if terminal {
            Vec::new()
        } else if let Some(g) = &gate {
            vec![g.step.clone()]
        } else {
            steps
                .iter()
                .filter(|(_, s)| **s == StepState::Planned)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let mut states = by_run.remove(&r.run_id).unwrap_or_default();
        if let Some(d) = gate
            .as_ref()
            .and_then(|g| g.deadline.as_ref().map(|d| (g, d)))
        {
            states.push(d.1.evaluate(now, &d.0.step, None));
        }
        let deadline = if terminal {
            None
        } else {
            most_urgent(&states).cloned()
        };
        runs.push(RunSummary {
            run_id: r.run_id.clone(),
            workflow: r.workflow.clone(),
            version: r.version.clone(),
            trigger: r.trigger_name.clone(),
            queue: r.queue.clone(),
            status,
            terminal,
            current_steps,
            deadline,
            parent_run_id: r.parent_run_id.clone(),
            replayed_from: r.replayed_from.clone(),
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
        });
    }
    let next_page = if more {
        rows.last().map(|r| token(r.created_at, &r.run_id))
    } else {
        None
    };
    Ok(RunPage { runs, next_page })
}
