use serde_json::Value;

use crate::delivery::{self, DeliverySpec};
use crate::walk::Walker;
use crate::{BROKER_CLASS_ANNOTATION, BROKER_CLASSES, EXTERNAL_TOPIC_ANNOTATION, meta};

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub namespace: String,
    pub name: String,
    /// `eventing.knative.dev/broker.class`; `None`: the server's default class.
    pub class: Option<String>,
    pub delivery: Option<DeliverySpec>,
    /// `spec.config`: the object configuring the broker's backend (a ConfigMap for
    /// class `Kafka`), as (kind, namespace, name); the namespace defaults to the broker's.
    pub config: Option<ConfigRef>,
    /// `kafka.eventing.knative.dev/external.topic`: a Kafka broker on an existing topic.
    pub external_topic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

pub fn compile(w: &mut Walker, spec: &Value, namespace: &str, name: &str, metadata: &Value) -> Option<BrokerConfig> {
    let m = w.object(spec, "spec", &["config", "delivery"])?;
    // Class `Kafka` reads its ConfigMap (bootstrap.servers, default.topic.*); other
    // classes accept the reference and are configured by the server's flags.
    let config = m.get("config").and_then(|c| w.object(c, "spec.config", &["apiVersion", "kind", "name", "namespace"]));
    let config = config.and_then(|c| {
        let kind = w.req_str(c, "kind", "spec.config")?.to_string();
        let name = w.req_str(c, "name", "spec.config")?.to_string();
        let ns = w.opt_str(c, "namespace", "spec.config").unwrap_or(namespace).to_string();
        Some(ConfigRef { kind, namespace: ns, name })
    });
    let delivery = m.get("delivery").and_then(|d| delivery::parse(w, d, "spec.delivery", namespace));
    let class = meta::annotation(metadata, BROKER_CLASS_ANNOTATION).map(str::to_string);
    if let Some(c) = &class
        && !BROKER_CLASSES.contains(&c.as_str())
    {
        w.error(
            &format!("metadata.annotations[{BROKER_CLASS_ANNOTATION}]"),
            format!("'{c}' is not a broker class Spate runs (one of {})", BROKER_CLASSES.join(", ")),
        );
    }
    let external_topic = meta::annotation(metadata, EXTERNAL_TOPIC_ANNOTATION).map(str::to_string);
    if let Some(t) = &external_topic
        && !crate::kafka_sink::valid_topic(t)
    {
        w.error(
            &format!("metadata.annotations[{EXTERNAL_TOPIC_ANNOTATION}]"),
            format!("'{t}' is not a Kafka topic name (1 to 249 of letters, digits, '.', '_', '-')"),
        );
    }
    Some(BrokerConfig {
        namespace: namespace.to_string(),
        name: name.to_string(),
        class,
        delivery,
        config,
        external_topic,
    })
}
