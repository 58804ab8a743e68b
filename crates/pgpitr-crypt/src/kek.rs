//! Key-encryption keys: what wraps the data keys kept in the repository's
//! keyring. A key file now; a KMS (AWS KMS first; GCP, Azure or Vault
//! transit later) implements the same trait.

use crate::{CryptError, DataKey};
use async_trait::async_trait;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Names a key-encryption key in the keyring and in messages; never
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KekId {
    /// `file` or `aws-kms`.
    pub kind: String,
    /// A key file's fingerprint (not its path: the same key may live at
    /// other paths on other hosts), or the KMS key's ARN or alias.
    pub id: String,
}

#[async_trait]
pub trait KeyEncryptionKey: Send + Sync {
    fn id(&self) -> KekId;
    /// Wraps `dk`, binding the wrapping to `label` (the data key's ID).
    async fn wrap(&self, dk: &DataKey, label: &[u8]) -> Result<Vec<u8>, CryptError>;
    async fn unwrap(&self, wrapped: &[u8], label: &[u8]) -> Result<DataKey, CryptError>;
}

/// A 256-bit key read from a file that only its owner may read: 64 hex
/// digits (surrounding whitespace ignored).
pub struct FileKek {
    key: LessSafeKey,
    fingerprint: String,
    path: PathBuf,
}

impl FileKek {
    pub fn load(path: &Path) -> Result<FileKek, CryptError> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| CryptError::Key(format!("key file {shown}: {e}")))?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CryptError::Key(format!(
                "key file {shown} is readable by others (mode {:o}): chmod 600 it",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| CryptError::Key(format!("key file {shown}: {e}")))?,
        );
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut())
            .map_err(|_| CryptError::Key(format!("key file {shown} does not hold 64 hex digits (a 256-bit key)")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes.as_ref());
        let fingerprint = format!("sha256:{}", hex::encode(&digest.as_ref()[..8]));
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("32 bytes"));
        Ok(FileKek { key, fingerprint, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn aad(label: &[u8]) -> Vec<u8> {
        [b"pgpitr data key ".as_slice(), label].concat()
    }
}

#[async_trait]
impl KeyEncryptionKey for FileKek {
    fn id(&self) -> KekId {
        KekId { kind: "file".into(), id: self.fingerprint.clone() }
    }

    async fn wrap(&self, dk: &DataKey, label: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::random(&mut nonce)?;
        let mut out = nonce.to_vec();
        let mut body = dk.expose().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(Self::aad(label)), &mut body)
            .map_err(|_| CryptError::Key("wrapping a data key failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    async fn unwrap(&self, wrapped: &[u8], label: &[u8]) -> Result<DataKey, CryptError> {
        let unauthentic = || CryptError::Key(format!("key file {} does not unwrap this data key", self.fingerprint));
        if wrapped.len() != NONCE_LEN + 32 + 16 {
            return Err(unauthentic());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[..NONCE_LEN]);
        let mut body = Zeroizing::new(wrapped[NONCE_LEN..].to_vec());
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(Self::aad(label)), body.as_mut_slice())
            .map_err(|_| unauthentic())?;
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(plain);
        Ok(DataKey::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(dir: &Path, name: &str, hex_text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, hex_text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[tokio::test]
    async fn a_key_file_wraps_and_unwraps_data_keys() {
        let d = tempfile::tempdir().unwrap();
        let a = FileKek::load(&key_file(d.path(), "a", &format!("{}\n", "11".repeat(32)), 0o600)).unwrap();
        let b = FileKek::load(&key_file(d.path(), "b", &"22".repeat(32), 0o400)).unwrap();
        assert_ne!(a.id(), b.id());
        assert!(a.id().id.starts_with("sha256:"));
        let dk = DataKey::generate().unwrap();
        let w = a.wrap(&dk, b"key-1").await.unwrap();
        assert_eq!(a.unwrap(&w, b"key-1").await.unwrap().expose(), dk.expose());
        // Another key, another label, or a changed byte: refused.
        assert!(b.unwrap(&w, b"key-1").await.is_err());
        assert!(a.unwrap(&w, b"key-2").await.is_err());
        let mut bad = w.clone();
        bad[20] ^= 1;
        assert!(a.unwrap(&bad, b"key-1").await.is_err());
    }

    #[test]
    fn bad_key_files_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let open = key_file(d.path(), "open", &"33".repeat(32), 0o644);
        let e = FileKek::load(&open).err().unwrap().to_string();
        assert!(e.contains("readable by others (mode 644)") && e.contains("open"), "{e}");
        let short = key_file(d.path(), "short", "abcd", 0o600);
        let e = FileKek::load(&short).err().unwrap().to_string();
        assert!(e.contains("64 hex digits") && !e.contains("abcd"), "{e}");
        let e = FileKek::load(&d.path().join("missing")).err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
