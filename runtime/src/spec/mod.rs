//! Workflow specs: the declarative graph a run executes.
//!
//! Every workflow is a [`WorkflowSpec`] value, written with the builder
//! ([`WorkflowSpec::builder`]) or read from JSON or TOML, so a spec file is a workflow and an
//! editor can produce one at run time. [`WorkflowSpec::validate`] reports every problem at
//! once; [`WorkflowSpec::fingerprint`] identifies the executable shape. Pure: no IO.

mod builder;
mod builtin;
pub mod editor;
mod schema;
mod validate;

pub use editor::{
    EditorInput, EditorProblem, EditorReport, EditorSectionError, GraphPreview, SpecDiff, diff,
    preview_graph, validate,
};
pub use schema::{ActionSchemas, SpecReport};
pub use validate::{ActionLookup, Availability};

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::vocab::ActionKey;
pub use crate::vocab::DeadlineSpec;
pub use builtin::Builtin;

pub use builder::{Field, Step, StepBuilder, Transition, Trigger, TriggerBuilder, WorkflowBuilder};
pub(crate) use validate::retry_problems;
pub use validate::{MAX_ATTEMPTS, MAX_DELAY_MS, SpecProblem, valid_name};

/// What names of workflows, triggers, fields and steps match (see [`valid_name`]).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]*$";

/// A workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Name of the workflow (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 128))]
    pub name: String,
    /// Operator label of this revision, shown in inspection; it does not affect execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How runs start; the first is the default.
    #[serde(default)]
    pub triggers: Vec<TriggerSpec>,
    /// The steps, in declaration order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Routes between steps (transition mode). Empty in dependency mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<TransitionSpec>,
    /// What a visual editor keeps with the spec (node positions, labels, comments): any JSON
    /// object, preserved as written and never read by the runtime. It is left out of the
    /// fingerprint and of the definition a run pins, so moving a node makes no new version.
    /// [`editor::preview_graph`] reads `editor.nodes.<step>.label` and `.position`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub editor: Option<Map<String, Value>>,
}

/// A way to start runs, with the payload it accepts.
///
/// As data: `{ name, type = "manual" | "cron", cron?, timezone?, payload? }`, and for cron
/// triggers the schedule policy fields of [`SchedulePolicy`] (`catch_up`, `catch_up_limit`,
/// `overlap`, `jitter_ms`, `grace_ms`, `start_at`, `end_at`), each optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "RawTrigger", into = "RawTrigger")]
pub struct TriggerSpec {
    /// Name of the trigger.
    pub name: String,
    /// Manual or cron.
    pub kind: TriggerKind,
    /// Fields of the payload.
    pub payload: Vec<FieldSpec>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Trigger")]
struct RawTrigger {
    /// Name of the trigger (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 128))]
    name: String,
    /// Either `manual` or `cron`.
    #[serde(rename = "type")]
    trigger_type: RawTriggerType,
    /// Cron expression (cron triggers): 5 fields, 6 with seconds first, or an alias such as `@hourly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    /// IANA time zone the cron expression is evaluated in (cron triggers), for example `Europe/Paris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    /// Missed windows: `skip`, `latest` (default) or `all` (cron triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch_up: Option<CatchUp>,
    /// With `catch_up = "all"`, at most this many missed windows fire, the most recent (1 to 1000, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch_up_limit: Option<u32>,
    /// A window whose previous run is still going: `allow`, `skip` (default) or `queue_one` (cron triggers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overlap: Option<Overlap>,
    /// Each window fires up to this much after its time, fixed per window (at most one day, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jitter_ms: Option<u64>,
    /// A window fired later than this after its time counts as missed (at most one day, default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_ms: Option<u64>,
    /// No window before this instant fires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// No window after this instant fires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Fields of the payload a run of this trigger accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    payload: Vec<FieldSpec>,
}

impl RawTrigger {
    fn has_policy(&self) -> bool {
        self.catch_up.is_some()
            || self.catch_up_limit.is_some()
            || self.overlap.is_some()
            || self.jitter_ms.is_some()
            || self.grace_ms.is_some()
            || self.start_at.is_some()
            || self.end_at.is_some()
    }

