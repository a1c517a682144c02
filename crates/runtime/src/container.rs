//! Task containers: an overlay root over a layer chain, fresh namespaces, a cgroup.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cgroup::{ContainerCgroup, Limits};
use crate::disk::DiskWatch;
use crate::error::{Error, IoContext, Result};
use crate::gpu;
use crate::init::{InitBind, InitPlan};
use crate::launch::{self, JoinPlan, LaunchPlan};
use crate::logs::{pump, LogLine, Stream};
use crate::net::{NetState, NetworkGate, PortForward};
use crate::store::{remove_tree, unique_suffix, ImageStore, LayerId, LayerOrigin, LayerRecord};

/// A host path made visible inside the container.
#[derive(Debug, Clone, PartialEq)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container; missing directories are created in the
    /// container's writable layer.
    pub target: String,
    pub readonly: bool,
}

impl BindMount {
    pub fn read_only(source: impl Into<PathBuf>, target: impl Into<String>) -> Self {
        BindMount { source: source.into(), target: target.into(), readonly: true }
    }

    pub fn read_write(source: impl Into<PathBuf>, target: impl Into<String>) -> Self {
        BindMount { source: source.into(), target: target.into(), readonly: false }
    }
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// Share the host's network namespace: loopback plus outbound, and the host's
    /// /etc/resolv.conf and /etc/hosts. Listening ports are visible on the host.
    #[default]
    Host,
    /// A fresh network namespace with only loopback (Modal's `block_network=True`).
    Blocked,
    /// A fresh network namespace with outbound access through slirp4netns (a user-mode
    /// NAT); the host's own 127.0.0.1 services are out of reach. Needs the `slirp4netns`
    /// package; adds about 10-40 ms to the start.
    Private,
}

/// Where a container's writable layer lives. Either way it is discarded at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scratch {
    /// A directory under `<data_dir>/images/run/`: as much room as the disk has (models and
    /// datasets downloaded at run time fit), removed after exit.
    #[default]
    Disk,
    /// A tmpfs inside the container's mount namespace, charged to its memory limit and capped
    /// at that size; nothing to delete afterwards, not even after a crash.
    Memory,
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: LayerId,
    /// argv; empty runs the image's ENTRYPOINT + CMD. The program is looked up on the
    /// container's PATH.
    pub command: Vec<String>,
    /// Added to (and overriding) the image's ENV.
    pub env: Vec<(String, String)>,
    /// Defaults to the image's WORKDIR, then `/`. Created if missing.
    pub workdir: Option<String>,
    pub mounts: Vec<BindMount>,
    pub limits: Limits,
    pub network: Network,
    /// Whole GPUs given to the container (chosen by the caller, e.g. Ferry's GPU pool);
    /// refused with [`Error::GpuUnavailable`] when a device node is missing.
    pub gpus: Vec<gpu::GpuDevice>,
    pub hostname: String,
    /// Defaults to the image's USER, then root.
    pub user: Option<String>,
    /// Give the program a pipe as stdin ([`Container::stdin`]); otherwise /dev/null.
    pub stdin: bool,
    /// Hand out stdout and stderr as raw byte pipes ([`Container::output`]) instead of lines.
    pub raw_output: bool,
    /// Run the program on a pseudo-terminal of (rows, columns) as its controlling terminal
    /// ([`Container::pty`]); stdin, stdout and stderr are all that terminal.
    pub tty: Option<(u16, u16)>,
    pub scratch: Scratch,
    /// Ports of the container's own loopback served from the host (with a network of its
    /// own): how it reaches the control plane.
    pub forwards: Vec<PortForward>,
    /// With [`Network::Private`]: outbound only to these CIDR blocks (Modal's
    /// `cidr_allowlist`); `None` leaves outbound open. Needs the `nft` tool.
    pub allowed_cidrs: Option<Vec<String>>,
}

impl ContainerSpec {
    pub fn new(image: LayerId, command: Vec<String>) -> Self {
        ContainerSpec {
            image,
            command,
            env: Vec::new(),
            workdir: None,
            mounts: Vec::new(),
            limits: Limits::default(),
            network: Network::Host,
            gpus: Vec::new(),
            hostname: "ferry".into(),
            user: None,
            stdin: false,
            raw_output: false,
            tty: None,
            scratch: Scratch::Disk,
            forwards: Vec::new(),
            allowed_cidrs: None,
        }
    }
}

/// Signals a caller may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Modal's container entrypoint turns it into KeyboardInterrupt and runs `@exit`.
    Interrupt,
    Terminate,
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// How the container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal number when killed (the shell's convention).
    pub code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process in the container's memory cgroup.
    pub oom_killed: bool,
    /// The container's peak memory use (page cache included), where the kernel reports it.
    pub peak_memory_bytes: Option<u64>,
    /// The writable layer outgrew `Limits::disk_mib` and the container was killed.
    pub disk_exceeded: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == 0 && !self.oom_killed && !self.disk_exceeded
    }
}

/// Starts containers from layers in an [`ImageStore`].
///
/// ```no_run
/// # async fn demo(store: ferry_runtime::ImageStore, image: ferry_runtime::LayerId) -> ferry_runtime::Result<()> {
/// use ferry_runtime::{ContainerRuntime, ContainerSpec};
/// let runtime = ContainerRuntime::new(store);
/// let mut spec = ContainerSpec::new(image, vec!["python".into(), "-c".into(), "print('hi')".into()]);
/// spec.limits.memory_mib = Some(512);
/// let mut container = runtime.spawn(spec).await?;
/// let mut logs = container.logs().unwrap();
/// while let Some(line) = logs.recv().await {
///     println!("[{:?}] {}", line.stream, line.text);
/// }
/// let status = container.wait().await?;
/// assert!(status.success());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    store: ImageStore,
    /// An extra authority containers trust ([`ContainerRuntime::trusting`]).
    trust: Option<std::sync::Arc<crate::trust::Trust>>,
}

