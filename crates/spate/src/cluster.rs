//! Once-per-cluster work over NATS KV.
//!
//! - A claim is a key created in `<cluster>-claims` (entries expire after ten
//!   minutes); the instance whose create succeeds does the work.
//! - A lease is a key in `<cluster>-leases`, whose entries expire [`LEASE_TTL`]
//!   after their last write. The holder rewrites it every third of that
//!   (compare and swap on its revision); others try to create it as often. When
//!   the holder dies its key expires and another instance takes the lease.
//! - A record is a value in `<cluster>-records` every instance reads (a
//!   webhook's registration, so it is made once and removed once).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spate_log::{ConfigError, ConfigStore, NatsConfigStore};
use spate_sources::Claims;
use tokio::sync::watch;

/// How long a dead holder keeps a lease.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

pub struct NatsClaims {
    pub claims: NatsConfigStore,
    pub leases: Arc<NatsConfigStore>,
    /// Values every instance sees (webhook registrations), in `<cluster>-records`.
    pub records: Arc<NatsConfigStore>,
    /// This instance, as written into the leases it holds.
    pub holder: String,
}

impl Claims for NatsClaims {
    fn claim(&self, key: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            match self.claims.put(&key, Bytes::from_static(b"1"), 0).await {
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

    fn recall(&self, key: String) -> spate_sources::BoxFut<'_, Option<String>> {
        Box::pin(async move {
            let v = self.records.get(&key).await.ok()??;
            String::from_utf8(v.value.to_vec()).ok()
        })
    }

    fn remember(&self, key: String, value: Option<String>) -> spate_sources::BoxFut<'_, ()> {
        Box::pin(async move {
            let r = match value {
                Some(v) => {
                    let rev = self.records.get(&key).await.ok().flatten().map_or(0, |e| e.revision);
                    self.records.put(&key, Bytes::from(v), rev).await.map(|_| ())
                }
                None => self.records.delete(&key).await,
            };
            if let Err(e) = r {
                tracing::warn!(%key, error = %e, "cannot record a shared value");
            }
        })
    }

    fn lease(&self, key: String) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(hold(self.leases.clone(), key, Bytes::from(self.holder.clone()), tx));
        rx
    }
}

/// Takes and keeps the lease `key` while anyone listens to `tx`; gives it up
/// (deletes the key) when the listener goes.
async fn hold(store: Arc<NatsConfigStore>, key: String, me: Bytes, tx: watch::Sender<bool>) {
    let beat = LEASE_TTL / 3;
    let mut revision: Option<u64> = None;
    loop {
        let held = match revision {
            // Holding: renew (fails if the key expired and someone else took it).
            Some(rev) => store.put(&key, me.clone(), rev).await.ok(),
            // Not holding: take it if nobody has.
            None => store.put(&key, me.clone(), 0).await.ok(),
        };
        if held.is_some() != revision.is_some() {
            tracing::info!(lease = %key, held = held.is_some(), "lease changed hands");
        }
        revision = held;
        let _ = tx.send(revision.is_some());
        tokio::select! {
            _ = tx.closed() => break,
            _ = tokio::time::sleep(beat) => {}
        }
    }
    if revision.is_some() {
        let _ = store.delete(&key).await;
    }
}

/// Serving's revision history, shared in `<cluster>-records` under one key, so
/// a revision has the same name on every instance.
pub struct NatsHistory(pub Arc<NatsConfigStore>);

const HISTORY_KEY: &str = "serving/revisions";

impl spate_serving::SharedHistory for NatsHistory {
    fn load(&self) -> spate_serving::BoxFut<'_, Option<(Vec<u8>, u64)>> {
        Box::pin(async move {
            let v = self.0.get(HISTORY_KEY).await.ok()??;
            Some((v.value.to_vec(), v.revision))
        })
    }

    fn save(&self, bytes: Vec<u8>, expected: u64) -> spate_serving::BoxFut<'_, Option<u64>> {
        Box::pin(async move { self.0.put(HISTORY_KEY, Bytes::from(bytes), expected).await.ok() })
    }
}
