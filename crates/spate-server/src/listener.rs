//! Connection hygiene for both listeners: our own accept loop over hyper's
//! HTTP/1 server, so that no client can hold the server's resources.
//!
//! - A request's head must arrive within `header_read_timeout` (hyper's timer;
//!   it also runs while a keep-alive connection waits for its next request,
//!   so idle keep-alive connections close after the same time).
//! - A connection that moves no byte in either direction for `idle_timeout`
//!   (a stalled upload, a client that never reads its answer) is closed.
//! - At most `max_connections` are open; beyond that a connection gets a 503
//!   with `Retry-After` and a body saying why, and is closed at once; except
//!   that on the admin listener [`PROBE_SLOTS`] more may ask for `/healthz`
//!   or `/readyz` (and only that), so probes answer while its cap is full.
//! - A request body must keep arriving at `min_body_rate` bytes per second
//!   once `header_read_timeout` has passed since its head ([`body::Paced`]);
//!   a body trickled slower is cut with 408 and its connection closed.
//! - Strict HTTP/1.1 framing: a request without `Host`, or with both
//!   `Content-Length` and `Transfer-Encoding` (the request-smuggling shape,
//!   seen in the raw bytes because hyper drops one of them), is answered 400.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use spate_log::Throttle;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub mod body;

/// Limits of one listener (flags `--header-read-timeout`, `--idle-timeout`, `--max-connections`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Bytes per second a request body must average after `header_read_timeout` (`--min-body-rate`).
    pub min_body_rate: u64,
    /// Connections accepted beyond `max_connections` for `GET /healthz` and
    /// `GET /readyz` only ([`PROBE_SLOTS`] on the admin listener, 0 on the data plane).
    pub probe_slots: usize,
}

/// The admin listener's connections for health probes beyond its cap.
pub const PROBE_SLOTS: usize = 16;

/// The largest request head accepted (request line and headers); beyond it, 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A stream that records when it last moved a byte, and gives hyper's own
/// bare error answers (an unparsable request: 400; headers over the limit:
/// 431; both with an empty body) a body that says what was wrong.
struct Watched<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
    /// Set when a request head with both Content-Length and Transfer-Encoding was read.
    smuggling: Arc<AtomicBool>,
    /// A replacement being written: its bytes, how many are out, and the length hyper asked to write.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

