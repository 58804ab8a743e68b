//! Where a streaming session starts: the repository is the source of truth.
//!
//! A new repository starts at the segment holding the slot's restart point
//! (creating the slot with RESERVE_WAL first). An existing one continues
//! exactly where its WAL ends, rebuilding the unfinished segment from its
//! stored parts, or, when the server has since been promoted past that
//! point, on the child timeline at the switch point.

use crate::segment::OpenSegment;
use crate::upload::{self, Blocks, Buffers, SpareSegments, WalUpload};
use crate::{StreamConfig, StreamError};
use bytes::Bytes;
use pgpitr_pgwire::{ReplicationConnection, SystemInfo};
use pgpitr_repo::Repository;
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::object::{BufPool, WalSummary};
use pgpitr_repo::wal::{self, WalObjectId, WalObjectKind};
use pgpitr_storage::PutOutcome;
use pgpitr_types::{Lsn, SegNo, TimelineHistory, TimelineId};
use tokio_util::sync::CancellationToken;

pub struct ResumePlan {
    pub tli: TimelineId,
    pub start: Lsn,
    pub segment: OpenSegment,
    /// Bytes from the start of the segment up to `start`, for the scanner to
    /// resynchronise on (its events were recorded when they were stored).
    pub scan_prefix: Bytes,
    /// Whether WAL up to `start` is in the repository (false for a new one,
    /// where `start` is merely where streaming begins).
    pub start_is_stored: bool,
    /// The slot was created for this plan (after a failover).
    pub created_slot: bool,
}

impl ResumePlan {
    /// Streaming from `start` (a segment boundary), with nothing before it
    /// to carry on from.
    fn fresh(tli: TimelineId, start: Lsn, seg: pgpitr_types::WalSegSize) -> Self {
        let segment = OpenSegment::new(tli, start.segment_number(seg), seg, &[], true);
        ResumePlan { tli, start, segment, scan_prefix: Bytes::new(), start_is_stored: false, created_slot: false }
    }
}

