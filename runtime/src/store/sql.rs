//! The SQL text both drivers run (`$n` parameters; SQLite's embedded writer rewrites them
//! to `?n`; `lock` and `skip` are the Postgres row-lock suffixes, empty on SQLite), built
//! from the rows' column lists (see `rows`).

use super::{AttemptRow, FactRow, RunRow};

pub(super) const RUN_COLUMNS: &str = RunRow::COLUMNS;
pub(super) const ATTEMPT_COLUMNS: &str = AttemptRow::COLUMNS;

pub(super) const INSERT_DEFINITION: &str = "INSERT INTO definitions (hash, workflow, fingerprint, body, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING";
pub(super) const LOAD_DEFINITION: &str = "SELECT body FROM definitions WHERE hash = $1";
pub(super) const RUN_STATUS: &str = "SELECT status FROM runs WHERE run_id = $1";
/// Whether a queue has an attempt due (what a claim would look for).
pub(super) const ANY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM attempts WHERE queue = $1 AND due_at IS NOT NULL AND due_at <= $2)";

/// Postgres: a run's columns and its attempts as one JSON array (`attempts_json`), in one
/// statement.
pub(super) static RUN_WITH_ATTEMPTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {RUN_COLUMNS}, (SELECT coalesce(json_agg(a ORDER BY a.seq, a.runnable_key), '[]')::text FROM attempts a WHERE a.run_id = r.run_id) AS attempts_json FROM runs r WHERE r.run_id = $1"
    )
});
/// Postgres: the due attempt a fenced claim tries, with its run and the catalog's version,
/// read without a lock: the `$3`-th oldest due on the queue (the newest of fewer), so
/// concurrent claimers spread over the queue's head instead of all reading one row.
pub(super) static PEEK_DUE_WITH_RUN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH c AS (SELECT runnable_key, due_at FROM attempts WHERE queue = $1 AND due_at IS NOT NULL AND due_at <= $2 ORDER BY due_at, runnable_key LIMIT $3) SELECT {}, (SELECT version FROM catalog_version WHERE id = 1) AS catalog_version FROM attempts a JOIN runs r ON r.run_id = a.run_id WHERE a.runnable_key = (SELECT runnable_key FROM c ORDER BY due_at DESC, runnable_key DESC LIMIT 1)",
        attempt_and_run_columns()
    )
});
pub(super) const CATALOG_VERSION: &str = "SELECT version FROM catalog_version WHERE id = 1";
pub(super) const UPDATE_RUN: &str = "UPDATE runs SET status = $2, context = $3, steps = $4, manual = $5, error = $6, updated_at = $7, revision = $8, compensation = $9, dynamic = $10 WHERE run_id = $1";
pub(super) const UPDATE_RUN_SAME_STATUS: &str = "UPDATE runs SET context = $2, steps = $3, manual = $4, error = $5, updated_at = $6, revision = $7, compensation = $8, dynamic = $9 WHERE run_id = $1";
pub(super) fn facts() -> String {
    format!(
        "SELECT {} FROM journal WHERE run_id = $1 ORDER BY id",
        FactRow::COLUMNS
    )
}
pub(super) fn facts_of_kind() -> String {
    format!(
        "SELECT {} FROM journal WHERE run_id = $1 AND kind = $2 ORDER BY id",
        FactRow::COLUMNS
    )
}
pub(super) const UPDATE_ATTEMPT: &str = "UPDATE attempts SET status = $2, visible_at = $3, due_at = $4, claim_id = $5, claim_token_hash = $6, owner = $7, lease_until = $8, claims = $9, outcome = $10, updated_at = $11 WHERE runnable_key = $1";
/// Settles a run's open attempts, but not the `except` ones ($4 on).
pub(super) fn close_open_attempts(except: usize) -> String {
    let mut sql = String::from(
        "UPDATE attempts SET status = $2, due_at = NULL, updated_at = $3 WHERE run_id = $1 AND status IN ('scheduled', 'claimed')",
    );
    if except > 0 {
        let keys: Vec<String> = (0..except).map(|i| format!("${}", i + 4)).collect();
        sql.push_str(&format!(" AND runnable_key NOT IN ({})", keys.join(", ")));
    }
    sql
}
pub(super) const INSERT_COMMAND: &str = "INSERT INTO commands (idempotency_key, kind, run_id, result_run_id, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING";
pub(super) const LOAD_COMMAND: &str =
    "SELECT kind, run_id, result_run_id FROM commands WHERE idempotency_key = $1";
pub(super) const INSERT_CHILD: &str = "INSERT INTO child_runs (parent_run_id, parent_step, child_key, child_run_id, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (parent_run_id, parent_step, child_key) DO NOTHING";
pub(super) const LOAD_CHILD: &str = "SELECT child_run_id FROM child_runs WHERE parent_run_id = $1 AND parent_step = $2 AND child_key = $3";
pub(super) const CHILDREN: &str = "SELECT parent_step, child_key, child_run_id FROM child_runs WHERE parent_run_id = $1 ORDER BY created_at, child_key";
pub(super) const CHILD_SUMMARIES: &str = "SELECT c.parent_step, c.child_key, c.child_run_id, r.workflow, r.status FROM child_runs c LEFT JOIN runs r ON r.run_id = c.child_run_id WHERE c.parent_run_id = $1 ORDER BY c.created_at, c.child_key";

