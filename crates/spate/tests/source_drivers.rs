//! The sources behind the SourceDriver seam, against real servers:
//! RabbitmqSource (RabbitMQ on 127.0.0.1:5672), RedisStreamSource (Redis on
//! 127.0.0.1:6379), IntegrationSource timer and ApiServerSource (Spate itself).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--default-retry", "1", "--default-backoff-ms", "20"]);
    (dir, s)
}

/// Deletes a resource through the admin API (sources.knative.dev plurals).
async fn delete_ok(s: &Server, group_version: &str, plural: &str, name: &str) {
    let url = format!("{}/apis/{group_version}/namespaces/default/{plural}/{name}", s.admin);
    let r = client().delete(url).send().await.unwrap();
    assert!(r.status().is_success(), "delete {plural}/{name}: {}", r.status());
}

/// Runs the `spate` CLI against the server; its stdout.
fn cli(s: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).args(args).args(["--server", &s.admin]).output().unwrap();
    assert!(out.status.success(), "spate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique(prefix: &str) -> String {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{n}", std::process::id())
}

async fn wait_source(
    s: &Server,
    api: &str,
    plural: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    s.wait_json(&format!("/apis/{api}/namespaces/default/{plural}/{name}"), what, pred).await
}

fn ready(v: &Value) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn rabbit_source(name: &str, exchange: &str, queue: &str, sink: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-conn\nstringData:\n  uri: http://127.0.0.1:15672\n  username: guest\n  password: guest\n---\n\
apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: {name}\nspec:\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: {name}-conn\n  rabbitmqResourcesConfig:\n    exchangeName: {exchange}\n    queueName: {queue}\n    parallelism: 1\n  sink:\n    uri: {sink}\n"
    )
}

