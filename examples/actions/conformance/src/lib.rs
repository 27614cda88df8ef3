//! `conformance`: every part of the action contract, selected by the input's `op` field.
//!
//! The same action exists in Python (`examples/actions-py/conformance`) and JavaScript
//! (`examples/actions-js/conformance`); `tests/tests/conformance.rs` runs one list of cases
//! against each build through the real host.

use std::time::Duration;

use serde_json::{Map, Value, json};
use squid_mesh_guest::{Action, ActionError, Context, log};

struct Conformance;

fn invalid(message: String) -> ActionError {
    ActionError::fatal("invalid_input", format!("input does not match: {message}"))
}

fn field<'a>(input: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ActionError> {
    input
        .get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| invalid(format!("missing field `{name}`")))
}

fn string<'a>(input: &'a Map<String, Value>, name: &str) -> Result<&'a str, ActionError> {
    field(input, name)?
        .as_str()
        .ok_or_else(|| invalid(format!("field `{name}` must be a string")))
}

fn integer(input: &Map<String, Value>, name: &str) -> Result<i64, ActionError> {
    field(input, name)?
        .as_i64()
        .ok_or_else(|| invalid(format!("field `{name}` must be an integer")))
}

fn list<'a>(input: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], ActionError> {
    field(input, name)?
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| invalid(format!("field `{name}` must be a list")))
}

fn non_negative(input: &Map<String, Value>, name: &str) -> Result<u64, ActionError> {
    u64::try_from(integer(input, name)?)
        .map_err(|_| invalid(format!("field `{name}` must not be negative")))
}

impl Action for Conformance {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    const NAME: Option<&'static str> = Some("conformance");

    fn run(ctx: &Context, input: Map<String, Value>) -> Result<Map<String, Value>, ActionError> {
        let op = string(&input, "op")?;
        let output = match op {
            "transform" => {
                let text = string(&input, "text")?;
                let numbers = match input.get("numbers").filter(|v| !v.is_null()) {
                    None => &[][..],
                    Some(_) => list(&input, "numbers")?,
                };
                let mut sum: i64 = 0;
                for n in numbers {
                    let n = n
                        .as_i64()
                        .ok_or_else(|| invalid("`numbers` must hold integers".into()))?;
                    sum = sum.saturating_add(n);
                }
                json!({
                    "upper": text.to_uppercase(),
                    "reversed": text.chars().rev().collect::<String>(),
                    "length": text.chars().count(),
                    "sum": sum,
                    "context": {
                        "run_id": ctx.run_id(),
                        "workflow": ctx.workflow(),
                        "step": ctx.step(),
                        "attempt": ctx.attempt(),
                        "runnable_key": ctx.runnable_key(),
                        "idempotency_key": ctx.idempotency_key(),
                        "step_idempotency_key": ctx.step_idempotency_key(),
                    },
                })
            }
            "echo" => json!({ "value": input.get("value").cloned().unwrap_or(Value::Null) }),
            "fail_retryable" => {
                let after = non_negative(&input, "retry_after_ms")?;
                return Err(
                    ActionError::retryable("dependency_busy", "the dependency is busy")
                        .retry_after(Duration::from_millis(after)),
                );
            }
            "fail_fatal" => {
                let reason = string(&input, "reason")?;
                return Err(
                    ActionError::fatal("request_rejected", format!("rejected: {reason}"))
                        .with_details(json!({ "reason": reason, "attempt": ctx.attempt() })),
                );
            }
            "log" => {
                let lines = list(&input, "lines")?;
                for line in lines {
                    let level = line.get("level").and_then(Value::as_str);
                    let message = line.get("message").and_then(Value::as_str);
                    let write: fn(&str) = match level {
                        Some("trace") => log::trace,
                        Some("debug") => log::debug,
                        Some("info") => log::info,
                        Some("warn") => log::warn,
                        Some("error") => log::error,
                        _ => return Err(invalid("each line needs a level and a message".into())),
                    };
                    let message = message
                        .ok_or_else(|| invalid("each line needs a level and a message".into()))?;
                    write(message);
                }
                json!({ "logged": lines.len() })
            }
            "continue" => {
                ctx.continue_after(Duration::from_millis(non_negative(&input, "after_ms")?));
                json!({ "continued": true })
            }
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "allocate" => {
                let mib = non_negative(&input, "mib")?;
                let bytes = usize::try_from(mib << 20)
                    .map_err(|_| invalid("field `mib` is too large".into()))?;
                let mut block = vec![0u8; bytes];
                for i in (0..block.len()).step_by(4096) {
                    block[i] = 1;
                }
                std::hint::black_box(&block);
                json!({ "allocated_mib": mib })
            }
            "crash" => panic!("{}", string(&input, "message")?),
            other => {
                return Err(
                    ActionError::fatal("unknown_op", format!("unknown op {other}"))
                        .with_details(json!({ "op": other })),
                );
            }
        };
        match output {
            Value::Object(map) => Ok(map),
            _ => unreachable!("every op above builds an object"),
        }
    }

    fn input_schema() -> Option<Value> {
        Some(json!({
            "type": "object",
            "required": ["op"],
            "properties": {
                "op": {
                    "type": "string",
                    "enum": [
                        "transform", "echo", "fail_retryable", "fail_fatal", "log",
                        "continue", "spin", "allocate", "crash"
                    ]
                }
            }
        }))
    }
}

squid_mesh_guest::export_action!(Conformance);
