//! Content-addressed file bytes (mount contents), kept on disk under `DATA_DIR/files/`.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::{Result, Store, StoreError};

fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Store {
    /// Where the bytes with this SHA-256 (lowercase hex) are or would be kept.
    pub fn file_path(&self, sha256_hex: &str) -> Result<PathBuf> {
        if !valid_sha(sha256_hex) {
            return Err(StoreError::Invalid(format!("'{sha256_hex}' is not a lowercase hex SHA-256")));
        }
        Ok(self.data_dir.join("files").join(&sha256_hex[..2]).join(sha256_hex))
    }

    /// The hashes among `shas` whose bytes are not stored.
    pub fn missing_files(&self, shas: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for sha in shas {
            if !self.file_path(sha)?.exists() {
                missing.push(sha.clone());
            }
        }
        Ok(missing)
    }

    /// Stores bytes under their hash after checking it; atomic, so a reader never sees half a file.
    pub async fn put_file(&self, sha256_hex: &str, data: &[u8]) -> Result<()> {
        let path = self.file_path(sha256_hex)?;
        let actual = hex::encode(Sha256::digest(data));
        if actual != sha256_hex {
            return Err(StoreError::Invalid(format!(
                "file content hashes to {actual}, not the declared {sha256_hex}; upload it again"
            )));
        }
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().expect("file paths have a parent").to_path_buf();
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".{}.tmp", crate::util::random_secret(12)));
            std::fs::write(&tmp, &data)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?
        .map_err(|e| StoreError::Io(format!("cannot store file {sha256_hex}: {e}")))
    }
}
