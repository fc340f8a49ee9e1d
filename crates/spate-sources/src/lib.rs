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

pub mod apiserver;
pub mod container;
pub mod driver;
pub mod emit;
mod held;
pub mod integration;
pub mod kafka;
pub mod kafka_sink;
pub mod ping;
pub mod rabbitmq;
pub mod redis_stream;
pub mod rocketmq;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value, json};
use spate_api::{Condition, DeliverySpec, Kind, SecretKeyRef, SourceConfig};
use spate_core::destination::ResolveError;
use spate_delivery::Dispatcher;
use spate_process::LogRing;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use driver::{Start, StartFn, Started};
pub use emit::{SourceStats, StatsSnapshot};
pub use webhook::{Provider, Received, WebhookError};

/// The driver of every source kind, by the kind's name. Adding a source kind
/// is its module here (and its shape's module in `spate-api`) plus one line.
pub static DRIVERS: &[(&str, StartFn)] = &[
    ("PingSource", ping::start),
    ("CronJobSource", ping::start),
    ("ContainerSource", container::start),
    ("GitHubSource", webhook::start),
    ("GitLabSource", webhook::start),
    ("KafkaSource", kafka::start),
    ("RabbitmqSource", rabbitmq::start),
    ("RedisStreamSource", redis_stream::start),
    ("IntegrationSource", integration::start),
    ("ApiServerSource", apiserver::start),
    ("RocketMQSource", rocketmq::start),
];

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
    /// `--max-event-size`: a source does not emit (or read) an event larger than this.
    pub max_event_size: usize,
}

/// A source as the control plane wants it: the config plus everything it depends on,
/// already resolved. Equal values mean nothing to restart.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSource {
    pub config: SourceConfig,
    pub sink: Result<String, ResolveError>,
    pub dead_letter_sink: Option<Result<String, ResolveError>>,
    /// Values of the Secrets the source references; `Err` names what is missing.
    pub secrets: BTreeMap<SecretKeyRef, Result<Vec<u8>, String>>,
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
    pub stats: StatsSnapshot,
    /// Fields its driver reports (`status.<key>`), such as a webhook's `url`.
    pub fields: Map<String, Value>,
    /// Counters its driver reports (`status.spate.<key>`), such as a Kafka source's `lag`.
    pub counters: Map<String, Value>,
}

impl SourceStatus {
    pub fn ready(&self) -> bool {
        self.conditions.first().is_some_and(|c| c.ok)
    }
    /// The Knative-shaped status fields (besides conditions).
    pub fn fields(&self) -> Value {
        let mut s = Value::Object(self.fields.clone());
        if let Some(u) = &self.sink_uri {
            s["sinkUri"] = json!(u);
        }
        let mut counters = json!({
            "emitted": self.stats.emitted,
            "deadLettered": self.stats.dead_lettered,
            "failed": self.stats.failed,
        });
        for (k, v) in &self.counters {
            counters[k] = v.clone();
        }
        if let Some(e) = &self.stats.last_error {
            counters["lastError"] = json!(e);
        }
        s["spate"] = counters;
        s
    }
}

