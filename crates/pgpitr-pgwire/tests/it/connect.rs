//! Connecting: every authentication method, and every way it can fail.

use super::*;
use pgpitr_pgwire::{ErrorKind, Op};
use pgpitr_testkit::*;
use std::io::{Read, Write};

#[tokio::test]
async fn every_auth_method_connects() {
    let pg = PgCluster::start_default();
    // pg_hba: scram-sha-256, md5, password (cleartext) and trust.
    for (user, password) in
        [(REPL_USER, REPL_PASSWORD), (MD5_USER, MD5_PASSWORD), (PLAIN_USER, PLAIN_PASSWORD), (TRUST_USER, "")]
    {
        let mut conn = ReplicationConnection::connect(&config(&pg, user, password))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(conn.target(), format!("127.0.0.1:{}", pg.port()));
        assert_eq!(conn.parameter("session_authorization"), Some(user));
        assert_eq!(conn.parameter("integer_datetimes"), Some("on"));
        assert!(conn.backend_pid().is_some());
        // The session really is a physical walsender.
        let pid = conn.backend_pid().unwrap();
        let kind = pg.sql(&format!("SELECT backend_type FROM pg_stat_activity WHERE pid = {pid}"));
        assert_eq!(kind, "walsender", "{user}");
        let sys = conn.identify_system().await.unwrap();
        assert_eq!(sys.dbname, None, "{user}: a physical walsender has no database");
        conn.close().await;
    }
}

#[tokio::test]
async fn application_name_reaches_the_server() {
    let pg = PgCluster::start_default();
    let url = format!("{}?application_name=pgpitr-test", pg.url(REPL_USER, REPL_PASSWORD));
    let conf = ConnConfig::parse_with_env(&url, |_| None).unwrap();
    let conn = ReplicationConnection::connect(&conf).await.unwrap();
    let pid = conn.backend_pid().unwrap();
    assert_eq!(pg.sql(&format!("SELECT application_name FROM pg_stat_activity WHERE pid = {pid}")), "pgpitr-test");
}

#[tokio::test]
async fn unix_socket() {
    let pg = PgCluster::start_default();
    let conninfo = format!("host='{}' port={} user={SUPERUSER}", pg.sockdir().display(), pg.port());
    let conf = ConnConfig::parse_with_env(&conninfo, |_| None).unwrap();
    let mut conn = ReplicationConnection::connect(&conf).await.unwrap();
    let expected = pg.sockdir().join(format!(".s.PGSQL.{}", pg.port()));
    assert_eq!(conn.target(), expected.display().to_string());
    assert_eq!(conf.display_target(), conn.target());
    conn.identify_system().await.unwrap();
    // Percent-encoded socket directory in a URI.
    let dir: String = pg
        .sockdir()
        .display()
        .to_string()
        .bytes()
        .map(|b| if b == b'/' { "%2F".to_string() } else { (b as char).to_string() })
        .collect();
    let url = format!("postgresql://{SUPERUSER}@{dir}:{}/postgres", pg.port());
    let conf = ConnConfig::parse_with_env(&url, |_| None).unwrap();
    ReplicationConnection::connect(&conf).await.unwrap();
}

#[tokio::test]
async fn wrong_password_names_the_user_and_is_definite() {
    let pg = PgCluster::start_default();
    for user in [REPL_USER, MD5_USER, PLAIN_USER] {
        let err = ReplicationConnection::connect(&config(&pg, user, "not-the-password")).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Auth { .. }), "{user}: {err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot connect to 127.0.0.1:{}: password authentication failed for user \"{user}\"", pg.port())
        );
        assert_eq!(err.code(), Some("28P01"));
        assert_eq!(err.op(), Op::Connect);
        assert!(!err.is_transient());
        assert!(!format!("{err:?}").contains("not-the-password"), "the password must not leak");
    }
}

