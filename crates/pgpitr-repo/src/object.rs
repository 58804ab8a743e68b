//! The container every WAL object is stored in: a fixed header, a JSON
//! summary, then the (usually lz4-compressed) payload.
//!
//! ```text
//! offset size  field
//!      0    4  magic "PGPW"
//!      4    1  format version (1)
//!      5    1  codec: 0 = none, 1 = lz4 block, 2 = lz4 chunks
//!      6    2  reserved, zero
//!      8    4  timeline
//!     12    8  start LSN of the payload
//!     20    8  end LSN (exclusive); raw length = end - start
//!     28    4  CRC-32 (ISO-HDLC, crc32fast) of the raw bytes
//!     32    8  stored payload length
//!     40    4  summary length
//!     44    4  CRC-32 of bytes 0..44 and of the summary
//!     48    …  summary (JSON), then the payload
//! ```
//!
//! With codec 2 the payload is a sequence of independently compressed lz4
//! blocks, each behind `u32 raw length, u32 stored length` (big-endian). It
//! lets a complete segment reuse the blocks its tail pieces were already
//! compressed into, so streaming compresses each byte once. Writers cut
//! blocks of at most [`BLOCK_RAW`] bytes; readers accept any size.
//!
//! Decoding checks every length against the buffer and both checksums, so a
//! truncated or corrupt object is an error, never a panic and never wrong
//! bytes handed to Postgres.

use bytes::{BufMut, Bytes, BytesMut};
use pgpitr_types::{Lsn, TimelineId};
use serde::{Deserialize, Serialize};
use std::ops::Range;

pub const MAGIC: &[u8; 4] = b"PGPW";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;
/// Upper bound on a summary; anything larger is treated as corruption.
const MAX_SUMMARY: usize = 16 << 20;
/// Upper bound on a payload: one WAL segment (at most 1 GiB).
const MAX_RAW: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Lz4 = 1,
    Lz4Chunks = 2,
    /// One zstd frame (backup parts compressed by pgpitr).
    Zstd = 3,
}

/// The zstd level [`encode`] uses: on WAL and tar about half of lz4's size,
/// at a speed close to it.
pub const ZSTD_LEVEL: i32 = 1;

/// Raw bytes per lz4 block: on bulk-insert WAL ~18% faster to compress than
/// one block per segment, for ~1% more output (`benches/results/FINDINGS.md`).
pub const BLOCK_RAW: usize = 64 * 1024;

/// Raw bytes compressed into a run of framed lz4 blocks, ready to be laid
/// into a codec-2 payload as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub raw_len: u32,
    /// `u32 raw length, u32 stored length, block`, repeated.
    pub framed: Bytes,
}

/// Most bytes [`compress_framed`] writes for `raw_len` raw bytes.
pub fn framed_bound(raw_len: usize) -> usize {
    let (full, rest) = (raw_len / BLOCK_RAW, raw_len % BLOCK_RAW);
    let one = |n: usize| 8 + lz4_flex::block::get_maximum_output_size(n);
    full * one(BLOCK_RAW) + if rest > 0 { one(rest) } else { 0 }
}

/// Compresses `raw` as framed blocks into the front of `out`, which must
/// hold [`framed_bound`] bytes; returns the bytes written. `crc`, when
/// given, takes each block just before it is compressed, while the block is
/// in cache: one pass over the bytes instead of two.
fn compress_framed(raw: &[u8], out: &mut [u8], mut crc: Option<&mut crc32fast::Hasher>) -> usize {
    let mut at = 0;
    for block in raw.chunks(BLOCK_RAW) {
        if let Some(h) = crc.as_deref_mut() {
            h.update(block);
        }
        let (head, body) = out[at..].split_at_mut(8);
        let n = lz4_flex::block::compress_into(block, body).expect("framed_bound reserves the worst case");
        head[..4].copy_from_slice(&(block.len() as u32).to_be_bytes());
        head[4..].copy_from_slice(&(n as u32).to_be_bytes());
        at += 8 + n;
    }
    at
}

/// Most bytes one framed block of `raw_len` bytes takes.
pub fn block_bound(raw_len: usize) -> usize {
    8 + lz4_flex::block::get_maximum_output_size(raw_len)
}

/// Compresses `raw` (at most [`BLOCK_RAW`] bytes) as one framed block into
/// the front of `out`, which must hold [`block_bound`] bytes; returns the
/// bytes written. For writers that gather blocks as WAL arrives.
pub fn compress_block(raw: &[u8], out: &mut [u8]) -> usize {
    debug_assert!(raw.len() <= BLOCK_RAW);
    compress_framed(raw, out, None)
}

/// The raw bytes of framed blocks written by [`compress_block`] and their
/// CRC-32; an error (never a panic) when they do not hold `raw_len` bytes.
pub fn decode_framed(payload: &[u8], raw_len: usize) -> Result<(Bytes, u32), DecodeError> {
    decode_chunks(payload, raw_len, None)
}

/// Room before the payload that [`encode_framed_in_place`] fills with the
/// header and summary: enough for any summary but one naming many restore
/// points.
pub const HEAD_ROOM: usize = 4096;

