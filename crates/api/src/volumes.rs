//! Volume RPCs (filesystem version 2) and the HTTP endpoints for their blocks. Decodes each
//! request, calls `ferry-volumes`, encodes the answer; the semantics live in that crate.
//!
//! Block URLs are served by the blob listener (`blobs.rs`) and signed the same way:
//! `PUT /volumes/blocks/<sha256 hex>` stores a block whose bytes must hash to its name, and
//! `GET /volumes/blocks/<hex>?off=&len=` streams part of one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ferry_proto::api;
use ferry_store::{EntryKind, NamedObject, ObjectKind, Principal, VolumeEntry};
use ferry_volumes::{BlockError, Hash, Listing, NewFile, VolumeError};
use futures::StreamExt;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::blobs::{BlobStore, HttpError};
use crate::objects::{creation_info, creation_mode, paging};
use crate::service::{creator, principal, ModalService, Rpc, RpcStream};
use crate::status::{check_id, to_status, OrStatus};

fn to_grpc(e: VolumeError) -> Status {
    volume_status(e, "volume")
}

/// A volume-crate error as a gRPC status; `what` names the storage in messages and logs
/// ("volume", "network file system").
pub(crate) fn volume_status(e: VolumeError, what: &str) -> Status {
    match e {
        VolumeError::Invalid(m) => Status::invalid_argument(m),
        VolumeError::NotFound(m) => Status::not_found(m),
        VolumeError::AlreadyExists(m) => Status::already_exists(m),
        VolumeError::Conflict(m) => Status::failed_precondition(m),
        VolumeError::DiskFull(m) => Status::resource_exhausted(m),
        VolumeError::Unavailable(m) => Status::unavailable(m),
        VolumeError::Io(m) => {
            tracing::error!("{what} failure: {m}");
            Status::internal(format!("Ferry's {what} storage failed: {m}"))
        }
        VolumeError::Store(e) => to_status(e),
    }
}

trait OrGrpc<T> {
    fn or_grpc(self) -> Result<T, Status>;
}

impl<T> OrGrpc<T> for Result<T, VolumeError> {
    fn or_grpc(self) -> Result<T, Status> {
        self.map_err(to_grpc)
    }
}

fn id(volume_id: &str) -> Result<&str, Status> {
    check_id(volume_id, "vo", "Volume").map(|_| volume_id)
}

fn metadata(o: &NamedObject) -> api::VolumeMetadata {
    api::VolumeMetadata {
        version: api::VolumeFsVersion::V2 as i32,
        name: o.name.clone().unwrap_or_default(),
        creation_info: creation_info(o),
    }
}

/// The volume, checked to exist.
async fn volume(s: &ModalService, volume_id: &str) -> Result<NamedObject, Status> {
    s.store.object(ObjectKind::Volume, id(volume_id)?).await.or_status()
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::VolumeGetOrCreateRequest>) -> Rpc<api::VolumeGetOrCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    if req.version == api::VolumeFsVersion::V1 as i32 {
        return Err(Status::unimplemented(
            "Ferry serves Volumes of filesystem version 2 only; leave out version= or pass version=2",
        ));
    }
    let mode = creation_mode(req.object_creation_type, &req.app_id)?;
    let (obj, _) = s
        .store
        .get_or_create_object(ObjectKind::Volume, &req.environment_name, &req.deployment_name, mode, &by)
        .await
        .or_status()?;
    s.volumes.init(&obj.id).await.or_grpc()?;
    Ok(GrpcResponse::new(api::VolumeGetOrCreateResponse {
        volume_id: obj.id.clone(),
        version: api::VolumeFsVersion::V2 as i32,
        metadata: Some(metadata(&obj)),
    }))
}

pub(crate) async fn get_by_id(s: &ModalService, r: Request<api::VolumeGetByIdRequest>) -> Rpc<api::VolumeGetByIdResponse> {
    let obj = volume(s, &r.get_ref().volume_id).await?;
    // Records the tree should a crash have left only the identity (as `get_or_create` does).
    s.volumes.init(&obj.id).await.or_grpc()?;
    Ok(GrpcResponse::new(api::VolumeGetByIdResponse { volume_id: obj.id.clone(), metadata: Some(metadata(&obj)) }))
}

pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::VolumeHeartbeatRequest>) -> Rpc<()> {
    s.store.heartbeat_object(ObjectKind::Volume, id(&r.get_ref().volume_id)?).await.or_status()?;
    Ok(GrpcResponse::new(()))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::VolumeListRequest>) -> Rpc<api::VolumeListResponse> {
    let req = r.into_inner();
    let (before, limit) = paging(req.pagination);
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let objs = s.store.list_objects(ObjectKind::Volume, &req.environment_name, before, limit).await.or_status()?;
    let items = objs
        .iter()
        .map(|o| api::VolumeListItem {
            label: o.name.clone().unwrap_or_default(),
            volume_id: o.id.clone(),
            created_at: o.created_at,
            metadata: Some(metadata(o)),
        })
        .collect();
    Ok(GrpcResponse::new(api::VolumeListResponse { items, environment_name: env.name }))
}

/// Unreferenced blocks are kept this long, so an upload that names them soon after finds them.
const GARBAGE_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Sweeps what deletions and removals left unreferenced, in the background.
fn collect_garbage(s: &ModalService) {
    let volumes = s.volumes.clone();
    tokio::spawn(async move {
        match volumes.collect_garbage(GARBAGE_MIN_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} unreferenced volume blocks and files"),
            Err(e) => tracing::warn!("volume garbage collection failed: {e}"),
        }
    });
}

pub(crate) async fn delete(s: &ModalService, r: Request<api::VolumeDeleteRequest>) -> Rpc<()> {
    s.store.delete_object(ObjectKind::Volume, id(&r.get_ref().volume_id)?).await.or_status()?;
    collect_garbage(s);
    Ok(GrpcResponse::new(()))
}

pub(crate) async fn rename(s: &ModalService, r: Request<api::VolumeRenameRequest>) -> Rpc<()> {
    let req = r.get_ref();
    s.store.rename_object(ObjectKind::Volume, id(&req.volume_id)?, &req.name).await.or_status()?;
    Ok(GrpcResponse::new(()))
}

fn hash(bytes: &[u8]) -> Result<Hash, Status> {
    bytes.try_into().map_err(|_| Status::invalid_argument(format!("a block's contents_sha256 has {} bytes, not 32", bytes.len())))
}

pub(crate) async fn put_files(s: &ModalService, r: Request<api::VolumePutFiles2Request>) -> Rpc<api::VolumePutFiles2Response> {
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    let mut files = Vec::with_capacity(req.files.len());
    for f in req.files {
        let blocks = f.blocks.iter().map(|b| hash(&b.contents_sha256)).collect::<Result<_, _>>()?;
        files.push(NewFile { path: f.path, mode: f.mode, size: f.size, blocks });
    }
    let missing = s.volumes.put_files(&req.volume_id, files, !req.disallow_overwrite_existing_files).await.or_grpc()?;
    let blobs = crate::blobs::store_of(s)?;
    let missing_blocks = missing
        .into_iter()
        .map(|m| api::volume_put_files2_response::MissingBlock {
            file_index: m.file_index as u64,
            block_index: m.block_index as u64,
            put_url: put_url(&blobs, &m.hash),
        })
        .collect();
    Ok(GrpcResponse::new(api::VolumePutFiles2Response { missing_blocks }))
}

pub(crate) async fn get_file(s: &ModalService, r: Request<api::VolumeGetFile2Request>) -> Rpc<api::VolumeGetFile2Response> {
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    let range = s.volumes.read_range(&req.volume_id, &req.path, req.start, req.len).await.or_grpc()?;
    let blobs = crate::blobs::store_of(s)?;
    let pad = !req.client_pads_blocks;
    let get_urls = range.pieces.iter().map(|(h, off, len)| get_url(&blobs, h, *off, *len, pad)).collect();
    Ok(GrpcResponse::new(api::VolumeGetFile2Response { get_urls, size: range.size, start: range.start, len: range.len }))
}

