/// Every resource kind Spate serves. Closed: adding one is a compile error at
/// every `match` that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Broker,
    Trigger,
    Channel,
    InMemoryChannel,
    Subscription,
    Sequence,
    Parallel,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Broker,
        Kind::Trigger,
        Kind::Channel,
        Kind::InMemoryChannel,
        Kind::Subscription,
        Kind::Sequence,
        Kind::Parallel,
        Kind::Service,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::Trigger => "Trigger",
            Kind::Channel => "Channel",
            Kind::InMemoryChannel => "InMemoryChannel",
            Kind::Subscription => "Subscription",
            Kind::Sequence => "Sequence",
            Kind::Parallel => "Parallel",
            Kind::Service => "Service",
        }
    }
    pub fn group(self) -> &'static str {
        match self {
            Kind::Broker | Kind::Trigger => "eventing.knative.dev",
            Kind::Channel | Kind::InMemoryChannel | Kind::Subscription => "messaging.knative.dev",
            Kind::Sequence | Kind::Parallel => "flows.knative.dev",
            Kind::Service => "serving.knative.dev",
        }
    }
    pub fn version(self) -> &'static str {
        "v1"
    }
    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Broker => "brokers",
            Kind::Trigger => "triggers",
            Kind::Channel => "channels",
            Kind::InMemoryChannel => "inmemorychannels",
            Kind::Subscription => "subscriptions",
            Kind::Sequence => "sequences",
            Kind::Parallel => "parallels",
            Kind::Service => "services",
        }
    }

    /// Whether this kind is addressable (has `status.address.url`) and so can be a `ref`.
    pub fn addressable(self) -> bool {
        !matches!(self, Kind::Trigger | Kind::Subscription)
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
        Kind::ALL.into_iter().find(|k| s == k.name().to_ascii_lowercase() || s == k.plural())
    }

    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.group() == group && k.plural() == plural)
    }

    /// The kind a `ref` names (kind and apiVersion), if Spate serves it.
    pub fn from_ref(kind: &str, api_version: &str) -> Option<Kind> {
        let group = api_version.split('/').next().unwrap_or("");
        Kind::ALL.into_iter().find(|k| k.name() == kind && k.group() == group)
    }

    pub fn from_manifest(kind: &str, api_version: &str) -> Result<Kind, String> {
        if kind == "KafkaChannel" {
            return Err("KafkaChannel needs the Kafka backend, which this Spate does not have yet; use InMemoryChannel \
                        (durable on Spate's embedded log) or Channel instead. Spate never substitutes a different storage silently"
                .to_string());
        }
        let k = Kind::ALL.into_iter().find(|k| k.name() == kind).ok_or_else(|| {
            format!("unsupported kind '{kind}' (supported: {})", Kind::ALL.map(Kind::name).join(", "))
        })?;
        if api_version == k.api_version() {
            Ok(k)
        } else {
            Err(format!("{kind} needs apiVersion {}, got '{api_version}'", k.api_version()))
        }
    }
}
