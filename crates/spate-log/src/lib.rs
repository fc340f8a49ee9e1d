//! Spate's storage seams and their backends.
//!
//! - `EventLog`: the embedded, single-writer log (file or memory). Records have
//!   dense offsets starting at 0; named consumers commit an offset plus the
//!   acknowledged ranges above it (`AckState`).
//! - `MessageStream` (`stream.rs`): a shared engine's stream (NATS JetStream),
//!   written by many instances. It promises no offsets at all: consumers hand out
//!   messages, each acknowledged, nacked or kept "in progress".
//! - `ConfigStore` (`config_store.rs`): where resources live, with compare-and-swap
//!   writes and a watch.
//!
//! See ARCHITECTURE.md for how each maps onto the engines.

pub mod config_store;
mod crc;
mod error;
pub mod file;
pub mod memory;
pub mod nats;
pub mod stream;
pub mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use config_store::{Change, ConfigError, ConfigStore, NatsConfigStore, Versioned};
pub use error::LogError;
pub use file::{FileBackend, FileLogConfig, FsyncPolicy, Retention};
pub use memory::{MemoryBackend, MemoryLog};
pub use nats::{Nats, NatsBackend, NatsConfig};
pub use spate_core::acks::{self, AckState, AckTracker};
pub use stream::{Acker, ConsumerOptions, Message, MessageStream, StreamBackend, StreamConsumer};
pub use throttle::Throttle;

/// Position of a record in a log. Dense: the record after offset `n` is `n + 1`.
pub type Offset = u64;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    /// Milliseconds since the Unix epoch when the record was appended.
    pub timestamp_ms: i64,
    pub payload: Bytes,
}

/// One durable, ordered log (a Broker's or a Channel's).
pub trait EventLog: Send + Sync + 'static {
    /// Appends records in order and returns the offset of the first. The future
    /// resolves once the records are as durable as the log's policy promises;
    /// only then do readers see them. `LogError::Full` means back off and retry.
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Offset, LogError>>;
    /// Up to `max` records starting at `from` (or at the earliest retained
    /// offset if `from` was removed by retention). Empty when `from` is the end.
    fn read(&self, from: Offset, max: usize) -> BoxFuture<'_, Result<Vec<Record>, LogError>>;
    /// The next offset to be assigned to a visible record.
    fn end_offset(&self) -> Offset;
    /// The earliest offset still retained.
    fn start_offset(&self) -> Offset;
    /// Changes whenever `end_offset` grows; readers await it to tail the log.
    fn watch_end(&self) -> tokio::sync::watch::Receiver<Offset>;
    /// Records that `consumer` is done with every offset below `next`.
    fn commit(&self, consumer: &str, next: Offset) -> Result<(), LogError>;
    /// The consumer's committed offset, `None` if it never committed.
    fn committed(&self, consumer: &str) -> Option<Offset>;
    /// Records the consumer's committed offset *and* the acknowledged ranges
    /// above it, so a restart skips them. Backends without ranges keep the offset.
    fn commit_state(&self, consumer: &str, state: &AckState) -> Result<(), LogError> {
        self.commit(consumer, state.committed)
    }
    /// The consumer's full position; `None` if it never committed.
    fn committed_state(&self, consumer: &str) -> Option<AckState> {
        self.committed(consumer).map(AckState::at)
    }
    /// Forgets a consumer (its trigger was deleted); retention no longer waits for it.
    fn remove_consumer(&self, consumer: &str) -> Result<(), LogError>;
}

/// Opens logs by name. One per storage backend.
pub trait LogBackend: Send + Sync + 'static {
    fn open(&self, name: &str) -> Result<Arc<dyn EventLog>, LogError>;
    /// Deletes a log and its consumers' offsets.
    fn remove(&self, name: &str) -> Result<(), LogError>;
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
