//! What runs next: payload resolution, input mapping, routing, dependency readiness and
//! retry delays. Pure functions of a spec, what the run knows, and a timestamp.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::spec::{
    BackoffKind, COMPLETE, DynamicDefault, InputMapping, Outcome, RetryPolicy, SpecProblem,
    StepSpec, TriggerSpec, WorkflowSpec, lookup,
};
pub use crate::vocab::StepState;
use crate::vocab::Timestamp;

/// Fills defaults and checks a payload against a trigger's fields. Missing, unknown and
/// mistyped fields are all reported together.
///
/// # Errors
///
/// Every problem, with paths `payload.<field>` and codes `missing_field`, `unknown_field`,
/// `invalid_type` or `invalid_payload` (not an object).
pub fn resolve_payload(
    trigger: &TriggerSpec,
    payload: &Value,
    now: Timestamp,
) -> Result<Map<String, Value>, Vec<SpecProblem>> {
    let problem = |path: String, code: &str, message: String| SpecProblem {
        path,
        code: code.to_owned(),
        message,
    };
    let Some(given) = payload.as_object() else {
        return Err(vec![problem(
            "payload".into(),
            "invalid_payload",
            "the payload must be a JSON object".into(),
        )]);
    };
    if let Some(why) = crate::json::too_deep(payload) {
        return Err(vec![problem(
            "payload".into(),
            "too_deep",
            format!("the payload {why}"),
        )]);
    }
    let mut problems = Vec::new();
    let mut resolved = given.clone();
    for field in &trigger.payload {
        if !resolved.contains_key(&field.name) {
            let default = match (&field.default, field.default_from) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(DynamicDefault::Today)) => Some(Value::String(
                    now.to_datetime()
                        .date_naive()
                        .format("%Y-%m-%d")
                        .to_string(),
                )),
                (None, Some(DynamicDefault::Now)) => Some(Value::String(now.to_rfc3339())),
                (None, None) => None,
            };
            match default {
                Some(v) => {
                    resolved.insert(field.name.clone(), v);
                }
                None if field.required => problems.push(problem(
                    format!("payload.{}", field.name),
                    "missing_field",
                    format!("required field {} is missing", field.name),
                )),
                None => {}
            }
        }
    }
    let mut unknown: Vec<&String> = given
        .keys()
        .filter(|k| !trigger.payload.iter().any(|f| &f.name == *k))
        .collect();
    unknown.sort();
    for k in unknown {
        problems.push(problem(
            format!("payload.{k}"),
            "unknown_field",
            format!("field {k} is not declared by trigger {}", trigger.name),
        ));
    }
    for field in &trigger.payload {
        if let Some(v) = resolved.get(&field.name)
            && !field.field_type.accepts(v)
        {
            problems.push(problem(
                format!("payload.{}", field.name),
                "invalid_type",
                format!("field {} must be a {}", field.name, field.field_type.name()),
            ));
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

/// Everything a run knows: its input, with the context (outputs merged in the order they
/// were applied) on top.
pub fn knowledge(input: &Map<String, Value>, context: &Map<String, Value>) -> Value {
    let mut all = input.clone();
    for (k, v) in context {
        all.insert(k.clone(), v.clone());
    }
    Value::Object(all)
}

/// A named input path that does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingInputPath {
    /// The step whose input could not be built.
    pub step: String,
    /// Target key of the mapping.
    pub target: String,
    /// The full path.
    pub path: Vec<String>,
    /// The first key that was missing.
    pub missing_at: String,
}

/// Builds a step's input from what the run knows.
///
/// # Errors
///
/// [`MissingInputPath`] when a named path does not resolve.
pub fn map_input(step: &StepSpec, known: &Value) -> Result<Map<String, Value>, MissingInputPath> {
    let empty = Map::new();
    let all = known.as_object().unwrap_or(&empty);
    match &step.input {
        None => Ok(all.clone()),
        Some(InputMapping::Keys(keys)) => Ok(keys
            .iter()
            .filter_map(|k| all.get(k).map(|v| (k.clone(), v.clone())))
            .collect()),
        Some(InputMapping::Paths(paths)) => {
            let mut input = Map::new();
            for (target, path) in paths {
                match lookup(known, path) {
                    Some(v) => {
                        input.insert(target.clone(), v.clone());
                    }
                    None => {
                        let mut cursor = known;
                        let mut missing_at = path.first().cloned().unwrap_or_default();
                        for key in path {
                            match cursor.as_object().and_then(|o| o.get(key)) {
                                Some(next) => cursor = next,
                                None => {
                                    missing_at = key.clone();
                                    break;
                                }
                            }
                        }
                        return Err(MissingInputPath {
                            step: step.name.clone(),
                            target: target.clone(),
                            path: path.clone(),
                            missing_at,
                        });
                    }
                }
            }
            Ok(input)
        }
    }
}

/// Wraps a step's output under its output key, if it has one.
pub fn shape_output(step: &StepSpec, output: Map<String, Value>) -> Map<String, Value> {
    match &step.output {
        Some(key) => Map::from_iter([(key.clone(), Value::Object(output))]),
        None => output,
    }
}

/// The route a transition-mode run takes from a step's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Index of the transition in the spec.
    pub transition: usize,
    /// Target step, or `None` to complete the run.
    pub to: Option<String>,
    /// Recovery label of the route.
    pub recovery: Option<String>,
}

