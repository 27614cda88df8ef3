//! The read side on SQLite and Postgres: inspection, graph, explanation, listing, deadlines
//! and actor-scoped redaction.

use std::time::Duration;

use serde_json::json;
use squid_mesh::actions::LogLevel;
use squid_mesh::clock::{ManualClock, Timestamp};
use squid_mesh::engine::{AfterClaim, CommandOptions, ExecuteOptions, ManualAttrs};
use squid_mesh::inspect::{
    DeadlineStatus, EdgeStatus, Explanation, InspectOptions, NextAction, NodeStatus, Page, Reason,
    RunFilter, Scope, ScopeTable, VisibilityError, redact,
};
use squid_mesh::spec::{DeadlineSpec, Step, Transition, Trigger, WorkflowSpec};
use squid_mesh::{Engine, EngineError, RunId, RunStatus, StartOptions};

use crate::backends::{Db, on_each_backend};
use crate::engine::{drain, opts, registry};

fn now(clock: &ManualClock) -> Timestamp {
    use squid_mesh::clock::Clock as _;
    clock.now()
}

fn deadline(within_s: u64, soon_s: u64, escalate_s: u64, label: &str) -> DeadlineSpec {
    DeadlineSpec {
        within_ms: within_s * 1000,
        due_soon_ms: Some(soon_s * 1000),
        escalate_after_ms: Some(escalate_s * 1000),
        escalation: Some(label.into()),
    }
}

/// charge (retries, deadline) -> review (approval, deadline) -> ship | refund.
fn reviewed() -> WorkflowSpec {
    WorkflowSpec::builder("reviewed_order")
        .version("v3")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .integer("amount_cents")
                .integer("succeed_on_attempt"),
        )
        .step(
            Step::action("charge", "payments.charge")
                .input(["order_id", "amount_cents", "succeed_on_attempt"])
                .retry_exponential(3, Duration::from_millis(2000), Duration::from_millis(10000))
                .deadline(deadline(60, 10, 60, "page_payments"))
                .output("payment"),
        )
        .step(Step::approval("review").output("review").deadline(deadline(
            300,
            60,
            600,
            "notify_manager",
        )))
        .step(Step::log("ship", LogLevel::Info, "shipping"))
        .step(Step::log("refund", LogLevel::Warn, "refunding"))
        .on_ok("charge", "review")
        .on_ok("review", "ship")
        .on_error("review", "refund")
        .on_ok("ship", "complete")
        .on_ok("refund", "complete")
        .build()
}

async fn explain(engine: &Engine, run: RunId) -> Explanation {
    engine
        .explain_run(run, InspectOptions::default())
        .await
        .expect("explains")
}

fn held(o: ExecuteOptions) -> (ExecuteOptions, AfterClaim) {
    let hook = AfterClaim::default();
    (o.after_claim(hook.clone()), hook)
}

