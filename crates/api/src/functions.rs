//! Function RPCs on the caller's side: definition (`FunctionPrecreate`/`FunctionCreate`,
//! `FunctionGet`), calls (`FunctionMap`, `FunctionPutInputs`) and results (`FunctionGetOutputs`).

use std::time::Duration;

use ferry_proto::api;
use prost::Message;
use tonic::{Request, Response, Status};

use ferry_scheduler::Output;

use crate::scheduler::{cancelled_result, status, NewInput};
use crate::service::{ModalService, Rpc};
use crate::status::{check_id, invalid, OrStatus};

/// How many inputs a map may have outstanding before the client waits for outputs.
const MAX_INPUTS_OUTSTANDING: u32 = 1000;
const MAX_OUTPUT_POLL: f32 = 55.0;

/// The handle metadata the client hydrates a function with, derived from its definition.
pub(crate) fn handle_metadata(f: &api::Function, function_id: &str, app_id: &str) -> api::FunctionHandleMetadata {
    let method_handle_metadata = f
        .method_definitions
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                api::FunctionHandleMetadata {
                    function_name: m.function_name.clone(),
                    function_type: m.function_type,
                    web_url: m.web_url.clone(),
                    is_method: true,
                    use_method_name: name.clone(),
                    function_schema: m.function_schema.clone(),
                    supported_input_formats: m.supported_input_formats.clone(),
                    supported_output_formats: m.supported_output_formats.clone(),
                    app_id: app_id.to_string(),
                    ..Default::default()
                },
            )
        })
        .collect();
    api::FunctionHandleMetadata {
        function_name: f.function_name.clone(),
        function_type: f.function_type,
        web_url: f.web_url.clone(),
        is_method: false,
        use_method_name: String::new(),
        definition_id: function_id.to_string(),
        class_parameter_info: f.class_parameter_info.clone(),
        method_handle_metadata,
        function_schema: f.function_schema.clone(),
        supported_input_formats: f.supported_input_formats.clone(),
        supported_output_formats: f.supported_output_formats.clone(),
        app_id: app_id.to_string(),
        experimental_flash_urls: f.flash_service_urls.clone(),
        ..Default::default()
    }
}

/// The client parses a function from `FunctionData` and requires at least one ranked function;
/// the fields both messages have are the function's own (`Function.info()` reads them).
fn function_data(function: &api::Function) -> api::FunctionData {
    api::FunctionData {
        module_name: function.module_name.clone(),
        function_name: function.function_name.clone(),
        function_type: function.function_type,
        warm_pool_size: function.warm_pool_size,
        concurrency_limit: function.concurrency_limit,
        task_idle_timeout_secs: function.task_idle_timeout_secs,
        experimental_group_size: function.experimental_group_size,
        experimental_fabric_size: function.experimental_fabric_size,
        experimental_buffer_containers: function.experimental_buffer_containers,
        experimental_custom_scaling: function.experimental_custom_scaling,
        experimental_enable_gpu_snapshot: function.experimental_enable_gpu_snapshot,
        worker_id: function.worker_id.clone(),
        timeout_secs: function.timeout_secs,
        web_url: function.web_url.clone(),
        web_url_info: function.web_url_info,
        webhook_config: function.webhook_config.clone(),
        custom_domain_info: function.custom_domain_info.clone(),
        method_definitions_set: function.method_definitions_set,
        method_definitions: function.method_definitions.clone(),
        is_class: function.is_class,
        class_parameter_info: function.class_parameter_info.clone(),
        is_method: function.is_method,
        schedule: function.schedule.clone(),
        untrusted: function.untrusted,
        snapshot_debug: function.snapshot_debug,
        runtime_perf_record: function.runtime_perf_record,
        autoscaler_settings: function.autoscaler_settings,
        function_schema: function.function_schema.clone(),
        flash_service_urls: function.flash_service_urls.clone(),
        flash_service_label: function.flash_service_label.clone(),
        startup_timeout_secs: function.startup_timeout_secs,
        supported_input_formats: function.supported_input_formats.clone(),
        supported_output_formats: function.supported_output_formats.clone(),
        http_config: function.http_config.clone(),
        implementation_name: function.implementation_name.clone(),
        is_server: function.is_server,
        routing_region: function.routing_region.clone(),
        is_sessioned: function.is_sessioned,
        experimental_options: function.experimental_options.clone(),
        ranked_functions: vec![api::function_data::RankedFunction { rank: 0, function: Some(function.clone()) }],
    }
}

