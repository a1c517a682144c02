//! Several schedulers on one database (`ferry serve` replicas, docs/cluster.md): which replica
//! runs which call, and what happens when one dies.
//!
//! - Every scheduler registers a replica with a lease (`replicas` in the store) and renews it
//!   every third of the lease. The calls it creates are owned by it; only the owner queues and
//!   runs a call's inputs and numbers its answers, so one call's answer numbers (the caller's
//!   cursor) come from one counter and commit in order.
//! - Inputs another replica receives for a call (a map's later batches after the client
//!   reconnected elsewhere) are written there and handed to the owner through the store
//!   (`call_handoffs`, with a notification), which queues them.
//! - A call this replica does not own is watched in the store while somebody here waits for
//!   it: its answers, generator items and counts are read again a few times a second.
//! - When a replica's lease runs out (or it stopped gracefully), another adopts it: a
//!   conditional update in the store decides who, and the adopter becomes the owner of its
//!   calls and queues their unanswered inputs again (those that were running too: at least
//!   once, as after a restart). Its containers died with it (their monitor's lifeline).
//! - A replica that finds it was adopted (it could not renew its lease in time) stops the
//!   process: its calls run elsewhere now.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_store::{CallOwner, QueuedRecord, Store, WriteOutcome};

use crate::{is_async, Error, NewInput, Pending, Result, Scheduler, State};

/// How often a call another replica owns is read again while somebody here waits for it.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How often handoffs are looked for without a notification (one may be missed on reconnect).
const HANDOFF_POLL: Duration = Duration::from_secs(2);

/// Who this scheduler is among the replicas on its database.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// The host and data dir: a scheduler started again there is the same replica's successor
    /// and adopts its predecessor's calls at once.
    pub name: String,
    /// Where this replica's containers reach it (for operators).
    pub address: String,
    /// How long a replica that stopped heartbeating keeps its calls before another adopts them.
    pub lease: Duration,
    /// Whether a replica that finds itself adopted ends the process (a server does; a test
    /// that opens several schedulers in one process does not).
    pub exit_on_lost_lease: bool,
}

impl ReplicaOptions {
    /// A replica named after this host and the store's data dir.
    pub fn local(store: &Store, address: &str, lease: Duration) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let dir = std::fs::canonicalize(store.data_dir()).unwrap_or_else(|_| store.data_dir().to_path_buf());
        ReplicaOptions { name: format!("{host}:{}", dir.display()), address: address.to_string(), lease, exit_on_lost_lease: false }
    }
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions { name: String::new(), address: String::new(), lease: Duration::from_secs(15), exit_on_lost_lease: false }
    }
}

/// Registers replica `id` and adopts its predecessors (and, on SQLite, every earlier
/// replica): returns the inputs to queue again at start.
pub(crate) async fn register(store: &Store, id: &str, options: &ReplicaOptions) -> Result<Vec<QueuedRecord>> {
    let e = |e: ferry_store::StoreError| Error::Store(e.to_string());
    store.set_replica(id);
    store.register_replica(id, &options.name, &options.address, options.lease.as_secs_f64()).await.map_err(e)?;
    let adopted = store.adopt_replicas(id, &options.name, true).await.map_err(e)?;
    if store.is_shared() {
        tracing::info!(replica = id, name = %options.name, "registered as a replica (lease {} s)", options.lease.as_secs_f64());
    }
    if !adopted.replicas.is_empty() && store.is_shared() {
        tracing::info!(
            "adopted {} earlier replicas with {} unanswered inputs ({} of their containers on worker hosts are stopped)",
            adopted.replicas.len(),
            adopted.inputs.len(),
            adopted.worker_tasks
        );
    }
    Ok(adopted.inputs)
}

impl Scheduler {
    /// This scheduler's replica id.
    pub fn replica_id(&self) -> &str {
        self.inner.store.replica().unwrap_or_default()
    }

    /// Notified (with a stored permit) when inputs were queued here by an adoption or a
    /// handoff, so their functions get containers.
    pub fn adopted(&self) -> Arc<tokio::sync::Notify> {
        self.inner.adopted.clone()
    }

