//! Dynamic work on SQLite and Postgres: from host code (preview, record, schedule) and from
//! inside an action (the `schedule-work` host import), with joins, retries, limits, every
//! kind of bad input, the read side and replay.

use std::time::Duration;

use serde_json::json;
use squid_mesh::actions::{ActionLimits, ActionRegistry};
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::{
    DynamicEdgeSpec, DynamicNodeSpec, DynamicWorkSpec, ManualAttrs, ReplayOptions, WorkOrigin,
};
use squid_mesh::inspect::{EdgeKind, InspectOptions, NodeKind, NodeStatus, Redact, Scope};
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{Capabilities, Engine, EngineError, RunId, RunStatus, StartOptions, Worker};
use squid_mesh_example_artifacts as artifacts;

use crate::backends::{Db, on_each_backend};
use crate::engine::{assert_consistent, drain, opts, registry};
use crate::support::file_action;

/// The example registry plus the fan-out component under its three keys; `fan.out` may
/// schedule work when `grant` says so, at most `max_nodes` nodes per step.
fn fan_registry(grant: bool, max_nodes: u32) -> ActionRegistry {
    let reg = registry();
    for key in ["fan.square", "fan.sum"] {
        reg.register(file_action(key, artifacts::FAN_OUT.as_ref()))
            .expect("registers");
    }
    reg.register(
        file_action("fan.out", artifacts::FAN_OUT.as_ref())
            .with_capabilities(Capabilities {
                dynamic_work: grant,
                ..Capabilities::default()
            })
            .with_limits(ActionLimits {
                max_dynamic_nodes: max_nodes,
                ..ActionLimits::default()
            }),
    )
    .expect("registers");
    reg
}

/// prepare (echo) -> gate (pause) -> ship (echo).
fn gated() -> WorkflowSpec {
    WorkflowSpec::builder("gated_work")
        .trigger(Trigger::manual("m"))
        .step(Step::action("prepare", "echo").output("prepared"))
        .step(Step::pause("gate"))
        .step(Step::action("ship", "echo").output("shipped"))
        .on_ok("prepare", "gate")
        .on_ok("gate", "ship")
        .on_ok("ship", "complete")
        .build()
}

async fn paused(engine: &Engine) -> RunId {
    let run = engine
        .start(&gated(), None, json!({}), StartOptions::default())
        .await
        .expect("starts");
    drain(engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Paused);
    run.run_id
}

fn squares(key: &str, values: &[i64]) -> DynamicWorkSpec {
    let mut work = DynamicWorkSpec::new(key, "prepare");
    for (i, v) in values.iter().enumerate() {
        work = work.node(
            DynamicNodeSpec::new(format!("{key}-{i}"), "fan.square").input(json!({"value": v})),
        );
    }
    work.join(DynamicNodeSpec::new(format!("{key}-sum"), "fan.sum").output(format!("{key}_total")))
}

async fn journal_len(engine: &Engine, run: RunId) -> usize {
    engine.journal(run).await.expect("journal").len()
}

