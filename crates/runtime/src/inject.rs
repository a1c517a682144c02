//! Replacing a mount inside a running container: what a volume reload needs.
//!
//! The new tree is cloned here (in the caller's mount namespace, where its host path
//! resolves), then a forked child joins the container's mount namespace (a multi-threaded
//! process cannot), unmounts what is at the target and attaches the clone there.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::init::{MountAttr, AT_RECURSIVE, MOUNT_ATTR_IDMAP, MOUNT_ATTR_RDONLY, MOVE_MOUNT_F_EMPTY_PATH, OPEN_TREE_CLONE};

/// Why [`replace_mount`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceMountError {
    /// Something in the container holds the old mount (an open file, a working directory).
    #[error("the mount at {0} is busy: files are open under it")]
    Busy(String),
    #[error("cannot replace the mount at {target}: {what}: {source}")]
    Io { target: String, what: &'static str, source: io::Error },
}

fn io_err(target: &str, what: &'static str, source: io::Error) -> ReplaceMountError {
    ReplaceMountError::Io { target: target.to_string(), what, source }
}

/// Replaces whatever is mounted at `target` (an absolute path inside the container whose init
/// has host pid `pid`) with a bind of the host path `source`. Fails with
/// [`ReplaceMountError::Busy`], changing nothing, while something in the container holds the
/// old mount. Blocking: call it from a blocking thread.
pub fn replace_mount(pid: u32, source: &Path, target: &str, readonly: bool) -> Result<(), ReplaceMountError> {
    let source_c = CString::new(source.as_os_str().as_bytes()).map_err(|e| io_err(target, "source path", io::Error::other(e)))?;
    let target_c = CString::new(target).map_err(|e| io_err(target, "target path", io::Error::other(e)))?;
    let ns_c = CString::new(format!("/proc/{pid}/ns/mnt")).expect("no NUL");
    unsafe {
        let tree = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        ) as libc::c_int;
        if tree < 0 {
            return Err(io_err(target, "clone the new tree", io::Error::last_os_error()));
        }
        let close_tree = Closer(tree);
        // A container with a user namespace of its own sees the tree idmapped, as its binds
        // were at start (files owned by 0 on disk belong to its root); where the file system
        // cannot be idmapped, the tree is attached as it is.
        let userns_path = CString::new(format!("/proc/{pid}/ns/user")).expect("no NUL");
        let own = std::fs::metadata(format!("/proc/{pid}/ns/user")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok()
            != std::fs::metadata("/proc/self/ns/user").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
        if own {
            let ns = libc::open(userns_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if ns >= 0 {
                let _close_ns = Closer(ns);
                let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: ns as u64 };
                libc::syscall(
                    libc::SYS_mount_setattr,
                    tree,
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                );
            }
        }
        if readonly {
            let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
            let r = libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            );
            if r < 0 {
                return Err(io_err(target, "make the new tree read-only", io::Error::last_os_error()));
            }
        }
        let ns = libc::open(ns_c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if ns < 0 {
            return Err(io_err(target, "open the container's mount namespace", io::Error::last_os_error()));
        }
        let close_ns = Closer(ns);
        // The child only makes raw syscalls on data prepared above, as required after fork in
        // a multi-threaded program, and reports the failing step in its exit code.
        let child = libc::fork();
        if child < 0 {
            return Err(io_err(target, "fork", io::Error::last_os_error()));
        }
        if child == 0 {
            if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                libc::_exit(10);
            }
            if libc::umount2(target_c.as_ptr(), 0) != 0 {
                let e = *libc::__errno_location();
                if e == libc::EBUSY {
                    libc::_exit(11);
                }
                if e != libc::EINVAL {
                    libc::_exit(12);
                }
            }
            let r = libc::syscall(libc::SYS_move_mount, tree, c"".as_ptr(), libc::AT_FDCWD, target_c.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH);
            libc::_exit(if r == 0 { 0 } else { 13 });
        }
        drop(close_tree);
        drop(close_ns);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r >= 0 {
                break;
            }
            if *libc::__errno_location() != libc::EINTR {
                return Err(io_err(target, "wait for the mount helper", io::Error::last_os_error()));
            }
        }
        let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
        match code {
            0 => Ok(()),
            11 => Err(ReplaceMountError::Busy(target.to_string())),
            10 => Err(io_err(target, "join the container's mount namespace", io::Error::other("setns failed"))),
            12 => Err(io_err(target, "unmount the old tree", io::Error::other("umount failed"))),
            13 => Err(io_err(target, "attach the new tree (the old one is gone)", io::Error::other("move_mount failed"))),
            _ => Err(io_err(target, "mount helper", io::Error::other(format!("ended with status {status}")))),
        }
    }
}

struct Closer(libc::c_int);

impl Drop for Closer {
    fn drop(&mut self) {
        unsafe {
            libc::close(self.0);
        }
    }
}
