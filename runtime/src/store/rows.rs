//! The rows the store reads and writes, decoded once where they are read (statuses as
//! the vocabulary's enums), and the values each statement binds (one list per statement).
//!
//! Each row type is declared once with [`stored_row!`]: the struct, its column list and its
//! one decoder, which reads any driver's row through [`Columns`] (SQLite's embedded writer,
//! sqlx on SQLite and on Postgres).

use super::StoreError;
use crate::vocab::{
    ActionState, AttemptStatus, CatalogEventKind, FireOrigin, FireOutcome, RunStatus,
    ScheduleEventKind, ScheduleState,
};

/// A database row read by column name, whatever the driver.
pub(crate) trait Columns {
    /// The driver's error.
    type Error;

    fn text(&self, name: &str) -> Result<String, Self::Error>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, Self::Error>;
    fn int(&self, name: &str) -> Result<i64, Self::Error>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, Self::Error>;
    fn bytes(&self, name: &str) -> Result<Vec<u8>, Self::Error>;
    /// The error for a column whose text names no variant of its enum.
    fn unknown(name: &str, text: &str) -> Self::Error;
}

/// A value one column holds. Enums are parsed where the row is read: unknown text is a
/// decode error of the driver, so no row with a bad status leaves the store.
pub(crate) trait Column: Sized {
    fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error>;
}

impl Column for String {
    fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error> {
        r.text(name)
    }
}

impl Column for Option<String> {
    fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error> {
        r.opt_text(name)
    }
}

impl Column for i64 {
    fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error> {
        r.int(name)
    }
}

impl Column for Vec<u8> {
    fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error> {
        r.bytes(name)
    }
}

impl Column for Option<i64> {
    fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error> {
        r.opt_int(name)
    }
}

macro_rules! enum_columns {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn read<R: Columns + ?Sized>(r: &R, name: &str) -> Result<Self, R::Error> {
                let text = r.text(name)?;
                <$t>::parse(&text).ok_or_else(|| R::unknown(name, &text))
            }
        }
    )*};
}

enum_columns!(
    RunStatus,
    AttemptStatus,
    ScheduleState,
    FireOutcome,
    FireOrigin,
    ScheduleEventKind,
    ActionState,
    CatalogEventKind
);

macro_rules! sqlx_columns {
    ($($row:ty),*) => {$(
        impl Columns for $row {
            type Error = sqlx::Error;

            fn text(&self, name: &str) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, name)
            }

            fn opt_text(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, name)
            }

            fn int(&self, name: &str) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, name)
            }

            fn opt_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
                sqlx::Row::try_get(self, name)
            }

            fn bytes(&self, name: &str) -> Result<Vec<u8>, sqlx::Error> {
                sqlx::Row::try_get(self, name)
            }

            fn unknown(name: &str, text: &str) -> sqlx::Error {
                sqlx::Error::Decode(format!("unknown status {text:?} in column {name}").into())
            }
        }
    )*};
}

sqlx_columns!(sqlx::postgres::PgRow);

/// A row as a JSON object (Postgres `row_to_json` / `json_agg` of a table's rows): columns
/// by name, integers as numbers, text as strings, NULL as null.
impl Columns for serde_json::Map<String, serde_json::Value> {
    type Error = StoreError;

    fn text(&self, name: &str) -> Result<String, StoreError> {
        self.opt_text(name)?
            .ok_or_else(|| json_column(name, "is null"))
    }

    fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(json_column(name, "is not text")),
        }
    }

    fn int(&self, name: &str) -> Result<i64, StoreError> {
        self.opt_int(name)?
            .ok_or_else(|| json_column(name, "is null"))
    }

    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
        match self.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| json_column(name, "is not an integer")),
        }
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        Err(json_column(
            name,
            "holds bytes, which a JSON row does not carry",
        ))
    }

    fn unknown(name: &str, text: &str) -> StoreError {
        json_column(name, &format!("holds the unknown status {text:?}"))
    }
}