async fn rabbit_channel() -> (Connection, lapin::Channel) {
    let conn = Connection::connect(RABBIT, ConnectionProperties::default()).await.expect("RabbitMQ");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// Waits until the source consumes `queue` (declared, bound, consuming): a message
/// published to the exchange before the binding exists would be dropped as unroutable.
async fn wait_consuming(queue: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_c, probe) = rabbit_channel().await;
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        if let Ok(q) = probe.queue_declare(queue.into(), passive, FieldTable::default()).await
            && q.consumer_count() > 0
        {
            return;
        }
        assert!(Instant::now() < deadline, "the source never consumed its queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ready messages in `queue` (not counting those delivered and not yet acked).
async fn ready_in(ch: &lapin::Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    ch.queue_declare(queue.into(), passive, FieldTable::default()).await.unwrap().message_count()
}

#[tokio::test]
async fn a_rabbitmq_source_delivers_in_order_and_acks_only_what_the_sink_accepted() {
    if !rabbit_available() {
        return;
    }
    let (_d, s) = start();
    let sink = Sink::start().await;
    let (exchange, queue) = (unique("src-ex"), unique("src-q"));
    s.apply_ok(&rabbit_source("rabbit", &exchange, &queue, &sink.url)).await;
    wait_source(&s, "sources.knative.dev/v1alpha1", "rabbitmqsources", "rabbit", "Ready", ready).await;
    let (_conn, ch) = rabbit_channel().await;
    // The source declares the queue: wait for it before publishing.
    wait_consuming(&queue).await;
    for i in 0..200 {
        let props =
            BasicProperties::default().with_message_id(format!("m-{i}").into()).with_content_type("text/plain".into());
        ch.basic_publish(
            exchange.as_str().into(),
            "any.key".into(),
            BasicPublishOptions::default(),
            format!("n{i}").as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let got = sink.wait_for(200).await;
    let ids: Vec<String> = got.iter().map(|r| r.event.id.clone()).collect();
    let want: Vec<String> = (0..200).map(|i| format!("m-{i}")).collect();
    assert_eq!(ids, want, "parallelism 1 keeps the queue's order");
    let e = &got[0].event;
    assert_eq!(e.ty, "dev.knative.rabbitmq.event");
    assert_eq!(e.source, format!("/apis/v1/namespaces/default/rabbitmqsources/rabbit#{queue}"));
    assert_eq!((e.subject.as_deref(), e.datacontenttype.as_deref()), (Some("m-0"), Some("text/plain")));
    wait_source(&s, "sources.knative.dev/v1alpha1", "rabbitmqsources", "rabbit", "200 emitted", |v| {
        v.pointer("/status/spate/emitted").and_then(Value::as_u64) == Some(200)
    })
    .await;
    assert_eq!(ready_in(&ch, &queue).await, 0, "everything delivered was acked");
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
}

#[tokio::test]
async fn a_rabbitmq_source_leaves_what_the_sink_refuses_in_the_queue() {
    if !rabbit_available() {
        return;
    }
    let (_d, s) = start();
    let refusing =
        Sink::with(std::sync::Arc::new(|_, _| StatusCode::SERVICE_UNAVAILABLE.into_response()), Duration::ZERO).await;
    let (exchange, queue) = (unique("src-ex"), unique("src-q"));
    // Declared up front (the source finds them, `predeclared` or not).
    let (_conn, ch) = rabbit_channel().await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
    s.apply_ok(&rabbit_source("refused", &exchange, &queue, &refusing.url)).await;
    wait_consuming(&queue).await;
    for i in 0..5 {
        let props = BasicProperties::default().with_message_id(format!("r-{i}").into());
        ch.basic_publish(exchange.as_str().into(), "k".into(), BasicPublishOptions::default(), b"x", props)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The sink refuses the first message again and again; nothing is acked meanwhile.
    refusing.wait_until("retries of the first message", |r| r.len() >= 3).await;
    assert!(refusing.events().iter().all(|r| r.event.id == "r-0"), "in order: the first one holds the rest back");
    // The four behind it wait in the queue: the source's lag says so.
    wait_source(&s, "sources.knative.dev/v1alpha1", "rabbitmqsources", "refused", "lag 4", |v| {
        v.pointer("/status/spate/lag").and_then(Value::as_u64) == Some(4)
    })
    .await;
    delete_ok(&s, "sources.knative.dev/v1alpha1", "rabbitmqsources", "refused").await;
    // With the consumer gone, all five are back in the queue.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready_in(&ch, &queue).await != 5 {
        assert!(Instant::now() < deadline, "the refused messages did not stay queued: {}", ready_in(&ch, &queue).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
}

fn redis_available() -> bool {
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1)).is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "Redis is not answering at 127.0.0.1:6379 (CI needs it)");
    eprintln!("skipping: Redis is not answering at 127.0.0.1:6379");
    false
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379").unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn redis_source(name: &str, stream: &str, group: &str, sink: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RedisStreamSource\nmetadata:\n  name: {name}\nspec:\n  address: 127.0.0.1:6379\n  stream: {stream}\n  group: {group}\n  numConsumers: 2\n  sink:\n    uri: {sink}\n"
    )
}

/// Waits until the consumer group exists (the source made it).
async fn wait_group(c: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let groups: redis::RedisResult<redis::Value> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(c).await;
        if format!("{groups:?}").contains(group) {
            return;
        }
        assert!(Instant::now() < deadline, "the source never created its consumer group: {groups:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pending(c: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING").arg(stream).arg(group).query_async(c).await.unwrap();
    match v {
        redis::Value::Array(p) => match p.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => -1,
        },
        _ => -1,
    }
}

#[tokio::test]
async fn a_redis_stream_source_delivers_acks_and_reclaims_a_dead_consumers_entries() {
    if !redis_available() {
        return;
    }
    let (_d, s) = start();
    let sink = Sink::start().await;
    let (stream, group) = (unique("spate-stream"), unique("spate-group"));
    let mut c = redis_conn().await;
    // A consumer that reads three entries and dies without acknowledging them.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    for i in 0..3 {
        let _: String =
            redis::cmd("XADD").arg(&stream).arg("*").arg("orphan").arg(i).query_async(&mut c).await.unwrap();
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("dead")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(pending(&mut c, &stream, &group).await, 3);
    s.apply_ok(&redis_source("redis", &stream, &group, &sink.url)).await;
    wait_group(&mut c, &stream, &group).await;
    for i in 0..200 {
        let _: String = redis::cmd("XADD").arg(&stream).arg("*").arg("n").arg(i).query_async(&mut c).await.unwrap();
    }
    let got = sink
        .wait_until("200 new entries", |r| {
            r.iter().filter(|e| e.event.data.as_deref().is_some_and(|d| d.starts_with(b"[\"n\""))).count() >= 200
        })
        .await;
    let e = &got[0].event;
    assert_eq!(e.ty, "dev.knative.sources.redisstream");
    assert_eq!(e.source, format!("127.0.0.1:6379/{stream}"));
    // The dead consumer's entries are taken over once idle long enough (10 s).
    sink.wait_until("the 3 orphaned entries", |r| {
        r.iter().filter(|e| e.event.data.as_deref().is_some_and(|d| d.starts_with(b"[\"orphan\""))).count() >= 3
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&mut c, &stream, &group).await != 0 {
        assert!(Instant::now() < deadline, "entries left pending: {}", pending(&mut c, &stream, &group).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: std::collections::HashSet<String> = sink.events().iter().map(|r| r.event.id.clone()).collect();
    assert_eq!(ids.len(), 203, "each entry once");
    let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut c).await.unwrap();
}

#[tokio::test]
async fn an_integration_source_timer_ticks_at_its_period() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: IntegrationSource\nmetadata:\n  name: timer\nspec:\n  timer:\n    period: 200\n    message: \"Hello, Eventing Core\"\n    repeatCount: 5\n  sink:\n    uri: {}\n",
        sink.url
    ))
    .await;
    let got = sink.wait_for(5).await;
    let e = &got[0].event;
    assert_eq!((e.ty.as_str(), e.source.as_str()), ("dev.knative.eventing.timer", "dev.knative.eventing.timer-source"));
    assert_eq!(e.data.as_deref(), Some(&b"Hello, Eventing Core"[..]));
    let span = got[4].at - got[0].at;
    assert!(span >= Duration::from_millis(700), "five ticks 200 ms apart span ~800 ms, got {span:?}");
    // repeatCount: no sixth.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sink.count(), 5, "repeatCount stops the timer");
}

