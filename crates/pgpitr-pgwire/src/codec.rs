//! Wire framing and the replication sub-protocol. Pure functions over byte
//! buffers; no I/O. Every read checks the length first, and bad input
//! becomes an error string that names the message and what was wrong.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgpitr_types::{Lsn, TimelineId};
use postgres_protocol::message::backend::Message;
use std::time::{SystemTime, UNIX_EPOCH};

/// Postgres never sends a message longer than its 1 GB allocation limit; a
/// bigger length means corruption or a peer that is not Postgres.
pub(crate) const MAX_MESSAGE_LEN: usize = 1 << 30;

/// Seconds from the Unix epoch to the Postgres epoch, 2000-01-01 00:00 UTC.
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

/// One complete backend message.
pub(crate) enum Backend {
    /// CopyBothResponse ('W'), which postgres-protocol does not know.
    CopyBoth,
    /// CopyData ('d'); the payload shares the read buffer's allocation.
    CopyData(Bytes),
    Other(Message),
}

impl Backend {
    /// The protocol name of the message, for error text.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::CopyBoth => "CopyBothResponse",
            Backend::CopyData(_) => "CopyData",
            Backend::Other(m) => match m {
                Message::AuthenticationOk
                | Message::AuthenticationCleartextPassword
                | Message::AuthenticationMd5Password(_)
                | Message::AuthenticationSasl(_)
                | Message::AuthenticationSaslContinue(_)
                | Message::AuthenticationSaslFinal(_) => "an authentication request",
                Message::BackendKeyData(_) => "BackendKeyData",
                Message::CommandComplete(_) => "CommandComplete",
                Message::CopyDone => "CopyDone",
                Message::CopyInResponse(_) => "CopyInResponse",
                Message::CopyOutResponse(_) => "CopyOutResponse",
                Message::DataRow(_) => "DataRow",
                Message::EmptyQueryResponse => "EmptyQueryResponse",
                Message::ErrorResponse(_) => "ErrorResponse",
                Message::NoticeResponse(_) => "NoticeResponse",
                Message::ParameterStatus(_) => "ParameterStatus",
                Message::ReadyForQuery(_) => "ReadyForQuery",
                Message::RowDescription(_) => "RowDescription",
                _ => "an extended-protocol message",
            },
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Takes one complete message off the front of `buf`, or returns `None`
/// when more bytes are needed. Leaves `buf` untouched unless a whole message
/// is consumed, which is what makes reading cancel-safe.
pub(crate) fn next_message(buf: &mut BytesMut) -> Result<Option<Backend>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(format!("message {} has length {len}, less than its own length field", tag_name(tag)));
    }
    if len > MAX_MESSAGE_LEN {
        return Err(format!(
            "message {} claims {len} bytes, more than Postgres ever sends; is this a PostgreSQL server?",
            tag_name(tag)
        ));
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    match tag {
        b'W' => {
            let mut body = buf.split_to(len + 1).freeze();
            body.advance(5);
            parse_copy_both_response(&body)?;
            Ok(Some(Backend::CopyBoth))
        }
        b'd' => {
            let mut body = buf.split_to(len + 1).freeze();
            body.advance(5);
            Ok(Some(Backend::CopyData(body)))
        }
        _ => match Message::parse(buf) {
            Ok(Some(m)) => Ok(Some(Backend::Other(m))),
            Ok(None) => Err(format!("message {} could not be framed", tag_name(tag))),
            Err(e) => Err(format!("malformed message {}: {e}", tag_name(tag))),
        },
    }
}

/// Names a message tag for error text: printable tags as `'X'`, others in hex.
pub(crate) fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() { format!("'{}'", tag as char) } else { format!("0x{tag:02x}") }
}

/// CopyBothResponse: Int8 overall format, Int16 column count, Int16 per column.
fn parse_copy_both_response(body: &[u8]) -> Result<(), String> {
    if body.len() < 3 {
        return Err(format!("CopyBothResponse is {} bytes, expected at least 3", body.len()));
    }
    let ncols = u16::from_be_bytes([body[1], body[2]]) as usize;
    if body.len() != 3 + 2 * ncols {
        return Err(format!(
            "CopyBothResponse is {} bytes, expected {} for {ncols} columns",
            body.len(),
            3 + 2 * ncols
        ));
    }
    Ok(())
}

