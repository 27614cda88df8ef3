//! The visual editor: a page that edits a spec document on a canvas, and the JSON calls it
//! makes. Validation, the graph preview and the diff come from the library's editor API
//! (`squid_mesh::spec::editor`) and the engine's catalog check; registering stores the
//! document in the database's workflow store, and starting runs the stored version.

use askama::Template;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use squid_mesh::StartOptions;
use squid_mesh::spec::WorkflowSpec;
use squid_mesh::spec::editor::{self, EditorInput, EditorProblem};

use crate::auth::Viewer;
use crate::error::{PageError, Problem};
use crate::view::{Chrome, html};
use crate::{Shared, State};

/// The header the editor's calls carry their CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Template)]
#[template(path = "editor.html")]
struct EditorPage<'a> {
    chrome: &'a Chrome,
    workflows: Vec<(String, u32)>,
    current: String,
    /// `{document, version, actions}` for the script, as JSON.
    boot: String,
}

#[derive(Deserialize)]
pub(crate) struct EditorQuery {
    workflow: Option<String>,
}

/// A new document: one manual trigger, no steps.
fn blank(name: &str) -> Value {
    json!({
        "name": name,
        "triggers": [{"name": "manual", "type": "manual", "payload": []}],
        "steps": [],
        "editor": {"nodes": {}}
    })
}

/// The approved actions with their schemas, for the step form.
async fn action_choices(state: &State) -> Result<Vec<Value>, PageError> {
    let list = state.engine.catalog().list().await?;
    Ok(list
        .into_iter()
        .filter(|a| a.state.is_current())
        .map(|a| {
            json!({
                "key": a.key.to_string(),
                "state": a.state,
                "summary": a.description.summary,
                "input_schema": a.description.input_schema,
                "output_schema": a.description.output_schema,
            })
        })
        .collect())
}

pub(crate) async fn page(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    query: Result<Query<EditorQuery>, QueryRejection>,
) -> Response {
    let chrome = Chrome::new(&state, &viewer, "editor", "Editor");
    let result = async {
        let q = query
            .map_err(|e| {
                PageError::bad_request(vec![Problem {
                    path: "query".into(),
                    code: "malformed_query".into(),
                    message: e.body_text(),
                }])
            })?
            .0;
        let stored = state.engine.workflow_store().list().await?;
        let (document, version) = match &q.workflow {
            None => (blank("new_workflow"), None),
            Some(name) => match state.engine.workflow_store().latest(name).await? {
                Some(w) => (spec_value(&w.spec), Some(w.version)),
                None => match state.engine.registered_spec(name) {
                    Some(spec) => (spec_value(&spec), None),
                    None => {
                        return Err(PageError::not_found(&format!("The workflow {name:?}")));
                    }
                },
            },
        };
        let boot = json!({
            "document": document,
            "version": version,
            "actions": action_choices(&state).await?,
            "builtins": ["log", "wait", "pause", "approval"],
            "can_act": viewer.can_act(),
        });
        Ok(EditorPage {
            chrome: &chrome,
            workflows: stored.iter().map(|w| (w.name.clone(), w.version)).collect(),
            current: q.workflow.clone().unwrap_or_default(),
            // `</` cannot end the script element the JSON sits in.
            boot: boot
                .to_string()
                .replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026"),
        })
    }
    .await;
    match result {
        Ok(p) => html(StatusCode::OK, &p),
        Err(e) => e.page(&chrome),
    }
}

fn spec_value(spec: &WorkflowSpec) -> Value {
    serde_json::from_str(&spec.to_json()).unwrap_or(Value::Null)
}

fn problems_json(problems: &[EditorProblem]) -> Vec<Value> {
    problems
        .iter()
        .map(|p| json!({"path": p.path, "code": p.code, "message": p.message}))
        .collect()
}

fn unprocessable(code: &str, message: &str, problems: &[EditorProblem]) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": {"code": code, "message": message, "problems": problems_json(problems)}})),
    )
        .into_response()
}

/// What the editor sends: the document, and for `start` the workflow and payload.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Call {
    #[serde(default)]
    document: Option<Value>,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    comment: Option<String>,
}

