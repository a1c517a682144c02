//! A standalone Python for `add_python=`: a self-contained `/usr/local` tree that runs on any
//! Linux root filesystem of the host's architecture, even one without a libc (busybox, distroless).
//!
//! No package registry carries a relocatable CPython build, so Ferry makes one from its own
//! Debian base of the same series (3.11 bookworm, 3.13 trixie): the interpreter, its standard
//! library, pip (and the base's other `/usr/local` packages) in `lib/python3/dist-packages`,
//! and every shared library the interpreter and its extension modules need, the dynamic loader
//! included, in `lib/ferry-python/`. `patchelf` points the interpreter at that loader and gives
//! every binary an RPATH there, so nothing of the image's own libraries is used by Python.
//! The tree is made once per series and kept under `images/standalone/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::logs::{LogLine, LogSink};
use crate::store::{remove_tree, ImageStore};

/// Where the tree's libraries live once copied into an image (`COPY /python/. /usr/local`).
const LIB_DIR: &str = "/usr/local/lib/ferry-python";

/// The tree for `add_python=<series>` (e.g. "3.11"), made on first use. `python_link` adds
/// `bin/python` (newer standalone releases ship it; for older ones the client's build step
/// makes the link itself). Returns the directory whose contents go to `/usr/local`.
pub async fn standalone_python(store: &ImageStore, series: &str, python_link: bool, log: &LogSink) -> Result<PathBuf> {
    crate::base::suite_for_python(series)?;
    let name = format!("{series}{}", if python_link { "-with-python" } else { "" });
    let dest = store.root().join("standalone").join(&name);
    if dest.join("done").exists() {
        return Ok(dest.join("python"));
    }
    let base = crate::base::prepare_in(store, series, log).await?;
    let _ = log.send(LogLine::system(format!(
        "ferry: making a standalone Python {} for add_python= from Ferry's Debian {} base",
        base.python_version, base.suite
    )));
    let rootfs = store.layer_fs(&base.layer);
    let staging = store.staging_dir("standalone")?;
    let tree = staging.join("python");
    let series2 = series.to_string();
    let tree2 = tree.clone();
    let made = tokio::task::spawn_blocking(move || assemble(&rootfs, &tree2, &series2, python_link))
        .await
        .map_err(|e| Error::Io { context: "making a standalone Python".into(), source: std::io::Error::other(e.to_string()) })
        .and_then(|r| r);
    if let Err(e) = made {
        remove_tree(&staging);
        return Err(e);
    }
    std::fs::write(staging.join("done"), b"").ctx(|| "marking the standalone Python done".into())?;
    std::fs::create_dir_all(dest.parent().expect("parent")).ctx(|| format!("creating {}", dest.display()))?;
    if std::fs::rename(&staging, &dest).is_err() {
        // Another build made it meanwhile (or a half one without `done` is in the way).
        if !dest.join("done").exists() {
            remove_tree(&dest);
            std::fs::rename(&staging, &dest).ctx(|| format!("moving the standalone Python to {}", dest.display()))?;
        } else {
            remove_tree(&staging);
        }
    }
    Ok(dest.join("python"))
}

fn fail(series: &str, reason: impl Into<String>) -> Error {
    Error::StandalonePython { series: series.to_string(), reason: reason.into() }
}

fn patchelf(series: &str, args: &[&str], file: &Path) -> Result<String> {
    let out = Command::new("patchelf").args(args).arg(file).output().map_err(|e| {
        fail(series, format!("`patchelf` is needed on the Ferry host (apt-get install patchelf): {e}"))
    })?;
    if !out.status.success() {
        return Err(fail(series, format!("patchelf {} {}: {}", args.join(" "), file.display(), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x7fELF"
}

/// `path` (absolute, as seen inside `root`) with symlinks followed inside `root`.
fn resolve(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut p = root.join(path.strip_prefix("/").unwrap_or(path));
    for _ in 0..40 {
        let meta = std::fs::symlink_metadata(&p).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(p);
        }
        let target = std::fs::read_link(&p).ok()?;
        p = if target.is_absolute() { root.join(target.strip_prefix("/").ok()?) } else { p.parent()?.join(target) };
    }
    None
}

/// Copies the tree at `src` (inside `root`) to `dst`: symlinks become copies of what they
/// point to inside `root` (dangling ones are left out), so the tree has plain files only.
fn copy_tree(root: &Path, src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let real = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from)?;
            let inside = if target.is_absolute() { target } else { Path::new("/").join(from.strip_prefix(root).unwrap_or(&from)).parent().unwrap_or(Path::new("/")).join(target) };
            match resolve(root, &inside) {
                Some(r) => r,
                None => continue,
            }
        } else {
            from
        };
        if real.is_dir() {
            copy_tree(root, &real, &to)?;
        } else if real.is_file() {
            std::fs::copy(&real, &to)?;
        }
    }
    Ok(())
}