/// Everything a launch needs, shared by task containers and build steps.
pub(crate) struct LaunchRequest {
    pub lowers: Vec<PathBuf>,
    /// `Some`: a directory on disk (upper, work) that survives, as image builds need.
    /// `None`: a throw-away upper, on disk in the scratch dir or on tmpfs.
    pub upper_dir: Option<(PathBuf, PathBuf)>,
    pub disk_scratch: bool,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: Option<String>,
    pub binds: Vec<BindMount>,
    pub limits: Limits,
    pub network: Network,
    pub hostname: String,
    pub stdin: bool,
    pub raw_output: bool,
    pub tty: Option<(u16, u16)>,
    /// The layer a task container runs (`None` for build steps); snapshots build on it.
    pub image: Option<LayerId>,
    pub forwards: Vec<PortForward>,
    pub allowed_cidrs: Option<Vec<String>>,
}

impl ContainerRuntime {
    pub fn new(store: ImageStore) -> Self {
        ContainerRuntime { store, trust: None }
    }

    /// Containers also trust the certificate authority in `ca_pem` (a PEM file, read when a
    /// container of an image starts for the first time): the image's own CA bundle with the
    /// authority appended is bound read-only over the bundle's path, and `SSL_CERT_FILE` and
    /// `REQUESTS_CA_BUNDLE` point at it unless the image or the spec sets them. Images
    /// without a CA bundle are left as they are.
    pub fn trusting(mut self, ca_pem: Option<PathBuf>) -> Self {
        self.trust = ca_pem.map(|p| std::sync::Arc::new(crate::trust::Trust::new(p)));
        self
    }

    /// Removes what containers of dead Ferry processes left behind: their cgroups and
    /// scratch directories, and half-finished builds. (Their processes are already gone:
    /// containers die with the Ferry process that started them.) Call it once at start-up.
    /// Returns how many leftovers were removed.
    pub fn sweep_stale(&self) -> usize {
        let stale = |name: &str| name.starts_with("c-") && !crate::store::creator_alive(name);
        crate::cgroup::sweep(stale) + self.store.sweep_stale()
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Starts a container. Returns once the program has been exec'd (or failed to).
    pub async fn spawn(&self, spec: ContainerSpec) -> Result<Container> {
        let chain = self.store.chain(&spec.image)?;
        self.store.touch(&spec.image);
        let config = &chain[0].config;
        let mut binds = Vec::new();
        let mut env = config.env.clone();
        let mut gpu_library_dirs = Vec::new();
        if !spec.gpus.is_empty() {
            let plan = gpu::passthrough(&spec.gpus)?;
            binds.extend(plan.binds);
            for (k, v) in plan.env {
                upsert(&mut env, &k, v);
            }
            gpu_library_dirs = plan.library_dirs;
        }
        let network = crate::probe::effective_network(self.store.root(), spec.network, spec.allowed_cidrs.is_some());
        match network {
            Network::Host => binds.extend(host_network_files()),
            Network::Private => {
                binds.push(BindMount::read_only(crate::net::resolv_conf(self.store.root())?, "/etc/resolv.conf"));
                binds.extend(host_network_files().into_iter().filter(|b| b.target == "/etc/hosts"));
            }
            Network::Blocked => {}
        }
        if let Some(bundle) = self.trust.as_ref().and_then(|t| t.bundle(&self.store, &spec.image, &chain)) {
            binds.push(bundle.bind());
            for var in crate::trust::BUNDLE_VARS {
                if !env.iter().any(|(k, _)| k == var) {
                    env.push((var.to_string(), bundle.target.clone()));
                }
            }
        }
        binds.extend(spec.mounts.iter().cloned());
        for (k, v) in &spec.env {
            upsert(&mut env, k, v.clone());
        }
        if !gpu_library_dirs.is_empty() {
            // The driver's libraries join whatever library path the image or caller set.
            let current = env.iter().find(|(k, _)| k == "LD_LIBRARY_PATH").map(|(_, v)| v.clone());
            upsert(&mut env, "LD_LIBRARY_PATH", gpu::append_paths(current.as_deref(), &gpu_library_dirs));
        }
        let argv = if spec.command.is_empty() { config.default_command() } else { spec.command.clone() };
        if argv.is_empty() {
            return Err(Error::Spawn {
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given and the image has no CMD/ENTRYPOINT"),
            });
        }
        let mut limits = spec.limits.clone();
        limits.memory_mib = limits.memory_mib.or_else(crate::cgroup::default_memory_mib);
        limits.disk_mib = limits.disk_mib.or_else(|| crate::cgroup::default_disk_mib(self.store.root()));
        let request = LaunchRequest {
            lowers: chain.iter().map(|r| self.store.layer_fs(&r.id)).collect(),
            upper_dir: None,
            disk_scratch: spec.scratch == Scratch::Disk,
            argv,
            env,
            workdir: spec.workdir.clone().or_else(|| config.workdir.clone()).unwrap_or_else(|| "/".into()),
            user: spec.user.clone().or_else(|| config.user.clone()),
            binds,
            limits,
            network,
            hostname: spec.hostname.clone(),
            stdin: spec.stdin,
            raw_output: spec.raw_output,
            tty: spec.tty,
            image: Some(spec.image.clone()),
            forwards: spec.forwards.clone(),
            allowed_cidrs: spec.allowed_cidrs.clone(),
        };
        launch_container(&self.store, request).await
    }
}

/// Host files a container sharing the host network needs to resolve names.
pub(crate) fn host_network_files() -> Vec<BindMount> {
    ["/etc/resolv.conf", "/etc/hosts"]
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| BindMount::read_only(*p, *p))
        .collect()
}

