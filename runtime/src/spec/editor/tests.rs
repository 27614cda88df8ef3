//! The editor API and the spec format as a contract: JSON Schema, documents, problems,
//! previews, diffs, and the examples in the docs.

use serde_json::{Value, json};

use super::*;
use crate::spec::{WorkflowSpec, json_schema};

fn doc() -> Value {
    json!({
        "name": "order",
        "version": "1",
        "triggers": [{"name": "manual", "type": "manual", "payload": [
            {"name": "order_id", "type": "string"},
            {"name": "total", "type": "integer", "required": false}
        ]}],
        "steps": [
            {"name": "validate", "action": "orders.validate", "output": "validation"},
            {"name": "charge", "action": "payments.charge", "compensate": "payments.refund",
             "input": {"order_id": ["order_id"]},
             "retry": {"max_attempts": 3, "backoff": {"kind": "exponential", "min_ms": 100, "max_ms": 1000}}},
            {"name": "review", "builtin": {"kind": "approval"}},
            {"name": "big", "builtin": {"kind": "log", "message": "big order"}}
        ],
        "transitions": [
            {"from": "validate", "on": "ok", "to": "charge"},
            {"from": "charge", "on": "ok", "to": "big", "condition": {"path": ["validation", "total"], "greater_than": 1000}},
            {"from": "charge", "on": "ok", "to": "review"},
            {"from": "review", "on": "ok", "to": "complete"},
            {"from": "review", "on": "error", "to": "complete", "recovery": "undo"},
            {"from": "big", "on": "ok", "to": "review"}
        ],
        "editor": {"nodes": {
            "charge": {"label": "Charge the card", "position": {"x": 120, "y": 40.5}},
            "compensate:charge": {"label": "Refund"}
        }, "comments": ["draft for review"]}
    })
}

fn spec() -> WorkflowSpec {
    serde_json::from_value(doc()).unwrap()
}

fn codes(problems: &[EditorProblem]) -> Vec<(&str, &str)> {
    problems
        .iter()
        .map(|p| (p.path.as_str(), p.code.as_str()))
        .collect()
}

#[test]
fn the_editor_section_round_trips_and_changes_no_fingerprint() {
    let s = spec();
    assert!(s.editor.is_some());
    assert!(validate(&doc()).is_empty(), "{:?}", validate(&doc()));
    let again = WorkflowSpec::from_json(&s.to_json()).unwrap();
    assert_eq!(again, s);
    let toml = s.to_toml().unwrap();
    assert_eq!(WorkflowSpec::from_toml(&toml).unwrap(), s);
    let mut moved = s.clone();
    moved.editor.as_mut().unwrap()["nodes"]["charge"]["position"] = json!({"x": 0, "y": 0});
    assert_eq!(moved.fingerprint(), s.fingerprint());
    let mut bare = s.clone();
    bare.editor = None;
    assert_eq!(bare.fingerprint(), s.fingerprint());
    assert!(!bare.to_json().contains("\"editor\""));
    // Unknown fields outside the editor section are still refused.
    let mut bad = doc();
    bad["layout"] = json!({});
    let err = WorkflowSpec::from_json(&bad.to_string()).unwrap_err();
    assert!(err.to_string().contains("unknown field `layout`"), "{err}");
}

#[test]
fn every_parse_problem_is_reported_with_a_json_pointer() {
    let mut d = doc();
    d["steps"][0]["retries"] = json!(3);
    d["steps"][1]["retry"]["max_attempts"] = json!("three");
    d["steps"][2]["builtin"] = json!({"kind": "approve"});
    d["triggers"][0]["type"] = json!("cronn");
    d["transitions"][1]["condition"] = json!({"path": ["a"], "equal": 1});
    d["transitions"][2].as_object_mut().unwrap().remove("on");
    d["colour"] = json!("blue");
    let problems = validate(&d);
    assert_eq!(
        codes(&problems),
        vec![
            ("/colour", "unknown_field"),
            ("/triggers/0/type", "unknown_variant"),
            ("/steps/0/retries", "unknown_field"),
            ("/steps/1/retry/max_attempts", "invalid_type"),
            ("/steps/2/builtin/kind", "unknown_variant"),
            ("/transitions/1/condition/equal", "unknown_field"),
            ("/transitions/2", "missing_field"),
        ],
        "{problems:#?}"
    );
    let message = |path: &str| {
        problems
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.message.clone())
            .unwrap()
    };
    assert!(message("/steps/0/retries").contains("`retry`"));
    assert!(message("/triggers/0/type").contains("`manual`"));
    assert!(message("/steps/2/builtin/kind").contains("`approval`"));
    assert!(message("/transitions/2").contains("`on`"));
    assert!(message("/transitions/1/condition/equal").contains("`equals`"));
    assert!(message("/colour").contains("`editor`"));
}

