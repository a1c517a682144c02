//! The sandbox filesystem API (`sb.filesystem.*`), served by the router itself.
//!
//! The client implements `read_bytes`, `write_bytes`, `list_files`, `stat`, ... as an exec of
//! `/__modal/.bin/modal-sandbox-fs-tools '<json command>'`, reading JSON or file bytes from its
//! stdout and a JSON error from its stderr. Ferry puts no such binary into the sandbox: an exec
//! of that path runs here, in the server, on the sandbox's root filesystem as seen through
//! `/proc/<pid>/root`. Every path is resolved with `openat2(RESOLVE_IN_ROOT)`, so `..` and
//! symlinks (absolute ones too) stay inside the sandbox's root, as they would for a process in
//! it. File contents stream through the exec's bounded stdout and stdin, never whole in memory.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::output::OutputBuffer;

/// The path the client execs for filesystem operations.
pub const FS_TOOLS_PATH: &str = "/__modal/.bin/modal-sandbox-fs-tools";

const CHUNK: usize = 1024 * 1024;

#[derive(Deserialize)]
enum Command {
    ReadFile { path: String },
    WriteFile { path: String },
    ListFiles { path: String },
    Stat { path: String },
    MakeDirectory { path: String, #[serde(default = "yes")] parents: bool },
    Remove { path: String, #[serde(default)] recursive: bool },
    Watch { path: String },
}

fn yes() -> bool {
    true
}

/// An error as the client's fs-tools error parser expects it on stderr.
struct FsError {
    kind: &'static str,
    message: String,
}

impl FsError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        FsError { kind, message: message.into() }
    }

    fn io(e: std::io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(libc::ENOENT) => "NotFound",
            Some(libc::EISDIR) => "IsDirectory",
            Some(libc::ENOTDIR) => "NotDirectory",
            Some(libc::EEXIST) => "PathAlreadyExists",
            Some(libc::ENOTEMPTY) => "DirectoryNotEmpty",
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => "PermissionDenied",
            _ => "Other",
        };
        let message = match kind {
            "NotFound" => "No such file or directory".to_string(),
            "IsDirectory" => "Is a directory".to_string(),
            "NotDirectory" => "Not a directory".to_string(),
            "PathAlreadyExists" => "Path already exists".to_string(),
            "DirectoryNotEmpty" => "Directory not empty".to_string(),
            "PermissionDenied" => "Permission denied".to_string(),
            _ => e.to_string(),
        };
        FsError { kind, message }
    }
}

type FsResult<T> = Result<T, FsError>;

/// Runs one fs-tools command against the root of process `pid`. Returns the exit code.
pub(crate) async fn run(pid: u32, args: &[String], stdin: tokio::io::DuplexStream, stdout: Arc<OutputBuffer>, stderr: Arc<OutputBuffer>) -> i32 {
    let ids = container_ids(pid);
    IDS.scope(ids, run_at(Root::of_process(pid), args, stdin, stdout, stderr)).await
}

tokio::task_local! {
    /// The host uid/gid of the sandbox's root, when it runs in a user namespace.
    static IDS: Option<(u32, u32)>;
}

/// The host ids of the container's root (its init's): files are made as that user, so they
/// belong to root inside and idmapped layers accept them.
fn container_ids(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<u32>().ok());
    let (uid, gid) = (field("Uid:")?, field("Gid:")?);
    (uid != 0).then_some((uid, gid))
}

async fn run_at(root: FsResult<Root>, args: &[String], stdin: tokio::io::DuplexStream, stdout: Arc<OutputBuffer>, stderr: Arc<OutputBuffer>) -> i32 {
    let outcome = match (root, args.get(1).map(|a| serde_json::from_str::<Command>(a))) {
        (Err(e), _) => Err(e),
        (Ok(root), Some(Ok(cmd))) => execute(root, cmd, stdin, &stdout).await,
        (_, Some(Err(e))) => Err(FsError::new("InvalidInput", format!("unknown filesystem command: {e}"))),
        (_, None) => Err(FsError::new("InvalidInput", "missing filesystem command")),
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            let payload = json!({"error_kind": e.kind, "message": e.message, "detail": ""}).to_string();
            stderr.push(Bytes::from(payload)).await;
            1
        }
    };
    stdout.close();
    stderr.close();
    code
}

