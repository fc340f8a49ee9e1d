//! KafkaSource: `consumers` librdkafka consumers per source, each driven by one
//! task. Partitions are assigned by Spate (consumer `i` of `n` takes every n-th),
//! not by the group coordinator; offsets are committed to `consumerGroup`, so a
//! restart resumes where the group left off. A crashed Spate leaves no dead group
//! member behind to wait out. Partitions added to a topic later are picked up when
//! the source restarts (re-apply it or restart Spate).
//!
//! Invariants:
//! - an offset is committed only once every record below it in its partition
//!   was accepted by the sink or the dead-letter sink (`open` holds the rest);
//! - at most [`MAX_UNCOMMITTED`] records per consumer are taken from Kafka and
//!   not yet committed: at the bound the consumer stops taking records until
//!   commits catch up (pausing and resuming partitions instead skipped records
//!   in tests against tansu). A crash redelivers at most that many;
//! - `ordering: ordered` has one record in flight per partition, in offset order;
//!   `unordered` has up to [`UNORDERED_IN_FLIGHT`] per consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use spate_api::{InitialOffset, KafkaSpec};
use spate_core::acks::{AckState, AckTracker};
use spate_core::{CloudEvent, ExtValue, kafka_binding};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Start;
use crate::emit::Emitter;

/// Records a consumer may hold between taking them from Kafka and committing them.
pub const MAX_UNCOMMITTED: usize = 1000;
/// Deliveries in flight per consumer with `ordering: unordered`.
pub const UNORDERED_IN_FLIGHT: usize = 100;
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// How long a stopping consumer waits for deliveries in flight before abandoning them.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Client settings derived from the spec, with secret values already resolved.
#[derive(Clone, Default)]
pub struct KafkaSecrets {
    pub ca_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub sasl_user: Option<String>,
    pub sasl_password: Option<String>,
    pub sasl_mechanism: Option<String>,
}

pub(crate) fn client_config(spec: &KafkaSpec, secrets: &KafkaSecrets) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", spec.bootstrap_servers.join(","))
        .set("group.id", &spec.consumer_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match spec.initial_offset {
                InitialOffset::Earliest => "earliest",
                InitialOffset::Latest => "latest",
            },
        )
        .set("statistics.interval.ms", "500")
        // A consumer that holds MAX_UNCOMMITTED records stops polling until the sink takes
        // them; it stays in its group for up to a day of that (librdkafka's maximum).
        .set("max.poll.interval.ms", "86400000")
        .set("session.timeout.ms", "10000")
        // A topic created after the source (or not yet visible when it subscribed) is found
        // within seconds, not librdkafka's default five minutes.
        .set("topic.metadata.refresh.interval.ms", "3000")
        // An idle fetch returns after 20 ms, not librdkafka's 500: brokers that answer a fetch
        // only when its wait expires (tansu) would otherwise add up to half a second per record.
        .set("fetch.wait.max.ms", "20")
        .set("client.id", "spate");
    let protocol = match (spec.net.tls, spec.net.sasl) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(ca) = &secrets.ca_cert {
        c.set("ssl.ca.pem", ca);
    }
    if let Some(cert) = &secrets.cert {
        c.set("ssl.certificate.pem", cert);
    }
    if let Some(key) = &secrets.key {
        c.set("ssl.key.pem", key);
    }
    if spec.net.sasl {
        c.set("sasl.mechanisms", secrets.sasl_mechanism.as_deref().unwrap_or("PLAIN"));
        if let Some(u) = &secrets.sasl_user {
            c.set("sasl.username", u);
        }
        if let Some(p) = &secrets.sasl_password {
            c.set("sasl.password", p);
        }
    }
    c
}

/// Assigns consumer `index` its share of the topics' partitions (every `consumers`-th, in
/// topic then partition order), each from the group's committed offset or else the
/// spec's initial offset. Blocking (metadata and offset requests). Returns how many.
fn assign(consumer: &StreamConsumer<Ctx>, spec: &KafkaSpec, index: usize) -> Result<usize, String> {
    let timeout = Duration::from_secs(10);
    let mut all = vec![];
    for topic in &spec.topics {
        let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of {topic}: {e}"))?;
        let t = md.topics().iter().find(|t| t.name() == topic).ok_or_else(|| format!("topic {topic} not found"))?;
        if let Some(e) = t.error() {
            return Err(format!("topic {topic}: {:?}", e));
        }
        if t.partitions().is_empty() {
            return Err(format!("topic {topic} has no partitions (does it exist?)"));
        }
        let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        ps.sort_unstable();
        all.extend(ps.into_iter().map(|p| (topic.clone(), p)));
    }
    let mine: Vec<&(String, i32)> =
        all.iter().enumerate().filter(|(i, _)| i % spec.consumers as usize == index).map(|(_, tp)| tp).collect();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in &mine {
        tpl.add_partition(t, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).map_err(|e| format!("committed offsets: {e}"))?;
    let mut start = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
            _ => match spec.initial_offset {
                InitialOffset::Earliest => Offset::Beginning,
                InitialOffset::Latest => Offset::End,
            },
        };
        start.add_partition_offset(e.topic(), e.partition(), offset).map_err(|e| e.to_string())?;
    }
    consumer.assign(&start).map_err(|e| format!("assign: {e}"))?;
    Ok(mine.len())
}

