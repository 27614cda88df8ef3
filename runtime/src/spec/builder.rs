//! A builder that reads like the workflow DSL.
//!
//! ```
//! use std::time::Duration;
//!
//! use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
//!
//! let spec = WorkflowSpec::builder("orders")
//!     .version("2026-11-25")
//!     .trigger(Trigger::manual("manual").string("order_id").list("items"))
//!     .step(Step::action("validate", "orders.validate").output("validation"))
//!     .step(
//!         Step::action("charge", "payments.charge")
//!             .retry_exponential(3, Duration::from_millis(100), Duration::from_secs(2)),
//!     )
//!     .on_ok("validate", "charge")
//!     .on_ok("charge", "complete")
//!     .build();
//! assert!(spec.validate(None).is_ok());
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::Builtin;
use super::{
    Backoff, Condition, DeadlineSpec, DynamicDefault, FieldSpec, FieldType, InputMapping, Outcome,
    RetryPolicy, SchedulePolicy, StepSpec, TransitionSpec, TriggerKind, TriggerSpec, WorkflowSpec,
};
use crate::vocab::{ActionKey, LogLevel};

/// Builds a [`WorkflowSpec`]. Nothing is checked until [`WorkflowSpec::validate`].
#[derive(Debug, Clone)]
pub struct WorkflowBuilder {
    spec: WorkflowSpec,
}

impl WorkflowBuilder {
    pub(super) fn new(name: impl Into<String>) -> Self {
        Self {
            spec: WorkflowSpec {
                name: name.into(),
                version: None,
                triggers: Vec::new(),
                steps: Vec::new(),
                transitions: Vec::new(),
                editor: None,
            },
        }
    }

    /// Sets the version label.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.spec.version = Some(version.into());
        self
    }

    /// Adds a trigger.
    #[must_use]
    pub fn trigger(mut self, trigger: impl Into<TriggerSpec>) -> Self {
        self.spec.triggers.push(trigger.into());
        self
    }

    /// Adds a step.
    #[must_use]
    pub fn step(mut self, step: impl Into<StepSpec>) -> Self {
        self.spec.steps.push(step.into());
        self
    }

    /// Adds an approval gate named `name` whose decision is stored under `output`.
    #[must_use]
    pub fn approval_step(self, name: impl Into<String>, output: impl Into<String>) -> Self {
        self.step(Step::approval(name).output(output))
    }

    /// Adds a transition.
    #[must_use]
    pub fn transition(mut self, transition: TransitionSpec) -> Self {
        self.spec.transitions.push(transition);
        self
    }

    /// Routes `from`'s success to `to` (a step or `complete`).
    #[must_use]
    pub fn on_ok(self, from: &str, to: &str) -> Self {
        self.transition(Transition::on_ok(from, to))
    }

    /// Routes `from`'s failure (after retries) to `to` (a step or `complete`).
    #[must_use]
    pub fn on_error(self, from: &str, to: &str) -> Self {
        self.transition(Transition::on_error(from, to))
    }

    /// The spec.
    pub fn build(self) -> WorkflowSpec {
        self.spec
    }
}

/// Builds a [`TriggerSpec`].
#[derive(Debug, Clone)]
pub struct TriggerBuilder {
    trigger: TriggerSpec,
}

/// Constructors of triggers.
#[derive(Debug)]
pub struct Trigger;

impl Trigger {
    /// A trigger started by a call.
    pub fn manual(name: impl Into<String>) -> TriggerBuilder {
        TriggerBuilder {
            trigger: TriggerSpec {
                name: name.into(),
                kind: TriggerKind::Manual,
                payload: Vec::new(),
            },
        }
    }

    /// A trigger started on a cron schedule in a time zone.
    pub fn cron(
        name: impl Into<String>,
        cron: impl Into<String>,
        timezone: impl Into<String>,
    ) -> TriggerBuilder {
        TriggerBuilder {
            trigger: TriggerSpec {
                name: name.into(),
                kind: TriggerKind::Cron {
                    cron: cron.into(),
                    timezone: timezone.into(),
                    policy: SchedulePolicy::default(),
                },
                payload: Vec::new(),
            },
        }
    }
}

impl TriggerBuilder {
    /// Sets the schedule policy of a cron trigger (ignored by manual triggers).
    #[must_use]
    pub fn policy(mut self, policy: SchedulePolicy) -> Self {
        if let TriggerKind::Cron { policy: p, .. } = &mut self.trigger.kind {
            *p = policy;
        }
        self
    }

    /// Adds a payload field.
    #[must_use]
    pub fn field(mut self, field: FieldSpec) -> Self {
        self.trigger.payload.push(field);
        self
    }

