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
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, IoContext, Result};

/// The resolver slirp4netns forwards to the host's.
const SLIRP_DNS: &str = "10.0.2.3";

/// Listeners of this process that take forwarded connections as they are: a forward whose
/// target is one of them hands each accepted connection over instead of copying its bytes
/// through a second connection to the target (two fewer copies and wake-ups per message).
static IN_PROCESS: std::sync::Mutex<Vec<(SocketAddr, tokio::sync::mpsc::UnboundedSender<tokio::net::TcpStream>)>> = std::sync::Mutex::new(Vec::new());

/// Connections that container forwards to `targets` (addresses this process itself serves)
/// arrive on the returned receiver, already accepted inside the container's namespace, instead
/// of being carried to the target. Dropping the receiver turns the hand-over off again.
pub fn serve_forwards_in_process(targets: &[SocketAddr]) -> tokio::sync::mpsc::UnboundedReceiver<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut registry = IN_PROCESS.lock().unwrap();
    registry.retain(|(addr, old)| !old.is_closed() && !targets.contains(addr));
    registry.extend(targets.iter().map(|addr| (*addr, tx.clone())));
    rx
}

/// Hands `stream` to the in-process listener of `target`, or gives it back when there is none.
fn hand_over(target: SocketAddr, stream: tokio::net::TcpStream) -> Option<tokio::net::TcpStream> {
    let tx = IN_PROCESS.lock().unwrap().iter().find(|(addr, _)| *addr == target).map(|(_, tx)| tx.clone());
    match tx {
        Some(tx) => tx.send(stream).err().map(|e| e.0),
        None => Some(stream),
    }
}

/// Ports of the host's loopback that every container with full network access also reaches at
/// the same address on its own loopback: sandbox tunnels, whose URLs name `127.0.0.1` when
/// Ferry serves on loopback. A container's loopback is its own, so without this a URL that
/// works for the client would not work from a function or another sandbox.
#[derive(Default)]
struct Shared {
    forwards: Vec<PortForward>,
    nets: Vec<std::sync::Weak<SharedNet>>,
}

static SHARED: std::sync::Mutex<Shared> = std::sync::Mutex::new(Shared { forwards: Vec::new(), nets: Vec::new() });

/// One container's namespace, and the shared ports served into it (by port).
#[derive(Debug)]
struct SharedNet {
    netns: std::fs::File,
    tasks: std::sync::Mutex<std::collections::HashMap<u16, tokio::task::JoinHandle<()>>>,
}

impl Drop for SharedNet {
    fn drop(&mut self) {
        for (_, t) in self.tasks.lock().unwrap().drain() {
            t.abort();
        }
    }
}

impl SharedNet {
    /// Serves `listener` (made inside this namespace) for the shared port `forward`, unless
    /// the port was withdrawn meanwhile.
    fn serve(&self, listener: std::net::TcpListener, forward: PortForward) {
        if !SHARED.lock().unwrap().forwards.contains(&forward) {
            return;
        }
        if let Some(task) = serve_listener(listener, forward.target) {
            if let Some(old) = self.tasks.lock().unwrap().insert(forward.port, task) {
                old.abort();
            }
        }
    }
}

/// A loopback port shared with containers (`share_loopback_port`); withdrawn when dropped.
#[derive(Debug)]
pub struct SharedLoopbackPort {
    forward: PortForward,
}

/// Makes `127.0.0.1:port` inside every container with full network access (running now or
/// started later) lead to `127.0.0.1:port` of the host, until the returned guard is dropped.
/// A container whose own program already listens on that port keeps its own.
pub fn share_loopback_port(port: u16) -> SharedLoopbackPort {
    let forward = PortForward { port, target: SocketAddr::from(([127, 0, 0, 1], port)) };
    let nets: Vec<std::sync::Arc<SharedNet>> = {
        let mut shared = SHARED.lock().unwrap();
        shared.forwards.push(forward);
        shared.nets.retain(|n| n.strong_count() > 0);
        shared.nets.iter().filter_map(|n| n.upgrade()).collect()
    };
    for net in nets {
        if let Some(listener) = listen_one(&net.netns, forward) {
            net.serve(listener, forward);
        }
    }
    SharedLoopbackPort { forward }
}

impl Drop for SharedLoopbackPort {
    fn drop(&mut self) {
        let nets: Vec<std::sync::Arc<SharedNet>> = {
            let mut shared = SHARED.lock().unwrap();
            if let Some(i) = shared.forwards.iter().position(|f| *f == self.forward) {
                shared.forwards.remove(i);
            }
            shared.nets.iter().filter_map(|n| n.upgrade()).collect()
        };
        for net in nets {
            if let Some(task) = net.tasks.lock().unwrap().remove(&self.forward.port) {
                task.abort();
            }
        }
    }
}

