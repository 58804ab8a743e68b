//! Reading a stored backup: parts → lz4 or zstd → tar → files, each one
//! checked, handed to an [`EntrySink`] (a restore writes them; `verify`
//! discards them).
//!
//! ```text
//!  parts ──get + check (≤ parallelism at once, in order)──▶ channel ──┬──────────────────────────▶ tar reader (blocking thread) ──▶ sink
//!                             server-compressed archives: └─▶ frame decoder ─▶ channel ─┘   size + CRC-32C vs manifest
//! ```
//!
//! Every part is checked against `backup.json` (offset, length, CRC), every
//! file against the manifest (size, CRC-32C) before the sink is told it is
//! complete, and a file of the manifest missing from the archives is an
//! error. An lz4 or zstd stream that does not decode is an error naming the
//! part being read.

pub mod manifest;
pub mod tar;

pub use manifest::{Manifest, ManifestFile, WalRange};

use crate::Repository;
use crate::backup::{ArchiveCompression, ArchiveInfo, BackupId, BackupInfo, INFO_FORMAT_VERSION, PartInfo};
use crate::object;
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use pgpitr_storage::{Storage, StorageError};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tar::{BLOCK, Kind};

/// The control file: a restore writes it last, and a backup without it is
/// no backup.
pub const PG_CONTROL: &[u8] = b"global/pg_control";
/// Where tablespaces were, rewritten by a restore that relocates them.
pub const TABLESPACE_MAP: &[u8] = b"tablespace_map";
/// The largest `pg_control` or `tablespace_map` read: a restore keeps them
/// in memory to write at the end, and anything larger is not one.
pub const SMALL_FILE_LIMIT: u64 = 1 << 20;
/// Decompressed bytes handed from the frame decoder to the tar reader at once.
const DECODED_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("backup {id}: corrupt {what}: {reason}")]
    Corrupt { id: String, what: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Repo(#[from] crate::RepoError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ReadError {
    pub fn io(path: impl AsRef<std::path::Path>, source: io::Error) -> ReadError {
        ReadError::Io { path: path.as_ref().display().to_string(), source }
    }

    /// The object is not in storage.
    pub fn is_not_found(&self) -> bool {
        match self {
            ReadError::Storage(e) => e.is_not_found(),
            ReadError::Repo(e) => e.is_not_found(),
            _ => false,
        }
    }
}

fn invalid(msg: impl Into<String>) -> ReadError {
    ReadError::Invalid(msg.into())
}

fn corrupt(id: &BackupId, what: impl Into<String>, reason: impl Into<String>) -> ReadError {
    ReadError::Corrupt { id: id.to_string(), what: what.into(), reason: reason.into() }
}

/// A file of the backup that is not what the manifest says; `id` names
/// the backup (empty where the caller adds it).
pub fn file_corrupt(id: &str, path: &[u8], reason: String) -> ReadError {
    ReadError::Corrupt { id: id.to_string(), what: format!("file {}", shown(path)), reason }
}

fn shown(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Live counters of a read, for whoever shows progress.
#[derive(Debug, Default)]
pub struct ReadProgress {
    /// The backup's size (file bytes), known once the read is opened.
    pub total: AtomicU64,
    /// File bytes checked so far.
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

impl ReadProgress {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What a whole read went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Files of the manifest read and checked, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Parts fetched, and their stored size.
    pub parts: u64,
    pub stored_bytes: u64,
}

/// Where the files of a backup go, on the reader's blocking thread. Paths
/// are relative to their archive's root; `space` is the tablespace OID, or
/// `None` for the base archive, whose paths are the manifest's.
pub trait EntrySink: Send + 'static {
    type File: Write;
    fn directory(&mut self, space: Option<u32>, path: &[u8]) -> Result<(), ReadError>;
    fn open(&mut self, space: Option<u32>, path: &[u8], size: u64) -> Result<Self::File, ReadError>;
    /// Called once the file's bytes all matched the manifest.
    fn close(&mut self, space: Option<u32>, path: &[u8], file: Self::File) -> Result<(), ReadError>;
    /// Names a failed write to a file this sink opened.
    fn write_failed(&self, _space: Option<u32>, path: &[u8], e: io::Error) -> ReadError {
        ReadError::Io { path: shown(path), source: e }
    }
}

/// A sink that keeps nothing: the read only checks.
pub struct Discard;

impl EntrySink for Discard {
    type File = io::Sink;
    fn directory(&mut self, _: Option<u32>, _: &[u8]) -> Result<(), ReadError> {
        Ok(())
    }
    fn open(&mut self, _: Option<u32>, _: &[u8], _: u64) -> Result<io::Sink, ReadError> {
        Ok(io::sink())
    }
    fn close(&mut self, _: Option<u32>, _: &[u8], _: io::Sink) -> Result<(), ReadError> {
        Ok(())
    }
}

/// One complete backup, opened for reading: its manifest is fetched and
/// checked against `backup.json`.
pub struct BackupReader {
    storage: Arc<dyn Storage>,
    id: BackupId,
    info: BackupInfo,
    raw_manifest: Bytes,
    manifest: Arc<Manifest>,
    parallelism: usize,
    progress: Arc<ReadProgress>,
}

impl BackupReader {
    pub async fn open(repo: &Repository, info: &BackupInfo) -> Result<BackupReader, ReadError> {
        let id = readable_id(info)?;
        for a in &info.archives {
            let Some(oid) = a.tablespace_oid else { continue };
            match a.tablespace_location.as_deref() {
                Some(l) if std::path::Path::new(l).is_absolute() => {}
                Some(l) => {
                    return Err(invalid(format!("tablespace {oid} of backup {id} is at {l}, not an absolute path")));
                }
                None => return Err(invalid(format!("tablespace {oid} of backup {id} has no location"))),
            }
        }
        let storage = repo.storage().clone();
        let (raw_manifest, manifest) = read_manifest(storage.as_ref(), &id, info).await?;
        Ok(BackupReader {
            storage,
            id,
            info: info.clone(),
            raw_manifest,
            manifest: Arc::new(manifest),
            parallelism: 4,
            progress: Arc::default(),
        })
    }

    /// Parts fetched and decoded ahead of the tar reader.
    pub fn parallelism(mut self, n: usize) -> BackupReader {
        self.parallelism = n.max(1);
        self
    }

    pub fn progress(mut self, p: Arc<ReadProgress>) -> BackupReader {
        p.total.store(self.info.size_bytes, Ordering::Relaxed);
        self.progress = p;
        self
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest as stored (for `pg_verifybackup`).
    pub fn raw_manifest(&self) -> &Bytes {
        &self.raw_manifest
    }

    /// Reads every archive into `sink` (tablespaces first, the base archive
    /// with pg_control last), then checks that no file of the manifest is
    /// missing.
    pub async fn read<S: EntrySink>(&self, sink: S) -> Result<(S, ReadStats), ReadError> {
        let mut order: Vec<&ArchiveInfo> = self.info.archives.iter().collect();
        order.sort_by_key(|a| a.tablespace_oid.is_none());
        let mut tr = TarReader {
            manifest: self.manifest.clone(),
            seen: HashSet::new(),
            sink,
            stats: ReadStats::default(),
            progress: self.progress.clone(),
        };
        // Decoded parts in flight (fetched ahead, queued, being read), in
        // recycled buffers: a fresh one per part faults in every page again.
        let largest = self.info.archives.iter().flat_map(|a| &a.parts).map(|p| p.raw_len).max().unwrap_or(0);
        let pool = object::BufPool::new(self.parallelism + 4, usize::try_from(largest).unwrap_or(usize::MAX));
        for archive in order {
            tr = self.read_archive(archive, tr, &pool).await?;
        }
        let missing: Vec<String> =
            tr.manifest.files.iter().filter(|f| !tr.seen.contains(&f.path)).map(|f| shown(&f.path)).collect();
        if let Some(first) = missing.first() {
            return Err(corrupt(
                &self.id,
                "archives",
                format!("{} files of the manifest are missing, e.g. {first}", missing.len()),
            ));
        }
        if !tr.seen.contains(PG_CONTROL) {
            return Err(file_corrupt(&self.info.id, PG_CONTROL, "is missing from the backup".into()));
        }
        Ok((tr.sink, tr.stats))
    }

    async fn read_archive<S: EntrySink>(
        &self,
        archive: &ArchiveInfo,
        mut tr: TarReader<S>,
        pool: &object::BufPool,
    ) -> Result<TarReader<S>, ReadError> {
        let id = &self.id;
        let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Bytes)>(2);
        let mut offset = 0u64;
        let jobs: Vec<_> = archive
            .parts
            .iter()
            .map(|p| {
                let key = id.part_key(&archive.name, p.index);
                let job = fetch_part(self.storage.clone(), key, p.clone(), offset, Some(pool.clone()));
                offset += p.raw_len;
                job
            })
            .collect();
        let nparts = jobs.len() as u64;
        let stored: u64 = archive.parts.iter().map(|p| p.stored_len).sum();
        let producer = async move {
            let mut parts = futures_util::stream::iter(jobs).buffered(self.parallelism);
            let mut i = 0;
            while let Some(r) = parts.next().await {
                let raw = r.map_err(|e| match e {
                    ReadError::Corrupt { what, reason, .. } => corrupt(id, what, reason),
                    e => e,
                })?;
                if tx.send((i, raw)).await.is_err() {
                    break; // the reader stopped; its error says why
                }
                i += 1;
            }
            Ok::<(), ReadError>(())
        };
        // Server-compressed archives pass through a frame decoder on a
        // thread of its own, so decoding overlaps with the sink's writes.
        let (rx, decoder) = match archive.compression {
            ArchiveCompression::None => (rx, None),
            kind @ (ArchiveCompression::Lz4 | ArchiveCompression::Zstd) => {
                let (dtx, drx) = tokio::sync::mpsc::channel::<(usize, Bytes)>(4);
                let keys: Vec<String> = archive.parts.iter().map(|p| id.part_key(&archive.name, p.index)).collect();
                let reader = ChannelReader { rx, cur: Bytes::new(), part: None };
                let backup_id = id.to_string();
                let task = tokio::task::spawn_blocking(move || decode_frames(kind, reader, &dtx, &keys, &backup_id));
                (drx, Some(task))
            }
        };
        let space = archive.tablespace_oid;
        let prefix = space.map(|oid| format!("pg_tblspc/{oid}/").into_bytes()).unwrap_or_default();
        let consumer = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader { rx, cur: Bytes::new(), part: None };
            let r = tr.archive(&mut reader, space, &prefix);
            (tr, r)
        });
        let decoded = async move {
            match decoder {
                Some(task) => task.await.map_err(|e| invalid(format!("internal error: {e}")))?,
                None => Ok(()),
            }
        };
        let (produced, decoded, consumed) = tokio::join!(producer, decoded, consumer);
        let (mut tr, r) = consumed.map_err(|e| invalid(format!("internal error: {e}")))?;
        produced?;
        // A stream that does not decode explains what the tar reader then saw.
        decoded?;
        r.map_err(|e| match e {
            ReadError::Corrupt { what, reason, .. } => ReadError::Corrupt {
                id: self.info.id.clone(),
                what: format!("archive {}: {what}", archive.name),
                reason,
            },
            e => e,
        })?;
        tr.stats.parts += nparts;
        tr.stats.stored_bytes += stored;
        Ok(tr)
    }

    /// Fetches and checks the manifest and every part one by one, without
    /// decoding them: what `verify` reports when a read failed. Returns the
    /// objects that are sound and their stored bytes, and a problem per key.
    pub async fn check_objects(
        repo: &Repository,
        info: &BackupInfo,
        concurrency: usize,
    ) -> (usize, u64, Vec<(String, ReadError)>) {
        let Ok(id) = readable_id(info) else {
            return (0, 0, vec![(info.id.clone(), invalid(format!("backup ID {:?} is not valid", info.id)))]);
        };
        let storage = repo.storage().clone();
        let (mut sound, mut bytes, mut problems) = (0, 0, Vec::new());
        match read_manifest(storage.as_ref(), &id, info).await {
            Ok(_) => {
                sound += 1;
                bytes += info.manifest.size;
            }
            Err(e) => problems.push((id.manifest_key(), e)),
        }
        let mut jobs = Vec::new();
        for archive in &info.archives {
            let mut offset = 0u64;
            for part in &archive.parts {
                let key = id.part_key(&archive.name, part.index);
                jobs.push((key.clone(), fetch_part(storage.clone(), key, part.clone(), offset, None)));
                offset += part.raw_len;
            }
        }
        let mut checks = futures_util::stream::iter(jobs)
            .map(|(key, job)| async move { (key, job.await) })
            .buffer_unordered(concurrency.max(1));
        while let Some((key, result)) = checks.next().await {
            match result {
                Ok(raw) => {
                    sound += 1;
                    bytes += raw.len() as u64;
                }
                Err(e) => problems.push((key, e)),
            }
        }
        (sound, bytes, problems)
    }
}