#[test]
fn a_wrong_input_mapping_names_both_shapes() {
    let mut d = doc();
    d["steps"][1]["input"] = json!("order_id");
    let problems = validate(&d);
    assert_eq!(codes(&problems), vec![("/steps/1/input", "invalid_type")]);
    assert!(
        problems[0].message.contains("a list of keys"),
        "{problems:?}"
    );
    assert!(
        problems[0].message.contains("target = [path]"),
        "{problems:?}"
    );
    d["steps"][1]["input"] = json!({"order_id": "order_id"});
    assert_eq!(
        codes(&validate(&d)),
        vec![("/steps/1/input/order_id", "invalid_type")]
    );
}

#[test]
fn validation_problems_get_pointers_too() {
    let mut d = doc();
    d["steps"][1]["retry"]["max_attempts"] = json!(0);
    d["transitions"][0]["to"] = json!("ghost");
    let problems = validate(&d);
    assert!(
        codes(&problems).contains(&("/steps/1/retry/max_attempts", "invalid_retry")),
        "{problems:?}"
    );
    assert!(codes(&problems).contains(&("/transitions/0/to", "unknown_step")));
    assert_eq!(
        pointer("steps[2].retry.max_attempts"),
        "/steps/2/retry/max_attempts"
    );
    assert_eq!(
        pointer("triggers[0].payload[1].name"),
        "/triggers/0/payload/1/name"
    );
    assert_eq!(pointer("steps[0].input.a.b/c"), "/steps/0/input/a.b~1c");
    assert_eq!(pointer("transitions"), "/transitions");
    assert_eq!(pointer(""), "");
}

#[test]
fn toml_documents_are_checked_the_same_way() {
    let text = r#"
name = "nightly"
[[triggers]]
name = "night"
type = "cron"
cron = "0 2 * * *"
timezone = "Europe/Paris"
start_at = 2027-01-01T00:00:00Z
[[steps]]
name = "report"
action = "reports.build"
retry = { max_attempts = "x" }
[editor.nodes.report]
position = { x = 1, y = 2 }
"#;
    let problems = validate(EditorInput::Toml(text));
    assert_eq!(
        codes(&problems),
        vec![("/steps/0/retry/max_attempts", "invalid_type")]
    );
    let fixed = text.replace("\"x\"", "2");
    let spec = parse(EditorInput::Toml(&fixed)).unwrap();
    assert!(spec.editor.is_some());
    let problems = validate(EditorInput::Toml("name = "))
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(problems.code, "invalid_syntax");
    assert!(problems.message.contains("line 1"), "{problems}");
}

#[test]
fn deep_json_text_gets_a_typed_problem() {
    let deep_text = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        codes(&validate(EditorInput::Json(&deep_text))),
        vec![("", "too_deep")]
    );
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(MAX_DOCUMENT_BYTES));
    assert_eq!(
        codes(&validate(EditorInput::Json(&big))),
        vec![("", "too_large")]
    );
}