async fn a_run_is_explained_at_every_stage_with_its_deadlines(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let payload = json!({"order_id": "o-7", "amount_cents": 1200, "succeed_on_attempt": 2});
    let run = engine
        .start(&reviewed(), None, payload, StartOptions::default())
        .await
        .expect("starts")
        .run_id;

    // Visible, waiting for a worker; the charge deadline is on time.
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::AttemptVisible, "{}", db.name());
    assert_eq!(e.step.as_deref(), Some("charge"));
    assert_eq!(
        e.next_actions,
        [NextAction::WaitForWorker, NextAction::CancelRun]
    );
    assert_eq!(e.details["deadline_status"], "on_time");
    assert_eq!(e.details["latest_command"], "start");
    let i = engine
        .inspect_run(run, InspectOptions::default())
        .await
        .expect("inspects");
    assert_eq!(i.status, RunStatus::Running);
    assert_eq!(i.version.as_deref(), Some("v3"));
    let d = i.deadline.as_ref().expect("deadline");
    assert_eq!(
        (d.step.as_str(), d.status),
        ("charge", DeadlineStatus::OnTime)
    );
    assert_eq!(d.due_at, now(&clock).plus_millis(60_000));
    assert_eq!(d.escalation, "page_payments");
    assert_eq!(i.commands.len(), 1);
    assert_eq!(i.commands[0].command, squid_mesh::vocab::CommandKind::Start);

    // Claimed and running.
    let (o, hook) = held(opts("worker-a"));
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.execute_next(o).await })
    };
    hook.claimed.notified().await;
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::AttemptClaimed);
    assert_eq!(
        e.next_actions,
        [NextAction::WaitForAttemptCompletion, NextAction::CancelRun]
    );
    assert_eq!(e.details["owners"], json!(["worker-a"]));
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.node("charge").unwrap().status, NodeStatus::Running);
    assert_eq!(g.current_node_ids, ["charge"]);

    // The lease runs out while the worker is stalled: an expired claim.
    clock.advance(Duration::from_secs(301));
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::ExpiredClaim);
    assert_eq!(e.next_actions[0], NextAction::RecoverExpiredClaim);
    // 301 s after planning, the 60 s deadline has escalated (60 s after due).
    assert_eq!(e.details["deadline_status"], "escalated");
    assert!(
        e.next_actions
            .contains(&NextAction::ApplyHostEscalationPolicy)
    );
    hook.proceed.notify_one();
    let late = task.await.expect("joins");
    assert!(
        matches!(late, Err(EngineError::StaleClaim { .. })),
        "{late:?}"
    );

    // Redelivered: attempt 1 fails (retryable), attempt 2 is scheduled for later.
    engine.execute_next(opts("worker-b")).await.expect("ok");
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::AttemptScheduledForLater);
    assert_eq!(e.details["retry"], true);
    assert_eq!(
        e.next_actions,
        [NextAction::WaitUntilAttemptVisible, NextAction::CancelRun]
    );
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.node("charge").unwrap().status, NodeStatus::Retrying);
    assert_eq!(g.node("charge").unwrap().attempt_count, 2);
    // The retry's deadline starts when it becomes visible.
    let i = engine
        .inspect_run(run, InspectOptions::default())
        .await
        .expect("inspects");
    let retry = i.latest_attempt("charge").unwrap();
    assert_eq!(retry.attempt, 2);
    assert_eq!(
        retry.deadline.as_ref().unwrap().started_at,
        retry.visible_at
    );
    assert_eq!(
        i.deadline.as_ref().map(|d| d.status),
        Some(DeadlineStatus::OnTime)
    );
    assert_eq!(i.next_visible_at, Some(retry.visible_at));

    // Due soon, before the retry is even visible? No: visible first.
    clock.advance(Duration::from_secs(11));
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::AttemptVisible);
    drain(&engine).await;

    // Paused at the approval gate.
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::ManualInterventionRequired);
    assert_eq!(e.step.as_deref(), Some("review"));
    assert_eq!(
        e.next_actions,
        [NextAction::ResolveManualStep, NextAction::CancelRun]
    );
    assert_eq!(e.details["commands"], json!(["approve", "reject"]));
    assert_eq!(e.details["deadline_status"], "on_time");
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.current_node_ids, ["review"]);
    assert_eq!(g.node("review").unwrap().status, NodeStatus::Paused);
    assert_eq!(g.node("charge").unwrap().status, NodeStatus::Completed);
    assert_eq!(g.node("ship").unwrap().status, NodeStatus::Waiting);
    assert_eq!(
        g.edge("charge:ok:review").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.edge("review:ok:ship").unwrap().status,
        EdgeStatus::Pending
    );

    // The gate's deadline moves with the clock: due soon, overdue, escalated.
    let page = |engine: Engine| async move {
        engine
            .list_runs(&RunFilter::default(), &Page::default())
            .await
            .expect("lists")
    };
    clock.advance(Duration::from_secs(250));
    let e = explain(&engine, run).await;
    assert_eq!(e.details["deadline_status"], "due_soon");
    assert!(e.next_actions.contains(&NextAction::InspectDeadlinePolicy));
    let listed = page(engine.clone()).await;
    assert_eq!(
        listed.runs[0].deadline.as_ref().map(|d| d.status),
        Some(DeadlineStatus::DueSoon)
    );
    clock.advance(Duration::from_secs(60));
    let e = explain(&engine, run).await;
    assert_eq!(e.details["deadline_status"], "overdue");
    assert_eq!(e.details["deadline_escalation"], "notify_manager");
    assert!(
        e.next_actions
            .contains(&NextAction::ApplyHostEscalationPolicy)
    );
    clock.advance(Duration::from_secs(600));
    let i = engine
        .inspect_run(run, InspectOptions::default())
        .await
        .expect("inspects");
    let d = i.manual.as_ref().unwrap().deadline.as_ref().unwrap();
    assert_eq!(d.status, DeadlineStatus::Escalated);
    assert!(d.overdue && d.remaining_ms < 0);
    let listed = page(engine.clone()).await;
    assert_eq!(
        listed.runs[0].deadline.as_ref().map(|d| d.status),
        Some(DeadlineStatus::Escalated)
    );
    assert_eq!(listed.runs[0].current_steps, ["review"]);
    // Reads can evaluate at another instant without moving the clock.
    let earlier = engine
        .inspect_run(
            run,
            InspectOptions::default().now(i.manual.as_ref().unwrap().paused_at),
        )
        .await
        .expect("inspects");
    assert_eq!(
        earlier.deadline.map(|d| d.status),
        Some(DeadlineStatus::OnTime)
    );

    // Approved: the run completes; the graph shows the route taken.
    engine
        .approve(run, ManualAttrs::by("ana"))
        .await
        .expect("approves");
    drain(&engine).await;
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::Terminal);
    assert_eq!(
        e.next_actions,
        [NextAction::InspectTerminalRun, NextAction::Replay]
    );
    assert_eq!(
        e.evidence["command_counts"],
        json!({"approve": 1, "start": 1})
    );
    assert_eq!(
        e.evidence["attempt_counts"],
        json!({"failed": 1, "succeeded": 2, "suspended": 1})
    );
    let g = engine
        .inspect_run_graph(run, InspectOptions::with_history())
        .await
        .expect("graph");
    assert!(g.terminal && g.current_node_ids.is_empty());
    assert_eq!(
        g.edge("review:ok:ship").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.edge("review:error:refund").unwrap().status,
        EdgeStatus::Skipped
    );
    assert_eq!(
        g.edge("ship:ok:complete").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.edge("refund:ok:complete").unwrap().status,
        EdgeStatus::Skipped
    );
    assert_eq!(g.node("refund").unwrap().status, NodeStatus::Skipped);
    let charge = g.node("charge").unwrap();
    assert_eq!(charge.attempts.len(), 2);
    assert_eq!(charge.output.as_ref().unwrap()["order_id"], "o-7");
    assert_eq!(charge.error.as_ref().unwrap().code, "gateway_unavailable");
    assert_eq!(charge.recovery.retry.as_ref().unwrap().max_attempts, 3);
    // Without history, node details stay out.
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    let charge = g.node("charge").unwrap();
    assert!(charge.attempts.is_empty() && charge.output.is_none() && charge.error.is_none());
    // The stable JSON form carries ids and statuses.
    let json = g.to_json();
    assert_eq!(json["edges"][0]["id"], "charge:ok:review");
    assert_eq!(json["nodes"][0]["status"], "completed");

    let i = engine
        .inspect_run(run, InspectOptions::with_history())
        .await
        .expect("inspects");
    assert!(i.terminal && i.deadline.is_none() && i.manual.is_none());
    assert_eq!(
        i.context.as_ref().unwrap()["review"]["decision"],
        "approved"
    );
    assert!(i.history.as_ref().unwrap().len() >= 10);
    assert_eq!(
        i.decisions
            .iter()
            .map(|d| d.step.as_str())
            .collect::<Vec<_>>(),
        ["charge", "review", "ship"]
    );
    // Never a claim token or its hash.
    let text = serde_json::to_string(&i).unwrap();
    assert!(!text.contains("token"), "{text}");
}
on_each_backend!(a_run_is_explained_at_every_stage_with_its_deadlines);

