//! `catalog-gen`: grows a repository by synthetic WAL segments, quickly,
//! for `scripts/bench catalog`.
//!
//! ```text
//! catalog-gen --repo DIR --segments N [--backup-at K]...
//! ```
//!
//! `DIR` is a repository's directory as `LocalStorage` and s3s-fs both keep
//! it (one file per key). It must hold the binding and at least one
//! complete backup (the benchmark takes a real one first). The generator
//! appends `N` complete segments on the newest timeline after the last
//! complete segment stored, deleting the pieces of any segment it writes.
//!
//! Each segment is real PostgreSQL 15 WAL in a real container: its first
//! page holds a long page header, three commit records (a minute apart
//! from segment to segment) and a `XLOG_SWITCH` record, all with real CRCs;
//! the rest of the segment is zeros. (PostgreSQL also writes a page header
//! on every page after a switch. Nothing the benchmark runs reads those
//! pages, and without them every segment's tail is the same, so its zstd
//! frame is made once: a segment costs tens of microseconds, not the
//! compression of 16 MiB.) The container holds two zstd frames, the first
//! page's and the tail's, and the CRC-32 of all 16 MiB; its summary names
//! the three commits, as the stream's scanner would.
//!
//! `--backup-at K` also stores, at the K-th new segment, a copy of the
//! newest complete backup moved there: its `backup.json` with a new id,
//! start and stop in that segment and the stop time of its first commit,
//! and hard links to the original's pieces and manifest, so it verifies.
//! Files are written without fsync: a benchmark fixture, not a repository.

use pgpitr_repo::backup::{BackupId, BackupInfo};
use pgpitr_repo::object::{self, Codec, TimedLsn, WalSummary};
use pgpitr_repo::wal::{WalObjectId, WalObjectKind};
use pgpitr_storage::{LocalStorage, Storage};
use pgpitr_types::{Lsn, SegNo, TimelineId, WalSegSize};
use pgpitr_walscan::PgTimestamp;
use pgpitr_walscan::testgen::WalWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PAGE: usize = 8192;
/// Microseconds between the Unix and PostgreSQL epochs.
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;
const SEGMENT_STEP_US: i64 = 60_000_000;

struct Args {
    repo: PathBuf,
    segments: u64,
    backups_at: Vec<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut repo, mut segments, mut backups_at) = (None, None, Vec::new());
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--repo" => repo = Some(PathBuf::from(val()?)),
            "--segments" => segments = Some(val()?.parse().map_err(|e| format!("--segments: {e}"))?),
            "--backup-at" => backups_at.push(val()?.parse().map_err(|e| format!("--backup-at: {e}"))?),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        repo: repo.ok_or("--repo is required")?,
        segments: segments.ok_or("--segments is required")?,
        backups_at,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("catalog-gen: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args).await {
        eprintln!("catalog-gen: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(&args.repo));
    let repo = pgpitr_repo::Repository::open(storage.clone()).await.map_err(|e| e.to_string())?;
    let seg = repo.seg_size();
    let mut cat = pgpitr_repo::catalog::Catalog::load(&repo).await.map_err(|e| e.to_string())?;
    let (tli, tl) =
        cat.timelines().iter().next_back().map(|(t, w)| (*t, w.clone())).ok_or("the repository holds no WAL")?;
    let last_complete = tl
        .objects
        .iter()
        .filter(|(id, _)| id.kind == WalObjectKind::Segment)
        .map(|(id, _)| id.segno)
        .next_back()
        .ok_or("the repository holds no complete segment")?;
    let template = cat.points().last().and_then(|p| cat.info(&p.id)).cloned().ok_or("no complete backup to copy")?;
    // Commit times go on from the newest stored, a minute per segment.
    let newest = cat.latest_commit(tli).await.map_err(|e| e.to_string())?;
    let t0 = newest.map_or_else(|| jiff::Timestamp::now().as_microsecond(), |c| c.time_us) + SEGMENT_STEP_US;
    let tail = zero_tail(seg);
    let first = last_complete.0 + 1;
    for k in 0..args.segments {
        let segno = SegNo(first + k);
        let time_us = t0 + k as i64 * SEGMENT_STEP_US;
        let (body, first_commit) = segment(seg, tli, segno, time_us, &tail);
        let id = WalObjectId::segment(tli, segno);
        write(&args.repo, &id.key(seg), &body)?;
        if args.backups_at.contains(&(k + 1)) {
            copy_backup(&args.repo, &template, first_commit, k as u32)?;
        }
    }
    // Pieces of the segments now stored complete would be leftovers.
    for (id, meta) in tl.objects.iter().chain(&tl.covered) {
        if id.kind != WalObjectKind::Segment && id.segno.0 >= first && id.segno.0 < first + args.segments {
            storage.delete(&meta.key).await.map_err(|e| e.to_string())?;
        }
    }
    println!("{} segments {}..{} on timeline {tli}", args.segments, first, first + args.segments - 1);
    Ok(())
}

/// The zstd frame of a segment's zeros after its first page, and their CRC state.
struct Tail {
    frame: Vec<u8>,
    crc: crc32fast::Hasher,
}

fn zero_tail(seg: WalSegSize) -> Tail {
    let zeros = vec![0u8; seg.bytes() as usize - PAGE];
    let frame = zstd::bulk::compress(&zeros, object::ZSTD_LEVEL).expect("zstd compresses zeros");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&zeros);
    Tail { frame, crc }
}

