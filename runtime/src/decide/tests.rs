//! Table tests of the decision core, without a database: every route, retry, backoff,
//! condition, dependency join, gate, cancel, replay guard, compensation order and the
//! crash-recovery cases, each as (state, spec, event) -> expected decision.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;
use crate::spec::{Backoff, Step, Transition, Trigger, WorkflowSpec};
use crate::vocab::{LogLevel, StepError, StepErrorKind};

const RUN: &str = "00000000-0000-0000-0000-000000000001";
const NOW: Timestamp = Timestamp(1_000_000_000);

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn fresh(input: Value) -> RunState {
    RunState {
        run_id: RUN.into(),
        status: RunStatus::Idle,
        input: obj(input),
        context: Map::new(),
        steps: BTreeMap::new(),
        manual: None,
        error: None,
        compensation: None,
        completed: Vec::new(),
        dynamic: DynamicState::default(),
        work_outputs: Vec::new(),
    }
}

fn receipt(command: CommandKind) -> CommandReceipt {
    CommandReceipt {
        signal_id: "sig".into(),
        command,
        idempotency_key: None,
        actor: None,
        comment: None,
        payload: Map::new(),
        metadata: Map::new(),
        occurred_at: NOW,
    }
}

fn started() -> Event {
    Event::Started {
        receipt: receipt(CommandKind::Start),
        started: Box::new(Fact::RunStarted {
            workflow: "w".into(),
            version: None,
            fingerprint: "f".into(),
            definition_hash: "h".into(),
            trigger: "manual".into(),
            queue: "default".into(),
            input: Map::new(),
            idempotency_key: None,
            replayed_from: None,
            parent: None,
            context: Map::new(),
        }),
    }
}

fn ok(output: Value) -> StepOutcome {
    StepOutcome::Succeeded {
        output: obj(output),
        continue_after_ms: None,
    }
}

fn failed(retryable: bool) -> StepOutcome {
    StepOutcome::Failed(StepError {
        kind: StepErrorKind::Action,
        code: "boom".into(),
        message: "it broke".into(),
        retryable,
        retry_after_ms: None,
        details: None,
    })
}

fn recorded(step: &str, attempt: u32, outcome: StepOutcome) -> Event {
    Event::Recorded {
        attempt: AttemptRef {
            runnable_key: format!("{RUN}:{step}:{attempt}"),
            step: step.into(),
            attempt,
            input: obj(json!({"kept": true})),
            node: None,
        },
        outcome,
    }
}

fn command(kind: CommandKind, command: Command) -> Event {
    Event::Command {
        receipt: receipt(kind),
        command,
    }
}

fn resolve(action: GateAction) -> Command {
    Command::Resolve {
        action,
        result: obj(json!({"by": "ana"})),
    }
}

/// Applies events in order, as the engine would, returning every decision.
fn run(spec: Option<&WorkflowSpec>, input: Value, events: Vec<Event>) -> Vec<Decision> {
    let mut state = fresh(input);
    let mut out = Vec::new();
    for e in events {
        let d = decide(&state, spec, e, NOW).expect("decides");
        state = d.state.clone();
        out.push(d);
    }
    out
}

fn planned(d: &Decision) -> Vec<(String, u32, i64)> {
    d.planned
        .iter()
        .map(|p| (p.step.clone(), p.attempt, p.visible_at.0 - NOW.0))
        .collect()
}

fn kinds(d: &Decision) -> Vec<&'static str> {
    d.facts.iter().map(Fact::kind).collect()
}

fn chain() -> WorkflowSpec {
    WorkflowSpec::builder("chain")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("a", "x.a"))
        .step(Step::action("b", "x.b"))
        .step(Step::action("recover", "x.r"))
        .on_ok("a", "b")
        .on_error("a", "recover")
        .build()
}

#[test]
fn start_plans_the_entry_step_or_every_root() {
    let transitions = chain();
    let deps = WorkflowSpec::builder("deps")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("a", "x.a"))
        .step(Step::action("b", "x.b"))
        .step(Step::action("join", "x.j").after(["a", "b"]))
        .build();
    let table: [(&WorkflowSpec, &[&str]); 2] = [(&transitions, &["a"]), (&deps, &["a", "b"])];
    for (spec, roots) in table {
        let d = &run(Some(spec), json!({}), vec![started()])[0];
        let got: Vec<&str> = d.planned.iter().map(|p| p.step.as_str()).collect();
        assert_eq!(got, roots, "{}", spec.name);
        assert_eq!(d.state.status, RunStatus::Running);
        assert_eq!(
            kinds(d),
            ["command_received", "run_started", "runnables_planned"]
        );
        assert_eq!(d.planned_at, 2);
        assert!(
            d.planned
                .iter()
                .all(|p| p.attempt == 1 && p.runnable_key == format!("{RUN}:{}:1", p.step))
        );
    }
}

