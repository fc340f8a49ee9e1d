//! When a reconcile left resources waiting on something outside Spate (a
//! shared engine that did not answer: `StorageUnavailable`), the control
//! plane reconciles again after a backoff — 1 s, doubling, at most 60 s —
//! until nothing waits; a reconcile that leaves nothing waiting resets it.
//! Without it, a Broker whose engine was down when it was applied (or when
//! the server started) would stay down after the engine came back.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first wait, and the longest.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Condition reasons that mean "waiting on the outside world": worth reconciling again.
pub const WAITING_REASONS: &[&str] = &["StorageUnavailable"];

pub struct Retry {
    builder: ExponentialBuilder,
    max: Duration,
    current: Option<ExponentialBackoff>,
}

impl Retry {
    pub fn new(min: Duration, max: Duration) -> Retry {
        let builder =
            ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_factor(2.0).without_max_times();
        Retry { builder, max, current: None }
    }

    /// After a reconcile: how long until the next one, if it left something waiting.
    pub fn after(&mut self, waiting: bool) -> Option<Duration> {
        if !waiting {
            self.current = None;
            return None;
        }
        let builder = self.builder;
        let next = self.current.get_or_insert_with(|| builder.build()).next();
        Some(next.unwrap_or(self.max))
    }
}

/// Whether a stored status has a condition that is False for a reason worth waiting out.
pub fn waiting(status: &serde_json::Value) -> bool {
    status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["status"] == "False" && c["reason"].as_str().is_some_and(|r| WAITING_REASONS.contains(&r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_minimum_to_the_maximum_and_resets() {
        let mut r = Retry::new(RETRY_MIN, Duration::from_secs(8));
        let waits: Vec<u64> = (0..6).map(|_| r.after(true).unwrap().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
        assert_eq!(r.after(false), None, "nothing waits: no retry");
        assert_eq!(r.after(true), Some(RETRY_MIN), "a new wait starts from the minimum");
    }

    #[test]
    fn only_unavailable_storage_is_waited_out() {
        let cond = |reason: &str, status: &str| serde_json::json!({"conditions": [{"type": "Ready", "status": status, "reason": reason}]});
        assert!(waiting(&cond("StorageUnavailable", "False")));
        assert!(!waiting(&cond("ClassNotSupported", "False")), "a wrong manifest stays wrong");
        assert!(!waiting(&cond("StorageUnavailable", "True")));
        assert!(!waiting(&serde_json::Value::Null));
    }

    /// A controller's retry timing on tokio's paused clock: retries at 1, 2, 4 s while waiting.
    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_backoff_on_the_clock() {
        let start = tokio::time::Instant::now();
        let mut r = Retry::new(RETRY_MIN, RETRY_MAX);
        let mut at = vec![];
        let mut still_waiting = 3;
        while let Some(wait) = r.after(still_waiting > 0) {
            tokio::time::sleep(wait).await;
            at.push(start.elapsed().as_secs());
            still_waiting -= 1;
        }
        assert_eq!(at, [1, 3, 7], "reconciled again 1 s, then 2 s, then 4 s later; then nothing waits");
    }
}
