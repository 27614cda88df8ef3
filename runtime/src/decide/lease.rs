//! The life of one attempt under a lease, as a pure function like [`super::decide`]: a
//! worker claims it (or claims it again once the lease has expired: a redelivery), the
//! holder of the claim records its outcome, or gives it back. Every rule that fences a late
//! or foreign worker is here: the engine reads the attempt's row, calls [`decide_lease`] and
//! writes the new lease state and the fact in the same transaction.

use std::time::Duration;

use super::fact::Fact;
use crate::vocab::{AttemptStatus, StepOutcome, Timestamp};

/// The lease state of one attempt, as its row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// `<run_id>:<step>:<attempt>`.
    pub runnable_key: String,
    /// Where the attempt stands.
    pub status: AttemptStatus,
    /// When it may be claimed (scheduled attempts).
    pub visible_at: Timestamp,
    /// When a worker must look at it next (claimable from then), if ever.
    pub due_at: Option<Timestamp>,
    /// The claim holding it.
    pub claim_id: Option<String>,
    /// SHA-256 of the claim's token (the token stays with the worker).
    pub token_hash: Option<String>,
    /// The worker holding it.
    pub owner: Option<String>,
    /// The end of the claim's lease.
    pub lease_until: Option<Timestamp>,
    /// How many times it was claimed.
    pub claims: i64,
}

/// Who holds a claim: what a worker presents to record or give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The claim's id.
    pub claim_id: Option<String>,
    /// SHA-256 of the claim's token.
    pub token_hash: String,
}

/// Something that happens to an attempt's lease.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A worker claims the attempt for `lease_for` (it is due: scheduled and visible, or
    /// claimed by a worker whose lease has expired).
    Claim {
        /// A fresh claim id.
        claim_id: String,
        /// SHA-256 of a fresh random token.
        token_hash: String,
        /// The worker.
        owner: String,
        /// How long the claim holds without a heartbeat.
        lease_for: Duration,
    },
    /// The holder of the claim records the step's outcome.
    Record {
        /// The claim presented.
        holder: Holder,
        /// The outcome.
        outcome: StepOutcome,
    },
    /// The holder of the claim gives the attempt back, to be claimed again from `retry_at`.
    Release {
        /// The claim presented.
        holder: Holder,
        /// When it may be claimed again.
        retry_at: Timestamp,
    },
}

/// Why a lease event is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// The attempt is not due: scheduled for later, or claimed under a lease still running,
    /// or already recorded, applied or closed.
    NotClaimable,
    /// The run ended while the step ran.
    Ended,
    /// Another claim holds the attempt now (this one's lease expired and it was redelivered).
    TakenOver,
    /// The claim is still the attempt's, but its lease ran out before the outcome came.
    LeaseExpired,
}

impl Stale {
    /// What happened, for the worker's error.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotClaimable => "the attempt is not due to be claimed",
            Self::Ended => "the run ended while the step ran; its outcome is discarded",
            Self::TakenOver => {
                "another worker took the attempt over after this claim's lease expired"
            }
            Self::LeaseExpired => "the lease expired before the step completed",
        }
    }
}

/// What a lease event implies.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseDecision {
    /// The attempt's lease state after the event.
    pub state: LeaseState,
    /// The fact to journal, if the event is one (a claim, a recorded outcome; a release is
    /// not journaled: the attempt is as it was before the claim).
    pub fact: Option<Fact>,
}

