//! The worker pool: wake-ups, concurrency, graceful shutdown and abandonment to lease expiry.

use std::time::{Duration, Instant};

use serde_json::json;
use squid_mesh::clock::ManualClock;
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{RunStatus, StartOptions, Worker};

use crate::backends::{Db, on_each_backend};
use crate::engine::{drain, registry};

fn nap() -> WorkflowSpec {
    WorkflowSpec::builder("nap")
        .trigger(Trigger::manual("m").integer("sleep_ms"))
        .step(Step::action("first", "echo").input(["sleep_ms"]))
        .step(Step::action("second", "echo"))
        .on_ok("first", "second")
        .build()
}

async fn wait_for_first_claim(engine: &squid_mesh::Engine, run: squid_mesh::RunId) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if engine.snapshot(run).await.expect("snapshot").attempts[0].status
            == squid_mesh::vocab::AttemptStatus::Claimed
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn wait_for(engine: &squid_mesh::Engine, run: squid_mesh::RunId, status: RunStatus) -> bool {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if engine.snapshot(run).await.expect("snapshot").status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn workers_wake_on_new_work_and_drain_runs_concurrently(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    // A poll interval far longer than the test: only wake-ups can drive these runs.
    let worker = Worker::builder(&engine)
        .concurrency(4)
        .owner_id("pool")
        .poll_interval(Duration::from_secs(3600))
        .start()
        .expect("starts");
    worker.ready().await;
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(
            engine
                .start(
                    &nap(),
                    None,
                    json!({"sleep_ms": 100}),
                    StartOptions::default(),
                )
                .await
                .expect("starts")
                .run_id,
        );
    }
    for run in &runs {
        assert!(
            wait_for(&engine, *run, RunStatus::Completed).await,
            "run {run} did not complete ({})",
            db.name()
        );
    }
    let owners: std::collections::BTreeSet<String> = {
        let mut o = std::collections::BTreeSet::new();
        for run in &runs {
            for a in engine.snapshot(*run).await.expect("snapshot").attempts {
                o.extend(a.owner);
            }
        }
        o
    };
    assert!(owners.len() > 1, "several slots worked: {owners:?}");
    assert_eq!(worker.shutdown(Duration::from_secs(5)).await, 16);
}
on_each_backend!(workers_wake_on_new_work_and_drain_runs_concurrently);

async fn shutdown_lets_in_flight_steps_finish_and_claims_nothing_new(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let worker = Worker::builder(&engine)
        .poll_interval(Duration::from_millis(20))
        .start()
        .expect("starts");
    let run = engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 400}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    // Wait until the slow first step is claimed, then shut down with a generous deadline.
    assert!(
        wait_for_first_claim(&engine, run.run_id).await,
        "never claimed ({})",
        db.name()
    );
    let executed = worker.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        executed, 1,
        "the in-flight step finished; nothing new was claimed"
    );
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(
        s.attempts[0].status,
        squid_mesh::vocab::AttemptStatus::Succeeded
    );
    assert_eq!(
        s.attempts[1].status,
        squid_mesh::vocab::AttemptStatus::Scheduled,
        "the next step waits for another worker"
    );
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(run.run_id).await.expect("snapshot").status,
        RunStatus::Completed
    );
}
on_each_backend!(shutdown_lets_in_flight_steps_finish_and_claims_nothing_new);

