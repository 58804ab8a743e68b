//! The durable position: the LSN below which every byte is stored.
//!
//! Uploads finish out of order (segments and pieces run in parallel), but the
//! position reported to Postgres may only move over bytes that are all
//! stored. Finished ranges are merged here, and the position advances only
//! across a contiguous run starting at it.

use pgpitr_types::Lsn;

#[derive(Debug, Clone)]
pub struct DurableTracker {
    durable: Lsn,
    /// Finished ranges beyond `durable`: sorted, merged, non-adjacent.
    done: Vec<(Lsn, Lsn)>,
}

impl DurableTracker {
    pub fn new(durable: Lsn) -> Self {
        DurableTracker { durable, done: Vec::new() }
    }

    pub fn durable(&self) -> Lsn {
        self.durable
    }

    /// Records that `start..end` is stored; returns true if the durable
    /// position moved.
    pub fn complete(&mut self, start: Lsn, end: Lsn) -> bool {
        if end <= self.durable || start >= end {
            return false;
        }
        let start = start.max(self.durable);
        let at = self.done.partition_point(|r| r.1 < start);
        let mut merged = (start, end);
        let mut last = at;
        while last < self.done.len() && self.done[last].0 <= merged.1 {
            merged.0 = merged.0.min(self.done[last].0);
            merged.1 = merged.1.max(self.done[last].1);
            last += 1;
        }
        self.done.splice(at..last, [merged]);
        if self.done[0].0 <= self.durable {
            self.durable = self.done.remove(0).1;
            return true;
        }
        false
    }

    /// Bytes stored beyond a hole, waiting for it to fill.
    pub fn pending_ranges(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_contiguous_ranges() {
        let mut t = DurableTracker::new(Lsn(100));
        assert!(!t.complete(Lsn(200), Lsn(300)));
        assert_eq!(t.durable(), Lsn(100));
        assert!(!t.complete(Lsn(150), Lsn(200)));
        assert_eq!(t.durable(), Lsn(100));
        assert!(t.complete(Lsn(100), Lsn(150)));
        assert_eq!(t.durable(), Lsn(300));
        assert_eq!(t.pending_ranges(), 0);
    }

    #[test]
    fn overlapping_and_stale_ranges() {
        let mut t = DurableTracker::new(Lsn(0));
        assert!(!t.complete(Lsn(50), Lsn(60)));
        assert!(!t.complete(Lsn(55), Lsn(80)));
        // A complete segment covering pieces already stored.
        assert!(t.complete(Lsn(0), Lsn(70)));
        assert_eq!(t.durable(), Lsn(80));
        assert!(!t.complete(Lsn(10), Lsn(20)), "a range already durable changes nothing");
        assert!(!t.complete(Lsn(90), Lsn(90)), "an empty range changes nothing");
        assert_eq!(t.durable(), Lsn(80));
    }

    #[test]
    fn randomized_against_a_bitmap() {
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut t = DurableTracker::new(Lsn(0));
            let mut bitmap = [false; 64];
            for _ in 0..40 {
                let a = rng.u64(0..64);
                let b = rng.u64(a..=64);
                t.complete(Lsn(a), Lsn(b));
                for bit in bitmap.iter_mut().take(b as usize).skip(a as usize) {
                    *bit = true;
                }
                let expect = bitmap.iter().position(|x| !x).unwrap_or(64) as u64;
                assert_eq!(t.durable(), Lsn(expect), "seed {seed}");
            }
        }
    }
}
