//! The repository: what pgpitr keeps in a [`Storage`] and how it is laid out.
//!
//! A repository belongs to exactly one PostgreSQL cluster. `pgpitr init`
//! writes the binding object (`pgpitr.json`) with a create-if-absent put, so
//! two concurrent inits cannot both win, and every later command opens the
//! repository through [`Repository::open`] and checks the binding against the
//! server it talks to with [`Repository::check_cluster`].

pub mod backup;
pub mod catalog;
pub mod chain;
pub mod copy;
pub mod drills;
pub mod flat;
pub mod increment;
pub mod keys;
pub mod layout;
pub mod lease;
pub mod migrate;
pub mod mirror;
pub mod object;
pub mod reader;
pub mod retention;
pub mod verify;
pub mod wal;

use bytes::Bytes;
use pgpitr_storage::{PutOutcome, RepoUrl, Storage, StorageError};
pub use pgpitr_types::ClusterIdentity;
use pgpitr_types::{PgMajor, WalSegSize};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Bumped when the object layout changes incompatibly. Format 1 kept a
/// timeline's WAL in one directory; it is still read and written, through
/// [`flat::Flat`], and `pgpitr migrate` moves it to this one.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format this pgpitr reads.
pub const OLDEST_FORMAT: u32 = 1;
/// Format 2 with every object sealed ([`Encryption`]): a pgpitr that does
/// not know it refuses the repository instead of mixing plain objects in.
pub const ENCRYPTED_FORMAT: u32 = 3;
/// Names the key file of an encrypted repository, for every command (and
/// for `wal-fetch`, from the server's environment).
pub const KEY_FILE_ENV: &str = "PGPITR_KEY_FILE";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("repository {location} is not initialised: run `pgpitr init` first")]
    NotInitialised { location: String },
    #[error(
        "repository {location} belongs to another cluster: it is bound to system identifier {bound}, \
         but the server has {found}; use a separate repository per cluster"
    )]
    OtherCluster { location: String, bound: u64, found: u64 },
    #[error("repository {location} {what} differs: repository has {bound}, server has {found}")]
    Mismatch { location: String, what: &'static str, bound: String, found: String },
    #[error(
        "repository {location} holds PostgreSQL {bound}, but the server runs PostgreSQL {found}: after pg_upgrade, \
         stream into a new repository (another directory or bucket prefix) and keep this one for restores of the \
         old cluster"
    )]
    OtherMajor { location: String, bound: u32, found: u32 },
    #[error("repository {location}: {source}")]
    UnsupportedMajor { location: String, source: pgpitr_types::UnsupportedMajor },
    #[error(
        "repository {location} has format version {found}; this pgpitr understands {OLDEST_FORMAT} to {ENCRYPTED_FORMAT}: use a newer pgpitr"
    )]
    Format { location: String, found: u32 },
    #[error("{0}")]
    Busy(String),
    #[error(
        "repository {location}: {key} has format version {found}; this pgpitr reads up to {reads}: use a newer pgpitr"
    )]
    NewerFormat { location: String, key: String, found: u32, reads: u32 },
    #[error("repository {location}: corrupt object {key}: {reason}")]
    Corrupt { location: String, key: String, reason: String },
    #[error("repository {location}: {reason}")]
    Encryption { location: String, reason: String },
    #[error(
        "repository {location} stores objects with {bound} (pgpitr.json), but the URL gives {found}: a writer must give \
         the same S3 parameters"
    )]
    Placement { location: String, bound: String, found: String },
    #[error("repository {location}: no complete backup {id}")]
    NoSuchBackup { location: String, id: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

impl RepoError {
    /// An object that was listed is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RepoError::Storage(e) if e.is_not_found())
    }
}

/// How often a reading of the repository starts again from a new listing.
const RELISTS: u32 = 3;

/// Runs `read` (which lists the repository, then reads what it listed)
/// again while it fails because a listed object was gone by the time it was
/// read: a running stream deletes the pieces of its unfinished segment once
/// it has merged them, and complete segments' pieces once they are stored.
/// `vanished` tells that error from others.
pub async fn relisting<T, E, Fut>(vanished: impl Fn(&E) -> bool, mut read: impl FnMut() -> Fut) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match read().await {
            Err(e) if attempt < RELISTS && vanished(&e) => {
                attempt += 1;
                tracing::debug!(attempt, "an object listed was deleted since; listing again");
            }
            r => return r,
        }
    }
}

