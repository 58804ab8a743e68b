//! Storing one WAL object: encode off the async threads, write it
//! create-if-absent, and retry until it is stored or proven to conflict.

use crate::StreamError;
use bytes::Bytes;
use pgpitr_repo::object::{self, Codec, WalSummary};
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
}

impl WalUpload {
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.raw.len() as u64)
    }
}

/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Stores `up`, retrying storage failures with capped backoff for as long as
/// it takes (the caller withholds feedback meanwhile, so nothing is lost), or
/// until `cancel` fires. An existing object with the same key is accepted
/// only if it holds the same bytes: the same WAL is never stored twice with
/// different contents. Returns the time the successful attempt took.
pub async fn store(
    storage: &Arc<dyn Storage>,
    seg: WalSegSize,
    up: &WalUpload,
    cancel: &CancellationToken,
) -> Result<Duration, StreamError> {
    let key = up.id.key(seg);
    let (raw, start, tli, summary) = (up.raw.clone(), up.start, up.id.tli, up.summary.clone());
    let encoded = tokio::task::spawn_blocking(move || object::encode(tli, start, &raw, Codec::Lz4, &summary))
        .await
        .map_err(|e| StreamError::Internal(format!("encoder task failed: {e}")))?;
    let want_crc = crc32fast::hash(&up.raw);
    let mut attempt = 0u32;
    loop {
        let began = Instant::now();
        let result: Result<(), String> = match storage.put_if_absent(&key, encoded.clone()).await {
            Ok(PutOutcome::Created) => return Ok(began.elapsed()),
            Ok(PutOutcome::AlreadyExists) => match read_object(storage.as_ref(), &key).await {
                Ok((h, _)) if h.raw_crc == want_crc && h.start == up.start && h.end == up.end() => {
                    return Ok(began.elapsed());
                }
                Ok((h, _)) => {
                    return Err(StreamError::Conflict {
                        key,
                        detail: format!(
                            "stored object covers {}..{} with checksum {:08x}, received WAL covers {}..{} with {:08x}",
                            h.start,
                            h.end,
                            h.raw_crc,
                            up.start,
                            up.end(),
                            want_crc
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
