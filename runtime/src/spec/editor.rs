//! What a workflow editor needs from the runtime, with no database: every problem of a
//! document at once with JSON pointer paths ([`validate`], [`check`]), a graph to draw
//! ([`preview_graph`]) and what a draft changes against its source ([`diff`]).
//!
//! An editor document is a [`WorkflowSpec`] plus an optional `editor` object (positions,
//! labels, comments) that the runtime keeps and otherwise ignores: it is not part of the
//! fingerprint or of the definition a run pins. Bad input, however large, deep or malformed,
//! is answered with problems, never a panic: documents are bounded
//! ([`MAX_DOCUMENT_BYTES`], [`crate::json::MAX_DEPTH`]) before anything walks them
//! recursively.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    ActionLookup, Condition, Mode, Outcome, SpecProblem, SpecReport, StepSpec, TriggerSpec,
    WorkflowSpec,
};
use crate::json::{MAX_DEPTH, depth};

/// Largest document [`validate`] and [`check`] read: 4 MiB of text (or of a value written as
/// JSON).
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// Largest `editor` section, written as JSON: 1 MiB.
pub const MAX_EDITOR_BYTES: usize = 1024 * 1024;

/// The top-level fields of a document, in the order the reference lists them.
const TOP_LEVEL: [&str; 6] = [
    "name",
    "version",
    "triggers",
    "steps",
    "transitions",
    "editor",
];

/// A document to check: JSON text, TOML text, or a JSON value already parsed.
#[derive(Debug, Clone, Copy)]
pub enum EditorInput<'a> {
    /// JSON text.
    Json(&'a str),
    /// TOML text.
    Toml(&'a str),
    /// A parsed JSON value.
    Value(&'a Value),
}

impl<'a> From<&'a Value> for EditorInput<'a> {
    fn from(value: &'a Value) -> Self {
        Self::Value(value)
    }
}

/// One problem of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditorProblem {
    /// Where, as a JSON pointer (RFC 6901) into the document: `/steps/2/retry/max_attempts`;
    /// empty for the whole document.
    pub path: String,
    /// Machine-readable code: a parse problem (`unknown_field`, `missing_field`,
    /// `invalid_type`, `unknown_variant`, `invalid_value`, `invalid_length`, `invalid_syntax`,
    /// `too_large`, `too_deep`) or a validation code (`unknown_step`, `cycle`, ...).
    pub code: String,
    /// Human-readable explanation, naming the field or tag expected.
    pub message: String,
}

impl EditorProblem {
    fn new(path: impl Into<String>, code: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for EditorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(f, "{path}: {} ({})", self.message, self.code)
    }
}

impl From<SpecProblem> for EditorProblem {
    fn from(p: SpecProblem) -> Self {
        Self {
            path: pointer(&p.path),
            code: p.code,
            message: p.message,
        }
    }
}

/// Everything [`check`] found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EditorReport {
    /// The spec, when the document parsed (it may still have validation problems).
    #[serde(skip)]
    pub spec: Option<WorkflowSpec>,
    /// What makes the document invalid.
    pub problems: Vec<EditorProblem>,
    /// What was not checked or looks doubtful (from the action schemas).
    pub warnings: Vec<EditorProblem>,
}

impl EditorReport {
    /// Whether the document is a valid spec (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// A report from a parsed spec's [`SpecReport`].
    pub fn from_spec(spec: WorkflowSpec, report: SpecReport) -> Self {
        Self {
            spec: Some(spec),
            problems: report.problems.into_iter().map(Into::into).collect(),
            warnings: report.warnings.into_iter().map(Into::into).collect(),
        }
    }
}

/// Every problem of a document: parse problems (each trigger, step and transition is read on
/// its own, so one bad step does not hide another), then, when it parses, the spec's
/// validation without action keys. An empty list means the document is a valid spec as far
/// as can be told without the action catalog.
pub fn validate<'a>(input: impl Into<EditorInput<'a>>) -> Vec<EditorProblem> {
    check(input.into(), None).problems
}

