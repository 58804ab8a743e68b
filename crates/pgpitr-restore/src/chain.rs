//! Restoring a chain of incremental backups into a data directory: every
//! file written once, streamed from the chain newest backup first, with no
//! backup staged anywhere.
//!
//! ```text
//!  newest ──files, directories, backup_label (INCREMENTAL FROM lines checked, then dropped)──▶ target
//!     │   INCREMENTAL.<name> (or a block delta's PGPITR_DELTA.<k>.<name> parts): <name> created
//!     │   at its final length, its blocks written; the blocks below its truncation length it
//!     │   lacks are owed
//!  parent ──owed blocks it holds (its own increments)──▶ pwrite into <name>
//!   ...
//!  full ──owed blocks of its whole copy──▶ pwrite; nothing may stay owed
//! ```
//!
//! The rules are pg_combinebackup's (`reconstruct.c`): the output holds the
//! newest backup's files; a block comes from the newest backup that holds
//! it; older backups supply only blocks below the newest increment's
//! truncation length, and a whole copy of the file ends the search; blocks
//! no backup holds are zeros. An older backup is read only while it owes
//! something. Every file of every backup is still checked against its
//! manifest (a corrupt increment fails the restore, naming it), and
//! `global/pg_control` is written last, so a failed restore never leaves a
//! directory that could start.

use crate::datadir::{DataDir, ExtractOptions, Extracted, Out, plan_tablespaces, prepare_empty_dir};
use pgpitr_repo::Repository;
use pgpitr_repo::backup::{BackupInfo, IncrementalMethod};
use pgpitr_repo::increment::{BLCKSZ, MAGIC as INCREMENTAL_MAGIC, RELSEG_SIZE, output_name};
use pgpitr_repo::reader::{BackupReader, EntrySink, ReadError, SMALL_FILE_LIMIT, file_corrupt};
use pgpitr_types::{Lsn, TimelineId};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

const BACKUP_LABEL: &[u8] = b"backup_label";

/// A file of the output: its tablespace (`None`: the data directory) and
/// its path in that archive.
type Key = (Option<u32>, Vec<u8>);

/// What older backups still owe a file of the output.
#[derive(Debug)]
struct Owed {
    path: PathBuf,
    /// Older backups supply blocks below this: the newest increment's
    /// truncation length.
    limit: u32,
    /// Blocks below `limit` already written.
    filled: Vec<u64>,
    /// The newest backup, which made the file an increment (for messages).
    newest: String,
}

impl Owed {
    fn new(path: PathBuf, limit: u32, newest: &str) -> Owed {
        Owed { path, limit, filled: vec![0; (limit as usize).div_ceil(64)], newest: newest.to_string() }
    }

    fn wants(&self, b: u32) -> bool {
        b < self.limit && self.filled[b as usize / 64] & (1 << (b % 64)) == 0
    }

    fn fill(&mut self, b: u32) {
        if b < self.limit {
            self.filled[b as usize / 64] |= 1 << (b % 64);
        }
    }

