//! NATS JetStream behind [`MessageStream`]: one stream per Broker or Channel
//! (`<cluster>_<kind>_<namespace>_<name>`, subject `<cluster>.<kind>.<namespace>.<name>`, file
//! storage, interest retention bounded by age and size), one durable pull
//! consumer per Trigger or Subscription with explicit acks, shared by every
//! Spate instance. Names use `_` between parts and for a name's dots:
//! namespaces (DNS labels) hold neither, names (DNS subdomains) never hold
//! `_`, so two resources never share a stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::stream::{Acker, ConsumerOptions, Message, MessageStream, StreamBackend, StreamConsumer};
use crate::{BoxFuture, LogError};

/// Settings of the NATS backend (`--nats-url`, `--cluster-name`, `--nats-ca-file`).
#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    /// PEM CA certificates to verify the server with; TLS is then required.
    pub ca_file: Option<std::path::PathBuf>,
    /// Prefixes streams, consumers and buckets; letters, digits and `-`.
    pub cluster: String,
    /// Stream replicas (honoured when the NATS server is clustered).
    pub replicas: usize,
    /// Retention by age (zero: none).
    pub max_age: Duration,
    /// Retention by size in bytes (-1: none).
    pub max_bytes: i64,
    /// The window in which a publish with the same `Nats-Msg-Id` is stored once.
    pub duplicate_window: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            ca_file: None,
            cluster: "spate".into(),
            replicas: 1,
            max_age: Duration::from_secs(86_400),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Checks a cluster name: it becomes part of stream, consumer and bucket names.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(format!("cluster name '{name}': use 1-32 letters, digits and '-'")) }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("NATS {what}: {e}"))
}

/// A connection to NATS shared by every stream, consumer and the config store.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub config: NatsConfig,
}

