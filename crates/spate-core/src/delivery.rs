//! Delivery policy maths: which responses are retried and how long to wait.
//! Pure functions; the dispatcher in `spate-delivery` does the sending.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPolicy {
    Linear,
    Exponential,
}

/// How events are encoded when sent to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryFormat {
    #[default]
    Binary,
    Json,
}

/// A resolved retry policy (Knative's DeliverySpec minus the dead-letter sink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Upper bound on a Retry-After wait; `Some(0)` ignores Retry-After.
    pub retry_after_max: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Knative's broker default: 10 retries, exponential, PT0.2S.
    fn default() -> Self {
        RetryPolicy {
            retry: 10,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: Duration::from_millis(200),
            timeout: None,
            retry_after_max: None,
        }
    }
}

/// Whether a status code is worth another attempt: 404, 408, 409, 429 and 5xx.
/// Other 4xx mean the request itself is wrong and will stay wrong.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 404 | 408 | 409 | 429) || (500..600).contains(&status)
}

impl RetryPolicy {
    /// Backoff before retry `k` (1-based): linear `d*k`, exponential `d*2^(k-1)`.
    pub fn backoff(&self, k: u32) -> Duration {
        let k = k.max(1);
        match self.backoff_policy {
            BackoffPolicy::Linear => self.backoff_delay.saturating_mul(k),
            BackoffPolicy::Exponential => self.backoff_delay.saturating_mul(2u32.saturating_pow((k - 1).min(31))),
        }
    }

    /// Wait before retry `k` after a response with `status` and an optional
    /// Retry-After value: the larger of the backoff and Retry-After (429/503
    /// only), Retry-After capped by `retry_after_max`.
    pub fn wait_before_retry(&self, k: u32, status: Option<u16>, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(k);
        match (status, retry_after) {
            (Some(429 | 503), Some(ra)) => {
                let ra = self.retry_after_max.map_or(ra, |max| ra.min(max));
                backoff.max(ra)
            }
            _ => backoff,
        }
    }
}

/// Parses a Retry-After header: delay-seconds or an HTTP-date, relative to `now_unix`.
pub fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u32 = parts[1].parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == parts[2])? as u32
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<u32> = parts[4].split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    let t = crate::rules::days_from_civil(year, month, day) * 86_400 + i64::from(hms[0] * 3600 + hms[1] * 60 + hms[2]);
    Some(Duration::from_secs(u64::try_from(t - now_unix).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: BackoffPolicy, retry_after_max: Option<Duration>) -> RetryPolicy {
        RetryPolicy {
            retry: 5,
            backoff_policy: p,
            backoff_delay: Duration::from_millis(100),
            timeout: None,
            retry_after_max,
        }
    }

    #[test]
    fn backoff_table() {
        let lin = policy(BackoffPolicy::Linear, None);
        let exp = policy(BackoffPolicy::Exponential, None);
        for (k, l, e) in [(1, 100, 100), (2, 200, 200), (3, 300, 400), (4, 400, 800), (5, 500, 1600)] {
            assert_eq!(lin.backoff(k), Duration::from_millis(l), "linear k={k}");
            assert_eq!(exp.backoff(k), Duration::from_millis(e), "exponential k={k}");
        }
    }

    #[test]
    fn retryable_statuses() {
        for s in [404, 408, 409, 429, 500, 502, 503, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 202, 400, 401, 403, 405, 410, 413, 415, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_rules() {
        let p = policy(BackoffPolicy::Linear, Some(Duration::from_secs(2)));
        let ra = Some(Duration::from_secs(5));
        assert_eq!(p.wait_before_retry(1, Some(429), ra), Duration::from_secs(2), "capped by retryAfterMax");
        assert_eq!(
            p.wait_before_retry(1, Some(503), Some(Duration::from_millis(10))),
            Duration::from_millis(100),
            "backoff when larger"
        );
        assert_eq!(p.wait_before_retry(1, Some(500), ra), Duration::from_millis(100), "only 429 and 503");
        let off = policy(BackoffPolicy::Linear, Some(Duration::ZERO));
        assert_eq!(off.wait_before_retry(1, Some(429), ra), Duration::from_millis(100), "PT0S disables");
        let uncapped = policy(BackoffPolicy::Linear, None);
        assert_eq!(uncapped.wait_before_retry(1, Some(429), ra), Duration::from_secs(5));
        assert_eq!(parse_retry_after("3", 0), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", 4), Some(Duration::from_secs(6)));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
