//! The control plane: admission and writes to the resource store (`mod.rs`),
//! the controllers that reconcile it, one per room (`rooms.rs`, fed by
//! `queue.rs`), and the statuses they write back (`statuses.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use spate_api::{AdmissionError, Compiled, FieldError, Kind};
use spate_eventing::Eventing;
use spate_serving::{ServiceStatus, Serving};
use spate_sources::Sources;
use spate_sources::apiserver::Op as ApiOp;
use spate_sources::kafka_sink::KafkaSinks;
use thiserror::Error;
use tokio::sync::Mutex;

mod queue;
mod rooms;
mod statuses;

#[cfg(test)]
pub use rooms::Room;
use statuses::{mark_unavailable, source_status_json};

use crate::objects::Objects;
use crate::status;
use crate::store::{Entry, Key, KeyExt, Store};
use bytes::Bytes;
use spate_log::{Change, ConfigError, ConfigStore};

#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Conflict(Vec<FieldError>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{} \"{}\" already exists", .0.resource(), .0.2)]
    AlreadyExists(Key),
    #[error("Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again", .0.resource(), .0.2)]
    Stale(Key),
    #[error("{0}")]
    BadRequest(String),
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A watch from a version the history no longer holds (the client lists again).
    #[error("too old resource version: {0}")]
    Expired(String),
    #[error(transparent)]
    Shared(#[from] ConfigError),
}

/// HTTP status mapping of control-plane errors; the one place it is decided.
/// The body is a Kubernetes `Status` (`reason`, `details.causes[].field`), so
/// kubectl and client libraries show it as they show a cluster's.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, reason) = match &self {
            ApiError::Admission(AdmissionError::Invalid(_)) | ApiError::Conflict(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
            }
            ApiError::Admission(_) | ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::Expired(_) => (StatusCode::GONE, "Expired"),
            ApiError::Stale(_) | ApiError::Shared(ConfigError::Conflict { .. }) => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Shared(ConfigError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::Shared(ConfigError::Refused(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
        };
        let fields: &[FieldError] = match &self {
            ApiError::Admission(AdmissionError::Invalid(e)) | ApiError::Conflict(e) => e,
            _ => &[],
        };
        let errors: Vec<String> =
            if fields.is_empty() { vec![self.to_string()] } else { fields.iter().map(ToString::to_string).collect() };
        let mut details = json!({});
        if let ApiError::AlreadyExists(k) | ApiError::Stale(k) = &self {
            details = json!({"name": k.2, "group": k.0.group(), "kind": k.0.plural()});
        }
        if !fields.is_empty() {
            details["causes"] = fields
                .iter()
                .map(|e| json!({"reason": "FieldValueInvalid", "message": e.message, "field": e.path}))
                .collect();
        }
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": status.as_u16(), "reason": reason, "message": self.to_string(), "details": details, "errors": errors});
        (status, axum::Json(body)).into_response()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub kind: &'static str,
    pub group: &'static str,
    pub namespace: String,
    pub name: String,
    /// created, configured or unchanged.
    pub action: &'static str,
}

pub struct ControlPlane {
    store: Mutex<Store>,
    /// The controllers' work queues, one per room (`rooms.rs`).
    queues: rooms::Queues,
    eventing: Arc<Eventing>,
    serving: Arc<Serving>,
    sources: Arc<Sources>,
    /// The last reconciled status of each Service (for Revisions, Configurations and Routes).
    services: std::sync::Mutex<Vec<ServiceStatus>>,
    ready: AtomicBool,
    /// Shutting down: the controllers reconcile no more.
    stopping: AtomicBool,
    /// Where resources live: the data-dir file, or a NATS KV bucket shared by a cluster.
    config: Arc<dyn ConfigStore>,
    /// The dispatcher every delivery goes through: told which CAs each https destination trusts.
    dispatcher: spate_delivery::Dispatcher,
    /// The data plane's own `host:port` and certificate when it serves HTTPS:
    /// deliveries to Spate's own addresses trust its chain.
    own_tls: Option<(String, OwnChain)>,
    /// KafkaSinks: their producers, shared with the data plane.
    kafka_sinks: Arc<KafkaSinks>,
    /// Sender identity and EventPolicies on the data plane, when `--oidc-issuer` is set.
    data_auth: Option<Arc<crate::data_auth::DataAuth>>,
    /// Objects as clients read them, with versions and a change feed (never behind the store lock).
    objects: Arc<Objects>,
    /// Tests hold each room's reconciles this long (milliseconds, by [`Room`]), to show nothing waits for one.
    #[cfg(test)]
    pub reconcile_delay_ms: [std::sync::atomic::AtomicU64; 5],
}

/// The data plane's current certificate chain (PEM), as the listener serves it (it may be renewed).
pub type OwnChain = Arc<dyn Fn() -> String + Send + Sync>;

/// What a write expects to find (Kubernetes' create, update and apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Create or change (`spate apply`, server-side apply).
    Any,
    /// Create only: an existing object is `AlreadyExists`.
    Absent,
    /// Update only, of the object as read at this store revision: if it was
    /// written since, `Conflict` (if it is gone, `NotFound`).
    Revision(u64),
}