#[test]
fn a_deep_value_gets_a_typed_problem() {
    let mut deep = json!(1);
    for _ in 0..100_000 {
        deep = Value::Array(vec![deep]);
    }
    // Not `json!`, which would copy `deep` recursively.
    let mut editor = Map::new();
    editor.insert("deep".into(), deep);
    let mut d = json!({"name": "x"});
    d["editor"] = Value::Object(editor);
    assert_eq!(codes(&validate(&d)), vec![("", "too_deep")]);
    // Dropping the value recursively would itself overflow: take it apart by hand.
    let mut stack = vec![d["editor"]["deep"].take()];
    while let Some(mut x) = stack.pop() {
        if let Value::Array(items) = &mut x {
            stack.append(items);
        }
    }
}

#[test]
fn deep_toml_text_gets_a_typed_problem() {
    let deep_toml = format!("a = {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        codes(&validate(EditorInput::Toml(&deep_toml))),
        vec![("", "too_deep")]
    );
}

#[test]
fn the_editor_section_is_bounded() {
    let mut nested = json!(1);
    for _ in 0..70 {
        nested = json!([nested]);
    }
    let mut d = doc();
    d["editor"] = json!({"deep": nested});
    assert_eq!(codes(&validate(&d)), vec![("", "too_deep")]);
    // Within a document the editor section is held by the document's bound; a spec built
    // in code is held by its validation.
    let mut nested = json!(1);
    for _ in 0..62 {
        nested = json!([nested]);
    }
    let mut deep = spec();
    deep.editor = Some(serde_json::from_value(json!({"deep": nested})).unwrap());
    let problems = deep.validate(None).unwrap_err();
    assert_eq!(problems[0].path, "editor");
    assert_eq!(problems[0].code, "editor_too_deep");
    d["editor"] = json!({"notes": "x".repeat(MAX_EDITOR_BYTES)});
    assert_eq!(codes(&validate(&d)), vec![("/editor", "editor_too_large")]);
    // A spec built in code is held to the same bound by its validation.
    let spec: WorkflowSpec = serde_json::from_value(d).unwrap();
    let problems = spec.validate(None).unwrap_err();
    assert_eq!(problems[0].path, "editor");
    assert_eq!(problems[0].code, "editor_too_large");
    d = doc();
    d["editor"] = json!([1]);
    assert_eq!(codes(&validate(&d)), vec![("/editor", "invalid_type")]);
}

#[test]
fn the_preview_has_run_graph_ids_labels_and_entries() {
    let g = preview_graph(&spec());
    let ids: Vec<&str> = g.edges.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "validate:ok:charge",
            "charge:ok:big:condition:1",
            "charge:ok:review",
            "review:ok:complete",
            "review:error:complete",
            "big:ok:review",
            "charge:compensation:compensate:charge",
        ]
    );
    assert_eq!(g.entry_steps, vec!["validate"]);
    let node = |id: &str| g.nodes.iter().find(|n| n.id == id).unwrap();
    assert!(node("validate").entry);
    assert_eq!(node("charge").label.as_deref(), Some("Charge the card"));
    assert_eq!(
        node("charge").position,
        Some(Position { x: 120.0, y: 40.5 })
    );
    assert_eq!(node("review").kind, PreviewNodeKind::Approval);
    assert_eq!(node("big").kind, PreviewNodeKind::Log);
    assert_eq!(
        node("compensate:charge").kind,
        PreviewNodeKind::Compensation
    );
    assert_eq!(node("compensate:charge").label.as_deref(), Some("Refund"));
    assert_eq!(
        node("compensate:charge").action.as_deref(),
        Some("payments.refund")
    );
    // Dependency mode.
    let deps: WorkflowSpec = serde_json::from_value(json!({
        "name": "fan", "triggers": [{"name": "m", "type": "manual"}],
        "steps": [{"name": "a", "action": "x.a"}, {"name": "b", "action": "x.b"},
                  {"name": "c", "action": "x.c", "after": ["a", "b"]}]
    }))
    .unwrap();
    let g = preview_graph(&deps);
    assert_eq!(g.entry_steps, vec!["a", "b"]);
    let ids: Vec<&str> = g.edges.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["a:dependency:c", "b:dependency:c"]);
    // The JSON form is stable: every field present, in a fixed order.
    let j = g.to_json();
    assert_eq!(j["mode"], "dependencies");
    assert_eq!(j["nodes"][0]["label"], Value::Null);
    assert_eq!(j["edges"][0]["kind"], "dependency");
}

