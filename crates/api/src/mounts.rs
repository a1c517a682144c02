//! Mount RPCs: the client uploads file contents by SHA-256, then names the files of a mount.

use ferry_proto::api;
use ferry_store::MountEntry;
use tonic::{Request, Response, Status};

use crate::blobs::blob_status;
use crate::service::{ModalService, Rpc};
use crate::status::{invalid, OrStatus};

/// The name of the global mount that carries the modal client itself. Ferry does not need its
/// files: the worker mounts the pinned client from its own runtime directory.
pub(crate) fn is_client_mount(name: &str) -> bool {
    name.starts_with("modal-client-mount-")
}

/// The files of `mount_ids` as (file in the data dir, path in the container), the pairs a
/// container binds read-only; the client's own mount is left out (the worker provides it).
pub(crate) async fn container_files(s: &ModalService, mount_ids: &[String]) -> Result<Vec<(std::path::PathBuf, String)>, String> {
    let mut files = Vec::new();
    for mount_id in mount_ids {
        let mount = s.store.mount(mount_id).await.map_err(|e| format!("mount {mount_id}: {e}"))?;
        if mount.name.as_deref().is_some_and(is_client_mount) {
            continue;
        }
        for f in mount.files {
            let host = s.files.ensure_local(&f.sha256).await.map_err(|e| format!("cannot fetch mount file {}: {e}", f.path))?;
            files.push((host, f.path));
        }
    }
    Ok(files)
}

const MAX_INLINE_FILE: usize = 4 * 1024 * 1024;

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::MountGetOrCreateRequest>) -> Rpc<api::MountGetOrCreateResponse> {
    let req = r.into_inner();
    let mut entries = Vec::with_capacity(req.files.len());
    for f in &req.files {
        if !f.filename.starts_with('/') || f.filename.contains("/../") || f.filename.ends_with("/..") {
            return Err(invalid(format!("mount file path '{}' must be absolute and may not contain '..'", f.filename)));
        }
        s.files.cache_path(&f.sha256_hex).map_err(|e| blob_status("mount file", e))?;
        entries.push(MountEntry { path: f.filename.clone(), sha256: f.sha256_hex.clone(), mode: f.mode });
    }
    let shas: Vec<String> = entries.iter().map(|e| e.sha256.clone()).collect();
    let missing = s.files.missing(&shas).await.map_err(|e| blob_status("cannot look up mount files", e))?;
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
            // `add_python=` asks for a global mount of a standalone Python build: Ferry makes
            // it from its own Debian base of that series (no package registry carries one).
            (None, api::ObjectCreationType::Unspecified) if req.deployment_name.starts_with(STANDALONE_PREFIX) => {
                standalone_mount(s, &req.deployment_name, req.namespace).await?
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
    let missing = s.files.missing(&req.sha256_hex_hashes).await.map_err(|e| blob_status("cannot look up mount files", e))?;
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
            s.files.put(&req.sha256_hex, data.into()).await.map_err(|e| blob_status("cannot store the mount file", e))?;
        }
        Some(DataOneof::DataBlobId(blob_id)) => {
            // Files of 4 MiB or more were uploaded as a blob first; streamed from there, and
            // stored only if they hash to their name.
            let data = crate::blobs::stream(s, &blob_id).await?;
            s.files.put_stream(&req.sha256_hex, data).await.map_err(|e| blob_status("cannot store the mount file", e))?;
        }
        None => {
            // A bare existence check: answer whether the content is already here.
            let exists = s.files.missing(&[req.sha256_hex.clone()]).await.map_err(|e| blob_status("cannot look up the mount file", e))?.is_empty();
            return Ok(Response::new(api::MountPutFileResponse { exists, checked_at: None }));
        }
    }
    Ok(Response::new(api::MountPutFileResponse { exists: true, checked_at: None }))
}

const STANDALONE_PREFIX: &str = "python-build-standalone.";

/// The mount `python-build-standalone.<release>.<version>-gnu` of `add_python=`: a standalone
/// Python tree (`ferry_runtime::standalone_python`) under `/python/`, stored as a named global
/// mount so later builds find it at once.
async fn standalone_mount(s: &ModalService, name: &str, namespace: i32) -> Result<ferry_store::Mount, Status> {
    let rest = &name[STANDALONE_PREFIX.len()..];
    let (release, version) = rest.split_once('.').ok_or_else(|| invalid(format!("'{name}' is not a standalone Python mount name")))?;
    let version = version
        .strip_suffix("-gnu")
        .ok_or_else(|| Status::unimplemented(format!("Ferry provides `add_python=` for glibc only, not {name}")))?;
    let requested: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    // A series Ferry does not make is stood in for by the nearest one it does, as for
    // `python_version=` (the image's own build log says which Python it got).
    let series = match ferry_runtime::stand_in_python(&requested) {
        Some(stand_in) if !s.config.images.exact_python => {
            tracing::info!(target: "ferry::add_python", "`add_python=\"{requested}\"` gets Python {stand_in}: Ferry does not make {requested}");
            stand_in.to_string()
        }
        _ => requested.clone(),
    };
    let (log, mut lines) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
    let relay = tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            tracing::info!(target: "ferry::add_python", "{}", line.text);
        }
    });
    // Releases from 2024-10 on ship `bin/python`; for older ones the client's step links it.
    let made = ferry_runtime::standalone_python(&s.images.store, &series, release >= "20241008", &log).await;
    drop(log);
    let _ = relay.await;
    let dir = made.map_err(|e| match e {
        ferry_runtime::Error::UnsupportedPython { .. } => Status::failed_precondition(format!("`add_python=\"{requested}\"`: {e}")),
        e => Status::failed_precondition(e.to_string()),
    })?;
    let files = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                let meta = std::fs::symlink_metadata(&p)?;
                if meta.is_dir() {
                    stack.push(p);
                } else if meta.is_file() {
                    use std::os::unix::fs::PermissionsExt;
                    let rel = p.strip_prefix(&dir).expect("inside").to_string_lossy().into_owned();
                    out.push((format!("/python/{rel}"), p, meta.permissions().mode()));
                }
            }
        }
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::internal(format!("reading the standalone Python: {e}")))?;
    let mut entries = Vec::with_capacity(files.len());
    for (path, source, mode) in files {
        let data = tokio::fs::read(&source).await.map_err(|e| Status::internal(format!("reading {}: {e}", source.display())))?;
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&data));
        s.files.put(&sha, data.into()).await.map_err(|e| blob_status("cannot store the mount file", e))?;
        entries.push(MountEntry { path, sha256: sha, mode: Some(mode) });
    }
    match s.store.create_mount(Some(name), namespace, None, None, &entries).await {
        Err(ferry_store::StoreError::AlreadyExists(_)) => {
            s.store.mount_by_name(name, namespace, None).await.or_status()?.ok_or_else(|| Status::internal("mount vanished while being created"))
        }
        other => other.or_status(),
    }
}
