//! The action catalog in the database: approvals reach every engine on it without a
//! restart; disabled and unknown actions make steps wait (explained); revoked versions fail
//! closed; component bytes come from the database, checked against their digest.

use serde_json::{Value, json};
use squid_mesh::actions::{ActionError, ActionLimits, ActionRegistry, HostConfig};
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::{Approval, CatalogCommand};
use squid_mesh::inspect::{InspectOptions, NextAction, Reason};
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{
    ActionKey, ActionState, CatalogEventKind, Engine, EngineError, RunStatus, StartOptions,
};
use squid_mesh_example_artifacts as artifacts;

use crate::backends::{Db, on_each_backend};
use crate::engine::{drain, opts};
use crate::support::{file_action, key};

fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("component built")
}

fn by(actor: &str) -> CatalogCommand {
    CatalogCommand::by(actor)
}

/// A process with no actions of its own and no disk cache: everything it runs comes from
/// the catalog in the database.
async fn bare_engine(db: &Db, clock: &ManualClock) -> Engine {
    db.builder(&ActionRegistry::new(), clock)
        .host_config(HostConfig::default())
        .build()
        .await
        .expect("engine builds")
}

fn pay() -> WorkflowSpec {
    WorkflowSpec::builder("pay")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .integer("amount_cents"),
        )
        .step(
            Step::action("charge", "pay.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["amount_cents"])
                .output("payment"),
        )
        .on_ok("charge", "complete")
        .build()
}

fn payload() -> Value {
    json!({"order_id": "o-1", "amount_cents": 900})
}

async fn an_action_approved_by_another_engine_runs_on_a_running_one(db: Db, clock: ManualClock) {
    // The worker's engine exists before the action is approved anywhere.
    let worker = bare_engine(&db, &clock).await;
    let admin = bare_engine(&db, &clock).await;
    let approved = admin
        .catalog()
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::CHARGE_PAYMENT),
            by("ana").comment("first release"),
        ))
        .await
        .expect("approves");
    assert_eq!(approved.state, ActionState::Active);
    assert_eq!(approved.approved_by, "ana");
    assert!(
        approved.description.input_schema.is_some(),
        "describe() was stored"
    );

    let run = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect("starts with the approved action");
    assert_eq!(drain(&worker).await, 1, "{}", db.name());
    let s = worker.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert_eq!(s.context["payment"]["amount_cents"], json!(900));

    // The step shows the key and the pinned digest.
    let insp = worker
        .inspect_run(run.run_id, InspectOptions::default())
        .await
        .expect("inspects");
    let step = insp
        .steps
        .iter()
        .find(|s| s.name == "charge")
        .expect("step");
    assert_eq!(step.action, "pay.charge");
    assert_eq!(
        step.digest.as_deref(),
        Some(approved.digest.to_string().as_str())
    );
}
on_each_backend!(an_action_approved_by_another_engine_runs_on_a_running_one);

async fn a_disabled_key_refuses_starts_and_makes_steps_wait_until_enabled(
    db: Db,
    clock: ManualClock,
) {
    let worker = bare_engine(&db, &clock).await;
    let admin = bare_engine(&db, &clock).await;
    let catalog = admin.catalog();
    catalog
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::CHARGE_PAYMENT),
            by("ana"),
        ))
        .await
        .expect("approves");
    let run = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect("starts");
    catalog
        .disable(&key("pay.charge"), by("bob").comment("provider outage"))
        .await
        .expect("disables");

    // New starts are refused, with the reason.
    let refused = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect_err("a disabled action cannot start runs");
    assert!(
        matches!(&refused, EngineError::InvalidSpec(p) if p.iter().any(|p| p.code == "disabled_action")),
        "{refused:?}"
    );

    // The run in flight waits, explained, instead of failing.
    drain(&worker).await;
    let s = worker.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Running, "{}", db.name());
    let why = worker
        .explain_run(run.run_id, InspectOptions::default())
        .await
        .expect("explains");
    assert_eq!(why.reason, Reason::WaitingForAction, "{why:?}");
    assert_eq!(why.step.as_deref(), Some("charge"));
    assert_eq!(why.details["action"], json!("pay.charge"));
    assert_eq!(why.details["code"], json!("action_disabled"));
    assert_eq!(why.next_actions[0], NextAction::EnableAction);

    // Enabling makes the step due at once (no clock advance needed).
    catalog
        .enable(&key("pay.charge"), by("bob"))
        .await
        .expect("enables");
    assert_eq!(drain(&worker).await, 1);
    let s = worker.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);

    // The trail says who did what.
    let detail = catalog.show(&key("pay.charge")).await.expect("shows");
    let kinds: Vec<(CatalogEventKind, &str)> = detail
        .history
        .iter()
        .map(|e| (e.kind, e.actor.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (CatalogEventKind::Approved, "ana"),
            (CatalogEventKind::Disabled, "bob"),
            (CatalogEventKind::Enabled, "bob"),
        ]
    );
    assert_eq!(
        detail.history[1].comment.as_deref(),
        Some("provider outage")
    );
}
on_each_backend!(a_disabled_key_refuses_starts_and_makes_steps_wait_until_enabled);

