//! `FunctionCall.get_call_graph()` (`FunctionGetCallGraph`): the tree of inputs and the calls
//! they made, from the root of the graph a call belongs to. Edges are written when a running
//! input makes a call (`FunctionMap` with `parent_input_id`), off the caller's critical path;
//! a parent input's final status is added to its edges when it is answered.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use ferry_proto::api;
use ferry_store::Principal;
use tonic::{Request, Response, Status};

use crate::service::{ModalService, Rpc};
use crate::status::OrStatus;

/// Inputs known to have made calls, whose final status their edges want. Bounded: the oldest
/// half is dropped past the limit (their edges then report the status their input row has).
static PARENTS: LazyLock<Mutex<(HashSet<String>, Vec<String>)>> = LazyLock::new(Default::default);
const MAX_PARENTS: usize = 100_000;

/// Most inputs a graph answer carries.
const MAX_INPUTS: usize = 10_000;

/// Records that `call_id` was made by input `parent_input_id` of the calling task, before the
/// caller learns the call: a `get_call_graph()` right after `spawn()` already sees the edge.
pub(crate) async fn record(s: &ModalService, call_id: &str, function_id: &str, parent_input_id: &str, caller: &Principal) {
    if parent_input_id.is_empty() {
        return;
    }
    let task_id = match caller {
        Principal::Task { task_id, .. } => Some(task_id.clone()),
        Principal::User { .. } => None,
    };
    {
        let mut p = PARENTS.lock().unwrap();
        if p.0.insert(parent_input_id.to_string()) {
            p.1.push(parent_input_id.to_string());
            if p.1.len() > MAX_PARENTS {
                let old: Vec<String> = p.1.drain(..MAX_PARENTS / 2).collect();
                for id in old {
                    p.0.remove(&id);
                }
            }
        }
    }
    // The parent input may be running before the commit of its own call's inputs lands (a new
    // call's inputs are queued while that commit is in flight): the edge names the parent's row,
    // so wait for it a little (the group commit takes at most ~20 ms).
    for attempt in 0..20u32 {
        match s.store.record_call_edge(call_id, function_id, parent_input_id, task_id.as_deref()).await {
            Ok(true) => return,
            Ok(false) if s.store.call_edge_exists(call_id).await.unwrap_or(false) => return,
            Ok(false) => tokio::time::sleep(std::time::Duration::from_millis(10 + 10 * attempt as u64)).await,
            Err(e) => {
                tracing::warn!(call_id, "cannot record the call graph edge: {e}");
                return;
            }
        }
    }
    tracing::warn!(call_id, parent_input_id, "the call graph edge names an input that is not in the store");
}

/// An input was answered with `status` (a GenericResult status).
pub(crate) fn input_finished(s: &ModalService, input_id: &str, status: i32) {
    if !PARENTS.lock().unwrap().0.contains(input_id) {
        return;
    }
    let (store, input_id) = (s.store.clone(), input_id.to_string());
    tokio::spawn(async move {
        if let Err(e) = store.set_parent_status(&input_id, status).await {
            tracing::warn!(input_id, "cannot record the input's status in the call graph: {e}");
        }
    });
}

fn status_of(input: &ferry_store::GraphInput) -> i32 {
    use api::generic_result::GenericStatus as G;
    if let Some(s) = input.status {
        return s;
    }
    match input.state.as_deref() {
        Some("done") => G::Success as i32,
        Some("failed") => G::Failure as i32,
        Some("timeout") => G::Timeout as i32,
        Some("cancelled") => G::Terminated as i32,
        _ => 0,
    }
}

pub(crate) async fn get(s: &ModalService, r: Request<api::FunctionGetCallGraphRequest>) -> Rpc<api::FunctionGetCallGraphResponse> {
    let call_id = r.into_inner().function_call_id;
    if !call_id.starts_with("fc-") {
        return Err(Status::invalid_argument(format!("'{call_id}' is not a FunctionCall id (fc-...)")));
    }
    let (calls, inputs, truncated) = s.store.call_graph(&call_id, MAX_INPUTS).await.or_status()?;
    if calls.is_empty() || calls.iter().all(|c| c.function_id.is_empty()) {
        return Err(Status::not_found(format!("FunctionCall {call_id} not found")));
    }
    let mut function_calls = Vec::with_capacity(calls.len());
    for c in calls {
        let (function_name, module_name) = match crate::launch::definition(s, &c.function_id).await {
            Ok((_, def)) => (def.function_name, def.module_name),
            Err(_) => (String::new(), String::new()),
        };
        function_calls.push(api::FunctionCallCallGraphInfo {
            function_call_id: c.call_id,
            parent_input_id: c.parent_input_id.unwrap_or_default(),
            function_name,
            module_name,
        });
    }
    let inputs = inputs
        .iter()
        .map(|i| api::InputCallGraphInfo {
            input_id: i.input_id.clone(),
            status: status_of(i),
            function_call_id: i.call_id.clone(),
            task_id: i.task_id.clone(),
        })
        .collect();
    Ok(Response::new(api::FunctionGetCallGraphResponse { inputs, function_calls, truncated }))
}
