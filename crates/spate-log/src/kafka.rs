//! Kafka behind [`MessageStream`] (librdkafka through rdkafka), for the `Kafka`
//! broker class and `KafkaChannel`, laid out as Knative's Kafka broker does:
//! one topic per Broker or Channel (named by the caller, created if absent
//! unless it is external), events stored as binary-mode records (`ce_`
//! headers, the data as the value, keyed by `partitionkey`), one consumer
//! group per Trigger (`knative-trigger-<namespace>-<name>`) whose members
//! split the partitions through Kafka's group protocol.
//!
//! Invariants:
//! - a publish resolves only once every record was acknowledged by Kafka with
//!   `acks=all` (idempotent producer: librdkafka's retries are stored once);
//! - an offset is committed only once every record below it in its partition
//!   reached a final outcome ([`AckTracker`] per partition), so a crash or a
//!   rebalance redelivers at most the records in flight plus those acknowledged
//!   since the last commit (commits run every [`COMMIT_EVERY`], and at once
//!   for revoked partitions);
//! - a consumer holds at most `max_in_flight` records not yet acknowledged;
//!   it stops taking records from librdkafka at the bound;
//! - a new consumer group starts at the partitions' ends as they were when it
//!   was created (the positions are committed before `consumer` returns), so a
//!   Trigger sees every event accepted after it was applied, and no earlier one.
//!
//! Kafka has no per-message redelivery: a nack holds the record for its delay
//! and hands it out again from this instance; "in progress" is a no-op (a
//! record stays with its consumer until acknowledged or the group rebalances).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer as RdConsumer};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use spate_core::acks::{AckState, AckTracker};
use spate_core::{kafka_binding, storage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::stream::{Acker, ConsumerOptions, Message, MessageStream, StreamBackend, StreamConsumer, StreamSettings};
use crate::{BoxFuture, LogError};

/// How often a consumer commits the positions its acknowledgements advanced.
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(10);

/// Knative's Kafka broker ConfigMap keys (the eventing room reads them into `StreamSettings`).
pub mod keys {
    pub const BOOTSTRAP_SERVERS: &str = "bootstrap.servers";
    pub const PARTITIONS: &str = "default.topic.partitions";
    pub const REPLICATION_FACTOR: &str = "default.topic.replication.factor";
    pub const RETENTION_MS: &str = "default.topic.config.retention.ms";
}

/// Knative's topic of a `Kafka`-class Broker: `knative-broker-<namespace>-<name>`.
/// (This module owns Kafka topic names; the eventing room asks for them.)
pub fn broker_topic(namespace: &str, name: &str) -> String {
    format!("knative-broker-{namespace}-{name}")
}

/// Knative's topic of a KafkaChannel: `knative-messaging-kafka.<namespace>.<name>`.
pub fn channel_topic(namespace: &str, name: &str) -> String {
    format!("knative-messaging-kafka.{namespace}.{name}")
}

/// Partitions of a topic Spate creates when nothing says otherwise (Knative's default).
pub const DEFAULT_PARTITIONS: i32 = 10;

/// Settings of the Kafka backend (`--kafka-bootstrap-servers`).
#[derive(Debug, Clone, Default)]
pub struct KafkaConfig {
    /// Brokers used when a Broker's or Channel's settings name none.
    pub bootstrap_servers: Option<String>,
    /// Put before the names of the topics Spate creates and of its consumer
    /// groups (`<prefix>.`), so that several Spate clusters (or test runs) share
    /// one Kafka; `None` (the default cluster) keeps Knative's names exactly.
    pub prefix: Option<String>,
    /// This instance's stable name (Kafka static membership, `group.instance.id`):
    /// a restarted instance takes its own place in each group back at once
    /// instead of waiting for the old member to expire.
    pub instance: Option<String>,
    /// librdkafka's `debug` contexts for the consumers of Kafka brokers and
    /// channels (`SPATE_KAFKA_DEBUG`, e.g. `cgrp,fetch`); logged under the target `librdkafka`.
    pub debug: Option<String>,
}

impl KafkaConfig {
    fn prefixed(&self, name: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{name}"),
            None => name.to_string(),
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("Kafka {what}: {e}"))
}

/// The Kafka group of a worker's consumer: `trigger/ns/name` → `knative-trigger-ns-name`.
pub fn group_name(consumer: &str) -> String {
    format!("knative-{}", consumer.replace('/', "-"))
}

/// One producer per bootstrap list; topics' settings by stream name.
pub struct KafkaBackend {
    config: KafkaConfig,
    producers: Mutex<HashMap<String, FutureProducer<Logged>>>,
    opened: Mutex<HashMap<String, StreamSettings>>,
}

impl KafkaBackend {
    pub fn new(config: KafkaConfig) -> Self {
        KafkaBackend { config, producers: Mutex::default(), opened: Mutex::default() }
    }

    fn bootstrap(&self, settings: &StreamSettings) -> Result<String, LogError> {
        settings
            .bootstrap_servers
            .clone()
            .or_else(|| self.config.bootstrap_servers.clone())
            .filter(|b| !b.trim().is_empty())
            .ok_or_else(|| {
                LogError::Unavailable(
                    "no Kafka bootstrap servers: set bootstrap.servers in the ConfigMap named by spec.config, or start spate with --kafka-bootstrap-servers".into(),
                )
            })
    }

    fn producer(&self, bootstrap: &str) -> Result<FutureProducer<Logged>, LogError> {
        let mut g = self.producers.lock().expect("producers lock");
        if let Some(p) = g.get(bootstrap) {
            return Ok(p.clone());
        }
        let p: FutureProducer<Logged> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .set("client.id", "spate")
            .create_with_context(Logged)
            .map_err(|e| unavailable("producer", e))?;
        g.insert(bootstrap.to_string(), p.clone());
        Ok(p)
    }
}

fn admin(bootstrap: &str) -> Result<AdminClient<Logged>, LogError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create_with_context(Logged)
        .map_err(|e| unavailable("admin client", e))
}

