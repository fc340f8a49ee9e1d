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
