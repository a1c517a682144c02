//! Package access for build steps, set once by the operator: the host's own package-index
//! settings (pip and uv configuration, the extra CA bundle, proxies, apt's proxy) are turned
//! into environment variables and read-only binds for every `RUN` step, so that `pip`, `uv`
//! and `apt-get` work inside a build wherever they work on the host.
//!
//! Nothing here names an index or mirror: every value comes from the host. The user's own
//! options still win: command-line flags (`index_url=`, `find_links=`, ...) override the
//! environment, and the image's `ENV` and build secrets are applied after these variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::container::BindMount;

/// Where host files appear inside a build step. Removed from the layer after the build.
pub(crate) const HOST_DIR: &str = "/.ferry-host";
const CA_TARGET: &str = "/.ferry-host/ca-certificates.crt";
const APT_CONF_TARGET: &str = "/.ferry-host/apt.conf";

/// What build steps get from the host to reach package indexes.
///
/// ```no_run
/// let access = ferry_runtime::PackageAccess::from_host();
/// for line in access.describe() {
///     println!("build steps get {line}");
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackageAccess {
    env: Vec<(String, String)>,
    binds: Vec<BindMount>,
    /// Contents of the apt configuration bound at [`APT_CONF_TARGET`], if any.
    apt_conf: Option<String>,
}

/// The host settings found, before they are turned into build-step settings.
#[derive(Debug, Clone, Default, PartialEq)]
struct HostSettings {
    pip_index: Option<String>,
    pip_extra: Vec<String>,
    pip_find_links: Vec<String>,
    pip_trusted: Vec<String>,
    pip_timeout: Option<String>,
    uv_index: Option<String>,
    uv_extra: Vec<String>,
    uv_find_links: Vec<String>,
    uv_insecure: Vec<String>,
    ca_bundle: Option<PathBuf>,
    proxies: Vec<(String, String)>,
    apt_proxies: Vec<(String, String)>,
}

