//! Layers as OCI image layers (tar compressed with zstd), so another worker, a registry or any
//! OCI tool can fetch them: `ImageStore::export_layer` writes one layer blob, `export_image`
//! an OCI image layout of a layer and everything under it (which `skopeo copy oci:DIR:TAG ...`
//! pushes to a registry, and which Ferry pulls back like any registry image).
//!
//! Overlayfs whiteouts (0/0 character devices) become OCI `.wh.NAME` entries and opaque
//! directories (`trusted.overlay.opaque=y`) get a `.wh..wh..opq` entry: the inverse of what
//! unpacking a registry layer does.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::store::{ImageStore, LayerId};

/// The media type of the layers Ferry exports.
pub const OCI_ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One exported layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedLayer {
    pub layer: LayerId,
    /// `sha256:<hex>` of the compressed blob (its name in a registry).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the image config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// Bytes of the compressed blob.
    pub size: u64,
}

/// An image written as an OCI image layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedImage {
    pub manifest_digest: String,
    /// Bottom layer first.
    pub layers: Vec<ExportedLayer>,
}

/// Counts and hashes what passes through.
struct HashWriter<W: Write> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter { inner, hash: Sha256::new(), bytes: 0 }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex::encode(self.hash.finalize())), self.bytes)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let mut buf = [0u8; 2];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

fn empty_file(path: &Path, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(0);
    let _ = h.set_path(path);
    h
}

/// Appends the tree under `root` (relative names from `rel`), sorted, whiteouts translated.
fn append_tree<W: Write>(tar: &mut tar::Builder<W>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel_path: PathBuf = rel.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            let mut h = empty_file(&rel.join(format!(".wh.{}", name.to_string_lossy())), 0o644);
            h.set_cksum();
            tar.append(&h, std::io::empty())?;
            continue;
        }
        if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            // Device nodes and FIFOs are written from their metadata (the tar crate's own path
            // for them refuses relative names).
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            h.set_size(0);
            let dev = meta.rdev();
            h.set_device_major(libc::major(dev) as u32)?;
            h.set_device_minor(libc::minor(dev) as u32)?;
            tar.append_data(&mut h, &rel_path, std::io::empty())?;
            continue;
        }
        tar.append_path_with_name(&path, &rel_path)?;
        if ft.is_dir() {
            if is_opaque(&path) {
                let mut h = empty_file(&rel_path.join(".wh..wh..opq"), 0o644);
                h.set_cksum();
                tar.append(&h, std::io::empty())?;
            }
            append_tree(tar, root, &rel_path)?;
        }
    }
    Ok(())
}

impl ImageStore {
    /// Writes the layer's own files (not its parents') to `out` as an OCI layer blob: a tar,
    /// compressed with zstd, streamed (nothing is held in memory).
    pub fn export_layer(&self, id: &LayerId, out: impl Write) -> Result<ExportedLayer> {
        let fs = self.layer_fs(id);
        if !self.contains(id) {
            return Err(Error::LayerNotFound(id.to_string()));
        }
        let ctx = || format!("exporting layer {id}");
        let compressed = HashWriter::new(out);
        let encoder = zstd::stream::write::Encoder::new(compressed, 3).ctx(ctx)?;
        let plain = HashWriter::new(encoder);
        let mut tar = tar::Builder::new(plain);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        append_tree(&mut tar, &fs, Path::new("")).ctx(ctx)?;
        let plain = tar.into_inner().ctx(ctx)?;
        let (encoder, diff_id, _) = plain.finish();
        let compressed = encoder.finish().ctx(ctx)?;
        let (mut out, digest, size) = compressed.finish();
        out.flush().ctx(ctx)?;
        Ok(ExportedLayer { layer: id.clone(), digest, diff_id, size })
    }

