//! The protocol side of worker hosts (`ferry-fleet`): what a function asks of a host, and a
//! task container run on a worker instead of here. The function's definition becomes a
//! `Demand` and an `Assignment`; `ferry-fleet` decides and carries them.

use std::collections::BTreeMap;

use ferry_proto::api;
use prost::Message;

use crate::launch::{after_exit, watch, Killer};
use crate::service::ModalService;

/// Why a function's containers can only run on this host, if they can't run on a worker.
fn local_only(s: &ModalService, def: &api::Function) -> Option<String> {
    let subject = format!("function {}", def.function_name);
    let why = if s.blobs.is_local() {
        Some("this server keeps its bytes in its data dir (worker hosts need a `--storage` bucket)".to_string())
    } else if !def.volume_mounts.is_empty() {
        Some(format!("{subject} mounts Volumes"))
    } else if !def.shared_volume_mounts.is_empty() {
        Some(format!("{subject} mounts NetworkFileSystems"))
    } else if !def.cloud_bucket_mounts.is_empty() {
        Some(format!("{subject} mounts cloud buckets"))
    } else {
        None
    };
    why
}

/// Asks ferry-fleet where a container of the function goes.
pub(crate) async fn place(
    s: &ModalService,
    fleet: &ferry_fleet::Fleet,
    def: &api::Function,
    gpu: Option<&ferry_gpu::GpuChoices>,
) -> Result<ferry_fleet::Placement, String> {
    let mut labels = BTreeMap::new();
    if let Some(p) = &def.scheduler_placement {
        if !p.regions.is_empty() {
            labels.insert("region".to_string(), p.regions.clone());
        }
    }
    if !def.cloud_provider_str.is_empty() {
        labels.insert("cloud".to_string(), vec![def.cloud_provider_str.to_lowercase()]);
    }
    let r = def.resources.clone().unwrap_or_default();
    let demand = ferry_fleet::Demand {
        cpu: r.milli_cpu as f64 / 1000.0,
        memory_mib: r.memory_mb as i64,
        labels,
        local_only: local_only(s, def),
        local_lacks_gpus: gpu.is_some_and(|g| s.gpus.check(g).is_err()),
        gpu: gpu.cloned(),
    };
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let asks_gpus = demand.gpu.is_some();
    fleet.place(&demand, s.launcher.local_tasks(), cpus).await.map_err(|e| if asks_gpus { format!("{}: {e}", crate::gpus::subject(def)) } else { e })
}

/// Runs one task container on a worker host until it exits or its worker is lost, then
/// settles the inputs it held as a local container's end would (a lost worker's run again).
pub(crate) async fn run_remote(
    s: &ModalService,
    fleet: &ferry_fleet::Fleet,
    (worker_id, worker_name): (&str, &str),
    task_id: &str,
    (record, def): (&ferry_store::FunctionRecord, &api::Function),
    (app, env): (&ferry_store::App, &ferry_store::Environment),
    layer: ferry_runtime::LayerId,
    gpu: Option<&ferry_gpu::GpuChoices>,
) -> Result<(), String> {
    let function_id = record.id.as_str();
    // The worker fetches the image from the bucket: make sure every layer is there.
    s.images.store.publish(&s.blobs, &layer).await.map_err(|e| format!("cannot store the image in {}: {e}", s.blobs.describe()))?;
    let mut files = Vec::new();
    for mount_id in &def.mount_ids {
        let mount = s.store.mount(mount_id).await.map_err(|e| format!("mount {mount_id}: {e}"))?;
        if mount.name.as_deref().is_some_and(crate::mounts::is_client_mount) {
            continue;
        }
        files.extend(mount.files.into_iter().map(|f| ferry_fleet::FileRef { sha256: f.sha256, path: f.path }));
    }
    let (args, env_vars) = crate::launch::task_arguments(s, task_id, (record, def), (app, env)).await?;
    let r = def.resources.clone().unwrap_or_default();
    let secret = s.store.create_task_credential(task_id, &app.id).await.map_err(|e| e.to_string())?;
    let assignment = ferry_fleet::Assignment {
        task_id: task_id.to_string(),
        layer: layer.to_string(),
        container_arguments: hex::encode(args.encode_to_vec()),
        // Containers on a worker reach the API at the address clients use, through their NAT.
        server_url: s.config.public_url.clone(),
        task_secret: secret,
        environment_name: env.name.clone(),
        files,
        env: env_vars.into_iter().collect(),
        memory_mib: (r.memory_mb > 0).then(|| r.memory_mb_max.max(r.memory_mb) as u64),
        cpu_cores: (r.milli_cpu > 0).then(|| r.milli_cpu_max.max(r.milli_cpu) as f64 / 1000.0),
        disk_mib: (r.ephemeral_disk_mb > 0).then_some(r.ephemeral_disk_mb as u64),
        memory_snapshot: def.checkpointing_enabled.then(|| crate::launch::snapshot_key(function_id, record.definition.as_deref().unwrap_or_default())),
        // Whole GPUs: the worker leases its own cards (and waits while they are busy).
        gpus: gpu.map(crate::gpus::encode),
        block_network: def.block_network,
    };
    let placed = ferry_store::NewWorkerTask {
        task_id: task_id.to_string(),
        worker_id: worker_id.to_string(),
        app_id: app.id.clone(),
        function_id: function_id.to_string(),
        cpu: r.milli_cpu as f64 / 1000.0,
        memory_mib: r.memory_mb as i64,
        replica: Some(s.scheduler.replica_id().to_string()),
        gpus: gpu.and_then(|g| g.requests().first()).map_or(0, |r| r.count as i64),
    };
    let remote = match fleet.assign(placed, &assignment).await {
        Ok(t) => t,
        Err(e) => {
            let _ = s.store.revoke_task_credential(task_id).await;
            return Err(format!("cannot place the container on worker {worker_name}: {e}"));
        }
    };
    tracing::info!(task_id, function_id, worker = worker_name, "container placed on a worker host");
    let killer = Killer::Remote(remote.killer());
    s.launcher.follow(task_id, killer.clone());
    let watcher = watch(s, task_id, def, killer);
    let exit = remote.wait().await;
    watcher.abort();
    s.launcher.unfollow(task_id);
    let _ = s.store.revoke_task_credential(task_id).await;
    match exit {
        ferry_fleet::RemoteExit::Lost => {
            // As when an operator stops a container: what it held runs again elsewhere.
            tracing::warn!(task_id, function_id, worker = worker_name, "container lost with its worker host; its inputs run again");
            let (_, held) = s.scheduler.remove_task(task_id);
            s.scheduler.return_inputs(function_id, held);
            let _ = crate::launch::ensure_capacity(s, function_id).await;
            Ok(())
        }
        ferry_fleet::RemoteExit::Exited(report) => {
            if let Some(message) = report.error {
                return Err(message);
            }
            let exit = ferry_worker::TaskExit {
                code: report.code,
                signal: report.signal,
                oom_killed: report.oom_killed,
                peak_memory_bytes: None,
                disk_exceeded: report.disk_exceeded,
            };
            after_exit(s, function_id, task_id, def, Ok(exit)).await;
            Ok(())
        }
    }
}