#[test]
fn routes_on_success_and_error() {
    let spec = chain();
    // (outcome of a, expected next planned, expected status after)
    let table = [
        (ok(json!({"v": 1})), Some("b"), RunStatus::Running),
        (failed(false), Some("recover"), RunStatus::Running),
        (failed(true), Some("recover"), RunStatus::Running),
    ];
    for (outcome, next, status) in table {
        let ds = run(
            Some(&spec),
            json!({}),
            vec![started(), recorded("a", 1, outcome.clone())],
        );
        let d = &ds[1];
        assert_eq!(
            d.planned.first().map(|p| p.step.as_str()),
            next,
            "{outcome:?}"
        );
        assert_eq!(d.state.status, status);
        let route = d.facts.iter().find_map(|f| match f {
            Fact::RunnableApplied { route, .. } => route.clone(),
            _ => None,
        });
        assert_eq!(route.and_then(|r| r.to).as_deref(), next);
    }
    // b has no ok route: the run completes, and nothing more is planned.
    let ds = run(
        Some(&spec),
        json!({}),
        vec![
            started(),
            recorded("a", 1, ok(json!({}))),
            recorded("b", 1, ok(json!({"done": true}))),
        ],
    );
    let last = &ds[2];
    assert_eq!(last.state.status, RunStatus::Completed);
    assert!(last.planned.is_empty());
    assert!(last.close_open_attempts);
    assert_eq!(last.state.context.get("done"), Some(&json!(true)));
    assert_eq!(kinds(last), ["runnable_applied", "run_terminal"]);
}

#[test]
fn a_failure_without_a_route_fails_the_run_with_its_error() {
    let spec = WorkflowSpec::builder("one")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("a", "x.a"))
        .build();
    let d = &run(
        Some(&spec),
        json!({}),
        vec![started(), recorded("a", 1, failed(false))],
    )[1];
    assert_eq!(d.state.status, RunStatus::Failed);
    assert_eq!(d.attempt_status, Some(AttemptStatus::Failed));
    assert_eq!(d.state.steps.get("a"), Some(&StepState::Failed));
    let error = d.state.error.as_ref().expect("error");
    assert_eq!(error["code"], "boom");
    assert_eq!(error["step"], "a");
    assert_eq!(error["attempt"], 1);
    assert!(matches!(
        d.facts.last(),
        Some(Fact::RunTerminal {
            status: RunStatus::Failed,
            ..
        })
    ));
}

