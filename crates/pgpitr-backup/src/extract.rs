//! Extracting a stored backup into a directory.
//!
//! ```text
//!  parts ──get + decode + verify (≤ parallelism at once, in order)──▶ channel ──┬──────────────────────────▶ tar reader (blocking thread)
//!                                             lz4 archives (server-compressed): └─▶ lz4 frame decoder ─▶ channel ─┘  └─▶ files, CRC32C vs manifest
//! ```
//!
//! Every part is checked against `backup.json` (offset, length, CRC) and
//! every file against the manifest (size, CRC-32C); any mismatch stops the
//! extraction. An lz4 stream that does not decode is an error naming the
//! part being read. Files are 0600 and directories 0700, owned by the running
//! user. `global/pg_control` is written last, after everything else is
//! synced, so a half-extracted directory never looks like a data directory
//! that could start.

use crate::BackupError;
use crate::manifest::{Manifest, ManifestFile};
use crate::tar::{self, BLOCK, Kind};
use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use pgpitr_repo::Repository;
use pgpitr_repo::backup::{ArchiveCompression, ArchiveInfo, BackupId, BackupInfo, INFO_FORMAT_VERSION, PartInfo};
use pgpitr_repo::object;
use pgpitr_storage::Storage;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PG_CONTROL: &[u8] = b"global/pg_control";
const TABLESPACE_MAP: &[u8] = b"tablespace_map";
/// Files kept in memory to be written at the end; anything larger is suspect.
const SMALL_FILE_LIMIT: u64 = 1 << 20;
/// Decompressed bytes handed from the lz4 decoder to the tar reader at once.
const DECODED_CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Parts downloaded and decompressed ahead of the tar reader.
    pub parallelism: usize,
    /// fsync every file and directory before pg_control is written.
    pub fsync: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { parallelism: 4, fsync: true }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Files written (every file of the manifest, plus `backup_manifest`).
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Parts downloaded and their stored size.
    pub parts: u64,
    pub stored_bytes: u64,
    /// Where each tablespace went: OID and directory.
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// Files whose content deliberately differs from the manifest
    /// (`tablespace_map` when tablespaces were relocated).
    pub rewritten: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> BackupError {
    BackupError::Invalid(msg.into())
}

fn corrupt(id: &BackupId, what: impl Into<String>, reason: impl Into<String>) -> BackupError {
    BackupError::Corrupt { id: id.to_string(), what: what.into(), reason: reason.into() }
}

/// Extracts backup `info` into the empty (or missing) directory `target`.
///
/// `tablespace_map` relocates tablespaces as `(old location, new
/// location)`, like `pg_basebackup -T`; unmapped tablespaces go to their
/// original location, which must be empty or missing too. The
/// `pg_tblspc/<oid>` symlinks point to the new locations and
/// `tablespace_map` is rewritten to match. The backup's `backup_manifest`
/// is placed in `target` for `pg_verifybackup`.
#[tracing::instrument(skip_all, fields(backup = %info.id, target = %target.display()))]
pub async fn extract(
    repo: &Repository,
    info: &BackupInfo,
    target: &Path,
    tablespace_map: &[(PathBuf, PathBuf)],
    opts: &ExtractOptions,
) -> Result<ExtractStats, BackupError> {
    let id = readable_id(info)?;
    let spaces = plan_tablespaces(info, tablespace_map)?;
    let storage = repo.storage().clone();

    let (raw_manifest, manifest) = read_manifest(storage.as_ref(), &id, info).await?;

    let dirs: Vec<PathBuf> = std::iter::once(target.to_path_buf()).chain(spaces.values().cloned()).collect();
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| prepare_empty_dir(d)))
        .await
        .map_err(|e| invalid(format!("internal error: {e}")))??;

    let ex = Extractor::new(manifest, opts.fsync, true);
    let ex = read_archives(storage, &id, info, ex, target, &spaces, opts.parallelism).await?;

    let target = target.to_path_buf();
    let spaces: Vec<(u32, PathBuf)> = spaces.into_iter().collect();
    tokio::task::spawn_blocking(move || ex.finish(&target, &raw_manifest, &spaces))
        .await
        .map_err(|e| invalid(format!("internal error: {e}")))?
}

