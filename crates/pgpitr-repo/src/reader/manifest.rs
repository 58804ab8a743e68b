//! The server's `backup_manifest` (version 1; version 2 from PostgreSQL 17
//! adds the system identifier): the files with their sizes and checksums,
//! and the WAL range the backup needs.

use pgpitr_types::{Lsn, TimelineId};
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Relative to the data directory; tablespace files are under
    /// `pg_tblspc/<oid>/`. Raw bytes, since file names need not be UTF-8.
    pub path: Vec<u8>,
    pub size: u64,
    /// CRC-32C, when the manifest uses that algorithm (pgpitr asks for it).
    /// The server writes the value's bytes in its own byte order; this is
    /// the little-endian reading (see [`ManifestFile::crc32c_matches`]).
    pub crc32c: Option<u32>,
}

impl ManifestFile {
    /// Whether `crc` is the manifest's CRC-32C, written by a server of
    /// either byte order.
    pub fn crc32c_matches(&self, crc: u32) -> bool {
        self.crc32c.is_none_or(|c| c == crc || c.swap_bytes() == crc)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub tli: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// 1, or 2 (which names the cluster).
    pub version: u32,
    /// The cluster's system identifier (version 2).
    pub system_identifier: Option<u64>,
    pub files: Vec<ManifestFile>,
    pub wal_ranges: Vec<WalRange>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<RawRange>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(rename = "Timeline")]
    tli: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl Manifest {
    pub fn parse(raw: &[u8]) -> Result<Manifest, String> {
        let m: RawManifest = serde_json::from_slice(raw).map_err(|e| format!("not a backup manifest: {e}"))?;
        match (m.version, m.system_identifier) {
            (1, None) | (2, Some(_)) => {}
            (2, None) => return Err("version 2 without a System-Identifier".to_string()),
            (v, _) => return Err(format!("unsupported backup manifest version {v}")),
        }
        let mut files = Vec::with_capacity(m.files.len());
        for f in m.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p.into_bytes(),
                (None, Some(e)) => unhex(&e).ok_or_else(|| format!("bad Encoded-Path {e:?}"))?,
                (None, None) => return Err("a file entry has no path".to_string()),
            };
            let crc32c = match (f.algorithm.as_deref(), f.checksum) {
                (Some("CRC32C"), Some(c)) => {
                    let bytes: [u8; 4] = unhex(&c)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| format!("bad CRC32C {c:?} for {}", String::from_utf8_lossy(&path)))?;
                    Some(u32::from_le_bytes(bytes))
                }
                _ => None,
            };
            files.push(ManifestFile { path, size: f.size, crc32c });
        }
        let mut wal_ranges = Vec::with_capacity(m.wal_ranges.len());
        for r in m.wal_ranges {
            let bad = |what: &str, v: &str| format!("bad {what} {v:?} in WAL-Ranges");
            wal_ranges.push(WalRange {
                tli: TimelineId::new(r.tli).map_err(|_| bad("timeline", &r.tli.to_string()))?,
                start: r.start.parse().map_err(|_| bad("Start-LSN", &r.start))?,
                end: r.end.parse().map_err(|_| bad("End-LSN", &r.end))?,
            });
        }
        Ok(Manifest { version: m.version, system_identifier: m.system_identifier, files, wal_ranges })
    }

    /// The files by path.
    pub fn by_path(&self) -> HashMap<&[u8], &ManifestFile> {
        self.files.iter().map(|f| (f.path.as_slice(), f)).collect()
    }

    /// Where the backup ends: the last WAL range's end and timeline.
    pub fn stop(&self) -> Option<(Lsn, TimelineId)> {
        self.wal_ranges.last().map(|r| (r.end, r.tli))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_2_names_the_cluster() {
        let v2 = r#"{ "PostgreSQL-Backup-Manifest-Version": 2,
"System-Identifier": 7716159242272615613,
"Files": [ { "Path": "PG_VERSION", "Size": 3, "Checksum-Algorithm": "CRC32C", "Checksum": "01020304" } ],
"WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/02000028", "End-LSN": "0/02000120" } ],
"Manifest-Checksum": "00" }"#;
        let m = Manifest::parse(v2.as_bytes()).unwrap();
        assert_eq!((m.version, m.system_identifier), (2, Some(7716159242272615613)));
        assert_eq!(m.stop(), Some((Lsn(0x2000120), TimelineId(1))), "zero-padded LSNs read");
        let no_id = v2.replace("\"System-Identifier\": 7716159242272615613,", "");
        assert!(Manifest::parse(no_id.as_bytes()).unwrap_err().contains("System-Identifier"));
        let v3 = v2.replace("Version\": 2", "Version\": 3");
        assert!(Manifest::parse(v3.as_bytes()).unwrap_err().contains("version 3"));
    }

    const SAMPLE: &str = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2026-11-22 00:13:05 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "a02d1284" },
{ "Encoded-Path": "6261642f6e616d65ff", "Size": 0, "Last-Modified": "2026-11-22 00:13:05 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "00000000" },
{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2026-11-22 00:13:05 GMT" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "3f10279ca77416de28280f26386c6fc433b91a86d3eaa7f26bde81e61dfd0535"}
"#;

    #[test]
    fn parses_a_real_manifest() {
        let m = Manifest::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(m.files.len(), 3);
        assert_eq!(m.files[0], ManifestFile { path: b"backup_label".to_vec(), size: 225, crc32c: Some(0x84122da0) });
        assert!(m.files[0].crc32c_matches(0x84122da0) && m.files[0].crc32c_matches(0xa02d1284));
        assert!(!m.files[0].crc32c_matches(0x84122da1));
        assert!(m.files[2].crc32c_matches(7), "no checksum: nothing to compare");
        assert_eq!(m.files[1].path, b"bad/name\xff");
        assert_eq!(m.files[2].crc32c, None);
        assert_eq!(m.stop(), Some((Lsn(0x2000100), TimelineId(1))));
        assert_eq!(m.wal_ranges[0].start, Lsn(0x2000028));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "{}", "[1]", r#"{"PostgreSQL-Backup-Manifest-Version": 2, "Files": []}"#] {
            assert!(Manifest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let odd = SAMPLE.replace("6261642f6e616d65ff", "626");
        assert!(Manifest::parse(odd.as_bytes()).unwrap_err().contains("Encoded-Path"));
    }
}