fn assemble(rootfs: &Path, tree: &Path, series: &str, python_link: bool) -> Result<()> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| fail(series, format!("{what}: {e}"))
    };
    let binary = rootfs.join(format!("usr/bin/python{series}"));
    if !binary.is_file() {
        return Err(fail(series, format!("the base has no {}", binary.display())));
    }
    let (bin, libs) = (tree.join("bin"), tree.join("lib/ferry-python"));
    std::fs::create_dir_all(&bin).map_err(io("creating bin"))?;
    std::fs::create_dir_all(&libs).map_err(io("creating lib"))?;
    let python = bin.join(format!("python{series}"));
    std::fs::copy(&binary, &python).map_err(io("copying the interpreter"))?;
    let stdlib = tree.join(format!("lib/python{series}"));
    copy_tree(rootfs, &rootfs.join(format!("usr/lib/python{series}")), &stdlib).map_err(io("copying the standard library"))?;
    let site = rootfs.join(format!("usr/local/lib/python{series}/dist-packages"));
    if site.is_dir() {
        copy_tree(rootfs, &site, &tree.join("lib/python3/dist-packages")).map_err(io("copying pip"))?;
    }

    // Every ELF file of the tree, and the libraries they need, found in the base.
    let mut elves: Vec<PathBuf> = vec![python.clone()];
    let mut stack = vec![tree.join("lib")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(io("listing the tree"))?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p != libs {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "so") && is_elf(&p) {
                elves.push(p);
            }
        }
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => return Err(fail(series, format!("architecture {other} is not supported"))),
    };
    let search = [format!("/lib/{arch}"), format!("/usr/lib/{arch}"), "/lib64".into(), "/lib".into(), "/usr/lib".into()];
    let interp = patchelf(series, &["--print-interpreter"], &python)?.trim().to_string();
    let interp_name = Path::new(&interp).file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| fail(series, "the interpreter has no ELF interpreter"))?;
    let loader = resolve(rootfs, Path::new(&interp)).ok_or_else(|| fail(series, format!("the base has no {interp}")))?;
    std::fs::copy(&loader, libs.join(&interp_name)).map_err(io("copying the dynamic loader"))?;
    let mut bundled = std::collections::HashSet::from([interp_name.clone()]);
    let mut queue = elves.clone();
    while let Some(elf) = queue.pop() {
        for needed in patchelf(series, &["--print-needed"], &elf)?.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !bundled.insert(needed.to_string()) {
                continue;
            }
            let found = search.iter().find_map(|d| resolve(rootfs, &Path::new(d).join(needed)).filter(|p| p.is_file()));
            let Some(found) = found else { return Err(fail(series, format!("the base has no {needed}, which {} needs", elf.display()))) };
            let copy = libs.join(needed);
            std::fs::copy(&found, &copy).map_err(io("copying a library"))?;
            queue.push(copy.clone());
            elves.push(copy);
        }
    }
    let loader_path = format!("{LIB_DIR}/{interp_name}");
    patchelf(series, &["--set-interpreter", loader_path.as_str(), "--force-rpath", "--set-rpath", LIB_DIR], &python)?;
    for elf in elves.iter().skip(1) {
        patchelf(series, &["--force-rpath", "--set-rpath", LIB_DIR], elf)?;
    }
    std::fs::copy(&python, bin.join("python3")).map_err(io("copying python3"))?;
    if python_link {
        std::fs::copy(&python, bin.join("python")).map_err(io("copying python"))?;
    }
    Ok(())
}
