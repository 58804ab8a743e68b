//! Connection settings: libpq-style conninfo strings (URI and `key=value`
//! forms), environment fallbacks and libpq's defaults.
//!
//! Parsing does no I/O apart from reading the environment through the lookup
//! function the caller passes in; the password file is read lazily, when a
//! server asks for a password ([`ConnConfig::lookup_password`]).

use crate::pgpass;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The port Postgres listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5432;
/// Where Debian-packaged servers put their socket; libpq's default there.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// The upstream default socket directory, tried when the Debian one has no
/// socket and the host was not given explicitly.
pub const FALLBACK_SOCKET_DIR: &str = "/tmp";
/// How long connecting (including authentication) may take when
/// `connect_timeout` is not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The database name a physical replication connection matches in a
/// password file, as pg_receivewal and pg_basebackup do.
pub const REPLICATION_DATABASE: &str = "replication";

/// A malformed connection string or environment setting. The message never
/// contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("unknown connection option {0:?}")]
    UnknownOption(String),
    #[error("invalid {key} {value:?}: {reason}")]
    InvalidValue { key: &'static str, value: String, reason: &'static str },
    #[error("malformed connection string: {0}")]
    Syntax(String),
}

/// A password. Its `Debug` output is redacted so it cannot leak through
/// logs or error reports.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's Unix-domain socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// libpq's `sslmode`. `allow` connects without TLS and tries TLS only when
/// the server refuses that; `prefer` (the default) uses TLS when the
/// server offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// True when a plain-text connection must be refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// True when TLS is asked for on a TCP connection.
    pub fn tries_tls(self) -> bool {
        matches!(self, SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(ConfigError::InvalidValue {
                    key: "sslmode",
                    value: s.to_string(),
                    reason: "expected disable, allow, prefer, require, verify-ca or verify-full",
                });
            }
        })
    }
}

/// libpq's `channel_binding`: whether SCRAM over TLS binds the
/// authentication to the TLS connection (SCRAM-SHA-256-PLUS with
/// `tls-server-end-point`), so a man in the middle cannot relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    Disable,
    /// Bind when TLS is in use and the server offers it.
    #[default]
    Prefer,
    /// Refuse any authentication that is not channel-bound SCRAM.
    Require,
}

impl FromStr for ChannelBinding {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Ok(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => {
                return Err(ConfigError::InvalidValue {
                    key: "channel_binding",
                    value: s.to_string(),
                    reason: "expected disable, prefer or require",
                });
            }
        })
    }
}

/// The options we understand, in both conninfo forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Host,
    Hostaddr,
    Port,
    User,
    Password,
    Dbname,
    ApplicationName,
    Sslmode,
    ConnectTimeout,
    Passfile,
    Sslrootcert,
    Sslcert,
    Sslkey,
    Sslcrl,
    ChannelBinding,
}

impl Key {
    const ALL: [Key; 15] = [
        Key::Host,
        Key::Hostaddr,
        Key::Port,
        Key::User,
        Key::Password,
        Key::Dbname,
        Key::ApplicationName,
        Key::Sslmode,
        Key::ConnectTimeout,
        Key::Passfile,
        Key::Sslrootcert,
        Key::Sslcert,
        Key::Sslkey,
        Key::Sslcrl,
        Key::ChannelBinding,
    ];

