//! Spate's storage seams and their backends.
//!
//! - `EventLog`: the embedded, single-writer log (file or memory). Records have
//!   dense offsets starting at 0; named consumers commit an offset plus the
//!   acknowledged ranges above it (`AckState`).
//! - `MessageStream` (`stream.rs`): a shared engine's stream (NATS JetStream),
//!   written by many instances. It promises no offsets at all: consumers hand out
//!   messages, each acknowledged, nacked or kept "in progress".
//!   Kafka (`kafka.rs`) and RabbitMQ (`rabbit.rs`) implement it too.
//! - `ConfigStore` (`config_store.rs`): where resources live, with compare-and-swap
//!   writes and a watch.
//!
//! See ARCHITECTURE.md for how each maps onto the engines.

pub mod config_store;
mod crc;
mod error;
pub mod file;
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod rabbit;
pub mod stream;
pub mod throttle;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use config_store::{Change, ConfigError, ConfigStore, NatsConfigStore, Versioned};
pub use error::LogError;
pub use file::{FileBackend, FileLogConfig, FsyncPolicy, Retention};
pub use kafka::{KafkaBackend, KafkaConfig};
pub use memory::{MemoryBackend, MemoryLog};
pub use nats::{Nats, NatsBackend, NatsConfig};
pub use rabbit::{RabbitBackend, RabbitConfig};
pub use spate_core::acks::{self, AckState, AckTracker};
pub use stream::{Acker, ConsumerOptions, Message, MessageStream, StreamBackend, StreamConsumer, StreamSettings};
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
    /// Records the consumer's committed offset *and* the acknowledged ranges
    /// above it, so a restart skips them. The position is visible to
    /// `committed_state` at once; the future resolves once it is written (the
    /// file log writes it off the runtime, coalescing a burst of commits into
    /// one positioned write), so a caller knows what a crash would find: a
    /// trigger worker counts finished deliveries against its in-flight bound
    /// until then. An error reports a failed write of this position or of an
    /// earlier one: committing again retries it.
    fn commit_state(&self, consumer: &str, state: AckState) -> BoxFuture<'_, Result<(), LogError>>;
    /// Records that `consumer` is done with every offset below `next`.
    fn commit(&self, consumer: &str, next: Offset) -> BoxFuture<'_, Result<(), LogError>> {
        self.commit_state(consumer, AckState::at(next))
    }
    /// The consumer's full position; `None` if it never committed.
    fn committed_state(&self, consumer: &str) -> BoxFuture<'_, Result<Option<AckState>, LogError>>;
    /// Forgets a consumer (its trigger was deleted); retention no longer waits for it.
    fn remove_consumer(&self, consumer: &str) -> BoxFuture<'_, Result<(), LogError>>;
}

/// Opens logs by name. One per storage backend. Opening and removing touch
/// storage (the file log scans its tail, deletes directories): both run off
/// the async runtime's worker threads.
pub trait LogBackend: Send + Sync + 'static {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn EventLog>, LogError>>;
    /// Deletes a log and its consumers' offsets.
    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>>;
}

/// Runs blocking storage work on the blocking pool (inline when no runtime
/// runs, as in synchronous tools and tests).
pub(crate) fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> BoxFuture<'static, Result<T, LogError>> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let task = rt.spawn_blocking(f);
            Box::pin(async move {
                task.await
                    .unwrap_or_else(|e| Err(LogError::Io { path: what, source: std::io::Error::other(e.to_string()) }))
            })
        }
        Err(_) => {
            let r = f();
            Box::pin(std::future::ready(r))
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