pub(crate) async fn precreate(s: &ModalService, r: Request<api::FunctionPrecreateRequest>) -> Rpc<api::FunctionPrecreateResponse> {
    let req = r.into_inner();
    check_id(&req.app_id, "ap", "App")?;
    if req.function_name.is_empty() {
        return Err(invalid("function_name is required"));
    }
    let app = s.store.app(&req.app_id).await.or_status()?;
    let id = if req.existing_function_id.is_empty() {
        s.store.create_function(&app.id, &req.function_name).await.or_status()?.id
    } else {
        req.existing_function_id.clone()
    };
    let partial = api::Function {
        function_name: req.function_name.clone(),
        function_type: req.function_type,
        method_definitions: req.method_definitions.clone(),
        function_schema: req.function_schema.clone(),
        supported_input_formats: req.supported_input_formats.clone(),
        supported_output_formats: req.supported_output_formats.clone(),
        ..Default::default()
    };
    Ok(Response::new(api::FunctionPrecreateResponse { handle_metadata: Some(handle_metadata(&partial, &id, &app.id)), function_id: id }))
}

pub(crate) async fn create(s: &ModalService, r: Request<api::FunctionCreateRequest>) -> Rpc<api::FunctionCreateResponse> {
    let req = r.into_inner();
    check_id(&req.app_id, "ap", "App")?;
    let app = s.store.app(&req.app_id).await.or_status()?;
    let (mut function, gpu_choices) = crate::gpus::function_to_create(s, req.function, req.function_data)?;
    let id = if req.existing_function_id.is_empty() {
        s.store.create_function(&app.id, &function.function_name).await.or_status()?.id
    } else {
        check_id(&req.existing_function_id, "fu", "Function")?;
        req.existing_function_id.clone()
    };
    crate::web::prepare_definition(s, &app, &mut function, &id).await?;
    s.store.set_function_definition(&id, &function.encode_to_vec()).await.or_status()?;
    s.store.set_function_gpu_choices(&id, gpu_choices.as_deref()).await.or_status()?;
    s.launcher.forget_definition(&id);
    let metadata = handle_metadata(&function, &id, &app.id);
    let data = function_data(&function);
    Ok(Response::new(api::FunctionCreateResponse {
        function_id: id,
        function: Some(function),
        handle_metadata: Some(metadata),
        function_data: Some(data),
        ..Default::default()
    }))
}

/// `Function.from_name`: the function of a deployed app by tag.
pub(crate) async fn get(s: &ModalService, r: Request<api::FunctionGetRequest>) -> Rpc<api::FunctionGetResponse> {
    let req = r.into_inner();
    let env = s.store.environment(&req.environment_name).await.or_status()?;
    let app = s.store.app_by_name(&env.name, &req.app_name).await.or_status()?.ok_or_else(|| {
        Status::not_found(format!("App '{}' not found in environment '{}'; deploy it with `modal deploy`", req.app_name, env.name))
    })?;
    let record = s.store.function_by_tag(&app.id, &req.object_tag).await.or_status()?.ok_or_else(|| {
        Status::not_found(format!("Function '{}' not found in app '{}'", req.object_tag, req.app_name))
    })?;
    let function = stored_definition(&record)?.unwrap_or_default();
    let data = function_data(&function);
    Ok(Response::new(api::FunctionGetResponse {
        handle_metadata: Some(handle_metadata(&function, &record.id, &app.id)),
        function_id: record.id,
        function: Some(data),
        ..Default::default()
    }))
}

