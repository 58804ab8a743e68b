//! `pgpitr key list|rotate|retire`: the keys of an encrypted repository.

use crate::cli::KeyCommand;
use anyhow::Context;
use pgpitr_crypt::kek::{FileKek, KekId, KeyEncryptionKey};
use std::sync::Arc;

pub async fn run(cmd: KeyCommand) -> anyhow::Result<u8> {
    match cmd {
        KeyCommand::List { repo, objects, json } => {
            let storage = store(&repo.repo, pgpitr_repo::Access::Read).await?;
            let r = pgpitr_repo::keys::list(storage.as_ref(), objects).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(crate::exit::OK);
            }
            println!("current key: {} {}", r.current.kind, r.current.id);
            for p in &r.previous {
                println!("previous key (accepted until retired): {} {}", p.kind, p.id);
            }
            for d in &r.data_keys {
                let by: Vec<String> = d.wrapped_by.iter().map(|k| format!("{} {}", k.kind, k.id)).collect();
                let objects = d.objects.map(|n| format!(", {n} objects")).unwrap_or_default();
                println!("data key {} made {}{objects}, wrapped by {}", d.id, d.created_at, by.join(" and "));
            }
        }
        KeyCommand::Rotate { repo, new_key_file, new_kms_key_id, json } => {
            let storage = store(&repo.repo, pgpitr_repo::Access::Write).await?;
            let old = pgpitr_repo::key_from_env()
                .await?
                .context("set PGPITR_KEY_FILE (or PGPITR_KMS_KEY_ID) to the repository's current key")?;
            let new: Arc<dyn KeyEncryptionKey> = match (new_key_file, new_kms_key_id) {
                (Some(f), None) => Arc::new(FileKek::load(&f)?),
                (None, Some(id)) => Arc::new(pgpitr_crypt::kms::KmsKek::new(&id).await),
                _ => anyhow::bail!("give the new key as --new-key-file or --new-kms-key-id"),
            };
            let r = pgpitr_repo::keys::rotate(storage.as_ref(), old, new.clone()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "current key is now {} {}: {} data keys wrapped by it now, {} were already",
                    new.id().kind,
                    new.id().id,
                    r.rewrapped,
                    r.already
                );
            }
        }
        KeyCommand::Retire { repo, key, json } => {
            let storage = store(&repo.repo, pgpitr_repo::Access::Write).await?;
            let kind = if key.starts_with("sha256:") { "file" } else { "aws-kms" };
            let r = pgpitr_repo::keys::retire(storage.as_ref(), &KekId { kind: kind.into(), id: key.clone() }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{key} retired: its wrapping removed from {} data keys", r.unwrapped);
            }
        }
    }
    Ok(crate::exit::OK)
}

async fn store(url: &str, access: pgpitr_repo::Access) -> anyhow::Result<Arc<dyn pgpitr_storage::Storage>> {
    let url = pgpitr_storage::RepoUrl::parse(url)?;
    Ok(pgpitr_repo::connect(&url, access).await?)
}
