//! TLS against a real server with `ssl = on`: encryption, libpq's
//! `sslmode` checks, client certificates, and the errors for each mistake.

use super::*;
use pgpitr_pgwire::{ErrorKind, StreamMessage};
use pgpitr_testkit::{MD5_PASSWORD, MD5_USER, PLAIN_PASSWORD, PLAIN_USER, TRUST_USER, TestPki, free_port};
use std::time::Duration;

/// A role that may only log in with a client certificate.
const CERT_USER: &str = "pgpitr_cert";

fn tls_cluster() -> (PgCluster, TestPki) {
    let pki = TestPki::generate(CERT_USER);
    let pg = PgCluster::start_default();
    pg.sql(&format!("CREATE ROLE {CERT_USER} LOGIN REPLICATION"));
    let hba = format!(
        "hostssl replication {CERT_USER} 127.0.0.1/32 cert\nhostssl all {CERT_USER} 127.0.0.1/32 cert\n\
         hostnossl replication {REPL_USER} 127.0.0.1/32 reject"
    );
    pg.enable_tls(&pki, &hba);
    (pg, pki)
}

/// `host` is what the certificate is checked against; the socket always
/// goes to 127.0.0.1. The environment is never read.
fn conf(pg: &PgCluster, host: &str, user: &str, extra: &str) -> ConnConfig {
    let s = format!("host={host} hostaddr=127.0.0.1 port={} user={user} {extra}", pg.port());
    ConnConfig::parse_with_env(&s, |_| None).expect("conninfo parses")
}

fn repl(pg: &PgCluster, host: &str, extra: &str) -> ConnConfig {
    conf(pg, host, REPL_USER, &format!("password={REPL_PASSWORD} {extra}"))
}

async fn refused(c: &ConnConfig) -> pgpitr_pgwire::Error {
    ReplicationConnection::connect(c).await.expect_err("the connection must be refused")
}