    /// Calls this replica owns that another replica cancelled since the last look, with the
    /// reason (the API cancels them here too: their inputs run in this replica's containers).
    pub fn take_cancelled_elsewhere(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.inner.cancelled_elsewhere.lock().unwrap())
    }

    /// Looks for cancellations other replicas recorded for calls with inputs here.
    async fn find_cancelled(&self, me: &str, since: f64) -> bool {
        let found = match self.inner.store.calls_cancelled_since(me, since).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot look for cancelled calls: {e}");
                return false;
            }
        };
        if found.is_empty() {
            return false;
        }
        let st = self.inner.state.lock().unwrap();
        let mut fresh = Vec::new();
        for (call_id, reason) in found {
            let live = match st.calls.get(&call_id) {
                Some(c) => !c.cancelled,
                None => {
                    st.queues.values().any(|q| q.pending.iter().any(|p| p.call_id == call_id))
                        || st.running.values().any(|r| r.iter().any(|p| p.call_id == call_id))
                }
            };
            if live {
                fresh.push((call_id, reason));
            }
        }
        drop(st);
        if fresh.is_empty() {
            return false;
        }
        let mut list = self.inner.cancelled_elsewhere.lock().unwrap();
        for c in fresh {
            if !list.contains(&c) {
                list.push(c);
            }
        }
        true
    }

    /// Ends this replica's lease at a graceful stop: another replica adopts its calls at once.
    pub async fn retire(&self) {
        if let Err(e) = self.inner.store.retire_replica(self.replica_id()).await {
            tracing::warn!("cannot end this replica's lease: {e}");
        }
    }

    /// Queues stored inputs (at start, adopted or handed over); inputs already queued or
    /// running here are skipped with `dedup`. Returns the functions that got inputs.
    pub(crate) fn queue_records(&self, records: Vec<QueuedRecord>, dedup: bool) -> Vec<String> {
        let mut st = self.inner.state.lock().unwrap();
        let known: HashSet<String> = if dedup { known_inputs(&st) } else { HashSet::new() };
        let mut functions = Vec::new();
        for q in records {
            if known.contains(&q.input_id) {
                continue;
            }
            if !functions.contains(&q.function_id) {
                functions.push(q.function_id.clone());
            }
            if dedup {
                // A handed-over input: its call's count here grows.
                if let Some(c) = st.calls.get_mut(&q.call_id) {
                    c.num_inputs += 1;
                }
            }
            let pending = Pending {
                input_id: q.input_id,
                call_id: q.call_id,
                function_id: q.function_id.clone(),
                idx: q.idx,
                payload: None,
                retry_count: q.retry_count,
                invocation_type: q.invocation_type,
                is_async: is_async(q.invocation_type),
                taken_at: None,
            };
            Self::push_pending(&mut st, &q.function_id, pending, Some(q.payload));
        }
        functions
    }

    /// Called when a call was loaded from the store: the answer counter passes the call's
    /// answers, and a call another replica owns is watched while it stays in memory.
    pub(crate) async fn loaded_call(&self, call_id: &str, last_seq: i64) {
        self.inner.seq.fetch_max(last_seq, Ordering::Relaxed);
        if !self.inner.store.is_shared() {
            return;
        }
        let owner = match self.inner.store.call_owner(call_id).await {
            Ok(Some(o)) if o != self.replica_id() => o,
            _ => return,
        };
        if self.inner.foreign.lock().unwrap().insert(call_id.to_string(), owner).is_some() {
            return;
        }
        let s = self.clone();
        let call_id = call_id.to_string();
        tokio::spawn(async move { s.watch(&call_id).await });
    }

    /// Whether another replica owns the call (as far as this one knows).
    pub(crate) fn is_foreign(&self, call_id: &str) -> bool {
        self.inner.store.is_shared() && self.inner.foreign.lock().unwrap().contains_key(call_id)
    }

    /// Adds inputs to a call another replica owns: writes them, then hands them to the owner.
    /// When the call became this replica's meanwhile (adopted), they are queued here.
    pub(crate) async fn put_foreign(&self, call_id: &str, function_id: &str, invocation_type: i32, inputs: Vec<NewInput>) -> Result<Vec<(i32, String)>> {
        let now = ferry_store::now();
        let mut writes = Vec::with_capacity(inputs.len());
        let ids = crate::input_writes(call_id, function_id, &inputs, now, &mut writes);
        let outcomes = self.write(writes).await?;
        let mut answer = Vec::with_capacity(inputs.len());
        let mut new = Vec::new();
        for ((input, id), outcome) in inputs.into_iter().zip(ids).zip(outcomes) {
            match outcome {
                WriteOutcome::Existing(existing) => answer.push((input.idx, existing)),
                _ => {
                    answer.push((input.idx, id.clone()));
                    new.push((id, input));
                }
            }
        }
        // Every id, the existing ones too: a handoff lost to a crash before it is made again.
        let all: Vec<String> = answer.iter().map(|(_, id)| id.clone()).collect();
        let owner = self.inner.store.hand_off_inputs(self.replica_id(), call_id, &all).await.map_err(|e| Error::Store(e.to_string()))?;
        let mut st = self.inner.state.lock().unwrap();
        if let Some(c) = st.calls.get_mut(call_id) {
            c.num_inputs += new.len();
        }
        match owner {
            CallOwner::Other(_) => {}
            CallOwner::Missing => return Err(Error::NotFound(format!("function call {call_id} not found"))),
            CallOwner::Me => {
                self.inner.foreign.lock().unwrap().remove(call_id);
                let is_async = is_async(invocation_type);
                for (id, input) in new {
                    let p = Pending::new(id, call_id, function_id, input.idx, invocation_type, is_async);
                    Self::push_pending(&mut st, function_id, p, Some(input.payload));
                }
            }
        }
        Ok(answer)
    }

    /// Keeps a call another replica owns up to date while it is in memory here.
    async fn watch(&self, call_id: &str) {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let waited = {
                let st = self.inner.state.lock().unwrap();
                match st.calls.get(call_id) {
                    None => None,
                    Some(c) => Some(Arc::strong_count(&c.changed) > 1),
                }
            };
            let still_foreign = self.inner.foreign.lock().unwrap().contains_key(call_id);
            match waited {
                None => {
                    self.inner.foreign.lock().unwrap().remove(call_id);
                    return;
                }
                _ if !still_foreign => return,
                Some(false) => continue,
                Some(true) => {}
            }
            let Ok(Some(rec)) = self.inner.store.call(call_id).await else { continue };
            self.inner.seq.fetch_max(rec.last_seq, Ordering::Relaxed);
            let mut st = self.inner.state.lock().unwrap();
            let Some(c) = st.calls.get_mut(call_id) else { continue };
            let answered = rec.num_inputs - rec.num_unfinished;
            let changed = rec.num_inputs > c.num_inputs
                || answered > c.answered
                || rec.last_seq > c.last_seq
                || (rec.cancelled && !c.cancelled)
                || rec.has_data_out;
            c.num_inputs = c.num_inputs.max(rec.num_inputs);
            c.answered = c.answered.max(answered);
            c.last_seq = c.last_seq.max(rec.last_seq);
            c.cancelled |= rec.cancelled;
            c.has_data_out |= rec.has_data_out;
            if changed {
                c.changed.notify_waiters();
            }
        }
    }

    /// Renews the lease, adopts replicas whose leases ran out, and queues handed-over inputs,
    /// until the process ends.
    pub(crate) fn spawn_membership(&self, options: ReplicaOptions) {
        if !self.inner.store.is_shared() {
            // SQLite's database belongs to one process: nobody to adopt or hand over to.
            return;
        }
        let every = (options.lease / 3).max(Duration::from_millis(100));
        let lease = options.lease.as_secs_f64();
        let me = self.replica_id().to_string();
        let store = self.inner.store.clone();
        // The lease on its own task, so that a slow adoption never delays a renewal.
        let exit = options.exit_on_lost_lease;
        let renewer = (store.clone(), me.clone());
        tokio::spawn(async move {
            let (store, me) = renewer;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match store.renew_replica(&me, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            "this replica ({me}) could not renew its lease in time and another replica adopted its function calls; \
                             stopping so that they run in one place only"
                        );
                        if exit {
                            std::process::exit(70);
                        }
                        return;
                    }
                    Err(e) => tracing::warn!("cannot renew this replica's lease: {e}"),
                }
            }
        });
        let s = self.clone();
        tokio::spawn(async move {
            let handed = store.replica_topic(&me);
            let stopped = store.replicas_changed();
            let mut tick = tokio::time::interval(every.min(HANDOFF_POLL));
            // Cancellations are looked for with a margin for commits in flight and clocks.
            let mut cancels_since = ferry_store::now() - 60.0;
            loop {
                // A handoff, a replica that stopped gracefully, or the next round.
                tokio::select! {
                    _ = handed.notified() => {}
                    _ = stopped.notified() => {}
                    _ = tick.tick() => {}
                }
                match store.take_handoffs(&me).await {
                    Ok(records) if !records.is_empty() => {
                        if !s.queue_records(records, true).is_empty() {
                            s.inner.adopted.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot read the inputs handed to this replica: {e}"),
                }
                let now = ferry_store::now();
                if s.find_cancelled(&me, cancels_since).await {
                    s.inner.adopted.notify_one();
                }
                cancels_since = now - 10.0;
                match store.replicas_to_adopt(&me).await {
                    Ok(true) => s.adopt(&me, &options.name).await,
                    Ok(false) => {}
                    Err(e) => tracing::warn!("cannot look for replicas to adopt: {e}"),
                }
            }
        });
    }

    /// Adopts the replicas whose leases ran out with their calls.
    async fn adopt(&self, me: &str, name: &str) {
        let store = &self.inner.store;
        let adoption = match store.adopt_replicas(me, name, false).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("cannot adopt the replicas whose leases ran out: {e}");
                return;
            }
        };
        if adoption.replicas.is_empty() {
            return;
        }
        // The adopted calls' answers go on from their highest number.
        if let Ok(last) = store.last_answer_seq().await {
            self.inner.seq.fetch_max(last, Ordering::Relaxed);
        }
        {
            let mut foreign = self.inner.foreign.lock().unwrap();
            foreign.retain(|_, owner| !adoption.replicas.contains(owner));
        }
        tracing::warn!(
            "adopted replicas {} whose leases ran out: {} unanswered inputs of their calls are queued here again, \
             {} of their containers on worker hosts are stopped",
            adoption.replicas.join(", "),
            adoption.inputs.len(),
            adoption.worker_tasks
        );
        self.queue_records(adoption.inputs, false);
        self.inner.adopted.notify_one();
    }
}

