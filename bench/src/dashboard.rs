//! Server time of the dashboard's pages with 10^6 runs stored, on SQLite and Postgres: the
//! runs page (first page with its counts by status, a filtered page, a deep page) and a
//! run's detail page, through the real router (no network), p50 and p99.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::body::Body;
use axum::http::Request;
use squid_mesh::actions::ActionRegistry;
use squid_mesh_dashboard::Dashboard;
use tower::ServiceExt as _;

use crate::{Backend, Figure, drop_schema, echo_action, percentile, pg_backend};

async fn page(app: &axum::Router, path: &str) -> Result<String> {
    let r = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty())?)
        .await?;
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 16 << 20).await?;
    if !status.is_success() {
        bail!("{path}: {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn timed(app: &axum::Router, path: &str, reps: usize) -> Result<Vec<Duration>> {
    page(app, path).await?;
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        page(app, path).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

pub(crate) async fn dashboard(smoke: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let dir = tempfile::tempdir()?;
    let registry = ActionRegistry::new();
    registry.register(echo_action()?)?;
    let size: u64 = if smoke { 2_000 } else { 1_000_000 };
    let reps = if smoke { 5 } else { 200 };
    let mut backends = vec![Backend::Sqlite(dir.path().join("dashboard.db"))];
    if let Some(Backend::Postgres { url, schema }) = pg_backend().await {
        backends.push(Backend::Postgres {
            url,
            schema: format!("{schema}_dash"),
        });
    }
    for backend in &backends {
        let engine = backend.engine(&registry, dir.path()).await?;
        let (target, hash) = crate::read::real_runs(&engine).await?;
        let t = Instant::now();
        crate::read::seed(backend, 1, size, &hash, engine.now().0).await?;
        eprintln!(
            "{}: seeded {size} runs in {:.1} s",
            backend.name(),
            t.elapsed().as_secs_f64()
        );
        let app = Dashboard::new(engine.clone()).router();
        // The 20th page of the unfiltered list, by its token.
        let mut deep = "/runs".to_owned();
        for _ in 0..20 {
            let body = page(&app, &deep).await?;
            let Some(at) = body.find("id=\"next-page\"") else {
                break;
            };
            let href = body[..at].rsplit("href=\"").next().unwrap_or_default();
            deep = href[..href.find('"').unwrap_or(href.len())].replace("&amp;", "&");
        }
        let pages = [
            ("runs page (50, counts)", "/runs".to_owned()),
            ("runs page status=failed", "/runs?status=failed".to_owned()),
            (
                "runs page workflow+status",
                "/runs?workflow=wf_3&status=completed".to_owned(),
            ),
            ("runs page 20 by token", deep),
            ("run detail page", format!("/runs/{target}")),
        ];
        let name = backend.name();
        for (what, path) in pages {
            let lat = timed(&app, &path, reps).await?;
            figures.push(Figure {
                name: format!("{name} dashboard {what} p50, {size} runs"),
                value: percentile(&lat, 0.5) / 1e3,
                unit: "ms",
                target: None,
            });
            figures.push(Figure {
                name: format!("{name} dashboard {what} p99, {size} runs"),
                value: percentile(&lat, 0.99) / 1e3,
                unit: "ms",
                target: Some("< 50".into()),
            });
        }
        engine.close().await;
    }
    for backend in &backends {
        drop_schema(backend).await;
    }
    Ok(figures)
}