/// The backup's ID, if this pgpitr can read a backup of its format.
fn readable_id(info: &BackupInfo) -> Result<BackupId, ReadError> {
    let id = info.backup_id().ok_or_else(|| invalid(format!("backup ID {:?} is not valid", info.id)))?;
    if info.format_version > INFO_FORMAT_VERSION {
        return Err(invalid(format!(
            "backup {} has format version {}; this pgpitr reads up to {INFO_FORMAT_VERSION}: use a newer pgpitr",
            info.id, info.format_version
        )));
    }
    Ok(id)
}

/// Fetches, decodes and checks the stored `backup_manifest` against
/// `backup.json`; returns its bytes and what they say.
async fn read_manifest(
    storage: &dyn Storage,
    id: &BackupId,
    info: &BackupInfo,
) -> Result<(Bytes, Manifest), ReadError> {
    let stored = storage.get(&id.manifest_key()).await?;
    let (header, raw) = object::decode(&stored).map_err(|e| corrupt(id, "backup_manifest", e.0))?;
    if raw.len() as u64 != info.manifest.size || header.raw_crc != info.manifest.crc {
        return Err(corrupt(id, "backup_manifest", "size or checksum differs from backup.json"));
    }
    let manifest = Manifest::parse(&raw).map_err(|e| corrupt(id, "backup_manifest", e))?;
    Ok((raw, manifest))
}

