//! Taking one base backup: claim an ID, stream the archives into parts,
//! store the manifest, make the WAL durable, and only then `backup.json`.

use crate::delta::{DeltaFilter, DeltaStats, Replaced};
use crate::incremental::{Parent, choose_parent};
use crate::notice::{DATA_CORRUPTED, parse_checksum_notice};
use crate::progress::{BackupPhase, BackupProgress};
use crate::upload::{PartJob, Uploader, encode_part, put_retrying};
use crate::walrange::{WalFetcher, WalNeed, ensure_wal, stored_end};
use crate::{
    Algorithm, BackupError, BackupOptions, Compression, IncrementalMethod, IncrementalMode, MAX_PART_SIZE, WalMode,
};
use bytes::{Bytes, BytesMut};
use pgpitr_pgwire::{BaseBackupMessage, ConnConfig, ReplicationConnection, quote_literal};
use pgpitr_repo::backup::{
    self, ArchiveCompression, ArchiveInfo, BackupId, BackupInfo, BackupStatus, ChecksumFailure, ManifestInfo, Marker,
};
use pgpitr_repo::object::Codec;
use pgpitr_repo::reader::Manifest;
use pgpitr_repo::{ClusterIdentity, Repository};
use pgpitr_storage::{PutOutcome, Storage};
use pgpitr_types::{BaseBackupDialect, Lsn, PgMajor, TimelineId};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long cleaning up after a failed backup may take.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Takes one base backup of the server behind `conn_cfg` into `repo` and
/// returns its metadata once `backup.json` is stored.
///
/// On any failure, including cancellation, what was stored is deleted (best
/// effort); whatever remains is never listed as complete and is deleted by
/// a later backup once its heartbeat is stale.
#[tracing::instrument(skip_all, fields(label = %opts.label))]
pub async fn take_backup(
    repo: &Repository,
    conn_cfg: &ConnConfig,
    opts: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<BackupInfo, BackupError> {
    validate(opts)?;
    let progress = opts.progress.clone();
    progress.reset();
    let mut conn = ReplicationConnection::connect(conn_cfg).await?;
    let (sys, identity) = conn.cluster_identity().await?;
    repo.check_cluster(&identity)?;
    if let Compression::Server(a) = opts.compression
        && !repo.major().server_compression()
    {
        return Err(BackupError::Invalid(format!(
            "PostgreSQL {} cannot compress base backups on the server; use --compress client-{}",
            repo.major(),
            a.as_str()
        )));
    }
    let parent = choose_parent(repo, &mut conn, sys.timeline, opts).await?;
    let storage = repo.storage().clone();
    clean_leftovers(storage.as_ref(), opts).await;

    let began = jiff::Timestamp::now();
    let (id, marker) = claim_id(storage.as_ref(), began, &opts.label).await?;
    tracing::info!(backup = %id, server = %conn_cfg.display_target(), "base backup started");
    let heartbeat = Heartbeat::start(storage.clone(), id.clone(), marker, opts.heartbeat_interval);
    let source = Source { identity, tli: sys.timeline, xlogpos: sys.xlogpos, parent };
    let result = run(repo, &mut conn, conn_cfg, &source, &id, opts, cancel).await;
    heartbeat.stop().await;
    conn.close().await;

    let info = match result {
        Ok(info) => info,
        Err(e) => {
            progress.set_phase(BackupPhase::Done);
            discard(storage.as_ref(), &id).await;
            return Err(e);
        }
    };
    progress.set_phase(BackupPhase::Finishing);
    let body = Bytes::from(serde_json::to_vec_pretty(&info).map_err(|e| BackupError::Invalid(e.to_string()))?);
    if let Err(e) = put_retrying(storage.as_ref(), &id.info_key(), body, opts.upload_timeout).await {
        discard(storage.as_ref(), &id).await;
        return Err(e.into());
    }
    // From here the backup is complete; a marker left behind is harmless.
    if let Err(e) = storage.delete(&id.marker_key()).await {
        tracing::warn!(backup = %id, "backup complete, but its in-progress marker could not be deleted: {e}");
    }
    progress.set_phase(BackupPhase::Done);
    tracing::info!(
        backup = %id, start = %info.start_lsn, stop = %info.stop_lsn, tli = %info.timeline,
        size = info.size_bytes, stored = info.stored_bytes, files = info.file_count,
        "base backup complete"
    );
    Ok(info)
}

fn validate(opts: &BackupOptions) -> Result<(), BackupError> {
    if !(64 << 10..=MAX_PART_SIZE).contains(&opts.part_size) {
        return Err(BackupError::Invalid(format!("part size {} is out of range (64 KiB to 1 GiB)", opts.part_size)));
    }
    if opts.label.len() > 1023 || opts.label.contains('\0') {
        return Err(BackupError::Invalid("backup label must be at most 1023 bytes without NUL".into()));
    }
    if let Some(r) = opts.max_rate_kbps
        && !(32..=1_048_576).contains(&r)
    {
        return Err(BackupError::Invalid(format!("max rate {r} kB/s is out of range (32 to 1048576)")));
    }
    if !(1..=19).contains(&opts.zstd_level) {
        return Err(BackupError::Invalid(format!("zstd level {} is out of range (1 to 19)", opts.zstd_level)));
    }
    Ok(())
}

/// Deletes what interrupted backups left behind (no `backup.json`, nobody
/// alive working on them). Failures are logged: they do not stop a backup.
async fn clean_leftovers(storage: &dyn Storage, opts: &BackupOptions) {
    let entries = match backup::scan(storage).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot look for leftovers of interrupted backups: {e}");
            return;
        }
    };
    let now = jiff::Timestamp::now();
    for entry in entries.iter().filter(|e| e.status(now, opts.stale_after) == BackupStatus::Incomplete) {
        let since = entry.marker.as_ref().map(|m| m.updated_at.as_str()).unwrap_or("unknown");
        match backup::delete_backup(storage, &entry.id).await {
            Ok(n) => tracing::info!(
                backup = %entry.id, objects = n, last_heartbeat = since,
                "deleted the leftovers of an interrupted backup"
            ),
            Err(e) => tracing::warn!(backup = %entry.id, "cannot delete the leftovers of an interrupted backup: {e}"),
        }
    }
}