fn upsert(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString> {
    CString::new(s.as_ref().to_vec()).map_err(|_| Error::Spawn {
        program: String::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")),
    })
}

fn path_cstring(p: &Path, what: &str) -> Result<CString> {
    cstring(p.as_os_str().as_bytes(), what)
}

/// Docker's defaults for variables every program expects.
fn default_env(env: &mut Vec<(String, String)>, user: Option<&str>) {
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") && matches!(user, None | Some("root") | Some("0")) {
        env.push(("HOME".into(), "/root".into()));
    }
}

/// The uid range of a container with these binds, `None` for no user namespace. Every
/// writable directory bind must be seen idmapped by the container's root: binds on ext4, xfs,
/// btrfs, tmpfs or f2fs are idmapped at start; a Volume view mounted for containers
/// (`shared_mount.rs`) is owned by the shared range, which the container then runs with. Any
/// other writable bind (an overlay or FUSE mount nobody prepared) would belong to nobody
/// inside: that container runs without a user namespace (still with its own other namespaces,
/// seccomp, no_new_privs and reduced capabilities), and the log says so.
fn id_range(store_root: &std::path::Path, binds: &[BindMount], program: &str) -> Option<crate::init::IdMap> {
    if !crate::probe::isolation(store_root).user_namespaces {
        return None;
    }
    let mut shared = false;
    for b in binds.iter().filter(|b| !b.readonly) {
        let Ok(c) = std::ffi::CString::new(b.source.as_os_str().as_encoded_bytes()) else { continue };
        // SAFETY: a NUL-terminated path and a zeroed out-buffer.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 || !std::fs::metadata(&b.source).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        // ext2/3/4, xfs, btrfs, tmpfs (6.3+), f2fs: file systems the kernel idmaps.
        const IDMAPPABLE: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010];
        if IDMAPPABLE.contains(&(fs.f_type as i64)) {
            continue;
        }
        if crate::shared_mount::shared_range_of(&b.source).is_some() {
            shared = true;
            continue;
        }
        tracing::info!(program, "container without a user namespace: its writable mount at {} cannot be idmapped (file system 0x{:x})", b.target, fs.f_type);
        return None;
    }
    Some(if shared { crate::shared_mount::SHARED_RANGE } else { crate::init::allocate_ids() })
}

pub(crate) async fn launch_container(store: &ImageStore, mut req: LaunchRequest) -> Result<Container> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    default_env(&mut req.env, req.user.as_deref());
    let id = format!("c-{}", unique_suffix());
    let scratch = store.run_dir().join(&id);
    std::fs::create_dir_all(&scratch).ctx(|| format!("creating {}", scratch.display()))?;
    let cgroup = match ContainerCgroup::create(&id, &req.limits) {
        Ok(c) => c,
        Err(e) => {
            remove_tree(&scratch);
            return Err(e);
        }
    };
    let defaults = ExecDefaults { env: req.env.clone(), workdir: req.workdir.clone(), user: req.user.clone() };
    // Only a task container's own disk scratch can be snapshotted.
    let snapshot = match (&req.image, req.upper_dir.is_none() && req.disk_scratch) {
        (Some(image), true) => Some(SnapshotSource { store: store.clone(), image: image.clone(), upper: scratch.join("upper") }),
        _ => None,
    };
    let (pty, tty_slave) = match req.tty {
        Some((rows, cols)) => match open_pty(0, rows, cols) {
            Ok((master, slave)) => (Some(master), Some(slave)),
            Err(e) => {
                cgroup.remove().await;
                remove_tree(&scratch);
                return Err(e);
            }
        },
        None => (None, None),
    };
    let disk_limit = req.limits.disk_mib.map(|m| m * 1024 * 1024);
    let disk_upper = match (&req.upper_dir, req.disk_scratch) {
        (Some((upper, _)), _) => Some(upper.clone()),
        (None, true) => Some(scratch.join("upper")),
        (None, false) => None,
    };
    match start(store, &scratch, &cgroup, req, tty_slave).await {
        Ok((process, network)) => {
            let disk_watch = match (disk_limit, disk_upper) {
                (Some(limit), Some(upper)) => crate::disk::DiskWatch::start(upper, limit, process.pid),
                _ => None,
            };
            Ok(Container { id, process, cgroup: Some(cgroup), scratch, defaults, snapshot, network, disk_watch, pty, exit: None })
        }
        Err(e) => {
            cgroup.remove().await;
            remove_tree(&scratch);
            Err(e)
        }
    }
}

fn invalid(program: &str, message: String) -> Error {
    Error::Spawn { program: program.to_string(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message) }
}

