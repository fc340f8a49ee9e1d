//! KafkaSource against a real Kafka-protocol broker (tansu, started by `.ci/run` on
//! 127.0.0.1:19092; `SPATE_KAFKA` names another). Records are produced by librdkafka.
//! Without a broker these tests print why and pass on a developer machine, and fail under CI.
//! tansu 0.6 reports a wrong end offset after multi-record batches, so every source here
//! starts from the earliest offset (or the group's committed one).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

fn broker_addr() -> Option<String> {
    kafka_addr()
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), n % 1_000_000_000)
}

async fn create_topic(addr: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", addr).create().expect("admin client");
    let res = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topic");
    for r in res {
        r.expect("topic created");
    }
}

fn producer(addr: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .create()
        .expect("producer")
}

/// A producer that sends one record per batch: a restart resumes mid-topic, and tansu 0.6
/// cannot fetch from an offset inside a multi-record batch.
fn single_record_producer(addr: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .expect("producer")
}

/// Produces `n` records numbered `from..from+n` round-robin over `partitions`, then flushes.
fn produce(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, partitions: i32, from: usize, n: usize) {
    for i in from..from + n {
        let payload = format!("{{\"n\":{i}}}");
        let key = format!("k{i}");
        let mut rec = BaseRecord::to(topic).partition((i % partitions as usize) as i32).payload(&payload).key(&key);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce: {e}"
                    );
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn kafka_source(name: &str, addr: &str, topic: &str, ordering: &str, sink: &str, extra: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata:\n  name: {name}\nspec:\n  bootstrapServers: [{addr}]\n  topics: [{topic}]\n  initialOffset: earliest\n  ordering: {ordering}\n{extra}  sink:\n    uri: {sink}\n"
    )
}

/// (partition, offset) from a record event's id `partition:<p>/offset:<o>`.
fn position(id: &str) -> (i32, i64) {
    let rest = id.strip_prefix("partition:").unwrap_or_else(|| panic!("not a record id: {id}"));
    let (p, o) = rest.split_once("/offset:").unwrap();
    (p.parse().unwrap(), o.parse().unwrap())
}

async fn status(s: &Server, name: &str) -> Value {
    s.admin_json(&format!("/apis/sources.knative.dev/v1/namespaces/default/kafkasources/{name}")).await
}

async fn wait_status(s: &Server, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    s.wait_json(&format!("/apis/sources.knative.dev/v1/namespaces/default/kafkasources/{name}"), what, pred).await
}

