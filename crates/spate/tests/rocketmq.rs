//! RocketMQSource against a real RocketMQ (name server 127.0.0.1:9876, broker
//! :10911; `../shared/peers/start rocketmq`, which `.ci/run` runs): messages
//! from an independent producer reach the sink, and a kill -9 of Spate
//! mid-stream loses none.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rocketmq_client_rust::prelude::DefaultMQProducer;
use rocketmq_client_rust::{ClientRuntime, ClientRuntimeConfig, TelemetryHandle};
use rocketmq_model::common::message::message_single::Message;

fn rocketmq_available() -> bool {
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:9876".parse().unwrap(), Duration::from_secs(1)).is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "RocketMQ is not answering at 127.0.0.1:9876 (.ci/run starts it)");
    eprintln!("skipping: no RocketMQ name server at 127.0.0.1:9876; run ../shared/peers/start rocketmq");
    false
}

/// The client's own runtime, kept for the life of the test process.
fn client_runtime() -> Arc<ClientRuntime> {
    let cfg = rocketmq_runtime::RuntimeConfig::for_parallelism("test-rocketmq", 2);
    let owner = rocketmq_runtime::RuntimeOwner::plan(cfg).unwrap().build().unwrap();
    let rt = ClientRuntime::try_new(
        owner.root_context().component("client"),
        ClientRuntimeConfig::default(),
        TelemetryHandle::noop(),
    )
    .unwrap();
    Box::leak(Box::new(owner));
    rt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rocketmq_source_delivers_fifty_messages_and_a_kill_9_loses_none() {
    if !rocketmq_available() {
        return;
    }
    let n = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let topic = format!("SpateTest{n}");
    let dir = tempdir();
    // A slow sink, so that the kill lands mid-stream.
    let sink = Sink::with(accept_all(), Duration::from_millis(100)).await;
    let yaml = format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RocketMQSource\nmetadata:\n  name: orders\nspec:\n  topic: {topic}\n  namesrvAddr: 127.0.0.1:9876\n  groupName: spate-test-{n}\n  sink:\n    uri: {}\n",
        sink.url
    );
    let mut s = Server::start(dir.path(), &[]);
    s.apply_ok(&yaml).await;
    let mut producer = DefaultMQProducer::builder(client_runtime())
        .producer_group(format!("spate-test-producer-{n}"))
        .name_server_addr("127.0.0.1:9876".to_string())
        .build();
    producer.start().await.unwrap();
    let mut sent = HashSet::new();
    for i in 0..50 {
        let body = format!("order-{i}");
        let m = Message::builder()
            .topic(topic.as_str())
            .tags("TagA")
            .keys(vec![format!("k{i}")])
            .body_slice(body.as_bytes())
            .build_unchecked();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The first sends wait for the topic's route (auto-created by the broker).
        loop {
            match producer.send_with_timeout(m.clone(), 3000).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot send to RocketMQ: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        sent.insert(body);
    }
    let got = sink.wait_until("the first messages", |r| r.len() >= 10).await;
    assert!(got.len() < 50, "the kill must land mid-stream (the sink takes 100 ms an event)");
    let e = &got[0].event;
    assert_eq!(e.ty, "dev.knative.sources.rocketmq");
    assert_eq!(e.source, format!("/apis/v1/namespaces/default/rocketmqsources/orders#{topic}"));
    assert_eq!(e.extension("tags").map(|v| v.to_canonical().into_owned()).as_deref(), Some("TagA"));
    assert!(e.extension("keys").is_some(), "the message keys are an extension");
    s.kill();
    let s = Server::start(dir.path(), &[]);
    let bodies = |r: &[Received]| -> HashSet<String> {
        r.iter().filter_map(|e| e.event.data.as_deref().map(|d| String::from_utf8_lossy(d).into_owned())).collect()
    };
    let got = sink.wait_until("all 50 after the restart", |r| bodies(r).len() >= 50).await;
    assert_eq!(bodies(&got), sent, "none lost (duplicates allowed: at least once)");
    drop(s);
    producer.shutdown().await;
}
