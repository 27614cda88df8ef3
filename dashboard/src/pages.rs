//! The read pages (runs, a run, actions, schedules) and the control commands.

use askama::Template;
use axum::Form;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use squid_mesh::clock::Timestamp;
use squid_mesh::engine::{ManualAttrs, Signal, SignalKind};
use squid_mesh::inspect::render::status_text;
use squid_mesh::inspect::{
    Explanation, InspectOptions, Page, Redact, RunFilter, RunInspection, Scope,
};
use squid_mesh::{ActionKey, RunId, RunStatus};

use crate::auth::Viewer;
use crate::error::{PageError, Problem};
use crate::svg::run_graph_svg;
use crate::view::{Badge, Chrome, badge, html, iso, pretty, short, time};
use crate::{Shared, State};

/// Counting stops here: the runs page shows `1000+` beyond.
const COUNT_CAP: u32 = 1_000;
const MAX_PAGE: u32 = 200;

pub(crate) async fn home(AxState(state): AxState<Shared>) -> Redirect {
    Redirect::to(&format!("{}/runs", state.base))
}

pub(crate) async fn not_found(AxState(state): AxState<Shared>, viewer: Viewer) -> Response {
    PageError::not_found("This page").page(&Chrome::new(&state, &viewer, "", "Not found"))
}

/// The runs page's query string, checked.
#[derive(Debug, Default, Clone)]
struct RunsQuery {
    statuses: Vec<RunStatus>,
    workflow: Option<String>,
    queue: Option<String>,
    from: Option<(String, Timestamp)>,
    before: Option<(String, Timestamp)>,
    q: Option<String>,
    after: Option<String>,
    limit: u32,
    fragment: bool,
}

fn problem(path: &str, code: &str, message: impl Into<String>) -> Problem {
    Problem {
        path: path.to_owned(),
        code: code.to_owned(),
        message: message.into(),
    }
}

/// A time from a `datetime-local` field (UTC) or RFC 3339.
fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(Timestamp(t.timestamp_micros()));
    }
    for f in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, f) {
            return Some(Timestamp(Utc.from_utc_datetime(&t).timestamp_micros()));
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Timestamp(Utc.from_utc_datetime(&t).timestamp_micros()))
}