/// Accepts on `listener` and carries each connection to `target` (or hands it to this
/// process's own listener of `target`).
fn serve_listener(listener: std::net::TcpListener, target: SocketAddr) -> Option<tokio::task::JoinHandle<()>> {
    let listener = listener.set_nonblocking(true).and_then(|_| tokio::net::TcpListener::from_std(listener)).ok()?;
    Some(tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let _ = inbound.set_nodelay(true);
            let Some(mut inbound) = hand_over(target, inbound) else { continue };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

/// A port of the container's loopback that Ferry serves from the host: connections to
/// `127.0.0.1:port` inside are carried to `target` on the host. This is how a container in
/// its own network namespace reaches the control plane, and nothing else of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortForward {
    pub port: u16,
    pub target: SocketAddr,
}

/// The pipes init waits on, and the helper that will bring the network up.
pub(crate) struct NetworkGate {
    pub pid_write: OwnedFd,
    pub go_read: OwnedFd,
    helper: std::thread::JoinHandle<std::io::Result<NetState>>,
}

impl NetworkGate {
    /// `slirp`: outbound access through slirp4netns (else only loopback). `allowed`: with
    /// slirp, outbound is limited to these CIDRs (nftables rules in the namespace).
    pub(crate) fn open(pipe: impl Fn() -> Result<(OwnedFd, OwnedFd)>, slirp: bool, forwards: Vec<PortForward>, allowed: Option<Vec<String>>) -> Result<Self> {
        if slirp && crate::base::which("slirp4netns").is_none() {
            return Err(Error::ToolMissing { tool: "slirp4netns".into(), package: "slirp4netns".into() });
        }
        let rules = match &allowed {
            Some(cidrs) if slirp => {
                if crate::base::which("nft").is_none() {
                    return Err(Error::ToolMissing { tool: "nft".into(), package: "nftables".into() });
                }
                Some(allowlist_rules(cidrs).map_err(|message| Error::Spawn { program: String::new(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message) })?)
            }
            _ => None,
        };
        let (pid_read, pid_write) = pipe()?;
        let (go_read, go_write) = pipe()?;
        let (ready, exit) = (pipe()?, pipe()?);
        let helper = std::thread::Builder::new()
            .name("ferry-net".into())
            // Shared loopback ports only for full network access: not without a network, and
            // not past a CIDR allow-list (whose loopback rule would let them through).
            .spawn(move || bring_up(pid_read, go_write, slirp.then_some((ready, exit)), rules, forwards, slirp && allowed.is_none()))
            .ctx(|| "starting the network helper thread".into())?;
        Ok(NetworkGate { pid_write, go_read, helper })
    }

    /// Called after `spawn` returned (the parent's pipe ends already dropped): the helper has
    /// finished or is about to.
    pub(crate) fn finish(self) -> Result<NetState> {
        drop(self.pid_write);
        drop(self.go_read);
        match self.helper.join() {
            Ok(Ok(mut net)) => {
                net.serve_forwards();
                Ok(net)
            }
            Ok(Err(e)) => Err(Error::Io { context: "setting up the container's network".into(), source: e }),
            Err(_) => Err(Error::Io { context: "the network helper thread".into(), source: std::io::Error::other("panicked") }),
        }
    }
}

/// nftables rules for the container's namespace: outbound only to `cidrs` (plus loopback and
/// slirp's DNS forwarder); everything else is rejected at once.
fn allowlist_rules(cidrs: &[String]) -> std::result::Result<String, String> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for c in cidrs {
        let (addr, len) = c.split_once('/').unwrap_or((c.as_str(), ""));
        let ip: std::net::IpAddr = addr.trim().parse().map_err(|_| format!("`{c}` is not a CIDR block (e.g. 10.1.0.0/16)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = if len.is_empty() { max } else { len.parse().ok().filter(|l| *l <= max).ok_or_else(|| format!("`{c}` has a bad prefix length"))? };
        let block = format!("{ip}/{len}");
        if ip.is_ipv4() { v4.push(block) } else { v6.push(block) }
    }
    let mut rules = format!(
        "table inet ferry {{\n chain out {{\n  type filter hook output priority 0; policy drop;\n  oifname \"lo\" accept\n  ct state established,related accept\n  ip daddr {SLIRP_DNS} udp dport 53 accept\n  ip daddr {SLIRP_DNS} tcp dport 53 accept\n"
    );
    if !v4.is_empty() {
        rules += &format!("  ip daddr {{ {} }} accept\n", v4.join(", "));
    }
    if !v6.is_empty() {
        rules += &format!("  ip6 daddr {{ {} }} accept\n", v6.join(", "));
    }
    rules += "  meta l4proto tcp reject with tcp reset\n  reject\n }\n}\n";
    Ok(rules)
}

type PipePair = (OwnedFd, OwnedFd);

/// What the helper made: slirp4netns and the forwarded ports' listeners.
#[derive(Debug)]
pub(crate) struct NetState {
    _slirp: Option<Slirp>,
    listeners: Vec<(std::net::TcpListener, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// With full network access: the shared loopback ports served into this namespace.
    shared: Option<(std::sync::Arc<SharedNet>, Vec<(std::net::TcpListener, PortForward)>)>,
}

impl NetState {
    fn serve_forwards(&mut self) {
        for (listener, target) in self.listeners.drain(..) {
            self.tasks.extend(serve_listener(listener, target));
        }
        if let Some((net, listeners)) = &mut self.shared {
            for (listener, forward) in listeners.drain(..) {
                net.serve(listener, forward);
            }
        }
    }
}

impl Drop for NetState {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bring_up(pid_read: OwnedFd, go_write: OwnedFd, slirp: Option<(PipePair, PipePair)>, rules: Option<String>, forwards: Vec<PortForward>, share: bool) -> std::io::Result<NetState> {
    let mut pid = [0u8; 4];
    std::fs::File::from(pid_read).read_exact(&mut pid)?;
    let pid = i32::from_ne_bytes(pid);
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let slirp = match slirp {
        Some((ready, exit)) => Some(start_slirp(pid, ready, exit)?),
        None => None,
    };
    if let Some(rules) = rules {
        apply_rules(&netns, &rules)?;
    }
    let shared = if share {
        // Registered and listed under one lock: a port shared after this reaches the
        // namespace through the registration, one shared before through the list.
        let net = std::sync::Arc::new(SharedNet { netns: netns.try_clone()?, tasks: Default::default() });
        let ports: Vec<PortForward> = {
            let mut shared = SHARED.lock().unwrap();
            shared.nets.retain(|n| n.strong_count() > 0);
            shared.nets.push(std::sync::Arc::downgrade(&net));
            shared.forwards.iter().filter(|f| !forwards.iter().any(|own| own.port == f.port)).copied().collect()
        };
        // One listener at a time: a port the container cannot have (taken) is skipped.
        let listeners = ports.into_iter().filter_map(|f| listen_one(&netns, f).map(|l| (l, f))).collect();
        Some((net, listeners))
    } else {
        None
    };
    let listeners = if forwards.is_empty() { Vec::new() } else { listen_in(netns, &forwards)? };
    std::fs::File::from(go_write).write_all(&[1])?;
    Ok(NetState { _slirp: slirp, listeners, tasks: Vec::new(), shared })
}

/// `nft -f -` inside the container's network namespace.
fn apply_rules(netns: &std::fs::File, rules: &str) -> std::io::Result<()> {
    let fd = netns.as_raw_fd();
    let mut cmd = std::process::Command::new("nft");
    cmd.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: setns between fork and exec.
    unsafe {
        cmd.pre_exec(move || if libc::setns(fd, libc::CLONE_NEWNET) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
    }
    let mut child = cmd.spawn()?;
    child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("nft refused the CIDR allow-list: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(())
}

/// Listeners on the container's loopback, made from a thread that entered its namespace (a
/// socket stays in the namespace it was made in).
fn listen_in(netns: std::fs::File, forwards: &[PortForward]) -> std::io::Result<Vec<(std::net::TcpListener, SocketAddr)>> {
    let forwards = forwards.to_vec();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread, which ends here.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        forwards
            .iter()
            .map(|f| std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], f.port))).map(|l| (l, f.target)))
            .collect()
    })
    .join()
    .map_err(|_| std::io::Error::other("the listening thread panicked"))?
}

/// One shared port's listener in a namespace, or none when it cannot be had there.
fn listen_one(netns: &std::fs::File, forward: PortForward) -> Option<std::net::TcpListener> {
    let mut made = listen_in(netns.try_clone().ok()?, &[forward]).ok()?;
    made.pop().map(|(listener, _)| listener)
}

fn start_slirp(pid: i32, ready: PipePair, exit: PipePair) -> std::io::Result<Slirp> {
    let (ready_read, ready_write) = ready;
    let (exit_read, exit_write) = exit;
    let (ready_fd, exit_fd) = (ready_write.as_raw_fd(), exit_read.as_raw_fd());
    let mut cmd = std::process::Command::new("slirp4netns");
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback", "--ready-fd=3", "--exit-fd=4"])
        .arg(pid.to_string())
        // `eth0`: the modal client's web_server proxy connects to the address of eth0.
        .arg("eth0")
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
    Ok(Slirp { child, exit_write: Some(exit_write) })
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
