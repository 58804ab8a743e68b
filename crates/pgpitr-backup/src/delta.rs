//! Block deltas, the incremental backups of PostgreSQL 14 to 16, which
//! cannot take them themselves. The server sends the whole tar as usual;
//! of each relation file the parent holds, pgpitr keeps only the blocks
//! whose page LSN is at or past the parent's start (written since, or never
//! WAL-logged: zero) and those past the end of the parent's copy, in
//! PostgreSQL 17's increment format, as `PGPITR_DELTA.<k>.<file>` parts of
//! at most [`PART_BLOCKS`] blocks; every other file is stored whole. The
//! server still reads everything: upload and storage shrink, not the
//! primary's reads.
//!
//! Why a block's LSN is enough: a page changed since the parent's start
//! carries the LSN of that change, which is later; one not changed since
//! was on disk, the same bytes, when the parent read it (its start
//! checkpoint wrote every page dirtied before it). Pages changed while the
//! backup reads are rewritten by WAL replay from the backup's start, as for
//! any base backup. What changes a page without a new LSN is kept out of
//! this reasoning: hint bits, the heap's all-visible flag among them, move
//! the LSN only with data checksums or `wal_log_hints` (`incremental.rs`
//! requires one); free-space and visibility maps are stored whole. Files
//! the server copies whole keep their pages' old LSNs (`CREATE DATABASE`
//! with `FILE_COPY`, `ALTER DATABASE SET TABLESPACE`): a copy the parent
//! caught half-done is completed by the blocks past its end, and a database
//! made again since the parent is found by [`recreated_databases`].

use pgpitr_repo::increment::{self, BLCKSZ, RELSEG_SIZE};
use pgpitr_repo::reader::Manifest;
use pgpitr_repo::reader::tar::{self, BLOCK, Kind};
use pgpitr_types::Lsn;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Blocks per stored part of one file's delta: 8 MiB held at most.
pub(crate) const PART_BLOCKS: usize = 1024;

/// How the parent holds a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParentFile {
    /// Whole, this many blocks long.
    Whole { blocks: u32 },
    /// In increments (its own chain holds the rest).
    Increment,
}

/// The parent's files by restored path, from its manifest.
pub(crate) fn parent_files(manifest: &Manifest) -> HashMap<Vec<u8>, ParentFile> {
    manifest
        .files
        .iter()
        .map(|f| match increment::output_name(None, &f.path) {
            (name, true) => (name, ParentFile::Increment),
            (name, false) => (name, ParentFile::Whole { blocks: (f.size / BLCKSZ).min(u64::from(u32::MAX)) as u32 }),
        })
        .collect()
}

/// The database directories (`base/<oid>` or `pg_tblspc/<oid>/<version>/<oid>`)
/// whose `PG_VERSION` was written again after the parent began: a database
/// dropped and made again under the same OID by copying its template's
/// files (`FILE_COPY`). Their pages keep the template's old LSNs and still
/// differ from the parent's copies, so a delta of them is not to be
/// trusted. Compared by the manifests' `Last-Modified` (the server's clock,
/// to the second): a `PG_VERSION` that differs from the parent's and is not
/// older than the parent's `backup_label`, which the server dated when the
/// parent began sending files. (A data directory copied before the parent,
/// as a standby promoted since, has older, different times: not flagged.)
pub(crate) fn recreated_databases(parent: &[u8], child: &[u8]) -> Result<Vec<String>, String> {
    let modified = |raw: &[u8]| -> Result<HashMap<String, String>, String> {
        let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| format!("backup manifest: {e}"))?;
        let files = v.get("Files").and_then(|f| f.as_array()).ok_or("backup manifest: no Files")?;
        Ok(files
            .iter()
            .filter_map(|f| {
                let path = f.get("Path")?.as_str()?;
                let key = match path.strip_suffix("/PG_VERSION") {
                    Some(dir) if dir.starts_with("base/") || dir.starts_with("pg_tblspc/") => dir,
                    _ if path == "backup_label" => path,
                    _ => return None,
                };
                Some((key.to_string(), f.get("Last-Modified")?.as_str()?.to_string()))
            })
            .collect())
    };
    let (before, now) = (modified(parent)?, modified(child)?);
    let began = before.get("backup_label").ok_or("the parent's backup manifest has no dated backup_label")?;
    // "YYYY-MM-DD HH:MM:SS GMT" orders as text.
    let mut out: Vec<String> = now
        .into_iter()
        .filter(|(dir, t)| dir != "backup_label" && t >= began && before.get(dir).is_some_and(|b| b != t))
        .map(|(dir, _)| dir)
        .collect();
    out.sort();
    Ok(out)
}

