//! Properties of the engine over generated workflows and outcomes, on a real SQLite file:
//! every run ends, its end is the one its steps' outcomes imply, no attempt is applied
//! twice, the journal rebuilds the stored rows, and a failed run undoes its completed steps
//! newest first.
//!
//! Each generated step charges a payment that fails with a retryable error until attempt
//! `k` (or declines at once), under a retry policy of `m` attempts, and may declare an undo.

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use squid_mesh::clock::ManualClock;
use squid_mesh::journal::Fact;
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{RunStatus, StartOptions};

use crate::backends::{Db, T0};
use crate::engine::{drain, registry};

#[derive(Debug, Clone)]
struct StepPlan {
    /// The attempt at which the charge goes through.
    succeeds_on: u32,
    /// Attempts the retry policy allows.
    attempts: u32,
    /// The card is declined: a fatal error on the first attempt.
    declined: bool,
    /// The step declares a compensation.
    undo: bool,
}

impl StepPlan {
    fn succeeds(&self) -> bool {
        !self.declined && self.succeeds_on <= self.attempts
    }

    fn attempts_used(&self) -> u32 {
        if self.declined {
            1
        } else {
            self.succeeds_on.min(self.attempts)
        }
    }
}

fn step_plan() -> impl Strategy<Value = StepPlan> {
    (
        1u32..=3,
        1u32..=3,
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(|(succeeds_on, attempts, declined, undo)| StepPlan {
            succeeds_on,
            attempts,
            declined,
            undo,
        })
}

fn workflow(plans: &[StepPlan]) -> (WorkflowSpec, Value) {
    let mut trigger = Trigger::manual("m").string("order_id");
    let mut payload = Map::new();
    payload.insert("order_id".into(), json!("o-1"));
    let mut b = WorkflowSpec::builder("generated");
    for (i, p) in plans.iter().enumerate() {
        let (amount, k) = (format!("amount_{i}"), format!("k_{i}"));
        trigger = trigger.integer(&amount).integer(&k);
        payload.insert(amount.clone(), json!(if p.declined { -1 } else { 100 }));
        payload.insert(k.clone(), json!(p.succeeds_on));
        let mut step = Step::action(format!("s{i}"), "payments.charge")
            .input_path("order_id", ["order_id"])
            .input_path("amount_cents", [amount.as_str()])
            .input_path("succeed_on_attempt", [k.as_str()])
            .retry_exponential(
                p.attempts,
                Duration::from_millis(1),
                Duration::from_millis(1),
            )
            .output(format!("out_{i}"));
        if p.undo {
            step = step.compensate("echo");
        }
        b = b.step(step);
    }
    for i in 1..plans.len() {
        b = b.on_ok(&format!("s{}", i - 1), &format!("s{i}"));
    }
    (b.trigger(trigger).build(), Value::Object(payload))
}

/// Drains the run until it ends (retries wait 1 ms: each round moves the clock past them).
async fn run_to_end(
    engine: &squid_mesh::Engine,
    clock: &ManualClock,
    run: squid_mesh::RunId,
) -> Result<squid_mesh::RunSnapshot, TestCaseError> {
    let mut rounds = 0;
    loop {
        drain(engine).await;
        let s = engine.snapshot(run).await.expect("snapshot");
        if s.is_terminal() {
            return Ok(s);
        }
        rounds += 1;
        prop_assert!(rounds < 50, "the run did not end: {:?}", s.status);
        clock.advance(Duration::from_millis(10));
    }
}

/// Nothing is applied twice, and the journal rebuilds the stored rows.
async fn applied_once_and_consistent(
    engine: &squid_mesh::Engine,
    run: squid_mesh::RunId,
) -> Result<(), TestCaseError> {
    let journal = engine.journal(run).await.expect("journal");
    let mut applied = HashSet::new();
    for (_, fact) in &journal {
        if let Fact::RunnableApplied { runnable_key, .. } = fact {
            prop_assert!(
                applied.insert(runnable_key.clone()),
                "{} applied twice",
                runnable_key
            );
        }
    }
    let diff = engine.verify_run(run).await.expect("verify");
    prop_assert!(diff.is_empty(), "journal and rows disagree: {:?}", diff);
    Ok(())
}

async fn check(plans: Vec<StepPlan>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::Sqlite(dir.path().join("prop.db"));
    let clock = ManualClock::new(T0);
    let engine = db.engine(&registry(), &clock).await;
    let (spec, payload) = workflow(&plans);
    let run = engine
        .start(&spec, None, payload, StartOptions::default())
        .await
        .expect("starts");
    // The run ends: retries wait 1 ms, so each round moves the clock past them.
    let snap = run_to_end(&engine, &clock, run.run_id).await?;
    // Its end is the one the outcomes imply.
    let first_failure = plans.iter().position(|p| !p.succeeds());
    let expected = if first_failure.is_some() {
        RunStatus::Failed
    } else {
        RunStatus::Completed
    };
    prop_assert_eq!(snap.status, expected);
    let reached = first_failure.map_or(plans.len(), |f| f + 1);
    for (i, p) in plans.iter().enumerate() {
        let tries = snap.attempts_of(&format!("s{i}")).len();
        let want = if i < reached {
            p.attempts_used() as usize
        } else {
            0
        };
        prop_assert_eq!(tries, want, "attempts of s{}", i);
    }
    // Nothing is applied twice.
    applied_once_and_consistent(&engine, run.run_id).await?;
    // A failed run undoes its completed steps that declare an undo, newest first.
    if let Some(f) = first_failure {
        let undone: Vec<String> = (0..f)
            .rev()
            .filter(|&i| plans[i].undo)
            .map(|i| format!("s{i}"))
            .collect();
        match &snap.compensation {
            Some(c) => prop_assert_eq!(&c.compensated, &undone),
            None => prop_assert!(undone.is_empty(), "nothing was compensated"),
        }
        let order: Vec<String> = snap
            .attempts
            .iter()
            .filter_map(|a| a.step.strip_prefix("compensate:").map(str::to_owned))
            .collect();
        prop_assert_eq!(order, undone, "compensations ran newest first");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn generated_runs_end_as_their_outcomes_imply(plans in prop::collection::vec(step_plan(), 1..=5)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(check(plans))?;
    }
}

/// A dependency-mode shape: each step waits for a random subset of the earlier ones.
fn dag() -> impl Strategy<Value = Vec<(StepPlan, Vec<usize>)>> {
    prop::collection::vec(
        (
            step_plan(),
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        ),
        1..=6,
    )
    .prop_map(|steps| {
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (plan, picks))| {
                let mut after: Vec<usize> = if i == 0 {
                    Vec::new()
                } else {
                    picks.iter().map(|p| p.index(i)).collect()
                };
                after.sort_unstable();
                after.dedup();
                (
                    StepPlan {
                        undo: false,
                        ..plan
                    },
                    after,
                )
            })
            .collect::<Vec<_>>()
    })
    .prop_map(|mut steps| {
        // Without any `after` a spec is in transition mode: give the last step one.
        let n = steps.len();
        if n > 1 && steps.iter().all(|(_, after)| after.is_empty()) {
            steps[n - 1].1.push(0);
        }
        steps
    })
}

