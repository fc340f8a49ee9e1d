//! The dispatcher against real HTTP servers (axum on loopback).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use spate_core::delivery::{BackoffPolicy, DeliveryFormat, RetryPolicy};
use spate_core::{CloudEvent, ExtValue};
use spate_delivery::{BoxFuture, DeliveryRequest, DiscardReplies, Dispatcher, Outcome, ParsedUrl, ReplySink};

#[derive(Clone, Default)]
struct Seen {
    hits: Arc<Mutex<Vec<(Instant, HeaderMap, Bytes)>>>,
}

type Script = Arc<dyn Fn(usize) -> Response + Send + Sync>;

async fn server(script: Script) -> (String, Seen) {
    let seen = Seen::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/",
        post(move |State(seen): State<Seen>, headers: HeaderMap, body: Bytes| {
            let script = script.clone();
            async move {
                let n = {
                    let mut g = seen.hits.lock().unwrap();
                    g.push((Instant::now(), headers, body));
                    g.len()
                };
                script(n)
            }
        }),
    );
    let app = app.with_state(s2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/"), seen)
}

fn status(code: u16) -> Script {
    Arc::new(move |_| StatusCode::from_u16(code).unwrap().into_response())
}

fn event() -> CloudEvent {
    let mut e = CloudEvent::new("id-1", "/test", "com.example.test");
    e.datacontenttype = Some("application/json".into());
    e.data = Some(Bytes::from_static(b"{\"k\":1}"));
    e
}

fn policy(retry: u32, p: BackoffPolicy, delay_ms: u64) -> RetryPolicy {
    RetryPolicy {
        retry,
        backoff_policy: p,
        backoff_delay: Duration::from_millis(delay_ms),
        timeout: None,
        retry_after_max: None,
    }
}

async fn deliver(url: &str, policy: &RetryPolicy, dls: Option<&str>, replies: &dyn ReplySink) -> Outcome {
    let d = Dispatcher::default();
    let (url, dls) = (ParsedUrl::new(url), dls.map(ParsedUrl::new));
    let req = DeliveryRequest {
        subscriber: &url,
        policy,
        format: DeliveryFormat::Binary,
        namespace: "ns1",
        dead_letter_sink: dls.as_ref(),
        label: "test",
        retries: None,
        spent: 0,
        on_retry: None,
    };
    d.deliver(&event(), &req, replies).await
}

