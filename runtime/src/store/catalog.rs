//! The statements of the action catalog: component bytes by digest, approved versions, the
//! audit trail, the version counter every change bumps, and the steps waiting for an action.
//!
//! Written once, on [`Statements`], for every backend.

use std::future::Future;

use super::{Arg, Statements, StoreResult, StoreTx};
use crate::vocab::{ActionState, CatalogEventKind};

stored_row! {
    /// One row of `action_versions`: an approval of a component under a key.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ActionVersionRow {
        /// The key steps reference it by.
        action_key: String,
        /// Digest of the component's bytes.
        digest: String,
        /// Whether it runs.
        state: ActionState,
        /// JSON of the limits.
        limits: String,
        /// JSON of the granted capabilities.
        capabilities: String,
        /// JSON of the component's self-description.
        description: String,
        /// Who approved it.
        approved_by: String,
        /// When.
        approved_at: i64,
        /// The catalog version of the approval (orders approvals).
        approved_seq: i64,
        /// Last state change.
        updated_at: i64,
    }
}

stored_row! {
    /// One row of `action_events`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CatalogEventRow {
        /// The catalog version the change produced.
        seq: i64,
        /// The key.
        action_key: String,
        /// The version.
        digest: String,
        /// What happened.
        kind: CatalogEventKind,
        /// Who.
        actor: String,
        /// Why.
        comment: Option<String>,
        /// JSON details.
        detail: String,
        /// When.
        occurred_at: i64,
    }
}

stored_row! {
    /// One row of `action_waits`: a step waiting for an action no process may run yet.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ActionWaitRow {
        /// The waiting attempt.
        runnable_key: String,
        /// Its run.
        run_id: String,
        /// The action it waits for.
        action_key: String,
        /// The digest its run pinned, if any.
        digest: Option<String>,
        /// `action_unknown` or `action_disabled`.
        code: String,
        /// Why, in a sentence.
        message: String,
        /// Since when it waits.
        since: i64,
        /// Last checked.
        updated_at: i64,
    }
}

stored_row! {
    /// Component bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BlobRow {
        bytes: Vec<u8>,
    }
}

stored_row! {
    /// The catalog version.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VersionRow {
        version: i64,
    }
}

