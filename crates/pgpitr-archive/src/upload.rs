//! Storing one WAL object: encode off the async threads, write it
//! create-if-absent, and retry until it is stored or proven to conflict.

use crate::StreamError;
use crate::compact::Source;
use crate::journal::AppendEnd;
use crate::segment::{ChunkCell, PieceChunk, segment_spans};
use bytes::{Bytes, BytesMut};
use pgpitr_repo::object::{self, BufPool, Chunk, Span, WalSummary};
use pgpitr_repo::wal::{WalObjectId, read_object};
use pgpitr_storage::{PutOutcome, Storage};
use pgpitr_types::{Lsn, WalSegSize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One object to store: `raw` is the WAL from `start`.
#[derive(Debug, Clone)]
pub struct WalUpload {
    pub id: WalObjectId,
    pub start: Lsn,
    pub raw: Bytes,
    pub summary: WalSummary,
    pub blocks: Blocks,
}

/// How the payload's lz4 blocks come about.
#[derive(Debug, Clone)]
pub enum Blocks {
    /// A piece: compress it, and publish the block for its segment.
    Piece(ChunkCell),
    /// A complete segment: reuse its pieces' blocks where they exist; `crc`
    /// is the CRC-32 of its raw bytes.
    Segment { pieces: Vec<PieceChunk>, crc: u32 },
    /// A merged piece, made of these instead of `raw` (which is empty); its
    /// blocks are published in the cell for the next merge.
    Merge { sources: Vec<Source>, cell: ChunkCell },
}

impl WalUpload {
    pub fn end(&self) -> Lsn {
        let len = match &self.blocks {
            Blocks::Merge { sources, .. } => sources.iter().map(Source::len).sum(),
            _ => self.raw.len() as u64,
        };
        Lsn(self.start.0 + len)
    }
}

/// A stored object: how long the successful attempt took, and the CRC-32
/// of its raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub took: Duration,
    pub crc: u32,
}

/// Buffers the uploads share with the stream: pooled encode buffers, and
/// segment buffers handed back for reuse.
#[derive(Debug, Clone)]
pub struct Buffers {
    pub encode: BufPool,
    pub segments: SpareSegments,
}

/// Segment buffers returned as soon as their bytes are encoded, not when
/// the object is stored: a busy stream then finds one ready for its next
/// segment instead of faulting in a fresh 16 MiB (6% of its CPU on a bulk
/// load, measured with `perf`).
#[derive(Debug, Clone)]
pub struct SpareSegments {
    free: Arc<Mutex<Vec<BytesMut>>>,
    max: usize,
    min_capacity: usize,
}

impl SpareSegments {
    /// Keeps up to `max` buffers that can hold `min_capacity` bytes.
    pub fn new(max: usize, min_capacity: usize) -> Self {
        SpareSegments { free: Arc::new(Mutex::new(Vec::new())), max, min_capacity }
    }

    pub fn take(&self) -> Option<BytesMut> {
        self.free.lock().ok()?.pop()
    }

