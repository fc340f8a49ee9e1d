//! `spate replay trigger/NAME`: redelivers the events a Broker's log still
//! retains, from an offset or a time, to one Trigger and no other. The replay
//! reads the log on its own (the trigger's committed position does not move),
//! applies the trigger's filter, and delivers through the trigger's own plan:
//! subscriber, retry policy, dead-letter sink, replies into the broker, and
//! its counters and `tail` outcomes. It covers the events stored before it
//! started; later ones reach the trigger as usual.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use spate_core::storage;
use spate_log::{EventLog, LogError, Offset};
use tokio::sync::mpsc;

use crate::Eventing;
use crate::broker::Storage;
use crate::trigger::{Shared, deliver};

/// Records read from the log at a time.
const CHUNK: usize = 256;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// This offset of the broker's log (or the earliest retained one after it).
    Offset(Offset),
    /// The first event stored at or after this time (milliseconds since the epoch).
    TimeMs(i64),
}

/// How far a replay got. `total` is the number of records in its range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayProgress {
    pub from_offset: Offset,
    pub total: u64,
    pub scanned: u64,
    pub matched: u64,
    pub delivered: u64,
    /// Dead-lettered or dropped (see the trigger's `status.spate.recentFailures`).
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("trigger {0} is not running (does it exist, and is it Ready?)")]
    NotRunning(String),
    #[error(
        "trigger {0} reads a shared engine's stream, which keeps an event only until every trigger acknowledged it: \
         nothing is retained to replay (replay needs the embedded log, broker class MTChannelBasedBroker)"
    )]
    NotRetained(String),
    #[error("reading the broker's log: {0}")]
    Log(#[from] LogError),
    #[error("the replay was stopped (its client went away)")]
    Stopped,
}

/// The first offset in `[start, end)` whose record was stored at or after `t_ms`
/// (binary search: records are appended in time order).
async fn offset_at(log: &dyn EventLog, t_ms: i64, start: Offset, end: Offset) -> Result<Offset, LogError> {
    let (mut lo, mut hi) = (start, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match log.read(mid, 1).await?.first() {
            Some(r) if r.timestamp_ms < t_ms => lo = r.offset.max(mid) + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

impl Eventing {
    /// Replays to trigger `namespace/name`, sending progress after each chunk;
    /// stops if the progress receiver goes away.
    pub async fn replay(
        &self,
        namespace: &str,
        name: &str,
        from: ReplayFrom,
        progress: mpsc::Sender<ReplayProgress>,
    ) -> Result<ReplayProgress, ReplayError> {
        let who = format!("{namespace}/{name}");
        let key = (namespace.to_string(), name.to_string());
        let (plan, stats) = {
            let triggers = self.triggers.lock().await;
            if triggers.stream.contains_key(&key) {
                return Err(ReplayError::NotRetained(who));
            }
            let w = triggers.log.get(&key).ok_or_else(|| ReplayError::NotRunning(who.clone()))?;
            (w.plan.clone(), w.stats.clone())
        };
        let broker = self.broker(namespace, &plan.source).ok_or_else(|| ReplayError::NotRunning(who.clone()))?;
        let Storage::Log { log, .. } = &broker.storage else { return Err(ReplayError::NotRetained(who)) };
        let log = log.clone();
        let (start, end) = (log.start_offset(), log.end_offset());
        let first = match from {
            ReplayFrom::Offset(n) => n.clamp(start, end),
            ReplayFrom::TimeMs(t) => offset_at(log.as_ref(), t, start, end).await?,
        };
        let in_flight = plan.max_in_flight.max(1);
        let shared = Shared::new(plan, self.dispatcher.clone(), Some(broker.clone()), stats);
        let mut p = ReplayProgress { from_offset: first, total: end - first, ..Default::default() };
        // The range first: a caller learns the replay started (or why not) before any delivery.
        progress.send(p).await.map_err(|_| ReplayError::Stopped)?;
        let mut pos = first;
        while pos < end {
            let records = log.read(pos, CHUNK).await?;
            let Some(last) = records.last() else { break };
            pos = last.offset + 1;
            let mut running = FuturesUnordered::new();
            for r in records.iter().filter(|r| r.offset < end) {
                p.scanned += 1;
                let Ok(ev) = storage::decode(&r.payload) else { continue };
                if !shared.plan().filter.matches_guarded(&ev) {
                    continue;
                }
                p.matched += 1;
                if running.len() >= in_flight
                    && let Some(ok) = running.next().await
                {
                    count(&mut p, ok);
                }
                let shared = &shared;
                running.push(async move { deliver(shared, &ev, Default::default()).await });
            }
            while let Some(ok) = running.next().await {
                count(&mut p, ok);
            }
            progress.send(p).await.map_err(|_| ReplayError::Stopped)?;
        }
        Ok(p)
    }
}

fn count(p: &mut ReplayProgress, delivered: bool) {
    if delivered {
        p.delivered += 1;
    } else {
        p.failed += 1;
    }
}
