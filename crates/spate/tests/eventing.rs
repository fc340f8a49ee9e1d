//! Broker and Trigger behaviour on a running `spate serve`, over real HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use spate_core::ExtValue;

/// A server whose brokers default to `class`, with `yaml` applied; `None`: skip
/// (the class needs NATS and none answers outside CI).
async fn server_on(
    class: Class,
    test: &str,
    yaml: &str,
    extra: &[&str],
) -> Option<(tempfile::TempDir, Server, Option<NatsCluster>)> {
    let (mut args, nats) = class_args(class, test)?;
    args.extend(extra.iter().map(|a| a.to_string()));
    let dir = tempdir();
    let s = Server::start(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    s.apply_ok(yaml).await;
    Some((dir, s, nats))
}

/// Each contract test runs once per broker class: the same function, two tests.
macro_rules! for_each_class {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Class::Embedded).await })*
        }
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Class::Nats).await })*
        }
        mod rabbit {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Class::Rabbit).await })*
        }
        mod kafka {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Class::Kafka).await })*
        }
    };
}

for_each_class!(
    binary_structured_and_batched_events_reach_the_subscriber_intact,
    malformed_requests_get_400_with_a_reason_and_store_nothing,
    each_trigger_gets_its_own_copy_and_a_non_matching_trigger_gets_nothing,
    exhausted_events_reach_the_triggers_dead_letter_sink_before_the_brokers,
    replies_reach_other_triggers_and_a_reply_loop_stops_at_the_ttl,
    a_slow_subscriber_does_not_delay_another_trigger,
    each_filter_dialect_receives_exactly_its_events,
    dotted_broker_and_trigger_names_deliver,
    a_kill_9_under_load_loses_no_accepted_event,
);

/// Events posted while the server is killed with -9 and restarted: every one
/// answered 202 reaches the subscriber; duplicates stay within the in-flight bound.
async fn a_kill_9_under_load_loses_no_accepted_event(class: Class) {
    const TOTAL: usize = 1500;
    let Some((args, _nats)) = class_args(class, "kill_9_under_load") else { return };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dir = tempdir();
    let mut s = Server::start(dir.path(), &args);
    // A slowish subscriber, so that deliveries are in flight when the server dies.
    let sink = Sink::with(accept_all(), Duration::from_millis(2)).await;
    s.apply_ok(&(broker("default", "") + "---\n" + &trigger("all", "default", "", &sink.url, ""))).await;
    let url = s.broker_url("default", "default");
    let accepted = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let load = tokio::spawn({
        let (url, accepted) = (url.clone(), accepted.clone());
        async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(0..TOTAL)
                .for_each_concurrent(16, |i| {
                    let (url, accepted) = (url.clone(), accepted.clone());
                    async move {
                        let id = format!("k{i}");
                        let sent = client()
                            .post(&url)
                            .header("ce-specversion", "1.0")
                            .header("ce-id", &id)
                            .header("ce-source", "/load")
                            .header("ce-type", "load")
                            .body("{}")
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status() == 202) {
                            accepted.lock().unwrap().insert(id);
                        }
                    }
                })
                .await
        }
    });
    sink.wait_until("deliveries under way", |g| g.len() >= 200).await;
    s.kill();
    load.await.unwrap();
    let s2 = Server::start(dir.path(), &args);
    let accepted = accepted.lock().unwrap().clone();
    // 200 deliveries had arrived; up to 16 of their senders (the load's concurrency) may not
    // have seen their 202 before the kill cut the connection.
    assert!(accepted.len() + 16 >= 200, "the load ran before the kill ({} accepted)", accepted.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got: std::collections::HashSet<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
        let missing = accepted.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{missing} accepted events never arrived after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = sink.events();
    let dups = got.len() - got.iter().map(|r| &r.event.id).collect::<std::collections::HashSet<_>>().len();
    // In flight when killed (100 per trigger), plus what was acknowledged and not yet
    // committed (Kafka commits every 100 ms).
    let bound = 600;
    println!("{class:?}: kill -9 under load, {} accepted, {dups} duplicate(s), bound {bound}", accepted.len());
    assert!(dups <= bound, "{dups} duplicates exceed {bound}");
    drop(s2);
}

