//! Parts of an archive: wrapped in the repository container (compressed
//! first with client-side lz4) on the blocking pool, stored with bounded
//! parallelism.

use crate::BackupError;
use crate::progress::BackupProgress;
use bytes::Bytes;
use pgpitr_repo::backup::{BackupId, PartInfo};
use pgpitr_repo::object::{self, Codec, WalSummary};
use pgpitr_storage::{Storage, StorageError};
use pgpitr_types::{Lsn, TimelineId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Stores `data` under `key`, riding out storage outages: the storage
/// already retries briefly; this retries transient failures again with
/// backoff (1 s doubling to 30 s) until `limit` has passed.
pub(crate) async fn put_retrying(
    storage: &dyn Storage,
    key: &str,
    data: Bytes,
    limit: Duration,
) -> Result<(), StorageError> {
    let began = Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        match storage.put(key, data.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && began.elapsed() + delay < limit => {
                tracing::warn!(key, retry_in = ?delay, "storing backup object failed, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Encodes raw bytes as a stored backup object: a container with `codec`
/// (lz4 or zstd, or none for bytes the server already compressed), its
/// "LSN range" being the byte range within the archive stream.
pub(crate) fn encode_part(tli: TimelineId, offset: u64, raw: &[u8], codec: Codec, zstd_level: i32) -> Bytes {
    object::encode_at_level(tli, Lsn(offset), raw, codec, zstd_level, &WalSummary::default())
}

fn internal(e: tokio::task::JoinError) -> BackupError {
    BackupError::Invalid(format!("internal error: a worker task failed: {e}"))
}

/// One part to store: bytes `offset..offset + raw.len()` of an archive.
pub(crate) struct PartJob {
    pub archive: usize,
    pub archive_name: String,
    pub index: u32,
    pub offset: u64,
    pub raw: Bytes,
    pub codec: Codec,
    /// For a compressed stream: the tar bytes the server had sent when
    /// this part was cut (its progress count), for the progress display.
    pub tar_mark: Option<u64>,
}

/// Runs part uploads, at most `max` at once. [`Self::submit`] waits for a
/// free slot, so whoever feeds it (the server connection) is slowed to the
/// storage's pace and memory stays bounded.
pub(crate) struct Uploader {
    zstd_level: i32,
    storage: Arc<dyn Storage>,
    id: BackupId,
    tli: TimelineId,
    max: usize,
    limit: Duration,
    progress: Arc<BackupProgress>,
    set: JoinSet<Result<(usize, PartInfo), BackupError>>,
    done: Vec<(usize, PartInfo)>,
}

impl Uploader {
    pub fn new(
        zstd_level: i32,
        storage: Arc<dyn Storage>,
        id: BackupId,
        tli: TimelineId,
        max: usize,
        limit: Duration,
        progress: Arc<BackupProgress>,
    ) -> Self {
        Uploader {
            zstd_level,
            storage,
            id,
            tli,
            max: max.max(1),
            limit,
            progress,
            set: JoinSet::new(),
            done: Vec::new(),
        }
    }

    fn collect(
        &mut self,
        r: Result<Result<(usize, PartInfo), BackupError>, tokio::task::JoinError>,
    ) -> Result<(), BackupError> {
        self.done.push(r.map_err(internal)??);
        Ok(())
    }

    /// Queues a part once fewer than `max` are in flight. An earlier
    /// part's failure is returned here.
    pub async fn submit(&mut self, job: PartJob) -> Result<(), BackupError> {
        while let Some(r) = self.set.try_join_next() {
            self.collect(r)?;
        }
        while self.set.len() >= self.max {
            match self.set.join_next().await {
                Some(r) => self.collect(r)?,
                None => break,
            }
        }
        let storage = self.storage.clone();
        let key = self.id.part_key(&job.archive_name, job.index);
        let (tli, limit, progress, level) = (self.tli, self.limit, self.progress.clone(), self.zstd_level);
        self.set.spawn(async move {
            let raw_len = job.raw.len() as u64;
            let (raw, offset, codec) = (job.raw, job.offset, job.codec);
            let obj = tokio::task::spawn_blocking(move || encode_part(tli, offset, &raw, codec, level))
                .await
                .map_err(internal)?;
            let header = object::decode_header(&obj)
                .map_err(|e| BackupError::Invalid(format!("internal error: encoded part does not decode: {e}")))?;
            let stored_len = obj.len() as u64;
            put_retrying(storage.as_ref(), &key, obj, limit).await?;
            match job.tar_mark {
                // Parts finish in any order; the display only moves forward.
                Some(mark) => BackupProgress::raise(&progress.stored_raw, mark),
                None => BackupProgress::add(&progress.stored_raw, raw_len),
            }
            BackupProgress::add(&progress.stored, stored_len);
            Ok((job.archive, PartInfo { index: job.index, raw_len, stored_len, crc: header.raw_crc }))
        });
        Ok(())
    }

    /// Waits for every part; returns (archive, part) pairs in no order.
    pub async fn finish(&mut self) -> Result<Vec<(usize, PartInfo)>, BackupError> {
        while let Some(r) = self.set.join_next().await {
            self.collect(r)?;
        }
        Ok(std::mem::take(&mut self.done))
    }
}
