//! Ferry's blob store: bytes by key, in the data dir (the default) or in an S3-compatible
//! bucket through the `object_store` crate.
//!
//! Everything Ferry keeps as bytes goes through [`Blobs`]: client blobs (large function
//! arguments and results, `DATA_DIR/blobs/`), volume blocks (`volumes/blocks/`), mount files
//! (`files/`) and, with a bucket, image layers (`images/layers/<id>.tar.zst`). A key is a
//! relative path with `/` separators; in the data dir it is the file's path under the data dir,
//! so data dirs written before this crate existed keep working unchanged.
//!
//! - Writes are atomic: a reader never sees half an object. Locally a write goes to a
//!   temporary file that is fsynced and renamed (and the directory fsynced); in a bucket a
//!   small object is one `PUT` and a large one a multipart upload that is completed last.
//! - Large objects stream both ways: a bucket object is read in ranged requests of
//!   [`PART_SIZE`], written in parts of that size, never held whole in memory.
//! - Every request to a bucket has a deadline and a bounded number of retries; what fails is
//!   [`BlobError::Unavailable`] or [`BlobError::Timeout`], naming the bucket and the endpoint
//!   (never the credentials).
//! - [`Blobs::presigned_get`] gives a URL another host can fetch an object from when the
//!   backend can sign one (a bucket); otherwise callers hand out a URL of Ferry's own blob
//!   endpoint, which proxies the bytes.

mod config;
mod files;
mod local;
mod s3;

use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

pub use config::StorageConfig;
pub use files::ContentFiles;

/// A stream of an object's bytes.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The size of the parts a bucket object is written and read in.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Why a blob operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    #[error("no object '{0}'")]
    NotFound(String),
    /// The object store could not be reached or refused the request.
    #[error("{store} is unavailable: {message}")]
    Unavailable { store: String, message: String },
    /// The object store did not answer in time.
    #[error("{store} did not answer within {secs} s")]
    Timeout { store: String, secs: u64 },
    /// The bytes are not what the caller said they would be.
    #[error("{0}")]
    Invalid(String),
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("{0}")]
    Io(String),
}

impl BlobError {
    pub(crate) fn io(what: &str, e: io::Error) -> BlobError {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            BlobError::DiskFull(format!("{what}: {e}"))
        } else if e.kind() == io::ErrorKind::NotFound {
            BlobError::NotFound(what.to_string())
        } else {
            BlobError::Io(format!("{what}: {e}"))
        }
    }

    /// As an `io::Error`, for byte streams; [`BlobError::from_io`] gets it back.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            BlobError::NotFound(_) => io::ErrorKind::NotFound,
            BlobError::Timeout { .. } => io::ErrorKind::TimedOut,
            BlobError::Invalid(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// The blob error an `io::Error` carries, if it came from [`BlobError::into_io`].
    pub fn from_io(e: &io::Error) -> Option<&BlobError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<BlobError>())
    }

    /// Whether the object store could not be reached or did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BlobError::Unavailable { .. } | BlobError::Timeout { .. })
    }
}

pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// What a write must hash to; checked before the object becomes visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Nothing,
    Sha256([u8; 32]),
}

/// The blob store of one server. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    backend: Arc<Backend>,
}

enum Backend {
    Local(local::Local),
    S3(s3::S3),
}

/// Keys are relative paths of plain names: no `..`, no empty parts, no leading `/`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() < 1024 && key.split('/').all(|p| !p.is_empty() && p != "." && p != "..") && !key.contains('\0')
}

fn check_key(key: &str) -> Result<()> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(BlobError::Invalid(format!("'{key}' is not a valid object key")))
    }
}

impl Blobs {
    /// Objects as files under `data_dir`.
    pub fn local(data_dir: &Path) -> Blobs {
        Blobs { backend: Arc::new(Backend::Local(local::Local::new(data_dir))) }
    }

    /// Opens the storage `config` names; `data_dir` is where the local backend keeps objects.
    /// A bucket is checked with one request, so a wrong endpoint, bucket or key fails here.
    pub async fn open(config: &StorageConfig, data_dir: &Path) -> Result<Blobs> {
        match config {
            StorageConfig::Local => Ok(Blobs::local(data_dir)),
            StorageConfig::S3(c) => {
                let s3 = s3::S3::open(c)?;
                s3.check().await?;
                Ok(Blobs { backend: Arc::new(Backend::S3(s3)) })
            }
        }
    }