pub use spate_api::Derived;

fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl ControlPlane {
    /// Rebuilds `auth`'s audiences and policies at each reconcile, and publishes audiences.
    pub fn with_data_auth(mut self, auth: Arc<crate::data_auth::DataAuth>) -> Self {
        self.data_auth = Some(auth);
        self
    }

    /// Listens to every event brokers and channels store from now on (`spate tail`).
    pub fn tap(&self) -> tokio::sync::broadcast::Receiver<Arc<spate_eventing::tap::Tapped>> {
        self.eventing.tap()
    }

    /// The eventing room (replays run there).
    pub fn eventing(&self) -> &Arc<Eventing> {
        &self.eventing
    }

    /// The dispatcher every delivery goes through.
    pub fn dispatcher(&self) -> &spate_delivery::Dispatcher {
        &self.dispatcher
    }

    /// The running KafkaSinks (the data plane routes `/kafkasinks/<ns>/<name>` to them).
    pub fn kafka_sinks(&self) -> Arc<KafkaSinks> {
        self.kafka_sinks.clone()
    }

    /// Deliveries to `authority` (the data plane's own, served over HTTPS) trust `tls`'s chain.
    pub fn with_own_tls(mut self, authority: String, chain: OwnChain) -> Self {
        self.own_tls = Some((authority, chain));
        self
    }

    /// A control plane over `config`; call [`ControlPlane::sync`] before the first reconcile.
    pub fn new(
        config: Arc<dyn ConfigStore>,
        eventing: Arc<Eventing>,
        serving: Arc<Serving>,
        sources: Arc<Sources>,
        dispatcher: spate_delivery::Dispatcher,
    ) -> Self {
        ControlPlane {
            dispatcher,
            own_tls: None,
            kafka_sinks: Arc::default(),
            data_auth: None,
            objects: Arc::new(Objects::new()),
            #[cfg(test)]
            reconcile_delay_ms: Default::default(),
            queues: rooms::Queues::default(),
            store: Mutex::new(Store::new()),
            eventing,
            serving,
            sources,
            services: std::sync::Mutex::new(vec![]),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            config,
        }
    }

    /// Revisions, Configurations or Routes, built from the Services' last reconcile.
    pub fn get_derived(
        &self,
        kind: Derived,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Value>, ApiError> {
        let now = status::now_rfc3339();
        let services = self.services.lock().expect("services").clone();
        let mut out = vec![];
        for st in services.iter().filter(|s| namespace.is_none_or(|n| n == s.namespace)) {
            let meta = |n: &str| json!({"name": n, "namespace": st.namespace, "labels": {"serving.knative.dev/service": st.name}});
            let api = "serving.knative.dev/v1";
            match kind {
                Derived::Configuration => out.push(json!({
                    "apiVersion": api, "kind": "Configuration", "metadata": meta(&st.name),
                    "spec": {"template": st.revisions.last().map(|r| r.template.clone())},
                    "status": {"latestCreatedRevisionName": st.latest_created, "latestReadyRevisionName": st.latest_ready,
                               "conditions": status::conditions_json(&st.conditions, &now)},
                })),
                Derived::Route => out.push(json!({
                    "apiVersion": api, "kind": "Route", "metadata": meta(&st.name),
                    "spec": {"traffic": st.traffic.iter().map(|t| json!({"revisionName": t.revision, "percent": t.percent, "tag": t.tag})).collect::<Vec<_>>()},
                    "status": {"url": st.url, "address": {"url": st.address}, "traffic": status::traffic(st),
                               "conditions": status::conditions_json(&st.conditions, &now)},
                })),
                Derived::Revision => {
                    for r in &st.revisions {
                        let live = self.serving.revision_status(&st.namespace, &r.name);
                        let mut status = json!({"conditions": [{"type": "Ready", "status": if live.as_ref().is_some_and(|l| l.last_error.is_some() && l.ready == 0) { "False" } else { "True" }, "lastTransitionTime": now}]});
                        if let Some(l) = &live {
                            status["desiredScale"] = json!(l.desired);
                            status["actualScale"] = json!(l.ready);
                            status["startingInstances"] = json!(l.starting);
                            status["restarts"] = json!(l.restarts);
                            if let Some(e) = &l.last_error {
                                status["lastError"] = json!(e);
                            }
                        } else {
                            status["actualScale"] = json!(0);
                        }
                        let mut md = meta(&r.name);
                        md["creationTimestamp"] = json!(r.created);
                        let template_spec = r.template.get("spec").cloned().unwrap_or(Value::Null);
                        out.push(json!({"apiVersion": api, "kind": "Revision", "metadata": md, "spec": template_spec, "status": status}));
                    }
                }
            }
        }
        if let Some(n) = name {
            out.retain(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(n));
            if out.is_empty() {
                return Err(ApiError::NotFound(format!("{} {}/{n}", kind.name(), namespace.unwrap_or("default"))));
            }
        }
        Ok(out)
    }

    /// The last lines printed by a Service's instances or a ContainerSource's processes.
    pub fn logs(&self, kind: Kind, namespace: &str, name: &str) -> Result<Vec<String>, ApiError> {
        let lines =
            if kind.is_source() { self.sources.logs(namespace, name) } else { self.serving.logs(namespace, name) };
        lines.ok_or_else(|| ApiError::NotFound(format!("{} {namespace}/{name}", kind.name())))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Admits a whole manifest text: all or nothing.
    pub async fn apply(&self, text: &str, dry_run: bool) -> Result<Vec<Applied>, ApiError> {
        let admitted = spate_api::admit_text(text)?;
        let expect = vec![Expect::Any; admitted.len()];
        self.write(admitted, &expect, dry_run).await
    }

    /// Writes admitted resources, all or nothing, each as its `expect` says;
    /// once written, this instance's objects show them (a writer reads its writes).
    pub async fn write(
        &self,
        admitted: Vec<(spate_api::Resource, Compiled)>,
        expect: &[Expect],
        dry_run: bool,
    ) -> Result<Vec<Applied>, ApiError> {
        self.write_applied(admitted, expect, dry_run, None).await
    }

    /// [`ControlPlane::write`], recording what a field manager applied (server-side apply).
    pub async fn write_applied(
        &self,
        mut admitted: Vec<(spate_api::Resource, Compiled)>,
        expect: &[Expect],
        dry_run: bool,
        by_manager: Option<(String, Value)>,
    ) -> Result<Vec<Applied>, ApiError> {
        let mut store = self.store.lock().await;
        self.default_brokers(&store, &mut admitted)?;
        check_expectations(&store, &admitted, expect)?;
        let mut applied = vec![];
        let mut changed = vec![];
        for (resource, compiled) in admitted {
            let key = resource.key();
            let same_applied = |old: &Entry| by_manager.as_ref().is_none_or(|(m, doc)| old.applied.get(m) == Some(doc));
            let action = match store.entries.get(&key) {
                None => "created",
                Some(old) if old.resource.same_manifest(&resource.manifest) && same_applied(old) => "unchanged",
                Some(_) => "configured",
            };
            applied.push(Applied {
                kind: resource.kind.name(),
                group: resource.kind.group(),
                namespace: resource.namespace.clone(),
                name: resource.name.clone(),
                action,
            });
            if dry_run || action == "unchanged" {
                continue;
            }
            let (generation, uid, created, revision, mut managers) = match store.entries.get(&key) {
                // Generation counts spec changes only (not a manager's record).
                Some(old) => (
                    old.generation + u64::from(!old.resource.same_manifest(&resource.manifest)),
                    old.uid.clone(),
                    old.created.clone(),
                    old.revision,
                    old.applied.clone(),
                ),
                None => (1, new_uid(), status::now_rfc3339(), 0, Default::default()),
            };
            if let Some((m, doc)) = &by_manager {
                managers.insert(m.clone(), doc.clone());
            }
            changed.push(Entry {
                resource: crate::store::Stored::new(&resource),
                compiled,
                status: Default::default(),
                generation,
                uid,
                created,
                revision,
                applied: managers,
            });
        }
        let keys: Vec<Key> = changed.iter().map(|e| e.resource.key()).collect();
        let added: Vec<bool> = changed.iter().map(|e| e.generation == 1).collect();
        // Nothing changed, nothing written: a restart with the same manifests
        // must start even when the disk is full.
        let result = self.persist(&mut store, changed).await;
        if !dry_run {
            let last = keys.iter().filter_map(|k| store.entries.get(k)).map(|e| e.revision).max();
            if let Some(rev) = last {
                self.objects.seen(rev).await;
            }
            drop(store);
            self.reconciled(&keys).await;
            // ApiServerSources hear of what this instance wrote (so each change once per cluster).
            let watched = if self.sources.watches_changes() { keys.into_iter().zip(added).collect() } else { vec![] };
            let store = self.store.lock().await;
            for (key, added) in watched {
                if let Some(e) = store.entries.get(&key) {
                    let op = if added { ApiOp::Add } else { ApiOp::Update };
                    self.sources.resource_changed(api_change(&key, op, e.object()));
                }
            }
        }
        result.map(|()| applied)
    }

    /// Knative's defaulting of Brokers that name no class or config: `config-br-defaults`
    /// (applied now or stored), else `--default-broker-class`. An update keeps the class the
    /// stored broker was given (it is immutable). A `config-br-defaults` that does not read is
    /// refused, naming its key.
    fn default_brokers(&self, store: &Store, admitted: &mut [(spate_api::Resource, Compiled)]) -> Result<(), ApiError> {
        let (ns, name, key) = spate_api::BROKER_DEFAULTS;
        let is_defaults = |c: &Compiled| matches!(c, Compiled::ConfigMap(m) if m.namespace == ns && m.name == name);
        let text = admitted
            .iter()
            .map(|(_, c)| c)
            .chain(store.entries.get(&(Kind::ConfigMap, ns.to_string(), name.to_string())).map(|e| &e.compiled))
            .find(|c| is_defaults(c))
            .and_then(|c| match c {
                Compiled::ConfigMap(m) => m.data.get(key).cloned(),
                _ => None,
            });
        let defaults = match text.as_deref().map(spate_api::BrokerDefaults::parse) {
            None => spate_api::BrokerDefaults::default(),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                let who = format!("ConfigMap {ns}/{name}");
                return Err(ApiError::Admission(spate_api::AdmissionError::Invalid(vec![FieldError::new(
                    None,
                    who,
                    &format!("data.{key}"),
                    e,
                )])));
            }
        };
        let server_class = self.eventing.config().default_broker_class.name();
        for (r, c) in admitted.iter_mut() {
            let mut default = defaults.for_namespace(&r.namespace).clone();
            if let Some(Compiled::Broker(old)) = store.entries.get(&r.key()).map(|e| &e.compiled) {
                default.class = old.class.clone().or(default.class);
            }
            spate_api::default_broker(r, c, &default, server_class);
        }
        Ok(())
    }

    /// Writes changed entries to the config store (compare and swap on each
    /// one's revision; the file store writes them all at once); entries enter
    /// the cache only once written.
    async fn persist(&self, store: &mut Store, changed: Vec<Entry>) -> Result<(), ApiError> {
        if changed.is_empty() {
            return Ok(());
        }
        let items = changed
            .iter()
            .map(|e| {
                let value = Bytes::from(serde_json::to_vec(&e.record(true)).expect("JSON values serialize"));
                (Entry::shared_key(&e.resource.key()), value, e.revision)
            })
            .collect();
        let revisions = self.config.put_many(items).await?;
        for (mut e, revision) in changed.into_iter().zip(revisions) {
            e.revision = revision;
            store.entries.insert(e.resource.key(), e);
        }
        Ok(())
    }

    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), ApiError> {
        let mut store = self.store.lock().await;
        let key: Key = (kind, namespace.to_string(), name.to_string());
        if !store.entries.contains_key(&key) {
            return Err(ApiError::NotFound(format!("{} \"{name}\"", key.resource())));
        }
        self.config.delete(&Entry::shared_key(&key)).await?;
        self.objects.gone(&key).await;
        let gone = store.entries.remove(&key);
        drop(store);
        self.reconciled(std::slice::from_ref(&key)).await;
        if let Some(e) = gone.filter(|_| self.sources.watches_changes()) {
            self.sources.resource_changed(api_change(&key, ApiOp::Delete, e.object()));
        }
        Ok(())
    }

    /// What field manager `manager` last applied to `key` (server-side apply).
    pub async fn applied(&self, key: &Key, manager: &str) -> Option<Value> {
        self.store.lock().await.entries.get(key).and_then(|e| e.applied.get(manager).cloned())
    }

    /// Objects as clients read them, with their versions and change feed.
    pub fn objects(&self) -> &Arc<Objects> {
        &self.objects
    }

    /// Objects of `kind` in `namespace` (all namespaces if `None`), optionally
    /// one by name, with live state (counters, process state, engine health).
    /// Reads never wait for a reconcile.
    pub async fn get(&self, kind: Kind, namespace: Option<&str>, name: Option<&str>) -> Result<Vec<Value>, ApiError> {
        let (mut items, _) = self.objects.list(Some(kind), namespace);
        if let Some(n) = name {
            items.retain(|o| o["metadata"]["name"] == n);
        }
        for o in &mut items {
            self.decorate(kind, o).await;
        }
        // EventTypes also list what flows through each Broker and Channel (read-only).
        if kind == Kind::EventType {
            items.extend(self.seen_event_types(namespace, name));
        }
        if items.is_empty()
            && let Some(n) = name
        {
            let key = (kind, namespace.unwrap_or("default").to_string(), n.to_string());
            return Err(ApiError::NotFound(format!("{} \"{n}\"", key.resource())));
        }
        Ok(items)
    }

    /// Adds what only the running system knows to an object's status.
    pub async fn decorate(&self, kind: Kind, o: &mut Value) {
        let (Some(ns), Some(name)) = (o["metadata"]["namespace"].as_str(), o["metadata"]["name"].as_str()) else {
            return;
        };
        let (ns, name) = (ns.to_string(), name.to_string());
        // Sources report live counters and process state, not only what the last reconcile saw.
        if kind.is_source()
            && let Some(st) = self.sources.status(kind, &ns, &name).await
        {
            let generation = o["metadata"]["generation"].as_u64().unwrap_or(1);
            o["status"] = source_status_json(&st, generation, &o["status"]);
        }
        // Triggers report their live counters, backlog and last failures.
        if kind == Kind::Trigger
            && let Some(stats) = self.eventing.trigger_stats(&ns, &name).await
        {
            let backlog = self.eventing.trigger_backlog(&ns, &name).await;
            o["status"]["spate"] = json!(crate::live::TriggerLive::new(&stats, backlog));
        }
        // Brokers and channels on a shared engine say when it is down, now.
        if let Some(problem) = self.eventing.storage_problem(kind, &ns, &name) {
            mark_unavailable(&mut o["status"], &problem);
        }
    }

    /// The EventTypes seen flowing through Brokers and Channels that no stored EventType describes.
    fn seen_event_types(&self, namespace: Option<&str>, name: Option<&str>) -> Vec<Value> {
        let has = |k: Kind, ns: &str, n: &str| self.objects.contains(&(k, ns.to_string(), n.to_string()));
        let owner = |k: &str, ns: &str, n: &str| -> Option<Kind> {
            let candidates: &[Kind] = if k == "Broker" {
                &[Kind::Broker]
            } else {
                &[Kind::InMemoryChannel, Kind::Channel, Kind::NatsJetStreamChannel, Kind::KafkaChannel]
            };
            let stored = candidates.iter().copied().find(|c| has(*c, ns, n));
            // A flow's channels are not stored entries: they are InMemoryChannels it owns.
            stored.or((k != "Broker").then_some(Kind::InMemoryChannel))
        };
        let seen = self.eventing.event_types();
        let mut auto = crate::live::seen_event_types(&seen, owner, |ns, n| has(Kind::EventType, ns, n));
        auto.retain(|o| {
            namespace.is_none_or(|w| o["metadata"]["namespace"] == w) && name.is_none_or(|w| o["metadata"]["name"] == w)
        });
        auto
    }

    /// Loads the config store's current state into the cache (before the
    /// first reconcile), then starts the controllers (one per room) and the
    /// follower that feeds them every later change. The objects view follows
    /// the store at once, on its own task, never waiting for the store lock.
    /// Call [`ControlPlane::reconcile`] next: it runs the first reconcile.
    pub async fn start(self: &Arc<Self>) -> Result<(), ApiError> {
        let mut rx = self.config.watch().await?;
        let mut store = self.store.lock().await;
        while let Some(change) = rx.recv().await {
            self.objects.apply(&change);
            if change == Change::Synced {
                break;
            }
            apply_change(&mut store, change);
        }
        drop(store);
        let (tx, out) = tokio::sync::mpsc::unbounded_channel();
        let objects = self.objects.clone();
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                objects.apply(&change);
                if tx.send(change).is_err() {
                    return;
                }
            }
        });
        for room in rooms::Room::ALL {
            tokio::spawn(self.clone().control(room));
        }
        tokio::spawn(self.clone().follow(out));
        Ok(())
    }

    /// Follows the config store: every change (from any instance) updates the
    /// cache, and each changed object is queued with the rooms that read it.
    async fn follow(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Change>) {
        while let Some(first) = rx.recv().await {
            let mut store = self.store.lock().await;
            let mut keys: Vec<Key> = apply_change(&mut store, first).into_iter().collect();
            while let Ok(more) = rx.try_recv() {
                keys.extend(apply_change(&mut store, more));
            }
            drop(store);
            self.queues.add(&keys);
        }
    }

    /// The first reconcile: every room once. The server is ready after it.
    pub async fn reconcile(&self) {
        let tickets = self.queues.kick_all();
        self.queues.wait(&tickets).await;
        self.ready.store(true, Ordering::Release);
    }

    /// Queues changed objects with the rooms that read them and waits for those
    /// rooms to reconcile them (a writer sees its objects' statuses).
    async fn reconciled(&self, keys: &[Key]) {
        let tickets = self.queues.add(keys);
        self.queues.wait(&tickets).await;
    }

    /// Stops the controllers (a reconcile under way finishes first), then the rooms.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for room in rooms::Room::ALL {
            let _one = self.queues.of(room).running().await;
            self.queues.of(room).close();
        }
        self.sources.shutdown().await;
        self.eventing.shutdown().await;
        self.serving.shutdown().await;
    }
}