/// Decides what `event` does to an attempt whose lease state is `state`.
///
/// # Errors
///
/// A [`Stale`] refusal: the attempt is not claimable, or the claim presented is not the one
/// holding it under a running lease.
pub fn decide_lease(
    mut state: LeaseState,
    event: LeaseEvent,
    now: Timestamp,
) -> Result<LeaseDecision, Stale> {
    let fact = match event {
        LeaseEvent::Claim {
            claim_id,
            token_hash,
            owner,
            lease_for,
        } => {
            let redelivery = match state.status {
                AttemptStatus::Scheduled if state.visible_at <= now => false,
                AttemptStatus::Claimed if state.lease_until.is_none_or(|l| l <= now) => true,
                _ => return Err(Stale::NotClaimable),
            };
            let lease_until = now.plus(lease_for);
            state.status = AttemptStatus::Claimed;
            state.claim_id = Some(claim_id.clone());
            state.token_hash = Some(token_hash);
            state.owner = Some(owner.clone());
            state.lease_until = Some(lease_until);
            // Due again when the lease ends: another worker redelivers it then.
            state.due_at = Some(lease_until);
            state.claims += 1;
            Some(Fact::AttemptClaimed {
                runnable_key: state.runnable_key.clone(),
                claim_id,
                owner,
                lease_until,
                redelivery,
            })
        }
        LeaseEvent::Record { holder, outcome } => {
            check_holder(&state, &holder, now)?;
            state.status = AttemptStatus::Recorded;
            // Due at once: if applying it fails, the next claim applies it.
            state.due_at = Some(now);
            Some(Fact::AttemptRecorded {
                runnable_key: state.runnable_key.clone(),
                claim_id: state.claim_id.clone(),
                outcome,
            })
        }
        LeaseEvent::Release { holder, retry_at } => {
            if state.status == AttemptStatus::Cancelled {
                return Err(Stale::Ended);
            }
            if !holds(&state, &holder) {
                return Err(Stale::TakenOver);
            }
            state.status = AttemptStatus::Scheduled;
            state.visible_at = retry_at;
            state.due_at = Some(retry_at);
            state.claim_id = None;
            state.token_hash = None;
            state.lease_until = None;
            // Not journaled: the attempt is as it was before the claim.
            None
        }
    };
    Ok(LeaseDecision { state, fact })
}

/// Whether `holder` presents the claim that holds the attempt.
fn holds(state: &LeaseState, holder: &Holder) -> bool {
    state.status == AttemptStatus::Claimed
        && state.claim_id == holder.claim_id
        && state.token_hash.as_deref() == Some(holder.token_hash.as_str())
}

