//! The input state machine against a real store in a temporary data dir.

use std::time::Duration;

use super::*;

async fn open(dir: &std::path::Path) -> (Scheduler, Vec<String>) {
    let store = Store::open(dir, Default::default()).await.unwrap();
    Scheduler::open(store).await.unwrap()
}

fn inputs(n: i32) -> Vec<NewInput> {
    (0..n).map(|idx| NewInput { idx, payload: format!("payload {idx}").into_bytes() }).collect()
}

const SYNC: i32 = 4;
const ASYNC: i32 = 3;
const SHORT: Duration = Duration::from_millis(20);

async fn new_call(s: &Scheduler, function_id: &str, invocation_type: i32, new: Vec<NewInput>) -> Result<(String, Vec<(i32, String)>)> {
    let id = ferry_store::new_id("fc");
    let ids = s.create_call(&id, function_id, invocation_type, new).await?;
    Ok((id, ids))
}

async fn take(s: &Scheduler, task: &str, max: usize) -> Vec<Input> {
    match s.take_inputs(task, max, Duration::ZERO, SHORT, Duration::from_secs(60)).await {
        Work::Inputs(i) => i,
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn queued_running_done_and_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, ids) = new_call(&s, "fu-1", SYNC, inputs(2)).await.unwrap();
    assert_eq!(ids.len(), 2);
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let taken = take(&s, "ta-1", 1).await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].payload, b"payload 0");
    assert_eq!(s.inputs_held("ta-1"), 1);
    assert!(s.complete("ta-1", &taken[0].input_id, b"r0".to_vec(), 1, Outcome::Done).await.unwrap());
    // A second answer for the same input is dropped.
    assert!(!s.complete("ta-1", &taken[0].input_id, b"again".to_vec(), 1, Outcome::Done).await.unwrap());
    // The container is answered before the commit; callers see the answer once committed.
    s.flush().await.unwrap();
    let out = s.outputs(&call, 0, None, SHORT, false).await.unwrap();
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].result, b"r0");
    assert_eq!(out.num_unfinished, 1);
    // The cursor moves past what was returned.
    let again = s.outputs(&call, out.cursor, None, SHORT, false).await.unwrap();
    assert!(again.outputs.is_empty());
    let second = take(&s, "ta-1", 4).await;
    assert!(s.complete("ta-1", &second[0].input_id, b"r1".to_vec(), 1, Outcome::Done).await.unwrap());
    s.flush().await.unwrap();
    let ranged = s.outputs(&call, 0, Some((1, 1)), SHORT, true).await.unwrap();
    assert_eq!(ranged.outputs.len(), 1);
    assert_eq!(ranged.outputs[0].idx, 1);
    assert_eq!(ranged.num_unfinished, 0);
    // Cleared: read once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(s.call(&call).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn a_restart_queues_running_inputs_again_and_keeps_answers() {
    let dir = tempfile::tempdir().unwrap();
    let call;
    {
        let (s, _) = open(dir.path()).await;
        let (c, _) = new_call(&s, "fu-1", ASYNC, inputs(3)).await.unwrap();
        call = c;
        s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
        let taken = take(&s, "ta-1", 2).await;
        assert_eq!(taken.len(), 2);
        assert!(s.complete("ta-1", &taken[0].input_id, b"first".to_vec(), 1, Outcome::Done).await.unwrap());
        // The container is answered before the commit; the answer commits before the crash.
        s.flush().await.unwrap();
        // taken[1] is running when the server dies; input 2 is still queued.
    }
    let (s, functions) = open(dir.path()).await;
    assert_eq!(functions, vec!["fu-1".to_string()]);
    let summary = s.call(&call).await.unwrap();
    assert_eq!(summary.num_inputs, 3);
    s.register_task(TaskInfo::new("ta-2", "ap-1", "fu-1", 0.0));
    let again = take(&s, "ta-2", 10).await;
    assert_eq!(again.len(), 2, "the running input and the queued one run again");
    assert!(again.iter().all(|i| !i.payload.is_empty()));
    for i in &again {
        assert!(s.complete("ta-2", &i.input_id, b"later".to_vec(), 1, Outcome::Done).await.unwrap());
    }
    s.flush().await.unwrap();
    let out = s.outputs(&call, 0, None, SHORT, false).await.unwrap();
    assert_eq!(out.outputs.len(), 3, "every input answered exactly once");
    let mut idx: Vec<i32> = out.outputs.iter().map(|o| o.idx).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2]);
    assert_eq!(out.num_unfinished, 0);
}

