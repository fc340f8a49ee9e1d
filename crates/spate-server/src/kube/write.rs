//! Writes: create (POST), replace (PUT, with optimistic concurrency), patch
//! (JSON merge patch, JSON patch, server-side apply) and delete. Every write
//! goes through admission; a refused write changes nothing.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use spate_api::{AdmissionError, FieldError, Kind};

use super::resources::Def;
use super::{Call, Params, api_version, in_version, stored_kind};
use crate::control::ControlPlane;
use crate::control::{ApiError, Expect};
use crate::objects::Rv;
use crate::store::{Key, KeyExt};

/// `fieldValidation`: what an unknown field in a written object does. Kubernetes' default is Warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Refused: 400 with `strict decoding error: unknown field "<path>"`.
    Strict,
    /// Dropped, with a `Warning` header naming it.
    Warn,
    /// Dropped silently.
    Ignore,
}

impl Validation {
    fn of(params: &Params) -> Result<Validation, ApiError> {
        match params.str("fieldValidation") {
            None | Some("Warn") => Ok(Validation::Warn),
            Some("Strict") => Ok(Validation::Strict),
            Some("Ignore") => Ok(Validation::Ignore),
            Some(v) => Err(ApiError::BadRequest(format!("fieldValidation: '{v}' is not one of Strict, Warn, Ignore"))),
        }
    }
}

/// How a write is made: what it expects to find, dry or not, and how unknown fields are met.
#[derive(Clone, Copy)]
struct How {
    expect: Expect,
    dry_run: bool,
    validation: Validation,
}

/// Removes the field at a walker path (`spec.filters[0].foo`) from `doc`.
fn remove_path(doc: &mut Value, path: &str) {
    let mut parts: Vec<(String, Option<usize>)> = vec![];
    for seg in path.split('.') {
        match seg.split_once('[') {
            Some((name, rest)) => parts.push((name.to_string(), rest.trim_end_matches(']').parse().ok())),
            None => parts.push((seg.to_string(), None)),
        }
    }
    let Some((last, last_index)) = parts.pop() else { return };
    let mut cur = doc;
    for (name, index) in parts {
        let Some(next) = cur.get_mut(&name) else { return };
        cur = match index {
            Some(i) => match next.get_mut(i) {
                Some(v) => v,
                None => return,
            },
            None => next,
        };
    }
    if last_index.is_none()
        && let Some(o) = cur.as_object_mut()
    {
        o.remove(&last);
    }
}

/// Admits `doc`, meeting unknown fields as `validation` says; the warnings to send back.
fn admit_validated(
    doc: &mut Value,
    validation: Validation,
    kind: &str,
    version: &str,
) -> Result<(spate_api::Resource, spate_api::Compiled, Vec<String>), ApiError> {
    let mut warnings = vec![];
    loop {
        let errs = match spate_api::admit_document(doc, 0) {
            Ok((r, c)) => return Ok((r, c, warnings)),
            Err(errs) => errs,
        };
        let unknown: Vec<String> =
            errs.iter().filter(|e| e.message.starts_with("unknown field")).map(|e| e.path.clone()).collect();
        if unknown.is_empty() || (validation == Validation::Strict && unknown.len() < errs.len()) {
            return Err(ApiError::Admission(AdmissionError::Invalid(errs)));
        }
        if validation == Validation::Strict {
            let fields: Vec<String> = unknown.iter().map(|p| format!("unknown field \"{p}\"")).collect();
            return Err(ApiError::BadRequest(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                fields.join(", ")
            )));
        }
        for p in &unknown {
            remove_path(doc, p);
            if validation == Validation::Warn {
                warnings.push(format!("unknown field \"{p}\""));
            }
        }
    }
}

/// The `fieldManager` an apply patch must name.
fn field_manager(params: &Params) -> Result<&str, ApiError> {
    params.str("fieldManager").ok_or_else(|| ApiError::BadRequest("fieldManager is required for apply requests".into()))
}