async fn a_recorded_but_unapplied_outcome_and_a_pause_are_explained(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("pausing")
        .trigger(Trigger::manual("m"))
        .step(Step::action("prepare", "echo").output("prepared"))
        .step(Step::pause("hold"))
        .on_ok("prepare", "hold")
        .build();
    let run = engine
        .start(&spec, None, json!({}), StartOptions::default())
        .await
        .expect("starts")
        .run_id;
    let crash = opts("doomed").crash_after_record(true);
    engine.execute_next(crash).await.expect_err("crashes");
    let e = explain(&engine, run).await;
    assert_eq!(
        e.reason,
        Reason::CompletedResultPendingApply,
        "{}",
        db.name()
    );
    assert_eq!(
        e.next_actions,
        [NextAction::ApplyPendingResult, NextAction::CancelRun]
    );
    assert_eq!(e.details["pending_result_count"], 1);
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.node("prepare").unwrap().status, NodeStatus::Running);
    drain(&engine).await;
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::ManualInterventionRequired);
    assert_eq!(e.details["commands"], json!(["resume"]));
    assert!(e.summary.contains("paused at step hold"), "{}", e.summary);
    // Resuming a pause with no ok route completes the run.
    engine
        .resume(run, ManualAttrs::default())
        .await
        .expect("resumes");
    assert_eq!(explain(&engine, run).await.reason, Reason::Terminal);
}
on_each_backend!(a_recorded_but_unapplied_outcome_and_a_pause_are_explained);

