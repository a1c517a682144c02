//! The fork/namespace sequence that turns a `tokio::process::Command` into a container.
//!
//! `Command::pre_exec` runs our closure in the child that std forks (call it the *monitor*).
//! The monitor stays in the host pid namespace, unshares the other namespaces and forks the
//! container *init* (pid 1 of the new pid namespace). Init builds the root filesystem,
//! forks the *payload* and then only reaps children and forwards signals. The payload returns
//! from the closure, so std performs the `execvp` of the user's program inside the new root.
//!
//! ```text
//! ferry (tokio) ── monitor (host pidns, waits for init) ── init (pid 1) ── payload (exec)
//! ```
//!
//! Why three processes: a process cannot move itself into a new pid namespace, and a user
//! program running as pid 1 would ignore SIGTERM (no default action for pid 1) and leave
//! zombies. Init reports the payload's wait status and its own host pid over the status pipe.
//!
//! Everything in here runs between fork and exec of a multi-threaded program, so it sticks to
//! raw syscalls on buffers prepared by the parent. (The payload's user lookup reads
//! /etc/passwd with std; glibc's fork keeps malloc usable in the child.)

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

/// A bind mount, resolved to C strings before the fork.
pub(crate) struct BindPlan {
    pub source: CString,
    /// Absolute path inside the container.
    pub target: CString,
    pub readonly: bool,
    pub source_is_dir: bool,
}

/// Where the overlay's writable layer lives.
pub(crate) enum UpperPlan {
    /// A tmpfs mounted on `scratch` inside the container's mount namespace: it disappears with
    /// the namespace, so nothing is left to clean up and the writes count against the
    /// container's memory cgroup.
    Tmpfs { options: CString, upper: CString, work: CString },
    /// A directory on disk that outlives the container (image builds keep it as the layer).
    Dir,
}

pub(crate) struct LaunchPlan {
    pub scratch: CString,
    pub upper: UpperPlan,
    /// Directory the relative lowerdir paths are resolved from.
    pub layers_dir: CString,
    /// Mount point of the overlay (the future root).
    pub root: CString,
    pub overlay_options: CString,
    pub cgroup_procs: Vec<CString>,
    pub new_net: bool,
    pub hostname: CString,
    pub binds: Vec<BindPlan>,
    /// Filled in the child; capacity reserved by the parent so no allocation happens there.
    pub bind_fds: Vec<RawFd>,
    pub workdir: CString,
    pub user: Option<String>,
    pub status_fd: RawFd,
    /// Read end of the worker's lifeline pipe: EOF means the Ferry process is gone.
    pub lifeline_fd: RawFd,
    /// For a private network: the monitor writes init's pid to `.0`, and init waits for one
    /// byte on `.1` (sent once the network is up) before starting the program.
    /// stdin is a terminal that becomes the payload's controlling terminal.
    pub controlling_tty: bool,
    pub net_gate: Option<(RawFd, RawFd)>,
}

/// Records on the status pipe: 4-byte tag + 4-byte value, native endian.
pub(crate) const TAG_INIT_PID: [u8; 4] = *b"PID1";
pub(crate) const TAG_EXIT: [u8; 4] = *b"EXIT";
/// Followed by that many bytes of message: std only passes an errno back from a failed
/// `pre_exec`, which would lose which step failed.
pub(crate) const TAG_FAIL: [u8; 4] = *b"FAIL";

/// Splits the status pipe's bytes into (tag, value, message) records.
pub(crate) fn parse_records(mut buf: &[u8]) -> Vec<([u8; 4], i32, Option<String>)> {
    let mut out = Vec::new();
    while buf.len() >= 8 {
        let tag: [u8; 4] = buf[..4].try_into().expect("4 bytes");
        let value = i32::from_ne_bytes(buf[4..8].try_into().expect("4 bytes"));
        buf = &buf[8..];
        let mut message = None;
        if tag == TAG_FAIL {
            let len = (value.max(0) as usize).min(buf.len());
            message = Some(String::from_utf8_lossy(&buf[..len]).into_owned());
            buf = &buf[len..];
        }
        out.push((tag, value, message));
    }
    out
}

