//! START_REPLICATION and the CopyBoth stream of WAL that follows it.
//!
//! ```text
//!  client                                   walsender
//!  START_REPLICATION SLOT s PHYSICAL X/Y  →
//!                                          ←  CopyBothResponse
//!                                          ←  CopyData 'w' XLogData / 'k' keepalive ...
//!  CopyData 'r' standby status update     →
//!           (timeline ends on the server)  ←  CopyDone
//!  CopyDone                               →
//!                                          ←  RowDescription, DataRow (next_tli, start),
//!                                             CommandComplete, ReadyForQuery
//!           (clean shutdown, once all WAL is confirmed flushed)
//!                                          ←  CommandComplete, then it exits
//! ```

use crate::codec::{self, Backend, StreamMessage};
use crate::conn::{ReplicationConnection, SimpleRow, State, decode_columns, quote_ident, unexpected};
use crate::error::{Error, ErrorKind, Op, PgError};
use pgpitr_types::{Lsn, TimelineId};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::time::SystemTime;

const CMD: &str = "START_REPLICATION";

/// Where the stream is. Kept in the struct, never in a future's locals, so
/// that dropping `next()` part-way loses nothing.
enum Phase {
    /// In COPY mode, receiving WAL.
    Copy,
    /// The server left COPY mode and our CopyDone is queued; reading the
    /// result set that names the next timeline.
    AfterCopy {
        columns: Option<Arc<[String]>>,
        next: Option<(TimelineId, Lsn)>,
    },
    /// START_REPLICATION answered with the next timeline straight away (the
    /// start point was the very end of an old timeline); not yet returned.
    Pending(StreamMessage),
    /// The server sent an ERROR; reading up to ReadyForQuery before
    /// reporting it, so that the connection stays usable.
    Draining(ErrorKind),
    Ended,
}

/// The WAL stream of one START_REPLICATION. It borrows the connection; once
/// [`StreamMessage::EndOfTimeline`] has been returned, or [`Self::finish`]
/// has returned, the connection accepts commands again. Dropping the
/// stream while it is still streaming leaves the connection unusable.
pub struct ReplicationStream<'a> {
    conn: &'a mut ReplicationConnection,
    phase: Phase,
}

impl std::fmt::Debug for ReplicationStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Copy => "streaming",
            Phase::AfterCopy { .. } => "ending timeline",
            Phase::Pending(_) => "end of timeline pending",
            Phase::Draining(_) => "failing",
            Phase::Ended => "ended",
        };
        f.debug_struct("ReplicationStream").field("conn", &self.conn).field("phase", &phase).finish()
    }
}

impl ReplicationConnection {
    /// START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE tli.
    ///
    /// Errors the server reports before streaming, such as
    /// [`ErrorKind::SlotActive`] or [`ErrorKind::SlotMissing`], leave the
    /// connection usable. Not cancel-safe (like every command).
    #[tracing::instrument(skip_all, fields(target = %self.target(), slot = ?slot, start = %start, tli = %tli))]
    pub async fn start_physical(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimelineId,
    ) -> Result<ReplicationStream<'_>, Error> {
        let op = Op::Command(CMD);
        let slot_part = match slot {
            Some(s) => format!("SLOT {} ", quote_ident(s, "slot name").map_err(|k| self.err(op, k))?),
            None => String::new(),
        };
        self.send_query(op, &format!("{CMD} {slot_part}PHYSICAL {start} TIMELINE {tli}")).await?;
        match self.await_copy_both().await {
            Ok(phase) => Ok(ReplicationStream { conn: self, phase }),
            Err(k) => {
                if self.state == State::Busy {
                    self.state = State::Broken;
                }
                Err(self.err(op, k))
            }
        }
    }

    async fn await_copy_both(&mut self) -> Result<Phase, ErrorKind> {
        let mut columns = None;
        let mut next = None;
        let mut error = None;
        loop {
            let msg = match self.recv().await {
                Ok(m) => m,
                Err(k) => return Err(error.unwrap_or(k)),
            };
            match msg {
                Backend::CopyBoth if error.is_none() => {
                    self.state = State::Copying;
                    return Ok(Phase::Copy);
                }
                Backend::Other(Message::RowDescription(body)) => columns = Some(decode_columns(&body)?),
                Backend::Other(Message::DataRow(body)) => next = Some(next_timeline(columns.clone(), &body)?),
                Backend::Other(Message::CommandComplete(_)) => {}
                Backend::Other(Message::ErrorResponse(body)) => {
                    error = Some(self.server_error(&body, Op::Command(CMD)))
                }
                Backend::Other(Message::ReadyForQuery(_)) => {
                    self.state = State::Idle;
                    return match (error, next) {
                        (Some(e), _) => Err(e),
                        (None, Some((next_tli, next_tli_start))) => {
                            Ok(Phase::Pending(StreamMessage::EndOfTimeline { next_tli, next_tli_start }))
                        }
                        (None, None) => Err(ErrorKind::Protocol(
                            "START_REPLICATION finished without streaming or naming the next timeline".into(),
                        )),
                    };
                }
                other => {
                    self.state = State::Broken;
                    return Err(unexpected(&other, "in reply to START_REPLICATION"));
                }
            }
        }
    }
}