/// Immutable fields, and what each write expects to find: every problem before anything is written.
fn check_expectations(
    store: &Store,
    admitted: &[(spate_api::Resource, Compiled)],
    expect: &[Expect],
) -> Result<(), ApiError> {
    let mut conflicts = vec![];
    for ((r, _), want) in admitted.iter().zip(expect) {
        let key = r.key();
        let old = store.entries.get(&key);
        match (old, *want) {
            (Some(_), Expect::Absent) => return Err(ApiError::AlreadyExists(key)),
            (None, Expect::Revision(_)) => {
                return Err(ApiError::NotFound(format!("{} \"{}\"", key.resource(), key.2)));
            }
            // Written since the version the client read (a later status change is not a write).
            (Some(old), Expect::Revision(rev)) if old.revision > rev => return Err(ApiError::Stale(key)),
            _ => {}
        }
        if let Some(old) = old {
            conflicts.extend(spate_api::check_update(&old.resource.resource(), r));
        }
    }
    if conflicts.is_empty() { Ok(()) } else { Err(ApiError::Conflict(conflicts)) }
}

fn api_change(key: &Key, op: ApiOp, object: Value) -> spate_sources::apiserver::Change {
    spate_sources::apiserver::Change { kind: key.0, namespace: key.1.clone(), name: key.2.clone(), op, object }
}

