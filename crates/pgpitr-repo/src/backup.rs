//! Base backups in the repository: keys, metadata, listing, leftovers.
//!
//! ```text
//! backups/<ID>/in-progress.json      marker + heartbeat, written first, deleted last
//! backups/<ID>/<ARCHIVE>/<NNNNNN>    part NNNNNN of archive ARCHIVE ("base" or a
//!                                    tablespace OID); a container, empty summary,
//!                                    "LSN range" = byte range of the part in its archive
//!                                    stream: the tar (codec lz4 or none), or the server's
//!                                    lz4 frames of it (codec none; `compression: lz4`)
//! backups/<ID>/backup_manifest       the server's backup_manifest, in a container
//! backups/<ID>/backup.json           BackupInfo, written last: its presence = complete
//! ```
//!
//! A directory without `backup.json` is a backup that is running or was
//! interrupted; the heartbeat in its marker tells the two apart
//! ([`BackupStatus`]). Only complete backups count as restorable.

use crate::{RepoError, Result, u64_string};
use futures_util::{StreamExt, TryStreamExt};
use pgpitr_storage::{Storage, StorageError};
use pgpitr_types::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::time::Duration;

pub const PREFIX: &str = "backups/";
pub const MARKER: &str = "in-progress.json";
pub const INFO: &str = "backup.json";
pub const MANIFEST: &str = "backup_manifest";
/// The archive of the main data directory; tablespaces are named by OID.
pub const BASE_ARCHIVE: &str = "base";
/// A running backup refreshes its marker this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A marker not refreshed for this long belongs to an interrupted backup.
pub const STALE_AFTER: Duration = Duration::from_secs(300);
/// The newest `backup.json` format. 2 added `compression` and `tar_bytes`
/// to archives (absent in 1: a plain tar); 3, zstd (archives of compression
/// `zstd`, parts of container codec 3); 4, incremental backups
/// (`incremental`). Readers take every version up to this one and refuse
/// newer ones, before reading the rest.
pub const INFO_FORMAT_VERSION: u32 = 4;

/// The oldest format that describes a backup, so that a pgpitr that cannot
/// read it refuses it instead of misreading it.
pub fn format_version(zstd: bool, incremental: bool) -> u32 {
    match (incremental, zstd) {
        (true, _) => 4,
        (false, true) => 3,
        (false, false) => 2,
    }
}

/// A backup's ID: its start time `YYYYMMDDTHHMMSSZ` (UTC), with `-N`
/// appended when that second is taken. Orders by time, then by N.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackupId {
    stamp: String,
    seq: u32,
}

impl BackupId {
    /// The ID for a backup started at `t`; `seq` > 0 adds the `-N` suffix.
    pub fn new(t: jiff::Timestamp, seq: u32) -> BackupId {
        BackupId { stamp: t.strftime("%Y%m%dT%H%M%SZ").to_string(), seq }
    }

    /// Parses an ID as [`Self::new`] formats it; anything else is `None`.
    pub fn parse(s: &str) -> Option<BackupId> {
        let (stamp, seq) = match s.split_once('-') {
            None => (s, 0),
            Some((stamp, n)) => {
                if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (stamp, n.parse().ok().filter(|&n| n > 0)?)
            }
        };
        let b = stamp.as_bytes();
        let shape_ok = b.len() == 16
            && b[8] == b'T'
            && b[15] == b'Z'
            && b[..8].iter().chain(&b[9..15]).all(|c| c.is_ascii_digit());
        shape_ok.then(|| BackupId { stamp: stamp.to_string(), seq })
    }

    /// The same second with the next suffix.
    pub fn next(&self) -> BackupId {
        BackupId { stamp: self.stamp.clone(), seq: self.seq + 1 }
    }

    /// `backups/<ID>/`
    pub fn dir(&self) -> String {
        format!("{PREFIX}{self}/")
    }

    pub fn marker_key(&self) -> String {
        format!("{}{MARKER}", self.dir())
    }

