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
    /// The configuration file (TOML; default /etc/pgpitr/pgpitr.toml when it
    /// exists): every option, below the command line and PGPITR_<NAME>
    /// variables (`pgpitr config show COMMAND` shows what applies).
    #[arg(long, global = true, env = "PGPITR_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
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
    /// Show what the repository holds: WAL per timeline, gaps, base
    /// backups, and the earliest and latest restorable times.
    List(ListArgs),
    /// Take a base backup now, streamed into the repository.
    ///
    /// Runs BASE_BACKUP over the replication protocol (no access to the data
    /// directory needed), by default with lz4 compression on the server, cuts
    /// the archives into parts of --part-size, and stores them checksummed,
    /// --parallel at a time: memory stays bounded and nothing is staged on
    /// local disk. The backup is complete, and listed as such, only once its
    /// data, its backup_manifest and all WAL from its start to its stop
    /// position are durable in the repository: a running `pgpitr stream`
    /// (known by its lease in the repository) stores that WAL; otherwise the
    /// backup fetches it at once over a temporary replication slot. Leftovers
    /// of interrupted backups are deleted. Prints the backup's ID and summary.
    Backup(BackupArgs),
    /// Restore a new data directory to a point in time.
    ///
    /// Plans first, writing nothing: picks the newest backup that ends before
    /// the target on the target timeline's history and checks, from the
    /// repository's WAL coverage and commit-time index, that every byte of WAL
    /// from the backup to the target is stored. A target outside the
    /// restorable window or behind a WAL gap is refused, naming the window or
    /// the gap. Then extracts the backup (checked against its checksums and
    /// manifest) into the empty --pgdata and writes recovery.signal and the
    /// recovery settings to postgresql.auto.conf, so that `pg_ctl start`
    /// replays to the target; --wait does that and reports what was reached.
    Restore(crate::cmd::restore::RestoreArgs),
    /// Prove a restore: restore to a target, start the server, check it.
    ///
    /// Restores exactly as `restore --wait` does (to a random time in the
    /// restorable window by default, or --target latest, or --target-time)
    /// into a scratch directory, starts the server there on a private
    /// socket (no TCP, no archiving, no synchronous standbys), and checks
    /// that it promoted at the point the plan expected, that every database
    /// accepts connections, amcheck (--amcheck) and the user's checks. Stops
    /// the server, removes the scratch directory, and reports the RTO per
    /// phase (plan, download, replay) and every check, on stdout and in the
    /// repository (drills/<ID>.json, shown by `list`). Exit 1 when a check
    /// fails, with the report; refusals (a target outside the window, a
    /// non-empty --pgdata, no binaries of the backup's major) write nothing.
    Drill(crate::cmd::drill::DrillArgs),
    /// Bring a second repository (another region) up to date with this one.
    ///
    /// Copies every object the target lacks, as stored (an encrypted
    /// repository stays encrypted; no key is needed), in an order that keeps
    /// the target a consistent repository throughout: keyring, binding,
    /// timeline histories, WAL in order, then each complete backup with its
    /// backup.json last. Each object's CRC-32 as stored is compared with the
    /// source's (S3: the checksum its server computed on arrival); between
    /// two repositories behind one S3 endpoint the copy runs in the store.
    /// Incremental, idempotent and resumable: run it again after an
    /// interruption. A target bound to another cluster is refused.
    Copy(crate::cmd::copy::CopyArgs),
    /// Archive one WAL file (PostgreSQL's archive_command): `pgpitr
    /// wal-push --repo URL %p`.
    ///
    /// Stores a complete segment, checked against the repository's cluster
    /// (page magic, system identifier, segment size, timeline, address) and
    /// indexed by commit time, or a timeline history file, exactly as the
    /// stream stores them, so restore and wal-fetch serve them. Idempotent:
    /// the same WAL again succeeds; different WAL for a stored segment is
    /// refused (exit 1). Segment RPO: use `stream` for seconds.
    WalPush(crate::cmd::wal_push::WalPushArgs),
    /// Check that the setup works, end to end: server, slot, repository,
    /// the stream, backups, drills.
    ///
    /// Connects as the stream does and checks the REPLICATION attribute,
    /// wal_level, a free walsender, the slot (state, WAL it retains), that
    /// the repository is reachable, writable and bound to this cluster,
    /// that a fresh commit (with --switch-wal: a segment switch) becomes
    /// durable in the repository within --timeout through the running
    /// stream, the newest backup's age and the newest drill's result. One
    /// line per finding (ok, warn, fail) or --json; exit 0 only when all
    /// are ok (1 when one fails, 3 when some only warn).
    Check(crate::cmd::check::CheckArgs),
    /// Serve one WAL file to PostgreSQL (its restore_command).
    ///
    /// Serves complete segments, timeline history files and the unfinished
    /// tail assembled from its stored pieces (zero-filled past the durable
    /// end), each verified, via a temporary file that is synced and renamed.
    /// Exit 1 without output when the file is not stored (the end of WAL);
    /// exit 200 with a message when the repository cannot be read or holds
    /// something wrong, so that Postgres stops instead of ending recovery.
    WalFetch(crate::cmd::wal_fetch::WalFetchArgs),
    /// Delete base backups the retention policy does not keep, and the WAL
    /// that only they could use.
    ///
    /// Keeps the newest --keep-backups complete backups and/or every backup
    /// needed to restore to any time within --keep-within (those that
    /// stopped in the window, and the newest one before it); with both, what
    /// either keeps. The newest complete backup is always kept. WAL is
    /// deleted only below the start of the oldest kept backup, so every kept
    /// backup stays restorable to the end of the stored WAL; leftovers of
    /// interrupted backups are deleted too. Safe beside a running `pgpitr
    /// stream`, and safe to interrupt and run again.
    Expire(ExpireArgs),
    /// Read back everything a restore needs and check it.
    ///
    /// Reads every complete backup (or only --backup) as a restore does,
    /// writing nothing: the manifest and each part against backup.json
    /// (size, checksum, offset, length), then every file against the
    /// manifest (size, CRC-32C); when that fails, names each bad object.
    /// Fetches every WAL object and checks its checksum and range, then WAL
    /// coverage: each backup's start to stop, and gaps after the oldest
    /// backup's start. Lists every problem and exits 1 if there is any.
    /// Reads the whole repository: on S3 that is GET requests and transfer
    /// for every byte stored.
    Verify(VerifyArgs),
    /// Move a repository written by an older pgpitr to today's layout.
    ///
    /// Format 1 kept each timeline's WAL in one directory, so every listing
    /// read all of it; format 2 keeps a directory per 4 GiB of WAL, so a
    /// restore or a backup lists only what it needs. Older repositories
    /// still work as they are (this is about cost, not correctness). Copies
    /// every WAL object and history file to its new key, switches the
    /// repository to format 2, then deletes the old keys: readers see a
    /// whole repository throughout, and an interrupted run is finished by
    /// running it again. Refused while a `pgpitr stream` or a backup writes
    /// to the repository. Nothing to do on a format-2 repository.
    Migrate(MigrateArgs),
    /// Manage the keys of an encrypted repository.
    ///
    /// The key file named by PGPITR_KEY_FILE wraps the repository's data
    /// keys (kept in keyring/). `rotate` wraps every data key by a new key
    /// file as well and makes it the current key, rewriting no data; run it
    /// again after restarting streams with the new key, to wrap what they
    /// made meanwhile. `retire` then stops accepting the old key; it is
    /// refused while any data key depends on that key alone.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show the effective options of a command and where each comes from
    /// (command line, environment, configuration file, default).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print shell completions: `pgpitr completions bash >
    /// /etc/bash_completion.d/pgpitr` (zsh, fish, elvish and powershell too).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page pgpitr(1), or with --dir write it and one page per
    /// command (pgpitr-stream(1), ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// The current and previous key-encryption keys, and every data key
    /// with what wraps it (--objects: and how many objects it seals).
    List {
        #[command(flatten)]
        repo: RepoOpts,
        /// Count the objects each data key seals (one ranged read each).
        #[arg(long)]
        objects: bool,
        #[arg(long)]
        json: bool,
    },
    /// Wrap every data key by a new key file too, and make it current.
    Rotate {
        #[command(flatten)]
        repo: RepoOpts,
        /// The new key file (64 hex digits, mode 0600).
        #[arg(long, env = "PGPITR_NEW_KEY_FILE", value_name = "PATH")]
        new_key_file: Option<std::path::PathBuf>,
        /// Or the new AWS KMS key (ID, ARN or alias).
        #[arg(long, env = "PGPITR_NEW_KMS_KEY_ID", value_name = "ID", conflicts_with = "new_key_file")]
        new_kms_key_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop accepting a key (by its ID, e.g. sha256:0f0c64ecad122e73).
    Retire {
        #[command(flatten)]
        repo: RepoOpts,
        /// The key's ID, as `pgpitr key list` shows it.
        #[arg(long = "key", value_name = "ID")]
        key: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Print what was done as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every option of COMMAND (e.g. `stream`, `key rotate`) with its
    /// value and source; passwords redacted.
    Show {
        /// The command.
        command: Vec<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
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
    /// Encrypted repositories: make a new data key after sealing this much
    /// with one (default 1GiB). Each new key is one call to the KMS.
    #[arg(long, value_name = "SIZE", value_parser = parse_data_key_bytes)]
    pub data_key_bytes: Option<usize>,
    /// Encrypted repositories: make a new data key after this long (default 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_data_key_age)]
    pub data_key_age: Option<std::time::Duration>,
}

fn parse_data_key_bytes(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if n < 1 << 20 {
        return Err(format!("{s:?} is below the smallest data-key span, 1MiB"));
    }
    Ok(n)
}

fn parse_data_key_age(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("{s:?} is below the smallest data-key age, 1s"));
    }
    Ok(d)
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
    /// which bounds WAL buffers to (3 + 2 x this) x wal_segment_size.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_segments_in_flight: u16,
    /// On SIGTERM, how long to wait for storage to accept pending WAL
    /// before exiting 1 (what is not stored stays in the slot). The default
    /// fits a Kubernetes pod's 30 s grace period.
    #[arg(long, value_parser = parse_duration, default_value = "8s", value_name = "DURATION")]
    pub shutdown_timeout: std::time::Duration,
    /// Never create the slot when the repository already holds WAL (after
    /// a failover, or when the slot was dropped): exit with an error instead.
    /// By default it is created when the server continues the repository's
    /// history (same system identifier; same timeline, or one that branched
    /// off at or after the repository's end).
    #[arg(long)]
    pub no_create_slot: bool,
    /// Take a base backup this often (e.g. 24h), from this process and over
    /// separate connections, so WAL streaming never waits for it; plus one at
    /// start when the repository has no complete backup. The next one is due
    /// this long after the newest backup started.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub backup_every: Option<std::time::Duration>,
    /// CHECKPOINT mode of scheduled backups (see `pgpitr backup --checkpoint`).
    #[arg(long, value_enum, default_value_t = Checkpoint::Spread, requires = "backup_every")]
    pub backup_checkpoint: Checkpoint,
    /// Make scheduled backups incremental (PostgreSQL 17 and later, with
    /// summarize_wal = on), with a full one whenever the newest full backup
    /// is at least this old (e.g. 7d). Where an incremental cannot be
    /// taken, a full one is, with a warning saying why.
    #[arg(long, value_parser = parse_retention, value_name = "DURATION", requires = "backup_every")]
    pub full_every: Option<std::time::Duration>,
    /// The most backups a chain of scheduled backups may hold, its full
    /// backup included (see `pgpitr backup --max-chain`).
    #[arg(long, value_name = "N", default_value_t = pgpitr_backup::DEFAULT_MAX_CHAIN, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub max_chain: u32,
    /// After each scheduled backup, expire as `pgpitr expire` does with
    /// these rules (they need --backup-every).
    #[command(flatten)]
    pub retention: RetentionOpts,
    /// Serve Prometheus metrics on http://ADDR/metrics and a health check on
    /// /healthz (200 while streaming with no WAL waiting over 60 s for
    /// storage, else 503), e.g. 0.0.0.0:9187.
    #[arg(long, env = "PGPITR_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Run a restore drill (`pgpitr drill`) this often (e.g. 7d), one at a
    /// time, at the lowest CPU priority; the next is due this long after
    /// the newest stored drill began. The other --drill-* options and
    /// --rto-objective are passed to it.
    #[arg(long, value_parser = parse_retention, value_name = "DURATION")]
    pub drill_every: Option<std::time::Duration>,
    /// Scheduled drills' target (`drill --target`).
    #[arg(long, value_enum, default_value_t = crate::cmd::drill::NamedDrillTarget::Random, requires = "drill_every")]
    pub drill_target: crate::cmd::drill::NamedDrillTarget,
    /// Scheduled drills' checks file (`drill --checks-file`).
    #[arg(long, value_name = "FILE", requires = "drill_every")]
    pub drill_checks_file: Option<std::path::PathBuf>,
    /// Scheduled drills run amcheck (`drill --amcheck`).
    #[arg(long, requires = "drill_every")]
    pub drill_amcheck: bool,
    /// Scheduled drills fail past this (`drill --time-limit`).
    #[arg(long, value_parser = parse_retention, value_name = "DURATION", default_value = "6h", requires = "drill_every")]
    pub drill_time_limit: std::time::Duration,
    /// Scheduled drills refuse larger backups (`drill --max-disk`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "drill_every")]
    pub drill_max_disk: Option<usize>,
    /// Where scheduled drills restore (`drill --scratch-dir`).
    #[arg(long, value_name = "DIR", requires = "drill_every")]
    pub drill_scratch_dir: Option<std::path::PathBuf>,
    /// Binaries scheduled drills start (`drill --pg-bindir`).
    #[arg(long, value_name = "DIR", requires = "drill_every")]
    pub drill_pg_bindir: Option<std::path::PathBuf>,
    /// A scheduled drill whose RTO is longer fails (`drill --rto-objective`).
    #[arg(long, value_parser = parse_retention, value_name = "DURATION", requires = "drill_every")]
    pub rto_objective: Option<std::time::Duration>,
    /// The database user scheduled drills check as (`drill --db-user`;
    /// not the stream's replication user: checks need a superuser).
    #[arg(long, value_name = "USER", default_value = "postgres", requires = "drill_every")]
    pub drill_db_user: String,
    /// Settings of scheduled drills' servers (`drill --server-setting`).
    #[arg(long, value_name = "NAME=VALUE", requires = "drill_every")]
    pub drill_server_setting: Vec<String>,
    /// Keep a second repository (another region) in step: every object is
    /// written there too, after the primary acknowledged it, in the same
    /// order; what this stream did not write (other processes, downtime)
    /// follows by `pgpitr copy` passes at start and every
    /// --copy-pass-every. Bound to the same cluster; never needs the key.
    #[arg(long, env = "PGPITR_COPY_TO", value_name = "URL")]
    pub copy_to: Option<String>,
    /// Report WAL flushed only once the copy holds it too (with
    /// --synchronous: RPO 0 across both repositories). A copy that does
    /// not answer then holds up the flush position, as the primary does.
    #[arg(long, requires = "copy_to")]
    pub copy_sync: bool,
    /// How often a full `pgpitr copy` pass checks the copy against the
    /// primary (it lists both) and copies what it lacks.
    #[arg(long, value_parser = parse_retention, value_name = "DURATION", default_value = "1h", requires = "copy_to")]
    pub copy_pass_every: std::time::Duration,
}