/// A file stored as a delta: its manifest path, and its parts' manifest
/// paths, sizes and CRC-32Cs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replaced {
    pub path: Vec<u8>,
    pub parts: Vec<(Vec<u8>, u64, u32)>,
}

/// What the delta of one archive kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeltaStats {
    pub files: u64,
    pub blocks_seen: u64,
    pub blocks_kept: u64,
}

/// One archive's tar, filtered as it streams through.
pub(crate) struct DeltaFilter {
    /// Blocks with a page LSN at or past this are kept: the parent's start.
    threshold: Lsn,
    /// The files the parent holds, by their restored manifest path.
    parent_files: Arc<HashMap<Vec<u8>, ParentFile>>,
    /// `pg_tblspc/<oid>/` for a tablespace's archive: manifest paths.
    prefix: Vec<u8>,
    state: State,
    pub replaced: Vec<Replaced>,
    pub stats: DeltaStats,
}

enum State {
    /// A header block, `buf` of it so far.
    Header(Vec<u8>),
    /// Bytes passed through as they are (a whole file's data and padding).
    Copy(u64),
    Delta(Box<DeltaFile>),
    /// The end marker was seen: the rest passes through.
    End,
}

struct DeltaFile {
    path: Vec<u8>,
    mpath: Vec<u8>,
    size: u64,
    pos: u64,
    truncation: u32,
    /// Blocks from here on are kept whatever their LSN: the parent's copy
    /// of the file ends before them.
    parent_len: u32,
    block: Vec<u8>,
    blocks: Vec<u32>,
    data: Vec<u8>,
    parts: Vec<(Vec<u8>, u64, u32)>,
}

impl DeltaFilter {
    pub fn new(
        threshold: Lsn,
        parent_files: Arc<HashMap<Vec<u8>, ParentFile>>,
        tablespace: Option<u32>,
    ) -> DeltaFilter {
        DeltaFilter {
            threshold,
            parent_files,
            prefix: tablespace.map(|oid| format!("pg_tblspc/{oid}/").into_bytes()).unwrap_or_default(),
            state: State::Header(Vec::with_capacity(BLOCK)),
            replaced: Vec::new(),
            stats: DeltaStats::default(),
        }
    }