/// A function record's stored definition (`None` before the client sent one).
pub(crate) fn stored_definition(record: &ferry_store::FunctionRecord) -> Result<Option<api::Function>, Status> {
    record
        .definition
        .as_deref()
        .map(|bytes| api::Function::decode(bytes).map_err(|e| Status::internal(format!("stored definition of {} is unreadable: {e}", record.id))))
        .transpose()
}

/// `modal.Function.from_id(...)` and `Function.info()`: a function by its id.
pub(crate) async fn get_by_id(s: &ModalService, r: Request<api::FunctionGetByIdRequest>) -> Rpc<api::FunctionGetByIdResponse> {
    let function_id = r.into_inner().function_id;
    check_id(&function_id, "fu", "Function")?;
    let record = s.store.function(&function_id).await.or_status()?;
    let function = stored_definition(&record)?
        .ok_or_else(|| Status::not_found(format!("Function {function_id} has no definition yet (its app is still being created)")))?;
    Ok(Response::new(api::FunctionGetByIdResponse {
        handle_metadata: Some(handle_metadata(&function, &record.id, &record.app_id)),
        function: Some(function_data(&function)),
    }))
}

fn to_inputs(items: Vec<api::FunctionPutInputsItem>) -> Result<Vec<NewInput>, Status> {
    items
        .into_iter()
        .map(|item| {
            let input = item.input.ok_or_else(|| invalid(format!("input {} has no payload", item.idx)))?;
            Ok(NewInput { idx: item.idx, payload: input.encode_to_vec() })
        })
        .collect()
}

fn accepted(ids: Vec<(i32, String)>) -> Vec<api::FunctionPutInputsResponseItem> {
    ids.into_iter().map(|(idx, input_id)| api::FunctionPutInputsResponseItem { idx, input_id, input_jwt: String::new() }).collect()
}

pub(crate) async fn map(s: &ModalService, r: Request<api::FunctionMapRequest>) -> Rpc<api::FunctionMapResponse> {
    let caller = crate::service::principal(&r);
    let req = r.into_inner();
    check_id(&req.function_id, "fu", "Function")?;
    let found = crate::launch::shared_definition(s, &req.function_id).await.map_err(Status::not_found)?;
    let record = &found.0;
    if record.definition.is_none() {
        return Err(Status::failed_precondition(format!("function {} was never created", record.id)));
    }
    let call_id = ferry_store::new_id("fc");
    let inputs = to_inputs(req.pipelined_inputs)?;
    let ids = crate::launch::submit(s, &call_id, &record.id, req.function_call_invocation_type, inputs).await?;
    crate::call_graph::record(s, &call_id, &record.id, &req.parent_input_id, &caller).await;
    Ok(Response::new(api::FunctionMapResponse {
        function_call_id: call_id,
        pipelined_inputs: accepted(ids),
        max_inputs_outstanding: MAX_INPUTS_OUTSTANDING,
        sync_client_retries_enabled: false,
        ..Default::default()
    }))
}

pub(crate) async fn put_inputs(s: &ModalService, r: Request<api::FunctionPutInputsRequest>) -> Rpc<api::FunctionPutInputsResponse> {
    let req = r.into_inner();
    check_id(&req.function_call_id, "fc", "FunctionCall")?;
    let inputs = to_inputs(req.inputs)?;
    let ids = crate::launch::submit_more(s, &req.function_call_id, inputs).await?;
    Ok(Response::new(api::FunctionPutInputsResponse { inputs: accepted(ids) }))
}

fn to_item(o: Output) -> Result<api::FunctionGetOutputsItem, Status> {
    let result = api::GenericResult::decode(o.result.as_slice()).map_err(|e| Status::internal(format!("stored output is unreadable: {e}")))?;
    Ok(api::FunctionGetOutputsItem {
        result: Some(result),
        idx: o.idx,
        input_id: o.input_id,
        data_format: o.data_format,
        task_id: o.task_id,
        // The caller's attempt number, which its map compares with its own and drops outputs
        // that differ as stale. Ferry retries on the server (`sync_client_retries_enabled` is
        // false), so the caller never starts another attempt and its count stays 0, whatever
        // attempt the answer came from (the container saw that one in `FunctionGetInputs`).
        retry_count: 0,
        ..Default::default()
    })
}