#[test]
fn retries_follow_the_policy_and_reuse_the_input() {
    let with = |b: crate::spec::StepBuilder| {
        WorkflowSpec::builder("r")
            .trigger(Trigger::manual("manual"))
            .step(b)
            .build()
    };
    let after = |ms: u64| {
        StepOutcome::Failed(StepError {
            retry_after_ms: Some(ms),
            ..match failed(true) {
                StepOutcome::Failed(e) => e,
                _ => unreachable!(),
            }
        })
    };
    // (policy, attempt that failed, outcome, expected retry: (attempt, delay ms))
    type Case = (WorkflowSpec, u32, StepOutcome, Option<(u32, i64)>);
    let table: Vec<Case> = vec![
        (with(Step::action("a", "x.a")), 1, failed(true), None),
        (
            with(Step::action("a", "x.a").retry(3)),
            1,
            failed(true),
            Some((2, 0)),
        ),
        (
            with(Step::action("a", "x.a").retry(3)),
            3,
            failed(true),
            None,
        ),
        (
            with(Step::action("a", "x.a").retry(3)),
            1,
            failed(false),
            None,
        ),
        (
            with(Step::action("a", "x.a").retry_exponential(
                5,
                Duration::from_millis(100),
                Duration::from_millis(1000),
            )),
            1,
            failed(true),
            Some((2, 100_000)),
        ),
        (
            with(Step::action("a", "x.a").retry_exponential(
                5,
                Duration::from_millis(100),
                Duration::from_millis(1000),
            )),
            3,
            failed(true),
            Some((4, 400_000)),
        ),
        (
            with(Step::action("a", "x.a").retry_exponential(
                9,
                Duration::from_millis(100),
                Duration::from_millis(1000),
            )),
            8,
            failed(true),
            Some((9, 1_000_000)),
        ),
        (
            with(Step::action("a", "x.a").retry_with(
                5,
                Backoff::linear(Duration::from_millis(50), Duration::from_millis(1000)),
            )),
            3,
            failed(true),
            Some((4, 150_000)),
        ),
        (
            with(
                Step::action("a", "x.a")
                    .retry_with(5, Backoff::constant(Duration::from_millis(70))),
            ),
            4,
            failed(true),
            Some((5, 70_000)),
        ),
        (
            with(Step::action("a", "x.a").retry_exponential(
                5,
                Duration::from_millis(100),
                Duration::from_millis(1000),
            )),
            1,
            after(2_500),
            Some((2, 2_500_000)),
        ),
    ];
    for (spec, attempt, outcome, want) in table {
        let mut state = fresh(json!({}));
        state.steps.insert("a".into(), StepState::Planned);
        state.status = RunStatus::Running;
        let d = decide(
            &state,
            Some(&spec),
            recorded("a", attempt, outcome.clone()),
            NOW,
        )
        .expect("decides");
        let got = d
            .planned
            .first()
            .map(|p| (p.attempt, p.visible_at.0 - NOW.0));
        assert_eq!(
            got, want,
            "attempt {attempt} {outcome:?} {:?}",
            spec.steps[0].retry
        );
        assert_eq!(d.attempt_status, Some(AttemptStatus::Failed));
        if let Some(p) = d.planned.first() {
            assert_eq!(
                p.input,
                obj(json!({"kept": true})),
                "a retry reuses its input"
            );
            assert_eq!(d.state.status, RunStatus::Running);
            assert_eq!(d.state.steps.get("a"), Some(&StepState::Planned));
        } else {
            assert_eq!(d.state.status, RunStatus::Failed);
        }
    }
}

#[test]
fn jitter_is_within_bounds_and_reproducible() {
    let spec = WorkflowSpec::builder("j")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("a", "x.a").retry_with(
            5,
            Backoff::constant(Duration::from_millis(1000)).with_jitter(),
        ))
        .build();
    let state = fresh(json!({}));
    let once = decide(&state, Some(&spec), recorded("a", 1, failed(true)), NOW).expect("d");
    let twice = decide(&state, Some(&spec), recorded("a", 1, failed(true)), NOW).expect("d");
    assert_eq!(once, twice, "the same event decides the same way");
    let delay = once.planned[0].visible_at.0 - NOW.0;
    assert!((500_000..=1_000_000).contains(&delay), "{delay}");
}

#[test]
fn conditions_pick_the_first_matching_route_then_the_fallback() {
    let spec = WorkflowSpec::builder("c")
        .trigger(Trigger::manual("manual").integer("amount"))
        .step(Step::action("check", "x.c").output("check"))
        .step(Step::action("big", "x.b"))
        .step(Step::action("vip", "x.v"))
        .step(Step::action("small", "x.s"))
        .transition(Transition::on_ok("check", "vip").when_equals(["check", "tier"], json!("vip")))
        .transition(Transition::on_ok("check", "big").when_greater_than(["amount"], 100.0))
        .transition(Transition::on_ok("check", "small"))
        .build();
    let table = [
        (json!({"amount": 500}), json!({"tier": "vip"}), "vip"),
        (json!({"amount": 500}), json!({"tier": "std"}), "big"),
        (json!({"amount": 5}), json!({"tier": "std"}), "small"),
        (json!({"amount": 5}), json!({}), "small"),
    ];
    for (input, output, want) in table {
        let ds = run(
            Some(&spec),
            input.clone(),
            vec![started(), recorded("check", 1, ok(output.clone()))],
        );
        assert_eq!(ds[1].planned[0].step, want, "{input} {output}");
        assert_eq!(
            ds[1].state.context["check"], output,
            "output stored under its key"
        );
    }
}

