//! One running revision: its instances, its activator (requests wait here
//! for capacity, bounded), and its autoscaler loop.
//!
//! Invariants: an instance takes requests only once ready and never more than
//! `containerConcurrency` at once (picked and counted under one lock); an
//! instance chosen for removal takes no new request, finishes those it has,
//! then gets SIGTERM and, after the grace period, SIGKILL; an instance that
//! exits unexpectedly is replaced, with backoff after repeated failures.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_api::{RevisionTemplate, ScaleMetric};
use tokio::sync::{Notify, oneshot, watch};

use crate::autoscaler::Kpa;
use crate::{BacklogProbe, ServingError};
use spate_process::{self as process, Launch, LogRing};

/// What every revision shares with the serving runtime.
pub(crate) struct Ctx {
    pub client: reqwest::Client,
    pub run_dir: std::path::PathBuf,
    pub grace: Duration,
    pub ready_deadline: Duration,
    pub queue_limit: usize,
    pub cap: u32,
    pub backlog: Option<Arc<dyn BacklogProbe>>,
    /// Instance tasks still running (shutdown waits for them).
    pub live: AtomicUsize,
    pub gone: Notify,
}

struct Live<'a>(&'a Ctx);
impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.gone.notify_waiters();
    }
}

pub(crate) struct Instance {
    pub port: u16,
    pub ready: AtomicBool,
    pub in_flight: AtomicU32,
}