/// [`validate`], and against `actions` when given: action keys, and the data flow against the
/// schemas the actions declare (see [`WorkflowSpec::check`]), which can also warn.
pub fn check(input: EditorInput<'_>, actions: Option<&dyn ActionLookup>) -> EditorReport {
    match parse(input) {
        Ok(spec) => {
            let report = spec.check(actions);
            EditorReport::from_spec(spec, report)
        }
        Err(problems) => EditorReport {
            spec: None,
            problems,
            warnings: Vec::new(),
        },
    }
}

/// Reads a document into a spec, or says every reason it cannot. Does not validate.
///
/// # Errors
///
/// Every parse problem, with JSON pointer paths.
pub fn parse(input: EditorInput<'_>) -> Result<WorkflowSpec, Vec<EditorProblem>> {
    let value = to_value(input).map_err(|p| vec![p])?;
    let problems = shape_problems(&value);
    if !problems.is_empty() {
        return Err(problems);
    }
    // The parts all read; the whole is read by the same code as `from_json`.
    serde_path_to_error::deserialize::<_, WorkflowSpec>(&value)
        .map_err(|e| vec![serde_problem("", &e)])
}

/// The document as a bounded JSON value.
fn to_value(input: EditorInput<'_>) -> Result<Value, EditorProblem> {
    let too_large = |bytes: usize| {
        EditorProblem::new(
            "",
            "too_large",
            format!("the document is {bytes} bytes; the most is {MAX_DOCUMENT_BYTES}"),
        )
    };
    let too_deep =
        |what: String| EditorProblem::new("", "too_deep", format!("the document {what}"));
    let value = match input {
        EditorInput::Json(text) => {
            if text.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large(text.len()));
            }
            // serde_json stops at 128 levels, so this cannot exhaust the stack.
            serde_json::from_str::<Value>(text).map_err(|e| {
                if e.to_string().contains("recursion limit") {
                    too_deep(format!("nests more than {MAX_DEPTH} levels deep"))
                } else {
                    EditorProblem::new("", "invalid_syntax", format!("invalid JSON: {e}"))
                }
            })?
        }
        EditorInput::Toml(text) => {
            if text.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large(text.len()));
            }
            // The TOML parser bounds its own nesting.
            let mut value = toml::from_str::<Value>(text).map_err(|e| {
                let message = e.message().to_owned();
                let at = e
                    .span()
                    .map(|s| {
                        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                        format!(" (line {line})")
                    })
                    .unwrap_or_default();
                if message.contains("recursion") || message.contains("nest") {
                    too_deep(format!("nests too deeply{at}"))
                } else {
                    EditorProblem::new("", "invalid_syntax", format!("invalid TOML{at}: {message}"))
                }
            })?;
            toml_datetimes_to_strings(&mut value);
            value
        }
        EditorInput::Value(value) => {
            // Measured without recursion before anything recursive touches it.
            if let Some(why) = crate::json::too_deep(value) {
                return Err(too_deep(why));
            }
            let bytes = serde_json::to_string(value).map_or(usize::MAX, |t| t.len());
            if bytes > MAX_DOCUMENT_BYTES {
                return Err(too_large(bytes));
            }
            value.clone()
        }
    };
    if let Some(why) = crate::json::too_deep(&value) {
        return Err(too_deep(why));
    }
    Ok(value)
}

