use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _};
use spate_delivery::trace;

use bytes::Bytes;
use spate_api::BrokerConfig;
use spate_core::{CloudEvent, ExtValue, ext, rules, storage};
use spate_log::{EventLog, LogError, MessageStream};
use thiserror::Error;

use crate::feed::Feed;

/// Why an event could not enter a broker.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("event {id}: knativebrokerttl is {ttl}; the event has used up its hops")]
    TtlExhausted { id: String, ttl: i64 },
    #[error("event {id}: knativebrokerttl '{value}' is not a 32-bit integer")]
    BadTtl { id: String, value: String },
    #[error("broker storage is full; retry shortly")]
    Full,
    #[error("broker storage unavailable: {0}")]
    Storage(String),
}

/// One storage-error line per 10 s, however many appends fail (a full disk fails them all).
static STORAGE_ERRORS: spate_log::Throttle = spate_log::Throttle::new(std::time::Duration::from_secs(10));

impl From<LogError> for PublishError {
    /// The sender sees the reason without local details (no data-dir path);
    /// the full error goes to the log, rate-limited.
    fn from(e: LogError) -> Self {
        match e {
            LogError::Full => PublishError::Full,
            other => {
                if let Some(suppressed) = STORAGE_ERRORS.allow() {
                    tracing::error!(error = %other, suppressed, "broker storage unavailable; senders get 503 with Retry-After");
                }
                PublishError::Storage(other.public_reason())
            }
        }
    }
}

/// Where a broker keeps its events: the embedded log (read once by its
/// router) or a shared engine's stream (each trigger a durable consumer).
pub enum Storage {
    Log { log: Arc<dyn EventLog>, feed: Arc<Feed> },
    Stream(Arc<dyn MessageStream>),
}

/// A running broker: its config and its storage.
pub struct Broker {
    pub config: BrokerConfig,
    pub address: String,
    events_in: metrics::Counter,
    pub storage: Storage,
    /// `spate tail`'s listeners.
    tap: Option<crate::tap::Tap>,
    /// What its engine was opened with (a Kafka broker's ConfigMap data and topic).
    pub settings: spate_log::StreamSettings,
    /// The engine it runs on (its class's, or its channel template's).
    pub engine: spate_api::Engine,
}

impl Broker {
    /// Creates the broker on the embedded log and starts its router (needs a Tokio runtime).
    pub fn new(config: BrokerConfig, log: Arc<dyn EventLog>, address: String) -> Self {
        let label = format!("{}/{}", config.namespace, config.name);
        let events_in = metrics::counter!("spate_events_in_total", "broker" => label.clone());
        let feed = Feed::new(log.clone(), label);
        Broker {
            config,
            address,
            events_in,
            storage: Storage::Log { log, feed },
            tap: None,
            settings: Default::default(),
            engine: spate_api::Engine::EmbeddedLog,
        }
    }

    /// Creates the broker on a shared engine's stream.
    pub fn on_stream(config: BrokerConfig, stream: Arc<dyn MessageStream>, address: String) -> Self {
        let label = format!("{}/{}", config.namespace, config.name);
        let events_in = metrics::counter!("spate_events_in_total", "broker" => label);
        Broker {
            config,
            address,
            events_in,
            storage: Storage::Stream(stream),
            tap: None,
            settings: Default::default(),
            engine: spate_api::Engine::Nats,
        }
    }