    fn from_name(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == s)
    }

    fn name(self) -> &'static str {
        match self {
            Key::Host => "host",
            Key::Hostaddr => "hostaddr",
            Key::Port => "port",
            Key::User => "user",
            Key::Password => "password",
            Key::Dbname => "dbname",
            Key::ApplicationName => "application_name",
            Key::Sslmode => "sslmode",
            Key::ConnectTimeout => "connect_timeout",
            Key::Passfile => "passfile",
            Key::Sslrootcert => "sslrootcert",
            Key::Sslcert => "sslcert",
            Key::Sslkey => "sslkey",
            Key::Sslcrl => "sslcrl",
            Key::ChannelBinding => "channel_binding",
        }
    }

    /// The environment variable libpq reads when the option is not given.
    fn env(self) -> Option<&'static str> {
        Some(match self {
            Key::Host => "PGHOST",
            Key::Hostaddr => "PGHOSTADDR",
            Key::Port => "PGPORT",
            Key::User => "PGUSER",
            Key::Password => "PGPASSWORD",
            Key::Dbname => "PGDATABASE",
            Key::ApplicationName => "PGAPPNAME",
            Key::Sslmode => "PGSSLMODE",
            Key::ConnectTimeout => "PGCONNECT_TIMEOUT",
            Key::Passfile => "PGPASSFILE",
            Key::Sslrootcert => "PGSSLROOTCERT",
            Key::Sslcert => "PGSSLCERT",
            Key::Sslkey => "PGSSLKEY",
            Key::Sslcrl => "PGSSLCRL",
            Key::ChannelBinding => "PGCHANNELBINDING",
        })
    }
}

/// Option values as written, before validation. An explicit empty value
/// still blocks the environment fallback, as in libpq.
#[derive(Default)]
struct Raw([Option<String>; 15]);

impl Raw {
    fn set(&mut self, key: Key, value: String) {
        self.0[key as usize] = Some(value);
    }

    fn get(&self, key: Key) -> Option<&str> {
        self.0[key as usize].as_deref()
    }

    /// The value, with empty treated as unset.
    fn non_empty(&self, key: Key) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }
}

/// Connection settings for one server, resolved against the environment and
/// libpq's defaults.
///
/// `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnConfig {
    host: Host,
    /// True when no host was given anywhere: connecting may then fall back
    /// from [`DEFAULT_SOCKET_DIR`] to [`FALLBACK_SOCKET_DIR`].
    host_is_default: bool,
    hostaddr: Option<IpAddr>,
    port: u16,
    user: String,
    password: Option<Secret>,
    dbname: Option<String>,
    application_name: Option<String>,
    sslmode: SslMode,
    connect_timeout: Option<Duration>,
    passfile: Option<PathBuf>,
    tls_files: TlsFiles,
    channel_binding: ChannelBinding,
    /// A connection to `dbname` that also runs SQL (`replication=database`),
    /// for what the replication protocol cannot ask.
    sql: bool,
}

/// A certificate or key file for TLS: named in the settings, or libpq's
/// default under `~/.postgresql`, which is used only if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub path: PathBuf,
    /// Named in the conninfo string or environment: it must then exist.
    pub explicit: bool,
}

/// Where the trusted roots, the revocation lists and the client
/// certificate come from (`sslrootcert`, `sslcrl`, `sslcert`, `sslkey`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// `sslrootcert=system` is the literal path `system`, as in libpq.
    pub rootcert: Option<TlsFile>,
    /// Certificates listed here are refused wherever the chain is checked.
    pub crl: Option<TlsFile>,
    pub cert: Option<TlsFile>,
    pub key: Option<TlsFile>,
}

impl TlsFiles {
    /// True when the server's certificate is checked against the system's
    /// trusted roots rather than a file.
    pub fn system_roots(&self) -> bool {
        self.rootcert.as_ref().is_some_and(|f| f.explicit && f.path == Path::new("system"))
    }
}

impl FromStr for ConnConfig {
    type Err = ConfigError;
    /// Parses with the process environment; see [`ConnConfig::parse_with_env`].
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        ConnConfig::parse(s)
    }
}