async fn execute(root: Root, cmd: Command, mut stdin: tokio::io::DuplexStream, stdout: &Arc<OutputBuffer>) -> FsResult<()> {
    match cmd {
        Command::ReadFile { path } => {
            let file = blocking({
                let root = root.clone();
                move || {
                    let f = root.open(&path, libc::O_RDONLY, 0)?;
                    if f.metadata().map_err(FsError::io)?.is_dir() {
                        return Err(FsError::new("IsDirectory", "Is a directory"));
                    }
                    Ok(f)
                }
            })
            .await?;
            let mut file = tokio::fs::File::from_std(file);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf).await.map_err(FsError::io)?;
                if n == 0 {
                    return Ok(());
                }
                stdout.push(Bytes::copy_from_slice(&buf[..n])).await;
            }
        }
        Command::WriteFile { path } => {
            let file = blocking({
                let root = root.clone();
                move || {
                    if let Some((parent, _)) = split_parent(&path) {
                        root.mkdirs(parent)?;
                    }
                    root.open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)
                }
            })
            .await?;
            let mut file = tokio::fs::File::from_std(file);
            tokio::io::copy(&mut stdin, &mut file).await.map_err(FsError::io)?;
            tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(FsError::io)?;
            Ok(())
        }
        Command::ListFiles { path } => {
            let listing = blocking(move || root.list(&path)).await?;
            stdout.push(Bytes::from(listing)).await;
            Ok(())
        }
        Command::Stat { path } => {
            let info = blocking(move || root.stat(&path)).await?;
            stdout.push(Bytes::from(info.to_string())).await;
            Ok(())
        }
        Command::MakeDirectory { path, parents } => blocking(move || {
            if parents {
                root.mkdirs(&path)
            } else {
                root.mkdir(&path)
            }
        })
        .await,
        Command::Remove { path, recursive } => blocking(move || root.remove(&path, recursive)).await,
        Command::Watch { path } => Err(FsError::new("NotSupported", format!("Ferry does not implement filesystem watch yet ({path})"))),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> FsResult<T> + Send + 'static) -> FsResult<T> {
    let ids = IDS.try_with(|ids| *ids).ok().flatten();
    tokio::task::spawn_blocking(move || match ids {
        // File-system ids are per thread: act as the sandbox's root, then go back.
        Some((uid, gid)) => {
            // SAFETY: setfsuid/setfsgid change only this thread's file-system credentials.
            unsafe {
                libc::setfsgid(gid);
                libc::setfsuid(uid);
            }
            let r = f();
            // SAFETY: as above.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
            r
        }
        None => f(),
    })
    .await
    .unwrap_or_else(|e| Err(FsError::new("Other", e.to_string())))
}

fn split_parent(path: &str) -> Option<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/')?;
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

/// The sandbox's root directory, held open.
#[derive(Clone)]
struct Root(Arc<OwnedFd>);

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

impl Root {
    fn of_process(pid: u32) -> FsResult<Root> {
        Root::at(std::path::Path::new(&format!("/proc/{pid}/root")))
            .map_err(|_| FsError::new("Other", "The Sandbox has already finished"))
    }

    fn at(dir: &std::path::Path) -> FsResult<Root> {
        let f = File::open(dir).map_err(FsError::io)?;
        Ok(Root(Arc::new(f.into())))
    }

