//! Who may use the admin API. It can start processes (ContainerSource,
//! Service), so it is guarded even on loopback:
//! - bearer tokens from `--admin-token-file` (one a line), when given;
//! - requests from a browser context are refused whatever the binding: a
//!   `Host` that is not the listen address or a configured name (DNS
//!   rebinding), a foreign `Origin` or `Sec-Fetch-Site: cross-site` (another
//!   page), and writes whose body type a page can send without a CORS
//!   preflight (`text/plain`, forms, or no type at all).
//!
//! `/healthz` and `/readyz` stay open for probes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use thiserror::Error;

/// Body types a write may carry (each needs a CORS preflight from a page).
const WRITE_TYPES: &[&str] = &[
    "application/yaml",
    "application/x-yaml",
    "application/json",
    "text/yaml",
    // Kubernetes patches (kubectl apply, client libraries).
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
    "application/strategic-merge-patch+json",
    // kubectl's typed clients (`create namespace`).
    "application/vnd.kubernetes.protobuf",
];

#[derive(Debug, Error)]
pub enum AuthConfigError {
    #[error("reading the admin token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the admin token file {0} holds no token (one token a line; blank lines and `#` comments are ignored)")]
    Empty(String),
    #[error("admin token in {path} line {line} is shorter than 16 characters")]
    Short { path: String, line: usize },
    #[error(
        "refusing to serve the admin API on {0} without authentication: anyone who reaches it can run \
         processes as this user. Pass --admin-token-file FILE (one token a line; clients send it with \
         --token or SPATE_TOKEN), or bind it to a loopback address such as 127.0.0.1:8081"
    )]
    OpenOnNetwork(SocketAddr),
}

/// The admin API's guard, built once at start.
#[derive(Clone)]
pub struct AdminGuard(Arc<Inner>);

struct Inner {
    tokens: Vec<Vec<u8>>,
    /// `host[:port]` values a request's `Host` may carry (lower case).
    hosts: Vec<String>,
}

impl AdminGuard {
    /// `tokens` empty: no token needed (loopback only, checked by [`check_binding`]).
    pub fn new(listen: SocketAddr, extra_hosts: &[String], tokens: Vec<String>) -> AdminGuard {
        let port = listen.port();
        let mut hosts = vec![format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
        hosts.push(listen.to_string());
        for h in extra_hosts {
            let h = h.to_ascii_lowercase();
            if h.contains(':') && !h.ends_with(']') {
                hosts.push(h);
            } else {
                hosts.push(format!("{h}:{port}"));
                hosts.push(h);
            }
        }
        AdminGuard(Arc::new(Inner { tokens: tokens.into_iter().map(String::into_bytes).collect(), hosts }))
    }

    /// Why `req` is refused, if it is.
    fn refusal(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<(StatusCode, String)> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        // Without tokens, only the names of this address are trusted (DNS rebinding);
        // with tokens a page cannot authenticate anyway, and remote names vary.
        if self.0.tokens.is_empty() && !self.0.hosts.contains(&host) {
            return Some((
                StatusCode::FORBIDDEN,
                format!(
                    "Host '{host}' is not this admin API's address; add the name with --admin-host if it reaches \
                     this server legitimately"
                ),
            ));
        }
        if matches!(path, "/healthz" | "/readyz") && method == Method::GET {
            return None;
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
            let same =
                origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host.as_str());
            if !same {
                return Some((StatusCode::FORBIDDEN, format!("cross-origin request from '{origin}' refused")));
            }
        }
        if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
            return Some((StatusCode::FORBIDDEN, "cross-site request refused".into()));
        }
        if !self.0.tokens.is_empty() && !self.token_ok(headers) {
            return Some((
                StatusCode::UNAUTHORIZED,
                "missing or unknown bearer token (send --token or SPATE_TOKEN)".into(),
            ));
        }
        let writes = matches!(*method, Method::POST | Method::PUT | Method::DELETE | Method::PATCH);
        if writes && *method != Method::DELETE {
            let ty = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let essence = ty.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            // Kubernetes clients (the Python client 37) may send JSON with no type at all; a
            // browser always marks its requests (Origin, Sec-Fetch-*), so none of those: not a page.
            let browserless =
                ["origin", "sec-fetch-site", "sec-fetch-mode", "cookie"].iter().all(|h| !headers.contains_key(*h));
            let kube_api = path.starts_with("/api/") || path.starts_with("/apis/");
            if ty.is_empty() && browserless && kube_api {
                return None;
            }
            if !WRITE_TYPES.contains(&essence.as_str()) {
                let shown = if ty.is_empty() { "none" } else { ty };
                return Some((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "Content-Type {shown} refused on a write: send application/yaml or application/json \
                         (types a web page cannot send without permission)"
                    ),
                ));
            }
        }
        None
    }

    /// A bearer token, or the dashboard's session cookie ([`SESSION_COOKIE`]).
    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        if bearer.is_some_and(|t| self.known(t)) {
            return true;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
            .any(|t| self.known(t))
    }

    /// Constant time in the token's bytes: no early exit on the first difference.
    fn known(&self, given: &str) -> bool {
        let given = given.trim().as_bytes();
        self.0.tokens.iter().fold(false, |ok, t| ok | constant_time_eq(t, given))
    }

    /// `GET /?token=T` with a known token (the README's way to open the
    /// dashboard): a redirect to `/` that keeps the session in a cookie, so the
    /// token leaves the address bar and reloads need no token.
    fn dashboard_login(&self, req: &Request<Body>) -> Option<Response> {
        if self.0.tokens.is_empty() || req.method() != Method::GET || req.uri().path() != "/" {
            return None;
        }
        let query = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri()).ok()?;
        let token = query.0.get("token").filter(|t| self.known(t))?;
        let cookie = format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        let value = header::HeaderValue::from_str(&cookie).ok()?;
        let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        r.headers_mut().insert(header::SET_COOKIE, value);
        Some(r)
    }
}

