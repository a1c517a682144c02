//! Base images made locally: `FROM python:<version>-slim-<debian>` without a registry.
//!
//! Ferry cannot pull Docker Hub's `python` images, so it builds an equivalent from the host's
//! Debian mirror: `debootstrap --variant=minbase` plus the distribution's own Python, with
//! `python`/`pip` on PATH, pip allowed to install system-wide (as in the Docker image), and
//! `uv`. The Python series picks the Debian release, because each release ships exactly one
//! Python 3: a request for 3.11 gets bookworm whichever codename the client named.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::logs::{pump, LogLine, LogSink, Stream, Tail};
use crate::store::{now_unix, remove_tree, ImageConfig, ImageStore, LayerId, LayerOrigin, LayerRecord};

/// Python series Ferry can provide, and the Debian release whose python3 it is.
pub const PYTHON_SUITES: &[(&str, &str)] = &[("3.11", "bookworm"), ("3.13", "trixie")];

/// Packages added to minbase. `python-is-python3` gives `python`; pip's own upgrade goes to
/// /usr/local so that `pip install --upgrade pip` works later.
const PACKAGES: &str = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates";

/// Bumped when the recipe changes, so old bases are not reused.
const RECIPE_VERSION: &str = "ferry-base-v1";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A prepared base image.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseImage {
    pub layer: LayerId,
    pub suite: String,
    /// The full version in the image, e.g. "3.11.2".
    pub python_version: String,
    /// False when the base was already in the store.
    pub created: bool,
}

/// The series ("3.11") of a version string ("3.11", "3.11.12").
fn series(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn available() -> String {
    PYTHON_SUITES.iter().map(|(py, suite)| format!("{py} (Debian {suite})")).collect::<Vec<_>>().join(", ")
}

/// The Debian release providing `python_version`, or a clear refusal.
pub fn suite_for_python(python_version: &str) -> Result<&'static str> {
    let s = series(python_version);
    PYTHON_SUITES
        .iter()
        .find(|(py, _)| *py == s)
        .map(|(_, suite)| *suite)
        .ok_or_else(|| Error::UnsupportedPython { requested: python_version.to_string(), available: available() })
}

/// The series Ferry makes that stands in for one it cannot (`3.12`, `3.10`): the nearest by
/// minor version, the older one on a tie. The app's own module was imported by the client's
/// Python before it was deployed, and a package pinned for the requested series more often has
/// wheels for the older neighbour than for the newer one. `None` for a series Ferry makes, or a
/// version that is not CPython 3 (`3.14t`'s free-threading suffix is dropped).
pub fn stand_in_python(python_version: &str) -> Option<&'static str> {
    if suite_for_python(python_version).is_ok() {
        return None;
    }
    let mut parts = python_version.split('.');
    let (major, minor) = (parts.next()?, parts.next()?.trim_end_matches('t'));
    if major != "3" {
        return None;
    }
    let minor: i64 = minor.parse().ok()?;
    let minor_of = |py: &str| py.split('.').nth(1).and_then(|m| m.parse::<i64>().ok()).unwrap_or(i64::MAX);
    PYTHON_SUITES.iter().map(|(py, _)| *py).min_by_key(|py| ((minor_of(py) - minor).abs(), minor_of(py)))
}

/// The layer id of the base for a Python series. Stable across machines and runs.
pub fn base_layer_id(python_version: &str) -> Result<LayerId> {
    let suite = suite_for_python(python_version)?;
    let mut h = Sha256::new();
    h.update(RECIPE_VERSION);
    h.update([0]);
    h.update(suite);
    h.update([0]);
    h.update(series(python_version));
    Ok(LayerId::from_hasher(h))
}

/// Parses a base reference such as `python:3.11.12-slim-bookworm` or `python:3.11-slim`,
/// returning the Python version it asks for. Other references are not bases Ferry can make.
pub fn parse_base_reference(reference: &str) -> Result<String> {
    let unsupported = || Error::UnsupportedBaseImage { reference: reference.to_string() };
    let rest = reference
        .strip_prefix("python:")
        // `<registry host>/library/python:...`, as a registry-qualified reference names it.
        .or_else(|| reference.split_once("/library/python:").filter(|(host, _)| !host.contains('/')).map(|(_, rest)| rest))
        .or_else(|| reference.strip_prefix("library/python:"))
        .ok_or_else(unsupported)?;
    let version = rest.split('-').next().unwrap_or("");
    let flavour_ok = rest[version.len()..].starts_with("-slim") || rest.len() == version.len();
    if version.is_empty() || !flavour_ok || !version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(unsupported());
    }
    Ok(version.to_string())
}

