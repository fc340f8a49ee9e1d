//! RabbitMQ behind [`MessageStream`] (lapin), for the `RabbitMQBroker`
//! class, as Knative's RabbitMQ broker lays it out: one durable fanout
//! exchange per Broker (`<cluster>.<log name>`), one durable quorum queue per
//! Trigger bound to it (`<cluster>.<log name>.<consumer>`), with the
//! consumer's prefetch as the in-flight bound (1 keeps order). Publishes wait
//! for the broker's confirm (persistent messages); deliveries are acked after
//! their final outcome. Filters run in Spate.
//!
//! RabbitMQ has no delayed redelivery and no "in progress": a nack holds the
//! message for its delay and then requeues it; "in progress" is a no-op (a
//! delivery stays with its consumer until acked or the channel closes).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use crate::stream::{Acker, ConsumerOptions, Message, MessageStream, StreamBackend, StreamConsumer};
use crate::{BoxFuture, LogError};

/// Settings of the RabbitMQ backend (`--rabbitmq-url`, `--cluster-name`).
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    pub url: String,
    pub cluster: String,
}

/// AMQP short strings (names, message ids) hold at most 255 bytes: a longer
/// name keeps its first 200 bytes and gains a hash of the whole, so it stays
/// unique; never a panic on a long resource name or event id.
fn short(s: &str) -> ShortString {
    let s = if s.len() <= 255 {
        s.to_string()
    } else {
        let mut h = fnv::FnvHasher::default();
        std::hash::Hasher::write(&mut h, s.as_bytes());
        let hash = std::hash::Hasher::finish(&h);
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}-{hash:016x}", &s[..cut])
    };
    ShortString::try_new(s).expect("at most 255 bytes")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("RabbitMQ {what}: {e}"))
}

/// How long one RabbitMQ operation may take (opening a channel, a publish's
/// confirms). A connection cut without a FIN or RST being noticed leaves
/// lapin's promises pending for ever; past this the connection is dropped and
/// made again.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection, made on first use and remade when it drops.
pub struct RabbitBackend {
    config: RabbitConfig,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl RabbitBackend {
    pub fn new(config: RabbitConfig) -> Self {
        RabbitBackend { config, conn: tokio::sync::Mutex::new(None) }
    }

    async fn connection(&self) -> Result<Arc<Connection>, LogError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref().filter(|c| c.status().connected()) {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(&self.config.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| unavailable("connect", "timed out"))?
        .map_err(|e| unavailable("connect", e))?;
        let c = Arc::new(c);
        *g = Some(c.clone());
        Ok(c)
    }

    /// A new channel; when the connection cannot make one it is dropped, so
    /// the next call connects again (a connection cut under lapin may still
    /// say it is connected).
    async fn channel(&self) -> Result<Channel, LogError> {
        let conn = self.connection().await?;
        match tokio::time::timeout(OPERATION_TIMEOUT, conn.create_channel()).await {
            Ok(Ok(ch)) => Ok(ch),
            Ok(Err(e)) => {
                self.forget(&conn).await;
                Err(unavailable("channel", e))
            }
            Err(_) => {
                self.forget(&conn).await;
                Err(unavailable("channel", format!("not opened within {OPERATION_TIMEOUT:?}")))
            }
        }
    }

    /// After a failed operation: drops the cached connection unless a fresh
    /// channel opens on it (it may still say it is connected while dead).
    async fn forget_if_broken(&self) {
        let Some(conn) = self.conn.lock().await.clone() else { return };
        match tokio::time::timeout(Duration::from_secs(2), conn.create_channel()).await {
            Ok(Ok(ch)) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ch.close(200, "probe".into())).await;
            }
            _ => self.forget(&conn).await,
        }
    }

    /// Drops the cached connection if it is still `conn`.
    async fn forget(&self, conn: &Arc<Connection>) {
        let mut g = self.conn.lock().await;
        if g.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *g = None;
        }
    }

    fn exchange(&self, name: &str) -> ShortString {
        short(&format!("{}.{name}", self.config.cluster))
    }
}

impl StreamBackend for Arc<RabbitBackend> {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn MessageStream>, LogError>> {
        let exchange = self.exchange(name);
        Box::pin(async move {
            let ch = self.channel().await?;
            let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
            ch.exchange_declare(exchange.clone(), ExchangeKind::Fanout, durable, FieldTable::default())
                .await
                .map_err(|e| unavailable("exchange", e))?;
            let _ = ch.close(200, "done".into()).await;
            Ok(Arc::new(RabbitStream { backend: self.clone(), exchange, publisher: tokio::sync::Mutex::new(None) })
                as Arc<dyn MessageStream>)
        })
    }

    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let exchange = self.exchange(name);
        Box::pin(async move {
            let ch = self.channel().await?;
            ch.exchange_delete(exchange, ExchangeDeleteOptions::default())
                .await
                .map_err(|e| unavailable("delete exchange", e))
        })
    }
}

