//! Channels, Subscriptions, Sequence and Parallel on a running `spate serve`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::*;
use spate_core::CloudEvent;

/// A subscriber response carrying `ev` as a binary-mode reply.
fn reply_with(ev: &CloudEvent) -> Response {
    let mut h = HeaderMap::new();
    let body = spate_core::http_codec::encode_binary(ev, &mut h);
    (StatusCode::OK, h, body).into_response()
}

/// A step that appends `suffix` to the text payload and replies.
async fn transformer(suffix: &'static str) -> Sink {
    Sink::with(
        Arc::new(move |r, _| {
            let mut ev = r.event.clone();
            let data = String::from_utf8_lossy(ev.data.as_deref().unwrap_or_default()).into_owned();
            ev.data = Some(Bytes::from(format!("{data}{suffix}")));
            ev.datacontenttype = Some("text/plain".into());
            reply_with(&ev)
        }),
        Duration::ZERO,
    )
    .await
}

fn yaml_channel(name: &str) -> String {
    format!("apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: {name}\n")
}

fn subscription(name: &str, channel: &str, subscriber: &str, reply: &str) -> String {
    format!(
        "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: {name}\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: {channel}\n  subscriber:\n{subscriber}{reply}"
    )
}

fn uri(u: &str) -> String {
    format!("    uri: {u}\n")
}

