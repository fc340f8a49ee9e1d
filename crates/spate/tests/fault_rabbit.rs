//! The fault suite on RabbitMQ (`RabbitMQBroker`): kill -9 of `spate serve`,
//! and every connection between Spate and RabbitMQ cut at once (through a
//! TCP proxy in the test) while RabbitMQ keeps running. A stuck trigger
//! beside a healthy one; every acked event delivered to both, no fault making
//! a trigger deliver more than its in-flight bound twice.

mod common;
mod faults;

use common::*;
use faults::Plan;

fn rabbit_args(test: &str) -> Option<Vec<String>> {
    faults::engine_args(Class::Rabbit, test, "RabbitMQ is not answering on 127.0.0.1:5672")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_spate_on_rabbitmq_under_load_loses_nothing() {
    let Some(args) = rabbit_args("fault-rabbit-kill") else { return };
    let plan = Plan::from_env();
    faults::kill_spate("rabbitmq", args, plan, faults::Bounds::both(plan.in_flight)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutting_spates_rabbitmq_connections_under_load_loses_nothing() {
    let Some(mut args) = rabbit_args("fault-rabbit-cut") else { return };
    let proxy = faults::Proxy::start("127.0.0.1:5672").await;
    args.extend(["--rabbitmq-url".into(), format!("amqp://guest:guest@{}/%2f", proxy.addr)]);
    let plan = Plan::from_env();
    faults::cut_engine_connections("rabbitmq", args, &proxy, plan, faults::Bounds::both(plan.in_flight)).await;
}
