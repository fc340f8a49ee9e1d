//! Brokers and triggers: the broker ingress path into the log, one worker per
//! trigger reading from its committed offset, and reconciliation by diff.
//!
//! IO is limited to the log and the dispatcher handed in by the binary.

mod broker;
mod desired;
mod durable;
pub mod event_types;
mod feed;
mod messaging;
mod reconcile;
pub mod replay;
mod router;
mod stream_worker;
pub mod tap;
mod trigger;
mod workers;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use spate_api::DeliverySpec;
use spate_delivery::Dispatcher;
use spate_log::{LogBackend, MemoryBackend, StreamBackend};
use tokio::sync::Mutex;

use spate_core::delivery::{BackoffPolicy, RetryPolicy};
use workers::Workers;

pub use broker::{Broker, PublishError};
pub use desired::{Condition, Desired, ResourceStatus};
pub use feed::Feed;
pub use messaging::{
    Channel, FlowChild, flow_channels, flow_children, parallel_branch, parallel_ingress, sequence_channel,
};
pub use trigger::{Failure, RECENT_FAILURES, TriggerStats};

/// Server-wide eventing settings.
#[derive(Debug, Clone)]
pub struct EventingConfig {
    /// Base URL of the data plane, used for addresses (`http://127.0.0.1:8080`).
    pub base_url: String,
    /// Delivery spec for brokers that declare none (Knative: retry 10, exponential, PT0.2S).
    pub default_delivery: DeliverySpec,
    /// Events in flight per trigger unless the trigger says otherwise.
    pub max_in_flight: usize,
    /// The class of brokers without `eventing.knative.dev/broker.class` (`--default-broker-class`).
    pub default_broker_class: spate_api::BrokerClass,
    /// How long a message held by an instance may go without a sign of life
    /// before the engine hands it to another (a crashed instance's messages).
    pub ack_wait: Duration,
}

impl Default for EventingConfig {
    fn default() -> Self {
        EventingConfig {
            base_url: "http://127.0.0.1:8080".into(),
            default_delivery: DeliverySpec {
                retry: Some(10),
                backoff_policy: Some(BackoffPolicy::Exponential),
                backoff_delay: Some(Duration::from_millis(200)),
                ..DeliverySpec::default()
            },
            max_in_flight: 100,
            default_broker_class: spate_api::BrokerClass::MtChannelBased,
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl EventingConfig {
    pub(crate) fn default_delay(&self) -> Duration {
        self.default_delivery.backoff_delay.unwrap_or(RetryPolicy::default().backoff_delay)
    }
}

/// Log name of a broker's event log.
pub fn broker_log_name(namespace: &str, name: &str) -> String {
    format!("broker.{namespace}.{name}")
}

/// Consumer name of a trigger on its broker's log.
pub fn trigger_consumer(namespace: &str, name: &str) -> String {
    format!("trigger/{namespace}/{name}")
}

type Key = (String, String);

/// The eventing room: running brokers, trigger workers, channels and
/// subscriptions. Its halves are impl blocks of their own modules
/// (`reconcile.rs` brokers and triggers, `messaging.rs` channels and flows).
pub struct Eventing {
    pub(crate) config: EventingConfig,
    pub(crate) backend: Arc<dyn LogBackend>,
    /// Channels that asked for memory storage (`spate.dev/channel-storage: memory`).
    pub(crate) memory: Arc<MemoryBackend>,
    pub(crate) dispatcher: Dispatcher,
    /// `spate tail`'s listeners, shared by every broker and channel.
    pub(crate) tap: crate::tap::Tap,
    brokers: RwLock<HashMap<Key, Arc<Broker>>>,
    pub(crate) triggers: Mutex<Workers>,
    /// The shared engine (NATS JetStream), when the server has one.
    pub(crate) streams: Option<Arc<dyn StreamBackend>>,
    /// RabbitMQ (`RabbitMQBroker`), when configured.
    pub(crate) rabbit: Option<Arc<dyn StreamBackend>>,
    /// Kafka (`Kafka` brokers, KafkaChannels), when configured.
    pub(crate) kafka: Option<Arc<dyn StreamBackend>>,
    pub(crate) channels: RwLock<HashMap<Key, Arc<Channel>>>,
    pub(crate) subscriptions: Mutex<Workers>,
    /// Channels removed from a flow, delivering what they still hold.
    pub(crate) draining: Mutex<HashMap<Key, crate::messaging::Drain>>,
}

impl Eventing {
    pub fn new(config: EventingConfig, backend: Arc<dyn LogBackend>, dispatcher: Dispatcher) -> Self {
        Eventing {
            config,
            backend,
            dispatcher,
            memory: Arc::new(MemoryBackend::default()),
            brokers: RwLock::new(HashMap::new()),
            triggers: Mutex::new(Workers::default()),
            streams: None,
            rabbit: None,
            kafka: None,
            tap: Default::default(),
            channels: RwLock::new(HashMap::new()),
            subscriptions: Mutex::new(Workers::default()),
            draining: Mutex::new(HashMap::new()),
        }
    }
}
