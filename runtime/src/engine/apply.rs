//! Between the store and the decision core: a run row decoded into [`RunState`], and a
//! [`Decision`] written back in the caller's transaction.

use super::{Result, now_us, planned_row, to_json};
use crate::decide::{Decision, LeaseState, RunState};
use crate::store::{AttemptRow, RunRow, StoreTx};
use crate::vocab::{AttemptStatus, Timestamp};

fn parse<T: serde::de::DeserializeOwned>(run: &RunRow, what: &str, text: &str) -> Result<T> {
    super::error::parse_stored(what, &run.run_id, text)
}

/// Decodes the typed state of a run (without its succeeded attempts).
pub(super) fn run_state(run: &RunRow) -> Result<RunState> {
    Ok(RunState {
        run_id: run.run_id.clone(),
        status: run.status,
        input: parse(run, "input", &run.input)?,
        context: parse(run, "context", &run.context)?,
        steps: parse(run, "steps", &run.steps)?,
        manual: run
            .manual
            .as_deref()
            .map(|m| parse(run, "manual gate", m))
            .transpose()?,
        error: run
            .error
            .as_deref()
            .map(|e| parse(run, "error", e))
            .transpose()?,
        compensation: run
            .compensation
            .as_deref()
            .map(|c| parse(run, "compensation", c))
            .transpose()?,
        completed: Vec::new(),
        dynamic: run
            .dynamic
            .as_deref()
            .map(|d| parse(run, "dynamic work", d))
            .transpose()?
            .unwrap_or_default(),
        work_outputs: Vec::new(),
    })
}

/// Writes a decision: closes open attempts if it says so, inserts the planned attempts,
/// updates the run row, and adds the facts to `journal` (the caller appends it). With `take`
/// (a queue), the first planned attempt on that queue that is visible now is not inserted
/// but returned, for the caller to claim and insert. The attempts inserted are added to
/// `inserted`.
pub(super) async fn write_decision<T: StoreTx>(
    tx: &mut T,
    run: &mut RunRow,
    decision: Decision,
    (journal, inserted): (&mut Vec<(String, String)>, &mut Vec<AttemptRow>),
    take: Option<&str>,
    now: Timestamp,
) -> Result<Option<AttemptRow>> {
    let Decision {
        state,
        facts,
        planned,
        planned_at,
        attempt_status: _,
        close_open_attempts,
    } = decision;
    let now = now_us(now);
    if close_open_attempts {
        tx.close_open_attempts(&run.run_id, AttemptStatus::Cancelled, now)
            .await?;
    }
    let mut taken = None;
    if !planned.is_empty() {
        let seq = run.revision + i64::try_from(planned_at).unwrap_or(0) + 1;
        for p in &planned {
            let row = planned_row(run, p, seq, Timestamp(now));
            let claimable = take.is_some_and(|q| q == row.queue) && row.visible_at <= now;
            if taken.is_none() && claimable {
                taken = Some(row);
            } else {
                tx.insert_attempt(&row).await?;
                inserted.push(row);
            }
        }
        // Other workers hear of what this transaction leaves for them.
        if planned.len() > usize::from(taken.is_some()) {
            tx.notify_queue(&run.queue).await?;
        }
    }
    let same_status = run.status == state.status;
    run.status = state.status;
    run.context = to_json(&state.context);
    run.steps = to_json(&state.steps);
    run.manual = state.manual.as_ref().map(to_json);
    run.compensation = state.compensation.as_ref().map(to_json);
    run.error = state.error.as_ref().map(to_json);
    run.dynamic = (state.dynamic != crate::decide::fact::DynamicState::default())
        .then(|| to_json(&state.dynamic));
    run.updated_at = now;
    run.revision += i64::try_from(facts.len()).unwrap_or(0);
    if same_status {
        tx.update_run_same_status(run).await?;
    } else {
        tx.update_run(run).await?;
    }
    journal.extend(facts.iter().map(|f| (f.kind().to_owned(), to_json(f))));
    Ok(taken)
}

/// Writes a decision and appends its facts; returns the attempts it inserted.
pub(super) async fn write_all<T: StoreTx>(
    tx: &mut T,
    run: &mut RunRow,
    decision: Decision,
    now: Timestamp,
) -> Result<Vec<AttemptRow>> {
    let mut journal = Vec::new();
    let mut inserted = Vec::new();
    write_decision(tx, run, decision, (&mut journal, &mut inserted), None, now).await?;
    tx.append_facts(&run.run_id, &journal, now_us(now)).await?;
    Ok(inserted)
}

/// The lease state of an attempt row, for [`crate::decide::decide_lease`]: the claim's
/// fields move out of the row (write the decision back with [`set_lease`]; on a refusal the
/// row is not written).
pub(super) fn take_lease(a: &mut AttemptRow) -> LeaseState {
    LeaseState {
        runnable_key: a.runnable_key.clone(),
        status: a.status,
        visible_at: Timestamp(a.visible_at),
        due_at: a.due_at.map(Timestamp),
        claim_id: a.claim_id.take(),
        token_hash: a.claim_token_hash.take(),
        owner: a.owner.take(),
        lease_until: a.lease_until.map(Timestamp),
        claims: a.claims,
    }
}

/// Writes a decided lease state into the attempt's row (the caller stores it).
pub(super) fn set_lease(a: &mut AttemptRow, s: LeaseState, now: Timestamp) {
    a.status = s.status;
    a.visible_at = now_us(s.visible_at);
    a.due_at = s.due_at.map(now_us);
    a.claim_id = s.claim_id;
    a.claim_token_hash = s.token_hash;
    a.owner = s.owner;
    a.lease_until = s.lease_until.map(now_us);
    a.claims = s.claims;
    a.updated_at = now_us(now);
}
