//! `pgpitr verify`: reads back everything a restore would need and checks
//! it. Every complete backup is read as a restore reads it, writing
//! nothing: the manifest and each part against `backup.json` (size,
//! container checksum, offset, length), then every file of the archives
//! against the manifest (size, CRC-32C) and none missing. Only when that
//! fails are its objects checked one by one, to name each bad one. Every
//! WAL object is fetched and its checksum checked, and WAL coverage is
//! checked from each backup's start to its stop, and for gaps after the
//! oldest backup's start. An incremental backup's chain must hold down to
//! a full backup, every link as the child says (`verify --backup ID` reads
//! the whole chain).
//!
//! A problem with one object does not stop the check: the report names
//! every object that is missing or wrong. Only a failure to list the
//! repository ends it early. It is safe beside a running stream: a piece or
//! journal deleted since the listing because its segment is now stored
//! whole is not a problem.

use crate::Repository;
use crate::backup::{self, BackupId, BackupInfo};
use crate::catalog::Catalog;
use crate::catalog::Unindexed;
use crate::chain::Backups;
use crate::reader::{BackupReader, Discard, ReadError};
use crate::wal::{self, WalObjectId, WalObjectKind};
use futures_util::StreamExt;
use pgpitr_types::{Lsn, TimelineId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Objects fetched at once.
const CONCURRENCY: usize = 8;

const MISSING: &str = "missing";

/// One object that is missing or wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object's key, or what is missing (`WAL 0/3000000..0/4000000`).
    pub object: String,
    pub problem: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub backups: usize,
    pub backup_objects: usize,
    /// Files of the backups checked against their manifests.
    pub backup_files: u64,
    pub wal_objects: usize,
    /// Bytes fetched and checked.
    pub bytes: u64,
    pub problems: Vec<Problem>,
    /// WAL whose commit-time index is incomplete: no problem for restores
    /// (they fall back to recovery_target_time there), but worth knowing.
    pub unindexed: Vec<Unindexed>,
}

/// Checks the complete backups and all WAL, or only backup `only` and the
/// WAL from its start to its stop.
pub async fn verify(repo: &Repository, only: Option<&str>) -> Result<Report, ReadError> {
    let storage = repo.storage().clone();
    let mut report = Report::default();
    let mut backups: Vec<(BackupId, BackupInfo)> =
        backup::scan(storage.as_ref()).await?.into_iter().filter_map(|e| Some((e.id, e.info?))).collect();
    // Each incremental backup's links, down to its full backup.
    let all: Vec<BackupInfo> = backups.iter().map(|(_, i)| i.clone()).collect();
    let chains = Backups::new(&all);
    let mut members: Vec<String> = Vec::new();
    for (id, info) in &backups {
        if only.is_some_and(|o| o != info.id) {
            continue;
        }
        match chains.chain(info) {
            Ok(chain) => members.extend(chain.iter().map(|m| m.id.clone())),
            Err(e) => report.problems.push(Problem { object: id.dir(), problem: e.to_string() }),
        }
    }
    if let Some(id) = only {
        // The backup, and the chain it restores with.
        let newest = backups.iter().find(|(b, _)| b.to_string() == id).cloned();
        backups.retain(|(b, _)| members.contains(&b.to_string()));
        if backups.is_empty() {
            backups.extend(newest);
        }
        if backups.is_empty() {
            return Err(ReadError::Invalid(format!("no complete backup {id} in {}", repo.location())));
        }
    }
    for (id, info) in &backups {
        report.backups += 1;
        let read = async { BackupReader::open(repo, info).await?.parallelism(CONCURRENCY / 2).read(Discard).await };
        match read.await {
            Ok((_, stats)) => {
                report.backup_objects += stats.parts as usize + 1;
                report.backup_files += stats.files;
                report.bytes += stats.stored_bytes + info.manifest.size;
            }
            Err(e) => {
                let before = report.problems.len();
                let (sound, bytes, problems) = BackupReader::check_objects(repo, info, CONCURRENCY).await;
                report.backup_objects += sound;
                report.bytes += bytes;
                report
                    .problems
                    .extend(problems.into_iter().map(|(object, e)| Problem { object, problem: problem_of(e) }));
                // Every object is sound, so the content is wrong: say what.
                if report.problems.len() == before {
                    report.problems.push(Problem { object: id.dir(), problem: e.to_string() });
                }
            }
        }
    }

    let seg = repo.seg_size();
    // One backup needs only its own WAL; the whole repository, all of it.
    let scope = match only {
        Some(o) => backups.iter().find(|(_, i)| i.id == o).map(|(_, i)| (i.timeline, i.start_lsn, i.stop_lsn)),
        None => None,
    };
    let list_wal = || async move {
        Ok::<_, ReadError>(match scope {
            Some((tli, from, to)) => BTreeMap::from([(tli, Catalog::wal_range(repo, tli, from, to).await?)]),
            None => Catalog::load_wal(repo).await?.timelines().clone(),
        })
    };
    let timelines = list_wal().await?;
    // A listing of a backup's log IDs holds more than its range: only that is checked.
    let in_scope = |tli: TimelineId, from: Lsn, to: Lsn| {
        scope.is_none_or(|(t, start, stop)| t == tli && from < stop && start < to)
    };
    let objects: Vec<WalObjectId> = timelines
        .values()
        .flat_map(|t| t.objects.iter().map(|(id, _)| *id))
        .filter(|id| {
            let (from, to) = id.range(seg);
            in_scope(id.tli, from, to)
        })
        .collect();
    let mut checks = futures_util::stream::iter(objects)
        .map(|id| {
            let storage = storage.clone();
            async move { (id, check_wal_object(storage, seg, id).await) }
        })
        .buffer_unordered(CONCURRENCY);
    let mut failed = Vec::new();
    while let Some((id, result)) = checks.next().await {
        match result {
            Ok((bytes, unindexed)) => {
                report.wal_objects += 1;
                report.bytes += bytes;
                report.unindexed.extend(unindexed);
            }
            Err(problem) => failed.push((id, problem)),
        }
    }
    drop(checks);
    // Pieces inside a merged piece (a merge cut short) must hold its bytes.
    let mut overlapped: Vec<(TimelineId, pgpitr_types::SegNo)> = timelines
        .iter()
        .flat_map(|(tli, t)| t.covered.iter().filter(|(id, _)| in_scope(*tli, id.range(seg).0, id.range(seg).1)))
        .map(|(id, _)| (id.tli, id.segno))
        .collect();
    overlapped.dedup();
    for (tli, segno) in overlapped {
        if let Err(e) = wal::assemble_segment(storage.as_ref(), seg, &timelines[&tli], segno).await
            && !e.is_not_found()
        {
            let name = pgpitr_types::WalFileName::segment(tli, segno).to_name(seg);
            report.problems.push(Problem { object: format!("WAL segment {name}"), problem: e.to_string() });
        }
    }
    // A backup another one builds on restores through its child, with the
    // child's WAL: retention keeps no WAL of its own for it.
    let parents: std::collections::HashSet<&str> = backups.iter().filter_map(|(_, i)| i.parent()).collect();
    let needs_wal = |i: &BackupInfo| !parents.contains(i.id.as_str()) || only == Some(i.id.as_str());
    let horizon = backups.iter().filter(|(_, i)| needs_wal(i)).map(|(_, i)| i.start_lsn).min();
    let gaps: Vec<(TimelineId, Lsn, Lsn)> = timelines
        .iter()
        .flat_map(|(tli, t)| t.gaps().into_iter().map(move |(from, to)| (*tli, from, to)))
        .filter(|&(_, _, to)| horizon.is_some_and(|h| to > h))
        .filter(|&(tli, from, to)| in_scope(tli, from, to))
        .collect();
    if !failed.is_empty() || !gaps.is_empty() {
        // A running stream deletes pieces and journals once their segment is
        // stored whole, and a listing is not a snapshot: what is missing or
        // looked like a gap but is covered by a fresh listing is no problem.
        let now = list_wal().await?;
        let covered = |tli: TimelineId, from: Lsn, to: Lsn| now.get(&tli).is_some_and(|t| t.covers(from, to));
        for (tli, from, to) in gaps {
            if !covered(tli, from, to) {
                report.problems.push(gap_problem(tli, from, to));
            }
        }
        for (id, problem) in failed {
            let (from, to) = id.range(seg);
            let superseded = problem == MISSING && id.kind != WalObjectKind::Segment && covered(id.tli, from, to);
            if !superseded {
                report.problems.push(Problem { object: id.key(seg), problem });
            }
        }
    }

    // Each backup's own WAL.
    for (id, info) in backups.iter().filter(|(_, i)| needs_wal(i)) {
        let covered = timelines.get(&info.timeline).is_some_and(|t| t.covers(info.start_lsn, info.stop_lsn));
        if !covered {
            report.problems.push(Problem {
                object: format!("WAL {}..{} on timeline {}", info.start_lsn, info.stop_lsn, info.timeline),
                problem: format!("backup {id} cannot become consistent: its WAL is not all stored"),
            });
        }
    }
    report.problems.sort_by(|a, b| a.object.cmp(&b.object));
    report.unindexed.sort_by_key(|u| (u.timeline, u.start_lsn));
    Ok(report)
}

