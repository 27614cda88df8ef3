//! The vocabulary: the types every layer speaks (ids, keys, digests, time, statuses, step
//! outcomes, deadlines). It imports nothing from the rest of the crate; everything else
//! imports from here. See ARCHITECTURE.md for the layers.

pub mod clock;
mod deadline;
mod ids;
mod outcome;
mod status;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use deadline::{Deadline, DeadlineSpec, DeadlineState, DeadlineStatus, most_urgent};
pub use ids::{ActionKey, Digest, InvalidActionKey, InvalidDigest, InvalidRunId, RunId};
pub use outcome::{LogLevel, StepError, StepErrorKind, StepOutcome, Suspension};
pub use status::{
    ActionState, AttemptStatus, CatalogEventKind, CommandKind, CompensationStatus, FireOrigin,
    FireOutcome, RunStatus, ScheduleEventKind, ScheduleState, StepState, UnknownName,
};