/// A codec-2 object whose framed blocks are already in `buf[payload]`,
/// which starts [`HEAD_ROOM`] bytes in: the header and summary are written
/// just before them, so the payload is not copied (it is a whole segment,
/// written as it arrived). A summary too large for the room costs a copy.
/// `pooled` says whether `buf` came from `pool`, which gets it back once the
/// object is dropped.
#[allow(clippy::too_many_arguments)]
pub fn encode_framed_in_place(
    mut buf: Vec<u8>,
    pool: &BufPool,
    pooled: bool,
    payload: Range<usize>,
    tli: TimelineId,
    start: Lsn,
    raw_len: u64,
    raw_crc: u32,
    summary: &WalSummary,
) -> Bytes {
    let summary_json = serde_json::to_vec(summary).expect("summary serialises");
    let lead = HEADER_LEN + summary_json.len();
    let payload_len = (payload.end - payload.start) as u64;
    let head = header(tli, start, raw_len, raw_crc, Codec::Lz4Chunks, payload_len, &summary_json);
    let Some(at) = payload.start.checked_sub(lead) else {
        let object = encode_compressed(tli, start, raw_len, raw_crc, Codec::Lz4Chunks, &[&buf[payload]], summary);
        drop(pool.finish(buf, 0, pooled));
        return object;
    };
    buf[at..at + HEADER_LEN].copy_from_slice(&head);
    buf[at + HEADER_LEN..payload.start].copy_from_slice(&summary_json);
    pool.finish(buf, payload.end, pooled).slice(at..)
}

/// The payload of a codec-2 object as one chunk of framed blocks (for a
/// later object to copy).
pub fn payload_chunk(object: &Bytes) -> Option<Chunk> {
    let header = decode_header(object).ok()?;
    (header.codec == Codec::Lz4Chunks).then(|| Chunk {
        raw_len: header.start.distance_to(header.end) as u32,
        framed: object.slice(header.payload_offset..),
    })
}

/// The large buffers objects are encoded into, recycled: a fresh buffer of
/// megabytes faulted in as it was written cost ~14% of the stream's CPU in
/// the bulk-load profile.
pub use pgpitr_storage::BufPool;

/// A pool of `max` buffers for objects of up to `raw_len` raw bytes (one
/// segment).
pub fn encode_pool(max: usize, raw_len: usize) -> BufPool {
    BufPool::new(max, framed_bound(raw_len) + (64 << 10))
}

/// What a codec-2 payload is made of, in order.
pub enum Span<'a> {
    /// Blocks compressed before (a tail piece's, reused by its segment): copied.
    Stored(&'a Chunk),
    /// Raw bytes, compressed straight into the object.
    Raw(&'a [u8]),
}

/// Timestamps are Unix microseconds (UTC); LSN and time of one WAL record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedLsn {
    pub lsn: Lsn,
    /// End of the record: replaying up to here includes it.
    pub end_lsn: Lsn,
    pub time_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    pub name: String,
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub time_us: i64,
}

/// What the WAL in one object contains, found by the record scanner while
/// streaming: enough to answer "what is the newest restorable time" and
/// "which objects cover time T" without reading payloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalSummary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_commit: Option<TimedLsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<TimedLsn>,
    #[serde(default)]
    pub commits: u64,
    #[serde(default)]
    pub aborts: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_points: Vec<RestorePoint>,
    /// Wall-clock time pgpitr received the last byte (Unix µs).
    #[serde(default)]
    pub received_us: i64,
    /// Some WAL could not be indexed: a commit that starts before this LSN
    /// may be missing from this summary. `Lsn::MAX` when the scanner failed
    /// on the object's WAL; the scan's start when it began inside a record
    /// (that record started earlier, and ended in this object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unindexed_before: Option<Lsn>,
}

impl WalSummary {
    pub fn merge(&mut self, other: &WalSummary) {
        if self.first_commit.is_none() {
            self.first_commit = other.first_commit;
        }
        if other.last_commit.is_some() {
            self.last_commit = other.last_commit;
        }
        self.commits += other.commits;
        self.aborts += other.aborts;
        self.restore_points.extend(other.restore_points.iter().cloned());
        self.received_us = self.received_us.max(other.received_us);
        self.unindexed_before = self.unindexed_before.max(other.unindexed_before);
    }

    /// The WAL of an object holding `start..end` whose commits this summary
    /// may lack, if any: the one definition of an incomplete index. A scan
    /// that began inside a record ends its doubt at the object's start
    /// (that record began before it and is not a commit of its own).
    pub fn unindexed(&self, start: Lsn, end: Lsn) -> Option<(Lsn, Lsn)> {
        let upto = self.unindexed_before?.min(end);
        (upto > start).then_some((start, upto))
    }
}

/// A decoded header, available from the first bytes of an object alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHeader {
    pub codec: Codec,
    pub tli: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
    pub raw_crc: u32,
    pub stored_len: u64,
    pub summary: WalSummary,
    /// Where the payload begins.
    pub payload_offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

/// Encodes `raw` (the WAL bytes from `start`) into a stored object.
pub fn encode(tli: TimelineId, start: Lsn, raw: &[u8], codec: Codec, summary: &WalSummary) -> Bytes {
    encode_at_level(tli, start, raw, codec, ZSTD_LEVEL, summary)
}