/// Applies one change of the shared store to the local cache; the object it changed, if any.
fn apply_change(store: &mut Store, change: Change) -> Option<Key> {
    match change {
        Change::Synced => None,
        Change::Delete { key: shared_key, .. } => {
            let key = store.entries.keys().find(|k| Entry::shared_key(k) == shared_key).cloned()?;
            store.entries.remove(&key).map(|_| key)
        }
        Change::Put(v) => {
            let record: Value = match serde_json::from_slice(&v.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(key = %v.key, error = %e, "shared resource is not JSON; skipped");
                    return None;
                }
            };
            let entry = match Entry::from_record(&record, 0, v.revision) {
                Ok(e) => e,
                Err(errs) => {
                    for e in errs {
                        tracing::error!(key = %v.key, error = %e, "shared resource does not pass admission here; skipped");
                    }
                    return None;
                }
            };
            let key = entry.resource.key();
            match store.entries.get_mut(&key) {
                // Our own write coming back, or an older one: nothing to do.
                Some(old) if old.revision >= v.revision => None,
                Some(old)
                    if old.resource.same_as(&entry.resource)
                        && old.generation == entry.generation
                        && old.applied == entry.applied =>
                {
                    old.revision = v.revision;
                    None
                }
                _ => {
                    store.entries.insert(key.clone(), entry);
                    Some(key)
                }
            }
        }
    }
}