/// TOML dates and times arrive as one-key objects; the spec reads them as RFC 3339 text.
fn toml_datetimes_to_strings(value: &mut Value) {
    const KEY: &str = "$__toml_private_datetime";
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        let datetime = match v {
            Value::Object(map) if map.len() == 1 => {
                map.get(KEY).and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        };
        if let Some(text) = datetime {
            *v = Value::String(text);
            continue;
        }
        match v {
            Value::Object(map) => stack.extend(map.values_mut()),
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
}

/// Parse problems of each part of the document, each part read on its own.
fn shape_problems(value: &Value) -> Vec<EditorProblem> {
    let mut problems = Vec::new();
    let Some(doc) = value.as_object() else {
        problems.push(EditorProblem::new(
            "",
            "invalid_type",
            format!(
                "invalid type: {}, expected a workflow spec object",
                kind_of(value)
            ),
        ));
        return problems;
    };
    let expected = TOP_LEVEL
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ");
    for key in doc.keys().filter(|k| !TOP_LEVEL.contains(&k.as_str())) {
        problems.push(EditorProblem::new(
            format!("/{}", escape(key)),
            "unknown_field",
            format!("unknown field `{key}`, expected one of {expected}"),
        ));
    }
    match doc.get("name") {
        None => problems.push(EditorProblem::new(
            "",
            "missing_field",
            "missing field `name`",
        )),
        Some(v) => part::<String>(&mut problems, "/name", v),
    }
    if let Some(v) = doc.get("version") {
        part::<Option<String>>(&mut problems, "/version", v);
    }
    list::<TriggerSpec>(&mut problems, doc, "triggers");
    list::<StepSpec>(&mut problems, doc, "steps");
    list::<super::TransitionSpec>(&mut problems, doc, "transitions");
    if let Some(v) = doc.get("editor") {
        match v {
            Value::Object(map) => {
                if let Err(e) = check_editor_section(map) {
                    problems.push(EditorProblem::new("/editor", e.code(), e.to_string()));
                }
            }
            Value::Null => {}
            other => problems.push(EditorProblem::new(
                "/editor",
                "invalid_type",
                format!("invalid type: {}, expected an object", kind_of(other)),
            )),
        }
    }
    problems
}

fn list<T: serde::de::DeserializeOwned>(
    problems: &mut Vec<EditorProblem>,
    doc: &Map<String, Value>,
    field: &str,
) {
    match doc.get(field) {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                part::<T>(problems, &format!("/{field}/{i}"), item);
            }
        }
        Some(other) => problems.push(EditorProblem::new(
            format!("/{field}"),
            "invalid_type",
            format!("invalid type: {}, expected a list", kind_of(other)),
        )),
    }
}

