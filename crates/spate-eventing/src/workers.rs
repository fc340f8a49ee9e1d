//! The running workers of one kind (Triggers, or Subscriptions), whatever
//! their source's storage: a `TriggerWorker` on the embedded log or a
//! `StreamWorker` on a shared engine's stream. One place decides which runs,
//! restarts a worker whose plan or source changed, and removes consumers of
//! deleted resources.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use spate_delivery::Dispatcher;
use spate_log::MessageStream;

use crate::broker::Broker;
use crate::feed::Feed;
use crate::stream_worker::StreamWorker;
use crate::trigger::{TriggerStats, TriggerWorker, WorkerPlan};

type Key = (String, String);

/// Where a worker reads from.
pub(crate) enum Source<'a> {
    Log(&'a Arc<Feed>),
    Stream(&'a Arc<dyn MessageStream>),
}

#[derive(Default)]
pub(crate) struct Workers {
    pub log: HashMap<Key, TriggerWorker>,
    pub stream: HashMap<Key, StreamWorker>,
}

impl Workers {
    /// Runs `plan` on `source` unless an equal worker already does.
    pub async fn place(
        &mut self,
        key: Key,
        plan: WorkerPlan,
        source: Source<'_>,
        broker: Option<Arc<Broker>>,
        dispatcher: &Dispatcher,
        ack_wait: Duration,
    ) {
        match source {
            Source::Log(feed) => {
                if let Some(old) = self.stream.remove(&key) {
                    old.stop().await;
                }
                if self.log.get(&key).is_some_and(|w| *w.plan == plan && Arc::ptr_eq(&w.feed, feed)) {
                    return;
                }
                if let Some(old) = self.log.remove(&key) {
                    old.stop().await;
                }
                self.log.insert(key, TriggerWorker::start(plan, feed.clone(), broker, dispatcher.clone()).await);
            }
            Source::Stream(stream) => {
                if let Some(old) = self.log.remove(&key) {
                    old.stop().await;
                }
                if self.stream.get(&key).is_some_and(|w| *w.plan == plan && Arc::ptr_eq(&w.stream, stream)) {
                    return;
                }
                if let Some(old) = self.stream.remove(&key) {
                    old.stop().await;
                }
                let w = StreamWorker::start(plan, stream.clone(), broker, dispatcher.clone(), ack_wait).await;
                self.stream.insert(key, w);
            }
        }
    }

    /// Stops `key`'s worker, keeping its position (it may come back).
    pub async fn stop(&mut self, key: &Key) {
        if let Some(w) = self.log.remove(key) {
            w.stop().await;
        }
        if let Some(w) = self.stream.remove(key) {
            w.stop().await;
        }
    }

    /// Workers not in `keep` were deleted: stopped, and their consumers removed.
    pub async fn remove_except(&mut self, keep: &HashSet<Key>) {
        let gone: Vec<Key> = self.log.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(w) = self.log.remove(&key) {
                let (feed, consumer) = (w.feed.clone(), w.plan.consumer());
                w.stop().await;
                if let Err(e) = feed.log.remove_consumer(&consumer).await {
                    tracing::warn!(consumer = %consumer, error = %e, "could not delete the consumer's position");
                }
            }
        }
        let gone: Vec<Key> = self.stream.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(w) = self.stream.remove(&key) {
                let (stream, consumer) = (w.stream.clone(), w.plan.consumer());
                w.stop().await;
                if let Err(e) = stream.remove_consumer(&consumer).await {
                    tracing::warn!(consumer = %consumer, error = %e, "could not delete the consumer");
                }
            }
        }
    }

    /// Takes every worker reading `namespace/source` out, still running (the
    /// caller stops them, or lets them drain first).
    pub fn take_source(&mut self, namespace: &str, source: &str) -> Vec<Worker> {
        let reads = |p: &WorkerPlan| p.namespace == namespace && p.source == source;
        let keys: Vec<Key> = self.stream.iter().filter(|(_, w)| reads(&w.plan)).map(|(k, _)| k.clone()).collect();
        let mut out: Vec<Worker> = keys.iter().filter_map(|k| self.stream.remove(k)).map(Worker::Stream).collect();
        let keys: Vec<Key> = self.log.iter().filter(|(_, w)| reads(&w.plan)).map(|(k, _)| k.clone()).collect();
        out.extend(keys.iter().filter_map(|k| self.log.remove(k)).map(Worker::Log));
        out
    }

    pub fn stats(&self, key: &Key) -> Option<Arc<TriggerStats>> {
        self.log.get(key).map(|w| w.stats.clone()).or_else(|| self.stream.get(key).map(|w| w.stats.clone()))
    }

    /// Events the worker `key` has not yet finished with (its backlog), if it runs.
    pub async fn backlog_of(&self, key: &Key) -> Option<u64> {
        if let Some(w) = self.log.get(key) {
            let log = &w.feed.log;
            let committed = log.committed_state(&w.plan.consumer()).await.ok().flatten().map_or(0, |s| s.committed);
            return Some(log.end_offset().saturating_sub(committed));
        }
        let w = self.stream.get(key)?;
        w.stream.backlog(&w.plan.consumer()).await.ok()
    }

    /// Events not yet delivered by the workers whose subscriber URL starts with `address`.
    pub async fn backlog_for(&self, address: &str) -> u64 {
        let serves = |url: &str| {
            url.starts_with(address) && matches!(url.as_bytes().get(address.len()), None | Some(b'/' | b'?'))
        };
        let mut total = 0;
        for w in self.log.values().filter(|w| serves(&w.plan.subscriber_url)) {
            let log = &w.feed.log;
            let committed = log.committed_state(&w.plan.consumer()).await.ok().flatten().map_or(0, |s| s.committed);
            total += log.end_offset().saturating_sub(committed);
        }
        for w in self.stream.values().filter(|w| serves(&w.plan.subscriber_url)) {
            total += w.stream.backlog(&w.plan.consumer()).await.unwrap_or(0);
        }
        total
    }

    pub async fn stop_all(&mut self) {
        for (_, w) in self.log.drain() {
            w.stop().await;
        }
        for (_, w) in self.stream.drain() {
            w.stop().await;
        }
    }
}

/// One running worker, whatever its source's storage.
pub(crate) enum Worker {
    Log(TriggerWorker),
    Stream(StreamWorker),
}

impl Worker {
    pub async fn stop(self) {
        match self {
            Worker::Log(w) => w.stop().await,
            Worker::Stream(w) => w.stop().await,
        }
    }

    /// Everything its source holds has been settled (committed, or acknowledged
    /// by whichever instance took it). An engine that cannot answer: not yet.
    pub async fn caught_up(&self) -> bool {
        match self {
            Worker::Log(w) => {
                let state = w.feed.log.committed_state(&w.plan.consumer()).await.ok().flatten();
                state.map_or(0, |s| s.committed) >= w.feed.log.end_offset()
            }
            Worker::Stream(w) => w.stream.backlog(&w.plan.consumer()).await.is_ok_and(|n| n == 0),
        }
    }
}