/// Answers of a call. `last_entry_id` is the cursor this server issued (`<seq>-0`, the
/// sequence number of the last answer returned), so a caller that reconnects after a restart
/// resumes where it was; `start_idx..=end_idx` asks for given inputs instead (`.remote()`,
/// `FunctionCall.get()`). `clear_on_success` forgets a call whose answers were all read.
pub(crate) async fn get_outputs(s: &ModalService, r: Request<api::FunctionGetOutputsRequest>) -> Rpc<api::FunctionGetOutputsResponse> {
    let req = r.into_inner();
    check_id(&req.function_call_id, "fc", "FunctionCall")?;
    if !req.timeout.is_finite() || req.timeout < 0.0 {
        return Err(invalid("timeout must be a non-negative number of seconds"));
    }
    let cursor: i64 = req.last_entry_id.split('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let range = match (req.start_idx, req.end_idx) {
        (Some(lo), Some(hi)) => Some((lo, hi)),
        _ => None,
    };
    let timeout = Duration::from_secs_f32(req.timeout.min(MAX_OUTPUT_POLL));
    let found = s.scheduler.outputs(&req.function_call_id, cursor, range, timeout, req.clear_on_success).await.map_err(status)?;
    let outputs = found.outputs.into_iter().map(to_item).collect::<Result<Vec<_>, _>>()?;
    Ok(Response::new(api::FunctionGetOutputsResponse {
        outputs,
        last_entry_id: format!("{}-0", found.cursor),
        num_unfinished_inputs: found.num_unfinished as i32,
        ..Default::default()
    }))
}

/// `FunctionCall.from_id`: any call whose answers have not expired, across restarts.
pub(crate) async fn call_from_id(s: &ModalService, r: Request<api::FunctionCallFromIdRequest>) -> Rpc<api::FunctionCallFromIdResponse> {
    let req = r.into_inner();
    check_id(&req.function_call_id, "fc", "FunctionCall")?;
    let call = s.scheduler.call(&req.function_call_id).await.map_err(status)?;
    let record = s.store.function(&call.function_id).await.or_status()?;
    Ok(Response::new(api::FunctionCallFromIdResponse {
        function_call_id: req.function_call_id,
        num_inputs: call.num_inputs as i32,
        metadata: Some(api::FunctionCallHandleMetadata { app_id: record.app_id, function_id: call.function_id, ..Default::default() }),
    }))
}

/// `FunctionFinishInputs`: the client of `Function.experimental_spawn_map` has sent all of the
/// call's inputs. Every input of a call is stored when its `FunctionPutInputs` is answered, so
/// this only checks that the call holds as many as the client sent.
pub(crate) async fn finish_inputs(s: &ModalService, r: Request<api::FunctionFinishInputsRequest>) -> Rpc<()> {
    let req = r.into_inner();
    check_id(&req.function_call_id, "fc", "FunctionCall")?;
    let call = s.scheduler.call(&req.function_call_id).await.map_err(status)?;
    if !req.function_id.is_empty() && req.function_id != call.function_id {
        return Err(Status::invalid_argument(format!(
            "function call {} belongs to function {}, not {}",
            req.function_call_id, call.function_id, req.function_id
        )));
    }
    if call.num_inputs as u64 != u64::from(req.num_inputs) {
        return Err(Status::failed_precondition(format!(
            "function call {} holds {} inputs but the client sent {}; spawn the map again",
            req.function_call_id, call.num_inputs, req.num_inputs
        )));
    }
    Ok(Response::new(()))
}

