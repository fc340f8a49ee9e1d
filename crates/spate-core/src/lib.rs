//! Spate's pure core: the CloudEvent model, the strict HTTP/JSON codec and the
//! storage encoding used by the log. This crate does no IO.

pub mod acks;
pub mod delivery;
pub mod destination;
pub mod error;
pub mod event;
pub mod http_codec;
pub mod json;
mod json_members;
pub mod kafka_binding;
pub mod percent;
pub mod rules;
pub mod storage;

pub use destination::{Destination, KRef};
pub use error::CodecError;
pub use event::{CloudEvent, ExtValue, SpecVersion};
pub use http_codec::{ContentMode, Decoded};

/// Extension names Spate's data plane reads or writes (Knative's names).
pub mod ext {
    /// Time the broker accepted the event (RFC 3339).
    pub const ARRIVAL_TIME: &str = "knativearrivaltime";
    /// Remaining hops for replies re-entering a broker.
    pub const BROKER_TTL: &str = "knativebrokerttl";
    /// Dead-letter extensions.
    pub const ERROR_DEST: &str = "knativeerrordest";
    pub const ERROR_CODE: &str = "knativeerrorcode";
    pub const ERROR_DATA: &str = "knativeerrordata";
    /// W3C trace context carried by the distributed-tracing extension.
    pub const TRACEPARENT: &str = "traceparent";
    /// Initial TTL Knative gives an event entering a broker.
    pub const DEFAULT_BROKER_TTL: i32 = 255;
}
