//! Volumes: named, persistent trees of files with Modal's commit/reload semantics.
//!
//! A volume's committed tree lives in the store ([`ferry_store::VolumeEntry`]: path, kind,
//! mode, size, mtime and, for a file, the list of its blocks). File contents are cut into
//! blocks of [`BLOCK_SIZE`] named by their SHA-256 and kept in a [`BlockStore`], so identical
//! blocks, across files and across volumes, are stored once. Every change to a tree is one
//! store transaction, made after the blocks it names are durable: a change that returned is
//! never lost, and a crash in between leaves at most unreferenced blocks.
//!
//! Containers see a volume through [`mounts`]: a read-only snapshot of a committed tree made
//! of hard links (no copy of the data) under a private writable layer that a commit turns
//! into a new tree.
//!
//! Nothing here knows the wire protocol.

pub mod blocks;
pub mod mounts;
pub mod nfs;
pub use mounts::{HostBind, MountRequest};
pub mod paths;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_store::{EntryKind, Store, StoreError, VolumeChange, VolumeEntry};

pub use ferry_blobs::Blobs;
pub use blocks::{BlobBlockStore, BlockError, BlockStore, Hash, LocalBlockStore, BLOCK_SIZE};
pub use paths::normalize;

/// The filesystem version Ferry serves (Modal's "VolumeFS v2": content-addressed blocks).
pub const FS_VERSION: i32 = 2;

/// Errors of volume operations; the protocol adapter maps each to one status.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation holds what this one needs (open files in a container's view).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    DiskFull(String),
    /// The object store holding blocks could not be reached or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

impl VolumeError {
    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> VolumeError {
        if let Some(b) = ferry_blobs::BlobError::from_io(&e).filter(|b| b.is_unavailable()) {
            VolumeError::Unavailable(format!("{what}: {b}"))
        } else if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            VolumeError::DiskFull(format!("Ferry's disk is full ({what}: {e}); the volume is unchanged"))
        } else {
            VolumeError::Io(format!("{what}: {e}"))
        }
    }
}

/// A file a client wants to put: its content is named by block hashes it uploads separately.
#[derive(Clone, Debug)]
pub struct NewFile {
    pub path: String,
    pub mode: Option<u32>,
    pub size: u64,
    pub blocks: Vec<Hash>,
}

/// A block the client must upload before its files can be put.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingBlock {
    pub file_index: usize,
    pub block_index: usize,
    pub hash: Hash,
}

/// What a listing covers: one file (the path named a file) or a directory's contents.
#[derive(Clone, Debug)]
pub enum Listing {
    Single(VolumeEntry),
    Directory(String),
}

/// The byte range of a file a reader asked for, and the blocks that hold it.
#[derive(Clone, Debug)]
pub struct FileRange {
    pub size: u64,
    pub start: u64,
    pub len: u64,
    /// `(block hash, offset in the block, bytes wanted from it)`, in order.
    pub pieces: Vec<(Hash, u64, u64)>,
}

/// Volume operations over one store and one block store. Cheap to clone.
#[derive(Clone)]
pub struct Volumes {
    store: Store,
    blocks: Arc<dyn BlockStore>,
    /// `DATA_DIR/volumes`.
    root: PathBuf,
    /// Changes to one volume's tree take turns, so each sees the tree it changes.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    pub(crate) mounts: Arc<mounts::Registry>,
    /// Held by the garbage collector's sweep.
    sweeping: Arc<tokio::sync::Mutex<()>>,
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn not_found(path: &str) -> VolumeError {
    VolumeError::NotFound(format!("No such file or directory: '/{path}'"))
}

fn dir_entry(path: &str) -> VolumeEntry {
    VolumeEntry { path: path.to_string(), kind: EntryKind::Directory, mode: 0o755, size: 0, mtime: now_secs(), blocks: Vec::new(), target: None }
}

/// Number of blocks of a file of `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

impl Volumes {
    /// Volumes whose local state (snapshots, file objects, views) is under `data_dir/volumes`
    /// and whose blocks are in `blobs` (the data dir's `volumes/blocks/`, or a bucket).
    pub fn open(store: Store, data_dir: &Path, blobs: ferry_blobs::Blobs) -> Result<Volumes> {
        let root = data_dir.join("volumes");
        let blocks = BlobBlockStore::new(blobs);
        std::fs::create_dir_all(root.join("blocks")).map_err(|e| VolumeError::io("cannot create the volumes directory", e))?;
        blocks.remove_partial();
        let volumes = Volumes { store, blocks: Arc::new(blocks), root, locks: Default::default(), mounts: Default::default(), sweeping: Default::default() };
        volumes.sweep_stale_views();
        Ok(volumes)
    }

