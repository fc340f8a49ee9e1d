//! Knative's KPA decision, without IO: samples of the revision's load go in
//! (concurrency, request rate or backlog), a desired instance count comes out.
//!
//! - Stable mode: desired = ⌈average over the stable `window` / effective target⌉,
//!   where the effective target is `target × utilization` (backlog: `target`).
//! - Panic mode: entered when the average over the panic window (a percentage of
//!   the stable window) asks for ≥ `panic-threshold-percentage` of the ready
//!   instances (or any load at zero); lasts a stable window after the last
//!   panic condition; in panic the count never goes down.
//! - Scale to zero only after a whole stable window without load, and not
//!   before `scale-to-zero-pod-retention-period` since the last load.
//! - The result is clamped to `[min-scale, max-scale]` (and the server's cap).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use spate_api::{Autoscaling, ScaleMetric};

pub struct Kpa {
    cfg: Autoscaling,
    /// Upper bound when `max-scale` is 0.
    cap: u32,
    samples: VecDeque<(Instant, f64)>,
    panic_until: Option<Instant>,
    last_active: Option<Instant>,
    last_desired: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub panic: bool,
    pub stable_average: f64,
    pub panic_average: f64,
}

impl Kpa {
    pub fn new(cfg: Autoscaling, cap: u32) -> Kpa {
        let initial = cfg.initial_scale.max(cfg.min_scale);
        Kpa { cfg, cap, samples: VecDeque::new(), panic_until: None, last_active: None, last_desired: initial }
    }

    fn effective_target(&self) -> f64 {
        match self.cfg.metric {
            ScaleMetric::Backlog => self.cfg.target,
            _ => (self.cfg.target * self.cfg.target_utilization / 100.0).max(0.01),
        }
    }

    fn panic_window(&self) -> Duration {
        self.cfg.window.mul_f64(self.cfg.panic_window_percentage / 100.0)
    }

    /// Records one observation of the load at `now`.
    pub fn record(&mut self, now: Instant, load: f64) {
        if load > 0.0 {
            self.last_active = Some(now);
        }
        self.samples.push_back((now, load));
        while self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > self.cfg.window) {
            self.samples.pop_front();
        }
    }

    fn average(&self, now: Instant, span: Duration) -> f64 {
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| now.duration_since(*t) <= span)
            .fold((0.0, 0u32), |(s, n), (_, v)| (s + v, n + 1));
        if n == 0 { 0.0 } else { sum / f64::from(n) }
    }

    /// The desired instance count, given how many are ready now.
    pub fn decide(&mut self, now: Instant, ready: u32) -> Decision {
        let target = self.effective_target();
        let stable_average = self.average(now, self.cfg.window);
        let panic_average = self.average(now, self.panic_window());
        let stable = (stable_average / target).ceil() as u32;
        let panicky = (panic_average / target).ceil() as u32;
        let threshold = self.cfg.panic_threshold_percentage / 100.0;
        let panic_condition =
            if ready == 0 { panic_average > 0.0 } else { f64::from(panicky) / f64::from(ready) >= threshold };
        if panic_condition {
            self.panic_until = Some(now + self.cfg.window);
        }
        let panic = self.panic_until.is_some_and(|t| now < t);
        // In panic the count never goes down.
        let mut desired = if panic { panicky.max(stable).max(self.last_desired) } else { stable };
        // Retention: keep one instance for a while after the last load.
        if desired == 0 && self.last_active.is_some_and(|t| now.duration_since(t) < self.cfg.scale_to_zero_retention) {
            desired = 1;
        }
        let max = if self.cfg.max_scale == 0 { self.cap } else { self.cfg.max_scale.min(self.cap) };
        desired = desired.max(self.cfg.min_scale).min(max.max(self.cfg.min_scale));
        self.last_desired = desired;
        Decision { desired, panic, stable_average, panic_average }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(target: f64, window_s: u64) -> Autoscaling {
        Autoscaling {
            target,
            target_utilization: 100.0,
            window: Duration::from_secs(window_s),
            ..Autoscaling::default()
        }
    }

    /// Feeds `load` every 100 ms for `ms` and returns the last decision.
    fn run(k: &mut Kpa, t: &mut Instant, ms: u64, load: f64, ready: &mut u32) -> Decision {
        let mut d = k.decide(*t, *ready);
        for _ in 0..ms / 100 {
            *t += Duration::from_millis(100);
            k.record(*t, load);
            d = k.decide(*t, *ready);
            *ready = d.desired;
        }
        d
    }

    #[test]
    fn load_at_zero_panics_up_at_once_and_the_stable_window_brings_it_down() {
        let mut k = Kpa::new(cfg(1.0, 6), 100);
        let mut t = Instant::now();
        let mut ready = 0;
        k.record(t, 10.0);
        let d = k.decide(t, 0);
        assert!(d.panic && d.desired == 10, "{d:?}");
        let d = run(&mut k, &mut t, 3000, 10.0, &mut ready);
        assert_eq!(d.desired, 10);
        // Load stops: panic holds the count for a window, then stable averaging decays to zero.
        let d = run(&mut k, &mut t, 1000, 0.0, &mut ready);
        assert_eq!(d.desired, 10, "no scale-down in panic");
        let d = run(&mut k, &mut t, 13_000, 0.0, &mut ready);
        assert_eq!(d.desired, 0, "{d:?}");
    }

    #[test]
    fn bounds_utilization_and_retention() {
        let mut a = cfg(10.0, 6);
        a.target_utilization = 50.0;
        a.max_scale = 3;
        a.min_scale = 1;
        let mut k = Kpa::new(a, 100);
        let t = Instant::now();
        k.record(t, 12.0);
        assert_eq!(k.decide(t, 1).desired, 3, "⌈12 / (10 × 50%)⌉ = 3, also max-scale");
        let mut k = Kpa::new(cfg(10.0, 6), 2);
        k.record(t, 1000.0);
        assert_eq!(k.decide(t, 0).desired, 2, "the server cap applies when max-scale is unset");

        let mut a = cfg(1.0, 6);
        a.scale_to_zero_retention = Duration::from_secs(20);
        let mut k = Kpa::new(a, 100);
        let mut t = Instant::now();
        let mut ready = 0;
        k.record(t, 1.0);
        run(&mut k, &mut t, 15_000, 0.0, &mut ready);
        assert_eq!(k.decide(t, ready).desired, 1, "retained 15 s after the last request");
        run(&mut k, &mut t, 6_000, 0.0, &mut ready);
        assert_eq!(k.decide(t, ready).desired, 0);
    }

    #[test]
    fn backlog_target_is_per_instance_without_utilization() {
        let a = Autoscaling { metric: ScaleMetric::Backlog, target: 100.0, ..Autoscaling::default() };
        let mut k = Kpa::new(a, 100);
        let t = Instant::now();
        k.record(t, 450.0);
        assert_eq!(k.decide(t, 0).desired, 5);
    }
}
