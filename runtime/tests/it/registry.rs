//! The allowlist registry: manifests, digest pins, enable/disable, hot changes.

use serde_json::json;
use squid_mesh::ActionTarget;
use squid_mesh::actions::{ActionKey, ActionRegistry, Digest, Manifest};
use squid_mesh_example_artifacts as artifacts;

use crate::support::*;

fn digest_of(path: &str) -> Digest {
    Digest::of(&std::fs::read(path).expect("component exists"))
}

fn write_manifest(dir: &std::path::Path, entries: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (k, path) in entries {
        let file = dir.join(format!("{k}.wasm"));
        std::fs::copy(path, &file).expect("copy component");
        text.push_str(&format!(
            "[[action]]\nkey = \"{k}\"\ncomponent = \"{k}.wasm\"\ndigest = \"{}\"\n\n[action.limits]\ntimeout_ms = 5000\n\n",
            digest_of(path)
        ));
    }
    let manifest = dir.join("actions.toml");
    std::fs::write(&manifest, text).expect("write manifest");
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_registers_every_example_action_and_each_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write_manifest(
        dir.path(),
        &[
            ("orders.validate", artifacts::VALIDATE_ORDER),
            ("payments.charge", artifacts::CHARGE_PAYMENT),
            ("payments.refund", artifacts::REFUND_PAYMENT),
            ("echo", artifacts::ECHO),
        ],
    );
    let registry = ActionRegistry::from_manifest(&manifest).expect("manifest loads");
    assert_eq!(registry.list().len(), 4);
    assert_eq!(
        registry.get(&key("echo")).expect("echo").limits.timeout_ms,
        5000
    );
    let host = host(registry);
    let inputs = [
        (
            "orders.validate",
            json!({"order_id": "o", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 3}]}),
        ),
        (
            "payments.charge",
            json!({"order_id": "o", "amount_cents": 3}),
        ),
        (
            "payments.refund",
            json!({"charge_id": "ch_1", "amount_cents": 3}),
        ),
        ("echo", json!({"x": 1})),
    ];
    for (k, input) in inputs {
        let inv = invoke(&host, k, input).await;
        expect_ok(&inv);
        let (description, _) = host.prepare(&key(k)).await.expect("describes");
        assert_eq!(description.name, k);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_component_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write_manifest(dir.path(), &[("echo", artifacts::ECHO)]);
    let mut bytes = std::fs::read(dir.path().join("echo.wasm")).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(dir.path().join("echo.wasm"), &bytes).expect("tamper");

    let err = ActionRegistry::from_manifest(&manifest).expect_err("refused");
    assert_eq!(err.code(), "digest_mismatch", "{err}");
    assert!(err.to_string().contains("does not match its pinned digest"));

    // Registered in code: refused too, and the registry stays as it was.
    let registry = ActionRegistry::new();
    let action = squid_mesh::actions::RegisteredAction::from_file(
        key("echo"),
        dir.path().join("echo.wasm"),
        digest_of(artifacts::ECHO),
    );
    assert_eq!(
        registry.register(action).expect_err("refused").code(),
        "digest_mismatch"
    );
    assert!(registry.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_tampered_after_registration_is_refused_at_compile_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("echo.wasm");
    std::fs::copy(artifacts::ECHO, &file).expect("copy");
    let registry = ActionRegistry::new();
    registry
        .register(squid_mesh::actions::RegisteredAction::from_file(
            key("echo"),
            &file,
            digest_of(artifacts::ECHO),
        ))
        .expect("registers");
    std::fs::copy(artifacts::REFUND_PAYMENT, &file).expect("swap the file");
    // No cache: the host must read (and verify) the bytes to compile them.
    let host =
        squid_mesh::ActionHost::new(registry, squid_mesh::HostConfig::default()).expect("host");
    let err = host
        .invoke(
            &ActionTarget::Wasm(key("echo")),
            &ctx("s", 1),
            &obj(json!({})),
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "digest_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_disabled_keys_are_clear_errors() {
    let registry = ActionRegistry::new();
    let host = host(registry.clone());
    let err = host
        .invoke(
            &ActionTarget::Wasm(key("nope")),
            &ctx("s", 1),
            &obj(json!({})),
        )
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), "unknown_action");
    assert_eq!(err.to_string(), "action nope is not registered");

    registry
        .register(file_action("echo", artifacts::ECHO.as_ref()))
        .expect("registers");
    registry.set_enabled(&key("echo"), false).expect("known");
    let err = host
        .invoke(
            &ActionTarget::Wasm(key("echo")),
            &ctx("s", 1),
            &obj(json!({})),
        )
        .await
        .expect_err("disabled");
    assert_eq!(err.code(), "action_disabled");
    assert_eq!(err.to_string(), "action echo is disabled");

    registry.set_enabled(&key("echo"), true).expect("known");
    expect_ok(&invoke(&host, "echo", json!({})).await);
    assert_eq!(
        registry
            .set_enabled(&key("ghost"), true)
            .expect_err("unknown")
            .code(),
        "unknown_action"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_a_manifest_activates_new_actions_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = write_manifest(dir.path(), &[("echo", artifacts::ECHO)]);
    let registry = ActionRegistry::from_manifest(&manifest).expect("loads");
    let host = host(registry.clone());
    expect_ok(&invoke(&host, "echo", json!({})).await);
    let missing = host
        .invoke(
            &ActionTarget::Wasm(key("payments.refund")),
            &ctx("s", 1),
            &obj(json!({})),
        )
        .await;
    assert_eq!(missing.expect_err("not yet").code(), "unknown_action");

    write_manifest(
        dir.path(),
        &[
            ("echo", artifacts::ECHO),
            ("payments.refund", artifacts::REFUND_PAYMENT),
        ],
    );
    registry.reload_manifest(&manifest).expect("reloads");
    let inv = invoke(
        &host,
        "payments.refund",
        json!({"charge_id": "ch_9", "amount_cents": 1}),
    )
    .await;
    assert_eq!(expect_ok(&inv)["refund_id"], json!("re_9"));

    // A bad reload changes nothing.
    std::fs::write(&manifest, "[[action]]\nkey = \"x\"\n").expect("write");
    assert_eq!(
        registry.reload_manifest(&manifest).expect_err("bad").code(),
        "invalid_manifest"
    );
    assert_eq!(registry.list().len(), 2);
}

#[test]
fn malformed_keys_digests_and_manifests_are_structured_errors() {
    for bad in ["", "-lead", "has space", &"x".repeat(129)] {
        assert_eq!(
            ActionKey::new(bad).expect_err("invalid").code(),
            "invalid_action_key",
            "{bad:?}"
        );
    }
    assert!(ActionKey::new("orders.validate:v2/eu").is_ok());
    assert_eq!(
        "sha256:zz".parse::<Digest>().expect_err("bad").code(),
        "invalid_digest"
    );
    let d = Digest::of(b"abc");
    assert_eq!(d.to_string().parse::<Digest>().expect("round trip"), d);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.toml");
    for (text, needle) in [
        (
            format!("[[action]]\nkey = \"a b\"\ncomponent = \"x\"\ndigest = \"{d}\"\n"),
            "invalid action key",
        ),
        (
            "[[action]]\nkey = \"a\"\ncomponent = \"x\"\ndigest = \"nope\"\n".to_owned(),
            "invalid digest",
        ),
        (
            format!("[[action]]\nkey = \"a\"\ncomponent = \"x\"\ndigest = \"{d}\"\ncolour = 1\n"),
            "unknown field",
        ),
    ] {
        std::fs::write(&path, text).expect("write");
        let err = Manifest::read(&path).expect_err("invalid");
        assert_eq!(err.code(), "invalid_manifest");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let dup = format!(
        "[[action]]\nkey = \"a\"\ncomponent = \"x\"\ndigest = \"{d}\"\n[[action]]\nkey = \"a\"\ncomponent = \"y\"\ndigest = \"{d}\"\n"
    );
    std::fs::write(&path, dup).expect("write");
    assert!(
        Manifest::read(&path)
            .expect_err("dup")
            .to_string()
            .contains("listed twice")
    );
}