impl RunsQuery {
    fn parse(pairs: &[(String, String)]) -> Result<Self, Vec<Problem>> {
        let mut q = Self {
            limit: 50,
            ..Self::default()
        };
        let mut problems = Vec::new();
        for (k, v) in pairs {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            if v.len() > 1000 {
                problems.push(problem(
                    k,
                    "too_long",
                    format!("{k} is longer than 1000 bytes"),
                ));
                continue;
            }
            match k.as_str() {
                "status" => {
                    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        match serde_json::from_value::<RunStatus>(json!(name)) {
                            Ok(s) if !q.statuses.contains(&s) => q.statuses.push(s),
                            Ok(_) => {}
                            Err(_) => problems.push(problem(
                                "status",
                                "invalid_status",
                                format!(
                                    "unknown status {name:?}: expected one of {}",
                                    RunStatus::ALL.map(|s| s.as_str()).join(", ")
                                ),
                            )),
                        }
                    }
                }
                "workflow" => q.workflow = Some(v.to_owned()),
                "queue" => q.queue = Some(v.to_owned()),
                "q" => q.q = Some(v.to_owned()),
                "after" => q.after = Some(v.to_owned()),
                "from" | "before" => match parse_time(v) {
                    Some(t) if k == "from" => q.from = Some((v.to_owned(), t)),
                    Some(t) => q.before = Some((v.to_owned(), t)),
                    None => problems.push(problem(
                        k,
                        "invalid_time",
                        format!("{k} must be a time like 2026-12-01T14:30 (UTC) or RFC 3339, got {v:?}"),
                    )),
                },
                "limit" => match v.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => q.limit = n,
                    _ => problems.push(problem(
                        "limit",
                        "invalid_limit",
                        format!("limit must be a number from 1 to {MAX_PAGE}, got {v:?}"),
                    )),
                },
                "fragment" => q.fragment = v == "1",
                other => problems.push(problem(
                    other,
                    "unknown_parameter",
                    format!("unknown parameter {other:?}: the runs page takes status, workflow, queue, from, before, q, after and limit"),
                )),
            }
        }
        if problems.is_empty() {
            Ok(q)
        } else {
            Err(problems)
        }
    }

    fn filter(&self) -> RunFilter {
        let mut f = RunFilter::default().statuses(self.statuses.clone());
        if let Some(w) = &self.workflow {
            f = f.workflow(w);
        }
        if let Some(qu) = &self.queue {
            f = f.queue(qu);
        }
        f = f.created_between(
            self.from.as_ref().map(|t| t.1),
            self.before.as_ref().map(|t| t.1),
        );
        if let Some(s) = &self.q {
            f = f.search(s);
        }
        f
    }

    /// The query string of these filters, with `statuses` instead of ours and a page.
    fn href(
        &self,
        base: &str,
        statuses: &[RunStatus],
        after: Option<&str>,
        fragment: bool,
    ) -> String {
        let mut pairs: Vec<(&str, &str)> =
            statuses.iter().map(|s| ("status", s.as_str())).collect();
        for (k, v) in [
            ("workflow", self.workflow.as_deref()),
            ("queue", self.queue.as_deref()),
            ("from", self.from.as_ref().map(|t| t.0.as_str())),
            ("before", self.before.as_ref().map(|t| t.0.as_str())),
            ("q", self.q.as_deref()),
            ("after", after),
        ] {
            if let Some(v) = v {
                pairs.push((k, v));
            }
        }
        let limit = self.limit.to_string();
        if self.limit != 50 {
            pairs.push(("limit", &limit));
        }
        if fragment {
            pairs.push(("fragment", "1"));
        }
        let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if qs.is_empty() {
            format!("{base}/runs")
        } else {
            format!("{base}/runs?{qs}")
        }
    }
}

struct StatusOption {
    name: &'static str,
    checked: bool,
}

struct CountView {
    status: &'static str,
    text: String,
    href: String,
    active: bool,
}

struct RunRowView {
    id: String,
    short: String,
    href: String,
    workflow: String,
    version: Option<String>,
    trigger: String,
    queue: String,
    status: &'static str,
    current: String,
    badge: Option<Badge>,
    created: String,
    created_iso: String,
    updated: String,
    updated_iso: String,
    parent_href: Option<String>,
    replay: bool,
}

#[derive(Template)]
#[template(path = "runs_live.html")]
struct RunsLive {
    first_href: Option<String>,
    next_href: Option<String>,
    counts: Vec<CountView>,
    rows: Vec<RunRowView>,
    as_of: String,
    as_of_iso: String,
    refresh_secs: u32,
    live: bool,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage<'a> {
    chrome: &'a Chrome,
    status_options: Vec<StatusOption>,
    workflow: String,
    workflows: Vec<String>,
    queue: String,
    from: String,
    before: String,
    q: String,
    live_html: String,
    live_href: String,
    refresh_secs: u32,
}

pub(crate) async fn runs(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let chrome = Chrome::new(&state, &viewer, "runs", "Runs");
    let parsed = match query {
        Ok(Query(pairs)) => RunsQuery::parse(&pairs),
        Err(e) => Err(vec![problem("query", "malformed_query", e.body_text())]),
    };
    let q = match parsed {
        Ok(q) => q,
        Err(problems) => return PageError::bad_request(problems).page(&chrome),
    };
    match runs_page(&state, &q, viewer.scope, &chrome).await {
        Ok(r) => r,
        Err(e) => e.page(&chrome),
    }
}

