//! Client for the PostgreSQL physical replication protocol.
//!
//! tokio-postgres has no replication mode, so this crate speaks the protocol
//! itself, using `postgres-protocol`'s message codecs over tokio sockets.
//!
//! ```text
//!  ConnConfig::parse("postgres://archiver@db/…")      conninfo + PG* env + ~/.pgpass
//!        │
//!        ▼
//!  ReplicationConnection::connect ── TCP / Unix socket, startup (replication=true),
//!        │                            trust / password / md5 / SCRAM-SHA-256
//!        ├── identify_system, show, wal_segment_size, timeline_history,
//!        │   create_physical_slot, read_replication_slot, drop_slot, simple_query
//!        │
//!        ├── start_physical ──► ReplicationStream::next ──► XLogData / Keepalive / EndOfTimeline
//!        │                      ReplicationStream::send_status (write / flush / apply)
//!        │
//!        └── base_backup ─────► BaseBackupStream::next ──► archives, data chunks, manifest
//! ```
//!
//! Invariants:
//! - Nothing from the network can panic: every message is length-checked and
//!   bad input becomes [`ErrorKind::Protocol`] naming what was wrong.
//! - Passwords never appear in `Debug` output, logs or error messages, and
//!   the password file is read only when the server asks for a password.
//! - Errors print as one line, `cannot connect to 127.0.0.1:5432: …`, and
//!   say whether retrying may help ([`Error::is_transient`]).
//! - [`ReplicationStream::next`] is cancel-safe; commands are not (an
//!   interrupted command makes the connection report itself unusable).
//! - TLS follows libpq's `sslmode` (see `tls`); a connection that must be
//!   encrypted or verified never falls back to plain text.

mod basebackup;
mod codec;
mod config;
mod conn;
mod error;
mod pgpass;
mod stream;
mod tls;
mod transport;

pub use basebackup::{BaseBackupMessage, BaseBackupStream, TablespaceInfo};
pub use codec::{StreamMessage, pg_epoch_micros, pg_time_to_system};
pub use config::{
    ChannelBinding, ConfigError, ConnConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, DEFAULT_SOCKET_DIR,
    FALLBACK_SOCKET_DIR, Host, REPLICATION_DATABASE, Secret, SslMode, TlsFile, TlsFiles,
};
pub use conn::{ReplicationConnection, SimpleRow, SlotInfo, SystemInfo, parse_server_version, quote_literal};
pub use error::{Error, ErrorKind, Op, PgError};
pub use stream::ReplicationStream;