/// Fetches, decodes and checks one part against `backup.json`.
async fn fetch_part(
    storage: Arc<dyn Storage>,
    key: String,
    part: PartInfo,
    offset: u64,
    pool: Option<object::BufPool>,
) -> Result<Bytes, ReadError> {
    let obj = storage.get(&key).await?;
    tokio::task::spawn_blocking(move || {
        let bad = |reason: String| ReadError::Corrupt { id: String::new(), what: key.clone(), reason };
        if obj.len() as u64 != part.stored_len {
            return Err(bad(format!("object is {} bytes, backup.json says {}", obj.len(), part.stored_len)));
        }
        let (h, raw) = object::decode_shared(&obj, pool.as_ref()).map_err(|e| bad(e.0))?;
        if h.start.0 != offset || raw.len() as u64 != part.raw_len || h.raw_crc != part.crc {
            return Err(bad("offset, length or checksum differs from backup.json".into()));
        }
        Ok(raw)
    })
    .await
    .map_err(|e| invalid(format!("internal error: {e}")))?
}

/// Decodes the concatenated lz4 or zstd frames of an archive's parts into
/// chunks of the tar. Stops quietly when the tar reader has what it needs;
/// an error names the part the failing bytes came from.
fn decode_frames(
    kind: ArchiveCompression,
    reader: ChannelReader,
    tx: &tokio::sync::mpsc::Sender<(usize, Bytes)>,
    keys: &[String],
    backup_id: &str,
) -> Result<(), ReadError> {
    let out = Decoded { tx, keys, backup_id };
    match kind {
        ArchiveCompression::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| invalid(format!("internal error: zstd decoder: {e}")))?;
            out.pump(dec, "zstd", |d| d.get_ref().part)
        }
        ArchiveCompression::Lz4 | ArchiveCompression::None => {
            out.pump(lz4_flex::frame::FrameDecoder::new(reader), "lz4", |d| d.get_ref().part)
        }
    }
}

