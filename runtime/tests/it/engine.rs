//! The durable engine on SQLite and Postgres: every scenario runs on both.

use std::time::Duration;

use serde_json::{Value, json};
use squid_mesh::actions::{ActionRegistry, LogLevel, StepOutcome};
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::ExecuteOptions;
use squid_mesh::journal::Fact;
use squid_mesh::spec::{Field, FieldType, Step, Transition, Trigger, WorkflowSpec};
use squid_mesh::{Engine, EngineError, RunSnapshot, RunStatus, StartOptions};
use squid_mesh_example_artifacts as artifacts;

use crate::backends::{Db, T0, on_each_backend};
use crate::support::file_action;

pub fn registry() -> ActionRegistry {
    let registry = ActionRegistry::new();
    for (k, path) in [
        ("orders.validate", artifacts::VALIDATE_ORDER),
        ("payments.charge", artifacts::CHARGE_PAYMENT),
        ("payments.refund", artifacts::REFUND_PAYMENT),
        ("echo", artifacts::ECHO),
    ] {
        registry
            .register(file_action(k, path.as_ref()))
            .expect("example action registers");
    }
    registry
}

fn order() -> Value {
    json!({"order_id": "o-1", "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}]})
}

fn linear() -> WorkflowSpec {
    WorkflowSpec::builder("checkout")
        .version("v1")
        .trigger(Trigger::manual("manual").string("order_id").list("items"))
        .step(Step::action("validate", "orders.validate").output("validation"))
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["validation", "total_cents"])
                .output("payment"),
        )
        .on_ok("validate", "charge")
        .on_ok("charge", "complete")
        .build()
}

pub fn opts(owner: &str) -> ExecuteOptions {
    ExecuteOptions::default().owner_id(owner)
}

/// Executes until nothing is due; returns how many steps ran.
pub async fn drain(engine: &Engine) -> usize {
    let mut n = 0;
    while engine
        .execute_next(opts("w"))
        .await
        .expect("execute_next")
        .is_some()
    {
        n += 1;
        assert!(n < 100, "runaway run");
    }
    n
}

/// Runs `execute_next(o)` in a task and returns once its claim is committed (the step then
/// runs), so tests act on a claimed attempt without guessing how long claiming takes.
pub async fn claimed_in_background(
    engine: &Engine,
    o: ExecuteOptions,
) -> tokio::task::JoinHandle<Result<Option<RunSnapshot>, EngineError>> {
    in_background(engine, o, false).await
}

/// As [`claimed_in_background`], returning once the action is being invoked.
pub async fn invoking_in_background(
    engine: &Engine,
    o: ExecuteOptions,
) -> tokio::task::JoinHandle<Result<Option<RunSnapshot>, EngineError>> {
    in_background(engine, o, true).await
}

async fn in_background(
    engine: &Engine,
    o: ExecuteOptions,
    until_invoking: bool,
) -> tokio::task::JoinHandle<Result<Option<RunSnapshot>, EngineError>> {
    let hook = squid_mesh::engine::AfterClaim::default();
    let o = o.after_claim(hook.clone());
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.execute_next(o).await })
    };
    hook.claimed.notified().await;
    hook.proceed.notify_one();
    if until_invoking {
        hook.invoking.notified().await;
    }
    task
}

pub async fn assert_consistent(engine: &Engine, run: &RunSnapshot) {
    let diff = engine.verify_run(run.run_id).await.expect("verify");
    assert!(diff.is_empty(), "journal and rows disagree: {diff:#?}");
}

async fn kinds(engine: &Engine, run: &RunSnapshot) -> Vec<&'static str> {
    engine
        .journal(run.run_id)
        .await
        .expect("journal")
        .iter()
        .map(|(_, f)| f.kind())
        .collect()
}