async fn start(store: &ImageStore, scratch: &Path, cgroup: &ContainerCgroup, req: LaunchRequest, tty_slave: Option<OwnedFd>) -> Result<(Supervised, Option<NetState>)> {
    let layers_dir = store.layers_dir();
    let mut lowers = Vec::with_capacity(req.lowers.len());
    for l in &req.lowers {
        // Relative paths keep the mount options under the kernel's one-page limit.
        let rel = l.strip_prefix(&layers_dir).map(Path::to_path_buf).unwrap_or_else(|_| l.clone());
        lowers.push(rel.to_string_lossy().into_owned());
    }
    if lowers.is_empty() {
        lowers.push(store.empty_dir().to_string_lossy().into_owned());
    }
    let root = scratch.join("root");
    let upper_dir = match (&req.upper_dir, req.disk_scratch) {
        (Some(dirs), _) => Some(dirs.clone()),
        (None, true) => Some((scratch.join("upper"), scratch.join("work"))),
        (None, false) => None,
    };
    let (tmpfs, upper, work) = match upper_dir {
        Some((upper, work)) => {
            for d in [&root, &upper, &work] {
                std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
            }
            (None, upper, work)
        }
        None => (Some(tmpfs_options(&req.limits)), scratch.join("upper"), scratch.join("work")),
    };
    let overlay_len = lowers.iter().map(|l| l.len() + 1).sum::<usize>() + upper.as_os_str().len() + work.as_os_str().len() + 64;
    if overlay_len >= 4000 {
        return Err(invalid(&req.argv[0], format!("image has {} layers, more than one overlay mount can stack; squash the image", lowers.len())));
    }
    let mut binds = Vec::with_capacity(req.binds.len());
    for b in &req.binds {
        if !b.target.starts_with('/') {
            return Err(invalid(&req.argv[0], format!("mount target `{}` must be an absolute path", b.target)));
        }
        let meta = std::fs::metadata(&b.source).ctx(|| format!("bind mount source {}", b.source.display()))?;
        binds.push(InitBind { source: b.source.clone(), target: b.target.clone(), readonly: b.readonly, is_dir: meta.is_dir() });
    }
    for (what, value) in [("hostname", req.hostname.as_str()), ("workdir", req.workdir.as_str())] {
        cstring(value, what)?;
    }
    for a in &req.argv {
        cstring(a, "argument")?;
    }
    let (status_read, status_write) = pipe()?;
    let gate = if req.network != Network::Host {
        Some(NetworkGate::open(pipe, req.network == Network::Private, req.forwards.clone(), req.allowed_cidrs.clone())?)
    } else {
        None
    };
    let plan = InitPlan {
        status_fd: status_write.as_raw_fd(),
        net_go_fd: gate.as_ref().map(|g| g.go_read.as_raw_fd()),
        scratch: scratch.to_path_buf(),
        tmpfs,
        store_root: store.root().to_path_buf(),
        layers_dir,
        lowers,
        upper,
        work,
        root,
        cgroup_procs: cgroup.procs_files(),
        new_net: req.network != Network::Host,
        hostname: req.hostname.clone(),
        binds,
        idmap: id_range(store.root(), &req.binds, req.argv.first().map(String::as_str).unwrap_or("")),
        workdir: req.workdir.clone(),
        user: req.user.clone(),
        argv: req.argv.clone(),
        env: req.env.clone(),
        controlling_tty: tty_slave.is_some(),
    };
    let plan_fd = plan_memfd(&plan)?;
    let launch = LaunchPlan {
        new_net: req.network != Network::Host,
        status_fd: status_write.as_raw_fd(),
        lifeline_fd: lifeline()?,
        net_gate: gate.as_ref().map(|g| (g.pid_write.as_raw_fd(), g.go_read.as_raw_fd())),
        plan_fd: plan_fd.as_raw_fd(),
        exe_fd: self_exe()?,
        id_map_line: plan.idmap.map(|m| CString::new(format!("0 {} {}\n", m.base, m.count)).expect("digits")),
    };
    let plan_fd_arg = CString::new(plan_fd.as_raw_fd().to_string()).expect("digits");
    let mut ns_arg = [0u8; 16];
    // The std child never execs this: init is re-executed from `exe_fd` instead.
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.env_clear().stdin(if req.stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(slave) = &tty_slave {
        let io = |what: &str| slave.try_clone().ctx(|| format!("duplicating the terminal for {what}"));
        cmd.stdin(Stdio::from(io("stdin")?)).stdout(Stdio::from(io("stdout")?)).stderr(Stdio::from(io("stderr")?));
    }
    // SAFETY: `enter_container` only makes raw syscalls on data prepared above (see launch.rs).
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &plan_fd;
            launch::enter_container(&launch, &plan_fd_arg, &mut ns_arg)
        });
    }
    let started = Supervised::start(cmd, &req.argv[0], status_read, status_write, req.raw_output, true).await;
    let Some(gate) = gate else { return started.map(|s| (s, None)) };
    match (started, gate.finish()) {
        (Ok(process), Ok(net)) => Ok((process, Some(net))),
        (Ok(process), Err(e)) => {
            let _ = process.signal(Signal::Kill, "a container without its network");
            Err(e)
        }
        // The helper's error says why the network failed; init only knows that it did.
        (Err(_), Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// The init plan in a memfd (no size limit, unlike a pipe written before the reader runs).
fn plan_memfd(plan: &InitPlan) -> Result<OwnedFd> {
    use std::io::{Seek, Write};
    let bytes = serde_json::to_vec(plan).map_err(|e| Error::Io { context: "encoding the init plan".into(), source: std::io::Error::other(e) })?;
    // SAFETY: memfd_create with a static name; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"ferry-init-plan".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Io { context: "creating the init plan".into(), source: std::io::Error::last_os_error() });
    }
    // SAFETY: a fresh fd.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&bytes).and_then(|_| file.rewind()).ctx(|| "writing the init plan".into())?;
    Ok(OwnedFd::from(file))
}

/// This executable, opened once: init is this program re-executed (see init.rs).
fn self_exe() -> Result<RawFd> {
    static EXE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = EXE.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::File::open("/proc/self/exe").ctx(|| "opening /proc/self/exe".into())?;
    // Keep the constructor that turns a re-executed binary into init in the link.
    std::hint::black_box(&crate::init::INIT_CONSTRUCTOR);
    Ok(EXE.get_or_init(|| OwnedFd::from(file)).as_raw_fd())
}

fn command(argv: &[String], env: &[(String, String)], stdin: bool) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn tmpfs_options(limits: &Limits) -> String {
    // The writable layer lives in memory and is charged to the container's memory cgroup;
    // its size cap only keeps an unlimited container from filling the host's RAM.
    match (limits.memory_mib, limits.disk_mib) {
        (Some(mem), Some(disk)) => format!("mode=0755,size={}m", mem.min(disk).max(64)),
        (Some(mib), None) | (None, Some(mib)) => format!("mode=0755,size={}m", mib.max(64)),
        (None, None) => "mode=0755,size=50%".into(),
    }
}

/// The read end of a pipe whose write end only this process holds (both ends close on exec,
/// and launch.rs closes them in its forked helpers): container monitors see EOF on it when
/// the Ferry process exits, however it exits.
fn lifeline() -> Result<RawFd> {
    static LIFELINE: std::sync::OnceLock<(OwnedFd, OwnedFd)> = std::sync::OnceLock::new();
    if let Some((read, _)) = LIFELINE.get() {
        return Ok(read.as_raw_fd());
    }
    let fds = pipe()?;
    Ok(LIFELINE.get_or_init(|| fds).0.as_raw_fd())
}

/// A pseudo-terminal pair (master, slave) of the given size (0 keeps the kernel's default),
/// made in the container's own devpts (through its `/dev/ptmx`) so `tty` and `ttyname` work
/// inside; the host's devpts is the fallback.
fn open_pty(container_pid: libc::pid_t, rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    let fail = |what: &str| Error::Io { context: format!("opening a pseudo-terminal ({what})"), source: std::io::Error::last_os_error() };
    let ptmx = CString::new(format!("/proc/{container_pid}/root/dev/ptmx")).expect("no NUL");
    // SAFETY: open with a NUL-terminated path; the fd is ours. Pid 0: no container yet.
    let master = if container_pid > 0 { unsafe { libc::open(ptmx.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) } } else { -1 };
    if master >= 0 {
        // SAFETY: a fresh fd.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let unlock: libc::c_int = 0;
        // SAFETY: ioctls on the master with the argument types the kernel expects.
        unsafe {
            if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
                return Err(fail("unlock"));
            }
            let slave = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if slave < 0 {
                return Err(fail("peer"));
            }
            let slave = OwnedFd::from_raw_fd(slave);
            if rows > 0 && cols > 0 {
                libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
            }
            return Ok((master, slave));
        }
    }
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two fds; the name buffer and termios may be null.
    let r = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    if r < 0 {
        return Err(fail("openpty"));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((master, slave))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r < 0 {
        return Err(Error::Io { context: "creating the status pipe".into(), source: std::io::Error::last_os_error() });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A process started through launch.rs: the std child we track, the pid of the process that
/// matters (the container's init, or an exec'd program), its status pipe and output.
#[derive(Debug)]
struct Supervised {
    child: tokio::process::Child,
    status: tokio::net::unix::pipe::Receiver,
    /// Status records read so far; kept across a cancelled `finish`.
    status_buf: Vec<u8>,
    pid: i32,
    pidfd: Option<OwnedFd>,
    stdin: Option<tokio::process::ChildStdin>,
    logs: Option<mpsc::UnboundedReceiver<LogLine>>,
    /// stdout and stderr as pipes, when the spec asked for raw output.
    raw: Option<RawOutput>,
    pumps: Vec<JoinHandle<()>>,
    /// Set once the process has been waited for.
    done: Option<(i32, Option<i32>)>,
}

impl Supervised {
    /// `expect_exec`: the program is started by a re-executed init, which reports that it did
    /// (or why it could not) on the status pipe after the pid record.
    async fn start(mut cmd: tokio::process::Command, program: &str, status_read: OwnedFd, status_write: OwnedFd, raw_output: bool, expect_exec: bool) -> Result<Self> {
        // `spawn` blocks until the program is exec'd (and, for a private network, until
        // slirp4netns is up): keep that off the async worker threads.
        let spawned = match tokio::task::spawn_blocking(move || cmd.spawn()).await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(format!("the spawning thread failed: {e}"))),
        };
        drop(status_write);
        let mut status = tokio::net::unix::pipe::Receiver::from_owned_fd(status_read).ctx(|| "status pipe".into())?;
        let mut child = match spawned {
            Ok(child) => child,
            Err(source) => {
                // std has reaped the failed child, so every writer is gone and the pipe ends.
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), status.read_to_end(&mut buf)).await;
                let detail = launch::parse_records(&buf).into_iter().find_map(|(_, _, message)| message);
                let source = match detail {
                    Some(message) => std::io::Error::new(source.kind(), message),
                    None => source,
                };
                return Err(Error::Spawn { program: program.to_string(), source });
            }
        };
        // Records: the pid of init (from the monitor) and, for a re-executed init, EXEC once
        // the program runs or FAIL with the reason; the two writers may come in either order.
        let (mut pid, mut started, mut failure) = (None, !expect_exec, None);
        while pid.is_none() || (!started && failure.is_none()) {
            let mut header = [0u8; 8];
            if status.read_exact(&mut header).await.is_err() {
                break;
            }
            let value = i32::from_ne_bytes(header[4..].try_into().expect("4 bytes"));
            match <[u8; 4]>::try_from(&header[..4]).expect("4 bytes") {
                launch::TAG_INIT_PID => pid = Some(value),
                launch::TAG_EXEC => started = true,
                launch::TAG_FAIL => {
                    let mut text = vec![0u8; value.clamp(0, 4096) as usize];
                    let _ = status.read_exact(&mut text).await;
                    failure = Some(String::from_utf8_lossy(&text).into_owned());
                }
                _ => {}
            }
        }
        let pid = match (pid, started, failure) {
            (Some(pid), true, None) => pid,
            (_, _, failure) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let message = failure.unwrap_or_else(|| "the container's init exited during set-up".into());
                let kind = if message.starts_with("No such file or directory") { std::io::ErrorKind::NotFound } else { std::io::ErrorKind::Other };
                return Err(Error::Spawn { program: program.to_string(), source: std::io::Error::new(kind, message) });
            }
        };
        // SAFETY: pidfd_open takes a pid and flags; the fd it returns is ours.
        let pidfd = unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as RawFd;
            (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
        };
        let mut pumps = Vec::new();
        let (logs, raw) = if raw_output {
            let raw = match (child.stdout.take(), child.stderr.take()) {
                (Some(stdout), Some(stderr)) => Some(RawOutput { stdout, stderr }),
                _ => None,
            };
            (None, raw)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            if let Some(out) = child.stdout.take() {
                pumps.push(tokio::spawn(pump(out, Stream::Stdout, tx.clone())));
            }
            if let Some(err) = child.stderr.take() {
                pumps.push(tokio::spawn(pump(err, Stream::Stderr, tx)));
            }
            (Some(rx), None)
        };
        let stdin = child.stdin.take();
        Ok(Supervised { child, status, status_buf: Vec::new(), pid, pidfd, stdin, logs, raw, pumps, done: None })
    }

    fn signal(&self, signal: Signal, what: &str) -> Result<()> {
        if self.done.is_some() {
            return Ok(());
        }
        let r = match &self.pidfd {
            // SAFETY: a valid pidfd, a signal number, no siginfo.
            Some(fd) => unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal.number(), std::ptr::null::<u8>(), 0) as i32
            },
            // SAFETY: plain kill(2).
            None => unsafe { libc::kill(self.pid, signal.number()) },
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::Io { context: format!("signalling {what}"), source: e });
            }
        }
        Ok(())
    }

    /// Waits for exit and for the output to drain; returns (code, signal).
    async fn finish(&mut self, what: &str) -> Result<(i32, Option<i32>)> {
        if let Some(done) = self.done {
            return Ok(done);
        }
        self.stdin = None;
        let supervisor = self.child.wait().await.ctx(|| format!("waiting for {what}"))?;
        let _ = self.status.read_to_end(&mut self.status_buf).await;
        let payload =
            launch::parse_records(&self.status_buf).into_iter().find(|(tag, _, _)| *tag == launch::TAG_EXIT).map(|(_, status, _)| status);
        let done = match payload {
            Some(st) if libc::WIFEXITED(st) => (libc::WEXITSTATUS(st), None),
            Some(st) if libc::WIFSIGNALED(st) => (128 + libc::WTERMSIG(st), Some(libc::WTERMSIG(st))),
            // The supervisor itself died (SIGKILL from `kill`, or the OOM killer picked it).
            _ => {
                use std::os::unix::process::ExitStatusExt;
                match (supervisor.code(), supervisor.signal()) {
                    (Some(c), _) if c > 128 => (c, Some(c - 128)),
                    (Some(c), _) => (c, None),
                    (None, Some(s)) => (128 + s, Some(s)),
                    _ => (255, None),
                }
            }
        };
        self.logs = None;
        self.raw = None;
        for pump in self.pumps.drain(..) {
            let _ = pump.await;
        }
        self.done = Some(done);
        Ok(done)
    }
}

