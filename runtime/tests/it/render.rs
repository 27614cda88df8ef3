//! Snapshot tests (insta) of the plain-text renderings the CLI prints: a run paused at an
//! approval, on SQLite with a fixed run id and a manual clock, so the text is the same on
//! every machine. A change to a rendering shows as a diff of `snapshots/*.snap`; accept it
//! with `INSTA_UPDATE=always` (or `cargo insta review`) after reading it.

use std::time::Duration;

use serde_json::json;
use squid_mesh::actions::LogLevel;
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::ExecuteOptions;
use squid_mesh::inspect::{InspectOptions, Page, RunFilter, render};
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{Engine, RunId, StartOptions};

use crate::backends::T0;

fn spec() -> WorkflowSpec {
    WorkflowSpec::builder("refund_request")
        .version("v3")
        .trigger(Trigger::manual("manual").string("order_id"))
        .step(Step::log("received", LogLevel::Info, "refund requested"))
        .step(Step::approval("review").output("review"))
        .step(Step::log("refund", LogLevel::Info, "refunding"))
        .step(Step::log("decline", LogLevel::Info, "declined"))
        .on_ok("received", "review")
        .on_ok("review", "refund")
        .on_error("review", "decline")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renderings_of_a_paused_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let engine = Engine::builder()
        .sqlite(dir.path().join("render.db"))
        .clock(clock.clone())
        .build()
        .await
        .expect("engine");
    let run_id: RunId = "7d9a4c3e-2f1b-4e8a-9c6d-5b4a3f2e1d0c"
        .parse()
        .expect("uuid");
    engine
        .start(
            &spec(),
            None,
            json!({"order_id": "o-42"}),
            StartOptions::default().run_id(run_id),
        )
        .await
        .expect("starts");
    for _ in 0..2 {
        clock.advance(Duration::from_millis(250));
        engine
            .execute_next(ExecuteOptions::default().owner_id("renderer"))
            .await
            .expect("executes");
    }
    clock.advance(Duration::from_secs(60));
    let opts = InspectOptions::default().include_history(true);
    let inspection = engine
        .inspect_run(run_id, opts.clone())
        .await
        .expect("inspect");
    let graph = engine
        .inspect_run_graph(run_id, opts.clone())
        .await
        .expect("graph");
    let why = engine.explain_run(run_id, opts).await.expect("explain");
    let page = engine
        .list_runs(&RunFilter::default(), &Page::default())
        .await
        .expect("list");
    insta::assert_snapshot!("inspection", render::inspection_text(&inspection));
    insta::assert_snapshot!("graph", render::graph_text(&graph));
    insta::assert_snapshot!("explanation", render::explanation_text(&why));
    insta::assert_snapshot!("page", render::page_text(&page));
}
