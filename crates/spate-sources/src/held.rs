//! The one acknowledgement path of every source that holds messages upstream
//! (RabbitMQ deliveries, Redis stream entries, SQS messages, S3 objects): a
//! message is acknowledged (acked, XACKed, deleted) only after the sink or the
//! dead-letter sink accepted its event, and at most `in_flight` are out at once.
//! If the source stops first, nothing is acknowledged: the message stays
//! upstream and comes again. (A KafkaSource commits offsets instead, through
//! `spate_core::acks::AckTracker`, the bookkeeping triggers use too.)

use std::future::Future;
use std::sync::Arc;

use spate_core::CloudEvent;
use tokio::sync::{Semaphore, watch};

use crate::emit::Emitter;

#[derive(Clone)]
pub(crate) struct Held {
    emitter: Arc<Emitter>,
    permits: Arc<Semaphore>,
    in_flight: u32,
    stop: watch::Receiver<bool>,
}

impl Held {
    pub(crate) fn new(emitter: Arc<Emitter>, in_flight: u32, stop: watch::Receiver<bool>) -> Held {
        let in_flight = in_flight.max(1);
        Held { emitter, permits: Arc::new(Semaphore::new(in_flight as usize)), in_flight, stop }
    }

    /// Waits for room, then delivers `ev` and, once it was accepted, runs `ack`.
    /// With one in flight the next message waits for this one: upstream order is kept.
    /// Returns false when the source is stopping (nothing was started).
    pub(crate) async fn deliver<A, F>(&self, ev: CloudEvent, ack: A) -> bool
    where
        A: FnOnce() -> F + Send + 'static,
        F: Future<Output = Result<(), String>> + Send,
    {
        let mut stop = self.stop.clone();
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
            _ = stop.wait_for(|s| *s) => return false,
        };
        let (emitter, stop) = (self.emitter.clone(), self.stop.clone());
        tokio::spawn(async move {
            if emitter.emit_until_accepted(ev, &stop).await
                && let Err(e) = ack().await
            {
                // The message comes again (at-least-once); the sink sees it twice.
                tracing::warn!(source = %emitter.label, error = %e, "could not acknowledge upstream after the sink accepted");
            }
            drop(permit);
        });
        true
    }

    pub(crate) fn label(&self) -> &str {
        &self.emitter.label
    }

    /// Counts a message the source could not emit at all (`failed`, `lastError`).
    pub(crate) fn record_failure(&self, why: String) {
        self.emitter.stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.emitter.stats.last_error.lock().expect("stats") = Some(why);
    }

    /// Records how much waits upstream (see [`crate::driver::Lag`]).
    pub(crate) fn set_lag(&self, lag: u64) {
        crate::driver::Lag::set(&self.emitter.stats, &self.emitter.label, lag);
    }

    /// Waits until every delivery started has finished (acknowledged, or given up on stop).
    pub(crate) async fn drain(&self) {
        let _ = self.permits.acquire_many(self.in_flight).await;
    }
}
