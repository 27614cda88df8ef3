//! The rows the store reads and writes, decoded once where they are read (statuses as
//! the vocabulary's enums), and the values each statement binds (one list per statement).

use crate::vocab::{AttemptStatus, RunStatus};

/// A column holding one of the vocabulary's enums, parsed where the row is read: unknown
/// text is a decode error of the driver, so no row with a bad status leaves the store.
pub(super) fn decode_column<T>(
    text: String,
    parse: fn(&str) -> Option<T>,
) -> Result<T, sqlx::Error> {
    parse(&text).ok_or_else(|| sqlx::Error::Decode(format!("unknown status {text:?}").into()))
}

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub(crate) run_id: String,
    pub(crate) workflow: String,
    pub(crate) version: Option<String>,
    pub(crate) fingerprint: String,
    pub(crate) definition_hash: String,
    pub(crate) trigger_name: String,
    pub(crate) queue: String,
    pub(crate) status: RunStatus,
    pub(crate) input: String,
    pub(crate) context: String,
    pub(crate) steps: String,
    pub(crate) manual: Option<String>,
    pub(crate) compensation: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) payload_hash: String,
    pub(crate) parent_run_id: Option<String>,
    pub(crate) replayed_from: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) revision: i64,
}

/// One row of `attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub(crate) runnable_key: String,
    pub(crate) run_id: String,
    pub(crate) step: String,
    pub(crate) attempt: i64,
    pub(crate) seq: i64,
    pub(crate) queue: String,
    pub(crate) status: AttemptStatus,
    pub(crate) visible_at: i64,
    pub(crate) due_at: Option<i64>,
    pub(crate) claim_id: Option<String>,
    pub(crate) claim_token_hash: Option<String>,
    pub(crate) owner: Option<String>,
    pub(crate) lease_until: Option<i64>,
    pub(crate) claims: i64,
    pub(crate) input: String,
    pub(crate) outcome: Option<String>,
    pub(crate) deadline: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// One journal fact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactRow {
    pub(crate) id: i64,
    pub(crate) run_id: String,
    pub(crate) kind: String,
    pub(crate) data: String,
    pub(crate) occurred_at: i64,
}

/// The row a listing reads per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub(crate) run_id: String,
    pub(crate) workflow: String,
    pub(crate) version: Option<String>,
    pub(crate) trigger_name: String,
    pub(crate) queue: String,
    pub(crate) status: RunStatus,
    pub(crate) steps: String,
    pub(crate) manual: Option<String>,
    pub(crate) parent_run_id: Option<String>,
    pub(crate) replayed_from: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

/// A child run as listed for its parent: (parent step, child key, child run id, the child's
/// workflow and status when the child exists).
pub type ChildRow = (String, String, String, Option<String>, Option<String>);

/// An open attempt's deadline: (run id, step, runnable key, deadline JSON).
pub type DeadlineRow = (String, String, String, String);

/// A listing query over `runs`: every filter optional, keyset position, page size.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub(crate) workflow: Option<String>,
    pub(crate) statuses: Vec<String>,
    pub(crate) queue: Option<String>,
    pub(crate) created_from: Option<i64>,
    pub(crate) created_before: Option<i64>,
    /// A lower-case `LIKE` pattern with `\` escapes.
    pub(crate) search: Option<String>,
    pub(crate) after: Option<(i64, String)>,
    pub(crate) limit: i64,
}

/// One bound value. Every driver binds a row's values from the same list, in the order of
/// the shared SQL's `$n` parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

impl RunRow {
    /// The values of `sql::insert_run()`.
    pub(super) fn insert_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Text(&self.workflow),
            Arg::OptText(self.version.as_deref()),
            Arg::Text(&self.fingerprint),
            Arg::Text(&self.definition_hash),
            Arg::Text(&self.trigger_name),
            Arg::Text(&self.queue),
            Arg::Text(self.status.as_str()),
            Arg::Text(&self.input),
            Arg::Text(&self.context),
            Arg::Text(&self.steps),
            Arg::OptText(self.manual.as_deref()),
            Arg::OptText(self.compensation.as_deref()),
            Arg::OptText(self.error.as_deref()),
            Arg::OptText(self.idempotency_key.as_deref()),
            Arg::Text(&self.payload_hash),
            Arg::OptText(self.parent_run_id.as_deref()),
            Arg::OptText(self.replayed_from.as_deref()),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
            Arg::Int(self.revision),
        ]
    }

    /// The values of `sql::UPDATE_RUN`.
    pub(super) fn update_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Text(self.status.as_str()),
            Arg::Text(&self.context),
            Arg::Text(&self.steps),
            Arg::OptText(self.manual.as_deref()),
            Arg::OptText(self.error.as_deref()),
            Arg::Int(self.updated_at),
            Arg::Int(self.revision),
            Arg::OptText(self.compensation.as_deref()),
        ]
    }
}