/// The binding object, `pgpitr.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub format_version: u32,
    /// A string because JSON readers commonly lose precision above 2^53.
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    pub pg_major: u32,
    pub pg_version_num: u32,
    pub wal_segment_size: WalSegSize,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_by: String,
    /// How the repository is encrypted; `None`: it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Where S3 keeps the objects, as the URL said at `init`: writers must
    /// say the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_placement: Option<S3Placement>,
}

/// S3 server-side encryption and storage classes of a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_storage_class: Option<String>,
}

impl S3Placement {
    /// What `url` asks for; `None` for a local directory or plain S3.
    pub fn of(url: &RepoUrl) -> Option<S3Placement> {
        let RepoUrl::S3(s) = url else { return None };
        let p = S3Placement {
            sse: s.sse.clone(),
            wal_storage_class: s.wal_storage_class.clone(),
            backup_storage_class: s.backup_storage_class.clone(),
        };
        (p != S3Placement::default()).then_some(p)
    }

    fn describe(p: &Option<S3Placement>) -> String {
        let p = p.clone().unwrap_or_default();
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        format!(
            "sse={} wal-storage-class={} backup-storage-class={}",
            show(&p.sse),
            show(&p.wal_storage_class),
            show(&p.backup_storage_class)
        )
    }
}

/// An encrypted repository's binding says which key wraps its data keys
/// (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `aes-256-gcm`.
    pub cipher: String,
    /// The key that wraps new data keys.
    pub kek: pgpitr_crypt::kek::KekId,
    /// Keys rotated away from but not retired: still accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<pgpitr_crypt::kek::KekId>,
    /// When writers make a new data key.
    #[serde(default)]
    pub data_keys: DataKeySpan,
}

/// A writer makes a new data key after sealing `max_bytes` with the
/// current one or after `max_age_seconds`, whichever comes first: each
/// new key is one call to the key-encryption key (KMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeySpan {
    pub max_bytes: u64,
    pub max_age_seconds: u64,
}

impl Default for DataKeySpan {
    fn default() -> Self {
        let s = pgpitr_crypt::storage::Span::default();
        DataKeySpan { max_bytes: s.bytes, max_age_seconds: s.time.as_secs() }
    }
}

impl DataKeySpan {
    fn span(&self) -> pgpitr_crypt::storage::Span {
        pgpitr_crypt::storage::Span {
            bytes: self.max_bytes,
            time: std::time::Duration::from_secs(self.max_age_seconds),
        }
    }
}

/// The key-encryption key a command was given, if any.
pub type Kek = Option<Arc<dyn pgpitr_crypt::kek::KeyEncryptionKey>>;

/// Names an AWS KMS key (ID, ARN or alias) that wraps the data keys of an
/// encrypted repository, instead of a key file.
pub const KMS_KEY_ENV: &str = "PGPITR_KMS_KEY_ID";

/// The key-encryption key the environment names: a key file
/// ([`KEY_FILE_ENV`]) or an AWS KMS key ([`KMS_KEY_ENV`], reached through
/// the standard AWS chain), not both.
pub async fn key_from_env() -> Result<Kek> {
    let file = std::env::var_os(KEY_FILE_ENV).filter(|v| !v.is_empty());
    let kms = std::env::var(KMS_KEY_ENV).ok().filter(|v| !v.is_empty());
    let refuse = |reason: String| RepoError::Encryption { location: "the environment".into(), reason };
    match (file, kms) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(refuse(format!("both {KEY_FILE_ENV} and {KMS_KEY_ENV} are set: set one"))),
        (Some(p), None) => {
            let kek = pgpitr_crypt::kek::FileKek::load(std::path::Path::new(&p))
                .map_err(|e| refuse(format!("{KEY_FILE_ENV}: {e}")))?;
            Ok(Some(Arc::new(kek)))
        }
        (None, Some(id)) => Ok(Some(Arc::new(pgpitr_crypt::kms::KmsKek::new(&id).await))),
    }
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What a command does to the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only (`list`, `verify`, `restore`, `wal-fetch`): read-only
    /// credentials suffice, and nothing is written to check them.
    Read,
    /// Writes (`init`, `stream`, `backup`, `expire`): the storage is first
    /// checked to take writes ([`Storage::check`]), so that a bad bucket or
    /// credentials fail the command at once, not at its first upload.
    Write,
}

/// The storage at `url`, behind retries: every command's one way to it.
pub async fn connect(url: &RepoUrl, access: Access) -> Result<Arc<dyn Storage>> {
    let storage = pgpitr_storage::connect(url, pgpitr_storage::RetryPolicy::default()).await?;
    if access == Access::Write {
        storage.check().await?;
    }
    Ok(storage)
}

