//! The Knative-shaped `status` of every kind the control plane serves, typed:
//! one `Serialize` struct per shape, built from what the rooms report
//! (`ResourceStatus`, `ServiceStatus`, `SinkStatus`), serialised once. Field
//! names are Knative's. (Sources add their own fields through
//! `SourceStatus::fields`; a Trigger's live part is `live::TriggerLive`.)

use serde::Serialize;
use serde_json::Value;
use spate_api::{Condition, Kind};
use spate_eventing::ResourceStatus;
use spate_serving::ServiceStatus;

pub use spate_core::rules::now_rfc3339_seconds as now_rfc3339;

/// One condition; reason and message only when it does not hold.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    status: &'static str,
    last_transition_time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

fn truth(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

pub fn conditions<'a>(cs: &'a [Condition], now: &'a str) -> Vec<ConditionJson<'a>> {
    cs.iter()
        .map(|c| ConditionJson {
            kind: c.kind,
            status: truth(c.ok),
            last_transition_time: now,
            reason: (!c.ok).then_some(c.reason.as_str()),
            message: (!c.ok).then_some(c.message.as_str()),
        })
        .collect()
}

pub fn conditions_json(cs: &[Condition], now: &str) -> Value {
    to_value(&conditions(cs, now))
}

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("status types serialise")
}

#[derive(Serialize)]
struct Address<'a> {
    url: &'a str,
}

/// What every status has.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Common<'a> {
    observed_generation: u64,
    conditions: Vec<ConditionJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<Address<'a>>,
}

/// A Broker's or Trigger's extra fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivery<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriber_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_sink_uri: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Physical<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriber_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_sink_uri: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionStatus<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    physical_subscription: Physical<'a>,
}

#[derive(Serialize)]
struct SubscriberReady<'a> {
    name: &'a str,
    ready: &'static str,
}

#[derive(Serialize)]
struct ChannelStatus<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    subscribers: Vec<SubscriberReady<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChildRef<'a> {
    api_version: &'static str,
    kind: &'static str,
    name: &'a str,
    namespace: &'a str,
}

#[derive(Serialize)]
struct ChildReady<'a> {
    status: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

/// A flow's channel or subscription, by reference, with its readiness.
#[derive(Serialize)]
struct Child<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<ChildRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<ChildRef<'a>>,
    ready: ChildReady<'a>,
}

