//! The read side's calls on the engine: one read transaction per call, then the pure
//! builders of [`crate::inspect`].

use super::list::page;
use super::{
    Explanation, InspectOptions, Page, RunCounts, RunFilter, RunGraph, RunInspection, RunPage,
    RunRef, RunRows,
};
use crate::engine::{Engine, EngineError, Result, existing_run, with_store};
use crate::inspect;
use crate::store::{CatalogTx, ListQuery, Lock, Store, StoreTx};
use crate::vocab::Timestamp;

impl Engine {
    /// The run as it stands: state, attempts (never a claim token or its hash), commands,
    /// parent and children, route decisions, deadlines evaluated at `opts.now` (default: the
    /// engine's clock), and with `include_history` the journal.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidRunId`] for a malformed id, [`EngineError::RunNotFound`], or a
    /// store error.
    pub async fn inspect_run(
        &self,
        run_id: impl RunRef,
        opts: InspectOptions,
    ) -> Result<RunInspection> {
        let run_id = run_id.to_run_id()?;
        let now = opts.now.unwrap_or_else(|| self.now());
        with_store!(self, s => self.inspect_on(s, run_id, now, opts.include_history).await)
            .map(|(insp, _)| insp)
    }

    /// The run's graph: nodes with statuses, edges with `selected`/`skipped`/`pending`/
    /// `blocked`, the current nodes and child links. Node details (input, output, error,
    /// attempts) only with `include_history`.
    ///
    /// # Errors
    ///
    /// As [`Engine::inspect_run`].
    pub async fn inspect_run_graph(
        &self,
        run_id: impl RunRef,
        opts: InspectOptions,
    ) -> Result<RunGraph> {
        let run_id = run_id.to_run_id()?;
        let now = opts.now.unwrap_or_else(|| self.now());
        let (insp, def) = with_store!(self, s => self.inspect_on(s, run_id, now, false).await)?;
        Ok(inspect::graph_of(
            &insp,
            def.as_ref().map(|d| &d.spec),
            opts.include_history,
        ))
    }

    /// Why the run is where it is: one reason, a summary, the valid next actions and the
    /// evidence ([`Explanation::from_inspection`] of [`Engine::inspect_run`]).
    ///
    /// # Errors
    ///
    /// As [`Engine::inspect_run`].
    pub async fn explain_run(
        &self,
        run_id: impl RunRef,
        opts: InspectOptions,
    ) -> Result<Explanation> {
        let insp = self
            .inspect_run(
                run_id,
                InspectOptions {
                    include_history: false,
                    ..opts
                },
            )
            .await?;
        Ok(Explanation::from_inspection(&insp))
    }

