//! Actions: the code that runs workflow steps.
//!
//! An action is either a WebAssembly component implementing the `squid-mesh:step` WIT world,
//! resolved by [`ActionKey`] through the host-owned [`ActionRegistry`], or one of the native
//! [`Builtin`] step kinds. Both go through [`ActionHost::invoke`], so the engine never asks
//! where an action comes from.
//!
//! Three failure planes stay apart (see `STYLE.md`):
//!
//! - a step's business error, returned by the action ([`StepOutcome::Failed`] with
//!   [`StepErrorKind::Action`]);
//! - a trap or a limit hit inside the sandbox, turned into a typed step error
//!   ([`StepErrorKind::Timeout`], [`StepErrorKind::MemoryLimit`], ...);
//! - a fault of the host itself (unknown key, digest mismatch, IO), returned as
//!   [`ActionError`] to the caller and never shown to the guest.

mod builtin;
mod host;
mod output;
mod registry;
mod types;

pub use crate::vocab::{
    ActionKey, Digest, LogLevel, StepError, StepErrorKind, StepOutcome, Suspension,
};
pub use builtin::Builtin;
pub use host::{ActionHost, HostConfig, LoadSource};
pub use registry::{
    ActionRegistry, ComponentSource, FetchComponent, Fetching, Manifest, ManifestAction,
    RegisteredAction,
};
pub use types::{
    ActionDescription, ActionError, ActionLimits, ActionTarget, Capabilities, ChildRunStarter,
    Diagnostics, DirGrant, Invocation, LogRecord, StepContext, StepServices, WorkScheduler,
};