/// Reads and parses `pgpitr.json`, whatever its format.
pub async fn read_binding(storage: &dyn Storage) -> Result<Binding> {
    let location = storage.describe();
    let raw = match storage.get(layout::BINDING).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(RepoError::NotInitialised { location }),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&raw).map_err(|e| RepoError::Corrupt {
        location,
        key: layout::BINDING.to_string(),
        reason: e.to_string(),
    })
}

/// Whether `init` created the binding or found it already in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyBound,
}

/// An opened repository whose binding has been read and validated.
#[derive(Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    binding: Binding,
    major: PgMajor,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.storage.describe())
            .field("binding", &self.binding)
            .finish()
    }
}

impl Repository {
    /// Binds an empty repository to `identity`, or confirms an existing
    /// binding to the same cluster. Never overwrites a binding.
    pub async fn init(storage: Arc<dyn Storage>, identity: &ClusterIdentity) -> Result<(Repository, InitOutcome)> {
        Self::init_with(storage, identity, key_from_env().await?).await
    }

    /// [`Repository::init`] at `url` for a writer: the S3 placement the URL
    /// asks for is recorded by a new binding, and must match an existing one.
    /// `data_keys` is for a new encrypted repository; an existing one must
    /// have been made with the same.
    pub async fn bind(
        url: &RepoUrl,
        identity: &ClusterIdentity,
        data_keys: Option<DataKeySpan>,
    ) -> Result<(Repository, InitOutcome)> {
        let storage = connect(url, Access::Write).await?;
        let placement = S3Placement::of(url);
        let kek = key_from_env().await?;
        let location = storage.describe();
        let refuse = |reason: String| Err(RepoError::Encryption { location: location.clone(), reason });
        if data_keys.is_some() && kek.is_none() {
            return refuse(format!("data-key options need a key ({KEY_FILE_ENV} or {KMS_KEY_ENV})"));
        }
        let (repo, outcome) = Self::init_placed(storage.clone(), identity, kek, placement.clone(), data_keys).await?;
        let bound = repo.binding.encryption.as_ref().map(|e| e.data_keys);
        if let (Some(asked), Some(bound)) = (data_keys, bound)
            && asked != bound
        {
            return refuse(format!(
                "it makes a new data key per {} bytes or {} s, not per {} bytes or {} s as asked",
                bound.max_bytes, bound.max_age_seconds, asked.max_bytes, asked.max_age_seconds
            ));
        }
        if repo.binding.s3_placement != placement {
            return Err(RepoError::Placement {
                location: storage.describe(),
                bound: S3Placement::describe(&repo.binding.s3_placement),
                found: S3Placement::describe(&placement),
            });
        }
        Ok((repo, outcome))
    }

    /// [`Repository::init`] with the key given: an encrypted repository
    /// with `Some`.
    pub async fn init_with(
        storage: Arc<dyn Storage>,
        identity: &ClusterIdentity,
        kek: Kek,
    ) -> Result<(Repository, InitOutcome)> {
        Self::init_placed(storage, identity, kek, None, None).await
    }

    async fn init_placed(
        storage: Arc<dyn Storage>,
        identity: &ClusterIdentity,
        kek: Kek,
        s3_placement: Option<S3Placement>,
        data_keys: Option<DataKeySpan>,
    ) -> Result<(Repository, InitOutcome)> {
        // Nothing is written for a major pgpitr cannot read.
        Self::supported(&storage, identity.pg_major())?;
        let encryption = kek.as_ref().map(|k| Encryption {
            cipher: "aes-256-gcm".into(),
            kek: k.id(),
            previous: Vec::new(),
            data_keys: data_keys.unwrap_or_default(),
        });
        let binding = Binding {
            format_version: if encryption.is_some() { ENCRYPTED_FORMAT } else { FORMAT_VERSION },
            system_identifier: identity.system_identifier,
            pg_major: identity.pg_major(),
            pg_version_num: identity.pg_version_num,
            wal_segment_size: identity.wal_segment_size,
            created_at: jiff::Timestamp::now().to_string(),
            created_by: format!("pgpitr {}", env!("CARGO_PKG_VERSION")),
            encryption,
            s3_placement,
        };
        let body = serde_json::to_vec_pretty(&binding).expect("binding serialises");
        match storage.put_if_absent(layout::BINDING, Bytes::from(body)).await? {
            PutOutcome::Created => {
                let repo = Repository::open_with(storage, kek).await?;
                Ok((repo, InitOutcome::Created))
            }
            PutOutcome::AlreadyExists => {
                let repo = Repository::open_with(storage, kek).await?;
                repo.check_cluster(identity)?;
                Ok((repo, InitOutcome::AlreadyBound))
            }
        }
    }

