//! `@app.cls`: class ids, lookups of deployed classes, and functions bound to parameters.

use ferry_proto::api;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::service::{ModalService, Rpc};
use crate::status::{check_id, OrStatus};

/// Only the class id matters to the client: method metadata travels on the class's service
/// function (`Model.*`), which it looks up next.
pub(crate) async fn create(s: &ModalService, r: Request<api::ClassCreateRequest>) -> Rpc<api::ClassCreateResponse> {
    let req = r.into_inner();
    check_id(&req.app_id, "ap", "App")?;
    s.store.app(&req.app_id).await.or_status()?;
    let class_id = if req.existing_class_id.is_empty() {
        s.store.create_class(&req.app_id, "").await.or_status()?
    } else {
        check_id(&req.existing_class_id, "cs", "Class")?;
        req.existing_class_id
    };
    Ok(Response::new(api::ClassCreateResponse { class_id, handle_metadata: Some(api::ClassHandleMetadata::default()) }))
}

pub(crate) async fn get(s: &ModalService, r: Request<api::ClassGetRequest>) -> Rpc<api::ClassGetResponse> {
    let req = r.into_inner();
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let app = s.store.app_by_name(&env.name, &req.app_name).await.or_status()?.ok_or_else(|| {
        Status::not_found(format!("App '{}' not found in environment '{}'; deploy it with `modal deploy`", req.app_name, env.name))
    })?;
    let class_id = s
        .store
        .class_by_tag(&app.id, &req.object_tag)
        .await
        .or_status()?
        .ok_or_else(|| Status::not_found(format!("Class '{}' not found in app '{}'", req.object_tag, req.app_name)))?;
    Ok(Response::new(api::ClassGetResponse { class_id, handle_metadata: Some(api::ClassHandleMetadata::default()), server_warnings: vec![] }))
}

/// `Model(x=1)` or `with_options(...)`: a variant of the class service function whose
/// containers receive the parameters (and run with the overridden options).
pub(crate) async fn bind_params(s: &ModalService, r: Request<api::FunctionBindParamsRequest>) -> Rpc<api::FunctionBindParamsResponse> {
    let req = r.into_inner();
    check_id(&req.function_id, "fu", "Function")?;
    let base = s.store.function(&req.function_id).await.or_status()?;
    let base = match &base.base_id {
        // Binding a bound function again starts from its base, keeping its parameters
        // unless new ones are given.
        Some(b) => s.store.function(b).await.or_status()?,
        None => base,
    };
    let mut def = crate::functions::stored_definition(&base)?.unwrap_or_default();
    let base_def = def.clone();
    // What makes the variant: the base as stored (a redeploy with new code is a new variant),
    // the options and the parameters, each as the client encoded them (no map fields, so the
    // same request always has the same bytes).
    let mut identity = Vec::new();
    for part in [
        base.definition.as_deref().unwrap_or_default(),
        &req.function_options.as_ref().map(|o| o.encode_to_vec()).unwrap_or_default(),
        &req.serialized_params,
        req.auth_secret.as_bytes(),
    ] {
        identity.extend_from_slice(&(part.len() as u64).to_le_bytes());
        identity.extend_from_slice(part);
    }
    if let Some(o) = req.function_options {
        if o.replace_secret_ids {
            def.secret_ids = o.secret_ids;
        } else {
            def.secret_ids.extend(o.secret_ids);
        }
        def.mount_ids.extend(o.mount_ids);
        if let Some(r) = o.resources {
            def.resources = Some(r);
        }
        if let Some(p) = o.retry_policy {
            def.retry_policy = Some(p);
        }
        if let Some(v) = o.concurrency_limit {
            def.concurrency_limit = v;
        }
        if let Some(v) = o.timeout_secs {
            def.timeout_secs = v;
        }
        if let Some(v) = o.task_idle_timeout_secs {
            def.task_idle_timeout_secs = v;
        }
        if let Some(v) = o.max_concurrent_inputs {
            def.max_concurrent_inputs = v;
        }
        if let Some(v) = o.batch_max_size {
            def.batch_max_size = v;
        }
        if let Some(v) = o.batch_linger_ms {
            def.batch_linger_ms = v;
        }
        if let Some(v) = o.warm_pool_size {
            def.warm_pool_size = v;
        }
        if let Some(v) = o.target_concurrent_inputs {
            def.target_concurrent_inputs = v;
        }
        if let Some(v) = o.buffer_containers {
            def.experimental_buffer_containers = v;
        }
        // `with_options(volumes=...)`: the variant's containers mount these volumes.
        if o.replace_volume_mounts {
            def.volume_mounts = o.volume_mounts;
        } else {
            def.volume_mounts.extend(o.volume_mounts);
        }
    }
    let gpu_choices = crate::gpus::bind_options(s, &base.id, &base_def, &mut def).await?;
    let bound = s.store.create_bound_function(&base, &def.encode_to_vec(), &req.serialized_params, &identity).await.or_status()?;
    s.store.set_function_gpu_choices(&bound.id, gpu_choices.as_deref()).await.or_status()?;
    Ok(Response::new(api::FunctionBindParamsResponse {
        handle_metadata: Some(crate::functions::handle_metadata(&def, &bound.id, &base.app_id)),
        bound_function_id: bound.id,
    }))
}

pub(crate) async fn app_get_layout(s: &ModalService, r: Request<api::AppGetLayoutRequest>) -> Rpc<api::AppGetLayoutResponse> {
    let req = r.into_inner();
    check_id(&req.app_id, "ap", "App")?;
    s.store.app(&req.app_id).await.or_status()?;
    let layout = crate::launch::app_layout(s, &req.app_id, &[]).await.map_err(Status::internal)?;
    Ok(Response::new(api::AppGetLayoutResponse { app_layout: Some(layout) }))
}
