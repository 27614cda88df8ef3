//! Deadlines: when a step or gate is due, persisted when it is planned or paused, and
//! evaluated against the clock when read. Nothing fires and nothing is cancelled: a deadline
//! tells operators (and the host's escalation policy) what is late.

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;

/// An informational deadline, evaluated by the read side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadlineSpec {
    /// The step is due this many milliseconds after it was planned (positive).
    pub within_ms: u64,
    /// It is "due soon" this many milliseconds before it is due (less than `within_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_soon_ms: Option<u64>,
    /// It is escalated this many milliseconds after it is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after_ms: Option<u64>,
    /// Label of the escalation (default `diagnostic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
}

/// A deadline as persisted: absolute instants computed from the step's [`DeadlineSpec`] when
/// the attempt was planned (or the gate paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// When the clock started: the attempt's visible time, or the gate's pause time.
    pub started_at: Timestamp,
    /// Due at `started_at + within`.
    pub due_at: Timestamp,
    /// "Due soon" from `due_at - due_soon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_soon_at: Option<Timestamp>,
    /// Escalated from `due_at + escalate_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_at: Option<Timestamp>,
    /// Label of the escalation (default `diagnostic`).
    pub escalation: String,
}

impl Deadline {
    /// The deadline `spec` sets for something that starts at `started_at`.
    pub fn plan(spec: &DeadlineSpec, started_at: Timestamp) -> Self {
        let due_at = started_at.plus_millis(spec.within_ms);
        Self {
            started_at,
            due_at,
            due_soon_at: spec
                .due_soon_ms
                .map(|ms| Timestamp(due_at.0.saturating_sub(millis_to_us(ms)))),
            escalate_at: spec.escalate_after_ms.map(|ms| due_at.plus_millis(ms)),
            escalation: spec
                .escalation
                .clone()
                .unwrap_or_else(|| "diagnostic".to_owned()),
        }
    }

    /// Where the deadline stands at `now`.
    pub fn status_at(&self, now: Timestamp) -> DeadlineStatus {
        if self.escalate_at.is_some_and(|t| now >= t) {
            DeadlineStatus::Escalated
        } else if now >= self.due_at {
            DeadlineStatus::Overdue
        } else if self.due_soon_at.is_some_and(|t| now >= t) {
            DeadlineStatus::DueSoon
        } else {
            DeadlineStatus::OnTime
        }
    }

    /// The evaluated view of this deadline at `now`.
    pub fn evaluate(
        &self,
        now: Timestamp,
        step: &str,
        runnable_key: Option<&str>,
    ) -> DeadlineState {
        let status = self.status_at(now);
        DeadlineState {
            status,
            step: step.to_owned(),
            runnable_key: runnable_key.map(str::to_owned),
            started_at: self.started_at,
            due_at: self.due_at,
            due_soon_at: self.due_soon_at,
            escalate_at: self.escalate_at,
            remaining_ms: (self.due_at.0 - now.0).div_euclid(1000),
            overdue: matches!(status, DeadlineStatus::Overdue | DeadlineStatus::Escalated),
            escalation: self.escalation.clone(),
        }
    }
}

fn millis_to_us(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// Where a deadline stands, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineStatus {
    /// Past `escalate_at`.
    Escalated,
    /// Past `due_at`.
    Overdue,
    /// Past `due_soon_at`, not yet due.
    DueSoon,
    /// Not yet due soon.
    OnTime,
}

impl DeadlineStatus {
    /// The status as text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Escalated => "escalated",
            Self::Overdue => "overdue",
            Self::DueSoon => "due_soon",
            Self::OnTime => "on_time",
        }
    }
}

/// A deadline evaluated at read time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineState {
    /// `on_time`, `due_soon`, `overdue` or `escalated`.
    pub status: DeadlineStatus,
    /// The step (or gate) it belongs to.
    pub step: String,
    /// The attempt it belongs to (`None` for a gate).
    pub runnable_key: Option<String>,
    /// When the clock started.
    pub started_at: Timestamp,
    /// When it is due.
    pub due_at: Timestamp,
    /// When it becomes due soon.
    pub due_soon_at: Option<Timestamp>,
    /// When it escalates.
    pub escalate_at: Option<Timestamp>,
    /// Milliseconds until due (negative once overdue).
    pub remaining_ms: i64,
    /// Whether it is overdue or escalated.
    pub overdue: bool,
    /// Escalation label.
    pub escalation: String,
}

/// The most urgent of `states`: escalated, then overdue, then due soon, then on time; the
/// earliest due time first within a status.
pub fn most_urgent<'a>(
    states: impl IntoIterator<Item = &'a DeadlineState>,
) -> Option<&'a DeadlineState> {
    states
        .into_iter()
        .min_by_key(|s| (s.status, s.due_at, s.step.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DeadlineSpec {
        DeadlineSpec {
            within_ms: 10_000,
            due_soon_ms: Some(2_000),
            escalate_after_ms: Some(5_000),
            escalation: Some("page_oncall".into()),
        }
    }

    #[test]
    fn status_moves_with_the_clock() {
        let start = Timestamp::from_millis(1_000_000);
        let d = Deadline::plan(&spec(), start);
        assert_eq!(d.due_at, Timestamp::from_millis(1_010_000));
        assert_eq!(d.due_soon_at, Some(Timestamp::from_millis(1_008_000)));
        assert_eq!(d.escalate_at, Some(Timestamp::from_millis(1_015_000)));
        let at = |ms: i64| d.status_at(Timestamp::from_millis(1_000_000 + ms));
        assert_eq!(at(0), DeadlineStatus::OnTime);
        assert_eq!(at(7_999), DeadlineStatus::OnTime);
        assert_eq!(at(8_000), DeadlineStatus::DueSoon);
        assert_eq!(at(10_000), DeadlineStatus::Overdue);
        assert_eq!(at(15_000), DeadlineStatus::Escalated);
        let e = d.evaluate(Timestamp::from_millis(1_012_000), "s", Some("k"));
        assert_eq!(e.remaining_ms, -2_000);
        assert!(e.overdue);
        assert_eq!(e.escalation, "page_oncall");
    }

    #[test]
    fn most_urgent_ranks_status_then_due_time() {
        let now = Timestamp::from_millis(100_000);
        let a = Deadline::plan(&spec(), Timestamp::from_millis(95_000)).evaluate(now, "a", None);
        let b = Deadline::plan(&spec(), Timestamp::from_millis(80_000)).evaluate(now, "b", None);
        let c = Deadline::plan(&spec(), Timestamp::from_millis(99_000)).evaluate(now, "c", None);
        assert_eq!(b.status, DeadlineStatus::Escalated);
        assert_eq!(most_urgent([&a, &b, &c]).unwrap().step, "b");
        assert_eq!(most_urgent([&a, &c]).unwrap().step, "a");
    }
}
