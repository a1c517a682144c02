//! Image RPCs: each `ImageGetOrCreate` is one layer, built in the background by the runtime's
//! builder; `ImageJoinStreaming` streams the build's output live and ends with its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::api;
use ferry_runtime::{BuildSettings, ContextFile, HostContextFile, ImageBuilder, ImageStore, LayerId, LayerSpec, LogLine, RegistryCredentials};
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::service::{ModalService, Rpc, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

const SUCCESS: i32 = api::generic_result::GenericStatus::Success as i32;
const FAILURE: i32 = api::generic_result::GenericStatus::Failure as i32;

/// Builds in progress (and their output, for clients that join late).
#[derive(Default)]
pub(crate) struct Builds {
    running: Mutex<HashMap<String, Arc<Build>>>,
}

/// A running build. Its output goes to `images/logs/<image id>.log` as it arrives (one line
/// per log line: fd, timestamp, text), never into memory, and every client that joins reads it
/// from there, from the byte offset it has seen (its `entry_id`).
struct Build {
    log: Mutex<Option<std::fs::File>>,
    result: Mutex<Option<(api::GenericResult, Option<api::ImageMetadata>)>>,
    changed: Notify,
}

impl Build {
    fn create(path: &std::path::Path) -> Build {
        let _ = std::fs::create_dir_all(path.parent().expect("log dir"));
        let file = std::fs::File::create(path).map_err(|e| tracing::warn!(path = %path.display(), error = %e, "cannot write the build log")).ok();
        Build { log: Mutex::new(file), result: Mutex::new(None), changed: Notify::new() }
    }

    fn push(&self, line: LogLine) {
        use std::io::Write;
        if let Some(f) = self.log.lock().unwrap().as_mut() {
            let text = line.text.replace('\n', " ");
            let _ = writeln!(f, "{} {:.3} {}", line.stream.fd(), ferry_store::now(), text);
        }
        self.changed.notify_waiters();
    }
}

fn log_path(s: &ModalService, image_id: &str) -> std::path::PathBuf {
    s.images.store.root().join("logs").join(format!("{image_id}.log"))
}

/// How much of a build log one streamed message carries at most.
const LOG_BATCH: usize = 256 * 1024;

/// Sends a build's kept log from `offset` to its end, in batches; returns the offset reached,
/// or None when the client went away.
async fn send_log(path: &std::path::Path, mut offset: u64, tx: &tokio::sync::mpsc::Sender<Result<api::ImageJoinStreamingResponse, Status>>) -> Option<u64> {
    loop {
        let (batch, next) = read_log(path, offset, LOG_BATCH).await;
        if batch.is_empty() {
            return Some(offset);
        }
        offset = next;
        let msg = api::ImageJoinStreamingResponse { task_logs: batch, entry_id: offset.to_string(), ..Default::default() };
        tx.send(Ok(msg)).await.ok()?;
    }
}

/// The complete lines of a build log after byte `offset`, at most `limit` bytes of them; returns
/// them with the offset after the last one.
async fn read_log(path: &std::path::Path, offset: u64, limit: usize) -> (Vec<api::TaskLogs>, u64) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut f) = tokio::fs::File::open(path).await else { return (Vec::new(), offset) };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return (Vec::new(), offset);
    }
    let mut buf = vec![0u8; limit];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let Some(end) = buf[..n].iter().rposition(|b| *b == b'\n') else { return (Vec::new(), offset) };
    let mut logs = Vec::new();
    for line in String::from_utf8_lossy(&buf[..end]).split('\n') {
        let mut parts = line.splitn(3, ' ');
        let fd = parts.next().and_then(|f| f.parse::<i32>().ok()).unwrap_or(1);
        let timestamp = parts.next().and_then(|t| t.parse::<f64>().ok()).unwrap_or_default();
        let mut data = parts.next().unwrap_or_default().to_string();
        data.push('\n');
        logs.push(api::TaskLogs { data, file_descriptor: fd, timestamp, ..Default::default() });
    }
    (logs, offset + end as u64 + 1)
}

