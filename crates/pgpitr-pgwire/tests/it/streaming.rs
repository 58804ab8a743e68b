//! START_REPLICATION: WAL bytes, keepalives, status updates, and the ways a
//! stream ends.

use super::*;
use pgpitr_pgwire::{ErrorKind, ReplicationStream, StreamMessage};
use pgpitr_types::{Lsn, WalFileName, WalSegSize};
use std::time::Duration;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

async fn next(stream: &mut ReplicationStream<'_>) -> StreamMessage {
    timeout(WAIT, stream.next()).await.expect("a message within 30 s").expect("stream message")
}

/// Receives WAL from `start` up to at least `end`; checks the chunks are
/// contiguous and returns exactly the bytes of [start, end).
async fn receive_until(stream: &mut ReplicationStream<'_>, start: Lsn, end: Lsn) -> Vec<u8> {
    let mut got = Vec::new();
    let mut pos = start;
    while pos < end {
        match next(stream).await {
            StreamMessage::XLogData { start, data, end_of_wal, .. } => {
                assert_eq!(start, pos, "XLogData must continue where the previous one ended");
                assert!(end_of_wal >= start);
                got.extend_from_slice(&data);
                pos = start.checked_add(data.len() as u64).unwrap();
            }
            StreamMessage::Keepalive { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got.truncate(start.distance_to(end) as usize);
    got
}

fn segment_file(pg: &PgCluster, seg: WalSegSize, lsn: Lsn) -> (String, Vec<u8>) {
    let name = WalFileName::segment(pgpitr_types::TimelineId(1), lsn.segment_number(seg)).to_name(seg);
    let bytes = std::fs::read(pg.datadir().join("pg_wal").join(&name)).expect("read segment from pg_wal");
    (name, bytes)
}

/// Where a stream on a fresh slot starts: the segment holding the slot's
/// reserved position, on a cluster with 1 MiB segments.
struct Slotted {
    seg: WalSegSize,
    sys: pgpitr_pgwire::SystemInfo,
    start: Lsn,
    end: Lsn,
}

async fn slotted() -> (PgCluster, ReplicationConnection, Slotted) {
    let pg = PgCluster::builder().wal_segsize_mb(1).start();
    let mut conn = connect_repl(&pg).await;
    let seg = conn.wal_segment_size().await.unwrap();
    let sys = conn.identify_system().await.unwrap();
    let reserved = conn.create_physical_slot("arch", true).await.unwrap().unwrap();
    let start = reserved.segment_floor(seg);
    let end = reserved.segment_number(seg).end_lsn(seg).unwrap();
    (pg, conn, Slotted { seg, sys, start, end })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_wal_equals_the_segment_file() {
    let (pg, mut conn, Slotted { seg, sys, start, end: seg_end }) = slotted().await;

    let mut stream = conn.start_physical(Some("arch"), start, sys.timeline).await.unwrap();
    pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 5000) g; SELECT pg_switch_wal();");
    let got = receive_until(&mut stream, start, seg_end).await;
    let (name, file) = segment_file(&pg, seg, start);
    assert_eq!(got.len(), file.len());
    assert!(got == file, "streamed bytes differ from pg_wal/{name}");

    // Reporting the flush position advances the slot.
    stream.send_status(seg_end, seg_end, Lsn::INVALID, false).await.unwrap();
    let moved = pgpitr_testkit::wait_for(WAIT, || {
        let restart = pg.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'");
        (restart.parse::<Lsn>().ok()? == seg_end).then_some(())
    });
    assert!(moved.is_some(), "slot restart_lsn did not follow the reported flush position");
    let flush = pg.sql("SELECT flush_lsn FROM pg_stat_replication");
    assert_eq!(flush.parse::<Lsn>().unwrap(), seg_end);

    stream.finish().await.unwrap();
    assert!(conn.is_usable());
    conn.identify_system().await.expect("connection usable after finish()");
    assert_eq!(pg.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'arch'"), "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_is_cancel_safe_inside_select() {
    let (pg, mut conn, Slotted { seg, sys, start, end }) = slotted().await;
    let mut stream = conn.start_physical(Some("arch"), start, sys.timeline).await.unwrap();

    // Generate WAL in the background while the reader keeps abandoning next().
    let writer = {
        let bin = pg.bin("psql");
        let (sock, port) = (pg.sockdir(), pg.port());
        std::thread::spawn(move || {
            for i in 0..20 {
                let sql = format!("CREATE TABLE t{i} AS SELECT g, md5(g::text) AS h FROM generate_series(1, 500) g");
                let st = std::process::Command::new(&bin)
                    .args(["-X", "-q", "-U", pgpitr_testkit::SUPERUSER, "-d", "postgres", "-h"])
                    .arg(&sock)
                    .args(["-p", &port.to_string(), "-c", &sql])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            let st = std::process::Command::new(&bin)
                .args(["-X", "-q", "-U", pgpitr_testkit::SUPERUSER, "-d", "postgres", "-h"])
                .arg(&sock)
                .args(["-p", &port.to_string(), "-c", "SELECT pg_switch_wal()"])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        })
    };
    let mut got = Vec::new();
    let mut pos = start;
    let mut interrupted = 0u32;
    let deadline = tokio::time::Instant::now() + WAIT;
    while pos < end {
        assert!(tokio::time::Instant::now() < deadline, "no complete segment within 30 s");
        tokio::select! {
            m = stream.next() => match m.unwrap() {
                StreamMessage::XLogData { start: s, data, .. } => {
                    assert_eq!(s, pos, "a message was lost or repeated after cancellation");
                    got.extend_from_slice(&data);
                    pos = s.checked_add(data.len() as u64).unwrap();
                }
                StreamMessage::Keepalive { .. } => {}
                other => panic!("unexpected {other:?}"),
            },
            _ = tokio::time::sleep(Duration::from_micros(200)) => interrupted += 1,
        }
    }
    writer.join().unwrap();
    got.truncate(start.distance_to(end) as usize);
    let (name, file) = segment_file(&pg, seg, start);
    assert!(got == file, "bytes differ from pg_wal/{name} after {interrupted} interruptions");
    assert!(interrupted > 0, "the test never interrupted next()");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_a_reply_and_silence_gets_us_dropped() {
    let pg = PgCluster::builder().setting("wal_sender_timeout", "4s").start();
    let mut conn = connect_repl(&pg).await;
    let sys = conn.identify_system().await.unwrap();
    let mut stream = conn.start_physical(None, sys.xlogpos, sys.timeline).await.unwrap();

    // The walsender asks for a reply once half of wal_sender_timeout passes in silence.
    let end_of_wal = loop {
        if let StreamMessage::Keepalive { reply_requested: true, end_of_wal, .. } = next(&mut stream).await {
            break end_of_wal;
        }
    };
    stream.send_status(sys.xlogpos, sys.xlogpos, Lsn::INVALID, false).await.unwrap();
    let reported = pg.sql("SELECT write_lsn || ' ' || flush_lsn FROM pg_stat_replication");
    assert_eq!(reported, format!("{0} {0}", sys.xlogpos));
    assert!(end_of_wal >= sys.xlogpos);

    // Asking for a reply ourselves makes the server send a keepalive at once.
    stream.send_status(sys.xlogpos, sys.xlogpos, Lsn::INVALID, true).await.unwrap();
    assert!(matches!(next(&mut stream).await, StreamMessage::Keepalive { .. }));

    // Never answering: after wal_sender_timeout the server hangs up.
    let err = loop {
        match timeout(WAIT, stream.next()).await.expect("the server should time us out") {
            Ok(StreamMessage::Keepalive { .. }) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().starts_with("WAL streaming from 127.0.0.1:"), "{err}");
    drop(stream);
    assert!(!conn.is_usable());
    let err = conn.identify_system().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unusable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_stream_on_an_active_slot() {
    let pg = PgCluster::start_default();
    let mut first = connect_repl(&pg).await;
    let sys = first.identify_system().await.unwrap();
    let reserved = first.create_physical_slot("arch", true).await.unwrap().unwrap();
    let first_pid = first.backend_pid().unwrap() as u32;
    let _stream = first.start_physical(Some("arch"), reserved, sys.timeline).await.unwrap();

    let mut second = connect_repl(&pg).await;
    let err = second.start_physical(Some("arch"), reserved, sys.timeline).await.unwrap_err();
    match err.kind() {
        ErrorKind::SlotActive { slot, pid, .. } => {
            assert_eq!(slot, "arch");
            assert_eq!(*pid, Some(first_pid));
        }
        other => panic!("expected SlotActive, got {other:?}"),
    }
    assert_eq!(err.code(), Some("55006"));
    assert!(err.is_transient(), "the holder may be a dying predecessor");
    assert_eq!(
        err.to_string(),
        format!(
            "START_REPLICATION on 127.0.0.1:{} failed: replication slot \"arch\" is active for PID {first_pid}",
            pg.port()
        )
    );
    second.identify_system().await.expect("usable after the refusal");

    let err = second.start_physical(Some("no_such_slot"), reserved, sys.timeline).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::SlotMissing { .. }), "{err:?}");
    assert!(!err.is_transient());
    second.identify_system().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_walsender_is_transient() {
    let pg = PgCluster::start_default();
    let mut conn = connect_repl(&pg).await;
    let sys = conn.identify_system().await.unwrap();
    let pid = conn.backend_pid().unwrap();
    let mut stream = conn.start_physical(None, sys.xlogpos, sys.timeline).await.unwrap();
    assert_eq!(pg.sql(&format!("SELECT pg_terminate_backend({pid})")), "t");
    let err = loop {
        match timeout(WAIT, stream.next()).await.expect("termination within 30 s") {
            Ok(StreamMessage::Keepalive { .. } | StreamMessage::XLogData { .. }) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.code(), Some("57P01"), "{err}");
    assert!(err.to_string().contains("terminating connection due to administrator command"), "{err}");
    let err = stream.next().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unusable(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_wal_is_definite_and_leaves_the_connection_usable() {
    let pg =
        PgCluster::builder().wal_segsize_mb(1).setting("min_wal_size", "2MB").setting("max_wal_size", "4MB").start();
    let mut conn = connect_repl(&pg).await;
    let seg = conn.wal_segment_size().await.unwrap();
    let sys = conn.identify_system().await.unwrap();
    let old = sys.xlogpos.segment_floor(seg);
    for i in 0..4 {
        pg.sql(&format!("CREATE TABLE t{i} (x int); SELECT pg_switch_wal(); CHECKPOINT;"));
    }
    let name = WalFileName::segment(sys.timeline, old.segment_number(seg)).to_name(seg);
    assert!(!pg.datadir().join("pg_wal").join(&name).exists(), "{name} should have been removed");

    let mut stream = conn.start_physical(None, old, sys.timeline).await.unwrap();
    let err = loop {
        match timeout(WAIT, stream.next()).await.expect("an error within 30 s") {
            Ok(StreamMessage::Keepalive { .. }) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err.kind(), ErrorKind::WalRemoved(_)), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains(&format!("requested WAL segment {name} has already been removed")), "{err}");
    drop(stream);
    assert!(conn.is_usable());
    conn.identify_system().await.expect("usable after a streaming ERROR");
}