/// A response with Kubernetes `Warning` headers (kubectl prints them).
fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "'"));
        if let Ok(v) = axum::http::HeaderValue::from_str(&text) {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

/// Patch types a custom resource takes (strategic merge patch is refused, as a CRD server refuses it).
const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml";
/// How often a patch computed on the live object is retried when another write got in first.
const PATCH_RETRIES: usize = 5;

/// The one object of a create or replace: JSON or YAML, or protobuf for the core kinds.
fn body_document(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ty = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ty.starts_with(super::proto::CONTENT_TYPE) {
        return super::proto::decode(body);
    }
    one_document(body)
}

fn one_document(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?;
    let mut docs = spate_api::parse_documents(text)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        n => Err(ApiError::BadRequest(format!("expected one object in the body, got {n}"))),
    }
}

fn key(def: &Def, ns: Option<&str>, name: &str) -> Result<Key, ApiError> {
    let kind = stored_kind(def).ok_or_else(|| ApiError::MethodNotAllowed(format!("{} are read-only", def.plural)))?;
    let ns = if kind == Kind::Namespace { String::new() } else { ns.unwrap_or("default").to_string() };
    Ok((kind, ns, name.to_string()))
}

/// Checks that `doc` is the path's kind (in one of its served versions) and
/// namespace, fills the namespace in, and admits it.
fn admit_compiled(
    def: &Def,
    version: &str,
    ns: Option<&str>,
    doc: &mut Value,
    validation: Validation,
) -> Result<(spate_api::Resource, spate_api::Compiled, Vec<String>), ApiError> {
    let kind = doc["kind"].as_str().unwrap_or("");
    let av = doc["apiVersion"].as_str().unwrap_or("");
    let served = def.versions.iter().any(|v| api_version(def, v) == av);
    if kind != def.kind || !served {
        return Err(ApiError::BadRequest(format!(
            "the body is a {kind} ({av}) but the path names {} ({})",
            def.kind,
            api_version(def, version)
        )));
    }
    if let Some(ns) = ns.filter(|_| def.namespaced) {
        match doc.pointer("/metadata/namespace").and_then(Value::as_str) {
            None => {
                if let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("namespace".into(), json!(ns));
                }
            }
            Some(n) if n != ns => {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the body ({n}) does not match the namespace of the path ({ns})"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(kind) = stored_kind(def) {
        *doc = super::convert::to_stored(kind, std::mem::take(doc));
    }
    admit_validated(doc, validation, def.kind, version)
}

/// The object after a write, as this instance now shows it.
async fn written(st: &ControlPlane, def: &Def, version: &str, key: &Key) -> Result<Value, ApiError> {
    let o = st.objects().get(key).ok_or_else(|| ApiError::NotFound(format!("{} \"{}\"", key.resource(), key.2)))?;
    Ok(in_version(def, version, o))
}

/// Writes one admitted document, recording what a field manager applied (server-side apply);
/// answers the object (the admitted one when dry) and the warnings to send.
async fn store(
    st: &ControlPlane,
    def: &Def,
    version: &str,
    doc: Value,
    how: How,
    ns: Option<&str>,
    by_manager: Option<(String, Value)>,
) -> Result<(Value, Vec<String>), ApiError> {
    let mut doc = doc;
    let (resource, compiled, warnings) = admit_compiled(def, version, ns, &mut doc, how.validation)?;
    let key = resource.key();
    let manifest = resource.manifest.clone();
    st.write_applied(vec![(resource, compiled)], &[how.expect], how.dry_run, by_manager).await?;
    if how.dry_run {
        return Ok((in_version(def, version, manifest), warnings));
    }
    Ok((written(st, def, version, &key).await?, warnings))
}

pub async fn create(c: &Call<'_>, body: &[u8]) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, headers, params } = *c;
    let doc = body_document(headers, body)?;
    let how = How { expect: Expect::Absent, dry_run: params.dry_run()?, validation: Validation::of(params)? };
    let (o, warnings) = store(st, def, version, doc, how, ns, None).await?;
    Ok(with_warnings((StatusCode::CREATED, Json(o)).into_response(), &warnings))
}

fn version_of(doc: &Value) -> Result<Option<Rv>, ApiError> {
    match doc.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => Rv::parse(v)
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("metadata.resourceVersion: '{v}' is not a valid version"))),
    }
}