/// Writes one of librdkafka's own log lines (a broker it cannot reach, a group
/// error) into Spate's log under the target `librdkafka`, at its level: without
/// this they would go nowhere.
pub fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        L::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// librdkafka's error callback, into Spate's log (see [`forward_log`]).
pub fn forward_error(error: &KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", %error, "{reason}");
}

/// The context of a Kafka client that needs nothing but its log forwarded
/// (the broker backend's clients; the KafkaSink's admin client and producer).
pub struct Logged;

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
    }
}

impl ConsumerContext for Logged {}

/// Partitions or replicas a ConfigMap may ask for: beyond this a typo would make the
/// Kafka server allocate without bound.
pub const MAX_TOPIC_SETTING: i32 = 10_000;

/// A topic's partitions or replicas as a ConfigMap gives them (`key: text`): a
/// whole number from 1 to [`MAX_TOPIC_SETTING`], or why not, naming the key and value.
pub fn topic_number(key: &str, text: &str) -> Result<i32, String> {
    match text.trim().parse::<i32>() {
        Ok(n) if (1..=MAX_TOPIC_SETTING).contains(&n) => Ok(n),
        _ => Err(format!("{key}: '{text}' is not a whole number from 1 to {MAX_TOPIC_SETTING}")),
    }
}

/// A topic's `retention.ms` as a ConfigMap gives it: milliseconds, or -1 (kept for ever).
pub fn retention_ms(key: &str, text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(format!("{key}: '{text}' is not a number of milliseconds (or -1)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_settings_are_bounded_and_named_when_wrong() {
        for bad in ["0", "-3", "99999999", "ten", ""] {
            let e = topic_number(keys::PARTITIONS, bad).unwrap_err();
            assert!(e.contains(keys::PARTITIONS) && e.contains(&format!("'{bad}'")), "{e}");
        }
        assert_eq!(topic_number(keys::PARTITIONS, " 12 ").unwrap(), 12);
        assert_eq!(retention_ms(keys::RETENTION_MS, "-1").unwrap(), -1);
        assert!(retention_ms(keys::RETENTION_MS, "a week").unwrap_err().contains("'a week'"));
    }
}

/// Creates `topic` unless it exists.
async fn ensure_topic(bootstrap: &str, topic: &str, settings: &StreamSettings) -> Result<(), LogError> {
    let partitions = settings.partitions.unwrap_or(DEFAULT_PARTITIONS);
    let replication = settings.replication_factor.unwrap_or(1);
    let retention = settings.retention_ms.map(|r| r.to_string());
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    if let Some(r) = &retention {
        new = new.set("retention.ms", r);
    }
    let admin = admin(bootstrap)?;
    // Both bounds: a Kafka that does not answer fails the reconcile in 10 s, not
    // librdkafka's default minute (an `apply` waits for it).
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
    let results = admin.create_topics([&new], &opts).await.map_err(|e| unavailable("create topic", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(unavailable(&format!("create topic {t}"), code)),
        }
    }
    Ok(())
}

impl StreamBackend for Arc<KafkaBackend> {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn MessageStream>, LogError>> {
        let settings = StreamSettings { topic: Some(name.to_string()), ..StreamSettings::default() };
        let name = name.to_string();
        Box::pin(async move { self.open_with(&name, &settings).await })
    }

    fn open_with<'a>(
        &'a self,
        name: &str,
        settings: &StreamSettings,
    ) -> BoxFuture<'a, Result<Arc<dyn MessageStream>, LogError>> {
        let (name, settings) = (name.to_string(), settings.clone());
        Box::pin(async move {
            let bootstrap = self.bootstrap(&settings)?;
            let topic = settings.topic.clone().unwrap_or_else(|| name.clone());
            let external = settings.external;
            let topic = if external { topic } else { self.config.prefixed(&topic) };
            if !external {
                ensure_topic(&bootstrap, &topic, &settings).await?;
            }
            let producer = self.producer(&bootstrap)?;
            self.opened.lock().expect("opened lock").insert(name, settings);
            let groups = self.config.prefix.clone();
            Ok(Arc::new(KafkaStream {
                bootstrap,
                topic,
                producer,
                instance: self.config.instance.clone(),
                debug: self.config.debug.clone(),
                groups,
                active: Mutex::default(),
                backlog: Mutex::default(),
            }) as Arc<dyn MessageStream>)
        })
    }

    /// Keeps the topic: its records stay in Kafka after the Broker or Channel is
    /// deleted (its consumer groups are deleted with their Triggers). Deleting it
    /// would be Knative's behaviour, but librdkafka 2.12 crashes (SIGSEGV in its
    /// metadata cache) when a client that used a topic refreshes metadata after
    /// tansu deleted it; a process crash is worse than a topic left behind.
    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let settings = self.opened.lock().expect("opened lock").remove(name);
        if let Some(topic) = settings.as_ref().and_then(|s| s.topic.as_ref()) {
            tracing::info!(topic = %self.config.prefixed(topic), "the Kafka topic is kept (delete it with Kafka's tools)");
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

struct KafkaStream {
    bootstrap: String,
    topic: String,
    producer: FutureProducer<Logged>,
    /// The prefix of its consumer groups' names, if any.
    groups: Option<String>,
    /// `KafkaConfig::instance`.
    instance: Option<String>,
    /// `KafkaConfig::debug`.
    debug: Option<String>,
    /// This instance's consumers by group: what they hold unacknowledged.
    active: Mutex<HashMap<String, std::sync::Weak<Mutex<State>>>>,
    /// Clients that read a group's committed offsets (for backlogs), by group.
    backlog: Mutex<HashMap<String, Arc<BaseConsumer<Logged>>>>,
}

impl KafkaStream {
    fn group(&self, consumer: &str) -> String {
        match &self.groups {
            Some(p) => format!("{p}.{}", group_name(consumer)),
            None => group_name(consumer),
        }
    }

    /// A consumer of `group`; `member`: one that joins it (with this instance's static id).
    fn consumer_config(&self, group: &str, member: bool) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
            // A worker holding its in-flight bound stops polling; it stays in the group.
            .set("max.poll.interval.ms", "86400000")
            .set("topic.metadata.refresh.interval.ms", "3000")
            // An idle fetch returns after 20 ms, not librdkafka's 500: a reply chain of
            // many hops (each a produce and a fetch) must not wait half a second per hop.
            .set("fetch.wait.max.ms", "20")
            .set("client.id", "spate");
        if let Some(d) = &self.debug {
            c.set("debug", d);
        }
        if let Some(i) = self.instance.as_ref().filter(|_| member) {
            c.set("group.instance.id", format!("{i}.{group}"));
        }
        c
    }

    fn offsets_client(&self, group: &str) -> Result<Arc<BaseConsumer<Logged>>, LogError> {
        let mut g = self.backlog.lock().expect("backlog lock");
        if let Some(c) = g.get(group) {
            return Ok(c.clone());
        }
        let c: BaseConsumer<Logged> =
            self.consumer_config(group, false).create_with_context(Logged).map_err(|e| unavailable("consumer", e))?;
        let c = Arc::new(c);
        g.insert(group.to_string(), c.clone());
        Ok(c)
    }
}