impl ConnConfig {
    /// Parses `s` and fills unset options from the process environment.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// Parses a conninfo string, either a `postgres://` / `postgresql://`
    /// URI or `key=value` pairs, then fills unset options from `env` (called
    /// with names such as `PGHOST`, `PGPORT`, `USER`, `HOME`) and from
    /// libpq's defaults. An empty string means "everything from the
    /// environment".
    pub fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut raw = Raw::default();
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("postgresql://").or_else(|| s.strip_prefix("postgres://")) {
            parse_uri(rest, &mut raw)?;
        } else {
            parse_key_value(s, &mut raw)?;
        }
        for key in Key::ALL {
            if raw.get(key).is_none()
                && let Some(v) = key.env().and_then(&env).filter(|v| !v.is_empty())
            {
                raw.set(key, v);
            }
        }
        Self::from_raw(&raw, &env)
    }

    fn from_raw(raw: &Raw, env: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        for key in Key::ALL {
            if raw.get(key).is_some_and(|v| v.contains('\0')) {
                return Err(ConfigError::Syntax(format!("the value of {} contains a NUL byte", key.name())));
            }
        }
        let hostaddr = match raw.non_empty(Key::Hostaddr) {
            None => None,
            Some(v) => Some(v.parse::<IpAddr>().map_err(|_| ConfigError::InvalidValue {
                key: "hostaddr",
                value: v.to_string(),
                reason: "expected a numeric IPv4 or IPv6 address",
            })?),
        };
        let (host, host_is_default) = match raw.non_empty(Key::Host) {
            Some(h) if h.contains(',') => {
                return Err(ConfigError::InvalidValue {
                    key: "host",
                    value: h.to_string(),
                    reason: "multiple hosts are not supported",
                });
            }
            Some(h) if h.starts_with('/') && hostaddr.is_some() => {
                return Err(ConfigError::InvalidValue {
                    key: "host",
                    value: h.to_string(),
                    reason: "a socket directory cannot be combined with hostaddr",
                });
            }
            Some(h) if h.starts_with('/') => (Host::Unix(PathBuf::from(h)), false),
            Some(h) => (Host::Tcp(h.to_string()), false),
            None => match hostaddr {
                Some(addr) => (Host::Tcp(addr.to_string()), false),
                None => (Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR)), true),
            },
        };
        let port = match raw.non_empty(Key::Port) {
            None => DEFAULT_PORT,
            Some(p) => p.trim().parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| ConfigError::InvalidValue {
                key: "port",
                value: p.to_string(),
                reason: "expected a number from 1 to 65535",
            })?,
        };
        let user = raw
            .non_empty(Key::User)
            .map(str::to_string)
            .or_else(|| env("USER").filter(|u| !u.is_empty()))
            .or_else(|| env("LOGNAME").filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "postgres".to_string());
        let sslmode = match raw.non_empty(Key::Sslmode) {
            None => SslMode::default(),
            Some(m) => m.parse()?,
        };
        let channel_binding = match raw.non_empty(Key::ChannelBinding) {
            None => ChannelBinding::default(),
            Some(m) => m.parse()?,
        };
        let connect_timeout = match raw.non_empty(Key::ConnectTimeout) {
            None => Some(DEFAULT_CONNECT_TIMEOUT),
            Some(t) => {
                let secs: i64 = t.trim().parse().map_err(|_| ConfigError::InvalidValue {
                    key: "connect_timeout",
                    value: t.to_string(),
                    reason: "expected a whole number of seconds",
                })?;
                // libpq: zero or negative waits forever; under 2 s is raised to 2 s.
                if secs <= 0 { None } else { Some(Duration::from_secs(secs.max(2) as u64)) }
            }
        };
        let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let passfile =
            raw.non_empty(Key::Passfile).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
        let tls_file = |key: Key, default: &str| match raw.non_empty(key) {
            Some(p) => Some(TlsFile { path: PathBuf::from(p), explicit: true }),
            None => home.as_ref().map(|h| TlsFile { path: h.join(".postgresql").join(default), explicit: false }),
        };
        let tls_files = TlsFiles {
            rootcert: tls_file(Key::Sslrootcert, "root.crt"),
            crl: tls_file(Key::Sslcrl, "root.crl"),
            cert: tls_file(Key::Sslcert, "postgresql.crt"),
            key: tls_file(Key::Sslkey, "postgresql.key"),
        };
        Ok(ConnConfig {
            host,
            host_is_default,
            hostaddr,
            port,
            user,
            password: raw.non_empty(Key::Password).map(Secret::new),
            dbname: raw.non_empty(Key::Dbname).map(str::to_string),
            application_name: raw.non_empty(Key::ApplicationName).map(str::to_string),
            sslmode,
            connect_timeout,
            passfile,
            tls_files,
            channel_binding,
            sql: false,
        })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// True when the host came from libpq's default rather than from the
    /// connection string or `PGHOST`.
    pub fn host_is_default(&self) -> bool {
        self.host_is_default
    }

    /// A numeric address to connect to instead of resolving [`Self::host`].
    pub fn hostaddr(&self) -> Option<IpAddr> {
        self.hostaddr
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password given in the connection string or `PGPASSWORD`, if any.
    /// See [`Self::lookup_password`] for the password file.
    pub fn password(&self) -> Option<&str> {
        self.password.as_ref().map(Secret::expose)
    }

    pub fn dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }

    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    pub fn channel_binding(&self) -> ChannelBinding {
        self.channel_binding
    }

    /// The trusted roots and client certificate for TLS.
    pub fn tls_files(&self) -> &TlsFiles {
        &self.tls_files
    }

    /// `None` means wait forever (`connect_timeout=0`).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// The password file to consult: `passfile`, `PGPASSFILE` or `~/.pgpass`.
    pub fn passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }

    /// Sets the password, replacing any from the string or environment.
    pub fn set_password(&mut self, password: impl Into<String>) {
        let p = password.into();
        self.password = if p.is_empty() { None } else { Some(Secret(p)) };
    }

    /// The same server and credentials, connected to a database
    /// (`dbname`, else `postgres`) so that SQL runs too.
    pub fn for_sql(&self) -> ConnConfig {
        let mut c = self.clone();
        c.sql = true;
        c.dbname.get_or_insert_with(|| "postgres".to_string());
        c
    }

    pub fn is_sql(&self) -> bool {
        self.sql
    }

    /// The database the password file is searched for.
    pub fn password_database(&self) -> &str {
        match (&self.dbname, self.sql) {
            (Some(db), true) => db,
            _ => REPLICATION_DATABASE,
        }
    }

    /// The database a SQL connection ([`ConnConfig::for_sql`]) goes to.
    pub fn set_dbname(&mut self, name: impl Into<String>) {
        self.dbname = Some(name.into());
    }

    pub fn set_application_name(&mut self, name: impl Into<String>) {
        self.application_name = Some(name.into());
    }

    /// Sets the application name only if none was configured, like libpq's
    /// `fallback_application_name`.
    pub fn with_fallback_application_name(mut self, name: &str) -> Self {
        if self.application_name.is_none() {
            self.application_name = Some(name.to_string());
        }
        self
    }

    pub fn set_connect_timeout(&mut self, timeout: Option<Duration>) {
        self.connect_timeout = timeout;
    }

    /// The path of the server socket for a Unix-domain connection.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(socket_path(dir, self.port)),
            Host::Tcp(_) => None,
        }
    }

    /// What to call the server in messages: `127.0.0.1:5432`, `[::1]:5432`,
    /// `db.example.com:5432 (10.0.0.5)` or the socket path.
    pub fn display_target(&self) -> String {
        match &self.host {
            Host::Unix(dir) => socket_path(dir, self.port).display().to_string(),
            Host::Tcp(h) => {
                let hp = host_port(h, self.port);
                match self.hostaddr {
                    Some(a) if a.to_string() != *h => format!("{hp} ({a})"),
                    _ => hp,
                }
            }
        }
    }

    /// The password for `database`: the explicit one, else the first
    /// matching line of the password file. Replication connections pass
    /// [`REPLICATION_DATABASE`]. Reads the file on every call.
    pub fn lookup_password(&self, database: &str) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.0.clone());
        }
        let file = self.passfile.as_deref()?;
        let port = self.port.to_string();
        let host = self.pgpass_host();
        pgpass::lookup(file, &pgpass::Query { host: &host, port: &port, database, user: &self.user })
    }

    /// The host name a password file line must match; libpq's rule is that
    /// the default socket directory matches `localhost`.
    fn pgpass_host(&self) -> String {
        match &self.host {
            Host::Unix(dir) if self.host_is_default || dir == Path::new(DEFAULT_SOCKET_DIR) => "localhost".to_string(),
            Host::Unix(dir) => dir.display().to_string(),
            Host::Tcp(h) => h.clone(),
        }
    }
}

