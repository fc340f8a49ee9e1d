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