/// Statements on the action catalog, inside one transaction.
pub trait CatalogTx: StoreTx {
    /// The catalog version: bumped by every change, in the changing transaction.
    fn catalog_version(&mut self) -> impl Future<Output = StoreResult<i64>> + Send;
    /// The catalog version, locked until commit: catalog writers (and a step starting to
    /// wait for an action) take it first, so they follow one another.
    fn lock_catalog(&mut self) -> impl Future<Output = StoreResult<i64>> + Send;
    /// Bumps the catalog version (locking it until commit); the new version.
    fn bump_catalog_version(&mut self) -> impl Future<Output = StoreResult<i64>> + Send;
    /// Stores component bytes under their digest unless stored already; whether it stored.
    fn put_blob(
        &mut self,
        digest: &str,
        bytes: &[u8],
        now: i64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The bytes stored under `digest`.
    fn load_blob(
        &mut self,
        digest: &str,
    ) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;
    /// Inserts or replaces a version.
    fn put_action_version(
        &mut self,
        row: &ActionVersionRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Every version, by key and approval time.
    fn action_versions(
        &mut self,
    ) -> impl Future<Output = StoreResult<Vec<ActionVersionRow>>> + Send;
    /// The versions of one key, oldest approval first.
    fn versions_of(
        &mut self,
        key: &str,
    ) -> impl Future<Output = StoreResult<Vec<ActionVersionRow>>> + Send;
    /// Whether `digest` is revoked under any key.
    fn digest_revoked(&mut self, digest: &str) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Appends to the trail.
    fn append_catalog_event(
        &mut self,
        row: &CatalogEventRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The trail of one key (every key when `None`), oldest first.
    fn catalog_events(
        &mut self,
        key: Option<&str>,
    ) -> impl Future<Output = StoreResult<Vec<CatalogEventRow>>> + Send;
    /// Records (or refreshes) why an attempt waits for an action.
    fn put_action_wait(
        &mut self,
        row: &ActionWaitRow,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The attempt's wait, if any.
    fn action_wait(
        &mut self,
        runnable_key: &str,
    ) -> impl Future<Output = StoreResult<Option<ActionWaitRow>>> + Send;
    /// The waits of one run.
    fn action_waits_of_run(
        &mut self,
        run_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<ActionWaitRow>>> + Send;
    /// Makes every attempt waiting for `key` due at `now` and forgets their waits; how many.
    fn wake_action_waits(
        &mut self,
        key: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
}

const VERSION: &str = "SELECT version FROM catalog_version WHERE id = 1";
const BUMP: &str =
    "UPDATE catalog_version SET version = version + 1 WHERE id = 1 RETURNING version";
const PUT_BLOB: &str = "INSERT INTO action_blobs (digest, bytes, size_bytes, stored_at) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING";
const LOAD_BLOB: &str = "SELECT bytes FROM action_blobs WHERE digest = $1";
const PUT_VERSION: &str = "INSERT INTO action_versions (action_key, digest, state, limits, capabilities, description, approved_by, approved_at, approved_seq, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (action_key, digest) DO UPDATE SET state = excluded.state, limits = excluded.limits, capabilities = excluded.capabilities, description = excluded.description, approved_by = excluded.approved_by, approved_at = excluded.approved_at, approved_seq = excluded.approved_seq, updated_at = excluded.updated_at";
const APPEND_EVENT: &str = "INSERT INTO action_events (seq, action_key, digest, kind, actor, comment, detail, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const PUT_WAIT: &str = "INSERT INTO action_waits (runnable_key, run_id, action_key, digest, code, message, since, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (runnable_key) DO UPDATE SET action_key = excluded.action_key, digest = excluded.digest, code = excluded.code, message = excluded.message, updated_at = excluded.updated_at";
const WAKE: &str = "UPDATE attempts SET due_at = $2, visible_at = $2, updated_at = $2 WHERE runnable_key IN (SELECT runnable_key FROM action_waits WHERE action_key = $1) AND status = 'scheduled' AND due_at IS NOT NULL AND due_at > $2";
const FORGET: &str = "DELETE FROM action_waits WHERE action_key = $1";

impl<T: Statements> CatalogTx for T {
    async fn catalog_version(&mut self) -> StoreResult<i64> {
        let row: Option<VersionRow> = self.fetch_optional(VERSION, &[]).await?;
        Ok(row.map_or(0, |r| r.version))
    }

    async fn lock_catalog(&mut self) -> StoreResult<i64> {
        let sql = format!("{VERSION}{}", T::LOCK);
        let row: Option<VersionRow> = self.fetch_optional(&sql, &[]).await?;
        Ok(row.map_or(0, |r| r.version))
    }

    async fn bump_catalog_version(&mut self) -> StoreResult<i64> {
        let row: Option<VersionRow> = self.fetch_optional(BUMP, &[]).await?;
        Ok(row.map_or(0, |r| r.version))
    }

    async fn put_blob(&mut self, digest: &str, bytes: &[u8], now: i64) -> StoreResult<bool> {
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let args = [
            Arg::Text(digest),
            Arg::Bytes(bytes),
            Arg::Int(size),
            Arg::Int(now),
        ];
        Ok(self.execute(PUT_BLOB, &args).await? == 1)
    }

    async fn load_blob(&mut self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        let row: Option<BlobRow> = self.fetch_optional(LOAD_BLOB, &[Arg::Text(digest)]).await?;
        Ok(row.map(|r| r.bytes))
    }

    async fn put_action_version(&mut self, r: &ActionVersionRow) -> StoreResult<()> {
        let args = [
            Arg::Text(&r.action_key),
            Arg::Text(&r.digest),
            Arg::Text(r.state.as_str()),
            Arg::Text(&r.limits),
            Arg::Text(&r.capabilities),
            Arg::Text(&r.description),
            Arg::Text(&r.approved_by),
            Arg::Int(r.approved_at),
            Arg::Int(r.approved_seq),
            Arg::Int(r.updated_at),
        ];
        self.execute(PUT_VERSION, &args).await?;
        Ok(())
    }

    async fn action_versions(&mut self) -> StoreResult<Vec<ActionVersionRow>> {
        let sql = format!(
            "SELECT {} FROM action_versions ORDER BY action_key, approved_seq",
            ActionVersionRow::COLUMNS
        );
        self.fetch_all(&sql, &[]).await
    }

    async fn versions_of(&mut self, key: &str) -> StoreResult<Vec<ActionVersionRow>> {
        let sql = format!(
            "SELECT {} FROM action_versions WHERE action_key = $1 ORDER BY approved_seq",
            ActionVersionRow::COLUMNS
        );
        self.fetch_all(&sql, &[Arg::Text(key)]).await
    }

    async fn digest_revoked(&mut self, digest: &str) -> StoreResult<bool> {
        let sql = format!(
            "SELECT {} FROM action_versions WHERE digest = $1 AND state = 'revoked' LIMIT 1",
            ActionVersionRow::COLUMNS
        );
        let row: Option<ActionVersionRow> = self.fetch_optional(&sql, &[Arg::Text(digest)]).await?;
        Ok(row.is_some())
    }

    async fn append_catalog_event(&mut self, r: &CatalogEventRow) -> StoreResult<()> {
        let args = [
            Arg::Int(r.seq),
            Arg::Text(&r.action_key),
            Arg::Text(&r.digest),
            Arg::Text(r.kind.as_str()),
            Arg::Text(&r.actor),
            Arg::OptText(r.comment.as_deref()),
            Arg::Text(&r.detail),
            Arg::Int(r.occurred_at),
        ];
        self.execute(APPEND_EVENT, &args).await?;
        Ok(())
    }

    async fn catalog_events(&mut self, key: Option<&str>) -> StoreResult<Vec<CatalogEventRow>> {
        match key {
            Some(key) => {
                let sql = format!(
                    "SELECT {} FROM action_events WHERE action_key = $1 ORDER BY seq",
                    CatalogEventRow::COLUMNS
                );
                self.fetch_all(&sql, &[Arg::Text(key)]).await
            }
            None => {
                let sql = format!(
                    "SELECT {} FROM action_events ORDER BY seq",
                    CatalogEventRow::COLUMNS
                );
                self.fetch_all(&sql, &[]).await
            }
        }
    }

    async fn put_action_wait(&mut self, r: &ActionWaitRow) -> StoreResult<()> {
        let args = [
            Arg::Text(&r.runnable_key),
            Arg::Text(&r.run_id),
            Arg::Text(&r.action_key),
            Arg::OptText(r.digest.as_deref()),
            Arg::Text(&r.code),
            Arg::Text(&r.message),
            Arg::Int(r.since),
            Arg::Int(r.updated_at),
        ];
        self.execute(PUT_WAIT, &args).await?;
        Ok(())
    }

    async fn action_wait(&mut self, runnable_key: &str) -> StoreResult<Option<ActionWaitRow>> {
        let sql = format!(
            "SELECT {} FROM action_waits WHERE runnable_key = $1",
            ActionWaitRow::COLUMNS
        );
        self.fetch_optional(&sql, &[Arg::Text(runnable_key)]).await
    }

    async fn action_waits_of_run(&mut self, run_id: &str) -> StoreResult<Vec<ActionWaitRow>> {
        let sql = format!(
            "SELECT {} FROM action_waits WHERE run_id = $1 ORDER BY runnable_key",
            ActionWaitRow::COLUMNS
        );
        self.fetch_all(&sql, &[Arg::Text(run_id)]).await
    }

    async fn wake_action_waits(&mut self, key: &str, now: i64) -> StoreResult<u64> {
        let woken = self.execute(WAKE, &[Arg::Text(key), Arg::Int(now)]).await?;
        self.execute(FORGET, &[Arg::Text(key)]).await?;
        Ok(woken)
    }
}