/// `accept_gap`: the server was found not to have the WAL from where the
/// repository ends, and streaming goes on from what the slot keeps.
pub async fn plan(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    cfg: &StreamConfig,
    sys: &SystemInfo,
    accept_gap: bool,
) -> Result<ResumePlan, StreamError> {
    let storage = repo.storage().clone();
    let seg = repo.seg_size();
    let cat = Catalog::load_wal(repo).await?;
    let timelines = cat.timelines();
    let leftovers: Vec<String> = cat.leftovers().iter().map(|m| m.key.clone()).collect();
    if !leftovers.is_empty() {
        // Parts made redundant by a complete segment before a crash.
        let storage = storage.clone();
        tokio::spawn(async move {
            if let Err(e) = storage.delete_many(&leftovers).await {
                tracing::warn!(
                    "cleaning up {} redundant WAL parts failed (will retry at next start): {e}",
                    leftovers.len()
                );
            }
        });
    }
    let slot = conn.read_replication_slot(&cfg.slot).await?;

    let Some((&repo_tli, tl)) = timelines.iter().next_back() else {
        // A new repository: begin at the slot's restart point.
        let (restart, tli) = match slot.as_ref().and_then(|s| s.restart_lsn.map(|l| (l, s.restart_tli))) {
            Some((lsn, tli)) => (lsn, tli.unwrap_or(sys.timeline)),
            None => {
                if slot.is_none() {
                    tracing::info!(slot = %cfg.slot, "creating physical replication slot (RESERVE_WAL)");
                    conn.create_physical_slot(&cfg.slot, true).await?;
                }
                let s = conn.read_replication_slot(&cfg.slot).await?;
                let lsn = s.and_then(|s| s.restart_lsn).ok_or_else(|| {
                    StreamError::Definite(format!("replication slot \"{}\" has no restart point", cfg.slot))
                })?;
                (lsn, sys.timeline)
            }
        };
        let start = restart.segment_floor(seg);
        tracing::info!(%start, %tli, "new repository: streaming from the slot's restart segment");
        return Ok(ResumePlan::fresh(tli, start, seg));
    };

    let last_end = tl.end().expect("a scanned timeline has objects");
    let (slot, created_slot) = match slot {
        Some(slot) => (slot, false),
        None => (create_slot_after_failover(conn, cfg, sys, repo, repo_tli, last_end).await?, true),
    };
    // Continue where the stored range holding the slot's restart point
    // ends, not where the last range ends: a crash can leave WAL stored past
    // a hole (the next segment's part or journal stored while this
    // segment's object was still being uploaded). The server was never told
    // the hole was flushed, so the slot still holds it: stream it again.
    let end = slot.restart_lsn.and_then(|r| tl.ranges.iter().find(|&&(_, e)| e >= r)).map_or(last_end, |r| r.1);
    if let Some(restart) = slot.restart_lsn.filter(|&r| accept_gap && r.segment_floor(seg) > end) {
        // The server no longer has WAL from where the repository ends (see
        // `StreamError::WalGone`): continue from what the slot keeps.
        let (start, tli) = (restart.segment_floor(seg), slot.restart_tli.unwrap_or(sys.timeline));
        if tli > repo_tli {
            let (_, content) = conn.timeline_history(tli).await?;
            store_history(repo, tli, &content).await?;
        }
        let advice = match &cfg.backup_now {
            Some(now) => {
                now.notify_one();
                "taking one now (--backup-every)"
            }
            None => "run `pgpitr backup` now",
        };
        tracing::error!(
            "WAL {end}..{start} is missing from the repository: the server removed it before the slot was \
             created. Restores cannot cross this gap; a new base backup starts a new restorable window: {advice}"
        );
        return Ok(ResumePlan::fresh(tli, start, seg));
    }
    if end < last_end {
        tracing::info!(hole_from = %end, stored_up_to = %last_end, "WAL stored past a hole; streaming the hole again");
    }
    if sys.timeline < repo_tli {
        return Err(StreamError::Definite(format!(
            "the server is on timeline {} but the repository already holds timeline {repo_tli}: \
             is this a server restored from an older backup? use a new repository",
            sys.timeline
        )));
    }

    let mut tli = repo_tli;
    let mut start = end;
    let mut inherited = false;
    if sys.timeline > repo_tli {
        let (name, content) = conn.timeline_history(sys.timeline).await?;
        store_history(repo, sys.timeline, &content).await?;
        let text = String::from_utf8_lossy(&content);
        let hist = TimelineHistory::parse(sys.timeline, &text)
            .map_err(|e| StreamError::Definite(format!("server sent an unreadable {name}: {e}")))?;
        let Some(switch) = hist.end_of(repo_tli) else {
            return Err(StreamError::Definite(format!(
                "timeline {repo_tli} in the repository is not an ancestor of the server's timeline {}",
                sys.timeline
            )));
        };
        if end > switch {
            // We hold WAL of the old timeline past the fork: keep it as that
            // timeline's tail and follow the child from the switch point.
            let pos = hist.entries.iter().position(|e| e.parent == repo_tli).expect("end_of found it");
            tli = hist.entries.get(pos + 1).map(|e| e.parent).unwrap_or(hist.tli);
            start = switch;
            inherited = true;
            tracing::info!(old = %repo_tli, new = %tli, %switch, "server was promoted: continuing on the new timeline");
        }
    }

    tracing::info!(%tli, %start, "resuming where the repository ends");
    // Only segments without a complete object have parts or journals here
    // (`scan` sets those of complete segments aside as leftovers).
    let before = start.segment_number(seg);
    let whole: Vec<SegNo> = tl
        .objects
        .iter()
        .filter(|(id, _)| id.kind != WalObjectKind::Segment)
        .map(|(id, _)| id.segno)
        .filter(|&n| n < before && n.start_lsn(seg).is_some_and(|s| tl.covers(s, Lsn(s.0 + seg.bytes()))))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !whole.is_empty() {
        let (repo, tl) = (repo.clone(), tl.clone());
        tokio::spawn(async move {
            for segno in whole {
                if let Err(e) = compact_segment(&repo, &tl, repo_tli, segno).await {
                    tracing::warn!(%segno, "storing a segment held in parts as one object failed (retried at next start): {e}");
                }
            }
        });
    }
    let plan = open_at(repo, tl, repo_tli, tli, start, inherited).await?;
    Ok(ResumePlan { created_slot, ..plan })
}

