//! Environments and the client's first handshake.

use ferry_proto::api;
use ferry_store::Environment;
use tonic::{Request, Response};

use crate::service::{ModalService, Rpc};
use crate::status::{invalid, OrStatus};
use crate::IMAGE_BUILDER_VERSION;

fn settings(env: &Environment) -> api::EnvironmentSettings {
    api::EnvironmentSettings {
        image_builder_version: IMAGE_BUILDER_VERSION.to_string(),
        webhook_suffix: env.webhook_suffix.clone(),
        ..Default::default()
    }
}

fn list_item(env: &Environment) -> api::EnvironmentListItem {
    api::EnvironmentListItem {
        name: env.name.clone(),
        webhook_suffix: env.webhook_suffix.clone(),
        created_at: env.created_at,
        default: env.is_default,
        environment_id: env.id.clone(),
        image_builder_version: Some(IMAGE_BUILDER_VERSION.to_string()),
        ..Default::default()
    }
}

pub(crate) async fn client_hello(_s: &ModalService, _r: Request<()>) -> Rpc<api::ClientHelloResponse> {
    Ok(Response::new(api::ClientHelloResponse {
        image_builder_version: IMAGE_BUILDER_VERSION.to_string(),
        ..Default::default()
    }))
}

pub(crate) async fn get_or_create(
    s: &ModalService,
    r: Request<api::EnvironmentGetOrCreateRequest>,
) -> Rpc<api::EnvironmentGetOrCreateResponse> {
    let req = r.into_inner();
    let create = req.object_creation_type == api::ObjectCreationType::CreateIfMissing as i32;
    let env = match s.store.environment(&req.deployment_name).await {
        Err(ferry_store::StoreError::NotFound(_)) if create => s.store.create_environment(&req.deployment_name).await,
        other => other,
    }
    .or_status()?;
    Ok(Response::new(api::EnvironmentGetOrCreateResponse {
        environment_id: env.id.clone(),
        metadata: Some(api::EnvironmentMetadata { name: env.name.clone(), settings: Some(settings(&env)), ..Default::default() }),
    }))
}

pub(crate) async fn list(s: &ModalService, _r: Request<()>) -> Rpc<api::EnvironmentListResponse> {
    let envs = s.store.list_environments().await.or_status()?;
    Ok(Response::new(api::EnvironmentListResponse { items: envs.iter().map(list_item).collect() }))
}

pub(crate) async fn create(s: &ModalService, r: Request<api::EnvironmentCreateRequest>) -> Rpc<()> {
    s.store.create_environment(&r.into_inner().name).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn delete(s: &ModalService, r: Request<api::EnvironmentDeleteRequest>) -> Rpc<()> {
    let name = r.into_inner().name;
    if name.is_empty() {
        return Err(invalid("name the environment to delete"));
    }
    s.store.delete_environment(&name).await.or_status()?;
    Ok(Response::new(()))
}

pub(crate) async fn update(s: &ModalService, r: Request<api::EnvironmentUpdateRequest>) -> Rpc<api::EnvironmentListItem> {
    let req = r.into_inner();
    let env = s
        .store
        .rename_environment(&req.current_name, req.name.as_deref(), req.web_suffix.as_deref())
        .await
        .or_status()?;
    Ok(Response::new(list_item(&env)))
}
