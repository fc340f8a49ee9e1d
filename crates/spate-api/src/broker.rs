use serde_json::Value;

use crate::delivery::{self, DeliverySpec};
use crate::walk::Walker;
use crate::{BROKER_CLASS_ANNOTATION, BROKER_CLASSES, meta};

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub namespace: String,
    pub name: String,
    /// `eventing.knative.dev/broker.class`; `None`: the server's default class.
    pub class: Option<String>,
    pub delivery: Option<DeliverySpec>,
}

pub fn compile(w: &mut Walker, spec: &Value, namespace: &str, name: &str, metadata: &Value) -> Option<BrokerConfig> {
    let m = w.object(spec, "spec", &["config", "delivery"])?;
    if let Some(c) = m.get("config") {
        // Knative points this at a ConfigMap choosing the channel; Spate's storage is chosen by its own configuration.
        w.object(c, "spec.config", &["apiVersion", "kind", "name", "namespace"]);
    }
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
    Some(BrokerConfig { namespace: namespace.to_string(), name: name.to_string(), class, delivery })
}
