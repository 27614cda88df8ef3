//! The transaction interface on Postgres (sqlx), with its held-back writes (see `PgTx`).
//! A macro writes it from the row-lock suffixes, as it once wrote SQLite's too.

use std::future::Future;

use super::*;

/// Writes `StoreTx` for a sqlx transaction type. `$lock` is appended to
/// single-row reads that lock, `$skip` to the queue read, `$skip_attempt` to the queue read
/// joined with runs (it locks the attempt only).
macro_rules! impl_store_tx {
    ($ty:ty, lock = $lock:literal, skip = $skip:literal, skip_attempt = $skip_attempt:literal, notify = $notify:literal) => {
        impl StoreTx for $ty {
            async fn commit(self) -> StoreResult<()> {
                Finish::finish(self).await
            }

            async fn insert_definition(
                &mut self,
                hash: &str,
                workflow: &str,
                fingerprint: &str,
                body: &str,
                now: i64,
            ) -> StoreResult<()> {
                Finish::flush(self).await?;
                sqlx::query(sql::INSERT_DEFINITION)
                    .bind(hash)
                    .bind(workflow)
                    .bind(fingerprint)
                    .bind(body)
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn load_definition(&mut self, hash: &str) -> StoreResult<Option<String>> {
                Finish::flush(self).await?;
                let body: Option<(String,)> = sqlx::query_as(sql::LOAD_DEFINITION)
                    .bind(hash)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(body.map(|b| b.0))
            }

            async fn insert_run(&mut self, run: &RunRow) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = bind_args!(
                    sqlx::query(sqlx::AssertSqlSafe(sql::insert_run())),
                    run.insert_args()
                )
                .execute(&mut **self)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_run(&mut self, run_id: &str, lock: bool) -> StoreResult<Option<RunRow>> {
                Finish::flush(self).await?;
                let sql = sql::load_run(if lock { $lock } else { "" });
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(run_id)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some(RunRow::decode(&r)?),
                    None => None,
                })
            }

            async fn load_attempt_and_run(
                &mut self,
                runnable_key: &str,
                lock: bool,
            ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
                Finish::flush(self).await?;
                let sql = sql::load_attempt_and_run(if lock { $lock } else { "" });
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(runnable_key)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some((AttemptRow::decode(&r)?, RunRow::decode_r(&r)?)),
                    None => None,
                })
            }

            async fn update_run(&mut self, run: &RunRow) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(self, Write::Run(run.clone())).await;
                }
                bind_args!(sqlx::query(sql::UPDATE_RUN), run.update_args())
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn append_facts(
                &mut self,
                run_id: &str,
                facts: &[(String, String)],
                at: i64,
            ) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(
                        self,
                        Write::Facts {
                            run_id: run_id.to_owned(),
                            facts: facts.to_vec(),
                            at,
                        },
                    )
                    .await;
                }
                if facts.is_empty() {
                    return Ok(());
                }
                // One statement for all the facts (in order: ids follow the VALUES order).
                let sql = sql::insert_facts(facts.len());
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run_id).bind(at);
                for (kind, data) in facts {
                    q = q.bind(kind).bind(data);
                }
                q.execute(&mut **self).await?;
                Ok(())
            }

            async fn facts(&mut self, run_id: &str) -> StoreResult<Vec<FactRow>> {
                Finish::flush(self).await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql::facts()))
                    .bind(run_id)
                    .fetch_all(&mut **self)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(FactRow::decode(r)?);
                }
                Ok(out)
            }

            async fn insert_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(self, Write::AttemptInsert(a.clone())).await;
                }
                bind_args!(
                    sqlx::query(sqlx::AssertSqlSafe(sql::insert_attempt())),
                    a.insert_args()
                )
                .execute(&mut **self)
                .await?;
                Ok(())
            }

            async fn load_attempt(
                &mut self,
                runnable_key: &str,
                lock: bool,
            ) -> StoreResult<Option<AttemptRow>> {
                Finish::flush(self).await?;
                let sql = sql::load_attempt(if lock { $lock } else { "" });
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(runnable_key)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some(AttemptRow::decode(&r)?),
                    None => None,
                })
            }

            async fn update_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
                if Finish::holds_back(self) {
                    return Finish::defer(self, Write::AttemptUpdate(a.clone())).await;
                }
                bind_args!(sqlx::query(sql::UPDATE_ATTEMPT), a.update_args())
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn run_attempts(&mut self, run_id: &str) -> StoreResult<Vec<AttemptRow>> {
                Finish::flush(self).await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql::run_attempts()))
                    .bind(run_id)
                    .fetch_all(&mut **self)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(AttemptRow::decode(r)?);
                }
                Ok(out)
            }

            async fn next_due_with_run(
                &mut self,
                queue: &str,
                now: i64,
            ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
                Finish::flush(self).await?;
                let sql = sql::next_due_with_run($skip_attempt);
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(queue)
                    .bind(now)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some((AttemptRow::decode(&r)?, RunRow::decode_r(&r)?)),
                    None => None,
                })
            }

            async fn next_due_of_run(
                &mut self,
                run_id: &str,
                queue: &str,
                now: i64,
            ) -> StoreResult<Option<AttemptRow>> {
                Finish::flush(self).await?;
                let sql = sql::next_due_of_run($skip);
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(run_id)
                    .bind(queue)
                    .bind(now)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(match row {
                    Some(r) => Some(AttemptRow::decode(&r)?),
                    None => None,
                })
            }

            async fn close_open_attempts(
                &mut self,
                run_id: &str,
                status: AttemptStatus,
                now: i64,
            ) -> StoreResult<u64> {
                Finish::flush(self).await?;
                let done = sqlx::query(sql::CLOSE_OPEN_ATTEMPTS)
                    .bind(run_id)
                    .bind(status.as_str())
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn insert_command(
                &mut self,
                key: &str,
                kind: &str,
                run_id: &str,
                result_run_id: &str,
                now: i64,
            ) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = sqlx::query(sql::INSERT_COMMAND)
                    .bind(key)
                    .bind(kind)
                    .bind(run_id)
                    .bind(result_run_id)
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_command(
                &mut self,
                key: &str,
            ) -> StoreResult<Option<(String, String, String)>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(sql::LOAD_COMMAND)
                    .bind(key)
                    .fetch_optional(&mut **self)
                    .await?)
            }

            async fn insert_child(
                &mut self,
                parent: &str,
                step: &str,
                key: &str,
                child: &str,
                now: i64,
            ) -> StoreResult<bool> {
                Finish::flush(self).await?;
                let done = sqlx::query(sql::INSERT_CHILD)
                    .bind(parent)
                    .bind(step)
                    .bind(key)
                    .bind(child)
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_child(
                &mut self,
                parent: &str,
                step: &str,
                key: &str,
            ) -> StoreResult<Option<String>> {
                Finish::flush(self).await?;
                let row: Option<(String,)> = sqlx::query_as(sql::LOAD_CHILD)
                    .bind(parent)
                    .bind(step)
                    .bind(key)
                    .fetch_optional(&mut **self)
                    .await?;
                Ok(row.map(|r| r.0))
            }

            async fn children(
                &mut self,
                parent: &str,
            ) -> StoreResult<Vec<(String, String, String)>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(sql::CHILDREN)
                    .bind(parent)
                    .fetch_all(&mut **self)
                    .await?)
            }

            async fn child_summaries(&mut self, parent: &str) -> StoreResult<Vec<ChildRow>> {
                Finish::flush(self).await?;
                Ok(sqlx::query_as(sql::CHILD_SUMMARIES)
                    .bind(parent)
                    .fetch_all(&mut **self)
                    .await?)
            }

            async fn notify_queue(&mut self, queue: &str) -> StoreResult<()> {
                Finish::flush(self).await?;
                if !$notify.is_empty() {
                    sqlx::query($notify)
                        .bind(queue)
                        .execute(&mut **self)
                        .await?;
                }
                Ok(())
            }

            async fn list_runs(&mut self, query: &ListQuery) -> StoreResult<Vec<SummaryRow>> {
                Finish::flush(self).await?;
                let (sql, args) = query.sql();
                let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                    .fetch_all(&mut **self)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(SummaryRow::decode(r)?);
                }
                Ok(out)
            }

            async fn open_deadlines(
                &mut self,
                run_ids: &[String],
            ) -> StoreResult<Vec<DeadlineRow>> {
                Finish::flush(self).await?;
                if run_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = sql::open_deadlines(run_ids.len());
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for id in run_ids {
                    q = q.bind(id);
                }
                Ok(q.fetch_all(&mut **self).await?)
            }
        }
    };
}