/// The slot is missing but the repository holds WAL: after a failover to a
/// promoted replica, or a slot dropped by hand. The slot is created only if
/// the server continues the repository's history: the same timeline, or a
/// descendant that branched off it at or after the repository's end (the
/// system identifier was checked before). Otherwise, or with
/// `--no-create-slot`, the operator decides.
async fn create_slot_after_failover(
    conn: &mut ReplicationConnection,
    cfg: &StreamConfig,
    sys: &SystemInfo,
    repo: &Repository,
    repo_tli: TimelineId,
    end: Lsn,
) -> Result<pgpitr_pgwire::SlotInfo, StreamError> {
    let missing = || StreamError::SlotMissing { slot: cfg.slot.clone(), durable: end };
    if !cfg.create_slot || sys.timeline < repo_tli {
        return Err(missing());
    }
    if sys.timeline > repo_tli {
        let (name, content) = conn.timeline_history(sys.timeline).await?;
        let hist = TimelineHistory::parse(sys.timeline, &String::from_utf8_lossy(&content))
            .map_err(|e| StreamError::Definite(format!("server sent an unreadable {name}: {e}")))?;
        match hist.end_of(repo_tli) {
            Some(switch) if switch >= end => store_history(repo, sys.timeline, &content).await?,
            Some(switch) => {
                tracing::error!(
                    %switch, repository_end = %end,
                    "the server's timeline {} branched off timeline {repo_tli} before the repository's end: \
                     not creating the slot",
                    sys.timeline
                );
                return Err(missing());
            }
            None => return Err(missing()),
        }
    }
    tracing::warn!(
        slot = %cfg.slot, tli = %sys.timeline, repository_end = %end,
        "replication slot missing on a server that continues the repository's history (a failover?): creating it"
    );
    conn.create_physical_slot(&cfg.slot, true).await?;
    conn.read_replication_slot(&cfg.slot).await?.ok_or_else(missing)
}

/// Stores a segment that is whole in parts and journals as one object, then
/// deletes them. A crash leaves such segments: in synchronous mode a
/// segment's last bytes go to its journal while its object is still being
/// compressed and stored. Runs beside the new session, which never touches
/// segments before the one it resumes in.
async fn compact_segment(
    repo: &Repository,
    tl: &wal::TimelineWal,
    tli: TimelineId,
    segno: SegNo,
) -> Result<(), StreamError> {
    let (storage, seg) = (repo.storage(), repo.seg_size());
    let Some(assembled) = wal::assemble_segment(storage.as_ref(), seg, tl, segno).await? else { return Ok(()) };
    if assembled.complete || assembled.valid_len != seg.bytes() {
        return Ok(());
    }
    let parts: Vec<WalObjectId> =
        tl.objects.iter().chain(&tl.covered).map(|(id, _)| *id).filter(|id| id.segno == segno).collect();
    let mut summary = WalSummary::default();
    assembled.used.iter().for_each(|(_, s)| summary.merge(s));
    let id = WalObjectId::segment(tli, segno);
    let start = id.range(seg).0;
    let up = WalUpload { id, start, raw: assembled.data, summary, blocks: Blocks::Segment(Vec::new()) };
    let bufs = Buffers {
        encode: BufPool::for_objects(1, seg.bytes() as usize),
        segments: SpareSegments::new(0, seg.bytes() as usize),
    };
    upload::store(storage, seg, up, bufs, &CancellationToken::new()).await?;
    let keys: Vec<String> = parts.iter().map(|p| p.key(seg)).collect();
    storage.delete_many(&keys).await?;
    tracing::info!(%segno, parts = keys.len(), "stored a segment left in parts as one object");
    Ok(())
}

