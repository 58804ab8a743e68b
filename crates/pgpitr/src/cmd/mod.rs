mod backup;
mod init;
mod list;
pub mod restore;
mod stream;
pub mod wal_fetch;

use crate::cli::{Cli, Command};

/// Runs one subcommand and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Init(args) => init::run(args).await,
        Command::Stream(args) => stream::run(args).await,
        Command::List(args) => list::run(args).await,
        Command::Backup(args) => backup::run(args, cli.global.log_format).await,
        Command::Restore(args) => restore::run(args).await,
        Command::WalFetch(args) => wal_fetch::run(args).await,
    }
}

/// Opens an initialised repository.
pub async fn open_repo(url: &str) -> anyhow::Result<pgpitr_repo::Repository> {
    let url = pgpitr_storage::RepoUrl::parse(url)?;
    let storage = pgpitr_storage::open(&url).await?;
    Ok(pgpitr_repo::Repository::open(storage).await?)
}
