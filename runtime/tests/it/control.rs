//! The control plane on SQLite and Postgres: gates, commands as signals, cancellation,
//! replay, saga compensation and child runs.

use std::time::Duration;

use serde_json::{Value, json};
use squid_mesh::actions::LogLevel;
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::{
    AfterClaim, ChildOptions, CommandOptions, ManualAttrs, ReplayOptions, Signal, SignalKind,
};
use squid_mesh::journal::Fact;
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{Engine, EngineError, RunStatus, StartOptions};

use crate::backends::{Db, on_each_backend};
use crate::engine::{assert_consistent, drain, invoking_in_background, opts, registry};

fn gated(approval: bool) -> WorkflowSpec {
    let b = WorkflowSpec::builder(if approval { "reviewed" } else { "paused" })
        .trigger(Trigger::manual("m"))
        .step(Step::action("prepare", "echo").output("prepared"))
        .step(Step::log("ship", LogLevel::Info, "shipping"))
        .on_ok("prepare", "gate")
        .on_ok("ship", "complete");
    if approval {
        b.approval_step("gate", "review")
            .step(Step::log("refund", LogLevel::Warn, "refunding"))
            .on_ok("gate", "ship")
            .on_error("gate", "refund")
            .on_ok("refund", "complete")
            .build()
    } else {
        b.step(Step::pause("gate")).on_ok("gate", "ship").build()
    }
}

async fn paused_run(engine: &Engine, approval: bool) -> squid_mesh::RunId {
    let run = engine
        .start(&gated(approval), None, json!({}), StartOptions::default())
        .await
        .expect("starts");
    drain(engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Paused);
    assert_eq!(s.manual.as_ref().map(|g| g.step.as_str()), Some("gate"));
    run.run_id
}

fn steps_run(s: &squid_mesh::RunSnapshot) -> Vec<&str> {
    s.attempts.iter().map(|a| a.step.as_str()).collect()
}

async fn pause_and_resume(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = paused_run(&engine, false).await;
    assert!(
        engine.execute_next(opts("w")).await.expect("ok").is_none(),
        "nothing runs while paused"
    );
    let err = engine
        .approve(run, ManualAttrs::by("ana"))
        .await
        .expect_err("wrong gate");
    assert_eq!(err.code(), "wrong_manual_step", "{}", db.name());
    let s = engine
        .resume(run, ManualAttrs::by("ops").comment("stock arrived"))
        .await
        .expect("resumes");
    assert_eq!(s.status, RunStatus::Running);
    assert_eq!(s.context["actor"], json!("ops"));
    drain(&engine).await;
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(steps_run(&s), ["prepare", "gate", "ship"]);
    assert_eq!(
        engine
            .resume(run, ManualAttrs::default())
            .await
            .expect_err("ended")
            .code(),
        "invalid_transition"
    );
    assert_eq!(
        engine
            .resume(squid_mesh::RunId::random(), ManualAttrs::default())
            .await
            .expect_err("unknown")
            .code(),
        "run_not_found"
    );
    assert_consistent(&engine, &s).await;
}
on_each_backend!(pause_and_resume);

async fn approve_and_reject_take_their_routes_and_need_an_actor(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = paused_run(&engine, true).await;
    let err = engine
        .approve(run, ManualAttrs::default())
        .await
        .expect_err("actor required");
    assert_eq!(
        (err.code(), err.problems()[0].path.as_str()),
        ("invalid_option", "actor"),
        "{}",
        db.name()
    );
    assert_eq!(
        engine
            .approve(run, ManualAttrs::by("  "))
            .await
            .expect_err("blank")
            .code(),
        "invalid_option"
    );
    assert_eq!(
        engine
            .resume(run, ManualAttrs::by("ops"))
            .await
            .expect_err("wrong gate")
            .code(),
        "wrong_manual_step"
    );
    let s = engine
        .approve(
            run,
            ManualAttrs::by(json!({"id": 7, "name": "Ana"})).comment("looks fine"),
        )
        .await
        .expect("approves");
    assert_eq!(s.context["review"]["decision"], json!("approved"));
    assert_eq!(s.context["review"]["actor"]["name"], json!("Ana"));
    assert_eq!(s.context["review"]["comment"], json!("looks fine"));
    drain(&engine).await;
    assert_eq!(
        steps_run(&engine.snapshot(run).await.expect("snapshot")),
        ["prepare", "gate", "ship"]
    );

    let run = paused_run(&engine, true).await;
    let s = engine
        .reject(run, ManualAttrs::by("bo"))
        .await
        .expect("rejects");
    assert_eq!(s.context["review"]["decision"], json!("rejected"));
    drain(&engine).await;
    let s = engine.snapshot(run).await.expect("snapshot");
    assert_eq!(
        (s.status, steps_run(&s)),
        (RunStatus::Completed, vec!["prepare", "gate", "refund"])
    );
    assert_consistent(&engine, &s).await;
}
on_each_backend!(approve_and_reject_take_their_routes_and_need_an_actor);

