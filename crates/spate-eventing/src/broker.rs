use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spate_api::BrokerConfig;
use spate_core::{CloudEvent, ExtValue, ext, rules, storage};
use spate_log::{EventLog, LogError};
use thiserror::Error;

use crate::feed::Feed;

/// Why an event could not enter a broker.
#[derive(Debug, Error)]
pub enum PublishError {
    #[error("event {id}: knativebrokerttl is {ttl}; the event has used up its hops")]
    TtlExhausted { id: String, ttl: i64 },
    #[error("event {id}: knativebrokerttl '{value}' is not an integer")]
    BadTtl { id: String, value: String },
    #[error("broker storage is full; retry shortly")]
    Full,
    #[error("broker storage unavailable: {0}")]
    Storage(String),
}

impl From<LogError> for PublishError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Full => PublishError::Full,
            other => PublishError::Storage(other.to_string()),
        }
    }
}

/// A running broker: its config, its log and its router.
pub struct Broker {
    pub config: BrokerConfig,
    pub log: Arc<dyn EventLog>,
    pub address: String,
    events_in: metrics::Counter,
    /// The log and its router, shared with this broker's trigger workers.
    pub feed: Arc<Feed>,
}

fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rules::format_rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

impl Broker {
    /// Creates the broker and starts its router (needs a Tokio runtime).
    pub fn new(config: BrokerConfig, log: Arc<dyn EventLog>, address: String) -> Self {
        let label = format!("{}/{}", config.namespace, config.name);
        let events_in = metrics::counter!("spate_events_in_total", "broker" => label.clone());
        let feed = Feed::new(log.clone(), label);
        Broker { config, log, address, events_in, feed }
    }

    /// Accepts events from outside: TTL defaults to 255, a TTL of 0 or less is
    /// rejected. Resolves once the events are durable in the log.
    pub async fn publish(&self, mut events: Vec<CloudEvent>) -> Result<(), PublishError> {
        for ev in &mut events {
            match ev.extension(ext::BROKER_TTL) {
                None => ev.set_extension(ext::BROKER_TTL, ExtValue::Integer(ext::DEFAULT_BROKER_TTL)),
                Some(v) => {
                    let ttl = ev.extension_i64(ext::BROKER_TTL).ok_or_else(|| PublishError::BadTtl {
                        id: ev.id.clone(),
                        value: v.to_canonical().into_owned(),
                    })?;
                    if ttl <= 0 {
                        return Err(PublishError::TtlExhausted { id: ev.id.clone(), ttl });
                    }
                }
            }
        }
        self.append(events).await
    }

    /// Stores events as they are, adding `knativearrivaltime`.
    pub(crate) async fn append(&self, events: Vec<CloudEvent>) -> Result<(), PublishError> {
        let now = now_rfc3339();
        let payloads: Vec<Bytes> = events
            .into_iter()
            .map(|mut ev| {
                ev.set_extension(ext::ARRIVAL_TIME, ExtValue::String(now.clone()));
                Bytes::from(storage::encode(&ev))
            })
            .collect();
        let n = payloads.len() as u64;
        self.log.append(payloads).await?;
        self.events_in.increment(n);
        Ok(())
    }
}
