//! Real processes sharing one database: a worker killed mid-step, its lease expiring, another
//! process redelivering the same attempt, and every process restart in between.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_e2e-worker");

fn worker(db: &str, schema: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(WORKER);
    cmd.arg(db).args(args).stderr(Stdio::inherit());
    if let Some(s) = schema {
        cmd.env("SQUID_MESH_PG_SCHEMA", s);
    }
    cmd
}

fn run_ok(db: &str, schema: Option<&str>, args: &[&str]) -> Output {
    let out = worker(db, schema, args)
        .output()
        .expect("e2e-worker starts");
    assert!(
        out.status.success(),
        "e2e-worker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scenario(db: &str, schema: Option<&str>) {
    // Process 1 starts the run and exits.
    let out = run_ok(db, schema, &["start"]);
    let run_id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();

    // Process 2 executes the first step and exits.
    run_ok(db, schema, &["step", "1"]);

    // Process 3 claims the slow second step and is killed in the middle of it.
    let mut doomed = worker(db, schema, &["step", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    // Killed once it holds the claim on the slow step (it runs for seconds).
    let waiting = Instant::now();
    loop {
        let show = run_ok(db, schema, &["show", &run_id]);
        let snap: Value = serde_json::from_slice(&show.stdout).expect("json snapshot");
        let claimed = snap["attempts"]
            .as_array()
            .expect("attempts")
            .iter()
            .any(|a| a["step"] == "slow_reserve" && a["status"] == "claimed");
        if claimed {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "the worker never claimed the slow step: {snap}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    doomed.kill().expect("kill");
    let _ = doomed.wait();

    // Process 4 waits for the lease to expire, redelivers the step and finishes the run.
    let started = Instant::now();
    loop {
        run_ok(db, schema, &["drain"]);
        let show = run_ok(db, schema, &["show", &run_id]);
        let snap: Value = serde_json::from_slice(&show.stdout).expect("json snapshot");
        if snap["status"] == "completed" {
            let reserve = snap["attempts"]
                .as_array()
                .expect("attempts")
                .iter()
                .find(|a| a["step"] == "slow_reserve")
                .expect("reserve");
            assert_eq!(
                reserve["attempt"], 1,
                "a redelivery keeps the attempt number"
            );
            assert_eq!(
                reserve["claims"], 2,
                "claimed by the killed process, then redelivered"
            );
            assert_eq!(snap["context"]["payment"]["amount_cents"], 900);
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run did not complete: {snap}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_worker_is_recovered_by_another_process_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("shared.db");
    scenario(db.to_str().expect("utf-8 path"), None);
    assert!(Path::new(&db).exists());
}

#[test]
fn a_killed_worker_is_recovered_by_another_process_on_postgres() {
    squid_mesh_e2e::on_postgres("e2e", |url, schema| scenario(url, Some(schema)));
}