/// What an `exec` inherits unless it says otherwise.
#[derive(Debug, Clone)]
struct ExecDefaults {
    env: Vec<(String, String)>,
    workdir: String,
    user: Option<String>,
}

/// A running (or finished) container.
#[derive(Debug)]
pub struct Container {
    id: String,
    process: Supervised,
    /// `None` only after `Drop` handed it to the clean-up task.
    cgroup: Option<ContainerCgroup>,
    scratch: PathBuf,
    defaults: ExecDefaults,
    snapshot: Option<SnapshotSource>,
    /// The private network's slirp4netns and port forwards, stopped when the container ends.
    network: Option<NetState>,
    /// Watches the writable layer's size against `Limits::disk_mib`.
    disk_watch: Option<DiskWatch>,
    /// The terminal's master side, when the spec asked for a `tty`.
    pty: Option<OwnedFd>,
    exit: Option<ExitStatus>,
}

/// What a snapshot of a container's writable layer needs.
#[derive(Debug)]
struct SnapshotSource {
    store: ImageStore,
    image: LayerId,
    upper: PathBuf,
}

impl SnapshotSource {
    /// Makes a layer on top of the image from `fs` (moved if `take`, else copied).
    async fn commit(&self, container: &str, take: bool) -> Result<LayerId> {
        let staging = self.store.staging_dir("snapshot")?;
        let fs = staging.join("fs");
        if take {
            std::fs::rename(&self.upper, &fs).ctx(|| format!("moving {}", self.upper.display()))?;
        } else {
            // cp -a keeps overlayfs whiteouts (0/0 device nodes) and opaque-directory xattrs.
            let status = tokio::process::Command::new("cp")
                .arg("-a")
                .arg(&self.upper)
                .arg(&fs)
                .stderr(Stdio::piped())
                .output()
                .await
                .ctx(|| "starting cp for a snapshot".into())?;
            if !status.status.success() {
                remove_tree(&staging);
                return Err(Error::Io {
                    context: format!("copying the writable layer of container {container}"),
                    source: std::io::Error::other(String::from_utf8_lossy(&status.stderr).trim().to_string()),
                });
            }
        }
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, format!("ferry-snapshot-v1\0{}\0{container}\0{}", self.image, unique_suffix()));
        let id = LayerId::from_hasher(h);
        let record = LayerRecord {
            id: id.clone(),
            parent: Some(self.image.clone()),
            config: self.store.layer(&self.image)?.config,
            origin: LayerOrigin::Snapshot { container: container.to_string() },
            created_at: crate::store::now_unix(),
        };
        if let Err(e) = self.store.commit(&staging, &record) {
            remove_tree(&staging);
            return Err(e);
        }
        Ok(id)
    }
}

