//! Storing one WAL object: encode off the async threads, write it
//! create-if-absent, and retry until it is stored or proven to conflict.

use crate::StreamError;
use crate::compact::Source;
use crate::journal::AppendEnd;
use crate::segment::ChunkCell;
use bytes::Bytes;
use pgpitr_repo::object::{self, BufPool, Chunk, Span, WalSummary};
use pgpitr_repo::wal::{WalObjectId, read_object};
use pgpitr_storage::{PutOutcome, Storage};
use pgpitr_types::{Lsn, WalSegSize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One object to store: the WAL from `start`, as `blocks` hold it.
#[derive(Debug, Clone)]
pub struct WalUpload {
    pub id: WalObjectId,
    pub start: Lsn,
    pub summary: WalSummary,
    pub blocks: Blocks,
}

/// What the payload is made of, and what is left to compress.
#[derive(Debug, Clone)]
pub enum Blocks {
    /// `head`, compressed by the upload, then `tail`'s blocks as they are;
    /// `crc` is the CRC-32 of all their raw bytes. The payload's blocks are
    /// published in `cell`, for merges.
    Framed { head: Bytes, tail: Option<Chunk>, crc: u32, cell: ChunkCell },
    /// Encoded already (a complete segment, compressed as it arrived).
    Encoded { object: Bytes, raw_len: u64, crc: u32 },
    /// A merged piece; its blocks are published in the cell for the next
    /// merge.
    Merge { sources: Vec<Source>, cell: ChunkCell },
}

impl Blocks {
    fn raw_len(&self) -> u64 {
        match self {
            Blocks::Framed { head, tail, .. } => head.len() as u64 + tail.as_ref().map_or(0, |t| u64::from(t.raw_len)),
            Blocks::Encoded { raw_len, .. } => *raw_len,
            Blocks::Merge { sources, .. } => sources.iter().map(Source::len).sum(),
        }
    }

    /// Bytes the encoder compresses or copies.
    fn encode_work(&self) -> u64 {
        match self {
            Blocks::Framed { head, tail, .. } => head.len() as u64 + tail.as_ref().map_or(0, |t| t.framed.len() as u64),
            Blocks::Encoded { .. } => 0,
            Blocks::Merge { .. } => self.raw_len(),
        }
    }
}

impl WalUpload {
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.blocks.raw_len())
    }
}

/// A stored object: how long the successful attempt took, and the CRC-32
/// of its raw bytes.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub took: Duration,
    pub crc: u32,
}

/// Buffers the uploads share with the stream: the open segment's blocks and
/// encoded objects go into these, recycled.
#[derive(Debug, Clone)]
pub struct Buffers {
    pub encode: BufPool,
}

/// Objects whose encoding touches up to this many bytes are encoded on the
/// async task itself.
const INLINE_ENCODE_MAX: u64 = 64 * 1024;

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The object `up` is stored as, and the CRC-32 of its raw bytes.
pub(crate) fn encode(up: &WalUpload, pool: Option<&BufPool>) -> (Bytes, u32) {
    let (id, start, summary) = (up.id, up.start, &up.summary);
    match &up.blocks {
        Blocks::Framed { head, tail, crc, cell } => {
            let mut spans = Vec::with_capacity(2);
            if !head.is_empty() {
                spans.push(Span::Raw(head));
            }
            spans.extend(tail.as_ref().map(Span::Stored));
            let encoded = object::encode_spans(id.tli, start, &spans, *crc, summary, pool);
            if let Some(chunk) = object::payload_chunk(&encoded) {
                let _ = cell.set(chunk);
            }
            (encoded, *crc)
        }
        Blocks::Encoded { object, crc, .. } => (object.clone(), *crc),
        Blocks::Merge { sources, cell } => encode_merge(id, start, sources, summary, cell),
    }
}

/// Stores `up`, retrying storage failures with capped backoff for as long as
/// it takes (the caller withholds feedback meanwhile, so nothing is lost), or
/// until `cancel` fires. An existing object with the same key is accepted
/// only if it holds the same bytes: the same WAL is never stored twice with
/// different contents.
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
    // Small pieces (synchronous mode, quiet servers) take microseconds to
    // encode: a hop to the blocking pool would cost more than it saves.
    let (encoded, want_crc) = if up.blocks.encode_work() <= INLINE_ENCODE_MAX {
        encode(&up, Some(&bufs.encode))
    } else {
        tokio::task::spawn_blocking(move || encode(&up, Some(&bufs.encode)))
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
    cell: &ChunkCell,
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
    let encoded = object::encode_spans(id.tli, start, &spans, crc, summary, None);
    // The whole payload is one run of framed blocks: the next merge copies it.
    if let Some(chunk) = object::payload_chunk(&encoded) {
        let _ = cell.set(chunk);
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

/// Buffers kept for reuse: the open segment's blocks, and objects being
/// written. Each pins up to one compressed segment of memory.
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
        let bufs = Buffers { encode: object::encode_pool(ENCODE_BUFFERS, seg.bytes() as usize) };
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
        let head = Bytes::from(vec![fill; 4096]);
        let crc = crc32fast::hash(&head);
        WalUpload {
            id: WalObjectId::piece(TimelineId(1), SegNo(2), 0, 4096),
            start: Lsn(2 << 20),
            summary: WalSummary::default(),
            blocks: Blocks::Framed { head, tail: None, crc, cell: ChunkCell::default() },
        }
    }

    /// A local repository of 1 MiB segments, with one buffer to recycle.
    fn setup() -> (tempfile::TempDir, Arc<dyn Storage>, WalSegSize, CancellationToken, Buffers) {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let bufs = Buffers { encode: object::encode_pool(1, 1 << 20) };
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

    /// A complete segment's buffer serves the next one once its object is
    /// stored: a busy stream does not fault in a fresh one per segment.
    #[tokio::test]
    async fn a_segment_buffer_is_reused_once_its_object_is_stored() {
        let (_dir, storage, seg, cancel, bufs) = setup();
        let full = |segno: u64| {
            let mut open =
                crate::segment::OpenSegment::new_in(&bufs.encode, TimelineId(1), SegNo(segno), seg, &[], true);
            let raw: Vec<u8> = (0..seg.bytes() as u32).map(|i| (i / 3 + segno as u32) as u8).collect();
            open.append(&raw, Instant::now());
            (open.into_complete(None).0, raw)
        };
        let (first, raw) = full(2);
        assert_eq!(bufs.encode.idle(), 0);
        let id = first.id;
        store(&storage, seg, first, bufs.clone(), &cancel).await.unwrap();
        assert_eq!(bufs.encode.idle(), 1, "back once stored");
        let (_, stored) = read_object(storage.as_ref(), &id.key(seg)).await.unwrap();
        assert!(stored[..] == raw[..]);
        let (second, _) = full(3);
        assert_eq!(bufs.encode.idle(), 0, "the next segment took it");
        let view = second.clone();
        store(&storage, seg, second, bufs.clone(), &cancel).await.unwrap();
        assert_eq!(bufs.encode.idle(), 0, "a buffer still viewed elsewhere is not reused");
        drop(view);
        assert_eq!(bufs.encode.idle(), 1);
    }
}
