//! The HTTP/1 client under the dispatcher: hyper's pooled client over
//! rustls, fed a request whose URI was parsed when the destination was set
//! up. Nothing per request beyond the request itself: no URL re-parsing, no
//! header-map copies kept for redirects (deliveries do not follow
//! redirects; a 3xx is an answer), no proxy lookup (deliveries go straight
//! to the destination; `HTTP_PROXY` is not consulted).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_rustls::rustls;

use crate::Attempt;

/// The largest response body read (a reply event); a larger one fails the attempt.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// A pooled client; cheap to clone (clones share the pool).
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The system's root certificates, read once per process.
fn system_roots() -> &'static [rustls_pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls_pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "a system root certificate could not be read");
        }
        found.certs
    })
}

impl HttpClient {
    /// A client trusting the system roots plus `extra` (PEM-parsed CA certificates).
    pub fn new(extra: Vec<rustls_pki_types::CertificateDer<'static>>) -> Result<HttpClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        for cert in extra {
            roots.add(cert).map_err(|e| format!("a CA certificate cannot be used: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(HttpClient { inner })
    }

    /// One POST; the whole exchange (connect, send, read the answer) within `timeout`.
    pub async fn post(&self, uri: &Uri, headers: HeaderMap, body: Bytes, timeout: Duration) -> Attempt {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers;
        let exchange = async {
            let resp = match self.inner.request(req).await {
                Ok(r) => r,
                Err(e) => return Attempt::Failed { timeout: false, message: crate::error_chain(&e) },
            };
            let (parts, body) = resp.into_parts();
            let status = parts.status.as_u16();
            match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                // 202 and 204 carry no reply and need no retry advice: their headers are not kept.
                Ok(b) => Attempt::Response {
                    status,
                    headers: if matches!(status, 202 | 204) { HeaderMap::new() } else { parts.headers },
                    body: b.to_bytes(),
                },
                Err(e) => Attempt::Failed { timeout: false, message: format!("reading the response: {e}") },
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(a) => a,
            Err(_) => Attempt::Failed { timeout: true, message: format!("timed out after {timeout:?}") },
        }
    }
}

/// Parses every certificate of a PEM bundle.
pub(crate) fn certificates(pem: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("the bundle holds no certificate".into());
    }
    Ok(certs)
}
