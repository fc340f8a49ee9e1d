//! Event sources: what brings events in from outside.
//!
//! - [`ping`]: PingSource and CronJobSource, a timer per source;
//! - [`container`]: ContainerSource, supervised local processes that post to `K_SINK`;
//! - [`webhook`]: GitHubSource and GitLabSource, receive endpoints on the data plane that
//!   verify each delivery, and webhook registration through the provider's API;
//! - [`kafka`]: KafkaSource, librdkafka consumers that commit only what the sink accepted.
//!
//! Every event a source emits (except a container's own posts) goes through [`emit::Emitter`]
//! (ceOverrides, the one dispatcher, counters). This crate depends on `spate-api`,
//! `spate-core`, `spate-delivery` and `spate-process`; sinks arrive already resolved to URLs
//! and secrets already read, so it never imports another room.

pub mod container;
pub mod emit;
pub mod kafka;
pub mod kafka_sink;
pub mod ping;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};
use spate_api::{Condition, DeliverySpec, Kind, SecretKeyRef, SourceConfig, SourceSpec};
use spate_delivery::Dispatcher;
use spate_process::LogRing;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use emit::{SourceStats, StatsSnapshot};
pub use webhook::{Provider, Received, WebhookError};

type Key = (Kind, String, String);

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct SourcesConfig {
    /// Where container pid files and webhook registrations live.
    pub dir: PathBuf,
    /// The data plane's URL as outside systems reach it (webhook registration).
    pub public_url: String,
    /// SIGTERM → SIGKILL grace for container processes.
    pub grace: Duration,
    /// Delivery settings of sources whose spec has none (the server's defaults).
    pub default_delivery: DeliverySpec,
    pub default_backoff: Duration,
}

/// A source as the control plane wants it: the config plus everything it depends on,
/// already resolved. Equal values mean nothing to restart.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSource {
    pub config: SourceConfig,
    pub sink: Result<String, String>,
    pub dead_letter_sink: Option<Result<String, String>>,
    /// Values of the Secrets the source references; `Err` names what is missing.
    pub secrets: BTreeMap<SecretKeyRef, Result<Vec<u8>, String>>,
}

impl ResolvedSource {
    fn secret(&self, r: &Option<SecretKeyRef>) -> Option<String> {
        let r = r.as_ref()?;
        self.secrets.get(r)?.as_ref().ok().map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A source's observed state.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// `Ready` first.
    pub conditions: Vec<Condition>,
    pub sink_uri: Option<String>,
    /// GitHub/GitLab: the receive endpoint.
    pub url: Option<String>,
    /// GitHub/GitLab: the registered webhook's id.
    pub webhook_id: Option<String>,
    pub stats: StatsSnapshot,
    /// ContainerSource: processes running and restarts so far.
    pub running: Option<usize>,
    pub restarts: Option<u64>,
}

impl SourceStatus {
    pub fn ready(&self) -> bool {
        self.conditions.first().is_some_and(|c| c.ok)
    }
    /// The Knative-shaped status fields (besides conditions).
    pub fn fields(&self) -> Value {
        let mut s = json!({});
        if let Some(u) = &self.sink_uri {
            s["sinkUri"] = json!(u);
        }
        if let Some(u) = &self.url {
            s["url"] = json!(u);
        }
        if let Some(id) = &self.webhook_id {
            s["webhookIDKey"] = json!(id);
        }
        let mut counters = json!({
            "emitted": self.stats.emitted,
            "deadLettered": self.stats.dead_lettered,
            "failed": self.stats.failed,
        });
        if self.kind == Kind::KafkaSource {
            counters["lag"] = json!(self.stats.lag);
        }
        if let Some(r) = self.running {
            counters["running"] = json!(r);
        }
        if let Some(r) = self.restarts {
            counters["restarts"] = json!(r);
        }
        if let Some(e) = &self.stats.last_error {
            counters["lastError"] = json!(e);
        }
        s["spate"] = counters;
        s
    }
}

/// A webhook registration, persisted so that a restart does not register twice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registered {
    reg: webhook::Registration,
    url: String,
}