/// What arrives on a physical replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// WAL bytes starting at `start`. `data` shares the receive buffer; no copy.
    XLogData {
        start: Lsn,
        /// The end of WAL on the server when this was sent.
        end_of_wal: Lsn,
        /// Server clock, microseconds since 2000-01-01 00:00 UTC.
        send_time: i64,
        data: Bytes,
    },
    /// A heartbeat; when `reply_requested`, answer soon with
    /// `ReplicationStream::send_status` or the server drops the connection
    /// after `wal_sender_timeout`.
    Keepalive { end_of_wal: Lsn, send_time: i64, reply_requested: bool },
    /// The server has sent all WAL of the requested timeline: it ended at
    /// `next_tli_start`, where `next_tli` begins. The connection is idle
    /// again and accepts `TIMELINE_HISTORY` and a new `START_REPLICATION`.
    EndOfTimeline { next_tli: TimelineId, next_tli_start: Lsn },
}

impl StreamMessage {
    /// Decodes the payload of a CopyData message received while streaming:
    /// XLogData (`w`) or a primary keepalive (`k`).
    pub fn decode(payload: Bytes) -> Result<StreamMessage, String> {
        let Some(&kind) = payload.first() else {
            return Err("empty CopyData message in the replication stream".to_string());
        };
        match kind {
            b'w' => {
                if payload.len() < 25 {
                    return Err(format!("XLogData message is {} bytes, expected at least 25", payload.len()));
                }
                let start = Lsn(be_u64(&payload[1..9]));
                let end_of_wal = Lsn(be_u64(&payload[9..17]));
                let send_time = be_u64(&payload[17..25]) as i64;
                let data = payload.slice(25..);
                if start.checked_add(data.len() as u64).is_none() {
                    return Err(format!("XLogData at {start} with {} bytes runs past the end of the WAL", data.len()));
                }
                Ok(StreamMessage::XLogData { start, end_of_wal, send_time, data })
            }
            b'k' => {
                if payload.len() < 18 {
                    return Err(format!("keepalive message is {} bytes, expected 18", payload.len()));
                }
                Ok(StreamMessage::Keepalive {
                    end_of_wal: Lsn(be_u64(&payload[1..9])),
                    send_time: be_u64(&payload[9..17]) as i64,
                    reply_requested: payload[17] != 0,
                })
            }
            other => Err(format!("unknown replication message type {}", tag_name(other))),
        }
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Appends a CopyData carrying a standby status update (`r`).
pub(crate) fn put_standby_status(buf: &mut BytesMut, write: Lsn, flush: Lsn, apply: Lsn, now: i64, reply: bool) {
    const BODY: usize = 1 + 8 + 8 + 8 + 8 + 1;
    buf.reserve(5 + BODY);
    buf.put_u8(b'd');
    buf.put_u32(4 + BODY as u32);
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(now);
    buf.put_u8(reply as u8);
}

/// Microseconds since the Postgres epoch, as the server expects in replies.
pub fn pg_epoch_micros(t: SystemTime) -> i64 {
    let unix_micros = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    };
    unix_micros - PG_EPOCH_OFFSET_SECS * 1_000_000
}

/// Converts a server timestamp (µs since 2000-01-01) to a `SystemTime`;
/// `None` if the platform cannot represent it (the value comes from the
/// network, so it is never trusted to be sane).
pub fn pg_time_to_system(micros: i64) -> Option<SystemTime> {
    let unix = micros.checked_add(PG_EPOCH_OFFSET_SECS * 1_000_000)?;
    if unix >= 0 {
        UNIX_EPOCH.checked_add(std::time::Duration::from_micros(unix as u64))
    } else {
        UNIX_EPOCH.checked_sub(std::time::Duration::from_micros(unix.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_u32(4 + body.len() as u32);
        b.put_slice(body);
        b
    }

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut v = vec![b'w'];
        v.extend_from_slice(&start.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&time.to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn xlogdata_round_trip_without_copy() {
        let payload = Bytes::from(xlogdata(0x1_0000_0028, 0x1_0000_1000, 12345, b"walbytes"));
        let data_ptr = payload[25..].as_ptr();
        match StreamMessage::decode(payload).unwrap() {
            StreamMessage::XLogData { start, end_of_wal, send_time, data } => {
                assert_eq!(start, Lsn(0x1_0000_0028));
                assert_eq!(end_of_wal.to_string(), "1/1000");
                assert_eq!(send_time, 12345);
                assert_eq!(&data[..], b"walbytes");
                assert_eq!(data.as_ptr(), data_ptr, "payload must not be copied");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keepalive() {
        let mut v = vec![b'k'];
        v.extend_from_slice(&0x300_0000u64.to_be_bytes());
        v.extend_from_slice(&(-5i64).to_be_bytes());
        v.push(1);
        assert_eq!(
            StreamMessage::decode(Bytes::from(v.clone())).unwrap(),
            StreamMessage::Keepalive { end_of_wal: Lsn(0x300_0000), send_time: -5, reply_requested: true }
        );
        v[17] = 0;
        assert!(matches!(
            StreamMessage::decode(Bytes::from(v)).unwrap(),
            StreamMessage::Keepalive { reply_requested: false, .. }
        ));
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors() {
        let full = xlogdata(1, 2, 3, b"");
        for n in 0..full.len() {
            let r = StreamMessage::decode(Bytes::copy_from_slice(&full[..n]));
            assert!(r.is_err(), "{n} bytes of XLogData must be rejected");
        }
        assert!(StreamMessage::decode(Bytes::from(full)).is_ok(), "empty WAL payload is fine");
        for n in 1..18 {
            let mut v = vec![b'k'];
            v.resize(n, 0);
            let e = StreamMessage::decode(Bytes::from(v)).unwrap_err();
            assert!(e.contains("keepalive"), "{e}");
        }
        let e = StreamMessage::decode(Bytes::from_static(b"zzz")).unwrap_err();
        assert_eq!(e, "unknown replication message type 'z'");
        let e = StreamMessage::decode(Bytes::from(xlogdata(u64::MAX, 0, 0, b"x"))).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn framing_waits_for_whole_messages() {
        let payload = xlogdata(0x28, 0x100, 0, &[7u8; 1000]);
        let whole = frame(b'd', &payload);
        // Feed the frame one byte at a time: nothing is consumed until it is complete.
        let mut buf = BytesMut::new();
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let r = next_message(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert!(r.is_none());
                assert_eq!(buf.len(), i + 1, "partial frames stay in the buffer");
            } else {
                match r {
                    Some(Backend::CopyData(p)) => assert_eq!(&p[..], &payload[..]),
                    _ => panic!("expected CopyData"),
                }
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn framing_rejects_bad_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(next_message(&mut buf).unwrap_err().contains("less than its own length"));
        // "HTTP/1.1 ..." read as a message header.
        let mut buf = BytesMut::from(&b"HTTP/1.1 400 Bad Request"[..]);
        let e = next_message(&mut buf).unwrap_err();
        assert!(e.contains("is this a PostgreSQL server"), "{e}");
    }

    #[test]
    fn copy_both_response() {
        let mut buf = frame(b'W', &[0, 0, 0]);
        assert!(matches!(next_message(&mut buf).unwrap(), Some(Backend::CopyBoth)));
        let mut buf = frame(b'W', &[0, 0, 1, 0, 0]);
        assert!(matches!(next_message(&mut buf).unwrap(), Some(Backend::CopyBoth)));
        let mut buf = frame(b'W', &[0, 0, 2, 0, 0]);
        assert!(next_message(&mut buf).unwrap_err().contains("CopyBothResponse"));
        let mut buf = frame(b'W', &[0]);
        assert!(next_message(&mut buf).unwrap_err().contains("CopyBothResponse"));
    }

    #[test]
    fn other_messages_go_through_postgres_protocol() {
        let mut buf = frame(b'Z', b"I");
        assert!(matches!(next_message(&mut buf).unwrap(), Some(Backend::Other(Message::ReadyForQuery(_)))));
        // A ReadyForQuery with no status byte is malformed, not a panic.
        let mut buf = frame(b'Z', b"");
        assert!(next_message(&mut buf).unwrap_err().contains("malformed message 'Z'"));
        let mut buf = frame(b'S', b"server_version\0");
        assert!(next_message(&mut buf).is_err());
        let mut buf = frame(0x01, b"");
        assert!(next_message(&mut buf).unwrap_err().contains("0x01"));
    }

    #[test]
    fn standby_status_update_layout() {
        let mut buf = BytesMut::new();
        put_standby_status(&mut buf, Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(buf.len(), 1 + 4 + 34);
        assert_eq!(&buf[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(be_u64(&buf[6..]), 1);
        assert_eq!(be_u64(&buf[14..]), 2);
        assert_eq!(be_u64(&buf[22..]), 3);
        assert_eq!(be_u64(&buf[30..]), 4);
        assert_eq!(buf[38], 1);
    }

    #[test]
    fn pg_epoch() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(946_684_800);
        assert_eq!(pg_epoch_micros(t), 0);
        assert_eq!(pg_epoch_micros(t + std::time::Duration::from_micros(5)), 5);
        assert_eq!(pg_time_to_system(5), Some(t + std::time::Duration::from_micros(5)));
        assert_eq!(pg_time_to_system(-1_000_000), Some(t - std::time::Duration::from_secs(1)));
        // Garbage from the network never panics.
        for v in [i64::MAX, i64::MIN, i64::MAX - 1] {
            let _ = pg_time_to_system(v);
        }
    }
}