async fn runs_page(
    state: &State,
    q: &RunsQuery,
    scope: Scope,
    chrome: &Chrome,
) -> Result<Response, PageError> {
    let filter = q.filter();
    let page = match &q.after {
        Some(t) => Page::after(q.limit, t),
        None => Page::first(q.limit),
    };
    let (listed, counts) = tokio::join!(
        state.engine.list_runs(&filter, &page),
        state.engine.count_runs(&filter, COUNT_CAP)
    );
    let listed = listed?.redacted(scope);
    let counts = counts?;
    let now = state.engine.now();
    let base = &state.base;
    let counts = counts
        .by_status
        .iter()
        .map(|c| {
            let only = q.statuses.len() == 1 && q.statuses[0] == c.status;
            CountView {
                status: c.status.as_str(),
                text: if c.more {
                    format!("{}+", c.runs)
                } else {
                    c.runs.to_string()
                },
                href: q.href(
                    base,
                    if only {
                        &[]
                    } else {
                        std::slice::from_ref(&c.status)
                    },
                    None,
                    false,
                ),
                active: only,
            }
        })
        .collect();
    let rows = listed
        .runs
        .iter()
        .map(|r| RunRowView {
            id: r.run_id.clone(),
            short: short(&r.run_id),
            href: format!("{base}/runs/{}", r.run_id),
            workflow: r.workflow.clone(),
            version: r.version.clone(),
            trigger: r.trigger.clone(),
            queue: r.queue.clone(),
            status: r.status.as_str(),
            current: r.current_steps.join(", "),
            badge: r.deadline.as_ref().and_then(badge),
            created: time(r.created_at),
            created_iso: iso(r.created_at),
            updated: time(r.updated_at),
            updated_iso: iso(r.updated_at),
            parent_href: r.parent_run_id.as_ref().map(|p| format!("{base}/runs/{p}")),
            replay: r.replayed_from.is_some(),
        })
        .collect();
    let live = q.after.is_none() && state.refresh_secs > 0;
    let fragment = RunsLive {
        first_href: q
            .after
            .as_ref()
            .map(|_| q.href(base, &q.statuses, None, false)),
        next_href: listed
            .next_page
            .as_deref()
            .map(|t| q.href(base, &q.statuses, Some(t), false)),
        counts,
        rows,
        as_of: time(now),
        as_of_iso: iso(now),
        refresh_secs: state.refresh_secs,
        live,
    };
    if q.fragment {
        return Ok(html(StatusCode::OK, &fragment));
    }
    let live_html = fragment.render().map_err(|e| {
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "render_failed",
            e.to_string(),
        )
    })?;
    let mut workflows = state.engine.workflows();
    // Names for the filter's suggestions: a stored spec that no longer parses costs its
    // suggestion, not the page.
    if let Ok(stored) = state.engine.workflow_store().list().await {
        workflows.extend(stored.into_iter().map(|w| w.name));
    }
    workflows.sort();
    workflows.dedup();
    let page = RunsPage {
        chrome,
        status_options: RunStatus::ALL
            .iter()
            .map(|s| StatusOption {
                name: s.as_str(),
                checked: q.statuses.contains(s),
            })
            .collect(),
        workflow: q.workflow.clone().unwrap_or_default(),
        workflows,
        queue: q.queue.clone().unwrap_or_default(),
        from: q.from.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
        before: q.before.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
        q: q.q.clone().unwrap_or_default(),
        live_html,
        live_href: if live {
            q.href(base, &q.statuses, None, true)
        } else {
            String::new()
        },
        refresh_secs: if live { state.refresh_secs } else { 0 },
    };
    Ok(html(StatusCode::OK, &page))
}

fn run_id(text: &str) -> Result<RunId, PageError> {
    if text.len() > 100 {
        return Err(PageError::bad_request(vec![problem(
            "run_id",
            "invalid_run_id",
            "a run id is a UUID",
        )]));
    }
    text.parse::<RunId>().map_err(|_| {
        PageError::bad_request(vec![problem(
            "run_id",
            "invalid_run_id",
            format!("{text:?} is not a run id (a UUID)"),
        )])
    })
}

