//! In-memory backend: fast, not durable. Used for tests and for the opt-in
//! memory mode of channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::{BoxFuture, EventLog, LogBackend, LogError, Offset, Record, now_ms};

pub struct MemoryLog {
    inner: Mutex<Inner>,
    end_tx: watch::Sender<Offset>,
}

struct Inner {
    records: Vec<Record>,
    consumers: HashMap<String, Offset>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog {
            inner: Mutex::new(Inner { records: vec![], consumers: HashMap::new() }),
            end_tx: watch::channel(0).0,
        }
    }
}

impl EventLog for MemoryLog {
    fn append(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, Result<Offset, LogError>> {
        let mut g = self.inner.lock().expect("memory log lock");
        let first = g.records.len() as Offset;
        let ts = now_ms();
        for (i, payload) in payloads.into_iter().enumerate() {
            g.records.push(Record { offset: first + i as Offset, timestamp_ms: ts, payload });
        }
        let end = g.records.len() as Offset;
        drop(g);
        self.end_tx.send_replace(end);
        Box::pin(async move { Ok(first) })
    }
    fn read(&self, from: Offset, max: usize) -> BoxFuture<'_, Result<Vec<Record>, LogError>> {
        let g = self.inner.lock().expect("memory log lock");
        let from = (from as usize).min(g.records.len());
        let out = g.records[from..(from + max).min(g.records.len())].to_vec();
        Box::pin(async move { Ok(out) })
    }
    fn end_offset(&self) -> Offset {
        self.inner.lock().expect("memory log lock").records.len() as Offset
    }
    fn start_offset(&self) -> Offset {
        0
    }
    fn watch_end(&self) -> watch::Receiver<Offset> {
        self.end_tx.subscribe()
    }
    fn commit(&self, consumer: &str, next: Offset) -> Result<(), LogError> {
        self.inner.lock().expect("memory log lock").consumers.insert(consumer.to_string(), next);
        Ok(())
    }
    fn committed(&self, consumer: &str) -> Option<Offset> {
        self.inner.lock().expect("memory log lock").consumers.get(consumer).copied()
    }
    fn remove_consumer(&self, consumer: &str) -> Result<(), LogError> {
        self.inner.lock().expect("memory log lock").consumers.remove(consumer);
        Ok(())
    }
}

/// Keeps every opened log for the life of the process.
#[derive(Default)]
pub struct MemoryBackend {
    logs: Mutex<HashMap<String, Arc<MemoryLog>>>,
}

impl LogBackend for MemoryBackend {
    fn open(&self, name: &str) -> Result<Arc<dyn EventLog>, LogError> {
        let mut g = self.logs.lock().expect("memory backend lock");
        Ok(g.entry(name.to_string()).or_default().clone())
    }
    fn remove(&self, name: &str) -> Result<(), LogError> {
        self.logs.lock().expect("memory backend lock").remove(name);
        Ok(())
    }
}
