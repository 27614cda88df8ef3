//! Bounds on the JSON values the runtime accepts from outside (payloads, action outputs and
//! error details, signal payloads and metadata, spec values), checked where they come in.
//!
//! The runtime wraps what it stores (an output inside an outcome inside a fact) a few levels
//! deeper than it received it, and serde_json refuses to read back anything nested deeper
//! than 128 levels. A value accepted at any depth could be written and then never read again.
//! So every value is held to [`MAX_DEPTH`], far below that limit, and refused at the boundary
//! with a typed error instead. Depth is measured without recursion.

use serde_json::Value;

/// Deepest nesting of arrays and objects accepted in a value from outside (a scalar or an
/// empty container is depth 1).
pub const MAX_DEPTH: usize = 64;

/// How deeply `value` nests arrays and objects.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// `None` when `value` is within [`MAX_DEPTH`], else a sentence saying how deep it is.
pub fn too_deep(value: &Value) -> Option<String> {
    deeper_than_allowed(depth(value))
}

/// [`too_deep`] for an object held as a map (one level, plus its deepest value), without
/// building a [`Value`] around it.
pub fn too_deep_map(map: &serde_json::Map<String, Value>) -> Option<String> {
    deeper_than_allowed(1 + map.values().map(depth).max().unwrap_or(0))
}

fn deeper_than_allowed(d: usize) -> Option<String> {
    (d > MAX_DEPTH).then(|| format!("nests {d} levels deep; the most is {MAX_DEPTH}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Value {
        let mut v = Value::from(1);
        for _ in 1..levels {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn depth_counts_levels_without_recursion() {
        assert_eq!(depth(&Value::from(1)), 1);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(depth(&nested(MAX_DEPTH)), MAX_DEPTH);
        assert!(too_deep(&nested(MAX_DEPTH)).is_none());
        assert!(too_deep(&nested(MAX_DEPTH + 1)).is_some());
        assert_eq!(depth(&nested(2_000)), 2_000);
    }
}
