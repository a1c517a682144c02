//! Volumes inside containers.
//!
//! A container sees a volume as an overlay mounted on the host and bound into it:
//!
//! * the lower layer is a *snapshot* of one committed tree, `snapshots/<volume>/<version>/`,
//!   made of hard links to immutable *file objects* (`files/<key>`, the file's blocks joined
//!   once, shared by every snapshot, version and volume holding the same content). Making a
//!   snapshot copies no data, so a container sees a committed 1 GiB file at once;
//! * the upper layer, `tasks/<task>/<n>/<generation>/upper`, is private to the container.
//!   Its writes are invisible to others until it commits.
//!
//! `commit` walks the upper layer from the host (never following a link the container made),
//! stores new and changed files as blocks, turns whiteouts into removals and applies all of it
//! on top of the *latest* tree in one store transaction: two containers committing at once
//! each land, and for a file both wrote the later commit wins. Then the container's view moves
//! onto the new tree with a fresh upper layer (`ferry_runtime::replace_mount`). `reload` does
//! the same, so, as Modal documents, a reload also commits the container's own changes.
//! Read-only mounts bind a snapshot read-only and only ever move to a newer one.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_store::{EntryKind, VolumeChange, VolumeEntry};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::blocks::{block_hash, Hash, BLOCK_SIZE};
use crate::{normalize, now_secs, Result, VolumeError, Volumes};

/// How many blocks of a committed file are being stored at once.
const STORE_AHEAD: usize = 4;

/// A volume a task mounts (`Function.volume_mounts`).
#[derive(Clone, Debug)]
pub struct MountRequest {
    pub volume_id: String,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
    /// Mount only this directory of the volume.
    pub sub_path: Option<String>,
}

/// A host directory to bind into the task's container.
#[derive(Clone, Debug)]
pub struct HostBind {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// The volume views of running tasks.
#[derive(Default)]
pub(crate) struct Registry {
    tasks: Mutex<HashMap<String, TaskViews>>,
}

impl Registry {
    /// Volumes some running task has a view of.
    pub(crate) fn volumes_in_use(&self) -> HashSet<String> {
        self.tasks.lock().unwrap().values().flat_map(|t| t.views.iter().map(|v| v.volume_id.clone())).collect()
    }
}

#[derive(Default)]
struct TaskViews {
    /// Host pid of the container's init, once it runs.
    pid: Option<u32>,
    views: Vec<View>,
}

#[derive(Clone, Debug)]
struct View {
    volume_id: String,
    target: String,
    read_only: bool,
    /// The mounted directory of the volume ("" for all of it).
    prefix: String,
    /// `tasks/<task>/<n>`.
    dir: PathBuf,
    generation: u32,
    /// The snapshot in use (its version).
    version: i64,
}

impl View {
    fn gen_dir(&self, generation: u32) -> PathBuf {
        self.dir.join(generation.to_string())
    }
    fn upper(&self) -> PathBuf {
        self.gen_dir(self.generation).join("upper")
    }
}

fn io<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    let what = what.to_string();
    move |e| VolumeError::io(format!("{what} {}", path.display()), e)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths under the data dir have no NUL")
}

/// Mounts an overlay of `lower` under a fresh `upper` at `merged` (all created here), for a
/// container to write through: with user namespaces, over idmapped layers (see
/// `ferry_runtime::mount_shared_overlay`), so that the container's root writes files owned by
/// 0 on disk, which commits read as any other.
fn mount_overlay(lower: &Path, gen_dir: &Path) -> Result<PathBuf> {
    let (upper, work, merged) = (gen_dir.join("upper"), gen_dir.join("work"), gen_dir.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(io("cannot create", d))?;
    }
    ferry_runtime::mount_shared_overlay(lower, gen_dir, &merged, &gen_dir.join("views"), "redirect_dir=off,metacopy=off,index=off")
        .map_err(|e| VolumeError::io(format!("cannot mount the volume view at {}", merged.display()), e))?;
    Ok(merged)
}

