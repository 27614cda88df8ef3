//! Schedules on SQLite and Postgres with a manual clock: windows fire once, in their zone,
//! across daylight-saving changes; catch-up and overlap policies; pause, resume, backfill;
//! several engines on one database; the `cron_start` signal.

use std::time::Duration;

use serde_json::{Value, json};
use squid_mesh::actions::LogLevel;
use squid_mesh::clock::{ManualClock, Timestamp};
use squid_mesh::engine::{
    FireOrigin, FireOutcome, ManualAttrs, ScheduleCommand, ScheduleEventKind, ScheduleState,
    Signal, SignalKind,
};
use squid_mesh::inspect::{InspectOptions, Page, RunFilter};
use squid_mesh::spec::{CatchUp, Overlap, SchedulePolicy, Step, Trigger, WorkflowSpec};
use squid_mesh::{Engine, EngineError, RunStatus};

use crate::backends::{Db, T0, on_each_backend};
use crate::engine::{assert_consistent, drain, registry};

fn policy(catch_up: CatchUp, overlap: Overlap) -> SchedulePolicy {
    SchedulePolicy {
        catch_up,
        overlap,
        catch_up_limit: 5,
        ..SchedulePolicy::default()
    }
}

/// A workflow on `cron` in `tz`; with `hold`, each run stops at a pause gate and stays alive.
fn scheduled(name: &str, cron: &str, tz: &str, p: SchedulePolicy, hold: bool) -> WorkflowSpec {
    let b = WorkflowSpec::builder(name)
        .trigger(Trigger::cron("tick", cron, tz).policy(p))
        .step(Step::log("note", LogLevel::Info, "tick"));
    if hold {
        b.step(Step::pause("hold"))
            .on_ok("note", "hold")
            .on_ok("hold", "complete")
            .build()
    } else {
        b.build()
    }
}

async fn apply(engine: &Engine, spec: &WorkflowSpec) {
    engine
        .schedules()
        .apply(spec, None, ScheduleCommand::default())
        .await
        .expect("applies");
}

async fn runs_of(engine: &Engine, workflow: &str) -> Vec<squid_mesh::inspect::RunSummary> {
    engine
        .list_runs(&RunFilter::default().workflow(workflow), &Page::first(500))
        .await
        .expect("list")
        .runs
}

fn at(s: &str) -> Timestamp {
    Timestamp(
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("test instant")
            .timestamp_micros(),
    )
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

async fn fires_each_window_once_with_its_schedule_context(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = scheduled(
        "minutely",
        "* * * * *",
        "Etc/UTC",
        SchedulePolicy::default(),
        false,
    );
    let applied = engine
        .schedules()
        .apply(&spec, None, ScheduleCommand::by("ops"))
        .await
        .expect("applies");
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].next_fire_at, Some(at("2026-11-25T12:01:00Z")));
    assert!(
        engine
            .schedules()
            .fire_due()
            .await
            .expect("fires")
            .is_empty()
    );

    clock.advance(Duration::from_millis(60_250));
    let fired = engine.schedules().fire_due().await.expect("fires");
    assert_eq!(fired.len(), 1, "{}", db.name());
    assert_eq!(fired[0].outcome, FireOutcome::Started);
    assert_eq!(fired[0].origin, FireOrigin::Scheduler);
    assert_eq!(fired[0].lateness_ms, 250);
    assert!(
        engine
            .schedules()
            .fire_due()
            .await
            .expect("fires")
            .is_empty(),
        "a window fires once"
    );
    let run_id = fired[0]
        .run_id
        .as_deref()
        .expect("a run")
        .parse()
        .expect("id");
    let snap = engine.snapshot(run_id).await.expect("snapshot");
    let schedule = &snap.context["schedule"];
    assert_eq!(schedule["scheduled_at"], json!("2026-11-25T12:01:00.000Z"));
    assert_eq!(schedule["window_end"], json!("2026-11-25T12:02:00.000Z"));
    assert_eq!(schedule["cron"], json!("* * * * *"));
    assert_eq!(schedule["timezone"], json!("Etc/UTC"));
    assert_eq!(schedule["lateness_ms"], json!(250));
    assert_eq!(schedule["origin"], json!("scheduler"));
    drain(&engine).await;
    let snap = engine.snapshot(run_id).await.expect("snapshot");
    assert_eq!(snap.status, RunStatus::Completed);
    assert_consistent(&engine, &snap).await;

    let inspection = engine
        .inspect_run(run_id, InspectOptions::default())
        .await
        .expect("inspects");
    assert_eq!(
        inspection.schedule.as_ref().map(|s| s["key"].clone()),
        Some(json!("schedule:2026-11-25T12:01:00.000Z"))
    );
    let why = engine
        .explain_run(run_id, InspectOptions::default())
        .await
        .expect("explains");
    assert_eq!(
        why.evidence["schedule"]["scheduled_at"],
        json!("2026-11-25T12:01:00.000Z")
    );

    let detail = engine
        .schedules()
        .show("minutely", None, 10)
        .await
        .expect("shows");
    assert_eq!(
        detail.schedule.last_run_id.as_deref(),
        fired[0].run_id.as_deref()
    );
    assert_eq!(detail.fires.len(), 1);
    assert_eq!(detail.events[0].kind, ScheduleEventKind::Applied);
    assert_eq!(detail.events[0].actor.as_deref(), Some("ops"));
}
on_each_backend!(fires_each_window_once_with_its_schedule_context);