fn fan(fail_b: bool) -> WorkflowSpec {
    WorkflowSpec::builder(if fail_b { "fan_fail" } else { "fan" })
        .trigger(Trigger::manual("m"))
        .step(Step::action("a", "echo").output("a"))
        .step(Step::action("b", if fail_b { "payments.charge" } else { "echo" }).output("b"))
        .step(Step::action("c", "echo").output("c"))
        .step(
            Step::action("join", "echo")
                .after(["a", "b", "c"])
                .output("joined"),
        )
        .build()
}

async fn dependency_joins_wait_and_block_in_the_graph(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = engine
        .start(&fan(false), None, json!({}), StartOptions::default())
        .await
        .expect("starts")
        .run_id;
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::AttemptVisible, "{}", db.name());
    assert_eq!(e.details["visible_attempt_count"], 3);
    engine.execute_next(opts("w")).await.expect("a");
    engine.execute_next(opts("w")).await.expect("b");
    // c is claimed and held: the join waits for it.
    let (o, hook) = held(opts("w-c"));
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.execute_next(o).await })
    };
    hook.claimed.notified().await;
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::WaitingForDependencies);
    assert_eq!(e.step.as_deref(), Some("join"));
    assert_eq!(e.details["waiting_steps"], json!({"join": ["c"]}));
    assert_eq!(
        e.next_actions,
        [NextAction::WaitForAttemptCompletion, NextAction::CancelRun]
    );
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(
        g.edge("a:dependency:join").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.edge("c:dependency:join").unwrap().status,
        EdgeStatus::Pending
    );
    assert_eq!(g.node("join").unwrap().status, NodeStatus::Waiting);
    assert_eq!(g.current_node_ids, ["c"]);
    hook.proceed.notify_one();
    task.await.expect("joins").expect("c runs");
    drain(&engine).await;
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.status, RunStatus::Completed);
    assert!(g.edges.iter().all(|e| e.status == EdgeStatus::Selected));

    // b fails for good: its dependency edge is blocked and the join never runs.
    let run = engine
        .start(&fan(true), None, json!({}), StartOptions::default())
        .await
        .expect("starts")
        .run_id;
    drain(&engine).await;
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.status, RunStatus::Failed);
    assert_eq!(g.node("b").unwrap().status, NodeStatus::Failed);
    assert_eq!(
        g.edge("b:dependency:join").unwrap().status,
        EdgeStatus::Blocked
    );
    assert_eq!(g.node("join").unwrap().status, NodeStatus::Skipped);
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::Terminal);
    assert_eq!(e.step.as_deref(), Some("b"));
}
on_each_backend!(dependency_joins_wait_and_block_in_the_graph);

