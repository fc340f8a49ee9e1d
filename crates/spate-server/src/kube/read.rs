//! Reads: one object, a list (`<Kind>List` or a Table), paged and selected,
//! and watches (newline-delimited events from a version, or from the current
//! objects as ADDED), held open for `timeoutSeconds`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use spate_api::Kind;
use tokio::sync::broadcast::error::RecvError;

use super::resources::{Def, Res};
use super::select::Selector;
use super::{Call, Params, api_version, in_version, table, wants_table};
use crate::control::ApiError;
use crate::control::ControlPlane;
use crate::objects::{Rv, WatchEvent};

/// The longest a watch stays open; the default when the client gives no `timeoutSeconds`.
const MAX_WATCH: Duration = Duration::from_secs(3600);
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

/// Namespaces: the stored ones, and those that exist because objects live in them.
fn namespaces(st: &ControlPlane, stored: Vec<Value>) -> Vec<Value> {
    let mut out = stored;
    let (all, _) = st.objects().list(None, None);
    let mut implicit: Vec<String> = all
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_string))
        .filter(|ns| !ns.is_empty())
        .collect();
    implicit.push("default".into());
    implicit.sort();
    implicit.dedup();
    for ns in implicit {
        if !out.iter().any(|o| o["metadata"]["name"] == ns) {
            out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
    }
    for o in &mut out {
        o["status"] = json!({"phase": "Active"});
    }
    out
}

/// Every object of a resource in `ns` (all if `None`).
async fn fetch(st: &ControlPlane, def: &Def, ns: Option<&str>) -> Result<Vec<Value>, ApiError> {
    Ok(match def.res {
        Res::Stored(Kind::Namespace) => namespaces(st, st.get(Kind::Namespace, None, None).await?),
        Res::Stored(k) => st.get(k, ns, None).await?,
        Res::Derived(d) => st.get_derived(d, ns, None)?,
        Res::Events => st.objects().events(ns),
        Res::Crds => super::openapi::crds(),
    })
}

pub async fn list(c: &Call<'_>) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, headers, params } = *c;
    let selector =
        Selector::parse(params.str("labelSelector"), params.str("fieldSelector")).map_err(ApiError::BadRequest)?;
    let rv = st.objects().current().to_string();
    let mut items: Vec<Value> = fetch(st, def, ns).await?.into_iter().filter(|o| selector.matches(o)).collect();
    let key = |o: &Value| {
        let s = |p: &str| o["metadata"][p].as_str().unwrap_or("").to_string();
        format!("{}/{}", s("namespace"), s("name"))
    };
    items.sort_by_key(key);
    if let Some(after) = params.str("continue") {
        items.retain(|o| key(o).as_str() > after);
    }
    let limit = match params.str("limit") {
        Some(l) => l.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("limit: '{l}' is not a number")))?,
        None => 0,
    };
    let mut next = String::new();
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        next = items.last().map(key).unwrap_or_default();
    }
    let items: Vec<Value> = items.into_iter().map(|o| in_version(def, version, o)).collect();
    if wants_table(headers) {
        let full = params.str("includeObject") == Some("Object");
        let mut t = table::table(def, &items, &rv, full, true);
        t["metadata"]["continue"] = json!(next);
        return Ok(Json(t).into_response());
    }
    Ok(Json(json!({"kind": format!("{}List", def.kind), "apiVersion": api_version(def, version),
        "metadata": {"resourceVersion": rv, "continue": next}, "items": items}))
    .into_response())
}