/// The `next_tli`, `next_tli_startpos` row sent at the end of a timeline.
fn next_timeline(
    columns: Option<Arc<[String]>>,
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<(TimelineId, Lsn), ErrorKind> {
    let columns = columns.ok_or_else(|| ErrorKind::Protocol("DataRow before RowDescription".into()))?;
    let row = SimpleRow::decode(columns, body)?;
    let what = "the end-of-timeline result";
    let tli = row.parse::<TimelineId>(0, what)?;
    let lsn = row.parse::<Lsn>(1, what)?;
    match (tli, lsn) {
        (Some(t), Some(l)) => Ok((t, l)),
        _ => Err(ErrorKind::Protocol(format!("{what} has NULL fields"))),
    }
}

impl ReplicationStream<'_> {
    /// The connection the stream runs on (for its target or backend PID).
    pub fn connection(&self) -> &ReplicationConnection {
        self.conn
    }

    /// The next WAL chunk, keepalive, or the end of the timeline.
    ///
    /// Cancel-safe: if the future is dropped (say, another `select!` branch
    /// won), no message is lost and calling `next()` again resumes.
    ///
    /// A server-side termination (FATAL 57P01) or a dropped connection
    /// gives a transient error; the connection is then unusable.
    pub async fn next(&mut self) -> Result<StreamMessage, Error> {
        loop {
            match &self.phase {
                Phase::Pending(_) => {
                    if let Phase::Pending(m) = std::mem::replace(&mut self.phase, Phase::Ended) {
                        return Ok(m);
                    }
                }
                Phase::Ended => return Err(self.conn.err(Op::Stream, ErrorKind::Unusable("the stream has ended"))),
                Phase::Copy | Phase::AfterCopy { .. } | Phase::Draining(_) => {}
            }
            // Anything still queued (our CopyDone, or a status update whose
            // send was interrupted) goes out first; the walsender always reads.
            if !self.conn.wbuf.is_empty()
                && let Err(k) = self.conn.flush().await
            {
                return Err(self.fail(k));
            }
            let msg = match self.conn.recv().await {
                Ok(m) => m,
                Err(k) => return Err(self.fail(k)),
            };
            if let Some(out) = self.handle(msg)? {
                return Ok(out);
            }
        }
    }

    /// Applies one message to the state; synchronous, so never interrupted.
    fn handle(&mut self, msg: Backend) -> Result<Option<StreamMessage>, Error> {
        if let Backend::Other(Message::ErrorResponse(body)) = &msg {
            let kind = self.conn.server_error(body, Op::Stream);
            // After FATAL the server hangs up; don't wait for ReadyForQuery.
            if kind.pg_error().is_some_and(PgError::is_fatal) || matches!(self.phase, Phase::Draining(_)) {
                return Err(self.fail(kind));
            }
            self.phase = Phase::Draining(kind);
            return Ok(None);
        }
        match (&mut self.phase, msg) {
            (Phase::Copy, Backend::CopyData(payload)) => match StreamMessage::decode(payload) {
                Ok(m) => Ok(Some(m)),
                Err(e) => Err(self.fail(ErrorKind::Protocol(e))),
            },
            (Phase::Copy, Backend::Other(Message::CommandComplete(_))) => Err(self.fail(ErrorKind::ServerShutdown)),
            (Phase::Copy, Backend::Other(Message::CopyDone)) => {
                frontend::copy_done(&mut self.conn.wbuf);
                self.phase = Phase::AfterCopy { columns: None, next: None };
                Ok(None)
            }
            (Phase::AfterCopy { columns, .. }, Backend::Other(Message::RowDescription(body))) => {
                match decode_columns(&body) {
                    Ok(c) => *columns = Some(c),
                    Err(k) => return Err(self.fail(k)),
                }
                Ok(None)
            }
            (Phase::AfterCopy { columns, next }, Backend::Other(Message::DataRow(body))) => {
                match next_timeline(columns.clone(), &body) {
                    Ok(n) => *next = Some(n),
                    Err(k) => return Err(self.fail(k)),
                }
                Ok(None)
            }
            (Phase::AfterCopy { .. }, Backend::Other(Message::CommandComplete(_))) => Ok(None),
            (Phase::AfterCopy { next, .. }, Backend::Other(Message::ReadyForQuery(_))) => {
                let next = *next;
                self.phase = Phase::Ended;
                self.conn.state = State::Idle;
                match next {
                    Some((next_tli, next_tli_start)) => {
                        Ok(Some(StreamMessage::EndOfTimeline { next_tli, next_tli_start }))
                    }
                    None => Err(self.conn.err(
                        Op::Stream,
                        ErrorKind::Protocol("the server ended the stream without naming the next timeline".into()),
                    )),
                }
            }
            (Phase::Draining(_), Backend::Other(Message::ReadyForQuery(_))) => {
                self.conn.state = State::Idle;
                match std::mem::replace(&mut self.phase, Phase::Ended) {
                    Phase::Draining(kind) => Err(self.conn.err(Op::Stream, kind)),
                    _ => Ok(None),
                }
            }
            // Whatever was in flight before the error is of no use now.
            (Phase::Draining(_), _) => Ok(None),
            (_, other) => Err(self.fail(unexpected(&other, "while streaming WAL"))),
        }
    }

    /// Ends the stream for good: the connection is unusable afterwards. If
    /// the server had already reported an error, that error wins.
    fn fail(&mut self, kind: ErrorKind) -> Error {
        self.conn.state = State::Broken;
        let kind = match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Draining(earlier) => earlier,
            _ => kind,
        };
        self.conn.err(Op::Stream, kind)
    }

    /// Sends a standby status update: WAL received (`write`), durably
    /// stored (`flush`) and applied (`apply`) up to these positions, stamped
    /// with the current time. Report `flush` only once data is truly durable:
    /// with a slot, the server may then remove older WAL.
    /// `reply_requested` asks the server to answer with a keepalive.
    ///
    /// Cancel-safe in the sense that the update is queued whole before
    /// anything is sent; if interrupted, the rest goes out with the next
    /// `next()`, `send_status()` or `finish()`. A no-op once the server has
    /// left COPY mode.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), Error> {
        match self.phase {
            Phase::Copy => {}
            Phase::Ended => return Err(self.conn.err(Op::Stream, ErrorKind::Unusable("the stream has ended"))),
            Phase::AfterCopy { .. } | Phase::Draining(_) | Phase::Pending(_) => return Ok(()),
        }
        let now = codec::pg_epoch_micros(SystemTime::now());
        codec::put_standby_status(&mut self.conn.wbuf, write, flush, apply, now, reply_requested);
        match self.conn.flush().await {
            Ok(()) => Ok(()),
            Err(k) => Err(self.fail(k)),
        }
    }

    /// Stops streaming: sends CopyDone, discards WAL still in flight, and
    /// reads up to ReadyForQuery, after which the connection accepts commands
    /// again. Not cancel-safe: if dropped part-way the connection is unusable.
    pub async fn finish(mut self) -> Result<(), Error> {
        match self.phase {
            Phase::Copy => frontend::copy_done(&mut self.conn.wbuf),
            Phase::Pending(_) | Phase::Ended => return Ok(()),
            Phase::AfterCopy { .. } | Phase::Draining(_) => {}
        }
        if let Err(k) = self.conn.flush().await {
            return Err(self.fail(k));
        }
        let mut discarded = 0usize;
        loop {
            let msg = match self.conn.recv().await {
                Ok(m) => m,
                Err(k) => return Err(self.fail(k)),
            };
            match msg {
                Backend::CopyData(d) => discarded += d.len(),
                Backend::Other(Message::ErrorResponse(body)) => {
                    let kind = self.conn.server_error(&body, Op::Stream);
                    if kind.pg_error().is_some_and(PgError::is_fatal) {
                        return Err(self.fail(kind));
                    }
                    if !matches!(self.phase, Phase::Draining(_)) {
                        self.phase = Phase::Draining(kind);
                    }
                }
                Backend::Other(
                    Message::CopyDone | Message::RowDescription(_) | Message::DataRow(_) | Message::CommandComplete(_),
                ) => {}
                Backend::Other(Message::ReadyForQuery(_)) => {
                    tracing::debug!(discarded, "replication stream finished");
                    self.conn.state = State::Idle;
                    return match std::mem::replace(&mut self.phase, Phase::Ended) {
                        Phase::Draining(kind) => Err(self.conn.err(Op::Stream, kind)),
                        _ => Ok(()),
                    };
                }
                other => return Err(self.fail(unexpected(&other, "while finishing the stream"))),
            }
        }
    }
}
