//! The controllers: one per room (serving, eventing, Kafka sinks, sources,
//! policies), each fed by the change feed through its own [`WorkQueue`]
//! keyed by object, each running on its own task, outside the store lock.
//!
//! A room's reconcile is level-based: it takes what the room should run from
//! the store (under its lock, briefly), runs the room without the lock (the
//! room diffs: what is unchanged keeps running), then writes the statuses of
//! the kinds it owns back under the lock — only to entries whose generation
//! and uid are still the ones it reconciled (a write made meanwhile queues
//! another reconcile, which reports it), so `observedGeneration` never claims
//! a spec the room has not run. A reconcile that leaves an object waiting on
//! an engine is retried with backoff (`retry.rs`); its conditions say why.
//!
//! Architecture Invariant: no room waits for another. A slow Service start
//! holds the serving controller only; Triggers keep being reconciled.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use spate_api::{Compiled, Kind, SecretConfig};
use spate_eventing::Desired;

use super::ControlPlane;
use super::queue::WorkQueue;
use super::statuses::{
    Changed, audience_in, flow_children_json, publish_event_type_status, resolve_sources, set_status,
    source_status_json, wanted_sinks,
};
use crate::status;
use crate::store::{Entry, Key, Store};

/// The rooms, in the order the first reconcile starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Room {
    Serving,
    Eventing,
    KafkaSinks,
    Sources,
    Policies,
}

impl Room {
    pub const ALL: [Room; 5] = [Room::Serving, Room::Eventing, Room::KafkaSinks, Room::Sources, Room::Policies];

    pub fn name(self) -> &'static str {
        match self {
            Room::Serving => "serving",
            Room::Eventing => "eventing",
            Room::KafkaSinks => "kafka-sinks",
            Room::Sources => "sources",
            Room::Policies => "policies",
        }
    }

    /// Whether a change to an object of `kind` can change what this room runs or reports.
    pub fn reads(self, kind: Kind) -> bool {
        // What a destination's `ref` resolves to (and the trust its CACerts add).
        let addressable = kind.is_channel()
            || matches!(kind, Kind::Broker | Kind::Sequence | Kind::Parallel | Kind::Service | Kind::KafkaSink);
        match self {
            Room::Serving => addressable || kind == Kind::SinkBinding,
            Room::Eventing => addressable || matches!(kind, Kind::Trigger | Kind::Subscription | Kind::ConfigMap),
            Room::KafkaSinks => matches!(kind, Kind::KafkaSink | Kind::Secret),
            Room::Sources => addressable || kind.is_source() || kind == Kind::Secret,
            // Policies name any addressable; EventTypes reference any kind.
            Room::Policies => true,
        }
    }

    /// Whether this room writes the status of objects of `kind`.
    fn writes(self, kind: Kind) -> bool {
        match self {
            Room::Serving => matches!(kind, Kind::Service | Kind::SinkBinding),
            Room::Eventing => {
                kind.is_channel()
                    || matches!(
                        kind,
                        Kind::Broker | Kind::Trigger | Kind::Subscription | Kind::Sequence | Kind::Parallel
                    )
            }
            Room::KafkaSinks => kind == Kind::KafkaSink,
            Room::Sources => kind.is_source(),
            Room::Policies => matches!(kind, Kind::EventPolicy | Kind::EventType),
        }
    }
}

/// The controllers' queues, one per room.
#[derive(Default)]
pub struct Queues {
    queues: [WorkQueue; 5],
}

impl Queues {
    pub fn of(&self, room: Room) -> &WorkQueue {
        &self.queues[room as usize]
    }

    /// Queues each changed object with every room that reads its kind; returns the tickets to wait for.
    pub fn add(&self, keys: &[Key]) -> Vec<(Room, u64)> {
        Room::ALL
            .into_iter()
            .filter_map(|room| {
                let mine: Vec<Key> = keys.iter().filter(|k| room.reads(k.0)).cloned().collect();
                (!mine.is_empty()).then(|| (room, self.of(room).add(mine)))
            })
            .collect()
    }

    /// Asks every room for a reconcile (the first one).
    pub fn kick_all(&self) -> Vec<(Room, u64)> {
        Room::ALL.into_iter().map(|room| (room, self.of(room).kick())).collect()
    }

    /// Waits until every room's reconcile that took its ticket has finished.
    pub async fn wait(&self, tickets: &[(Room, u64)]) {
        for (room, ticket) in tickets {
            self.of(*room).wait(*ticket).await;
        }
    }
}