/// High watermarks per partition, from librdkafka's statistics (fetch responses).
#[derive(Default)]
pub(crate) struct Ctx {
    high: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for Ctx {
    /// librdkafka's own lines (a broker it cannot reach) go to Spate's log, target `librdkafka`.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        spate_log::kafka::forward_log(level, facility, message);
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        spate_log::kafka::forward_error(&error, reason);
    }
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(statistics) else { return };
        let Some(topics) = v.get("topics").and_then(|t| t.as_object()) else { return };
        let mut high = self.high.lock().expect("watermarks");
        for (topic, t) in topics {
            let Some(parts) = t.get("partitions").and_then(|p| p.as_object()) else { continue };
            for (p, pv) in parts {
                let (Ok(p), Some(hi)) = (p.parse::<i32>(), pv.get("hi_offset").and_then(|h| h.as_i64())) else {
                    continue;
                };
                if p >= 0 && hi >= 0 {
                    high.insert((topic.clone(), p), hi);
                }
            }
        }
    }
}
impl ConsumerContext for Ctx {}

/// Maps a record to a CloudEvent: Kafka-binding CloudEvents (binary: `ce_` headers;
/// structured: `content-type: application/cloudevents+json`) keep their attributes;
/// anything else becomes `dev.knative.kafka.event`.
/// One Kafka record, as the mapping to a CloudEvent sees it.
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(String, Vec<u8>)],
    pub timestamp_ms: Option<i64>,
    pub payload: Option<&'a [u8]>,
}

pub fn record_event(source: &str, r: &Record<'_>) -> CloudEvent {
    let Record { topic, partition, offset, key, headers, timestamp_ms, payload } = *r;
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    let body = Bytes::copy_from_slice(payload.unwrap_or_default());
    match kafka_binding::decode(headers, body.clone()) {
        Ok(Some(ev)) => return ev,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(topic, partition, offset, error = %e, "record claims to be a CloudEvent but is not a valid one; wrapping it")
        }
    }
    let mut ev = CloudEvent::new(
        format!("partition:{partition}/offset:{offset}"),
        format!("{source}#{topic}"),
        "dev.knative.kafka.event",
    );
    ev.subject = Some(format!("partition:{partition}#{offset}"));
    if let Some(ms) = timestamp_ms.filter(|ms| *ms >= 0) {
        ev.time = Some(spate_core::rules::format_rfc3339(ms / 1000, ((ms % 1000) * 1_000_000) as u32));
    }
    if let Some(k) = key {
        let v = match std::str::from_utf8(k) {
            Ok(s) if spate_core::rules::check_string("key", s).is_ok() => s.to_string(),
            _ => base64::engine::general_purpose::STANDARD.encode(k),
        };
        ev.set_extension("key", ExtValue::String(v));
    }
    for (k, v) in headers {
        let name: String = k.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
        if name.is_empty() || name == "contenttype" {
            continue;
        }
        let v = match std::str::from_utf8(v) {
            Ok(s) if spate_core::rules::check_string(k, s).is_ok() => s.to_string(),
            _ => base64::engine::general_purpose::STANDARD.encode(v),
        };
        ev.set_extension(&format!("kafkaheader{name}"), ExtValue::String(v));
    }
    ev.datacontenttype = content_type.map(str::to_string);
    if !body.is_empty() {
        ev.data = Some(body);
    }
    ev
}

struct Pending {
    offset: i64,
    event: CloudEvent,
}

struct Part {
    /// Received, not yet started (ordered mode).
    queue: VecDeque<Pending>,
    in_flight: usize,
    /// Offsets received and not yet accepted downstream, and one past the
    /// highest received: the same bookkeeping as a trigger's (`AckTracker`).
    acks: AckTracker,
    /// The offset last committed (one past the last accepted prefix).
    committed: i64,
}

