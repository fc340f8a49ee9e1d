//! KafkaSource (`sources.knative.dev/v1`): librdkafka consumers that commit only what the sink accepted.

use serde_json::{Map, Value};

use super::{
    CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams, SourceSpec, delivery_spec, event_source,
    secret_ref, strings,
};
use crate::walk::Walker;

pub(super) static KAFKA: SourceKindDef = SourceKindDef {
    name: "KafkaSource",
    group: "sources.knative.dev",
    version: "v1",
    plural: "kafkasources",
    also_accepts: &["sources.knative.dev/v1beta1"],
    fields: &[
        "bootstrapServers",
        "topics",
        "consumerGroup",
        "consumers",
        "initialOffset",
        "ordering",
        "delivery",
        "net",
        "key",
    ],
    compile,
};

impl SourceParams for KafkaSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        let n = &self.net;
        [&n.tls_ca_cert, &n.tls_cert, &n.tls_key, &n.sasl_user, &n.sasl_password, &n.sasl_mechanism]
            .into_iter()
            .flatten()
            .collect()
    }
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
fn compile(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let delivery = delivery_spec(w, m, cx.namespace);
    let spec = kafka(w, m, cx)?;
    Some(CompiledSource { spec: SourceSpec::new(spec), delivery })
}

fn kafka(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<KafkaSpec> {
    let (ns, name) = (cx.namespace, cx.name);
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
        event_source: event_source(cx),
    })
}
