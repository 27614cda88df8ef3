//! The workflow store: specs registered in the database, versioned, so every process (a
//! dashboard, a worker host, the CLI) can list, open and start them without a deploy.

use serde::Serialize;

use super::{Engine, EngineError, Result, now_us};
use crate::spec::WorkflowSpec;
use crate::store::{Store, StoreTx, WorkflowRow, WorkflowTx};
use crate::vocab::Timestamp;

/// A version of a workflow registered in the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredWorkflow {
    /// The workflow's name.
    pub name: String,
    /// 1 for the first registration, then one more per changed document.
    pub version: u32,
    /// The spec, with its `editor` section.
    pub spec: WorkflowSpec,
    /// Fingerprint of the executable shape.
    pub fingerprint: String,
    /// Who registered it.
    pub registered_by: String,
    /// Why.
    pub comment: Option<String>,
    /// When.
    pub registered_at: Timestamp,
}

/// The workflow store of an engine's database ([`Engine::workflow_store`]).
#[derive(Debug, Clone, Copy)]
pub struct WorkflowStore<'a> {
    engine: &'a Engine,
}

fn stored(row: WorkflowRow) -> Result<StoredWorkflow> {
    let spec = WorkflowSpec::from_json(&row.spec)
        .map_err(|e| EngineError::corrupt(format!("stored workflow {}", row.workflow), e))?;
    Ok(StoredWorkflow {
        name: row.workflow,
        version: u32::try_from(row.version).unwrap_or(u32::MAX),
        spec,
        fingerprint: row.fingerprint,
        registered_by: row.registered_by,
        comment: row.comment,
        registered_at: Timestamp(row.registered_at),
    })
}

impl Engine {
    /// The workflows registered in the database.
    pub fn workflow_store(&self) -> WorkflowStore<'_> {
        WorkflowStore { engine: self }
    }
}

impl WorkflowStore<'_> {
    /// Checks `spec` against the registry and the action catalog (as
    /// [`Engine::check_spec`]) and stores it as the workflow's next version, unless the
    /// document equals the newest version (then that version is returned). The in-process
    /// registry ([`Engine::register_workflow`]) is left as the host set it: a stored workflow
    /// is started with its stored spec.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSpec`] with every problem, [`EngineError::InvalidOption`] for
    /// an empty actor, or a store error.
    pub async fn register(
        &self,
        spec: &WorkflowSpec,
        actor: &str,
        comment: Option<&str>,
    ) -> Result<StoredWorkflow> {
        if actor.trim().is_empty() {
            return Err(EngineError::invalid_option("actor", "an actor is required"));
        }
        let report = self.engine.check_spec(spec).await?;
        if !report.is_valid() {
            return Err(EngineError::InvalidSpec(report.problems));
        }
        let text = spec.to_json();
        let e = self.engine;
        let now = now_us(e.now());
        with_store!(e, s => self.insert_on(s, spec, &text, actor, comment, now).await)
    }

    async fn insert_on<S: Store>(
        &self,
        store: &S,
        spec: &WorkflowSpec,
        text: &str,
        actor: &str,
        comment: Option<&str>,
        now: i64,
    ) -> Result<StoredWorkflow> {
        // Two registrations at once both read version n; the loser's insert of n + 1 does
        // nothing and it reads again.
        for _ in 0..8 {
            let mut tx = store.begin_write().await?;
            let latest = tx.latest_workflow(&spec.name).await?;
            if let Some(l) = &latest
                && l.spec == text
            {
                let l = l.clone();
                tx.rollback().await;
                return stored(l);
            }
            let row = WorkflowRow {
                workflow: spec.name.clone(),
                version: latest.map_or(1, |l| l.version + 1),
                spec: text.to_owned(),
                fingerprint: spec.fingerprint(),
                registered_by: actor.to_owned(),
                comment: comment.map(str::to_owned),
                registered_at: now,
            };
            if tx.insert_workflow(&row).await? {
                tx.commit().await?;
                return stored(row);
            }
            tx.rollback().await;
        }
        Err(EngineError::corrupt(
            format!("registering workflow {}", spec.name),
            "the version kept changing under concurrent registrations",
        ))
    }

    /// The newest version of `name`, if it was ever registered.
    ///
    /// # Errors
    ///
    /// A store error, or a stored document that no longer parses.
    pub async fn latest(&self, name: &str) -> Result<Option<StoredWorkflow>> {
        let e = self.engine;
        let row = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            let row = tx.latest_workflow(name).await?;
            drop(tx);
            row
        });
        row.map(stored).transpose()
    }

    /// The newest version of every registered workflow, by name.
    ///
    /// # Errors
    ///
    /// As [`WorkflowStore::latest`].
    pub async fn list(&self) -> Result<Vec<StoredWorkflow>> {
        let e = self.engine;
        let rows = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            let rows = tx.latest_workflows().await?;
            drop(tx);
            rows
        });
        rows.into_iter().map(stored).collect()
    }

    /// Every version of `name`, oldest first (empty if never registered).
    ///
    /// # Errors
    ///
    /// As [`WorkflowStore::latest`].
    pub async fn versions(&self, name: &str) -> Result<Vec<StoredWorkflow>> {
        let e = self.engine;
        let rows = with_store!(e, s => {
            let mut tx = s.begin_read().await?;
            let rows = tx.workflow_versions(name).await?;
            drop(tx);
            rows
        });
        rows.into_iter().map(stored).collect()
    }
}
