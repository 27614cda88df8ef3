//! Every route of the dashboard through the real router, on a real SQLite file and a real
//! Postgres schema, over runs a real engine made (WebAssembly charge from the catalog).

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use squid_mesh::clock::ManualClock;
use squid_mesh::engine::ScheduleCommand;
use squid_mesh::inspect::{InspectOptions, Scope};
use squid_mesh::spec::{Step, Trigger, WorkflowSpec};
use squid_mesh::{Engine, RunStatus};
use squid_mesh_dashboard::{Dashboard, TokenTable};
use support::*;

const AUDITOR: &str = "auditor-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const EXTERNAL: &str = "external-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789ab";

fn tokens() -> TokenTable {
    TokenTable::new()
        .token(AUDITOR, "ana", Scope::Auditor, true)
        .token(OPERATOR, "oscar", Scope::Operator, true)
        .token(EXTERNAL, "eve", Scope::External, false)
        .token(VIEWER, "vic", Scope::Operator, false)
}

async fn setup(db: &Db) -> (Engine, ManualClock, Seeded) {
    let clock = ManualClock::new(T0);
    let engine = db.engine(Some(&clock)).await;
    let seeded = seed(&engine, &clock).await;
    (engine, clock, seeded)
}

async fn every_read_page_renders_and_filters(db: Db) {
    let (engine, clock, s) = setup(&db).await;
    engine
        .schedules()
        .apply(
            &WorkflowSpec::builder("nightly")
                .trigger(Trigger::cron("tick", "0 3 * * *", "Europe/Paris"))
                .step(Step::log(
                    "hello",
                    squid_mesh::actions::LogLevel::Info,
                    "hi",
                ))
                .build(),
            None,
            ScheduleCommand::by("ana"),
        )
        .await
        .expect("applies");
    let app = Dashboard::new(engine.clone()).router();

    let r = get(&app, "/", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/runs");

    let r = get(&app, "/runs", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for id in [s.shipped, s.waiting, s.failed] {
        assert!(r.body.contains(&id.to_string()), "{id} listed");
    }
    assert!(r.body.contains("id=\"read-only\""), "says it is read-only");
    assert!(
        r.body
            .contains(r#"data-status="completed"><span class="n">1</span>"#),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(r#"data-status="paused"><span class="n">1</span>"#)
    );
    assert!(
        r.body
            .contains(r#"data-status="failed"><span class="n">1</span>"#)
    );
    assert!(r.body.contains("deadline-due-soon") || r.body.contains("data-live"));

    // Filters live in the query string.
    let r = get(&app, "/runs?status=paused", None).await;
    assert!(r.body.contains(&s.waiting.to_string()));
    assert!(!r.body.contains(&s.shipped.to_string()));
    let r = get(&app, "/runs?status=completed&status=failed", None).await;
    assert!(r.body.contains(&s.shipped.to_string()) && r.body.contains(&s.failed.to_string()));
    assert!(!r.body.contains(&s.waiting.to_string()));
    let r = get(&app, "/runs?workflow=declined", None).await;
    assert!(r.body.contains(&s.failed.to_string()) && !r.body.contains(&s.waiting.to_string()));
    let r = get(&app, "/runs?queue=elsewhere", None).await;
    assert!(r.body.contains("No run matches these filters."));
    let prefix = &s.waiting.to_string()[..13];
    let r = get(&app, &format!("/runs?q={prefix}"), None).await;
    assert!(r.body.contains(&s.waiting.to_string()) && !r.body.contains(&s.failed.to_string()));
    let r = get(
        &app,
        "/runs?from=2026-11-25T12:00&before=2026-11-25T12:00:01",
        None,
    )
    .await;
    assert!(r.body.contains(&s.shipped.to_string()), "{}", r.body);
    assert!(!r.body.contains(&s.waiting.to_string()));

    // Keyset pages: newest first, the next link carries the filters.
    let r = get(&app, "/runs?limit=2", None).await;
    assert!(r.body.contains(&s.failed.to_string()) && r.body.contains(&s.waiting.to_string()));
    assert!(!r.body.contains(&s.shipped.to_string()));
    let next = r
        .body
        .split("href=\"")
        .find(|h| h.contains("after="))
        .expect("next link");
    let next = next[..next.find('"').unwrap()].replace("&amp;", "&");
    assert!(next.contains("limit=2"), "{next}");
    let r = get(&app, &next, None).await;
    assert!(r.body.contains(&s.shipped.to_string()) && !r.body.contains(&s.failed.to_string()));
    assert!(r.body.contains("id=\"first-page\""));

    // The live fragment is the list alone.
    let r = get(&app, "/runs?status=paused&fragment=1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("<html") && r.body.contains(&s.waiting.to_string()));

    // Deadline badges follow the clock.
    clock.advance(Duration::from_secs(3_100));
    let r = get(&app, "/runs?status=paused", None).await;
    assert!(r.body.contains("deadline-due-soon"), "{}", r.body);
    clock.advance(Duration::from_secs(600));
    assert!(
        get(&app, "/runs", None)
            .await
            .body
            .contains("deadline-overdue")
    );
    clock.advance(Duration::from_secs(7_200));
    assert!(
        get(&app, "/runs", None)
            .await
            .body
            .contains("deadline-escalated")
    );

    // A run: explanation, graph, attempts, timeline.
    let r = get(&app, &format!("/runs/{}", s.waiting), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body
            .contains(r#"data-reason="manual_intervention_required""#)
    );
    assert!(
        r.body
            .contains(r#"data-node-id="review" data-status="paused""#),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(r#"data-node-id="charge" data-status="completed""#)
    );
    assert!(
        r.body
            .contains(r#"data-node-id="ship" data-status="waiting""#)
    );
    assert!(
        r.body
            .contains(r#"data-edge-id="received:ok:charge" data-status="selected""#),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(r#"data-edge-id="review:ok:ship" data-status="pending""#)
    );
    assert!(r.body.contains("id=\"timeline\"") && r.body.contains("id=\"attempts\""));
    assert!(r.body.contains("deadline-escalated"));
    assert!(
        !r.body.contains("id=\"controls\""),
        "no controls without a token"
    );
    let r = get(&app, &format!("/runs/{}", s.shipped), None).await;
    assert!(
        r.body
            .contains(r#"data-edge-id="review:ok:ship" data-status="selected""#)
    );
    assert!(
        r.body
            .contains(r#"data-edge-id="review:error:decline" data-status="skipped""#)
    );
    assert!(
        r.body
            .contains(r#"data-node-id="decline" data-status="skipped""#)
    );
    assert!(
        r.body.contains("command approve"),
        "the timeline lists the approval"
    );

    let r = get(&app, &format!("/runs/{}/graph.svg", s.failed), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "image/svg+xml");
    assert!(
        r.body.starts_with("<svg")
            && r.body
                .contains(r#"data-node-id="charge" data-status="failed""#)
    );

    // Actions and schedules.
    let r = get(&app, "/actions", None).await;
    assert!(
        r.body
            .contains(r#"data-key="pay.charge" data-state="active""#),
        "{}",
        r.body
    );
    let r = get(&app, "/actions/pay.charge", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("order_id"), "schemas");
    assert!(
        !r.body.contains("first release") && !r.body.contains("by ana"),
        "the history's comments and actors are the auditor's"
    );
    let auditors = Dashboard::new(engine.clone())
        .anonymous_scope(Some(Scope::Auditor))
        .router();
    let r = get(&auditors, "/actions/pay.charge", None).await;
    assert!(r.body.contains("first release") && r.body.contains("by ana"));
    let r = get(&app, "/schedules", None).await;
    assert!(r.body.contains(r#"data-workflow="nightly""#) && r.body.contains("Europe/Paris"));
    assert!(r.body.contains("0 3 * * *"));

    assert_eq!(get(&app, "/health", None).await.body, "ok");
    let r = get(&app, "/assets/style.css", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        get(&app, "/assets/nope.js", None).await.status,
        StatusCode::NOT_FOUND
    );
    engine.close().await;
}

async fn bad_input_gets_a_status_and_a_readable_page(db: Db) {
    let (engine, _clock, s) = setup(&db).await;
    let app = Dashboard::new(engine.clone())
        .tokens(tokens())
        .anonymous_scope(Some(Scope::Operator))
        .router();
    let cases: &[(&str, StatusCode, &str)] = &[
        ("/runs/not-a-run", StatusCode::BAD_REQUEST, "invalid_run_id"),
        (
            "/runs/0b5f1a2e-8a61-4d7b-9c55-3f0e7f0a9d11",
            StatusCode::NOT_FOUND,
            "run_not_found",
        ),
        (
            "/runs/0b5f1a2e-8a61-4d7b-9c55-3f0e7f0a9d11/graph.svg",
            StatusCode::NOT_FOUND,
            "run_not_found",
        ),
        (
            "/runs?status=sleeping",
            StatusCode::BAD_REQUEST,
            "invalid_status",
        ),
        ("/runs?limit=abc", StatusCode::BAD_REQUEST, "invalid_limit"),
        (
            "/runs?limit=100000",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/runs?from=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_time",
        ),
        (
            "/runs?from=2026-12-02T00:00&before=2026-12-01T00:00",
            StatusCode::BAD_REQUEST,
            "invalid_filter",
        ),
        (
            "/runs?after=garbage",
            StatusCode::BAD_REQUEST,
            "invalid_page",
        ),
        (
            "/runs?sort=desc",
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
        ),
        (
            "/runs?status=%ZZ",
            StatusCode::BAD_REQUEST,
            "invalid_status",
        ),
        (
            "/actions/Not%20A%20Key",
            StatusCode::BAD_REQUEST,
            "invalid_action_key",
        ),
        (
            "/actions/nobody.here",
            StatusCode::NOT_FOUND,
            "unknown_action",
        ),
        ("/nowhere", StatusCode::NOT_FOUND, "not_found"),
    ];
    for (path, status, code) in cases {
        let r = get(&app, path, None).await;
        assert_eq!(r.status, *status, "{path}: {}", r.body);
        assert!(r.body.contains("<html"), "{path} is a page");
        assert!(r.body.contains(code), "{path} names {code}: {}", r.body);
    }
    let r = get(&app, "/runs", Some("wrong-token-0123456789")).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a wrong token is not an anonymous visit"
    );
    assert!(r.body.contains("invalid_credentials"));
    let long = "x".repeat(300);
    let r = get(&app, &format!("/runs?q={long}"), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("longer than 200 bytes"), "{}", r.body);
    let r = get(&app, &format!("/runs?q={}", "y".repeat(5000)), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // A malformed form, an unknown command.
    let r = get(&app, &format!("/runs/{}", s.waiting), Some(AUDITOR)).await;
    let csrf = r.csrf().expect("a token that may act gets a CSRF token");
    let r = post(
        &app,
        &format!("/runs/{}/launch", s.waiting),
        &[("csrf", &csrf)],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(
        &app,
        &format!("/runs/{}/approve", "nope"),
        &[("csrf", &csrf)],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        &app,
        &format!("/runs/{}/approve", s.shipped),
        &[("csrf", &csrf)],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a completed run has no gate: {}",
        r.body
    );
    let path = format!("/runs/{}/approve", s.waiting);
    let r = post(
        &app,
        &path,
        &[("csrf", &csrf), ("nonce", "x")],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("invalid_nonce"));
    let r = post(
        &app,
        &format!("/runs/{}/approve", s.waiting),
        &[("csrf", &csrf), ("comment", &"c".repeat(3000))],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        engine.snapshot(s.waiting).await.unwrap().status,
        RunStatus::Paused,
        "nothing changed"
    );
    engine.close().await;
}

async fn commands_need_a_token_that_may_act_and_its_csrf_token(db: Db) {
    let (engine, _clock, s) = setup(&db).await;
    let path = format!("/runs/{}/approve", s.waiting);

    // Read-only: no tokens at all.
    let ro = Dashboard::new(engine.clone()).router();
    let r = post(&ro, &path, &[("csrf", "00")], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("sign_in_required"));

    let app = Dashboard::new(engine.clone()).tokens(tokens()).router();
    let r = post(&app, &path, &[], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = get(&app, &format!("/runs/{}", s.waiting), Some(VIEWER)).await;
    assert!(r.csrf().is_none(), "read-only tokens get no CSRF token");
    assert!(r.body.contains("may look but not act"));
    let r = post(&app, &path, &[("csrf", "00")], Some(VIEWER)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("read_only"));
    let r = post(&app, &path, &[], Some(OPERATOR)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("csrf_missing"));
    let r = post(&app, &path, &[("csrf", &"ab".repeat(32))], Some(OPERATOR)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("csrf_invalid"));
    // Another viewer's CSRF token is not this viewer's.
    let auditor_csrf = get(&app, "/runs", Some(AUDITOR)).await.csrf().unwrap();
    let r = post(&app, &path, &[("csrf", &auditor_csrf)], Some(OPERATOR)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Nor is one from another dashboard process.
    let other = Dashboard::new(engine.clone()).tokens(tokens()).router();
    let foreign = get(&other, "/runs", Some(OPERATOR)).await.csrf().unwrap();
    assert_eq!(
        post(&app, &path, &[("csrf", &foreign)], Some(OPERATOR))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        engine.snapshot(s.waiting).await.unwrap().status,
        RunStatus::Paused,
        "nothing changed"
    );

    // A POST another site made the browser send is refused, CSRF token or not.
    let page = get(&app, &format!("/runs/{}", s.waiting), Some(OPERATOR)).await;
    let forged = axum::http::Request::post(path.clone())
        .header("authorization", format!("Bearer {OPERATOR}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "dash.example")
        .header("origin", "https://evil.example")
        .body(axum::body::Body::from(format!(
            "csrf={}",
            page.csrf().unwrap()
        )))
        .unwrap();
    let r = send(&app, forged).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("cross_site_request"));
    assert_eq!(
        engine.snapshot(s.waiting).await.unwrap().status,
        RunStatus::Paused
    );

    // The operator approves; the journal records the authenticated actor. The form's nonce
    // makes a second submission of the same form the same command.
    let page = get(&app, &format!("/runs/{}", s.waiting), Some(OPERATOR)).await;
    assert!(
        page.body.contains("id=\"control-approve\"") && page.body.contains("id=\"control-reject\"")
    );
    assert!(
        page.body.contains("id=\"control-cancel\"") && !page.body.contains("id=\"control-replay\"")
    );
    let csrf = page.csrf().unwrap();
    let at = page.body.find("name=\"nonce\" value=\"").unwrap() + "name=\"nonce\" value=\"".len();
    let nonce = page.body[at..at + 32].to_owned();
    let form = [
        ("csrf", csrf.as_str()),
        ("nonce", nonce.as_str()),
        ("comment", "ship it"),
    ];
    let r = post(&app, &path, &form, Some(OPERATOR)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let again = post(&app, &path, &form, Some(OPERATOR)).await;
    assert_eq!(
        again.status,
        StatusCode::SEE_OTHER,
        "a repeated form is not an error: {}",
        again.body
    );
    assert_eq!(r.location(), format!("/runs/{}", s.waiting));
    let insp = engine
        .inspect_run(s.waiting, InspectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        insp.commands
            .iter()
            .filter(|c| c.command.as_str() == "approve")
            .count(),
        1
    );
    let approve = insp.commands.last().unwrap();
    assert_eq!(approve.actor, Some(serde_json::json!("oscar")));
    assert_eq!(approve.comment.as_deref(), Some("ship it"));
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(s.waiting).await.unwrap().status,
        RunStatus::Completed
    );

    // Replay of a finished run, then cancel of the new one; both by the actor.
    let page = get(&app, &format!("/runs/{}", s.waiting), Some(AUDITOR)).await;
    assert!(page.body.contains("id=\"control-replay\""));
    let csrf = page.csrf().unwrap();
    let r = post(
        &app,
        &format!("/runs/{}/replay", s.waiting),
        &[("csrf", &csrf)],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let replay: squid_mesh::RunId = r.location().trim_start_matches("/runs/").parse().unwrap();
    assert_ne!(replay, s.waiting);
    let r = post(
        &app,
        &format!("/runs/{replay}/cancel"),
        &[("csrf", &csrf), ("comment", "not needed")],
        Some(AUDITOR),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let insp = engine
        .inspect_run(replay, InspectOptions::default())
        .await
        .unwrap();
    assert_eq!(insp.status, RunStatus::Cancelled);
    let cancel = insp.commands.last().unwrap();
    assert_eq!(
        (cancel.actor.clone(), cancel.comment.as_deref()),
        (Some(serde_json::json!("ana")), Some("not needed"))
    );
    engine.close().await;
}

async fn pages_show_only_what_the_scope_may_see(db: Db) {
    let (engine, _clock, s) = setup(&db).await;
    let app = Dashboard::new(engine.clone())
        .tokens(tokens())
        .anonymous_scope(None)
        .router();
    let pages = |id: squid_mesh::RunId| {
        [
            format!("/runs/{id}"),
            format!("/runs/{id}/graph.svg"),
            "/runs".into(),
        ]
    };
    for token in [EXTERNAL, OPERATOR, AUDITOR] {
        for id in [s.shipped, s.failed] {
            for p in pages(id) {
                let r = get(&app, &p, Some(token)).await;
                assert_eq!(r.status, StatusCode::OK, "{p}");
                assert!(!r.body.contains(API_KEY), "{p} as {token} shows a secret");
                let auditor = token == AUDITOR;
                assert_eq!(
                    r.body.contains(CARD),
                    auditor && p.ends_with(&id.to_string()) && id == s.shipped,
                    "{p} as {token}: the card"
                );
                assert_eq!(
                    r.body.contains(TICKET),
                    auditor && p.ends_with(&id.to_string()) && id == s.shipped,
                    "{p} as {token}: metadata"
                );
                if id == s.failed && p.ends_with(&id.to_string()) {
                    assert_eq!(
                        r.body.contains("o-details-SECRET"),
                        auditor,
                        "{p} as {token}: error details and input"
                    );
                    assert_eq!(
                        r.body.contains("card_declined"),
                        token != EXTERNAL,
                        "{p} as {token}: the error code"
                    );
                }
            }
        }
    }
    // Without a token and with no anonymous scope, pages send viewers to sign in.
    let r = get(&app, "/runs", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login");
    engine.close().await;
}

async fn signing_in_sets_a_cookie_and_signing_out_clears_it(db: Db) {
    let (engine, _clock, s) = setup(&db).await;
    let app = Dashboard::new(engine.clone())
        .tokens(tokens())
        .base_path("/ops")
        .router();
    let r = get(&app, "/login", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("action=\"/ops/login\""));
    let r = post(&app, "/login", &[("token", "wrong-token-0123456789")], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("login-failed"));
    let r = post(&app, "/login", &[("token", OPERATOR)], None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/ops/runs");
    let cookie = r.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/ops")
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let req = axum::http::Request::get("/runs")
        .header("cookie", &pair)
        .body(axum::body::Body::empty())
        .unwrap();
    let r = send(&app, req).await;
    assert!(r.body.contains("oscar · operator"), "{}", r.body);
    assert!(
        r.body.contains("href=\"/ops/runs/"),
        "links carry the base path"
    );
    assert!(r.csrf().is_some());
    let r = post(&app, "/logout", &[], None).await;
    assert!(
        r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // A host's own authorizer: here, a header its proxy sets.
    struct Proxy;
    impl squid_mesh_dashboard::Authorizer for Proxy {
        fn authorize(
            &self,
            request: &axum::http::request::Parts,
        ) -> Option<squid_mesh_dashboard::Principal> {
            let user = request.headers.get("x-proxy-user")?.to_str().ok()?;
            Some(squid_mesh_dashboard::Principal {
                actor: user.to_owned(),
                scope: Scope::Operator,
                can_act: user == "olga",
                session: format!("proxy:{user}"),
            })
        }
    }
    let hosted = Dashboard::new(engine.clone()).authorizer(Proxy).router();
    let as_user = |user: &str, path: &str| {
        axum::http::Request::get(path.to_owned())
            .header("x-proxy-user", user)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let page = send(&hosted, as_user("olga", &format!("/runs/{}", s.waiting))).await;
    assert!(page.body.contains("olga · operator") && page.body.contains("id=\"control-approve\""));
    let csrf = page.csrf().unwrap();
    let page = send(&hosted, as_user("pete", &format!("/runs/{}", s.waiting))).await;
    assert!(page.csrf().is_none() && page.body.contains("may look but not act"));
    let approve = axum::http::Request::post(format!("/runs/{}/approve", s.waiting))
        .header("x-proxy-user", "olga")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("csrf={csrf}")))
        .unwrap();
    assert_eq!(send(&hosted, approve).await.status, StatusCode::SEE_OTHER);
    let insp = engine
        .inspect_run(s.waiting, InspectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        insp.commands.last().unwrap().actor,
        Some(serde_json::json!("olga"))
    );

    let ro = Dashboard::new(engine.clone()).router();
    let r = post(&ro, "/login", &[("token", OPERATOR)], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("sign_in_unavailable"));
    engine.close().await;
}

async fn editor_call(
    app: &axum::Router,
    op: &str,
    body: serde_json::Value,
    token: Option<&str>,
    csrf: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut b = axum::http::Request::post(format!("/editor/api/{op}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(c) = csrf {
        b = b.header("x-csrf-token", c);
    }
    let r = send(
        app,
        b.body(axum::body::Body::from(body.to_string())).unwrap(),
    )
    .await;
    let v = serde_json::from_str(&r.body).unwrap_or(serde_json::Value::String(r.body));
    (r.status, v)
}

async fn the_editor_validates_registers_and_starts(db: Db) {
    use serde_json::json;
    let engine = db.engine(None).await;
    approve_charge(&engine).await;
    let app = Dashboard::new(engine.clone())
        .tokens(tokens())
        .anonymous_scope(Some(Scope::Operator))
        .router();
    let r = get(&app, "/editor", Some(AUDITOR)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("id=\"editor-boot\"") && r.body.contains("pay.charge"));
    let csrf = r.csrf().unwrap();
    assert_eq!(
        get(&app, "/editor?workflow=nothing", None).await.status,
        StatusCode::NOT_FOUND
    );

    let mut doc = json!({
        "name": "shop",
        "triggers": [{"name": "manual", "type": "manual", "payload": [
            {"name": "order_id", "type": "string"}, {"name": "amount_cents", "type": "integer"}]}],
        "steps": [
            {"name": "charge", "action": "pay.nothing", "input": ["order_id", "amount_cents"]},
            {"name": "done", "builtin": {"kind": "log", "message": "done"}}
        ],
        "editor": {"nodes": {"charge": {"position": {"x": 40, "y": 40}}}}
    });
    // Unknown action: a problem at the step's action, no registration.
    let (status, v) = editor_call(&app, "validate", json!({"document": doc}), None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["valid"], json!(false));
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["path"] == "/steps/0/action"),
        "{v}"
    );
    // Two entry steps and no route: the preview shows both as entries.
    doc["steps"][0]["action"] = json!("pay.charge");
    let (_, v) = editor_call(&app, "validate", json!({"document": doc}), None, None).await;
    assert_eq!(v["preview"]["nodes"].as_array().unwrap().len(), 2, "{v}");
    doc["transitions"] = json!([{"from": "charge", "on": "ok", "to": "done"}]);
    let (_, v) = editor_call(&app, "validate", json!({"document": doc}), None, None).await;
    assert_eq!(v["valid"], json!(true), "{v}");
    assert_eq!(v["diff"], json!(null));
    assert!(
        v["preview"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "charge:ok:done"),
        "{v}"
    );

    // Registering needs a token that may act and its CSRF token.
    let body = json!({"document": doc});
    assert_eq!(
        editor_call(&app, "register", body.clone(), None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, v) = editor_call(&app, "register", body.clone(), Some(VIEWER), Some(&csrf)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("read_only"))
    );
    let (status, v) = editor_call(&app, "register", body.clone(), Some(AUDITOR), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_missing"))
    );
    let (status, v) = editor_call(&app, "register", body.clone(), Some(AUDITOR), Some(&csrf)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].clone(), v["changed"].clone()),
        (json!(1), json!(true))
    );
    let (_, v) = editor_call(&app, "register", body.clone(), Some(AUDITOR), Some(&csrf)).await;
    assert_eq!(
        (v["version"].clone(), v["changed"].clone()),
        (json!(1), json!(false))
    );
    doc["editor"]["nodes"]["done"] = json!({"position": {"x": 260, "y": 40}});
    let (_, v) = editor_call(
        &app,
        "register",
        json!({"document": doc}),
        Some(AUDITOR),
        Some(&csrf),
    )
    .await;
    assert_eq!(
        v["version"],
        json!(2),
        "a moved node is a new version of the document"
    );
    let (_, v) = editor_call(&app, "validate", json!({"document": doc}), None, None).await;
    assert_eq!(v["registered_version"], json!(2));
    assert!(v["diff"].is_object(), "{v}");
    // An invalid document is refused whole.
    let mut broken = doc.clone();
    broken["transitions"] = json!([{"from": "charge", "on": "ok", "to": "nowhere"}]);
    let (status, v) = editor_call(
        &app,
        "register",
        json!({"document": broken}),
        Some(AUDITOR),
        Some(&csrf),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(!v["error"]["problems"].as_array().unwrap().is_empty());
    assert_eq!(
        engine
            .workflow_store()
            .versions("shop")
            .await
            .unwrap()
            .len(),
        2
    );
    let (status, v) = editor_call(
        &app,
        "register",
        json!({"document": 42}),
        Some(AUDITOR),
        Some(&csrf),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // Another process sees the stored workflow; the page opens it with its positions.
    let other = db.engine(None).await;
    let listed = other.workflow_store().list().await.unwrap();
    assert_eq!(
        (
            listed[0].name.as_str(),
            listed[0].version,
            listed[0].registered_by.as_str()
        ),
        ("shop", 2, "ana")
    );
    let r = get(&app, "/editor?workflow=shop", Some(AUDITOR)).await;
    assert!(r.body.contains("\"x\":260"), "{}", r.body);

    // Starting runs the stored version, as the actor; bad payloads are refused.
    let (status, v) = editor_call(
        &app,
        "start",
        json!({"workflow": "shop", "payload": {"order_id": "o-9", "amount_cents": 300}}),
        Some(OPERATOR),
        Some(&get(&app, "/runs", Some(OPERATOR)).await.csrf().unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let run: squid_mesh::RunId = v["run_id"].as_str().unwrap().parse().unwrap();
    drain(&engine).await;
    assert_eq!(
        engine.snapshot(run).await.unwrap().status,
        RunStatus::Completed
    );
    let (status, v) = editor_call(
        &app,
        "start",
        json!({"workflow": "shop", "payload": {"order_id": 9}}),
        Some(AUDITOR),
        Some(&csrf),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], json!("invalid_payload"));
    assert!(!v["error"]["problems"].as_array().unwrap().is_empty());
    let (status, _) = editor_call(
        &app,
        "start",
        json!({"workflow": "elsewhere"}),
        Some(AUDITOR),
        Some(&csrf),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = editor_call(&app, "validate", json!({"documnt": {}}), None, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let r = send(
        &app,
        axum::http::Request::post("/editor/api/validate")
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{not json"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("malformed_body"));
    other.close().await;
    engine.close().await;
}

on_each_backend!(
    the_editor_validates_registers_and_starts,
    every_read_page_renders_and_filters,
    bad_input_gets_a_status_and_a_readable_page,
    commands_need_a_token_that_may_act_and_its_csrf_token,
    pages_show_only_what_the_scope_may_see,
    signing_in_sets_a_cookie_and_signing_out_clears_it,
);