/// Waits for `n` deliveries; on timeout, shows the source's status (its last error).
async fn wait_count(sink: &Sink, n: usize, s: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while sink.count() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} records delivered; source status: {:#}",
            sink.count(),
            status(s, name).await["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lag(v: &Value) -> u64 {
    v.pointer("/status/spate/lag").and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test]
async fn ten_thousand_records_arrive_exactly_once_in_partition_order() {
    let Some(addr) = broker_addr() else { return };
    let topic = unique("orders");
    create_topic(&addr, &topic, 3).await;
    let p = producer(&addr);
    produce(&p, &topic, 3, 0, 10_000);
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let sink = Sink::start().await;
    s.apply_ok(&kafka_source("orders", &addr, &topic, "ordered", &sink.url, "")).await;
    let got = sink.wait_for(10_000).await;
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut seen = HashSet::new();
    for r in &got {
        assert_eq!(r.event.ty, "dev.knative.kafka.event");
        let (part, off) = position(&r.event.id);
        assert!(seen.insert((part, off)), "record {part}/{off} delivered twice");
        if let Some(prev) = last.insert(part, off) {
            assert!(off > prev, "partition {part}: offset {off} arrived after {prev}");
        }
        let n: u64 = serde_json::from_slice::<Value>(r.event.data.as_deref().unwrap()).unwrap()["n"].as_u64().unwrap();
        assert_eq!(n % 3, part as u64, "record {n} was produced to partition {}", n % 3);
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(last.len(), 3, "all three partitions were read");
    // Everything is committed: lag drains to zero, and nothing more arrives.
    let st = wait_status(&s, "orders", "lag 0 and 10000 emitted", |v| {
        lag(v) == 0 && v.pointer("/status/spate/emitted").and_then(Value::as_u64) == Some(10_000)
    })
    .await;
    assert_eq!(st["status"]["conditions"][0]["status"], "True", "{st:#}");
    assert_eq!(sink.count(), 10_000, "no record was delivered twice");
    let e = &got[0].event;
    assert_eq!(e.source, format!("/apis/v1/namespaces/default/kafkasources/orders#{topic}"));
    let (part, off) = position(&e.id);
    assert_eq!(e.subject.as_deref(), Some(format!("partition:{part}#{off}").as_str()));
    assert!(
        e.extension("key").is_some_and(|k| k.to_canonical().starts_with('k')),
        "the record key is the `key` extension"
    );
}

#[tokio::test]
async fn a_kill_9_mid_stream_loses_nothing() {
    let Some(addr) = broker_addr() else { return };
    let topic = unique("crash");
    create_topic(&addr, &topic, 3).await;
    let p = single_record_producer(&addr);
    produce(&p, &topic, 3, 0, 6_000);
    let dir = tempdir();
    let mut s = Server::start(dir.path(), &[]);
    // A slowish sink, so that Spate dies with deliveries in flight.
    let sink = Sink::with(accept_all(), Duration::from_millis(1)).await;
    s.apply_ok(&kafka_source("crash", &addr, &topic, "unordered", &sink.url, "")).await;
    wait_count(&sink, 1_500, &s, "crash").await;
    s.kill();
    let before = sink.count();
    assert!(before < 6_000, "Spate was killed mid-stream ({before} delivered)");
    let s2 = Server::start(dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while sink.events().iter().map(|r| r.event.id.clone()).collect::<HashSet<_>>().len() < 6_000 {
        if Instant::now() > deadline {
            let mut per: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
            for r in sink.events() {
                let (p, o) = position(&r.event.id);
                per.entry(p).or_default().insert(o);
            }
            let summary: Vec<String> = per
                .iter()
                .map(|(p, offs)| {
                    let missing: Vec<i64> = (0..2000).filter(|o| !offs.contains(o)).take(10).collect();
                    format!("partition {p}: {} distinct, first missing {missing:?}", offs.len())
                })
                .collect();
            panic!(
                "not every record arrived after the restart: {summary:?}; status {:#}",
                status(&s2, "crash").await["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = sink.events();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &got {
        *count.entry(r.event.id.clone()).or_default() += 1;
    }
    assert_eq!(count.len(), 6_000, "every record arrived");
    let dups: usize = count.values().map(|c| c - 1).sum();
    // Records taken but not committed when Spate died are redelivered: at most the
    // consumer's bound, plus one commit in flight.
    let bound = 2 * spate_sources::kafka::MAX_UNCOMMITTED;
    assert!(dups <= bound, "{dups} duplicates exceed the in-flight bound {bound}");
    eprintln!("kill -9 after {before} deliveries: {dups} duplicate(s), bound {bound}");
    wait_status(&s2, "crash", "lag 0", |v| lag(v) == 0 && v.pointer("/status/spate/emitted").is_some()).await;
}

#[tokio::test]
async fn a_failing_sink_makes_lag_grow_and_then_drain() {
    let Some(addr) = broker_addr() else { return };
    let topic = unique("lag");
    create_topic(&addr, &topic, 3).await;
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let sink = Sink::with(
        Arc::new(move |_, _| {
            if f.load(Ordering::SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            } else {
                StatusCode::ACCEPTED.into_response()
            }
        }),
        Duration::ZERO,
    )
    .await;
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--default-retry", "1", "--default-backoff-ms", "10"]);
    s.apply_ok(&kafka_source("lag", &addr, &topic, "ordered", &sink.url, "")).await;
    let p = producer(&addr);
    produce(&p, &topic, 3, 0, 300);
    let st = wait_status(&s, "lag", "lag to grow", |v| lag(v) >= 250).await;
    assert!(st.pointer("/status/spate/failed").and_then(Value::as_u64).unwrap_or(0) > 0, "{st:#}");
    assert_eq!(st.pointer("/status/spate/emitted").and_then(Value::as_u64), Some(0));
    failing.store(false, Ordering::SeqCst);
    wait_status(&s, "lag", "lag to drain", |v| {
        lag(v) == 0 && v.pointer("/status/spate/emitted").and_then(Value::as_u64) == Some(300)
    })
    .await;
    let accepted: HashSet<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(accepted.len(), 300, "every record reached the sink once it recovered");
    let metrics = s.metrics().await;
    assert!(metrics.contains("spate_source_lag{source=\"kafkasources/default/lag\"}"), "lag is a metric");
}

#[tokio::test]
async fn cloudevents_in_kafka_binary_mode_keep_their_attributes() {
    let Some(addr) = broker_addr() else { return };
    let topic = unique("ce");
    create_topic(&addr, &topic, 1).await;
    let p = producer(&addr);
    let headers = OwnedHeaders::new()
        .insert(Header { key: "ce_specversion", value: Some("1.0") })
        .insert(Header { key: "ce_id", value: Some("order-77") })
        .insert(Header { key: "ce_source", value: Some("/shop/orders") })
        .insert(Header { key: "ce_type", value: Some("com.example.order.placed") })
        .insert(Header { key: "ce_subject", value: Some("order 77 (50%)") })
        .insert(Header { key: "ce_team", value: Some("checkout") })
        .insert(Header { key: "content-type", value: Some("application/json") });
    p.send(BaseRecord::to(&topic).payload(r#"{"total":12}"#).key("77").headers(headers)).map_err(|(e, _)| e).unwrap();
    let plain = OwnedHeaders::new().insert(Header { key: "trace-id", value: Some("t-1") });
    p.send(BaseRecord::to(&topic).payload("plain").key("k").headers(plain)).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let sink = Sink::start().await;
    s.apply_ok(&kafka_source("ce", &addr, &topic, "ordered", &sink.url, "")).await;
    let got = sink.wait_for(2).await;
    let e = &got[0].event;
    assert_eq!(e.id, "order-77");
    assert_eq!(e.source, "/shop/orders");
    assert_eq!(e.ty, "com.example.order.placed");
    assert_eq!(e.subject.as_deref(), Some("order 77 (50%)"));
    assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(e.extension("team").map(|v| v.to_canonical().into_owned()).as_deref(), Some("checkout"));
    assert_eq!(e.data.as_deref(), Some(&br#"{"total":12}"#[..]));
    let w = &got[1].event;
    assert_eq!(w.ty, "dev.knative.kafka.event");
    assert_eq!(w.id, "partition:0/offset:1");
    assert_eq!(w.extension("kafkaheadertraceid").map(|v| v.to_canonical().into_owned()).as_deref(), Some("t-1"));
    assert_eq!(w.extension("key").map(|v| v.to_canonical().into_owned()).as_deref(), Some("k"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_consume_a_partition_twice_and_take_over_from_a_dead_one() {
    const TOTAL: usize = 12_000;
    let Some(addr) = broker_addr() else { return };
    if !nats_available() {
        return;
    }
    let nats = NatsCluster::new("kafkasplit");
    let topic = unique("split");
    create_topic(&addr, &topic, 3).await;
    let p = single_record_producer(&addr);
    produce(&p, &topic, 3, 0, TOTAL);
    let mut args = nats.args();
    args.extend(["--config-store".to_string(), "nats".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempdir()).collect();
    let mut servers: Vec<Server> = dirs.iter().map(|d| Server::start(d.path(), &args)).collect();
    // A slow sink: the records outlive the instance killed below.
    let sink = Sink::with(accept_all(), Duration::from_millis(20)).await;
    servers[0].apply_ok(&kafka_source("split", &addr, &topic, "unordered", &sink.url, "  consumers: 3\n")).await;
    // The three consumers (leases of one group) spread to one per instance: each emits.
    let deadline = Instant::now() + Duration::from_secs(60);
    let emitted = loop {
        let mut emitted = vec![];
        for s in &servers {
            emitted.push(emitted_by(s).await);
        }
        if emitted.iter().all(|n| *n > 0.0) {
            break emitted;
        }
        assert!(Instant::now() < deadline, "consumers never spread over the instances: {emitted:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "no record consumed twice while every instance is up");
    // Kill the instance that has emitted the least: its consumer has the most left, which a
    // survivor must take over.
    let holder = (0..3).min_by(|a, b| emitted[*a].total_cmp(&emitted[*b])).unwrap();
    println!("emitted per instance before the kill: {emitted:?}; killing instance {holder}");
    servers[holder].kill();
    let killed_at = sink.count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.events().iter().map(|r| r.event.id.clone()).collect::<HashSet<_>>().len() < TOTAL {
        assert!(Instant::now() < deadline, "records stopped arriving after an instance died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed_at < TOTAL, "the kill happened mid-stream ({killed_at} delivered)");
    let got = sink.events();
    let dups = got.len() - got.iter().map(|r| &r.event.id).collect::<HashSet<_>>().len();
    let bound = 3 * 2 * spate_sources::kafka::MAX_UNCOMMITTED;
    println!(
        "KafkaSource on three instances, one killed after {killed_at}: {TOTAL} records, {dups} duplicate(s), bound {bound}"
    );
    assert!(dups <= bound, "{dups} duplicates exceed {bound}");
    servers.clear();
    drop(nats);
}

/// Records the KafkaSource `split` emitted on this instance.
async fn emitted_by(s: &Server) -> f64 {
    s.metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("spate_source_events_total")
                && l.contains("kafkasources/default/split")
                && l.contains("result=\"emitted\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A record as read back: key, headers, value.
type ReadRecord = (Option<String>, BTreeMap<String, String>, Vec<u8>);

/// Every record of `topic` (from the start) until `n` arrived.
fn read_records(addr: &str, topic: &str, n: usize) -> Vec<ReadRecord> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = vec![];
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} records in {topic}", out.len());
        let Some(Ok(m)) = c.poll(Duration::from_millis(200)) else { continue };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        out.push((key, headers, m.payload().unwrap_or_default().to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_sink_writes_what_a_trigger_sends_in_both_content_modes() {
    let Some(addr) = broker_addr() else { return };
    let (binary_topic, structured_topic) = (unique("sink-bin"), unique("sink-json"));
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let sink = |name: &str, topic: &str, mode: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1alpha1\nkind: KafkaSink\nmetadata: {{name: {name}}}\nspec:\n  topic: {topic}\n  bootstrapServers: [\"{addr}\"]\n  contentMode: {mode}\n  numPartitions: 2\n"
        )
    };
    let to_sink = |name: &str, target: &str| {
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n  broker: default\n  subscriber:\n    ref: {{apiVersion: eventing.knative.dev/v1alpha1, kind: KafkaSink, name: {target}}}\n"
        )
    };
    let yaml = [
        broker("default", ""),
        sink("overlay-bin", &binary_topic, "binary"),
        sink("overlay-json", &structured_topic, "structured"),
        to_sink("to-bin", "overlay-bin"),
        to_sink("to-json", "overlay-json"),
    ]
    .join("---\n");
    s.apply_ok(&yaml).await;
    let status = s.admin_json("/apis/eventing.knative.dev/v1alpha1/namespaces/default/kafkasinks/overlay-bin").await;
    let url = status["status"]["address"]["url"].as_str().unwrap_or_default().to_string();
    assert!(url.ends_with("/kafkasinks/default/overlay-bin"), "{status}");
    let r = client()
        .post(s.broker_url("default", "default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "c1")
        .header("ce-source", "/stream/42")
        .header("ce-type", "comment.scored")
        .header("ce-partitionkey", "stream-42")
        .header("content-type", "application/json")
        .body(r#"{"score":0.9}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let bin = read_records(&addr, &binary_topic, 1);
    let (key, headers, value) = &bin[0];
    assert_eq!(key.as_deref(), Some("stream-42"), "keyed by partitionkey");
    assert_eq!(headers.get("ce_id").map(String::as_str), Some("c1"), "{headers:?}");
    assert_eq!(headers.get("ce_type").map(String::as_str), Some("comment.scored"));
    assert_eq!(headers.get("ce_source").map(String::as_str), Some("/stream/42"), "plain UTF-8, not percent-encoded");
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(value, br#"{"score":0.9}"#);

    let json = read_records(&addr, &structured_topic, 1);
    let (key, headers, value) = &json[0];
    assert_eq!(key.as_deref(), Some("stream-42"));
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/cloudevents+json"));
    let v: Value = serde_json::from_slice(value).unwrap();
    assert_eq!((v["id"].as_str(), v["type"].as_str()), (Some("c1"), Some("comment.scored")), "{v}");
    assert_eq!(v["data"]["score"], 0.9);

    // Direct requests: 202 only after Kafka acknowledged; unknown sinks are 404.
    let direct = client()
        .post(&url)
        .header("ce-specversion", "1.0")
        .header("ce-id", "d1")
        .header("ce-source", "/direct")
        .header("ce-type", "t")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 202);
    assert!(
        read_records(&addr, &binary_topic, 2).iter().any(|(_, h, _)| h.get("ce_id").map(String::as_str) == Some("d1"))
    );
    let missing = client().post(url.replace("overlay-bin", "nope")).body("x").send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[test]
fn kafka_sink_admission_names_each_bad_field() {
    let dir = tempdir();
    let file = dir.path().join("k.yaml");
    std::fs::write(
        &file,
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: KafkaSink\nmetadata: {name: k}\nspec:\n  topic: 'bad topic'\n  bootstrapServers: [nohost]\n  contentMode: avro\n  numPartitions: 0\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: kafka-broker-config}\ndata:\n  bootstrap.servers: 127.0.0.1:19092\n  default.topic.partitions: \"10\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN).args(["validate", "-f"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for want in [
        "spec.topic: 'bad topic' is not a Kafka topic name",
        "spec.bootstrapServers[0]: 'nohost' is not host:port",
        "spec.contentMode: 'avro' is not one of structured, binary",
        "spec.numPartitions: must be a whole number",
    ] {
        assert!(text.contains(want), "missing '{want}' in:\n{text}");
    }
    assert!(!text.contains("ConfigMap"), "the ConfigMap is valid: {text}");
}

/// Events this instance's trigger `name` delivered (`spate_events_delivered_total`).
/// The Kafka peer's log lines about `cluster`'s groups, when the log is where `.ci/run`
/// puts it (tansu started with `RUST_LOG=tansu_broker::coordinator=info`): the group
/// coordinator's view of members joining and expiring.
fn peer_log_about(cluster: &str) -> String {
    let path = std::env::temp_dir().join("spate-peer-tansu-19092.log");
    let Ok(log) = std::fs::read_to_string(&path) else {
        return format!("(no peer log at {})", path.display());
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(cluster)).collect();
    format!(
        "{} (lines about {cluster}, the last 40):\n{}",
        path.display(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

async fn delivered_by(s: &Server, ns: &str, name: &str) -> f64 {
    let label = format!("sender=\"trigger/{ns}/{name}\"");
    s.metrics()
        .await
        .lines()
        .find(|l| l.starts_with("spate_events_delivered_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A `Kafka`-class broker configured by a ConfigMap (Knative's shape), with one trigger.
fn kafka_broker_yaml(ns: &str, addr: &str, partitions: u32, subscriber: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: kafka-broker-config, namespace: {ns}}}\ndata:\n  bootstrap.servers: \"{addr}\"\n  default.topic.partitions: \"{partitions}\"\n  default.topic.replication.factor: \"1\"\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: {ns}\n  annotations: {{eventing.knative.dev/broker.class: Kafka}}\nspec:\n  config: {{apiVersion: v1, kind: ConfigMap, name: kafka-broker-config, namespace: {ns}}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: all, namespace: {ns}}}\nspec:\n  broker: default\n  subscriber: {{uri: \"{subscriber}\"}}\n"
    )
}

/// Posts `ids` to `url`, 32 at a time; every one must be accepted.
async fn post_all(url: &str, ids: impl Iterator<Item = String>) {
    use futures_util::StreamExt;
    futures_util::stream::iter(ids)
        .for_each_concurrent(32, |id| async move {
            let code = send(url, &id, "load", "{}").await;
            assert_eq!(code, 202, "{id} accepted");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_delivers_two_thousand_events_stored_as_binary_records() {
    let Some(addr) = broker_addr() else { return };
    // A namespace of its own keeps Knative's exact names (no --cluster-name) apart from other runs.
    let ns = unique("kb").replace('-', "");
    let dir = tempdir();
    // No --kafka-bootstrap-servers: the Broker's ConfigMap names the Kafka to use.
    let s = Server::start(dir.path(), &[]);
    let sink = Sink::start().await;
    s.apply_ok(&kafka_broker_yaml(&ns, &addr, 3, &sink.url)).await;
    let b = s.admin_json(&format!("/apis/eventing.knative.dev/v1/namespaces/{ns}/brokers/default")).await;
    assert_eq!(b["status"]["conditions"][0]["status"], "True", "{b}");
    post_all(&s.broker_url(&ns, "default"), (0..2000).map(|i| format!("e{i}"))).await;
    let got = sink.wait_until("2000 events", |g| g.len() >= 2000).await;
    let ids: HashSet<String> = got.iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(ids.len(), 2000, "each event delivered once");
    // The topic Knative would name holds them as binary-mode records a plain client reads.
    let topic = format!("knative-broker-{ns}-default");
    let records = read_records(&addr, &topic, 2000);
    let ids: HashSet<&str> = records.iter().filter_map(|(_, h, _)| h.get("ce_id").map(String::as_str)).collect();
    assert_eq!(ids.len(), 2000, "every event is a record with ce_ headers");
    let (_, headers, value) = &records[0];
    assert_eq!(headers.get("ce_type").map(String::as_str), Some("load"));
    assert_eq!(headers.get("ce_specversion").map(String::as_str), Some("1.0"));
    assert!(headers.contains_key("ce_knativearrivaltime"), "{headers:?}");
    assert_eq!(value, b"{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_without_its_configmap_says_why() {
    let Some(_) = broker_addr() else { return };
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let yaml = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  annotations: {eventing.knative.dev/broker.class: Kafka}\nspec:\n  config: {apiVersion: v1, kind: ConfigMap, name: missing}\n";
    s.apply_ok(yaml).await;
    let b = s.admin_json("/apis/eventing.knative.dev/v1/namespaces/default/brokers/b").await;
    let text = b["status"]["conditions"].to_string();
    assert!(text.contains("ConfigMapNotFound") && text.contains("default/missing"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_channel_feeds_both_subscriptions() {
    let Some(addr) = broker_addr() else { return };
    let cluster = unique("kch");
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kafka-bootstrap-servers", &addr, "--cluster-name", &cluster]);
    let (a, b) = (Sink::start().await, Sink::start().await);
    let sub = |name: &str, url: &str| {
        format!(
            "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata: {{name: {name}}}\nspec:\n  channel: {{apiVersion: messaging.knative.dev/v1beta1, kind: KafkaChannel, name: kc}}\n  subscriber: {{uri: \"{url}\"}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata: {{name: kc}}\nspec:\n  numPartitions: 2\n  retentionDuration: PT1H\n---\n{}---\n{}",
        sub("one", &a.url),
        sub("two", &b.url)
    );
    s.apply_ok(&yaml).await;
    let url = s.admin_json("/apis/messaging.knative.dev/v1beta1/namespaces/default/kafkachannels/kc").await["status"]
        ["address"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    post_all(&url, (0..100).map(|i| format!("c{i}"))).await;
    for sink in [&a, &b] {
        let got = sink.wait_until("100 events", |g| g.len() >= 100).await;
        assert_eq!(got.iter().map(|r| &r.event.id).collect::<HashSet<_>>().len(), 100);
    }
    let topics = kafka_topics();
    assert!(topics.contains(&format!("{cluster}.knative-messaging-kafka.default.kc")), "{topics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_a_kafka_triggers_partitions_and_a_kill_9_loses_nothing() {
    const TOTAL: usize = 3000;
    let Some(addr) = broker_addr() else { return };
    let cluster = unique("ksplit");
    let args = ["--kafka-bootstrap-servers", addr.as_str(), "--cluster-name", cluster.as_str()];
    let (d1, d2) = (tempdir(), tempdir());
    // Both instances log librdkafka's group protocol: a failure shows each member's side
    // (a CI failure showed tansu expiring the survivor mid-rebalance, then naming it
    // leader of a generation whose sync never completed).
    let debug = [("SPATE_KAFKA_DEBUG", "cgrp"), ("SPATE_LOG", "warn,librdkafka=debug")];
    let start = |d: &std::path::Path| Server::start_with_env(d, "127.0.0.1:0", "127.0.0.1:0", &args, &debug);
    let mut servers = [start(d1.path()), start(d2.path())];
    // A slowish sink, so that deliveries are in flight when an instance dies.
    let sink = Sink::with(accept_all(), Duration::from_millis(2)).await;
    // Both instances run the same trigger: one consumer group over the topic's 4 partitions.
    let yaml = kafka_broker_yaml("default", &addr, 4, &sink.url);
    for s in &servers {
        s.apply_ok(&yaml).await;
    }
    let url = servers[0].broker_url("default", "default");
    post_all(&url, (0..TOTAL / 2).map(|i| format!("a{i}"))).await;
    // Both instances deliver a share (the group split the partitions).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (x, y) =
            (delivered_by(&servers[0], "default", "all").await, delivered_by(&servers[1], "default", "all").await);
        if x > 0.0 && y > 0.0 && sink.count() >= TOTAL / 2 {
            println!("before the kill: instance 0 delivered {x}, instance 1 {y}");
            break;
        }
        assert!(Instant::now() < deadline, "the partitions were not split: {x} and {y} delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dups_before = sink.count() - sink.events().iter().map(|r| &r.event.id).collect::<HashSet<_>>().len();
    assert_eq!(dups_before, 0, "no event delivered twice while both instances run");
    // The second half goes in while instance 1 is killed: every accepted event still arrives.
    let second = tokio::spawn({
        let url = url.clone();
        async move { post_all(&url, (0..TOTAL / 2).map(|i| format!("b{i}"))).await }
    });
    sink.wait_until("the second half under way", |g| g.iter().any(|r| r.event.id.starts_with('b'))).await;
    servers[1].kill();
    second.await.unwrap();
    // tansu 0.6's group coordinator never expires a member killed with -9, so the survivor
    // is not handed its partitions; the restarted instance rejoins the group and resumes
    // them from their committed offsets (on Kafka the survivor takes them after the
    // 10 s session timeout).
    servers[1] = start(d2.path());
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(60);
    while sink.events().iter().map(|r| r.event.id.clone()).collect::<HashSet<_>>().len() < TOTAL {
        if Instant::now() > deadline {
            let ids: HashSet<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
            let missing: Vec<String> = (0..TOTAL / 2)
                .flat_map(|i| [format!("a{i}"), format!("b{i}")])
                .filter(|id| !ids.contains(id))
                .collect();
            let status = "/apis/eventing.knative.dev/v1/namespaces/default/triggers/all";
            panic!(
                "{} accepted events never arrived after an instance died (first: {:?}); survivor: {:#}; restarted: {:#}\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                servers[0].admin_json(status).await["status"]["spate"],
                servers[1].admin_json(status).await["status"]["spate"],
                peer_log_about(&cluster)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the restarted instance's partitions were drained {:?} after its restart", restarted.elapsed());
    let got = sink.events();
    let dups = got.len() - got.iter().map(|r| &r.event.id).collect::<HashSet<_>>().len();
    // The dead instance's records in flight (100 per trigger) and those acknowledged
    // since its last commit (every 100 ms) come again.
    let bound = 100 + 500;
    println!("Kafka broker, two instances, one killed: {TOTAL} events, {dups} duplicate(s), bound {bound}");
    assert!(dups <= bound, "{dups} duplicates exceed {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_on_an_external_topic_writes_there_and_creates_none() {
    let Some(addr) = broker_addr() else { return };
    let topic = unique("external");
    create_topic(&addr, &topic, 1).await;
    let cluster = unique("kext");
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kafka-bootstrap-servers", &addr, "--cluster-name", &cluster]);
    let sink = Sink::start().await;
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: ext\n  annotations:\n    eventing.knative.dev/broker.class: Kafka\n    kafka.eventing.knative.dev/external.topic: {topic}\n---\n{}",
        trigger("t", "ext", "", &sink.url, "")
    );
    s.apply_ok(&yaml).await;
    assert_eq!(send(&s.broker_url("default", "ext"), "x1", "t", "{}").await, 202);
    assert_eq!(sink.wait_for(1).await[0].event.id, "x1");
    let records = read_records(&addr, &topic, 1);
    assert_eq!(records[0].1.get("ce_id").map(String::as_str), Some("x1"), "written to the external topic");
    let topics = kafka_topics();
    assert!(!topics.iter().any(|t| t.starts_with(&cluster) && t.contains("knative-broker")), "{topics:?}");
}

/// A local address nothing listens on (bound, then released).
fn unused_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Waits up to 30 s for a line of librdkafka's (target `librdkafka`) naming `address` in `s`'s log.
async fn expect_librdkafka_line_about(s: &Server, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = s.log.lock().unwrap().clone();
        if let Some(line) = lines.iter().find(|l| l.contains("librdkafka") && l.contains(address)) {
            println!("logged: {line}");
            return;
        }
        assert!(Instant::now() < deadline, "no librdkafka line about {address} in the log:\n{}", lines.join("\n"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// librdkafka's own messages reach Spate's log (target `librdkafka`): a trigger
/// on a Kafka broker whose bootstrap server does not answer says so there, not
/// nowhere. Needs no Kafka: nothing listens on the address, and the broker's
/// topic is external (not created), so the trigger's consumer starts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_messages_reach_spates_log() {
    let dir = tempdir();
    let nothing = unused_address();
    let s = Server::start(dir.path(), &["--kafka-bootstrap-servers", &nothing]);
    let started = Instant::now();
    let yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: ext\n  annotations:\n    eventing.knative.dev/broker.class: Kafka\n    kafka.eventing.knative.dev/external.topic: nowhere\n---\n{}",
        trigger("t", "ext", "", "http://127.0.0.1:9/", "")
    );
    let (code, body) = s.apply(&yaml).await;
    assert!(code < 500, "apply answered {code}: {body}");
    println!("apply answered {code} after {:?}", started.elapsed());
    expect_librdkafka_line_about(&s, &nothing).await;
}

/// The KafkaSource's consumer forwards librdkafka's messages to Spate's log too
/// (they went nowhere), also while it cannot reach Kafka to assign partitions:
/// the line names the address. Needs no Kafka: nothing listens on the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_source_logs_librdkafkas_messages() {
    let dir = tempdir();
    let nothing = unused_address();
    let s = Server::start(dir.path(), &[]);
    let yaml = format!(
        "apiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata:\n  name: src\nspec:\n  bootstrapServers: [\"{nothing}\"]\n  topics: [t]\n  sink:\n    uri: http://127.0.0.1:9/\n"
    );
    let (code, body) = s.apply(&yaml).await;
    assert!(code < 500, "apply answered {code}: {body}");
    expect_librdkafka_line_about(&s, &nothing).await;
}

/// A member whose deliveries fill its in-flight bound (one delivery stuck on a
/// subscriber that never answers, `spate.dev/max-in-flight: 1`) still takes part
/// in its group's rebalance when a second instance joins: it revokes its
/// partitions within seconds instead of when the stuck delivery ends. (On Kafka the
/// whole group waits for every member to rejoin, so one stuck member would stop
/// every instance's deliveries of that trigger for as long as the delivery hangs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_its_in_flight_bound_still_hands_partitions_over_when_another_joins() {
    let Some(addr) = broker_addr() else { return };
    let cluster = unique("kbound");
    let args = ["--kafka-bootstrap-servers", addr.as_str(), "--cluster-name", cluster.as_str()];
    let env = [("SPATE_LOG", "warn,spate_log::kafka=info")];
    let start = |d: &std::path::Path| Server::start_with_env(d, "127.0.0.1:0", "127.0.0.1:0", &args, &env);
    let (d1, d2) = (tempdir(), tempdir());
    let first = start(d1.path());
    let sink = Sink::stuck_on("stuck").await;
    let yaml = kafka_broker_yaml("default", &addr, 4, &sink.url).replace(
        "metadata: {name: all, namespace: default}\nspec:\n",
        "metadata:\n  name: all\n  namespace: default\n  annotations: {spate.dev/max-in-flight: \"1\"}\nspec:\n  delivery: {timeout: PT120S, retry: 0}\n",
    );
    assert!(yaml.contains("max-in-flight"), "the trigger's manifest was not rewritten:\n{yaml}");
    first.apply_ok(&yaml).await;
    let url = first.broker_url("default", "default");
    assert_eq!(send(&url, "stuck", "t", "{}").await, 202);
    sink.wait_for_id("stuck").await;
    post_all(&url, (0..20).map(|i| format!("e{i}"))).await;
    // Only what the first instance logs from here on counts (not a revoke of its own joining).
    let before = first.log.lock().unwrap().len();
    let second = start(d2.path());
    second.apply_ok(&yaml).await;
    let joined = Instant::now();
    let deadline = joined + Duration::from_secs(40);
    loop {
        let lines = first.log.lock().unwrap()[before..].to_vec();
        if let Some(line) = lines.iter().find(|l| l.contains("partitions revoked")) {
            println!("{:?} after the second instance started: {line}", joined.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first instance, its one in-flight slot held by a stuck delivery, never revoked its partitions \
             after a second member joined (the group's rebalance waits for it):\n{}\n{}",
            lines.join("\n"),
            peer_log_about(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The seed's own manifest: an MTChannelBasedBroker whose `spec.config` names
/// `knative-eventing/config-br-kafka-channel`, a KafkaChannel template. Its events sit in
/// the backing channel's Kafka topic (Knative's `knative-messaging-kafka.<ns>.<broker>-kne-trigger`),
/// reach the trigger's subscriber, and the channel is listed as the broker's child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_based_broker_on_a_kafka_channel_template_keeps_its_events_in_kafka() {
    let Some(addr) = broker_addr() else { return };
    let ns = unique("cbb").replace('-', "");
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kafka-bootstrap-servers", &addr]);
    let sink = Sink::start().await;
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config-br-kafka-channel, namespace: knative-eventing}}\ndata:\n  channel-template-spec: |\n    apiVersion: messaging.knative.dev/v1beta1\n    kind: KafkaChannel\n    spec:\n      numPartitions: 3\n      replicationFactor: 1\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: {ns}\n  annotations: {{eventing.knative.dev/broker.class: MTChannelBasedBroker}}\nspec:\n  config: {{apiVersion: v1, kind: ConfigMap, name: config-br-kafka-channel, namespace: knative-eventing}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: all, namespace: {ns}}}\nspec:\n  broker: default\n  subscriber: {{uri: \"{}\"}}\n",
        sink.url
    );
    s.apply_ok(&yaml).await;
    let b = s
        .wait_json(&format!("/apis/eventing.knative.dev/v1/namespaces/{ns}/brokers/default"), "broker Ready", |v| {
            v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("True"))
        })
        .await;
    assert!(b["status"]["address"]["url"].is_string(), "{b}");
    post_all(&s.broker_url(&ns, "default"), (0..100).map(|i| format!("c{i}"))).await;
    sink.wait_until("100 events", |g| g.len() >= 100).await;
    let topic = format!("knative-messaging-kafka.{ns}.default-kne-trigger");
    let records = read_records(&addr, &topic, 100);
    let ids: HashSet<&str> = records.iter().filter_map(|(_, h, _)| h.get("ce_id").map(String::as_str)).collect();
    assert_eq!(ids.len(), 100, "the events are records of the backing KafkaChannel's topic");
    let channel = s
        .admin_json(&format!("/apis/messaging.knative.dev/v1beta1/namespaces/{ns}/kafkachannels/default-kne-trigger"))
        .await;
    assert_eq!(channel["metadata"]["ownerReferences"][0]["kind"], "Broker", "{channel}");
}