/// Where [`decode_frames`] sends the tar, and what names its errors.
struct Decoded<'a> {
    tx: &'a tokio::sync::mpsc::Sender<(usize, Bytes)>,
    keys: &'a [String],
    backup_id: &'a str,
}

impl Decoded<'_> {
    fn pump<D: Read>(&self, mut dec: D, name: &str, part: impl Fn(&D) -> Option<usize>) -> Result<(), ReadError> {
        loop {
            let mut buf = vec![0u8; DECODED_CHUNK];
            let mut n = 0;
            while n < buf.len() {
                match dec.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let what = part(&dec)
                            .and_then(|i| self.keys.get(i))
                            .or(self.keys.first())
                            .cloned()
                            .unwrap_or_else(|| "an archive".into());
                        let reason = match e.kind() {
                            io::ErrorKind::UnexpectedEof => format!("the {name} stream ends inside a frame"),
                            _ => format!("the {name} stream does not decode: {e}"),
                        };
                        return Err(ReadError::Corrupt { id: self.backup_id.to_string(), what, reason });
                    }
                }
            }
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if self.tx.blocking_send((0, Bytes::from(buf))).is_err() {
                return Ok(()); // the tar reader stopped; its result says why
            }
        }
    }
}

/// Chunks of an archive stream as a byte stream, for the blocking side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<(usize, Bytes)>,
    cur: Bytes,
    /// The part `cur` came from.
    part: Option<usize>,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some((i, b)) => {
                    self.cur = b;
                    self.part = Some(i);
                }
                None => break,
            }
        }
        Ok(&self.cur)
    }

    fn consume(&mut self, n: usize) {
        self.cur.advance(n.min(self.cur.len()));
    }
}