    fn complete(&self) -> bool {
        (0..self.limit).all(|b| !self.wants(b))
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Where the bytes of an increment's member are.
#[derive(Debug)]
enum Stage {
    /// Magic, block count, truncation length.
    Header(Vec<u8>),
    /// The block numbers.
    Numbers {
        count: usize,
        truncation: u32,
        raw: Vec<u8>,
    },
    /// Zeros up to a block boundary.
    Padding {
        left: u64,
        blocks: Vec<u32>,
    },
    /// Block `i` of `blocks`, `within` bytes in.
    Data {
        blocks: Vec<u32>,
        i: usize,
        within: u64,
    },
    Done,
}

/// One file of one backup of the chain, written where its blocks belong.
struct Blocks {
    file: fs::File,
    /// `None` only for the newest backup's increment, before its header.
    owed: Option<Owed>,
    path: PathBuf,
    /// Bytes of the member in the backup.
    size: u64,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// `INCREMENTAL.<name>`; `newest`: of the newest backup, whose blocks all count.
    Increment { stage: Stage, newest: Option<String> },
    /// A whole copy of the file, `pos` bytes in.
    Whole { pos: u64 },
}

impl Blocks {
    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(data, at)
    }

    fn owed(&self) -> io::Result<&Owed> {
        self.owed.as_ref().ok_or_else(|| bad("block data before the increment's header".into()))
    }

    /// Consumes a prefix of `buf`; returns its length.
    fn step(&mut self, buf: &[u8]) -> io::Result<usize> {
        let size = self.size;
        let Source::Increment { stage, newest } = &mut self.source else {
            return self.whole(buf);
        };
        match stage {
            Stage::Header(h) => {
                let k = (12 - h.len()).min(buf.len());
                h.extend_from_slice(&buf[..k]);
                if h.len() == 12 {
                    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
                    let (magic, count, truncation) = (word(0), word(4), word(8));
                    if magic != INCREMENTAL_MAGIC {
                        return Err(bad(format!("bad incremental magic number 0x{magic:08x}")));
                    }
                    if count > RELSEG_SIZE || truncation > RELSEG_SIZE {
                        return Err(bad(format!("claims {count} blocks and a length of {truncation} blocks")));
                    }
                    let head = 12 + 4 * u64::from(count);
                    let padding = if count > 0 { (BLCKSZ - head % BLCKSZ) % BLCKSZ } else { 0 };
                    let want = head + padding + u64::from(count) * BLCKSZ;
                    if want != size {
                        return Err(bad(format!("is {size} bytes, its header says {want}")));
                    }
                    *stage = Stage::Numbers { count: count as usize, truncation, raw: Vec::new() };
                    if count == 0 {
                        self.numbers_done(Vec::new(), truncation)?;
                    }
                }
                Ok(k)
            }
            Stage::Numbers { count, truncation, raw } => {
                let k = (*count * 4 - raw.len()).min(buf.len());
                raw.extend_from_slice(&buf[..k]);
                if raw.len() == *count * 4 {
                    let blocks: Vec<u32> =
                        raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    let truncation = *truncation;
                    self.numbers_done(blocks, truncation)?;
                }
                Ok(k)
            }
            Stage::Padding { left, blocks } => {
                let k = (*left).min(buf.len() as u64) as usize;
                *left -= k as u64;
                if *left == 0 {
                    *stage = Stage::Data { blocks: std::mem::take(blocks), i: 0, within: 0 };
                }
                Ok(k)
            }
            Stage::Data { blocks, i, within } => {
                let b = blocks[*i];
                let k = (BLCKSZ - *within).min(buf.len() as u64) as usize;
                let at = u64::from(b) * BLCKSZ + *within;
                *within += k as u64;
                let end = *within == BLCKSZ;
                if end {
                    *i += 1;
                    *within = 0;
                    if *i == blocks.len() {
                        *stage = Stage::Done;
                    }
                }
                let all = newest.is_some();
                let owed = self.owed()?;
                if all || owed.wants(b) {
                    self.write_at(&buf[..k], at)?;
                    if end && let Some(o) = self.owed.as_mut() {
                        o.fill(b);
                    }
                }
                Ok(k)
            }
            Stage::Done => Err(bad("has bytes after its last block".into())),
        }
    }

    /// The header and block numbers are read: size the newest backup's
    /// file, and go on to the blocks.
    fn numbers_done(&mut self, blocks: Vec<u32>, truncation: u32) -> io::Result<()> {
        if let Some(&b) = blocks.iter().find(|&&b| b >= RELSEG_SIZE) {
            return Err(bad(format!("names block {b}, past a segment's {RELSEG_SIZE}")));
        }
        let Source::Increment { stage, newest } = &mut self.source else { return Ok(()) };
        match (newest, &self.owed) {
            (Some(id), None) => {
                // As long as its truncation length, or its last block.
                let blocks_len = blocks.iter().map(|&b| b + 1).max().unwrap_or(0).max(truncation);
                self.file.set_len(u64::from(blocks_len) * BLCKSZ)?;
                self.owed = Some(Owed::new(self.path.clone(), truncation, id));
            }
            // A later part of the newest backup's delta of the file.
            (Some(_), Some(o)) if o.limit != truncation => {
                return Err(bad(format!("says the file is {truncation} blocks long, an earlier part {}", o.limit)));
            }
            _ => {}
        }
        let padding = if blocks.is_empty() { 0 } else { (BLCKSZ - (12 + 4 * blocks.len() as u64) % BLCKSZ) % BLCKSZ };
        *stage = match (blocks.is_empty(), padding) {
            (true, _) => Stage::Done,
            (false, 0) => Stage::Data { blocks, i: 0, within: 0 },
            (false, left) => Stage::Padding { left, blocks },
        };
        Ok(())
    }

    /// A whole copy: the owed blocks it holds in full.
    fn whole(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Source::Whole { pos } = &mut self.source else { return Ok(0) };
        let start = *pos;
        *pos += buf.len() as u64;
        let whole_blocks = (self.size / BLCKSZ) as u32;
        let owed = self.owed.as_mut().ok_or_else(|| bad("internal error: nothing owed".into()))?;
        let mut run: Option<(usize, u64)> = None;
        let mut off = 0usize;
        let mut runs = Vec::new();
        while off < buf.len() {
            let abs = start + off as u64;
            let b = (abs / BLCKSZ) as u32;
            let block_end = (u64::from(b) + 1) * BLCKSZ;
            let k = ((block_end - abs) as usize).min(buf.len() - off);
            if b < whole_blocks && owed.wants(b) {
                run.get_or_insert((off, abs));
                if abs + k as u64 == block_end {
                    owed.fill(b);
                }
            } else if let Some((from, at)) = run.take() {
                runs.push((from, off, at));
            }
            off += k;
        }
        if let Some((from, at)) = run {
            runs.push((from, off, at));
        }
        for (from, to, at) in runs {
            self.write_at(&buf[from..to], at)?;
        }
        Ok(buf.len())
    }

    /// The member is read: what is known of what its file is owed.
    fn finish(self) -> io::Result<Option<Owed>> {
        match self.source {
            Source::Increment { stage: Stage::Done, .. } => Ok(self.owed),
            Source::Increment { .. } => Err(bad("ends inside its increment".into())),
            // A whole copy ends the search: blocks it lacks are zeros.
            Source::Whole { .. } => Ok(None),
        }
    }
}

impl Write for Blocks {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        while !buf.is_empty() {
            let k = self.step(buf)?;
            buf = &buf[k..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A member of a backup of the chain, as it is written.
enum Entry {
    /// Written as it is (the newest backup's other files).
    Plain(Out),
    Blocks(Box<Blocks>),
    /// The newest backup's `backup_label`, kept to drop its INCREMENTAL lines.
    Label(Vec<u8>),
    /// Nothing the output needs.
    Skip,
}

impl Write for Entry {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Entry::Plain(o) => o.write(b),
            Entry::Blocks(w) => w.write(b),
            Entry::Label(v) => v.write(b),
            Entry::Skip => Ok(b.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Entry::Plain(o) => o.flush(),
            _ => Ok(()),
        }
    }
}

/// Names a failed write: a malformed increment is corrupt, the rest is I/O.
fn failed(id: &str, space: Option<u32>, rel: &[u8], path: Option<PathBuf>, e: io::Error) -> ReadError {
    let shown: Vec<u8> = match space {
        Some(oid) => [format!("pg_tblspc/{oid}/").as_bytes(), rel].concat(),
        None => rel.to_vec(),
    };
    match (e.kind(), path) {
        (io::ErrorKind::InvalidData, _) => file_corrupt(id, &shown, e.to_string()),
        (_, Some(p)) => ReadError::io(p, e),
        (_, None) => ReadError::io(String::from_utf8_lossy(&shown).as_ref(), e),
    }
}

/// The newest backup: the output's files and directories, its increments
/// started.
struct Newest {
    dir: DataDir,
    info: BackupInfo,
    owed: HashMap<Key, Owed>,
}

impl EntrySink for Newest {
    type File = Entry;