    /// Opens the repository at `url` that `pgpitr init` has bound.
    pub async fn open_url(url: &RepoUrl, access: Access) -> Result<Repository> {
        Repository::open(connect(url, access).await?).await
    }

    /// Opens a repository that `pgpitr init` has bound, with the key that
    /// [`KEY_FILE_ENV`] names, if any.
    pub async fn open(storage: Arc<dyn Storage>) -> Result<Repository> {
        Self::open_with(storage, key_from_env().await?).await
    }

    /// Opens a repository with the key given. An encrypted repository
    /// needs its key; a plain one is refused a key: a repository is never
    /// part plain, part encrypted.
    pub async fn open_with(storage: Arc<dyn Storage>, kek: Kek) -> Result<Repository> {
        let location = storage.describe();
        let binding = read_binding(storage.as_ref()).await?;
        let storage: Arc<dyn Storage> = match (binding.format_version, &binding.encryption) {
            (FORMAT_VERSION, None) => storage,
            (1, None) => Arc::new(flat::Flat::new(storage)),
            (ENCRYPTED_FORMAT, Some(_)) => storage,
            (found, _) => return Err(RepoError::Format { location, found }),
        };
        let refuse = |reason: String| Err(RepoError::Encryption { location: location.clone(), reason });
        let storage: Arc<dyn Storage> = match (&binding.encryption, kek) {
            (None, None) => storage,
            (None, Some(_)) => {
                return refuse(format!(
                    "it is not encrypted, but a key was given ({KEY_FILE_ENV}): unset it for this repository"
                ));
            }
            (Some(e), None) => {
                return refuse(format!(
                    "it is encrypted (key {} {}): set {KEY_FILE_ENV} to its key file, or {KMS_KEY_ENV} to its KMS key",
                    e.kek.kind, e.kek.id
                ));
            }
            (Some(e), Some(k)) if k.id() != e.kek && !e.previous.contains(&k.id()) => {
                return refuse(format!(
                    "it is encrypted with key {} {}, and the key given is {} {}",
                    e.kek.kind,
                    e.kek.id,
                    k.id().kind,
                    k.id().id
                ));
            }
            (Some(e), Some(k)) => {
                let keys = pgpitr_crypt::storage::Keys::new(vec![k], binding.system_identifier, e.data_keys.span());
                // The largest object a writer seals: a segment's, encoded.
                let largest = object::encode_pool(0, binding.wal_segment_size.bytes() as usize).buf_len();
                Arc::new(pgpitr_crypt::storage::EncryptedStorage::new(storage, Arc::new(keys)).recycling(largest))
            }
        };
        let major = Self::supported(&storage, binding.pg_major)?;
        Ok(Repository { storage, binding, major })
    }

    fn supported(storage: &Arc<dyn Storage>, major: u32) -> Result<PgMajor> {
        PgMajor::from_major(major)
            .map_err(|source| RepoError::UnsupportedMajor { location: storage.describe(), source })
    }

    /// Refuses a server that is not the cluster this repository is bound to.
    pub fn check_cluster(&self, identity: &ClusterIdentity) -> Result<()> {
        let location = self.storage.describe();
        let b = &self.binding;
        if b.system_identifier != identity.system_identifier {
            return Err(RepoError::OtherCluster {
                location,
                bound: b.system_identifier,
                found: identity.system_identifier,
            });
        }
        if b.pg_major != identity.pg_major() {
            return Err(RepoError::OtherMajor { location, bound: b.pg_major, found: identity.pg_major() });
        }
        if b.wal_segment_size != identity.wal_segment_size {
            return Err(RepoError::Mismatch {
                location,
                what: "WAL segment size",
                bound: b.wal_segment_size.to_string(),
                found: identity.wal_segment_size.to_string(),
            });
        }
        Ok(())
    }

    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn seg_size(&self) -> WalSegSize {
        self.binding.wal_segment_size
    }

    /// The PostgreSQL major the repository holds.
    pub fn major(&self) -> PgMajor {
        self.major
    }

    pub fn location(&self) -> String {
        self.storage.describe()
    }
}