/// Reads every archive of the backup through `ex` (tablespaces first: the
/// base archive holds pg_control, written last anyway), then checks that no
/// file of the manifest is missing.
async fn read_archives(
    storage: Arc<dyn Storage>,
    id: &BackupId,
    info: &BackupInfo,
    mut ex: Extractor,
    target: &Path,
    spaces: &HashMap<u32, PathBuf>,
    parallelism: usize,
) -> Result<Extractor, BackupError> {
    let mut order: Vec<&ArchiveInfo> = info.archives.iter().collect();
    order.sort_by_key(|a| a.tablespace_oid.is_none());
    for archive in order {
        let (root, prefix) = match archive.tablespace_oid {
            None => (target.to_path_buf(), Vec::new()),
            Some(oid) => (
                spaces.get(&oid).cloned().ok_or_else(|| invalid(format!("tablespace {oid} has no location")))?,
                format!("pg_tblspc/{oid}/").into_bytes(),
            ),
        };
        ex = extract_archive(storage.clone(), id, info, archive, root, prefix, ex, parallelism).await?;
    }
    let missing: Vec<String> = ex
        .manifest
        .files
        .iter()
        .filter(|f| !ex.seen.contains(&f.path))
        .map(|f| String::from_utf8_lossy(&f.path).into_owned())
        .collect();
    if !missing.is_empty() {
        return Err(corrupt(
            id,
            "archives",
            format!("{} files of the manifest are missing, e.g. {}", missing.len(), missing[0]),
        ));
    }
    Ok(ex)
}

/// Reads the whole backup as a restore would, checking every file against
/// the manifest (size, CRC-32C) and that none is missing, and writes
/// nothing. Returns the files and bytes checked.
pub(crate) async fn check_contents(
    repo: &Repository,
    info: &BackupInfo,
    parallelism: usize,
) -> Result<ExtractStats, BackupError> {
    let id = readable_id(info)?;
    let storage = repo.storage().clone();
    let (_, manifest) = read_manifest(storage.as_ref(), &id, info).await?;
    let spaces = plan_tablespaces(info, &[])?;
    let ex = Extractor::new(manifest, false, false);
    let ex = read_archives(storage, &id, info, ex, Path::new(""), &spaces, parallelism).await?;
    if !ex.deferred.contains_key(PG_CONTROL) {
        return Err(file_corrupt(PG_CONTROL, "is missing from the backup".into()));
    }
    Ok(ex.stats)
}

/// The backup's ID, if this pgpitr can read a backup of its format.
fn readable_id(info: &BackupInfo) -> Result<BackupId, BackupError> {
    let id = info.backup_id().ok_or_else(|| invalid(format!("backup ID {:?} is not valid", info.id)))?;
    if info.format_version > INFO_FORMAT_VERSION {
        return Err(invalid(format!(
            "backup {} has format version {}; this pgpitr reads up to {INFO_FORMAT_VERSION}: use a newer pgpitr",
            info.id, info.format_version
        )));
    }
    Ok(id)
}

/// New location of every tablespace, by OID.
fn plan_tablespaces(info: &BackupInfo, map: &[(PathBuf, PathBuf)]) -> Result<HashMap<u32, PathBuf>, BackupError> {
    let norm = |p: &Path| p.components().collect::<PathBuf>();
    let mut out = HashMap::new();
    let mut used = vec![false; map.len()];
    for a in &info.archives {
        let Some(oid) = a.tablespace_oid else { continue };
        let original = a
            .tablespace_location
            .as_deref()
            .ok_or_else(|| invalid(format!("tablespace {oid} of backup {} has no location", info.id)))?;
        let mut location = PathBuf::from(original);
        if let Some(i) = map.iter().position(|(old, _)| norm(old) == norm(Path::new(original))) {
            used[i] = true;
            location = map[i].1.clone();
        }
        if !location.is_absolute() {
            return Err(invalid(format!("tablespace location {} is not absolute", location.display())));
        }
        out.insert(oid, location);
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(invalid(format!("backup {} has no tablespace at {} to relocate", info.id, map[i].0.display())));
    }
    Ok(out)
}