fn gap_problem(tli: TimelineId, from: Lsn, to: Lsn) -> Problem {
    Problem {
        object: format!("WAL {from}..{to} on timeline {tli}"),
        problem: "missing: no restore can pass this gap".to_string(),
    }
}

/// Fetches one WAL object and checks its checksum and that it holds the
/// range its key names. Returns the bytes of WAL it holds, and what of it
/// the commit-time index lacks.
async fn check_wal_object(
    storage: Arc<dyn pgpitr_storage::Storage>,
    seg: pgpitr_types::WalSegSize,
    id: WalObjectId,
) -> Result<(u64, Vec<Unindexed>), String> {
    let key = id.key(seg);
    let (start, end) = id.range(seg);
    if let WalObjectKind::Journal { .. } = id.kind {
        // Frames carry their own checksums; the scan already stopped at the
        // first bad one, so what is left to check is that it is still there.
        return match wal::resolve_journal(storage.as_ref(), seg, id).await {
            Ok(Some((_, j))) => {
                Ok((start.distance_to(end), j.frames.iter().filter_map(|(h, _)| Unindexed::of(&key, h)).collect()))
            }
            Ok(None) => Err("journal holds no valid WAL".to_string()),
            Err(crate::RepoError::Storage(s)) if s.is_not_found() => Err(MISSING.to_string()),
            Err(e) => Err(e.to_string()),
        };
    }
    let (header, raw) = wal::read_object(storage.as_ref(), &key).await.map_err(|e| match e {
        crate::RepoError::Storage(s) if s.is_not_found() => MISSING.to_string(),
        other => other.to_string(),
    })?;
    if header.tli != id.tli || header.start != start || raw.len() as u64 != start.distance_to(end) {
        return Err(format!(
            "holds WAL {}..{} on timeline {}, its key says {start}..{end} on timeline {}",
            header.start,
            header.start.checked_add(raw.len() as u64).unwrap_or(header.start),
            header.tli,
            id.tli
        ));
    }
    Ok((raw.len() as u64, Unindexed::of(&key, &header).into_iter().collect()))
}

fn problem_of(e: ReadError) -> String {
    match e {
        e if e.is_not_found() => MISSING.to_string(),
        ReadError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}
