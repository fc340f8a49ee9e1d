//! A minimum pace for request bodies. The idle timeout alone lets a client
//! hold a connection slot for ever by trickling one byte every few seconds;
//! [`Paced`] cuts a body that, once the grace period (the header-read
//! timeout) has passed since the head, has averaged less than the minimum
//! rate. The handler reading it sees an error ([`TooSlow`], answered 408)
//! and hyper closes the connection, freeing its slot.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The pace every request body on a listener must keep.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub grace: Duration,
    /// Bytes per second; 0 turns pacing off.
    pub min_rate: u64,
}

/// The error a body too slow to keep the pace ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {rate} bytes/s after the first {grace:?} (--min-body-rate)")]
pub struct TooSlow {
    pub rate: u64,
    pub grace: Duration,
}

/// The middleware: every request body is [`Paced`].
pub async fn paced(State(p): State<Pacing>, req: Request, next: Next) -> Response {
    if p.min_rate == 0 {
        return next.run(req).await;
    }
    next.run(req.map(|b| Body::new(Paced::new(b, p)))).await
}

pub struct Paced {
    inner: Body,
    pacing: Pacing,
    start: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl Paced {
    pub fn new(inner: Body, pacing: Pacing) -> Paced {
        let start = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(start + pacing.grace));
        Paced { inner, pacing, start, received: 0, timer }
    }
}

/// When a body that has delivered `received` bytes falls behind the pace.
fn due(start: Instant, p: Pacing, received: u64) -> Instant {
    let secs = (received + 1) as f64 / p.min_rate.max(1) as f64;
    start + p.grace + Duration::from_secs_f64(secs.min(86_400.0 * 365.0))
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received += d.len() as u64;
                    let next = due(this.start, this.pacing, this.received);
                    this.timer.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(TooSlow {
                    rate: this.pacing.min_rate,
                    grace: this.pacing.grace,
                })))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;

    use super::*;

    fn trickle(every: Duration, count: usize) -> Body {
        let s = futures_util::stream::iter(0..count).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"x"))
        });
        Body::from_stream(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_cut_once_it_falls_behind_the_pace() {
        let p = Pacing { grace: Duration::from_secs(10), min_rate: 1024 };
        let t0 = Instant::now();
        let Err(err) = Paced::new(trickle(Duration::from_secs(5), 100), p).collect().await else {
            panic!("a body at one byte per 5 s was read whole");
        };
        assert!(err.to_string().contains("slower than 1024 bytes/s"), "{err}");
        // Two bytes by 10 s: due at 10 s + 3/1024 s.
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(10) && took < Duration::from_secs(11), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_pace_is_read_whole() {
        let p = Pacing { grace: Duration::from_secs(1), min_rate: 10 };
        // 20 bytes per second, for a minute.
        let body = Paced::new(trickle(Duration::from_millis(50), 1200), p).collect().await.expect("kept the pace");
        assert_eq!(body.to_bytes().len(), 1200);
    }
}