#[tokio::test]
async fn a_retried_put_keeps_the_input_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, first) = new_call(&s, "fu-1", SYNC, inputs(2)).await.unwrap();
    let (_, again) = s.add_inputs(&call, inputs(3)).await.unwrap();
    assert_eq!(&again[..2], &first[..]);
    assert_eq!(s.call(&call).await.unwrap().num_inputs, 3);
    assert_eq!(s.memory_counts().1, 3);
}

#[tokio::test]
async fn cancel_answers_queued_and_running_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, _) = new_call(&s, "fu-1", ASYNC, inputs(3)).await.unwrap();
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let running = take(&s, "ta-1", 1).await;
    let tasks = s.cancel_call(&call, "cancelled by the caller", b"terminated".to_vec()).await.unwrap();
    assert_eq!(tasks, vec!["ta-1".to_string()]);
    assert_eq!(s.take_cancelled("ta-1"), vec![running[0].input_id.clone()]);
    // The container's late answer is dropped.
    assert!(!s.complete("ta-1", &running[0].input_id, b"late".to_vec(), 1, Outcome::Done).await.unwrap());
    let out = s.outputs(&call, 0, None, SHORT, false).await.unwrap();
    assert_eq!(out.outputs.len(), 3);
    assert!(out.outputs.iter().all(|o| o.result == b"terminated"));
    assert!(matches!(s.add_inputs(&call, inputs(1)).await, Err(Error::Cancelled(_))));
    drop(s);
    let (s, functions) = open(dir.path()).await;
    assert!(functions.is_empty(), "nothing of a cancelled call runs after a restart");
    assert!(s.call(&call).await.unwrap().cancelled);
}

#[tokio::test]
async fn limits_on_waiting_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    new_call(&s, "fu-1", SYNC, (0..MAX_PENDING_SYNC as i32).map(|idx| NewInput { idx, payload: vec![] }).collect()).await.unwrap();
    assert!(matches!(new_call(&s, "fu-1", SYNC, inputs(1)).await, Err(Error::Exhausted(_))));
    // Spawned inputs have their own, larger limit; other functions are not affected.
    new_call(&s, "fu-1", ASYNC, inputs(1)).await.unwrap();
    new_call(&s, "fu-2", SYNC, inputs(1)).await.unwrap();
}

#[tokio::test]
async fn reserving_tasks_never_exceeds_max() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    new_call(&s, "fu-1", SYNC, inputs(50)).await.unwrap();
    let mut started = 0;
    for _ in 0..10 {
        started += s.reserve_tasks("fu-1", "ap-1", 3, |pending, _, _| pending).len();
    }
    assert_eq!(started, 3);
    assert_eq!(s.tasks_of_function("fu-1"), 3);
}

#[tokio::test]
async fn retries_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, _) = new_call(&s, "fu-1", SYNC, inputs(1)).await.unwrap();
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let taken = take(&s, "ta-1", 1).await;
    let back = s.take_back("ta-1", &taken[0].input_id).unwrap();
    s.requeue("fu-1", back, vec![]).await;
    let retried = take(&s, "ta-1", 1).await;
    assert_eq!(retried[0].retry_count, 1);
    let (_, held) = s.remove_task("ta-1");
    s.fail("fu-1", held, "ta-1", b"boom".to_vec(), Outcome::Failed).await;
    let out = s.outputs(&call, 0, Some((0, 0)), SHORT, false).await.unwrap();
    assert_eq!(out.outputs[0].result, b"boom");
    assert_eq!(out.outputs[0].retry_count, 1);
}

#[tokio::test]
async fn expiry_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (done, _) = new_call(&s, "fu-1", ASYNC, inputs(1)).await.unwrap();
    let (waiting, _) = new_call(&s, "fu-1", ASYNC, inputs(1)).await.unwrap();
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let taken = take(&s, "ta-1", 1).await;
    s.complete("ta-1", &taken[0].input_id, b"x".to_vec(), 1, Outcome::Done).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.expire(ferry_store::now() - 60.0).await, 0, "young calls stay");
    assert_eq!(s.expire(ferry_store::now() + 1.0).await, 1, "only the answered call goes");
    s.inner.state.lock().unwrap().calls.clear();
    assert!(matches!(s.call(&done).await, Err(Error::NotFound(_))));
    assert!(s.call(&waiting).await.is_ok());
}

