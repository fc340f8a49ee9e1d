//! OpenTelemetry traces (`--otlp-endpoint`): a small OTLP/HTTP receiver in the
//! test collects the spans Spate exports and checks the tree of one event, from
//! the producer's `traceparent` through a trigger's delivery, the subscriber's
//! reply, and the reply's own delivery.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use serde_json::Value;

#[derive(Debug, Clone)]
struct SpanRec {
    trace: String,
    id: String,
    parent: String,
    name: String,
    event_id: Option<String>,
}

async fn receiver() -> (String, Arc<Mutex<Vec<SpanRec>>>) {
    let spans: Arc<Mutex<Vec<SpanRec>>> = Arc::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                let mut got = store.lock().unwrap();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let event_id = s["attributes"].as_array().into_iter().flatten().find_map(|a| {
                                (a["key"] == "cloudevents.event_id")
                                    .then(|| a["value"]["stringValue"].as_str().map(String::from))?
                            });
                            got.push(SpanRec {
                                trace: s["traceId"].as_str().unwrap_or("").to_lowercase(),
                                id: s["spanId"].as_str().unwrap_or("").to_lowercase(),
                                parent: s["parentSpanId"].as_str().unwrap_or("").to_lowercase(),
                                name: s["name"].as_str().unwrap_or("").to_string(),
                                event_id,
                            });
                        }
                    }
                }
                StatusCode::OK.into_response()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, spans)
}

fn span_id_of(traceparent: &str) -> String {
    traceparent.split('-').nth(2).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_events_span_tree_goes_from_the_producer_through_a_reply() {
    let (otlp, spans) = receiver().await;
    // Export every 100 ms instead of 5 s (read by the SDK; this test runs in its own process).
    unsafe { std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100") };
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--otlp-endpoint", &otlp]);
    let replier = Sink::with(
        Arc::new(|r, _| {
            if r.event.ty != "question" {
                return StatusCode::ACCEPTED.into_response();
            }
            let id = format!("re-{}", r.event.id);
            let h =
                [("ce-specversion", "1.0"), ("ce-id", id.as_str()), ("ce-source", "/replier"), ("ce-type", "answer")];
            (StatusCode::OK, h, "{}").into_response()
        }),
        Duration::ZERO,
    )
    .await;
    let answers = Sink::start().await;
    s.apply_ok(&format!(
        "{}---\n{}---\n{}",
        broker("default", ""),
        trigger("ask", "default", &type_filter("question"), &replier.url, ""),
        trigger("answers", "default", &type_filter("answer"), &answers.url, "")
    ))
    .await;
    let (trace, producer) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let tp = format!("00-{trace}-{producer}-01");
    let h = [
        ("ce-specversion", "1.0"),
        ("ce-id", "q1"),
        ("ce-type", "question"),
        ("ce-source", "/producer"),
        ("traceparent", tp.as_str()),
    ];
    assert_eq!(post_with(&s.broker_url("default", "default"), &h, "{}").await, 202);
    let got = answers.wait_for_id("re-q1").await;
    let to_replier = replier.wait_for_id("q1").await[0].headers["traceparent"].to_str().unwrap().to_string();
    let to_answers = got[0].headers["traceparent"].to_str().unwrap().to_string();
    assert!(
        to_replier.contains(trace) && to_answers.contains(trace),
        "one trace end to end: {to_replier} {to_answers}"
    );

    // Wait for the spans of both deliveries, then check the tree.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (by_name, all) = loop {
        let all: Vec<SpanRec> = spans.lock().unwrap().iter().filter(|s| s.trace == trace).cloned().collect();
        let names: HashMap<String, SpanRec> =
            all.iter().map(|s| (format!("{} {:?}", s.name, s.event_id), s.clone())).collect();
        if names.contains_key("deliver trigger/default/answers Some(\"re-q1\")")
            && names.contains_key("reply trigger/default/ask Some(\"re-q1\")")
        {
            break (names, all);
        }
        assert!(Instant::now() < deadline, "spans of trace {trace} so far: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let span = |name: &str, id: &str| {
        by_name
            .get(&format!("{name} Some(\"{id}\")"))
            .unwrap_or_else(|| panic!("no span '{name}' for {id}: {by_name:#?}"))
            .clone()
    };
    let ingress = span("ingress broker/default/default", "q1");
    assert_eq!(ingress.parent, producer, "the ingress continues the producer's trace");
    let append = all.iter().find(|s| s.name == "append broker/default/default" && s.parent == ingress.id);
    assert!(append.is_some(), "storing is a child of the ingress: {all:#?}");
    let ask = span("deliver trigger/default/ask", "q1");
    assert_eq!(ask.parent, producer);
    assert_eq!(span_id_of(&to_replier), ask.id, "the subscriber gets the attempt's context");
    let reply = span("reply trigger/default/ask", "re-q1");
    assert_eq!(reply.parent, ask.id, "the reply is a child of the attempt that got it");
    let reply_ingress = span("ingress broker/default/default", "re-q1");
    assert_eq!(reply_ingress.parent, ask.id, "the reply goes on in the same trace");
    let answer = span("deliver trigger/default/answers", "re-q1");
    assert_eq!(answer.parent, ask.id);
    assert_eq!(span_id_of(&to_answers), answer.id, "and reaches its own subscriber with its context");
}
