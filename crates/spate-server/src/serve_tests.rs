//! The routers in-process: `Server::build`, then requests through tower's
//! `oneshot` (no binary spawned, no socket served).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::Server;
use crate::config::ServeArgs;
use crate::control::Room;

/// The flags of `spate serve`, parsed as the CLI parses them.
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
}

async fn build(dir: &std::path::Path, extra: &[&str]) -> Server {
    let data = dir.to_str().unwrap();
    let mut argv = vec!["serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    argv.extend(extra);
    let args = <Flags as clap::Parser>::try_parse_from(argv).unwrap().serve;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle();
    Server::build(args, metrics).await.unwrap()
}

fn request(s: &Server, method: &str, path: &str, body: Option<&Value>) -> Request<Body> {
    let b = Request::builder().method(method).uri(path).header("host", s.admin_addr().to_string());
    match body {
        Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())).unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn call(router: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let r = router.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const TRIGGERS: &str = "/apis/eventing.knative.dev/v1/namespaces/default/triggers";

fn trigger(name: &str, uri: &str) -> Value {
    json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": name},
        "spec": {"broker": "default", "subscriber": {"uri": uri}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_crud_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let s = build(dir.path(), &[]).await;
    let (st, created) =
        call(&s.admin, request(&s, "POST", TRIGGERS, Some(&trigger("t", "http://127.0.0.1:9/a")))).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    let item = format!("{TRIGGERS}/t");
    let (st, got) = call(&s.admin, request(&s, "GET", &item, None)).await;
    assert_eq!((st, &got["metadata"]["uid"]), (StatusCode::OK, &created["metadata"]["uid"]));
    let mut changed = got.clone();
    changed["spec"]["subscriber"]["uri"] = json!("http://127.0.0.1:9/b");
    let (st, replaced) = call(&s.admin, request(&s, "PUT", &item, Some(&changed))).await;
    assert_eq!((st, &replaced["metadata"]["generation"]), (StatusCode::OK, &json!(2)), "{replaced}");
    let (st, list) = call(&s.admin, request(&s, "GET", TRIGGERS, None)).await;
    assert_eq!((st, list["kind"].as_str()), (StatusCode::OK, Some("TriggerList")));
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (st, _) = call(&s.admin, request(&s, "DELETE", &item, None)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, gone) = call(&s.admin, request(&s, "GET", &item, None)).await;
    assert_eq!((st, gone["reason"].as_str()), (StatusCode::NOT_FOUND, Some("NotFound")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_at_one_version_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let s = build(dir.path(), &[]).await;
    let (st, created) =
        call(&s.admin, request(&s, "POST", TRIGGERS, Some(&trigger("t", "http://127.0.0.1:9/a")))).await;
    assert_eq!(st, StatusCode::CREATED);
    let item = format!("{TRIGGERS}/t");
    let writer = |uri: &str| {
        let mut body = created.clone();
        body["spec"]["subscriber"]["uri"] = json!(uri);
        call(&s.admin, request(&s, "PUT", &item, Some(&body)))
    };
    let ((a, _), (b, _)) = tokio::join!(writer("http://127.0.0.1:9/one"), writer("http://127.0.0.1:9/two"));
    let mut codes = [a.as_u16(), b.as_u16()];
    codes.sort();
    assert_eq!(codes, [200, 409], "exactly one of two writers at the same version wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_and_the_data_plane_answer_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "in-process-token-0123\n").unwrap();
    let s = build(&dir.path().join("data"), &["--admin-token-file", tokens.to_str().unwrap()]).await;
    let (st, body) = call(&s.admin, request(&s, "GET", TRIGGERS, None)).await;
    assert_eq!((st, body["reason"].as_str()), (StatusCode::UNAUTHORIZED, Some("Unauthorized")));
    let mut ok = request(&s, "GET", TRIGGERS, None);
    ok.headers_mut().insert("authorization", "Bearer in-process-token-0123".parse().unwrap());
    assert_eq!(call(&s.admin, ok).await.0, StatusCode::OK);
    let mut evil = request(&s, "GET", TRIGGERS, None);
    evil.headers_mut().insert("authorization", "Bearer in-process-token-0123".parse().unwrap());
    evil.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(call(&s.admin, evil).await.0, StatusCode::FORBIDDEN);
    // The data plane: a Broker's ingress takes an event (202), refuses a malformed one (400),
    // and an unknown Broker is 404.
    s.control.apply("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n", false).await.unwrap();
    let event = |path: &str, id: Option<&str>| {
        let mut b = Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "127.0.0.1")
            .header("ce-specversion", "1.0")
            .header("ce-type", "t")
            .header("ce-source", "/s")
            .header("content-type", "application/json");
        if let Some(id) = id {
            b = b.header("ce-id", id);
        }
        b.body(Body::from("{}")).unwrap()
    };
    assert_eq!(call(&s.data, event("/default/b", Some("1"))).await.0, StatusCode::ACCEPTED);
    assert_eq!(call(&s.data, event("/default/b", None)).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(call(&s.data, event("/default/nope", Some("2"))).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_do_not_wait_for_a_slow_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let s = build(dir.path(), &[]).await;
    let (st, _) = call(&s.admin, request(&s, "POST", TRIGGERS, Some(&trigger("other", "http://127.0.0.1:9/o")))).await;
    assert_eq!(st, StatusCode::CREATED);
    // Every reconcile from now on takes 3 s in its rooms, and one starts now.
    s.control.reconcile_delay_ms[Room::Eventing as usize].store(3000, Ordering::Relaxed);
    let slow = {
        let (admin, req) =
            (s.admin.clone(), request(&s, "POST", TRIGGERS, Some(&trigger("slow", "http://127.0.0.1:9/s"))));
        tokio::spawn(async move { call(&admin, req).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!slow.is_finished(), "the write is held in its reconcile");
    let mut took = vec![];
    for _ in 0..50 {
        let t = Instant::now();
        let (st, _) = call(&s.admin, request(&s, "GET", &format!("{TRIGGERS}/other"), None)).await;
        took.push(t.elapsed());
        assert_eq!(st, StatusCode::OK);
    }
    assert!(!slow.is_finished(), "every read finished while the reconcile was still held");
    took.sort();
    let p99 = took[took.len() * 99 / 100 - 1];
    assert!(p99 < Duration::from_millis(50), "GET p99 {p99:?} while a reconcile is held");
    // Writes do not wait either: the rooms run outside the store lock, so another
    // trigger is stored (and readable) while the first reconcile is still held.
    let third = {
        let (admin, req) =
            (s.admin.clone(), request(&s, "POST", TRIGGERS, Some(&trigger("third", "http://127.0.0.1:9/t"))));
        tokio::spawn(async move { call(&admin, req).await })
    };
    let stored_by = Instant::now() + Duration::from_secs(2);
    loop {
        let (st, _) = call(&s.admin, request(&s, "GET", &format!("{TRIGGERS}/third"), None)).await;
        if st == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < stored_by, "a write waited for the held reconcile");
        tokio::task::yield_now().await;
    }
    assert!(!slow.is_finished(), "the second write was stored while the first reconcile was held");
    s.control.reconcile_delay_ms[Room::Eventing as usize].store(0, Ordering::Relaxed);
    assert_eq!(slow.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(third.await.unwrap().0, StatusCode::CREATED);
}

/// One controller per room: while the eventing room's reconcile is held, a
/// SinkBinding (the serving room's) is reconciled and reports its status, and
/// the held Trigger's write completes once its room lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_room_holds_no_other_room() {
    let dir = tempfile::tempdir().unwrap();
    let s = build(dir.path(), &[]).await;
    s.control.reconcile_delay_ms[Room::Eventing as usize].store(3000, Ordering::Relaxed);
    let held = {
        let (admin, req) =
            (s.admin.clone(), request(&s, "POST", TRIGGERS, Some(&trigger("held", "http://127.0.0.1:9/h"))));
        tokio::spawn(async move { call(&admin, req).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the Trigger's write waits for the eventing room");
    let binding = json!({"apiVersion": "sources.knative.dev/v1", "kind": "SinkBinding", "metadata": {"name": "bind"},
        "spec": {"subject": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "selector": {"matchLabels": {"app": "x"}}},
                 "sink": {"uri": "http://127.0.0.1:9/sink"}}});
    let path = "/apis/sources.knative.dev/v1/namespaces/default/sinkbindings";
    let (st, created) = call(&s.admin, request(&s, "POST", path, Some(&binding))).await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert!(!held.is_finished(), "the SinkBinding was reconciled while the eventing room was held");
    let (_, got) = call(&s.admin, request(&s, "GET", &format!("{path}/bind"), None)).await;
    assert_eq!(got["status"]["sinkUri"], "http://127.0.0.1:9/sink", "{got}");
    assert_eq!(got["status"]["observedGeneration"], 1, "{got}");
    s.control.reconcile_delay_ms[Room::Eventing as usize].store(0, Ordering::Relaxed);
    assert_eq!(held.await.unwrap().0, StatusCode::CREATED);
    let (_, t) = call(&s.admin, request(&s, "GET", &format!("{TRIGGERS}/held"), None)).await;
    assert_eq!(t["status"]["observedGeneration"], 1, "the Trigger's room reported it: {t}");
}
