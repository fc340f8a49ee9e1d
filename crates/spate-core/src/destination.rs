//! Knative's Destination: a reference to an addressable resource, a URI, or
//! both (a relative URI resolved against the reference's address).

/// A reference to another resource (Knative's KReference).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

/// Why a Destination does not resolve to a URL (shown in a condition's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// An addressable kind, but no such object is defined.
    #[error("{kind} {namespace}/{name} does not exist")]
    Missing { kind: String, namespace: String, name: String },
    #[error(
        "cannot resolve {kind} {namespace}/{name} ({api_version}): not an addressable kind Spate serves (Broker, Channel, InMemoryChannel, NatsJetStreamChannel, KafkaChannel, Sequence, Parallel, Service, KafkaSink); use a uri"
    )]
    NotAddressable { kind: String, namespace: String, name: String, api_version: String },
    #[error("destination has neither ref nor uri")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub kref: Option<KRef>,
    pub uri: Option<String>,
}

impl Destination {
    pub fn uri(uri: impl Into<String>) -> Self {
        Destination { kref: None, uri: Some(uri.into()) }
    }

    /// Joins a relative `uri` onto a resolved reference address, as Knative does.
    pub fn join(base: &str, relative: &str) -> String {
        if relative.is_empty() {
            return base.to_string();
        }
        if relative.contains("://") {
            return relative.to_string();
        }
        let base = base.trim_end_matches('/');
        if relative.starts_with('/') { format!("{base}{relative}") } else { format!("{base}/{relative}") }
    }
}

/// The `host:port` an `https://` URL connects to, lower case, with the
/// default port made explicit (`https://Example.com/x` → `example.com:443`).
/// `None` for other schemes. Per-destination TLS trust is keyed by it.
pub fn https_authority(url: &str) -> Option<String> {
    let rest = url.get(..8).filter(|s| s.eq_ignore_ascii_case("https://")).map(|_| &url[8..])?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest[..end].rsplit('@').next().unwrap_or("").to_ascii_lowercase();
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port { authority } else { format!("{authority}:443") })
}

#[cfg(test)]
mod authority_tests {
    use super::https_authority;

    #[test]
    fn authorities_are_normalised() {
        assert_eq!(https_authority("https://Example.com/x?y").as_deref(), Some("example.com:443"));
        assert_eq!(https_authority("https://a.b:8443").as_deref(), Some("a.b:8443"));
        assert_eq!(https_authority("https://u:p@[::1]/").as_deref(), Some("[::1]:443"));
        assert_eq!(https_authority("https://[::1]:9/").as_deref(), Some("[::1]:9"));
        assert_eq!(https_authority("http://a.b/"), None);
        assert_eq!(https_authority("https:///x"), None);
    }
}
