//! The one dispatcher: everything Spate sends to an HTTP destination goes
//! through [`Dispatcher::deliver`] — subscriber attempts with retries and
//! backoff, replies, and dead letters.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _};
use spate_core::delivery::{DeliveryFormat, RetryPolicy, is_retryable_status, parse_retry_after};
use spate_core::{CloudEvent, ExtValue, ext, http_codec};

mod client;
mod tls;
pub mod trace;

pub use client::MAX_RESPONSE_BYTES;
pub use tls::TrustError;

/// Bearer tokens for Spate's own deliveries (sender identity, Knative's OIDC):
/// given the sender's label (`trigger/<ns>/<name>`) and the target URL, the
/// token to send, if the target needs one.
pub trait TokenSource: Send + Sync {
    fn token(&self, sender: &str, url: &str) -> Option<String>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a reply event goes. A failure to accept it fails the delivery
/// attempt, so the event is retried rather than the reply lost.
pub trait ReplySink: Send + Sync {
    fn accept(&self, reply: CloudEvent) -> BoxFuture<'_, Result<(), String>>;
}

/// Replies are discarded (Knative: a Subscription without `reply`).
pub struct DiscardReplies;

impl ReplySink for DiscardReplies {
    fn accept(&self, _reply: CloudEvent) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Retries the dead-letter sink gets at least, whatever the subscriber's
/// policy says (a policy with more retries applies as it is).
pub const DEAD_LETTER_MIN_RETRIES: u32 = 3;

/// What to deliver and how.
/// A destination URL parsed once, when the trigger, subscription or source is
/// set up, rather than on every attempt (parsing runs IDNA and allocates).
/// Reads as the text it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    text: String,
    /// The request target, or why the text is not one (every attempt then fails with it).
    uri: Result<http::Uri, String>,
}

impl ParsedUrl {
    pub fn new(text: impl Into<String>) -> ParsedUrl {
        let text = text.into();
        let uri = destination_uri(&text);
        ParsedUrl { text, uri }
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// An absolute `http://` or `https://` URL as a request target.
fn destination_uri(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("'{text}' is not a valid URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("'{text}' is not an absolute http:// or https:// URL")),
    }
}

impl From<String> for ParsedUrl {
    fn from(s: String) -> ParsedUrl {
        ParsedUrl::new(s)
    }
}

impl From<&str> for ParsedUrl {
    fn from(s: &str) -> ParsedUrl {
        ParsedUrl::new(s)
    }
}

impl std::ops::Deref for ParsedUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for ParsedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

pub struct DeliveryRequest<'a> {
    pub subscriber: &'a ParsedUrl,
    pub policy: &'a RetryPolicy,
    pub format: DeliveryFormat,
    pub namespace: &'a str,
    pub dead_letter_sink: Option<&'a ParsedUrl>,
    /// Metric label naming the sender (e.g. `trigger/default/t1`).
    pub label: &'a str,
    /// Counts each retry as it starts (`describe`'s live retries), not
    /// once the event's outcome is final: an event retried for an hour shows.
    pub retries: Option<&'a AtomicU64>,
    /// Attempts an earlier run already made at this event (its position
    /// recorded them): the retry budget and the backoff continue from there.
    pub spent: u32,
    /// Told the number of attempts made so far after each failed one that
    /// will be retried, so the caller can record it for a restart.
    pub on_retry: Option<&'a (dyn Fn(u32) + Send + Sync)>,
}

/// The result of one HTTP attempt.
#[derive(Debug, Clone)]
pub enum Attempt {
    Response {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    /// Connection error or timeout: no response.
    Failed {
        timeout: bool,
        message: String,
    },
}

impl Attempt {
    fn status(&self) -> Option<u16> {
        match self {
            Attempt::Response { status, .. } => Some(*status),
            Attempt::Failed { .. } => None,
        }
    }
    fn describe(&self) -> String {
        match self {
            Attempt::Response { status, .. } => format!("HTTP {status}"),
            Attempt::Failed { timeout: true, .. } => "timed out".into(),
            Attempt::Failed { message, .. } => message.clone(),
        }
    }
}

/// Final outcome of a delivery: the event's offset may be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The subscriber accepted it (and its reply, if any, was accepted).
    Delivered { attempts: u32 },
    /// Retries exhausted (or a non-retryable answer); the dead-letter sink took it.
    DeadLettered { attempts: u32, last_error: String },
    /// Retries exhausted with no dead-letter sink, or the sink failed too. Counted.
    Dropped { attempts: u32, reason: String },
}

/// Shared, pooled HTTP dispatcher. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    client: client::HttpClient,
    default_timeout: Duration,
    /// Extra CAs per `https://` authority (`CACerts`), shared by every clone.
    trust: std::sync::Arc<tls::Trust>,
    /// Set once at start when sender identity (OIDC) is on; shared by every clone.
    tokens: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn TokenSource>>>,
}

static TRACE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A W3C traceparent for an event that arrives without one, written straight
/// into a header value (no formatting machinery on every delivery).
fn new_traceparent() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let seq = TRACE_SEQ.fetch_add(1, Ordering::Relaxed);
    // The process id tells instances started in the same nanosecond apart; read once
    // (`std::process::id` is a getpid system call on every use).
    static PID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(|| u64::from(std::process::id()).rotate_left(32));
    let mut x = nanos ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pid;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // 00-<trace id: 32 hex>-<span id: 16 hex>-01
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let (trace_hi, trace_lo, span) = (next(), next(), next() | 1);
    for (at, word) in [(3, trace_hi), (19, trace_lo), (36, span)] {
        for i in 0..16 {
            out[at + i] = HEX[((word >> (60 - 4 * i)) & 15) as usize];
        }
    }
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new(Duration::from_secs(300))
    }
}

