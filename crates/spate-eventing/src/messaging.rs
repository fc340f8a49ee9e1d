//! Channels, Subscriptions, and the flows compiled into them.
//!
//! Sequence and Parallel have no data plane of their own: as in Knative they
//! expand into Channels and Subscriptions with deterministic names, derived
//! from the flow on every reconcile (so they are deleted with it), and their
//! status gathers their children's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use spate_api::{ChannelConfig, ChannelStorage, DeliverySpec, Kind, SubscriptionConfig};
use spate_core::{CloudEvent, Destination, KRef, storage};
use spate_filter::Filter;
use spate_log::{LogBackend, MessageStream, StreamBackend};
use tokio::sync::watch;

use crate::Eventing;
use crate::broker::PublishError;
use crate::desired::{Addressables, Condition, Desired, ResourceStatus};
use crate::feed::Feed;
use crate::trigger::{ReplyPlan, WorkerPlan};
use crate::workers::{Source, Worker, Workers};

/// Name of step `i`'s channel and subscription in a Sequence.
pub fn sequence_channel(sequence: &str, i: usize) -> String {
    format!("{sequence}-kn-sequence-{i}")
}
/// A Parallel's ingress channel.
pub fn parallel_ingress(parallel: &str) -> String {
    format!("{parallel}-kn-parallel")
}
/// A Parallel's branch channel.
pub fn parallel_branch(parallel: &str, i: usize) -> String {
    format!("{parallel}-kn-parallel-{i}")
}
/// A flow's channels (this module owns their names): the one the flow is
/// addressed at, then its inner ones, which only the flow's own subscriptions feed.
pub fn flow_channels(kind: Kind, flow: &str, parts: usize) -> (String, Vec<String>) {
    match kind {
        Kind::Parallel => (parallel_ingress(flow), (0..parts).map(|i| parallel_branch(flow, i)).collect()),
        _ => (sequence_channel(flow, 0), (1..parts).map(|i| sequence_channel(flow, i)).collect()),
    }
}
fn parallel_filter(parallel: &str, i: usize) -> String {
    format!("{parallel}-kn-parallel-filter-{i}")
}

fn channel_ref(ns: &str, name: &str) -> Destination {
    Destination {
        kref: Some(KRef {
            api_version: "messaging.knative.dev/v1".into(),
            kind: "InMemoryChannel".into(),
            name: name.into(),
            namespace: ns.into(),
        }),
        uri: None,
    }
}

/// The children a flow expanded into.
pub(crate) struct Flow {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub channels: Vec<String>,
    pub subscriptions: Vec<String>,
}

/// User channels and subscriptions plus everything the flows expand into.
pub(crate) struct Expanded {
    pub channels: Vec<ChannelConfig>,
    pub subscriptions: Vec<SubscriptionConfig>,
    pub flows: Vec<Flow>,
}

pub(crate) fn expand(desired: &Desired) -> Expanded {
    let mut x =
        Expanded { channels: desired.channels.clone(), subscriptions: desired.subscriptions.clone(), flows: vec![] };
    for s in &desired.sequences {
        expand_sequence(s, &mut x);
    }
    for p in &desired.parallels {
        expand_parallel(p, &mut x);
    }
    x
}

/// A subscription a flow owns, on one of its InMemoryChannels.
fn flow_subscription(
    ns: &str,
    name: String,
    channel: String,
    subscriber: Option<Destination>,
    reply: Option<Destination>,
    delivery: Option<DeliverySpec>,
) -> SubscriptionConfig {
    SubscriptionConfig {
        namespace: ns.into(),
        name,
        channel_kind: "InMemoryChannel".into(),
        channel,
        subscriber,
        reply,
        delivery,
    }
}

/// A Sequence: one channel per step, each step's reply feeding the next.
fn expand_sequence(s: &spate_api::SequenceConfig, x: &mut Expanded) {
    let ns = &s.namespace;
    let mut flow = Flow {
        kind: Kind::Sequence,
        namespace: ns.clone(),
        name: s.name.clone(),
        channels: vec![],
        subscriptions: vec![],
    };
    for (i, step) in s.steps.iter().enumerate() {
        let ch = sequence_channel(&s.name, i);
        x.channels.push(ChannelConfig {
            namespace: ns.clone(),
            name: ch.clone(),
            storage: s.storage,
            settings: s.settings.clone(),
            delivery: None,
        });
        // Step k's reply feeds step k+1; the last step's goes to the Sequence's reply.
        let reply = if i + 1 < s.steps.len() {
            Some(channel_ref(ns, &sequence_channel(&s.name, i + 1)))
        } else {
            s.reply.clone()
        };
        x.subscriptions.push(flow_subscription(
            ns,
            ch.clone(),
            ch.clone(),
            Some(step.destination.clone()),
            reply,
            step.delivery.clone(),
        ));
        flow.channels.push(ch.clone());
        flow.subscriptions.push(ch);
    }
    x.flows.push(flow);
}

