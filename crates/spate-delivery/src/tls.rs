//! Per-destination TLS trust, Knative's `CACerts`: an `https://` destination
//! is verified against the system's roots plus the CA certificates its
//! manifests name. Trust is kept per authority (`host:port`): destinations
//! that share one share the union of their CAs and one connection pool.
//! Built at reconcile, looked up on the hot path by the URL's authority.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use thiserror::Error;

use crate::client::{HttpClient, certificates};

#[derive(Debug, Error)]
#[error("CACerts for {authority}: {reason}")]
pub struct TrustError {
    pub authority: String,
    pub reason: String,
}

/// The default client (system roots only).
pub(crate) fn default_client() -> HttpClient {
    HttpClient::new(vec![]).expect("an HTTP client with the system roots builds")
}

struct Trusted {
    pems: BTreeSet<String>,
    client: HttpClient,
}

#[derive(Default)]
pub(crate) struct Trust {
    by_authority: RwLock<HashMap<String, Trusted>>,
}

impl Trust {
    /// The client for `url` when its authority has extra CAs.
    pub fn client_for(&self, url: &str) -> Option<HttpClient> {
        let map = self.by_authority.read().expect("trust lock");
        if map.is_empty() {
            return None;
        }
        let authority = spate_core::destination::https_authority(url)?;
        map.get(&authority).map(|t| t.client.clone())
    }

    /// Replaces the trusted CAs with `wanted` (authority, PEM bundle); clients
    /// are rebuilt only for authorities whose set changed. An authority whose
    /// certificates cannot be used keeps the system roots only.
    pub fn set(&self, wanted: Vec<(String, String)>) -> Vec<TrustError> {
        let mut sets: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (authority, pem) in wanted {
            sets.entry(authority).or_default().insert(pem);
        }
        let mut errors = vec![];
        let mut next = HashMap::new();
        let mut current = self.by_authority.write().expect("trust lock");
        for (authority, pems) in sets {
            if let Some(t) = current.remove(&authority).filter(|t| t.pems == pems) {
                next.insert(authority, t);
                continue;
            }
            match build(&pems) {
                Ok(client) => {
                    next.insert(authority, Trusted { pems, client });
                }
                Err(reason) => errors.push(TrustError { authority, reason }),
            }
        }
        *current = next;
        errors
    }
}

fn build(pems: &BTreeSet<String>) -> Result<HttpClient, String> {
    let mut extra = vec![];
    for pem in pems {
        extra.extend(certificates(pem)?);
    }
    HttpClient::new(extra)
}