async fn conditional_and_error_routes_select_one_edge(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("routed")
        .trigger(
            Trigger::manual("m")
                .integer("amount")
                .boolean("decline")
                .string("order"),
        )
        .step(Step::action("score", "echo").output("scored"))
        .step(Step::log("big", LogLevel::Info, "big"))
        .step(Step::log("small", LogLevel::Info, "small"))
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["scored", "order"])
                .input_path("amount_cents", ["amount"])
                .input_path("decline", ["decline"]),
        )
        .step(Step::log("notify", LogLevel::Warn, "declined"))
        .transition(Transition::on_ok("score", "big").when_greater_than(["amount"], 1000.0))
        .on_ok("score", "small")
        .on_ok("big", "charge")
        .on_ok("small", "charge")
        .on_ok("charge", "complete")
        .transition(Transition::on_error("charge", "notify").recovery("notify_customer"))
        .on_ok("notify", "complete")
        .build();
    let run = |amount: i64, decline: bool| {
        let engine = engine.clone();
        let spec = spec.clone();
        async move {
            let id = engine
                .start(
                    &spec,
                    None,
                    json!({"amount": amount, "decline": decline, "order": "o"}),
                    StartOptions::default(),
                )
                .await
                .expect("starts")
                .run_id;
            drain(&engine).await;
            engine
                .inspect_run_graph(id, InspectOptions::default())
                .await
                .expect("graph")
        }
    };
    let g = run(5000, false).await;
    assert_eq!(g.status, RunStatus::Completed, "{}", db.name());
    assert_eq!(
        g.edge("score:ok:big:condition:0").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.edge("score:ok:small").unwrap().status,
        EdgeStatus::Skipped
    );
    assert_eq!(g.node("small").unwrap().status, NodeStatus::Skipped);
    assert_eq!(
        g.edge("charge:ok:complete").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.edge("charge:error:notify").unwrap().status,
        EdgeStatus::Skipped
    );

    let g = run(10, true).await;
    assert_eq!(g.status, RunStatus::Completed);
    assert_eq!(
        g.edge("score:ok:big:condition:0").unwrap().status,
        EdgeStatus::Skipped
    );
    assert_eq!(
        g.edge("score:ok:small").unwrap().status,
        EdgeStatus::Selected
    );
    assert_eq!(g.node("charge").unwrap().status, NodeStatus::Failed);
    let err = g.edge("charge:error:notify").unwrap();
    assert_eq!(err.status, EdgeStatus::Selected);
    assert_eq!(err.recovery.as_deref(), Some("notify_customer"));
    assert_eq!(
        g.edge("charge:ok:complete").unwrap().status,
        EdgeStatus::Skipped
    );
    assert_eq!(g.node("notify").unwrap().status, NodeStatus::Completed);
}
on_each_backend!(conditional_and_error_routes_select_one_edge);

async fn compensation_is_explained_and_drawn(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("saga")
        .trigger(Trigger::manual("m").string("order_id"))
        .step(
            Step::action("reserve", "echo")
                .input(["order_id"])
                .output("reservation")
                .compensate("echo"),
        )
        // No amount: the charge fails for good with invalid input.
        .step(Step::action("charge", "payments.charge").input(["order_id"]))
        .on_ok("reserve", "charge")
        .on_ok("charge", "complete")
        .build();
    let run = engine
        .start(
            &spec,
            None,
            json!({"order_id": "o-9"}),
            StartOptions::default(),
        )
        .await
        .expect("starts")
        .run_id;
    engine.execute_next(opts("w")).await.expect("reserve");
    engine.execute_next(opts("w")).await.expect("charge fails");
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::Compensating, "{}", db.name());
    assert_eq!(e.step.as_deref(), Some("reserve"));
    assert_eq!(
        e.next_actions,
        [NextAction::WaitForWorker, NextAction::CancelRun]
    );
    assert_eq!(e.details["pending"], json!(["reserve"]));
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(
        g.edge("reserve:compensation:compensate:reserve")
            .unwrap()
            .status,
        EdgeStatus::Selected
    );
    assert_eq!(
        g.node("compensate:reserve").unwrap().status,
        NodeStatus::Pending
    );
    assert_eq!(g.current_node_ids, ["compensate:reserve"]);
    drain(&engine).await;
    let g = engine
        .inspect_run_graph(run, InspectOptions::default())
        .await
        .expect("graph");
    assert_eq!(g.status, RunStatus::Failed);
    assert_eq!(g.node("reserve").unwrap().status, NodeStatus::Compensated);
    assert_eq!(
        g.node("compensate:reserve").unwrap().status,
        NodeStatus::Completed
    );
    assert_eq!(g.node("charge").unwrap().status, NodeStatus::Failed);
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::Terminal);
    assert_eq!(e.details["compensation_status"], "compensated");
    assert!(
        e.summary.contains("compensation ended compensated"),
        "{}",
        e.summary
    );
}
on_each_backend!(compensation_is_explained_and_drawn);

