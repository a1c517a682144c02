//! Function calls, input queues and task bookkeeping.
//!
//! The scheduler moves opaque payloads: an input is the encoded `FunctionInput` as the caller
//! sent it, an output the encoded result the container sent. Only the RPC modules encode and
//! decode them, so this module could move into a crate of its own unchanged.
//!
//! State is in memory: calls in flight do not survive a server restart yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One input waiting for, or running in, a container.
#[derive(Clone, Debug)]
pub(crate) struct Input {
    pub input_id: String,
    pub call_id: String,
    pub idx: i32,
    pub payload: Vec<u8>,
    pub retry_count: u32,
    pub invocation_type: i32,
    /// When a container took it (for the per-attempt timeout).
    pub taken_at: Option<Instant>,
}

/// What a container reported for an input (or what the server concluded for it).
#[derive(Clone, Debug)]
pub(crate) struct Output {
    pub input_id: String,
    pub idx: i32,
    pub retry_count: u32,
    pub task_id: String,
    /// The encoded result (`GenericResult`) and its data format.
    pub result: Vec<u8>,
    pub data_format: i32,
    /// Wall-clock time of the answer, and how long the answering attempt ran.
    pub finished_at: f64,
    pub duration: Option<Duration>,
}

#[derive(Default)]
struct Call {
    function_id: String,
    num_inputs: usize,
    outputs: Vec<Output>,
    /// Generator items (encoded data chunks) by their index, in arrival order.
    data_out: Vec<(u64, Vec<u8>)>,
    done_inputs: HashSet<String>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct FunctionQueue {
    pending: VecDeque<Input>,
    changed: Arc<Notify>,
}

#[derive(Clone, Debug)]
pub(crate) struct TaskInfo {
    pub task_id: String,
    pub app_id: String,
    pub function_id: String,
    /// When the task last took or answered an input; scale-down counts idleness from here.
    pub last_active: Instant,
    /// Wall-clock start, for listings.
    pub started_at: f64,
    /// Stopped by an operator (`modal container stop`): its inputs run again elsewhere.
    pub preempted: bool,
    pub stopping: bool,
    /// Replaced by a newer version of its app: it finishes the inputs it holds before the
    /// exit grace period starts.
    pub draining: bool,
    /// A failure the container reported before serving (import or `@enter` error).
    pub failure: Option<String>,
}

#[derive(Default)]
struct State {
    calls: HashMap<String, Call>,
    queues: HashMap<String, FunctionQueue>,
    tasks: HashMap<String, TaskInfo>,
    /// Inputs a task has taken and not yet answered.
    running: HashMap<String, Vec<Input>>,
}

#[derive(Default, Clone)]
pub(crate) struct Scheduler {
    state: Arc<Mutex<State>>,
}

/// What `take_inputs` hands a container.
pub(crate) enum Work {
    Inputs(Vec<Input>),
    /// Nothing arrived within the poll: ask again.
    Nothing,
    /// The container should exit (scale-down or its app stopped).
    Stop,
}

impl Scheduler {
    pub(crate) fn new_call(&self, call_id: &str, function_id: &str) {
        let mut st = self.state.lock().unwrap();
        st.calls.entry(call_id.to_string()).or_insert_with(|| Call { function_id: function_id.to_string(), ..Default::default() });
    }

    pub(crate) fn call_info(&self, call_id: &str) -> Option<(String, usize)> {
        self.state.lock().unwrap().calls.get(call_id).map(|c| (c.function_id.clone(), c.num_inputs))
    }

    pub(crate) fn call_function(&self, call_id: &str) -> Option<String> {
        self.state.lock().unwrap().calls.get(call_id).map(|c| c.function_id.clone())
    }

    /// Queues inputs of a call; returns the function's queue length, its containers that have
    /// no input in hand, and all its containers, so the caller can decide whether to start one.
    pub(crate) fn enqueue(&self, function_id: &str, inputs: Vec<Input>) -> (usize, usize, usize) {
        let mut st = self.state.lock().unwrap();
        for i in &inputs {
            if let Some(c) = st.calls.get_mut(&i.call_id) {
                c.num_inputs += 1;
            }
        }
        let q = st.queues.entry(function_id.to_string()).or_default();
        q.pending.extend(inputs);
        q.changed.notify_waiters();
        let pending = q.pending.len();
        let (mut idle, mut total) = (0, 0);
        for t in st.tasks.values().filter(|t| t.function_id == function_id && !t.stopping) {
            total += 1;
            if st.running.get(&t.task_id).is_none_or(|r| r.is_empty()) {
                idle += 1;
            }
        }
        (pending, idle, total)
    }