/// Picks the first free ID for `now` and claims it with a create-if-absent
/// marker, so that two backups starting in the same second both get one.
async fn claim_id(storage: &dyn Storage, now: jiff::Timestamp, label: &str) -> Result<(BackupId, Marker), BackupError> {
    let taken: std::collections::HashSet<BackupId> = backup::list_ids(storage).await?.into_iter().collect();
    let mut id = BackupId::new(now, 0);
    for _ in 0..1000 {
        if !taken.contains(&id) {
            let marker = Marker::new(&id, label, now);
            let body = serde_json::to_vec_pretty(&marker).map_err(|e| BackupError::Invalid(e.to_string()))?;
            if storage.put_if_absent(&id.marker_key(), Bytes::from(body)).await? == PutOutcome::Created {
                return Ok((id, marker));
            }
        }
        id = id.next();
    }
    Err(BackupError::Invalid(format!("no free backup ID for {}", BackupId::new(now, 0))))
}

/// Best-effort deletion of a failed backup's objects.
async fn discard(storage: &dyn Storage, id: &BackupId) {
    match tokio::time::timeout(DISCARD_TIMEOUT, backup::delete_backup(storage, id)).await {
        Ok(Ok(n)) => tracing::info!(backup = %id, objects = n, "deleted what the failed backup had stored"),
        Ok(Err(e)) => {
            tracing::warn!(backup = %id, "cannot delete what the failed backup stored (the next backup will): {e}")
        }
        Err(_) => {
            tracing::warn!(backup = %id, "deleting what the failed backup stored took too long (the next backup will)")
        }
    }
}

