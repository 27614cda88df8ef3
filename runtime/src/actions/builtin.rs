//! Native step kinds: `log`, `wait`, `pause` and `approval`.
//!
//! They answer through the same [`Invocation`] shape as WebAssembly actions, so the engine
//! plans their successors with the same code: `wait` succeeds with a continue-after delay
//! (millisecond precision), `pause` and `approval` suspend the run at a manual gate.

use serde_json::Map;

pub use crate::spec::Builtin;

use super::types::{
    Diagnostics, Invocation, LogLevel, LogRecord, StepContext, StepOutcome, Suspension,
};

/// Runs a built-in step kind.
pub(crate) fn invoke(builtin: &Builtin, ctx: &StepContext) -> Invocation {
    let mut diagnostics = Diagnostics::default();
    let outcome = match builtin {
        Builtin::Log { level, message } => {
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
        Builtin::Wait { duration_ms } => StepOutcome::Succeeded {
            output: Map::new(),
            continue_after_ms: Some(*duration_ms),
        },
        Builtin::Pause {} => StepOutcome::Suspended(Suspension::Pause),
        Builtin::Approval {} => StepOutcome::Suspended(Suspension::Approval),
    };
    Invocation {
        outcome,
        diagnostics,
        elapsed_us: 0,
        fuel_consumed: None,
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