/// A partition, its group's committed offset (`None`: none yet), and its low and high watermarks.
type Position = (i32, Option<i64>, i64, i64);

/// Every partition's [`Position`]. Blocking.
fn positions(c: &BaseConsumer<Logged>, topic: &str) -> Result<Vec<Position>, LogError> {
    let md = c.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| unavailable("metadata", e))?;
    let t = md.topics().iter().find(|t| t.name() == topic).ok_or_else(|| unavailable("topic", "not found"))?;
    if t.partitions().is_empty() {
        return Err(unavailable(&format!("topic {topic}"), "has no partitions (does it exist?)"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c.committed_offsets(tpl, TIMEOUT).map_err(|e| unavailable("committed offsets", e))?;
    let mut out = vec![];
    for e in committed.elements() {
        let (low, high) =
            c.fetch_watermarks(topic, e.partition(), TIMEOUT).map_err(|e| unavailable("watermarks", e))?;
        let at = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
        out.push((e.partition(), at, low, high));
    }
    Ok(out)
}

/// Commits the partitions' ends for a group that has no position there yet.
fn start_at_end(c: &BaseConsumer<Logged>, topic: &str) -> Result<(), LogError> {
    let mut tpl = TopicPartitionList::new();
    for (p, at, _, high) in positions(c, topic)? {
        if at.is_none() {
            tpl.add_partition_offset(topic, p, Offset::Offset(high)).map_err(|e| unavailable("offsets", e))?;
        }
    }
    if tpl.count() > 0 {
        c.commit(&tpl, CommitMode::Sync).map_err(|e| unavailable("commit", e))?;
    }
    Ok(())
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, LogError>> {
    let task = tokio::task::spawn_blocking(f);
    async move { task.await.unwrap_or_else(|e| Err(unavailable("task", e))) }
}

impl MessageStream for KafkaStream {
    fn publish(&self, messages: Vec<(Bytes, String)>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let mut records = Vec::with_capacity(messages.len());
            for (payload, _) in &messages {
                let ev = storage::decode(payload).map_err(|e| unavailable("encode", e))?;
                let (headers, value) = kafka_binding::encode_binary(&ev);
                let key = ev.extension("partitionkey").map(|v| v.to_canonical().into_owned());
                records.push((headers, value, key));
            }
            let sends = records.iter().map(|(headers, value, key)| {
                let h = headers
                    .iter()
                    .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_slice()) }));
                let mut r = FutureRecord::to(&self.topic).payload(value.as_ref()).headers(h);
                if let Some(k) = key {
                    r = r.key(k.as_str());
                }
                self.producer.send(r, TIMEOUT)
            });
            for r in futures_util::future::join_all(sends).await {
                r.map_err(|(e, _)| unavailable("produce", e))?;
            }
            Ok(())
        })
    }

    fn consumer(
        &self,
        name: &str,
        options: ConsumerOptions,
        create: bool,
    ) -> BoxFuture<'_, Result<Box<dyn StreamConsumer>, LogError>> {
        let group = self.group(name);
        Box::pin(async move {
            if create {
                let c = self.offsets_client(&group)?;
                let topic = self.topic.clone();
                blocking(move || start_at_end(&c, &topic)).await?;
            }
            let state = Arc::new(Mutex::new(State::default()));
            self.active.lock().expect("active lock").insert(group.clone(), Arc::downgrade(&state));
            let ctx = Ctx { topic: self.topic.clone(), state: state.clone() };
            let consumer: RdConsumer<Ctx> =
                self.consumer_config(&group, true).create_with_context(ctx).map_err(|e| unavailable("consumer", e))?;
            consumer.subscribe(&[&self.topic]).map_err(|e| unavailable("subscribe", e))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
            let pump = Pump { consumer, topic: self.topic.clone(), state, tx, permits };
            tokio::spawn(pump.run());
            Ok(Box::new(KafkaConsumer { rx }) as Box<dyn StreamConsumer>)
        })
    }

    fn backlog(&self, name: &str) -> BoxFuture<'_, Result<u64, LogError>> {
        let group = self.group(name);
        Box::pin(async move {
            let c = self.offsets_client(&group)?;
            let topic = self.topic.clone();
            let ps = blocking(move || positions(&c, &topic)).await?;
            let stored: u64 = ps.iter().map(|(_, at, low, high)| (high - at.unwrap_or(*low)).max(0) as u64).sum();
            // What this instance holds is backlog too, whatever the watermarks say
            // (tansu under-reports the end of a partition after multi-record batches).
            let held = self.active.lock().expect("active lock").get(&group).and_then(std::sync::Weak::upgrade);
            let held =
                held.map_or(0, |st| st.lock().expect("state lock").parts.values().map(|t| t.in_flight() as u64).sum());
            Ok(stored.max(held))
        })
    }

    /// Deletes the trigger's group. Its members are static (`group.instance.id`), and
    /// librdkafka does not send a static member's LeaveGroup when it closes, so the
    /// group is not empty until the coordinator expires the member after the session
    /// timeout: the deletion is retried in the background until then (twice the
    /// session timeout at most), so a deleted trigger leaves no group behind.
    fn remove_consumer(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let group = self.group(name);
        Box::pin(async move {
            self.backlog.lock().expect("backlog lock").remove(&group);
            let admin = admin(&self.bootstrap)?;
            match delete_group(&admin, &group).await? {
                true => Ok(()),
                false => {
                    tracing::info!(%group, "the group still has its closed static member; deleting it once the member expires");
                    tokio::spawn(async move {
                        for _ in 0..SESSION_TIMEOUT_MS / 1000 {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            match delete_group(&admin, &group).await {
                                Ok(true) => return tracing::info!(%group, "consumer group deleted"),
                                Ok(false) => {}
                                Err(e) => {
                                    return tracing::warn!(%group, error = %e, "could not delete the consumer group");
                                }
                            }
                        }
                        tracing::warn!(%group, "the consumer group kept its closed member past twice the session timeout; it was not deleted");
                    });
                    Ok(())
                }
            }
        })
    }
}

