//! The keys of an encrypted repository: `pgpitr key list|rotate|retire`.
//!
//! Rotation never rewrites data: it adds a wrapping by the new
//! key-encryption key to every data key in the keyring, then makes the new
//! key the binding's current one and keeps the old one accepted. Data keys
//! that processes still holding the old key make meanwhile are wrapped by
//! the old key only: a second `rotate` (idempotent) wraps them too. Only
//! then can the old key be retired, which removes its wrappings; retiring is
//! refused while any data key depends on it alone.

use crate::{Binding, ENCRYPTED_FORMAT, RepoError, Result, layout, read_binding};
use bytes::Bytes;
use pgpitr_crypt::envelope::{Envelope, HEADER_LEN};
use pgpitr_crypt::kek::{KekId, KeyEncryptionKey};
use pgpitr_crypt::keyring::{self, KeyringEntry};
use pgpitr_storage::Storage;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub struct DataKeyReport {
    pub id: String,
    pub created_at: String,
    pub wrapped_by: Vec<KekId>,
    /// Objects sealed with it (`list --objects`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    /// The key that wraps new data keys.
    pub current: KekId,
    /// Older keys still accepted (until retired).
    pub previous: Vec<KekId>,
    pub data_keys: Vec<DataKeyReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Rotated {
    /// Data keys given a wrapping by the new key now, and those that had one.
    pub rewrapped: usize,
    pub already: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Retired {
    /// Data keys whose wrapping by the retired key was removed.
    pub unwrapped: usize,
}

fn refused(storage: &dyn Storage, reason: String) -> RepoError {
    RepoError::Encryption { location: storage.describe(), reason }
}

async fn encrypted_binding(storage: &dyn Storage) -> Result<Binding> {
    let b = read_binding(storage).await?;
    if b.encryption.is_none() || b.format_version != ENCRYPTED_FORMAT {
        return Err(refused(storage, "it is not encrypted: there are no keys".into()));
    }
    Ok(b)
}

async fn entries(storage: &dyn Storage) -> Result<Vec<(String, KeyringEntry)>> {
    let mut out = Vec::new();
    for m in storage.list(keyring::PREFIX).await? {
        let body = storage.get(&m.key).await?;
        let e = KeyringEntry::parse(&body, &m.key).map_err(|e| refused(storage, e.to_string()))?;
        out.push((m.key, e));
    }
    Ok(out)
}

async fn put_entry(storage: &dyn Storage, key: &str, e: &KeyringEntry) -> Result<()> {
    let body = serde_json::to_vec_pretty(e).expect("an entry serialises");
    Ok(storage.put(key, Bytes::from(body)).await?)
}

async fn put_binding(storage: &dyn Storage, b: &Binding) -> Result<()> {
    let body = serde_json::to_vec_pretty(b).expect("binding serialises");
    Ok(storage.put(layout::BINDING, Bytes::from(body)).await?)
}

/// The keys of the encrypted repository in `storage` (the store itself);
/// with `objects`, how many objects each data key seals (one ranged read
/// per object).
pub async fn list(storage: &dyn Storage, objects: bool) -> Result<KeyReport> {
    let b = encrypted_binding(storage).await?;
    let enc = b.encryption.expect("checked");
    let mut counts: HashMap<String, usize> = HashMap::new();
    if objects {
        for m in storage.list("").await? {
            if m.key == layout::BINDING || m.key.starts_with(keyring::PREFIX) {
                continue;
            }
            let head = storage.get_range(&m.key, 0..HEADER_LEN as u64).await?;
            if let Ok((env, _)) = Envelope::parse_any(&head, &m.key) {
                *counts.entry(hex::encode(env.key_id)).or_default() += 1;
            }
        }
    }
    let mut data_keys: Vec<DataKeyReport> = entries(storage)
        .await?
        .into_iter()
        .map(|(_, e)| DataKeyReport {
            objects: objects.then(|| counts.get(&e.id).copied().unwrap_or(0)),
            wrapped_by: e.wrappings.iter().map(|w| w.kek.clone()).collect(),
            id: e.id,
            created_at: e.created_at,
        })
        .collect();
    data_keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(KeyReport { current: enc.kek, previous: enc.previous, data_keys })
}

/// Wraps every data key by `new` too (unwrapping with `old`), then makes
/// `new` the current key and keeps `old` accepted. Safe to interrupt and
/// to run again.
pub async fn rotate(
    storage: &dyn Storage,
    old: Arc<dyn KeyEncryptionKey>,
    new: Arc<dyn KeyEncryptionKey>,
) -> Result<Rotated> {
    let mut b = encrypted_binding(storage).await?;
    let enc = b.encryption.as_ref().expect("checked");
    let accepted = |k: &KekId| &enc.kek == k || enc.previous.contains(k);
    if !accepted(&old.id()) {
        return Err(refused(
            storage,
            format!(
                "{} {} is not one of its keys (current: {} {})",
                old.id().kind,
                old.id().id,
                enc.kek.kind,
                enc.kek.id
            ),
        ));
    }
    if old.id() == new.id() {
        return Err(refused(storage, "the new key is the current one".into()));
    }
    let mut out = Rotated::default();
    for (key, mut e) in entries(storage).await? {
        let added =
            e.rewrap(&[old.as_ref(), new.as_ref()], new.as_ref()).await.map_err(|e| refused(storage, e.to_string()))?;
        if added {
            put_entry(storage, &key, &e).await?;
            out.rewrapped += 1;
        } else {
            out.already += 1;
        }
    }
    let enc = b.encryption.as_mut().expect("checked");
    if enc.kek != new.id() {
        let previous = std::mem::replace(&mut enc.kek, new.id());
        if !enc.previous.contains(&previous) {
            enc.previous.push(previous);
        }
        enc.previous.retain(|k| k != &enc.kek);
        put_binding(storage, &b).await?;
    }
    Ok(out)
}

/// Removes the wrappings by `retired` and stops accepting it. Refused for
/// the current key, and while any data key is wrapped by it alone.
pub async fn retire(storage: &dyn Storage, retired: &KekId) -> Result<Retired> {
    let mut b = encrypted_binding(storage).await?;
    let enc = b.encryption.as_mut().expect("checked");
    if &enc.kek == retired {
        return Err(refused(
            storage,
            format!("{} {} is the current key: rotate to another first", retired.kind, retired.id),
        ));
    }
    let all = entries(storage).await?;
    let alone: Vec<&str> = all
        .iter()
        .filter(|(_, e)| !e.wrappings.is_empty() && e.wrappings.iter().all(|w| &w.kek == retired))
        .map(|(_, e)| e.id.as_str())
        .collect();
    if let Some(first) = alone.first() {
        return Err(refused(
            storage,
            format!(
                "{} data keys (e.g. {first}) are wrapped by {} {} alone: run `pgpitr key rotate` again first",
                alone.len(),
                retired.kind,
                retired.id
            ),
        ));
    }
    let mut out = Retired::default();
    for (key, mut e) in all {
        if e.retire(retired).map_err(|e| refused(storage, e.to_string()))? {
            put_entry(storage, &key, &e).await?;
            out.unwrapped += 1;
        }
    }
    if enc.previous.contains(retired) {
        enc.previous.retain(|k| k != retired);
        put_binding(storage, &b).await?;
    }
    Ok(out)
}
