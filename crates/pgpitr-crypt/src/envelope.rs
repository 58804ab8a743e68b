//! One object, sealed.
//!
//! ```text
//! "PGPE" | version 1 | log2(chunk) | data key ID (16) | nonce prefix (8)    header, 30 bytes
//! chunk 0: AES-256-GCM(plaintext[0..C]) | tag (16)
//! chunk 1: ...                                                            every chunk C bytes but the last
//! last chunk (possibly empty) | tag
//! ```
//!
//! Chunk `i`'s nonce is the prefix and `i` (big-endian u32); its associated
//! data is the [`Binding`], the header, `i`, and whether it is the last. A
//! fresh random prefix per object under one data key keeps nonces unique
//! (2^32 chunks per object; data keys are replaced long before 2^32
//! objects). The plaintext length follows from the stored length, and a
//! plaintext range from the chunks that hold it ([`Envelope::range`]).

use crate::{Binding, CryptError, DataKey};
use ring::aead::{Aad, NONCE_LEN, Nonce, Tag};

pub const MAGIC: &[u8; 4] = b"PGPE";
/// A journal's header differs only in its magic (see [`crate::journal`]).
pub const MAGIC_JOURNAL: &[u8; 4] = b"PGPJ";
const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 30;
pub const TAG_LEN: usize = 16;
/// Plaintext per chunk: 64 KiB, so a ranged read of a header or summary
/// opens one chunk.
pub const CHUNK_LOG2: u8 = 16;

/// A data key's ID, as the keyring names it.
pub type KeyId = [u8; 16];

/// What an object's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub key_id: KeyId,
    nonce_prefix: [u8; 8],
    chunk: usize,
}

impl Envelope {
    /// Reads an object's header; `what` names the object in errors.
    pub fn parse(header: &[u8], what: &str) -> Result<Envelope, CryptError> {
        match Envelope::parse_any(header, what)? {
            (env, false) => Ok(env),
            (_, true) => Err(CryptError::Malformed { what: what.into(), reason: "a journal, not an object".into() }),
        }
    }

