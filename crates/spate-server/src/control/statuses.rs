//! Statuses as the rooms report them, in Knative's shape: what each controller
//! writes back (transition times kept while a condition holds), and what the
//! running system adds when an object is read.

use std::collections::HashMap;

use serde_json::{Value, json};
use spate_api::{Compiled, Condition, Kind, SecretConfig, SecretKeyRef};
use spate_eventing::ResourceStatus;
use spate_sources::kafka_sink::WantedSink;
use spate_sources::{ResolvedSource, SourceStatus};

use crate::status;
use crate::store::{Entry, Key, Store};

/// Statuses a write-back changed, parsed, for the objects view (not parsed again from the entry).
pub(super) type Changed = Vec<(Key, Value)>;

/// A reconciled status, kept as it was when only transition times changed; a change is noted in `changed`.
pub(super) fn set_status(e: &mut Entry, new: Value, changed: &mut Changed) {
    if strip_times(&e.status.get()) != strip_times(&new) {
        e.status.set(&new);
        changed.push((e.resource.key(), new));
    }
}

/// KafkaSinks with the credentials their `spec.auth.secret.ref` names (or what is missing).
pub(super) fn wanted_sinks(
    sinks: Vec<spate_api::KafkaSinkConfig>,
    secrets: &HashMap<(String, String), SecretConfig>,
) -> Vec<WantedSink> {
    sinks
        .into_iter()
        .map(|config| {
            let auth = match &config.auth_secret {
                None => Ok(Default::default()),
                Some(name) => secrets
                    .get(&(config.namespace.clone(), name.clone()))
                    .map(|s| s.data.clone())
                    .ok_or_else(|| format!("Secret {}/{name} (spec.auth.secret.ref) does not exist", config.namespace)),
            };
            WantedSink { config, auth }
        })
        .collect()
}

/// Sources with their sinks resolved and the Secret values they reference.
pub(super) fn resolve_sources(
    sources: Vec<spate_api::SourceConfig>,
    secrets: &HashMap<(String, String), SecretConfig>,
    resolve: &dyn Fn(&spate_core::Destination) -> Result<String, spate_core::destination::ResolveError>,
) -> Vec<ResolvedSource> {
    sources
        .into_iter()
        .map(|config| {
            let secrets = config
                .secret_refs()
                .into_iter()
                .map(|r| (r.clone(), secret_value(secrets, &config.namespace, r)))
                .collect();
            ResolvedSource {
                sink: resolve(&config.sink),
                dead_letter_sink: config.delivery.as_ref().and_then(|d| d.dead_letter_sink.as_ref()).map(resolve),
                secrets,
                config,
            }
        })
        .collect()
}

/// An EventType is Ready when the addressable it references exists
/// (Knative's `ReferenceExists`); it has no other runtime.
pub(super) fn publish_event_type_status(store: &mut Store, changed: &mut Changed) {
    let exists: std::collections::HashSet<(String, String, String)> = store
        .entries
        .values()
        .map(|e| (e.resource.kind.name().to_string(), e.resource.namespace.clone(), e.resource.name.clone()))
        .collect();
    for e in store.entries.values_mut() {
        let Compiled::EventType(t) = &e.compiled else { continue };
        let cond = match &t.reference {
            Some((_, kind, name)) if !exists.contains(&(kind.clone(), t.namespace.clone(), name.clone())) => {
                Condition::fail(
                    "ReferenceExists",
                    "ReferenceNotFound",
                    format!("{kind} {}/{name} does not exist", t.namespace),
                )
            }
            _ => Condition::ok("ReferenceExists"),
        };
        let new = json!({"observedGeneration": e.generation,
            "conditions": status::conditions_json(&Condition::ready_first(vec![cond]), &status::now_rfc3339())});
        set_status(e, new, changed);
    }
}

/// With sender identity on: EventPolicies' `status.from` (their resolved subjects)
/// and Ready condition, and each addressable's `status.address.audience`.
pub(super) fn publish_auth_status(store: &mut Store, snap: &crate::data_auth::Snapshot, changed: &mut Changed) {
    for e in store.entries.values_mut() {
        if e.resource.kind == Kind::EventPolicy {
            let (ns, name) = (&e.resource.namespace, &e.resource.name);
            let from =
                snap.auth.policies.get(ns).into_iter().flatten().find(|p| &p.name == name).map(|p| p.subjects.clone());
            let conditions = Condition::ready_first(vec![Condition::ok("SubjectsResolved")]);
            let new = json!({"observedGeneration": e.generation, "from": from.unwrap_or_default(),
                "conditions": status::conditions_json(&conditions, &status::now_rfc3339())});
            set_status(e, new, changed);
            continue;
        }
        if !matches!(
            e.compiled,
            Compiled::Broker(_)
                | Compiled::KafkaSink(_)
                | Compiled::Channel(_)
                | Compiled::Sequence(_)
                | Compiled::Parallel(_)
        ) {
            continue;
        }
        let before = e.status.get();
        let mut status = before.clone();
        audience_in(&mut status, e, snap);
        if status != before {
            e.status.set(&status);
            changed.push((e.resource.key(), status));
        }
    }
}

