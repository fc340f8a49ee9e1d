//! The raw JetStream baselines for `spate bench --broker-class NatsJetStreamBroker`:
//! publish-with-ack and pull-consume of the same payloads with async-nats
//! directly, measured in the same run as Spate's end-to-end path, once on a
//! stream with JetStream's defaults and once on a stream set up as Spate sets
//! up a broker's (interest retention, a `Nats-Msg-Id` per publish), which
//! separates the engine's cost of those settings from Spate's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::cli::BenchArgs;

/// How the baseline's stream is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawStream {
    /// JetStream's defaults (limits retention, no message ids).
    Defaults,
    /// As Spate sets up a broker's stream: interest retention bounded by
    /// Spate's default age, its duplicate window, and a `Nats-Msg-Id` on every publish.
    AsSpate,
}

/// Events per second through JetStream alone: `a.events` payloads of `a.size`
/// bytes published by `a.concurrency` publishers (each awaiting its ack),
/// while a durable pull consumer acknowledges each one; from the first publish
/// to the last ack.
pub async fn raw_jetstream(a: &BenchArgs, url: &str, cluster: &str, how: RawStream) -> anyhow::Result<f64> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?;
    let js = jetstream::new(client);
    let name = format!("{cluster}_raw_baseline");
    let _ = js.delete_stream(&name).await;
    let mut config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{cluster}.raw")],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    if how == RawStream::AsSpate {
        let spate = spate_log::nats::NatsConfig::default();
        config.retention = stream::RetentionPolicy::Interest;
        config.max_age = spate.max_age;
        config.duplicate_window = spate.duplicate_window;
    }
    let s = js.create_stream(config).await.context("creating the baseline stream")?;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 256,
            ..Default::default()
        })
        .await
        .context("creating the baseline consumer")?;
    let total = a.events;
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
    let started = Instant::now();
    let consumed = tokio::spawn(async move {
        let mut msgs = c.messages().await?;
        let mut n = 0u64;
        while n < total {
            match tokio::time::timeout(Duration::from_secs(30), msgs.next()).await {
                Ok(Some(Ok(m))) => {
                    let _ = m.ack().await;
                    n += 1;
                }
                _ => break,
            }
        }
        anyhow::Ok(n)
    });
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = vec![];
    for _ in 0..a.concurrency {
        let (js, next, payload, subject) = (js.clone(), next.clone(), payload.clone(), format!("{cluster}.raw"));
        publishers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let mut m = jetstream::message::PublishMessage::build().payload(payload.clone());
                if how == RawStream::AsSpate {
                    m = m.message_id(format!("bench-source/{i}"));
                }
                js.send_publish(subject.clone(), m).await?.await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in publishers {
        p.await??;
    }
    let n = consumed.await??;
    let elapsed = started.elapsed();
    let _ = js.delete_stream(&name).await;
    anyhow::ensure!(n == total, "the baseline consumer received {n} of {total}");
    Ok(total as f64 / elapsed.as_secs_f64())
}
