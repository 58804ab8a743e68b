//! How fresh the repository is, for metrics: the newest commit that is
//! durable, and since when the oldest WAL not yet durable has waited.
//!
//! Entries closer than [`RESOLUTION_US`] merge, so both queues grow with
//! time, not with messages or commits; both answers err on the stale side
//! by at most that much.

use pgpitr_types::Lsn;
use std::collections::VecDeque;

const RESOLUTION_US: i64 = 10_000;

/// Beyond this many entries (100 s of unstored WAL at full resolution) new
/// WAL extends the last entry instead: memory stays bounded while storage
/// is down, and the oldest entries, the ones reported, stay exact.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// WAL up to here is covered.
    end: Lsn,
    /// Arrivals: when the first byte after the previous entry arrived.
    /// Commits: the commit time of the newest commit ending by `end`.
    time_us: i64,
    /// When the entry was opened: it takes no more after RESOLUTION_US.
    opened_us: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Freshness {
    arrivals: VecDeque<Entry>,
    commits: VecDeque<Entry>,
}

fn push(q: &mut VecDeque<Entry>, end: Lsn, time_us: i64, opened_us: i64, keep_time: bool) {
    let full = q.len() >= MAX_ENTRIES;
    match q.back_mut() {
        Some(b) if opened_us - b.opened_us < RESOLUTION_US || full => {
            b.end = b.end.max(end);
            if !keep_time {
                b.time_us = b.time_us.max(time_us);
            }
        }
        _ => q.push_back(Entry { end, time_us, opened_us }),
    }
}

impl Freshness {
    /// WAL up to `end` arrived at `now_us` (Unix µs).
    pub(crate) fn received(&mut self, end: Lsn, now_us: i64) {
        push(&mut self.arrivals, end, now_us, now_us, true);
    }

    /// A commit record ending at `end` with commit time `time_us`.
    pub(crate) fn commit(&mut self, end: Lsn, time_us: i64) {
        push(&mut self.commits, end, time_us, time_us, false);
    }

    /// WAL up to `durable` is stored: the newest commit time that became
    /// durable with it, if any.
    pub(crate) fn durable(&mut self, durable: Lsn) -> Option<i64> {
        while self.arrivals.front().is_some_and(|e| e.end <= durable) {
            self.arrivals.pop_front();
        }
        let mut newest = None;
        while let Some(e) = self.commits.front().copied().filter(|e| e.end <= durable) {
            newest = Some(newest.map_or(e.time_us, |n: i64| n.max(e.time_us)));
            self.commits.pop_front();
        }
        newest
    }

    /// When the oldest WAL not yet durable arrived (Unix µs), or 0 when
    /// everything received is durable.
    pub(crate) fn unstored_since(&self) -> i64 {
        self.arrivals.front().map_or(0, |e| e.time_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unstored_arrival_is_reported_until_it_is_durable() {
        let mut f = Freshness::default();
        assert_eq!(f.unstored_since(), 0);
        f.received(Lsn(100), 1_000_000);
        f.received(Lsn(200), 1_005_000); // merges: within 10 ms
        f.received(Lsn(300), 1_020_000);
        assert_eq!(f.unstored_since(), 1_000_000);
        f.durable(Lsn(150)); // partly stored: still the older time (stale side)
        assert_eq!(f.unstored_since(), 1_000_000);
        f.durable(Lsn(200));
        assert_eq!(f.unstored_since(), 1_020_000);
        f.durable(Lsn(300));
        assert_eq!(f.unstored_since(), 0);
    }

    #[test]
    fn a_commit_counts_once_its_record_is_durable() {
        let mut f = Freshness::default();
        f.commit(Lsn(100), 5_000_000);
        f.commit(Lsn(180), 5_004_000); // same entry, which now ends at 180
        f.commit(Lsn(300), 5_050_000);
        assert_eq!(f.durable(Lsn(99)), None);
        assert_eq!(f.durable(Lsn(179)), None, "the merged entry waits for its last commit");
        assert_eq!(f.durable(Lsn(250)), Some(5_004_000));
        assert_eq!(f.durable(Lsn(250)), None);
        assert_eq!(f.durable(Lsn(400)), Some(5_050_000));
    }

    #[test]
    fn a_steady_stream_still_opens_new_entries() {
        let mut f = Freshness::default();
        for i in 0..100 {
            f.commit(Lsn(100 + i), 1_000_000 + i as i64 * 1_000); // one per ms
        }
        assert_eq!(f.commits.len(), 10);
        assert_eq!(f.durable(Lsn(110)), Some(1_009_000));
    }

    #[test]
    fn memory_is_bounded_while_nothing_is_stored() {
        let mut f = Freshness::default();
        for i in 0..(MAX_ENTRIES as u64 * 3) {
            f.received(Lsn(i + 1), 1_000_000 + i as i64 * RESOLUTION_US);
        }
        assert_eq!(f.arrivals.len(), MAX_ENTRIES);
        assert_eq!(f.unstored_since(), 1_000_000, "the oldest entry is exact");
        f.durable(Lsn(MAX_ENTRIES as u64 * 3));
        assert!(f.arrivals.is_empty());
    }
}