/// Refreshes the marker's `updated_at` until stopped.
struct Heartbeat {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start(storage: Arc<dyn Storage>, id: BackupId, mut marker: Marker, every: Duration) -> Heartbeat {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                marker.updated_at = jiff::Timestamp::now().to_string();
                let Ok(body) = serde_json::to_vec_pretty(&marker) else { return };
                let key = id.marker_key();
                let put = storage.put(&key, Bytes::from(body));
                tokio::select! {
                    _ = token.cancelled() => return,
                    r = put => if let Err(e) = r {
                        tracing::warn!(backup = %id, "cannot refresh the backup's heartbeat: {e}");
                    }
                }
            }
        });
        Heartbeat { stop, task }
    }

    /// Stops refreshing; no write happens after this returns.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The server, as seen before the backup, and what the backup builds on.
struct Source {
    identity: ClusterIdentity,
    tli: TimelineId,
    xlogpos: Lsn,
    parent: Option<Parent>,
}

/// How the archives arrive, and how their parts are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Frames from the server, stored as they are (container codec none).
    Server(Algorithm),
    /// The plain tar, each part stored with this container codec.
    Plain(Codec),
}

impl Mode {
    fn first(c: Compression, major: PgMajor) -> Mode {
        match c {
            Compression::Auto if !major.server_compression() => Mode::Plain(Codec::Lz4),
            Compression::Auto => Mode::Server(Algorithm::Lz4),
            Compression::Server(a) => Mode::Server(a),
            Compression::Client(a) => Mode::Plain(client_codec(a)),
            Compression::None => Mode::Plain(Codec::None),
        }
    }

    /// A block delta reads the plain tar: compression moves to this side.
    fn for_delta(c: Compression) -> Mode {
        match c {
            Compression::Auto => Mode::Plain(Codec::Lz4),
            Compression::Server(a) | Compression::Client(a) => Mode::Plain(client_codec(a)),
            Compression::None => Mode::Plain(Codec::None),
        }
    }

    fn is_server(self) -> bool {
        matches!(self, Mode::Server(_))
    }

    fn codec(self) -> Codec {
        match self {
            Mode::Server(_) => Codec::None,
            Mode::Plain(c) => c,
        }
    }

    fn compression(self) -> Compression {
        match self {
            Mode::Server(a) => Compression::Server(a),
            Mode::Plain(Codec::None) => Compression::None,
            Mode::Plain(Codec::Zstd) => Compression::Client(Algorithm::Zstd),
            Mode::Plain(_) => Compression::Client(Algorithm::Lz4),
        }
    }

    fn archive_compression(self) -> ArchiveCompression {
        match self {
            Mode::Server(Algorithm::Lz4) => ArchiveCompression::Lz4,
            Mode::Server(Algorithm::Zstd) => ArchiveCompression::Zstd,
            Mode::Plain(_) => ArchiveCompression::None,
        }
    }
}

fn client_codec(a: Algorithm) -> Codec {
    match a {
        Algorithm::Lz4 => Codec::Lz4,
        Algorithm::Zstd => Codec::Zstd,
    }
}

/// The archive being received.
struct OpenArchive {
    idx: usize,
    name: String,
    offset: u64,
    next_index: u32,
    buf: BytesMut,
    /// The server's progress count when the archive began.
    tar_start: u64,
}

/// Everything received so far.
struct Received {
    mode: Mode,
    archives: Vec<ArchiveInfo>,
    open: Option<OpenArchive>,
    manifest: Option<BytesMut>,
    started: Option<(Lsn, TimelineId)>,
    start_time: Option<jiff::Timestamp>,
    started_at: Option<std::time::Instant>,
    finished: Option<(Lsn, TimelineId)>,
    /// The server's latest progress report: tar bytes sent so far.
    tar_progress: u64,
    failures: Vec<ChecksumFailure>,
    /// A block delta's filter and what it kept.
    delta: Option<DeltaState>,
}

#[derive(Default)]
struct DeltaState {
    /// The open archive's filter.
    current: Option<DeltaFilter>,
    replaced: Vec<Replaced>,
    stats: DeltaStats,
}

impl Received {
    fn new(mode: Mode) -> Received {
        Received {
            mode,
            archives: Vec::new(),
            open: None,
            manifest: None,
            started: None,
            start_time: None,
            started_at: None,
            finished: None,
            tar_progress: 0,
            failures: Vec::new(),
            delta: None,
        }
    }

