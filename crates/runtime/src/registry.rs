//! Registry images (`FROM <reference>` for anything that is not a Ferry base): pulled over the
//! OCI distribution API with `oci-client` from the registries the operator configures, one
//! Ferry layer per image layer, unpacked once and keyed by the parent chain and the layer's
//! digest, so every image built on the same layers shares them.
//!
//! Registries are reached only through configured mirrors (`--registry-mirror NAME=URL`):
//! `NAME` is a registry as image references name it, or `default` for the registry that
//! references without a host resolve to. A reference whose registry has no mirror fails with an
//! error naming that setting.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use futures::StreamExt;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::logs::{LogLine, LogSink};
use crate::store::{now_unix, remove_tree, ImageConfig, ImageStore, LayerId, LayerOrigin, LayerRecord};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The mirror name that stands for the image-reference parser's default registry.
pub const DEFAULT_REGISTRY: &str = "default";

/// Where registry images come from: one URL per registry name.
///
/// ```
/// let mut registries = ferry_runtime::RegistryConfig::default();
/// registries.add_mirror("default=http://127.0.0.1:5000").unwrap();
/// assert_eq!(registries.describe(), vec!["default -> http://127.0.0.1:5000".to_string()]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mirror {
    name: String,
    /// `host[:port]` as the distribution API is addressed.
    host: String,
    plain_http: bool,
    url: String,
}

/// Credentials for a private registry (Modal's `REGISTRY_USERNAME`/`REGISTRY_PASSWORD`).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryCredentials({}, ***)", self.username)
    }
}

impl RegistryConfig {
    /// Adds `NAME=URL` (e.g. `default=http://127.0.0.1:5000`); a later entry for the same name wins.
    pub fn add_mirror(&mut self, spec: &str) -> std::result::Result<(), String> {
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| format!("registry mirror `{spec}` must be NAME=URL, e.g. default=http://127.0.0.1:5000"))?;
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else {
            return Err(format!("registry mirror URL `{url}` must start with http:// or https://"));
        };
        if name.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!("registry mirror `{spec}` must be NAME=http(s)://HOST[:PORT] (no path)"));
        }
        self.mirrors.retain(|m| m.name != name);
        self.mirrors.push(Mirror { name: name.to_string(), host: rest.to_string(), plain_http, url: url.to_string() });
        Ok(())
    }

    /// Reads `NAME=URL` lines (blank lines and `#` comments skipped).
    pub fn add_file(&mut self, path: &Path) -> std::result::Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read registry config {}: {e}", path.display()))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            self.add_mirror(line).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty()
    }

    /// One `NAME -> URL` line per mirror.
    pub fn describe(&self) -> Vec<String> {
        self.mirrors.iter().map(|m| format!("{} -> {}", m.name, crate::packages::redact(&m.url))).collect()
    }

    fn mirror_for(&self, registry: &str) -> Option<&Mirror> {
        let default = default_registry();
        self.mirrors
            .iter()
            .find(|m| m.name == registry)
            .or_else(|| self.mirrors.iter().find(|m| m.name == DEFAULT_REGISTRY && registry == default))
    }
}

/// The registry a reference without a host resolves to, as the reference parser says.
fn default_registry() -> String {
    "x".parse::<Reference>().map(|r| r.registry().to_string()).unwrap_or_default()
}

/// Whether `reference` can only come from a registry (it is not a Ferry base, layer or tag).
pub(crate) fn parse_reference(reference: &str) -> Result<Reference> {
    reference.parse::<Reference>().map_err(|e| Error::BadCommand { command: format!("FROM {reference}"), reason: format!("not an image reference: {e}") })
}

/// The stand-in parent id of layers built `FROM <reference>`: the build cache is keyed by the
/// reference as written, like a Dockerfile cache; `force_build` pulls again.
pub(crate) fn reference_key(reference: &str) -> LayerId {
    let mut h = Sha256::new();
    h.update(b"ferry-registry-ref-v2\0");
    h.update(reference.as_bytes());
    LayerId::from_hasher(h)
}