struct LinkView {
    href: String,
    label: String,
    step: String,
}

struct AttemptRowView {
    step: String,
    attempt: u32,
    status: String,
    visible: String,
    owner: String,
    claims: u32,
    error: Option<String>,
    wait: Option<String>,
    input: Option<String>,
    output: Option<String>,
}

struct TimelineItem {
    at: String,
    iso: String,
    kind: String,
    text: String,
    class: &'static str,
}

struct ControlView {
    command: &'static str,
    label: &'static str,
    class: &'static str,
    comment: bool,
    irreversible: bool,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunView<'a> {
    chrome: &'a Chrome,
    id: String,
    workflow: String,
    version: Option<String>,
    status: &'static str,
    trigger: String,
    queue: String,
    created: String,
    created_iso: String,
    updated: String,
    updated_iso: String,
    revision: i64,
    parent: Option<LinkView>,
    replayed_from: Option<LinkView>,
    badge: Option<Badge>,
    reason: &'static str,
    reason_step: Option<String>,
    summary: String,
    next_actions: Vec<String>,
    evidence: String,
    controls: Vec<ControlView>,
    csrf: String,
    nonce: String,
    svg: String,
    children: Vec<LinkView>,
    dynamic: Vec<String>,
    attempts: Vec<AttemptRowView>,
    timeline: Vec<TimelineItem>,
    full_history: bool,
    error: Option<String>,
    input: Option<String>,
    context: Option<String>,
}

/// The commands the run accepts now, for a viewer who may act.
fn controls(insp: &RunInspection) -> Vec<ControlView> {
    let mut out = Vec::new();
    if let Some(m) = &insp.manual {
        match m.kind {
            squid_mesh::actions::Suspension::Approval => {
                out.push(ControlView {
                    command: "approve",
                    label: "Approve",
                    class: "good",
                    comment: true,
                    irreversible: false,
                });
                out.push(ControlView {
                    command: "reject",
                    label: "Reject",
                    class: "bad",
                    comment: true,
                    irreversible: false,
                });
            }
            squid_mesh::actions::Suspension::Pause => {
                out.push(ControlView {
                    command: "resume",
                    label: "Resume",
                    class: "good",
                    comment: true,
                    irreversible: false,
                });
            }
        }
    }
    if insp.terminal {
        let irreversible = insp.steps.iter().any(|s| s.recovery.irreversible);
        out.push(ControlView {
            command: "replay",
            label: "Replay",
            class: "",
            comment: true,
            irreversible,
        });
    } else {
        out.push(ControlView {
            command: "cancel",
            label: "Cancel run",
            class: "bad",
            comment: true,
            irreversible: false,
        });
    }
    out
}

