//! Cron schedules as pure functions: when a cron trigger's windows fall in its time zone,
//! and which windows a scheduler fires at a given instant under the trigger's policy.
//!
//! Parsing and matching are croner's (5 or 6 fields, `@hourly`-style aliases) over IANA
//! zones from chrono-tz. What this module adds is the rule for daylight-saving changes,
//! stated once and tested: **one fire per wall-clock occurrence**. A time that the clock
//! skips (spring forward) fires at the first valid instant after the gap, once; a time that
//! the clock shows twice (fall back) fires at its first occurrence only, so in the repeated
//! hour nothing that already fired fires again. A schedule that must fire at a steady real
//! rate through the change should use `Etc/UTC`.
//!
//! No IO and no clock: instants come in as [`Timestamp`]s.

use std::str::FromStr as _;

use chrono::{DateTime, LocalResult, Offset as _, TimeZone as _, Utc};
use chrono_tz::Tz;
use sha2::{Digest as _, Sha256};

use crate::spec::{CatchUp, SchedulePolicy};
use crate::vocab::Timestamp;

/// At most this many windows are looked at in one plan; older missed windows beyond it are
/// counted once and not enumerated.
pub const MAX_WINDOWS_PER_PLAN: usize = 10_000;

const SECOND_US: i64 = 1_000_000;

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: Tz,
    expression: String,
}

/// Why an expression or zone cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The expression does not parse.
    #[error("cron expression {expression:?} is invalid: {message}")]
    Expression {
        /// The expression.
        expression: String,
        /// croner's explanation.
        message: String,
    },
    /// The zone is not an IANA zone name.
    #[error("time zone {0:?} is not an IANA zone name")]
    TimeZone(String),
}

fn to_utc(t: Timestamp) -> DateTime<Utc> {
    t.to_datetime()
}

fn from_dt<Z: chrono::TimeZone>(dt: &DateTime<Z>) -> Timestamp {
    Timestamp(dt.timestamp_micros())
}

fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(SECOND_US) * SECOND_US)
}