/// Inputs queued or running in this scheduler.
fn known_inputs(st: &State) -> HashSet<String> {
    let mut known = HashSet::new();
    for q in st.queues.values() {
        known.extend(q.pending.iter().map(|p| p.input_id.clone()));
    }
    for r in st.running.values() {
        known.extend(r.iter().map(|p| p.input_id.clone()));
    }
    known
}

#[cfg(test)]
mod tests {
    //! Two schedulers on one PostgreSQL database, as two `ferry serve` replicas.

    use std::time::Duration;

    use ferry_store::testing::{Backend, TestDatabase};

    use crate::{NewInput, Outcome, ReplicaOptions, Scheduler, TaskInfo, Work};

    const SYNC: i32 = 4;

    async fn replicas() -> (Scheduler, Scheduler, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::new(Backend::Postgres).await;
        let options = |name: &str| ReplicaOptions { name: name.into(), address: String::new(), lease: Duration::from_secs(2), exit_on_lost_lease: false };
        // One data dir (the shared secret key); the names tell the replicas apart.
        let (a, _) = Scheduler::open_replica(db.open(dir.path()).await, options("a")).await.unwrap();
        let (b, _) = Scheduler::open_replica(db.open(dir.path()).await, options("b")).await.unwrap();
        (a, b, dir)
    }