    /// Cuts the open archive's buffered tail into a last part, and notes the
    /// tar size of a compressed archive (and what its delta kept).
    fn close_archive(&mut self) -> Result<Option<PartJob>, BackupError> {
        if let Some(d) = self.delta.as_mut()
            && let Some(f) = d.current.take()
        {
            let name = self.open.as_ref().map(|a| a.name.as_str()).unwrap_or("?");
            f.finish().map_err(|e| proto(&format!("block delta of archive {name}: {e}")))?;
            d.replaced.extend(f.replaced);
            d.stats.files += f.stats.files;
            d.stats.blocks_seen += f.stats.blocks_seen;
            d.stats.blocks_kept += f.stats.blocks_kept;
        }
        let Some(mut a) = self.open.take() else { return Ok(None) };
        if self.mode.is_server()
            && let Some(info) = self.archives.get_mut(a.idx)
        {
            info.tar_bytes = self.tar_progress.checked_sub(a.tar_start).filter(|&n| n > 0);
        }
        if a.buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.cut(&mut a)))
    }

    fn cut(&self, a: &mut OpenArchive) -> PartJob {
        let raw = a.buf.split().freeze();
        let job = PartJob {
            archive: a.idx,
            archive_name: a.name.clone(),
            index: a.next_index,
            offset: a.offset,
            raw,
            codec: self.mode.codec(),
            tar_mark: self.mode.is_server().then_some(self.tar_progress),
        };
        a.offset += job.raw.len() as u64;
        a.next_index += 1;
        job
    }
}

async fn submit(uploader: &mut Uploader, job: PartJob, cancel: &CancellationToken) -> Result<(), BackupError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(BackupError::Cancelled),
        r = uploader.submit(job) => r,
    }
}

fn options(opts: &BackupOptions, mode: Mode, dialect: BaseBackupDialect, incremental: bool) -> String {
    if dialect == BaseBackupDialect::Keywords {
        // 14: no server compression (Mode::first chose ours).
        let mut o = format!("LABEL {} PROGRESS", quote_literal(&opts.label));
        if opts.checkpoint == crate::CheckpointMode::Fast {
            o.push_str(" FAST");
        }
        o.push_str(" NOWAIT MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C' TABLESPACE_MAP");
        if let Some(r) = opts.max_rate_kbps {
            o.push_str(&format!(" MAX_RATE {r}"));
        }
        return o;
    }
    let mut o = format!(
        "(LABEL {}, PROGRESS, CHECKPOINT '{}', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP",
        quote_literal(&opts.label),
        opts.checkpoint.as_str()
    );
    if incremental {
        o.push_str(", INCREMENTAL");
    }
    // With server-side compression the server's CPU compresses (faster
    // than the network and storage in practice, and it frees ours); the
    // frames are stored untouched. The manifest still arrives uncompressed.
    match mode {
        Mode::Server(Algorithm::Lz4) => o.push_str(", COMPRESSION 'lz4'"),
        Mode::Server(Algorithm::Zstd) => {
            o.push_str(&format!(", COMPRESSION 'zstd', COMPRESSION_DETAIL 'level={}'", opts.zstd_level))
        }
        Mode::Plain(_) => {}
    }
    if let Some(r) = opts.max_rate_kbps {
        o.push_str(&format!(", MAX_RATE {r}"));
    }
    o.push(')');
    o
}

/// Whether the server refused to compress with `a` because it was built
/// without it: 15 says "lz4 compression is not supported by this build"
/// (0A000), 16 and later "invalid compression specification: this build
/// does not support compression with LZ4" (42601).
fn server_cannot(e: &BackupError, a: Algorithm) -> Option<String> {
    let BackupError::Pg(e) = e else { return None };
    let p = e.pg_error()?;
    let m = p.message.to_lowercase();
    let refused = m.contains(a.as_str()) && (m.contains("not supported") || m.contains("does not support"));
    (matches!(p.code.as_str(), "0A000" | "42601") && refused).then(|| p.message.clone())
}

