use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spate_core::delivery::{DeliveryFormat, RetryPolicy};
use spate_core::{CloudEvent, ExtValue, ext, storage};
use spate_delivery::{BoxFuture, DeliveryRequest, DiscardReplies, Dispatcher, Outcome, ParsedUrl, ReplySink};
use spate_filter::Filter;
use spate_log::{AckState, AckTracker, Offset};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::broker::{Broker, PublishError};
use crate::feed::Feed;
use crate::router::Routed;

/// Where a worker's replies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyPlan {
    /// Back into the worker's broker with TTL − 1 (a Trigger).
    Broker,
    /// To this URL through the dispatcher (a Subscription's `reply`).
    Url(ParsedUrl),
    /// Dropped (a Subscription without `reply`).
    Discard,
}

/// Everything a worker needs, resolved by the reconciler. Triggers and
/// Subscriptions share the worker; they differ in filter and reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPlan {
    /// `trigger` or `subscription`: names the consumer and the metrics.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The broker or channel this worker reads (its name, in `namespace`).
    pub source: String,
    pub filter: Filter,
    pub reply: ReplyPlan,
    pub subscriber_url: ParsedUrl,
    pub dead_letter_url: Option<ParsedUrl>,
    pub policy: RetryPolicy,
    pub format: DeliveryFormat,
    pub max_in_flight: usize,
}

/// How many recent failures a trigger keeps (shown by `spate describe`).
pub const RECENT_FAILURES: usize = 10;

/// An event that did not reach the subscriber: dead-lettered, or dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub at: std::time::SystemTime,
    pub id: String,
    pub source: String,
    pub event_type: String,
    /// True: the dead-letter sink took it; false: it was dropped.
    pub dead_lettered: bool,
    pub reason: String,
}

/// Live counters of one trigger worker, and its last few failures.
#[derive(Debug, Default)]
pub struct TriggerStats {
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub in_flight: AtomicU64,
    /// Attempts beyond the first, over every event.
    pub retries: AtomicU64,
    recent: std::sync::Mutex<std::collections::VecDeque<Failure>>,
}

impl TriggerStats {
    /// Counts a failure and keeps it among the last [`RECENT_FAILURES`].
    pub fn record_failure(&self, ev: &CloudEvent, dead_lettered: bool, reason: &str) {
        let counter = if dead_lettered { &self.dead_lettered } else { &self.dropped };
        counter.fetch_add(1, Ordering::Relaxed);
        let f = Failure {
            at: std::time::SystemTime::now(),
            id: ev.id.clone(),
            source: ev.source.clone(),
            event_type: ev.ty.clone(),
            dead_lettered,
            reason: reason.to_string(),
        };
        let mut recent = self.recent.lock().expect("recent failures");
        if recent.len() == RECENT_FAILURES {
            recent.pop_front();
        }
        recent.push_back(f);
    }

    /// The last failures, oldest first.
    pub fn recent_failures(&self) -> Vec<Failure> {
        self.recent.lock().expect("recent failures").iter().cloned().collect()
    }
}

pub(crate) struct TriggerWorker {
    /// Shared with the running task (one copy per trigger).
    pub plan: Arc<WorkerPlan>,
    /// The feed (log and router) this worker reads through.
    pub feed: Arc<Feed>,
    pub stats: Arc<TriggerStats>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl TriggerWorker {
    /// `broker` is where `ReplyPlan::Broker` replies go.
    pub async fn start(plan: WorkerPlan, feed: Arc<Feed>, broker: Option<Arc<Broker>>, dispatcher: Dispatcher) -> Self {
        // A new trigger sees events that arrive after it is Ready, as in Knative.
        // The start is recorded here, before `apply` returns, not when the task
        // first runs: an event sent right after `apply` must not be skipped.
        let consumer = plan.consumer();
        let known = match feed.log.committed_state(&consumer).await {
            Ok(state) => state.is_some(),
            Err(e) => {
                tracing::error!(consumer = %consumer, error = %e, "cannot read the trigger's position");
                true
            }
        };
        if !known && let Err(e) = feed.log.commit(&consumer, feed.log.end_offset()).await {
            tracing::error!(consumer = %consumer, error = %e, "cannot record the trigger's starting offset");
        }
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(TriggerStats::default());
        let plan = Arc::new(plan);
        let run = Run { plan: plan.clone(), feed: feed.clone(), broker, dispatcher, stats: stats.clone() };
        let handle = tokio::spawn(run.run(stop_rx));
        TriggerWorker { plan, feed, stats, stop, handle }
    }

    /// Stops the worker; in-flight deliveries are abandoned uncommitted and
    /// will be redelivered by the next worker on this consumer.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// A Subscription's replies go to its `reply` destination, with the
/// subscription's retry policy; if that fails, the original delivery fails
/// and is retried, so a reply is never silently lost.
struct UrlReply<'a> {
    dispatcher: &'a Dispatcher,
    url: &'a ParsedUrl,
    plan: &'a WorkerPlan,
}

impl ReplySink for UrlReply<'_> {
    fn accept(&self, reply: CloudEvent) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let label = format!("{}/reply", self.plan.consumer());
            let req = DeliveryRequest {
                subscriber: self.url,
                policy: &self.plan.policy,
                format: self.plan.format,
                namespace: &self.plan.namespace,
                dead_letter_sink: None,
                label: &label,
                retries: None,
                spent: 0,
                on_retry: None,
            };
            match self.dispatcher.deliver(&reply, &req, &DiscardReplies).await {
                Outcome::Delivered { .. } => Ok(()),
                Outcome::DeadLettered { last_error, .. } => Err(last_error),
                Outcome::Dropped { reason, .. } => Err(format!("reply to {}: {reason}", self.url)),
            }
        })
    }
}

