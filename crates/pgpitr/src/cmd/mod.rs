mod backup;
pub mod check;
pub mod copy;
pub mod drill;
mod expire;
mod init;
mod key;
mod list;
mod migrate;
pub mod restore;
mod stream;
mod verify;
pub mod wal_fetch;

use crate::cli::{Cli, Command};

/// Runs one subcommand and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Init(args) => init::run(args).await,
        Command::Stream(args) => stream::run(args, cli.global.log_format).await,
        Command::List(args) => list::run(args).await,
        Command::Backup(args) => backup::run(args, cli.global.log_format).await,
        Command::Restore(args) => restore::run(args).await,
        Command::Drill(args) => drill::run(args).await,
        Command::Copy(args) => copy::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::WalFetch(args) => wal_fetch::run(args).await,
        Command::Expire(args) => expire::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Key(cmd) => key::run(cmd).await,
    }
}

/// Opens an initialised repository.
pub async fn open_repo(url: &str, access: pgpitr_repo::Access) -> anyhow::Result<pgpitr_repo::Repository> {
    let url = pgpitr_storage::RepoUrl::parse(url)?;
    Ok(pgpitr_repo::Repository::open_url(&url, access).await?)
}

/// Checks the server, opens the storage and binds the repository to the
/// server's cluster (initialising an empty one), refusing another cluster's.
/// `data_keys`: see [`pgpitr_repo::Repository::bind`].
pub async fn bind_repo(
    url: &pgpitr_storage::RepoUrl,
    cfg: &pgpitr_pgwire::ConnConfig,
    data_keys: Option<pgpitr_repo::DataKeySpan>,
) -> anyhow::Result<(pgpitr_repo::Repository, pgpitr_repo::InitOutcome)> {
    let (probe, identity) = crate::conn::connect(cfg).await?;
    // An idle walsender would show up in pg_stat_replication under our name.
    probe.close().await;
    let (repo, outcome) = pgpitr_repo::Repository::bind(url, &identity, data_keys).await?;
    if outcome == pgpitr_repo::InitOutcome::Created {
        tracing::info!(repo = %repo.location(), "initialised the repository for this cluster");
    }
    Ok((repo, outcome))
}