/// Fires hour by hour over `days` and returns the local times of the runs started.
async fn local_fires(db: &Db, clock: &ManualClock, spec: &WorkflowSpec, days: u64) -> Vec<String> {
    let engine = db.engine(&registry(), clock).await;
    engine
        .schedules()
        .apply(spec, None, ScheduleCommand::default())
        .await
        .expect("applies");
    let mut out = Vec::new();
    for _ in 0..days * 24 * 4 {
        clock.advance(minutes(15));
        let fired = engine.schedules().fire_due().await.expect("fires");
        for f in fired.into_iter().filter(|f| f.workflow == spec.name) {
            let id = f.run_id.expect("started").parse().expect("id");
            let snap = engine.snapshot(id).await.expect("snapshot");
            out.push(
                snap.context["schedule"]["scheduled_local"]
                    .as_str()
                    .expect("local time")
                    .to_owned(),
            );
        }
    }
    out
}

async fn daily_windows_across_daylight_saving_changes(db: Db, clock: ManualClock) {
    let allow = policy(CatchUp::Skip, Overlap::Allow);
    // Amsterdam springs forward on 2026-03-29 (02:00 -> 03:00).
    clock.set(at("2026-03-27T12:00:00Z"));
    let spec = scheduled(
        "ams_spring",
        "30 2 * * *",
        "Europe/Amsterdam",
        allow.clone(),
        false,
    );
    assert_eq!(
        local_fires(&db, &clock, &spec, 3).await,
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ],
        "{}",
        db.name()
    );
    // Amsterdam falls back on 2026-10-25 (03:00 -> 02:00): 02:30 happens twice.
    clock.set(at("2026-10-24T12:00:00Z"));
    let spec = scheduled(
        "ams_fall",
        "30 2 * * *",
        "Europe/Amsterdam",
        allow.clone(),
        false,
    );
    assert_eq!(
        local_fires(&db, &clock, &spec, 2).await,
        ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    );
    // New York springs forward on 2026-03-08 and falls back on 2026-11-01.
    clock.set(at("2026-03-07T12:00:00Z"));
    let spec = scheduled(
        "ny_spring",
        "30 2 * * *",
        "America/New_York",
        allow.clone(),
        false,
    );
    assert_eq!(
        local_fires(&db, &clock, &spec, 2).await,
        ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    );
    clock.set(at("2026-10-31T12:00:00Z"));
    let spec = scheduled("ny_fall", "30 1 * * *", "America/New_York", allow, false);
    assert_eq!(
        local_fires(&db, &clock, &spec, 2).await,
        ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    );
}
on_each_backend!(daily_windows_across_daylight_saving_changes);