/// Sends a failure's full text to the parent, in one write (atomic below PIPE_BUF).
unsafe fn report_failure(fd: RawFd, err: &io::Error) {
    let text = err.to_string();
    let text = &text.as_bytes()[..text.len().min(2048)];
    let mut buf = Vec::with_capacity(8 + text.len());
    buf.extend_from_slice(&TAG_FAIL);
    buf.extend_from_slice(&(text.len() as i32).to_ne_bytes());
    buf.extend_from_slice(text);
    libc::write(fd, buf.as_ptr().cast(), buf.len());
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Adds the failing step to an errno so the parent's spawn error says what broke.
fn step(r: libc::c_int, what: &'static str) -> io::Result<()> {
    check(r).map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

unsafe fn write_record(fd: RawFd, tag: [u8; 4], value: i32) {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&tag);
    buf[4..].copy_from_slice(&value.to_ne_bytes());
    libc::write(fd, buf.as_ptr().cast(), 8);
}

unsafe fn close_all_but(keep: RawFd) {
    if keep > 3 {
        libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (keep.max(2) + 1) as u32, u32::MAX, 0u32);
}

unsafe fn block_all_signals() -> libc::sigset_t {
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    all
}

fn status_to_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// The `pre_exec` body. Returns only in the payload (which then execs) or with an error.
///
/// # Safety
/// Must only be called between fork and exec, as `Command::pre_exec` does.
pub(crate) unsafe fn enter_container(plan: &mut LaunchPlan) -> io::Result<()> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if plan.new_net {
        flags |= libc::CLONE_NEWNET;
    }
    step(libc::unshare(flags), "unshare namespaces")?;

    let init = libc::fork();
    if init < 0 {
        return Err(io::Error::last_os_error());
    }
    if init > 0 {
        if let Some((pid_fd, _)) = plan.net_gate {
            libc::write(pid_fd, init.to_ne_bytes().as_ptr().cast(), 4);
        }
        monitor(plan.status_fd, plan.lifeline_fd, init);
    }

    // Init: pid 1 of the new pid namespace. Die with the monitor so a crashed worker does
    // not leak containers.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    init_setup(plan).inspect_err(|e| report_failure(plan.status_fd, e))?;

    let all = block_all_signals();
    let payload = libc::fork();
    if payload < 0 {
        return Err(io::Error::last_os_error());
    }
    if payload == 0 {
        let empty: libc::sigset_t = {
            let mut s = std::mem::zeroed();
            libc::sigemptyset(&mut s);
            s
        };
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if plan.controlling_tty {
            step(libc::setsid(), "setsid").inspect_err(|e| report_failure(plan.status_fd, e))?;
            step(libc::ioctl(0, libc::TIOCSCTTY, 0), "set the controlling terminal").inspect_err(|e| report_failure(plan.status_fd, e))?;
        }
        return prepare_payload(&plan.workdir, plan.user.as_deref()).inspect_err(|e| report_failure(plan.status_fd, e));
    }
    init_loop(plan.status_fd, payload, &all)
}