/// The runtime's image store and builder, shared by all requests.
pub(crate) struct ImageService {
    pub(crate) store: ImageStore,
    builder: ImageBuilder,
    builds: Builds,
}

impl ImageService {
    pub(crate) fn open(data_dir: &std::path::Path, settings: BuildSettings) -> anyhow::Result<Self> {
        let store = ImageStore::open(data_dir)?;
        Ok(ImageService { builder: ImageBuilder::with_settings(store.clone(), settings), store, builds: Builds::default() })
    }
}

/// The one layer `Image.debian_slim(python_version=<series>)` is under builder 2025.06: the
/// client's own commands, so `ferry images prepare` can build it before the first `modal run`,
/// whose identical request is then a cache hit. `None` for a series Ferry cannot provide.
pub fn debian_slim_spec(python_series: &str) -> Option<LayerSpec> {
    // The micro versions the 2025.06 builder pins (modal/builder/base-images.json).
    let full = match python_series {
        "3.11" => "3.11.12",
        "3.13" => "3.13.3",
        _ => return None,
    };
    let commands = [
        format!("FROM python:{full}-slim-bookworm"),
        "RUN apt-get update".into(),
        "RUN apt-get install -y gcc gfortran build-essential".into(),
        "RUN pip install --upgrade pip wheel uv".into(),
        "RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections".into(),
        r#"CMD ["sleep", "172800"]"#.into(),
    ];
    Some(LayerSpec { commands: commands.to_vec(), ..Default::default() })
}

fn image_id(image: &api::Image, builder_version: &str) -> String {
    let mut h = Sha256::new();
    h.update(builder_version.as_bytes());
    h.update(image.encode_to_vec());
    format!("im-{}", &hex::encode(h.finalize())[..32])
}

fn metadata(s: &ModalService, layer: &str) -> Option<api::ImageMetadata> {
    let id = LayerId::parse(layer)?;
    let record = s.images.store.layer(&id).ok()?;
    Some(api::ImageMetadata {
        python_version_info: record.config.python_version.clone(),
        workdir: record.config.workdir.clone(),
        image_builder_version: Some(crate::IMAGE_BUILDER_VERSION.to_string()),
        ..Default::default()
    })
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::ImageGetOrCreateRequest>) -> Rpc<api::ImageGetOrCreateResponse> {
    let req = r.into_inner();
    let image = req.image.ok_or_else(|| invalid("ImageGetOrCreate needs an image definition"))?;
    if image.build_function.is_some() == req.build_function_id.is_empty() {
        return Err(invalid("an `Image.run_function` step needs both the build function's definition and its id"));
    }
    if image.build_function.is_some() {
        check_id(&req.build_function_id, "fu", "Function")?;
        if image.base_images.len() != 1 {
            return Err(invalid("an `Image.run_function` step needs exactly one base image"));
        }
        if !image.dockerfile_commands.is_empty() {
            return Err(invalid("an `Image.run_function` step cannot have Dockerfile commands as well"));
        }
    } else if image.dockerfile_commands.is_empty() {
        return Err(invalid("the image definition has no Dockerfile commands"));
    }
    crate::gpus::check_gpu_config(image.gpu_config.as_ref())?;
    let id = image_id(&image, &req.builder_version);
    let (record, _) = s.store.get_or_create_image(&id, &image.encode_to_vec()).await.or_status()?;
    // A built image whose layer was collected (`ferry images gc`) builds again.
    let layer_gone = match record.layer_id.as_deref().and_then(LayerId::parse) {
        _ if record.status != 1 => false,
        Some(l) if s.images.store.contains(&l) => false,
        // Built on another host, or collected here: fetched from the bucket when it is there.
        Some(l) => s.images.store.fetch(&s.blobs, &l).await.is_err(),
        None => true,
    };
    let force = req.force_build || req.ignore_cache;
    let rebuild = force || record.status == 2 || layer_gone;
    if record.status == 1 && !rebuild {
        let layer = record.layer_id.clone().unwrap_or_default();
        return Ok(Response::new(api::ImageGetOrCreateResponse {
            image_id: id,
            result: Some(api::GenericResult { status: SUCCESS, ..Default::default() }),
            metadata: metadata(s, &layer),
        }));
    }
    if rebuild {
        s.store.reset_image(&id).await.or_status()?;
    }
    start_build(s, &id, image, force, req.build_function_id);
    Ok(Response::new(api::ImageGetOrCreateResponse { image_id: id, result: None, metadata: None }))
}