/// Pulls `reference` into the store (layers already there are reused) and returns the id of
/// the layer that carries the image's config, on top of its layers.
pub(crate) async fn pull(
    store: &ImageStore,
    config: &RegistryConfig,
    reference: &str,
    credentials: Option<&RegistryCredentials>,
    log: &LogSink,
) -> Result<LayerId> {
    let say = |s: String| {
        let _ = log.send(LogLine::system(s));
    };
    let parsed = parse_reference(reference)?;
    let registry = parsed.registry().to_string();
    let mirror = config.mirror_for(&registry).ok_or_else(|| Error::RegistryNotConfigured {
        reference: reference.to_string(),
        registry: if registry == default_registry() { DEFAULT_REGISTRY.to_string() } else { registry.clone() },
    })?;
    let source = match parsed.digest() {
        Some(d) => Reference::with_digest(mirror.host.clone(), parsed.repository().to_string(), d.to_string()),
        None => Reference::with_tag(mirror.host.clone(), parsed.repository().to_string(), parsed.tag().unwrap_or("latest").to_string()),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if mirror.plain_http { ClientProtocol::HttpsExcept(vec![mirror.host.clone()]) } else { ClientProtocol::Https };
    let client = Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    });
    let auth = match credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    say(format!("ferry: pulling {reference} from {}", mirror.url));
    let started = std::time::Instant::now();
    let unreachable = |e: oci_client::errors::OciDistributionError| Error::RegistryPull {
        reference: reference.to_string(),
        mirror: format!("{}={}", mirror.name, mirror.url),
        reason: crate::packages::redact(&e.to_string()),
    };
    let (manifest, digest, config_json) = client.pull_manifest_and_config(&source, &auth).await.map_err(unreachable)?;
    let image_config: serde_json::Value = serde_json::from_str(&config_json).map_err(|e| Error::RegistryPull {
        reference: reference.to_string(),
        mirror: format!("{}={}", mirror.name, mirror.url),
        reason: format!("the image config is not JSON: {e}"),
    })?;
    let diff_ids: Vec<String> = image_config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
        .unwrap_or_default();

    // Each layer's id follows from its parent's and its diff id, so all are known before any
    // is fetched, and the missing ones are fetched side by side, each streamed from the
    // registry straight into the unpacker.
    let mut parent: Option<LayerId> = None;
    let mut planned: Vec<(usize, &OciDescriptor, LayerId, Option<LayerId>)> = Vec::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let key = diff_ids.get(i).cloned().unwrap_or_else(|| layer.digest.clone());
        let id = {
            let mut h = Sha256::new();
            h.update(b"ferry-oci-layer-v1\0");
            h.update(parent.as_ref().map(|p| p.as_str()).unwrap_or("scratch"));
            h.update([0]);
            h.update(key.as_bytes());
            LayerId::from_hasher(h)
        };
        planned.push((i, layer, id.clone(), parent.clone()));
        parent = Some(id);
    }
    let layer_ids: Vec<LayerId> = planned.iter().map(|(_, _, id, _)| id.clone()).collect();
    let total = manifest.layers.len();
    // Plain futures in a Vec (no iterator adapters with closures held across an await: the
    // build future must stay `Send`).
    let mut fetches = Vec::new();
    for (i, layer, id, parent) in planned {
        if store.contains(&id) {
            continue;
        }
        let header = format!("ferry: layer {}/{total} {} ({:.1} MB)", i + 1, layer.digest, layer.size as f64 / 1e6);
        let job = LayerJob { store, client: &client, source: &source, reference, layer, id, parent, log, header };
        fetches.push(job.run());
    }
    let mut fetched = 0u64;
    let mut results = futures::stream::iter(fetches).buffer_unordered(PARALLEL_LAYERS);
    while let Some(r) = results.next().await {
        fetched += match r {
            Ok(n) => n,
            Err(FetchError::Pull(e)) => return Err(unreachable(e)),
            Err(FetchError::Local(e)) => return Err(e),
        };
    }
    drop(results);

    // The image's settings live in a layer of their own without files, so two images that share
    // every layer but differ in ENV or CMD share the unpacked layers.
    let mut config = image_settings(&image_config);
    if config.python_version.is_none() {
        // The worker runs Modal's client with the image's own Python: find which one it is.
        config.python_version = layer_ids.iter().rev().find_map(|id| python_in(&store.layer_fs(id)));
    }
    let top = {
        let mut h = Sha256::new();
        h.update(b"ferry-oci-config-v1\0");
        h.update(parent.as_ref().map(|p| p.as_str()).unwrap_or("scratch"));
        h.update([0]);
        h.update(serde_json::to_vec(&config).expect("configs serialize"));
        LayerId::from_hasher(h)
    };
    if !store.contains(&top) {
        let staging = store.staging_dir("pull")?;
        std::fs::create_dir_all(staging.join("fs")).ctx(|| "creating a config layer".into())?;
        let record = LayerRecord {
            id: top.clone(),
            parent,
            config,
            origin: LayerOrigin::Registry { reference: reference.to_string(), digest },
            created_at: now_unix(),
        };
        if let Err(e) = store.commit(&staging, &record) {
            remove_tree(&staging);
            return Err(e);
        }
    }
    say(format!(
        "ferry: pulled {reference} in {:.1}s ({:.1} MB downloaded)",
        started.elapsed().as_secs_f64(),
        fetched as f64 / 1e6
    ));
    Ok(top)
}