fn part<T: serde::de::DeserializeOwned>(problems: &mut Vec<EditorProblem>, at: &str, v: &Value) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(v) {
        problems.push(serde_problem(at, &e));
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// A serde error as a problem: its path as a JSON pointer under `at`, a code from the kind of
/// error serde reported (its messages have fixed prefixes), and serde's message, which names
/// the fields or tags expected.
pub(crate) fn serde_problem(
    at: &str,
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> EditorProblem {
    let mut path = at.to_owned();
    for segment in e.path().iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("/{index}")),
            serde_path_to_error::Segment::Map { key } => {
                path.push('/');
                path.push_str(&escape(key));
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let message = e.inner().to_string();
    let code = [
        ("unknown field", "unknown_field"),
        ("missing field", "missing_field"),
        ("invalid type", "invalid_type"),
        ("unknown variant", "unknown_variant"),
        ("invalid length", "invalid_length"),
        ("invalid value", "invalid_value"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("invalid_value", |(_, code)| code);
    EditorProblem::new(path, code, message)
}

/// A key as one JSON pointer segment (RFC 6901: `~` is `~0`, `/` is `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON pointer of a validation path: `steps[2].retry.max_attempts` is
/// `/steps/2/retry/max_attempts`. What follows `input.` in a step is one key (an input
/// target may hold dots).
pub fn pointer(dotted: &str) -> String {
    let mut out = String::new();
    let mut rest = dotted;
    let mut last = "";
    while !rest.is_empty() {
        if last == "input" {
            out.push('/');
            out.push_str(&escape(rest));
            break;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let (key, tail) = rest.split_at(end);
        if !key.is_empty() {
            out.push('/');
            out.push_str(&escape(key));
            last = key;
        }
        rest = tail;
        if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']').unwrap_or(after.len());
            out.push('/');
            out.push_str(&escape(&after[..close]));
            last = "";
            rest = after.get(close + 1..).unwrap_or("");
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    out
}

/// Why an `editor` section is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditorSectionError {
    /// It nests deeper than [`crate::json::MAX_DEPTH`] allows inside a document.
    #[error("the editor section nests {depth} levels deep; the most is {max}")]
    TooDeep {
        /// How deep it nests.
        depth: usize,
        /// The most allowed.
        max: usize,
    },
    /// It is larger than [`MAX_EDITOR_BYTES`] written as JSON.
    #[error("the editor section is {bytes} bytes as JSON; the most is {MAX_EDITOR_BYTES}")]
    TooLarge {
        /// Its size written as JSON.
        bytes: usize,
    },
}

impl EditorSectionError {
    /// A stable code: `editor_too_deep` or `editor_too_large`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooDeep { .. } => "editor_too_deep",
            Self::TooLarge { .. } => "editor_too_large",
        }
    }

    /// Never: the same section is refused again.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Checks an `editor` section's bounds: it sits one level inside the document, which is held
/// to [`crate::json::MAX_DEPTH`], and is at most [`MAX_EDITOR_BYTES`] as JSON.
///
/// # Errors
///
/// [`EditorSectionError`] naming the bound.
pub fn check_editor_section(editor: &Map<String, Value>) -> Result<(), EditorSectionError> {
    let d = 1 + editor.values().map(depth).max().unwrap_or(0);
    if d >= MAX_DEPTH {
        return Err(EditorSectionError::TooDeep {
            depth: d,
            max: MAX_DEPTH - 1,
        });
    }
    let bytes = serde_json::to_string(editor).map_or(usize::MAX, |t| t.len());
    if bytes > MAX_EDITOR_BYTES {
        return Err(EditorSectionError::TooLarge { bytes });
    }
    Ok(())
}

/// What a node of a preview is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewNodeKind {
    /// A step that runs a registered action.
    Action,
    /// A built-in `log` step.
    Log,
    /// A built-in `wait` step.
    Wait,
    /// A `pause` gate.
    Pause,
    /// An `approval` gate.
    Approval,
    /// The compensation of a step (`compensate:<step>`).
    Compensation,
    /// A step that names neither an action nor a built-in (invalid; drawn anyway).
    Unknown,
}

/// Where the editor placed a node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Horizontal.
    pub x: f64,
    /// Vertical.
    pub y: f64,
}

/// A node of a preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewNode {
    /// The step name (compensations: `compensate:<step>`), as in run graphs.
    pub id: String,
    /// What it runs.
    pub kind: PreviewNodeKind,
    /// The action key, for action steps and compensations.
    pub action: Option<String>,
    /// `editor.nodes.<id>.label`, when it is a string.
    pub label: Option<String>,
    /// `editor.nodes.<id>.position`, when it has numbers `x` and `y`.
    pub position: Option<Position>,
    /// Whether a run starts here.
    pub entry: bool,
}

/// What an edge of a preview is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewEdgeKind {
    /// An `on ok|error` transition.
    Transition,
    /// An `after` dependency.
    Dependency,
    /// A step to its compensation.
    Compensation,
}

/// An edge of a preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewEdge {
    /// Stable id, as in run graphs: `from:ok:to`, `from:error:to`,
    /// `from:ok:to:condition:<index of the transition>`, `from:dependency:to`,
    /// `step:compensation:compensate:step`.
    pub id: String,
    /// Source node.
    pub from: String,
    /// Target node; `complete` ends the run (it has no node).
    pub to: String,
    /// Transition, dependency or compensation.
    pub kind: PreviewEdgeKind,
    /// `ok` or `error` (transitions).
    pub outcome: Option<Outcome>,
    /// The condition of a conditional transition.
    pub condition: Option<Condition>,
    /// Index of the transition in the spec (transitions).
    pub transition_index: Option<usize>,
    /// Recovery label of an error route (`compensation` for compensation edges).
    pub recovery: Option<String>,
}