/// `session.timeout.ms` of trigger consumers: how long a closed static member stays in its group.
const SESSION_TIMEOUT_MS: u64 = 10_000;

/// `true` once the group is gone (or never was); `false` while a member remains.
async fn delete_group(admin: &AdminClient<Logged>, group: &str) -> Result<bool, LogError> {
    let r = admin.delete_groups(&[group], &AdminOptions::new()).await.map_err(|e| unavailable("delete", e))?;
    for r in r {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((_, RDKafkaErrorCode::NonEmptyGroup)) => return Ok(false),
            Err((g, code)) => return Err(unavailable(&format!("delete group {g}"), code)),
        }
    }
    Ok(true)
}

/// What a consumer tracks per assigned partition.
#[derive(Default)]
struct State {
    parts: HashMap<i32, AckTracker>,
    /// The last position committed per partition.
    committed: HashMap<i32, u64>,
    /// Rebalances seen (revokes and assigns): a record received before one is not taken after it.
    rebalances: u64,
}

impl State {
    /// Positions that moved since the last commit.
    fn advanced(&mut self, topic: &str) -> Option<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (p, t) in &self.parts {
            let at = t.committed();
            if self.committed.get(p) != Some(&at) {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(at as i64));
                self.committed.insert(*p, at);
            }
        }
        (tpl.count() > 0).then_some(tpl)
    }
}

