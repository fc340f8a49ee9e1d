//! GitHubSource and GitLabSource as a running source: the receive endpoint
//! (see [`super`]) and the webhook's registration, once per cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use spate_api::{Condition, WebhookSpec};
use tokio::sync::watch;

use super::{Provider, Registration, Webhook, register, unregister};
use crate::{BoxFut, Claims, Start, Started};

/// A webhook registration, persisted so that a restart does not register twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    pub(crate) reg: Registration,
    pub(crate) url: String,
}

/// Starts a GitHubSource or GitLabSource: the receive endpoint, and registration with an access token.
pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<WebhookSpec>().cloned() else { return };
    let label = st.label().to_string();
    let provider = if spec.github { Provider::GitHub } else { Provider::GitLab };
    let secret_token = spec.secret_token.as_ref().and_then(|r| st.secret(r)).unwrap_or_default();
    let hook = Arc::new(Webhook {
        provider,
        spec: spec.clone(),
        secret_token: secret_token.clone().into_bytes(),
        emitter: st.emitter.clone(),
        recent: Default::default(),
    });
    let (ns, name) = (st.namespace.to_string(), st.name.to_string());
    st.sources.webhooks.lock().expect("webhooks").insert((provider, ns.clone(), name.clone()), hook.clone());
    let part = Arc::new(WebhookPart {
        hook,
        url: st.sources.webhook_url(provider, &ns, &name),
        registration: Arc::new(Mutex::new(Ok(None))),
        access: spec.access_token.as_ref().and_then(|r| st.secret(r)),
        key: label.clone(),
        ns,
        name,
        sources: SharedRegs {
            client: st.sources.client.clone(),
            regs: st.sources.registrations.clone(),
            path: st.sources.cfg.dir.join("webhooks.json"),
            claims: st.sources.claims.clone(),
            webhooks: st.sources.webhooks.clone(),
        },
    });
    if let Some(access) = part.access.clone() {
        let registrar = Registrar {
            client: st.sources.client.clone(),
            provider,
            spec,
            access,
            secret_token,
            url: part.url.clone(),
            regs: st.sources.registrations.clone(),
            path: st.sources.cfg.dir.join("webhooks.json"),
            slot: part.registration.clone(),
            key: label,
            claims: st.sources.claims.clone(),
        };
        let stop = st.stop.clone();
        st.spawn(registrar.run(stop));
    }
    st.keep(part);
}

/// Webhook handlers by (provider, namespace, name), for the data plane.
pub(crate) type Hooks = Arc<Mutex<std::collections::HashMap<(Provider, String, String), Arc<Webhook>>>>;

struct SharedRegs {
    client: reqwest::Client,
    regs: Arc<Mutex<BTreeMap<String, Registered>>>,
    path: PathBuf,
    claims: Arc<dyn Claims>,
    webhooks: Hooks,
}

/// A running webhook source: its endpoint's URL and registration, for status and for stop.
struct WebhookPart {
    hook: Arc<Webhook>,
    url: String,
    registration: Arc<Mutex<Result<Option<String>, String>>>,
    access: Option<String>,
    key: String,
    ns: String,
    name: String,
    sources: SharedRegs,
}

impl Started for WebhookPart {
    fn conditions(&self) -> Vec<Condition> {
        match &*self.registration.lock().expect("registration") {
            Err(e) => vec![Condition::fail("WebhookRegistered", "RegistrationFailed", e.clone())],
            Ok(_) => vec![],
        }
    }
    fn fields(&self, status: &mut serde_json::Map<String, Value>, _counters: &mut serde_json::Map<String, Value>) {
        status.insert("url".into(), json!(self.url));
        if let Ok(Some(id)) = &*self.registration.lock().expect("registration") {
            status.insert("webhookIDKey".into(), json!(id));
        }
    }
    /// The endpoint goes; when the source is deleted, so does the registered webhook.
    fn finish(&self, deleted: bool) -> BoxFut<'_, ()> {
        Box::pin(async move {
            {
                let mut hooks = self.sources.webhooks.lock().expect("webhooks");
                let hk = (self.hook.provider, self.ns.clone(), self.name.clone());
                if hooks.get(&hk).is_some_and(|cur| Arc::ptr_eq(cur, &self.hook)) {
                    hooks.remove(&hk);
                }
            }
            if !deleted {
                return;
            }
            let known = self.sources.regs.lock().expect("registrations").remove(&self.key);
            if let (Some(known), Some(access)) = (known, &self.access) {
                if let Err(e) = unregister(&self.sources.client, self.hook.provider, &known.reg, access).await {
                    tracing::warn!(source = %self.key, error = %e, "could not remove the webhook; remove it by hand");
                }
                self.sources.claims.remember(format!("webhook/{}", self.key), None).await;
                save_registrations(&self.sources.path, &self.sources.regs.lock().expect("registrations"));
            }
        })
    }
}

pub(crate) fn load_registrations(path: &std::path::Path) -> BTreeMap<String, Registered> {
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
                    reg: Registration {
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
        let reg = Registration { id: v["id"].as_str()?.to_string(), hooks_url: v["hooksUrl"].as_str()?.to_string() };
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
            None => {
                match register(&self.client, self.provider, &self.spec, &self.access, &self.secret_token, &self.url)
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
                }
            }
        };
        let record = json!({"id": reg.reg.id, "hooksUrl": reg.reg.hooks_url, "url": reg.url}).to_string();
        self.claims.remember(shared_key.to_string(), Some(record)).await;
        *self.slot.lock().expect("registration") = Ok(Some(reg.reg.id.clone()));
        let mut g = self.regs.lock().expect("registrations");
        g.insert(self.key.clone(), reg);
        save_registrations(&self.path, &g);
    }
}
