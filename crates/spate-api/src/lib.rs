//! Knative resources as users write them: parsing, defaulting, validation
//! (every problem, with its field path) and compilation into runtime configs.
//!
//! Resources are stored as the normalized JSON the user applied; the typed
//! configs in [`Compiled`] are derived once, at admission, and never parsed
//! again on the hot path.

mod broker;
mod delivery;
mod errors;
pub mod event_policy;
pub mod event_type;
pub mod kafka_sink;
mod kind;
pub mod manifests;
mod messaging;
mod meta;
mod serving;
mod sources;
mod status;
mod trigger;
mod walk;

use serde_json::Value;

pub use broker::{
    BROKER_DEFAULTS, BrokerConfig, BrokerDefault, BrokerDefaults, CHANNEL_TEMPLATE_KEY, ChannelTemplate, ConfigRef,
    channel_template,
};
pub use delivery::{DeliverySpec, check_pem_certificates, trusted_cas};
pub use errors::{AdmissionError, FieldError};
pub use kafka_sink::{ConfigMapConfig, KafkaContentMode, KafkaSinkConfig};
pub use kind::Kind;
pub use manifests::{Derived, read_manifests};
pub use messaging::{
    ChannelConfig, ChannelStorage, ParallelBranch, ParallelConfig, SequenceConfig, SequenceStep, SubscriptionConfig,
};
pub use serving::{
    AUTOSCALING_PREFIX, Autoscaling, ContainerSpec, Readiness, RevisionTemplate, SCALE_METRIC_ANNOTATION, ScaleMetric,
    ServiceConfig, TARGET_BACKLOG_ANNOTATION, TrafficRevision, TrafficTarget, compile_template,
};
pub use sources::{
    ApiServerMode, ApiServerResource, ApiServerSpec, AwsAuth, AwsCommon, BindingSubject, ContainerSourceSpec,
    InitialOffset, IntegrationSpec, KafkaNet, KafkaSpec, PingSpec, RabbitmqConnection, RabbitmqSourceSpec,
    RedisStreamSpec, RocketmqSpec, S3Spec, SOURCE_KINDS, SecretConfig, SecretKeyRef, SinkBindingConfig, SourceConfig,
    SourceKind, SourceKindDef, SourceParams, SourceSpec, SqsSpec, TimerSpec, WebhookSpec, ce_overrides_env, labels,
    parse_schedule, parse_timezone,
};
pub use status::Condition;
pub use trigger::TriggerConfig;

/// Annotation selecting ordered delivery (Knative Kafka broker's name).
pub const ORDER_ANNOTATION: &str = "kafka.eventing.knative.dev/delivery.order";
/// Spate annotation bounding a trigger's in-flight events.
pub const MAX_IN_FLIGHT_ANNOTATION: &str = "spate.dev/max-in-flight";
/// Knative RabbitMQ broker's per-trigger in-flight bound (1 delivers in order).
pub const RABBITMQ_PARALLELISM_ANNOTATION: &str = "rabbitmq.eventing.knative.dev/parallelism";
/// Spate annotation choosing a channel's storage: `log` (default, durable) or `memory`.
pub const CHANNEL_STORAGE_ANNOTATION: &str = "spate.dev/channel-storage";
/// Knative's broker class annotation (immutable).
pub const BROKER_CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";
/// The broker class on the embedded log (the default unless `--default-broker-class` says otherwise).
pub const DEFAULT_BROKER_CLASS: &str = "MTChannelBasedBroker";
/// The broker class on NATS JetStream (the name Knative's NATS project uses).
pub const NATS_BROKER_CLASS: &str = "NatsJetStreamBroker";
/// Knative's RabbitMQ broker class: an exchange per Broker, a queue per Trigger.
pub const RABBITMQ_BROKER_CLASS: &str = "RabbitMQBroker";
/// Broker classes admission accepts (Knative's names). `Kafka` and `RabbitMQBroker` are admitted
/// and reported not Ready until their backends exist.
pub const BROKER_CLASSES: &[&str] =
    &[DEFAULT_BROKER_CLASS, NATS_BROKER_CLASS, KAFKA_BROKER_CLASS, RABBITMQ_BROKER_CLASS];
/// Knative's Kafka broker class: a topic per broker, a consumer group per trigger.
pub const KAFKA_BROKER_CLASS: &str = "Kafka";
/// Where a broker class keeps its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// The embedded log in the data directory.
    EmbeddedLog,
    Nats,
    Kafka,
    RabbitMq,
}

