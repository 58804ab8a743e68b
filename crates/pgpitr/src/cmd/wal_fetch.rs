//! `pgpitr wal-fetch`, PostgreSQL's `restore_command`.

use crate::cli::RepoOpts;
use clap::Args;
use pgpitr_restore::walfetch::{self, FetchError, FetchRequest, Fetched};
use pgpitr_storage::RepoUrl;
use std::path::PathBuf;

fn parse_lsn(s: &str) -> Result<pgpitr_types::Lsn, String> {
    s.parse().map_err(|e: pgpitr_types::ParseError| e.to_string())
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// A private directory where the next segments are prefetched in the
    /// background (`pgpitr restore` uses <pgdata>/pg_wal/pgpitr_spool).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Segments to keep prefetched in --spool (0: none).
    #[arg(long, default_value_t = walfetch::DEFAULT_PREFETCH, value_name = "N")]
    pub prefetch: usize,
    /// A segment missing past the one holding this LSN is the end of WAL,
    /// not a gap (restores to a target set it to the plan's end).
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    pub until: Option<pgpitr_types::Lsn>,
    /// Run as the spool's prefetcher (started by wal-fetch itself).
    #[arg(long, hide = true, requires = "spool")]
    pub prefetch_daemon: bool,
    /// The file PostgreSQL asks for (%f).
    #[arg(required_unless_present = "prefetch_daemon")]
    pub walfile: Option<String>,
    /// Where to put it (%p).
    #[arg(required_unless_present = "prefetch_daemon")]
    pub dest: Option<PathBuf>,
}

/// Serves a spooled segment before anything else is built (runtime,
/// repository, S3 client): Postgres waits for every call. `None` when the
/// spool cannot serve it; [`run`] then fetches it from the repository.
pub fn fast_path(args: &WalFetchArgs) -> Option<u8> {
    if args.prefetch_daemon {
        return None;
    }
    let (Some(name), Some(dest), Some(spool)) = (&args.walfile, &args.dest, &args.spool) else {
        return None;
    };
    let req = FetchRequest {
        repo: RepoUrl::parse(&args.repo.repo).ok()?,
        name: name.clone(),
        dest: dest.clone(),
        spool: Some(spool.clone()),
        prefetch: args.prefetch,
        until: args.until,
    };
    let how = walfetch::serve_from_spool(&req)?;
    tracing::debug!(file = %name, from = ?how, "served");
    Some(crate::exit::OK)
}

pub async fn run(args: WalFetchArgs) -> anyhow::Result<u8> {
    // Exit 1 tells Postgres "no such file", which may end recovery: every
    // other failure must use a code Postgres aborts on.
    let fail = |msg: String| {
        eprintln!("pgpitr: error: {}", msg.replace('\n', " "));
        Ok(crate::exit::STORAGE)
    };
    let repo = match RepoUrl::parse(&args.repo.repo) {
        Ok(u) => u,
        Err(e) => return fail(e.to_string()),
    };
    if args.prefetch_daemon {
        if let Some(spool) = &args.spool
            && let Err(e) = walfetch::prefetch_daemon(&repo, spool, args.prefetch).await
        {
            tracing::debug!("prefetcher stopped: {e}");
        }
        return Ok(crate::exit::OK);
    }
    let (Some(name), Some(dest)) = (args.walfile, args.dest) else {
        return fail("wal-fetch needs the WAL file name and the destination (%f %p)".into());
    };
    let req =
        FetchRequest { repo, name: name.clone(), dest, spool: args.spool, prefetch: args.prefetch, until: args.until };
    // The spool was tried first, by `fast_path`.
    match walfetch::fetch_from_repository(&req).await {
        Ok(Fetched::NotFound) => {
            tracing::debug!(file = %name, "not in the repository");
            Ok(crate::exit::FAILURE)
        }
        Ok(how) => {
            tracing::debug!(file = %name, from = ?how, "served");
            Ok(crate::exit::OK)
        }
        Err(FetchError::Usage(m)) => fail(format!("wal-fetch {name}: {m}")),
        Err(FetchError::Storage(m)) => fail(format!("wal-fetch {name}: {m}")),
    }
}