/// Init's part before the program starts: the root filesystem, then the network gate.
unsafe fn init_setup(plan: &mut LaunchPlan) -> io::Result<()> {
    setup_root(plan)?;
    if let Some((_, go_fd)) = plan.net_gate {
        let mut byte = 0u8;
        loop {
            let n = libc::read(go_fd, (&mut byte as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return Err(io::Error::other("the container's network could not be set up"));
        }
    }
    Ok(())
}

/// The monitor waits for init and mirrors its exit. If the Ferry process dies first (its
/// lifeline pipe reaches EOF), the monitor kills init, so containers never outlive their
/// worker. (PR_SET_PDEATHSIG would fire when the spawning *thread* exits, which a tokio
/// blocking-pool thread does after a while.)
unsafe fn monitor(status_fd: RawFd, lifeline: RawFd, init: libc::pid_t) -> ! {
    write_record(status_fd, TAG_INIT_PID, init);
    libc::close(status_fd);
    close_all_but(lifeline);
    let pidfd = libc::syscall(libc::SYS_pidfd_open, init, 0) as libc::c_int;
    if pidfd >= 0 {
        loop {
            let mut fds = [
                libc::pollfd { fd: lifeline, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 },
            ];
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                continue;
            }
            if fds[0].revents != 0 {
                libc::kill(init, libc::SIGKILL);
            }
            if fds[0].revents != 0 || fds[1].revents != 0 {
                break;
            }
        }
    }
    let mut status = 0;
    loop {
        let r = libc::waitpid(init, &mut status, 0);
        if r == init {
            break;
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(255);
        }
    }
    libc::_exit(status_to_code(status));
}

/// Pid 1: reap every child, forward signals to the payload, exit with the payload.
unsafe fn init_loop(status_fd: RawFd, payload: libc::pid_t, all: &libc::sigset_t) -> ! {
    close_all_but(status_fd);
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let sig = libc::sigwaitinfo(all, &mut info);
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                let r = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if r <= 0 {
                    break;
                }
                if r == payload {
                    write_record(status_fd, TAG_EXIT, status);
                    // Exiting as pid 1 kills whatever the payload left running.
                    libc::_exit(status_to_code(status));
                }
            }
        } else {
            libc::kill(payload, sig);
        }
    }
}

const MS_PROC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

unsafe fn setup_root(plan: &mut LaunchPlan) -> io::Result<()> {
    // Nothing we mount may propagate back to the host.
    step(
        libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()),
        "make / private",
    )?;
    for procs in &plan.cgroup_procs {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        step(fd, "open cgroup.procs")?;
        let r = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        step(r as libc::c_int, "join cgroup")?;
    }
    if let UpperPlan::Tmpfs { options, upper, work } = &plan.upper {
        step(
            libc::mount(c"tmpfs".as_ptr(), plan.scratch.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, options.as_ptr().cast()),
            "mount scratch tmpfs",
        )?;
        step(libc::mkdir(upper.as_ptr(), 0o755), "mkdir upper")?;
        step(libc::mkdir(work.as_ptr(), 0o755), "mkdir work")?;
        step(libc::mkdir(plan.root.as_ptr(), 0o755), "mkdir root")?;
    }
    step(libc::chdir(plan.layers_dir.as_ptr()), "chdir to layers")?;
    step(
        libc::mount(c"overlay".as_ptr(), plan.root.as_ptr(), c"overlay".as_ptr(), 0, plan.overlay_options.as_ptr().cast()),
        "mount overlay root (the data dir must be on ext4, xfs or btrfs, not on overlayfs or NFS)",
    )?;
    step(libc::chdir(plan.root.as_ptr()), "chdir to root")?;
    libc::mkdir(c"proc".as_ptr(), 0o555);
    step(libc::mount(c"proc".as_ptr(), c"proc".as_ptr(), c"proc".as_ptr(), MS_PROC, std::ptr::null()), "mount /proc")?;
    libc::mkdir(c"sys".as_ptr(), 0o555);
    // Read-only sysfs; some images probe it (CPU topology), none need to write it.
    libc::mount(c"sysfs".as_ptr(), c"sys".as_ptr(), c"sysfs".as_ptr(), MS_PROC | libc::MS_RDONLY, std::ptr::null());
    setup_dev()?;
    protect_proc()?;

    // Detach the bind sources while the host tree is still reachable; they are attached
    // after pivot_root so that the target paths resolve inside the container's root.
    plan.bind_fds.clear();
    for b in &plan.binds {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            b.source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        ) as libc::c_int;
        step(fd, "open bind source")?;
        if b.readonly {
            let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
            let r = libc::syscall(
                libc::SYS_mount_setattr,
                fd,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ) as libc::c_int;
            step(r, "make bind read-only")?;
        }
        plan.bind_fds.push(fd);
    }

    step(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int, "pivot_root")?;
    step(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), "detach old root")?;
    step(libc::chdir(c"/".as_ptr()), "chdir /")?;

    for (b, &fd) in plan.binds.iter().zip(plan.bind_fds.iter()) {
        make_mountpoint(&b.target, b.source_is_dir)?;
        let r = libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            b.target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) as libc::c_int;
        step(r, "attach bind mount")?;
        libc::close(fd);
    }

    let name = plan.hostname.as_bytes();
    step(libc::sethostname(name.as_ptr().cast(), name.len()), "sethostname")?;
    if plan.new_net {
        loopback_up()?;
    }
    Ok(())
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Host-wide kernel knobs stay out of reach: /proc/sys and friends become read-only and
/// files that leak host state are covered with /dev/null (the set Docker masks).
unsafe fn protect_proc() -> io::Result<()> {
    for dir in [c"proc/sys", c"proc/sysrq-trigger", c"proc/irq", c"proc/bus", c"proc/fs"] {
        if libc::mount(dir.as_ptr(), dir.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) == 0 {
            step(
                libc::mount(
                    std::ptr::null(),
                    dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ),
                "make /proc read-only parts",
            )?;
        }
    }
    for file in [c"proc/kcore", c"proc/keys", c"proc/timer_list", c"proc/sched_debug", c"proc/kallsyms"] {
        libc::mount(c"dev/null".as_ptr(), file.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null());
    }
    Ok(())
}