struct RabbitStream {
    backend: Arc<RabbitBackend>,
    exchange: ShortString,
    /// A channel in confirm mode, reopened when it closes.
    publisher: tokio::sync::Mutex<Option<Channel>>,
}

impl RabbitStream {
    fn queue(&self, consumer: &str) -> ShortString {
        short(&format!("{}.{}", self.exchange, consumer.replace('/', ".")))
    }

    async fn publisher(&self) -> Result<Channel, LogError> {
        let mut g = self.publisher.lock().await;
        if let Some(ch) = g.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = self.backend.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| unavailable("confirm", e))?;
        *g = Some(ch.clone());
        Ok(ch)
    }

    /// Publishes on the confirm channel and waits for every confirm.
    async fn publish_on_channel(&self, messages: Vec<(Bytes, String)>) -> Result<(), LogError> {
        let ch = self.publisher().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for (payload, id) in messages {
            // Persistent (delivery mode 2): it survives a broker restart once confirmed.
            let props = BasicProperties::default().with_delivery_mode(2).with_message_id(short(&id));
            let c = ch
                .basic_publish(self.exchange.clone(), "".into(), BasicPublishOptions::default(), &payload, props)
                .await
                .map_err(|e| unavailable("publish", e))?;
            confirms.push(c);
        }
        let confirmed = tokio::time::timeout(OPERATION_TIMEOUT, async {
            for c in confirms {
                match c.await.map_err(|e| unavailable("publish confirm", e))? {
                    Confirmation::Ack(_) => {}
                    other => return Err(unavailable("publish", format!("not confirmed ({other:?})"))),
                }
            }
            Ok(())
        });
        confirmed
            .await
            .unwrap_or_else(|_| Err(unavailable("publish", format!("not confirmed within {OPERATION_TIMEOUT:?}"))))
    }
}

impl MessageStream for RabbitStream {
    fn publish(&self, messages: Vec<(Bytes, String)>) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let r = tokio::time::timeout(2 * OPERATION_TIMEOUT, self.publish_on_channel(messages))
                .await
                .unwrap_or_else(|_| Err(unavailable("publish", "no answer")));
            if r.is_err() {
                // The channel (or its connection) may be dead while it still says it is
                // connected: a new channel next time, on a new connection if need be.
                if let Some(ch) = self.publisher.lock().await.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ch.close(200, "reopening".into())).await;
                }
                self.backend.forget_if_broken().await;
            }
            r
        })
    }

    fn consumer(
        &self,
        name: &str,
        options: ConsumerOptions,
        create: bool,
    ) -> BoxFuture<'_, Result<Box<dyn StreamConsumer>, LogError>> {
        let queue = self.queue(name);
        Box::pin(async move {
            let ch = self.backend.channel().await?;
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            // A reconnecting worker does not bring back a queue deleted with its trigger.
            let declare = QueueDeclareOptions { durable: true, passive: !create, ..Default::default() };
            ch.queue_declare(queue.clone(), declare, args).await.map_err(|e| unavailable("queue", e))?;
            ch.queue_bind(
                queue.clone(),
                self.exchange.clone(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable("bind", e))?;
            let prefetch = options.max_in_flight.clamp(1, u16::MAX as usize) as u16;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| unavailable("qos", e))?;
            let consumer = ch
                .basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| unavailable("consume", e))?;
            Ok(Box::new(RabbitConsumer { consumer, _channel: ch }) as Box<dyn StreamConsumer>)
        })
    }

    fn backlog(&self, name: &str) -> BoxFuture<'_, Result<u64, LogError>> {
        let queue = self.queue(name);
        Box::pin(async move {
            let ch = self.backend.channel().await?;
            let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
            let q =
                ch.queue_declare(queue, passive, FieldTable::default()).await.map_err(|e| unavailable("queue", e))?;
            let _ = ch.close(200, "done".into()).await;
            Ok(u64::from(q.message_count()))
        })
    }

    fn remove_consumer(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let queue = self.queue(name);
        Box::pin(async move {
            let ch = self.backend.channel().await?;
            ch.queue_delete(queue, QueueDeleteOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| unavailable("delete queue", e))
        })
    }

    fn problem(&self) -> Option<String> {
        None
    }
}

struct RabbitConsumer {
    consumer: lapin::Consumer,
    /// Keeps the consumer's channel (and its prefetch) open.
    _channel: Channel,
}

