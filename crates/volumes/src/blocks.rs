//! Content-addressed blocks: each block is named by the SHA-256 of its bytes, so a block
//! shared by many files (in one volume or many) is stored once.
//!
//! [`BlockStore`] is the seam for other backends (an S3-compatible object store is the next);
//! [`LocalBlockStore`] keeps blocks as files under the data dir.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The SHA-256 of a block's bytes.
pub type Hash = [u8; 32];

/// The client cuts files into blocks of this size (the last one may be shorter, and trailing
/// zero bytes of a block are left out of it and of its hash).
pub const BLOCK_SIZE: u64 = 8 * 1024 * 1024;

/// Why a block could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("the block's bytes do not match its SHA-256 {0}")]
    HashMismatch(String),
    #[error("a block holds at most 8 MiB")]
    TooLarge,
    #[error("Ferry's disk is full: {0}")]
    DiskFull(String),
    #[error("{0}")]
    Io(String),
}

impl BlockError {
    fn io(what: &str, e: io::Error) -> BlockError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            BlockError::DiskFull(format!("{what}: {e}"))
        } else {
            BlockError::Io(format!("{what}: {e}"))
        }
    }
}

/// Where blocks live.
#[async_trait::async_trait]
pub trait BlockStore: Send + Sync + 'static {
    /// The stored length of a block, or `None` when it is not stored.
    async fn len(&self, hash: &Hash) -> io::Result<Option<u64>>;

    /// Stores a block from a stream of bytes, which must hash to `hash`. The block is durable
    /// (fsynced) when this returns; a failed or short upload leaves nothing behind.
    async fn put(&self, hash: &Hash, body: BoxStream<'_, io::Result<Bytes>>) -> Result<u64, BlockError>;

    /// Bytes `offset..offset+len` of a block (fewer when the block is shorter).
    async fn read(&self, hash: &Hash, offset: u64, len: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>>;

    /// The block's file on this machine, for backends that keep one (containers' views are
    /// made from local files).
    fn local_path(&self, hash: &Hash) -> Option<PathBuf>;

    /// Marks a stored block as just used, so that [`BlockStore::remove_unreferenced`] spares it.
    async fn touch(&self, hash: &Hash) -> io::Result<()>;

    /// Deletes blocks not in `keep` that were last stored or touched over `min_age` ago;
    /// returns how many went.
    async fn remove_unreferenced(&self, keep: &std::collections::HashSet<Hash>, min_age: std::time::Duration) -> io::Result<usize>;
}

/// How many blocks are written, and read, at once. The client opens up to 128 transfers at a
/// time; each in flight holds buffers, so more would grow memory, not throughput. A transfer
/// beyond these waits with its body unread (TCP pushes back on the client).
const CONCURRENT_WRITES: usize = 8;
const CONCURRENT_READS: usize = 8;

/// The size of the chunks a read streams.
const READ_CHUNK: usize = 256 * 1024;

/// Blocks as files: `<dir>/<first two hex digits>/<hex>`.
pub struct LocalBlockStore {
    dir: PathBuf,
    writes: std::sync::Arc<tokio::sync::Semaphore>,
    reads: std::sync::Arc<tokio::sync::Semaphore>,
}

impl LocalBlockStore {
    pub fn new(dir: impl Into<PathBuf>) -> LocalBlockStore {
        LocalBlockStore {
            dir: dir.into(),
            writes: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_WRITES)),
            reads: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
        }
    }

    fn path(&self, hash: &Hash) -> PathBuf {
        let hex = hex::encode(hash);
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Removes the temporary files of uploads cut short by a previous run.
    pub fn remove_partial(&self) {
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            for f in files.flatten() {
                if f.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
}

/// fsyncs a directory, so that a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl BlockStore for LocalBlockStore {
    async fn len(&self, hash: &Hash) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(hash)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, hash: &Hash, mut body: BoxStream<'_, io::Result<Bytes>>) -> Result<u64, BlockError> {
        let _permit = self.writes.acquire().await.map_err(|e| BlockError::Io(e.to_string()))?;
        let dest = self.path(hash);
        let shard = dest.parent().expect("sharded").to_path_buf();
        tokio::fs::create_dir_all(&shard).await.map_err(|e| BlockError::io("cannot create block directory", e))?;
        let tmp = shard.join(format!("{}.{}.tmp", hex::encode(hash), ferry_store::new_id("up")));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| BlockError::io("cannot create block file", e))?;
            let mut sha = Sha256::new();
            let mut len = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlockError::Io(format!("upload interrupted: {e}")))?;
                len += chunk.len() as u64;
                if len > BLOCK_SIZE {
                    return Err(BlockError::TooLarge);
                }
                sha.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| BlockError::io("cannot write block", e))?;
            }
            let actual: Hash = sha.finalize().into();
            if &actual != hash {
                return Err(BlockError::HashMismatch(hex::encode(hash)));
            }
            file.sync_all().await.map_err(|e| BlockError::io("cannot write block", e))?;
            drop(file);
            tokio::fs::rename(&tmp, &dest).await.map_err(|e| BlockError::io("cannot store block", e))?;
            let shard = shard.clone();
            tokio::task::spawn_blocking(move || sync_dir(&shard))
                .await
                .map_err(|e| BlockError::Io(e.to_string()))?
                .map_err(|e| BlockError::io("cannot store block", e))?;
            Ok(len)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn read(&self, hash: &Hash, offset: u64, len: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        // The permit travels with the stream: it is released when the response is sent.
        let permit = self.reads.clone().acquire_owned().await.map_err(io::Error::other)?;
        let mut file = tokio::fs::File::open(self.path(hash)).await?;
        file.seek(io::SeekFrom::Start(offset)).await?;
        let limited = file.take(len);
        let chunks = futures::stream::unfold((limited, permit), |(mut f, permit)| async move {
            let mut buf = vec![0u8; READ_CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), (f, permit)))
                }
                Err(e) => Some((Err(e), (f, permit))),
            }
        });
        Ok(chunks.boxed())
    }

    fn local_path(&self, hash: &Hash) -> Option<PathBuf> {
        Some(self.path(hash))
    }

    async fn touch(&self, hash: &Hash) -> io::Result<()> {
        let path = self.path(hash);
        tokio::task::spawn_blocking(move || std::fs::File::options().write(true).open(path)?.set_modified(std::time::SystemTime::now()))
            .await
            .map_err(io::Error::other)?
    }

    async fn remove_unreferenced(&self, keep: &std::collections::HashSet<Hash>, min_age: std::time::Duration) -> io::Result<usize> {
        let dir = self.dir.clone();
        let keep = keep.clone();
        tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now();
            let mut removed = 0;
            for shard in std::fs::read_dir(&dir)?.flatten() {
                for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    let name = f.file_name();
                    let mut hash = [0u8; 32];
                    if hex::decode_to_slice(name.as_encoded_bytes(), &mut hash).is_err() || keep.contains(&hash) {
                        continue;
                    }
                    let old = f.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).is_ok_and(|a| a >= min_age));
                    if old && std::fs::remove_file(f.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Hashes a block's bytes the way the client does: trailing zero bytes are not part of it.
pub fn block_hash(bytes: &[u8]) -> (Hash, usize) {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    (Sha256::digest(&bytes[..end]).into(), end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(data: &'static [u8]) -> BoxStream<'static, io::Result<Bytes>> {
        futures::stream::iter(data.chunks(3).map(|c| Ok(Bytes::from_static(c)))).boxed()
    }

    #[tokio::test]
    async fn stores_verified_blocks_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlockStore::new(dir.path());
        let (hash, _) = block_hash(b"hello world");
        assert_eq!(store.len(&hash).await.unwrap(), None);
        assert!(matches!(store.put(&hash, body(b"hello there")).await, Err(BlockError::HashMismatch(_))));
        assert_eq!(store.len(&hash).await.unwrap(), None);
        assert_eq!(store.put(&hash, body(b"hello world")).await.unwrap(), 11);
        assert_eq!(store.len(&hash).await.unwrap(), Some(11));
        let got: Vec<Bytes> = store.read(&hash, 6, 100).await.unwrap().map(|c| c.unwrap()).collect().await;
        assert_eq!(got.concat(), b"world");
        let (other, _) = block_hash(b"other");
        store.put(&other, body(b"other")).await.unwrap();
        let keep = std::collections::HashSet::from([hash]);
        assert_eq!(store.remove_unreferenced(&keep, std::time::Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(store.remove_unreferenced(&keep, std::time::Duration::ZERO).await.unwrap(), 1);
        assert_eq!(store.len(&other).await.unwrap(), None);
        assert_eq!(store.len(&hash).await.unwrap(), Some(11));
    }

    /// A full disk fails the write with DiskFull and leaves no partial block behind. Needs root
    /// (a small tmpfs stands for the full disk); skipped otherwise.
    #[tokio::test]
    async fn full_disk_is_reported_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        let mounted = unsafe { libc::mount(c"tmpfs".as_ptr(), c.as_ptr(), c"tmpfs".as_ptr(), 0, c"size=1m".as_ptr().cast()) } == 0;
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (not root)");
            return;
        }
        let store = LocalBlockStore::new(dir.path().join("blocks"));
        let data: &'static [u8] = Box::leak(vec![7u8; 2 << 20].into_boxed_slice());
        let (hash, _) = block_hash(data);
        let result = store.put(&hash, body(data)).await;
        let leftovers = walk_files(dir.path());
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        assert!(matches!(result, Err(BlockError::DiskFull(_))), "{result:?}");
        assert_eq!(leftovers, 0);
    }

    fn walk_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 })
            .sum()
    }

    #[test]
    fn trailing_zeros_are_not_hashed() {
        assert_eq!(block_hash(b"ab\0\0").0, block_hash(b"ab").0);
        assert_eq!(block_hash(b"\0\0").1, 0);
    }
}
