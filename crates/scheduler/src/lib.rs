//! Function calls, input queues and task assignments, durable through `ferry-store`.
//!
//! The scheduler moves opaque payloads: an input is the encoded `FunctionInput` as the caller
//! sent it, an answer the encoded result. Only the protocol adapter encodes and decodes them.
//!
//! # One state machine per input
//!
//! ```text
//!            take                answer (success)
//!  queued ─────────► running ───────────────────────► done
//!    ▲  ▲              │ │      answer (failure, no retries left)
//!    │  │   retrying   │ └──────────────────────────► failed
//!    │  └──(backoff)───┘  failure with retries left
//!    │                 │
//!    └─────────────────┘  container preempted / server restart
//!  queued, running, retrying ──cancel / app stop──► cancelled
//! ```
//!
//! The store holds the durable part: an input row is `queued` until it is answered, then
//! `done`, `failed` or `cancelled` with its result (`retrying` writes the new attempt count).
//! `running` lives only in memory: it is exactly what a restart must undo, so after a crash
//! every input that was running is queued again and runs again (at least once, as on Modal).
//! An input is answered once: only the holder of an input (the queue, a task, or a retry
//! timer) can answer it, and the store ignores a second answer.
//!
//! Every write goes through one writer task that commits whatever is waiting in one transaction
//! (group commit). A new call's inputs are queued while their commit is in flight (the caller
//! learns the call only once it committed). Answers become visible to callers only after their
//! transaction committed, except the answer of a synchronous call's only input (`.remote()`, a
//! web request): its caller gets it at once and the answer commits with the next write somebody
//! waits for, so a warm `.remote()` has one commit on its path, not two (a crash before that
//! commit runs the input again, as for any input that was running).
//! Memory holds the work in flight: queued and running inputs (payloads up to a budget, then
//! read back from the store when a container takes them) and calls with a caller waiting or
//! inputs unanswered. Answers are read from the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_store::{AnswerRecord, CallWrite, Store, WriteOutcome};
use tokio::sync::{mpsc, oneshot, Notify};

mod replica;
pub use replica::ReplicaOptions;

