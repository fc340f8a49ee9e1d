//! The raw engine baselines for `spate bench --broker-class Kafka|RabbitMQBroker`:
//! a plain client producing (each awaiting the engine's acknowledgement) and
//! consuming (acknowledging each) the same payloads, in the same run as
//! Spate's end-to-end path. JetStream's is `nats`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use crate::cli::BenchArgs;

/// Claims the next of `total` payloads for one sender; `false` once all are taken.
fn take(next: &AtomicU64, total: u64) -> bool {
    next.fetch_add(1, Ordering::Relaxed) < total
}

/// Events per second through Kafka alone: an idempotent `acks=all` producer with
/// `a.concurrency` sends outstanding, and a group consumer reading every record of a
/// 10-partition topic (the Kafka broker's default); from the first send to the last record.
pub async fn raw_kafka(a: &BenchArgs, bootstrap: &str, topic: &str) -> anyhow::Result<f64> {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().context("Kafka admin client")?;
    let new = NewTopic::new(topic, 10, TopicReplication::Fixed(1));
    admin.create_topics([&new], &AdminOptions::new()).await.context("creating the baseline topic")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .context("Kafka producer")?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("fetch.wait.max.ms", "20")
        .create()
        .context("Kafka consumer")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    let total = a.events;
    let started = Instant::now();
    let consumed = tokio::spawn(async move {
        let mut n = 0u64;
        while n < total {
            match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                Ok(Ok(_)) => n += 1,
                Ok(Err(e)) => anyhow::bail!("consuming: {e}"),
                Err(_) => break,
            }
        }
        anyhow::Ok(n)
    });
    let payload = Arc::new(vec![b'x'; a.size]);
    let next = Arc::new(AtomicU64::new(0));
    let mut senders = vec![];
    for _ in 0..a.concurrency {
        let (p, next, payload, topic) = (producer.clone(), next.clone(), payload.clone(), topic.to_string());
        senders.push(tokio::spawn(async move {
            while take(&next, total) {
                let r: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&topic).payload(payload.as_ref());
                p.send(r, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let n = consumed.await??;
    let elapsed = started.elapsed();
    anyhow::ensure!(n == total, "the baseline consumer received {n} of {total}");
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Events per second through RabbitMQ alone: persistent publishes awaiting their
/// confirms from `a.concurrency` senders into a durable quorum queue, and a consumer
/// (prefetch 100) acking each; from the first publish to the last ack.
pub async fn raw_rabbit(a: &BenchArgs, url: &str, queue: &str) -> anyhow::Result<f64> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let conn = Connection::connect(url, ConnectionProperties::default()).await.context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(queue.into(), durable, args).await.context("declaring the baseline queue")?;
    ch.basic_qos(100, BasicQosOptions::default()).await?;
    let mut deliveries =
        ch.basic_consume(queue.into(), "raw".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let total = a.events;
    let started = Instant::now();
    let consumed = tokio::spawn(async move {
        let mut n = 0u64;
        while n < total {
            match tokio::time::timeout(Duration::from_secs(30), deliveries.next()).await {
                Ok(Some(Ok(d))) => {
                    d.ack(BasicAckOptions::default()).await?;
                    n += 1;
                }
                _ => break,
            }
        }
        anyhow::Ok(n)
    });
    let payload = Arc::new(vec![b'x'; a.size]);
    let next = Arc::new(AtomicU64::new(0));
    let mut senders = vec![];
    for _ in 0..a.concurrency {
        let pub_ch = conn.create_channel().await?;
        pub_ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let (next, payload, queue) = (next.clone(), payload.clone(), queue.to_string());
        senders.push(tokio::spawn(async move {
            while take(&next, total) {
                let props = BasicProperties::default().with_delivery_mode(2);
                let opts = BasicPublishOptions::default();
                pub_ch.basic_publish("".into(), queue.as_str().into(), opts, &payload, props).await?.await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let n = consumed.await??;
    let elapsed = started.elapsed();
    let _ = ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    anyhow::ensure!(n == total, "the baseline consumer received {n} of {total}");
    Ok(total as f64 / elapsed.as_secs_f64())
}