async fn catch_up_policies_after_a_three_hour_outage(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    for (name, catch_up) in [
        ("skip", CatchUp::Skip),
        ("latest", CatchUp::Latest),
        ("all", CatchUp::All),
    ] {
        let spec = scheduled(
            name,
            "0 * * * *",
            "Etc/UTC",
            policy(catch_up, Overlap::Allow),
            false,
        );
        apply(&engine, &spec).await;
    }
    // No scheduler ran from 12:00 to 15:00:30; 13:00 and 14:00 are missed, 15:00 on time.
    clock.advance(Duration::from_secs(3 * 3600 + 30));
    engine.schedules().fire_due().await.expect("fires");
    let fired = |name: &'static str| {
        let engine = engine.clone();
        async move {
            let mut at: Vec<String> = Vec::new();
            for r in runs_of(&engine, name).await {
                let s = engine
                    .snapshot(r.run_id.parse().expect("id"))
                    .await
                    .expect("snapshot");
                at.push(
                    s.context["schedule"]["scheduled_at"]
                        .as_str()
                        .expect("t")
                        .to_owned(),
                );
            }
            at.sort();
            at
        }
    };
    assert_eq!(
        fired("skip").await,
        ["2026-11-25T15:00:00.000Z"],
        "{}",
        db.name()
    );
    assert_eq!(fired("latest").await, ["2026-11-25T15:00:00.000Z"]);
    assert_eq!(
        fired("all").await,
        [
            "2026-11-25T13:00:00.000Z",
            "2026-11-25T14:00:00.000Z",
            "2026-11-25T15:00:00.000Z"
        ]
    );
    let skip = engine
        .schedules()
        .show("skip", None, 10)
        .await
        .expect("shows");
    assert_eq!(skip.schedule.missed, 2);
    assert_eq!(skip.schedule.next_fire_at, Some(at("2026-11-25T16:00:00Z")));

    // Down again until 18:20: nothing is on time; `latest` fires 18:00 once.
    clock.set(at("2026-11-25T18:20:00Z"));
    engine.schedules().fire_due().await.expect("fires");
    assert_eq!(fired("skip").await.len(), 1);
    assert_eq!(
        fired("latest").await.last().map(String::as_str),
        Some("2026-11-25T18:00:00.000Z")
    );
    assert_eq!(fired("latest").await.len(), 2);
    assert_eq!(fired("all").await.len(), 6);
}
on_each_backend!(catch_up_policies_after_a_three_hour_outage);

async fn overlap_policies_while_the_previous_run_is_going(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    for (name, overlap) in [
        ("allow", Overlap::Allow),
        ("skip", Overlap::Skip),
        ("queue", Overlap::QueueOne),
    ] {
        let spec = scheduled(
            name,
            "* * * * *",
            "Etc/UTC",
            policy(CatchUp::Skip, overlap),
            true,
        );
        apply(&engine, &spec).await;
    }
    for _ in 0..3 {
        clock.advance(minutes(1));
        engine.schedules().fire_due().await.expect("fires");
        drain(&engine).await;
    }
    assert_eq!(runs_of(&engine, "allow").await.len(), 3, "{}", db.name());
    assert_eq!(runs_of(&engine, "skip").await.len(), 1);
    assert_eq!(runs_of(&engine, "queue").await.len(), 1);
    let queued = engine
        .schedules()
        .show("queue", None, 10)
        .await
        .expect("shows");
    assert_eq!(
        queued.schedule.queued_window,
        Some(at("2026-11-25T12:02:00Z"))
    );
    let outcomes: Vec<FireOutcome> = queued.fires.iter().map(|f| f.outcome).collect();
    assert_eq!(
        outcomes,
        [
            FireOutcome::Skipped,
            FireOutcome::Queued,
            FireOutcome::Started
        ],
        "newest first"
    );
    // The first run ends: the queued window starts, late.
    let first = runs_of(&engine, "queue").await[0]
        .run_id
        .parse()
        .expect("id");
    engine
        .resume(first, ManualAttrs::by("ops"))
        .await
        .expect("resumes");
    drain(&engine).await;
    clock.advance(Duration::from_secs(1));
    let fired = engine.schedules().fire_due().await.expect("fires");
    let started: Vec<_> = fired.iter().filter(|f| f.workflow == "queue").collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].scheduled_at, at("2026-11-25T12:02:00Z"));
    assert_eq!(started[0].outcome, FireOutcome::Started);
    assert_eq!(runs_of(&engine, "queue").await.len(), 2);
    let skip = engine
        .schedules()
        .show("skip", None, 10)
        .await
        .expect("shows");
    assert_eq!(
        skip.fires
            .iter()
            .filter(|f| f.outcome == FireOutcome::Skipped)
            .count(),
        2
    );
}
on_each_backend!(overlap_policies_while_the_previous_run_is_going);

