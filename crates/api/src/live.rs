//! The dashboard's view of the scheduler: containers, queued and running inputs, the most
//! recent answers with their status and traceback. Plain data, no wire types leave.

use ferry_dashboard::{ContainerView, FunctionLoad, InputView, Live};
use ferry_proto::api;
use prost::Message;

use crate::ModalService;

pub(crate) struct LiveState(pub ModalService);

impl Live for LiveState {
    fn containers(&self) -> Vec<ContainerView> {
        let s = &self.0.scheduler;
        s.all_tasks()
            .into_iter()
            .map(|t| {
                let held = s.inputs_held(&t.task_id);
                let state = if t.stopping { "stopping" } else if held > 0 { "running" } else { "idle" };
                ContainerView {
                    task_id: t.task_id,
                    app_id: t.app_id,
                    function_id: t.function_id,
                    started_at: t.started_at,
                    state: state.to_string(),
                    inputs_running: held,
                    failure: t.failure,
                }
            })
            .collect()
    }

    fn function_loads(&self) -> Vec<FunctionLoad> {
        self.0
            .scheduler
            .loads()
            .into_iter()
            .map(|(function_id, queued, running)| FunctionLoad { function_id, queued, running })
            .collect()
    }

    fn inputs(&self, function_id: &str, limit: usize) -> Vec<InputView> {
        let (queued, running, done) = self.0.scheduler.inputs_of_function(function_id, limit);
        let mut out = Vec::new();
        let waiting = |i: crate::scheduler::Input, status: &str, task_id: Option<String>| InputView {
            input_id: i.input_id,
            call_id: i.call_id,
            status: status.to_string(),
            retry_count: i.retry_count,
            task_id,
            finished_at: None,
            duration_s: i.taken_at.map(|t| t.elapsed().as_secs_f64()),
            exception: None,
            traceback: None,
        };
        out.extend(running.into_iter().map(|(task, i)| waiting(i, "running", Some(task))));
        out.extend(queued.into_iter().map(|i| waiting(i, "queued", None)));
        for o in done {
            let result = api::GenericResult::decode(o.result.as_slice()).unwrap_or_default();
            let status = api::generic_result::GenericStatus::try_from(result.status)
                .map(|s| s.as_str_name().trim_start_matches("GENERIC_STATUS_").to_lowercase())
                .unwrap_or_else(|_| "unknown".to_string());
            out.push(InputView {
                input_id: o.input_id,
                call_id: o.call_id,
                status,
                retry_count: o.retry_count,
                task_id: Some(o.task_id),
                finished_at: Some(o.finished_at),
                duration_s: o.duration.map(|d| d.as_secs_f64()),
                exception: (!result.exception.is_empty()).then_some(result.exception),
                traceback: (!result.traceback.is_empty()).then_some(result.traceback),
            });
        }
        out
    }

    fn stop_container(&self, task_id: &str) -> bool {
        let s = &self.0;
        if s.scheduler.task(task_id).is_none() {
            return false;
        }
        s.scheduler.preempt(task_id);
        s.scheduler.stop_task(task_id);
        s.launcher.kill(task_id);
        true
    }
}