impl WorkerPlan {
    /// The consumer name on the feed's log, e.g. `trigger/default/t1`.
    pub fn consumer(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

struct Run {
    plan: Arc<WorkerPlan>,
    feed: Arc<Feed>,
    broker: Option<Arc<Broker>>,
    dispatcher: Dispatcher,
    stats: Arc<TriggerStats>,
}

/// What each delivery task shares: one `Arc` clone per event, metric handles
/// resolved once per worker rather than per event.
pub(crate) struct Shared {
    plan: Arc<WorkerPlan>,
    dispatcher: Dispatcher,
    broker: Option<Arc<Broker>>,
    pub(crate) stats: Arc<TriggerStats>,
    pub(crate) label: String,
    delivered: metrics::Counter,
    duration: metrics::Histogram,
}

impl Shared {
    pub(crate) fn plan(&self) -> &WorkerPlan {
        &self.plan
    }

    pub(crate) fn new(
        plan: Arc<WorkerPlan>,
        dispatcher: Dispatcher,
        broker: Option<Arc<Broker>>,
        stats: Arc<TriggerStats>,
    ) -> Arc<Shared> {
        let label = plan.consumer();
        Arc::new(Shared {
            plan,
            dispatcher,
            broker,
            stats,
            delivered: metrics::counter!("spate_events_delivered_total", "sender" => label.clone()),
            duration: metrics::histogram!("spate_delivery_duration_seconds", "sender" => label.clone()),
            label,
        })
    }
}

/// A trigger's replies re-enter its broker with the TTL decremented.
struct BrokerReply<'a> {
    broker: Arc<Broker>,
    ttl: i64,
    label: &'a str,
}

impl ReplySink for BrokerReply<'_> {
    fn accept(&self, mut reply: CloudEvent) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let ttl = self.ttl - 1;
            if ttl <= 0 {
                tracing::info!(trigger = %self.label, id = %reply.id, "reply dropped: knativebrokerttl exhausted");
                metrics::counter!("spate_events_dropped_total", "sender" => self.label.to_string(), "reason" => "ttl_exhausted").increment(1);
                return Ok(());
            }
            reply.set_extension(ext::BROKER_TTL, ExtValue::Integer(ttl as i32));
            self.broker.append(vec![reply]).await.map_err(|e: PublishError| e.to_string())
        })
    }
}

/// Per-worker bookkeeping shared by both modes.
struct State {
    consumer: String,
    label: String,
    /// What was handed out, what is in flight, what was final before a restart.
    acks: AckTracker,
    /// The position last written to storage, and the tracker's generation it reflects.
    committed: AckState,
    committed_generation: u64,
    /// The commit being written: its future, the position, the generation and what it covers.
    writing: Option<Writing>,
    /// Finished deliveries not yet in a written position count against the in-flight bound.
    durability: crate::durable::Durability,
    /// Delivery tasks and the offset each one carries (to finish it even if it panics).
    tasks: JoinSet<Offset>,
    offsets: HashMap<tokio::task::Id, Offset>,
    /// Attempts the delivery tasks made, told as they retry: recorded in the
    /// next commit, so a restart continues each event's retry budget.
    retried: Arc<std::sync::Mutex<Vec<(Offset, u32)>>>,
    shared: Arc<Shared>,
    backlog: metrics::Gauge,
}