    /// Filters the next bytes of the archive into `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            let k = self.step(input, out)?;
            input = &input[k..];
        }
        Ok(())
    }

    /// Whether the archive ended where a tar may end.
    pub fn finish(&self) -> Result<(), String> {
        match &self.state {
            State::End => Ok(()),
            State::Header(b) if b.is_empty() => Ok(()),
            State::Header(_) => Err("the archive ends inside a tar header".into()),
            State::Copy(_) => Err("the archive ends inside a file".into()),
            State::Delta(f) => Err(format!("the archive ends inside {}", String::from_utf8_lossy(&f.mpath))),
        }
    }

    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        match &mut self.state {
            State::End => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            State::Copy(left) => {
                let k = (*left).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..k]);
                *left -= k as u64;
                if *left == 0 {
                    self.state = State::Header(Vec::with_capacity(BLOCK));
                }
                Ok(k)
            }
            State::Header(buf) => {
                let k = (BLOCK - buf.len()).min(input.len());
                buf.extend_from_slice(&input[..k]);
                if buf.len() == BLOCK {
                    let mut block = [0u8; BLOCK];
                    block.copy_from_slice(buf);
                    self.header(&block, out)?;
                }
                Ok(k)
            }
            State::Delta(f) => {
                let k = ((BLCKSZ as usize) - f.block.len()).min(input.len()).min((f.size - f.pos) as usize);
                f.block.extend_from_slice(&input[..k]);
                f.pos += k as u64;
                if f.block.len() == BLCKSZ as usize {
                    let b = ((f.pos - BLCKSZ) / BLCKSZ) as u32;
                    self.stats.blocks_seen += 1;
                    let lsn = increment::page_lsn(&f.block);
                    if lsn >= self.threshold || lsn == Lsn(0) || b >= f.parent_len {
                        self.stats.blocks_kept += 1;
                        f.blocks.push(b);
                        f.data.extend_from_slice(&f.block);
                        if f.blocks.len() == PART_BLOCKS {
                            f.flush(out)?;
                        }
                    }
                    f.block.clear();
                }
                if f.pos == f.size {
                    if f.parts.is_empty() || !f.blocks.is_empty() {
                        f.flush(out)?;
                    }
                    let State::Delta(f) = std::mem::replace(&mut self.state, State::Header(Vec::new())) else {
                        unreachable!("matched above")
                    };
                    self.stats.files += 1;
                    self.replaced.push(Replaced { path: f.mpath, parts: f.parts });
                }
                Ok(k)
            }
        }
    }

    fn header(&mut self, block: &[u8; BLOCK], out: &mut Vec<u8>) -> Result<(), String> {
        let Some(h) = tar::parse_header(block)? else {
            out.extend_from_slice(block);
            self.state = State::End;
            return Ok(());
        };
        let mpath = [self.prefix.as_slice(), &h.path].concat();
        let blocks = h.size / BLCKSZ;
        let parent = self.parent_files.get(&mpath).copied();
        let delta = h.kind == Kind::File
            && h.size > 0
            && h.size.is_multiple_of(BLCKSZ)
            && blocks <= u64::from(RELSEG_SIZE)
            && increment::delta_candidate(&mpath)
            && parent.is_some();
        if !delta {
            out.extend_from_slice(block);
            let data = h.size.checked_add(tar::padding(h.size)).ok_or("a tar entry's size overflows")?;
            self.state = if data == 0 { State::Header(Vec::with_capacity(BLOCK)) } else { State::Copy(data) };
            return Ok(());
        }
        self.state = State::Delta(Box::new(DeltaFile {
            path: h.path,
            mpath,
            size: h.size,
            pos: 0,
            truncation: blocks as u32,
            parent_len: match parent {
                Some(ParentFile::Whole { blocks }) => blocks,
                // In increments there: its own chain made the file whole.
                _ => u32::MAX,
            },
            block: Vec::with_capacity(BLCKSZ as usize),
            blocks: Vec::new(),
            data: Vec::new(),
            parts: Vec::new(),
        }));
        Ok(())
    }
}

impl DeltaFile {
    /// Writes the blocks kept so far as the next part.
    fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let k = self.parts.len() as u32;
        let head = increment::header(&self.blocks, self.truncation);
        let size = (head.len() + self.data.len()) as u64;
        let name = increment::delta_name(&self.path, k);
        let th = tar::file_header(&name, size)
            .ok_or_else(|| format!("the path {} is too long for a tar header", String::from_utf8_lossy(&name)))?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &self.data);
        out.extend_from_slice(&th);
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.data);
        out.resize(out.len() + tar::padding(size) as usize, 0);
        self.parts.push((increment::delta_name(&self.mpath, k), size, crc));
        self.blocks.clear();
        self.data.clear();
        Ok(())
    }
}

