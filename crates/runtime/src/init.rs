//! The container's pid 1: its own process image, not a fork of the server.
//!
//! The monitor (a fork of the Ferry process, see `launch.rs`) creates the namespaces, forks,
//! and the child immediately re-executes the running executable (`/proc/self/exe`, opened
//! once by the parent) with `argv[0] = "ferry-init"`. A constructor in `.init_array` catches
//! that argv before `main` runs, so every binary that links this crate (the `ferry` binary,
//! its tests and examples) can serve as init: no second binary to install or find, and no
//! copy of the server's memory (keys, tokens, other tenants' data) inside any container.
//!
//! Init reads its [`InitPlan`] from a memfd, then, still as root of the host in namespaces
//! that the host's user namespace owns:
//!
//! 1. joins the container's cgroups and makes a user namespace whose uid/gid 0..65536 map to
//!    an unprivileged range of the host (a short-lived child unshares it; init writes the
//!    maps through a private `/proc`);
//! 2. attaches an *idmapped* view of the image store (disk uid 0 = the container's root), so
//!    layers stay owned by 0 on disk and are shared by every container whatever its range;
//! 3. mounts the overlay root, /proc (with OCI's masked and read-only paths), read-only /sys,
//!    a fresh /dev, the binds (idmapped where the file system allows), `pivot_root`s;
//! 4. waits for the network helper, joins the user namespace as its root, drops `dumpable`,
//!    and forks the program: capabilities cut to a small set, `no_new_privs`, the seccomp
//!    allow-list, then `execve`.
//!
//! Init then reaps, forwards signals and reports the program's exit on the status pipe.
//! Because the mount, pid, network, ipc and uts namespaces belong to the host's user
//! namespace, root inside the container holds no capability over any of them (no mounts, no
//! interface changes, no hostname), only over its own files and processes.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::launch::{block_all_signals, init_loop, prepare_payload, report_failure, step, write_record, TAG_EXEC};

/// `argv[0]` of a re-executed init.
pub(crate) const INIT_ARGV0: &CStr = c"ferry-init";

/// The uid/gid range a container's ids 0..COUNT map to on the host.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct IdMap {
    pub base: u32,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitBind {
    pub source: PathBuf,
    pub target: String,
    pub readonly: bool,
    pub is_dir: bool,
}

/// Everything init needs, serialized by the parent before the fork.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitPlan {
    pub status_fd: RawFd,
    /// Read end of the network gate: one byte once the network is up.
    pub net_go_fd: Option<RawFd>,
    pub scratch: PathBuf,
    /// `Some(options)`: the writable layer is a tmpfs mounted on `scratch`.
    pub tmpfs: Option<String>,
    pub store_root: PathBuf,
    pub layers_dir: PathBuf,
    /// Relative to `layers_dir`, top first.
    pub lowers: Vec<String>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub root: PathBuf,
    pub cgroup_procs: Vec<PathBuf>,
    pub new_net: bool,
    pub hostname: String,
    pub binds: Vec<InitBind>,
    pub idmap: Option<IdMap>,
    pub workdir: String,
    pub user: Option<String>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub controlling_tty: bool,
}

#[used]
#[link_section = ".init_array"]
pub(crate) static INIT_CONSTRUCTOR: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) = constructor;

extern "C" fn constructor(argc: libc::c_int, argv: *const *const libc::c_char, _envp: *const *const libc::c_char) {
    if !(2..=3).contains(&argc) || argv.is_null() {
        return;
    }
    // SAFETY: glibc passes the process's argv, argc entries long, to .init_array functions.
    unsafe {
        let first = *argv;
        if first.is_null() {
            return;
        }
        if argc == 3 && CStr::from_ptr(first) == crate::probe::PROBE_ARGV0 && !(*argv.add(1)).is_null() && !(*argv.add(2)).is_null() {
            crate::probe::run_probe(CStr::from_ptr(*argv.add(1)), CStr::from_ptr(*argv.add(2)))
        }
        if CStr::from_ptr(first) != INIT_ARGV0 {
            return;
        }
        let second = *argv.add(1);
        if second.is_null() {
            return;
        }
        let parse = |p: *const libc::c_char| CStr::from_ptr(p).to_str().ok().and_then(|s| s.parse::<RawFd>().ok());
        let Some(fd) = parse(second) else { return };
        let userns = if argc == 3 && !(*argv.add(2)).is_null() { parse(*argv.add(2)) } else { None };
        run(fd, userns)
    }
}