#[test]
fn a_dependency_join_waits_for_every_parent() {
    let spec = WorkflowSpec::builder("deps")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("a", "x.a"))
        .step(Step::action("b", "x.b"))
        .step(Step::action("join", "x.j").after(["a", "b"]))
        .build();
    let ds = run(
        Some(&spec),
        json!({}),
        vec![
            started(),
            recorded("a", 1, ok(json!({"a": 1}))),
            recorded("b", 1, ok(json!({"b": 2}))),
            recorded("join", 1, ok(json!({}))),
        ],
    );
    assert!(ds[1].planned.is_empty(), "b is not done yet");
    assert_eq!(ds[1].state.status, RunStatus::Running);
    assert_eq!(planned(&ds[2]), [("join".to_string(), 1, 0)]);
    assert_eq!(ds[3].state.status, RunStatus::Completed);
    // A failed parent fails the run (dependency mode has no error routes).
    let ds = run(
        Some(&spec),
        json!({}),
        vec![started(), recorded("a", 1, failed(false))],
    );
    assert_eq!(ds[1].state.status, RunStatus::Failed);
}

#[test]
fn continue_after_delays_the_next_step() {
    let spec = chain();
    let d = &run(
        Some(&spec),
        json!({}),
        vec![
            started(),
            recorded(
                "a",
                1,
                StepOutcome::Succeeded {
                    output: Map::new(),
                    continue_after_ms: Some(30),
                },
            ),
        ],
    )[1];
    assert_eq!(planned(d), [("b".to_string(), 1, 30_000)]);
}

#[test]
fn an_input_path_that_does_not_resolve_fails_the_run() {
    let spec = WorkflowSpec::builder("m")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("a", "x.a"))
        .step(Step::action("b", "x.b").input_path("id", ["order", "id"]))
        .on_ok("a", "b")
        .build();
    let d = &run(
        Some(&spec),
        json!({}),
        vec![started(), recorded("a", 1, ok(json!({})))],
    )[1];
    assert_eq!(d.state.status, RunStatus::Failed);
    assert_eq!(
        d.state.error.as_ref().expect("error")["code"],
        "missing_input_path"
    );
    assert!(d.planned.is_empty());
    assert!(
        !d.state.steps.contains_key("b"),
        "the unplanned step is dropped"
    );
}

fn gates() -> WorkflowSpec {
    WorkflowSpec::builder("g")
        .trigger(Trigger::manual("manual"))
        .step(Step::pause("hold"))
        .step(Step::approval("review").output("review"))
        .step(Step::log("yes", LogLevel::Info, "y"))
        .step(Step::log("no", LogLevel::Info, "n"))
        .on_ok("hold", "review")
        .on_ok("review", "yes")
        .on_error("review", "no")
        .build()
}

#[test]
fn gates_pause_and_resolve_to_the_targets_captured_at_pause() {
    let spec = gates();
    let paused = run(
        Some(&spec),
        json!({}),
        vec![
            started(),
            recorded("hold", 1, StepOutcome::Suspended(Suspension::Pause)),
        ],
    );
    let d = &paused[1];
    assert_eq!(d.state.status, RunStatus::Paused);
    assert_eq!(d.attempt_status, Some(AttemptStatus::Suspended));
    assert_eq!(kinds(d), ["runnable_applied", "manual_step_paused"]);
    let gate = d.state.manual.clone().expect("gate");
    assert_eq!(gate.ok_target.as_deref(), Some("review"));
    assert_eq!(gate.error_target, None);

    // (command kind, action, gate, expected next step, expected step state)
    let approval = |state: &RunState| {
        decide(
            state,
            Some(&spec),
            recorded("review", 1, StepOutcome::Suspended(Suspension::Approval)),
            NOW,
        )
        .expect("pauses")
        .state
    };
    let at_hold = d.state.clone();
    let resumed = decide(
        &at_hold,
        Some(&spec),
        command(CommandKind::Resume, resolve(GateAction::Resume)),
        NOW,
    )
    .expect("resumes");
    assert_eq!(planned(&resumed), [("review".to_string(), 1, 0)]);
    assert_eq!(resumed.state.manual, None);
    assert_eq!(
        kinds(&resumed),
        [
            "command_received",
            "manual_step_resolved",
            "runnables_planned"
        ]
    );
    let at_review = approval(&resumed.state);
    let table = [
        (
            CommandKind::Approve,
            GateAction::Approve,
            "yes",
            StepState::Completed,
        ),
        (
            CommandKind::Reject,
            GateAction::Reject,
            "no",
            StepState::Failed,
        ),
    ];
    for (kind, action, next, step_state) in table {
        let d =
            decide(&at_review, Some(&spec), command(kind, resolve(action)), NOW).expect("resolves");
        assert_eq!(d.planned[0].step, next);
        assert_eq!(d.state.steps.get("review"), Some(&step_state));
        assert_eq!(d.state.context["review"], json!({"by": "ana"}));
        assert_eq!(d.state.status, RunStatus::Running);
    }
}