/// The server's `backup_manifest`, with each file stored as a delta
/// replaced by its parts (size and CRC-32C of what is stored). Its
/// `Manifest-Checksum` no longer holds and is dropped.
pub(crate) fn rewrite_manifest(raw: &[u8], replaced: &[Replaced]) -> Result<Vec<u8>, String> {
    use serde_json::{Map, Value, json};
    if replaced.is_empty() {
        return Ok(raw.to_vec());
    }
    let mut m: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| format!("backup manifest: {e}"))?;
    let files = m.get_mut("Files").and_then(Value::as_array_mut).ok_or("backup manifest: no Files")?;
    let hex = |b: &[u8]| b.iter().map(|c| format!("{c:02x}")).collect::<String>();
    let path_of = |f: &Value| -> Option<Vec<u8>> {
        match (f.get("Path").and_then(Value::as_str), f.get("Encoded-Path").and_then(Value::as_str)) {
            (Some(p), _) => Some(p.as_bytes().to_vec()),
            (None, Some(e)) => {
                (0..e.len()).step_by(2).map(|i| e.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
            }
            _ => None,
        }
    };
    let wanted: std::collections::HashMap<&[u8], &Replaced> = replaced.iter().map(|r| (r.path.as_slice(), r)).collect();
    let mut out: Vec<Value> = Vec::with_capacity(files.len() + replaced.len());
    let mut listed: HashSet<&[u8]> = HashSet::new();
    let mut done = 0;
    for f in files.drain(..) {
        let Some(r) = path_of(&f).and_then(|p| wanted.get(p.as_slice()).copied()) else {
            out.push(f);
            continue;
        };
        listed.insert(r.path.as_slice());
        done += 1;
        let modified = f.get("Last-Modified").cloned().unwrap_or(Value::Null);
        for (name, size, crc) in &r.parts {
            let mut e = Map::new();
            match std::str::from_utf8(name) {
                Ok(p) => e.insert("Path".into(), json!(p)),
                Err(_) => e.insert("Encoded-Path".into(), json!(hex(name))),
            };
            e.insert("Size".into(), json!(size));
            e.insert("Last-Modified".into(), modified.clone());
            e.insert("Checksum-Algorithm".into(), json!("CRC32C"));
            e.insert("Checksum".into(), json!(hex(&crc.to_le_bytes())));
            out.push(Value::Object(e));
        }
    }
    if done != replaced.len() {
        let missing = replaced.iter().find(|r| !listed.contains(r.path.as_slice())).map(|r| r.path.as_slice());
        return Err(format!(
            "backup manifest: {} files stored as deltas are not in it, e.g. {}",
            replaced.len() - done,
            String::from_utf8_lossy(missing.unwrap_or_default())
        ));
    }
    *files = out;
    m.remove("Manifest-Checksum");
    serde_json::to_vec_pretty(&m).map_err(|e| format!("backup manifest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgpitr_repo::reader::Manifest;

    fn page(lsn: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; BLCKSZ as usize];
        p[..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut t = tar::file_header(name.as_bytes(), data.len() as u64).unwrap().to_vec();
        t.extend_from_slice(data);
        t.resize(t.len() + tar::padding(data.len() as u64) as usize, 0);
        t
    }

    #[test]
    fn only_blocks_written_since_the_parent_are_kept_in_parts() {
        // A relation of 2,500 blocks: every third written since 0/5000000,
        // one never written (zero), the rest older.
        let mut rel = Vec::new();
        let mut kept = Vec::new();
        for b in 0..2500u32 {
            let lsn = match b % 3 {
                0 => 0x600_0000 + u64::from(b),
                _ if b == 7 => 0,
                _ => 0x100_0000,
            };
            // The parent's copy is 2,400 blocks long: the rest is kept whole.
            if lsn >= 0x500_0000 || lsn == 0 || b >= 2400 {
                kept.push(b);
            }
            rel.extend_from_slice(&page(lsn, b as u8));
        }
        let mut archive = member("base/5/16384", &rel);
        archive.extend(member("base/5/16384_fsm", &page(0x100_0000, 1)));
        archive.extend(member("base/5/99999", &page(0x100_0000, 2)));
        archive.extend(member("PG_VERSION", b"15\n"));
        archive.extend([0u8; 2 * BLOCK]);
        let parent: HashMap<Vec<u8>, ParentFile> = [
            (&b"base/5/16384"[..], ParentFile::Whole { blocks: 2400 }),
            (b"base/5/16384_fsm", ParentFile::Whole { blocks: 1 }),
            (b"PG_VERSION", ParentFile::Whole { blocks: 0 }),
        ]
        .into_iter()
        .map(|(p, f)| (p.to_vec(), f))
        .collect();
        let mut f = DeltaFilter::new(Lsn(0x500_0000), Arc::new(parent), None);
        let mut out = Vec::new();
        // Fed in odd pieces: any chunking gives the same archive.
        for chunk in archive.chunks(3001) {
            f.feed(chunk, &mut out).unwrap();
        }
        f.finish().unwrap();
        assert_eq!(f.stats, DeltaStats { files: 1, blocks_seen: 2500, blocks_kept: kept.len() as u64 });
        let parts = &f.replaced[0].parts;
        assert_eq!(parts.len(), kept.len().div_ceil(PART_BLOCKS));
        assert_eq!(parts[0].0, b"base/5/PGPITR_DELTA.0.16384");

        // The output is a tar of the parts (each an increment of the whole
        // file's length) and the other files untouched.
        let whole: std::collections::HashMap<&[u8], Vec<u8>> = [
            (&b"base/5/16384_fsm"[..], page(0x100_0000, 1)),
            (b"base/5/99999", page(0x100_0000, 2)),
            (b"PG_VERSION", b"15\n".to_vec()),
        ]
        .into();
        let mut at = 0;
        let mut names = Vec::new();
        let mut got_blocks = Vec::new();
        while let Some(h) = tar::parse_header(out[at..at + BLOCK].try_into().unwrap()).unwrap() {
            let data = &out[at + BLOCK..at + BLOCK + h.size as usize];
            if h.path.starts_with(b"base/5/PGPITR_DELTA.") {
                let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
                assert_eq!((word(0), word(8)), (increment::MAGIC, 2500));
                let n = word(4) as usize;
                let blocks: Vec<u32> = (0..n).map(|i| word(12 + 4 * i)).collect();
                let first = increment::header_len(n as u32) as usize;
                let want = page(0x600_0000 + u64::from(blocks[0]), blocks[0] as u8);
                assert_eq!(&data[first..first + BLCKSZ as usize], &want[..]);
                let part = &parts[names.len()];
                assert_eq!((data.len() as u64, crc32c::crc32c(data)), (part.1, part.2));
                got_blocks.extend(blocks);
            } else {
                assert_eq!(data, &whole[h.path.as_slice()][..], "{:?} passes through", h.path);
            }
            names.push(h.path.clone());
            at += BLOCK + (h.size + tar::padding(h.size)) as usize;
        }
        assert_eq!(got_blocks, kept);
        assert_eq!(&names[names.len() - 3..], [&b"base/5/16384_fsm"[..], b"base/5/99999", b"PG_VERSION"]);

        // The manifest lists the parts instead of the file.
        let manifest = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "base/5/16384", "Size": 20480000, "Last-Modified": "2026-11-22 00:13:05 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "a02d1284" },
{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-11-22 00:13:05 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "01020304" }
],
"WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/6000028", "End-LSN": "0/6000100" } ],
"Manifest-Checksum": "00" }"#;
        let new = Manifest::parse(&rewrite_manifest(manifest, &f.replaced).unwrap()).unwrap();
        let paths: Vec<&[u8]> = new.files.iter().map(|f| f.path.as_slice()).collect();
        // In the file's place, in order.
        let want: Vec<&[u8]> = parts.iter().map(|p| p.0.as_slice()).chain([&b"PG_VERSION"[..]]).collect();
        assert_eq!(paths, want);
        let first = new.files.iter().find(|f| f.path == parts[0].0).unwrap();
        assert_eq!((first.size, first.crc32c), (parts[0].1, Some(parts[0].2)));
        assert_eq!(new.wal_ranges.len(), 1);
        assert!(rewrite_manifest(manifest, &[Replaced { path: b"base/5/1".to_vec(), parts: vec![] }]).is_err());
    }

    #[test]
    fn an_unchanged_file_is_one_empty_part() {
        let mut archive = member("PG_16_1/5/16390", &page(0x100, 0));
        archive.extend([0u8; 2 * BLOCK]);
        let parent: HashMap<Vec<u8>, ParentFile> =
            [(b"pg_tblspc/7/PG_16_1/5/16390".to_vec(), ParentFile::Increment)].into();
        let mut f = DeltaFilter::new(Lsn(0x500_0000), Arc::new(parent), Some(7));
        let mut out = Vec::new();
        f.feed(&archive, &mut out).unwrap();
        f.finish().unwrap();
        assert_eq!(f.replaced[0].path, b"pg_tblspc/7/PG_16_1/5/16390");
        assert_eq!(
            f.replaced[0].parts,
            [(b"pg_tblspc/7/PG_16_1/5/PGPITR_DELTA.0.16390".to_vec(), 12, f.replaced[0].parts[0].2)]
        );
        let h = tar::parse_header(out[..BLOCK].try_into().unwrap()).unwrap().unwrap();
        assert_eq!((h.path.as_slice(), h.size), (&b"PG_16_1/5/PGPITR_DELTA.0.16390"[..], 12));
        // Cut inside a file: an error, not a short archive.
        let mut g = DeltaFilter::new(Lsn(0), Arc::new(HashMap::new()), None);
        g.feed(&member("PG_VERSION", b"16\n")[..600], &mut Vec::new()).unwrap();
        assert!(g.finish().is_err());
        // And inside a header.
        let mut g = DeltaFilter::new(Lsn(0), Arc::new(HashMap::new()), None);
        g.feed(&member("PG_VERSION", b"16\n")[..100], &mut Vec::new()).unwrap();
        assert!(g.finish().unwrap_err().contains("header"));
    }

    #[test]
    fn a_database_made_again_since_the_parent_is_named() {
        let manifest = |v5: &str, v6: &str, label: &str| {
            format!(
                r#"{{ "PostgreSQL-Backup-Manifest-Version": 1, "Files": [
{{ "Path": "backup_label", "Size": 200, "Last-Modified": "{label}" }},
{{ "Path": "base/5/PG_VERSION", "Size": 3, "Last-Modified": "{v5}" }},
{{ "Path": "pg_tblspc/7/PG_16_1/6/PG_VERSION", "Size": 3, "Last-Modified": "{v6}" }},
{{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-01-03 00:00:00 GMT" }} ] }}"#
            )
        };
        let (jan1, jan2, jan3) = ("2026-01-01 00:00:00 GMT", "2026-01-02 00:00:00 GMT", "2026-01-03 00:00:00 GMT");
        let parent = manifest(jan1, jan1, "2026-01-01 12:00:00 GMT");
        let same = manifest(jan1, jan1, jan3);
        assert!(recreated_databases(parent.as_bytes(), same.as_bytes()).unwrap().is_empty());
        // Made again after the parent began: named.
        let again = manifest(jan1, jan2, jan3);
        assert_eq!(recreated_databases(parent.as_bytes(), again.as_bytes()).unwrap(), ["pg_tblspc/7/PG_16_1/6"]);
        // Other times from before the parent began (a standby's copy): not.
        let standby = manifest("2026-01-01 06:00:00 GMT", "2026-01-01 06:00:00 GMT", jan3);
        assert!(recreated_databases(parent.as_bytes(), standby.as_bytes()).unwrap().is_empty());
        assert!(recreated_databases(b"{}", again.as_bytes()).is_err());
        assert!(
            recreated_databases(manifest(jan1, jan1, jan1).replace("backup_label", "x").as_bytes(), again.as_bytes())
                .is_err()
        );
    }
}
