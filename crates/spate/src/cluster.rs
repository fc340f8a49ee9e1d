//! Once-per-cluster work over NATS KV: a claim is a key created in the
//! bucket `<cluster>-claims` (entries expire after ten minutes); the instance
//! whose create succeeds does the work.

use spate_log::{ConfigError, ConfigStore, NatsConfigStore};
use spate_sources::Claims;

pub struct NatsClaims(pub NatsConfigStore);

impl Claims for NatsClaims {
    fn claim(&self, key: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            match self.0.put(&key, bytes::Bytes::from_static(b"1"), 0).await {
                Ok(_) => true,
                Err(ConfigError::Conflict { .. }) => false,
                // NATS unreachable: do the work (at least once) rather than lose it.
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot claim once-per-cluster work; doing it here");
                    true
                }
            }
        })
    }
}
