//! A minimal host process for end-to-end tests.
//!
//! ```text
//! e2e-worker DATABASE start            start a checkout run; print its id
//! e2e-worker DATABASE step N           execute up to N steps (lease 1 s, heartbeat 200 ms)
//! e2e-worker DATABASE drain            execute until nothing is due
//! e2e-worker DATABASE show RUN_ID      print the run's snapshot as JSON
//! e2e-worker DATABASE chaos-start N     start N runs of the chaos workflow
//! e2e-worker DATABASE chaos-work FILE   run a worker pool until killed; every execution of
//!                                       the `effect` step appends `run step attempt` to FILE
//! e2e-worker DATABASE chaos-pending     print how many runs have not ended
//! e2e-worker DATABASE chaos-verify FILE check the chaos invariants; print a JSON summary
//! ```
//!
//! DATABASE is a SQLite path or a Postgres URL (schema from `SQUID_MESH_PG_SCHEMA`).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use squid_mesh::actions::{ActionKey, ActionRegistry, RegisteredAction};
use squid_mesh::engine::ExecuteOptions;
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{Digest, Engine, HostConfig, RunId, StartOptions};
use squid_mesh_example_artifacts as artifacts;

fn checkout() -> WorkflowSpec {
    WorkflowSpec::builder("checkout")
        .trigger(
            Trigger::manual("manual")
                .string("order_id")
                .list("items")
                .integer("sleep_ms"),
        )
        .step(Step::action("validate", "orders.validate").output("validation"))
        .step(
            Step::action("slow_reserve", "echo")
                .input(["sleep_ms"])
                .output("reservation"),
        )
        .step(
            Step::action("charge", "payments.charge")
                .input_path("order_id", ["order_id"])
                .input_path("amount_cents", ["validation", "total_cents"])
                .output("payment"),
        )
        .on_ok("validate", "slow_reserve")
        .on_ok("slow_reserve", "charge")
        .build()
}

/// Three steps: a nap of a few hundred milliseconds (kills land in the middle of steps), an
/// external side effect (a log record the process writes to a file), another nap.
fn chaos() -> WorkflowSpec {
    WorkflowSpec::builder("chaos")
        .trigger(
            Trigger::manual("manual")
                .integer("sleep_ms")
                .string("op")
                .list("lines"),
        )
        .step(
            Step::action("prepare", "echo")
                .input(["sleep_ms"])
                .output("prepared"),
        )
        .step(
            Step::action("effect", "conformance")
                .input(["op", "lines"])
                .output("effect"),
        )
        .step(
            Step::action("finish", "echo")
                .input(["sleep_ms"])
                .output("finished"),
        )
        .on_ok("prepare", "effect")
        .on_ok("effect", "finish")
        .build()
}

/// Appends `run step attempt` to a file for every `effect` record an action logs: a side
/// effect outside the database, counted by something the engine does not control.
struct EffectLog(std::sync::Mutex<std::fs::File>);

#[derive(Default)]
struct EffectFields {
    run_id: String,
    step: String,
    attempt: u64,
    message: String,
}

impl tracing::field::Visit for EffectFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "run_id" {
            value.clone_into(&mut self.run_id);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "attempt" {
            self.attempt = value;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "run_id" => self.run_id = text,
            "step" => self.step = text,
            "message" => self.message = text,
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EffectLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "squid_mesh::action" {
            return;
        }
        let mut f = EffectFields::default();
        event.record(&mut f);
        if f.message == "effect" {
            use std::io::Write as _;
            let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // One write per line (O_APPEND): a kill never leaves half a line.
            let line = format!(
                "{} {} {} {}\n",
                f.run_id,
                f.step,
                f.attempt,
                std::process::id()
            );
            let _ = file.write_all(line.as_bytes());
        }
    }
}

