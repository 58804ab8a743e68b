mod init;
mod list;
mod stream;

use crate::cli::{Cli, Command};

/// Runs one subcommand and returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Init(args) => init::run(args).await,
        Command::Stream(args) => stream::run(args).await,
        Command::List(args) => list::run(args).await,
    }
}

/// Opens an initialised repository.
pub async fn open_repo(url: &str) -> anyhow::Result<pgpitr_repo::Repository> {
    let url = pgpitr_storage::RepoUrl::parse(url)?;
    let storage = pgpitr_storage::open(&url).await?;
    Ok(pgpitr_repo::Repository::open(storage).await?)
}