#[test]
fn commands_that_do_not_fit_are_refused() {
    let spec = gates();
    let mut paused = fresh(json!({}));
    paused = decide(
        &paused,
        Some(&spec),
        recorded("hold", 1, StepOutcome::Suspended(Suspension::Pause)),
        NOW,
    )
    .expect("pauses")
    .state;
    let mut running = fresh(json!({}));
    running.status = RunStatus::Running;
    let mut ended = fresh(json!({}));
    ended.status = RunStatus::Completed;
    let table: Vec<(RunState, Event, Refusal)> = vec![
        (
            paused.clone(),
            command(CommandKind::Approve, resolve(GateAction::Approve)),
            Refusal::WrongManualStep {
                step: "hold".into(),
                kind: Suspension::Pause,
            },
        ),
        (
            running.clone(),
            command(CommandKind::Resume, resolve(GateAction::Resume)),
            Refusal::InvalidTransition {
                status: RunStatus::Running,
            },
        ),
        (
            ended.clone(),
            command(CommandKind::Cancel, Command::Cancel),
            Refusal::InvalidTransition {
                status: RunStatus::Completed,
            },
        ),
    ];
    for (state, event, want) in table {
        assert_eq!(decide(&state, Some(&spec), event, NOW), Err(want));
    }
}

#[test]
fn cancel_ends_the_run_and_closes_open_attempts() {
    let spec = chain();
    for at in [
        vec![started()],
        vec![
            started(),
            recorded("a", 1, StepOutcome::Suspended(Suspension::Pause)),
        ],
    ] {
        let ds = run(Some(&spec), json!({}), at);
        let state = &ds.last().expect("decided").state;
        let d = decide(
            state,
            Some(&spec),
            command(CommandKind::Cancel, Command::Cancel),
            NOW,
        )
        .expect("cancels");
        assert_eq!(d.state.status, RunStatus::Cancelled);
        assert!(d.close_open_attempts);
        assert_eq!(d.state.manual, None);
        assert_eq!(kinds(&d), ["command_received", "run_terminal"]);
    }
}

fn saga() -> WorkflowSpec {
    WorkflowSpec::builder("saga")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("reserve", "x.r").compensate("x.unreserve"))
        .step(Step::action("note", "x.n"))
        .step(
            Step::action("charge", "x.c")
                .compensate("x.refund")
                .compensate_retry(2),
        )
        .step(Step::action("ship", "x.s"))
        .on_ok("reserve", "note")
        .on_ok("note", "charge")
        .on_ok("charge", "ship")
        .build()
}

fn done(step: &str) -> CompletedStep {
    CompletedStep {
        step: step.into(),
        runnable_key: format!("{RUN}:{step}:1"),
        input: json!({"in": step}),
        output: json!({"out": step}),
    }
}

#[test]
fn compensation_runs_newest_first_and_ends_failed() {
    let spec = saga();
    let mut state = fresh(json!({}));
    state.status = RunStatus::Running;
    // Newest first, as the engine loads them; `note` declares no compensation.
    state.completed = vec![done("charge"), done("note"), done("reserve")];
    let failing = recorded("ship", 1, failed(false));
    assert!(failing.needs_history());
    let d = decide(&state, Some(&spec), failing, NOW).expect("decides");
    assert_eq!(planned(&d), [("compensate:charge".to_string(), 1, 0)]);
    assert!(d.close_open_attempts);
    assert_eq!(d.state.status, RunStatus::Running);
    let comp = d.state.compensation.clone().expect("compensating");
    assert_eq!(comp.status, CompensationStatus::Compensating);
    assert_eq!(comp.pending, ["charge", "reserve"]);
    let input = &d.planned[0].input;
    assert_eq!(input["step"]["output"], json!({"out": "charge"}));
    assert_eq!(input["source"]["failure"]["step"], "ship");

    let mut s = d.state.clone();
    s.completed = state.completed.clone();
    let d = decide(
        &s,
        Some(&spec),
        recorded("compensate:charge", 1, ok(json!({}))),
        NOW,
    )
    .expect("next");
    assert_eq!(planned(&d), [("compensate:reserve".to_string(), 1, 0)]);
    let mut s = d.state.clone();
    s.completed = state.completed.clone();
    let d = decide(
        &s,
        Some(&spec),
        recorded("compensate:reserve", 1, ok(json!({}))),
        NOW,
    )
    .expect("last");
    assert_eq!(d.state.status, RunStatus::Failed);
    let comp = d.state.compensation.clone().expect("done");
    assert_eq!(comp.status, CompensationStatus::Compensated);
    assert_eq!(comp.compensated, ["charge", "reserve"]);
    assert_eq!(d.state.error.as_ref().expect("error")["step"], "ship");
}

