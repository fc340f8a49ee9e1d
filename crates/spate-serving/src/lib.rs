//! Knative Serving's slice that event consumers need: Services run as local
//! processes, with revisions, traffic split and tags, an activator that holds
//! requests while instances start, and Knative's KPA autoscaler (plus scaling
//! on trigger backlog).
//!
//! Pure parts: [`autoscaler`] (the KPA decision). IO at the edges:
//! `spate_process` (spawn, probe, stop, reap), [`revision`] (instances, activator
//! queue, scale loop) and the revision history file.

pub mod autoscaler;
pub mod revision;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use spate_api::{Condition, RevisionTemplate, ServiceConfig, TrafficRevision};
use thiserror::Error;
use tokio::sync::Notify;

pub use revision::{Lease, Revision, RevisionStatus};

use revision::Ctx;
use spate_process::{self as process, LogRing};

#[derive(Debug, Error)]
pub enum ServingError {
    #[error("{0}")]
    Spawn(String),
    #[error(transparent)]
    Process(#[from] spate_process::ProcessError),
    #[error("revision {revision}: {limit} requests already wait for an instance")]
    QueueFull { revision: String, limit: usize },
    #[error("revision {revision} cannot start: {reason}")]
    Unavailable { revision: String, reason: String },
    #[error("revision {revision}: no instance free within {}s", after.as_secs())]
    Timeout { revision: String, after: Duration },
    #[error("revision {revision}: the instance failed: {reason}")]
    Upstream { revision: String, reason: String },
    #[error("cannot write {path}: {error}")]
    History { path: String, error: String },
}

/// Undelivered events of the triggers and subscriptions whose subscriber
/// starts with an address (wired by the binary from the eventing room).
pub trait BacklogProbe: Send + Sync {
    fn backlog<'a>(&'a self, address: &'a str) -> Pin<Box<dyn Future<Output = u64> + Send + 'a>>;
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An instance's whole answer to a forwarded request.
pub struct Forwarded {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The revision history shared by a cluster's instances (so a revision has the
/// same name everywhere); the binary implements it over its shared store.
/// Alone, `revisions.json` is the only history.
pub trait SharedHistory: Send + Sync {
    /// The shared history and its revision, if one was written.
    fn load(&self) -> BoxFut<'_, Option<(Vec<u8>, u64)>>;
    /// Writes it if it is still at revision `expected` (0: none yet); the new revision, else `None`.
    fn save(&self, bytes: Vec<u8>, expected: u64) -> BoxFut<'_, Option<u64>>;
}

#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// Revision history and instance records live here.
    pub dir: PathBuf,
    /// Data-plane base URL (`http://127.0.0.1:8080`): addresses are `<base>/services/<ns>/<name>`.
    pub base_url: String,
    /// Domain of host-based routing: `<name>.<ns>.<domain>` (any port).
    pub domain: String,
    /// Publish host-based URLs (`http://<name>.<ns>.<domain>:<port>`) instead of
    /// path-based ones that need no DNS (`<base>/services/<ns>/<name>`,
    /// tags at `<base>/tags/<ns>/<name>/<tag>`). Set when the user names a `--domain`.
    pub host_urls: bool,
    /// Largest instance count of a revision whose max-scale is unset.
    pub cap: u32,
    /// Requests that may wait per revision before 503.
    pub queue_limit: usize,
    /// SIGTERM to SIGKILL.
    pub grace: Duration,
    /// How long an instance may take to become ready.
    pub ready_deadline: Duration,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            dir: PathBuf::from("./spate-data/serving"),
            base_url: "http://127.0.0.1:8080".into(),
            domain: "localhost".into(),
            host_urls: false,
            cap: 20,
            queue_limit: 1000,
            grace: Duration::from_secs(10),
            ready_deadline: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct RevisionRecord {
    name: String,
    template: serde_json::Value,
    created: String,
}

type Key = (String, String);

/// Revision history per service, persisted as `revisions.json` (written by rename).
#[derive(Default, Serialize, Deserialize)]
struct History {
    services: HashMap<String, Vec<RevisionRecord>>,
}

/// The traffic of one Service.
struct Route {
    targets: Vec<(Arc<Revision>, u32)>,
    tags: HashMap<String, Arc<Revision>>,
    counter: AtomicU64,
}

impl Route {
    /// Weighted by percent, deterministically: each run of 100 requests splits exactly.
    fn pick(&self) -> Option<Arc<Revision>> {
        let n = (self.counter.fetch_add(1, Ordering::Relaxed) % 100) as u32;
        let mut acc = 0;
        for (r, p) in &self.targets {
            acc += p;
            if n < acc {
                return Some(r.clone());
            }
        }
        self.targets.iter().find(|(_, p)| *p > 0).map(|(r, _)| r.clone())
    }
}

#[derive(Debug, Clone)]
pub struct TrafficStatus {
    pub revision: String,
    pub percent: u32,
    pub latest: bool,
    pub tag: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RevisionInfo {
    pub name: String,
    pub created: String,
    pub template: serde_json::Value,
    /// Present while the revision runs (it has traffic or a tag).
    pub live: Option<RevisionStatus>,
}

#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub url: String,
    pub address: String,
    /// `Ready` first, then the conditions it summarizes.
    pub conditions: Vec<Condition>,
    pub traffic: Vec<TrafficStatus>,
    pub latest_created: Option<String>,
    pub latest_ready: Option<String>,
    pub revisions: Vec<RevisionInfo>,
}

pub struct Serving {
    cfg: ServingConfig,
    ctx: Arc<Ctx>,
    history: Mutex<History>,
    /// The cluster's history, and the revision of it this instance last read or wrote.
    shared: Option<Arc<dyn SharedHistory>>,
    shared_revision: AtomicU64,
    routes: RwLock<HashMap<Key, Arc<Route>>>,
    running: Mutex<HashMap<Key, Arc<Revision>>>,
    logs: Mutex<HashMap<Key, Arc<LogRing>>>,
    reconciling: tokio::sync::Mutex<()>,
}

/// Why the latest revision of `s` cannot run at all, if it cannot.
fn runnable(s: &ServiceConfig) -> Option<Condition> {
    match &s.template.container {
        c if c.argv.is_empty() => process::container_engine().err().map(|why| {
            Condition::fail(
                "ConfigurationsReady",
                "ContainerEngineMissing",
                format!("the container has only an image ({}) and no container engine can run it: {why}; give a command, or install docker or podman", c.image.as_deref().unwrap_or("?")),
            )
        }),
        c => process::check_command(c).err().map(|why| Condition::fail("ConfigurationsReady", "CommandNotFound", why)),
    }
}

/// A revision's traffic as (revision, percent, tag).
type Traffic = Vec<(String, u32, Option<String>)>;
/// A Service's status so far, and its traffic.
type Plan = (ServiceStatus, Traffic);
/// The revisions that should run: template, Service name and address.
type WantRunning = HashMap<Key, (RevisionTemplate, String, String)>;

impl Serving {
    /// Opens the serving state under `cfg.dir`, reaping instances an earlier
    /// run left behind (after `kill -9`).
    pub fn new(cfg: ServingConfig, backlog: Option<Arc<dyn BacklogProbe>>) -> Result<Serving, ServingError> {
        let run_dir = cfg.dir.join("instances");
        let err = |p: &std::path::Path, e: std::io::Error| ServingError::History {
            path: p.display().to_string(),
            error: e.to_string(),
        };
        std::fs::create_dir_all(&run_dir).map_err(|e| err(&run_dir, e))?;
        let reaped = process::reap_leftovers(&run_dir);
        if reaped > 0 {
            tracing::warn!(
                count = reaped,
                "stopped instances left running by an earlier Spate that did not stop cleanly"
            );
        }
        let hist_path = cfg.dir.join("revisions.json");
        let history = match std::fs::read(&hist_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ServingError::History {
                path: hist_path.display().to_string(),
                error: format!("unreadable: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => History::default(),
            Err(e) => return Err(err(&hist_path, e)),
        };
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ServingError::Spawn(e.to_string()))?;
        let ctx = Arc::new(Ctx {
            client,
            run_dir,
            grace: cfg.grace,
            ready_deadline: cfg.ready_deadline,
            queue_limit: cfg.queue_limit,
            cap: cfg.cap,
            backlog,
            live: AtomicUsize::new(0),
            gone: Notify::new(),
        });
        Ok(Serving {
            cfg,
            ctx,
            history: Mutex::new(history),
            shared: None,
            shared_revision: AtomicU64::new(0),
            routes: RwLock::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
        })
    }

    /// Shares the revision history with the other instances of a cluster.
    pub fn with_shared_history(mut self, shared: Arc<dyn SharedHistory>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Adopts the cluster's history when another instance changed it.
    async fn pull_history(&self) {
        let Some(shared) = &self.shared else { return };
        let Some((bytes, rev)) = shared.load().await else { return };
        if rev == self.shared_revision.load(Ordering::Acquire) {
            return;
        }
        match serde_json::from_slice::<History>(&bytes) {
            Ok(h) => {
                *self.history.lock().expect("history") = h;
                self.shared_revision.store(rev, Ordering::Release);
            }
            Err(e) => tracing::error!(error = %e, "the shared revision history is unreadable; keeping ours"),
        }
    }

    /// Publishes our history; on a concurrent change, the next reconcile adopts the other one.
    async fn push_history(&self, bytes: Vec<u8>) {
        let Some(shared) = &self.shared else { return };
        match shared.save(bytes, self.shared_revision.load(Ordering::Acquire)).await {
            Some(rev) => self.shared_revision.store(rev, Ordering::Release),
            None => tracing::info!("the revision history changed on another instance; adopting it next"),
        }
    }

    pub fn address(&self, ns: &str, name: &str) -> String {
        format!("{}/services/{ns}/{name}", self.cfg.base_url.trim_end_matches('/'))
    }

    fn port_suffix(&self) -> String {
        let after_scheme = self.cfg.base_url.split("://").nth(1).unwrap_or("");
        let hostport = after_scheme.split('/').next().unwrap_or("");
        match hostport.rsplit_once(':') {
            Some((_, p)) if p != "80" => format!(":{p}"),
            _ => String::new(),
        }
    }

    /// A Service's (or one of its tags') published URL: path-based unless host URLs were asked for.
    fn service_url(&self, ns: &str, name: &str, tag: Option<&str>) -> String {
        match (self.cfg.host_urls, tag) {
            (true, None) => format!("http://{name}.{ns}.{}{}", self.cfg.domain, self.port_suffix()),
            (true, Some(t)) => format!("http://{t}-{name}.{ns}.{}{}", self.cfg.domain, self.port_suffix()),
            (false, None) => self.address(ns, name),
            (false, Some(t)) => format!("{}/tags/{ns}/{name}/{t}", self.cfg.base_url.trim_end_matches('/')),
        }
    }

    fn save_history(&self, h: &History) -> Result<(), ServingError> {
        let path = self.cfg.dir.join("revisions.json");
        let tmp = self.cfg.dir.join("revisions.json.tmp");
        let bytes = serde_json::to_vec_pretty(h).expect("history serialises");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| ServingError::History { path: path.display().to_string(), error: e.to_string() })
    }

    /// Brings running revisions and routes in line with `desired` and returns each Service's status.
    pub async fn reconcile(&self, desired: &[ServiceConfig]) -> Vec<ServiceStatus> {
        let _g = self.reconciling.lock().await;
        self.pull_history().await;
        let (plans, want_running, publish) = self.plan(desired);
        if let Some(bytes) = publish {
            self.push_history(bytes).await;
        }
        self.converge(want_running);
        let out = self.publish_routes(plans);
        self.logs.lock().expect("logs").retain(|k, _| desired.iter().any(|s| s.namespace == k.0 && s.name == k.1));
        out
    }

    /// Each Service's revisions (a changed template is a new one, kept in the
    /// history), its traffic and conditions so far, and the revisions that
    /// should run; the history to publish to the cluster if it changed.
    fn plan(&self, desired: &[ServiceConfig]) -> (Vec<Plan>, WantRunning, Option<Vec<u8>>) {
        let mut want_running: WantRunning = HashMap::new();
        let mut plans = vec![];
        let mut h = self.history.lock().expect("history");
        let wanted: std::collections::HashSet<String> =
            desired.iter().map(|s| format!("{}/{}", s.namespace, s.name)).collect();
        let before = h.services.len();
        h.services.retain(|k, _| wanted.contains(k));
        let mut changed = h.services.len() != before;
        for s in desired {
            let records = h.services.entry(format!("{}/{}", s.namespace, s.name)).or_default();
            let (plan, new_revision) = self.plan_service(s, records, &mut want_running);
            changed |= new_revision;
            plans.push(plan);
        }
        if changed && let Err(e) = self.save_history(&h) {
            tracing::error!(error = %e, "cannot persist the revision history");
        }
        let publish = (changed && self.shared.is_some()).then(|| serde_json::to_vec(&*h).expect("history serialises"));
        (plans, want_running, publish)
    }

    /// One Service's plan; true if it made a new revision.
    fn plan_service(
        &self,
        s: &ServiceConfig,
        records: &mut Vec<RevisionRecord>,
        want_running: &mut WantRunning,
    ) -> (Plan, bool) {
        let mut changed = false;
        let mut conds = vec![];
        if records.last().is_none_or(|r| r.template != s.template_manifest) {
            let name = s.template.name.clone().unwrap_or_else(|| format!("{}-{:05}", s.name, records.len() + 1));
            if records.iter().any(|r| r.name == name) {
                conds.push(Condition::fail(
                    "ConfigurationsReady",
                    "RevisionNameTaken",
                    format!("spec.template.metadata.name '{name}' already names a revision with a different template; choose a new name"),
                ));
            } else {
                records.push(RevisionRecord {
                    name,
                    template: s.template_manifest.clone(),
                    created: spate_core::rules::now_rfc3339_seconds(),
                });
                changed = true;
            }
        }
        let latest = records.last().map(|r| r.name.clone());
        let mut traffic = vec![];
        for t in &s.traffic {
            let rev = match &t.revision {
                TrafficRevision::Latest => latest.clone(),
                TrafficRevision::Named(n) => records.iter().any(|r| &r.name == n).then(|| n.clone()),
            };
            match rev {
                Some(r) => traffic.push((r, t.percent, t.tag.clone())),
                None => conds.push(Condition::fail(
                    "RoutesReady",
                    "RevisionMissing",
                    format!(
                        "spec.traffic names revision '{}', which does not exist",
                        match &t.revision {
                            TrafficRevision::Named(n) => n.as_str(),
                            TrafficRevision::Latest => "latest",
                        }
                    ),
                )),
            }
        }
        for (rev, _, _) in &traffic {
            let rk = (s.namespace.clone(), rev.clone());
            if want_running.contains_key(&rk) {
                continue;
            }
            let rec = records.iter().find(|r| &r.name == rev).expect("checked above");
            let template = if Some(rev) == latest.as_ref() && rec.template == s.template_manifest {
                Ok(s.template.clone())
            } else {
                spate_api::compile_template(&s.namespace, &s.name, &rec.template)
            };
            match template {
                Ok(t) => {
                    want_running.insert(rk, (t, s.name.clone(), self.address(&s.namespace, &s.name)));
                }
                Err(e) => conds.push(Condition::fail(
                    "RoutesReady",
                    "RevisionInvalid",
                    format!("revision {rev} no longer compiles: {e}"),
                )),
            }
        }
        conds.extend(runnable(s));
        let revisions = records
            .iter()
            .map(|r| RevisionInfo {
                name: r.name.clone(),
                created: r.created.clone(),
                template: r.template.clone(),
                live: None,
            })
            .collect();
        let st = ServiceStatus {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            url: self.service_url(&s.namespace, &s.name, None),
            address: self.address(&s.namespace, &s.name),
            conditions: conds,
            traffic: vec![],
            latest_created: latest.clone(),
            latest_ready: None,
            revisions,
        };
        ((st, traffic), changed)
    }

    /// Starts the revisions that should run and stops the others.
    fn converge(&self, want_running: WantRunning) {
        let stale: Vec<Arc<Revision>> = {
            let mut running = self.running.lock().expect("running");
            let mut stale = vec![];
            running.retain(|k, r| {
                let keep = want_running.get(k).is_some_and(|(t, svc, _)| &r.template == t && &r.service == svc);
                if !keep {
                    stale.push(r.clone());
                }
                keep
            });
            for (k, (t, svc, address)) in want_running {
                if running.contains_key(&k) {
                    continue;
                }
                let logs = self.logs.lock().expect("logs").entry((k.0.clone(), svc.clone())).or_default().clone();
                let rev = Revision::start(&k.0, &svc, &k.1, t, address, self.ctx.clone(), logs);
                running.insert(k, rev);
            }
            stale
        };
        for r in stale {
            r.stop();
        }
    }

    /// Routes each Service's traffic to its running revisions; the final statuses.
    fn publish_routes(&self, plans: Vec<Plan>) -> Vec<ServiceStatus> {
        let mut out = vec![];
        let running = self.running.lock().expect("running").clone();
        let mut routes = HashMap::new();
        for (mut st, traffic) in plans {
            let mut route = Route { targets: vec![], tags: HashMap::new(), counter: AtomicU64::new(0) };
            for (rev, percent, tag) in &traffic {
                let Some(r) = running.get(&(st.namespace.clone(), rev.clone())) else { continue };
                route.targets.push((r.clone(), *percent));
                if let Some(t) = tag {
                    route.tags.insert(t.clone(), r.clone());
                }
                st.traffic.push(TrafficStatus {
                    revision: rev.clone(),
                    percent: *percent,
                    latest: st.latest_created.as_ref() == Some(rev),
                    tag: tag.clone(),
                    url: tag.as_ref().map(|t| self.service_url(&st.namespace, &st.name, Some(t))),
                });
            }
            for info in &mut st.revisions {
                info.live = running.get(&(st.namespace.clone(), info.name.clone())).map(|r| r.status());
            }
            let config_ok = st.conditions.iter().all(|c| c.kind != "ConfigurationsReady");
            if config_ok {
                st.latest_ready = st.latest_created.clone();
                st.conditions.insert(0, Condition::ok("ConfigurationsReady"));
            }
            if st.conditions.iter().all(|c| c.kind != "RoutesReady") {
                st.conditions.push(Condition::ok("RoutesReady"));
            }
            st.conditions = Condition::ready_first(std::mem::take(&mut st.conditions));
            routes.insert((st.namespace.clone(), st.name.clone()), Arc::new(route));
            out.push(st);
        }
        *self.routes.write().expect("routes") = routes;
        out
    }

    /// Live statuses of the running revisions of a service.
    pub fn revision_status(&self, ns: &str, revision: &str) -> Option<RevisionStatus> {
        self.running.lock().expect("running").get(&(ns.to_string(), revision.to_string())).map(|r| r.status())
    }

    /// The revision a request for service `ns/name` goes to (traffic split).
    pub fn route(&self, ns: &str, name: &str) -> Option<Arc<Revision>> {
        self.routes.read().expect("routes").get(&(ns.to_string(), name.to_string()))?.pick()
    }

    /// The revision a tag of service `ns/name` names.
    pub fn route_tag(&self, ns: &str, name: &str, tag: &str) -> Option<Arc<Revision>> {
        self.routes.read().expect("routes").get(&(ns.to_string(), name.to_string()))?.tags.get(tag).cloned()
    }

    /// Host-based routing: `<name>.<ns>.<domain>` or `<tag>-<name>.<ns>.<domain>` (any port).
    pub fn route_host(&self, host: &str) -> Option<Arc<Revision>> {
        let host =
            host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
        let rest = host.strip_suffix(&self.cfg.domain)?.strip_suffix('.')?;
        let (first, ns) = rest.split_once('.')?;
        let routes = self.routes.read().expect("routes");
        if let Some(r) = routes.get(&(ns.to_string(), first.to_string())) {
            return r.pick();
        }
        routes.iter().filter(|((n, _), _)| n == ns).find_map(|((_, svc), r)| {
            first.strip_suffix(svc.as_str())?.strip_suffix('-').and_then(|tag| r.tags.get(tag).cloned())
        })
    }

    /// Sends a request to an instance of `rev`, waiting for one if needed, and
    /// reads the whole answer. The instance's slot (`containerConcurrency`) is
    /// held until the answer's body has arrived, as Knative's queue-proxy counts.
    pub async fn forward(
        &self,
        rev: &Arc<Revision>,
        method: http::Method,
        path_and_query: &str,
        mut headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<Forwarded, ServingError> {
        let lease = rev.acquire().await?;
        for h in ["host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"] {
            headers.remove(h);
        }
        let url = format!("http://127.0.0.1:{}{path_and_query}", lease.port());
        let resp = self
            .ctx
            .client
            .request(method, url)
            .headers(headers)
            .body(body)
            .timeout(rev.template.timeout)
            .send()
            .await
            .map_err(|e| ServingError::Upstream { revision: rev.name.clone(), reason: e.to_string() })?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp
            .bytes()
            .await
            .map_err(|e| ServingError::Upstream { revision: rev.name.clone(), reason: e.to_string() })?;
        drop(lease);
        Ok(Forwarded { status, headers, body })
    }

    /// The last lines printed by a service's instances.
    pub fn logs(&self, ns: &str, name: &str) -> Option<Vec<String>> {
        self.logs.lock().expect("logs").get(&(ns.to_string(), name.to_string())).map(|l| l.lines())
    }

    /// Stops every revision and waits (up to the grace period and a bit) until every instance has ended.
    pub async fn shutdown(&self) {
        let revs: Vec<Arc<Revision>> = self.running.lock().expect("running").drain().map(|(_, r)| r).collect();
        for r in &revs {
            r.stop();
        }
        let deadline = tokio::time::Instant::now() + self.cfg.grace + Duration::from_secs(2);
        loop {
            let gone = self.ctx.gone.notified();
            if self.ctx.live.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                tracing::warn!("some instances did not stop in time");
                break;
            }
        }
    }
}