    fn policy(&self) -> SchedulePolicy {
        let d = SchedulePolicy::default();
        SchedulePolicy {
            catch_up: self.catch_up.unwrap_or(d.catch_up),
            catch_up_limit: self.catch_up_limit.unwrap_or(d.catch_up_limit),
            overlap: self.overlap.unwrap_or(d.overlap),
            jitter_ms: self.jitter_ms.unwrap_or(d.jitter_ms),
            grace_ms: self.grace_ms.unwrap_or(d.grace_ms),
            start_at: self.start_at,
            end_at: self.end_at,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "TriggerType")]
enum RawTriggerType {
    Manual,
    Cron,
}

impl TryFrom<RawTrigger> for TriggerSpec {
    type Error = String;
    fn try_from(raw: RawTrigger) -> Result<Self, String> {
        let policy = raw.policy();
        let has_policy = raw.has_policy();
        let kind = match (raw.trigger_type, raw.cron, raw.timezone) {
            (RawTriggerType::Manual, None, None) if !has_policy => TriggerKind::Manual,
            (RawTriggerType::Manual, _, _) => {
                return Err(format!(
                    "manual trigger {} takes no cron, timezone or schedule policy",
                    raw.name
                ));
            }
            (RawTriggerType::Cron, Some(cron), Some(timezone)) => TriggerKind::Cron {
                cron,
                timezone,
                policy,
            },
            (RawTriggerType::Cron, _, _) => {
                return Err(format!(
                    "cron trigger {} needs both cron and timezone",
                    raw.name
                ));
            }
        };
        Ok(Self {
            name: raw.name,
            kind,
            payload: raw.payload,
        })
    }
}

impl From<TriggerSpec> for RawTrigger {
    fn from(t: TriggerSpec) -> Self {
        let (trigger_type, cron, timezone, policy) = match t.kind {
            TriggerKind::Manual => (RawTriggerType::Manual, None, None, None),
            TriggerKind::Cron {
                cron,
                timezone,
                policy,
            } => (
                RawTriggerType::Cron,
                Some(cron),
                Some(timezone),
                Some(policy),
            ),
        };
        // Only what differs from the defaults is written out.
        let d = SchedulePolicy::default();
        let p = policy.unwrap_or_default();
        let differs = |same: bool| (!same).then_some(());
        Self {
            name: t.name,
            trigger_type,
            cron,
            timezone,
            catch_up: differs(p.catch_up == d.catch_up).map(|()| p.catch_up),
            catch_up_limit: differs(p.catch_up_limit == d.catch_up_limit)
                .map(|()| p.catch_up_limit),
            overlap: differs(p.overlap == d.overlap).map(|()| p.overlap),
            jitter_ms: differs(p.jitter_ms == d.jitter_ms).map(|()| p.jitter_ms),
            grace_ms: differs(p.grace_ms == d.grace_ms).map(|()| p.grace_ms),
            start_at: p.start_at,
            end_at: p.end_at,
            payload: t.payload,
        }
    }
}

/// What fires a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// Started by a call (or a signal).
    Manual,
    /// Started on a cron schedule evaluated in a time zone.
    Cron {
        /// Cron expression: 5 fields, 6 with seconds first, or an alias such as `@hourly`.
        cron: String,
        /// IANA time zone, for example `Europe/Paris`.
        timezone: String,
        /// How the scheduler fires it.
        policy: SchedulePolicy,
    },
}

/// Largest `catch_up_limit`.
pub const MAX_CATCH_UP_LIMIT: u32 = 1_000;
/// Largest `jitter_ms` and `grace_ms`: one day.
pub const MAX_SCHEDULE_DELAY_MS: u64 = 86_400_000;

/// How a cron trigger fires: what happens to windows missed while no worker ran, to a
/// window whose previous run is still going, and when the schedule is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchedulePolicy {
    /// Windows missed by more than `grace_ms` (default [`CatchUp::Latest`]).
    pub catch_up: CatchUp,
    /// With [`CatchUp::All`], at most this many missed windows are fired, the most recent
    /// ones (default 10, at most [`MAX_CATCH_UP_LIMIT`]).
    pub catch_up_limit: u32,
    /// A window whose previous run is still going (default [`Overlap::Skip`]).
    pub overlap: Overlap,
    /// Each window fires up to this much after its time, by a fixed amount derived from the
    /// window, so processes agree (default 0).
    pub jitter_ms: u64,
    /// A window fired later than this after its time (plus jitter) counts as missed
    /// (default 60,000).
    pub grace_ms: u64,
    /// No window before this instant fires.
    pub start_at: Option<chrono::DateTime<chrono::Utc>>,
    /// No window after this instant fires.
    pub end_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Default for SchedulePolicy {
    fn default() -> Self {
        Self {
            catch_up: CatchUp::Latest,
            catch_up_limit: 10,
            overlap: Overlap::Skip,
            jitter_ms: 0,
            grace_ms: 60_000,
            start_at: None,
            end_at: None,
        }
    }
}

/// What to do with windows missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire none of them; go on with the next window.
    Skip,
    /// Fire the most recent missed window once.
    Latest,
    /// Fire every missed window, oldest first, up to `catch_up_limit` (the most recent).
    All,
}

