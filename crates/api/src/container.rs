//! RPCs a task's container makes (client type 3): hello, heartbeats, taking inputs, returning
//! outputs, reporting a failed start. Each is allowed only with that task's own credential.

use std::time::Duration;

use ferry_proto::api;
use ferry_store::Principal;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::scheduler::{outcome_of, status, Outcome, Work};
use crate::service::{principal, ModalService, Rpc};

/// How long `FunctionGetInputs` holds a poll when no input is queued.
const INPUT_POLL: Duration = Duration::from_secs(10);

fn task_of<T>(r: &Request<T>) -> Result<String, Status> {
    match principal(r) {
        Principal::Task { task_id, .. } => Ok(task_id),
        Principal::User { .. } => Err(Status::permission_denied("only a task's container may call this")),
    }
}

pub(crate) async fn hello(_s: &ModalService, r: Request<()>) -> Rpc<()> {
    task_of(&r)?;
    Ok(Response::new(()))
}

/// Heartbeats carry the inputs of cancelled calls the container is running, so it stops them.
pub(crate) async fn heartbeat(s: &ModalService, r: Request<api::ContainerHeartbeatRequest>) -> Rpc<api::ContainerHeartbeatResponse> {
    let task_id = task_of(&r)?;
    let cancelled = s.scheduler.take_cancelled(&task_id);
    let cancel_input_event = (!cancelled.is_empty()).then(|| api::CancelInputEvent {
        input_ids: cancelled,
        terminate_containers: false,
        ..Default::default()
    });
    Ok(Response::new(api::ContainerHeartbeatResponse { cancel_input_event }))
}

pub(crate) async fn get_inputs(s: &ModalService, r: Request<api::FunctionGetInputsRequest>) -> Rpc<api::FunctionGetInputsResponse> {
    let task_id = task_of(&r)?;
    let req = r.into_inner();
    let task = s.scheduler.task(&task_id).ok_or_else(|| Status::not_found(format!("task {task_id} is not running")))?;
    if req.function_id != task.function_id {
        return Err(Status::permission_denied(format!("task {task_id} serves {}, not {}", task.function_id, req.function_id)));
    }
    // The client takes one input per call (it keeps several calls going for concurrency), or
    // up to a batch for `@modal.batched`.
    let max = req.batch_max_size.max(1) as usize;
    let linger = Duration::from_millis(if max > 1 { req.batch_linger_ms } else { 0 });
    let idle_limit = crate::launch::idle_limit(s, &task.function_id).await;
    let inputs = match s.scheduler.take_inputs(&task_id, max, linger, INPUT_POLL, idle_limit).await {
        Work::Nothing => Vec::new(),
        Work::Stop => vec![api::FunctionGetInputsItem { kill_switch: true, ..Default::default() }],
        Work::Inputs(taken) => taken
            .into_iter()
            .map(|i| {
                let input = api::FunctionInput::decode(i.payload.as_slice()).ok();
                api::FunctionGetInputsItem {
                    input_id: i.input_id,
                    input,
                    function_call_id: i.call_id,
                    function_call_invocation_type: i.invocation_type,
                    retry_count: i.retry_count,
                    ..Default::default()
                }
            })
            .collect(),
    };
    Ok(Response::new(api::FunctionGetInputsResponse { inputs, rate_limit_sleep_duration: 0.0 }))
}

pub(crate) async fn put_outputs(s: &ModalService, r: Request<api::FunctionPutOutputsRequest>) -> Rpc<()> {
    let task_id = task_of(&r)?;
    let task = s.scheduler.task(&task_id);
    let function_id = task.as_ref().map(|t| t.function_id.clone()).unwrap_or_default();
    // The lines the container printed while running these inputs go first.
    if let Some(t) = &task {
        s.launcher.logs_before_answer(s, &task_id, &t.app_id).await;
    }
    for out in r.into_inner().outputs {
        let result = out.result.unwrap_or_default();
        crate::call_graph::input_finished(s, &out.input_id, result.status);
        let outcome = outcome_of(&result);
        if matches!(outcome, Outcome::Failed | Outcome::TimedOut) {
            // A failed attempt is retried while the function's retry policy allows.
            if let Some(input) = s.scheduler.take_back(&task_id, &out.input_id) {
                crate::launch::fail_or_retry_output(s, &function_id, &task_id, input, result.encode_to_vec(), out.data_format, outcome).await;
            }
            continue;
        }
        if !s.scheduler.complete(&task_id, &out.input_id, result.encode_to_vec(), out.data_format, outcome).await.map_err(status)? {
            tracing::debug!(task_id, input_id = out.input_id, "output for an input the task does not hold; dropped");
        }
    }
    Ok(Response::new(()))
}

/// The container could not start serving (import error, failing `@enter`): remember why, so
/// the inputs waiting for this function fail with the real error instead of waiting forever.
pub(crate) async fn task_result(s: &ModalService, r: Request<api::TaskResultRequest>) -> Rpc<()> {
    let task_id = task_of(&r)?;
    let result = r.into_inner().result.unwrap_or_default();
    if result.status != api::generic_result::GenericStatus::Success as i32 {
        let mut message = result.exception.clone();
        if !result.traceback.is_empty() {
            message = format!("{}\n{}", result.traceback.trim_end(), message);
        }
        s.scheduler.set_failure(&task_id, message);
    }
    Ok(Response::new(()))
}

/// Generator items from a container, for the caller's `FunctionCallGetDataOut` stream.
pub(crate) async fn put_data_out(s: &ModalService, r: Request<api::FunctionCallPutDataRequest>) -> Rpc<()> {
    task_of(&r)?;
    let req = r.into_inner();
    let call_id = match req.call_info {
        Some(api::function_call_put_data_request::CallInfo::FunctionCallId(id)) => id,
        _ => return Err(Status::invalid_argument("FunctionCallPutDataOut needs a function_call_id")),
    };
    if crate::web::put_data_out(s, &call_id, &req.data_chunks).await? {
        return Ok(Response::new(()));
    }
    let chunks = req.data_chunks.into_iter().map(|c| (c.index, c.encode_to_vec())).collect();
    s.scheduler.put_data_out(&call_id, chunks).await.map_err(status)?;
    Ok(Response::new(()))
}
