//! Object summaries (the commit-time index), read once each with ranged
//! GETs and kept for the life of the catalog, and the searches over them.

use super::path::{BackupPoint, PathObject};
use crate::object::{self, RestorePoint, TimedLsn, WalSummary};
use crate::wal::{self, WalObjectId, WalObjectKind};
use crate::{RepoError, Result};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::Storage;
use pgpitr_types::{Lsn, WalSegSize};
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes read from the start of an object for its header and summary.
pub const SUMMARY_READ: u64 = 4096;

/// An object's summary. One ranged read of its first [`SUMMARY_READ`] bytes
/// holds the header and the summary (a few hundred bytes) of nearly every
/// object, where [`wal::read_header`] reads the fixed header first and the
/// summary then: half the requests, and half the waits. That is the
/// fallback (a larger summary, a journal, or anything it should report).
async fn read_summary(storage: &dyn Storage, seg: WalSegSize, id: WalObjectId) -> Result<WalSummary, RepoError> {
    let key = id.key(seg);
    if !matches!(id.kind, WalObjectKind::Journal { .. }) {
        let buf = storage.get_range(&key, 0..SUMMARY_READ).await?;
        if object::header_len(&buf).is_ok_and(|need| need <= buf.len()) {
            return object::decode_header(&buf).map(|h| h.summary).map_err(|e| RepoError::Corrupt {
                location: storage.describe(),
                key,
                reason: e.0,
            });
        }
    }
    Ok(wal::read_header(storage, &key).await?.summary)
}

/// Object summaries, read once each with ranged GETs, many at a time.
pub struct Summaries {
    storage: Arc<dyn Storage>,
    seg: WalSegSize,
    cache: HashMap<WalObjectId, WalSummary>,
}

const PARALLEL_HEADERS: usize = 32;
/// Paths with at most this many objects listed have all their headers read
/// up front ([`Summaries::read_ahead`]): one round of waits instead of a few.
/// More would read headers no search needs (`scripts/bench catalog`).
const PRELOAD_HEADERS: usize = 2 * PARALLEL_HEADERS;

impl Summaries {
    pub fn new(storage: Arc<dyn Storage>, seg: WalSegSize) -> Self {
        Summaries { storage, seg, cache: HashMap::new() }
    }

    /// How many summaries have been read.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// The summary of `id`, if read.
    pub fn get(&self, id: &WalObjectId) -> Option<&WalSummary> {
        self.cache.get(id)
    }

    /// Reads every header of `objs` in one burst when there are at most
    /// [`PRELOAD_HEADERS`]: about as many requests as the searches make in
    /// all, but one round of waits instead of one per search step. Errors
    /// are left for the searches to meet.
    pub async fn read_ahead(&mut self, objs: &[PathObject]) {
        if objs.len() > PRELOAD_HEADERS {
            return;
        }
        let missing: Vec<WalObjectId> = objs.iter().map(|o| o.id).filter(|id| !self.cache.contains_key(id)).collect();
        let (storage, seg) = (self.storage.as_ref(), self.seg);
        let got: Vec<Option<(WalObjectId, WalSummary)>> = futures_util::stream::iter(missing)
            .map(|id| async move { read_summary(storage, seg, id).await.ok().map(|s| (id, s)) })
            .buffer_unordered(PARALLEL_HEADERS)
            .collect()
            .await;
        self.cache.extend(got.into_iter().flatten());
    }

    pub async fn load(&mut self, objs: &[PathObject]) -> Result<()> {
        let missing: Vec<WalObjectId> = objs.iter().map(|o| o.id).filter(|id| !self.cache.contains_key(id)).collect();
        let (storage, seg) = (self.storage.as_ref(), self.seg);
        let got: Vec<(WalObjectId, WalSummary)> = futures_util::stream::iter(missing)
            .map(|id| async move { Ok::<_, RepoError>((id, read_summary(storage, seg, id).await?)) })
            .buffer_unordered(PARALLEL_HEADERS)
            .try_collect()
            .await?;
        self.cache.extend(got);
        Ok(())
    }

    /// The commits of `o` known to the index (its first and last) that lie on the path.
    pub fn commits(&self, o: &PathObject) -> Vec<TimedLsn> {
        let Some(s) = self.cache.get(&o.id) else { return Vec::new() };
        let mut v: Vec<TimedLsn> =
            [s.first_commit, s.last_commit].into_iter().flatten().filter(|c| o.lo <= c.lsn && c.lsn < o.hi).collect();
        v.dedup();
        v
    }