/// The graph of a draft spec, for drawing: nothing is started or stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphPreview {
    /// The workflow name.
    pub workflow: String,
    /// Its version label.
    pub version: Option<String>,
    /// Transition or dependency mode.
    pub mode: Mode,
    /// The spec's fingerprint.
    pub fingerprint: String,
    /// The steps a run starts with.
    pub entry_steps: Vec<String>,
    /// Steps in declaration order, then compensations.
    pub nodes: Vec<PreviewNode>,
    /// Transitions in declaration order, then dependencies, then compensations.
    pub edges: Vec<PreviewEdge>,
}

impl GraphPreview {
    /// The stable JSON form (fields in a fixed order, every optional field present).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

fn node_meta<'a>(spec: &'a WorkflowSpec, id: &str) -> Option<&'a Map<String, Value>> {
    spec.editor
        .as_ref()?
        .get("nodes")?
        .as_object()?
        .get(id)?
        .as_object()
}

/// The graph of `spec` as an editor draws it: valid or not (edges to unknown steps are kept),
/// with labels and positions from its `editor` section. Ids match the run graphs of
/// `Engine::inspect_run_graph`, so a draft's nodes and edges line up with a run's.
pub fn preview_graph(spec: &WorkflowSpec) -> GraphPreview {
    let entry: Vec<String> = spec.entry_steps().iter().map(|s| s.name.clone()).collect();
    let placed = |id: &str| {
        let meta = node_meta(spec, id);
        let label = meta
            .and_then(|m| m.get("label"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let position = meta.and_then(|m| m.get("position")).and_then(|p| {
            Some(Position {
                x: p.get("x")?.as_f64()?,
                y: p.get("y")?.as_f64()?,
            })
        });
        (label, position)
    };
    let mut nodes: Vec<PreviewNode> = spec
        .steps
        .iter()
        .map(|s| {
            let kind = match (&s.action, &s.builtin) {
                (Some(_), _) => PreviewNodeKind::Action,
                (None, Some(super::Builtin::Log { .. })) => PreviewNodeKind::Log,
                (None, Some(super::Builtin::Wait { .. })) => PreviewNodeKind::Wait,
                (None, Some(super::Builtin::Pause {})) => PreviewNodeKind::Pause,
                (None, Some(super::Builtin::Approval {})) => PreviewNodeKind::Approval,
                (None, None) => PreviewNodeKind::Unknown,
            };
            let (label, position) = placed(&s.name);
            PreviewNode {
                id: s.name.clone(),
                kind,
                action: s.action.as_ref().map(ToString::to_string),
                label,
                position,
                entry: entry.contains(&s.name),
            }
        })
        .collect();
    let mut edges: Vec<PreviewEdge> = spec
        .transitions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let on = match t.on {
                Outcome::Ok => "ok",
                Outcome::Error => "error",
            };
            let id = match &t.condition {
                Some(_) => format!("{}:{on}:{}:condition:{i}", t.from, t.to),
                None => format!("{}:{on}:{}", t.from, t.to),
            };
            PreviewEdge {
                id,
                from: t.from.clone(),
                to: t.to.clone(),
                kind: PreviewEdgeKind::Transition,
                outcome: Some(t.on),
                condition: t.condition.clone(),
                transition_index: Some(i),
                recovery: t.recovery.clone(),
            }
        })
        .collect();
    for s in &spec.steps {
        for dep in &s.after {
            edges.push(PreviewEdge {
                id: format!("{dep}:dependency:{}", s.name),
                from: dep.clone(),
                to: s.name.clone(),
                kind: PreviewEdgeKind::Dependency,
                outcome: None,
                condition: None,
                transition_index: None,
                recovery: None,
            });
        }
    }
    for s in &spec.steps {
        let Some(key) = &s.compensate else { continue };
        let id = format!("compensate:{}", s.name);
        let (label, position) = placed(&id);
        edges.push(PreviewEdge {
            id: format!("{}:compensation:{id}", s.name),
            from: s.name.clone(),
            to: id.clone(),
            kind: PreviewEdgeKind::Compensation,
            outcome: Some(Outcome::Error),
            condition: None,
            transition_index: None,
            recovery: Some("compensation".into()),
        });
        nodes.push(PreviewNode {
            id,
            kind: PreviewNodeKind::Compensation,
            action: Some(key.to_string()),
            label,
            position,
            entry: false,
        });
    }
    GraphPreview {
        workflow: spec.name.clone(),
        version: spec.version.clone(),
        mode: spec.mode(),
        fingerprint: spec.fingerprint(),
        entry_steps: entry,
        nodes,
        edges,
    }
}

