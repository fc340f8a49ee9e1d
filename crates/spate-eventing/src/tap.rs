//! Watching events flow (`spate tail`): every event a Broker or Channel stores
//! is offered, after it is stored, to whoever listens, and so is what became of
//! each event a Trigger took (delivered, dead-lettered, dropped). Nothing is cloned or
//! sent when nobody listens; a slow listener misses events (told how many),
//! never slows the data plane.

use std::sync::Arc;

use spate_core::CloudEvent;
use tokio::sync::broadcast;

use crate::event_types::EventTypes;

/// Events a listener may fall behind by before it misses some.
const BUFFER: usize = 4096;

/// One stored event and where: `broker/<ns>/<name>` or `channel/<ns>/<name>`;
/// or one event a trigger finished with (`trigger/<ns>/<name>`) and its outcome.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub target: String,
    pub event: CloudEvent,
    /// Triggers: what became of the event.
    pub outcome: Option<String>,
}

/// Also carries the [`EventTypes`] registry: every Broker and Channel holds a
/// tap, and each reports the types it stores there.
#[derive(Clone)]
pub struct Tap {
    tx: broadcast::Sender<Arc<Tapped>>,
    pub types: Arc<EventTypes>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap { tx: broadcast::channel(BUFFER).0, types: Arc::default() }
    }
}

impl Tap {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Tapped>> {
        self.tx.subscribe()
    }

    /// True when someone listens (callers skip the copy otherwise).
    pub fn active(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn offer(&self, target: &str, events: impl IntoIterator<Item = CloudEvent>) {
        for event in events {
            let _ = self.tx.send(Arc::new(Tapped { target: target.to_string(), event, outcome: None }));
        }
    }

    /// A trigger finished with `event`: `outcome` says how.
    pub fn offer_outcome(&self, target: &str, event: CloudEvent, outcome: String) {
        let _ = self.tx.send(Arc::new(Tapped { target: target.to_string(), event, outcome: Some(outcome) }));
    }
}
