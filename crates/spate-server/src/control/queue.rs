//! A room's work queue, keyed by object: a burst of changes to one object is
//! one entry, and every change made while a reconcile runs is taken by the
//! next one (never lost, never run twice at once). Writers get a ticket and
//! can wait until a reconcile that took their change has finished.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio::sync::{Notify, watch};

use crate::store::Key;

pub struct WorkQueue {
    pending: Mutex<Pending>,
    /// Held by the controller while it reconciles (shutdown waits for it).
    running: tokio::sync::Mutex<()>,
    wake: Notify,
    /// The highest ticket a finished reconcile took.
    done: watch::Sender<u64>,
}

#[derive(Default)]
struct Pending {
    keys: BTreeSet<Key>,
    /// Reconcile even with no key (the first reconcile, a retry).
    kicked: bool,
    /// Tickets handed out so far.
    issued: u64,
}

/// What one reconcile takes from the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub keys: Vec<Key>,
    /// Finishing this batch finishes every ticket up to this one.
    pub ticket: u64,
}

impl Default for WorkQueue {
    fn default() -> Self {
        WorkQueue {
            pending: Mutex::default(),
            running: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            done: watch::channel(0).0,
        }
    }
}

impl WorkQueue {
    /// Queues `keys` (each once however often it is queued) and returns their ticket.
    pub fn add(&self, keys: impl IntoIterator<Item = Key>) -> u64 {
        let mut p = self.pending.lock().expect("work queue");
        p.keys.extend(keys);
        self.issue(&mut p)
    }

    /// Asks for a reconcile that no object's change asked for (the first one, a retry).
    pub fn kick(&self) -> u64 {
        let mut p = self.pending.lock().expect("work queue");
        p.kicked = true;
        self.issue(&mut p)
    }

    fn issue(&self, p: &mut Pending) -> u64 {
        p.issued += 1;
        self.wake.notify_one();
        p.issued
    }

    /// Waits for work and takes all of it.
    pub async fn next(&self) -> Batch {
        loop {
            let woken = self.wake.notified();
            {
                let mut p = self.pending.lock().expect("work queue");
                if p.kicked || !p.keys.is_empty() {
                    p.kicked = false;
                    return Batch { keys: std::mem::take(&mut p.keys).into_iter().collect(), ticket: p.issued };
                }
            }
            woken.await;
        }
    }

    /// Held while a reconcile runs.
    pub async fn running(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }

    /// A reconcile of `batch` finished: its writers stop waiting.
    pub fn finished(&self, batch: &Batch) {
        self.done.send_if_modified(|d| {
            let newer = batch.ticket > *d;
            *d = (*d).max(batch.ticket);
            newer
        });
    }

    /// No reconcile will run again (shutdown): every writer stops waiting, now and later.
    pub fn close(&self) {
        self.done.send_replace(u64::MAX);
    }

    /// Waits until a reconcile that took `ticket` (or a later one) has finished.
    pub async fn wait(&self, ticket: u64) {
        let mut rx = self.done.subscribe();
        // The sender lives as long as the queue, which the caller borrows.
        let _ = rx.wait_for(|d| *d >= ticket).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_api::Kind;

    fn key(n: &str) -> Key {
        (Kind::Trigger, "default".into(), n.into())
    }

    #[tokio::test]
    async fn a_burst_on_one_object_is_one_entry_and_every_ticket_finishes() {
        let q = WorkQueue::default();
        q.add([key("a")]);
        q.add([key("a"), key("b")]);
        let t = q.add([key("a")]);
        let batch = q.next().await;
        assert_eq!(batch, Batch { keys: vec![key("a"), key("b")], ticket: t });
        q.finished(&batch);
        q.wait(t).await;
        assert_eq!(*q.done.borrow(), 3);
    }

    #[tokio::test]
    async fn a_change_during_a_reconcile_is_taken_by_the_next_one() {
        let q = WorkQueue::default();
        let first = q.add([key("a")]);
        let running = q.next().await;
        let second = q.add([key("a")]);
        q.finished(&running);
        q.wait(first).await;
        assert!(*q.done.borrow() < second, "the change made meanwhile is not counted as reconciled");
        let again = q.next().await;
        assert_eq!(again, Batch { keys: vec![key("a")], ticket: second });
        q.finished(&again);
        q.wait(second).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_wakes_a_waiting_reconciler_with_no_keys() {
        let q = std::sync::Arc::new(WorkQueue::default());
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        assert!(!worker.is_finished(), "nothing queued, nothing taken");
        let t = q.kick();
        assert_eq!(worker.await.unwrap(), Batch { keys: vec![], ticket: t });
    }
}
