//! The dashboard at the admin API's `/`, in a real browser: Debian's headless
//! chromium driven by playwright-core (`tests/browser/dashboard.mjs`). The page
//! must list the applied broker and triggers, show an event sent while it is
//! open in its live view, and show a resource's conditions. Screenshots are kept
//! in `target/test-artifacts/dashboard/`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The browser and the driver, or why the test cannot run (fatal under CI).
fn browser_ready() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing = if !Path::new(&chromium).exists() {
        Some(format!("no browser at {chromium} (apt-get install chromium)"))
    } else if !dir.join("node_modules/playwright-core").exists() {
        Some(format!("playwright-core is not installed (npm ci in {})", dir.display()))
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("node is not installed".into())
    } else {
        None
    };
    match missing {
        None => Some(dir),
        Some(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but the browser test cannot run: {why} (.ci/run installs it)"
            );
            eprintln!("skipping: {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_topology_live_events_and_conditions_in_a_browser() {
    let Some(driver) = browser_ready() else { return };
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "{}---\n{}---\n{}",
        broker("shop", ""),
        trigger("orders-to-sink", "shop", &type_filter("order"), &sink.url, ""),
        trigger("refunds-to-sink", "shop", &type_filter("refund"), &sink.url, "")
    ))
    .await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let mut child = Command::new("node")
        .current_dir(&driver)
        .arg("dashboard.mjs")
        .args([s.admin.as_str(), out.to_str().unwrap(), "shop", "orders-to-sink", "refunds-to-sink", "--", "dash-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || (lines.next(), lines)).await.unwrap();
    let (ready, mut lines) = first;
    let ready = ready.and_then(Result::ok).unwrap_or_default();
    assert_eq!(
        ready,
        "READY",
        "the page listed the broker and both triggers (see the screenshots in {})",
        out.display()
    );
    // An event sent while the page is open appears in its live view.
    assert_eq!(send(&s.broker_url("default", "shop"), "dash-1", "order", "{\"n\":1}").await, 202);
    let (status, seen) = tokio::task::spawn_blocking(move || {
        let seen = lines.next().and_then(Result::ok).unwrap_or_default();
        (child.wait().unwrap(), seen)
    })
    .await
    .unwrap();
    assert!(status.success() && seen == "SEEN dash-1", "{status}: {seen}; screenshots in {}", out.display());
    for shot in ["dashboard-topology.png", "dashboard-live.png"] {
        let png = std::fs::read(out.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{shot} is a PNG");
    }
    sink.wait_for_id("dash-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_by_the_admin_api_behind_its_guard() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let r = client().get(format!("{}/", s.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let body = r.text().await.unwrap();
    assert!(body.contains("Live events") && !body.contains("https://"), "no CDN: everything is built in");
    // A page on another site cannot read it (the guard refuses foreign Hosts and Origins).
    let r = client().get(format!("{}/", s.admin)).header("Host", "evil.example:80").send().await.unwrap();
    assert_eq!(r.status(), 403);
}
