//! When the open segment's pending bytes are handed to storage: the
//! schedule of its pieces (and journal appends). Pure: time comes in as
//! arguments, so the tests below drive it with a fake clock.
//!
//! - By interval (the default): WAL must be durable within the flush
//!   interval of its arrival, so a piece starts early enough for an upload
//!   of twice the recent upload time to end in time.
//! - At once (`--synchronous` on object storage, and a bounded range):
//!   pieces pipeline the storage round trips, up to [`SYNC_PIECES_IN_FLIGHT`].
//! - Journal (`--synchronous` on a local repository): one append at a time;
//!   each takes what arrived while the previous one synced.

use std::time::Duration;
use tokio::time::Instant;

/// How much earlier than its deadline a piece is started at least: for the
/// upload, the status message and the server's update of its flush
/// position. With 100 ms, WAL was durable 0.90-1.00 s after it arrived (S3,
/// TPC-B), on the bound; 150 ms leaves a margin for scheduling delays.
pub(crate) const MIN_FLUSH_LEAD: Duration = Duration::from_millis(150);

/// Pieces stored at once in synchronous mode.
pub(crate) const SYNC_PIECES_IN_FLIGHT: usize = 4;

/// In synchronous mode, how long WAL that arrives while a piece is in flight
/// waits for more commits to join it before it gets a piece of its own. It
/// is at most this much latency, and only while a store is slower than it;
/// every piece is a request the object store pays for in CPU or money. At 4
/// in flight without it, most commits travelled alone (0.77 pieces per
/// TPC-B transaction); with 1 ms, tps rose 1,099 → 1,303 and s3s-fs CPU per
/// transaction fell 35% (FINDINGS.md, session 7).
pub(crate) const SYNC_PIECE_GATHER: Duration = Duration::from_millis(1);

/// The upload time assumed before any upload has finished.
const INITIAL_LATENCY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Durable within this long of arrival.
    Interval(Duration),
    AtOnce,
    Journal,
}

#[derive(Debug, Clone)]
pub(crate) struct PieceSchedule {
    /// Smoothed time one upload takes.
    latency: Duration,
}

impl PieceSchedule {
    pub(crate) fn new() -> PieceSchedule {
        PieceSchedule { latency: INITIAL_LATENCY }
    }

    /// Takes in the time an upload took.
    pub(crate) fn uploaded(&mut self, took: Duration) {
        self.latency = (self.latency * 7 + took) / 8;
    }

    /// When WAL pending since `since` is due to be handed to storage, with
    /// `in_flight` pieces (or appends) being stored; `None`: nothing is
    /// pending, or it waits for one in flight to finish.
    pub(crate) fn due(&self, mode: Mode, since: Option<Instant>, in_flight: usize) -> Option<Instant> {
        let since = since?;
        match mode {
            Mode::Journal => (in_flight == 0).then_some(since),
            // With nothing in flight, at once; otherwise a new piece waits
            // [`SYNC_PIECE_GATHER`], so that it carries every commit of that
            // window, not only the first.
            Mode::AtOnce => match in_flight {
                0 => Some(since),
                n if n < SYNC_PIECES_IN_FLIGHT => Some(since + SYNC_PIECE_GATHER),
                _ => None,
            },
            Mode::Interval(interval) => {
                let lead = (self.latency * 2).max(MIN_FLUSH_LEAD).min(interval / 2);
                Some(since + interval - lead)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_piece_waits_to_gather_commits_only_while_another_is_in_flight() {
        let (s, t) = (PieceSchedule::new(), Instant::now());
        assert_eq!(s.due(Mode::AtOnce, Some(t), 0), Some(t));
        assert_eq!(s.due(Mode::AtOnce, Some(t), 1), Some(t + SYNC_PIECE_GATHER));
        assert_eq!(s.due(Mode::AtOnce, Some(t), SYNC_PIECES_IN_FLIGHT - 1), Some(t + SYNC_PIECE_GATHER));
        assert_eq!(s.due(Mode::AtOnce, Some(t), SYNC_PIECES_IN_FLIGHT), None);
        assert_eq!(s.due(Mode::Journal, Some(t), 0), Some(t));
        assert_eq!(s.due(Mode::Journal, Some(t), 1), None);
        for mode in [Mode::AtOnce, Mode::Journal, Mode::Interval(ms(1000))] {
            assert_eq!(s.due(mode, None, 0), None, "{mode:?}: nothing pending");
        }
    }

    #[test]
    fn the_lead_follows_the_upload_time_within_its_bounds() {
        let (mut s, t) = (PieceSchedule::new(), Instant::now());
        let second = Mode::Interval(ms(1000));
        assert_eq!(s.due(second, Some(t), 0), Some(t + ms(1000) - MIN_FLUSH_LEAD));
        for _ in 0..100 {
            s.uploaded(ms(200));
        }
        // Twice the upload time, as the time converges on 200 ms.
        let lead = t + ms(1000) - s.due(second, Some(t), 0).unwrap();
        assert!(lead > ms(390) && lead <= ms(400), "{lead:?}");
        for _ in 0..100 {
            s.uploaded(ms(5000));
        }
        // Never more than half the interval: slow storage cannot make
        // every piece start at once.
        assert_eq!(s.due(second, Some(t), 0), Some(t + ms(500)));
    }

    /// A fake clock over arrivals every 7 ms and uploads that take what the
    /// storage's latency pattern says: with uploads steady at up to a
    /// quarter of the interval, every byte is durable within the interval
    /// of its arrival, and pieces are not cut more often than needed.
    #[test]
    fn with_steady_storage_wal_is_durable_within_the_interval() {
        let interval = ms(1000);
        for latency_ms in [1, 20, 100, 180, 250] {
            let t0 = Instant::now();
            let mut s = PieceSchedule::new();
            let mut pending_since: Option<Instant> = None;
            // (finishes, oldest arrival it stores)
            let mut in_flight: Vec<(Instant, Instant)> = Vec::new();
            let (mut worst, mut pieces) = (Duration::ZERO, 0u32);
            let mut now = t0;
            let end = t0 + Duration::from_secs(60);
            while now < end {
                // Uploads that finished by now.
                in_flight.retain(|&(done, oldest)| {
                    if done > now {
                        return true;
                    }
                    if oldest >= t0 + Duration::from_secs(10) {
                        worst = worst.max(done - oldest); // once the upload time is learnt
                    }
                    s.uploaded(ms(latency_ms));
                    false
                });
                if (now - t0).as_millis().is_multiple_of(7) {
                    pending_since.get_or_insert(now);
                }
                if let Some(due) = s.due(Mode::Interval(interval), pending_since, in_flight.len())
                    && due <= now
                {
                    in_flight.push((now + ms(latency_ms), pending_since.take().unwrap()));
                    pieces += 1;
                }
                now += ms(1);
            }
            assert!(worst <= interval, "{latency_ms} ms uploads: WAL waited {worst:?}");
            // One piece per interval or so, not one per arrival.
            assert!(
                pieces <= 60 * 1000 / (1000 - 2 * latency_ms.max(75) as u32) + 1,
                "{latency_ms} ms: {pieces} pieces"
            );
        }
    }
}
