//! Errors as pages: an HTTP status, a stable code, a sentence and the problems, rendered
//! for people (HTML) or programs (JSON, for the editor's calls).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use squid_mesh::EngineError;

use crate::view::{self, Chrome};

/// One problem of a request, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) path: String,
    pub(crate) code: String,
    pub(crate) message: String,
}

/// A request that could not be served.
#[derive(Debug, Clone)]
pub(crate) struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) problems: Vec<Problem>,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            problems: Vec::new(),
        }
    }

    pub(crate) fn bad_request(problems: Vec<Problem>) -> Self {
        let message = if problems.len() == 1 {
            "The request has a problem.".to_owned()
        } else {
            format!("The request has {} problems.", problems.len())
        };
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request".into(),
            message,
            problems,
        }
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} does not exist."),
        )
    }

    /// The error as an HTML page.
    pub(crate) fn page(&self, chrome: &Chrome) -> Response {
        view::error_page(chrome, self)
    }

    /// The error as JSON: `{"error": {"code", "message", "problems"}}`.
    pub(crate) fn json(&self) -> Response {
        let problems: Vec<_> = self
            .problems
            .iter()
            .map(|p| json!({"path": p.path, "code": p.code, "message": p.message}))
            .collect();
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message, "problems": problems}})),
        )
            .into_response()
    }
}

impl From<EngineError> for PageError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Action(a) if a.code() == "unknown_action" => StatusCode::NOT_FOUND,
            EngineError::RunNotFound { .. }
            | EngineError::ScheduleNotFound { .. }
            | EngineError::UnknownWorkflow { .. } => StatusCode::NOT_FOUND,
            EngineError::InvalidSpec(_)
            | EngineError::InvalidPayload(_)
            | EngineError::InvalidOption(_)
            | EngineError::InvalidDynamicWork(_)
            | EngineError::InvalidRunId { .. }
            | EngineError::UnknownTrigger { .. } => StatusCode::BAD_REQUEST,
            EngineError::IdempotencyConflict { .. }
            | EngineError::InvalidTransition { .. }
            | EngineError::WrongManualStep { .. }
            | EngineError::UnsafeReplay { .. } => StatusCode::CONFLICT,
            EngineError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(code = e.code(), error = %e, "dashboard request failed");
        }
        let problems = e
            .problems()
            .iter()
            .map(|p| Problem {
                path: p.path.clone(),
                code: p.code.clone(),
                message: p.message.clone(),
            })
            .collect();
        Self {
            status,
            code: e.code().to_owned(),
            message: e.to_string(),
            problems,
        }
    }
}