/// A write a transaction may hold back, to send it with the writes after it in one
/// statement (Postgres: data-modifying CTEs) before its next read or its commit.
#[derive(Debug)]
pub(crate) enum Write {
    Run(RunRow),
    AttemptUpdate(AttemptRow),
    AttemptInsert(AttemptRow),
    Facts {
        run_id: String,
        facts: Vec<(String, String)>,
        at: i64,
    },
}

impl Write {
    /// The row (or journal) it writes: two writes of one key never share a statement.
    pub(crate) fn key(&self) -> (u8, &str) {
        match self {
            Write::Run(r) => (0, &r.run_id),
            Write::AttemptUpdate(a) | Write::AttemptInsert(a) => (1, &a.runnable_key),
            Write::Facts { run_id, .. } => (2, run_id),
        }
    }
}

/// How a sqlx transaction commits, and whether it holds writes back.
pub(crate) trait Finish: Send {
    /// Sends what is held back, then commits.
    fn finish(self) -> impl Future<Output = StoreResult<()>> + Send;
    /// Whether writes are held back (see [`Write`]).
    fn holds_back(&self) -> bool;
    /// Holds a write back (sending what is held first if it writes the same key).
    fn defer(&mut self, write: Write) -> impl Future<Output = StoreResult<()>> + Send;
    /// Sends what is held back.
    fn flush(&mut self) -> impl Future<Output = StoreResult<()>> + Send;
}