/// One registry layer to fetch into the store.
struct LayerJob<'a> {
    store: &'a ImageStore,
    client: &'a Client,
    source: &'a Reference,
    reference: &'a str,
    layer: &'a OciDescriptor,
    id: LayerId,
    parent: Option<LayerId>,
    log: &'a LogSink,
    header: String,
}

impl LayerJob<'_> {
    /// Fetches, unpacks and commits the layer; returns the bytes downloaded (0 when another
    /// pull of this process committed it meanwhile).
    async fn run(self) -> std::result::Result<u64, FetchError> {
        // Two pulls that share a layer fetch it once: the second waits, then finds it.
        let lock = layer_lock(&self.id);
        let _held = lock.lock().await;
        if self.store.contains(&self.id) {
            return Ok(0);
        }
        let _ = self.log.send(LogLine::system(self.header.clone()));
        let staging = self.store.staging_dir("pull").map_err(FetchError::Local)?;
        let record = LayerRecord {
            id: self.id.clone(),
            parent: self.parent.clone(),
            config: ImageConfig::default(),
            origin: LayerOrigin::Registry { reference: self.reference.to_string(), digest: self.layer.digest.clone() },
            created_at: now_unix(),
        };
        let result = match fetch_layer(self.client, self.source, self.layer, &staging).await {
            Ok(()) => self.store.commit(&staging, &record).map_err(FetchError::Local),
            Err(e) => Err(e),
        };
        if result.is_err() {
            remove_tree(&staging);
        }
        result.map(|()| self.layer.size.max(0) as u64)
    }
}

enum FetchError {
    Pull(oci_client::errors::OciDistributionError),
    Local(Error),
}

/// How many layers of one image are fetched at once.
const PARALLEL_LAYERS: usize = 4;

/// The lock that makes concurrent pulls of one layer (by this process) fetch it once.
fn layer_lock(id: &LayerId) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<LayerId, std::sync::Weak<tokio::sync::Mutex<()>>>>> =
        std::sync::OnceLock::new();
    let mut map = LOCKS.get_or_init(Default::default).lock().expect("lock poisoned");
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = map.get(id).and_then(|w| w.upgrade()) {
        return l;
    }
    let l = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    map.insert(id.clone(), std::sync::Arc::downgrade(&l));
    l
}