    pub(crate) fn register_task(&self, info: TaskInfo) {
        self.state.lock().unwrap().tasks.insert(info.task_id.clone(), info);
    }

    pub(crate) fn set_failure(&self, task_id: &str, failure: String) {
        if let Some(t) = self.state.lock().unwrap().tasks.get_mut(task_id) {
            t.failure = Some(failure);
        }
    }

    pub(crate) fn task(&self, task_id: &str) -> Option<TaskInfo> {
        self.state.lock().unwrap().tasks.get(task_id).cloned()
    }

    pub(crate) fn tasks_of_app(&self, app_id: &str) -> Vec<TaskInfo> {
        self.state.lock().unwrap().tasks.values().filter(|t| t.app_id == app_id).cloned().collect()
    }

    pub(crate) fn all_tasks(&self) -> Vec<TaskInfo> {
        self.state.lock().unwrap().tasks.values().cloned().collect()
    }

    pub(crate) fn preempt(&self, task_id: &str) {
        if let Some(t) = self.state.lock().unwrap().tasks.get_mut(task_id) {
            t.preempted = true;
        }
    }

    pub(crate) fn tasks_of_function(&self, function_id: &str) -> usize {
        self.state.lock().unwrap().tasks.values().filter(|t| t.function_id == function_id).count()
    }

    /// Asks a task's container to exit at its next poll.
    pub(crate) fn stop_task(&self, task_id: &str) {
        let mut st = self.state.lock().unwrap();
        let function_id = match st.tasks.get_mut(task_id) {
            Some(t) => {
                t.stopping = true;
                t.function_id.clone()
            }
            None => return,
        };
        if let Some(q) = st.queues.get(&function_id) {
            q.changed.notify_waiters();
        }
    }

    /// Asks a task's container to exit once the inputs it holds are answered; it takes no new
    /// ones, and new inputs start containers of the new version.
    pub(crate) fn drain_task(&self, task_id: &str) {
        if let Some(t) = self.state.lock().unwrap().tasks.get_mut(task_id) {
            t.draining = true;
        }
        self.stop_task(task_id);
    }

    /// Hands a polling container up to `max` inputs, waiting up to `poll` for one. A container
    /// idle for longer than `idle_limit` is told to stop.
    /// With `linger`, a batch that is not full waits that long for more inputs (`@modal.batched`).
    pub(crate) async fn take_inputs(&self, task_id: &str, max: usize, linger: Duration, poll: Duration, idle_limit: Duration) -> Work {
        let deadline = tokio::time::Instant::now() + poll;
        let mut linger_until: Option<tokio::time::Instant> = None;
        let changed = {
            let mut st = self.state.lock().unwrap();
            let Some(task) = st.tasks.get(task_id).cloned() else { return Work::Stop };
            st.queues.entry(task.function_id).or_default().changed.clone()
        };
        loop {
            // Register for wake-ups before looking, so a put in between is not missed.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut wait_for_batch = None;
            {
                let mut st = self.state.lock().unwrap();
                let Some(task) = st.tasks.get(task_id).cloned() else { return Work::Stop };
                if task.stopping {
                    return Work::Stop;
                }
                let q = st.queues.entry(task.function_id.clone()).or_default();
                if !q.pending.is_empty() && q.pending.len() < max && !linger.is_zero() {
                    let until = *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    if tokio::time::Instant::now() < until {
                        wait_for_batch = Some(until);
                    }
                }
                if wait_for_batch.is_none() && !q.pending.is_empty() {
                    let n = max.max(1).min(q.pending.len());
                    let now = Instant::now();
                    let taken: Vec<Input> = q.pending.drain(..n).map(|mut i| {
                        i.taken_at = Some(now);
                        i
                    }).collect();
                    st.running.entry(task_id.to_string()).or_default().extend(taken.iter().cloned());
                    if let Some(t) = st.tasks.get_mut(task_id) {
                        t.last_active = Instant::now();
                    }
                    return Work::Inputs(taken);
                }
                let busy = st.running.get(task_id).is_some_and(|r| !r.is_empty());
                if wait_for_batch.is_none() && !busy && task.last_active.elapsed() >= idle_limit {
                    return Work::Stop;
                }
            }
            if let Some(until) = wait_for_batch {
                let _ = tokio::time::timeout_at(until, notified).await;
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Work::Nothing;
            }
        }
    }