#[tokio::test]
async fn an_api_server_source_emits_trigger_add_update_and_delete() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: watch\nspec:\n  mode: Resource\n  resources:\n    - apiVersion: eventing.knative.dev/v1\n      kind: Trigger\n  sink:\n    uri: {}\n",
        sink.url
    ))
    .await;
    wait_source(&s, "sources.knative.dev/v1", "apiserversources", "watch", "Ready", ready).await;
    let t = |filter: &str| {
        format!(
            "{}---\n{}",
            broker("default", ""),
            trigger("t1", "default", &type_filter(filter), "http://127.0.0.1:9/", "")
        )
    };
    s.apply_ok(&t("a")).await;
    s.apply_ok(&t("b")).await;
    delete_ok(&s, "eventing.knative.dev/v1", "triggers", "t1").await;
    let got = sink.wait_for(3).await;
    let types: Vec<&str> = got.iter().map(|r| r.event.ty.as_str()).collect();
    assert_eq!(
        types,
        [
            "dev.knative.apiserver.resource.add",
            "dev.knative.apiserver.resource.update",
            "dev.knative.apiserver.resource.delete"
        ]
    );
    let e = &got[1].event;
    assert_eq!(e.subject.as_deref(), Some("/apis/eventing.knative.dev/v1/namespaces/default/triggers/t1"));
    let data: Value = serde_json::from_slice(e.data.as_deref().unwrap()).unwrap();
    assert_eq!(data.pointer("/spec/filter/attributes/type").and_then(Value::as_str), Some("b"), "{data:#}");
    assert_eq!(e.extension("kind").map(|v| v.to_canonical().into_owned()).as_deref(), Some("Trigger"));
}