    fn typed(self, name: impl Into<String>, field_type: FieldType) -> Self {
        self.field(Field::of(name, field_type))
    }

    /// Adds a required string field.
    #[must_use]
    pub fn string(self, name: impl Into<String>) -> Self {
        self.typed(name, FieldType::String)
    }

    /// Adds a required integer field.
    #[must_use]
    pub fn integer(self, name: impl Into<String>) -> Self {
        self.typed(name, FieldType::Integer)
    }

    /// Adds a required number field.
    #[must_use]
    pub fn float(self, name: impl Into<String>) -> Self {
        self.typed(name, FieldType::Float)
    }

    /// Adds a required boolean field.
    #[must_use]
    pub fn boolean(self, name: impl Into<String>) -> Self {
        self.typed(name, FieldType::Boolean)
    }

    /// Adds a required map field.
    #[must_use]
    pub fn map(self, name: impl Into<String>) -> Self {
        self.typed(name, FieldType::Map)
    }

    /// Adds a required list field.
    #[must_use]
    pub fn list(self, name: impl Into<String>) -> Self {
        self.typed(name, FieldType::List)
    }
}

impl From<TriggerBuilder> for TriggerSpec {
    fn from(b: TriggerBuilder) -> Self {
        b.trigger
    }
}

/// Constructors of payload fields.
#[derive(Debug)]
pub struct Field;

impl Field {
    /// A required field of the given type.
    pub fn of(name: impl Into<String>, field_type: FieldType) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            field_type,
            required: true,
            default: None,
            default_from: None,
        }
    }
}

impl FieldSpec {
    /// Makes the field optional.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Sets a literal default.
    #[must_use]
    pub fn default_value(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }

    /// Defaults a string field to today's date or the current instant.
    #[must_use]
    pub fn default_from(mut self, dynamic: DynamicDefault) -> Self {
        self.default_from = Some(dynamic);
        self
    }
}

/// Builds a [`StepSpec`].
#[derive(Debug, Clone)]
pub struct StepBuilder {
    step: StepSpec,
}

/// Constructors of steps.
#[derive(Debug)]
pub struct Step;

impl Step {
    fn with(
        name: impl Into<String>,
        action: Option<ActionKey>,
        builtin: Option<Builtin>,
    ) -> StepBuilder {
        StepBuilder {
            step: StepSpec {
                name: name.into(),
                action,
                builtin,
                input: None,
                output: None,
                retry: None,
                deadline: None,
                compensate: None,
                compensate_retry: None,
                irreversible: false,
                compensatable: None,
                after: Vec::new(),
                invalid_keys: Vec::new(),
            },
        }
    }

    /// A step running the registered action `key`. An invalid key is reported by
    /// [`WorkflowSpec::validate`], not here.
    pub fn action(name: impl Into<String>, key: &str) -> StepBuilder {
        match ActionKey::new(key) {
            Ok(k) => Self::with(name, Some(k), None),
            // Keep the step visibly broken so validation reports it with its path.
            Err(_) => {
                let mut b = Self::with(name, None, None);
                b.step.invalid_keys.push(("action", key.to_owned()));
                b
            }
        }
    }

    /// A built-in `wait` step.
    pub fn wait(name: impl Into<String>, duration: Duration) -> StepBuilder {
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self::with(name, None, Some(Builtin::Wait { duration_ms }))
    }

    /// A built-in `log` step.
    pub fn log(
        name: impl Into<String>,
        level: LogLevel,
        message: impl Into<String>,
    ) -> StepBuilder {
        Self::with(
            name,
            None,
            Some(Builtin::Log {
                level,
                message: message.into(),
            }),
        )
    }

    /// A built-in `pause` gate, resumed by an operator.
    pub fn pause(name: impl Into<String>) -> StepBuilder {
        Self::with(name, None, Some(Builtin::Pause {}))
    }

    /// A built-in `approval` gate, approved or rejected by an actor.
    pub fn approval(name: impl Into<String>) -> StepBuilder {
        Self::with(name, None, Some(Builtin::Approval {}))
    }
}

