//! Local-directory backend.
//!
//! Every write goes to `.tmp-<random>` in the object's own directory, is
//! fsynced, then renamed (replace) or hard-linked (no replace) into place,
//! and the directory is fsynced: a reader sees the old object or the new
//! one, never a torn one, and a crash leaves at worst a temp file, which
//! listings skip. New directories are fsynced into their parents too.
//!
//! Blocking `std::fs` calls run on tokio's blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::error::{Op, Result, StorageError};
use crate::key::{TEMP_PREFIX, validate_key, validate_prefix};
use crate::{
    Journal, JournalOpen, ListPage, ObjectMeta, ObjectStream, PutOutcome, Storage, Upload, check_page_size,
    summarize_failures,
};

/// Zeros written per call when preallocating a journal: two pages. The page
/// cache sizes its folios by the write that creates them, and a large folio
/// makes every small append and its sync walk all of the folio's blocks
/// (with 1 MiB writes, on Linux 6.18 ext4, that cost the synchronous
/// archiver ~8% of its CPU; see benches/results/FINDINGS.md).
const PREALLOC_CHUNK: usize = 8192;

/// Bytes per write(2) of an object. One write of a whole segment object
/// made the kernel's copy into the page cache ~2.5x as costly (large folios
/// again; measured with `perf` on a bulk load).
const WRITE_CHUNK: usize = 64 * 1024;

/// Chunk size of [`Storage::get_stream`] reads.
const STREAM_CHUNK: usize = 256 * 1024;

/// A repository in a local (or mounted) directory.
///
/// Keys map to paths below the root. Unlike S3, a key cannot be both an
/// object and a "directory" of other objects (`a` and `a/b`); writing the
/// second fails with a permanent error. Empty directories left behind by
/// deletes are never listed. `put_if_absent` needs hard links, which every
/// local POSIX file system provides.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    location: String,
}

impl LocalStorage {
    /// A repository rooted at `root`. Does no I/O; [`Storage::check`]
    /// creates the directory if needed and verifies it is writable.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let location = root.display().to_string();
        LocalStorage { root, location }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ctx(&self, op: Op, key: &str) -> Ctx {
        Ctx { op, key: key.to_owned(), location: self.location.clone() }
    }

    async fn blocking<T, F>(&self, ctx: Ctx, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Ctx) -> Result<T> + Send + 'static,
    {
        run_blocking(ctx, f).await
    }
}

async fn run_blocking<T, F>(ctx: Ctx, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Ctx) -> Result<T> + Send + 'static,
{
    crate::requests::count(ctx.op);
    let fallback = ctx.clone();
    match tokio::task::spawn_blocking(move || f(&ctx)).await {
        Ok(r) => r,
        Err(e) => {
            Err(StorageError::permanent(fallback.op, fallback.key, fallback.location, format!("I/O task failed: {e}")))
        }
    }
}

/// What an error belongs to, carried into blocking closures.
#[derive(Debug, Clone)]
struct Ctx {
    op: Op,
    key: String,
    location: String,
}

impl Ctx {
    fn err(&self, f: IoFail) -> StorageError {
        let message = format!("{}: {}", f.path.display(), f.err);
        if is_transient_io(&f.err) {
            StorageError::transient(self.op, self.key.clone(), self.location.clone(), message)
        } else {
            StorageError::permanent(self.op, self.key.clone(), self.location.clone(), message)
        }
    }

    /// For reads: a missing file, or a path through a non-directory, or a
    /// directory where the object should be, all mean "no such object".
    fn read_err(&self, f: IoFail) -> StorageError {
        if is_absent(&f.err) {
            StorageError::not_found(self.op, self.key.clone(), self.location.clone())
        } else {
            self.err(f)
        }
    }

    fn not_found(&self) -> StorageError {
        StorageError::not_found(self.op, self.key.clone(), self.location.clone())
    }
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory)
}

/// Local errors are permanent (permission, read-only, full disk, I/O error)
/// unless the OS says the call itself was interrupted or timed out.
fn is_transient_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Interrupted
            | ErrorKind::TimedOut
            | ErrorKind::WouldBlock
            | ErrorKind::ResourceBusy
            | ErrorKind::StaleNetworkFileHandle
    )
}

