//! Built-in helper functions on the data plane, so Knative's Sequence and
//! Parallel walkthroughs run without containers (Knative's samples use the
//! `appender`, `filter` and `transformer` images for the same jobs):
//!
//! - `POST /_spate/fn/appender?message=M[&type=T]` appends `M` to the event's
//!   `message` field (JSON object data) or to its text data, sets the type to
//!   `T` if given, and replies with the event.
//! - `POST /_spate/fn/filter?cesql=E` (or `?cel=E`) replies with the event
//!   unchanged when the expression is true, and with 202 and no event when it
//!   is not: the contract of a Parallel branch filter.
//!
//! Expressions are compiled once per distinct query and cached, never parsed
//! per event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use spate_core::CloudEvent;
use spate_filter::Filter;

use super::read_body;

/// Compiled filters by query string; bounded (a misbehaving caller cannot grow it without limit).
const CACHE_LIMIT: usize = 256;

#[derive(Clone)]
struct Functions {
    max_event_size: usize,
    filters: Arc<Mutex<HashMap<String, Arc<Filter>>>>,
}

pub fn router<S: Clone + Send + Sync + 'static>(max_event_size: usize) -> Router<S> {
    let st = Functions { max_event_size, filters: Arc::default() };
    Router::new().route("/appender", post(appender)).route("/filter", post(filter)).with_state(st)
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into())).into_response()
}

/// The single event of the request.
async fn one_event(st: &Functions, headers: &HeaderMap, body: Body) -> Result<CloudEvent, Response> {
    let body = read_body(headers, body, st.max_event_size).await.map_err(IntoResponse::into_response)?;
    let mut decoded = spate_core::http_codec::decode(headers, body).map_err(|e| bad_request(e.to_string()))?;
    if decoded.events.len() != 1 {
        return Err(bad_request(format!("expected one event, got a batch of {}", decoded.events.len())));
    }
    Ok(decoded.events.remove(0))
}

fn reply(ev: &CloudEvent) -> Response {
    let mut h = HeaderMap::new();
    let body = spate_core::http_codec::encode_binary(ev, &mut h);
    (StatusCode::OK, h, body).into_response()
}

/// Appends `message` to the data: to the `message` string of a JSON object, else to the text.
fn append(ev: &mut CloudEvent, message: &str) {
    let json = ev.datacontenttype.as_deref().is_none_or(|ct| ct.contains("json"));
    if json
        && let Some(d) = &ev.data
        && let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice::<serde_json::Value>(d)
    {
        let old = obj.get("message").and_then(|m| m.as_str()).unwrap_or_default();
        let new = format!("{old}{message}");
        obj.insert("message".into(), serde_json::Value::String(new));
        ev.data = Some(Bytes::from(serde_json::to_vec(&obj).expect("a JSON object serialises")));
        return;
    }
    let old = ev.data.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
    ev.data = Some(Bytes::from(format!("{old}{message}")));
    if ev.datacontenttype.is_none() {
        ev.datacontenttype = Some("text/plain".into());
    }
}

async fn appender(
    State(st): State<Functions>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(message) = q.get("message") else {
        return bad_request("appender: the query parameter `message` is required (e.g. ?message=%20-%20step%201)");
    };
    let mut ev = match one_event(&st, &headers, body).await {
        Ok(ev) => ev,
        Err(r) => return r,
    };
    append(&mut ev, message);
    if let Some(t) = q.get("type") {
        if t.is_empty() {
            return bad_request("appender: `type` must not be empty");
        }
        ev.ty = t.clone();
    }
    reply(&ev)
}

fn compile(st: &Functions, q: &HashMap<String, String>) -> Result<Arc<Filter>, String> {
    let (key, dialect, expr) = match (q.get("cesql"), q.get("cel")) {
        (Some(e), None) => (format!("cesql:{e}"), "cesql", e),
        (None, Some(e)) => (format!("cel:{e}"), "cel", e),
        _ => return Err("filter: give exactly one of the query parameters `cesql` or `cel`".into()),
    };
    if let Some(f) = st.filters.lock().expect("filter cache").get(&key) {
        return Ok(f.clone());
    }
    let compiled = if dialect == "cesql" { Filter::cesql(expr) } else { Filter::cel(expr) };
    let f = Arc::new(compiled.map_err(|errs| {
        let msgs: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
        // The query parameter is named; a long expression is not echoed whole.
        let shown: String = expr.chars().take(120).collect();
        let more = if shown.len() < expr.len() { "…" } else { "" };
        format!("filter: query parameter `{dialect}` (`{shown}{more}`): {}", msgs.join("; "))
    })?);
    let mut cache = st.filters.lock().expect("filter cache");
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(key, f.clone());
    Ok(f)
}

async fn filter(
    State(st): State<Functions>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let f = match compile(&st, &q) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let ev = match one_event(&st, &headers, body).await {
        Ok(ev) => ev,
        Err(r) => return r,
    };
    if f.matches_guarded(&ev) { reply(&ev) } else { StatusCode::ACCEPTED.into_response() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ct: Option<&str>, data: Option<&str>) -> CloudEvent {
        let mut ev = CloudEvent::new("1", "/s", "t");
        ev.datacontenttype = ct.map(str::to_string);
        ev.data = data.map(|d| Bytes::from(d.to_string()));
        ev
    }

    fn data(ev: &CloudEvent) -> &str {
        std::str::from_utf8(ev.data.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn append_extends_the_json_message_or_the_text() {
        let mut ev = event(Some("application/json"), Some(r#"{"id":3,"message":"Hello"}"#));
        append(&mut ev, " - Handled by 0");
        let v: serde_json::Value = serde_json::from_str(data(&ev)).unwrap();
        assert_eq!(v["message"], "Hello - Handled by 0");
        assert_eq!(v["id"], 3, "other fields are kept");

        let mut ev = event(Some("text/plain"), Some("a"));
        append(&mut ev, "b");
        assert_eq!(data(&ev), "ab");

        let mut ev = event(None, None);
        append(&mut ev, "x");
        assert_eq!((data(&ev), ev.datacontenttype.as_deref()), ("x", Some("text/plain")));

        let mut ev = event(Some("application/json"), Some("[1]"));
        append(&mut ev, "!");
        assert_eq!(data(&ev), "[1]!", "JSON that is not an object is treated as text");
    }

    #[test]
    fn filter_queries_compile_once_and_name_the_problem() {
        let st = Functions { max_event_size: 1024, filters: Arc::default() };
        let q = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        let a = compile(&st, &q("cel", "data.n % 2 == 0")).unwrap();
        let b = compile(&st, &q("cel", "data.n % 2 == 0")).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        let even = event(Some("application/json"), Some(r#"{"n":4}"#));
        let odd = event(Some("application/json"), Some(r#"{"n":3}"#));
        assert!(a.matches(&even) && !a.matches(&odd));
        let err = compile(&st, &q("cesql", "type = ")).unwrap_err();
        assert!(err.starts_with("filter: query parameter `cesql` (`type = `)"), "{err}");
        let err = compile(&st, &HashMap::new()).unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
    }
}
