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

/// The ConfigMap key naming the channel a channel-based broker (MTChannelBasedBroker) runs on.
pub const CHANNEL_TEMPLATE_KEY: &str = "channel-template-spec";

/// A channel-based broker's `channel-template-spec`: the channel kind and its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelTemplate {
    pub kind: crate::Kind,
    pub spec: Value,
}

/// Reads a `channel-template-spec` (YAML: `apiVersion`, `kind`, `spec`); the error says what is
/// wrong with it, naming the key.
pub fn channel_template(text: &str) -> Result<ChannelTemplate, String> {
    let v: Value =
        serde_saphyr::from_str(text).map_err(|e| format!("{CHANNEL_TEMPLATE_KEY} is not valid YAML: {e}"))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let (kind, api_version) = (s("kind"), s("apiVersion"));
    let known =
        crate::Kind::from_manifest(kind, api_version).ok().filter(|k| k.is_channel() && *k != crate::Kind::Channel);
    let Some(kind) = known else {
        return Err(format!(
            "{CHANNEL_TEMPLATE_KEY} names {kind} ({api_version}); Spate backs channel-based brokers with \
             InMemoryChannel (messaging.knative.dev/v1), KafkaChannel (messaging.knative.dev/v1beta1) or \
             NatsJetStreamChannel (messaging.knative.dev/v1alpha1)"
        ));
    };
    Ok(ChannelTemplate { kind, spec: v.get("spec").cloned().unwrap_or(Value::Null) })
}

#[cfg(test)]
mod template_tests {
    use super::*;

    #[test]
    fn channel_templates_name_a_channel_kind_spate_runs() {
        let t = channel_template(
            "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nspec:\n  numPartitions: 3\n  replicationFactor: 1\n",
        )
        .unwrap();
        assert_eq!(t.kind, crate::Kind::KafkaChannel);
        assert_eq!(t.spec["numPartitions"], 3);
        let err = channel_template("apiVersion: messaging.knative.dev/v1alpha1\nkind: RocketMQChannel\n").unwrap_err();
        assert!(err.contains("channel-template-spec names RocketMQChannel"), "{err}");
        assert!(channel_template("kind: [").unwrap_err().contains("not valid YAML"));
    }
}

/// Knative's broker defaults: ConfigMap `config-br-defaults` in `knative-eventing`, key
/// `default-br-config` (YAML: `clusterDefault` and `namespaceDefaults.<ns>`, each with
/// `brokerClass` and a config reference `apiVersion`/`kind`/`name`/`namespace`).
pub const BROKER_DEFAULTS: (&str, &str, &str) = ("knative-eventing", "config-br-defaults", "default-br-config");

/// The class and config a Broker that names none gets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerDefault {
    pub class: Option<String>,
    pub config: Option<ConfigRef>,
}

/// `default-br-config`, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerDefaults {
    pub cluster: BrokerDefault,
    pub namespaces: std::collections::BTreeMap<String, BrokerDefault>,
}

impl BrokerDefaults {
    /// Reads `default-br-config`; the error names the key and what is wrong.
    pub fn parse(text: &str) -> Result<BrokerDefaults, String> {
        let key = BROKER_DEFAULTS.2;
        let v: Value = serde_saphyr::from_str(text).map_err(|e| format!("{key} is not valid YAML: {e}"))?;
        let entry = |e: &Value, at: &str| -> Result<BrokerDefault, String> {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
            let class = s("brokerClass");
            if let Some(c) = &class
                && crate::BrokerClass::parse(c).is_none()
            {
                return Err(format!("{key}: {at}.brokerClass '{c}' is not a broker class Spate runs"));
            }
            let config = match (s("kind"), s("name")) {
                (Some(kind), Some(name)) => Some(ConfigRef {
                    kind,
                    name,
                    namespace: s("namespace").unwrap_or_else(|| BROKER_DEFAULTS.0.into()),
                }),
                _ => None,
            };
            Ok(BrokerDefault { class, config })
        };
        let cluster = match v.get("clusterDefault") {
            Some(e) => entry(e, "clusterDefault")?,
            None => BrokerDefault::default(),
        };
        let mut namespaces = std::collections::BTreeMap::new();
        for (ns, e) in v.get("namespaceDefaults").and_then(Value::as_object).into_iter().flatten() {
            namespaces.insert(ns.clone(), entry(e, &format!("namespaceDefaults.{ns}"))?);
        }
        Ok(BrokerDefaults { cluster, namespaces })
    }

    /// What a Broker of `namespace` defaults to: its namespace's entry, else the cluster's.
    pub fn for_namespace(&self, namespace: &str) -> &BrokerDefault {
        self.namespaces.get(namespace).unwrap_or(&self.cluster)
    }
}

#[cfg(test)]
mod defaults_tests {
    use super::*;

    #[test]
    fn namespace_defaults_override_the_cluster_default() {
        let d = BrokerDefaults::parse(
            "clusterDefault:\n  brokerClass: MTChannelBasedBroker\n  apiVersion: v1\n  kind: ConfigMap\n  name: config-br-default-channel\nnamespaceDefaults:\n  team:\n    brokerClass: Kafka\n    kind: ConfigMap\n    name: kafka-broker-config\n    namespace: team\n",
        )
        .unwrap();
        assert_eq!(d.for_namespace("other").class.as_deref(), Some("MTChannelBasedBroker"));
        assert_eq!(d.for_namespace("other").config.as_ref().unwrap().namespace, "knative-eventing");
        let team = d.for_namespace("team");
        assert_eq!(
            (team.class.as_deref(), team.config.as_ref().unwrap().name.as_str()),
            (Some("Kafka"), "kafka-broker-config")
        );
        let err = BrokerDefaults::parse("clusterDefault: {brokerClass: Nope}").unwrap_err();
        assert!(err.contains("clusterDefault.brokerClass 'Nope'"), "{err}");
    }
}