/// A step still running at the shutdown deadline is interrupted and given back, due at
/// once: another worker takes it without waiting for its 60 s lease.
async fn a_step_past_the_shutdown_deadline_is_given_back(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let worker = Worker::builder(&engine)
        .poll_interval(Duration::from_millis(20))
        .lease_for(Duration::from_secs(60))
        .heartbeat_interval(None)
        .start()
        .expect("starts");
    let run = engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 5000}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    assert!(
        wait_for_first_claim(&engine, run.run_id).await,
        "never claimed ({})",
        db.name()
    );
    let stopping = std::time::Instant::now();
    assert_eq!(worker.shutdown(Duration::from_millis(100)).await, 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "interrupted, not waited for: {:?}",
        stopping.elapsed()
    );
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    let a = &s.attempts[0];
    assert_eq!(
        (a.status, a.claims),
        (squid_mesh::vocab::AttemptStatus::Scheduled, 1),
        "given back ({})",
        db.name()
    );
    // Due now: the clock has not moved, and another worker claims it at once.
    let hook = squid_mesh::engine::AfterClaim::default();
    let again = {
        let engine = engine.clone();
        let o = crate::engine::opts("rescuer").after_claim(hook.clone());
        tokio::spawn(async move { engine.execute_next(o).await })
    };
    hook.claimed.notified().await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(
        (s.attempts[0].claims, s.attempts[0].owner.as_deref()),
        (2, Some("rescuer"))
    );
    again.abort();
}
on_each_backend!(a_step_past_the_shutdown_deadline_is_given_back);

async fn bad_worker_settings_are_structured_errors(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    assert_eq!(
        Worker::builder(&engine)
            .concurrency(0)
            .start()
            .expect_err("zero")
            .code(),
        "invalid_option",
        "{}",
        db.name()
    );
    assert_eq!(
        Worker::builder(&engine)
            .queues(["bad queue"])
            .start()
            .expect_err("queue")
            .code(),
        "invalid_option"
    );
    let err = Worker::builder(&engine)
        .lease_for(Duration::from_secs(1))
        .heartbeat_interval(Some(Duration::from_secs(2)))
        .start()
        .expect_err("hb");
    assert_eq!(err.problems()[0].path, "heartbeat_interval");
}
on_each_backend!(bad_worker_settings_are_structured_errors);

async fn postgres_notifications_wake_workers_of_other_engines(db: Db, clock: ManualClock) {
    if db.name() != "postgres" {
        return; // SQLite workers in other processes find work by polling.
    }
    let here = db.engine(&registry(), &clock).await;
    let elsewhere = db.engine(&registry(), &clock).await;
    let worker = Worker::builder(&here)
        .poll_interval(Duration::from_secs(3600))
        .start()
        .expect("starts");
    // The listener is subscribed: a start in another engine wakes this pool.
    worker.ready().await;
    let run = elsewhere
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 0}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    assert!(
        wait_for(&elsewhere, run.run_id, RunStatus::Completed).await,
        "the other engine's worker was never woken"
    );
    assert_eq!(worker.shutdown(Duration::from_secs(5)).await, 2);
}
on_each_backend!(postgres_notifications_wake_workers_of_other_engines);

/// `wait_for_run` returns when a worker of this process ends the run (woken, not polled), as
/// it is when the timeout passes first, when a command cancels the run, and refuses an unknown
/// run.
async fn waiting_for_a_run_to_end(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let worker = Worker::builder(&engine)
        .poll_interval(Duration::from_millis(20))
        .start()
        .expect("starts");
    let run = engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 0}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let s = engine
        .wait_for_run(run.run_id, Duration::from_secs(30))
        .await
        .expect("waits");
    assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
    assert_eq!(s.attempts.len(), 2);

    // Still running when the timeout passes: returned as it is.
    let slow = engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 3000}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    let t = Instant::now();
    let s = engine
        .wait_for_run(slow.run_id, Duration::from_millis(200))
        .await
        .expect("waits");
    assert!(!s.is_terminal(), "{:?}", s.status);
    assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(2));

    // A cancel wakes the waiter.
    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .wait_for_run(slow.run_id, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    engine
        .cancel(slow.run_id, squid_mesh::engine::CommandOptions::default())
        .await
        .expect("cancels");
    let s = waiting.await.expect("task").expect("waits");
    assert_eq!(s.status, RunStatus::Cancelled);

    let err = engine
        .wait_for_run(squid_mesh::RunId::random(), Duration::from_secs(1))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), "run_not_found");
    worker.shutdown(Duration::from_secs(5)).await;
}
on_each_backend!(waiting_for_a_run_to_end);