async fn a_linear_run_completes_with_outputs_under_their_keys(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(linear()).expect("valid");
    let run = engine
        .start("checkout", None, order(), StartOptions::default())
        .await
        .expect("starts");
    assert_eq!(run.status, RunStatus::Running, "{}", db.name());
    assert_eq!(run.attempts.len(), 1);
    // The snapshot `start` builds from the rows it wrote is the one a read returns.
    assert_eq!(
        engine.snapshot(run.run_id).await.expect("snapshot"),
        run,
        "{}",
        db.name()
    );
    assert_eq!(run.version.as_deref(), Some("v1"));

    let after_validate = engine
        .execute_next(opts("w1"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(
        after_validate.context["validation"]["total_cents"],
        json!(900)
    );
    let charge = &after_validate.attempts_of("charge")[0];
    assert_eq!(
        charge.input,
        json!({"order_id": "o-1", "amount_cents": 900})
            .as_object()
            .cloned()
            .expect("object")
    );

    let done = engine
        .execute_next(opts("w1"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(done.status, RunStatus::Completed);
    assert!(
        done.context["payment"]["charge_id"]
            .as_str()
            .is_some_and(|c| c.starts_with("ch_"))
    );
    assert!(engine.execute_next(opts("w1")).await.expect("ok").is_none());
    assert_eq!(
        kinds(&engine, &done).await,
        [
            "command_received",
            "run_started",
            "runnables_planned",
            "attempt_claimed",
            "attempt_recorded",
            "runnable_applied",
            "runnables_planned",
            "attempt_claimed",
            "attempt_recorded",
            "runnable_applied",
            "run_terminal"
        ]
    );
    assert_consistent(&engine, &done).await;
}
on_each_backend!(a_linear_run_completes_with_outputs_under_their_keys);

async fn retries_follow_the_backoff_and_the_actions_retry_after(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("flaky")
        .trigger(
            Trigger::manual("m")
                .string("order_id")
                .integer("amount_cents")
                .integer("succeed_on_attempt")
                .field(Field::of("retry_after_ms", FieldType::Integer).optional()),
        )
        .step(Step::action("charge", "payments.charge").retry_exponential(
            4,
            Duration::from_millis(100),
            Duration::from_millis(1000),
        ))
        .build();
    let run = engine
        .start(
            &spec,
            None,
            json!({"order_id": "o", "amount_cents": 5, "succeed_on_attempt": 3}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("attempt 1");
    let second = s.attempts_of("charge")[1];
    assert_eq!((second.attempt, second.status.as_str()), (2, "scheduled"));
    assert_eq!(second.visible_at, T0.plus_millis(100), "{}", db.name());
    assert_eq!(second.runnable_key, format!("{}:charge:2", run.run_id));
    assert!(
        engine.execute_next(opts("w")).await.expect("ok").is_none(),
        "not visible before the backoff"
    );
    clock.advance(Duration::from_millis(100));
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("attempt 2");
    assert_eq!(
        s.attempts_of("charge")[2].visible_at,
        T0.plus_millis(100 + 200)
    );
    clock.advance(Duration::from_millis(200));
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("attempt 3");
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(s.context["attempt"], json!(3));
    assert_consistent(&engine, &s).await;

    // retry-after from the action overrides the backoff.
    let run = engine
        .start(&spec, None, json!({"order_id": "o", "amount_cents": 5, "succeed_on_attempt": 2, "retry_after_ms": 5000}), StartOptions::default())
        .await
        .expect("starts");
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("attempt 1");
    assert_eq!(s.run_id, run.run_id);
    assert_eq!(
        s.attempts_of("charge")[1].visible_at,
        clock_now(&clock).plus_millis(5000)
    );
}
on_each_backend!(retries_follow_the_backoff_and_the_actions_retry_after);

fn clock_now(clock: &ManualClock) -> squid_mesh::clock::Timestamp {
    use squid_mesh::clock::Clock as _;
    clock.now()
}

fn charge_spec(error_route: bool) -> WorkflowSpec {
    let mut b = WorkflowSpec::builder(if error_route {
        "charge_or_notify"
    } else {
        "charge_only"
    })
    .trigger(
        Trigger::manual("m")
            .string("order_id")
            .integer("amount_cents")
            .integer("succeed_on_attempt"),
    )
    .step(
        Step::action("charge", "payments.charge")
            .retry(2)
            .output("payment"),
    )
    .on_ok("charge", "complete");
    if error_route {
        b = b
            .step(Step::log(
                "notify",
                LogLevel::Warn,
                "payment failed; notifying the customer",
            ))
            .transition(Transition::on_error("charge", "notify").recovery("compensation"));
    }
    b.build()
}

async fn exhausted_retries_fail_the_run_or_take_the_error_route(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let payload = json!({"order_id": "o", "amount_cents": 5, "succeed_on_attempt": 9});

    let failing = charge_spec(false);
    let run = engine
        .start(&failing, None, payload.clone(), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    let error = s.error.clone().expect("error");
    assert_eq!(
        (
            error["code"].as_str(),
            error["attempt"].as_u64(),
            error["step"].as_str()
        ),
        (Some("gateway_unavailable"), Some(2), Some("charge"))
    );
    assert_eq!(s.attempts_of("charge").len(), 2);
    assert!(s.attempts_of("notify").is_empty());
    assert_consistent(&engine, &s).await;

    let routed = charge_spec(true);
    let run = engine
        .start(&routed, None, payload.clone(), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(
        s.attempts_of("notify")[0].status,
        squid_mesh::vocab::AttemptStatus::Succeeded
    );
    let applied = engine
        .journal(run.run_id)
        .await
        .expect("journal")
        .into_iter()
        .find_map(|(_, f)| match f {
            Fact::RunnableApplied {
                route: Some(r),
                step,
                ..
            } if step == "charge" => Some(r),
            _ => None,
        });
    assert_eq!(
        applied.and_then(|r| r.recovery),
        Some("compensation".into())
    );
    assert_consistent(&engine, &s).await;

    // A non-retryable error skips the retries.
    let declined = json!({"order_id": "o", "amount_cents": -1, "succeed_on_attempt": 0});
    let run = engine
        .start(&failing, None, declined, StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.attempts_of("charge").len(), 1);
    assert_eq!(s.error.expect("error")["code"], json!("invalid_amount"));
}
on_each_backend!(exhausted_retries_fail_the_run_or_take_the_error_route);

async fn conditions_route_in_declaration_order_with_a_fallback(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("routing")
        .trigger(Trigger::manual("m").string("order_id").list("items"))
        .step(Step::action("validate", "orders.validate").output("validation"))
        .step(Step::log("big", LogLevel::Info, "big order"))
        .step(Step::log("small", LogLevel::Info, "small order"))
        .transition(
            Transition::on_ok("validate", "big")
                .when_greater_than(["validation", "total_cents"], 1000.0),
        )
        .on_ok("validate", "small")
        .on_ok("big", "complete")
        .on_ok("small", "complete")
        .build();
    let big =
        json!({"order_id": "b", "items": [{"sku": "x", "quantity": 3, "unit_price_cents": 500}]});
    for (payload, expected) in [(order(), "small"), (big, "big")] {
        let run = engine
            .start(&spec, None, payload, StartOptions::default())
            .await
            .expect("starts");
        drain(&engine).await;
        let s = engine.snapshot(run.run_id).await.expect("snapshot");
        assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
        let ran: Vec<&str> = s.attempts.iter().map(|a| a.step.as_str()).collect();
        assert_eq!(ran, ["validate", expected]);
    }
}
on_each_backend!(conditions_route_in_declaration_order_with_a_fallback);

/// Three roots and a join. With `fail_b`, root `b` charges without an order and fails
/// non-retryably.
fn fan_out(fail_b: bool) -> WorkflowSpec {
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

async fn dependency_roots_run_in_parallel_and_the_join_waits_for_all(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = engine
        .start(&fan_out(false), None, json!({}), StartOptions::default())
        .await
        .expect("starts");
    let visible: Vec<&str> = run
        .attempts
        .iter()
        .filter(|a| a.visible_at == T0)
        .map(|a| a.step.as_str())
        .collect();
    assert_eq!(
        visible,
        ["a", "b", "c"],
        "every root is visible at once ({})",
        db.name()
    );

    // Two workers drain the run concurrently.
    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|owner| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut ran = 0;
                loop {
                    match engine.execute_next(opts(owner)).await {
                        Ok(Some(_)) => ran += 1,
                        Ok(None) => break,
                        Err(e) => panic!("{owner}: {e}"),
                    }
                }
                ran
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    assert_eq!(total, 4);
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed);
    let join = s.attempts_of("join");
    assert_eq!(join.len(), 1, "the join runs exactly once");
    let roots_done = s
        .attempts
        .iter()
        .filter(|a| a.step != "join")
        .all(|a| a.status == squid_mesh::vocab::AttemptStatus::Succeeded);
    assert!(roots_done);
    // The join saw every root's output.
    for k in ["a", "b", "c"] {
        assert!(join[0].input.contains_key(k), "join input lacks {k}");
    }
    assert_consistent(&engine, &s).await;

    // A failed dependency fails the run; the join never runs.
    let run = engine
        .start(&fan_out(true), None, json!({}), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed);
    assert!(s.attempts_of("join").is_empty());
    assert_consistent(&engine, &s).await;
}
on_each_backend!(dependency_roots_run_in_parallel_and_the_join_waits_for_all);

fn slow() -> WorkflowSpec {
    WorkflowSpec::builder("slow")
        .trigger(Trigger::manual("m").integer("sleep_ms"))
        .step(Step::action("nap", "echo").output("nap"))
        .build()
}

/// Starts a run of [`slow`] whose one step sleeps `sleep_ms`.
async fn start_nap(engine: &Engine, sleep_ms: u64) -> RunSnapshot {
    engine
        .start(
            &slow(),
            None,
            json!({ "sleep_ms": sleep_ms }),
            StartOptions::default(),
        )
        .await
        .expect("starts")
}

async fn an_expired_lease_is_redelivered_and_the_late_worker_is_fenced(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = start_nap(&engine, 400).await;
    let short = ExecuteOptions::default()
        .owner_id("late")
        .lease_for(Duration::from_secs(1));
    let late = claimed_in_background(&engine, short).await;
    // The late worker holds the claim and its step runs: expire its lease.
    clock.advance(Duration::from_secs(2));
    let redelivered = engine
        .execute_next(opts("rescuer"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(redelivered.status, RunStatus::Completed, "{}", db.name());
    let attempt = &redelivered.attempts[0];
    assert_eq!(
        (attempt.attempt, attempt.claims, attempt.owner.as_deref()),
        (1, 2, Some("rescuer"))
    );
    assert_eq!(
        attempt.runnable_key,
        format!("{}:nap:1", run.run_id),
        "same attempt, same idempotency key"
    );

    let err = late.await.expect("task").expect_err("fenced");
    assert!(matches!(err, EngineError::StaleClaim { .. }), "{err}");
    let after = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(after, redelivered, "the late completion changed nothing");
    let recorded = engine
        .journal(run.run_id)
        .await
        .expect("journal")
        .iter()
        .filter(|(_, f)| f.kind() == "attempt_recorded")
        .count();
    assert_eq!(recorded, 1);
    assert_consistent(&engine, &after).await;
}
on_each_backend!(an_expired_lease_is_redelivered_and_the_late_worker_is_fenced);

/// On Postgres a completion is first written as one statement fenced by the run and the
/// claim its worker holds. When either changed while the step ran, that statement writes
/// nothing and the completion goes under lock, which sees the change (on SQLite every
/// completion goes under lock: the same outcomes, nothing fenced).
async fn a_completion_is_fenced_by_the_run_and_the_claim_it_holds(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    // (completions written, completions that went under lock, starts written)
    let fenced = |written: u64, missed: u64, starts: u64| match db {
        Db::Postgres { .. } => (written, missed, starts),
        Db::Sqlite(_) => (0, 0, 0),
    };
    // Nothing comes between claim and completion: each completion is one statement.
    let run = engine
        .start(&linear(), None, order(), StartOptions::default())
        .await
        .expect("starts");
    assert_eq!(drain(&engine).await, 2);
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
    assert!(s.context.contains_key("payment"), "{:?}", s.context);
    assert_consistent(&engine, &s).await;
    assert_eq!(engine.fenced_totals(), fenced(2, 0, 0), "{}", db.name());

    // A 300 ms step, being run by a worker in the background.
    let running = || async {
        let run = start_nap(&engine, 300).await;
        (run, invoking_in_background(&engine, opts("w")).await)
    };

    // The run changed while its step ran: the change is kept.
    let (run, worker) = running().await;
    db.execute(&format!(
        "UPDATE runs SET context = '{{\"noted\": true}}', revision = revision + 1, updated_at = updated_at + 1 WHERE run_id = '{}'",
        run.run_id
    ))
    .await;
    let s = worker
        .await
        .expect("task")
        .expect("completes")
        .expect("progress");
    assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
    assert_eq!(
        s.context.get("noted"),
        Some(&json!(true)),
        "{:?}",
        s.context
    );
    assert!(s.context.contains_key("nap"), "{:?}", s.context);
    assert_eq!(engine.fenced_totals(), fenced(2, 1, 0), "{}", db.name());

    // Another claim took the attempt while its step ran: the late completion is refused
    // and writes nothing. (A start of a definition this engine has stored is one
    // statement too; the first start of each definition stores it in a transaction.)
    let (run, worker) = running().await;
    db.execute(&format!(
        "UPDATE attempts SET claim_id = 'another' WHERE run_id = '{}'",
        run.run_id
    ))
    .await;
    let err = worker.await.expect("task").expect_err("refused");
    assert!(matches!(err, EngineError::StaleClaim { .. }), "{err}");
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Running, "{}", db.name());
    assert!(s.attempts[0].outcome.is_none(), "nothing recorded");
    assert_eq!(engine.fenced_totals(), fenced(2, 2, 1), "{}", db.name());
}
on_each_backend!(a_completion_is_fenced_by_the_run_and_the_claim_it_holds);

/// A transaction's `BEGIN` whose caller goes away before the answer (a timeout, an aborted
/// task) leaves no transaction open on the pooled connection: a write sent later outside
/// any transaction, as fenced completions are, commits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_cut_off_leaves_no_transaction_open() {
    use squid_mesh::store::{PostgresStore, Store as _};
    crate::backends::on_postgres(|db, _clock| async move {
        let Db::Postgres { url, schema } = &db else {
            unreachable!("on_postgres gives a Postgres database")
        };
        db.execute(&format!("CREATE SCHEMA {schema}")).await;
        db.execute("CREATE TABLE probe (n integer)").await;
        let store = PostgresStore::connect(url, schema, 2)
            .await
            .expect("connects");
        let rounds = 20;
        for n in 0..rounds {
            let begin = store.begin_write();
            // Polled once: the BEGIN goes out, and the caller leaves before its answer.
            tokio::select! {
                biased;
                _ = begin => {}
                () = std::future::ready(()) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            sqlx::query("INSERT INTO probe VALUES ($1)")
                .bind(n)
                .execute(store.pool())
                .await
                .expect("inserts");
        }
        let seen: (i64,) = {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(url).await.expect("connects");
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.probe"
            )))
            .fetch_one(&mut c)
            .await
            .expect("counts")
        };
        assert_eq!(
            seen.0, rounds,
            "every write sent outside a transaction is committed and seen"
        );
    })
    .await;
}

/// An expired claim goes before the backlog that arrived while its step ran.
async fn a_redelivery_is_claimed_before_fresh_work(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let crashed = start_nap(&engine, 300).await;
    let short = ExecuteOptions::default()
        .owner_id("crashed")
        .lease_for(Duration::from_secs(1));
    let late = claimed_in_background(&engine, short).await;
    // A backlog arrives while the step runs; then the worker's lease ends.
    clock.advance(Duration::from_millis(1));
    for _ in 0..5 {
        start_nap(&engine, 0).await;
    }
    clock.advance(Duration::from_secs(2));
    let next = engine
        .execute_next(opts("rescuer"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(
        next.run_id,
        crashed.run_id,
        "{}: the expired claim goes before the backlog that came after it",
        db.name()
    );
    let _ = late.await;
}
on_each_backend!(a_redelivery_is_claimed_before_fresh_work);

async fn a_step_delivered_too_often_fails_instead_of_running_again(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = start_nap(&engine, 300).await;
    let short = ExecuteOptions::default()
        .owner_id("dying")
        .lease_for(Duration::from_secs(1));
    let late = claimed_in_background(&engine, short).await;
    // As if four earlier workers had died running it.
    db.execute(&format!(
        "UPDATE attempts SET claims = 5 WHERE run_id = '{}'",
        run.run_id
    ))
    .await;
    clock.advance(Duration::from_secs(2));
    let s = engine
        .execute_next(opts("next"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    let error = s.error.clone().unwrap_or_default();
    assert_eq!(error["code"], "delivery_limit", "{error}");
    assert_eq!(error["retryable"], false);
    assert_eq!(s.attempts.len(), 1, "not run again");
    let err = late.await.expect("task").expect_err("fenced");
    assert!(matches!(err, EngineError::StaleClaim { .. }), "{err}");
    assert_consistent(
        &engine,
        &engine.snapshot(run.run_id).await.expect("snapshot"),
    )
    .await;
}
on_each_backend!(a_step_delivered_too_often_fails_instead_of_running_again);

async fn an_outcome_that_cannot_be_read_back_fails_its_step_once(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = start_nap(&engine, 0).await;
    let err = engine
        .execute_next(opts("doomed").crash_after_record(true))
        .await
        .expect_err("crashed");
    assert!(matches!(err, EngineError::SimulatedCrash));
    db.execute(&format!(
        "UPDATE attempts SET outcome = '{{\"kind\": \"unheard_of\"' WHERE run_id = '{}'",
        run.run_id
    ))
    .await;
    let s = engine
        .execute_next(opts("next"))
        .await
        .expect("applies, once")
        .expect("progress");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    let error = s.error.clone().unwrap_or_default();
    assert_eq!(error["code"], "outcome_unreadable", "{error}");
    assert!(
        engine
            .execute_next(opts("next"))
            .await
            .expect("ok")
            .is_none(),
        "nothing left to do"
    );
}
on_each_backend!(an_outcome_that_cannot_be_read_back_fails_its_step_once);

async fn heartbeats_keep_a_long_step_alive(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let run = start_nap(&engine, 700).await;
    let beating = ExecuteOptions::default()
        .owner_id("steady")
        .lease_for(Duration::from_millis(1500))
        .heartbeat_interval(Some(Duration::from_millis(40)));
    let worker = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.execute_next(beating).await })
    };
    // Time runs fast: 3 s of engine time pass while the step sleeps 0.7 s, twice the
    // 1.5 s lease, yet no one else may take the attempt. (Engine time runs 2.5 times real
    // time, so a heartbeat may be late by half a second on a loaded machine.)
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        clock.advance(Duration::from_millis(100));
        assert!(
            engine
                .execute_next(opts("thief"))
                .await
                .expect("ok")
                .is_none(),
            "{}",
            db.name()
        );
    }
    let done = worker.await.expect("task").expect("ok").expect("progress");
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.attempts[0].claims, 1);
    assert_eq!(done.run_id, run.run_id);

    // Without heartbeats the same step loses its claim to another worker.
    let run = start_nap(&engine, 700).await;
    let lazy = ExecuteOptions::default()
        .owner_id("lazy")
        .lease_for(Duration::from_secs(1));
    let worker = claimed_in_background(&engine, lazy).await;
    clock.advance(Duration::from_secs(2));
    let taken = engine
        .execute_next(opts("thief"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(taken.attempts[0].owner.as_deref(), Some("thief"));
    assert!(worker.await.expect("task").is_err());
    assert_eq!(taken.run_id, run.run_id);
}
on_each_backend!(heartbeats_keep_a_long_step_alive);

async fn a_crash_between_completion_and_application_is_applied_without_rerunning(
    db: Db,
    clock: ManualClock,
) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(linear()).expect("valid");
    let run = engine
        .start("checkout", None, order(), StartOptions::default())
        .await
        .expect("starts");
    let crash = opts("doomed").crash_after_record(true);
    let err = engine.execute_next(crash).await.expect_err("crashed");
    assert!(matches!(err, EngineError::SimulatedCrash));
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(
        s.attempts[0].status,
        squid_mesh::vocab::AttemptStatus::Recorded,
        "{}",
        db.name()
    );
    assert!(matches!(
        s.attempts[0].outcome,
        Some(StepOutcome::Succeeded { .. })
    ));

    // A restarted worker applies the recorded outcome; the step does not run again.
    let restarted = db.engine(&registry(), &clock).await;
    let s = restarted
        .execute_next(opts("next"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(
        s.attempts[0].status,
        squid_mesh::vocab::AttemptStatus::Succeeded
    );
    assert_eq!(s.attempts[0].claims, 1);
    assert_eq!(
        s.attempts_of("charge")[0].status,
        squid_mesh::vocab::AttemptStatus::Scheduled
    );
    let claims = restarted
        .journal(run.run_id)
        .await
        .expect("journal")
        .iter()
        .filter(|(_, f)| f.kind() == "attempt_claimed")
        .count();
    assert_eq!(claims, 1);
    drain(&restarted).await;
    let s = restarted.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed);
    assert_consistent(&restarted, &s).await;
}
on_each_backend!(a_crash_between_completion_and_application_is_applied_without_rerunning);

async fn a_run_survives_an_engine_restart(db: Db, clock: ManualClock) {
    let run_id = {
        let engine = db.engine(&registry(), &clock).await;
        let spec = WorkflowSpec::builder("waiting")
            .trigger(Trigger::manual("m").string("order_id").list("items"))
            .step(Step::action("validate", "orders.validate").output("validation"))
            .step(Step::wait("cool_off", Duration::from_millis(1_500)))
            .step(
                Step::action("charge", "payments.charge")
                    .input_path("order_id", ["order_id"])
                    .input_path("amount_cents", ["validation", "total_cents"]),
            )
            .on_ok("validate", "cool_off")
            .on_ok("cool_off", "charge")
            .build();
        let run = engine
            .start(&spec, None, order(), StartOptions::default())
            .await
            .expect("starts");
        engine
            .execute_next(opts("w"))
            .await
            .expect("ok")
            .expect("validate");
        let s = engine
            .execute_next(opts("w"))
            .await
            .expect("ok")
            .expect("wait");
        // The wait delays its successor durably, to the millisecond.
        assert_eq!(
            s.attempts_of("charge")[0].visible_at,
            T0.plus_millis(1_500),
            "{}",
            db.name()
        );
        run.run_id
    };
    // A new engine (as after a process restart) on the same database finishes the run.
    let engine = db.engine(&registry(), &clock).await;
    assert!(
        engine.execute_next(opts("w")).await.expect("ok").is_none(),
        "still waiting"
    );
    clock.advance(Duration::from_millis(1_499));
    assert!(
        engine.execute_next(opts("w")).await.expect("ok").is_none(),
        "1 ms early"
    );
    clock.advance(Duration::from_millis(1));
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("charge");
    assert_eq!(s.run_id, run_id);
    assert_eq!(s.status, RunStatus::Completed);
    assert_consistent(&engine, &s).await;
}
on_each_backend!(a_run_survives_an_engine_restart);

async fn starts_are_idempotent_by_key_and_by_run_id(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(linear()).expect("valid");
    let keyed = || StartOptions::default().idempotency_key("order-o-1");
    let first = engine
        .start("checkout", None, order(), keyed())
        .await
        .expect("starts");
    let again = engine
        .start("checkout", None, order(), keyed())
        .await
        .expect("same run");
    assert_eq!(first.run_id, again.run_id, "{}", db.name());
    assert_eq!(again.attempts.len(), 1, "nothing was planned twice");
    let other = json!({"order_id": "o-2", "items": []});
    let err = engine
        .start("checkout", None, other.clone(), keyed())
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), "idempotency_conflict");

    let by_id = StartOptions::default().run_id(first.run_id);
    assert_eq!(
        engine
            .start("checkout", None, order(), by_id.clone())
            .await
            .expect("same")
            .run_id,
        first.run_id
    );
    assert_eq!(
        engine
            .start("checkout", None, other, by_id)
            .await
            .expect_err("conflict")
            .code(),
        "idempotency_conflict"
    );
    assert_eq!(
        engine.journal(first.run_id).await.expect("journal").len(),
        3,
        "receipt, start, plan"
    );
    // On Postgres each repeat was first tried as one statement, whose run insert found the
    // run: none of them was written that way.
    assert_eq!(engine.fenced_totals().2, 0, "{}", db.name());
    let fresh = engine
        .start("checkout", None, order(), StartOptions::default())
        .await
        .expect("starts");
    assert_ne!(fresh.run_id, first.run_id);
    let expected = if matches!(db, Db::Postgres { .. }) {
        1
    } else {
        0
    };
    assert_eq!(engine.fenced_totals().2, expected, "{}", db.name());
}
on_each_backend!(starts_are_idempotent_by_key_and_by_run_id);

async fn the_editor_section_makes_no_new_definition(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let start = |spec: WorkflowSpec| {
        let engine = engine.clone();
        async move {
            engine
                .start(&spec, None, order(), StartOptions::default())
                .await
                .expect("starts")
        }
    };
    let bare = start(linear()).await;
    let mut placed = linear();
    placed.editor = json!({"nodes": {"charge": {"position": {"x": 1, "y": 2}}}})
        .as_object()
        .cloned();
    let first = start(placed.clone()).await;
    placed.editor.as_mut().expect("editor")["nodes"]["charge"]["position"] =
        json!({"x": 50, "y": 0});
    let moved = start(placed.clone()).await;
    for run in [&first, &moved] {
        assert_eq!(run.definition_hash, bare.definition_hash, "{}", db.name());
        assert_eq!(run.fingerprint, bare.fingerprint);
    }
    engine.register_workflow(placed.clone()).expect("valid");
    assert_eq!(engine.registered_spec("checkout"), Some(placed));
    assert_eq!(engine.registered_spec("nothing"), None);
}
on_each_backend!(the_editor_section_makes_no_new_definition);

async fn bad_payloads_and_options_are_reported_together_and_write_nothing(
    db: Db,
    clock: ManualClock,
) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(linear()).expect("valid");
    let keyed = StartOptions::default().idempotency_key("k");
    let err = engine
        .start(
            "checkout",
            None,
            json!({"items": "many", "colour": "red"}),
            keyed,
        )
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), "invalid_payload", "{}", db.name());
    let problems: Vec<(&str, &str)> = err
        .problems()
        .iter()
        .map(|p| (p.path.as_str(), p.code.as_str()))
        .collect();
    assert_eq!(
        problems,
        [
            ("payload.order_id", "missing_field"),
            ("payload.colour", "unknown_field"),
            ("payload.items", "invalid_type")
        ]
    );
    let would_be = squid_mesh::RunId::derived(&["checkout", "manual", "k"]);
    assert_eq!(
        engine
            .snapshot(would_be)
            .await
            .expect_err("nothing written")
            .code(),
        "run_not_found"
    );

    // A payload nested deeper than the runtime could read back is refused at the door.
    let mut deep = json!("leaf");
    for _ in 0..125 {
        deep = json!([deep]);
    }
    let err = engine
        .start(
            "checkout",
            None,
            json!({"order_id": "o", "items": [], "extra": deep}),
            StartOptions::default().idempotency_key("k"),
        )
        .await
        .expect_err("too deep");
    assert_eq!(err.problems()[0].code, "too_deep", "{}", db.name());
    assert_eq!(
        engine
            .snapshot(would_be)
            .await
            .expect_err("nothing written")
            .code(),
        "run_not_found"
    );

    assert_eq!(
        engine
            .start("nope", None, json!({}), StartOptions::default())
            .await
            .expect_err("unknown")
            .code(),
        "unknown_workflow"
    );
    assert_eq!(
        engine
            .start("checkout", Some("cron"), order(), StartOptions::default())
            .await
            .expect_err("unknown")
            .code(),
        "unknown_trigger"
    );
    let bad_queue = StartOptions::default().queue("no spaces");
    assert_eq!(
        engine
            .start("checkout", None, order(), bad_queue)
            .await
            .expect_err("queue")
            .code(),
        "invalid_option"
    );
    let bad_lease = ExecuteOptions::default().lease_for(Duration::ZERO);
    assert_eq!(
        engine
            .execute_next(bad_lease)
            .await
            .expect_err("lease")
            .problems()[0]
            .path,
        "lease_for"
    );
    let broken = WorkflowSpec::builder("broken")
        .trigger(Trigger::manual("m"))
        .step(Step::action("a", "not.registered"))
        .build();
    let err = engine
        .start(&broken, None, json!({}), StartOptions::default())
        .await
        .expect_err("spec");
    assert_eq!(
        (err.code(), err.problems()[0].code.as_str()),
        ("invalid_spec", "unknown_action")
    );
}
on_each_backend!(bad_payloads_and_options_are_reported_together_and_write_nothing);

async fn a_missing_input_path_fails_the_run_with_a_structured_error(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("mapping")
        .trigger(Trigger::manual("m").string("order_id").list("items"))
        .step(Step::action("validate", "orders.validate").output("validation"))
        .step(
            Step::action("charge", "payments.charge")
                .input_path("amount_cents", ["validation", "tax", "cents"]),
        )
        .on_ok("validate", "charge")
        .build();
    let run = engine
        .start(&spec, None, order(), StartOptions::default())
        .await
        .expect("starts");
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    let e = s.error.clone().expect("error");
    assert_eq!(e["code"], json!("missing_input_path"));
    assert_eq!(e["step"], json!("charge"));
    assert_eq!(e["missing_at"], json!("tax"));
    assert_eq!(e["path"], json!(["validation", "tax", "cents"]));
    assert!(s.attempts_of("charge").is_empty());
    assert_eq!(s.run_id, run.run_id);
    assert_consistent(&engine, &s).await;
}
on_each_backend!(a_missing_input_path_fails_the_run_with_a_structured_error);

async fn a_run_executes_its_pinned_definition_and_fails_closed_when_it_cannot(
    db: Db,
    clock: ManualClock,
) {
    let reg = registry();
    let engine = db.engine(&reg, &clock).await;
    engine.register_workflow(linear()).expect("valid");
    let run = engine
        .start("checkout", None, order(), StartOptions::default())
        .await
        .expect("starts");
    // The host's code changes: the workflow now has a different shape.
    let v2 = WorkflowSpec::builder("checkout")
        .version("v2")
        .trigger(Trigger::manual("manual").string("order_id").list("items"))
        .step(Step::action("only", "echo"))
        .build();
    engine.register_workflow(v2).expect("valid");
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("validate");
    assert_eq!(
        s.attempts_of("charge").len(),
        1,
        "the pinned v1 plans charge ({})",
        db.name()
    );

    // The charge action is replaced by a different component: the run fails closed.
    reg.register(file_action("payments.charge", artifacts::ECHO.as_ref()))
        .expect("re-registers");
    let s = engine
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(s.status, RunStatus::Failed);
    let e = s.error.expect("error");
    assert_eq!(e["code"], json!("action_digest_changed"));
    assert_eq!(e["retryable"], json!(false));
    assert_eq!(s.run_id, run.run_id);
}
on_each_backend!(a_run_executes_its_pinned_definition_and_fails_closed_when_it_cannot);

async fn a_spec_file_is_a_workflow(db: Db, clock: ManualClock) {
    let toml = r#"
name = "from_file"
version = "1"

[[triggers]]
name = "manual"
type = "manual"

[[triggers.payload]]
name = "greeting"
type = "string"
default = "hello"

[[steps]]
name = "say"
builtin = { kind = "log", message = "hi" }

[[steps]]
name = "pause_a_bit"
builtin = { kind = "wait", duration_ms = 250 }

[[steps]]
name = "echo"
action = "echo"
input = ["greeting"]

[[transitions]]
from = "say"
on = "ok"
to = "pause_a_bit"

[[transitions]]
from = "pause_a_bit"
on = "ok"
to = "echo"
"#;
    let spec = WorkflowSpec::from_toml(toml).expect("parses");
    assert_eq!(
        WorkflowSpec::from_json(&spec.to_json()).expect("round trip"),
        spec
    );
    spec.validate(Some(&registry())).expect("valid");
    let engine = db.engine(&registry(), &clock).await;
    let run = engine
        .start(&spec, None, json!({}), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    clock.advance(Duration::from_millis(250));
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
    assert_eq!(
        s.attempts_of("echo")[0].input,
        json!({"greeting": "hello"})
            .as_object()
            .cloned()
            .expect("object")
    );
}
on_each_backend!(a_spec_file_is_a_workflow);

/// Two engines on one database (two hosts), four claimers each. On Postgres a claim reads
/// a due attempt without a lock and writes the claim fenced by what it read; claimers that
/// read the same attempt get one claim between them, and the others claim under lock.
async fn concurrent_workers_claim_every_attempt_exactly_once(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let other = db.engine(&registry(), &clock).await;
    let spec = WorkflowSpec::builder("one_step")
        .trigger(Trigger::manual("m"))
        .step(Step::action("echo", "echo"))
        .build();
    let mut runs = Vec::new();
    for _ in 0..80 {
        runs.push(
            engine
                .start(&spec, None, json!({}), StartOptions::default())
                .await
                .expect("starts")
                .run_id,
        );
    }
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let engine = if i % 2 == 0 {
                engine.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                let mut n = 0;
                while engine
                    .execute_next(opts(&format!("w{i}")))
                    .await
                    .expect("execute_next")
                    .is_some()
                {
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    assert_eq!(total, 80, "{}", db.name());
    for run in runs {
        let s = engine.snapshot(run).await.expect("snapshot");
        assert_eq!(s.status, RunStatus::Completed);
        assert_eq!(s.attempts[0].claims, 1, "claimed once");
        let claimed = engine
            .journal(run)
            .await
            .expect("journal")
            .iter()
            .filter(|(_, f)| matches!(f, Fact::AttemptClaimed { .. }))
            .count();
        assert_eq!(claimed, 1, "one claim journaled");
    }
    let (a, b) = (engine.fenced_claims(), other.fenced_claims());
    let (written, missed) = (a.0 + b.0, a.1 + b.1);
    match db {
        Db::Postgres { .. } => {
            assert!(written > 0, "claims written fenced: {written}");
            eprintln!("fenced claims: {written} written, {missed} went under lock");
        }
        Db::Sqlite(_) => assert_eq!((written, missed), (0, 0)),
    }
}
on_each_backend!(concurrent_workers_claim_every_attempt_exactly_once);

/// Opens an engine on the SQLite file at `path`, runs a workflow to completion and closes it.
async fn completes_a_run_in(path: &std::path::Path) {
    let engine = Engine::builder()
        .sqlite(path)
        .registry(registry())
        .clock(ManualClock::new(T0))
        .build()
        .await
        .expect("opens the file");
    let run = engine
        .start(&linear(), None, order(), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(run.run_id).await.expect("snapshot").status,
        RunStatus::Completed
    );
    engine.close().await;
}

/// A file laid out by an earlier version (tables without the prefix, history in
/// `_sqlx_migrations`, as `sqlx migrate` leaves it) is renamed in place: its data and history
/// carry on and nothing is applied twice; a migration changed after it was applied is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_of_an_earlier_layout_is_renamed_in_place() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("earlier.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let connect = || async {
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("pool")
    };
    async fn history(pool: &SqlitePool, table: &str) -> Vec<(i64, Vec<u8>, String)> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, checksum, installed_on FROM {table} ORDER BY version"
        )))
        .fetch_all(pool)
        .await
        .expect("history")
    }
    let pool = connect().await;
    sqlx::migrate!("../migrations/sqlite")
        .run(&pool)
        .await
        .expect("sqlx migrates");
    sqlx::query("UPDATE catalog_version SET version = 7")
        .execute(&pool)
        .await
        .expect("marks the data");
    let before = history(&pool, "_sqlx_migrations").await;
    pool.close().await;
    assert!(!before.is_empty());

    completes_a_run_in(&path).await;

    let pool = connect().await;
    assert_eq!(
        history(&pool, "squid_mesh_migrations").await,
        before,
        "the history moved, nothing applied again"
    );
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM squid_mesh_catalog_version")
        .fetch_one(&pool)
        .await
        .expect("the data moved with its table");
    assert_eq!(version, 7);
    let unprefixed: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE name NOT LIKE 'squid\\_mesh\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&pool)
    .await
    .expect("reads");
    assert_eq!(
        unprefixed,
        vec![],
        "every table, index and the history renamed"
    );
    sqlx::query("UPDATE squid_mesh_migrations SET checksum = x'00' WHERE version = 1")
        .execute(&pool)
        .await
        .expect("tampers");
    pool.close().await;
    let err = Engine::builder()
        .sqlite(&path)
        .registry(registry())
        .build()
        .await
        .expect_err("a changed migration is refused");
    assert!(
        err.to_string().contains("changed after it was applied"),
        "{err}"
    );
}