pub async fn replace(c: &Call<'_>, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, headers, params } = *c;
    let doc = body_document(headers, body)?;
    check_name(&doc, name)?;
    let Some(rv) = version_of(&doc)? else {
        let who = format!("{} {}/{name}", def.kind, ns.unwrap_or(""));
        return Err(ApiError::Admission(AdmissionError::Invalid(vec![FieldError::new(
            None,
            who,
            "metadata.resourceVersion",
            "must be specified for an update",
        )])));
    };
    let how = How { expect: Expect::Revision(rv.rev), dry_run: params.dry_run()?, validation: Validation::of(params)? };
    let (o, warnings) = store(st, def, version, doc, how, ns, None).await?;
    Ok(with_warnings(Json(o).into_response(), &warnings))
}

fn check_name(doc: &Value, name: &str) -> Result<(), ApiError> {
    match doc.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => Ok(()),
        other => Err(ApiError::BadRequest(format!(
            "the name of the body ({}) does not match the name of the path ({name})",
            other.unwrap_or("none")
        ))),
    }
}

/// Server-side apply's merge: maps merge key by key, everything else is replaced.
fn apply_merge(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                match l.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => apply_merge(existing, v),
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (l, a) => *l = a.clone(),
    }
}

/// Server-side apply's removals: what a manager applied before and no longer applies is
/// removed (maps by key; identity fields are kept).
fn remove_dropped(live: &mut Value, before: &Value, now: &Value, top: bool) {
    let (Some(l), Some(b)) = (live.as_object_mut(), before.as_object()) else { return };
    for (k, old) in b {
        if top && matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
            if k == "metadata"
                && let (Some(lm), Some(nm)) = (l.get_mut(k), now.get(k))
            {
                for part in ["labels", "annotations"] {
                    if let (Some(lv), Some(ov)) = (lm.get_mut(part), old.get(part)) {
                        remove_dropped(lv, ov, nm.get(part).unwrap_or(&Value::Null), false);
                    }
                }
            }
            continue;
        }
        match now.get(k) {
            None => {
                l.remove(k);
            }
            Some(n) if n.is_object() && old.is_object() => {
                if let Some(lv) = l.get_mut(k) {
                    remove_dropped(lv, old, n, false);
                }
            }
            Some(_) => {}
        }
    }
}

enum PatchKind {
    Merge,
    Json,
    Apply,
}

fn patch_kind(headers: &HeaderMap) -> Result<PatchKind, ApiError> {
    let ty = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match ty.split(';').next().unwrap_or("").trim() {
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchKind::Apply),
        _ => Err(ApiError::UnsupportedMediaType(PATCH_TYPES.into())),
    }
}

/// The patched document, from the live object (without its status).
fn patched(kind: &PatchKind, live: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let mut doc = live.clone();
    if let Some(o) = doc.as_object_mut() {
        o.remove("status");
    }
    match kind {
        PatchKind::Merge => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("the merge patch is not JSON: {e}")))?;
            json_patch::merge(&mut doc, &p);
        }
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch does not parse: {e}")))?;
            json_patch::patch(&mut doc, &p)
                .map_err(|e| ApiError::BadRequest(format!("the JSON patch cannot be applied: {e}")))?;
        }
        PatchKind::Apply => apply_merge(&mut doc, &one_document(body)?),
    }
    Ok(doc)
}