impl Part {
    /// A partition first seen at `offset` (its committed position).
    fn at(offset: i64) -> Part {
        let start = offset.max(0) as u64;
        Part { queue: VecDeque::new(), in_flight: 0, acks: AckTracker::resume(AckState::at(start)), committed: offset }
    }

    fn commit_position(&self) -> i64 {
        self.acks.committed() as i64
    }

    fn next(&self) -> i64 {
        self.acks.next() as i64
    }
}

#[derive(Clone)]
pub(crate) struct KafkaConsumer {
    pub spec: KafkaSpec,
    pub secrets: KafkaSecrets,
    pub emitter: Arc<Emitter>,
    pub index: usize,
    /// This consumer's share of the source's lag.
    pub lag: Arc<std::sync::atomic::AtomicU64>,
}

/// Waits `pause` while polling `consumer`, which has nothing assigned yet: rdkafka
/// hands a client's queued log lines and errors (a broker it cannot reach) to its
/// context only while the client is polled, so without this a source that cannot
/// reach Kafka would never show librdkafka's own account of why.
async fn wait_polling(consumer: &StreamConsumer<Ctx>, pause: Duration) {
    let until = tokio::time::Instant::now() + pause;
    while let Ok(polled) = tokio::time::timeout_at(until, consumer.recv()).await {
        if let Err(e) = polled {
            // A consumer error (also in the log): poll again after a beat, not in a tight loop.
            tracing::debug!(error = %e, "Kafka consumer error while waiting to assign partitions");
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_millis(200))).await;
        }
    }
}

impl KafkaConsumer {
    pub(crate) fn create(&self) -> Result<StreamConsumer<Ctx>, String> {
        client_config(&self.spec, &self.secrets)
            .create_with_context(Ctx::default())
            .map_err(|e| format!("cannot create the Kafka consumer: {e}"))
    }

