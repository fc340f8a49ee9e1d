//! Rate limiting for repeated error logs: a full disk or an unreachable
//! server must not write thousands of identical lines. Each logging site
//! owns a `Throttle`; the first occurrence in a window is logged with the
//! count of those suppressed since the last logged one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    /// When the last line was let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(window: Duration) -> Self {
        Throttle { window, state: Mutex::new((None, 0)) }
    }

    /// `Some(suppressed)` if this occurrence should be logged (with the number
    /// held back since the last logged one); `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match g.0 {
            Some(last) if now.duration_since(last) < self.window => {
                g.1 += 1;
                None
            }
            _ => {
                let suppressed = g.1;
                *g = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

impl Default for Throttle {
    /// One line per 10 seconds.
    fn default() -> Self {
        Throttle::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        for k in 1..1000 {
            assert_eq!(t.allow_at(t0 + Duration::from_millis(k)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(t.allow_at(t0 + Duration::from_secs(11)), None);
    }
}
