//! `pgpitr stream --metrics-addr`: Prometheus metrics and `/healthz`,
//! scraped over plain HTTP from the real binary.

use crate::common::{Backend, StreamProc, lsn, pgpitr, run, wait_streaming};
use pgpitr_testkit::{PgCluster, free_port, wait_for};
use std::io::{Read, Write};
use std::time::Duration;

pub(crate) struct Reply {
    status: u16,
    content_type: String,
    pub(crate) body: String,
}

pub(crate) fn get(port: u16, path: &str) -> Option<Reply> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    Some(Reply { status, content_type, body: body.to_owned() })
}

/// The value of one sample, by its full name (labels excluded).
pub(crate) fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n.split('{').next()? == name).then(|| v.parse().ok())?
    })
}

pub(crate) fn scrape(port: u16) -> String {
    let r = get(port, "/metrics").expect("scrape /metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The metrics follow the stream: positions, the newest durable commit,
/// what waits for storage; `/healthz` follows the server going away and
/// coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_the_stream() {
    let backend = Backend::local();
    let mut pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _s = StreamProc::start(&pg, &backend, &["--metrics-addr", &addr]);
    wait_streaming(&pg, "pgpitr");

    let before = unix_now();
    pg.sql("INSERT INTO t VALUES (1)");
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let body = wait_for(Duration::from_secs(10), || {
        let b = scrape(port);
        (sample(&b, "pgpitr_stream_durable_lsn")? >= end.0 as f64).then_some(b)
    })
    .expect("durable_lsn never reached the commit");
    let r = get(port, "/metrics").unwrap();
    assert!(r.content_type.starts_with("application/openmetrics-text"), "{}", r.content_type);
    assert!(body.trim_end().ends_with("# EOF"), "not OpenMetrics: {body}");
    assert!(body.contains("pgpitr_stream_durable_lsn{slot=\"pgpitr\"}"), "{body}");
    assert_eq!(sample(&body, "pgpitr_stream_up"), Some(1.0));
    assert_eq!(sample(&body, "pgpitr_stream_timeline"), Some(1.0));
    assert!(sample(&body, "pgpitr_stream_received_lsn").unwrap() >= end.0 as f64);
    assert!(sample(&body, "pgpitr_stream_received_bytes_total").unwrap() > 0.0);
    assert!(sample(&body, "pgpitr_stream_stored_objects_total").unwrap() >= 1.0);
    let commit = sample(&body, "pgpitr_stream_durable_commit_timestamp_seconds").expect("no durable commit time");
    assert!(commit >= before - 1.0 && commit <= unix_now() + 1.0, "commit time {commit}, insert at {before}");
    assert_eq!(sample(&body, "pgpitr_backup_succeeded_total"), None, "no schedule, no backup metrics");
    // Idle and all stored: nothing waits.
    let idle = wait_for(Duration::from_secs(5), || {
        let b = scrape(port);
        (sample(&b, "pgpitr_stream_unstored_age_seconds")? == 0.0).then_some(b)
    });
    assert!(idle.is_some(), "WAL still waiting for storage on an idle server");
    let h = get(port, "/healthz").unwrap();
    assert_eq!((h.status, h.body.as_str()), (200, "ok: streaming\n"));
    assert_eq!(get(port, "/nothing").unwrap().status, 404);

    pg.stop();
    let down = wait_for(Duration::from_secs(20), || {
        let h = get(port, "/healthz")?;
        (h.status == 503).then_some(h.body)
    })
    .expect("/healthz stayed 200 with the server down");
    assert!(down.starts_with("not streaming"), "{down}");
    assert_eq!(sample(&scrape(port), "pgpitr_stream_up"), Some(0.0));

    pg.start();
    let back = wait_for(Duration::from_secs(60), || (get(port, "/healthz")?.status == 200).then_some(()));
    assert!(back.is_some(), "/healthz did not recover with the server");
    let body = scrape(port);
    assert_eq!(sample(&body, "pgpitr_stream_up"), Some(1.0));
    assert!(sample(&body, "pgpitr_stream_reconnects_total").unwrap() >= 1.0, "{body}");
    assert!(sample(&body, "pgpitr_stream_merges_total").is_some(), "{body}");
    assert!(sample(&body, "pgpitr_stream_open_segment_objects").is_some_and(|n| n <= 15.0), "{body}");
}

/// A scheduled backup shows in the backup metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_show_in_metrics_s3() {
    let backend = Backend::s3();
    let pg = PgCluster::start_default();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // No backup yet: one is taken at start.
    let _s = StreamProc::start(
        &pg,
        &backend,
        &["--metrics-addr", &addr, "--backup-every", "1h", "--backup-checkpoint", "fast"],
    );
    let body = wait_for(Duration::from_secs(60), || {
        let b = get(port, "/metrics")?.body;
        (sample(&b, "pgpitr_backup_succeeded_total")? >= 1.0).then_some(b)
    })
    .expect("the scheduled backup never showed as succeeded");
    let done = sample(&body, "pgpitr_backup_last_success_timestamp_seconds").expect("no last success time");
    assert!((unix_now() - done).abs() < 60.0, "last success at {done}");
    assert!(sample(&body, "pgpitr_backup_last_duration_seconds").unwrap() > 0.0);
    assert_eq!(sample(&body, "pgpitr_backup_failed_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_address_is_a_start_up_error() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = pgpitr();
    cmd.args(["stream", "--repo", &backend.url(), "-d", &crate::common::conninfo(&pg), "--metrics-addr", &addr])
        .env("PGPASSWORD", pgpitr_testkit::REPL_PASSWORD);
    run(&mut cmd).fails_with(&["cannot listen for metrics on", &addr]);
}
