//! Checks a spec's data flow against the JSON Schemas its actions declare (`describe`):
//! every step's input mapping against its action's input schema, and every path into a
//! step's output (input mappings, conditions) against that action's output schema, before
//! anything runs.
//!
//! The checks use what a schema says for sure: `properties`, `required`,
//! `additionalProperties` and `type`. A mapped field the input schema does not list is a
//! problem when the schema is closed (`additionalProperties: false`), else a warning. A path
//! into a step's output through a field its output schema does not list is a problem unless
//! the schema allows more (`additionalProperties` set to anything but `false`). A mapped
//! value whose type the schemas know must fit the field it fills (an integer fills a
//! number). Actions with no schemas are accepted with a warning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ActionLookup, FieldType, InputMapping, SpecProblem, WorkflowSpec};

/// The JSON Schemas an action declares for its input and output objects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionSchemas {
    /// Schema of the input object.
    pub input: Option<Value>,
    /// Schema of the output object.
    pub output: Option<Value>,
}

/// Everything a check found: problems (the spec is refused) and warnings (it is accepted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecReport {
    /// What makes the spec invalid, each with a path and a code.
    pub problems: Vec<SpecProblem>,
    /// What was not checked or looks doubtful, each with a path and a code.
    pub warnings: Vec<SpecProblem>,
}

impl SpecReport {
    /// Whether the spec is valid (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What is known of one top-level key of a run's context.
enum Source<'a> {
    /// A payload field of this type.
    Payload(FieldType),
    /// The output of step `step`, stored under the key, with the action's output schema.
    Output { step: &'a str, schema: &'a Value },
    /// Something without a schema.
    Unknown,
}

fn problem(path: String, code: &str, message: String) -> SpecProblem {
    SpecProblem {
        path,
        code: code.to_owned(),
        message,
    }
}

fn field_schema(t: FieldType) -> Value {
    let name = match t {
        FieldType::String => "string",
        FieldType::Integer => "integer",
        FieldType::Float => "number",
        FieldType::Boolean => "boolean",
        FieldType::Map => "object",
        FieldType::List => "array",
    };
    json!({ "type": name })
}

fn properties(schema: &Value) -> Option<&serde_json::Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

fn closed(schema: &Value) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether a value of schema `from` may fill a field of schema `to` (unknown types agree).
fn compatible(from: &Value, to: &Value) -> bool {
    let (f, t) = (types(from), types(to));
    if f.is_empty() || t.is_empty() {
        return true;
    }
    f.iter()
        .any(|x| t.contains(x) || (*x == "integer" && t.contains(&"number")))
}

impl WorkflowSpec {
    /// Validates the spec like [`WorkflowSpec::validate`] and reports warnings as well: what
    /// the action schemas could not check.
    pub fn check(&self, actions: Option<&dyn ActionLookup>) -> SpecReport {
        let mut report = SpecReport {
            problems: self.validate_structure(actions).err().unwrap_or_default(),
            warnings: Vec::new(),
        };
        if let Some(actions) = actions {
            self.check_schemas(actions, &mut report);
        }
        report
    }