    /// `openat2` relative to the sandbox root, never leaving it.
    fn openat(&self, path: &str, flags: i32, mode: u32) -> FsResult<OwnedFd> {
        let c = CString::new(path).map_err(|_| FsError::new("InvalidInput", "path contains a NUL byte"))?;
        let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: mode as u64, resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
        // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and a correctly sized open_how.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, self.0.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
        };
        if fd < 0 {
            return Err(FsError::io(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    fn open(&self, path: &str, flags: i32, mode: u32) -> FsResult<File> {
        self.openat(path, flags, mode).map(File::from)
    }

    /// The parent directory (resolved inside the root) and the final name.
    fn parent(&self, path: &str) -> FsResult<(OwnedFd, CString)> {
        let (parent, name) = split_parent(path).ok_or_else(|| FsError::new("InvalidInput", "the root directory itself"))?;
        if name.is_empty() || name == "." || name == ".." {
            return Err(FsError::new("InvalidInput", format!("invalid path {path}")));
        }
        let dir = self.openat(parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok((dir, CString::new(name).map_err(|_| FsError::new("InvalidInput", "path contains a NUL byte"))?))
    }

    fn mkdir(&self, path: &str) -> FsResult<()> {
        let (dir, name) = self.parent(path)?;
        // SAFETY: mkdirat on a directory fd and a NUL-terminated name without slashes.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
            return Err(FsError::io(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn mkdirs(&self, path: &str) -> FsResult<()> {
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            match self.mkdir(&prefix) {
                Ok(()) => {}
                Err(e) if e.kind == "PathAlreadyExists" => {
                    let f = self.open(&prefix, libc::O_PATH, 0)?;
                    if !f.metadata().map_err(FsError::io)?.is_dir() {
                        return Err(FsError::new("NotDirectory", format!("Not a directory: {prefix}")));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn remove(&self, path: &str, recursive: bool) -> FsResult<()> {
        let (dir, name) = self.parent(path)?;
        let target = self.openat(path, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let is_dir = File::from(target).metadata().map_err(FsError::io)?.is_dir();
        if is_dir && recursive {
            // remove_dir_all does not follow symlinks; the path goes through the already
            // resolved parent directory.
            let p = format!("/proc/self/fd/{}/{}", dir.as_raw_fd(), name.to_string_lossy());
            return std::fs::remove_dir_all(p).map_err(FsError::io);
        }
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: unlinkat on a directory fd and a NUL-terminated name without slashes.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
            return Err(FsError::io(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn stat(&self, path: &str) -> FsResult<serde_json::Value> {
        let fd = self.openat(path, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let name = split_parent(path).map(|(_, n)| n.to_string()).unwrap_or_else(|| "/".into());
        entry(&fd, &name, &normalize(path))
    }

    fn list(&self, path: &str) -> FsResult<String> {
        let dir = self.openat(path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let base = normalize(path);
        let mut out = Vec::new();
        let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(FsError::io)?;
        for e in entries {
            let e = e.map_err(FsError::io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let child = format!("{}/{}", base.trim_end_matches('/'), name);
            let c = CString::new(name.clone()).map_err(|_| FsError::new("Other", "bad name"))?;
            // SAFETY: openat relative to the listed directory, not following a final symlink.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
            if fd < 0 {
                continue;
            }
            // SAFETY: a fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            out.push(entry(&fd, &name, &child)?);
        }
        Ok(serde_json::Value::Array(out).to_string())
    }
}

fn normalize(path: &str) -> String {
    let t = path.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.to_string() }
}

/// One `FileInfo` as the client parses it.
fn entry(fd: &OwnedFd, name: &str, path: &str) -> FsResult<serde_json::Value> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let empty = CString::new("").expect("no NUL");
    // SAFETY: fstatat with AT_EMPTY_PATH on a valid (O_PATH) fd fills `st`.
    if unsafe { libc::fstatat(fd.as_raw_fd(), empty.as_ptr(), &mut st, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(FsError::io(std::io::Error::last_os_error()));
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        _ => "file",
    };
    let symlink_target = if fmt == libc::S_IFLNK {
        let mut buf = vec![0u8; 4096];
        // SAFETY: readlinkat with an empty path reads the link an O_PATH fd refers to.
        let n = unsafe { libc::readlinkat(fd.as_raw_fd(), empty.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
        (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
    } else {
        None
    };
    let mode = st.st_mode & 0o7777;
    let perms: String = [0o400, 0o200, 0o100, 0o040, 0o020, 0o010, 0o004, 0o002, 0o001]
        .iter()
        .zip("rwxrwxrwx".chars())
        .map(|(bit, c)| if mode & bit != 0 { c } else { '-' })
        .collect();
    let who = |id: u32| if id == 0 { "root".to_string() } else { id.to_string() };
    Ok(json!({
        "name": name,
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": mode,
        "permissions": perms,
        "owner": who(st.st_uid),
        "group": who(st.st_gid),
        "modified_time": st.st_mtime as f64 + st.st_mtime_nsec as f64 / 1e9,
        "symlink_target": symlink_target,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Overflow, Read};

    async fn fs(root: &std::path::Path, cmd: serde_json::Value, input: &[u8]) -> (i32, Vec<u8>, String) {
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let out = Arc::new(OutputBuffer::new(1 << 20, Overflow::Block));
        let err = Arc::new(OutputBuffer::new(1 << 20, Overflow::Block));
        let args = vec![FS_TOOLS_PATH.to_string(), cmd.to_string()];
        let data = input.to_vec();
        let writer = tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut ours, &data).await;
        });
        let code = run_at(Root::at(root), &args, theirs, out.clone(), err.clone()).await;
        writer.abort();
        let mut collected = Vec::new();
        for (buf, into) in [(&out, &mut collected)] {
            let mut off = 0;
            while let Read::Data { start, data } = buf.read(off, 1 << 20).await {
                off = start + data.len() as u64;
                into.extend_from_slice(&data);
            }
        }
        let mut e = Vec::new();
        let mut off = 0;
        while let Read::Data { start, data } = err.read(off, 1 << 20).await {
            off = start + data.len() as u64;
            e.extend_from_slice(&data);
        }
        (code, collected, String::from_utf8_lossy(&e).into_owned())
    }

    #[tokio::test]
    async fn paths_and_symlinks_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host only").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", root.path().join("rel-link")).unwrap();
        for link in ["/abs-link", "/rel-link", "/../../etc/passwd"] {
            let (code, out, err) = fs(root.path(), json!({"ReadFile": {"path": link}}), b"").await;
            assert_eq!(code, 1, "{link} must not resolve outside the root");
            assert!(out.is_empty());
            assert!(err.contains("NotFound"), "{err}");
        }
    }

    #[tokio::test]
    async fn write_read_list_stat_remove() {
        let root = tempfile::tempdir().unwrap();
        let (code, _, err) = fs(root.path(), json!({"WriteFile": {"path": "/a/b/c.txt"}}), b"hello").await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read(root.path().join("a/b/c.txt")).unwrap(), b"hello");
        let (_, out, _) = fs(root.path(), json!({"ReadFile": {"path": "/a/b/c.txt"}}), b"").await;
        assert_eq!(out, b"hello");
        let (_, out, _) = fs(root.path(), json!({"ListFiles": {"path": "/a/b"}}), b"").await;
        let list: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(list[0]["name"], "c.txt");
        assert_eq!(list[0]["path"], "/a/b/c.txt");
        assert_eq!(list[0]["size"], 5);
        let (_, out, _) = fs(root.path(), json!({"Stat": {"path": "/a"}}), b"").await;
        let st: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(st["type"], "directory");
        let (code, _, err) = fs(root.path(), json!({"Remove": {"path": "/a", "recursive": false}}), b"").await;
        assert_eq!(code, 1);
        assert!(err.contains("DirectoryNotEmpty"), "{err}");
        let (code, _, _) = fs(root.path(), json!({"Remove": {"path": "/a", "recursive": true}}), b"").await;
        assert_eq!(code, 0);
        assert!(!root.path().join("a").exists());
        let (code, _, err) = fs(root.path(), json!({"MakeDirectory": {"path": "/x/y", "parents": false}}), b"").await;
        assert_eq!(code, 1);
        assert!(err.contains("NotFound"), "{err}");
    }
}
