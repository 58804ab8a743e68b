//! Storage errors, classified so callers (and [`crate::retry`]) can branch on
//! "retrying may help" versus "stop and tell the user".

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The storage operation an error or a fault belongs to.
///
/// `Display` gives the verb used in error messages ("cannot get ..."),
/// [`Op::name`] a stable snake_case name for logs and fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Op {
    Put,
    PutIfAbsent,
    Get,
    GetRange,
    GetStream,
    Head,
    List,
    ListDirs,
    Delete,
    DeleteMany,
    StartUpload,
    PutPart,
    CompleteUpload,
    AbortUpload,
    Check,
    CreateJournal,
    Append,
    CopyObject,
}

impl Op {
    /// Stable snake_case name, e.g. `put_if_absent`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::PutIfAbsent => "put_if_absent",
            Op::Get => "get",
            Op::GetRange => "get_range",
            Op::GetStream => "get_stream",
            Op::Head => "head",
            Op::List => "list",
            Op::ListDirs => "list_dirs",
            Op::Delete => "delete",
            Op::DeleteMany => "delete_many",
            Op::StartUpload => "start_upload",
            Op::PutPart => "put_part",
            Op::CompleteUpload => "complete_upload",
            Op::AbortUpload => "abort_upload",
            Op::Check => "check",
            Op::CreateJournal => "create_journal",
            Op::Append => "append",
            Op::CopyObject => "copy_object",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Op::Put => "write",
            Op::PutIfAbsent => "create",
            Op::Get | Op::GetStream => "read",
            Op::GetRange => "read a range of",
            Op::Head => "stat",
            Op::List => "list",
            Op::ListDirs => "list directories under",
            Op::Delete => "delete",
            Op::DeleteMany => "delete objects in",
            Op::StartUpload => "start an upload of",
            Op::PutPart => "upload a part of",
            Op::CompleteUpload => "complete the upload of",
            Op::AbortUpload => "abort the upload of",
            Op::Check => "use repository",
            Op::CreateJournal => "create the journal",
            Op::Append => "append to",
            Op::CopyObject => "copy into",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())
    }
}

/// An error from a [`crate::Storage`] operation.
///
/// Every variant's `Display` is one line that names the operation, the key
/// (or prefix) and the repository location, then the cause. Messages never
/// contain credentials: they are built from the bucket, endpoint, key and
/// the server's or OS's error text only.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist. Distinct from every other failure so
    /// callers can treat "absent" as a normal answer.
    #[error("cannot {op} {}: not found", Target { key, location })]
    NotFound { op: Op, key: String, location: String },

    /// Retrying will not help: bad credentials, access denied, missing
    /// bucket, malformed request, read-only or full disk, ...
    #[error("cannot {op} {}: {message} (permanent)", Target { key, location })]
    Permanent { op: Op, key: String, location: String, message: String },

    /// May succeed if tried again: 5xx, throttling, timeouts, connection
    /// failures. `retries` is how many times the retry helper already
    /// retried before giving up (0 when no retrying happened).
    #[error("cannot {op} {}: {message} ({})", Target { key, location }, RetryNote(*retries))]
    Transient { op: Op, key: String, location: String, message: String, retries: u32 },

    /// The key (or prefix) violates the key rules (see [`crate::validate_key`]).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },

    /// A repository URL or backend option could not be understood.
    #[error("invalid repository URL: {message}")]
    InvalidUrl { message: String },
}

impl StorageError {
    /// A permanent error; `message` is flattened to one line.
    pub fn permanent(op: Op, key: impl Into<String>, location: impl Into<String>, message: impl fmt::Display) -> Self {
        StorageError::Permanent { op, key: key.into(), location: location.into(), message: one_line(message) }
    }

    /// A transient error that has not been retried yet.
    pub fn transient(op: Op, key: impl Into<String>, location: impl Into<String>, message: impl fmt::Display) -> Self {
        StorageError::Transient {
            op,
            key: key.into(),
            location: location.into(),
            message: one_line(message),
            retries: 0,
        }
    }

    /// A not-found error.
    pub fn not_found(op: Op, key: impl Into<String>, location: impl Into<String>) -> Self {
        StorageError::NotFound { op, key: key.into(), location: location.into() }
    }

    /// True when retrying cannot help. Everything except
    /// [`StorageError::Transient`] is permanent, including `NotFound`.
    pub fn is_permanent(&self) -> bool {
        !self.is_transient()
    }

    /// True for [`StorageError::Transient`].
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }

    /// True for [`StorageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// The operation, when the error belongs to one.
    pub fn op(&self) -> Option<Op> {
        match self {
            StorageError::NotFound { op, .. }
            | StorageError::Permanent { op, .. }
            | StorageError::Transient { op, .. } => Some(*op),
            StorageError::InvalidKey { .. } | StorageError::InvalidUrl { .. } => None,
        }
    }

    /// Records how many retries were made before this error was returned.
    pub(crate) fn with_retries(mut self, n: u32) -> Self {
        if let StorageError::Transient { retries, .. } = &mut self {
            *retries = n;
        }
        self
    }
}

/// `"key" in location`, or just the location when there is no key.
struct Target<'a> {
    key: &'a str,
    location: &'a str,
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() { f.write_str(self.location) } else { write!(f, "{:?} in {}", self.key, self.location) }
    }
}

struct RetryNote(u32);

impl fmt::Display for RetryNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("transient"),
            1 => f.write_str("transient, retried 1 time"),
            n => write!(f, "transient, retried {n} times"),
        }
    }
}

/// Error texts from servers may span lines; keep every message on one line.
pub(crate) fn one_line(message: impl fmt::Display) -> String {
    let s = message.to_string();
    if !s.contains(['\n', '\r']) {
        return s;
    }
    s.split(['\n', '\r']).map(str::trim).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_and_names_everything() {
        let e = StorageError::transient(Op::Get, "wal/1", "s3://b/p", "HTTP 503 SlowDown:\nreduce rate");
        assert_eq!(e.to_string(), r#"cannot read "wal/1" in s3://b/p: HTTP 503 SlowDown: reduce rate (transient)"#);
        let e = e.with_retries(5);
        assert_eq!(
            e.to_string(),
            r#"cannot read "wal/1" in s3://b/p: HTTP 503 SlowDown: reduce rate (transient, retried 5 times)"#
        );
        assert!(e.is_transient() && !e.is_permanent() && !e.is_not_found());

        let e = StorageError::permanent(Op::Check, "", "/repo", "permission denied");
        assert_eq!(e.to_string(), "cannot use repository /repo: permission denied (permanent)");
        assert!(e.is_permanent());

        let e = StorageError::not_found(Op::Head, "a\"b", "/r");
        assert_eq!(e.to_string(), r#"cannot stat "a\"b" in /r: not found"#);
        assert!(e.is_not_found() && e.is_permanent());
        assert_eq!(e.op(), Some(Op::Head));
    }

    #[test]
    fn with_retries_only_touches_transient() {
        let e = StorageError::permanent(Op::Put, "k", "/r", "x").with_retries(3);
        assert!(!e.to_string().contains("retried"));
        let e = StorageError::transient(Op::Put, "k", "/r", "x").with_retries(1);
        assert!(e.to_string().ends_with("(transient, retried 1 time)"));
    }
}