impl AttemptRow {
    /// The values of `sql::insert_attempt()`.
    pub(super) fn insert_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Text(&self.run_id),
            Arg::Text(&self.step),
            Arg::Int(self.attempt),
            Arg::Int(self.seq),
            Arg::Text(&self.queue),
            Arg::Text(self.status.as_str()),
            Arg::Int(self.visible_at),
            Arg::OptInt(self.due_at),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::OptText(self.claim_token_hash.as_deref()),
            Arg::OptText(self.owner.as_deref()),
            Arg::OptInt(self.lease_until),
            Arg::Int(self.claims),
            Arg::Text(&self.input),
            Arg::OptText(self.outcome.as_deref()),
            Arg::OptText(self.deadline.as_deref()),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
        ]
    }

    /// The values of `sql::UPDATE_ATTEMPT`.
    pub(super) fn update_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Text(self.status.as_str()),
            Arg::Int(self.visible_at),
            Arg::OptInt(self.due_at),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::OptText(self.claim_token_hash.as_deref()),
            Arg::OptText(self.owner.as_deref()),
            Arg::OptInt(self.lease_until),
            Arg::Int(self.claims),
            Arg::OptText(self.outcome.as_deref()),
            Arg::Int(self.updated_at),
        ]
    }
}

impl ListQuery {
    /// The SQL and its arguments; the same text for both databases.
    pub(super) fn sql(&self) -> (String, Vec<Arg<'_>>) {
        let mut args = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        fn push<'a>(args: &mut Vec<Arg<'a>>, a: Arg<'a>) -> String {
            args.push(a);
            format!("${}", args.len())
        }
        if let Some(w) = &self.workflow {
            let p = push(&mut args, Arg::Text(w));
            clauses.push(format!("workflow = {p}"));
        }
        if !self.statuses.is_empty() {
            let ps: Vec<String> = self
                .statuses
                .iter()
                .map(|s| push(&mut args, Arg::Text(s)))
                .collect();
            clauses.push(format!("status IN ({})", ps.join(", ")));
        }
        if let Some(q) = &self.queue {
            let p = push(&mut args, Arg::Text(q));
            clauses.push(format!("queue = {p}"));
        }
        if let Some(t) = self.created_from {
            let p = push(&mut args, Arg::Int(t));
            clauses.push(format!("created_at >= {p}"));
        }
        if let Some(t) = self.created_before {
            let p = push(&mut args, Arg::Int(t));
            clauses.push(format!("created_at < {p}"));
        }
        if let Some(pattern) = &self.search {
            let mut ors = Vec::new();
            for col in ["run_id", "workflow", "trigger_name"] {
                let p = push(&mut args, Arg::Text(pattern));
                ors.push(format!("LOWER({col}) LIKE {p} ESCAPE '\\'"));
            }
            let p = push(&mut args, Arg::Text(pattern));
            ors.push(format!(
                "EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = runs.run_id AND LOWER(a.step) LIKE {p} ESCAPE '\\')"
            ));
            clauses.push(format!("({})", ors.join(" OR ")));
        }
        if let Some((at, id)) = &self.after {
            let pa = push(&mut args, Arg::Int(*at));
            let pb = push(&mut args, Arg::Text(id));
            clauses.push(format!("(created_at, run_id) < ({pa}, {pb})"));
        }
        let limit = push(&mut args, Arg::Int(self.limit));
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (
            format!(
                "SELECT run_id, workflow, version, trigger_name, queue, status, steps, manual, parent_run_id, replayed_from, created_at, updated_at FROM runs{filter} ORDER BY created_at DESC, run_id DESC LIMIT {limit}"
            ),
            args,
        )
    }
}