/// [`encode`], with zstd at `zstd_level` (clamped to zstd's range).
pub fn encode_at_level(
    tli: TimelineId,
    start: Lsn,
    raw: &[u8],
    codec: Codec,
    zstd_level: i32,
    summary: &WalSummary,
) -> Bytes {
    match codec {
        Codec::None => {
            encode_compressed(tli, start, raw.len() as u64, crc32fast::hash(raw), Codec::None, &[raw], summary)
        }
        Codec::Lz4 => {
            let block = lz4_flex::block::compress(raw);
            encode_compressed(tli, start, raw.len() as u64, crc32fast::hash(raw), Codec::Lz4, &[&block], summary)
        }
        Codec::Lz4Chunks => encode_spans_of(tli, start, raw, &[Span::Raw(raw)], summary, None).0,
        Codec::Zstd => {
            let level = zstd_level.clamp(1, zstd::zstd_safe::max_c_level());
            let frame = zstd::bulk::compress(raw, level).expect("zstd compresses any input at a level in its range");
            encode_compressed(tli, start, raw.len() as u64, crc32fast::hash(raw), Codec::Zstd, &[&frame], summary)
        }
    }
}

/// Encodes a codec-2 object from `spans` (whose raw bytes, concatenated,
/// have CRC-32 `raw_crc`) into one buffer, from `pool` when it has one of
/// the size; [`payload_chunk`] gives its blocks to a later object.
pub fn encode_spans(
    tli: TimelineId,
    start: Lsn,
    spans: &[Span],
    raw_crc: u32,
    summary: &WalSummary,
    pool: Option<&BufPool>,
) -> Bytes {
    encode_spans_crc(tli, start, spans, RawCrc::Known(raw_crc), summary, pool).0
}

/// [`encode_spans`] for spans that are `raw` in order (stored blocks
/// standing for their bytes of it), computing its CRC-32 on the way, which
/// it also returns.
pub fn encode_spans_of(
    tli: TimelineId,
    start: Lsn,
    raw: &[u8],
    spans: &[Span],
    summary: &WalSummary,
    pool: Option<&BufPool>,
) -> (Bytes, u32) {
    encode_spans_crc(tli, start, spans, RawCrc::Of(raw), summary, pool)
}

enum RawCrc<'a> {
    Known(u32),
    /// The bytes the spans hold, in order.
    Of(&'a [u8]),
}

fn encode_spans_crc(
    tli: TimelineId,
    start: Lsn,
    spans: &[Span],
    raw_crc: RawCrc,
    summary: &WalSummary,
    pool: Option<&BufPool>,
) -> (Bytes, u32) {
    let summary_json = serde_json::to_vec(summary).expect("summary serialises");
    let payload_at = HEADER_LEN + summary_json.len();
    let need = payload_at
        + spans
            .iter()
            .map(|p| match p {
                Span::Stored(c) => c.framed.len(),
                Span::Raw(r) => framed_bound(r.len()),
            })
            .sum::<usize>();
    let pooled = pool.and_then(|p| p.take(need).map(|b| (b, p)));
    let (mut buf, home) = match pooled {
        Some((b, home)) => (b, Some(home)),
        None => (vec![0u8; need], None),
    };
    let mut at = payload_at;
    let mut raw_len = 0u64;
    let (known, all) = match raw_crc {
        RawCrc::Known(c) => (Some(c), &[][..]),
        RawCrc::Of(all) => (None, all),
    };
    let mut hasher = known.is_none().then(crc32fast::Hasher::new);
    for p in spans {
        match p {
            Span::Stored(c) => {
                buf[at..at + c.framed.len()].copy_from_slice(&c.framed);
                at += c.framed.len();
                if let Some(h) = hasher.as_mut() {
                    h.update(&all[raw_len as usize..raw_len as usize + c.raw_len as usize]);
                }
                raw_len += c.raw_len as u64;
            }
            Span::Raw(r) => {
                let n = compress_framed(r, &mut buf[at..], hasher.as_mut());
                at += n;
                raw_len += r.len() as u64;
            }
        }
    }
    let raw_crc = match (known, hasher) {
        (Some(c), _) => c,
        (None, h) => {
            debug_assert_eq!(raw_len, all.len() as u64, "the spans are the bytes hashed");
            h.map_or(0, |h| h.finalize())
        }
    };
    let head = header(tli, start, raw_len, raw_crc, Codec::Lz4Chunks, (at - payload_at) as u64, &summary_json);
    buf[..HEADER_LEN].copy_from_slice(&head);
    buf[HEADER_LEN..payload_at].copy_from_slice(&summary_json);
    let object = match home {
        Some(pool) => pool.freeze(buf, at),
        None => {
            buf.truncate(at);
            Bytes::from(buf)
        }
    };
    (object, raw_crc)
}

/// The fixed header, its checksum covering the summary too.
fn header(
    tli: TimelineId,
    start: Lsn,
    raw_len: u64,
    raw_crc: u32,
    codec: Codec,
    payload_len: u64,
    summary_json: &[u8],
) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    let mut w = &mut out[..];
    w.put_slice(MAGIC);
    w.put_u8(VERSION);
    w.put_u8(codec as u8);
    w.put_u16(0);
    w.put_u32(tli.0);
    w.put_u64(start.0);
    w.put_u64(start.0 + raw_len);
    w.put_u32(raw_crc);
    w.put_u64(payload_len);
    w.put_u32(summary_json.len() as u32);
    let mut h = crc32fast::Hasher::new();
    h.update(&out[..44]);
    h.update(summary_json);
    out[44..].copy_from_slice(&h.finalize().to_be_bytes());
    out
}