/// Finds the mirror URL in the host's apt configuration (`FERRY_DEBIAN_MIRROR` wins).
pub fn debian_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("FERRY_DEBIAN_MIRROR") {
        if !m.is_empty() {
            return Ok(m);
        }
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let name = f.to_string_lossy();
        if !(name.ends_with(".list") || name.ends_with(".sources")) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(&f) {
            if let Some(url) = mirror_in(&text) {
                return Ok(url);
            }
        }
    }
    Err(Error::NoMirror)
}

/// The first Debian archive URL (not the security archive) in a sources file, one-line or
/// deb822 format.
fn mirror_in(text: &str) -> Option<String> {
    let is_debian = |u: &str| u.starts_with("http") && !u.contains("security") && u.trim_end_matches('/').ends_with("/debian");
    for line in text.lines().map(str::trim) {
        let candidates: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
            rest.split_whitespace().collect()
        } else if line.starts_with("deb ") {
            line.split_whitespace().skip(1).filter(|w| !w.starts_with('[') && !w.ends_with(']')).take(1).collect()
        } else {
            continue;
        };
        if let Some(u) = candidates.into_iter().find(|u| is_debian(u)) {
            return Some(u.trim_end_matches('/').to_string());
        }
    }
    None
}

/// Builds (or finds) the base image for `python_version` in `data_dir`, sending progress lines
/// to `progress`. Needs root, `debootstrap` and the Debian mirror; takes about half a minute.
///
/// ```no_run
/// # async fn demo() -> ferry_runtime::Result<()> {
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
/// tokio::spawn(async move { while let Some(l) = rx.recv().await { eprintln!("{}", l.text) } });
/// let base = ferry_runtime::prepare_base("/var/lib/ferry".as_ref(), "3.11", &tx).await?;
/// println!("Python {} in layer {}", base.python_version, base.layer);
/// # Ok(()) }
/// ```
pub async fn prepare_base(data_dir: &Path, python_version: &str, progress: &LogSink) -> Result<BaseImage> {
    let store = ImageStore::open(data_dir)?;
    prepare_in(&store, python_version, progress).await
}

/// The Python series Ferry can provide, e.g. for `ferry images prepare --help`.
pub fn available_pythons() -> Vec<&'static str> {
    PYTHON_SUITES.iter().map(|(py, _)| *py).collect()
}

/// Serializes preparations in this process; across processes the final rename decides.
static PREPARE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) async fn prepare_in(store: &ImageStore, python_version: &str, progress: &LogSink) -> Result<BaseImage> {
    let suite = suite_for_python(python_version)?;
    let id = base_layer_id(python_version)?;
    let _guard = PREPARE_LOCK.lock().await;
    if store.contains(&id) {
        let record = store.layer(&id)?;
        return Ok(BaseImage {
            layer: id,
            suite: suite.to_string(),
            python_version: record.config.python_version.unwrap_or_default(),
            created: false,
        });
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    if let Some(base) = copy_from_seed(store, &id, suite, progress).await? {
        return Ok(base);
    }
    if which("debootstrap").is_none() {
        return Err(Error::ToolMissing { tool: "debootstrap".into(), package: "debootstrap".into() });
    }
    let mirror = debian_mirror()?;
    let staging = store.staging_dir(&format!("base-{suite}"))?;
    let result = build_base(store, &staging, suite, python_version, &mirror, &id, progress).await;
    if result.is_err() {
        remove_tree(&staging);
    }
    result
}

/// Bases are identical across data directories, so a fresh data dir (a test, a second worker
/// on the machine) can copy one from `FERRY_BASE_SEED=<another data dir>` in a second instead
/// of debootstrapping for a minute.
async fn copy_from_seed(store: &ImageStore, id: &LayerId, suite: &str, progress: &LogSink) -> Result<Option<BaseImage>> {
    let Some(seed) = std::env::var_os("FERRY_BASE_SEED").filter(|s| !s.is_empty()) else { return Ok(None) };
    let Ok(seed) = ImageStore::open(PathBuf::from(seed)) else { return Ok(None) };
    if seed.root() == store.root() || !seed.contains(id) {
        return Ok(None);
    }
    let record = seed.layer(id)?;
    let staging = store.staging_dir(&format!("base-{suite}"))?;
    let _ = progress.send(LogLine::system(format!("ferry: copying base {id} from {}", seed.root().display())));
    // Layers are immutable (overlayfs copies a file up before changing it), so hard links
    // are safe and take a fraction of a second; across filesystems, copy.
    let copy = |flags: &'static str| {
        tokio::process::Command::new("cp").arg(flags).arg(seed.layer_fs(id)).arg(staging.join("fs")).stderr(Stdio::null()).status()
    };
    let mut status = copy("-al").await.ctx(|| "starting cp".into())?;
    if !status.success() {
        remove_tree(&staging.join("fs"));
        status = copy("-a").await.ctx(|| "starting cp".into())?;
    }
    if !status.success() {
        remove_tree(&staging);
        return Err(Error::PrepareFailed { suite: suite.into(), step: "copy from FERRY_BASE_SEED".into(), code: status.code(), tail: String::new() });
    }
    store.commit(&staging, &record)?;
    Ok(Some(BaseImage {
        layer: id.clone(),
        suite: suite.into(),
        python_version: record.config.python_version.unwrap_or_default(),
        created: true,
    }))
}

