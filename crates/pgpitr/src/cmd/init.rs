use crate::cli::InitArgs;
use crate::conn;
use pgpitr_repo::InitOutcome;
use pgpitr_storage::RepoUrl;

pub async fn run(args: InitArgs) -> anyhow::Result<u8> {
    // Validate everything local before touching the network.
    let url = RepoUrl::parse(&args.repo.repo)?;
    let cfg = conn::config(&args.conn, "pgpitr")?;
    let data_keys = (args.data_key_bytes.is_some() || args.data_key_age.is_some()).then(|| {
        let d = pgpitr_repo::DataKeySpan::default();
        pgpitr_repo::DataKeySpan {
            max_bytes: args.data_key_bytes.map_or(d.max_bytes, |b| b as u64),
            max_age_seconds: args.data_key_age.map_or(d.max_age_seconds, |a| a.as_secs()),
        }
    });
    let (repo, outcome) = super::bind_repo(&url, &cfg, data_keys).await?;
    let b = repo.binding();
    if args.json {
        let mut v = serde_json::to_value(b)?;
        v["created"] = serde_json::Value::Bool(outcome == InitOutcome::Created);
        v["repository"] = serde_json::Value::String(repo.location());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let verb = match outcome {
            InitOutcome::Created => "initialised for",
            InitOutcome::AlreadyBound => "already initialised (nothing changed) for",
        };
        println!(
            "repository {} {verb} cluster {} (PostgreSQL {}, WAL segment size {})",
            repo.location(),
            b.system_identifier,
            b.pg_major,
            b.wal_segment_size
        );
    }
    Ok(crate::exit::OK)
}
