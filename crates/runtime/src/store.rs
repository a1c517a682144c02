//! The on-disk image store: content-addressed layers, each a plain directory tree.
//!
//! ```text
//! <data_dir>/images/
//!   layers/<id>/fs/          the layer's files (a base root filesystem, or the overlay upper
//!                            directory a build produced, whiteouts included)
//!   layers/<id>/layer.json   parent, accumulated image config, how it was made
//!   tmp/                     builds and base preparations in progress (renamed into layers/)
//!   run/                     per-container scratch mount points
//!   empty/                   the lower layer of `FROM scratch`
//! ```
//!
//! Layers are immutable once renamed into `layers/`; a layer directory is complete exactly when
//! its `layer.json` exists, because the rename is the last step.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

/// The content address of a layer: hex SHA-256 of its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LayerId(String);

impl LayerId {
    pub(crate) fn from_hasher(h: Sha256) -> Self {
        LayerId(hex::encode(h.finalize()))
    }

    /// Parses a layer id as printed by `Display`.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| LayerId(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Image settings accumulated across layers (what `docker inspect` calls Config).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `ENV` values in the order first set; later layers replace values in place.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    /// Shell for shell-form `RUN`/`CMD`; `None` means `["/bin/sh", "-c"]`.
    pub shell: Option<Vec<String>>,
    /// Full Python version of the base (e.g. "3.11.2"), for the client's image metadata.
    pub python_version: Option<String>,
}

impl ImageConfig {
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn env_set(&mut self, key: &str, value: String) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.env.push((key.to_string(), value)),
        }
    }

    pub fn shell(&self) -> Vec<String> {
        self.shell.clone().unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// The argv a container runs when the caller gives none: ENTRYPOINT + CMD.
    pub fn default_command(&self) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.clone().unwrap_or_default());
        argv
    }
}

/// How a layer came to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerOrigin {
    /// A debootstrapped Debian root filesystem with Python.
    Base { suite: String, python_series: String },
    /// A build of Dockerfile commands on top of the parent.
    Build { commands: Vec<String> },
    /// What a container wrote on top of its image.
    Snapshot { container: String },
    /// A layer of a registry image (`digest` of the blob), or the image's config layer on top
    /// of them (`digest` of the manifest).
    Registry { reference: String, digest: String },
}

/// The metadata stored next to a layer's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: LayerId,
    pub parent: Option<LayerId>,
    pub config: ImageConfig,
    pub origin: LayerOrigin,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// The image store under a data directory.
