//! NetworkFileSystem RPCs (`SharedVolume*` on the wire). Identities are `objects` of kind
//! `nfs`; the files are a host directory per object (`ferry_volumes::nfs`), bound into the
//! containers that mount it. Decodes each request, calls that module, encodes the answer.

use ferry_proto::api;
use ferry_store::{NamedObject, ObjectKind};
use ferry_volumes::nfs::{NfsEntry, NfsKind, SharedDirs};
use ferry_volumes::VolumeError;
use tonic::{Request, Response, Status};

use crate::objects::creation_mode;
use crate::service::{creator, ModalService, Rpc, RpcStream};
use crate::status::{check_id, invalid, OrStatus};

/// Contents up to this size travel inline; larger ones by blob, as the client sends them.
const INLINE_LIMIT: u64 = 4 * 1024 * 1024;

fn to_grpc(e: VolumeError) -> Status {
    crate::volumes::volume_status(e, "network file system")
}

fn dirs(s: &ModalService) -> Result<SharedDirs, Status> {
    SharedDirs::open(s.store.data_dir()).map_err(to_grpc)
}

/// Runs a blocking directory operation off the async threads.
async fn blocking<T: Send + 'static>(
    s: &ModalService,
    f: impl FnOnce(SharedDirs) -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, Status> {
    let dirs = dirs(s)?;
    tokio::task::spawn_blocking(move || f(dirs))
        .await
        .map_err(|e| Status::internal(format!("network file system task failed: {e}")))?
        .map_err(to_grpc)
}

/// The network file system, checked to exist.
async fn nfs(s: &ModalService, id: &str) -> Result<NamedObject, Status> {
    check_id(id, "sv", "NetworkFileSystem")?;
    s.store.object(ObjectKind::Nfs, id).await.or_status()
}

/// Removes the directories of network file systems that are gone (deleted or reaped).
async fn sweep(s: &ModalService) {
    let Ok(live) = s.store.object_ids(ObjectKind::Nfs).await else { return };
    let _ = blocking(s, move |d| Ok(d.sweep(&live))).await;
}

/// The host binds of a function's or sandbox's network file systems.
pub(crate) async fn binds(s: &ModalService, mounts: &[api::SharedVolumeMount]) -> Result<Vec<ferry_runtime::BindMount>, String> {
    let mut out = Vec::new();
    for m in mounts {
        s.store
            .object(ObjectKind::Nfs, &m.shared_volume_id)
            .await
            .map_err(|e| format!("cannot mount network file system {}: {e}", m.shared_volume_id))?;
        let source = dirs(s).and_then(|d| d.dir(&m.shared_volume_id).map_err(to_grpc)).map_err(|e| e.message().to_string())?;
        out.push(ferry_runtime::BindMount::read_write(source, m.mount_path.clone()));
    }
    Ok(out)
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::SharedVolumeGetOrCreateRequest>) -> Rpc<api::SharedVolumeGetOrCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    let mode = creation_mode(req.object_creation_type, &req.app_id)?;
    let (obj, created) =
        s.store.get_or_create_object(ObjectKind::Nfs, &req.environment_name, &req.deployment_name, mode, &by).await.or_status()?;
    if created {
        sweep(s).await;
    }
    let id = obj.id.clone();
    blocking(s, move |d| d.dir(&id).map(|_| ())).await?;
    Ok(Response::new(api::SharedVolumeGetOrCreateResponse { shared_volume_id: obj.id }))
}

pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::SharedVolumeHeartbeatRequest>) -> Rpc<()> {
    let id = &r.get_ref().shared_volume_id;
    check_id(id, "sv", "NetworkFileSystem")?;
    s.store.heartbeat_object(ObjectKind::Nfs, id).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::SharedVolumeListRequest>) -> Rpc<api::SharedVolumeListResponse> {
    let req = r.into_inner();
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let objs = s.store.list_objects(ObjectKind::Nfs, &req.environment_name, 0.0, 0).await.or_status()?;
    let items = objs
        .into_iter()
        .map(|o| api::SharedVolumeListItem {
            label: o.name.unwrap_or_default(),
            shared_volume_id: o.id,
            created_at: o.created_at,
            cloud_provider: 0,
        })
        .collect();
    Ok(Response::new(api::SharedVolumeListResponse { items, environment_name: env.name }))
}

pub(crate) async fn delete(s: &ModalService, r: Request<api::SharedVolumeDeleteRequest>) -> Rpc<()> {
    let id = r.into_inner().shared_volume_id;
    nfs(s, &id).await?;
    s.store.delete_object(ObjectKind::Nfs, &id).await.or_status()?;
    blocking(s, move |d| d.delete(&id)).await?;
    Ok(Response::new(()))
}