/// Streams one layer blob from the registry into the unpacker (`staging/fs`, OCI whiteouts
/// turned into overlayfs ones) as it arrives: the download and the unpacking overlap, and the
/// blob never touches the disk. The client checks the digest when the stream ends; a layer
/// whose digest is wrong fails and its staging directory is discarded by the caller.
async fn fetch_layer(client: &Client, source: &Reference, layer: &OciDescriptor, staging: &Path) -> std::result::Result<(), FetchError> {
    let blob = client.pull_blob_stream(source, layer).await.map_err(FetchError::Pull)?;
    let mut stream = blob.stream;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let media = layer.media_type.clone();
    let fs = staging.join("fs");
    let unpack = tokio::task::spawn_blocking(move || unpack_layer_reader(ChannelReader { rx, chunk: bytes::Bytes::new() }, &media, &fs));
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            // The unpacker may stop before the end (tar padding): keep reading for the digest.
            Ok(chunk) => {
                let _ = tx.send(chunk).await;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpack
        .await
        .map_err(|e| FetchError::Local(Error::Io { context: "unpacking a layer".into(), source: std::io::Error::other(e.to_string()) }))?;
    if let Some(e) = failed {
        return Err(FetchError::Local(Error::Io { context: format!("downloading layer {}", layer.digest), source: e }));
    }
    unpacked.map_err(FetchError::Local)
}

/// A blocking reader over chunks sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Unpacks a layer tarball (gzip, zstd or plain, from the media type or the magic bytes) read
/// from `reader` into `dest`.
pub(crate) fn unpack_layer_reader<'a>(reader: impl Read + 'a, media_type: &str, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let magic = std::io::BufRead::fill_buf(&mut reader).ctx(|| "reading a layer".into())?.get(..4).map(|m| m.to_vec()).unwrap_or_default();
    let is_zstd = media_type.contains("zstd") || magic == [0x28, 0xb5, 0x2f, 0xfd];
    let is_gzip = media_type.ends_with("gzip") || magic.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read + 'a> = if is_zstd {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).ctx(|| "reading a zstd layer".into())?)
    } else if is_gzip {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else if media_type.contains('+') {
        return Err(Error::UnsupportedLayer { media_type: media_type.to_string() });
    } else {
        Box::new(reader)
    };
    unpack_tar(reader, dest)
}

/// Unpacks a layer tar, turning `.wh.NAME` into an overlayfs whiteout (a 0/0 character device)
/// and `.wh..wh..opq` into an opaque directory (`trusted.overlay.opaque=y`).
pub(crate) fn unpack_tar(reader: impl Read, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let io = |what: &str, e: std::io::Error| Error::Io { context: format!("unpacking a layer ({what})"), source: e };
    for entry in archive.entries().map_err(|e| io("reading", e))? {
        let mut entry = entry.map_err(|e| io("reading", e))?;
        let path: PathBuf = entry.path().map_err(|e| io("entry path", e))?.into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = safe_join(dest, path.parent().unwrap_or(Path::new("")))?;
            std::fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
            if hidden == ".wh..opq" {
                set_opaque(&parent)?;
            } else {
                let target = parent.join(hidden);
                if std::fs::symlink_metadata(&target).is_ok() {
                    let _ = std::fs::remove_dir_all(&target).or_else(|_| std::fs::remove_file(&target));
                }
                make_whiteout(&target)?;
            }
            continue;
        }
        entry.unpack_in(dest).map_err(|e| io(&path.display().to_string(), e))?;
    }
    Ok(())
}

/// `dest/rel` with `..` and absolute components refused.
fn safe_join(dest: &Path, rel: &Path) -> Result<PathBuf> {
    let mut out = dest.to_path_buf();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => {
                return Err(Error::Io {
                    context: format!("unpacking a layer: whiteout path {} leaves the layer", rel.display()),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })
            }
        }
    }
    Ok(out)
}