/// Creates `dir` (0700) or accepts it when empty; anything in it is refused.
fn prepare_empty_dir(dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(invalid(format!("{} is not empty; refusing to extract a backup into it", dir.display())));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| BackupError::io(dir, e))?;
        }
        Err(e) => return Err(BackupError::io(dir, e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| BackupError::io(dir, e))
}

/// Fetches, decodes and checks the stored `backup_manifest` against
/// `backup.json`; returns its bytes and what they say.
pub(crate) async fn read_manifest(
    storage: &dyn Storage,
    id: &BackupId,
    info: &BackupInfo,
) -> Result<(Bytes, Manifest), BackupError> {
    let stored = storage.get(&id.manifest_key()).await?;
    let (header, raw) = object::decode(&stored).map_err(|e| corrupt(id, "backup_manifest", e.0))?;
    if raw.len() as u64 != info.manifest.size || header.raw_crc != info.manifest.crc {
        return Err(corrupt(id, "backup_manifest", "size or checksum differs from backup.json"));
    }
    let manifest = Manifest::parse(&raw).map_err(|e| corrupt(id, "backup_manifest", e))?;
    Ok((raw, manifest))
}

/// Fetches, decodes and checks one part against `backup.json`.
pub(crate) async fn fetch_part(
    storage: Arc<dyn Storage>,
    key: String,
    part: PartInfo,
    offset: u64,
) -> Result<Bytes, BackupError> {
    let obj = storage.get(&key).await?;
    tokio::task::spawn_blocking(move || {
        let bad = |reason: String| BackupError::Corrupt { id: String::new(), what: key.clone(), reason };
        if obj.len() as u64 != part.stored_len {
            return Err(bad(format!("object is {} bytes, backup.json says {}", obj.len(), part.stored_len)));
        }
        let (h, raw) = object::decode(&obj).map_err(|e| bad(e.0))?;
        if h.start.0 != offset || raw.len() as u64 != part.raw_len || h.raw_crc != part.crc {
            return Err(bad("offset, length or checksum differs from backup.json".into()));
        }
        Ok(raw)
    })
    .await
    .map_err(|e| invalid(format!("internal error: {e}")))?
}

