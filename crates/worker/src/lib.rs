//! Ferry's task launcher: starts the containers that run Modal functions.
//!
//! A task container runs `python -m modal._container_entrypoint` from the function's image,
//! with the pinned `modal` client mounted in (see [`Worker::prepare_client_runtime`]), the
//! serialized `ContainerArguments` in a read-only file, and the variables the client reads to
//! find and authenticate to Ferry's server.
//!
//! **Architecture invariant:** this crate knows nothing of Modal's wire types. The
//! `ContainerArguments` protobuf arrives as opaque bytes, and the worker never talks to the
//! database or the scheduler: it starts containers and reports how they ended.
//!
//! ```no_run
//! # async fn demo(layer: ferry_runtime::LayerId, args: Vec<u8>) -> ferry_worker::Result<()> {
//! use ferry_worker::{TaskSpec, Worker};
//! let data_dir = std::path::Path::new("/var/lib/ferry");
//! let worker = Worker::new(data_dir, ferry_runtime::ImageStore::open(data_dir)?);
//! worker.sweep_stale();
//! let mut spec = TaskSpec::new("ta-1", layer, args, "http://127.0.0.1:8889", "secret-1");
//! spec.files.push(("/var/lib/ferry/mounts/app.py".into(), "/root/app.py".into()));
//! spec.memory_mib = Some(1024);
//! let mut task = worker.start(spec).await?;
//! let mut logs = task.logs().unwrap();
//! tokio::spawn(async move {
//!     while let Some(line) = logs.recv().await {
//!         println!("fd {}: {}", line.stream.fd(), line.text);
//!     }
//! });
//! let exit = task.wait().await?;
//! println!("exit {} (signal {:?}, oom {})", exit.code, exit.signal, exit.oom_killed);
//! # Ok(()) }
//! ```

mod client_runtime;
mod error;
mod pool;
mod zygote;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_runtime::{BindMount, Container, ContainerRuntime, ContainerSpec, ImageStore, LayerId, LogSink, Network};
pub use ferry_runtime::PortForward;

pub use client_runtime::{ClientRuntime, DEPS_MOUNT, PKG_MOUNT};
pub use error::{Error, Result};
pub use pool::{PoolConfig, PoolStatus, INPUT_MOUNT};
/// How a task ended: exit code (128 + signal when killed), signal, OOM kill.
pub use ferry_runtime::ExitStatus as TaskExit;
/// One line of task output; `line.stream.fd()` is Modal's fd number (1 stdout, 2 stderr).
pub use ferry_runtime::{LogLine, Signal, Stream};
/// A GPU given to a task: its `/dev/nvidiaN` number and UUID.
pub use ferry_runtime::GpuDevice;

/// Processes and threads a task container may run unless its spec says otherwise: a fork
/// bomb fails inside its own container.
pub const DEFAULT_PIDS: u64 = 4096;

/// The client version Ferry's protocol adapter is written against.
pub const DEFAULT_CLIENT_VERSION: &str = "1.6.4";

/// Where the serialized `ContainerArguments` appear in a task container.
pub const CONTAINER_ARGUMENTS_PATH: &str = "/__modal/container_arguments.pb";

/// The command Modal's workers run in a task container.
pub const ENTRYPOINT: &[&str] = &["python", "-m", "modal._container_entrypoint"];

/// Prepares what task containers need on this machine: the Debian base for `python` and
/// the pinned client for it. `ferry images prepare` calls this; [`Worker::start`] would
/// otherwise do it on the first task (a minute or two).
///
/// ```no_run
/// # async fn demo() -> ferry_worker::Result<()> {
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ferry_worker::LogLine>();
/// tokio::spawn(async move { while let Some(l) = rx.recv().await { eprintln!("{}", l.text) } });
/// let client = ferry_worker::prepare("/var/lib/ferry".as_ref(), "3.11", "1.6.4", &tx).await?;
/// println!("modal client in {}", client.dir.display());
/// # Ok(()) }
/// ```
pub async fn prepare(data_dir: &Path, python: &str, client_version: &str, progress: &LogSink) -> Result<ClientRuntime> {
    let store = ImageStore::open(data_dir)?;
    Worker::new(data_dir, store).prepare_client_runtime(client_version, python, progress).await
}