/// A container around a payload already compressed: `payload`,
/// concatenated, is `codec`'s encoding of `raw_len` raw bytes whose CRC-32
/// is `raw_crc` (zstd frames may be several, one after another). Decoding
/// checks both, so a payload that does not match is caught on every read.
pub fn encode_compressed(
    tli: TimelineId,
    start: Lsn,
    raw_len: u64,
    raw_crc: u32,
    codec: Codec,
    payload: &[&[u8]],
    summary: &WalSummary,
) -> Bytes {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    let summary_json = serde_json::to_vec(summary).expect("summary serialises");
    let mut out = BytesMut::with_capacity(HEADER_LEN + summary_json.len() + payload_len);
    out.put_slice(&header(tli, start, raw_len, raw_crc, codec, payload_len as u64, &summary_json));
    out.put_slice(&summary_json);
    for p in payload {
        out.put_slice(p);
    }
    out.freeze()
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Bytes needed to decode the header of an object whose first 48 bytes are
/// `fixed` (so a reader can fetch just that range first).
pub fn header_len(fixed: &[u8]) -> Result<usize, DecodeError> {
    if fixed.len() < HEADER_LEN {
        return Err(bad(format!("object is {} bytes, shorter than its {HEADER_LEN}-byte header", fixed.len())));
    }
    let summary_len = be_u32(fixed, 40) as usize;
    if summary_len > MAX_SUMMARY {
        return Err(bad(format!("summary length {summary_len} is implausible")));
    }
    Ok(HEADER_LEN + summary_len)
}

/// Decodes and verifies the header and summary.
pub fn decode_header(buf: &[u8]) -> Result<ObjectHeader, DecodeError> {
    let need = header_len(buf)?;
    if buf.len() < need {
        return Err(bad(format!("object truncated inside its header ({} of {need} bytes)", buf.len())));
    }
    if &buf[..4] != MAGIC {
        return Err(bad("not a pgpitr WAL object (bad magic)"));
    }
    if buf[4] != VERSION {
        return Err(bad(format!("unsupported object format version {}", buf[4])));
    }
    let codec = match buf[5] {
        0 => Codec::None,
        1 => Codec::Lz4,
        2 => Codec::Lz4Chunks,
        3 => Codec::Zstd,
        c => return Err(bad(format!("unknown codec {c}"))),
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..44]);
    h.update(&buf[HEADER_LEN..need]);
    if h.finalize() != be_u32(buf, 44) {
        return Err(bad("header checksum mismatch"));
    }
    let tli = TimelineId::new(be_u32(buf, 8)).map_err(|_| bad("timeline 0 in header"))?;
    let (start, end) = (Lsn(be_u64(buf, 12)), Lsn(be_u64(buf, 20)));
    if end < start || end.0 - start.0 > MAX_RAW {
        return Err(bad(format!("implausible LSN range {start}..{end}")));
    }
    let summary: WalSummary =
        serde_json::from_slice(&buf[HEADER_LEN..need]).map_err(|e| bad(format!("summary is not valid: {e}")))?;
    Ok(ObjectHeader {
        codec,
        tli,
        start,
        end,
        raw_crc: be_u32(buf, 28),
        stored_len: be_u64(buf, 32),
        summary,
        payload_offset: need,
    })
}

/// Decodes a whole object and returns its header and verified raw bytes.
pub fn decode(buf: &[u8]) -> Result<(ObjectHeader, Bytes), DecodeError> {
    decode_pooled(buf, None)
}

/// [`decode`], an lz4 payload decompressed into a buffer from `pool` (a
/// reader of segment after segment, or part after part, would fault in a
/// fresh mapping for each otherwise).
pub fn decode_pooled(buf: &[u8], pool: Option<&BufPool>) -> Result<(ObjectHeader, Bytes), DecodeError> {
    decode_from(buf, None, pool)
}

/// [`decode_pooled`] of an object held as `Bytes`: an uncompressed payload
/// (a server-compressed backup part) is a view of `obj`, not a copy.
pub fn decode_shared(obj: &Bytes, pool: Option<&BufPool>) -> Result<(ObjectHeader, Bytes), DecodeError> {
    decode_from(obj, Some(obj), pool)
}