pub async fn get(c: &Call<'_>, name: &str) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, headers, .. } = *c;
    let found = match def.res {
        Res::Stored(Kind::Namespace) | Res::Events | Res::Crds => {
            fetch(st, def, ns).await?.into_iter().find(|o| o["metadata"]["name"] == name)
        }
        Res::Stored(k) => st.get(k, ns, Some(name)).await.ok().and_then(|mut v| v.drain(..).next()),
        Res::Derived(d) => st.get_derived(d, ns, Some(name)).ok().and_then(|mut v| v.drain(..).next()),
    };
    let group = if def.group.is_empty() { String::new() } else { format!(".{}", def.group) };
    let o = found.ok_or_else(|| ApiError::NotFound(format!("{}{group} \"{name}\"", def.plural)))?;
    let o = in_version(def, version, o);
    if wants_table(headers) {
        let rv = o["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
        return Ok(Json(table::table(def, std::slice::from_ref(&o), &rv, false, true)).into_response());
    }
    Ok(Json(o).into_response())
}

/// How one watch shows its events.
struct Shape {
    def: Def,
    version: String,
    ns: Option<String>,
    selector: Selector,
    table: bool,
    /// The next Table event is the first (it carries the column definitions).
    first: bool,
}

impl Shape {
    fn wants(&self, e: &WatchEvent) -> bool {
        Some(e.key.0) == super::stored_kind(&self.def)
            && self.ns.as_ref().is_none_or(|n| *n == e.key.1)
            && self.selector.matches(&e.object())
    }

    fn line(&mut self, kind: &str, object: Value) -> String {
        let object = in_version(&self.def, &self.version, object);
        let object = if self.table {
            let rv = object["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
            let t = table::table(&self.def, std::slice::from_ref(&object), &rv, false, self.first);
            self.first = false;
            t
        } else {
            object
        };
        format!("{}\n", json!({"type": kind, "object": object}))
    }
}

/// What a watch request asks for: where to start and for how long.
struct WatchAsk {
    from: Option<Rv>,
    timeout: Duration,
    bookmarks: bool,
}

impl WatchAsk {
    fn parse(params: &Params) -> Result<WatchAsk, ApiError> {
        if params.flag("sendInitialEvents")? {
            return Err(ApiError::BadRequest("sendInitialEvents is not supported: list, then watch".into()));
        }
        let from = match params.str("resourceVersion") {
            None | Some("0") => None,
            Some(v) => Some(
                Rv::parse(v)
                    .ok_or_else(|| ApiError::BadRequest(format!("resourceVersion: '{v}' is not a valid version")))?,
            ),
        };
        let timeout = match params.str("timeoutSeconds") {
            Some(t) => Duration::from_secs(
                t.parse().map_err(|_| ApiError::BadRequest(format!("timeoutSeconds: '{t}' is not a number")))?,
            )
            .min(MAX_WATCH),
            None => MAX_WATCH,
        };
        Ok(WatchAsk { from, timeout, bookmarks: params.flag("allowWatchBookmarks")? })
    }
}

pub async fn watch(c: &Call<'_>) -> Result<Response, ApiError> {
    let Call { st, def, version, ns, headers, params } = *c;
    let ask = WatchAsk::parse(params)?;
    let shape = Shape {
        def: def.clone(),
        version: version.to_string(),
        ns: ns.map(str::to_string),
        selector: Selector::parse(params.str("labelSelector"), params.str("fieldSelector"))
            .map_err(ApiError::BadRequest)?,
        table: wants_table(headers),
        first: true,
    };
    let objects = st.objects().clone();
    let (past, rx) = if matches!(def.res, Res::Stored(_)) {
        let (past, rx) =
            objects.watch(ask.from).map_err(|e| ApiError::Expired(format!("{} ({})", e.asked, e.oldest)))?;
        (past, Some(rx))
    } else {
        // Derived kinds, events and CRDs: their current objects, then nothing but bookmarks.
        (vec![], None)
    };
    let mut shape = shape;
    let mut initial = vec![];
    for e in &past {
        if shape.wants(e) {
            initial.push(shape.line(e.kind.as_str(), e.object()));
        }
    }
    if rx.is_none() && ask.from.is_none() {
        let current: Vec<Value> = fetch(st, def, ns).await?.into_iter().filter(|o| shape.selector.matches(o)).collect();
        for o in current {
            initial.push(shape.line("ADDED", o));
        }
    }
    let (tx, out) = tokio::sync::mpsc::channel::<String>(64);
    tokio::spawn(pump(initial, rx, shape, ask, objects, tx));
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        let line = out.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(line), out))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(stream))
        .into_response())
}

/// Sends a watch's lines: what happened already, then live changes and
/// bookmarks, until the timeout, the client leaves or it falls behind.
async fn pump(
    initial: Vec<String>,
    mut rx: Option<tokio::sync::broadcast::Receiver<Arc<WatchEvent>>>,
    mut shape: Shape,
    ask: WatchAsk,
    objects: Arc<crate::objects::Objects>,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    for line in initial {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + ask.timeout;
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.tick().await;
    loop {
        let next = async {
            match rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let line = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tick.tick(), if ask.bookmarks => {
                let mark = json!({"type": "BOOKMARK", "object": {"kind": shape.def.kind,
                    "apiVersion": api_version(&shape.def, &shape.version),
                    "metadata": {"resourceVersion": objects.current().to_string()}}});
                format!("{mark}\n")
            }
            e = next => match e {
                Ok(e) if shape.wants(&e) => shape.line(e.kind.as_str(), e.object()),
                Ok(_) => continue,
                // Fallen behind (or shut down): close, so the client lists again, as a real server does.
                Err(RecvError::Lagged(_) | RecvError::Closed) => return,
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}