impl StreamArgs {
    /// `drill ...` as the scheduled drills run it.
    /// The repository goes in the environment (`PGPITR_REPO`), not argv.
    pub fn drill_args(&self, log_format: LogFormat) -> Vec<std::ffi::OsString> {
        let format = match log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let mut a: Vec<std::ffi::OsString> = vec!["--log-format".into(), format.into(), "drill".into()];
        a.extend(["--db-user".into(), self.drill_db_user.clone().into()]);
        for s in &self.drill_server_setting {
            a.extend(["--server-setting".into(), s.into()]);
        }
        let target = match self.drill_target {
            crate::cmd::drill::NamedDrillTarget::Latest => "latest",
            crate::cmd::drill::NamedDrillTarget::Random => "random",
        };
        a.extend(["--target".into(), target.into()]);
        a.extend(["--time-limit".into(), format!("{}s", self.drill_time_limit.as_secs()).into()]);
        if let Some(f) = &self.drill_checks_file {
            a.extend(["--checks-file".into(), f.clone().into()]);
        }
        if self.drill_amcheck {
            a.push("--amcheck".into());
        }
        if let Some(m) = &self.drill_max_disk {
            a.extend(["--max-disk".into(), m.to_string().into()]);
        }
        if let Some(d) = &self.drill_scratch_dir {
            a.extend(["--scratch-dir".into(), d.clone().into()]);
        }
        if let Some(d) = &self.drill_pg_bindir {
            a.extend(["--pg-bindir".into(), d.clone().into()]);
        }
        if let Some(o) = self.rto_objective {
            a.extend(["--rto-objective".into(), format!("{}s", o.as_secs()).into()]);
        }
        a
    }
}