pub async fn patch(c: &Call<'_>, name: &str, body: &[u8]) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, headers, params } = *c;
    let kind = patch_kind(headers)?;
    let key = key(def, ns, name)?;
    let dry_run = params.dry_run()?;
    let validation = Validation::of(params)?;
    for _ in 0..PATCH_RETRIES {
        let Some(live) = st.objects().get(&key) else {
            // Server-side apply creates what is absent.
            if let PatchKind::Apply = kind {
                let doc = one_document(body)?;
                check_name(&doc, name)?;
                let manager = field_manager(params)?;
                let by_manager = Some((manager.to_string(), doc.clone()));
                let how = How { expect: Expect::Absent, dry_run, validation };
                let (o, warnings) = store(st, def, version, doc, how, ns, by_manager).await?;
                return Ok(with_warnings((StatusCode::CREATED, Json(o)).into_response(), &warnings));
            }
            return Err(ApiError::NotFound(format!("{} \"{name}\"", key.resource())));
        };
        // Patched as the client sees it, in the version it names.
        let live = in_version(def, version, live);
        let mut doc = patched(&kind, &live, body)?;
        let by_manager = match kind {
            PatchKind::Apply => {
                let manager = field_manager(params)?;
                let applied = one_document(body)?;
                if let Some(before) = st.applied(&key, manager).await {
                    remove_dropped(&mut doc, &before, &applied, true);
                }
                Some((manager.to_string(), applied))
            }
            _ => None,
        };
        check_name(&doc, name)?;
        // A version in the patch is a precondition; otherwise the version read here.
        let (expect, from_client) = match version_of(&serde_json::from_slice(body).unwrap_or(Value::Null))? {
            Some(rv) => (rv, true),
            None => (version_of(&live)?.unwrap_or_default(), false),
        };
        let how = How { expect: Expect::Revision(expect.rev), dry_run, validation };
        match store(st, def, version, doc, how, ns, by_manager).await {
            Err(ApiError::Stale(_)) if !from_client => continue,
            Ok((o, warnings)) => return Ok(with_warnings(Json(o).into_response(), &warnings)),
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Stale(key))
}

pub async fn delete(c: &Call<'_>, name: &str) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, params, .. } = *c;
    let key = key(def, ns, name)?;
    let dry_run = params.dry_run()?;
    if key.0 == Kind::Namespace {
        return delete_namespace(st, name, dry_run).await;
    }
    let o = written(st, def, version, &key).await?;
    if !dry_run {
        st.delete(key.0, &key.1, &key.2).await?;
    }
    Ok(Json(o).into_response())
}

/// Deletes what a namespace holds, then the namespace.
async fn delete_namespace(st: &ControlPlane, name: &str, dry_run: bool) -> Result<Response, ApiError> {
    let (all, _) = st.objects().list(None, Some(name));
    let own = (Kind::Namespace, String::new(), name.to_string());
    let stored = st.objects().get(&own);
    if all.is_empty() && stored.is_none() && name != "default" {
        return Err(ApiError::NotFound(format!("namespaces \"{name}\"")));
    }
    if !dry_run {
        for o in &all {
            let Some(kind) = Kind::all().find(|k| o["kind"] == k.name()) else { continue };
            let n = o["metadata"]["name"].as_str().unwrap_or("");
            // Derived objects go with their owners.
            match st.delete(kind, name, n).await {
                Ok(()) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if stored.is_some() {
            st.delete(Kind::Namespace, "", name).await?;
        }
    }
    let o = stored.unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
    Ok(Json(o).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_apply_removes_what_its_manager_no_longer_applies() {
        let before = json!({"apiVersion": "v", "kind": "Trigger", "metadata": {"name": "t", "labels": {"a": "1", "b": "2"}},
            "spec": {"broker": "b", "filter": {"attributes": {"type": "x"}}}});
        let now = json!({"apiVersion": "v", "kind": "Trigger", "metadata": {"name": "t", "labels": {"a": "1"}}, "spec": {"broker": "b"}});
        let mut live = before.clone();
        live["spec"]["delivery"] = json!({"retry": 3});
        live["metadata"]["labels"]["other"] = json!("kept");
        remove_dropped(&mut live, &before, &now, true);
        apply_merge(&mut live, &now);
        assert_eq!(
            live["spec"],
            json!({"broker": "b", "delivery": {"retry": 3}}),
            "the filter it dropped is gone; others' fields stay"
        );
        assert_eq!(live["metadata"]["labels"], json!({"a": "1", "other": "kept"}));
        assert_eq!(live["metadata"]["name"], "t");
    }

    #[test]
    fn server_side_apply_merges_maps_and_replaces_lists() {
        let mut live =
            json!({"metadata": {"name": "t", "labels": {"a": "1"}}, "spec": {"broker": "b", "filters": [{"x": 1}]}});
        apply_merge(&mut live, &json!({"metadata": {"labels": {"b": "2"}}, "spec": {"filters": [{"y": 2}]}}));
        assert_eq!(
            live,
            json!({"metadata": {"name": "t", "labels": {"a": "1", "b": "2"}}, "spec": {"broker": "b", "filters": [{"y": 2}]}})
        );
    }
}