struct Running {
    resolved: ResolvedSource,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<SourceStats>,
    problem: Option<(String, String)>,
    container: Option<Arc<container::ContainerState>>,
    webhook: Option<Arc<webhook::Webhook>>,
    registration: Arc<Mutex<Result<Option<String>, String>>>,
}

/// Work that must happen once per cluster: a PingSource tick (the first
/// instance to claim its key does it) and a ContainerSource's processes (run
/// by the instance holding its lease; another takes over when the holder
/// dies). The binary implements it over the shared store; alone, everything
/// is granted.
pub trait Claims: Send + Sync {
    /// True if this instance may do the work named `key`.
    fn claim(&self, key: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
    /// Takes part in the lease `key`: the receiver says whether this instance
    /// holds it now. Dropping the receiver releases it.
    fn lease(&self, key: String) -> watch::Receiver<bool>;
    /// A value every instance sees (a webhook registration), if recorded.
    fn recall(&self, key: String) -> BoxFut<'_, Option<String>>;
    /// Records (`Some`) or forgets (`None`) a value every instance sees.
    fn remember(&self, key: String, value: Option<String>) -> BoxFut<'_, ()>;
}

pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs `work` while this instance holds `lease`, until `stop`: `work` gets a
/// receiver that flips to true when the lease is lost or on stop, and must
/// then wind down; it starts again when the lease is taken again.
pub(crate) async fn while_held<F, Fut>(mut lease: watch::Receiver<bool>, mut stop: watch::Receiver<bool>, mut work: F)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut lease_open = true;
    loop {
        while !*lease.borrow_and_update() {
            tokio::select! {
                r = lease.changed(), if lease_open => lease_open = r.is_ok(),
                _ = stop.changed() => return,
            }
        }
        let (halt, halted) = watch::channel(false);
        let mut running = tokio::spawn(work(halted));
        let finish = loop {
            tokio::select! {
                _ = stop.changed() => break true,
                r = lease.changed(), if lease_open => match r {
                    Ok(()) if !*lease.borrow() => break false,
                    Ok(()) => {}
                    Err(_) => lease_open = false,
                },
                // The work ended by itself (it failed): try again while the lease is held.
                _ = &mut running => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    running = tokio::spawn(std::future::ready(()));
                    break false;
                }
            }
        };
        let _ = halt.send(true);
        let _ = running.await;
        if finish {
            return;
        }
    }
}

/// One instance: every claim and lease is granted.
pub struct Alone;

impl Claims for Alone {
    fn claim(&self, _key: String) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { true })
    }
    fn lease(&self, _key: String) -> watch::Receiver<bool> {
        // The sender goes at once: the value stays true for good.
        watch::channel(true).1
    }
    fn recall(&self, _key: String) -> BoxFut<'_, Option<String>> {
        Box::pin(async { None })
    }
    fn remember(&self, _key: String, _value: Option<String>) -> BoxFut<'_, ()> {
        Box::pin(async {})
    }
}

pub struct Sources {
    claims: Arc<dyn Claims>,
    cfg: SourcesConfig,
    dispatcher: Dispatcher,
    client: reqwest::Client,
    running: tokio::sync::Mutex<HashMap<Key, Running>>,
    /// Webhook handlers by (provider, namespace, name), for the data plane.
    webhooks: Mutex<HashMap<(Provider, String, String), Arc<webhook::Webhook>>>,
    logs: Mutex<HashMap<(String, String), Arc<LogRing>>>,
    registrations: Arc<Mutex<BTreeMap<String, Registered>>>,
}

fn key_name(k: &Key) -> String {
    format!("{}/{}/{}", k.0.plural(), k.1, k.2)
}

