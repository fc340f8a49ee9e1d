//! Services on the data plane: `/services/<ns>/<name>[/<path>]`, and any path
//! on host `<name>.<ns>.<domain>` or `<tag>-<name>.<ns>.<domain>`. Requests go
//! through the revision's activator to an instance. Status mapping of serving
//! errors lives here.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use spate_serving::{Revision, Serving, ServingError};

use crate::ingress::read_body;

#[derive(Clone)]
pub struct Proxy {
    pub serving: Arc<Serving>,
    pub max_body: usize,
}

pub fn router<S: Clone + Send + Sync + 'static>(st: Proxy) -> Router<S> {
    Router::new()
        .route("/services/{namespace}/{name}", any(by_path))
        .route("/services/{namespace}/{name}/", any(by_path))
        .route("/services/{namespace}/{name}/{*rest}", any(by_path))
        .route("/tags/{namespace}/{name}/{tag}", any(by_path))
        .route("/tags/{namespace}/{name}/{tag}/", any(by_path))
        .route("/tags/{namespace}/{name}/{tag}/{*rest}", any(by_path))
        .with_state(st)
}

/// Middleware: a request whose Host names a Service goes to it, whatever its path.
pub async fn by_host(State(st): State<Proxy>, req: Request, next: Next) -> Response {
    let rev = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| st.serving.route_host(h));
    match rev {
        Some(rev) => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
            forward(&st, &rev, req, &pq).await
        }
        None => next.run(req).await,
    }
}

fn serving_error(e: ServingError) -> Response {
    let (code, retry) = match &e {
        ServingError::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some("1")),
        ServingError::Unavailable { .. } | ServingError::Spawn(_) | ServingError::Process(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, Some("5"))
        }
        ServingError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, None),
        ServingError::Upstream { .. } => (StatusCode::BAD_GATEWAY, None),
        ServingError::History { .. } => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
    let mut r = (code, format!("{e}\n")).into_response();
    if let Some(s) = retry {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(s));
    }
    r
}

async fn by_path(
    State(st): State<Proxy>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    req: Request,
) -> Response {
    let (ns, name) = (&params["namespace"], &params["name"]);
    let rev = match params.get("tag") {
        Some(tag) => st.serving.route_tag(ns, name, tag),
        None => st.serving.route(ns, name),
    };
    let Some(rev) = rev else {
        let what = params.get("tag").map_or(String::new(), |t| format!(" with tag {t}"));
        return (StatusCode::NOT_FOUND, format!("no service {ns}/{name}{what}\n")).into_response();
    };
    let mut pq = format!("/{}", params.get("rest").map_or("", String::as_str));
    if let Some(q) = req.uri().query() {
        pq.push('?');
        pq.push_str(q);
    }
    forward(&st, &rev, req, &pq).await
}

async fn forward(st: &Proxy, rev: &Arc<Revision>, req: Request, pq: &str) -> Response {
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, st.max_body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let resp = match st.serving.forward(rev, parts.method, pq, parts.headers, body).await {
        Ok(r) => r,
        Err(e) => return serving_error(e),
    };
    let mut headers = resp.headers;
    for h in ["connection", "keep-alive", "transfer-encoding", "te", "upgrade"] {
        headers.remove(h);
    }
    let mut r = Response::new(Body::from(resp.body));
    *r.status_mut() = resp.status;
    *r.headers_mut() = headers;
    r
}
