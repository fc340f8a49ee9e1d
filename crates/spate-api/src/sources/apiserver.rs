//! ApiServerSource (`sources.knative.dev/v1`): changes to Spate's own resources
//! (Spate is its own API server) as `dev.knative.apiserver.*` events.

use serde_json::{Map, Value};

use super::{CompiledSource, SourceCtx, SourceKindDef, SourceParams};
use crate::Kind;
use crate::walk::{Walker, join};

pub(super) static API_SERVER: SourceKindDef = SourceKindDef {
    name: "ApiServerSource",
    group: "sources.knative.dev",
    version: "v1",
    plural: "apiserversources",
    also_accepts: &["sources.knative.dev/v1beta1"],
    fields: &["resources", "mode", "owner", "serviceAccountName", "namespaceSelector", "filters"],
    compile,
};

/// `Reference` sends a reference to the changed object; `Resource` the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiServerMode {
    Reference,
    Resource,
}

/// One entry of `spec.resources`: a kind, and the labels its objects must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiServerResource {
    pub kind: Kind,
    pub match_labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiServerSpec {
    pub resources: Vec<ApiServerResource>,
    pub mode: ApiServerMode,
    /// `spec.owner`: only objects with an owner reference of this apiVersion and kind.
    pub owner: Option<(String, String)>,
    /// The source's namespace: objects of other namespaces are not watched.
    pub namespace: String,
}

impl SourceParams for ApiServerSpec {}

fn compile(w: &mut Walker, m: &Map<String, Value>, cx: &SourceCtx<'_>) -> Option<CompiledSource> {
    let mode = match w.opt_str(m, "mode", "spec") {
        None | Some("Reference") => ApiServerMode::Reference,
        Some("Resource") => ApiServerMode::Resource,
        Some(o) => {
            w.error("spec.mode", format!("'{o}' is not one of Reference, Resource"));
            ApiServerMode::Reference
        }
    };
    if m.get("namespaceSelector").is_some_and(|v| !v.is_null()) {
        w.error("spec.namespaceSelector", "is not supported: an ApiServerSource watches its own namespace");
    }
    if m.get("filters").is_some_and(|v| !v.is_null()) {
        w.error("spec.filters", "is not supported yet: filter with a Trigger");
    }
    let resources = resources(w, m);
    let owner = m.get("owner").filter(|v| !v.is_null()).and_then(|o| {
        let om = w.object(o, "spec.owner", &["apiVersion", "kind"])?;
        Some((w.req_str(om, "apiVersion", "spec.owner")?.to_string(), w.req_str(om, "kind", "spec.owner")?.to_string()))
    });
    Some(CompiledSource::new(ApiServerSpec { resources, mode, owner, namespace: cx.namespace.to_string() }))
}

fn resources(w: &mut Walker, m: &Map<String, Value>) -> Vec<ApiServerResource> {
    let Some(Value::Array(rs)) = m.get("resources") else {
        w.error("spec.resources", "is required (a list of {apiVersion, kind})");
        return vec![];
    };
    if rs.is_empty() {
        w.error("spec.resources", "must name at least one kind");
    }
    let mut out = vec![];
    for (i, r) in rs.iter().enumerate() {
        let p = format!("spec.resources[{i}]");
        let Some(rm) = w.object(r, &p, &["apiVersion", "kind", "selector"]) else { continue };
        let (Some(api_version), Some(kind)) = (w.req_str(rm, "apiVersion", &p), w.req_str(rm, "kind", &p)) else {
            continue;
        };
        let Some(kind) = Kind::from_ref(kind, api_version) else {
            w.error(&p, format!("{kind} ({api_version}) is not a kind Spate serves, so it never changes here"));
            continue;
        };
        let mut match_labels = vec![];
        if let Some(sel) = rm.get("selector").filter(|v| !v.is_null()) {
            let sp = join(&p, "selector");
            if let Some(sm) = w.object(sel, &sp, &["matchLabels"])
                && let Some(ml) = sm.get("matchLabels")
            {
                match_labels = w
                    .string_map(ml, &join(&sp, "matchLabels"))
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
        }
        out.push(ApiServerResource { kind, match_labels });
    }
    out
}