impl Sources {
    pub fn new(cfg: SourcesConfig, dispatcher: Dispatcher) -> Result<Sources, std::io::Error> {
        let run_dir = cfg.dir.join("instances");
        std::fs::create_dir_all(&run_dir)?;
        let reaped = spate_process::reap_leftovers(&run_dir);
        if reaped > 0 {
            tracing::warn!(count = reaped, "stopped ContainerSource processes left running by an earlier Spate");
        }
        let registrations = load_registrations(&cfg.dir.join("webhooks.json"));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Sources {
            claims: Arc::new(Alone),
            cfg,
            dispatcher,
            client,
            running: tokio::sync::Mutex::new(HashMap::new()),
            webhooks: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            registrations: Arc::new(Mutex::new(registrations)),
        })
    }

    /// Shares once-per-cluster work with other instances (`--config-store nats`).
    pub fn with_claims(mut self, claims: Arc<dyn Claims>) -> Self {
        self.claims = claims;
        self
    }

    /// The receive endpoint of a GitHubSource or GitLabSource.
    pub fn webhook_url(&self, provider: Provider, namespace: &str, name: &str) -> String {
        let p = match provider {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
        };
        format!("{}/sources/{p}/{namespace}/{name}", self.cfg.public_url.trim_end_matches('/'))
    }

    /// Brings running sources in line with `desired`: unchanged ones keep running.
    pub async fn reconcile(&self, desired: &[ResolvedSource]) -> Vec<SourceStatus> {
        let mut running = self.running.lock().await;
        let wanted: HashMap<Key, &ResolvedSource> =
            desired.iter().map(|d| ((d.config.kind, d.config.namespace.clone(), d.config.name.clone()), d)).collect();
        let gone: Vec<Key> = running
            .iter()
            .filter(|(k, r)| wanted.get(*k).is_none_or(|d| **d != r.resolved))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let r = running.remove(&k).expect("present");
            let deleted = !wanted.contains_key(&k);
            self.stop(&k, r, deleted).await;
        }
        for (k, d) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(k) {
                let r = self.start(slot.key(), d);
                slot.insert(r);
            }
        }
        let mut out: Vec<SourceStatus> = running.iter().map(|(k, r)| self.status_of(k, r)).collect();
        out.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        out
    }

    /// The live status of one source, if it is known.
    pub async fn status(&self, kind: Kind, namespace: &str, name: &str) -> Option<SourceStatus> {
        let k = (kind, namespace.to_string(), name.to_string());
        let running = self.running.lock().await;
        running.get(&k).map(|r| self.status_of(&k, r))
    }

    /// What a ContainerSource's processes printed.
    pub fn logs(&self, namespace: &str, name: &str) -> Option<Vec<String>> {
        self.logs.lock().expect("logs").get(&(namespace.to_string(), name.to_string())).map(|l| l.lines())
    }

    /// Handles one webhook delivery for a GitHubSource or GitLabSource.
    pub async fn receive(
        &self,
        provider: Provider,
        namespace: &str,
        name: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Received, WebhookError> {
        let hook =
            self.webhooks.lock().expect("webhooks").get(&(provider, namespace.to_string(), name.to_string())).cloned();
        let Some(hook) = hook else {
            let kind = if provider == Provider::GitHub { "GitHubSource" } else { "GitLabSource" };
            return Err(WebhookError::NotFound(format!("{kind} {namespace}/{name} (or it is not Ready)")));
        };
        hook.receive(headers, body).await
    }

    pub async fn shutdown(&self) {
        let mut running = self.running.lock().await;
        for (k, r) in running.drain() {
            self.stop(&k, r, false).await;
        }
    }

    fn status_of(&self, k: &Key, r: &Running) -> SourceStatus {
        let mut parts = vec![];
        match &r.resolved.sink {
            Ok(_) => parts.push(Condition::ok("SinkProvided")),
            Err(e) => parts.push(Condition::fail("SinkProvided", "NotFound", e.clone())),
        }
        let missing: Vec<&String> = r.resolved.secrets.values().filter_map(|v| v.as_ref().err()).collect();
        if !r.resolved.secrets.is_empty() || !missing.is_empty() {
            if missing.is_empty() {
                parts.push(Condition::ok("SecretsProvided"));
            } else {
                parts.push(Condition::fail(
                    "SecretsProvided",
                    "SecretNotFound",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
                ));
            }
        }
        let mut running_n = None;
        let mut restarts = None;
        let deployed = if let Some((reason, msg)) = &r.problem {
            Condition::fail("Deployed", reason, msg.clone())
        } else if let Some(c) = &r.container {
            running_n = Some(c.running.load(Ordering::Relaxed));
            restarts = Some(c.restarts.load(Ordering::Relaxed));
            match c.not_ready.lock().expect("state").clone() {
                Some((reason, msg)) => Condition::fail("Deployed", &reason, msg),
                None => Condition::ok("Deployed"),
            }
        } else {
            Condition::ok("Deployed")
        };
        parts.push(deployed);
        let mut webhook_id = None;
        if r.webhook.is_some() {
            match &*r.registration.lock().expect("registration") {
                Ok(id) => webhook_id = id.clone(),
                Err(e) => parts.push(Condition::fail("WebhookRegistered", "RegistrationFailed", e.clone())),
            }
        }
        let url = r.webhook.as_ref().map(|w| self.webhook_url(w.provider, &k.1, &k.2));
        let stats = r.stats.snapshot();
        SourceStatus {
            kind: k.0,
            namespace: k.1.clone(),
            name: k.2.clone(),
            conditions: Condition::ready_first(parts),
            sink_uri: r.resolved.sink.as_ref().ok().cloned(),
            url,
            webhook_id,
            stats,
            running: running_n,
            restarts,
        }
    }

    fn start(&self, k: &Key, d: &ResolvedSource) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(SourceStats::default());
        let mut run = Running {
            resolved: d.clone(),
            stop,
            tasks: vec![],
            stats: stats.clone(),
            problem: None,
            container: None,
            webhook: None,
            registration: Arc::new(Mutex::new(Ok(None))),
        };
        let label = key_name(k);
        let Ok(sink) = d.sink.clone() else { return run };
        let dls = match &d.dead_letter_sink {
            Some(Err(e)) => {
                run.problem = Some(("DeadLetterSinkNotFound".into(), e.clone()));
                return run;
            }
            Some(Ok(u)) => Some(u.clone()),
            None => None,
        };
        if d.secrets.values().any(|v| v.is_err()) {
            return run;
        }
        let delivery = d.config.delivery.clone().unwrap_or_else(|| self.cfg.default_delivery.clone());
        let emitter = Arc::new(emit::Emitter {
            dispatcher: self.dispatcher.clone(),
            sink: sink.clone().into(),
            dead_letter_sink: dls.map(Into::into),
            policy: delivery.retry_policy(self.cfg.default_backoff),
            format: delivery.format.unwrap_or_default(),
            overrides: d.config.ce_overrides.clone(),
            namespace: d.config.namespace.clone(),
            label: label.clone(),
            stats,
        });
        match &d.config.spec {
            SourceSpec::Ping(spec) => {
                let claims = self.claims.clone();
                run.tasks.push(tokio::spawn(ping::run(spec.clone(), emitter, claims, stop_rx)))
            }
            SourceSpec::Container(containers) => self.start_containers(k, d, containers, sink, &stop_rx, &mut run),
            SourceSpec::GitHub(spec) | SourceSpec::GitLab(spec) => {
                self.start_webhook(k, d, spec, emitter, &stop_rx, &mut run)
            }
            SourceSpec::Kafka(spec) => start_kafka(&self.claims, d, spec, emitter, &stop_rx, &mut run),
        }
        run
    }

    /// ContainerSource: one supervisor per container, unless one of them cannot run at all.
    fn start_containers(
        &self,
        k: &Key,
        d: &ResolvedSource,
        containers: &[spate_api::ContainerSpec],
        sink: String,
        stop_rx: &watch::Receiver<bool>,
        run: &mut Running,
    ) {
        let state = Arc::new(container::ContainerState::default());
        run.container = Some(state.clone());
        for c in containers {
            if let Err((reason, msg)) = container::preflight(c) {
                *state.not_ready.lock().expect("state") = Some((reason, msg));
                return;
            }
        }
        let logs = self
            .logs
            .lock()
            .expect("logs")
            .entry((k.1.clone(), k.2.clone()))
            .or_insert_with(|| Arc::new(LogRing::default()))
            .clone();
        let mut env = vec![("K_SINK".to_string(), sink)];
        if let Some(o) = d.config.ce_overrides_json() {
            env.push(("K_CE_OVERRIDES".to_string(), o));
        }
        let mut sups = vec![];
        for (i, c) in containers.iter().enumerate() {
            let mut env = env.clone();
            for (name, r) in &c.env_secrets {
                if let Some(Ok(v)) = d.secrets.get(r) {
                    env.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
                }
            }
            let sup = container::Supervisor {
                container: c.clone(),
                env,
                label: if containers.len() > 1 { format!("{}-{i}", k.2) } else { k.2.clone() },
                logs: logs.clone(),
                run_dir: self.cfg.dir.join("instances"),
                grace: self.cfg.grace,
                state: state.clone(),
            };
            sups.push(sup);
        }
        // The processes run on one instance of a cluster: the lease holder's.
        let lease = self.claims.lease(format!("container/{}", key_name(k)));
        run.tasks.push(tokio::spawn(container::run_under_lease(sups, lease, stop_rx.clone())));
    }

    /// GitHubSource or GitLabSource: the receive endpoint, and registration with an access token.
    fn start_webhook(
        &self,
        k: &Key,
        d: &ResolvedSource,
        spec: &spate_api::WebhookSpec,
        emitter: Arc<emit::Emitter>,
        stop_rx: &watch::Receiver<bool>,
        run: &mut Running,
    ) {
        let label = key_name(k);
        let provider = if k.0 == Kind::GitHubSource { Provider::GitHub } else { Provider::GitLab };
        let secret_token = d.secret(&spec.secret_token).unwrap_or_default();
        let hook = Arc::new(webhook::Webhook {
            provider,
            spec: spec.clone(),
            secret_token: secret_token.clone().into_bytes(),
            emitter,
            recent: Default::default(),
        });
        self.webhooks.lock().expect("webhooks").insert((provider, k.1.clone(), k.2.clone()), hook.clone());
        run.webhook = Some(hook);
        if let Some(access) = d.secret(&spec.access_token) {
            let url = self.webhook_url(provider, &k.1, &k.2);
            let (client, spec, regs, slot, rec_key) = (
                self.client.clone(),
                spec.clone(),
                self.registrations.clone(),
                run.registration.clone(),
                label.clone(),
            );
            let registrar = Registrar {
                client,
                provider,
                spec,
                access,
                secret_token,
                url,
                regs,
                path: self.cfg.dir.join("webhooks.json"),
                slot,
                key: rec_key,
                claims: self.claims.clone(),
            };
            run.tasks.push(tokio::spawn(registrar.run(stop_rx.clone())));
        }
    }

    /// Stops a source. `deleted`: it is gone (or changed), so a webhook it registered is removed.
    async fn stop(&self, k: &Key, r: Running, deleted: bool) {
        let _ = r.stop.send(true);
        if let Some(h) = &r.webhook {
            let mut hooks = self.webhooks.lock().expect("webhooks");
            let hk = (h.provider, k.1.clone(), k.2.clone());
            if hooks.get(&hk).is_some_and(|cur| Arc::ptr_eq(cur, h)) {
                hooks.remove(&hk);
            }
        }
        for t in r.tasks {
            if tokio::time::timeout(self.cfg.grace + Duration::from_secs(5), t).await.is_err() {
                tracing::warn!(source = %key_name(k), "a source task did not stop in time");
            }
        }
        if deleted && let Some(h) = &r.webhook {
            let rec_key = key_name(k);
            let known = self.registrations.lock().expect("registrations").remove(&rec_key);
            if let (Some(known), Some(access)) = (known, r.resolved.secret(&h.spec.access_token)) {
                if let Err(e) = webhook::unregister(&self.client, h.provider, &known.reg, &access).await {
                    tracing::warn!(source = %rec_key, error = %e, "could not remove the webhook; remove it by hand");
                }
                self.claims.remember(format!("webhook/{rec_key}"), None).await;
                save_registrations(
                    &self.cfg.dir.join("webhooks.json"),
                    &self.registrations.lock().expect("registrations"),
                );
            }
        }
    }
}

