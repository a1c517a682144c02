//! `gpu=` on the wire: the one check every path makes (functions, classes, `with_options`,
//! image builds, sandboxes) and the leases task containers hold.
//!
//! A function whose `gpu=` the host can never meet still deploys, so the rest of its app works
//! (Modal's examples mix GPU and CPU functions in one app): `AppPublish` warns about it, and each
//! of its calls fails at once with an error naming the GPUs the host has. A sandbox, which is
//! one call, is refused at create. A request whose cards are merely busy waits for them.

use ferry_gpu::{GpuChoices, GpuError, GpuLease, GpuRequest};
use ferry_proto::api;
use tonic::Status;

use crate::service::ModalService;

/// The GPU request of one `Resources`, if it asks for any.
pub(crate) fn request_of(resources: Option<&api::Resources>) -> Result<Option<GpuRequest>, Status> {
    request_of_config(resources.and_then(|r| r.gpu_config.as_ref()))
}

fn request_of_config(config: Option<&api::GpuConfig>) -> Result<Option<GpuRequest>, Status> {
    let Some(g) = config else { return Ok(None) };
    if g.count == 0 {
        return Ok(None);
    }
    // Older clients sent only the count; such a request takes any card.
    let name = if g.gpu_type.is_empty() { "ANY" } else { g.gpu_type.as_str() };
    GpuRequest::new(name, g.count).map(Some).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The one check: `what` (e.g. "Function 'f'") may ask for `choices` on this host.
pub(crate) fn check(s: &ModalService, what: &str, choices: &GpuChoices) -> Result<(), Status> {
    s.gpus.check(choices).map_err(|e| refusal(what, e))
}

fn refusal(what: &str, e: GpuError) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

/// For callers holding a `Resources` (`SandboxCreate`): checks its GPU request, if any, and
/// returns it as a one-entry list to lease with [`lease`] and hand over with [`give`].
pub fn check_resources(s: &ModalService, what: &str, resources: Option<&api::Resources>) -> Result<Option<GpuChoices>, Status> {
    match request_of(resources)? {
        Some(r) => {
            let choices = GpuChoices::one(r);
            check(s, what, &choices)?;
            Ok(Some(choices))
        }
        None => Ok(None),
    }
}

/// `Image.*(gpu=...)` (`ImageGetOrCreate`'s `gpu_config`): the request must be well formed.
/// Build steps run without a GPU (installing a CUDA wheel needs none), so an image asking for
/// one the host lacks still builds, and the functions that run on it meet the check.
pub(crate) fn check_gpu_config(config: Option<&api::GpuConfig>) -> Result<(), Status> {
    request_of_config(config).map(|_| ())
}

/// The fallback list of ranked definitions (`gpu=["H100", "A100"]`), in rank order; None
/// when none of them asks for a GPU.
pub(crate) fn choices_of_ranked(functions: &[&api::Function]) -> Result<Option<GpuChoices>, Status> {
    let mut requests = Vec::new();
    for f in functions {
        if let Some(r) = request_of(f.resources.as_ref())? {
            requests.push(r);
        }
    }
    if requests.is_empty() {
        return Ok(None);
    }
    GpuChoices::new(requests).map(Some).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// How a fallback list is stored: `H100:1,A100:2`.
pub(crate) fn encode(choices: &GpuChoices) -> String {
    choices.requests().iter().map(|r| format!("{}:{}", r.name, r.count)).collect::<Vec<_>>().join(",")
}

fn decode(text: &str) -> Option<GpuChoices> {
    let items: Vec<&str> = text.split(',').collect();
    GpuChoices::parse_list(&items).ok()
}

/// What a function's containers ask for: its stored fallback list, else its definition's
/// `gpu_config`.
pub(crate) async fn choices_of_function(s: &ModalService, function_id: &str, def: &api::Function) -> Result<Option<GpuChoices>, String> {
    if let Some(text) = s.store.function_gpu_choices(function_id).await.map_err(|e| e.to_string())? {
        if let Some(c) = decode(&text) {
            return Ok(Some(c));
        }
    }
    Ok(request_of(def.resources.as_ref()).map_err(|e| e.message().to_string())?.map(GpuChoices::one))
}

/// Waits for cards for `holder` (a task id). `Ok(None)` when `give_up` said stop first;
/// `Err` when the host can never meet the request (it changed since the check).
pub async fn lease(s: &ModalService, choices: &GpuChoices, holder: &str, give_up: impl Fn() -> bool) -> Result<Option<GpuLease>, String> {
    s.gpus.lease(choices, holder, give_up).await.map_err(|e| e.to_string())
}

/// Gives a task the leased cards: their device nodes, driver and variables. With fake cards
/// (tests on machines without GPUs) only `CUDA_VISIBLE_DEVICES` names them.
pub fn give(s: &ModalService, lease: &GpuLease, spec: &mut ferry_worker::TaskSpec) {
    spec.give_gpus(lease, s.gpus.inventory().source == ferry_gpu::InventorySource::Fake);
}

/// The GPU type and count a task holds (for `TaskGetInfo`), if any.
pub(crate) fn held_by(s: &ModalService, task_id: &str) -> Option<api::GpuConfig> {
    let lease = s.gpus.leases().into_iter().find(|l| l.holder == task_id)?;
    let gpu_type = lease.cards.first().and_then(|c| c.label.clone()).unwrap_or_else(|| "GPU".into());
    Some(api::GpuConfig { gpu_type, count: lease.cards.len() as u32, ..Default::default() })
}

/// How refusals name what asked: `Function 'f'`, or `Class 'Model'` for a class's service
/// function (`Model.*`).
pub(crate) fn subject(f: &api::Function) -> String {
    match f.function_name.strip_suffix(".*") {
        Some(class) if f.is_class => format!("Class '{class}'"),
        _ => format!("Function '{}'", f.function_name),
    }
}

/// `FunctionCreate`'s definition and GPU check. A plain definition arrives in `function`; a
/// GPU fallback list (`gpu=["H100", "A100"]`) arrives as `function_data.ranked_functions`,
/// copies of one definition that differ only in their resources: the first (by rank) is
/// kept as the definition, and the list of their GPU requests (encoded, for the store) is
/// what containers lease from.
pub(crate) fn function_to_create(
    s: &ModalService,
    function: Option<api::Function>,
    data: Option<api::FunctionData>,
) -> Result<(api::Function, Option<String>), Status> {
    let (function, choices) = match (function, data) {
        (Some(f), _) => {
            let choices = request_of(f.resources.as_ref())?.map(GpuChoices::one);
            (f, choices)
        }
        (None, Some(mut data)) => {
            data.ranked_functions.sort_by_key(|r| r.rank);
            let ranked: Vec<&api::Function> = data.ranked_functions.iter().filter_map(|r| r.function.as_ref()).collect();
            let first = ranked.first().map(|f| (*f).clone()).ok_or_else(|| Status::invalid_argument("FunctionCreate's function_data has no ranked functions"))?;
            (first, choices_of_ranked(&ranked)?)
        }
        (None, None) => return Err(Status::invalid_argument("FunctionCreate needs a function definition")),
    };
    let _ = s;
    let Some(choices) = choices else { return Ok((function, None)) };
    let stored = (choices.requests().len() > 1).then(|| encode(&choices));
    Ok((function, stored))
}

/// `with_options(gpu=...)` (`FunctionBindParams`): the bound variant's GPU choices. A new
/// `gpu=` replaces the base's; other resource changes keep the base's GPU, as options cannot
/// unset it. As for functions, a request the host can never meet fails each call with the
/// reason (see the module doc).
pub(crate) async fn bind_options(s: &ModalService, base_id: &str, base: &api::Function, def: &mut api::Function) -> Result<Option<String>, Status> {
    if let Some(r) = def.resources.as_mut() {
        if r.gpu_config.as_ref().is_none_or(|g| g.count == 0) {
            r.gpu_config = base.resources.as_ref().and_then(|b| b.gpu_config.clone());
        }
    }
    let changed = request_of(def.resources.as_ref())? != request_of(base.resources.as_ref())?;
    let choices = if changed {
        request_of(def.resources.as_ref())?.map(GpuChoices::one)
    } else {
        choices_of_function(s, base_id, base).await.map_err(Status::internal)?
    };
    let Some(choices) = choices else { return Ok(None) };
    Ok((choices.requests().len() > 1).then(|| encode(&choices)))
}

/// Warnings for `AppPublish`: the app's functions whose `gpu=` neither this host nor a worker
/// host can meet (their calls will fail with the reason).
pub(crate) async fn unmet_warnings(s: &ModalService, app_id: &str) -> Vec<api::Warning> {
    let Ok(functions) = s.store.functions_of_app(app_id).await else { return Vec::new() };
    let mut warnings = Vec::new();
    for f in functions {
        let Ok(def) = <api::Function as prost::Message>::decode(f.definition.clone().unwrap_or_default().as_slice()) else { continue };
        let Ok(Some(choices)) = choices_of_function(s, &f.id, &def).await else { continue };
        if let Err(e) = check(s, &subject(&def), &choices) {
            if let Some(fleet) = &s.config.fleet {
                if fleet.has_gpus_for(&choices).await {
                    continue;
                }
            }
            warnings.push(api::Warning {
                r#type: api::warning::WarningType::FunctionConfiguration as i32,
                message: format!("{}; its calls will fail on this host", e.message()),
            });
        }
    }
    warnings
}
