//! What isolation this host's kernel allows, found once per process before the first
//! container starts.
//!
//! The full model needs user namespaces, idmapped mounts of the image store's file system and
//! overlayfs over idmapped layers (Linux 5.19+ on ext4/xfs/btrfs), plus `slirp4netns` for
//! private networks with outbound access. A kernel or host without one of them still runs
//! every container, with the strongest isolation it allows: without idmapped layers there is
//! no user namespace (root inside is root of the host, but with capabilities cut, seccomp,
//! `no_new_privs`, ferry-init as pid 1 and its own namespaces); without `slirp4netns` a
//! container that asked for outbound access shares the host's network. One log line says
//! which level is in effect.
//!
//! The check is the real thing, done small: a fresh process (the running executable
//! re-executed as `ferry-isolation-probe`, like ferry-init) makes a user namespace, an
//! idmapped view of the store and an overlay over it, then writes a file as the container's
//! root would, and the file must land on disk owned by uid 0.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::container::Network;

/// `argv[0]` of the re-executed probe.
pub(crate) const PROBE_ARGV0: &CStr = c"ferry-isolation-probe";

/// The isolation containers of this process get.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// Root inside a container is an unprivileged uid of the host.
    pub user_namespaces: bool,
    /// Containers asking for outbound access get a network namespace of their own with NAT.
    pub private_network: bool,
    /// One line for operators: the level in effect, and why it is lower where it is.
    pub summary: String,
}

static ISOLATION: OnceLock<Isolation> = OnceLock::new();

/// The isolation level for containers over the image store at `store_root`, detected (and
/// logged) on the first call.
pub fn isolation(store_root: &Path) -> &'static Isolation {
    ISOLATION.get_or_init(|| {
        let found = detect(store_root);
        if found.user_namespaces && found.private_network {
            tracing::info!("container isolation: {}", found.summary);
        } else {
            tracing::warn!("container isolation: {}", found.summary);
        }
        found
    })
}

/// The isolation level, if [`isolation`] already found it.
pub(crate) fn known() -> Option<&'static Isolation> {
    ISOLATION.get()
}

/// The network a container asking for `requested` gets on this host.
pub(crate) fn effective_network(store_root: &Path, requested: Network, cidrs: bool) -> Network {
    // A CIDR allow-list is a promise about outbound traffic: without slirp4netns the launch
    // fails with the missing tool named rather than opening the host's network.
    if requested == Network::Private && !cidrs && !isolation(store_root).private_network {
        Network::Host
    } else {
        requested
    }
}

fn detect(store_root: &Path) -> Isolation {
    let private_network = crate::base::which("slirp4netns").is_some();
    let net = if private_network {
        "a network namespace per container (outbound through slirp4netns, no route to the host's loopback)"
    } else {
        "containers that ask for outbound access share the host's network, because slirp4netns is not installed (tools/setup.d/runtime.sh)"
    };
    let common = "seccomp allow-list, no_new_privs, reduced capabilities, ferry-init as pid 1, own mount/pid/ipc/uts namespaces";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Isolation { user_namespaces: false, private_network, summary: "containers need Ferry to run as root; none can start in this process".into() };
    }
    let userns = if std::env::var("FERRY_USERNS").is_ok_and(|v| v == "0") {
        Err("FERRY_USERNS=0 turned them off".to_string())
    } else {
        probe_user_namespaces(store_root)
    };
    match userns {
        Ok(()) => Isolation {
            user_namespaces: true,
            private_network,
            summary: format!("full: user namespaces over an idmapped image store (root inside is an unprivileged uid of the host), {common}; {net}"),
        },
        Err(why) => Isolation {
            user_namespaces: false,
            private_network,
            summary: format!("reduced: no user namespaces ({why}), so root inside a container is root of the host, held in by the {common}; {net}"),
        },
    }
}

/// Runs the probe process over a scratch directory of the store; `Err` says what is missing.
fn probe_user_namespaces(store_root: &Path) -> Result<(), String> {
    let dir = store_root.join("run").join(format!(".isolation-probe-{}-{}", std::process::id(), crate::store::unique_suffix()));
    let made = (|| -> io::Result<()> {
        for d in ["lower", "upper", "work", "merged", "view"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::write(dir.join("lower").join("seen"), b"layer")
    })();
    if let Err(e) = made {
        crate::store::remove_tree(&dir);
        return Err(format!("the probe could not write under {}: {e}", store_root.display()));
    }
    let out = std::process::Command::new("/proc/self/exe")
        .arg0(PROBE_ARGV0.to_str().expect("ascii"))
        .arg(store_root)
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .output();
    crate::store::remove_tree(&dir);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let said = String::from_utf8_lossy(&o.stderr).trim().to_string();
            Err(if said.is_empty() { format!("the probe exited with {}", o.status) } else { said })
        }
        Err(e) => Err(format!("the probe could not run: {e}")),
    }
}

/// The probe process's body (called from init's constructor): exits 0 when a container's
/// root can write through an overlay over an idmapped view of the store.
pub(crate) unsafe fn run_probe(store_root: &CStr, dir: &CStr) -> ! {
    let store_root = PathBuf::from(std::ffi::OsStr::from_bytes(store_root.to_bytes()));
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    match probe(&store_root, &dir) {
        Ok(()) => libc::_exit(0),
        Err(why) => {
            let line = format!("{why}\n");
            libc::write(2, line.as_ptr().cast(), line.len());
            libc::_exit(1)
        }
    }
}

unsafe fn probe(store_root: &Path, dir: &Path) -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", io::Error::last_os_error());
    if libc::unshare(libc::CLONE_NEWNS) != 0 {
        return Err(os("a private mount namespace could not be made"));
    }
    libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null());
    let map = crate::init::allocate_ids();
    let line = CString::new(format!("0 {} {}\n", map.base, map.count)).expect("digits");
    let ns = crate::launch::make_userns(&line).map_err(|e| format!("the kernel refused a user namespace: {e}"))?;
    let view = dir.join("view");
    crate::init::idmapped_view(store_root, &view, ns).map_err(|e| format!("the image store's file system cannot be idmapped: {e}"))?;
    let inside = view.join(dir.strip_prefix(store_root).map_err(|_| "the probe directory is outside the store".to_string())?);
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        inside.join("lower").display(),
        inside.join("upper").display(),
        inside.join("work").display()
    );
    let options = CString::new(options).map_err(|_| "a path contains a NUL byte".to_string())?;
    let merged = CString::new(dir.join("merged").as_os_str().as_bytes()).map_err(|_| "a path contains a NUL byte".to_string())?;
    libc::setfsgid(map.base);
    libc::setfsuid(map.base);
    crate::init::raise_effective_caps().map_err(|e| format!("capabilities: {e}"))?;
    if libc::mount(c"overlay".as_ptr(), merged.as_ptr(), c"overlay".as_ptr(), 0, options.as_ptr().cast()) != 0 {
        return Err(os("overlayfs over idmapped layers is not supported by this kernel (Linux 5.19+ needed)"));
    }
    let file = dir.join("merged").join("written");
    std::fs::write(&file, b"x").map_err(|e| format!("the container's root could not write through the overlay: {e}"))?;
    std::fs::read(dir.join("merged").join("seen")).map_err(|e| format!("the container's root could not read a layer: {e}"))?;
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir.join("upper").join("written")).map_err(|e| format!("the written file is not in the upper layer: {e}"))?.uid();
    if owner != 0 {
        return Err(format!("a file the container's root wrote belongs to uid {owner} on disk, not 0"));
    }
    Ok(())
}
