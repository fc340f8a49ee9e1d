//! RedisStreamSource (`sources.knative.dev/v1alpha1`, eventing-redis's shape):
//! XREADGROUP on a stream, XACK after the sink accepted.

use serde_json::{Map, Value};

use super::{CompiledSource, SecretKeyRef, SourceCtx, SourceKindDef, SourceParams, secret_ref};
use crate::walk::{Walker, join};

pub(super) static REDIS_STREAM: SourceKindDef = SourceKindDef {
    name: "RedisStreamSource",
    group: "sources.knative.dev",
    version: "v1alpha1",
    plural: "redisstreamsources",
    also_accepts: &[],
    fields: &["address", "stream", "group", "numConsumers", "password", "serviceAccountName"],
    compile,
};

#[derive(Debug, Clone, PartialEq)]
pub struct RedisStreamSpec {
    /// `redis://host:port` (or `host:port`).
    pub address: String,
    pub stream: String,
    pub group: String,
    pub consumers: u32,
    /// Spate's addition: the password from a Secret rather than in `address`.
    pub password: Option<SecretKeyRef>,
    /// eventing-redis's `source`: `<address>/<stream>`.
    pub event_source: String,
    /// Consumer names start with this (`<namespace>-<name>`), numbered per consumer.
    pub consumer_prefix: String,
}

impl SourceParams for RedisStreamSpec {
    fn secret_refs(&self) -> Vec<&SecretKeyRef> {
        self.password.iter().collect()
    }
}

fn compile(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let address = w.req_str(m, "address", "spec");
    if let Some(a) = address {
        let rest = a.strip_prefix("redis://").or_else(|| a.strip_prefix("rediss://")).unwrap_or(a);
        let host = rest.rsplit('@').next().unwrap_or(rest).split('/').next().unwrap_or("");
        if host.is_empty() || !host.contains(':') {
            w.error("spec.address", format!("'{a}' must be host:port or redis://host:port"));
        }
    }
    let stream = w.req_str(m, "stream", "spec");
    let group = w.opt_str(m, "group", "spec").map(str::to_string);
    let consumers = w.opt_u32(m, "numConsumers", "spec").unwrap_or(1);
    if !(1..=64).contains(&consumers) {
        w.error(&join("spec", "numConsumers"), format!("must be from 1 to 64, got {consumers}"));
    }
    let password = secret_ref(w, m, "password", "spec");
    let (address, stream) = (address?.to_string(), stream?.to_string());
    Some(CompiledSource::new(RedisStreamSpec {
        event_source: format!("{address}/{stream}"),
        group: group.unwrap_or_else(|| format!("{}-{}", cx.namespace, cx.name)),
        consumer_prefix: format!("{}-{}", cx.namespace, cx.name),
        address,
        stream,
        consumers,
        password,
    }))
}
