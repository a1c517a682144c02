//! Ferry's container runtime and image builder.
//!
//! This crate knows nothing of Modal's wire types. It turns Dockerfile commands into
//! content-addressed overlay layers on top of locally made Debian bases, and runs task
//! containers from those layers with their own namespaces and cgroup limits.
//!
//! * [`prepare_base`]: a `python:<X.Y>-slim` equivalent made with debootstrap.
//! * [`ImageStore`] / [`ImageBuilder`]: layers on disk, built from [`LayerSpec`]s.
//! * [`ContainerRuntime`]: [`Container`]s from a [`ContainerSpec`].
//!
//! See `crates/runtime/README.md` for the design and its trade-offs.

mod base;
mod builder;
mod cgroup;
mod container;
mod disk;
mod dockerfile;
mod error;
mod export;
mod gpu;
mod init;
mod inject;
mod launch;
mod logs;
mod net;
mod packages;
mod probe;
mod registry;
mod shared_mount;
mod standalone;
mod replica;
mod store;
mod trust;

pub use base::{available_pythons, base_layer_id, debian_mirror, parse_base_reference, prepare_base, stand_in_python, suite_for_python, BaseImage, PYTHON_SUITES};
pub use builder::{BuildOptions, BuildSettings, BuiltLayer, ContextFile, HostContextFile, ImageBuilder, LayerSpec};
pub use cgroup::Limits;
pub use container::{BindMount, Container, ContainerRuntime, ContainerSpec, ExecSpec, ExitStatus, Network, Process, RawOutput, Scratch, Signal};
pub use dockerfile::{CommandForm, Instruction};
pub use error::{Error, Result};
pub use export::{ExportedImage, ExportedLayer, OCI_ZSTD_LAYER};
pub use gpu::{detect_gpus, Gpu, GpuDevice, DRIVER_LIB_DIR};
pub use inject::{replace_mount, ReplaceMountError};
pub use logs::{LogLine, LogSink, Stream};
pub use net::{serve_forwards_in_process, share_loopback_port, PortForward, SharedLoopbackPort};
pub use packages::{redact, PackageAccess};
pub use probe::{isolation, Isolation};
pub use standalone::standalone_python;
pub use shared_mount::{mount_shared_overlay, unmount_shared_overlay};
pub use registry::{RegistryConfig, RegistryCredentials, DEFAULT_REGISTRY};
pub use store::{ImageConfig, ImageStore, LayerId, LayerOrigin, LayerRecord, LayerUsage};

/// Whether an external tool Ferry can use is on PATH (e.g. `slirp4netns` for
/// [`Network::Private`]); returns its path.
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    base::which(tool)
}

/// The scheduler moves these between tasks: they must stay `Send` (and the handles `Sync`).
/// Never called; it only has to compile.
#[allow(dead_code)]
fn _handles_and_futures_are_send(builder: ImageBuilder, runtime: ContainerRuntime, spec: ContainerSpec, layer: LayerSpec, mut container: Container, tx: LogSink) {
    fn send<T: Send>(_: T) {}
    fn shared<T: Send + Sync>() {}
    shared::<ImageStore>();
    shared::<ImageBuilder>();
    shared::<ContainerRuntime>();
    shared::<Container>();
    shared::<Process>();
    send(builder.build(&layer, &tx));
    send(runtime.spawn(spec));
    send(prepare_base(std::path::Path::new("/"), "3.11", &tx));
    send(container.exec(ExecSpec::default()));
    send(container.wait_into_layer());
}
