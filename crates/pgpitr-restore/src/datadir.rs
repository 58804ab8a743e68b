//! Extracting a backup into a data directory: the files come verified from
//! [`pgpitr_repo::reader::BackupReader`]; this module writes them.
//!
//! Files are 0600 and directories 0700, owned by the running user.
//! Tablespaces go where the map says (like `pg_basebackup -T`), linked from
//! `pg_tblspc/<oid>`, with `tablespace_map` rewritten to match. Everything
//! is synced before `global/pg_control` is written, last, so a half-written
//! directory never looks like a data directory that could start.

use pgpitr_repo::Repository;
use pgpitr_repo::backup::BackupInfo;
use pgpitr_repo::reader::{
    BackupReader, EntrySink, PG_CONTROL, ReadError, ReadProgress, ReadStats, SMALL_FILE_LIMIT, TABLESPACE_MAP,
    file_corrupt,
};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// What was read and written: every file of the manifest, plus
    /// `backup_manifest`.
    pub read: ReadStats,
    /// Where each tablespace went: OID and directory.
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// Files whose content deliberately differs from the manifest
    /// (`tablespace_map` when tablespaces were relocated).
    pub rewritten: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Parts fetched and decoded ahead of the writes.
    pub parallelism: usize,
    /// fsync every file and directory before pg_control is written.
    pub fsync: bool,
    pub progress: Arc<ReadProgress>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { parallelism: 4, fsync: true, progress: Arc::default() }
    }
}

/// Writes backup `info` into the empty (or missing) directory `target`. `tablespace_map` relocates tablespaces as `(old location, new
/// location)`; unmapped ones go to their original location, which must be
/// empty or missing too. The backup's `backup_manifest` is placed in
/// `target` for `pg_verifybackup`.
#[tracing::instrument(skip_all, fields(target = %target.display()))]
pub async fn extract(
    repo: &Repository,
    info: &BackupInfo,
    target: &Path,
    tablespace_map: &[(PathBuf, PathBuf)],
    opts: &ExtractOptions,
) -> Result<Extracted, ReadError> {
    let reader = BackupReader::open(repo, info).await?.parallelism(opts.parallelism).progress(opts.progress.clone());
    let spaces = plan_tablespaces(info, tablespace_map)?;
    let dirs: Vec<PathBuf> = std::iter::once(target.to_path_buf()).chain(spaces.values().cloned()).collect();
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| prepare_empty_dir(d)))
        .await
        .map_err(|e| ReadError::Invalid(format!("internal error: {e}")))??;
    let sink = DataDir::new(&info.id, target, spaces, opts.fsync);
    let (sink, stats) = reader.read(sink).await?;
    let raw_manifest = reader.raw_manifest().clone();
    let mut out = Extracted { read: stats, ..Extracted::default() };
    tokio::task::spawn_blocking(move || sink.finish(Some(&raw_manifest), &mut out).map(|()| out))
        .await
        .map_err(|e| ReadError::Invalid(format!("internal error: {e}")))?
}

/// New location of every tablespace, by OID.
pub(crate) fn plan_tablespaces(
    info: &BackupInfo,
    map: &[(PathBuf, PathBuf)],
) -> Result<HashMap<u32, PathBuf>, ReadError> {
    let invalid = |m: String| ReadError::Invalid(m);
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
pub(crate) fn prepare_empty_dir(dir: &Path) -> Result<(), ReadError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ReadError::Invalid(format!(
                    "{} is not empty; refusing to extract a backup into it",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => mkdirs(dir)?,
        Err(e) => return Err(ReadError::io(dir, e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| ReadError::io(dir, e))
}

fn mkdirs(dir: &Path) -> Result<(), ReadError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| ReadError::io(dir, e))
}

fn sync_path(p: &Path) -> Result<(), ReadError> {
    fs::File::open(p).and_then(|f| f.sync_all()).map_err(|e| ReadError::io(p, e))
}

/// The files of the target being written (on the reader's blocking thread).
pub(crate) struct DataDir {
    /// The backup's ID, for messages.
    id: String,
    target: PathBuf,
    spaces: HashMap<u32, PathBuf>,
    /// Small files written at the end (pg_control, tablespace_map).
    deferred: HashMap<Vec<u8>, Vec<u8>>,
    /// Everything written, for the final fsync.
    written: Vec<PathBuf>,
    last_dir: Option<PathBuf>,
    fsync: bool,
}

/// A file being written: on disk, or kept for the end.
pub(crate) enum Out {
    Disk(fs::File),
    Kept(Vec<u8>),
}

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Out::Disk(f) => f.write(b),
            Out::Kept(v) => v.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Disk(f) => f.flush(),
            Out::Kept(_) => Ok(()),
        }
    }
}