impl Finish for PgTx {
    async fn finish(mut self) -> StoreResult<()> {
        self.flush().await?;
        self.commit().await
    }

    fn holds_back(&self) -> bool {
        true
    }

    async fn defer(&mut self, write: Write) -> StoreResult<()> {
        if self.held_key(&write) {
            self.flush().await?;
        }
        self.hold(write);
        Ok(())
    }

    async fn flush(&mut self) -> StoreResult<()> {
        PgTx::flush(self).await
    }
}

impl_store_tx!(
    PgTx,
    lock = " FOR UPDATE",
    skip = " FOR UPDATE SKIP LOCKED",
    skip_attempt = " FOR UPDATE OF a SKIP LOCKED",
    notify = "SELECT pg_notify(current_schema() || '_squid_mesh_wakeup', $1)"
);

impl Statements for PgTx {
    const LOCK: &'static str = " FOR UPDATE";
    const SKIP: &'static str = " FOR UPDATE SKIP LOCKED";

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        Finish::flush(self).await?;
        let done = bind_args!(
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())),
            args.iter().copied()
        )
        .execute(&mut **self)
        .await?;
        Ok(done.rows_affected())
    }

    async fn fetch_all<T: FromColumns + Send>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> StoreResult<Vec<T>> {
        Finish::flush(self).await?;
        let rows = bind_args!(
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())),
            args.iter().copied()
        )
        .fetch_all(&mut **self)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(T::from_columns(r)?);
        }
        Ok(out)
    }
}
