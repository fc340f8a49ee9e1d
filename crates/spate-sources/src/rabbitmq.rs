//! RabbitmqSource: a queue (declared and bound to the exchange with `#` unless
//! `predeclared`) consumed with manual acknowledgements through [`Held`]:
//! a delivery is acked only after the sink (or the dead-letter sink) accepted
//! its event; prefetch = in flight = `parallelism`, so `parallelism: 1` keeps
//! the queue's order. A message that is a CloudEvent in the AMQP binding
//! (binary: `cloudEvents:`/`cloudEvents_`-prefixed or bare attribute headers;
//! structured: `application/cloudevents+json`) keeps its attributes; any other
//! becomes `dev.knative.rabbitmq.event` as eventing-rabbitmq emits it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use spate_api::RabbitmqSourceSpec;
use spate_core::CloudEvent;
use tokio::sync::watch;

use crate::Start;
use crate::driver::Upstream;
use crate::emit::uuid;
use crate::held::Held;
use crate::integration::uri_encode;

pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<RabbitmqSourceSpec>().cloned() else { return };
    let c = &spec.connection;
    let url = match (st.secret(&c.uri), st.secret(&c.username), st.secret(&c.password)) {
        (Some(uri), user, pass) => amqp_url(&uri, user.as_deref(), pass.as_deref(), &spec.vhost),
        _ => Err("the connection Secret has no 'uri'".to_string()),
    };
    let url = match url {
        Ok(u) => u,
        Err(e) => return st.fail("InvalidConnection", e),
    };
    let held = Held::new(st.emitter.clone(), spec.parallelism, st.stop.clone());
    st.keep(std::sync::Arc::new(crate::driver::Lag(st.emitter.stats.clone())));
    let upstream = std::sync::Arc::new(Upstream::default());
    st.keep(upstream.clone());
    let stop = st.stop.clone();
    st.spawn(run(spec, url, held, upstream, stop));
}

/// The AMQP URL from the Secret: `uri` as given when it is `amqp(s)://`;
/// from a management URL (`http(s)://host:15672`, eventing-rabbitmq's
/// convention) the host, with `username`, `password` and AMQP's port 5672.
fn amqp_url(uri: &str, user: Option<&str>, pass: Option<&str>, vhost: &str) -> Result<String, String> {
    let uri = uri.trim();
    let vh = if vhost == "/" { "%2f".to_string() } else { vhost.replace('/', "%2f") };
    if uri.starts_with("amqp://") || uri.starts_with("amqps://") {
        let (scheme, rest) = uri.split_once("://").expect("checked");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let authority = match (authority.contains('@'), user, pass) {
            (false, Some(u), Some(p)) => format!("{}:{}@{authority}", uri_encode(u, false), uri_encode(p, false)),
            _ => authority.to_string(),
        };
        let path = if path.is_empty() { vh } else { path.to_string() };
        return Ok(format!("{scheme}://{authority}/{path}"));
    }
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or_else(|| format!("uri '{uri}' is neither amqp(s):// nor a management http(s):// URL"))?;
    let host = rest.split('/').next().unwrap_or("").rsplit('@').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let (Some(u), Some(p)) = (user, pass) else {
        return Err("a management uri needs 'username' and 'password' in the Secret".into());
    };
    Ok(format!("amqp://{}:{}@{host}:5672/{vh}", uri_encode(u, false), uri_encode(p, false)))
}

/// Consumes until stop; reconnects after a lost connection (what was not acked comes again).
async fn run(
    spec: RabbitmqSourceSpec,
    url: String,
    held: Held,
    upstream: std::sync::Arc<Upstream>,
    mut stop: watch::Receiver<bool>,
) {
    let label = held.label().to_string();
    loop {
        match consume(&spec, &url, &held, &upstream, &mut stop).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(source = %label, error = %e, "RabbitMQ consumer stopped; reconnecting in 2 s");
                upstream.failed(format!("RabbitMQ: {e}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => break,
        }
    }
    held.drain().await;
}

async fn consume(
    spec: &RabbitmqSourceSpec,
    url: &str,
    held: &Held,
    upstream: &Upstream,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, ConnectionProperties::default()))
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let ch = conn.create_channel().await.map_err(|e| format!("channel: {e}"))?;
    if !spec.predeclared {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(spec.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .map_err(|e| format!("declaring exchange '{}': {e}", spec.exchange))?;
        let q = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(spec.queue.as_str().into(), q, FieldTable::default())
            .await
            .map_err(|e| format!("declaring queue '{}': {e}", spec.queue))?;
        let bind = (spec.queue.as_str().into(), spec.exchange.as_str().into(), "#".into());
        ch.queue_bind(bind.0, bind.1, bind.2, QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(|e| format!("binding queue '{}': {e}", spec.queue))?;
    }
    let prefetch = spec.parallelism.clamp(1, u32::from(u16::MAX)) as u16;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(|e| format!("qos: {e}"))?;
    let mut consumer = ch
        .basic_consume(spec.queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(|e| format!("consuming '{}': {e}", spec.queue))?;
    upstream.ok();
    // The queue's ready messages, every 2 s, on a channel of its own.
    let probe = conn.create_channel().await.map_err(|e| format!("channel: {e}"))?;
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        let d = tokio::select! {
            d = consumer.next() => d,
            _ = every.tick() => {
                let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
                if let Ok(q) = probe.queue_declare(spec.queue.as_str().into(), passive, FieldTable::default()).await {
                    held.set_lag(u64::from(q.message_count()));
                }
                continue;
            }
            _ = stop.changed() => return Ok(()),
        };
        let d = match d {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(format!("consume: {e}")),
            None => return Err("the broker cancelled the consumer".into()),
        };
        let ev = match to_event(&spec.event_source, &d.properties, Bytes::from(d.data)) {
            Ok(ev) => ev,
            Err(e) => {
                // A malformed CloudEvent is not retried forever: it is acked and counted.
                tracing::warn!(source = %held.label(), error = %e, "message is a malformed CloudEvent; dropped");
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                continue;
            }
        };
        let acker = d.acker;
        let ack =
            move || async move { acker.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| e.to_string()) };
        if !held.deliver(ev, ack).await {
            return Ok(());
        }
    }
}