    /// Reads an object's or a journal's header; true for a journal.
    pub fn parse_any(header: &[u8], what: &str) -> Result<(Envelope, bool), CryptError> {
        let bad = |reason: &str| CryptError::Malformed { what: what.into(), reason: reason.into() };
        let journal = header.get(..4) == Some(MAGIC_JOURNAL.as_slice());
        if header.len() < HEADER_LEN || !(journal || &header[..4] == MAGIC) {
            return Err(bad("not an encrypted object (no PGPE header)"));
        }
        if header[4] != VERSION {
            return Err(bad(&format!("encryption format {} is newer than this pgpitr reads (1)", header[4])));
        }
        if !(10..=24).contains(&header[5]) {
            return Err(bad("implausible chunk size"));
        }
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&header[6..22]);
        let mut nonce_prefix = [0u8; 8];
        nonce_prefix.copy_from_slice(&header[22..30]);
        Ok((Envelope { key_id, nonce_prefix, chunk: 1 << header[5] }, journal))
    }

    /// The plaintext length of an object of `stored` bytes sealed as
    /// [`seal`] seals (chunks of 2^[`CHUNK_LOG2`] bytes).
    pub fn plain_len_of(stored: u64) -> Option<u64> {
        Envelope { key_id: [0; 16], nonce_prefix: [0; 8], chunk: 1 << CHUNK_LOG2 }.plain_len(stored)
    }

    /// The chunk holding plaintext offset `at`, as [`seal`] seals.
    pub fn chunk_of(at: u64) -> u64 {
        at >> CHUNK_LOG2
    }

    /// Where the stored chunks holding plaintext up to `end` end, as
    /// [`seal`] seals (header included).
    pub fn stored_end_of(end: u64) -> u64 {
        let chunks = end.max(1).div_ceil(1 << CHUNK_LOG2);
        (HEADER_LEN as u64).saturating_add(chunks.saturating_mul((1u64 << CHUNK_LOG2) + TAG_LEN as u64))
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_len(&self) -> usize {
        self.chunk
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(MAGIC);
        h[4] = VERSION;
        h[5] = self.chunk.trailing_zeros() as u8;
        h[6..22].copy_from_slice(&self.key_id);
        h[22..30].copy_from_slice(&self.nonce_prefix);
        h
    }

    pub(crate) fn nonce(&self, index: u64) -> Result<Nonce, CryptError> {
        let index = u32::try_from(index).map_err(|_| CryptError::Key("an object of more than 2^32 chunks".into()))?;
        let mut n = [0u8; NONCE_LEN];
        n[..8].copy_from_slice(&self.nonce_prefix);
        n[8..].copy_from_slice(&index.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(n))
    }

    fn sealed_chunk(&self) -> usize {
        self.chunk + TAG_LEN
    }

    /// The plaintext length of an object of `stored` bytes.
    pub fn plain_len(&self, stored: u64) -> Option<u64> {
        let body = stored.checked_sub(HEADER_LEN as u64)?;
        let chunks = body.div_ceil(self.sealed_chunk() as u64).max(1);
        body.checked_sub(chunks * TAG_LEN as u64)
    }

    /// The stored bytes that hold plaintext `start..end` (header excluded),
    /// and the first chunk's index.
    pub fn range(&self, start: u64, end: u64) -> (std::ops::Range<u64>, u64) {
        let c = self.chunk as u64;
        let first = start / c;
        let last = end.max(start.saturating_add(1)).div_ceil(c);
        let s = self.sealed_chunk() as u64;
        let at = |chunk: u64| (HEADER_LEN as u64).saturating_add(chunk.saturating_mul(s));
        (at(first)..at(last), first)
    }

    /// Opens the chunks in `sealed` (the stored bytes from chunk `first`
    /// on, as [`Envelope::range`] names them, ending at the object's end if
    /// `to_end`), returning their plaintext.
    pub fn open_chunks(
        &self,
        dk: &DataKey,
        binding: Binding,
        sealed: &[u8],
        first: u64,
        to_end: bool,
    ) -> Result<Vec<u8>, CryptError> {
        let header = self.header();
        // One copy: each chunk is opened in place where its plaintext ends
        // up, and its tag cut off.
        let mut out = Vec::with_capacity(sealed.len());
        let pieces: Vec<&[u8]> =
            if sealed.is_empty() { vec![&[][..]] } else { sealed.chunks(self.sealed_chunk()).collect() };
        let n = pieces.len();
        for (k, c) in pieces.into_iter().enumerate() {
            let index = first + k as u64;
            let last = to_end && k + 1 == n;
            if c.len() < TAG_LEN {
                return Err(CryptError::Unauthentic { what: binding.key.into() });
            }
            let at = out.len();
            out.extend_from_slice(c);
            let aad = binding.aad(&header, index, last);
            let plain_len = dk
                .aead()
                .open_in_place(self.nonce(index)?, Aad::from(aad), &mut out[at..])
                .map_err(|_| CryptError::Unauthentic { what: binding.key.into() })?
                .len();
            out.truncate(at + plain_len);
        }
        Ok(out)
    }
}

/// Seals `plain` as one object under `dk` (known as `key_id`).
pub fn seal(dk: &DataKey, key_id: KeyId, binding: Binding, plain: &[u8]) -> Result<Vec<u8>, CryptError> {
    seal_parts(dk, key_id, binding, &[plain])
}

/// The size of an object of `plain_len` bytes once sealed.
pub fn sealed_len(plain_len: usize) -> usize {
    let chunk = 1usize << CHUNK_LOG2;
    HEADER_LEN + plain_len + plain_len.div_ceil(chunk).max(1) * TAG_LEN
}