/// Starts the build of `id` unless one is running.
fn start_build(s: &ModalService, id: &str, image: api::Image, force: bool, build_function_id: String) {
    let build = {
        let mut running = s.images.builds.running.lock().unwrap();
        if let Some(b) = running.get(id) {
            if b.result.lock().unwrap().is_none() {
                return;
            }
        }
        let b = Arc::new(Build::create(&log_path(s, id)));
        running.insert(id.to_string(), b.clone());
        b
    };
    let svc = s.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let _ = svc.store.image_build_started(&id).await;
        let outcome = if image.build_function.is_some() {
            run_function_layer(&svc, &image, &build_function_id, &build).await
        } else {
            build_layer(&svc, &image, force, &build).await
        };
        // With a bucket, the layers go there too, for hosts that lack them.
        let outcome = match outcome {
            Ok(layer) => match LayerId::parse(&layer) {
                Some(id) => svc.images.store.publish(&svc.blobs, &id).await.map(|_| layer).map_err(|e| e.to_string()),
                None => Ok(layer),
            },
            Err(e) => Err(e),
        };
        let (result, meta) = match outcome {
            Ok(layer) => {
                let _ = svc.store.finish_image(&id, Some(&layer), None).await;
                (api::GenericResult { status: SUCCESS, ..Default::default() }, metadata(&svc, &layer))
            }
            Err(message) => {
                build.push(LogLine::system(format!("ferry: image build failed: {message}")));
                let _ = svc.store.finish_image(&id, None, Some(&message)).await;
                (api::GenericResult { status: FAILURE, exception: message, ..Default::default() }, None)
            }
        };
        let _ = svc.store.image_build_finished(&id).await;
        *build.log.lock().unwrap() = None;
        *build.result.lock().unwrap() = Some((result, meta));
        build.changed.notify_waiters();
        // Clients join right after `ImageGetOrCreate`; later ones read the kept log and the
        // outcome from the store, so the finished build need not stay in memory.
        tokio::time::sleep(FINISHED_BUILD_KEPT).await;
        let mut running = svc.images.builds.running.lock().unwrap();
        if running.get(&id).is_some_and(|b| Arc::ptr_eq(b, &build)) {
            running.remove(&id);
        }
    });
}

const FINISHED_BUILD_KEPT: Duration = Duration::from_secs(600);