/// A Parallel: an ingress channel, and per branch a filter subscription and a branch channel.
fn expand_parallel(p: &spate_api::ParallelConfig, x: &mut Expanded) {
    let ns = &p.namespace;
    let ingress = parallel_ingress(&p.name);
    let mut flow = Flow {
        kind: Kind::Parallel,
        namespace: ns.clone(),
        name: p.name.clone(),
        channels: vec![ingress.clone()],
        subscriptions: vec![],
    };
    x.channels.push(ChannelConfig {
        namespace: ns.clone(),
        name: ingress.clone(),
        storage: p.storage,
        settings: p.settings.clone(),
        delivery: None,
    });
    for (i, b) in p.branches.iter().enumerate() {
        let branch = parallel_branch(&p.name, i);
        let filter = parallel_filter(&p.name, i);
        x.channels.push(ChannelConfig {
            namespace: ns.clone(),
            name: branch.clone(),
            storage: p.storage,
            settings: p.settings.clone(),
            delivery: None,
        });
        // The filter returns the event to let it through (its reply goes on to
        // the branch channel) or nothing to stop it. No filter: everything passes.
        x.subscriptions.push(flow_subscription(
            ns,
            filter.clone(),
            ingress.clone(),
            b.filter.clone(),
            Some(channel_ref(ns, &branch)),
            b.delivery.clone(),
        ));
        let reply = b.reply.clone().or_else(|| p.reply.clone());
        x.subscriptions.push(flow_subscription(
            ns,
            branch.clone(),
            branch.clone(),
            Some(b.subscriber.clone()),
            reply,
            b.delivery.clone(),
        ));
        flow.channels.push(branch.clone());
        flow.subscriptions.push(filter);
        flow.subscriptions.push(branch);
    }
    x.flows.push(flow);
}

/// Where a channel keeps its events.
#[derive(Clone)]
pub enum ChannelStore {
    /// The embedded log (or memory) with its router.
    Log(Arc<Feed>),
    /// A NATS JetStream stream (NatsJetStreamChannel).
    Stream(Arc<dyn MessageStream>),
}

/// A running channel: its config and storage.
pub struct Channel {
    pub config: ChannelConfig,
    pub store: ChannelStore,
    pub address: String,
    events_in: metrics::Counter,
    tap: crate::tap::Tap,
}

impl Channel {
    /// Stores events as they are (channels have no TTL). Resolves once durable.
    pub async fn publish(&self, events: Vec<CloudEvent>) -> Result<(), PublishError> {
        let n = events.len() as u64;
        let new_types = self.tap.types.pending("Channel", &self.config.namespace, &self.config.name, &events);
        match &self.store {
            ChannelStore::Log(feed) => {
                let payloads: Vec<Bytes> = events.iter().map(|ev| Bytes::from(storage::encode(ev))).collect();
                feed.log.append(payloads).await?;
            }
            ChannelStore::Stream(stream) => {
                let payloads = events
                    .iter()
                    .map(|ev| (Bytes::from(storage::encode(ev)), format!("{} {}", ev.source, ev.id)))
                    .collect();
                stream.publish(payloads).await?;
            }
        }
        self.events_in.increment(n);
        self.tap.types.record(new_types);
        if self.tap.active() {
            self.tap.offer(&format!("channel/{}/{}", self.config.namespace, self.config.name), events);
        }
        Ok(())
    }

    /// The embedded log's feed, if the channel is on it.
    pub fn feed(&self) -> Option<&Arc<Feed>> {
        match &self.store {
            ChannelStore::Log(f) => Some(f),
            ChannelStore::Stream(_) => None,
        }
    }
}

pub(crate) fn channel_log_name(ns: &str, name: &str) -> String {
    format!("channel.{ns}.{name}")
}

type Key = (String, String);