async fn pause_and_resume_are_durable_with_their_actor(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = scheduled(
        "hourly",
        "@hourly",
        "Etc/UTC",
        SchedulePolicy::default(),
        false,
    );
    apply(&engine, &spec).await;
    let paused = engine
        .schedules()
        .pause(
            "hourly",
            Some("tick"),
            ScheduleCommand::by("ana").comment("maintenance"),
        )
        .await
        .expect("pauses");
    assert_eq!(paused.state, ScheduleState::Paused);
    // Another engine on the same database sees it paused.
    let other = db.engine(&registry(), &clock).await;
    clock.advance(Duration::from_secs(3 * 3600 + 10));
    assert!(
        other
            .schedules()
            .fire_due()
            .await
            .expect("fires")
            .is_empty()
    );
    assert!(runs_of(&engine, "hourly").await.is_empty(), "{}", db.name());
    let resumed = other
        .schedules()
        .resume("hourly", None, ScheduleCommand::by("ben"))
        .await
        .expect("resumes");
    assert_eq!(resumed.state, ScheduleState::Active);
    // Catch-up `latest` (the default): the most recent window fires once.
    let fired = engine.schedules().fire_due().await.expect("fires");
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].scheduled_at, at("2026-11-25T15:00:00Z"));
    let d = engine
        .schedules()
        .show("hourly", None, 10)
        .await
        .expect("shows");
    let trail: Vec<(&str, Option<&str>)> = d
        .events
        .iter()
        .map(|e| (e.kind.as_str(), e.actor.as_deref()))
        .collect();
    assert_eq!(
        trail,
        [
            ("applied", None),
            ("paused", Some("ana")),
            ("resumed", Some("ben"))
        ]
    );
    assert_eq!(d.events[1].comment.as_deref(), Some("maintenance"));
    let err = engine
        .schedules()
        .pause("nope", None, ScheduleCommand::default())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), "schedule_not_found");
}
on_each_backend!(pause_and_resume_are_durable_with_their_actor);

async fn backfill_starts_each_window_once(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let mut spec = scheduled(
        "report",
        "0 */2 * * *",
        "Europe/Amsterdam",
        SchedulePolicy::default(),
        false,
    );
    spec.triggers[0].payload.push(
        serde_json::from_value(json!({"name": "day", "type": "string", "default_from": "today"}))
            .expect("field"),
    );
    apply(&engine, &spec).await;
    let s = engine.schedules();
    let first = s
        .backfill(
            "report",
            None,
            at("2026-11-24T00:00:00Z"),
            at("2026-11-24T09:59:59Z"),
            ScheduleCommand::by("ops"),
        )
        .await
        .expect("backfills");
    // Amsterdam is UTC+1: windows at 23:00Z (the day before, out of range), 01:00Z ... 09:00Z.
    assert_eq!(first.windows, 5, "{}", db.name());
    assert_eq!(first.started.len(), 5);
    let again = s
        .backfill(
            "report",
            None,
            at("2026-11-24T00:00:00Z"),
            at("2026-11-24T11:00:00Z"),
            ScheduleCommand::by("ops"),
        )
        .await
        .expect("backfills");
    assert_eq!(
        (again.windows, again.started.len(), again.already),
        (6, 1, 5)
    );
    assert_eq!(runs_of(&engine, "report").await.len(), 6);
    let run = engine
        .snapshot(again.started[0].parse().expect("id"))
        .await
        .expect("snapshot");
    assert_eq!(run.context["schedule"]["origin"], json!("backfill"));
    // The 23:00Z window of the 23rd is already the 24th in Amsterdam.
    let late = s
        .backfill(
            "report",
            None,
            at("2026-11-23T23:00:00Z"),
            at("2026-11-23T23:00:00Z"),
            ScheduleCommand::default(),
        )
        .await
        .expect("backfills");
    let late = engine
        .snapshot(late.started[0].parse().expect("id"))
        .await
        .expect("snapshot");
    assert_eq!(
        late.input.get("day"),
        Some(&json!("2026-11-24")),
        "{:?}",
        late.input
    );
    assert_eq!(
        run.context["schedule"]["scheduled_local"],
        json!("2026-11-24T12:00:00+01:00")
    );

    let err = s
        .backfill(
            "report",
            None,
            at("2026-11-24T00:00:00Z"),
            at("2026-01-01T00:00:00Z"),
            ScheduleCommand::default(),
        )
        .await
        .expect_err("reversed");
    assert_eq!(err.problems()[0].code, "invalid_backfill_range");
    let err = s
        .backfill(
            "report",
            None,
            at("2025-01-01T00:00:00Z"),
            at("2026-01-01T00:00:00Z"),
            ScheduleCommand::default(),
        )
        .await
        .expect_err("too large");
    assert_eq!(err.problems()[0].code, "backfill_too_large");
    assert_eq!(runs_of(&engine, "report").await.len(), 7, "nothing written");
}
on_each_backend!(backfill_starts_each_window_once);

