//! One reader per broker: it reads the log once, decodes each event once,
//! finds the triggers it matches through a [`FilterIndex`], and hands the
//! shared event to each attached trigger worker's bounded queue.
//!
//! Isolation: the router never waits for a trigger. When a trigger's queue is
//! full, the router closes it; the trigger then reads the log on its own from
//! where it stopped ("detached", the pre-router path) and asks to attach again
//! once it has caught up. An attach request names the offset the worker has
//! reached; the router attaches it exactly when its own position equals that
//! offset, so nothing is skipped or routed twice.
//!
//! Commit protocol: the router publishes `routed_upto` only after it has sent
//! (or failed to send, and closed the queue for) every event below it. A worker
//! that loads `routed_upto` and then finds its queue empty has received every
//! matching event below that offset and may commit up to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spate_core::{CloudEvent, storage};
use spate_filter::Filter;
use spate_filter::index::FilterIndex;
use spate_log::{EventLog, Offset};
use tokio::sync::{mpsc, oneshot, watch};

/// An event routed to a trigger.
pub(crate) struct Routed {
    pub offset: Offset,
    pub event: Arc<CloudEvent>,
}

pub(crate) struct AttachRequest {
    pub label: String,
    pub filter: Filter,
    /// The next offset the worker would read.
    pub at: Offset,
    pub capacity: usize,
    pub reply: oneshot::Sender<Option<mpsc::Receiver<Routed>>>,
}

/// The broker's handle on its router.
#[derive(Clone)]
pub(crate) struct RouterHandle {
    attach: mpsc::Sender<AttachRequest>,
    pub routed_upto: Arc<AtomicU64>,
}

impl RouterHandle {
    /// Asks to be attached at `at`. `None`: the router is already past `at`
    /// (keep reading alone) or gone.
    pub async fn attach(
        &self,
        label: String,
        filter: Filter,
        at: Offset,
        capacity: usize,
    ) -> Option<mpsc::Receiver<Routed>> {
        let (reply, rx) = oneshot::channel();
        self.attach.send(AttachRequest { label, filter, at, capacity, reply }).await.ok()?;
        rx.await.ok().flatten()
    }
}

struct Link {
    label: String,
    filter: Filter,
    tx: mpsc::Sender<Routed>,
}

pub(crate) fn spawn(log: Arc<dyn EventLog>, broker: String, stop: watch::Receiver<bool>) -> RouterHandle {
    let (attach, attach_rx) = mpsc::channel(64);
    let routed_upto = Arc::new(AtomicU64::new(log.end_offset()));
    let r = Router {
        log,
        broker,
        links: vec![],
        index: FilterIndex::new([]),
        pending: vec![],
        routed_upto: routed_upto.clone(),
    };
    tokio::spawn(r.run(attach_rx, stop));
    RouterHandle { attach, routed_upto }
}

struct Router {
    log: Arc<dyn EventLog>,
    broker: String,
    links: Vec<Link>,
    index: FilterIndex<usize>,
    pending: Vec<AttachRequest>,
    routed_upto: Arc<AtomicU64>,
}

impl Router {
    fn rebuild(&mut self) {
        self.index = FilterIndex::new(self.links.iter().enumerate().map(|(i, l)| (i, l.filter.clone())));
    }

    /// Answers pending attach requests at position `pos`: attach those asking
    /// for `pos`, refuse those already passed.
    fn settle(&mut self, pos: Offset) {
        let mut changed = false;
        let mut keep = vec![];
        for req in self.pending.drain(..) {
            if req.at == pos {
                let (tx, rx) = mpsc::channel(req.capacity.max(1));
                if req.reply.send(Some(rx)).is_ok() {
                    tracing::debug!(broker = %self.broker, trigger = %req.label, offset = pos, "trigger attached to the broker's router");
                    self.links.push(Link { label: req.label, filter: req.filter, tx });
                    changed = true;
                }
            } else if req.at < pos {
                let _ = req.reply.send(None);
            } else {
                keep.push(req);
            }
        }
        self.pending = keep;
        if changed {
            self.rebuild();
        }
    }

    fn publish(&self, pos: Offset) {
        self.routed_upto.store(pos, Ordering::Release);
    }

    async fn run(mut self, mut attach_rx: mpsc::Receiver<AttachRequest>, mut stop: watch::Receiver<bool>) {
        let mut pos = self.log.end_offset();
        let mut end_rx = self.log.watch_end();
        loop {
            while let Ok(req) = attach_rx.try_recv() {
                self.pending.push(req);
            }
            self.settle(pos);
            end_rx.borrow_and_update();
            let end = self.log.end_offset();
            if self.links.is_empty() && pos < end {
                // Nobody to route to: skip ahead, but stop where a worker asked to attach.
                pos = self.pending.iter().map(|r| r.at).filter(|a| *a > pos).min().unwrap_or(end).min(end);
                self.publish(pos);
                continue;
            }
            if pos < end {
                let recs = match self.log.read(pos, 256).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(broker = %self.broker, error = %e, "router: log read failed; retrying in 1s");
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                };
                for rec in recs {
                    if rec.offset < pos {
                        continue;
                    }
                    // Retention may have moved the start past `pos`.
                    pos = rec.offset;
                    self.settle(pos);
                    if let Ok(ev) = storage::decode(&rec.payload) {
                        self.route(rec.offset, Arc::new(ev));
                    } else {
                        tracing::error!(broker = %self.broker, offset = rec.offset, "router: skipping an unreadable record");
                    }
                    pos = rec.offset + 1;
                }
                self.publish(pos);
                continue;
            }
            self.publish(pos);
            tokio::select! {
                biased;
                _ = stop.changed() => return,
                req = attach_rx.recv() => match req {
                    Some(req) => self.pending.push(req),
                    None => return,
                },
                r = end_rx.changed() => if r.is_err() { return },
            }
        }
    }

    fn route(&mut self, offset: Offset, event: Arc<CloudEvent>) {
        let mut dropped = vec![];
        for &i in self.index.matching(&event) {
            let link = &self.links[i];
            if let Err(e) = link.tx.try_send(Routed { offset, event: event.clone() }) {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    tracing::debug!(broker = %self.broker, trigger = %link.label, offset, "trigger queue full; it continues on its own");
                }
                dropped.push(i);
            }
        }
        if !dropped.is_empty() {
            // Dropping the sender closes the queue *before* `routed_upto` moves past `offset`.
            dropped.sort_unstable();
            for i in dropped.into_iter().rev() {
                self.links.swap_remove(i);
            }
            self.rebuild();
        }
    }
}
