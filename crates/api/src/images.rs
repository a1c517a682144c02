//! Image RPCs: each `ImageGetOrCreate` is one layer, built in the background by the runtime's
//! builder; `ImageJoinStreaming` streams the build's output live and ends with its result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::api;
use ferry_runtime::{ContextFile, ImageBuilder, ImageStore, LayerId, LayerSpec, LogLine};
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

#[derive(Default)]
struct Build {
    logs: Mutex<Vec<api::TaskLogs>>,
    result: Mutex<Option<(api::GenericResult, Option<api::ImageMetadata>)>>,
    changed: Notify,
}

impl Build {
    fn push(&self, line: LogLine) {
        let mut data = line.text;
        data.push('\n');
        self.logs.lock().unwrap().push(api::TaskLogs {
            data,
            file_descriptor: line.stream.fd() as i32,
            timestamp: ferry_store::now(),
            ..Default::default()
        });
        self.changed.notify_waiters();
    }
}

/// The runtime's image store and builder, shared by all requests.
pub(crate) struct ImageService {
    pub(crate) store: ImageStore,
    builder: ImageBuilder,
    builds: Builds,
}

impl ImageService {
    pub(crate) fn open(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let store = ImageStore::open(data_dir)?;
        Ok(ImageService { builder: ImageBuilder::new(store.clone()), store, builds: Builds::default() })
    }
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
    if image.dockerfile_commands.is_empty() {
        return Err(invalid("the image definition has no Dockerfile commands"));
    }
    if image.image_registry_config.as_ref().is_some_and(|c| c.registry_auth_type != 0) || !image.build_function.is_none() {
        return Err(Status::unimplemented(
            "Ferry does not implement images from private registries or build functions yet",
        ));
    }
    crate::gpus::check_gpu_config(s, "Image build", image.gpu_config.as_ref())?;
    let id = image_id(&image, &req.builder_version);
    let (record, _) = s.store.get_or_create_image(&id, &image.encode_to_vec()).await.or_status()?;
    let rebuild = req.force_build || record.status == 2;
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
    start_build(s, &id, image, req.force_build);
    Ok(Response::new(api::ImageGetOrCreateResponse { image_id: id, result: None, metadata: None }))
}

/// Starts the build of `id` unless one is running.
fn start_build(s: &ModalService, id: &str, image: api::Image, force: bool) {
    let build = {
        let mut running = s.images.builds.running.lock().unwrap();
        if let Some(b) = running.get(id) {
            if b.result.lock().unwrap().is_none() {
                return;
            }
        }
        let b = Arc::new(Build::default());
        running.insert(id.to_string(), b.clone());
        b
    };
    let svc = s.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        let outcome = build_layer(&svc, &image, force, &build).await;
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
        *build.result.lock().unwrap() = Some((result, meta));
        build.changed.notify_waiters();
    });
}

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
    if !image.context_mount_id.is_empty() {
        return Err("Ferry does not implement image context mounts (COPY of local directories into images) yet".into());
    }
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
    let options = ferry_runtime::BuildOptions { force, ..Default::default() };
    let built = s.images.builder.build_with(&spec, options, &sink).await;
    drop(sink);
    let _ = forward.await;
    built.map(|b| b.id.to_string()).map_err(|e| e.to_string())
}

/// The layer of a parent image, waiting for its build when it is still running.
pub(crate) async fn wait_for_layer(s: &ModalService, image_id: &str) -> Result<LayerId, String> {
    loop {
        let record = s.store.image(image_id).await.map_err(|e| e.to_string())?;
        match record.status {
            1 => {
                let layer = record.layer_id.unwrap_or_default();
                return LayerId::parse(&layer).ok_or_else(|| format!("image {image_id} has no valid layer"));
            }
            2 => return Err(format!("parent image {image_id} failed to build: {}", record.error.unwrap_or_default())),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Streams a build's output after `last_entry_id`, then its result.
pub(crate) async fn join_streaming(s: &ModalService, r: Request<api::ImageJoinStreamingRequest>) -> RpcStream<api::ImageJoinStreamingResponse> {
    let req = r.into_inner();
    check_id(&req.image_id, "im", "Image")?;
    let record = s.store.image(&req.image_id).await.or_status()?;
    let mut sent: usize = if req.last_entry_id.is_empty() { 0 } else { req.last_entry_id.parse().unwrap_or(0) };
    let build = s.images.builds.running.lock().unwrap().get(&req.image_id).cloned();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let svc = s.clone();
    let timeout = Duration::from_secs_f32(req.timeout.clamp(1.0, 55.0));
    tokio::spawn(async move {
        let Some(build) = build else {
            // Built or failed before this server started: only the outcome is known.
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
            let _ = tx.send(Ok(api::ImageJoinStreamingResponse { result: Some(result), metadata: meta, eof: true, ..Default::default() })).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = build.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Read the result before the logs: every line pushed before the result is then sent.
            let result = build.result.lock().unwrap().clone();
            let (batch, total) = {
                let logs = build.logs.lock().unwrap();
                (logs.get(sent.min(logs.len())..).map(|l| l.to_vec()).unwrap_or_default(), logs.len())
            };
            if !batch.is_empty() {
                sent = total;
                let msg = api::ImageJoinStreamingResponse { task_logs: batch, entry_id: sent.to_string(), ..Default::default() };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            if let Some((result, meta)) = result {
                let _ = tx
                    .send(Ok(api::ImageJoinStreamingResponse {
                        result: Some(result),
                        metadata: meta,
                        entry_id: sent.to_string(),
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
