//! The transaction interface, written once for every backend on [`Statements`] (plain
//! statements with bound values, decoded rows, the dialect's row-lock suffixes, and row
//! writes that a backend may send at once, as SQLite does, or hold back, as Postgres does).

use std::borrow::Cow;

use super::*;

/// A row write, sent at once or held back and sent with the writes after it in one statement
/// (Postgres: data-modifying CTEs) before the transaction's next read or its commit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteRef<'a> {
    Run(&'a RunRow),
    /// The run's mutable columns but its status, which did not change: on SQLite, an
    /// update that names an indexed column rewrites that index's entry even when its value
    /// is the same (three status indexes, a page each), so this one leaves them alone.
    RunSameStatus(&'a RunRow),
    AttemptUpdate(&'a AttemptRow),
    AttemptInsert(&'a AttemptRow),
    Facts {
        run_id: &'a str,
        facts: &'a [(String, String)],
        at: i64,
    },
    /// Settles the run's open attempts with `status`, but not those named in `except`
    /// (attempts whose own held write settles them).
    CloseOpen {
        run_id: &'a str,
        status: AttemptStatus,
        now: i64,
        except: &'a [String],
    },
}

impl<'a> WriteRef<'a> {
    /// How many values its statement binds.
    pub(crate) fn bind_count(&self) -> usize {
        match self {
            WriteRef::Run(r) => r.update_args().len(),
            WriteRef::RunSameStatus(r) => r.update_args_same_status().len(),
            WriteRef::AttemptUpdate(a) => a.update_args().len(),
            WriteRef::AttemptInsert(a) => a.insert_args().len(),
            WriteRef::Facts { facts, .. } => 2 + 2 * facts.len(),
            WriteRef::CloseOpen { except, .. } => 3 + except.len(),
        }
    }

    /// The statement and the values it binds (`None`: nothing to write).
    pub(crate) fn statement(self) -> Option<(Cow<'static, str>, Vec<Arg<'a>>)> {
        Some(match self {
            WriteRef::Run(r) => (Cow::Borrowed(sql::UPDATE_RUN), r.update_args()),
            WriteRef::RunSameStatus(r) => (
                Cow::Borrowed(sql::UPDATE_RUN_SAME_STATUS),
                r.update_args_same_status(),
            ),
            WriteRef::AttemptUpdate(a) => (Cow::Borrowed(sql::UPDATE_ATTEMPT), a.update_args()),
            WriteRef::AttemptInsert(a) => (Cow::Owned(sql::insert_attempt()), a.insert_args()),
            WriteRef::Facts { run_id, facts, at } => {
                if facts.is_empty() {
                    return None;
                }
                let mut args = Vec::with_capacity(2 + 2 * facts.len());
                args.push(Arg::Text(run_id));
                args.push(Arg::Int(at));
                for (kind, data) in facts {
                    args.push(Arg::Text(kind));
                    args.push(Arg::Text(data));
                }
                (Cow::Owned(sql::insert_facts(facts.len())), args)
            }
            WriteRef::CloseOpen {
                run_id,
                status,
                now,
                except,
            } => {
                let mut args = vec![Arg::Text(run_id), Arg::Text(status.as_str()), Arg::Int(now)];
                args.extend(except.iter().map(|k| Arg::Text(k)));
                (Cow::Owned(sql::close_open_attempts(except.len())), args)
            }
        })
    }

    /// The write, owned (to hold it back).
    pub(crate) fn to_owned(self) -> Write {
        match self {
            WriteRef::Run(r) => Write::Run(r.clone()),
            WriteRef::RunSameStatus(r) => Write::RunSameStatus(r.clone()),
            WriteRef::AttemptUpdate(a) => Write::AttemptUpdate(a.clone()),
            WriteRef::AttemptInsert(a) => Write::AttemptInsert(a.clone()),
            WriteRef::Facts { run_id, facts, at } => Write::Facts {
                run_id: run_id.to_owned(),
                facts: facts.to_vec(),
                at,
            },
            WriteRef::CloseOpen {
                run_id,
                status,
                now,
                except,
            } => Write::CloseOpen {
                run_id: run_id.to_owned(),
                status,
                now,
                except: except.to_vec(),
            },
        }
    }
}

/// A write held back.
#[derive(Debug)]
pub(crate) enum Write {
    Run(RunRow),
    RunSameStatus(RunRow),
    AttemptUpdate(AttemptRow),
    AttemptInsert(AttemptRow),
    Facts {
        run_id: String,
        facts: Vec<(String, String)>,
        at: i64,
    },
    CloseOpen {
        run_id: String,
        status: AttemptStatus,
        now: i64,
        except: Vec<String>,
    },
}

impl Write {
    /// The row (or journal) it writes: two writes of one key never share a statement.
    pub(crate) fn key(&self) -> (u8, &str) {
        match self {
            Write::Run(r) | Write::RunSameStatus(r) => (0, &r.run_id),
            Write::AttemptUpdate(a) | Write::AttemptInsert(a) => (1, &a.runnable_key),
            Write::Facts { run_id, .. } => (2, run_id),
            Write::CloseOpen { run_id, .. } => (3, run_id),
        }
    }

    pub(crate) fn as_ref(&self) -> WriteRef<'_> {
        match self {
            Write::Run(r) => WriteRef::Run(r),
            Write::RunSameStatus(r) => WriteRef::RunSameStatus(r),
            Write::AttemptUpdate(a) => WriteRef::AttemptUpdate(a),
            Write::AttemptInsert(a) => WriteRef::AttemptInsert(a),
            Write::Facts { run_id, facts, at } => WriteRef::Facts {
                run_id,
                facts,
                at: *at,
            },
            Write::CloseOpen {
                run_id,
                status,
                now,
                except,
            } => WriteRef::CloseOpen {
                run_id,
                status: *status,
                now: *now,
                except,
            },
        }
    }
}

stored_row! {
    /// A definition's body.
    #[derive(Debug)]
    pub struct BodyRow {
        body: String,
    }
}

stored_row! {
    /// What a command key recorded.
    #[derive(Debug)]
    pub struct CommandRow {
        kind: String,
        run_id: String,
        result_run_id: String,
    }
}

stored_row! {
    /// A child run's id.
    #[derive(Debug)]
    pub struct ChildIdRow {
        child_run_id: String,
    }
}

stored_row! {
    /// Due attempts of one queue.
    #[derive(Debug)]
    pub struct QueueDepthRow {
        queue: String,
        due: i64,
        oldest_due_at: Option<i64>,
    }
}

stored_row! {
    /// Runs of one status.
    #[derive(Debug)]
    pub struct StatusCountRow {
        status: String,
        runs: i64,
    }
}

stored_row! {
    /// A child run of a parent step.
    #[derive(Debug)]
    pub struct ChildLinkRow {
        parent_step: String,
        child_key: String,
        child_run_id: String,
    }
}

stored_row! {
    /// A child run with its workflow and status (when it exists).
    #[derive(Debug)]
    pub struct ChildSummaryRow {
        parent_step: String,
        child_key: String,
        child_run_id: String,
        workflow: Option<String>,
        status: Option<String>,
    }
}

stored_row! {
    /// An open attempt's deadline.
    #[derive(Debug)]
    pub struct OpenDeadlineRow {
        run_id: String,
        step: String,
        runnable_key: String,
        deadline: String,
    }
}

/// An attempt with its run, selected as `sql::attempt_and_run_columns` names them.
impl FromColumns for (AttemptRow, RunRow) {
    fn from_columns<R: Columns + ?Sized>(r: &R) -> Result<Self, R::Error> {
        Ok((AttemptRow::decode(r)?, RunRow::decode_r(r)?))
    }
}

/// The same, with the action catalog's version.
impl FromColumns for (AttemptRow, RunRow, i64) {
    fn from_columns<R: Columns + ?Sized>(r: &R) -> Result<Self, R::Error> {
        Ok((
            AttemptRow::decode(r)?,
            RunRow::decode_r(r)?,
            r.int("catalog_version")?,
        ))
    }
}

impl<T: Statements> StoreTx for T {
    async fn commit(self) -> StoreResult<()> {
        self.finish().await
    }

    async fn rollback(self) {
        self.abort().await;
    }

    async fn insert_definition(
        &mut self,
        hash: &str,
        workflow: &str,
        fingerprint: &str,
        body: &str,
        now: i64,
    ) -> StoreResult<()> {
        let args = [
            Arg::Text(hash),
            Arg::Text(workflow),
            Arg::Text(fingerprint),
            Arg::Text(body),
            Arg::Int(now),
        ];
        self.execute(sql::INSERT_DEFINITION, &args).await?;
        Ok(())
    }

    async fn load_definition(&mut self, hash: &str) -> StoreResult<Option<String>> {
        let row: Option<BodyRow> = self
            .fetch_optional(sql::LOAD_DEFINITION, &[Arg::Text(hash)])
            .await?;
        Ok(row.map(|r| r.body))
    }

    async fn insert_run(&mut self, run: &RunRow) -> StoreResult<bool> {
        self.insert_new_run(run).await
    }

    async fn load_run(&mut self, run_id: &str, lock: Lock) -> StoreResult<Option<RunRow>> {
        let sql = sql::load_run(lock.suffix(T::LOCK));
        self.fetch_optional(&sql, &[Arg::Text(run_id)]).await
    }

    async fn load_attempt_and_run(
        &mut self,
        runnable_key: &str,
        lock: Lock,
    ) -> StoreResult<Option<(AttemptRow, RunRow)>> {
        let sql = sql::load_attempt_and_run(lock.suffix(T::LOCK));
        self.fetch_optional(&sql, &[Arg::Text(runnable_key)]).await
    }

    async fn update_run(&mut self, run: &RunRow) -> StoreResult<()> {
        self.write(WriteRef::Run(run)).await
    }

    async fn update_run_same_status(&mut self, run: &RunRow) -> StoreResult<()> {
        self.write(WriteRef::RunSameStatus(run)).await
    }

    async fn append_facts(
        &mut self,
        run_id: &str,
        facts: &[(String, String)],
        at: i64,
    ) -> StoreResult<()> {
        self.write(WriteRef::Facts { run_id, facts, at }).await
    }

    async fn facts(&mut self, run_id: &str) -> StoreResult<Vec<FactRow>> {
        self.fetch_all(&sql::facts(), &[Arg::Text(run_id)]).await
    }

    async fn facts_of_kind(&mut self, run_id: &str, kind: &str) -> StoreResult<Vec<FactRow>> {
        self.fetch_all(&sql::facts_of_kind(), &[Arg::Text(run_id), Arg::Text(kind)])
            .await
    }

    async fn insert_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
        if a.status != AttemptStatus::Claimed {
            *self.work_left() += 1;
        }
        self.write(WriteRef::AttemptInsert(a)).await
    }

    fn left_for_workers(&mut self) -> u32 {
        *self.work_left()
    }

    async fn load_attempt(
        &mut self,
        runnable_key: &str,
        lock: Lock,
    ) -> StoreResult<Option<AttemptRow>> {
        let sql = sql::load_attempt(lock.suffix(T::LOCK));
        self.fetch_optional(&sql, &[Arg::Text(runnable_key)]).await
    }

    async fn update_attempt(&mut self, a: &AttemptRow) -> StoreResult<()> {
        self.write(WriteRef::AttemptUpdate(a)).await
    }

    async fn run_attempts(&mut self, run_id: &str) -> StoreResult<Vec<AttemptRow>> {
        self.fetch_all(&sql::run_attempts(), &[Arg::Text(run_id)])
            .await
    }

    async fn requeue_expired(&mut self, now: i64) -> StoreResult<u64> {
        let sql = sql::requeue_expired(T::SKIP);
        self.execute(&sql, &[Arg::Int(now)]).await
    }

    async fn next_due_with_run(
        &mut self,
        queue: &str,
        now: i64,
    ) -> StoreResult<Option<(AttemptRow, RunRow, i64)>> {
        let sql = sql::next_due_with_run(T::SKIP_ATTEMPT);
        self.fetch_optional(&sql, &[Arg::Text(queue), Arg::Int(now)])
            .await
    }

    async fn next_due_of_run(
        &mut self,
        run_id: &str,
        queue: &str,
        now: i64,
    ) -> StoreResult<Option<AttemptRow>> {
        let sql = sql::next_due_of_run(T::SKIP);
        let args = [Arg::Text(run_id), Arg::Text(queue), Arg::Int(now)];
        self.fetch_optional(&sql, &args).await
    }

    async fn close_open_attempts(
        &mut self,
        run_id: &str,
        status: AttemptStatus,
        now: i64,
    ) -> StoreResult<()> {
        self.write(WriteRef::CloseOpen {
            run_id,
            status,
            now,
            except: &[],
        })
        .await
    }

    async fn insert_command(
        &mut self,
        key: &str,
        kind: &str,
        run_id: &str,
        result_run_id: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let args = [
            Arg::Text(key),
            Arg::Text(kind),
            Arg::Text(run_id),
            Arg::Text(result_run_id),
            Arg::Int(now),
        ];
        Ok(self.execute(sql::INSERT_COMMAND, &args).await? == 1)
    }

    async fn load_command(&mut self, key: &str) -> StoreResult<Option<(String, String, String)>> {
        let row: Option<CommandRow> = self
            .fetch_optional(sql::LOAD_COMMAND, &[Arg::Text(key)])
            .await?;
        Ok(row.map(|r| (r.kind, r.run_id, r.result_run_id)))
    }

    async fn insert_child(
        &mut self,
        parent: &str,
        step: &str,
        key: &str,
        child: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let args = [
            Arg::Text(parent),
            Arg::Text(step),
            Arg::Text(key),
            Arg::Text(child),
            Arg::Int(now),
        ];
        Ok(self.execute(sql::INSERT_CHILD, &args).await? == 1)
    }

    async fn load_child(
        &mut self,
        parent: &str,
        step: &str,
        key: &str,
    ) -> StoreResult<Option<String>> {
        let args = [Arg::Text(parent), Arg::Text(step), Arg::Text(key)];
        let row: Option<ChildIdRow> = self.fetch_optional(sql::LOAD_CHILD, &args).await?;
        Ok(row.map(|r| r.child_run_id))
    }

    async fn queue_depths(&mut self, now: i64) -> StoreResult<Vec<(String, i64, Option<i64>)>> {
        let rows: Vec<QueueDepthRow> = self.fetch_all(sql::QUEUE_DEPTHS, &[Arg::Int(now)]).await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.queue, r.due, r.oldest_due_at))
            .collect())
    }

    async fn run_counts(&mut self) -> StoreResult<Vec<(String, i64)>> {
        let rows: Vec<StatusCountRow> = self.fetch_all(sql::RUN_COUNTS, &[]).await?;
        Ok(rows.into_iter().map(|r| (r.status, r.runs)).collect())
    }

    async fn children(&mut self, parent: &str) -> StoreResult<Vec<(String, String, String)>> {
        let rows: Vec<ChildLinkRow> = self.fetch_all(sql::CHILDREN, &[Arg::Text(parent)]).await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.parent_step, r.child_key, r.child_run_id))
            .collect())
    }

    async fn child_summaries(&mut self, parent: &str) -> StoreResult<Vec<ChildRow>> {
        let rows: Vec<ChildSummaryRow> = self
            .fetch_all(sql::CHILD_SUMMARIES, &[Arg::Text(parent)])
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.parent_step,
                    r.child_key,
                    r.child_run_id,
                    r.workflow,
                    r.status,
                )
            })
            .collect())
    }

    fn ordered_run_scan(&self) -> bool {
        T::ORDERED_RUN_SCAN
    }

    async fn notify_queue(&mut self, queue: &str) -> StoreResult<()> {
        self.notify(queue);
        Ok(())
    }

    async fn list_runs(&mut self, query: &ListQuery) -> StoreResult<Vec<SummaryRow>> {
        let (sql, args) = query.sql();
        self.fetch_all(&sql, &args).await
    }

    async fn count_runs(&mut self, query: &ListQuery) -> StoreResult<Vec<(String, i64)>> {
        let (sql, args) = query.count_sql();
        let rows: Vec<StatusCountRow> = self.fetch_all(&sql, &args).await?;
        Ok(rows.into_iter().map(|r| (r.status, r.runs)).collect())
    }

    async fn open_deadlines(&mut self, run_ids: &[String]) -> StoreResult<Vec<DeadlineRow>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<Arg<'_>> = run_ids.iter().map(|id| Arg::Text(id)).collect();
        let rows: Vec<OpenDeadlineRow> = self
            .fetch_all(&sql::open_deadlines(run_ids.len()), &args)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.run_id, r.step, r.runnable_key, r.deadline))
            .collect())
    }
}
