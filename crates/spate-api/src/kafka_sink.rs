//! Knative's KafkaSink (`eventing.knative.dev/v1alpha1`, eventing-kafka-broker):
//! an addressable that writes every event it receives into one Kafka topic.
//! Shape: `spec.topic`, `spec.bootstrapServers` (a list, or one comma-separated
//! string as older versions wrote it), `spec.contentMode` (`structured`, the
//! default, or `binary`), `spec.numPartitions`, `spec.replicationFactor` (used
//! when the topic must be created), `spec.auth.secret.ref.name` (a Secret with
//! Knative's keys `protocol`, `sasl.mechanism`, `user`, `password`, `ca.crt`).
//! And ConfigMap (`v1`): data only.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::walk::{Walker, join};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaContentMode {
    Structured,
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    pub namespace: String,
    pub name: String,
    pub topic: String,
    pub bootstrap_servers: Vec<String>,
    pub content_mode: KafkaContentMode,
    pub num_partitions: i32,
    pub replication_factor: i32,
    /// Secret (same namespace) with the connection's security settings.
    pub auth_secret: Option<String>,
}

/// Kafka topic names: at most 249 of `[a-zA-Z0-9._-]`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty() && t.len() <= 249 && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_topic(w: &mut Walker, path: &str, t: &str) {
    if !valid_topic(t) {
        w.error(path, format!("'{t}' is not a Kafka topic name (1 to 249 of letters, digits, '.', '_', '-')"));
    }
}

pub fn compile(w: &mut Walker, spec: &Value, ns: &str, name: &str) -> Option<KafkaSinkConfig> {
    let m = w.object(
        spec,
        "spec",
        &["topic", "bootstrapServers", "contentMode", "numPartitions", "replicationFactor", "auth"],
    )?;
    let topic = w.req_str(m, "topic", "spec").unwrap_or("").to_string();
    if !topic.is_empty() {
        check_topic(w, "spec.topic", &topic);
    }
    let bootstrap_servers: Vec<String> = match m.get("bootstrapServers") {
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => vec![],
    };
    if bootstrap_servers.is_empty() {
        w.error("spec.bootstrapServers", "is required: a list of host:port (or one comma-separated string)");
    }
    for (i, s) in bootstrap_servers.iter().enumerate() {
        if !s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            w.error(&format!("spec.bootstrapServers[{i}]"), format!("'{s}' is not host:port"));
        }
    }
    let content_mode = match w.opt_str(m, "contentMode", "spec").unwrap_or("structured") {
        "structured" | "" => KafkaContentMode::Structured,
        "binary" => KafkaContentMode::Binary,
        other => {
            w.error("spec.contentMode", format!("'{other}' is not one of structured, binary"));
            KafkaContentMode::Structured
        }
    };
    let count = |w: &mut Walker, key: &str, max: i64| match m.get(key) {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=max).contains(&n) => n as i32,
            _ => {
                w.error(&join("spec", key), format!("must be a whole number from 1 to {max}"));
                1
            }
        },
    };
    let num_partitions = count(w, "numPartitions", 100_000);
    let replication_factor = count(w, "replicationFactor", 32_767);
    let auth_secret = m.get("auth").and_then(|a| {
        let p = "spec.auth.secret.ref";
        let name = a.pointer("/secret/ref/name").and_then(Value::as_str).map(String::from);
        if name.is_none() {
            w.error(p, "needs name (a Secret in this namespace)");
        }
        name
    });
    Some(KafkaSinkConfig {
        namespace: ns.into(),
        name: name.into(),
        topic,
        bootstrap_servers,
        content_mode,
        num_partitions,
        replication_factor,
        auth_secret,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapConfig {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, String>,
}

/// A ConfigMap's `data` (string values); returns the fields stored besides metadata.
pub fn compile_config_map(
    w: &mut Walker,
    top: &Map<String, Value>,
    ns: &str,
    name: &str,
) -> Option<(ConfigMapConfig, Map<String, Value>)> {
    let mut data = BTreeMap::new();
    if let Some(d) = top.get("data").filter(|v| !v.is_null()) {
        for (k, v) in w.string_map(d, "data") {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                w.error(&join("data", k), "a key is made of letters, digits, '-', '_' and '.'");
            }
            data.insert(k.to_string(), v.to_string());
        }
    }
    let mut extra = Map::new();
    extra.insert(
        "data".into(),
        Value::Object(data.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
    );
    Some((ConfigMapConfig { namespace: ns.into(), name: name.into(), data }, extra))
}
