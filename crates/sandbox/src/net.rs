//! Reaching ports inside a sandbox's own network namespace from the host: tunnels and TCP
//! readiness probes.
//!
//! A socket belongs to the network namespace it was created in, whatever thread uses it later.
//! So a short-lived thread enters the sandbox's namespace (`setns` changes only the calling
//! thread), connects to `127.0.0.1:<port>` there, and hands the connected socket back to the
//! async runtime. Nothing is configured on the host or in slirp4netns, and the sandbox still
//! has no route to the host's own loopback.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// Connects to `port` on the loopback of the network namespace of process `pid`.
pub(crate) async fn connect_in(pid: u32, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let stream = tokio::task::spawn_blocking(move || -> std::io::Result<TcpStream> {
        // A dedicated thread: it is left in the sandbox's namespace and exits right after.
        std::thread::spawn(move || {
            let ns: OwnedFd = ns.into();
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), std::time::Duration::from_secs(5))
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    let _ = stream.set_nodelay(true);
    tokio::net::TcpStream::from_std(stream)
}

/// A host port forwarding to a port inside a sandbox; stops when dropped.
pub(crate) struct Tunnel {
    pub host_port: u16,
    pub container_port: u16,
    pub tls: bool,
    task: JoinHandle<()>,
    /// On a loopback address, the port is shared into other containers so that the tunnel's
    /// URL works from them too.
    _shared: Option<ferry_runtime::SharedLoopbackPort>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS acceptor from a PEM certificate chain and key (`encrypted_ports` tunnels).
pub(crate) fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| format!("TLS certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("TLS key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn forward<S: AsyncRead + AsyncWrite + Unpin>(mut inbound: S, pid: u32, port: u16) {
    match connect_in(pid, port).await {
        Ok(mut outbound) => {
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
        Err(e) => tracing::debug!(port, "tunnel connection into the sandbox failed: {e}"),
    }
}

/// Listens on `bind:0` and forwards every connection to `port` inside the sandbox of `pid`,
/// terminating TLS first when given an acceptor. `on_connection` marks the sandbox as active
/// (idle timeouts).
pub(crate) async fn open_tunnel(
    bind: IpAddr,
    pid: u32,
    port: u16,
    tls: Option<TlsAcceptor>,
    on_connection: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<Tunnel> {
    let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await?;
    let host_port = listener.local_addr()?.port();
    let is_tls = tls.is_some();
    let task = tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else { continue };
            on_connection();
            let _ = inbound.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => match acceptor.accept(inbound).await {
                        Ok(stream) => forward(stream, pid, port).await,
                        Err(e) => tracing::debug!(port, "TLS handshake on a tunnel failed: {e}"),
                    },
                    None => forward(inbound, pid, port).await,
                }
            });
        }
    });
    let shared = (bind == IpAddr::from([127, 0, 0, 1])).then(|| ferry_runtime::share_loopback_port(host_port));
    Ok(Tunnel { host_port, container_port: port, tls: is_tls, task, _shared: shared })
}