    pub(crate) async fn run(self, consumer: StreamConsumer<Ctx>, mut stop: watch::Receiver<bool>) {
        let consumer = Arc::new(consumer);
        if !self.wait_assigned(&consumer, &mut stop).await {
            // Closing can wait on the network: on the blocking pool.
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
            return;
        }
        let label = format!("{}#{}", self.emitter.label, self.index);
        let ordered = self.spec.ordered;
        let mut parts: HashMap<(String, i32), Part> = HashMap::new();
        let mut tasks: JoinSet<((String, i32), i64, bool)> = JoinSet::new();
        let mut uncommitted = 0usize;
        let mut in_flight = 0usize;
        let mut tick = tokio::time::interval(COMMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let Ok((key, offset, accepted)) = done else { continue };
                    in_flight -= 1;
                    if let Some(p) = parts.get_mut(&key) {
                        p.in_flight -= 1;
                        if accepted {
                            p.acks.finish(offset as u64);
                        }
                    }
                    self.start(&mut parts, &key, &mut tasks, &mut in_flight, ordered, &stop);
                }
                // Full: stop taking records (librdkafka's own queue then stops fetching).
                m = consumer.recv(), if uncommitted < MAX_UNCOMMITTED => {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(source = %label, error = %e, "Kafka consumer error");
                            *self.emitter.stats.last_error.lock().expect("stats") = Some(format!("Kafka: {e}"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Some(key) = self.take(&m, &mut parts) else { continue };
                    uncommitted += 1;
                    self.start(&mut parts, &key, &mut tasks, &mut in_flight, ordered, &stop);
                }
                _ = tick.tick() => {
                    uncommitted = self.commit(&consumer, &mut parts, CommitMode::Async);
                    ticks += 1;
                    if ticks.is_multiple_of(4) {
                        self.update_lag(&consumer, &parts);
                    }
                }
            }
        }
        // Stopping: deliveries in flight get a moment to finish; then a final synchronous
        // commit of what was accepted. The rest is redelivered on the next start.
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                if let Ok((key, offset, true)) = done
                    && let Some(p) = parts.get_mut(&key)
                {
                    p.acks.finish(offset as u64);
                }
            }
        };
        // A delivery still retrying after the grace is abandoned (uncommitted, so redelivered).
        let _ = tokio::time::timeout(STOP_GRACE, drain).await;
        tasks.abort_all();
        for p in parts.values_mut() {
            p.queue.clear();
        }
        // A synchronous commit waits for the coordinator (up to librdkafka's socket timeout
        // when Kafka is unreachable), and so can closing the consumer: on the blocking pool,
        // never on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || {
            self.commit(&consumer, &mut parts, CommitMode::Sync);
            drop(consumer);
        })
        .await;
    }

    /// Assigns this consumer its partitions, retrying until it works; false if stopped first.
    async fn wait_assigned(&self, consumer: &Arc<StreamConsumer<Ctx>>, stop: &mut watch::Receiver<bool>) -> bool {
        // Partitions are assigned here, not by the group coordinator: consumer `i` of `n`
        // takes every n-th partition, starting from the group's committed offsets.
        loop {
            let c = consumer.clone();
            let (spec, index) = (self.spec.clone(), self.index);
            let assigned = tokio::task::spawn_blocking(move || assign(&c, &spec, index)).await;
            match assigned {
                Ok(Ok(n)) => {
                    tracing::info!(source = %self.emitter.label, consumer = self.index, partitions = n, "Kafka partitions assigned");
                    *self.emitter.stats.last_error.lock().expect("stats") = None;
                    return true;
                }
                Ok(Err(e)) => {
                    tracing::warn!(source = %self.emitter.label, error = %e, "cannot assign Kafka partitions yet; retrying");
                    *self.emitter.stats.last_error.lock().expect("stats") = Some(e);
                }
                Err(e) => {
                    *self.emitter.stats.last_error.lock().expect("stats") = Some(e.to_string());
                }
            }
            let stopped = tokio::select! {
                _ = wait_polling(consumer, Duration::from_secs(2)) => false,
                _ = stop.changed() => true,
            };
            if stopped {
                return false;
            }
        }
    }

    /// Queues one record as an event on its partition; the partition's key,
    /// or `None` when the record was already open or accepted (a redelivery).
    fn take(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        parts: &mut HashMap<(String, i32), Part>,
    ) -> Option<(String, i32)> {
        let headers: Vec<(String, Vec<u8>)> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        let key = (m.topic().to_string(), m.partition());
        let offset = m.offset();
        let ev = record_event(
            &self.spec.event_source,
            &Record {
                topic: m.topic(),
                partition: m.partition(),
                offset,
                key: m.key(),
                headers: &headers,
                timestamp_ms: m.timestamp().to_millis(),
                payload: m.payload(),
            },
        );
        let p = parts.entry(key.clone()).or_insert_with(|| Part::at(offset));
        // Redelivered after a rebalance or a seek: already open or already accepted.
        if offset < p.next() && (p.acks.is_pending(offset as u64) || offset < p.committed) {
            return None;
        }
        p.acks.start(offset as u64);
        p.queue.push_back(Pending { offset, event: ev });
        Some(key)
    }

    /// Starts deliveries from `key`'s queue while the ordering allows.
    fn start(
        &self,
        parts: &mut HashMap<(String, i32), Part>,
        key: &(String, i32),
        tasks: &mut JoinSet<((String, i32), i64, bool)>,
        in_flight: &mut usize,
        ordered: bool,
        stop: &watch::Receiver<bool>,
    ) {
        let launch = |p: &mut Part, key: &(String, i32), tasks: &mut JoinSet<_>, in_flight: &mut usize| {
            let Some(Pending { offset, event }) = p.queue.pop_front() else { return false };
            p.in_flight += 1;
            *in_flight += 1;
            let em = self.emitter.clone();
            let stop = stop.clone();
            let key = key.clone();
            tasks.spawn(async move {
                let ok = em.emit_until_accepted(event, &stop).await;
                (key, offset, ok)
            });
            true
        };
        if ordered {
            if let Some(p) = parts.get_mut(key)
                && p.in_flight == 0
            {
                launch(p, key, tasks, in_flight);
            }
            return;
        }
        // Unordered: fill up to the consumer's bound, this partition first, then any other.
        while *in_flight < UNORDERED_IN_FLIGHT {
            let next = if parts.get(key).is_some_and(|p| !p.queue.is_empty()) {
                Some(key.clone())
            } else {
                parts.iter().find(|(_, p)| !p.queue.is_empty()).map(|(k, _)| k.clone())
            };
            let Some(k) = next else { break };
            let p = parts.get_mut(&k).expect("present");
            if !launch(p, &k, tasks, in_flight) {
                break;
            }
        }
    }

    /// Commits every owned partition's accepted prefix; returns the records still uncommitted.
    fn commit(
        &self,
        consumer: &StreamConsumer<Ctx>,
        parts: &mut HashMap<(String, i32), Part>,
        mode: CommitMode,
    ) -> usize {
        let owned: Option<TopicPartitionList> = consumer.assignment().ok();
        let mut tpl = TopicPartitionList::new();
        let mut before = vec![];
        for ((topic, partition), p) in parts.iter_mut() {
            let pos = p.commit_position();
            let is_owned = owned.as_ref().is_none_or(|o| o.find_partition(topic, *partition).is_some());
            if pos > p.committed && is_owned {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(pos));
                before.push(((topic.clone(), *partition), p.committed));
                p.committed = pos;
            }
        }
        // One request per partition: tansu 0.6 keeps only part of a multi-partition commit.
        let failed = tpl.elements().iter().find_map(|e| {
            let mut one = TopicPartitionList::new();
            one.add_partition_offset(e.topic(), e.partition(), e.offset()).ok()?;
            consumer.commit(&one, mode).err()
        });
        if let Some(e) = failed {
            tracing::warn!(source = %self.emitter.label, error = %e, "offset commit failed; retrying with the next tick");
            *self.emitter.stats.last_error.lock().expect("stats") = Some(format!("commit: {e}"));
            for (key, old) in before {
                if let Some(p) = parts.get_mut(&key) {
                    p.committed = old;
                }
            }
        }
        parts.values().map(|p| (p.next() - p.committed).max(0) as usize).sum()
    }

    /// This consumer's lag: per owned partition, the high watermark last fetched minus the
    /// committed offset (or the fetch position where nothing was received yet).
    fn update_lag(&self, consumer: &StreamConsumer<Ctx>, parts: &HashMap<(String, i32), Part>) {
        let high = consumer.context().high.lock().expect("watermarks").clone();
        let (Ok(owned), Ok(position)) = (consumer.assignment(), consumer.position()) else { return };
        let mut lag = 0i64;
        for e in owned.elements() {
            let key = (e.topic().to_string(), e.partition());
            let Some(hi) = high.get(&key) else { continue };
            let done = match parts.get(&key) {
                Some(p) => p.committed,
                None => match position.find_partition(e.topic(), e.partition()).map(|p| p.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => continue,
                },
            };
            lag += (hi - done).max(0);
        }
        self.lag.store(lag.max(0) as u64, Ordering::Relaxed);
    }
}