/// Waits for the commit under way (pending for ever when there is none).
async fn writing(w: &mut Option<Writing>) -> Result<(), spate_log::LogError> {
    match w {
        Some(w) => (&mut w.done).await,
        None => std::future::pending().await,
    }
}

/// A commit on its way to storage.
struct Writing {
    done: BoxFuture<'static, Result<(), spate_log::LogError>>,
    state: AckState,
    generation: u64,
    covers: u64,
}

impl State {
    /// Whether another delivery may start: running ones plus finished ones
    /// not yet in a written position stay under the bound (what a crash resends).
    fn room(&self, max_in_flight: usize) -> bool {
        self.durability.room(self.tasks.len(), max_in_flight)
    }

    /// Takes a finished delivery task. A task that panicked (a bug, not an
    /// outcome) still ends its event: dropped and counted, never stuck.
    fn finished(&mut self, done: Result<(tokio::task::Id, Offset), tokio::task::JoinError>) {
        let (id, panicked) = match &done {
            Ok((id, _)) => (*id, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        let Some(off) = self.offsets.remove(&id) else { return };
        if panicked {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("spate_events_dropped_total", "sender" => self.label.clone(), "reason" => "delivery_panicked").increment(1);
            tracing::error!(trigger = %self.label, offset = off, "a delivery task panicked; the event is dropped and counted");
        }
        self.acks.finish(off);
        self.durability.finished();
    }

    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finished(done);
        }
        self.shared.stats.in_flight.store(self.tasks.len() as u64, Ordering::Relaxed);
    }

    /// Starts writing the position (the lowest unfinished offset plus the
    /// finished ranges above it) unless a write is under way; never waits for
    /// storage. [`State::written`] takes the result.
    fn commit(&mut self, log: &Arc<dyn spate_log::EventLog>) {
        for (offset, attempts) in std::mem::take(&mut *self.retried.lock().expect("retried lock")) {
            self.acks.record_attempts(offset, attempts);
        }
        let generation = self.acks.generation();
        if self.writing.is_none() && generation != self.committed_generation {
            // Rebuild the position only when the bookkeeping changed since the last write.
            let state = self.acks.state();
            if state == self.committed {
                self.committed_generation = generation;
                self.durability.all_written();
            } else {
                let (log, consumer, written) = (log.clone(), self.consumer.clone(), state.clone());
                let done = Box::pin(async move { log.commit_state(&consumer, written).await });
                let covers = self.durability.commit_started();
                self.writing = Some(Writing { done, state, generation, covers });
            }
        }
        self.backlog.set(log.end_offset().saturating_sub(self.committed.committed) as f64);
    }

    /// The commit under way finished with `result`.
    fn written(&mut self, result: Result<(), spate_log::LogError>) {
        let Some(w) = self.writing.take() else { return };
        match result {
            Ok(()) => {
                self.committed = w.state;
                self.committed_generation = w.generation;
                self.durability.commit_written(w.covers);
            }
            Err(e) => tracing::error!(trigger = %self.label, error = %e, "commit failed; will retry"),
        }
    }

    /// Takes the commit's result if it is already there.
    fn poll_written(&mut self) {
        if let Some(w) = &mut self.writing
            && let Some(r) = futures_util::FutureExt::now_or_never(&mut w.done)
        {
            self.written(r);
        }
    }

    /// Starts delivering `offset`, unless it was already final before a restart.
    fn spawn(&mut self, offset: Offset, ev: Arc<CloudEvent>) {
        if self.acks.already_done(offset) {
            return;
        }
        self.acks.start(offset);
        let shared = self.shared.clone();
        let (spent, retried) = (self.acks.spent(offset), self.retried.clone());
        let handle = self.tasks.spawn(async move {
            let record = move |n: u32| retried.lock().expect("retried lock").push((offset, n));
            deliver(&shared, &ev, Budget { spent, on_retry: Some(&record) }).await;
            offset
        });
        self.offsets.insert(handle.id(), offset);
    }

