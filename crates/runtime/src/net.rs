//! Private network namespaces with outbound access, through slirp4netns.
//!
//! slirp4netns gives a namespace a tap device (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3)
//! and carries its traffic through ordinary sockets of the host, so no bridge, veth, NAT
//! rule or sysctl on the host is needed. `--disable-host-loopback` keeps containers away from
//! the host's 127.0.0.1 services.
//!
//! Ordering: the monitor sends init's pid here as soon as it exists; a helper thread starts
//! slirp4netns for that pid's network namespace, waits until it reports the network
//! configured, and only then lets init start the program (which may connect at once). A
//! thread, not a task: the spawning thread is blocked in `Command::spawn` until the program
//! has been exec'd, and a current-thread runtime would have no other thread.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, IoContext, Result};

/// The resolver slirp4netns forwards to the host's.
const SLIRP_DNS: &str = "10.0.2.3";

/// The pipes init waits on, and the helper that will bring the network up.
pub(crate) struct NetworkGate {
    pub pid_write: OwnedFd,
    pub go_read: OwnedFd,
    helper: std::thread::JoinHandle<std::io::Result<Slirp>>,
}

impl NetworkGate {
    pub(crate) fn open(pipe: impl Fn() -> Result<(OwnedFd, OwnedFd)>) -> Result<Self> {
        if crate::base::which("slirp4netns").is_none() {
            return Err(Error::ToolMissing { tool: "slirp4netns".into(), package: "slirp4netns".into() });
        }
        let (pid_read, pid_write) = pipe()?;
        let (go_read, go_write) = pipe()?;
        let (ready, exit) = (pipe()?, pipe()?);
        let helper = std::thread::Builder::new()
            .name("ferry-net".into())
            .spawn(move || bring_up(pid_read, go_write, ready, exit))
            .ctx(|| "starting the network helper thread".into())?;
        Ok(NetworkGate { pid_write, go_read, helper })
    }

    /// Called after `spawn` returned (the parent's pipe ends already dropped): the helper has
    /// finished or is about to.
    pub(crate) fn finish(self) -> Result<Slirp> {
        drop(self.pid_write);
        drop(self.go_read);
        match self.helper.join() {
            Ok(Ok(slirp)) => Ok(slirp),
            Ok(Err(e)) => Err(Error::Io { context: "setting up the container's private network with slirp4netns".into(), source: e }),
            Err(_) => Err(Error::Io { context: "the network helper thread".into(), source: std::io::Error::other("panicked") }),
        }
    }
}

type PipePair = (OwnedFd, OwnedFd);

fn bring_up(pid_read: OwnedFd, go_write: OwnedFd, ready: PipePair, exit: PipePair) -> std::io::Result<Slirp> {
    let mut pid = [0u8; 4];
    std::fs::File::from(pid_read).read_exact(&mut pid)?;
    let pid = i32::from_ne_bytes(pid);
    let (ready_read, ready_write) = ready;
    let (exit_read, exit_write) = exit;
    let (ready_fd, exit_fd) = (ready_write.as_raw_fd(), exit_read.as_raw_fd());
    let mut cmd = std::process::Command::new("slirp4netns");
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback", "--ready-fd=3", "--exit-fd=4"])
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only fcntl/dup2 between fork and exec. Duplicating above 10 first keeps the two
    // dup2 calls from clobbering each other when the originals are already 3 or 4.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::fcntl(ready_fd, libc::F_DUPFD, 10);
            let e = libc::fcntl(exit_fd, libc::F_DUPFD, 10);
            if r < 0 || e < 0 || libc::dup2(r, 3) < 0 || libc::dup2(e, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(ready_write);
    drop(exit_read);
    let mut byte = [0u8; 1];
    if !matches!(std::fs::File::from(ready_read).read(&mut byte), Ok(1)) {
        let status = child.wait()?;
        return Err(std::io::Error::other(format!("slirp4netns exited ({status}) before the network was up")));
    }
    let slirp = Slirp { child, exit_write: Some(exit_write) };
    std::fs::File::from(go_write).write_all(&[1])?;
    Ok(slirp)
}

/// A running slirp4netns; it stops when this is dropped (or the Ferry process exits, which
/// closes its exit pipe just the same).
#[derive(Debug)]
pub(crate) struct Slirp {
    child: std::process::Child,
    exit_write: Option<OwnedFd>,
}

impl Drop for Slirp {
    fn drop(&mut self) {
        self.exit_write = None;
        let _ = self.child.wait();
    }
}

/// The resolv.conf private-network containers get, written once into the store.
pub(crate) fn resolv_conf(store_root: &Path) -> Result<PathBuf> {
    let path = store_root.join("slirp-resolv.conf");
    let want = format!("nameserver {SLIRP_DNS}\n");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
        let tmp = store_root.join(format!("slirp-resolv.conf.{}", crate::store::unique_suffix()));
        std::fs::write(&tmp, want).ctx(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).ctx(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}