/// Starts task containers. Cheap to clone; clones share the image store.
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    data_dir: PathBuf,
    store: ImageStore,
    runtime: ContainerRuntime,
    /// Standby containers; `None` when the pool is off.
    pool: Option<Arc<pool::Pool>>,
    /// The host directory holding the standby driver, written once.
    driver: std::sync::OnceLock<PathBuf>,
    /// Memory-snapshot zygotes, by function definition.
    zygotes: zygote::Zygotes,
}

/// One task container to start.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Modal's task id (`ta-...`); the container's `MODAL_TASK_ID`.
    pub task_id: String,
    /// The function's image.
    pub layer: LayerId,
    /// A serialized `api_pb2.ContainerArguments`, passed through untouched.
    pub container_arguments: Vec<u8>,
    /// `MODAL_SERVER_URL` for the container's client: `http://127.0.0.1:PORT` served into the
    /// container's own network namespace through `forwards`, or `unix:///<socket bound in via
    /// files>`.
    pub server_url: String,
    /// The task's credential, sent with `task_id` as the `x-modal-task-id` and
    /// `x-modal-task-secret` headers on every call the container makes.
    pub task_secret: String,
    /// The `modal` client mounted into the container; see [`DEFAULT_CLIENT_VERSION`].
    pub client_version: String,
    /// The Modal environment (`MODAL_ENVIRONMENT`) that `from_name` lookups inside the
    /// container use; empty leaves it unset (the workspace default).
    pub environment_name: String,
    /// Host file (or directory) → absolute container path, bound read-only.
    pub files: Vec<(PathBuf, String)>,
    /// Extra variables (secrets, `Image.env` overrides). Ferry's own `MODAL_*` variables win
    /// over these; a `PYTHONPATH` here is kept, after the client's.
    pub env: Vec<(String, String)>,
    pub memory_mib: Option<u64>,
    pub cpu_cores: Option<f64>,
    /// Whole GPUs for this task, as leased by the caller; see [`GpuDevice`].
    pub gpus: Vec<GpuDevice>,
    /// No outbound network at all (Modal's `block_network`); otherwise outbound goes through
    /// user-mode NAT, and the host's own services stay out of reach either way.
    pub block_network: bool,
    /// Ports of the container's loopback carried to the host (the API and blob ports).
    pub forwards: Vec<PortForward>,
    /// Modal's `ephemeral_disk`: the writable layer's size in MiB.
    pub disk_mib: Option<u64>,
    /// Processes and threads the container may run (default [`DEFAULT_PIDS`]).
    pub pids: Option<u64>,
    /// Runs this instead of the entrypoint, in the same environment (tests, debugging).
    pub command: Option<Vec<String>>,
    /// Volume views, bound read-write unless marked read-only.
    pub volumes: Vec<BindMount>,
    /// `Some(key)` for a function with `enable_memory_snapshot`: tasks with the same key are
    /// forked from one zygote that imported the code and ran the `snap=True` enter methods
    /// once. The key must change whenever the function's code, image or settings do (e.g.
    /// its id and a hash of its definition). Ignored for tasks the zygote cannot serve (GPUs,
    /// no network, volumes, a command override): they start the usual way.
    pub memory_snapshot: Option<String>,
    /// Whether a standby container may take the task (true by default). Build steps whose
    /// writes become a layer (`Task::wait_into_layer`) must start in a container of their own.
    pub standby: bool,
}

impl TaskSpec {
    /// Gives the task the whole cards of `lease`: their device nodes (and the driver's files).
    /// Made-up cards (`--fake-gpus`, tests on hosts without GPUs) are only named in
    /// `CUDA_VISIBLE_DEVICES`.
    pub fn give_gpus(&mut self, lease: &ferry_gpu::GpuLease, made_up: bool) {
        if made_up {
            let ids: Vec<String> = lease.cards().iter().map(|c| c.uuid.clone().unwrap_or_default()).collect();
            self.env.push(("CUDA_VISIBLE_DEVICES".into(), ids.join(",")));
            return;
        }
        self.gpus = lease.cards().iter().map(|c| GpuDevice { minor: c.minor, uuid: c.uuid.clone() }).collect();
    }