    pub fn info_key(&self) -> String {
        format!("{}{INFO}", self.dir())
    }

    pub fn manifest_key(&self) -> String {
        format!("{}{MANIFEST}", self.dir())
    }

    /// Part `index` (from 0) of `archive`.
    pub fn part_key(&self, archive: &str, index: u32) -> String {
        format!("{}{archive}/{index:06}", self.dir())
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            0 => f.write_str(&self.stamp),
            n => write!(f, "{}-{n}", self.stamp),
        }
    }
}

impl Ord for BackupId {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.stamp, self.seq).cmp(&(&other.stamp, other.seq))
    }
}

impl PartialOrd for BackupId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The archive name and stream compression for a server archive file name:
/// `base.tar` → `base`, `16385.tar.lz4` → `16385` (lz4), `base.tar.zst`
/// → `base` (zstd). `None` for
/// anything else.
pub fn archive_name(server_name: &str) -> Option<(&str, ArchiveCompression)> {
    let (tar, compression) = if let Some(t) = server_name.strip_suffix(".lz4") {
        (t, ArchiveCompression::Lz4)
    } else if let Some(t) = server_name.strip_suffix(".zst") {
        (t, ArchiveCompression::Zstd)
    } else {
        (server_name, ArchiveCompression::None)
    };
    let stem = tar.strip_suffix(".tar")?;
    let valid = stem == BASE_ARCHIVE || (!stem.is_empty() && stem.parse::<u32>().is_ok_and(|o| o.to_string() == stem));
    valid.then_some((stem, compression))
}

/// How an archive's stream (its parts' raw bytes, concatenated) encodes the
/// tar. Independent of the containers' codec, which each part's header names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveCompression {
    /// The tar itself (format 1 backups have no field: this).
    #[default]
    None,
    /// LZ4 frames of the tar, compressed by the server (`COMPRESSION 'lz4'`).
    Lz4,
    /// zstd frames of the tar, compressed by the server (`COMPRESSION 'zstd'`).
    Zstd,
}

impl ArchiveCompression {
    pub fn is_none(&self) -> bool {
        *self == ArchiveCompression::None
    }
}

/// One stored part of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub index: u32,
    /// Bytes of the archive stream this part holds; parts follow each other.
    pub raw_len: u64,
    /// Size of the stored object (container).
    pub stored_len: u64,
    /// CRC-32 (crc32fast) of the raw bytes, as in the container header.
    pub crc: u32,
}

/// One tar archive of the backup: the data directory or a tablespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// `base`, or the tablespace OID as text.
    pub name: String,
    pub tablespace_oid: Option<u32>,
    /// The tablespace directory on the server.
    pub tablespace_location: Option<String>,
    pub parts: Vec<PartInfo>,
    /// Bytes of the archive stream: the parts' `raw_len`, summed.
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// What the stream is: the tar, or lz4 frames of it.
    #[serde(default, skip_serializing_if = "ArchiveCompression::is_none")]
    pub compression: ArchiveCompression,
    /// Size of the tar when the stream is compressed, as counted by the
    /// server's progress reports; `None` when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_bytes: Option<u64>,
}

impl ArchiveInfo {
    /// Size of the tar archive (uncompressed), as far as known.
    pub fn tar_size(&self) -> u64 {
        match self.compression {
            ArchiveCompression::None => self.raw_bytes,
            ArchiveCompression::Lz4 | ArchiveCompression::Zstd => self.tar_bytes.unwrap_or(self.raw_bytes),
        }
    }
}

/// The stored `backup_manifest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestInfo {
    /// Raw size in bytes.
    pub size: u64,
    /// CRC-32 (crc32fast) of the raw bytes.
    pub crc: u32,
}

/// A page checksum failure Postgres reported while sending the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksumFailure {
    /// Path relative to the data directory, when the server named it.
    pub file: Option<String>,
    /// The block, when the server named it.
    pub block: Option<u32>,
    /// The server's message.
    pub message: String,
}