struct Running {
    resolved: ResolvedSource,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<SourceStats>,
    problem: Option<(String, String)>,
    parts: Vec<Arc<dyn Started>>,
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
    pub(crate) claims: Arc<dyn Claims>,
    pub(crate) cfg: SourcesConfig,
    dispatcher: Dispatcher,
    pub(crate) client: reqwest::Client,
    running: tokio::sync::Mutex<HashMap<Key, Running>>,
    /// Webhook handlers by (provider, namespace, name), for the data plane.
    pub(crate) webhooks: webhook::Hooks,
    pub(crate) logs: Mutex<HashMap<(String, String), Arc<LogRing>>>,
    pub(crate) registrations: Arc<Mutex<BTreeMap<String, webhook::Registered>>>,
    /// Changes to resources, for ApiServerSources.
    pub(crate) changes: tokio::sync::broadcast::Sender<Arc<apiserver::Change>>,
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
        let registrations = webhook::load_registrations(&cfg.dir.join("webhooks.json"));
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
            webhooks: Arc::new(Mutex::new(HashMap::new())),
            logs: Mutex::new(HashMap::new()),
            registrations: Arc::new(Mutex::new(registrations)),
            changes: tokio::sync::broadcast::channel(1024).0,
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
            Err(e) => parts.push(Condition::fail("SinkProvided", "NotFound", e.to_string())),
        }
        let missing: Vec<&String> = r.resolved.secrets.values().filter_map(|v| v.as_ref().err()).collect();
        if !r.resolved.secrets.is_empty() {
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
        let problem = r.problem.clone().or_else(|| r.parts.iter().find_map(|p| p.not_deployed()));
        parts.push(match problem {
            Some((reason, msg)) => Condition::fail("Deployed", &reason, msg),
            None => Condition::ok("Deployed"),
        });
        let (mut fields, mut counters) = (Map::new(), Map::new());
        for p in &r.parts {
            parts.extend(p.conditions());
            p.fields(&mut fields, &mut counters);
        }
        SourceStatus {
            kind: k.0,
            namespace: k.1.clone(),
            name: k.2.clone(),
            conditions: Condition::ready_first(parts),
            sink_uri: r.resolved.sink.as_ref().ok().cloned(),
            stats: r.stats.snapshot(),
            fields,
            counters,
        }
    }

    /// Starts a source through its kind's driver, once its sink, dead-letter sink and Secrets are known.
    fn start(&self, k: &Key, d: &ResolvedSource) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(SourceStats::default());
        let mut run =
            Running { resolved: d.clone(), stop, tasks: vec![], stats: stats.clone(), problem: None, parts: vec![] };
        let Ok(sink) = d.sink.clone() else { return run };
        let dls = match &d.dead_letter_sink {
            Some(Err(e)) => {
                run.problem = Some(("DeadLetterSinkNotFound".into(), e.to_string()));
                return run;
            }
            Some(Ok(u)) => Some(u.clone()),
            None => None,
        };
        if d.secrets.values().any(|v| v.is_err()) {
            return run;
        }
        let Some(start) = DRIVERS.iter().find(|(n, _)| *n == k.0.name()).map(|(_, f)| *f) else {
            run.problem = Some(("NoDriver".into(), format!("Spate has no driver for {}", k.0.name())));
            return run;
        };
        let delivery = d.config.delivery.clone().unwrap_or_else(|| self.cfg.default_delivery.clone());
        let emitter = Arc::new(emit::Emitter {
            dispatcher: self.dispatcher.clone(),
            sink: sink.into(),
            dead_letter_sink: dls.map(Into::into),
            policy: delivery.retry_policy(self.cfg.default_backoff),
            format: delivery.format.unwrap_or_default(),
            overrides: d.config.ce_overrides.clone(),
            namespace: d.config.namespace.clone(),
            label: key_name(k),
            stats,
        });
        let mut st = Start {
            sources: self,
            namespace: &k.1,
            name: &k.2,
            resolved: d,
            emitter,
            stop: stop_rx,
            tasks: vec![],
            parts: vec![],
            problem: None,
        };
        start(&mut st);
        run.tasks = st.tasks;
        run.parts = st.parts;
        run.problem = st.problem;
        run
    }

    /// Stops a source. `deleted`: it is gone (or changed), so what it set up outside (a webhook) is removed.
    async fn stop(&self, k: &Key, r: Running, deleted: bool) {
        let _ = r.stop.send(true);
        for t in r.tasks {
            if tokio::time::timeout(self.cfg.grace + Duration::from_secs(5), t).await.is_err() {
                tracing::warn!(source = %key_name(k), "a source task did not stop in time");
            }
        }
        for p in &r.parts {
            p.finish(deleted).await;
        }
    }

    /// Tells ApiServerSources that a resource was added, updated or deleted.
    pub fn resource_changed(&self, change: apiserver::Change) {
        // No receiver (no ApiServerSource) is not an error.
        let _ = self.changes.send(Arc::new(change));
    }

    /// Whether any ApiServerSource listens (else the control plane need not describe changes).
    pub fn watches_changes(&self) -> bool {
        self.changes.receiver_count() > 0
    }
}