    /// Waits for one delivery to finish or the commit under way to be
    /// written (either may make room), starting the next commit. `false` if asked to stop.
    async fn wait_one(&mut self, stop: &mut watch::Receiver<bool>, log: &Arc<dyn spate_log::EventLog>) -> bool {
        self.commit(log);
        let running = !self.tasks.is_empty();
        tokio::select! {
            biased;
            _ = stop.changed() => return false,
            r = writing(&mut self.writing) => self.written(r),
            Some(done) = self.tasks.join_next_with_id(), if running => self.finished(done),
            // Records the attempts of deliveries being retried while none finishes.
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        self.commit(log);
        true
    }
}

impl Run {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let log = self.feed.log.clone();
        let consumer = self.plan.consumer();
        let label = consumer.clone();
        let mut position = loop {
            match log.committed_state(&consumer).await {
                Ok(p) => break p.unwrap_or_else(|| AckState::at(log.end_offset())),
                Err(e) => {
                    tracing::error!(trigger = %consumer, error = %e, "cannot read the trigger's position; retrying in 1s");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        position.committed = position.committed.max(log.start_offset());
        let shared = Shared::new(self.plan.clone(), self.dispatcher.clone(), self.broker.clone(), self.stats.clone());
        let backlog = metrics::gauge!("spate_trigger_backlog", "trigger" => label.clone());
        let attached = metrics::gauge!("spate_trigger_attached", "trigger" => label.clone());
        let attaches = metrics::counter!("spate_trigger_attaches_total", "trigger" => label.clone());
        let mut st = State {
            consumer,
            label,
            acks: AckTracker::resume(position.clone()),
            committed: position,
            committed_generation: 0,
            writing: None,
            durability: Default::default(),
            tasks: JoinSet::new(),
            offsets: HashMap::new(),
            retried: Default::default(),
            shared,
            backlog,
        };
        // Start detached: catch up from the committed offset, then attach to the router.
        loop {
            let Some(rx) = self.detached(&mut st, &mut stop).await else { break };
            attached.set(1.0);
            attaches.increment(1);
            let detached = self.attached(&mut st, rx, &mut stop).await;
            attached.set(0.0);
            if !detached {
                break;
            }
        }
        // Stopping: abandon in-flight deliveries; they stay uncommitted.
        st.tasks.abort_all();
    }

    /// Reads the log on its own until caught up with the router, then attaches.
    /// `None` when asked to stop.
    async fn detached(&self, st: &mut State, stop: &mut watch::Receiver<bool>) -> Option<mpsc::Receiver<Routed>> {
        let log = self.feed.log.clone();
        let mut end_rx = log.watch_end();
        let mut buf: VecDeque<spate_log::Record> = VecDeque::new();
        let capacity = (self.plan.max_in_flight * 4).clamp(64, 4096);
        loop {
            st.reap();
            st.poll_written();
            st.commit(&log);
            if buf.is_empty() {
                end_rx.borrow_and_update();
                let end = log.end_offset();
                if st.acks.next() < end {
                    match log.read(st.acks.next(), 256).await {
                        Ok(recs) => buf.extend(recs),
                        Err(e) => {
                            tracing::error!(trigger = %st.label, error = %e, "log read failed; retrying in 1s");
                            tokio::select! {
                                _ = stop.changed() => return None,
                                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            }
                            continue;
                        }
                    }
                }
                if buf.is_empty() {
                    // Caught up with what is visible: hand over to the router.
                    let attach =
                        self.feed.router.attach(st.label.clone(), self.plan.filter.clone(), st.acks.next(), capacity);
                    tokio::select! {
                        biased;
                        _ = stop.changed() => return None,
                        rx = attach => if let Some(rx) = rx { return Some(rx) },
                    }
                    // The router had moved on: keep reading alone.
                    continue;
                }
            }
            let rec = buf.pop_front().expect("non-empty");
            if rec.offset < st.acks.next() {
                continue;
            }
            st.acks.seen_upto(rec.offset + 1);
            let ev = match storage::decode(&rec.payload) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(trigger = %st.label, offset = rec.offset, error = %e, "skipping an unreadable record");
                    continue;
                }
            };
            if !self.plan.filter.matches_guarded(&ev) {
                continue;
            }
            while !st.room(self.plan.max_in_flight) {
                if !st.wait_one(stop, &log).await {
                    return None;
                }
            }
            st.spawn(rec.offset, Arc::new(ev));
        }
    }