async fn address(s: &Server, group_plural: &str, name: &str) -> String {
    let v = s.admin_json(&format!("/apis/{group_plural}/namespaces/default/{name}")).await;
    v["status"]["address"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {group_plural}/{name}: {v}"))
        .to_string()
}

async fn post(url: &str, id: &str, ty: &str, data: &str) -> u16 {
    send_as(url, id, ty, "text/plain", data).await
}

async fn start(yaml: &str) -> (tempfile::TempDir, Server) {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(yaml).await;
    (dir, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_feeds_every_subscription_and_a_reply_reaches_a_brokers_trigger() {
    let a = Sink::start().await;
    let replier = Sink::with(
        Arc::new(|r, _| {
            let mut ev = r.event.clone();
            ev.id = format!("re-{}", ev.id);
            ev.ty = "from.b".into();
            reply_with(&ev)
        }),
        Duration::ZERO,
    )
    .await;
    let at_trigger = Sink::start().await;
    let broker_ref =
        "  reply:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n";
    let yaml = [
        yaml_channel("ch"),
        subscription("sub-a", "ch", &uri(&a.url), ""),
        subscription("sub-b", "ch", &uri(&replier.url), broker_ref),
        broker("default", ""),
        trigger("from-b", "default", &type_filter("from.b"), &at_trigger.url, ""),
    ]
    .join("---\n");
    let (_d, s) = start(&yaml).await;
    let ch = address(&s, "messaging.knative.dev/v1", "inmemorychannels/ch").await;
    assert_eq!(ch, format!("{}/channels/default/ch", s.data));
    for i in 0..5 {
        assert_eq!(post(&ch, &format!("c{i}"), "t", "x").await, 202);
    }
    a.wait_for(5).await;
    replier.wait_for(5).await;
    let got = at_trigger.wait_for(5).await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["re-c0", "re-c1", "re-c2", "re-c3", "re-c4"]);
    let sub = s.admin_json("/apis/messaging.knative.dev/v1/namespaces/default/subscriptions/sub-b").await;
    assert_eq!(sub["status"]["physicalSubscription"]["subscriberUri"], replier.url.as_str());
    assert_eq!(sub["status"]["physicalSubscription"]["replyUri"], s.broker_url("default", "default"));
    let chan = s.admin_json("/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels/ch").await;
    assert_eq!(chan["status"]["subscribers"].as_array().unwrap().len(), 2, "{chan}");
    // Unknown channel: 404.
    assert_eq!(post(&format!("{}/channels/default/nope", s.data), "x", "t", "x").await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_applies_its_steps_in_order_and_a_failing_step_dead_letters() {
    let (t1, t2, t3) = (transformer("-1").await, transformer("-2").await, transformer("-3").await);
    let end = Sink::start().await;
    let failing = Sink::with(Arc::new(|_, _| StatusCode::INTERNAL_SERVER_ERROR.into_response()), Duration::ZERO).await;
    let dls = Sink::start().await;
    let seq = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n  steps:\n    - uri: {}\n    - uri: {}\n    - uri: {}\n  reply:\n    uri: {}\n",
        t1.url, t2.url, t3.url, end.url
    );
    let bad = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: bad\nspec:\n  steps:\n    - uri: {}\n    - uri: {}\n      delivery:\n        retry: 2\n        backoffPolicy: linear\n        backoffDelay: PT0.01S\n        deadLetterSink:\n          uri: {}\n  reply:\n    uri: {}\n",
        t1.url, failing.url, dls.url, end.url
    );
    let (_d, s) = start(&[seq, bad].join("---\n")).await;
    let seq_url = address(&s, "flows.knative.dev/v1", "sequences/seq").await;
    assert_eq!(post(&seq_url, "s1", "t", "start").await, 202);
    let got = end.wait_for_id("s1").await;
    assert_eq!(got[0].event.data.as_deref(), Some(&b"start-1-2-3"[..]), "three transformations in order");

    let bad_url = address(&s, "flows.knative.dev/v1", "sequences/bad").await;
    assert_eq!(post(&bad_url, "b1", "t", "start").await, 202);
    let dead = dls.wait_for(1).await;
    assert_eq!(dead[0].event.id, "b1");
    assert_eq!(dead[0].event.data.as_deref(), Some(&b"start-1"[..]), "the failing step's input is dead-lettered");
    assert_eq!(
        dead[0].event.extension("knativeerrorcode").map(|v| v.to_canonical().into_owned()).as_deref(),
        Some("500")
    );
    failing.wait_for(3).await;
    assert!(end.events().iter().all(|r| r.event.id != "b1"));

    let v = s.admin_json("/apis/flows.knative.dev/v1/namespaces/default/sequences/seq").await;
    assert_eq!(v["status"]["channelStatuses"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["status"]["subscriptionStatuses"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["status"]["subscriptionStatuses"][1]["subscription"]["name"], "seq-kn-sequence-1");
}

/// A branch filter: returns the event when `data` parses as an even (or odd) number.
async fn parity_filter(even: bool) -> Sink {
    Sink::with(
        Arc::new(move |r, _| {
            let n: i64 =
                String::from_utf8_lossy(r.event.data.as_deref().unwrap_or_default()).trim().parse().unwrap_or(-1);
            if n >= 0 && (n % 2 == 0) == even { reply_with(&r.event) } else { StatusCode::ACCEPTED.into_response() }
        }),
        Duration::ZERO,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_routes_each_event_to_exactly_one_branch_and_replies_globally() {
    let (even_f, odd_f) = (parity_filter(true).await, parity_filter(false).await);
    let (even, odd) = (transformer(" even").await, transformer(" odd").await);
    let global = Sink::start().await;
    let par = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: par\nspec:\n  branches:\n    - filter:\n        uri: {}\n      subscriber:\n        uri: {}\n    - filter:\n        uri: {}\n      subscriber:\n        uri: {}\n  reply:\n    uri: {}\n",
        even_f.url, even.url, odd_f.url, odd.url, global.url
    );
    let (_d, s) = start(&par).await;
    let url = address(&s, "flows.knative.dev/v1", "parallels/par").await;
    for n in 0..10 {
        assert_eq!(post(&url, &format!("n{n}"), "num", &n.to_string()).await, 202);
    }
    let replies = global.wait_for(10).await;
    let mut data: Vec<String> =
        replies.iter().map(|r| String::from_utf8_lossy(r.event.data.as_deref().unwrap()).into_owned()).collect();
    data.sort();
    let mut want: Vec<String> = (0..10).map(|n| format!("{n} {}", if n % 2 == 0 { "even" } else { "odd" })).collect();
    want.sort();
    assert_eq!(data, want, "each event reached exactly one branch, and every branch reply reached the global reply");
    assert_eq!(even.count(), 5);
    assert_eq!(odd.count(), 5);
    let v = s.admin_json("/apis/flows.knative.dev/v1/namespaces/default/parallels/par").await;
    assert_eq!(v["status"]["branchStatuses"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["status"]["ingressChannelStatus"]["channel"]["name"], "par-kn-parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_feeds_a_sequence_whose_step_is_a_parallel() {
    let t = transformer("-p").await;
    let after = transformer("-after").await;
    let end = Sink::start().await;
    // A Parallel answers 202 and replies through its own `reply` (as in Knative): it continues
    // into the Sequence's next channel, whose name is deterministic (`<sequence>-kn-sequence-<k>`).
    let par = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Parallel\nmetadata:\n  name: inner\nspec:\n  branches:\n    - subscriber:\n        uri: {}\n  reply:\n    ref:\n      apiVersion: messaging.knative.dev/v1\n      kind: InMemoryChannel\n      name: outer-kn-sequence-1\n",
        t.url
    );
    let seq = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: outer\nspec:\n  steps:\n    - ref:\n        apiVersion: flows.knative.dev/v1\n        kind: Parallel\n        name: inner\n    - uri: {}\n  reply:\n    uri: {}\n",
        after.url, end.url
    );
    let trig = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-seq\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: flows.knative.dev/v1\n      kind: Sequence\n      name: outer\n";
    let (_d, s) = start(&[broker("default", ""), par, seq, trig.to_string()].join("---\n")).await;
    assert_eq!(post(&s.broker_url("default", "default"), "e1", "t", "go").await, 202);
    let got = end.wait_for_id("e1").await;
    assert_eq!(got[0].event.data.as_deref(), Some(&b"go-p-after"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_sequence_removes_its_channels_and_reapplying_works() {
    let t = transformer("!").await;
    let end = Sink::start().await;
    let seq = format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  steps:\n    - uri: {}\n  reply:\n    uri: {}\n",
        t.url, end.url
    );
    let (_d, s) = start(&seq).await;
    let url = address(&s, "flows.knative.dev/v1", "sequences/seq").await;
    assert_eq!(post(&url, "a", "t", "x").await, 202);
    end.wait_for_id("a").await;
    let r = client()
        .delete(format!("{}/apis/flows.knative.dev/v1/namespaces/default/sequences/seq", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(post(&url, "b", "t", "x").await, 404, "the sequence's channel is gone");
    s.apply_ok(&seq).await;
    assert_eq!(post(&url, "c", "t", "x").await, 202);
    let got = end.wait_for_id("c").await;
    assert_eq!(got.iter().find(|r| r.event.id == "c").unwrap().event.data.as_deref(), Some(&b"x!"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_channel_admission_names_each_bad_field() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let (code, v) = s
        .apply("apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata:\n  name: k\nspec:\n  numPartitions: 0\n  retentionDuration: P1M\n  replicas: 3\n")
        .await;
    assert_eq!(code, 422);
    let text = v["errors"].to_string();
    for field in ["spec.numPartitions", "spec.retentionDuration", "spec.replicas"] {
        assert!(text.contains(field), "{field} is named: {text}");
    }
    let (code, v) = s
        .apply("apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: c\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1beta1\n    kind: KafkaChannel\n    spec:\n      numPartitions: -1\n")
        .await;
    assert_eq!(code, 422);
    assert!(v["errors"].to_string().contains("spec.channelTemplate.spec.numPartitions"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_sequence_loses_no_accepted_event() {
    editing_a_sequence_drains(Class::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_sequence_on_nats_channels_loses_no_accepted_event() {
    editing_a_sequence_drains(Class::Nats).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_sequence_on_kafka_channels_loses_no_accepted_event() {
    editing_a_sequence_drains(Class::Kafka).await
}

/// A step removed while its channel holds undelivered events: they finish the
/// old path, then the channel's storage (a log, or a NATS stream) is deleted.
async fn editing_a_sequence_drains(class: Class) {
    let Some((args, nats)) = class_args(class, "editing_seq") else { return };
    let template = match class {
        Class::Embedded | Class::Rabbit => "",
        Class::Nats => {
            "  channelTemplate:\n    apiVersion: messaging.knative.dev/v1alpha1\n    kind: NatsJetStreamChannel\n"
        }
        Class::Kafka => {
            "  channelTemplate:\n    apiVersion: messaging.knative.dev/v1beta1\n    kind: KafkaChannel\n    spec:\n      numPartitions: 3\n"
        }
    };
    let t1 = transformer("-1").await;
    let t2 = transformer("-2").await;
    // Step 2 answers 503 until the gate opens, so events pile up in its channel.
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let o = open.clone();
    let gate = Sink::with(
        Arc::new(move |r, _| {
            if !o.load(std::sync::atomic::Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let mut ev = r.event.clone();
            let data = String::from_utf8_lossy(ev.data.as_deref().unwrap_or_default()).into_owned();
            ev.data = Some(Bytes::from(format!("{data}-g")));
            reply_with(&ev)
        }),
        Duration::ZERO,
    )
    .await;
    let end = Sink::start().await;
    let seq = |steps: &[String]| {
        format!(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n{template}  steps:\n{}  reply:\n    uri: {}\n",
            steps.concat(),
            end.url
        )
    };
    let step = |u: &str| {
        format!(
            "    - uri: {u}\n      delivery:\n        retry: 500\n        backoffPolicy: linear\n        backoffDelay: PT0.005S\n"
        )
    };
    let dir = tempdir();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(dir.path(), &args);
    s.apply_ok(&seq(&[step(&t1.url), step(&gate.url)])).await;
    let url = address(&s, "flows.knative.dev/v1", "sequences/seq").await;
    for i in 0..20 {
        assert_eq!(post(&url, &format!("e{i}"), "t", "x").await, 202);
    }
    // Every event has reached step 2's channel (step 2 has seen each one).
    gate.wait_until("each event at the closed step 2", |g| {
        g.iter().map(|r| r.event.id.as_str()).collect::<std::collections::HashSet<_>>().len() == 20
    })
    .await;

    // Remove step 2 while its channel holds all 20 undelivered events.
    s.apply_ok(&seq(&[step(&t1.url)])).await;
    let v = s.admin_json("/apis/flows.knative.dev/v1/namespaces/default/sequences/seq").await;
    assert_eq!(v["status"]["channelStatuses"].as_array().unwrap().len(), 1, "{v}");
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..5 {
        assert_eq!(post(&url, &format!("n{i}"), "t", "x").await, 202);
    }
    let got = end.wait_for(25).await;
    let data = |id: &str| {
        let all: Vec<_> = got.iter().filter(|r| r.event.id == id).collect();
        assert_eq!(all.len(), 1, "{id} delivered exactly once");
        String::from_utf8_lossy(all[0].event.data.as_deref().unwrap()).into_owned()
    };
    for i in 0..20 {
        assert_eq!(data(&format!("e{i}")), "x-1-g", "accepted before the edit: finishes the old path");
    }
    for i in 0..5 {
        assert_eq!(data(&format!("n{i}")), "x-1", "accepted after the edit: the new path");
    }
    // Once drained, the removed step's storage is deleted.
    let log_dir = dir.path().join("logs").join("channel.default.seq-kn-sequence-1");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let exists = match (&nats, class) {
            // Kafka topics are kept when their channel goes (docs/spec-compat.md).
            (_, Class::Kafka) => false,
            (None, _) => log_dir.exists(),
            (Some(n), _) => n.streams().await.iter().any(|s| s.contains("seq-kn-sequence-1")),
        };
        if !exists {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the drained channel's storage was not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Adding a step back reuses the name with a fresh channel.
    s.apply_ok(&seq(&[step(&t1.url), step(&t2.url)])).await;
    assert_eq!(post(&url, "a1", "t", "x").await, 202);
    let got = end.wait_for_id("a1").await;
    assert_eq!(got.iter().find(|r| r.event.id == "a1").unwrap().event.data.as_deref(), Some(&b"x-1-2"[..]));
    assert_eq!(
        end.count(),
        26,
        "nothing else arrived: {:?}",
        end.events().iter().map(|r| &r.event.id).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_channel_delivers_without_touching_the_disk() {
    let sub = Sink::start().await;
    let yaml = format!(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: fast\n  annotations:\n    spate.dev/channel-storage: memory\n---\n{}---\n{}",
        yaml_channel("durable"),
        [subscription("s-fast", "fast", &uri(&sub.url), ""), subscription("s-durable", "durable", &uri(&sub.url), "")]
            .join("---\n")
    );
    let (d, s) = start(&yaml).await;
    let fast = address(&s, "messaging.knative.dev/v1", "inmemorychannels/fast").await;
    let durable = address(&s, "messaging.knative.dev/v1", "inmemorychannels/durable").await;
    assert_eq!(post(&fast, "m1", "t", "x").await, 202);
    assert_eq!(post(&durable, "d1", "t", "x").await, 202);
    sub.wait_for_id("m1").await;
    sub.wait_for_id("d1").await;
    let logs = d.path().join("logs");
    assert!(logs.join("channel.default.durable").is_dir(), "the default channel is on the log");
    assert!(!logs.join("channel.default.fast").exists(), "the memory channel wrote nothing to disk");
}

/// An example manifest from `examples/`, pointed at this server, with its
/// event-display subscribers replaced by `sink`.
fn example(name: &str, s: &Server, sink: &Sink) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name);
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let display = display_urls(&yaml);
    let mut out = yaml.clone();
    for d in display {
        out = out.replace(&d, &sink.url);
    }
    out.replace("http://127.0.0.1:8080", &s.data)
}

/// The `…/_spate/display/<label>` URLs in a manifest.
fn display_urls(yaml: &str) -> Vec<String> {
    yaml.split_whitespace().filter(|w| w.contains("/_spate/display/")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequence_example_runs_as_documented() {
    let sink = Sink::start().await;
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(&example("sequence.yaml", &s, &sink)).await;
    assert_eq!(
        send_as(
            &s.broker_url("default", "default"),
            "p1",
            "dev.example.ping",
            "application/json",
            r#"{"id":1,"message":"Hello world!"}"#
        )
        .await,
        202
    );
    let got = sink.wait_for_id("p1").await;
    assert_eq!(got.len(), 1, "only the final result reaches the display trigger");
    assert_eq!(got[0].event.ty, "samples.http.mod3");
    let v: serde_json::Value = serde_json::from_slice(got[0].event.data.as_deref().unwrap()).unwrap();
    assert_eq!(v["message"], "Hello world! - Handled by 0 - Handled by 1 - Handled by 2");
    assert_eq!(v["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parallel_example_runs_as_documented() {
    let sink = Sink::start().await;
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(&example("parallel.yaml", &s, &sink)).await;
    for n in 1..=6 {
        let code = send_as(
            &s.broker_url("default", "default"),
            &format!("n{n}"),
            "dev.example.number",
            "application/json",
            &format!(r#"{{"n":{n}}}"#),
        )
        .await;
        assert_eq!(code, 202);
    }
    let got = sink.wait_for(6).await;
    for n in 1..=6 {
        let all: Vec<_> = got.iter().filter(|r| r.event.id == format!("n{n}")).collect();
        assert_eq!(all.len(), 1, "n{n} reaches exactly one branch");
        let v: serde_json::Value = serde_json::from_slice(all[0].event.data.as_deref().unwrap()).unwrap();
        let (ty, msg) = if n % 2 == 0 {
            ("samples.parallel.even", "we are even!")
        } else {
            ("samples.parallel.odd", "we are odd!")
        };
        assert_eq!((all[0].event.ty.as_str(), v["message"].as_str().unwrap()), (ty, msg), "n{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_jetstream_channel_feeds_its_subscriptions_and_a_sequence_runs_on_nats_channels() {
    let Some((args, Some(_nats))) = class_args(Class::Nats, "natschannel") else { return };
    let (a, b) = (Sink::start().await, Sink::start().await);
    let (t1, t2) = (transformer("-1").await, transformer("-2").await);
    let end = Sink::start().await;
    let sub = |name: &str, url: &str| {
        format!(
            "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: {name}\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1alpha1\n    kind: NatsJetStreamChannel\n    name: nc\n  subscriber:\n    uri: {url}\n"
        )
    };
    let yaml = [
        "apiVersion: messaging.knative.dev/v1alpha1\nkind: NatsJetStreamChannel\nmetadata:\n  name: nc\nspec:\n  stream:\n    config:\n      maxAge: 1h\n".to_string(),
        sub("sa", &a.url),
        sub("sb", &b.url),
        format!(
            "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata:\n  name: seq\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1alpha1\n    kind: NatsJetStreamChannel\n  steps:\n    - uri: {}\n    - uri: {}\n  reply:\n    uri: {}\n",
            t1.url, t2.url, end.url
        ),
    ]
    .join("---\n");
    let dir = tempdir();
    let s = Server::start(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    s.apply_ok(&yaml).await;
    let url = address(&s, "messaging.knative.dev/v1alpha1", "natsjetstreamchannels/nc").await;
    for i in 0..5 {
        assert_eq!(post(&url, &format!("n{i}"), "t", "x").await, 202);
    }
    for sink in [&a, &b] {
        let got = sink.wait_for(5).await;
        let mut ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["n0", "n1", "n2", "n3", "n4"], "every subscription gets every event once");
    }
    let seq_url = address(&s, "flows.knative.dev/v1", "sequences/seq").await;
    assert_eq!(post(&seq_url, "s1", "t", "start").await, 202);
    let got = end.wait_for_id("s1").await;
    assert_eq!(got[0].event.data.as_deref(), Some(&b"start-1-2"[..]), "the steps ran in order over NATS channels");
    // They really are JetStream streams, not the embedded log.
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    for ch in ["nc", "seq-kn-sequence-0", "seq-kn-sequence-1"] {
        let name = format!("{}_channel_default_{ch}", _nats.name);
        assert!(js.get_stream(&name).await.is_ok(), "stream {name} exists");
    }
    assert!(!dir.path().join("logs/channel.default.nc").exists(), "no embedded log for a NATS channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_channels_and_subscriptions_are_listed_with_their_owner() {
    let sink = Sink::start().await;
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok(&format!(
        "apiVersion: flows.knative.dev/v1\nkind: Sequence\nmetadata: {{name: seq}}\nspec:\n  steps:\n    - uri: {0}\n    - uri: {0}\n",
        sink.url
    ))
    .await;
    let channels = s.admin_json("/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels").await;
    let names: Vec<&str> =
        channels["items"].as_array().unwrap().iter().filter_map(|c| c["metadata"]["name"].as_str()).collect();
    assert_eq!(names.len(), 2, "{channels}");
    assert!(names.contains(&"seq-kn-sequence-0") && names.contains(&"seq-kn-sequence-1"), "{names:?}");
    let one =
        s.admin_json("/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels/seq-kn-sequence-0").await;
    assert_eq!(one["metadata"]["ownerReferences"][0]["kind"], "Sequence", "{one}");
    assert_eq!(one["metadata"]["ownerReferences"][0]["name"], "seq");
    assert!(
        one["status"]["address"]["url"].as_str().unwrap_or_default().ends_with("/channels/default/seq-kn-sequence-0"),
        "{one}"
    );
    let subs = s.admin_json("/apis/messaging.knative.dev/v1/namespaces/default/subscriptions").await;
    let items = subs["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{subs}");
    assert!(
        items.iter().all(|x| x["spec"]["channel"]["name"].as_str().is_some_and(|n| n.starts_with("seq-kn-sequence-")))
    );
    assert!(items.iter().all(|x| x["metadata"]["ownerReferences"][0]["kind"] == "Sequence"));
    // The CLI lists them too.
    let out = std::process::Command::new(BIN).args(["get", "subscriptions", "--server", &s.admin]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("seq-kn-sequence-1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Deleting the Sequence removes them from the lists.
    let r = client()
        .delete(format!("{}/apis/flows.knative.dev/v1/namespaces/default/sequences/seq", s.admin))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for plural in ["inmemorychannels", "subscriptions"] {
        let list = s.admin_json(&format!("/apis/messaging.knative.dev/v1/namespaces/default/{plural}")).await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{plural} after the delete: {list}");
    }
}

/// A channel-based broker whose template names a channel kind Spate lacks is not Ready, with
/// the reason, rather than silently running on another channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_template_naming_a_kind_spate_lacks_is_a_condition() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    s.apply_ok("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-br-odd-channel, namespace: knative-eventing}\ndata:\n  channel-template-spec: |\n    apiVersion: messaging.knative.dev/v1alpha1\n    kind: RocketMQChannel\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: odd\nspec:\n  config: {apiVersion: v1, kind: ConfigMap, name: config-br-odd-channel, namespace: knative-eventing}\n").await;
    let b = s.admin_json("/apis/eventing.knative.dev/v1/namespaces/default/brokers/odd").await;
    assert_eq!(b["status"]["conditions"][0]["status"], "False", "{b}");
    let text = b["status"]["conditions"].to_string();
    assert!(text.contains("ChannelTemplateNotSupported") && text.contains("RocketMQChannel"), "{b}");
    // On a NATS template (when NATS runs here), the broker's events are in a JetStream stream.
    if !nats_available() {
        return;
    }
    let nats = NatsCluster::new("cbbnats");
    let dir = tempdir();
    let args = ["--nats-url".to_string(), nats_url(), "--cluster-name".to_string(), nats.name.clone()];
    let s = Server::start(dir.path(), &args.iter().map(String::as_str).collect::<Vec<_>>());
    let sink = Sink::start().await;
    s.apply_ok(&format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-br-nats-channel, namespace: knative-eventing}}\ndata:\n  channel-template-spec: |\n    apiVersion: messaging.knative.dev/v1alpha1\n    kind: NatsJetStreamChannel\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: onnats\nspec:\n  config: {{apiVersion: v1, kind: ConfigMap, name: config-br-nats-channel, namespace: knative-eventing}}\n---\n{}", trigger("t", "onnats", "", &sink.url, ""))).await;
    s.wait_json("/apis/eventing.knative.dev/v1/namespaces/default/brokers/onnats", "broker Ready", |v| {
        v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("True"))
    })
    .await;
    assert_eq!(send(&s.broker_url("default", "onnats"), "n1", "t", "{}").await, 202);
    sink.wait_for_id("n1").await;
    let streams = nats.streams().await;
    assert!(streams.iter().any(|n| n.contains("onnats")), "the broker's stream is on NATS: {streams:?}");
}
