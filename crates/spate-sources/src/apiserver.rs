//! ApiServerSource: Spate is its own API server, so the source listens to the
//! control plane's changes (applied or deleted on this instance, hence once
//! per cluster) and emits Knative's `dev.knative.apiserver.{resource|ref}.{add|update|delete}`
//! events: subject `/apis/<apiVersion>/namespaces/<ns>/<plural>/<name>`,
//! extensions `kind`, `name`, `namespace`; data the object (Resource mode) or
//! a reference to it (Reference mode). A source that falls more than 1,024
//! changes behind loses the oldest and says so in its log.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use spate_api::{ApiServerMode, ApiServerSpec, Kind};
use spate_core::{CloudEvent, ExtValue};
use tokio::sync::broadcast::error::RecvError;

use crate::Start;
use crate::emit::{Emitter, now_rfc3339, uuid};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Update,
    Delete,
}

/// One change to a resource, as the control plane saw it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub op: Op,
    /// The object (apiVersion, kind, metadata, spec…), as `get` shows it.
    pub object: Value,
}

pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<ApiServerSpec>().cloned() else { return };
    let mut changes = st.sources.changes.subscribe();
    let (emitter, mut stop) = (st.emitter.clone(), st.stop.clone());
    let source = st.sources.cfg.public_url.trim_end_matches('/').to_string();
    st.spawn(async move {
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = stop.changed() => return,
            };
            match change {
                Ok(c) if matches(&spec, &c) => emit(&emitter, &spec, &source, &c).await,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(source = %emitter.label, missed = n, "the sink is too slow; changes were skipped");
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

async fn emit(emitter: &Arc<Emitter>, spec: &ApiServerSpec, source: &str, c: &Change) {
    emitter.emit(event(spec, source, c)).await;
}

/// Whether the source watches this change: its namespace, one of its kinds with matching labels, its owner.
pub(crate) fn matches(spec: &ApiServerSpec, c: &Change) -> bool {
    if c.namespace != spec.namespace {
        return false;
    }
    let labels = c.object.pointer("/metadata/labels");
    let kind_ok = spec.resources.iter().any(|r| {
        r.kind == c.kind
            && r.match_labels.iter().all(|(k, v)| labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(v))
    });
    let owner_ok = spec.owner.as_ref().is_none_or(|(api, kind)| {
        c.object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(|r| r["apiVersion"] == api.as_str() && r["kind"] == kind.as_str()))
    });
    kind_ok && owner_ok
}

pub(crate) fn event(spec: &ApiServerSpec, source: &str, c: &Change) -> CloudEvent {
    let op = match c.op {
        Op::Add => "add",
        Op::Update => "update",
        Op::Delete => "delete",
    };
    let mode = if spec.mode == ApiServerMode::Resource { "resource" } else { "ref" };
    let mut ev = CloudEvent::new(uuid(), source.to_string(), format!("dev.knative.apiserver.{mode}.{op}"));
    let api_version = c.kind.api_version();
    ev.subject = Some(format!("/apis/{api_version}/namespaces/{}/{}/{}", c.namespace, c.kind.plural(), c.name));
    ev.time = Some(now_rfc3339());
    ev.datacontenttype = Some("application/json".into());
    for (k, v) in [("kind", c.kind.name()), ("name", &c.name), ("namespace", &c.namespace)] {
        ev.set_extension(k, ExtValue::String(v.to_string()));
    }
    let data = match spec.mode {
        ApiServerMode::Resource => c.object.clone(),
        ApiServerMode::Reference => {
            json!({"apiVersion": api_version, "kind": c.kind.name(), "name": c.name, "namespace": c.namespace})
        }
    };
    ev.data = Some(Bytes::from(serde_json::to_vec(&data).expect("JSON")));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_api::ApiServerResource;

    #[test]
    fn changes_are_filtered_and_shaped_as_knative_does() {
        let spec = ApiServerSpec {
            resources: vec![ApiServerResource { kind: Kind::Trigger, match_labels: vec![("team".into(), "a".into())] }],
            mode: ApiServerMode::Reference,
            owner: None,
            namespace: "default".into(),
        };
        let object = json!({"metadata": {"labels": {"team": "a"}}});
        let c = Change { kind: Kind::Trigger, namespace: "default".into(), name: "t1".into(), op: Op::Update, object };
        assert!(matches(&spec, &c));
        let ev = event(&spec, "http://spate", &c);
        assert_eq!(ev.ty, "dev.knative.apiserver.ref.update");
        assert_eq!(ev.subject.as_deref(), Some("/apis/eventing.knative.dev/v1/namespaces/default/triggers/t1"));
        assert_eq!(ev.extension("kind"), Some(&ExtValue::String("Trigger".into())));
        let other_ns = Change { namespace: "other".into(), ..c.clone() };
        assert!(!matches(&spec, &other_ns));
        let unlabelled = Change { object: json!({}), ..c.clone() };
        assert!(!matches(&spec, &unlabelled));
        let broker = Change { kind: Kind::Broker, ..c };
        assert!(!matches(&spec, &broker));
    }
}