/// What to do with a window whose previous run of the schedule has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start it anyway.
    Allow,
    /// Do not start it (recorded as skipped).
    Skip,
    /// Start it once the previous run ends; while one window waits, later ones are skipped.
    QueueOne,
}

/// A payload field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Field name (`[A-Za-z0-9][A-Za-z0-9_.-]*`).
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 128))]
    pub name: String,
    /// Type the value must have.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether a value (or a default) is required. Default true.
    #[serde(default = "yes")]
    pub required: bool,
    /// Literal default, used when the field is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Computed default for string fields: today's date or the current instant, ISO-8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_from: Option<DynamicDefault>,
}

fn yes() -> bool {
    true
}

/// Types of payload fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON integer.
    Integer,
    /// Any JSON number.
    Float,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Map,
    /// A JSON array.
    List,
}

impl FieldType {
    /// Whether `v` has this type.
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            Self::String => v.is_string(),
            Self::Integer => v.is_i64() || v.is_u64(),
            Self::Float => v.is_number(),
            Self::Boolean => v.is_boolean(),
            Self::Map => v.is_object(),
            Self::List => v.is_array(),
        }
    }

    /// The type's name as written in specs.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Boolean => "boolean",
            Self::Map => "map",
            Self::List => "list",
        }
    }
}

/// Defaults computed when a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DynamicDefault {
    /// Today's date in UTC, `YYYY-MM-DD` (for a scheduled run: the window's date in the
    /// schedule's time zone).
    Today,
    /// The current instant, RFC 3339 in UTC.
    Now,
}

/// A step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Step name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, not `complete`).
    #[schemars(regex(pattern = NAME_PATTERN), length(max = 128))]
    pub name: String,
    /// The registered action this step runs (exclusive with `builtin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKey>,
    /// The built-in kind this step runs (exclusive with `action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    /// How the step's input is taken from what the run knows; everything when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputMapping>,
    /// Key the output is stored under in the run's context; merged at the top when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Retry policy; no retries when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Informational deadline of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DeadlineSpec>,
    /// Action that undoes this step when the run fails later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<ActionKey>,
    /// Retry policy of the compensation; it runs once when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate_retry: Option<RetryPolicy>,
    /// The step's effect cannot be undone: replay needs explicit approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub irreversible: bool,
    /// Whether the step's effect can be compensated (default true; false when irreversible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensatable: Option<bool>,
    /// Steps that must complete first (dependency mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Keys the builder was given that are not valid action keys, as (field, key): reported
    /// by validation with the field's path. Never serialized.
    #[serde(skip)]
    pub(crate) invalid_keys: Vec<(&'static str, String)>,
}

impl StepSpec {
    /// Whether this is a manual gate (`pause` or `approval`).
    pub fn is_manual(&self) -> bool {
        matches!(self.builtin, Some(Builtin::Pause {} | Builtin::Approval {}))
    }

    /// Whether replaying a run that completed this step needs explicit approval.
    pub fn needs_replay_review(&self) -> bool {
        self.irreversible || self.compensatable == Some(false)
    }
}

/// How a step's input is built: a list of keys, or a table of target = path.
// Deserialized by hand rather than as an untagged enum, so that a wrong shape is answered
// with the two shapes expected instead of "did not match any variant".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum InputMapping {
    /// Copy these top-level keys (missing keys are left out).
    Keys(Vec<String>),
    /// Each target key takes the value at a path; a missing path fails the run.
    Paths(BTreeMap<String, Vec<String>>),
}