#[test]
fn a_diff_names_what_changed() {
    let source = spec();
    let mut d = doc();
    d["version"] = json!("2");
    d["triggers"][0]["payload"][1]["type"] = json!("float");
    d["triggers"][0]["payload"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "note", "type": "string", "required": false}));
    d["triggers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "nightly", "type": "cron", "cron": "0 2 * * *", "timezone": "UTC"}));
    d["steps"][1]["retry"]["max_attempts"] = json!(5);
    d["steps"][1]["deadline"] = json!({"within_ms": 1000});
    d["steps"].as_array_mut().unwrap().remove(3);
    d["transitions"].as_array_mut().unwrap().remove(5);
    d["transitions"][1]["to"] = json!("review");
    d["transitions"][4]["recovery"] = json!("refund");
    let draft: WorkflowSpec = serde_json::from_value(d).unwrap();
    let diff = diff(&source, &draft);
    assert_eq!(
        diff.version,
        Some(Change {
            before: Some("1".into()),
            after: Some("2".into())
        })
    );
    assert_eq!(diff.triggers.added, vec!["nightly"]);
    let manual = &diff.triggers.changed[0];
    assert_eq!(manual.id, "manual");
    assert!(manual.fields.is_empty());
    assert_eq!(manual.payload.added, vec!["note"]);
    assert_eq!(manual.payload.changed[0].id, "total");
    assert_eq!(manual.payload.changed[0].fields, vec!["type"]);
    assert_eq!(diff.steps.removed, vec!["big"]);
    assert_eq!(diff.steps.changed[0].id, "charge");
    assert_eq!(diff.steps.changed[0].fields, vec!["deadline", "retry"]);
    assert_eq!(diff.edges.added, vec!["charge:ok:review:condition:1"]);
    assert_eq!(
        diff.edges.removed,
        vec!["big:ok:review", "charge:ok:big:condition:1"]
    );
    assert_eq!(diff.edges.changed[0].id, "review:error:complete");
    assert_eq!(diff.edges.changed[0].fields, vec!["recovery"]);
    assert!(diff.fingerprint_changed);
    assert!(!diff.editor_changed);
    assert!(diff.running_runs_unaffected);
    assert!(diff.changes_definition());

    // Moving a node changes the editor section only.
    let mut moved = source.clone();
    moved.editor.as_mut().unwrap()["nodes"]["charge"]["position"] = json!({"x": 5, "y": 5});
    let diff = super::diff(&source, &moved);
    assert!(diff.editor_changed);
    assert!(!diff.fingerprint_changed);
    assert!(!diff.changes_definition());
    assert_eq!(diff.to_json()["running_runs_unaffected"], true);
}

// The contract: the JSON Schema, its checked-in copy, and the examples the docs show.

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let checked_in: Value =
        serde_json::from_str(&repo_file("docs/workflow-spec.schema.json")).unwrap();
    assert!(
        checked_in == json_schema(),
        "docs/workflow-spec.schema.json is out of date with the spec types; regenerate it with \
         `squid-mesh spec schema > docs/workflow-spec.schema.json` \
         (cargo run -p squid-mesh-cli -- spec schema > docs/workflow-spec.schema.json)"
    );
}

