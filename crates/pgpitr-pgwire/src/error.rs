//! Errors. Every [`Error`] prints as one line naming what was being done, the
//! server, and the cause, e.g. `cannot connect to 127.0.0.1:5432: password
//! authentication failed for user "archiver"`. [`Error::is_transient`] splits
//! them into "retry with backoff" and "stop and tell the operator".

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// `ERROR`, `FATAL` or `PANIC` (the untranslated severity when the server
    /// sends one).
    pub severity: String,
    /// The SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    /// Decodes the fields of an ErrorResponse or NoticeResponse body.
    pub(crate) fn from_fields(
        mut fields: postgres_protocol::message::backend::ErrorFields<'_>,
    ) -> Result<PgError, String> {
        use fallible_iterator::FallibleIterator;
        let mut severity = None;
        let mut localized_severity = None;
        let mut code = None;
        let mut message = None;
        let mut detail = None;
        let mut hint = None;
        while let Some(f) = fields.next().map_err(|e| format!("malformed error fields: {e}"))? {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => severity = Some(v),
                b'S' => localized_severity = Some(v),
                b'C' => code = Some(v),
                b'M' => message = Some(v),
                b'D' => detail = Some(v),
                b'H' => hint = Some(v),
                _ => {}
            }
        }
        Ok(PgError {
            severity: severity.or(localized_severity).unwrap_or_else(|| "ERROR".to_string()),
            code: code.unwrap_or_else(|| "XX000".to_string()),
            message: message.unwrap_or_else(|| "(no message)".to_string()),
            detail,
            hint,
        })
    }

    /// FATAL and PANIC errors end the session; the server closes the socket.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }

    /// The first double-quoted name in the message, e.g. the slot in
    /// `replication slot "s1" is active for PID 42`.
    fn quoted_name(&self) -> Option<String> {
        let (_, rest) = self.message.split_once('"')?;
        let (name, _) = rest.split_once('"')?;
        Some(name.to_string())
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PgError {}

/// What was being done when the error happened; it starts the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Opening the connection, authenticating, starting the session.
    Connect,
    /// A replication command such as `IDENTIFY_SYSTEM`.
    Command(&'static str),
    /// Receiving WAL after `START_REPLICATION`.
    Stream,
    /// Receiving a base backup.
    BaseBackup,
}

/// The cause of an [`Error`]. Each variant's text is the part after the
/// colon; see [`ErrorKind::is_transient`] for which ones are worth retrying.
/// Causes are part of the message, never chained as `source()`, so nothing
/// prints twice.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The host name did not resolve (transient: DNS may recover).
    #[error("could not translate host name {host:?} to an address: {cause}")]
    Dns { host: String, cause: io::Error },
    /// A socket error such as "connection refused" (transient).
    #[error("{}", describe_io(.0))]
    Io(io::Error),
    /// `connect_timeout` passed before the session was ready (transient).
    #[error("timed out after {} s", .0.as_secs())]
    Timeout(Duration),
    /// The server hung up without an error message (transient).
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The walsender ended COPY with CommandComplete and no CopyDone: what
    /// it does at a clean shutdown, once the client has confirmed all WAL
    /// (transient: the server comes back).
    #[error("the server ended streaming: it is shutting down")]
    ServerShutdown,
    /// The peer broke the protocol; says what was wrong (definite).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// TLS could not be set up as `sslmode` demands: a certificate file,
    /// a server without TLS, a certificate that did not verify (definite).
    #[error("{0}")]
    Tls(String),
    /// Authentication failed (SQLSTATE class 28); names the password file
    /// when the password came from one (definite).
    #[error("{pg}{}", passfile_note(.passfile))]
    Auth { pg: Box<PgError>, passfile: Option<PathBuf> },
    /// The server wants a password and none is configured (definite).
    #[error(
        "the server asked for a password for user {user:?} but none was given (use password=, PGPASSWORD or a .pgpass entry)"
    )]
    NoPassword { user: String },
    /// Kerberos, GSSAPI, SSPI, or SASL without SCRAM-SHA-256 (definite).
    #[error("the server asked for an unsupported authentication method: {0}")]
    UnsupportedAuth(String),
    /// SCRAM failed on our side, e.g. the server's signature did not verify (definite).
    #[error("SCRAM authentication failed: {0}")]
    Scram(String),
    /// pg_hba.conf has no line for this connection; the server's own text
    /// names the host, user and encryption (definite).
    #[error("{0}")]
    NoHbaEntry(Box<PgError>),
    /// The role lacks the REPLICATION attribute (definite).
    #[error("role {user:?} is not allowed to start replication (needs the REPLICATION attribute)")]
    NoReplicationPrivilege { user: String, pg: Box<PgError> },
    /// `max_wal_senders = 0` on the server (definite).
    #[error(
        "replication is disabled on the server (max_wal_senders = 0; set wal_level=replica and max_wal_senders > 0)"
    )]
    ReplicationDisabled(Box<PgError>),
    /// CREATE_REPLICATION_SLOT for a name in use (definite).
    #[error("replication slot {slot:?} already exists")]
    SlotExists { slot: String, pg: Box<PgError> },
    /// No slot of that name (definite).
    #[error("replication slot {slot:?} does not exist")]
    SlotMissing { slot: String, pg: Box<PgError> },
    /// Another walsender holds the slot (transient: often our own previous
    /// session, not yet timed out).
    #[error("{pg}")]
    SlotActive { slot: String, pid: Option<u32>, pg: Box<PgError> },
    /// The requested WAL is gone from the server (definite: there is a gap).
    #[error("{0}")]
    WalRemoved(Box<PgError>),
    /// Any other server error; transient or not by SQLSTATE.
    #[error("{0}")]
    Server(Box<PgError>),
    /// The server is too old for the command (definite).
    #[error("{0}")]
    Unsupported(String),
    /// A caller-supplied value cannot be sent, e.g. a NUL byte (definite).
    #[error("{0}")]
    InvalidArgument(String),
    /// An earlier interruption or error left the connection out of step
    /// with the server; reconnect (definite for this connection).
    #[error("connection is not usable: {0}")]
    Unusable(&'static str),
}

