//! Native step kinds: `log`, `wait`, `pause` and `approval`.
//!
//! They answer through the same [`Invocation`] shape as WebAssembly actions, so the engine
//! plans their successors with the same code: `wait` succeeds with a continue-after delay
//! (millisecond precision), `pause` and `approval` suspend the run at a manual gate.

use serde::{Deserialize, Serialize};
use serde_json::Map;

use super::types::{
    Diagnostics, Invocation, LogLevel, LogRecord, StepContext, StepOutcome, Suspension,
};

/// A native step kind and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
    Pause,
    /// Stops the run until `approve` or `reject` by an actor.
    Approval,
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
            Self::Pause => "pause",
            Self::Approval => "approval",
        }
    }

    pub(crate) fn invoke(&self, ctx: &StepContext) -> Invocation {
        let mut diagnostics = Diagnostics::default();
        let outcome = match self {
            Self::Log { level, message } => {
                emit(*level, ctx, message);
                diagnostics.logs.push(LogRecord {
                    level: *level,
                    message: message.clone(),
                });
                StepOutcome::Succeeded {
                    output: Map::new(),
                    continue_after_ms: None,
                }
            }
            Self::Wait { duration_ms } => StepOutcome::Succeeded {
                output: Map::new(),
                continue_after_ms: Some(*duration_ms),
            },
            Self::Pause => StepOutcome::Suspended(Suspension::Pause),
            Self::Approval => StepOutcome::Suspended(Suspension::Approval),
        };
        Invocation {
            outcome,
            diagnostics,
            elapsed_us: 0,
            fuel_consumed: None,
        }
    }
}

/// Writes an action's log record to `tracing`, attributed to its step attempt.
pub(crate) fn emit(level: LogLevel, ctx: &StepContext, message: &str) {
    macro_rules! at {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "squid_mesh::action",
                run_id = %ctx.run_id,
                workflow = %ctx.workflow,
                step = %ctx.step,
                attempt = ctx.attempt,
                "{message}"
            )
        };
    }
    match level {
        LogLevel::Trace => at!(trace),
        LogLevel::Debug => at!(debug),
        LogLevel::Info => at!(info),
        LogLevel::Warn => at!(warn),
        LogLevel::Error => at!(error),
    }
}
