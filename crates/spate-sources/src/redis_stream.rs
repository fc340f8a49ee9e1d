//! RedisStreamSource: `numConsumers` consumers of one consumer group. Each
//! reads its own pending entries first (`XREADGROUP … 0`, what it had before a
//! restart), then new ones (`>`); an entry is `XACK`ed through [`Held`] only
//! after the sink accepted its event. Entries left pending by a consumer that
//! died (idle for [`RECLAIM_IDLE`]) are taken over with `XAUTOCLAIM`, except
//! those this source still has in flight. Events are eventing-redis's:
//! type `dev.knative.sources.redisstream`, source `<address>/<stream>`, id the
//! entry id, data the entry's fields and values as a JSON array.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::Value as R;
use redis::aio::MultiplexedConnection;
use serde_json::{Map, Value, json};
use spate_api::RedisStreamSpec;
use spate_core::CloudEvent;
use tokio::sync::watch;

use crate::driver::Upstream;
use crate::held::Held;
use crate::{Start, Started};

/// An entry pending this long with a consumer is taken over by another.
pub const RECLAIM_IDLE: Duration = Duration::from_secs(10);
/// Entries read per call.
const BATCH: usize = 64;

pub(crate) fn start(st: &mut Start<'_>) {
    let Some(spec) = st.spec::<RedisStreamSpec>().cloned() else { return };
    let password = spec.password.as_ref().and_then(|r| st.secret(r));
    let client = match client(&spec.address, password) {
        Ok(c) => c,
        Err(e) => return st.fail("InvalidAddress", e),
    };
    let shared = Arc::new(Shared::default());
    st.keep(shared.clone());
    for i in 0..spec.consumers {
        // One consumer's deliveries at a time keep the stream's order for that consumer.
        let held = Held::new(st.emitter.clone(), 16, st.stop.clone());
        let c = Consumer {
            spec: spec.clone(),
            client: client.clone(),
            name: format!("{}-{i}", spec.consumer_prefix),
            held,
            shared: shared.clone(),
        };
        let stop = st.stop.clone();
        st.spawn(c.run(stop));
    }
}

fn client(address: &str, password: Option<String>) -> Result<redis::Client, String> {
    let url = if address.contains("://") { address.to_string() } else { format!("redis://{address}") };
    let mut info: redis::ConnectionInfo = url.as_str().parse().map_err(|e| format!("'{address}': {e}"))?;
    if let Some(p) = password {
        let settings = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| format!("'{address}': {e}"))
}

/// What every consumer of one source shares.
#[derive(Default)]
struct Shared {
    /// Entry ids being delivered now (never reclaimed from ourselves).
    in_flight: Mutex<HashSet<String>>,
    /// The group's pending count, last seen.
    pending: std::sync::atomic::AtomicU64,
    upstream: Upstream,
}

impl Started for Shared {
    fn not_deployed(&self) -> Option<(String, String)> {
        self.upstream.not_deployed()
    }
    fn fields(&self, _status: &mut Map<String, Value>, counters: &mut Map<String, Value>) {
        counters.insert("pending".into(), json!(self.pending.load(std::sync::atomic::Ordering::Relaxed)));
    }
}

struct Consumer {
    spec: RedisStreamSpec,
    client: redis::Client,
    name: String,
    held: Held,
    shared: Arc<Shared>,
}

impl Consumer {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(e) = self.consume(&mut stop).await {
                self.shared.upstream.failed(format!("Redis {}: {e}", self.spec.address));
                tracing::warn!(source = %self.held.label(), consumer = %self.name, error = %e, "Redis consumer stopped; reconnecting in 2 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        self.held.drain().await;
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(|e| format!("connect: {e}"))
    }