#[tokio::test]
async fn get_sources_lists_every_kind_behind_the_seam() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: IntegrationSource\nmetadata:\n  name: t\nspec:\n  timer:\n    period: 100000\n    message: m\n  sink:\n    uri: {u}\n---\napiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: a\nspec:\n  resources:\n    - apiVersion: v1\n      kind: Secret\n  sink:\n    uri: {u}\n",
        u = sink.url
    ))
    .await;
    let out = cli(&s, &["get", "sources"]);
    for kind in ["IntegrationSource", "ApiServerSource"] {
        assert!(
            out.lines().any(|l| l.contains(kind) && l.contains(&sink.url) && l.contains("True")),
            "{kind} missing or not Ready:\n{out}"
        );
    }
}

/// A moto server (S3 and SQS) on a free port, stopped on drop.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `moto_server` (`pip install 'moto[server]'`); `None` (skip) outside CI when it is absent.
fn moto() -> Option<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but moto_server cannot start: {e} (.ci/run installs it)"
            );
            eprintln!("skipping: moto_server cannot start ({e}); pip install 'moto[server]'");
            return None;
        }
    };
    let m = Moto { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(m)
}

async fn ok(r: reqwest::RequestBuilder, what: &str) -> String {
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{what}: {status} {text}");
    text
}

async fn sqs(m: &Moto, action: &str, body: Value) -> Value {
    let r = client()
        .post(format!("{}/", m.url))
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", format!("AmazonSQS.{action}"))
        // moto routes by the service named in the credential scope (it does not check the signature).
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string());
    serde_json::from_str(&ok(r, action).await).unwrap_or(Value::Null)
}

const AWS_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: aws\nstringData:\n  aws.accessKey: AKIDTEST\n  aws.secretKey: secret\n---\n";