async fn build_layer(s: &ModalService, image: &api::Image, force: bool, build: &Arc<Build>) -> Result<String, String> {
    let mut base_images = Vec::new();
    for base in &image.base_images {
        let layer = wait_for_layer(s, &base.image_id).await?;
        base_images.push((base.docker_tag.clone(), layer));
    }
    let mut build_env = Vec::new();
    for secret_id in &image.secret_ids {
        let values = s.store.secret_values(secret_id).await.map_err(|e| e.to_string())?;
        build_env.extend(values);
    }
    // Files of `add_local_*(copy=True)` and `from_dockerfile`'s build context: an uploaded
    // mount whose paths are context paths; copied from the file store, never held in memory.
    let mut context_host_files = Vec::new();
    if !image.context_mount_id.is_empty() {
        let mount = s.store.mount(&image.context_mount_id).await.map_err(|e| e.to_string())?;
        for f in mount.files {
            let source = s.files.ensure_local(&f.sha256).await.map_err(|e| format!("cannot fetch build context file {}: {e}", f.path))?;
            context_host_files.push(HostContextFile { path: f.path, source, sha256: f.sha256, mode: f.mode });
        }
    }
    let aws = image.image_registry_config.as_ref().is_some_and(|c| c.registry_auth_type == api::RegistryAuthType::Aws as i32);
    let registry_credentials = match &image.image_registry_config {
        // AWS keys buy an ECR token only from AWS's own API, which Ferry does not call: the
        // image comes through the operator's mirror for that registry, which holds its own
        // credentials (the pull fails naming `--registry-mirror` when there is none).
        Some(_) if aws => None,
        Some(c) if !c.secret_id.is_empty() => {
            let values = s.store.secret_values(&c.secret_id).await.map_err(|e| e.to_string())?;
            Some(registry_credentials(c.registry_auth_type, &values)?)
        }
        _ => None,
    };
    let spec = LayerSpec {
        base_images,
        commands: image.dockerfile_commands.clone(),
        context_files: image
            .context_files
            .iter()
            .map(|f| ContextFile { path: f.filename.clone(), data: f.data.clone() })
            .collect(),
        build_args: image.build_args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        build_env,
        context_host_files,
        registry_credentials,
        ..Default::default()
    };
    let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
    let forward = {
        let build = build.clone();
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                build.push(line);
            }
        })
    };
    // `run_commands(..., volumes=...)`: each volume is a view bound into the build's steps
    // (not part of the layer); the steps' writes are committed when the build succeeds.
    let volume_task = format!("build-{}", &hex::encode(Sha256::digest(image.encode_to_vec()))[..16]);
    let mut spec = spec;
    if !image.volume_mounts.is_empty() {
        let binds = crate::volumes::volume_binds(s, &volume_task, &image.volume_mounts)
            .await
            .map_err(|e| format!("cannot mount the build step's volumes: {e}"))?;
        spec.build_mounts.extend(binds);
    }
    let options = ferry_runtime::BuildOptions { force, ..Default::default() };
    let built = s.images.builder.build_with(&spec, options, &sink).await;
    drop(sink);
    let _ = forward.await;
    if !image.volume_mounts.is_empty() {
        let mut committed = Ok(());
        if built.is_ok() {
            for m in image.volume_mounts.iter().filter(|m| !m.read_only) {
                if let Err(e) = s.volumes.commit_task(&volume_task, &m.volume_id).await {
                    committed = Err(format!("the build succeeded but committing volume {} failed: {e}", m.volume_id));
                    break;
                }
            }
        }
        s.volumes.release_task(&volume_task).await;
        committed?;
    }
    built.map(|b| b.id.to_string()).map_err(|e| match e {
        ferry_runtime::Error::RegistryNotConfigured { .. } if aws => format!(
            "{e}. AWS ECR credentials (`Image.from_aws_ecr`, AWS_* keys in the registry secret) need a token from AWS's API, \
             which Ferry does not call: the operator configures a mirror for the ECR registry that holds its credentials \
             (`ferry serve --registry-mirror <account>.dkr.ecr.<region>.amazonaws.com=URL`), or pull with \
             `Image.from_registry` and a secret of REGISTRY_USERNAME=AWS and REGISTRY_PASSWORD=<`aws ecr get-login-password`>"
        ),
        e => e.to_string(),
    })
}

/// An `Image.run_function` step: the build function runs once, with the arguments the client
/// sent, in a container of the parent image (with the function's secrets, volumes, mounts and
/// resources); what it writes is the layer. The image id already covers the parent, the
/// function's source and globals and the arguments, so an unchanged step is a cache hit.
async fn run_function_layer(s: &ModalService, image: &api::Image, function_id: &str, build: &Arc<Build>) -> Result<String, String> {
    let base = image.base_images.first().ok_or("the step has no base image")?;
    wait_for_layer(s, &base.image_id).await?;
    let (record, def) = crate::launch::definition(s, function_id).await?;
    if def.image_id != base.image_id {
        return Err(format!("the build function {function_id} does not run on the step's base image {}", base.image_id));
    }
    let input = image.build_function.as_ref().and_then(|f| f.input.clone()).unwrap_or_default();
    let (sink, mut lines) = tokio::sync::mpsc::unbounded_channel::<LogLine>();
    let forward = {
        let build = build.clone();
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                build.push(line);
            }
        })
    };
    let built = crate::launch::run_build_function(s, function_id, &record.app_id, input.encode_to_vec(), &sink).await;
    drop(sink);
    let _ = forward.await;
    built.map(|layer| layer.to_string())
}

