//! The certificate `ferry serve` uses when it listens beyond loopback and the operator gave none:
//! a local certificate authority made once per data dir (`DATA_DIR/tls/ca.pem`, its key
//! `ca.key` readable by the owner only) and a server certificate it signs for the names clients
//! reach the server by (`server.pem`, `server.key`), remade when those names change.
//!
//! Clients trust the authority, not the server certificate, so the fingerprint they check stays
//! the same across restarts and address changes.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use sha2::Digest;

use crate::TlsFiles;

/// A data dir's generated TLS identity.
pub struct SelfSigned {
    pub files: TlsFiles,
    /// The certificate authority clients add to their trust store.
    pub ca_path: PathBuf,
    /// SHA-256 fingerprint of the authority's certificate, `AB:CD:...`.
    pub ca_fingerprint: String,
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Ferry local certificate authority");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// The data dir's own authority (`DATA_DIR/tls/ca.pem`), made if missing: the certificate
/// containers trust besides their image's own when Ferry signs `encrypted_ports` tunnels.
pub fn authority(data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    Ok(load_or_make_authority(data_dir)?.0)
}

fn load_or_make_authority(data_dir: &Path) -> anyhow::Result<(std::path::PathBuf, String, KeyPair)> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let (ca_pem_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (ca_pem, ca_key) = match (std::fs::read_to_string(&ca_pem_path), std::fs::read_to_string(&ca_key_path)) {
        (Ok(pem), Ok(key)) => (pem, KeyPair::from_pem(&key).map_err(|e| anyhow::anyhow!("{}: {e}", ca_key_path.display()))?),
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&ca_pem_path, cert.pem().as_bytes(), 0o644)?;
            (cert.pem(), key)
        }
    };
    Ok((ca_pem_path, ca_pem, ca_key))
}

/// Loads or makes the data dir's authority and a server certificate for `names` (DNS names and
/// IP addresses).
pub fn self_signed(data_dir: &Path, names: &[String]) -> anyhow::Result<SelfSigned> {
    let dir = data_dir.join("tls");
    let (ca_pem_path, ca_pem, ca_key) = load_or_make_authority(data_dir)?;
    // The issuer's name and key are what a signature needs; the authority's own certificate
    // on disk is what clients trust.
    let issuer = ca_params()?.self_signed(&ca_key)?;
    let (server_pem_path, server_key_path, names_path) = (dir.join("server.pem"), dir.join("server.key"), dir.join("server.names"));
    let wanted = names.join("\n");
    let current = std::fs::read_to_string(&names_path).ok();
    let (cert_pem, key_pem) = match (current, std::fs::read(&server_pem_path), std::fs::read(&server_key_path)) {
        (Some(n), Ok(cert), Ok(key)) if n == wanted => (cert, key),
        _ => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names.to_vec())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "ferry".into()));
            params.distinguished_name = dn;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &issuer, &ca_key)?;
            let chain = format!("{}{}", cert.pem(), ca_pem);
            write_file(&server_key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&server_pem_path, chain.as_bytes(), 0o644)?;
            write_file(&names_path, wanted.as_bytes(), 0o644)?;
            (chain.into_bytes(), key.serialize_pem().into_bytes())
        }
    };
    let ca_der = pem_to_der(&ca_pem).ok_or_else(|| anyhow::anyhow!("{} holds no certificate", ca_pem_path.display()))?;
    let ca_fingerprint = sha2::Sha256::digest(&ca_der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    Ok(SelfSigned { files: TlsFiles { cert_pem, key_pem }, ca_path: ca_pem_path, ca_fingerprint })
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Writes a file whole (to a temporary name, then renamed) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_kept_and_the_server_certificate_follows_the_names() {
        let dir = tempfile_dir();
        let a = self_signed(&dir, &["10.0.0.5".into(), "localhost".into()]).unwrap();
        let b = self_signed(&dir, &["10.0.0.5".into(), "localhost".into()]).unwrap();
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        assert_eq!(a.files.cert_pem, b.files.cert_pem);
        let c = self_signed(&dir, &["10.0.0.6".into()]).unwrap();
        assert_eq!(a.ca_fingerprint, c.ca_fingerprint);
        assert_ne!(a.files.cert_pem, c.files.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("tls/ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-tls-test-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