fn json_column(name: &str, problem: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("column {name}"),
        message: problem.to_owned(),
    }
}

/// A row type decodable from any driver's row (every [`stored_row!`] type).
pub(crate) trait FromColumns: Sized {
    fn from_columns<R: Columns + ?Sized>(r: &R) -> Result<Self, R::Error>;
}

/// `a, b, c` from the names `a`, `b`, `c`.
macro_rules! column_list {
    ($first:ident $(, $rest:ident)*) => {
        concat!(stringify!($first) $(, ", ", stringify!($rest))*)
    };
}

/// Declares a row type from its one list of columns (field name = column name): the
/// struct, `COLUMNS` (the list as SQL), `decode` (a row that selected them) and `decode_r`
/// (the same columns selected as `r_<column>` beside another table's).
macro_rules! stored_row {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* $field:ident: $t:ty),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fmeta])* pub(crate) $field: $t,)+
        }

        #[allow(dead_code)]
        impl $name {
            /// The columns, in declaration order, as a SQL list.
            pub(crate) const COLUMNS: &'static str = column_list!($($field),+);

            /// Decodes a row that selected [`Self::COLUMNS`].
            pub(crate) fn decode<R: $crate::store::rows::Columns + ?Sized>(r: &R) -> Result<Self, R::Error> {
                Ok(Self {
                    $($field: $crate::store::rows::Column::read(r, stringify!($field))?,)+
                })
            }

            /// Decodes a row that selected the columns as `r_<column>`.
            pub(crate) fn decode_r<R: $crate::store::rows::Columns + ?Sized>(r: &R) -> Result<Self, R::Error> {
                Ok(Self {
                    $($field: $crate::store::rows::Column::read(r, concat!("r_", stringify!($field)))?,)+
                })
            }
        }

        impl $crate::store::rows::FromColumns for $name {
            fn from_columns<R: $crate::store::rows::Columns + ?Sized>(r: &R) -> Result<Self, R::Error> {
                Self::decode(r)
            }
        }
    };
}

stored_row! {
    /// One row of `runs`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RunRow {
        run_id: String,
        workflow: String,
        version: Option<String>,
        fingerprint: String,
        definition_hash: String,
        trigger_name: String,
        queue: String,
        status: RunStatus,
        input: String,
        context: String,
        steps: String,
        manual: Option<String>,
        compensation: Option<String>,
        error: Option<String>,
        idempotency_key: Option<String>,
        payload_hash: String,
        parent_run_id: Option<String>,
        replayed_from: Option<String>,
        created_at: i64,
        updated_at: i64,
        revision: i64,
        dynamic: Option<String>,
        trace_parent: Option<String>,
    }
}

stored_row! {
    /// One row of `attempts`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AttemptRow {
        runnable_key: String,
        run_id: String,
        step: String,
        attempt: i64,
        seq: i64,
        queue: String,
        status: AttemptStatus,
        visible_at: i64,
        due_at: Option<i64>,
        claim_id: Option<String>,
        claim_token_hash: Option<String>,
        owner: Option<String>,
        lease_until: Option<i64>,
        claims: i64,
        input: String,
        outcome: Option<String>,
        deadline: Option<String>,
        created_at: i64,
        updated_at: i64,
        node: Option<String>,
    }
}

stored_row! {
    /// One journal fact as stored.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FactRow {
        id: i64,
        run_id: String,
        kind: String,
        data: String,
        occurred_at: i64,
    }
}

stored_row! {
    /// The row a listing reads per run.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SummaryRow {
        run_id: String,
        workflow: String,
        version: Option<String>,
        trigger_name: String,
        queue: String,
        status: RunStatus,
        steps: String,
        manual: Option<String>,
        parent_run_id: Option<String>,
        replayed_from: Option<String>,
        created_at: i64,
        updated_at: i64,
    }
}

/// A child run as listed for its parent: (parent step, child key, child run id, the child's
/// workflow and status when the child exists).
pub type ChildRow = (String, String, String, Option<String>, Option<String>);

