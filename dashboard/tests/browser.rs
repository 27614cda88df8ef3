//! The dashboard in a real headless Chromium, driven over WebDriver (ChromeDriver): the
//! runs list and its filters, a run's SVG graph, approving a gate with a token, and an
//! editor round trip (two steps, a connection, a problem, its fix, register, start, watch
//! the run complete). A worker pool runs the steps meanwhile. Screenshots of the main pages
//! are saved under `target/dashboard-screenshots/`.
//!
//! Chromium and ChromeDriver come from `SQUID_MESH_CHROMIUM` and `SQUID_MESH_CHROMEDRIVER`
//! (set by `scripts/test`, which installs them), else from the `PATH`. Missing outside CI,
//! the test is skipped with a loud message; in CI (`CI=true`) that is a failure.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::InputSource as _;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use squid_mesh::Worker;
use squid_mesh::clock::ManualClock;
use squid_mesh::inspect::Scope;
use squid_mesh_dashboard::{Dashboard, TokenTable};
use support::*;

const OPS: &str = "browser-ops-token-0123456789";

fn which(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ChromeDriver and a headless Chromium session, or `None` (after a loud message) outside CI
/// when they are not installed.
async fn browser() -> Option<(Driver, Client)> {
    let (Some(driver), Some(chromium)) = (
        which("SQUID_MESH_CHROMEDRIVER", "chromedriver"),
        which("SQUID_MESH_CHROMIUM", "chromium"),
    ) else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("Chromium and ChromeDriver are required in CI (scripts/test installs them)");
        }
        eprintln!(
            "\n!!!!! SKIPPING BROWSER TESTS: chromium or chromedriver is not installed (apt-get install chromium chromium-driver) !!!!!\n"
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let guard = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::native()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return Some((guard, c)),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session: {e}"),
        }
    }
}

