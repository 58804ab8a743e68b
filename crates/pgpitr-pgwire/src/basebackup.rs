//! BASE_BACKUP in both of its dialects, read as one sequence of
//! [`BaseBackupMessage`]s. From PostgreSQL 15: one CopyOut stream whose
//! CopyData messages carry a one-byte sub-type. In 14: one plain CopyOut
//! stream per tablespace (the data directory last), in the order of the
//! tablespace result set, then one for the manifest; no progress messages
//! (they are counted here from the tar bytes, which are uncompressed).
//!
//! ```text
//!  BASE_BACKUP (LABEL 'x', PROGRESS, CHECKPOINT 'fast', MANIFEST 'yes', WAIT false)  →
//!     ← result set: start position (recptr, tli)
//!     ← result set: tablespaces (spcoid, spclocation, size)
//!     ← CopyOutResponse
//!     ← CopyData 'n' new archive (name, tablespace location)
//!     ← CopyData 'd' archive bytes ...   'p' progress (int8) ...
//!     ← ... more archives ...
//!     ← CopyData 'm' manifest follows, then 'd' manifest bytes
//!     ← CopyDone
//!     ← result set: end position (recptr, tli), CommandComplete, ReadyForQuery
//! ```

use crate::codec::{Backend, tag_name};
use crate::conn::{ReplicationConnection, SimpleRow, State, decode_columns, unexpected};
use crate::error::{Error, ErrorKind, Op, PgError};
use bytes::Bytes;
use pgpitr_types::{BaseBackupDialect, Lsn, TimelineId};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::collections::VecDeque;
use std::sync::Arc;

/// One tablespace of the backup, from the header result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// `None` for the main data directory.
    pub oid: Option<u32>,
    /// The tablespace directory on the server; `None` for the data directory.
    pub location: Option<String>,
    /// Estimated size in kB (not bytes), sent when PROGRESS was requested.
    pub size: Option<u64>,
}

/// What a base backup stream yields, in this order: `Started`, then for
/// each archive `Archive` followed by `Data` and `Progress`, then
/// optionally `ManifestStart` followed by `Data`, then `Finished`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseBackupMessage {
    /// The backup checkpoint is done: restoring needs WAL from `start_lsn`.
    Started { start_lsn: Lsn, tli: TimelineId, tablespaces: Vec<TablespaceInfo> },
    /// A new archive begins, e.g. `base.tar` or `16385.tar`.
    Archive { name: String, tablespace_location: Option<String> },
    /// Bytes of the current archive, or of the manifest after `ManifestStart`.
    Data(Bytes),
    /// Bytes sent so far (with PROGRESS).
    Progress(u64),
    /// The following `Data` is the backup manifest.
    ManifestStart,
    /// The backup is complete: restoring needs WAL up to `end_lsn`.
    Finished { end_lsn: Lsn, tli: TimelineId },
}

/// A tar archive's end: two 512-byte blocks of zeros.
static TAR_END: [u8; 1024] = [0; 1024];

struct ResultSet {
    columns: Arc<[String]>,
    rows: Vec<SimpleRow>,
}

enum Phase {
    /// Reading the result sets before COPY.
    Header(Vec<ResultSet>),
    Copy,
    /// 14: between two CopyOut streams (or before the trailer).
    BetweenCopies,
    /// Reading the end-position result set after CopyDone.
    Trailer(Vec<ResultSet>),
    /// The server sent an ERROR; reading up to ReadyForQuery first.
    Draining(ErrorKind),
    Done,
}

/// A running BASE_BACKUP. Borrows the connection, which accepts commands
/// again once [`Self::next`] has returned `Ok(None)`.
pub struct BaseBackupStream<'a> {
    conn: &'a mut ReplicationConnection,
    phase: Phase,
    dialect: BaseBackupDialect,
    /// Messages made from one server message, handed out first.
    queued: VecDeque<BaseBackupMessage>,
    /// 14: the archives still to come, by the tablespace result set.
    archives: VecDeque<(String, Option<String>)>,
    /// 14: tar bytes received so far, reported as progress.
    copied: u64,
    /// 14: the manifest's CopyOut is under way.
    in_manifest: bool,
}