fn amqp_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::Timestamp(t) => Some(t.to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The message as a CloudEvent: its own when it carries one, else eventing-rabbitmq's wrapping.
pub(crate) fn to_event(source: &str, p: &BasicProperties, body: Bytes) -> Result<CloudEvent, String> {
    let mut headers: Vec<(String, Vec<u8>)> = vec![];
    if let Some(t) = p.headers() {
        let bare = t.inner().keys().any(|k| k.as_str() == "specversion");
        for (k, v) in t.inner() {
            let k = k.as_str();
            let attr = k.strip_prefix("cloudEvents:").or_else(|| k.strip_prefix("cloudEvents_")).or(bare.then_some(k));
            if let (Some(attr), Some(v)) = (attr, amqp_str(v)) {
                headers.push((format!("ce_{}", attr.to_ascii_lowercase()), v.into_bytes()));
            }
        }
    }
    if let Some(ct) = p.content_type() {
        headers.push(("content-type".into(), ct.as_str().as_bytes().to_vec()));
    }
    if let Some(ev) = spate_core::kafka_binding::decode(&headers, body.clone()).map_err(|e| e.to_string())? {
        return Ok(ev);
    }
    let msg_id = p.message_id().as_ref().map(|m| m.as_str().to_string());
    let mut ev = CloudEvent::new(msg_id.clone().unwrap_or_else(uuid), source.to_string(), "dev.knative.rabbitmq.event");
    ev.subject = Some(msg_id.unwrap_or_default()).filter(|s| !s.is_empty());
    ev.datacontenttype = p.content_type().as_ref().map(|c| c.as_str().to_string());
    ev.time = Some(match p.timestamp() {
        Some(secs) => spate_core::rules::format_rfc3339(*secs as i64, 0),
        None => crate::emit::now_rfc3339(),
    });
    ev.data = Some(body);
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_urls() {
        let u = amqp_url("amqp://127.0.0.1:5672", Some("guest"), Some("p@ss"), "/").unwrap();
        assert_eq!(u, "amqp://guest:p%40ss@127.0.0.1:5672/%2f");
        let u = amqp_url("http://rabbit:15672", Some("u"), Some("p"), "vh").unwrap();
        assert_eq!(u, "amqp://u:p@rabbit:5672/vh");
        assert!(amqp_url("ftp://x", None, None, "/").is_err());
        assert!(amqp_url("http://rabbit:15672", None, None, "/").is_err(), "management uri without credentials");
    }

    #[test]
    fn plain_messages_are_wrapped_and_cloudevents_kept() {
        let p = BasicProperties::default().with_message_id("m-1".into()).with_content_type("text/plain".into());
        let ev = to_event("/apis/v1/namespaces/d/rabbitmqsources/s#q", &p, Bytes::from_static(b"hi")).unwrap();
        assert_eq!(
            (ev.id.as_str(), ev.ty.as_str(), ev.subject.as_deref()),
            ("m-1", "dev.knative.rabbitmq.event", Some("m-1"))
        );
        let mut t = FieldTable::default();
        for (k, v) in [
            ("cloudEvents:specversion", "1.0"),
            ("cloudEvents:id", "e-9"),
            ("cloudEvents:source", "/x"),
            ("cloudEvents:type", "t.y"),
        ] {
            t.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        let ev = to_event("/s", &BasicProperties::default().with_headers(t), Bytes::new()).unwrap();
        assert_eq!((ev.id.as_str(), ev.source.as_str(), ev.ty.as_str()), ("e-9", "/x", "t.y"));
        let mut t = FieldTable::default();
        t.insert("cloudEvents:specversion".into(), AMQPValue::LongString("1.0".into()));
        assert!(to_event("/s", &BasicProperties::default().with_headers(t), Bytes::new()).is_err());
    }
}