impl Nats {
    /// Connects; when NATS is not reachable yet, keeps trying in the
    /// background (operations fail with `Unavailable` meanwhile).
    pub async fn connect(config: NatsConfig) -> Result<Nats, LogError> {
        check_cluster_name(&config.cluster).map_err(LogError::Unavailable)?;
        let mut options = async_nats::ConnectOptions::new();
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .event_callback(|e| async move {
                match e {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| unavailable("connect", e))?;
        let js = jetstream::new(client.clone());
        Ok(Nats { client, js, config })
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// `<cluster>_<name>` with the name's `.` turned into `_` (stream and consumer names).
    pub fn name(&self, name: &str) -> String {
        format!("{}_{}", self.config.cluster, name.replace(['.', '/'], "_"))
    }
}

/// Opens JetStream streams by log name (`broker.<ns>.<name>`, `channel.<ns>.<name>`).
/// Connects on first use, so a server that never uses NATS never dials it.
pub struct NatsBackend {
    config: NatsConfig,
    nats: tokio::sync::OnceCell<Nats>,
}

impl NatsBackend {
    pub fn new(config: NatsConfig) -> Self {
        NatsBackend { config, nats: tokio::sync::OnceCell::new() }
    }

    /// The shared connection (connecting on first call).
    pub async fn nats(&self) -> Result<&Nats, LogError> {
        self.nats.get_or_try_init(|| Nats::connect(self.config.clone())).await
    }
}

impl StreamBackend for NatsBackend {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn MessageStream>, LogError>> {
        let name = name.to_string();
        Box::pin(async move {
            let nats = self.nats().await?.clone();
            let c = &nats.config;
            let subject = format!("{}.{name}", c.cluster);
            let cfg = stream::Config {
                name: nats.name(&name),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Interest,
                max_age: c.max_age,
                max_bytes: c.max_bytes,
                num_replicas: c.replicas.max(1),
                duplicate_window: c.duplicate_window,
                ..Default::default()
            };
            let stream = NatsStream { nats, cfg, subject: subject.into(), handle: tokio::sync::OnceCell::new() };
            // Created now if NATS answers; otherwise on first use (operations fail meanwhile).
            if let Err(e) = stream.ensure().await {
                tracing::warn!(stream = %stream.cfg.name, error = %e, "stream not created yet; retrying on use");
            }
            Ok(Arc::new(stream) as Arc<dyn MessageStream>)
        })
    }

    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let name = name.to_string();
        Box::pin(async move {
            let nats = self.nats().await?;
            match nats.js.delete_stream(nats.name(&name)).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(unavailable("delete stream", e)),
            }
        })
    }
}

struct NatsStream {
    nats: Nats,
    cfg: stream::Config,
    /// Shared bytes: each publish clones a reference, not the text.
    subject: async_nats::Subject,
    /// The stream once created (lock-free after the first success).
    handle: tokio::sync::OnceCell<stream::Stream>,
}

impl NatsStream {
    /// The stream, created on first success and cached.
    async fn ensure(&self) -> Result<&stream::Stream, LogError> {
        self.handle
            .get_or_try_init(|| async {
                self.nats.js.get_or_create_stream(self.cfg.clone()).await.map_err(|e| unavailable("stream", e))
            })
            .await
    }
}

impl MessageStream for NatsStream {
    fn publish(&self, messages: Vec<(Bytes, String)>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            // Disconnected: say so at once (503) instead of queueing until a timeout.
            if !self.nats.connected() {
                return Err(LogError::Unavailable("NATS: not connected".into()));
            }
            self.ensure().await?;
            // Pipelined: send every publish, then await every ack.
            let mut acks = Vec::with_capacity(messages.len());
            for (payload, id) in messages {
                let p = jetstream::message::PublishMessage::build().payload(payload).message_id(id);
                let ack =
                    self.nats.js.send_publish(self.subject.clone(), p).await.map_err(|e| unavailable("publish", e))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| unavailable("publish ack", e))?;
            }
            Ok(())
        })
    }

    fn consumer(
        &self,
        name: &str,
        options: ConsumerOptions,
        create: bool,
    ) -> BoxFuture<'_, Result<Box<dyn StreamConsumer>, LogError>> {
        let durable = self.nats.name(name);
        Box::pin(async move {
            let cfg = consumer_config(&durable, &options, consumer::DeliverPolicy::New);
            let stream = self.ensure().await?;
            let c: consumer::Consumer<consumer::pull::Config> = match stream.get_consumer(&durable).await {
                Ok(c) if c.cached_info().config.max_ack_pending == cfg.max_ack_pending => c,
                // Its in-flight bound changed: update it.
                Ok(_) => stream.create_consumer(cfg).await.map_err(|e| unavailable("consumer", e))?,
                Err(_) if create => stream.create_consumer(cfg).await.map_err(|e| unavailable("consumer", e))?,
                Err(e) => return Err(unavailable("consumer", e)),
            };
            let messages = c.messages().await.map_err(|e| unavailable("consume", e))?;
            Ok(Box::new(NatsConsumer { messages }) as Box<dyn StreamConsumer>)
        })
    }

    fn problem(&self) -> Option<String> {
        (!self.nats.connected()).then(|| {
            format!(
                "NATS at {} is not connected; ingress answers 503 and deliveries wait until it is back",
                self.nats.config.url
            )
        })
    }

    fn backlog(&self, name: &str) -> BoxFuture<'_, Result<u64, LogError>> {
        let durable = self.nats.name(name);
        Box::pin(async move {
            let stream = self.ensure().await?;
            let info = stream.consumer_info(&durable).await.map_err(|e| unavailable("consumer info", e))?;
            Ok(info.num_pending + info.num_ack_pending as u64)
        })
    }

    fn deliverable(&self, name: &str) -> BoxFuture<'_, Result<u64, LogError>> {
        let durable = self.nats.name(name);
        Box::pin(async move {
            let stream = self.ensure().await?;
            let info = stream.consumer_info(&durable).await.map_err(|e| unavailable("consumer info", e))?;
            let room = (info.num_ack_pending as i64) < info.config.max_ack_pending;
            Ok(if room { info.num_pending } else { 0 })
        })
    }

    fn reset_consumer(&self, name: &str, options: ConsumerOptions) -> BoxFuture<'_, Result<(), LogError>> {
        let durable = self.nats.name(name);
        Box::pin(async move {
            let stream = self.ensure().await?;
            let info = stream.consumer_info(&durable).await.map_err(|e| unavailable("consumer info", e))?;
            // The first message not known acknowledged: everything from it is handed out again.
            let start_sequence = info.ack_floor.stream_sequence + 1;
            tracing::warn!(consumer = %durable, start_sequence, pending = info.num_pending,
                "the consumer hands out nothing while messages wait: making it again from its acknowledgement floor");
            // The stream keeps messages only while a consumer needs them (interest
            // retention): a stand-in holds the interest while the consumer is made again.
            let from = consumer::DeliverPolicy::ByStartSequence { start_sequence };
            let stand_in = format!("{durable}-reset");
            let keep = consumer_config(&stand_in, &options, from);
            stream.create_consumer(keep).await.map_err(|e| unavailable("consumer", e))?;
            let remade = async {
                stream.delete_consumer(&durable).await.map_err(|e| unavailable("delete consumer", e))?;
                stream
                    .create_consumer(consumer_config(&durable, &options, from))
                    .await
                    .map_err(|e| unavailable("consumer", e))
            }
            .await;
            // The stand-in goes only once the consumer holds the interest again.
            if remade.is_ok() {
                stream.delete_consumer(&stand_in).await.map_err(|e| unavailable("delete consumer", e))?;
            }
            remade.map(|_| ())
        })
    }

    fn remove_consumer(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let durable = self.nats.name(name);
        Box::pin(async move {
            match self.ensure().await?.delete_consumer(&durable).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(unavailable("delete consumer", e)),
            }
        })
    }
}

