//! Encryption at rest for secret values, with a key kept in the data dir.
//!
//! The key file (`DATA_DIR/secret.key`, 32 bytes) must be readable by its owner only: a store
//! refuses to open with a key the group or others can read. `Store::rotate_secret_key`
//! re-seals every value under a fresh key without a window in which a crash loses data: the
//! new key is written beside the old one (`secret.key.new`), every value is re-sealed in one
//! transaction, and only then does the new key replace the old. A store opened after a crash
//! between those steps finishes or discards the rotation, whichever the database says.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sqlx::Row;

use crate::{Result, Store, StoreError};

pub(crate) const KEY_FILE: &str = "secret.key";
const NEW_KEY_FILE: &str = "secret.key.new";

pub(crate) struct SecretSeal {
    cipher: ChaCha20Poly1305,
}

impl SecretSeal {
    fn from_key(key: &[u8]) -> SecretSeal {
        SecretSeal { cipher: ChaCha20Poly1305::new(Key::from_slice(key)) }
    }

    /// Loads the data dir's key (creating it on first start), after finishing or discarding a
    /// rotation a crash interrupted.
    pub(crate) async fn load(data_dir: &Path, pool: &sqlx::SqlitePool) -> Result<SecretSeal> {
        let path = data_dir.join(KEY_FILE);
        recover_rotation(data_dir, pool).await?;
        let key = match read_key(&path) {
            Ok(key) => key,
            Err(e) if matches!(&e, StoreError::NotFound(_)) => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
                write_private(&path, &key)?;
                sync_dir(data_dir)?;
                key
            }
            Err(e) => return Err(e),
        };
        Ok(SecretSeal::from_key(&key))
    }

    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(self.cipher.encrypt(&nonce, plain).expect("chacha20poly1305 encryption cannot fail"));
        out
    }

    pub(crate) fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 12 {
            return Err(StoreError::Io("sealed secret is truncated".into()));
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher.decrypt(Nonce::from_slice(nonce), body).map_err(|_| {
            StoreError::Io("cannot decrypt a secret: the data dir's secret.key does not match the database".into())
        })
    }
}

