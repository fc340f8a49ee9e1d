//! In-memory backend: fast, not durable. Used for tests and for the opt-in
//! memory mode of channels. Records every consumer has committed are freed
//! (with at least one consumer; a log nobody consumes keeps what it holds).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::{AckState, BoxFuture, EventLog, LogBackend, LogError, Offset, Record, now_ms};

pub struct MemoryLog {
    inner: Mutex<Inner>,
    end_tx: watch::Sender<Offset>,
}

struct Inner {
    /// Records from `start` on.
    records: VecDeque<Record>,
    start: Offset,
    consumers: HashMap<String, AckState>,
}

impl Inner {
    fn end(&self) -> Offset {
        self.start + self.records.len() as Offset
    }

    /// Frees the records below the lowest committed offset.
    fn free(&mut self) {
        let Some(low) = self.consumers.values().map(|c| c.committed).min() else { return };
        while self.start < low && self.records.pop_front().is_some() {
            self.start += 1;
        }
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog {
            inner: Mutex::new(Inner { records: VecDeque::new(), start: 0, consumers: HashMap::new() }),
            end_tx: watch::channel(0).0,
        }
    }
}

impl EventLog for MemoryLog {
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Offset, LogError>> {
        let mut g = self.inner.lock().expect("memory log lock");
        let first = g.end();
        let ts = now_ms();
        for (i, payload) in payloads.into_iter().enumerate() {
            g.records.push_back(Record { offset: first + i as Offset, timestamp_ms: ts, payload });
        }
        let end = g.end();
        drop(g);
        self.end_tx.send_replace(end);
        Box::pin(async move { Ok(first) })
    }
    fn read(&self, from: Offset, max: usize) -> BoxFuture<'_, Result<Vec<Record>, LogError>> {
        let g = self.inner.lock().expect("memory log lock");
        // Below the start (freed): from the earliest retained, as the trait says.
        let skip = (from.max(g.start) - g.start) as usize;
        let out: Vec<Record> = g.records.iter().skip(skip).take(max).cloned().collect();
        Box::pin(async move { Ok(out) })
    }
    fn end_offset(&self) -> Offset {
        self.inner.lock().expect("memory log lock").end()
    }
    fn start_offset(&self) -> Offset {
        self.inner.lock().expect("memory log lock").start
    }
    fn watch_end(&self) -> watch::Receiver<Offset> {
        self.end_tx.subscribe()
    }
    fn commit_state(&self, consumer: &str, state: AckState) -> BoxFuture<'_, Result<(), LogError>> {
        let mut g = self.inner.lock().expect("memory log lock");
        g.consumers.insert(consumer.to_string(), state);
        g.free();
        Box::pin(std::future::ready(Ok(())))
    }
    fn committed_state(&self, consumer: &str) -> BoxFuture<'_, Result<Option<AckState>, LogError>> {
        let state = self.inner.lock().expect("memory log lock").consumers.get(consumer).cloned();
        Box::pin(std::future::ready(Ok(state)))
    }
    fn remove_consumer(&self, consumer: &str) -> BoxFuture<'_, Result<(), LogError>> {
        let mut g = self.inner.lock().expect("memory log lock");
        g.consumers.remove(consumer);
        g.free();
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_every_consumer_committed_are_freed() {
        let log = MemoryLog::default();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(log.append((0..10).map(|i| Bytes::from(vec![i])).collect())).unwrap();
        rt.block_on(log.commit("a", 4)).unwrap();
        rt.block_on(log.commit("b", 6)).unwrap();
        assert_eq!(log.start_offset(), 4, "the slower consumer holds the rest");
        assert_eq!(log.inner.lock().unwrap().records.len(), 6);
        let r = rt.block_on(log.read(0, 3)).unwrap();
        assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), [4, 5, 6], "freed offsets read from the start");
        rt.block_on(log.remove_consumer("a")).unwrap();
        assert_eq!(log.start_offset(), 6);
        assert_eq!(log.end_offset(), 10);
    }
}

/// Keeps every opened log for the life of the process.
#[derive(Default)]
pub struct MemoryBackend {
    logs: Mutex<HashMap<String, Arc<MemoryLog>>>,
}

impl LogBackend for MemoryBackend {
    fn open(&self, name: &str) -> BoxFuture<'_, Result<Arc<dyn EventLog>, LogError>> {
        let log: Arc<dyn EventLog> =
            self.logs.lock().expect("memory backend lock").entry(name.to_string()).or_default().clone();
        Box::pin(std::future::ready(Ok(log)))
    }
    fn remove(&self, name: &str) -> BoxFuture<'_, Result<(), LogError>> {
        self.logs.lock().expect("memory backend lock").remove(name);
        Box::pin(std::future::ready(Ok(())))
    }
}