/// The first matching route for `step` on `outcome`: conditional routes in declaration
/// order, then the unconditional fallback.
pub fn select_route(
    spec: &WorkflowSpec,
    step: &str,
    outcome: Outcome,
    known: &Value,
) -> Option<Route> {
    spec.routes(step, outcome)
        .into_iter()
        .find(|(_, t)| t.condition.as_ref().is_none_or(|c| c.holds(known)))
        .map(|(i, t)| Route {
            transition: i,
            to: (t.to != COMPLETE).then(|| t.to.clone()),
            recovery: t.recovery.clone(),
        })
}

/// Steps that are ready in a dependency-mode run: not yet planned, with every dependency
/// completed. Unlike phase-ordered schedulers, a step never waits for unrelated siblings.
pub fn ready_steps<'a>(
    spec: &'a WorkflowSpec,
    states: &BTreeMap<String, StepState>,
) -> Vec<&'a StepSpec> {
    spec.steps
        .iter()
        .filter(|s| !states.contains_key(&s.name))
        .filter(|s| {
            s.after
                .iter()
                .all(|d| states.get(d) == Some(&StepState::Completed))
        })
        .collect()
}

/// What to do after attempt `attempt` of a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Plan attempt `attempt + 1` after `delay_ms`.
    Retry {
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// The error is not retryable.
    NotRetryable,
    /// Every attempt was used.
    Exhausted,
}

