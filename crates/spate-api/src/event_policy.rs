//! Knative's EventPolicy (`eventing.knative.dev/v1alpha1`): which senders may
//! send to which addressables of a namespace. `spec.to` lists `ref`s or label
//! `selector`s (empty: every addressable of the namespace); `spec.from` lists
//! `ref`s to Spate resources (resolved to their OIDC subjects) or `sub`
//! subjects, a trailing `*` matching any suffix; `spec.filters` (Triggers'
//! dialects) must match at least one for the event to pass.

use std::collections::BTreeMap;

use serde_json::Value;
use spate_filter::Filter;

use crate::walk::{Walker, join};

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyTarget {
    /// `group` from the apiVersion, `kind` and `name` compared case-insensitively.
    Ref {
        group: String,
        kind: String,
        name: String,
    },
    Selector {
        group: String,
        kind: String,
        match_labels: BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicySender {
    Ref { api_version: String, kind: String, name: String, namespace: String },
    Sub(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventPolicyConfig {
    pub namespace: String,
    pub name: String,
    pub to: Vec<PolicyTarget>,
    pub from: Vec<PolicySender>,
    /// `None`: no filters (every event passes).
    pub filter: Option<Filter>,
}

fn group_of(api_version: &str) -> String {
    match api_version.split_once('/') {
        Some((g, _)) => g.to_string(),
        None => String::new(),
    }
}

fn target(w: &mut Walker, v: &Value, p: &str) -> Option<PolicyTarget> {
    let m = w.object(v, p, &["ref", "selector"])?;
    match (m.get("ref"), m.get("selector")) {
        (Some(r), None) => {
            let rp = join(p, "ref");
            let rm = w.object(r, &rp, &["apiVersion", "kind", "name", "namespace"])?;
            let (api, kind, name) =
                (w.req_str(rm, "apiVersion", &rp), w.req_str(rm, "kind", &rp), w.req_str(rm, "name", &rp));
            Some(PolicyTarget::Ref { group: group_of(api?), kind: kind?.to_ascii_lowercase(), name: name?.to_string() })
        }
        (None, Some(s)) => {
            let sp = join(p, "selector");
            let sm = w.object(s, &sp, &["apiVersion", "kind", "matchLabels"])?;
            let (api, kind) = (w.req_str(sm, "apiVersion", &sp), w.req_str(sm, "kind", &sp));
            let labels = match sm.get("matchLabels") {
                Some(l) => w.string_map(l, &join(&sp, "matchLabels")),
                None => vec![],
            };
            let match_labels = labels.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Some(PolicyTarget::Selector { group: group_of(api?), kind: kind?.to_ascii_lowercase(), match_labels })
        }
        _ => {
            w.error(p, "needs exactly one of ref or selector");
            None
        }
    }
}

fn sender(w: &mut Walker, v: &Value, p: &str, ns: &str) -> Option<PolicySender> {
    let m = w.object(v, p, &["ref", "sub"])?;
    match (m.get("ref"), m.get("sub")) {
        (Some(r), None) => {
            let rp = join(p, "ref");
            let rm = w.object(r, &rp, &["apiVersion", "kind", "name", "namespace"])?;
            let (api, kind, name) =
                (w.req_str(rm, "apiVersion", &rp), w.req_str(rm, "kind", &rp), w.req_str(rm, "name", &rp));
            let namespace = w.opt_str(rm, "namespace", &rp).unwrap_or(ns).to_string();
            Some(PolicySender::Ref { api_version: api?.into(), kind: kind?.into(), name: name?.into(), namespace })
        }
        (None, Some(Value::String(s))) if !s.is_empty() => Some(PolicySender::Sub(s.clone())),
        (None, Some(_)) => {
            w.error(&join(p, "sub"), "must be a non-empty subject (a trailing * matches any suffix)");
            None
        }
        _ => {
            w.error(p, "needs exactly one of ref or sub");
            None
        }
    }
}

pub fn compile(w: &mut Walker, spec: &Value, ns: &str, name: &str) -> Option<EventPolicyConfig> {
    let m = w.object(spec, "spec", &["to", "from", "filters"])?;
    let list = |w: &mut Walker, key: &str| -> Vec<Value> {
        match m.get(key) {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items.clone(),
            Some(_) => {
                w.error(&join("spec", key), "must be a list");
                vec![]
            }
        }
    };
    let to: Vec<PolicyTarget> =
        list(w, "to").iter().enumerate().filter_map(|(i, v)| target(w, v, &format!("spec.to[{i}]"))).collect();
    let from: Vec<PolicySender> =
        list(w, "from").iter().enumerate().filter_map(|(i, v)| sender(w, v, &format!("spec.from[{i}]"), ns)).collect();
    let filters: Vec<Filter> = list(w, "filters")
        .iter()
        .enumerate()
        .filter_map(|(i, f)| crate::trigger::compile_filter(w, f, &format!("spec.filters[{i}]")))
        .collect();
    let filter = (!filters.is_empty()).then_some(Filter::Any(filters));
    Some(EventPolicyConfig { namespace: ns.into(), name: name.into(), to, from, filter })
}

/// Knative's subject for a resource's OIDC identity:
/// `system:serviceaccount:<ns>:<name>-oidc-<group>-<kind>`, lower case.
pub fn subject(namespace: &str, name: &str, group: &str, kind: &str) -> String {
    format!("system:serviceaccount:{namespace}:{}", format!("{name}-oidc-{group}-{kind}").to_ascii_lowercase())
}

/// Knative's audience of an addressable: `<group>/<kind>/<namespace>/<name>`, lower case.
pub fn audience(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{group}/{kind}/{namespace}/{name}").to_ascii_lowercase()
}

/// Whether `sub` is one of `allowed` (a trailing `*` matches any suffix).
pub fn subject_allowed(sub: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => sub.starts_with(prefix),
        None => a.eq_ignore_ascii_case(sub),
    })
}
