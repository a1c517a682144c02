//! The pinned `modal` client, installed once per (client version, Python series) into a host
//! directory that task containers mount read-only.
//!
//! Images from builder 2025.06 on do not contain the client ("modal requirements are mounted at
//! runtime"), so the worker supplies it the way Modal's own workers do:
//!
//! * `pkg/` holds `modal`, `modal_proto`, `modal_version` and `synchronicity` and is mounted at
//!   `/pkg`, first on `PYTHONPATH`, so the client matching the server wins over any copy in the
//!   image. The path matters: the client drops frames under `/pkg/modal/` from remote
//!   tracebacks (`modal/_traceback.py`).
//! * `deps/` holds their dependencies (grpclib, protobuf, aiohttp, ...) and is mounted at
//!   `/__modal/deps` (`REMOTE_PACKAGES_PATH` in `modal/mount.py`). `pkg/sitecustomize.py`
//!   *appends* it to `sys.path`, so packages the user installed in the image take precedence.
//!
//! Compiled dependencies are built for one Python ABI, hence one directory per Python series.

use std::path::{Path, PathBuf};

use ferry_runtime::{BindMount, Container, ContainerRuntime, ContainerSpec, ImageStore, LogLine, LogSink, Network, Stream};

use crate::error::{Error, IoContext, Result};

/// Where the client packages are mounted in a task container, and first on its PYTHONPATH.
pub const PKG_MOUNT: &str = "/pkg";
/// Where the client's dependencies are mounted (appended to `sys.path` by sitecustomize).
pub const DEPS_MOUNT: &str = "/__modal/deps";

/// Top-level packages of the client itself; everything else pip installs is a dependency.
const CLIENT_PACKAGES: &[&str] = &["modal", "modal_proto", "modal_version", "synchronicity"];

const SITECUSTOMIZE: &str = "# Written by Ferry: the modal client's dependencies come after the image's own packages.\nimport sys; sys.path.append('/__modal/deps')\n";

/// Host variables that tell pip where the package index is, passed to the install container.
const PIP_HOST_ENV: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// One install at a time in this process; across processes the final rename decides.
static INSTALL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A prepared client runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRuntime {
    pub dir: PathBuf,
}

impl ClientRuntime {
    pub fn pkg_dir(&self) -> PathBuf {
        self.dir.join("pkg")
    }

    pub fn deps_dir(&self) -> PathBuf {
        self.dir.join("deps")
    }

    /// The read-only mounts that put this client into a container.
    pub fn mounts(&self) -> Vec<BindMount> {
        vec![BindMount::read_only(self.pkg_dir(), PKG_MOUNT), BindMount::read_only(self.deps_dir(), DEPS_MOUNT)]
    }
}

/// "3.11" from "3.11.2".
pub(crate) fn python_series(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Client versions become path components and pip requirement specifiers.
pub(crate) fn check_client_version(version: &str) -> Result<()> {
    let ok = version.starts_with(|c: char| c.is_ascii_digit())
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
        && !version.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Error::BadClientVersion(version.to_string()))
    }
}

pub(crate) fn runtime_root(data_dir: &Path) -> PathBuf {
    data_dir.join("runtime")
}

pub(crate) fn runtime_dir(data_dir: &Path, client_version: &str, python: &str) -> PathBuf {
    runtime_root(data_dir).join(format!("modal-{client_version}-py{}", python_series(python)))
}

/// True for what pip put at the top of `--target` that belongs to the client itself: a
/// package directory or its `.dist-info`.
pub(crate) fn is_client_entry(name: &str) -> bool {
    CLIENT_PACKAGES.iter().any(|p| name == *p || name.strip_prefix(p).is_some_and(|rest| rest.starts_with('-') && rest.ends_with(".dist-info")))
}

