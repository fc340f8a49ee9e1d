use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spate_api::TriggerConfig;
use spate_core::delivery::{DeliveryFormat, RetryPolicy};
use spate_core::{CloudEvent, ExtValue, ext, storage};
use spate_delivery::{BoxFuture, DeliveryRequest, Dispatcher, Outcome, ReplySink};
use spate_log::Offset;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::{Broker, PublishError};

/// Everything a worker needs, resolved by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerPlan {
    pub config: TriggerConfig,
    pub subscriber_url: String,
    pub dead_letter_url: Option<String>,
    pub policy: RetryPolicy,
    pub format: DeliveryFormat,
    pub max_in_flight: usize,
}

/// Live counters of one trigger worker.
#[derive(Debug, Default)]
pub struct TriggerStats {
    pub delivered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub in_flight: AtomicU64,
}

pub(crate) struct TriggerWorker {
    pub plan: TriggerPlan,
    pub stats: Arc<TriggerStats>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl TriggerWorker {
    pub fn start(plan: TriggerPlan, broker: Arc<Broker>, dispatcher: Dispatcher) -> Self {
        // A new trigger sees events that arrive after it is Ready, as in Knative.
        // The start is recorded here, before `apply` returns, not when the task
        // first runs: an event sent right after `apply` must not be skipped.
        let consumer = crate::trigger_consumer(&plan.config.namespace, &plan.config.name);
        if broker.log.committed(&consumer).is_none()
            && let Err(e) = broker.log.commit(&consumer, broker.log.end_offset())
        {
            tracing::error!(consumer = %consumer, error = %e, "cannot record the trigger's starting offset");
        }
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(TriggerStats::default());
        let run = Run { plan: Arc::new(plan.clone()), broker, dispatcher, stats: stats.clone() };
        let handle = tokio::spawn(run.run(stop_rx));
        TriggerWorker { plan, stats, stop, handle }
    }

    /// Stops the worker; in-flight deliveries are abandoned uncommitted and
    /// will be redelivered by the next worker on this consumer.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

struct Run {
    plan: Arc<TriggerPlan>,
    broker: Arc<Broker>,
    dispatcher: Dispatcher,
    stats: Arc<TriggerStats>,
}

/// What each delivery task shares: one `Arc` clone per event, metric handles
/// resolved once per worker rather than per event.
struct Shared {
    plan: Arc<TriggerPlan>,
    dispatcher: Dispatcher,
    broker: Arc<Broker>,
    stats: Arc<TriggerStats>,
    label: String,
    delivered: metrics::Counter,
    duration: metrics::Histogram,
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

impl Run {
    fn consumer(&self) -> String {
        crate::trigger_consumer(&self.plan.config.namespace, &self.plan.config.name)
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let log = self.broker.log.clone();
        let consumer = self.consumer();
        let label = format!("trigger/{}/{}", self.plan.config.namespace, self.plan.config.name);
        let mut next = log.committed(&consumer).unwrap_or_else(|| log.end_offset()).max(log.start_offset());
        let mut committed = next;
        let mut end_rx = log.watch_end();
        let mut pending: BTreeSet<Offset> = BTreeSet::new();
        let mut tasks: JoinSet<Offset> = JoinSet::new();
        let mut buf: VecDeque<spate_log::Record> = VecDeque::new();
        let backlog = metrics::gauge!("spate_trigger_backlog", "trigger" => label.clone());
        let shared = Arc::new(Shared {
            plan: self.plan.clone(),
            dispatcher: self.dispatcher.clone(),
            broker: self.broker.clone(),
            stats: self.stats.clone(),
            label: label.clone(),
            delivered: metrics::counter!("spate_events_delivered_total", "sender" => label.clone()),
            duration: metrics::histogram!("spate_delivery_duration_seconds", "sender" => label.clone()),
        });
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Ok(off) = done {
                    pending.remove(&off);
                }
            }
            let can_commit = pending.first().copied().unwrap_or(next);
            if can_commit != committed {
                match log.commit(&consumer, can_commit) {
                    Ok(()) => committed = can_commit,
                    Err(e) => {
                        tracing::error!(trigger = %label, error = %e, "commit failed; will retry")
                    }
                }
            }
            self.stats.in_flight.store(tasks.len() as u64, Ordering::Relaxed);
            if buf.is_empty() {
                end_rx.borrow_and_update();
                let end = log.end_offset();
                backlog.set(end.saturating_sub(committed) as f64);
                if next < end {
                    match log.read(next, 256).await {
                        Ok(recs) => buf.extend(recs),
                        Err(e) => {
                            tracing::error!(trigger = %label, error = %e, "log read failed; retrying in 1s");
                            tokio::select! {
                                _ = stop.changed() => break,
                                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            }
                            continue;
                        }
                    }
                }
                if buf.is_empty() {
                    tokio::select! {
                        biased;
                        _ = stop.changed() => break,
                        Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                            if let Ok(off) = done { pending.remove(&off); }
                        }
                        r = end_rx.changed() => if r.is_err() { break },
                    }
                    continue;
                }
            }
            let rec = buf.pop_front().expect("non-empty");
            if rec.offset < next {
                continue;
            }
            next = rec.offset + 1;
            let ev = match storage::decode(&rec.payload) {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::error!(trigger = %label, offset = rec.offset, error = %e, "skipping an unreadable record");
                    continue;
                }
            };
            if !self.plan.config.filter.matches(&ev) {
                continue;
            }
            while tasks.len() >= self.plan.max_in_flight {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    Some(done) = tasks.join_next() => if let Ok(off) = done { pending.remove(&off); },
                }
            }
            pending.insert(rec.offset);
            let shared = shared.clone();
            let offset = rec.offset;
            tasks.spawn(async move {
                deliver(&shared, ev).await;
                offset
            });
        }
        // Stopping: abandon in-flight deliveries; they stay uncommitted.
        tasks.abort_all();
    }
}

async fn deliver(s: &Shared, ev: CloudEvent) {
    let (plan, label, stats) = (&s.plan, s.label.as_str(), &s.stats);
    let ttl = ev.extension_i64(ext::BROKER_TTL).unwrap_or(i64::from(ext::DEFAULT_BROKER_TTL));
    let replies = BrokerReply { broker: s.broker.clone(), ttl, label };
    let req = DeliveryRequest {
        subscriber: &plan.subscriber_url,
        policy: &plan.policy,
        format: plan.format,
        namespace: &plan.config.namespace,
        dead_letter_sink: plan.dead_letter_url.as_deref(),
        label,
    };
    let started = std::time::Instant::now();
    let outcome = s.dispatcher.deliver(&ev, &req, &replies).await;
    s.duration.record(started.elapsed().as_secs_f64());
    match outcome {
        Outcome::Delivered { .. } => {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            s.delivered.increment(1);
        }
        Outcome::DeadLettered { last_error, .. } => {
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(trigger = %label, id = %ev.id, error = %last_error, "event dead-lettered");
        }
        Outcome::Dropped { reason, .. } => {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(trigger = %label, id = %ev.id, %reason, "event dropped");
        }
    }
}