    fn directory(&mut self, space: Option<u32>, rel: &[u8]) -> Result<(), ReadError> {
        self.dir.directory(space, rel)
    }

    fn open(&mut self, space: Option<u32>, rel: &[u8], size: u64) -> Result<Entry, ReadError> {
        if space.is_none() && rel == BACKUP_LABEL {
            if size > SMALL_FILE_LIMIT {
                return Err(file_corrupt(&self.info.id, rel, format!("is implausibly large ({size} bytes)")));
            }
            return Ok(Entry::Label(Vec::with_capacity(size as usize)));
        }
        let (name, increment) = output_name(space, rel);
        if !increment {
            return Ok(Entry::Plain(self.dir.open(space, rel, size)?));
        }
        let path = self.dir.path(space, &name)?;
        let source = Source::Increment { stage: Stage::Header(Vec::new()), newest: Some(self.info.id.clone()) };
        // A block delta may hold a file in several parts: the first makes it.
        if let Some(owed) = self.owed.remove(&(space, name.clone())) {
            let file = fs::OpenOptions::new().write(true).open(&path).map_err(|e| ReadError::io(&path, e))?;
            return Ok(Entry::Blocks(Box::new(Blocks { file, owed: Some(owed), path, size, source })));
        }
        let Out::Disk(file) = self.dir.open(space, &name, size)? else {
            return Err(file_corrupt(&self.info.id, rel, "is an increment of a file kept for the end".into()));
        };
        self.dir.wrote(path.clone());
        Ok(Entry::Blocks(Box::new(Blocks { file, owed: None, path, size, source })))
    }