fn passfile_note(passfile: &Option<PathBuf>) -> String {
    match passfile {
        Some(p) => format!(" (password taken from {})", p.display()),
        None => String::new(),
    }
}

/// Short lower-case phrases for the errors people see most.
fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let phrase = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "connection closed while sending (broken pipe)",
        K::UnexpectedEof => "server closed the connection unexpectedly",
        K::TimedOut => "timed out",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::AddrNotAvailable => "address not available",
        K::NotFound => "no such socket (is the server running locally and listening on it?)",
        K::PermissionDenied => "permission denied",
        _ => return e.to_string(),
    };
    phrase.to_string()
}

impl ErrorKind {
    /// Classifies an ErrorResponse. `op` matters: SQLSTATE 42501 while
    /// connecting means "no REPLICATION attribute", later it is generic.
    pub(crate) fn from_pg(pg: PgError, op: Op, user: &str) -> ErrorKind {
        let msg = pg.message.as_str();
        let code = pg.code.as_str();
        if code == "28000" && msg.starts_with("no pg_hba.conf entry") {
            ErrorKind::NoHbaEntry(Box::new(pg))
        } else if code.starts_with("28") {
            ErrorKind::Auth { pg: Box::new(pg), passfile: None }
        } else if code == "42501" && op == Op::Connect {
            ErrorKind::NoReplicationPrivilege { user: user.to_string(), pg: Box::new(pg) }
        } else if code == "53300" && msg.contains("max_wal_senders") && msg.contains("(currently 0)") {
            ErrorKind::ReplicationDisabled(Box::new(pg))
        } else if code == "42710" && msg.starts_with("replication slot") {
            ErrorKind::SlotExists { slot: pg.quoted_name().unwrap_or_default(), pg: Box::new(pg) }
        } else if code == "42704" && msg.starts_with("replication slot") {
            ErrorKind::SlotMissing { slot: pg.quoted_name().unwrap_or_default(), pg: Box::new(pg) }
        } else if code == "55006" && msg.starts_with("replication slot") {
            let pid = msg.rsplit_once("PID ").and_then(|(_, p)| p.trim().parse().ok());
            ErrorKind::SlotActive { slot: pg.quoted_name().unwrap_or_default(), pid, pg: Box::new(pg) }
        } else if code == "58P01" && msg.starts_with("requested WAL segment") {
            ErrorKind::WalRemoved(Box::new(pg))
        } else {
            ErrorKind::Server(Box::new(pg))
        }
    }