    /// Where objects live, for logs and errors: `the data dir /x` or `bucket 'b' at http://…`.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local(l) => format!("the data dir {}", l.root().display()),
            Backend::S3(s) => s.describe(),
        }
    }

    /// Whether objects are files on this machine (then [`Blobs::local_path`] names them).
    pub fn is_local(&self) -> bool {
        matches!(&*self.backend, Backend::Local(_))
    }

    /// The file holding `key` when objects are files on this machine.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match &*self.backend {
            Backend::Local(l) if valid_key(key) => Some(l.path(key)),
            _ => None,
        }
    }

    /// Stores `body` under `key`, replacing what was there; returns its length.
    pub async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        self.put_checked(key, body, Expect::Nothing, None).await
    }

    /// Stores `body` under `key` if it hashes to `expect` and is at most `max_len` bytes; a
    /// failed or mismatched write leaves nothing behind.
    pub async fn put_checked(&self, key: &str, body: ByteStream, expect: Expect, max_len: Option<u64>) -> Result<u64> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(l) => l.put(key, body, expect, max_len).await,
            Backend::S3(s) => s.put(key, body, expect, max_len).await,
        }
    }

    /// Stores `bytes` under `key`.
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<u64> {
        self.put(key, futures::stream::iter([Ok(bytes)]).boxed()).await
    }

    /// Stores the file at `path` under `key`, streaming it.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<u64> {
        let file = tokio::fs::File::open(path).await.map_err(|e| BlobError::io(&format!("cannot open {}", path.display()), e))?;
        self.put(key, tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).boxed()).await
    }

    /// Stores what `write` writes under `key`. `write` runs on a blocking thread; its output is
    /// streamed (a bounded queue of 1 MiB chunks), not held whole.
    pub async fn put_from_writer<T: Send + 'static>(
        &self,
        key: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<T> + Send + 'static,
    ) -> Result<(u64, T)> {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter { tx, buf: Vec::with_capacity(1 << 20) };
            let result = write(&mut w).and_then(|t| w.flush_buf().map(|_| t));
            if let Err(e) = &result {
                let _ = w.tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        let body = tokio_stream_from(rx);
        let stored = self.put(key, body).await;
        let produced = producer.await.map_err(|e| BlobError::Io(e.to_string()))?;
        let n = stored?;
        let t = produced.map_err(|e| BlobError::io("writing an object", e))?;
        Ok((n, t))
    }

    /// The object's length and its bytes.
    pub async fn get(&self, key: &str) -> Result<(u64, ByteStream)> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(l) => l.get(key, None).await,
            Backend::S3(s) => s.get(key, None).await,
        }
    }

    /// Bytes `range` of the object (fewer when it is shorter).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ByteStream> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(l) => Ok(l.get(key, Some(range)).await?.1),
            Backend::S3(s) => Ok(s.get(key, Some(range)).await?.1),
        }
    }

    /// The whole object in memory: for small objects only.
    pub async fn read_all(&self, key: &str) -> Result<Bytes> {
        let (len, mut body) = self.get(key).await?;
        let mut out = Vec::with_capacity(len as usize);
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.map_err(|e| BlobError::Io(e.to_string()))?);
        }
        Ok(out.into())
    }

    /// Runs `read` on a blocking thread over the object's bytes, streamed.
    pub async fn get_into_reader<T: Send + 'static>(
        &self,
        key: &str,
        read: impl FnOnce(&mut dyn Read) -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (_, body) = self.get(key).await?;
        let reader = tokio_util::io::StreamReader::new(body);
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _guard = handle.enter();
            let mut bridge = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone());
            read(&mut bridge)
        })
        .await
        .map_err(|e| BlobError::Io(e.to_string()))?
        .map_err(|e| BlobError::Io(format!("reading object '{key}': {e}")))
    }

    /// Copies the object into the file `dest` (through a temporary file renamed into place, so
    /// `dest` is whole or absent); returns its length.
    pub async fn download_to(&self, key: &str, dest: &Path) -> Result<u64> {
        let (_, body) = self.get(key).await?;
        local::write_atomically(dest, body, Expect::Nothing, None).await
    }

    /// The object's length and time of writing, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(l) => l.head(key).await,
            Backend::S3(s) => s.head(key).await,
        }
    }

    /// Deletes the object; deleting one that is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(l) => l.delete(key).await,
            Backend::S3(s) => s.delete(key).await,
        }
    }

    /// Every object whose key starts with `prefix` (a folder such as `blobs/`), in no order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        match &*self.backend {
            Backend::Local(l) => l.list(prefix).await,
            Backend::S3(s) => s.list(prefix).await,
        }
    }

    /// Marks an object as just used (its time of writing becomes now) where the backend can;
    /// a bucket cannot, and keeps the time of the upload.
    pub async fn touch(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(l) => l.touch(key).await,
            Backend::S3(_) => Ok(()),
        }
    }

    /// A URL that lets anyone holding it `GET` the object for `ttl`, where the backend can sign
    /// one (a bucket); `None` for the data dir, whose objects Ferry's blob endpoint serves.
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<Option<String>> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local(_) => Ok(None),
            Backend::S3(s) => s.presigned_get(key, ttl).await.map(Some),
        }
    }
}

/// A `Write` that sends 1 MiB chunks down a channel (from a blocking thread).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20)));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the object store stopped reading"))?;
        }
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Hashes and counts what a write passes on, and enforces its limit.
pub(crate) struct Checker {
    sha: Option<sha2::Sha256>,
    expect: Expect,
    max_len: Option<u64>,
    pub(crate) len: u64,
}

impl Checker {
    pub(crate) fn new(expect: Expect, max_len: Option<u64>) -> Checker {
        use sha2::Digest;
        let sha = matches!(expect, Expect::Sha256(_)).then(sha2::Sha256::new);
        Checker { sha, expect, max_len, len: 0 }
    }

    pub(crate) fn update(&mut self, chunk: &[u8]) -> Result<()> {
        use sha2::Digest;
        self.len += chunk.len() as u64;
        if let Some(max) = self.max_len {
            if self.len > max {
                return Err(BlobError::Invalid(format!("the object is longer than {max} bytes")));
            }
        }
        if let Some(sha) = &mut self.sha {
            sha.update(chunk);
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<u64> {
        use sha2::Digest;
        if let (Expect::Sha256(want), Some(sha)) = (self.expect, self.sha) {
            let got: [u8; 32] = sha.finalize().into();
            if got != want {
                return Err(BlobError::Invalid(format!("the bytes hash to {}, not the declared {}", hex::encode(got), hex::encode(want))));
            }
        }
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests;