/// Every worker has settled everything its channel holds.
async fn drained(workers: &[Worker]) -> bool {
    for w in workers {
        if !w.caught_up().await {
            return false;
        }
    }
    true
}

/// Where a channel's events are kept, to delete them once drained.
#[derive(Clone)]
enum ChannelStorageBackend {
    Log(Arc<dyn LogBackend>),
    Stream(Arc<dyn StreamBackend>),
}

impl ChannelStorageBackend {
    async fn remove(&self, name: &str) -> Result<(), spate_log::LogError> {
        match self {
            ChannelStorageBackend::Log(b) => b.remove(name).await,
            ChannelStorageBackend::Stream(b) => b.remove(name).await,
        }
    }
}

/// The engine settings a channel opens with: a KafkaChannel's topic is the one
/// the Kafka backend names for it (Knative's `knative-messaging-kafka.<ns>.<name>`).
fn channel_settings(c: &ChannelConfig) -> spate_log::StreamSettings {
    if c.storage != ChannelStorage::Kafka {
        return spate_log::StreamSettings::default();
    }
    let bounded =
        |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX).min(spate_log::kafka::MAX_TOPIC_SETTING));
    spate_log::StreamSettings {
        topic: Some(spate_log::kafka::channel_topic(&c.namespace, &c.name)),
        partitions: bounded(c.settings.partitions),
        replication_factor: bounded(c.settings.replication_factor),
        retention_ms: c.settings.retention_ms.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
        ..spate_log::StreamSettings::default()
    }
}

/// A channel removed from a flow that still had undelivered events: its
/// subscriptions keep delivering (with their last plan) until everything
/// accepted has been settled (committed on the embedded log; acknowledged on
/// a NATS stream, by whichever instance took it), then its storage is deleted. Nothing new can
/// arrive: the channel is no longer addressable.
pub(crate) struct Drain {
    channel: Arc<Channel>,
    cancel: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<bool>,
}

impl Drain {
    fn start(channel: Arc<Channel>, workers: Vec<Worker>, backend: ChannelStorageBackend) -> Drain {
        let (cancel, mut cancelled) = watch::channel(false);
        let log_name = channel_log_name(&channel.config.namespace, &channel.config.name);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            let done = loop {
                if drained(&workers).await {
                    break true;
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = cancelled.changed() => break false,
                }
            };
            for w in workers {
                w.stop().await;
            }
            if done {
                tracing::info!(log = %log_name, "removed channel drained; deleting its storage");
                if let Err(e) = backend.remove(&log_name).await {
                    tracing::error!(log = %log_name, error = %e, "could not delete the drained channel's log");
                }
            }
            done
        });
        Drain { channel, cancel, task }
    }

    /// Stops draining; returns the channel unless its log was already deleted.
    pub async fn cancel(self) -> Option<Arc<Channel>> {
        let _ = self.cancel.send(true);
        match self.task.await {
            Ok(false) => Some(self.channel),
            _ => None,
        }
    }
}

impl Eventing {
    fn channel_backend(&self, storage: ChannelStorage) -> Arc<dyn LogBackend> {
        match storage {
            ChannelStorage::Memory => self.memory.clone(),
            // NATS and Kafka channels are opened on their engine; this is only the log fallback.
            ChannelStorage::Log | ChannelStorage::Nats | ChannelStorage::Kafka => self.backend.clone(),
        }
    }

    /// The engine a NATS or Kafka channel lives on.
    fn channel_engine(&self, storage: ChannelStorage) -> Option<&Arc<dyn StreamBackend>> {
        match storage {
            ChannelStorage::Nats => self.streams.as_ref(),
            ChannelStorage::Kafka => self.kafka.as_ref(),
            ChannelStorage::Log | ChannelStorage::Memory => None,
        }
    }

    /// The running channel for the ingress path.
    pub fn channel(&self, namespace: &str, name: &str) -> Option<Arc<Channel>> {
        self.channels.read().expect("channels lock").get(&(namespace.to_string(), name.to_string())).cloned()
    }

    pub(crate) async fn reconcile_messaging(
        &self,
        desired: &Desired,
        x: &Expanded,
        names: &Addressables,
        out: &mut Vec<ResourceStatus>,
    ) {
        let mut subs = self.subscriptions.lock().await;
        let want: HashSet<Key> = x.channels.iter().map(|c| (c.namespace.clone(), c.name.clone())).collect();
        self.revive_draining(&want).await;
        self.remove_gone_channels(&want, x, &mut subs).await;
        let mut channel_status = self.open_channels(x).await;
        let sub_status = self.place_subscriptions(x, names, &mut subs, &mut channel_status).await;
        self.report_messaging(desired, x, &channel_status, &sub_status, out);
    }

