//! Per-message acknowledgement on an offset log: a consumer's durable
//! position is a committed offset *plus* the ranges above it that are
//! already final (as Kafka consumers and JetStream keep them), so a restart
//! behind one stuck event redelivers only what was still in flight.

use std::collections::{BTreeMap, BTreeSet};

/// Position of a record in a log or partition.
pub type Offset = u64;

/// At most this many acknowledged ranges are persisted; beyond it the highest
/// are dropped, which can only cause redelivery, never loss.
pub const MAX_ACK_RANGES: usize = 4096;

/// A consumer's durable position: every offset below `committed` is final,
/// and so is every offset in an `acked` range (`[start, end)`, sorted,
/// disjoint, all above `committed`). `attempts`: delivery attempts already
/// made at offsets not yet final (sorted by offset), so a restart continues
/// an event's retry budget instead of starting it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    pub committed: Offset,
    pub acked: Vec<(Offset, Offset)>,
    pub attempts: Vec<(Offset, u32)>,
}

impl AckState {
    pub fn at(committed: Offset) -> Self {
        AckState { committed, ..AckState::default() }
    }

    /// Encodes the attempts as `count: u32 LE`, then `count` pairs of `u64 LE`, `u32 LE`.
    pub fn encode_attempts(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.attempts.len() as u32).to_le_bytes());
        for (o, n) in &self.attempts {
            out.extend_from_slice(&o.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    /// The inverse of [`AckState::encode_attempts`]; `None` if malformed or too long.
    pub fn decode_attempts(b: &[u8]) -> Option<Vec<(Offset, u32)>> {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        if n > MAX_ACK_RANGES || b.len() != 4 + 12 * n {
            return None;
        }
        let at = |i: usize| {
            let o = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
            (o, u32::from_le_bytes(b[i + 8..i + 12].try_into().expect("4 bytes")))
        };
        Some((0..n).map(|k| at(4 + 12 * k)).collect())
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
    /// Delivery attempts made at offsets not yet final (this run's and the
    /// ones a restart found), so a restart does not reset a retry budget.
    attempts: BTreeMap<Offset, u32>,
}

impl AckTracker {
    /// Resumes from a persisted state: reading starts at `committed`, and the
    /// acknowledged ranges above it are skipped.
    pub fn resume(state: AckState) -> Self {
        let mut skip = state.acked;
        skip.retain(|(s, e)| s < e && *e > state.committed);
        let attempts = state.attempts.into_iter().filter(|(o, n)| *o >= state.committed && *n > 0).collect();
        AckTracker { next: state.committed, pending: BTreeSet::new(), skip, generation: 0, attempts }
    }

    /// Attempts already made at `offset` (before a restart, or earlier in this run).
    pub fn spent(&self, offset: Offset) -> u32 {
        self.attempts.get(&offset).copied().unwrap_or(0)
    }

    /// `attempts` attempts have now been made at the in-flight `offset`.
    pub fn record_attempts(&mut self, offset: Offset, attempts: u32) {
        if self.pending.contains(&offset) && self.spent(offset) < attempts {
            self.attempts.insert(offset, attempts);
            self.generation += 1;
        }
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
        self.attempts.remove(&offset);
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
        // Attempts at offsets still to deliver (in flight, or found by a restart and not reached yet).
        let done = |o: Offset| o < committed || acked.iter().any(|(s, e)| (*s..*e).contains(&o));
        let attempts: Vec<(Offset, u32)> =
            self.attempts.iter().filter(|(o, _)| !done(**o)).map(|(o, n)| (*o, *n)).take(MAX_ACK_RANGES).collect();
        AckState { committed, acked, attempts }
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
        assert_eq!(t.state(), AckState { committed: 10, acked: vec![(11, 20)], ..AckState::default() });
        // After a restart only offset 10 is delivered again.
        let mut r = AckTracker::resume(t.state());
        let redelivered: Vec<Offset> = (10..25).filter(|o| !r.already_done(*o)).collect();
        assert_eq!(redelivered, [10, 20, 21, 22, 23, 24]);
    }

    #[test]
    fn unreached_ranges_survive_a_second_restart() {
        let mut r = AckTracker::resume(AckState { committed: 5, acked: vec![(6, 9), (12, 15)], ..AckState::default() });
        assert!(!r.already_done(5));
        r.start(5);
        // Nothing beyond 5 seen yet: both ranges are still final.
        assert_eq!(r.state(), AckState { committed: 5, acked: vec![(6, 9), (12, 15)], ..AckState::default() });
        r.finish(5);
        assert!(r.already_done(6));
        let s = r.state();
        assert_eq!(s, AckState { committed: 9, acked: vec![(12, 15)], ..AckState::default() });
        let mut again = AckTracker::resume(s);
        let redelivered: Vec<Offset> = (again.next()..16).filter(|o| !again.already_done(*o)).collect();
        assert_eq!(redelivered, [9, 10, 11, 15]);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let s = AckState { committed: 3, acked: vec![(4, 7), (9, 10)], attempts: vec![(3, 4), (8, 2)] };
        let mut b = vec![];
        s.encode_ranges(&mut b);
        assert_eq!(AckState::decode_ranges(&b), Some(s.acked.clone()));
        assert_eq!(AckState::decode_ranges(&b[..b.len() - 1]), None);
        assert_eq!(AckState::decode_ranges(&[0xff; 4]), None);
        let mut a = vec![];
        s.encode_attempts(&mut a);
        assert_eq!(AckState::decode_attempts(&a), Some(s.attempts.clone()));
        assert_eq!(AckState::decode_attempts(&a[..a.len() - 1]), None);
    }

    #[test]
    fn attempts_at_an_unfinished_offset_survive_a_restart_and_go_when_it_is_final() {
        let mut t = AckTracker::resume(AckState::at(10));
        for o in 10..13 {
            t.start(o);
        }
        t.record_attempts(11, 3);
        t.record_attempts(12, 1);
        t.record_attempts(99, 5); // not in flight: ignored
        let g = t.generation();
        t.record_attempts(11, 2); // never moves back, no change
        assert_eq!(t.generation(), g);
        t.finish(12);
        let s = t.state();
        assert_eq!(s.attempts, [(11, 3)], "the finished offset's attempts are gone");
        // A restart: offset 11 continues its budget at 3 attempts.
        let mut r = AckTracker::resume(s);
        assert_eq!(r.spent(11), 3);
        assert_eq!(r.spent(10), 0);
        assert!(!r.already_done(11));
        r.start(11);
        r.record_attempts(11, 4);
        assert_eq!(r.state().attempts, [(11, 4)]);
        r.finish(11);
        assert!(r.state().attempts.is_empty());
    }
}