async fn host_code_schedules_work_and_the_run_completes_only_after_it(db: Db, clock: ManualClock) {
    let engine = db.engine(&fan_registry(false, 10_000), &clock).await;
    let run = paused(&engine).await;
    // Resume first, so the last declared step runs before the work's nodes.
    engine
        .resume(run, ManualAttrs::by("ops"))
        .await
        .expect("resumes");
    clock.advance(Duration::from_millis(10));
    let work = squares("sq", &[1, 2, 3]);
    let preview = engine
        .preview_dynamic_work(run, &work)
        .await
        .expect("previews");
    assert_eq!(preview.origin_node_id, "prepare");
    assert_eq!(
        preview.added_node_ids,
        ["sq-0", "sq-1", "sq-2", "sq-sum"],
        "{}",
        db.name()
    );
    assert!(
        preview
            .added_edge_ids
            .contains(&"prepare:dynamic:sq-0".to_owned())
    );
    assert!(
        preview
            .added_edge_ids
            .contains(&"sq-2:dynamic:sq-sum".to_owned())
    );
    assert!(preview.recordable && !preview.duplicate);
    assert!(
        preview.work.nodes[0].digest.is_some(),
        "the action is pinned when previewed for scheduling"
    );
    let before = journal_len(&engine, run).await;
    assert_eq!(
        journal_len(&engine, run).await,
        before,
        "a preview writes nothing"
    );

    let receipt = engine
        .schedule_dynamic_work(run, &work)
        .await
        .expect("schedules");
    assert_eq!((receipt.nodes, receipt.duplicate), (4, false));
    let again = engine
        .schedule_dynamic_work(run, &work)
        .await
        .expect("a repeat is fine");
    assert!(again.duplicate, "{}", db.name());
    let after = journal_len(&engine, run).await;
    let preview = engine.preview_dynamic_work(run, &work).await.expect("ok");
    assert!(preview.duplicate && !preview.recordable);
    assert_eq!(preview.warnings[0].code, "duplicate");

    // ship is due first: it ends the declared graph, and the run waits for the work.
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("progress");
    assert!(s.attempts.iter().any(|a| a.step == "ship"));
    assert_eq!(s.status, RunStatus::Running, "{}", db.name());
    assert!(s.dynamic.completion_deferred);
    assert_eq!(
        journal_len(&engine, run).await,
        after + 3,
        "claimed, recorded, applied"
    );

    let ran = drain(&engine).await;
    assert_eq!(ran, 4, "three squares and the join");
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.context["sq_total"], json!({"total": 14.0, "count": 3}));
    let join = s.attempts_of("sq-sum");
    assert_eq!(join.len(), 1);
    let results = &join[0].input["results"];
    assert_eq!(results[0], json!({"id": "sq-0", "output": {"square": 1.0}}));
    assert_eq!(results.as_array().map(Vec::len), Some(3));
    assert_consistent(&engine, &s).await;

    let graph = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    let overlay = &graph.dynamic_work_overlays[0];
    assert_eq!(overlay.key, "sq");
    assert_eq!(overlay.origin_node_id, "prepare");
    assert_eq!(overlay.node_ids.len(), 4);
    let node = graph.node("sq-1").expect("dynamic node drawn");
    assert_eq!(
        (node.kind, node.status),
        (NodeKind::Dynamic, NodeStatus::Completed)
    );
    assert_eq!(graph.node("sq-sum").map(|n| n.kind), Some(NodeKind::Join));
    let edge = graph.edge("prepare:dynamic:sq-1").expect("edge");
    assert_eq!(edge.kind, EdgeKind::Dynamic);
    let x = engine
        .explain_run(run, InspectOptions::default())
        .await
        .expect("explains");
    assert_eq!(x.evidence["dynamic_work"]["count"], json!(1));
    assert_eq!(x.evidence["dynamic_work"]["node_count"], json!(4));
    assert_eq!(
        x.evidence["dynamic_work"]["by_status"]["completed"],
        json!(1)
    );
    let ext = x.redacted(Scope::External);
    assert_eq!(ext.evidence["dynamic_work"]["count"], json!(1));

    // Dynamic nodes are replay-unsafe unless the work allowed replay.
    let err = engine
        .replay(run, ReplayOptions::default())
        .await
        .expect_err("needs review");
    match err {
        EngineError::UnsafeReplay { steps, .. } => assert!(steps.contains(&"sq-0".to_owned())),
        other => panic!("{other}"),
    }
    let err = engine
        .schedule_dynamic_work(run, &squares("late", &[1]))
        .await
        .expect_err("terminal");
    match err {
        EngineError::InvalidDynamicWork(p) => assert_eq!(p[0].code, "run_terminal"),
        other => panic!("{other}"),
    }
    let again = engine
        .schedule_dynamic_work(run, &work)
        .await
        .expect("an exact repeat after the end is still a repeat");
    assert!(again.duplicate);
}
on_each_backend!(host_code_schedules_work_and_the_run_completes_only_after_it);

async fn recorded_work_is_drawn_but_never_runs(db: Db, clock: ManualClock) {
    let engine = db.engine(&fan_registry(false, 10_000), &clock).await;
    let run = paused(&engine).await;
    let mut work = squares("plan", &[5]);
    work.reason = Some("what the agent proposes".into());
    work.metadata.insert("token".into(), json!("secret-value"));
    let r = engine
        .record_dynamic_work(run, &work)
        .await
        .expect("records");
    assert!(!r.scheduled);
    assert_eq!(drain(&engine).await, 0, "recorded nodes never run");
    let graph = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(
        graph.node("plan-0").map(|n| n.status),
        Some(NodeStatus::Recorded)
    );
    let insp = engine
        .inspect_run(run, InspectOptions::default())
        .await
        .expect("inspects");
    assert!(insp.dynamic_work[0].metadata.is_some());
    let ext = insp.redacted(Scope::External);
    assert!(ext.dynamic_work[0].metadata.is_none() && ext.dynamic_work[0].reason.is_none());
    // Scheduling under the recorded key is a conflict; a new key schedules.
    let err = engine
        .schedule_dynamic_work(run, &work)
        .await
        .expect_err("conflict");
    assert_eq!(problem_codes(&err), ["key_conflict"], "{}", db.name());
    engine
        .resume(run, ManualAttrs::by("ops"))
        .await
        .expect("resumes");
    drain(&engine).await;
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_eq!(
        s.status,
        RunStatus::Completed,
        "recorded work does not hold the run"
    );
    assert_consistent(&engine, &s).await;
}
on_each_backend!(recorded_work_is_drawn_but_never_runs);