fn decode_from(
    buf: &[u8],
    whole: Option<&Bytes>,
    pool: Option<&BufPool>,
) -> Result<(ObjectHeader, Bytes), DecodeError> {
    let header = decode_header(buf)?;
    let payload = &buf[header.payload_offset..];
    if payload.len() as u64 != header.stored_len {
        return Err(bad(format!("payload is {} bytes, header says {}", payload.len(), header.stored_len)));
    }
    let raw_len = (header.end.0 - header.start.0) as usize;
    let hashed = |raw: Bytes| {
        let crc = crc32fast::hash(&raw);
        (raw, crc)
    };
    let (raw, crc) = match header.codec {
        Codec::None => hashed(match whole {
            Some(obj) => obj.slice(header.payload_offset..),
            None => Bytes::copy_from_slice(payload),
        }),
        Codec::Lz4 => {
            let (mut out, pooled) = output(pool, raw_len);
            // A recycled buffer holds an earlier object's bytes: all
            // `raw_len` must be written.
            let n = lz4_flex::block::decompress_into(payload, &mut out[..raw_len])
                .map_err(|e| bad(format!("lz4 payload does not decompress: {e}")))?;
            if n != raw_len {
                return Err(bad(format!("payload holds {n} bytes, header says {raw_len}")));
            }
            let crc = crc32fast::hash(&out[..raw_len]);
            (finish(pool, out, raw_len, pooled), crc)
        }
        Codec::Lz4Chunks => decode_chunks(payload, raw_len, pool)?,
        Codec::Zstd => hashed(
            zstd::bulk::decompress(payload, raw_len)
                .map_err(|e| bad(format!("zstd payload does not decompress: {e}")))?
                .into(),
        ),
    };
    if raw.len() != raw_len {
        return Err(bad(format!("payload holds {} bytes, header says {raw_len}", raw.len())));
    }
    if crc != header.raw_crc {
        return Err(bad("payload checksum mismatch"));
    }
    Ok((header, raw))
}

/// The raw bytes of framed lz4 blocks and their CRC-32, each block hashed
/// as soon as it is decompressed, while it is in cache.
fn decode_chunks(mut payload: &[u8], raw_len: usize, pool: Option<&BufPool>) -> Result<(Bytes, u32), DecodeError> {
    // A recycled buffer holds an earlier object's bytes: every byte up to
    // `raw_len` is written below, or the payload is refused.
    let (mut out, pooled) = output(pool, raw_len);
    let mut crc = crc32fast::Hasher::new();
    let mut at = 0usize;
    while !payload.is_empty() {
        if payload.len() < 8 {
            return Err(bad("lz4 chunk framing truncated"));
        }
        let n = be_u32(payload, 0) as usize;
        let stored = be_u32(payload, 4) as usize;
        let Some(block) = payload.get(8..8 + stored) else {
            return Err(bad(format!("lz4 chunk of {stored} bytes runs past the payload")));
        };
        let Some(dest) = out[..raw_len].get_mut(at..at + n) else {
            return Err(bad(format!("lz4 chunks hold more than the {raw_len} bytes the header says")));
        };
        let got = lz4_flex::block::decompress_into(block, dest)
            .map_err(|e| bad(format!("lz4 chunk at raw offset {at} does not decompress: {e}")))?;
        if got != n {
            return Err(bad(format!("lz4 chunk at raw offset {at} holds {got} bytes, its framing says {n}")));
        }
        crc.update(dest);
        at += n;
        payload = &payload[8 + stored..];
    }
    if at != raw_len {
        return Err(bad(format!("lz4 chunks hold {at} bytes, the header says {raw_len}")));
    }
    Ok((finish(pool, out, raw_len, pooled), crc.finalize()))
}

/// A buffer for `raw_len` decoded bytes: from `pool` when it serves the size.
fn output(pool: Option<&BufPool>, raw_len: usize) -> (Vec<u8>, bool) {
    match pool {
        Some(p) => p.take_or_alloc(raw_len),
        None => (vec![0u8; raw_len], false),
    }
}

/// The first `raw_len` bytes of a buffer from [`output`].
fn finish(pool: Option<&BufPool>, mut out: Vec<u8>, raw_len: usize, pooled: bool) -> Bytes {
    match pool {
        Some(p) => p.finish(out, raw_len, pooled),
        None => {
            out.truncate(raw_len);
            out.into()
        }
    }
}

/// The valid frames of a journal: objects appended one after another, each
/// continuing the previous one on the same timeline from `start`.
#[derive(Debug, Clone, Default)]
pub struct JournalFrames {
    /// Each frame's header and verified raw bytes, in order.
    pub frames: Vec<(ObjectHeader, Bytes)>,
    /// Bytes of the journal the frames occupy; anything after is ignored.
    pub valid_len: usize,
    /// Why reading stopped before the end, when it did.
    pub stopped: Option<String>,
}

impl JournalFrames {
    /// End of the valid WAL (`start` when there is none).
    pub fn end(&self, start: Lsn) -> Lsn {
        self.frames.last().map_or(start, |(h, _)| h.end)
    }

    pub fn summary(&self) -> WalSummary {
        let mut s = WalSummary::default();
        for (h, _) in &self.frames {
            s.merge(&h.summary);
        }
        s
    }
}