/// An open attempt's deadline: (run id, step, runnable key, deadline JSON).
pub type DeadlineRow = (String, String, String, String);

/// A listing query over `runs`: every filter optional, keyset position, page size.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub(crate) workflow: Option<String>,
    pub(crate) statuses: Vec<RunStatus>,
    pub(crate) queue: Option<String>,
    pub(crate) created_from: Option<i64>,
    pub(crate) created_before: Option<i64>,
    /// A lower-case `LIKE` pattern with `\` escapes.
    pub(crate) search: Option<String>,
    pub(crate) after: Option<(i64, String)>,
    pub(crate) limit: i64,
}

/// One bound value. Every driver binds a row's values from the same list, in the order of
/// the shared SQL's `$n` parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Bytes(&'a [u8]),
}

impl RunRow {
    /// The values of `sql::insert_run()`.
    pub(super) fn insert_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Text(&self.workflow),
            Arg::OptText(self.version.as_deref()),
            Arg::Text(&self.fingerprint),
            Arg::Text(&self.definition_hash),
            Arg::Text(&self.trigger_name),
            Arg::Text(&self.queue),
            Arg::Text(self.status.as_str()),
            Arg::Text(&self.input),
            Arg::Text(&self.context),
            Arg::Text(&self.steps),
            Arg::OptText(self.manual.as_deref()),
            Arg::OptText(self.compensation.as_deref()),
            Arg::OptText(self.error.as_deref()),
            Arg::OptText(self.idempotency_key.as_deref()),
            Arg::Text(&self.payload_hash),
            Arg::OptText(self.parent_run_id.as_deref()),
            Arg::OptText(self.replayed_from.as_deref()),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
            Arg::Int(self.revision),
            Arg::OptText(self.dynamic.as_deref()),
            Arg::OptText(self.trace_parent.as_deref()),
        ]
    }

    /// The values of `sql::UPDATE_RUN`.
    pub(super) fn update_args(&self) -> Vec<Arg<'_>> {
        let mut args = self.update_args_same_status();
        args.insert(1, Arg::Text(self.status.as_str()));
        args
    }

    /// The values of `sql::UPDATE_RUN_SAME_STATUS`.
    pub(super) fn update_args_same_status(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.run_id),
            Arg::Text(&self.context),
            Arg::Text(&self.steps),
            Arg::OptText(self.manual.as_deref()),
            Arg::OptText(self.error.as_deref()),
            Arg::Int(self.updated_at),
            Arg::Int(self.revision),
            Arg::OptText(self.compensation.as_deref()),
            Arg::OptText(self.dynamic.as_deref()),
        ]
    }
}

impl AttemptRow {
    /// The values of `sql::insert_attempt()`.
    pub(super) fn insert_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Text(&self.run_id),
            Arg::Text(&self.step),
            Arg::Int(self.attempt),
            Arg::Int(self.seq),
            Arg::Text(&self.queue),
            Arg::Text(self.status.as_str()),
            Arg::Int(self.visible_at),
            Arg::OptInt(self.due_at),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::OptText(self.claim_token_hash.as_deref()),
            Arg::OptText(self.owner.as_deref()),
            Arg::OptInt(self.lease_until),
            Arg::Int(self.claims),
            Arg::Text(&self.input),
            Arg::OptText(self.outcome.as_deref()),
            Arg::OptText(self.deadline.as_deref()),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
            Arg::OptText(self.node.as_deref()),
        ]
    }

    /// The values of `sql::UPDATE_ATTEMPT`.
    pub(super) fn update_args(&self) -> Vec<Arg<'_>> {
        vec![
            Arg::Text(&self.runnable_key),
            Arg::Text(self.status.as_str()),
            Arg::Int(self.visible_at),
            Arg::OptInt(self.due_at),
            Arg::OptText(self.claim_id.as_deref()),
            Arg::OptText(self.claim_token_hash.as_deref()),
            Arg::OptText(self.owner.as_deref()),
            Arg::OptInt(self.lease_until),
            Arg::Int(self.claims),
            Arg::OptText(self.outcome.as_deref()),
            Arg::Int(self.updated_at),
        ]
    }
}