    /// Keeps `raw`'s buffer if nothing else holds it and there is room.
    fn give(&self, raw: Bytes) {
        let Ok(buf) = raw.try_into_mut() else { return };
        if buf.capacity() < self.min_capacity {
            return;
        }
        if let Ok(mut free) = self.free.lock()
            && free.len() < self.max
        {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }
}

/// Objects up to this size are encoded on the async task itself.
const INLINE_ENCODE_MAX: u64 = 64 * 1024;

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Stores `up`, retrying storage failures with capped backoff for as long as
/// it takes (the caller withholds feedback meanwhile, so nothing is lost), or
/// until `cancel` fires. An existing object with the same key is accepted
/// only if it holds the same bytes: the same WAL is never stored twice with
/// different contents. The raw buffer goes to `bufs.segments` once encoded.
///
/// Takes `up` by value so the raw bytes are freed as soon as they are
/// encoded: an upload in flight holds only its compressed form.
pub async fn store(
    storage: &Arc<dyn Storage>,
    seg: WalSegSize,
    up: WalUpload,
    bufs: Buffers,
    cancel: &CancellationToken,
) -> Result<Stored, StreamError> {
    let key = up.id.key(seg);
    let (start, end) = (up.start, up.end());
    let WalUpload { id, raw, summary, blocks, .. } = up;
    let encode = move || {
        let (encoded, crc) = match blocks {
            Blocks::Piece(cell) => {
                let (encoded, mut fresh, crc) =
                    object::encode_spans_of(id.tli, start, &raw, &[Span::Raw(&raw)], &summary, Some(&bufs.encode));
                if let Some(chunk) = fresh.pop() {
                    let _ = cell.set(chunk);
                }
                (encoded, crc)
            }
            Blocks::Segment { pieces, crc } => {
                let spans = segment_spans(&raw, &pieces);
                (object::encode_spans(id.tli, start, &spans, crc, &summary, Some(&bufs.encode)).0, crc)
            }
            Blocks::Merge { sources, cell } => encode_merge(id, start, &sources, &summary, cell),
        };
        bufs.segments.give(raw);
        (encoded, crc)
    };
    // Small pieces (synchronous mode, quiet servers) take microseconds to
    // encode: a hop to the blocking pool would cost more than it saves.
    let (encoded, want_crc) = if (end.0 - start.0) <= INLINE_ENCODE_MAX {
        encode()
    } else {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| StreamError::Internal(format!("encoder task failed: {e}")))?
    };
    let mut attempt = 0u32;
    loop {
        let began = Instant::now();
        let msg = match put_wal(storage.as_ref(), &key, encoded.clone(), want_crc, start, end).await {
            PutWal::Stored { .. } => return Ok(Stored { took: began.elapsed(), crc: want_crc }),
            PutWal::Conflict(detail) => return Err(StreamError::Conflict { key, detail }),
            PutWal::Failed(msg) => msg,
        };
        attempt += 1;
        let backoff = Duration::from_millis(200u64.saturating_mul(1 << (attempt - 1).min(8))).min(MAX_BACKOFF);
        let jittered = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::warn!(key = %key, attempt, retry_in = ?jittered, "storing WAL failed, will retry: {msg}");
        tokio::select! {
            _ = cancel.cancelled() => return Err(StreamError::Cancelled),
            _ = tokio::time::sleep(jittered) => {}
        }
    }
}

/// What [`put_wal`] did.
pub(crate) enum PutWal {
    /// Stored, or already there with the same WAL (`created: false`).
    Stored { created: bool },
    /// An object with other WAL is there: never replaced.
    Conflict(String),
    /// Worth trying again.
    Failed(String),
}

/// Stores a WAL object unless one is there, which must then hold the same
/// WAL (range and CRC of the raw bytes). A store that answers "already
/// there" by dropping the connection before it has read the body (s3s-fs,
/// with objects of megabytes) fails as if transiently: the key is looked
/// at then, and an object there is that answer.
pub(crate) async fn put_wal(
    storage: &dyn Storage,
    key: &str,
    encoded: Bytes,
    crc: u32,
    start: pgpitr_types::Lsn,
    end: pgpitr_types::Lsn,
) -> PutWal {
    match storage.put_if_absent(key, encoded).await {
        Ok(PutOutcome::Created) => return PutWal::Stored { created: true },
        Ok(PutOutcome::AlreadyExists) => {}
        Err(e) => match storage.head(key).await {
            Ok(_) => {}
            Err(_) => return PutWal::Failed(e.to_string()),
        },
    }
    match read_object(storage, key).await {
        Ok((h, _)) if h.raw_crc == crc && h.start == start && h.end == end => PutWal::Stored { created: false },
        Ok((h, _)) => PutWal::Conflict(format!(
            "stored object covers {}..{} with checksum {:08x}, the WAL to store covers {start}..{end} with {crc:08x}",
            h.start, h.end, h.raw_crc
        )),
        Err(e) => PutWal::Failed(e.to_string()),
    }
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::Blocks { chunk, .. } => u64::from(chunk.raw_len),
            Source::Raw(raw) => raw.len() as u64,
        }
    }
}

/// Encodes a merged piece: earlier blocks copied, raw runs compressed, the
/// CRC of the whole combined from theirs. Publishes its blocks in `cell`.
fn encode_merge(
    id: WalObjectId,
    start: Lsn,
    sources: &[Source],
    summary: &WalSummary,
    cell: ChunkCell,
) -> (Bytes, u32) {
    let mut crc = crc32fast::Hasher::new();
    let spans: Vec<Span> = sources
        .iter()
        .map(|s| match s {
            Source::Blocks { chunk, crc: c } => {
                crc.combine(&crc32fast::Hasher::new_with_initial_len(*c, u64::from(chunk.raw_len)));
                Span::Stored(chunk)
            }
            Source::Raw(raw) => {
                crc.update(raw);
                Span::Raw(raw)
            }
        })
        .collect();
    let crc = crc.finalize();
    let (encoded, _) = object::encode_spans(id.tli, start, &spans, crc, summary, None);
    // The whole payload is one run of framed blocks: the next merge copies it.
    if let Ok(header) = object::decode_header(&encoded) {
        let raw_len = header.start.distance_to(header.end) as u32;
        let _ = cell.set(Chunk { raw_len, framed: encoded.slice(header.payload_offset..) });
    }
    (encoded, crc)
}

