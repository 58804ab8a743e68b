//! A physical replication connection: startup, authentication, and the
//! replication commands, over the simple query protocol.

use crate::codec::{self, Backend};
use crate::config::{ChannelBinding, ConnConfig, Host, SslMode};
use crate::error::{Error, ErrorKind, Op, PgError};
use crate::transport::{self, Transport};
use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use pgpitr_types::{ClusterIdentity, Lsn, PgMajor, TimelineId, WalSegSize};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message, RowDescriptionBody};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read in large chunks: the server sends WAL in messages of up to 128 KiB.
const READ_CHUNK: usize = 256 * 1024;

/// Where the connection is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Ready for a command.
    Idle,
    /// A command is in flight (or was abandoned half-way).
    Busy,
    /// In COPY mode for START_REPLICATION or BASE_BACKUP.
    Copying,
    /// The session is over or out of sync; only reconnecting helps.
    Broken,
}

/// What IDENTIFY_SYSTEM reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique identifier, as in `pg_control_system()`.
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimelineId,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database, for logical walsenders only; `None` for physical ones.
    pub dbname: Option<String>,
}

/// What READ_REPLICATION_SLOT reports for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// The oldest WAL the slot keeps; `None` until it has reserved WAL.
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_tli: Option<TimelineId>,
}

/// One row of a result set, with text-format values as the server sent them.
#[derive(Debug, Clone)]
pub struct SimpleRow {
    columns: Arc<[String]>,
    values: Vec<Option<Bytes>>,
}

impl SimpleRow {
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value as text; `None` when NULL, out of range, or not UTF-8
    /// (use [`Self::get_bytes`] for raw values).
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.get_bytes(idx).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The raw value; `None` when NULL or out of range.
    pub fn get_bytes(&self, idx: usize) -> Option<&Bytes> {
        self.values.get(idx)?.as_ref()
    }

    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        self.get(self.columns.iter().position(|c| c == name)?)
    }

    pub fn is_null(&self, idx: usize) -> bool {
        matches!(self.values.get(idx), Some(None))
    }

    /// A nullable text column of a command's reply; missing columns and
    /// invalid UTF-8 are protocol violations.
    pub(crate) fn text(&self, idx: usize, cmd: &str) -> Result<Option<&str>, ErrorKind> {
        let Some(v) = self.values.get(idx) else {
            return Err(ErrorKind::Protocol(format!(
                "{cmd} returned {} columns, expected at least {}",
                self.values.len(),
                idx + 1
            )));
        };
        match v {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b).map(Some).map_err(|_| {
                ErrorKind::Protocol(format!("{cmd} returned a non-UTF-8 value in column {}", self.column_name(idx)))
            }),
        }
    }

    /// A text column that must not be NULL.
    pub(crate) fn required(&self, idx: usize, cmd: &str) -> Result<&str, ErrorKind> {
        self.text(idx, cmd)?
            .ok_or_else(|| ErrorKind::Protocol(format!("{cmd} returned NULL for {}", self.column_name(idx))))
    }

    /// Parses a column with `FromStr`, naming the command and column on failure.
    pub(crate) fn parse<T: std::str::FromStr>(&self, idx: usize, cmd: &str) -> Result<Option<T>, ErrorKind> {
        match self.text(idx, cmd)? {
            None => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|_| {
                ErrorKind::Protocol(format!("{cmd} returned {s:?} for {}, which does not parse", self.column_name(idx)))
            }),
        }
    }

    /// Like [`Self::parse`] for a column that must not be NULL.
    pub(crate) fn parse_required<T: std::str::FromStr>(&self, idx: usize, cmd: &str) -> Result<T, ErrorKind> {
        self.parse(idx, cmd)?
            .ok_or_else(|| ErrorKind::Protocol(format!("{cmd} returned NULL for {}", self.column_name(idx))))
    }

    fn column_name(&self, idx: usize) -> String {
        self.columns.get(idx).cloned().unwrap_or_else(|| format!("column {}", idx + 1))
    }

    pub(crate) fn decode(columns: Arc<[String]>, body: &DataRowBody) -> Result<SimpleRow, ErrorKind> {
        let mut values = Vec::with_capacity(columns.len());
        let mut ranges = body.ranges();
        while let Some(r) = ranges.next().map_err(|e| ErrorKind::Protocol(format!("malformed DataRow: {e}")))? {
            values.push(r.map(|r| body.buffer_bytes().slice(r)));
        }
        if values.len() != columns.len() {
            return Err(ErrorKind::Protocol(format!(
                "DataRow has {} values for {} columns",
                values.len(),
                columns.len()
            )));
        }
        Ok(SimpleRow { columns, values })
    }
}