async fn check_dag(steps: Vec<(StepPlan, Vec<usize>)>) -> Result<(), TestCaseError> {
    let plans: Vec<StepPlan> = steps.iter().map(|(p, _)| p.clone()).collect();
    let (spec, payload) = workflow(&plans);
    // The same steps, wired by `after` instead of transitions.
    let mut b = WorkflowSpec::builder("generated_dag");
    for (i, s) in spec.steps.iter().enumerate() {
        let after: Vec<String> = steps[i].1.iter().map(|d| format!("s{d}")).collect();
        let mut step = s.clone();
        step.after = after;
        b = b.step(step);
    }
    let spec = b.trigger(spec.triggers[0].clone()).build();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::Sqlite(dir.path().join("dag.db"));
    let clock = ManualClock::new(T0);
    let engine = db.engine(&registry(), &clock).await;
    let run = engine
        .start(&spec, None, payload, StartOptions::default())
        .await
        .expect("starts");
    let snap = run_to_end(&engine, &clock, run.run_id).await?;
    // A step is reachable when every step it waits for is reachable and succeeds.
    let mut reachable = vec![false; steps.len()];
    for i in 0..steps.len() {
        reachable[i] = steps[i]
            .1
            .iter()
            .all(|&d| reachable[d] && plans[d].succeeds());
    }
    let fails = (0..steps.len()).any(|i| reachable[i] && !plans[i].succeeds());
    let expected = if fails {
        RunStatus::Failed
    } else {
        RunStatus::Completed
    };
    prop_assert_eq!(snap.status, expected);
    for (i, (plan, after)) in steps.iter().enumerate() {
        let tries = snap.attempts_of(&format!("s{i}")).len();
        if tries > 0 {
            // A step runs only after every step it waits for succeeded.
            for d in after {
                prop_assert!(plans[*d].succeeds(), "s{} ran after s{} failed", i, d);
            }
        }
        prop_assert!(
            tries <= plan.attempts_used() as usize,
            "s{} ran {} times",
            i,
            tries
        );
        if expected == RunStatus::Completed {
            prop_assert_eq!(tries, plan.attempts_used() as usize, "attempts of s{}", i);
        }
    }
    applied_once_and_consistent(&engine, run.run_id).await?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn generated_dependency_graphs_end_as_their_outcomes_imply(steps in dag()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(check_dag(steps))?;
    }
}