impl std::fmt::Debug for BaseBackupStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Header(_) => "header",
            Phase::Copy => "copying",
            Phase::BetweenCopies => "between archives",
            Phase::Trailer(_) => "trailer",
            Phase::Draining(_) => "failing",
            Phase::Done => "done",
        };
        f.debug_struct("BaseBackupStream").field("conn", &self.conn).field("phase", &phase).finish()
    }
}

impl ReplicationConnection {
    /// Starts `BASE_BACKUP <options>`, where `options` is in the server's
    /// dialect: from 15 a parenthesised list, for example
    /// `(LABEL 'pgpitr', PROGRESS, CHECKPOINT 'fast', MANIFEST 'yes', WAIT false)`,
    /// in 14 keywords (`LABEL 'pgpitr' PROGRESS FAST NOWAIT MANIFEST 'yes'`).
    /// Quote string values with [`crate::quote_literal`].
    /// Only the client target (the default) is supported. With
    /// `COMPRESSION 'lz4'` the archives are named `*.tar.lz4` and their
    /// `Data` is lz4 frames; the manifest still arrives uncompressed.
    pub async fn base_backup(&mut self, options: &str) -> Result<BaseBackupStream<'_>, Error> {
        let dialect = self.pg_major().await?.base_backup();
        self.send_query(Op::BaseBackup, &format!("BASE_BACKUP {options}")).await?;
        Ok(BaseBackupStream {
            conn: self,
            phase: Phase::Header(Vec::new()),
            dialect,
            queued: VecDeque::new(),
            archives: VecDeque::new(),
            copied: 0,
            in_manifest: false,
        })
    }
}

impl ReplicationConnection {
    /// `UPLOAD_MANIFEST` (PostgreSQL 17 and later): hands the server a prior
    /// backup's `backup_manifest`, so that a `BASE_BACKUP (INCREMENTAL)` next
    /// on this connection sends only what changed since that backup.
    ///
    /// ```text
    ///  UPLOAD_MANIFEST  →   ← CopyInResponse   CopyData … CopyDone →   ← CommandComplete, ReadyForQuery
    /// ```
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), Error> {
        let op = Op::Command("UPLOAD_MANIFEST");
        self.send_query(op, "UPLOAD_MANIFEST").await?;
        let r = self.copy_in(op, manifest).await;
        if r.is_err() && self.state != State::Idle {
            self.state = State::Broken;
        }
        r.map_err(|k| self.err(op, k))
    }

    async fn copy_in(&mut self, op: Op, data: &[u8]) -> Result<(), ErrorKind> {
        const CHUNK: usize = 64 << 10;
        let mut error: Option<ErrorKind> = None;
        let mut sent = false;
        loop {
            let msg = match self.recv().await {
                Ok(m) => m,
                Err(k) => return Err(error.unwrap_or(k)),
            };
            match msg {
                Backend::Other(Message::CopyInResponse(_)) if !sent => {
                    sent = true;
                    for chunk in data.chunks(CHUNK) {
                        self.encode(
                            |b| {
                                frontend::CopyData::new(chunk)?.write(b);
                                Ok(())
                            },
                            "manifest",
                        )?;
                        self.flush().await?;
                    }
                    frontend::copy_done(&mut self.wbuf);
                    self.flush().await?;
                }
                Backend::Other(Message::CommandComplete(_)) => {}
                Backend::Other(Message::ErrorResponse(body)) => error = Some(self.server_error(&body, op)),
                Backend::Other(Message::ReadyForQuery(_)) => {
                    self.state = State::Idle;
                    return match (error, sent) {
                        (Some(e), _) => Err(e),
                        (None, false) => Err(ErrorKind::Protocol("the server never asked for the manifest".into())),
                        (None, true) => Ok(()),
                    };
                }
                other => return Err(unexpected(&other, "in reply to UPLOAD_MANIFEST")),
            }
        }
    }
}