/// Result of one upload task.
pub(crate) struct Done {
    pub id: WalObjectId,
    pub start: Lsn,
    pub end: Lsn,
    /// Pieces made redundant once this (complete segment) is stored.
    pub superseded: Vec<WalObjectId>,
    /// The time the upload took.
    pub result: Result<Duration, StreamError>,
    /// For a journal append: what becomes of the journal.
    pub journal: Option<AppendEnd>,
}

/// Spare segment buffers kept for reuse (reusing one avoids faulting in a
/// fresh 16 MiB per segment). Two made a bulk load ~10% cheaper in CPU but
/// put steady RSS over its 64 MiB bound, so one it is.
const SPARE_BUFFERS: usize = 1;
/// Encode buffers kept for reuse: one object being written while the next
/// is encoded. Each pins up to one compressed segment of memory.
const ENCODE_BUFFERS: usize = 2;

/// The uploads of one session in flight, and the deletions of what stored
/// objects replaced.
pub(crate) struct Uploads {
    storage: Arc<dyn Storage>,
    seg: WalSegSize,
    set: tokio::task::JoinSet<Done>,
    /// Complete segments being stored.
    pub(crate) segments: usize,
    /// A task was spawned since the writer last yielded.
    spawned: bool,
    /// Cancels uploads only when a shutdown runs out of time.
    pub(crate) cancel: CancellationToken,
    /// Encode buffers and spare segment buffers, recycled.
    pub(crate) bufs: Buffers,
    /// Aborted with the session.
    cleanups: tokio::task::JoinSet<()>,
}

impl Uploads {
    pub(crate) fn new(storage: Arc<dyn Storage>, seg: WalSegSize, cancel: CancellationToken) -> Uploads {
        let bufs = Buffers {
            encode: object::encode_pool(ENCODE_BUFFERS, seg.bytes() as usize),
            segments: SpareSegments::new(SPARE_BUFFERS, seg.bytes() as usize),
        };
        Uploads {
            storage,
            seg,
            set: tokio::task::JoinSet::new(),
            segments: 0,
            spawned: false,
            cancel,
            bufs,
            cleanups: tokio::task::JoinSet::new(),
        }
    }

    pub(crate) fn spawn(&mut self, task: impl std::future::Future<Output = Done> + Send + 'static) {
        self.spawned = true;
        self.set.spawn(task);
    }

    /// Stores `up`; `superseded` are deleted once it is stored.
    pub(crate) fn store(&mut self, up: WalUpload, superseded: Vec<WalObjectId>) {
        let (storage, seg, cancel, bufs) = (self.storage.clone(), self.seg, self.cancel.clone(), self.bufs.clone());
        self.spawn(async move {
            let (id, start, end) = (up.id, up.start, up.end());
            let result = store(&storage, seg, up, bufs, &cancel).await.map(|s| s.took);
            Done { id, start, end, superseded, result, journal: None }
        });
    }

