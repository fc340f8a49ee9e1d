//! The data plane: `POST /<namespace>/<broker>` with Knative's status codes.

mod display;
mod functions;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use spate_core::CloudEvent;
use spate_eventing::{Eventing, PublishError};

use crate::data_auth::{Refusal, Target};

#[derive(Clone)]
pub struct Ingress {
    pub eventing: Arc<Eventing>,
    pub max_event_size: usize,
    /// KafkaSinks: addressables that write into Kafka topics.
    pub kafka_sinks: Arc<spate_sources::kafka_sink::KafkaSinks>,
    /// Sender identity and EventPolicies (`--oidc-issuer`), when on.
    pub auth: Option<Arc<crate::data_auth::DataAuth>>,
}

/// Why a request to an addressable was refused, and its HTTP status: the one
/// place data-plane statuses are decided.
#[derive(Debug)]
pub enum IngressError {
    MethodNotAllowed,
    NoSuchBroker(String),
    NoSuchChannel(String),
    NoSuchKafkaSink(String),
    /// Kafka did not acknowledge the record.
    Kafka(String),
    /// No valid token for this addressable's audience (401).
    Unauthenticated(String),
    /// The sender is valid but no EventPolicy lets it send this here (403).
    Forbidden(String),
    TooLarge(usize),
    /// The body came slower than `--min-body-rate` (408; the connection closes).
    TooSlow(String),
    Malformed(String),
    Publish(PublishError),
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let allow = [(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"))];
        match self {
            IngressError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, allow, "only POST delivers events here\n").into_response()
            }
            IngressError::NoSuchBroker(b) => (StatusCode::NOT_FOUND, format!("no broker {b}\n")).into_response(),
            IngressError::NoSuchChannel(c) => (StatusCode::NOT_FOUND, format!("no channel {c}\n")).into_response(),
            IngressError::NoSuchKafkaSink(k) => (StatusCode::NOT_FOUND, format!("no KafkaSink {k}\n")).into_response(),
            IngressError::Unauthenticated(e) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                format!("{e}\n"),
            )
                .into_response(),
            IngressError::Forbidden(e) => (StatusCode::FORBIDDEN, format!("{e}\n")).into_response(),
            IngressError::Kafka(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
                format!("Kafka did not acknowledge the event: {e}\n"),
            )
                .into_response(),
            IngressError::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds the {max}-byte limit (--max-event-size)\n"),
            )
                .into_response(),
            IngressError::TooSlow(reason) => (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                format!("{reason}\n"),
            )
                .into_response(),
            IngressError::Malformed(reason) => (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response(),
            IngressError::Publish(e @ (PublishError::TtlExhausted { .. } | PublishError::BadTtl { .. })) => {
                (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
            }
            IngressError::Publish(e @ PublishError::Full) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                format!("{e}\n"),
            )
                .into_response(),
            IngressError::Publish(e @ PublishError::Storage(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
                format!("{e}\n"),
            )
                .into_response(),
        }
    }
}

pub fn router(state: Ingress) -> Router {
    let helpers = Router::new()
        .route("/_spate/display/{label}", any(display::handler))
        .nest("/_spate/fn", functions::router(state.max_event_size))
        .layer(axum::middleware::from_fn_with_state(state.clone(), helper_guard));
    Router::new()
        .merge(helpers)
        .route("/{namespace}/{broker}", any(broker_ingress))
        .route("/channels/{namespace}/{channel}", any(channel_ingress))
        .route("/kafkasinks/{namespace}/{name}", any(kafka_sink_ingress))
        .with_state(state)
}

/// The built-in helpers follow the data plane's authentication: with
/// `--oidc-issuer` set, a caller needs a valid token for the helper's audience.
async fn helper_guard(
    State(st): State<Ingress>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(auth) = &st.auth
        && let Some((kind, name)) = crate::data_auth::helper_of(req.uri().path())
    {
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(Refusal::Unauthenticated(e) | Refusal::Forbidden(e)) = auth.check_helper(kind, name, authorization) {
            return IngressError::Unauthenticated(e).into_response();
        }
    }
    next.run(req).await
}