/// The attribute `name` of `css`, finding it again if the page redrew it in between (or
/// is still loading after a form was sent): up to 5 s.
async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let err = match c.find(Locator::Css(css)).await {
            Ok(e) => match e.attr(name).await {
                Ok(value) => return value,
                Err(err) if stale(&err) => err,
                Err(err) => panic!("{css} {name}: {err}"),
            },
            Err(err) => err,
        };
        if Instant::now() > deadline {
            panic!("{css}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `css` matches an element whose attribute `name` is `value`.
async fn wait_attr(c: &Client, css: &str, name: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && e.attr(name).await.ok().flatten().as_deref() == Some(value)
        {
            return;
        }
        if Instant::now() > deadline {
            let page = c.source().await.unwrap_or_default();
            panic!("{css} never had {name}={value:?}:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks `css`, finding it again if the page redrew it in between.
async fn click(c: &Client, css: &str) {
    for _ in 0..50 {
        match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(_) => return,
                Err(err) if stale(&err) => {}
                Err(err) => panic!("clicking {css}: {err}"),
            },
            Err(err) => panic!("{css}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} kept being redrawn");
}

/// `data-*` attribute `key` of every element matching `css`, read in one go in the page.
async fn data_of_all(c: &Client, css: &str, key: &str) -> Vec<String> {
    let v = c
        .execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.dataset[arguments[1]]);",
            vec![json!(css), json!(key)],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

async fn shot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// An element the page redrew (or was redrawing) under the driver: worth finding again.
fn stale(err: &fantoccini::error::CmdError) -> bool {
    let text = format!("{err:?}");
    text.contains("StaleElementReference") || text.contains("not interactable")
}

/// Types into a field and leaves it (so its `change` event fires).
async fn type_into(c: &Client, css: &str, text: &str) {
    for _ in 0..50 {
        let e = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"));
        let typed = match e.clear().await {
            Ok(()) => e.send_keys(&format!("{text}\u{E004}")).await,
            Err(err) => Err(err),
        };
        match typed {
            Ok(()) => return,
            Err(err) if stale(&err) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => panic!("typing into {css}: {err}"),
        }
    }
    panic!("{css} kept being redrawn");
}

/// Chooses `value` in the select `css`.
async fn choose(c: &Client, css: &str, value: &str) {
    for _ in 0..50 {
        let e = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css}: {err}"));
        match e.select_by_value(value).await {
            Ok(()) => return,
            Err(err) if stale(&err) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(err) => panic!("choosing in {css}: {err}"),
        }
    }
    panic!("{css} kept being redrawn");
}

async fn the_dashboard_works_in_a_real_browser(db: Db) {
    let Some((_driver, c)) = browser().await else {
        return;
    };
    let clock = ManualClock::new(T0);
    let seeding = db.engine(Some(&clock)).await;
    let s = seed(&seeding, &clock).await;
    seeding.close().await;
    let engine = db.engine(None).await;
    let worker = Worker::builder(&engine)
        .concurrency(2)
        .poll_interval(Duration::from_millis(50))
        .start()
        .expect("worker starts");
    let app = Dashboard::new(engine.clone())
        .tokens(TokenTable::new().token(OPS, "ana", Scope::Auditor, true))
        .refresh_secs(1)
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Sign in.
    c.goto(&format!("{url}/login")).await.unwrap();
    type_into(&c, "input[name=token]", OPS).await;
    click(&c, ".login button").await;
    wait_attr(&c, "#runs", "class", "runs").await;
    assert!(
        c.find(Locator::Css("#who"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("ana")
    );
    for id in [s.shipped, s.waiting, s.failed] {
        c.find(Locator::Css(&format!("tr[data-run-id='{id}']")))
            .await
            .expect("listed");
    }
    shot(&c, "runs").await;

    // Filter by status: the URL carries it, the list narrows.
    click(&c, "input[name=status][value=paused]").await;
    click(&c, "#apply-filters").await;
    wait_attr(&c, "input[name=status][value=paused]", "checked", "true").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("status=paused")
    );
    assert_eq!(
        data_of_all(&c, "#runs tbody tr[data-run-id]", "runId").await,
        [s.waiting.to_string()]
    );

    // Open the run: the SVG graph's nodes and edges carry their statuses.
    click(&c, "a.run-link").await;
    wait_attr(&c, "#run", "data-status", "paused").await;
    assert_eq!(
        attr(&c, "g[data-node-id=review]", "data-status")
            .await
            .as_deref(),
        Some("paused")
    );
    assert_eq!(
        attr(&c, "g[data-node-id=charge]", "data-status")
            .await
            .as_deref(),
        Some("completed")
    );
    assert_eq!(
        attr(&c, "path[data-edge-id='charge:ok:review']", "data-status")
            .await
            .as_deref(),
        Some("selected")
    );
    assert_eq!(
        attr(&c, "path[data-edge-id='review:ok:ship']", "data-status")
            .await
            .as_deref(),
        Some("pending")
    );
    shot(&c, "run-paused").await;

    // Approve the gate; the worker finishes the run.
    type_into(
        &c,
        "#control-approve input[name=comment]",
        "approved in the browser",
    )
    .await;
    click(&c, "#control-approve button").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = attr(&c, "#run", "data-status").await;
        if status.as_deref() == Some("completed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the approved run never completed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
    assert_eq!(
        attr(&c, "path[data-edge-id='review:ok:ship']", "data-status")
            .await
            .as_deref(),
        Some("selected")
    );
    assert!(
        c.source()
            .await
            .unwrap()
            .contains("approved in the browser")
    );
    shot(&c, "run-completed").await;

    // Actions.
    c.goto(&format!("{url}/actions")).await.unwrap();
    c.find(Locator::Css("tr[data-key='pay.charge']"))
        .await
        .expect("the approved action");
    shot(&c, "actions").await;

    // The editor: two steps, connected; a problem; its fix; register; start; completion.
    c.goto(&format!("{url}/editor")).await.unwrap();
    // A new document has no step yet: that is its problem.
    wait_attr(&c, "#validity", "data-state", "invalid").await;
    type_into(&c, "#wf-name", "browser_flow").await;
    for _ in 0..2 {
        click(&c, "#add-step").await;
        choose(&c, "#step-kind", "builtin:log").await;
    }
    click(&c, "#connect").await;
    click(&c, "g[data-node-id=step_1]").await;
    click(&c, "g[data-node-id=step_2]").await;
    c.find(Locator::Css("path[data-edge-id='step_1:ok:step_2']"))
        .await
        .expect("connected");
    wait_attr(&c, "#validity", "data-state", "valid").await;
    // Move step 2 on the canvas (its position goes to the editor section).
    let before = attr(&c, "g[data-node-id=step_2]", "transform").await;
    let node = c
        .find(Locator::Css("g[data-node-id=step_2] rect"))
        .await
        .unwrap();
    let drag = fantoccini::actions::MouseActions::new("mouse".into())
        .then(fantoccini::actions::PointerAction::MoveToElement {
            element: node,
            duration: None,
            x: 0.0,
            y: 0.0,
        })
        .then(fantoccini::actions::PointerAction::Down {
            button: fantoccini::actions::MOUSE_BUTTON_LEFT,
        })
        .then(fantoccini::actions::PointerAction::MoveBy {
            duration: Some(Duration::from_millis(100)),
            x: 60.0,
            y: 90.0,
        })
        .then(fantoccini::actions::PointerAction::Up {
            button: fantoccini::actions::MOUSE_BUTTON_LEFT,
        });
    c.perform_actions(drag).await.unwrap();
    assert_ne!(
        attr(&c, "g[data-node-id=step_2]", "transform").await,
        before,
        "the node moved"
    );
    // An empty log message is a problem, shown on the node and on the field.
    click(&c, "g[data-node-id=step_2]").await;
    type_into(&c, "#step-message", "").await;
    wait_attr(&c, "#validity", "data-state", "invalid").await;
    wait_attr(&c, "g[data-node-id=step_2]", "data-problems", "1").await;
    assert!(
        attr(&c, "#step-message", "class")
            .await
            .unwrap_or_default()
            .contains("has-problem")
    );
    shot(&c, "editor-problem").await;
    type_into(&c, "#step-message", "shipped from the browser").await;
    wait_attr(&c, "#validity", "data-state", "valid").await;
    wait_attr(&c, "g[data-node-id=step_2]", "data-problems", "0").await;
    click(&c, "#register").await;
    wait_attr(&c, "#register-result", "data-state", "registered").await;
    shot(&c, "editor").await;
    let stored = engine
        .workflow_store()
        .latest("browser_flow")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(stored.spec.steps.len(), 2);
    let positions =
        stored.spec.editor.as_ref().expect("editor section")["nodes"]["step_2"]["position"].clone();
    assert!(
        positions["y"].as_f64().unwrap() > 60.0,
        "the moved position is saved: {positions}"
    );
    click(&c, "#start").await;
    wait_attr(&c, "#started-status", "data-status", "completed").await;
    let href = attr(&c, "#started-run", "href").await.unwrap();
    c.goto(&href).await.unwrap();
    wait_attr(&c, "#run", "data-status", "completed").await;
    assert_eq!(
        attr(&c, "g[data-node-id=step_2]", "data-status")
            .await
            .as_deref(),
        Some("completed")
    );

    c.close().await.unwrap();
    worker.shutdown(Duration::from_secs(5)).await;
    server.abort();
    engine.close().await;
}

on_each_backend!(the_dashboard_works_in_a_real_browser);