fn add_row(sets: &mut [ResultSet], body: &postgres_protocol::message::backend::DataRowBody) -> Result<(), ErrorKind> {
    let set = sets.last_mut().ok_or_else(|| ErrorKind::Protocol("DataRow before RowDescription".into()))?;
    set.rows.push(SimpleRow::decode(set.columns.clone(), body)?);
    Ok(())
}

/// A (recptr, tli) result set: the start or end of the backup.
fn position(set: Option<&ResultSet>, what: &str) -> Result<(Lsn, TimelineId), ErrorKind> {
    let row = match set.map(|s| s.rows.as_slice()) {
        Some([row]) => row,
        _ => return Err(ErrorKind::Protocol(format!("BASE_BACKUP sent no single-row {what}"))),
    };
    match (row.parse::<Lsn>(0, "BASE_BACKUP")?, row.parse::<TimelineId>(1, "BASE_BACKUP")?) {
        (Some(lsn), Some(tli)) => Ok((lsn, tli)),
        _ => Err(ErrorKind::Protocol(format!("BASE_BACKUP sent NULL in the {what}"))),
    }
}

fn tablespaces(set: Option<&ResultSet>) -> Result<Vec<TablespaceInfo>, ErrorKind> {
    let Some(set) = set else { return Ok(Vec::new()) };
    set.rows
        .iter()
        .map(|r| {
            Ok(TablespaceInfo {
                oid: r.parse::<u32>(0, "BASE_BACKUP")?,
                location: r.text(1, "BASE_BACKUP")?.map(str::to_string),
                size: r.parse::<u64>(2, "BASE_BACKUP")?,
            })
        })
        .collect()
}

/// Splits a CopyData payload into a message. No copy of the data.
fn decode_copy_data(payload: Bytes) -> Result<BaseBackupMessage, String> {
    let Some(&kind) = payload.first() else {
        return Err("empty CopyData message in the base backup stream".to_string());
    };
    match kind {
        b'n' => {
            let rest = &payload[1..];
            let mut parts = rest.splitn(3, |&b| b == 0);
            let (Some(name), Some(location), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
                return Err("new-archive message lacks its two NUL-terminated strings".to_string());
            };
            if !tail.is_empty() {
                return Err(format!("new-archive message has {} stray bytes", tail.len()));
            }
            let text = |b: &[u8]| {
                std::str::from_utf8(b).map(str::to_string).map_err(|_| "new-archive message is not UTF-8".to_string())
            };
            let name = text(name)?;
            if name.is_empty() || name.contains('/') || name.contains("..") {
                return Err(format!("the server named an archive {name:?}, which is not a plain file name"));
            }
            let location = text(location)?;
            Ok(BaseBackupMessage::Archive {
                name,
                tablespace_location: if location.is_empty() { None } else { Some(location) },
            })
        }
        b'd' => Ok(BaseBackupMessage::Data(payload.slice(1..))),
        b'p' => {
            if payload.len() != 9 {
                return Err(format!("progress message is {} bytes, expected 9", payload.len()));
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[1..9]);
            let done = i64::from_be_bytes(b);
            u64::try_from(done).map(BaseBackupMessage::Progress).map_err(|_| format!("negative progress {done}"))
        }
        b'm' => {
            if payload.len() != 1 {
                return Err(format!("manifest message is {} bytes, expected 1", payload.len()));
            }
            Ok(BaseBackupMessage::ManifestStart)
        }
        other => Err(format!("unknown base backup message type {}", tag_name(other))),
    }
}

