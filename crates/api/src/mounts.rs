//! Mount RPCs: the client uploads file contents by SHA-256, then names the files of a mount.

use ferry_proto::api;
use ferry_store::MountEntry;
use tonic::{Request, Response, Status};

use crate::service::{ModalService, Rpc};
use crate::status::{invalid, OrStatus};

/// The name of the global mount that carries the modal client itself. Ferry does not need its
/// files: the worker mounts the pinned client from its own runtime directory.
pub(crate) fn is_client_mount(name: &str) -> bool {
    name.starts_with("modal-client-mount-")
}

const MAX_INLINE_FILE: usize = 4 * 1024 * 1024;

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::MountGetOrCreateRequest>) -> Rpc<api::MountGetOrCreateResponse> {
    let req = r.into_inner();
    let mut entries = Vec::with_capacity(req.files.len());
    for f in &req.files {
        if !f.filename.starts_with('/') || f.filename.contains("/../") || f.filename.ends_with("/..") {
            return Err(invalid(format!("mount file path '{}' must be absolute and may not contain '..'", f.filename)));
        }
        s.store.file_path(&f.sha256_hex).or_status()?;
        entries.push(MountEntry { path: f.filename.clone(), sha256: f.sha256_hex.clone(), mode: f.mode });
    }
    let shas: Vec<String> = entries.iter().map(|e| e.sha256.clone()).collect();
    let missing = s.store.missing_files(&shas).or_status()?;
    if !missing.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{} file(s) of the mount were not uploaded (first: {}); upload them with MountPutFile first",
            missing.len(),
            missing[0]
        )));
    }
    let creation = api::ObjectCreationType::try_from(req.object_creation_type).unwrap_or_default();
    let env_id = if req.namespace == api::DeploymentNamespace::Global as i32 {
        None
    } else {
        Some(s.store.environment(&req.environment_name).await.or_status()?.id)
    };
    let mount = if req.deployment_name.is_empty() {
        let app_id = (!req.app_id.is_empty()).then_some(req.app_id.as_str());
        s.store.create_mount(None, req.namespace, env_id.as_deref(), app_id, &entries).await.or_status()?
    } else {
        let existing = s.store.mount_by_name(&req.deployment_name, req.namespace, env_id.as_deref()).await.or_status()?;
        match (existing, creation) {
            (Some(m), api::ObjectCreationType::CreateFailIfExists) => {
                return Err(Status::already_exists(format!("Mount '{}' already exists", m.name.unwrap_or_default())))
            }
            (Some(m), _) => m,
            // `add_python=` asks for a global mount of a standalone Python build, which comes
            // from outside any package registry.
            (None, api::ObjectCreationType::Unspecified) if req.deployment_name.starts_with("python-build-standalone.") => {
                return Err(Status::unimplemented(format!(
                    "Ferry cannot provide `add_python=` ({}) yet: use an image that has Python already (e.g. `Image.from_registry(...)` of a Python image, or `Image.debian_slim()`)",
                    req.deployment_name
                )))
            }
            (None, api::ObjectCreationType::Unspecified) if !is_client_mount(&req.deployment_name) => {
                return Err(Status::not_found(format!("Mount '{}' not found", req.deployment_name)))
            }
            (None, _) => {
                match s.store.create_mount(Some(&req.deployment_name), req.namespace, env_id.as_deref(), None, &entries).await {
                    Err(ferry_store::StoreError::AlreadyExists(_)) => s
                        .store
                        .mount_by_name(&req.deployment_name, req.namespace, env_id.as_deref())
                        .await
                        .or_status()?
                        .ok_or_else(|| Status::internal("mount vanished while being created"))?,
                    other => other.or_status()?,
                }
            }
        }
    };
    let checksum = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for e in &mount.files {
            h.update(e.path.as_bytes());
            h.update([0]);
            h.update(e.sha256.as_bytes());
        }
        hex::encode(h.finalize())
    };
    Ok(Response::new(api::MountGetOrCreateResponse {
        mount_id: mount.id,
        handle_metadata: Some(api::MountHandleMetadata { content_checksum_sha256_hex: checksum }),
    }))
}

pub(crate) async fn check_existence(
    s: &ModalService,
    r: Request<api::MountBatchedCheckExistenceRequest>,
) -> Rpc<api::MountBatchedCheckExistenceResponse> {
    let req = r.into_inner();
    let missing = s.store.missing_files(&req.sha256_hex_hashes).or_status()?;
    Ok(Response::new(api::MountBatchedCheckExistenceResponse { missing_sha256_hex_hashes: missing, ..Default::default() }))
}

pub(crate) async fn put_file(s: &ModalService, r: Request<api::MountPutFileRequest>) -> Rpc<api::MountPutFileResponse> {
    use api::mount_put_file_request::DataOneof;
    let req = r.into_inner();
    match req.data_oneof {
        Some(DataOneof::Data(data)) => {
            if data.len() > MAX_INLINE_FILE {
                return Err(invalid("inline file data is limited to 4 MiB; larger files go through a blob"));
            }
            s.store.put_file(&req.sha256_hex, &data).await.or_status()?;
        }
        Some(DataOneof::DataBlobId(blob_id)) => {
            // Files of 4 MiB or more were uploaded as a blob first; the store checks the hash.
            let data = crate::blobs::read(s, &blob_id).await?;
            s.store.put_file(&req.sha256_hex, &data).await.or_status()?;
        }
        None => {
            // A bare existence check: answer whether the content is already here.
            let exists = s.store.missing_files(&[req.sha256_hex.clone()]).or_status()?.is_empty();
            return Ok(Response::new(api::MountPutFileResponse { exists, checked_at: None }));
        }
    }
    Ok(Response::new(api::MountPutFileResponse { exists: true, checked_at: None }))
}