/// Seals the concatenation of `parts` as one object: each byte is copied
/// once, to its place in the output, and sealed there.
pub fn seal_parts<B: AsRef<[u8]>>(
    dk: &DataKey,
    key_id: KeyId,
    binding: Binding,
    parts: &[B],
) -> Result<Vec<u8>, CryptError> {
    let mut out = vec![0u8; sealed_len(parts.iter().map(|p| p.as_ref().len()).sum())];
    let n = seal_parts_into(dk, key_id, binding, parts, &mut out)?;
    debug_assert_eq!(n, out.len());
    Ok(out)
}

/// [`seal_parts`] into the start of `out` (at least [`sealed_len`] bytes,
/// a recycled buffer, say); returns the sealed length.
pub fn seal_parts_into<B: AsRef<[u8]>>(
    dk: &DataKey,
    key_id: KeyId,
    binding: Binding,
    parts: &[B],
    out: &mut [u8],
) -> Result<usize, CryptError> {
    let mut nonce_prefix = [0u8; 8];
    crate::random(&mut nonce_prefix)?;
    let env = Envelope { key_id, nonce_prefix, chunk: 1 << CHUNK_LOG2 };
    let header = env.header();
    let total: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let need = sealed_len(total);
    if out.len() < need {
        return Err(CryptError::Key(format!("a sealing buffer of {} bytes cannot hold {need}", out.len())));
    }
    let n = total.div_ceil(env.chunk).max(1);
    out[..HEADER_LEN].copy_from_slice(&header);
    let mut at = HEADER_LEN;
    let mut rest = parts.iter().map(|p| p.as_ref());
    let mut cur: &[u8] = &[];
    for i in 0..n {
        let begin = at;
        let mut want = env.chunk.min(total - i * env.chunk);
        while want > 0 {
            if cur.is_empty() {
                let Some(next) = rest.next() else { break };
                cur = next;
                continue;
            }
            let take = want.min(cur.len());
            out[at..at + take].copy_from_slice(&cur[..take]);
            at += take;
            cur = &cur[take..];
            want -= take;
        }
        let aad = binding.aad(&header, i as u64, i + 1 == n);
        let tag: Tag = dk
            .aead()
            .seal_in_place_separate_tag(env.nonce(i as u64)?, Aad::from(aad), &mut out[begin..at])
            .map_err(|_| CryptError::Key("sealing failed".into()))?;
        out[at..at + TAG_LEN].copy_from_slice(tag.as_ref());
        at += TAG_LEN;
    }
    Ok(at)
}