#[test]
fn a_failed_compensation_retries_then_leaves_the_rest() {
    let spec = saga();
    let mut state = fresh(json!({}));
    state.completed = vec![done("charge"), done("reserve")];
    state = decide(&state, Some(&spec), recorded("ship", 1, failed(false)), NOW)
        .expect("starts compensating")
        .state;
    state.completed = vec![done("charge"), done("reserve")];
    // charge's compensation may run twice.
    let d = decide(
        &state,
        Some(&spec),
        recorded("compensate:charge", 1, failed(true)),
        NOW,
    )
    .expect("retries");
    assert_eq!(planned(&d), [("compensate:charge".to_string(), 2, 0)]);
    let d = decide(
        &state,
        Some(&spec),
        recorded("compensate:charge", 2, failed(true)),
        NOW,
    )
    .expect("gives up");
    assert_eq!(d.state.status, RunStatus::Failed);
    let comp = d.state.compensation.expect("partial");
    assert_eq!(comp.status, CompensationStatus::PartiallyCompensated);
    assert_eq!(comp.failed.as_deref(), Some("charge"));
    assert_eq!(comp.not_compensated, ["reserve"]);
}

#[test]
fn without_a_definition_the_run_fails_closed() {
    let mut state = fresh(json!({}));
    state.status = RunStatus::Running;
    let d = decide(&state, None, recorded("a", 1, ok(json!({}))), NOW).expect("decides");
    assert_eq!(d.state.status, RunStatus::Failed);
    assert_eq!(d.attempt_status, Some(AttemptStatus::Failed));
    assert_eq!(
        d.state.error.as_ref().expect("error")["code"],
        "definition_unavailable"
    );
    // A step the pinned spec does not have fails the same way.
    let d = decide(
        &state,
        Some(&chain()),
        recorded("gone", 1, ok(json!({}))),
        NOW,
    )
    .expect("decides");
    assert_eq!(d.state.status, RunStatus::Failed);
    // Cancel still works.
    let d = decide(
        &state,
        None,
        command(CommandKind::Cancel, Command::Cancel),
        NOW,
    )
    .expect("cancels");
    assert_eq!(d.state.status, RunStatus::Cancelled);
}

#[test]
fn crash_recovery_reapplies_a_recorded_outcome_identically() {
    // A crash between recording and applying (or a rolled-back apply) leaves the run as it
    // was; applying the recorded outcome later decides exactly what the first try decided,
    // so the step does not run again and nothing is planned twice.
    let spec = saga();
    let before = run(Some(&spec), json!({}), vec![started()])
        .pop()
        .expect("started")
        .state;
    let first = decide(
        &before,
        Some(&spec),
        recorded("reserve", 1, ok(json!({"r": 1}))),
        NOW,
    )
    .expect("first");
    let again = decide(
        &before,
        Some(&spec),
        recorded("reserve", 1, ok(json!({"r": 1}))),
        NOW,
    )
    .expect("again");
    assert_eq!(first, again);
    assert_eq!(planned(&first), [("note".to_string(), 1, 0)]);
    // Runnable keys are derived from run, step and attempt: a replanned retry after a crash
    // names the same row, so the store's primary key refuses a duplicate.
    assert_eq!(first.planned[0].runnable_key, format!("{RUN}:note:1"));
}

#[test]
fn the_replay_guard_lists_completed_irreversible_steps_once() {
    let spec = WorkflowSpec::builder("r")
        .trigger(Trigger::manual("manual"))
        .step(Step::action("pay", "x.p").irreversible())
        .step(Step::action("mail", "x.m").not_compensatable())
        .step(Step::action("log", "x.l"))
        .step(Step::action("ship", "x.s").irreversible())
        .build();
    let good = ok(json!({}));
    let bad = failed(false);
    let attempts = [
        ("pay", AttemptStatus::Succeeded, None, None),
        ("pay", AttemptStatus::Succeeded, None, None),
        ("log", AttemptStatus::Succeeded, None, None),
        ("mail", AttemptStatus::Recorded, Some(&good), None),
        ("ship", AttemptStatus::Recorded, Some(&bad), None),
        ("ship", AttemptStatus::Failed, None, None),
    ];
    assert_eq!(replay_review(&spec, attempts), ["pay", "mail"]);
    assert!(replay_review(&spec, []).is_empty());
}

