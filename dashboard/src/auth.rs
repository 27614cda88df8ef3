//! Who is looking: principals, the token table, sign-in cookies and CSRF tokens.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::State as AxState;
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, extract::FromRequestParts};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use squid_mesh::inspect::Scope;

use crate::error::PageError;
use crate::view::{self, Chrome};
use crate::{Shared, State};

/// The cookie that carries a signed-in viewer's token.
pub(crate) const COOKIE_NAME: &str = "squid_mesh_token";

/// An authenticated viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Recorded as the actor of the commands this viewer issues.
    pub actor: String,
    /// What the viewer may see.
    pub scope: Scope,
    /// Whether the viewer may approve, reject, resume, cancel, replay, register and start.
    pub can_act: bool,
    /// What the viewer's CSRF token is bound to: something unique to the credential or
    /// session (the token table uses a hash of the token). Never shown.
    pub session: String,
}

/// Decides who a request comes from. The host implements it over its own sessions or
/// headers; [`TokenTable`] is the built-in one.
pub trait Authorizer: Send + Sync + 'static {
    /// The viewer of a request, or `None` when it carries no valid credential.
    fn authorize(&self, request: &Parts) -> Option<Principal>;

    /// The viewer a token typed on the sign-in page stands for. The default refuses every
    /// token (the host signs viewers in itself).
    fn sign_in(&self, token: &str) -> Option<Principal> {
        let _ = token;
        None
    }
}

#[derive(Debug, Clone)]
struct Grant {
    actor: String,
    scope: Scope,
    can_act: bool,
}

