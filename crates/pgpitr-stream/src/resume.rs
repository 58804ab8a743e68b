//! Where a streaming session starts: the repository is the source of truth.
//!
//! A new repository starts at the segment holding the slot's restart point
//! (creating the slot with RESERVE_WAL first). An existing one continues
//! exactly where its WAL ends, rebuilding the unfinished segment from its
//! stored pieces, or, when the server has since been promoted past that
//! point, on the child timeline at the switch point.

use pgpitr_archive::start::{compact_segment, open_at, store_history};
use pgpitr_archive::{ResumePlan, StreamConfig, StreamError};
use pgpitr_pgwire::{ReplicationConnection, SystemInfo};
use pgpitr_repo::Repository;
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::wal::WalObjectKind;
use pgpitr_types::{Lsn, SegNo, TimelineHistory, TimelineId};

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
        // Pieces made redundant by a complete segment before a crash.
        let storage = storage.clone();
        tokio::spawn(async move {
            if let Err(e) = storage.delete_many(&leftovers).await {
                tracing::warn!(
                    "cleaning up {} redundant WAL pieces failed (will retry at next start): {e}",
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
    // a hole (the next segment's piece or journal stored while this
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
    // Only segments without a complete object have pieces or journals here
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
                    tracing::warn!(%segno, "storing a segment held in pieces as one object failed (retried at next start): {e}");
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
