//! Sandboxes: long-lived containers that code drives from outside (`modal.Sandbox`).
//!
//! [`Sandboxes`] owns the lifecycle (create from an image layer, timeouts, terminate, the
//! recorded outcome) and the live state of each running sandbox (its container, the main
//! process's stdio, execs, tunnels). [`router`] serves Modal's `TaskCommandRouter` gRPC
//! service over it: exec, stdio, stdin, wait/poll, readiness, filesystem snapshots, and the
//! filesystem API (see [`fs_tools`]). The router is a protocol boundary of its own, so this
//! crate speaks its wire types; the control plane (`modal.client`) stays in `ferry-api`.
//!
//! ```no_run
//! # async fn demo(store: ferry_store::Store, spec: ferry_sandbox::SandboxSpec) -> ferry_sandbox::Result<()> {
//! let images = ferry_runtime::ImageStore::open(store.data_dir()).unwrap();
//! let config = ferry_sandbox::SandboxConfig { router_url: "http://127.0.0.1:50052".into(), ..Default::default() };
//! let blobs = ferry_volumes::Blobs::local(store.data_dir());
//! let volumes = ferry_volumes::Volumes::open(store.clone(), store.data_dir(), blobs).unwrap();
//! let sandboxes = ferry_sandbox::Sandboxes::open(store, images, volumes, config).await?;
//! let created = sandboxes.create(spec).await?;
//! let access = sandboxes.router_access(&created.sandbox_id).await?; // URL + JWT for the client
//! # Ok(()) }
//! ```

mod applog;
mod error;
mod exec;
pub mod forward;
pub mod fs_tools;
mod net;
mod output;
pub mod router;
mod sandbox;
mod stdin;
mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_runtime::{BindMount, ContainerRuntime, ContainerSpec, ImageStore, LayerId, Network, Scratch};
use ferry_volumes::MountRequest;
use ferry_store::{SandboxRecord, Store};
use ferry_volumes::Volumes;
use rand::distributions::Alphanumeric;
use rand::Rng;

pub use error::{Result, SandboxError};
pub use exec::{ExecExit, ExecRequest, StreamTo};
pub use token::TokenKey;

use sandbox::{LiveSandbox, StopReason};

/// A sandbox's outcome; the numbers are the protocol's `GenericResult` statuses, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running = 0,
    Success = 1,
    Failure = 2,
    Terminated = 3,
    Timeout = 4,
    InitFailure = 5,
    InternalFailure = 6,
    IdleTimeout = 7,
    OutOfMemory = 10,
}

/// A readiness probe (`modal.Probe`).
#[derive(Clone, Debug, PartialEq)]
pub enum Probe {
    Tcp { port: u16, interval_ms: u32 },
    Exec { argv: Vec<String>, interval_ms: u32 },
}

impl Probe {
    fn interval_ms(&self) -> u32 {
        match self {
            Probe::Tcp { interval_ms, .. } | Probe::Exec { interval_ms, .. } => *interval_ms,
        }
    }
}

/// Outbound network of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Egress {
    /// Its own network namespace with outbound NAT; no route to the host's loopback.
    #[default]
    Open,
    /// Loopback only (`block_network=True`).
    Blocked,
}

/// Everything a sandbox is created from, as plain values: the protocol adapter resolves
/// images to layers and secrets to environment variables before calling [`Sandboxes::create`].
#[derive(Clone, Debug, Default)]
pub struct SandboxSpec {
    pub app_id: String,
    pub environment_id: String,
    pub created_by: String,
    pub name: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub image_id: String,
    pub layer: Option<LayerId>,
    /// argv; empty runs the image's default command (Modal sandboxes default to `sleep`).
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub memory_mib: Option<u64>,
    pub cpu_cores: Option<f64>,
    pub egress: Egress,
    /// With [`Egress::Open`]: outbound only to these CIDR blocks (`outbound_cidr_allowlist`).
    pub allowed_cidrs: Option<Vec<String>>,
    /// Container ports reachable from the host through tunnels.
    pub ports: Vec<PortSpec>,
    pub probe: Option<Probe>,
    /// Volumes to mount; their writes are committed when the sandbox ends (or at `sync PATH`).
    pub volumes: Vec<VolumeMount>,
    /// Host directories bound as they are (network file systems: shared, no commit).
    pub binds: Vec<BindMount>,
    /// Files bound read-only as (file on the host, path in the sandbox): the image's local files
    /// (`add_local_*` without `copy=True`) and `mounts=`.
    pub files: Vec<(std::path::PathBuf, String)>,
    /// Run the main process on a terminal of (rows, columns).
    pub tty: Option<(u16, u16)>,
    /// The id shape tells the client which protocol version to use for it.
    pub v2: bool,
}