    /// Records a task's output for an input it holds; each input is answered once. Returns
    /// false when the task does not hold that input.
    pub(crate) fn complete(&self, task_id: &str, input_id: &str, result: Vec<u8>, data_format: i32) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(running) = st.running.get_mut(task_id) else { return false };
        let Some(pos) = running.iter().position(|i| i.input_id == input_id) else { return false };
        let input = running.remove(pos);
        if let Some(t) = st.tasks.get_mut(task_id) {
            t.last_active = Instant::now();
        }
        Self::record(&mut st, input, task_id, result, data_format);
        true
    }

    /// Takes back an input a task holds (to retry it), without answering it.
    pub(crate) fn take_back(&self, task_id: &str, input_id: &str) -> Option<Input> {
        let mut st = self.state.lock().unwrap();
        let running = st.running.get_mut(task_id)?;
        let pos = running.iter().position(|i| i.input_id == input_id)?;
        Some(running.remove(pos))
    }

    /// Queues an input again for another attempt (it already counts towards its call).
    pub(crate) fn requeue(&self, function_id: &str, mut input: Input) {
        input.retry_count += 1;
        input.taken_at = None;
        let mut st = self.state.lock().unwrap();
        let q = st.queues.entry(function_id.to_string()).or_default();
        q.pending.push_back(input);
        q.changed.notify_waiters();
    }

    /// How long the task's longest-running input has been running.
    pub(crate) fn longest_running(&self, task_id: &str) -> Option<Duration> {
        let st = self.state.lock().unwrap();
        st.running.get(task_id)?.iter().filter_map(|i| i.taken_at).map(|t| t.elapsed()).max()
    }

    /// Answers inputs the server gave up on (their container died) with a failure result.
    pub(crate) fn fail(&self, inputs: Vec<Input>, task_id: &str, result: Vec<u8>) {
        if inputs.is_empty() {
            return;
        }
        let mut st = self.state.lock().unwrap();
        for input in inputs {
            Self::record(&mut st, input, task_id, result.clone(), 0);
        }
    }

    /// Answers an input that is no longer held by any task (after its last attempt).
    pub(crate) fn finish(&self, input: Input, task_id: &str, result: Vec<u8>, data_format: i32) {
        let mut st = self.state.lock().unwrap();
        Self::record(&mut st, input, task_id, result, data_format);
    }

    /// The answer to an input; each input is answered once (a late duplicate is dropped).
    fn record(st: &mut State, input: Input, task_id: &str, result: Vec<u8>, data_format: i32) {
        let output = Output {
            input_id: input.input_id,
            idx: input.idx,
            retry_count: input.retry_count,
            task_id: task_id.to_string(),
            result,
            data_format,
            finished_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            duration: input.taken_at.map(|t| t.elapsed()),
        };
        if let Some(c) = st.calls.get_mut(&input.call_id) {
            if c.done_inputs.insert(output.input_id.clone()) {
                c.outputs.push(output);
                c.changed.notify_waiters();
            }
        }
    }

    /// Forgets a task; returns the inputs it had taken and not answered.
    pub(crate) fn remove_task(&self, task_id: &str) -> (Option<TaskInfo>, Vec<Input>) {
        let mut st = self.state.lock().unwrap();
        let info = st.tasks.remove(task_id);
        (info, st.running.remove(task_id).unwrap_or_default())
    }

    /// Inputs still queued for a function, removed (to fail them when no container can run).
    pub(crate) fn drain_pending(&self, function_id: &str) -> Vec<Input> {
        let mut st = self.state.lock().unwrap();
        st.queues.get_mut(function_id).map(|q| q.pending.drain(..).collect()).unwrap_or_default()
    }

    /// Forgets a call whose caller has its answer (web requests, which nobody asks about again).
    pub(crate) fn forget_call(&self, call_id: &str) {
        self.state.lock().unwrap().calls.remove(call_id);
    }

