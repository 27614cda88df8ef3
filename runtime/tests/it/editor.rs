//! The editor round trip on SQLite and Postgres: a document with editor metadata is
//! validated, previewed, diffed against the registered version and started; its positions
//! survive and never change the pinned definition.

use serde_json::json;
use squid_mesh::clock::ManualClock;
use squid_mesh::spec::{EditorInput, WorkflowSpec, diff, preview_graph, validate};
use squid_mesh::{RunStatus, StartOptions};

use crate::backends::{Db, on_each_backend};
use crate::engine::{drain, registry};

fn document(version: &str, extra_step: bool) -> serde_json::Value {
    let mut steps = vec![
        json!({"name": "validate", "action": "orders.validate", "output": "validation"}),
        json!({"name": "notify", "action": "echo", "input": {"total": ["validation", "total_cents"]}}),
    ];
    let mut transitions = vec![json!({"from": "validate", "on": "ok", "to": "notify"})];
    if extra_step {
        steps.push(json!({"name": "audit", "builtin": {"kind": "log", "message": "done"}}));
        transitions.push(json!({"from": "notify", "on": "ok", "to": "audit"}));
    }
    json!({
        "name": "edited",
        "version": version,
        "triggers": [{"name": "manual", "type": "manual", "payload": [
            {"name": "order_id", "type": "string"},
            {"name": "items", "type": "list"}
        ]}],
        "steps": steps,
        "transitions": transitions,
        "editor": {
            "nodes": {
                "validate": {"position": {"x": 40, "y": 80}, "label": "Check the order"},
                "notify": {"position": {"x": 240, "y": 80}}
            },
            "comments": ["drafted in the editor"]
        }
    })
}

async fn an_editor_document_round_trips_to_a_run(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let v1: WorkflowSpec = serde_json::from_value(document("1", false)).expect("parses");
    engine.register_workflow(v1.clone()).expect("registers");
    let running = engine
        .start(
            &v1,
            None,
            json!({"order_id": "o-1", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 500}]}),
            StartOptions::default(),
        )
        .await
        .expect("starts")
        .run_id;

    // The editor's draft: a new step, a moved node.
    let mut doc = document("2", true);
    doc["editor"]["nodes"]["audit"] = json!({"position": {"x": 440, "y": 80}});
    let problems = validate(EditorInput::Value(&doc));
    assert!(problems.is_empty(), "{problems:?}");
    let draft: WorkflowSpec = serde_json::from_value(doc.clone()).expect("parses");
    let report = engine.check_spec(&draft).await.expect("checks");
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    let preview = preview_graph(&draft);
    let ids: Vec<&str> = preview.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["validate", "notify", "audit"]);
    let validate_node = &preview.nodes[0];
    assert_eq!(validate_node.label.as_deref(), Some("Check the order"));
    assert!(validate_node.position.is_some());
    assert!(preview.edges.iter().any(|e| e.id == "notify:ok:audit"));

    let d = engine.diff_registered(&draft).await.expect("diffs");
    let changes = d.diff.expect("a registered version to compare with");
    assert_eq!(changes.steps.added.len(), 1, "{}", db.name());
    assert!(changes.fingerprint_changed && changes.editor_changed);
    assert_eq!(d.unaffected_runs, [running.to_string()]);
    assert_eq!(diff(&draft, &draft).steps.added.len(), 0);

    // Start the draft: the positions are kept with the spec, not in what the run pinned.
    engine.register_workflow(draft.clone()).expect("registers");
    let run = engine
        .start(
            &draft,
            None,
            json!({"order_id": "o-2", "items": [{"sku": "b", "quantity": 2, "unit_price_cents": 250}]}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let old = engine.snapshot(running).await.expect("snapshot");
    assert_eq!(old.status, RunStatus::Completed);
    assert!(
        old.attempts.iter().all(|a| a.step != "audit"),
        "the old run kept its definition"
    );
    let saved = serde_json::to_value(engine.registered_spec("edited").expect("registered"))
        .expect("serializes");
    assert_eq!(saved["editor"], doc["editor"], "positions preserved");

    // Moving a node only is no new definition.
    let mut moved = doc.clone();
    moved["editor"]["nodes"]["audit"]["position"]["x"] = json!(500);
    let moved: WorkflowSpec = serde_json::from_value(moved).expect("parses");
    let again = engine
        .start(
            &moved,
            None,
            json!({"order_id": "o-3", "items": [{"sku": "c", "quantity": 1, "unit_price_cents": 100}]}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    assert_eq!(
        engine
            .snapshot(again.run_id)
            .await
            .expect("snapshot")
            .definition_hash,
        s.definition_hash
    );
}
on_each_backend!(an_editor_document_round_trips_to_a_run);

async fn a_document_with_problems_gets_them_all_with_pointers(db: Db, clock: ManualClock) {
    let _engine = db.engine(&registry(), &clock).await;
    let mut doc = document("1", false);
    doc["steps"][0]["retrys"] = json!(3);
    doc["steps"][1]["input"] = json!("total");
    doc["transitions"][0]["to"] = json!("ghost");
    doc["colour"] = json!("blue");
    let problems = validate(EditorInput::Value(&doc));
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"/steps/0/retrys"), "{problems:?}");
    assert!(paths.contains(&"/steps/1/input"), "{problems:?}");
    assert!(paths.contains(&"/colour"), "{problems:?}");
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({"x": deep});
    }
    doc = document("1", false);
    doc["editor"]["deep"] = deep;
    let problems = validate(EditorInput::Value(&doc));
    assert!(
        problems.iter().any(|p| p.code == "too_deep"),
        "{problems:?}"
    );
}
on_each_backend!(a_document_with_problems_gets_them_all_with_pointers);
