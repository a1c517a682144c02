//! Secret RPCs. Values are sealed at rest by the store; listings carry names and keys only.

use std::collections::BTreeMap;

use ferry_proto::api;
use ferry_store::{ObjectKind, SecretInfo};
use tonic::{Request, Response};

use crate::objects::{creation_info, creation_mode, paging};
use crate::service::{creator, ModalService, Rpc};
use crate::status::{check_id, OrStatus};

fn metadata(s: &SecretInfo) -> api::SecretMetadata {
    api::SecretMetadata {
        name: s.object.name.clone().unwrap_or_default(),
        creation_info: creation_info(&s.object),
        keys: s.keys.clone(),
        environment_name: s.object.environment_name.clone(),
        last_used_at: s.last_used_at.unwrap_or(0.0),
        template_type: String::new(),
    }
}

fn id(secret_id: &str) -> Result<&str, tonic::Status> {
    check_id(secret_id, "st", "Secret").map(|_| secret_id)
}

pub(crate) async fn get_or_create(s: &ModalService, r: Request<api::SecretGetOrCreateRequest>) -> Rpc<api::SecretGetOrCreateResponse> {
    let by = creator(&r);
    let req = r.into_inner();
    let mode = creation_mode(req.object_creation_type, &req.app_id)?;
    let env: BTreeMap<String, String> = req.env_dict.into_iter().collect();
    let info = s
        .store
        .secret_get_or_create(&req.environment_name, &req.deployment_name, mode, &env, &req.required_keys, &by)
        .await
        .or_status()?;
    Ok(Response::new(api::SecretGetOrCreateResponse { secret_id: info.object.id.clone(), metadata: Some(metadata(&info)) }))
}

pub(crate) async fn get_info(s: &ModalService, r: Request<api::SecretGetInfoRequest>) -> Rpc<api::SecretGetInfoResponse> {
    let info = s.store.secret_info(id(&r.get_ref().secret_id)?).await.or_status()?;
    Ok(Response::new(api::SecretGetInfoResponse { metadata: Some(metadata(&info)) }))
}

pub(crate) async fn list(s: &ModalService, r: Request<api::SecretListRequest>) -> Rpc<api::SecretListResponse> {
    let req = r.into_inner();
    let (before, limit) = paging(req.pagination);
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let objs = s.store.list_objects(ObjectKind::Secret, &req.environment_name, before, limit).await.or_status()?;
    let mut items = Vec::with_capacity(objs.len());
    for o in &objs {
        let info = s.store.secret_info(&o.id).await.or_status()?;
        items.push(api::SecretListItem {
            label: o.name.clone().unwrap_or_default(),
            created_at: o.created_at,
            last_used_at: info.last_used_at.unwrap_or(0.0),
            environment_name: env.name.clone(),
            secret_id: o.id.clone(),
            metadata: Some(metadata(&info)),
        });
    }
    Ok(Response::new(api::SecretListResponse { items, environment_name: env.name }))
}

pub(crate) async fn delete(s: &ModalService, r: Request<api::SecretDeleteRequest>) -> Rpc<()> {
    s.store.delete_object(ObjectKind::Secret, id(&r.get_ref().secret_id)?).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn update(s: &ModalService, r: Request<api::SecretUpdateRequest>) -> Rpc<()> {
    let req = r.into_inner();
    let updates: Vec<(String, Option<String>)> = req.updates.into_iter().map(|u| (u.key, u.value)).collect();
    s.store.secret_update(id(&req.secret_id)?, &updates).await.or_status()?;
    Ok(Response::new(()))
}