async fn duplicate_commands_are_idempotent_and_secrets_are_redacted(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = paused_run(&engine, true).await;
    let attrs = || {
        let mut a = ManualAttrs::by("ana").idempotency_key("approve-1");
        a.metadata = json!({"api_key": "sk_live_1", "nested": {"Password": "hunter2", "ticket": "OPS-7"}, "list": [{"refresh-token": "r"}]})
            .as_object()
            .cloned()
            .expect("object");
        a
    };
    let first = engine.approve(run, attrs()).await.expect("approves");
    let again = engine.approve(run, attrs()).await.expect("same result");
    assert_eq!(
        first.revision,
        again.revision,
        "the repeat wrote nothing ({})",
        db.name()
    );
    let receipts: Vec<_> = engine
        .journal(run)
        .await
        .expect("journal")
        .into_iter()
        .filter_map(|(_, f)| match f {
            Fact::CommandReceived { command }
                if command.command == squid_mesh::vocab::CommandKind::Approve =>
            {
                Some(command)
            }
            _ => None,
        })
        .collect();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        Value::Object(receipts[0].metadata.clone()),
        json!({"api_key": "[REDACTED]", "nested": {"Password": "[REDACTED]", "ticket": "OPS-7"}, "list": [{"refresh-token": "[REDACTED]"}]})
    );
    assert_eq!(
        first.context["review"]["metadata"]["api_key"],
        json!("[REDACTED]")
    );
    let text = engine
        .journal(run)
        .await
        .expect("journal")
        .iter()
        .map(|(_, f)| serde_json::to_string(f).expect("json"))
        .collect::<String>();
    assert!(
        !text.contains("sk_live_1") && !text.contains("hunter2"),
        "a secret reached the journal"
    );

    // The same key for another command is a conflict; a keyless repeat no longer applies.
    let reuse = CommandOptions::default().idempotency_key("approve-1");
    assert_eq!(
        engine
            .cancel(run, reuse)
            .await
            .expect_err("conflict")
            .code(),
        "idempotency_conflict"
    );
    assert_eq!(
        engine
            .approve(run, ManualAttrs::by("ana"))
            .await
            .expect_err("not paused")
            .code(),
        "invalid_transition"
    );
}
on_each_backend!(duplicate_commands_are_idempotent_and_secrets_are_redacted);

async fn signals_travel_as_envelopes_through_apply_signal(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(gated(true)).expect("valid");
    let mut start = Signal::new(SignalKind::Start, None, engine.now());
    start.payload = json!({"workflow": "reviewed", "payload": {}})
        .as_object()
        .cloned()
        .expect("object");
    start.idempotency_key = Some("start-1".into());
    let wire = start.to_envelope().to_string();
    let parsed =
        Signal::from_envelope(&serde_json::from_str(&wire).expect("json")).expect("valid envelope");
    let run = engine.apply_signal(parsed.clone()).await.expect("starts");
    assert_eq!(
        engine.apply_signal(parsed).await.expect("same").run_id,
        run.run_id,
        "{}",
        db.name()
    );
    drain(&engine).await;
    let mut approve = Signal::new(SignalKind::Approve, Some(run.run_id), engine.now());
    approve.payload.insert("actor".into(), json!("ana"));
    let s = engine
        .apply_signal(Signal::from_envelope(&approve.to_envelope()).expect("valid"))
        .await
        .expect("approves");
    assert_eq!(s.context["review"]["decision"], json!("approved"));
}
on_each_backend!(signals_travel_as_envelopes_through_apply_signal);

fn one_slow_step() -> WorkflowSpec {
    WorkflowSpec::builder("slow_one")
        .trigger(Trigger::manual("m").integer("sleep_ms"))
        .step(Step::action("nap", "echo"))
        .build()
}

