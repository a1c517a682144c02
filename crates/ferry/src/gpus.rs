//! GPU settings of `ferry serve` and `ferry gpus`: which cards the host has and what GPU
//! types requests may name them by.

use std::path::PathBuf;

use clap::Args;
use ferry_gpu::{FakeInventory, GpuAliases, Inventory, InventorySource};

#[derive(Args, Clone, Default)]
pub struct GpuArgs {
    /// Names a card for `gpu=` requests, `NVML NAME=TYPE` (the name as `nvidia-smi -L` shows
    /// it), e.g. `--gpu-alias 'NVIDIA RTX 6000 Ada Generation=L40S'`. Repeatable; wins over
    /// Modal's own names.
    #[arg(long = "gpu-alias", value_name = "NVML NAME=TYPE")]
    gpu_alias: Vec<String>,
    /// A file of such aliases, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    gpu_aliases_file: Option<PathBuf>,
    /// Testing only: made-up cards instead of the host's, as `NVML NAME:GiB,...`. Containers
    /// get `CUDA_VISIBLE_DEVICES` naming them but no devices.
    #[arg(long, hide = true, value_name = "NAME:GIB,...")]
    fake_gpus: Option<String>,
}

impl GpuArgs {
    fn aliases(&self) -> anyhow::Result<GpuAliases> {
        let mut aliases = GpuAliases::default();
        if let Some(path) = &self.gpu_aliases_file {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read --gpu-aliases-file {}: {e}", path.display()))?;
            aliases.add_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        for a in &self.gpu_alias {
            aliases.add(a)?;
        }
        Ok(aliases)
    }

    /// The host's cards (or the fake ones), with the aliases applied.
    pub fn inventory(&self) -> anyhow::Result<Inventory> {
        let aliases = self.aliases()?;
        let Some(fake) = &self.fake_gpus else { return Ok(Inventory::detect(&aliases)) };
        let mut inv = FakeInventory::new().aliases(aliases);
        for item in fake.split(',').filter(|i| !i.trim().is_empty()) {
            let (name, gib) = item.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("--fake-gpus entry `{item}` must be NAME:GIB"))?;
            inv = inv.card(name.trim(), gib.trim().parse().map_err(|_| anyhow::anyhow!("--fake-gpus entry `{item}`: GiB must be a number"))?);
        }
        Ok(inv.build())
    }
}

/// `ferry gpus`: the cards and the GPU type each answers to.
pub fn list(args: &GpuArgs) -> anyhow::Result<()> {
    let inv = args.inventory()?;
    let source = match &inv.source {
        InventorySource::Nvml { driver_version } => format!("NVML, driver {driver_version}"),
        InventorySource::DeviceNodes => "device nodes only (NVML did not load: models unknown, only gpu=\"any\" can use them)".into(),
        InventorySource::Fake => "fake cards (--fake-gpus)".into(),
        InventorySource::Reported => "reported by another host".into(),
        InventorySource::None => "none found".into(),
    };
    println!("GPUs: {} ({source})", inv.cards.len());
    if inv.cards.is_empty() {
        println!("gpu= requests are refused on this host.");
        return Ok(());
    }
    println!("{:<5} {:<36} {:<12} {:>8}  uuid", "index", "name", "gpu type", "memory");
    for c in &inv.cards {
        println!(
            "{:<5} {:<36} {:<12} {:>8}  {}{}",
            c.index,
            c.name.as_deref().unwrap_or("?"),
            c.label.as_deref().unwrap_or("(any only)"),
            c.memory_bytes.map(|m| format!("{} GiB", (m + (1 << 29)) >> 30)).unwrap_or_default(),
            c.uuid.as_deref().unwrap_or("-"),
            if c.mig.is_empty() { String::new() } else { format!("  ({} MIG instances)", c.mig.len()) },
        );
    }
    Ok(())
}