/// A value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    /// In the source.
    pub before: T,
    /// In the draft.
    pub after: T,
}

/// What was added, removed and changed in one kind of part, by name or id, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes<T> {
    /// In the draft only.
    pub added: Vec<String>,
    /// In the source only.
    pub removed: Vec<String>,
    /// In both, different.
    pub changed: Vec<T>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
        }
    }
}

impl<T> Changes<T> {
    /// Whether nothing was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A part present in both, with the fields that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartChange {
    /// Its name (steps, payload fields) or id (edges).
    pub id: String,
    /// The fields that differ, as written in spec files (`retry`, `input`, `condition`...).
    pub fields: Vec<String>,
}

/// A trigger present in both, with what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerChange {
    /// The trigger's name.
    pub id: String,
    /// Its fields that differ, besides the payload (`type`, `cron`, `timezone`, `overlap`...).
    pub fields: Vec<String>,
    /// Its payload fields added, removed and changed (`type`, `required`, `default`...).
    pub payload: Changes<PartChange>,
}

/// What a draft changes against its source spec. Pure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecDiff {
    /// The workflow name, when it changed (then this is another workflow).
    pub name: Option<Change<String>>,
    /// The version label, when it changed.
    pub version: Option<Change<Option<String>>>,
    /// Triggers by name.
    pub triggers: Changes<TriggerChange>,
    /// Steps by name.
    pub steps: Changes<PartChange>,
    /// Edges (transitions, dependencies, compensations) by their preview id.
    pub edges: Changes<PartChange>,
    /// The entry steps, when they changed.
    pub entry_steps: Option<Change<Vec<String>>>,
    /// The fingerprints of the executable shape.
    pub fingerprint: Change<String>,
    /// Whether the fingerprint changed: steps, routes or their settings, not labels,
    /// triggers, payloads, deadlines or the editor section.
    pub fingerprint_changed: bool,
    /// Whether the `editor` section changed (it never changes a run).
    pub editor_changed: bool,
    /// Always true: a run pins the definition it started with, so runs already started go on
    /// with the source; only runs started after the draft is registered use it.
    pub running_runs_unaffected: bool,
    /// Says so in words.
    pub note: String,
}

impl SpecDiff {
    /// Whether the draft differs from the source in anything but the `editor` section.
    pub fn changes_definition(&self) -> bool {
        self.name.is_some()
            || self.version.is_some()
            || !self.triggers.is_empty()
            || !self.steps.is_empty()
            || !self.edges.is_empty()
            || self.entry_steps.is_some()
            || self.fingerprint_changed
    }