/// The runtime lives in a host application's own SQLite database: its tables and migration
/// history carry the `squid_mesh_` prefix, so the host's `runs` and `journal` tables and its
/// own sqlx migrations (before and after) are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_shares_a_host_sqlite_database() {
    use sqlx::migrate::Migrator;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("host.db");
    let host_migrations = dir.path().join("migrations");
    std::fs::create_dir(&host_migrations).expect("dir");
    std::fs::write(
        host_migrations.join("1_host.sql"),
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, note TEXT);\n\
         CREATE TABLE journal (id INTEGER PRIMARY KEY, line TEXT);\n\
         CREATE INDEX attempts_due ON runs (note);\n\
         INSERT INTO runs (note) VALUES ('the host''s row');",
    )
    .expect("writes");
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true),
        )
        .await
        .expect("pool");
    Migrator::new(host_migrations.as_path())
        .await
        .expect("host migrations")
        .run(&pool)
        .await
        .expect("host migrates");

    completes_a_run_in(&path).await;

    let notes: Vec<(String,)> = sqlx::query_as("SELECT note FROM runs")
        .fetch_all(&pool)
        .await
        .expect("the host's table");
    assert_eq!(notes, vec![(String::from("the host's row"),)]);
    let host_history: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations")
        .fetch_all(&pool)
        .await
        .expect("the host's history");
    assert_eq!(host_history, vec![(1,)], "only the host's own migrations");
    // The host goes on migrating its own schema.
    std::fs::write(
        host_migrations.join("2_more.sql"),
        "ALTER TABLE runs ADD COLUMN extra TEXT;",
    )
    .expect("writes");
    Migrator::new(host_migrations.as_path())
        .await
        .expect("host migrations")
        .run(&pool)
        .await
        .expect("the host's next migration applies beside the runtime's tables");
    pool.close().await;
    // And the runtime reopens the file as it left it.
    Engine::builder()
        .sqlite(&path)
        .registry(registry())
        .build()
        .await
        .expect("reopens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_owned_pools_work_on_both_databases() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("host.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("host pool");
    let clock = ManualClock::new(T0);
    let engine = Engine::builder()
        .sqlite_pool(pool)
        .registry(registry())
        .clock(clock.clone())
        .build()
        .await
        .expect("engine");
    let run = engine
        .start(&linear(), None, order(), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(run.run_id).await.expect("snapshot").status,
        RunStatus::Completed
    );

    let Some(url) = crate::backends::postgres_url().await else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("host pool");
    let schema = format!(
        "sm_pool_{}",
        squid_mesh::RunId::random().to_string().replace('-', "")
    );
    let engine = Engine::builder()
        .postgres_pool(pool.clone())
        .postgres_schema(&schema)
        .registry(registry())
        .clock(clock.clone())
        .build()
        .await
        .expect("engine");
    let run = engine
        .start(&linear(), None, order(), StartOptions::default())
        .await
        .expect("starts");
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(run.run_id).await.expect("snapshot").status,
        RunStatus::Completed
    );
    // The tables live in the schema, not in the host connections' search_path.
    let (in_schema,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.runs"
    )))
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(in_schema, 1);
    let (public,): (Option<String>,) = sqlx::query_as("SELECT to_regclass('public.runs')::text")
        .fetch_one(&pool)
        .await
        .expect("regclass");
    assert_eq!(public, None);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&pool)
        .await;
}