/// The entries a room reconciled, as they were then: its statuses go back only
/// to these (same generation and uid; an object deleted and created again
/// meanwhile is another object).
pub(super) struct Seen(HashMap<Key, (u64, String)>);

impl Seen {
    fn of(store: &Store, room: Room) -> Seen {
        let mine = store.entries.iter().filter(|(k, _)| room.writes(k.0));
        Seen(mine.map(|(k, e)| (k.clone(), (e.generation, e.uid.clone()))).collect())
    }

    /// The entry to write `key`'s status to, if it is still the one reconciled.
    pub(super) fn entry<'a>(&self, store: &'a mut Store, key: &Key) -> Option<&'a mut Entry> {
        let (generation, uid) = self.0.get(key)?;
        store.entries.get_mut(key).filter(|e| e.generation == *generation && e.uid == *uid)
    }
}

impl ControlPlane {
    /// One room's controller: waits for work, reconciles, retries with backoff
    /// while the room leaves objects waiting on an engine.
    pub(super) async fn control(self: Arc<Self>, room: Room) {
        let queue = self.queues.of(room);
        let mut retry = crate::retry::Retry::new(crate::retry::RETRY_MIN, crate::retry::RETRY_MAX);
        let mut wait = None;
        loop {
            let batch = match wait {
                None => queue.next().await,
                Some(d) => tokio::select! {
                    batch = queue.next() => batch,
                    () = tokio::time::sleep(d) => {
                        tracing::info!(room = room.name(), "reconciling again: resources are waiting on an engine");
                        queue.kick();
                        queue.next().await
                    }
                },
            };
            let running = queue.running().await;
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            tracing::debug!(room = room.name(), changed = batch.keys.len(), "reconciling");
            let waiting = self.reconcile_room(room).await;
            drop(running);
            queue.finished(&batch);
            wait = retry.after(waiting);
        }
    }

    /// Runs one room's reconcile; true if it left objects waiting on an engine.
    pub(super) async fn reconcile_room(&self, room: Room) -> bool {
        let (seen, changed, store) = match room {
            Room::Serving => self.reconcile_serving().await,
            Room::Eventing => self.reconcile_eventing().await,
            Room::KafkaSinks => self.reconcile_kafka_sinks().await,
            Room::Sources => self.reconcile_sources().await,
            Room::Policies => self.reconcile_policies().await,
        };
        for (key, status) in changed {
            self.objects.set_status(&key, &status);
        }
        seen.0.keys().filter_map(|k| store.entries.get(k)).any(|e| e.status.waiting())
    }

    /// The store's lock and what `room` reconciles from it.
    async fn take<T>(&self, room: Room, what: impl FnOnce(&Store) -> T) -> (Seen, T) {
        let store = self.store.lock().await;
        let seen = Seen::of(&store, room);
        (seen, what(&store))
    }

