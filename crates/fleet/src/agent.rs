//! `ferry worker`: a process on another host that runs task containers for a control plane.
//!
//! It registers its capacity and labels, then polls (the poll is its heartbeat). Each
//! assignment becomes a container through `ferry-worker`, from an image whose layers it fetches
//! from object storage (`ImageStore::fetch`; bases are prepared on this host) with mount files
//! fetched by content (`ContentFiles`, cached in its data dir). Container output and exits go
//! back in order through one shipper. A worker the control plane declared lost kills every
//! container it still runs and registers again: it never runs a stale task.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{Assignment, ExitMessage, ExitReport, LogBatch, LogLine, Poll, PollAnswer, Register, Registered};

/// Settings of one `ferry worker` process.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The control plane's fleet endpoint, `http://HOST:FLEET_PORT`.
    pub server: String,
    /// `ID:SECRET` of a worker token.
    pub token: String,
    pub data_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub storage: ferry_blobs::StorageConfig,
    /// A PEM file of the authority that signed the control plane's certificate (https).
    pub ca_cert: Option<PathBuf>,
    /// This host's GPUs (`ferry worker --gpu-alias ...`), leased whole to containers.
    pub gpus: ferry_gpu::Inventory,
    /// Standby containers kept ready per image (cold starts), as on the server.
    pub pool: ferry_worker::PoolConfig,
}

/// A container this worker runs (or is preparing): `None` until it started.
type Running = Arc<Mutex<HashMap<String, Option<ferry_worker::TaskKiller>>>>;

enum Ship {
    Log(LogLine),
    Exit(String, ExitReport),
}

struct Agent {
    config: AgentConfig,
    http: reqwest::Client,
    worker: ferry_worker::Worker,
    images: ferry_runtime::ImageStore,
    blobs: ferry_blobs::Blobs,
    files: ferry_blobs::ContentFiles,
    /// Containers' ways to a control plane that speaks TLS.
    relays: crate::relay::Relays,
    gpus: ferry_gpu::GpuPool,
    running: Running,
    /// Tasks told to stop before their container started.
    cancelled: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Runs the worker until interrupted or removed by an operator.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(30));
    let mut ca_pem = None;
    if let Some(ca) = &config.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read --ca-cert {}", ca.display()))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).context("--ca-cert is not a PEM certificate")?);
        ca_pem = Some(pem);
    }
    let http = http.build()?;
    let relays = crate::relay::Relays::new(&config.data_dir, ca_pem.as_deref())?;
    let images = ferry_runtime::ImageStore::open(&config.data_dir)?;
    ferry_runtime::isolation(images.root());
    let blobs = ferry_blobs::Blobs::open(&config.storage, &config.data_dir).await?;
    if blobs.is_local() {
        tracing::warn!("no --storage: this worker can only run images whose layers it has (bases); give it the control plane's bucket");
    }
    let files = ferry_blobs::ContentFiles::new(blobs.clone(), &config.data_dir);
    let worker = ferry_worker::Worker::with_pool(&config.data_dir, images.clone(), config.pool.clone(), config.ca_cert.clone());
    let swept = worker.sweep_stale();
    if swept > 0 {
        tracing::info!("removed {swept} leftovers of containers from an earlier run");
    }
    // The modal client every container mounts, prepared once (`ferry images prepare` does it
    // ahead of time).
    {
        let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
        let printer = tokio::spawn(async move {
            while let Some(l) = lines.recv().await {
                tracing::info!("{}", l.text);
            }
        });
        let r = worker.prepare_client_runtime(ferry_worker::DEFAULT_CLIENT_VERSION, "3.11", &sink).await;
        drop(sink);
        let _ = printer.await;
        r.context("cannot prepare the modal client runtime (run `ferry images prepare` on this host)")?;
    }
    let gpus = ferry_gpu::GpuPool::new(config.gpus.clone());
    let agent = Arc::new(Agent { config, http, worker, images, blobs, files, relays, gpus, running: Default::default(), cancelled: Default::default() });
    agent.serve().await
}