fn child(c: &ResourceStatus) -> Child<'_> {
    let is_sub = c.kind == Kind::Subscription;
    let r = ChildRef {
        api_version: "messaging.knative.dev/v1",
        kind: if is_sub { "Subscription" } else { "InMemoryChannel" },
        name: &c.name,
        namespace: &c.namespace,
    };
    let ready = &c.conditions[0];
    Child {
        channel: (!is_sub).then_some(ChildRef { ..r }),
        subscription: is_sub.then_some(ChildRef { ..r }),
        ready: ChildReady {
            status: truth(ready.ok),
            kind: "Ready",
            reason: (!ready.ok).then_some(ready.reason.as_str()),
            message: (!ready.ok).then_some(ready.message.as_str()),
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SequenceStatus<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    channel_statuses: Vec<Child<'a>>,
    subscription_statuses: Vec<Child<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Branch<'a> {
    filter_channel_status: Child<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter_subscription_status: Option<Child<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription_status: Option<Child<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ParallelStatus<'a> {
    #[serde(flatten)]
    common: Common<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress_channel_status: Option<Child<'a>>,
    branch_statuses: Vec<Branch<'a>>,
}

/// A Parallel's branches: its children come as the ingress channel and one channel per
/// branch, and per branch a filter subscription then the branch's subscription.
fn branches(st: &ResourceStatus) -> (Option<Child<'_>>, Vec<Branch<'_>>) {
    let channels: Vec<&ResourceStatus> = st.children.iter().filter(|c| c.kind != Kind::Subscription).collect();
    let subs: Vec<&ResourceStatus> = st.children.iter().filter(|c| c.kind == Kind::Subscription).collect();
    let ingress = channels.first().map(|c| child(c));
    let branches = channels
        .iter()
        .skip(1)
        .enumerate()
        .map(|(i, ch)| Branch {
            filter_channel_status: child(ch),
            filter_subscription_status: subs.get(2 * i).map(|c| child(c)),
            subscription_status: subs.get(2 * i + 1).map(|c| child(c)),
        })
        .collect();
    (ingress, branches)
}

/// The status of an eventing resource (and of kinds with nothing beyond conditions).
pub fn resource(st: &ResourceStatus, generation: u64) -> Value {
    let now = now_rfc3339();
    let common =
        Common { observed_generation: generation, conditions: conditions(&st.conditions, &now), address: None };
    let common = Common { address: st.address.as_deref().map(|url| Address { url }), ..common };
    match st.kind {
        Kind::Subscription => to_value(&SubscriptionStatus {
            common,
            physical_subscription: Physical {
                subscriber_uri: st.subscriber_uri.as_deref(),
                reply_uri: st.reply_uri.as_deref(),
                dead_letter_sink_uri: st.dead_letter_sink_uri.as_deref(),
            },
        }),
        k if k.is_channel() => to_value(&ChannelStatus {
            common,
            subscribers: st
                .children
                .iter()
                .map(|c| SubscriberReady { name: &c.name, ready: truth(c.ready()) })
                .collect(),
        }),
        Kind::Sequence => to_value(&SequenceStatus {
            common,
            channel_statuses: st.children.iter().filter(|c| c.kind != Kind::Subscription).map(child).collect(),
            subscription_statuses: st.children.iter().filter(|c| c.kind == Kind::Subscription).map(child).collect(),
        }),
        Kind::Parallel => {
            let (ingress_channel_status, branch_statuses) = branches(st);
            to_value(&ParallelStatus { common, ingress_channel_status, branch_statuses })
        }
        Kind::Broker | Kind::Trigger => to_value(&Delivery {
            common,
            subscriber_uri: st.subscriber_uri.as_deref(),
            dead_letter_sink_uri: st.dead_letter_sink_uri.as_deref(),
        }),
        _ => to_value(&common),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Traffic<'a> {
    revision_name: &'a str,
    percent: u32,
    latest_revision: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceJson<'a> {
    observed_generation: u64,
    conditions: Vec<ConditionJson<'a>>,
    url: &'a str,
    address: Address<'a>,
    traffic: Vec<Traffic<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest_created_revision_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latest_ready_revision_name: Option<&'a str>,
}

fn traffic_of(st: &ServiceStatus) -> Vec<Traffic<'_>> {
    st.traffic
        .iter()
        .map(|t| Traffic {
            revision_name: &t.revision,
            percent: t.percent,
            latest_revision: t.latest,
            tag: t.tag.as_deref(),
            url: t.url.as_deref(),
        })
        .collect()
}

/// A Service's (and its Route's) traffic targets.
pub fn traffic(st: &ServiceStatus) -> Value {
    to_value(&traffic_of(st))
}

/// A Knative Service's status.
pub fn service(st: &ServiceStatus, generation: u64) -> Value {
    let now = now_rfc3339();
    to_value(&ServiceJson {
        observed_generation: generation,
        conditions: conditions(&st.conditions, &now),
        url: &st.url,
        address: Address { url: &st.address },
        traffic: traffic_of(st),
        latest_created_revision_name: st.latest_created.as_deref(),
        latest_ready_revision_name: st.latest_ready.as_deref(),
    })
}

/// A KafkaSink's status: `TopicReady` (the topic exists or was created) and, once ready, its address.
pub fn kafka_sink(st: &spate_sources::kafka_sink::SinkStatus, generation: u64, address: &str) -> Value {
    let ready = &st.ready;
    let parts = match ready {
        Ok(()) => vec![Condition::ok("TopicReady"), Condition::ok("Addressable")],
        Err((reason, message)) => vec![Condition::fail("TopicReady", reason, message.clone())],
    };
    let cs = Condition::ready_first(parts);
    let now = now_rfc3339();
    to_value(&Common {
        observed_generation: generation,
        conditions: conditions(&cs, &now),
        address: ready.is_ok().then_some(Address { url: address }),
    })
}

/// A flow child's status (no generation of its own: the flow's).
pub fn flow_child(st: &ResourceStatus) -> Value {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct FlowChild<'a> {
        conditions: Vec<ConditionJson<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        address: Option<Address<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        physical_subscription: Option<Physical<'a>>,
    }
    let now = now_rfc3339();
    to_value(&FlowChild {
        conditions: conditions(&st.conditions, &now),
        address: st.address.as_deref().map(|url| Address { url }),
        physical_subscription: st.subscriber_uri.as_deref().map(|u| Physical {
            subscriber_uri: Some(u),
            reply_uri: None,
            dead_letter_sink_uri: None,
        }),
    })
}
