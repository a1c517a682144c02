//! An extra certificate authority containers trust: the image's own CA bundle with the
//! authority appended, bound read-only over the bundle's path, with `SSL_CERT_FILE` and
//! `REQUESTS_CA_BUNDLE` pointing at it.
//!
//! Ferry uses it for the data dir's own authority, which signs `encrypted_ports` tunnel
//! certificates when the server has no certificate of its own: code in a container that
//! calls such a tunnel (a health check of a Sandbox, a Jupyter client) then verifies it like
//! any public site. Images without a CA bundle are left as they are: they trust nothing by
//! default, and an empty bundle with one private authority would not make them trust more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::Digest;

use crate::container::BindMount;
use crate::store::{ImageStore, LayerId, LayerRecord};

/// Where images keep their CA bundle, most common first: Debian, Ubuntu and Alpine; then
/// Fedora, RHEL and their kin; then openSUSE.
const BUNDLE_PATHS: &[&str] = &["etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt", "etc/ssl/ca-bundle.pem"];

/// Symbolic links followed inside an image before giving up.
const MAX_LINKS: usize = 8;

/// The variables TLS stacks read for their trust store: OpenSSL (and so Python's `ssl`,
/// `urllib`, `aiohttp`, `httpx`), and `requests`, which otherwise uses its own `certifi` copy.
pub(crate) const BUNDLE_VARS: &[&str] = &["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"];

/// One extra authority, and the bundles made with it so far, per image.
#[derive(Debug)]
pub(crate) struct Trust {
    ca_pem: PathBuf,
    bundles: Mutex<HashMap<LayerId, Option<Bundle>>>,
}

/// A bundle on the host and the path it is bound to in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bundle {
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
}

impl Bundle {
    pub(crate) fn bind(&self) -> BindMount {
        BindMount::read_only(self.host.clone(), self.target.clone())
    }
}

impl Trust {
    pub(crate) fn new(ca_pem: PathBuf) -> Trust {
        Trust { ca_pem, bundles: Mutex::new(HashMap::new()) }
    }

    /// The bundle for containers of `image` (`chain`: its layers, topmost first); `None` when
    /// the image has no CA bundle or the authority cannot be read (logged once per image).
    pub(crate) fn bundle(&self, store: &ImageStore, image: &LayerId, chain: &[LayerRecord]) -> Option<Bundle> {
        if let Some(known) = self.bundles.lock().unwrap().get(image) {
            return known.clone();
        }
        let made = match self.make(store, chain) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("containers of image {image} do not trust {}: {e}", self.ca_pem.display());
                None
            }
        };
        self.bundles.lock().unwrap().insert(image.clone(), made.clone());
        made
    }

    fn make(&self, store: &ImageStore, chain: &[LayerRecord]) -> std::io::Result<Option<Bundle>> {
        let lowers: Vec<PathBuf> = chain.iter().map(|r| store.layer_fs(&r.id)).collect();
        let Some((target, image_bundle)) = BUNDLE_PATHS.iter().find_map(|p| image_file(&lowers, p)) else {
            return Ok(None);
        };
        let ca = std::fs::read(&self.ca_pem)?;
        let mut text = std::fs::read(&image_bundle)?;
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(&ca);
        let digest = sha2::Sha256::digest(&text);
        let name = hex::encode(&digest[..16]);
        let dir = store.root().join("ca-bundles");
        std::fs::create_dir_all(&dir)?;
        let host = dir.join(format!("{name}.pem"));
        if !host.exists() {
            let tmp = dir.join(format!(".{name}.{}", crate::store::unique_suffix()));
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &host)?;
        }
        Ok(Some(Bundle { host, target: format!("/{target}") }))
    }
}

/// Finds `path` (relative to the image root) in the overlay of `lowers` (topmost first),
/// resolving symbolic links inside the image, component by component, as the container
/// would see them. Returns the resolved path inside the image and the host file that holds
/// it; `None` when it is missing, deleted by a whiteout, or not a regular file. Nothing on the
/// host outside the layers is ever read: a host path is only built from components already
/// seen to be real directories of the layer it is in.
fn image_file(lowers: &[PathBuf], path: &str) -> Option<(String, PathBuf)> {
    let mut todo: Vec<String> = normalize(Path::new("/"), path)?.split('/').rev().map(str::to_string).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        resolved.push(part);
        let (host, meta) = entry(lowers, &resolved)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let link = std::fs::read_link(&host).ok()?;
            resolved.pop();
            let base = Path::new("/").join(resolved.join("/"));
            // The link's target, then what was left of the path after it.
            let mut rest: Vec<String> = std::mem::take(&mut todo);
            let target = normalize(&base, &link.to_string_lossy()).unwrap_or_default();
            resolved.clear();
            todo = target.split('/').filter(|p| !p.is_empty()).rev().map(str::to_string).collect();
            todo.splice(0..0, rest.drain(..));
        } else if todo.is_empty() {
            return kind.is_file().then(|| (resolved.join("/"), host));
        } else if !kind.is_dir() {
            return None;
        }
    }
    None
}

