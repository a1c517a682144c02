//! The one error type of the runtime crate. Every message names the thing that failed and,
//! where there is one, the fix.

use std::path::PathBuf;

/// Errors from preparing bases, building layers and running containers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Python {requested} cannot be provided by Ferry; available versions: {available}. Pick one of those (e.g. `Image.debian_slim(python_version=\"3.11\")`)")]
    UnsupportedPython { requested: String, available: String },

    #[error("base image `{reference}` is not one Ferry builds itself (`python:<X.Y>-slim-<debian>`); registry images need `ferry serve --registry-mirror`")]
    UnsupportedBaseImage { reference: String },

    #[error("image `{reference}` comes from registry `{registry}`, which Ferry has no source for; start `ferry serve` with `--registry-mirror {registry}=URL` (or put `{registry}=URL` in the file given to `--registry-config`)")]
    RegistryNotConfigured { reference: String, registry: String },

    #[error("pulling `{reference}` through the registry mirror {mirror} failed: {reason}; check that the registry is up and reachable, the image and tag exist, and the credentials (REGISTRY_USERNAME/REGISTRY_PASSWORD in the image's `secret=`) are right, or change `--registry-mirror`")]
    RegistryPull { reference: String, mirror: String, reason: String },

    #[error("cannot provide a standalone Python {series} for `add_python=`: {reason}")]
    StandalonePython { series: String, reason: String },

    #[error("image layers of type `{media_type}` are not supported yet (gzip, zstd and uncompressed tar layers are)")]
    UnsupportedLayer { media_type: String },

    #[error("base image for Python {python} ({suite}) is not prepared in {data_dir}; run `ferry images prepare --python {python}` first")]
    BaseNotPrepared { python: String, suite: String, data_dir: PathBuf },

    #[error("`{tool}` is not installed; run `tools/setup.d/runtime.sh` (or `apt-get install -y {package}`)")]
    ToolMissing { tool: String, package: String },

    #[error("no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/*; set FERRY_DEBIAN_MIRROR=<url>")]
    NoMirror,

    #[error("preparing the {suite} base failed at `{step}` (exit {code:?}); last output:\n{tail}")]
    PrepareFailed { suite: String, step: String, code: Option<i32>, tail: String },

    #[error("layer {0} is not in the image store; build it first")]
    LayerNotFound(String),

    #[error("layer {layer} cannot be removed: layer {child} is built on it; remove that first")]
    LayerInUse { layer: String, child: String },

    #[error("Dockerfile command `{command}` is not supported by Ferry's builder: {reason}")]
    UnsupportedCommand { command: String, reason: String },

    #[error("Dockerfile command `{command}` could not be parsed: {reason}")]
    BadCommand { command: String, reason: String },

    #[error("`{command}` failed with exit code {code}; last output:\n{tail}")]
    BuildStepFailed { command: String, code: i32, tail: String },

    #[error("`{command}` ran longer than the build step limit of {seconds} s and was killed; last output:\n{tail}")]
    BuildStepTimedOut { command: String, seconds: f64, tail: String },

    #[error("COPY source `{source_path}` is not among the layer's context files (have: {have})")]
    CopySourceMissing { source_path: String, have: String },

    #[error("{requested} GPU(s) requested but this host has {available}; run the function on a GPU worker or drop `gpu=`")]
    GpuUnavailable { requested: u32, available: usize },

    #[error("cgroup set-up failed at {path}: {source}; Ferry needs root and a memory+cpu cgroup controller (v1 or v2)")]
    Cgroup { path: PathBuf, source: std::io::Error },

    #[error("starting `{program}` in a container failed: {source}")]
    Spawn { program: String, source: std::io::Error },

    #[error("container {0} cannot be snapshotted: only task containers with `Scratch::Disk` keep their writes on disk")]
    NoSnapshot(String),

    #[error("container {0} has already exited; start a new one")]
    ContainerExited(String),

    #[error("containers need root (namespaces, mounts, cgroups); run Ferry's worker as root")]
    NotRoot,

    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },

    #[error("image store metadata at {path} is corrupt: {reason}; delete that directory to rebuild it")]
    CorruptStore { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what were we doing" to `std::io::Error`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}