pub(crate) fn decode_columns(body: &RowDescriptionBody) -> Result<Arc<[String]>, ErrorKind> {
    let mut names = Vec::new();
    let mut fields = body.fields();
    while let Some(f) = fields.next().map_err(|e| ErrorKind::Protocol(format!("malformed RowDescription: {e}")))? {
        names.push(f.name().to_string());
    }
    Ok(names.into())
}

/// Exactly one row, as the replication commands that report something send.
pub(crate) fn single_row<'a>(rows: &'a [SimpleRow], cmd: &str) -> Result<&'a SimpleRow, ErrorKind> {
    match rows {
        [row] => Ok(row),
        _ => Err(ErrorKind::Protocol(format!("{cmd} returned {} rows, expected 1", rows.len()))),
    }
}

/// Parses the `server_version` parameter into the `server_version_num`
/// form: `15.18 (Debian 15.18-1.pgdg120+1)` → 150018, `9.6.24` → 90624,
/// `16beta1` → 160000.
pub fn parse_server_version(s: &str) -> Option<u32> {
    let version = s.split_whitespace().next()?;
    let mut parts = version.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let second = parts.next().flatten().unwrap_or(0);
    if major >= 10 {
        Some(major.checked_mul(10000)?.checked_add(second.min(9999))?)
    } else {
        let third = parts.next().flatten().unwrap_or(0);
        Some(major * 10000 + second.min(99) * 100 + third.min(99))
    }
}

/// Double-quotes a slot or setting name for the replication grammar, so it
/// reaches the server exactly as given (unquoted names are lower-cased).
/// That grammar has no escape for `"` inside a quoted name (PostgreSQL 15
/// answers `""` with a syntax error), so such names are refused here; no
/// valid slot or setting name contains one.
pub(crate) fn quote_ident(name: &str, what: &str) -> Result<String, ErrorKind> {
    if name.is_empty() || name.contains(['\0', '"']) {
        return Err(ErrorKind::InvalidArgument(format!(
            "{what} {name:?} is empty or contains a double quote or NUL byte"
        )));
    }
    Ok(format!("\"{name}\""))
}

/// Single-quotes a string for a replication command option, such as
/// BASE_BACKUP's `LABEL`. The replication grammar knows `''` but not the
/// `E'...'` form, so this doubles quotes and leaves backslashes alone.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Describes a message that should not have arrived.
pub(crate) fn unexpected(msg: &Backend, when: &str) -> ErrorKind {
    ErrorKind::Protocol(format!("unexpected {} {when}", msg.name()))
}

/// A connection in physical replication mode (`replication=true`): a
/// walsender session that accepts replication commands, not SQL.
///
/// Commands take `&mut self` and are not cancel-safe: dropping one half-way
/// leaves the connection out of step with the server, so later commands
/// fail with [`ErrorKind::Unusable`] and the caller should reconnect.
/// An ErrorResponse from a command leaves the connection usable.
pub struct ReplicationConnection {
    io: Transport,
    rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    target: String,
    user: String,
    params: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
    pub(crate) state: State,
    /// Server notices not yet taken, newest last; capped so a chatty server
    /// cannot grow it without bound.
    notices: std::collections::VecDeque<PgError>,
    /// How it was made, to open a SQL connection beside it where the
    /// replication protocol lacks a command.
    config: Box<ConnConfig>,
}

/// How many unread notices a connection keeps.
const MAX_NOTICES: usize = 1000;

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("backend_pid", &self.backend_pid())
            .field("state", &self.state)
            .finish()
    }
}

