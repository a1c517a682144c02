//! The way containers on a worker host reach the control plane's API when they cannot simply
//! connect to it: the modal client inside talks plain HTTP/2 to a unix socket bound into the
//! container (as containers on the server's own host do), and the worker carries each
//! connection to the API.
//!
//! - An `https://` API: the modal client inside trusts only its own CA bundle, so the worker
//!   speaks TLS for it, verifying the server's certificate with the worker's `--ca-cert` (or the
//!   host's trust store).
//! - A container without a network (`block_network=True`): the socket is its only way out.
//!
//! The container still presents its own task credential on every request; the relay adds
//! nothing to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_rustls::rustls;

/// Where a container finds the relay's socket.
pub const CONTAINER_SOCKET: &str = "/__modal/ferry.sock";

/// One unix socket per control-plane URL, made on first use.
pub struct Relays {
    dir: PathBuf,
    tls: tokio_rustls::TlsConnector,
    open: Mutex<HashMap<String, PathBuf>>,
}

impl Relays {
    /// `ca_pem`: the authority that signed the control plane's certificate (`--ca-cert`); the
    /// host's trust store when none.
    pub fn new(dir: &Path, ca_pem: Option<&[u8]>) -> anyhow::Result<Relays> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                    roots.add(cert.context("--ca-cert is not a PEM certificate")?).context("--ca-cert")?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Relays { dir: dir.to_path_buf(), tls: tokio_rustls::TlsConnector::from(Arc::new(config)), open: Mutex::new(HashMap::new()) })
    }

    /// The socket that carries connections to `server_url` (`https://host:port` over TLS,
    /// `http://host:port` as they are).
    pub fn socket_for(&self, server_url: &str) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.open.lock().unwrap().get(server_url) {
            return Ok(path.clone());
        }
        let url = reqwest::Url::parse(server_url).with_context(|| format!("{server_url} is not a URL"))?;
        let tls = match url.scheme() {
            "https" => Some(self.tls.clone()),
            "http" => None,
            other => anyhow::bail!("{server_url}: a relay carries http:// and https://, not {other}://"),
        };
        let host = url.host_str().with_context(|| format!("{server_url} names no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let name = rustls::pki_types::ServerName::try_from(host.clone()).with_context(|| format!("bad host in {server_url}"))?;
        let index = self.open.lock().unwrap().len();
        let path = self.dir.join(format!("api-relay-{index}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
        let url = server_url.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((inside, _)) = listener.accept().await else { continue };
                let (tls, name, host, url) = (tls.clone(), name.clone(), host.clone(), url.clone());
                tokio::spawn(async move {
                    if let Err(e) = carry(inside, &tls, name, (&host, port)).await {
                        tracing::warn!("a container's connection to the control plane at {url} failed: {e:#}");
                    }
                });
            }
        });
        self.open.lock().unwrap().insert(server_url.to_string(), path.clone());
        Ok(path)
    }
}

async fn carry(
    mut inside: tokio::net::UnixStream,
    tls: &Option<tokio_rustls::TlsConnector>,
    name: rustls::pki_types::ServerName<'static>,
    (host, port): (&str, u16),
) -> anyhow::Result<()> {
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host, port)))
        .await
        .context("timed out connecting")?
        .context("cannot connect")?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        let mut outside = tcp;
        copy_until_closed(&mut inside, &mut outside).await;
        return Ok(());
    };
    let mut outside = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
        .await
        .context("timed out in the TLS handshake")?
        .context("TLS handshake (is the control plane's authority given with --ca-cert?)")?;
    copy_until_closed(&mut inside, &mut outside).await;
    Ok(())
}

/// Carries bytes both ways until either side closes. A side that goes away abruptly (a
/// container killed mid-request, a replica restarting) ends the connection as a close does:
/// the client inside reconnects, and there is nothing to report.
async fn copy_until_closed<A, B>(inside: &mut A, outside: &mut B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_bidirectional(inside, outside).await {
        tracing::debug!("a relayed connection ended: {e}");
    }
}