/// Reads a body of at most `max` bytes, refusing early on a declared length.
pub async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<bytes::Bytes, IngressError> {
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok())
        && len > max
    {
        return Err(IngressError::TooLarge(max));
    }
    to_bytes(body, max).await.map_err(|e| body_error(e, max))
}

/// Over the limit is 413; anything else (bad chunked encoding, a connection
/// cut mid-body) is a malformed request, 400, with the reason.
fn body_error(e: axum::Error, max: usize) -> IngressError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return IngressError::TooLarge(max);
        }
        if let Some(slow) = err.downcast_ref::<crate::listener::body::TooSlow>() {
            return IngressError::TooSlow(slow.to_string());
        }
        source = err.source();
    }
    IngressError::Malformed(format!("the request body could not be read: {e}"))
}

/// Any path no route serves, on either listener: 404 with a body that says
/// where things are (instead of an empty 404).
pub async fn no_route(method: Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "nothing is served at {method} {}: brokers are at /<namespace>/<broker>, channels at \
             /channels/<namespace>/<name>, KafkaSinks at /kafkasinks/<namespace>/<name>, the admin API at /apis/...; `spate get KIND NAME -o json` shows an \
             addressable's status.address.url\n",
            uri.path()
        ),
    )
        .into_response()
}

async fn broker_ingress(
    State(st): State<Ingress>,
    method: Method,
    Path((namespace, broker)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(&st, method, &namespace, &broker, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn channel_ingress(
    State(st): State<Ingress>,
    method: Method,
    Path((namespace, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        if let Some(r) = preflight(&method)? {
            return Ok(r);
        }
        let ch = st
            .eventing
            .channel(&namespace, &channel)
            .ok_or_else(|| IngressError::NoSuchChannel(format!("{namespace}/{channel}")))?;
        let events = admitted_events(&st, Target::Channel, &namespace, &channel, &headers, body).await?;
        ch.publish(events).await.map_err(IngressError::Publish)?;
        Ok(StatusCode::ACCEPTED.into_response())
    };
    r.await.unwrap_or_else(IngressError::into_response)
}

/// A KafkaSink: 202 once Kafka acknowledged every event of the request
/// (`acks=all`), in order; 503 with Retry-After when it did not.
async fn kafka_sink_ingress(
    State(st): State<Ingress>,
    method: Method,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        if let Some(r) = preflight(&method)? {
            return Ok(r);
        }
        let sink = st
            .kafka_sinks
            .get(&namespace, &name)
            .ok_or_else(|| IngressError::NoSuchKafkaSink(format!("{namespace}/{name}")))?;
        let events = admitted_events(&st, Target::KafkaSink, &namespace, &name, &headers, body).await?;
        for ev in &events {
            sink.produce(ev).await.map_err(IngressError::Kafka)?;
        }
        Ok(StatusCode::ACCEPTED.into_response())
    };
    r.await.unwrap_or_else(IngressError::into_response)
}

/// The request's events, read within the size limit and decoded strictly, once
/// the sender may send them to this addressable.
async fn admitted_events(
    st: &Ingress,
    target: Target,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<CloudEvent>, IngressError> {
    let label = match target {
        Target::Broker => "broker",
        Target::Channel => "channel",
        Target::KafkaSink => "KafkaSink",
    };
    let mut events = read_events(st, headers, body, &format!("{label} {namespace}/{name}")).await?;
    authorize(st, target, namespace, name, headers, &events)?;
    adopt_http_trace_context(headers, &mut events);
    Ok(events)
}

/// Traced: an event without a `traceparent` extension continues the request's
/// W3C trace context (the `traceparent` header), so the producer's trace goes on.
fn adopt_http_trace_context(headers: &HeaderMap, events: &mut [CloudEvent]) {
    if !spate_delivery::trace::enabled() {
        return;
    }
    let Some(sc) =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(spate_delivery::trace::parse_traceparent)
    else {
        return;
    };
    for ev in events {
        spate_delivery::trace::adopt(ev, &sc);
    }
}

/// With sender identity on: a valid token for the addressable (401), from a
/// subject some EventPolicy (or the default mode) allows (403).
fn authorize(
    st: &Ingress,
    target: Target,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    events: &[CloudEvent],
) -> Result<(), IngressError> {
    let Some(auth) = &st.auth else { return Ok(()) };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    auth.check(target, namespace, name, authorization, events).map_err(|r| match r {
        Refusal::Unauthenticated(e) => IngressError::Unauthenticated(e),
        Refusal::Forbidden(e) => IngressError::Forbidden(e),
    })
}

/// OPTIONS answers with `Allow`; anything but POST is 405.
fn preflight(method: &Method) -> Result<Option<Response>, IngressError> {
    if method == Method::OPTIONS {
        return Ok(Some(
            (StatusCode::OK, [(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"))]).into_response(),
        ));
    }
    if method != Method::POST {
        return Err(IngressError::MethodNotAllowed);
    }
    Ok(None)
}

async fn accept(
    st: &Ingress,
    method: Method,
    namespace: &str,
    broker: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngressError> {
    if let Some(r) = preflight(&method)? {
        return Ok(r);
    }
    let b = st
        .eventing
        .broker(namespace, broker)
        .ok_or_else(|| IngressError::NoSuchBroker(format!("{namespace}/{broker}")))?;
    let events = admitted_events(st, Target::Broker, namespace, broker, &headers, body).await?;
    b.publish(events).await.map_err(IngressError::Publish)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The events of a request to an addressable: body limit, strict decoding,
/// and a warning for attribute names past CloudEvents' recommended 20 characters.
async fn read_events(
    st: &Ingress,
    headers: &HeaderMap,
    body: Body,
    target: &str,
) -> Result<Vec<CloudEvent>, IngressError> {
    let body = read_body(headers, body, st.max_event_size).await?;
    let decoded = spate_core::http_codec::decode(headers, body).map_err(|e| IngressError::Malformed(e.to_string()))?;
    for ev in &decoded.events {
        for name in ev.long_attribute_names() {
            tracing::warn!(%target, attribute = name, "attribute name is longer than the 20 characters CloudEvents recommends");
        }
    }
    Ok(decoded.events)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spate_api::{Compiled, admit_text};
    use spate_delivery::Dispatcher;
    use spate_eventing::{Desired, Eventing, EventingConfig};
    use spate_log::{FileBackend, FileLogConfig, LogBackend};

    use super::*;

    /// Storage that cannot take the event answers 503 with Retry-After, on a real socket.
    #[tokio::test]
    async fn storage_unavailable_is_503_with_retry_after() {
        let tmp = tempfile::tempdir().unwrap();
        let backend = Arc::new(FileBackend::new(tmp.path(), FileLogConfig::default()));
        let eventing = Arc::new(Eventing::new(
            EventingConfig::default(),
            backend.clone() as Arc<dyn LogBackend>,
            Dispatcher::default(),
        ));
        let Compiled::Broker(b) =
            admit_text("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n").unwrap().remove(0).1
        else {
            unreachable!()
        };
        eventing.reconcile(&Desired { brokers: vec![b], ..Desired::default() }).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/default/b", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(
                listener,
                router(Ingress { eventing, max_event_size: 1 << 20, kafka_sinks: Default::default(), auth: None }),
            )
            .await
            .unwrap()
        });
        let send = || {
            reqwest::Client::new()
                .post(&url)
                .header("ce-specversion", "1.0")
                .header("ce-id", "1")
                .header("ce-source", "/s")
                .header("ce-type", "t")
                .send()
        };
        assert_eq!(send().await.unwrap().status(), 202);
        backend.close_all();
        let r = send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        assert!(r.text().await.unwrap().contains("storage unavailable"));
    }
}