async fn a_chained_call_runs_a_runs_steps_back_to_back(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    engine.register_workflow(linear()).expect("valid");
    let run = engine
        .start("checkout", None, order(), StartOptions::default())
        .await
        .expect("starts");
    let chained = opts("chainer").chain(8);
    // One call: validate, then charge, claimed by validate's completion.
    let s = engine
        .execute_next(chained.clone())
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
    assert_eq!(s.attempts.len(), 2);
    assert!(
        s.attempts
            .iter()
            .all(|a| a.claims == 1 && a.owner.as_deref() == Some("chainer"))
    );
    let claims = engine
        .journal(run.run_id)
        .await
        .expect("journal")
        .iter()
        .filter(|(_, f)| f.kind() == "attempt_claimed")
        .count();
    assert_eq!(claims, 2, "every chained step is claimed and journaled");
    assert_consistent(&engine, &s).await;
    assert!(
        engine
            .execute_next(chained.clone())
            .await
            .expect("ok")
            .is_none()
    );

    // Without chaining, one call runs one step.
    let run = engine
        .start("checkout", None, json!({"order_id": "o-2", "items": [{"sku": "tea", "quantity": 1, "unit_price_cents": 450}]}), StartOptions::default())
        .await
        .expect("starts");
    let one = opts("single").chain(0);
    let s = engine
        .execute_next(one.clone())
        .await
        .expect("ok")
        .expect("progress");
    assert_eq!(s.run_id, run.run_id);
    assert_eq!(s.status, RunStatus::Running);
    assert_eq!(
        s.attempts_of("charge")[0].status,
        squid_mesh::vocab::AttemptStatus::Scheduled
    );
    // A chain of one more step finishes it; a failed step's immediate retry is chained too.
    let charge = charge_spec(false);
    let run = engine
        .start(
            &charge,
            None,
            json!({"order_id": "o", "amount_cents": 5, "succeed_on_attempt": 2}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed);
    assert_consistent(&engine, &s).await;
    let s = engine.execute_next(opts("w").chain(1)).await.expect("ok");
    assert!(s.is_none(), "everything ran");
}
on_each_backend!(a_chained_call_runs_a_runs_steps_back_to_back);

/// A step error whose message and details carry secrets is stored redacted everywhere (the
/// attempt's outcome, the run's error, the journal), unless the host turns the policy off.
async fn secrets_in_step_errors_are_redacted_before_they_are_stored(db: Db, clock: ManualClock) {
    let registry = registry();
    registry
        .register(file_action("conformance", artifacts::CONFORMANCE.as_ref()))
        .expect("registers");
    let spec = WorkflowSpec::builder("leaky")
        .trigger(Trigger::manual("m").string("op").string("reason"))
        .step(Step::action("call", "conformance"))
        .build();
    let reason = r#"401 with Authorization: Bearer abc.def.ghi; retry token=tok-123 body {"password": "hunter2"}"#;
    let secrets = ["abc.def.ghi", "tok-123", "hunter2"];
    for (policy, redacted) in [
        (squid_mesh::redact::RedactionPolicy::default(), true),
        (squid_mesh::redact::RedactionPolicy::off(), false),
    ] {
        let engine = db
            .builder(&registry, &clock)
            .redaction(policy)
            .build()
            .await
            .expect("engine builds");
        let run = engine
            .start(
                &spec,
                None,
                json!({"op": "fail_fatal", "reason": reason}),
                StartOptions::default(),
            )
            .await
            .expect("starts");
        drain(&engine).await;
        let snap = engine.snapshot(run.run_id).await.expect("snapshot");
        assert_eq!(snap.status, RunStatus::Failed, "{}", db.name());
        // Where the error is stored (the input is the host's own data, kept as given).
        let outcomes: Vec<_> = snap.attempts.iter().map(|a| &a.outcome).collect();
        let facts: Vec<_> = engine
            .journal(run.run_id)
            .await
            .expect("journal")
            .into_iter()
            .filter(|(_, f)| matches!(f, Fact::AttemptRecorded { .. } | Fact::RunTerminal { .. }))
            .collect();
        let stored = format!(
            "{} {} {facts:?}",
            serde_json::to_string(&snap.error).expect("json"),
            serde_json::to_string(&outcomes).expect("json"),
        );
        for secret in secrets {
            assert_eq!(
                !stored.contains(secret),
                redacted,
                "{secret} in {stored} ({})",
                db.name()
            );
        }
        if redacted {
            assert!(stored.contains("[REDACTED]"));
            let error = &snap.error.as_ref().expect("an error")["code"];
            assert_eq!(error, &json!("request_rejected"), "the code is kept");
        }
    }
}
on_each_backend!(secrets_in_step_errors_are_redacted_before_they_are_stored);

/// A SQLite file with tables named like the runtime's (`squid_mesh_...`) but no history of
/// the runtime is refused before anything is written: no history is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_sqlite_database_is_refused_untouched() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("host.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut c = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("creates");
    sqlx::query("CREATE TABLE squid_mesh_runs (id INTEGER PRIMARY KEY, note TEXT)")
        .execute(&mut c)
        .await
        .expect("host table");
    let err = Engine::builder()
        .sqlite(&path)
        .build()
        .await
        .expect_err("not our database");
    assert!(err.to_string().contains("squid_mesh_runs"), "{err}");
    assert!(!err.is_retryable());
    let (history,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('_sqlx_migrations', 'squid_mesh_migrations')",
    )
    .fetch_one(&mut c)
    .await
    .expect("reads");
    assert_eq!(history, 0, "nothing written");
}

