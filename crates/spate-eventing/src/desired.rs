//! What the control plane wants running (`Desired`), the addressables refs
//! resolve against, and the statuses the room reports: plain data, shared by
//! the brokers-and-triggers and the messaging halves of the room.

use std::collections::{HashMap, HashSet};

use spate_api::{BrokerConfig, ChannelConfig, Kind, ParallelConfig, SequenceConfig, SubscriptionConfig, TriggerConfig};

type Key = (String, String);

/// What the control plane wants running.
#[derive(Debug, Default, Clone)]
pub struct Desired {
    pub brokers: Vec<BrokerConfig>,
    /// Shared with the control plane's store (not copied at each reconcile).
    pub triggers: Vec<std::sync::Arc<TriggerConfig>>,
    pub channels: Vec<ChannelConfig>,
    pub subscriptions: Vec<SubscriptionConfig>,
    pub sequences: Vec<SequenceConfig>,
    pub parallels: Vec<ParallelConfig>,
    /// Addressables other rooms run (Knative Services), by namespace and name, with their address.
    pub services: HashMap<Key, String>,
    /// KafkaSinks (run by the sources room), by namespace and name, with their address.
    pub kafka_sinks: HashMap<Key, String>,
    /// ConfigMaps' data by namespace and name (brokers' `spec.config`).
    pub config_maps: HashMap<Key, std::collections::BTreeMap<String, String>>,
}

/// Names of the addressables that exist (desired), by kind, for resolving `ref`s.
#[derive(Default)]
pub(crate) struct Addressables {
    pub brokers: HashSet<Key>,
    pub channels: HashSet<Key>,
    pub sequences: HashSet<Key>,
    pub parallels: HashSet<Key>,
    pub services: HashMap<Key, String>,
    /// KafkaSinks (run by the sources room), by namespace and name, with their address.
    pub kafka_sinks: HashMap<Key, String>,
}

pub use spate_api::Condition;

/// Observed status of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `Ready` first, then the conditions it summarizes.
    pub conditions: Vec<Condition>,
    pub address: Option<String>,
    pub subscriber_uri: Option<String>,
    pub dead_letter_sink_uri: Option<String>,
    pub reply_uri: Option<String>,
    /// A channel's subscriptions (name, ready); a flow's channels and subscriptions.
    pub children: Vec<ResourceStatus>,
}

impl ResourceStatus {
    pub(crate) fn new(kind: Kind, namespace: &str, name: &str, parts: Vec<Condition>) -> Self {
        ResourceStatus {
            kind,
            namespace: namespace.into(),
            name: name.into(),
            conditions: Condition::ready_first(parts),
            address: None,
            subscriber_uri: None,
            dead_letter_sink_uri: None,
            reply_uri: None,
            children: vec![],
        }
    }
    pub fn ready(&self) -> bool {
        self.conditions.first().is_some_and(|c| c.ok)
    }
}