    pub fn blocks(&self) -> &Arc<dyn BlockStore> {
        &self.blocks
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) async fn lock(&self, volume_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self.locks.lock().unwrap().entry(volume_id.to_string()).or_default().clone();
        m.lock_owned().await
    }

    /// Records a newly created volume.
    pub async fn init(&self, volume_id: &str) -> Result<()> {
        Ok(self.store.volume_init(volume_id, FS_VERSION).await?)
    }

    /// The filesystem version of a volume.
    pub async fn fs_version(&self, volume_id: &str) -> Result<i32> {
        Ok(self.store.volume_state(volume_id).await?.0)
    }

    /// Deletes what no volume refers to any more: blocks unreferenced for over `min_age`, file
    /// objects no snapshot links and snapshots of deleted volumes. Runs one sweep at a time.
    pub async fn collect_garbage(&self, min_age: std::time::Duration) -> Result<usize> {
        let Ok(_sweep) = self.sweeping.try_lock() else { return Ok(0) };
        let keep = self.store.volume_referenced_blocks().await?;
        let mut removed = self.blocks.remove_unreferenced(&keep, min_age).await.map_err(|e| VolumeError::io("cannot sweep blocks", e))?;
        let mut live = HashSet::new();
        for e in std::fs::read_dir(self.root.join("snapshots")).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if self.store.volume_state(&id).await.is_ok() {
                live.insert(id);
            }
        }
        let root = self.root.clone();
        let busy: HashSet<String> = self.mounts.volumes_in_use();
        removed += tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::MetadataExt;
            let mut removed = 0;
            for e in std::fs::read_dir(root.join("snapshots")).into_iter().flatten().flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !live.contains(&id) && !busy.contains(&id) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let now = std::time::SystemTime::now();
            for shard in std::fs::read_dir(root.join("files")).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    let Ok(m) = f.metadata() else { continue };
                    let old = m.modified().is_ok_and(|t| now.duration_since(t).is_ok_and(|a| a >= min_age));
                    if m.is_file() && m.nlink() == 1 && old && std::fs::remove_file(f.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
            removed
        })
        .await
        .map_err(|e| VolumeError::Io(e.to_string()))?;
        Ok(removed)
    }

    /// Puts files whose blocks are all stored; otherwise changes nothing and returns the
    /// blocks still to upload (each distinct block once).
    pub async fn put_files(&self, volume_id: &str, files: Vec<NewFile>, allow_overwrite: bool) -> Result<Vec<MissingBlock>> {
        let mut paths = Vec::with_capacity(files.len());
        for f in &files {
            let path = normalize(&f.path)?;
            if path.is_empty() {
                return Err(VolumeError::Invalid(format!("'{}' is the volume's root, not a file path", f.path)));
            }
            if f.blocks.len() as u64 != block_count(f.size) {
                return Err(VolumeError::Invalid(format!(
                    "'{}' is {} bytes, which is {} blocks of 8 MiB, but {} blocks were named",
                    f.path,
                    f.size,
                    block_count(f.size),
                    f.blocks.len()
                )));
            }
            paths.push(path);
        }
        let mut missing = Vec::new();
        let mut seen = HashSet::new();
        for (fi, f) in files.iter().enumerate() {
            for (bi, hash) in f.blocks.iter().enumerate() {
                if !seen.insert(*hash) {
                    continue;
                }
                let logical = (f.size - bi as u64 * BLOCK_SIZE).min(BLOCK_SIZE);
                match self.blocks.len(hash).await.map_err(|e| VolumeError::io("cannot read the block store", e))? {
                    None => missing.push(MissingBlock { file_index: fi, block_index: bi, hash: *hash }),
                    Some(stored) if stored > logical => {
                        return Err(VolumeError::Invalid(format!("block {bi} of '{}' is longer than the file's size allows", f.path)))
                    }
                    Some(_) => {}
                }
            }
        }
        if !missing.is_empty() {
            return Ok(missing);
        }
        // Blocks found stored are marked used, so a sweep of unreferenced ones spares them.
        for hash in &seen {
            self.blocks.touch(hash).await.map_err(|e| VolumeError::io("cannot read the block store", e))?;
        }

        let _guard = self.lock(volume_id).await;
        self.store.volume_state(volume_id).await?;
        let mut changes = Vec::new();
        let mut new_dirs = HashSet::new();
        let mut new_files = HashSet::new();
        let mtime = now_secs();
        for (f, path) in files.into_iter().zip(paths) {
            if new_dirs.contains(&path) {
                return Err(VolumeError::AlreadyExists(format!("'/{path}' is a directory; a file cannot replace it")));
            }
            self.parent_dirs(volume_id, &path, &mut new_dirs, &new_files, &mut changes).await?;
            match self.store.volume_entry(volume_id, &path).await? {
                Some(e) if e.kind == EntryKind::Directory => {
                    return Err(VolumeError::AlreadyExists(format!("'/{path}' is a directory; a file cannot replace it")))
                }
                Some(_) if !allow_overwrite => {
                    return Err(VolumeError::AlreadyExists(format!("'/{path}' already exists; pass force=True (--force) to overwrite it")))
                }
                _ => {}
            }
            new_files.insert(path.clone());
            changes.push(VolumeChange::Put(VolumeEntry {
                path,
                kind: EntryKind::File,
                mode: f.mode.unwrap_or(0o644) & 0o7777,
                size: f.size,
                mtime,
                blocks: f.blocks,
                target: None,
            }));
        }
        self.store.volume_apply(volume_id, &changes).await?;
        Ok(Vec::new())
    }

    /// Adds the missing parent directories of `path` to `changes`; refuses a parent that is a file.
    async fn parent_dirs(
        &self,
        volume_id: &str,
        path: &str,
        new_dirs: &mut HashSet<String>,
        new_files: &HashSet<String>,
        changes: &mut Vec<VolumeChange>,
    ) -> Result<()> {
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if new_dirs.contains(&parent) {
                continue;
            }
            if new_files.contains(&parent) {
                return Err(VolumeError::Invalid(format!("'/{parent}' is a file, so '/{path}' cannot be created")));
            }
            match self.store.volume_entry(volume_id, &parent).await? {
                Some(e) if e.kind == EntryKind::Directory => {}
                Some(_) => return Err(VolumeError::Invalid(format!("'/{parent}' is a file, so '/{path}' cannot be created"))),
                None => changes.push(VolumeChange::Put(dir_entry(&parent))),
            }
            new_dirs.insert(parent.clone());
        }
        Ok(())
    }

    /// The file at `path` and the blocks covering `start..start+len` (`len` 0: to the end).
    pub async fn read_range(&self, volume_id: &str, path: &str, start: u64, len: u64) -> Result<FileRange> {
        let norm = normalize(path)?;
        let entry = self.store.volume_entry(volume_id, &norm).await?.ok_or_else(|| not_found(&norm))?;
        if entry.kind != EntryKind::File {
            return Err(VolumeError::Invalid(format!("'/{norm}' is a directory, not a file")));
        }
        let start = start.min(entry.size);
        let end = if len == 0 { entry.size } else { start.saturating_add(len).min(entry.size) };
        let mut pieces = Vec::new();
        let mut pos = start;
        while pos < end {
            let idx = pos / BLOCK_SIZE;
            let block_end = ((idx + 1) * BLOCK_SIZE).min(end);
            pieces.push((entry.blocks[idx as usize], pos - idx * BLOCK_SIZE, block_end - pos));
            pos = block_end;
        }
        Ok(FileRange { size: entry.size, start, len: end - start, pieces })
    }

    /// What listing `path` covers; a missing path is NotFound.
    pub async fn listing(&self, volume_id: &str, path: &str) -> Result<Listing> {
        let norm = normalize(path)?;
        self.store.volume_state(volume_id).await?;
        if norm.is_empty() {
            return Ok(Listing::Directory(norm));
        }
        match self.store.volume_entry(volume_id, &norm).await? {
            None => Err(not_found(&norm)),
            Some(e) if e.kind == EntryKind::Directory => Ok(Listing::Directory(norm)),
            Some(e) => Ok(Listing::Single(e)),
        }
    }

    /// One page of a directory listing: entries after `after`, in path order.
    pub async fn list_page(&self, volume_id: &str, dir: &str, recursive: bool, after: &str, limit: i64) -> Result<Vec<VolumeEntry>> {
        Ok(self.store.volume_list(volume_id, dir, recursive, after, limit).await?)
    }

    /// Removes the file or directory at `path` (a directory with contents only with `recursive`).
    pub async fn remove(&self, volume_id: &str, path: &str, recursive: bool) -> Result<()> {
        let norm = normalize(path)?;
        let _guard = self.lock(volume_id).await;
        self.store.volume_state(volume_id).await?;
        let is_dir = if norm.is_empty() {
            true
        } else {
            match self.store.volume_entry(volume_id, &norm).await? {
                None => return Err(not_found(&norm)),
                Some(e) => e.kind == EntryKind::Directory,
            }
        };
        if is_dir && !recursive && self.store.volume_has_children(volume_id, &norm).await? {
            return Err(VolumeError::Invalid(format!(
                "'/{norm}' is a non-empty directory; remove it with recursive=True (`modal volume rm -r`)"
            )));
        }
        self.store.volume_apply(volume_id, &[VolumeChange::Remove { path: norm, recursive }]).await?;
        Ok(())
    }

    /// Copies files (and with `recursive`, directories) within a volume, as `cp` does: into
    /// `dst` when it is a directory (or several sources are named), else to `dst`. Only the
    /// tree changes: copies share their blocks.
    pub async fn copy(&self, volume_id: &str, srcs: &[String], dst: &str, recursive: bool) -> Result<()> {
        if srcs.is_empty() {
            return Err(VolumeError::Invalid("name at least one source path to copy".into()));
        }
        let dst = normalize(dst)?;
        let _guard = self.lock(volume_id).await;
        self.store.volume_state(volume_id).await?;
        let dst_entry = if dst.is_empty() { Some(dir_entry("")) } else { self.store.volume_entry(volume_id, &dst).await? };
        let into_dir = match &dst_entry {
            Some(e) => e.kind == EntryKind::Directory,
            None if srcs.len() > 1 => {
                return Err(VolumeError::Invalid(format!("copying several paths needs a directory as the destination; '/{dst}' does not exist")))
            }
            None => false,
        };
        if srcs.len() > 1 && !into_dir {
            return Err(VolumeError::Invalid(format!("copying several paths needs a directory as the destination; '/{dst}' is a file")));
        }
        let mut changes = Vec::new();
        let (mut new_dirs, new_files) = (HashSet::new(), HashSet::new());
        for src in srcs {
            let src = normalize(src)?;
            if src.is_empty() {
                return Err(VolumeError::Invalid("the volume's root cannot be copied; copy the paths inside it".into()));
            }
            let entry = self.store.volume_entry(volume_id, &src).await?.ok_or_else(|| not_found(&src))?;
            let name = src.rsplit('/').next().unwrap_or(&src);
            let target = match (into_dir, dst.is_empty()) {
                (true, true) => name.to_string(),
                (true, false) => format!("{dst}/{name}"),
                (false, _) => dst.clone(),
            };
            if target == src {
                return Err(VolumeError::Invalid(format!("'/{src}' and '/{target}' are the same path")));
            }
            if let Some(existing) = self.store.volume_entry(volume_id, &target).await? {
                if existing.kind == EntryKind::Directory && entry.kind != EntryKind::Directory {
                    return Err(VolumeError::AlreadyExists(format!("'/{target}' is a directory; a file cannot replace it")));
                }
            }
            self.parent_dirs(volume_id, &target, &mut new_dirs, &new_files, &mut changes).await?;
            if entry.kind == EntryKind::Directory {
                if !recursive {
                    return Err(VolumeError::Invalid(format!("'/{src}' is a directory; copy it with recursive=True (`modal volume cp -r`)")));
                }
                if target.starts_with(&format!("{src}/")) {
                    return Err(VolumeError::Invalid(format!("cannot copy '/{src}' into itself ('/{target}')")));
                }
                changes.push(VolumeChange::Put(VolumeEntry { path: target.clone(), ..entry.clone() }));
                let mut after = String::new();
                loop {
                    let page = self.store.volume_list(volume_id, &src, true, &after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.path.clone();
                    for e in page {
                        let path = format!("{target}{}", &e.path[src.len()..]);
                        changes.push(VolumeChange::Put(VolumeEntry { path, ..e }));
                    }
                }
            } else {
                changes.push(VolumeChange::Put(VolumeEntry { path: target, mtime: now_secs(), ..entry }));
            }
        }
        self.store.volume_apply(volume_id, &changes).await?;
        Ok(())
    }
}
