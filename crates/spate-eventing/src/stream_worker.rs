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

use futures_util::FutureExt;
use spate_core::storage;
use spate_delivery::Dispatcher;
use spate_log::{ConsumerOptions, Message, MessageStream, Throttle};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::trigger::{Shared, TriggerStats, WorkerPlan, deliver};

/// How long a worker waits for its consumer to come back before creating it again.
const RECREATE_AFTER: Duration = Duration::from_secs(10);

pub(crate) struct StreamWorker {
    pub plan: WorkerPlan,
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
        let shared = Shared::new(Arc::new(plan.clone()), dispatcher, broker, stats.clone());
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

impl Run {
    async fn run(self, mut consumer: Option<Box<dyn spate_log::StreamConsumer>>, mut stop: watch::Receiver<bool>) {
        let errors = Throttle::default();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let max = self.options.max_in_flight;
        let label = self.shared.label.clone();
        // Since when the consumer has been missing: it is re-created only if it
        // stays missing this long (long enough for a deletion elsewhere to stop this worker).
        let mut missing_since: Option<std::time::Instant> = None;
        loop {
            let Some(c) = consumer.as_mut() else {
                let since = *missing_since.get_or_insert_with(std::time::Instant::now);
                let create = since.elapsed() >= RECREATE_AFTER;
                match self.stream.consumer(&label, self.options.clone(), create).await {
                    Ok(c) => {
                        consumer = Some(c);
                        missing_since = None;
                    }
                    Err(e) => {
                        if let Some(suppressed) = errors.allow() {
                            tracing::warn!(trigger = %label, error = %e, suppressed, "consumer unavailable; retrying every second");
                        }
                        tokio::select! {
                            _ = stop.changed() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
                continue;
            };
            let room = tasks.len() < max;
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                m = c.next(), if room => match m {
                    Ok(m) => self.take(m, &mut tasks).await,
                    Err(e) => {
                        if let Some(suppressed) = errors.allow() {
                            tracing::warn!(trigger = %label, error = %e, suppressed, "consuming failed; reconnecting the consumer");
                        }
                        consumer = None;
                    }
                },
            }
            self.shared.stats.in_flight.store(tasks.len() as u64, Ordering::Relaxed);
        }
        // Unacknowledged messages return to the engine (another instance takes them).
        tasks.abort_all();
    }

    /// Filters one message; a match is delivered in its own task.
    async fn take(&self, m: Message, tasks: &mut JoinSet<()>) {
        let ev = match storage::decode(&m.payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(trigger = %self.shared.label, error = %e, "dropping an unreadable message");
                metrics::counter!("spate_events_dropped_total", "sender" => self.shared.label.clone(), "reason" => "unreadable").increment(1);
                let _ = m.acker.ack().await;
                return;
            }
        };
        if !self.shared_plan_matches(&ev) {
            let _ = m.acker.ack().await;
            return;
        }
        let shared = self.shared.clone();
        let beat = self.options.ack_wait / 3;
        tasks.spawn(async move {
            let acker = m.acker;
            let label = shared.label.clone();
            // Deliver while keeping the claim alive; a panic (a bug) still ends the event.
            let delivery = std::panic::AssertUnwindSafe(deliver(&shared, &ev)).catch_unwind();
            tokio::pin!(delivery);
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
            let outcome = loop {
                tokio::select! {
                    r = &mut delivery => break r,
                    _ = beat.tick() => { let _ = acker.in_progress().await; }
                }
            };
            if outcome.is_err() {
                metrics::counter!("spate_events_dropped_total", "sender" => label.clone(), "reason" => "delivery_panicked").increment(1);
                tracing::error!(trigger = %label, "a delivery panicked; the event is dropped and counted");
            }
            if let Err(e) = acker.ack().await {
                // The engine will hand it out again after the ack wait: at least once.
                tracing::warn!(trigger = %label, error = %e, "ack failed; the event may be delivered again");
            }
        });
    }

    fn shared_plan_matches(&self, ev: &spate_core::CloudEvent) -> bool {
        self.shared.plan().filter.matches_guarded(ev)
    }
}
