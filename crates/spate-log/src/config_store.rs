//! The `ConfigStore` seam: where resources live when several Spate instances
//! share them. Keys map to opaque values with a revision; writes compare and
//! swap on the revision; a watch delivers every change (including the
//! writer's own), so each instance reconciles from the same sequence.
//!
//! The single-instance default keeps resources in the data directory
//! (`resources.json`, in the binary's `store.rs`); [`NatsConfigStore`] keeps
//! them in a NATS KV bucket `<cluster>-resources`.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::BoxFuture;
use crate::nats::Nats;

#[derive(Debug, Error)]
pub enum ConfigError {
    /// The key changed since `expected` (another instance wrote it): re-read and retry.
    #[error("{key} was changed concurrently (by another instance); re-read and apply again")]
    Conflict { key: String },
    #[error("the configuration store is unavailable: {0}")]
    Unavailable(String),
    /// The store will not keep this value as given (a Secret without its sealing key).
    #[error("{0}")]
    Refused(String),
}

/// A value and the revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Versioned),
    /// The key was deleted at `revision` (0 when the store cannot say).
    Delete {
        key: String,
        revision: u64,
    },
    /// Every change up to now has been delivered (the initial state is complete).
    Synced,
}

pub trait ConfigStore: Send + Sync + 'static {
    /// Every key with its value and revision.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Versioned>, ConfigError>>;
    /// Writes `value` if the key's revision is `expected` (0: the key must not exist).
    /// Returns the new revision.
    fn put(&self, key: &str, value: Bytes, expected: u64) -> BoxFuture<'_, Result<u64, ConfigError>>;
    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), ConfigError>>;
    /// The current state as `Put`s, then `Synced`, then every later change, in
    /// revision order. Unbounded, so a writer never waits on (or drops a change
    /// for) a slow follower: the follower drains it without blocking.
    fn watch(&self) -> BoxFuture<'_, Result<mpsc::UnboundedReceiver<Change>, ConfigError>>;
    /// Writes several `(key, value, expected revision)`s, returning their new
    /// revisions in order. A store that rewrites a file per write does them in
    /// one write (all or nothing), so applying N objects costs one write, not N
    /// (a bulk apply stays linear); by default, one `put` after another,
    /// stopping at the first failure.
    fn put_many(&self, items: Vec<(String, Bytes, u64)>) -> BoxFuture<'_, Result<Vec<u64>, ConfigError>> {
        Box::pin(async move {
            let mut revisions = Vec::with_capacity(items.len());
            for (key, value, expected) in items {
                revisions.push(self.put(&key, value, expected).await?);
            }
            Ok(revisions)
        })
    }
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; resource keys are `<Kind>.<namespace>.<name>`: the kind and
/// the namespace (a DNS label) hold no dot, so the first two dots delimit them even in a dotted name.
pub fn resource_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}.{namespace}.{name}")
}

pub struct NatsConfigStore {
    kv: kv::Store,
}

fn unavailable(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Unavailable(e.to_string())
}

impl NatsConfigStore {
    /// Opens (creating if absent) the bucket `<cluster>-<name>`.
    pub async fn open(nats: &Nats, name: &str) -> Result<Self, ConfigError> {
        Self::open_with_ttl(nats, name, Duration::ZERO).await
    }

    /// Opens (creating if absent) the bucket `<cluster>-<name>`, whose entries
    /// expire `ttl` after their last write when `ttl` is not zero (leases).
    ///
    /// The bucket's stream is created here with the KV layout rather than by
    /// the client's `create_key_value`, which first asks for account limits in
    /// a form NATS 2.9 does not answer.
    pub async fn open_with_ttl(nats: &Nats, name: &str, ttl: Duration) -> Result<Self, ConfigError> {
        let bucket = format!("{}-{name}", nats.config.cluster);
        let cfg = async_nats::jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            storage: async_nats::jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            num_replicas: nats.config.replicas.max(1),
            ..Default::default()
        };
        nats.js.get_or_create_stream(cfg).await.map_err(unavailable)?;
        let kv = nats.js.get_key_value(&bucket).await.map_err(unavailable)?;
        Ok(NatsConfigStore { kv })
    }

    /// The value and revision of `key`, if present.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, ConfigError> {
        match self.kv.entry(key).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some(Versioned { key: e.key, value: e.value, revision: e.revision }))
            }
            _ => Ok(None),
        }
    }
}

impl ConfigStore for NatsConfigStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Versioned>, ConfigError>> {
        Box::pin(async move {
            let mut keys = self.kv.keys().await.map_err(unavailable)?;
            let mut names = vec![];
            while let Some(k) = keys.next().await {
                names.push(k.map_err(unavailable)?);
            }
            let mut out = vec![];
            for k in names {
                if let Some(v) = self.get(&k).await? {
                    out.push(v);
                }
            }
            Ok(out)
        })
    }

    fn put(&self, key: &str, value: Bytes, expected: u64) -> BoxFuture<'_, Result<u64, ConfigError>> {
        let key = key.to_string();
        Box::pin(async move {
            let r = if expected == 0 {
                self.kv
                    .create(&key, value)
                    .await
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, e.to_string()))
            } else {
                self.kv
                    .update(&key, value, expected)
                    .await
                    .map_err(|e| (e.kind() == kv::UpdateErrorKind::WrongLastRevision, e.to_string()))
            };
            match r {
                Ok(rev) => Ok(rev),
                Err((true, _)) => Err(ConfigError::Conflict { key }),
                Err((false, e)) => Err(ConfigError::Unavailable(e)),
            }
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), ConfigError>> {
        let key = key.to_string();
        Box::pin(async move { self.kv.delete(&key).await.map_err(unavailable) })
    }

    fn watch(&self) -> BoxFuture<'_, Result<mpsc::UnboundedReceiver<Change>, ConfigError>> {
        Box::pin(async move {
            let mut w = self.kv.watch_with_history(">").await.map_err(unavailable)?;
            let (tx, rx) = mpsc::unbounded_channel();
            // An empty bucket delivers no entry at all: it is synced at once.
            let empty = self.kv.status().await.map(|s| s.values() == 0).unwrap_or(false);
            if empty {
                let _ = tx.send(Change::Synced);
            }
            tokio::spawn(async move {
                let mut synced = empty;
                while let Some(e) = w.next().await {
                    let Ok(e) = e else {
                        tracing::warn!("configuration watch interrupted; it resumes when NATS answers");
                        continue;
                    };
                    let caught_up = e.delta == 0;
                    let change = match e.operation {
                        kv::Operation::Put => {
                            Change::Put(Versioned { key: e.key, value: e.value, revision: e.revision })
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            Change::Delete { key: e.key, revision: e.revision }
                        }
                    };
                    if tx.send(change).is_err() {
                        return;
                    }
                    if !synced && caught_up {
                        synced = true;
                        if tx.send(Change::Synced).is_err() {
                            return;
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}