impl<'de> Deserialize<'de> for InputMapping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Shapes;
        impl<'de> serde::de::Visitor<'de> for Shapes {
            type Value = InputMapping;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a list of keys, input = [\"a\", \"b\"], or a table of target = [path], \
                     input = { target = [\"a\", \"b\"] }",
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(InputMapping::Keys)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(InputMapping::Paths)
            }
        }
        d.deserialize_any(Shapes)
    }
}

/// Retry policy of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, including the first (at least 1).
    pub max_attempts: u32,
    /// Delay between attempts; none means retry at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

/// Delay before attempt n+1, from the attempt n that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Shape of the delay curve.
    pub kind: BackoffKind,
    /// First delay, in milliseconds.
    pub min_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
    /// Spread each delay uniformly over [delay/2, delay] (deterministic per runnable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jitter: bool,
}

impl Backoff {
    fn curve(kind: BackoffKind, min: Duration, max: Duration) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            kind,
            min_ms: ms(min),
            max_ms: ms(max),
            jitter: false,
        }
    }

    /// `min * 2^(n-1)`, capped at `max`.
    pub fn exponential(min: Duration, max: Duration) -> Self {
        Self::curve(BackoffKind::Exponential, min, max)
    }

    /// `min * n`, capped at `max`.
    pub fn linear(min: Duration, max: Duration) -> Self {
        Self::curve(BackoffKind::Linear, min, max)
    }

    /// Always `delay`.
    pub fn constant(delay: Duration) -> Self {
        Self::curve(BackoffKind::Constant, delay, delay)
    }

    /// Spreads each delay over [delay/2, delay], deterministically per attempt.
    #[must_use]
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }
}

/// Backoff curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// `min * 2^(n-1)`, capped at max.
    Exponential,
    /// `min * n`, capped at max.
    Linear,
    /// Always `min`.
    Constant,
}

/// Outcome a transition leaves on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The step succeeded.
    Ok,
    /// The step failed (after its retries).
    Error,
}

/// Name of the pseudo-step that completes the run.
pub const COMPLETE: &str = "complete";

/// A route from one step's outcome to a step or to completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionSpec {
    /// Source step.
    pub from: String,
    /// Outcome it applies to.
    pub on: Outcome,
    /// Target step, or `complete`.
    pub to: String,
    /// Only taken when this holds; conditional routes are tried in declaration order, then
    /// the unconditional one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// Recovery label of an error route (for example `compensation` or `undo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<String>,
}

/// A test on a value of the run's context: a path and exactly one of `equals`,
/// `greater_than`, `less_than`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["equals"]},
    {"required": ["greater_than"]},
    {"required": ["less_than"]}
]))]
pub struct Condition {
    /// Path of keys into the context.
    #[schemars(length(min = 1))]
    pub path: Vec<String>,
    /// Holds when the value equals this JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Holds when the value is a number greater than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greater_than: Option<f64>,
    /// Holds when the value is a number less than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub less_than: Option<f64>,
}

impl Condition {
    /// Whether the condition holds against `context`. A missing path or a non-number for a
    /// comparison never matches.
    pub fn holds(&self, context: &Value) -> bool {
        let Some(value) = lookup(context, &self.path) else {
            return false;
        };
        if let Some(expected) = &self.equals {
            return value == expected;
        }
        let Some(n) = value.as_f64() else {
            return false;
        };
        if let Some(bound) = self.greater_than {
            return n > bound;
        }
        if let Some(bound) = self.less_than {
            return n < bound;
        }
        false
    }
}

/// The value at `path` inside `value`, if every key exists.
pub fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

/// The two mutually exclusive shapes of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Steps are linked by `on ok|error` transitions from one entry step.
    Transitions,
    /// Steps declare `after` dependencies; roots run in parallel.
    Dependencies,
}

/// Errors reading a spec from text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecParseError {
    /// The JSON is malformed or does not match the spec's shape.
    #[error("invalid workflow spec JSON: {0}")]
    Json(serde_json::Error),
    /// The TOML is malformed or does not match the spec's shape.
    #[error("invalid workflow spec TOML: {0}")]
    Toml(toml::de::Error),
}

// No `#[from]`: that would also make the parser's error the source, and the message, which
// already holds it, would print it twice in an error chain.
impl From<serde_json::Error> for SpecParseError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

