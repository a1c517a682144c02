//! Network file systems (`modal.NetworkFileSystem`): one plain host directory per object,
//! `DATA_DIR/nfs/<id>`, bound read-write into every container that mounts it. There is no
//! commit or reload: a write is visible to every container and to the client at once, as on
//! Modal's NFS, and concurrent writers of one file race as they would there.
//!
//! Containers write into these directories, so nothing here trusts what it finds in them:
//! every path the client names is resolved with `openat2(RESOLVE_BENEATH)`, so no symlink a
//! container planted can lead a client's read, write or removal outside the directory.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::paths::normalize;
use crate::{Result, VolumeError};

/// The most entries one listing returns (a glob over a huge tree stops there).
const MAX_LISTING: usize = 100_000;

/// What a listed path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NfsKind {
    File,
    Directory,
    Symlink,
    Fifo,
    Socket,
    Other,
}

/// One listed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsEntry {
    pub path: String,
    pub kind: NfsKind,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
}

/// The directories of all network file systems.
pub struct SharedDirs {
    root: PathBuf,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> VolumeError {
    move |e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => VolumeError::NotFound(format!("No such file or directory: {what}")),
        Some(libc::EXDEV) | Some(libc::ELOOP) => {
            VolumeError::Invalid(format!("{what}: a symbolic link on the way leads outside the network file system"))
        }
        Some(libc::EISDIR) => VolumeError::Invalid(format!("{what} is a directory")),
        Some(libc::ENOTEMPTY) => VolumeError::Invalid(format!("directory {what} is not empty; pass recursive=True to remove it")),
        _ => VolumeError::io(what, e),
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| VolumeError::Invalid("paths cannot contain NUL bytes".into()))
}

/// Opens `rel` (relative, "" for the directory itself) beneath `dir`: no `..`, absolute
/// symlink or symlink leading out of `dir` is followed.
fn open_beneath(dir: RawFd, rel: &str, flags: i32, mode: u32) -> io::Result<File> {
    let path = CString::new(if rel.is_empty() { "." } else { rel }).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the pointers outlive the call and the size is the struct's.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, dir, path.as_ptr(), &how as *const libc::open_how, std::mem::size_of::<libc::open_how>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

fn stat_at(dir: RawFd, name: &str) -> io::Result<libc::stat> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn kind_of_mode(mode: u32) -> NfsKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => NfsKind::File,
        libc::S_IFDIR => NfsKind::Directory,
        libc::S_IFLNK => NfsKind::Symlink,
        libc::S_IFIFO => NfsKind::Fifo,
        libc::S_IFSOCK => NfsKind::Socket,
        _ => NfsKind::Other,
    }
}