/// Reads a key file, refusing one the group or others may read (a copy of the key opens every
/// secret in the database).
fn read_key(path: &Path) -> Result<Vec<u8>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound(path.display().to_string())),
        Err(e) => return Err(StoreError::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::FailedPrecondition(format!(
            "{path} has mode {mode:03o}: the key that opens every secret must be readable by its owner only. \
             Run `chmod 600 {path}`; if others may have read it, run `ferry secret-key rotate` afterwards",
            path = path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| StoreError::Io(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() != 32 {
        return Err(StoreError::Io(format!(
            "{} is not a 32-byte key; restore it from a backup (secrets cannot be read without it)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Finishes a rotation whose values were re-sealed under `secret.key.new` (the database opens
/// with it) or discards one that never committed.
async fn recover_rotation(data_dir: &Path, pool: &sqlx::SqlitePool) -> Result<()> {
    let new_path = data_dir.join(NEW_KEY_FILE);
    let new_key = match read_key(&new_path) {
        Ok(k) => k,
        Err(StoreError::NotFound(_)) => return Ok(()),
        // A key file cut short by a crash while it was written: the rotation never started.
        Err(StoreError::Io(_)) => {
            remove(&new_path)?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let sample: Option<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM secrets LIMIT 1").fetch_optional(pool).await?;
    let committed = sample.is_some_and(|s| SecretSeal::from_key(&new_key).open(&s).is_ok());
    if committed {
        tracing::warn!("finishing a secret key rotation that was interrupted after the values were re-sealed");
        std::fs::rename(&new_path, data_dir.join(KEY_FILE))
            .map_err(|e| StoreError::Io(format!("cannot move {} into place: {e}", new_path.display())))?;
    } else {
        tracing::warn!("discarding a secret key rotation that was interrupted before it committed");
        remove(&new_path)?;
    }
    sync_dir(data_dir)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io(format!("cannot remove {}: {e}", path.display()))),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Io(format!("cannot sync {}: {e}", dir.display())))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StoreError::Io(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Where a rotation stops, for tests of the crash windows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RotateUntil {
    Done,
    #[cfg(test)]
    KeyWritten,
    #[cfg(test)]
    Resealed,
}

impl Store {
    /// Re-seals every secret value under a fresh key and makes it the data dir's key; returns
    /// how many secrets were re-sealed. Run it while no server uses this data dir (a server
    /// keeps the old key in memory). A value the current key cannot open stops the rotation
    /// before anything changes.
    pub async fn rotate_secret_key(&self) -> Result<usize> {
        self.rotate_secret_key_until(RotateUntil::Done).await
    }

    pub(crate) async fn rotate_secret_key_until(&self, until: RotateUntil) -> Result<usize> {
        let _turn = self.write_lock.lock().await;
        let dir = self.data_dir.clone();
        let new_path: PathBuf = dir.join(NEW_KEY_FILE);
        remove(&new_path)?;
        let new_key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
        write_private(&new_path, &new_key)?;
        sync_dir(&dir)?;
        #[cfg(test)]
        if until == RotateUntil::KeyWritten {
            return Ok(0);
        }
        let old = self.sealer();
        let new = SecretSeal::from_key(&new_key);
        let resealed = async {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query("SELECT secret_id, sealed FROM secrets").fetch_all(&mut *tx).await?;
            for r in &rows {
                let id: String = r.get(0);
                let plain = old.open(&r.get::<Vec<u8>, _>(1)).map_err(|e| StoreError::Io(format!("secret {id}: {e}")))?;
                sqlx::query("UPDATE secrets SET sealed = ? WHERE secret_id = ?").bind(new.seal(&plain)).bind(&id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<usize, StoreError>(rows.len())
        }
        .await;
        let count = match resealed {
            Ok(n) => n,
            Err(e) => {
                remove(&new_path)?;
                return Err(e);
            }
        };
        #[cfg(test)]
        if until == RotateUntil::Resealed {
            return Ok(count);
        }
        let _ = until;
        std::fs::rename(&new_path, dir.join(KEY_FILE)).map_err(|e| StoreError::Io(format!("cannot move the new key into place: {e}")))?;
        sync_dir(&dir)?;
        *self.seal.write().unwrap() = Arc::new(new);
        Ok(count)
    }

    pub(crate) fn sealer(&self) -> Arc<SecretSeal> {
        self.seal.read().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::CreationMode;

    async fn store_with_secret(dir: &Path) -> (Store, String) {
        let store = Store::open(dir, Default::default()).await.unwrap();
        let env = BTreeMap::from([("API_KEY".to_string(), "hunter2".to_string())]);
        let info = store.secret_get_or_create("", "s1", CreationMode::CreateIfMissing, &env, &[], "test").await.unwrap();
        (store, info.object.id)
    }

    #[tokio::test]
    async fn rotation_keeps_values_and_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_secret(dir.path()).await;
        let before = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(store.rotate_secret_key().await.unwrap(), 1);
        assert_ne!(before, std::fs::read(dir.path().join(KEY_FILE)).unwrap());
        assert_eq!(store.secret_values(&id).await.unwrap()["API_KEY"], "hunter2");
        drop(store);
        let store = Store::open(dir.path(), Default::default()).await.unwrap();
        assert_eq!(store.secret_values(&id).await.unwrap()["API_KEY"], "hunter2");
        assert!(!dir.path().join(NEW_KEY_FILE).exists());
    }

    #[tokio::test]
    async fn a_crash_at_any_step_of_a_rotation_loses_nothing() {
        for until in [RotateUntil::KeyWritten, RotateUntil::Resealed] {
            let dir = tempfile::tempdir().unwrap();
            let (store, id) = store_with_secret(dir.path()).await;
            store.rotate_secret_key_until(until).await.unwrap();
            assert!(dir.path().join(NEW_KEY_FILE).exists());
            drop(store);
            let store = Store::open(dir.path(), Default::default()).await.unwrap();
            assert_eq!(store.secret_values(&id).await.unwrap()["API_KEY"], "hunter2", "{until:?}");
            assert!(!dir.path().join(NEW_KEY_FILE).exists(), "{until:?}");
        }
    }

    #[tokio::test]
    async fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), Default::default()).await.unwrap());
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Store::open(dir.path(), Default::default()).await.err().expect("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Store::open(dir.path(), Default::default()).await.unwrap();
    }
}