impl ReplicationConnection {
    /// Connects, authenticates and waits until the server is ready, all
    /// within `connect_timeout`.
    #[tracing::instrument(skip_all, fields(target = %config.display_target(), user = %config.user()))]
    pub async fn connect(config: &ConnConfig) -> Result<ReplicationConnection, Error> {
        let fut = Self::connect_untimed(config);
        match config.connect_timeout() {
            None => fut.await,
            Some(limit) => match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(Op::Connect, config.display_target(), ErrorKind::Timeout(limit))),
            },
        }
    }

    async fn connect_untimed(config: &ConnConfig) -> Result<ReplicationConnection, Error> {
        match Self::attempt(config, false).await {
            // libpq's `allow`: plain text first, then TLS if the server refused it.
            Err(e)
                if config.sslmode() == SslMode::Allow
                    && matches!(config.host(), Host::Tcp(_))
                    && matches!(e.kind(), ErrorKind::NoHbaEntry(_) | ErrorKind::Auth { .. }) =>
            {
                tracing::debug!(error = %e, "sslmode=allow: refused in plain text, trying TLS");
                Self::attempt(config, true).await
            }
            r => r,
        }
    }

    async fn attempt(config: &ConnConfig, allow_retry: bool) -> Result<ReplicationConnection, Error> {
        let (io, target) = transport::open(config, allow_retry).await?;
        let mut conn = ReplicationConnection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            target,
            user: config.user().to_string(),
            params: HashMap::new(),
            notices: std::collections::VecDeque::new(),
            backend_key: None,
            state: State::Busy,
            config: Box::new(config.clone()),
        };
        match conn.startup(config).await {
            Ok(()) => {
                tracing::debug!(
                    server_version = conn.parameter("server_version"),
                    tls = conn.io.tls_version().as_deref().unwrap_or("none"),
                    "replication connection ready"
                );
                Ok(conn)
            }
            Err(kind) => {
                conn.state = State::Broken;
                Err(Error::new(Op::Connect, conn.target.clone(), kind))
            }
        }
    }

    async fn startup(&mut self, config: &ConnConfig) -> Result<(), ErrorKind> {
        let mut params = vec![("user", config.user())];
        if let Some(db) = config.dbname() {
            params.push(("database", db));
        }
        if let Some(app) = config.application_name() {
            params.push(("application_name", app));
        }
        params.push(("replication", if config.is_sql() { "database" } else { "true" }));
        self.encode(|b| frontend::startup_message(params.iter().copied(), b), "startup message")?;
        self.flush().await?;
        self.authenticate(config).await?;
        loop {
            match self.recv().await? {
                Backend::Other(Message::BackendKeyData(k)) => self.backend_key = Some((k.process_id(), k.secret_key())),
                Backend::Other(Message::ReadyForQuery(_)) => {
                    self.state = State::Idle;
                    return Ok(());
                }
                Backend::Other(Message::ErrorResponse(body)) => return Err(self.server_error(&body, Op::Connect)),
                other => return Err(unexpected(&other, "while starting the session")),
            }
        }
    }

    /// Answers the server's authentication requests until AuthenticationOk.
    async fn authenticate(&mut self, config: &ConnConfig) -> Result<(), ErrorKind> {
        let mut scram: Option<sasl::ScramSha256> = None;
        let mut scram_verified = false;
        let mut bound = false;
        let mut passfile: Option<PathBuf> = None;
        let require_binding = config.channel_binding() == ChannelBinding::Require;
        // Refused before any password is sent, so a server in the middle learns nothing.
        let unbound = |how: &str| {
            ErrorKind::Tls(format!(
                "channel_binding=require, but the server asked for {how}, which cannot be channel-bound"
            ))
        };
        loop {
            let msg = match self.recv().await? {
                Backend::Other(m) => m,
                other => return Err(unexpected(&other, "during authentication")),
            };
            match msg {
                Message::AuthenticationOk => {
                    // Without the final SCRAM message the server never proved
                    // it knows the password; treat the shortcut as an attack.
                    if scram.is_some() && !scram_verified {
                        return Err(ErrorKind::Scram("the server skipped its final SCRAM message".to_string()));
                    }
                    if require_binding && !bound {
                        return Err(unbound("no authentication"));
                    }
                    return Ok(());
                }
                Message::AuthenticationCleartextPassword => {
                    if require_binding {
                        return Err(unbound("a cleartext password"));
                    }
                    let pw = password(config, &mut passfile)?;
                    self.encode(|b| frontend::password_message(pw.as_bytes(), b), "password message")?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    if require_binding {
                        return Err(unbound("an md5 password"));
                    }
                    let pw = password(config, &mut passfile)?;
                    let hash = md5_hash(config.user().as_bytes(), pw.as_bytes(), body.salt());
                    self.encode(|b| frontend::password_message(hash.as_bytes(), b), "password message")?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = Vec::new();
                    let mut it = body.mechanisms();
                    while let Some(m) =
                        it.next().map_err(|e| ErrorKind::Protocol(format!("malformed SASL list: {e}")))?
                    {
                        offered.push(m.to_string());
                    }
                    let (mechanism, binding) = self.choose_scram(config, &offered)?;
                    bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                    let pw = password(config, &mut passfile)?;
                    let s = sasl::ScramSha256::new(pw.as_bytes(), binding);
                    self.encode(|b| frontend::sasl_initial_response(mechanism, s.message(), b), "SASL")?;
                    scram = Some(s);
                    self.flush().await?;
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| ErrorKind::Protocol("SASL continue before SASL".into()))?;
                    s.update(body.data()).map_err(|e| ErrorKind::Scram(e.to_string()))?;
                    let reply = s.message().to_vec();
                    self.encode(|b| frontend::sasl_response(&reply, b), "SASL response")?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| ErrorKind::Protocol("SASL final before SASL".into()))?;
                    s.finish(body.data())
                        .map_err(|e| ErrorKind::Scram(format!("the server's signature did not verify ({e})")))?;
                    scram_verified = true;
                }
                Message::ErrorResponse(body) => {
                    return Err(match self.server_error(&body, Op::Connect) {
                        ErrorKind::Auth { pg, .. } => ErrorKind::Auth { pg, passfile },
                        other => other,
                    });
                }
                Message::AuthenticationKerberosV5 => return Err(ErrorKind::UnsupportedAuth("Kerberos V5".into())),
                Message::AuthenticationScmCredential => {
                    return Err(ErrorKind::UnsupportedAuth("SCM credentials".into()));
                }
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                    return Err(ErrorKind::UnsupportedAuth("GSSAPI".into()));
                }
                Message::AuthenticationSspi => return Err(ErrorKind::UnsupportedAuth("SSPI".into())),
                other => return Err(unexpected(&Backend::Other(other), "during authentication")),
            }
        }
    }

    /// The SCRAM mechanism and channel binding to answer `offered` with,
    /// as libpq chooses them: bound to the TLS connection when both sides
    /// can, else plain SCRAM telling the server whether we could have bound
    /// (so a server that offers binding can detect a downgrade).
    fn choose_scram(
        &self,
        config: &ConnConfig,
        offered: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding), ErrorKind> {
        let plus = offered.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
        let plain = offered.iter().any(|m| m == sasl::SCRAM_SHA_256);
        let end_point = self.io.tls_server_end_point();
        let tls = self.io.tls_version().is_some();
        let chosen = match (config.channel_binding(), end_point) {
            (ChannelBinding::Disable, _) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
            (_, Some(hash)) if plus => (sasl::SCRAM_SHA_256_PLUS, sasl::ChannelBinding::tls_server_end_point(hash)),
            (ChannelBinding::Require, _) => {
                let why = if !tls {
                    "the connection is not encrypted (use sslmode=require or stricter)"
                } else if !plus {
                    "the server does not offer SCRAM-SHA-256-PLUS"
                } else {
                    "the server's certificate uses a signature algorithm without a tls-server-end-point hash"
                };
                return Err(ErrorKind::Tls(format!("channel_binding=require, but {why}")));
            }
            (_, Some(_)) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
            (_, None) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
        };
        if chosen.0 == sasl::SCRAM_SHA_256 && !plain {
            return Err(ErrorKind::UnsupportedAuth(format!("SASL with {}", offered.join(", "))));
        }
        Ok(chosen)
    }

    /// The TLS version in use, such as `TLSv1_3`; `None` in plain text.
    pub fn tls_version(&self) -> Option<String> {
        self.io.tls_version()
    }

    /// The server, as `127.0.0.1:5432` or a socket path.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// A run-time parameter the server reported (ParameterStatus), such as
    /// `server_version`, `integer_datetimes` or `server_encoding`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn parameters(&self) -> &HashMap<String, String> {
        &self.params
    }

    /// The walsender's process ID (from BackendKeyData).
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_key.map(|(pid, _)| pid)
    }

    /// False once the session is out of step (see the type docs) or over.
    pub fn is_usable(&self) -> bool {
        self.state == State::Idle
    }

    /// Ends the session politely (Terminate) and closes the socket.
    pub async fn close(mut self) {
        if self.state != State::Broken {
            frontend::terminate(&mut self.wbuf);
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
    }

    pub(crate) fn err(&self, op: Op, kind: ErrorKind) -> Error {
        Error::new(op, self.target.clone(), kind)
    }

    /// Encodes a frontend message, undoing a half-written one on error.
    pub(crate) fn encode(
        &mut self,
        f: impl FnOnce(&mut BytesMut) -> io::Result<()>,
        what: &str,
    ) -> Result<(), ErrorKind> {
        let mark = self.wbuf.len();
        f(&mut self.wbuf).map_err(|e| {
            self.wbuf.truncate(mark);
            ErrorKind::InvalidArgument(format!("cannot encode the {what}: {e}"))
        })
    }

    /// Sends everything queued. Cancel-safe: bytes leave the queue only once
    /// written, so an interrupted flush resumes where it stopped.
    pub(crate) async fn flush(&mut self) -> Result<(), ErrorKind> {
        while !self.wbuf.is_empty() {
            let n = self.io.write(&self.wbuf).await.map_err(crate::tls::io_error)?;
            if n == 0 {
                return Err(ErrorKind::Closed);
            }
            self.wbuf.advance(n);
        }
        self.io.flush().await.map_err(crate::tls::io_error)
    }

    /// The next complete message. Cancel-safe: partial messages stay buffered.
    async fn read_message(&mut self) -> Result<Backend, ErrorKind> {
        loop {
            if let Some(m) = codec::next_message(&mut self.rbuf).map_err(ErrorKind::Protocol)? {
                return Ok(m);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            if self.io.read_buf(&mut self.rbuf).await.map_err(crate::tls::io_error)? == 0 {
                return Err(ErrorKind::Closed);
            }
        }
    }

    /// The next message that needs a decision; ParameterStatus and notices
    /// are handled here. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Result<Backend, ErrorKind> {
        loop {
            match self.read_message().await? {
                Backend::Other(Message::ParameterStatus(body)) => {
                    let bad = |e: io::Error| ErrorKind::Protocol(format!("malformed ParameterStatus: {e}"));
                    let name = body.name().map_err(bad)?;
                    let value = body.value().map_err(bad)?;
                    self.params.insert(name.to_string(), value.to_string());
                }
                Backend::Other(Message::NoticeResponse(body)) => {
                    let n = PgError::from_fields(body.fields()).map_err(ErrorKind::Protocol)?;
                    tracing::info!(server = %self.target, severity = %n.severity, code = %n.code, "server notice: {}", n.message);
                    if self.notices.len() == MAX_NOTICES {
                        self.notices.pop_front();
                    }
                    self.notices.push_back(n);
                }
                Backend::Other(Message::NotificationResponse(_)) => {}
                other => return Ok(other),
            }
        }
    }

    pub(crate) fn server_error(&self, body: &ErrorResponseBody, op: Op) -> ErrorKind {
        match PgError::from_fields(body.fields()) {
            Ok(pg) => ErrorKind::from_pg(pg, op, &self.user),
            Err(e) => ErrorKind::Protocol(e),
        }
    }

    /// Checks that a new command may start.
    pub(crate) fn begin(&self, op: Op) -> Result<(), Error> {
        let why = match self.state {
            State::Idle => return Ok(()),
            State::Busy => "an earlier command was interrupted before it finished; reconnect",
            State::Copying => "a WAL stream or base backup on it has not finished",
            State::Broken => "an earlier error ended the session; reconnect",
        };
        Err(self.err(op, ErrorKind::Unusable(why)))
    }

    /// Sends a query and marks the connection busy.
    pub(crate) async fn send_query(&mut self, op: Op, sql: &str) -> Result<(), Error> {
        self.begin(op)?;
        self.encode(|b| frontend::query(sql, b), "command").map_err(|k| self.err(op, k))?;
        self.state = State::Busy;
        if let Err(k) = self.flush().await {
            self.state = State::Broken;
            return Err(self.err(op, k));
        }
        Ok(())
    }

    /// Runs one or more commands with the simple query protocol and returns
    /// the rows of every result set. An ErrorResponse becomes an error once
    /// the server is ready again, so the connection stays usable.
    /// Not cancel-safe (see the type docs).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, Error> {
        self.run(Op::Command("query"), sql).await
    }

    pub(crate) async fn run(&mut self, op: Op, sql: &str) -> Result<Vec<SimpleRow>, Error> {
        self.send_query(op, sql).await?;
        let r = self.collect_rows(op).await;
        if r.is_err() && self.state == State::Busy {
            self.state = State::Broken;
        }
        r.map_err(|k| self.err(op, k))
    }

    async fn collect_rows(&mut self, op: Op) -> Result<Vec<SimpleRow>, ErrorKind> {
        let mut rows = Vec::new();
        let mut columns: Option<Arc<[String]>> = None;
        let mut error: Option<ErrorKind> = None;
        loop {
            let msg = match self.recv().await {
                Ok(m) => m,
                // A FATAL error is followed by the server hanging up; report the error.
                Err(k) => return Err(error.unwrap_or(k)),
            };
            match msg {
                Backend::Other(Message::RowDescription(body)) => columns = Some(decode_columns(&body)?),
                Backend::Other(Message::DataRow(body)) => {
                    let cols =
                        columns.clone().ok_or_else(|| ErrorKind::Protocol("DataRow before RowDescription".into()))?;
                    rows.push(SimpleRow::decode(cols, &body)?);
                }
                Backend::Other(Message::CommandComplete(_) | Message::EmptyQueryResponse) => {}
                Backend::Other(Message::ErrorResponse(body)) => error = Some(self.server_error(&body, op)),
                Backend::Other(Message::ReadyForQuery(_)) => {
                    self.state = State::Idle;
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                other => {
                    // COPY and friends cannot be handled here; the session is lost.
                    self.state = State::Broken;
                    return Err(unexpected(
                        &other,
                        "in reply to a command (use start_physical or base_backup for COPY)",
                    ));
                }
            }
        }
    }

    /// IDENTIFY_SYSTEM, the server's version and its WAL segment size:
    /// what binds a repository to this cluster, read in one place.
    pub async fn cluster_identity(&mut self) -> Result<(SystemInfo, ClusterIdentity), Error> {
        let sys = self.identify_system().await?;
        let identity = ClusterIdentity {
            system_identifier: sys.system_id,
            pg_version_num: self.server_version_num().await?,
            wal_segment_size: self.wal_segment_size().await?,
        };
        Ok((sys, identity))
    }

    /// IDENTIFY_SYSTEM: the cluster's identity, timeline and WAL position.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, Error> {
        const CMD: &str = "IDENTIFY_SYSTEM";
        let rows = self.run(Op::Command(CMD), CMD).await?;
        let parse = || -> Result<SystemInfo, ErrorKind> {
            let row = single_row(&rows, CMD)?;
            Ok(SystemInfo {
                system_id: row.parse_required(0, CMD)?,
                timeline: row.parse_required(1, CMD)?,
                xlogpos: row.parse_required(2, CMD)?,
                dbname: row.text(3, CMD)?.map(str::to_string),
            })
        };
        parse().map_err(|k| self.err(Op::Command(CMD), k))
    }

    /// SHOW name: the current value of a server setting, as text.
    pub async fn show(&mut self, name: &str) -> Result<String, Error> {
        const CMD: &str = "SHOW";
        let q = quote_ident(name, "setting name").map_err(|k| self.err(Op::Command(CMD), k))?;
        let rows = self.run(Op::Command(CMD), &format!("SHOW {q}")).await?;
        let value = single_row(&rows, CMD).and_then(|r| r.required(0, CMD).map(str::to_string));
        value.map_err(|k| self.err(Op::Command(CMD), k))
    }

    /// The cluster's WAL segment size (`SHOW wal_segment_size`).
    pub async fn wal_segment_size(&mut self) -> Result<WalSegSize, Error> {
        let text = self.show("wal_segment_size").await?;
        WalSegSize::from_show(&text).map_err(|e| {
            self.err(
                Op::Command("SHOW"),
                ErrorKind::Protocol(format!("server reported wal_segment_size {text:?}: {e}")),
            )
        })
    }

    /// The server version as a number (150018 for 15.18), from the
    /// `server_version` parameter, else from `SHOW server_version_num`.
    pub async fn server_version_num(&mut self) -> Result<u32, Error> {
        if let Some(v) = self.parameter("server_version").and_then(parse_server_version) {
            return Ok(v);
        }
        let text = self.show("server_version_num").await?;
        text.trim().parse().map_err(|_| {
            self.err(Op::Command("SHOW"), ErrorKind::Protocol(format!("server reported server_version_num {text:?}")))
        })
    }

    /// The server's major, if pgpitr supports it (else `Unsupported`).
    pub async fn pg_major(&mut self) -> Result<PgMajor, Error> {
        let num = self.server_version_num().await?;
        PgMajor::from_version_num(num).map_err(|e| self.err(Op::Command("SHOW"), ErrorKind::Unsupported(e.to_string())))
    }

    /// TIMELINE_HISTORY: the history file of timeline `tli` (for `tli` > 1),
    /// as its file name and raw contents.
    pub async fn timeline_history(&mut self, tli: TimelineId) -> Result<(String, Bytes), Error> {
        const CMD: &str = "TIMELINE_HISTORY";
        let rows = self.run(Op::Command(CMD), &format!("TIMELINE_HISTORY {tli}")).await?;
        let parse = || -> Result<(String, Bytes), ErrorKind> {
            let row = single_row(&rows, CMD)?;
            let name = row.required(0, CMD)?.to_string();
            let content = row
                .get_bytes(1)
                .cloned()
                .ok_or_else(|| ErrorKind::Protocol(format!("{CMD} returned no content for {name}")))?;
            Ok((name, content))
        };
        parse().map_err(|k| self.err(Op::Command(CMD), k))
    }

    /// CREATE_REPLICATION_SLOT name PHYSICAL, optionally reserving WAL at
    /// once. Returns the position from which WAL is kept when `reserve_wal`.
    /// An existing slot gives [`ErrorKind::SlotExists`].
    pub async fn create_physical_slot(&mut self, name: &str, reserve_wal: bool) -> Result<Option<Lsn>, Error> {
        const CMD: &str = "CREATE_REPLICATION_SLOT";
        let op = Op::Command(CMD);
        let q = quote_ident(name, "slot name").map_err(|k| self.err(op, k))?;
        let major = self.pg_major().await?;
        let sql = match (reserve_wal, major.slot_options_in_parentheses()) {
            (false, _) => format!("{CMD} {q} PHYSICAL"),
            (true, true) => format!("{CMD} {q} PHYSICAL (RESERVE_WAL)"),
            (true, false) => format!("{CMD} {q} PHYSICAL RESERVE_WAL"),
        };
        let rows = self.run(op, &sql).await?;
        if !reserve_wal {
            return Ok(None);
        }
        let reported = single_row(&rows, CMD).and_then(|r| r.parse::<Lsn>(1, CMD)).map_err(|k| self.err(op, k))?;
        match reported {
            Some(lsn) if lsn.is_valid() => Ok(Some(lsn)),
            // Physical slots report no consistent point; ask the slot itself.
            _ => Ok(self.read_replication_slot(name).await?.and_then(|s| s.restart_lsn)),
        }
    }

    /// CREATE_REPLICATION_SLOT name TEMPORARY PHYSICAL (RESERVE_WAL): a slot
    /// that keeps WAL from now on for as long as this connection lives, and
    /// vanishes with it. Returns the slot's restart point.
    pub async fn create_temporary_physical_slot(&mut self, name: &str) -> Result<Lsn, Error> {
        const CMD: &str = "CREATE_REPLICATION_SLOT";
        let op = Op::Command(CMD);
        let q = quote_ident(name, "slot name").map_err(|k| self.err(op, k))?;
        let options =
            if self.pg_major().await?.slot_options_in_parentheses() { "(RESERVE_WAL)" } else { "RESERVE_WAL" };
        self.run(op, &format!("{CMD} {q} TEMPORARY PHYSICAL {options}")).await?;
        let slot = self.read_replication_slot(name).await?;
        slot.and_then(|s| s.restart_lsn).ok_or_else(|| {
            self.err(op, ErrorKind::Protocol(format!("temporary slot {name:?} reports no restart point")))
        })
    }

    /// A slot's type and restart point from `pg_replication_slots`, over a
    /// short SQL connection (14 has no `READ_REPLICATION_SLOT`; a physical
    /// replication connection runs no SQL). The view has no timeline.
    async fn slot_from_catalog(&mut self, name: &str) -> Result<Option<SlotInfo>, Error> {
        const CMD: &str = "SELECT FROM pg_replication_slots";
        let mut sql = ReplicationConnection::connect(&self.config.for_sql()).await?;
        let query = format!(
            "SELECT slot_type, restart_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(name)
        );
        let rows = sql.run(Op::Command(CMD), &query).await?;
        let parse = || -> Result<Option<SlotInfo>, ErrorKind> {
            let Some(row) = rows.first() else { return Ok(None) };
            let Some(slot_type) = row.text(0, CMD)? else { return Ok(None) };
            Ok(Some(SlotInfo {
                slot_type: slot_type.to_string(),
                restart_lsn: row.parse::<Lsn>(1, CMD)?,
                restart_tli: None,
            }))
        };
        parse().map_err(|k| self.err(Op::Command(CMD), k))
    }

    /// Takes the NoticeResponses (warnings, infos) received since the last
    /// call, oldest first; at most the newest 1000 are kept.
    pub fn take_notices(&mut self) -> Vec<PgError> {
        self.notices.drain(..).collect()
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+): `None` when the slot does
    /// not exist.
    pub async fn read_replication_slot(&mut self, name: &str) -> Result<Option<SlotInfo>, Error> {
        const CMD: &str = "READ_REPLICATION_SLOT";
        let op = Op::Command(CMD);
        let q = quote_ident(name, "slot name").map_err(|k| self.err(op, k))?;
        if !self.pg_major().await?.has_read_replication_slot() {
            return self.slot_from_catalog(name).await;
        }
        let rows = self.run(op, &format!("{CMD} {q}")).await?;
        let parse = || -> Result<Option<SlotInfo>, ErrorKind> {
            let row = single_row(&rows, CMD)?;
            let Some(slot_type) = row.text(0, CMD)? else { return Ok(None) };
            Ok(Some(SlotInfo {
                slot_type: slot_type.to_string(),
                restart_lsn: row.parse::<Lsn>(1, CMD)?,
                restart_tli: row.parse::<TimelineId>(2, CMD)?,
            }))
        };
        parse().map_err(|k| self.err(op, k))
    }

    /// DROP_REPLICATION_SLOT. With `wait`, waits for an active slot to be
    /// released instead of failing with [`ErrorKind::SlotActive`].
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), Error> {
        const CMD: &str = "DROP_REPLICATION_SLOT";
        let op = Op::Command(CMD);
        let q = quote_ident(name, "slot name").map_err(|k| self.err(op, k))?;
        let sql = if wait { format!("{CMD} {q} WAIT") } else { format!("{CMD} {q}") };
        self.run(op, &sql).await.map(drop)
    }
}