    /// Draining channels that are wanted again come back with their log.
    async fn revive_draining(&self, want: &HashSet<Key>) {
        let mut draining = self.draining.lock().await;
        draining.retain(|_, d| !d.task.is_finished());
        let back: Vec<Key> = draining.keys().filter(|k| want.contains(*k)).cloned().collect();
        for k in back {
            let d = draining.remove(&k).expect("draining key");
            if let Some(ch) = d.cancel().await {
                self.channels.write().expect("channels lock").insert(k, ch);
            }
        }
    }

    /// Channels that are gone: their subscriptions stop and their logs are
    /// deleted; a flow's channel with undelivered events (a step was removed) drains first.
    async fn remove_gone_channels(&self, want: &HashSet<Key>, x: &Expanded, subs: &mut Workers) {
        let mut draining = self.draining.lock().await;
        let gone: Vec<Arc<Channel>> = self
            .channels
            .read()
            .expect("channels lock")
            .iter()
            .filter(|(k, _)| !want.contains(*k))
            .map(|(_, c)| c.clone())
            .collect();
        for ch in gone {
            let (ns, name) = (ch.config.namespace.clone(), ch.config.name.clone());
            let workers: Vec<Worker> = subs.take_source(&ns, &name);
            self.channels.write().expect("channels lock").remove(&(ns.clone(), name.clone()));
            let backend = match (&ch.store, self.channel_engine(ch.config.storage)) {
                (ChannelStore::Stream(_), Some(engine)) => ChannelStorageBackend::Stream(engine.clone()),
                _ => ChannelStorageBackend::Log(self.channel_backend(ch.config.storage)),
            };
            let flow_lives = x.flows.iter().any(|f| f.namespace == ns && name.starts_with(&format!("{}-kn-", f.name)));
            if flow_lives && !workers.is_empty() && !drained(&workers).await {
                tracing::info!(channel = %format!("{ns}/{name}"), "channel removed from its flow; draining its undelivered events");
                draining.insert((ns, name), Drain::start(ch, workers, backend));
                continue;
            }
            for w in workers {
                w.stop().await;
            }
            if let Err(e) = backend.remove(&channel_log_name(&ns, &name)).await {
                tracing::error!(channel = %format!("{ns}/{name}"), error = %e, "could not delete the channel's storage");
            }
        }
    }

    /// Opens (or keeps) every wanted channel's storage; each channel's status.
    async fn open_channels(&self, x: &Expanded) -> HashMap<Key, ResourceStatus> {
        let mut channel_status: HashMap<Key, ResourceStatus> = HashMap::new();
        for c in &x.channels {
            let key = (c.namespace.clone(), c.name.clone());
            let address = self.channel_address(&c.namespace, &c.name);
            let existing = self.channel(&c.namespace, &c.name);
            let mut conds = vec![];
            let label = format!("channel/{}/{}", c.namespace, c.name);
            let store: Result<ChannelStore, String> = match (&existing, c.storage) {
                (Some(ch), storage) if ch.config.storage == storage => Ok(ch.store.clone()),
                (_, engine @ (ChannelStorage::Nats | ChannelStorage::Kafka)) => match self.channel_engine(engine) {
                    Some(streams) => streams
                        .open_with(&channel_log_name(&c.namespace, &c.name), &channel_settings(c))
                        .await
                        .map(ChannelStore::Stream)
                        .map_err(|e| e.to_string()),
                    None => Err(format!("this server has no backend for {engine:?} channels")),
                },
                (_, storage) => self
                    .channel_backend(storage)
                    .open(&channel_log_name(&c.namespace, &c.name))
                    .await
                    .map(|log| ChannelStore::Log(Feed::new(log, label.clone())))
                    .map_err(|e| e.to_string()),
            };
            match store {
                Ok(store) => {
                    if existing.as_ref().is_none_or(|ch| ch.config != *c) {
                        let ch = Arc::new(Channel {
                            config: c.clone(),
                            store,
                            address: address.clone(),
                            events_in: metrics::counter!("spate_events_in_total", "channel" => label),
                            tap: self.tap.clone(),
                        });
                        self.channels.write().expect("channels lock").insert(key.clone(), ch);
                    }
                    conds.push(Condition::ok("ChannelServiceReady"));
                    conds.push(Condition::ok("Addressable"));
                }
                Err(e) => conds.push(Condition::fail("ChannelServiceReady", "StorageUnavailable", e)),
            }
            let mut st = ResourceStatus::new(Kind::Channel, &c.namespace, &c.name, conds);
            st.address = Some(address);
            channel_status.insert(key, st);
        }
        channel_status
    }