unsafe fn run(plan_fd: RawFd, userns: Option<RawFd>) -> ! {
    let mut bytes = Vec::new();
    let mut file = std::fs::File::from_raw_fd(plan_fd);
    let plan: Option<InitPlan> = file.read_to_end(&mut bytes).ok().and_then(|_| serde_json::from_slice(&bytes).ok());
    drop(file);
    let Some(plan) = plan else { libc::_exit(126) };
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    let status_fd = plan.status_fd;
    if let Err(e) = setup(&plan, userns) {
        fail(status_fd, e)
    }
    if let Err(e) = become_container_root(userns) {
        fail(status_fd, e)
    }
    let all = block_all_signals();
    let (exec_read, exec_write) = match pipe() {
        Ok(p) => p,
        Err(e) => fail(status_fd, e),
    };
    let payload = libc::fork();
    if payload < 0 {
        fail(status_fd, io::Error::last_os_error())
    }
    if payload == 0 {
        libc::close(exec_read);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        default_signal_dispositions();
        let e = start_payload(&plan);
        report_failure(plan.status_fd, &e);
        libc::write(exec_write, b"x".as_ptr().cast(), 1);
        libc::_exit(127);
    }
    libc::close(exec_write);
    // EOF: the program was exec'd (the pipe is close-on-exec); a byte: it failed and said why.
    let mut byte = 0u8;
    let n = loop {
        let n = libc::read(exec_read, (&mut byte as *mut u8).cast(), 1);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break n;
    };
    libc::close(exec_read);
    if n != 0 {
        let mut status = 0;
        libc::waitpid(payload, &mut status, 0);
        libc::_exit(127);
    }
    write_record(plan.status_fd, TAG_EXEC, payload);
    init_loop(plan.status_fd, payload, &all)
}

/// Every signal back to its default action. Handlers end at `execve` anyway, but an ignored
/// signal stays ignored across it: a server started in the background of a shell (`nohup ferry
/// serve &` ignores SIGINT, SIGQUIT and SIGHUP) must not hand that on to the programs in its
/// containers, whose Ctrl-C and input cancellation rely on SIGINT.
pub(crate) unsafe fn default_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

unsafe fn fail(status_fd: RawFd, e: io::Error) -> ! {
    report_failure(status_fd, &e);
    libc::_exit(127)
}

/// The program's side of the fork: only returns with the reason it could not be exec'd.
unsafe fn start_payload(plan: &InitPlan) -> io::Error {
    if plan.controlling_tty {
        if let Err(e) = step(libc::setsid(), "setsid").and_then(|_| step(libc::ioctl(0, libc::TIOCSCTTY, 0), "set the controlling terminal")) {
            return e;
        }
    }
    let workdir = match CString::new(plan.workdir.as_bytes()) {
        Ok(w) => w,
        Err(_) => return io::Error::new(io::ErrorKind::InvalidInput, "workdir contains a NUL byte"),
    };
    if let Err(e) = prepare_payload(&workdir, plan.user.as_deref()) {
        return e;
    }
    exec_program(&plan.argv, &plan.env)
}

/// `execvpe`: the program is looked up on the container's PATH.
unsafe fn exec_program(argv: &[String], env: &[(String, String)]) -> io::Error {
    let Some(program) = argv.first() else { return io::Error::new(io::ErrorKind::InvalidInput, "no command") };
    let cargs: Vec<CString> = match argv.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(v) => v,
        Err(_) => return io::Error::new(io::ErrorKind::InvalidInput, "an argument contains a NUL byte"),
    };
    let cenv: Vec<CString> = env.iter().filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()).collect();
    let mut argp: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = cenv.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.clone()]
    } else {
        let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("/usr/local/bin:/usr/bin:/bin");
        path.split(':').map(|d| if d.is_empty() { program.clone() } else { format!("{d}/{program}") }).collect()
    };
    let mut error = io::Error::from_raw_os_error(libc::ENOENT);
    for candidate in candidates {
        let Ok(c) = CString::new(candidate) else { continue };
        libc::execve(c.as_ptr(), argp.as_ptr(), envp.as_ptr());
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
            Some(libc::EACCES) => error = e,
            _ => return e,
        }
    }
    error
}

fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array.
    step(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, "pipe")?;
    Ok((fds[0], fds[1]))
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

// The new mount API (`open_tree`, `mount_setattr`, `move_mount`), shared with `inject.rs`.
pub(crate) const OPEN_TREE_CLONE: libc::c_uint = 1;
pub(crate) const AT_RECURSIVE: libc::c_uint = 0x8000;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
pub(crate) struct MountAttr {
    pub(crate) attr_set: u64,
    pub(crate) attr_clr: u64,
    pub(crate) propagation: u64,
    pub(crate) userns_fd: u64,
}