struct Handle {
    inst: Arc<Instance>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Health {
    /// Why the last start or instance failed.
    last_error: Option<String>,
    consecutive: u32,
    last_failure: Option<Instant>,
}

pub struct Revision {
    pub namespace: String,
    pub service: String,
    pub name: String,
    pub template: RevisionTemplate,
    /// The service's address (for the backlog of triggers delivering to it).
    pub address: String,
    ctx: Arc<Ctx>,
    logs: Arc<LogRing>,
    members: Mutex<Vec<Handle>>,
    /// Capacity freed, an instance became ready, or starting failed.
    changed: Notify,
    /// Wakes the autoscaler (a request waits with nothing ready).
    poke: Notify,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    restarts: AtomicU64,
    desired: AtomicU32,
    health: Mutex<Health>,
    stop: watch::Sender<bool>,
    next_id: AtomicU64,
    metrics: Metrics,
}

/// Metric handles, resolved once per revision rather than on every tick.
struct Metrics {
    desired: metrics::Gauge,
    ready: metrics::Gauge,
    concurrency: metrics::Gauge,
    queue: metrics::Gauge,
    cold_start: metrics::Histogram,
}

impl Metrics {
    fn new(namespace: &str, revision: &str) -> Metrics {
        let l = [("namespace", namespace.to_string()), ("revision", revision.to_string())];
        Metrics {
            desired: metrics::gauge!("spate_serving_desired_instances", &l),
            ready: metrics::gauge!("spate_serving_ready_instances", &l),
            concurrency: metrics::gauge!("spate_serving_concurrency", &l),
            queue: metrics::gauge!("spate_serving_queue_depth", &l),
            cold_start: metrics::histogram!("spate_serving_cold_start_seconds", &l),
        }
    }
}

/// A request's claim on one instance; releases the slot when dropped.
pub struct Lease {
    rev: Arc<Revision>,
    inst: Arc<Instance>,
}

impl Lease {
    pub fn port(&self) -> u16 {
        self.inst.port
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inst.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.rev.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.rev.changed.notify_waiters();
    }
}

/// Backoff before starting again after `n` consecutive failures.
fn backoff(n: u32) -> Duration {
    if n == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(100 * (1u64 << (n - 1).min(7))).min(Duration::from_secs(10))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RevisionStatus {
    pub name: String,
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub restarts: u64,
    pub last_error: Option<String>,
}

impl Revision {
    pub(crate) fn start(
        namespace: &str,
        service: &str,
        name: &str,
        template: RevisionTemplate,
        address: String,
        ctx: Arc<Ctx>,
        logs: Arc<LogRing>,
    ) -> Arc<Revision> {
        let (stop, stop_rx) = watch::channel(false);
        let rev = Arc::new(Revision {
            namespace: namespace.into(),
            service: service.into(),
            name: name.into(),
            address,
            ctx,
            logs,
            members: Mutex::new(vec![]),
            changed: Notify::new(),
            poke: Notify::new(),
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            desired: AtomicU32::new(0),
            health: Mutex::new(Health::default()),
            stop,
            next_id: AtomicU64::new(1),
            metrics: Metrics::new(namespace, name),
            template,
        });
        tokio::spawn(rev.clone().scale_loop(stop_rx));
        rev
    }

    pub fn status(&self) -> RevisionStatus {
        let m = self.members.lock().expect("members");
        let ready = m.iter().filter(|h| h.inst.ready.load(Ordering::Acquire)).count() as u32;
        RevisionStatus {
            name: self.name.clone(),
            desired: self.desired.load(Ordering::Relaxed),
            ready,
            starting: m.len() as u32 - ready,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: self.health.lock().expect("health").last_error.clone(),
        }
    }

    /// Whether starting keeps failing (requests waiting for an instance are refused).
    fn failing(&self) -> Option<String> {
        let h = self.health.lock().expect("health");
        (h.consecutive >= 3).then(|| h.last_error.clone().unwrap_or_default())
    }

    fn try_pick(&self) -> Option<Arc<Instance>> {
        let m = self.members.lock().expect("members");
        let cc = self.template.container_concurrency;
        let best = m
            .iter()
            .filter(|h| h.inst.ready.load(Ordering::Acquire))
            .min_by_key(|h| h.inst.in_flight.load(Ordering::Acquire))?;
        if cc > 0 && best.inst.in_flight.load(Ordering::Acquire) >= cc {
            return None;
        }
        best.inst.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(best.inst.clone())
    }

    fn ready_count(&self) -> u32 {
        self.members.lock().expect("members").iter().filter(|h| h.inst.ready.load(Ordering::Acquire)).count() as u32
    }

    /// Waits for an instance with spare capacity (the activator). Fails when
    /// the queue is full, the revision cannot start, or the request times out.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, ServingError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(inst) = self.try_pick() {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(Lease { rev: self.clone(), inst });
        }
        let q = self.queued.fetch_add(1, Ordering::AcqRel) + 1;
        struct Dequeue<'a>(&'a AtomicUsize);
        impl Drop for Dequeue<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _dq = Dequeue(&self.queued);
        if q > self.ctx.queue_limit {
            return Err(ServingError::QueueFull { revision: self.name.clone(), limit: self.ctx.queue_limit });
        }
        let deadline = tokio::time::Instant::now() + self.template.timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(inst) = self.try_pick() {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                return Ok(Lease { rev: self.clone(), inst });
            }
            if self.ready_count() == 0 {
                if let Some(why) = self.failing() {
                    return Err(ServingError::Unavailable { revision: self.name.clone(), reason: why });
                }
                self.poke.notify_one();
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(ServingError::Timeout { revision: self.name.clone(), after: self.template.timeout });
            }
        }
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    async fn load(&self, last_requests: &mut u64, last_at: &mut Instant) -> f64 {
        let waiting = (self.in_flight.load(Ordering::Acquire) + self.queued.load(Ordering::Acquire)) as f64;
        match self.template.autoscaling.metric {
            ScaleMetric::Concurrency => waiting,
            ScaleMetric::Rps => {
                let now = Instant::now();
                let n = self.requests.load(Ordering::Relaxed);
                let dt = now.duration_since(*last_at).as_secs_f64().max(0.001);
                let rps = (n - *last_requests) as f64 / dt;
                (*last_requests, *last_at) = (n, now);
                rps
            }
            ScaleMetric::Backlog => {
                let backlog = match &self.ctx.backlog {
                    Some(p) => p.backlog(&self.address).await as f64,
                    None => 0.0,
                };
                backlog.max(waiting)
            }
        }
    }

    async fn scale_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut kpa = Kpa::new(self.template.autoscaling.clone(), self.ctx.cap);
        let (mut last_requests, mut last_at) = (0, Instant::now());
        let tick = Duration::from_millis(100);
        loop {
            let now = Instant::now();
            let load = self.load(&mut last_requests, &mut last_at).await;
            kpa.record(now, load);
            let d = kpa.decide(now, self.ready_count());
            self.desired.store(d.desired, Ordering::Relaxed);
            self.apply(d.desired);
            self.export_metrics(d.desired);
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(tick) => {}
                _ = self.poke.notified() => {}
            }
        }
        // Stopping: every instance drains and ends.
        let handles: Vec<Handle> = std::mem::take(&mut *self.members.lock().expect("members"));
        for mut h in handles {
            if let Some(s) = h.stop.take() {
                let _ = s.send(());
            }
        }
        self.changed.notify_waiters();
    }

    fn export_metrics(&self, desired: u32) {
        let m = &self.metrics;
        m.desired.set(f64::from(desired));
        m.ready.set(f64::from(self.ready_count()));
        m.concurrency.set(self.in_flight.load(Ordering::Relaxed) as f64);
        m.queue.set(self.queued.load(Ordering::Relaxed) as f64);
    }

    /// Starts or stops instances towards `desired`.
    fn apply(self: &Arc<Self>, desired: u32) {
        let mut m = self.members.lock().expect("members");
        let current = m.len() as u32;
        if desired > current {
            {
                let mut h = self.health.lock().expect("health");
                if h.last_failure.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                    h.consecutive = 0;
                }
                if h.last_failure.is_some_and(|t| t.elapsed() < backoff(h.consecutive)) {
                    return;
                }
            }
            for _ in current..desired {
                let inst = Arc::new(Instance { port: 0, ready: AtomicBool::new(false), in_flight: AtomicU32::new(0) });
                let (tx, rx) = oneshot::channel();
                m.push(Handle { inst: inst.clone(), stop: Some(tx) });
                self.ctx.live.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(self.clone().run_instance(inst, rx));
            }
        } else if desired < current {
            // Not-yet-ready instances first, then the least busy.
            m.sort_by_key(|h| (h.inst.ready.load(Ordering::Acquire), h.inst.in_flight.load(Ordering::Acquire)));
            for mut h in m.drain(..(current - desired) as usize).collect::<Vec<_>>() {
                if let Some(s) = h.stop.take() {
                    let _ = s.send(());
                }
            }
        }
    }

    fn remove(&self, inst: &Arc<Instance>) {
        self.members.lock().expect("members").retain(|h| !Arc::ptr_eq(&h.inst, inst));
    }

    fn failed(&self, why: String) {
        tracing::warn!(revision = %self.name, error = %why, "instance failed");
        self.logs.push(format!("[{}] spate: {why}", self.name));
        let mut h = self.health.lock().expect("health");
        h.consecutive += 1;
        h.last_failure = Some(Instant::now());
        h.last_error = Some(why);
        drop(h);
        self.changed.notify_waiters();
        self.poke.notify_one();
    }

    async fn run_instance(self: Arc<Self>, slot: Arc<Instance>, mut stop: oneshot::Receiver<()>) {
        let ctx = self.ctx.clone();
        let _live = Live(&ctx);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let label = format!("{}-{id}", self.name);
        let t0 = Instant::now();
        let env = vec![
            ("K_SERVICE".to_string(), self.service.clone()),
            ("K_REVISION".to_string(), self.name.clone()),
            ("K_CONFIGURATION".to_string(), self.service.clone()),
        ];
        let launch = Launch {
            container: &self.template.container,
            env,
            label: label.clone(),
            logs: self.logs.clone(),
            run_dir: &self.ctx.run_dir,
        };
        let mut sp = match process::spawn(launch) {
            Ok(s) => s,
            Err(e) => {
                self.remove(&slot);
                self.failed(e.to_string());
                return;
            }
        };
        // The real instance replaces the placeholder slot, keeping its place in `members`.
        let inst = Arc::new(Instance { port: sp.port, ready: AtomicBool::new(false), in_flight: AtomicU32::new(0) });
        let placed = {
            let mut m = self.members.lock().expect("members");
            m.iter_mut().find(|h| Arc::ptr_eq(&h.inst, &slot)).map(|h| h.inst = inst.clone()).is_some()
        };
        if !placed {
            // Removed while spawning.
            sp.terminate(self.ctx.grace).await;
            return;
        }
        tokio::select! {
            r = sp.ready(&self.template.container.readiness, &self.ctx.client, self.ctx.ready_deadline) => match r {
                Ok(()) => {
                    inst.ready.store(true, Ordering::Release);
                    let took = t0.elapsed();
                    self.metrics.cold_start.record(took.as_secs_f64());
                    tracing::debug!(instance = %label, ms = took.as_millis() as u64, "instance ready");
                    self.changed.notify_waiters();
                }
                Err(e) => {
                    sp.cleanup_after_exit();
                    let _ = sp.child.start_kill();
                    self.remove(&inst);
                    self.failed(format!("instance {label}: {e}"));
                    return;
                }
            },
            _ = &mut stop => {
                sp.terminate(self.ctx.grace).await;
                return;
            }
        }
        tokio::select! {
            status = sp.child.wait() => {
                sp.cleanup_after_exit();
                self.remove(&inst);
                self.restarts.fetch_add(1, Ordering::Relaxed);
                let how = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                self.failed(format!("instance {label} exited ({how}); replacing it"));
            }
            _ = &mut stop => {
                // Finish in-flight requests, then end the process.
                let until = Instant::now() + self.template.timeout;
                while inst.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    let changed = self.changed.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
                }
                sp.terminate(self.ctx.grace).await;
                tracing::debug!(instance = %label, "instance stopped");
            }
        }
    }
}
