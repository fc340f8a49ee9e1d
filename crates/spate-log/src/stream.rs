//! The per-message seam: a durable stream whose consumers hand out messages
//! and take, per message, an ack, a nack with a delay, or "in progress".
//! Shared engines (NATS JetStream today) implement it; several Spate
//! instances on one consumer split its messages, each delivered by one.
//!
//! The embedded file log keeps its offset-based fast path (`EventLog`, with
//! the same acknowledged-range bookkeeping in [`crate::AckTracker`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{BoxFuture, LogError};

/// How a consumer hands out messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Messages handed out and not yet acknowledged, across every instance
    /// (1 = ordered: one at a time, in stream order).
    pub max_in_flight: usize,
    /// How long a handed-out message may go without an ack or an
    /// "in progress" before the engine hands it out again.
    pub ack_wait: Duration,
}

/// One message to process, with its acknowledgement handle.
pub struct Message {
    pub payload: Bytes,
    pub acker: Arc<dyn Acker>,
    /// How many times the engine has handed this message out, this one
    /// included (1 where the engine does not count, or the first time).
    pub delivered: u32,
}

/// Per-message acknowledgement.
pub trait Acker: Send + Sync {
    /// Done with it (delivered, dead-lettered, dropped by policy, or filtered out).
    fn ack(&self) -> BoxFuture<'_, Result<(), LogError>>;
    /// Not now: hand it out again after `delay`.
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), LogError>>;
    /// Still working on it: keep my claim for another `ack_wait`.
    fn in_progress(&self) -> BoxFuture<'_, Result<(), LogError>>;
}

/// A durable consumer: the next message, waiting for one.
pub trait StreamConsumer: Send {
    fn next(&mut self) -> BoxFuture<'_, Result<Message, LogError>>;
}

/// One durable stream (a Broker's or a Channel's).
pub trait MessageStream: Send + Sync + 'static {
    /// Stores the payloads; resolves once the engine acknowledged every one.
    /// Each carries a de-duplication id (a retried publish inside the engine's
    /// window is stored once).
    fn publish(&self, messages: Vec<(Bytes, String)>) -> BoxFuture<'_, Result<(), LogError>>;
    /// Finds the durable consumer `name`, creating it if `create` (a new one
    /// starts with messages published from now on). Reconnecting workers pass
    /// `create: false` first, so a consumer deleted with its trigger on
    /// another instance is not brought back.
    fn consumer(
        &self,
        name: &str,
        options: ConsumerOptions,
        create: bool,
    ) -> BoxFuture<'_, Result<Box<dyn StreamConsumer>, LogError>>;
    /// Messages the consumer has not yet acknowledged (its backlog).
    fn backlog(&self, name: &str) -> BoxFuture<'_, Result<u64, LogError>>;
    /// Deletes the consumer (its trigger was deleted, on any instance).
    fn remove_consumer(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>>;
    /// Messages the engine could hand the consumer now (waiting, with room under
    /// its in-flight bound); engines that cannot tell say their backlog.
    fn deliverable(&self, name: &str) -> BoxFuture<'_, Result<u64, LogError>> {
        self.backlog(name)
    }
    /// Makes the durable consumer again from its acknowledgement floor, when the
    /// engine's own consumer state is suspect (it says messages wait, hands none
    /// out, and a new subscription did not help). What was acknowledged above
    /// the floor is handed out again (at most the in-flight bound); nothing is
    /// skipped. Engines whose consumers cannot wedge so do nothing.
    fn reset_consumer(&self, name: &str, options: ConsumerOptions) -> BoxFuture<'_, Result<(), LogError>> {
        let _ = (name, options);
        Box::pin(std::future::ready(Ok(())))
    }
    /// Why the engine cannot be used right now, if it cannot (shown in statuses).
    fn problem(&self) -> Option<String> {
        None
    }
}

/// Per-stream settings an engine reads (Kafka: the topic, its brokers, and how
/// a topic Spate creates is made, from a Broker's ConfigMap or a KafkaChannel's
/// spec). Already parsed and bounded by whoever read them; engines ignore the
/// fields they do not use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// The topic; default: the stream's name.
    pub topic: Option<String>,
    /// The topic exists and is someone else's: neither created nor deleted by Spate.
    pub external: bool,
    /// Bootstrap servers; default: the backend's (`--kafka-bootstrap-servers`).
    pub bootstrap_servers: Option<String>,
    /// Partitions of a topic Spate creates; default `kafka::DEFAULT_PARTITIONS`.
    pub partitions: Option<i32>,
    /// Replicas of a topic Spate creates; default 1.
    pub replication_factor: Option<i32>,
    /// `retention.ms` of a topic Spate creates; default: the Kafka server's.
    pub retention_ms: Option<i64>,
}

/// Opens streams by name. One per engine.
pub trait StreamBackend: Send + Sync + 'static {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn MessageStream>, LogError>>;
    /// Opens with per-stream settings; engines without any use `open`.
    fn open_with<'a>(
        &'a self,
        name: &str,
        settings: &StreamSettings,
    ) -> BoxFuture<'a, Result<Arc<dyn MessageStream>, LogError>> {
        let _ = settings;
        self.open(name)
    }
    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>>;
}
