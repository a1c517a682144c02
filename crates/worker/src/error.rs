//! The worker's one error type. Runtime errors pass through unchanged; the rest name the
//! task or client version at fault and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] ferry_runtime::Error),

    /// The client reads `MODAL_OVERRIDE_HEADERS` as `name:value,name:value` with whitespace
    /// trimmed, and gRPC metadata must be printable ASCII.
    #[error("task {task_id}: the {what} `{value}` cannot be sent as a gRPC header by the container's client: it must be non-empty printable ASCII without commas or surrounding spaces")]
    BadCredential { task_id: String, what: &'static str, value: String },

    #[error("modal client version `{0}` is not a version number (expected e.g. `1.6.4`)")]
    BadClientVersion(String),

    #[error("task {task_id}: image layer {layer} has no Python recorded (built `FROM scratch`?); Modal task containers need an image built on a Ferry Python base")]
    NoPython { task_id: String, layer: String },

    #[error("task {task_id}: mount target `{target}` must be an absolute path")]
    BadMountTarget { task_id: String, target: String },

    #[error("the image's Python is {python}, a series Ferry has no base for ({available}), and installing the modal client with the image's own Python failed: {source}; use an image whose `python -m pip` works, or one of those Python versions")]
    ImagePythonInstallFailed { python: String, available: String, source: Box<Error> },

    #[error("installing modal=={version} for Python {python} failed (exit {code}); last output:\n{tail}")]
    ClientInstallFailed { version: String, python: String, code: i32, tail: String },

    #[error("the installed modal client for Python {python} reports `{found}`, not {version}; last output:\n{tail}")]
    ClientCheckFailed { version: String, python: String, found: String, tail: String },

    #[error("{context} ({path}): {source}")]
    Io { context: String, path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn ctx(self, context: &str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io { context: context.to_string(), path: path.to_path_buf(), source })
    }
}
