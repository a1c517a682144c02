//! Content-addressed blocks: each block is named by the SHA-256 of its bytes, so a block
//! shared by many files (in one volume or many) is stored once.
//!
//! [`BlockStore`] is the seam; [`BlobBlockStore`] keeps blocks in Ferry's blob store
//! (`ferry-blobs`): files under the data dir, or objects in an S3-compatible bucket.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};

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
    /// The object store holding blocks could not be reached or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Io(String),
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

/// Blocks in a blob store (`ferry-blobs`) under `volumes/blocks/<first two hex digits>/<hex>`:
/// in the data dir that is the file `DATA_DIR/volumes/blocks/<ab>/<hex>`, in a bucket the
/// object of that key.
pub struct BlobBlockStore {
    blobs: ferry_blobs::Blobs,
    writes: std::sync::Arc<tokio::sync::Semaphore>,
    reads: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The blocks of a data dir (the default backend).
pub type LocalBlockStore = BlobBlockStore;

fn key(hash: &Hash) -> String {
    let hex = hex::encode(hash);
    format!("volumes/blocks/{}/{hex}", &hex[..2])
}

fn io_of(e: ferry_blobs::BlobError) -> io::Error {
    e.into_io()
}

impl BlockError {
    fn of(e: ferry_blobs::BlobError) -> BlockError {
        match e {
            ferry_blobs::BlobError::Invalid(m) if m.contains("longer than") => BlockError::TooLarge,
            ferry_blobs::BlobError::DiskFull(m) => BlockError::DiskFull(m),
            e if e.is_unavailable() => BlockError::Unavailable(e.to_string()),
            e => BlockError::Io(e.to_string()),
        }
    }
}

impl BlobBlockStore {
    pub fn new(blobs: ferry_blobs::Blobs) -> BlobBlockStore {
        BlobBlockStore {
            blobs,
            writes: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_WRITES)),
            reads: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_READS)),
        }
    }

    /// Blocks of the data dir `data_dir`.
    pub fn local(data_dir: &Path) -> BlobBlockStore {
        BlobBlockStore::new(ferry_blobs::Blobs::local(data_dir))
    }

    /// Removes the temporary files of uploads cut short by a previous run (data dir only).
    pub fn remove_partial(&self) {
        let Some(dir) = self.blobs.local_path("volumes/blocks") else { return };
        let Ok(shards) = std::fs::read_dir(&dir) else { return };
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


#[async_trait::async_trait]
impl BlockStore for BlobBlockStore {
    async fn len(&self, hash: &Hash) -> io::Result<Option<u64>> {
        Ok(self.blobs.head(&key(hash)).await.map_err(io_of)?.map(|o| o.size))
    }

    async fn put(&self, hash: &Hash, body: BoxStream<'_, io::Result<Bytes>>) -> Result<u64, BlockError> {
        let _permit = self.writes.acquire().await.map_err(|e| BlockError::Io(e.to_string()))?;
        // The blob store takes a 'static stream: the body is forwarded through a small queue.
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let forward = async move {
            let mut body = body;
            while let Some(chunk) = body.next().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        };
        let mut rx = rx;
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        let k = key(hash);
        let store = self.blobs.put_checked(&k, stream, ferry_blobs::Expect::Sha256(*hash), Some(BLOCK_SIZE));
        let (stored, ()) = tokio::join!(store, forward);
        match stored {
            Ok(n) => Ok(n),
            Err(ferry_blobs::BlobError::Invalid(m)) if !m.contains("longer than") => Err(BlockError::HashMismatch(hex::encode(hash))),
            Err(e) => Err(BlockError::of(e)),
        }
    }

    async fn read(&self, hash: &Hash, offset: u64, len: u64) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        // The permit travels with the stream: it is released when the response is sent.
        let permit = self.reads.clone().acquire_owned().await.map_err(io::Error::other)?;
        let data = self.blobs.get_range(&key(hash), offset..offset.saturating_add(len)).await.map_err(io_of)?;
        Ok(data.map(move |c| {
            let _held = &permit;
            c
        })
        .boxed())
    }

    fn local_path(&self, hash: &Hash) -> Option<PathBuf> {
        self.blobs.local_path(&key(hash))
    }

    async fn touch(&self, hash: &Hash) -> io::Result<()> {
        self.blobs.touch(&key(hash)).await.map_err(io_of)
    }

    async fn remove_unreferenced(&self, keep: &std::collections::HashSet<Hash>, min_age: std::time::Duration) -> io::Result<usize> {
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for object in self.blobs.list("volumes/blocks/").await.map_err(io_of)? {
            let name = object.key.rsplit('/').next().unwrap_or("");
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(name, &mut hash).is_err() || keep.contains(&hash) {
                continue;
            }
            let old = now.duration_since(object.modified).is_ok_and(|a| a >= min_age);
            if old && self.blobs.delete(&object.key).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
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
        let store = BlobBlockStore::local(dir.path());
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
        let store = BlobBlockStore::local(dir.path());
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