impl Container {
    /// Ferry's name for this container (also its cgroup name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host pid of the container's init (pid 1 inside).
    pub fn pid(&self) -> u32 {
        self.process.pid as u32
    }

    /// Takes the stream of stdout/stderr lines. It ends when the container's last process
    /// has closed its output. Lines not taken before [`Container::wait`] are discarded.
    pub fn logs(&mut self) -> Option<mpsc::UnboundedReceiver<LogLine>> {
        self.process.logs.take()
    }

    /// Takes the program's stdin, if the spec asked for one. Dropping it sends EOF.
    pub fn stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.process.stdin.take()
    }

    /// Takes stdout and stderr as byte pipes, if the spec asked for `raw_output`. Read them
    /// to EOF: a full pipe blocks the program.
    pub fn output(&mut self) -> Option<RawOutput> {
        self.process.raw.take()
    }

    /// Takes the terminal's master side, if the spec asked for a `tty`.
    pub fn pty(&mut self) -> Option<OwnedFd> {
        self.pty.take()
    }

    /// Sends a signal to the container's main process (SIGKILL ends the whole container).
    /// Signalling a container that already exited is not an error.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        self.process.signal(signal, &format!("container {}", self.id))
    }

    /// Starts another process inside the running container (same namespaces, root and
    /// cgroup), like `docker exec`. It inherits the container's env, workdir and user unless
    /// `spec` overrides them; it is killed when the container ends.
    pub async fn exec(&self, spec: ExecSpec) -> Result<Process> {
        if self.exit.is_some() {
            return Err(Error::ContainerExited(self.id.clone()));
        }
        let program = spec.command.first().cloned().ok_or_else(|| invalid("", "exec needs a command".into()))?;
        let mut env = self.defaults.env.clone();
        for (k, v) in &spec.env {
            upsert(&mut env, k, v.clone());
        }
        let mut ns_fds = Vec::new();
        for ns in ["user", "ipc", "uts", "net", "pid", "mnt"] {
            let path = format!("/proc/{}/ns/{ns}", self.process.pid);
            let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::ContainerExited(self.id.clone()),
                _ => Error::Io { context: format!("opening {path}"), source: e },
            })?;
            ns_fds.push(OwnedFd::from(file));
        }
        let cgroup = self.cgroup.as_ref().expect("cgroup present until drop");
        let (status_read, status_write) = pipe()?;
        // The user namespace is joined by the program alone, and only when it is the
        // container's own (FERRY_USERNS=0 leaves containers in the host's).
        let user_ns = ns_fds.remove(0);
        let own_userns = std::fs::metadata(format!("/proc/{}/ns/user", self.process.pid)).map(|m| m.ino()).ok()
            != std::fs::metadata("/proc/self/ns/user").map(|m| m.ino()).ok();
        let plan = JoinPlan {
            userns_fd: own_userns.then(|| user_ns.as_raw_fd()),
            ns_fds: ns_fds.iter().map(|f| f.as_raw_fd()).collect(),
            cgroup_procs: cgroup.procs_files().iter().map(|p| path_cstring(p, "cgroup path")).collect::<Result<_>>()?,
            workdir: cstring(spec.workdir.as_deref().unwrap_or(&self.defaults.workdir), "workdir")?,
            user: spec.user.clone().or_else(|| self.defaults.user.clone()),
            status_fd: status_write.as_raw_fd(),
            controlling_tty: spec.tty.is_some(),
        };
        let mut cmd = command(&spec.command, &env, spec.stdin);
        let pty = match spec.tty {
            Some((rows, cols)) => {
                let (master, slave) = open_pty(self.process.pid, rows, cols)?;
                let io = |what: &str| slave.try_clone().ctx(|| format!("duplicating the terminal for {what}"));
                cmd.stdin(Stdio::from(io("stdin")?)).stdout(Stdio::from(io("stdout")?)).stderr(Stdio::from(io("stderr")?));
                Some(master)
            }
            None => None,
        };
        // SAFETY: `join_container` only makes raw syscalls on data prepared above.
        unsafe {
            cmd.pre_exec(move || launch::join_container(&plan));
        }
        let process = Supervised::start(cmd, &program, status_read, status_write, spec.raw_output, false).await?;
        drop(ns_fds);
        drop(user_ns);
        Ok(Process { container: self.id.clone(), process, pty })
    }

    /// Waits for the main process to exit (which ends the container), then releases its
    /// cgroup and scratch space. Calling it again returns the same status.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let exit = self.wait_process().await?;
        self.remove_scratch().await;
        Ok(exit)
    }

    /// A container may have written gigabytes: delete off the async threads.
    async fn remove_scratch(&self) {
        let scratch = self.scratch.clone();
        let _ = tokio::task::spawn_blocking(move || remove_tree(&scratch)).await;
    }

    async fn wait_process(&mut self) -> Result<ExitStatus> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let what = format!("container {}", self.id);
        let (code, signal) = self.process.finish(&what).await?;
        let cgroup = self.cgroup.as_ref().expect("cgroup present until drop");
        let peak_memory_bytes = cgroup.peak_memory_bytes();
        let disk_exceeded = self.disk_watch.take().is_some_and(|w| w.exceeded());
        let exit = ExitStatus { code, signal, oom_killed: cgroup.oom_killed(), peak_memory_bytes, disk_exceeded };
        tracing::debug!(container = %self.id, ?exit, "container exited");
        cgroup.remove().await;
        self.network = None;
        self.exit = Some(exit);
        Ok(exit)
    }

    /// Copies what the container has written so far into a new layer on top of its image
    /// (Modal's `Sandbox.snapshot_filesystem`); the container keeps running. The layer also
    /// holds the (empty) mount points of the container's binds. Needs [`Scratch::Disk`].
    pub async fn snapshot(&self) -> Result<LayerId> {
        if self.exit.is_some() {
            return Err(Error::ContainerExited(self.id.clone()));
        }
        let source = self.snapshot.as_ref().ok_or_else(|| Error::NoSnapshot(self.id.clone()))?;
        source.commit(&self.id, false).await
    }

    /// Waits for the container, then turns everything it wrote into a new layer on top of
    /// its image, whatever the exit status (check it, and [`ImageStore::remove`] the layer if
    /// the run failed). This is how a build function (`Image.run_function`) becomes a layer.
    pub async fn wait_into_layer(&mut self) -> Result<(ExitStatus, LayerId)> {
        let source = self.snapshot.take().ok_or_else(|| Error::NoSnapshot(self.id.clone()))?;
        let exit = self.wait_process().await?;
        let layer = source.commit(&self.id, true).await;
        self.remove_scratch().await;
        Ok((exit, layer?))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // An abandoned container must not outlive its handle, nor leave its cgroup behind.
        // SIGKILL of init ends the container within milliseconds, so wait for it right here:
        // a clean-up task could be lost with a runtime that is shutting down.
        let _ = self.kill(Signal::Kill);
        if let Some(fd) = &self.process.pidfd {
            let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; a pidfd becomes readable when the process exits.
            unsafe { libc::poll(&mut poll, 1, 2000) };
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove_now();
        }
        remove_tree(&self.scratch);
    }
}

