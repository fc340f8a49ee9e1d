//! The one way a source sends: ceOverrides applied, then the dispatcher with
//! the source's retry policy and dead-letter sink, and the per-source counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use spate_core::delivery::{DeliveryFormat, RetryPolicy};
use spate_core::{CloudEvent, ExtValue};
use spate_delivery::{DeliveryRequest, DiscardReplies, Dispatcher, Outcome};

/// Counters a source keeps while it runs (shown in status and as metrics).
#[derive(Default, Debug)]
pub struct SourceStats {
    /// Events the sink accepted.
    pub emitted: AtomicU64,
    /// Events the dead-letter sink took after the sink refused them.
    pub dead_lettered: AtomicU64,
    /// Delivery rounds that ended with neither the sink nor a dead-letter sink accepting.
    pub failed: AtomicU64,
    /// Records waiting upstream (Kafka: end offset − committed offset, summed over partitions).
    pub lag: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl SourceStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            emitted: self.emitted.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            lag: self.lag.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("stats").clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub emitted: u64,
    pub dead_lettered: u64,
    pub failed: u64,
    pub lag: u64,
    pub last_error: Option<String>,
}

/// Where and how a source delivers.
pub struct Emitter {
    pub dispatcher: Dispatcher,
    pub sink: spate_delivery::ParsedUrl,
    pub dead_letter_sink: Option<spate_delivery::ParsedUrl>,
    pub policy: RetryPolicy,
    pub format: DeliveryFormat,
    pub overrides: Vec<(String, String)>,
    pub namespace: String,
    /// `pingsource/<ns>/<name>`: the metric label.
    pub label: String,
    pub stats: std::sync::Arc<SourceStats>,
}

impl Emitter {
    /// Applies ceOverrides, delivers, counts. `Delivered` and `DeadLettered` are final:
    /// only then may a source acknowledge upstream.
    pub async fn emit(&self, mut ev: CloudEvent) -> Outcome {
        for (k, v) in &self.overrides {
            ev.set_extension(k, ExtValue::String(v.clone()));
        }
        let req = DeliveryRequest {
            subscriber: &self.sink,
            policy: &self.policy,
            format: self.format,
            namespace: &self.namespace,
            dead_letter_sink: self.dead_letter_sink.as_ref(),
            label: &self.label,
            retries: None,
            spent: 0,
            on_retry: None,
        };
        let outcome = self.dispatcher.deliver(&ev, &req, &DiscardReplies).await;
        let (counter, result) = match &outcome {
            Outcome::Delivered { .. } => (&self.stats.emitted, "emitted"),
            Outcome::DeadLettered { last_error, .. } => {
                *self.stats.last_error.lock().expect("stats") = Some(format!("dead-lettered: {last_error}"));
                (&self.stats.dead_lettered, "dead_lettered")
            }
            Outcome::Dropped { reason, .. } => {
                *self.stats.last_error.lock().expect("stats") = Some(reason.clone());
                (&self.stats.failed, "failed")
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("spate_source_events_total", "source" => self.label.clone(), "result" => result).increment(1);
        outcome
    }

    /// Emits until the sink or the dead-letter sink accepts, waiting between rounds (capped
    /// exponential backoff). For sources that hold the event upstream: nothing is lost, and
    /// an event nobody accepts holds its place (and shows as lag) instead of being dropped.
    pub async fn emit_until_accepted(&self, ev: CloudEvent, stop: &tokio::sync::watch::Receiver<bool>) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.emit(ev.clone()).await {
                Outcome::Delivered { .. } | Outcome::DeadLettered { .. } => return true,
                Outcome::Dropped { reason, .. } => {
                    tracing::warn!(source = %self.label, id = %ev.id, error = %reason, retry_in_ms = wait.as_millis() as u64,
                        "nobody accepted the event; it stays upstream and is retried");
                }
            }
            if *stop.borrow() {
                return false;
            }
            let mut stop = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return false,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// A random version-4 UUID for event ids.
pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Now, as an RFC 3339 timestamp with milliseconds.
pub use spate_core::rules::now_rfc3339;