/// Tokens, each standing for an actor with a scope and a permission to act. Viewers send a
/// token as `Authorization: Bearer <token>` or sign in with it (an HTTP-only cookie). Only
/// SHA-256 hashes of the tokens are kept in memory.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    grants: HashMap<[u8; 32], Grant>,
}

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("reading the token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("the token file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An entry is invalid.
    #[error("token entry {index} of {path}: {message}")]
    Entry {
        /// The file.
        path: String,
        /// The entry, from 1.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

impl TokenFileError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "token_file_unreadable",
            Self::Parse { .. } => "invalid_token_file",
            Self::Entry { .. } => "invalid_token",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    actor: String,
    scope: String,
    #[serde(default)]
    can_act: bool,
}

/// Why a token is refused, if it is.
fn token_problem(token: &str) -> Option<String> {
    if token.len() < 16 {
        return Some("a token must be at least 16 characters long".into());
    }
    if token.len() > 512 {
        return Some("a token must be at most 512 characters long".into());
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return Some("a token may only hold letters, digits and - . _ ~ + / =".into());
    }
    None
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token.
    ///
    /// # Panics
    ///
    /// When the token is shorter than 16 characters or holds characters other than
    /// letters, digits and `- . _ ~ + / =` (token files get an error instead).
    #[must_use]
    pub fn token(mut self, token: &str, actor: &str, scope: Scope, can_act: bool) -> Self {
        if let Some(problem) = token_problem(token) {
            panic!("invalid dashboard token: {problem}");
        }
        self.grants.insert(
            hash(token),
            Grant {
                actor: actor.to_owned(),
                scope,
                can_act,
            },
        );
        self
    }

    /// Reads a TOML file of `[[tokens]]` entries with `token`, `actor`, `scope`
    /// (`external`, `operator` or `auditor`) and `can_act` (default false).
    ///
    /// # Errors
    ///
    /// [`TokenFileError`] naming the file and the entry.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    fn from_toml(text: &str, path: &str) -> Result<Self, TokenFileError> {
        let file: TokenFile = toml::from_str(text).map_err(|e| TokenFileError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let mut table = Self::new();
        for (i, e) in file.tokens.into_iter().enumerate() {
            let entry = |message: String| TokenFileError::Entry {
                path: path.to_owned(),
                index: i + 1,
                message,
            };
            if let Some(problem) = token_problem(&e.token) {
                return Err(entry(problem));
            }
            if e.actor.trim().is_empty() {
                return Err(entry("the actor must not be empty".into()));
            }
            let scope: Scope = e.scope.parse().map_err(|err| entry(format!("{err}")))?;
            let grant = Grant {
                actor: e.actor,
                scope,
                can_act: e.can_act,
            };
            if table.grants.insert(hash(&e.token), grant).is_some() {
                return Err(entry("the same token is listed twice".into()));
            }
        }
        if table.is_empty() {
            return Err(TokenFileError::Parse {
                path: path.to_owned(),
                message: "it lists no token: add [[tokens]] entries".into(),
            });
        }
        Ok(table)
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether the table holds no token.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    fn principal(&self, token: &str) -> Option<Principal> {
        let h = hash(token);
        self.grants.get(&h).map(|g| Principal {
            actor: g.actor.clone(),
            scope: g.scope,
            can_act: g.can_act,
            session: hex::encode(h),
        })
    }
}

impl Authorizer for TokenTable {
    fn authorize(&self, request: &Parts) -> Option<Principal> {
        if let Some(bearer) = request
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return self.principal(bearer.trim());
        }
        cookie(&request.headers, COOKIE_NAME).and_then(|t| self.principal(&t))
    }

    fn sign_in(&self, token: &str) -> Option<Principal> {
        self.principal(token.trim())
    }
}

/// The value of cookie `name`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A fresh key for CSRF tokens (per process: forms rendered before a restart are refused
/// after it, with a page that says to reload).
pub(crate) fn new_key() -> [u8; 32] {
    rand::random()
}

fn mac(key: &[u8; 32], session: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    m.update(b"squid-mesh-dashboard-csrf\0");
    m.update(session.as_bytes());
    m
}

/// The CSRF token of a session.
pub(crate) fn csrf_token(key: &[u8; 32], session: &str) -> String {
    hex::encode(mac(key, session).finalize().into_bytes())
}

/// Whether `token` is the CSRF token of `session` (constant time).
pub(crate) fn csrf_ok(key: &[u8; 32], session: &str, token: &str) -> bool {
    match hex::decode(token.trim()) {
        Ok(bytes) => mac(key, session).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// The viewer of a request, resolved from the authorizer and the anonymous scope.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub(crate) principal: Option<Principal>,
    pub(crate) scope: Scope,
    /// Whether an authorizer is configured (sign-in is possible).
    pub(crate) can_sign_in: bool,
    /// The CSRF token for this viewer's forms (signed-in viewers who may act).
    pub(crate) csrf: Option<String>,
}

impl Viewer {
    pub(crate) fn can_act(&self) -> bool {
        self.principal.as_ref().is_some_and(|p| p.can_act)
    }

    pub(crate) fn actor(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.actor.as_str())
    }

    /// Checks that the viewer may act, that the request comes from the dashboard's own
    /// pages and that `token` is their CSRF token.
    pub(crate) fn check_act(
        &self,
        state: &State,
        headers: &HeaderMap,
        token: Option<&str>,
    ) -> Result<&Principal, PageError> {
        let Some(p) = &self.principal else {
            return Err(sign_in_required());
        };
        check_same_origin(headers)?;
        if !p.can_act {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "read_only",
                format!("{} may look but not act: the token is read-only.", p.actor),
            ));
        }
        match token {
            Some(t) if csrf_ok(&state.csrf_key, &p.session, t) => Ok(p),
            Some(_) => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "csrf_invalid",
                "The form's CSRF token is not valid (forged, or from before the dashboard restarted). Reload the page and try again.",
            )),
            None => Err(PageError::new(
                StatusCode::FORBIDDEN,
                "csrf_missing",
                "The request carries no CSRF token (the form's csrf field, or the X-CSRF-Token header of the editor's calls). Reload the page and try again.",
            )),
        }
    }
}

impl FromRequestParts<Shared> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let principal = state.authorizer.as_ref().and_then(|a| a.authorize(parts));
        // A bearer token nobody accepts is an error, not an anonymous visit: a program with a
        // wrong token must not quietly get the anonymous view.
        if principal.is_none()
            && parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Bearer "))
        {
            let e = PageError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "The bearer token is not valid here.",
            );
            return Err(if parts.uri.path().contains("/editor/api/") {
                e.json()
            } else {
                e.page(&Chrome::bare(state))
            });
        }
        let scope = match (&principal, state.anonymous) {
            (Some(p), _) => p.scope,
            (None, Some(s)) => s,
            (None, None) if parts.method == Method::GET => {
                return Err(Redirect::to(&format!("{}/login", state.base)).into_response());
            }
            (None, None) => {
                let e = sign_in_required();
                return Err(if parts.uri.path().contains("/editor/api/") {
                    e.json()
                } else {
                    e.page(&Chrome::bare(state))
                });
            }
        };
        let csrf = principal
            .as_ref()
            .filter(|p| p.can_act)
            .map(|p| csrf_token(&state.csrf_key, &p.session));
        Ok(Self {
            principal,
            scope,
            can_sign_in: state.authorizer.is_some(),
            csrf,
        })
    }
}

fn sign_in_required() -> PageError {
    PageError::new(
        StatusCode::UNAUTHORIZED,
        "sign_in_required",
        "Sign in to do this (with a token that may act, to change anything).",
    )
}

