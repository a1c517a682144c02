//! Writable overlays that the host mounts for containers to write through (Volume views).
//!
//! The kernel cannot idmap an overlay mount, so a container in a user namespace of its own
//! would see a plain overlay's files (owned by 0 on disk) as nobody's and could write nothing.
//! Instead the overlay itself is mounted over *idmapped layers*: disk uid 0 is
//! [`SHARED_RANGE`]'s base on the host, and a container with such a mount runs with that range
//! (its root is the range's base), so what it writes lands on disk owned by 0, exactly as with
//! the image store. The containers that write to Volumes share this one range (they share the
//! Volumes' files anyway); every other container keeps a range of its own.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::init::IdMap;

/// The uid/gid range of containers with a writable shared overlay: above every per-container
/// range of [`crate::init::allocate_ids`].
pub(crate) const SHARED_RANGE: IdMap = IdMap { base: 0x4000_0000 + 0x3000 * 0x10000, count: 0x10000 };

/// Where the idmapped views of a shared overlay's layers are attached, under its `views` dir.
const LOWER_VIEW: &str = "lower";
const UPPER_VIEW: &str = "upper";

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

/// Mounts an overlay of `lower` under `upper_parent/upper` (work dir `upper_parent/work`, both
/// existing) at `merged`, with `options` appended, for containers to write through. With user
/// namespaces in effect (see [`crate::isolation`]) the layers are idmapped views attached under
/// `views` (created here; call [`unmount_shared_overlay`] with it after unmounting `merged`);
/// otherwise it is a plain overlay. Blocking; changes and restores the calling thread's fsuid.
pub fn mount_shared_overlay(lower: &Path, upper_parent: &Path, merged: &Path, views: &Path, options: &str) -> io::Result<()> {
    let plain = |lower: &Path, upper_parent: &Path| -> io::Result<()> {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{options}",
            lower.display(),
            upper_parent.join("upper").display(),
            upper_parent.join("work").display()
        );
        mount_overlay(merged, &opts)
    };
    let idmapped = crate::probe::known().is_some_and(|i| i.user_namespaces);
    if !idmapped {
        return plain(lower, upper_parent);
    }
    let (lv, uv) = (views.join(LOWER_VIEW), views.join(UPPER_VIEW));
    for d in [&lv, &uv] {
        std::fs::create_dir_all(d)?;
    }
    let line = CString::new(format!("0 {} {}\n", SHARED_RANGE.base, SHARED_RANGE.count)).expect("digits");
    // SAFETY: make_userns forks a child that makes raw syscalls only; the descriptors are ours.
    unsafe {
        let ns = crate::launch::make_userns(&line)?;
        let attached = crate::init::idmapped_view(lower, &lv, ns).and_then(|_| crate::init::idmapped_view(upper_parent, &uv, ns));
        libc::close(ns);
        if let Err(e) = attached {
            unmount_shared_overlay(views);
            return Err(e);
        }
        // Overlayfs copies up and makes its work files with the mounter's credentials, which
        // must be mapped in the idmapped layers: the range's root, on this thread only.
        let (old_uid, old_gid) = (libc::setfsuid(SHARED_RANGE.base), libc::setfsgid(SHARED_RANGE.base));
        let mounted = crate::init::raise_effective_caps().and_then(|_| {
            let opts = format!("lowerdir={},upperdir={},workdir={},{options}", lv.display(), uv.join("upper").display(), uv.join("work").display());
            mount_overlay(merged, &opts)
        });
        libc::setfsgid(old_gid as libc::gid_t);
        libc::setfsuid(old_uid as libc::uid_t);
        let _ = crate::init::raise_effective_caps();
        if let Err(e) = mounted {
            unmount_shared_overlay(views);
            return Err(e);
        }
    }
    Ok(())
}

fn mount_overlay(merged: &Path, opts: &str) -> io::Result<()> {
    let opts = CString::new(opts).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))?;
    let merged = cpath(merged)?;
    // SAFETY: NUL-terminated strings.
    if unsafe { libc::mount(c"overlay".as_ptr(), merged.as_ptr(), c"overlay".as_ptr(), 0, opts.as_ptr().cast()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the layer views of a shared overlay (after its merged mount) and removes `views`.
pub fn unmount_shared_overlay(views: &Path) {
    for d in [LOWER_VIEW, UPPER_VIEW] {
        if let Ok(c) = cpath(&views.join(d)) {
            // SAFETY: a NUL-terminated path; EINVAL (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(views.join(d));
    }
    let _ = std::fs::remove_dir(views);
}

/// The range a container must run with to own what is in `dir` (an overlay mounted by
/// [`mount_shared_overlay`] shows disk uid 0 as the range's base).
pub(crate) fn shared_range_of(dir: &Path) -> Option<IdMap> {
    use std::os::unix::fs::MetadataExt;
    (std::fs::metadata(dir).ok()?.uid() == SHARED_RANGE.base).then_some(SHARED_RANGE)
}