/// A trigger's durable pull consumer: explicit acks, the in-flight bound, and no
/// redelivery limit (Spate retries deliveries itself; the engine redelivers only
/// what an instance failed to settle: a crash, a lost claim).
fn consumer_config(
    durable: &str,
    options: &ConsumerOptions,
    deliver_policy: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_ack_pending: options.max_in_flight.max(1) as i64,
        deliver_policy,
        max_deliver: -1,
        ..Default::default()
    }
}

struct NatsConsumer {
    messages: consumer::pull::Stream,
}

impl StreamConsumer for NatsConsumer {
    fn next(&mut self) -> BoxFuture<'_, Result<Message, LogError>> {
        Box::pin(async move {
            match self.messages.next().await {
                Some(Ok(m)) => {
                    // JetStream counts hand-outs: a message another instance held when it died says so.
                    let delivered = m.info().map_or(1, |i| i.delivered.clamp(1, i64::from(u32::MAX)) as u32);
                    let (m, acker) = m.split();
                    Ok(Message { payload: m.payload, acker: Arc::new(NatsAcker(acker)), delivered })
                }
                Some(Err(e)) => Err(unavailable("consume", e)),
                None => Err(LogError::Unavailable("NATS: the consumer's message stream ended".into())),
            }
        })
    }
}

struct NatsAcker(jetstream::message::Acker);

impl Acker for NatsAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move { self.0.ack().await.map_err(|e| unavailable("ack", e)) })
    }
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move { self.0.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| unavailable("nack", e)) })
    }
    fn in_progress(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move { self.0.ack_with(AckKind::Progress).await.map_err(|e| unavailable("in progress", e)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer made again from its acknowledgement floor hands out every
    /// message not acknowledged, and skips none (the stand-in consumer keeps
    /// the interest-retained stream from dropping them meanwhile).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_made_again_from_its_floor_skips_nothing() {
        if tokio::net::TcpStream::connect("127.0.0.1:4222").await.is_err() {
            assert!(std::env::var_os("CI").is_none(), "NATS is not answering on 127.0.0.1:4222");
            eprintln!("skipped: NATS is not answering on 127.0.0.1:4222");
            return;
        }
        let cluster = format!("reset-{}", std::process::id());
        let backend = NatsBackend::new(NatsConfig { cluster, ..Default::default() });
        let stream = backend.open("s").await.unwrap();
        let options = ConsumerOptions { max_in_flight: 10, ack_wait: Duration::from_secs(30) };
        let mut c = stream.consumer("t", options.clone(), true).await.unwrap();
        let batch = (1..=10).map(|i| (Bytes::from(i.to_string()), format!("id-{i}"))).collect();
        stream.publish(batch).await.unwrap();
        let mut held = vec![];
        for _ in 0..10 {
            held.push(c.next().await.unwrap());
        }
        let text = |m: &Message| String::from_utf8(m.payload.to_vec()).unwrap();
        for m in held.iter().filter(|m| ["1", "2", "3", "5"].contains(&text(m).as_str())) {
            m.acker.ack().await.unwrap();
        }
        // Acknowledgements are asynchronous: wait until the floor reached 3.
        let durable = backend.nats().await.unwrap().name("t");
        let js = &backend.nats().await.unwrap().js;
        let raw = js.get_stream(backend.nats().await.unwrap().name("s")).await.unwrap();
        for _ in 0..100 {
            if raw.consumer_info(&durable).await.unwrap().ack_floor.stream_sequence >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held);
        drop(c);
        stream.reset_consumer("t", options.clone()).await.unwrap();
        let mut again = stream.consumer("t", options, false).await.unwrap();
        let mut seen = vec![];
        for _ in 0..6 {
            let m = tokio::time::timeout(Duration::from_secs(10), again.next()).await.expect("handed out").unwrap();
            seen.push(text(&m).parse::<u32>().unwrap());
            m.acker.ack().await.unwrap();
        }
        // 5 was acknowledged, and the stream (interest retention) no longer holds it.
        assert_eq!(seen, vec![4, 6, 7, 8, 9, 10], "every unacknowledged message from the floor on, in order");
        stream.remove_consumer("t").await.unwrap();
        backend.remove("s").await.unwrap();
    }
}