pub(super) fn insert_run() -> String {
    let n = RUN_COLUMNS.split(", ").count();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO runs ({RUN_COLUMNS}) VALUES ({}) ON CONFLICT (run_id) DO NOTHING",
        params.join(", ")
    )
}

pub(super) fn load_run(lock: &str) -> String {
    format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1{lock}")
}

/// One statement for all the facts (ids follow the VALUES order).
pub(super) fn insert_facts(n: usize) -> String {
    let values: Vec<String> = (0..n)
        .map(|i| format!("($1, ${}, ${}, $2)", 3 + 2 * i, 4 + 2 * i))
        .collect();
    format!(
        "INSERT INTO journal (run_id, kind, data, occurred_at) VALUES {}",
        values.join(", ")
    )
}

pub(super) fn insert_attempt() -> String {
    let n = ATTEMPT_COLUMNS.split(", ").count();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({})",
        params.join(", ")
    )
}

/// An attempt and its run (`r_` columns); `FROM runs` first, so Postgres locks the run
/// before the attempt, as every other writer does.
pub(super) fn load_attempt_and_run(lock: &str) -> String {
    format!(
        "SELECT {} FROM runs r JOIN attempts a ON a.run_id = r.run_id WHERE a.runnable_key = $1{lock}",
        attempt_and_run_columns()
    )
}

/// The due attempt joined with its run (`r_` columns).
pub(super) fn next_due_with_run(skip: &str) -> String {
    format!(
        "SELECT {}, (SELECT version FROM catalog_version WHERE id = 1) AS catalog_version FROM attempts a JOIN runs r ON r.run_id = a.run_id WHERE a.queue = $1 AND a.due_at IS NOT NULL AND a.due_at <= $2 ORDER BY a.due_at, a.runnable_key LIMIT 1{skip}",
        attempt_and_run_columns()
    )
}

/// The attempt's columns under their names, the run's prefixed `r_`.
fn attempt_and_run_columns() -> String {
    let attempt: Vec<String> = ATTEMPT_COLUMNS
        .split(", ")
        .map(|c| format!("a.{c}"))
        .collect();
    let run: Vec<String> = RUN_COLUMNS
        .split(", ")
        .map(|c| format!("r.{c} AS r_{c}"))
        .collect();
    format!("{}, {}", attempt.join(", "), run.join(", "))
}

pub(super) fn load_attempt(lock: &str) -> String {
    format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE runnable_key = $1{lock}")
}

pub(super) fn run_attempts() -> String {
    format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY seq, runnable_key")
}

pub(super) fn next_due_of_run(skip: &str) -> String {
    format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 AND queue = $2 AND status = 'scheduled' AND due_at IS NOT NULL AND due_at <= $3 ORDER BY due_at, runnable_key LIMIT 1{skip}"
    )
}

pub(super) fn open_deadlines(n: usize) -> String {
    let params: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "SELECT run_id, step, runnable_key, deadline FROM attempts WHERE run_id IN ({}) AND deadline IS NOT NULL AND status IN ('scheduled', 'claimed', 'recorded')",
        params.join(", ")
    )
}

/// Extends a lease in one statement, fenced by claim id, token hash and expiry.
/// Expired leases made due at the time their attempts became visible, so a redelivery is
/// claimed before the work that arrived while its step ran instead of after the whole
/// backlog (a claim's `due_at` is its lease end). Rows another transaction holds are skipped.
pub(super) fn requeue_expired(skip: &str) -> String {
    format!(
        "UPDATE attempts SET due_at = visible_at WHERE runnable_key IN (SELECT runnable_key FROM attempts WHERE status = 'claimed' AND due_at > visible_at AND lease_until <= $1{skip})"
    )
}

/// Attempts due now per queue (metrics): scheduled ones come due, expired claims and
/// recorded outcomes are due too; running claims are due only at their lease end.
pub(super) const QUEUE_DEPTHS: &str = "SELECT queue, count(*) AS due, min(due_at) AS oldest_due_at FROM attempts WHERE due_at IS NOT NULL AND due_at <= $1 GROUP BY queue";

/// Runs by status (metrics).
pub(super) const RUN_COUNTS: &str = "SELECT status, count(*) AS runs FROM runs GROUP BY status";

pub(super) const HEARTBEAT_SQL: &str = "UPDATE attempts SET lease_until = $5, due_at = $5, updated_at = $4 WHERE runnable_key = $1 AND claim_id = $2 AND claim_token_hash = $3 AND status = 'claimed' AND lease_until > $4";
