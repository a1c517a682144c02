//! Where Ferry keeps things and how clients are told to reach it.

use std::path::{Path, PathBuf};

/// `$XDG_DATA_HOME/ferry`, else `~/.local/share/ferry`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("ferry");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib"));
    home.join(".local/share/ferry")
}

pub fn format_time(t: f64) -> String {
    ferry_store::format_utc(t)
}

/// The three settings a client needs, as written to `DIR/client.env`.
pub struct ClientSettings {
    pub server_url: String,
    pub token_id: String,
    pub token_secret: String,
}

impl ClientSettings {
    pub fn env_file(&self) -> String {
        format!(
            "MODAL_SERVER_URL={}\nMODAL_TOKEN_ID={}\nMODAL_TOKEN_SECRET={}\n",
            self.server_url, self.token_id, self.token_secret
        )
    }

    /// Reads the token back from a previous `client.env`.
    pub fn read_token(path: &Path) -> Option<(String, String)> {
        let text = std::fs::read_to_string(path).ok()?;
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::to_string);
        Some((get("MODAL_TOKEN_ID=")?, get("MODAL_TOKEN_SECRET=")?))
    }
}

/// The modal client's config file: `MODAL_CONFIG_PATH`, else `~/.modal.toml`.
pub fn modal_config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MODAL_CONFIG_PATH").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".modal.toml")
}

/// Adds or updates the `[ferry]` profile, leaving every other profile and comment as it was.
pub fn write_modal_profile(path: &Path, s: &ClientSettings) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{} is not valid TOML ({e}); fix or remove it", path.display()))?;
    let table = doc.entry("ferry").or_insert(toml_edit::table());
    let table = table
        .as_table_mut()
        .ok_or_else(|| anyhow::anyhow!("'ferry' in {} is not a table; rename it", path.display()))?;
    table["server_url"] = toml_edit::value(&s.server_url);
    table["token_id"] = toml_edit::value(&s.token_id);
    table["token_secret"] = toml_edit::value(&s.token_secret);
    write_private(path, doc.to_string().as_bytes())
}

/// Writes a file readable only by its owner, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp-ferry");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_is_added_without_touching_others() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("modal.toml");
        std::fs::write(&path, "# mine\n[default]\ntoken_id = \"x\"\nactive = true\n").unwrap();
        let s = ClientSettings { server_url: "http://127.0.0.1:1".into(), token_id: "ak-1".into(), token_secret: "as-1".into() };
        write_modal_profile(&path, &s).unwrap();
        let s2 = ClientSettings { server_url: "http://127.0.0.1:2".into(), ..s };
        write_modal_profile(&path, &s2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# mine\n[default]\ntoken_id = \"x\"\nactive = true\n"), "{text}");
        assert!(text.contains("[ferry]\nserver_url = \"http://127.0.0.1:2\"\ntoken_id = \"ak-1\""), "{text}");
        assert_eq!(text.matches("[ferry]").count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