fn file_entry(e: VolumeEntry) -> api::FileEntry {
    let kind = match e.kind {
        EntryKind::File => api::file_entry::FileType::File,
        EntryKind::Directory => api::file_entry::FileType::Directory,
        EntryKind::Symlink => api::file_entry::FileType::Symlink,
    };
    api::FileEntry { path: e.path, r#type: kind as i32, mtime: e.mtime.max(0) as u64, size: e.size }
}

/// Streams a listing in pages, so a large volume never sits in memory whole.
pub(crate) async fn list_files(s: &ModalService, r: Request<api::VolumeListFiles2Request>) -> RpcStream<api::VolumeListFiles2Response> {
    const PAGE: i64 = 1000;
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    let max = req.max_entries.filter(|m| *m > 0).map_or(u64::MAX, |m| m as u64);
    let listing = s.volumes.listing(&req.volume_id, &req.path).await.or_grpc()?;
    let dir = match listing {
        Listing::Single(e) => {
            let batch = api::VolumeListFiles2Response { entries: vec![file_entry(e)] };
            return Ok(GrpcResponse::new(Box::pin(futures::stream::iter([Ok::<_, Status>(batch)]))));
        }
        Listing::Directory(dir) => dir,
    };
    let volumes = s.volumes.clone();
    let (volume_id, recursive) = (req.volume_id, req.recursive);
    let pages = futures::stream::unfold(Some((String::new(), 0u64)), move |state| {
        let (volumes, volume_id, dir) = (volumes.clone(), volume_id.clone(), dir.clone());
        async move {
            let (after, sent) = state?;
            if sent >= max {
                return None;
            }
            let limit = PAGE.min((max - sent).min(i64::MAX as u64) as i64);
            match volumes.list_page(&volume_id, &dir, recursive, &after, limit).await {
                Err(e) => Some((Err(to_grpc(e)), None)),
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = (page.len() as i64 == limit).then(|| (page.last().expect("not empty").path.clone(), sent + page.len() as u64));
                    Some((Ok(api::VolumeListFiles2Response { entries: page.into_iter().map(file_entry).collect() }), next))
                }
            }
        }
    });
    Ok(GrpcResponse::new(Box::pin(pages)))
}

pub(crate) async fn remove_file(s: &ModalService, r: Request<api::VolumeRemoveFile2Request>) -> Rpc<()> {
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    s.volumes.remove(&req.volume_id, &req.path, req.recursive).await.or_grpc()?;
    collect_garbage(s);
    Ok(GrpcResponse::new(()))
}

pub(crate) async fn copy_files(s: &ModalService, r: Request<api::VolumeCopyFiles2Request>) -> Rpc<()> {
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    s.volumes.copy(&req.volume_id, &req.src_paths, &req.dst_path, req.recursive).await.or_grpc()?;
    Ok(GrpcResponse::new(()))
}

/// From a container: turns the task's writes to its view of the volume into a new committed
/// tree and moves the view onto it. From outside a container there is nothing to commit:
/// puts, copies and removals are committed when they return.
pub(crate) async fn commit(s: &ModalService, r: Request<api::VolumeCommitRequest>) -> Rpc<api::VolumeCommitResponse> {
    let who = principal(&r);
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    let skip_reload = match who {
        Principal::Task { task_id, .. } => s.volumes.commit_task(&task_id, &req.volume_id).await.or_grpc()?,
        Principal::User { .. } => true,
    };
    Ok(GrpcResponse::new(api::VolumeCommitResponse { skip_reload }))
}

/// From a container: moves the task's view onto the latest committed tree, keeping its own
/// uncommitted writes on top. Outside a container there is no view to move.
pub(crate) async fn reload(s: &ModalService, r: Request<api::VolumeReloadRequest>) -> Rpc<()> {
    let who = principal(&r);
    let req = r.into_inner();
    volume(s, &req.volume_id).await?;
    if let Principal::Task { task_id, .. } = who {
        s.volumes.reload_task(&task_id, &req.volume_id).await.or_grpc()?;
    }
    Ok(GrpcResponse::new(()))
}

// --- block URLs -------------------------------------------------------------------------

fn put_url(blobs: &BlobStore, hash: &Hash) -> String {
    let hex = hex::encode(hash);
    let token = blobs.token(&format!("vb-{hex}"), "PUT");
    format!("{}/volumes/blocks/{hex}?token={token}", blobs.base_url)
}

fn get_url(blobs: &BlobStore, hash: &Hash, off: u64, len: u64, pad: bool) -> String {
    let hex = hex::encode(hash);
    let token = blobs.token(&format!("vb-{hex}-{off}-{len}-{}", pad as u8), "GET");
    format!("{}/volumes/blocks/{hex}?off={off}&len={len}&pad={}&token={token}", blobs.base_url, pad as u8)
}

fn parse_hash(hex_name: &str) -> Result<Hash, HttpError> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(hex_name, &mut h).map_err(|_| HttpError(StatusCode::NOT_FOUND, format!("no block {hex_name}")))?;
    Ok(h)
}

fn query_u64(uri: &Uri, key: &str) -> Result<u64, HttpError> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| HttpError(StatusCode::BAD_REQUEST, format!("the block URL lacks {key}=")))
}