struct Ctx {
    topic: String,
    state: Arc<Mutex<State>>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        forward_log(level, facility, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(&error, reason);
    }
}

impl ConsumerContext for Ctx {
    /// Revoked partitions: commit how far they got, then forget them (their
    /// records in flight will be delivered again by the new owner). The commit is
    /// asynchronous: this runs inside the pump's poll, on a runtime worker, which a
    /// synchronous commit would block for the coordinator's round trip (or its
    /// timeout). Ordering is kept by librdkafka: the unassign that follows completes,
    /// and the member rejoins, only once no commit is outstanding.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut st = self.state.lock().expect("state lock");
        st.rebalances += 1;
        if let Rebalance::Revoke(tpl) = rebalance {
            if let Some(moved) = st.advanced(&self.topic)
                && let Err(e) = consumer.commit(&moved, CommitMode::Async)
            {
                tracing::warn!(topic = %self.topic, error = %e, "committing revoked partitions failed; their records come again");
            }
            for e in tpl.elements() {
                st.parts.remove(&e.partition());
                st.committed.remove(&e.partition());
            }
            let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(topic = %self.topic, partitions = ?parts, "partitions revoked (the group is rebalancing)");
        }
    }

    /// An asynchronous commit's answer. A failed one is forgotten, so the next
    /// tick commits those positions again: before, a failure went unseen and the
    /// position counted as committed, so a crash redelivered everything since the
    /// last commit the coordinator really took (827 records in the fault suite).
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        let Err(e) = result else { return };
        let mut st = self.state.lock().expect("state lock");
        for el in offsets.elements() {
            if let Offset::Offset(at) = el.offset()
                && st.committed.get(&el.partition()) == Some(&(at as u64))
            {
                st.committed.remove(&el.partition());
            }
        }
        drop(st);
        if let Some(suppressed) = COMMIT_ERRORS.allow() {
            tracing::warn!(topic = %self.topic, error = %e, suppressed, "Kafka did not take an offset commit; committing again");
        }
    }
}