/// The broker classes Spate runs: one table from class name to engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerClass {
    MtChannelBased,
    NatsJetStream,
    Kafka,
    RabbitMq,
}

impl BrokerClass {
    const TABLE: [(BrokerClass, &'static str, Engine); 4] = [
        (BrokerClass::MtChannelBased, DEFAULT_BROKER_CLASS, Engine::EmbeddedLog),
        (BrokerClass::NatsJetStream, NATS_BROKER_CLASS, Engine::Nats),
        (BrokerClass::Kafka, KAFKA_BROKER_CLASS, Engine::Kafka),
        (BrokerClass::RabbitMq, RABBITMQ_BROKER_CLASS, Engine::RabbitMq),
    ];

    /// The class Knative's annotation names (`Kafka`, `NatsJetStreamBroker`, ...), if Spate runs it.
    pub fn parse(name: &str) -> Option<BrokerClass> {
        Self::TABLE.iter().find(|(_, n, _)| *n == name).map(|(c, _, _)| *c)
    }

    /// Its name in `eventing.knative.dev/broker.class`.
    pub fn name(self) -> &'static str {
        Self::TABLE.iter().find(|(c, _, _)| *c == self).map(|(_, n, _)| *n).expect("every class is in the table")
    }

    pub fn engine(self) -> Engine {
        Self::TABLE.iter().find(|(c, _, _)| *c == self).map(|(_, _, e)| *e).expect("every class is in the table")
    }
}

impl std::fmt::Display for BrokerClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `Kafka`-class broker on an existing topic (neither created nor deleted).
pub const EXTERNAL_TOPIC_ANNOTATION: &str = "kafka.eventing.knative.dev/external.topic";

/// One admitted resource: its identity and the normalized manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `apiVersion`, `kind`, `metadata` and `spec`, with defaults applied; no status.
    pub manifest: Value,
}

impl Resource {
    pub fn key(&self) -> (Kind, String, String) {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.manifest.pointer("/metadata/annotations")?.get(key)?.as_str()
    }
}

/// The server's defaulting (Knative's defaulting webhook): a Broker without
/// `eventing.knative.dev/broker.class` gets `default.class` (else
/// `server_class`) written into its manifest and config, and one without
/// `spec.config` gets `default.config`, so its storage never changes with a
/// later default.
pub fn default_broker(resource: &mut Resource, compiled: &mut Compiled, default: &BrokerDefault, server_class: &str) {
    let Compiled::Broker(b) = compiled else { return };
    if b.class.is_none() {
        let class = default.class.clone().unwrap_or_else(|| server_class.to_string());
        b.class = Some(class.clone());
        if let Some(meta) = resource.manifest.get_mut("metadata").and_then(Value::as_object_mut) {
            let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(BROKER_CLASS_ANNOTATION.to_string(), Value::String(class));
            }
        }
    }
    if b.config.is_none()
        && let Some(r) = &default.config
    {
        b.config = Some(r.clone());
        resource.manifest["spec"]["config"] =
            serde_json::json!({"apiVersion": "v1", "kind": r.kind, "name": r.name, "namespace": r.namespace});
    }
}

/// The runtime view of a resource, compiled at admission.
#[derive(Debug, Clone, PartialEq)]
pub enum Compiled {
    Broker(BrokerConfig),
    /// Shared: the control plane hands the same config to every reconcile without copying it.
    Trigger(std::sync::Arc<TriggerConfig>),
    /// A Channel or an InMemoryChannel.
    Channel(ChannelConfig),
    Subscription(SubscriptionConfig),
    Sequence(SequenceConfig),
    Parallel(ParallelConfig),
    Service(ServiceConfig),
    Secret(SecretConfig),
    /// Any source kind (see `sources::SOURCE_KINDS`).
    Source(Box<SourceConfig>),
    SinkBinding(SinkBindingConfig),
    KafkaSink(KafkaSinkConfig),
    ConfigMap(ConfigMapConfig),
    EventPolicy(Box<event_policy::EventPolicyConfig>),
    EventType(event_type::EventTypeConfig),
    /// A Namespace: nothing to run.
    Namespace,
}

impl Compiled {
    fn trigger(t: TriggerConfig) -> Compiled {
        Compiled::Trigger(t.into())
    }
}

