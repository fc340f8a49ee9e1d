//! Per-message acknowledgement on an offset log: a consumer's durable
//! position is a committed offset *plus* the ranges above it that are
//! already final (as Kafka consumers and JetStream keep them), so a restart
//! behind one stuck event redelivers only what was still in flight.

use std::collections::BTreeSet;

/// Position of a record in a log or partition.
pub type Offset = u64;

/// At most this many acknowledged ranges are persisted; beyond it the highest
/// are dropped, which can only cause redelivery, never loss.
pub const MAX_ACK_RANGES: usize = 4096;

/// A consumer's durable position: every offset below `committed` is final,
/// and so is every offset in an `acked` range (`[start, end)`, sorted,
/// disjoint, all above `committed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    pub committed: Offset,
    pub acked: Vec<(Offset, Offset)>,
}

impl AckState {
    pub fn at(committed: Offset) -> Self {
        AckState { committed, acked: vec![] }
    }

    /// Drops ranges that are empty, below `committed` or past `end`, and keeps at most [`MAX_ACK_RANGES`].
    pub fn normalized(mut self, end: Offset) -> Self {
        let c = self.committed;
        self.acked.retain(|(s, e)| s < e && *s > c && *e <= end);
        self.acked.sort_unstable();
        self.acked.dedup_by(|b, a| b.0 < a.1); // overlapping ranges: keep the first
        self.acked.truncate(MAX_ACK_RANGES);
        self
    }

    /// Encodes as `count: u32 LE`, then `count` pairs of `u64 LE`.
    pub fn encode_ranges(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.acked.len() as u32).to_le_bytes());
        for (s, e) in &self.acked {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
    }

    /// The inverse of [`AckState::encode_ranges`]; `None` if malformed or too long.
    pub fn decode_ranges(b: &[u8]) -> Option<Vec<(Offset, Offset)>> {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        if n > MAX_ACK_RANGES || b.len() != 4 + 16 * n {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some((0..n).map(|k| (word(4 + 16 * k), word(12 + 16 * k))).collect())
    }
}

/// The bookkeeping of one consumer: what it has handed out, what is still in
/// flight, and what was already final before a restart. Pure: no IO.
#[derive(Debug, Default)]
pub struct AckTracker {
    /// Every offset below this has been handed out or skipped.
    next: Offset,
    /// Handed out and not yet final.
    pending: BTreeSet<Offset>,
    /// Final before the last restart, at or above `next` (sorted, disjoint).
    skip: Vec<(Offset, Offset)>,
    /// Counts changes, so a caller can skip rebuilding an unchanged state.
    generation: u64,
}

impl AckTracker {
    /// Resumes from a persisted state: reading starts at `committed`, and the
    /// acknowledged ranges above it are skipped.
    pub fn resume(state: AckState) -> Self {
        let mut skip = state.acked;
        skip.retain(|(s, e)| s < e && *e > state.committed);
        AckTracker { next: state.committed, pending: BTreeSet::new(), skip, generation: 0 }
    }

    /// The next offset not yet seen.
    pub fn next(&self) -> Offset {
        self.next
    }

    /// Changes with every change of the tracker's state.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// True if `offset` is handed out and not yet final.
    pub fn is_pending(&self, offset: Offset) -> bool {
        self.pending.contains(&offset)
    }

    /// True if `offset` was already final before the restart (do not deliver it
    /// again). Marks it seen either way when it is at or above `next`.
    pub fn already_done(&mut self, offset: Offset) -> bool {
        while self.skip.first().is_some_and(|(_, e)| *e <= offset) {
            self.skip.remove(0);
        }
        let done = self.skip.first().is_some_and(|(s, _)| *s <= offset);
        self.next = self.next.max(offset + 1);
        self.generation += 1;
        done
    }

    /// Everything below `offset` was seen and needs nothing (filtered out or absent).
    pub fn seen_upto(&mut self, offset: Offset) {
        if offset > self.next {
            self.generation += 1;
        }
        self.next = self.next.max(offset);
        while self.skip.first().is_some_and(|(_, e)| *e <= self.next) {
            self.skip.remove(0);
        }
    }

    /// `offset` is handed out and in flight.
    pub fn start(&mut self, offset: Offset) {
        self.generation += 1;
        self.pending.insert(offset);
        self.next = self.next.max(offset + 1);
    }

    /// `offset` reached a final outcome.
    pub fn finish(&mut self, offset: Offset) {
        self.generation += 1;
        self.pending.remove(&offset);
    }

    /// The lowest offset that is not final.
    pub fn committed(&self) -> Offset {
        self.pending.first().copied().unwrap_or(self.next)
    }

    /// The durable form: the committed offset, the finished gaps between
    /// in-flight offsets, and the pre-restart ranges not yet reached.
    pub fn state(&self) -> AckState {
        let mut acked = Vec::with_capacity(self.pending.len() + self.skip.len());
        let mut it = self.pending.iter().copied().peekable();
        while let Some(p) = it.next() {
            let end = it.peek().copied().unwrap_or(self.next);
            if p + 1 < end {
                acked.push((p + 1, end));
            }
        }
        for &(s, e) in &self.skip {
            let s = s.max(self.next);
            match acked.last_mut() {
                _ if s >= e => {}
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => acked.push((s, e)),
            }
        }
        let mut committed = self.committed();
        // A range that starts at the committed offset is final too: fold it in.
        if let Some(&(s, e)) = acked.first()
            && s <= committed
        {
            committed = committed.max(e);
            acked.remove(0);
        }
        acked.truncate(MAX_ACK_RANGES);
        AckState { committed, acked }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stuck_offset_keeps_everything_after_it_acknowledged() {
        let mut t = AckTracker::resume(AckState::at(10));
        for o in 10..20 {
            t.start(o);
        }
        for o in 11..20 {
            t.finish(o);
        }
        assert_eq!(t.state(), AckState { committed: 10, acked: vec![(11, 20)] });
        // After a restart only offset 10 is delivered again.
        let mut r = AckTracker::resume(t.state());
        let redelivered: Vec<Offset> = (10..25).filter(|o| !r.already_done(*o)).collect();
        assert_eq!(redelivered, [10, 20, 21, 22, 23, 24]);
    }

    #[test]
    fn unreached_ranges_survive_a_second_restart() {
        let mut r = AckTracker::resume(AckState { committed: 5, acked: vec![(6, 9), (12, 15)] });
        assert!(!r.already_done(5));
        r.start(5);
        // Nothing beyond 5 seen yet: both ranges are still final.
        assert_eq!(r.state(), AckState { committed: 5, acked: vec![(6, 9), (12, 15)] });
        r.finish(5);
        assert!(r.already_done(6));
        let s = r.state();
        assert_eq!(s, AckState { committed: 9, acked: vec![(12, 15)] });
        let mut again = AckTracker::resume(s);
        let redelivered: Vec<Offset> = (again.next()..16).filter(|o| !again.already_done(*o)).collect();
        assert_eq!(redelivered, [9, 10, 11, 15]);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let s = AckState { committed: 3, acked: vec![(4, 7), (9, 10)] };
        let mut b = vec![];
        s.encode_ranges(&mut b);
        assert_eq!(AckState::decode_ranges(&b), Some(s.acked.clone()));
        assert_eq!(AckState::decode_ranges(&b[..b.len() - 1]), None);
        assert_eq!(AckState::decode_ranges(&[0xff; 4]), None);
    }
}