/// The checks carried across archives (runs on a blocking thread).
struct TarReader<S> {
    manifest: Arc<Manifest>,
    seen: HashSet<Vec<u8>>,
    sink: S,
    stats: ReadStats,
    progress: Arc<ReadProgress>,
}

/// A failed copy: reading the archive, or writing to the sink.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

impl<S: EntrySink> TarReader<S> {
    /// Reads one tar archive; `prefix` maps its paths to the manifest's
    /// (`pg_tblspc/<oid>/` for tablespaces).
    fn archive(&mut self, r: &mut impl BufRead, space: Option<u32>, prefix: &[u8]) -> Result<(), ReadError> {
        let manifest = self.manifest.clone();
        let index: HashMap<&[u8], &ManifestFile> = manifest.by_path();
        let stream_err =
            |e: io::Error| ReadError::Corrupt { id: String::new(), what: "tar stream".into(), reason: e.to_string() };
        let mut block = [0u8; BLOCK];
        loop {
            if !tar::read_block(r, &mut block).map_err(stream_err)? {
                return Err(file_corrupt("", b"(archive)", "ends without the tar end marker".into()));
            }
            let Some(h) = tar::parse_header(&block).map_err(|e| file_corrupt("", b"(archive)", e))? else {
                return Ok(()); // the end marker; any trailing blocks are padding
            };
            let mpath: Vec<u8> = [prefix, &h.path].concat();
            match h.kind {
                Kind::Dir => self.sink.directory(space, &h.path)?,
                Kind::Symlink(link) => {
                    return Err(file_corrupt(
                        "",
                        &mpath,
                        format!("unexpected symlink to {} (backups are taken with TABLESPACE_MAP)", shown(&link)),
                    ));
                }
                Kind::File => {
                    let m = index
                        .get(mpath.as_slice())
                        .copied()
                        .ok_or_else(|| file_corrupt("", &mpath, "is not in the backup manifest".into()))?;
                    if !self.seen.insert(mpath.clone()) {
                        return Err(file_corrupt("", &mpath, "appears twice in the backup".into()));
                    }
                    if h.size != m.size {
                        return Err(file_corrupt(
                            "",
                            &mpath,
                            format!("is {} bytes, the manifest says {}", h.size, m.size),
                        ));
                    }
                    if (mpath == PG_CONTROL || mpath == TABLESPACE_MAP) && h.size > SMALL_FILE_LIMIT {
                        return Err(file_corrupt("", &mpath, format!("is implausibly large ({} bytes)", h.size)));
                    }
                    let mut file = self.sink.open(space, &h.path, h.size)?;
                    let crc = copy_checked(r, h.size, &mut file).map_err(|e| match e {
                        CopyError::Read(e) => stream_err(e),
                        CopyError::Write(e) => self.sink.write_failed(space, &h.path, e),
                    })?;
                    if let Some(want) = m.crc32c
                        && !m.crc32c_matches(crc)
                    {
                        return Err(file_corrupt(
                            "",
                            &mpath,
                            format!("CRC-32C is {:08x}, the manifest says {:08x}", crc.swap_bytes(), want.swap_bytes()),
                        ));
                    }
                    self.sink.close(space, &h.path, file)?;
                    self.stats.files += 1;
                    self.stats.bytes += h.size;
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    self.progress.bytes.fetch_add(h.size, Ordering::Relaxed);
                    tar::skip(r, tar::padding(h.size)).map_err(stream_err)?;
                }
            }
        }
    }
}