async fn cancel_while_visible_paused_between_claim_and_execution_and_during_execution(
    db: Db,
    clock: ManualClock,
) {
    let engine = db.engine(&registry(), &clock).await;
    // Visible.
    let run = engine
        .start(
            &one_slow_step(),
            None,
            json!({"sleep_ms": 0}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let s = engine
        .cancel(run.run_id, CommandOptions::default())
        .await
        .expect("cancels");
    assert_eq!(
        (s.status, s.attempts[0].status.as_str()),
        (RunStatus::Cancelled, "cancelled"),
        "{}",
        db.name()
    );
    assert!(engine.execute_next(opts("w")).await.expect("ok").is_none());
    assert_eq!(
        engine
            .cancel(run.run_id, CommandOptions::default())
            .await
            .expect_err("ended")
            .code(),
        "invalid_transition"
    );
    assert_consistent(&engine, &s).await;

    // Paused.
    let paused = paused_run(&engine, true).await;
    let s = engine
        .cancel(paused, CommandOptions::default())
        .await
        .expect("cancels");
    assert_eq!((s.status, s.manual.is_none()), (RunStatus::Cancelled, true));
    assert_consistent(&engine, &s).await;

    // Between claim and execution: the claimed attempt never runs its action.
    let run = engine
        .start(
            &one_slow_step(),
            None,
            json!({"sleep_ms": 0}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let hook = AfterClaim::default();
    let worker = {
        let engine = engine.clone();
        let o = opts("w").after_claim(hook.clone());
        tokio::spawn(async move { engine.execute_next(o).await })
    };
    hook.claimed.notified().await;
    engine
        .cancel(run.run_id, CommandOptions::default())
        .await
        .expect("cancels");
    hook.proceed.notify_one();
    let s = worker.await.expect("task").expect("ok").expect("snapshot");
    assert_eq!(s.status, RunStatus::Cancelled);
    assert!(s.attempts[0].outcome.is_none(), "the action never ran");
    let recorded = engine
        .journal(run.run_id)
        .await
        .expect("journal")
        .iter()
        .filter(|(_, f)| f.kind() == "attempt_recorded")
        .count();
    assert_eq!(recorded, 0);

    // During execution: the late completion is refused and changes nothing.
    let run = engine
        .start(
            &one_slow_step(),
            None,
            json!({"sleep_ms": 400}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    // Past the post-claim check, inside the 400 ms step.
    let worker = invoking_in_background(&engine, opts("w")).await;
    let cancelled = engine
        .cancel(run.run_id, CommandOptions::default())
        .await
        .expect("cancels");
    let err = worker.await.expect("task").expect_err("refused");
    assert!(matches!(err, EngineError::StaleClaim { .. }), "{err}");
    let after = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(after, cancelled);
    assert_consistent(&engine, &after).await;
}
on_each_backend!(cancel_while_visible_paused_between_claim_and_execution_and_during_execution);

fn irreversible() -> WorkflowSpec {
    WorkflowSpec::builder("pay_once")
        .trigger(
            Trigger::manual("m")
                .string("order_id")
                .integer("amount_cents"),
        )
        .step(
            Step::action("charge", "payments.charge")
                .irreversible()
                .output("payment"),
        )
        .step(Step::action("receipt", "echo").input(["order_id"]))
        .on_ok("charge", "receipt")
        .build()
}

async fn replay_makes_a_new_linked_run_and_guards_irreversible_steps(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let payload = json!({"order_id": "o", "amount_cents": 5});
    let source = engine
        .start(
            &irreversible(),
            None,
            payload.clone(),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    drain(&engine).await;
    let before = engine.journal(source.run_id).await.expect("journal").len();
    let err = engine
        .replay(source.run_id, ReplayOptions::default())
        .await
        .expect_err("unsafe");
    match &err {
        EngineError::UnsafeReplay { steps, .. } => {
            assert_eq!(steps, &["charge"], "{}", db.name())
        }
        other => panic!("{other}"),
    }
    let replay = engine
        .replay(
            source.run_id,
            ReplayOptions::default().allow_irreversible(true),
        )
        .await
        .expect("replays");
    assert_ne!(replay.run_id, source.run_id);
    assert_eq!(
        replay.replayed_from.as_deref(),
        Some(source.run_id.to_string().as_str())
    );
    assert_eq!(Value::Object(replay.input.clone()), payload);
    assert_eq!(
        engine.journal(source.run_id).await.expect("journal").len(),
        before,
        "the source is untouched"
    );
    drain(&engine).await;
    assert_eq!(
        engine
            .snapshot(replay.run_id)
            .await
            .expect("snapshot")
            .status,
        RunStatus::Completed
    );

    // Completed but not yet applied counts as completed.
    let source = engine
        .start(
            &irreversible(),
            None,
            payload.clone(),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let crash = opts("w").crash_after_record(true);
    assert!(engine.execute_next(crash).await.is_err());
    assert_eq!(
        engine
            .replay(source.run_id, ReplayOptions::default())
            .await
            .expect_err("unsafe")
            .code(),
        "unsafe_replay"
    );

    // A run without irreversible steps replays without an override, idempotently by key.
    let safe = engine
        .start(&gated(false), None, json!({}), StartOptions::default())
        .await
        .expect("starts");
    let keyed = || ReplayOptions::default().idempotency_key("r-1");
    let a = engine.replay(safe.run_id, keyed()).await.expect("replays");
    let b = engine.replay(safe.run_id, keyed()).await.expect("same");
    assert_eq!(a.run_id, b.run_id);
}
on_each_backend!(replay_makes_a_new_linked_run_and_guards_irreversible_steps);

fn saga(failing_refund: bool) -> WorkflowSpec {
    WorkflowSpec::builder(if failing_refund {
        "saga_partial"
    } else {
        "saga_full"
    })
    .trigger(
        Trigger::manual("m")
            .string("order_id")
            .integer("amount_cents"),
    )
    .step(
        Step::action("reserve", "echo")
            .input(["order_id"])
            .output("reservation")
            .compensate("echo"),
    )
    .step(
        Step::action("hold", "echo")
            .input(["order_id"])
            .output("hold")
            .compensate(if failing_refund {
                "payments.refund"
            } else {
                "echo"
            }),
    )
    .step(
        Step::action("notify", "echo")
            .input(["order_id"])
            .output("notice"),
    )
    .step(
        Step::action("pack", "echo")
            .input(["order_id"])
            .output("packing")
            .compensate("echo"),
    )
    .step(
        Step::action("charge", "payments.charge")
            .input_path("order_id", ["order_id"])
            .input_path("amount_cents", ["amount_cents"]),
    )
    .on_ok("reserve", "hold")
    .on_ok("hold", "notify")
    .on_ok("notify", "pack")
    .on_ok("pack", "charge")
    .build()
}

async fn compensation_undoes_completed_steps_newest_first(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let declined = json!({"order_id": "o", "amount_cents": -5});
    let run = engine
        .start(
            &saga(false),
            None,
            declined.clone(),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    assert_eq!(
        s.error.as_ref().expect("error")["code"],
        json!("invalid_amount")
    );
    let c = s.compensation.clone().expect("compensated");
    assert_eq!(
        (c.status.as_str(), c.compensated.clone()),
        (
            "compensated",
            vec!["pack".to_owned(), "hold".into(), "reserve".into()]
        )
    );
    let order: Vec<&str> = s
        .attempts
        .iter()
        .map(|a| a.step.as_str())
        .filter(|s| s.starts_with("compensate:"))
        .collect();
    assert_eq!(
        order,
        ["compensate:pack", "compensate:hold", "compensate:reserve"]
    );
    let first = s.attempts_of("compensate:pack")[0];
    assert_eq!(first.input["step"]["output"], json!({"order_id": "o"}));
    assert_eq!(first.input["step"]["input"], json!({"order_id": "o"}));
    assert_eq!(
        first.input["source"]["failure"]["code"],
        json!("invalid_amount")
    );
    assert_consistent(&engine, &s).await;

    // A failing compensation stops the saga and lists what was not undone.
    let run = engine
        .start(&saga(true), None, declined, StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed);
    let c = s.compensation.clone().expect("partial");
    assert_eq!(
        c.status,
        squid_mesh::vocab::CompensationStatus::PartiallyCompensated
    );
    assert_eq!(c.compensated, ["pack"]);
    assert_eq!(c.failed.as_deref(), Some("hold"));
    assert_eq!(c.not_compensated, ["reserve"]);
    assert!(s.attempts_of("compensate:reserve").is_empty());
    assert_consistent(&engine, &s).await;
}
on_each_backend!(compensation_undoes_completed_steps_newest_first);

fn kids() -> ChildOptions {
    ChildOptions::default().queue("kids")
}

fn parent_spec() -> WorkflowSpec {
    WorkflowSpec::builder("parent")
        .trigger(
            Trigger::manual("m")
                .string("order_id")
                .integer("amount_cents")
                .integer("succeed_on_attempt"),
        )
        .step(Step::action("fan", "payments.charge").retry(3))
        .build()
}

fn child_spec() -> WorkflowSpec {
    WorkflowSpec::builder("child")
        .trigger(Trigger::manual("m").string("parcel"))
        .step(Step::action("ship", "echo"))
        .build()
}

async fn child_runs_are_keyed_per_parent_step_across_retries(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(child_spec()).expect("valid");
    let parent = engine
        .start(
            &parent_spec(),
            None,
            json!({"order_id": "o", "amount_cents": 5, "succeed_on_attempt": 2}),
            StartOptions::default(),
        )
        .await
        .expect("starts");

    // While attempt 1 of the parent step runs, it starts a child.
    let child_from = |attempt: u32| {
        let engine = engine.clone();
        async move {
            let hook = AfterClaim::default();
            let worker = {
                let engine = engine.clone();
                let o = opts("w").after_claim(hook.clone());
                tokio::spawn(async move { engine.execute_next(o).await })
            };
            hook.claimed.notified().await;
            let s = engine.snapshot(parent.run_id).await.expect("snapshot");
            let running = s
                .attempts
                .iter()
                .find(|a| a.status == squid_mesh::vocab::AttemptStatus::Claimed)
                .unwrap_or_else(|| panic!("no running attempt in {:?}", s.attempts));
            assert_eq!(running.attempt, attempt);
            let ctx = squid_mesh::StepContext {
                run_id: parent.run_id.to_string(),
                workflow: "parent".into(),
                step: running.step.clone(),
                attempt: running.attempt,
                runnable_key: running.runnable_key.clone(),
                idempotency_key: running.runnable_key.clone(),
                step_idempotency_key: squid_mesh::StepContext::step_key(
                    &parent.run_id.to_string(),
                    &running.step,
                ),
                trace_parent: None,
            };
            let first = engine
                .start_child_run(
                    &ctx,
                    "child",
                    None,
                    json!({"parcel": "p-1"}),
                    "parcel-1",
                    kids(),
                )
                .await
                .expect("child starts");
            let again = engine
                .start_child_run(
                    &ctx,
                    "child",
                    None,
                    json!({"parcel": "p-1"}),
                    "parcel-1",
                    kids(),
                )
                .await
                .expect("same child");
            assert_eq!(first.run_id, again.run_id);
            hook.proceed.notify_one();
            worker.await.expect("task").expect("ok");
            (first.run_id, ctx)
        }
    };
    let (child1, stale_ctx) = child_from(1).await;
    // Attempt 2 (a retry of the same step) gets the same child for the same key.
    let (child2, _) = child_from(2).await;
    assert_eq!(child1, child2, "{}", db.name());

    let child = engine.snapshot(child1).await.expect("child");
    assert_eq!(
        child.parent_run_id.as_deref(),
        Some(parent.run_id.to_string().as_str())
    );
    let links = engine.children(parent.run_id).await.expect("children");
    assert_eq!(
        links,
        vec![squid_mesh::engine::ChildRun {
            step: "fan".to_owned(),
            child_key: "parcel-1".to_owned(),
            run_id: child1
        }]
    );
    let started = engine
        .journal(parent.run_id)
        .await
        .expect("journal")
        .iter()
        .filter(|(_, f)| f.kind() == "child_run_started")
        .count();
    assert_eq!(started, 1);

    // A stale step context (attempt 1 finished) and a terminal parent are refused.
    let err = engine
        .start_child_run(
            &stale_ctx,
            "child",
            None,
            json!({"parcel": "p-2"}),
            "parcel-2",
            kids(),
        )
        .await
        .expect_err("stale");
    assert!(
        matches!(
            err,
            EngineError::StaleStepContext { .. } | EngineError::InvalidTransition { .. }
        ),
        "{err}"
    );
    assert_eq!(
        engine
            .start_child_run(&stale_ctx, "child", None, json!({}), "bad key!", kids())
            .await
            .expect_err("key")
            .code(),
        "invalid_option"
    );
    drain(&engine).await;
    let err = engine
        .start_child_run(
            &stale_ctx,
            "child",
            None,
            json!({"parcel": "p-3"}),
            "parcel-3",
            kids(),
        )
        .await
        .expect_err("ended");
    assert_eq!(err.code(), "invalid_transition");
}
on_each_backend!(child_runs_are_keyed_per_parent_step_across_retries);

fn spawning(action: &str) -> WorkflowSpec {
    WorkflowSpec::builder(format!("spawn_with_{}", action.replace('.', "_")))
        .trigger(Trigger::manual("m").map("start_child"))
        .step(Step::action("spawn", action).output("spawned"))
        .build()
}

async fn an_action_starts_a_child_run_through_the_host_import_when_granted(
    db: Db,
    clock: ManualClock,
) {
    let reg = registry();
    let grant = squid_mesh::Capabilities {
        child_runs: true,
        ..squid_mesh::Capabilities::default()
    };
    reg.register(
        crate::support::file_action("echo.parent", squid_mesh_example_artifacts::ECHO.as_ref())
            .with_capabilities(grant),
    )
    .expect("registers");
    let engine = db.engine(&reg, &clock).await;
    engine.register_workflow(child_spec()).expect("valid");
    let payload = json!({"start_child": {"workflow": "child", "key": "parcel-1", "payload": {"parcel": "p-1"}}});

    let run = engine
        .start(
            &spawning("echo.parent"),
            None,
            payload.clone(),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("progress");
    let child_id = s
        .context
        .get("spawned")
        .and_then(|v| v["child"]["ok"].as_str())
        .unwrap_or_else(|| panic!("no child ({}): {:?} {:?}", db.name(), s.error, s.attempts))
        .to_owned();
    let links = engine.children(run.run_id).await.expect("children");
    assert_eq!(links.len(), 1);
    assert_eq!(
        (
            links[0].step.as_str(),
            links[0].child_key.as_str(),
            links[0].run_id.to_string()
        ),
        ("spawn", "parcel-1", child_id.clone())
    );
    let child = engine
        .snapshot(child_id.parse().expect("uuid"))
        .await
        .expect("child run");
    assert_eq!(
        (child.workflow.as_str(), child.input["parcel"].clone()),
        ("child", json!("p-1"))
    );

    // Not granted: the import refuses and nothing is started.
    let run = engine
        .start(&spawning("echo"), None, payload, StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    let refusal = s
        .context
        .get("spawned")
        .and_then(|v| v["child"]["error"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(refusal.contains("not granted"), "{refusal}");
    assert!(
        engine
            .children(run.run_id)
            .await
            .expect("children")
            .is_empty()
    );
}
on_each_backend!(an_action_starts_a_child_run_through_the_host_import_when_granted);

async fn a_compensation_follows_its_own_retry_policy(db: Db, clock: ManualClock) {
    let reg = registry();
    reg.register(crate::support::wat_action(
        "wat.boom",
        &crate::wat::step_error(),
    ))
    .expect("registers");
    let engine = db.engine(&reg, &clock).await;
    let spec = WorkflowSpec::builder("stubborn_undo")
        .trigger(
            Trigger::manual("m")
                .string("order_id")
                .integer("amount_cents"),
        )
        .step(
            Step::action("reserve", "echo")
                .input(["order_id"])
                .compensate("wat.boom")
                .compensate_retry(3),
        )
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["amount_cents"]),
        )
        .on_ok("reserve", "charge")
        .build();
    let run = engine
        .start(
            &spec,
            None,
            json!({"order_id": "o", "amount_cents": -1}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    for _ in 0..4 {
        drain(&engine).await;
        clock.advance(Duration::from_millis(250));
    }
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    let undo: Vec<(u32, &str)> = s
        .attempts_of("compensate:reserve")
        .iter()
        .map(|a| (a.attempt, a.status.as_str()))
        .collect();
    assert_eq!(
        undo,
        [(1, "failed"), (2, "failed"), (3, "failed")],
        "{}",
        db.name()
    );
    let c = s.compensation.clone().expect("compensation");
    assert_eq!(
        (c.status.as_str(), c.failed.as_deref()),
        ("partially_compensated", Some("reserve"))
    );
    assert_eq!(s.status, RunStatus::Failed);
    assert_consistent(&engine, &s).await;
}
on_each_backend!(a_compensation_follows_its_own_retry_policy);
