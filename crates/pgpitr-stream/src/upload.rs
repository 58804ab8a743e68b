//! Storing one WAL object: encode off the async threads, write it
//! create-if-absent, and retry until it is stored or proven to conflict.

use crate::StreamError;
use crate::segment::{ChunkCell, PartChunk, segment_pieces};
use bytes::{Bytes, BytesMut};
use pgpitr_repo::object::{self, BufPool, Piece, WalSummary};
use pgpitr_repo::wal::{WalObjectId, read_object};
use pgpitr_storage::{PutOutcome, Storage};
use pgpitr_types::{Lsn, WalSegSize};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    /// A part: compress it, and publish the block for its segment.
    Part(ChunkCell),
    /// A complete segment: reuse its parts' blocks where they exist.
    Segment(Vec<PartChunk>),
}

impl WalUpload {
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.raw.len() as u64)
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
/// different contents. Returns the time the successful attempt took, and the
/// raw buffer once encoded (when nothing else holds it) for reuse.
///
/// Takes `up` by value so the raw bytes are freed as soon as they are
/// encoded: an upload in flight holds only its compressed form.
pub async fn store(
    storage: &Arc<dyn Storage>,
    seg: WalSegSize,
    up: WalUpload,
    pool: BufPool,
    cancel: &CancellationToken,
) -> Result<(Duration, Option<BytesMut>), StreamError> {
    let key = up.id.key(seg);
    let (start, end) = (up.start, up.end());
    let WalUpload { id, raw, summary, blocks, .. } = up;
    let encode = move || {
        let crc = crc32fast::hash(&raw);
        let encoded = match blocks {
            Blocks::Part(cell) => {
                let (encoded, mut fresh) =
                    object::encode_pieces(id.tli, start, &[Piece::Raw(&raw)], crc, &summary, Some(&pool));
                if let Some(chunk) = fresh.pop() {
                    let _ = cell.set(chunk);
                }
                encoded
            }
            Blocks::Segment(parts) => {
                object::encode_pieces(id.tli, start, &segment_pieces(&raw, &parts), crc, &summary, Some(&pool)).0
            }
        };
        (encoded, crc, raw.try_into_mut().ok())
    };
    // Small parts (synchronous mode, quiet servers) take microseconds to
    // encode: a hop to the blocking pool would cost more than it saves.
    let (encoded, want_crc, spare) = if (end.0 - start.0) <= INLINE_ENCODE_MAX {
        encode()
    } else {
        tokio::task::spawn_blocking(encode)
            .await
            .map_err(|e| StreamError::Internal(format!("encoder task failed: {e}")))?
    };
    let mut attempt = 0u32;
    loop {
        let began = Instant::now();
        let result: Result<(), String> = match storage.put_if_absent(&key, encoded.clone()).await {
            Ok(PutOutcome::Created) => return Ok((began.elapsed(), spare)),
            Ok(PutOutcome::AlreadyExists) => match read_object(storage.as_ref(), &key).await {
                Ok((h, _)) if h.raw_crc == want_crc && h.start == start && h.end == end => {
                    return Ok((began.elapsed(), spare));
                }
                Ok((h, _)) => {
                    return Err(StreamError::Conflict {
                        key,
                        detail: format!(
                            "stored object covers {}..{} with checksum {:08x}, received WAL covers {}..{} with {:08x}",
                            h.start, h.end, h.raw_crc, start, end, want_crc
                        ),
                    });
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(msg) = result {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpitr_repo::wal::WalObjectId;
    use pgpitr_storage::LocalStorage;
    use pgpitr_types::{SegNo, TimelineId};

    fn up(fill: u8) -> WalUpload {
        WalUpload {
            id: WalObjectId::part(TimelineId(1), SegNo(2), 0, 4096),
            start: Lsn(2 << 20),
            raw: Bytes::from(vec![fill; 4096]),
            summary: WalSummary::default(),
            blocks: Blocks::Part(ChunkCell::default()),
        }
    }

    #[tokio::test]
    async fn same_bytes_again_is_fine_different_bytes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let seg = WalSegSize::new(1 << 20).unwrap();
        let cancel = CancellationToken::new();
        let pool = BufPool::for_objects(1, 1 << 20);
        store(&storage, seg, up(1), pool.clone(), &cancel).await.unwrap();
        store(&storage, seg, up(1), pool.clone(), &cancel).await.expect("an identical copy is accepted");
        let err = store(&storage, seg, up(2), pool.clone(), &cancel).await.unwrap_err();
        assert!(matches!(err, StreamError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        let (_, raw) = read_object(storage.as_ref(), &up(1).id.key(seg)).await.unwrap();
        assert_eq!(&raw[..], &[1u8; 4096][..], "the stored object is untouched");
    }
}
