//! ContainerSource: each container runs as a supervised local process with
//! `K_SINK` and `K_CE_OVERRIDES` set. A process that exits is restarted with
//! backoff (1 s doubling to 30 s; reset after 30 s of running). Output goes to
//! the source's log ring (`spate logs containersource/NAME`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use spate_api::{ContainerSourceSpec, ContainerSpec};
use spate_process::{Launch, LogRing};
use tokio::sync::watch;

use crate::{Start, Started};

/// What `status` reports about a ContainerSource's processes.
#[derive(Default)]
pub struct ContainerState {
    pub running: AtomicUsize,
    pub restarts: AtomicU64,
    /// (reason, message) while the source cannot run.
    pub not_ready: Mutex<Option<(String, String)>>,
    pub last_exit: Mutex<Option<String>>,
}

#[derive(Clone)]
pub(crate) struct Supervisor {
    pub container: ContainerSpec,
    pub env: Vec<(String, String)>,
    pub label: String,
    pub logs: Arc<LogRing>,
    pub run_dir: PathBuf,
    pub grace: Duration,
    pub state: Arc<ContainerState>,
}

/// Why a container cannot be started at all (not Ready until its spec changes).
pub(crate) fn preflight(c: &ContainerSpec) -> Result<(), (String, String)> {
    if c.argv.is_empty() {
        return spate_process::container_engine().map(|_| ()).map_err(|why| {
            (
                "ContainerEngineMissing".into(),
                format!("the container has only an image and no container engine can run it ({why}); give a command, or install docker or podman"),
            )
        });
    }
    spate_process::check_command(c).map_err(|e| ("CommandNotFound".into(), e))
}

impl Supervisor {
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let launch = Launch {
                container: &self.container,
                env: self.env.clone(),
                label: self.label.clone(),
                logs: self.logs.clone(),
                run_dir: &self.run_dir,
            };
            let started = Instant::now();
            let mut sp = match spate_process::spawn(launch) {
                Ok(sp) => sp,
                Err(e) => {
                    self.logs.push(format!("[{}] ! cannot start: {e}", self.label));
                    *self.state.not_ready.lock().expect("state") = Some(("StartFailed".into(), e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            self.state.running.fetch_add(1, Ordering::Relaxed);
            *self.state.not_ready.lock().expect("state") = None;
            let status = tokio::select! {
                s = sp.child.wait() => s,
                _ = stop.changed() => {
                    self.state.running.fetch_sub(1, Ordering::Relaxed);
                    sp.terminate(self.grace).await;
                    return;
                }
            };
            self.state.running.fetch_sub(1, Ordering::Relaxed);
            sp.cleanup_after_exit();
            let why = match status {
                Ok(s) => format!("exited ({s})"),
                Err(e) => format!("lost ({e})"),
            };
            self.state.restarts.fetch_add(1, Ordering::Relaxed);
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_secs(1);
            }
            tracing::warn!(source = %self.label, status = %why, restart_in_ms = backoff.as_millis() as u64, "container process ended; restarting");
            self.logs.push(format!("[{}] ! {why}; restarting in {} ms", self.label, backoff.as_millis()));
            *self.state.last_exit.lock().expect("state") = Some(why);
            metrics::counter!("spate_source_restarts_total", "source" => self.label.clone()).increment(1);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// Runs the supervisors only while this instance holds the source's lease
/// (always, alone): started when it is taken, stopped (SIGTERM, then SIGKILL
/// after the grace) when it is lost, until `stop`.
pub(crate) async fn run_under_lease(sups: Vec<Supervisor>, lease: watch::Receiver<bool>, stop: watch::Receiver<bool>) {
    crate::while_held(lease, stop, move |halted| {
        let running: Vec<_> = sups.iter().cloned().map(|s| tokio::spawn(s.run(halted.clone()))).collect();
        async move {
            for r in running {
                let _ = r.await;
            }
        }
    })
    .await
}

/// Starts a ContainerSource: one supervisor per container, unless one of them cannot run at all.
pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<ContainerSourceSpec>() else { return };
    let containers = spec.0.clone();
    let state = Arc::new(ContainerState::default());
    st.keep(state.clone());
    for c in &containers {
        if let Err((reason, msg)) = preflight(c) {
            *state.not_ready.lock().expect("state") = Some((reason, msg));
            return;
        }
    }
    let (ns, name) = (st.namespace.to_string(), st.name.to_string());
    let logs = st
        .sources
        .logs
        .lock()
        .expect("logs")
        .entry((ns, name.clone()))
        .or_insert_with(|| Arc::new(LogRing::default()))
        .clone();
    let sink = st.resolved.sink.clone().unwrap_or_default();
    let mut env = vec![("K_SINK".to_string(), sink)];
    if let Some(o) = st.resolved.config.ce_overrides_json() {
        env.push(("K_CE_OVERRIDES".to_string(), o));
    }
    let mut sups = vec![];
    for (i, c) in containers.iter().enumerate() {
        let mut env = env.clone();
        for (var, r) in &c.env_secrets {
            if let Some(v) = st.secret(r) {
                env.push((var.clone(), v));
            }
        }
        sups.push(Supervisor {
            container: c.clone(),
            env,
            label: if containers.len() > 1 { format!("{name}-{i}") } else { name.clone() },
            logs: logs.clone(),
            run_dir: st.sources.cfg.dir.join("instances"),
            grace: st.sources.cfg.grace,
            state: state.clone(),
        });
    }
    // The processes run on one instance of a cluster: the lease holder's.
    let lease = st.sources.claims.lease(format!("container/{}", st.label()));
    let stop = st.stop.clone();
    st.spawn(run_under_lease(sups, lease, stop));
}

impl Started for ContainerState {
    fn not_deployed(&self) -> Option<(String, String)> {
        self.not_ready.lock().expect("state").clone()
    }
    fn fields(&self, _status: &mut Map<String, Value>, counters: &mut Map<String, Value>) {
        counters.insert("running".into(), json!(self.running.load(Ordering::Relaxed)));
        counters.insert("restarts".into(), json!(self.restarts.load(Ordering::Relaxed)));
    }
}