fn timeline(insp: &RunInspection) -> Vec<TimelineItem> {
    let mut items: Vec<(i64, TimelineItem)> = Vec::new();
    if let Some(history) = &insp.history {
        for h in history {
            let mut v = serde_json::to_value(&h.fact).unwrap_or(Value::Null);
            let kind = v
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("fact")
                .to_owned();
            if let Value::Object(m) = &mut v {
                m.remove("kind");
            }
            let mut text = serde_json::to_string(&v).unwrap_or_default();
            if text.chars().count() > 400 {
                text = text.chars().take(399).collect::<String>() + "…";
            }
            let class = if kind.contains("command") {
                "command"
            } else {
                "fact"
            };
            items.push((
                h.at.0,
                TimelineItem {
                    at: time(h.at),
                    iso: iso(h.at),
                    kind,
                    text,
                    class,
                },
            ));
        }
    } else {
        items.push((
            insp.created_at.0,
            TimelineItem {
                at: time(insp.created_at),
                iso: iso(insp.created_at),
                kind: "run_started".into(),
                text: format!("trigger {}", insp.trigger),
                class: "fact",
            },
        ));
        for a in &insp.attempts {
            items.push((
                a.updated_at.0,
                TimelineItem {
                    at: time(a.updated_at),
                    iso: iso(a.updated_at),
                    kind: format!("attempt {}", status_text(&a.status)),
                    text: format!("{} #{}", a.step, a.attempt),
                    class: "fact",
                },
            ));
        }
        for c in &insp.commands {
            let who = c
                .actor
                .as_ref()
                .map(|a| match a {
                    Value::String(s) => format!(" by {s}"),
                    other => format!(" by {other}"),
                })
                .unwrap_or_default();
            items.push((
                c.occurred_at.0,
                TimelineItem {
                    at: time(c.occurred_at),
                    iso: iso(c.occurred_at),
                    kind: format!("command {}", c.command.as_str()),
                    text: format!(
                        "{who}{}",
                        c.comment
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                    class: "command",
                },
            ));
        }
        items.sort_by_key(|(at, _)| *at);
    }
    items.into_iter().map(|(_, t)| t).collect()
}

pub(crate) async fn run(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let chrome = Chrome::new(&state, &viewer, "runs", format!("Run {}", short(&id)));
    match run_page(&state, &viewer, &id, &chrome).await {
        Ok(r) => r,
        Err(e) => e.page(&chrome),
    }
}

async fn run_page(
    state: &State,
    viewer: &Viewer,
    id: &str,
    chrome: &Chrome,
) -> Result<Response, PageError> {
    let id = run_id(id)?;
    let scope = viewer.scope;
    let opts = InspectOptions::default().include_history(scope == Scope::Auditor);
    let (insp, graph) = tokio::join!(
        state.engine.inspect_run(id, opts.clone()),
        state
            .engine
            .inspect_run_graph(id, InspectOptions::default())
    );
    let insp = insp?;
    let explanation = Explanation::from_inspection(&insp).redacted(scope);
    let insp = insp.redacted(scope);
    let graph = graph?.redacted(scope);
    let base = &state.base;
    let href = |r: &str| format!("{base}/runs/{r}");
    let svg = run_graph_svg(&graph, &href);
    let controls = if viewer.can_act() {
        controls(&insp)
    } else {
        Vec::new()
    };
    let attempts = insp
        .attempts
        .iter()
        .map(|a| AttemptRowView {
            step: a.step.clone(),
            attempt: a.attempt,
            status: status_text(&a.status),
            visible: time(a.visible_at),
            owner: a.owner.clone().unwrap_or_default(),
            claims: a.claims,
            error: a.error.as_ref().map(pretty),
            wait: a.waiting_for_action.as_ref().map(|w| w.message.clone()),
            input: a.input.as_ref().map(pretty),
            output: a.output.as_ref().map(pretty),
        })
        .collect();
    let dynamic = insp
        .dynamic_work
        .iter()
        .map(|w| {
            format!(
                "{} ({}) from {}: {} node(s){}",
                w.key,
                status_text(&w.status),
                w.origin_step,
                w.nodes.len(),
                w.reason
                    .as_ref()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let view = RunView {
        chrome,
        id: insp.run_id.to_string(),
        workflow: insp.workflow.clone(),
        version: insp.version.clone(),
        status: insp.status.as_str(),
        trigger: insp.trigger.clone(),
        queue: insp.queue.clone(),
        created: time(insp.created_at),
        created_iso: iso(insp.created_at),
        updated: time(insp.updated_at),
        updated_iso: iso(insp.updated_at),
        revision: insp.revision,
        parent: insp.parent.as_ref().map(|p| LinkView {
            href: href(&p.run_id),
            label: format!(
                "{} {}",
                p.workflow.clone().unwrap_or_default(),
                short(&p.run_id)
            ),
            step: p.step.clone(),
        }),
        replayed_from: insp.replayed_from.as_ref().map(|r| LinkView {
            href: href(r),
            label: short(r),
            step: String::new(),
        }),
        badge: insp.deadline.as_ref().and_then(badge),
        reason: explanation.reason.as_str(),
        reason_step: explanation.step.clone(),
        summary: explanation.summary.clone(),
        next_actions: explanation.next_actions.iter().map(status_text).collect(),
        evidence: pretty(&explanation.evidence),
        controls,
        csrf: viewer.csrf.clone().unwrap_or_default(),
        nonce: hex::encode(rand::random::<[u8; 16]>()),
        svg,
        children: insp
            .children
            .iter()
            .map(|c| LinkView {
                href: href(&c.run_id),
                label: format!(
                    "{} {} ({})",
                    c.workflow.clone().unwrap_or_default(),
                    short(&c.run_id),
                    c.status.map(|s| s.as_str()).unwrap_or("gone")
                ),
                step: c.step.clone(),
            })
            .collect(),
        dynamic,
        attempts,
        timeline: timeline(&insp),
        full_history: insp.history.is_some(),
        error: insp.error.as_ref().map(pretty),
        input: insp.input.as_ref().map(pretty),
        context: insp.context.as_ref().map(pretty),
    };
    Ok(html(StatusCode::OK, &view))
}

pub(crate) async fn run_svg(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let chrome = Chrome::new(&state, &viewer, "runs", "Graph");
    let result = async {
        let id = run_id(&id)?;
        let graph = state
            .engine
            .inspect_run_graph(id, InspectOptions::default())
            .await?
            .redacted(viewer.scope);
        let base = &state.base;
        Ok::<_, PageError>(run_graph_svg(&graph, &|r| format!("{base}/runs/{r}")))
    }
    .await;
    match result {
        Ok(svg) => ([(CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => e.page(&chrome),
    }
}

#[derive(Deserialize)]
pub(crate) struct CommandForm {
    csrf: Option<String>,
    nonce: Option<String>,
    comment: Option<String>,
    allow_irreversible: Option<String>,
}

pub(crate) async fn command(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    Path((id, command)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    form: Result<Form<CommandForm>, FormRejection>,
) -> Response {
    let chrome = Chrome::new(&state, &viewer, "runs", "Command");
    let result = async {
        let kind = match command.as_str() {
            "approve" => SignalKind::Approve,
            "reject" => SignalKind::Reject,
            "resume" => SignalKind::Resume,
            "cancel" => SignalKind::Cancel,
            "replay" => SignalKind::Replay,
            _ => return Err(PageError::not_found(&format!("The command {command:?}"))),
        };
        let form = form.map_err(|e| {
            PageError::bad_request(vec![problem("form", "malformed_form", e.body_text())])
        })?;
        let principal = viewer.check_act(&state, &headers, form.csrf.as_deref())?;
        // The form's nonce makes a double submission one command. The pages' forms always
        // carry one; a program may leave it out (and then repeats are repeated commands).
        let key = match form.nonce.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n) if n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(format!("dashboard:{command}:{n}"))
            }
            Some(_) => {
                return Err(PageError::bad_request(vec![problem(
                    "nonce",
                    "invalid_nonce",
                    "the form's nonce must be 32 hexadecimal digits (reload the page)",
                )]));
            }
        };
        let id = run_id(&id)?;
        let comment = form
            .comment
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        if comment.as_ref().is_some_and(|c| c.len() > 2000) {
            return Err(PageError::bad_request(vec![problem(
                "comment",
                "too_long",
                "a comment is at most 2000 bytes",
            )]));
        }
        let actor = Value::String(principal.actor.clone());
        let snapshot = match kind {
            SignalKind::Approve | SignalKind::Reject | SignalKind::Resume => {
                let mut attrs = ManualAttrs::by(actor);
                if let Some(c) = comment {
                    attrs = attrs.comment(c);
                }
                attrs.idempotency_key = key;
                match kind {
                    SignalKind::Approve => state.engine.approve(id, attrs).await?,
                    SignalKind::Reject => state.engine.reject(id, attrs).await?,
                    _ => state.engine.resume(id, attrs).await?,
                }
            }
            _ => {
                let mut s = Signal::new(kind, Some(id), state.engine.now());
                s.idempotency_key = key;
                s.payload.insert("actor".into(), actor);
                if let Some(c) = comment {
                    s.payload.insert("comment".into(), Value::String(c));
                }
                if kind == SignalKind::Replay {
                    let allow = form.allow_irreversible.as_deref().is_some_and(|v| v == "true" || v == "on");
                    s.payload.insert("allow_irreversible".into(), Value::Bool(allow));
                }
                state.engine.apply_signal(s).await?
            }
        };
        tracing::info!(actor = %principal.actor, command = %command, run_id = %id, "dashboard command");
        Ok(Redirect::to(&format!("{}/runs/{}", state.base, snapshot.run_id)).into_response())
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => e.page(&chrome),
    }
}

/// When an action was approved, and by whom for auditors.
fn approved(at: squid_mesh::clock::Timestamp, by: &str, scope: Scope) -> String {
    if scope == Scope::Auditor {
        format!("{} UTC by {by}", time(at))
    } else {
        format!("{} UTC", time(at))
    }
}

struct ActionRowView {
    key: String,
    href: String,
    state: String,
    digest: String,
    digest_short: String,
    limits: String,
    capabilities: String,
    approved: String,
}

#[derive(Template)]
#[template(path = "actions.html")]
struct ActionsPage<'a> {
    chrome: &'a Chrome,
    actions: Vec<ActionRowView>,
}

/// A one-line summary of a JSON object: `key=value` pairs.
fn pairs(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null() && *v != &Value::Bool(false) && *v != &json!([]))
            .map(|(k, v)| match v {
                Value::Bool(true) => k.clone(),
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

pub(crate) async fn actions(AxState(state): AxState<Shared>, viewer: Viewer) -> Response {
    let chrome = Chrome::new(&state, &viewer, "actions", "Actions");
    match state.engine.catalog().list().await {
        Ok(list) => {
            let actions = list
                .iter()
                .map(|a| ActionRowView {
                    key: a.key.to_string(),
                    href: format!("{}/actions/{}", state.base, a.key),
                    state: status_text(&a.state),
                    digest: a.digest.to_string(),
                    digest_short: short(&a.digest.to_string()),
                    limits: pairs(&serde_json::to_value(&a.limits).unwrap_or_default()),
                    capabilities: pairs(&serde_json::to_value(&a.capabilities).unwrap_or_default()),
                    approved: approved(a.approved_at, &a.approved_by, viewer.scope),
                })
                .collect();
            html(
                StatusCode::OK,
                &ActionsPage {
                    chrome: &chrome,
                    actions,
                },
            )
        }
        Err(e) => PageError::from(e).page(&chrome),
    }
}

struct EventView {
    seq: i64,
    at: String,
    kind: String,
    digest: String,
    digest_short: String,
    actor: String,
    comment: String,
}

#[derive(Template)]
#[template(path = "action.html")]
struct ActionPage<'a> {
    chrome: &'a Chrome,
    key: String,
    state: String,
    digest: String,
    approved: String,
    limits: String,
    capabilities: String,
    description: String,
    history: Vec<EventView>,
}

pub(crate) async fn action(
    AxState(state): AxState<Shared>,
    viewer: Viewer,
    Path(key): Path<String>,
) -> Response {
    let chrome = Chrome::new(&state, &viewer, "actions", key.clone());
    let result = async {
        let key = ActionKey::new(&key).map_err(|e| {
            PageError::bad_request(vec![problem("key", "invalid_action_key", e.to_string())])
        })?;
        let detail = state.engine.catalog().show(&key).await?;
        let Some(a) = detail.current.or_else(|| detail.versions.last().cloned()) else {
            return Err(PageError::not_found(&format!("The action {key}")));
        };
        let history = detail
            .history
            .into_iter()
            .map(|e| EventView {
                seq: e.seq,
                at: time(e.at),
                kind: status_text(&e.kind),
                digest: e.digest.to_string(),
                digest_short: short(&e.digest.to_string()),
                // Who did what is the auditor's, as for run commands.
                actor: if viewer.scope == Scope::Auditor {
                    e.actor
                } else {
                    String::new()
                },
                comment: if viewer.scope == Scope::Auditor {
                    e.comment.unwrap_or_default()
                } else {
                    String::new()
                },
            })
            .collect();
        Ok(ActionPage {
            chrome: &chrome,
            key: a.key.to_string(),
            state: status_text(&a.state),
            digest: a.digest.to_string(),
            approved: approved(a.approved_at, &a.approved_by, viewer.scope),
            limits: pretty(&a.limits),
            capabilities: pretty(&a.capabilities),
            description: pretty(&a.description),
            history,
        })
    }
    .await;
    match result {
        Ok(page) => html(StatusCode::OK, &page),
        Err(e) => e.page(&chrome),
    }
}

struct ScheduleView {
    workflow: String,
    trigger: String,
    cron: String,
    timezone: String,
    state: String,
    next: String,
    last: String,
    last_run_href: Option<String>,
    missed: u64,
    queue: String,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage<'a> {
    chrome: &'a Chrome,
    schedules: Vec<ScheduleView>,
}

pub(crate) async fn schedules(AxState(state): AxState<Shared>, viewer: Viewer) -> Response {
    let chrome = Chrome::new(&state, &viewer, "schedules", "Schedules");
    match state.engine.schedules().list().await {
        Ok(list) => {
            let schedules = list
                .into_iter()
                .map(|s| ScheduleView {
                    next: match (&s.next_fire_at, &s.next_fire_local) {
                        (Some(t), Some(local)) => {
                            format!("{} UTC ({local} {})", time(*t), s.timezone)
                        }
                        (Some(t), None) => format!("{} UTC", time(*t)),
                        _ => "—".into(),
                    },
                    last: s
                        .last_fired_at
                        .map_or_else(|| "never".into(), |t| format!("{} UTC", time(t))),
                    last_run_href: s
                        .last_run_id
                        .as_ref()
                        .filter(|_| viewer.scope != Scope::External)
                        .map(|r| format!("{}/runs/{r}", state.base)),
                    workflow: s.workflow,
                    trigger: s.trigger,
                    cron: s.cron,
                    timezone: s.timezone,
                    state: status_text(&s.state),
                    missed: s.missed,
                    queue: s.queue,
                })
                .collect();
            html(
                StatusCode::OK,
                &SchedulesPage {
                    chrome: &chrome,
                    schedules,
                },
            )
        }
        Err(e) => PageError::from(e).page(&chrome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_runs_query_is_checked_and_written_back() {
        let q = RunsQuery::parse(&pairs(&[
            ("status", "running,paused"),
            ("workflow", "orders"),
            ("from", "2026-12-01T10:00"),
            ("q", "o-1"),
            ("limit", "20"),
            ("queue", ""),
        ]))
        .unwrap();
        assert_eq!(q.statuses, vec![RunStatus::Running, RunStatus::Paused]);
        assert_eq!(
            q.from.as_ref().unwrap().1.to_rfc3339(),
            "2026-12-01T10:00:00.000Z"
        );
        assert_eq!(
            q.href("/ops", &q.statuses, Some("1~x"), false),
            "/ops/runs?status=running&status=paused&workflow=orders&from=2026-12-01T10%3A00&q=o-1&after=1%7Ex&limit=20"
        );
        let bad = RunsQuery::parse(&pairs(&[
            ("status", "sleeping"),
            ("limit", "0"),
            ("from", "yesterday"),
            ("x", "1"),
        ]))
        .unwrap_err();
        let codes: Vec<&str> = bad.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "invalid_status",
                "invalid_limit",
                "invalid_time",
                "unknown_parameter"
            ]
        );
    }
}
