//! `pgpitr wal-push` (archive_command): a complete segment, as PostgreSQL's
//! archiver hands it over, checked against the repository's cluster and
//! stored as the stream stores one (the same key, container and commit-time
//! index), so `restore` and `wal-fetch` serve it and a stream beside it
//! agrees: one segment key never holds two different WAL byte sequences.

use crate::StreamError;
use crate::index::CommitIndex;
use crate::upload::{PutWal, put_wal};
use bytes::Bytes;
use pgpitr_repo::Repository;
use pgpitr_repo::object::{self, Span, WalSummary};
use pgpitr_repo::wal::{WalObjectId, read_object};
use pgpitr_types::{SegNo, TimelineId};
use pgpitr_walscan::{PageHeader, SIZE_OF_LONG_PHD, XLP_LONG_HEADER};

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The repository held the same WAL already (a retry, or the stream).
    AlreadyStored,
}

/// Stores the complete segment `raw` of `tli` as `segno`, after checking
/// its first page against the repository: page magic of its major, system
/// identifier, segment size, timeline and address.
pub async fn push_segment(
    repo: &Repository,
    tli: TimelineId,
    segno: SegNo,
    raw: Bytes,
    name: &str,
) -> Result<Pushed, StreamError> {
    let seg = repo.seg_size();
    let invalid = |why: String| StreamError::Definite(format!("{name}: {why}"));
    if raw.len() as u64 != seg.bytes() {
        return Err(invalid(format!("{} bytes, but this cluster's segments are {} bytes", raw.len(), seg.bytes())));
    }
    let start = segno.start_lsn(seg).ok_or_else(|| invalid("segment number out of range".into()))?;
    let head = PageHeader::parse(&raw[..SIZE_OF_LONG_PHD]).ok_or_else(|| invalid("no page header".into()))?;
    let format = repo.major().wal_format();
    let long = head.long.filter(|_| head.info & XLP_LONG_HEADER != 0);
    let binding = repo.binding();
    let mismatch = if head.magic != format.page_magic {
        Some(format!(
            "page magic {:#06X} is not PostgreSQL {}'s {:#06X}",
            head.magic,
            repo.major().number(),
            format.page_magic
        ))
    } else if let Some(l) = long.filter(|l| l.sysid != binding.system_identifier) {
        Some(format!("system identifier {} is not the repository's cluster ({})", l.sysid, binding.system_identifier))
    } else if long.is_none_or(|l| u64::from(l.seg_size) != seg.bytes()) {
        Some("the first page has no long header with this cluster's segment size".to_string())
    } else if head.tli > tli.0 || head.pageaddr != start.0 {
        // A new timeline's first segment starts as a copy of its parent's:
        // its first page may carry an older timeline (as the stream sees it).
        Some(format!("its first page says timeline {} at {:X}, not the file's name", head.tli, head.pageaddr))
    } else {
        None
    };
    if let Some(why) = mismatch {
        return Err(invalid(format!("WAL header does not match the repository: {why}")));
    }

    let mut summary = WalSummary::default();
    let mut index = CommitIndex::resume(start, seg, format, &[]);
    index.scan(&raw, start, &mut summary, jiff::Timestamp::now().as_microsecond(), |_, _| {});
    let end = pgpitr_types::Lsn(start.0 + seg.bytes());
    // A record that continues into the next segment: the next push scans
    // that segment on its own and passes over it, so if it is a commit,
    // no summary has it. Said here, where it begins.
    if index.record_open_at(end) {
        summary.unindexed_before = summary.unindexed_before.max(Some(end));
    }
    let (encoded, crc) = object::encode_spans_of(tli, start, &raw, &[Span::Raw(&raw)], &summary, None);
    let key = WalObjectId::segment(tli, segno).key(seg);
    // A retry of a stored segment (or one the stream stored): looked at
    // before sending megabytes that would be refused.
    let storage = repo.storage().as_ref();
    let stored = storage.head(&key).await.is_ok();
    let outcome = if stored {
        match read_object(storage, &key).await {
            Ok((h, _)) if h.raw_crc == crc && h.start == start && h.end == end => PutWal::Stored { created: false },
            _ => put_wal(storage, &key, encoded, crc, start, end).await,
        }
    } else {
        put_wal(storage, &key, encoded, crc, start, end).await
    };
    match outcome {
        PutWal::Stored { created: true } => Ok(Pushed::Stored),
        PutWal::Stored { created: false } => Ok(Pushed::AlreadyStored),
        PutWal::Conflict(detail) => Err(StreamError::Conflict { key, detail: format!("{name}: {detail}") }),
        PutWal::Failed(msg) => Err(StreamError::Definite(format!("{name}: storing failed: {msg}"))),
    }
}
