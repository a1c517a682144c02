//! NVIDIA GPU pass-through by device nodes and driver libraries.
//!
//! A container gets whole GPUs, chosen by the caller (Ferry's GPU pool): the control nodes,
//! the chosen `/dev/nvidiaN` nodes, and the host's user-space driver libraries and
//! `nvidia-smi` read-only (they must match the kernel module, so they are never baked into
//! images). GPU memory and SM time are not limited by cgroups.

use std::path::{Path, PathBuf};

use crate::container::BindMount;
use crate::error::{Error, Result};

/// One GPU the host exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub device: PathBuf,
}

/// One card given to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// The `N` of `/dev/nvidiaN`.
    pub minor: u32,
    /// `GPU-…` when known: `CUDA_VISIBLE_DEVICES` then names the card itself, which holds
    /// whether or not the driver also shows the container the cards it was not given.
    pub uuid: Option<String>,
}

/// Lists the host's NVIDIA GPU device nodes (`/dev/nvidia0`, `/dev/nvidia1`, ...). Empty on
/// hosts without the driver.
pub fn detect_gpus() -> Vec<Gpu> {
    detect_in(Path::new("/dev"))
}

fn detect_in(dev: &Path) -> Vec<Gpu> {
    let mut gpus: Vec<Gpu> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = name.strip_prefix("nvidia")?.parse().ok()?;
            Some(Gpu { index, device: e.path() })
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    gpus
}

/// Where images expect the driver's libraries and tools (`nvidia/cuda` images put these on
/// `LD_LIBRARY_PATH` and `PATH`); GPU hosts set up by the NVIDIA container tooling keep them
/// there too.
pub const DRIVER_LIB_DIR: &str = "/usr/local/nvidia/lib64";
const HOST_DRIVER_LIB_DIRS: &[&str] = &["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"];
const DRIVER_BIN_DIR: &str = "/usr/local/nvidia/bin";
/// Where distribution driver packages install the libraries instead.
const SYSTEM_LIB_DIRS: &[&str] = &["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"];
/// The compute and utility libraries of the driver (what `NVIDIA_DRIVER_CAPABILITIES=
/// compute,utility` selects).
const DRIVER_LIBS: &[&str] = &[
    "libcuda.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libcudadebugger.so",
    "libnvidia-allocator.so",
    "libnvidia-cfg.so",
];
const CONTROL_NODES: &[&str] = &["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"];

pub(crate) struct Passthrough {
    pub binds: Vec<BindMount>,
    pub env: Vec<(String, String)>,
    /// Appended to the image's `LD_LIBRARY_PATH` (never replacing it).
    pub library_dirs: Vec<String>,
}

/// The binds and environment that give a container `devices`.
pub(crate) fn passthrough(devices: &[GpuDevice]) -> Result<Passthrough> {
    passthrough_in(Path::new("/"), devices)
}

fn passthrough_in(host_root: &Path, devices: &[GpuDevice]) -> Result<Passthrough> {
    let host = |p: &str| host_root.join(p.trim_start_matches('/'));
    let missing = devices.iter().filter(|d| !host(&format!("/dev/nvidia{}", d.minor)).exists()).count();
    if missing > 0 {
        return Err(Error::GpuUnavailable { requested: devices.len() as u32, available: detect_in(&host("/dev")).len() });
    }
    let mut binds: Vec<BindMount> = CONTROL_NODES.iter().filter(|p| host(p).exists()).map(|p| BindMount::read_write(host(p), *p)).collect();
    if host("/dev/nvidia-caps").is_dir() {
        binds.push(BindMount::read_write(host("/dev/nvidia-caps"), "/dev/nvidia-caps"));
    }
    for d in devices {
        let node = format!("/dev/nvidia{}", d.minor);
        binds.push(BindMount::read_write(host(&node), node));
    }

    // Driver libraries: the host's /usr/local/nvidia directories as they are, else each
    // driver library (and its links) from the system directories into DRIVER_LIB_DIR.
    let mut library_dirs = Vec::new();
    for dir in HOST_DRIVER_LIB_DIRS.iter().filter(|d| host(d).is_dir()) {
        binds.push(BindMount::read_only(host(dir), *dir));
        library_dirs.push(dir.to_string());
    }
    if library_dirs.is_empty() {
        let mut seen = std::collections::HashSet::new();
        for dir in SYSTEM_LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(host(dir)) else { continue };
            let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
            names.sort();
            for name in names.into_iter().filter(|n| DRIVER_LIBS.iter().any(|l| n.starts_with(l))) {
                let Ok(real) = std::fs::canonicalize(host(dir).join(&name)) else { continue };
                if real.is_file() && seen.insert(name.clone()) {
                    binds.push(BindMount::read_only(real, format!("{DRIVER_LIB_DIR}/{name}")));
                }
            }
        }
        if !seen.is_empty() {
            library_dirs.push(DRIVER_LIB_DIR.to_string());
        }
    }
    // nvidia-smi, on the default PATH of every image.
    if host(DRIVER_BIN_DIR).is_dir() {
        binds.push(BindMount::read_only(host(DRIVER_BIN_DIR), DRIVER_BIN_DIR));
    }
    if let Some(smi) = [format!("{DRIVER_BIN_DIR}/nvidia-smi"), "/usr/bin/nvidia-smi".into()].iter().map(|p| host(p)).find(|p| p.is_file()) {
        if let Ok(real) = std::fs::canonicalize(smi) {
            binds.push(BindMount::read_only(real, "/usr/bin/nvidia-smi"));
        }
    }
    if host("/run/nvidia-persistenced/socket").exists() {
        binds.push(BindMount::read_write(host("/run/nvidia-persistenced/socket"), "/run/nvidia-persistenced/socket"));
    }

    let join = |items: Vec<String>| items.join(",");
    let visible = join(devices.iter().map(|d| d.uuid.clone().unwrap_or_else(|| d.minor.to_string())).collect());
    let cuda = if devices.iter().all(|d| d.uuid.is_some()) {
        visible.clone()
    } else {
        // Without UUIDs: the container sees only its own nodes, which CUDA numbers from 0.
        join((0..devices.len()).map(|i| i.to_string()).collect())
    };
    let env = vec![
        ("NVIDIA_VISIBLE_DEVICES".to_string(), visible),
        ("CUDA_VISIBLE_DEVICES".to_string(), cuda),
        ("NVIDIA_DRIVER_CAPABILITIES".to_string(), "compute,utility".to_string()),
    ];
    Ok(Passthrough { binds, env, library_dirs })
}