    /// Appends generator items a container produced for a call.
    pub(crate) fn put_data_out(&self, call_id: &str, chunks: Vec<(u64, Vec<u8>)>) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(c) = st.calls.get_mut(call_id) else { return false };
        for (index, chunk) in chunks {
            if !c.data_out.iter().any(|(i, _)| *i == index) {
                c.data_out.push((index, chunk));
            }
        }
        c.data_out.sort_by_key(|(i, _)| *i);
        c.changed.notify_waiters();
        true
    }

    /// Generator items with an index above `after`, waiting up to `timeout` for one.
    pub(crate) async fn data_out(&self, call_id: &str, after: u64, timeout: Duration) -> Option<Vec<(u64, Vec<u8>)>> {
        self.watch_call(call_id, timeout, |c, last_look| {
            let found: Vec<(u64, Vec<u8>)> = c.data_out.iter().filter(|(i, _)| *i > after).cloned().collect();
            (!found.is_empty() || last_look).then_some(found)
        })
        .await
    }

    /// Outputs of a call after `cursor` (a count of outputs already returned), or within an
    /// index range; waits up to `timeout` for one. Returns the outputs, the new cursor and the
    /// number of inputs still unanswered.
    pub(crate) async fn outputs(&self, call_id: &str, cursor: usize, range: Option<(i32, i32)>, timeout: Duration) -> Option<(Vec<Output>, usize, usize)> {
        self.watch_call(call_id, timeout, |c, last_look| {
            let unfinished = c.num_inputs.saturating_sub(c.outputs.len());
            let found: Vec<Output> = match range {
                Some((lo, hi)) => c.outputs.iter().filter(|o| o.idx >= lo && o.idx <= hi).cloned().collect(),
                None => c.outputs.get(cursor.min(c.outputs.len())..).map(|s| s.to_vec()).unwrap_or_default(),
            };
            let next = if range.is_some() { cursor } else { c.outputs.len() };
            (!found.is_empty() || last_look).then_some((found, next, unfinished))
        })
        .await
    }

    /// How many inputs a task holds now.
    pub(crate) fn inputs_held(&self, task_id: &str) -> usize {
        self.state.lock().unwrap().running.get(task_id).map_or(0, |r| r.len())
    }

    /// Queued and running inputs by function, for the dashboard and `/metrics`.
    pub(crate) fn loads(&self) -> Vec<(String, usize, usize)> {
        let st = self.state.lock().unwrap();
        let mut by_fn: HashMap<&str, (usize, usize)> = HashMap::new();
        for (fid, q) in &st.queues {
            by_fn.entry(fid).or_default().0 += q.pending.len();
        }
        for (task_id, inputs) in &st.running {
            if let Some(t) = st.tasks.get(task_id) {
                by_fn.entry(&t.function_id).or_default().1 += inputs.len();
            }
        }
        by_fn.into_iter().map(|(f, (q, r))| (f.to_string(), q, r)).collect()
    }

    /// A function's inputs this server remembers: queued, running (with the task holding
    /// them), and answered (newest answers first), at most `limit` answered ones.
    pub(crate) fn inputs_of_function(&self, function_id: &str, limit: usize) -> (Vec<Input>, Vec<(String, Input)>, Vec<(String, Output)>) {
        let st = self.state.lock().unwrap();
        let queued = st.queues.get(function_id).map(|q| q.pending.iter().cloned().collect()).unwrap_or_default();
        let mut running = Vec::new();
        for (task_id, inputs) in &st.running {
            if st.tasks.get(task_id).is_some_and(|t| t.function_id == function_id) {
                running.extend(inputs.iter().map(|i| (task_id.clone(), i.clone())));
            }
        }
        let mut done: Vec<(String, Output)> = st
            .calls
            .iter()
            .filter(|(_, c)| c.function_id == function_id)
            .flat_map(|(call_id, c)| c.outputs.iter().map(move |o| (call_id.clone(), o.clone())))
            .collect();
        done.sort_by(|a, b| b.1.finished_at.total_cmp(&a.1.finished_at));
        done.truncate(limit);
        (queued, running, done)
    }

    /// Looks at a call until `look` answers, waking on each change to the call. `look` is told
    /// when the timeout has passed and must answer then. None when the call is unknown.
    async fn watch_call<T>(&self, call_id: &str, timeout: Duration, mut look: impl FnMut(&Call, bool) -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let changed = self.state.lock().unwrap().calls.get(call_id)?.changed.clone();
        loop {
            // Register for wake-ups before looking, so a change in between is not missed.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock().unwrap();
                let c = st.calls.get(call_id)?;
                if let Some(answer) = look(c, tokio::time::Instant::now() >= deadline) {
                    return Some(answer);
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}
