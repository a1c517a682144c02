//! NVIDIA GPU discovery and pass-through by device nodes and driver libraries.
//!
//! A container gets whole GPUs: the control nodes, the chosen `/dev/nvidiaN` nodes, and the
//! host's user-space driver libraries read-only (they must match the kernel module, so they
//! are never baked into images). GPU memory and SM time are not limited by cgroups.

use std::path::{Path, PathBuf};

use crate::container::BindMount;
use crate::error::{Error, Result};

/// One GPU the host exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub device: PathBuf,
}

/// Lists the host's NVIDIA GPUs (`/dev/nvidia0`, `/dev/nvidia1`, ...). Empty on hosts
/// without the driver.
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

/// Directories where GPU hosts keep the driver's user-space libraries and tools.
const DRIVER_LIB_DIRS: &[&str] = &["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"];
const DRIVER_BIN_DIR: &str = "/usr/local/nvidia/bin";
const CONTROL_NODES: &[&str] = &["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"];

pub(crate) struct Passthrough {
    pub binds: Vec<BindMount>,
    pub env: Vec<(String, String)>,
}

/// The binds and environment that give a container the first `count` GPUs.
pub(crate) fn passthrough(count: u32) -> Result<Passthrough> {
    let gpus = detect_gpus();
    if gpus.len() < count as usize {
        return Err(Error::GpuUnavailable { requested: count, available: gpus.len() });
    }
    let chosen = &gpus[..count as usize];
    let mut binds: Vec<BindMount> = CONTROL_NODES
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| BindMount::read_write(*p, *p))
        .collect();
    let caps = Path::new("/dev/nvidia-caps");
    if caps.is_dir() {
        binds.push(BindMount::read_write(caps, "/dev/nvidia-caps"));
    }
    for g in chosen {
        binds.push(BindMount::read_write(&g.device, g.device.to_string_lossy().into_owned()));
    }
    let mut env = Vec::new();
    let libs: Vec<&str> = DRIVER_LIB_DIRS.iter().copied().filter(|d| Path::new(d).is_dir()).collect();
    for dir in &libs {
        binds.push(BindMount::read_only(*dir, *dir));
    }
    if !libs.is_empty() {
        env.push(("LD_LIBRARY_PATH".to_string(), libs.join(":")));
    }
    if Path::new(DRIVER_BIN_DIR).is_dir() {
        binds.push(BindMount::read_only(DRIVER_BIN_DIR, DRIVER_BIN_DIR));
    }
    let visible = chosen.iter().map(|g| g.index.to_string()).collect::<Vec<_>>().join(",");
    env.push(("NVIDIA_VISIBLE_DEVICES".into(), visible));
    // Inside the container the chosen GPUs are numbered from 0 by CUDA.
    env.push(("CUDA_VISIBLE_DEVICES".into(), (0..count).map(|i| i.to_string()).collect::<Vec<_>>().join(",")));
    Ok(Passthrough { binds, env })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbered_nodes_only() {
        let dir = std::env::temp_dir().join(format!("ferry-gpu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["nvidia1", "nvidia0", "nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let found: Vec<u32> = detect_in(&dir).iter().map(|g| g.index).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, vec![0, 1]);
    }
}