    /// A spec with the default client version and no files, env, limits or GPUs.
    pub fn new(task_id: impl Into<String>, layer: LayerId, container_arguments: Vec<u8>, server_url: impl Into<String>, task_secret: impl Into<String>) -> Self {
        TaskSpec {
            task_id: task_id.into(),
            layer,
            container_arguments,
            server_url: server_url.into(),
            task_secret: task_secret.into(),
            client_version: DEFAULT_CLIENT_VERSION.into(),
            environment_name: String::new(),
            files: Vec::new(),
            env: Vec::new(),
            memory_mib: None,
            cpu_cores: None,
            gpus: Vec::new(),
            block_network: false,
            forwards: Vec::new(),
            disk_mib: None,
            pids: Some(DEFAULT_PIDS),
            command: None,
            volumes: Vec::new(),
            memory_snapshot: None,
            standby: true,
        }
    }
}

/// A running task container.
#[derive(Debug)]
pub struct Task {
    task_id: String,
    body: Body,
    killer: TaskKiller,
    /// Holds the arguments file; removed when the task is dropped.
    _files: TaskDir,
}

impl Task {
    /// Modal's task id.
    pub fn id(&self) -> &str {
        &self.task_id
    }

    /// The runtime's container id (its cgroup name), for logs; a memory-snapshot task's is
    /// its zygote's.
    pub fn container_id(&self) -> &str {
        match &self.body {
            Body::Container(c) => c.id(),
            Body::Child(c) => c.container_id(),
        }
    }

    /// Host pid of the container's init, which names its namespaces.
    pub fn pid(&self) -> u32 {
        match &self.body {
            Body::Container(c) => c.pid(),
            Body::Child(c) => c.pid(),
        }
    }

    /// Whether the task was forked from a memory-snapshot zygote.
    pub fn from_snapshot(&self) -> bool {
        matches!(self.body, Body::Child(_))
    }

    /// Takes the stream of output lines; it ends when the container has closed its output.
    pub fn logs(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<LogLine>> {
        match &mut self.body {
            Body::Container(c) => c.logs(),
            Body::Child(c) => c.logs(),
        }
    }

    /// Signals the task. Modal's entrypoint runs `@modal.exit` only on [`Signal::Interrupt`]
    /// (or after a `kill_switch` input); SIGTERM ends it without. Signalling a task that has
    /// exited is not an error.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        match &self.body {
            Body::Container(c) => Ok(c.kill(signal)?),
            Body::Child(_) => self.killer.kill(signal),
        }
    }

    /// A handle that can signal the task from elsewhere while another task awaits [`Task::wait`].
    pub fn killer(&self) -> TaskKiller {
        self.killer.clone()
    }

    /// Waits for the task to end and releases its container. Calling it again returns the
    /// same status.
    pub async fn wait(&mut self) -> Result<TaskExit> {
        match &mut self.body {
            Body::Container(c) => Ok(c.wait().await?),
            Body::Child(c) => Ok(c.wait().await),
        }
    }

    /// Waits for the task to end, then turns everything it wrote into a new layer on top of
    /// its image, whatever the exit status (how `Image.run_function` build steps become
    /// layers; remove the layer from the store when the run failed).
    pub async fn wait_into_layer(&mut self) -> Result<(TaskExit, LayerId)> {
        match &mut self.body {
            Body::Container(c) => Ok(c.wait_into_layer().await?),
            Body::Child(_) => Err(Error::Io {
                context: "a task forked from a memory snapshot has no writable layer of its own".into(),
                path: PathBuf::new(),
                source: std::io::Error::other("unsupported"),
            }),
        }
    }
}

/// What runs a task: a container of its own, or a child of a memory-snapshot zygote.
#[derive(Debug)]
enum Body {
    Container(Container),
    Child(zygote::ChildTask),
}

/// Signals one task's container; cheap to clone, usable after the task ended (a no-op then).
#[derive(Debug, Clone)]
pub struct TaskKiller {
    /// A pidfd of the container's init, so a recycled pid can never be hit. Init forwards
    /// SIGINT and SIGTERM to the program; SIGKILL ends the whole container.
    pidfd: Option<Arc<OwnedFd>>,
    /// A zygote's child is signalled by the zygote, its parent.
    child: Option<(std::sync::Weak<zygote::Zygote>, String)>,
}