pub(crate) fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

fn unknown_option(key: &str) -> ConfigError {
    // Echo the name only when it looks like one, so a stray password typed
    // where a key belongs is not repeated back.
    let looks_like_key =
        !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if looks_like_key {
        ConfigError::UnknownOption(key.to_string())
    } else {
        ConfigError::Syntax("unknown connection option".to_string())
    }
}

/// `key=value` pairs separated by whitespace. Values may be single-quoted;
/// a backslash escapes the next character, quoted or not (as in libpq).
fn parse_key_value(s: &str, raw: &mut Raw) -> Result<(), ConfigError> {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            return Ok(());
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_text = &s[key_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(match Key::from_name(key_text) {
                Some(k) => ConfigError::Syntax(format!("missing \"=\" after \"{}\"", k.name())),
                None => ConfigError::Syntax(format!("expected key=value at offset {key_start}")),
            });
        }
        if key_text.is_empty() {
            return Err(ConfigError::Syntax(format!("missing option name before \"=\" at offset {i}")));
        }
        let key = Key::from_name(key_text).ok_or_else(|| unknown_option(key_text))?;
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(ConfigError::Syntax(format!("unterminated quoted value for {}", key.name())));
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        // Escapes only ever drop ASCII backslashes, so the bytes stay UTF-8.
        let value = String::from_utf8(value)
            .map_err(|_| ConfigError::Syntax(format!("the value of {} is not valid UTF-8", key.name())))?;
        raw.set(key, value);
    }
}