    /// Places every wanted subscription on its channel; each one's status
    /// (also added to its channel's children).
    async fn place_subscriptions(
        &self,
        x: &Expanded,
        names: &Addressables,
        subs: &mut Workers,
        channel_status: &mut HashMap<Key, ResourceStatus>,
    ) -> HashMap<Key, ResourceStatus> {
        let want_subs: HashSet<Key> = x.subscriptions.iter().map(|s| (s.namespace.clone(), s.name.clone())).collect();
        subs.remove_except(&want_subs).await;
        let mut sub_status: HashMap<Key, ResourceStatus> = HashMap::new();
        for s in &x.subscriptions {
            let key = (s.namespace.clone(), s.name.clone());
            let channel = self.channel(&s.namespace, &s.channel);
            let (plan, st) = self.plan_subscription(s, channel.as_ref().map(|c| &c.config), names);
            match (plan, channel) {
                (Some(plan), Some(ch)) => {
                    let source = match &ch.store {
                        ChannelStore::Log(feed) => Source::Log(feed),
                        ChannelStore::Stream(stream) => Source::Stream(stream),
                    };
                    subs.place(key.clone(), plan, source, None, &self.dispatcher, self.config.ack_wait).await;
                }
                _ => subs.stop(&key).await,
            }
            if let Some(cs) = channel_status.get_mut(&(s.namespace.clone(), s.channel.clone())) {
                let mut child = ResourceStatus::new(Kind::Subscription, &s.namespace, &s.name, vec![]);
                child.conditions = st.conditions.clone();
                cs.children.push(child);
            }
            sub_status.insert(key, st);
        }
        sub_status
    }

    /// Statuses of what the user applied, then of the flows.
    fn report_messaging(
        &self,
        desired: &Desired,
        x: &Expanded,
        channel_status: &HashMap<Key, ResourceStatus>,
        sub_status: &HashMap<Key, ResourceStatus>,
        out: &mut Vec<ResourceStatus>,
    ) {
        for c in &desired.channels {
            if let Some(mut st) = channel_status.get(&(c.namespace.clone(), c.name.clone())).cloned() {
                // Kind::Channel covers both; the binary reports the applied kind.
                st.kind = Kind::Channel;
                out.push(st);
            }
        }
        for s in &desired.subscriptions {
            if let Some(st) = sub_status.get(&(s.namespace.clone(), s.name.clone())) {
                out.push(st.clone());
            }
        }
        for f in &x.flows {
            let mut children = vec![];
            for c in &f.channels {
                if let Some(st) = channel_status.get(&(f.namespace.clone(), c.clone())) {
                    children.push(st.clone());
                }
            }
            for s in &f.subscriptions {
                if let Some(st) = sub_status.get(&(f.namespace.clone(), s.clone())) {
                    children.push(st.clone());
                }
            }
            let not_ready = children.iter().find(|c| !c.ready()).map(|c| {
                Condition::fail(
                    if c.kind == Kind::Subscription { "SubscriptionsReady" } else { "ChannelsReady" },
                    c.conditions[0].reason.as_str(),
                    format!("{} {}: {}", c.kind.name(), c.name, c.conditions[0].message),
                )
            });
            let conds = match not_ready {
                Some(c) => vec![c],
                None => vec![Condition::ok("ChannelsReady"), Condition::ok("SubscriptionsReady")],
            };
            let mut st = ResourceStatus::new(f.kind, &f.namespace, &f.name, conds);
            st.address = f.channels.first().map(|c| self.channel_address(&f.namespace, c));
            st.children = children;
            out.push(st);
        }
    }