impl TaskKiller {
    fn for_pid(pid: u32) -> Self {
        // SAFETY: pidfd_open takes a pid and flags; the fd it returns is ours.
        let pidfd = unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32;
            (fd >= 0).then(|| Arc::new(OwnedFd::from_raw_fd(fd)))
        };
        TaskKiller { pidfd, child: None }
    }

    pub fn kill(&self, signal: Signal) -> Result<()> {
        let number = match signal {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        if let Some((zygote, task)) = &self.child {
            if let Some(z) = zygote.upgrade() {
                zygote::kill(&z, task, number);
            }
            return Ok(());
        }
        let Some(fd) = &self.pidfd else { return Ok(()) };
        // SAFETY: a valid pidfd, a signal number, no siginfo.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), number, std::ptr::null::<u8>(), 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::Io { context: "signalling the task".into(), path: PathBuf::new(), source: e });
            }
        }
        Ok(())
    }
}

/// A per-task host directory (the arguments file), removed on drop.
#[derive(Debug)]
pub(crate) struct TaskDir(pub(crate) PathBuf);

impl Drop for TaskDir {
    fn drop(&mut self) {
        client_runtime::remove_tree(&self.0);
    }
}

impl Worker {
    /// A worker over `data_dir` (the same directory the image store lives in). Does no I/O;
    /// call [`Worker::sweep_stale`] once at start-up.
    pub fn new(data_dir: &Path, images: ImageStore) -> Worker {
        Worker::with_pool(data_dir, images, PoolConfig::off(), None)
    }

    /// A worker that keeps standby containers ready (see [`PoolConfig`]): a task whose image
    /// and limits were asked for recently starts in a container whose Python has already
    /// imported the modal container runtime. Tasks the pool cannot serve (GPUs, no network,
    /// volumes, a command override) start the usual way. `trusted_ca`: a certificate authority
    /// (PEM file) every container trusts besides its image's own
    /// ([`ContainerRuntime::trusting`]).
    pub fn with_pool(data_dir: &Path, images: ImageStore, config: PoolConfig, trusted_ca: Option<PathBuf>) -> Worker {
        let runtime = ContainerRuntime::new(images.clone()).trusting(trusted_ca);
        let pool = pool::Pool::new(config);
        let pool = pool.enabled().then(|| Arc::new(pool));
        Worker { inner: Arc::new(Inner { data_dir: data_dir.to_path_buf(), store: images, runtime, pool, driver: Default::default(), zygotes: Default::default() }) }
    }

    /// How many standbys are ready and starting.
    pub fn pool_status(&self) -> PoolStatus {
        self.inner.pool.as_ref().map(|p| p.status()).unwrap_or_default()
    }