impl CronSchedule {
    /// Parses `expression` for the zone `timezone`.
    ///
    /// # Errors
    ///
    /// [`CronError`] naming the part that is wrong.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, CronError> {
        let cron = croner::Cron::from_str(expression).map_err(|e| CronError::Expression {
            expression: expression.to_owned(),
            message: e.to_string(),
        })?;
        let tz = Tz::from_str(timezone).map_err(|_| CronError::TimeZone(timezone.to_owned()))?;
        Ok(Self {
            cron,
            tz,
            expression: expression.to_owned(),
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's name.
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// `t` as a local RFC 3339 time with the zone's offset at that instant.
    pub fn local(&self, t: Timestamp) -> String {
        to_utc(t)
            .with_timezone(&self.tz)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    }

    /// The local date of `t` in the schedule's zone, `YYYY-MM-DD`.
    pub fn local_date(&self, t: Timestamp) -> String {
        to_utc(t)
            .with_timezone(&self.tz)
            .format("%Y-%m-%d")
            .to_string()
    }

    /// The instant the wall clock has shown every local time up to: `t` itself, except in
    /// the second pass of a repeated hour, where the clock already showed the whole hour
    /// once; then the instant just before the change (whose local time is the latest shown).
    fn frontier(&self, t: Timestamp) -> DateTime<Tz> {
        let local = to_utc(t).with_timezone(&self.tz);
        let LocalResult::Ambiguous(early, late) = self.tz.from_local_datetime(&local.naive_local())
        else {
            return local;
        };
        if local.offset().fix() != late.offset().fix() || early == late {
            return local;
        }
        // t is in the second pass: find the change, which lies within one offset difference
        // before t, by bisection on the offset.
        let shift = (late.timestamp() - early.timestamp()).abs();
        let (mut lo, mut hi) = (t.0 / SECOND_US - shift - 1, t.0 / SECOND_US);
        let later_offset = late.offset().fix();
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let at = Utc
                .timestamp_opt(mid, 0)
                .single()
                .expect("a second within the zone's range")
                .with_timezone(&self.tz);
            if at.offset().fix() == later_offset {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Utc.timestamp_opt(lo, 0)
            .single()
            .expect("a second within the zone's range")
            .with_timezone(&self.tz)
    }

    /// The first window strictly after `t`, or `None` when the expression never matches
    /// again.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut from = floor_second(t);
        // A handful of rounds covers every daylight-saving edge; each round moves forward.
        for _ in 0..4 {
            let start = self.frontier(from);
            let found = self.cron.find_next_occurrence(&start, false).ok()?;
            let at = from_dt(&found);
            if at > t {
                // croner moves only single-time expressions out of a skipped hour; for any
                // other, a match inside a gap before `at` fires at the first instant after it.
                return Some(self.skipped_match_before(t, at).unwrap_or(at));
            }
            from = Timestamp(from.0.max(at.0) + SECOND_US);
        }
        None
    }

    /// The end of the first spring-forward gap in `(t, before)` whose skipped local times
    /// hold a match of the expression, if any.
    fn skipped_match_before(&self, t: Timestamp, before: Timestamp) -> Option<Timestamp> {
        const STEP: i64 = 12 * 3600; // changes of offset are months apart
        let offset_at = |secs: i64| {
            Utc.timestamp_opt(secs, 0)
                .single()
                .map(|u| u.with_timezone(&self.tz).offset().fix().local_minus_utc())
        };
        let (start, end) = (t.0.div_euclid(SECOND_US), before.0.div_euclid(SECOND_US));
        let mut lo = start;
        while lo < end {
            let hi = (lo + STEP).min(end);
            let (before_off, after_off) = (offset_at(lo)?, offset_at(hi)?);
            if after_off > before_off {
                // Bisect to the first second of the new offset: the end of the gap.
                let (mut a, mut b) = (lo, hi);
                while b - a > 1 {
                    let mid = a + (b - a) / 2;
                    if offset_at(mid)? == before_off {
                        a = mid;
                    } else {
                        b = mid;
                    }
                }
                let gap_end = Utc.timestamp_opt(b, 0).single()?;
                // Local times [end - jump, end) never happened; match them as plain fields.
                let skipped_to = gap_end.with_timezone(&self.tz).naive_local();
                let skipped_from =
                    skipped_to - chrono::Duration::seconds(i64::from(after_off - before_off));
                let probe = Utc.from_utc_datetime(&(skipped_from - chrono::Duration::seconds(1)));
                if let Ok(m) = self.cron.find_next_occurrence(&probe, false)
                    && m.naive_utc() < skipped_to
                    && Timestamp(b * SECOND_US) > t
                {
                    return Some(Timestamp(b * SECOND_US));
                }
            }
            lo = hi;
        }
        None
    }

    /// The latest window at or before `t`.
    ///
    /// croner's backward search does not follow the rule above inside a skipped hour, so its
    /// answer only anchors a forward walk with [`CronSchedule::next_after`], which does.
    pub fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let mut anchor = floor_second(t);
        for _ in 0..8 {
            let found = self
                .cron
                .find_previous_occurrence(&self.frontier(anchor), true)
                .ok()?;
            let candidate = from_dt(&found);
            let mut best = None;
            let mut at = Timestamp(candidate.0 - 1);
            while let Some(next) = self.next_after(at) {
                if next > t {
                    break;
                }
                best = Some(next);
                at = next;
            }
            if best.is_some() {
                return best;
            }
            anchor = Timestamp(candidate.0 - SECOND_US);
        }
        None
    }

    /// The latest window strictly before `t`.
    pub fn latest_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.latest_at_or_before(Timestamp(t.0 - 1))
    }