/// The password to answer with, looked up only now that the server asked.
fn password(config: &ConnConfig, passfile: &mut Option<PathBuf>) -> Result<String, ErrorKind> {
    if let Some(p) = config.password() {
        return Ok(p.to_string());
    }
    match config.lookup_password(config.password_database()) {
        Some(p) => {
            *passfile = config.passfile().map(PathBuf::from);
            Ok(p)
        }
        None => Err(ErrorKind::NoPassword { user: config.user().to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"), Some(150018));
        assert_eq!(parse_server_version("15.3"), Some(150003));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("10.1"), Some(100001));
        assert_eq!(parse_server_version(""), None);
        assert_eq!(parse_server_version("devel"), None);
        assert_eq!(parse_server_version("99999999999.1"), None);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("pgpitr's backup"), "'pgpitr''s backup'");
        assert_eq!(quote_literal(r"a\b"), r"'a\b'");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("slot_1", "slot").unwrap(), "\"slot_1\"");
        assert_eq!(quote_ident("Odd name;", "slot").unwrap(), "\"Odd name;\"");
        assert!(quote_ident("we\"ird", "slot").is_err());
        assert!(quote_ident("", "slot").is_err());
        assert!(quote_ident("a\0b", "slot").is_err());
    }

    #[test]
    fn rows_check_columns() {
        let cols: Arc<[String]> = vec!["a".to_string(), "b".to_string()].into();
        let row = SimpleRow { columns: cols, values: vec![Some(Bytes::from_static(b"0/10")), None] };
        assert_eq!(row.get(0), Some("0/10"));
        assert_eq!(row.get_by_name("a"), Some("0/10"));
        assert!(row.is_null(1));
        assert_eq!(row.get(5), None);
        assert_eq!(row.parse::<Lsn>(0, "X").unwrap(), Some(Lsn(0x10)));
        assert_eq!(row.parse::<Lsn>(1, "X").unwrap(), None);
        assert!(row.required(1, "X").unwrap_err().to_string().contains("NULL for b"));
        assert!(row.text(2, "X").unwrap_err().to_string().contains("2 columns"));
        let bad = SimpleRow { columns: vec!["c".to_string()].into(), values: vec![Some(Bytes::from_static(b"\xff"))] };
        assert!(bad.text(0, "X").is_err());
        assert!(bad.parse::<u64>(0, "X").is_err());
        let nonnum = SimpleRow { columns: vec!["n".to_string()].into(), values: vec![Some(Bytes::from_static(b"x"))] };
        assert!(nonnum.parse::<u64>(0, "X").unwrap_err().to_string().contains("\"x\" for n"));
    }
}