/// The fenced blocks of a markdown file in `lang`, with their line numbers.
fn fenced(markdown: &str, lang: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None if trimmed.starts_with("```") => {
                let info = trimmed.trim_start_matches('`').trim();
                open = Some((i + 1, String::new()));
                if info.split(',').next() != Some(lang) {
                    open = Some((0, String::new()));
                }
            }
            Some(_) if trimmed.starts_with("```") => {
                let (at, text) = open.take().unwrap();
                if at > 0 {
                    blocks.push((at, text));
                }
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Every spec shown in the docs, as a JSON value with where it came from. Blocks that are
/// not specs (manifests, Cargo.toml) are left out; fragments of a spec (a trigger table) get
/// a name so that they are whole documents.
fn doc_specs() -> Vec<(String, Value)> {
    let mut specs = Vec::new();
    for file in ["README.md", "docs/guide.md", "docs/spec-reference.md"] {
        let text = repo_file(file);
        for (line, block) in fenced(&text, "toml") {
            if !["[[steps]]", "[[triggers]]", "[[transitions]]"]
                .iter()
                .any(|t| block.contains(t))
            {
                continue;
            }
            // A top-level name comes before the first table.
            let named = block
                .lines()
                .take_while(|l| !l.starts_with('['))
                .any(|l| l.starts_with("name ="));
            let block = if named {
                block
            } else {
                format!("name = \"fragment\"\n{block}")
            };
            let value = to_value(EditorInput::Toml(&block))
                .unwrap_or_else(|p| panic!("{file}:{line}: {p}"));
            specs.push((format!("{file}:{line}"), value));
        }
        for (line, block) in fenced(&text, "json") {
            let value: Value =
                serde_json::from_str(&block).unwrap_or_else(|e| panic!("{file}:{line}: {e}"));
            if value.get("steps").is_some() || value.get("triggers").is_some() {
                specs.push((format!("{file}:{line}"), value));
            }
        }
    }
    specs
}

#[test]
fn every_spec_in_the_docs_matches_the_schema_and_parses() {
    let validator = jsonschema::validator_for(&json_schema()).expect("the schema compiles");
    let specs = doc_specs();
    assert!(
        specs.len() >= 20,
        "only {} specs found in the docs",
        specs.len()
    );
    for (at, value) in &specs {
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{at}: {errors:?}");
        let problems = parse(EditorInput::Value(value)).err().unwrap_or_default();
        assert!(problems.is_empty(), "{at}: {problems:?}");
    }
    // Every example of the reference page is a whole, valid spec.
    for (at, value) in specs.iter().filter(|(at, _)| at.contains("spec-reference")) {
        let problems = validate(value);
        assert!(problems.is_empty(), "{at}: {problems:?}");
    }
}

#[test]
fn the_reference_examples_parse_with_the_spec_parsers() {
    let text = repo_file("docs/spec-reference.md");
    let toml = fenced(&text, "toml");
    let json = fenced(&text, "json");
    assert!(toml.len() >= 10 && json.len() >= 10);
    for (line, block) in toml {
        WorkflowSpec::from_toml(&block)
            .unwrap_or_else(|e| panic!("docs/spec-reference.md:{line}: {e}"));
    }
    for (line, block) in json {
        WorkflowSpec::from_json(&block)
            .unwrap_or_else(|e| panic!("docs/spec-reference.md:{line}: {e}"));
    }
}

#[test]
fn the_schema_rejects_what_the_parser_rejects() {
    let validator = jsonschema::validator_for(&json_schema()).expect("the schema compiles");
    assert!(validator.is_valid(&doc()));
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut d = doc();
        edit(&mut d);
        d
    };
    let cases = [
        broken(&|d| d["colour"] = json!(1)),
        broken(&|d| {
            d.as_object_mut().unwrap().remove("name");
        }),
        broken(&|d| d["triggers"][0]["type"] = json!("cronn")),
        broken(&|d| d["steps"][0]["retry"] = json!({"max_attempts": "3"})),
        broken(&|d| d["steps"][0]["builtin"] = json!({"kind": "sleep"})),
        broken(&|d| d["steps"][0]["input"] = json!("x")),
        broken(&|d| d["steps"][0]["action"] = json!("no spaces allowed")),
        broken(&|d| d["transitions"][1]["condition"] = json!({"path": ["a"]})),
        broken(&|d| {
            d["transitions"][1]["condition"] = json!({"path": ["a"], "equals": 1, "less_than": 2})
        }),
        broken(&|d| d["editor"] = json!("not an object")),
        broken(&|d| d["steps"][1]["retry"]["backoff"]["kind"] = json!("fibonacci")),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert!(!validator.is_valid(case), "case {i} was accepted: {case}");
        assert!(!validate(case).is_empty(), "case {i} has no problem");
    }
}