    /// True when retrying later may succeed: network trouble, a server that
    /// is starting or shutting down, no free connection slot, a slot still
    /// held by a previous session. False for what needs a person: bad
    /// credentials, missing privileges or configuration, missing slots,
    /// removed WAL, protocol violations.
    pub fn is_transient(&self) -> bool {
        match self {
            // Name lookup failures are often a DNS or service-discovery hiccup.
            ErrorKind::Dns { .. } => true,
            ErrorKind::Io(e) => !matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ),
            ErrorKind::Timeout(_) | ErrorKind::Closed | ErrorKind::ServerShutdown => true,
            // The old walsender may hold the slot until it notices its client is gone.
            ErrorKind::SlotActive { .. } => true,
            ErrorKind::Server(pg) => is_transient_sqlstate(&pg.code),
            ErrorKind::Protocol(_)
            | ErrorKind::Tls(_)
            | ErrorKind::Auth { .. }
            | ErrorKind::NoPassword { .. }
            | ErrorKind::UnsupportedAuth(_)
            | ErrorKind::Scram(_)
            | ErrorKind::NoHbaEntry(_)
            | ErrorKind::NoReplicationPrivilege { .. }
            | ErrorKind::ReplicationDisabled(_)
            | ErrorKind::SlotExists { .. }
            | ErrorKind::SlotMissing { .. }
            | ErrorKind::WalRemoved(_)
            | ErrorKind::Unsupported(_)
            | ErrorKind::InvalidArgument(_)
            | ErrorKind::Unusable(_) => false,
        }
    }

    /// The server's error, when the cause came from one.
    pub fn pg_error(&self) -> Option<&PgError> {
        match self {
            ErrorKind::Auth { pg, .. }
            | ErrorKind::NoHbaEntry(pg)
            | ErrorKind::NoReplicationPrivilege { pg, .. }
            | ErrorKind::ReplicationDisabled(pg)
            | ErrorKind::SlotExists { pg, .. }
            | ErrorKind::SlotMissing { pg, .. }
            | ErrorKind::SlotActive { pg, .. }
            | ErrorKind::WalRemoved(pg)
            | ErrorKind::Server(pg) => Some(&**pg),
            _ => None,
        }
    }
}

/// SQLSTATEs worth retrying: connection exceptions (08), insufficient
/// resources such as too many connections (53), operator intervention
/// (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
/// 57014 query canceled), and serialization failures (40001, 40P01).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "57014" | "40001" | "40P01")
}

/// An error from the replication client: what was being done, against which
/// server, and why.
#[derive(Debug)]
pub struct Error {
    op: Op,
    target: String,
    kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(op: Op, target: impl Into<String>, kind: ErrorKind) -> Error {
        Error { op, target: target.into(), kind }
    }

    pub fn op(&self) -> Op {
        self.op
    }

    /// The server, as `127.0.0.1:5432` or a socket path.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn into_kind(self) -> ErrorKind {
        self.kind
    }

    /// See [`ErrorKind::is_transient`].
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    pub fn pg_error(&self) -> Option<&PgError> {
        self.kind.pg_error()
    }

    /// The SQLSTATE, when the server sent the error.
    pub fn code(&self) -> Option<&str> {
        self.pg_error().map(|e| e.code.as_str())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, k) = (&self.target, &self.kind);
        match self.op {
            Op::Connect => write!(f, "cannot connect to {t}: {k}"),
            Op::Command(c) => write!(f, "{c} on {t} failed: {k}"),
            Op::Stream => write!(f, "WAL streaming from {t} failed: {k}"),
            Op::BaseBackup => write!(f, "base backup from {t} failed: {k}"),
        }
    }
}