impl PackageAccess {
    /// No host settings: build steps see only what the image has.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads the host's package settings from this process's environment and the usual
    /// configuration files (pip.conf, uv.toml, apt.conf).
    pub fn from_host() -> Self {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let home = env.get("HOME").cloned().unwrap_or_else(|| "/root".into());
        let xdg = env.get("XDG_CONFIG_HOME").cloned().unwrap_or_else(|| format!("{home}/.config"));
        let mut pip_files = vec![
            PathBuf::from("/etc/xdg/pip/pip.conf"),
            PathBuf::from("/etc/pip.conf"),
            PathBuf::from(format!("{home}/.pip/pip.conf")),
            PathBuf::from(format!("{xdg}/pip/pip.conf")),
        ];
        if let Some(f) = env.get("PIP_CONFIG_FILE") {
            pip_files.push(PathBuf::from(f));
        }
        let pip_texts: Vec<String> = pip_files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
        let uv_files = match env.get("UV_CONFIG_FILE") {
            Some(f) => vec![PathBuf::from(f)],
            None => vec![PathBuf::from("/etc/uv/uv.toml"), PathBuf::from(format!("{xdg}/uv/uv.toml"))],
        };
        let uv_texts: Vec<String> = uv_files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
        let mut apt_texts = Vec::new();
        if let Ok(t) = std::fs::read_to_string("/etc/apt/apt.conf") {
            apt_texts.push(t);
        }
        if let Ok(dir) = std::fs::read_dir("/etc/apt/apt.conf.d") {
            let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            files.sort();
            apt_texts.extend(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()));
        }
        let mut settings = HostSettings::read(&env, &pip_texts, &uv_texts, &apt_texts);
        if settings.ca_bundle.is_none() && has_extra_cas() {
            // Extra CAs installed the Debian way end up in the system bundle.
            settings.ca_bundle = Some(PathBuf::from("/etc/ssl/certs/ca-certificates.crt")).filter(|p| p.is_file());
        }
        Self::from_settings(settings)
    }

    fn from_settings(s: HostSettings) -> Self {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut binds = Vec::new();
        let mut put = |k: &str, v: String| {
            if !v.is_empty() {
                env.push((k.to_string(), v));
            }
        };
        // Local find-links directories are bound into the step; URLs pass as they are.
        let mut local_dirs: Vec<(String, String)> = Vec::new();
        let mut map_link = |link: &str| -> String {
            let path = link.strip_prefix("file://").unwrap_or(link);
            if !path.starts_with('/') {
                return link.to_string();
            }
            if let Some((_, target)) = local_dirs.iter().find(|(host, _)| host == path) {
                return target.clone();
            }
            if !Path::new(path).is_dir() {
                return String::new();
            }
            let target = format!("{HOST_DIR}/find-links-{}", local_dirs.len());
            local_dirs.push((path.to_string(), target.clone()));
            target
        };
        let pip_links: Vec<String> = s.pip_find_links.iter().map(|l| map_link(l)).filter(|l| !l.is_empty()).collect();
        let uv_links: Vec<String> = s.uv_find_links.iter().map(|l| map_link(l)).filter(|l| !l.is_empty()).collect();

        // pip reads its own settings; uv falls back to pip's (and the other way round), so one
        // index set on the host serves both tools.
        let pip_index = s.pip_index.clone().or_else(|| s.uv_index.clone());
        let uv_index = s.uv_index.clone().or_else(|| s.pip_index.clone());
        let pip_extra = if s.pip_extra.is_empty() { s.uv_extra.clone() } else { s.pip_extra.clone() };
        let uv_extra = if s.uv_extra.is_empty() { s.pip_extra.clone() } else { s.uv_extra.clone() };
        let pip_links = if pip_links.is_empty() { uv_links.clone() } else { pip_links };
        let uv_links = if uv_links.is_empty() { pip_links.clone() } else { uv_links };
        let pip_trusted = if s.pip_trusted.is_empty() { s.uv_insecure.clone() } else { s.pip_trusted.clone() };
        let uv_insecure = if s.uv_insecure.is_empty() { s.pip_trusted.clone() } else { s.uv_insecure.clone() };

        if let Some(i) = pip_index {
            put("PIP_INDEX_URL", i);
        }
        put("PIP_EXTRA_INDEX_URL", pip_extra.join(" "));
        put("PIP_FIND_LINKS", pip_links.join(" "));
        put("PIP_TRUSTED_HOST", pip_trusted.join(" "));
        if let Some(t) = s.pip_timeout.clone() {
            put("PIP_DEFAULT_TIMEOUT", t.clone());
            put("UV_HTTP_TIMEOUT", t);
        }
        if let Some(i) = uv_index {
            put("UV_INDEX_URL", i);
        }
        put("UV_EXTRA_INDEX_URL", uv_extra.join(" "));
        put("UV_FIND_LINKS", uv_links.join(","));
        put("UV_INSECURE_HOST", uv_insecure.join(" "));
        if let Some(ca) = &s.ca_bundle {
            binds.push(BindMount::read_only(ca, CA_TARGET));
            for k in ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
                put(k, CA_TARGET.to_string());
            }
            // uv verifies against its bundled roots unless told to use the system's (or given
            // SSL_CERT_FILE, which older uv versions read); the system store is then the host's bundle.
            put("UV_SYSTEM_CERTS", "1".into());
        }
        for (k, v) in &s.proxies {
            put(k, v.clone());
        }
        let mut apt = String::new();
        for (scheme, proxy) in &s.apt_proxies {
            apt.push_str(&format!("Acquire::{scheme}::Proxy \"{proxy}\";\n"));
        }
        if s.ca_bundle.is_some() {
            apt.push_str(&format!("Acquire::https::CaInfo \"{CA_TARGET}\";\n"));
        }
        let apt_conf = (!apt.is_empty()).then_some(apt);
        if apt_conf.is_some() {
            put("APT_CONFIG", APT_CONF_TARGET.to_string());
        }
        for (host, target) in local_dirs {
            binds.push(BindMount::read_only(host, target));
        }
        PackageAccess { env, binds, apt_conf }
    }

    /// Environment variables for build steps (applied before the image's own `ENV`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Ports of the host's loopback that the operator's settings point at (an index, a proxy or
    /// an apt proxy on `127.0.0.1`, `localhost` or `[::1]`): a build step has a network
    /// namespace of its own, so these, and only these, are served into its loopback.
    pub fn loopback_forwards(&self) -> Vec<crate::net::PortForward> {
        let texts = self.env.iter().map(|(_, v)| v.as_str()).chain(self.apt_conf.as_deref());
        let mut out: Vec<crate::net::PortForward> = Vec::new();
        for text in texts {
            for (host, ip) in [("127.0.0.1:", std::net::Ipv4Addr::LOCALHOST.into()), ("localhost:", std::net::Ipv4Addr::LOCALHOST.into()), ("[::1]:", std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST))] {
                for (at, _) in text.match_indices(host) {
                    let before = text[..at].chars().last();
                    if !matches!(before, Some('/') | Some('@')) {
                        continue;
                    }
                    let digits: String = text[at + host.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
                    let Ok(port) = digits.parse::<u16>() else { continue };
                    if port != 0 && !out.iter().any(|f| f.port == port) {
                        out.push(crate::net::PortForward { port, target: std::net::SocketAddr::new(ip, port) });
                    }
                }
            }
        }
        out
    }

    /// Read-only binds for build steps; `apt_conf_dir` holds the generated apt.conf.
    pub fn binds(&self, apt_conf_dir: &Path) -> std::io::Result<Vec<BindMount>> {
        let mut binds = self.binds.clone();
        if let Some(text) = &self.apt_conf {
            std::fs::create_dir_all(apt_conf_dir)?;
            let path = apt_conf_dir.join("apt.conf");
            std::fs::write(&path, text)?;
            binds.push(BindMount::read_only(path, APT_CONF_TARGET));
        }
        Ok(binds)
    }

    /// The variables that need no file from the host (index URLs, trusted hosts, timeouts,
    /// proxies): what a step that gets no binds can use, e.g. preparing a base in a chroot
    /// whose own CA store already holds the host's extra CAs.
    pub fn portable_env(&self) -> Vec<(String, String)> {
        self.env.iter().filter(|(k, v)| !v.contains(HOST_DIR) && k != "UV_SYSTEM_CERTS").cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.binds.is_empty()
    }

    /// What build steps get, one `NAME=value` per line, with credentials in URLs and proxy
    /// settings masked, for `ferry serve` to print.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={}", redact(v))).collect();
        for b in &self.binds {
            lines.push(format!("{} bound read-only at {}", b.source.display(), b.target));
        }
        if let Some(text) = &self.apt_conf {
            for l in text.lines() {
                lines.push(format!("apt: {}", redact(l)));
            }
        }
        lines
    }
}

