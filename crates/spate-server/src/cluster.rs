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
//! - Leases of one group (the same prefix up to the last `/`, e.g. one
//!   KafkaSource's consumers) are spread: an instance takes one only while it
//!   holds fewer than its fair share, ⌈leases in the group / live instances⌉.
//!   Live instances are those holding a `member/<instance>` lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use spate_log::{ConfigError, ConfigStore, NatsConfigStore};
use spate_sources::Claims;
use tokio::sync::watch;

/// How long a dead holder keeps a lease.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

pub struct NatsClaims {
    claims: NatsConfigStore,
    leases: Arc<NatsConfigStore>,
    /// Values every instance sees (webhook registrations), in `<cluster>-records`.
    records: Arc<NatsConfigStore>,
    /// This instance, as written into the leases it holds.
    holder: String,
    share: Arc<Share>,
    /// Keeps this instance's membership lease alive.
    _member: watch::Receiver<bool>,
}

/// Per lease group on this instance: how many leases it competes for, how many it holds.
#[derive(Default)]
struct Share {
    groups: Mutex<HashMap<String, (usize, usize)>>,
}

fn group_of(key: &str) -> String {
    key.rsplit_once('/').map_or(key, |(g, _)| g).to_string()
}

impl Share {
    fn adjust(&self, group: &str, candidates: isize, held: isize) {
        let mut g = self.groups.lock().expect("share");
        let e = g.entry(group.to_string()).or_default();
        e.0 = (e.0 as isize + candidates).max(0) as usize;
        e.1 = (e.1 as isize + held).max(0) as usize;
    }

    /// Reserves one more lease of `group` if this instance holds fewer than its
    /// fair share with `members` instances alive (checked and counted at once,
    /// so concurrent lease tasks cannot overshoot). Give it back if not taken.
    fn try_reserve(&self, group: &str, members: usize) -> bool {
        let mut g = self.groups.lock().expect("share");
        let e = g.entry(group.to_string()).or_default();
        let ok = e.1 < e.0.div_ceil(members.max(1));
        if ok {
            e.1 += 1;
        }
        ok
    }

    /// Gives up one lease of `group` if this instance holds more than its fair
    /// share (another instance joined, or two took at once): counted at once.
    fn release_excess(&self, group: &str, members: usize) -> bool {
        let mut g = self.groups.lock().expect("share");
        let e = g.entry(group.to_string()).or_default();
        let over = e.1 > e.0.div_ceil(members.max(1));
        if over {
            e.1 -= 1;
        }
        over
    }
}

impl NatsClaims {
    /// Joins the cluster's membership (a `member/<holder>` lease) and serves claims and leases.
    pub fn new(
        claims: NatsConfigStore,
        leases: NatsConfigStore,
        records: Arc<NatsConfigStore>,
        holder: String,
    ) -> Self {
        let leases = Arc::new(leases);
        let share = Arc::new(Share::default());
        let (tx, member) = watch::channel(false);
        let me = Bytes::from(holder.clone());
        // KV keys allow letters, digits and `-/_=.`: the holder's URL is made to fit.
        let id: String =
            holder.chars().map(|c| if c.is_ascii_alphanumeric() || "-_=.".contains(c) { c } else { '_' }).collect();
        tokio::spawn(hold(leases.clone(), format!("member/{id}"), me, tx, None));
        NatsClaims { claims, leases, records, holder, share, _member: member }
    }
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
        let share = Some(self.share.clone());
        tokio::spawn(hold(self.leases.clone(), key, Bytes::from(self.holder.clone()), tx, share));
        rx
    }
}

/// Live instances: those holding a membership lease.
async fn members(store: &NatsConfigStore) -> usize {
    match store.list().await {
        Ok(all) => all.iter().filter(|v| v.key.starts_with("member/")).count(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the cluster's members; assuming this one alone");
            1
        }
    }
}

/// Takes and keeps the lease `key` while anyone listens to `tx`; gives it up
/// (deletes the key) when the listener goes. With `share`, takes it only
/// within this instance's fair share of its group.
async fn hold(store: Arc<NatsConfigStore>, key: String, me: Bytes, tx: watch::Sender<bool>, share: Option<Arc<Share>>) {
    let beat = LEASE_TTL / 3;
    let group = group_of(&key);
    if let Some(s) = &share {
        s.adjust(&group, 1, 0);
    }
    let mut revision: Option<u64> = None;
    loop {
        let held = match revision {
            // Holding more than our share: give this one up for another instance.
            Some(_)
                if match &share {
                    Some(s) => s.release_excess(&group, members(&store).await),
                    None => false,
                } =>
            {
                let _ = store.delete(&key).await;
                tracing::info!(lease = %key, "lease given up: this instance held more than its share");
                revision = None;
                let _ = tx.send(false);
                // Let another instance take it before we could again.
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(LEASE_TTL) => {}
                }
                continue;
            }
            // Holding: renew (fails if the key expired and someone else took it).
            Some(rev) => store.put(&key, me.clone(), rev).await.ok(),
            // Not holding: take it if nobody has, within our share (reserved first).
            None => {
                let reserved = match &share {
                    Some(s) => s.try_reserve(&group, members(&store).await),
                    None => true,
                };
                let taken = if reserved { store.put(&key, me.clone(), 0).await.ok() } else { None };
                if reserved
                    && taken.is_none()
                    && let Some(s) = &share
                {
                    s.adjust(&group, 0, -1);
                }
                taken
            }
        };
        if held.is_some() != revision.is_some() {
            tracing::info!(lease = %key, held = held.is_some(), "lease changed hands");
            // Taking was counted when reserved; losing is counted here.
            if held.is_none()
                && let Some(s) = &share
            {
                s.adjust(&group, 0, -1);
            }
        }
        revision = held;
        let _ = tx.send(revision.is_some());
        tokio::select! {
            _ = tx.closed() => break,
            _ = tokio::time::sleep(beat) => {}
        }
    }
    if let Some(s) = &share {
        s.adjust(&group, -1, if revision.is_some() { -1 } else { 0 });
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