#[test]
fn a_started_run_with_a_planned_step_is_running_and_terminal_runs_plan_nothing() {
    let spec = chain();
    let ds = run(
        Some(&spec),
        json!({}),
        vec![
            started(),
            recorded("a", 1, ok(json!({}))),
            recorded("b", 1, ok(json!({}))),
        ],
    );
    assert_eq!(ds[0].state.status, RunStatus::Running);
    assert_eq!(ds[0].state.steps.get("a"), Some(&StepState::Planned));
    assert_eq!(ds[2].state.status, RunStatus::Completed);
    assert_eq!(ds[2].state.steps.get("b"), Some(&StepState::Completed));
}

fn node(id: &str) -> fact::DynamicNode {
    fact::DynamicNode {
        id: id.into(),
        action: "x.n".into(),
        digest: Some("sha256:00".into()),
        input: obj(json!({"n": id})),
        retry: None,
        output: None,
        metadata: Map::new(),
    }
}

fn work(key: &str, origin: &str, nodes: &[&str], edges: &[(&str, &str)], join: bool) -> Event {
    Event::Work {
        work: Box::new(fact::DynamicWork {
            key: key.into(),
            origin: fact::DynamicOrigin {
                step: origin.into(),
                attempt: 1,
                runnable_key: format!("{RUN}:{origin}:1"),
            },
            nodes: nodes.iter().map(|n| node(n)).collect(),
            edges: edges
                .iter()
                .map(|(f, t)| fact::DynamicEdge {
                    id: format!("{f}:dynamic:{t}"),
                    from: (*f).into(),
                    to: (*t).into(),
                })
                .collect(),
            join: join.then(|| fact::DynamicNode {
                output: Some("total".into()),
                ..node("sum")
            }),
            scheduled: true,
            from_action: origin == "a",
            allow_replay: false,
            reason: None,
            metadata: Map::new(),
        }),
    }
}

/// The recorded outcome of a dynamic node's first attempt, as the engine would build it.
fn node_done(state: &RunState, id: &str, outcome: StepOutcome) -> Event {
    let planned_node = |w: &fact::OpenWork| fact::AttemptNode {
        work: w.key.clone(),
        index: id[1..].parse::<u32>().map_or(0, |i| i - 1),
        join: id == "sum",
        action: "x.n".into(),
        digest: None,
        retry: None,
        output: (id == "sum").then(|| "total".to_owned()),
        allow_replay: false,
    };
    Event::Recorded {
        attempt: AttemptRef {
            runnable_key: format!("{RUN}:{id}:1"),
            step: id.into(),
            attempt: 1,
            input: Map::new(),
            node: state.dynamic.open.first().map(planned_node),
        },
        outcome,
    }
}

