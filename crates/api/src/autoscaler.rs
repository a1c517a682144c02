//! A function's autoscaler at run time: `Function.update_autoscaler()` /
//! `fn.autoscaler.update(...)` (`FunctionUpdateSchedulingParams`), `fn.autoscaler.settings()`
//! (`FunctionGetSchedulingParams`) and `Function.get_current_stats()`
//! (`FunctionGetCurrentStats`).
//!
//! An override is written into the function's stored definition, so it survives a restart and
//! lasts until the app is deployed again (a new definition), as on Modal.

use ferry_proto::api;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::service::{ModalService, Rpc};
use ferry_store::StoreError;

/// The settings in force: what `@app.function` said, with the overrides applied over it.
fn effective_settings(def: &api::Function) -> api::AutoscalerSettings {
    let a = def.autoscaler_settings.clone().unwrap_or_default();
    api::AutoscalerSettings {
        min_containers: Some(a.min_containers.unwrap_or(def.warm_pool_size)),
        max_containers: a.max_containers.or((def.concurrency_limit > 0).then_some(def.concurrency_limit)),
        buffer_containers: Some(a.buffer_containers.unwrap_or(def.experimental_buffer_containers)),
        scaleup_window: a.scaleup_window,
        scaledown_window: Some(a.scaledown_window.unwrap_or(if def.task_idle_timeout_secs > 0 {
            def.task_idle_timeout_secs
        } else {
            crate::launch::DEFAULT_SCALEDOWN.as_secs() as u32
        })),
        ..a
    }
}

async fn definition_of(s: &ModalService, function_id: &str) -> Result<(ferry_store::FunctionRecord, api::Function), Status> {
    if function_id.is_empty() {
        return Err(Status::invalid_argument("function_id is required"));
    }
    let record = match s.store.function(function_id).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(Status::not_found(format!("Function {function_id} not found"))),
        Err(e) => return Err(Status::internal(e.to_string())),
    };
    let Some(bytes) = record.definition.as_deref() else {
        return Err(Status::failed_precondition(format!("Function {function_id} has no definition yet: its app is still being created")));
    };
    let def = api::Function::decode(bytes).map_err(|e| Status::internal(format!("stored definition of {function_id} is unreadable: {e}")))?;
    Ok((record, def))
}

pub(crate) async fn update(s: &ModalService, r: Request<api::FunctionUpdateSchedulingParamsRequest>) -> Rpc<api::FunctionUpdateSchedulingParamsResponse> {
    let req = r.into_inner();
    let (_, mut def) = definition_of(s, &req.function_id).await?;
    let mut current = def.autoscaler_settings.clone().unwrap_or_default();
    let mut new = req.settings.unwrap_or_default();
    if req.warm_pool_size_override > 0 && new.min_containers.is_none() {
        new.min_containers = Some(req.warm_pool_size_override);
    }
    if let (Some(min), Some(max)) = (new.min_containers.or(current.min_containers), new.max_containers.or(current.max_containers)) {
        if max > 0 && min > max {
            return Err(Status::invalid_argument(format!("min_containers ({min}) cannot be greater than max_containers ({max})")));
        }
    }
    macro_rules! take {
        ($($f:ident),*) => { $( if new.$f.is_some() { current.$f = new.$f; } )* };
    }
    take!(min_containers, max_containers, buffer_containers, scaleup_window, scaledown_window, target_concurrency, scaledown_rate_limit, target_concurrency_float);
    def.autoscaler_settings = Some(current);
    s.store.set_function_definition(&req.function_id, &def.encode_to_vec()).await.map_err(|e| Status::internal(e.to_string()))?;
    s.launcher.forget_definition(&req.function_id);
    // More warm containers start now; those above a lower minimum leave after their idle window.
    crate::launch::ensure_capacity(s, &req.function_id).await?;
    Ok(Response::new(api::FunctionUpdateSchedulingParamsResponse { current_settings: Some(effective_settings(&def)) }))
}

pub(crate) async fn get(s: &ModalService, r: Request<api::FunctionGetSchedulingParamsRequest>) -> Rpc<api::FunctionGetSchedulingParamsResponse> {
    let req = r.into_inner();
    let (_, def) = definition_of(s, &req.function_id).await?;
    let settings = effective_settings(&def);
    Ok(Response::new(api::FunctionGetSchedulingParamsResponse {
        autoscaler_configuration: Some(api::AutoscalerConfiguration {
            settings: Some(settings.clone()),
            static_settings: Some(settings),
            ..Default::default()
        }),
    }))
}

pub(crate) async fn current_stats(s: &ModalService, r: Request<api::FunctionGetCurrentStatsRequest>) -> Rpc<api::FunctionStats> {
    let req = r.into_inner();
    let (_, def) = definition_of(s, &req.function_id).await?;
    let (queued, running, tasks) = s.scheduler.function_stats(&req.function_id);
    let per_container = def.max_concurrent_inputs.max(1) as usize;
    Ok(Response::new(api::FunctionStats {
        backlog: queued as u32,
        num_total_tasks: tasks as u32,
        num_running_inputs: running as u32,
        input_headroom: (tasks * per_container).saturating_sub(running) as u32,
    }))
}
