//! Objects as files under the data dir: key `a/b/c` is the file `DATA_DIR/a/b/c`.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{BlobError, ByteStream, Checker, Expect, ObjectInfo, Result};

const READ_CHUNK: usize = 256 * 1024;

pub(crate) struct Local {
    root: PathBuf,
}

impl Local {
    pub(crate) fn new(root: &Path) -> Local {
        Local { root: root.to_path_buf() }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub(crate) async fn put(&self, key: &str, body: ByteStream, expect: Expect, max_len: Option<u64>) -> Result<u64> {
        write_atomically(&self.path(key), body, expect, max_len).await
    }

    pub(crate) async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<(u64, ByteStream)> {
        let mut file = match tokio::fs::File::open(self.path(key)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::NotFound(key.to_string())),
            Err(e) => return Err(BlobError::io(&format!("cannot open {key}"), e)),
        };
        let len = file.metadata().await.map_err(|e| BlobError::io(&format!("cannot open {key}"), e))?.len();
        let (start, end) = match range {
            Some(r) => (r.start.min(len), r.end.min(len)),
            None => (0, len),
        };
        file.seek(io::SeekFrom::Start(start)).await.map_err(|e| BlobError::io(&format!("cannot read {key}"), e))?;
        let limited = file.take(end.saturating_sub(start));
        let chunks = futures::stream::unfold(limited, |mut f| async move {
            let mut buf = vec![0u8; READ_CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        Ok((len, chunks.boxed()))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo { key: key.to_string(), size: m.len(), modified: m.modified().unwrap_or(std::time::UNIX_EPOCH) })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(BlobError::io(&format!("cannot read {key}"), e)),
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::io(&format!("cannot delete {key}"), e)),
        }
    }

    pub(crate) async fn touch(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || std::fs::File::options().write(true).open(path)?.set_modified(std::time::SystemTime::now()))
            .await
            .map_err(|e| BlobError::Io(e.to_string()))?
            .map_err(|e| BlobError::io(&format!("cannot touch {key}"), e))
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            // Walk from the deepest folder the prefix names.
            let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let mut out = Vec::new();
            let mut stack = vec![(root.join(dir_part), dir_part.to_string())];
            while let Some((dir, rel)) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(BlobError::io(&format!("cannot list {}", dir.display()), e)),
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".tmp") {
                        continue;
                    }
                    let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                    let Ok(meta) = e.metadata() else { continue };
                    if meta.is_dir() {
                        if key.starts_with(&prefix) || prefix.starts_with(&format!("{key}/")) {
                            stack.push((e.path(), key));
                        }
                    } else if meta.is_file() && key.starts_with(&prefix) {
                        out.push(ObjectInfo { key, size: meta.len(), modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH) });
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| BlobError::Io(e.to_string()))?
    }
}

/// fsyncs a directory, so that a rename into it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Streams `body` into a temporary file next to `dest`, checks it, fsyncs it and renames it
/// into place (fsyncing the directory); on any failure removes the temporary file.
pub(crate) async fn write_atomically(dest: &Path, mut body: ByteStream, expect: Expect, max_len: Option<u64>) -> Result<u64> {
    let dir = dest.parent().expect("object paths have a parent").to_path_buf();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| BlobError::io(&format!("cannot create {}", dir.display()), e))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| BlobError::io("cannot create a file", e))?;
        let mut check = Checker::new(expect, max_len);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Io(format!("the upload was interrupted: {e}")))?;
            check.update(&chunk)?;
            file.write_all(&chunk).await.map_err(|e| BlobError::io("cannot write", e))?;
        }
        let len = check.finish()?;
        file.sync_all().await.map_err(|e| BlobError::io("cannot write", e))?;
        drop(file);
        tokio::fs::rename(&tmp, dest).await.map_err(|e| BlobError::io("cannot store", e))?;
        tokio::task::spawn_blocking(move || sync_dir(&dir))
            .await
            .map_err(|e| BlobError::Io(e.to_string()))?
            .map_err(|e| BlobError::io("cannot store", e))?;
        Ok(len)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
