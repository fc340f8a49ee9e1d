//! Event sources (`sources.knative.dev`), SinkBinding and `v1 Secret`:
//! validated and compiled once, here, so the runtime never parses a schedule,
//! a timezone or a secret reference on its own.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value};
use spate_core::Destination;

use crate::Kind;
use crate::delivery::{self, DeliverySpec};
use crate::serving::{ContainerSpec, container};
use crate::walk::{Walker, join};

/// `{secretKeyRef: {name, key}}`: a value kept in a Secret of the source's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// A `v1 Secret`. Its values never appear in `Debug` output, logs or `get`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretConfig {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretConfig")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What every source shares.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub sink: Destination,
    /// `spec.ceOverrides.extensions`, applied to every event the source emits.
    pub ce_overrides: Vec<(String, String)>,
    pub delivery: Option<DeliverySpec>,
    pub spec: SourceSpec,
}

impl SourceConfig {
    /// `K_CE_OVERRIDES` for this source's processes.
    pub fn ce_overrides_json(&self) -> Option<String> {
        ce_overrides_env(&self.ce_overrides)
    }
    /// Every Secret this source reads.
    pub fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        match &self.spec {
            SourceSpec::Ping(_) => vec![],
            SourceSpec::Container(cs) => cs.iter().flat_map(|c| c.env_secrets.iter().map(|(_, r)| r)).collect(),
            SourceSpec::GitHub(g) => g.secret_token.iter().chain(&g.access_token).collect(),
            SourceSpec::GitLab(g) => g.secret_token.iter().chain(&g.access_token).collect(),
            SourceSpec::Kafka(k) => {
                [&k.net.tls_ca_cert, &k.net.tls_cert, &k.net.tls_key, &k.net.sasl_user, &k.net.sasl_password]
                    .into_iter()
                    .flatten()
                    .chain(k.net.sasl_mechanism.iter())
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Ping(PingSpec),
    Container(Vec<ContainerSpec>),
    GitHub(WebhookSpec),
    GitLab(WebhookSpec),
    Kafka(Box<KafkaSpec>),
}

/// PingSource (and the older CronJobSource).
#[derive(Debug, Clone, PartialEq)]
pub struct PingSpec {
    /// The cron expression as given (validated; 5 fields, or 6 with seconds first).
    pub schedule: String,
    /// IANA name; `None` is UTC.
    pub timezone: Option<String>,
    pub data: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// `dev.knative.sources.ping`, or `dev.knative.cronjob.event` for a CronJobSource.
    pub event_type: &'static str,
    /// `/apis/v1/namespaces/<ns>/pingsources/<name>`.
    pub event_source: String,
}

/// GitHubSource or GitLabSource.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSpec {
    /// GitHub: `owner/repo` or `org`. GitLab: the project URL.
    pub target: String,
    /// GitHub event names (`push`, `pull_request`) or GitLab hook kinds (`push_events`, `issues_events`).
    pub event_types: Vec<String>,
    pub access_token: Option<SecretKeyRef>,
    pub secret_token: Option<SecretKeyRef>,
    /// GitHub: `githubAPIURL` (default `https://api.github.com`). GitLab: derived from the project URL.
    pub api_url: String,
    /// GitHub `secure` / GitLab `sslverify`.
    pub secure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialOffset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct KafkaNet {
    pub tls: bool,
    pub tls_ca_cert: Option<SecretKeyRef>,
    pub tls_cert: Option<SecretKeyRef>,
    pub tls_key: Option<SecretKeyRef>,
    pub sasl: bool,
    pub sasl_user: Option<SecretKeyRef>,
    pub sasl_password: Option<SecretKeyRef>,
    pub sasl_mechanism: Option<SecretKeyRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSpec {
    pub bootstrap_servers: Vec<String>,
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub consumers: u32,
    pub initial_offset: InitialOffset,
    /// One event in flight per partition, in offset order.
    pub ordered: bool,
    pub net: KafkaNet,
    /// `/apis/v1/namespaces/<ns>/kafkasources/<name>`.
    pub event_source: String,
}

/// `K_CE_OVERRIDES` as Knative sets it: `{"extensions":{...}}`, or `None` without overrides.
pub fn ce_overrides_env(overrides: &[(String, String)]) -> Option<String> {
    (!overrides.is_empty()).then(|| {
        let ext: Map<String, Value> = overrides.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        serde_json::json!({ "extensions": ext }).to_string()
    })
}

/// A SinkBinding: `K_SINK` and `K_CE_OVERRIDES` for the processes of its subject.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkBindingConfig {
    pub namespace: String,
    pub name: String,
    pub subject: BindingSubject,
    pub sink: Destination,
    pub ce_overrides: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSubject {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    /// One object by name, or every object whose labels match.
    pub name: Option<String>,
    pub match_labels: Vec<(String, String)>,
}

/// Context attributes a `ceOverrides` extension may not replace.
const CONTEXT_ATTRIBUTES: &[&str] =
    &["specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"];

fn ce_overrides(w: &mut Walker, v: Option<&Value>, path: &str) -> Vec<(String, String)> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return vec![] };
    let Some(m) = w.object(v, path, &["extensions"]) else { return vec![] };
    let Some(ext) = m.get("extensions") else { return vec![] };
    let p = join(path, "extensions");
    let mut out = vec![];
    for (k, v) in w.string_map(ext, &p) {
        let kp = join(&p, k);
        if CONTEXT_ATTRIBUTES.contains(&k) {
            w.error(
                &kp,
                format!(
                    "'{k}' is a CloudEvents context attribute; the source sets it and ceOverrides cannot replace it"
                ),
            );
        } else if let Err(e) = spate_core::rules::check_attribute_name(k) {
            w.error(&kp, e.to_string());
        } else {
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

pub(crate) fn secret_ref(w: &mut Walker, m: &Map<String, Value>, key: &str, path: &str) -> Option<SecretKeyRef> {
    let v = m.get(key).filter(|v| !v.is_null())?;
    let p = join(path, key);
    let sm = w.object(v, &p, &["secretKeyRef"])?;
    let Some(r) = sm.get("secretKeyRef") else {
        w.error(&join(&p, "secretKeyRef"), "is required (a value comes from a Secret: {name, key})");
        return None;
    };
    let rp = join(&p, "secretKeyRef");
    let rm = w.object(r, &rp, &["name", "key", "optional"])?;
    let name = w.req_str(rm, "name", &rp);
    let k = w.req_str(rm, "key", &rp);
    Some(SecretKeyRef { name: name?.to_string(), key: k?.to_string() })
}

fn strings(w: &mut Walker, m: &Map<String, Value>, key: &str, path: &str, required: bool) -> Vec<String> {
    let p = join(path, key);
    match m.get(key) {
        None | Some(Value::Null) => {
            if required {
                w.error(&p, "is required");
            }
            vec![]
        }
        // Knative accepts `bootstrapServers: a:9092,b:9092` as well as a list.
        Some(Value::String(s)) => s.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        Some(Value::Array(items)) => {
            let out: Vec<String> = items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.as_str() {
                    Some(s) if !s.is_empty() => Some(s.to_string()),
                    _ => {
                        w.error(&format!("{p}[{i}]"), "must be a non-empty string");
                        None
                    }
                })
                .collect();
            if required && items.is_empty() {
                w.error(&p, "must name at least one");
            }
            out
        }
        Some(_) => {
            w.error(&p, "must be a list of strings");
            vec![]
        }
    }
}

fn sink(w: &mut Walker, m: &Map<String, Value>, ns: &str) -> Option<Destination> {
    match m.get("sink").filter(|v| !v.is_null()) {
        Some(v) => delivery::destination(w, v, "spec.sink", ns),
        None => {
            w.error("spec.sink", "is required (a ref to a Broker, Channel or Service, or a uri)");
            None
        }
    }
}

fn delivery_spec(w: &mut Walker, m: &Map<String, Value>, ns: &str) -> Option<DeliverySpec> {
    m.get("delivery").filter(|v| !v.is_null()).and_then(|v| delivery::parse(w, v, "spec.delivery", ns))
}

/// Validates a cron schedule: 5 fields (Knative), or 6 with seconds first (Spate's extension), or
/// a nickname such as `@hourly`.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    let fields = s.split_whitespace().count();
    if !s.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "'{s}' has {fields} fields; a schedule has 5 (minute hour day-of-month month day-of-week) or, with seconds, 6"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(s)
        .map_err(|e| format!("'{s}' is not a valid cron schedule: {e}"))
}

/// Validates an IANA timezone name.
pub fn parse_timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>().map_err(|_| format!("'{s}' is not an IANA timezone (such as Europe/Madrid or UTC)"))
}

const COMMON: &[&str] = &["sink", "ceOverrides"];

fn allowed(extra: &[&'static str]) -> Vec<&'static str> {
    COMMON.iter().chain(extra).copied().collect()
}

pub fn compile_source(w: &mut Walker, kind: Kind, spec: &Value, ns: &str, name: &str) -> Option<SourceConfig> {
    let fields: Vec<&str> = match kind {
        Kind::PingSource => allowed(&["schedule", "timezone", "data", "dataBase64", "contentType"]),
        Kind::CronJobSource => allowed(&["schedule", "data", "serviceAccountName", "resources"]),
        Kind::ContainerSource => allowed(&["template"]),
        Kind::GitHubSource => allowed(&[
            "ownerAndRepository",
            "eventTypes",
            "accessToken",
            "secretToken",
            "githubAPIURL",
            "secure",
            "serviceAccountName",
        ]),
        Kind::GitLabSource => {
            allowed(&["projectUrl", "eventTypes", "accessToken", "secretToken", "sslverify", "serviceAccountName"])
        }
        Kind::KafkaSource => allowed(&[
            "bootstrapServers",
            "topics",
            "consumerGroup",
            "consumers",
            "initialOffset",
            "ordering",
            "delivery",
            "net",
            "key",
        ]),
        _ => unreachable!("compile_source is called for source kinds only"),
    };
    let m = w.object(spec, "spec", &fields)?;
    let sink = sink(w, m, ns);
    let ce_overrides = ce_overrides(w, m.get("ceOverrides"), "spec.ceOverrides");
    let mut delivery = None;
    let spec = match kind {
        Kind::PingSource | Kind::CronJobSource => ping(w, m, kind, ns, name).map(SourceSpec::Ping),
        Kind::ContainerSource => containers(w, m).map(SourceSpec::Container),
        Kind::GitHubSource => github(w, m).map(SourceSpec::GitHub),
        Kind::GitLabSource => gitlab(w, m).map(SourceSpec::GitLab),
        Kind::KafkaSource => {
            delivery = delivery_spec(w, m, ns);
            kafka(w, m, ns, name).map(|k| SourceSpec::Kafka(Box::new(k)))
        }
        _ => None,
    };
    Some(SourceConfig {
        kind,
        namespace: ns.to_string(),
        name: name.to_string(),
        sink: sink?,
        ce_overrides,
        delivery,
        spec: spec?,
    })
}

fn ping(w: &mut Walker, m: &Map<String, Value>, kind: Kind, ns: &str, name: &str) -> Option<PingSpec> {
    let schedule = w.req_str(m, "schedule", "spec");
    if let Some(s) = schedule
        && let Err(e) = parse_schedule(s)
    {
        w.error("spec.schedule", e);
    }
    let timezone = w.opt_str(m, "timezone", "spec").map(str::to_string);
    if let Some(tz) = &timezone
        && let Err(e) = parse_timezone(tz)
    {
        w.error("spec.timezone", e);
    }
    let text = w.opt_str(m, "data", "spec");
    let b64 = w.opt_str(m, "dataBase64", "spec");
    let data = match (text, b64) {
        (Some(_), Some(_)) => {
            w.error("spec.dataBase64", "give data or dataBase64, not both");
            None
        }
        (Some(t), None) => Some(t.as_bytes().to_vec()),
        (None, Some(b)) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                w.error("spec.dataBase64", format!("is not valid base64: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    let content_type = w.opt_str(m, "contentType", "spec").map(str::to_string);
    let (event_type, event_source) = if kind == Kind::CronJobSource {
        ("dev.knative.cronjob.event", format!("/apis/v1/namespaces/{ns}/cronjobsources/{name}"))
    } else {
        ("dev.knative.sources.ping", format!("/apis/v1/namespaces/{ns}/pingsources/{name}"))
    };
    Some(PingSpec { schedule: schedule?.to_string(), timezone, data, content_type, event_type, event_source })
}

fn containers(w: &mut Walker, m: &Map<String, Value>) -> Option<Vec<ContainerSpec>> {
    let Some(t) = m.get("template") else {
        w.error("spec.template", "is required (a pod template with spec.containers)");
        return None;
    };
    let tm = w.object(t, "spec.template", &["metadata", "spec"])?;
    let Some(ps) = tm.get("spec") else {
        w.error("spec.template.spec", "is required");
        return None;
    };
    let pm = w.object(ps, "spec.template.spec", &["containers", "serviceAccountName", "volumes"])?;
    let Some(Value::Array(cs)) = pm.get("containers") else {
        w.error("spec.template.spec.containers", "is required (a list of containers)");
        return None;
    };
    if cs.is_empty() {
        w.error("spec.template.spec.containers", "must name at least one container");
    }
    let out: Vec<Option<ContainerSpec>> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = format!("spec.template.spec.containers[{i}]");
            let c = container(w, c, &p)?;
            for k in c.env.iter().map(|(k, _)| k).chain(c.env_secrets.iter().map(|(k, _)| k)) {
                if k == "K_SINK" || k == "K_CE_OVERRIDES" {
                    w.error(&join(&p, "env"), format!("{k} is set by Spate from spec.sink and spec.ceOverrides"));
                }
            }
            Some(c)
        })
        .collect();
    out.into_iter().collect()
}

fn webhook_common(w: &mut Walker, m: &Map<String, Value>) -> (Vec<String>, Option<SecretKeyRef>, Option<SecretKeyRef>) {
    let event_types = strings(w, m, "eventTypes", "spec", true);
    let access_token = secret_ref(w, m, "accessToken", "spec");
    let secret_token = secret_ref(w, m, "secretToken", "spec");
    if secret_token.is_none() && !w_has(m, "secretToken") {
        w.error(
            "spec.secretToken",
            "is required: deliveries are verified with it, and an unverified webhook would accept events from anyone",
        );
    }
    (event_types, access_token, secret_token)
}

fn w_has(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).is_some_and(|v| !v.is_null())
}

fn github(w: &mut Walker, m: &Map<String, Value>) -> Option<WebhookSpec> {
    let target = w.req_str(m, "ownerAndRepository", "spec");
    if let Some(t) = target {
        let parts: Vec<&str> = t.split('/').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
            w.error("spec.ownerAndRepository", format!("'{t}' must be 'owner/repository' or an organization"));
        }
    }
    let (event_types, access_token, secret_token) = webhook_common(w, m);
    let api_url = w.opt_str(m, "githubAPIURL", "spec").unwrap_or("https://api.github.com").trim_end_matches('/');
    if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
        w.error("spec.githubAPIURL", format!("'{api_url}' must be an http(s) URL"));
    }
    let secure = m.get("secure").and_then(Value::as_bool).unwrap_or(false);
    Some(WebhookSpec {
        target: target?.to_string(),
        event_types,
        access_token,
        secret_token,
        api_url: api_url.to_string(),
        secure,
    })
}

fn gitlab(w: &mut Walker, m: &Map<String, Value>) -> Option<WebhookSpec> {
    let target = w.req_str(m, "projectUrl", "spec");
    let mut api_url = String::new();
    if let Some(t) = target {
        match t.strip_prefix("https://").or_else(|| t.strip_prefix("http://")) {
            Some(rest) if rest.split('/').filter(|s| !s.is_empty()).count() >= 3 => {
                let host = rest.split('/').next().unwrap_or_default();
                let scheme = if t.starts_with("https") { "https" } else { "http" };
                api_url = format!("{scheme}://{host}/api/v4");
            }
            _ => w.error(
                "spec.projectUrl",
                format!("'{t}' must be a project URL such as https://gitlab.com/group/project"),
            ),
        }
    }
    let (event_types, access_token, secret_token) = webhook_common(w, m);
    let secure = m.get("sslverify").and_then(Value::as_bool).unwrap_or(true);
    Some(WebhookSpec {
        target: target?.trim_end_matches('/').to_string(),
        event_types,
        access_token,
        secret_token,
        api_url,
        secure,
    })
}

fn kafka(w: &mut Walker, m: &Map<String, Value>, ns: &str, name: &str) -> Option<KafkaSpec> {
    let bootstrap_servers = strings(w, m, "bootstrapServers", "spec", true);
    let topics = strings(w, m, "topics", "spec", true);
    let consumer_group = w.opt_str(m, "consumerGroup", "spec").map(str::to_string);
    let consumers = w.opt_u32(m, "consumers", "spec").unwrap_or(1);
    if consumers == 0 || consumers > 64 {
        w.error("spec.consumers", format!("must be from 1 to 64, got {consumers}"));
    }
    let initial_offset = match w.opt_str(m, "initialOffset", "spec") {
        None | Some("latest") => InitialOffset::Latest,
        Some("earliest") => InitialOffset::Earliest,
        Some(o) => {
            w.error("spec.initialOffset", format!("'{o}' is not one of earliest, latest"));
            InitialOffset::Latest
        }
    };
    let ordered = match w.opt_str(m, "ordering", "spec") {
        None | Some("ordered") => true,
        Some("unordered") => false,
        Some(o) => {
            w.error("spec.ordering", format!("'{o}' is not one of ordered, unordered"));
            true
        }
    };
    let mut net = KafkaNet::default();
    if let Some(n) = m.get("net").filter(|v| !v.is_null())
        && let Some(nm) = w.object(n, "spec.net", &["tls", "sasl"])
    {
        if let Some(t) = nm.get("tls").filter(|v| !v.is_null())
            && let Some(tm) = w.object(t, "spec.net.tls", &["enable", "caCert", "cert", "key"])
        {
            net.tls = tm.get("enable").and_then(Value::as_bool).unwrap_or(false);
            net.tls_ca_cert = secret_ref(w, tm, "caCert", "spec.net.tls");
            net.tls_cert = secret_ref(w, tm, "cert", "spec.net.tls");
            net.tls_key = secret_ref(w, tm, "key", "spec.net.tls");
            if net.tls_cert.is_some() != net.tls_key.is_some() {
                w.error("spec.net.tls", "cert and key go together (a client certificate needs its key)");
            }
        }
        if let Some(s) = nm.get("sasl").filter(|v| !v.is_null())
            && let Some(sm) = w.object(s, "spec.net.sasl", &["enable", "user", "password", "type"])
        {
            net.sasl = sm.get("enable").and_then(Value::as_bool).unwrap_or(false);
            net.sasl_user = secret_ref(w, sm, "user", "spec.net.sasl");
            net.sasl_password = secret_ref(w, sm, "password", "spec.net.sasl");
            net.sasl_mechanism = secret_ref(w, sm, "type", "spec.net.sasl");
            if net.sasl && (net.sasl_user.is_none() || net.sasl_password.is_none()) {
                w.error("spec.net.sasl", "enable: true needs user and password");
            }
        }
    }
    Some(KafkaSpec {
        bootstrap_servers,
        topics,
        consumer_group: consumer_group.unwrap_or_else(|| format!("knative-kafka-source-{ns}-{name}")),
        consumers,
        initial_offset,
        ordered,
        net,
        event_source: format!("/apis/v1/namespaces/{ns}/kafkasources/{name}"),
    })
}

pub fn compile_sink_binding(w: &mut Walker, spec: &Value, ns: &str, name: &str) -> Option<SinkBindingConfig> {
    let m = w.object(spec, "spec", &["subject", "sink", "ceOverrides"])?;
    let sink = sink(w, m, ns);
    let ce_overrides = ce_overrides(w, m.get("ceOverrides"), "spec.ceOverrides");
    let Some(s) = m.get("subject") else {
        w.error("spec.subject", "is required (the object whose processes get K_SINK)");
        return None;
    };
    let sm = w.object(s, "spec.subject", &["apiVersion", "kind", "name", "namespace", "selector"])?;
    let api_version = w.req_str(sm, "apiVersion", "spec.subject");
    let kind = w.req_str(sm, "kind", "spec.subject");
    let subject_name = w.opt_str(sm, "name", "spec.subject").map(str::to_string);
    let mut match_labels = vec![];
    if let Some(sel) = sm.get("selector").filter(|v| !v.is_null())
        && let Some(selm) = w.object(sel, "spec.subject.selector", &["matchLabels"])
        && let Some(ml) = selm.get("matchLabels")
    {
        match_labels = w
            .string_map(ml, "spec.subject.selector.matchLabels")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    if subject_name.is_some() != match_labels.is_empty() {
        w.error("spec.subject", "give exactly one of name or selector.matchLabels");
    }
    if let (Some(k), Some(v)) = (kind, api_version)
        && Kind::from_ref(k, v) != Some(Kind::Service)
    {
        w.error(
            "spec.subject",
            format!("{k} ({v}) cannot be bound: Spate runs the processes of Knative Services (serving.knative.dev/v1 Service); a ContainerSource gets K_SINK from its own spec.sink"),
        );
    }
    let namespace = w.opt_str(sm, "namespace", "spec.subject").unwrap_or(ns).to_string();
    Some(SinkBindingConfig {
        namespace: ns.to_string(),
        name: name.to_string(),
        subject: BindingSubject {
            api_version: api_version?.to_string(),
            kind: kind?.to_string(),
            namespace,
            name: subject_name,
            match_labels,
        },
        sink: sink?,
        ce_overrides,
    })
}

/// A `v1 Secret`: `data` (base64) and `stringData` (plain), merged as Kubernetes does
/// (`stringData` wins). Returns the config and the normalized top-level fields.
pub fn compile_secret(
    w: &mut Walker,
    top: &Map<String, Value>,
    ns: &str,
    name: &str,
) -> Option<(SecretConfig, Map<String, Value>)> {
    let mut data = BTreeMap::new();
    if let Some(d) = top.get("data").filter(|v| !v.is_null()) {
        for (k, v) in w.string_map(d, "data") {
            check_secret_key(w, "data", k);
            match base64::engine::general_purpose::STANDARD.decode(v.trim()) {
                Ok(bytes) => {
                    data.insert(k.to_string(), bytes);
                }
                Err(_) => w.error(&join("data", k), "is not valid base64 (use stringData for plain text)"),
            }
        }
    }
    if let Some(d) = top.get("stringData").filter(|v| !v.is_null()) {
        for (k, v) in w.string_map(d, "stringData") {
            check_secret_key(w, "stringData", k);
            data.insert(k.to_string(), v.as_bytes().to_vec());
        }
    }
    let mut extra = Map::new();
    let kind = w.opt_str(top, "type", "").unwrap_or("Opaque").to_string();
    extra.insert("type".into(), Value::String(kind));
    let encoded: Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(base64::engine::general_purpose::STANDARD.encode(v))))
        .collect();
    extra.insert("data".into(), Value::Object(encoded));
    Some((SecretConfig { namespace: ns.to_string(), name: name.to_string(), data }, extra))
}

fn check_secret_key(w: &mut Walker, path: &str, k: &str) {
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        w.error(&join(path, k), "a key is made of letters, digits, '-', '_' and '.'");
    }
}

/// Labels of an object's metadata, for SinkBinding selectors.
pub fn labels(metadata: &Value) -> Vec<(String, String)> {
    metadata
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}