async fn several_engines_on_one_database_fire_one_run_per_window(db: Db, clock: ManualClock) {
    let engines = [
        db.engine(&registry(), &clock).await,
        db.engine(&registry(), &clock).await,
        db.engine(&registry(), &clock).await,
    ];
    let spec = scheduled(
        "shared",
        "*/10 * * * * *",
        "Etc/UTC",
        policy(CatchUp::All, Overlap::Allow),
        false,
    );
    engines[0]
        .schedules()
        .apply(&spec, None, ScheduleCommand::default())
        .await
        .expect("applies");
    let mut fired = 0;
    for _ in 0..12 {
        clock.advance(Duration::from_secs(10));
        let (a, b, c) = tokio::join!(
            engines[0].schedules().fire_due(),
            engines[1].schedules().fire_due(),
            engines[2].schedules().fire_due()
        );
        fired += a.expect("a").len() + b.expect("b").len() + c.expect("c").len();
    }
    assert_eq!(fired, 12, "{}", db.name());
    let runs = runs_of(&engines[0], "shared").await;
    assert_eq!(runs.len(), 12);
    let mut ids: Vec<_> = runs.iter().map(|r| r.run_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
}
on_each_backend!(several_engines_on_one_database_fire_one_run_per_window);

async fn cron_start_signals_share_the_window_key(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = scheduled(
        "hosted",
        "*/5 * * * *",
        "Etc/UTC",
        SchedulePolicy::default(),
        false,
    );
    engine.register_workflow(spec.clone()).expect("registers");
    let signal = |at: &str| {
        let mut s = Signal::new(SignalKind::CronStart, None, clock_now(&engine));
        s.payload.insert("workflow".into(), json!("hosted"));
        s.payload.insert("scheduled_for".into(), json!(at));
        s
    };
    let err = engine
        .apply_signal(signal("2026-11-25T12:05:00Z"))
        .await
        .expect_err("a window still to come");
    assert_eq!(err.problems()[0].code, "future_window", "{}", db.name());
    apply(&engine, &spec).await;
    clock.advance(Duration::from_millis(5 * 60_000 + 400));
    // A host timer sends its own "now": it is snapped to the window it fired for.
    let a = engine
        .apply_signal(signal("2026-11-25T12:05:00.347Z"))
        .await
        .expect("starts");
    let b = engine
        .apply_signal(signal("2026-11-25T12:05:00+00:00"))
        .await
        .expect("dedupes");
    assert_eq!(a.run_id, b.run_id, "{}", db.name());
    assert_eq!(a.context["schedule"]["origin"], json!("signal"));
    assert_eq!(
        a.context["schedule"]["scheduled_at"],
        json!("2026-11-25T12:05:00.000Z")
    );
    // The scheduler reaches the same window: it was handled; nothing more starts.
    assert!(
        engine
            .schedules()
            .fire_due()
            .await
            .expect("fires")
            .is_empty()
    );
    assert_eq!(runs_of(&engine, "hosted").await.len(), 1);
    let err = engine
        .apply_signal(signal("2026-11-25T12:07:30Z"))
        .await
        .expect_err("between windows");
    assert_eq!(err.problems()[0].code, "not_a_window");
    let mut bad = Signal::new(SignalKind::CronStart, None, clock_now(&engine));
    bad.payload.insert("workflow".into(), json!("hosted"));
    let err = engine.apply_signal(bad).await.expect_err("no window");
    assert_eq!(err.problems()[0].code, "missing_schedule_identity");
    let err = engine
        .apply_signal(signal("yesterday"))
        .await
        .expect_err("bad time");
    assert_eq!(err.code(), "invalid_option");
}
on_each_backend!(cron_start_signals_share_the_window_key);

fn clock_now(engine: &Engine) -> Timestamp {
    engine.now()
}

async fn bad_schedules_are_refused_and_nothing_is_written(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let codes = |e: EngineError| {
        e.problems()
            .iter()
            .map(|p| p.code.clone())
            .collect::<Vec<_>>()
    };
    let manual = WorkflowSpec::builder("manual_only")
        .trigger(Trigger::manual("m"))
        .step(Step::log("a", LogLevel::Info, "a"))
        .build();
    let err = engine
        .schedules()
        .apply(&manual, None, ScheduleCommand::default())
        .await
        .expect_err("no cron");
    assert_eq!(codes(err), ["no_cron_trigger"], "{}", db.name());
    let needs_input = WorkflowSpec::builder("needs_input")
        .trigger(Trigger::cron("tick", "@daily", "Etc/UTC").string("customer"))
        .step(Step::log("a", LogLevel::Info, "a"))
        .build();
    let err = engine
        .schedules()
        .apply(&needs_input, None, ScheduleCommand::default())
        .await
        .expect_err("required field");
    assert_eq!(codes(err), ["cron_field_without_default"]);
    let reversed = scheduled(
        "reversed",
        "@daily",
        "Etc/UTC",
        SchedulePolicy {
            start_at: Some("2027-01-01T00:00:00Z".parse().expect("t")),
            end_at: Some("2026-01-01T00:00:00Z".parse().expect("t")),
            ..SchedulePolicy::default()
        },
        false,
    );
    let err = engine
        .schedules()
        .apply(&reversed, None, ScheduleCommand::default())
        .await
        .expect_err("end before start");
    assert_eq!(codes(err), ["invalid_schedule_window"]);
    let err = engine
        .schedules()
        .apply(
            &scheduled("q", "@daily", "Etc/UTC", SchedulePolicy::default(), false),
            Some("bad queue"),
            ScheduleCommand::default(),
        )
        .await
        .expect_err("bad queue");
    assert_eq!(err.code(), "invalid_option");
    assert!(engine.schedules().list().await.expect("lists").is_empty());
}
on_each_backend!(bad_schedules_are_refused_and_nothing_is_written);

#[test]
fn policies_parse_from_files_and_unknown_values_are_refused() {
    let toml = r#"
name = "nightly"
[[triggers]]
name = "night"
type = "cron"
cron = "30 2 * * *"
timezone = "Europe/Amsterdam"
catch_up = "all"
catch_up_limit = 3
overlap = "queue_one"
jitter_ms = 5000
end_at = "2027-01-01T00:00:00Z"
[[steps]]
name = "a"
builtin = { kind = "log", level = "info", message = "hi" }
"#;
    let spec = WorkflowSpec::from_toml(toml).expect("parses");
    let squid_mesh::spec::TriggerKind::Cron { policy, .. } = &spec.triggers[0].kind else {
        panic!("a cron trigger");
    };
    assert_eq!(policy.catch_up, CatchUp::All);
    assert_eq!(policy.catch_up_limit, 3);
    assert_eq!(policy.overlap, Overlap::QueueOne);
    assert_eq!(policy.jitter_ms, 5000);
    // Round trip through JSON keeps the policy.
    let back = WorkflowSpec::from_json(&spec.to_json()).expect("round trip");
    assert_eq!(back, spec);
    let bad = toml.replace("queue_one", "sometimes");
    let err = WorkflowSpec::from_toml(&bad).expect_err("unknown policy");
    assert!(err.to_string().contains("sometimes"), "{err}");
    let manual =
        r#"{"name":"m","triggers":[{"name":"t","type":"manual","overlap":"skip"}],"steps":[]}"#;
    let err = WorkflowSpec::from_json(manual).expect_err("policy on a manual trigger");
    assert!(err.to_string().contains("schedule policy"), "{err}");
    let limit: Value = json!({"name":"w","triggers":[{"name":"t","type":"cron","cron":"@daily","timezone":"Etc/UTC","catch_up_limit":0}],"steps":[{"name":"a","builtin":{"kind":"log","level":"info","message":"x"}}]});
    let spec = WorkflowSpec::from_json(&limit.to_string()).expect("parses");
    let problems = spec.validate(None).expect_err("limit 0");
    assert_eq!(problems[0].code, "invalid_catch_up_limit");
    let _ = T0;
}

async fn reapplying_keeps_state_and_drops_triggers_the_spec_lost(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = scheduled(
        "reports",
        "@hourly",
        "Etc/UTC",
        SchedulePolicy::default(),
        false,
    );
    engine
        .schedules()
        .apply(&spec, Some("reporting"), ScheduleCommand::default())
        .await
        .expect("applies");
    engine
        .schedules()
        .pause("reports", None, ScheduleCommand::by("ana"))
        .await
        .expect("pauses");
    // Re-applied without a queue: queue and state stay.
    let again = engine
        .schedules()
        .apply(&spec, None, ScheduleCommand::default())
        .await
        .expect("applies");
    assert_eq!(again[0].queue, "reporting", "{}", db.name());
    assert_eq!(again[0].state, ScheduleState::Paused);
    // The trigger is renamed: the old schedule stops, the new one starts.
    let mut renamed = spec.clone();
    renamed.triggers[0].name = "every_hour".into();
    apply(&engine, &renamed).await;
    let all = engine.schedules().list().await.expect("lists");
    let triggers: Vec<&str> = all.iter().map(|s| s.trigger.as_str()).collect();
    assert_eq!(triggers, ["every_hour"]);
    // The spec loses its cron trigger altogether: its schedules go.
    let manual = WorkflowSpec::builder("reports")
        .trigger(Trigger::manual("m"))
        .step(Step::log("note", LogLevel::Info, "by hand"))
        .build();
    let applied = engine
        .schedules()
        .apply(&manual, None, ScheduleCommand::default())
        .await
        .expect("applies");
    assert!(applied.is_empty());
    assert!(engine.schedules().list().await.expect("lists").is_empty());
    // A schedule that can never fire is refused.
    let never = scheduled(
        "never",
        "0 0 30 2 *",
        "Etc/UTC",
        SchedulePolicy::default(),
        false,
    );
    let err = engine
        .schedules()
        .apply(&never, None, ScheduleCommand::default())
        .await
        .expect_err("February 30th");
    assert_eq!(err.problems()[0].code, "schedule_never_fires");
}
on_each_backend!(reapplying_keeps_state_and_drops_triggers_the_spec_lost);

async fn a_schedule_that_cannot_fire_does_not_hold_up_the_others(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let allow = policy(CatchUp::Skip, Overlap::Allow);
    apply(
        &engine,
        &scheduled("broken", "* * * * *", "Etc/UTC", allow.clone(), false),
    )
    .await;
    apply(
        &engine,
        &scheduled("healthy", "* * * * *", "Etc/UTC", allow, false),
    )
    .await;
    db.execute("UPDATE schedules SET policy = 'not json' WHERE workflow = 'broken'")
        .await;
    for _ in 0..3 {
        clock.advance(minutes(1));
        let fired = engine.schedules().fire_due().await.expect("fires");
        assert!(
            fired.iter().all(|f| f.workflow == "healthy"),
            "{}",
            db.name()
        );
    }
    assert_eq!(runs_of(&engine, "healthy").await.len(), 3);
    assert!(runs_of(&engine, "broken").await.is_empty());
    let broken = engine.schedules().show("broken", Some("tick"), 10).await;
    assert_eq!(broken.expect_err("undecodable").code(), "corrupt_state");
    assert!(engine.schedules().list().await.expect("lists").len() == 1);
}
on_each_backend!(a_schedule_that_cannot_fire_does_not_hold_up_the_others);

async fn under_skip_the_newest_of_several_due_windows_starts(db: Db, clock: ManualClock) {
    let engine = db.engine(&registry(), &clock).await;
    let spec = scheduled(
        "tens",
        "*/10 * * * * *",
        "Etc/UTC",
        SchedulePolicy::default(),
        false,
    );
    apply(&engine, &spec).await;
    // A stop shorter than the grace: 12:00:10, :20 and :30 are all on time.
    clock.advance(Duration::from_secs(35));
    let fired = engine.schedules().fire_due().await.expect("fires");
    let outcomes: Vec<(Timestamp, FireOutcome)> =
        fired.iter().map(|f| (f.scheduled_at, f.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (at("2026-11-25T12:00:10Z"), FireOutcome::Skipped),
            (at("2026-11-25T12:00:20Z"), FireOutcome::Skipped),
            (at("2026-11-25T12:00:30Z"), FireOutcome::Started)
        ],
        "{}",
        db.name()
    );
    assert_eq!(runs_of(&engine, "tens").await.len(), 1);
}
on_each_backend!(under_skip_the_newest_of_several_due_windows_starts);