/// Opens a whole sealed object.
pub fn open(dk: &DataKey, binding: Binding, stored: &[u8]) -> Result<Vec<u8>, CryptError> {
    let env = Envelope::parse(stored, binding.key)?;
    env.open_chunks(dk, binding, &stored[HEADER_LEN..], 0, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: u64 = 7_000_000_000_000_000_001;

    fn bind(key: &str) -> Binding<'_> {
        Binding { system_identifier: SYS, key }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn parts_seal_as_their_concatenation() {
        let dk = DataKey::generate().unwrap();
        let c = 1usize << CHUNK_LOG2;
        let plain = data(3 * c + 17);
        for cuts in [vec![], vec![0], vec![1], vec![c - 1, c + 1], vec![7, 7, 2 * c], vec![3 * c + 17]] {
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for &cut in &cuts {
                parts.push(&plain[from..cut]);
                from = cut;
            }
            parts.push(&plain[from..]);
            let sealed = seal_parts(&dk, [3u8; 16], bind("k"), &parts).unwrap();
            assert_eq!(sealed.len(), seal(&dk, [3u8; 16], bind("k"), &plain).unwrap().len());
            assert_eq!(open(&dk, bind("k"), &sealed).unwrap(), plain, "{cuts:?}");
        }
        let empty: [&[u8]; 2] = [&[], &[]];
        assert!(open(&dk, bind("k"), &seal_parts(&dk, [3u8; 16], bind("k"), &empty).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn round_trips_at_every_size_around_the_chunk() {
        let dk = DataKey::generate().unwrap();
        let c = 1usize << CHUNK_LOG2;
        for n in [0, 1, 100, c - 1, c, c + 1, 3 * c, 3 * c + 17] {
            let plain = data(n);
            let sealed = seal(&dk, [1; 16], bind("wal/x"), &plain).unwrap();
            let env = Envelope::parse(&sealed, "x").unwrap();
            assert_eq!(env.plain_len(sealed.len() as u64), Some(n as u64), "{n}");
            assert_eq!(open(&dk, bind("wal/x"), &sealed).unwrap(), plain, "{n}");
        }
    }

    #[test]
    fn a_range_opens_from_its_chunks() {
        let dk = DataKey::generate().unwrap();
        let c = 1u64 << CHUNK_LOG2;
        let plain = data(3 * c as usize + 500);
        let sealed = seal(&dk, [2; 16], bind("k"), &plain).unwrap();
        let env = Envelope::parse(&sealed, "k").unwrap();
        for (a, b) in [(0, 4096), (c - 10, c + 10), (2 * c, 3 * c + 500), (3 * c + 1, 3 * c + 2)] {
            let (r, first) = env.range(a, b);
            let end = r.end.min(sealed.len() as u64);
            let to_end = end == sealed.len() as u64;
            let got = env.open_chunks(&dk, bind("k"), &sealed[r.start as usize..end as usize], first, to_end).unwrap();
            let off = (a - first * c) as usize;
            assert_eq!(&got[off..off + (b - a) as usize], &plain[a as usize..b as usize], "{a}..{b}");
        }
    }

    #[test]
    fn changed_moved_swapped_or_cut_objects_do_not_open() {
        let dk = DataKey::generate().unwrap();
        let c = 1usize << CHUNK_LOG2;
        let plain = data(2 * c + 10);
        let sealed = seal(&dk, [3; 16], bind("wal/a"), &plain).unwrap();
        // Any flipped bit, in the header's IDs, a chunk or a tag.
        for at in [7, 25, HEADER_LEN, HEADER_LEN + c, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open(&dk, bind("wal/a"), &bad).is_err(), "bit flipped at {at}");
        }
        // Moved to another key, or to another cluster.
        assert!(matches!(open(&dk, bind("wal/b"), &sealed), Err(CryptError::Unauthentic { .. })));
        let other = Binding { system_identifier: SYS + 1, key: "wal/a" };
        assert!(open(&dk, other, &sealed).is_err());
        // Cut at a chunk boundary: the new last chunk was not sealed as last.
        let cut = &sealed[..HEADER_LEN + c + TAG_LEN];
        assert!(open(&dk, bind("wal/a"), cut).is_err());
        // Two chunks swapped.
        let s = c + TAG_LEN;
        let mut swapped = sealed[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&sealed[HEADER_LEN + s..HEADER_LEN + 2 * s]);
        swapped.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + s]);
        swapped.extend_from_slice(&sealed[HEADER_LEN + 2 * s..]);
        assert!(open(&dk, bind("wal/a"), &swapped).is_err());
        // Another data key.
        let wrong = DataKey::generate().unwrap();
        assert!(open(&wrong, bind("wal/a"), &sealed).is_err());
        // Not an encrypted object at all.
        let e = open(&dk, bind("wal/a"), b"plain text").unwrap_err();
        assert!(e.to_string().contains("not an encrypted object"), "{e}");
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let dk = DataKey::generate().unwrap();
        let a = seal(&dk, [4; 16], bind("k"), b"same").unwrap();
        let b = seal(&dk, [4; 16], bind("k"), b"same").unwrap();
        assert_ne!(a, b, "a fresh nonce prefix per object");
    }
}