/// Capabilities a container's processes keep: Docker's default set without CAP_MKNOD (Ferry
/// has no device cgroup to stop a block-device node from reaching the host's disks). Notably
/// absent: SYS_ADMIN (mounts), NET_ADMIN (the host's network, when shared), SYS_MODULE,
/// SYS_PTRACE, SYS_RAWIO, SYS_TIME.
const KEPT_CAPS: u64 = 0xa004_25fb;

/// Shrinks the bounding set; for root, exec then grants exactly this set.
unsafe fn drop_capabilities() -> io::Result<()> {
    for cap in 0..64 {
        if KEPT_CAPS & (1 << cap) == 0 {
            // EINVAL past the kernel's last capability ends the loop.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0 {
                if *libc::__errno_location() == libc::EINVAL {
                    break;
                }
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Syscalls a container's processes get EPERM for: kernel interfaces that are not namespaced
/// (keyrings, BPF, perf, kexec, modules, swap, accounting), io_uring (a rich source of kernel
/// bugs, which Docker blocks too), file handles (the "shocker" escape) and mount APIs.
/// Most already need capabilities the container lacks; the filter keeps them shut even where
/// a kernel bug would not check. Creating user namespaces is refused as well, since inside
/// one a process regains every capability over the namespaces it then creates.
#[cfg(target_arch = "x86_64")]
const DENIED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_quotactl,
    libc::SYS_syslog,
];

/// Installs the seccomp filter (a plain classic-BPF program: deny-list, default allow).
/// Runs while the payload still has CAP_SYS_ADMIN in its effective set, so it needs no
/// `no_new_privs` (which would break setuid tools such as `su` inside images).
#[cfg(target_arch = "x86_64")]
unsafe fn install_seccomp() -> io::Result<()> {
    // Classic BPF opcodes: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_{JEQ,JGE,JSET}|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const OFFSET_NR: u32 = 0;
    const OFFSET_ARCH: u32 = 4;
    const OFFSET_ARG0_LOW: u32 = 16;
    let stmt = |code: u16, k: u32| libc::sock_filter { code, jt: 0, jf: 0, k };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| libc::sock_filter { code, jt, jf, k };
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    let mut prog = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, enosys), // 32-bit (int 0x80) calls: another numbering, refuse them all
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, enosys), // the x32 ABI, likewise
        // clone3 hides its flags behind a pointer: ENOSYS makes libc fall back to clone.
        jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(RET_K, enosys),
    ];
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        prog.extend([
            jump(JEQ_K, nr as u32, 0, 4),
            stmt(LD_W_ABS, OFFSET_ARG0_LOW),
            jump(JSET_K, libc::CLONE_NEWUSER as u32, 0, 1),
            stmt(RET_K, eperm),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        ]);
    }
    for &nr in DENIED_SYSCALLS {
        prog.extend([jump(JEQ_K, nr as u32, 0, 1), stmt(RET_K, eperm)]);
    }
    prog.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    let r = libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog);
    step(r as libc::c_int, "install seccomp filter")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn install_seccomp() -> io::Result<()> {
    // Syscall numbers differ per architecture; only x86_64 has a filter so far.
    Ok(())
}

