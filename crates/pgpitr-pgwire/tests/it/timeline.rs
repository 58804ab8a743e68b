//! Timeline switches: TIMELINE_HISTORY, the end of an old timeline, and
//! reusing the connection after it.

use super::*;
use pgpitr_pgwire::{ErrorKind, ReplicationStream, StreamMessage};
use pgpitr_types::{Lsn, TimelineHistory, TimelineId};
use std::time::Duration;
use tokio::time::timeout;

async fn next(stream: &mut ReplicationStream<'_>) -> StreamMessage {
    timeout(Duration::from_secs(30), stream.next()).await.expect("a message within 30 s").expect("stream message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_a_promotion_to_the_next_timeline() {
    let primary = PgCluster::start_default();
    primary.sql("CREATE TABLE before_promotion AS SELECT g FROM generate_series(1, 1000) g");
    let standby = primary.start_standby();
    standby.promote();
    standby.sql("CREATE TABLE after_promotion AS SELECT g FROM generate_series(1, 1000) g");

    let mut conn = connect_repl(&standby).await;
    let sys = conn.identify_system().await.unwrap();
    assert_eq!(sys.timeline, TimelineId(2));
    let seg = conn.wal_segment_size().await.unwrap();

    let (name, content) = conn.timeline_history(TimelineId(2)).await.unwrap();
    assert_eq!(name, "00000002.history");
    let on_disk = std::fs::read(standby.datadir().join("pg_wal").join(&name)).unwrap();
    assert_eq!(&content[..], &on_disk[..]);
    let history = TimelineHistory::parse(TimelineId(2), std::str::from_utf8(&content).unwrap()).unwrap();
    assert_eq!(history.entries.len(), 1);
    assert_eq!(history.entries[0].parent, TimelineId(1));
    let switch = history.entries[0].switchpoint;

    // Timeline 1 streams exactly up to the switch point, then ends.
    let start = switch.segment_floor(seg);
    let mut stream = conn.start_physical(None, start, TimelineId(1)).await.unwrap();
    let mut pos = start;
    let end = loop {
        match next(&mut stream).await {
            StreamMessage::XLogData { start, data, .. } => {
                assert_eq!(start, pos);
                pos = start.checked_add(data.len() as u64).unwrap();
            }
            StreamMessage::Keepalive { .. } => {}
            eot @ StreamMessage::EndOfTimeline { .. } => break eot,
        }
    };
    assert_eq!(end, StreamMessage::EndOfTimeline { next_tli: TimelineId(2), next_tli_start: switch });
    assert_eq!(pos, switch, "old-timeline WAL ends at the switch point");
    assert!(matches!(stream.next().await.unwrap_err().kind(), ErrorKind::Unusable(_)));
    drop(stream);

    // The connection is a command connection again.
    assert!(conn.is_usable());
    assert_eq!(conn.timeline_history(TimelineId(2)).await.unwrap().0, "00000002.history");

    // Starting right at the end of the old timeline skips COPY altogether.
    let mut stream = conn.start_physical(None, switch, TimelineId(1)).await.unwrap();
    assert_eq!(
        next(&mut stream).await,
        StreamMessage::EndOfTimeline { next_tli: TimelineId(2), next_tli_start: switch }
    );
    drop(stream);

    // And the new timeline continues from the switch point.
    let mut stream = conn.start_physical(None, switch, TimelineId(2)).await.unwrap();
    loop {
        match next(&mut stream).await {
            StreamMessage::XLogData { start, data, .. } => {
                assert_eq!(start, switch);
                assert!(!data.is_empty());
                break;
            }
            StreamMessage::Keepalive { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    stream.finish().await.unwrap();

    // A start point beyond the old timeline's end is not in the history.
    let beyond = Lsn(switch.0 + 0x100_0000);
    let err = conn.start_physical(None, beyond, TimelineId(1)).await.unwrap_err();
    assert!(err.to_string().contains("is not in this server's history"), "{err}");
    assert!(!err.is_transient());
    let err = conn.timeline_history(TimelineId(9)).await.unwrap_err();
    assert!(err.pg_error().is_some(), "{err}");
    conn.identify_system().await.unwrap();
}