fn gaps(seen: &Seen) -> Vec<Duration> {
    let g = seen.hits.lock().unwrap();
    g.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

fn assert_waits(got: &[Duration], want_ms: &[u64]) {
    assert_eq!(got.len(), want_ms.len(), "{got:?}");
    for (g, w) in got.iter().zip(want_ms) {
        let w = Duration::from_millis(*w);
        // The contract is a lower bound; the upper slack only catches gross over-waiting.
        assert!(*g >= w && *g < w + Duration::from_millis(400), "waited {g:?}, want {w:?} (all: {got:?})");
    }
}

#[tokio::test]
async fn linear_backoff_retry_count_and_waits() {
    let (url, seen) = server(status(500)).await;
    let out = deliver(&url, &policy(3, BackoffPolicy::Linear, 50), None, &DiscardReplies).await;
    assert!(matches!(out, Outcome::Dropped { attempts: 4, .. }), "{out:?}");
    assert_waits(&gaps(&seen), &[50, 100, 150]);
}

#[tokio::test]
async fn exponential_backoff_retry_count_and_waits() {
    let (url, seen) = server(status(503)).await;
    let out = deliver(&url, &policy(4, BackoffPolicy::Exponential, 40), None, &DiscardReplies).await;
    assert!(matches!(out, Outcome::Dropped { attempts: 5, .. }), "{out:?}");
    assert_waits(&gaps(&seen), &[40, 80, 160, 320]);
}

#[tokio::test]
async fn retryable_and_final_statuses() {
    for (code, attempts) in [(400u16, 1u32), (401, 1), (413, 1), (404, 3), (408, 3), (409, 3), (429, 3), (502, 3)] {
        let (url, seen) = server(status(code)).await;
        let out = deliver(&url, &policy(2, BackoffPolicy::Linear, 1), None, &DiscardReplies).await;
        assert!(matches!(out, Outcome::Dropped { attempts: a, .. } if a == attempts), "{code}: {out:?}");
        assert_eq!(seen.hits.lock().unwrap().len(), attempts as usize, "{code}");
    }
}

#[tokio::test]
async fn succeeds_after_failures() {
    let (url, seen) = server(Arc::new(|n| {
        if n < 3 { StatusCode::SERVICE_UNAVAILABLE.into_response() } else { StatusCode::ACCEPTED.into_response() }
    }))
    .await;
    let out = deliver(&url, &policy(5, BackoffPolicy::Linear, 1), None, &DiscardReplies).await;
    assert_eq!(out, Outcome::Delivered { attempts: 3 });
    assert_eq!(seen.hits.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_retry_after_max() {
    let ra: Script = Arc::new(|_| (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response());
    let (url, seen) = server(ra.clone()).await;
    let mut p = policy(1, BackoffPolicy::Linear, 10);
    deliver(&url, &p, None, &DiscardReplies).await;
    assert_waits(&gaps(&seen), &[1000]);
    let (url, seen) = server(ra).await;
    p.retry_after_max = Some(Duration::from_millis(200));
    deliver(&url, &p, None, &DiscardReplies).await;
    assert_waits(&gaps(&seen), &[200]);
}

#[tokio::test]
async fn a_timeout_counts_as_a_failed_attempt() {
    // A listener that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0usize));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = listener.accept().await {
            *acc.lock().unwrap() += 1;
            held.push(s);
        }
    });
    let mut p = policy(2, BackoffPolicy::Linear, 1);
    p.timeout = Some(Duration::from_millis(100));
    let out = deliver(&format!("http://{addr}/"), &p, None, &DiscardReplies).await;
    match out {
        Outcome::Dropped { attempts: 3, reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(*accepted.lock().unwrap() >= 1);
}

#[tokio::test]
async fn exhausted_events_reach_the_dead_letter_sink_with_error_extensions() {
    let body = "x".repeat(2000);
    let b2 = body.clone();
    let (url, _) = server(Arc::new(move |_| (StatusCode::INTERNAL_SERVER_ERROR, b2.clone()).into_response())).await;
    let (dls, dseen) = server(status(202)).await;
    let out = deliver(&url, &policy(1, BackoffPolicy::Linear, 1), Some(&dls), &DiscardReplies).await;
    assert!(matches!(out, Outcome::DeadLettered { attempts: 2, .. }), "{out:?}");
    let hits = dseen.hits.lock().unwrap();
    assert_eq!(hits.len(), 1);
    let h = &hits[0].1;
    assert_eq!(h["ce-id"], "id-1");
    assert_eq!(h["ce-knativeerrordest"], spate_core::percent::encode(&url).as_ref());
    assert_eq!(h["ce-knativeerrorcode"], "500");
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(spate_core::percent::decode(h["ce-knativeerrordata"].as_bytes()).unwrap())
        .unwrap();
    assert_eq!(data, body.as_bytes()[..1024].to_vec(), "first 1024 bytes of the response body");
    assert_eq!(&hits[0].2[..], b"{\"k\":1}");
}

#[tokio::test]
async fn a_dead_letter_sink_that_fails_twice_then_succeeds_receives_the_event() {
    let (url, _) = server(status(500)).await;
    let (dls, dseen) = server(Arc::new(|n| {
        if n <= 2 { StatusCode::SERVICE_UNAVAILABLE.into_response() } else { StatusCode::ACCEPTED.into_response() }
    }))
    .await;
    // The subscriber's policy allows no retry at all; the dead-letter sink still gets some.
    let out = deliver(&url, &policy(0, BackoffPolicy::Linear, 1), Some(&dls), &DiscardReplies).await;
    assert!(matches!(out, Outcome::DeadLettered { attempts: 1, .. }), "{out:?}");
    let hits = dseen.hits.lock().unwrap();
    assert_eq!(hits.len(), 3, "two failures, then the accepted attempt");
    assert!(hits.iter().all(|h| h.1["ce-id"] == "id-1"));
}

#[tokio::test]
async fn a_dead_letter_sink_that_keeps_failing_is_bounded_then_dropped() {
    let (url, _) = server(status(500)).await;
    let (dls, dseen) = server(status(503)).await;
    let out = deliver(&url, &policy(0, BackoffPolicy::Linear, 1), Some(&dls), &DiscardReplies).await;
    match out {
        Outcome::Dropped { reason, .. } => assert!(reason.contains("dead-letter sink"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(dseen.hits.lock().unwrap().len(), 1 + spate_delivery::DEAD_LETTER_MIN_RETRIES as usize);
}

#[tokio::test]
async fn subscriber_headers_and_formats() {
    let (url, seen) = server(status(200)).await;
    let url = ParsedUrl::new(url);
    let d = Dispatcher::default();
    let p = policy(0, BackoffPolicy::Linear, 1);
    for format in [DeliveryFormat::Binary, DeliveryFormat::Json] {
        let req = DeliveryRequest {
            subscriber: &url,
            policy: &p,
            format,
            namespace: "ns1",
            dead_letter_sink: None,
            label: "t",
            retries: None,
            spent: 0,
            on_retry: None,
        };
        assert!(matches!(d.deliver(&event(), &req, &DiscardReplies).await, Outcome::Delivered { .. }));
    }
    let hits = seen.hits.lock().unwrap();
    let (bin, json) = (&hits[0].1, &hits[1].1);
    for h in [bin, json] {
        assert_eq!(h["prefer"], "reply");
        assert_eq!(h["kn-namespace"], "ns1");
        let tp = h["traceparent"].to_str().unwrap();
        assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
    }
    assert_eq!(bin["ce-type"], "com.example.test");
    assert_eq!(bin["content-type"], "application/json");
    assert!(json["content-type"].to_str().unwrap().starts_with("application/cloudevents+json"));
    assert!(!json.contains_key("ce-type"));
}

struct Collect(Mutex<Vec<CloudEvent>>, bool);
impl ReplySink for Collect {
    fn accept(&self, reply: CloudEvent) -> BoxFuture<'_, Result<(), String>> {
        let ok = self.1;
        if ok {
            self.0.lock().unwrap().push(reply);
        }
        Box::pin(async move { if ok { Ok(()) } else { Err("log full".into()) } })
    }
}

#[tokio::test]
async fn replies_are_handed_over_and_a_failed_handover_is_retried() {
    let reply: Script = Arc::new(|_| {
        (
            StatusCode::OK,
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "r1"),
                ("ce-source", "/fn"),
                ("ce-type", "reply.type"),
                ("ce-myext", "7"),
            ],
            "pong",
        )
            .into_response()
    });
    let (url, _) = server(reply.clone()).await;
    let sink = Collect(Mutex::new(vec![]), true);
    assert!(matches!(
        deliver(&url, &policy(0, BackoffPolicy::Linear, 1), None, &sink).await,
        Outcome::Delivered { .. }
    ));
    let got = sink.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_str(), got[0].ty.as_str()), ("r1", "reply.type"));
    assert_eq!(got[0].extension("myext"), Some(&ExtValue::String("7".into())));
    assert_eq!(got[0].data.as_deref(), Some(&b"pong"[..]));

    let (url, seen) = server(reply).await;
    let failing = Collect(Mutex::new(vec![]), false);
    let out = deliver(&url, &policy(2, BackoffPolicy::Linear, 1), None, &failing).await;
    assert!(matches!(out, Outcome::Dropped { attempts: 3, .. }), "{out:?}");
    assert_eq!(seen.hits.lock().unwrap().len(), 3);

    // 202 with an event body, and a non-event body, are not replies.
    for script in [
        Arc::new(|_| {
            (StatusCode::ACCEPTED, [("ce-specversion", "1.0"), ("ce-id", "r"), ("ce-source", "/s"), ("ce-type", "t")])
                .into_response()
        }) as Script,
        Arc::new(|_| (StatusCode::OK, "just text").into_response()) as Script,
    ] {
        let (url, _) = server(script).await;
        let sink = Collect(Mutex::new(vec![]), true);
        assert!(matches!(
            deliver(&url, &policy(0, BackoffPolicy::Linear, 1), None, &sink).await,
            Outcome::Delivered { .. }
        ));
        assert!(sink.0.lock().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_reply_larger_than_the_bound_fails_the_attempt_instead_of_filling_memory() {
    let big = spate_delivery::MAX_RESPONSE_BYTES + 1;
    let (url, seen) = server(Arc::new(move |_| (StatusCode::OK, vec![b'x'; big]).into_response())).await;
    let out = deliver(&url, &policy(1, BackoffPolicy::Linear, 1), None, &DiscardReplies).await;
    match out {
        Outcome::Dropped { attempts: 2, reason } => assert!(reason.contains("reading the response"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.hits.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_destination_that_is_not_an_http_url_is_named_in_the_reason() {
    for bad in ["ftp://example.com/x", "not a url", "/relative/path"] {
        let out = deliver(bad, &policy(0, BackoffPolicy::Linear, 1), None, &DiscardReplies).await;
        match out {
            Outcome::Dropped { reason, .. } => assert!(reason.contains(bad), "{bad}: {reason}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_are_counted_as_they_start_not_when_the_outcome_is_final() {
    // `describe` showed "Live retries: 0" while an event was on its 900th attempt.
    let (url, _seen) = server(status(503)).await;
    let retries = std::sync::atomic::AtomicU64::new(0);
    // An attempt's own timeout bounds it in paused time (the clock may jump while a socket waits).
    let p = RetryPolicy { timeout: Some(Duration::from_secs(1)), ..policy(1000, BackoffPolicy::Linear, 1000) };
    let url = ParsedUrl::new(&url);
    let req = DeliveryRequest {
        subscriber: &url,
        policy: &p,
        format: DeliveryFormat::Binary,
        namespace: "ns1",
        dead_letter_sink: None,
        label: "t",
        retries: Some(&retries),
        spent: 0,
        on_retry: None,
    };
    let d = Dispatcher::default();
    let ev = event();
    let delivery = d.deliver(&ev, &req, &DiscardReplies);
    tokio::pin!(delivery);
    // Waits of 1 s, 2 s, 3 s, ... (linear): after 60 s of paused time, several retries have started.
    let out = tokio::time::timeout(Duration::from_secs(60), &mut delivery).await;
    assert!(out.is_err(), "still retrying");
    let n = retries.load(std::sync::atomic::Ordering::Relaxed);
    assert!((3..=11).contains(&n), "{n} retries counted while the event is still being retried");
}