/// KafkaSource: `consumers` consumer tasks and one that sums their lag.
pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<KafkaSpec>().cloned() else { return };
    let (claims, emitter, stop_rx) = (st.sources.claims.clone(), st.emitter.clone(), st.stop.clone());
    let label = emitter.label.clone();
    let mut lags = vec![];
    let secrets = KafkaSecrets {
        ca_cert: secret(st, &spec.net.tls_ca_cert),
        cert: secret(st, &spec.net.tls_cert),
        key: secret(st, &spec.net.tls_key),
        sasl_user: secret(st, &spec.net.sasl_user),
        sasl_password: secret(st, &spec.net.sasl_password),
        sasl_mechanism: secret(st, &spec.net.sasl_mechanism),
    };
    for index in 0..spec.consumers as usize {
        let lag = Arc::new(std::sync::atomic::AtomicU64::new(0));
        lags.push(lag.clone());
        let c = KafkaConsumer { spec: spec.clone(), secrets: secrets.clone(), emitter: emitter.clone(), index, lag };
        if let Err(e) = c.create() {
            st.fail("KafkaClientFailed", e);
            break;
        }
        // Each consumer (its share of the partitions) runs on one instance of a
        // cluster: the holder of its lease, so no partition is consumed twice.
        let lease = claims.lease(format!("kafka/{label}/{index}"));
        st.spawn(crate::while_held(lease, stop_rx.clone(), move |halted| {
            let c = c.clone();
            async move {
                match c.create() {
                    Ok(consumer) => c.run(consumer, halted).await,
                    Err(e) => tracing::warn!(source = %c.emitter.label, error = %e, "Kafka consumer could not start"),
                }
            }
        }));
    }
    let stats = emitter.stats.clone();
    let mut stop = stop_rx.clone();
    st.keep(Arc::new(crate::driver::Lag(stats.clone())));
    st.spawn(async move {
        loop {
            let lag: u64 = lags.iter().map(|l| l.load(Ordering::Relaxed)).sum();
            stats.lag.store(lag, Ordering::Relaxed);
            metrics::gauge!("spate_source_lag", "source" => label.clone()).set(lag as f64);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

fn secret(st: &Start<'_>, r: &Option<spate_api::SecretKeyRef>) -> Option<String> {
    r.as_ref().and_then(|r| st.secret(r))
}
