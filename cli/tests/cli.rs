//! The `squid-mesh` program driven as a user would, on a SQLite file and on a fresh Postgres
//! schema: actions, specs, start, worker, show, explain, graph, approve, cancel, replay, and
//! the errors a user gets for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_squid-mesh");

struct Cli {
    dir: PathBuf,
    database: String,
    schema: String,
}

impl Cli {
    /// The program on the SQLite file `squid.db` in `dir`.
    fn sqlite(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            database: "squid.db".into(),
            schema: "squid_mesh".into(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .current_dir(&self.dir)
            .env_remove("SQUID_MESH_DATABASE")
            .env("SQUID_MESH_ACTOR", "cli-test")
            .args(["--database", &self.database, "--schema", &self.schema])
            .args(args)
            .output()
            .expect("squid-mesh runs")
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "squid-mesh {args:?} failed ({:?}):\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
    }

    /// Runs a command that must fail; returns (exit code, stderr).
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.cmd(args);
        assert!(!out.status.success(), "squid-mesh {args:?} should fail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn order_spec() -> Value {
    json!({
        "name": "cli_order",
        "version": "1",
        "triggers": [{"name": "manual", "type": "manual", "payload": [
            {"name": "order_id", "type": "string"},
            {"name": "items", "type": "list"},
            {"name": "succeed_on_attempt", "type": "integer", "default": 1}
        ]}],
        "steps": [
            {"name": "validate", "action": "orders.validate", "output": "validation"},
            {"name": "charge", "action": "payments.charge",
             "input": {"order_id": ["order_id"], "amount_cents": ["validation", "total_cents"], "succeed_on_attempt": ["succeed_on_attempt"]},
             "retry": {"max_attempts": 3, "backoff": {"kind": "constant", "min_ms": 100, "max_ms": 100}},
             "output": "payment"},
            {"name": "review", "builtin": {"kind": "approval"}, "output": "review"},
            {"name": "ship", "builtin": {"kind": "log", "message": "shipping"}},
            {"name": "refund", "action": "payments.refund", "input": {"charge_id": ["payment", "charge_id"], "amount_cents": ["payment", "amount_cents"]}}
        ],
        "transitions": [
            {"from": "validate", "on": "ok", "to": "charge"},
            {"from": "charge", "on": "ok", "to": "review"},
            {"from": "review", "on": "ok", "to": "ship"},
            {"from": "review", "on": "error", "to": "refund"}
        ]
    })
}

fn setup(dir: &Path) {
    squid_mesh_examples::write_manifest(dir).expect("manifest");
    std::fs::write(
        dir.join("order.json"),
        serde_json::to_string_pretty(&order_spec()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.json"),
        json!({
            "name": "broken",
            "triggers": [{"name": "manual", "type": "manual"}],
            "steps": [{"name": "a", "action": "nope.missing"}, {"name": "b", "builtin": {"kind": "approval"}}],
            "transitions": [{"from": "a", "on": "ok", "to": "ghost"}]
        })
        .to_string(),
    )
    .unwrap();
}

fn scenario(cli: &Cli) {
    setup(&cli.dir);
    let name = if cli.database.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    cli.ok(&["migrate"]);

    // Actions: a manifest seeds the catalog; listed and verified from the database.
    let imported = cli.json(&["actions", "import", "actions.toml"]);
    assert_eq!(
        imported["approved"].as_array().map(Vec::len),
        Some(5),
        "{name}"
    );
    let again = cli.json(&["actions", "import"]);
    assert_eq!(
        again["unchanged"].as_array().map(Vec::len),
        Some(5),
        "{again}"
    );
    let listed = cli.json(&["actions", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(5), "{name}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["state"] == "active")
    );
    let verified = cli.json(&["actions", "verify"]);
    assert!(verified.as_array().unwrap().iter().all(|r| r["ok"] == true));

    // Specs: valid, graph, and every problem of a broken one.
    assert!(
        cli.ok(&["spec", "validate", "order.json"])
            .contains("is valid")
    );
    let graph = cli.ok(&["spec", "graph", "order.json"]);
    assert!(graph.contains("review --error--> refund"), "{graph}");
    // A file that does not parse is bad input (exit 2), its cause printed once.
    std::fs::write(
        cli.dir.join("typo.json"),
        r#"{"name": "x", "triggers": [{"name": "t", "type": "cronn"}]}"#,
    )
    .unwrap();
    let out = cli.cmd(&["spec", "validate", "typo.json"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("unknown variant").count(), 1, "{text}");
    assert!(text.contains("/triggers/0/type"), "{text}");
    let out = cli.cmd(&["spec", "validate", "broken.json"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/steps/0/action",
        "unknown_action",
        "/transitions/0/to",
        "approval_routes",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }

    // Start, run a worker until idle: the retrying charge succeeds, the run waits for review.
    let payload = r#"{"order_id": "o-1", "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}], "succeed_on_attempt": 2}"#;
    let started = cli.json(&["start", "order.json", "--payload", payload]);
    let run = started["run_id"].as_str().unwrap().to_owned();
    let worker = cli.json(&["worker", "--exit-when-idle", "--concurrency", "2"]);
    assert_eq!(worker["stopped"], "idle");
    assert!(worker["executed"].as_u64().unwrap() >= 4, "{worker}");
    let shown = cli.json(&["runs", "show", &run]);
    assert_eq!(shown["status"], "paused");
    assert_eq!(shown["manual"]["step"], "review");
    let charges: Vec<&Value> = shown["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["step"] == "charge")
        .collect();
    assert_eq!(charges.len(), 2, "one retry");
    let explained = cli.ok(&["runs", "explain", &run]);
    assert!(
        explained.contains("manual_intervention_required"),
        "{explained}"
    );
    assert!(explained.contains("resolve_manual_step"));
    let listed = cli.json(&["runs", "list", "--status", "paused"]);
    assert_eq!(listed["runs"][0]["run_id"], run.as_str());

    // Approving needs an actor.
    let (code, err) = cli.fails(&["approve", &run]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("actor"), "{err}");
    let approved = cli.json(&["approve", &run, "--actor", "ana", "--comment", "fine"]);
    assert_eq!(approved["status"], "running");
    cli.json(&["worker", "--exit-when-idle"]);
    let shown = cli.json(&["runs", "show", &run]);
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["context"]["review"]["decision"], "approved");
    // Narrower scopes hide payloads; an unknown scope is refused.
    let external = cli.json(&["--scope", "external", "runs", "show", &run]);
    assert!(external["context"].is_null() && external["input"].is_null());
    assert!(!external.to_string().contains("ana"), "{external}");
    let operator = cli.json(&["--scope", "operator", "runs", "show", &run]);
    assert_eq!(operator["commands"][1]["command"], "approve");
    assert!(operator["commands"][1]["actor"].is_null());
    let (code, err) = cli.fails(&["--scope", "root", "runs", "show", &run]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid visibility scope"), "{err}");
    let graph = cli.ok(&["runs", "graph", &run]);
    assert!(graph.contains("==> review:ok:ship"), "{graph}");
    assert!(graph.contains("-/- review:error:refund"), "{graph}");
    let graph = cli.json(&["runs", "graph", &run]);
    assert_eq!(graph["status"], "completed");
    let explained = cli.json(&["runs", "explain", &run]);
    assert_eq!(explained["reason"], "terminal");
    assert!(explained["evidence"]["definition_available"].is_boolean());
    assert!(explained["evidence"]["command_counts"].is_object());
    // Explanations are narrowed by the scope too: external viewers see no command counts.
    let external = cli.json(&["--scope", "external", "runs", "explain", &run]);
    assert_eq!(external["reason"], "terminal");
    assert!(
        external["evidence"].get("command_counts").is_none(),
        "{external}"
    );
    assert!(
        external["evidence"].get("definition_available").is_none(),
        "{external}"
    );

    // A second run is cancelled at the gate; the first is replayed.
    let second = cli.json(&[
        "start",
        "order.json",
        "--payload",
        payload,
        "--idempotency-key",
        "k-2",
    ]);
    let second_id = second["run_id"].as_str().unwrap().to_owned();
    let again = cli.json(&[
        "start",
        "order.json",
        "--payload",
        payload,
        "--idempotency-key",
        "k-2",
    ]);
    assert_eq!(again["run_id"], second_id.as_str(), "idempotent start");
    let cancelled = cli.json(&["cancel", &second_id]);
    assert_eq!(cancelled["status"], "cancelled");
    let (code, err) = cli.fails(&["cancel", &second_id]);
    assert_eq!(code, 2);
    assert!(err.contains("cancelled"), "{err}");
    let replayed = cli.json(&["replay", &run]);
    assert_eq!(replayed["replayed_from"], run.as_str());
    let listed = cli.json(&["runs", "list"]);
    assert_eq!(listed["runs"].as_array().unwrap().len(), 3);
    let text = cli.ok(&["runs", "list", "--status", "cancelled"]);
    assert!(text.contains(&second_id) && !text.contains(&run), "{text}");

    // Bad input: clear messages and exit codes.
    let (code, err) = cli.fails(&["runs", "show", "not-a-run"]);
    assert_eq!(code, 2);
    assert!(err.contains("malformed run id"), "{err}");
    let (code, err) = cli.fails(&["runs", "show", "00000000-0000-4000-8000-000000000000"]);
    assert_eq!(code, 3);
    assert!(err.contains("not found"), "{err}");
    let (code, err) = cli.fails(&["start", "order.json", "--payload", r#"{"order_id": 5}"#]);
    assert_eq!(code, 2);
    assert!(
        err.contains("payload.order_id") && err.contains("payload.items"),
        "{err}"
    );
    let (code, err) = cli.fails(&["start", "order.json", "--payload", "{not json"]);
    assert_eq!(code, 1);
    assert!(err.contains("--payload is not JSON"), "{err}");
    let (code, err) = cli.fails(&["runs", "list", "--status", "sleeping"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown status"), "{err}");
    let (code, err) = cli.fails(&["runs", "list", "--after", "garbage"]);
    assert_eq!(code, 2);
    assert!(err.contains("page.after"), "{err}");
    let (_, err) = cli.fails(&["--json", "runs", "show", "nope"]);
    let body: Value = serde_json::from_str(err.trim()).expect("JSON error");
    assert_eq!(body["error"]["code"], "invalid_run_id");

    // Approving stores the component in the database; the same file again changes nothing,
    // another supersedes it; disable, enable and revoke are in the trail.
    let added = cli.json(&[
        "actions",
        "approve",
        "echo2",
        "components/payments.refund.wasm",
        "--comment",
        "first",
    ]);
    assert!(added["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(added["state"], "active");
    let again = cli.json(&["actions", "add", "echo2", "components/payments.refund.wasm"]);
    assert_eq!(again["digest"], added["digest"]);
    let v2 = cli.json(&["actions", "approve", "echo2", "components/echo.wasm"]);
    assert_ne!(v2["digest"], added["digest"]);
    cli.json(&["actions", "disable", "echo2", "--actor", "ana"]);
    cli.json(&["actions", "enable", "echo2"]);
    let digest = added["digest"].as_str().unwrap();
    let revoked = cli.json(&["actions", "revoke", "echo2", "--digest", digest]);
    assert_eq!(revoked["state"], "revoked");
    let shown = cli.json(&["actions", "show", "echo2"]);
    assert_eq!(shown["versions"][0]["state"], "revoked");
    assert_eq!(shown["current"]["digest"], v2["digest"]);
    let kinds: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["approved", "approved", "disabled", "enabled", "revoked"]
    );
    assert_eq!(shown["history"][0]["comment"], "first");
    assert_eq!(shown["history"][2]["actor"], "ana");
    assert_eq!(shown["history"][1]["actor"], "cli-test");
    let text = cli.ok(&["actions", "show", "echo2"]);
    assert!(
        text.contains("revoked") && !text.contains("superseded"),
        "{text}"
    );
    // Bad input: exit code 2, nothing written.
    let (code, err) = cli.fails(&["actions", "approve", "bad", "order.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a valid squid-mesh:step action component"),
        "{err}"
    );
    let (code, err) = cli.fails(&[
        "actions",
        "approve",
        "bad",
        "components/echo.wasm",
        "--digest",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not match its pinned digest"), "{err}");
    let (code, err) = cli.fails(&["actions", "revoke", "ghost"]);
    assert_eq!(code, 2, "{err}");
    // Absurd limits are refused, not wrapped or panicked on.
    let huge = [
        "actions",
        "approve",
        "big",
        "components/payments.refund.wasm",
        "--memory-mb",
        "1152921504606846976",
    ];
    let (code, err) = cli.fails(&huge);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid_limits"), "{err}");
    let (_, err) = cli.fails(&[
        "actions",
        "approve",
        "big",
        "components/payments.refund.wasm",
        "--memory-mb",
        "8192",
    ]);
    assert!(err.contains("memory_bytes must be"), "{err}");
    let listed = cli.json(&["actions", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(6), "{listed}");
    // A version named by the short digest `list` prints.
    let short: String = v2["digest"].as_str().unwrap().chars().take(19).collect();
    let revoked = cli.json(&["actions", "revoke", "echo2", "--digest", &short]);
    assert_eq!(revoked["digest"], v2["digest"]);
    let (code, err) = cli.fails(&["actions", "revoke", "echo2", "--digest", "sha256:00000000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no version starting with"), "{err}");

    // Read-only commands need no component file; the bytes are in the database.
    std::fs::remove_dir_all(cli.dir.join("components")).unwrap();
    let listed = cli.json(&["runs", "list"]);
    assert_eq!(listed["runs"].as_array().unwrap().len(), 3);
    let verified = cli.json(&["actions", "verify"]);
    assert!(
        verified.as_array().unwrap().iter().all(|r| r["ok"] == true),
        "{verified}"
    );
}

#[test]
fn the_cli_drives_runs_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::sqlite(dir.path());
    scenario(&cli);
}

fn postgres_url() -> Option<String> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if std::env::var_os("SQUID_MESH_SKIP_POSTGRES").is_some() && !ci {
        eprintln!("\n!!!!! SKIPPING POSTGRES: SQUID_MESH_SKIP_POSTGRES is set !!!!!\n");
        return None;
    }
    let url = std::env::var("SQUID_MESH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let reachable = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        sqlx::PgConnection::connect(&url).await.map(|_| ())
    });
    match reachable {
        Ok(()) => Some(url),
        Err(e) if ci => panic!("PostgreSQL is required in CI but {url} refused: {e}"),
        Err(e) => {
            eprintln!("\n!!!!! SKIPPING POSTGRES: {url} is not reachable ({e}) !!!!!\n");
            None
        }
    }
}

/// Runs `body` against a fresh Postgres schema (named after `tag`), dropped afterwards.
fn on_postgres(tag: &str, body: impl FnOnce(&Cli)) {
    let Some(url) = postgres_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("sm_{tag}_{}", std::process::id());
    let cli = Cli {
        dir: dir.path().to_owned(),
        database: url.clone(),
        schema: schema.clone(),
    };
    body(&cli);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&mut c)
            .await;
        }
    });
}

#[test]
fn the_cli_drives_runs_on_postgres() {
    on_postgres("cli", scenario);
}

const SCHEDULED: &str = r#"
name = "ticker"

[[triggers]]
name = "every_second"
type = "cron"
cron = "* * * * * *"
timezone = "Europe/Amsterdam"
catch_up = "skip"
overlap = "allow"

[[triggers]]
name = "by_hand"
type = "manual"

[[steps]]
name = "note"
builtin = { kind = "log", message = "tick" }
"#;

const HOURLY: &str = r#"
name = "hourly_report"

[[triggers]]
name = "hourly"
type = "cron"
cron = "@hourly"
timezone = "America/New_York"

[[steps]]
name = "note"
builtin = { kind = "log", message = "report" }
"#;

fn schedule_scenario(cli: &Cli) {
    cli.json(&["actions", "import"]);
    std::fs::write(cli.dir.join("hourly.toml"), HOURLY).unwrap();
    let applied = cli.json(&["schedules", "apply", "hourly.toml", "--actor", "ops"]);
    assert_eq!(applied[0]["workflow"], "hourly_report");
    assert_eq!(applied[0]["state"], "active");
    let list = cli.json(&["schedules", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let next = cli.json(&["schedules", "next", "hourly_report", "-n", "3"]);
    let next = next.as_array().expect("times");
    assert_eq!(next.len(), 3);
    assert!(
        next[0]["local"]
            .as_str()
            .expect("local")
            .ends_with(":00:00-05:00"),
        "{next:?}"
    );
    let paused = cli.json(&[
        "schedules",
        "pause",
        "hourly_report",
        "--actor",
        "ana",
        "--comment",
        "audit",
    ]);
    assert_eq!(paused["state"], "paused");
    let shown = cli.json(&["schedules", "show", "hourly_report"]);
    let trail: Vec<&str> = shown["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(trail, ["applied", "paused"]);
    assert_eq!(shown["events"][1]["actor"], "ana");
    cli.ok(&["schedules", "resume", "hourly_report", "hourly"]);

    let backfill = [
        "schedules",
        "backfill",
        "hourly_report",
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-01-01T05:30:00Z",
        "--actor",
        "ops",
    ];
    let first = cli.json(&backfill);
    assert_eq!(first["windows"], 6);
    assert_eq!(first["started"].as_array().map(Vec::len), Some(6));
    let again = cli.json(&backfill);
    assert_eq!(again["already"], 6);
    assert_eq!(again["started"].as_array().map(Vec::len), Some(0));
    let run = first["started"][0].as_str().expect("run id");
    let shown = cli.ok(&["runs", "show", run]);
    assert!(
        shown.contains("scheduled by hourly_report/hourly (@hourly in America/New_York) for window 2025-12-31T19:00:00-05:00"),
        "{shown}"
    );
    let explained = cli.ok(&["runs", "explain", run]);
    assert!(explained.contains("origin:  scheduled by"), "{explained}");

    for (from, to, code_name) in [
        (
            "2026-01-02T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "invalid_backfill_range",
        ),
        (
            "2020-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "backfill_too_large",
        ),
    ] {
        let (code, err) = cli.fails(&[
            "schedules",
            "backfill",
            "hourly_report",
            "--from",
            from,
            "--to",
            to,
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(code_name), "{err}");
    }
    // A reader that stops early (`| head -c1`) ends the command quietly. The output is larger
    // than a pipe's buffer, so the command is still writing when the pipe closes.
    let mut reader = Command::new(BIN)
        .current_dir(&cli.dir)
        .args(["--database", &cli.database, "--schema", &cli.schema])
        .args(["--json", "schedules", "next", "hourly_report", "-n", "1000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    {
        use std::io::Read as _;
        let mut first = [0u8; 1];
        reader
            .stdout
            .take()
            .expect("stdout")
            .read_exact(&mut first)
            .expect("a first byte");
    }
    let closed = reader.wait_with_output().expect("ends");
    let err = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(closed.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // An unreachable Postgres is reported at once with its cause, said once.
    let refused = Command::new(BIN)
        .args([
            "--database",
            "postgres://postgres@127.0.0.1:1/postgres",
            "runs",
            "list",
        ])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    let (code, err) = cli.fails(&["schedules", "show", "nope"]);
    assert_eq!(code, 3, "{err}");
    let (code, err) = cli.fails(&["schedules", "apply", "order.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no_cron_trigger"), "{err}");
}

/// Three worker processes fire a per-second schedule for a few seconds: every window they
/// handled started exactly one run, and no window between the first and the last was lost.
fn workers_fire_each_window_once(cli: &Cli) {
    std::fs::write(cli.dir.join("ticker.toml"), SCHEDULED).unwrap();
    cli.ok(&["schedules", "apply", "ticker.toml"]);
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            Command::new(BIN)
                .current_dir(&cli.dir)
                .env_remove("SQUID_MESH_DATABASE")
                .args(["--database", &cli.database, "--schema", &cli.schema])
                .arg("--json")
                .args(["worker", "--concurrency", "2", "--shutdown-secs", "5"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("worker starts")
        })
        .collect();
    // Let them fire a few windows (however slowly a loaded machine starts them), then stop.
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let shown = cli.json(&["schedules", "show", "ticker", "--fires", "10"]);
        let fired = shown["fires"].as_array().map_or(0, Vec::len);
        if fired >= 5 && started.elapsed() >= std::time::Duration::from_secs(4) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the workers fired {fired} windows in a minute"
        );
    }
    for w in &workers {
        let _ = Command::new("kill")
            .args(["-INT", &w.id().to_string()])
            .status();
    }
    for w in &mut workers {
        let status = w.wait().expect("worker exits");
        assert!(status.success(), "worker exited with {status:?}");
    }
    let shown = cli.json(&["schedules", "show", "ticker", "--fires", "1000"]);
    let fires = shown["fires"].as_array().expect("fires");
    assert!(fires.len() >= 3, "the workers fired for seconds: {shown}");
    let mut windows: Vec<i64> = fires
        .iter()
        .map(|f| {
            assert_eq!(f["outcome"], "started", "{f}");
            f["scheduled_at"].as_i64().expect("µs")
        })
        .collect();
    windows.sort_unstable();
    for pair in windows.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1_000_000,
            "one window a second, none twice or lost"
        );
    }
    let runs = cli.json(&["runs", "list", "--workflow", "ticker", "--limit", "1000"]);
    let runs = runs["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), fires.len(), "one run per window");
    let mut ids: Vec<&str> = runs
        .iter()
        .map(|r| r["run_id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), fires.len());
}

#[test]
fn schedules_from_the_cli_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    schedule_scenario(&cli);
    workers_fire_each_window_once(&cli);
}

#[test]
fn schedules_from_the_cli_on_postgres() {
    on_postgres("cli_sched", |cli| {
        setup(&cli.dir);
        schedule_scenario(cli);
        workers_fire_each_window_once(cli);
    });
}

/// A workflow whose one step sleeps `sleep_ms`, and the example actions approved.
fn write_napper(cli: &Cli) {
    std::fs::write(
        cli.dir.join("nap.json"),
        json!({
            "name": "napper",
            "triggers": [{"name": "m", "type": "manual", "payload": [{"name": "sleep_ms", "type": "integer"}]}],
            "steps": [{"name": "nap", "action": "echo", "input": ["sleep_ms"]}]
        })
        .to_string(),
    )
    .unwrap();
    cli.json(&["actions", "import"]);
}

/// Waits until the run's first attempt is claimed (its step is running).
fn wait_until_claimed(cli: &Cli, run_id: &str) {
    let started = std::time::Instant::now();
    loop {
        let shown = cli.json(&["runs", "show", run_id]);
        if shown["attempts"][0]["status"] == "claimed" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the step never started: {shown}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// SIGTERM (how systemd and Kubernetes stop a service) drains the worker: the step it is
/// running finishes, once, and the process exits cleanly.
#[test]
fn sigterm_drains_a_running_step() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    write_napper(&cli);
    let run = cli.json(&["start", "nap.json", "--payload", r#"{"sleep_ms": 1500}"#]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let worker = Command::new(BIN)
        .current_dir(&cli.dir)
        .env_remove("SQUID_MESH_DATABASE")
        .args(["--database", &cli.database])
        .args(["worker", "--concurrency", "1", "--shutdown-secs", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("worker starts");
    // Wait for the step to be running, then ask the worker to stop.
    wait_until_claimed(&cli, &run_id);
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = worker.wait_with_output().expect("worker exits");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("worker stopped (terminated)"), "{said}");
    let shown = cli.json(&["runs", "show", &run_id]);
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(shown["attempts"][0]["claims"], 1, "ran once: {shown}");
}

/// `--log-format json` writes one JSON object a line on stderr, and what a step logs is in it
/// with the run, step and attempt it came from.
#[test]
fn json_logs_carry_what_steps_log() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    std::fs::write(
        cli.dir.join("hello.toml"),
        "name = \"hello\"\n[[triggers]]\nname = \"m\"\ntype = \"manual\"\n[[steps]]\nname = \"greet\"\nbuiltin = { kind = \"log\", message = \"hello from a step\" }\n",
    )
    .unwrap();
    let run = cli.json(&["start", "hello.toml"]);
    let out = Command::new(BIN)
        .current_dir(&cli.dir)
        .env("SQUID_MESH_LOG", "squid_mesh::action=info")
        .args(["--database", &cli.database])
        .args(["--log-format", "json", "worker", "--exit-when-idle"])
        .output()
        .expect("worker runs");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let records: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r["fields"]["message"] == "hello from a step"
                && r["fields"]["step"] == "greet"
                && r["fields"]["run_id"] == run["run_id"]),
        "{stderr}"
    );
    // With the worker's default filter, a step's record also carries its span, with the
    // run's trace id.
    let run = cli.json(&["start", "hello.toml"]);
    let out = Command::new(BIN)
        .current_dir(&cli.dir)
        .env_remove("SQUID_MESH_LOG")
        .env_remove("RUST_LOG")
        .args(["--database", &cli.database])
        .args(["--log-format", "json", "worker", "--exit-when-idle"])
        .output()
        .expect("worker runs");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["fields"]["message"] == "hello from a step")
        .unwrap_or_else(|| panic!("no record of the step: {stderr}"));
    assert_eq!(said["span"]["name"], "squid_mesh.step", "{said}");
    assert_eq!(said["span"]["run_id"], run["run_id"], "{said}");
    assert_eq!(
        said["span"]["trace_id"].as_str().map(str::len),
        Some(32),
        "{said}"
    );
}

/// A worker process started before an action exists runs it once another process approved
/// it: no restart, and the bytes come from the database (the worker has a cache of its own,
/// empty at first).
fn a_running_worker_picks_up_a_new_approval(cli: &Cli) {
    setup(&cli.dir);
    cli.ok(&["migrate"]);
    let worker_cache = cli.dir.join("worker-cache");
    let worker = Command::new(BIN)
        .current_dir(&cli.dir)
        .env_remove("SQUID_MESH_DATABASE")
        .args(["--database", &cli.database, "--schema", &cli.schema])
        .arg("--cache")
        .arg(&worker_cache)
        .args(["worker", "--concurrency", "1", "--shutdown-secs", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("worker starts");
    std::fs::write(
        cli.dir.join("pay.json"),
        json!({
            "name": "pay",
            "triggers": [{"name": "m", "type": "manual", "payload": [
                {"name": "order_id", "type": "string"}, {"name": "amount_cents", "type": "integer"}]}],
            "steps": [{"name": "charge", "action": "pay.charge", "output": "payment",
                       "input": {"order_id": ["order_id"], "amount_cents": ["amount_cents"]}}]
        })
        .to_string(),
    )
    .unwrap();
    // Before approval the spec is refused: the key is unknown.
    let (code, err) = cli.fails(&[
        "start",
        "pay.json",
        "--payload",
        r#"{"order_id": "o", "amount_cents": 5}"#,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown_action"), "{err}");
    cli.json(&[
        "actions",
        "approve",
        "pay.charge",
        "components/payments.charge.wasm",
    ]);
    let run = cli.json(&[
        "start",
        "pay.json",
        "--payload",
        r#"{"order_id": "o", "amount_cents": 5}"#,
    ]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let shown = loop {
        let shown = cli.json(&["runs", "show", &run_id]);
        if shown["status"] == "completed" || shown["status"] == "failed" {
            break shown;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the running worker never ran it: {shown}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let out = worker.wait_with_output().expect("worker exits");
    assert!(out.status.success());
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(shown["context"]["payment"]["amount_cents"], 5);
    // The worker compiled the component from the bytes it fetched.
    let cached = walk(&worker_cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .count();
    assert_eq!(cached, 1, "one component compiled by the worker");

    // A run whose action is disabled waits, explained; an idle worker does not wait for it.
    cli.json(&["actions", "disable", "pay.charge", "--comment", "outage"]);
    let (code, err) = cli.fails(&[
        "start",
        "pay.json",
        "--payload",
        r#"{"order_id": "p", "amount_cents": 7}"#,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("disabled_action"), "{err}");
    cli.json(&["actions", "enable", "pay.charge"]);
    let run = cli.json(&[
        "start",
        "pay.json",
        "--payload",
        r#"{"order_id": "p", "amount_cents": 7}"#,
    ]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    cli.json(&["actions", "disable", "pay.charge"]);
    let stopped = cli.json(&["worker", "--exit-when-idle"]);
    assert_eq!(stopped["stopped"], "idle", "{stopped}");
    let why = cli.json(&["runs", "explain", &run_id]);
    assert_eq!(why["reason"], "waiting_for_action", "{why}");
    assert_eq!(why["next_actions"], json!(["enable_action", "cancel_run"]));
    let shown = cli.ok(&["runs", "show", &run_id]);
    assert!(shown.contains("waiting for action pay.charge"), "{shown}");
    cli.json(&["actions", "enable", "pay.charge"]);
    cli.json(&["worker", "--exit-when-idle"]);
    assert_eq!(cli.json(&["runs", "show", &run_id])["status"], "completed");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_running_worker_picks_up_a_new_approval_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::sqlite(dir.path());
    a_running_worker_picks_up_a_new_approval(&cli);
}

#[test]
fn a_running_worker_picks_up_a_new_approval_on_postgres() {
    on_postgres("cli_approve", a_running_worker_picks_up_a_new_approval);
}

/// A directory with spec files for the `spec` commands, and a CLI on a SQLite file in it.
fn spec_cli() -> (tempfile::TempDir, Cli) {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::sqlite(dir.path());
    let mut draft = order_spec();
    draft["version"] = json!("2");
    draft["steps"][1]["retry"]["max_attempts"] = json!(5);
    draft["steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "notify", "builtin": {"kind": "log", "message": "shipped"}}));
    draft["transitions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"from": "ship", "on": "ok", "to": "notify"}));
    draft["editor"] =
        json!({"nodes": {"charge": {"label": "Charge", "position": {"x": 10, "y": 20}}}});
    let mut moved = order_spec();
    moved["editor"] = json!({"nodes": {"charge": {"position": {"x": 99, "y": 0}}}});
    let mut bad = order_spec();
    bad["steps"][0]["retries"] = json!(3);
    bad["steps"][1]["retry"]["max_attempts"] = json!("three");
    bad["transitions"][0]["on"] = json!("okay");
    for (file, spec) in [
        ("order.json", order_spec()),
        ("draft.json", draft),
        ("moved.json", moved),
        ("bad.json", bad),
    ] {
        std::fs::write(
            dir.path().join(file),
            serde_json::to_string_pretty(&spec).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("retry.toml"),
        "name = \"t\"\n[[triggers]]\nname = \"m\"\ntype = \"manual\"\n[[steps]]\nname = \"a\"\naction = \"x.a\"\nretry = { max_attempts = 0 }\n",
    )
    .unwrap();
    (dir, cli)
}

#[test]
fn spec_validate_prints_every_problem_with_its_pointer() {
    let (_dir, cli) = spec_cli();
    // No database: valid as a spec, and it says what it did not check.
    let out = cli.ok(&["spec", "validate", "order.json"]);
    assert!(out.contains("action keys were not checked"), "{out}");
    let out = cli.ok(&["spec", "validate", "--offline", "order.json"]);
    assert!(
        out.contains("action keys were not checked (--offline)"),
        "{out}"
    );
    // Every parse problem at once, as JSON pointers; bad input exits 2.
    let out = cli.cmd(&["spec", "validate", "bad.json"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/steps/0/retries: unknown field `retries`",
        "`retry`",
        "/steps/1/retry/max_attempts",
        "invalid_type",
        "/transitions/0/on",
        "unknown_variant",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
    let out = cli.cmd(&["--json", "spec", "validate", "bad.json"]);
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["actions_checked"], false);
    let paths: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/steps/0/retries",
            "/steps/1/retry/max_attempts",
            "/transitions/0/on"
        ]
    );
    // TOML too, validation problems included.
    let out = cli.cmd(&["spec", "validate", "--offline", "retry.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/steps/0/retry/max_attempts"), "{text}");
    assert!(text.contains("action keys were not checked"), "{text}");
    // Against a real (empty) catalog the keys are checked, and unknown.
    cli.ok(&["migrate"]);
    let out = cli.cmd(&["--json", "spec", "validate", "order.json"]);
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["actions_checked"], true);
    assert_eq!(report["problems"][0]["path"], "/steps/0/action");
    assert_eq!(report["problems"][0]["code"], "unknown_action");
}

#[test]
fn spec_graph_previews_with_run_graph_ids() {
    let (_dir, cli) = spec_cli();
    let g = cli.json(&["spec", "graph", "draft.json"]);
    let ids: Vec<&str> = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "validate:ok:charge",
            "charge:ok:review",
            "review:ok:ship",
            "review:error:refund",
            "ship:ok:notify"
        ]
    );
    assert_eq!(g["entry_steps"], json!(["validate"]));
    assert_eq!(g["nodes"][1]["id"], "charge");
    assert_eq!(g["nodes"][1]["label"], "Charge");
    assert_eq!(g["nodes"][1]["position"], json!({"x": 10.0, "y": 20.0}));
    assert_eq!(g["nodes"][2]["kind"], "approval");
    let text = cli.ok(&["spec", "graph", "draft.json"]);
    assert!(text.contains("review --error--> refund"), "{text}");
    assert!(text.contains("entry"), "{text}");
    let out = cli.cmd(&["spec", "graph", "bad.json"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn spec_diff_names_changes_and_leaves_running_runs_alone() {
    let (_dir, cli) = spec_cli();
    let d = cli.json(&["spec", "diff", "order.json", "draft.json"]);
    assert_eq!(d["version"], json!({"before": "1", "after": "2"}));
    assert_eq!(d["steps"]["added"], json!(["notify"]));
    assert_eq!(
        d["steps"]["changed"],
        json!([{"id": "charge", "fields": ["retry"]}])
    );
    assert_eq!(d["edges"]["added"], json!(["ship:ok:notify"]));
    assert_eq!(d["fingerprint_changed"], true);
    assert_eq!(d["editor_changed"], true);
    assert_eq!(d["running_runs_unaffected"], true);
    let text = cli.ok(&["spec", "diff", "order.json", "draft.json"]);
    assert!(
        text.contains("steps:       + notify, ~ charge (retry)"),
        "{text}"
    );
    assert!(text.contains("running runs: unaffected"), "{text}");
    // Moving a node changes the editor section only.
    let d = cli.json(&["spec", "diff", "order.json", "moved.json"]);
    assert_eq!(d["fingerprint_changed"], false);
    assert_eq!(d["editor_changed"], true);
    assert_eq!(d["steps"]["changed"], json!([]));
    let out = cli.cmd(&["spec", "diff", "order.json", "bad.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bad.json has 3 problem(s)"));
}

#[test]
fn spec_schema_prints_the_checked_in_schema() {
    let (_dir, cli) = spec_cli();
    let printed = cli.json(&["spec", "schema"]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/workflow-spec.schema.json");
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        printed == checked_in,
        "docs/workflow-spec.schema.json is out of date: squid-mesh spec schema > docs/workflow-spec.schema.json"
    );
    assert_eq!(printed["title"], "Squid Mesh workflow spec");
    assert!(printed["properties"]["editor"].is_object());
}

/// prepare (echo) -> gate (pause) -> ship (echo): dynamic work grows from `prepare` while
/// the run waits at the gate.
const GATED: &str = r#"{
    "name": "gated",
    "triggers": [{"name": "manual", "type": "manual"}],
    "steps": [
        {"name": "prepare", "action": "echo", "output": "prepared"},
        {"name": "gate", "builtin": {"kind": "pause"}},
        {"name": "ship", "action": "echo"}
    ],
    "transitions": [
        {"from": "prepare", "on": "ok", "to": "gate"},
        {"from": "gate", "on": "ok", "to": "ship"}
    ]
}"#;

fn dynamic_work_scenario(cli: &Cli) {
    setup(&cli.dir);
    cli.ok(&["migrate"]);
    cli.ok(&["actions", "import", "actions.toml"]);
    let fan = squid_mesh_example_artifacts::FAN_OUT;
    cli.ok(&["actions", "approve", "fan.square", fan]);
    cli.ok(&["actions", "approve", "fan.sum", fan]);
    std::fs::write(cli.dir.join("gated.json"), GATED).unwrap();
    let run = cli.json(&["start", "gated.json"])["run_id"]
        .as_str()
        .expect("run id")
        .to_owned();
    cli.json(&["worker", "--exit-when-idle"]);
    let work = json!({
        "key": "sq",
        "origin": {"step": "prepare"},
        "nodes": [
            {"id": "sq-0", "action": "fan.square", "input": {"value": 3}},
            {"id": "sq-1", "action": "fan.square", "input": {"value": 4}}
        ],
        "join": {"id": "sq-sum", "action": "fan.sum", "output": "total"},
        "reason": "squares of the order lines"
    });
    std::fs::write(cli.dir.join("work.json"), work.to_string()).unwrap();
    let preview = cli.json(&["runs", "work", &run, "work.json", "--preview"]);
    assert_eq!(preview["added_node_ids"], json!(["sq-0", "sq-1", "sq-sum"]));
    assert_eq!(preview["recordable"], json!(true));
    let receipt = cli.json(&["runs", "work", &run, "work.json"]);
    assert_eq!(
        (receipt["nodes"].clone(), receipt["duplicate"].clone()),
        (json!(3), json!(false))
    );
    let again = cli.ok(&["runs", "work", &run, "work.json"]);
    assert!(again.contains("already there"), "{again}");
    let graph = cli.ok(&["runs", "graph", &run]);
    assert!(
        graph.contains("dynamic work sq (running) from prepare: 3 nodes"),
        "{graph}"
    );
    let line = |g: &str, id: &str| {
        g.lines()
            .find(|l| l.contains(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line(&graph, "sq-1").contains("pending"), "{graph}");
    cli.json(&["worker", "--exit-when-idle"]);
    let graph = cli.ok(&["runs", "graph", &run]);
    assert!(graph.contains("dynamic work sq (completed)"), "{graph}");
    let join = line(&graph, "sq-sum");
    assert!(
        join.contains("completed") && join.ends_with("join"),
        "{graph}"
    );
    let shown = cli.json(&["runs", "show", &run]);
    assert_eq!(
        shown["context"]["total"],
        json!({"total": 25.0, "count": 2})
    );
    let explained = cli.json(&["runs", "explain", &run]);
    assert_eq!(explained["details"]["dynamic_work_keys"], json!(["sq"]));

    // Bad input: refused with paths, exit 2, nothing written.
    std::fs::write(
        cli.dir.join("bad.json"),
        json!({"key": "bad", "origin": {"step": "prepare"}, "nodes": [{"id": "x", "action": "no.such"}, {"id": "sq-0", "action": "fan.square"}]}).to_string(),
    )
    .unwrap();
    let (code, err) = cli.fails(&["runs", "work", &run, "bad.json"]);
    assert_eq!(code, 2, "{err}");
    let (_, err) = cli.fails(&["--json", "runs", "work", &run, "bad.json"]);
    let body: Value = serde_json::from_str(err.trim()).expect("a JSON error");
    assert_eq!(body["error"]["code"], "invalid_dynamic_work");
    assert_eq!(
        body["error"]["problems"][0]["path"], "/nodes/0/action",
        "{body}"
    );
    assert!(
        err.contains("/nodes/0/action") && err.contains("unknown_action"),
        "{err}"
    );
    assert!(
        err.contains("/nodes/1/id") && err.contains("collides_with_node"),
        "{err}"
    );
    std::fs::write(cli.dir.join("typo.json"), r#"{"key": "t", "nodez": []}"#).unwrap();
    let (code, err) = cli.fails(&["runs", "work", &run, "typo.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nodez"), "{err}");
    let (code, _) = cli.fails(&["runs", "work", "not-a-uuid", "work.json"]);
    assert_eq!(code, 2);

    // An invalid spec is still drawn (an editor shows where it is wrong), with a warning.
    let drawn = cli.cmd(&["spec", "graph", "broken.json"]);
    assert!(drawn.status.success());
    let warning = String::from_utf8_lossy(&drawn.stderr);
    assert!(warning.contains("problem(s)"), "{warning}");
}

#[test]
fn dynamic_work_from_the_cli_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::sqlite(dir.path());
    dynamic_work_scenario(&cli);
}

#[test]
fn dynamic_work_from_the_cli_on_postgres() {
    on_postgres("dynamic", dynamic_work_scenario);
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET /metrics` at `port`, or `None` while nothing listens.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some(body)
}

/// The value of the sample `name` whose labels include every `labels` pair.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

fn spawn_worker(cli: &Cli, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .current_dir(&cli.dir)
        .env_remove("SQUID_MESH_DATABASE")
        .args(["--database", &cli.database, "--schema", &cli.schema])
        .arg("worker")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("worker starts")
}

fn terminate(worker: std::process::Child) -> Output {
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    worker.wait_with_output().expect("worker exits")
}

/// The worker's Prometheus endpoint after a known workload: two orders, one of whose charges
/// fails once and is retried, both stopping at the review gate. Counters are exact.
#[test]
fn the_metrics_endpoint_counts_a_known_workload() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    cli.json(&["actions", "import"]);
    for (id, succeed_on) in [("o-1", 2), ("o-2", 1)] {
        let payload = json!({"order_id": id, "items": [{"sku": "tea", "quantity": 1, "unit_price_cents": 450}], "succeed_on_attempt": succeed_on});
        cli.json(&["start", "order.json", "--payload", &payload.to_string()]);
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = spawn_worker(
        &cli,
        &["--metrics-addr", &addr, "--metrics-sample-secs", "1"],
    );
    let started = std::time::Instant::now();
    let body = loop {
        if let Some(body) = scrape(port)
            && sample(&body, "squid_mesh_runs", &[("status", "paused")]) == Some(2.0)
        {
            break body;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the runs never paused at review: {:?}",
            scrape(port)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = terminate(worker);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order = [("workflow", "cli_order"), ("queue", "default")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = order.to_vec();
        l.extend_from_slice(extra);
        l
    };
    let started_total = "squid_mesh_steps_started_total";
    let finished_total = "squid_mesh_steps_finished_total";
    assert_eq!(
        sample(&body, started_total, &with(&[("step", "validate")])),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, started_total, &with(&[("step", "charge")])),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            finished_total,
            &with(&[("step", "charge"), ("outcome", "succeeded")])
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            finished_total,
            &with(&[
                ("step", "charge"),
                ("outcome", "failed"),
                ("error_code", "gateway_unavailable")
            ])
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "squid_mesh_retries_total",
            &[("workflow", "cli_order"), ("step", "charge")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "squid_mesh_step_duration_seconds_count",
            &[
                ("workflow", "cli_order"),
                ("step", "validate"),
                ("outcome", "succeeded")
            ]
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "squid_mesh_action_duration_seconds_count",
            &[("action", "payments.charge")]
        ),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "squid_mesh_runs", &[("status", "completed")]),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "squid_mesh_redeliveries_total", &[]),
        None,
        "none: {body}"
    );
    assert!(
        sample(
            &body,
            "squid_mesh_commit_batch_units_count",
            &[("backend", "sqlite")]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        body.contains("# HELP squid_mesh_steps_started_total"),
        "{body}"
    );
}

/// Past the drain deadline, SIGTERM gives the running step back, due at once: another worker
/// takes it without waiting for the 60 s lease to expire.
#[test]
fn sigterm_past_the_deadline_gives_the_step_back() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    write_napper(&cli);
    let run = cli.json(&["start", "nap.json", "--payload", r#"{"sleep_ms": 4000}"#]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let worker = spawn_worker(
        &cli,
        &[
            "--concurrency",
            "1",
            "--shutdown-secs",
            "1",
            "--lease-secs",
            "60",
        ],
    );
    wait_until_claimed(&cli, &run_id);
    let stopping = std::time::Instant::now();
    let out = terminate(worker);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(3),
        "stopped after the 1 s deadline, not after the step: {:?}",
        stopping.elapsed()
    );
    let shown = cli.json(&["runs", "show", &run_id]);
    assert_eq!(
        shown["attempts"][0]["status"], "scheduled",
        "given back: {shown}"
    );
    // Another worker runs it now: no lease to wait for.
    let taken = std::time::Instant::now();
    cli.json(&["worker", "--exit-when-idle"]);
    assert!(
        taken.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        taken.elapsed()
    );
    let shown = cli.json(&["runs", "show", &run_id]);
    assert_eq!(shown["status"], "completed", "{shown}");
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1, "{shown}");
}

/// An OTLP/HTTP collector for tests: accepts every POST (JSON bodies) and keeps them.
struct Collector {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl Collector {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                            if let Some((k, v)) = header.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                            kept.lock().unwrap().push((path, json));
                        }
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                        );
                    }
                });
            }
        });
        Self { port, bodies }
    }

    /// Every exported span of the process whose `service.instance.id` is `instance`:
    /// (trace id, span name, attributes as "key=value" strings).
    fn spans(&self, instance: &str) -> Vec<(String, String, Vec<String>)> {
        let mut out = Vec::new();
        for (path, body) in self.bodies.lock().unwrap().iter() {
            if path != "/v1/traces" {
                continue;
            }
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                if !rs["resource"].to_string().contains(instance) {
                    continue;
                }
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let attrs = span["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|kv| {
                                let v = &kv["value"];
                                let v = v["stringValue"]
                                    .as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| v.to_string());
                                format!("{}={v}", kv["key"].as_str().unwrap_or(""))
                            })
                            .collect();
                        out.push((
                            span["traceId"].as_str().unwrap_or("").to_owned(),
                            span["name"].as_str().unwrap_or("").to_owned(),
                            attrs,
                        ));
                    }
                }
            }
        }
        out
    }
}

/// Two worker processes on one Postgres database run the steps of one run (the first until
/// the review gate, the second after the approval): every step span either exports over
/// OTLP is in the same trace.
#[test]
fn a_run_keeps_one_trace_across_worker_processes_on_postgres() {
    on_postgres("cli_trace", |cli| {
        setup(&cli.dir);
        cli.json(&["actions", "import"]);
        let payload = r#"{"order_id": "o-1", "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}]}"#;
        let run = cli.json(&["start", "order.json", "--payload", payload]);
        let run_id = run["run_id"].as_str().unwrap().to_owned();
        let collector = Collector::start();
        let worker = |instance: &str| {
            let out = Command::new(BIN)
                .current_dir(&cli.dir)
                .env_remove("SQUID_MESH_DATABASE")
                .env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://127.0.0.1:{}", collector.port),
                )
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
                .env(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    format!("service.instance.id={instance}"),
                )
                .args(["--database", &cli.database, "--schema", &cli.schema])
                .args(["--json", "worker", "--exit-when-idle", "--otel"])
                .output()
                .expect("worker runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        worker("worker-a");
        cli.json(&["approve", &run_id, "--actor", "ana"]);
        worker("worker-b");
        assert_eq!(cli.json(&["runs", "show", &run_id])["status"], "completed");
        let of_run = |instance: &str| {
            collector
                .spans(instance)
                .into_iter()
                .filter(|(_, name, attrs)| {
                    name.starts_with("step ") && attrs.contains(&format!("run_id={run_id}"))
                })
                .collect::<Vec<_>>()
        };
        let a = of_run("worker-a");
        let b = of_run("worker-b");
        let names = |spans: &[(String, String, Vec<String>)]| {
            spans.iter().map(|s| s.1.clone()).collect::<Vec<_>>()
        };
        assert!(names(&a).contains(&"step validate".to_owned()), "{a:?}");
        assert!(names(&b).contains(&"step ship".to_owned()), "{b:?}");
        let trace = &a[0].0;
        assert_eq!(trace.len(), 32, "{trace}");
        for span in a.iter().chain(&b) {
            assert_eq!(&span.0, trace, "{} left the run's trace", span.1);
            assert!(
                span.2.contains(&format!("trace_id={trace}")),
                "the span names its trace: {:?}",
                span.2
            );
        }
    });
}

/// Shell completions print; a bad log filter is a usage error, not a panic.
#[test]
fn completions_and_a_bad_log_filter() {
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::sqlite(dir.path());
    let script = cli.ok(&["completions", "bash"]);
    assert!(
        script.contains("squid-mesh") && script.contains("worker"),
        "{script}"
    );
    let (code, err) = cli.fails(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = cli.fails(&["--log-level", "squid_mesh=[", "runs", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--log-level"), "{err}");
}

/// `start --wait` returns how the run ended (a worker runs it meanwhile), or exits 4 when it
/// is still going at the deadline.
#[test]
fn start_and_wait_for_the_end() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    write_napper(&cli);
    let worker = spawn_worker(&cli, &["--concurrency", "2"]);
    let ended = cli.json(&[
        "start",
        "nap.json",
        "--payload",
        r#"{"sleep_ms": 10}"#,
        "--wait",
        "60",
    ]);
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["ended"], true);
    let out = cli.cmd(&[
        "start",
        "nap.json",
        "--payload",
        r#"{"sleep_ms": 5000}"#,
        "--wait",
        "1",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("is still running after 1 s"), "{said}");
    terminate(worker);
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: (status, headers and body as text).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

#[test]
fn the_dashboard_command_serves_pages_and_acts_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let cli = Cli::sqlite(dir.path());
    write_napper(&cli);
    let run = cli.json(&["start", "nap.json", "--payload", r#"{"sleep_ms": 10}"#]);
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    // Refused configurations.
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[tokens]]\ntoken = \"short\"\nactor = \"a\"\nscope = \"auditor\"\n",
    )
    .unwrap();
    let (_, err) = cli.fails(&[
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--tokens",
        "bad.toml",
    ]);
    assert!(
        err.contains("token entry 1") && err.contains("16 characters"),
        "{err}"
    );
    let (_, err) = cli.fails(&[
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--anonymous-scope",
        "none",
    ]);
    assert!(
        err.contains("--anonymous-scope none needs --tokens"),
        "{err}"
    );
    let missing = Cli {
        dir: cli.dir.clone(),
        database: "mistyped.db".into(),
        schema: cli.schema.clone(),
    };
    let (_, err) = missing.fails(&["dashboard", "--listen", "127.0.0.1:0"]);
    assert!(err.contains("no database at mistyped.db"), "{err}");
    assert!(!cli.dir.join("mistyped.db").exists(), "nothing was created");

    std::fs::write(
        dir.path().join("tokens.toml"),
        "[[tokens]]\ntoken = \"cli-dashboard-token-0001\"\nactor = \"ana\"\nscope = \"auditor\"\ncan_act = true\n",
    )
    .unwrap();
    let port = free_port();
    let server = Command::new(BIN)
        .current_dir(&cli.dir)
        .env_remove("SQUID_MESH_DATABASE")
        .args([
            "--database",
            &cli.database,
            "dashboard",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tokens",
            "tokens.toml",
            "--anonymous-scope",
            "operator",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dashboard starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http(port, "GET", "/health", &[], "").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, page) = http(port, "GET", "/runs", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains(&run_id) && page.contains("Read-only until you sign in"),
        "{page}"
    );
    let bearer = ("Authorization", "Bearer cli-dashboard-token-0001");
    let (_, page) = http(port, "GET", &format!("/runs/{run_id}"), &[bearer], "").unwrap();
    assert!(page.contains("id=\"control-cancel\""), "{page}");
    let at = page.find("data-csrf=\"").unwrap() + "data-csrf=\"".len();
    let csrf = &page[at..at + 64];
    let form = format!("csrf={csrf}&comment=from+the+dashboard");
    let (status, _) = http(
        port,
        "POST",
        &format!("/runs/{run_id}/cancel"),
        &[
            bearer,
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "csrf=00",
    )
    .unwrap();
    assert_eq!(status, 403);
    let (status, reply) = http(
        port,
        "POST",
        &format!("/runs/{run_id}/cancel"),
        &[
            bearer,
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &form,
    )
    .unwrap();
    assert_eq!(status, 303, "{reply}");
    let shown = cli.json(&["runs", "show", &run_id]);
    assert_eq!(shown["status"], "cancelled");
    let cancel = shown["commands"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (cancel["actor"].as_str(), cancel["comment"].as_str()),
        (Some("ana"), Some("from the dashboard"))
    );

    let out = terminate(server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("dashboard on http://127.0.0.1:{port}/"))
            && stderr.contains("1 token(s)"),
        "{stderr}"
    );
}