/// Registry credentials from a secret, the way Modal reads them: a username and password, or
/// a GCP service account key (which registries accept as the password of `_json_key`).
fn registry_credentials(auth_type: i32, values: &std::collections::BTreeMap<String, String>) -> Result<RegistryCredentials, String> {
    let get = |k: &str| values.get(k).cloned();
    if auth_type == api::RegistryAuthType::Gcp as i32 {
        let key = get("SERVICE_ACCOUNT_JSON").ok_or("the registry secret has no SERVICE_ACCOUNT_JSON")?;
        return Ok(RegistryCredentials { username: "_json_key".into(), password: key });
    }
    match (get("REGISTRY_USERNAME"), get("REGISTRY_PASSWORD")) {
        (Some(username), Some(password)) => Ok(RegistryCredentials { username, password }),
        _ => Err("the registry secret needs REGISTRY_USERNAME and REGISTRY_PASSWORD".into()),
    }
}

/// `Image.from_id`: the image's id and metadata, if it was built here.
pub(crate) async fn from_id(s: &ModalService, r: Request<api::ImageFromIdRequest>) -> Rpc<api::ImageFromIdResponse> {
    let req = r.into_inner();
    check_id(&req.image_id, "im", "Image")?;
    let record = s.store.image(&req.image_id).await.or_status()?;
    match record.status {
        1 => Ok(Response::new(api::ImageFromIdResponse {
            metadata: record.layer_id.as_deref().and_then(|l| metadata(s, l)),
            image_id: record.id,
        })),
        2 => Err(Status::failed_precondition(format!(
            "Image {} failed to build: {}",
            req.image_id,
            record.error.unwrap_or_default()
        ))),
        _ => Err(Status::failed_precondition(format!("Image {} has not finished building yet", req.image_id))),
    }
}