fn problem_codes(e: &EngineError) -> Vec<String> {
    match e {
        EngineError::InvalidDynamicWork(p) => p.iter().map(|p| p.code.clone()).collect(),
        other => panic!("expected invalid dynamic work, got {other}"),
    }
}

async fn problems_of(engine: &Engine, run: RunId, work: &DynamicWorkSpec) -> Vec<(String, String)> {
    let before = journal_len(engine, run).await;
    let err = engine
        .schedule_dynamic_work(run, work)
        .await
        .expect_err("refused");
    assert_eq!(journal_len(engine, run).await, before, "nothing written");
    match err {
        EngineError::InvalidDynamicWork(p) => p.into_iter().map(|p| (p.path, p.code)).collect(),
        other => panic!("expected invalid dynamic work, got {other}"),
    }
}

async fn bad_work_is_refused_with_paths_and_nothing_is_written(db: Db, clock: ManualClock) {
    let engine = db
        .builder(&fan_registry(false, 10_000), &clock)
        .max_dynamic_nodes(5)
        .build()
        .await
        .expect("builds");
    let run = paused(&engine).await;
    engine
        .schedule_dynamic_work(run, &squares("first", &[1]))
        .await
        .expect("schedules");
    let pair = |p: &str, c: &str| (p.to_owned(), c.to_owned());

    // Given edges add to the defaults: a node no edge leads to hangs from the origin.
    let ordered = DynamicWorkSpec::new("ordered", "prepare")
        .node(DynamicNodeSpec::new("o1", "fan.square"))
        .node(DynamicNodeSpec::new("o2", "fan.square"))
        .node(DynamicNodeSpec::new("o3", "fan.square"))
        .edge("o1", "o2");
    let preview = engine
        .preview_dynamic_work(run, &ordered)
        .await
        .expect("previews");
    assert_eq!(
        preview.added_edge_ids,
        ["o1:dynamic:o2", "prepare:dynamic:o1", "prepare:dynamic:o3"]
    );
    let parsed = DynamicWorkSpec::from_json(
        r#"{"key": "k", "origin": "prepare", "nodes": [{"id": "a", "action": "fan.square", "retry": 3}]}"#,
    )
    .expect_err("retry is an object");
    assert_eq!(
        (parsed[0].path.as_str(), parsed[0].code.as_str()),
        ("/nodes/0/retry", "invalid_type")
    );
    let parsed = DynamicWorkSpec::from_json(
        r#"{"key": "k", "origin": "prepare", "nodes": [{"id": "a", "action": "fan.square", "inptu": {}}]}"#,
    )
    .expect_err("unknown field");
    assert_eq!(
        (parsed[0].path.as_str(), parsed[0].code.as_str()),
        ("/nodes/0/inptu", "unknown_field")
    );
    let shorthand = DynamicWorkSpec::from_json(
        r#"{"key": "k", "origin": "prepare", "nodes": [{"id": "a", "action": "fan.square"}]}"#,
    )
    .expect("a step name is an origin");
    assert_eq!(shorthand.origin.map(|o| o.step).as_deref(), Some("prepare"));

    let mut w = DynamicWorkSpec::new("k", "prepare")
        .node(DynamicNodeSpec::new("a", "no.such"))
        .node(DynamicNodeSpec::new("a", "fan.square"))
        .node(DynamicNodeSpec::new("ship", "fan.square"))
        .node(DynamicNodeSpec::new("first-0", "fan.square"))
        .node(DynamicNodeSpec::new("bad id", "fan.square"));
    w.nodes[1].retry = Some(squid_mesh::spec::RetryPolicy {
        max_attempts: 0,
        backoff: None,
    });
    assert_eq!(
        problems_of(&engine, run, &w).await,
        [
            pair("/nodes/0/action", "unknown_action"),
            pair("/nodes/1/id", "duplicate_id"),
            pair("/nodes/1/retry/max_attempts", "invalid_retry"),
            pair("/nodes/2/id", "collides_with_step"),
            pair("/nodes/3/id", "collides_with_node"),
            pair("/nodes/4/id", "invalid_id"),
        ],
        "{}",
        db.name()
    );

    let too_many = squares("big", &[1, 2, 3, 4, 5]);
    assert_eq!(
        problems_of(&engine, run, &too_many).await,
        [pair("/nodes", "too_many_nodes")]
    );

    let mut edges = DynamicWorkSpec::new("e", "prepare")
        .node(DynamicNodeSpec::new("e1", "fan.square"))
        .node(DynamicNodeSpec::new("e2", "fan.square"))
        .edge("e1", "e2")
        .edge("e2", "e1")
        .edge("nowhere", "e1")
        .edge("e1", "ghost");
    edges.edges.push(DynamicEdgeSpec {
        id: Some("e1:dynamic:e2".into()),
        from: "prepare".into(),
        to: "e2".into(),
    });
    assert_eq!(
        problems_of(&engine, run, &edges).await,
        [
            pair("/edges/2/from", "unknown_node"),
            pair("/edges/3/to", "unknown_node"),
            pair("/edges/4/id", "duplicate_edge"),
            pair("/edges", "cycle"),
        ]
    );

    let mut deep = json!(1);
    for _ in 0..80 {
        deep = json!([deep]);
    }
    let nested = DynamicWorkSpec::new("deep", "prepare")
        .node(DynamicNodeSpec::new("d1", "fan.square").input(json!({"value": deep})));
    assert_eq!(
        problems_of(&engine, run, &nested).await,
        [pair("/nodes/0/input", "too_deep")]
    );

    let mut origin = squares("o", &[1]);
    origin.origin = Some(WorkOrigin {
        step: "ship".into(),
        attempt: None,
    });
    assert_eq!(
        problems_of(&engine, run, &origin).await,
        [pair("/origin", "unknown_origin")]
    );
    origin.origin = Some(WorkOrigin {
        step: "nope".into(),
        attempt: None,
    });
    assert_eq!(
        problems_of(&engine, run, &origin).await,
        [pair("/origin/step", "unknown_origin")]
    );
    origin.origin = None;
    assert_eq!(
        problems_of(&engine, run, &origin).await,
        [pair("/origin", "missing_origin")]
    );

    let empty = DynamicWorkSpec::new("", "prepare");
    assert_eq!(
        problems_of(&engine, run, &empty).await,
        [pair("/key", "invalid_key"), pair("/nodes", "no_nodes")]
    );

    let changed = squares("first", &[2]);
    assert_eq!(
        problems_of(&engine, run, &changed).await,
        [pair("/key", "key_conflict")]
    );

    let err = engine
        .schedule_dynamic_work(RunId::random(), &squares("x", &[1]))
        .await
        .expect_err("no run");
    assert_eq!(err.code(), "run_not_found");
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_consistent(&engine, &s).await;
}
on_each_backend!(bad_work_is_refused_with_paths_and_nothing_is_written);

