use crate::sources::SourceKind;

/// Every resource kind Spate serves. Closed: adding one is a compile error at
/// every `match` that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Broker,
    Trigger,
    Channel,
    InMemoryChannel,
    /// Knative's NATS channel (`messaging.knative.dev/v1alpha1`): a JetStream stream.
    NatsJetStreamChannel,
    /// Knative's Kafka channel (`messaging.knative.dev/v1beta1`): a Kafka topic.
    KafkaChannel,
    Subscription,
    Sequence,
    Parallel,
    Service,
    Secret,
    /// An event source: its shape comes from its module in `sources` ([`SourceKind::def`]).
    Source(SourceKind),
    SinkBinding,
    /// Knative's Kafka sink (`eventing.knative.dev/v1alpha1`): an addressable writing to a topic.
    KafkaSink,
    /// Kubernetes' ConfigMap (`v1`): data only, read by the control plane (brokers' `spec.config`).
    ConfigMap,
    /// Knative's EventPolicy (`eventing.knative.dev/v1alpha1`): who may send to what.
    EventPolicy,
    /// Knative's EventType (`eventing.knative.dev/v1beta3`): a kind of event an addressable carries.
    EventType,
    /// Kubernetes' Namespace (`v1`, cluster-scoped: stored with namespace ""). Deleting one deletes what it holds.
    Namespace,
}

impl Kind {
    /// Every kind but the sources.
    const BASE: [Kind; 17] = [
        Kind::Broker,
        Kind::Trigger,
        Kind::Channel,
        Kind::InMemoryChannel,
        Kind::NatsJetStreamChannel,
        Kind::KafkaChannel,
        Kind::Subscription,
        Kind::Sequence,
        Kind::Parallel,
        Kind::Service,
        Kind::Secret,
        Kind::SinkBinding,
        Kind::KafkaSink,
        Kind::ConfigMap,
        Kind::EventPolicy,
        Kind::EventType,
        Kind::Namespace,
    ];

    /// Every kind Spate serves.
    pub fn all() -> impl Iterator<Item = Kind> {
        Kind::BASE.into_iter().chain(Kind::sources())
    }

    /// The event sources (`spate get sources`).
    pub fn sources() -> impl Iterator<Item = Kind> {
        SourceKind::all().map(Kind::Source)
    }

    /// The source kind named so (`ContainerSource`), if Spate runs it.
    pub fn source(name: &str) -> Option<Kind> {
        SourceKind::named(name).map(Kind::Source)
    }

