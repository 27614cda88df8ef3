//! Spans and trace context, read back from an in-memory OpenTelemetry exporter.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use squid_mesh::actions::LogLevel;
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::ManualAttrs;
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::telemetry::TraceParent;
use squid_mesh::{Engine, RunStatus, StartOptions};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::backends::{Db, T0};
use crate::engine::{drain, registry};

fn traced() -> WorkflowSpec {
    WorkflowSpec::builder("traced")
        .trigger(
            Trigger::manual("m")
                .string("order_id")
                .integer("amount_cents")
                .integer("succeed_on_attempt")
                .map("start_child")
                .boolean("trace")
                .integer("log_lines"),
        )
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["amount_cents"])
                .input_path("succeed_on_attempt", ["succeed_on_attempt"])
                .retry(2),
        )
        .approval_step("review", "review")
        .step(
            Step::action("spawn", "echo.parent")
                .input_path("start_child", ["start_child"])
                .input_path("trace", ["trace"])
                .input_path("log_lines", ["log_lines"])
                .output("spawned"),
        )
        .step(Step::log("declined", LogLevel::Warn, "declined"))
        .on_ok("charge", "review")
        .on_ok("review", "spawn")
        .on_error("review", "declined")
        .on_ok("spawn", "complete")
        .build()
}

fn child() -> WorkflowSpec {
    WorkflowSpec::builder("child")
        .trigger(Trigger::manual("m").string("parcel"))
        .step(Step::action("ship", "echo"))
        .build()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// A run with a retried step, an approval gate and a child run: one trace from the caller's
/// span through every step span (each with its `run` and `complete` children), the approve
/// command and the child run's steps; the action sees its step's `traceparent`.
#[tokio::test(flavor = "current_thread")]
async fn a_run_is_one_trace_of_step_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::Sqlite(dir.path().join("traced.db"));
    let clock = ManualClock::new(T0);
    let reg = registry();
    reg.register(
        crate::support::file_action("echo.parent", squid_mesh_example_artifacts::ECHO.as_ref())
            .with_capabilities(squid_mesh::Capabilities {
                child_runs: true,
                ..squid_mesh::Capabilities::default()
            }),
    )
    .expect("registers");
    let engine: Engine = db.engine(&reg, &clock).await;
    engine.register_workflow(child()).expect("valid");

    // The caller's own span: the run joins its trace.
    let request = tracing::info_span!("http_request");
    let caller_trace = request.context().span().span_context().trace_id();
    let run = {
        use tracing::Instrument as _;
        engine
            .start(
                &traced(),
                None,
                json!({"order_id": "o-1", "amount_cents": 500, "succeed_on_attempt": 2,
                       "start_child": {"workflow": "child", "key": "parcel", "payload": {"parcel": "p"}},
                       "trace": true, "log_lines": 1}),
                StartOptions::default(),
            )
            .instrument(request.clone())
            .await
            .expect("starts")
    };
    drop(request);
    drain(&engine).await;
    clock.advance(Duration::from_secs(60));
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(run.run_id).await.expect("snapshot").status,
        RunStatus::Paused
    );
    engine
        .approve(run.run_id, ManualAttrs::default().actor(json!("ana")))
        .await
        .expect("approves");
    drain(&engine).await;
    let s = engine.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let seen_by_action = s.context["spawned"]["trace_parent"]
        .as_str()
        .and_then(TraceParent::parse)
        .expect("the action read its traceparent");
    let child_id: squid_mesh::RunId = s.context["spawned"]["child"]["ok"]
        .as_str()
        .expect("a child")
        .parse()
        .expect("uuid");
    assert_eq!(
        engine.snapshot(child_id).await.expect("child").status,
        RunStatus::Completed
    );
    engine.close().await;
    provider.force_flush().expect("flushes");

    let spans = exporter.get_finished_spans().expect("spans");
    let trace = caller_trace;
    assert_eq!(
        hex(&seen_by_action.trace_id),
        trace.to_string(),
        "the action's traceparent continues the run's trace"
    );
    let steps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("step "))
        .collect();
    let named = |name: &str, attempt: &str| {
        steps
            .iter()
            .find(|s| s.name == name && attr(s, "attempt").as_deref() == Some(attempt))
            .unwrap_or_else(|| panic!("no {name} attempt {attempt} in {steps:#?}"))
    };
    let first = named("step charge", "1");
    let second = named("step charge", "2");
    let spawn = named("step spawn", "1");
    let ship = named("step ship", "1");
    assert_eq!(attr(first, "outcome").as_deref(), Some("failed"));
    assert_eq!(
        attr(first, "error_code").as_deref(),
        Some("gateway_unavailable")
    );
    assert_eq!(attr(second, "outcome").as_deref(), Some("succeeded"));
    assert_eq!(attr(spawn, "action").as_deref(), Some("echo.parent"));
    assert!(attr(spawn, "digest").is_some_and(|d| d.starts_with("sha256:")));
    assert_eq!(attr(ship, "workflow").as_deref(), Some("child"));
    for step in [first, second, spawn, ship] {
        assert_eq!(
            step.span_context.trace_id(),
            trace,
            "{} is in the caller's trace",
            step.name
        );
        for phase in ["squid_mesh.run", "squid_mesh.complete"] {
            assert!(
                spans
                    .iter()
                    .any(|s| s.name == phase && s.parent_span_id == step.span_context.span_id()),
                "{} has a {phase} child",
                step.name
            );
        }
    }
    // What the action logged is an event of its step's `run` span.
    let logged = spans.iter().any(|s| {
        s.name == "squid_mesh.run"
            && s.parent_span_id == spawn.span_context.span_id()
            && s.events.iter().any(|e| e.name.contains("echo log 0"))
    });
    assert!(logged, "the action's log record is in its span");
    let approve = spans
        .iter()
        .find(|s| s.name == "command approve")
        .expect("an approve span");
    assert_eq!(attr(approve, "actor").as_deref(), Some("ana"));
    let start = spans
        .iter()
        .find(|s| s.name == "squid_mesh.start" && s.span_context.trace_id() == trace)
        .expect("a start span in the caller's trace");
    assert_eq!(attr(start, "run_id"), Some(run.run_id.to_string()));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