    /// The stable JSON form.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The note [`SpecDiff::note`] carries.
pub const PINNING_NOTE: &str = "runs pin their definition when they start: runs already started \
     keep the definition they started with; only runs started after the draft is registered \
     use it";

/// The top-level fields of two JSON objects whose values differ, sorted, leaving out `skip`.
fn differing_fields(a: &Value, b: &Value, skip: &[&str]) -> Vec<String> {
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| !skip.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Compares two keyed lists: added and removed keys, and the changes `compare` finds in parts
/// present in both. The first of a repeated key counts.
fn compare_parts<T, C>(
    before: &[T],
    after: &[T],
    key: impl Fn(&T) -> String,
    compare: impl Fn(&str, &T, &T) -> Option<C>,
) -> Changes<C> {
    let mut old: BTreeMap<String, &T> = BTreeMap::new();
    for t in before {
        old.entry(key(t)).or_insert(t);
    }
    let mut new: BTreeMap<String, &T> = BTreeMap::new();
    for t in after {
        new.entry(key(t)).or_insert(t);
    }
    Changes {
        added: new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .cloned()
            .collect(),
        removed: old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect(),
        changed: old
            .iter()
            .filter_map(|(k, a)| compare(k, a, new.get(k)?))
            .collect(),
    }
}

fn field_changes<T: Serialize>(id: &str, a: &T, b: &T, skip: &[&str]) -> Option<PartChange> {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or(Value::Null),
        serde_json::to_value(b).unwrap_or(Value::Null),
    );
    let fields = differing_fields(&a, &b, skip);
    (!fields.is_empty()).then(|| PartChange {
        id: id.to_owned(),
        fields,
    })
}

/// What `draft` changes against `source`: triggers (and their payload fields), steps (and
/// which of their fields), edges by their preview id, the entry steps, the fingerprint and
/// the `editor` section. Conditional edges are identified by their transition's index, so
/// moving a conditional transition shows as one removed and one added edge.
pub fn diff(source: &WorkflowSpec, draft: &WorkflowSpec) -> SpecDiff {
    let changed = |a: &str, b: &str| {
        (a != b).then(|| Change {
            before: a.to_owned(),
            after: b.to_owned(),
        })
    };
    let triggers = compare_parts(
        &source.triggers,
        &draft.triggers,
        |t| t.name.clone(),
        |id, a, b| {
            let (va, vb) = (
                serde_json::to_value(a).unwrap_or(Value::Null),
                serde_json::to_value(b).unwrap_or(Value::Null),
            );
            let fields = differing_fields(&va, &vb, &["name", "payload"]);
            let payload = compare_parts(
                &a.payload,
                &b.payload,
                |f| f.name.clone(),
                |id, fa, fb| field_changes(id, fa, fb, &["name"]),
            );
            (!fields.is_empty() || !payload.is_empty()).then(|| TriggerChange {
                id: id.to_owned(),
                fields,
                payload,
            })
        },
    );
    let steps = compare_parts(
        &source.steps,
        &draft.steps,
        |s| s.name.clone(),
        |id, a, b| field_changes(id, a, b, &["name"]),
    );
    let (ga, gb) = (preview_graph(source), preview_graph(draft));
    let edges = compare_parts(
        &ga.edges,
        &gb.edges,
        |e| e.id.clone(),
        |id, a, b| field_changes(id, a, b, &["id"]),
    );
    let entry_steps = (ga.entry_steps != gb.entry_steps).then(|| Change {
        before: ga.entry_steps.clone(),
        after: gb.entry_steps.clone(),
    });
    let version = (source.version != draft.version).then(|| Change {
        before: source.version.clone(),
        after: draft.version.clone(),
    });
    SpecDiff {
        name: changed(&source.name, &draft.name),
        version,
        triggers,
        steps,
        edges,
        entry_steps,
        fingerprint_changed: ga.fingerprint != gb.fingerprint,
        fingerprint: Change {
            before: ga.fingerprint,
            after: gb.fingerprint,
        },
        editor_changed: source.editor != draft.editor,
        running_runs_unaffected: true,
        note: PINNING_NOTE.to_owned(),
    }
}

#[cfg(test)]
mod tests;