/// Detaches a view's overlay on the host and deletes its layers. The lower snapshot stays.
fn remove_generation(gen_dir: &Path) {
    let merged = gen_dir.join("merged");
    unsafe {
        libc::umount2(cstr(&merged).as_ptr(), libc::MNT_DETACH);
    }
    ferry_runtime::unmount_shared_overlay(&gen_dir.join("views"));
    // Only plain directories are deleted: a merged dir still mounted is left alone.
    if std::fs::remove_dir(&merged).is_ok() || !merged.exists() {
        let _ = std::fs::remove_dir_all(gen_dir.join("upper"));
        let _ = std::fs::remove_dir_all(gen_dir.join("work"));
        let _ = std::fs::remove_dir(gen_dir);
    }
}

/// Whether `target`, a symlink at `path`, stays inside the volume.
fn link_stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth = path.matches('/').count() as i64; // components of the parent dir
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

impl Volumes {
    fn snapshot_dir(&self, volume_id: &str, version: i64) -> PathBuf {
        self.root().join("snapshots").join(volume_id).join(version.to_string())
    }

    /// The file object holding `entry`'s content, joined from its blocks on first use.
    fn file_object(&self, entry: &VolumeEntry) -> Result<PathBuf> {
        let mut key = Sha256::new();
        key.update(b"ferry-file\0");
        key.update(entry.mode.to_le_bytes());
        key.update(entry.size.to_le_bytes());
        for b in &entry.blocks {
            key.update(b);
        }
        let key = hex::encode(key.finalize());
        let path = self.root().join("files").join(&key[..2]).join(&key);
        if path.exists() {
            return Ok(path);
        }
        let shard = path.parent().expect("sharded");
        std::fs::create_dir_all(shard).map_err(io("cannot create", shard))?;
        let tmp = shard.join(format!("{key}.{}.tmp", ferry_store::new_id("mk")));
        let result = (|| -> Result<()> {
            let mut out = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
            for (i, h) in entry.blocks.iter().enumerate() {
                out.seek(std::io::SeekFrom::Start(i as u64 * BLOCK_SIZE)).map_err(io("cannot write", &tmp))?;
                match self.blocks().local_path(h) {
                    Some(src) => {
                        let mut src = std::fs::File::open(&src).map_err(io("cannot open block", &src))?;
                        // A file-to-file copy, done by the kernel where it can.
                        std::io::copy(&mut src, &mut out).map_err(io("cannot write", &tmp))?;
                    }
                    None => {
                        // Blocks in a bucket: streamed into the file (this runs on a blocking
                        // thread of the runtime).
                        let rt = tokio::runtime::Handle::current();
                        let blocks = self.blocks().clone();
                        rt.block_on(async {
                            let mut data = blocks.read(h, 0, BLOCK_SIZE).await.map_err(|e| VolumeError::io("cannot fetch a block", e))?;
                            while let Some(chunk) = data.next().await {
                                let chunk = chunk.map_err(|e| VolumeError::io("cannot fetch a block", e))?;
                                out.write_all(&chunk).map_err(io("cannot write", &tmp))?;
                            }
                            Ok::<(), VolumeError>(())
                        })?;
                    }
                }
            }
            // Trailing zeros of blocks are not stored: they become holes.
            out.set_len(entry.size).map_err(io("cannot write", &tmp))?;
            out.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o7777)).map_err(io("cannot write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("cannot store", &path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|_| path)
    }

    /// The snapshot of a volume's latest tree (made on first use); call with the volume locked.
    async fn latest_snapshot(&self, volume_id: &str) -> Result<(i64, PathBuf)> {
        let (_, version) = self.store().volume_state(volume_id).await?;
        let dir = self.snapshot_dir(volume_id, version);
        if dir.exists() {
            return Ok((version, dir));
        }
        let mut entries = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store().volume_list(volume_id, "", true, &after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.path.clone();
            entries.extend(page);
        }
        let parent = dir.parent().expect("under snapshots").to_path_buf();
        let tmp = parent.join(format!("{version}.{}.tmp", ferry_store::new_id("sn")));
        let this = self.clone();
        let tmp2 = tmp.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir_all(&tmp2).map_err(io("cannot create", &tmp2))?;
            for e in &entries {
                let p = tmp2.join(&e.path);
                match e.kind {
                    EntryKind::Directory => {
                        std::fs::create_dir_all(&p).map_err(io("cannot create", &p))?;
                        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777));
                    }
                    EntryKind::File => {
                        let obj = this.file_object(e)?;
                        std::fs::hard_link(&obj, &p).map_err(io("cannot link", &p))?;
                    }
                    EntryKind::Symlink => {
                        std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), &p).map_err(io("cannot link", &p))?;
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| VolumeError::Io(e.to_string()))?;
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &dir).map_err(io("cannot store", &dir))?;
        Ok((version, dir))
    }

    /// The lower layer of a view: the snapshot, or its `prefix` directory (empty if missing).
    fn lower(&self, snapshot: &Path, prefix: &str) -> Result<PathBuf> {
        if prefix.is_empty() {
            return Ok(snapshot.to_path_buf());
        }
        let sub = snapshot.join(prefix);
        if sub.is_dir() {
            return Ok(sub);
        }
        let empty = self.root().join("empty");
        std::fs::create_dir_all(&empty).map_err(io("cannot create", &empty))?;
        Ok(empty)
    }

    /// Makes the views a task's container needs; bind each returned directory at its target.
    pub async fn prepare_task(&self, task_id: &str, requests: &[MountRequest]) -> Result<Vec<HostBind>> {
        let mut views = Vec::new();
        let mut binds = Vec::new();
        let result: Result<()> = async {
            for (n, req) in requests.iter().enumerate() {
                let prefix = normalize(req.sub_path.as_deref().unwrap_or(""))?;
                if !req.target.starts_with('/') {
                    return Err(VolumeError::Invalid(format!("volume mount path '{}' must be absolute", req.target)));
                }
                let _guard = self.lock(&req.volume_id).await;
                let (version, snapshot) = self.latest_snapshot(&req.volume_id).await?;
                let lower = self.lower(&snapshot, &prefix)?;
                let view = View {
                    volume_id: req.volume_id.clone(),
                    target: req.target.clone(),
                    read_only: req.read_only,
                    prefix,
                    dir: self.root().join("tasks").join(task_id).join(n.to_string()),
                    generation: 0,
                    version,
                };
                let source = if req.read_only { lower } else { mount_overlay(&lower, &view.gen_dir(0))? };
                binds.push(HostBind { source, target: req.target.clone(), read_only: req.read_only });
                views.push(view);
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            for v in &views {
                remove_generation(&v.gen_dir(0));
            }
            let _ = std::fs::remove_dir_all(self.root().join("tasks").join(task_id));
            return Err(e);
        }
        if !views.is_empty() {
            self.mounts.tasks.lock().unwrap().insert(task_id.to_string(), TaskViews { pid: None, views });
        }
        Ok(binds)
    }

    /// Records the container of a task whose views were prepared.
    pub fn task_started(&self, task_id: &str, pid: u32) {
        if let Some(t) = self.mounts.tasks.lock().unwrap().get_mut(task_id) {
            t.pid = Some(pid);
        }
    }

    /// Records that a task's container exited: later commits ingest its writes without
    /// moving its (gone) views.
    pub fn task_exited(&self, task_id: &str) {
        if let Some(t) = self.mounts.tasks.lock().unwrap().get_mut(task_id) {
            t.pid = None;
        }
    }

    /// Forgets a task that ended, removing its views. Uncommitted writes go, as on Modal.
    pub async fn release_task(&self, task_id: &str) {
        let Some(t) = self.mounts.tasks.lock().unwrap().remove(task_id) else { return };
        let dir = self.root().join("tasks").join(task_id);
        let volumes: HashSet<String> = t.views.iter().map(|v| v.volume_id.clone()).collect();
        let views = t.views;
        let _ = tokio::task::spawn_blocking(move || {
            for v in &views {
                if !v.read_only {
                    remove_generation(&v.gen_dir(v.generation));
                }
                let _ = std::fs::remove_dir(&v.dir);
            }
            let _ = std::fs::remove_dir(&dir);
        })
        .await;
        for v in volumes {
            self.prune_snapshots(&v).await;
        }
    }

    /// Removes views left by a previous run (its containers are gone).
    pub fn sweep_stale_views(&self) {
        let tasks = self.root().join("tasks");
        let Ok(list) = std::fs::read_dir(&tasks) else { return };
        for task in list.flatten() {
            for view in std::fs::read_dir(task.path()).into_iter().flatten().flatten() {
                for gen in std::fs::read_dir(view.path()).into_iter().flatten().flatten() {
                    remove_generation(&gen.path());
                }
                let _ = std::fs::remove_dir(view.path());
            }
            let _ = std::fs::remove_dir(task.path());
        }
    }

    /// Deletes snapshots of a volume that no view uses, except the latest.
    async fn prune_snapshots(&self, volume_id: &str) {
        let _guard = self.lock(volume_id).await;
        let Ok((_, latest)) = self.store().volume_state(volume_id).await else { return };
        let used: HashSet<i64> = self
            .mounts
            .tasks
            .lock()
            .unwrap()
            .values()
            .flat_map(|t| t.views.iter().filter(|v| v.volume_id == volume_id).map(|v| v.version))
            .collect();
        let dir = self.root().join("snapshots").join(volume_id);
        let _ = tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.parse::<i64>().is_ok_and(|v| v != latest && !used.contains(&v)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        })
        .await;
    }

    /// A task's views of one volume, and its container's pid.
    fn views_of(&self, task_id: &str, volume_id: &str) -> (Option<u32>, Vec<(usize, View)>) {
        let tasks = self.mounts.tasks.lock().unwrap();
        match tasks.get(task_id) {
            None => (None, Vec::new()),
            Some(t) => (t.pid, t.views.iter().cloned().enumerate().filter(|(_, v)| v.volume_id == volume_id).collect()),
        }
    }

    /// `VolumeCommit` from a task: commits its writes and moves its views onto the result.
    /// Returns whether the client may skip its reload (always: the views already moved).
    pub async fn commit_task(&self, task_id: &str, volume_id: &str) -> Result<bool> {
        match self.sync_task(task_id, volume_id).await {
            // Committed; the view stays where it was (with the committed writes on top).
            Err(VolumeError::Conflict(_)) => Ok(true),
            r => r.map(|_| true),
        }
    }

    /// `VolumeReload` from a task: like a commit (its own writes are committed too), then the
    /// views show the latest tree. Fails, committing but not moving, while files are open.
    pub async fn reload_task(&self, task_id: &str, volume_id: &str) -> Result<()> {
        self.sync_task(task_id, volume_id).await
    }

    async fn sync_task(&self, task_id: &str, volume_id: &str) -> Result<()> {
        let (pid, views) = self.views_of(task_id, volume_id);
        if views.is_empty() {
            return Ok(());
        }
        let _guard = self.lock(volume_id).await;
        let started = std::time::Instant::now();
        let mut changes = Vec::new();
        for (_, v) in views.iter().filter(|(_, v)| !v.read_only) {
            changes.extend(self.ingest(v).await?);
        }
        let ingested = started.elapsed();
        if !changes.is_empty() {
            self.store().volume_apply(volume_id, &changes).await?;
        }
        let (version, snapshot) = self.latest_snapshot(volume_id).await?;
        tracing::info!(
            task = task_id,
            volume = volume_id,
            changes = changes.len(),
            version,
            "committed a container's writes (ingest {:.0?}, apply and snapshot {:.0?})",
            ingested,
            started.elapsed() - ingested
        );
        let mut busy = None;
        for (idx, mut v) in views {
            if v.version == version && changes.is_empty() {
                continue;
            }
            let Some(pid) = pid else { continue };
            let lower = self.lower(&snapshot, &v.prefix)?;
            let old = v.gen_dir(v.generation);
            let next = v.generation + 1;
            let source = if v.read_only { lower } else { mount_overlay(&lower, &v.gen_dir(next))? };
            let (target, ro) = (v.target.clone(), v.read_only);
            let src2 = source.clone();
            let swapped = tokio::task::spawn_blocking(move || ferry_runtime::replace_mount(pid, &src2, &target, ro))
                .await
                .map_err(|e| VolumeError::Io(e.to_string()))?;
            match swapped {
                Ok(()) => {
                    if !v.read_only {
                        let _ = tokio::task::spawn_blocking(move || remove_generation(&old)).await;
                        v.generation = next;
                    }
                    v.version = version;
                    if let Some(t) = self.mounts.tasks.lock().unwrap().get_mut(task_id) {
                        t.views[idx] = v;
                    }
                }
                Err(e) => {
                    if !v.read_only {
                        let dir = v.gen_dir(next);
                        let _ = tokio::task::spawn_blocking(move || remove_generation(&dir)).await;
                    }
                    busy = Some(e);
                }
            }
        }
        drop(_guard);
        self.prune_snapshots(volume_id).await;
        match busy {
            None => Ok(()),
            Some(ferry_runtime::ReplaceMountError::Busy(target)) => Err(VolumeError::Conflict(format!(
                "cannot reload the volume at {target}: there are open files preventing the operation \
                 (close files and leave directories under it; changes were committed)"
            ))),
            Some(e) => Err(VolumeError::Io(e.to_string())),
        }
    }

    /// The changes a view's upper layer holds, with new contents stored as blocks.
    async fn ingest(&self, view: &View) -> Result<Vec<VolumeChange>> {
        let upper = view.upper();
        let prefix = view.prefix.clone();
        let this = self.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let fd = unsafe { libc::open(cstr(&upper).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(VolumeError::io(format!("cannot read {}", upper.display()), std::io::Error::last_os_error()));
            }
            let dir = Fd(fd);
            let mut changes = Vec::new();
            this.walk(&handle, dir.0, &prefix, &mut changes)?;
            Ok(changes)
        })
        .await
        .map_err(|e| VolumeError::Io(e.to_string()))?
    }

    /// Walks one directory of an upper layer through descriptors opened without following
    /// links, so nothing the container made can point the server elsewhere.
    fn walk(&self, rt: &tokio::runtime::Handle, dirfd: RawFd, rel: &str, changes: &mut Vec<VolumeChange>) -> Result<()> {
        let names = list_dir(dirfd)?;
        for name in names {
            let path = if rel.is_empty() { name.to_string_lossy().into_owned() } else { format!("{rel}/{}", name.to_string_lossy()) };
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
                continue; // gone meanwhile
            }
            let fmt = st.st_mode & libc::S_IFMT;
            let mode = st.st_mode & 0o7777;
            let mtime = st.st_mtime;
            if fmt == libc::S_IFCHR && st.st_rdev == 0 {
                changes.push(VolumeChange::Remove { path, recursive: true });
            } else if fmt == libc::S_IFDIR {
                let fd = unsafe { libc::openat(dirfd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
                if fd < 0 {
                    continue;
                }
                let sub = Fd(fd);
                let mut buf = [0u8; 4];
                let n = unsafe { libc::fgetxattr(sub.0, c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
                if n == 1 && buf[0] == b'y' {
                    changes.push(VolumeChange::Remove { path: path.clone(), recursive: true });
                }
                changes.push(VolumeChange::Put(VolumeEntry {
                    path: path.clone(),
                    kind: EntryKind::Directory,
                    mode,
                    size: 0,
                    mtime,
                    blocks: Vec::new(),
                    target: None,
                }));
                self.walk(rt, sub.0, &path, changes)?;
            } else if fmt == libc::S_IFLNK {
                let mut buf = vec![0u8; 4096];
                let n = unsafe { libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    continue;
                }
                let target = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
                if !link_stays_inside(&path, &target) {
                    return Err(VolumeError::Invalid(format!(
                        "symlink '/{path}' points outside the volume ('{target}'); the commit is refused: \
                         make it relative and inside the volume, or remove it"
                    )));
                }
                changes.push(VolumeChange::Remove { path: path.clone(), recursive: true });
                changes.push(VolumeChange::Put(VolumeEntry {
                    path,
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    size: target.len() as u64,
                    mtime,
                    blocks: Vec::new(),
                    target: Some(target),
                }));
            } else if fmt == libc::S_IFREG {
                let fd = unsafe { libc::openat(dirfd, name.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
                if fd < 0 {
                    continue;
                }
                let file = unsafe { std::fs::File::from_raw_fd(fd) };
                let (size, blocks) = self.store_file(rt, file, mode)?;
                changes.push(VolumeChange::Remove { path: path.clone(), recursive: true });
                changes.push(VolumeChange::Put(VolumeEntry { path, kind: EntryKind::File, mode, size, mtime, blocks, target: None }));
            }
            // FIFOs, sockets and devices are not volume contents.
        }
        Ok(())
    }

    /// Stores a file's content as blocks (durable when this returns) and as its file object,
    /// so the next snapshot links it instead of joining blocks.
    fn store_file(&self, rt: &tokio::runtime::Handle, mut file: std::fs::File, mode: u32) -> Result<(u64, Vec<Hash>)> {
        let objects = self.root().join("files");
        std::fs::create_dir_all(&objects).map_err(io("cannot create", &objects))?;
        let tmp = objects.join(format!("{}.tmp", ferry_store::new_id("in")));
        let result = (|| -> Result<(u64, Vec<Hash>)> {
            let mut out = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
            let mut buf = vec![0u8; BLOCK_SIZE as usize];
            let (mut size, mut blocks) = (0u64, Vec::new());
            let mut inflight = std::collections::VecDeque::new();
            loop {
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).map_err(|e| VolumeError::io("cannot read a file to commit", e))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                let (hash, end) = block_hash(&buf[..filled]);
                // Blocks are stored a few at a time, so their fsyncs overlap.
                if inflight.len() >= STORE_AHEAD {
                    let first: tokio::task::JoinHandle<Result<()>> = inflight.pop_front().expect("not empty");
                    rt.block_on(first).map_err(|e| VolumeError::Io(e.to_string()))??;
                }
                let chunk = bytes::Bytes::copy_from_slice(&buf[..end]);
                let store = self.blocks().clone();
                inflight.push_back(rt.spawn(async move {
                    if store.len(&hash).await.map_err(|e| VolumeError::io("cannot read the block store", e))?.is_none() {
                        let body = futures::stream::iter([Ok(chunk)]).boxed();
                        store.put(&hash, body).await.map_err(|e| match e {
                            crate::BlockError::DiskFull(m) => VolumeError::DiskFull(format!("{m}; the volume is unchanged")),
                            e => VolumeError::Io(e.to_string()),
                        })?;
                    }
                    Ok(())
                }));
                out.write_all(&buf[..filled]).map_err(io("cannot write", &tmp))?;
                blocks.push(hash);
                size += filled as u64;
                if filled < buf.len() {
                    break;
                }
            }
            for pending in inflight {
                rt.block_on(pending).map_err(|e| VolumeError::Io(e.to_string()))??;
            }
            out.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io("cannot write", &tmp))?;
            Ok((size, blocks))
        })();
        let (size, blocks) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let entry = VolumeEntry { path: String::new(), kind: EntryKind::File, mode, size, mtime: now_secs(), blocks, target: None };
        // Put the copy where `file_object` will look for it.
        let key_path = {
            let mut key = Sha256::new();
            key.update(b"ferry-file\0");
            key.update(entry.mode.to_le_bytes());
            key.update(entry.size.to_le_bytes());
            for b in &entry.blocks {
                key.update(b);
            }
            let key = hex::encode(key.finalize());
            objects.join(&key[..2]).join(key)
        };
        if key_path.exists() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            let shard = key_path.parent().expect("sharded");
            std::fs::create_dir_all(shard).map_err(io("cannot create", shard))?;
            std::fs::rename(&tmp, &key_path).map_err(io("cannot store", &key_path))?;
        }
        Ok((entry.size, entry.blocks))
    }
}

/// An owned descriptor closed on drop.
struct Fd(RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        unsafe {
            libc::close(self.0);
        }
    }
}

/// The names in a directory given by descriptor (without `.` and `..`).
fn list_dir(dirfd: RawFd) -> Result<Vec<CString>> {
    let dup = unsafe { libc::fcntl(dirfd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(VolumeError::io("cannot read a directory to commit", std::io::Error::last_os_error()));
    }
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        unsafe { libc::close(dup) };
        return Err(VolumeError::io("cannot read a directory to commit", std::io::Error::last_os_error()));
    }
    unsafe { libc::rewinddir(d) };
    let mut names = Vec::new();
    loop {
        let ent = unsafe { libc::readdir(d) };
        if ent.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    unsafe { libc::closedir(d) };
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_inside() {
        assert!(link_stays_inside("a/link", "b"));
        assert!(link_stays_inside("a/link", "../b"));
        assert!(!link_stays_inside("a/link", "../../b"));
        assert!(!link_stays_inside("link", "/etc/passwd"));
        assert!(!link_stays_inside("link", ".."));
    }
}