// The kind is part of the message, so it is not repeated as a source.
impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(severity: &str, code: &str, message: &str) -> PgError {
        PgError { severity: severity.into(), code: code.into(), message: message.into(), detail: None, hint: None }
    }

    fn render(op: Op, kind: ErrorKind) -> String {
        Error::new(op, "127.0.0.1:5432", kind).to_string()
    }

    #[test]
    fn connect_messages() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(render(Op::Connect, ErrorKind::Io(refused)), "cannot connect to 127.0.0.1:5432: connection refused");
        let k = ErrorKind::from_pg(
            pg("FATAL", "28P01", "password authentication failed for user \"archiver\""),
            Op::Connect,
            "archiver",
        );
        assert!(!k.is_transient());
        assert_eq!(
            render(Op::Connect, k),
            "cannot connect to 127.0.0.1:5432: password authentication failed for user \"archiver\""
        );
        let k = ErrorKind::from_pg(
            pg("FATAL", "42501", "must be superuser or replication role to start walsender"),
            Op::Connect,
            "x",
        );
        assert_eq!(k.to_string(), "role \"x\" is not allowed to start replication (needs the REPLICATION attribute)");
        assert!(!k.is_transient());
        let k = ErrorKind::from_pg(
            pg("FATAL", "53300", "number of requested standby connections exceeds max_wal_senders (currently 0)"),
            Op::Connect,
            "x",
        );
        assert!(matches!(k, ErrorKind::ReplicationDisabled(_)));
        assert!(k.to_string().contains("max_wal_senders = 0"));
        assert!(!k.is_transient());
        let k = ErrorKind::from_pg(
            pg("FATAL", "53300", "number of requested standby connections exceeds max_wal_senders (currently 10)"),
            Op::Connect,
            "x",
        );
        assert!(matches!(k, ErrorKind::Server(_)));
        assert!(k.is_transient(), "all walsender slots busy is worth retrying");
        let k = ErrorKind::from_pg(
            pg("FATAL", "28000", "no pg_hba.conf entry for replication connection from host \"10.0.0.1\", user \"u\""),
            Op::Connect,
            "u",
        );
        assert!(matches!(k, ErrorKind::NoHbaEntry(_)));
        assert!(!k.is_transient());
    }

    #[test]
    fn slot_errors() {
        let k = ErrorKind::from_pg(
            pg("ERROR", "55006", "replication slot \"arch\" is active for PID 4242"),
            Op::Command("START_REPLICATION"),
            "u",
        );
        match &k {
            ErrorKind::SlotActive { slot, pid, .. } => {
                assert_eq!(slot, "arch");
                assert_eq!(*pid, Some(4242));
            }
            other => panic!("{other:?}"),
        }
        assert!(k.is_transient());
        assert_eq!(
            render(Op::Command("START_REPLICATION"), k),
            "START_REPLICATION on 127.0.0.1:5432 failed: replication slot \"arch\" is active for PID 4242"
        );
        let k = ErrorKind::from_pg(
            pg("ERROR", "42710", "replication slot \"arch\" already exists"),
            Op::Command("CREATE_REPLICATION_SLOT"),
            "u",
        );
        assert!(matches!(&k, ErrorKind::SlotExists { slot, .. } if slot == "arch"));
        assert!(!k.is_transient());
        let k = ErrorKind::from_pg(
            pg("ERROR", "42704", "replication slot \"gone\" does not exist"),
            Op::Command("DROP_REPLICATION_SLOT"),
            "u",
        );
        assert!(matches!(&k, ErrorKind::SlotMissing { slot, .. } if slot == "gone"));
        // 42501 outside connect is an ordinary permission error.
        let k = ErrorKind::from_pg(pg("ERROR", "42501", "permission denied"), Op::Command("SHOW"), "u");
        assert!(matches!(k, ErrorKind::Server(_)));
    }

    #[test]
    fn transient_split() {
        for code in ["57P01", "57P03", "08006", "53300", "40001"] {
            assert!(ErrorKind::Server(Box::new(pg("FATAL", code, "x"))).is_transient(), "{code}");
        }
        for code in ["XX000", "42601", "58P01", "0A000"] {
            assert!(!ErrorKind::Server(Box::new(pg("ERROR", code, "x"))).is_transient(), "{code}");
        }
        assert!(ErrorKind::Closed.is_transient());
        assert!(ErrorKind::Timeout(Duration::from_secs(10)).is_transient());
        assert!(ErrorKind::Io(io::Error::from(io::ErrorKind::ConnectionReset)).is_transient());
        assert!(!ErrorKind::Protocol("x".into()).is_transient());
        assert!(!ErrorKind::Tls("the server's certificate did not verify".into()).is_transient());
        let k = ErrorKind::from_pg(
            pg("ERROR", "58P01", "requested WAL segment 000000010000000000000001 has already been removed"),
            Op::Command("START_REPLICATION"),
            "u",
        );
        assert!(matches!(k, ErrorKind::WalRemoved(_)));
        assert!(!k.is_transient());
    }

    #[test]
    fn auth_note_names_passfile() {
        let k = ErrorKind::Auth {
            pg: Box::new(pg("FATAL", "28P01", "password authentication failed for user \"a\"")),
            passfile: Some(PathBuf::from("/home/a/.pgpass")),
        };
        assert_eq!(
            k.to_string(),
            "password authentication failed for user \"a\" (password taken from /home/a/.pgpass)"
        );
        assert_eq!(
            render(Op::Connect, ErrorKind::Timeout(Duration::from_secs(10))),
            "cannot connect to 127.0.0.1:5432: timed out after 10 s"
        );
    }
}