async fn a_step_waits_for_a_version_the_catalog_does_not_know_until_it_is_approved(
    db: Db,
    clock: ManualClock,
) {
    // A host with the action in its own registry starts the run; the worker only has the
    // catalog, which does not know that version yet.
    let host_registry = ActionRegistry::new();
    host_registry
        .register(file_action(
            "pay.charge",
            artifacts::CHARGE_PAYMENT.as_ref(),
        ))
        .expect("registers");
    let host = db.engine(&host_registry, &clock).await;
    let worker = bare_engine(&db, &clock).await;
    let run = host
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect("starts");
    drain(&worker).await;
    let why = worker
        .explain_run(run.run_id, InspectOptions::default())
        .await
        .expect("explains");
    assert_eq!(why.reason, Reason::WaitingForAction, "{why:?}");
    assert_eq!(why.details["code"], json!("action_unknown"));
    assert_eq!(why.next_actions[0], NextAction::ApproveAction);
    assert!(why.summary.contains("approve"), "{}", why.summary);
    let insp = worker
        .inspect_run(run.run_id, InspectOptions::default())
        .await
        .expect("inspects");
    let waiting = insp.attempts[0].waiting_for_action.as_ref().expect("wait");
    assert_eq!(waiting.action, "pay.charge");

    worker
        .catalog()
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::CHARGE_PAYMENT),
            by("ana"),
        ))
        .await
        .expect("approves");
    assert_eq!(drain(&worker).await, 1, "{}", db.name());
    let s = worker.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    let why = worker
        .explain_run(run.run_id, InspectOptions::default())
        .await
        .expect("explains");
    assert_eq!(why.reason, Reason::Terminal);
}
on_each_backend!(a_step_waits_for_a_version_the_catalog_does_not_know_until_it_is_approved);

async fn superseded_versions_keep_running_and_revoked_ones_fail_closed(db: Db, clock: ManualClock) {
    let worker = bare_engine(&db, &clock).await;
    let admin = bare_engine(&db, &clock).await;
    let catalog = admin.catalog();
    let v1 = catalog
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::ECHO),
            by("ana"),
        ))
        .await
        .expect("approves v1");
    let on_v1 = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect("starts on v1");
    clock.advance(std::time::Duration::from_millis(1));
    let doomed = admin
        .start(
            &pay(),
            None,
            json!({"order_id": "o-2", "amount_cents": 1}),
            StartOptions::default(),
        )
        .await
        .expect("starts on v1");
    let v2 = catalog
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::CHARGE_PAYMENT),
            by("ana"),
        ))
        .await
        .expect("approves v2");
    assert_ne!(v1.digest, v2.digest);
    let on_v2 = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect("starts on v2");

    let detail = catalog.show(&key("pay.charge")).await.expect("shows");
    assert_eq!(detail.current.as_ref().map(|c| c.digest), Some(v2.digest));
    assert_eq!(detail.versions[0].state, ActionState::Superseded);
    assert_eq!(
        detail.history[1].detail["superseded"],
        json!(v1.digest.to_string())
    );

    // Run one v1 run: the superseded version still runs for it (echo returns its input).
    let first = worker
        .execute_next(opts("w"))
        .await
        .expect("ok")
        .expect("ran");
    assert_eq!(first.run_id, on_v1.run_id);
    assert_eq!(first.status, RunStatus::Completed);
    assert_eq!(
        first.context["payment"],
        json!({"order_id": "o-1", "amount_cents": 900})
    );

    // Revoking v1 fails the other v1 run closed, journaled; the v2 run is untouched.
    catalog
        .revoke(
            &key("pay.charge"),
            Some(v1.digest),
            by("sec").comment("CVE"),
        )
        .await
        .expect("revokes");
    drain(&worker).await;
    let s = worker.snapshot(doomed.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    assert_eq!(
        s.error.as_ref().expect("error")["code"],
        json!("action_revoked")
    );
    let journal = worker.journal(doomed.run_id).await.expect("journal");
    assert!(
        journal.iter().any(|(_, f)| serde_json::to_string(f)
            .expect("json")
            .contains("action_revoked")),
        "the refusal is journaled"
    );
    let s = worker.snapshot(on_v2.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Completed, "{:?}", s.error);
    assert!(
        s.context["payment"]["charge_id"].is_string(),
        "{:?}",
        s.context
    );

    // A revoked digest is never approved again.
    let again = catalog
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::ECHO),
            by("ana"),
        ))
        .await
        .expect_err("revoked");
    assert!(
        matches!(again, EngineError::Action(ActionError::Revoked { .. })),
        "{again:?}"
    );

    // Revoking the current version leaves the key with none: starts are refused.
    catalog
        .revoke(&key("pay.charge"), None, by("sec"))
        .await
        .expect("revokes v2");
    let refused = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect_err("no active version");
    assert!(
        matches!(&refused, EngineError::InvalidSpec(p) if p.iter().any(|p| p.code == "unknown_action")),
        "{refused:?}"
    );
}
on_each_backend!(superseded_versions_keep_running_and_revoked_ones_fail_closed);

