//! The pages' templates and the small values they show.

use askama::Template;
use axum::http::StatusCode;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use squid_mesh::clock::Timestamp;
use squid_mesh::inspect::{DeadlineState, DeadlineStatus};

use crate::State;
use crate::auth::{Principal, Viewer};
use crate::error::{PageError, Problem};

/// What every page shows around its content: the base path, the navigation, who is
/// looking and whether they may act.
#[derive(Clone)]
pub(crate) struct Chrome {
    pub(crate) base: String,
    pub(crate) title: String,
    pub(crate) nav: &'static str,
    pub(crate) actor: Option<String>,
    pub(crate) scope: &'static str,
    pub(crate) can_act: bool,
    pub(crate) can_sign_in: bool,
    pub(crate) csrf: Option<String>,
    pub(crate) read_only_note: Option<String>,
}

impl Chrome {
    pub(crate) fn new(
        state: &State,
        viewer: &Viewer,
        nav: &'static str,
        title: impl Into<String>,
    ) -> Self {
        let read_only_note = if viewer.can_act() {
            None
        } else if !viewer.can_sign_in {
            Some("Read-only: this dashboard was started without tokens, so nobody can act from it. Start it with --tokens FILE (or give the host an authorizer) to approve, reject, resume, cancel, replay and register.".to_owned())
        } else if let Some(actor) = viewer.actor() {
            Some(format!(
                "Read-only: the token of {actor} may look but not act."
            ))
        } else {
            Some("Read-only until you sign in with a token that may act.".to_owned())
        };
        Self {
            base: state.base.clone(),
            title: title.into(),
            nav,
            actor: viewer.actor().map(str::to_owned),
            scope: viewer.scope.as_str(),
            can_act: viewer.can_act(),
            can_sign_in: viewer.can_sign_in,
            csrf: viewer.csrf.clone(),
            read_only_note,
        }
    }

    /// The chrome of pages shown before the viewer is known (sign-in, early errors).
    pub(crate) fn bare(state: &State) -> Self {
        Self {
            base: state.base.clone(),
            title: "Squid Mesh".into(),
            nav: "",
            actor: None,
            scope: "anonymous",
            can_act: false,
            can_sign_in: state.authorizer.is_some(),
            csrf: None,
            read_only_note: None,
        }
    }
}

/// A rendered template as an HTML response with `status`.
pub(crate) fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, "no-store"),
                // No framing (the forms act), no sniffing, no referrer leaving the site.
                (X_FRAME_OPTIONS, "DENY"),
                (CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (REFERRER_POLICY, "same-origin"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: &'a Chrome,
    heading: String,
    code: &'a str,
    message: &'a str,
    problems: &'a [Problem],
}

pub(crate) fn error_page(chrome: &Chrome, e: &PageError) -> Response {
    let heading = format!(
        "{} {}",
        e.status.as_u16(),
        e.status.canonical_reason().unwrap_or("Error")
    );
    let page = ErrorPage {
        chrome: &Chrome {
            title: heading.clone(),
            ..chrome.clone()
        },
        heading,
        code: &e.code,
        message: &e.message,
        problems: &e.problems,
    };
    html(e.status, &page)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    chrome: &'a Chrome,
    signed_in: Option<&'a str>,
    failure: Option<&'a str>,
}

pub(crate) fn login(
    chrome: &Chrome,
    who: Option<&Principal>,
    failure: Option<&str>,
    status: StatusCode,
) -> Response {
    let chrome = Chrome {
        title: "Sign in".into(),
        ..chrome.clone()
    };
    html(
        status,
        &LoginPage {
            chrome: &chrome,
            signed_in: who.map(|p| p.actor.as_str()),
            failure,
        },
    )
}

/// `2026-12-01 14:35:02`, UTC.
pub(crate) fn time(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// RFC 3339, for `<time datetime>`.
pub(crate) fn iso(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// A deadline badge: its class, text and tooltip.
pub(crate) struct Badge {
    pub(crate) class: &'static str,
    pub(crate) text: String,
    pub(crate) title: String,
}

pub(crate) fn badge(d: &DeadlineState) -> Option<Badge> {
    let (class, label) = match d.status {
        DeadlineStatus::Escalated => ("escalated", "escalated"),
        DeadlineStatus::Overdue => ("overdue", "overdue"),
        DeadlineStatus::DueSoon => ("due-soon", "due soon"),
        DeadlineStatus::OnTime => return None,
    };
    let when = if d.remaining_ms < 0 {
        format!("{} late", duration(-d.remaining_ms))
    } else {
        format!("due in {}", duration(d.remaining_ms))
    };
    Some(Badge {
        class,
        text: format!("{label} · {}", d.step),
        title: format!("{when}, due {} UTC ({})", time(d.due_at), d.escalation),
    })
}

/// `3 h 5 min`, `42 s`.
pub(crate) fn duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Pretty JSON for `<pre>`.
pub(crate) fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("(not shown: {e})"))
}

/// The first 12 characters of a digest or id.
pub(crate) fn short(s: &str) -> String {
    let s = s.strip_prefix("sha256:").unwrap_or(s);
    s.chars().take(12).collect()
}