///
/// ```no_run
/// # async fn demo() -> ferry_runtime::Result<()> {
/// let store = ferry_runtime::ImageStore::open("/var/lib/ferry")?;
/// for id in store.layers()? {
///     println!("{id}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store under `<data_dir>/images`.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self> {
        let root = data_dir.as_ref().join("images");
        for sub in ["layers", "tmp", "run", "empty"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).ctx(|| format!("creating image store directory {}", dir.display()))?;
        }
        let root = root.canonicalize().ctx(|| format!("resolving {}", root.display()))?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub(crate) fn empty_dir(&self) -> PathBuf {
        self.root.join("empty")
    }

    pub(crate) fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.layers_dir().join(id.as_str())
    }

    /// The layer's files (its overlay lower directory).
    pub fn layer_fs(&self, id: &LayerId) -> PathBuf {
        self.layer_dir(id).join("fs")
    }

    pub fn contains(&self, id: &LayerId) -> bool {
        self.layer_dir(id).join("layer.json").exists()
    }

    /// Reads a layer's metadata.
    pub fn layer(&self, id: &LayerId) -> Result<LayerRecord> {
        let path = self.layer_dir(id).join("layer.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::LayerNotFound(id.to_string())),
            Err(e) => return Err(Error::Io { context: format!("reading {}", path.display()), source: e }),
        };
        serde_json::from_slice(&text).map_err(|e| Error::CorruptStore { path, reason: e.to_string() })
    }

    /// The layer and its ancestors, topmost first (overlay lowerdir order).
    pub fn chain(&self, id: &LayerId) -> Result<Vec<LayerRecord>> {
        let mut chain = vec![self.layer(id)?];
        while let Some(parent) = chain.last().and_then(|r| r.parent.clone()) {
            if chain.len() > 500 {
                return Err(Error::CorruptStore { path: self.layer_dir(id), reason: "parent chain loops".into() });
            }
            chain.push(self.layer(&parent)?);
        }
        Ok(chain)
    }

    /// Every complete layer in the store.
    pub fn layers(&self) -> Result<Vec<LayerId>> {
        let dir = self.layers_dir();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            if let Some(id) = entry.file_name().to_str().and_then(LayerId::parse) {
                if self.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Deletes a layer that no other layer builds on. Containers already running on it keep
    /// their view (overlayfs holds its directories open).
    pub fn remove(&self, id: &LayerId) -> Result<()> {
        let record = self.layer(id)?;
        for other in self.layers()? {
            if self.layer(&other)?.parent.as_ref() == Some(&record.id) {
                return Err(Error::LayerInUse { layer: id.to_string(), child: other.to_string() });
            }
        }
        // Rename first so a half-deleted layer is never mistaken for a complete one.
        let trash = self.staging_dir("removed")?;
        std::fs::rename(self.layer_dir(id), trash.join("layer")).ctx(|| format!("removing layer {id}"))?;
        remove_tree(&trash);
        Ok(())
    }

    /// Records that a layer was used (a build cache hit, a container start), for `gc`'s
    /// least-recently-used order.
    pub fn touch(&self, id: &LayerId) {
        let path = self.layer_dir(id).join("layer.json");
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Every layer with its size on disk (hard-linked files counted once across the store) and
    /// its last use.
    pub fn usage(&self) -> Result<Vec<LayerUsage>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for id in self.layers()? {
            let record = self.layer(&id)?;
            let bytes = disk_usage(&self.layer_fs(&id), &mut seen);
            let last_used = std::fs::metadata(self.layer_dir(&id).join("layer.json"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(record.created_at);
            out.push(LayerUsage { record, bytes, last_used });
        }
        Ok(out)
    }

    /// Deletes least-recently-used layers that nothing builds on until the store fits in
    /// `budget_bytes`; base layers (`ferry images prepare`) are kept. Returns what was removed
    /// (all of it, with `dry_run`, is only reported).
    pub fn gc(&self, budget_bytes: u64, dry_run: bool) -> Result<Vec<LayerUsage>> {
        let mut layers = self.usage()?;
        let mut total: u64 = layers.iter().map(|l| l.bytes).sum();
        let mut removed = Vec::new();
        while total > budget_bytes {
            let parents: std::collections::HashSet<LayerId> = layers.iter().filter_map(|l| l.record.parent.clone()).collect();
            let victim = layers
                .iter()
                .enumerate()
                .filter(|(_, l)| !parents.contains(&l.record.id) && !matches!(l.record.origin, LayerOrigin::Base { .. }))
                .min_by_key(|(_, l)| l.last_used)
                .map(|(i, _)| i);
            let Some(i) = victim else { break };
            let layer = layers.remove(i);
            if !dry_run {
                self.remove(&layer.record.id)?;
            }
            total = total.saturating_sub(layer.bytes);
            removed.push(layer);
        }
        Ok(removed)
    }

    /// Moves a finished staging directory (holding `fs/`) into the store as `record.id`.
    /// If another build finished the same layer first, keeps theirs.
    pub(crate) fn commit(&self, staging: &Path, record: &LayerRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("layer records serialize");
        let meta = staging.join("layer.json");
        std::fs::write(&meta, json).ctx(|| format!("writing {}", meta.display()))?;
        let dest = self.layer_dir(&record.id);
        if self.contains(&record.id) {
            remove_tree(staging);
            return Ok(());
        }
        if dest.exists() {
            // A half-written directory from a crash: it has no layer.json, so it never counted.
            remove_tree(&dest);
        }
        match std::fs::rename(staging, &dest) {
            Ok(()) => Ok(()),
            Err(_) if self.contains(&record.id) => {
                remove_tree(staging);
                Ok(())
            }
            Err(e) => Err(Error::Io { context: format!("moving {} to {}", staging.display(), dest.display()), source: e }),
        }
    }

    /// Deletes scratch and staging directories left by Ferry processes that died.
    pub(crate) fn sweep_stale(&self) -> usize {
        let mut removed = 0;
        for dir in [self.run_dir(), self.tmp_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if !creator_alive(&entry.file_name().to_string_lossy()) {
                    remove_tree(&entry.path());
                    removed += 1;
                }
            }
        }
        removed
    }

    /// A fresh, unique directory under tmp/.
    pub(crate) fn staging_dir(&self, prefix: &str) -> Result<PathBuf> {
        let dir = self.tmp_dir().join(format!("{prefix}-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

/// A layer and what it costs, from [`ImageStore::usage`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerUsage {
    pub record: LayerRecord,
    /// Bytes on disk (allocated blocks), each hard-linked inode counted once.
    pub bytes: u64,
    /// Seconds since the Unix epoch of the last build cache hit or container start.
    pub last_used: u64,
}

fn disk_usage(dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The pid of the process that made a name with [`unique_suffix`], if it is still running
/// (as far as a pid can tell).
pub(crate) fn creator_alive(name: &str) -> bool {
    let parts: Vec<&str> = name.rsplitn(4, '-').collect();
    match parts.get(2).and_then(|p| p.parse::<i32>().ok()) {
        // SAFETY: signal 0 only checks for existence.
        Some(pid) => pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0,
        None => true,
    }
}

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Best-effort recursive delete (overlay work dirs contain mode-000 directories; root can
/// still remove them).
pub(crate) fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove directory");
        }
    }
}