/// A detached copy of the mount at `source` (recursive or not), idmapped with `userns` and/or
/// read-only as asked.
unsafe fn clone_tree(source: &CStr, recursive: bool, readonly: bool, userns: Option<RawFd>) -> io::Result<RawFd> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    let fd = libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source.as_ptr(), flags) as RawFd;
    step(fd, "open bind source")?;
    let mut attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    if readonly {
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    }
    if let Some(ns) = userns {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = ns as u64;
    }
    if attr.attr_set != 0 {
        let r = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) as libc::c_int;
        if r < 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(io::Error::new(e.kind(), format!("{} a mount: {e}", if userns.is_some() { "idmap" } else { "make read-only" })));
        }
    }
    Ok(fd)
}

unsafe fn attach(fd: RawFd, target: &CStr) -> io::Result<()> {
    let r = libc::syscall(libc::SYS_move_mount, fd, c"".as_ptr(), libc::AT_FDCWD, target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) as libc::c_int;
    libc::close(fd);
    step(r, "attach a mount")
}

/// Everything before the program, as root of the host; `userns` (made by the monitor) is
/// the container's user namespace, used for idmapped mounts and joined afterwards.
unsafe fn setup(plan: &InitPlan, userns: Option<RawFd>) -> io::Result<()> {
    // Nothing we mount may propagate back to the host.
    step(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()), "make / private")?;
    for procs in &plan.cgroup_procs {
        std::fs::write(procs, "0").map_err(|e| io::Error::new(e.kind(), format!("join cgroup: {e}")))?;
    }
    // The host's OOM killer picks containers before the server.
    let _ = std::fs::write("/proc/self/oom_score_adj", "500");
    let scratch = cpath(&plan.scratch)?;
    let (upper, work) = (cpath(&plan.upper)?, cpath(&plan.work)?);
    if let Some(options) = &plan.tmpfs {
        let options = CString::new(options.as_bytes()).map_err(|_| io::Error::other("tmpfs options"))?;
        step(libc::mount(c"tmpfs".as_ptr(), scratch.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, options.as_ptr().cast()), "mount scratch tmpfs")?;
        step(libc::mkdir(upper.as_ptr(), 0o755), "mkdir upper")?;
        step(libc::mkdir(work.as_ptr(), 0o755), "mkdir work")?;
        step(libc::mkdir(cpath(&plan.root)?.as_ptr(), 0o755), "mkdir root")?;
    }

    let (mut layers_dir, mut upper_path, mut work_path) = (plan.layers_dir.clone(), plan.upper.clone(), plan.work.clone());
    if let (Some(map), Some(ns)) = (plan.idmap, userns) {
        // An idmapped view of the store: files owned by 0 on disk belong to the container's root.
        let view = plan.scratch.join(".store");
        let c_view = cpath(&view)?;
        libc::mkdir(c_view.as_ptr(), 0o700);
        let fd = clone_tree(&cpath(&plan.store_root)?, false, false, Some(ns))
            .map_err(|e| io::Error::new(e.kind(), format!("{e} (idmapped mounts need Linux 5.12+ on ext4/xfs/btrfs; FERRY_USERNS=0 turns user namespaces off)")))?;
        attach(fd, &c_view)?;
        let inside = |p: &Path| -> io::Result<PathBuf> {
            p.strip_prefix(&plan.store_root).map(|rel| view.join(rel)).map_err(|_| io::Error::other(format!("{} is outside the image store", p.display())))
        };
        layers_dir = inside(&plan.layers_dir)?;
        if plan.tmpfs.is_none() {
            upper_path = inside(&plan.upper)?;
            work_path = inside(&plan.work)?;
        } else {
            // A tmpfs upper is not idmapped: hand its top directory to the container's root.
            step(libc::chown(upper.as_ptr(), map.base, map.base), "chown upper")?;
        }
    }

    let layers = cpath(&layers_dir)?;
    step(libc::chdir(layers.as_ptr()), "chdir to layers")?;
    let options = format!("lowerdir={},upperdir={},workdir={}", plan.lowers.join(":"), upper_path.display(), work_path.display());
    let options = CString::new(options).map_err(|_| io::Error::other("overlay options"))?;
    let root = cpath(&plan.root)?;
    // Overlayfs does its copy-ups and work-dir changes with the mounter's credentials, and
    // files init makes in the root (mount points) are created with its fsuid: on an idmapped
    // store both must be the container root's host ids (host root has no mapping there), so
    // from here on init acts as that user on files, with its capabilities kept.
    if let Some(map) = plan.idmap {
        libc::setfsgid(map.base);
        libc::setfsuid(map.base);
        raise_effective_caps()?;
    }
    step(
        libc::mount(c"overlay".as_ptr(), root.as_ptr(), c"overlay".as_ptr(), 0, options.as_ptr().cast()),
        "mount overlay root (the data dir must be on ext4, xfs or btrfs, not on overlayfs or NFS)",
    )?;
    step(libc::chdir(root.as_ptr()), "chdir to root")?;
    const MS_PROC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    libc::mkdir(c"proc".as_ptr(), 0o555);
    step(libc::mount(c"proc".as_ptr(), c"proc".as_ptr(), c"proc".as_ptr(), MS_PROC, std::ptr::null()), "mount /proc")?;
    libc::mkdir(c"sys".as_ptr(), 0o555);
    // Read-only sysfs; some images probe it (CPU topology), none need to write it.
    libc::mount(c"sysfs".as_ptr(), c"sys".as_ptr(), c"sysfs".as_ptr(), MS_PROC | libc::MS_RDONLY, std::ptr::null());
    crate::launch::setup_dev()?;
    if let Some(map) = plan.idmap {
        for d in [c"dev", c"dev/shm"] {
            libc::chown(d.as_ptr(), map.base, map.base);
        }
    }
    if plan.new_net {
        // The container's own network namespace: let its root use every port and ping.
        let _ = std::fs::write("proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
        let _ = std::fs::write("proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    }
    crate::launch::protect_proc()?;

    // Detach the bind sources while the host tree is still reachable; they are attached
    // after pivot_root so that the target paths resolve inside the container's root.
    let mut bind_fds = Vec::with_capacity(plan.binds.len());
    for b in &plan.binds {
        let source = cpath(&b.source)?;
        let fd = match userns {
            Some(ns) => match clone_tree(&source, true, b.readonly, Some(ns)) {
                Ok(fd) => fd,
                // File systems without idmapped mounts (devtmpfs, some FUSE) are bound as they are.
                Err(_) => clone_tree(&source, true, b.readonly, None)?,
            },
            None => clone_tree(&source, true, b.readonly, None)?,
        };
        bind_fds.push(fd);
    }

    step(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int, "pivot_root")?;
    step(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), "detach old root")?;
    step(libc::chdir(c"/".as_ptr()), "chdir /")?;

    for (b, fd) in plan.binds.iter().zip(bind_fds) {
        let target = CString::new(b.target.as_bytes()).map_err(|_| io::Error::other("bind target"))?;
        crate::launch::make_mountpoint(&target, b.is_dir)?;
        attach(fd, &target)?;
    }

    let name = plan.hostname.as_bytes();
    step(libc::sethostname(name.as_ptr().cast(), name.len()), "sethostname")?;
    if plan.new_net {
        crate::launch::loopback_up()?;
    }
    if let Some(go) = plan.net_go_fd {
        let mut byte = 0u8;
        loop {
            let n = libc::read(go, (&mut byte as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return Err(io::Error::other("the container's network could not be set up"));
        }
        libc::close(go);
    }
    Ok(())
}

/// Makes every permitted capability effective again (a change of fsuid away from 0 drops the
/// file-system ones).
pub(crate) unsafe fn raise_effective_caps() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    step(libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) as libc::c_int, "capget")?;
    for d in &mut data {
        d.effective = d.permitted;
    }
    step(libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) as libc::c_int, "capset")
}