impl From<toml::de::Error> for SpecParseError {
    fn from(e: toml::de::Error) -> Self {
        Self::Toml(e)
    }
}

/// The JSON Schema (draft 2020-12) of a workflow spec document: the spec plus its optional
/// `editor` section, generated from the types, so it accepts what the parser accepts. Its
/// checked-in copy is `docs/workflow-spec.schema.json` (`squid-mesh spec schema`).
///
/// A document the schema accepts parses; [`WorkflowSpec::validate`] checks what a schema
/// cannot (names that exist, one entry step, no cycles, action keys).
pub fn json_schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<WorkflowSpec>();
    schema.insert("title".into(), "Squid Mesh workflow spec".into());
    schema.insert(
        "description".into(),
        "A workflow spec (JSON or TOML) with an optional `editor` section the runtime keeps \
         but ignores. See docs/spec-reference.md."
            .into(),
    );
    schema.to_value()
}

impl WorkflowSpec {
    /// Starts a builder.
    pub fn builder(name: impl Into<String>) -> WorkflowBuilder {
        WorkflowBuilder::new(name)
    }

    /// Parses a spec from JSON.
    ///
    /// # Errors
    ///
    /// [`SpecParseError::Json`] naming the line and column.
    pub fn from_json(text: &str) -> Result<Self, SpecParseError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Parses a spec from TOML.
    ///
    /// # Errors
    ///
    /// [`SpecParseError::Toml`] naming the location.
    pub fn from_toml(text: &str) -> Result<Self, SpecParseError> {
        Ok(toml::from_str(text)?)
    }

    /// The spec as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a spec always serializes to JSON")
    }

    /// The spec as TOML.
    ///
    /// # Errors
    ///
    /// When a literal (a `null` default, say) has no TOML form.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The trigger named `name`, or the first when `name` is `None`.
    pub fn trigger(&self, name: Option<&str>) -> Option<&TriggerSpec> {
        match name {
            Some(n) => self.triggers.iter().find(|t| t.name == n),
            None => self.triggers.first(),
        }
    }

    /// Transition or dependency mode.
    pub fn mode(&self) -> Mode {
        if self.steps.iter().any(|s| !s.after.is_empty()) {
            Mode::Dependencies
        } else {
            Mode::Transitions
        }
    }

    /// The steps a run starts with: the entry step in transition mode, every root in
    /// dependency mode.
    pub fn entry_steps(&self) -> Vec<&StepSpec> {
        match self.mode() {
            Mode::Dependencies => self.steps.iter().filter(|s| s.after.is_empty()).collect(),
            Mode::Transitions => {
                let targets: std::collections::HashSet<&str> =
                    self.transitions.iter().map(|t| t.to.as_str()).collect();
                self.steps
                    .iter()
                    .filter(|s| !targets.contains(s.name.as_str()))
                    .take(1)
                    .collect()
            }
        }
    }

    /// Routes leaving `step` on `on`: conditional ones in declaration order, then the
    /// unconditional fallback.
    pub fn routes(&self, step: &str, on: Outcome) -> Vec<(usize, &TransitionSpec)> {
        let mut conditional = Vec::new();
        let mut fallback = Vec::new();
        for (i, t) in self.transitions.iter().enumerate() {
            if t.from == step && t.on == on {
                if t.condition.is_some() {
                    conditional.push((i, t));
                } else {
                    fallback.push((i, t));
                }
            }
        }
        conditional.extend(fallback);
        conditional
    }

    /// A stable fingerprint of the executable shape: steps (name, action, input, output,
    /// retry, dependencies, compensation) and transitions. Labels, triggers, payload fields
    /// and deadlines do not change it.
    pub fn fingerprint(&self) -> String {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut after = s.after.clone();
                after.sort();
                json!({
                    "name": s.name,
                    "action": s.action,
                    "builtin": s.builtin,
                    "input": s.input,
                    "output": s.output,
                    "retry": s.retry,
                    "after": after,
                    "compensate": s.compensate,
                })
            })
            .collect();
        let transitions: Vec<Value> = self
            .transitions
            .iter()
            .map(|t| json!({"from": t.from, "on": t.on, "to": t.to, "condition": t.condition, "recovery": t.recovery}))
            .collect();
        let shape = json!({"steps": steps, "transitions": transitions});
        hex::encode(Sha256::digest(shape.to_string().as_bytes()))
    }
}