/// An I/O error and the path it happened at.
#[derive(Debug)]
struct IoFail {
    path: PathBuf,
    err: io::Error,
}

type IoRes<T> = std::result::Result<T, IoFail>;

trait At<T> {
    fn at(self, path: &Path) -> IoRes<T>;
}

impl<T> At<T> for io::Result<T> {
    fn at(self, path: &Path) -> IoRes<T> {
        self.map_err(|err| IoFail { path: path.to_owned(), err })
    }
}

fn fsync_dir(dir: &Path) -> IoRes<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// `mkdir -p` that fsyncs each parent it adds an entry to, so a new
/// object's directory survives a crash along with the object.
fn ensure_dir(dir: &Path) -> IoRes<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(io::Error::new(ErrorKind::NotADirectory, "exists but is not a directory")).at(dir),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(dir),
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        ensure_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => match parent {
            Some(parent) => fsync_dir(parent),
            None => Ok(()),
        },
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e).at(dir),
    }
}

/// A temp file that is removed on drop unless [`TempFile::keep`] is called.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn create(dir: &Path) -> IoRes<(TempFile, File)> {
        for _ in 0..16 {
            let path = dir.join(format!("{TEMP_PREFIX}{:016x}", fastrand::u64(..)));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempFile { path, armed: true }, file)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).at(&path),
            }
        }
        Err(io::Error::new(ErrorKind::AlreadyExists, "no free temporary file name after 16 tries")).at(dir)
    }

    /// The file was renamed away; nothing to clean up.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover temp file is invisible to listings.
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

fn write_object(path: &Path, data: &[u8], replace: bool) -> IoRes<PutOutcome> {
    let dir = parent_of(path);
    ensure_dir(dir)?;
    let (tmp, mut file) = TempFile::create(dir)?;
    for piece in data.chunks(WRITE_CHUNK) {
        file.write_all(piece).at(&tmp.path)?;
    }
    file.sync_all().at(&tmp.path)?;
    drop(file);
    if replace {
        fs::rename(&tmp.path, path).at(path)?;
        tmp.keep();
        fsync_dir(dir)?;
        return Ok(PutOutcome::Created);
    }
    // link(2) fails with EEXIST instead of replacing: an atomic create.
    match fs::hard_link(&tmp.path, path) {
        Ok(()) => {
            drop(tmp);
            fsync_dir(dir)?;
            Ok(PutOutcome::Created)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if path.is_dir() {
                return Err(io::Error::new(ErrorKind::IsADirectory, "a directory exists where the object should be"))
                    .at(path);
            }
            Ok(PutOutcome::AlreadyExists)
        }
        Err(e) => Err(e).at(path),
    }
}

fn meta_of(key: String, m: &fs::Metadata) -> ObjectMeta {
    ObjectMeta { key, size: m.len(), last_modified: m.modified().ok(), etag: None }
}

/// The part of `prefix` up to and including its last `/` (the directory a
/// listing has to start from).
fn dir_part(prefix: &str) -> &str {
    match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    }
}

/// A directory entry's name when it can be part of a key; temp files and
/// names that are not valid key segments are skipped.
fn entry_name(entry: &fs::DirEntry) -> Option<String> {
    let name = entry.file_name().into_string().ok()?;
    (!name.starts_with(TEMP_PREFIX) && validate_key(&name).is_ok()).then_some(name)
}

fn list_sync(root: &Path, prefix: &str) -> IoRes<Vec<ObjectMeta>> {
    list_sync_after(root, prefix, None, true)
}