/// Splits a multi-document YAML (or JSON) text into documents, skipping empty ones.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, AdmissionError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| AdmissionError::Syntax(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Validates and compiles one document. `index` (0-based) names it in errors.
pub fn admit_document(doc: &Value, index: usize) -> Result<(Resource, Compiled), Vec<FieldError>> {
    let mut w = walk::Walker::new(index);
    let doc_kind = doc.get("kind").and_then(Value::as_str);
    let fields: &[&str] = if doc_kind == Some("Secret") {
        &["apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"]
    } else if doc_kind == Some("ConfigMap") {
        &["apiVersion", "kind", "metadata", "data", "immutable"]
    } else {
        &["apiVersion", "kind", "metadata", "spec", "status"]
    };
    let Some(top) = w.object(doc, "", fields) else {
        return Err(w.finish_err());
    };
    let kind_name = w.req_str(top, "kind", "");
    let api_version = w.req_str(top, "apiVersion", "");
    let kind = match (kind_name, api_version) {
        (Some(k), Some(v)) => match Kind::from_manifest(k, v) {
            Ok(kind) => Some(kind),
            Err(msg) => {
                w.error("kind", msg);
                None
            }
        },
        _ => None,
    };
    let (namespace, name, metadata) = meta::validate(&mut w, top.get("metadata"), kind);
    w.set_identity(kind_name.unwrap_or("?"), &namespace, &name);
    let empty = Value::Object(Default::default());
    // An absent or empty (`spec:`) spec is an empty map.
    let spec = top.get("spec").filter(|v| !v.is_null()).unwrap_or(&empty);
    let mut secret_fields = None;
    let compiled = match kind {
        Some(Kind::Broker) => broker::compile(&mut w, spec, &namespace, &name, &metadata).map(Compiled::Broker),
        Some(Kind::Trigger) => trigger::compile(&mut w, spec, &namespace, &name, &metadata).map(Compiled::trigger),
        Some(k @ (Kind::Channel | Kind::InMemoryChannel | Kind::NatsJetStreamChannel | Kind::KafkaChannel)) => {
            messaging::compile_channel(&mut w, spec, &namespace, &name, &metadata, k).map(Compiled::Channel)
        }
        Some(Kind::Subscription) => {
            messaging::compile_subscription(&mut w, spec, &namespace, &name).map(Compiled::Subscription)
        }
        Some(Kind::Sequence) => {
            messaging::compile_sequence(&mut w, spec, &namespace, &name, &metadata).map(Compiled::Sequence)
        }
        Some(Kind::Parallel) => {
            messaging::compile_parallel(&mut w, spec, &namespace, &name, &metadata).map(Compiled::Parallel)
        }
        Some(Kind::Service) => serving::compile_service(&mut w, spec, &namespace, &name).map(Compiled::Service),
        Some(Kind::Secret) => sources::compile_secret(&mut w, top, &namespace, &name).map(|(c, fields)| {
            secret_fields = Some(fields);
            Compiled::Secret(c)
        }),
        Some(Kind::Source(k)) => {
            sources::compile_source(&mut w, k, spec, &namespace, &name).map(|s| Compiled::Source(Box::new(s)))
        }
        Some(Kind::SinkBinding) => {
            sources::compile_sink_binding(&mut w, spec, &namespace, &name).map(Compiled::SinkBinding)
        }
        Some(Kind::EventPolicy) => {
            event_policy::compile(&mut w, spec, &namespace, &name).map(|p| Compiled::EventPolicy(Box::new(p)))
        }
        Some(Kind::KafkaSink) => kafka_sink::compile(&mut w, spec, &namespace, &name).map(Compiled::KafkaSink),
        Some(Kind::EventType) => event_type::compile(&mut w, spec, &namespace, &name).map(Compiled::EventType),
        Some(Kind::ConfigMap) => kafka_sink::compile_config_map(&mut w, top, &namespace, &name).map(|(c, fields)| {
            secret_fields = Some(fields);
            Compiled::ConfigMap(c)
        }),
        Some(Kind::Namespace) => Some(Compiled::Namespace),
        None => None,
    };
    // Namespaces are cluster-scoped: no namespace of their own.
    let (namespace, metadata) = if kind == Some(Kind::Namespace) {
        let mut m = metadata;
        if let Some(o) = m.as_object_mut() {
            o.remove("namespace");
        }
        if let Err(e) = meta::check_dns_label(&name) {
            w.error("metadata.name", e);
        }
        (String::new(), m)
    } else {
        (namespace, metadata)
    };
    match (kind, compiled) {
        (Some(kind), Some(compiled)) if w.ok() => {
            let mut manifest = serde_json::json!({
                "apiVersion": kind.api_version(),
                "kind": kind.name(),
                "metadata": metadata,
                "spec": spec,
            });
            if let Some(fields) = secret_fields {
                let m = manifest.as_object_mut().expect("object");
                m.remove("spec");
                m.extend(fields);
            }
            Ok((Resource { kind, namespace, name, manifest }, compiled))
        }
        _ => Err(w.finish_err()),
    }
}

