//! Every status a run, a step, an attempt or a compensation can be in, and the command kinds.
//! Stored as snake_case text; parsed once when a row is read.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Work is planned or in flight.
    Running,
    /// Nothing is planned and the run has not ended.
    Idle,
    /// Stopped at a manual gate.
    Paused,
    /// Ended successfully.
    Completed,
    /// Ended with an error.
    Failed,
    /// Ended by cancellation.
    Cancelled,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [Self; 6] = [
        Self::Running,
        Self::Idle,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Idle => "idle",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "idle" => Self::Idle,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// Where a step stands in a dependency-mode run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Planned (an attempt exists, not yet applied).
    Planned,
    /// Completed successfully.
    Completed,
    /// Failed for good.
    Failed,
}

/// Where one attempt (a runnable) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Waiting to be claimed (from its visible time).
    Scheduled,
    /// Claimed by a worker under a lease.
    Claimed,
    /// Its outcome is recorded but not yet applied to the run.
    Recorded,
    /// Applied: it succeeded.
    Succeeded,
    /// Applied: it failed.
    Failed,
    /// Applied: it stopped the run at a manual gate.
    Suspended,
    /// Closed without running to the end (the run ended).
    Cancelled,
}

impl AttemptStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Scheduled,
        Self::Claimed,
        Self::Recorded,
        Self::Succeeded,
        Self::Failed,
        Self::Suspended,
        Self::Cancelled,
    ];

    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Claimed => "claimed",
            Self::Recorded => "recorded",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Suspended => "suspended",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the attempt may still run (scheduled or claimed).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Scheduled | Self::Claimed)
    }

    /// Whether the attempt's outcome was applied to its run.
    pub fn is_applied(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Suspended)
    }
}

/// Where a failed run's saga compensation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    /// Compensations are running, newest completed step first.
    Compensating,
    /// Every compensation succeeded.
    Compensated,
    /// A compensation failed for good; the rest were left as they were.
    PartiallyCompensated,
}

impl CompensationStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
            Self::PartiallyCompensated => "partially_compensated",
        }
    }
}

/// The command a signal carries (journaled in every command receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Start a run (`payload`: `{workflow, trigger?, payload, queue?}`).
    Start,
    /// Start a run for a cron fire (`payload`: as start, plus `scheduled_for`).
    CronStart,
    /// Resume a paused run.
    Resume,
    /// Approve an approval gate.
    Approve,
    /// Reject an approval gate.
    Reject,
    /// Cancel a run.
    Cancel,
    /// Start a new run from a run's trigger and input (`payload`: `{allow_irreversible?}`).
    Replay,
}

impl CommandKind {
    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::CronStart => "cron_start",
            Self::Resume => "resume",
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Cancel => "cancel",
            Self::Replay => "replay",
        }
    }

    /// The CloudEvents type of a signal of this kind.
    pub fn event_type(self) -> String {
        format!("dev.squid-mesh.{}", self.as_str())
    }

    /// The kind of a CloudEvents type, if it is one of ours.
    pub fn from_event_type(t: &str) -> Option<Self> {
        Some(match t.strip_prefix("dev.squid-mesh.")? {
            "start" => Self::Start,
            "cron_start" => Self::CronStart,
            "resume" => Self::Resume,
            "approve" => Self::Approve,
            "reject" => Self::Reject,
            "cancel" => Self::Cancel,
            "replay" => Self::Replay,
            _ => return None,
        })
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

display_as_str!(RunStatus, AttemptStatus, CompensationStatus, CommandKind);

/// A stored name no variant of the expected enum has (a row written by something else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// What was expected (`schedule state`, ...).
    pub expected: &'static str,
    /// The text found.
    pub found: String,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.expected, self.found)
    }
}

impl std::error::Error for UnknownName {}

/// An enum stored as snake_case text: `as_str`, strict `parse`, `Display` and
/// `TryFrom<String>` (for row decoders) from one list of names.
macro_rules! stored_names {
    ($t:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $t {
            /// The name as stored.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($name => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl TryFrom<String> for $t {
            type Error = UnknownName;

            fn try_from(s: String) -> Result<Self, UnknownName> {
                Self::parse(&s).ok_or(UnknownName { expected: $what, found: s })
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Whether a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    /// Fires its windows.
    Active,
    /// Fires nothing until resumed; windows that pass meanwhile follow the catch-up policy
    /// when it resumes.
    Paused,
}

stored_names!(ScheduleState, "schedule state", {
    Active => "active",
    Paused => "paused",
});

/// What happened to a schedule's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// A run started for it.
    Started,
    /// Not started: the previous run was still going (overlap `skip`, or `queue_one` with a
    /// window already waiting), or its run id held another payload.
    Skipped,
    /// Waiting for the previous run to end (overlap `queue_one`).
    Queued,
}

stored_names!(FireOutcome, "fire outcome", {
    Started => "started",
    Skipped => "skipped",
    Queued => "queued",
});

/// Who handled a schedule's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireOrigin {
    /// The scheduler, on time or catching up.
    Scheduler,
    /// An explicit backfill.
    Backfill,
    /// A `cron_start` signal from a host's own timer.
    Signal,
}

stored_names!(FireOrigin, "fire origin", {
    Scheduler => "scheduler",
    Backfill => "backfill",
    Signal => "signal",
});

/// An entry of a schedule's audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleEventKind {
    /// A spec was applied (created or changed the schedule).
    Applied,
    /// An operator paused it.
    Paused,
    /// An operator resumed it.
    Resumed,
    /// An operator backfilled a range.
    Backfilled,
    /// The schedule was removed.
    Removed,
    /// A window could not fire; the schedule is parked until its spec is applied again.
    Failed,
}

stored_names!(ScheduleEventKind, "schedule event kind", {
    Applied => "applied",
    Paused => "paused",
    Resumed => "resumed",
    Backfilled => "backfilled",
    Removed => "removed",
    Failed => "failed",
});

/// The state of one approved version of an action in the catalog.
///
/// A key has at most one current version, `Active` or `Disabled`; approving another makes
/// the old one `Superseded`. Runs keep the digest they pinned at start: a superseded
/// version still runs for them, a revoked one never runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// The key's current version: new starts pin it and steps run it.
    Active,
    /// The key's current version, switched off: new starts are refused and steps that reach
    /// it wait (explained) until it is enabled again.
    Disabled,
    /// Replaced by a newer approval: runs that pinned it still run it; new starts do not.
    Superseded,
    /// Withdrawn for good: steps pinned to it fail closed with `action_revoked`.
    Revoked,
}

stored_names!(ActionState, "action state", {
    Active => "active",
    Disabled => "disabled",
    Superseded => "superseded",
    Revoked => "revoked",
});

impl ActionState {
    /// Whether a step pinned to a version in this state may run it.
    pub fn runs(self) -> bool {
        matches!(self, Self::Active | Self::Superseded)
    }

    /// Whether this is the key's current version (active or disabled).
    pub fn is_current(self) -> bool {
        matches!(self, Self::Active | Self::Disabled)
    }
}

/// An entry of the action catalog's audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatalogEventKind {
    /// A version was approved (new, or re-approved with other limits or capabilities); the
    /// key's previous current version, if any, was superseded.
    Approved,
    /// The key's current version was disabled.
    Disabled,
    /// The key's current version was enabled again.
    Enabled,
    /// A version was revoked.
    Revoked,
}

stored_names!(CatalogEventKind, "catalog event kind", {
    Approved => "approved",
    Disabled => "disabled",
    Enabled => "enabled",
    Revoked => "revoked",
});
