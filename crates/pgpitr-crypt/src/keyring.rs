//! The keyring: data keys as the repository keeps them, each wrapped by one
//! key-encryption key, or by two while a rotation runs.
//!
//! `keyring/<ID>.json` (the ID is 32 hex digits):
//!
//! ```json
//! {"format": 1, "id": "…", "created_at": "2026-12-06T20:00:00Z",
//!  "wrappings": [{"kek": {"kind": "file", "id": "sha256:…"}, "wrapped": "<hex>"}]}
//! ```
//!
//! Rotation adds a wrapping by the new key-encryption key to every entry
//! (an entry that has it already is left alone, so a rerun after an
//! interruption finishes the job), and only then may the old wrappings be
//! removed: an entry always opens with the old key or the new one.

use crate::envelope::KeyId;
use crate::kek::{KekId, KeyEncryptionKey};
use crate::{CryptError, DataKey};
use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "keyring/";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wrapping {
    pub kek: KekId,
    /// Hex.
    pub wrapped: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringEntry {
    pub format: u32,
    /// 32 hex digits.
    pub id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub wrappings: Vec<Wrapping>,
}

pub fn key_of(id: &KeyId) -> String {
    format!("{PREFIX}{}.json", hex::encode(id))
}

impl KeyringEntry {
    /// A new data key, wrapped by `kek`: the key and its entry.
    pub async fn create(
        kek: &dyn KeyEncryptionKey,
        created_at: String,
    ) -> Result<(KeyId, DataKey, KeyringEntry), CryptError> {
        let mut id = [0u8; 16];
        crate::random(&mut id)?;
        let dk = DataKey::generate()?;
        let wrapped = hex::encode(kek.wrap(&dk, &id).await?);
        let entry = KeyringEntry {
            format: FORMAT,
            id: hex::encode(id),
            created_at,
            wrappings: vec![Wrapping { kek: kek.id(), wrapped }],
        };
        Ok((id, dk, entry))
    }

    pub fn parse(bytes: &[u8], what: &str) -> Result<KeyringEntry, CryptError> {
        let bad = |reason: String| CryptError::Malformed { what: what.into(), reason };
        let e: KeyringEntry = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if e.format > FORMAT {
            return Err(bad(format!("keyring format {} is newer than this pgpitr reads ({FORMAT})", e.format)));
        }
        if e.key_id().is_none() {
            return Err(bad("its ID is not 32 hex digits".into()));
        }
        Ok(e)
    }

    pub fn key_id(&self) -> Option<KeyId> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(&self.id, &mut id).ok()?;
        Some(id)
    }

    /// The data key, unwrapped by whichever of `keks` wrapped it.
    pub async fn open(&self, keks: &[&dyn KeyEncryptionKey]) -> Result<DataKey, CryptError> {
        let id = self.key_id().ok_or_else(|| CryptError::Key(format!("data key {}: bad ID", self.id)))?;
        for w in &self.wrappings {
            if let Some(kek) = keks.iter().find(|k| k.id() == w.kek) {
                let wrapped = hex::decode(&w.wrapped)
                    .map_err(|_| CryptError::Key(format!("data key {}: its wrapping is not hex", self.id)))?;
                return kek.unwrap(&wrapped, &id).await;
            }
        }
        let by: Vec<String> = self.wrappings.iter().map(|w| format!("{} {}", w.kek.kind, w.kek.id)).collect();
        Err(CryptError::Key(format!(
            "data key {} is wrapped by {}, and no such key-encryption key is configured",
            self.id,
            by.join(" or ")
        )))
    }

    /// Adds a wrapping by `new` (unwrapping with `old`); false when it has
    /// one already.
    pub async fn rewrap(
        &mut self,
        old: &[&dyn KeyEncryptionKey],
        new: &dyn KeyEncryptionKey,
    ) -> Result<bool, CryptError> {
        if self.wrappings.iter().any(|w| w.kek == new.id()) {
            return Ok(false);
        }
        let id = self.key_id().ok_or_else(|| CryptError::Key(format!("data key {}: bad ID", self.id)))?;
        let dk = self.open(old).await?;
        let wrapped = hex::encode(new.wrap(&dk, &id).await?);
        self.wrappings.push(Wrapping { kek: new.id(), wrapped });
        Ok(true)
    }

    /// Removes the wrapping by `retired`; refused when it is the only one.
    pub fn retire(&mut self, retired: &KekId) -> Result<bool, CryptError> {
        if !self.wrappings.iter().any(|w| &w.kek == retired) {
            return Ok(false);
        }
        if self.wrappings.iter().all(|w| &w.kek == retired) {
            return Err(CryptError::Key(format!(
                "data key {} is wrapped only by {} {}: rotate to a new key before retiring this one",
                self.id, retired.kind, retired.id
            )));
        }
        self.wrappings.retain(|w| &w.kek != retired);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::FileKek;
    use std::os::unix::fs::PermissionsExt;

    fn kek(dir: &std::path::Path, name: &str, byte: &str) -> FileKek {
        let p = dir.join(name);
        std::fs::write(&p, byte.repeat(32)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        FileKek::load(&p).unwrap()
    }

    #[tokio::test]
    async fn rotation_adds_a_wrapping_then_retires_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (kek(d.path(), "a", "aa"), kek(d.path(), "b", "bb"));
        let (id, dk, mut e) = KeyringEntry::create(&a, "2026-12-06T20:00:00Z".into()).await.unwrap();
        assert_eq!(key_of(&id), format!("keyring/{}.json", e.id));
        let stored = serde_json::to_vec(&e).unwrap();
        assert_eq!(KeyringEntry::parse(&stored, "k").unwrap(), e);
        assert_eq!(e.open(&[&a]).await.unwrap().expose(), dk.expose());
        // B alone cannot open it yet, and A cannot be retired.
        let err = e.open(&[&b]).await.unwrap_err().to_string();
        assert!(err.contains("no such key-encryption key is configured") && err.contains(&a.id().id), "{err}");
        assert!(e.retire(&a.id()).is_err());
        // Rotation, twice (a rerun changes nothing), then either key opens.
        assert!(e.rewrap(&[&a], &b).await.unwrap());
        assert!(!e.rewrap(&[&a], &b).await.unwrap());
        assert_eq!(e.open(&[&b]).await.unwrap().expose(), dk.expose());
        assert_eq!(e.open(&[&a]).await.unwrap().expose(), dk.expose());
        // Retired: only B opens it.
        assert!(e.retire(&a.id()).unwrap());
        assert!(e.open(&[&a]).await.is_err());
        assert_eq!(e.open(&[&b]).await.unwrap().expose(), dk.expose());
        // A wrapping moved to another entry does not unwrap there.
        let (_, _, mut other) = KeyringEntry::create(&b, "2026-12-06T20:00:01Z".into()).await.unwrap();
        other.wrappings = e.wrappings.clone();
        assert!(other.open(&[&b]).await.is_err());
    }

    #[test]
    fn malformed_entries_are_named() {
        let err = KeyringEntry::parse(b"{", "keyring/x.json").unwrap_err().to_string();
        assert!(err.starts_with("keyring/x.json: "), "{err}");
        let newer = br#"{"format": 9, "id": "00", "created_at": "", "wrappings": []}"#;
        assert!(KeyringEntry::parse(newer, "k").unwrap_err().to_string().contains("newer"));
        let bad_id = br#"{"format": 1, "id": "zz", "created_at": "", "wrappings": []}"#;
        assert!(KeyringEntry::parse(bad_id, "k").unwrap_err().to_string().contains("32 hex digits"));
    }
}