/// `FunctionCallGetInfo` (`FunctionCall.logs.stream()` asks it whether the call is over): the
/// call's inputs by outcome, from the store, so it holds across restarts while the call is kept.
pub(crate) async fn call_get_info(s: &ModalService, r: Request<api::FunctionCallGetInfoRequest>) -> Rpc<api::FunctionCallGetInfoResponse> {
    let req = r.into_inner();
    check_id(&req.function_call_id, "fc", "FunctionCall")?;
    let not_found = || Status::not_found(format!("Function call {} not found (calls are kept until their answers expire)", req.function_call_id));
    let progress = s.store.call_progress(&req.function_call_id).await.or_status()?.ok_or_else(not_found)?;
    if !req.function_id.is_empty() && req.function_id != progress.function_id {
        return Err(not_found());
    }
    let count = |state: &str| progress.states.iter().filter(|(st, _)| st == state).map(|(_, n)| *n as i32).sum::<i32>();
    let category = |total: i32| Some(api::InputCategoryInfo { total, ..Default::default() });
    let total: i32 = progress.states.iter().map(|(_, n)| *n as i32).sum();
    let info = api::FunctionCallInfo {
        function_call_id: req.function_call_id.clone(),
        created_at: progress.created_at,
        scheduled_at: progress.created_at,
        pending_inputs: category(count("queued")),
        succeeded_inputs: category(count("done")),
        failed_inputs: category(count("failed")),
        timeout_inputs: category(count("timeout")),
        cancelled_inputs: category(count("cancelled")),
        total_inputs: total,
        ..Default::default()
    };
    Ok(Response::new(api::FunctionCallGetInfoResponse { info: Some(info) }))
}

/// `FunctionCall.cancel()`: its waiting and running inputs are answered TERMINATED at once
/// (recorded in the store); containers running them are told at their next heartbeat, or with
/// `terminate_containers` killed (their other inputs run again elsewhere).
pub(crate) async fn cancel(s: &ModalService, r: Request<api::FunctionCallCancelRequest>) -> Rpc<()> {
    let req = r.into_inner();
    check_id(&req.function_call_id, "fc", "FunctionCall")?;
    let why = format!("Function call {} was cancelled", req.function_call_id);
    // The reason is recorded with the call: a replica that owns it reads it (and whether to
    // terminate) when the cancellation came through another one.
    let reason = if req.terminate_containers { CANCEL_TERMINATING } else { "FunctionCall.cancel()" };
    let tasks = s.scheduler.cancel_call(&req.function_call_id, reason, cancelled_result(&why)).await.map_err(status)?;
    if req.terminate_containers {
        terminate(s, tasks);
    }
    Ok(Response::new(()))
}

/// The recorded reason of a cancellation that also terminates the containers running the call.
pub(crate) const CANCEL_TERMINATING: &str = "FunctionCall.cancel(terminate_containers=True)";

/// Kills the containers `tasks` (their other inputs run again elsewhere).
pub(crate) fn terminate(s: &ModalService, tasks: Vec<String>) {
    for task_id in tasks {
        s.scheduler.preempt(&task_id);
        s.scheduler.stop_task(&task_id);
        s.launcher.kill(&task_id);
    }
}

/// The items a generator function yields, streamed as the container produces them. The stream
/// ends after a while without items; the client reopens it from its last index.
pub(crate) async fn get_data_out(s: &ModalService, r: Request<api::FunctionCallGetDataRequest>) -> crate::service::RpcStream<api::DataChunk> {
    let req = r.into_inner();
    let call_id = match req.call_info {
        Some(api::function_call_get_data_request::CallInfo::FunctionCallId(id)) => id,
        _ => return Err(invalid("FunctionCallGetDataOut needs a function_call_id")),
    };
    check_id(&call_id, "fc", "FunctionCall")?;
    s.scheduler.call(&call_id).await.map_err(status)?;
    let scheduler = s.scheduler.clone();
    let mut after = req.last_index;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(55);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let items = match scheduler.data_out(&call_id, after, left).await {
                Ok(items) => items,
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
            };
            if items.is_empty() {
                return;
            }
            for (index, bytes) in items {
                after = index;
                let chunk = match api::DataChunk::decode(bytes.as_slice()) {
                    Ok(c) => Ok(c),
                    Err(e) => Err(Status::internal(format!("stored chunk is unreadable: {e}"))),
                };
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