impl DataDir {
    pub(crate) fn new(id: &str, target: &Path, spaces: HashMap<u32, PathBuf>, fsync: bool) -> DataDir {
        DataDir {
            id: id.to_string(),
            target: target.to_path_buf(),
            spaces,
            deferred: HashMap::new(),
            written: Vec::new(),
            last_dir: None,
            fsync,
        }
    }

    pub(crate) fn path(&self, space: Option<u32>, rel: &[u8]) -> Result<PathBuf, ReadError> {
        let root = match space {
            None => &self.target,
            Some(oid) => self
                .spaces
                .get(&oid)
                .ok_or_else(|| ReadError::Invalid(format!("tablespace {oid} of backup {} has no location", self.id)))?,
        };
        Ok(root.join(std::ffi::OsStr::from_bytes(rel)))
    }

    fn deferred(space: Option<u32>, rel: &[u8]) -> bool {
        space.is_none() && (rel == PG_CONTROL || rel == TABLESPACE_MAP)
    }

    /// Links and maps tablespaces, writes the manifest (if there is one),
    /// syncs everything, then pg_control.
    pub(crate) fn finish(mut self, raw_manifest: Option<&[u8]>, out: &mut Extracted) -> Result<(), ReadError> {
        let target = self.target.clone();
        let mut spaces: Vec<(u32, PathBuf)> = self.spaces.iter().map(|(o, p)| (*o, p.clone())).collect();
        spaces.sort();
        let tblspc = target.join("pg_tblspc");
        mkdirs(&tblspc)?;
        for (oid, location) in &spaces {
            let link = tblspc.join(oid.to_string());
            std::os::unix::fs::symlink(location, &link).map_err(|e| ReadError::io(&link, e))?;
        }
        out.tablespaces = spaces.clone();
        if let Some(map) = self.deferred.remove(TABLESPACE_MAP) {
            let new = rewrite_tablespace_map(&map, &spaces)
                .map_err(|e| file_corrupt(&self.id, TABLESPACE_MAP, format!("cannot be read: {e}")))?;
            if new != map {
                out.rewritten.push("tablespace_map".into());
            }
            self.write_new(&target.join("tablespace_map"), &new)?;
        } else if !spaces.is_empty() {
            return Err(file_corrupt(&self.id, TABLESPACE_MAP, "is missing from a backup with tablespaces".into()));
        }
        if let Some(raw_manifest) = raw_manifest {
            self.write_new(&target.join("backup_manifest"), raw_manifest)?;
            out.read.files += 1;
            out.read.bytes += raw_manifest.len() as u64;
        }
        let control = self
            .deferred
            .remove(PG_CONTROL)
            .ok_or_else(|| file_corrupt(&self.id, PG_CONTROL, "is missing from the backup".into()))?;
        if self.fsync {
            for p in self.written.iter().rev() {
                sync_path(p)?;
            }
            for (_, location) in &spaces {
                sync_path(location)?;
            }
            sync_path(&tblspc)?;
        }
        let global = target.join("global");
        mkdirs(&global)?;
        let control_path = global.join("pg_control");
        self.write_new(&control_path, &control)?;
        if self.fsync {
            sync_path(&control_path)?;
            sync_path(&global)?;
            sync_path(&target)?;
        }
        Ok(())
    }

