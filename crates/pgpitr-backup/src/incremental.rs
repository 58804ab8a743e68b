//! Choosing what a backup is incremental to, and how. PostgreSQL 17 and
//! later take incrementals natively: the parent's `backup_manifest` goes up
//! with `UPLOAD_MANIFEST`, and `BASE_BACKUP (INCREMENTAL)` then sends changed
//! relation files as `INCREMENTAL.<name>` (only the blocks the server's WAL
//! summaries say changed since the parent's start). Before 17, pgpitr keeps
//! a block delta of the whole backup itself (`delta.rs`).

use crate::delta::ParentFile;
use crate::{BackupError, BackupOptions, IncrementalMode};
use bytes::Bytes;
use pgpitr_pgwire::ReplicationConnection;
use pgpitr_repo::Repository;
use pgpitr_repo::backup::{BackupInfo, Incremental, IncrementalMethod};
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::chain::Backups;
use pgpitr_repo::reader::BackupReader;
use pgpitr_types::TimelineId;
use std::collections::HashMap;
use std::sync::Arc;

/// The backup a new one builds on, with its manifest as stored.
#[derive(Clone)]
pub(crate) struct Parent {
    pub info: BackupInfo,
    pub manifest: Bytes,
    pub method: IncrementalMethod,
    /// The files it holds, by their restored path (for a delta; empty for
    /// a native incremental).
    pub files: Arc<HashMap<Vec<u8>, ParentFile>>,
}

impl Parent {
    pub fn incremental(&self) -> Incremental {
        Incremental {
            parent: self.info.id.clone(),
            from_lsn: self.info.start_lsn,
            from_tli: self.info.timeline,
            method: self.method,
            chain_length: self.info.chain_length() + 1,
        }
    }
}

/// Why no incremental backup can be taken: an error when one was demanded,
/// a warning before a full backup otherwise.
fn refuse(opts: &BackupOptions, why: String) -> Result<Option<Parent>, BackupError> {
    match opts.incremental {
        IncrementalMode::Require(_) => Err(BackupError::Invalid(format!("--incremental: {why}"))),
        _ => {
            tracing::warn!("taking a full backup instead of an incremental one: {why}");
            Ok(None)
        }
    }
}

/// The parent for a backup of the server behind `conn` on timeline `tli`,
/// or `None` for a full backup.
pub(crate) async fn choose_parent(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    tli: TimelineId,
    opts: &BackupOptions,
) -> Result<Option<Parent>, BackupError> {
    let major = repo.major();
    let method = match opts.incremental {
        IncrementalMode::Off => return Ok(None),
        IncrementalMode::Prefer | IncrementalMode::Require(None) if major.native_incremental() => {
            IncrementalMethod::Native
        }
        IncrementalMode::Prefer | IncrementalMode::Require(None) => IncrementalMethod::Delta,
        IncrementalMode::Require(Some(m)) => m,
    };
    if method == IncrementalMethod::Native && !major.native_incremental() {
        return refuse(
            opts,
            format!(
                "PostgreSQL {major} cannot take native incremental backups (17 and later can); \
                 --incremental=delta (the default before 17) keeps a block delta instead"
            ),
        );
    }
    if conn.show("block_size").await? != "8192" {
        return refuse(opts, "the server's block size is not 8192 bytes, the only one pgpitr rebuilds".into());
    }
    if method == IncrementalMethod::Delta
        && conn.show("data_checksums").await? != "on"
        && conn.show("wal_log_hints").await? != "on"
    {
        return refuse(
            opts,
            "a block delta needs data_checksums or wal_log_hints on: without them hint bits, a heap page's \
             all-visible flag among them, change pages without a new LSN; set wal_log_hints = on (a restart)"
                .into(),
        );
    }
    if method == IncrementalMethod::Native && conn.show("summarize_wal").await? != "on" {
        return refuse(
            opts,
            "the server does not summarize its WAL: set summarize_wal = on (ALTER SYSTEM SET summarize_wal = on; \
             SELECT pg_reload_conf()), then take a full backup, which later incrementals build on"
                .into(),
        );
    }
    let cat = Catalog::for_planning(repo).await?;
    let Some(path) = cat.path(tli) else {
        return refuse(opts, format!("timeline {tli} has no history file in the repository"));
    };
    // The newest complete backup whose start this timeline's history holds.
    let Some(newest) = cat.points().iter().filter(|b| path.holds_backup(b)).max_by_key(|b| b.start_lsn) else {
        return refuse(
            opts,
            format!("no complete backup on the history of timeline {tli} to build on; take a full backup first"),
        );
    };
    let info = cat
        .info(&newest.id)
        .cloned()
        .ok_or_else(|| BackupError::Invalid(format!("backup {} vanished while choosing a parent", newest.id)))?;
    let sysid = repo.binding().system_identifier;
    if info.system_identifier != sysid {
        return Err(BackupError::Invalid(format!(
            "backup {} is of another cluster (system identifier {}, this server's is {sysid}); it cannot be a parent",
            info.id, info.system_identifier
        )));
    }
    // Its chain must hold, as a restore will check it.
    let all = Backups::new(cat.backups().iter().filter_map(|e| e.info.as_ref()));
    if let Err(e) = all.chain(&info) {
        return refuse(opts, format!("the newest backup's chain is broken: {e}"));
    }
    if info.chain_length() >= opts.max_chain {
        tracing::info!(
            parent = %info.id, chain = info.chain_length(), max = opts.max_chain,
            "the chain is as long as --max-chain allows: taking a full backup"
        );
        return Ok(None);
    }
    let reader = BackupReader::open(repo, &info).await.map_err(|e| BackupError::Invalid(e.to_string()))?;
    if let Some(m) = reader.manifest().system_identifier
        && m != sysid
    {
        return Err(BackupError::Invalid(format!(
            "backup {}'s manifest names system identifier {m}, this server's is {sysid}; it cannot be a parent",
            info.id
        )));
    }
    let files = match method {
        IncrementalMethod::Delta => crate::delta::parent_files(reader.manifest()),
        IncrementalMethod::Native => HashMap::new(), // the server compares with the manifest itself
    };
    let manifest = reader.raw_manifest().clone();
    Ok(Some(Parent { info, manifest, method, files: Arc::new(files) }))
}
