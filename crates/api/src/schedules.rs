//! `Function.schedule` (`modal.Period`, `modal.Cron`): the adapter between the wire types, the
//! store and `ferry-schedule`. Publishing an app registers its functions' schedules; the
//! schedule loop (one per server, owned by [`spawn`]) fires each tick as an async call with no
//! arguments, submitted like any other input.

use std::collections::BTreeMap;

use ferry_proto::api;
use ferry_schedule::{DateTime, Entry, Schedule, Spec, Utc};
use prost::Message;
use tonic::Status;

use crate::scheduler::NewInput;
use crate::service::ModalService;
use crate::status::OrStatus;

/// `((), {})` pickled with protocol 4: the arguments of a no-argument call.
const PICKLED_NO_ARGS: &[u8] = b"\x80\x04\x95\x06\x00\x00\x00\x00\x00\x00\x00)}\x94\x86\x94.";
/// `[[], {}]` in CBOR, for functions that take only CBOR.
const CBOR_NO_ARGS: &[u8] = b"\x82\x80\xa0";

/// The schedule of a function definition, in plain types.
fn spec_of(def: &api::Function) -> Option<Spec> {
    use api::schedule::ScheduleOneof;
    match def.schedule.as_ref()?.schedule_oneof.as_ref()? {
        ScheduleOneof::Cron(c) => Some(Spec::cron(&c.cron_string, &c.timezone)),
        ScheduleOneof::Period(p) => Some(Spec::Period {
            years: p.years,
            months: p.months,
            weeks: p.weeks,
            days: p.days,
            hours: p.hours,
            minutes: p.minutes,
            seconds: p.seconds as f64,
        }),
    }
}

/// The validated schedules of an app's functions (function id → stored spec). A schedule that
/// does not validate refuses the publish with the reason.
pub(crate) async fn collect(s: &ModalService, app_id: &str) -> Result<BTreeMap<String, String>, Status> {
    let mut out = BTreeMap::new();
    for f in s.store.functions_of_app(app_id).await.or_status()? {
        let Ok(def) = api::Function::decode(f.definition.unwrap_or_default().as_slice()) else { continue };
        if let Some(spec) = spec_of(&def) {
            Schedule::new(&spec).map_err(|e| Status::invalid_argument(format!("schedule of function '{}': {e}", f.tag)))?;
            out.insert(f.id, spec.to_text());
        }
    }
    Ok(out)
}

/// Registers an app's schedules (replacing those it had) and wakes the loop.
pub(crate) async fn register(s: &ModalService, app_id: &str, schedules: &BTreeMap<String, String>) -> Result<(), Status> {
    s.store.set_schedules(app_id, schedules).await.or_status()
}

/// The schedule loop's view of the server.
struct ScheduleHost {
    svc: ModalService,
}

impl ferry_schedule::Host for ScheduleHost {
    async fn entries(&self) -> Result<Vec<Entry>, String> {
        let records = self.svc.store.live_schedules().await.map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            match Spec::from_text(&r.spec) {
                Ok(spec) => out.push(Entry {
                    key: r.function_id,
                    spec,
                    anchor: ferry_schedule::from_unix(r.anchor),
                    last_tick: r.last_tick.map(ferry_schedule::from_unix),
                }),
                Err(e) => tracing::warn!(function_id = r.function_id, "skipping schedule: {e}"),
            }
        }
        Ok(out)
    }

    async fn fire(&self, entry: &Entry, tick: DateTime<Utc>) {
        let s = &self.svc;
        // Recorded first: a tick that was recorded never runs again, even after a restart.
        match s.store.record_schedule_tick(&entry.key, ferry_schedule::to_unix(tick)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(function_id = entry.key, "cannot record a schedule tick: {e}");
                return;
            }
        }
        if let Err(e) = submit_tick(s, &entry.key).await {
            tracing::warn!(function_id = entry.key, %tick, "scheduled run not started: {}", e.message());
        }
    }
}

/// Submits one scheduled run: an async call with no arguments.
async fn submit_tick(s: &ModalService, function_id: &str) -> Result<(), Status> {
    let record = s.store.function(function_id).await.or_status()?;
    let def = api::Function::decode(record.definition.unwrap_or_default().as_slice())
        .map_err(|e| Status::internal(format!("stored definition of {function_id} is unreadable: {e}")))?;
    let pickle = api::DataFormat::Pickle as i32;
    let (args, data_format) = if def.supported_input_formats.is_empty() || def.supported_input_formats.contains(&pickle) {
        (PICKLED_NO_ARGS, pickle)
    } else {
        (CBOR_NO_ARGS, api::DataFormat::Cbor as i32)
    };
    let payload = api::FunctionInput {
        args_oneof: Some(api::function_input::ArgsOneof::Args(args.to_vec())),
        data_format,
        ..Default::default()
    };
    let call_id = ferry_store::new_id("fc");
    let input = NewInput { idx: 0, payload: payload.encode_to_vec() };
    crate::launch::submit(s, &call_id, function_id, api::FunctionCallInvocationType::Async as i32, vec![input]).await.map(|_| ())
}

/// Starts the server's one schedule loop. Dropping or sending on the returned handle stops it.
pub(crate) fn spawn(svc: ModalService) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let wake = svc.store.schedules_changed();
    let handle = tokio::spawn(ferry_schedule::run(ScheduleHost { svc }, wake, async {
        let _ = stopped.await;
    }));
    (stop, handle)
}