static COMMIT_ERRORS: crate::Throttle = crate::Throttle::new(Duration::from_secs(10));

/// How long every in-flight slot may stay busy before the pump pauses its
/// partitions and polls librdkafka anyway. librdkafka serves group events (a
/// rebalance's revoke and assign) only while the consumer is polled, and a Kafka
/// group waits for every member to rejoin: a member that stops polling while its
/// deliveries hang would stop the trigger on every instance for as long.
const STALLED_AFTER: Duration = Duration::from_millis(500);

/// At most this many records wait for a slot while paused (a pause cuts the flow
/// to what was already fetched; should pausing fail, polling stops here instead
/// of holding every record librdkafka fetches).
const MAX_WAITING: usize = 1024;

/// Takes records from librdkafka while fewer than `max_in_flight` are
/// unacknowledged, and commits what acknowledgements advanced. When every slot
/// stays busy for [`STALLED_AFTER`] it pauses its partitions (librdkafka drops
/// what it fetched ahead and fetches again from the last record taken on resume)
/// and keeps polling, so that the group's events are served; it resumes when a
/// slot frees.
struct Pump {
    consumer: RdConsumer<Ctx>,
    topic: String,
    state: Arc<Mutex<State>>,
    tx: mpsc::UnboundedSender<Message>,
    permits: Arc<Semaphore>,
}