/// The topmost layer's entry at `parts` (the path's parents already resolved to directories),
/// with its metadata; `None` for a whiteout, or when no layer has it.
fn entry(lowers: &[PathBuf], parts: &[String]) -> Option<(PathBuf, std::fs::Metadata)> {
    use std::os::unix::fs::FileTypeExt;
    let (name, parents) = parts.split_last()?;
    for layer in lowers {
        // In this layer every parent must be a real directory; where one is not, this layer
        // (and, below a non-directory, every lower one) hides the rest.
        let mut dir = layer.clone();
        let mut complete = true;
        let mut opaque = false;
        for parent in parents {
            dir.push(parent);
            match dir.symlink_metadata() {
                Ok(m) if m.is_dir() => opaque |= crate::export::is_opaque(&dir),
                Ok(_) => return None,
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            let host = dir.join(name);
            if let Ok(meta) = host.symlink_metadata() {
                // An overlayfs whiteout: a 0/0 character device.
                if meta.file_type().is_char_device() {
                    return None;
                }
                return Some((host, meta));
            }
        }
        if opaque {
            return None;
        }
    }
    None
}

/// `link` resolved against `base` (an absolute path inside the image), as a path relative to
/// the image root with no `.` or `..`; `None` for an empty result.
fn normalize(base: &Path, link: &str) -> Option<String> {
    let joined = if link.starts_with('/') { PathBuf::from(link) } else { base.join(link) };
    let mut parts: Vec<String> = Vec::new();
    for c in joined.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn finds_the_topmost_file_through_links_and_honours_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, mid, base) = (layer(tmp.path(), "top"), layer(tmp.path(), "mid"), layer(tmp.path(), "base"));
        std::fs::create_dir_all(base.join("etc/ssl/certs")).unwrap();
        std::fs::write(base.join("etc/ssl/certs/ca-certificates.crt"), "base").unwrap();
        std::fs::create_dir_all(mid.join("etc/ssl/certs")).unwrap();
        std::fs::write(mid.join("etc/ssl/certs/ca-certificates.crt"), "mid").unwrap();
        let lowers = vec![top.clone(), mid.clone(), base.clone()];
        let (path, host) = image_file(&lowers, "etc/ssl/certs/ca-certificates.crt").unwrap();
        assert_eq!(path, "etc/ssl/certs/ca-certificates.crt");
        assert_eq!(std::fs::read_to_string(host).unwrap(), "mid");

        // A link (relative, with ..) to a file in a lower layer is followed.
        std::fs::create_dir_all(top.join("etc/ssl/certs")).unwrap();
        std::os::unix::fs::symlink("../cert.pem", top.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        std::fs::write(base.join("etc/ssl/cert.pem"), "linked").unwrap();
        let (path, host) = image_file(&lowers, "etc/ssl/certs/ca-certificates.crt").unwrap();
        assert_eq!(path, "etc/ssl/cert.pem");
        assert_eq!(std::fs::read_to_string(host).unwrap(), "linked");

        // A whiteout (a 0/0 character device, as layers hold them) of the link's target hides
        // it. Making one needs root (CAP_MKNOD).
        let whiteout = std::ffi::CString::new(top.join("etc/ssl/cert.pem").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; mknod only creates the node.
        if unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o600, 0) } == 0 {
            assert_eq!(image_file(&lowers, "etc/ssl/certs/ca-certificates.crt"), None);
        } else {
            eprintln!("skipped: whiteouts need root (mknod)");
        }
        // A regular file in an upper layer where a lower one has a directory hides the
        // directory's contents.
        std::fs::write(top.join("etc/pki"), "not a directory").unwrap();
        std::fs::create_dir_all(base.join("etc/pki/tls/certs")).unwrap();
        std::fs::write(base.join("etc/pki/tls/certs/ca-bundle.crt"), "hidden").unwrap();
        assert_eq!(image_file(&lowers, "etc/pki/tls/certs/ca-bundle.crt"), None);
        std::fs::remove_file(top.join("etc/pki")).unwrap();
        assert!(image_file(&lowers, "etc/pki/tls/certs/ca-bundle.crt").is_some());
        std::fs::remove_file(base.join("etc/pki/tls/certs/ca-bundle.crt")).unwrap();
        // A directory is not a bundle.
        std::fs::create_dir_all(base.join("etc/pki/tls/certs/ca-bundle.crt")).unwrap();
        assert_eq!(image_file(&lowers, "etc/pki/tls/certs/ca-bundle.crt"), None);
    }

    #[test]
    fn links_cannot_leave_the_image() {
        // A directory link to an absolute host path resolves inside the image, where the
        // target does not exist: the host's file is never read.
        let tmp = tempfile::tempdir().unwrap();
        let host_dir = tmp.path().join("host-secrets");
        std::fs::create_dir_all(host_dir.join("certs")).unwrap();
        std::fs::write(host_dir.join("certs/ca-certificates.crt"), "host").unwrap();
        let top = layer(tmp.path(), "top");
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::os::unix::fs::symlink(&host_dir, top.join("etc/ssl")).unwrap();
        assert_eq!(image_file(&[top.clone()], "etc/ssl/certs/ca-certificates.crt"), None);
        // The same link with the target inside the image is followed.
        let inside = top.join(host_dir.strip_prefix("/").unwrap());
        std::fs::create_dir_all(inside.join("certs")).unwrap();
        std::fs::write(inside.join("certs/ca-certificates.crt"), "image").unwrap();
        let (_, host) = image_file(&[top], "etc/ssl/certs/ca-certificates.crt").unwrap();
        assert_eq!(std::fs::read_to_string(host).unwrap(), "image");

        assert_eq!(normalize(Path::new("/etc/ssl"), "../../../../etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(normalize(Path::new("/"), "/").as_deref(), None);
    }
}