/// A process to start in a running container with [`Container::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub command: Vec<String>,
    /// Added to (and overriding) the container's environment.
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub stdin: bool,
    /// Hand out stdout and stderr as byte pipes ([`Process::output`]) instead of lines.
    pub raw_output: bool,
    /// Run the program on a new pseudo-terminal of (rows, columns) as its controlling
    /// terminal ([`Process::pty`]); stdin/stdout/stderr are all that terminal.
    pub tty: Option<(u16, u16)>,
}

/// A process's stdout and stderr as byte pipes.
#[derive(Debug)]
pub struct RawOutput {
    pub stdout: tokio::process::ChildStdout,
    pub stderr: tokio::process::ChildStderr,
}

impl ExecSpec {
    pub fn new(command: Vec<String>) -> Self {
        ExecSpec { command, ..Default::default() }
    }
}

/// A process started by [`Container::exec`].
#[derive(Debug)]
pub struct Process {
    container: String,
    process: Supervised,
    pty: Option<OwnedFd>,
}

impl Process {
    /// Host pid of the process.
    pub fn pid(&self) -> u32 {
        self.process.pid as u32
    }

    pub fn logs(&mut self) -> Option<mpsc::UnboundedReceiver<LogLine>> {
        self.process.logs.take()
    }

    pub fn stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.process.stdin.take()
    }

    /// Takes stdout and stderr as byte pipes, if the spec asked for `raw_output`.
    pub fn output(&mut self) -> Option<RawOutput> {
        self.process.raw.take()
    }

    /// Takes the terminal's master side, if the spec asked for a `tty`: the program's input
    /// is written to it and its output (stdout and stderr together) read from it.
    pub fn pty(&mut self) -> Option<OwnedFd> {
        self.pty.take()
    }

    pub fn kill(&self, signal: Signal) -> Result<()> {
        self.process.signal(signal, &format!("a process in container {}", self.container))
    }

    /// Waits for the process to exit. `oom_killed` is always false here: the container's
    /// memory cgroup is shared, so read OOM kills from the container's own status.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let what = format!("a process in container {}", self.container);
        let (code, signal) = self.process.finish(&what).await?;
        Ok(ExitStatus { code, signal, oom_killed: false, peak_memory_bytes: None, disk_exceeded: false })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.process.done.is_none() {
            let _ = self.process.signal(Signal::Kill, "an abandoned exec");
        }
    }
}