    /// Writes the image whose top layer is `id` (with every layer under it) as an OCI image
    /// layout in `dir`, tagged `tag`: `skopeo copy oci:DIR:TAG docker://...` pushes it.
    /// Blobs already in `dir` are kept, so exporting images that share layers shares blobs.
    pub fn export_image(&self, id: &LayerId, dir: &Path, tag: &str) -> Result<ExportedImage> {
        let ctx = || format!("exporting an image to {}", dir.display());
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).ctx(ctx)?;
        let chain = self.chain(id)?;
        let mut layers = Vec::new();
        for record in chain.iter().rev() {
            let tmp = blobs.join(format!(".tmp-{}-{}", std::process::id(), record.id));
            let file = std::fs::File::create(&tmp).ctx(ctx)?;
            let layer = self.export_layer(&record.id, std::io::BufWriter::with_capacity(1 << 20, file));
            let layer = match layer {
                Ok(l) => l,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            std::fs::rename(&tmp, blobs.join(&layer.digest["sha256:".len()..])).ctx(ctx)?;
            layers.push(layer);
        }
        let top = &chain[0].config;
        let mut config = serde_json::json!({
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a },
            "os": "linux",
            "config": {
                "Env": top.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            },
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
        });
        let c = &mut config["config"];
        if let Some(w) = &top.workdir {
            c["WorkingDir"] = w.clone().into();
        }
        if let Some(cmd) = &top.cmd {
            c["Cmd"] = cmd.clone().into();
        }
        if let Some(e) = &top.entrypoint {
            c["Entrypoint"] = e.clone().into();
        }
        if let Some(u) = &top.user {
            c["User"] = u.clone().into();
        }
        if let Some(s) = &top.shell {
            c["Shell"] = s.clone().into();
        }
        let write_blob = |bytes: &[u8]| -> Result<(String, usize)> {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
            std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).ctx(ctx)?;
            Ok((digest, bytes.len()))
        };
        let (config_digest, config_size) = write_blob(&serde_json::to_vec(&config).expect("json"))?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
            "layers": layers.iter().map(|l| serde_json::json!({ "mediaType": OCI_ZSTD_LAYER, "digest": l.digest, "size": l.size })).collect::<Vec<_>>(),
        });
        let (manifest_digest, manifest_size) = write_blob(&serde_json::to_vec(&manifest).expect("json"))?;
        // index.json: this tag replaces an earlier one of the same name; other tags stay.
        let index_path = dir.join("index.json");
        let mut manifests: Vec<serde_json::Value> = std::fs::read(&index_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["manifests"].as_array().cloned())
            .unwrap_or_default();
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(tag));
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": manifests });
        std::fs::write(&index_path, serde_json::to_vec_pretty(&index).expect("json")).ctx(ctx)?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).ctx(ctx)?;
        Ok(ExportedImage { manifest_digest, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{now_unix, ImageConfig, LayerOrigin, LayerRecord};

    #[test]
    fn a_layer_round_trips_through_an_oci_blob() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: whiteouts need root (mknod, trusted xattrs)");
            return;
        }
        let data = std::env::temp_dir().join(format!("ferry-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let store = ImageStore::open(&data).unwrap();
        let staging = store.staging_dir("t").unwrap();
        let fs = staging.join("fs");
        std::fs::create_dir_all(fs.join("etc/opaque")).unwrap();
        std::fs::write(fs.join("etc/hello"), "hi").unwrap();
        std::os::unix::fs::symlink("hello", fs.join("etc/link")).unwrap();
        // A device node, as base images have under /dev.
        std::fs::create_dir_all(fs.join("dev")).unwrap();
        let null = std::ffi::CString::new(fs.join("dev/null").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) }, 0);
        crate::registry::unpack_tar(&tar_with_whiteouts()[..], &fs).unwrap();
        let id = LayerId::parse(&"ab".repeat(32)).unwrap();
        let record = LayerRecord { id: id.clone(), parent: None, config: ImageConfig::default(), origin: LayerOrigin::Snapshot { container: "t".into() }, created_at: now_unix() };
        store.commit(&staging, &record).unwrap();

        let mut blob = Vec::new();
        let layer = store.export_layer(&id, &mut blob).unwrap();
        assert_eq!(layer.size, blob.len() as u64);
        assert_eq!(layer.digest, format!("sha256:{}", hex::encode(Sha256::digest(&blob))));
        let tar = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(layer.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
        let names: Vec<String> = tar::Archive::new(&tar[..]).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        for want in ["etc/hello", "etc/link", "dev/null", "data/.wh.old.txt", "cache/.wh..wh..opq"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        // Unpacked again, the whiteouts are whiteouts.
        let back = data.join("back");
        crate::registry::unpack_layer_reader(&blob[..], OCI_ZSTD_LAYER, &back).unwrap();
        assert_eq!(std::fs::read_to_string(back.join("etc/hello")).unwrap(), "hi");
        assert!(std::fs::symlink_metadata(back.join("data/old.txt")).unwrap().file_type().is_char_device());
        assert!(is_opaque(&back.join("cache")));

        let layout = data.join("layout");
        let image = store.export_image(&id, &layout, "v1").unwrap();
        assert!(layout.join("blobs/sha256").join(&image.manifest_digest[7..]).exists());
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v1");
        std::fs::remove_dir_all(&data).unwrap();
    }

    fn tar_with_whiteouts() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [("data/keep", &b"k"[..]), ("data/.wh.old.txt", b""), ("cache/.wh..wh..opq", b""), ("cache/new", b"n")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        b.into_inner().unwrap()
    }
}