/// `[user[:password]@][host][:port][/dbname][?key=value&...]`, after the
/// scheme. Every part is percent-decoded; an IPv6 host goes in brackets; a
/// host that decodes to an absolute path is a socket directory.
fn parse_uri(rest: &str, raw: &mut Raw) -> Result<(), ConfigError> {
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    // Host and port cannot contain '@', so the last one ends the user info;
    // that also tolerates an unencoded '@' in a password.
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                raw.set(Key::User, percent_decode(user, "user name")?);
            }
            if let Some(p) = password {
                raw.set(Key::Password, percent_decode(p, "password")?);
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(ConfigError::Syntax("multiple hosts are not supported".to_string()));
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner
            .split_once(']')
            .ok_or_else(|| ConfigError::Syntax("missing \"]\" after an IPv6 host address".to_string()))?;
        if h.is_empty() {
            return Err(ConfigError::Syntax("empty IPv6 host address in brackets".to_string()));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ConfigError::Syntax("unexpected text after the IPv6 host address; expected \":port\"".to_string())
            })?),
        };
        (h, port)
    } else {
        match hostport.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(ConfigError::Syntax("an IPv6 host address must be written in brackets".to_string()));
            }
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        raw.set(Key::Host, percent_decode(host, "host")?);
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        raw.set(Key::Port, percent_decode(p, "port")?);
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        raw.set(Key::Dbname, percent_decode(db, "database name")?);
    }
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| ConfigError::Syntax("URI query parameter without \"=\"".to_string()))?;
        let k = percent_decode(k, "query parameter name")?;
        let key = Key::from_name(&k).ok_or_else(|| unknown_option(&k))?;
        raw.set(key, percent_decode(v, key.name())?);
    }
    Ok(())
}