/// A start on a queue where a pool slot waits claims the run's first step for that slot in
/// the start's own transaction (the snapshot `start` returns shows it claimed), and the slot
/// runs it to the end; a start while every slot is busy leaves the step due, and a pool slot
/// that finishes a run claims the next due one in its last completion's transaction.
async fn an_idle_slot_is_handed_the_first_step_of_a_start(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let worker = Worker::builder(&engine)
        .concurrency(1)
        .poll_interval(Duration::from_secs(30))
        .start()
        .expect("starts");
    worker.ready().await;
    let mut handed = 0;
    for i in 0..20 {
        let run = engine
            .start(
                &nap(),
                None,
                json!({"sleep_ms": 0}),
                StartOptions::default(),
            )
            .await
            .expect("starts");
        if run.attempts[0].status == squid_mesh::vocab::AttemptStatus::Claimed {
            handed += 1;
        }
        // The poll interval is 30 s: only a hand-over or a wake-up gets the run done.
        let s = engine
            .wait_for_run(run.run_id, Duration::from_secs(20))
            .await
            .expect("waits");
        assert_eq!(s.status, RunStatus::Completed, "run {i} on {}", db.name());
        crate::engine::assert_consistent(&engine, &s).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        handed >= 10,
        "{handed} of 20 starts handed over on {}",
        db.name()
    );
    if matches!(db, Db::Postgres { .. }) {
        // Each start but the first (which stores the definition) was one statement.
        assert_eq!(engine.fenced_totals().2, 19);
    }

    // Busy slot: the second run's step stays due and is chained after the first run.
    let slow = engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 300}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    assert!(wait_for_first_claim(&engine, slow.run_id).await);
    let next = engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 0}),
            StartOptions::default(),
        )
        .await
        .expect("starts");
    assert_eq!(
        next.attempts[0].status,
        squid_mesh::vocab::AttemptStatus::Scheduled,
        "{}",
        db.name()
    );
    for run in [slow.run_id, next.run_id] {
        let s = engine
            .wait_for_run(run, Duration::from_secs(20))
            .await
            .expect("waits");
        assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
    }
    worker.shutdown(Duration::from_secs(5)).await;
}
on_each_backend!(an_idle_slot_is_handed_the_first_step_of_a_start);

/// Starts share group-commit transactions with each other and with completions. One that
/// conflicts (its run id names a run with another payload) fails alone with its own error;
/// the starts batched with it are written once each, and every run completes.
async fn concurrent_starts_with_a_conflict_in_the_batch(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let worker = Worker::builder(&engine)
        .concurrency(4)
        .poll_interval(Duration::from_millis(50))
        .start()
        .expect("starts");
    let taken = squid_mesh::RunId::random();
    engine
        .start(
            &nap(),
            None,
            json!({"sleep_ms": 0}),
            StartOptions::default().run_id(taken),
        )
        .await
        .expect("starts");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let opts = if i == 12 {
                StartOptions::default().run_id(taken)
            } else {
                StartOptions::default()
            };
            engine
                .start(&nap(), None, json!({"sleep_ms": i}), opts)
                .await
        }));
    }
    let mut started = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(run) => started.push(run.run_id),
            Err(e) => {
                assert_eq!(i, 12, "{e}");
                assert_eq!(e.code(), "idempotency_conflict", "{}", db.name());
            }
        }
    }
    assert_eq!(started.len(), 23, "{}", db.name());
    for run in started.into_iter().chain([taken]) {
        let s = engine
            .wait_for_run(run, Duration::from_secs(30))
            .await
            .expect("waits");
        assert_eq!(s.status, RunStatus::Completed, "{}", db.name());
        assert_eq!(s.attempts.len(), 2);
        crate::engine::assert_consistent(&engine, &s).await;
    }
    worker.shutdown(Duration::from_secs(5)).await;
}
on_each_backend!(concurrent_starts_with_a_conflict_in_the_batch);