    /// The schema checks: problems and warnings added to `report`.
    pub(crate) fn check_schemas(&self, actions: &dyn ActionLookup, report: &mut SpecReport) {
        let schemas: Vec<Option<ActionSchemas>> = self
            .steps
            .iter()
            .map(|s| s.action.as_ref().and_then(|k| actions.schemas(k)))
            .collect();
        // The run's context: payload fields, then step outputs.
        let mut context: BTreeMap<&str, Source<'_>> = BTreeMap::new();
        let mut open = false;
        for t in &self.triggers {
            for f in &t.payload {
                context.insert(&f.name, Source::Payload(f.field_type));
            }
        }
        for (step, schema) in self.steps.iter().zip(&schemas) {
            let output = schema.as_ref().and_then(|s| s.output.as_ref());
            match (&step.output, output) {
                (Some(key), Some(schema)) => {
                    context.insert(
                        key,
                        Source::Output {
                            step: &step.name,
                            schema,
                        },
                    );
                }
                (Some(key), None) => {
                    context.insert(key, Source::Unknown);
                }
                // Merged at the top: its listed fields are known; anything else may be.
                (None, Some(schema)) => {
                    if let Some(props) = properties(schema) {
                        for name in props.keys() {
                            context.entry(name).or_insert(Source::Unknown);
                        }
                    }
                    if !closed(schema) {
                        open = true;
                    }
                }
                (None, None) => open = true,
            }
        }

        for (i, (step, schema)) in self.steps.iter().zip(&schemas).enumerate() {
            let at = format!("steps[{i}]");
            let Some(key) = &step.action else { continue };
            let declared = schema.as_ref();
            // An unknown key is a problem already; its schema is no news.
            let known = actions.availability(key) != super::Availability::Unknown;
            if known && declared.is_none_or(|s| s.input.is_none() && s.output.is_none()) {
                report.warnings.push(problem(
                    format!("{at}.action"),
                    "no_action_schema",
                    format!(
                        "action {key} declares no input or output schema: the data flow of step {} is not checked",
                        step.name
                    ),
                ));
            }
            let input_schema = declared.and_then(|s| s.input.as_ref());
            match &step.input {
                Some(InputMapping::Paths(map)) => {
                    for (target, path) in map {
                        let source = self.resolve_path(
                            &context,
                            path,
                            &format!("{at}.input.{target}"),
                            report,
                        );
                        if let Some(schema) = input_schema {
                            check_target(
                                schema,
                                key,
                                target,
                                &format!("{at}.input.{target}"),
                                source.as_ref(),
                                report,
                            );
                        }
                    }
                    if let Some(schema) = input_schema {
                        check_required(
                            schema,
                            key,
                            map.keys().map(String::as_str),
                            &format!("{at}.input"),
                            report,
                        );
                    }
                }
                Some(InputMapping::Keys(keys)) => {
                    if let Some(schema) = input_schema {
                        for (j, k) in keys.iter().enumerate() {
                            let source = match context.get(k.as_str()) {
                                Some(Source::Payload(t)) => Some(field_schema(*t)),
                                Some(Source::Output { schema, .. }) => Some((*schema).clone()),
                                _ => None,
                            };
                            check_target(
                                schema,
                                key,
                                k,
                                &format!("{at}.input[{j}]"),
                                source.as_ref(),
                                report,
                            );
                        }
                        check_required(
                            schema,
                            key,
                            keys.iter().map(String::as_str),
                            &format!("{at}.input"),
                            report,
                        );
                    }
                }
                // The whole context: a required field must be one it may hold.
                None => {
                    if let (Some(schema), false) = (input_schema, open) {
                        let names: Vec<&str> = context.keys().copied().collect();
                        check_required(
                            schema,
                            key,
                            names.into_iter(),
                            &format!("{at}.input"),
                            report,
                        );
                    }
                }
            }
        }
        for (i, t) in self.transitions.iter().enumerate() {
            if let Some(c) = &t.condition {
                self.resolve_path(
                    &context,
                    &c.path,
                    &format!("transitions[{i}].condition.path"),
                    report,
                );
            }
        }
    }

    /// The schema of the value at `path` in the context, when known; a path into a step's
    /// output that its schema says is never there is a problem.
    fn resolve_path(
        &self,
        context: &BTreeMap<&str, Source<'_>>,
        path: &[String],
        at: &str,
        report: &mut SpecReport,
    ) -> Option<Value> {
        let (first, rest) = path.split_first()?;
        let (mut schema, step) = match context.get(first.as_str())? {
            Source::Payload(t) => return rest.is_empty().then(|| field_schema(*t)),
            Source::Output { step, schema } => ((*schema).clone(), *step),
            Source::Unknown => return None,
        };
        let mut walked = vec![first.as_str()];
        for segment in rest {
            let props = properties(&schema)?;
            match props.get(segment) {
                Some(next) => schema = next.clone(),
                None if closed(&schema) || schema.get("additionalProperties").is_none() => {
                    report.problems.push(problem(
                        at.to_owned(),
                        "unknown_output_field",
                        format!(
                            "step {step} does not produce {}.{segment}: its output schema has {}",
                            walked.join("."),
                            list(props.keys())
                        ),
                    ));
                    return None;
                }
                None => return None,
            }
            walked.push(segment);
        }
        Some(schema)
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "no fields".to_owned()
    } else {
        names.join(", ")
    }
}

/// A mapped input field against the action's input schema.
fn check_target(
    schema: &Value,
    key: &super::ActionKey,
    target: &str,
    at: &str,
    source: Option<&Value>,
    report: &mut SpecReport,
) {
    let Some(props) = properties(schema) else {
        return;
    };
    match props.get(target) {
        None if closed(schema) => report.problems.push(problem(
            at.to_owned(),
            "input_not_accepted",
            format!(
                "action {key} does not accept input field {target}: its input schema has {}",
                list(props.keys())
            ),
        )),
        None => report.warnings.push(problem(
            at.to_owned(),
            "input_not_declared",
            format!("action {key} does not declare input field {target}"),
        )),
        Some(field) => {
            if let Some(source) = source
                && !compatible(source, field)
            {
                report.problems.push(problem(
                    at.to_owned(),
                    "input_type_mismatch",
                    format!(
                        "input field {target} of action {key} takes {}, but the mapped value is {}",
                        types(field).join(" or "),
                        types(source).join(" or ")
                    ),
                ));
            }
        }
    }
}

/// Every field the input schema requires must be provided.
fn check_required<'a>(
    schema: &Value,
    key: &super::ActionKey,
    provided: impl Iterator<Item = &'a str>,
    at: &str,
    report: &mut SpecReport,
) {
    let Some(required) = schema.get("required").and_then(Value::as_array) else {
        return;
    };
    let provided: Vec<&str> = provided.collect();
    for r in required.iter().filter_map(Value::as_str) {
        if !provided.contains(&r) {
            report.problems.push(problem(
                at.to_owned(),
                "missing_required_input",
                format!(
                    "action {key} requires input field {r}, which the mapping does not provide"
                ),
            ));
        }
    }
}
