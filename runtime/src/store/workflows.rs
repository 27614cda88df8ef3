//! The statements of the workflow store: registered workflows, one row per version.
//!
//! Written once, on [`Statements`], for every backend.

use std::future::Future;

use super::{Arg, Statements, StoreResult, StoreTx};

stored_row! {
    /// One row of `workflow_versions`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WorkflowRow {
        /// The workflow's name.
        workflow: String,
        /// 1, 2, ...
        version: i64,
        /// The spec document, JSON (with its `editor` section).
        spec: String,
        /// Fingerprint of the executable shape.
        fingerprint: String,
        /// Who registered it.
        registered_by: String,
        /// Why.
        comment: Option<String>,
        /// When.
        registered_at: i64,
    }
}

/// The workflow store's statements.
pub trait WorkflowTx: StoreTx {
    /// The newest version of `workflow`.
    fn latest_workflow(
        &mut self,
        workflow: &str,
    ) -> impl Future<Output = StoreResult<Option<WorkflowRow>>> + Send;
    /// The newest version of every workflow, by name.
    fn latest_workflows(&mut self) -> impl Future<Output = StoreResult<Vec<WorkflowRow>>> + Send;
    /// Every version of `workflow`, oldest first.
    fn workflow_versions(
        &mut self,
        workflow: &str,
    ) -> impl Future<Output = StoreResult<Vec<WorkflowRow>>> + Send;
    /// Adds a version; false when that version exists already (a concurrent register).
    fn insert_workflow(
        &mut self,
        row: &WorkflowRow,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

const INSERT: &str = "INSERT INTO workflow_versions (workflow, version, spec, fingerprint, registered_by, comment, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (workflow, version) DO NOTHING";

impl<T: Statements> WorkflowTx for T {
    async fn latest_workflow(&mut self, workflow: &str) -> StoreResult<Option<WorkflowRow>> {
        let sql = format!(
            "SELECT {} FROM workflow_versions WHERE workflow = $1 ORDER BY version DESC LIMIT 1",
            WorkflowRow::COLUMNS
        );
        self.fetch_optional(&sql, &[Arg::Text(workflow)]).await
    }

    async fn latest_workflows(&mut self) -> StoreResult<Vec<WorkflowRow>> {
        let sql = format!(
            "SELECT {} FROM workflow_versions w WHERE version = (SELECT MAX(version) FROM workflow_versions l WHERE l.workflow = w.workflow) ORDER BY workflow",
            WorkflowRow::COLUMNS
        );
        self.fetch_all(&sql, &[]).await
    }

    async fn workflow_versions(&mut self, workflow: &str) -> StoreResult<Vec<WorkflowRow>> {
        let sql = format!(
            "SELECT {} FROM workflow_versions WHERE workflow = $1 ORDER BY version",
            WorkflowRow::COLUMNS
        );
        self.fetch_all(&sql, &[Arg::Text(workflow)]).await
    }

    async fn insert_workflow(&mut self, r: &WorkflowRow) -> StoreResult<bool> {
        let args = [
            Arg::Text(&r.workflow),
            Arg::Int(r.version),
            Arg::Text(&r.spec),
            Arg::Text(&r.fingerprint),
            Arg::Text(&r.registered_by),
            Arg::OptText(r.comment.as_deref()),
            Arg::Int(r.registered_at),
        ];
        Ok(self.execute(INSERT, &args).await? == 1)
    }
}