fn ssl_of(pg: &PgCluster, conn: &ReplicationConnection) -> String {
    pg.sql(&format!("SELECT ssl, version FROM pg_stat_ssl WHERE pid = {}", conn.backend_pid().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carries_scram_and_streaming() {
    let (pg, _pki) = tls_cluster();
    // prefer (the default) and require both encrypt; plain text is rejected
    // for this user by pg_hba.conf, so a fallback could not pass unseen.
    for mode in ["prefer", "require"] {
        let mut conn = ReplicationConnection::connect(&repl(&pg, "localhost", &format!("sslmode={mode}")))
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        let version = conn.tls_version().expect("TLS in use");
        assert_eq!(ssl_of(&pg, &conn), format!("t|{}", version.replace("TLSv1_", "TLSv1.")));
        let sys = conn.identify_system().await.unwrap();
        let start = sys.xlogpos.segment_floor(conn.wal_segment_size().await.unwrap());
        let mut stream = conn.start_physical(None, start, sys.timeline).await.unwrap();
        pg.sql("CREATE TABLE IF NOT EXISTS t AS SELECT 1 AS a; INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
        let end = pg.sql("SELECT pg_current_wal_lsn()").parse::<pgpitr_types::Lsn>().unwrap();
        let mut pos = start;
        while pos < end {
            let msg = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap();
            if let StreamMessage::XLogData { start, data, .. } = msg {
                assert_eq!(start, pos);
                pos = start.checked_add(data.len() as u64).unwrap();
            }
        }
        stream.finish().await.unwrap();
    }
    // disable is plain text, which pg_hba.conf rejects for this user.
    let err = refused(&repl(&pg, "localhost", "sslmode=disable")).await;
    assert!(matches!(err.kind(), ErrorKind::NoHbaEntry(_) | ErrorKind::Auth { .. }), "{err:?}");
    // allow tries plain text first, then TLS once the server refuses it.
    let conn = ReplicationConnection::connect(&repl(&pg, "localhost", "sslmode=allow")).await.unwrap();
    assert!(conn.tls_version().is_some(), "allow did not retry with TLS");
    assert!(ssl_of(&pg, &conn).starts_with("t|"), "{}", ssl_of(&pg, &conn));
    // A password that is wrong either way is still refused, after both tries.
    let wrong = conf(&pg, "localhost", REPL_USER, "password=wrong sslmode=allow");
    assert!(matches!(refused(&wrong).await.kind(), ErrorKind::Auth { .. }));
}

#[tokio::test]
async fn verify_modes_check_the_chain_and_the_host_name() {
    let (pg, pki) = tls_cluster();
    let ca = format!("sslrootcert={}", pki.path("ca.crt").display());
    // The certificate names localhost only.
    ReplicationConnection::connect(&repl(&pg, "localhost", &format!("sslmode=verify-full {ca}"))).await.unwrap();
    ReplicationConnection::connect(&repl(&pg, "127.0.0.1", &format!("sslmode=verify-ca {ca}"))).await.unwrap();
    let err = refused(&repl(&pg, "127.0.0.1", &format!("sslmode=verify-full {ca}"))).await;
    assert!(matches!(err.kind(), ErrorKind::Tls(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("certificate did not verify (sslmode=verify-full)") && msg.contains("127.0.0.1"), "{msg}");
    assert!(!err.is_transient());

    // A certificate from another CA fails every mode that has a root
    // certificate, require included (libpq's rule).
    let other = format!("sslrootcert={}", pki.path("other-ca.crt").display());
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = refused(&repl(&pg, "localhost", &format!("sslmode={mode} {other}"))).await;
        assert!(matches!(err.kind(), ErrorKind::Tls(_)), "{mode}: {err:?}");
        assert!(err.to_string().contains("UnknownIssuer"), "{mode}: {err}");
    }
}

#[tokio::test]
async fn revoked_server_certificates_are_refused_where_the_chain_is_checked() {
    let (pg, pki) = tls_cluster();
    let ca = format!("sslrootcert={}", pki.path("ca.crt").display());
    let crl = |name: &str| format!("sslcrl={}", pki.path(name).display());
    let clean = format!("sslmode=verify-full {ca} {}", crl("ca-empty.crl"));
    ReplicationConnection::connect(&repl(&pg, "localhost", &clean)).await.unwrap();
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = refused(&repl(&pg, "localhost", &format!("sslmode={mode} {ca} {}", crl("ca-revoked.crl")))).await;
        assert!(matches!(err.kind(), ErrorKind::Tls(_)), "{mode}: {err:?}");
        assert!(err.to_string().contains("Revoked"), "{mode}: {err}");
        assert!(!err.is_transient());
    }
    // With no root certificate nothing about the certificate is checked,
    // revocation included (libpq's rule for require).
    ReplicationConnection::connect(&repl(&pg, "localhost", &format!("sslmode=require {}", crl("ca-revoked.crl"))))
        .await
        .unwrap();
    // A set sslcrl must be readable and hold a CRL.
    for (file, says) in [("missing.crl", "cannot read sslcrl"), ("ca.crt", "no CRL in the file")] {
        let err = refused(&repl(&pg, "localhost", &format!("sslmode=verify-full {ca} {}", crl(file)))).await;
        assert!(err.to_string().contains(says), "{file}: {err}");
    }
}

#[tokio::test]
async fn client_certificate_logs_in_without_a_password() {
    let (pg, pki) = tls_cluster();
    let files = format!(
        "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    );
    let conn = ReplicationConnection::connect(&conf(&pg, "localhost", CERT_USER, &files)).await.unwrap();
    assert!(ssl_of(&pg, &conn).starts_with("t|"));
    assert_eq!(
        pg.sql(&format!("SELECT usename FROM pg_stat_activity WHERE pid = {}", conn.backend_pid().unwrap())),
        CERT_USER
    );

    // Without the certificate the cert rule rejects the login.
    let err = refused(&conf(&pg, "localhost", CERT_USER, "sslmode=require")).await;
    assert!(matches!(err.kind(), ErrorKind::Auth { .. }), "{err:?}");

    // A key others can read is refused before connecting, as libpq does.
    let loose = tempfile::tempdir().unwrap();
    let key = loose.path().join("client.key");
    std::fs::copy(pki.path("client.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let files = format!("sslmode=require sslcert={} sslkey={}", pki.path("client.crt").display(), key.display());
    let err = refused(&conf(&pg, "localhost", CERT_USER, &files)).await;
    assert!(err.to_string().contains("has group or world access (mode 644)"), "{err}");
}

/// The server checks the binding, so a login with channel_binding=require
/// proves our tls-server-end-point hash is the server's. Without SCRAM the
/// password is never sent.
#[tokio::test]
async fn channel_binding_binds_scram_to_the_tls_connection() {
    let (pg, _pki) = tls_cluster();
    let conn = ReplicationConnection::connect(&repl(&pg, "localhost", "sslmode=require channel_binding=require"))
        .await
        .unwrap();
    assert!(conn.tls_version().is_some());
    ReplicationConnection::connect(&repl(&pg, "localhost", "sslmode=require channel_binding=disable")).await.unwrap();

    let cases = [
        (MD5_USER, MD5_PASSWORD, "asked for an md5 password"),
        (PLAIN_USER, PLAIN_PASSWORD, "asked for a cleartext password"),
        (TRUST_USER, "", "asked for no authentication"),
    ];
    for (user, password, want) in cases {
        let c = conf(&pg, "localhost", user, &format!("password='{password}' sslmode=require channel_binding=require"));
        let err = refused(&c).await;
        assert!(matches!(err.kind(), ErrorKind::Tls(_)), "{user}: {err:?}");
        assert!(err.to_string().contains(want), "{user}: {err}");
        assert!(!err.is_transient());
    }
    // The same users log in when binding is only preferred.
    let c = conf(&pg, "localhost", MD5_USER, &format!("password={MD5_PASSWORD} sslmode=require"));
    ReplicationConnection::connect(&c).await.unwrap();

    let plain = PgCluster::start_default();
    let err = refused(&repl(&plain, "localhost", "channel_binding=require")).await;
    assert!(err.to_string().contains("channel_binding=require, but the connection is not encrypted"), "{err}");
}

#[tokio::test]
async fn plain_servers_and_missing_files() {
    let pg = PgCluster::start_default();
    // ssl = off: prefer and allow connect in plain text, require refuses.
    for mode in ["prefer", "allow", "disable"] {
        let conn = ReplicationConnection::connect(&repl(&pg, "localhost", &format!("sslmode={mode}"))).await.unwrap();
        assert_eq!(conn.tls_version(), None);
        assert_eq!(ssl_of(&pg, &conn), "f|");
    }
    for mode in ["require", "verify-ca", "verify-full"] {
        let ca_free = if mode == "require" { "" } else { "sslrootcert=system" };
        let err = refused(&repl(&pg, "localhost", &format!("sslmode={mode} {ca_free}"))).await;
        assert!(matches!(err.kind(), ErrorKind::Tls(_)), "{mode}: {err:?}");
        assert!(!err.is_transient());
        if mode != "verify-ca" {
            assert!(err.to_string().contains("does not accept TLS connections"), "{mode}: {err}");
        }
    }

    // Certificate problems are found before any network I/O: nothing listens here.
    let nobody = free_port();
    let cases = [
        ("sslmode=verify-ca", "needs the root certificate"),
        ("sslmode=verify-full sslrootcert=/nonexistent/root.crt", "cannot read sslrootcert /nonexistent/root.crt"),
        ("sslmode=require sslrootcert=system", "sslrootcert=system needs sslmode=verify-full"),
        ("sslmode=require sslcert=/nonexistent/c.crt", "cannot read sslcert /nonexistent/c.crt"),
    ];
    for (extra, want) in cases {
        let c = ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={nobody} user=u {extra}"), |_| None).unwrap();
        let err = refused(&c).await;
        assert!(matches!(err.kind(), ErrorKind::Tls(_)), "{extra}: {err:?}");
        assert!(err.to_string().contains(want), "{extra}: {err}");
    }
}