    /// Removes what tasks of dead Ferry processes left behind (cgroups, scratch space,
    /// arguments files, half-installed client runtimes). Returns how many things it removed.
    pub fn sweep_stale(&self) -> usize {
        let mut removed = self.inner.runtime.sweep_stale();
        if let Ok(entries) = std::fs::read_dir(self.tasks_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|pid| !process_alive(pid)) {
                    client_runtime::remove_tree(&entry.path());
                    removed += 1;
                }
            }
        }
        removed + client_runtime::sweep_staging(&client_runtime::runtime_root(&self.inner.data_dir))
    }

    /// Ensures `DATA_DIR/runtime/modal-<client_version>-py<X.Y>/` holds the pinned client and
    /// its dependencies, installed by the base image's own Python (`pip install --target` in a
    /// container with the host network) and checked by importing it the way tasks do. Prepares
    /// the base too if needed. Idempotent and serialised; a crash never leaves a half runtime
    /// (it is built in a staging directory and renamed into place). Progress goes to `progress`.
    pub async fn prepare_client_runtime(&self, client_version: &str, python: &str, progress: &LogSink) -> Result<ClientRuntime> {
        client_runtime::ensure(&self.inner.data_dir, &self.inner.store, client_version, python, None, progress).await
    }

    /// As [`Worker::prepare_client_runtime`], for a task of `image`: a Python series without a
    /// Ferry base is installed with the image's own Python and pip.
    pub async fn prepare_client_runtime_for(&self, client_version: &str, python: &str, image: &ferry_runtime::LayerId, progress: &LogSink) -> Result<ClientRuntime> {
        client_runtime::ensure(&self.inner.data_dir, &self.inner.store, client_version, python, Some(image), progress).await
    }

    /// Starts one task container. Installs the client runtime first if this is the first task
    /// for its client version and Python series (logged through `tracing`).
    pub async fn start(&self, spec: TaskSpec) -> Result<Task> {
        check_header_value(&spec.task_id, "task id", &spec.task_id)?;
        check_header_value(&spec.task_id, "task secret", &spec.task_secret)?;
        for (_, target) in &spec.files {
            if !target.starts_with('/') {
                return Err(Error::BadMountTarget { task_id: spec.task_id.clone(), target: target.clone() });
            }
        }
        let record = self.inner.store.layer(&spec.layer)?;
        let python = record
            .config
            .python_version
            .clone()
            .ok_or_else(|| Error::NoPython { task_id: spec.task_id.clone(), layer: spec.layer.to_string() })?;
        let client = self.client_runtime(&spec.client_version, &python, &spec.layer).await?;

        let image_pythonpath = record.config.env_get("PYTHONPATH").map(str::to_string);
        let workdir = record.config.workdir.clone().unwrap_or_else(|| "/root".into());

        if let (Some(snapshot), Some(key)) = (&spec.memory_snapshot, self.pool_key(&spec, &client, true)) {
            let template = self.standby_template(&spec, &client, image_pythonpath.as_deref(), &workdir)?;
            let zkey = format!("{snapshot}\0{}\0{}\0{:?}\0{:?}\0{}\0{:?}\0{:?}\0{:?}", key.layer, key.client_dir.display(), key.memory_mib, key.cpu_millis, key.server_url, key.forwards, key.pids, key.disk_mib);
            let env = task_env(&spec, image_pythonpath.as_deref());
            // The zygote starts with the full environment of its first task.
            let mut zygote_template = template;
            zygote_template.env = env.clone();
            match self.inner.zygotes.start_child(self, zkey, &spec, env, zygote_template).await {
                Ok((child, dir)) => {
                    tracing::debug!(task = %spec.task_id, container = child.container_id(), "task forked from a memory snapshot");
                    let killer = TaskKiller { pidfd: None, child: Some(child.killer()) };
                    return Ok(Task { task_id: spec.task_id, body: Body::Child(child), killer, _files: dir });
                }
                Err(e) => return Err(e),
            }
        }

        if let Some(key) = self.pool_key(&spec, &client, false) {
            let template = self.standby_template(&spec, &client, image_pythonpath.as_deref(), &workdir)?;
            let pool = self.inner.pool.clone().expect("pool_key checks the pool");
            if pool.note_demand(&key, template) {
                pool::start_reaper(pool.clone());
            }
            let taken = pool.take(&key);
            pool::refill(self, key);
            if let Some(standby) = taken {
                let env = task_env(&spec, image_pythonpath.as_deref());
                match pool::hand_over(standby, &spec, env).await {
                    Ok((container, dir)) => {
                        tracing::debug!(task = %spec.task_id, container = container.id(), "task handed to a standby container");
                        let killer = TaskKiller::for_pid(container.pid());
                        return Ok(Task { task_id: spec.task_id, body: Body::Container(container), killer, _files: dir });
                    }
                    Err(e) => tracing::warn!(task = %spec.task_id, "a standby container could not take the task, starting a new one: {e}"),
                }
            }
        }

        let dir = self.new_task_dir(&spec.task_id)?;
        let args_file = dir.0.join("container_arguments.pb");
        std::fs::write(&args_file, &spec.container_arguments)
            .map_err(|source| Error::Io { context: "writing the container arguments".into(), path: args_file.clone(), source })?;

        let mut command = spec.command.clone().unwrap_or_else(|| ENTRYPOINT.iter().map(|s| s.to_string()).collect());
        if !spec.gpus.is_empty() {
            command = refresh_ldcache_then(command);
        }
        let mut container = ContainerSpec::new(spec.layer.clone(), command);
        container.env = task_env(&spec, image_pythonpath.as_deref());
        // Modal runs functions in the image's WORKDIR (`Image.workdir`), else /root.
        container.workdir = Some(workdir);
        container.mounts = client.mounts();
        container.mounts.push(BindMount::read_only(&args_file, CONTAINER_ARGUMENTS_PATH));
        container.mounts.extend(spec.files.iter().map(|(host, target)| BindMount::read_only(host, target.as_str())));
        container.mounts.extend(spec.volumes.iter().cloned());
        container.limits.memory_mib = spec.memory_mib;
        container.limits.cpu_cores = spec.cpu_cores;
        container.gpus = spec.gpus.clone();
        container.limits.pids = spec.pids;
        container.limits.disk_mib = spec.disk_mib;
        // Every task has a network namespace of its own; the control plane is served into it.
        container.network = if spec.block_network { Network::Blocked } else { Network::Private };
        container.forwards = spec.forwards.clone();
        let container = self.inner.runtime.spawn(container).await?;
        tracing::debug!(task = %spec.task_id, container = container.id(), "task container started");
        let killer = TaskKiller::for_pid(container.pid());
        Ok(Task { task_id: spec.task_id, body: Body::Container(container), killer, _files: dir })
    }

    /// A fresh per-task host directory, removed when the returned guard drops.
    pub(crate) fn new_task_dir(&self, name: &str) -> Result<TaskDir> {
        let dir = self.tasks_dir().join(format!("{}-{}-{}", std::process::id(), next_seq(), path_safe(name)));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { context: "creating the task directory".into(), path: dir.clone(), source })?;
        Ok(TaskDir(dir))
    }

    /// Tells builds of one layer id apart (see [`pool::PoolKey::build`]).
    fn layer_build(&self, layer: &LayerId) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(self.inner.store.layer_fs(layer)).map(|m| m.ino()).unwrap_or(0);
        let created = self.inner.store.layer(layer).map(|r| r.created_at).unwrap_or(0);
        (inode, created)
    }

    /// The pool's key for a task it can serve: the usual entrypoint with outbound network, no
    /// GPUs, no volumes, plain files and the image's own PYTHONPATH.
    fn pool_key(&self, spec: &TaskSpec, client: &ClientRuntime, for_snapshot: bool) -> Option<pool::PoolKey> {
        if !for_snapshot {
            self.inner.pool.as_ref()?;
        }
        let plain = spec.standby
            && spec.command.is_none()
            && spec.gpus.is_empty()
            && !spec.block_network
            && spec.volumes.is_empty()
            && !spec.env.iter().any(|(k, _)| k == "PYTHONPATH")
            && spec.files.iter().all(|(host, _)| host.is_file());
        plain.then(|| pool::PoolKey {
            layer: spec.layer.clone(),
            build: self.layer_build(&spec.layer),
            client_dir: client.dir.clone(),
            memory_mib: spec.memory_mib,
            cpu_millis: spec.cpu_cores.map(|c| (c * 1000.0).round() as u64),
            server_url: spec.server_url.clone(),
            forwards: spec.forwards.clone(),
            pids: spec.pids,
            disk_mib: spec.disk_mib,
        })
    }

    /// A standby container for tasks like `spec`: everything but the task's own files,
    /// arguments and variables, which arrive at hand-over.
    fn standby_template(&self, spec: &TaskSpec, client: &ClientRuntime, image_pythonpath: Option<&str>, workdir: &str) -> Result<ContainerSpec> {
        let driver = self.driver_dir()?;
        let command = vec!["python".to_string(), format!("{}/standby.py", pool::DRIVER_MOUNT)];
        let mut container = ContainerSpec::new(spec.layer.clone(), command);
        let full = task_env(spec, image_pythonpath);
        container.env = full.into_iter().filter(|(k, _)| STANDBY_ENV.contains(&k.as_str())).collect();
        container.workdir = Some(workdir.to_string());
        container.mounts = client.mounts();
        container.mounts.push(BindMount::read_only(driver, pool::DRIVER_MOUNT));
        container.limits.memory_mib = spec.memory_mib;
        container.limits.cpu_cores = spec.cpu_cores;
        container.limits.pids = spec.pids;
        container.limits.disk_mib = spec.disk_mib;
        // Isolated exactly as a task started on demand (see `Worker::start`).
        container.network = Network::Private;
        container.forwards = spec.forwards.clone();
        container.stdin = true;
        Ok(container)
    }

    /// `DATA_DIR/runtime/ferry-driver-<hash>/`: the standby driver, written on first use.
    fn driver_dir(&self) -> Result<PathBuf> {
        if let Some(d) = self.inner.driver.get() {
            return Ok(d.clone());
        }
        let files: &[(&str, &str)] = &[("standby.py", pool::STANDBY_PY), ("ferry_zygote.py", pool::ZYGOTE_PY)];
        let mut hash: u64 = 0xcbf29ce484222325;
        for (name, text) in files {
            for b in name.bytes().chain(text.bytes()) {
                hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
        let root = self.inner.data_dir.join("runtime");
        let dir = root.join(format!("ferry-driver-{hash:016x}"));
        if !dir.is_dir() {
            let staging = root.join(format!(".staging-{}-driver-{}", std::process::id(), next_seq()));
            std::fs::create_dir_all(&staging).map_err(|source| Error::Io { context: "creating the standby driver".into(), path: staging.clone(), source })?;
            for (name, text) in files {
                let path = staging.join(name);
                std::fs::write(&path, text).map_err(|source| Error::Io { context: "writing the standby driver".into(), path, source })?;
            }
            if std::fs::rename(&staging, &dir).is_err() {
                client_runtime::remove_tree(&staging);
            }
        }
        let _ = self.inner.driver.set(dir.clone());
        Ok(dir)
    }

    async fn client_runtime(&self, client_version: &str, python: &str, image: &ferry_runtime::LayerId) -> Result<ClientRuntime> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
        let logger = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                tracing::info!(target: "ferry_worker::client_runtime", "{}", line.text);
            }
        });
        let result = self.prepare_client_runtime_for(client_version, python, image, &tx).await;
        drop(tx);
        let _ = logger.await;
        result
    }

    fn tasks_dir(&self) -> PathBuf {
        self.inner.data_dir.join("tasks")
    }
}