async fn build_base(
    store: &ImageStore,
    staging: &Path,
    suite: &str,
    python_version: &str,
    mirror: &str,
    id: &LayerId,
    progress: &LogSink,
) -> Result<BaseImage> {
    let fs = staging.join("fs");
    let say = |s: String| {
        let _ = progress.send(LogLine::system(s));
    };
    say(format!("ferry: preparing Debian {suite} with Python {} from {mirror}", series(python_version)));
    let started = std::time::Instant::now();
    run_logged(
        suite,
        "debootstrap",
        tokio::process::Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}"), suite])
            .arg(&fs)
            .arg(mirror),
        progress,
    )
    .await?;

    // Host trust anchors (e.g. a company proxy's CA) so pip and apt work inside builds.
    let host_cas = Path::new("/usr/local/share/ca-certificates");
    if host_cas.is_dir() {
        let dest = fs.join("usr/local/share/ca-certificates");
        std::fs::create_dir_all(&dest).ctx(|| format!("creating {}", dest.display()))?;
        for entry in std::fs::read_dir(host_cas).ctx(|| "listing host CA certificates".into())?.flatten() {
            let target = dest.join(entry.file_name());
            if entry.path().is_file() {
                std::fs::copy(entry.path(), &target).ctx(|| format!("copying {}", entry.path().display()))?;
            }
        }
    }
    // Mount points for the host's name-resolution files (bound at run time).
    for f in ["etc/resolv.conf", "etc/hosts"] {
        let p = fs.join(f);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::write(&p, "").ctx(|| format!("creating {}", p.display()))?;
        }
    }
    // Resolution during the set-up script itself.
    if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
        let _ = std::fs::write(fs.join("etc/resolv.conf"), resolv);
    }

    say("ferry: configuring pip and installing pip, wheel and uv into /usr/local".into());
    let script = r#"set -e