fn capacity(data_dir: &std::path::Path) -> (f64, i64, i64) {
    let cpu = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok()))
        .map(|kib| kib / 1024)
        .unwrap_or(1024);
    let disk_mib = {
        let path = std::ffi::CString::new(data_dir.as_os_str().to_string_lossy().as_bytes()).unwrap_or_default();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0 {
            (st.f_bavail as i64).saturating_mul(st.f_frsize as i64) / (1024 * 1024)
        } else {
            0
        }
    };
    (cpu, memory_mib, disk_mib)
}


/// The first non-loopback IPv4 address of this host (informational, for `ferry worker list`).
fn own_address() -> String {
    // A UDP "connection" picks the source address routing would use; nothing is sent.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("10.255.255.255:9")?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_default()
}

impl Agent {
    async fn call<Q: Serialize, A: DeserializeOwned>(&self, path: &str, body: &Q) -> anyhow::Result<A> {
        let url = format!("{}/fleet/v1/{path}", self.config.server.trim_end_matches('/'));
        let resp = self
            .http
            .post(&url)
            .header("authorization", format!("Bearer {}", self.config.token))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.config.server))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            anyhow::bail!("the control plane answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn register(&self) -> anyhow::Result<Registered> {
        let (cpu, memory_mib, disk_mib) = capacity(&self.config.data_dir);
        let cards = &self.config.gpus.cards;
        let gpus = cards.len() as i64;
        let gpu_types = cards.iter().map(|c| c.label.clone().unwrap_or_default()).collect();
        let req = Register { name: self.config.name.clone(), address: own_address(), labels: self.config.labels.clone(), cpu, memory_mib, gpus, disk_mib, gpu_types };
        let mut delay = Duration::from_millis(500);
        loop {
            match self.call::<_, Registered>("register", &req).await {
                Ok(r) => {
                    tracing::info!(worker_id = r.worker_id, name = req.name, cpu, memory_mib, gpus, disk_mib, "registered with {}", self.config.server);
                    println!("Ferry worker {} registered as {} with {}", req.name, r.worker_id, self.config.server);
                    return Ok(r);
                }
                Err(e) if e.to_string().contains("401") => return Err(e),
                // Waiting does not mend a certificate this worker does not trust.
                Err(e) if format!("{e:#}").contains("certificate") => {
                    return Err(e.context(
                        "this worker does not trust the control plane's TLS certificate: give the authority that signed it \
                         with --ca-cert (a control plane's own authority is DATA_DIR/tls/ca.pem on its host)",
                    ))
                }
                Err(e) => {
                    let hint = if self.config.server.starts_with("http://") && format!("{e:#}").contains("connection closed") {
                        " (does the control plane speak TLS? then use an https:// URL and --ca-cert)"
                    } else {
                        ""
                    };
                    tracing::warn!("cannot register yet: {e:#}{hint}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn kill_all(&self, why: &str) {
        let running: Vec<(String, Option<ferry_worker::TaskKiller>)> = self.running.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (task_id, killer) in running {
            tracing::warn!(task_id, "killing the container: {why}");
            self.kill(&task_id, killer, ferry_worker::Signal::Kill);
        }
    }

    fn kill(&self, task_id: &str, killer: Option<ferry_worker::TaskKiller>, signal: ferry_worker::Signal) {
        match killer {
            Some(k) => {
                let _ = k.kill(signal);
            }
            None => {
                self.cancelled.lock().unwrap().insert(task_id.to_string());
            }
        }
    }

    async fn serve(self: Arc<Self>) -> anyhow::Result<()> {
        let (ship, shipped) = tokio::sync::mpsc::unbounded_channel::<Ship>();
        let mut registered = self.register().await?;
        let worker_id = Arc::new(Mutex::new(registered.worker_id.clone()));
        tokio::spawn(self.clone().shipper(worker_id.clone(), shipped));
        let mut failures = 0u32;
        loop {
            let running: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
            let poll = Poll { worker_id: registered.worker_id.clone(), running };
            let answer: PollAnswer = match self.call("poll", &poll).await {
                Ok(a) => {
                    failures = 0;
                    a
                }
                Err(e) => {
                    failures += 1;
                    if e.to_string().contains("404") {
                        // The control plane forgot this worker: start over.
                        self.kill_all("the control plane does not know this worker");
                        registered = self.register().await?;
                        *worker_id.lock().unwrap() = registered.worker_id.clone();
                        continue;
                    }
                    if failures == 1 || failures % 30 == 0 {
                        tracing::warn!("cannot poll the control plane: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match answer.state.as_str() {
                "lost" => {
                    tracing::warn!(worker_id = registered.worker_id, "the control plane declared this worker lost; killing its containers and registering again");
                    self.kill_all("this worker was declared lost; its tasks run elsewhere");
                    registered = self.register().await?;
                    *worker_id.lock().unwrap() = registered.worker_id.clone();
                    continue;
                }
                "removed" => {
                    self.kill_all("this worker was removed by an operator");
                    println!("Ferry worker {} was removed by an operator (`ferry worker remove`); stopping", self.config.name);
                    return Ok(());
                }
                _ => {}
            }
            for task_id in &answer.stale {
                let killer = self.running.lock().unwrap().get(task_id).cloned();
                if let Some(killer) = killer {
                    tracing::warn!(task_id, "the task is no longer this worker's; killing its container");
                    self.kill(task_id, killer, ferry_worker::Signal::Kill);
                }
            }
            for k in answer.kills {
                let killer = self.running.lock().unwrap().get(&k.task_id).cloned();
                if let Some(killer) = killer {
                    let signal = if k.signal == "interrupt" { ferry_worker::Signal::Interrupt } else { ferry_worker::Signal::Kill };
                    self.kill(&k.task_id, killer, signal);
                }
            }
            for a in answer.assignments {
                self.running.lock().unwrap().insert(a.task_id.clone(), None);
                let agent = self.clone();
                let ship = ship.clone();
                tokio::spawn(async move {
                    let task_id = a.task_id.clone();
                    let report = agent.run_task(a, &ship).await;
                    agent.running.lock().unwrap().remove(&task_id);
                    agent.cancelled.lock().unwrap().remove(&task_id);
                    let _ = ship.send(Ship::Exit(task_id, report));
                });
            }
        }
    }

    /// Runs one assignment to its end.
    async fn run_task(&self, a: Assignment, ship: &tokio::sync::mpsc::UnboundedSender<Ship>) -> ExitReport {
        let task_id = a.task_id.clone();
        let failed = |message: String| {
            tracing::warn!(task_id, "task could not start: {message}");
            ExitReport { code: -1, error: Some(message), ..Default::default() }
        };
        let Some(layer) = ferry_runtime::LayerId::parse(&a.layer) else { return failed(format!("bad layer id {}", a.layer)) };
        if let Err(e) = self.images.fetch(&self.blobs, &layer).await {
            return failed(format!("cannot fetch image layer {layer} on worker {}: {e}", self.config.name));
        }
        let mut files = Vec::with_capacity(a.files.len());
        for f in &a.files {
            match self.files.ensure_local(&f.sha256).await {
                Ok(path) => files.push((path, f.path.clone())),
                Err(e) => return failed(format!("cannot fetch mount file {} on worker {}: {e}", f.path, self.config.name)),
            }
        }
        let Ok(args) = hex::decode(&a.container_arguments) else { return failed("bad container arguments".into()) };
        // A control plane that speaks TLS, or a container without a network, reaches the API
        // through the worker's relay (crate::relay).
        let mut server_url = a.server_url.clone();
        if server_url.starts_with("https://") || a.block_network {
            match self.relays.socket_for(&server_url) {
                Ok(socket) => {
                    files.push((socket, crate::relay::CONTAINER_SOCKET.to_string()));
                    server_url = format!("unix://{}", crate::relay::CONTAINER_SOCKET);
                }
                Err(e) => return failed(format!("cannot relay the container's connections to {}: {e:#}", a.server_url)),
            }
        }
        let mut spec = ferry_worker::TaskSpec::new(&a.task_id, layer, args, &server_url, &a.task_secret);
        spec.environment_name = a.environment_name.clone();
        spec.files = files;
        spec.env = a.env.clone();
        spec.memory_mib = a.memory_mib;
        spec.cpu_cores = a.cpu_cores;
        spec.disk_mib = a.disk_mib;
        spec.memory_snapshot = a.memory_snapshot.clone();
        spec.block_network = a.block_network;
        // Whole GPUs, held until the container exits: waits while the cards are busy.
        let mut _gpu_lease = None;
        if let Some(list) = &a.gpus {
            let items: Vec<&str> = list.split(',').collect();
            let choices = match ferry_gpu::GpuChoices::parse_list(&items) {
                Ok(c) => c,
                Err(e) => return failed(format!("bad GPU request {list}: {e}")),
            };
            let give_up = || self.cancelled.lock().unwrap().contains(&task_id);
            match self.gpus.lease(&choices, &task_id, give_up).await {
                Ok(Some(lease)) => {
                    spec.give_gpus(&lease, self.gpus.inventory().source == ferry_gpu::InventorySource::Fake);
                    tracing::info!(task_id, "container gets {} x {}", lease.cards().len(), lease.model());
                    _gpu_lease = Some(lease);
                }
                Ok(None) => {}
                Err(e) => return failed(format!("worker {}: {e}", self.config.name)),
            }
        }
        if self.cancelled.lock().unwrap().remove(&task_id) {
            return ExitReport { code: 137, signal: Some(9), ..Default::default() };
        }
        let mut task = match self.worker.start(spec).await {
            Ok(t) => t,
            Err(e) => return failed(e.to_string()),
        };
        tracing::info!(task_id, "container started");
        self.running.lock().unwrap().insert(task_id.clone(), Some(task.killer()));
        if self.cancelled.lock().unwrap().remove(&task_id) {
            let _ = task.killer().kill(ferry_worker::Signal::Kill);
        }
        let pump = task.logs().map(|mut logs| {
            let ship = ship.clone();
            let task_id = task_id.clone();
            tokio::spawn(async move {
                while let Some(line) = logs.recv().await {
                    let _ = ship.send(Ship::Log(LogLine { task_id: task_id.clone(), fd: line.stream.fd() as i32, text: line.text }));
                }
            })
        });
        let exit = task.wait().await;
        if let Some(p) = pump {
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        tracing::info!(task_id, "container exited");
        match exit {
            Ok(e) => ExitReport { code: e.code, signal: e.signal, oom_killed: e.oom_killed, disk_exceeded: e.disk_exceeded, error: None },
            Err(e) => {
                tracing::warn!(task_id, "waiting for the container failed: {e}");
                ExitReport { code: -1, ..Default::default() }
            }
        }
    }

    /// Sends log lines (batched) and exits to the control plane, in the order they happened.
    async fn shipper(self: Arc<Self>, worker_id: Arc<Mutex<String>>, mut shipped: tokio::sync::mpsc::UnboundedReceiver<Ship>) {
        let mut lines = Vec::new();
        while let Some(first) = shipped.recv().await {
            let mut next = Some(first);
            let mut exits = Vec::new();
            // Whatever else is waiting goes in the same batch.
            while let Some(item) = next.take().or_else(|| shipped.try_recv().ok()) {
                match item {
                    Ship::Log(l) => lines.push(l),
                    Ship::Exit(task_id, report) => exits.push((task_id, report)),
                }
                if lines.len() >= 1000 {
                    break;
                }
            }
            let id = worker_id.lock().unwrap().clone();
            if !lines.is_empty() {
                let batch = LogBatch { worker_id: id.clone(), lines: std::mem::take(&mut lines) };
                if let Err(e) = self.call::<_, serde_json::Value>("logs", &batch).await {
                    tracing::warn!("cannot send container logs: {e:#}");
                }
            }
            for (task_id, exit) in exits {
                let msg = ExitMessage { worker_id: id.clone(), task_id: task_id.clone(), exit };
                for attempt in 0..20 {
                    match self.call::<_, serde_json::Value>("exit", &msg).await {
                        Ok(_) => break,
                        Err(e) => {
                            if attempt == 0 {
                                tracing::warn!(task_id, "cannot report the exit yet: {e:#}");
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        }
    }
}