/// What a task with GPUs runs: `ldconfig` first, so the driver libraries bound into
/// [`ferry_runtime::DRIVER_LIB_DIR`] are in the image's loader cache (`ldconfig -p`,
/// `ctypes.util.find_library`), as the NVIDIA container tooling does; then `command`.
/// `LD_LIBRARY_PATH` covers images where that cannot run (no shell, not root).
pub fn refresh_ldcache_then(command: Vec<String>) -> Vec<String> {
    let script = format!(
        "if [ -w /etc ] && [ -x /sbin/ldconfig ]; then mkdir -p /etc/ld.so.conf.d && echo {dir} > /etc/ld.so.conf.d/000-ferry-nvidia.conf && /sbin/ldconfig 2>/dev/null; fi; exec \"$@\"",
        dir = ferry_runtime::DRIVER_LIB_DIR
    );
    let mut argv = vec!["/bin/sh".to_string(), "-c".to_string(), script, "ferry-gpu".to_string()];
    argv.extend(command);
    argv
}

/// The container's environment on top of the image's own (which the runtime applies).
fn task_env(spec: &TaskSpec, image_pythonpath: Option<&str>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec.env.iter().filter(|(k, _)| k != "PYTHONPATH").cloned().collect();
    let user_pythonpath = spec.env.iter().rev().find(|(k, _)| k == "PYTHONPATH").map(|(_, v)| v.as_str()).or(image_pythonpath);
    // The client first; then /root, where the app's file and `add_local_python_source`
    // packages are mounted (on Modal it is on PYTHONPATH, which matters when the image's
    // WORKDIR is elsewhere); then whatever the image or the user asked for.
    let pythonpath = match user_pythonpath {
        Some(p) if !p.is_empty() => format!("{PKG_MOUNT}:/root:{p}"),
        _ => format!("{PKG_MOUNT}:/root"),
    };
    let mut set = |k: &str, v: String| match env.iter_mut().find(|(key, _)| key == k) {
        Some(slot) => slot.1 = v,
        None => env.push((k.to_string(), v)),
    };
    set("MODAL_CONTAINER_ARGUMENTS_PATH", CONTAINER_ARGUMENTS_PATH.into());
    set("MODAL_SERVER_URL", spec.server_url.clone());
    set("MODAL_IS_REMOTE", "1".into());
    set("MODAL_TASK_ID", spec.task_id.clone());
    set("MODAL_OVERRIDE_HEADERS", format!("x-modal-task-id:{},x-modal-task-secret:{}", spec.task_id, spec.task_secret));
    if !spec.environment_name.is_empty() {
        set("MODAL_ENVIRONMENT", spec.environment_name.clone());
    }
    set("PYTHONPATH", pythonpath);
    set("PYTHONUNBUFFERED", "1".into());
    env
}

