//! Channels, InMemoryChannels, Subscriptions (`messaging.knative.dev/v1`) and
//! the flows that compile into them, Sequence and Parallel (`flows.knative.dev/v1`).

use serde_json::Value;
use spate_core::Destination;

use crate::delivery::{self, DeliverySpec};
use crate::walk::{Walker, join};
use crate::{CHANNEL_STORAGE_ANNOTATION, meta};

/// How a channel stores its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStorage {
    /// The configured durable log (the default, even for InMemoryChannel).
    Log,
    /// Process memory: faster, lost on restart (`spate.dev/channel-storage: memory`).
    Memory,
    /// A NATS JetStream stream (NatsJetStreamChannel, or it as `channelTemplate`).
    Nats,
    /// A Kafka topic (KafkaChannel, or it as `channelTemplate`).
    Kafka,
}

/// Engine settings of a channel (KafkaChannel: its topic's partitions,
/// replication and retention); empty for other kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSettings {
    pub partitions: Option<u32>,
    pub replication_factor: Option<u32>,
    pub retention_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    pub namespace: String,
    pub name: String,
    pub storage: ChannelStorage,
    pub settings: ChannelSettings,
    pub delivery: Option<DeliverySpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    pub namespace: String,
    pub name: String,
    /// The channel's kind (`Channel` or `InMemoryChannel`) and name, in `namespace`.
    pub channel_kind: String,
    pub channel: String,
    pub subscriber: Option<Destination>,
    pub reply: Option<Destination>,
    pub delivery: Option<DeliverySpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SequenceStep {
    pub destination: Destination,
    pub delivery: Option<DeliverySpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SequenceConfig {
    pub namespace: String,
    pub name: String,
    pub steps: Vec<SequenceStep>,
    pub storage: ChannelStorage,
    pub settings: ChannelSettings,
    pub reply: Option<Destination>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParallelBranch {
    pub filter: Option<Destination>,
    pub subscriber: Destination,
    pub reply: Option<Destination>,
    pub delivery: Option<DeliverySpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParallelConfig {
    pub namespace: String,
    pub name: String,
    pub branches: Vec<ParallelBranch>,
    pub storage: ChannelStorage,
    pub settings: ChannelSettings,
    pub reply: Option<Destination>,
}

fn storage(w: &mut Walker, metadata: &Value) -> ChannelStorage {
    match meta::annotation(metadata, CHANNEL_STORAGE_ANNOTATION) {
        None | Some("log") => ChannelStorage::Log,
        Some("memory") => ChannelStorage::Memory,
        Some(other) => {
            w.error(
                &format!("metadata.annotations[{CHANNEL_STORAGE_ANNOTATION}]"),
                format!("'{other}' is not one of log, memory"),
            );
            ChannelStorage::Log
        }
    }
}

/// The fields of a KafkaChannel's spec (Knative's `messaging.knative.dev/v1beta1`):
/// `numPartitions` (default 1), `replicationFactor` (default 1), `retentionDuration`
/// (ISO 8601; default: the Kafka server's), as topic settings.
fn kafka_channel_settings(w: &mut Walker, m: &serde_json::Map<String, Value>, path: &str) -> ChannelSettings {
    let partitions = w.opt_u32(m, "numPartitions", path).unwrap_or(1);
    if partitions == 0 {
        w.error(&join(path, "numPartitions"), "must be at least 1");
    }
    let replication = w.opt_u32(m, "replicationFactor", path).unwrap_or(1);
    if replication == 0 {
        w.error(&join(path, "replicationFactor"), "must be at least 1");
    }
    ChannelSettings {
        partitions: Some(partitions.max(1)),
        replication_factor: Some(replication.max(1)),
        retention_ms: w.opt_duration(m, "retentionDuration", path).map(|d| d.as_millis() as u64),
    }
}

const KAFKA_CHANNEL_FIELDS: &[&str] =
    &["delivery", "subscribers", "numPartitions", "replicationFactor", "retentionDuration"];

/// `channelTemplate`: InMemoryChannel (the default), NatsJetStreamChannel or
/// KafkaChannel (its storage and settings are returned).
fn channel_template(w: &mut Walker, v: Option<&Value>, path: &str) -> Option<(ChannelStorage, ChannelSettings)> {
    let v = v.filter(|v| !v.is_null())?;
    let m = w.object(v, path, &["apiVersion", "kind", "spec"])?;
    let spec_path = join(path, "spec");
    let empty = serde_json::Map::new();
    let storage = match w.opt_str(m, "kind", path) {
        None | Some("InMemoryChannel") => None,
        Some("NatsJetStreamChannel") => Some(ChannelStorage::Nats),
        Some("KafkaChannel") => Some(ChannelStorage::Kafka),
        Some(other) => {
            w.error(
                &join(path, "kind"),
                format!(
                    "'{other}' is not a channel kind Spate can create (InMemoryChannel, NatsJetStreamChannel, KafkaChannel)"
                ),
            );
            None
        }
    };
    let spec = match m.get("spec") {
        Some(spec) if storage == Some(ChannelStorage::Kafka) => w.object(spec, &spec_path, KAFKA_CHANNEL_FIELDS),
        // Channel specs may carry delivery; NATS ones also their stream and consumer settings (accepted, not used).
        Some(spec) => w.object(spec, &spec_path, &["delivery", "stream", "consumerConfigTemplate"]),
        None => None,
    };
    let settings = match storage {
        Some(ChannelStorage::Kafka) => kafka_channel_settings(w, spec.unwrap_or(&empty), &spec_path),
        _ => ChannelSettings::default(),
    };
    storage.map(|s| (s, settings))
}

pub fn compile_channel(
    w: &mut Walker,
    spec: &Value,
    ns: &str,
    name: &str,
    metadata: &Value,
    kind: crate::Kind,
) -> Option<ChannelConfig> {
    let allowed: &[&str] = match kind {
        crate::Kind::Channel => &["channelTemplate", "delivery", "subscribers"],
        crate::Kind::NatsJetStreamChannel => &["delivery", "subscribers", "stream", "consumerConfigTemplate"],
        crate::Kind::KafkaChannel => KAFKA_CHANNEL_FIELDS,
        _ => &["delivery", "subscribers"],
    };
    let m = w.object(spec, "spec", allowed)?;
    let template = match kind {
        crate::Kind::Channel => channel_template(w, m.get("channelTemplate"), "spec.channelTemplate"),
        crate::Kind::NatsJetStreamChannel => Some((ChannelStorage::Nats, ChannelSettings::default())),
        crate::Kind::KafkaChannel => Some((ChannelStorage::Kafka, kafka_channel_settings(w, m, "spec"))),
        _ => None,
    };
    let delivery = m.get("delivery").and_then(|d| delivery::parse(w, d, "spec.delivery", ns));
    let annotated = storage(w, metadata);
    let (storage, settings) = template.unwrap_or((annotated, ChannelSettings::default()));
    Some(ChannelConfig { namespace: ns.into(), name: name.into(), storage, settings, delivery })
}

pub fn compile_subscription(w: &mut Walker, spec: &Value, ns: &str, name: &str) -> Option<SubscriptionConfig> {
    let m = w.object(spec, "spec", &["channel", "subscriber", "reply", "delivery"])?;
    let (mut channel_kind, mut channel) = (None, None);
    match m.get("channel") {
        None => w.error("spec.channel", "is required"),
        Some(c) => {
            if let Some(cm) = w.object(c, "spec.channel", &["apiVersion", "kind", "name", "namespace"]) {
                channel_kind = w.req_str(cm, "kind", "spec.channel").map(str::to_string);
                channel = w.req_str(cm, "name", "spec.channel").map(str::to_string);
                w.req_str(cm, "apiVersion", "spec.channel");
                match channel_kind.as_deref() {
                    Some("Channel" | "InMemoryChannel" | "NatsJetStreamChannel" | "KafkaChannel") | None => {}
                    Some(other) => w.error(
                        "spec.channel.kind",
                        format!(
                            "'{other}' is not a channel kind (Channel, InMemoryChannel, NatsJetStreamChannel, KafkaChannel)"
                        ),
                    ),
                }
                if let Some(other_ns) = w.opt_str(cm, "namespace", "spec.channel")
                    && other_ns != ns
                {
                    w.error("spec.channel.namespace", "a Subscription must be in its channel's namespace");
                }
            }
        }
    }
    let subscriber = m.get("subscriber").and_then(|d| delivery::destination(w, d, "spec.subscriber", ns));
    let reply = m.get("reply").and_then(|d| delivery::destination(w, d, "spec.reply", ns));
    if !m.contains_key("subscriber") && !m.contains_key("reply") {
        w.error("spec", "needs a subscriber, a reply, or both");
    }
    let delivery = m.get("delivery").and_then(|d| delivery::parse(w, d, "spec.delivery", ns));
    Some(SubscriptionConfig {
        namespace: ns.into(),
        name: name.into(),
        channel_kind: channel_kind?,
        channel: channel?,
        subscriber,
        reply,
        delivery,
    })
}

pub fn compile_sequence(
    w: &mut Walker,
    spec: &Value,
    ns: &str,
    name: &str,
    metadata: &Value,
) -> Option<SequenceConfig> {
    let m = w.object(spec, "spec", &["steps", "channelTemplate", "reply"])?;
    let template = channel_template(w, m.get("channelTemplate"), "spec.channelTemplate");
    let mut steps = vec![];
    match m.get("steps") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("spec.steps[{i}]");
                let Some(sm) = w.object(item, &p, &["ref", "uri", "CACerts", "audience", "delivery"]) else { continue };
                let mut dest = sm.clone();
                let delivery = dest.remove("delivery").and_then(|d| delivery::parse(w, &d, &join(&p, "delivery"), ns));
                if let Some(destination) = delivery::destination(w, &Value::Object(dest), &p, ns) {
                    steps.push(SequenceStep { destination, delivery });
                }
            }
        }
        _ => w.error("spec.steps", "must be a non-empty list of destinations"),
    }
    let reply = m.get("reply").and_then(|d| delivery::destination(w, d, "spec.reply", ns));
    let (storage, settings) = template.unwrap_or_else(|| (storage(w, metadata), ChannelSettings::default()));
    Some(SequenceConfig { namespace: ns.into(), name: name.into(), steps, storage, settings, reply })
}

