//! `pgpitr copy`: bring a second repository (another region) up to date.

use clap::Args;
use indicatif::HumanBytes;
use pgpitr_storage::RepoUrl;

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The repository to copy from.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The repository to copy to: empty, or a copy of the same cluster.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Backup parts copied at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Print what was copied as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CopyArgs) -> anyhow::Result<u8> {
    let from_url = RepoUrl::parse(&args.from)?;
    let to_url = RepoUrl::parse(&args.to)?;
    let from = pgpitr_repo::connect(&from_url, pgpitr_repo::Access::Read).await?;
    let to = pgpitr_repo::connect(&to_url, pgpitr_repo::Access::Write).await?;
    if from.describe() == to.describe() {
        anyhow::bail!("--from and --to name the same repository ({})", from.describe());
    }
    let placement = pgpitr_repo::S3Placement::of(&to_url);
    let stats = pgpitr_repo::copy::copy(from.clone(), to.clone(), placement, args.parallel as usize).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!(
            "copied {} objects ({}) from {} to {}{}, {} of them backups' metadata; {} already there; {} merged pieces deleted",
            stats.copied_objects,
            HumanBytes(stats.copied_bytes),
            from.describe(),
            to.describe(),
            if stats.server_side { " inside the store (S3 CopyObject)" } else { "" },
            stats.backups,
            stats.present_objects,
            stats.deleted_pieces
        );
    }
    Ok(crate::exit::OK)
}