/// Kubernetes object names are DNS-1123 subdomains: dots are allowed, and
/// storage names (log directories, streams, consumers) keep them apart.
async fn dotted_broker_and_trigger_names_deliver(class: Class) {
    let a = Sink::start().await;
    let b = Sink::start().await;
    let yaml = broker("team.events", "")
        + "---\n"
        + &broker("team", "")
        + "---\n"
        + &trigger("orders.v1", "team.events", &type_filter("order"), &a.url, "")
        + "---\n"
        + &trigger("orders", "team", &type_filter("order"), &b.url, "");
    let Some((_d, s, _nats)) = server_on(class, "dotted_names", &yaml, &[]).await else { return };
    assert_eq!(send(&s.broker_url("default", "team.events"), "e1", "order", "x").await, 202);
    assert_eq!(send(&s.broker_url("default", "team"), "e2", "order", "y").await, 202);
    let got = a.wait_for(1).await;
    assert_eq!(got[0].event.id, "e1");
    let got = b.wait_for(1).await;
    assert_eq!(got[0].event.id, "e2");
    let t = s.get("triggers", "default", "orders.v1").await;
    assert_eq!(
        t["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()["status"],
        "True",
        "{t}"
    );
}

async fn binary_structured_and_batched_events_reach_the_subscriber_intact(class: Class) {
    let sink = Sink::start().await;
    let Some((_d, s, _nats)) = server_on(
        class,
        "binary_structured_an",
        &(broker("default", "") + "---\n" + &trigger("all", "default", "", &sink.url, "")),
        &[],
    )
    .await
    else {
        return;
    };
    let url = s.broker_url("default", "default");
    let c = client();

    let r = c
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin-1")
        .header("ce-source", "/s")
        .header("ce-type", "t.bin")
        .header("ce-myext", "hello%20world")
        .header("ce-subject", "sub")
        .header("content-type", "text/plain")
        .body("payload €")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let structured = r#"{"specversion":"1.0","id":"str-1","source":"/s","type":"t.str","num":7,"flag":true,"datacontenttype":"application/json","data":{"a":[1,2]}}"#;
    let r = c.post(&url).header("content-type", "application/cloudevents+json").body(structured).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let batch = r#"[{"specversion":"1.0","id":"bat-1","source":"/s","type":"t.bat","data_base64":"AAEC"},{"specversion":"1.0","id":"bat-2","source":"/s","type":"t.bat"}]"#;
    let r = c.post(&url).header("content-type", "application/cloudevents-batch+json").body(batch).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let v03 = r#"{"specversion":"0.3","id":"v03-1","source":"/s","type":"t.old","schemaurl":"/schema","data":"x"}"#;
    let r = c.post(&url).header("content-type", "application/cloudevents+json").body(v03).send().await.unwrap();
    assert_eq!(r.status(), 202);

    let got = sink.wait_until("five events", |g| g.len() >= 5).await;
    let by_id =
        |id: &str| got.iter().find(|r| r.event.id == id).unwrap_or_else(|| panic!("{id} not delivered")).clone();
    let b = by_id("bin-1");
    assert_eq!(
        (b.event.ty.as_str(), b.event.source.as_str(), b.event.subject.as_deref()),
        ("t.bin", "/s", Some("sub"))
    );
    assert_eq!(b.event.extension("myext"), Some(&ExtValue::String("hello world".into())));
    assert_eq!(b.event.data.as_deref(), Some("payload €".as_bytes()));
    assert_eq!(b.headers["content-type"], "text/plain");
    assert!(b.event.extension("knativearrivaltime").is_some());
    assert_eq!(b.event.extension_i64("knativebrokerttl"), Some(255));
    let st = by_id("str-1");
    assert_eq!(st.event.extension_i64("num"), Some(7));
    assert_eq!(st.event.extension("flag").map(|v| v.to_canonical().into_owned()).as_deref(), Some("true"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(st.event.data.as_ref().unwrap()).unwrap(),
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(by_id("bat-1").event.data.as_deref(), Some(&[0u8, 1, 2][..]));
    assert!(by_id("bat-2").event.data.is_none());
    let old = by_id("v03-1");
    assert_eq!(old.headers["ce-specversion"], "0.3", "a 0.3 event is delivered as 0.3");
    assert_eq!(old.event.dataschema.as_deref(), Some("/schema"));
}

async fn malformed_requests_get_400_with_a_reason_and_store_nothing(class: Class) {
    let sink = Sink::start().await;
    let Some((_d, s, _nats)) = server_on(
        class,
        "malformed_requests_g",
        &(broker("default", "") + "---\n" + &trigger("all", "default", "", &sink.url, "")),
        &["--max-event-size", "65536"],
    )
    .await
    else {
        return;
    };
    let url = s.broker_url("default", "default");
    let c = client();
    let ok = [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")];
    let binary = |skip: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let mut r = c.post(&url);
        for (k, v) in ok.iter().filter(|(k, _)| *k != skip).chain(extra.iter()) {
            r = r.header(*k, *v);
        }
        r
    };
    let structured =
        |body: &'static str| c.post(&url).header("content-type", "application/cloudevents+json").body(body);
    let cases: Vec<(&str, reqwest::RequestBuilder, &str)> = vec![
        ("missing id", binary("ce-id", vec![]), "missing required attribute 'id'"),
        ("empty type", binary("ce-type", vec![("ce-type", "")]), "'type' is empty"),
        (
            "specversion 19.0",
            binary("ce-specversion", vec![("ce-specversion", "19.0")]),
            "unsupported specversion '19.0'",
        ),
        ("bad attribute name", binary("", vec![("ce-bad_name", "x")]), "invalid attribute name"),
        ("bad percent-encoding", binary("", vec![("ce-ext", "%G1")]), "invalid percent-encoding"),
        ("bad JSON", structured("{not json"), "invalid JSON"),
        (
            "data with data_base64",
            structured(r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"a","data_base64":"YQ=="}"#),
            "mutually exclusive",
        ),
        (
            "missing source (structured)",
            structured(r#"{"specversion":"1.0","id":"1","type":"t"}"#),
            "missing required attribute 'source'",
        ),
        ("ttl exhausted", binary("", vec![("ce-knativebrokerttl", "0")]), "knativebrokerttl is 0"),
    ];
    for (name, req, want) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{name}");
        let body = r.text().await.unwrap();
        assert!(body.contains(want), "{name}: body '{body}' lacks '{want}'");
    }
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST, OPTIONS");
    let r = c.request(reqwest::Method::OPTIONS, &url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["allow"], "POST, OPTIONS");
    assert_eq!(send(&s.broker_url("default", "nope"), "x", "t", "{}").await, 404);
    let big = "x".repeat(70_000);
    assert_eq!(send(&url, "big", "t", &big).await, 413);

    // Nothing above was stored: a fence event is the only one delivered.
    assert_eq!(send(&url, "fence", "t", "{}").await, 202);
    sink.wait_for_id("fence").await;
    let ids: Vec<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(ids, vec!["fence"]);
}

async fn each_trigger_gets_its_own_copy_and_a_non_matching_trigger_gets_nothing(class: Class) {
    let (a, b, c) = (Sink::start().await, Sink::start().await, Sink::start().await);
    let yaml = [
        broker("default", ""),
        trigger("a", "default", &type_filter("com.x"), &a.url, ""),
        trigger("b", "default", "  filters:\n    - exact:\n        type: com.x\n", &b.url, ""),
        trigger("c", "default", &type_filter("com.y"), &c.url, ""),
    ]
    .join("---\n");
    let Some((_d, s, _nats)) = server_on(class, "each_trigger_gets_it", &yaml, &[]).await else {
        return;
    };
    let url = s.broker_url("default", "default");
    for i in 0..5 {
        assert_eq!(send(&url, &format!("x-{i}"), "com.x", "{}").await, 202);
    }
    assert_eq!(send(&url, "fence", "com.y", "{}").await, 202);
    let ga = a.wait_for(5).await;
    let gb = b.wait_for(5).await;
    c.wait_for_id("fence").await;
    let ids = |g: &[Received]| {
        let mut v: Vec<String> = g.iter().map(|r| r.event.id.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&ga), ids(&gb));
    assert_eq!(ids(&ga), (0..5).map(|i| format!("x-{i}")).collect::<Vec<_>>());
    assert_eq!(ids(&c.events()), vec!["fence"]);
}

async fn exhausted_events_reach_the_triggers_dead_letter_sink_before_the_brokers(class: Class) {
    let failing =
        Sink::with(Arc::new(|_, _| (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()), Duration::ZERO).await;
    let (dls_trigger, dls_broker) = (Sink::start().await, Sink::start().await);
    let quick = "  delivery:\n    retry: 2\n    backoffPolicy: linear\n    backoffDelay: PT0.01S\n";
    let yaml = [
        broker("default", &format!("{quick}    deadLetterSink:\n      uri: {}\n", dls_broker.url)),
        trigger(
            "own-dls",
            "default",
            &type_filter("a"),
            &failing.url,
            &format!("{quick}    deadLetterSink:\n      uri: {}\n", dls_trigger.url),
        ),
        trigger("broker-dls", "default", &type_filter("b"), &failing.url, ""),
    ]
    .join("---\n");
    let Some((_d, s, _nats)) = server_on(class, "exhausted_events_rea", &yaml, &[]).await else {
        return;
    };
    let url = s.broker_url("default", "default");
    assert_eq!(send(&url, "ev-a", "a", "{\"k\":1}").await, 202);
    assert_eq!(send(&url, "ev-b", "b", "{}").await, 202);
    let got = dls_trigger.wait_for(1).await;
    let d = &got[0].event;
    assert_eq!(d.id, "ev-a");
    assert_eq!(d.extension("knativeerrordest"), Some(&ExtValue::String(failing.url.clone())));
    assert_eq!(d.extension("knativeerrorcode"), Some(&ExtValue::String("500".into())));
    use base64::Engine as _;
    let data = match d.extension("knativeerrordata") {
        Some(ExtValue::String(s)) => base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(data, b"boom");
    assert_eq!(d.data.as_deref(), Some(&b"{\"k\":1}"[..]));
    let gb = dls_broker.wait_for(1).await;
    assert_eq!(gb[0].event.id, "ev-b", "the broker's DLS serves triggers without their own");
    // ev-a: 1 attempt + 2 retries; ev-b: the broker's policy, also 3 attempts.
    failing.wait_for(6).await;
    assert_eq!(dls_trigger.count(), 1);
    assert_eq!(dls_broker.count(), 1);
}

async fn replies_reach_other_triggers_and_a_reply_loop_stops_at_the_ttl(class: Class) {
    let replier = Sink::with(
        Arc::new(|r, _| {
            let ty = if r.event.ty == "question" { "answer" } else { "loop" };
            (
                StatusCode::OK,
                [
                    ("ce-specversion", "1.0"),
                    ("ce-id", format!("re-{}", r.event.id).as_str()),
                    ("ce-source", "/replier"),
                    ("ce-type", ty),
                ],
                "reply body",
            )
                .into_response()
        }),
        Duration::ZERO,
    )
    .await;
    let answers = Sink::start().await;
    let yaml = [
        broker("default", ""),
        trigger("ask", "default", &type_filter("question"), &replier.url, ""),
        trigger("answers", "default", &type_filter("answer"), &answers.url, ""),
        trigger("loop", "default", &type_filter("loop"), &replier.url, ""),
    ]
    .join("---\n");
    let Some((_d, s, _nats)) = server_on(class, "replies_reach_other_", &yaml, &[]).await else {
        return;
    };
    let url = s.broker_url("default", "default");
    assert_eq!(send(&url, "q1", "question", "{}").await, 202);
    let got = answers.wait_for(1).await;
    assert_eq!((got[0].event.id.as_str(), got[0].event.source.as_str()), ("re-q1", "/replier"));
    assert_eq!(got[0].event.extension_i64("knativebrokerttl"), Some(254));
    assert_eq!(got[0].event.data.as_deref(), Some(&b"reply body"[..]));

    assert_eq!(send(&url, "l", "loop", "{}").await, 202);
    // TTL 255 on entry: deliveries carry 255, 254, ..., 1; the reply to the last is dropped.
    let loops =
        replier.wait_until("255 loop deliveries", |g| g.iter().filter(|r| r.event.ty == "loop").count() >= 255).await;
    let ttls: Vec<i64> = loops
        .iter()
        .filter(|r| r.event.ty == "loop")
        .map(|r| r.event.extension_i64("knativebrokerttl").unwrap())
        .collect();
    assert_eq!(ttls.last(), Some(&1));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let m = s.metrics().await;
        if let Some(l) = m.lines().find(|l| {
            l.starts_with("spate_events_dropped_total")
                && l.contains("ttl_exhausted")
                && l.contains("trigger/default/loop")
        }) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the TTL drop was never counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.ends_with(" 1"), "{line}");
    assert_eq!(replier.events().iter().filter(|r| r.event.ty == "loop").count(), 255);
    let health = client().get(format!("{}/healthz", s.admin)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

async fn a_slow_subscriber_does_not_delay_another_trigger(class: Class) {
    let slow = Sink::with(accept_all(), Duration::from_secs(5)).await;
    let fast = Sink::start().await;
    let ordered = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: slow\n  annotations:\n    kafka.eventing.knative.dev/delivery.order: ordered\nspec:\n  broker: default\n  subscriber:\n    uri: ".to_string() + &slow.url + "\n";
    let yaml = [broker("default", ""), ordered, trigger("fast", "default", "", &fast.url, "")].join("---\n");
    let Some((_d, s, _nats)) = server_on(class, "a_slow_subscriber_do", &yaml, &[]).await else {
        return;
    };
    let url = s.broker_url("default", "default");
    assert_eq!(send(&url, "e1", "t", "{}").await, 202);
    slow.wait_for_id("e1").await;
    assert_eq!(send(&url, "e2", "t", "{}").await, 202);
    fast.wait_for_id("e2").await;
    // Fast got e2 while slow is still busy with e1 (and, ordered, has not been sent e2).
    assert_eq!(slow.in_progress.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(slow.events().iter().all(|r| r.event.id != "e2"));
    // Ordered: e2 reaches slow only after e1 was answered.
    let got = slow.wait_for_id("e2").await;
    assert_eq!(got.iter().map(|r| r.event.id.as_str()).collect::<Vec<_>>(), vec!["e1", "e2"]);
    assert!(got[1].at - got[0].at >= Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_status_says_why_it_is_not_ready() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let sub_ref = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-broker\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: other\n";
    s.apply_ok(&[trigger("orphan", "default", "", "http://127.0.0.1:9/", ""), sub_ref.to_string()].join("---\n")).await;
    let t = s.get("triggers", "default", "orphan").await;
    let cond = |v: &serde_json::Value, ty: &str| {
        v["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == ty).cloned().unwrap()
    };
    assert_eq!(cond(&t, "Ready")["status"], "False");
    assert_eq!(cond(&t, "Ready")["reason"], "BrokerDoesNotExist");
    assert!(cond(&t, "BrokerReady")["message"].as_str().unwrap().contains("Broker default/default does not exist"));
    s.apply_ok(&broker("default", "")).await;
    let t = s.get("triggers", "default", "orphan").await;
    assert_eq!(cond(&t, "Ready")["status"], "True");
    assert_eq!(t["status"]["subscriberUri"], "http://127.0.0.1:9/");
    let t = s.get("triggers", "default", "to-broker").await;
    assert_eq!(cond(&t, "SubscriberResolved")["status"], "False");
    assert!(
        cond(&t, "SubscriberResolved")["message"].as_str().unwrap().contains("Broker default/other does not exist")
    );
    s.apply_ok(&broker("other", "")).await;
    let t = s.get("triggers", "default", "to-broker").await;
    assert_eq!(t["status"]["subscriberUri"], s.broker_url("default", "other"));
    let b = s.get("brokers", "default", "default").await;
    assert_eq!(b["status"]["address"]["url"], s.broker_url("default", "default"));

    // spec.broker is immutable.
    let (code, v) = s.apply(&trigger("orphan", "other", "", "http://127.0.0.1:9/", "")).await;
    assert_eq!(code, 422);
    assert!(v["errors"][0].as_str().unwrap().contains("spec.broker: is immutable"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_and_apply_reject_an_invalid_file_listing_every_error() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        [
            broker("good", ""),
            trigger(
                "t",
                "good",
                "  filters:\n    - exact:\n        Type: x\n",
                "not-a-url",
                "  delivery:\n    backoffDelay: 2s\n",
            ),
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b2\nspec:\n  colour: red\n"
                .to_string(),
        ]
        .join("---\n"),
    )
    .unwrap();
    let want = [
        "document 2 (Trigger default/t): spec.filters[0].exact.Type: invalid attribute key 'Type'",
        "document 2 (Trigger default/t): spec.subscriber.uri: 'not-a-url' must be an absolute http",
        "document 2 (Trigger default/t): spec.delivery.backoffDelay: '2s' is not an ISO 8601 duration",
        "document 3 (Broker default/b2): spec.colour: unknown field",
    ];
    let out = std::process::Command::new(BIN).args(["validate", "-f"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for w in want {
        assert!(err.contains(w), "validate output lacks '{w}':\n{err}");
    }
    let out = std::process::Command::new(BIN).args(["apply", "--server", &s.admin, "-f"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for w in want {
        assert!(err.contains(w), "apply output lacks '{w}':\n{err}");
    }
    assert!(err.contains("nothing was applied"), "{err}");
    let list = s.admin_json("/apis/eventing.knative.dev/v1/brokers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "the valid Broker in the file must not be applied");

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, broker("good", "")).unwrap();
    let out = std::process::Command::new(BIN).args(["apply", "--server", &s.admin, "-f"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        std::process::Command::new(BIN).args(["get", "brokers", "--server", &s.admin, "-o", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["metadata"]["name"], "good");
}

async fn each_filter_dialect_receives_exactly_its_events(class: Class) {
    let mut sinks = vec![];
    for _ in 0..6 {
        sinks.push(Sink::start().await);
    }
    let ordered = |name: &str, filters: &str, url: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations:\n    kafka.eventing.knative.dev/delivery.order: ordered\nspec:\n  broker: default\n  filters:\n{filters}  subscriber:\n    uri: {url}\n"
        )
    };
    let yaml = [
        broker("default", ""),
        ordered("cesql", "    - cesql: \"type LIKE 'com.shop.%' AND priority > 5 OR EXISTS urgent\"\n", &sinks[0].url),
        ordered("prefix", "    - prefix:\n        type: com.shop.\n", &sinks[1].url),
        ordered("suffix", "    - suffix:\n        source: /eu\n", &sinks[2].url),
        ordered("anynot", "    - any:\n        - exact:\n            type: com.shop.fence\n        - not:\n            prefix:\n              type: com.\n", &sinks[3].url),
        ordered("celdata", "    - cel: \"event.type.startsWith('com.shop.') && data.amount > 10\"\n", &sinks[4].url),
        ordered("exactall", "    - all:\n        - exact:\n            tier: gold\n        - suffix:\n            source: /eu\n", &sinks[5].url),
    ]
    .join("---\n");
    let Some((_d, s, _nats)) = server_on(class, "each_filter_dialect_", &yaml, &[]).await else {
        return;
    };
    let url = s.broker_url("default", "default");
    let c = client();
    /// (id, type, source, extension headers)
    type Sent<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);
    let events: [Sent; 5] = [
        ("e1", "com.shop.order", "/s/eu", &[("ce-priority", "7"), ("ce-tier", "gold"), ("x-amount", "20")]),
        ("e2", "com.shop.order", "/s/us", &[("ce-priority", "3"), ("ce-tier", "gold"), ("x-amount", "5")]),
        ("e3", "other.thing", "/x/eu", &[]),
        ("e4", "other.thing", "/x/us", &[("ce-urgent", "1")]),
        // The fence carries `priority`: in CESQL a missing attribute inside `AND`
        // is an error that propagates through `OR`, and an error means no match.
        (
            "fence",
            "com.shop.fence",
            "/f/eu",
            &[("ce-urgent", "yes"), ("ce-priority", "9"), ("ce-tier", "gold"), ("x-amount", "99")],
        ),
    ];
    for (id, ty, source, exts) in events {
        let mut r = c
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-type", ty)
            .header("ce-source", source);
        for (k, v) in exts {
            // `x-amount` becomes the JSON payload, for the CEL trigger on data.
            r = match k.strip_prefix("x-") {
                Some(field) => r.header("content-type", "application/json").body(format!("{{\"{field}\": {v}}}")),
                None => r.header(*k, *v),
            };
        }
        assert_eq!(r.send().await.unwrap().status(), 202);
    }
    // cesql, prefix, suffix, any/not, cel on data, all/exact: one expectation per sink.
    let want: [&[&str]; 6] = [
        &["e1", "e4", "fence"],
        &["e1", "e2", "fence"],
        &["e1", "e3", "fence"],
        &["e3", "e4", "fence"],
        &["e1", "fence"],
        &["e1", "fence"],
    ];
    assert_eq!(want.len(), sinks.len());
    for (sink, want) in sinks.iter().zip(want) {
        if class == Class::Kafka {
            // Kafka orders per partition only (Knative's semantics); unkeyed events
            // spread over the topic's partitions.
            let got = sink.wait_until("every matching event", |g| g.len() >= want.len()).await;
            let mut ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
            ids.sort_unstable();
            assert_eq!(ids, want);
            continue;
        }
        // Ordered triggers deliver in log order: once the fence arrives, nothing else is pending.
        let got = sink.wait_for_id("fence").await;
        let ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
        assert_eq!(ids, want);
    }
}

/// The broker's router hands events to attached triggers; a trigger that cannot
/// keep up is detached, catches up alone and re-attaches. Across those handoffs
/// nothing may be lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_handoffs_lose_nothing_and_duplicate_nothing() {
    const N: usize = 2000;
    let fast = Sink::start().await;
    // At most 200 events/s (one in flight, 5 ms each): slower than the ingress even on a loaded
    // CI machine (400/s and more), so its 64-event queue overflows and it is detached.
    let slow = Sink::with(accept_all(), Duration::from_millis(5)).await;
    let slow_trigger = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: slow\n  annotations:\n    spate.dev/max-in-flight: \"1\"\nspec:\n  broker: default\n  subscriber:\n    uri: {}\n",
        slow.url
    );
    let yaml = [broker("default", ""), trigger("fast", "default", "", &fast.url, ""), slow_trigger].join("---\n");
    let Some((_d, s, _)) = server_on(Class::Embedded, "router", &yaml, &[]).await else { return };
    let url = s.broker_url("default", "default");
    let c = client();
    let mut sends = tokio::task::JoinSet::new();
    for chunk in 0..8 {
        let (c, url) = (c.clone(), url.clone());
        sends.spawn(async move {
            for i in (chunk..N).step_by(8) {
                let r = c
                    .post(&url)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", format!("h{i}"))
                    .header("ce-source", "/h")
                    .header("ce-type", "t")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        });
    }
    while sends.join_next().await.is_some() {}
    for (name, sink) in [("fast", &fast), ("slow", &slow)] {
        let got = sink.wait_for(N).await;
        let mut ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), N, "{name}: every event once");
        assert_eq!(got.len(), N, "{name}: no duplicates in a run without faults");
    }
    let m = s.metrics().await;
    let attaches = |t: &str| {
        m.lines()
            .find(|l| l.starts_with("spate_trigger_attaches_total") && l.contains(&format!("trigger/default/{t}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(attaches("fast") >= 1.0, "the fast trigger was fed by the router:\n{m}");
    assert!(attaches("slow") >= 2.0, "the slow trigger was detached and re-attached at least once:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brokers_class_is_defaulted_once_and_kept_across_a_changed_server_default() {
    let dir = tempdir();
    let sink = Sink::start().await;
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(&[broker("default", ""), trigger("t", "default", "", &sink.url, "")].join("---\n")).await;
    let b = s.get("brokers", "default", "default").await;
    assert_eq!(b["metadata"]["annotations"]["eventing.knative.dev/broker.class"], "MTChannelBasedBroker", "{b}");
    drop(s);
    // Restarted with another default: the stored broker keeps its class (and its events' storage).
    let s = Server::start(
        dir.path(),
        &["--default-broker-class", "NatsJetStreamBroker", "--nats-url", "nats://127.0.0.1:1"],
    );
    let b = s.get("brokers", "default", "default").await;
    assert_eq!(b["metadata"]["annotations"]["eventing.knative.dev/broker.class"], "MTChannelBasedBroker");
    assert_eq!(send(&s.broker_url("default", "default"), "kept", "t", "{}").await, 202);
    sink.wait_for_id("kept").await;
    let out = std::process::Command::new(BIN).args(["get", "brokers", "--server", &s.admin]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("CLASS") && table.contains("MTChannelBasedBroker"), "{table}");
}

/// Knative's `knative-eventing/config-br-defaults`: a Broker naming no class or config gets its
/// namespace's default (else the cluster default), written into it once; an update keeps the
/// class it was given; a `default-br-config` that does not read is refused, naming its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_defaults_come_from_config_br_defaults() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--nats-url", "nats://127.0.0.1:1"]);
    let defaults = |team_class: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-br-defaults, namespace: knative-eventing}}\ndata:\n  default-br-config: |\n    clusterDefault:\n      brokerClass: MTChannelBasedBroker\n      apiVersion: v1\n      kind: ConfigMap\n      name: config-br-default-channel\n      namespace: knative-eventing\n    namespaceDefaults:\n      team:\n        brokerClass: {team_class}\n"
        )
    };
    let b = |name: &str, ns: &str| {
        format!("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  namespace: {ns}\n")
    };
    s.apply_ok(&[defaults("NatsJetStreamBroker"), b("a", "default"), b("b", "team")].join("---\n")).await;
    let class = |v: &serde_json::Value| v["metadata"]["annotations"]["eventing.knative.dev/broker.class"].clone();
    let a = s.get("brokers", "default", "a").await;
    assert_eq!(class(&a), "MTChannelBasedBroker", "{a}");
    assert_eq!(a["spec"]["config"]["name"], "config-br-default-channel", "{a}");
    let team = s.get("brokers", "team", "b").await;
    assert_eq!(class(&team), "NatsJetStreamBroker", "{team}");
    // New defaults: the existing broker keeps its class when applied again.
    s.apply_ok(&[defaults("Kafka"), b("b", "team")].join("---\n")).await;
    assert_eq!(class(&s.get("brokers", "team", "b").await), "NatsJetStreamBroker");
    s.apply_ok(&b("c", "team")).await;
    assert_eq!(class(&s.get("brokers", "team", "c").await), "Kafka", "a new broker takes the new default");
    let (code, v) = s.apply(&defaults("Nope")).await;
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("data.default-br-config"), "{v}");
}
