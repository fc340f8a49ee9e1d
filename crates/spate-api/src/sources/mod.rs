//! Event sources (`sources.knative.dev`), SinkBinding and `v1 Secret`:
//! validated and compiled once, here, so the runtime never parses a schedule,
//! a timezone or a secret reference on its own.
//!
//! Each source kind is one module holding its resource shape ([`SourceKindDef`]:
//! name, group, version, plural, fields) and the compiled spec it yields; the
//! module is registered by one line in [`SOURCE_KINDS`]. Nothing else in this
//! crate names a source kind: [`Kind::Source`] carries a [`SourceKind`], an
//! index into that table.

mod apiserver;
mod container;
mod integration;
mod kafka;
mod ping;
mod rabbitmq;
mod redis_stream;
mod rocketmq;
mod webhook;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value};
use spate_core::Destination;

pub use apiserver::{ApiServerMode, ApiServerResource, ApiServerSpec};
pub use container::ContainerSourceSpec;
pub use integration::{AwsAuth, AwsCommon, IntegrationSpec, S3Spec, SqsSpec, TimerSpec};
pub use kafka::{InitialOffset, KafkaNet, KafkaSpec};
pub use ping::{PingSpec, parse_schedule, parse_timezone};
pub use rabbitmq::{RabbitmqConnection, RabbitmqSourceSpec};
pub use redis_stream::RedisStreamSpec;
pub use rocketmq::RocketmqSpec;
pub use webhook::WebhookSpec;

use crate::Kind;
use crate::delivery::{self, DeliverySpec};
use crate::walk::{Walker, join};

/// Every source kind Spate runs: adding one is a module and a line here.
pub static SOURCE_KINDS: &[&SourceKindDef] = &[
    &ping::PING,
    &ping::CRON_JOB,
    &container::CONTAINER,
    &webhook::GITHUB,
    &webhook::GITLAB,
    &kafka::KAFKA,
    &rabbitmq::RABBITMQ,
    &redis_stream::REDIS_STREAM,
    &integration::INTEGRATION,
    &apiserver::API_SERVER,
    &rocketmq::ROCKETMQ,
];

/// One source kind's resource shape and compiler.
pub struct SourceKindDef {
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    /// Older apiVersions admitted and stored as the current one (same schema).
    pub also_accepts: &'static [&'static str],
    /// Fields of `spec` besides `sink` and `ceOverrides`.
    pub fields: &'static [&'static str],
    /// Compiles `spec` (fields already checked against `fields`); every problem goes to the walker.
    pub compile: fn(&mut Walker, &Map<String, Value>, &SourceCtx<'_>) -> Option<CompiledSource>,
}

/// What a source kind's compiler knows besides the spec.
pub struct SourceCtx<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub plural: &'static str,
}

/// What a source kind's compiler returns: its typed spec, and the delivery
/// settings when the kind takes `spec.delivery`.
pub struct CompiledSource {
    pub spec: SourceSpec,
    pub delivery: Option<DeliverySpec>,
}

impl CompiledSource {
    pub fn new<T: SourceParams>(spec: T) -> Self {
        CompiledSource { spec: SourceSpec::new(spec), delivery: None }
    }
}

/// A source kind: an index into [`SOURCE_KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKind(u8);

impl SourceKind {
    pub fn all() -> impl Iterator<Item = SourceKind> {
        (0..SOURCE_KINDS.len()).map(|i| SourceKind(i as u8))
    }
    pub fn def(self) -> &'static SourceKindDef {
        SOURCE_KINDS[self.0 as usize]
    }
    pub fn named(name: &str) -> Option<SourceKind> {
        SourceKind::all().find(|k| k.def().name == name)
    }
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

/// A source kind's compiled spec. Implemented by each kind's spec type.
pub trait SourceParams: std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Every Secret key the source reads.
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        vec![]
    }
}

trait DynParams: std::fmt::Debug + Send + Sync {
    fn secret_refs(&self) -> Vec<&SecretKeyRef>;
    fn as_any(&self) -> &dyn Any;
    fn same(&self, other: &dyn Any) -> bool;
}

impl<T: SourceParams> DynParams for T {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        SourceParams::secret_refs(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn same(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
}

/// The typed spec of one source, whatever its kind; its driver reads it with [`SourceSpec::get`].
#[derive(Debug, Clone)]
pub struct SourceSpec(Arc<dyn DynParams>);

impl SourceSpec {
    pub fn new<T: SourceParams>(spec: T) -> Self {
        SourceSpec(Arc::new(spec))
    }
    /// The spec as its kind's type, or `None` for another kind's.
    pub fn get<T: SourceParams>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
    pub fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        self.0.secret_refs()
    }
}

impl PartialEq for SourceSpec {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(other.0.as_any())
    }
}

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
        self.spec.secret_refs()
    }
}

const COMMON: &[&str] = &["sink", "ceOverrides"];

pub fn compile_source(w: &mut Walker, kind: SourceKind, spec: &Value, ns: &str, name: &str) -> Option<SourceConfig> {
    let def = kind.def();
    let fields: Vec<&str> = COMMON.iter().chain(def.fields).copied().collect();
    let m = w.object(spec, "spec", &fields)?;
    let sink = sink(w, m, ns);
    let ce_overrides = ce_overrides(w, m.get("ceOverrides"), "spec.ceOverrides");
    let compiled = (def.compile)(w, m, &SourceCtx { namespace: ns, name, plural: def.plural });
    let compiled = compiled?;
    Some(SourceConfig {
        kind: Kind::Source(kind),
        namespace: ns.to_string(),
        name: name.to_string(),
        sink: sink?,
        ce_overrides,
        delivery: compiled.delivery,
        spec: compiled.spec,
    })
}

/// `/apis/v1/namespaces/<ns>/<plural>/<name>`: the `source` attribute Knative's sources set.
pub(crate) fn event_source(cx: &SourceCtx<'_>) -> String {
    format!("/apis/v1/namespaces/{}/{}/{}", cx.namespace, cx.plural, cx.name)
}

pub(crate) fn w_has(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).is_some_and(|v| !v.is_null())
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

pub(crate) use crate::walk::secret_ref;

pub(crate) fn strings(w: &mut Walker, m: &Map<String, Value>, key: &str, path: &str, required: bool) -> Vec<String> {
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

pub(crate) fn delivery_spec(w: &mut Walker, m: &Map<String, Value>, ns: &str) -> Option<DeliverySpec> {
    m.get("delivery").filter(|v| !v.is_null()).and_then(|v| delivery::parse(w, v, "spec.delivery", ns))
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