/// Returns the runtime directory, installing it first if needed: with Ferry's Debian base of
/// that Python series when there is one (3.11, 3.13), else with the Python and pip of `image`
/// (a registry image with its own Python, e.g. 3.12), whose interpreter tasks will use.
pub(crate) async fn ensure(
    data_dir: &Path,
    store: &ImageStore,
    client_version: &str,
    python: &str,
    image: Option<&ferry_runtime::LayerId>,
    progress: &LogSink,
) -> Result<ClientRuntime> {
    check_client_version(client_version)?;
    let dir = runtime_dir(data_dir, client_version, python);
    if dir.is_dir() {
        return Ok(ClientRuntime { dir });
    }
    let _guard = INSTALL_LOCK.lock().await;
    if dir.is_dir() {
        return Ok(ClientRuntime { dir });
    }
    let (installer, from_image) = match (ferry_runtime::suite_for_python(&python_series(python)), image) {
        (Err(_), Some(image)) => {
            say(progress, format!("ferry: Python {} has no Ferry base; installing the client with the image's own Python", python_series(python)));
            (image.clone(), true)
        }
        _ => (ferry_runtime::prepare_base(data_dir, python, progress).await?.layer, false),
    };
    let root = runtime_root(data_dir);
    std::fs::create_dir_all(&root).ctx("creating the client runtime directory", &root)?;
    sweep_staging(&root);
    let staging = root.join(format!(".staging-{}-{}", std::process::id(), dir.file_name().unwrap_or_default().to_string_lossy()));
    remove_tree(&staging);
    let result = install(store, &installer, &staging, client_version, &python_series(python), progress).await;
    if let Err(e) = result {
        remove_tree(&staging);
        if from_image {
            let available = ferry_runtime::available_pythons().join(", ");
            return Err(Error::ImagePythonInstallFailed { python: python_series(python), available, source: Box::new(e) });
        }
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&staging, &dir) {
        remove_tree(&staging);
        // Another Ferry process on this data dir finished first: its copy is as good.
        if !dir.is_dir() {
            return Err(e).ctx("moving the installed client runtime into place", &dir);
        }
    }
    say(progress, format!("ferry: modal {client_version} for Python {} ready in {}", python_series(python), dir.display()));
    Ok(ClientRuntime { dir })
}

