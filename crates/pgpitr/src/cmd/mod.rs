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
pub mod wal_push;

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
        Command::WalPush(args) => wal_push::run(args).await,
        Command::Expire(args) => expire::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Key(cmd) => key::run(cmd).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pgpitr", &mut std::io::stdout());
            Ok(crate::exit::OK)
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Config(crate::cli::ConfigCommand::Show { command, json }) => {
            crate::config::show(&command, crate::config::layers(), json)
        }
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

/// `pgpitr man`: the page of the whole program on stdout, or every page
/// (the program's and each command's, `pgpitr-<command>.1`) into `dir`.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        return Ok(crate::exit::OK);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pages = vec![("pgpitr".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("pgpitr-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(crate::exit::OK)
}
