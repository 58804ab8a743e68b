//! A journal, sealed one append at a time.
//!
//! ```text
//! header (an envelope's, with magic "PGPJ"; 30 bytes), then records:
//! length of the sealed data (u32 BE) | AES-256-GCM(append) | tag
//! ```
//!
//! Record `i` is sealed with nonce (prefix, `i`) and bound like an
//! envelope's chunk (never as "last": a journal has no end). Reading stops
//! at the first record that is cut short or does not open, which is how a
//! torn append or the zeros of a preallocated file end a journal; records
//! are never reordered or moved without failing to open.

use crate::envelope::{Envelope, HEADER_LEN, KeyId, TAG_LEN};
use crate::{Binding, CryptError, DataKey};

/// The header of a new journal under `dk`.
pub fn header(key_id: KeyId) -> Result<Vec<u8>, CryptError> {
    // An envelope's header: a journal is opened record by record.
    let mut nonce_prefix = [0u8; 8];
    crate::random(&mut nonce_prefix)?;
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(crate::envelope::MAGIC_JOURNAL);
    h.push(1);
    h.push(crate::envelope::CHUNK_LOG2);
    h.extend_from_slice(&key_id);
    h.extend_from_slice(&nonce_prefix);
    Ok(h)
}

fn journal_header(header: &[u8], what: &str) -> Result<Envelope, CryptError> {
    match Envelope::parse_any(header, what)? {
        (env, true) => Ok(env),
        (_, false) => Err(CryptError::Malformed { what: what.into(), reason: "an object, not a journal".into() }),
    }
}

/// Record `index` of the journal with `header`.
pub fn seal_record(
    dk: &DataKey,
    binding: Binding,
    header: &[u8],
    index: u64,
    plain: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let env = journal_header(header, binding.key)?;
    let mut out = Vec::with_capacity(4 + plain.len() + TAG_LEN);
    out.extend_from_slice(&((plain.len() + TAG_LEN) as u32).to_be_bytes());
    out.extend_from_slice(plain);
    let aad = binding.aad(&header[..HEADER_LEN], index, false);
    let tag = dk
        .aead()
        .seal_in_place_separate_tag(env.nonce(index)?, ring::aead::Aad::from(aad), &mut out[4..])
        .map_err(|_| CryptError::Key("sealing failed".into()))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// The plaintext of every record that opens, in order, up to the first
/// that does not; and how many records that is.
pub fn open_prefix(dk: &DataKey, binding: Binding, stored: &[u8]) -> Result<(Vec<u8>, u64), CryptError> {
    let env = journal_header(stored, binding.key)?;
    let header = &stored[..HEADER_LEN];
    let mut at = HEADER_LEN;
    let (mut out, mut index) = (Vec::new(), 0u64);
    while let Some(len) = stored.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) {
        let Some(sealed) = stored.get(at + 4..at + 4 + len).filter(|_| len >= TAG_LEN) else { break };
        let mut buf = sealed.to_vec();
        let aad = binding.aad(header, index, false);
        let Ok(plain) = dk.aead().open_in_place(env.nonce(index)?, ring::aead::Aad::from(aad), &mut buf) else {
            break;
        };
        out.extend_from_slice(plain);
        at += 4 + len;
        index += 1;
    }
    Ok((out, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind() -> Binding<'static> {
        Binding { system_identifier: 9, key: "wal/00000001/00000000/000000010000000000000002.00000000.journal" }
    }

    #[test]
    fn appends_read_back_up_to_a_torn_or_zero_tail() {
        let dk = DataKey::generate().unwrap();
        let h = header([5; 16]).unwrap();
        let mut j = h.clone();
        let appends: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 100 * (i + 1)]).collect();
        for (i, a) in appends.iter().enumerate() {
            j.extend_from_slice(&seal_record(&dk, bind(), &h, i as u64, a).unwrap());
        }
        let all: Vec<u8> = appends.concat();
        assert_eq!(open_prefix(&dk, bind(), &j).unwrap(), (all.clone(), 5));
        // Preallocated zeros after the records end it.
        let mut padded = j.clone();
        padded.resize(j.len() + 4096, 0);
        assert_eq!(open_prefix(&dk, bind(), &padded).unwrap(), (all.clone(), 5));
        // A torn last append: the records before it.
        let torn = &j[..j.len() - 7];
        assert_eq!(open_prefix(&dk, bind(), torn).unwrap(), (appends[..4].concat(), 4));
        // A record moved to another index does not open.
        let r0 = seal_record(&dk, bind(), &h, 0, b"x").unwrap();
        let mut moved = h.clone();
        moved.extend_from_slice(&seal_record(&dk, bind(), &h, 1, b"y").unwrap());
        moved.extend_from_slice(&r0);
        assert_eq!(open_prefix(&dk, bind(), &moved).unwrap().1, 0);
        // The wrong key reads nothing; a changed byte ends the journal there.
        let wrong = DataKey::generate().unwrap();
        assert_eq!(open_prefix(&wrong, bind(), &j).unwrap().1, 0);
        let mut flipped = j.clone();
        let second = HEADER_LEN + 4 + 100 + TAG_LEN + 10;
        flipped[second] ^= 1;
        assert_eq!(open_prefix(&dk, bind(), &flipped).unwrap(), (appends[0].clone(), 1));
    }
}