/// A container port exposed through a tunnel; `tls` tunnels terminate TLS with the server's
/// certificate (`encrypted_ports`), the others forward plain TCP (`unencrypted_ports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    pub tls: bool,
}

/// A Volume mounted into a sandbox.
#[derive(Clone, Debug)]
pub struct VolumeMount {
    pub volume_id: String,
    pub mount_path: String,
    pub read_only: bool,
    /// Mount only this directory of the volume.
    pub sub_path: Option<String>,
}

/// Where the router listens and where tunnels bind.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// URL handed to clients for the TaskCommandRouter service.
    pub router_url: String,
    /// Address tunnels listen on, and the host name put into tunnel URLs.
    pub tunnel_bind: IpAddr,
    pub tunnel_host: String,
    /// Processes (and threads) one sandbox may hold: a fork bomb stays inside its cgroup.
    pub pids_limit: u64,
    /// PEM certificate chain and key for `encrypted_ports` tunnels (the API's own).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// A certificate authority (PEM file) sandboxes trust besides their image's own.
    pub trusted_ca: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            router_url: String::new(),
            tunnel_bind: IpAddr::from([127, 0, 0, 1]),
            tunnel_host: "127.0.0.1".into(),
            pids_limit: 4096,
            tls: None,
            trusted_ca: None,
        }
    }
}