    /// Up to `n` windows after `t`.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n.min(1024));
        let mut at = t;
        while out.len() < n {
            let Some(next) = self.next_after(at) else {
                break;
            };
            out.push(next);
            at = next;
        }
        out
    }

    /// The windows in `[from, to]`, oldest first; `Err(n)` when there are more than `max`
    /// (`n` = `max + 1`, the count seen before stopping).
    ///
    /// # Errors
    ///
    /// The count seen when the range holds more than `max` windows.
    pub fn windows(
        &self,
        from: Timestamp,
        to: Timestamp,
        max: usize,
    ) -> Result<Vec<Timestamp>, usize> {
        let mut out = Vec::new();
        let mut at = Timestamp(from.0 - 1);
        while let Some(next) = self.next_after(at) {
            if next > to {
                break;
            }
            if out.len() == max {
                return Err(max + 1);
            }
            out.push(next);
            at = next;
        }
        Ok(out)
    }
}

/// The jitter of one window: a fixed fraction of `jitter_ms` derived from the window, so
/// every process computes the same fire time.
pub fn jitter(workflow: &str, trigger: &str, scheduled: Timestamp, jitter_ms: u64) -> i64 {
    if jitter_ms == 0 {
        return 0;
    }
    let digest = Sha256::digest(format!("{workflow}\u{1f}{trigger}\u{1f}{}", scheduled.0));
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&digest[..8]);
    let ms = u64::from_be_bytes(eight) % (jitter_ms + 1);
    i64::try_from(ms).unwrap_or(0) * 1_000
}

/// The idempotency key of one window: starting a run with it derives the same run id in
/// every process, from the scheduler and from a host's own timer (`cron_start`).
pub fn window_key(scheduled: Timestamp) -> String {
    format!("schedule:{}", scheduled.to_rfc3339())
}

/// What a scheduler does with a schedule's windows at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirePlan {
    /// Windows to fire now, oldest first.
    pub fire: Vec<Timestamp>,
    /// Windows given up by the catch-up policy (counted up to [`MAX_WINDOWS_PER_PLAN`]).
    pub missed: u64,
    /// The first window not handled by this plan (`None`: the schedule is over).
    pub next: Option<Timestamp>,
}