    fn inputs(range: std::ops::Range<i32>) -> Vec<NewInput> {
        range.map(|idx| NewInput { idx, payload: vec![idx as u8] }).collect()
    }

    async fn take(s: &Scheduler, task: &str, wait: Duration) -> Vec<crate::Input> {
        match s.take_inputs(task, 16, Duration::ZERO, wait, Duration::from_secs(600)).await {
            Work::Inputs(i) => i,
            _ => Vec::new(),
        }
    }

    /// Answers every input `task` gets within `wait`, returning how many.
    async fn answer_all(s: &Scheduler, task: &str, wait: Duration) -> Vec<i32> {
        let mut done = Vec::new();
        loop {
            let got = take(s, task, wait).await;
            if got.is_empty() {
                return done;
            }
            for i in got {
                assert!(s.complete(task, &i.input_id, vec![i.idx as u8 * 2], 1, Outcome::Done).await.unwrap());
                done.push(i.idx);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_owner_runs_inputs_another_replica_received_and_both_serve_the_answers() {
        let (a, b, _d) = replicas().await;
        a.register_task(TaskInfo::new("ta-a", "ap-1", "fu-1", 0.0));
        b.register_task(TaskInfo::new("ta-b", "ap-1", "fu-1", 0.0));
        a.create_call("fc-1", "fu-1", SYNC, inputs(0..2)).await.unwrap();
        // The client reconnected to B: its next batch goes there, and is handed to A.
        let (function, ids) = b.add_inputs("fc-1", inputs(2..5)).await.unwrap();
        assert_eq!(function, "fu-1");
        assert_eq!(ids.len(), 3);
        // A retried batch keeps its ids.
        let (_, again) = b.add_inputs("fc-1", inputs(2..5)).await.unwrap();
        assert_eq!(again, ids);
        let mut ran = answer_all(&a, "ta-a", Duration::from_secs(3)).await;
        ran.sort();
        assert_eq!(ran, vec![0, 1, 2, 3, 4], "the owner ran every input once");
        assert!(take(&b, "ta-b", Duration::from_millis(100)).await.is_empty(), "B runs none of A's inputs");
        // B serves the answers, read from the store, with one cursor.
        let mut cursor = 0;
        let mut got = Vec::new();
        while got.len() < 5 {
            let out = b.outputs("fc-1", cursor, None, Duration::from_secs(5), false).await.unwrap();
            assert!(!out.outputs.is_empty(), "B sees A's answers");
            cursor = out.cursor;
            got.extend(out.outputs.iter().map(|o| (o.idx, o.result.clone())));
        }
        got.sort();
        assert_eq!(got, (0..5).map(|i| (i, vec![i as u8 * 2])).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_through_another_replica_reaches_the_owner() {
        let (a, b, _d) = replicas().await;
        a.register_task(TaskInfo::new("ta-a", "ap-1", "fu-1", 0.0));
        a.create_call("fc-3", "fu-1", SYNC, inputs(0..2)).await.unwrap();
        let running = take(&a, "ta-a", Duration::from_secs(1)).await;
        assert_eq!(running.len(), 2);
        let woken = a.adopted();
        // B holds none of the call's inputs: it records the cancellation, the owner acts on it.
        assert!(b.cancel_call("fc-3", "FunctionCall.cancel()", b"terminated".to_vec()).await.unwrap().is_empty());
        tokio::time::timeout(Duration::from_secs(10), woken.notified()).await.expect("A hears of the cancellation");
        let found = a.take_cancelled_elsewhere();
        assert_eq!(found, vec![("fc-3".to_string(), "FunctionCall.cancel()".to_string())]);
        let tasks = a.cancel_call("fc-3", &found[0].1, b"terminated".to_vec()).await.unwrap();
        assert_eq!(tasks, vec!["ta-a".to_string()]);
        assert_eq!(a.take_cancelled("ta-a").len(), 2, "the container is told at its next heartbeat");
        let out = b.outputs("fc-3", 0, None, Duration::from_secs(5), false).await.unwrap();
        assert!(!out.outputs.is_empty() && out.outputs.iter().all(|o| o.result == b"terminated"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_whose_lease_ends_is_adopted_with_its_running_inputs() {
        let (a, b, _d) = replicas().await;
        a.register_task(TaskInfo::new("ta-a", "ap-1", "fu-1", 0.0));
        b.register_task(TaskInfo::new("ta-b", "ap-1", "fu-1", 0.0));
        a.create_call("fc-2", "fu-1", SYNC, inputs(0..4)).await.unwrap();
        // A answers input 0 and is running input 1 when it dies; 2 and 3 wait.
        let first = match a.take_inputs("ta-a", 2, Duration::ZERO, Duration::from_secs(1), Duration::from_secs(600)).await {
            Work::Inputs(i) => i,
            _ => panic!("A's task gets inputs"),
        };
        assert_eq!(first.len(), 2);
        assert!(a.complete("ta-a", &first[0].input_id, vec![0], 1, Outcome::Done).await.unwrap());
        let before = b.outputs("fc-2", 0, None, Duration::from_secs(5), false).await.unwrap();
        assert_eq!(before.outputs.len(), 1);
        // A's lease ends (as a graceful stop does); B adopts its call at once.
        let woken = b.adopted();
        a.retire().await;
        tokio::time::timeout(Duration::from_secs(10), woken.notified()).await.expect("B adopts A");
        let mut ran = answer_all(&b, "ta-b", Duration::from_millis(500)).await;
        ran.sort();
        assert_eq!(ran, vec![1, 2, 3], "the running input runs again, the answered one does not");
        // The caller's cursor from before goes on: B's answers number after A's.
        let mut cursor = before.cursor;
        let mut rest = Vec::new();
        while rest.len() < 3 {
            let out = b.outputs("fc-2", cursor, None, Duration::from_secs(5), false).await.unwrap();
            assert!(!out.outputs.is_empty());
            assert!(out.outputs.iter().all(|o| o.seq > before.cursor));
            cursor = out.cursor;
            rest.extend(out.outputs.iter().map(|o| o.idx));
        }
        rest.sort();
        assert_eq!(rest, vec![1, 2, 3]);
        assert_eq!(b.outputs("fc-2", cursor, None, Duration::from_millis(100), false).await.unwrap().num_unfinished, 0);
    }
}