/// Modal's limits on inputs waiting for a container, per function: synchronous calls
/// (`.remote()`, `.map()`) may have 2,000 waiting and 25,000 in flight, `.spawn()`ed ones
/// 1,000,000 waiting.
pub const MAX_PENDING_SYNC: usize = 2_000;
pub const MAX_IN_FLIGHT_SYNC: usize = 25_000;
pub const MAX_PENDING_ASYNC: usize = 1_000_000;
/// How long answers of calls are kept: Modal keeps results of spawned calls for 7 days.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bytes of queued payloads kept in memory; beyond, payloads are read back from the store.
const QUEUED_PAYLOAD_BUDGET: usize = 64 << 20;
/// A call with nothing in flight and nobody waiting leaves memory after this long.
const CALL_IDLE: Duration = Duration::from_secs(30);
/// Answers per function the dashboard can list (summaries, kept in memory).
const RECENT_ANSWERS: usize = 50;
/// Most writes one transaction takes.
const MAX_BATCH: usize = 4096;
/// How long writes nobody waits for wait for company before their commit.
const LINGER: Duration = Duration::from_millis(20);
/// Most answers one `outputs` call returns.
const MAX_OUTPUTS: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    /// A limit on waiting inputs was reached (RESOURCE_EXHAUSTED; the client retries maps).
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Store(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One input waiting for, or running in, a container.
#[derive(Clone, Debug)]
pub struct Input {
    pub input_id: String,
    pub call_id: String,
    pub idx: i32,
    pub payload: Vec<u8>,
    pub retry_count: u32,
    pub invocation_type: i32,
    /// When a container took it (for the per-attempt timeout).
    pub taken_at: Option<Instant>,
}

/// A new input of a call: its index in the call and its encoded payload.
pub struct NewInput {
    pub idx: i32,
    pub payload: Vec<u8>,
}

/// How an input ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    /// Failed by running past the function's timeout (counted apart from other failures).
    TimedOut,
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timeout",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// An answer as the caller reads it.
#[derive(Clone, Debug)]
pub struct Output {
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
    /// The answer's place in the order of answers (the caller's cursor).
    pub seq: i64,
}

/// A summary of a recent answer, for the dashboard.
#[derive(Clone, Debug)]
pub struct AnswerSummary {
    pub input_id: String,
    pub call_id: String,
    pub retry_count: u32,
    pub task_id: String,
    pub result: Vec<u8>,
    pub finished_at: f64,
    pub duration: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct TaskInfo {
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
    /// The input (and its call) the task took last, when it took one at a time: what its
    /// output is attributed to until it takes the next.
    pub last_input: Option<(String, String)>,
}

impl TaskInfo {
    pub fn new(task_id: &str, app_id: &str, function_id: &str, started_at: f64) -> Self {
        TaskInfo {
            task_id: task_id.to_string(),
            app_id: app_id.to_string(),
            function_id: function_id.to_string(),
            last_active: Instant::now(),
            started_at,
            preempted: false,
            stopping: false,
            draining: false,
            failure: None,
            last_input: None,
        }
    }
}

/// What `take_inputs` hands a container.
pub enum Work {
    Inputs(Vec<Input>),
    /// Nothing arrived within the poll: ask again.
    Nothing,
    /// The container should exit (scale-down or its app stopped).
    Stop,
}

/// What `outputs` found for a caller.
pub struct Outputs {
    pub outputs: Vec<Output>,
    /// The cursor to send next time.
    pub cursor: i64,
    pub num_unfinished: usize,
}

/// A call as `FunctionCallFromId` reports it.
pub struct CallSummary {
    pub function_id: String,
    pub num_inputs: usize,
    pub cancelled: bool,
}

/// An input in a queue or a task; the payload may wait in the store.
struct Pending {
    input_id: String,
    call_id: String,
    function_id: String,
    idx: i32,
    payload: Option<Vec<u8>>,
    retry_count: u32,
    invocation_type: i32,
    is_async: bool,
    taken_at: Option<Instant>,
}

impl Pending {
    /// A new input of a call, waiting and never tried; its payload is kept beside it.
    fn new(input_id: String, call_id: &str, function_id: &str, idx: i32, invocation_type: i32, is_async: bool) -> Self {
        Pending {
            input_id,
            call_id: call_id.to_string(),
            function_id: function_id.to_string(),
            idx,
            payload: None,
            retry_count: 0,
            invocation_type,
            is_async,
            taken_at: None,
        }
    }

    fn to_input(&self) -> Input {
        Input {
            input_id: self.input_id.clone(),
            call_id: self.call_id.clone(),
            idx: self.idx,
            payload: self.payload.clone().unwrap_or_default(),
            retry_count: self.retry_count,
            invocation_type: self.invocation_type,
            taken_at: self.taken_at,
        }
    }
}

struct CallEntry {
    function_id: String,
    invocation_type: i32,
    num_inputs: usize,
    answered: usize,
    last_seq: i64,
    cancelled: bool,
    has_data_out: bool,
    changed: Arc<Notify>,
    touched: Instant,
    /// Answers shown before their commit (see [`Scheduler::answer`]); they leave once committed.
    early: Vec<Output>,
}

#[derive(Default)]
struct FunctionQueue {
    pending: VecDeque<Pending>,
    sync_pending: usize,
    async_pending: usize,
    /// Synchronous inputs queued or running.
    sync_in_flight: usize,
    changed: Arc<Notify>,
    recent: VecDeque<AnswerSummary>,
}

/// Appends the rows of a batch of new inputs of `call_id` to `writes`; returns their new ids,
/// in the batch's order.
fn input_writes(call_id: &str, function_id: &str, inputs: &[NewInput], now: f64, writes: &mut Vec<CallWrite>) -> Vec<String> {
    let ids: Vec<String> = inputs.iter().map(|_| ferry_store::new_id("in")).collect();
    writes.extend(inputs.iter().zip(&ids).map(|(input, id)| CallWrite::Input {
        id: id.clone(),
        call_id: call_id.to_string(),
        function_id: function_id.to_string(),
        idx: input.idx,
        payload: input.payload.clone(),
        created_at: now,
    }));
    ids
}

impl FunctionQueue {
    /// Takes `call_id`'s queued inputs out of the queue, in order, with the queue's counts and
    /// the memory held by queued payloads (`queued_payload_bytes`) kept true.
    fn take_call(&mut self, call_id: &str, queued_payload_bytes: &mut usize) -> Vec<Pending> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for p in self.pending.drain(..) {
            if p.call_id != call_id {
                kept.push_back(p);
                continue;
            }
            if p.is_async {
                self.async_pending -= 1;
            } else {
                self.sync_pending -= 1;
            }
            *queued_payload_bytes -= p.payload.as_ref().map_or(0, |b| b.len());
            taken.push(p);
        }
        self.pending = kept;
        taken
    }
}

#[derive(Default)]
struct State {
    calls: HashMap<String, CallEntry>,
    queues: HashMap<String, FunctionQueue>,
    tasks: HashMap<String, TaskInfo>,
    /// Inputs a task has taken and not yet answered.
    running: HashMap<String, Vec<Pending>>,
    /// Inputs a task runs whose calls were cancelled, to tell it at its next heartbeat.
    cancelled_running: HashMap<String, Vec<String>>,
    queued_payload_bytes: usize,
}

/// What the writer calls once a job's transaction committed (or failed).
type Reply = Box<dyn FnOnce(std::result::Result<Vec<WriteOutcome>, String>) + Send>;

struct Job {
    writes: Vec<CallWrite>,
    reply: Option<Reply>,
    /// Somebody waits for this commit: it goes at once, with whatever else is waiting.
    /// Other jobs wait up to [`LINGER`] for an urgent one to share its commit.
    urgent: bool,
}

struct Inner {
    store: Store,
    state: Mutex<State>,
    writes: mpsc::UnboundedSender<Job>,
    /// Answer sequence numbers; taken under the state lock together with the job's place in
    /// the writer's queue, so answers commit in the order of their numbers.
    seq: AtomicI64,
    /// Calls in memory that another replica owns, with their owner (`replica.rs`).
    foreign: Mutex<HashMap<String, String>>,
    /// Notified when an adoption or a handoff queued inputs here, or another replica cancelled
    /// a call with inputs here (`replica.rs`).
    adopted: Arc<Notify>,
    cancelled_elsewhere: Mutex<Vec<(String, String)>>,
}

/// The scheduler handle the server shares. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Opens the scheduler over `store`: queues again every input that was not answered before
    /// the last stop (those that were running run again). Returns the functions that have
    /// inputs waiting, so the caller can start containers for them. Must run in a tokio runtime.
    pub async fn open(store: Store) -> Result<(Scheduler, Vec<String>)> {
        let options = ReplicaOptions::local(&store, "", ReplicaOptions::default().lease);
        Self::open_replica(store, options).await
    }

    /// Opens the scheduler as one replica of several on a shared database (`replica.rs`): it
    /// registers with a lease and queues again only the unanswered inputs of the calls it
    /// owns, those of its predecessor on the same data dir and those of calls nobody owns.
    pub async fn open_replica(store: Store, options: ReplicaOptions) -> Result<(Scheduler, Vec<String>)> {
        let queued = replica::register(&store, &ferry_store::new_id("rp"), &options).await?;
        let last = store.last_answer_seq().await.map_err(|e| Error::Store(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store.clone(), rx));
        let s = Scheduler {
            inner: Arc::new(Inner {
                store: store.clone(),
                state: Mutex::default(),
                writes: tx,
                seq: AtomicI64::new(last),
                foreign: Mutex::default(),
                adopted: Arc::default(),
                cancelled_elsewhere: Mutex::default(),
            }),
        };
        let functions = s.queue_records(queued, false);
        s.spawn_membership(options);
        if !functions.is_empty() {
            tracing::info!("queued again the unanswered inputs of {} functions from before the restart", functions.len());
        }
        let sweeper = s.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut rounds = 0u64;
            loop {
                tick.tick().await;
                sweeper.forget_idle_calls();
                rounds += 1;
                if rounds % 60 == 1 {
                    sweeper.expire(ferry_store::now() - RETENTION.as_secs_f64()).await;
                }
            }
        });
        Ok((s, functions))
    }

    fn push_pending(st: &mut State, function_id: &str, mut p: Pending, payload: Option<Vec<u8>>) {
        if let Some(bytes) = payload {
            if st.queued_payload_bytes + bytes.len() <= QUEUED_PAYLOAD_BUDGET {
                st.queued_payload_bytes += bytes.len();
                p.payload = Some(bytes);
            }
        }
        let q = st.queues.entry(function_id.to_string()).or_default();
        if p.is_async {
            q.async_pending += 1;
        } else {
            q.sync_pending += 1;
            q.sync_in_flight += 1;
        }
        q.pending.push_back(p);
        q.changed.notify_waiters();
    }

    fn push_pending_in_memory(st: &mut State, function_id: &str, mut p: Pending, payload: Vec<u8>) {
        st.queued_payload_bytes += payload.len();
        p.payload = Some(payload);
        Self::push_pending(st, function_id, p, None);
    }

    /// Sends writes to the group-commit writer and waits for their transaction.
    async fn write(&self, writes: Vec<CallWrite>) -> Result<Vec<WriteOutcome>> {
        let rx = self.send_urgent(writes)?;
        Self::committed(rx).await
    }

    /// Queues writes somebody will wait for; the receiver gets the commit's outcome.
    fn send_urgent(&self, writes: Vec<CallWrite>) -> Result<oneshot::Receiver<std::result::Result<Vec<WriteOutcome>, String>>> {
        let (tx, rx) = oneshot::channel();
        let reply: Reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.inner.writes.send(Job { writes, reply: Some(reply), urgent: true }).map_err(|_| Error::Store("the scheduler's writer stopped".into()))?;
        Ok(rx)
    }

    async fn committed(rx: oneshot::Receiver<std::result::Result<Vec<WriteOutcome>, String>>) -> Result<Vec<WriteOutcome>> {
        rx.await.map_err(|_| Error::Store("the scheduler's writer stopped".into()))?.map_err(Error::Store)
    }

    /// Commits every write queued so far (answers already shown included); for a graceful stop.
    pub async fn flush(&self) -> Result<()> {
        self.write(Vec::new()).await.map(|_| ())
    }

    /// Sends writes without waiting (their effect is not promised to anyone yet).
    fn write_later(&self, writes: Vec<CallWrite>) {
        let _ = self.inner.writes.send(Job { writes, reply: None, urgent: false });
    }

    /// Creates the call `call_id` with its first inputs (durable before this returns). Returns
    /// each input's id by index.
    ///
    /// The inputs are queued while their transaction commits, so a container may start on them
    /// at once (the call is new: none of its inputs can exist already). The caller learns the
    /// call only after the commit, so nothing it was told of can be lost; an input that ran
    /// before a crash prevented the commit was never acknowledged.
    pub async fn create_call(&self, call_id: &str, function_id: &str, invocation_type: i32, inputs: Vec<NewInput>) -> Result<Vec<(i32, String)>> {
        let is_async = is_async(invocation_type);
        let now = ferry_store::now();
        let mut writes = Vec::with_capacity(inputs.len() + 1);
        writes.push(CallWrite::Call { id: call_id.to_string(), function_id: function_id.to_string(), invocation_type, created_at: now });
        let ids = input_writes(call_id, function_id, &inputs, now, &mut writes);
        let rx = {
            let mut st = self.inner.state.lock().unwrap();
            Self::check_limits(&st, function_id, is_async, inputs.len())?;
            let rx = self.send_urgent(writes)?;
            st.calls.insert(
                call_id.to_string(),
                CallEntry {
                    function_id: function_id.to_string(),
                    invocation_type,
                    num_inputs: inputs.len(),
                    answered: 0,
                    last_seq: 0,
                    cancelled: false,
                    has_data_out: false,
                    changed: Arc::default(),
                    touched: Instant::now(),
                    early: Vec::new(),
                },
            );
            for (input, id) in inputs.iter().zip(&ids) {
                let p = Pending::new(id.clone(), call_id, function_id, input.idx, invocation_type, is_async);
                // Its row may not be committed yet: the payload stays in memory whatever the budget.
                Self::push_pending_in_memory(&mut st, function_id, p, input.payload.clone());
            }
            rx
        };
        match Self::committed(rx).await {
            Ok(_) => Ok(inputs.iter().zip(ids).map(|(i, id)| (i.idx, id)).collect()),
            Err(e) => {
                // Not recorded: take back what no container took yet; answers of the others are
                // ignored by the store (their rows do not exist).
                let mut guard = self.inner.state.lock().unwrap();
                let st = &mut *guard;
                st.calls.remove(call_id);
                if let Some(q) = st.queues.get_mut(function_id) {
                    for p in q.take_call(call_id, &mut st.queued_payload_bytes) {
                        if !p.is_async {
                            q.sync_in_flight = q.sync_in_flight.saturating_sub(1);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Modal's limits on waiting inputs, for `n` more inputs of a function.
    fn check_limits(st: &State, function_id: &str, is_async: bool, n: usize) -> Result<()> {
        let Some(q) = st.queues.get(function_id) else { return Ok(()) };
        if is_async && q.async_pending + n > MAX_PENDING_ASYNC {
            return Err(Error::Exhausted(format!(
                "Function has {} spawned inputs waiting, the limit is {MAX_PENDING_ASYNC}; retry later",
                q.async_pending
            )));
        }
        if !is_async && (q.sync_pending + n > MAX_PENDING_SYNC || q.sync_in_flight + n > MAX_IN_FLIGHT_SYNC) {
            return Err(Error::Exhausted(format!(
                "Function has {} pending and {} in-flight synchronous inputs, the limits are {MAX_PENDING_SYNC} pending and {MAX_IN_FLIGHT_SYNC} in flight; retry later",
                q.sync_pending, q.sync_in_flight
            )));
        }
        Ok(())
    }

    /// Adds inputs to a call (a map's later batches). An input whose index the call already
    /// has keeps its id (a retried request).
    /// Returns the call's function and each input's id by index.
    pub async fn add_inputs(&self, call_id: &str, inputs: Vec<NewInput>) -> Result<(String, Vec<(i32, String)>)> {
        let (function_id, invocation_type, cancelled) = self.load_call(call_id).await?;
        if cancelled {
            return Err(Error::Cancelled(format!("function call {call_id} was cancelled")));
        }
        if self.is_foreign(call_id) {
            // Another replica owns the call: it runs these too (`replica.rs`).
            let ids = self.put_foreign(call_id, &function_id, invocation_type, inputs).await?;
            return Ok((function_id, ids));
        }
        let ids = self.put(call_id, &function_id, invocation_type, inputs).await?;
        Ok((function_id, ids))
    }

    async fn put(&self, call_id: &str, function_id: &str, invocation_type: i32, inputs: Vec<NewInput>) -> Result<Vec<(i32, String)>> {
        let is_async = is_async(invocation_type);
        Self::check_limits(&self.inner.state.lock().unwrap(), function_id, is_async, inputs.len())?;
        let now = ferry_store::now();
        let mut writes: Vec<CallWrite> = Vec::with_capacity(inputs.len());
        let ids = input_writes(call_id, function_id, &inputs, now, &mut writes);
        let outcomes = self.write(writes).await?;
        let mut answer = Vec::with_capacity(inputs.len());
        let mut st = self.inner.state.lock().unwrap();
        let mut added = 0;
        for (i, input) in inputs.into_iter().enumerate() {
            match &outcomes[i] {
                WriteOutcome::Existing(id) => answer.push((input.idx, id.clone())),
                _ => {
                    answer.push((input.idx, ids[i].clone()));
                    added += 1;
                    let p = Pending::new(ids[i].clone(), call_id, function_id, input.idx, invocation_type, is_async);
                    Self::push_pending(&mut st, function_id, p, Some(input.payload));
                }
            }
        }
        if let Some(c) = st.calls.get_mut(call_id) {
            c.num_inputs += added;
            c.touched = Instant::now();
        }
        Ok(answer)
    }

    /// The call's function, invocation type and whether it was cancelled; loads the call from
    /// the store when it is not in memory.
    async fn load_call(&self, call_id: &str) -> Result<(String, i32, bool)> {
        if let Some(c) = self.inner.state.lock().unwrap().calls.get_mut(call_id) {
            c.touched = Instant::now();
            return Ok((c.function_id.clone(), c.invocation_type, c.cancelled));
        }
        let rec = self
            .inner
            .store
            .call(call_id)
            .await
            .map_err(|e| Error::Store(e.to_string()))?
            .ok_or_else(|| Error::NotFound(format!("function call {call_id} not found (its results expired, or it never existed)")))?;
        let found = {
            let mut st = self.inner.state.lock().unwrap();
            let c = st.calls.entry(call_id.to_string()).or_insert_with(|| CallEntry {
                function_id: rec.function_id.clone(),
                invocation_type: rec.invocation_type,
                num_inputs: rec.num_inputs,
                answered: rec.num_inputs - rec.num_unfinished,
                last_seq: rec.last_seq,
                cancelled: rec.cancelled,
                has_data_out: rec.has_data_out,
                changed: Arc::default(),
                touched: Instant::now(),
                early: Vec::new(),
            });
            (c.function_id.clone(), c.invocation_type, c.cancelled)
        };
        self.loaded_call(call_id, rec.last_seq).await;
        Ok(found)
    }

    /// The call's function and number of inputs.
    pub async fn call(&self, call_id: &str) -> Result<CallSummary> {
        let (function_id, _, cancelled) = self.load_call(call_id).await?;
        let num_inputs = self.inner.state.lock().unwrap().calls.get(call_id).map_or(0, |c| c.num_inputs);
        Ok(CallSummary { function_id, num_inputs, cancelled })
    }

    pub fn register_task(&self, info: TaskInfo) {
        self.inner.state.lock().unwrap().tasks.insert(info.task_id.clone(), info);
    }

    /// Registers up to `wanted` new tasks for a function whose containers must not exceed
    /// `max` in total, atomically with the count (a burst of calls cannot overshoot `max`).
    /// `plan` gets (queued inputs, containers without an input, all containers) and answers
    /// how many containers the function should have.
    pub fn reserve_tasks(&self, function_id: &str, app_id: &str, max: usize, plan: impl FnOnce(usize, usize, usize) -> usize) -> Vec<String> {
        let mut st = self.inner.state.lock().unwrap();
        let pending = st.queues.get(function_id).map_or(0, |q| q.pending.len());
        let (mut idle, mut total) = (0, 0);
        for t in st.tasks.values().filter(|t| t.function_id == function_id && !t.stopping) {
            total += 1;
            if st.running.get(&t.task_id).is_none_or(|r| r.is_empty()) {
                idle += 1;
            }
        }
        let all = st.tasks.values().filter(|t| t.function_id == function_id).count();
        let target = plan(pending, idle, total).min(max);
        let n = target.saturating_sub(total).min(max.saturating_sub(all));
        let now = ferry_store::now();
        (0..n)
            .map(|_| {
                let id = ferry_store::new_id("ta");
                st.tasks.insert(id.clone(), TaskInfo::new(&id, app_id, function_id, now));
                id
            })
            .collect()
    }

    pub fn set_failure(&self, task_id: &str, failure: String) {
        if let Some(t) = self.inner.state.lock().unwrap().tasks.get_mut(task_id) {
            t.failure = Some(failure);
        }
    }

    pub fn task(&self, task_id: &str) -> Option<TaskInfo> {
        self.inner.state.lock().unwrap().tasks.get(task_id).cloned()
    }

    /// The input (and its call) a task's output belongs to right now: the one it runs, or when
    /// it runs none the one it ran last; None while it runs several at once.
    pub fn current_input(&self, task_id: &str) -> Option<(String, String)> {
        let st = self.inner.state.lock().unwrap();
        match st.running.get(task_id).map(|r| r.as_slice()) {
            Some([one]) => Some((one.input_id.clone(), one.call_id.clone())),
            Some([_, _, ..]) => None,
            _ => st.tasks.get(task_id).and_then(|t| t.last_input.clone()),
        }
    }

    pub fn tasks_of_app(&self, app_id: &str) -> Vec<TaskInfo> {
        self.inner.state.lock().unwrap().tasks.values().filter(|t| t.app_id == app_id).cloned().collect()
    }

    pub fn all_tasks(&self) -> Vec<TaskInfo> {
        self.inner.state.lock().unwrap().tasks.values().cloned().collect()
    }

    pub fn preempt(&self, task_id: &str) {
        if let Some(t) = self.inner.state.lock().unwrap().tasks.get_mut(task_id) {
            t.preempted = true;
        }
    }

    /// Counts a task as active now (it served a request that bypasses inputs), so scale-down
    /// measures its idleness from here.
    pub fn touch(&self, task_id: &str) {
        if let Some(t) = self.inner.state.lock().unwrap().tasks.get_mut(task_id) {
            t.last_active = Instant::now();
        }
    }

    pub fn tasks_of_function(&self, function_id: &str) -> usize {
        self.inner.state.lock().unwrap().tasks.values().filter(|t| t.function_id == function_id).count()
    }

    /// Asks a task's container to exit at its next poll.
    pub fn stop_task(&self, task_id: &str) {
        let mut st = self.inner.state.lock().unwrap();
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
    pub fn drain_task(&self, task_id: &str) {
        if let Some(t) = self.inner.state.lock().unwrap().tasks.get_mut(task_id) {
            t.draining = true;
        }
        self.stop_task(task_id);
    }

    /// Hands a polling container up to `max` inputs, waiting up to `poll` for one. A container
    /// idle for longer than `idle_limit` is told to stop.
    /// With `linger`, a batch that is not full waits that long for more inputs (`@modal.batched`).
    pub async fn take_inputs(&self, task_id: &str, max: usize, linger: Duration, poll: Duration, idle_limit: Duration) -> Work {
        let deadline = tokio::time::Instant::now() + poll;
        let mut linger_until: Option<tokio::time::Instant> = None;
        let changed = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(function_id) = st.tasks.get(task_id).map(|t| t.function_id.clone()) else { return Work::Stop };
            st.queues.entry(function_id).or_default().changed.clone()
        };
        loop {
            // Register for wake-ups before looking, so a put in between is not missed.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut wait_for_batch = None;
            let taken = {
                let mut guard = self.inner.state.lock().unwrap();
                let st = &mut *guard;
                let Some(task) = st.tasks.get(task_id) else { return Work::Stop };
                if task.stopping {
                    return Work::Stop;
                }
                let (function_id, last_active) = (task.function_id.clone(), task.last_active);
                let q = st.queues.entry(function_id).or_default();
                if !q.pending.is_empty() && q.pending.len() < max && !linger.is_zero() {
                    let until = *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    if tokio::time::Instant::now() < until {
                        wait_for_batch = Some(until);
                    }
                }
                if wait_for_batch.is_none() && !q.pending.is_empty() {
                    let n = max.max(1).min(q.pending.len());
                    let now = Instant::now();
                    let mut taken = Vec::with_capacity(n);
                    let mut freed = 0;
                    for mut p in q.pending.drain(..n) {
                        p.taken_at = Some(now);
                        if p.is_async {
                            q.async_pending -= 1;
                        } else {
                            q.sync_pending -= 1;
                        }
                        freed += p.payload.as_ref().map_or(0, |b| b.len());
                        taken.push(p);
                    }
                    st.queued_payload_bytes -= freed;
                    if let Some(t) = st.tasks.get_mut(task_id) {
                        t.last_active = now;
                        t.last_input = match taken.as_slice() {
                            [one] => Some((one.input_id.clone(), one.call_id.clone())),
                            _ => None,
                        };
                    }
                    let running = st.running.entry(task_id.to_string()).or_default();
                    let start = running.len();
                    running.extend(taken);
                    Some(running[start..].iter().map(|p| (p.to_input(), p.payload.is_none())).collect::<Vec<_>>())
                } else {
                    let busy = st.running.get(task_id).is_some_and(|r| !r.is_empty());
                    if wait_for_batch.is_none() && !busy && last_active.elapsed() >= idle_limit {
                        return Work::Stop;
                    }
                    None
                }
            };
            if let Some(taken) = taken {
                let mut inputs = Vec::with_capacity(taken.len());
                for (mut input, in_store) in taken {
                    if in_store {
                        input.payload = self.inner.store.input_payload(&input.input_id).await.ok().flatten().unwrap_or_default();
                        let mut st = self.inner.state.lock().unwrap();
                        if let Some(p) = st.running.get_mut(task_id).and_then(|r| r.iter_mut().find(|p| p.input_id == input.input_id)) {
                            p.payload = Some(input.payload.clone());
                        }
                    }
                    inputs.push(input);
                }
                return Work::Inputs(inputs);
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

    /// Records a task's answer for an input it holds; each input is answered once. Returns
    /// false when the task does not hold that input (a late or cancelled one). Returns once the
    /// answer is durable, except for a synchronous call's only input (see [`Self::answer`]).
    pub async fn complete(&self, task_id: &str, input_id: &str, result: Vec<u8>, data_format: i32, outcome: Outcome) -> Result<bool> {
        let taken = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(running) = st.running.get_mut(task_id) else { return Ok(false) };
            let Some(pos) = running.iter().position(|i| i.input_id == input_id) else { return Ok(false) };
            let p = running.swap_remove(pos);
            if let Some(t) = st.tasks.get_mut(task_id) {
                t.last_active = Instant::now();
            }
            p
        };
        // The container does not wait for the commit: nobody learns of the answer before it,
        // and a crash before it runs the input again (as for any input that was running).
        self.answer_with(vec![(taken, task_id.to_string(), result, data_format, outcome)], false).await?;
        Ok(true)
    }

    /// Writes answers (after their inputs left every queue and task), then tells their callers.
    ///
    /// The answer of a synchronous call with a single input (`.remote()`, a web request) is
    /// shown to its caller at once and committed with the next write somebody waits for (one
    /// fsync shared with the next call's input, instead of one of its own on the caller's path).
    /// If the server dies before that commit, the input is still queued in the store and runs
    /// again after the restart (at least once, as for any input that was running); its caller
    /// had its answer, or gets the new one. Every other answer is visible only once committed,
    /// so a `.map`'s cursor never points past what a restart keeps and no answer is read twice.
    async fn answer(&self, answers: Vec<(Pending, String, Vec<u8>, i32, Outcome)>) -> Result<()> {
        self.answer_with(answers, true).await
    }

    /// [`Self::answer`]; with `wait` false it returns once the answers are queued for the next
    /// commit (at once, not lingering) instead of after it. Callers are told after the commit
    /// either way.
    async fn answer_with(&self, answers: Vec<(Pending, String, Vec<u8>, i32, Outcome)>, wait: bool) -> Result<()> {
        if answers.is_empty() {
            return Ok(());
        }
        let now = ferry_store::now();
        let mut writes = Vec::with_capacity(answers.len());
        let mut metas = Vec::with_capacity(answers.len());
        let mut early = Vec::new();
        let rx = {
            let mut guard = self.inner.state.lock().unwrap();
            let st = &mut *guard;
            let mut all_early = true;
            for (p, task_id, result, data_format, outcome) in answers {
                let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let duration = p.taken_at.map(|t| t.elapsed());
                let is_early = st.calls.get(&p.call_id).is_some_and(|c| !is_async(c.invocation_type) && c.num_inputs == 1);
                all_early &= is_early;
                if let Some(q) = st.queues.get_mut(&p.function_id) {
                    if !p.is_async {
                        q.sync_in_flight = q.sync_in_flight.saturating_sub(1);
                    }
                    if q.recent.len() >= RECENT_ANSWERS {
                        q.recent.pop_front();
                    }
                    q.recent.push_back(AnswerSummary {
                        input_id: p.input_id.clone(),
                        call_id: p.call_id.clone(),
                        retry_count: p.retry_count,
                        task_id: task_id.clone(),
                        result: result[..result.len().min(16 << 10)].to_vec(),
                        finished_at: now,
                        duration,
                    });
                }
                if is_early {
                    early.push(Output {
                        input_id: p.input_id.clone(),
                        idx: p.idx,
                        retry_count: p.retry_count,
                        task_id: task_id.clone(),
                        result: result.clone(),
                        data_format,
                        finished_at: now,
                        duration,
                        seq,
                    });
                }
                metas.push((p.call_id.clone(), p.input_id.clone(), seq));
                writes.push(CallWrite::Answer(AnswerRecord {
                    input_id: p.input_id,
                    call_id: p.call_id,
                    idx: p.idx,
                    state: outcome.as_str().to_string(),
                    retry_count: p.retry_count,
                    task_id,
                    result,
                    data_format,
                    finished_at: now,
                    duration: duration.map(|d| d.as_secs_f64()),
                    seq,
                }));
            }
            if all_early {
                for o in early.drain(..) {
                    let (call_id, _, _) = metas.iter().find(|(_, id, _)| *id == o.input_id).expect("meta of each answer");
                    if let Some(c) = st.calls.get_mut(call_id) {
                        c.touched = Instant::now();
                        c.early.push(o);
                        c.changed.notify_waiters();
                    }
                }
                let s = self.clone();
                let reply: Reply = Box::new(move |r| s.committed_answers(metas, r, true));
                self.inner.writes.send(Job { writes, reply: Some(reply), urgent: false }).map_err(|_| Error::Store("the scheduler's writer stopped".into()))?;
                return Ok(());
            }
            // Sent under the lock that numbered them: answers commit in the order of their numbers.
            if !wait {
                let s = self.clone();
                let reply: Reply = Box::new(move |r| s.committed_answers(metas, r, false));
                self.inner.writes.send(Job { writes, reply: Some(reply), urgent: true }).map_err(|_| Error::Store("the scheduler's writer stopped".into()))?;
                return Ok(());
            }
            self.send_urgent(writes)?
        };
        let r = rx.await.map_err(|_| "the scheduler's writer stopped".to_string()).and_then(|r| r);
        let failed = r.as_ref().err().cloned();
        self.committed_answers(metas, r, false);
        match failed {
            Some(e) => Err(Error::Store(e)),
            None => Ok(()),
        }
    }

    /// Tells the callers of committed answers; early answers leave memory (the store has them).
    fn committed_answers(&self, metas: Vec<(String, String, i64)>, r: std::result::Result<Vec<WriteOutcome>, String>, early: bool) {
        let outcomes = match r {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("cannot record answers: {e}");
                Vec::new()
            }
        };
        let mut st = self.inner.state.lock().unwrap();
        for (i, (call_id, input_id, seq)) in metas.into_iter().enumerate() {
            let Some(c) = st.calls.get_mut(&call_id) else { continue };
            if early {
                c.early.retain(|o| o.input_id != input_id);
            }
            if outcomes.get(i) == Some(&WriteOutcome::Done) {
                c.answered += 1;
                c.last_seq = c.last_seq.max(seq);
            }
            c.touched = Instant::now();
            c.changed.notify_waiters();
        }
    }

    /// Takes back an input a task holds (to retry it), without answering it.
    pub fn take_back(&self, task_id: &str, input_id: &str) -> Option<Input> {
        let mut st = self.inner.state.lock().unwrap();
        let running = st.running.get_mut(task_id)?;
        let pos = running.iter().position(|i| i.input_id == input_id)?;
        Some(running.swap_remove(pos).to_input())
    }

    /// Queues an input again for another attempt (it already counts towards its call). An
    /// input whose call was cancelled meanwhile is answered as cancelled instead.
    pub async fn requeue(&self, function_id: &str, input: Input, cancelled_result: Vec<u8>) {
        let retry_count = input.retry_count + 1;
        let p = self.pending_of(function_id, input, retry_count);
        let cancelled = self.inner.state.lock().unwrap().calls.get(&p.call_id).is_some_and(|c| c.cancelled);
        if cancelled {
            let _ = self.answer(vec![(p, String::new(), cancelled_result, 0, Outcome::Cancelled)]).await;
            return;
        }
        self.write_later(vec![CallWrite::Retry { input_id: p.input_id.clone(), retry_count }]);
        let mut st = self.inner.state.lock().unwrap();
        // Re-counted as waiting; `push_pending` counts it in flight again.
        if let Some(q) = st.queues.get_mut(function_id) {
            if !p.is_async {
                q.sync_in_flight = q.sync_in_flight.saturating_sub(1);
            }
        }
        let payload = p.payload.clone();
        let mut p = p;
        p.payload = None;
        Self::push_pending(&mut st, function_id, p, payload);
    }

    /// Puts inputs a dead or preempted task held back in their queue at the same attempt.
    pub fn return_inputs(&self, function_id: &str, inputs: Vec<Input>) {
        let mut st = self.inner.state.lock().unwrap();
        for input in inputs {
            let retry_count = input.retry_count;
            let mut p = self.pending_of(function_id, input, retry_count);
            if let Some(q) = st.queues.get_mut(function_id) {
                if !p.is_async {
                    q.sync_in_flight = q.sync_in_flight.saturating_sub(1);
                }
            }
            let payload = p.payload.take();
            Self::push_pending(&mut st, function_id, p, payload);
        }
    }

    fn pending_of(&self, function_id: &str, input: Input, retry_count: u32) -> Pending {
        Pending {
            function_id: function_id.to_string(),
            is_async: is_async(input.invocation_type),
            input_id: input.input_id,
            call_id: input.call_id,
            idx: input.idx,
            payload: Some(input.payload),
            retry_count,
            invocation_type: input.invocation_type,
            taken_at: input.taken_at,
        }
    }

    /// How long the task's longest-running input has been running.
    pub fn longest_running(&self, task_id: &str) -> Option<Duration> {
        let st = self.inner.state.lock().unwrap();
        st.running.get(task_id)?.iter().filter_map(|i| i.taken_at).map(|t| t.elapsed()).max()
    }

    /// Answers inputs no task holds any more (their container died, no retries left) with
    /// `outcome` ([`Outcome::Failed`] or [`Outcome::TimedOut`]).
    pub async fn fail(&self, function_id: &str, inputs: Vec<Input>, task_id: &str, result: Vec<u8>, outcome: Outcome) {
        let answers = inputs
            .into_iter()
            .map(|i| {
                let retry_count = i.retry_count;
                (self.pending_of(function_id, i, retry_count), task_id.to_string(), result.clone(), 0, outcome)
            })
            .collect();
        if let Err(e) = self.answer(answers).await {
            tracing::error!("cannot record failed inputs: {e}");
        }
    }

    /// Answers an input that is no longer held by any task (after its last attempt).
    pub async fn finish(&self, function_id: &str, input: Input, task_id: &str, result: Vec<u8>, data_format: i32, outcome: Outcome) {
        let retry_count = input.retry_count;
        let p = self.pending_of(function_id, input, retry_count);
        if let Err(e) = self.answer(vec![(p, task_id.to_string(), result, data_format, outcome)]).await {
            tracing::error!("cannot record an answer: {e}");
        }
    }

    /// Forgets a task; returns the inputs it had taken and not answered.
    pub fn remove_task(&self, task_id: &str) -> (Option<TaskInfo>, Vec<Input>) {
        let mut st = self.inner.state.lock().unwrap();
        let info = st.tasks.remove(task_id);
        st.cancelled_running.remove(task_id);
        let held = st.running.remove(task_id).unwrap_or_default();
        (info, held.iter().map(Pending::to_input).collect())
    }

    /// Inputs still queued for a function, removed (to fail them when no container can run).
    pub fn drain_pending(&self, function_id: &str) -> Vec<Input> {
        let mut st = self.inner.state.lock().unwrap();
        let Some(q) = st.queues.get_mut(function_id) else { return Vec::new() };
        let drained: Vec<Pending> = q.pending.drain(..).collect();
        q.sync_pending = 0;
        q.async_pending = 0;
        let freed: usize = drained.iter().map(|p| p.payload.as_ref().map_or(0, |b| b.len())).sum();
        st.queued_payload_bytes -= freed;
        drained.iter().map(Pending::to_input).collect()
    }

    /// Cancels a call: its queued and running inputs are answered as cancelled with `result`
    /// (an encoded TERMINATED result) and the call is marked cancelled, durably. Returns the
    /// tasks that were running its inputs (their containers are told at the next heartbeat).
    pub async fn cancel_call(&self, call_id: &str, reason: &str, result: Vec<u8>) -> Result<Vec<String>> {
        let (function_id, _, _) = self.load_call(call_id).await?;
        let (answers, tasks) = {
            let mut guard = self.inner.state.lock().unwrap();
            let st = &mut *guard;
            if let Some(c) = st.calls.get_mut(call_id) {
                c.cancelled = true;
            }
            let mut answers = Vec::new();
            if let Some(q) = st.queues.get_mut(&function_id) {
                answers.extend(q.take_call(call_id, &mut st.queued_payload_bytes).into_iter().map(|p| (p, String::new())));
            }
            let mut tasks = Vec::new();
            for (task_id, running) in st.running.iter_mut() {
                let mut i = 0;
                while i < running.len() {
                    if running[i].call_id == call_id {
                        let p = running.swap_remove(i);
                        st.cancelled_running.entry(task_id.clone()).or_default().push(p.input_id.clone());
                        answers.push((p, task_id.clone()));
                        if !tasks.contains(task_id) {
                            tasks.push(task_id.clone());
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            (answers, tasks)
        };
        self.write(vec![CallWrite::Cancel { call_id: call_id.to_string(), at: ferry_store::now(), reason: reason.to_string() }]).await?;
        let answers = answers.into_iter().map(|(p, task)| (p, task, result.clone(), 0, Outcome::Cancelled)).collect();
        self.answer(answers).await?;
        Ok(tasks)
    }

    /// Calls with inputs of `function_id` waiting or running (to cancel them when the app stops).
    pub fn calls_in_flight(&self, function_id: &str) -> Vec<String> {
        let st = self.inner.state.lock().unwrap();
        let mut calls: Vec<String> = st.queues.get(function_id).map(|q| q.pending.iter().map(|p| p.call_id.clone()).collect()).unwrap_or_default();
        for (task_id, running) in &st.running {
            if st.tasks.get(task_id).is_some_and(|t| t.function_id == function_id) {
                calls.extend(running.iter().map(|p| p.call_id.clone()));
            }
        }
        calls.sort();
        calls.dedup();
        calls
    }

    /// Inputs a task runs whose calls were cancelled since its last heartbeat.
    pub fn take_cancelled(&self, task_id: &str) -> Vec<String> {
        self.inner.state.lock().unwrap().cancelled_running.remove(task_id).unwrap_or_default()
    }

    /// Forgets a call whose caller read its answers (`.remote()`, the end of a `.map`, web
    /// requests: nobody asks about them again).
    pub fn forget_call(&self, call_id: &str) {
        let had_items = self.inner.state.lock().unwrap().calls.get(call_id).is_some_and(|c| c.has_data_out);
        if had_items {
            // A generator's caller may still be reading its items: forget it a little later.
            let s = self.clone();
            let call_id = call_id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                s.inner.state.lock().unwrap().calls.remove(&call_id);
                s.write_later(vec![CallWrite::Forget { call_id }]);
            });
            return;
        }
        self.inner.state.lock().unwrap().calls.remove(call_id);
        self.write_later(vec![CallWrite::Forget { call_id: call_id.to_string() }]);
    }

    /// Appends generator items a container produced for a call.
    pub async fn put_data_out(&self, call_id: &str, chunks: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.load_call(call_id).await?;
        let writes = chunks.into_iter().map(|(idx, chunk)| CallWrite::DataOut { call_id: call_id.to_string(), idx, chunk }).collect();
        self.write(writes).await?;
        let mut st = self.inner.state.lock().unwrap();
        if let Some(c) = st.calls.get_mut(call_id) {
            c.has_data_out = true;
            c.changed.notify_waiters();
        }
        Ok(())
    }

    /// Generator items with an index above `after`, waiting up to `timeout` for one.
    pub async fn data_out(&self, call_id: &str, after: u64, timeout: Duration) -> Result<Vec<(u64, Vec<u8>)>> {
        self.load_call(call_id).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(changed) = self.changed(call_id) else { return Ok(Vec::new()) };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self.inner.store.call_data_out(call_id, after, 256).await.map_err(|e| Error::Store(e.to_string()))?;
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(found);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn changed(&self, call_id: &str) -> Option<Arc<Notify>> {
        let mut st = self.inner.state.lock().unwrap();
        let c = st.calls.get_mut(call_id)?;
        c.touched = Instant::now();
        Some(c.changed.clone())
    }

    /// Answers of a call after `cursor` (the sequence number of the last answer returned), or
    /// within an index range; waits up to `timeout` for one. With `clear`, a call whose inputs
    /// are all answered and returned is forgotten (read-once results).
    pub async fn outputs(&self, call_id: &str, cursor: i64, range: Option<(i32, i32)>, timeout: Duration, clear: bool) -> Result<Outputs> {
        self.load_call(call_id).await?;
        if clear && range.is_none() {
            // The end of a map: the caller has every answer it wants.
            let unfinished = self.inner.state.lock().unwrap().calls.get(call_id).map_or(0, |c| c.num_inputs.saturating_sub(c.answered));
            self.forget_call(call_id);
            return Ok(Outputs { outputs: Vec::new(), cursor, num_unfinished: unfinished });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen_answered = None;
        loop {
            let Some(changed) = self.changed(call_id) else {
                return Err(Error::NotFound(format!("function call {call_id} not found (its results were read already)")));
            };
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (answered, num_inputs, last_seq, early) = {
                let st = self.inner.state.lock().unwrap();
                let Some(c) = st.calls.get(call_id) else { continue };
                let early: Vec<Output> = c
                    .early
                    .iter()
                    .filter(|o| match range {
                        Some((lo, hi)) => o.idx >= lo && o.idx <= hi,
                        None => o.seq > cursor,
                    })
                    .cloned()
                    .collect();
                (c.answered + c.early.len(), c.num_inputs, c.last_seq, early)
            };
            let unfinished = num_inputs.saturating_sub(answered);
            if !early.is_empty() {
                // Answers shown before their commit (a synchronous call's only input).
                let next = if range.is_some() { cursor } else { early.iter().map(|o| o.seq).max().unwrap_or(cursor) };
                if clear && unfinished == 0 {
                    self.forget_call(call_id);
                }
                return Ok(Outputs { outputs: early, cursor: next, num_unfinished: unfinished });
            }
            let last_look = tokio::time::Instant::now() >= deadline;
            // Look in the store only when answers arrived that this caller has not seen.
            let worth_reading = match range {
                Some(_) => seen_answered != Some(answered),
                None => last_seq > cursor || (seen_answered.is_none() && answered > 0),
            };
            seen_answered = Some(answered);
            if worth_reading {
                let records = match range {
                    Some((lo, hi)) => self.inner.store.call_answers_in_range(call_id, lo, hi).await,
                    None => self.inner.store.call_answers_after(call_id, cursor, MAX_OUTPUTS).await,
                }
                .map_err(|e| Error::Store(e.to_string()))?;
                if !records.is_empty() {
                    let next = if range.is_some() { cursor } else { records.last().map_or(cursor, |r| r.seq) };
                    let outputs: Vec<Output> = records.into_iter().map(to_output).collect();
                    if clear && unfinished == 0 {
                        self.forget_call(call_id);
                    }
                    return Ok(Outputs { outputs, cursor: next, num_unfinished: unfinished });
                }
            }
            if last_look {
                return Ok(Outputs { outputs: Vec::new(), cursor, num_unfinished: unfinished });
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// How many inputs a task holds now.
    pub fn inputs_held(&self, task_id: &str) -> usize {
        self.inner.state.lock().unwrap().running.get(task_id).map_or(0, |r| r.len())
    }

    /// One function's (queued inputs, running inputs, containers), for `get_current_stats()`.
    pub fn function_stats(&self, function_id: &str) -> (usize, usize, usize) {
        let st = self.inner.state.lock().unwrap();
        let queued = st.queues.get(function_id).map_or(0, |q| q.pending.len());
        let mut running = 0;
        let mut tasks = 0;
        for (task_id, t) in &st.tasks {
            if t.function_id == function_id {
                tasks += 1;
                running += st.running.get(task_id).map_or(0, |r| r.len());
            }
        }
        (queued, running, tasks)
    }

    /// Queued and running inputs by function, for the dashboard and `/metrics`.
    pub fn loads(&self) -> Vec<(String, usize, usize)> {
        let st = self.inner.state.lock().unwrap();
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

    /// A function's inputs: queued (at most `limit`), running (with the task holding them),
    /// and its most recent answers (newest first, at most `limit`).
    pub fn inputs_of_function(&self, function_id: &str, limit: usize) -> (Vec<Input>, Vec<(String, Input)>, Vec<AnswerSummary>) {
        let st = self.inner.state.lock().unwrap();
        let queued = st.queues.get(function_id).map(|q| q.pending.iter().take(limit).map(Pending::to_input).collect()).unwrap_or_default();
        let mut running = Vec::new();
        for (task_id, inputs) in &st.running {
            if st.tasks.get(task_id).is_some_and(|t| t.function_id == function_id) {
                running.extend(inputs.iter().map(|i| (task_id.clone(), i.to_input())));
            }
        }
        let done = st.queues.get(function_id).map(|q| q.recent.iter().rev().take(limit).cloned().collect()).unwrap_or_default();
        (queued, running, done)
    }

    /// Calls and inputs this process holds in memory (for tests and `/metrics`).
    pub fn memory_counts(&self) -> (usize, usize) {
        let st = self.inner.state.lock().unwrap();
        let queued: usize = st.queues.values().map(|q| q.pending.len()).sum();
        (st.calls.len(), queued + st.running.values().map(|r| r.len()).sum::<usize>())
    }

    /// Drops calls with every input answered that nobody waited on for a while; their answers
    /// stay in the store.
    fn forget_idle_calls(&self) {
        let mut st = self.inner.state.lock().unwrap();
        let before = st.calls.len();
        st.calls.retain(|_, c| c.answered < c.num_inputs || Arc::strong_count(&c.changed) > 1 || c.touched.elapsed() < CALL_IDLE);
        if st.calls.is_empty() && st.calls.capacity() > 1024 {
            st.calls.shrink_to_fit();
        }
        let queued: usize = st.queues.values().map(|q| q.pending.len()).sum();
        if queued == 0 {
            for q in st.queues.values_mut() {
                q.pending.shrink_to_fit();
            }
        }
        let forgotten = before - st.calls.len();
        drop(st);
        if forgotten >= 1000 {
            release_free_memory();
        }
    }

    /// Deletes calls older than `before` (Unix seconds) whose inputs are all answered.
    pub async fn expire(&self, before: f64) -> usize {
        if let Err(e) = self.inner.store.expire_call_edges(before).await {
            tracing::warn!("cannot expire old call graph edges: {e}");
        }
        let mut total = 0;
        loop {
            match self.inner.store.expire_calls(before, 1000).await {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!("cannot expire old function calls: {e}");
                    return total;
                }
            }
        }
    }
}

/// Hands memory the allocator keeps after a large backlog drained back to the system, so the
/// server's resident size follows the work in flight.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

fn to_output(r: AnswerRecord) -> Output {
    Output {
        input_id: r.input_id,
        idx: r.idx,
        retry_count: r.retry_count,
        task_id: r.task_id,
        result: r.result,
        data_format: r.data_format,
        finished_at: r.finished_at,
        duration: r.duration.map(Duration::from_secs_f64),
        seq: r.seq,
    }
}

/// `.spawn()` and `spawn_map` calls (the protocol's ASYNC invocation types) may queue far more.
fn is_async(invocation_type: i32) -> bool {
    invocation_type == 2 || invocation_type == 3
}

/// The group-commit writer: takes every job waiting and commits them in one transaction.
async fn writer(store: Store, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut n = jobs[0].writes.len();
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => {
                    n += j.writes.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Nobody waits for these writes (forgetting read calls, retry counts, answers already
        // shown): let more join them so they cost one commit, until a write somebody waits for
        // arrives.
        if !jobs.iter().any(|j| j.urgent) {
            let deadline = tokio::time::Instant::now() + LINGER;
            while n < MAX_BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(j)) => {
                        n += j.writes.len();
                        let urgent = j.urgent;
                        jobs.push(j);
                        if urgent {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        let mut all = Vec::with_capacity(n);
        let mut sizes = Vec::with_capacity(jobs.len());
        for j in &mut jobs {
            sizes.push(j.writes.len());
            all.append(&mut j.writes);
        }
        match store.calls_write(&all).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (j, size) in jobs.into_iter().zip(sizes) {
                    let mine: Vec<WriteOutcome> = outcomes.by_ref().take(size).collect();
                    if let Some(reply) = j.reply {
                        reply(Ok(mine));
                    }
                }
            }
            Err(e) if jobs.len() > 1 => {
                // One job's write failed the batch: commit each job on its own.
                tracing::debug!("group commit failed ({e}); committing its jobs one by one");
                let mut all = all.into_iter();
                for (j, size) in jobs.into_iter().zip(sizes) {
                    let mine: Vec<CallWrite> = all.by_ref().take(size).collect();
                    let r = store.calls_write(&mine).await.map_err(|e| e.to_string());
                    if let Err(e) = &r {
                        tracing::error!("cannot record function call state: {e}");
                    }
                    if let Some(reply) = j.reply {
                        reply(r);
                    }
                }
            }
            Err(e) => {
                tracing::error!("cannot record function call state: {e}");
                for j in jobs {
                    if let Some(reply) = j.reply {
                        reply(Err(e.to_string()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