impl StepBuilder {
    /// Input: copy these top-level keys.
    #[must_use]
    pub fn input<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.step.input = Some(InputMapping::Keys(
            keys.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Input: `target` takes the value at `path` (a missing path fails the run).
    #[must_use]
    pub fn input_path<I, S>(mut self, target: impl Into<String>, path: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let path: Vec<String> = path.into_iter().map(Into::into).collect();
        match &mut self.step.input {
            Some(InputMapping::Paths(paths)) => {
                paths.insert(target.into(), path);
            }
            _ => {
                self.step.input =
                    Some(InputMapping::Paths(BTreeMap::from([(target.into(), path)])));
            }
        }
        self
    }

    /// Stores the output under `key`.
    #[must_use]
    pub fn output(mut self, key: impl Into<String>) -> Self {
        self.step.output = Some(key.into());
        self
    }

    /// Retries up to `max_attempts` in total, with no delay.
    #[must_use]
    pub fn retry(mut self, max_attempts: u32) -> Self {
        self.step.retry = Some(RetryPolicy {
            max_attempts,
            backoff: None,
        });
        self
    }

    /// Retries up to `max_attempts` in total with a backoff curve, for example
    /// `Backoff::linear(Duration::from_millis(50), Duration::from_secs(1)).with_jitter()`.
    #[must_use]
    pub fn retry_with(mut self, max_attempts: u32, backoff: Backoff) -> Self {
        self.step.retry = Some(RetryPolicy {
            max_attempts,
            backoff: Some(backoff),
        });
        self
    }

    /// Retries with exponential backoff from `min` to `max`, no jitter.
    #[must_use]
    pub fn retry_exponential(self, max_attempts: u32, min: Duration, max: Duration) -> Self {
        self.retry_with(max_attempts, Backoff::exponential(min, max))
    }

    /// Sets an informational deadline.
    #[must_use]
    pub fn deadline(mut self, deadline: DeadlineSpec) -> Self {
        self.step.deadline = Some(deadline);
        self
    }

    /// Undoes this step with `key` if the run fails later. An invalid key is reported by
    /// validation.
    #[must_use]
    pub fn compensate(mut self, key: &str) -> Self {
        match ActionKey::new(key) {
            Ok(k) => self.step.compensate = Some(k),
            // Reported by validation at `steps[i].compensate`.
            Err(_) => self.step.invalid_keys.push(("compensate", key.to_owned())),
        }
        self
    }

    /// Retries the compensation up to `max_attempts` in total, with no delay.
    #[must_use]
    pub fn compensate_retry(mut self, max_attempts: u32) -> Self {
        self.step.compensate_retry = Some(RetryPolicy {
            max_attempts,
            backoff: None,
        });
        self
    }

    /// Marks the step irreversible.
    #[must_use]
    pub fn irreversible(mut self) -> Self {
        self.step.irreversible = true;
        self
    }

    /// Marks the step as not compensatable.
    #[must_use]
    pub fn not_compensatable(mut self) -> Self {
        self.step.compensatable = Some(false);
        self
    }

    /// Runs after these steps complete (dependency mode).
    #[must_use]
    pub fn after<I, S>(mut self, steps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.step.after.extend(steps.into_iter().map(Into::into));
        self
    }
}

impl From<StepBuilder> for StepSpec {
    fn from(b: StepBuilder) -> Self {
        b.step
    }
}

/// Constructors of transitions.
#[derive(Debug)]
pub struct Transition;

impl Transition {
    /// `from` succeeded: go to `to` (a step or `complete`).
    pub fn on_ok(from: &str, to: &str) -> TransitionSpec {
        Self::route(from, Outcome::Ok, to)
    }

    /// `from` failed after its retries: go to `to` (a step or `complete`).
    pub fn on_error(from: &str, to: &str) -> TransitionSpec {
        Self::route(from, Outcome::Error, to)
    }

    fn route(from: &str, on: Outcome, to: &str) -> TransitionSpec {
        TransitionSpec {
            from: from.to_owned(),
            on,
            to: to.to_owned(),
            condition: None,
            recovery: None,
        }
    }
}

impl TransitionSpec {
    /// Only when the value at `path` equals `value`.
    #[must_use]
    pub fn when_equals<I, S>(self, path: I, value: Value) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when(path, Some(value), None, None)
    }

    /// Only when the value at `path` is a number greater than `bound`.
    #[must_use]
    pub fn when_greater_than<I, S>(self, path: I, bound: f64) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when(path, None, Some(bound), None)
    }

    /// Only when the value at `path` is a number less than `bound`.
    #[must_use]
    pub fn when_less_than<I, S>(self, path: I, bound: f64) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.when(path, None, None, Some(bound))
    }

    fn when<I, S>(
        mut self,
        path: I,
        equals: Option<Value>,
        greater_than: Option<f64>,
        less_than: Option<f64>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.condition = Some(Condition {
            path: path.into_iter().map(Into::into).collect(),
            equals,
            greater_than,
            less_than,
        });
        self
    }

    /// Labels an error route with a recovery policy (for example `compensation`).
    #[must_use]
    pub fn recovery(mut self, label: impl Into<String>) -> Self {
        self.recovery = Some(label.into());
        self
    }
}