/// Decides whether to retry and after how long. A `retry_after_ms` from the action wins over
/// the backoff curve. Jitter is derived from the runnable key, so it is reproducible.
pub fn retry_decision(
    policy: Option<&RetryPolicy>,
    attempt: u32,
    retryable: bool,
    retry_after_ms: Option<u64>,
    runnable_key: &str,
) -> RetryDecision {
    if !retryable {
        return RetryDecision::NotRetryable;
    }
    let Some(policy) = policy else {
        return RetryDecision::Exhausted;
    };
    if attempt >= policy.max_attempts {
        return RetryDecision::Exhausted;
    }
    if let Some(ms) = retry_after_ms {
        return RetryDecision::Retry { delay_ms: ms };
    }
    let Some(b) = &policy.backoff else {
        return RetryDecision::Retry { delay_ms: 0 };
    };
    let n = u64::from(attempt.max(1));
    let raw = match b.kind {
        BackoffKind::Exponential => b
            .min_ms
            .saturating_mul(1u64.checked_shl((n - 1).min(63) as u32).unwrap_or(u64::MAX)),
        BackoffKind::Linear => b.min_ms.saturating_mul(n),
        BackoffKind::Constant => b.min_ms,
    };
    let mut delay = raw.min(b.max_ms);
    if b.jitter {
        let h = Sha256::digest(runnable_key.as_bytes());
        let r = u64::from_le_bytes(h[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
        let half = delay / 2;
        delay = half + if half == 0 { 0 } else { r % (delay - half + 1) };
    }
    RetryDecision::Retry { delay_ms: delay }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Backoff, Field, FieldType, Step, Transition, Trigger};
    use serde_json::json;

    #[test]
    fn payload_problems_are_reported_together() {
        let trigger: TriggerSpec = Trigger::manual("m")
            .string("a")
            .integer("b")
            .field(Field::of("c", FieldType::String).default_value(json!("x")))
            .field(Field::of("d", FieldType::String).default_from(DynamicDefault::Today))
            .into();
        let now = Timestamp::from_millis(1_764_072_000_000); // 2025-11-25T12:00:00Z
        let problems =
            resolve_payload(&trigger, &json!({"b": "nope", "z": 1}), now).expect_err("invalid");
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.code.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("payload.a", "missing_field"),
                ("payload.z", "unknown_field"),
                ("payload.b", "invalid_type")
            ]
        );
        let ok = resolve_payload(&trigger, &json!({"a": "x", "b": 2}), now).expect("valid");
        assert_eq!(ok["c"], json!("x"));
        assert_eq!(ok["d"], json!("2025-11-25"));
        assert!(resolve_payload(&trigger, &json!([1]), now).is_err());
    }

    #[test]
    fn backoff_curves_and_retry_after() {
        let policy = |kind, jitter| RetryPolicy {
            max_attempts: 5,
            backoff: Some(Backoff {
                kind,
                min_ms: 100,
                max_ms: 1000,
                jitter,
            }),
        };
        let delays = |p: &RetryPolicy| {
            (1..=5)
                .map(|n| retry_decision(Some(p), n, true, None, "k"))
                .collect::<Vec<_>>()
        };
        use RetryDecision::*;
        assert_eq!(
            delays(&policy(BackoffKind::Exponential, false)),
            [
                Retry { delay_ms: 100 },
                Retry { delay_ms: 200 },
                Retry { delay_ms: 400 },
                Retry { delay_ms: 800 },
                Exhausted
            ]
        );
        assert_eq!(
            delays(&policy(BackoffKind::Linear, false))[2],
            Retry { delay_ms: 300 }
        );
        assert_eq!(
            delays(&policy(BackoffKind::Constant, false))[3],
            Retry { delay_ms: 100 }
        );
        let Retry { delay_ms } = retry_decision(
            Some(&policy(BackoffKind::Exponential, true)),
            4,
            true,
            None,
            "run:s:4",
        ) else {
            panic!("retries")
        };
        assert!((400..=800).contains(&delay_ms));
        assert_eq!(
            retry_decision(
                Some(&policy(BackoffKind::Constant, false)),
                1,
                true,
                Some(42),
                "k"
            ),
            Retry { delay_ms: 42 }
        );
        assert_eq!(
            retry_decision(
                Some(&policy(BackoffKind::Constant, false)),
                1,
                false,
                None,
                "k"
            ),
            NotRetryable
        );
        assert_eq!(retry_decision(None, 1, true, None, "k"), Exhausted);
    }

    #[test]
    fn routes_take_the_first_matching_condition_then_the_fallback() {
        let spec = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k"))
            .step(Step::action("big", "k"))
            .step(Step::action("small", "k"))
            .on_ok("a", "complete")
            .transition(Transition::on_ok("a", "big").when_greater_than(["total"], 100.0))
            .transition(Transition::on_ok("a", "small").when_less_than(["total"], 10.0))
            .build();
        let to = |v: Value| select_route(&spec, "a", Outcome::Ok, &v).and_then(|r| r.to);
        assert_eq!(to(json!({"total": 500})), Some("big".into()));
        assert_eq!(to(json!({"total": 5})), Some("small".into()));
        assert_eq!(to(json!({"total": 50})), None);
        assert_eq!(to(json!({"total": "many"})), None);
    }

    #[test]
    fn input_mapping_selects_keys_and_paths() {
        let known = json!({"a": 1, "order": {"total": 5}});
        let keys = Step::action("s", "k").input(["a", "missing"]).into();
        assert_eq!(
            map_input(&keys, &known).expect("keys"),
            json!({"a": 1}).as_object().cloned().expect("object")
        );
        let paths: StepSpec = Step::action("s", "k")
            .input_path("amount", ["order", "total"])
            .into();
        assert_eq!(
            map_input(&paths, &known).expect("paths")["amount"],
            json!(5)
        );
        let missing: StepSpec = Step::action("s", "k")
            .input_path("x", ["order", "tax", "rate"])
            .into();
        let err = map_input(&missing, &known).expect_err("missing");
        assert_eq!(err.missing_at, "tax");
    }
}