#[tokio::test]
async fn a_remote_calls_answer_is_shown_before_its_commit_and_shares_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, _) = new_call(&s, "fu-1", SYNC, inputs(1)).await.unwrap();
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let taken = take(&s, "ta-1", 1).await;
    assert!(s.complete("ta-1", &taken[0].input_id, b"r".to_vec(), 1, Outcome::Done).await.unwrap());
    // The caller sees it at once, by index and by cursor.
    let out = s.outputs(&call, 0, Some((0, 0)), Duration::ZERO, false).await.unwrap();
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].result, b"r");
    assert_eq!(out.num_unfinished, 0);
    let by_cursor = s.outputs(&call, 0, None, Duration::ZERO, false).await.unwrap();
    assert_eq!(by_cursor.outputs.len(), 1);
    assert!(s.outputs(&call, by_cursor.cursor, None, Duration::ZERO, false).await.unwrap().outputs.is_empty());
    // The next write somebody waits for (a new call) commits the answer with it, at the
    // latest (until then a crash would run the input again).
    new_call(&s, "fu-1", SYNC, inputs(1)).await.unwrap();
    let stored = s.inner.store.call_answers_in_range(&call, 0, 0).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].result, b"r");
    assert_eq!(stored[0].seq, by_cursor.cursor);
    // Committed, it leaves memory and is read from the store.
    let out = s.outputs(&call, 0, Some((0, 0)), Duration::ZERO, true).await.unwrap();
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(s.inner.state.lock().unwrap().calls.get(&call).map(|c| c.early.len()), None, "read once: forgotten");
}

#[tokio::test]
async fn a_new_calls_input_can_be_taken_while_its_commit_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let taker = {
        let s = s.clone();
        tokio::spawn(async move { take(&s, "ta-1", 1).await })
    };
    let (call, ids) = new_call(&s, "fu-1", SYNC, inputs(1)).await.unwrap();
    let taken = taker.await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].input_id, ids[0].1);
    assert_eq!(taken[0].call_id, call);
    assert_eq!(taken[0].payload, b"payload 0");
}

#[tokio::test]
async fn answers_of_a_group_commit_go_in_one_statement_and_each_input_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, ids) = new_call(&s, "fu-1", ASYNC, inputs(3)).await.unwrap();
    let answer = |i: usize, result: &[u8], seq: i64| {
        CallWrite::Answer(AnswerRecord {
            input_id: ids[i].1.clone(),
            call_id: call.clone(),
            idx: i as i32,
            state: "done".into(),
            retry_count: 0,
            task_id: "ta-1".into(),
            result: result.to_vec(),
            data_format: 1,
            finished_at: 1.0,
            duration: if i == 1 { None } else { Some(0.5) },
            seq,
        })
    };
    let first = s.inner.store.calls_write(&[answer(0, b"a", 1), answer(1, b"b", 2)]).await.unwrap();
    assert_eq!(first, vec![WriteOutcome::Done, WriteOutcome::Done]);
    let second = s.inner.store.calls_write(&[answer(0, b"again", 3), answer(2, b"c", 4)]).await.unwrap();
    assert_eq!(second, vec![WriteOutcome::Ignored, WriteOutcome::Done]);
    let stored = s.inner.store.call_answers_in_range(&call, 0, 2).await.unwrap();
    let got: Vec<(i32, Vec<u8>, i64, Option<f64>)> = stored.iter().map(|a| (a.idx, a.result.clone(), a.seq, a.duration)).collect();
    assert_eq!(got, vec![(0, b"a".to_vec(), 1, Some(0.5)), (1, b"b".to_vec(), 2, None), (2, b"c".to_vec(), 4, Some(0.5))]);
    assert!(stored.iter().all(|a| a.state == "done" && a.task_id == "ta-1" && a.data_format == 1));
    assert!(s.inner.store.queued_inputs().await.unwrap().is_empty());
}

#[tokio::test]
async fn flush_commits_answers_already_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = open(dir.path()).await;
    let (call, _) = new_call(&s, "fu-1", SYNC, inputs(1)).await.unwrap();
    s.register_task(TaskInfo::new("ta-1", "ap-1", "fu-1", 0.0));
    let taken = take(&s, "ta-1", 1).await;
    assert!(s.complete("ta-1", &taken[0].input_id, b"r".to_vec(), 1, Outcome::Done).await.unwrap());
    s.flush().await.unwrap();
    assert_eq!(s.inner.store.call_answers_in_range(&call, 0, 0).await.unwrap().len(), 1);
    assert!(s.inner.store.queued_inputs().await.unwrap().is_empty());
}