/// Decides which windows in `[due, now]` fire: those within the policy's grace after their
/// (jittered) time fire; older ones follow the catch-up policy; windows after `end_at`
/// never fire. `jitter` gives each window's jitter in microseconds.
pub fn plan_fires(
    schedule: &CronSchedule,
    policy: &SchedulePolicy,
    due: Timestamp,
    now: Timestamp,
    jitter: impl Fn(Timestamp) -> i64,
) -> FirePlan {
    let end = policy.end_at.map(|e| Timestamp(e.timestamp_micros()));
    let horizon = match end {
        Some(e) if e < now => e,
        _ => now,
    };
    // Newest first, back to `due`.
    let mut newest_first = Vec::new();
    let mut truncated = false;
    let mut w = schedule.latest_at_or_before(horizon);
    while let Some(x) = w {
        if x < due {
            break;
        }
        if newest_first.len() == MAX_WINDOWS_PER_PLAN {
            truncated = true;
            break;
        }
        newest_first.push(x);
        w = schedule.latest_before(x);
    }
    let grace = i64::try_from(policy.grace_ms).unwrap_or(i64::MAX / 2) * 1_000;
    let mut on_time = Vec::new();
    let mut missed_windows = Vec::new();
    let mut next = None;
    // A window fires at its time plus its jitter, and never before the window ahead of it,
    // so a large jitter delays later windows instead of making them late.
    let mut fire_at = i64::MIN;
    for &x in newest_first.iter().rev() {
        fire_at = fire_at.max(x.0 + jitter(x));
        if fire_at > now.0 {
            next = Some(x);
            break;
        }
        if now.0 - fire_at <= grace {
            on_time.push(x);
        } else {
            missed_windows.push(x);
        }
    }
    let keep = match policy.catch_up {
        CatchUp::Skip => 0,
        CatchUp::Latest if on_time.is_empty() => 1,
        CatchUp::Latest => 0,
        CatchUp::All => policy.catch_up_limit as usize,
    };
    let keep = keep.min(missed_windows.len());
    let given_up = missed_windows.len() - keep;
    let mut fire: Vec<Timestamp> = missed_windows.split_off(given_up);
    fire.extend(on_time);
    let next = next.or_else(|| schedule.next_after(horizon.max(Timestamp(due.0 - 1))));
    let next = next.filter(|n| end.is_none_or(|e| *n <= e));
    FirePlan {
        fire,
        missed: given_up as u64 + u64::from(truncated),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Overlap;

    fn at(s: &str) -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339(s)
                .expect("test instant")
                .timestamp_micros(),
        )
    }

    fn locals(s: &CronSchedule, from: &str, to: &str) -> Vec<String> {
        s.windows(at(from), at(to), 1000)
            .expect("few windows")
            .into_iter()
            .map(|t| s.local(t))
            .collect()
    }

    #[test]
    fn daily_in_the_spring_forward_gap_fires_once_after_the_gap() {
        // Amsterdam, 2026-03-29: 02:00 jumps to 03:00.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            locals(&s, "2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
        // New York, 2026-03-08: 02:00 jumps to 03:00.
        let s = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            locals(&s, "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
        );
    }

    #[test]
    fn lists_ranges_and_steps_in_the_gap_fire_once_after_it() {
        let s = CronSchedule::parse("30 2,14 * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            locals(&s, "2026-03-28T12:00:00Z", "2026-03-29T23:00:00Z"),
            [
                "2026-03-28T14:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T14:30:00+02:00"
            ]
        );
        // Three windows fall in the skipped hour: one fire for the gap.
        let s = CronSchedule::parse("*/20 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            locals(&s, "2026-03-08T00:00:00Z", "2026-03-09T12:00:00Z"),
            [
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:00:00-04:00",
                "2026-03-09T02:20:00-04:00",
                "2026-03-09T02:40:00-04:00"
            ]
        );
        // A yearly expression across both changes of a year still lands on its day.
        let s = CronSchedule::parse("0 12 1 7 *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")).map(|t| s.local(t)),
            Some("2026-07-01T12:00:00+02:00".into())
        );
    }

    #[test]
    fn daily_in_the_repeated_hour_fires_once() {
        // Amsterdam, 2026-10-25: 03:00 falls back to 02:00, so 02:30 happens twice.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            locals(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // New York, 2026-11-01: 02:00 falls back to 01:00, so 01:30 happens twice.
        let s = CronSchedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            locals(&s, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
    }

    #[test]
    fn interval_schedules_fire_once_per_wall_clock_time_across_both_changes() {
        let s = CronSchedule::parse("*/30 * * * *", "America/New_York").unwrap();
        // Fall back: 00:30, 01:00, 01:30 (first pass), then nothing until 02:00 EST.
        assert_eq!(
            locals(&s, "2026-11-01T04:15:00Z", "2026-11-01T07:45:00Z"),
            [
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T02:30:00-05:00",
            ]
        );
        // From inside the second pass, the next window is after it.
        assert_eq!(
            s.next_after(at("2026-11-01T06:10:00Z")).map(|t| s.local(t)),
            Some("2026-11-01T02:00:00-05:00".into())
        );
        assert_eq!(
            s.latest_at_or_before(at("2026-11-01T06:10:00Z"))
                .map(|t| s.local(t)),
            Some("2026-11-01T01:30:00-04:00".into())
        );
        // Spring forward: 01:30, then 03:00 (02:xx does not exist).
        assert_eq!(
            locals(&s, "2026-03-08T06:15:00Z", "2026-03-08T07:45:00Z"),
            [
                "2026-03-08T01:30:00-05:00",
                "2026-03-08T03:00:00-04:00",
                "2026-03-08T03:30:00-04:00"
            ]
        );
        // Backwards from inside the day after the gap, the snapped window is found.
        let daily = CronSchedule::parse("30 2 * * *", "Europe/Amsterdam").unwrap();
        assert_eq!(
            daily
                .latest_at_or_before(at("2026-03-29T01:15:00Z"))
                .map(|t| daily.local(t)),
            Some("2026-03-29T03:00:00+02:00".into())
        );
    }

    #[test]
    fn seconds_and_aliases() {
        let s = CronSchedule::parse("*/15 * * * * *", "Etc/UTC").unwrap();
        assert_eq!(
            s.upcoming(at("2026-01-01T00:00:00.5Z"), 3),
            [
                at("2026-01-01T00:00:15Z"),
                at("2026-01-01T00:00:30Z"),
                at("2026-01-01T00:00:45Z")
            ]
        );
        let s = CronSchedule::parse("@hourly", "Asia/Kolkata").unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:10:00Z")),
            Some(at("2026-01-01T00:30:00Z")),
            "Kolkata is UTC+05:30"
        );
        assert!(matches!(
            CronSchedule::parse("61 * * * *", "Etc/UTC"),
            Err(CronError::Expression { .. })
        ));
        assert!(matches!(
            CronSchedule::parse("* * * * *", "Mars/Olympus"),
            Err(CronError::TimeZone(_))
        ));
    }

    fn policy(catch_up: CatchUp) -> SchedulePolicy {
        SchedulePolicy {
            catch_up,
            catch_up_limit: 2,
            overlap: Overlap::Allow,
            ..SchedulePolicy::default()
        }
    }

    #[test]
    fn catch_up_after_a_three_hour_outage() {
        let s = CronSchedule::parse("0 * * * *", "Etc/UTC").unwrap();
        let due = at("2026-01-01T09:00:00Z");
        let now = at("2026-01-01T12:00:30Z");
        let plan = |c| plan_fires(&s, &policy(c), due, now, |_| 0);
        // 09:00, 10:00, 11:00 are missed; 12:00 is on time.
        let skip = plan(CatchUp::Skip);
        assert_eq!(skip.fire, [at("2026-01-01T12:00:00Z")]);
        assert_eq!(skip.missed, 3);
        assert_eq!(skip.next, Some(at("2026-01-01T13:00:00Z")));
        let latest = plan(CatchUp::Latest);
        assert_eq!(latest.fire, [at("2026-01-01T12:00:00Z")]);
        let all = plan(CatchUp::All);
        assert_eq!(
            all.fire,
            [
                at("2026-01-01T10:00:00Z"),
                at("2026-01-01T11:00:00Z"),
                at("2026-01-01T12:00:00Z")
            ]
        );
        assert_eq!(all.missed, 1);
        // Without an on-time window, `latest` fires the most recent missed one.
        let late = plan_fires(
            &s,
            &policy(CatchUp::Latest),
            due,
            at("2026-01-01T12:30:00Z"),
            |_| 0,
        );
        assert_eq!(late.fire, [at("2026-01-01T12:00:00Z")]);
        assert_eq!(late.missed, 3);
        let none = plan_fires(
            &s,
            &policy(CatchUp::Skip),
            due,
            at("2026-01-01T12:30:00Z"),
            |_| 0,
        );
        assert!(none.fire.is_empty());
        assert_eq!(none.missed, 4);
    }

    #[test]
    fn a_jitter_longer_than_the_interval_delays_windows_without_losing_them() {
        let s = CronSchedule::parse("* * * * *", "Etc/UTC").unwrap();
        let p = SchedulePolicy {
            catch_up: CatchUp::Skip,
            ..SchedulePolicy::default()
        };
        // Window 00:01 jitters by 10 min, the next ones by nothing: they wait behind it.
        let jit = |w: Timestamp| {
            if w == at("2026-01-01T00:01:00Z") {
                600 * SECOND_US
            } else {
                0
            }
        };
        let plan = plan_fires(
            &s,
            &p,
            at("2026-01-01T00:01:00Z"),
            at("2026-01-01T00:11:00Z"),
            jit,
        );
        assert_eq!(plan.fire.len(), 11, "00:01 to 00:11 all fire");
        assert_eq!(plan.missed, 0);
    }

    #[test]
    fn jitter_delays_and_end_at_stops() {
        let s = CronSchedule::parse("* * * * *", "Etc/UTC").unwrap();
        let due = at("2026-01-01T00:01:00Z");
        let plan = plan_fires(
            &s,
            &SchedulePolicy::default(),
            due,
            at("2026-01-01T00:01:05Z"),
            |_| 10 * SECOND_US,
        );
        assert!(plan.fire.is_empty());
        assert_eq!(plan.next, Some(due), "the window waits for its jitter");
        let ended = SchedulePolicy {
            end_at: Some("2026-01-01T00:02:30Z".parse().unwrap()),
            ..SchedulePolicy::default()
        };
        let plan = plan_fires(&s, &ended, due, at("2026-01-01T00:02:10Z"), |_| 0);
        assert_eq!(plan.fire, [at("2026-01-01T00:02:00Z")]);
        assert_eq!(plan.next, None, "no window after end_at");
        let j = jitter("w", "t", due, 5_000);
        assert!((0..=5_000_000).contains(&j));
        assert_eq!(j, jitter("w", "t", due, 5_000));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const ZONES: [&str; 6] = [
            "Europe/Amsterdam",
            "America/New_York",
            "Australia/Sydney",
            "America/Santiago",
            "Asia/Kolkata",
            "Etc/UTC",
        ];

        fn expression() -> impl Strategy<Value = String> {
            prop_oneof![
                (0u8..60, 0u8..24).prop_map(|(m, h)| format!("{m} {h} * * *")),
                (0u8..60, 0u8..12).prop_map(|(m, h)| format!("{m} {h},{} * * *", h + 12)),
                (1u8..31).prop_map(|s| format!("*/{s} * * * *")),
                (0u8..60, 1u8..4).prop_map(|(m, w)| format!("{m} 1-3 * * */{w}")),
                (1u8..60).prop_map(|s| format!("*/{s} 2 * * * *")),
                Just("@hourly".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Windows found forwards and backwards agree, never repeat, never go back in
            /// time, and each one either matches the expression in local time or is the
            /// first instant after a skipped hour.
            #[test]
            fn windows_are_consistent(
                expr in expression(),
                zone in 0..ZONES.len(),
                // 2026-01-01 .. 2028-01-01, in seconds
                secs in 1_767_225_600i64..1_830_297_600i64,
            ) {
                let s = CronSchedule::parse(&expr, ZONES[zone]).expect("valid");
                let t = Timestamp(secs * SECOND_US);
                let n = s.next_after(t).expect("a next window");
                prop_assert!(n > t);
                prop_assert_eq!(s.latest_at_or_before(n), Some(n));
                prop_assert_eq!(s.next_after(Timestamp(n.0 - 1)), Some(n));
                let n2 = s.next_after(n).expect("another window");
                prop_assert!(n2 > n);
                prop_assert_eq!(s.latest_before(n2), Some(n));
                let local = to_utc(n).with_timezone(&s.tz);
                let offset = |u: i64| to_utc(Timestamp(u)).with_timezone(&s.tz).offset().fix();
                let after_gap = offset(n.0 - SECOND_US).local_minus_utc()
                    < offset(n.0).local_minus_utc();
                prop_assert!(
                    s.cron.is_time_matching(&local).unwrap_or(false) || after_gap,
                    "{} in {}: {} matches neither",
                    expr,
                    ZONES[zone],
                    s.local(n)
                );
            }
        }
    }
}