impl ListQuery {
    /// The SQL and its arguments; the same text for both databases.
    pub(super) fn sql(&self) -> (String, Vec<Arg<'_>>) {
        let mut args = Vec::new();
        let mut clauses = self.clauses(&mut args);
        if let Some((at, id)) = &self.after {
            let pa = push(&mut args, Arg::Int(*at));
            let pb = push(&mut args, Arg::Text(id));
            clauses.push(format!("(created_at, run_id) < ({pa}, {pb})"));
        }
        let limit = push(&mut args, Arg::Int(self.limit));
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        (
            format!(
                "SELECT {} FROM runs{filter} ORDER BY created_at DESC, run_id DESC LIMIT {limit}",
                SummaryRow::COLUMNS
            ),
            args,
        )
    }

    /// Runs matching the filters (but for statuses and the page), by status, each count
    /// stopping at `limit`: one bounded index range per status, whatever the table's size.
    pub(super) fn count_sql(&self) -> (String, Vec<Arg<'_>>) {
        let mut args = Vec::new();
        let clauses = self.clauses(&mut args);
        let limit = push(&mut args, Arg::Int(self.limit));
        let parts: Vec<String> = RunStatus::ALL
            .iter()
            .map(|s| {
                let mut c = clauses.clone();
                c.insert(0, format!("status = '{}'", s.as_str()));
                // The order is every listing index's own (equality columns, then created_at
                // DESC, run_id DESC): the planner reads the narrowest index in order and
                // stops at the limit, instead of filtering a wider one.
                format!(
                    "SELECT '{}' AS status, COUNT(*) AS runs FROM (SELECT 1 AS one FROM runs WHERE {} ORDER BY created_at DESC, run_id DESC LIMIT {limit}) c{}",
                    s.as_str(),
                    c.join(" AND "),
                    s.as_str()
                )
            })
            .collect();
        (parts.join(" UNION ALL "), args)
    }

    /// The filters but for statuses and the page, as SQL conditions.
    fn clauses<'a>(&'a self, args: &mut Vec<Arg<'a>>) -> Vec<String> {
        let mut clauses: Vec<String> = Vec::new();
        if let Some(w) = &self.workflow {
            let p = push(args, Arg::Text(w));
            clauses.push(format!("workflow = {p}"));
        }
        if !self.statuses.is_empty() {
            let ps: Vec<String> = self
                .statuses
                .iter()
                .map(|s| push(args, Arg::Text(s.as_str())))
                .collect();
            clauses.push(format!("status IN ({})", ps.join(", ")));
        }
        if let Some(q) = &self.queue {
            let p = push(args, Arg::Text(q));
            clauses.push(format!("queue = {p}"));
        }
        if let Some(t) = self.created_from {
            let p = push(args, Arg::Int(t));
            clauses.push(format!("created_at >= {p}"));
        }
        if let Some(t) = self.created_before {
            let p = push(args, Arg::Int(t));
            clauses.push(format!("created_at < {p}"));
        }
        if let Some(pattern) = &self.search {
            let mut ors = Vec::new();
            for col in ["run_id", "workflow", "trigger_name"] {
                let p = push(args, Arg::Text(pattern));
                ors.push(format!("LOWER({col}) LIKE {p} ESCAPE '\\'"));
            }
            let p = push(args, Arg::Text(pattern));
            ors.push(format!(
                "EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = runs.run_id AND LOWER(a.step) LIKE {p} ESCAPE '\\')"
            ));
            clauses.push(format!("({})", ors.join(" OR ")));
        }
        clauses
    }
}

fn push<'a>(args: &mut Vec<Arg<'a>>, a: Arg<'a>) -> String {
    args.push(a);
    format!("${}", args.len())
}