async fn a_run_nothing_can_move_is_explained_as_stalled(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = engine
        .start(&fan(false), None, json!({}), StartOptions::default())
        .await
        .expect("starts")
        .run_id;
    // Someone settled the attempts by hand; the run row still says running.
    db.execute("UPDATE attempts SET status = 'cancelled', due_at = NULL")
        .await;
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::Stalled, "{}", db.name());
    assert_eq!(
        e.next_actions,
        [
            NextAction::InspectHistory,
            NextAction::Replay,
            NextAction::CancelRun
        ]
    );
    assert_eq!(e.details["attempt_count"], 3);
    // Cancelling is the way out.
    engine
        .cancel(run, CommandOptions::default())
        .await
        .expect("cancels");
    let e = explain(&engine, run).await;
    assert_eq!(e.reason, Reason::Terminal);
    assert!(e.summary.contains("cancelled"));
}
on_each_backend!(a_run_nothing_can_move_is_explained_as_stalled);

const SECRET: &str = "SECRET-4242-VALUE";

async fn redaction_hides_payloads_from_external_and_operator_scopes(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("private")
        .trigger(
            Trigger::manual("m")
                .string("order_id")
                .integer("amount_cents")
                .boolean("decline"),
        )
        .step(Step::action("copy", "echo").output("copied"))
        .step(Step::approval("review").output("review"))
        .step(Step::action("charge", "payments.charge").input([
            "order_id",
            "amount_cents",
            "decline",
        ]))
        .step(Step::log("rejected", LogLevel::Info, "rejected"))
        .on_ok("copy", "review")
        .on_ok("review", "charge")
        .on_error("review", "rejected")
        .on_ok("charge", "complete")
        .build();
    let run = engine
        .start(
            &spec,
            None,
            json!({"order_id": SECRET, "amount_cents": 100, "decline": true}),
            StartOptions::default().idempotency_key(format!("key-{SECRET}")),
        )
        .await
        .expect("starts")
        .run_id;
    drain(&engine).await;
    let mut attrs = ManualAttrs::by(format!("ana-{SECRET}"));
    attrs.comment = Some(format!("looks fine {SECRET}"));
    attrs.metadata.insert("ticket".into(), json!(SECRET));
    engine.approve(run, attrs).await.expect("approves");
    drain(&engine).await;

    let history = InspectOptions::with_history();
    let insp = engine
        .inspect_run(run, history.clone())
        .await
        .expect("inspects");
    assert_eq!(insp.status, RunStatus::Failed, "{}", db.name());
    let graph = engine
        .inspect_run_graph(run, history.clone())
        .await
        .expect("graph");
    let expl = engine.explain_run(run, history).await.expect("explains");
    let listing = engine
        .list_runs(&RunFilter::default(), &Page::default())
        .await
        .expect("lists");

    let views = |scope: Scope| {
        [
            serde_json::to_string(&redact(insp.clone(), "x", &scope).unwrap()).unwrap(),
            serde_json::to_string(&redact(graph.clone(), "x", &scope).unwrap()).unwrap(),
            serde_json::to_string(&redact(expl.clone(), "x", &scope).unwrap()).unwrap(),
            serde_json::to_string(&redact(listing.clone(), "x", &scope).unwrap()).unwrap(),
        ]
    };
    // The auditor sees everything, payloads included.
    let auditor = views(Scope::Auditor);
    assert!(auditor[0].contains(SECRET) && auditor[1].contains(SECRET));
    assert!(auditor[0].contains("card_declined"));
    for scope in [Scope::External, Scope::Operator] {
        for (i, text) in views(scope).iter().enumerate() {
            assert!(!text.contains(SECRET), "{scope:?} view {i} leaks: {text}");
        }
    }
    let operator = views(Scope::Operator);
    // Operators see errors, attempt timing and owners, and command types.
    assert!(operator[0].contains("card_declined"));
    assert!(operator[0].contains("\"owner\":\"w\""));
    assert!(operator[0].contains("\"command\":\"approve\""));
    let external = views(Scope::External);
    // External actors see status and shape only.
    assert!(!external[0].contains("card_declined"));
    assert!(!external[0].contains("\"owner\":\"w\""));
    assert!(!external[0].contains("approve\""));
    assert!(external[0].contains("\"status\":\"failed\""));
    assert!(external[1].contains("\"id\":\"review\""));

    // A policy maps actors to scopes; a bad scope or an unknown actor is an error.
    let policy = ScopeTable::new()
        .actor("ana", "auditor")
        .actor("ops", "operator")
        .actor("eve", "superuser");
    assert_eq!(redact(insp.clone(), "ana", &policy).unwrap(), insp);
    let ops = redact(insp.clone(), "ops", &policy).unwrap();
    assert!(ops.input.is_none() && ops.context.is_none() && ops.history.is_none());
    let err = redact(insp.clone(), "eve", &policy).unwrap_err();
    assert_eq!(err, VisibilityError::InvalidScope("superuser".into()));
    assert_eq!(err.code(), "invalid_visibility_scope");
    let err = redact(insp.clone(), "mallory", &policy).unwrap_err();
    assert_eq!(err.code(), "unknown_actor");
    let by_fn = |actor: &str| -> Result<Scope, VisibilityError> {
        actor.strip_prefix("role:").unwrap_or("none").parse()
    };
    assert!(redact(expl.clone(), "role:operator", &by_fn).is_ok());
    assert!(redact(expl, "role:root", &by_fn).is_err());
}
on_each_backend!(redaction_hides_payloads_from_external_and_operator_scopes);