async fn close_stops_background_work_and_releases_wasm_steps(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    // Lanes run: a first run completes through the group commit.
    let first = engine
        .start(&linear(), None, order(), StartOptions::default())
        .await
        .expect("starts");
    assert_eq!(drain(&engine).await, 2, "{}", db.name());
    engine.close().await;
    engine.close().await; // idempotent

    // After close, a WebAssembly step is not run: its claim is released, not failed.
    let second = engine
        .start(&linear(), None, order(), StartOptions::default())
        .await
        .expect("starts after close");
    let err = engine
        .execute_next(opts("w"))
        .await
        .expect_err("host closed");
    assert_eq!(err.code(), "host_closed", "{}", db.name());
    assert!(err.is_retryable());
    let s = engine.snapshot(second.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Running);
    assert_eq!(
        s.attempts[0].status,
        squid_mesh::vocab::AttemptStatus::Scheduled,
        "released for another process"
    );
    assert!(s.attempts[0].outcome.is_none());

    // Another engine on the same database runs it (and writes without lanes is fine).
    let other = db.engine(&registry(), &clock).await;
    clock.advance(Duration::from_secs(2));
    assert_eq!(drain(&other).await, 2, "{}", db.name());
    let s = other.snapshot(second.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(
        engine.snapshot(first.run_id).await.expect("s").status,
        RunStatus::Completed
    );
    assert!(
        engine
            .verify_run(second.run_id)
            .await
            .expect("verify")
            .is_empty()
    );
}
on_each_backend!(close_stops_background_work_and_releases_wasm_steps);