/// The fence of a completion: the run has not ended, the claim is the attempt's, and its
/// lease is still running.
fn check_holder(state: &LeaseState, holder: &Holder, now: Timestamp) -> Result<(), Stale> {
    if state.status == AttemptStatus::Cancelled {
        return Err(Stale::Ended);
    }
    if !holds(state, holder) {
        return Err(Stale::TakenOver);
    }
    if state.lease_until.is_none_or(|l| l <= now) {
        return Err(Stale::LeaseExpired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{StepError, StepErrorKind};

    const NOW: Timestamp = Timestamp(1_000_000_000);
    const LEASE: Duration = Duration::from_secs(30);

    fn scheduled(visible_at: Timestamp) -> LeaseState {
        LeaseState {
            runnable_key: "r:a:1".into(),
            status: AttemptStatus::Scheduled,
            visible_at,
            due_at: Some(visible_at),
            claim_id: None,
            token_hash: None,
            owner: None,
            lease_until: None,
            claims: 0,
        }
    }

    fn claim(id: &str) -> LeaseEvent {
        LeaseEvent::Claim {
            claim_id: id.into(),
            token_hash: format!("hash-{id}"),
            owner: format!("worker-{id}"),
            lease_for: LEASE,
        }
    }

    fn holder(id: &str) -> Holder {
        Holder {
            claim_id: Some(id.into()),
            token_hash: format!("hash-{id}"),
        }
    }

    fn record(id: &str) -> LeaseEvent {
        LeaseEvent::Record {
            holder: holder(id),
            outcome: StepOutcome::Succeeded {
                output: serde_json::Map::new(),
                continue_after_ms: None,
            },
        }
    }

    /// The attempt as claimed by `id` at `NOW`.
    fn claimed(id: &str) -> LeaseState {
        decide_lease(scheduled(NOW), claim(id), NOW)
            .expect("claims")
            .state
    }

    #[test]
    fn a_visible_attempt_is_claimed_under_a_lease_and_due_again_when_it_ends() {
        let d = decide_lease(scheduled(NOW), claim("c1"), NOW).expect("claims");
        let until = NOW.plus(LEASE);
        assert_eq!(d.state.status, AttemptStatus::Claimed);
        assert_eq!(d.state.claim_id.as_deref(), Some("c1"));
        assert_eq!(d.state.token_hash.as_deref(), Some("hash-c1"));
        assert_eq!(d.state.owner.as_deref(), Some("worker-c1"));
        assert_eq!(d.state.lease_until, Some(until));
        assert_eq!(d.state.due_at, Some(until));
        assert_eq!(d.state.claims, 1);
        assert_eq!(
            d.fact,
            Some(Fact::AttemptClaimed {
                runnable_key: "r:a:1".into(),
                claim_id: "c1".into(),
                owner: "worker-c1".into(),
                lease_until: until,
                redelivery: false,
            })
        );
    }

    #[test]
    fn only_due_attempts_can_be_claimed() {
        let later = scheduled(NOW.plus(Duration::from_millis(1)));
        assert_eq!(
            decide_lease(later, claim("c1"), NOW),
            Err(Stale::NotClaimable)
        );
        let held = claimed("c1");
        let before_end = NOW.plus(LEASE - Duration::from_micros(1));
        assert_eq!(
            decide_lease(held.clone(), claim("c2"), before_end),
            Err(Stale::NotClaimable)
        );
        for status in [
            AttemptStatus::Recorded,
            AttemptStatus::Succeeded,
            AttemptStatus::Failed,
            AttemptStatus::Cancelled,
        ] {
            let mut s = held.clone();
            s.status = status;
            assert_eq!(
                decide_lease(s, claim("c2"), NOW.plus(LEASE)),
                Err(Stale::NotClaimable),
                "{status}"
            );
        }
    }

    #[test]
    fn an_expired_claim_is_redelivered_to_a_new_claim() {
        let end = NOW.plus(LEASE);
        let d = decide_lease(claimed("c1"), claim("c2"), end).expect("redelivers");
        assert_eq!(d.state.claim_id.as_deref(), Some("c2"));
        assert_eq!(d.state.claims, 2);
        assert_eq!(d.state.lease_until, Some(end.plus(LEASE)));
        assert!(matches!(
            d.fact,
            Some(Fact::AttemptClaimed {
                redelivery: true,
                ..
            })
        ));
    }

    #[test]
    fn the_holder_records_within_its_lease_and_the_outcome_is_due_at_once() {
        let at = NOW.plus(Duration::from_secs(1));
        let d = decide_lease(claimed("c1"), record("c1"), at).expect("records");
        assert_eq!(d.state.status, AttemptStatus::Recorded);
        assert_eq!(d.state.due_at, Some(at));
        assert_eq!(d.state.claim_id.as_deref(), Some("c1"));
        assert!(matches!(
            d.fact,
            Some(Fact::AttemptRecorded { ref claim_id, .. }) if claim_id.as_deref() == Some("c1")
        ));
    }

    #[test]
    fn a_completion_is_fenced_by_its_claim_its_lease_and_the_run() {
        let at = NOW.plus(Duration::from_secs(1));
        // Another claim (a redelivery took it over).
        let taken = decide_lease(claimed("c1"), claim("c2"), NOW.plus(LEASE))
            .expect("redelivers")
            .state;
        assert_eq!(
            decide_lease(taken, record("c1"), NOW.plus(LEASE)),
            Err(Stale::TakenOver)
        );
        // The right claim id with the wrong token.
        let forged = LeaseEvent::Record {
            holder: Holder {
                claim_id: Some("c1".into()),
                token_hash: "hash-other".into(),
            },
            outcome: StepOutcome::Failed(StepError::sandbox(StepErrorKind::Trap, "x")),
        };
        assert_eq!(
            decide_lease(claimed("c1"), forged, at),
            Err(Stale::TakenOver)
        );
        // The lease ran out (nobody redelivered yet).
        assert_eq!(
            decide_lease(claimed("c1"), record("c1"), NOW.plus(LEASE)),
            Err(Stale::LeaseExpired)
        );
        // The run ended while the step ran.
        let mut cancelled = claimed("c1");
        cancelled.status = AttemptStatus::Cancelled;
        assert_eq!(
            decide_lease(cancelled.clone(), record("c1"), at),
            Err(Stale::Ended)
        );
    }

    #[test]
    fn the_holder_gives_an_attempt_back_and_nobody_else_can() {
        let retry_at = NOW.plus(Duration::from_secs(1));
        let give_back = |id: &str| LeaseEvent::Release {
            holder: holder(id),
            retry_at,
        };
        let d = decide_lease(claimed("c1"), give_back("c1"), NOW).expect("releases");
        assert_eq!(d.state.status, AttemptStatus::Scheduled);
        assert_eq!(d.state.visible_at, retry_at);
        assert_eq!(d.state.due_at, Some(retry_at));
        assert_eq!(d.state.claim_id, None);
        assert_eq!(d.state.lease_until, None);
        assert_eq!(d.state.claims, 1, "the claim still counts");
        assert_eq!(d.fact, None);
        assert_eq!(
            decide_lease(claimed("c1"), give_back("c2"), NOW),
            Err(Stale::TakenOver)
        );
        let mut cancelled = claimed("c1");
        cancelled.status = AttemptStatus::Cancelled;
        assert_eq!(
            decide_lease(cancelled.clone(), give_back("c1"), NOW),
            Err(Stale::Ended)
        );
    }
}