/// An addressable's `status.address.audience` (sender identity on), if it has an address.
pub(super) fn audience_in(status: &mut Value, e: &Entry, snap: &crate::data_auth::Snapshot) {
    use crate::data_auth::Target;
    let (ns, name) = (e.resource.namespace.clone(), e.resource.name.clone());
    let key = match &e.compiled {
        Compiled::Broker(_) => (Target::Broker, ns, name),
        Compiled::KafkaSink(_) => (Target::KafkaSink, ns, name),
        Compiled::Channel(_) => (Target::Channel, ns, name),
        Compiled::Sequence(_) => (Target::Channel, ns, spate_eventing::flow_channels(Kind::Sequence, &name, 0).0),
        Compiled::Parallel(_) => (Target::Channel, ns, spate_eventing::flow_channels(Kind::Parallel, &name, 0).0),
        _ => return,
    };
    if let (Some(a), Some(address)) = (snap.addressables.get(&key), status.get_mut("address")) {
        address["audience"] = json!(a.audience);
    }
}

/// The objects of the channels and subscriptions flows own: Knative's shape,
/// `metadata.ownerReferences` naming the flow, the status the flow reported.
pub(super) fn flow_children_json(children: &[spate_eventing::FlowChild], statuses: &[ResourceStatus]) -> Vec<Value> {
    children
        .iter()
        .map(|c| {
            let is_sub = c.kind == Kind::Subscription;
            let status = statuses
                .iter()
                .filter(|s| s.namespace == c.namespace && s.name == c.owner)
                .flat_map(|s| s.children.iter())
                .find(|ch| ch.name == c.name && (ch.kind == Kind::Subscription) == is_sub);
            let mut o = json!({
                "apiVersion": c.kind.api_version(),
                "kind": c.kind.name(),
                "metadata": {"name": c.name, "namespace": c.namespace, "ownerReferences": [{
                    "apiVersion": c.owner_kind.api_version(), "kind": c.owner_kind.name(), "name": c.owner,
                    "controller": true, "blockOwnerDeletion": true}]},
                "spec": {},
            });
            if let Some((kind, name)) = &c.channel {
                o["spec"]["channel"] = json!({"apiVersion": "messaging.knative.dev/v1", "kind": kind, "name": name});
            }
            if let Some(st) = status {
                o["status"] = status::flow_child(st);
            }
            o
        })
        .collect()
}

/// A Secret's value for a `secretKeyRef` in `namespace`, or what is missing.
fn secret_value(
    secrets: &HashMap<(String, String), SecretConfig>,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<Vec<u8>, String> {
    let s = secrets
        .get(&(namespace.to_string(), r.name.clone()))
        .ok_or_else(|| format!("Secret {namespace}/{} does not exist", r.name))?;
    s.data.get(&r.key).cloned().ok_or_else(|| format!("Secret {namespace}/{} has no key '{}'", r.name, r.key))
}

/// A source's status: its conditions (transition times kept while unchanged) and fields.
pub(super) fn source_status_json(st: &SourceStatus, generation: u64, old: &Value) -> Value {
    let now = status::now_rfc3339();
    let mut s = st.fields();
    s["observedGeneration"] = json!(generation);
    s["conditions"] = status::conditions_json(&st.conditions, &now);
    if let (Some(new), Some(prev)) = (s["conditions"].as_array_mut(), old.get("conditions").and_then(Value::as_array)) {
        for c in new.iter_mut() {
            if let Some(p) = prev.iter().find(|p| p["type"] == c["type"] && p["status"] == c["status"]) {
                c["lastTransitionTime"] = p["lastTransitionTime"].clone();
            }
        }
    }
    s
}

fn strip_times(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(cs) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// Turns `Ready` (and the ingress condition) False with `StorageUnavailable`.
pub(super) fn mark_unavailable(status: &mut Value, problem: &str) {
    let Some(conds) = status.get_mut("conditions").and_then(Value::as_array_mut) else { return };
    for c in conds.iter_mut() {
        if matches!(c["type"].as_str(), Some("Ready" | "IngressReady" | "ChannelServiceReady")) {
            c["status"] = json!("False");
            c["reason"] = json!("StorageUnavailable");
            c["message"] = json!(problem);
        }
    }
}