impl Dispatcher {
    /// `default_timeout` applies to attempts whose policy sets no timeout.
    pub fn new(default_timeout: Duration) -> Self {
        Dispatcher {
            client: tls::default_client(),
            default_timeout,
            trust: Default::default(),
            tokens: Default::default(),
        }
    }

    /// Every later delivery asks `tokens` for a bearer token (once; later calls are ignored).
    pub fn set_token_source(&self, tokens: std::sync::Arc<dyn TokenSource>) {
        let _ = self.tokens.set(tokens);
    }

    /// Trusts, for each `https://` authority, the CA certificates the
    /// manifests name for it (`CACerts`) besides the system roots; replaces
    /// what was trusted before. Returns the bundles that could not be used.
    pub fn set_trust(&self, cas: Vec<(String, String)>) -> Vec<TrustError> {
        self.trust.set(cas)
    }

    /// One POST of `ev` to `url`.
    pub async fn send_once(
        &self,
        ev: &CloudEvent,
        sender: &str,
        url: &ParsedUrl,
        format: DeliveryFormat,
        namespace: &str,
        timeout: Option<Duration>,
    ) -> Attempt {
        self.send_traced(ev, sender, url, format, namespace, timeout, None).await
    }

    /// [`Dispatcher::send_once`], with the `traceparent` header of the attempt's span (if traced).
    #[allow(clippy::too_many_arguments)]
    async fn send_traced(
        &self,
        ev: &CloudEvent,
        sender: &str,
        url: &ParsedUrl,
        format: DeliveryFormat,
        namespace: &str,
        timeout: Option<Duration>,
        traceparent: Option<String>,
    ) -> Attempt {
        // Sized for the context attributes, the extensions and the headers added
        // below, so that building it does not grow (and re-hash) it several times.
        let Ok(mut headers) = HeaderMap::try_with_capacity(12 + ev.extensions.len()) else {
            // Only an event stored before the bound on extensions could be this large.
            let message = format!("the event has {} extension attributes, too many for a request", ev.extensions.len());
            return Attempt::Failed { timeout: false, message };
        };
        let body = match format {
            DeliveryFormat::Binary => http_codec::encode_binary(ev, &mut headers),
            DeliveryFormat::Json => http_codec::encode_structured(ev, &mut headers),
        };
        headers.insert("prefer", HeaderValue::from_static("reply"));
        if let Ok(v) = HeaderValue::from_str(namespace) {
            headers.insert("kn-namespace", v);
        }
        let tp = match (traceparent, ev.extension(ext::TRACEPARENT)) {
            (Some(tp), _) => HeaderValue::from_str(&tp).ok(),
            (None, Some(ExtValue::String(s))) => HeaderValue::from_str(s).ok(),
            _ => Some(new_traceparent()),
        };
        if let Some(v) = tp {
            headers.insert("traceparent", v);
        }
        if let Some(token) = self.tokens.get().and_then(|t| t.token(sender, url.as_str()))
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            v.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, v);
        }
        let uri = match &url.uri {
            Ok(uri) => uri,
            Err(why) => return Attempt::Failed { timeout: false, message: why.clone() },
        };
        let trusted = self.trust.client_for(url.as_str());
        let client = trusted.as_ref().unwrap_or(&self.client);
        client.post(uri, headers, body, timeout.unwrap_or(self.default_timeout)).await
    }

    /// Delivers with retries, reply handling and dead-lettering, returning the
    /// final outcome. Waits between attempts are timers: other events of the
    /// same worker proceed meanwhile.
    pub async fn deliver(&self, ev: &CloudEvent, req: &DeliveryRequest<'_>, replies: &dyn ReplySink) -> Outcome {
        let (attempts, last) = match self.attempts(ev, req.subscriber, req, Some(replies)).await {
            Ok(attempts) => return Outcome::Delivered { attempts },
            Err(x) => x,
        };
        metrics::counter!("spate_delivery_failures_total", "sender" => req.label.to_string()).increment(1);
        let Some(dls) = req.dead_letter_sink else {
            metrics::counter!("spate_events_dropped_total", "sender" => req.label.to_string(), "reason" => "no_dead_letter_sink").increment(1);
            return Outcome::Dropped {
                attempts,
                reason: format!("{} after {attempts} attempt(s) and no dead-letter sink", last.describe()),
            };
        };
        let mut dead = ev.clone();
        dead.set_extension(ext::ERROR_DEST, ExtValue::String(req.subscriber.as_str().to_string()));
        if let Attempt::Response { status, body, .. } = &last {
            dead.set_extension(ext::ERROR_CODE, ExtValue::String(status.to_string()));
            if !body.is_empty() {
                let n = body.len().min(1024);
                dead.set_extension(
                    ext::ERROR_DATA,
                    ExtValue::String(base64::engine::general_purpose::STANDARD.encode(&body[..n])),
                );
            }
        }
        // The dead-letter sink gets the subscriber's policy, with at least
        // DEAD_LETTER_MIN_RETRIES retries: one failed try must not drop an event.
        let mut dls_policy = req.policy.clone();
        dls_policy.retry = dls_policy.retry.max(DEAD_LETTER_MIN_RETRIES);
        let dls_req = DeliveryRequest { policy: &dls_policy, spent: 0, on_retry: None, ..*req };
        let span = trace::enabled().then(|| {
            let attrs = vec![KeyValue::new("error.type", last.describe())];
            trace::start(format!("dead-letter {}", req.label), SpanKind::Internal, &trace::context_of(ev), attrs)
        });
        let outcome = self.attempts(&dead, dls, &dls_req, None).await;
        if let Some(mut span) = span {
            span.end();
        }
        match outcome {
            Ok(_) => {
                metrics::counter!("spate_dead_letters_total", "sender" => req.label.to_string()).increment(1);
                Outcome::DeadLettered { attempts, last_error: last.describe() }
            }
            Err((_, dls_err)) => {
                metrics::counter!("spate_events_dropped_total", "sender" => req.label.to_string(), "reason" => "dead_letter_sink_failed").increment(1);
                Outcome::Dropped {
                    attempts,
                    reason: format!("subscriber: {}; dead-letter sink: {}", last.describe(), dls_err.describe()),
                }
            }
        }
    }

    /// Attempts until success, a non-retryable answer, or retries run out.
    async fn attempts(
        &self,
        ev: &CloudEvent,
        url: &ParsedUrl,
        req: &DeliveryRequest<'_>,
        replies: Option<&dyn ReplySink>,
    ) -> Result<u32, (u32, Attempt)> {
        let policy = req.policy;
        let mut attempt_no = req.spent;
        loop {
            attempt_no += 1;
            let span = trace::enabled().then(|| attempt_span(ev, req.label, url, attempt_no));
            let sc = span.as_ref().map(|s| s.span_context().clone());
            let tp = sc.as_ref().map(trace::traceparent);
            let a = self.send_traced(ev, req.label, url, req.format, req.namespace, policy.timeout, tp).await;
            if let Some(mut span) = span {
                end_attempt(&mut span, &a);
            }
            let (retryable, a) = match a {
                Attempt::Response { status, headers, body } if (200..300).contains(&status) => {
                    let Some(replies) = replies else {
                        return Ok(attempt_no);
                    };
                    match reply_event(status, &headers, body.clone()) {
                        None => return Ok(attempt_no),
                        Some(reply) => match accept_reply(replies, reply, sc.as_ref(), req.label).await {
                            Ok(()) => return Ok(attempt_no),
                            Err(e) => {
                                tracing::warn!(sender = req.label, error = %e, "reply could not be stored; retrying the delivery");
                                (true, Attempt::Failed { timeout: false, message: format!("reply not stored: {e}") })
                            }
                        },
                    }
                }
                Attempt::Response { status, headers, body } => {
                    (is_retryable_status(status), Attempt::Response { status, headers, body })
                }
                failed @ Attempt::Failed { .. } => (true, failed),
            };
            if !retryable || attempt_no > policy.retry {
                return Err((attempt_no, a));
            }
            metrics::counter!("spate_delivery_retries_total", "sender" => req.label.to_string()).increment(1);
            if let Some(r) = req.retries {
                r.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(record) = req.on_retry {
                record(attempt_no);
            }
            let retry_after = match &a {
                Attempt::Response { headers, .. } => {
                    headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| {
                        parse_retry_after(
                            v,
                            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0),
                        )
                    })
                }
                Attempt::Failed { .. } => None,
            };
            let wait = policy.wait_before_retry(attempt_no, a.status(), retry_after);
            tracing::debug!(sender = req.label, target = url.as_str(), attempt = attempt_no, outcome = %a.describe(), wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The client span of one delivery attempt, under the event's context.
fn attempt_span(ev: &CloudEvent, label: &str, url: &ParsedUrl, attempt: u32) -> trace::Span {
    trace::start(
        format!("deliver {label}"),
        SpanKind::Client,
        &trace::context_of(ev),
        vec![
            KeyValue::new("url.full", url.as_str().to_string()),
            KeyValue::new("spate.attempt", i64::from(attempt)),
            KeyValue::new("cloudevents.event_id", ev.id.clone()),
            KeyValue::new("cloudevents.event_type", ev.ty.clone()),
        ],
    )
}

fn end_attempt(span: &mut trace::Span, a: &Attempt) {
    match a {
        Attempt::Response { status, .. } => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(*status)));
            if *status >= 400 {
                span.set_status(opentelemetry::trace::Status::error(format!("HTTP {status}")));
            }
        }
        Attempt::Failed { message, .. } => span.set_status(opentelemetry::trace::Status::error(message.clone())),
    }
    span.end();
}

