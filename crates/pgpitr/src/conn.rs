//! From command-line options to a replication connection and the identity of
//! the cluster behind it.

use crate::cli::ConnOpts;
use anyhow::{Context, bail};
use pgpitr_pgwire::{ConnConfig, ReplicationConnection};
use pgpitr_repo::ClusterIdentity;

/// Builds the connection settings. `--host`, `--port` and `--username` fill
/// what the connection string leaves unset, ahead of PGHOST/PGPORT/PGUSER.
pub fn config(opts: &ConnOpts, default_app_name: &str) -> anyhow::Result<ConnConfig> {
    let env = |k: &str| std::env::var(k).ok();
    let conninfo = match &opts.dbname {
        Some(d) => {
            // Everything on argv is visible in `ps` to every user of the host.
            let bare = ConnConfig::parse_with_env(d, |_| None).context("invalid connection string")?;
            if bare.password().is_some() && crate::config::layers().dbname_on_argv {
                bail!(
                    "refusing a password in the connection string on the command line (visible to every user \
                     in `ps`): use PGPASSWORD, PGPASSFILE or ~/.pgpass, or pass the string in PGPITR_DBNAME"
                );
            }
            d.clone()
        }
        None => env("PGPITR_DBNAME").unwrap_or_default(),
    };
    let lookup = |k: &str| -> Option<String> {
        match k {
            "PGHOST" => opts.host.clone().or_else(|| env(k)),
            "PGPORT" => opts.port.map(|p| p.to_string()).or_else(|| env(k)),
            "PGUSER" => opts.username.clone().or_else(|| env(k)),
            _ => env(k),
        }
    };
    let cfg = ConnConfig::parse_with_env(&conninfo, lookup).context("invalid connection string")?;
    Ok(cfg.with_fallback_application_name(default_app_name))
}

/// Opens a replication connection and reads who the server is. Refuses a
/// server whose WAL cannot serve point-in-time recovery.
pub async fn connect(cfg: &ConnConfig) -> anyhow::Result<(ReplicationConnection, ClusterIdentity)> {
    let mut conn = ReplicationConnection::connect(cfg).await?;
    let target = cfg.display_target();
    let wal_level = conn.show("wal_level").await.with_context(|| format!("{target}: SHOW wal_level"))?;
    if wal_level == "minimal" {
        bail!("{target}: wal_level is minimal; point-in-time recovery needs wal_level = replica (or logical)");
    }
    let (_, identity) = conn.cluster_identity().await.with_context(|| format!("{target}: cluster identity"))?;
    identity.major().with_context(|| target.to_string())?;
    Ok((conn, identity))
}