/// Splits a journal into its valid frames. A frame that is incomplete or
/// fails a check ends the journal there: it is the torn tail of an append
/// that was never acknowledged (a crash, a failed write), and no
/// acknowledged frame follows one.
pub fn decode_journal(buf: &[u8], tli: TimelineId, start: Lsn) -> JournalFrames {
    let mut out = JournalFrames::default();
    let mut expect = start;
    while out.valid_len < buf.len() {
        let rest = &buf[out.valid_len..];
        let frame = decode_header(rest).and_then(|h| {
            let len = u64::try_from(h.payload_offset)
                .ok()
                .and_then(|o| o.checked_add(h.stored_len))
                .filter(|&n| n <= rest.len() as u64)
                .ok_or_else(|| bad(format!("frame of {} bytes runs past the end", h.stored_len)))?;
            let (h, raw) = decode(&rest[..len as usize])?;
            if h.tli != tli || h.start != expect {
                return Err(bad(format!(
                    "frame holds {}..{} on timeline {}, expected {expect} on {tli}",
                    h.start, h.end, h.tli
                )));
            }
            Ok((h, raw, len as usize))
        });
        match frame {
            Ok((h, raw, len)) => {
                expect = h.end;
                out.valid_len += len;
                out.frames.push((h, raw));
            }
            Err(e) => {
                out.stopped = Some(format!("at byte {}: {}", out.valid_len, e.0));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(raw: &[u8]) -> Chunk {
        payload_chunk(&encode_spans(TimelineId(1), Lsn(0), &[Span::Raw(raw)], 0, &WalSummary::default(), None))
            .expect("a codec-2 object")
    }

    fn encode_chunks(tli: TimelineId, start: Lsn, chunks: &[Chunk], raw_crc: u32, s: &WalSummary) -> Bytes {
        let spans: Vec<Span> = chunks.iter().map(Span::Stored).collect();
        encode_spans(tli, start, &spans, raw_crc, s, None)
    }

    #[test]
    fn journal_frames_stop_at_a_torn_or_foreign_frame() {
        let (raw, sum) = sample();
        let tli = TimelineId(1);
        let a = encode(tli, Lsn(1000), &raw[..300], Codec::None, &sum);
        let b = encode(tli, Lsn(1300), &raw[300..1000], Codec::Lz4, &WalSummary::default());
        let mut j = [&a[..], &b[..]].concat();
        let f = decode_journal(&j, tli, Lsn(1000));
        assert_eq!(f.frames.len(), 2);
        assert_eq!((f.valid_len, f.end(Lsn(1000)), f.stopped.as_deref()), (j.len(), Lsn(2000), None));
        assert_eq!(f.summary().commits, 2);
        assert_eq!(&f.frames[1].1[..], &raw[300..1000]);
        // Every torn length of the last frame leaves just the first.
        for cut in a.len()..j.len() {
            let f = decode_journal(&j[..cut], tli, Lsn(1000));
            assert_eq!((f.frames.len(), f.valid_len), (1, a.len()), "cut at {cut}");
            assert_eq!(f.stopped.is_some(), cut > a.len(), "cut at {cut}");
        }
        // Zeros past the end (a preallocated file) end it too.
        j.extend_from_slice(&[0u8; 100]);
        assert_eq!(decode_journal(&j, tli, Lsn(1000)).frames.len(), 2);
        // A frame that does not continue the previous one, or another timeline.
        let gap = encode(tli, Lsn(1301), &raw[..10], Codec::None, &sum);
        assert_eq!(decode_journal(&[&a[..], &gap[..]].concat(), tli, Lsn(1000)).frames.len(), 1);
        assert_eq!(decode_journal(&a, TimelineId(2), Lsn(1000)).frames.len(), 0);
        assert_eq!(decode_journal(&a, tli, Lsn(999)).frames.len(), 0);
        // A flipped payload byte in the second frame.
        let mut bad = [&a[..], &b[..]].concat();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decode_journal(&bad, tli, Lsn(1000)).frames.len(), 1);
    }

    fn sample() -> (Vec<u8>, WalSummary) {
        let raw: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let s = WalSummary {
            first_commit: Some(TimedLsn { lsn: Lsn(0x100), end_lsn: Lsn(0x120), time_us: 1 }),
            last_commit: Some(TimedLsn { lsn: Lsn(0x200), end_lsn: Lsn(0x220), time_us: 2 }),
            commits: 2,
            aborts: 0,
            restore_points: vec![],
            received_us: 3,
            unindexed_before: None,
        };
        (raw, s)
    }

    #[test]
    fn round_trip_every_codec() {
        let (raw, s) = sample();
        for codec in [Codec::None, Codec::Lz4, Codec::Lz4Chunks, Codec::Zstd] {
            let obj = encode(TimelineId(3), Lsn(0x1_0000_0000), &raw, codec, &s);
            let (h, back) = decode(&obj).unwrap();
            assert_eq!(&back[..], &raw[..]);
            assert_eq!(h.tli, TimelineId(3));
            assert_eq!(h.start, Lsn(0x1_0000_0000));
            assert_eq!(h.end.0 - h.start.0, raw.len() as u64);
            assert_eq!(h.summary, s);
            assert_eq!(h.codec, codec);
        }
        for codec in [Codec::Lz4, Codec::Zstd] {
            let compressed = encode(TimelineId(1), Lsn(0), &raw, codec, &s);
            assert!(compressed.len() < raw.len() / 2, "{codec:?} should shrink repetitive data");
        }
    }

    #[test]
    fn header_alone_is_enough_for_the_summary() {
        let (raw, s) = sample();
        let obj = encode(TimelineId(1), Lsn(0), &raw, Codec::Lz4, &s);
        let n = header_len(&obj[..HEADER_LEN]).unwrap();
        assert_eq!(decode_header(&obj[..n]).unwrap().summary, s);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let (raw, s) = sample();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let obj = encode(TimelineId(1), Lsn(0), &raw[..3000], codec, &s);
            for cut in 0..obj.len() {
                assert!(decode(&obj[..cut]).is_err(), "{codec:?}: truncated at {cut}");
            }
            // A flip is an error, or (in a zstd frame's header bits that
            // do not change its content) decodes to the very same bytes.
            for i in 0..obj.len() {
                let mut c = obj.to_vec();
                c[i] ^= 0x10;
                match decode(&c) {
                    Err(_) => {}
                    Ok((_, back)) => {
                        assert!(
                            codec == Codec::Zstd && back[..] == raw[..3000],
                            "{codec:?}: flip at byte {i} went unnoticed"
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn chunks_from_parts_make_the_same_segment() {
        let (raw, s) = sample();
        let cuts = [0usize, 1000, 50_000, 50_001, raw.len()];
        let chunks: Vec<Chunk> = cuts.windows(2).map(|w| chunk(&raw[w[0]..w[1]])).collect();
        let obj = encode_chunks(TimelineId(2), Lsn(0x2000), &chunks, crc32fast::hash(&raw), &s);
        let (h, back) = decode(&obj).unwrap();
        assert_eq!(&back[..], &raw[..]);
        assert_eq!(h.codec, Codec::Lz4Chunks);
        assert_eq!(h.end, Lsn(0x2000 + raw.len() as u64));
        // A wrong CRC for the concatenation is caught.
        let bad_obj = encode_chunks(TimelineId(2), Lsn(0x2000), &chunks, 1, &s);
        assert!(decode(&bad_obj).is_err());
        // Chunks that do not add up to the header's length are caught.
        let short = encode_chunks(TimelineId(2), Lsn(0x2000), &chunks[..2], crc32fast::hash(&raw), &s);
        let mut tampered = short.to_vec();
        tampered[20..28].copy_from_slice(&(0x2000u64 + raw.len() as u64).to_be_bytes());
        assert!(decode(&tampered).is_err());
    }

    #[test]
    fn a_crc_computed_while_encoding_is_the_bytes_crc() {
        let (raw, s) = sample();
        let want = crc32fast::hash(&raw);
        // Raw runs longer than a block, and a stored chunk between them.
        let (a, b) = (70_000, 90_000);
        let mid = chunk(&raw[a..b]);
        for spans in [
            vec![Span::Raw(&raw[..])],
            vec![Span::Raw(&raw[..a]), Span::Stored(&mid), Span::Raw(&raw[b..])],
            vec![Span::Stored(&chunk(&raw[..a])), Span::Raw(&raw[a..])],
        ] {
            let (obj, crc) = encode_spans_of(TimelineId(1), Lsn(0x4000), &raw, &spans, &s, None);
            assert_eq!(crc, want);
            let (h, back) = decode(&obj).unwrap();
            assert_eq!((h.raw_crc, &back[..]), (want, &raw[..]));
        }
    }
    #[test]
    fn chunked_truncations_and_bit_flips_are_errors() {
        let (raw, s) = sample();
        let chunks = vec![chunk(&raw[..700]), chunk(&raw[700..2500])];
        let obj = encode_chunks(TimelineId(1), Lsn(0), &chunks, crc32fast::hash(&raw[..2500]), &s);
        for cut in 0..obj.len() {
            assert!(decode(&obj[..cut]).is_err(), "truncated at {cut}");
        }
        // A flip may leave an lz4 match pointing at equal bytes; what
        // matters is that no flip ever yields different bytes.
        let mut detected = 0;
        for i in 0..obj.len() {
            let mut c = obj.to_vec();
            c[i] ^= 0x04;
            match decode(&c) {
                Err(_) => detected += 1,
                Ok((_, back)) => assert_eq!(&back[..], &raw[..2500], "flip at byte {i} changed the data"),
            }
        }
        assert!(detected > obj.len() * 9 / 10, "only {detected} of {} flips detected", obj.len());
    }

    /// Walks a chunk's framing: (raw, stored) length of each block.
    fn blocks(framed: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < framed.len() {
            let (n, stored) = (be_u32(framed, at) as usize, be_u32(framed, at + 4) as usize);
            out.push((n, stored));
            at += 8 + stored;
        }
        assert_eq!(at, framed.len(), "framing ends exactly at the end");
        out
    }

    #[test]
    fn raw_pieces_are_cut_into_bounded_blocks_and_their_chunks_reused() {
        let (raw, s) = sample();
        let head = chunk(&raw[..1000]);
        let tail = &raw[1000..];
        let obj = encode_spans(
            TimelineId(1),
            Lsn(0),
            &[Span::Stored(&head), Span::Raw(tail)],
            crc32fast::hash(&raw),
            &s,
            None,
        );
        assert_eq!(&decode(&obj).unwrap().1[..], &raw[..]);
        let whole = payload_chunk(&obj).unwrap();
        assert_eq!(whole.raw_len as usize, raw.len());
        // The stored head's blocks, copied as they are, then the tail's.
        assert!(whole.framed.starts_with(&head.framed));
        let fresh = vec![Chunk { raw_len: tail.len() as u32, framed: whole.framed.slice(head.framed.len()..) }];
        let sizes = blocks(&fresh[0].framed);
        assert_eq!(sizes.len(), tail.len().div_ceil(BLOCK_RAW));
        assert!(sizes.iter().all(|&(n, _)| n <= BLOCK_RAW && n > 0), "{sizes:?}");
        assert_eq!(sizes.iter().map(|b| b.0).sum::<usize>(), tail.len());
        // The fresh chunk, a view of the first object, makes a second one.
        let again = encode_chunks(TimelineId(1), Lsn(1000), &fresh, crc32fast::hash(tail), &s);
        assert_eq!(&decode(&again).unwrap().1[..], tail);
        // Nothing to compress is no block at all, and still decodes.
        let empty = chunk(&[]);
        assert!(empty.framed.is_empty());
        let obj = encode_chunks(TimelineId(1), Lsn(5), &[empty], crc32fast::hash(&[]), &s);
        assert_eq!(decode(&obj).unwrap().1.len(), 0);
    }

    #[test]
    fn pooled_buffers_come_back_once_every_view_is_gone() {
        let raw: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 / 5) as u8).collect();
        let s = WalSummary::default();
        let pool = encode_pool(1, raw.len());
        let crc = crc32fast::hash(&raw);
        let obj = encode_spans(TimelineId(1), Lsn(0), &[Span::Raw(&raw)], crc, &s, Some(&pool));
        let fresh = payload_chunk(&obj).unwrap();
        assert_eq!(&decode(&obj).unwrap().1[..], &raw[..]);
        drop(obj);
        assert_eq!(pool.idle(), 0, "the chunk still views the buffer");
        drop(fresh);
        assert_eq!(pool.idle(), 1);
        // The reused buffer holds the old bytes past the new object: they
        // must not leak into it.
        let short = &raw[..2_000_000];
        let obj2 = encode_spans(TimelineId(1), Lsn(0), &[Span::Raw(short)], crc32fast::hash(short), &s, Some(&pool));
        assert_eq!(pool.idle(), 0, "taken from the pool");
        assert_eq!(&decode(&obj2).unwrap().1[..], short);
        // At most `max` are kept; small objects never touch the pool.
        let obj3 = encode_spans(TimelineId(1), Lsn(0), &[Span::Raw(&raw)], crc, &s, Some(&pool));
        drop((obj2, obj3));
        assert_eq!(pool.idle(), 1);
        let small = encode_spans(TimelineId(1), Lsn(0), &[Span::Raw(&raw[..100])], 0, &s, Some(&pool));
        assert_eq!(pool.idle(), 1);
        drop(small);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn shared_and_pooled_decodes_give_the_bytes_and_catch_damage() {
        let s = WalSummary::default();
        let raw: Vec<u8> = (0..2_000_000u32).map(|i| (i * 3 / 7) as u8).collect();
        let pool = BufPool::new(1, raw.len());
        for codec in [Codec::None, Codec::Lz4, Codec::Lz4Chunks, Codec::Zstd] {
            let obj = encode(TimelineId(1), Lsn(0), &raw, codec, &s);
            for _ in 0..2 {
                let (_, back) = decode_shared(&obj, Some(&pool)).unwrap();
                assert!(back[..] == raw[..], "{codec:?}");
                if codec == Codec::None {
                    let inside = obj.as_ptr_range().contains(&back.as_ptr());
                    assert!(inside, "an uncompressed payload is a view of the object");
                }
            }
            let mut bad = obj.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 0x40;
            assert!(decode_shared(&Bytes::from(bad), Some(&pool)).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn decoding_into_recycled_buffers_never_shows_an_earlier_objects_bytes() {
        let s = WalSummary::default();
        let a: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 / 5) as u8).collect();
        let b: Vec<u8> = (0..2_000_000u32).map(|i| (i % 13) as u8).collect();
        let pool = BufPool::new(1, a.len());
        let obj = |raw: &[u8]| encode(TimelineId(1), Lsn(0), raw, Codec::Lz4Chunks, &s);
        let (h, first) = decode_pooled(&obj(&a), Some(&pool)).unwrap();
        assert_eq!((&first[..], h.raw_crc), (&a[..], crc32fast::hash(&a)));
        drop(first);
        assert_eq!(pool.idle(), 1, "back once its bytes are dropped");
        let (_, second) = decode_pooled(&obj(&b), Some(&pool)).unwrap();
        assert!(second[..] == b[..], "the recycled buffer is overwritten");
        assert_eq!(pool.idle(), 0, "taken from the pool");
        drop(second);
        // A payload that stops short never passes the earlier bytes off as
        // its own: the buffer still holds `b` past the truncation.
        let mut cut = obj(&a[..1_000_000]).to_vec();
        let h = decode_header(&cut).unwrap();
        cut[20..28].copy_from_slice(&(h.start.0 + 2_000_000).to_be_bytes());
        let head_crc = {
            let mut c = crc32fast::Hasher::new();
            c.update(&cut[..44]);
            c.update(&cut[HEADER_LEN..h.payload_offset]);
            c.finalize()
        };
        cut[44..HEADER_LEN].copy_from_slice(&head_crc.to_be_bytes());
        let e = decode_pooled(&cut, Some(&pool)).unwrap_err();
        assert!(e.0.contains("the header says"), "{}", e.0);
    }

    #[test]
    fn summary_merge() {
        let (_, s) = sample();
        let mut a = WalSummary::default();
        a.merge(&s);
        a.merge(&WalSummary { commits: 1, ..Default::default() });
        assert_eq!(a.first_commit, s.first_commit);
        assert_eq!(a.last_commit, s.last_commit);
        assert_eq!(a.commits, 3);
    }
}