/// hyper's error answer for a request it could not parse, with a body instead.
/// Spate's own handlers always send a body, so a bare 400/431 can only be hyper's.
fn explained(buf: &[u8]) -> Option<Vec<u8>> {
    let reason = if buf.starts_with(b"HTTP/1.1 400 Bad Request\r\n") {
        ("400 Bad Request", "malformed HTTP request: the request line or a header could not be parsed\n".to_string())
    } else if buf.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            format!("the request line and headers exceed {MAX_HEADER_BYTES} bytes (or 100 headers)\n"),
        )
    } else {
        return None;
    };
    let bare = buf.windows(21).any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r\n"));
    if !bare {
        return None;
    }
    let (status, body) = reason;
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S> Watched<S> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
            if smuggling_shaped(&buf.filled()[before..]) {
                self.smuggling.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(answer) = explained(buf)
        {
            self.replacing = Some((answer, 0, buf.len()));
        }
        if let Some((answer, mut sent, asked)) = self.replacing.take() {
            while sent < answer.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &answer[sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => sent += n,
                    Poll::Ready(Ok(_)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.replacing = Some((answer, sent, asked));
                        return Poll::Pending;
                    }
                }
            }
            self.touch();
            return Poll::Ready(Ok(asked));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether `chunk` holds a request head (from an `HTTP/1.x` request line's end
/// to the blank line) naming both `Content-Length` and `Transfer-Encoding`.
/// hyper keeps only Transfer-Encoding of the two (and closes the connection
/// after), so the handler can no longer tell; the raw bytes can. A head split
/// over two reads is not seen here; hyper's closing still holds then.
fn smuggling_shaped(chunk: &[u8]) -> bool {
    let mut rest = chunk;
    while let Some(at) = find(rest, b" HTTP/1.") {
        let head = &rest[at..];
        let end = find(head, b"\r\n\r\n").unwrap_or(head.len());
        let head = &head[..end];
        if find_ci(head, b"\ncontent-length:") && find_ci(head, b"\ntransfer-encoding:") {
            return true;
        }
        rest = &rest[at + end.max(1)..];
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// What the accept loop saw on a connection, for [`strict`].
#[derive(Clone)]
struct Framing(Arc<AtomicBool>);

/// Strict HTTP/1.1 framing, on both listeners: 400 for a request without
/// `Host` (RFC 9112 §3.2) or with both Content-Length and Transfer-Encoding
/// (§6.1: the shape of request smuggling). Both close the connection.
pub async fn strict(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{StatusCode, Version, header};
    use axum::response::IntoResponse;
    let smuggling = req.extensions().get::<Framing>().is_some_and(|f| f.0.swap(false, Ordering::Relaxed));
    let reason = if smuggling {
        Some("a request may not carry both Content-Length and Transfer-Encoding (RFC 9112 section 6.1)")
    } else if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        Some("an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)")
    } else {
        None
    };
    match reason {
        Some(r) => (StatusCode::BAD_REQUEST, [(header::CONNECTION, "close")], format!("{r}\n")).into_response(),
        None => next.run(req).await,
    }
}

/// Probe-only service for connections beyond the cap: `GET /healthz` and
/// `GET /readyz` reach the app; anything else gets the cap's 503.
async fn only_probes(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, Method, StatusCode, header};
    use axum::response::IntoResponse;
    if req.method() == Method::GET && matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1")), (header::CONNECTION, HeaderValue::from_static("close"))],
        "too many open connections (--max-connections); only /healthz and /readyz are answered beyond the cap\n",
    )
        .into_response()
}

static ACCEPT_ERRORS: Throttle = Throttle::new(Duration::from_secs(10));

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop`
/// changes, then lets open connections finish their requests (the caller
/// bounds how long). A TLS handshake must finish within the header-read timeout.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let probe_slots = Arc::new(Semaphore::new(limits.probe_slots));
    let app = app.layer(axum::middleware::from_fn(strict)).layer(axum::middleware::from_fn_with_state(
        body::Pacing { grace: limits.header_read_timeout, min_rate: limits.min_body_rate },
        body::paced,
    ));
    let probes = app.clone().layer(axum::middleware::from_fn(only_probes));
    let refused = metrics::counter!("spate_connections_refused_total", "listener" => listener_name(&listener));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    if let Some(suppressed) = ACCEPT_ERRORS.allow() {
                        tracing::error!(error = %e, suppressed, "accept failed; backing off 100 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (slot, app) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, app.clone()),
            Err(_) => match probe_slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, probes.clone()),
                Err(_) => {
                    refused.increment(1);
                    tokio::spawn(refuse(stream, limits.max_connections));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (stop, tls) = (stop.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(stream, app, limits, stop).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => connection(tls, app, limits, stop).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake not finished within --header-read-timeout; closed"),
                },
            }
            drop(slot);
        });
    }
    // Wait until every connection is done (the caller's timeout bounds this).
    let _ = slots.acquire_many(limits.max_connections.max(1) as u32).await;
}

fn listener_name(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Over the connection cap: a 503 that says so, then close.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "too many open connections (the server allows {max}, --max-connections); retry shortly or reuse connections\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn connection<S>(stream: S, app: Router, limits: Limits, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let smuggling = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Watched {
        inner: stream,
        epoch,
        last: last.clone(),
        smuggling: smuggling.clone(),
        replacing: None,
    });
    let framing = Framing(smuggling);
    let app = tower::ServiceExt::map_request(app, move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(framing.clone());
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    let check = (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(check);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            r = stop.changed(), if !stopping => {
                let _ = r;
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let idle = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if idle >= limits.idle_timeout {
                    tracing::debug!(idle_ms = idle.as_millis() as u64, "closing a connection idle past --idle-timeout");
                    return;
                }
            }
        }
    }
}

/// Raises the open-file limit to its hard maximum and returns it, so the
/// connection caps, not the kernel, decide when to refuse.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on our own process with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
