//! Discovery in its legacy form (what kubectl, the Python client and kube-rs
//! all read): `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::{self, Def};
use crate::control::ApiError;

pub async fn version() -> Json<Value> {
    let v = env!("CARGO_PKG_VERSION");
    Json(
        json!({"major": "1", "minor": super::KUBE_MINOR, "gitVersion": format!("v1.{}.0-spate.{v}", super::KUBE_MINOR),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)}),
    )
}

pub async fn api_versions() -> Json<Value> {
    Json(json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}))
}

fn group_json(name: &str, versions: &[&str]) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({"name": name, "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(versions[0])})
}

pub async fn group_list() -> Json<Value> {
    let groups: Vec<Value> = resources::groups().iter().map(|(g, vs)| group_json(g, vs)).collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

pub fn group(name: &str) -> Result<Response, ApiError> {
    let (g, vs) = resources::groups().into_iter().find(|(g, _)| *g == name).ok_or_else(|| {
        ApiError::NotFound(format!("the server could not find the requested resource (group {name})"))
    })?;
    let mut v = group_json(g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Ok(Json(v).into_response())
}

/// Whether `group/version` is served.
pub fn served(group: &str, version: &str) -> bool {
    resources::all().iter().any(|d| d.group == group && d.versions.contains(&version))
}

fn verbs(d: &Def) -> Vec<&'static str> {
    if d.read_only {
        vec!["get", "list", "watch"]
    } else {
        vec!["create", "delete", "get", "list", "patch", "update", "watch"]
    }
}

pub fn resource_list(group: &str, version: &str) -> Response {
    let mut out = vec![];
    for d in resources::all().into_iter().filter(|d| d.group == group && d.versions.contains(&version)) {
        out.push(json!({"name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
            "verbs": verbs(&d), "shortNames": d.short_names, "categories": d.categories}));
        if matches!(d.res, resources::Res::Stored(_)) {
            out.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Json(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out})).into_response()
}