async fn install(store: &ImageStore, base: &ferry_runtime::LayerId, staging: &Path, version: &str, python: &str, progress: &LogSink) -> Result<()> {
    let started = std::time::Instant::now();
    let out = staging.join("out");
    std::fs::create_dir_all(&out).ctx("creating the install directory", &out)?;
    say(progress, format!("ferry: installing modal=={version} and its dependencies for Python {python}"));
    let runtime = ContainerRuntime::new(store.clone());
    // Dependencies resolve to their newest compatible versions. Pinning them to the client's
    // own `modal/builder/<YYYY.MM>.txt` was tried: indexes lack some pinned versions (e.g.
    // certifi's), and the failed attempt plus the fallback tripled the install time.
    let requirement = format!("modal=={version}");
    let mut spec = ContainerSpec::new(
        base.clone(),
        ["python", "-m", "pip", "install", "--no-cache-dir", "--target", "/out", &requirement].map(String::from).to_vec(),
    );
    // The runtime falls back to the host's network where slirp4netns is missing.
    spec.network = Network::Private;
    spec.mounts.push(BindMount::read_write(&out, "/out"));
    spec.env.push(("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()));
    spec.env.push(("PIP_ROOT_USER_ACTION".into(), "ignore".into()));
    for key in PIP_HOST_ENV {
        if let Ok(value) = std::env::var(key) {
            spec.env.push((key.to_string(), value));
        }
    }
    // The host's package-index settings (pip/uv config files, CA bundle), as build steps get
    // them: an image of its own Python knows nothing of the operator's mirror.
    let access = ferry_runtime::PackageAccess::from_host();
    spec.env.extend(access.env().iter().cloned());
    // An index or proxy on the host's loopback is served into the install's own network.
    spec.forwards = access.loopback_forwards();
    spec.mounts.extend(access.binds(&staging.join("host")).ctx("writing the install's package settings", staging)?);
    let mut container = runtime.spawn(spec).await?;
    let (status, tail, _) = relay(&mut container, progress).await?;
    let _ = std::fs::remove_dir_all(staging.join("host"));
    if !status.success() {
        return Err(Error::ClientInstallFailed { version: version.into(), python: python.into(), code: status.code, tail });
    }

    // Split into the client and its dependencies (see the module docs).
    let (pkg, deps) = (staging.join("pkg"), staging.join("deps"));
    for d in [&pkg, &deps] {
        std::fs::create_dir_all(d).ctx("creating the client runtime directory", d)?;
    }
    for entry in std::fs::read_dir(&out).ctx("listing the installed packages", &out)? {
        let entry = entry.ctx("listing the installed packages", &out)?;
        let name = entry.file_name();
        let dest = if is_client_entry(&name.to_string_lossy()) { &pkg } else { &deps };
        std::fs::rename(entry.path(), dest.join(&name)).ctx("sorting the installed packages", &entry.path())?;
    }
    std::fs::remove_dir(&out).ctx("removing the install directory", &out)?;
    let sitecustomize = pkg.join("sitecustomize.py");
    std::fs::write(&sitecustomize, SITECUSTOMIZE).ctx("writing sitecustomize.py", &sitecustomize)?;

    // Check it the way tasks will use it: mounted, with the image's Python.
    let client = ClientRuntime { dir: staging.to_path_buf() };
    let mut spec = ContainerSpec::new(
        base.clone(),
        ["python", "-c", "import modal, grpclib, google.protobuf, synchronicity; print('ferry-modal-version=' + modal.__version__)"].map(String::from).to_vec(),
    );
    spec.mounts = client.mounts();
    spec.env.push(("PYTHONPATH".into(), PKG_MOUNT.into()));
    spec.network = Network::Blocked;
    let mut container = runtime.spawn(spec).await?;
    let (status, tail, stdout) = relay(&mut container, progress).await?;
    let found = stdout.lines().find_map(|l| l.strip_prefix("ferry-modal-version=")).unwrap_or("").to_string();
    if !status.success() || found != version {
        return Err(Error::ClientCheckFailed { version: version.into(), python: python.into(), found, tail });
    }
    say(progress, format!("ferry: installed and checked modal {version} in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Forwards a container's output to `progress`; returns its status, the last lines of its
/// output (for errors) and its whole stdout.
async fn relay(container: &mut Container, progress: &LogSink) -> Result<(ferry_runtime::ExitStatus, String, String)> {
    let mut tail = std::collections::VecDeque::new();
    let mut stdout = String::new();
    if let Some(mut logs) = container.logs() {
        while let Some(line) = logs.recv().await {
            if line.stream == Stream::Stdout {
                stdout.push_str(&line.text);
                stdout.push('\n');
            }
            if tail.len() == 30 {
                tail.pop_front();
            }
            tail.push_back(line.text.clone());
            let _ = progress.send(line);
        }
    }
    let status = container.wait().await?;
    Ok((status, tail.into_iter().collect::<Vec<_>>().join("\n"), stdout))
}

/// Removes half-finished installs left by Ferry processes that died; returns how many.
pub(crate) fn sweep_staging(root: &Path) -> usize {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(root) else { return 0 };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".staging-") else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| !crate::process_alive(pid)) {
            remove_tree(&entry.path());
            removed += 1;
        }
    }
    removed
}

fn say(progress: &LogSink, text: String) {
    let _ = progress.send(LogLine::system(text));
}

pub(crate) fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_entries_are_the_client_packages_and_their_metadata() {
        for name in ["modal", "modal_proto", "modal_version", "synchronicity", "modal-1.6.4.dist-info", "synchronicity-0.10.2.dist-info"] {
            assert!(is_client_entry(name), "{name}");
        }
        for name in ["grpclib", "modal_extra", "modality-1.0.dist-info", "google", "bin", "typing_extensions.py", "protobuf-6.31.1.dist-info"] {
            assert!(!is_client_entry(name), "{name}");
        }
    }

    #[test]
    fn client_versions_are_checked_before_they_become_paths() {
        for ok in ["1.6.4", "1.0.0rc1", "1.6.4+local", "1.7.0.dev3"] {
            check_client_version(ok).unwrap();
        }
        for bad in ["", "../x", "1.6/4", "1..6", "latest", "1.6.4 ", "1.6.4;rm"] {
            assert!(check_client_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_directory_per_client_version_and_python_series() {
        let d = runtime_dir(Path::new("/d"), "1.6.4", "3.11.2");
        assert_eq!(d, Path::new("/d/runtime/modal-1.6.4-py3.11"));
        assert_eq!(runtime_dir(Path::new("/d"), "1.6.4", "3.11"), d);
    }
}