#[allow(clippy::too_many_arguments)]
async fn extract_archive(
    storage: Arc<dyn Storage>,
    id: &BackupId,
    info: &BackupInfo,
    archive: &ArchiveInfo,
    root: PathBuf,
    prefix: Vec<u8>,
    mut ex: Extractor,
    parallelism: usize,
) -> Result<Extractor, BackupError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Bytes)>(2);
    let mut offset = 0u64;
    let jobs: Vec<_> = archive
        .parts
        .iter()
        .map(|p| {
            let job = fetch_part(storage.clone(), id.part_key(&archive.name, p.index), p.clone(), offset);
            offset += p.raw_len;
            job
        })
        .collect();
    let nparts = jobs.len() as u64;
    let stored: u64 = archive.parts.iter().map(|p| p.stored_len).sum();
    let producer = async move {
        let mut parts = futures_util::stream::iter(jobs).buffered(parallelism.max(1));
        let mut i = 0;
        while let Some(r) = parts.next().await {
            let raw = r.map_err(|e| match e {
                BackupError::Corrupt { what, reason, .. } => corrupt(id, what, reason),
                e => e,
            })?;
            if tx.send((i, raw)).await.is_err() {
                break; // the reader stopped; its error says why
            }
            i += 1;
        }
        Ok::<(), BackupError>(())
    };
    // Server-compressed archives pass through a frame decoder on a thread
    // of its own, so decoding overlaps with writing files.
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
    let name = archive.name.clone();
    let backup_id = info.id.clone();
    let consumer = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader { rx, cur: Bytes::new(), part: None };
        let r = ex.archive(&mut reader, &root, &prefix);
        (ex, r)
    });
    let decoded = async move {
        match decoder {
            Some(task) => task.await.map_err(|e| invalid(format!("internal error: {e}")))?,
            None => Ok(()),
        }
    };
    let (produced, decoded, consumed) = tokio::join!(producer, decoded, consumer);
    let (mut ex, r) = consumed.map_err(|e| invalid(format!("internal error: {e}")))?;
    produced?;
    // A stream that does not decode explains what the tar reader then saw.
    decoded?;
    r.map_err(|e| match e {
        BackupError::Corrupt { what, reason, .. } => {
            BackupError::Corrupt { id: backup_id.clone(), what: format!("archive {name}: {what}"), reason }
        }
        e => e,
    })?;
    ex.stats.parts += nparts;
    ex.stats.stored_bytes += stored;
    Ok(ex)
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
) -> Result<(), BackupError> {
    let out = Decoded { tx, keys, backup_id };
    match kind {
        ArchiveCompression::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| BackupError::Invalid(format!("internal error: zstd decoder: {e}")))?;
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
    fn pump<D: Read>(&self, mut dec: D, name: &str, part: impl Fn(&D) -> Option<usize>) -> Result<(), BackupError> {
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
                        return Err(BackupError::Corrupt { id: self.backup_id.to_string(), what, reason });
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

/// The state carried across archives (runs on a blocking thread).
struct Extractor {
    manifest: Arc<Manifest>,
    seen: HashSet<Vec<u8>>,
    /// Small files written at the end (pg_control, tablespace_map).
    deferred: HashMap<Vec<u8>, Vec<u8>>,
    /// Everything written, for the final fsync.
    written: Vec<PathBuf>,
    stats: ExtractStats,
    fsync: bool,
    /// False to read and check every file without writing anything.
    write: bool,
}

impl Extractor {
    fn new(manifest: Manifest, fsync: bool, write: bool) -> Extractor {
        Extractor {
            manifest: Arc::new(manifest),
            seen: HashSet::new(),
            deferred: HashMap::new(),
            written: Vec::new(),
            stats: ExtractStats::default(),
            fsync,
            write,
        }
    }
}

fn os_path(root: &Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    root.join(std::ffi::OsStr::from_bytes(rel))
}

fn shown(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn mkdirs(dir: &Path) -> Result<(), BackupError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| BackupError::io(dir, e))
}

fn file_corrupt(path: &[u8], reason: String) -> BackupError {
    BackupError::Corrupt { id: String::new(), what: format!("file {}", shown(path)), reason }
}

impl Extractor {
    /// Extracts one tar archive into `root`; `prefix` maps its paths to the
    /// manifest's (`pg_tblspc/<oid>/` for tablespaces).
    fn archive(&mut self, r: &mut impl BufRead, root: &Path, prefix: &[u8]) -> Result<(), BackupError> {
        let manifest = self.manifest.clone();
        let index: HashMap<&[u8], &ManifestFile> = manifest.by_path();
        let stream_err =
            |e: io::Error| BackupError::Corrupt { id: String::new(), what: "tar stream".into(), reason: e.to_string() };
        let mut block = [0u8; BLOCK];
        let mut last_dir: Option<PathBuf> = None;
        loop {
            if !tar::read_block(r, &mut block).map_err(stream_err)? {
                return Err(file_corrupt(b"(archive)", "ends without the tar end marker".into()));
            }
            let Some(h) = tar::parse_header(&block).map_err(|e| file_corrupt(b"(archive)", e))? else {
                return Ok(()); // the end marker; any trailing blocks are padding
            };
            let mpath: Vec<u8> = [prefix, &h.path].concat();
            let dest = os_path(root, &h.path);
            match h.kind {
                Kind::Dir if !self.write => {}
                Kind::Dir => {
                    mkdirs(&dest)?;
                    self.written.push(dest);
                }
                Kind::Symlink(link) => {
                    return Err(file_corrupt(
                        &mpath,
                        format!("unexpected symlink to {} (backups are taken with TABLESPACE_MAP)", shown(&link)),
                    ));
                }
                Kind::File => {
                    let m = index
                        .get(mpath.as_slice())
                        .copied()
                        .ok_or_else(|| file_corrupt(&mpath, "is not in the backup manifest".into()))?;
                    if !self.seen.insert(mpath.clone()) {
                        return Err(file_corrupt(&mpath, "appears twice in the backup".into()));
                    }
                    if h.size != m.size {
                        return Err(file_corrupt(&mpath, format!("is {} bytes, the manifest says {}", h.size, m.size)));
                    }
                    let crc = if mpath == PG_CONTROL || mpath == TABLESPACE_MAP {
                        if h.size > SMALL_FILE_LIMIT {
                            return Err(file_corrupt(&mpath, format!("is implausibly large ({} bytes)", h.size)));
                        }
                        let mut buf = Vec::with_capacity(h.size as usize);
                        let crc = copy_checked(r, h.size, &mut buf).map_err(stream_err)?;
                        self.deferred.insert(mpath.clone(), buf);
                        crc
                    } else if !self.write {
                        copy_checked(r, h.size, &mut io::sink()).map_err(stream_err)?
                    } else {
                        if let Some(parent) = dest.parent()
                            && last_dir.as_deref() != Some(parent)
                        {
                            mkdirs(parent)?;
                            last_dir = Some(parent.to_path_buf());
                        }
                        let mut f = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&dest)
                            .map_err(|e| BackupError::io(&dest, e))?;
                        let crc = copy_checked(r, h.size, &mut f).map_err(|e| match e.kind() {
                            io::ErrorKind::UnexpectedEof => stream_err(e),
                            _ => BackupError::io(&dest, e),
                        })?;
                        self.written.push(dest);
                        crc
                    };
                    if let Some(want) = m.crc32c
                        && !m.crc32c_matches(crc)
                    {
                        return Err(file_corrupt(
                            &mpath,
                            format!("CRC-32C is {:08x}, the manifest says {:08x}", crc.swap_bytes(), want.swap_bytes()),
                        ));
                    }
                    self.stats.files += 1;
                    self.stats.bytes += h.size;
                    tar::skip(r, tar::padding(h.size)).map_err(stream_err)?;
                }
            }
        }
    }

    /// Links and maps tablespaces, writes the manifest, syncs everything,
    /// then pg_control.
    fn finish(
        mut self,
        target: &Path,
        raw_manifest: &[u8],
        spaces: &[(u32, PathBuf)],
    ) -> Result<ExtractStats, BackupError> {
        use std::os::unix::ffi::OsStrExt;
        let tblspc = target.join("pg_tblspc");
        mkdirs(&tblspc)?;
        for (oid, location) in spaces {
            let link = tblspc.join(oid.to_string());
            std::os::unix::fs::symlink(location, &link).map_err(|e| BackupError::io(&link, e))?;
            self.stats.tablespaces.push((*oid, location.clone()));
        }
        self.stats.tablespaces.sort();
        if let Some(map) = self.deferred.remove(TABLESPACE_MAP) {
            let new = rewrite_tablespace_map(&map, spaces)
                .map_err(|e| file_corrupt(TABLESPACE_MAP, format!("cannot be read: {e}")))?;
            if new != map {
                self.stats.rewritten.push("tablespace_map".into());
            }
            self.write_new(&target.join("tablespace_map"), &new)?;
        } else if !spaces.is_empty() {
            return Err(file_corrupt(TABLESPACE_MAP, "is missing from a backup with tablespaces".into()));
        }
        self.write_new(&target.join("backup_manifest"), raw_manifest)?;
        self.stats.files += 1;
        self.stats.bytes += raw_manifest.len() as u64;
        let control = self
            .deferred
            .remove(PG_CONTROL)
            .ok_or_else(|| file_corrupt(PG_CONTROL, "is missing from the backup".into()))?;
        if self.fsync {
            for p in self.written.iter().rev() {
                sync_path(p)?;
            }
            for (_, location) in spaces {
                sync_path(location)?;
            }
            sync_path(&tblspc)?;
        }
        let global = target.join(std::ffi::OsStr::from_bytes(b"global"));
        mkdirs(&global)?;
        let control_path = global.join("pg_control");
        self.write_new(&control_path, &control)?;
        if self.fsync {
            sync_path(&control_path)?;
            sync_path(&global)?;
            sync_path(target)?;
        }
        Ok(self.stats)
    }

    fn write_new(&mut self, path: &Path, data: &[u8]) -> Result<(), BackupError> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| BackupError::io(path, e))?;
        f.write_all(data).map_err(|e| BackupError::io(path, e))?;
        self.written.push(path.to_path_buf());
        Ok(())
    }
}

