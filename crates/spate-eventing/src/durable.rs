//! The in-flight bound as a crash sees it. After a kill -9 a worker
//! redelivers every event it started whose final outcome is not in a
//! position already written to storage: the deliveries still running, and
//! those that finished after the last written commit. So a worker may start
//! a delivery only while `running + finished-but-not-written < max_in_flight`;
//! then no crash redelivers more than the bound, whatever the event rate.
//! Pure bookkeeping; the worker feeds it (`finished`, `commit_started`,
//! `commit_written`) and asks `room`.

/// Counts of finished deliveries and how many of them a written position covers.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    finished: u64,
    written: u64,
}

impl Durability {
    /// One delivery reached its final outcome.
    pub fn finished(&mut self) {
        self.finished += 1;
    }

    /// A commit of the current position starts: what it covers once written.
    pub fn commit_started(&self) -> u64 {
        self.finished
    }

    /// A commit started at `covers` was written.
    pub fn commit_written(&mut self, covers: u64) {
        self.written = self.written.max(covers);
    }

    /// The position in storage already equals the current one: every finished delivery is covered.
    pub fn all_written(&mut self) {
        self.written = self.finished;
    }

    /// Finished deliveries a crash would still send again.
    pub fn unwritten(&self) -> usize {
        (self.finished - self.written) as usize
    }

    /// Whether another delivery may start beside `running` ones.
    pub fn room(&self, running: usize, max_in_flight: usize) -> bool {
        running + self.unwritten() < max_in_flight.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_deliveries_hold_their_slot_until_a_written_commit_covers_them() {
        let mut d = Durability::default();
        assert!(d.room(9, 10));
        for _ in 0..10 {
            d.finished();
        }
        // Nothing running, but ten finished outcomes only in memory: a crash resends them.
        assert!(!d.room(0, 10));
        let covers = d.commit_started();
        d.finished();
        d.commit_written(covers);
        // The commit covered ten; the eleventh finished after it started.
        assert_eq!(d.unwritten(), 1);
        assert!(d.room(8, 10) && !d.room(9, 10));
        // A stale completion never moves the mark back.
        d.commit_written(3);
        assert_eq!(d.unwritten(), 1);
        d.all_written();
        assert_eq!(d.unwritten(), 0);
    }
}
