//! The sink of `spate bench`: a bare hyper HTTP/1 server that answers 202,
//! counts what arrives and records end-to-end latency from the `benchsent`
//! extension. It is measurement apparatus sharing the machine with what it
//! measures, so it does as little as possible per request: no routing, no
//! header copies, and its waiter is woken once, when the awaited count is
//! reached, not per event.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    received: AtomicU64,
    /// The count `wait_for` awaits; the request that reaches it wakes the waiter.
    target: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    /// When the last event arrived, in nanoseconds since `epoch`.
    last_at: AtomicU64,
    notify: Notify,
    /// The status answered (202, or an error to stop the subscriber).
    status: AtomicU16,
}

/// Receives events; cheap to clone.
#[derive(Clone)]
pub struct BenchSink {
    pub url: String,
    epoch: Instant,
    state: Arc<State>,
}

impl BenchSink {
    pub async fn start() -> anyhow::Result<BenchSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the bench sink")?;
        let url = format!("http://{}/", listener.local_addr()?);
        let state = Arc::new(State { status: AtomicU16::new(202), ..State::default() });
        let sink = BenchSink { url, epoch: Instant::now(), state };
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| s.clone().receive(req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(sink)
    }

    async fn receive(self, req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
        let st = &self.state;
        let status = st.status.load(Ordering::Relaxed);
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if status != 202 {
            return Ok(resp);
        }
        let now = crate::bench::now_nanos();
        let header = req.headers().get("ce-benchsent").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let sent: Option<u64> = match header {
            Some(sent) => Some(sent),
            // Structured or batched: find it in the JSON.
            None => req.into_body().collect().await.ok().and_then(|b| {
                let v: serde_json::Value = serde_json::from_slice(&b.to_bytes()).ok()?;
                v.get("benchsent")?.as_str()?.parse().ok()
            }),
        };
        if let Some(sent) = sent {
            st.latencies.lock().expect("lock").push(now.saturating_sub(sent));
        }
        st.last_at.store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let n = st.received.fetch_add(1, Ordering::SeqCst) + 1;
        if n == st.target.load(Ordering::SeqCst) {
            st.notify.notify_waiters();
        }
        Ok(resp)
    }

    pub fn reset(&self) {
        self.state.received.store(0, Ordering::SeqCst);
        self.state.latencies.lock().expect("lock").clear();
        self.state.last_at.store(0, Ordering::SeqCst);
    }

    /// Answers `status` to every later request (503: a stopped subscriber).
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// When the last event arrived (now if none did).
    pub fn last_at(&self) -> Instant {
        match self.state.last_at.load(Ordering::SeqCst) {
            0 => Instant::now(),
            n => self.epoch + Duration::from_nanos(n),
        }
    }

    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *self.state.latencies.lock().expect("lock"))
    }

    /// Waits until `n` events arrived; false after `timeout`.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let st = &self.state;
        let notified = st.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        st.target.store(n, Ordering::SeqCst);
        if st.received.load(Ordering::SeqCst) >= n {
            return true;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        st.received.load(Ordering::SeqCst) >= n
    }
}