/// The variables a standby starts with; the rest of [`task_env`] arrives with its task.
const STANDBY_ENV: &[&str] = &["PYTHONPATH", "PYTHONUNBUFFERED", "MODAL_IS_REMOTE", "MODAL_SERVER_URL"];

/// The client splits `MODAL_OVERRIDE_HEADERS` on commas, trims whitespace around each value
/// (`modal/config.py: _transform_headers`), and gRPC refuses non-printable metadata.
fn check_header_value(task_id: &str, what: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty() && value.trim() == value && value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b',');
    if ok {
        Ok(())
    } else {
        Err(Error::BadCredential { task_id: task_id.to_string(), what, value: value.to_string() })
    }
}

fn path_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' { c } else { '_' }).take(64).collect()
}

pub(crate) fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid == std::process::id() as i32 || unsafe { libc::kill(pid, 0) } == 0
}

/// The scheduler moves these between tasks: they must stay `Send`.
#[allow(dead_code)]
fn _handles_and_futures_are_send(worker: Worker, spec: TaskSpec, mut task: Task, tx: LogSink) {
    fn send<T: Send>(_: T) {}
    fn shared<T: Send + Sync>() {}
    shared::<Worker>();
    shared::<Task>();
    shared::<TaskKiller>();
    send(worker.start(spec));
    send(worker.prepare_client_runtime("1.6.4", "3.11", &tx));
    send(prepare(Path::new("/"), "3.11", "1.6.4", &tx));
    send(task.wait());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec::new("ta-1", LayerId::parse(&"a".repeat(64)).unwrap(), vec![], "http://127.0.0.1:9", "s3cr3t")
    }

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn task_env_carries_the_protocol_variables() {
        let env = task_env(&spec(), None);
        assert_eq!(get(&env, "MODAL_OVERRIDE_HEADERS"), Some("x-modal-task-id:ta-1,x-modal-task-secret:s3cr3t"));
        assert_eq!(get(&env, "MODAL_IS_REMOTE"), Some("1"));
        assert_eq!(get(&env, "MODAL_TASK_ID"), Some("ta-1"));
        assert_eq!(get(&env, "MODAL_SERVER_URL"), Some("http://127.0.0.1:9"));
        assert_eq!(get(&env, "MODAL_CONTAINER_ARGUMENTS_PATH"), Some(CONTAINER_ARGUMENTS_PATH));
        assert_eq!(get(&env, "PYTHONPATH"), Some("/pkg:/root"));
        assert_eq!(get(&env, "PYTHONUNBUFFERED"), Some("1"));
        assert_eq!(get(&env, "MODAL_ENVIRONMENT"), None);
    }

    #[test]
    fn user_env_cannot_override_the_protocol_but_keeps_its_pythonpath() {
        let mut s = spec();
        s.environment_name = "dev".into();
        s.env = vec![("MODAL_SERVER_URL".into(), "http://elsewhere".into()), ("PYTHONPATH".into(), "/app".into()), ("A".into(), "1".into())];
        let env = task_env(&s, Some("/image"));
        assert_eq!(get(&env, "MODAL_SERVER_URL"), Some("http://127.0.0.1:9"));
        assert_eq!(get(&env, "PYTHONPATH"), Some("/pkg:/root:/app"));
        assert_eq!(get(&env, "A"), Some("1"));
        assert_eq!(get(&env, "MODAL_ENVIRONMENT"), Some("dev"));
        assert_eq!(get(&task_env(&spec(), Some("/image")), "PYTHONPATH"), Some("/pkg:/root:/image"));
    }

    #[test]
    fn credentials_must_survive_the_clients_header_parsing() {
        check_header_value("t", "task secret", "abc-DEF_123:=/+").unwrap();
        for bad in ["", "a,b", " a", "a ", "tab\there", "ü", "new\nline"] {
            assert!(check_header_value("t", "task secret", bad).is_err(), "{bad:?}");
        }
    }
}