/// KafkaSource: `consumers` consumer tasks and one that sums their lag.
fn start_kafka(
    claims: &Arc<dyn Claims>,
    d: &ResolvedSource,
    spec: &spate_api::KafkaSpec,
    emitter: Arc<emit::Emitter>,
    stop_rx: &watch::Receiver<bool>,
    run: &mut Running,
) {
    let label = emitter.label.clone();
    let mut lags = vec![];
    let secrets = kafka::KafkaSecrets {
        ca_cert: d.secret(&spec.net.tls_ca_cert),
        cert: d.secret(&spec.net.tls_cert),
        key: d.secret(&spec.net.tls_key),
        sasl_user: d.secret(&spec.net.sasl_user),
        sasl_password: d.secret(&spec.net.sasl_password),
        sasl_mechanism: d.secret(&spec.net.sasl_mechanism),
    };
    for index in 0..spec.consumers as usize {
        let lag = Arc::new(AtomicU64::new(0));
        lags.push(lag.clone());
        let c =
            kafka::KafkaConsumer { spec: spec.clone(), secrets: secrets.clone(), emitter: emitter.clone(), index, lag };
        if let Err(e) = c.create() {
            run.problem = Some(("KafkaClientFailed".into(), e));
            break;
        }
        // Each consumer (its share of the partitions) runs on one instance of a
        // cluster: the holder of its lease, so no partition is consumed twice.
        let lease = claims.lease(format!("kafka/{label}/{index}"));
        run.tasks.push(tokio::spawn(while_held(lease, stop_rx.clone(), move |halted| {
            let c = c.clone();
            async move {
                match c.create() {
                    Ok(consumer) => c.run(consumer, halted).await,
                    Err(e) => tracing::warn!(source = %c.emitter.label, error = %e, "Kafka consumer could not start"),
                }
            }
        })));
    }
    let stats = run.stats.clone();
    let mut stop = stop_rx.clone();
    run.tasks.push(tokio::spawn(async move {
        loop {
            let lag: u64 = lags.iter().map(|l| l.load(Ordering::Relaxed)).sum();
            stats.lag.store(lag, Ordering::Relaxed);
            metrics::gauge!("spate_source_lag", "source" => label.clone()).set(lag as f64);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }));
}

fn load_registrations(path: &std::path::Path) -> BTreeMap<String, Registered> {
    let Ok(text) = std::fs::read_to_string(path) else { return BTreeMap::new() };
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) else {
        tracing::warn!(file = %path.display(), "unreadable webhook registrations; they will be made again");
        return BTreeMap::new();
    };
    m.into_iter()
        .filter_map(|(k, v)| {
            Some((
                k,
                Registered {
                    reg: webhook::Registration {
                        id: v.get("id")?.as_str()?.to_string(),
                        hooks_url: v.get("hooksUrl")?.as_str()?.to_string(),
                    },
                    url: v.get("url")?.as_str()?.to_string(),
                },
            ))
        })
        .collect()
}