fn sync_path(p: &Path) -> Result<(), BackupError> {
    fs::File::open(p).and_then(|f| f.sync_all()).map_err(|e| BackupError::io(p, e))
}

/// Copies `n` bytes to `w`, returning their CRC-32C.
fn copy_checked(r: &mut impl BufRead, mut n: u64, w: &mut impl Write) -> io::Result<u32> {
    let mut crc = 0u32;
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a file"));
        }
        let k = (buf.len() as u64).min(n) as usize;
        w.write_all(&buf[..k])?;
        crc = crc32c::crc32c_append(crc, &buf[..k]);
        r.consume(k);
        n -= k as u64;
    }
    Ok(crc)
}

/// `tablespace_map` lines are `<oid> <path>`, with `\`, CR and LF in the
/// path escaped by a backslash. Each line gets its tablespace's new path.
fn rewrite_tablespace_map(map: &[u8], spaces: &[(u32, PathBuf)]) -> Result<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    let text = map;
    let mut out = Vec::with_capacity(text.len());
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // Split on unescaped newlines.
    let mut cur = Vec::new();
    let mut escaped = false;
    for &c in text {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == b'\\' {
            escaped = true;
        } else if c == b'\n' {
            lines.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        return Err("ends inside an escape".into());
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    let mut done = HashSet::new();
    for line in lines {
        let sp = line.iter().position(|&c| c == b' ').ok_or("a line has no space")?;
        let oid: u32 =
            std::str::from_utf8(&line[..sp]).ok().and_then(|s| s.parse().ok()).ok_or("a line has no tablespace OID")?;
        let path: &[u8] = match spaces.iter().find(|(o, _)| *o == oid) {
            Some((_, p)) => p.as_os_str().as_bytes(),
            None => &line[sp + 1..],
        };
        out.extend_from_slice(oid.to_string().as_bytes());
        out.push(b' ');
        for &c in path {
            if matches!(c, b'\\' | b'\n' | b'\r') {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'\n');
        done.insert(oid);
    }
    if let Some((oid, _)) = spaces.iter().find(|(o, _)| !done.contains(o)) {
        return Err(format!("tablespace {oid} is not listed"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_map_is_rewritten_with_escapes() {
        let map = b"16385 /srv/old\n16386 /srv/we\\\nird\n";
        let spaces = vec![(16385, PathBuf::from("/new/a\\b")), (16386, PathBuf::from("/srv/we\nird"))];
        let out = rewrite_tablespace_map(map, &spaces).unwrap();
        assert_eq!(out, b"16385 /new/a\\\\b\n16386 /srv/we\\\nird\n");
        assert!(rewrite_tablespace_map(b"16385 /x\n", &[(1, PathBuf::from("/y"))]).is_err());
        assert!(rewrite_tablespace_map(b"nonsense\n", &[]).is_err());
        assert_eq!(rewrite_tablespace_map(b"", &[]).unwrap(), b"");
    }

    fn tar_of(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut t = Vec::new();
        for (name, kind, data) in entries {
            t.extend_from_slice(&crate::tar::tests::header(name, *kind, data.len() as u64, ""));
            t.extend_from_slice(data);
            t.resize(t.len() + crate::tar::padding(data.len() as u64) as usize, 0);
        }
        t.extend_from_slice(&[0u8; 2 * BLOCK]);
        t
    }

    fn extractor(files: &[(&str, &[u8])]) -> Extractor {
        let files = files
            .iter()
            .map(|(p, d)| ManifestFile {
                path: p.as_bytes().to_vec(),
                size: d.len() as u64,
                crc32c: Some(crc32c::crc32c(d)),
            })
            .collect();
        Extractor::new(Manifest { version: 1, system_identifier: None, files, wal_ranges: vec![] }, false, true)
    }

    #[test]
    fn files_are_checked_against_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("./base/", b'5', b""), ("base/1/2", b'0', b"hello"), ("global/pg_control", b'0', b"ctl")]);
        let mut ex = extractor(&[("base/1/2", b"hello"), ("global/pg_control", b"ctl")]);
        ex.archive(&mut &tar[..], dir.path(), b"").unwrap();
        assert_eq!(fs::read(dir.path().join("base/1/2")).unwrap(), b"hello");
        assert!(!dir.path().join("global/pg_control").exists(), "pg_control waits for the end");
        assert_eq!(ex.deferred[PG_CONTROL], b"ctl");
        assert_eq!(mode(&dir.path().join("base/1/2")), 0o600);
        assert_eq!(mode(&dir.path().join("base/1")), 0o700);

        type Entries<'a> = &'a [(&'a str, u8, &'a [u8])];
        let cases: [(Entries, &str); 4] = [
            (&[("base/1/2", b'0', b"hellO")], "CRC-32C"),
            (&[("base/1/2", b'0', b"hell")], "the manifest says 5"),
            (&[("base/9", b'0', b"x")], "not in the backup manifest"),
            (&[("base/1/2", b'0', b"hello"), ("base/1/2", b'0', b"hello")], "twice"),
        ];
        for (entries, want) in cases {
            let d = tempfile::tempdir().unwrap();
            let err =
                extractor(&[("base/1/2", b"hello")]).archive(&mut &tar_of(entries)[..], d.path(), b"").unwrap_err();
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        // Truncated archives are errors, wherever they stop.
        for cut in [100, BLOCK + 2, 2 * BLOCK] {
            let d = tempfile::tempdir().unwrap();
            let r = extractor(&[("base/1/2", b"hello")]).archive(
                &mut &tar_of(&[("base/1/2", b'0', b"hello")])[..cut],
                d.path(),
                b"",
            );
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
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
    fn decode_parts(kind: ArchiveCompression, parts: Vec<Vec<u8>>) -> (Vec<u8>, Result<(), BackupError>) {
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
            let dir = tempfile::tempdir().unwrap();
            let mut ex = extractor(&[("base/1/2", &big), ("global/pg_control", b"ctl")]);
            ex.archive(&mut &out[..], dir.path(), b"").unwrap();
            assert_eq!(fs::read(dir.path().join("base/1/2")).unwrap(), big);

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
        let crc = copy_checked(&mut &data[..], 5, &mut out).unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(crc, crc32c::crc32c(b"hello"));
        assert!(copy_checked(&mut &data[..], 20, &mut Vec::new()).is_err());
    }
}