async fn a_node_that_fails_for_good_fails_the_run(db: Db, clock: ManualClock) {
    let engine = db.engine(&fan_registry(false, 10_000), &clock).await;
    let run = paused(&engine).await;
    let work = DynamicWorkSpec::new("w", "prepare")
        .node(DynamicNodeSpec::new("fine", "fan.square").input(json!({"value": 2})))
        .node(DynamicNodeSpec::new("broken", "fan.square").input(json!({"nothing": 1})));
    engine
        .schedule_dynamic_work(run, &work)
        .await
        .expect("schedules");
    drain(&engine).await;
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    let error = s.error.clone().unwrap_or_default();
    assert_eq!(
        (
            error["step"].as_str(),
            error["code"].as_str(),
            error["dynamic_work"].as_str()
        ),
        (Some("broken"), Some("no_value"), Some("w"))
    );
    assert_consistent(&engine, &s).await;
}
on_each_backend!(a_node_that_fails_for_good_fails_the_run);

/// fan (fan.out over the payload's items) -> report (echo).
fn fanning() -> WorkflowSpec {
    WorkflowSpec::builder("fan")
        .trigger(Trigger::manual("m").list("items").integer("fail_attempts"))
        .step(
            Step::action("fan", "fan.out")
                .input(["items", "fail_attempts"])
                .retry(3)
                .output("fanned"),
        )
        .step(Step::action("report", "echo").input_path("sum", ["sum"]))
        .on_ok("fan", "report")
        .on_ok("report", "complete")
        .build()
}