/// How the server's backup checkpoint is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Checkpoint {
    /// At once: an I/O burst on the server, and the backup starts right away.
    Fast,
    /// Spread over checkpoint_completion_target: gentle, but may take minutes.
    Spread,
}

/// Who compresses backup archives, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    /// PostgreSQL, with lz4 (BASE_BACKUP COMPRESSION 'lz4').
    ServerLz4,
    /// PostgreSQL, with zstd at --zstd-level.
    ServerZstd,
    /// pgpitr, with lz4, part by part.
    ClientLz4,
    /// pgpitr, with zstd at --zstd-level, part by part.
    ClientZstd,
    /// Nobody.
    None,
}

/// Parses sizes such as `16MiB`, `512KiB`, `1GiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("invalid size {s:?} (examples: 16MiB, 512KiB)"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "kB" => 1 << 10,
        "M" | "MiB" | "MB" => 1 << 20,
        "G" | "GiB" | "GB" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} in {s:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// `hold ID` or `release ID`: set or lift a complete backup's legal
    /// hold (no retention rule deletes a held backup) instead of taking one.
    #[arg(value_enum, value_name = "hold|release", requires = "held_id")]
    pub hold: Option<HoldAction>,
    /// The backup to hold or release, as `pgpitr list` shows it.
    #[arg(id = "held_id", value_name = "ID", requires = "hold")]
    pub held_id: Option<String>,
    #[command(flatten)]
    pub repo: RepoOpts,
    /// A legal hold from the start: no retention rule deletes this backup
    /// (`pgpitr backup release ID` lifts it).
    #[arg(long)]
    pub keep_forever: bool,
    #[command(flatten)]
    pub conn: ConnOpts,
    /// Backup label (shown by `pgpitr list`, stored in backup_label).
    #[arg(long, value_name = "LABEL", default_value = "pgpitr")]
    pub label: String,
    /// How the server's backup checkpoint is done. `spread` (like
    /// pg_basebackup) spares the server but may delay the start by minutes.
    #[arg(long, value_enum, default_value_t = Checkpoint::Spread)]
    pub checkpoint: Checkpoint,
    /// Keep a backup in which PostgreSQL reported page checksum failures
    /// (they are recorded in its metadata); by default such a backup is
    /// discarded and the command fails (the server's warnings name the files).
    #[arg(long)]
    pub allow_checksum_failures: bool,
    /// How long to wait for the WAL from the backup's start to its stop
    /// position to become durable in the repository.
    #[arg(long, value_parser = parse_duration, default_value = "10m", value_name = "DURATION")]
    pub wal_timeout: std::time::Duration,
    /// Who compresses the archives, and with what. `server-lz4` and
    /// `server-zstd`: PostgreSQL compresses them and pgpitr stores the
    /// frames as they arrive (least client CPU); `client-lz4` and
    /// `client-zstd`: pgpitr compresses each part on its own cores, sparing
    /// the server's CPU; `none`: stored as they are. zstd stores about half
    /// of lz4's bytes for more CPU. Default: server-lz4, or client-lz4 with
    /// one log line when the server cannot compress (14, or built without
    /// lz4).
    #[arg(long, value_enum, value_name = "HOW")]
    pub compress: Option<Compress>,
    /// The zstd level of `server-zstd` and `client-zstd` (1 to 19; higher
    /// is smaller and slower).
    #[arg(long, value_name = "LEVEL", default_value_t = pgpitr_repo::object::ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    /// Bytes of the archive stream per stored part (64KiB to 1GiB).
    #[arg(long, value_parser = parse_size, default_value = "16MiB", value_name = "SIZE")]
    pub part_size: usize,
    /// Parts stored at once; memory is at most about part size x (2 x this + 1).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Limit the server's transfer rate, in kB/s (32 to 1048576), to spare
    /// its disks (with server-lz4 it limits the compressed bytes sent).
    #[arg(long, value_name = "KBPS", value_parser = clap::value_parser!(u32).range(32..=1_048_576))]
    pub max_rate: Option<u32>,
    /// Take an incremental backup: only what changed since the newest
    /// complete backup on this timeline's history. `native` (the default on
    /// 17 and later, with summarize_wal = on): the server sends only changed
    /// blocks; `delta` (the default before 17): the server sends everything
    /// and pgpitr keeps the blocks written since that backup. Fails, saying
    /// why, when none can be taken; a full backup is taken when the chain
    /// already holds --max-chain backups.
    #[arg(long, value_enum, value_name = "METHOD", num_args = 0..=1, default_missing_value = "auto")]
    pub incremental: Option<IncrementalArg>,
    /// The most backups a chain may hold, its full backup included; past
    /// it, --incremental takes a full backup.
    #[arg(long, value_name = "N", default_value_t = pgpitr_backup::DEFAULT_MAX_CHAIN, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub max_chain: u32,
    /// Print the backup's metadata as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How `backup --incremental` takes the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IncrementalArg {
    /// Natively from 17 on, by block delta before.
    Auto,
    /// `BASE_BACKUP (INCREMENTAL)` (17 and later, summarize_wal = on).
    Native,
    /// pgpitr's block delta (any major).
    Delta,
}