/// Joins the user namespace as its root: from here on init is an unprivileged uid of the
/// host, and not dumpable (no ptrace or /proc/1/mem from the container).
unsafe fn become_container_root(userns: Option<RawFd>) -> io::Result<()> {
    if let Some(ns) = userns {
        step(libc::setns(ns, libc::CLONE_NEWUSER), "join the user namespace")?;
        libc::close(ns);
        step(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        step(libc::setresgid(0, 0, 0), "setresgid")?;
        step(libc::setresuid(0, 0, 0), "setresuid")?;
    }
    libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    Ok(())
}

/// Attaches an idmapped view (with `userns`) of the file system at `source` on `target`.
pub(crate) unsafe fn idmapped_view(source: &Path, target: &Path, userns: RawFd) -> io::Result<()> {
    let fd = clone_tree(&cpath(source)?, false, false, Some(userns))?;
    attach(fd, &cpath(target)?)
}

/// A fresh 65536-id range on the host for one container, above every ordinary user and the
/// ranges of /etc/subuid (0x4000_0000 + n * 0x10000). Ranges are handed out round-robin from
/// a random start, so concurrent containers, also of different Ferry processes, differ.
pub(crate) fn allocate_ids() -> IdMap {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SLOTS: u32 = 0x3000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let mut current = NEXT.load(Ordering::Relaxed);
    if current == u32::MAX {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let seed = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
        let _ = NEXT.compare_exchange(u32::MAX, seed % SLOTS, Ordering::Relaxed, Ordering::Relaxed);
        current = NEXT.load(Ordering::Relaxed);
    }
    let _ = current;
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    IdMap { base: 0x4000_0000 + slot * 0x10000, count: 0x10000 }
}