#[tokio::test]
async fn missing_password_is_reported_before_guessing() {
    let pg = PgCluster::start_default();
    let conf = ConnConfig::parse_with_env(&pg.url(REPL_USER, ""), |_| None).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoPassword { user } if user == REPL_USER), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn password_file_is_used_when_the_server_asks() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    let port = pg.port();
    std::fs::write(
        &passfile,
        format!(
            "# the database field is `replication` for physical replication\n\
             127.0.0.1:{port}:postgres:{REPL_USER}:wrong-for-sql-db\n\
             127.0.0.1:{port}:replication:{REPL_USER}:{REPL_PASSWORD}\n\
             127.0.0.1:*:*:{MD5_USER}:wrong\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = passfile.display().to_string();
    let env = |k: &str| (k == "PGPASSFILE").then(|| path.clone());

    let conf = ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user={REPL_USER}"), env).unwrap();
    let mut conn = ReplicationConnection::connect(&conf).await.unwrap();
    conn.identify_system().await.unwrap();

    let conf = ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user={MD5_USER}"), env).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert!(err.to_string().ends_with(&format!("(password taken from {path})")), "{err}");

    // A group-readable file is ignored, as libpq does.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf = ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user={REPL_USER}"), env).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoPassword { .. }), "{err}");

    // Trust needs no password, so even an unreadable setup never matters.
    let conf = ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user={TRUST_USER}"), env).unwrap();
    ReplicationConnection::connect(&conf).await.unwrap();
}

#[tokio::test]
async fn role_without_replication_attribute() {
    let pg = PgCluster::start_default();
    let err = ReplicationConnection::connect(&config(&pg, NOREPL_USER, NOREPL_PASSWORD)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoReplicationPrivilege { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot connect to 127.0.0.1:{}: role \"{NOREPL_USER}\" is not allowed to start replication \
             (needs the REPLICATION attribute)",
            pg.port()
        )
    );
    assert_eq!(err.code(), Some("42501"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn replication_disabled_on_the_server() {
    let pg = PgCluster::builder().setting("wal_level", "minimal").setting("max_wal_senders", "0").start();
    let err = ReplicationConnection::connect(&config(&pg, REPL_USER, REPL_PASSWORD)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::ReplicationDisabled(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot connect to 127.0.0.1:{}: replication is disabled on the server \
             (max_wal_senders = 0; set wal_level=replica and max_wal_senders > 0)",
            pg.port()
        )
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn closed_port_is_refused_and_transient() {
    let port = free_port();
    let conf = ConnConfig::parse_with_env(&format!("postgres://u:p@127.0.0.1:{port}/db"), |_| None).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert_eq!(err.to_string(), format!("cannot connect to 127.0.0.1:{port}: connection refused"));
    assert!(err.is_transient());
}

#[tokio::test]
async fn stopped_server_then_restarted() {
    let mut pg = PgCluster::start_default();
    pg.stop();
    let err = ReplicationConnection::connect(&config(&pg, REPL_USER, REPL_PASSWORD)).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    pg.start();
    ReplicationConnection::connect(&config(&pg, REPL_USER, REPL_PASSWORD)).await.unwrap();
}

#[tokio::test]
async fn unresolvable_host() {
    let conf = ConnConfig::parse_with_env("host=no-such-host.invalid user=u", |_| None).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Dns { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "cannot connect to no-such-host.invalid:5432: could not translate host name \"no-such-host.invalid\""
        ),
        "{err}"
    );
}

/// A peer that accepts and then does `behave` with the socket, in a thread.
fn fake_peer(behave: impl FnOnce(std::net::TcpStream) + Send + 'static) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            behave(s);
        }
    });
    port
}

#[tokio::test]
async fn peer_that_never_answers_times_out() {
    let port = fake_peer(|s| {
        std::thread::sleep(std::time::Duration::from_secs(6));
        drop(s);
    });
    let conf =
        ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user=u connect_timeout=2"), |_| None).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Timeout(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("cannot connect to 127.0.0.1:{port}: timed out after 2 s"));
    assert!(err.is_transient());
}

#[tokio::test]
async fn peer_that_hangs_up_is_transient() {
    let port = fake_peer(|mut s| {
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
    });
    let conf = ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user=u"), |_| None).unwrap();
    let err = ReplicationConnection::connect(&conf).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Closed | ErrorKind::Io(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn peer_that_is_not_postgres_is_a_protocol_violation() {
    // prefer (the default) first asks for TLS; disable goes straight to the startup message.
    for mode in ["prefer", "disable"] {
        let port = fake_peer(|mut s| {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::sleep(std::time::Duration::from_secs(2));
        });
        let conf =
            ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={port} user=u sslmode={mode}"), |_| None).unwrap();
        let err = ReplicationConnection::connect(&conf).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Protocol(_)), "{mode}: {err:?}");
        assert!(err.to_string().contains("is this a PostgreSQL server?"), "{mode}: {err}");
        assert!(!err.is_transient());
    }
}