    fn close(&mut self, space: Option<u32>, rel: &[u8], file: Entry) -> Result<(), ReadError> {
        match file {
            Entry::Plain(o) => self.dir.close(space, rel, o),
            Entry::Label(label) => {
                let label = strip_label(&self.info, &label).map_err(|e| file_corrupt(&self.info.id, rel, e))?;
                let path = self.dir.path(None, BACKUP_LABEL)?;
                self.dir.write_new(&path, &label)
            }
            Entry::Blocks(b) => {
                // Kept even when nothing is owed, for the file's later parts.
                if let Some(owed) = b.finish().map_err(|e| failed(&self.info.id, space, rel, None, e))? {
                    self.owed.insert((space, output_name(space, rel).0), owed);
                }
                Ok(())
            }
            Entry::Skip => Ok(()),
        }
    }

    fn write_failed(&self, space: Option<u32>, rel: &[u8], e: io::Error) -> ReadError {
        let path = self.dir.path(space, &output_name(space, rel).0).ok();
        failed(&self.info.id, space, rel, path, e)
    }
}

/// An older backup: writes the blocks the output still owes.
struct Older {
    id: String,
    /// The chain's full backup, which holds no increments.
    full: bool,
    owed: HashMap<Key, Owed>,
    /// Owed files this backup holds.
    seen: HashSet<Key>,
}

impl EntrySink for Older {
    type File = Entry;

    fn directory(&mut self, _: Option<u32>, _: &[u8]) -> Result<(), ReadError> {
        Ok(())
    }

    fn open(&mut self, space: Option<u32>, rel: &[u8], size: u64) -> Result<Entry, ReadError> {
        let (name, increment) = output_name(space, rel);
        let key = (space, name);
        let Some(owed) = self.owed.remove(&key) else { return Ok(Entry::Skip) };
        if increment && self.full {
            return Err(file_corrupt(&self.id, rel, "is an increment in a full backup".into()));
        }
        self.seen.insert(key);
        let file = fs::OpenOptions::new().write(true).open(&owed.path).map_err(|e| ReadError::io(&owed.path, e))?;
        if !increment && !size.is_multiple_of(BLCKSZ) {
            return Err(file_corrupt(
                &self.id,
                rel,
                format!("is {size} bytes, not whole blocks, and a newer backup holds it as an increment"),
            ));
        }
        let source = match increment {
            true => Source::Increment { stage: Stage::Header(Vec::new()), newest: None },
            false => Source::Whole { pos: 0 },
        };
        let path = owed.path.clone();
        Ok(Entry::Blocks(Box::new(Blocks { file, owed: Some(owed), path, size, source })))
    }

    fn close(&mut self, space: Option<u32>, rel: &[u8], file: Entry) -> Result<(), ReadError> {
        if let Entry::Blocks(b) = file
            && let Some(owed) = b.finish().map_err(|e| failed(&self.id, space, rel, None, e))?
            && !owed.complete()
        {
            self.owed.insert((space, output_name(space, rel).0), owed);
        }
        Ok(())
    }