impl BaseBackupStream<'_> {
    /// Notices the server sent so far (e.g. page checksum failures, which
    /// PostgreSQL reports as WARNINGs naming the file and block).
    pub fn take_notices(&mut self) -> Vec<crate::PgError> {
        self.conn.take_notices()
    }

    /// The next part of the backup; `Ok(None)` after `Finished`, when the
    /// connection is idle again. Cancel-safe, like `ReplicationStream::next`.
    pub async fn next(&mut self) -> Result<Option<BaseBackupMessage>, Error> {
        loop {
            if let Some(m) = self.queued.pop_front() {
                return Ok(Some(m));
            }
            if let Phase::Done = self.phase {
                return Ok(None);
            }
            let msg = match self.conn.recv().await {
                Ok(m) => m,
                Err(k) => return Err(self.fail(k)),
            };
            if let Some(out) = self.handle(msg)? {
                return Ok(Some(out));
            }
        }
    }

    fn handle(&mut self, msg: Backend) -> Result<Option<BaseBackupMessage>, Error> {
        if let Backend::Other(Message::ErrorResponse(body)) = &msg {
            let kind = self.conn.server_error(body, Op::BaseBackup);
            if kind.pg_error().is_some_and(PgError::is_fatal) || matches!(self.phase, Phase::Draining(_)) {
                return Err(self.fail(kind));
            }
            self.phase = Phase::Draining(kind);
            return Ok(None);
        }
        let r = match (&mut self.phase, msg) {
            (Phase::Header(sets) | Phase::Trailer(sets), Backend::Other(Message::RowDescription(body))) => {
                decode_columns(&body).map(|columns| {
                    sets.push(ResultSet { columns, rows: Vec::new() });
                    None
                })
            }
            (Phase::Header(sets) | Phase::Trailer(sets), Backend::Other(Message::DataRow(body))) => {
                add_row(sets, &body).map(|()| None)
            }
            (Phase::Header(_) | Phase::Trailer(_), Backend::Other(Message::CommandComplete(_))) => Ok(None),
            (Phase::Header(sets), Backend::Other(Message::CopyOutResponse(_))) => {
                match (position(sets.first(), "start position"), tablespaces(sets.get(1))) {
                    (Ok((start_lsn, tli)), Ok(tablespaces)) => {
                        self.phase = Phase::Copy;
                        self.conn.state = State::Copying;
                        if self.dialect == BaseBackupDialect::Keywords {
                            self.archives = tablespaces
                                .iter()
                                .map(|t| {
                                    (
                                        t.oid.map_or_else(|| "base.tar".to_string(), |o| format!("{o}.tar")),
                                        t.location.clone(),
                                    )
                                })
                                .collect();
                            let first = self.next_copy();
                            self.queued.push_back(first);
                        }
                        Ok(Some(BaseBackupMessage::Started { start_lsn, tli, tablespaces }))
                    }
                    (Err(k), _) | (_, Err(k)) => Err(k),
                }
            }
            (Phase::Copy, Backend::CopyData(payload)) if self.dialect == BaseBackupDialect::Keywords => {
                if !self.in_manifest {
                    self.copied += payload.len() as u64;
                    self.queued.push_back(BaseBackupMessage::Progress(self.copied));
                }
                Ok(Some(BaseBackupMessage::Data(payload)))
            }
            (Phase::Copy, Backend::Other(Message::CopyDone)) if self.dialect == BaseBackupDialect::Keywords => {
                self.phase = Phase::BetweenCopies;
                if self.in_manifest {
                    return Ok(None);
                }
                // 14 leaves a tar's end marker (two zero blocks) to the
                // client; 15 sends it. Add it, so every archive is whole.
                self.copied += TAR_END.len() as u64;
                self.queued.push_back(BaseBackupMessage::Progress(self.copied));
                Ok(Some(BaseBackupMessage::Data(Bytes::from_static(&TAR_END))))
            }
            (Phase::BetweenCopies, Backend::Other(Message::CopyOutResponse(_))) => {
                if self.in_manifest {
                    Err(ErrorKind::Protocol("BASE_BACKUP sent a stream after the manifest".into()))
                } else {
                    self.phase = Phase::Copy;
                    Ok(Some(self.next_copy()))
                }
            }
            (Phase::BetweenCopies, Backend::Other(Message::RowDescription(body))) => {
                if !self.archives.is_empty() {
                    Err(ErrorKind::Protocol(format!("BASE_BACKUP ended with {} archives unsent", self.archives.len())))
                } else {
                    decode_columns(&body).map(|columns| {
                        self.phase = Phase::Trailer(vec![ResultSet { columns, rows: Vec::new() }]);
                        None
                    })
                }
            }
            (Phase::Header(_), Backend::Other(Message::ReadyForQuery(_))) => {
                self.conn.state = State::Idle;
                self.phase = Phase::Done;
                return Err(self.conn.err(
                    Op::BaseBackup,
                    ErrorKind::Unsupported("BASE_BACKUP sent no data; only the client target is supported".into()),
                ));
            }
            (Phase::Copy, Backend::CopyData(payload)) => {
                decode_copy_data(payload).map(Some).map_err(ErrorKind::Protocol)
            }
            (Phase::Copy, Backend::Other(Message::CopyDone)) => {
                self.phase = Phase::Trailer(Vec::new());
                Ok(None)
            }
            (Phase::Trailer(sets), Backend::Other(Message::ReadyForQuery(_))) => {
                match position(sets.first(), "end position") {
                    Ok((end_lsn, tli)) => {
                        self.phase = Phase::Done;
                        self.conn.state = State::Idle;
                        Ok(Some(BaseBackupMessage::Finished { end_lsn, tli }))
                    }
                    Err(k) => Err(k),
                }
            }
            (Phase::Draining(_), Backend::Other(Message::ReadyForQuery(_))) => {
                self.conn.state = State::Idle;
                return match std::mem::replace(&mut self.phase, Phase::Done) {
                    Phase::Draining(kind) => Err(self.conn.err(Op::BaseBackup, kind)),
                    _ => Ok(None),
                };
            }
            (Phase::Draining(_), _) => Ok(None),
            (_, other) => Err(unexpected(&other, "during BASE_BACKUP")),
        };
        r.map_err(|k| self.fail(k))
    }

    /// 14: what the next CopyOut stream is: the next archive by the
    /// tablespace list, then the manifest.
    fn next_copy(&mut self) -> BaseBackupMessage {
        match self.archives.pop_front() {
            Some((name, tablespace_location)) => BaseBackupMessage::Archive { name, tablespace_location },
            None => {
                self.in_manifest = true;
                BaseBackupMessage::ManifestStart
            }
        }
    }

    fn fail(&mut self, kind: ErrorKind) -> Error {
        self.conn.state = State::Broken;
        let kind = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Draining(earlier) => earlier,
            _ => kind,
        };
        self.conn.err(Op::BaseBackup, kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_messages() {
        let m = decode_copy_data(Bytes::from_static(b"nbase.tar\0\0")).unwrap();
        assert_eq!(m, BaseBackupMessage::Archive { name: "base.tar".into(), tablespace_location: None });
        let m = decode_copy_data(Bytes::from_static(b"n16385.tar\0/srv/ts\0")).unwrap();
        assert_eq!(
            m,
            BaseBackupMessage::Archive { name: "16385.tar".into(), tablespace_location: Some("/srv/ts".into()) }
        );
        assert_eq!(
            decode_copy_data(Bytes::from_static(b"dabc")).unwrap(),
            BaseBackupMessage::Data(Bytes::from_static(b"abc"))
        );
        let mut p = vec![b'p'];
        p.extend_from_slice(&4096i64.to_be_bytes());
        assert_eq!(decode_copy_data(Bytes::from(p)).unwrap(), BaseBackupMessage::Progress(4096));
        assert_eq!(decode_copy_data(Bytes::from_static(b"m")).unwrap(), BaseBackupMessage::ManifestStart);
    }

    #[test]
    fn malformed_sub_messages() {
        for bad in [
            &b""[..],
            b"nbase.tar",
            b"nbase.tar\0",
            b"nbase.tar\0\0x",
            b"n../etc\0\0",
            b"n\0\0",
            b"p\0\0",
            b"p\xff\xff\xff\xff\xff\xff\xff\xff",
            b"mx",
            b"q",
        ] {
            assert!(decode_copy_data(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