/// A record as librdkafka handed it out, owned (it may wait for a slot).
struct Record {
    partition: i32,
    offset: u64,
    headers: kafka_binding::Headers,
    value: Bytes,
    /// For a record that waits for a slot: the rebalances seen when it arrived.
    /// None: taken as it arrives (no rebalance can come between).
    waited_since: Option<u64>,
}

impl Pump {
    async fn run(self) {
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Records that arrived while paused (fetched before the pause took effect), in order.
        let mut waiting: VecDeque<Record> = VecDeque::new();
        let mut paused = false;
        // Moves to STALLED_AFTER past every slot taken: it fires only when none was for that long.
        let stall = tokio::time::sleep(STALLED_AFTER);
        tokio::pin!(stall);
        loop {
            tokio::select! {
                biased;
                _ = self.tx.closed() => break,
                _ = tick.tick() => self.commit(),
                permit = self.permits.clone().acquire_owned() => {
                    let Ok(permit) = permit else { break };
                    stall.as_mut().reset(tokio::time::Instant::now() + STALLED_AFTER);
                    if let Some(r) = waiting.pop_front() {
                        self.take(r, permit);
                        continue;
                    }
                    if std::mem::take(&mut paused) {
                        self.pause(false);
                    }
                    tokio::select! {
                        m = self.consumer.recv() => match m {
                            Ok(m) => self.take(self.record(&m), permit),
                            Err(e) => self.failed(e).await,
                        },
                        _ = tick.tick() => self.commit(),
                        _ = self.tx.closed() => break,
                    }
                }
                () = &mut stall, if !paused && self.permits.available_permits() == 0 => {
                    paused = true;
                    self.pause(true);
                }
                m = self.consumer.recv(), if paused && waiting.len() < MAX_WAITING => match m {
                    Ok(m) => {
                        let since = self.state.lock().expect("state lock").rebalances;
                        waiting.push_back(Record { waited_since: Some(since), ..self.record(&m) });
                        // Partitions assigned since the pause are not paused yet.
                        self.pause(true);
                    }
                    Err(e) => self.failed(e).await,
                },
            }
        }
        self.commit();
        // Closing the consumer leaves the group: librdkafka blocks until the revoke is
        // served, outstanding commits are answered and the coordinator has the leave,
        // up to the session timeout. That wait belongs on the blocking pool.
        let Pump { consumer, topic, .. } = self;
        drop(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            drop(consumer);
            tracing::info!(%topic, took = ?started.elapsed(), "consumer closed (left its group)");
        }));
    }

    async fn failed(&self, e: KafkaError) {
        tracing::warn!(topic = %self.topic, error = %e, "consuming from Kafka failed; retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Pauses (or resumes) fetching for every partition assigned now.
    fn pause(&self, pause: bool) {
        let assigned = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => return tracing::warn!(topic = %self.topic, error = %e, "reading the assignment failed"),
        };
        let done = if pause { self.consumer.pause(&assigned) } else { self.consumer.resume(&assigned) };
        match done {
            Ok(()) => {
                tracing::debug!(topic = %self.topic, pause, partitions = assigned.count(), "every in-flight slot busy: fetching paused (false: resumed)")
            }
            Err(e) => tracing::warn!(topic = %self.topic, pause, error = %e, "pausing or resuming partitions failed"),
        }
    }

    fn commit(&self) {
        let moved = self.state.lock().expect("state lock").advanced(&self.topic);
        if let Some(tpl) = moved
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(topic = %self.topic, error = %e, "committing offsets failed; they will be retried");
        }
    }

    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        Record {
            partition: m.partition(),
            offset: m.offset().max(0) as u64,
            headers: m
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default(),
            value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
            waited_since: None,
        }
    }

    /// Hands a record to the worker, holding `permit` until it is final. A record
    /// that waited across a rebalance is dropped: its
    /// partition may have moved, and whoever holds it now reads it from the
    /// committed offset (which never passed it).
    fn take(&self, r: Record, permit: OwnedSemaphorePermit) {
        let Record { partition, offset, headers, value, waited_since } = r;
        let decoded = kafka_binding::decode(&headers, value);
        let mut st = self.state.lock().expect("state lock");
        if waited_since.is_some_and(|n| n != st.rebalances) {
            return;
        }
        let tracker = st.parts.entry(partition).or_insert_with(|| AckTracker::resume(AckState::at(offset)));
        let ev = match decoded {
            Ok(Some(ev)) => ev,
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    _ => "the record is not a CloudEvent".into(),
                };
                tracing::warn!(topic = %self.topic, partition, offset, error = %why, "skipping a record that carries no valid CloudEvent");
                metrics::counter!("spate_events_dropped_total", "sender" => self.topic.clone(), "reason" => "unreadable").increment(1);
                tracker.seen_upto(offset + 1);
                return;
            }
        };
        // Offsets of a partition come dense here (idempotent producer, no compaction):
        // a jump means records the commit would pass without delivering. Said loudly.
        if offset > tracker.next() {
            let skipped = offset - tracker.next();
            tracing::warn!(topic = %self.topic, partition, from = tracker.next(), to = offset, skipped, "Kafka handed out a record past a gap in the partition's offsets");
            metrics::counter!("spate_kafka_offset_gaps_total", "topic" => self.topic.clone()).increment(1);
        }
        tracker.start(offset);
        drop(st);
        let held = Arc::new(Held {
            state: self.state.clone(),
            partition,
            offset,
            payload: Bytes::from(storage::encode(&ev)),
            tx: self.tx.clone(),
            _permit: permit,
        });
        let _ =
            self.tx.send(Message { payload: held.payload.clone(), acker: Arc::new(KafkaAcker(held)), delivered: 1 });
    }
}