/// Where the WAL from start to stop LSN came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalSource {
    /// Already stored, or stored by a running `pgpitr stream`.
    Repository,
    /// Fetched by the backup itself over its own replication connection.
    Fetched,
}

/// `backup.json`: everything known about a complete backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub format_version: u32,
    pub id: String,
    pub label: String,
    pub status: BackupStatus,
    pub timeline: TimelineId,
    /// Restoring needs WAL from here (the backup checkpoint's redo point)...
    pub start_lsn: Lsn,
    /// ...up to here, where the backup becomes consistent.
    pub stop_lsn: Lsn,
    /// RFC 3339, UTC.
    pub start_time: String,
    /// RFC 3339, UTC: when the server finished the backup.
    pub stop_time: String,
    pub pg_version_num: u32,
    /// A string: JSON readers lose precision above 2^53.
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    pub archives: Vec<ArchiveInfo>,
    pub manifest: ManifestInfo,
    /// Bytes of all tar archives, uncompressed ([`ArchiveInfo::tar_size`]).
    pub size_bytes: u64,
    /// Bytes stored: archive parts and manifest.
    pub stored_bytes: u64,
    /// Files listed in the manifest.
    pub file_count: u64,
    pub checksum_failures: Vec<ChecksumFailure>,
    pub wal_source: WalSource,
    /// How it was compressed: `server-lz4`, `client-lz4` or `none` (absent
    /// in format 1, where it was always `client-lz4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// `pgpitr <version>` that took it.
    pub pgpitr_version: String,
    /// A legal hold: no retention rule deletes it (`backup --keep-forever`,
    /// `backup hold`/`release`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_forever: bool,
    /// Set when it holds only what changed since another backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
}

/// What an incremental backup builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incremental {
    /// The backup it is incremental to, full or incremental itself.
    pub parent: String,
    /// The parent's start, which its `backup_label` names as `INCREMENTAL
    /// FROM LSN` and `INCREMENTAL FROM TLI`.
    pub from_lsn: Lsn,
    pub from_tli: TimelineId,
    pub method: IncrementalMethod,
    /// Backups a restore of it reads: itself, its parents and the full one.
    pub chain_length: u32,
}

/// How an incremental backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncrementalMethod {
    /// PostgreSQL 17+: `UPLOAD_MANIFEST`, then `BASE_BACKUP (INCREMENTAL)`.
    /// Changed relation files arrive as `INCREMENTAL.<name>`.
    Native,
    /// pgpitr's block delta (any major, the way for 14 to 16): the server
    /// sends everything; relation files the parent holds are stored as
    /// `PGPITR_DELTA.<k>.<name>`, the blocks with a page LSN at or past the
    /// parent's start (`pgpitr_repo::increment`).
    Delta,
}

impl IncrementalMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            IncrementalMethod::Native => "native",
            IncrementalMethod::Delta => "delta",
        }
    }
}

impl BackupInfo {
    /// The parent's ID, for an incremental backup.
    pub fn parent(&self) -> Option<&str> {
        self.incremental.as_ref().map(|i| i.parent.as_str())
    }

    /// Backups a restore of this one reads (1 for a full backup).
    pub fn chain_length(&self) -> u32 {
        self.incremental.as_ref().map_or(1, |i| i.chain_length)
    }

    pub fn backup_id(&self) -> Option<BackupId> {
        BackupId::parse(&self.id)
    }

    pub fn summary(&self) -> BackupSummary {
        BackupSummary {
            id: self.id.clone(),
            label: Some(self.label.clone()),
            timeline: Some(self.timeline),
            start_lsn: Some(self.start_lsn),
            stop_lsn: Some(self.stop_lsn),
            start_time: Some(self.start_time.clone()),
            stop_time: Some(self.stop_time.clone()),
            size_bytes: Some(self.size_bytes),
            stored_bytes: Some(self.stored_bytes),
            status: self.status,
            keep_forever: self.keep_forever,
            parent: self.parent().map(str::to_string),
        }
    }
}

