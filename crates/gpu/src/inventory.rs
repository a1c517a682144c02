//! The host's NVIDIA cards: through NVML when the driver's `libnvidia-ml.so.1` loads, else
//! from the `/dev/nvidiaN` nodes (models unknown), and a fake for tests.

use std::path::Path;

use crate::names::GpuAliases;

/// One physical card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuCard {
    /// NVML's index (the order `nvidia-smi` lists).
    pub index: u32,
    /// The `N` of its `/dev/nvidiaN` node (not always the index).
    pub minor: u32,
    /// `GPU-…`, as `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` accept it.
    pub uuid: Option<String>,
    /// NVML's name, e.g. `NVIDIA H200`; None when found by its device node only.
    pub name: Option<String>,
    pub memory_bytes: Option<u64>,
    /// `0000:00:1E.0`, where NVML reports it.
    pub pci_bus_id: Option<String>,
    /// The GPU type requests use for it (Modal's name or the operator's alias).
    pub label: Option<String>,
    /// MIG instances, when the card is in MIG mode. Listed only: Ferry leases whole cards.
    pub mig: Vec<MigInstance>,
}

impl GpuCard {
    /// `NVIDIA H200 (H200, 141 GiB)`.
    pub fn describe(&self) -> String {
        let name = self.name.clone().unwrap_or_else(|| format!("/dev/nvidia{} (model unknown without NVML)", self.minor));
        let mut extra = Vec::new();
        if let Some(l) = self.label.as_ref().filter(|l| Some(*l) != self.name.as_ref()) {
            extra.push(l.clone());
        }
        if let Some(m) = self.memory_bytes {
            extra.push(format!("{} GiB", (m + (1 << 29)) >> 30));
        }
        if !self.mig.is_empty() {
            extra.push(format!("{} MIG instances", self.mig.len()));
        }
        if extra.is_empty() {
            name
        } else {
            format!("{name} ({})", extra.join(", "))
        }
    }
}

/// A MIG slice of a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigInstance {
    pub index: u32,
    pub uuid: Option<String>,
    pub memory_bytes: Option<u64>,
}

/// Where an inventory came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventorySource {
    Nvml { driver_version: String },
    /// NVML did not load; the cards are the `/dev/nvidiaN` nodes, their models unknown.
    DeviceNodes,
    /// Made up by a test ([`FakeInventory`]).
    Fake,
    /// Another host's cards as it reported them by type ([`Inventory::reported`]).
    Reported,
    /// Neither NVML nor device nodes: a CPU-only host.
    None,
}

/// The host's cards, in NVML index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub cards: Vec<GpuCard>,
    pub source: InventorySource,
}

/// Where the driver's NVML library may be when the loader does not know it.
const NVML_LIBRARIES: &[&str] = &["libnvidia-ml.so.1", "/usr/local/nvidia/lib64/libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "libnvidia-ml.so"];

impl Inventory {
    /// A host without GPUs.
    pub fn none() -> Self {
        Inventory { cards: Vec::new(), source: InventorySource::None }
    }

    /// Another host's cards by the GPU type each answers to (a worker host's registration),
    /// to check requests against; "" is a card of unknown model.
    pub fn reported(types: &[String]) -> Self {
        let cards = types
            .iter()
            .enumerate()
            .map(|(i, t)| GpuCard {
                index: i as u32,
                minor: i as u32,
                uuid: None,
                name: (!t.is_empty()).then(|| t.clone()),
                memory_bytes: None,
                pci_bus_id: None,
                label: (!t.is_empty()).then(|| t.clone()),
                mig: Vec::new(),
            })
            .collect();
        Inventory { cards, source: InventorySource::Reported }
    }

    /// Looks at this host: NVML first, then the device nodes.
    pub fn detect(aliases: &GpuAliases) -> Self {
        match nvml_cards(aliases) {
            Ok(inv) => inv,
            Err(why) => {
                let cards = device_node_cards(Path::new("/dev"));
                if cards.is_empty() {
                    tracing::debug!("no NVIDIA GPUs: {why}");
                    Inventory::none()
                } else {
                    tracing::warn!("found {} /dev/nvidiaN nodes but NVML did not load ({why}); their models are unknown, so only gpu=\"any\" can use them", cards.len());
                    Inventory { cards, source: InventorySource::DeviceNodes }
                }
            }
        }
    }

    /// `no GPUs`, or `2 GPUs: NVIDIA H200 (H200, 141 GiB), …`: what error messages say the
    /// host has.
    pub fn describe(&self) -> String {
        match self.cards.len() {
            0 => "no GPUs".to_string(),
            n => {
                let list: Vec<String> = self.cards.iter().map(GpuCard::describe).collect();
                format!("{n} GPU{}: {}", if n == 1 { "" } else { "s" }, list.join(", "))
            }
        }
    }
}

fn nvml_cards(aliases: &GpuAliases) -> Result<Inventory, String> {
    use nvml_wrapper::Nvml;
    let mut last = String::from("libnvidia-ml.so.1 not found");
    let nvml = NVML_LIBRARIES
        .iter()
        .find_map(|lib| match Nvml::builder().lib_path(std::ffi::OsStr::new(lib)).init() {
            Ok(n) => Some(n),
            Err(e) => {
                last = format!("{lib}: {e}");
                None
            }
        })
        .ok_or(last)?;
    let driver_version = nvml.sys_driver_version().unwrap_or_default();
    let count = nvml.device_count().map_err(|e| format!("NVML device count: {e}"))?;
    let mut cards = Vec::new();
    for i in 0..count {
        let d = nvml.device_by_index(i).map_err(|e| format!("NVML device {i}: {e}"))?;
        let name = d.name().ok();
        let memory_bytes = d.memory_info().ok().map(|m| m.total);
        let mig = match d.mig_mode() {
            Ok(m) if m.current == 1 => (0..d.mig_device_count().unwrap_or(0))
                .filter_map(|j| d.mig_device_by_index(j).ok().map(|m| (j, m)))
                .map(|(j, m)| MigInstance { index: j, uuid: m.uuid().ok(), memory_bytes: m.memory_info().ok().map(|x| x.total) })
                .collect(),
            _ => Vec::new(),
        };
        cards.push(GpuCard {
            index: d.index().unwrap_or(i),
            minor: d.minor_number().unwrap_or(i),
            uuid: d.uuid().ok(),
            label: name.as_deref().and_then(|n| aliases.label(n, memory_bytes)),
            name,
            memory_bytes,
            pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
            mig,
        });
    }
    Ok(Inventory { cards, source: InventorySource::Nvml { driver_version } })
}

/// Cards by their `/dev/nvidiaN` nodes.
fn device_node_cards(dev: &Path) -> Vec<GpuCard> {
    let mut minors: Vec<u32> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok()?.strip_prefix("nvidia")?.parse().ok())
        .collect();
    minors.sort_unstable();
    minors
        .into_iter()
        .enumerate()
        .map(|(i, minor)| GpuCard { index: i as u32, minor, uuid: None, name: None, memory_bytes: None, pci_bus_id: None, label: None, mig: Vec::new() })
        .collect()
}