/// The worker's end: when it is dropped the pump sees the channel close,
/// commits, and its librdkafka consumer leaves the group.
struct KafkaConsumer {
    rx: mpsc::UnboundedReceiver<Message>,
}

impl StreamConsumer for KafkaConsumer {
    fn next(&mut self) -> BoxFuture<'_, Result<Message, LogError>> {
        Box::pin(async move { self.rx.recv().await.ok_or_else(|| unavailable("consumer", "stopped")) })
    }
}

/// A record handed out and not yet final; shared by its redeliveries.
struct Held {
    state: Arc<Mutex<State>>,
    partition: i32,
    offset: u64,
    payload: Bytes,
    /// Where a nacked record goes back to.
    tx: mpsc::UnboundedSender<Message>,
    /// Frees one in-flight slot when the record is final.
    _permit: OwnedSemaphorePermit,
}

struct KafkaAcker(Arc<Held>);

impl Acker for KafkaAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), LogError>> {
        let h = &self.0;
        if let Some(t) = h.state.lock().expect("state lock").parts.get_mut(&h.partition) {
            t.finish(h.offset);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    /// Hands the same record out again from this instance after `delay`.
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let again =
                Message { payload: self.0.payload.clone(), acker: Arc::new(KafkaAcker(self.0.clone())), delivered: 1 };
            self.0.tx.send(again).map_err(|_| unavailable("consumer", "stopped"))
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