update-ca-certificates >/dev/null 2>&1 || true
# Like the python Docker images: root may pip-install into the system Python.
rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
cat > /etc/pip.conf <<'PIPCONF'
[global]
cert = /etc/ssl/certs/ca-certificates.crt
root-user-action = ignore
disable-pip-version-check = true
PIPCONF
python3 -m pip install --no-cache-dir --ignore-installed pip wheel uv
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/*
: > /etc/resolv.conf
python3 -c 'import platform; print("ferry-python-version=" + platform.python_version())'
"#;
    // The host's package index (pip.conf and uv settings included, not only this process's
    // PIP_* variables) for the pip install inside the chroot.
    let mut chroot = tokio::process::Command::new("chroot");
    chroot.arg(&fs).args(["/bin/sh", "-c", script]).envs(crate::packages::PackageAccess::from_host().portable_env());
    let out = run_logged(suite, "set-up script", &mut chroot, progress).await?;
    let full = out
        .lines()
        .find_map(|l| l.strip_prefix("ferry-python-version="))
        .map(str::to_string)
        .ok_or_else(|| Error::PrepareFailed { suite: suite.into(), step: "python version".into(), code: None, tail: out.clone() })?;
    if series(&full) != series(python_version) {
        return Err(Error::PrepareFailed {
            suite: suite.into(),
            step: "python version check".into(),
            code: None,
            tail: format!("Debian {suite} provides Python {full}, not {python_version}"),
        });
    }

    let mut config = ImageConfig::default();
    config.env_set("PATH", DEFAULT_PATH.into());
    config.env_set("LANG", "C.UTF-8".into());
    config.env_set("PYTHON_VERSION", full.clone());
    config.cmd = Some(vec!["python3".into()]);
    config.python_version = Some(full.clone());
    let record = LayerRecord {
        id: id.clone(),
        parent: None,
        config,
        origin: LayerOrigin::Base { suite: suite.into(), python_series: series(python_version) },
        created_at: now_unix(),
    };
    store.commit(staging, &record)?;
    say(format!("ferry: base {id} ready (Python {full}) in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(BaseImage { layer: id.clone(), suite: suite.into(), python_version: full, created: true })
}

/// Runs a host command, streaming its output; returns the whole stdout on success.
async fn run_logged(suite: &str, step: &str, cmd: &mut tokio::process::Command, progress: &LogSink) -> Result<String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).env("DEBIAN_FRONTEND", "noninteractive");
    let mut child = cmd.spawn().ctx(|| format!("starting {step}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let out = tokio::spawn(pump(child.stdout.take().expect("piped"), Stream::Stdout, tx.clone()));
    let err = tokio::spawn(pump(child.stderr.take().expect("piped"), Stream::Stderr, tx));
    let mut tail = Tail::default();
    let mut stdout = String::new();
    while let Some(line) = rx.recv().await {
        tail.push(&line.text);
        if line.stream == Stream::Stdout {
            stdout.push_str(&line.text);
            stdout.push('\n');
        }
        let _ = progress.send(line);
    }
    let _ = (out.await, err.await);
    let status = child.wait().await.ctx(|| format!("waiting for {step}"))?;
    if !status.success() {
        return Err(Error::PrepareFailed { suite: suite.into(), step: step.into(), code: status.code(), tail: tail.text() });
    }
    Ok(stdout)
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_references() {
        assert_eq!(parse_base_reference("python:3.11.12-slim-bookworm").unwrap(), "3.11.12");
        assert_eq!(parse_base_reference("python:3.11-slim-trixie").unwrap(), "3.11");
        assert_eq!(parse_base_reference("python:3.13-slim").unwrap(), "3.13");
        assert!(matches!(parse_base_reference("ubuntu:22.04"), Err(Error::UnsupportedBaseImage { .. })));
        assert!(matches!(parse_base_reference("python:3.11-alpine"), Err(Error::UnsupportedBaseImage { .. })));
    }

    #[test]
    fn python_versions_map_to_suites() {
        assert_eq!(suite_for_python("3.11.12").unwrap(), "bookworm");
        assert_eq!(suite_for_python("3.13").unwrap(), "trixie");
        assert_eq!(stand_in_python("3.12"), Some("3.11"));
        assert_eq!(stand_in_python("3.12.8"), Some("3.11"));
        assert_eq!(stand_in_python("3.10"), Some("3.11"));
        assert_eq!(stand_in_python("3.9"), Some("3.11"));
        assert_eq!(stand_in_python("3.14"), Some("3.13"));
        assert_eq!(stand_in_python("3.15t"), Some("3.13"));
        assert_eq!(stand_in_python("3.11"), None);
        assert_eq!(stand_in_python("2.7"), None);
        assert_eq!(stand_in_python("3.x"), None);
        let err = suite_for_python("3.12").unwrap_err().to_string();
        assert!(err.contains("3.11 (Debian bookworm)") && err.contains("3.12"), "{err}");
        assert_eq!(base_layer_id("3.11").unwrap(), base_layer_id("3.11.12").unwrap());
    }

    #[test]
    fn mirror_from_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n";
        assert_eq!(mirror_in(deb822).as_deref(), Some("http://mirror.example/debian"));
        let list = "deb [arch=amd64] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(mirror_in(list).as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(mirror_in("deb https://packages.cloud.google.com/apt cloud-sdk main"), None);
    }
}