/// One segment's container, and its first commit.
fn segment(seg: WalSegSize, tli: TimelineId, segno: SegNo, time_us: i64, tail: &Tail) -> (bytes::Bytes, TimedLsn) {
    let start = Lsn(segno.0 * seg.bytes());
    let mut w = WalWriter::new(start, seg).timeline(tli.0);
    let mut commits = Vec::new();
    for i in 0..3u32 {
        let t = time_us + i as i64 * 1000;
        let (lsn, end_lsn) = w.commit(segno.0 as u32 * 3 + i, PgTimestamp(t - PG_EPOCH_UNIX_US));
        commits.push(TimedLsn { lsn, end_lsn, time_us: t });
    }
    w.switch();
    let page = &w.bytes()[..PAGE];
    let mut crc = crc32fast::Hasher::new();
    crc.update(page);
    crc.combine(&tail.crc);
    let head = zstd::bulk::compress(page, object::ZSTD_LEVEL).expect("zstd compresses a page");
    let summary = WalSummary {
        first_commit: commits.first().copied(),
        last_commit: commits.last().copied(),
        commits: commits.len() as u64,
        received_us: time_us + 10_000,
        ..Default::default()
    };
    let body = object::encode_compressed(
        tli,
        start,
        seg.bytes(),
        crc.finalize(),
        Codec::Zstd,
        &[&head, &tail.frame],
        &summary,
    );
    (body, commits[0])
}

/// Hard links every file under `from` (but `backup.json`) into `to`.
fn link_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            link_tree(&src, &dst)?;
        } else if entry.file_name() != "backup.json" && !dst.exists() {
            std::fs::hard_link(&src, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        }
    }
    Ok(())
}

fn write(root: &Path, key: &str, body: &[u8]) -> Result<(), String> {
    let path = root.join(key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))
}

/// A copy of `template` whose WAL is that of `at`'s segment, stopping at `at`.
fn copy_backup(root: &Path, template: &BackupInfo, at: TimedLsn, seq: u32) -> Result<(), String> {
    let old = BackupId::parse(&template.id).ok_or("the template backup has an odd id")?;
    let stop = jiff::Timestamp::from_microsecond(at.time_us).map_err(|e| e.to_string())?;
    let id = BackupId::new(stop, seq);
    let dir = root.join(id.dir());
    link_tree(&root.join(old.dir()), &dir)?;
    let mut info = template.clone();
    info.id = id.to_string();
    info.label = format!("catalog-gen copy of {}", template.id);
    info.start_lsn = Lsn(at.lsn.0 - at.lsn.0 % PAGE as u64);
    info.stop_lsn = at.end_lsn;
    info.start_time = stop.to_string();
    info.stop_time = stop.to_string();
    let json = serde_json::to_vec_pretty(&info).map_err(|e| e.to_string())?;
    write(root, &id.info_key(), &json)
}