/// Decodes `%XX` escapes; `what` names the part in errors, never its text.
fn percent_decode(s: &str, what: &str) -> Result<String, ConfigError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let v = hex
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConfigError::Syntax(format!("invalid percent-encoding in the {what} of the URI")))?;
            if v == 0 {
                return Err(ConfigError::Syntax(format!("%00 is not allowed in the {what} of the URI")));
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::Syntax(format!("the {what} of the URI is not valid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn parse(s: &str) -> ConnConfig {
        ConnConfig::parse_with_env(s, env_of(&[])).unwrap()
    }

    fn parse_err(s: &str) -> ConfigError {
        ConnConfig::parse_with_env(s, env_of(&[])).unwrap_err()
    }

    #[test]
    fn full_uri() {
        let c = parse(
            "postgres://archiver:s3cr%2Ft@db.example.com:5433/mydb?application_name=pgpitr%20a&sslmode=disable&connect_timeout=5",
        );
        assert_eq!(c.host(), &Host::Tcp("db.example.com".into()));
        assert_eq!(c.port(), 5433);
        assert_eq!(c.user(), "archiver");
        assert_eq!(c.password(), Some("s3cr/t"));
        assert_eq!(c.dbname(), Some("mydb"));
        assert_eq!(c.application_name(), Some("pgpitr a"));
        assert_eq!(c.sslmode(), SslMode::Disable);
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(c.display_target(), "db.example.com:5433");
        assert!(!format!("{c:?}").contains("s3cr"), "Debug must not show the password");
    }

    #[test]
    fn uri_ipv6_and_socket_hosts() {
        let c = parse("postgresql://[::1]:6543/db");
        assert_eq!(c.host(), &Host::Tcp("::1".into()));
        assert_eq!(c.display_target(), "[::1]:6543");
        let c = parse("postgresql://[fe80::1%25eth0]/");
        assert_eq!(c.host(), &Host::Tcp("fe80::1%eth0".into()));
        assert_eq!(c.port(), 5432);

        let c = parse("postgresql://%2Fvar%2Flib%2Fpostgresql:5499/db");
        assert_eq!(c.host(), &Host::Unix("/var/lib/postgresql".into()));
        assert_eq!(c.display_target(), "/var/lib/postgresql/.s.PGSQL.5499");
        let c = parse("postgresql:///db?host=/tmp&port=5999");
        assert_eq!(c.host(), &Host::Unix("/tmp".into()));
        assert_eq!(c.socket_path().unwrap(), PathBuf::from("/tmp/.s.PGSQL.5999"));
    }

    #[test]
    fn uri_query_overrides_and_at_in_password() {
        let c = parse("postgres://u:p@ss@h/db1?dbname=db2&user=other");
        assert_eq!(c.password(), Some("p@ss"));
        assert_eq!(c.dbname(), Some("db2"));
        assert_eq!(c.user(), "other");
        let c = parse("postgres://");
        assert_eq!(c.host(), &Host::Unix(DEFAULT_SOCKET_DIR.into()));
        assert!(c.host_is_default());
    }

    #[test]
    fn uri_errors_do_not_echo_password() {
        let e = parse_err("postgres://u:hunter2%zz@h/db");
        assert!(e.to_string().contains("percent-encoding in the password"), "{e}");
        assert!(!e.to_string().contains("hunter2"));
        assert!(matches!(parse_err("postgres://h1,h2/db"), ConfigError::Syntax(_)));
        assert!(matches!(parse_err("postgres://::1/db"), ConfigError::Syntax(_)));
        assert!(matches!(parse_err("postgres://[::1/db"), ConfigError::Syntax(_)));
        assert!(matches!(parse_err("postgres://h/db?bogus=1"), ConfigError::UnknownOption(k) if k == "bogus"));
        assert!(matches!(parse_err("postgres://h/db?sslmode"), ConfigError::Syntax(_)));
        assert!(matches!(parse_err("postgres://h:99999/db"), ConfigError::InvalidValue { key: "port", .. }));
        assert!(matches!(parse_err("postgres://h/d%00b"), ConfigError::Syntax(_)));
    }

    #[test]
    fn key_value_form() {
        let c = parse(r"host=10.0.0.5 port = 5433 user='arch iver' password='it\'s \\ ok' application_name=a\ b");
        assert_eq!(c.host(), &Host::Tcp("10.0.0.5".into()));
        assert_eq!(c.port(), 5433);
        assert_eq!(c.user(), "arch iver");
        assert_eq!(c.password(), Some(r"it's \ ok"));
        assert_eq!(c.application_name(), Some("a b"));
        assert_eq!(c.sslmode(), SslMode::Prefer);
        let c = parse("hostaddr=127.0.0.1 port=5999");
        assert_eq!(c.host(), &Host::Tcp("127.0.0.1".into()));
        assert_eq!(c.display_target(), "127.0.0.1:5999");
        let c = parse("host=db.local hostaddr=10.1.2.3");
        assert_eq!(c.display_target(), "db.local:5432 (10.1.2.3)");
        let c = parse("host=/tmp");
        assert_eq!(c.host(), &Host::Unix("/tmp".into()));
        assert!(!c.host_is_default());
    }

    #[test]
    fn key_value_errors() {
        assert!(matches!(parse_err("host=x bogus=1"), ConfigError::UnknownOption(k) if k == "bogus"));
        let e = parse_err("host=x hunter2");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("offset 7"), "{e}");
        assert_eq!(parse_err("host x").to_string(), "malformed connection string: missing \"=\" after \"host\"");
        let e = parse_err("password='hunter2");
        assert_eq!(e.to_string(), "malformed connection string: unterminated quoted value for password");
        assert!(matches!(parse_err("=x"), ConfigError::Syntax(_)));
        assert!(matches!(parse_err("port=abc"), ConfigError::InvalidValue { key: "port", .. }));
        assert!(matches!(parse_err("port=0"), ConfigError::InvalidValue { key: "port", .. }));
        assert!(matches!(parse_err("sslmode=maybe"), ConfigError::InvalidValue { key: "sslmode", .. }));
        assert!(matches!(parse_err("connect_timeout=soon"), ConfigError::InvalidValue { .. }));
        assert!(matches!(parse_err("hostaddr=db.local"), ConfigError::InvalidValue { key: "hostaddr", .. }));
        assert!(matches!(parse_err("host=a,b"), ConfigError::InvalidValue { key: "host", .. }));
        assert!(matches!(parse_err("host=/tmp hostaddr=127.0.0.1"), ConfigError::InvalidValue { key: "host", .. }));
        for bad in ["password=hunter2 nonsense", "password=hunter2 x=", "password='hunter2"] {
            let e = parse_err(bad);
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn environment_fills_unset_options() {
        let env = env_of(&[
            ("PGHOST", "pg.internal"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGSSLMODE", "disable"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGPASSFILE", "/somewhere/pgpass"),
        ]);
        let c = ConnConfig::parse_with_env("port=7000", &env).unwrap();
        assert_eq!(c.host(), &Host::Tcp("pg.internal".into()));
        assert_eq!(c.port(), 7000, "the string wins over the environment");
        assert_eq!(c.user(), "envuser");
        assert_eq!(c.password(), Some("envpw"));
        assert_eq!(c.dbname(), Some("envdb"));
        assert_eq!(c.application_name(), Some("envapp"));
        assert_eq!(c.sslmode(), SslMode::Disable);
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(2)), "libpq raises 1 s to 2 s");
        assert_eq!(c.passfile(), Some(Path::new("/somewhere/pgpass")));
        // An explicit empty value blocks the environment, then means "default".
        let c = ConnConfig::parse_with_env("host=''", &env).unwrap();
        assert_eq!(c.host(), &Host::Unix(DEFAULT_SOCKET_DIR.into()));
        let e = ConnConfig::parse_with_env("", env_of(&[("PGPORT", "x")])).unwrap_err();
        assert!(matches!(e, ConfigError::InvalidValue { key: "port", .. }));
    }

    #[test]
    fn defaults() {
        let c = ConnConfig::parse_with_env("", env_of(&[("USER", "alice"), ("HOME", "/home/alice")])).unwrap();
        assert_eq!(c.host(), &Host::Unix(DEFAULT_SOCKET_DIR.into()));
        assert!(c.host_is_default());
        assert_eq!(c.port(), 5432);
        assert_eq!(c.user(), "alice");
        assert_eq!(c.password(), None);
        assert_eq!(c.dbname(), None);
        assert_eq!(c.sslmode(), SslMode::Prefer);
        assert_eq!(c.connect_timeout(), Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(c.passfile(), Some(Path::new("/home/alice/.pgpass")));
        assert_eq!(c.display_target(), "/var/run/postgresql/.s.PGSQL.5432");
        let c = ConnConfig::parse_with_env("", env_of(&[("LOGNAME", "bob")])).unwrap();
        assert_eq!(c.user(), "bob");
        assert_eq!(c.passfile(), None);
        assert_eq!(parse("connect_timeout=0").connect_timeout(), None);
        assert_eq!(parse("").user(), "postgres");
    }

    #[test]
    fn sslmode_round_trip_and_tls_requirement() {
        for m in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            let mode: SslMode = m.parse().unwrap();
            assert_eq!(mode.to_string(), m);
            assert_eq!(mode.requires_tls(), matches!(m, "require" | "verify-ca" | "verify-full"));
            assert_eq!(mode.tries_tls(), !matches!(m, "disable" | "allow"));
        }
    }

    #[test]
    fn tls_files_from_options_environment_and_home() {
        let c =
            ConnConfig::parse_with_env("host=h sslrootcert=/ca.pem sslcert=/c.pem sslkey=/k.pem", |_| None).unwrap();
        let f = c.tls_files();
        assert_eq!(f.rootcert, Some(TlsFile { path: "/ca.pem".into(), explicit: true }));
        assert_eq!(f.cert, Some(TlsFile { path: "/c.pem".into(), explicit: true }));
        assert_eq!(f.key, Some(TlsFile { path: "/k.pem".into(), explicit: true }));
        assert!(!f.system_roots());
        // Unset: libpq's defaults under ~/.postgresql, used only if present.
        let c =
            ConnConfig::parse_with_env("host=h", env_of(&[("HOME", "/home/a"), ("PGSSLROOTCERT", "system")])).unwrap();
        let f = c.tls_files();
        assert!(f.system_roots());
        assert_eq!(f.cert, Some(TlsFile { path: "/home/a/.postgresql/postgresql.crt".into(), explicit: false }));
        assert_eq!(f.key, Some(TlsFile { path: "/home/a/.postgresql/postgresql.key".into(), explicit: false }));
        assert_eq!(f.crl, Some(TlsFile { path: "/home/a/.postgresql/root.crl".into(), explicit: false }));
        let env = env_of(&[("PGSSLCRL", "/env.crl")]);
        let c = ConnConfig::parse_with_env("host=h", env).unwrap();
        assert_eq!(c.tls_files().crl, Some(TlsFile { path: "/env.crl".into(), explicit: true }));
        let c = ConnConfig::parse_with_env("host=h sslcrl=/opt.crl", env_of(&[("PGSSLCRL", "/env.crl")])).unwrap();
        assert_eq!(c.tls_files().crl, Some(TlsFile { path: "/opt.crl".into(), explicit: true }));
        assert_eq!(parse("host=h").tls_files(), &TlsFiles::default());
        assert_eq!(parse("host=h").channel_binding(), ChannelBinding::Prefer);
        assert_eq!(parse("channel_binding=require").channel_binding(), ChannelBinding::Require);
        let env = env_of(&[("PGCHANNELBINDING", "disable")]);
        assert_eq!(ConnConfig::parse_with_env("", env).unwrap().channel_binding(), ChannelBinding::Disable);
        assert!(matches!(parse_err("channel_binding=maybe"), ConfigError::InvalidValue { key: "channel_binding", .. }));
        let uri = ConnConfig::parse_with_env("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fr.pem", |_| None);
        assert_eq!(uri.unwrap().tls_files().rootcert, Some(TlsFile { path: "/r.pem".into(), explicit: true }));
    }

    #[test]
    fn setters() {
        let mut c = parse("host=h");
        c.set_password("pw");
        assert_eq!(c.password(), Some("pw"));
        assert_eq!(c.lookup_password("replication").as_deref(), Some("pw"));
        c.set_password("");
        assert_eq!(c.password(), None);
        let c = c.with_fallback_application_name("pgpitr");
        assert_eq!(c.application_name(), Some("pgpitr"));
        let c = parse("application_name=mine").with_fallback_application_name("pgpitr");
        assert_eq!(c.application_name(), Some("mine"));
    }
}