/// A fresh /dev with the usual character devices, a private devpts and /dev/shm.
unsafe fn setup_dev() -> io::Result<()> {
    libc::mkdir(c"dev".as_ptr(), 0o755);
    step(
        libc::mount(c"tmpfs".as_ptr(), c"dev".as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NOEXEC, c"mode=0755,size=65536k".as_ptr().cast()),
        "mount /dev",
    )?;
    let old_umask = libc::umask(0);
    let nodes: [(&CStr, u32, u32); 6] = [
        (c"dev/null", 1, 3),
        (c"dev/zero", 1, 5),
        (c"dev/full", 1, 7),
        (c"dev/random", 1, 8),
        (c"dev/urandom", 1, 9),
        (c"dev/tty", 5, 0),
    ];
    for (path, major, minor) in nodes {
        step(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)), "mknod in /dev")?;
    }
    let links: [(&CStr, &CStr); 5] = [
        (c"/proc/self/fd", c"dev/fd"),
        (c"/proc/self/fd/0", c"dev/stdin"),
        (c"/proc/self/fd/1", c"dev/stdout"),
        (c"/proc/self/fd/2", c"dev/stderr"),
        (c"pts/ptmx", c"dev/ptmx"),
    ];
    for (target, link) in links {
        libc::symlink(target.as_ptr(), link.as_ptr());
    }
    libc::mkdir(c"dev/pts".as_ptr(), 0o755);
    libc::mkdir(c"dev/shm".as_ptr(), 0o1777);
    libc::umask(old_umask);
    libc::mount(
        c"devpts".as_ptr(),
        c"dev/pts".as_ptr(),
        c"devpts".as_ptr(),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
    );
    step(
        libc::mount(c"shm".as_ptr(), c"dev/shm".as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, c"mode=1777".as_ptr().cast()),
        "mount /dev/shm",
    )?;
    Ok(())
}

/// `mkdir -p` of the target (or its parent for files) plus an empty file to mount on.
/// Runs after pivot_root, so symlinks in the image resolve inside the container.
unsafe fn make_mountpoint(target: &CStr, is_dir: bool) -> io::Result<()> {
    let bytes = target.to_bytes();
    let mut buf = [0u8; 4096];
    if bytes.len() >= buf.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bind target path too long"));
    }
    let dir_end = if is_dir { bytes.len() } else { bytes.iter().rposition(|&c| c == b'/').unwrap_or(0) };
    for i in 1..=dir_end {
        if i == dir_end || bytes[i] == b'/' {
            buf[..i].copy_from_slice(&bytes[..i]);
            buf[i] = 0;
            libc::mkdir(buf.as_ptr().cast(), 0o755);
        }
    }
    if !is_dir {
        // O_EXCL: opening an existing lower-layer file for writing would copy it up into
        // the writable layer (and into a build's layer).
        let fd = libc::open(target.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o644);
        if fd >= 0 {
            libc::close(fd);
        }
    }
    Ok(())
}

unsafe fn loopback_up() -> io::Result<()> {
    let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
    step(sock, "socket for loopback")?;
    let mut req: libc::ifreq = std::mem::zeroed();
    for (i, c) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *c as libc::c_char;
    }
    let r = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req);
    if r >= 0 {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &req);
        libc::close(sock);
        return step(r, "bring loopback up");
    }
    libc::close(sock);
    step(r, "read loopback flags")
}