#[tokio::test]
async fn an_integration_source_s3_emits_each_uploaded_object_once_and_deletes_it() {
    let Some(m) = moto() else { return };
    let d = tempdir();
    let s = Server::start(d.path(), &["--max-event-size", "65536"]);
    let sink = Sink::start().await;
    ok(client().put(format!("{}/uploads", m.url)), "create bucket").await;
    s.apply_ok(&format!(
        "{AWS_SECRET}apiVersion: sources.knative.dev/v1alpha1\nkind: IntegrationSource\nmetadata:\n  name: s3\nspec:\n  aws:\n    s3:\n      arn: \"arn:aws:s3:::uploads\"\n      region: us-east-1\n      uriEndpointOverride: {}\n      overrideEndpoint: true\n      forcePathStyle: true\n      delay: 100\n    auth:\n      secret:\n        ref:\n          name: aws\n  sink:\n    uri: {}\n",
        m.url, sink.url
    ))
    .await;
    let keys = ["photo-1.jpg", "dir/with space & amp.txt", "three"];
    for k in keys {
        let url = format!("{}/uploads/{}", m.url, k.replace(' ', "%20").replace('&', "%26"));
        ok(client().put(url).header("content-type", "text/plain").body(format!("body of {k}")), "upload").await;
    }
    // Larger than --max-event-size: left in the bucket, unread, and said so.
    ok(client().put(format!("{}/uploads/big.bin", m.url)).body(vec![b'x'; 100_000]), "upload").await;
    let got = sink.wait_for(3).await;
    for k in keys {
        let e: Vec<_> = got
            .iter()
            .filter(|r| r.event.extension("key").map(|v| v.to_canonical().into_owned()).as_deref() == Some(k))
            .collect();
        assert_eq!(e.len(), 1, "{k} emitted once");
        let ev = &e[0].event;
        assert_eq!(
            (ev.ty.as_str(), ev.source.as_str()),
            ("dev.knative.eventing.aws-s3", "dev.knative.eventing.aws-s3-source")
        );
        assert_eq!(ev.data.as_deref(), Some(format!("body of {k}").as_bytes()));
    }
    // Deleted after read: only the oversized object stays, and nothing is emitted twice.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = ok(client().get(format!("{}/uploads?list-type=2", m.url)), "list").await;
        if list.matches("<Key>").count() == 1 && list.contains("<Key>big.bin</Key>") {
            break;
        }
        assert!(Instant::now() < deadline, "objects not deleted after read: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count(), 3, "each object once, the oversized one never");
    let st = wait_source(
        &s,
        "sources.knative.dev/v1alpha1",
        "integrationsources",
        "s3",
        "the oversized object reported",
        |v| v.pointer("/status/spate/lastError").and_then(Value::as_str).is_some_and(|e| e.contains("big.bin")),
    )
    .await;
    assert_eq!(st.pointer("/status/spate/failed").and_then(Value::as_u64), Some(1), "{st:#}");
}

#[tokio::test]
async fn an_integration_source_sqs_fires_on_an_upload_through_s3_notifications() {
    let Some(m) = moto() else { return };
    let (_d, s) = start();
    let sink = Sink::start().await;
    sqs(&m, "CreateQueue", serde_json::json!({"QueueName": "uploads-q"})).await;
    ok(client().put(format!("{}/media", m.url)), "create bucket").await;
    let notification = "<NotificationConfiguration><QueueConfiguration><Id>n1</Id><Queue>arn:aws:sqs:us-east-1:123456789012:uploads-q</Queue><Event>s3:ObjectCreated:*</Event></QueueConfiguration></NotificationConfiguration>";
    ok(client().put(format!("{}/media?notification", m.url)).body(notification), "bucket notification").await;
    s.apply_ok(&format!(
        "{AWS_SECRET}apiVersion: sources.knative.dev/v1alpha1\nkind: IntegrationSource\nmetadata:\n  name: sqs\nspec:\n  aws:\n    sqs:\n      arn: \"arn:aws:sqs:us-east-1:123456789012:uploads-q\"\n      region: us-east-1\n      uriEndpointOverride: {}\n      overrideEndpoint: true\n      waitTimeSeconds: 1\n      delay: 50\n    auth:\n      secret:\n        ref:\n          name: aws\n  sink:\n    uri: {}\n",
        m.url, sink.url
    ))
    .await;
    ok(client().put(format!("{}/media/cat%20video.mp4", m.url)).body("frames"), "upload").await;
    let got = sink
        .wait_until("an ObjectCreated notification", |r| {
            r.iter()
                .any(|e| e.event.data.as_deref().is_some_and(|d| String::from_utf8_lossy(d).contains("ObjectCreated")))
        })
        .await;
    let ev = &got
        .iter()
        .find(|e| String::from_utf8_lossy(e.event.data.as_deref().unwrap()).contains("ObjectCreated"))
        .unwrap()
        .event;
    assert_eq!(
        (ev.ty.as_str(), ev.source.as_str()),
        ("dev.knative.eventing.aws-sqs", "dev.knative.eventing.aws-sqs-source")
    );
    let n: Value = serde_json::from_slice(ev.data.as_deref().unwrap()).unwrap();
    let rec = &n["Records"][0];
    assert!(rec["eventName"].as_str().unwrap().starts_with("ObjectCreated"), "{n:#}");
    assert_eq!(rec["s3"]["bucket"]["name"], "media");
    assert_eq!(rec["s3"]["object"]["key"], "cat+video.mp4", "S3 notifications URL-encode keys");
    // Deleted after the sink accepted: the queue drains.
    let url = sqs(&m, "GetQueueUrl", serde_json::json!({"QueueName": "uploads-q"})).await["QueueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = sqs(&m, "GetQueueAttributes", serde_json::json!({"QueueUrl": url, "AttributeNames": ["All"]})).await;
        let visible = a["Attributes"]["ApproximateNumberOfMessages"].as_str().unwrap_or("?").to_string();
        let hidden = a["Attributes"]["ApproximateNumberOfMessagesNotVisible"].as_str().unwrap_or("?").to_string();
        if visible == "0" && hidden == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "messages left in the queue: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The object-storage example (`examples/object-storage.yaml`): an upload to the bucket
/// reaches the thumbnailer Service through the IntegrationSource and a Broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_object_storage_example_makes_a_thumbnail_from_an_upload() {
    let Some(m) = moto() else { return };
    let (_d, s) = start();
    let sink = Sink::start().await;
    let out = tempdir();
    let root = format!("{}/../../", env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(format!("{root}examples/object-storage.yaml"))
        .unwrap()
        .replace("examples/functions/", &format!("{root}examples/functions/"))
        .replace("http://127.0.0.1:5000", &m.url)
        .replace("/tmp/spate-thumbnails", &out.path().display().to_string());
    let tap = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: tap\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: com.example.thumbnail.created\n  subscriber:\n    uri: {}\n",
        sink.url
    );
    ok(client().put(format!("{}/uploads", m.url)), "create bucket").await;
    s.apply_ok(&format!("{yaml}\n---\n{tap}")).await;
    let (w, h) = (100usize, 60usize);
    let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
    ppm.extend((0..w * h).flat_map(|i| [(i % 256) as u8, 0, 255]));
    ok(client().put(format!("{}/uploads/cat.ppm", m.url)).body(ppm), "upload").await;
    let got = sink.wait_for(1).await;
    let v: Value = serde_json::from_slice(got[0].event.data.as_deref().unwrap()).unwrap();
    assert_eq!(
        (v["key"].as_str(), v["width"].as_u64(), v["height"].as_u64()),
        (Some("cat.ppm"), Some(25), Some(15)),
        "{v}"
    );
    let thumb = std::fs::read(out.path().join("cat.ppm")).unwrap();
    assert!(thumb.starts_with(b"P6\n25 15\n255\n") && thumb.len() == 13 + 25 * 15 * 3);
}

/// A source whose server is down is not Ready and says why (and recovers by itself when it
/// is back: the same path clears the condition once it connects).
#[tokio::test]
async fn a_source_whose_server_is_down_is_not_ready_and_says_why() {
    let (_d, s) = start();
    let sink = Sink::start().await;
    s.apply_ok(&format!(
        "{}---\napiVersion: sources.knative.dev/v1alpha1\nkind: RedisStreamSource\nmetadata:\n  name: nowhere\nspec:\n  address: 127.0.0.1:1\n  stream: s\n  sink:\n    uri: {u}\n",
        rabbit_source("closed", "ex", "q", &sink.url).replace("http://127.0.0.1:15672", "amqp://127.0.0.1:1"),
        u = sink.url
    ))
    .await;
    for (plural, name, what) in
        [("redisstreamsources", "nowhere", "Redis 127.0.0.1:1"), ("rabbitmqsources", "closed", "RabbitMQ")]
    {
        let st = wait_source(&s, "sources.knative.dev/v1alpha1", plural, name, "UpstreamUnavailable", |v| {
            v.pointer("/status/conditions/0/reason").and_then(Value::as_str) == Some("UpstreamUnavailable")
        })
        .await;
        let ready = &st["status"]["conditions"][0];
        assert_eq!(ready["status"], "False", "{st:#}");
        assert!(ready["message"].as_str().unwrap_or("").contains(what), "{st:#}");
    }
}
