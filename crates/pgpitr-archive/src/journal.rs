//! The open segment's journal, in synchronous mode on storage that can
//! append in place (a local repository): each group commit costs one
//! append and one data sync, where a tail piece would cost a new file.
//! Where an append fails or the storage cannot append, the same bytes are
//! stored as a tail piece instead.

use crate::segment::Cut;
use crate::upload::{self, Blocks, Buffers, Done, WalUpload};
use pgpitr_repo::object::{self, Codec, WalSummary};
use pgpitr_repo::wal::{WalObjectId, WalObjectKind};
use pgpitr_storage::{Journal, JournalOpen, Storage};
use pgpitr_types::{Lsn, WalSegSize};
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The open segment's journal, in synchronous mode on storage that can
/// append in place: each group commit costs one append and one data sync.
#[derive(Default)]
pub(crate) struct JournalSlot {
    /// `None` until the storage was asked; `Some(false)`: it cannot append.
    pub(crate) supported: Option<bool>,
    /// The open segment's journal while no append is in flight.
    pub(crate) open: Option<OpenJournal>,
    pub(crate) busy: bool,
    /// The next segment's journal, created while this segment fills: its
    /// zero-fill then does not hold up the first commits of that segment.
    pub(crate) ahead: Option<AheadJournal>,
}

pub(crate) struct AheadJournal {
    pub(crate) id: WalObjectId,
    pub(crate) task: tokio::task::JoinHandle<Option<OpenJournal>>,
}

impl AheadJournal {
    pub(crate) fn spawn(storage: Arc<dyn Storage>, seg: WalSegSize, id: WalObjectId) -> Self {
        let task = tokio::spawn(async move {
            match storage.create_journal(&id.key(seg), journal_size_hint(seg, 0)).await {
                Ok(JournalOpen::Created(handle)) => Some(OpenJournal { id, from: 0, handle }),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!("creating the next segment's journal ahead failed (created when needed): {e}");
                    None
                }
            }
        });
        AheadJournal { id, task }
    }

    /// Deletes it if it was created: it stays empty.
    pub(crate) async fn discard(self, storage: &dyn Storage, seg: WalSegSize) {
        if let Ok(Some(j)) = self.task.await {
            drop(j);
            if let Err(e) = storage.delete(&self.id.key(seg)).await {
                tracing::debug!("deleting an unused empty journal failed (harmless, it holds no WAL): {e}");
            }
        }
    }
}

/// Preallocation for a journal from segment offset `from`: the rest of the
/// segment, plus room for frame headers.
pub(crate) fn journal_size_hint(seg: WalSegSize, from: u32) -> u64 {
    let rest = seg.bytes() - u64::from(from);
    rest + rest / 16
}

pub(crate) struct OpenJournal {
    /// Its key's id (the end in it is not tracked).
    pub(crate) id: WalObjectId,
    pub(crate) from: u32,
    pub(crate) handle: Box<dyn Journal>,
}

/// One append to a segment's journal, with what it needs to create the
/// journal first or to store a piece instead.
pub(crate) struct AppendJob {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) seg: WalSegSize,
    pub(crate) cancel: CancellationToken,
    pub(crate) bufs: Buffers,
    pub(crate) jid: WalObjectId,
    pub(crate) jfrom: u32,
    pub(crate) cut: Cut,
    pub(crate) open: Option<OpenJournal>,
    /// The journal being created ahead for this segment, to wait for
    /// instead of creating it.
    pub(crate) ahead: Option<AheadJournal>,
    pub(crate) supported: bool,
}

impl AppendJob {
    pub(crate) async fn run(mut self) -> Done {
        if self.open.is_none()
            && let Some(ahead) = self.ahead.take()
        {
            self.open = ahead.task.await.ok().flatten();
        }
        if self.open.is_none() {
            self.create().await;
        }
        match self.try_append().await {
            Ok(done) => done,
            Err(job) => job.store_piece().await,
        }
    }

    pub(crate) fn id(&self) -> WalObjectId {
        WalObjectId { kind: WalObjectKind::Journal { from: self.jfrom, to: self.cut.to }, ..self.jid }
    }

    fn range(&self) -> (Lsn, Lsn) {
        (self.cut.start, Lsn(self.cut.start.0 + self.cut.raw.len() as u64))
    }

    async fn create(&mut self) {
        let (seg, jid) = (self.seg, self.jid);
        match self.storage.create_journal(&jid.key(seg), journal_size_hint(seg, self.jfrom)).await {
            Ok(JournalOpen::Created(handle)) => self.open = Some(OpenJournal { id: jid, from: self.jfrom, handle }),
            Ok(JournalOpen::Unsupported) => self.supported = false,
            Ok(JournalOpen::AlreadyExists) => {
                // Left empty by a crash right after its creation (else
                // streaming would have resumed past it): never reuse it.
                tracing::debug!(key = %jid.key(seg), "journal exists; storing a piece instead");
            }
            Err(e) => tracing::warn!("cannot create a WAL journal, storing a piece instead: {e}"),
        }
    }

    /// The append, if a journal is open; else (or if it fails) the job
    /// back, without a journal, to store a piece instead.
    pub(crate) async fn try_append(mut self) -> Result<Done, AppendJob> {
        let began = Instant::now();
        let (start, end) = self.range();
        let Some(j) = self.open.as_mut() else { return Err(self) };
        let (raw, crc) = (&self.cut.raw, self.cut.crc);
        let frame = object::encode_compressed(
            self.jid.tli,
            start,
            raw.len() as u64,
            crc,
            Codec::None,
            &[raw],
            &self.cut.summary,
        );
        match j.handle.append(frame).await {
            Ok(()) => {
                let id = self.id();
                let journal = Some(AppendEnd { open: self.open, supported: self.supported, fallback: None });
                Ok(Done { id, start, end, superseded: Vec::new(), result: Ok(began.elapsed()), journal })
            }
            Err(e) => {
                tracing::warn!("appending to a WAL journal failed, storing a piece instead: {e}");
                self.open = None;
                Err(self)
            }
        }
    }

    pub(crate) async fn store_piece(self) -> Done {
        let (id, (start, end)) = (self.id(), self.range());
        let piece = WalObjectId::piece(self.jid.tli, self.jid.segno, self.cut.from, self.cut.to);
        let summary = self.cut.summary.clone();
        let blocks = Blocks::Framed { head: self.cut.raw, tail: None, crc: self.cut.crc, cell: Default::default() };
        let up = WalUpload { id: piece, start, summary: self.cut.summary, blocks };
        let result = upload::store(&self.storage, self.seg, up, self.bufs, &self.cancel).await.map(|s| s.took);
        let journal = Some(AppendEnd { open: None, supported: self.supported, fallback: Some((piece, summary)) });
        Done { id, start, end, superseded: Vec::new(), result, journal }
    }
}

pub(crate) struct AppendEnd {
    /// The journal to append to next; `None` after a failed append.
    pub(crate) open: Option<OpenJournal>,
    pub(crate) supported: bool,
    /// The piece the bytes went into instead, if they did, with what they
    /// contain.
    pub(crate) fallback: Option<(WalObjectId, WalSummary)>,
}