    pub fn is_source(self) -> bool {
        matches!(self, Kind::Source(_))
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::Trigger => "Trigger",
            Kind::Channel => "Channel",
            Kind::InMemoryChannel => "InMemoryChannel",
            Kind::NatsJetStreamChannel => "NatsJetStreamChannel",
            Kind::KafkaChannel => "KafkaChannel",
            Kind::Subscription => "Subscription",
            Kind::Sequence => "Sequence",
            Kind::Parallel => "Parallel",
            Kind::Service => "Service",
            Kind::Secret => "Secret",
            Kind::Source(k) => k.def().name,
            Kind::SinkBinding => "SinkBinding",
            Kind::KafkaSink => "KafkaSink",
            Kind::ConfigMap => "ConfigMap",
            Kind::EventPolicy => "EventPolicy",
            Kind::EventType => "EventType",
            Kind::Namespace => "Namespace",
        }
    }
    pub fn group(self) -> &'static str {
        match self {
            Kind::Broker | Kind::Trigger | Kind::KafkaSink | Kind::EventPolicy | Kind::EventType => {
                "eventing.knative.dev"
            }
            Kind::Channel
            | Kind::InMemoryChannel
            | Kind::NatsJetStreamChannel
            | Kind::KafkaChannel
            | Kind::Subscription => "messaging.knative.dev",
            Kind::Sequence | Kind::Parallel => "flows.knative.dev",
            Kind::Service => "serving.knative.dev",
            // The core group of Kubernetes: `apiVersion: v1`.
            Kind::Secret | Kind::ConfigMap | Kind::Namespace => "",
            Kind::Source(k) => k.def().group,
            Kind::SinkBinding => "sources.knative.dev",
        }
    }
    pub fn version(self) -> &'static str {
        match self {
            Kind::Source(k) => k.def().version,
            Kind::NatsJetStreamChannel | Kind::KafkaSink | Kind::EventPolicy => "v1alpha1",
            Kind::KafkaChannel => "v1beta1",
            Kind::EventType => "v1beta3",
            _ => "v1",
        }
    }
    pub fn api_version(self) -> String {
        if self.group().is_empty() {
            self.version().to_string()
        } else {
            format!("{}/{}", self.group(), self.version())
        }
    }
    /// Older apiVersions accepted and stored as [`Kind::api_version`] (same schema).
    fn also_accepts(self, api_version: &str) -> bool {
        match self {
            Kind::Source(k) => k.def().also_accepts.contains(&api_version),
            Kind::SinkBinding => api_version == "sources.knative.dev/v1beta1",
            _ => false,
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Broker => "brokers",
            Kind::Trigger => "triggers",
            Kind::Channel => "channels",
            Kind::InMemoryChannel => "inmemorychannels",
            Kind::NatsJetStreamChannel => "natsjetstreamchannels",
            Kind::KafkaChannel => "kafkachannels",
            Kind::Subscription => "subscriptions",
            Kind::Sequence => "sequences",
            Kind::Parallel => "parallels",
            Kind::Service => "services",
            Kind::Secret => "secrets",
            Kind::Source(k) => k.def().plural,
            Kind::SinkBinding => "sinkbindings",
            Kind::KafkaSink => "kafkasinks",
            Kind::ConfigMap => "configmaps",
            Kind::EventPolicy => "eventpolicies",
            Kind::EventType => "eventtypes",
            Kind::Namespace => "namespaces",
        }
    }

    /// Whether this kind is addressable (has `status.address.url`) and so can be a `ref`.
    pub fn addressable(self) -> bool {
        matches!(
            self,
            Kind::Broker
                | Kind::Channel
                | Kind::InMemoryChannel
                | Kind::NatsJetStreamChannel
                | Kind::KafkaChannel
                | Kind::Sequence
                | Kind::Parallel
                | Kind::Service
                | Kind::KafkaSink
        )
    }

    /// A channel kind (served at `/channels/<ns>/<name>`, subscribable).
    pub fn is_channel(self) -> bool {
        matches!(self, Kind::Channel | Kind::InMemoryChannel | Kind::NatsJetStreamChannel | Kind::KafkaChannel)
    }

    /// Accepts the names a CLI user types: `broker`, `brokers`, `Broker`, `imc`.
    pub fn from_cli(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        if s == "imc" || s == "imcs" {
            return Some(Kind::InMemoryChannel);
        }
        if s == "ksvc" || s == "ksvcs" || s == "kservice" {
            return Some(Kind::Service);
        }
        Kind::all().find(|k| s == k.name().to_ascii_lowercase() || s == k.plural())
    }

    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::all().find(|k| k.group() == group && k.plural() == plural)
    }

    /// The kind a `ref` names (kind and apiVersion), if Spate serves it.
    pub fn from_ref(kind: &str, api_version: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Kind::all().find(|k| k.name() == kind && k.group() == group)
    }

    pub fn from_manifest(kind: &str, api_version: &str) -> Result<Kind, String> {
        let k = Kind::all().find(|k| k.name() == kind).ok_or_else(|| {
            format!(
                "unsupported kind '{kind}' (supported: {})",
                Kind::all().map(Kind::name).collect::<Vec<_>>().join(", ")
            )
        })?;
        if api_version == k.api_version() || k.also_accepts(api_version) {
            Ok(k)
        } else {
            Err(format!("{kind} needs apiVersion {}, got '{api_version}'", k.api_version()))
        }
    }
}
