//! RocketMQSource (`sources.knative.dev/v1alpha1`, also the older
//! `sources.eventing.knative.dev/v1alpha1`): a push consumer in clustering mode.

use serde_json::{Map, Value};

use super::{
    CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams, SourceSpec, delivery_spec, secret_ref,
};
use crate::walk::Walker;

pub(super) static ROCKETMQ: SourceKindDef = SourceKindDef {
    name: "RocketMQSource",
    group: "sources.knative.dev",
    version: "v1alpha1",
    plural: "rocketmqsources",
    also_accepts: &["sources.eventing.knative.dev/v1alpha1"],
    fields: &[
        "topic",
        "namesrvAddr",
        "groupName",
        "accessKey",
        "secretKey",
        "ordered",
        "delivery",
        "serviceAccountName",
    ],
    compile,
};

#[derive(Debug, Clone, PartialEq)]
pub struct RocketmqSpec {
    pub topic: String,
    /// `host:port[;host:port]` of the name servers.
    pub namesrv_addr: String,
    pub group: String,
    pub access_key: Option<SecretKeyRef>,
    pub secret_key: Option<SecretKeyRef>,
    /// Spate's addition: consume each queue in order (one message at a time per queue).
    pub ordered: bool,
    /// `/apis/v1/namespaces/<ns>/rocketmqsources/<name>#<topic>`.
    pub event_source: String,
}

impl SourceParams for RocketmqSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        self.access_key.iter().chain(&self.secret_key).collect()
    }
}

fn compile(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let delivery = delivery_spec(w, m, cx.namespace);
    let topic = w.req_str(m, "topic", "spec");
    let namesrv = w.req_str(m, "namesrvAddr", "spec");
    if let Some(a) = namesrv
        && a.split(';')
            .any(|hp| hp.trim().rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
    {
        w.error("spec.namesrvAddr", format!("'{a}' must be host:port, or several separated by ';'"));
    }
    let group = w.opt_str(m, "groupName", "spec").map(str::to_string);
    let access_key = secret_ref(w, m, "accessKey", "spec");
    let secret_key = secret_ref(w, m, "secretKey", "spec");
    if access_key.is_some() != secret_key.is_some() {
        w.error("spec.secretKey", "accessKey and secretKey go together (RocketMQ ACL needs both)");
    }
    let ordered = m.get("ordered").and_then(Value::as_bool).unwrap_or(false);
    let topic = topic?.to_string();
    let spec = RocketmqSpec {
        event_source: format!("{}#{topic}", super::event_source(cx)),
        group: group.unwrap_or_else(|| format!("knative-rocketmq-source-{}-{}", cx.namespace, cx.name)),
        namesrv_addr: namesrv?.to_string(),
        topic,
        access_key,
        secret_key,
        ordered,
    };
    Some(CompiledSource { spec: SourceSpec::new(spec), delivery })
}
