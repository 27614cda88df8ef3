//! Storage errors: passing (retryable) or lasting.

/// A storage failure. [`StoreError::is_retryable`] tells passing trouble (connection,
/// contention, serialization, a busy database) from lasting trouble (a constraint, a value
/// that does not decode, a failed migration).
///
/// The driver's error is shown in the message and is not also the `source()`, so a printed
/// chain says it once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database reported an error or could not be reached.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A migration could not be applied.
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The engine's group-commit lane is gone (the engine was closed, or the runtime that ran
    /// the lane ended); the next call starts a new one.
    #[error("the engine's group-commit lane stopped")]
    LaneGone,
    /// A group commit shared by several calls failed; each call gets this copy.
    #[error("group commit failed: {message}")]
    GroupCommit {
        /// The failure.
        message: String,
        /// Whether the failure was passing.
        retryable: bool,
    },
    /// The store was configured with an unusable setting (a schema name, say).
    #[error("invalid store setting: {0}")]
    InvalidSetting(String),
    /// SQLite's embedded writer reported an error (`code`: SQLite's extended result code).
    #[error("database error: {message}")]
    Sqlite {
        /// SQLite's extended result code, when SQLite produced the error.
        code: Option<i32>,
        /// What went wrong.
        message: String,
    },
    /// A completion fenced by the rows in hand was not written (the step needs a read, or
    /// the run or its claim changed since): the engine writes it under lock instead, so
    /// callers never see this.
    #[error("fenced write not made: {0}")]
    Unfenced(&'static str),
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {what}: {message}")]
    Corrupt {
        /// Which value.
        what: String,
        /// Why.
        message: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl StoreError {
    /// Whether retrying may succeed: connection trouble, contention (SQLite busy or locked,
    /// a Postgres serialization failure or deadlock), resource limits. A constraint
    /// violation, a value that does not decode, bad SQL, a setting or a migration are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => sqlx_retryable(e),
            Self::Sqlite { code, .. } => code.is_none_or(sqlite_retryable),
            Self::GroupCommit { retryable, .. } => *retryable,
            Self::LaneGone | Self::Unfenced(_) => true,
            Self::Migrate(_) | Self::InvalidSetting(_) | Self::Corrupt { .. } => false,
        }
    }
}

/// Whether SQLite's (extended) result code is passing: busy, locked, I/O, full, cannot open.
fn sqlite_retryable(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)
}

fn sqlx_retryable(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if !matches!(db.kind(), ErrorKind::Other) {
                // Unique, foreign key, not-null and check violations.
                return false;
            }
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            match code.parse::<i32>() {
                // SQLite reports its numeric result code.
                Ok(n) => sqlite_retryable(n),
                // Postgres SQLSTATE: data exceptions (22), integrity (23), syntax or access
                // (42) and similar are lasting; the rest (serialization 40001, deadlock
                // 40P01, connection 08, shutdown 57P, resources 53, lock 55P03) pass.
                Err(_) => !matches!(code.get(..2), Some("22" | "23" | "42" | "0A" | "2B" | "3F")),
            }
        }
        _ => false,
    }
}

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[tokio::test]
    async fn lasting_database_errors_are_not_retryable() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("memory db");
        sqlx::query("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .execute(&pool)
            .await
            .expect("create");
        sqlx::query("INSERT INTO t VALUES ('a')")
            .execute(&pool)
            .await
            .expect("insert");
        let duplicate = sqlx::query("INSERT INTO t VALUES ('a')")
            .execute(&pool)
            .await
            .expect_err("constraint");
        let syntax = sqlx::query("SELEC 1")
            .execute(&pool)
            .await
            .expect_err("syntax");
        let missing = sqlx::query("SELECT k FROM t WHERE k = 'zz'")
            .fetch_one(&pool)
            .await
            .expect_err("no row");
        for e in [duplicate, syntax, missing] {
            let text = e.to_string();
            assert!(!StoreError::from(e).is_retryable(), "{text}");
        }
    }

    #[test]
    fn passing_errors_are_retryable() {
        let table = [
            (StoreError::Database(sqlx::Error::PoolTimedOut), true),
            (StoreError::Database(sqlx::Error::PoolClosed), true),
            (StoreError::Database(sqlx::Error::RowNotFound), false),
            (sqlite(Some(5)), true),     // busy
            (sqlite(Some(517)), true),   // busy (snapshot)
            (sqlite(Some(6)), true),     // locked
            (sqlite(Some(2067)), false), // unique constraint
            (sqlite(Some(11)), false),   // corrupt file
            (sqlite(None), true),
            (StoreError::LaneGone, true),
            (
                StoreError::GroupCommit {
                    message: "x".into(),
                    retryable: false,
                },
                false,
            ),
            (StoreError::InvalidSetting("schema".into()), false),
        ];
        for (e, want) in table {
            assert_eq!(e.is_retryable(), want, "{e:?}");
        }
    }

    fn sqlite(code: Option<i32>) -> StoreError {
        StoreError::Sqlite {
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn the_message_names_the_cause_once() {
        use std::error::Error as _;
        let e = StoreError::Database(sqlx::Error::PoolTimedOut);
        assert!(e.to_string().contains("pool timed out"), "{e}");
        assert!(
            e.source().is_none(),
            "the cause is in the message, not also the source"
        );
    }
}
