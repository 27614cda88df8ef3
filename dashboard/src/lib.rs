//! The Squid Mesh dashboard and visual workflow editor: server-rendered pages over an
//! [`Engine`], as an axum [`Router`] a host mounts, or served by `squid-mesh dashboard`.
//!
//! - Runs: filters in the query string, keyset pages, counts by status, deadline badges,
//!   live refresh.
//! - Run detail: the explanation, the graph as SVG, a timeline, attempts, data narrowed to
//!   the viewer's [`Scope`].
//! - Actions and schedules.
//! - The editor: a canvas over the library's editor API (validate, preview, diff), which
//!   registers workflows in the database's workflow store and starts runs.
//! - Control actions (approve, reject, resume, cancel, replay) for viewers whose
//!   [`Principal`] may act, behind CSRF tokens. Without an [`Authorizer`] the dashboard is
//!   read-only.
//!
//! ```no_run
//! # async fn host() -> Result<(), Box<dyn std::error::Error>> {
//! use squid_mesh::Engine;
//! use squid_mesh::inspect::Scope;
//! use squid_mesh_dashboard::{Dashboard, TokenTable};
//!
//! let engine = Engine::builder().sqlite("app.db").build().await?;
//! let tokens = TokenTable::new().token("s3cret-ops-token", "ana", Scope::Operator, true);
//! // Signed-in viewers only: nobody sees anything before signing in.
//! let app = axum::Router::new().nest("/ops", Dashboard::new(engine).tokens(tokens).base_path("/ops").router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod assets;
mod auth;
mod editor;
mod error;
mod pages;
mod svg;
mod view;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use squid_mesh::Engine;
use squid_mesh::inspect::Scope;

pub use auth::{Authorizer, Principal, TokenFileError, TokenTable};
pub use svg::run_graph_svg;

/// The dashboard's settings; [`Dashboard::router`] builds the routes.
pub struct Dashboard {
    engine: Engine,
    authorizer: Option<Arc<dyn Authorizer>>,
    anonymous: Option<Scope>,
    anonymous_chosen: bool,
    base: String,
    refresh_secs: u32,
    secure_cookies: bool,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("authorizer", &self.authorizer.is_some())
            .field("anonymous", &self.anonymous)
            .field("base", &self.base)
            .field("refresh_secs", &self.refresh_secs)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A read-only dashboard over `engine`; viewers see the `operator` scope. Once tokens or
    /// an authorizer are given, viewers who have not signed in see nothing (they are sent to
    /// the sign-in page) unless [`Dashboard::anonymous_scope`] says otherwise.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            authorizer: None,
            anonymous: Some(Scope::Operator),
            anonymous_chosen: false,
            base: String::new(),
            refresh_secs: 5,
            secure_cookies: false,
        }
    }

    /// Viewers sign in with these tokens (a `Bearer` header or the sign-in page); each
    /// token gives an actor, a scope and whether it may act.
    #[must_use]
    pub fn tokens(self, tokens: TokenTable) -> Self {
        self.authorizer(tokens)
    }

    /// The host decides who the viewer is (its own sessions or headers).
    #[must_use]
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        if !self.anonymous_chosen {
            self.anonymous = None;
        }
        self
    }

    /// What viewers who are not signed in may see; `None` sends them to the sign-in page.
    #[must_use]
    pub fn anonymous_scope(mut self, scope: Option<Scope>) -> Self {
        self.anonymous = scope;
        self.anonymous_chosen = true;
        self
    }

    /// The path the router is nested under (`/ops`), for the links, redirects and cookie
    /// paths it writes.
    #[must_use]
    pub fn base_path(mut self, base: &str) -> Self {
        let trimmed = base.trim().trim_matches('/');
        self.base = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        self
    }

    /// Marks the sign-in cookie `Secure` (sent over HTTPS only): set it when a TLS proxy
    /// serves the dashboard.
    #[must_use]
    pub fn secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// Seconds between live refreshes of the runs list (0: off).
    #[must_use]
    pub fn refresh_secs(mut self, secs: u32) -> Self {
        self.refresh_secs = secs;
        self
    }

    /// The routes, to serve or to nest in the host's router.
    pub fn router(self) -> Router {
        let state = Arc::new(State {
            engine: self.engine,
            authorizer: self.authorizer,
            anonymous: self.anonymous,
            base: self.base,
            refresh_secs: self.refresh_secs,
            secure_cookies: self.secure_cookies,
            csrf_key: auth::new_key(),
        });
        Router::new()
            .route("/", get(pages::home))
            .route("/runs", get(pages::runs))
            .route("/runs/{id}", get(pages::run))
            .route("/runs/{id}/graph.svg", get(pages::run_svg))
            .route("/runs/{id}/{command}", post(pages::command))
            .route("/actions", get(pages::actions))
            .route("/actions/{key}", get(pages::action))
            .route("/schedules", get(pages::schedules))
            .route("/editor", get(editor::page))
            .route("/editor/api/{op}", post(editor::api))
            .route("/login", get(auth::login_page).post(auth::login))
            .route("/logout", post(auth::logout))
            .route("/assets/{file}", get(assets::serve))
            .route("/health", get(|| async { "ok" }))
            .fallback(pages::not_found)
            .with_state(state)
    }
}

/// What every handler shares.
pub(crate) struct State {
    pub(crate) engine: Engine,
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
    pub(crate) anonymous: Option<Scope>,
    pub(crate) base: String,
    pub(crate) refresh_secs: u32,
    pub(crate) secure_cookies: bool,
    pub(crate) csrf_key: [u8; 32],
}

pub(crate) type Shared = Arc<State>;