/// The objects under `prefix` whose keys sort after `after`, in key order;
/// directories whose keys all sort before it are not read, and none below
/// the prefix's own without `deep`.
fn list_sync_after(root: &Path, prefix: &str, after: Option<&str>, deep: bool) -> IoRes<Vec<ObjectMeta>> {
    let base = dir_part(prefix);
    let before = |dir_key: &str| after.is_some_and(|a| dir_key < a && !a.starts_with(dir_key));
    let mut out = Vec::new();
    let mut stack = vec![(root.join(base), base.to_owned())];
    while let Some((dir, dir_key)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e).at(&dir),
        };
        for entry in entries {
            let entry = entry.at(&dir)?;
            let Some(name) = entry_name(&entry) else { continue };
            let path = entry.path();
            // Follows symlinks; an entry deleted meanwhile is simply skipped.
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(e).at(&path),
            };
            let key = format!("{dir_key}{name}");
            if meta.is_dir() {
                let sub = format!("{key}/");
                if (deep && sub.starts_with(prefix) || prefix.starts_with(&sub)) && !before(&sub) {
                    stack.push((path, sub));
                }
            } else if meta.is_file() && key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                out.push(meta_of(key, &meta));
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// True when `dir` holds at least one object somewhere below it.
fn has_object(dir: &Path) -> IoRes<bool> {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(e).at(&dir),
        };
        for entry in entries {
            let entry = entry.at(&dir)?;
            if entry_name(&entry).is_none() {
                continue;
            }
            match fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => return Ok(true),
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(_) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(e).at(&entry.path()),
            }
        }
    }
    Ok(false)
}

