//! The Kubernetes API, as kubectl, client libraries and kn expect it
//! (`../shared/kubernetes-api.md`): discovery, OpenAPI v3, reads as objects,
//! lists or Tables, watches, writes with optimistic concurrency and patches,
//! and the core kinds Spate keeps (namespaces, secrets, configmaps, events).
//! Served by the admin listener, behind its guard.
//!
//! Paths are parsed here into a [`Target`]; `read.rs` answers reads and
//! watches, `write.rs` writes, `discovery.rs` and `openapi.rs` describe.

mod convert;
mod discovery;
mod openapi;
mod proto;
mod read;
pub mod resources;
mod select;
mod table;
mod write;

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::control::ApiError;
use crate::control::ControlPlane;
use resources::{Def, Res};

/// The Kubernetes version reported at `/version` (the machine's kubectl dispatcher picks its kubectl by it).
pub const KUBE_MINOR: &str = "32";

pub fn router() -> Router<std::sync::Arc<ControlPlane>> {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::group_list))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*gv}", get(openapi::group_version))
        .route("/api/{*rest}", any(dispatch))
        .route("/apis/{*rest}", any(dispatch))
}

/// What a path names.
#[derive(Debug, Clone)]
pub enum Target {
    Group(String),
    ResourceList(String, String),
    Collection { def: Def, version: String, ns: Option<String> },
    Item { def: Def, version: String, ns: Option<String>, name: String, status: bool },
}

fn unknown(what: &str) -> ApiError {
    ApiError::NotFound(format!("the server could not find the requested resource ({what})"))
}

/// Parses `/api/...` (group "") or `/apis/<group>/...` segments.
pub fn parse(core: bool, segs: &[&str]) -> Result<Target, ApiError> {
    let (group, rest) = if core {
        ("", segs)
    } else {
        match segs.split_first() {
            Some((g, rest)) => (*g, rest),
            None => return Err(unknown("no group")),
        }
    };
    let Some((version, rest)) = rest.split_first() else {
        return Ok(Target::Group(group.to_string()));
    };
    let find = |plural: &str| {
        resources::find(group, version, plural).ok_or_else(|| unknown(&format!("{plural}.{group}/{version}")))
    };
    let v = version.to_string();
    match rest {
        [] => {
            if discovery::served(group, version) {
                Ok(Target::ResourceList(group.to_string(), v))
            } else {
                Err(unknown(&format!("group version {group}/{version}")))
            }
        }
        [plural] => Ok(Target::Collection { def: find(plural)?, version: v, ns: None }),
        // Cluster-scoped objects: namespaces/<name>, customresourcedefinitions/<name>.
        [plural, name] if !find(plural)?.namespaced => {
            Ok(Target::Item { def: find(plural)?, version: v, ns: None, name: name.to_string(), status: false })
        }
        [plural, name, "status"] if !find(plural)?.namespaced => {
            Ok(Target::Item { def: find(plural)?, version: v, ns: None, name: name.to_string(), status: true })
        }
        ["namespaces", ns, plural] => {
            Ok(Target::Collection { def: find(plural)?, version: v, ns: Some(ns.to_string()) })
        }
        ["namespaces", ns, plural, name] => Ok(Target::Item {
            def: find(plural)?,
            version: v,
            ns: Some(ns.to_string()),
            name: name.to_string(),
            status: false,
        }),
        ["namespaces", ns, plural, name, "status"] => Ok(Target::Item {
            def: find(plural)?,
            version: v,
            ns: Some(ns.to_string()),
            name: name.to_string(),
            status: true,
        }),
        _ => Err(unknown(&segs.join("/"))),
    }
}

/// One request to a resource: the control plane, the resource and the version asked for, the
/// namespace in the path, the headers and the query.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub st: &'a ControlPlane,
    pub def: &'a Def,
    pub version: &'a str,
    pub ns: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub params: &'a Params,
}

/// The query parameters a request may carry.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    /// Booleans as Go's `strconv.ParseBool` reads them (`1`, `t`, `True`, ...).
    pub fn flag(&self, k: &str) -> Result<bool, ApiError> {
        match self.str(k) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(ApiError::BadRequest(format!("{k}: '{v}' is not a boolean"))),
        }
    }
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.str("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(v) => Err(ApiError::BadRequest(format!("dryRun: '{v}' is not supported (use All)"))),
        }
    }
}

/// Whether the client asked for a Table (`kubectl get`).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|a| a.split(',').next().is_some_and(|first| first.replace(' ', "").contains("as=Table")))
}

async fn dispatch(
    State(st): State<std::sync::Arc<ControlPlane>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let (core, rest) = match path.strip_prefix("/apis/") {
        Some(r) => (false, r),
        None => (true, path.strip_prefix("/api/").unwrap_or("")),
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let params = Params(query);
    let result = match parse(core, &segs) {
        Ok(target) => route(&st, &method, target, &headers, &params, body).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn route(
    st: &ControlPlane,
    method: &Method,
    target: Target,
    headers: &HeaderMap,
    params: &Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    match (method, target) {
        (&Method::GET, Target::Group(g)) => discovery::group(&g),
        (&Method::GET, Target::ResourceList(g, v)) => Ok(discovery::resource_list(&g, &v)),
        (_, Target::Item { def, .. } | Target::Collection { def, .. }) if def.read_only && method != Method::GET => {
            Err(ApiError::MethodNotAllowed(format!("{} are read-only (derived by Spate)", def.plural)))
        }
        (m, Target::Item { status: true, .. }) if m != Method::GET => Err(ApiError::MethodNotAllowed(
            "the status subresource is written by Spate's reconcilers, not by clients".into(),
        )),
        (_, Target::Collection { def, version, ns }) => {
            let c = Call { st, def: &def, version: &version, ns: ns.as_deref(), headers, params };
            match *method {
                Method::GET if params.flag("watch")? => read::watch(&c).await,
                Method::GET => read::list(&c).await,
                Method::POST => write::create(&c, &body).await,
                ref m => Err(ApiError::MethodNotAllowed(format!("{m} is not supported here"))),
            }
        }
        (_, Target::Item { def, version, ns, name, .. }) => {
            let c = Call { st, def: &def, version: &version, ns: ns.as_deref(), headers, params };
            match *method {
                Method::GET => read::get(&c, &name).await,
                Method::PUT => write::replace(&c, &name, &body).await,
                Method::PATCH => write::patch(&c, &name, &body).await,
                Method::DELETE => write::delete(&c, &name).await,
                ref m => Err(ApiError::MethodNotAllowed(format!("{m} is not supported here"))),
            }
        }
        (m, _) => Err(ApiError::MethodNotAllowed(format!("{m} is not supported here"))),
    }
}

/// The `apiVersion` objects are shown in at `version` (a kind served in several versions).
pub fn api_version(def: &Def, version: &str) -> String {
    if def.group.is_empty() { version.to_string() } else { format!("{}/{version}", def.group) }
}

/// Shows a stored object `o` in the requested version of its kind (converted where that version's
/// shape differs). Reads, watches and write answers all go through here.
pub fn in_version(def: &Def, version: &str, mut o: serde_json::Value) -> serde_json::Value {
    if let Res::Stored(kind) = def.res {
        o = convert::to_served(kind, version, o);
        o["apiVersion"] = serde_json::json!(api_version(def, version));
    }
    o
}

/// The stored kind behind a definition, if it is one.
pub fn stored_kind(def: &Def) -> Option<spate_api::Kind> {
    match def.res {
        Res::Stored(k) => Some(k),
        _ => None,
    }
}