/// What `pgpitr backup hold|release ID` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HoldAction {
    /// Put a legal hold on a complete backup: no retention rule deletes it.
    Hold,
    /// Lift it: the retention rules apply to the backup again.
    Release,
}

/// The retention rules, shared by `expire` and `stream`.
#[derive(Debug, Args)]
pub struct RetentionOpts {
    /// Keep the newest N complete backups (N ≥ 1), with all WAL after them.
    #[arg(long, value_name = "N", env = "PGPITR_KEEP_BACKUPS", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_backups: Option<u32>,
    /// Keep what restoring to any time in the last DURATION needs (e.g. 7d,
    /// 36h): the point-in-time window.
    #[arg(long, value_name = "DURATION", env = "PGPITR_KEEP_WITHIN", value_parser = parse_retention)]
    pub keep_within: Option<std::time::Duration>,
    /// Keep the newest backup of each of the last N days that have one
    /// (restorable to its end; its WAL only).
    #[arg(long, value_name = "N", env = "PGPITR_KEEP_DAILY", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_daily: Option<u32>,
    /// The same per ISO week (from Monday).
    #[arg(long, value_name = "N", env = "PGPITR_KEEP_WEEKLY", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_weekly: Option<u32>,
    /// The same per calendar month.
    #[arg(long, value_name = "N", env = "PGPITR_KEEP_MONTHLY", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_monthly: Option<u32>,
    /// The same per calendar year.
    #[arg(long, value_name = "N", env = "PGPITR_KEEP_YEARLY", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_yearly: Option<u32>,
    /// Time zone (IANA name) of the days, weeks, months and years.
    #[arg(long, value_name = "ZONE", env = "PGPITR_RETENTION_TIMEZONE", value_parser = parse_zone)]
    pub retention_timezone: Option<String>,
}

