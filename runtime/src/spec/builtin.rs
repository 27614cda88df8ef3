//! The native step kinds a spec can name: `log`, `wait`, `pause` and `approval` (the
//! actions module runs them).

use serde::{Deserialize, Serialize};

use crate::vocab::LogLevel;

/// A native step kind and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Builtin {
    /// Writes `message` to the host's log and succeeds with an empty output.
    Log {
        /// Severity.
        #[serde(default = "info")]
        level: LogLevel,
        /// The text (non-empty).
        message: String,
    },
    /// Succeeds at once and delays the successor by `duration_ms`, durably.
    Wait {
        /// Delay in milliseconds (positive).
        duration_ms: u64,
    },
    /// Stops the run until `resume`.
    Pause {},
    /// Stops the run until `approve` or `reject` by an actor.
    Approval {},
}

fn info() -> LogLevel {
    LogLevel::Info
}

impl Builtin {
    /// The kind's name, as written in specs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Log { .. } => "log",
            Self::Wait { .. } => "wait",
            Self::Pause {} => "pause",
            Self::Approval {} => "approval",
        }
    }
}