pub fn compile_parallel(
    w: &mut Walker,
    spec: &Value,
    ns: &str,
    name: &str,
    metadata: &Value,
) -> Option<ParallelConfig> {
    let m = w.object(spec, "spec", &["branches", "channelTemplate", "reply"])?;
    let template = channel_template(w, m.get("channelTemplate"), "spec.channelTemplate");
    let mut branches = vec![];
    match m.get("branches") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("spec.branches[{i}]");
                let Some(bm) = w.object(item, &p, &["filter", "subscriber", "reply", "delivery"]) else { continue };
                let filter = bm.get("filter").and_then(|d| delivery::destination(w, d, &join(&p, "filter"), ns));
                let subscriber = match bm.get("subscriber") {
                    Some(d) => delivery::destination(w, d, &join(&p, "subscriber"), ns),
                    None => {
                        w.error(&join(&p, "subscriber"), "is required");
                        None
                    }
                };
                let reply = bm.get("reply").and_then(|d| delivery::destination(w, d, &join(&p, "reply"), ns));
                let delivery = bm.get("delivery").and_then(|d| delivery::parse(w, d, &join(&p, "delivery"), ns));
                if let Some(subscriber) = subscriber {
                    branches.push(ParallelBranch { filter, subscriber, reply, delivery });
                }
            }
        }
        _ => w.error("spec.branches", "must be a non-empty list of branches"),
    }
    let reply = m.get("reply").and_then(|d| delivery::destination(w, d, "spec.reply", ns));
    let (storage, settings) = template.unwrap_or_else(|| (storage(w, metadata), ChannelSettings::default()));
    Some(ParallelConfig { namespace: ns.into(), name: name.into(), branches, storage, settings, reply })
}
