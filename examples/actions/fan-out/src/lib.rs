//! `fan-out`: map and reduce over a list with dynamic work. One component, three modes
//! chosen by the input, so a host can approve it under three keys:
//!
//! - `{"items": [numbers], "square": "<key>", "sum": "<key>"}` schedules one node per item
//!   (running the `square` key with `{"value": item}`) and a join running the `sum` key;
//!   optional `key` names the work (default `squares`), `fail_attempts: n` fails the first
//!   n attempts after scheduling (retryably), to show that a retried step adds its work
//!   once. Returns `{"scheduled": <nodes>, "duplicate": bool}`.
//! - `{"value": number}` returns `{"square": value * value}`.
//! - `{"results": [{"id", "output": {"square": n}}]}` (a join's input) returns
//!   `{"total": sum, "count": n}`.

use serde_json::{Map, Value, json};
use squid_mesh_guest::{Action, ActionError, Context};

struct FanOut;

impl Action for FanOut {
    type Input = Map<String, Value>;
    type Output = Map<String, Value>;

    const NAME: Option<&'static str> = Some("fan-out");

    fn run(ctx: &Context, input: Map<String, Value>) -> Result<Map<String, Value>, ActionError> {
        if let Some(items) = input.get("items").and_then(Value::as_array) {
            return fan_out(ctx, &input, items);
        }
        if let Some(results) = input.get("results").and_then(Value::as_array) {
            let mut total = 0.0;
            for r in results {
                total += r
                    .pointer("/output/square")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| ActionError::fatal("bad_result", format!("no square in {r}")))?;
            }
            return Ok(object(json!({"total": total, "count": results.len()})));
        }
        let value = input
            .get("value")
            .and_then(Value::as_f64)
            .ok_or_else(|| ActionError::fatal("no_value", "expected items, results or value"))?;
        Ok(object(json!({"square": value * value})))
    }
}

fn fan_out(
    ctx: &Context,
    input: &Map<String, Value>,
    items: &[Value],
) -> Result<Map<String, Value>, ActionError> {
    let text = |k: &str, default: &str| {
        input
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let square = text("square", "fan.square");
    let nodes: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            json!({
                "id": format!("square-{i}"),
                "action": square,
                "input": {"value": item},
                "retry": {"max_attempts": 3},
            })
        })
        .collect();
    let work = json!({
        "key": text("key", "squares"),
        "nodes": nodes,
        "join": {"id": "sum", "action": text("sum", "fan.sum"), "output": "sum"},
        "reason": format!("one square per item ({} items)", items.len()),
    });
    let receipt = squid_mesh_guest::schedule_work(&work)?;
    let fail = input
        .get("fail_attempts")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if u64::from(ctx.attempt()) <= fail {
        return Err(ActionError::retryable(
            "asked_to_fail",
            format!("attempt {} fails after scheduling", ctx.attempt()),
        ));
    }
    Ok(object(json!({
        "scheduled": receipt.get("nodes").cloned().unwrap_or(Value::Null),
        "duplicate": receipt.get("duplicate").cloned().unwrap_or(Value::Null),
    })))
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

squid_mesh_guest::export_action!(FanOut);