async fn run(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    conn_cfg: &ConnConfig,
    source: &Source,
    id: &BackupId,
    opts: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<BackupInfo, BackupError> {
    let progress = opts.progress.clone();
    let mut parent = source.parent.clone();
    // The slot must exist before the backup's checkpoint, so that the WAL
    // from its redo point stays on the server until it is stored.
    let mut fetcher = match opts.wal_mode {
        WalMode::Auto => Some(WalFetcher::open(conn_cfg).await?),
        WalMode::Stream => None,
    };
    let baseline = match opts.wal_mode {
        WalMode::Auto => stored_end(repo, source.tli, source.xlogpos).await?,
        WalMode::Stream => None,
    };
    progress.set_phase(BackupPhase::Checkpoint);
    tracing::info!(checkpoint = opts.checkpoint.as_str(), "waiting for the server's backup checkpoint");
    let delta = parent.as_ref().is_some_and(|p| p.method == IncrementalMethod::Delta);
    let mut mode = if delta { Mode::for_delta(opts.compression) } else { Mode::first(opts.compression, repo.major()) };
    if opts.compression == Compression::Auto && !mode.is_server() && !delta {
        tracing::info!("PostgreSQL {} cannot compress base backups: compressing with lz4 here", repo.major());
    }
    let rx = loop {
        let native = parent.as_ref().filter(|p| p.method == IncrementalMethod::Native);
        if let Some(p) = native {
            // Uploaded again for every attempt: one manifest, one BASE_BACKUP.
            conn.upload_manifest(&p.manifest).await.map_err(|e| refused_parent(p, e.into()))?;
        }
        let job = Job { id, mode, native: native.is_some(), delta: parent.as_ref().filter(|_| delta) };
        let err = match receive(repo, conn, &job, opts, cancel).await {
            Ok(rx) => break rx,
            Err(e) => e,
        };
        if let Some(p) = native
            && server_refused(&err)
            && server_cannot(&err, mode_algorithm(mode)).is_none()
        {
            if matches!(opts.incremental, IncrementalMode::Require(_)) {
                return Err(refused_parent(p, err));
            }
            tracing::warn!(parent = %p.info.id, "taking a full backup instead of an incremental one: {err}");
            parent = None;
            continue;
        }
        let Mode::Server(a) = mode else { return Err(err) };
        match server_cannot(&err, a) {
            Some(msg) if opts.compression == Compression::Auto => {
                tracing::warn!("the server cannot compress ({msg}); compressing with {} here instead", a.as_str());
                mode = Mode::Plain(client_codec(a));
            }
            Some(msg) => {
                return Err(BackupError::Invalid(format!(
                    "the server cannot compress the backup: {msg}; use --compress client-{}",
                    a.as_str()
                )));
            }
            None => return Err(err),
        }
    };
    let storage = repo.storage().clone();
    let failures = rx.failures;
    let (start_lsn, tli) = rx.started.ok_or_else(|| proto("the backup never started"))?;
    let raw_manifest = rx.manifest.ok_or_else(|| proto("the server sent no backup manifest"))?.freeze();
    if let Some(p) = &parent {
        check_increment(p, start_lsn, &raw_manifest, rx.delta.is_some())?;
    }
    // A delta's manifest lists what is stored: the parts of files kept in part.
    let raw_manifest = match &rx.delta {
        Some(d) => {
            tracing::info!(
                files = d.stats.files,
                blocks = d.stats.blocks_seen,
                kept = d.stats.blocks_kept,
                "block delta: relation files kept in part"
            );
            Bytes::from(crate::delta::rewrite_manifest(&raw_manifest, &d.replaced).map_err(|e| proto(&e))?)
        }
        None => raw_manifest,
    };
    let manifest = Manifest::parse(&raw_manifest).map_err(|e| proto(&format!("backup manifest: {e}")))?;
    if let Some(sysid) = manifest.system_identifier
        && sysid != repo.binding().system_identifier
    {
        return Err(proto(&format!(
            "backup manifest names system identifier {sysid}, the repository's cluster is {}",
            repo.binding().system_identifier
        )));
    }
    let (stop_lsn, stop_tli) = match (rx.finished, manifest.stop()) {
        (Some(f), Some(m)) if f != m => {
            return Err(proto(&format!("the server's stop position {} differs from its manifest's {}", f.0, m.0)));
        }
        (Some(f), _) => f,
        (None, Some(m)) => m,
        (None, None) => return Err(proto("the backup has no stop position")),
    };
    if stop_tli != tli {
        return Err(BackupError::Invalid(format!(
            "the server changed timeline during the backup ({tli} to {stop_tli}); take it again"
        )));
    }
    let stop_time = jiff::Timestamp::now();
    if !failures.is_empty() && !opts.allow_checksum_failures {
        return Err(BackupError::ChecksumFailures(failures));
    }

    let manifest_obj = {
        let raw = raw_manifest.clone();
        tokio::task::spawn_blocking(move || encode_part(tli, 0, &raw, Codec::Lz4, 0))
            .await
            .map_err(|e| BackupError::Invalid(format!("internal error: {e}")))?
    };
    let manifest_stored = manifest_obj.len() as u64;
    put_retrying(storage.as_ref(), &id.manifest_key(), manifest_obj, opts.upload_timeout).await?;

    progress.set_phase(BackupPhase::Wal);
    let started = rx.started_at.unwrap_or_else(std::time::Instant::now);
    let need = WalNeed {
        tli,
        start: start_lsn,
        stop: stop_lsn,
        started,
        baseline,
        system_identifier: source.identity.system_identifier,
    };
    let wal_source = ensure_wal(repo, need, fetcher.as_mut(), opts, cancel).await?;
    if let Some(f) = fetcher {
        f.conn.close().await;
    }

    let size_bytes = rx.archives.iter().map(ArchiveInfo::tar_size).sum();
    let stored_bytes = rx.archives.iter().map(|a| a.stored_bytes).sum::<u64>() + manifest_stored;
    let zstd = matches!(rx.mode, Mode::Server(Algorithm::Zstd) | Mode::Plain(Codec::Zstd));
    Ok(BackupInfo {
        format_version: backup::format_version(zstd, parent.is_some()),
        id: id.to_string(),
        label: opts.label.clone(),
        status: BackupStatus::Complete,
        timeline: tli,
        start_lsn,
        stop_lsn,
        start_time: format!("{:.6}", rx.start_time.unwrap_or(stop_time)),
        stop_time: format!("{stop_time:.6}"),
        pg_version_num: source.identity.pg_version_num,
        system_identifier: source.identity.system_identifier,
        archives: rx.archives,
        manifest: ManifestInfo { size: raw_manifest.len() as u64, crc: crc32fast::hash(&raw_manifest) },
        size_bytes,
        stored_bytes,
        file_count: manifest.files.len() as u64,
        checksum_failures: failures,
        wal_source,
        compression: Some(mode.compression().as_str().to_string()),
        pgpitr_version: format!("pgpitr {}", env!("CARGO_PKG_VERSION")),
        keep_forever: opts.keep_forever,
        incremental: parent.as_ref().map(Parent::incremental),
    })
}

/// Whether a backup taken as an increment of `p` can be kept as one: it
/// starts after its parent (not from a standby behind it), and a block
/// delta holds no database made again since the parent.
fn check_increment(p: &Parent, start: Lsn, raw_manifest: &[u8], delta: bool) -> Result<(), BackupError> {
    if start <= p.info.start_lsn {
        return Err(BackupError::IncrementalUnusable(format!(
            "the backup starts at {start}, not after its parent {} (at {}): is the server a standby behind it?",
            p.info.id, p.info.start_lsn
        )));
    }
    if !delta {
        return Ok(());
    }
    let again = crate::delta::recreated_databases(&p.manifest, raw_manifest).map_err(|e| proto(&e))?;
    if let Some(first) = again.first() {
        return Err(BackupError::IncrementalUnusable(format!(
            "database directory {first} was made again since backup {} (a newer PG_VERSION{}): a block delta \
             cannot hold it",
            p.info.id,
            if again.len() > 1 { format!("; {} directories in all", again.len()) } else { String::new() }
        )));
    }
    Ok(())
}

fn mode_algorithm(mode: Mode) -> Algorithm {
    match mode {
        Mode::Server(a) => a,
        Mode::Plain(_) => Algorithm::Lz4,
    }
}

/// Whether the server answered the command with an error of its own
/// (rather than the connection or storage failing).
fn server_refused(e: &BackupError) -> bool {
    matches!(e, BackupError::Pg(p) if p.pg_error().is_some() && !p.is_transient())
}

/// The server would not take an incremental backup from `p`.
fn refused_parent(p: &Parent, e: BackupError) -> BackupError {
    if !server_refused(&e) {
        return e;
    }
    BackupError::Invalid(format!(
        "the server refused an incremental backup from backup {} (start {} on timeline {}): {e}",
        p.info.id, p.info.start_lsn, p.info.timeline
    ))
}

/// Runs BASE_BACKUP and stores every archive part; returns once all parts
/// are durable. Nothing is stored before the server has started the backup,
/// so a refusal of the options can be retried with others.
/// One attempt at the backup: where it goes, how it is compressed, and
/// what it is incremental to.
struct Job<'a> {
    id: &'a BackupId,
    mode: Mode,
    /// `BASE_BACKUP (INCREMENTAL)`, the parent's manifest uploaded.
    native: bool,
    /// A block delta against this parent.
    delta: Option<&'a Parent>,
}

