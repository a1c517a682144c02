//! Per-container cgroups, written directly to cgroupfs (v1 or v2).
//!
//! Hosts in hybrid mode (v1 controllers plus a controller-less v2 at
//! /sys/fs/cgroup/unified) use the v1 controllers: that is where memory and cpu live.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";
/// All of Ferry's containers live under this group, so an operator can find them.
const GROUP: &str = "ferry";
const CPU_PERIOD_US: u64 = 100_000;

/// Resource limits of one container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in MiB (swap included, so the limit cannot be dodged by swapping).
    pub memory_mib: Option<u64>,
    /// CPU limit in cores (e.g. 0.5, 2.0), enforced as a CFS quota.
    pub cpu_cores: Option<f64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// Size of the writable layer in MiB (Modal's `ephemeral_disk`): a layer on disk is
    /// watched and the container killed past it; a tmpfs layer is capped at it.
    pub disk_mib: Option<u64>,
}

#[derive(Debug)]
enum Layout {
    V1 { memory: PathBuf, cpu: PathBuf, pids: Option<PathBuf> },
    V2 { root: PathBuf },
}

fn layout() -> Layout {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        return Layout::V2 { root: root.to_path_buf() };
    }
    let cpu = ["cpu", "cpu,cpuacct"].iter().map(|d| root.join(d)).find(|p| p.join("cpu.cfs_quota_us").exists());
    Layout::V1 {
        memory: root.join("memory"),
        cpu: cpu.unwrap_or_else(|| root.join("cpu")),
        pids: Some(root.join("pids")).filter(|p| p.exists()),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Cgroup { path: path.to_path_buf(), source })
}

fn mkdir(path: &Path) -> Result<()> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(source) => Err(Error::Cgroup { path: path.to_path_buf(), source }),
    }
}

/// Removes container groups for which `is_stale(name)` holds; a group still holding
/// processes cannot be removed and is kept. Returns how many were removed.
pub(crate) fn sweep(is_stale: impl Fn(&str) -> bool) -> usize {
    let parents: Vec<PathBuf> = match layout() {
        Layout::V1 { memory, cpu, pids } => {
            let mut v = vec![memory.join(GROUP), cpu.join(GROUP)];
            v.extend(pids.map(|p| p.join(GROUP)));
            v
        }
        Layout::V2 { root } => vec![root.join(GROUP)],
    };
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && is_stale(&name) && std::fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// The cgroup(s) of one container: one directory per v1 controller, or one v2 directory.
#[derive(Debug)]
pub(crate) struct ContainerCgroup {
    dirs: Vec<PathBuf>,
    memory_dir: PathBuf,
    v2: bool,
}

impl ContainerCgroup {
    /// Creates the group and writes the limits. A container with no limits still gets a
    /// memory group so that OOM kills can be reported.
    pub(crate) fn create(name: &str, limits: &Limits) -> Result<Self> {
        match layout() {
            Layout::V1 { memory, cpu, pids } => {
                let mem = memory.join(GROUP).join(name);
                mkdir(&mem)?;
                let mut dirs = vec![mem.clone()];
                if let Some(mib) = limits.memory_mib {
                    let bytes = (mib * 1024 * 1024).to_string();
                    write(&mem.join("memory.limit_in_bytes"), &bytes)?;
                    let memsw = mem.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes)?;
                    }
                }
                if let Some(cores) = limits.cpu_cores {
                    let dir = cpu.join(GROUP).join(name);
                    mkdir(&dir)?;
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota(cores).to_string())?;
                    dirs.push(dir);
                }
                if let (Some(max), Some(pids)) = (limits.pids, pids) {
                    let dir = pids.join(GROUP).join(name);
                    mkdir(&dir)?;
                    write(&dir.join("pids.max"), &max.to_string())?;
                    dirs.push(dir);
                }
                Ok(Self { memory_dir: mem, dirs, v2: false })
            }
            Layout::V2 { root } => {
                let parent = root.join(GROUP);
                mkdir(&parent)?;
                // Controllers must be delegated top-down before a child group can use them.
                for dir in [&root, &parent] {
                    let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
                }
                let dir = parent.join(name);
                mkdir(&dir)?;
                if let Some(mib) = limits.memory_mib {
                    write(&dir.join("memory.max"), &(mib * 1024 * 1024).to_string())?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(cores) = limits.cpu_cores {
                    write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", quota(cores)))?;
                }
                if let Some(max) = limits.pids {
                    write(&dir.join("pids.max"), &max.to_string())?;
                }
                Ok(Self { memory_dir: dir.clone(), dirs: vec![dir], v2: true })
            }
        }
    }

    /// The `cgroup.procs` files the container's init writes itself into.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel's OOM killer killed anything in this group.
    pub(crate) fn oom_killed(&self) -> bool {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        std::fs::read_to_string(self.memory_dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()))
            })
            .is_some_and(|n| n > 0)
    }

    /// Peak memory use in bytes, where the kernel reports it.
    pub(crate) fn peak_memory_bytes(&self) -> Option<u64> {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        std::fs::read_to_string(self.memory_dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Blocking variant of [`Self::remove`] for `Drop`, where there is no runtime to await on.
    pub(crate) fn remove_now(&self) {
        for dir in &self.dirs {
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
    }

    /// Removes the group; retries briefly while the last processes finish exiting.
    pub(crate) async fn remove(&self) {
        for dir in &self.dirs {
            for attempt in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => {
                        tracing::warn!(dir = %dir.display(), error = %e, "could not remove container cgroup")
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        }
    }
}

fn quota(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// The memory limit of a container that asked for none: half the host's memory, so that no
/// one container can push the host (and Ferry's server) into its OOM killer.
pub(crate) fn default_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some((kib / 1024 / 2).max(256))
}

/// The ephemeral disk of a container that asked for none: a quarter of the space free on the
/// image store's file system (at most 64 GiB), so one container cannot fill the data dir.
pub(crate) fn default_disk_mib(store_root: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(store_root.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let free_mib = st.f_bavail as u64 * st.f_frsize as u64 / (1024 * 1024);
    Some((free_mib / 4).clamp(1024, 64 * 1024))
}