/// `in-progress.json`: who runs the backup, and since when it was alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub id: String,
    pub label: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC; refreshed every [`HEARTBEAT_INTERVAL`].
    pub updated_at: String,
}

impl Marker {
    /// A marker for a backup starting now, on this host and process.
    pub fn new(id: &BackupId, label: &str, now: jiff::Timestamp) -> Marker {
        Marker {
            id: id.to_string(),
            label: label.to_string(),
            host: this_host(),
            pid: std::process::id(),
            started_at: now.to_string(),
            updated_at: now.to_string(),
        }
    }

    /// True when the backup is certainly not running any more: its
    /// heartbeat is older than `stale_after`, or its process was on this
    /// host and is gone.
    pub fn is_dead(&self, now: jiff::Timestamp, stale_after: Duration) -> bool {
        let stale = match self.updated_at.parse::<jiff::Timestamp>() {
            Ok(t) => now.duration_since(t) > jiff::SignedDuration::try_from(stale_after).unwrap_or_default(),
            Err(_) => true,
        };
        stale || (self.host == this_host() && !process_exists(self.pid))
    }
}

/// This machine's name, for markers ("unknown" when unreadable).
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Whether a process with this PID exists here. Without /proc this errs on
/// the side of "alive", which only delays cleanup until the heartbeat is stale.
fn process_exists(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// `backup.json` is present: data, manifest and WAL are durable.
    Complete,
    /// No `backup.json`, heartbeat alive.
    Running,
    /// No `backup.json`, and nobody is working on it: a leftover.
    Incomplete,
}

impl BackupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Complete => "complete",
            BackupStatus::Running => "running",
            BackupStatus::Incomplete => "incomplete",
        }
    }
}

/// One backup as `pgpitr list` shows it. Unknown fields of unfinished
/// backups are null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub label: Option<String>,
    pub timeline: Option<TimelineId>,
    pub start_lsn: Option<Lsn>,
    pub stop_lsn: Option<Lsn>,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    pub size_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub status: BackupStatus,
    /// Held: kept whatever the retention policy says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_forever: bool,
    /// The backup this incremental one builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// What one backup directory holds.
#[derive(Debug, Clone)]
pub struct BackupEntry {
    pub id: BackupId,
    pub info: Option<BackupInfo>,
    pub marker: Option<Marker>,
}

impl BackupEntry {
    pub fn status(&self, now: jiff::Timestamp, stale_after: Duration) -> BackupStatus {
        match (&self.info, &self.marker) {
            (Some(_), _) => BackupStatus::Complete,
            (None, Some(m)) if !m.is_dead(now, stale_after) => BackupStatus::Running,
            (None, _) => BackupStatus::Incomplete,
        }
    }