/// The dashboard's session cookie (HttpOnly, SameSite=Strict: a page of
/// another site can neither read it nor make the browser send it).
pub const SESSION_COOKIE: &str = "spate_session";

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// The middleware: refuses what [`AdminGuard::refusal`] names, with the reason.
pub async fn guard(State(g): State<AdminGuard>, req: Request<Body>, next: Next) -> Response {
    if let Some(r) = g.dashboard_login(&req) {
        return r;
    }
    if let Some((status, reason)) = g.refusal(req.method(), req.uri().path(), req.headers()) {
        // A Kubernetes Status (kubectl shows `message`), with `error` as before.
        let why = match status {
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
            _ => "Forbidden",
        };
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": status.as_u16(), "reason": why, "message": reason, "error": reason});
        let mut r = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        return r;
    }
    next.run(req).await
}

/// Reads a token file: one token a line, blank lines and `#` comments ignored.
pub fn read_tokens(path: &Path) -> Result<Vec<String>, AuthConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read { path: shown.clone(), source })?;
    let mut tokens = vec![];
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.len() < 16 {
            return Err(AuthConfigError::Short { path: shown, line: i + 1 });
        }
        tokens.push(t.to_string());
    }
    if tokens.is_empty() {
        return Err(AuthConfigError::Empty(shown));
    }
    Ok(tokens)
}