    fn plan_subscription(
        &self,
        s: &SubscriptionConfig,
        channel: Option<&ChannelConfig>,
        names: &Addressables,
    ) -> (Option<WorkerPlan>, ResourceStatus) {
        let mut conds = vec![];
        if channel.is_some() {
            conds.push(Condition::ok("ChannelReady"));
        } else {
            conds.push(Condition::fail(
                "ChannelReady",
                "ChannelNotFound",
                format!("{} {}/{} does not exist", s.channel_kind, s.namespace, s.channel),
            ));
        }
        let subscriber = s.subscriber.as_ref().map(|d| self.resolve(d, names));
        let reply = s.reply.as_ref().map(|d| self.resolve(d, names));
        // A Subscription's delivery replaces its Channel's; the dead-letter sink falls back to the Channel's.
        let chan_delivery = channel.and_then(|c| c.delivery.clone());
        let spec = s.delivery.clone().or(chan_delivery.clone()).unwrap_or_else(|| self.config.default_delivery.clone());
        let dls_dest = s
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.clone())
            .or_else(|| chan_delivery.and_then(|d| d.dead_letter_sink));
        let dls = dls_dest.as_ref().map(|d| self.resolve(d, names));
        let mut resolve_errs = vec![];
        for (what, r) in [("subscriber", &subscriber), ("reply", &reply), ("deadLetterSink", &dls)] {
            if let Some(Err(e)) = r {
                resolve_errs.push(format!("{what}: {e}"));
            }
        }
        if resolve_errs.is_empty() {
            conds.push(Condition::ok("ReferencesResolved"));
        } else {
            conds.push(Condition::fail("ReferencesResolved", "Unresolved", resolve_errs.join("; ")));
        }
        let mut st = ResourceStatus::new(Kind::Subscription, &s.namespace, &s.name, conds);
        st.subscriber_uri = subscriber.as_ref().and_then(|r| r.as_ref().ok().cloned());
        st.reply_uri = reply.as_ref().and_then(|r| r.as_ref().ok().cloned());
        st.dead_letter_sink_uri = dls.as_ref().and_then(|r| r.as_ref().ok().cloned());
        if !st.ready() {
            return (None, st);
        }
        // No subscriber: events go straight to the reply destination.
        let (subscriber_url, reply) = match (st.subscriber_uri.clone(), st.reply_uri.clone()) {
            (Some(s), Some(r)) => (s, ReplyPlan::Url(r.into())),
            (Some(s), None) => (s, ReplyPlan::Discard),
            (None, Some(r)) => (r, ReplyPlan::Discard),
            (None, None) => return (None, st),
        };
        let plan = WorkerPlan {
            kind: "subscription",
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            source: s.channel.clone(),
            filter: Filter::match_all(),
            reply,
            subscriber_url: subscriber_url.into(),
            dead_letter_url: st.dead_letter_sink_uri.clone().map(Into::into),
            policy: spec.retry_policy(self.config.default_delay()),
            format: spec.format.unwrap_or_default(),
            max_in_flight: self.config.max_in_flight,
        };
        (Some(plan), st)
    }
}

/// A channel or subscription a Sequence or Parallel owns, as `get` lists it
/// (read-only, with its owner).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowChild {
    /// `InMemoryChannel`, `NatsJetStreamChannel`, `KafkaChannel` or `Subscription`.
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `Sequence`, `Parallel` or (a channel-based broker's backing channel) `Broker`, and its name.
    pub owner_kind: Kind,
    pub owner: String,
    /// A subscription's channel (kind, name).
    pub channel: Option<(String, String)>,
}

/// Every channel and subscription the flows of `desired` expand into.
pub fn flow_children(desired: &Desired) -> Vec<FlowChild> {
    let x = expand(desired);
    let mut out = vec![];
    for f in &x.flows {
        for c in x.channels.iter().filter(|c| c.namespace == f.namespace && f.channels.contains(&c.name)) {
            let kind = match c.storage {
                ChannelStorage::Nats => Kind::NatsJetStreamChannel,
                ChannelStorage::Kafka => Kind::KafkaChannel,
                ChannelStorage::Log | ChannelStorage::Memory => Kind::InMemoryChannel,
            };
            out.push(FlowChild {
                kind,
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                owner_kind: f.kind,
                owner: f.name.clone(),
                channel: None,
            });
        }
        for s in x.subscriptions.iter().filter(|s| s.namespace == f.namespace && f.subscriptions.contains(&s.name)) {
            out.push(FlowChild {
                kind: Kind::Subscription,
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                owner_kind: f.kind,
                owner: f.name.clone(),
                channel: Some((s.channel_kind.clone(), s.channel.clone())),
            });
        }
    }
    out
}