fn list_dirs_sync(root: &Path, prefix: &str) -> IoRes<Vec<String>> {
    let base = dir_part(prefix);
    let dir = root.join(base);
    let entries = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if is_absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&dir),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.at(&dir)?;
        let Some(name) = entry_name(&entry) else { continue };
        let sub = format!("{base}{name}/");
        if !sub.starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) && has_object(&path)? {
            out.push(sub);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes one object; returns whether something was removed.
fn remove_object(path: &Path) -> IoRes<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if is_absent(&e) => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        self.location.clone()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        validate_key(key)?;
        let path = self.root.join(key);
        self.blocking(self.ctx(Op::Put, key), move |ctx| {
            write_object(&path, &data, true).map(|_| ()).map_err(|f| ctx.err(f))
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        validate_key(key)?;
        let path = self.root.join(key);
        self.blocking(self.ctx(Op::PutIfAbsent, key), move |ctx| {
            write_object(&path, &data, false).map_err(|f| ctx.err(f))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        let path = self.root.join(key);
        self.blocking(self.ctx(Op::Get, key), move |ctx| {
            fs::read(&path).map(Bytes::from).at(&path).map_err(|f| ctx.read_err(f))
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        validate_key(key)?;
        let path = self.root.join(key);
        self.blocking(self.ctx(Op::GetRange, key), move |ctx| {
            let read = || -> IoRes<Option<Bytes>> {
                let mut file = File::open(&path).at(&path)?;
                let meta = file.metadata().at(&path)?;
                if meta.is_dir() {
                    return Ok(None);
                }
                let start = range.start.min(meta.len());
                let end = range.end.clamp(start, meta.len());
                if start == end {
                    return Ok(Some(Bytes::new()));
                }
                file.seek(SeekFrom::Start(start)).at(&path)?;
                let mut buf = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
                file.take(end - start).read_to_end(&mut buf).at(&path)?;
                Ok(Some(Bytes::from(buf)))
            };
            match read() {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(ctx.not_found()),
                Err(f) => Err(ctx.read_err(f)),
            }
        })
        .await
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        validate_key(key)?;
        let path = self.root.join(key);
        let ctx = self.ctx(Op::GetStream, key);
        let file = tokio::fs::File::open(&path).await.at(&path).map_err(|f| ctx.read_err(f))?;
        let meta = file.metadata().await.at(&path).map_err(|f| ctx.read_err(f))?;
        if meta.is_dir() {
            return Err(ctx.not_found());
        }
        let stream = futures_util::stream::try_unfold((file, ctx, path), |(mut file, ctx, path)| async move {
            let mut buf = BytesMut::with_capacity(STREAM_CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => Ok(None),
                Ok(_) => Ok(Some((buf.freeze(), (file, ctx, path)))),
                Err(e) => Err(ctx.err(IoFail { path, err: e })),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        validate_key(key)?;
        let path = self.root.join(key);
        let key = key.to_owned();
        self.blocking(self.ctx(Op::Head, &key), move |ctx| {
            let meta = fs::metadata(&path).at(&path).map_err(|f| ctx.read_err(f))?;
            if meta.is_dir() {
                return Err(ctx.not_found());
            }
            Ok(meta_of(key, &meta))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        self.blocking(self.ctx(Op::List, &prefix), move |ctx| list_sync(&root, &prefix).map_err(|f| ctx.err(f))).await
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        validate_prefix(prefix)?;
        check_page_size(max, prefix, self.describe())?;
        let root = self.root.clone();
        let (prefix, after) = (prefix.to_owned(), start_after.map(str::to_owned));
        self.blocking(self.ctx(Op::List, &prefix), move |ctx| {
            let mut objects = list_sync_after(&root, &prefix, after.as_deref(), true).map_err(|f| ctx.err(f))?;
            let more = objects.len() > max;
            objects.truncate(max);
            let next = if more { objects.last().map(|o| o.key.clone()) } else { None };
            Ok(ListPage { objects, next })
        })
        .await
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        self.blocking(self.ctx(Op::ListDirs, &prefix), move |ctx| {
            list_dirs_sync(&root, &prefix).map_err(|f| ctx.err(f))
        })
        .await
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        validate_prefix(prefix)?;
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        self.blocking(self.ctx(Op::List, &prefix), move |ctx| {
            list_sync_after(&root, &prefix, None, false).map_err(|f| ctx.err(f))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let path = self.root.join(key);
        self.blocking(self.ctx(Op::Delete, key), move |ctx| {
            if remove_object(&path).map_err(|f| ctx.err(f))? {
                fsync_dir(parent_of(&path)).map_err(|f| ctx.err(f))?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            validate_key(key)?;
        }
        let root = self.root.clone();
        let keys = keys.to_vec();
        self.blocking(self.ctx(Op::DeleteMany, ""), move |ctx| {
            let mut failures = Vec::new();
            let mut permanent = false;
            let mut dirs = std::collections::BTreeSet::new();
            for key in &keys {
                let path = root.join(key);
                match remove_object(&path) {
                    Ok(true) => {
                        dirs.insert(parent_of(&path).to_owned());
                    }
                    Ok(false) => {}
                    Err(f) => {
                        permanent |= !is_transient_io(&f.err);
                        failures.push((key.clone(), f.err.to_string()));
                    }
                }
            }
            for dir in dirs {
                if let Err(f) = fsync_dir(&dir) {
                    permanent |= !is_transient_io(&f.err);
                    failures.push((dir.display().to_string(), f.err.to_string()));
                }
            }
            if failures.is_empty() {
                return Ok(());
            }
            let msg = summarize_failures(keys.len(), &failures);
            Err(if permanent {
                StorageError::permanent(ctx.op, "", ctx.location.clone(), msg)
            } else {
                StorageError::transient(ctx.op, "", ctx.location.clone(), msg)
            })
        })
        .await
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        validate_key(key)?;
        let path = self.root.join(key);
        let ctx = self.ctx(Op::StartUpload, key);
        let (tmp, file) = self
            .blocking(ctx.clone(), {
                let path = path.clone();
                move |ctx| {
                    let dir = parent_of(&path);
                    ensure_dir(dir).and_then(|()| TempFile::create(dir)).map_err(|f| ctx.err(f))
                }
            })
            .await?;
        Ok(Box::new(LocalUpload {
            ctx,
            path,
            tmp: Some(tmp),
            file: Arc::new(file),
            len: 0,
            renamed: false,
            done: None,
        }))
    }

    async fn create_journal(&self, key: &str, size_hint: u64) -> Result<JournalOpen> {
        validate_key(key)?;
        let path = self.root.join(key);
        let ctx = self.ctx(Op::CreateJournal, key);
        let created = self
            .blocking(ctx.clone(), move |ctx| {
                let create = || -> IoRes<Option<File>> {
                    let dir = parent_of(&path);
                    ensure_dir(dir)?;
                    let file = match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
                        Err(e) => return Err(e).at(&path),
                    };
                    // Written zeros, not fallocate: unwritten extents would
                    // still need a metadata update on the first sync.
                    let zeros = vec![0u8; (size_hint as usize).min(PREALLOC_CHUNK)];
                    let mut at = 0u64;
                    while at < size_hint {
                        let n = (size_hint - at).min(zeros.len() as u64) as usize;
                        file.write_all_at(&zeros[..n], at).at(&path)?;
                        at += n as u64;
                    }
                    // The name must survive a crash before the first append counts.
                    file.sync_all().at(&path)?;
                    fsync_dir(dir)?;
                    Ok(Some(file))
                };
                create().map_err(|f| ctx.err(f))
            })
            .await?;
        Ok(match created {
            Some(file) => JournalOpen::Created(Box::new(LocalJournal {
                ctx: Ctx { op: Op::Append, ..ctx },
                path: self.root.join(key),
                file,
                len: 0,
                broken: false,
                dsync: true,
            })),
            None => JournalOpen::AlreadyExists,
        })
    }

    async fn check(&self) -> Result<()> {
        let root = self.root.clone();
        self.blocking(self.ctx(Op::Check, ""), move |ctx| {
            let probe = || -> IoRes<()> {
                ensure_dir(&root)?;
                let (tmp, mut file) = TempFile::create(&root)?;
                file.write_all(b"pgpitr write probe\n").at(&tmp.path)?;
                file.sync_all().at(&tmp.path)?;
                drop(file);
                fs::remove_file(&tmp.path).at(&tmp.path)?;
                tmp.keep();
                Ok(())
            };
            probe().map_err(|f| ctx.err(f))
        })
        .await
    }
}

/// A file grown by `pwrite` + `fdatasync`: no new inode or directory entry
/// per append, so a sync costs one data flush (and the size update).
/// `append` blocks the calling thread for the write and the sync.
#[derive(Debug)]
struct LocalJournal {
    ctx: Ctx,
    path: PathBuf,
    file: File,
    len: u64,
    /// Set by a failed append: the tail is unknown, nothing more may follow.
    broken: bool,
    /// Whether `pwritev2(RWF_DSYNC)` works here (until it says it does not).
    dsync: bool,
}

/// Writes `data` at `offset` and makes it durable, as `pwrite` + `fdatasync`
/// do, in one `pwritev2(RWF_DSYNC)` call where the kernel and file system
/// take it: a group commit then costs one syscall instead of two.
fn write_durably(file: &File, mut data: &[u8], mut offset: u64, dsync: &mut bool) -> io::Result<()> {
    use rustix::io::{Errno, ReadWriteFlags, pwritev2};
    while *dsync && !data.is_empty() {
        match pwritev2(file, &[io::IoSlice::new(data)], offset, ReadWriteFlags::DSYNC) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            // Kernels before 4.7 or file systems without per-write flags.
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => *dsync = false,
            Err(e) => return Err(e.into()),
        }
    }
    if data.is_empty() {
        return Ok(());
    }
    file.write_all_at(data, offset)?;
    file.sync_data()
}

#[async_trait]
impl Journal for LocalJournal {
    async fn append(&mut self, data: Bytes) -> Result<()> {
        let ctx = self.ctx.clone();
        if self.broken {
            return Err(StorageError::permanent(ctx.op, ctx.key, ctx.location, "an earlier append to it failed"));
        }
        let (file, offset) = (&self.file, self.len);
        let n = data.len() as u64;
        self.broken = true;
        // On the calling thread, not the blocking pool: the synchronous
        // archiver owns its thread and can do nothing useful until the data
        // is durable, and the two thread hand-offs per group commit cost
        // ~10% of its CPU on a machine the primary's backends share.
        write_durably(file, &data, offset, &mut self.dsync).at(&self.path).map_err(|f| ctx.err(f))?;
        self.broken = false;
        self.len += n;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// Streams into a temp file next to the target; `complete` truncates to the
/// accepted length, fsyncs, renames and fsyncs the directory.
#[derive(Debug)]
struct LocalUpload {
    ctx: Ctx,
    path: PathBuf,
    tmp: Option<TempFile>,
    file: Arc<File>,
    /// Bytes accepted so far; a failed write past this offset is
    /// overwritten by the next write and cut off by `complete`.
    len: u64,
    renamed: bool,
    done: Option<u64>,
}

impl LocalUpload {
    fn ctx(&self, op: Op) -> Ctx {
        Ctx { op, ..self.ctx.clone() }
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        let ctx = self.ctx(Op::PutPart);
        if self.done.is_some() {
            return Err(StorageError::permanent(ctx.op, ctx.key, ctx.location, "upload already completed"));
        }
        let Some(tmp) = &self.tmp else {
            return Err(StorageError::permanent(ctx.op, ctx.key, ctx.location, "upload has no temporary file"));
        };
        let (file, tmp_path, offset) = (self.file.clone(), tmp.path.clone(), self.len);
        let n = data.len() as u64;
        run_blocking(ctx, move |ctx| file.write_all_at(&data, offset).at(&tmp_path).map_err(|f| ctx.err(f))).await?;
        self.len += n;
        Ok(())
    }

    async fn try_complete(&mut self) -> Result<u64> {
        if let Some(n) = self.done {
            return Ok(n);
        }
        let ctx = self.ctx(Op::CompleteUpload);
        let Some(tmp) = &self.tmp else {
            return Err(StorageError::permanent(ctx.op, ctx.key, ctx.location, "upload has no temporary file"));
        };
        let (file, tmp_path, path, len, renamed) =
            (self.file.clone(), tmp.path.clone(), self.path.clone(), self.len, self.renamed);
        // Returns whether the rename happened, so a retry after a failed
        // directory fsync does not try to rename a file that is gone.
        let (renamed, res) = run_blocking(ctx, move |ctx| {
            let finish = |renamed: &mut bool| -> IoRes<()> {
                if !*renamed {
                    file.set_len(len).at(&tmp_path)?;
                    file.sync_all().at(&tmp_path)?;
                    fs::rename(&tmp_path, &path).at(&path)?;
                    *renamed = true;
                }
                fsync_dir(parent_of(&path))
            };
            let mut renamed = renamed;
            let res = finish(&mut renamed).map_err(|f| ctx.err(f));
            Ok((renamed, res))
        })
        .await?;
        if renamed {
            self.renamed = true;
            if let Some(tmp) = self.tmp.take() {
                tmp.keep();
            }
        }
        res?;
        self.done = Some(self.len);
        Ok(self.len)
    }

    async fn try_abort(&mut self) -> Result<()> {
        let ctx = self.ctx(Op::AbortUpload);
        if self.renamed {
            return Err(StorageError::permanent(ctx.op, ctx.key, ctx.location, "upload already completed"));
        }
        let Some(tmp_path) = self.tmp.as_ref().map(|t| t.path.clone()) else { return Ok(()) };
        run_blocking(ctx, move |ctx| remove_object(&tmp_path).map(|_| ()).map_err(|f| ctx.err(f))).await?;
        if let Some(tmp) = self.tmp.take() {
            tmp.keep();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of making an append durable (one `pwritev2(RWF_DSYNC)`,
    /// or `pwrite` + `fdatasync` where that is refused) write the bytes
    /// where they belong and nothing else.
    #[test]
    fn durable_writes_with_and_without_per_write_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        file.write_all_at(&[0u8; 64], 0).unwrap();
        let mut dsync = true;
        write_durably(&file, b"first", 0, &mut dsync).unwrap();
        let mut fallback = false;
        write_durably(&file, b"second", 5, &mut fallback).unwrap();
        let got = fs::read(&path).unwrap();
        assert_eq!(&got[..11], b"firstsecond");
        assert!(got[11..].iter().all(|&b| b == 0), "bytes past the appends changed");
    }

    #[test]
    fn dir_part_is_up_to_last_slash() {
        assert_eq!(dir_part(""), "");
        assert_eq!(dir_part("wal"), "");
        assert_eq!(dir_part("wal/"), "wal/");
        assert_eq!(dir_part("wal/00"), "wal/");
        assert_eq!(dir_part("a/b/c"), "a/b/");
    }

    #[test]
    fn io_classification() {
        assert!(!is_transient_io(&io::Error::from(ErrorKind::PermissionDenied)));
        assert!(!is_transient_io(&io::Error::from(ErrorKind::StorageFull)));
        assert!(!is_transient_io(&io::Error::from(ErrorKind::ReadOnlyFilesystem)));
        assert!(is_transient_io(&io::Error::from(ErrorKind::Interrupted)));
        assert!(is_absent(&io::Error::from(ErrorKind::NotADirectory)));
    }
}
