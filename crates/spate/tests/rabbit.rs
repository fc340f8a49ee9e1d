//! The `RabbitMQBroker` class against the RabbitMQ running here (127.0.0.1:5672,
//! guest/guest): order under `rabbitmq.eventing.knative.dev/parallelism: "1"`,
//! and accepted events surviving a kill -9 of Spate in the trigger's queue.
//! (The broker contract tests run on this class too: `eventing::rabbit::*`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelism_one_keeps_order_and_the_queue_keeps_events_across_a_crash() {
    let Some((args, _)) = class_args(Class::Rabbit, "rabbit") else { return };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ordered = Sink::with(accept_all(), Duration::from_millis(5)).await;
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let held = Sink::with(
        Arc::new(move |_, _| {
            if gate.load(Ordering::SeqCst) {
                StatusCode::ACCEPTED.into_response()
            } else {
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        }),
        Duration::ZERO,
    )
    .await;
    let yaml = [
        broker("default", ""),
        format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: in-order\n  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: \"1\"\nspec:\n  broker: default\n  filter: {{attributes: {{type: seq}}}}\n  subscriber:\n    uri: {}\n",
            ordered.url
        ),
        trigger("held", "default", &type_filter("held"), &held.url, "  delivery: {retry: 1000, backoffPolicy: linear, backoffDelay: PT0.05S}\n"),
    ]
    .join("---\n");
    let dir = tempdir();
    let mut s = Server::start(dir.path(), &args);
    s.apply_ok(&yaml).await;
    let url = s.broker_url("default", "default");
    for i in 0..30 {
        assert_eq!(send(&url, &format!("s{i:02}"), "seq", "x").await, 202);
    }
    let got = ordered.wait_for(30).await;
    let ids: Vec<&str> = got.iter().map(|r| r.event.id.as_str()).collect();
    let want: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
    assert_eq!(ids, want, "delivered one at a time, in order");

    // Accepted while the subscriber refuses, then Spate dies: RabbitMQ keeps them.
    for i in 0..20 {
        assert_eq!(send(&url, &format!("h{i}"), "held", "x").await, 202);
    }
    held.wait_until("a first attempt", |g| !g.is_empty()).await;
    s.kill();
    open.store(true, Ordering::SeqCst);
    let s = Server::start(dir.path(), &args);
    let got = held
        .wait_until("all 20 after the restart", |g| {
            let accepted: std::collections::HashSet<&str> = g.iter().map(|r| r.event.id.as_str()).collect();
            (0..20).all(|i| accepted.contains(format!("h{i}").as_str()))
        })
        .await;
    assert!(got.len() >= 20);
    drop(s);
}

/// A RabbitMQBroker applied while RabbitMQ cannot be reached is not Ready
/// (StorageUnavailable: its exchange cannot be declared); once RabbitMQ answers,
/// the control plane reconciles again with backoff and the broker becomes Ready
/// with no new apply. (RabbitMQ is reached through a forwarder that starts late.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_applied_while_rabbitmq_is_unreachable_becomes_ready_when_it_answers() {
    if !rabbit_available() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempdir();
    let cluster = format!("late{}", std::process::id());
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let s = Server::start(dir.path(), &["--rabbitmq-url", &url, "--cluster-name", &cluster]);
    let b = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: late\n  annotations:\n    eventing.knative.dev/broker.class: RabbitMQBroker\n";
    s.apply_ok(b).await;
    let path = "/apis/eventing.knative.dev/v1/namespaces/default/brokers/late";
    let ready = |v: &serde_json::Value| v.pointer("/status/conditions/0/status") == Some(&serde_json::json!("True"));
    let down = s.admin_json(path).await;
    assert!(!ready(&down) && down.to_string().contains("StorageUnavailable"), "{down}");
    // RabbitMQ becomes reachable on that port.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    s.wait_json(path, "the broker Ready once RabbitMQ answers", ready).await;
    assert_eq!(send(&s.broker_url("default", "late"), "after", "t", "{}").await, 202);
}