fn block_error(e: BlockError) -> HttpError {
    match e {
        BlockError::HashMismatch(_) | BlockError::TooLarge => HttpError(StatusCode::BAD_REQUEST, e.to_string()),
        BlockError::DiskFull(_) => HttpError(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        BlockError::Unavailable(_) => HttpError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        BlockError::Io(_) => {
            tracing::error!("volume block: {e}");
            HttpError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `PUT /volumes/blocks/<hex>?token=…`: streams the block to disk; stores it only if its bytes
/// hash to its name. The answer's body is what the client hands back in `put_response`.
pub(crate) async fn put_block(State(blobs): State<Arc<BlobStore>>, UrlPath(name): UrlPath<String>, uri: Uri, body: Body) -> Result<Response, HttpError> {
    let hash = parse_hash(&name)?;
    blobs.check_token(&format!("vb-{name}"), "PUT", &uri)?;
    let stream = body.into_data_stream().map(|c| c.map_err(std::io::Error::other)).boxed();
    blobs.volume_blocks.put(&hash, stream).await.map_err(block_error)?;
    Ok(name.into_response())
}

/// `GET /volumes/blocks/<hex>?off=&len=&pad=&token=…`: streams `len` bytes of the block from
/// `off`. Trailing zeros are not stored; with `pad=1` they are sent, else the client adds them.
pub(crate) async fn get_block(State(blobs): State<Arc<BlobStore>>, UrlPath(name): UrlPath<String>, uri: Uri) -> Result<Response, HttpError> {
    let hash = parse_hash(&name)?;
    let (off, len, pad) = (query_u64(&uri, "off")?, query_u64(&uri, "len")?, query_u64(&uri, "pad")? == 1);
    blobs.check_token(&format!("vb-{name}-{off}-{len}-{}", pad as u8), "GET", &uri)?;
    let stored = blobs
        .volume_blocks
        .len(&hash)
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read block: {e}")))?
        .ok_or_else(|| HttpError(StatusCode::NOT_FOUND, format!("no block {name}")))?;
    let available = stored.saturating_sub(off).min(len);
    let data = blobs
        .volume_blocks
        .read(&hash, off, available)
        .await
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read block: {e}")))?;
    let (body, length) = if pad && available < len {
        let zeros = len - available;
        let padding = futures::stream::iter((0..zeros.div_ceil(1 << 20)).map(move |i| {
            let n = (zeros - i * (1 << 20)).min(1 << 20);
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; n as usize]))
        }));
        (Body::from_stream(data.chain(padding)), len)
    } else {
        (Body::from_stream(data), available)
    };
    Ok(([(header::CONTENT_LENGTH, length.to_string()), (header::CONTENT_TYPE, "application/octet-stream".to_string())], body).into_response())
}

// --- containers ------------------------------------------------------------------------

/// The views of the function's volumes (`Function.volume_mounts`) for a task about to start.
/// The function's network file systems (`shared_volume_mounts`) come along, bound as they are.
pub(crate) async fn task_mounts(s: &ModalService, task_id: &str, def: &api::Function) -> Result<Vec<ferry_runtime::BindMount>, String> {
    let shared = crate::nfs::binds(s, &def.shared_volume_mounts).await?;
    if def.volume_mounts.is_empty() {
        return Ok(shared);
    }
    let mut binds = volume_binds(s, task_id, &def.volume_mounts).await.map_err(|e| format!("cannot mount the function's volumes: {e}"))?;
    binds.extend(shared);
    Ok(binds)
}

/// Makes `task_id`'s views of `mounts` (`ferry-volumes`) and returns them as binds for its
/// container (functions and image build steps).
pub(crate) async fn volume_binds(s: &ModalService, task_id: &str, mounts: &[api::VolumeMount]) -> Result<Vec<ferry_runtime::BindMount>, VolumeError> {
    let requests: Vec<ferry_volumes::MountRequest> = mounts
        .iter()
        .map(|m| ferry_volumes::MountRequest {
            volume_id: m.volume_id.clone(),
            target: m.mount_path.clone(),
            read_only: m.read_only,
            sub_path: m.sub_path.clone(),
        })
        .collect();
    let binds = s.volumes.prepare_task(task_id, &requests).await?;
    Ok(binds
        .into_iter()
        .map(|b| if b.read_only { ferry_runtime::BindMount::read_only(b.source, b.target) } else { ferry_runtime::BindMount::read_write(b.source, b.target) })
        .collect())
}