/// The open segment for streaming `tli` from `start`, whose earlier bytes
/// come from what `tl` (timeline `from_tli`) holds.
async fn open_at(
    repo: &Repository,
    tl: &wal::TimelineWal,
    from_tli: TimelineId,
    tli: TimelineId,
    start: Lsn,
    inherited: bool,
) -> Result<ResumePlan, StreamError> {
    let storage = repo.storage();
    let seg = repo.seg_size();
    let segno = start.segment_number(seg);
    let offset = start.segment_offset(seg) as usize;
    let (prefix, used) = if offset == 0 {
        (Bytes::new(), Vec::new())
    } else {
        // Every object of the segment, read at once; those inside the cover
        // (an interrupted merge) are checked against it, then deleted.
        let assembled = wal::assemble_segment(storage.as_ref(), seg, tl, segno).await?.ok_or_else(|| {
            StreamError::Definite(format!("segment {segno} of timeline {from_tli} vanished from the repository"))
        })?;
        if (assembled.valid_len as usize) < offset {
            return Err(StreamError::Definite(format!(
                "repository coverage of timeline {from_tli} reaches {start} but its segment holds only {} bytes",
                assembled.valid_len
            )));
        }
        (assembled.data.slice(..offset), assembled.used)
    };
    let mut segment = OpenSegment::new(tli, segno, seg, &prefix, !inherited);
    if !inherited {
        for (id, summary) in &used {
            if id.range(seg).1 > start {
                // Past a hole: its bytes are streamed again. Only deleted
                // with the other parts once the segment is stored.
                segment.note_object(*id);
            } else {
                segment.adopt_stored(*id, summary);
            }
        }
        // The cover's objects past the hole were not read as used.
        for (id, _) in tl.objects.iter().filter(|(id, _)| id.segno == segno && id.range(seg).0 >= start) {
            segment.note_object(*id);
        }
        // Only once assembly checked them against the cover.
        let covered: Vec<String> =
            tl.covered.iter().filter(|(id, _)| id.segno == segno).map(|(id, _)| id.key(seg)).collect();
        if !covered.is_empty() && !used.is_empty() {
            tracing::info!(segno = %segno, objects = covered.len(), "finishing a merge cut short: deleting the parts inside it");
            let storage = storage.clone();
            tokio::spawn(async move {
                if let Err(e) = storage.delete_many(&covered).await {
                    tracing::warn!("deleting parts inside a merged part failed (retried at next start): {e}");
                }
            });
        }
    }
    Ok(ResumePlan { tli, start, segment, scan_prefix: prefix, start_is_stored: true, created_slot: false })
}

/// Where to stream so that `from..to` on `tli` ends up stored: `None` when
/// it already is; otherwise from the end of what is stored around `from`'s
/// segment, or from that segment's start.
pub async fn plan_range(
    repo: &Repository,
    tli: TimelineId,
    from: Lsn,
    to: Lsn,
) -> Result<Option<ResumePlan>, StreamError> {
    let seg = repo.seg_size();
    let floor = from.segment_floor(seg);
    let tl = Catalog::wal_range(repo, tli, floor, to).await?;
    match tl.ranges.iter().find(|&&(s, e)| s <= floor && floor <= e) {
        Some(&(_, e)) if e >= to => Ok(None),
        Some(&(_, e)) => open_at(repo, &tl, tli, tli, e, false).await.map(Some),
        None => Ok(Some(ResumePlan::fresh(tli, floor, seg))),
    }
}

/// Stores a `.history` file, accepting an identical copy already there.
pub async fn store_history(repo: &Repository, tli: TimelineId, content: &Bytes) -> Result<(), StreamError> {
    let key = wal::history_key(tli);
    let storage = repo.storage();
    if storage.put_if_absent(&key, content.clone()).await? == PutOutcome::AlreadyExists {
        let existing = storage.get(&key).await?;
        if existing != *content {
            return Err(StreamError::Conflict {
                key,
                detail: "the server's timeline history differs from the stored one".into(),
            });
        }
    }
    Ok(())
}