/// What `Container::exec` needs to put a new process into a running container.
pub(crate) struct JoinPlan {
    /// Namespace fds of the container's init, mount namespace last (after it, host paths
    /// are gone).
    pub ns_fds: Vec<RawFd>,
    pub cgroup_procs: Vec<CString>,
    pub workdir: CString,
    pub user: Option<String>,
    pub status_fd: RawFd,
    /// stdin is a terminal that becomes the program's controlling terminal.
    pub controlling_tty: bool,
}

/// The `pre_exec` body of `Container::exec`: join the cgroup and namespaces, fork (a pid
/// namespace applies to children only), and supervise the child like init does.
///
/// # Safety
/// Must only be called between fork and exec, as `Command::pre_exec` does.
pub(crate) unsafe fn join_container(plan: &JoinPlan) -> io::Result<()> {
    join_setup(plan).inspect_err(|e| report_failure(plan.status_fd, e))?;
    let all = block_all_signals();
    let child = libc::fork();
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if plan.controlling_tty {
            // A session of its own whose controlling terminal is the pty on stdin, so job
            // control and ^C work as in a terminal.
            step(libc::setsid(), "setsid").inspect_err(|e| report_failure(plan.status_fd, e))?;
            step(libc::ioctl(0, libc::TIOCSCTTY, 0), "set the controlling terminal").inspect_err(|e| report_failure(plan.status_fd, e))?;
        }
        return prepare_payload(&plan.workdir, plan.user.as_deref()).inspect_err(|e| report_failure(plan.status_fd, e));
    }
    write_record(plan.status_fd, TAG_INIT_PID, child);
    init_loop(plan.status_fd, child, &all)
}

unsafe fn join_setup(plan: &JoinPlan) -> io::Result<()> {
    for procs in &plan.cgroup_procs {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        step(fd, "open cgroup.procs")?;
        let r = libc::write(fd, b"0".as_ptr().cast(), 1);
        libc::close(fd);
        step(r as libc::c_int, "join cgroup")?;
    }
    for &fd in &plan.ns_fds {
        step(libc::setns(fd, 0), "join container namespace")?;
    }
    Ok(())
}

/// The payload: switch user and directory, then return so std execs the program.
unsafe fn prepare_payload(workdir: &CStr, user: Option<&str>) -> io::Result<()> {
    // Descriptors the worker opened without O_CLOEXEC (C libraries do) must not reach the
    // program: mark everything past stdio close-on-exec (std's error pipe keeps working
    // until the exec itself).
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    step(libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) as libc::c_int, "mark descriptors close-on-exec")?;
    drop_capabilities()?;
    install_seccomp()?;
    if let Some(user) = user {
        let (uid, gid) = resolve_user(user)?;
        step(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        step(libc::setgid(gid), "setgid")?;
        step(libc::setuid(uid), "setuid")?;
    }
    make_mountpoint(workdir, true)?;
    step(libc::chdir(workdir.as_ptr()), "chdir to workdir")
}

/// `USER name`, `USER uid`, `USER name:group` or `USER uid:gid`, looked up in the image.
fn resolve_user(spec: &str) -> io::Result<(libc::uid_t, libc::gid_t)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut found: Option<(u32, u32)> = None;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && (f[0] == user || f[2] == user) {
            if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                found = Some((uid, gid));
                break;
            }
        }
    }
    let (uid, mut gid) = match (found, user.parse::<u32>()) {
        (Some(p), _) => p,
        (None, Ok(uid)) => (uid, uid),
        (None, Err(_)) => {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("USER {user}: no such user in the image's /etc/passwd")))
        }
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => std::fs::read_to_string("/etc/group")
                .unwrap_or_default()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == group)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("USER {spec}: no such group in the image")))?,
        };
    }
    Ok((uid, gid))
}