    /// Tests hold a room's reconcile (`reconcile_delay_ms`) to show nothing waits for it.
    async fn hold(&self, _room: Room) {
        #[cfg(test)]
        {
            let ms = self.reconcile_delay_ms[_room as usize].load(std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    async fn reconcile_serving(&self) -> (Seen, Changed, tokio::sync::MutexGuard<'_, Store>) {
        let (seen, (desired, mut services, bindings, labels)) = self
            .take(Room::Serving, |store| {
                let mut services = vec![];
                let (mut bindings, mut labels) = (vec![], HashMap::new());
                for e in store.entries.values() {
                    match &e.compiled {
                        Compiled::Service(s) => {
                            let key = (s.namespace.clone(), s.name.clone());
                            labels.insert(key, e.resource.labels.clone());
                            services.push(s.clone());
                        }
                        Compiled::SinkBinding(b) => bindings.push(b.clone()),
                        _ => {}
                    }
                }
                (self.addressables(store), services, bindings, labels)
            })
            .await;
        let resolve = self.eventing.resolver(&desired);
        let binding_statuses = crate::bindings::apply(&bindings, &mut services, &labels, &resolve);
        drop(resolve);
        self.hold(Room::Serving).await;
        let service_statuses = self.serving.reconcile(&services).await;
        let mut store = self.store.lock().await;
        let mut changed = vec![];
        for b in binding_statuses {
            if let Some(e) = seen.entry(&mut store, &b.key) {
                let mut new = json!({"observedGeneration": e.generation, "conditions": status::conditions_json(&b.conditions, &status::now_rfc3339())});
                if let Some(u) = &b.sink_uri {
                    new["sinkUri"] = json!(u);
                }
                set_status(e, new, &mut changed);
            }
        }
        for st in &service_statuses {
            let key = (Kind::Service, st.namespace.clone(), st.name.clone());
            if let Some(e) = seen.entry(&mut store, &key) {
                let new = status::service(st, e.generation);
                set_status(e, new, &mut changed);
            }
        }
        *self.services.lock().expect("services") = service_statuses;
        (seen, changed, store)
    }

    async fn reconcile_eventing(&self) -> (Seen, Changed, tokio::sync::MutexGuard<'_, Store>) {
        let (seen, desired) = self
            .take(Room::Eventing, |store| {
                self.set_trust(store);
                let mut desired = self.addressables(store);
                for e in store.entries.values() {
                    match &e.compiled {
                        Compiled::Trigger(t) => desired.triggers.push(t.clone()),
                        Compiled::Subscription(s) => desired.subscriptions.push(s.clone()),
                        Compiled::ConfigMap(c) => {
                            desired.config_maps.insert((c.namespace.clone(), c.name.clone()), c.data.clone());
                        }
                        _ => {}
                    }
                }
                desired
            })
            .await;
        self.hold(Room::Eventing).await;
        let statuses = self.eventing.reconcile(&desired).await;
        let mut store = self.store.lock().await;
        self.publish_children(&store, &desired, &statuses);
        let auth = self.data_auth.as_ref().map(|a| a.snapshot());
        let mut changed = vec![];
        for st in statuses {
            // Eventing reports every channel kind as Channel; the store knows which was applied.
            let kinds: &[Kind] = if st.kind == Kind::Channel {
                &[Kind::Channel, Kind::InMemoryChannel, Kind::NatsJetStreamChannel, Kind::KafkaChannel]
            } else {
                &[st.kind]
            };
            let key = kinds
                .iter()
                .map(|k| (*k, st.namespace.clone(), st.name.clone()))
                .find(|k| store.entries.contains_key(k));
            if let Some(e) = key.and_then(|k| seen.entry(&mut store, &k)) {
                let mut new = status::resource(&st, e.generation);
                if let Some(snap) = &auth {
                    audience_in(&mut new, e, snap);
                }
                set_status(e, new, &mut changed);
            }
        }
        (seen, changed, store)
    }

    async fn reconcile_kafka_sinks(&self) -> (Seen, Changed, tokio::sync::MutexGuard<'_, Store>) {
        let (seen, (sinks, addresses)) = self
            .take(Room::KafkaSinks, |store| {
                let secrets = secrets(store);
                let sinks: Vec<_> = store
                    .entries
                    .values()
                    .filter_map(|e| match &e.compiled {
                        Compiled::KafkaSink(k) => Some(k.clone()),
                        _ => None,
                    })
                    .collect();
                let addresses: HashMap<_, _> =
                    sinks.iter().map(|k| ((k.namespace.clone(), k.name.clone()), self.kafka_sink_address(k))).collect();
                (wanted_sinks(sinks, &secrets), addresses)
            })
            .await;
        self.hold(Room::KafkaSinks).await;
        let statuses = self.kafka_sinks.reconcile(sinks).await;
        let mut store = self.store.lock().await;
        let auth = self.data_auth.as_ref().map(|a| a.snapshot());
        let mut changed = vec![];
        for st in statuses {
            let key = (Kind::KafkaSink, st.namespace.clone(), st.name.clone());
            if let Some(e) = seen.entry(&mut store, &key) {
                let mut new = status::kafka_sink(&st, e.generation, &addresses[&(key.1, key.2)]);
                if let Some(snap) = &auth {
                    audience_in(&mut new, e, snap);
                }
                set_status(e, new, &mut changed);
            }
        }
        (seen, changed, store)
    }

    async fn reconcile_sources(&self) -> (Seen, Changed, tokio::sync::MutexGuard<'_, Store>) {
        let (seen, (desired, sources, secrets)) = self
            .take(Room::Sources, |store| {
                self.set_trust(store);
                let sources: Vec<_> = store
                    .entries
                    .values()
                    .filter_map(|e| match &e.compiled {
                        Compiled::Source(s) => Some((**s).clone()),
                        _ => None,
                    })
                    .collect();
                (self.addressables(store), sources, secrets(store))
            })
            .await;
        let resolve = self.eventing.resolver(&desired);
        let resolved = resolve_sources(sources, &secrets, &resolve);
        drop(resolve);
        self.hold(Room::Sources).await;
        let statuses = self.sources.reconcile(&resolved).await;
        let mut store = self.store.lock().await;
        let mut changed = vec![];
        for st in statuses {
            if let Some(e) = seen.entry(&mut store, &(st.kind, st.namespace.clone(), st.name.clone())) {
                let old = e.status.get();
                let new = source_status_json(&st, e.generation, &old);
                if new != old {
                    e.status.set(&new);
                    changed.push((e.resource.key(), new));
                }
            }
        }
        (seen, changed, store)
    }

    /// Sender identity and EventPolicies (rebuilt from every stored object), EventTypes' references.
    async fn reconcile_policies(&self) -> (Seen, Changed, tokio::sync::MutexGuard<'_, Store>) {
        self.hold(Room::Policies).await;
        let mut store = self.store.lock().await;
        let seen = Seen::of(&store, Room::Policies);
        let mut changed = vec![];
        if let Some(auth) = &self.data_auth {
            let mode = auth.snapshot().auth.mode;
            auth.set(crate::data_auth::build_snapshot(store.entries.values(), mode));
            super::statuses::publish_auth_status(&mut store, &auth.snapshot(), &mut changed);
        }
        publish_event_type_status(&mut store, &mut changed);
        (seen, changed, store)
    }

    /// The addressables a destination's `ref` resolves to (no Triggers or Subscriptions).
    fn addressables(&self, store: &Store) -> Desired {
        let mut d = Desired::default();
        for e in store.entries.values() {
            match &e.compiled {
                Compiled::Broker(b) => d.brokers.push(b.clone()),
                Compiled::Channel(c) => d.channels.push(c.clone()),
                Compiled::Sequence(s) => d.sequences.push(s.clone()),
                Compiled::Parallel(p) => d.parallels.push(p.clone()),
                Compiled::KafkaSink(k) => {
                    d.kafka_sinks.insert((k.namespace.clone(), k.name.clone()), self.kafka_sink_address(k));
                }
                Compiled::Service(s) => {
                    d.services
                        .insert((s.namespace.clone(), s.name.clone()), self.serving.address(&s.namespace, &s.name));
                }
                _ => {}
            }
        }
        d
    }

    /// The CAs each https destination trusts (its `CACerts`, and this server's own chain).
    fn set_trust(&self, store: &Store) {
        let mut cas: Vec<(String, String)> =
            store.entries.values().flat_map(|e| e.resource.trusted_cas.iter().cloned()).collect();
        if let Some((authority, chain)) = &self.own_tls {
            cas.push((authority.clone(), chain()));
        }
        for e in self.dispatcher.set_trust(cas) {
            tracing::warn!(error = %e, "destination CA certificates unusable; the system roots apply");
        }
    }

    /// The channels and subscriptions flows own, as derived objects born with their owner.
    fn publish_children(&self, store: &Store, desired: &Desired, statuses: &[spate_eventing::ResourceStatus]) {
        let mut owned = spate_eventing::flow_children(desired);
        owned.extend(self.eventing.broker_children());
        let mut children = flow_children_json(&owned, statuses);
        for child in &mut children {
            // Born with their owner: its creation time, and its uid in the owner reference.
            let reference = &child["metadata"]["ownerReferences"][0];
            let namespace = child["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            let name = reference["name"].as_str().unwrap_or("").to_string();
            let owner = Kind::all()
                .find(|k| reference["kind"] == k.name())
                .and_then(|k| store.entries.get(&(k, namespace, name)));
            if let Some(owner) = owner {
                child["metadata"]["creationTimestamp"] = json!(owner.created);
                child["metadata"]["ownerReferences"][0]["uid"] = json!(owner.uid);
            }
        }
        self.objects.set_derived(children);
    }

    pub(super) fn kafka_sink_address(&self, k: &spate_api::KafkaSinkConfig) -> String {
        format!("{}/kafkasinks/{}/{}", self.eventing.config().base_url.trim_end_matches('/'), k.namespace, k.name)
    }
}

/// Every stored Secret, by namespace and name.
fn secrets(store: &Store) -> HashMap<(String, String), SecretConfig> {
    store
        .entries
        .values()
        .filter_map(|e| match &e.compiled {
            Compiled::Secret(s) => Some(((s.namespace.clone(), s.name.clone()), s.clone())),
            _ => None,
        })
        .collect()
}
