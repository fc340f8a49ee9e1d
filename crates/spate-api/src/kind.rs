/// Every resource kind Spate serves. Closed: adding one is a compile error at
/// every `match` that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Broker,
    Trigger,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Broker, Kind::Trigger];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Broker => "Broker",
            Kind::Trigger => "Trigger",
        }
    }
    pub fn group(self) -> &'static str {
        match self {
            Kind::Broker | Kind::Trigger => "eventing.knative.dev",
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
        }
    }

    /// Accepts the names a CLI user types: `broker`, `brokers`, `Broker`.
    pub fn from_cli(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| s == k.name().to_ascii_lowercase() || s == k.plural())
    }

    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.group() == group && k.plural() == plural)
    }

    pub fn from_manifest(kind: &str, api_version: &str) -> Result<Kind, String> {
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