/// Refuses a POST another site made the browser send: `Sec-Fetch-Site: cross-site`, or an
/// `Origin` whose host is not the `Host` the request went to. (Browsers send at least one of
/// them on POSTs; programs that send neither are not browsers acting for someone else.)
pub(crate) fn check_same_origin(headers: &HeaderMap) -> Result<(), PageError> {
    let refused = || {
        PageError::new(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "This request came from another site. Use the dashboard's own pages.",
        )
    };
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site")
    {
        return Err(refused());
    }
    if let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin == "null" || origin_host != host {
            return Err(refused());
        }
    }
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) async fn login_page(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    let viewer = state.authorizer.as_ref().and_then(|a| {
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        parts.headers = headers;
        a.authorize(&parts)
    });
    view::login(&Chrome::bare(&state), viewer.as_ref(), None, StatusCode::OK)
}

pub(crate) async fn login(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Err(e) = check_same_origin(&headers) {
        return e.page(&Chrome::bare(&state));
    }
    let Some(authorizer) = &state.authorizer else {
        return PageError::new(
            StatusCode::NOT_FOUND,
            "sign_in_unavailable",
            "This dashboard has no tokens: it is read-only and nobody signs in.",
        )
        .page(&Chrome::bare(&state));
    };
    let token = form.map(|f| f.0.token).unwrap_or_default();
    match authorizer
        .sign_in(&token)
        .filter(|_| token_problem(token.trim()).is_none())
    {
        Some(p) => {
            let path = if state.base.is_empty() {
                "/"
            } else {
                &state.base
            };
            let secure = if state.secure_cookies { "; Secure" } else { "" };
            let cookie = format!(
                "{COOKIE_NAME}={}; Path={path}; HttpOnly; SameSite=Strict{secure}",
                token.trim()
            );
            tracing::info!(actor = %p.actor, "dashboard sign-in");
            let mut r = Redirect::to(&format!("{}/runs", state.base)).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        None => view::login(
            &Chrome::bare(&state),
            None,
            Some("That token is not valid."),
            StatusCode::UNAUTHORIZED,
        ),
    }
}

pub(crate) async fn logout(AxState(state): AxState<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = check_same_origin(&headers) {
        return e.page(&Chrome::bare(&state));
    }
    let path = if state.base.is_empty() {
        "/"
    } else {
        &state.base
    };
    let cookie = format!("{COOKIE_NAME}=; Path={path}; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut r = Redirect::to(&format!("{}/runs", state.base)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_checked_entry_by_entry() {
        let ok = r#"
            [[tokens]]
            token = "0123456789abcdef-ops"
            actor = "ana"
            scope = "operator"
            can_act = true
        "#;
        let t = TokenTable::from_toml(ok, "t.toml").unwrap();
        let p = t.sign_in("0123456789abcdef-ops").unwrap();
        assert_eq!(
            (p.actor.as_str(), p.scope, p.can_act),
            ("ana", Scope::Operator, true)
        );
        assert!(t.sign_in("0123456789abcdef-opz").is_none());

        let short = "[[tokens]]\ntoken = \"short\"\nactor = \"a\"\nscope = \"auditor\"\n";
        let e = TokenTable::from_toml(short, "t.toml").unwrap_err();
        assert_eq!(e.code(), "invalid_token");
        assert!(e.to_string().contains("entry 1"), "{e}");
        let scope = "[[tokens]]\ntoken = \"0123456789abcdef\"\nactor = \"a\"\nscope = \"root\"\n";
        assert!(
            TokenTable::from_toml(scope, "t.toml")
                .unwrap_err()
                .to_string()
                .contains("root")
        );
        assert_eq!(
            TokenTable::from_toml("", "t.toml").unwrap_err().code(),
            "invalid_token_file",
            "an empty file would lock everyone out"
        );
        let extra = "[[tokens]]\ntoken = \"0123456789abcdef\"\nactor = \"a\"\nscope = \"auditor\"\nadmin = true\n";
        assert_eq!(
            TokenTable::from_toml(extra, "t.toml").unwrap_err().code(),
            "invalid_token_file"
        );
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_session_and_key() {
        let key = new_key();
        let t = csrf_token(&key, "s1");
        assert!(csrf_ok(&key, "s1", &t));
        assert!(!csrf_ok(&key, "s2", &t));
        assert!(!csrf_ok(&new_key(), "s1", &t));
        assert!(!csrf_ok(&key, "s1", "zz"));
        assert!(!csrf_ok(&key, "s1", ""));
    }
}