/// The names in the directory `dir` (without `.` and `..`).
fn names(dir: &File) -> io::Result<Vec<String>> {
    // Reads through the descriptor, so the directory listed is the one that was opened.
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        out.push(entry?.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

fn split_parent(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

fn has_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

impl SharedDirs {
    /// The directories under `DATA_DIR/nfs`.
    pub fn open(data_dir: &Path) -> Result<SharedDirs> {
        let root = data_dir.join("nfs");
        std::fs::create_dir_all(&root).map_err(|e| VolumeError::io(format!("cannot create {}", root.display()), e))?;
        Ok(SharedDirs { root })
    }

    /// The host directory of a network file system, created if missing; containers bind it.
    pub fn dir(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(VolumeError::Invalid(format!("'{id}' is not a network file system id")));
        }
        let dir = self.root.join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                // Readable and writable by any user a container runs as, like a fresh NFS share.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| VolumeError::io(format!("cannot set the mode of {}", dir.display()), e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(VolumeError::io(format!("cannot create {}", dir.display()), e)),
        }
        Ok(dir)
    }

    fn root_of(&self, id: &str) -> Result<File> {
        let dir = self.dir(id)?;
        File::open(&dir).map_err(|e| VolumeError::io(format!("cannot open {}", dir.display()), e))
    }

    /// Writes a whole file (replacing one that is there), creating its parent directories. The
    /// new contents appear at once and whole: they are written aside and renamed into place.
    pub fn write(&self, id: &str, path: &str, data: &[u8]) -> Result<()> {
        let rel = normalize(path)?;
        if rel.is_empty() {
            return Err(VolumeError::Invalid("a file path is needed, not the root directory".into()));
        }
        let root = self.root_of(id)?;
        let (parent, name) = split_parent(&rel);
        let mut sofar = String::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            let at = open_beneath(root.as_raw_fd(), &sofar, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(&sofar))?;
            let c = cstr(part)?;
            // SAFETY: valid descriptor and C string.
            if unsafe { libc::mkdirat(at.as_raw_fd(), c.as_ptr(), 0o777) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(io_err(format!("{sofar}/{part}"))(e));
                }
            }
            if !sofar.is_empty() {
                sofar.push('/');
            }
            sofar.push_str(part);
        }
        let dir = open_beneath(root.as_raw_fd(), &sofar, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(parent))?;
        let tmp = format!(".ferry-put-{}-{name}", std::process::id());
        let tmp = if tmp.len() > 255 { format!(".ferry-put-{}", std::process::id()) } else { tmp };
        let mut file = open_beneath(dir.as_raw_fd(), &tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW, 0o666)
            .map_err(io_err(&rel))?;
        let written = file.write_all(data).and_then(|_| file.sync_all());
        let (ctmp, cname) = (cstr(&tmp)?, cstr(name)?);
        if let Err(e) = written {
            // SAFETY: valid descriptor and C string.
            unsafe { libc::unlinkat(dir.as_raw_fd(), ctmp.as_ptr(), 0) };
            return Err(io_err(&rel)(e));
        }
        // SAFETY: valid descriptors and C strings.
        if unsafe { libc::renameat(dir.as_raw_fd(), ctmp.as_ptr(), dir.as_raw_fd(), cname.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            unsafe { libc::unlinkat(dir.as_raw_fd(), ctmp.as_ptr(), 0) };
            return Err(io_err(&rel)(e));
        }
        Ok(())
    }

    /// Opens a regular file for reading; returns it with its size.
    pub fn open_file(&self, id: &str, path: &str) -> Result<(File, u64)> {
        let rel = normalize(path)?;
        let root = self.root_of(id)?;
        let file = open_beneath(root.as_raw_fd(), &rel, libc::O_RDONLY | libc::O_NONBLOCK, 0).map_err(io_err(path))?;
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.file_type().is_file() {
            return Err(VolumeError::Invalid(format!("{path} is not a regular file")));
        }
        Ok((file, meta.len()))
    }

    /// Lists a directory (names relative to it), a single file, or, for a path with glob
    /// characters (`*`, `**`, `?`, `[...]`), every path that matches (relative to the root).
    pub fn list(&self, id: &str, path: &str) -> Result<Vec<NfsEntry>> {
        let rel = normalize(path)?;
        let root = self.root_of(id)?;
        if has_glob(&rel) {
            return self.glob(&root, &rel);
        }
        let target = open_beneath(root.as_raw_fd(), &rel, libc::O_PATH | libc::O_NOFOLLOW, 0).map_err(io_err(path))?;
        let meta = target.metadata().map_err(io_err(path))?;
        if !meta.is_dir() {
            let kind = if meta.file_type().is_symlink() { NfsKind::Symlink } else { kind_of_mode(meta.mode()) };
            return Ok(vec![NfsEntry { path: rel, kind, size: meta.len(), mtime: meta.mtime().max(0) as u64 }]);
        }
        let dir = open_beneath(root.as_raw_fd(), &rel, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(path))?;
        let mut out = Vec::new();
        for name in names(&dir).map_err(io_err(path))? {
            if let Ok(st) = stat_at(dir.as_raw_fd(), &name) {
                out.push(NfsEntry { path: name, kind: kind_of_mode(st.st_mode), size: st.st_size.max(0) as u64, mtime: st.st_mtime.max(0) as u64 });
            }
            if out.len() >= MAX_LISTING {
                break;
            }
        }
        Ok(out)
    }

    fn glob(&self, root: &File, pattern: &str) -> Result<Vec<NfsEntry>> {
        let compiled =
            glob::Pattern::new(pattern).map_err(|e| VolumeError::Invalid(format!("'{pattern}' is not a valid glob: {e}")))?;
        let options = glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };
        // Walk from the deepest directory without glob characters.
        let parts: Vec<&str> = pattern.split('/').collect();
        let fixed = parts.iter().take_while(|p| !has_glob(p)).cloned().collect::<Vec<_>>().join("/");
        let deep = pattern.contains("**");
        let depth = parts.len();
        let mut out = Vec::new();
        let Ok(start) = open_beneath(root.as_raw_fd(), &fixed, libc::O_RDONLY | libc::O_DIRECTORY, 0) else {
            return Ok(out);
        };
        let mut stack = vec![(start, fixed.clone())];
        while let Some((dir, prefix)) = stack.pop() {
            let Ok(list) = names(&dir) else { continue };
            for name in list {
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                let Ok(st) = stat_at(dir.as_raw_fd(), &name) else { continue };
                let kind = kind_of_mode(st.st_mode);
                if compiled.matches_with(&path, options) {
                    out.push(NfsEntry { path: path.clone(), kind, size: st.st_size.max(0) as u64, mtime: st.st_mtime.max(0) as u64 });
                    if out.len() >= MAX_LISTING {
                        return Ok(out);
                    }
                }
                let levels = path.split('/').count();
                if kind == NfsKind::Directory && (deep || levels < depth) {
                    if let Ok(sub) = open_beneath(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0) {
                        stack.push((sub, path));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Removes a file, or a directory (with what it holds only when `recursive`).
    pub fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<()> {
        let rel = normalize(path)?;
        if rel.is_empty() {
            return Err(VolumeError::Invalid("the root directory of a network file system cannot be removed".into()));
        }
        let root = self.root_of(id)?;
        let (parent, name) = split_parent(&rel);
        let dir = open_beneath(root.as_raw_fd(), parent, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(path))?;
        let st = stat_at(dir.as_raw_fd(), name).map_err(io_err(path))?;
        if kind_of_mode(st.st_mode) == NfsKind::Directory {
            if recursive {
                let sub = open_beneath(dir.as_raw_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
                    .map_err(io_err(path))?;
                empty_dir(&sub).map_err(io_err(path))?;
            }
            unlink_at(dir.as_raw_fd(), name, libc::AT_REMOVEDIR).map_err(io_err(path))
        } else {
            unlink_at(dir.as_raw_fd(), name, 0).map_err(io_err(path))
        }
    }

    /// Removes a network file system's directory and everything in it.
    pub fn delete(&self, id: &str) -> Result<()> {
        let dir = self.dir(id)?;
        // std's remove_dir_all does not follow symlinks.
        std::fs::remove_dir_all(&dir).map_err(|e| VolumeError::io(format!("cannot remove {}", dir.display()), e))
    }

    /// Removes the directories of network file systems that no longer exist.
    pub fn sweep(&self, live: &HashSet<String>) -> usize {
        let Ok(read) = std::fs::read_dir(&self.root) else { return 0 };
        let mut removed = 0;
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn unlink_at(dir: RawFd, name: &str, flags: i32) -> io::Result<()> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid descriptor and C string.
    if unsafe { libc::unlinkat(dir, c.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes everything in `dir`, never following a symlink.
fn empty_dir(dir: &File) -> io::Result<()> {
    for name in names(dir)? {
        let st = stat_at(dir.as_raw_fd(), &name)?;
        if kind_of_mode(st.st_mode) == NfsKind::Directory {
            let sub = open_beneath(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)?;
            empty_dir(&sub)?;
            unlink_at(dir.as_raw_fd(), &name, libc::AT_REMOVEDIR)?;
        } else {
            unlink_at(dir.as_raw_fd(), &name, 0)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> (tempfile::TempDir, SharedDirs) {
        let t = tempfile::tempdir().unwrap();
        let d = SharedDirs::open(t.path()).unwrap();
        (t, d)
    }

    #[test]
    fn write_list_read_remove() {
        let (_t, d) = dirs();
        d.write("sv-a", "/x/y/z.txt", b"hello").unwrap();
        d.write("sv-a", "top.txt", b"1").unwrap();
        let root: Vec<_> = d.list("sv-a", "/").unwrap().into_iter().map(|e| (e.path, e.kind)).collect();
        assert_eq!(root, vec![("top.txt".to_string(), NfsKind::File), ("x".to_string(), NfsKind::Directory)]);
        let one = d.list("sv-a", "x/y/z.txt").unwrap();
        assert_eq!((one[0].path.as_str(), one[0].size), ("x/y/z.txt", 5));
        let globbed: Vec<_> = d.list("sv-a", "**/*.txt").unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(globbed, vec!["top.txt", "x/y/z.txt"]);
        let (mut f, n) = d.open_file("sv-a", "x/y/z.txt").unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!((s.as_str(), n), ("hello", 5));
        assert!(matches!(d.remove("sv-a", "x", false), Err(VolumeError::Invalid(_))));
        d.remove("sv-a", "x", true).unwrap();
        assert!(matches!(d.list("sv-a", "x"), Err(VolumeError::NotFound(_))));
        assert!(matches!(d.open_file("sv-a", "nope"), Err(VolumeError::NotFound(_))));
    }

    #[test]
    fn symlinks_cannot_lead_out() {
        let (t, d) = dirs();
        let dir = d.dir("sv-b").unwrap();
        std::fs::write(t.path().join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink(t.path(), dir.join("out")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
        assert!(d.open_file("sv-b", "out/secret").is_err());
        assert!(d.open_file("sv-b", "etc/hostname").is_err());
        assert!(d.write("sv-b", "out/planted", b"x").is_err());
        assert!(!t.path().join("planted").exists());
        assert!(d.list("sv-b", "out").unwrap().iter().all(|e| e.kind == NfsKind::Symlink));
        d.remove("sv-b", "out", true).unwrap();
        assert!(t.path().join("secret").exists());
        assert!(matches!(d.list("sv-b", "../x"), Err(VolumeError::Invalid(_))));
    }

    #[test]
    fn delete_and_sweep() {
        let (_t, d) = dirs();
        d.write("sv-c", "a", b"1").unwrap();
        d.write("sv-d", "a", b"1").unwrap();
        d.delete("sv-c").unwrap();
        assert_eq!(d.sweep(&HashSet::from(["sv-e".to_string()])), 1);
        assert!(d.list("sv-d", "/").unwrap().is_empty());
    }
}
