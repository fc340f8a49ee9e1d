//! The fault suite on the embedded log (`MTChannelBasedBroker`): `spate serve`
//! killed with SIGKILL under load, with a stuck trigger beside a healthy one.
//! Every acked event is delivered to both triggers; no kill makes a trigger
//! deliver more than its in-flight bound twice. `SPATE_TORTURE=1` runs ten kills.

mod common;
mod faults;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_spate_under_load_loses_nothing_and_redelivers_within_the_bound() {
    let (args, _cluster) = class_args(Class::Embedded, "fault-embedded").expect("the embedded log needs no server");
    let plan = faults::Plan::from_env().unspaced();
    faults::kill_spate("embedded", args, plan, faults::Bounds::both(plan.in_flight)).await;
}
