//! Content-addressed files (the files of client mounts): key `files/<ab>/<sha256>`, with a
//! cache on this machine at `DATA_DIR/files/<ab>/<sha256>` that containers bind-mount. With the
//! data dir as the store, the cache is the store itself.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use crate::{BlobError, Blobs, ByteStream, Expect, Result};

/// Mount files over a blob store. Cheap to clone.
#[derive(Clone)]
pub struct ContentFiles {
    blobs: Blobs,
    cache: PathBuf,
}

fn parse_sha(sha256_hex: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if sha256_hex.len() != 64 || sha256_hex.bytes().any(|b| b.is_ascii_uppercase()) || hex::decode_to_slice(sha256_hex, &mut out).is_err() {
        return Err(BlobError::Invalid(format!("'{sha256_hex}' is not a lowercase hex SHA-256")));
    }
    Ok(out)
}

fn key(sha256_hex: &str) -> String {
    format!("files/{}/{sha256_hex}", &sha256_hex[..2])
}

impl ContentFiles {
    /// Files in `blobs`, cached under `data_dir/files` when `blobs` is a bucket.
    pub fn new(blobs: Blobs, data_dir: &Path) -> ContentFiles {
        ContentFiles { blobs, cache: data_dir.join("files") }
    }

    /// Where the file with this hash is (or will be) on this machine.
    pub fn cache_path(&self, sha256_hex: &str) -> Result<PathBuf> {
        parse_sha(sha256_hex)?;
        // With the data dir as the store, the stored file is the cache.
        Ok(self.blobs.local_path(&key(sha256_hex)).unwrap_or_else(|| self.cache.join(&sha256_hex[..2]).join(sha256_hex)))
    }

    /// The hashes among `shas` whose bytes are stored nowhere.
    pub async fn missing(&self, shas: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for sha in shas {
            if self.cache_path(sha)?.exists() {
                continue;
            }
            if self.blobs.is_local() || self.blobs.head(&key(sha)).await?.is_none() {
                missing.push(sha.clone());
            }
        }
        Ok(missing)
    }

    /// Stores bytes under their hash after checking it.
    pub async fn put(&self, sha256_hex: &str, data: Bytes) -> Result<()> {
        self.put_stream(sha256_hex, futures::stream::iter([Ok(data)]).boxed()).await
    }

    /// Stores a stream of bytes under their hash; nothing is stored if they hash otherwise.
    pub async fn put_stream(&self, sha256_hex: &str, body: ByteStream) -> Result<()> {
        let sha = parse_sha(sha256_hex)?;
        if self.cache_path(sha256_hex)?.exists() && self.blobs.is_local() {
            return Ok(());
        }
        match self.blobs.put_checked(&key(sha256_hex), body, Expect::Sha256(sha), None).await {
            Err(BlobError::Invalid(m)) => Err(BlobError::Invalid(format!("file content does not match its name: {m}; upload it again"))),
            other => other.map(|_| ()),
        }
    }

    /// The file on this machine, fetched from the store into the cache when it is not there.
    pub async fn ensure_local(&self, sha256_hex: &str) -> Result<PathBuf> {
        let path = self.cache_path(sha256_hex)?;
        if path.exists() || self.blobs.is_local() {
            return Ok(path);
        }
        self.blobs.download_to(&key(sha256_hex), &path).await?;
        Ok(path)
    }
}
