//! `pgpitr migrate`: move a format-1 repository to today's layout.

use crate::cli::MigrateArgs;

pub async fn run(args: MigrateArgs) -> anyhow::Result<u8> {
    let url = pgpitr_storage::RepoUrl::parse(&args.repo.repo)?;
    let storage = pgpitr_repo::connect(&url, pgpitr_repo::Access::Write).await?;
    let location = storage.describe();
    let done = pgpitr_repo::migrate::migrate(storage).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else if done.from_format == pgpitr_repo::FORMAT_VERSION && done.deleted == 0 {
        println!("{location} already has format {}: nothing to do", pgpitr_repo::FORMAT_VERSION);
    } else {
        println!(
            "{location}: format {} -> {}: {} objects copied ({} were already), {} old keys deleted",
            done.from_format,
            pgpitr_repo::FORMAT_VERSION,
            done.copied,
            done.already_copied,
            done.deleted
        );
    }
    Ok(crate::exit::OK)
}
