//! The sandbox: real Rust actions, every limit's typed error, capabilities, built-ins.

use std::time::Duration;

use serde_json::json;
use squid_mesh::ActionTarget;
use squid_mesh::actions::{
    ActionLimits, ActionRegistry, Builtin, Capabilities, DirGrant, LoadSource, LogLevel,
    StepErrorKind, StepOutcome, Suspension,
};
use squid_mesh_example_artifacts as artifacts;

use crate::support::*;
use crate::wat;

async fn rust_host() -> squid_mesh::ActionHost {
    let host = host(ActionRegistry::new());
    for (k, path) in [
        ("orders.validate", artifacts::VALIDATE_ORDER),
        ("payments.charge", artifacts::CHARGE_PAYMENT),
        ("payments.refund", artifacts::REFUND_PAYMENT),
        ("echo", artifacts::ECHO),
    ] {
        host.register(file_action(k, path.as_ref()))
            .await
            .expect("example action registers");
    }
    host
}

/// After a misbehaving guest, the host must still serve ordinary invocations.
async fn still_serves(host: &squid_mesh::ActionHost) {
    if host.registry().get(&key("wat.echo")).is_none() {
        host.register(wat_action("wat.echo", &wat::echo()))
            .await
            .expect("echo registers");
    }
    let inv = invoke(host, "wat.echo", json!({"still": "alive"})).await;
    assert_eq!(expect_ok(&inv), &obj(json!({"still": "alive"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_actions_run_with_typed_input_and_output() {
    let host = rust_host().await;
    let order = json!({
        "order_id": "o-1",
        "items": [
            {"sku": "tea", "quantity": 2, "unit_price_cents": 450},
            {"sku": "cup", "quantity": 1, "unit_price_cents": 1200}
        ]
    });
    let inv = invoke(&host, "orders.validate", order).await;
    assert_eq!(
        expect_ok(&inv),
        &obj(json!({"order_id": "o-1", "total_cents": 2100, "item_count": 3, "currency": "EUR"}))
    );
    assert_eq!(inv.diagnostics.logs.len(), 1);
    assert_eq!(inv.diagnostics.logs[0].level, LogLevel::Info);
    assert!(inv.diagnostics.logs[0].message.contains("order o-1 valid"));

    let inv = invoke(
        &host,
        "payments.charge",
        json!({"order_id": "o-1", "amount_cents": 2100}),
    )
    .await;
    let charged = expect_ok(&inv);
    assert!(
        charged["charge_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("ch_"))
    );
    let charge_id = charged["charge_id"].clone();

    let inv = invoke(
        &host,
        "payments.refund",
        json!({"charge_id": charge_id, "amount_cents": 2100}),
    )
    .await;
    assert_eq!(expect_ok(&inv)["refunded_cents"], json!(2100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_errors_keep_their_code_and_retry_hints() {
    let host = rust_host().await;

    let err = expect_err(
        &invoke(
            &host,
            "orders.validate",
            json!({"order_id": "o", "items": []}),
        )
        .await,
    )
    .clone();
    assert_eq!(
        (err.kind, err.code.as_str(), err.retryable),
        (StepErrorKind::Action, "empty_order", false)
    );

    let bad_line =
        json!({"order_id": "o", "items": [{"sku": "x", "quantity": 0, "unit_price_cents": 1}]});
    let err = expect_err(&invoke(&host, "orders.validate", bad_line).await).clone();
    assert_eq!(err.code, "invalid_line");
    assert_eq!(err.details, Some(obj(json!({"line": 0, "sku": "x"}))));

    let err = expect_err(&invoke(&host, "orders.validate", json!({"items": "nope"})).await).clone();
    assert_eq!((err.code.as_str(), err.retryable), ("invalid_input", false));

    let flaky = json!({"order_id": "o", "amount_cents": 5, "succeed_on_attempt": 3, "retry_after_ms": 1500});
    let err = expect_err(&invoke(&host, "payments.charge", flaky.clone()).await).clone();
    assert_eq!(
        (err.code.as_str(), err.retryable, err.retry_after_ms),
        ("gateway_unavailable", true, Some(1500))
    );
    let third = host
        .invoke(
            &ActionTarget::Wasm(key("payments.charge")),
            &ctx("charge", 3),
            &obj(flaky),
        )
        .await
        .expect("runs");
    assert_eq!(expect_ok(&third)["attempt"], json!(3));

    let declined = json!({"order_id": "o", "amount_cents": 5, "decline": true});
    let err = expect_err(&invoke(&host, "payments.charge", declined).await).clone();
    assert_eq!((err.code.as_str(), err.retryable), ("card_declined", false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_action_is_a_trap_with_its_message() {
    let host = rust_host().await;
    let inv = invoke(
        &host,
        "payments.charge",
        json!({"order_id": "o", "amount_cents": 5, "panic_with": "ledger is on fire"}),
    )
    .await;
    let err = expect_err(&inv);
    assert_eq!(
        (err.kind, err.code.as_str(), err.retryable),
        (StepErrorKind::Trap, "trap", false)
    );
    assert!(err.message.contains("ledger is on fire"), "{}", err.message);
    assert!(inv.diagnostics.stderr.contains("ledger is on fire"));
    still_serves(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_reports_name_version_and_schemas() {
    let host = rust_host().await;
    let (d, _) = host
        .prepare(&key("orders.validate"))
        .await
        .expect("describes");
    assert_eq!(d.name, "orders.validate");
    assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(d.summary, "Checks an order's lines and computes its total");
    assert_eq!(
        d.input_schema
            .as_ref()
            .and_then(|s| s["required"].as_array())
            .map(Vec::len),
        Some(2)
    );
    assert!(d.output_schema.is_some());
    let (d, _) = host.prepare(&key("echo")).await.expect("describes");
    assert_eq!((d.name.as_str(), d.input_schema), ("echo", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_and_logs_are_captured_within_a_bound() {
    let host = rust_host().await;
    let inv = invoke(&host, "echo", json!({"print_lines": 2, "log_lines": 2})).await;
    assert_eq!(inv.diagnostics.stdout, "echo line 0\necho line 1\n");
    assert_eq!(inv.diagnostics.logs.len(), 2);
    assert_eq!(inv.diagnostics.dropped_bytes, 0);

    let limits = ActionLimits {
        max_log_bytes: 100,
        ..ActionLimits::default()
    };
    host.register(file_action("echo.small", artifacts::ECHO.as_ref()).with_limits(limits))
        .await
        .expect("registers");
    let inv = invoke(
        &host,
        "echo.small",
        json!({"print_lines": 1000, "log_lines": 1000}),
    )
    .await;
    // A flood of output is dropped, not failed: the action still succeeds.
    expect_ok(&inv);
    assert!(inv.diagnostics.stdout.len() <= 100);
    assert!(
        inv.diagnostics.dropped_bytes > 10_000,
        "{}",
        inv.diagnostics.dropped_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_environment_files_or_sockets_unless_granted() {
    let host = rust_host().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("note.txt"), "granted").expect("write");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    // SAFETY of the test: this variable exists on the host, so a leak would show.
    let probe = json!({
        "env_var": "PATH",
        "read_file": "/data/note.txt",
        "connect": addr,
    });
    let out = expect_ok(&invoke(&host, "echo", probe.clone()).await).clone();
    assert_eq!(out["env_value"], json!(null));
    assert!(out["file"]["error"].is_string(), "{}", out["file"]);
    assert!(
        out["connect_result"]["error"].is_string(),
        "{}",
        out["connect_result"]
    );

    let caps = Capabilities {
        env: [("PATH".to_owned(), "/granted".to_owned())].into(),
        dirs: vec![DirGrant {
            host: dir.path().to_owned(),
            guest: "/data".into(),
            read_only: true,
        }],
        network: vec![addr.clone()],
        dns: false,
        child_runs: false,
        dynamic_work: false,
    };
    host.register(file_action("echo.granted", artifacts::ECHO.as_ref()).with_capabilities(caps))
        .await
        .expect("registers");
    let out = expect_ok(&invoke(&host, "echo.granted", probe).await).clone();
    assert_eq!(out["env_value"], json!("/granted"));
    assert_eq!(out["file"], json!({"ok": "granted"}));
    assert_eq!(out["connect_result"], json!({"ok": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_becomes_its_typed_step_error() {
    let host = host(ActionRegistry::new());
    let fast = ActionLimits {
        timeout_ms: 200,
        ..ActionLimits::default()
    };
    let cases = [
        (
            "wat.loop",
            wat::infinite_loop(),
            fast.clone(),
            StepErrorKind::Timeout,
            true,
        ),
        (
            "wat.fuel",
            wat::infinite_loop(),
            ActionLimits {
                fuel: Some(1_000_000),
                ..ActionLimits::default()
            },
            StepErrorKind::FuelExhausted,
            false,
        ),
        (
            "wat.memory",
            wat::memory_bomb(),
            ActionLimits {
                memory_bytes: 4 << 20,
                ..ActionLimits::default()
            },
            StepErrorKind::MemoryLimit,
            false,
        ),
        (
            "wat.recursion",
            wat::deep_recursion(),
            ActionLimits::default(),
            StepErrorKind::StackOverflow,
            false,
        ),
        (
            "wat.trap",
            wat::trap(),
            ActionLimits::default(),
            StepErrorKind::Trap,
            false,
        ),
        (
            "wat.big",
            wat::oversized_output(2 << 20),
            ActionLimits {
                max_output_bytes: 1 << 20,
                ..ActionLimits::default()
            },
            StepErrorKind::OutputTooLarge,
            false,
        ),
        (
            "wat.array",
            wat::array_output(),
            ActionLimits::default(),
            StepErrorKind::InvalidOutput,
            false,
        ),
        (
            "wat.broken",
            wat::broken_json_output(),
            ActionLimits::default(),
            StepErrorKind::InvalidOutput,
            false,
        ),
    ];
    for (k, source, limits, kind, retryable) in cases {
        host.register(wat_action(k, &source).with_limits(limits))
            .await
            .expect("registers");
        let started = std::time::Instant::now();
        let inv = invoke(&host, k, json!({})).await;
        let err = expect_err(&inv);
        assert_eq!(err.kind, kind, "{k}: {err:?}");
        assert_eq!(err.code, kind.code(), "{k}");
        assert_eq!(err.retryable, retryable, "{k}");
        // Limits are enforced, not waited out: nothing here may hang the host.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{k} took {:?}",
            started.elapsed()
        );
        still_serves(&host).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_error_from_wat_keeps_retry_after() {
    let host = host(ActionRegistry::new());
    host.register(wat_action("wat.error", &wat::step_error()))
        .await
        .expect("registers");
    let err = expect_err(&invoke(&host, "wat.error", json!({})).await).clone();
    assert_eq!(
        (
            err.kind,
            err.code.as_str(),
            err.message.as_str(),
            err.retryable,
            err.retry_after_ms
        ),
        (
            StepErrorKind::Action,
            "boom",
            "it went boom",
            true,
            Some(250)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_export_is_refused_at_registration() {
    let host = host(ActionRegistry::new());
    let err = host
        .register(wat_action("wat.wrong", &wat::wrong_export()))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "invalid_component", "{err}");
    assert!(!err.is_retryable());
    assert!(host.registry().get(&key("wat.wrong")).is_none());
    still_serves(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_concurrent_invocations_do_not_block_others() {
    let host = host(ActionRegistry::new());
    let slow = ActionLimits {
        timeout_ms: 300,
        ..ActionLimits::default()
    };
    host.register(wat_action("wat.loop", &wat::infinite_loop()).with_limits(slow))
        .await
        .expect("registers");
    host.register(wat_action("wat.echo", &wat::echo()))
        .await
        .expect("registers");
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { invoke(&host, "wat.loop", json!({})).await })
        })
        .collect();
    // While four guests spin, echo invocations still complete (epoch yields keep the
    // executor free).
    for i in 0..20 {
        let inv = invoke(&host, "wat.echo", json!({"i": i})).await;
        assert_eq!(expect_ok(&inv)["i"], json!(i));
    }
    for l in loops {
        let inv = l.await.expect("task");
        assert_eq!(expect_err(&inv).kind, StepErrorKind::Timeout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_survives_a_restart() {
    let cache = tempfile::tempdir().expect("tempdir");
    let config = || squid_mesh::HostConfig::default().cache_dir(cache.path().to_owned());
    let registry = ActionRegistry::new();
    registry
        .register(file_action(
            "orders.validate",
            artifacts::VALIDATE_ORDER.as_ref(),
        ))
        .expect("registers");

    let first = squid_mesh::ActionHost::new(registry.clone(), config()).expect("host");
    let (_, source) = first.prepare(&key("orders.validate")).await.expect("loads");
    assert_eq!(source, LoadSource::Compiled);
    let (_, source) = first.prepare(&key("orders.validate")).await.expect("loads");
    assert_eq!(source, LoadSource::Memory);
    drop(first);

    let restarted = squid_mesh::ActionHost::new(registry, config()).expect("host");
    let (_, source) = restarted
        .prepare(&key("orders.validate"))
        .await
        .expect("loads");
    assert_eq!(source, LoadSource::DiskCache);
    let inv = invoke(
        &restarted,
        "orders.validate",
        json!({"order_id": "o", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 1}]}),
    )
    .await;
    assert_eq!(expect_ok(&inv)["total_cents"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_answer_through_the_same_interface() {
    let host = host(ActionRegistry::new());
    let run = |b: Builtin| {
        let host = host.clone();
        async move {
            host.invoke(&ActionTarget::Builtin(b), &ctx("b", 1), &obj(json!({})))
                .await
                .expect("builtin runs")
        }
    };
    let inv = run(Builtin::Wait { duration_ms: 1500 }).await;
    assert_eq!(
        inv.outcome,
        StepOutcome::Succeeded {
            output: Default::default(),
            continue_after_ms: Some(1500)
        }
    );
    let inv = run(Builtin::Log {
        level: LogLevel::Warn,
        message: "hello".into(),
    })
    .await;
    assert_eq!(inv.diagnostics.logs[0].message, "hello");
    assert_eq!(
        run(Builtin::Pause {}).await.outcome,
        StepOutcome::Suspended(Suspension::Pause)
    );
    assert_eq!(
        run(Builtin::Approval {}).await.outcome,
        StepOutcome::Suspended(Suspension::Approval)
    );
}