    /// Where the index of `o` may lack commits ([`WalSummary::unindexed`]).
    fn unindexed(&self, o: &PathObject) -> Option<(Lsn, Lsn)> {
        let (start, end) = o.id.range(self.seg);
        self.cache.get(&o.id)?.unindexed(start, end)
    }

    /// The first object whose index may lack a commit after `from`, reading
    /// the headers of every object past it.
    pub async fn first_unindexed(&mut self, objs: &[PathObject], from: Lsn) -> Result<Option<WalObjectId>> {
        let after: Vec<PathObject> = objs.iter().filter(|o| o.hi > from).copied().collect();
        self.load(&after).await?;
        Ok(after.iter().find(|o| self.unindexed(o).is_some_and(|(_, upto)| upto > from)).map(|o| o.id))
    }

    /// When the newest WAL after `from` whose index is incomplete was
    /// received: commits the index lacks there came before.
    pub async fn unindexed_received(&mut self, objs: &[PathObject], from: Lsn) -> Result<Option<i64>> {
        let after: Vec<PathObject> = objs.iter().filter(|o| o.hi > from).copied().collect();
        self.load(&after).await?;
        Ok(after
            .iter()
            .filter(|o| self.unindexed(o).is_some_and(|(_, upto)| upto > from))
            .filter_map(|o| self.cache.get(&o.id).map(|s| s.received_us))
            .max())
    }

    /// The newest indexed commit, and the end of the restorable window: that
    /// commit, the newest backup's stop, or when WAL with an incomplete index
    /// after it was received, whichever is latest.
    pub async fn window_end(&mut self, objs: &[PathObject], newest: &BackupPoint) -> Result<(Option<TimedLsn>, i64)> {
        let last = self.last_commit(objs, Lsn::MAX).await?;
        let from = last.map_or(newest.stop_lsn, |c| c.lsn);
        let unindexed = self.unindexed_received(objs, from).await?;
        let latest = [last.map(|c| c.time_us), unindexed].into_iter().flatten().fold(newest.stop_time_us, i64::max);
        Ok((last, latest))
    }

    pub fn restore_points(&self, o: &PathObject) -> Vec<RestorePoint> {
        let Some(s) = self.cache.get(&o.id) else { return Vec::new() };
        s.restore_points.iter().filter(|r| o.lo <= r.lsn && r.lsn < o.hi).cloned().collect()
    }

    /// The newest indexed commit among `objs` with `lsn < before`, reading
    /// headers from the end backwards.
    pub async fn last_commit(&mut self, objs: &[PathObject], before: Lsn) -> Result<Option<TimedLsn>> {
        let upto = objs.partition_point(|o| o.lo < before);
        let mut end = upto;
        while end > 0 {
            let start = end.saturating_sub(8);
            self.load(&objs[start..end]).await?;
            for o in objs[start..end].iter().rev() {
                if let Some(c) = self.commits(o).into_iter().rev().find(|c| c.lsn < before) {
                    return Ok(Some(c));
                }
            }
            end = start;
        }
        Ok(None)
    }

    /// The first indexed commit with `lsn >= from` whose time passes `pred`,
    /// found by bisection over objects (commit times grow with LSN, so
    /// "some commit here passes" is monotone along the path).
    pub async fn first_commit_where(
        &mut self,
        objs: &[PathObject],
        from: Lsn,
        pred: impl Fn(i64) -> bool,
    ) -> Result<Option<TimedLsn>> {
        let passes =
            |s: &Self, o: &PathObject| s.commits(o).into_iter().filter(|c| c.lsn >= from).any(|c| pred(c.time_us));
        let (mut lo, mut hi) = (objs.partition_point(|o| o.hi <= from), objs.len());
        // The first passing object found so far; everything before `lo` fails.
        let mut best = objs.len();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The first object at or after `mid` that has a commit at all.
            let mut j = mid;
            let mut found = None;
            while j < hi {
                let end = (j + 8).min(hi);
                self.load(&objs[j..end]).await?;
                if let Some(k) = (j..end).find(|&k| self.commits(&objs[k]).iter().any(|c| c.lsn >= from)) {
                    found = Some(k);
                    break;
                }
                j = end;
            }
            match found {
                None => hi = mid,
                Some(k) if passes(self, &objs[k]) => {
                    best = k;
                    hi = mid.min(k);
                }
                Some(k) => lo = k + 1,
            }
        }
        let Some(o) = objs.get(best) else { return Ok(None) };
        self.load(std::slice::from_ref(o)).await?;
        Ok(self.commits(o).into_iter().find(|c| c.lsn >= from && pred(c.time_us)))
    }
}