async fn listing_filters_and_pages_newest_first(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let pausing = WorkflowSpec::builder("pausing")
        .trigger(Trigger::manual("m"))
        .step(Step::pause("hold"))
        .build();
    let quick = WorkflowSpec::builder("quick")
        .trigger(Trigger::manual("go"))
        .step(Step::log("say", LogLevel::Info, "hi"))
        .build();
    let t0 = now(&clock);
    let mut started = Vec::new();
    for i in 0..7 {
        let (spec, queue) = if i % 2 == 0 {
            (&quick, "fast")
        } else {
            (&pausing, "slow")
        };
        let id = engine
            .start(spec, None, json!({}), StartOptions::default().queue(queue))
            .await
            .expect("starts")
            .run_id;
        started.push(id);
        clock.advance(Duration::from_secs(10));
    }
    for q in ["fast", "slow"] {
        while engine
            .execute_next(opts("w").queue(q))
            .await
            .expect("ok")
            .is_some()
        {}
    }
    let all = engine
        .list_runs(&RunFilter::default(), &Page::first(100))
        .await
        .expect("lists");
    let ids: Vec<String> = all.runs.iter().map(|r| r.run_id.clone()).collect();
    let newest_first: Vec<String> = started.iter().rev().map(ToString::to_string).collect();
    assert_eq!(ids, newest_first, "{}", db.name());
    assert!(all.next_page.is_none());
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("\"input\"") && !text.contains("\"context\""));

    // Keyset pages of 3: no duplicates, nothing missed.
    let mut seen = Vec::new();
    let mut page = Page::first(3);
    loop {
        let p = engine
            .list_runs(&RunFilter::default(), &page)
            .await
            .expect("page");
        assert!(p.runs.len() <= 3);
        seen.extend(p.runs.iter().map(|r| r.run_id.clone()));
        match p.next_page {
            Some(t) => page = Page::after(3, t),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    let count = |filter: RunFilter| {
        let engine = engine.clone();
        async move {
            engine
                .list_runs(&filter, &Page::first(100))
                .await
                .expect("lists")
                .runs
        }
    };
    let quick_runs = count(RunFilter::default().workflow("quick")).await;
    assert_eq!(quick_runs.len(), 4);
    assert!(
        quick_runs
            .iter()
            .all(|r| r.status == RunStatus::Completed && r.terminal)
    );
    let paused = count(RunFilter::default().status(RunStatus::Paused)).await;
    assert_eq!(paused.len(), 3);
    assert!(paused.iter().all(|r| r.current_steps == ["hold"]));
    let both = count(
        RunFilter::default()
            .status(RunStatus::Paused)
            .status(RunStatus::Completed),
    )
    .await;
    assert_eq!(both.len(), 7);
    assert_eq!(count(RunFilter::default().queue("slow")).await.len(), 3);
    assert_eq!(
        count(
            RunFilter::default()
                .workflow("quick")
                .status(RunStatus::Paused)
        )
        .await
        .len(),
        0
    );
    // Time range [t0 + 20 s, t0 + 50 s): runs 2, 3 and 4.
    let window = count(
        RunFilter::default()
            .created_between(Some(t0.plus_millis(20_000)), Some(t0.plus_millis(50_000))),
    )
    .await;
    let window: Vec<String> = window.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(
        window,
        [started[4], started[3], started[2]].map(|r| r.to_string())
    );
    // Text search over workflow, trigger, step and run id (case-insensitive).
    assert_eq!(count(RunFilter::default().search("PAUS")).await.len(), 3);
    assert_eq!(count(RunFilter::default().search("hold")).await.len(), 3);
    assert_eq!(count(RunFilter::default().search("go")).await.len(), 4);
    let prefix = started[5].to_string()[..13].to_owned();
    let found = count(RunFilter::default().search(prefix)).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].run_id, started[5].to_string());
    assert_eq!(count(RunFilter::default().search("100%_")).await.len(), 0);

    // Bad filters and pages are structured errors.
    let bad = |filter: RunFilter, page: Page| {
        let engine = engine.clone();
        async move {
            match engine.list_runs(&filter, &page).await {
                Err(EngineError::InvalidOption(problems)) => problems,
                other => panic!("expected invalid option, got {other:?}"),
            }
        }
    };
    let p = bad(RunFilter::default(), Page::after(10, "garbage")).await;
    assert_eq!(
        (p[0].path.as_str(), p[0].code.as_str()),
        ("page.after", "invalid_page")
    );
    let p = bad(RunFilter::default(), Page::after(10, "12~not-a-uuid")).await;
    assert_eq!(p[0].path, "page.after");
    let p = bad(RunFilter::default(), Page::first(0)).await;
    assert_eq!(p[0].path, "page.limit");
    let p = bad(RunFilter::default(), Page::first(5000)).await;
    assert_eq!(p[0].path, "page.limit");
    let p = bad(
        RunFilter::default()
            .workflow(" ")
            .search("")
            .created_between(Some(t0), Some(t0)),
        Page::default(),
    )
    .await;
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["filter.workflow", "filter.search", "filter.created_before"]
    );
}
on_each_backend!(listing_filters_and_pages_newest_first);

async fn unknown_and_malformed_run_ids_are_structured_errors(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let o = InspectOptions::default;
    let missing = RunId::random();
    for err in [
        engine.inspect_run(missing, o()).await.unwrap_err(),
        engine.inspect_run_graph(missing, o()).await.unwrap_err(),
        engine.explain_run(missing, o()).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), "run_not_found", "{}", db.name());
    }
    for err in [
        engine.inspect_run("not-a-run", o()).await.unwrap_err(),
        engine.inspect_run_graph("1234", o()).await.unwrap_err(),
        engine
            .explain_run(String::from("x'; DROP TABLE runs"), o())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), "invalid_run_id");
    }
    // Text ids work.
    let run = engine
        .start(&fan(false), None, json!({}), StartOptions::default())
        .await
        .expect("starts")
        .run_id;
    let text = run.to_string();
    assert_eq!(
        engine
            .inspect_run(text.as_str(), o())
            .await
            .expect("inspects")
            .run_id,
        run
    );
}
on_each_backend!(unknown_and_malformed_run_ids_are_structured_errors);