pub(crate) async fn put_file(s: &ModalService, r: Request<api::SharedVolumePutFileRequest>) -> Rpc<api::SharedVolumePutFileResponse> {
    let req = r.into_inner();
    nfs(s, &req.shared_volume_id).await?;
    use api::shared_volume_put_file_request::DataOneof;
    let data = match req.data_oneof {
        Some(DataOneof::DataBlobId(blob_id)) => crate::blobs::read(s, &blob_id).await?,
        Some(DataOneof::Data(data)) => data,
        None => Vec::new(),
    };
    if !req.sha256_hex.is_empty() {
        use sha2::Digest;
        let actual = hex::encode(sha2::Sha256::digest(&data));
        if !actual.eq_ignore_ascii_case(&req.sha256_hex) {
            return Err(invalid(format!("the contents of {} do not hash to the sha256_hex sent", req.path)));
        }
    }
    let (id, path) = (req.shared_volume_id, req.path);
    blocking(s, move |d| d.write(&id, &path, &data)).await?;
    Ok(Response::new(api::SharedVolumePutFileResponse { exists: true }))
}

pub(crate) async fn get_file(s: &ModalService, r: Request<api::SharedVolumeGetFileRequest>) -> Rpc<api::SharedVolumeGetFileResponse> {
    let req = r.into_inner();
    nfs(s, &req.shared_volume_id).await?;
    let (id, path) = (req.shared_volume_id, req.path);
    let (file, size) = blocking(s, move |d| d.open_file(&id, &path)).await?;
    use api::shared_volume_get_file_response::DataOneof;
    let data = if size <= INLINE_LIMIT {
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(size as usize);
            std::io::Read::read_to_end(&mut { file }, &mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| Status::internal(format!("read failed: {e}")))?
        .map_err(|e| Status::internal(format!("cannot read the file: {e}")))?;
        DataOneof::Data(bytes)
    } else {
        DataOneof::DataBlobId(crate::blobs::put_file(s, file).await?)
    };
    Ok(Response::new(api::SharedVolumeGetFileResponse { data_oneof: Some(data) }))
}

fn file_entry(e: NfsEntry) -> api::FileEntry {
    use api::file_entry::FileType;
    let kind = match e.kind {
        NfsKind::File => FileType::File,
        NfsKind::Directory => FileType::Directory,
        NfsKind::Symlink => FileType::Symlink,
        NfsKind::Fifo => FileType::Fifo,
        NfsKind::Socket => FileType::Socket,
        NfsKind::Other => FileType::Unspecified,
    };
    api::FileEntry { path: e.path, r#type: kind as i32, mtime: e.mtime, size: e.size }
}

async fn listing(s: &ModalService, id: String, path: String) -> Result<Vec<api::FileEntry>, Status> {
    nfs(s, &id).await?;
    let entries = blocking(s, move |d| d.list(&id, &path)).await?;
    Ok(entries.into_iter().map(file_entry).collect())
}

pub(crate) async fn list_files(s: &ModalService, r: Request<api::SharedVolumeListFilesRequest>) -> Rpc<api::SharedVolumeListFilesResponse> {
    let req = r.into_inner();
    let entries = listing(s, req.shared_volume_id, req.path).await?;
    Ok(Response::new(api::SharedVolumeListFilesResponse { entries }))
}

pub(crate) async fn list_files_stream(
    s: &ModalService,
    r: Request<api::SharedVolumeListFilesRequest>,
) -> RpcStream<api::SharedVolumeListFilesResponse> {
    const BATCH: usize = 1000;
    let req = r.into_inner();
    let entries = listing(s, req.shared_volume_id, req.path).await?;
    let batches: Vec<Result<_, Status>> =
        entries.chunks(BATCH).map(|c| Ok(api::SharedVolumeListFilesResponse { entries: c.to_vec() })).collect();
    Ok(Response::new(Box::pin(futures::stream::iter(batches))))
}

pub(crate) async fn remove_file(s: &ModalService, r: Request<api::SharedVolumeRemoveFileRequest>) -> Rpc<()> {
    let req = r.into_inner();
    nfs(s, &req.shared_volume_id).await?;
    let (id, path, recursive) = (req.shared_volume_id, req.path, req.recursive);
    blocking(s, move |d| d.remove(&id, &path, recursive)).await?;
    Ok(Response::new(()))
}
