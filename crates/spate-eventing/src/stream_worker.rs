//! A Trigger on a shared engine's stream (a `NatsJetStreamBroker`): it reads
//! through a durable consumer shared by every Spate instance, so each event
//! is handed to one instance. Per message: filtered here (a non-match is
//! acknowledged at once), delivered through the one dispatcher while
//! "in progress" keeps the claim, then acknowledged whatever the outcome
//! (delivered, dead-lettered, dropped and counted). The engine bounds what
//! is unacknowledged to `max_in_flight` across instances, so a crash
//! redelivers at most that many.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::collections::HashMap;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use spate_core::storage;
use spate_delivery::{BoxFuture, Dispatcher};
use spate_log::{Acker, ConsumerOptions, Message, MessageStream, Throttle};
use tokio::sync::watch;

use crate::broker::Broker;
use crate::trigger::{Shared, TriggerStats, WorkerPlan, deliver};

/// How long a worker waits for its consumer to come back before creating it again.
const RECREATE_AFTER: Duration = Duration::from_secs(10);

/// How long an acknowledgement may take. On a connection that was cut but
/// not yet noticed, an engine client's ack can wait for ever; the worker
/// must not (the engine hands the message out again: at least once).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Finding or creating the durable consumer may take this long before it is tried again.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(15);

/// A consumer that handed out nothing for this long, while this worker holds
/// nothing and the engine says messages wait for the trigger, is made again:
/// a pull subscription can outlive the engine's restart without erring and
/// without ever handing out another message (seen after kill -9 of nats-server).
const STALLED_AFTER: Duration = Duration::from_secs(30);
const STALL_CHECK: Duration = Duration::from_secs(10);
/// A stall is confirmed by a second look this much later: what waits has not gone down.
const STALL_CONFIRM: Duration = Duration::from_secs(2);

/// Acknowledges within [`ACK_TIMEOUT`]; `what` names the operation in errors.
async fn bounded(what: &str, op: BoxFuture<'_, Result<(), spate_log::LogError>>) -> Result<(), String> {
    match tokio::time::timeout(ACK_TIMEOUT, op).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{what} not done within {ACK_TIMEOUT:?}")),
    }
}