/// `existing` with `dirs` appended, each once.
pub(crate) fn append_paths(existing: Option<&str>, dirs: &[String]) -> String {
    let mut parts: Vec<String> = existing.unwrap_or_default().split(':').filter(|p| !p.is_empty()).map(str::to_string).collect();
    for d in dirs {
        if !parts.contains(d) {
            parts.push(d.clone());
        }
    }
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-gpu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn finds_numbered_nodes_only() {
        let dir = tempdir("nodes");
        for name in ["nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let found: Vec<u32> = detect_in(&dir).iter().map(|g| g.index).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, vec![0, 1]);
    }

    /// A made-up host tree (a fake, not a GPU): which binds and variables a container gets.
    #[test]
    fn fake_host_tree_gives_the_chosen_nodes_and_the_driver_files() {
        let root = tempdir("host");
        let mk = |p: &str| {
            let p = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        };
        for p in ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/usr/bin/nvidia-smi"] {
            mk(p);
        }
        mk("/usr/lib/x86_64-linux-gnu/libcuda.so.580.1");
        mk("/usr/lib/x86_64-linux-gnu/libc.so.6");
        std::os::unix::fs::symlink("libcuda.so.580.1", root.join("usr/lib/x86_64-linux-gnu/libcuda.so.1")).unwrap();
        let plan = passthrough_in(&root, &[GpuDevice { minor: 1, uuid: Some("GPU-b".into()) }]).unwrap();
        let targets: Vec<&str> = plan.binds.iter().map(|b| b.target.as_str()).collect();
        assert!(targets.contains(&"/dev/nvidia1") && !targets.contains(&"/dev/nvidia0"), "{targets:?}");
        assert!(targets.contains(&"/dev/nvidiactl") && targets.contains(&"/dev/nvidia-uvm"), "{targets:?}");
        assert!(targets.contains(&"/usr/local/nvidia/lib64/libcuda.so.1") && targets.contains(&"/usr/local/nvidia/lib64/libcuda.so.580.1"), "{targets:?}");
        assert!(!targets.iter().any(|t| t.ends_with("libc.so.6")), "{targets:?}");
        assert!(targets.contains(&"/usr/bin/nvidia-smi"));
        assert!(plan.binds.iter().filter(|b| b.target.contains("lib64")).all(|b| b.readonly));
        assert_eq!(plan.library_dirs, vec!["/usr/local/nvidia/lib64".to_string()]);
        assert!(plan.env.contains(&("CUDA_VISIBLE_DEVICES".into(), "GPU-b".into())));
        // A node the host does not have is refused.
        assert!(passthrough_in(&root, &[GpuDevice { minor: 7, uuid: None }]).is_err());
        let plan = passthrough_in(&root, &[GpuDevice { minor: 0, uuid: None }, GpuDevice { minor: 1, uuid: None }]).unwrap();
        assert!(plan.env.contains(&("CUDA_VISIBLE_DEVICES".into(), "0,1".into())));
        assert!(plan.env.contains(&("NVIDIA_VISIBLE_DEVICES".into(), "0,1".into())));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn library_path_is_extended_not_replaced() {
        let dirs = vec!["/usr/local/nvidia/lib64".to_string()];
        assert_eq!(append_paths(Some("/opt/conda/lib"), &dirs), "/opt/conda/lib:/usr/local/nvidia/lib64");
        assert_eq!(append_paths(Some("/usr/local/nvidia/lib64:/x"), &dirs), "/usr/local/nvidia/lib64:/x");
        assert_eq!(append_paths(None, &dirs), "/usr/local/nvidia/lib64");
    }
}