async fn an_action_fans_out_over_a_thousand_items_and_joins_across_workers(
    db: Db,
    clock: ManualClock,
) {
    let reg = fan_registry(true, 10_000);
    let engine = db.engine(&reg, &clock).await;
    let other = db.engine(&reg, &clock).await;
    let items: Vec<i64> = (1..=1000).collect();
    let run = engine
        .start(
            &fanning(),
            None,
            json!({"items": items, "fail_attempts": 1}),
            StartOptions::default(),
        )
        .await
        .expect("starts")
        .run_id;
    let workers: Vec<Worker> = [&engine, &other]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Worker::builder(e)
                .concurrency(4)
                .owner_id(format!("w{i}"))
                .poll_interval(Duration::from_millis(20))
                .start()
                .expect("starts")
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = engine.snapshot(run).await.expect("snapshot");
        if s.is_terminal() || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for w in workers {
        w.shutdown(Duration::from_secs(10)).await;
    }
    assert_eq!(
        s.status,
        RunStatus::Completed,
        "{}: {:?}",
        db.name(),
        s.error
    );
    // The fanning step failed once after scheduling; its retry scheduled nothing twice.
    let fan = s.attempts_of("fan");
    assert_eq!(fan.len(), 2);
    assert_eq!(
        fan[1].outcome.as_ref().and_then(|o| match o {
            squid_mesh::StepOutcome::Succeeded { output, .. } => Some(output["duplicate"].clone()),
            _ => None,
        }),
        Some(json!(true))
    );
    let nodes: Vec<_> = s.attempts.iter().filter(|a| a.node.is_some()).collect();
    assert_eq!(nodes.len(), 1001, "each square once, and the join");
    let expected: f64 = (1..=1000).map(|i| (i * i) as f64).sum();
    assert_eq!(s.context["sum"]["total"], json!(expected));
    // The step's successor waited for the join.
    let report = s.attempts_of("report");
    let join = s.attempts_of("sum");
    assert_eq!((report.len(), join.len()), (1, 1));
    assert_eq!(report[0].input["sum"]["total"], json!(expected));
    let owners: std::collections::BTreeSet<_> =
        nodes.iter().filter_map(|a| a.owner.clone()).collect();
    assert!(owners.len() > 1, "several workers ran nodes: {owners:?}");
    assert_consistent(&engine, &s).await;
    let graph = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(graph.dynamic_work_overlays[0].node_ids.len(), 1001);
    assert_eq!(
        graph.edge("fan:ok:report").map(|e| e.status),
        Some(squid_mesh::inspect::EdgeStatus::Selected)
    );
}
on_each_backend!(an_action_fans_out_over_a_thousand_items_and_joins_across_workers);

async fn an_action_needs_the_capability_and_stays_within_its_limit(db: Db, clock: ManualClock) {
    for (grant, limit, code) in [
        (false, 10_000, "dynamic_work_refused"),
        (true, 10, "invalid_dynamic_work"),
    ] {
        let engine = db.engine(&fan_registry(grant, limit), &clock).await;
        let spec = WorkflowSpec::builder(format!("fan_{grant}"))
            .trigger(Trigger::manual("m").list("items"))
            .step(Step::action("fan", "fan.out").input(["items"]))
            .build();
        let items: Vec<i64> = (1..=20).collect();
        let run = engine
            .start(
                &spec,
                None,
                json!({"items": items}),
                StartOptions::default(),
            )
            .await
            .expect("starts");
        drain(&engine).await;
        let s = engine.snapshot(run.run_id).await.expect("snapshot");
        assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
        let error = s.error.clone().unwrap_or_default();
        assert_eq!(error["code"].as_str(), Some(code), "{error}");
        if !grant {
            assert!(
                error["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("dynamic_work")
            );
        } else {
            assert!(
                error["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("too_many_nodes")
            );
        }
        assert!(
            s.attempts.iter().all(|a| a.node.is_none()),
            "nothing scheduled"
        );
    }
}
on_each_backend!(an_action_needs_the_capability_and_stays_within_its_limit);

async fn a_large_work_is_written_in_bounded_statements(db: Db, clock: ManualClock) {
    // 5,000 attempt rows bind more values than one Postgres statement may carry.
    let engine = db
        .builder(&fan_registry(false, 10_000), &clock)
        .max_dynamic_nodes(6_000)
        .build()
        .await
        .expect("builds");
    let run = paused(&engine).await;
    let values: Vec<i64> = (0..5_000).collect();
    let receipt = engine
        .schedule_dynamic_work(run, &squares("big", &values))
        .await
        .expect("schedules");
    assert_eq!(receipt.nodes, 5_001);
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_eq!(
        s.attempts.iter().filter(|a| a.node.is_some()).count(),
        5_000,
        "{}",
        db.name()
    );
    let s = engine
        .cancel(run, Default::default())
        .await
        .expect("cancels");
    assert_eq!(s.status, RunStatus::Cancelled);
    assert_consistent(&engine, &s).await;
}
on_each_backend!(a_large_work_is_written_in_bounded_statements);