pub(crate) struct StreamWorker {
    /// Shared with the running task (one copy per trigger).
    pub plan: Arc<WorkerPlan>,
    pub stream: Arc<dyn MessageStream>,
    pub stats: Arc<TriggerStats>,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl StreamWorker {
    /// Creates the durable consumer before returning (a new trigger sees every
    /// event accepted after `apply` returned), then consumes in the background.
    /// If the engine is unreachable the worker keeps trying.
    pub async fn start(
        plan: WorkerPlan,
        stream: Arc<dyn MessageStream>,
        broker: Option<Arc<Broker>>,
        dispatcher: Dispatcher,
        ack_wait: Duration,
    ) -> StreamWorker {
        let options = ConsumerOptions { max_in_flight: plan.max_in_flight.max(1), ack_wait };
        let first = stream.consumer(&plan.consumer(), options.clone(), true).await;
        if let Err(e) = &first {
            tracing::warn!(trigger = %plan.consumer(), error = %e, "cannot create the durable consumer yet; retrying");
        }
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(TriggerStats::default());
        let plan = Arc::new(plan);
        let shared = Shared::new(plan.clone(), dispatcher, broker, stats.clone());
        let run = Run { shared, stream: stream.clone(), options };
        let handle = tokio::spawn(run.run(first.ok(), stop_rx));
        StreamWorker { plan, stream, stats, stop, handle }
    }

    /// Stops consuming; unacknowledged messages go back to the engine after the ack wait.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

struct Run {
    shared: Arc<Shared>,
    stream: Arc<dyn MessageStream>,
    options: ConsumerOptions,
}

/// A message being delivered: since when, and its acknowledgement handle
/// (kept so that one timer per worker, not one per message, keeps claims alive).
struct Held {
    since: Instant,
    acker: Arc<dyn Acker>,
}

/// Deliveries in progress, polled by the worker's own task: no task spawned
/// and no timer armed per message. Each resolves to its id in `held`.
type Running = FuturesUnordered<BoxFuture<'static, u64>>;

impl Run {
    async fn run(self, mut consumer: Option<Box<dyn spate_log::StreamConsumer>>, mut stop: watch::Receiver<bool>) {
        let errors = Throttle::default();
        let mut running: Running = FuturesUnordered::new();
        let mut held: HashMap<u64, Held> = HashMap::new();
        let mut next_id = 0u64;
        let max = self.options.max_in_flight;
        let label = self.shared.label.clone();
        // "In progress" for every message held longer than a third of the ack wait.
        let every = (self.options.ack_wait / 3).max(Duration::from_millis(10));
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Since when the consumer has been missing: it is re-created only if it
        // stays missing this long (long enough for a deletion elsewhere to stop this worker).
        let mut missing_since: Option<Instant> = None;
        let mut stall_check = tokio::time::interval_at(tokio::time::Instant::now() + STALL_CHECK, STALL_CHECK);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_message = tokio::time::Instant::now();
        // Stalls in a row (30 s each with messages waiting and none handed out).
        let mut stalls = 0u32;
        loop {
            let Some(c) = consumer.as_mut() else {
                let since = *missing_since.get_or_insert_with(Instant::now);
                let create = since.elapsed() >= RECREATE_AFTER;
                let found =
                    tokio::time::timeout(CONSUMER_TIMEOUT, self.stream.consumer(&label, self.options.clone(), create))
                        .await
                        .unwrap_or_else(|_| {
                            Err(spate_log::LogError::Unavailable("finding the consumer timed out".into()))
                        });
                match found {
                    Ok(c) => {
                        consumer = Some(c);
                        missing_since = None;
                        last_message = tokio::time::Instant::now();
                    }
                    Err(e) => {
                        if let Some(suppressed) = errors.allow() {
                            tracing::warn!(trigger = %label, error = %e, suppressed, "consumer unavailable; retrying every second");
                        }
                        tokio::select! {
                            _ = stop.changed() => break,
                            Some(id) = running.next(), if !running.is_empty() => settle(&mut held, &mut running, id, &label).await,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
                continue;
            };
            let room = running.len() < max;
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(id) = running.next(), if !running.is_empty() => settle(&mut held, &mut running, id, &label).await,
                _ = beat.tick() => keep_claims(&held, every).await,
                _ = stall_check.tick(), if running.is_empty() && last_message.elapsed() >= STALLED_AFTER => {
                    last_message = tokio::time::Instant::now();
                    stalls = self.unstall(&label, stalls).await;
                    if stalls > 0 {
                        consumer = None;
                    }
                }
                m = c.next(), if room => match m {
                    Ok(m) => {
                        last_message = tokio::time::Instant::now();
                        stalls = 0;
                        if let Some(acker) = self.take(m, &mut running, next_id).await {
                            held.insert(next_id, Held { since: Instant::now(), acker });
                            next_id += 1;
                        }
                    }
                    Err(e) => {
                        if let Some(suppressed) = errors.allow() {
                            tracing::warn!(trigger = %label, error = %e, suppressed, "consuming failed; reconnecting the consumer");
                        }
                        consumer = None;
                    }
                },
            }
            self.shared.stats.in_flight.store(running.len() as u64, Ordering::Relaxed);
        }
        // Unacknowledged messages return to the engine (another instance takes them).
        drop(running);
    }

    /// After [`STALLED_AFTER`] with nothing handed out and nothing held: if the
    /// engine says messages could be handed out, the subscription is made again
    /// (the caller drops it); if that already happened once in a row, the
    /// engine's consumer itself is made again from its acknowledgement floor
    /// (nats-server 2.9 restored a consumer after its own kill -9 that kept
    /// saying messages wait and never handed them out). Returns the stalls in a row.
    async fn unstall(&self, label: &str, stalls: u32) -> u32 {
        let Some(waiting) = self.deliverable(label).await else { return 0 };
        // Someone is pulling (another instance, under light traffic): not stalled.
        tokio::time::sleep(STALL_CONFIRM).await;
        if self.deliverable(label).await.is_none_or(|again| again < waiting) {
            return 0;
        }
        if stalls == 0 {
            tracing::warn!(trigger = %label, waiting, "the consumer handed out nothing for 30 s while messages wait; subscribing again");
            return 1;
        }
        let reset = self.stream.reset_consumer(label, self.options.clone());
        match tokio::time::timeout(CONSUMER_TIMEOUT, reset).await {
            Ok(Ok(())) => {
                tracing::warn!(trigger = %label, waiting, "still nothing handed out: the consumer was made again from its acknowledgement floor")
            }
            Ok(Err(e)) => {
                tracing::warn!(trigger = %label, error = %e, "the stalled consumer could not be made again; trying later")
            }
            Err(_) => tracing::warn!(trigger = %label, "making the stalled consumer again timed out; trying later"),
        }
        stalls + 1
    }

    /// How many messages the engine could hand this trigger now, if any (and if it answers in time).
    async fn deliverable(&self, label: &str) -> Option<u64> {
        match tokio::time::timeout(Duration::from_secs(5), self.stream.deliverable(label)).await {
            Ok(Ok(n)) if n > 0 => Some(n),
            _ => None,
        }
    }

    /// Filters one message; a match joins `running` as delivery `id`, and its
    /// acker is returned to be held until [`settle`] acknowledges it.
    async fn take(&self, m: Message, running: &mut Running, id: u64) -> Option<Arc<dyn Acker>> {
        let ev = match storage::decode(&m.payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(trigger = %self.shared.label, error = %e, "dropping an unreadable message");
                metrics::counter!("spate_events_dropped_total", "sender" => self.shared.label.clone(), "reason" => "unreadable").increment(1);
                let _ = bounded("ack", m.acker.ack()).await;
                return None;
            }
        };
        if !self.shared.plan().filter.matches_guarded(&ev) {
            let _ = bounded("ack", m.acker.ack()).await;
            return None;
        }
        let shared = self.shared.clone();
        let acker = m.acker;
        // Each earlier hand-out (an instance that died holding it) made at least
        // one attempt: the retry budget continues from there, not from zero.
        let budget = crate::trigger::Budget { spent: m.delivered.saturating_sub(1), on_retry: None };
        running.push(Box::pin(async move {
            // A panic (a bug) still ends the event.
            let outcome = std::panic::AssertUnwindSafe(deliver(&shared, &ev, budget)).catch_unwind().await;
            if outcome.is_err() {
                metrics::counter!("spate_events_dropped_total", "sender" => shared.label.clone(), "reason" => "delivery_panicked").increment(1);
                tracing::error!(trigger = %shared.label, "a delivery panicked; the event is dropped and counted");
            }
            id
        }));
        Some(acker)
    }
}

/// Acknowledges delivery `id` and every other delivery already finished, back
/// to back, so that the engine reads them together and hands out as many new
/// messages at once (not one message per acknowledgement).
async fn settle(held: &mut HashMap<u64, Held>, running: &mut Running, id: u64, label: &str) {
    let mut done = vec![];
    let mut next = Some(id);
    while let Some(id) = next {
        done.extend(held.remove(&id));
        next = running.next().now_or_never().flatten();
    }
    // Sent together (an ack that hangs on a cut connection holds up none of the others).
    let acks = done.iter().map(|h| bounded("ack", h.acker.ack()));
    let failed: Vec<String> = futures_util::future::join_all(acks).await.into_iter().filter_map(Result::err).collect();
    if let Some(e) = failed.first() {
        // The engine will hand them out again after the ack wait: at least once.
        tracing::warn!(trigger = %label, error = %e, count = failed.len(), "ack failed; the events may be delivered again");
    }
}

/// Tells the engine "still working" for every message held longer than `after`.
async fn keep_claims(held: &HashMap<u64, Held>, after: Duration) {
    for h in held.values().filter(|h| h.since.elapsed() >= after) {
        let _ = bounded("in progress", h.acker.in_progress()).await;
    }
}
