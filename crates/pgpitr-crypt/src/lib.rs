//! Client-side envelope encryption for the repository (work in progress for
//! issue 20: the format and the keys, not yet wired into storage).
//!
//! - [`envelope`]: an object sealed in chunks with AES-256-GCM under a data
//!   key, each chunk bound to the object's key, the cluster's system
//!   identifier, its index and whether it is the last, so that an object
//!   moved, swapped, reordered or cut short fails to open; a byte range of
//!   the plaintext opens from the chunks that hold it.
//! - [`journal`]: records appended one at a time (a journal grows in
//!   place), read up to the first one that does not open.
//! - [`kek`]: where data keys are wrapped: a key file now, a KMS behind the
//!   same trait.
//! - [`keyring`]: data keys as the repository keeps them, wrapped once, or
//!   twice while a rotation runs.
//!
//! AES-256-GCM from `ring`, already linked for SCRAM and TLS: hardware AES
//! on x86-64 and arm64, constant-time, and well reviewed.

pub mod envelope;
pub mod journal;
pub mod kek;
pub mod keyring;
pub mod kms;
pub mod storage;

use ring::aead;
use zeroize::Zeroize;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// Authentication failed: the wrong key, or bytes that were changed,
    /// moved, swapped or cut.
    #[error("{what} does not decrypt: wrong key, or the object was changed, moved or cut short")]
    Unauthentic { what: String },
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{0}")]
    Key(String),
    /// A key service did not answer: trying again later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl CryptError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CryptError::Unavailable(_))
    }
}

/// A 256-bit data key. Zeroed when dropped; never printed.
pub struct DataKey {
    bytes: [u8; 32],
    key: aead::LessSafeKey,
}

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        // AES-256 takes any 32 bytes.
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &bytes).expect("a 32-byte AES-256 key");
        DataKey { bytes, key: aead::LessSafeKey::new(unbound) }
    }

    /// A fresh key from the operating system's generator.
    pub fn generate() -> Result<DataKey, CryptError> {
        let mut bytes = [0u8; 32];
        random(&mut bytes)?;
        Ok(DataKey::from_bytes(bytes))
    }

    /// The key's bytes, for wrapping.
    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub(crate) fn aead(&self) -> &aead::LessSafeKey {
        &self.key
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

pub(crate) fn random(out: &mut [u8]) -> Result<(), CryptError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| CryptError::Key("the operating system's random generator failed".into()))
}

/// Where an object belongs: what its chunks are bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub system_identifier: u64,
    /// The object's key in the repository.
    pub key: &'a str,
}

impl Binding<'_> {
    /// The associated data of one sealed unit: the binding, the header of
    /// its object, and where the unit sits.
    pub(crate) fn aad(&self, header: &[u8], index: u64, last: bool) -> Vec<u8> {
        let mut a = Vec::with_capacity(header.len() + self.key.len() + 24);
        a.extend_from_slice(&self.system_identifier.to_be_bytes());
        a.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
        a.extend_from_slice(self.key.as_bytes());
        a.extend_from_slice(header);
        a.extend_from_slice(&index.to_be_bytes());
        a.push(u8::from(last));
        a
    }
}