    /// Takes routed events from the router. `true`: detached (queue closed),
    /// continue alone; `false`: asked to stop.
    async fn attached(&self, st: &mut State, mut rx: mpsc::Receiver<Routed>, stop: &mut watch::Receiver<bool>) -> bool {
        let log = self.feed.log.clone();
        let routed = self.feed.router.routed_upto.clone();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            st.reap();
            // Load the router's position *before* draining: an empty queue then
            // proves every matching event below it was received.
            let upto = routed.load(Ordering::Acquire);
            let mut drained = false;
            st.poll_written();
            while st.room(self.plan.max_in_flight) {
                match rx.try_recv() {
                    Ok(m) => {
                        if m.offset >= st.acks.next() {
                            st.spawn(m.offset, m.event);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {
                        drained = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => return true,
                }
            }
            if drained {
                st.acks.seen_upto(upto);
            }
            st.commit(&log);
            let room = st.room(self.plan.max_in_flight);
            tokio::select! {
                biased;
                _ = stop.changed() => return false,
                r = writing(&mut st.writing) => st.written(r),
                Some(done) = st.tasks.join_next_with_id(), if !st.tasks.is_empty() => st.finished(done),
                m = rx.recv(), if room => match m {
                    Some(m) => if m.offset >= st.acks.next() {
                        st.spawn(m.offset, m.event);
                    },
                    None => return true,
                },
                _ = tick.tick() => {}
            }
        }
    }
}

/// Attempts a delivery records for a restart: made before it (`spent`), and
/// where to say each failed attempt that will be retried.
#[derive(Clone, Copy, Default)]
pub(crate) struct Budget<'a> {
    pub spent: u32,
    pub on_retry: Option<&'a (dyn Fn(u32) + Send + Sync)>,
}

/// Delivers one event by the plan; true if the subscriber took it.
pub(crate) async fn deliver(s: &Shared, ev: &CloudEvent, budget: Budget<'_>) -> bool {
    let (plan, label, stats) = (&s.plan, s.label.as_str(), &s.stats);
    let ttl = ev.extension_i64(ext::BROKER_TTL).unwrap_or(i64::from(ext::DEFAULT_BROKER_TTL));
    let (broker_reply, url_reply);
    let replies: &dyn ReplySink = match (&plan.reply, &s.broker) {
        (ReplyPlan::Broker, Some(broker)) => {
            broker_reply = BrokerReply { broker: broker.clone(), ttl, label };
            &broker_reply
        }
        (ReplyPlan::Url(url), _) => {
            url_reply = UrlReply { dispatcher: &s.dispatcher, url, plan };
            &url_reply
        }
        _ => &DiscardReplies,
    };
    let req = DeliveryRequest {
        subscriber: &plan.subscriber_url,
        policy: &plan.policy,
        format: plan.format,
        namespace: &plan.namespace,
        dead_letter_sink: plan.dead_letter_url.as_ref(),
        label,
        retries: Some(&stats.retries),
        spent: budget.spent,
        on_retry: budget.on_retry,
    };
    if spate_delivery::trace::enabled() {
        // The trigger's filter matched this event (the spans of its delivery follow).
        use opentelemetry::trace::Span as _;
        let parent = spate_delivery::trace::context_of(ev);
        let kind = opentelemetry::trace::SpanKind::Internal;
        spate_delivery::trace::start(format!("match {label}"), kind, &parent, vec![]).end();
    }
    let started = std::time::Instant::now();
    let outcome = s.dispatcher.deliver(ev, &req, replies).await;
    s.duration.record(started.elapsed().as_secs_f64());
    let delivered = matches!(outcome, Outcome::Delivered { .. });
    // `spate tail trigger/NAME`: what happened to each event this trigger took
    // (said only when someone listens: a delivery formats nothing otherwise).
    let tap = s.broker.as_ref().and_then(|b| b.tap()).filter(|t| t.active());
    let said = match outcome {
        Outcome::Delivered { attempts } => {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            s.delivered.increment(1);
            tap.map(|_| format!("delivered after {attempts} attempt(s)"))
        }
        Outcome::DeadLettered { last_error, .. } => {
            stats.record_failure(ev, true, &last_error);
            tracing::warn!(trigger = %label, id = %ev.id, error = %last_error, "event dead-lettered");
            Some(format!("dead-lettered: {last_error}"))
        }
        Outcome::Dropped { reason, .. } => {
            stats.record_failure(ev, false, &reason);
            tracing::warn!(trigger = %label, id = %ev.id, %reason, "event dropped");
            Some(format!("dropped: {reason}"))
        }
    };
    if let (Some(tap), Some(said)) = (tap, said) {
        tap.offer_outcome(label, ev.clone(), said);
    }
    delivered
}