/// Copies `n` bytes to `w`, returning their CRC-32C.
fn copy_checked(r: &mut impl BufRead, mut n: u64, w: &mut impl Write) -> Result<u32, CopyError> {
    let mut crc = 0u32;
    while n > 0 {
        let buf = r.fill_buf().map_err(CopyError::Read)?;
        if buf.is_empty() {
            return Err(CopyError::Read(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a file")));
        }
        let k = (buf.len() as u64).min(n) as usize;
        w.write_all(&buf[..k]).map_err(CopyError::Write)?;
        crc = crc32c::crc32c_append(crc, &buf[..k]);
        r.consume(k);
        n -= k as u64;
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tar_of(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut t = Vec::new();
        for (name, kind, data) in entries {
            t.extend_from_slice(&tar::tests::header(name, *kind, data.len() as u64, ""));
            t.extend_from_slice(data);
            t.resize(t.len() + tar::padding(data.len() as u64) as usize, 0);
        }
        t.extend_from_slice(&[0u8; 2 * BLOCK]);
        t
    }

    /// Keeps what it is given, in memory.
    #[derive(Default)]
    struct Kept {
        dirs: Vec<Vec<u8>>,
        files: HashMap<Vec<u8>, Vec<u8>>,
    }

    impl EntrySink for Kept {
        type File = Vec<u8>;
        fn directory(&mut self, _: Option<u32>, path: &[u8]) -> Result<(), ReadError> {
            self.dirs.push(path.to_vec());
            Ok(())
        }
        fn open(&mut self, _: Option<u32>, _: &[u8], _: u64) -> Result<Vec<u8>, ReadError> {
            Ok(Vec::new())
        }
        fn close(&mut self, _: Option<u32>, path: &[u8], file: Vec<u8>) -> Result<(), ReadError> {
            self.files.insert(path.to_vec(), file);
            Ok(())
        }
    }

    fn reader(files: &[(&str, &[u8])]) -> TarReader<Kept> {
        let files = files
            .iter()
            .map(|(p, d)| ManifestFile {
                path: p.as_bytes().to_vec(),
                size: d.len() as u64,
                crc32c: Some(crc32c::crc32c(d)),
            })
            .collect();
        TarReader {
            manifest: Arc::new(Manifest { version: 1, system_identifier: None, files, wal_ranges: vec![] }),
            seen: HashSet::new(),
            sink: Kept::default(),
            stats: ReadStats::default(),
            progress: Arc::default(),
        }
    }

    #[test]
    fn files_are_checked_against_the_manifest() {
        let tar = tar_of(&[("./base/", b'5', b""), ("base/1/2", b'0', b"hello"), ("global/pg_control", b'0', b"ctl")]);
        let mut tr = reader(&[("base/1/2", b"hello"), ("global/pg_control", b"ctl")]);
        tr.archive(&mut &tar[..], None, b"").unwrap();
        assert_eq!(tr.sink.files[b"base/1/2".as_slice()], b"hello");
        assert_eq!(tr.sink.dirs, vec![b"base".to_vec()]);
        assert_eq!((tr.stats.files, tr.stats.bytes), (2, 8));
        assert_eq!(ReadProgress::get(&tr.progress.bytes), 8);

        type Entries<'a> = &'a [(&'a str, u8, &'a [u8])];
        let cases: [(Entries, &str); 5] = [
            (&[("base/1/2", b'0', b"hellO")], "CRC-32C"),
            (&[("base/1/2", b'0', b"hell")], "the manifest says 5"),
            (&[("base/9", b'0', b"x")], "not in the backup manifest"),
            (&[("base/1/2", b'0', b"hello"), ("base/1/2", b'0', b"hello")], "twice"),
            (&[("pg_tblspc/1", b'2', b"")], "unexpected symlink"),
        ];
        for (entries, want) in cases {
            let mut tr = reader(&[("base/1/2", b"hello")]);
            let err = tr.archive(&mut &tar_of(entries)[..], None, b"").unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
            // A bad file is never complete (the first of twin entries was sound).
            assert_eq!(tr.sink.files.contains_key(b"base/1/2".as_slice()), want == "twice", "{want}");
        }
        // Truncated archives are errors, wherever they stop.
        for cut in [100, BLOCK + 2, 2 * BLOCK] {
            let r = reader(&[("base/1/2", b"hello")]).archive(
                &mut &tar_of(&[("base/1/2", b'0', b"hello")])[..cut],
                None,
                b"",
            );
            assert!(r.is_err(), "cut at {cut}");
        }
        // pg_control and tablespace_map are kept in memory by a restore:
        // larger than any real one is refused, by verify as by restore.
        let huge = vec![0u8; SMALL_FILE_LIMIT as usize + 1];
        let mut tr = reader(&[("global/pg_control", &huge)]);
        let err = tr.archive(&mut &tar_of(&[("global/pg_control", b'0', &huge)])[..], None, b"").unwrap_err();
        assert!(err.to_string().contains("implausibly large"), "{err}");
        // A tablespace's paths are the manifest's under pg_tblspc/<oid>/.
        let mut tr = reader(&[("pg_tblspc/7/PG_15/1/2", b"ts")]);
        tr.archive(&mut &tar_of(&[("PG_15/1/2", b'0', b"ts")])[..], Some(7), b"pg_tblspc/7/").unwrap();
        assert_eq!(tr.sink.files[b"PG_15/1/2".as_slice()], b"ts");
    }

    /// lz4 frames as PostgreSQL's server-side compression writes them
    /// (linked blocks, no checksums), several frames concatenated.
    fn lz4_frames(data: &[u8], frames: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in data.chunks(data.len().div_ceil(frames)) {
            let mut info = lz4_flex::frame::FrameInfo::new();
            info.block_mode = lz4_flex::frame::BlockMode::Linked;
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            enc.write_all(chunk).unwrap();
            out.extend_from_slice(&enc.finish().unwrap());
        }
        out
    }

    /// zstd frames, as server-side zstd writes them, several concatenated.
    fn zstd_frames(data: &[u8], frames: usize) -> Vec<u8> {
        data.chunks(data.len().div_ceil(frames)).flat_map(|c| zstd::encode_all(c, 1).unwrap()).collect()
    }

    /// Runs `decode_frames` over `parts` as they would arrive from storage.
    fn decode_parts(kind: ArchiveCompression, parts: Vec<Vec<u8>>) -> (Vec<u8>, Result<(), ReadError>) {
        let keys: Vec<String> = (0..parts.len()).map(|i| format!("backups/X/base/{i:06}")).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(parts.len().max(1));
        for (i, p) in parts.into_iter().enumerate() {
            tx.try_send((i, Bytes::from(p))).unwrap();
        }
        drop(tx);
        let (dtx, mut drx) = tokio::sync::mpsc::channel::<(usize, Bytes)>(4);
        let t = std::thread::spawn(move || {
            decode_frames(kind, ChannelReader { rx, cur: Bytes::new(), part: None }, &dtx, &keys, "X")
        });
        let mut out = Vec::new();
        while let Some((_, b)) = drx.blocking_recv() {
            out.extend_from_slice(&b);
        }
        (out, t.join().unwrap())
    }

    #[test]
    fn frames_split_into_parts_decode_to_the_tar() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 ^ (i >> 13) as u8).collect();
        let tar = tar_of(&[("base/1/2", b'0', &big), ("global/pg_control", b'0', b"ctl")]);
        for (kind, name, z) in [
            (ArchiveCompression::Lz4, "lz4", lz4_frames(&tar, 2)),
            (ArchiveCompression::Zstd, "zstd", zstd_frames(&tar, 2)),
        ] {
            assert!(z.len() < tar.len());
            // Cut anywhere, even inside a frame header.
            let cuts = [0, 3, 1000, z.len() / 2, z.len()];
            let parts: Vec<Vec<u8>> = cuts.windows(2).map(|w| z[w[0]..w[1]].to_vec()).collect();
            let (out, r) = decode_parts(kind, parts.clone());
            r.unwrap();
            assert_eq!(out, tar, "{name}");
            let mut tr = reader(&[("base/1/2", &big), ("global/pg_control", b"ctl")]);
            tr.archive(&mut &out[..], None, b"").unwrap();
            assert_eq!(tr.sink.files[b"base/1/2".as_slice()], big);

            // A part of garbage: an error naming that part. (Garbage lz4 can
            // also decode to wrong bytes: there are no lz4 checksums, and the
            // manifest's CRCs catch those.)
            let mut bad = parts.clone();
            let last = bad.len() - 1;
            bad[last].iter_mut().for_each(|b| *b = 0xff);
            let err = decode_parts(kind, bad).1.unwrap_err().to_string();
            let named = format!("backup X: corrupt backups/X/base/{last:06}: the {name} stream");
            assert!(err.starts_with(&named), "{err}");
            // A stream cut inside a frame is an error too, not a short tar.
            let mut cut = parts;
            let half = cut[last].len() / 2;
            cut[last].truncate(half);
            let err = decode_parts(kind, cut).1.unwrap_err().to_string();
            assert!(err.contains(&format!("base/{last:06}: the {name} stream ends inside a frame")), "{err}");
        }
    }

    #[test]
    fn copy_checks_length_and_crc() {
        let data = b"hello world".to_vec();
        let mut out = Vec::new();
        let crc = copy_checked(&mut &data[..], 5, &mut out).ok().unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(crc, crc32c::crc32c(b"hello"));
        assert!(copy_checked(&mut &data[..], 20, &mut Vec::new()).is_err());
    }
}