    /// Runs matching `filter`, newest first, one page at a time (pass the returned
    /// `next_page` token to get the next). Summaries carry no payloads.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] for an empty filter value, an inverted time range, a
    /// limit outside 1..=1000 or a malformed page token; or a store error.
    ///
    /// # Examples
    ///
    /// ```
    /// use squid_mesh::inspect::{Page, RunFilter};
    /// use squid_mesh::RunStatus;
    ///
    /// # async fn list(engine: squid_mesh::Engine) -> Result<(), squid_mesh::EngineError> {
    /// let filter = RunFilter::default().workflow("checkout").status(RunStatus::Paused);
    /// let mut page = Page::first(100);
    /// loop {
    ///     let result = engine.list_runs(&filter, &page).await?;
    ///     for run in &result.runs {
    ///         println!("{} waits at {:?}", run.run_id, run.current_steps);
    ///     }
    ///     match result.next_page {
    ///         Some(token) => page = Page::after(100, token),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_runs(&self, filter: &RunFilter, page: &Page) -> Result<RunPage> {
        self.list_runs_at(filter, page, self.now()).await
    }

    /// [`Engine::list_runs`] with deadlines evaluated at `now`.
    ///
    /// # Errors
    ///
    /// As [`Engine::list_runs`].
    pub async fn list_runs_at(
        &self,
        filter: &RunFilter,
        page: &Page,
        now: Timestamp,
    ) -> Result<RunPage> {
        filter.validate()?;
        let after = page.cursor()?;
        let query = ListQuery {
            workflow: filter.workflow.clone(),
            statuses: filter.statuses.clone(),
            queue: filter.queue.clone(),
            created_from: filter.created_from.map(|t| t.0),
            created_before: filter.created_before.map(|t| t.0),
            search: filter.search.as_deref().map(like_pattern),
            after,
            limit: i64::from(page.limit) + 1,
        };
        with_store!(self, s => self.list_on(s, &query, page.limit as usize, now).await)
    }

    /// How many runs match `filter` (its statuses ignored), by status, each count stopping
    /// at `cap` (1 to 1,000,000): every count is one bounded index range, so a page can show
    /// them over any number of runs ("10,000+").
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidOption`] for an invalid
    /// filter or cap, or a store error.
    pub async fn count_runs(&self, filter: &RunFilter, cap: u32) -> Result<RunCounts> {
        filter.validate()?;
        if cap == 0 || cap > 1_000_000 {
            return Err(EngineError::invalid_option(
                "cap",
                &format!("cap must be between 1 and 1000000, got {cap}"),
            ));
        }
        let query = ListQuery {
            workflow: filter.workflow.clone(),
            statuses: Vec::new(),
            queue: filter.queue.clone(),
            created_from: filter.created_from.map(|t| t.0),
            created_before: filter.created_before.map(|t| t.0),
            search: filter.search.as_deref().map(like_pattern),
            after: None,
            limit: i64::from(cap) + 1,
        };
        let rows = with_store!(self, s => {
            let mut tx = s.begin_read().await?;
            let rows = tx.count_runs(&query).await?;
            drop(tx);
            rows
        });
        Ok(RunCounts::from_rows(rows, cap))
    }

    async fn list_on<S: Store>(
        &self,
        store: &S,
        query: &ListQuery,
        limit: usize,
        now: Timestamp,
    ) -> Result<RunPage> {
        let mut tx = store.begin_read().await?;
        let rows = tx.list_runs(query).await?;
        let ids: Vec<String> = rows
            .iter()
            .take(limit)
            .filter(|r| !r.status.is_terminal())
            .map(|r| r.run_id.clone())
            .collect();
        let deadlines = tx.open_deadlines(&ids).await?;
        drop(tx);
        page(rows, deadlines, limit, now)
    }

    async fn inspect_on<S: Store>(
        &self,
        store: &S,
        run_id: crate::journal::RunId,
        now: Timestamp,
        include_history: bool,
    ) -> Result<(
        RunInspection,
        Option<std::sync::Arc<crate::engine::Definition>>,
    )> {
        let mut tx = store.begin_read().await?;
        let id = run_id.to_string();
        let run = existing_run(&mut tx, &id, Lock::None).await?;
        let attempts = tx.run_attempts(&id).await?;
        let facts = tx.facts(&id).await?;
        let children = tx.child_summaries(&id).await?;
        let parent = match &run.parent_run_id {
            Some(p) => tx.load_run(p, Lock::None).await?,
            None => None,
        };
        let def = self.definition_in(&mut tx, &run.definition_hash).await?;
        let waits = tx.action_waits_of_run(&id).await?;
        drop(tx);
        let rows = RunRows {
            run,
            attempts,
            facts,
            children,
            parent,
            waits,
        };
        let insp = inspect::build(rows, def.as_deref(), now, include_history)?;
        Ok((insp, def))
    }
}

/// `%text%`, lower-cased, with `LIKE` wildcards escaped.
fn like_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.trim().to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// A draft compared with the workflow registered under its name, and the runs it would not
/// change.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegisteredDiff {
    /// The workflow's name.
    pub workflow: String,
    /// What the draft changes against the registered spec (`None`: nothing is registered
    /// under the name, so the draft would be new).
    pub diff: Option<crate::spec::SpecDiff>,
    /// Runs of the workflow that have not ended (newest first, at most 1,000): registering
    /// the draft leaves every one of them on the definition it pinned when it started.
    pub unaffected_runs: Vec<String>,
    /// Whether there are more such runs than listed.
    pub more_unaffected_runs: bool,
}

impl Engine {
    /// Compares an editor's draft with the spec registered under its name
    /// ([`Engine::register_workflow`]) and lists the live runs of that workflow, which keep
    /// the definition they pinned whatever is registered next.
    ///
    /// # Errors
    ///
    /// A store error.
    pub async fn diff_registered(
        &self,
        draft: &crate::spec::WorkflowSpec,
    ) -> Result<RegisteredDiff> {
        use crate::vocab::RunStatus;
        let diff = self
            .registered_spec(&draft.name)
            .map(|source| crate::spec::diff(&source, draft));
        let filter = RunFilter::default()
            .workflow(draft.name.clone())
            .status(RunStatus::Running)
            .status(RunStatus::Idle)
            .status(RunStatus::Paused);
        let page = self.list_runs(&filter, &Page::first(1_000)).await?;
        Ok(RegisteredDiff {
            workflow: draft.name.clone(),
            diff,
            unaffected_runs: page.runs.iter().map(|r| r.run_id.clone()).collect(),
            more_unaffected_runs: page.next_page.is_some(),
        })
    }
}