impl StreamConsumer for RabbitConsumer {
    fn next(&mut self) -> BoxFuture<'_, Result<Message, LogError>> {
        Box::pin(async move {
            match self.consumer.next().await {
                Some(Ok(d)) => {
                    let delivered = delivery_count(d.properties.headers().as_ref()).saturating_add(1);
                    Ok(Message { payload: Bytes::from(d.data), acker: Arc::new(RabbitAcker(d.acker)), delivered })
                }
                Some(Err(e)) => Err(unavailable("consume", e)),
                None => Err(LogError::Unavailable("RabbitMQ: the consumer was cancelled".into())),
            }
        })
    }
}

/// How many times a quorum queue handed the message out before (its
/// `x-delivery-count` header: returned by a nack or by a consumer that went
/// away); 0 the first time, or when the header is absent or not a count.
fn delivery_count(headers: Option<&FieldTable>) -> u32 {
    let count = headers.and_then(|h| h.inner().get("x-delivery-count")).and_then(|v| match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    });
    count.map_or(0, |n| n.clamp(0, i64::from(u32::MAX - 1)) as u32)
}

struct RabbitAcker(lapin::Acker);

impl Acker for RabbitAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(
            async move { self.0.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| unavailable("ack", e)) },
        )
    }
    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let requeue = BasicNackOptions { requeue: true, ..Default::default() };
            self.0.nack(requeue).await.map(|_| ()).map_err(|e| unavailable("nack", e))
        })
    }
    fn in_progress(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delivery_count_header_is_read_in_any_integer_width_and_never_panics() {
        let with = |v: AMQPValue| {
            let mut t = FieldTable::default();
            t.insert("x-delivery-count".into(), v);
            delivery_count(Some(&t))
        };
        assert_eq!(delivery_count(None), 0);
        assert_eq!(delivery_count(Some(&FieldTable::default())), 0);
        assert_eq!(with(AMQPValue::LongLongInt(3)), 3);
        assert_eq!(with(AMQPValue::LongInt(2)), 2);
        assert_eq!(with(AMQPValue::ShortShortUInt(1)), 1);
        assert_eq!(with(AMQPValue::LongLongInt(-5)), 0, "a negative count is no count");
        assert_eq!(with(AMQPValue::LongLongInt(i64::MAX)), u32::MAX - 1, "bounded: +1 cannot overflow");
        assert_eq!(with(AMQPValue::LongString("7".into())), 0, "not an integer: not a count");
    }

    /// RabbitMQ's quorum queue counts hand-outs: a message nacked (or left by a
    /// consumer that went away) comes back with `x-delivery-count`, so a
    /// restarted worker continues the retry budget instead of starting over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_handed_out_again_says_how_often_it_was_handed_out() {
        let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
        if tokio::net::TcpStream::connect("127.0.0.1:5672").await.is_err() {
            assert!(std::env::var_os("CI").is_none(), "RabbitMQ is not answering on 127.0.0.1:5672");
            eprintln!("skipped: RabbitMQ is not answering on 127.0.0.1:5672");
            return;
        }
        let cluster = format!("dc{}", std::process::id());
        let backend = Arc::new(RabbitBackend::new(RabbitConfig { url: url.into(), cluster }));
        let stream = backend.open("count").await.unwrap();
        let options = ConsumerOptions { max_in_flight: 1, ack_wait: Duration::from_secs(30) };
        let mut consumer = stream.consumer("c", options.clone(), true).await.unwrap();
        stream.publish(vec![(Bytes::from_static(b"e"), "id-1".into())]).await.unwrap();
        let first = consumer.next().await.unwrap();
        assert_eq!(first.delivered, 1);
        first.acker.nack(Duration::ZERO).await.unwrap();
        let second = consumer.next().await.unwrap();
        assert_eq!(second.delivered, 2, "nacked once: handed out twice");
        // A consumer that goes away without an ack (a killed instance) returns it too.
        drop(second);
        drop(consumer);
        let mut again = stream.consumer("c", options, false).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(30), again.next()).await.expect("returned").unwrap();
        assert_eq!(third.delivered, 3, "returned by a consumer that went away: handed out three times");
        third.acker.ack().await.unwrap();
        stream.remove_consumer("c").await.unwrap();
        backend.remove("count").await.unwrap();
    }

    #[test]
    fn long_names_are_shortened_uniquely_and_never_panic() {
        assert_eq!(short("spate.broker.ns.b").as_str(), "spate.broker.ns.b");
        let (a, b) = ("x".repeat(300), format!("{}y", "x".repeat(299)));
        let (sa, sb) = (short(&a), short(&b));
        assert!(sa.as_str().len() <= 255 && sb.as_str().len() <= 255);
        assert_ne!(sa, sb, "a hash of the whole name keeps them apart");
        assert!(short(&"é".repeat(200)).as_str().len() <= 255, "cut on a character boundary");
    }
}
