use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Point-in-time recovery for PostgreSQL: stream WAL into a repository
/// (a local directory or S3) within about a second of each commit, take base
/// backups, and restore to any moment.
///
/// Secrets never go on the command line: the server password comes from
/// PGPASSWORD, PGPASSFILE or ~/.pgpass, S3 credentials from the standard AWS
/// chain (environment, profile, web identity, instance metadata).
#[derive(Debug, Parser)]
#[command(name = "pgpitr", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PGPITR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log output: -v info, -vv debug, -vvv trace (PGPITR_LOG overrides).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bind a repository to one PostgreSQL cluster (safe to run again).
    ///
    /// Records the cluster's system identifier, major version and WAL segment
    /// size in the repository. Running it again against the same cluster does
    /// nothing; a repository bound to another cluster is refused and left
    /// untouched.
    Init(InitArgs),
    /// Stream WAL into the repository continuously (the archiver daemon).
    ///
    /// Connects over the replication protocol with a physical slot (created
    /// with RESERVE_WAL when missing on a new repository) and makes every
    /// byte of WAL durable in the repository within --flush-interval of its
    /// arrival. The flush position reported to the server never passes what
    /// is durable, so the slot keeps everything not yet stored. Reconnects
    /// with backoff; SIGTERM/SIGINT store what is pending and exit 0.
    Stream(StreamArgs),
    /// Show what the repository holds: WAL per timeline, gaps, and the
    /// latest restorable time.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct RepoOpts {
    /// Repository location: /path, file:///path, or
    /// s3://bucket/prefix[?endpoint=URL&region=NAME&path-style=true].
    #[arg(long, env = "PGPITR_REPO", value_name = "URL")]
    pub repo: String,
}

#[derive(Debug, Args)]
pub struct ConnOpts {
    /// Source server as a libpq connection string (postgres://user@host:port
    /// or "host=... port=... user=..."); PGHOST, PGPORT, PGUSER, PGAPPNAME
    /// fill the gaps. Also read from PGPITR_DBNAME. A password here is refused.
    #[arg(short = 'd', long = "dbname", value_name = "CONNSTR")]
    pub dbname: Option<String>,
    /// Server host name, IP address or Unix socket directory.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Server port.
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// User to connect as; it needs the REPLICATION attribute.
    #[arg(short = 'U', long = "username", value_name = "NAME")]
    pub username: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    #[command(flatten)]
    pub conn: ConnOpts,
    /// Print the binding as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses durations such as `1s`, `250ms`, `10m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: jiff::SignedDuration =
        s.trim().parse().map_err(|e| format!("invalid duration {s:?} (examples: 1s, 250ms, 10m): {e}"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("duration {s:?} must not be negative"))
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    #[command(flatten)]
    pub conn: ConnOpts,
    /// Physical replication slot to stream from.
    #[arg(long, env = "PGPITR_SLOT", default_value = "pgpitr")]
    pub slot: String,
    /// WAL becomes durable in the repository at most this long after it
    /// arrives, even when no segment fills.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub flush_interval: std::time::Duration,
    /// Send standby status updates at least this often.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub status_interval: std::time::Duration,
    /// Store WAL as soon as it arrives and report it flushed only once
    /// stored: list the application name in synchronous_standby_names for
    /// RPO 0.
    #[arg(long)]
    pub synchronous: bool,
    /// application_name reported to the server (default: the slot name),
    /// the name to put in synchronous_standby_names.
    #[arg(long, value_name = "NAME")]
    pub application_name: Option<String>,
    /// Complete segments stored concurrently; reading pauses beyond this,
    /// which bounds WAL buffers to (1 + 2 x this) x wal_segment_size.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_segments_in_flight: u16,
    /// On SIGTERM, how long to wait for storage to accept pending WAL.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub shutdown_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}