#[test]
fn scheduled_work_plans_its_free_nodes_then_the_ordered_ones_then_the_join() {
    let spec = chain();
    let mut state = run(Some(&spec), json!({}), vec![started()])
        .pop()
        .expect("started")
        .state;
    let d = decide(
        &state,
        Some(&spec),
        work(
            "w",
            "b",
            &["n1", "n2", "n3"],
            &[("b", "n1"), ("n1", "n3")],
            true,
        ),
        NOW,
    )
    .expect("decides");
    assert_eq!(kinds(&d), ["dynamic_work_recorded", "runnables_planned"]);
    let got: Vec<&str> = d.planned.iter().map(|p| p.step.as_str()).collect();
    assert_eq!(got, ["n1", "n2"], "n3 waits for n1");
    assert!(
        d.planned
            .iter()
            .all(|p| p.node.as_ref().is_some_and(|n| n.work == "w"))
    );
    assert!(
        !d.state.steps.contains_key("n1"),
        "nodes are not declared steps"
    );
    state = d.state;
    assert_eq!(state.dynamic.open[0].pending, 3);

    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "n1", ok(json!({"v": 1}))),
        NOW,
    )
    .expect("decides");
    let got: Vec<&str> = d.planned.iter().map(|p| p.step.as_str()).collect();
    assert_eq!(got, ["n3"], "n1 released n3");
    state = d.state;
    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "n2", ok(json!({}))),
        NOW,
    )
    .expect("decides");
    assert!(d.planned.is_empty());
    state = d.state;
    assert!(needs_work_outputs(&state, &node_done(&state, "n3", ok(json!({})))).is_some());
    state.work_outputs = vec![
        (0, "n1".into(), json!({"v": 1})),
        (1, "n2".into(), json!({})),
    ];
    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "n3", ok(json!({"v": 3}))),
        NOW,
    )
    .expect("decides");
    let join = &d.planned[0];
    assert_eq!(join.step, "sum");
    assert!(join.node.as_ref().is_some_and(|n| n.join));
    assert_eq!(
        join.input["results"],
        json!([
            {"id": "n1", "output": {"v": 1}},
            {"id": "n2", "output": {}},
            {"id": "n3", "output": {"v": 3}},
        ])
    );
    state = d.state;
    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "sum", ok(json!({"t": 4}))),
        NOW,
    )
    .expect("decides");
    assert_eq!(kinds(&d), ["runnable_applied", "dynamic_work_completed"]);
    assert!(d.state.dynamic.open.is_empty());
    assert_eq!(d.state.context["total"], json!({"t": 4}));
}

#[test]
fn a_run_that_reaches_its_end_waits_for_open_work_and_a_fanning_step_for_its_own() {
    let spec = chain();
    let states = run(Some(&spec), json!({}), vec![started()]);
    let mut state = states[0].state.clone();
    // `a` fans out from its running attempt: its route waits for the work.
    state = decide(
        &state,
        Some(&spec),
        work("w", "a", &["n1"], &[], false),
        NOW,
    )
    .expect("decides")
    .state;
    let d = decide(&state, Some(&spec), recorded("a", 1, ok(json!({}))), NOW).expect("decides");
    assert!(d.planned.is_empty(), "b waits for the work");
    assert_eq!(d.state.steps.get("a"), Some(&StepState::Planned));
    assert_eq!(d.state.status, RunStatus::Running);
    state = d.state;
    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "n1", ok(json!({}))),
        NOW,
    )
    .expect("decides");
    assert_eq!(
        kinds(&d),
        [
            "runnable_applied",
            "dynamic_work_completed",
            "runnables_planned"
        ]
    );
    assert_eq!(
        d.planned[0].step, "b",
        "the work finished: a takes its route"
    );
    assert_eq!(d.state.steps.get("a"), Some(&StepState::Completed));
    state = d.state;

    // Work added from host code to b: b's success ends the declared graph, the run waits.
    state = decide(
        &state,
        Some(&spec),
        work("v", "b", &["m1"], &[], false),
        NOW,
    )
    .expect("decides")
    .state;
    let d = decide(&state, Some(&spec), recorded("b", 1, ok(json!({}))), NOW).expect("decides");
    assert_eq!(d.state.status, RunStatus::Running);
    assert!(d.state.dynamic.completion_deferred);
    state = d.state;
    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "m1", ok(json!({}))),
        NOW,
    )
    .expect("decides");
    assert_eq!(d.state.status, RunStatus::Completed);
    assert_eq!(kinds(&d).last(), Some(&"run_terminal"));

    // A node that fails for good fails the run; one that may retry is planned again.
    let state = decide(
        &states[0].state,
        Some(&spec),
        work("f", "b", &["bad"], &[], false),
        NOW,
    )
    .expect("decides")
    .state;
    let d = decide(
        &state,
        Some(&spec),
        node_done(&state, "bad", failed(true)),
        NOW,
    )
    .expect("decides");
    assert_eq!(d.state.status, RunStatus::Failed);
    assert_eq!(
        d.state.error.as_ref().map(|e| e["step"].clone()),
        Some(json!("bad"))
    );
    let mut retrying = node_done(&state, "bad", failed(true));
    if let Event::Recorded { attempt, .. } = &mut retrying
        && let Some(n) = &mut attempt.node
    {
        n.retry = Some(crate::spec::RetryPolicy {
            max_attempts: 2,
            backoff: None,
        });
    }
    let d = decide(&state, Some(&spec), retrying, NOW).expect("decides");
    assert_eq!(planned(&d)[0].0, "bad");
    assert_eq!(planned(&d)[0].1, 2);
    assert_eq!(d.state.status, RunStatus::Running);
}