    fn write_failed(&self, space: Option<u32>, rel: &[u8], e: io::Error) -> ReadError {
        failed(&self.id, space, rel, None, e)
    }
}

/// The newest backup's `backup_label` without its `INCREMENTAL FROM` lines,
/// once they are checked against `backup.json`'s parent link.
fn strip_label(info: &BackupInfo, label: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(label).map_err(|_| "is not UTF-8".to_string())?;
    let inc = info.incremental.as_ref().ok_or("backup.json says it is a full backup")?;
    if inc.method == IncrementalMethod::Delta {
        // The server took a full backup: pgpitr made the delta.
        if text.contains("INCREMENTAL FROM") {
            return Err("has INCREMENTAL FROM lines, backup.json says it is a block delta".into());
        }
        return Ok(label.to_vec());
    }
    let (mut lsn, mut tli) = (None, None);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        if let Some(v) = body.strip_prefix("INCREMENTAL FROM LSN: ") {
            lsn = Some(v.trim().parse::<Lsn>().map_err(|e| format!("INCREMENTAL FROM LSN: {e}"))?);
        } else if let Some(v) = body.strip_prefix("INCREMENTAL FROM TLI: ") {
            tli = Some(TimelineId(v.trim().parse::<u32>().map_err(|e| format!("INCREMENTAL FROM TLI: {e}"))?));
        } else {
            out.push_str(line);
        }
    }
    match (lsn, tli) {
        (Some(l), Some(t)) if (l, t) == (inc.from_lsn, inc.from_tli) => Ok(out.into_bytes()),
        (Some(l), Some(t)) => Err(format!(
            "says the backup is incremental from {l} on timeline {t}, backup.json from {} on timeline {}",
            inc.from_lsn, inc.from_tli
        )),
        _ => Err("lacks the INCREMENTAL FROM lines of an incremental backup".into()),
    }
}

/// Writes the chain `chain` (full backup first, as
/// [`pgpitr_repo::chain::Backups::chain`] returns it) into `target`, as
/// [`crate::datadir::extract`] writes one backup. No `backup_manifest` is
/// written: the newest backup's describes its increments, not the files.
pub async fn extract_chain(
    repo: &Repository,
    chain: &[BackupInfo],
    target: &Path,
    tablespace_map: &[(PathBuf, PathBuf)],
    opts: &ExtractOptions,
) -> Result<Extracted, ReadError> {
    let Some((newest, older)) = chain.split_last() else {
        return Err(ReadError::Invalid("internal error: an empty chain".into()));
    };
    if older.is_empty() {
        return crate::datadir::extract(repo, newest, target, tablespace_map, opts).await;
    }
    let mut readers = Vec::with_capacity(chain.len());
    for info in chain {
        readers
            .push(BackupReader::open(repo, info).await?.parallelism(opts.parallelism).progress(opts.progress.clone()));
    }
    opts.progress.total.store(chain.iter().map(|i| i.size_bytes).sum(), Ordering::Relaxed);
    let spaces = plan_tablespaces(newest, tablespace_map)?;
    let dirs: Vec<PathBuf> = std::iter::once(target.to_path_buf()).chain(spaces.values().cloned()).collect();
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| prepare_empty_dir(d)))
        .await
        .map_err(|e| ReadError::Invalid(format!("internal error: {e}")))??;

    let reader = readers.pop().ok_or_else(|| ReadError::Invalid("internal error: no reader".into()))?;
    let sink = Newest {
        dir: DataDir::new(&newest.id, target, spaces, opts.fsync),
        info: newest.clone(),
        owed: HashMap::new(),
    };
    let (sink, stats) = reader.read(sink).await?;
    let Newest { dir, mut owed, .. } = sink;
    owed.retain(|_, o| !o.complete());
    let mut out = Extracted { read: stats, ..Extracted::default() };
    for (i, info) in older.iter().enumerate().rev() {
        if owed.is_empty() {
            break;
        }
        let sink = Older { id: info.id.clone(), full: i == 0, owed, seen: HashSet::new() };
        let (sink, stats) = readers[i].read(sink).await?;
        out.read.parts += stats.parts;
        out.read.stored_bytes += stats.stored_bytes;
        owed = sink.owed;
        let unseen = owed.iter().find(|(k, _)| !sink.seen.contains(*k));
        if let Some((_, o)) = unseen {
            return Err(ReadError::Invalid(format!(
                "backup {} lacks {}, which backup {} holds as an increment of it",
                info.id,
                o.path.display(),
                o.newest
            )));
        }
    }
    if let Some(o) = owed.values().next() {
        return Err(ReadError::Invalid(format!(
            "{} is still owed blocks after the whole chain was read (backup {} holds it as an increment)",
            o.path.display(),
            o.newest
        )));
    }
    tokio::task::spawn_blocking(move || dir.finish(None, &mut out).map(|()| out))
        .await
        .map_err(|e| ReadError::Invalid(format!("internal error: {e}")))?
}
