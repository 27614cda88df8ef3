//! Chaos: worker processes on one database are killed (SIGKILL) at random while they run
//! steps, and replaced. Afterwards every run has ended completed, no attempt was recorded or
//! applied twice, the journal rebuilds every run, and the side effect of a step (counted
//! outside the database by the processes themselves) happened at least once per succeeded
//! attempt and never more often than the attempt was claimed: repeats only come from leases
//! that expired with the killed worker.
//!
//! Short by default (CI); `CHAOS_RUNS` and `CHAOS_SECS` make it as long as wanted.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const WORKER: &str = env!("CARGO_BIN_EXE_e2e-worker");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator, seeded per run and printed, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

struct Chaos<'a> {
    db: &'a str,
    schema: Option<&'a str>,
    effects: String,
}

impl Chaos<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(WORKER);
        c.arg(self.db).args(args).stderr(Stdio::inherit());
        if let Some(s) = self.schema {
            c.env("SQUID_MESH_PG_SCHEMA", s);
        }
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("e2e-worker starts");
        assert!(
            out.status.success(),
            "e2e-worker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn worker(&self) -> Child {
        self.cmd(&["chaos-work", &self.effects])
            .stdout(Stdio::null())
            .spawn()
            .expect("worker starts")
    }
}

fn chaos(db: &str, schema: Option<&str>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Chaos {
        db,
        schema,
        effects: dir.path().join("effects.txt").display().to_string(),
    };
    let runs = env_or("CHAOS_RUNS", 120);
    let secs = env_or("CHAOS_SECS", 8);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    eprintln!("chaos on {db}: {runs} runs, {secs} s of kills, seed {seed}");
    let mut rng = Lcg(seed);
    c.run(&["chaos-start", &runs.to_string()]);
    let mut workers: Vec<Child> = (0..3).map(|_| c.worker()).collect();
    let mut kills = 0;
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(300 + rng.next(1200)));
        let victim = rng.next(workers.len() as u64) as usize;
        let mut dead = workers.swap_remove(victim);
        dead.kill().expect("SIGKILL");
        let _ = dead.wait();
        kills += 1;
        workers.push(c.worker());
    }
    // Calm: the survivors finish everything, including what the killed ones held.
    let calm = Instant::now();
    loop {
        let pending: u64 = c.run(&["chaos-pending"]).trim().parse().expect("a count");
        if pending == 0 {
            break;
        }
        assert!(
            calm.elapsed() < Duration::from_secs(120),
            "{pending} runs still open two minutes after the last kill"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let summary: Value =
        serde_json::from_str(c.run(&["chaos-verify", &c.effects]).trim()).expect("json summary");
    eprintln!("chaos on {db}: {kills} kills, {summary}");
    assert_eq!(summary["runs"], runs, "{summary}");
    assert_eq!(summary["violations"], serde_json::json!([]), "{summary}");
    assert!(
        summary["duplicate_effects"].as_u64() <= summary["redeliveries"].as_u64(),
        "{summary}"
    );
    assert!(kills > 0);
}

#[test]
fn killed_workers_lose_nothing_and_repeat_only_redelivered_steps_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chaos.db");
    chaos(db.to_str().expect("utf-8 path"), None);
}

#[test]
fn killed_workers_lose_nothing_and_repeat_only_redelivered_steps_on_postgres() {
    squid_mesh_e2e::on_postgres("chaos", |url, schema| chaos(url, Some(schema)));
}