/// Made-up cards for tests on machines without GPUs. Nothing about them is real: their
/// device nodes do not exist, so containers must not be given them.
///
/// ```
/// let inv = ferry_gpu::FakeInventory::new().card("NVIDIA A100-SXM4-80GB", 80).card("Tesla T4", 16).build();
/// assert_eq!(inv.cards[0].label.as_deref(), Some("A100-80GB"));
/// assert_eq!(inv.source, ferry_gpu::InventorySource::Fake);
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeInventory {
    cards: Vec<(String, u64)>,
    aliases: GpuAliases,
}

impl FakeInventory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a card by its NVML name and memory in GiB.
    pub fn card(mut self, nvml_name: &str, memory_gib: u64) -> Self {
        self.cards.push((nvml_name.to_string(), memory_gib));
        self
    }

    pub fn aliases(mut self, aliases: GpuAliases) -> Self {
        self.aliases = aliases;
        self
    }

    pub fn build(self) -> Inventory {
        let cards = self
            .cards
            .iter()
            .enumerate()
            .map(|(i, (name, gib))| GpuCard {
                index: i as u32,
                minor: i as u32,
                uuid: Some(format!("GPU-fake-{i:04}")),
                name: Some(name.clone()),
                memory_bytes: Some(gib << 30),
                pci_bus_id: None,
                label: self.aliases.label(name, Some(gib << 30)),
                mig: Vec::new(),
            })
            .collect();
        Inventory { cards, source: InventorySource::Fake }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_nodes_are_the_numbered_ones() {
        let dir = std::env::temp_dir().join(format!("ferry-gpu-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["nvidia2", "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-modeset", "null"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let cards = device_node_cards(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cards.iter().map(|c| (c.index, c.minor)).collect::<Vec<_>>(), vec![(0, 0), (1, 2)]);
        assert!(cards.iter().all(|c| c.label.is_none()));
    }

    #[test]
    fn descriptions_name_what_the_host_has() {
        assert_eq!(Inventory::none().describe(), "no GPUs");
        let inv = FakeInventory::new().card("NVIDIA H200", 141).card("NVIDIA A100-SXM4-80GB", 80).build();
        assert_eq!(inv.describe(), "2 GPUs: NVIDIA H200 (H200, 141 GiB), NVIDIA A100-SXM4-80GB (A100-80GB, 80 GiB)");
    }

    #[test]
    fn this_host_is_detected_without_failing() {
        // On CPU-only machines NVML is absent: detection must say so, not fail.
        let inv = Inventory::detect(&GpuAliases::default());
        if inv.cards.is_empty() {
            assert_eq!(inv.source, InventorySource::None);
        }
    }
}