/// Hands a reply on; traced, it continues the attempt's trace (unless it carries its own)
/// under a `reply` span.
async fn accept_reply(
    replies: &dyn ReplySink,
    mut reply: CloudEvent,
    attempt: Option<&opentelemetry::trace::SpanContext>,
    label: &str,
) -> Result<(), String> {
    let Some(sc) = attempt else { return replies.accept(reply).await };
    trace::adopt(&mut reply, sc);
    let parent = opentelemetry::Context::new().with_remote_span_context(sc.clone());
    let attrs = vec![KeyValue::new("cloudevents.event_id", reply.id.clone())];
    let mut span = trace::start(format!("reply {label}"), SpanKind::Internal, &parent, attrs);
    let r = replies.accept(reply).await;
    if let Err(e) = &r {
        span.set_status(opentelemetry::trace::Status::error(e.clone()));
    }
    span.end();
    r
}

/// A reply is a 2xx other than 202/204 whose body is a CloudEvent. Anything
/// else (no event, a malformed event) is discarded.
fn reply_event(status: u16, headers: &HeaderMap, body: Bytes) -> Option<CloudEvent> {
    if status == 202 || status == 204 {
        return None;
    }
    let is_event = headers.contains_key("ce-specversion")
        || headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("application/cloudevents"));
    if !is_event {
        return None;
    }
    match http_codec::decode(headers, body) {
        Ok(d) if d.events.len() == 1 => d.events.into_iter().next(),
        Ok(_) => {
            metrics::counter!("spate_replies_discarded_total", "reason" => "batch").increment(1);
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "subscriber replied with a malformed CloudEvent; reply discarded");
            metrics::counter!("spate_replies_discarded_total", "reason" => "malformed").increment(1);
            None
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_traceparent_is_w3c_shaped_and_new_each_time() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert_ne!(a, b);
        for v in [a, b] {
            let s = v.to_str().expect("ASCII");
            let parts: Vec<&str> = s.split('-').collect();
            assert_eq!(parts.len(), 4, "{s}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1].len(), 32, "{s}");
            assert_eq!(parts[2].len(), 16, "{s}");
            assert_eq!(parts[3], "01");
            assert!(parts[1].bytes().chain(parts[2].bytes()).all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            // The span id has its low bit set, so it is never the all-zero (invalid) id.
            assert_ne!(u64::from_str_radix(parts[2], 16).expect("hex") & 1, 0);
            // Its trace id's first half is not left as the template's zeros.
            assert_ne!(parts[1], "00000000000000000000000000000000");
        }
    }
}
