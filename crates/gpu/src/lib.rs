//! GPUs for Ferry's containers: what the host has, what a Modal `gpu=` request means on it,
//! and which whole cards each container holds.
//!
//! * [`Inventory`]: the host's NVIDIA cards through NVML (`libnvidia-ml.so.1`, opened at run
//!   time, so builds and hosts without the driver are unaffected), else the `/dev/nvidiaN`
//!   nodes with unknown models; [`FakeInventory`] stands in for cards in tests.
//! * [`GpuRequest`] / [`GpuChoices`]: Modal's `gpu="H100:2"` and `gpu=["H100", "A100"]`, and
//!   which host cards each name accepts ([`names`]), with operator aliases for cards Modal
//!   does not name ([`GpuAliases`]).
//! * [`GpuPool`]: the one check every path makes ([`GpuPool::check`]: can this host ever run
//!   the request?) and whole-card leases ([`GpuPool::try_lease`]) that are freed when dropped.
//!
//! **Architecture invariant:** this crate knows nothing of Modal's wire types, containers or
//! the scheduler; callers turn a [`GpuLease`] into device nodes and environment.
//!
//! ```
//! use ferry_gpu::{FakeInventory, GpuChoices, GpuPool};
//! let pool = GpuPool::new(FakeInventory::new().card("NVIDIA H100 80GB HBM3", 80).card("NVIDIA A100-SXM4-40GB", 40).build());
//! let choices = GpuChoices::parse_list(&["H100:2", "A100"]).unwrap();
//! pool.check(&choices).unwrap(); // no two H100s here, but an A100
//! let lease = pool.try_lease(&choices, "ta-1").unwrap().unwrap();
//! assert_eq!(lease.model(), "A100-40GB");
//! drop(lease); // the card is free again
//! ```

mod error;
mod inventory;
pub mod names;
mod pool;

pub use error::GpuError;
pub use inventory::{FakeInventory, GpuCard, Inventory, InventorySource, MigInstance};
pub use names::{GpuAliases, GpuChoices, GpuRequest};
pub use pool::{GpuLease, GpuPool, LeaseInfo};