fn parse_zone(s: &str) -> Result<String, String> {
    jiff::tz::TimeZone::get(s).map(|_| s.to_string()).map_err(|e| format!("unknown time zone {s:?}: {e}"))
}

impl RetentionOpts {
    /// The policy these rules make; `None` when no rule is given.
    pub fn policy(&self) -> Option<pgpitr_repo::retention::Policy> {
        let p = pgpitr_repo::retention::Policy {
            keep_backups: self.keep_backups,
            keep_within: self.keep_within,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            time_zone: self.retention_timezone.clone(),
        };
        let any = p.keep_backups.is_some()
            || p.keep_within.is_some()
            || p.keep_daily.is_some()
            || p.keep_weekly.is_some()
            || p.keep_monthly.is_some()
            || p.keep_yearly.is_some();
        any.then_some(p)
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("policy").required(true).multiple(true).args([
    "keep_backups", "keep_within", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"
])))]
pub struct ExpireArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    #[command(flatten)]
    pub retention: RetentionOpts,
    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan (and what was deleted) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Durations for retention, where days are the natural unit: `7d`, or
/// anything [`parse_duration`] takes (`36h`, `90m`).
pub fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let d = match t.strip_suffix('d').and_then(|d| d.trim().parse::<u64>().ok()) {
        Some(days) => days
            .checked_mul(86_400)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too long"))?,
        None => parse_duration(t)?,
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be longer than zero"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Check only this backup, and the WAL from its start to its stop.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub repo: RepoOpts,
    /// Also name the WAL objects whose commit-time index is incomplete
    /// (restores to a time after them use recovery_target_time). Reads
    /// every WAL object's header.
    #[arg(long)]
    pub index: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::parse_retention;
    use std::time::Duration;

    #[test]
    fn retention_durations() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention(" 36h "), Ok(Duration::from_secs(36 * 3600)));
        assert!(parse_retention("0d").unwrap_err().contains("longer than zero"));
        assert!(parse_retention("0s").unwrap_err().contains("longer than zero"));
        assert!(parse_retention("99999999999999999d").unwrap_err().contains("too long"));
        assert!(parse_retention("soon").is_err());
    }
}