/// Admits a whole file: every document must pass, otherwise every problem in
/// every document is returned and nothing is admitted.
pub fn admit_text(text: &str) -> Result<Vec<(Resource, Compiled)>, AdmissionError> {
    let docs = parse_documents(text)?;
    if docs.is_empty() {
        return Err(AdmissionError::Empty);
    }
    let mut ok = vec![];
    let mut errors = vec![];
    for (i, d) in docs.iter().enumerate() {
        match admit_document(d, i) {
            Ok(r) => ok.push(r),
            Err(e) => errors.extend(e),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (r, _) in &ok {
        if !seen.insert(r.key()) {
            errors.push(FieldError::new(
                None,
                format!("{} {}/{}", r.kind.name(), r.namespace, r.name),
                "metadata.name",
                "defined twice in the same file",
            ));
        }
    }
    if errors.is_empty() { Ok(ok) } else { Err(AdmissionError::Invalid(errors)) }
}

/// Checks an update against the stored resource: immutable fields stay as they were.
pub fn check_update(old: &Resource, new: &Resource) -> Vec<FieldError> {
    let mut errs = vec![];
    let who = format!("{} {}/{}", new.kind.name(), new.namespace, new.name);
    match new.kind {
        Kind::KafkaChannel => {
            // Knative: a KafkaChannel's topic layout cannot change once created.
            for field in ["numPartitions", "replicationFactor"] {
                let p = format!("/spec/{field}");
                if old.manifest.pointer(&p) != new.manifest.pointer(&p) {
                    errs.push(FieldError::new(None, who.clone(), &format!("spec.{field}"), "is immutable"));
                }
            }
        }
        Kind::Channel
        | Kind::InMemoryChannel
        | Kind::NatsJetStreamChannel
        | Kind::Subscription
        | Kind::Sequence
        | Kind::Parallel
        | Kind::Service
        | Kind::Secret
        | Kind::Source(_)
        | Kind::SinkBinding
        | Kind::ConfigMap
        | Kind::Namespace
        | Kind::EventPolicy => {
            if new.kind == Kind::Subscription {
                let (a, b) = (old.manifest.pointer("/spec/channel"), new.manifest.pointer("/spec/channel"));
                if a != b {
                    errs.push(FieldError::new(None, who.clone(), "spec.channel", "is immutable"));
                }
            }
        }
        Kind::EventType => {
            // Knative: every field of an EventType is immutable.
            if old.manifest.pointer("/spec") != new.manifest.pointer("/spec") {
                errs.push(FieldError::new(
                    None,
                    who.clone(),
                    "spec",
                    "is immutable (delete and re-create the EventType)",
                ));
            }
        }
        Kind::KafkaSink => {
            // Knative: a KafkaSink's topic cannot change (events already written stay where they are).
            let (a, b) = (old.manifest.pointer("/spec/topic"), new.manifest.pointer("/spec/topic"));
            if a != b {
                errs.push(FieldError::new(None, who.clone(), "spec.topic", "is immutable"));
            }
        }
        Kind::Trigger => {
            let (a, b) = (old.manifest.pointer("/spec/broker"), new.manifest.pointer("/spec/broker"));
            if a != b {
                errs.push(FieldError::new(
                    None,
                    who.clone(),
                    "spec.broker",
                    format!("is immutable (was {}, now {})", a.unwrap_or(&Value::Null), b.unwrap_or(&Value::Null)),
                ));
            }
        }
        Kind::Broker => {
            let (a, b) = (old.annotation(BROKER_CLASS_ANNOTATION), new.annotation(BROKER_CLASS_ANNOTATION));
            if a != b {
                errs.push(FieldError::new(
                    None,
                    who,
                    &format!("metadata.annotations[{BROKER_CLASS_ANNOTATION}]"),
                    format!(
                        "the broker class is immutable (was {}, now {})",
                        a.unwrap_or("unset"),
                        b.unwrap_or("unset")
                    ),
                ));
            }
        }
    }
    errs
}