    /// Records the engine its stream is on.
    pub fn with_engine(mut self, engine: spate_api::Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Records the settings its engine was opened with.
    pub fn with_settings(mut self, settings: spate_log::StreamSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The tap this broker offers its events to, if any (its triggers offer their outcomes).
    pub fn tap(&self) -> Option<&crate::tap::Tap> {
        self.tap.as_ref()
    }

    /// Offers every stored event to `tap`'s listeners.
    pub fn with_tap(mut self, tap: crate::tap::Tap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// The embedded log's feed, if the broker is on the embedded log.
    pub fn feed(&self) -> Option<&Arc<Feed>> {
        match &self.storage {
            Storage::Log { feed, .. } => Some(feed),
            Storage::Stream(_) => None,
        }
    }

    /// The engine's stream, if the broker is on one.
    pub fn stream(&self) -> Option<&Arc<dyn MessageStream>> {
        match &self.storage {
            Storage::Stream(s) => Some(s),
            Storage::Log { .. } => None,
        }
    }

    /// Accepts events from outside: TTL defaults to 255, a TTL of 0 or less is
    /// rejected. Resolves once the events are durable in the log.
    pub async fn publish(&self, mut events: Vec<CloudEvent>) -> Result<(), PublishError> {
        for ev in &mut events {
            match ev.extension(ext::BROKER_TTL) {
                None => ev.set_extension(ext::BROKER_TTL, ExtValue::Integer(ext::DEFAULT_BROKER_TTL)),
                Some(v) => {
                    // A CloudEvents Integer is 32-bit: anything else is malformed.
                    let ttl =
                        ev.extension_i64(ext::BROKER_TTL).filter(|t| i32::try_from(*t).is_ok()).ok_or_else(|| {
                            PublishError::BadTtl { id: ev.id.clone(), value: v.to_canonical().into_owned() }
                        })?;
                    if ttl <= 0 {
                        return Err(PublishError::TtlExhausted { id: ev.id.clone(), ttl });
                    }
                    // No sender may buy more hops than the default: loops stay bounded.
                    let ttl = ttl.min(i64::from(ext::DEFAULT_BROKER_TTL)) as i32;
                    ev.set_extension(ext::BROKER_TTL, ExtValue::Integer(ttl));
                }
            }
        }
        self.append(events).await
    }

    /// Stores events as they are, adding `knativearrivaltime`.
    pub(crate) async fn append(&self, mut events: Vec<CloudEvent>) -> Result<(), PublishError> {
        let spans = trace::enabled().then(|| self.ingress_spans(&mut events));
        let result = self.store(events).await;
        for (mut ingress, mut append) in spans.into_iter().flatten() {
            if let Err(e) = &result {
                append.set_status(opentelemetry::trace::Status::error(e.to_string()));
            }
            append.end();
            ingress.end();
        }
        result
    }

    /// Per event: the broker's ingress span (under the producer's `traceparent`, which an
    /// event without one gets from this span) and, under it, the span of storing it.
    fn ingress_spans(&self, events: &mut [CloudEvent]) -> Vec<(trace::Span, trace::Span)> {
        let target = format!("broker/{}/{}", self.config.namespace, self.config.name);
        events
            .iter_mut()
            .map(|ev| {
                let attrs = vec![
                    KeyValue::new("cloudevents.event_id", ev.id.clone()),
                    KeyValue::new("cloudevents.event_type", ev.ty.clone()),
                ];
                let ingress =
                    trace::start(format!("ingress {target}"), SpanKind::Server, &trace::context_of(ev), attrs);
                let sc = ingress.span_context().clone();
                trace::adopt(ev, &sc);
                let parent = opentelemetry::Context::new().with_remote_span_context(sc);
                let append = trace::start(format!("append {target}"), SpanKind::Internal, &parent, vec![]);
                (ingress, append)
            })
            .collect()
    }

    async fn store(&self, events: Vec<CloudEvent>) -> Result<(), PublishError> {
        let now = rules::now_rfc3339();
        let n = events.len() as u64;
        let stamp = |mut ev: CloudEvent| {
            ev.set_extension(ext::ARRIVAL_TIME, ExtValue::String(now.clone()));
            ev
        };
        let tapped =
            self.tap.as_ref().filter(|t| t.active()).map(|_| events.iter().cloned().map(stamp).collect::<Vec<_>>());
        let (ns, name) = (&self.config.namespace, &self.config.name);
        let new_types = self.tap.as_ref().map(|t| t.types.pending("Broker", ns, name, &events));
        match &self.storage {
            Storage::Log { log, .. } => {
                let payloads = events.into_iter().map(|ev| Bytes::from(storage::encode(&stamp(ev)))).collect();
                log.append(payloads).await?;
            }
            Storage::Stream(stream) => {
                // Each with its de-duplication id: a sender's retry of the same
                // event (same source and id) is stored once within the window.
                let payloads = events
                    .into_iter()
                    .map(|ev| {
                        let ev = stamp(ev);
                        (Bytes::from(storage::encode(&ev)), format!("{} {}", ev.source, ev.id))
                    })
                    .collect();
                stream.publish(payloads).await?;
            }
        }
        self.events_in.increment(n);
        if let (Some(tap), Some(new_types)) = (&self.tap, new_types) {
            tap.types.record(new_types);
        }
        if let (Some(tap), Some(events)) = (&self.tap, tapped) {
            tap.offer(&format!("broker/{}/{}", self.config.namespace, self.config.name), events);
        }
        Ok(())
    }
}
