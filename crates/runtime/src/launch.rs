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

/// What the monitor needs; init's own plan travels in a memfd (see `init.rs`).
pub(crate) struct LaunchPlan {
    pub new_net: bool,
    pub status_fd: RawFd,
    /// Read end of the worker's lifeline pipe: EOF means the Ferry process is gone.
    pub lifeline_fd: RawFd,
    /// For a private network: the monitor writes init's pid to `.0`; init waits for one
    /// byte on `.1` (sent once the network is up) before starting the program.
    pub net_gate: Option<(RawFd, RawFd)>,
    /// The serialized `InitPlan`.
    pub plan_fd: RawFd,
    /// The running executable, re-executed as init.
    pub exe_fd: RawFd,
    /// "0 <host base> <count>\n" for the uid and gid maps of the container's user namespace;
    /// `None` leaves the container in the host's.
    pub id_map_line: Option<CString>,
}

/// Records on the status pipe: 4-byte tag + 4-byte value, native endian.
pub(crate) const TAG_INIT_PID: [u8; 4] = *b"PID1";
pub(crate) const TAG_EXIT: [u8; 4] = *b"EXIT";
/// Followed by that many bytes of message: std only passes an errno back from a failed
/// `pre_exec`, which would lose which step failed.
pub(crate) const TAG_FAIL: [u8; 4] = *b"FAIL";
/// Init started the program (value: its pid in the container).
pub(crate) const TAG_EXEC: [u8; 4] = *b"EXEC";

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
pub(crate) unsafe fn report_failure(fd: RawFd, err: &io::Error) {
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
pub(crate) fn step(r: libc::c_int, what: &'static str) -> io::Result<()> {
    check(r).map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

pub(crate) unsafe fn write_record(fd: RawFd, tag: [u8; 4], value: i32) {
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

pub(crate) unsafe fn block_all_signals() -> libc::sigset_t {
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

/// The `pre_exec` body: unshare, fork init, and re-execute this executable as init (so no
/// copy of the server's memory is left in the container). Never returns on success: the
/// monitor stays to mirror init's exit, init is another program.
///
/// # Safety
/// Must only be called between fork and exec, as `Command::pre_exec` does.
pub(crate) unsafe fn enter_container(plan: &LaunchPlan, plan_fd_arg: &CStr, ns_arg: &mut [u8; 16]) -> io::Result<()> {
    // The user namespace is made first, from the host's pid and mount namespaces, so that no
    // helper process shows up in the container (see `make_userns`).
    let userns = match &plan.id_map_line {
        Some(line) => make_userns(line)?,
        None => -1,
    };
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
        if userns >= 0 {
            libc::close(userns);
        }
        if let Some((pid_fd, _)) = plan.net_gate {
            libc::write(pid_fd, init.to_ne_bytes().as_ptr().cast(), 4);
        }
        monitor(plan.status_fd, plan.lifeline_fd, init);
    }
    // Init: pid 1 of the new pid namespace. Die with the monitor so a crashed worker does
    // not leak containers.
    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    // Everything the worker opened is closed at exec, except what init reads.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
    for fd in [plan.status_fd, plan.plan_fd, plan.net_gate.map_or(-1, |(_, go)| go), userns] {
        if fd >= 0 {
            libc::fcntl(fd, libc::F_SETFD, 0);
        }
    }
    let mut argv: [*const libc::c_char; 4] = [crate::init::INIT_ARGV0.as_ptr(), plan_fd_arg.as_ptr(), std::ptr::null(), std::ptr::null()];
    if userns >= 0 {
        write_decimal(ns_arg, userns);
        argv[2] = ns_arg.as_ptr().cast();
    }
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    libc::syscall(libc::SYS_execveat, plan.exe_fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
    let e = io::Error::last_os_error();
    let e = io::Error::new(e.kind(), format!("start the container's init: {e}"));
    report_failure(plan.status_fd, &e);
    libc::_exit(127);
}

/// `n` as a NUL-terminated decimal string, without allocating.
fn write_decimal(buf: &mut [u8; 16], n: i32) {
    let mut digits = [0u8; 12];
    let (mut n, mut len) = (n.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
}

/// A user namespace whose ids 0..N are `line`'s host range: a child unshares it and waits,
/// this process (root of the host) writes the maps through the host's /proc and keeps a
/// descriptor, then the child exits. Runs in the monitor, before any namespace is unshared.
pub(crate) unsafe fn make_userns(line: &CStr) -> io::Result<RawFd> {
    let (mut ready, mut hold) = ([0; 2], [0; 2]);
    step(libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC), "pipe")?;
    step(libc::pipe2(hold.as_mut_ptr(), libc::O_CLOEXEC), "pipe")?;
    let child = libc::fork();
    step(child, "fork the user namespace holder")?;
    if child == 0 {
        let mut b = 0u8;
        if libc::unshare(libc::CLONE_NEWUSER) == 0 {
            libc::write(ready[1], b"x".as_ptr().cast(), 1);
        }
        libc::close(hold[1]);
        libc::read(hold[0], (&mut b as *mut u8).cast(), 1);
        libc::_exit(0);
    }
    libc::close(ready[1]);
    libc::close(hold[0]);
    let mut b = 0u8;
    let n = libc::read(ready[0], (&mut b as *mut u8).cast(), 1);
    libc::close(ready[0]);
    let result = (|| {
        if n != 1 {
            return Err(io::Error::other("could not create a user namespace (user.max_user_namespaces may be 0; FERRY_USERNS=0 turns them off)"));
        }
        let mut path = [0u8; 64];
        for (file, what) in [(&b"uid_map"[..], "write uid_map"), (&b"gid_map"[..], "write gid_map")] {
            proc_path(&mut path, child, file);
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            step(fd, what)?;
            let bytes = line.to_bytes();
            let r = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            libc::close(fd);
            step(r as libc::c_int, what)?;
        }
        proc_path(&mut path, child, b"ns/user");
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        step(fd, "open the user namespace")?;
        Ok(fd)
    })();
    libc::close(hold[1]);
    let mut status = 0;
    while libc::waitpid(child, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    result
}

/// "/proc/<pid>/<file>\0" into `buf`.
fn proc_path(buf: &mut [u8; 64], pid: libc::pid_t, file: &[u8]) {
    let mut digits = [0u8; 16];
    write_decimal(&mut digits, pid);
    let mut at = 0;
    for part in [&b"/proc/"[..], &digits[..digits.iter().position(|&c| c == 0).unwrap_or(0)], b"/", file] {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    buf[at] = 0;
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
pub(crate) unsafe fn init_loop(status_fd: RawFd, payload: libc::pid_t, all: &libc::sigset_t) -> ! {
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

/// Host-wide kernel knobs stay out of reach: /proc/sys and friends become read-only and
/// files that leak host state are covered with /dev/null (the set Docker masks).
pub(crate) unsafe fn protect_proc() -> io::Result<()> {
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
    for file in [c"proc/kcore", c"proc/keys", c"proc/timer_list", c"proc/sched_debug", c"proc/kallsyms", c"proc/latency_stats", c"proc/timer_stats"] {
        libc::mount(c"dev/null".as_ptr(), file.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null());
    }
    // Directories OCI runtimes mask: an empty read-only tmpfs over each.
    for dir in [c"proc/acpi", c"proc/asound", c"proc/scsi", c"sys/firmware", c"sys/devices/virtual/powercap"] {
        libc::mount(c"tmpfs".as_ptr(), dir.as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, c"size=0".as_ptr().cast());
    }
    Ok(())
}

/// Capabilities a container's processes keep (over their own user namespace only): Docker's
/// default set without CAP_MKNOD (no device cgroup stops a block-device node from reaching
/// the host's disks) and CAP_NET_RAW (ping works through `ping_group_range`): CHOWN,
/// DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT,
/// AUDIT_WRITE, SETFCAP. Notably absent: SYS_ADMIN (mounts), NET_ADMIN, SYS_MODULE,
/// SYS_PTRACE, SYS_RAWIO, SYS_TIME, SYS_BOOT.
const KEPT_CAPS: u64 = 0xa004_05fb;

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

/// The syscalls a container's processes may make (x86_64), after Docker's default profile:
/// everything an ordinary program, runtime or compiler needs, and nothing that reaches kernel
/// interfaces which are not namespaced (keyrings, BPF, perf, kexec, modules, swap, accounting,
/// the clock, the hostname), the mount APIs, `open_by_handle_at` (the "shocker" escape),
/// io_uring, or `userfaultfd`. Anything else, including syscalls added to future kernels,
/// gets EPERM. `clone`/`unshare` are allowed without namespace flags; `clone3` (whose flags
/// hide behind a pointer) gets ENOSYS so libc falls back to `clone`.
#[cfg(target_arch = "x86_64")]
const ALLOWED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_read, libc::SYS_write, libc::SYS_open, libc::SYS_close, libc::SYS_stat, libc::SYS_fstat, libc::SYS_lstat,
    libc::SYS_poll, libc::SYS_lseek, libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_munmap, libc::SYS_brk,
    libc::SYS_rt_sigaction, libc::SYS_rt_sigprocmask, libc::SYS_rt_sigreturn, libc::SYS_ioctl, libc::SYS_pread64,
    libc::SYS_pwrite64, libc::SYS_readv, libc::SYS_writev, libc::SYS_access, libc::SYS_pipe, libc::SYS_select,
    libc::SYS_sched_yield, libc::SYS_mremap, libc::SYS_msync, libc::SYS_mincore, libc::SYS_madvise, libc::SYS_shmget,
    libc::SYS_shmat, libc::SYS_shmctl, libc::SYS_dup, libc::SYS_dup2, libc::SYS_pause, libc::SYS_nanosleep,
    libc::SYS_getitimer, libc::SYS_alarm, libc::SYS_setitimer, libc::SYS_getpid, libc::SYS_sendfile, libc::SYS_socket,
    libc::SYS_connect, libc::SYS_accept, libc::SYS_sendto, libc::SYS_recvfrom, libc::SYS_sendmsg, libc::SYS_recvmsg,
    libc::SYS_shutdown, libc::SYS_bind, libc::SYS_listen, libc::SYS_getsockname, libc::SYS_getpeername,
    libc::SYS_socketpair, libc::SYS_setsockopt, libc::SYS_getsockopt, libc::SYS_fork, libc::SYS_vfork,
    libc::SYS_execve, libc::SYS_exit, libc::SYS_wait4, libc::SYS_kill, libc::SYS_uname, libc::SYS_semget,
    libc::SYS_semop, libc::SYS_semctl, libc::SYS_shmdt, libc::SYS_msgget, libc::SYS_msgsnd, libc::SYS_msgrcv,
    libc::SYS_msgctl, libc::SYS_fcntl, libc::SYS_flock, libc::SYS_fsync, libc::SYS_fdatasync, libc::SYS_truncate,
    libc::SYS_ftruncate, libc::SYS_getdents, libc::SYS_getcwd, libc::SYS_chdir, libc::SYS_fchdir, libc::SYS_rename,
    libc::SYS_mkdir, libc::SYS_rmdir, libc::SYS_creat, libc::SYS_link, libc::SYS_unlink, libc::SYS_symlink,
    libc::SYS_readlink, libc::SYS_chmod, libc::SYS_fchmod, libc::SYS_chown, libc::SYS_fchown, libc::SYS_lchown,
    libc::SYS_umask, libc::SYS_gettimeofday, libc::SYS_getrlimit, libc::SYS_getrusage, libc::SYS_sysinfo,
    libc::SYS_times, libc::SYS_ptrace, libc::SYS_getuid, libc::SYS_getgid, libc::SYS_setuid, libc::SYS_setgid,
    libc::SYS_geteuid, libc::SYS_getegid, libc::SYS_setpgid, libc::SYS_getppid, libc::SYS_getpgrp, libc::SYS_setsid,
    libc::SYS_setreuid, libc::SYS_setregid, libc::SYS_getgroups, libc::SYS_setgroups, libc::SYS_setresuid,
    libc::SYS_getresuid, libc::SYS_setresgid, libc::SYS_getresgid, libc::SYS_getpgid, libc::SYS_setfsuid,
    libc::SYS_setfsgid, libc::SYS_getsid, libc::SYS_capget, libc::SYS_capset, libc::SYS_rt_sigpending,
    libc::SYS_rt_sigtimedwait, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_sigsuspend, libc::SYS_sigaltstack,
    libc::SYS_utime, libc::SYS_mknod, libc::SYS_personality, libc::SYS_statfs, libc::SYS_fstatfs,
    libc::SYS_getpriority, libc::SYS_setpriority, libc::SYS_sched_setparam, libc::SYS_sched_getparam,
    libc::SYS_sched_setscheduler, libc::SYS_sched_getscheduler, libc::SYS_sched_get_priority_max,
    libc::SYS_sched_get_priority_min, libc::SYS_sched_rr_get_interval, libc::SYS_mlock, libc::SYS_munlock,
    libc::SYS_mlockall, libc::SYS_munlockall, libc::SYS_modify_ldt, libc::SYS_prctl, libc::SYS_arch_prctl,
    libc::SYS_adjtimex, libc::SYS_setrlimit, libc::SYS_chroot, libc::SYS_sync, libc::SYS_gettid, libc::SYS_readahead,
    libc::SYS_setxattr, libc::SYS_lsetxattr, libc::SYS_fsetxattr, libc::SYS_getxattr, libc::SYS_lgetxattr,
    libc::SYS_fgetxattr, libc::SYS_listxattr, libc::SYS_llistxattr, libc::SYS_flistxattr, libc::SYS_removexattr,
    libc::SYS_lremovexattr, libc::SYS_fremovexattr, libc::SYS_tkill, libc::SYS_time, libc::SYS_futex,
    libc::SYS_sched_setaffinity, libc::SYS_sched_getaffinity, libc::SYS_set_thread_area, libc::SYS_io_setup,
    libc::SYS_io_destroy, libc::SYS_io_getevents, libc::SYS_io_submit, libc::SYS_io_cancel, libc::SYS_get_thread_area,
    libc::SYS_epoll_create, libc::SYS_remap_file_pages, libc::SYS_getdents64, libc::SYS_set_tid_address,
    libc::SYS_restart_syscall, libc::SYS_semtimedop, libc::SYS_fadvise64, libc::SYS_timer_create,
    libc::SYS_timer_settime, libc::SYS_timer_gettime, libc::SYS_timer_getoverrun, libc::SYS_timer_delete,
    libc::SYS_clock_gettime, libc::SYS_clock_getres, libc::SYS_clock_nanosleep, libc::SYS_exit_group,
    libc::SYS_epoll_wait, libc::SYS_epoll_ctl, libc::SYS_tgkill, libc::SYS_utimes, libc::SYS_mbind,
    libc::SYS_set_mempolicy, libc::SYS_get_mempolicy, libc::SYS_mq_open, libc::SYS_mq_unlink, libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive, libc::SYS_mq_notify, libc::SYS_mq_getsetattr, libc::SYS_waitid, libc::SYS_ioprio_set,
    libc::SYS_ioprio_get, libc::SYS_inotify_init, libc::SYS_inotify_add_watch, libc::SYS_inotify_rm_watch,
    libc::SYS_openat, libc::SYS_mkdirat, libc::SYS_mknodat, libc::SYS_fchownat, libc::SYS_futimesat,
    libc::SYS_newfstatat, libc::SYS_unlinkat, libc::SYS_renameat, libc::SYS_linkat, libc::SYS_symlinkat,
    libc::SYS_readlinkat, libc::SYS_fchmodat, libc::SYS_faccessat, libc::SYS_pselect6, libc::SYS_ppoll,
    libc::SYS_set_robust_list, libc::SYS_get_robust_list, libc::SYS_splice, libc::SYS_tee, libc::SYS_sync_file_range,
    libc::SYS_vmsplice, libc::SYS_move_pages, libc::SYS_utimensat, libc::SYS_epoll_pwait, libc::SYS_signalfd,
    libc::SYS_timerfd_create, libc::SYS_eventfd, libc::SYS_fallocate, libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime, libc::SYS_accept4, libc::SYS_signalfd4, libc::SYS_eventfd2, libc::SYS_epoll_create1,
    libc::SYS_dup3, libc::SYS_pipe2, libc::SYS_inotify_init1, libc::SYS_preadv, libc::SYS_pwritev,
    libc::SYS_rt_tgsigqueueinfo, libc::SYS_recvmmsg, libc::SYS_prlimit64, libc::SYS_name_to_handle_at,
    libc::SYS_syncfs, libc::SYS_sendmmsg, libc::SYS_getcpu, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev,
    libc::SYS_sched_setattr, libc::SYS_sched_getattr, libc::SYS_renameat2, libc::SYS_seccomp, libc::SYS_getrandom,
    libc::SYS_memfd_create, libc::SYS_execveat, libc::SYS_membarrier, libc::SYS_mlock2, libc::SYS_copy_file_range,
    libc::SYS_preadv2, libc::SYS_pwritev2, libc::SYS_pkey_mprotect, libc::SYS_pkey_alloc, libc::SYS_pkey_free,
    libc::SYS_statx, 333, libc::SYS_rseq, libc::SYS_clone, libc::SYS_unshare,
    // By number: pidfd_send_signal, pidfd_open, close_range, openat2, faccessat2, epoll_pwait2,
    // landlock (3), memfd_secret, process_mrelease, futex_waitv, set_mempolicy_home_node,
    // cachestat, fchmodat2, map_shadow_stack, futex_wake/wait/requeue, mseal.
    424, 434, 436, 437, 439, 441, 444, 445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 462,
];

/// Namespace flags `clone` and `unshare` may not carry.
#[cfg(target_arch = "x86_64")]
const NAMESPACE_FLAGS: u32 = 0x7E02_0080;

/// Installs the allow-list (a classic-BPF program). Runs last before exec, after
/// `no_new_privs`, so setuid programs in an image cannot gain privileges either.
#[cfg(target_arch = "x86_64")]
unsafe fn install_seccomp() -> io::Result<()> {
    // Classic BPF opcodes: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_{JEQ,JGE,JGT,JSET}|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGT_K: u16 = 0x25;
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
    let allow = libc::SECCOMP_RET_ALLOW;

    let mut prog = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, enosys), // 32-bit (int 0x80) calls: another numbering, refuse them all
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, enosys), // the x32 ABI, likewise
        jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(RET_K, enosys),
    ];
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        prog.extend([
            jump(JEQ_K, nr as u32, 0, 4),
            stmt(LD_W_ABS, OFFSET_ARG0_LOW),
            jump(JSET_K, NAMESPACE_FLAGS, 0, 1),
            stmt(RET_K, eperm),
            stmt(RET_K, allow),
        ]);
    }
    // Contiguous runs of allowed numbers, each checked with two jumps.
    let mut numbers: Vec<u32> = ALLOWED_SYSCALLS.iter().map(|&n| n as u32).collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for n in numbers {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => runs.push((n, n)),
        }
    }
    for (lo, hi) in runs {
        prog.extend([jump(JGE_K, lo, 0, 2), jump(JGT_K, hi, 1, 0), stmt(RET_K, allow)]);
    }
    prog.push(stmt(RET_K, eperm));
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
pub(crate) unsafe fn setup_dev() -> io::Result<()> {
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
pub(crate) unsafe fn make_mountpoint(target: &CStr, is_dir: bool) -> io::Result<()> {
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

pub(crate) unsafe fn loopback_up() -> io::Result<()> {
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
    /// The container's user namespace, joined by the program (not by its supervisor, which
    /// stays outside the container's pid namespace).
    pub userns_fd: Option<RawFd>,
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
        crate::init::default_signal_dispositions();
        if let Some(ns) = plan.userns_fd {
            step(libc::setns(ns, libc::CLONE_NEWUSER), "join the user namespace").inspect_err(|e| report_failure(plan.status_fd, e))?;
            step(libc::setgroups(0, std::ptr::null()), "setgroups").inspect_err(|e| report_failure(plan.status_fd, e))?;
            step(libc::setresgid(0, 0, 0), "setresgid").inspect_err(|e| report_failure(plan.status_fd, e))?;
            step(libc::setresuid(0, 0, 0), "setresuid").inspect_err(|e| report_failure(plan.status_fd, e))?;
        }
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
pub(crate) unsafe fn prepare_payload(workdir: &CStr, user: Option<&str>) -> io::Result<()> {
    // Descriptors the worker opened without O_CLOEXEC (C libraries do) must not reach the
    // program: mark everything past stdio close-on-exec (std's error pipe keeps working
    // until the exec itself).
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    step(libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) as libc::c_int, "mark descriptors close-on-exec")?;
    drop_capabilities()?;
    if let Some(user) = user {
        let (uid, gid) = resolve_user(user)?;
        step(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        step(libc::setgid(gid), "setgid")?;
        step(libc::setuid(uid), "setuid")?;
    }
    make_mountpoint(workdir, true)?;
    step(libc::chdir(workdir.as_ptr()), "chdir to workdir")?;
    step(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")?;
    install_seccomp()
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