/// The answer to a create.
#[derive(Clone, Debug)]
pub struct Created {
    pub sandbox_id: String,
    pub task_id: String,
    pub tunnels: Vec<TunnelInfo>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TunnelInfo {
    pub container_port: u16,
    pub host: String,
    pub port: u16,
    /// The tunnel terminates TLS (an `encrypted_ports` entry).
    pub tls: bool,
}

/// URL and token for one sandbox's router.
#[derive(Clone, Debug)]
pub struct RouterAccess {
    pub url: String,
    pub jwt: String,
}

/// The sandbox capability. Cheap to clone.
#[derive(Clone)]
pub struct Sandboxes {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    volumes: Volumes,
    runtime: ContainerRuntime,
    config: SandboxConfig,
    key: TokenKey,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Running sandboxes (and, for a while, finished ones whose output may still be read).
    live: Mutex<HashMap<String, Arc<LiveSandbox>>>,
    by_task: Mutex<HashMap<String, String>>,
}

/// How long a finished sandbox's output stays readable.
const KEEP_FINISHED: Duration = Duration::from_secs(600);

fn random_suffix(n: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(n).map(char::from).collect()
}

impl Sandboxes {
    /// Opens the capability; sandboxes recorded as running belonged to a previous server
    /// process (their containers ended with it) and are marked failed.
    pub async fn open(store: Store, images: ImageStore, volumes: Volumes, config: SandboxConfig) -> Result<Sandboxes> {
        let key = TokenKey::load_or_create(store.data_dir())?;
        let n = store.fail_orphaned_sandboxes(Status::InternalFailure as i32, "the Ferry server restarted while this Sandbox ran").await?;
        if n > 0 {
            tracing::info!("{n} sandboxes of a previous server process marked as failed");
        }
        let tls = match &config.tls {
            Some((cert, key)) => Some(net::tls_acceptor(cert, key).map_err(SandboxError::Invalid)?),
            None => None,
        };
        Ok(Sandboxes {
            inner: Arc::new(Inner {
                store,
                volumes,
                runtime: ContainerRuntime::new(images).trusting(config.trusted_ca.clone()),
                config,
                key,
                tls,
                live: Mutex::new(HashMap::new()),
                by_task: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Records and starts a sandbox. A failure to start its program is the sandbox's outcome
    /// (as on Modal: `wait()` reports it), not an error of the create.
    pub async fn create(&self, spec: SandboxSpec) -> Result<Created> {
        let layer = spec.layer.clone().ok_or_else(|| SandboxError::Invalid("a Sandbox needs an image".into()))?;
        if let Some(p) = spec.ports.iter().find(|p| p.tls && self.inner.tls.is_none()) {
            return Err(SandboxError::Unimplemented(format!(
                "encrypted_ports need a TLS certificate: start `ferry serve` with --tls-cert/--tls-key, or expose port {} with unencrypted_ports",
                p.port
            )));
        }
        if spec.timeout.is_zero() {
            return Err(SandboxError::Invalid("timeout must be at least one second".into()));
        }
        // V1 sandbox ids are `sb-` + 22 alphanumerics; any other shape means V2 to the client.
        let (sandbox_id, task_id) = if spec.v2 {
            (format!("sb-{}", random_suffix(24)), format!("ta-{}V", random_suffix(22)))
        } else {
            (format!("sb-{}", random_suffix(22)), format!("ta-{}", random_suffix(22)))
        };
        let record = SandboxRecord {
            id: sandbox_id.clone(),
            app_id: spec.app_id.clone(),
            environment_id: spec.environment_id.clone(),
            name: spec.name.clone(),
            tags: spec.tags.clone(),
            image_id: spec.image_id.clone(),
            task_id: task_id.clone(),
            timeout_secs: spec.timeout.as_secs() as u32,
            idle_timeout_secs: spec.idle_timeout.map(|d| d.as_secs() as u32),
            status: 0,
            exit_code: None,
            exception: String::new(),
            created_by: spec.created_by.clone(),
            created_at: ferry_store::now(),
            started_at: None,
            finished_at: None,
        };
        self.inner.store.create_sandbox(&record).await?;

        let mut cs = ContainerSpec::new(layer, spec.command.clone());
        cs.mounts = match self.prepare_volumes(&task_id, &spec.volumes).await {
            Ok(m) => m
                .into_iter()
                .chain(spec.binds.iter().cloned())
                .chain(spec.files.iter().map(|(host, target)| BindMount::read_only(host, target.as_str())))
                .collect(),
            Err(e) => {
                let message = format!("the Sandbox could not start: {e}");
                self.inner.store.finish_sandbox(&sandbox_id, Status::InitFailure as i32, None, &message).await?;
                return Err(e);
            }
        };
        cs.env = spec.env.clone();
        cs.workdir = spec.workdir.clone();
        cs.limits.memory_mib = spec.memory_mib;
        cs.limits.cpu_cores = spec.cpu_cores;
        cs.limits.pids = Some(self.inner.config.pids_limit);
        cs.network = match spec.egress {
            Egress::Open => Network::Private,
            Egress::Blocked => Network::Blocked,
        };
        cs.allowed_cidrs = spec.allowed_cidrs.clone();
        cs.hostname = "sandbox".into();
        cs.stdin = spec.tty.is_none();
        cs.raw_output = true;
        cs.tty = spec.tty;
        cs.scratch = Scratch::Disk;
        let container = match self.inner.runtime.spawn(cs).await {
            Ok(c) => c,
            Err(e) => {
                let status = match &e {
                    ferry_runtime::Error::Spawn { .. } => Status::Failure,
                    _ => Status::InitFailure,
                };
                let message = format!("the Sandbox could not start: {e}");
                tracing::info!(sandbox = %sandbox_id, "{message}");
                self.inner.volumes.release_task(&task_id).await;
                self.inner.store.finish_sandbox(&sandbox_id, status as i32, Some(127), &message).await?;
                return Ok(Created { sandbox_id, task_id, tunnels: vec![] });
            }
        };
        let app_log = applog::AppLog::start(self.inner.store.clone(), spec.app_id.clone(), task_id.clone());
        let live = LiveSandbox::new(sandbox_id.clone(), task_id.clone(), container, spec.probe.is_some(), spec.volumes.clone(), Some(app_log));
        self.inner.volumes.task_started(&task_id, live.pid);
        self.inner.live.lock().unwrap().insert(sandbox_id.clone(), live.clone());
        self.inner.by_task.lock().unwrap().insert(task_id.clone(), sandbox_id.clone());
        self.inner.store.start_sandbox(&sandbox_id).await?;

        let supervisor = {
            let (live, store, inner) = (live.clone(), self.inner.store.clone(), Arc::downgrade(&self.inner));
            let (timeout, idle) = (spec.timeout, spec.idle_timeout);
            let volumes = self.inner.volumes.clone();
            async move {
                sandbox::supervise(live.clone(), store, timeout, idle, &volumes).await;
                tokio::time::sleep(KEEP_FINISHED).await;
                if let Some(inner) = inner.upgrade() {
                    inner.live.lock().unwrap().remove(&live.id);
                    inner.by_task.lock().unwrap().remove(&live.task_id);
                }
            }
        };
        tokio::spawn(supervisor);
        if let Some(p) = spec.probe.clone() {
            live.start_probe(p);
        }
        if let Err(e) = live.open_tunnels(self.inner.config.tunnel_bind, &spec.ports, self.inner.tls.as_ref()).await {
            live.request_stop(StopReason::Terminated);
            return Err(e);
        }
        Ok(Created { sandbox_id: sandbox_id.clone(), task_id, tunnels: self.tunnels_of(&live) })
    }

    fn tunnels_of(&self, live: &LiveSandbox) -> Vec<TunnelInfo> {
        live.tunnels
            .lock()
            .unwrap()
            .iter()
            .map(|t| TunnelInfo { container_port: t.container_port, host: self.inner.config.tunnel_host.clone(), port: t.host_port, tls: t.tls })
            .collect()
    }

    /// Makes the container's views of its volumes (an overlay per read-write mount, whose
    /// writes are committed when the sandbox ends, as on Modal).
    async fn prepare_volumes(&self, task_id: &str, mounts: &[VolumeMount]) -> Result<Vec<BindMount>> {
        if mounts.is_empty() {
            return Ok(Vec::new());
        }
        let requests: Vec<MountRequest> = mounts
            .iter()
            .map(|m| MountRequest { volume_id: m.volume_id.clone(), target: m.mount_path.clone(), read_only: m.read_only, sub_path: m.sub_path.clone() })
            .collect();
        let binds = self
            .inner
            .volumes
            .prepare_task(task_id, &requests)
            .await
            .map_err(|e| SandboxError::Invalid(format!("cannot mount the Sandbox's volumes: {e}")))?;
        Ok(binds
            .into_iter()
            .map(|b| if b.read_only { BindMount::read_only(b.source, b.target) } else { BindMount::read_write(b.source, b.target) })
            .collect())
    }

    /// `sync PATH...` in a sandbox commits the volumes mounted at (or above) those paths
    /// before the program itself runs, as Modal's Volumes v2 do.
    async fn commit_synced_volumes(&self, live: &LiveSandbox, command: &[String]) {
        let is_sync = command.first().is_some_and(|p| p == "sync" || p.ends_with("/sync"));
        if !is_sync {
            return;
        }
        let mut done = std::collections::HashSet::new();
        for arg in command.iter().skip(1).filter(|a| !a.starts_with('-')) {
            let path = arg.trim_end_matches('/');
            for v in live.volumes.iter().filter(|v| !v.read_only) {
                let mount = v.mount_path.trim_end_matches('/');
                let under = path == mount || path.starts_with(&format!("{mount}/"));
                if under && done.insert(v.volume_id.clone()) {
                    if let Err(e) = self.inner.volumes.commit_task(&live.task_id, &v.volume_id).await {
                        tracing::warn!(sandbox = %live.id, volume = %v.volume_id, "sync: committing the volume failed: {e}");
                    }
                }
            }
        }
    }

    fn live(&self, sandbox_id: &str) -> Option<Arc<LiveSandbox>> {
        self.inner.live.lock().unwrap().get(sandbox_id).cloned()
    }

    /// The sandboxes running in this process, as (sandbox id, task id).
    pub fn running(&self) -> Vec<(String, String)> {
        self.inner.live.lock().unwrap().values().filter(|l| !l.is_finished()).map(|l| (l.id.clone(), l.task_id.clone())).collect()
    }

    /// The running sandbox whose container is `task_id`.
    pub fn sandbox_of_task(&self, task_id: &str) -> Option<String> {
        self.live_by_task(task_id).ok().filter(|l| !l.is_finished()).map(|l| l.id.clone())
    }

    fn live_by_task(&self, task_id: &str) -> Result<Arc<LiveSandbox>> {
        let id = self.inner.by_task.lock().unwrap().get(task_id).cloned();
        id.and_then(|id| self.live(&id)).ok_or_else(|| SandboxError::NotFound(format!("task {task_id} is not a running Sandbox")))
    }

    pub async fn record(&self, sandbox_id: &str) -> Result<SandboxRecord> {
        Ok(self.inner.store.sandbox(sandbox_id).await?)
    }

    /// Waits up to `timeout` for the sandbox to finish.
    pub async fn wait(&self, sandbox_id: &str, timeout: Duration) -> Result<SandboxRecord> {
        Ok(self.inner.store.wait_sandbox(sandbox_id, timeout).await?)
    }

    /// Stops a sandbox (SIGKILL) and waits briefly for its outcome to be recorded.
    pub async fn terminate(&self, sandbox_id: &str) -> Result<SandboxRecord> {
        let record = self.record(sandbox_id).await?;
        if !record.is_running() {
            return Ok(record);
        }
        match self.live(sandbox_id) {
            Some(live) => {
                live.request_stop(StopReason::Terminated);
                self.wait(sandbox_id, Duration::from_secs(10)).await
            }
            None => {
                self.inner.store.finish_sandbox(sandbox_id, Status::Terminated as i32, None, "").await?;
                self.record(sandbox_id).await
            }
        }
    }

    /// Terminates every running sandbox of an app (the app stopped).
    pub async fn terminate_app(&self, app_id: &str) -> Result<usize> {
        let filter = ferry_store::SandboxFilter { app_id: Some(app_id.to_string()), limit: 10_000, ..Default::default() };
        let running = self.inner.store.list_sandboxes(&filter).await?;
        for r in &running {
            self.terminate(&r.id).await?;
        }
        Ok(running.len())
    }

    pub fn tunnels(&self, sandbox_id: &str) -> Vec<TunnelInfo> {
        self.live(sandbox_id).map(|l| self.tunnels_of(&l)).unwrap_or_default()
    }

    /// The router's URL and a token that admits the bearer to this sandbox only.
    pub async fn router_access(&self, sandbox_id: &str) -> Result<RouterAccess> {
        let record = self.record(sandbox_id).await?;
        Ok(RouterAccess { url: self.inner.config.router_url.clone(), jwt: self.inner.key.issue("router", &record.id, &record.task_id) })
    }

    pub async fn router_access_by_task(&self, task_id: &str) -> Result<RouterAccess> {
        let record = self.inner.store.sandbox_by_task(task_id).await?;
        self.router_access(&record.id).await
    }

    /// The control plane's `AuthTokenGet`: a short-lived JWT naming the API token.
    pub fn client_token(&self, subject: &str) -> String {
        self.inner.key.issue("client", subject, "")
    }

    /// Writes to the main process's stdin (offset-addressed, as the client retries).
    pub async fn stdin_write(&self, sandbox_id: &str, offset: u64, data: &[u8], eof: bool) -> Result<()> {
        let live = self.live(sandbox_id).ok_or_else(|| SandboxError::Conflict(format!("Sandbox {sandbox_id} is not running")))?;
        live.touch();
        live.stdin.write(offset, data, eof).await
    }

    /// V1's numbered stdin writes: a write whose index was seen already is a retry.
    pub async fn stdin_write_indexed(&self, sandbox_id: &str, index: u32, data: &[u8], eof: bool) -> Result<()> {
        let live = self.live(sandbox_id).ok_or_else(|| SandboxError::Conflict(format!("Sandbox {sandbox_id} is not running")))?;
        live.touch();
        {
            let mut last = live.v1_stdin_index.lock().unwrap();
            if index != 0 && index <= *last {
                return Ok(());
            }
            *last = index;
        }
        let (written, _) = live.stdin.status().await;
        live.stdin.write(written, data, eof).await
    }

    /// Reads the main process's stdout (`fd` 1) or stderr (2) from `offset`; `None` at the end.
    pub async fn read_output(&self, sandbox_id: &str, fd: u8, offset: u64, max: usize) -> Result<Option<(u64, bytes::Bytes)>> {
        let live = self.live(sandbox_id).ok_or_else(|| SandboxError::NotFound(format!("the output of Sandbox {sandbox_id} is no longer kept")))?;
        let buf = if fd == 2 { &live.stderr } else { &live.stdout };
        Ok(match buf.read(offset, max).await {
            output::Read::Data { start, data } => Some((start, data)),
            output::Read::Eof => None,
        })
    }

    /// Copies what the sandbox has written so far into a new image layer and records it as an
    /// image other sandboxes and functions can start from. Returns the image id.
    pub async fn snapshot_filesystem(&self, task_id: &str) -> Result<String> {
        let live = self.live_by_task(task_id)?;
        let layer = {
            let c = live.container.lock().await;
            c.snapshot().await?
        };
        let image_id = format!("im-{}", &layer.to_string().chars().filter(|c| c.is_ascii_hexdigit()).take(32).collect::<String>());
        self.inner.store.get_or_create_image(&image_id, b"").await?;
        self.inner.store.finish_image(&image_id, Some(&layer.to_string()), None).await?;
        Ok(image_id)
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.inner.key
    }
}