fn cpath(p: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Io {
        context: format!("path {} contains a NUL byte", p.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn make_whiteout(path: &Path) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: a valid C string; mknod of a 0/0 character device is overlayfs' whiteout.
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o000, libc::makedev(0, 0)) } != 0 {
        return Err(Error::Io { context: format!("creating whiteout {}", path.display()), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> Result<()> {
    let c = cpath(dir)?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: valid C strings and a 1-byte value.
    if unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
        return Err(Error::Io { context: format!("marking {} opaque", dir.display()), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// The Python series (`3.12`) whose interpreter a layer has in /usr/local/bin or /usr/bin.
pub(crate) fn python_in(fs: &Path) -> Option<String> {
    ["usr/local/bin", "usr/bin"].iter().find_map(|dir| {
        let entries = std::fs::read_dir(fs.join(dir)).ok()?;
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let minor: u32 = name.strip_prefix("python3.")?.parse().ok()?;
                Some(minor)
            })
            .max()
            .map(|minor| format!("3.{minor}"))
    })
}

/// The parts of an OCI image config that Ferry's images carry.
fn image_settings(v: &serde_json::Value) -> ImageConfig {
    let c = &v["config"];
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> { v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()) };
    let mut config = ImageConfig::default();
    for kv in strings(&c["Env"]).unwrap_or_default() {
        if let Some((k, val)) = kv.split_once('=') {
            config.env_set(k, val.to_string());
        }
    }
    if config.env_get("PATH").is_none() {
        config.env_set("PATH", DEFAULT_PATH.into());
    }
    config.workdir = c["WorkingDir"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    config.cmd = strings(&c["Cmd"]);
    config.entrypoint = strings(&c["Entrypoint"]);
    config.user = c["User"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    config.shell = strings(&c["Shell"]).filter(|s| !s.is_empty());
    config.python_version = config.env_get("PYTHON_VERSION").map(str::to_string);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_and_match() {
        let mut c = RegistryConfig::default();
        c.add_mirror("default=http://127.0.0.1:5000/").unwrap();
        c.add_mirror("registry.test=https://mirror.test:8443").unwrap();
        assert!(c.add_mirror("nourl").is_err());
        assert!(c.add_mirror("x=ftp://a").is_err());
        let d = default_registry();
        assert!(!d.is_empty());
        assert_eq!(c.mirror_for(&d).unwrap().host, "127.0.0.1:5000");
        assert!(c.mirror_for(&d).unwrap().plain_http);
        assert_eq!(c.mirror_for("registry.test").unwrap().host, "mirror.test:8443");
        assert!(c.mirror_for("other.test").is_none());
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: whiteouts need root (mknod, trusted xattrs)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ferry-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut builder = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            builder.append_data(&mut h, path, data).unwrap();
        };
        add("etc/keep", b"1");
        add("data/.wh.old.txt", b"");
        add("cache/.wh..wh..opq", b"");
        let bytes = builder.into_inner().unwrap();
        unpack_tar(&bytes[..], &dir).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::symlink_metadata(dir.join("data/old.txt")).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(std::fs::read(dir.join("etc/keep")).unwrap(), b"1");
        let mut buf = [0u8; 4];
        let c = cpath(&dir.join("cache")).unwrap();
        let n = unsafe { libc::getxattr(c.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), 4) };
        assert_eq!(n, 1);
        assert_eq!(buf[0], b'y');
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn python_is_found_in_a_layer() {
        let dir = std::env::temp_dir().join(format!("ferry-pyfind-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        assert_eq!(python_in(&dir), None);
        for f in ["python3", "python3.11", "python3.11-config", "python3.9"] {
            std::fs::write(dir.join("usr/bin").join(f), "").unwrap();
        }
        assert_eq!(python_in(&dir).as_deref(), Some("3.11"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_config_is_read() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"config":{"Env":["PATH=/opt/bin:/usr/bin","A=b=c"],"WorkingDir":"/app","Cmd":["sh"],"User":""},"rootfs":{"diff_ids":[]}}"#,
        )
        .unwrap();
        let c = image_settings(&v);
        assert_eq!(c.env_get("PATH"), Some("/opt/bin:/usr/bin"));
        assert_eq!(c.env_get("A"), Some("b=c"));
        assert_eq!(c.workdir.as_deref(), Some("/app"));
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.user, None);
    }
}