async fn receive(
    repo: &Repository,
    conn: &mut ReplicationConnection,
    job: &Job<'_>,
    opts: &BackupOptions,
    cancel: &CancellationToken,
) -> Result<Received, BackupError> {
    let (id, mode) = (job.id, job.mode);
    let progress = opts.progress.clone();
    let storage = repo.storage().clone();
    let mut rx = Received::new(mode);
    if job.delta.is_some() {
        rx.delta = Some(DeltaState::default());
    }
    let mut bb = conn.base_backup(&options(opts, mode, repo.major().base_backup(), job.native)).await?;
    // The timeline is known only once the backup has started.
    let mut uploader: Option<Uploader> = None;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Err(BackupError::Cancelled),
            m = bb.next() => m,
        };
        for notice in bb.take_notices() {
            if let Some(f) = parse_checksum_notice(&notice.message) {
                rx.failures.push(f);
            }
        }
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) if e.pg_error().is_some_and(|p| p.code == DATA_CORRUPTED) && rx.manifest.is_some() => {
                // Everything was sent; the server reports the failures instead of the end position.
                let message = e.pg_error().map(|p| p.message.clone()).unwrap_or_default();
                tracing::warn!("server: {message}");
                if rx.failures.is_empty() {
                    rx.failures.push(ChecksumFailure { file: None, block: None, message });
                }
                break;
            }
            Err(e) => return Err(e.into()),
        };
        match msg {
            BaseBackupMessage::Started { start_lsn, tli, tablespaces } => {
                let total_kb: u64 = tablespaces.iter().filter_map(|t| t.size).sum();
                progress.total_estimate.store(total_kb.saturating_mul(1024), std::sync::atomic::Ordering::Relaxed);
                progress.set_phase(BackupPhase::Streaming);
                tracing::info!(
                    %start_lsn, %tli, tablespaces = tablespaces.len(), compression = ?mode,
                    "backup checkpoint done, receiving files"
                );
                rx.started = Some((start_lsn, tli));
                rx.start_time = Some(jiff::Timestamp::now());
                rx.started_at = Some(std::time::Instant::now());
                uploader = Some(Uploader::new(
                    opts.zstd_level,
                    storage.clone(),
                    id.clone(),
                    tli,
                    opts.max_in_flight,
                    opts.upload_timeout,
                    progress.clone(),
                ));
            }
            BaseBackupMessage::Archive { name, tablespace_location } => {
                let up = uploader.as_mut().ok_or_else(|| proto("an archive began before the backup started"))?;
                if let Some(job) = rx.close_archive()? {
                    submit(up, job, cancel).await?;
                }
                let (stem, compression) =
                    backup::archive_name(&name).ok_or_else(|| proto(&format!("unexpected archive name {name:?}")))?;
                if compression != mode.archive_compression() {
                    return Err(proto(&format!("archive {name:?} is not compressed as requested ({mode:?})")));
                }
                let stem = stem.to_string();
                if rx.archives.iter().any(|a| a.name == stem) {
                    return Err(proto(&format!("archive {name:?} sent twice")));
                }
                let oid = (stem != backup::BASE_ARCHIVE).then(|| stem.parse::<u32>()).transpose().ok().flatten();
                rx.archives.push(ArchiveInfo {
                    name: stem.clone(),
                    tablespace_oid: oid,
                    tablespace_location,
                    parts: Vec::new(),
                    raw_bytes: 0,
                    stored_bytes: 0,
                    compression,
                    tar_bytes: None,
                });
                if let (Some(d), Some(p)) = (rx.delta.as_mut(), job.delta) {
                    d.current = Some(DeltaFilter::new(p.info.start_lsn, p.files.clone(), oid));
                }
                rx.open = Some(OpenArchive {
                    idx: rx.archives.len() - 1,
                    name: stem,
                    offset: 0,
                    next_index: 0,
                    buf: BytesMut::with_capacity(opts.part_size),
                    tar_start: rx.tar_progress,
                });
            }
            BaseBackupMessage::Data(mut d) => {
                if let Some(m) = rx.manifest.as_mut() {
                    m.extend_from_slice(&d);
                    continue;
                }
                let up = uploader.as_mut().ok_or_else(|| proto("data before the backup started"))?;
                let mut a = rx.open.take().ok_or_else(|| proto("data before any archive"))?;
                if !mode.is_server() {
                    BackupProgress::add(&progress.received, d.len() as u64);
                }
                if let Some(f) = rx.delta.as_mut().and_then(|x| x.current.as_mut()) {
                    let mut out = Vec::with_capacity(d.len() + 1024);
                    f.feed(&d, &mut out).map_err(|e| proto(&format!("archive {}: {e}", a.name)))?;
                    d = Bytes::from(out);
                }
                while !d.is_empty() {
                    let take = (opts.part_size - a.buf.len()).min(d.len());
                    a.buf.extend_from_slice(&d.split_to(take));
                    if a.buf.len() == opts.part_size {
                        let job = rx.cut(&mut a);
                        a.buf.reserve(opts.part_size);
                        submit(up, job, cancel).await?;
                    }
                }
                rx.open = Some(a);
            }
            BaseBackupMessage::Progress(n) => {
                rx.tar_progress = n;
                if mode.is_server() {
                    BackupProgress::raise(&progress.received, n);
                }
            }
            BaseBackupMessage::ManifestStart => {
                let up = uploader.as_mut().ok_or_else(|| proto("manifest before the backup started"))?;
                if let Some(job) = rx.close_archive()? {
                    submit(up, job, cancel).await?;
                }
                rx.manifest = Some(BytesMut::new());
            }
            BaseBackupMessage::Finished { end_lsn, tli } => rx.finished = Some((end_lsn, tli)),
        }
    }
    drop(bb);
    tracing::debug!(
        received = BackupProgress::get(&progress.received),
        estimate = BackupProgress::get(&progress.total_estimate),
        "all archives received"
    );
    let mut uploader = uploader.ok_or_else(|| proto("the server sent no backup"))?;
    if let Some(job) = rx.close_archive()? {
        submit(&mut uploader, job, cancel).await?;
    }
    let parts = tokio::select! {
        _ = cancel.cancelled() => return Err(BackupError::Cancelled),
        r = uploader.finish() => r?,
    };
    for (idx, part) in parts {
        let a = rx.archives.get_mut(idx).ok_or_else(|| proto("part of an unknown archive"))?;
        a.raw_bytes += part.raw_len;
        a.stored_bytes += part.stored_len;
        a.parts.push(part);
    }
    for a in &mut rx.archives {
        a.parts.sort_by_key(|p| p.index);
        if a.parts.iter().enumerate().any(|(i, p)| p.index as usize != i) {
            return Err(BackupError::Invalid(format!(
                "internal error: parts of archive {} are not contiguous",
                a.name
            )));
        }
    }
    if !rx.archives.iter().any(|a| a.name == backup::BASE_ARCHIVE) {
        return Err(proto("the server sent no base archive"));
    }
    Ok(rx)
}

fn proto(msg: &str) -> BackupError {
    BackupError::Protocol(msg.to_string())
}