fn save_registrations(path: &std::path::Path, regs: &BTreeMap<String, Registered>) {
    let v: serde_json::Map<String, Value> = regs
        .iter()
        .map(|(k, r)| (k.clone(), json!({"id": r.reg.id, "hooksUrl": r.reg.hooks_url, "url": r.url})))
        .collect();
    let tmp = path.with_extension("json.tmp");
    let ok =
        std::fs::write(&tmp, serde_json::to_vec_pretty(&v).expect("JSON")).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = ok {
        tracing::warn!(file = %path.display(), error = %e, "cannot save webhook registrations");
    }
}

/// Registers a webhook once per cluster: the holder of the source's lease
/// registers it (or adopts the registration another instance recorded);
/// every other instance learns its id from the shared record.
struct Registrar {
    client: reqwest::Client,
    provider: Provider,
    spec: spate_api::WebhookSpec,
    access: String,
    secret_token: String,
    url: String,
    regs: Arc<Mutex<BTreeMap<String, Registered>>>,
    path: PathBuf,
    slot: Arc<Mutex<Result<Option<String>, String>>>,
    key: String,
    claims: Arc<dyn Claims>,
}

impl Registrar {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let shared_key = format!("webhook/{}", self.key);
        let mut lease = self.claims.lease(shared_key.clone());
        let mut lease_open = true;
        let mut last_try: Option<std::time::Instant> = None;
        loop {
            let holder = *lease.borrow_and_update();
            // The holder owns the registration (it removes it on deletion); others only show its id.
            let done = if holder {
                self.regs.lock().expect("registrations").contains_key(&self.key)
            } else {
                matches!(*self.slot.lock().expect("registration"), Ok(Some(_)))
            };
            // A failed registration is tried again after 30 s, not at every tick.
            let due = last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(30));
            if !done {
                if holder && due {
                    last_try = Some(std::time::Instant::now());
                    self.register_or_adopt(&shared_key).await;
                } else if let Some(reg) = self.recall(&shared_key).await {
                    *self.slot.lock().expect("registration") = Ok(Some(reg.reg.id));
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                r = lease.changed(), if lease_open => lease_open = r.is_ok(),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// A registration recorded by any instance for this URL and API.
    async fn recall(&self, shared_key: &str) -> Option<Registered> {
        let v: Value = serde_json::from_str(&self.claims.recall(shared_key.to_string()).await?).ok()?;
        let reg =
            webhook::Registration { id: v["id"].as_str()?.to_string(), hooks_url: v["hooksUrl"].as_str()?.to_string() };
        let r = Registered { reg, url: v["url"].as_str()?.to_string() };
        (r.url == self.url && r.reg.hooks_url.starts_with(&self.spec.api_url)).then_some(r)
    }

    async fn register_or_adopt(&self, shared_key: &str) {
        let local = self.regs.lock().expect("registrations").get(&self.key).cloned();
        let known = match local.filter(|r| r.url == self.url && r.reg.hooks_url.starts_with(&self.spec.api_url)) {
            Some(r) => Some(r),
            None => self.recall(shared_key).await,
        };
        let reg = match known {
            Some(r) => r,
            None => match webhook::register(
                &self.client,
                self.provider,
                &self.spec,
                &self.access,
                &self.secret_token,
                &self.url,
            )
            .await
            {
                Ok(reg) => {
                    tracing::info!(source = %self.key, hook = %reg.id, "webhook registered");
                    Registered { reg, url: self.url.clone() }
                }
                Err(e) => {
                    tracing::warn!(source = %self.key, error = %e, "webhook registration failed");
                    *self.slot.lock().expect("registration") = Err(e);
                    return;
                }
            },
        };
        let record = json!({"id": reg.reg.id, "hooksUrl": reg.reg.hooks_url, "url": reg.url}).to_string();
        self.claims.remember(shared_key.to_string(), Some(record)).await;
        *self.slot.lock().expect("registration") = Ok(Some(reg.reg.id.clone()));
        let mut g = self.regs.lock().expect("registrations");
        g.insert(self.key.clone(), reg);
        save_registrations(&self.path, &g);
    }
}
