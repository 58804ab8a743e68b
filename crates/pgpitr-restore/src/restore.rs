//! `pgpitr restore`: plan, extract the backup, write the recovery settings.

use crate::chain;
use crate::conf::{self, RecoveryConf};
use crate::datadir::ExtractOptions;
use crate::plan::{self, Plan, PlanRequest};
use crate::target::{TargetAction, format_time};
use crate::walfetch;
use pgpitr_repo::Repository;
use pgpitr_repo::catalog::Catalog;
use pgpitr_repo::reader::{ReadError, ReadProgress};
use pgpitr_storage::RepoUrl;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where prefetched WAL waits, inside `pg_wal` so that a spooled segment
/// reaches `%p` by a rename, and base backups of the restored cluster skip it.
pub const SPOOL_DIR: &str = "pg_wal/pgpitr_spool";

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub repo_url: RepoUrl,
    pub pgdata: PathBuf,
    pub request: PlanRequest,
    pub action: TargetAction,
    pub tablespace_map: Vec<(PathBuf, PathBuf)>,
    /// The binary `restore_command` calls (this one).
    pub exe: PathBuf,
    pub parallelism: usize,
    /// Counters of the backup's read, for whoever shows progress.
    pub progress: Arc<ReadProgress>,
    /// Plan only.
    pub dry_run: bool,
    /// Start the WAL prefetcher before returning, so that the first
    /// segments are spooled when recovery begins. Only for a server started
    /// right away by this user (`--start`): spooled files are this user's.
    pub prefetch_wal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Repo(#[from] pgpitr_repo::RepoError),
    #[error(transparent)]
    Storage(#[from] pgpitr_storage::StorageError),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl RestoreError {
    /// What a listing that is not a snapshot can cause while a stream
    /// merges pieces: a listed object gone when read, or a gap where a
    /// merged piece was made and its inputs deleted during the listing. A
    /// new listing settles it (see `pgpitr_repo::relisting`); a real gap
    /// stays.
    pub fn is_not_found(&self) -> bool {
        match self {
            RestoreError::Plan(plan::PlanError::Repo(e)) | RestoreError::Repo(e) => e.is_not_found(),
            RestoreError::Plan(plan::PlanError::Gap(_)) => true,
            RestoreError::Storage(e) => e.is_not_found(),
            _ => false,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub plan: Plan,
    pub pgdata: PathBuf,
    pub restore_command: String,
    pub files: u64,
    pub bytes: u64,
    pub plan_secs: f64,
    pub download_secs: f64,
}

/// Refuses a data directory that exists and is not an empty directory.
pub fn check_target_dir(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => {
                // Say whose data directory it is: often another major's, left
                // by an upgrade.
                let held = std::fs::read_to_string(dir.join("PG_VERSION"))
                    .ok()
                    .map(|v| v.trim().to_string())
                    .filter(|v| {
                        !v.is_empty() && v.len() < 16 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                    })
                    .map(|v| format!(" (it holds a PostgreSQL {v} data directory)"))
                    .unwrap_or_default();
                Err(RestoreError::Invalid(format!(
                    "--pgdata {} is not empty{held}; restore into an empty or new directory",
                    dir.display()
                )))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::Io { path: dir.display().to_string(), source: e }),
    }
}

/// The catalog for planning: backups and histories; the plan lists the WAL
/// it needs as it goes.
async fn load_catalog(repo: &Repository) -> Result<Catalog, RestoreError> {
    Ok(Catalog::for_planning(repo).await?)
}

/// Plans, then (unless a dry run) extracts and configures recovery.
pub async fn restore(repo: &Repository, opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    check_target_dir(&opts.pgdata)?;
    for (_, new) in &opts.tablespace_map {
        check_target_dir(new)?;
    }
    let (cat, plan) = pgpitr_repo::relisting(RestoreError::is_not_found, || async {
        let mut cat = load_catalog(repo).await?;
        let plan = plan::plan(&mut cat, &opts.request).await?;
        Ok((cat, plan))
    })
    .await?;
    let spool = opts.pgdata.join(SPOOL_DIR);
    // With a target, recovery reads no WAL past the plan's end. Only when
    // it promotes there: a paused or shut-down server may be sent further
    // by hand, with this restore_command still in place.
    let until =
        (plan.recovery != plan::RecoveryTarget::None && opts.action == TargetAction::Promote).then_some(plan.wal_end);
    let restore_command = conf::restore_command(&opts.exe, &opts.repo_url.to_string(), Some(&spool), until)
        .map_err(RestoreError::Invalid)?;
    let plan_secs = t0.elapsed().as_secs_f64();
    let mut out = Restored {
        plan: plan.clone(),
        pgdata: opts.pgdata.clone(),
        restore_command: restore_command.clone(),
        files: 0,
        bytes: 0,
        plan_secs,
        download_secs: 0.0,
    };
    if opts.dry_run {
        return Ok(out);
    }
    let chain = plan
        .chain
        .iter()
        .map(|id| {
            cat.info(id).cloned().ok_or_else(|| RestoreError::Invalid(format!("backup {id} vanished while planning")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    tracing::info!(
        backup = %plan.backup.id, chain = %plan.chain.join(" <- "), pgdata = %opts.pgdata.display(),
        "extracting the backup"
    );
    let t1 = Instant::now();
    let eopts = ExtractOptions { parallelism: opts.parallelism, fsync: true, progress: opts.progress.clone() };
    let stats = chain::extract_chain(repo, &chain, &opts.pgdata, &opts.tablespace_map, &eopts).await?;
    out.download_secs = t1.elapsed().as_secs_f64();
    out.files = stats.read.files;
    out.bytes = stats.read.bytes;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spool)
        .map_err(|e| RestoreError::Io { path: spool.display().to_string(), source: e })?;
    if opts.prefetch_wal {
        // Recovery starts with the segment holding the backup's start.
        let seg = repo.seg_size();
        if let Some(&(tli, from, _)) = plan.path.needed(seg, plan.backup.start_lsn, plan.wal_end).first() {
            walfetch::prefetch_ahead(&opts.exe, &opts.repo_url, &spool, seg, tli, from.segment_number(seg));
        }
    }
    let c = RecoveryConf {
        restore_command,
        target: plan.recovery.clone(),
        timeline: plan.timeline,
        action: opts.action,
        comment: format!(
            "pgpitr restore at {}: backup {}, target {}, timeline {}",
            format_time(jiff::Timestamp::now().as_microsecond()),
            plan.backup.id,
            opts.request.target,
            plan.timeline
        ),
    };
    conf::write(&opts.pgdata, &c)
        .map_err(|e| RestoreError::Io { path: opts.pgdata.display().to_string(), source: e })?;
    Ok(out)
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_must_be_empty_or_missing() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_target_dir(&d.path().join("new")).is_ok());
        assert!(check_target_dir(d.path()).is_ok());
        std::fs::write(d.path().join("PG_VERSION"), "16\n").unwrap();
        let e = check_target_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("is not empty (it holds a PostgreSQL 16 data directory)"), "{e}");
        assert!(check_target_dir(&d.path().join("PG_VERSION")).is_err());
    }
}