    async fn consume(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        let mut reader = self.connect().await?;
        let acker = self.connect().await?;
        let (stream, group) = (self.spec.stream.as_str(), self.spec.group.as_str());
        let created: Result<R, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut reader)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(format!("XGROUP CREATE: {e}"));
        }
        self.shared.upstream.ok();
        // Own pending entries first (a restart's leftovers), then new ones.
        let mut from = "0".to_string();
        let mut last_reclaim = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let reply: R = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(&self.name)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(stream)
                .arg(&from)
                .query_async(&mut reader)
                .await
                .map_err(|e| format!("XREADGROUP: {e}"))?;
            let entries = stream_entries(&reply);
            if from == "0" && entries.is_empty() {
                from = ">".into();
            }
            for (id, fields) in entries {
                if from == "0" {
                    from = id.clone();
                }
                if !self.deliver(&acker, id, fields).await {
                    return Ok(());
                }
            }
            if last_reclaim.elapsed() >= Duration::from_secs(2) {
                last_reclaim = tokio::time::Instant::now();
                self.reclaim(&mut reader, &acker).await?;
            }
        }
    }

    /// Hands one entry to the sink; XACK once accepted.
    async fn deliver(&self, acker: &MultiplexedConnection, id: String, fields: Vec<String>) -> bool {
        if !self.shared.in_flight.lock().expect("in flight").insert(id.clone()) {
            return true;
        }
        let ev = event(&self.spec.event_source, &id, &fields);
        let (mut conn, stream, group, shared) =
            (acker.clone(), self.spec.stream.clone(), self.spec.group.clone(), self.shared.clone());
        let ack = move || async move {
            let r: Result<i64, _> = redis::cmd("XACK").arg(&stream).arg(&group).arg(&id).query_async(&mut conn).await;
            shared.in_flight.lock().expect("in flight").remove(&id);
            r.map(|_| ()).map_err(|e| format!("XACK: {e}"))
        };
        self.held.deliver(ev, ack).await
    }

    /// Takes over entries another consumer left pending too long, and records the group's pending count.
    async fn reclaim(&self, conn: &mut MultiplexedConnection, acker: &MultiplexedConnection) -> Result<(), String> {
        let (stream, group) = (self.spec.stream.as_str(), self.spec.group.as_str());
        let reply: R = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(&self.name)
            .arg(RECLAIM_IDLE.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(conn)
            .await
            .map_err(|e| format!("XAUTOCLAIM: {e}"))?;
        if let R::Array(parts) = &reply
            && let Some(entries) = parts.get(1)
        {
            for (id, fields) in entries_of(entries) {
                if self.shared.in_flight.lock().expect("in flight").contains(&id) {
                    continue;
                }
                tracing::info!(source = %self.held.label(), id = %id, "reclaimed an entry a dead consumer left pending");
                if !self.deliver(acker, id, fields).await {
                    return Ok(());
                }
            }
        }
        let summary: R = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(conn)
            .await
            .map_err(|e| format!("XPENDING: {e}"))?;
        if let R::Array(p) = summary
            && let Some(R::Int(n)) = p.first()
        {
            self.shared.pending.store(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

fn text(v: &R) -> Option<String> {
    match v {
        R::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        R::SimpleString(s) => Some(s.clone()),
        R::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `[[id, [field, value, …]], …]` (entries deleted meanwhile have no fields and are skipped).
fn entries_of(v: &R) -> Vec<(String, Vec<String>)> {
    let R::Array(items) = v else { return vec![] };
    items
        .iter()
        .filter_map(|e| {
            let R::Array(pair) = e else { return None };
            let id = text(pair.first()?)?;
            let R::Array(fv) = pair.get(1)? else { return None };
            Some((id, fv.iter().filter_map(text).collect()))
        })
        .collect()
}

/// The entries of an XREADGROUP reply for one stream (RESP2 array or RESP3 map).
fn stream_entries(reply: &R) -> Vec<(String, Vec<String>)> {
    match reply {
        R::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                R::Array(kv) => kv.get(1).map(entries_of),
                _ => None,
            })
            .flatten()
            .collect(),
        R::Map(kv) => kv.iter().flat_map(|(_, v)| entries_of(v)).collect(),
        _ => vec![],
    }
}

pub(crate) fn event(source: &str, id: &str, fields: &[String]) -> CloudEvent {
    let mut ev = CloudEvent::new(id.to_string(), source.to_string(), "dev.knative.sources.redisstream");
    ev.datacontenttype = Some("application/json".into());
    ev.data = Some(Bytes::from(serde_json::to_vec(fields).expect("strings are JSON")));
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_events_are_eventing_redis_shaped() {
        let entry = |id: &str| {
            R::Array(vec![
                R::BulkString(id.into()),
                R::Array(vec![R::BulkString(b"k".to_vec()), R::BulkString(b"v".to_vec())]),
            ])
        };
        let reply =
            R::Array(vec![R::Array(vec![R::BulkString(b"s".to_vec()), R::Array(vec![entry("1-0"), entry("2-0")])])]);
        let got = stream_entries(&reply);
        assert_eq!(
            got,
            vec![("1-0".into(), vec!["k".into(), "v".into()]), ("2-0".into(), vec!["k".into(), "v".into()])]
        );
        assert!(stream_entries(&R::Nil).is_empty());
        let ev = event("redis://h:6379/s", "1-0", &got[0].1);
        assert_eq!((ev.id.as_str(), ev.ty.as_str()), ("1-0", "dev.knative.sources.redisstream"));
        assert_eq!(ev.data.as_deref(), Some(&b"[\"k\",\"v\"]"[..]));
    }
}