fn registry() -> Result<ActionRegistry> {
    let registry = ActionRegistry::new();
    for (key, path) in [
        ("orders.validate", artifacts::VALIDATE_ORDER),
        ("payments.charge", artifacts::CHARGE_PAYMENT),
        ("echo", artifacts::ECHO),
        ("conformance", artifacts::CONFORMANCE),
    ] {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        registry.register(RegisteredAction::from_file(
            ActionKey::new(key)?,
            path,
            Digest::of(&bytes),
        ))?;
    }
    Ok(registry)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(db), Some(cmd)) = (args.first(), args.get(1)) else {
        bail!("usage: e2e-worker DATABASE start|step N|drain|show RUN_ID");
    };
    let mut builder = Engine::builder()
        .database_url(db)
        .registry(registry()?)
        .host_config(
            HostConfig::default().cache_dir(std::env::temp_dir().join("squid-mesh-e2e-cache")),
        );
    if let Ok(schema) = std::env::var("SQUID_MESH_PG_SCHEMA") {
        builder = builder.postgres_schema(schema);
    }
    if cmd == "chaos-work" {
        use tracing_subscriber::layer::SubscriberExt as _;
        let path = args.get(2).context("chaos-work needs the effects file")?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {path}"))?;
        let subscriber =
            tracing_subscriber::registry().with(EffectLog(std::sync::Mutex::new(file)));
        tracing::subscriber::set_global_default(subscriber).context("installing the effect log")?;
    }
    let engine = builder.build().await.context("building the engine")?;
    engine.register_workflow(checkout())?;
    engine.register_workflow(chaos())?;
    let opts = ExecuteOptions::default()
        .owner_id(format!("pid-{}", std::process::id()))
        .lease_for(Duration::from_secs(1))
        .heartbeat_interval(Some(Duration::from_millis(200)));
    match cmd.as_str() {
        "start" => {
            let payload = json!({"order_id": "o-9", "items": [{"sku": "tea", "quantity": 3, "unit_price_cents": 300}], "sleep_ms": 2000});
            let run = engine
                .start("checkout", None, payload, StartOptions::default())
                .await?;
            println!("{}", run.run_id);
        }
        "step" => {
            let n: usize = args.get(2).context("step needs a count")?.parse()?;
            for _ in 0..n {
                if engine.execute_next(opts.clone()).await?.is_none() {
                    break;
                }
            }
        }
        "drain" => while engine.execute_next(opts.clone()).await?.is_some() {},
        "show" => {
            let id: RunId = args.get(2).context("show needs a run id")?.parse()?;
            println!("{}", serde_json::to_string(&engine.snapshot(id).await?)?);
            let diff = engine.verify_run(id).await?;
            if !diff.is_empty() {
                bail!("journal and rows disagree: {diff:?}");
            }
        }
        "chaos-start" => {
            let n: i64 = args.get(2).context("chaos-start needs a count")?.parse()?;
            for i in 0..n {
                let payload = json!({
                    "sleep_ms": 200 + (i * 37) % 300,
                    "op": "log",
                    "lines": [{"level": "info", "message": "effect"}],
                });
                engine
                    .start("chaos", None, payload, StartOptions::default())
                    .await?;
            }
        }
        "chaos-work" => {
            let _pool = squid_mesh::Worker::builder(&engine)
                .concurrency(4)
                .owner_id(format!("pid-{}", std::process::id()))
                .lease_for(Duration::from_secs(1))
                .heartbeat_interval(Some(Duration::from_millis(250)))
                .poll_interval(Duration::from_millis(100))
                .schedules(false)
                .start()?;
            // Until killed.
            std::future::pending::<()>().await;
        }
        "chaos-pending" => println!("{}", pending(&engine).await?),
        "chaos-verify" => {
            let path = args.get(2).context("chaos-verify needs the effects file")?;
            let summary = verify_chaos(&engine, path).await?;
            println!("{summary}");
            if summary["violations"]
                .as_array()
                .is_some_and(|v| !v.is_empty())
            {
                bail!("chaos invariants violated");
            }
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}

/// Runs of the chaos workflow that have not ended.
async fn pending(engine: &Engine) -> Result<usize> {
    Ok(all_runs(engine)
        .await?
        .iter()
        .filter(|r| !r.status.is_terminal())
        .count())
}

async fn all_runs(engine: &Engine) -> Result<Vec<squid_mesh::inspect::RunSummary>> {
    use squid_mesh::inspect::{Page, RunFilter};
    let filter = RunFilter::default().workflow("chaos");
    let mut page = Page::first(1000);
    let mut out = Vec::new();
    loop {
        let result = engine.list_runs(&filter, &page).await?;
        out.extend(result.runs);
        match result.next_page {
            Some(token) => page = Page::after(1000, token),
            None => return Ok(out),
        }
    }
}

/// Every run ended completed; the journal rebuilds each run's rows; no attempt was recorded
/// or applied twice; and each attempt of the side-effect step ran at least once and at most
/// once per claim (a repeat only where a lease expired and the attempt was redelivered).
async fn verify_chaos(engine: &Engine, effects: &str) -> Result<serde_json::Value> {
    use squid_mesh::journal::Fact;
    use std::collections::HashMap;
    let mut ran: HashMap<(String, u64), u64> = HashMap::new();
    for line in std::fs::read_to_string(effects).unwrap_or_default().lines() {
        let mut parts = line.split(' ');
        if let (Some(run), Some("effect"), Some(attempt)) =
            (parts.next(), parts.next(), parts.next())
        {
            *ran.entry((run.to_owned(), attempt.parse()?)).or_default() += 1;
        }
    }
    let mut violations = Vec::new();
    let (mut runs, mut effects_total, mut duplicates, mut redeliveries) = (0, 0, 0, 0);
    for summary in all_runs(engine).await? {
        runs += 1;
        let id: RunId = summary.run_id.parse()?;
        let snap = engine.snapshot(id).await?;
        if snap.status != squid_mesh::RunStatus::Completed {
            let why = snap
                .error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            violations.push(format!("run {id} ended {:?} {why}", snap.status));
        }
        let diff = engine.verify_run(id).await?;
        if !diff.is_empty() {
            violations.push(format!("run {id}: journal and rows disagree: {diff:?}"));
        }
        let mut recorded = std::collections::HashSet::new();
        let mut applied = std::collections::HashSet::new();
        for (_, fact) in engine.journal(id).await? {
            match fact {
                Fact::AttemptRecorded { runnable_key, .. }
                    if !recorded.insert(runnable_key.clone()) =>
                {
                    violations.push(format!("{runnable_key} recorded twice"));
                }
                Fact::RunnableApplied { runnable_key, .. }
                    if !applied.insert(runnable_key.clone()) =>
                {
                    violations.push(format!("{runnable_key} applied twice"));
                }
                _ => {}
            }
        }
        for a in &snap.attempts {
            redeliveries += u64::from(a.claims.saturating_sub(1));
            if a.step != "effect" {
                continue;
            }
            let times = ran
                .get(&(id.to_string(), u64::from(a.attempt)))
                .copied()
                .unwrap_or(0);
            effects_total += times;
            duplicates += times.saturating_sub(1);
            if a.status == squid_mesh::vocab::AttemptStatus::Succeeded && times == 0 {
                violations.push(format!(
                    "{} succeeded but its effect never happened",
                    a.runnable_key
                ));
            }
            if times > u64::from(a.claims) {
                violations.push(format!(
                    "{} had its effect {times} times in {} claims",
                    a.runnable_key, a.claims
                ));
                // What the journal says about the run, to tell how the step ran twice.
                for line in std::fs::read_to_string(effects).unwrap_or_default().lines() {
                    if line.starts_with(&id.to_string()) {
                        eprintln!("{id} effect (run step attempt pid): {line}");
                    }
                }
                for (at, fact) in engine.journal(id).await? {
                    eprintln!("{id} {at}: {}", serde_json::to_string(&fact)?);
                }
            }
        }
    }
    Ok(json!({
        "runs": runs,
        "effects": effects_total,
        "duplicate_effects": duplicates,
        "redeliveries": redeliveries,
        "violations": violations,
    }))
}