    /// Notes a file written outside the sink's own writes, for the final fsync.
    pub(crate) fn wrote(&mut self, path: PathBuf) {
        self.written.push(path);
    }

    pub(crate) fn write_new(&mut self, path: &Path, data: &[u8]) -> Result<(), ReadError> {
        let mut f = create(path)?;
        f.write_all(data).map_err(|e| ReadError::io(path, e))?;
        self.written.push(path.to_path_buf());
        Ok(())
    }
}

pub(crate) fn create(path: &Path) -> Result<fs::File, ReadError> {
    fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| ReadError::io(path, e))
}

impl EntrySink for DataDir {
    type File = Out;

    fn directory(&mut self, space: Option<u32>, rel: &[u8]) -> Result<(), ReadError> {
        let dest = self.path(space, rel)?;
        mkdirs(&dest)?;
        self.written.push(dest);
        Ok(())
    }

    fn open(&mut self, space: Option<u32>, rel: &[u8], size: u64) -> Result<Out, ReadError> {
        if Self::deferred(space, rel) {
            // The reader refuses such files above SMALL_FILE_LIMIT.
            return Ok(Out::Kept(Vec::with_capacity(size.min(SMALL_FILE_LIMIT) as usize)));
        }
        let dest = self.path(space, rel)?;
        if let Some(parent) = dest.parent()
            && self.last_dir.as_deref() != Some(parent)
        {
            mkdirs(parent)?;
            self.last_dir = Some(parent.to_path_buf());
        }
        Ok(Out::Disk(create(&dest)?))
    }

    fn close(&mut self, space: Option<u32>, rel: &[u8], file: Out) -> Result<(), ReadError> {
        match file {
            Out::Kept(data) => {
                self.deferred.insert(rel.to_vec(), data);
            }
            Out::Disk(_) => self.written.push(self.path(space, rel)?),
        }
        Ok(())
    }

    fn write_failed(&self, space: Option<u32>, rel: &[u8], e: io::Error) -> ReadError {
        match self.path(space, rel) {
            Ok(p) => ReadError::io(p, e),
            Err(no_location) => no_location,
        }
    }
}

/// `tablespace_map` lines are `<oid> <path>`, with `\`, CR and LF in the
/// path escaped by a backslash. Each line gets its tablespace's new path.
fn rewrite_tablespace_map(map: &[u8], spaces: &[(u32, PathBuf)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(map.len());
    let mut lines: Vec<Vec<u8>> = Vec::new();
    // Split on unescaped newlines.
    let mut cur = Vec::new();
    let mut escaped = false;
    for &c in map {
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
    let mut done = std::collections::HashSet::new();
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

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_private_and_pg_control_waits_for_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        prepare_empty_dir(&target).unwrap();
        let mut d = DataDir::new("B", &target, HashMap::new(), true);
        for (rel, data) in [(&b"base/1/2"[..], &b"hello"[..]), (PG_CONTROL, b"ctl")] {
            let mut f = d.open(None, rel, data.len() as u64).unwrap();
            f.write_all(data).unwrap();
            d.close(None, rel, f).unwrap();
        }
        assert_eq!(fs::read(target.join("base/1/2")).unwrap(), b"hello");
        assert!(!target.join("global/pg_control").exists(), "pg_control waits for the end");
        assert_eq!(mode(&target.join("base/1/2")), 0o600);
        assert_eq!(mode(&target.join("base/1")), 0o700);
        assert_eq!(mode(&target), 0o700);
        let elsewhere = d.open(Some(99), b"PG_15/1", 1).err().unwrap();
        assert!(elsewhere.to_string().contains("tablespace 99 of backup B has no location"), "{elsewhere}");
        let mut out = Extracted::default();
        d.finish(Some(b"{}"), &mut out).unwrap();
        assert_eq!(fs::read(target.join("global/pg_control")).unwrap(), b"ctl");
        assert_eq!(fs::read(target.join("backup_manifest")).unwrap(), b"{}");
        // A directory that is not empty is refused.
        let err = prepare_empty_dir(&target).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }
}