    pub fn summary(&self, now: jiff::Timestamp, stale_after: Duration) -> BackupSummary {
        if let Some(info) = &self.info {
            return info.summary();
        }
        BackupSummary {
            id: self.id.to_string(),
            label: self.marker.as_ref().map(|m| m.label.clone()),
            timeline: None,
            start_lsn: None,
            stop_lsn: None,
            start_time: self.marker.as_ref().map(|m| m.started_at.clone()),
            stop_time: None,
            size_bytes: None,
            stored_bytes: None,
            status: self.status(now, stale_after),
            keep_forever: false,
            parent: None,
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(storage: &dyn Storage, key: &str) -> Result<Option<T>> {
    let raw = match storage.get(key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&raw).map(Some).map_err(|e| RepoError::Corrupt {
        location: storage.describe(),
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Reads `backup.json` of one backup; `None` when it is not complete. A
/// newer format is refused by its version, not misread.
pub async fn read_info(storage: &dyn Storage, id: &BackupId) -> Result<Option<BackupInfo>> {
    #[derive(Deserialize)]
    struct Version {
        format_version: u32,
    }
    let key = id.info_key();
    let Some(v) = get_json::<Version>(storage, &key).await? else { return Ok(None) };
    if v.format_version > INFO_FORMAT_VERSION {
        let location = storage.describe();
        return Err(RepoError::NewerFormat { location, key, found: v.format_version, reads: INFO_FORMAT_VERSION });
    }
    get_json(storage, &key).await
}

/// Sets or clears a complete backup's legal hold, rewriting its
/// `backup.json` (one PUT: it stays complete throughout).
pub async fn set_hold(storage: &dyn Storage, id: &BackupId, hold: bool) -> Result<BackupInfo> {
    let Some(mut info) = read_info(storage, id).await? else {
        return Err(RepoError::NoSuchBackup { location: storage.describe(), id: id.to_string() });
    };
    info.keep_forever = hold;
    let body = serde_json::to_vec_pretty(&info).expect("backup.json serialises");
    storage.put(&id.info_key(), bytes::Bytes::from(body)).await?;
    // An expiry that deleted the backup meanwhile (backup.json first, then
    // its data) must not leave a held backup.json with nothing under it.
    let info_key = id.info_key();
    let rest = storage.list(&id.dir()).await?.into_iter().filter(|m| m.key != info_key).count();
    if rest == 0 {
        storage.delete(&info_key).await?;
        return Err(RepoError::NoSuchBackup { location: storage.describe(), id: id.to_string() });
    }
    Ok(info)
}

/// The IDs of every backup directory, oldest first. Foreign names are ignored.
pub async fn list_ids(storage: &dyn Storage) -> Result<Vec<BackupId>> {
    let mut ids: Vec<BackupId> = storage
        .list_dirs(PREFIX)
        .await?
        .iter()
        .filter_map(|d| BackupId::parse(d.strip_prefix(PREFIX)?.strip_suffix('/')?))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Every backup directory with its metadata, oldest first: two small reads
/// per backup (never a listing of the parts).
pub async fn scan(storage: &dyn Storage) -> Result<Vec<BackupEntry>> {
    const CONCURRENCY: usize = 8;
    let ids = list_ids(storage).await?;
    futures_util::stream::iter(ids)
        .map(|id| async move {
            let info: Option<BackupInfo> = read_info(storage, &id).await?;
            // A complete backup's stray marker (crash before its deletion) says nothing.
            let marker = if info.is_none() {
                // A half-written marker of a crashed backup is garbage, not corruption.
                get_json::<Marker>(storage, &id.marker_key()).await.unwrap_or_else(|e| {
                    tracing::debug!(backup = %id, "unreadable marker: {e}");
                    None
                })
            } else {
                None
            };
            Ok::<_, RepoError>(BackupEntry { id, info, marker })
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// Every backup, oldest first, as `pgpitr list` shows them.
pub async fn list_backups(storage: &dyn Storage) -> Result<Vec<BackupSummary>> {
    let now = jiff::Timestamp::now();
    Ok(scan(storage).await?.iter().map(|e| e.summary(now, STALE_AFTER)).collect())
}

/// Deletes everything under a backup's directory, the marker last, so that
/// a crash half-way still leaves a recognisable leftover. Returns how many
/// objects were deleted.
pub async fn delete_backup(storage: &dyn Storage, id: &BackupId) -> Result<usize, StorageError> {
    let marker = id.marker_key();
    let keys: Vec<String> = storage.list(&id.dir()).await?.into_iter().map(|m| m.key).collect();
    let total = keys.len();
    let (markers, rest): (Vec<String>, Vec<String>) = keys.into_iter().partition(|k| *k == marker);
    // Delete the metadata before the data it describes.
    let info = id.info_key();
    if rest.contains(&info) {
        storage.delete(&info).await?;
    }
    let data: Vec<String> = rest.into_iter().filter(|k| *k != info).collect();
    for chunk in data.chunks(1000) {
        storage.delete_many(chunk).await?;
    }
    if !markers.is_empty() {
        storage.delete(&marker).await?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort() {
        let t: jiff::Timestamp = "2026-03-02T10:11:12.5Z".parse().unwrap();
        let a = BackupId::new(t, 0);
        assert_eq!(a.to_string(), "20260302T101112Z");
        let b = a.next();
        assert_eq!(b.to_string(), "20260302T101112Z-1");
        let mut many: Vec<BackupId> = (0..12).map(|n| BackupId::new(t, n)).collect();
        many.reverse();
        many.sort();
        assert_eq!(many[2].to_string(), "20260302T101112Z-2");
        assert_eq!(many[11].to_string(), "20260302T101112Z-11");
        for id in &many {
            assert_eq!(BackupId::parse(&id.to_string()).as_ref(), Some(id));
        }
        for bad in [
            "",
            "x",
            "20260302T101112",
            "20260302X101112Z",
            "20260302T101112Z-",
            "20260302T101112Z-0",
            "20260302T101112Z-01",
            "2026030aT101112Z",
        ] {
            assert_eq!(BackupId::parse(bad), None, "{bad}");
        }
        assert_eq!(a.part_key("base", 7), "backups/20260302T101112Z/base/000007");
        assert_eq!(b.info_key(), "backups/20260302T101112Z-1/backup.json");
    }

    #[test]
    fn archive_names() {
        assert_eq!(archive_name("base.tar"), Some(("base", ArchiveCompression::None)));
        assert_eq!(archive_name("16385.tar"), Some(("16385", ArchiveCompression::None)));
        assert_eq!(archive_name("base.tar.lz4"), Some(("base", ArchiveCompression::Lz4)));
        assert_eq!(archive_name("16385.tar.lz4"), Some(("16385", ArchiveCompression::Lz4)));
        assert_eq!(archive_name("base.tar.zst"), Some(("base", ArchiveCompression::Zstd)));
        for bad in [
            "base.tar.gz",
            "base.lz4",
            "x.tar",
            ".tar",
            "016385.tar",
            "base",
            "../base.tar",
            "base.tar.lz4.lz4",
            "base.tar.zst.lz4",
        ] {
            assert_eq!(archive_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_1_archives_read_as_plain_tars() {
        let v1 = r#"{"name":"base","tablespace_oid":null,"tablespace_location":null,
            "parts":[{"index":0,"raw_len":10,"stored_len":8,"crc":1}],"raw_bytes":10,"stored_bytes":8}"#;
        let a: ArchiveInfo = serde_json::from_str(v1).unwrap();
        assert_eq!((a.compression, a.tar_bytes, a.tar_size()), (ArchiveCompression::None, None, 10));
        // Plain archives are written as format 1 wrote them.
        let back = serde_json::to_value(&a).unwrap();
        assert!(back.get("compression").is_none() && back.get("tar_bytes").is_none(), "{back}");
        let lz4 = ArchiveInfo { compression: ArchiveCompression::Lz4, tar_bytes: Some(40), ..a };
        let v = serde_json::to_value(&lz4).unwrap();
        assert_eq!((v["compression"].as_str(), v["tar_bytes"].as_u64()), (Some("lz4"), Some(40)));
        assert_eq!(serde_json::from_value::<ArchiveInfo>(v).unwrap().tar_size(), 40);
    }

    fn info(id: &BackupId, stop_time: &str) -> BackupInfo {
        BackupInfo {
            format_version: INFO_FORMAT_VERSION,
            id: id.to_string(),
            label: "l".into(),
            status: BackupStatus::Complete,
            timeline: TimelineId(1),
            start_lsn: Lsn(0x100_0028),
            stop_lsn: Lsn(0x100_0100),
            start_time: stop_time.into(),
            stop_time: stop_time.into(),
            pg_version_num: 150018,
            system_identifier: 7_000_000_000_000_000_001,
            archives: vec![],
            manifest: ManifestInfo { size: 1, crc: 2 },
            size_bytes: 10,
            stored_bytes: 5,
            file_count: 1,
            checksum_failures: vec![],
            wal_source: WalSource::Fetched,
            compression: Some("server-lz4".into()),
            pgpitr_version: "pgpitr test".into(),
            keep_forever: false,
            incremental: None,
        }
    }

    #[tokio::test]
    async fn scan_tells_complete_running_and_leftover_apart() {
        use bytes::Bytes;
        let dir = tempfile::tempdir().unwrap();
        let storage = pgpitr_storage::LocalStorage::new(dir.path());
        let now = jiff::Timestamp::now();
        let t = |s: i64| now - jiff::SignedDuration::from_secs(s);
        let put = |k: String, v: Vec<u8>| {
            let storage = &storage;
            async move { storage.put(&k, Bytes::from(v)).await.unwrap() }
        };
        // An old complete backup, a newer one, a running and a dead leftover.
        let (old, new) = (BackupId::new(t(7200), 0), BackupId::new(t(3600), 0));
        let (running, dead) = (BackupId::new(t(60), 0), BackupId::new(t(1200), 0));
        for (id, stop) in [(&old, t(7100)), (&new, t(3500))] {
            put(id.part_key("base", 0), vec![1; 10]).await;
            put(id.info_key(), serde_json::to_vec(&info(id, &stop.to_string())).unwrap()).await;
        }
        let mut alive = Marker::new(&running, "r", t(60));
        alive.updated_at = t(10).to_string();
        let mut gone = Marker::new(&dead, "d", t(1200));
        gone.host = "elsewhere".into();
        gone.updated_at = t(900).to_string();
        for (id, m) in [(&running, &alive), (&dead, &gone)] {
            put(id.part_key("base", 0), vec![1; 10]).await;
            put(id.part_key("16385", 0), vec![1; 10]).await;
            put(id.marker_key(), serde_json::to_vec(m).unwrap()).await;
        }
        put("backups/not-a-backup/x".into(), vec![0]).await;

        let list = list_backups(&storage).await.unwrap();
        let got: Vec<(String, BackupStatus)> = list.iter().map(|b| (b.id.clone(), b.status)).collect();
        assert_eq!(
            got,
            vec![
                (old.to_string(), BackupStatus::Complete),
                (new.to_string(), BackupStatus::Complete),
                (dead.to_string(), BackupStatus::Incomplete),
                (running.to_string(), BackupStatus::Running),
            ]
        );
        assert_eq!(list[2].label.as_deref(), Some("d"));
        assert_eq!(list[2].stop_lsn, None);
        let json = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(json["stop_lsn"], "0/1000100");
        assert_eq!(json["status"], "complete");

        assert_eq!(delete_backup(&storage, &dead).await.unwrap(), 3);
        assert_eq!(list_ids(&storage).await.unwrap(), vec![old.clone(), new, running]);
        assert_eq!(read_info(&storage, &old).await.unwrap().unwrap().system_identifier, 7_000_000_000_000_000_001);
        let raw = storage.get(&old.info_key()).await.unwrap();
        assert!(std::str::from_utf8(&raw).unwrap().contains("\"system_identifier\":\"7000000000000000001\""));
    }

    #[test]
    fn markers_go_stale() {
        let t0: jiff::Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        let id = BackupId::new(t0, 0);
        let mut m = Marker::new(&id, "l", t0);
        // Our own process is alive: only age makes it stale.
        assert!(!m.is_dead(t0 + jiff::SignedDuration::from_secs(299), STALE_AFTER));
        assert!(m.is_dead(t0 + jiff::SignedDuration::from_secs(301), STALE_AFTER));
        m.pid = u32::MAX; // no such process on this host
        assert!(m.is_dead(t0, STALE_AFTER));
        m.host = "elsewhere".into();
        assert!(!m.is_dead(t0, STALE_AFTER));
        m.updated_at = "garbage".into();
        assert!(m.is_dead(t0, STALE_AFTER));
    }
}