    /// Whether a task was spawned since the last call.
    pub(crate) fn take_spawned(&mut self) -> bool {
        std::mem::take(&mut self.spawned)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub(crate) async fn next(&mut self) -> Option<Result<Done, StreamError>> {
        let done = self.set.join_next().await?;
        Some(done.map_err(|e| StreamError::Internal(format!("upload task failed: {e}"))))
    }

    /// Deletes `ids` in the background; a failure is only logged (the next
    /// start deletes what is left).
    pub(crate) fn delete_later(&mut self, ids: &[WalObjectId], what: &'static str) {
        while self.cleanups.try_join_next().is_some() {}
        if ids.is_empty() {
            return;
        }
        let storage = self.storage.clone();
        let keys: Vec<String> = ids.iter().map(|id| id.key(self.seg)).collect();
        self.cleanups.spawn(async move {
            if let Err(e) = storage.delete_many(&keys).await {
                tracing::warn!("deleting {} {what} failed (retried at next start): {e}", keys.len());
            }
        });
    }

    /// Waits up to `within` for the deletions in flight.
    pub(crate) async fn finish_cleanups(&mut self, within: Duration) {
        let _ = tokio::time::timeout(within, async { while self.cleanups.join_next().await.is_some() {} }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpitr_repo::wal::WalObjectId;
    use pgpitr_storage::LocalStorage;
    use pgpitr_types::{SegNo, TimelineId};

    fn up(fill: u8) -> WalUpload {
        WalUpload {
            id: WalObjectId::piece(TimelineId(1), SegNo(2), 0, 4096),
            start: Lsn(2 << 20),
            raw: Bytes::from(vec![fill; 4096]),
            summary: WalSummary::default(),
            blocks: Blocks::Piece(ChunkCell::default()),
        }
    }

    /// A local repository of 1 MiB segments, with one buffer of each kind.
    fn setup() -> (tempfile::TempDir, Arc<dyn Storage>, WalSegSize, CancellationToken, Buffers) {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let bufs = Buffers { encode: object::encode_pool(1, 1 << 20), segments: SpareSegments::new(1, 1 << 20) };
        (dir, storage, WalSegSize::new(1 << 20).unwrap(), CancellationToken::new(), bufs)
    }

    #[tokio::test]
    async fn same_bytes_again_is_fine_different_bytes_are_refused() {
        let (_dir, storage, seg, cancel, bufs) = setup();
        store(&storage, seg, up(1), bufs.clone(), &cancel).await.unwrap();
        store(&storage, seg, up(1), bufs.clone(), &cancel).await.expect("an identical copy is accepted");
        let err = store(&storage, seg, up(2), bufs.clone(), &cancel).await.unwrap_err();
        assert!(matches!(err, StreamError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        let (_, raw) = read_object(storage.as_ref(), &up(1).id.key(seg)).await.unwrap();
        assert_eq!(&raw[..], &[1u8; 4096][..], "the stored object is untouched");
    }

    #[tokio::test]
    async fn a_segment_buffer_is_handed_back_once_encoded() {
        let (_dir, storage, seg, cancel, bufs) = setup();
        let segment = |segno: u64| {
            let mut raw = BytesMut::with_capacity(1 << 20);
            raw.resize(1 << 20, segno as u8);
            let crc = crc32fast::hash(&raw);
            WalUpload {
                id: WalObjectId::segment(TimelineId(1), SegNo(segno)),
                start: Lsn(segno << 20),
                raw: raw.freeze(),
                summary: WalSummary::default(),
                blocks: Blocks::Segment { pieces: Vec::new(), crc },
            }
        };
        store(&storage, seg, segment(2), bufs.clone(), &cancel).await.unwrap();
        assert_eq!(bufs.segments.idle(), 1, "the raw buffer is kept for the next segment");
        assert!(bufs.segments.take().is_some());
        let held = segment(3);
        let view = held.raw.clone();
        store(&storage, seg, held, bufs.clone(), &cancel).await.unwrap();
        assert_eq!(bufs.segments.idle(), 0, "a buffer still viewed elsewhere is not reused");
        store(&storage, seg, segment(4), bufs.clone(), &cancel).await.unwrap();
        store(&storage, seg, segment(5), bufs.clone(), &cancel).await.unwrap();
        assert_eq!(bufs.segments.idle(), 1, "the pool is bounded");
        drop(view);
        let reused = bufs.segments.take().unwrap();
        assert!(reused.capacity() >= 1 << 20);
        assert!(bufs.segments.take().is_none());
    }

    #[tokio::test]
    async fn a_piece_cut_into_the_spare_buffer_hands_it_back_once_encoded() {
        let (_dir, storage, seg, cancel, bufs) = setup();
        let mut open = crate::segment::OpenSegment::new(TimelineId(1), SegNo(2), seg, &[], true);
        open.append(&[5u8; 200_000], Instant::now());
        let mut old = BytesMut::with_capacity(1 << 20);
        old.extend_from_slice(b"bytes of an earlier segment");
        bufs.segments.give(old.freeze());
        let (id, start, raw, summary, cell) = open.cut_piece(|| bufs.segments.take()).unwrap();
        assert!(raw[..] == [5u8; 200_000][..], "the piece holds its own bytes only");
        assert_eq!(bufs.segments.idle(), 0, "lent to the piece");
        store(&storage, seg, WalUpload { id, start, raw, summary, blocks: Blocks::Piece(cell) }, bufs.clone(), &cancel)
            .await
            .unwrap();
        assert_eq!(bufs.segments.idle(), 1, "back for the next segment once the piece is encoded");
        let (_, stored) = read_object(storage.as_ref(), &id.key(seg)).await.unwrap();
        assert!(stored[..] == [5u8; 200_000][..]);
    }
}