/// The layer of a parent image, waiting for its build when it is still running.
pub(crate) async fn wait_for_layer(s: &ModalService, image_id: &str) -> Result<LayerId, String> {
    loop {
        let record = s.store.image(image_id).await.map_err(|e| e.to_string())?;
        match record.status {
            1 => {
                let layer = record.layer_id.unwrap_or_default();
                let layer = LayerId::parse(&layer).ok_or_else(|| format!("image {image_id} has no valid layer"))?;
                // Built on another host (or collected here): fetched from the bucket.
                if !s.images.store.contains(&layer) {
                    s.images.store.fetch(&s.blobs, &layer).await.map_err(|e| format!("image {image_id}: {e}"))?;
                }
                return Ok(layer);
            }
            2 => return Err(format!("parent image {image_id} failed to build: {}", record.error.unwrap_or_default())),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Streams a build's output after `last_entry_id` (a byte offset in its log), then its result.
pub(crate) async fn join_streaming(s: &ModalService, r: Request<api::ImageJoinStreamingRequest>) -> RpcStream<api::ImageJoinStreamingResponse> {
    let req = r.into_inner();
    check_id(&req.image_id, "im", "Image")?;
    let record = s.store.image(&req.image_id).await.or_status()?;
    let mut offset: u64 = req.last_entry_id.parse().unwrap_or(0);
    let build = s.images.builds.running.lock().unwrap().get(&req.image_id).cloned();
    let path = log_path(s, &req.image_id);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let svc = s.clone();
    let timeout = Duration::from_secs_f32(req.timeout.clamp(1.0, 55.0));
    tokio::spawn(async move {
        let Some(build) = build else {
            // Finished before this server started: the kept log (when asked for), then the outcome.
            if req.include_logs_for_finished {
                match send_log(&path, offset, &tx).await {
                    Some(next) => offset = next,
                    None => return,
                }
            }
            let result = match record.status {
                1 => api::GenericResult { status: SUCCESS, ..Default::default() },
                2 => api::GenericResult { status: FAILURE, exception: record.error.unwrap_or_default(), ..Default::default() },
                _ => api::GenericResult {
                    status: FAILURE,
                    exception: "the build was interrupted by a server restart; run again to rebuild".into(),
                    ..Default::default()
                },
            };
            let meta = record.layer_id.as_deref().and_then(|l| metadata(&svc, l));
            let _ = tx
                .send(Ok(api::ImageJoinStreamingResponse { result: Some(result), metadata: meta, entry_id: offset.to_string(), eof: true, ..Default::default() }))
                .await;
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = build.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Read the result before the log: every line written before the result is then sent.
            let result = build.result.lock().unwrap().clone();
            match send_log(&path, offset, &tx).await {
                Some(next) => offset = next,
                None => return,
            }
            if let Some((result, meta)) = result {
                let _ = tx
                    .send(Ok(api::ImageJoinStreamingResponse {
                        result: Some(result),
                        metadata: meta,
                        entry_id: offset.to_string(),
                        eof: true,
                        ..Default::default()
                    }))
                    .await;
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

// --- named images -------------------------------------------------------------------------------

/// Splits a published name as the client sends it (`[env/]name:tag`, the tag already added)
/// into the environment it addresses and its `name:tag`.
fn split_name<'a>(tag: &'a str, environment_name: &'a str) -> Result<(&'a str, &'a str), Status> {
    let (env, name_tag) = match tag.split_once('/') {
        Some((env, rest)) => (env, rest),
        None => (environment_name, tag),
    };
    let valid = |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match name_tag.split_once(':') {
        Some((name, t)) if valid(name) && valid(t) && !name_tag.contains('/') => Ok((env, name_tag)),
        _ => Err(invalid(format!(
            "'{tag}' is not a valid Image name: use [environment/]name:tag with letters, digits, '-', '_' and '.'"
        ))),
    }
}

/// `Image.publish(name)`: points the name at a built image.
pub(crate) async fn publish(s: &ModalService, r: Request<api::ImagePublishRequest>) -> Rpc<api::ImagePublishResponse> {
    let by = crate::service::creator(&r);
    let req = r.into_inner();
    check_id(&req.image_id, "im", "Image")?;
    let (env_name, name) = split_name(&req.tag, &req.environment_name)?;
    let env = s.store.environment(env_name).await.or_status()?;
    let record = s.store.image(&req.image_id).await.or_status()?;
    if record.status != 1 {
        return Err(Status::failed_precondition(format!(
            "Image {} has not been built successfully, so it cannot be published",
            req.image_id
        )));
    }
    let published = s.store.publish_image(&env.id, name, &req.image_id, &by).await.or_status()?;
    Ok(Response::new(api::ImagePublishResponse { image_id: published.image_id, revision_id: published.revision_id }))
}

/// `Image.from_name(name)`: the image a name points at.
pub(crate) async fn get_by_tag(s: &ModalService, r: Request<api::ImageGetByTagRequest>) -> Rpc<api::ImageGetByTagResponse> {
    let req = r.into_inner();
    let (env_name, name) = split_name(&req.tag, &req.environment_name)?;
    let env = s.store.environment(env_name).await.or_status()?;
    match s.store.image_name(&env.id, name).await.or_status()? {
        Some(n) => Ok(Response::new(api::ImageGetByTagResponse { image_id: n.image_id })),
        None => Err(Status::not_found(format!(
            "Image '{name}' not found in environment '{}'; publish one with `Image.publish` or `modal image build -t {name}`",
            env.name
        ))),
    }
}

const NAMES_PAGE: u32 = 100;

/// `modal image names list`: an environment's names, a page at a time (the page token is the
/// last name sent).
pub(crate) async fn list_tags(s: &ModalService, r: Request<api::ImageListTagsRequest>) -> Rpc<api::ImageListTagsResponse> {
    let req = r.into_inner();
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let limit = if req.max_objects == 0 { NAMES_PAGE } else { req.max_objects.min(1000) } as i64;
    let image_id = (!req.image_id.is_empty()).then_some(req.image_id.as_str());
    let names = s.store.image_names(&env.id, &req.tag_prefix, image_id, &req.page_token, limit + 1).await.or_status()?;
    let more = names.len() as i64 > limit;
    let items: Vec<api::ImageListTagsItem> = names
        .into_iter()
        .take(limit as usize)
        .map(|n| api::ImageListTagsItem {
            tag: n.name,
            image_id: n.image_id,
            revision_id: n.revision_id,
            created_at: n.created_at,
            updated_at: n.updated_at,
            last_published_by: n.published_by,
        })
        .collect();
    let next_page_token = if more { items.last().map(|i| i.tag.clone()).unwrap_or_default() } else { String::new() };
    Ok(Response::new(api::ImageListTagsResponse { items, next_page_token, environment_name: env.name }))
}

/// `modal image names history`: the publishes of one name, newest first (the page token is an
/// offset).
pub(crate) async fn tag_revisions(s: &ModalService, r: Request<api::ImageTagRevisionsRequest>) -> Rpc<api::ImageTagRevisionsResponse> {
    let req = r.into_inner();
    let (env_name, name) = split_name(&req.tag, &req.environment_name)?;
    let env = s.store.environment(env_name).await.or_status()?;
    let limit = if req.max_objects == 0 { NAMES_PAGE } else { req.max_objects.min(1000) } as i64;
    let offset: i64 = if req.page_token.is_empty() {
        0
    } else {
        req.page_token.parse().map_err(|_| invalid(format!("page token '{}' was not issued by this server", req.page_token)))?
    };
    let revisions = s.store.image_name_revisions(&env.id, name, offset, limit + 1).await.or_status()?;
    let more = revisions.len() as i64 > limit;
    let items = revisions
        .into_iter()
        .take(limit as usize)
        .map(|r| api::ImageTagRevisionsItem { image_id: r.image_id, revision_id: r.revision_id, created_at: r.published_at, published_by: r.published_by })
        .collect();
    let next_page_token = if more { (offset + limit).to_string() } else { String::new() };
    Ok(Response::new(api::ImageTagRevisionsResponse { items, next_page_token, tag: format!("{}/{name}", env.name), environment_name: env.name }))
}

/// `modal image names delete`: forgets a name and its history (the image stays).
pub(crate) async fn name_delete(s: &ModalService, r: Request<api::ImageNameDeleteRequest>) -> Rpc<()> {
    let req = r.into_inner();
    let (env_name, name) = split_name(&req.tag, "")?;
    let env = s.store.environment(env_name).await.or_status()?;
    s.store.delete_image_name(&env.id, name).await.or_status()?;
    Ok(Response::new(()))
}

// --- build logs by layer ------------------------------------------------------------------------

/// The image's build chain, oldest layer first: each layer's build times and where its log is
/// (`Image.logs`, `modal image logs`). A layer's log is addressed by its image id, which
/// `AppFetchLogs`/`AppCountLogs` accept in place of an app id.
pub(crate) async fn build_chain_get(s: &ModalService, r: Request<api::ImageBuildChainGetRequest>) -> Rpc<api::ImageBuildChainGetResponse> {
    let req = r.into_inner();
    check_id(&req.image_id, "im", "Image")?;
    let mut chain: Vec<String> = Vec::new();
    let mut pending = vec![(req.image_id.clone(), false)];
    // Depth-first, parents before children; an image shared by two parents appears once.
    while let Some((id, expanded)) = pending.pop() {
        if chain.contains(&id) {
            continue;
        }
        if expanded {
            chain.push(id);
            continue;
        }
        let record = match s.store.image(&id).await {
            Ok(r) => r,
            Err(e) if id == req.image_id => return Err(crate::status::to_status(e)),
            Err(_) => continue,
        };
        pending.push((id, true));
        let def = api::Image::decode(record.definition.as_slice()).unwrap_or_default();
        for base in def.base_images.iter().rev() {
            pending.push((base.image_id.clone(), false));
        }
    }
    let mut build_steps = Vec::new();
    for id in chain {
        let times = s.store.image_build_times(&id).await.or_status()?;
        let Some(started) = times.started_at else { continue };
        let finished = times.finished_at.unwrap_or_else(ferry_store::now);
        build_steps.push(api::ImageBuildStep {
            started_at: Some(timestamp(started)),
            // The end is exclusive in a log query: one second more keeps the last line.
            finished_at: Some(timestamp(finished + 1.0)),
            builder_app_id: id.clone(),
            builder_task_id: id.clone(),
            image_id: id,
        });
    }
    Ok(Response::new(api::ImageBuildChainGetResponse { build_steps }))
}

fn timestamp(t: f64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.floor() as i64, nanos: ((t - t.floor()) * 1e9) as i32 }
}

fn seconds(t: Option<prost_types::Timestamp>) -> Option<f64> {
    t.map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
}

/// Reads a kept build log line by line, calling `f(fd, timestamp, text)` for each line in
/// [since, until); never holds the log in memory.
async fn scan_log(path: &std::path::Path, since: f64, until: f64, mut f: impl FnMut(i32, f64, &str) -> bool) {
    use tokio::io::AsyncBufReadExt;
    let Ok(file) = tokio::fs::File::open(path).await else { return };
    let mut lines = tokio::io::BufReader::new(file).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.splitn(3, ' ');
        let fd = parts.next().and_then(|f| f.parse::<i32>().ok()).unwrap_or(1);
        let t = parts.next().and_then(|t| t.parse::<f64>().ok()).unwrap_or_default();
        if t < since || t >= until {
            continue;
        }
        if !f(fd, t, parts.next().unwrap_or_default()) {
            return;
        }
    }
}

/// `AppCountLogs` for an image's build log: line counts per bucket, by stream.
pub(crate) async fn count_build_logs(s: &ModalService, req: api::AppCountLogsRequest) -> Rpc<api::AppCountLogsResponse> {
    check_id(&req.app_id, "im", "Image")?;
    s.store.image(&req.app_id).await.or_status()?;
    let since = seconds(req.since).unwrap_or(0.0);
    let until = seconds(req.until).unwrap_or(f64::MAX);
    let bucket = req.bucket_secs.max(1) as f64;
    let mut buckets: std::collections::BTreeMap<i64, api::app_count_logs_response::LogBucket> = Default::default();
    scan_log(&log_path(s, &req.app_id), since, until, |fd, t, text| {
        if req.search_text.is_empty() || text.contains(&req.search_text) {
            let start = (t / bucket).floor() as i64 * bucket as i64;
            let b = buckets.entry(start).or_insert_with(|| api::app_count_logs_response::LogBucket {
                bucket_start_at: Some(timestamp(start as f64)),
                ..Default::default()
            });
            match fd {
                1 => b.stdout_logs += 1,
                2 => b.stderr_logs += 1,
                _ => b.system_logs += 1,
            }
        }
        true
    })
    .await;
    Ok(Response::new(api::AppCountLogsResponse { app_id: req.app_id, buckets: buckets.into_values().collect() }))
}

/// `AppFetchLogs` for an image's build log: the lines in the window, at most `limit`.
pub(crate) async fn fetch_build_logs(s: &ModalService, req: api::AppFetchLogsRequest) -> Rpc<api::AppFetchLogsResponse> {
    check_id(&req.app_id, "im", "Image")?;
    s.store.image(&req.app_id).await.or_status()?;
    let since = seconds(req.since).unwrap_or(0.0);
    let until = seconds(req.until).unwrap_or(f64::MAX);
    let limit = if req.limit == 0 { 1000 } else { req.limit.min(20_000) } as usize;
    let mut items = Vec::new();
    scan_log(&log_path(s, &req.app_id), since, until, |fd, t, text| {
        if req.search_text.is_empty() || text.contains(&req.search_text) {
            items.push(api::TaskLogs { data: format!("{text}\n"), timestamp: t, file_descriptor: fd, ..Default::default() });
        }
        items.len() < limit
    })
    .await;
    let batches = if items.is_empty() {
        Vec::new()
    } else {
        vec![api::TaskLogsBatch { task_id: req.app_id.clone(), image_id: req.app_id.clone(), items, ..Default::default() }]
    };
    Ok(Response::new(api::AppFetchLogsResponse { batches }))
}