pub(crate) async fn api(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Call>, JsonRejection>,
) -> Response {
    let call = match body {
        Ok(Json(c)) => c,
        Err(e) => {
            return PageError::bad_request(vec![Problem {
                path: "body".into(),
                code: "malformed_body".into(),
                message: e.body_text(),
            }])
            .json();
        }
    };
    let result = match op.as_str() {
        "validate" => validate(&state, &call).await,
        "register" | "start" => {
            let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            match viewer.check_act(&state, &headers, token) {
                Err(e) => Err(e),
                Ok(p) if op == "register" => register(&state, &call, &p.actor).await,
                Ok(p) => start(&state, &call, &p.actor).await,
            }
        }
        _ => Err(PageError::not_found(&format!("The editor call {op:?}"))),
    };
    match result {
        Ok(r) => r,
        Err(e) => e.json(),
    }
}

/// The document parsed, or the response listing why it is not a spec.
fn parse(call: &Call) -> Result<Result<WorkflowSpec, Response>, PageError> {
    let Some(doc) = &call.document else {
        return Err(PageError::bad_request(vec![Problem {
            path: "document".into(),
            code: "required".into(),
            message: "the call needs the spec document".into(),
        }]));
    };
    Ok(editor::parse(EditorInput::Value(doc)).map_err(|problems| {
        unprocessable(
            "invalid_spec",
            "the document is not a valid spec",
            &problems,
        )
    }))
}

async fn validate(state: &State, call: &Call) -> Result<Response, PageError> {
    let spec = match parse(call)? {
        Ok(s) => s,
        Err(_) => {
            // Shape problems: every one of them, and no preview.
            let problems = editor::validate(EditorInput::Value(
                call.document.as_ref().unwrap_or(&Value::Null),
            ));
            return Ok(Json(json!({
                "valid": false,
                "problems": problems_json(&problems),
                "warnings": [],
                "preview": Value::Null,
                "diff": Value::Null,
            }))
            .into_response());
        }
    };
    let mut problems: Vec<EditorProblem> = editor::validate(EditorInput::Value(
        call.document.as_ref().unwrap_or(&Value::Null),
    ));
    let report = state.engine.check_spec(&spec).await?;
    for p in report.problems {
        let p = EditorProblem::from(p);
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    let warnings: Vec<EditorProblem> = report
        .warnings
        .into_iter()
        .map(EditorProblem::from)
        .collect();
    let registered = state.engine.workflow_store().latest(&spec.name).await?;
    let diff = registered
        .as_ref()
        .map(|w| editor::diff(&w.spec, &spec).to_json());
    Ok(Json(json!({
        "valid": problems.is_empty(),
        "problems": problems_json(&problems),
        "warnings": problems_json(&warnings),
        "preview": editor::preview_graph(&spec).to_json(),
        "diff": diff,
        "registered_version": registered.map(|w| w.version),
    }))
    .into_response())
}

async fn register(state: &State, call: &Call, actor: &str) -> Result<Response, PageError> {
    let spec = match parse(call)? {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let before = state.engine.workflow_store().latest(&spec.name).await?;
    match state
        .engine
        .workflow_store()
        .register(&spec, actor, call.comment.as_deref())
        .await
    {
        Ok(saved) => {
            tracing::info!(actor, workflow = %saved.name, version = saved.version, "dashboard registered a workflow");
            Ok(Json(json!({
                "workflow": saved.name,
                "version": saved.version,
                "changed": before.map(|b| b.version) != Some(saved.version),
                "fingerprint": saved.fingerprint,
            }))
            .into_response())
        }
        Err(squid_mesh::EngineError::InvalidSpec(problems)) => {
            let problems: Vec<EditorProblem> =
                problems.into_iter().map(EditorProblem::from).collect();
            Ok(unprocessable(
                "invalid_spec",
                "the spec has problems: nothing was registered",
                &problems,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

async fn start(state: &State, call: &Call, actor: &str) -> Result<Response, PageError> {
    let Some(name) = call.workflow.as_deref().filter(|n| !n.trim().is_empty()) else {
        return Err(PageError::bad_request(vec![Problem {
            path: "workflow".into(),
            code: "required".into(),
            message: "say which registered workflow to start".into(),
        }]));
    };
    let Some(stored) = state.engine.workflow_store().latest(name).await? else {
        return Err(PageError::not_found(&format!(
            "The registered workflow {name:?}"
        )));
    };
    let payload = call
        .payload
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let run = state
        .engine
        .start(
            &stored.spec,
            call.trigger.as_deref(),
            payload,
            StartOptions::default(),
        )
        .await?;
    tracing::info!(actor, workflow = name, run_id = %run.run_id, "dashboard started a run");
    Ok(Json(json!({
        "run_id": run.run_id.to_string(),
        "href": format!("{}/runs/{}", state.base, run.run_id),
        "version": stored.version,
    }))
    .into_response())
}