async fn a_tampered_blob_is_refused(db: Db, clock: ManualClock) {
    let admin = bare_engine(&db, &clock).await;
    admin
        .catalog()
        .approve(Approval::new(
            key("pay.charge"),
            bytes(artifacts::ECHO),
            by("ana"),
        ))
        .await
        .expect("approves");
    let run = admin
        .start(&pay(), None, payload(), StartOptions::default())
        .await
        .expect("starts");
    db.execute("UPDATE action_blobs SET bytes = substr(bytes, 1, 100)")
        .await;
    // A fresh process with no disk cache must fetch the bytes: they no longer match.
    let worker = bare_engine(&db, &clock).await;
    drain(&worker).await;
    let s = worker.snapshot(run.run_id).await.expect("snapshot");
    assert_eq!(s.status, RunStatus::Failed, "{}", db.name());
    let message = s.error.as_ref().expect("error")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("does not match its pinned digest"),
        "{message}"
    );
    let checks = worker.catalog().verify().await.expect("verifies");
    assert_eq!(checks.len(), 1);
    assert!(!checks[0].ok);
    assert_eq!(checks[0].code.as_deref(), Some("digest_mismatch"));
}
on_each_backend!(a_tampered_blob_is_refused);

async fn bad_approvals_write_nothing(db: Db, clock: ManualClock) {
    let engine = bare_engine(&db, &clock).await;
    let catalog = engine.catalog();
    let k = key("pay.charge");

    let not_a_component = catalog
        .approve(Approval::new(
            k.clone(),
            b"\0asm garbage".to_vec(),
            by("ana"),
        ))
        .await
        .expect_err("not a component");
    assert!(matches!(
        not_a_component,
        EngineError::Action(ActionError::InvalidComponent { .. })
    ));

    let truncated = bytes(artifacts::ECHO)[..1000].to_vec();
    let err = catalog
        .approve(Approval::new(k.clone(), truncated, by("ana")))
        .await
        .expect_err("truncated");
    assert!(matches!(
        err,
        EngineError::Action(ActionError::InvalidComponent { .. })
    ));

    let err = catalog
        .approve(
            Approval::new(k.clone(), bytes(artifacts::ECHO), by("ana"))
                .expect_digest(squid_mesh::Digest::of(b"something else")),
        )
        .await
        .expect_err("wrong digest");
    assert!(matches!(
        err,
        EngineError::Action(ActionError::DigestMismatch { .. })
    ));

    let limits = ActionLimits {
        memory_bytes: u64::MAX,
        ..ActionLimits::default()
    };
    let err = catalog
        .approve(Approval::new(k.clone(), bytes(artifacts::ECHO), by("ana")).limits(limits))
        .await
        .expect_err("absurd limits");
    assert!(matches!(
        err,
        EngineError::Action(ActionError::InvalidLimits { .. })
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let err = Approval::from_file(k.clone(), dir.path(), by("ana")).expect_err("a directory");
    assert!(
        matches!(err, EngineError::Action(ActionError::Io { .. })),
        "{err:?}"
    );
    let err = catalog
        .approve(Approval::new(k.clone(), b"hello".to_vec(), by("ana")))
        .await
        .expect_err("not WebAssembly");
    assert!(
        err.to_string().contains("not a WebAssembly binary"),
        "{err}"
    );
    let mut huge = b"\0asm".to_vec();
    huge.resize(squid_mesh::engine::MAX_COMPONENT_BYTES + 1, 0);
    let err = catalog
        .approve(Approval::new(k.clone(), huge, by("ana")))
        .await
        .expect_err("too large");
    assert!(err.to_string().contains("larger than 64 MiB"), "{err}");

    let err = catalog
        .approve(Approval::new(k.clone(), bytes(artifacts::ECHO), by("  ")))
        .await
        .expect_err("no actor");
    assert!(matches!(err, EngineError::InvalidOption(_)), "{err:?}");

    let err = catalog
        .disable(&key("ghost"), by("ana"))
        .await
        .expect_err("unknown key");
    assert!(matches!(
        err,
        EngineError::Action(ActionError::UnknownAction { .. })
    ));

    assert!(
        catalog.list().await.expect("lists").is_empty(),
        "nothing was written"
    );
    assert!(catalog.history().await.expect("history").is_empty());
}
on_each_backend!(bad_approvals_write_nothing);

async fn a_catalog_exports_to_a_manifest_and_imports_into_another_database(
    db: Db,
    clock: ManualClock,
) {
    let engine = bare_engine(&db, &clock).await;
    let catalog = engine.catalog();
    let limits = ActionLimits {
        timeout_ms: 5_000,
        ..ActionLimits::default()
    };
    let charge = catalog
        .approve(
            Approval::new(
                key("pay.charge"),
                bytes(artifacts::CHARGE_PAYMENT),
                by("ana"),
            )
            .limits(limits.clone()),
        )
        .await
        .expect("approves");
    catalog
        .approve(Approval::new(
            key("echo"),
            bytes(artifacts::ECHO),
            by("ana"),
        ))
        .await
        .expect("approves");
    catalog
        .disable(&key("echo"), by("ana"))
        .await
        .expect("disables");
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = catalog.export(dir.path()).await.expect("exports");
    assert_eq!(manifest.actions.len(), 2);

    // Another database, seeded from the manifest.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Db::Sqlite(other_dir.path().join("other.db"));
    let seeded = bare_engine(&other, &clock).await;
    let report = seeded
        .catalog()
        .import(&dir.path().join("actions.toml"), by("deploy"))
        .await
        .expect("imports");
    assert_eq!(report.approved.len(), 2);
    assert_eq!(report.disabled, [key("echo")]);
    let listed = seeded.catalog().list().await.expect("lists");
    let charge2 = listed
        .iter()
        .find(|a| a.key == key("pay.charge"))
        .expect("charge");
    assert_eq!(charge2.digest, charge.digest);
    assert_eq!(charge2.limits, limits);
    assert_eq!(
        listed
            .iter()
            .find(|a| a.key == key("echo"))
            .map(|a| a.state),
        Some(ActionState::Disabled)
    );
    // Importing again changes nothing.
    let again = seeded
        .catalog()
        .import(&dir.path().join("actions.toml"), by("deploy"))
        .await
        .expect("imports");
    assert!(again.approved.is_empty(), "{again:?}");
    assert_eq!(again.unchanged.len(), 2);
    assert!(again.disabled.is_empty() && again.enabled.is_empty());

    // A manifest may not reach outside its folder.
    let evil = dir.path().join("evil");
    std::fs::create_dir_all(&evil).expect("dir");
    std::fs::write(
        evil.join("actions.toml"),
        format!(
            "[[action]]\nkey = \"x\"\ncomponent = \"../components/{}\"\ndigest = \"{}\"\n",
            manifest.actions[0]
                .component
                .file_name()
                .expect("name")
                .to_string_lossy(),
            manifest.actions[0].digest
        ),
    )
    .expect("writes");
    let err = seeded
        .catalog()
        .import(&evil.join("actions.toml"), by("deploy"))
        .await
        .expect_err("outside");
    assert!(
        err.to_string().contains("outside the manifest's folder"),
        "{err}"
    );
    assert!(
        seeded
            .catalog()
            .show(&ActionKey::new("x").expect("key"))
            .await
            .is_err()
    );
}
on_each_backend!(a_catalog_exports_to_a_manifest_and_imports_into_another_database);

async fn the_schema_check_catches_data_flow_mistakes_before_anything_runs(
    db: Db,
    clock: ManualClock,
) {
    let engine = bare_engine(&db, &clock).await;
    let catalog = engine.catalog();
    for (k, path) in [
        ("orders.validate", artifacts::VALIDATE_ORDER),
        ("pay.charge", artifacts::CHARGE_PAYMENT),
        ("echo", artifacts::ECHO),
    ] {
        catalog
            .approve(Approval::new(key(k), bytes(path), by("ana")))
            .await
            .expect("approves");
    }
    let spec = |charge_input: Value, condition_path: Value| {
        WorkflowSpec::from_json(
            &json!({
                "name": "flow",
                "triggers": [{"name": "m", "type": "manual", "payload": [
                    {"name": "order_id", "type": "string"},
                    {"name": "items", "type": "list"},
                    {"name": "note", "type": "string", "required": false}
                ]}],
                "steps": [
                    {"name": "validate", "action": "orders.validate",
                     "input": ["order_id", "items"], "output": "validation"},
                    {"name": "charge", "action": "pay.charge", "input": charge_input, "output": "payment"},
                    {"name": "big", "action": "echo", "input": {"id": ["payment", "charge_id"]}},
                    {"name": "small", "action": "echo"}
                ],
                "transitions": [
                    {"from": "validate", "on": "ok", "to": "charge"},
                    {"from": "charge", "on": "ok", "to": "big",
                     "condition": {"path": condition_path, "greater_than": 1000}},
                    {"from": "charge", "on": "ok", "to": "small"}
                ]
            })
            .to_string(),
        )
        .expect("parses")
    };
    let good = spec(
        json!({"order_id": ["order_id"], "amount_cents": ["validation", "total_cents"]}),
        json!(["payment", "amount_cents"]),
    );
    let report = engine.check_spec(&good).await.expect("checks");
    assert!(report.is_valid(), "{:?}", report.problems);
    // echo declares no schema: accepted, with a warning per step that uses it.
    assert_eq!(
        report
            .warnings
            .iter()
            .filter(|w| w.code == "no_action_schema")
            .count(),
        2,
        "{:?}",
        report.warnings
    );

    // A field charge does not accept, a field validate does not produce, a string where an
    // integer goes, a required field left out, and a condition on a field charge never
    // produces: each a problem with its path and code.
    let bad = spec(
        json!({"order_id": ["order_id"], "amount": ["validation", "totl_cents"], "amount_cents": ["note"], "decline": ["validation", "currency"]}),
        json!(["payment", "amount"]),
    );
    let report = engine.check_spec(&bad).await.expect("checks");
    let found: Vec<(&str, &str)> = report
        .problems
        .iter()
        .map(|p| (p.path.as_str(), p.code.as_str()))
        .collect();
    for expected in [
        ("steps[1].input.amount", "unknown_output_field"),
        ("steps[1].input.amount", "input_not_accepted"),
        ("steps[1].input.amount_cents", "input_type_mismatch"),
        ("steps[1].input.decline", "input_type_mismatch"),
        ("transitions[1].condition.path", "unknown_output_field"),
    ] {
        assert!(
            found.contains(&expected),
            "missing {expected:?} in {found:?}"
        );
    }
    let missing = spec(
        json!({"order_id": ["order_id"]}),
        json!(["payment", "amount_cents"]),
    );
    let report = engine.check_spec(&missing).await.expect("checks");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.code == "missing_required_input" && p.message.contains("amount_cents")),
        "{:?}",
        report.problems
    );

    // Starting the bad spec is refused with the same problems; nothing runs.
    let refused = engine
        .start(
            &bad,
            None,
            json!({"order_id": "o", "items": []}),
            StartOptions::default(),
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&refused, EngineError::InvalidSpec(p) if p.iter().any(|p| p.code == "input_not_accepted")),
        "{refused:?}"
    );
    assert!(
        engine
            .list_runs(&Default::default(), &Default::default())
            .await
            .expect("lists")
            .runs
            .is_empty()
    );
}
on_each_backend!(the_schema_check_catches_data_flow_mistakes_before_anything_runs);