/// An admin API reachable from other machines must require a token.
pub fn check_binding(addr: SocketAddr, has_tokens: bool) -> Result<(), AuthConfigError> {
    if has_tokens || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(AuthConfigError::OpenOnNetwork(addr))
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    use super::*;

    fn app(tokens: Vec<String>) -> Router {
        let g = AdminGuard::new("127.0.0.1:8081".parse().unwrap(), &["spate.internal".into()], tokens);
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/apply", post(|| async { "applied" }))
            .route("/apis/x", get(|| async { "list" }))
            .layer(axum::middleware::from_fn_with_state(g, guard))
    }

    async fn call(app: Router, method: &str, path: &str, headers: &[(&str, &str)]) -> StatusCode {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        app.oneshot(b.body(Body::from("kind: Broker")).unwrap()).await.unwrap().status()
    }

    const YAML: (&str, &str) = ("content-type", "application/yaml");
    const HOST: (&str, &str) = ("host", "127.0.0.1:8081");

    #[tokio::test]
    async fn browser_contexts_are_refused_even_without_tokens() {
        let a = || app(vec![]);
        assert_eq!(call(a(), "POST", "/apply", &[HOST, YAML]).await, StatusCode::OK);
        assert_eq!(
            call(a(), "POST", "/apply", &[HOST, ("content-type", "text/plain")]).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            call(a(), "POST", "/apply", &[HOST]).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no type: a Blob body"
        );
        let form = ("content-type", "application/x-www-form-urlencoded");
        assert_eq!(call(a(), "POST", "/apply", &[HOST, form]).await, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let evil = ("origin", "http://evil.example");
        assert_eq!(call(a(), "POST", "/apply", &[HOST, YAML, evil]).await, StatusCode::FORBIDDEN);
        assert_eq!(call(a(), "GET", "/apis/x", &[HOST, evil]).await, StatusCode::FORBIDDEN, "reads leak secrets too");
        let rebound = ("host", "evil.example:8081");
        assert_eq!(call(a(), "POST", "/apply", &[rebound, YAML]).await, StatusCode::FORBIDDEN, "DNS rebinding");
        assert_eq!(
            call(a(), "GET", "/apis/x", &[("host", "spate.internal:8081")]).await,
            StatusCode::OK,
            "--admin-host"
        );
        let same = ("origin", "http://127.0.0.1:8081");
        assert_eq!(call(a(), "POST", "/apply", &[HOST, YAML, same]).await, StatusCode::OK, "same origin");
        let site = ("sec-fetch-site", "cross-site");
        assert_eq!(call(a(), "GET", "/apis/x", &[HOST, site]).await, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn tokens_are_required_except_for_probes() {
        let a = || app(vec!["0123456789abcdef-token".into()]);
        assert_eq!(call(a(), "GET", "/apis/x", &[HOST]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            call(a(), "GET", "/apis/x", &[HOST, ("authorization", "Bearer wrong-token-wrong")]).await,
            StatusCode::UNAUTHORIZED
        );
        let ok = ("authorization", "Bearer 0123456789abcdef-token");
        assert_eq!(call(a(), "GET", "/apis/x", &[HOST, ok]).await, StatusCode::OK);
        assert_eq!(call(a(), "POST", "/apply", &[HOST, ok, YAML]).await, StatusCode::OK);
        assert_eq!(call(a(), "GET", "/healthz", &[HOST]).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_dashboard_takes_its_token_once_and_keeps_the_session_in_a_strict_cookie() {
        let g = AdminGuard::new("127.0.0.1:8081".parse().unwrap(), &[], vec!["0123456789abcdef-token".into()]);
        let a = || {
            Router::new()
                .route("/", get(|| async { "dashboard" }))
                .route("/apis/x", get(|| async { "list" }))
                .layer(axum::middleware::from_fn_with_state(g.clone(), guard))
        };
        let get_with = |uri: &str, headers: &[(&str, &str)]| {
            let mut b = axum::http::Request::builder().method("GET").uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(Body::empty()).unwrap()
        };
        // The README's link: a redirect to `/` that sets the session cookie.
        let r = a().oneshot(get_with("/?token=0123456789abcdef-token", &[HOST])).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/");
        let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        let session = cookie.split(';').next().unwrap().to_string();
        // The cookie authenticates the page and its API reads; a wrong token or none does not.
        for uri in ["/", "/apis/x"] {
            let r = a().oneshot(get_with(uri, &[HOST, ("cookie", &session)])).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
        }
        let r = a().oneshot(get_with("/?token=wrong-wrong-wrong-wrong", &[HOST])).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = a().oneshot(get_with("/", &[HOST, ("cookie", "spate_session=wrong-wrong-wrong")])).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // A cross-site page still cannot use it.
        let r = a()
            .oneshot(get_with("/apis/x", &[HOST, ("cookie", &session), ("sec-fetch-site", "cross-site")]))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn token_files_and_bindings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# admins\n\n0123456789abcdef-one\n  0123456789abcdef-two  \n").unwrap();
        assert_eq!(read_tokens(&p).unwrap(), ["0123456789abcdef-one", "0123456789abcdef-two"]);
        std::fs::write(&p, "short\n").unwrap();
        assert!(read_tokens(&p).unwrap_err().to_string().contains("line 1"));
        std::fs::write(&p, "# none\n").unwrap();
        assert!(matches!(read_tokens(&p), Err(AuthConfigError::Empty(_))));
        let open = check_binding("0.0.0.0:8081".parse().unwrap(), false).unwrap_err().to_string();
        assert!(open.contains("--admin-token-file") && open.contains("0.0.0.0:8081"), "{open}");
        assert!(check_binding("0.0.0.0:8081".parse().unwrap(), true).is_ok());
        assert!(check_binding("127.0.0.1:8081".parse().unwrap(), false).is_ok());
    }
}