/// Masks the user-info part of every URL in `value` (`https://user:token@host` → `https://***@host`).
pub fn redact(value: &str) -> String {
    value
        .split(' ')
        .map(|word| match word.find("://") {
            Some(i) => {
                let (scheme, rest) = word.split_at(i + 3);
                let end = rest.find('/').unwrap_or(rest.len());
                match rest[..end].rfind('@') {
                    Some(at) => format!("{scheme}***{}", &rest[at..]),
                    None => word.to_string(),
                }
            }
            None => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn has_extra_cas() -> bool {
    std::fs::read_dir("/usr/local/share/ca-certificates").map(|d| d.flatten().next().is_some()).unwrap_or(false)
}

fn words(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

impl HostSettings {
    /// Precedence follows the tools: pip's files in order (later wins), `[install]` over
    /// `[global]`, then `PIP_*`; uv's files, then `UV_*`.
    fn read(env: &BTreeMap<String, String>, pip_confs: &[String], uv_tomls: &[String], apt_confs: &[String]) -> Self {
        let mut s = HostSettings::default();
        let mut pip: BTreeMap<String, String> = BTreeMap::new();
        for text in pip_confs {
            for section in ["global", "install"] {
                for (k, v) in ini_section(text, section) {
                    pip.insert(k, v);
                }
            }
        }
        for (key, var) in [
            ("index-url", "PIP_INDEX_URL"),
            ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
            ("find-links", "PIP_FIND_LINKS"),
            ("trusted-host", "PIP_TRUSTED_HOST"),
            ("cert", "PIP_CERT"),
            ("timeout", "PIP_DEFAULT_TIMEOUT"),
            ("timeout", "PIP_TIMEOUT"),
            ("proxy", "PIP_PROXY"),
        ] {
            if let Some(v) = env.get(var).filter(|v| !v.is_empty()) {
                pip.insert(key.into(), v.clone());
            }
        }
        s.pip_index = pip.get("index-url").cloned();
        s.pip_extra = pip.get("extra-index-url").map(|v| words(v)).unwrap_or_default();
        s.pip_find_links = pip.get("find-links").map(|v| words(v)).unwrap_or_default();
        s.pip_trusted = pip.get("trusted-host").map(|v| words(v)).unwrap_or_default();
        s.pip_timeout = pip.get("timeout").cloned();

        for text in uv_tomls {
            let Ok(doc) = text.parse::<toml::Table>() else { continue };
            // Top level, and the `[pip]` table for `uv pip` (which wins for `uv pip`).
            for table in [Some(&doc), doc.get("pip").and_then(|p| p.as_table())].into_iter().flatten() {
                let strs = |k: &str| -> Vec<String> {
                    match table.get(k) {
                        Some(toml::Value::String(v)) => vec![v.clone()],
                        Some(toml::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                        _ => Vec::new(),
                    }
                };
                if let Some(i) = strs("index-url").into_iter().next() {
                    s.uv_index = Some(i);
                }
                if !strs("extra-index-url").is_empty() {
                    s.uv_extra = strs("extra-index-url");
                }
                if !strs("find-links").is_empty() {
                    s.uv_find_links = strs("find-links");
                }
                if !strs("allow-insecure-host").is_empty() {
                    s.uv_insecure = strs("allow-insecure-host");
                }
                if let Some(toml::Value::Array(indexes)) = table.get("index") {
                    for idx in indexes.iter().filter_map(|i| i.as_table()) {
                        let Some(url) = idx.get("url").and_then(|u| u.as_str()) else { continue };
                        if idx.get("default").and_then(|d| d.as_bool()) == Some(true) {
                            s.uv_index = Some(url.to_string());
                        } else if !s.uv_extra.iter().any(|e| e == url) {
                            s.uv_extra.push(url.to_string());
                        }
                    }
                }
            }
        }
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(v) = var("UV_DEFAULT_INDEX").or_else(|| var("UV_INDEX_URL")) {
            s.uv_index = Some(v);
        }
        if let Some(v) = var("UV_EXTRA_INDEX_URL") {
            s.uv_extra = words(&v);
        }
        if let Some(v) = var("UV_INDEX") {
            s.uv_extra.extend(words(&v).into_iter().map(|w| w.split_once('=').map(|(_, u)| u.to_string()).unwrap_or(w)));
        }
        if let Some(v) = var("UV_FIND_LINKS") {
            s.uv_find_links = v.split([',', ' ']).filter(|w| !w.is_empty()).map(str::to_string).collect();
        }
        if let Some(v) = var("UV_INSECURE_HOST") {
            s.uv_insecure = words(&v);
        }
        s.ca_bundle = ["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]
            .iter()
            .filter_map(|k| var(k))
            .chain(pip.get("cert").cloned())
            .map(PathBuf::from)
            .find(|p| p.is_file());
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy"] {
            if let Some(v) = var(k) {
                s.proxies.push((k.to_string(), v));
            }
        }
        if let Some(p) = pip.get("proxy") {
            for k in ["http_proxy", "https_proxy"] {
                if !s.proxies.iter().any(|(have, _)| have.eq_ignore_ascii_case(k)) {
                    s.proxies.push((k.to_string(), p.clone()));
                }
            }
        }
        for text in apt_confs {
            for line in text.lines().map(str::trim) {
                for scheme in ["http", "https"] {
                    let prefix = format!("Acquire::{scheme}::Proxy ");
                    if let Some(rest) = line.strip_prefix(&prefix) {
                        let value = rest.trim().trim_end_matches(';').trim().trim_matches('"');
                        if !value.is_empty() && !value.eq_ignore_ascii_case("DIRECT") && !value.eq_ignore_ascii_case("false") {
                            s.apt_proxies.retain(|(have, _)| have != scheme);
                            s.apt_proxies.push((scheme.to_string(), value.to_string()));
                        }
                    }
                }
            }
        }
        s
    }
}

/// `key = value` pairs of one section of an INI file; indented lines continue a value.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].trim().to_string();
            continue;
        }
        if current != section {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line);
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(['=', ':']) {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_settings_are_forwarded_into_build_steps() {
        let s = HostSettings {
            pip_index: Some("http://127.0.0.1:3141/root/simple".into()),
            uv_extra: vec!["http://user:pw@localhost:8080/simple".into(), "https://example.invalid:9999/simple".into()],
            ..Default::default()
        };
        let access = PackageAccess::from_settings(s);
        let mut ports: Vec<u16> = access.loopback_forwards().iter().map(|f| f.port).collect();
        ports.sort();
        assert_eq!(ports, [3141, 8080]);
        assert!(access.loopback_forwards().iter().all(|f| f.target.ip().is_loopback()));
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pip_settings_flow_to_uv_and_env_wins_over_files() {
        let conf = "[global]\nindex-url = http://idx.test/simple\nextra-index-url =\n    http://a.test/simple\n    http://b.test/simple\ntimeout = 60\n[install]\ntrusted-host = idx.test\n";
        let s = HostSettings::read(&env(&[("PIP_DEFAULT_TIMEOUT", "180")]), &[conf.into()], &[], &[]);
        assert_eq!(s.pip_index.as_deref(), Some("http://idx.test/simple"));
        assert_eq!(s.pip_extra, vec!["http://a.test/simple", "http://b.test/simple"]);
        assert_eq!(s.pip_trusted, vec!["idx.test"]);
        assert_eq!(s.pip_timeout.as_deref(), Some("180"));
        let access = PackageAccess::from_settings(s);
        let get = |k: &str| access.env().iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("UV_INDEX_URL").as_deref(), Some("http://idx.test/simple"));
        assert_eq!(get("UV_EXTRA_INDEX_URL").as_deref(), Some("http://a.test/simple http://b.test/simple"));
        assert_eq!(get("UV_INSECURE_HOST").as_deref(), Some("idx.test"));
    }

    #[test]
    fn uv_config_and_env() {
        let toml = "index-url = \"http://u.test/simple\"\n[[index]]\nurl = \"http://x.test/simple\"\n";
        let s = HostSettings::read(&env(&[("UV_FIND_LINKS", "http://w.test/wheels")]), &[], &[toml.into()], &[]);
        assert_eq!(s.uv_index.as_deref(), Some("http://u.test/simple"));
        assert_eq!(s.uv_extra, vec!["http://x.test/simple"]);
        let access = PackageAccess::from_settings(s);
        let get = |k: &str| access.env().iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("PIP_INDEX_URL").as_deref(), Some("http://u.test/simple"));
        assert_eq!(get("PIP_FIND_LINKS").as_deref(), Some("http://w.test/wheels"));
    }

    #[test]
    fn ca_bundle_is_bound_and_apt_proxy_kept() {
        let dir = std::env::temp_dir().join(format!("ferry-pkg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, "x").unwrap();
        let apt = "Acquire::http::Proxy \"http://proxy.test:3142\";\n";
        let s = HostSettings::read(&env(&[("SSL_CERT_FILE", ca.to_str().unwrap()), ("PIP_FIND_LINKS", dir.to_str().unwrap())]), &[], &[], &[apt.into()]);
        let access = PackageAccess::from_settings(s);
        let get = |k: &str| access.env().iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("SSL_CERT_FILE").as_deref(), Some(CA_TARGET));
        assert_eq!(get("UV_SYSTEM_CERTS").as_deref(), Some("1"));
        assert_eq!(get("PIP_FIND_LINKS").as_deref(), Some("/.ferry-host/find-links-0"));
        assert_eq!(get("APT_CONFIG").as_deref(), Some(APT_CONF_TARGET));
        let conf = access.apt_conf.clone().unwrap();
        assert!(conf.contains("Acquire::http::Proxy \"http://proxy.test:3142\";") && conf.contains("CaInfo"), "{conf}");
        assert_eq!(access.binds.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn portable_env_leaves_out_host_paths() {
        let s = HostSettings { pip_index: Some("http://idx.test/simple".into()), pip_find_links: vec!["/".into()], ..Default::default() };
        let access = PackageAccess::from_settings(s);
        let portable = access.portable_env();
        assert!(portable.iter().any(|(k, v)| k == "PIP_INDEX_URL" && v == "http://idx.test/simple"));
        assert!(!portable.iter().any(|(k, _)| k == "PIP_FIND_LINKS"));
    }

    #[test]
    fn secrets_in_urls_are_masked() {
        assert_eq!(redact("https://user:tok@idx.test/simple"), "https://***@idx.test/simple");
        assert_eq!(redact("http://a.test/x http://u:p@b.test/"), "http://a.test/x http://***@b.test/");
        assert_eq!(redact("/etc/ssl/x.crt"), "/etc/ssl/x.crt");
    }
}
