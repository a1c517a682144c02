//! The store's rules, checked on both backends: a real SQLite database in a temporary data dir,
//! and a real PostgreSQL database on a throwaway cluster (see `ferry_store::testing`).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_store::testing::{Backend, TestDatabase};
use ferry_store::{AppState, CallWrite, CreationMode, DeploymentInfo, ObjectKind, Store, StoreError, WriteOutcome};

async fn store(b: Backend) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (TestDatabase::new(b).await.open(dir.path()).await, dir)
}

async fn queue(store: &Store) -> String {
    let (q, _) = store.get_or_create_object(ObjectKind::Queue, "", "q", CreationMode::CreateIfMissing, "t").await.unwrap();
    q.id
}

async fn queue_is_fifo_per_partition(b: Backend) {
    let (s, _d) = store(b).await;
    let q = queue(&s).await;
    s.queue_put(&q, b"", &[b"1".to_vec(), b"2".to_vec()], 60).await.unwrap();
    s.queue_put(&q, b"p", &[b"x".to_vec()], 60).await.unwrap();
    s.queue_put(&q, b"", &[b"3".to_vec()], 60).await.unwrap();
    assert_eq!(s.queue_len(&q, b"", true).await.unwrap(), 4);
    assert_eq!(s.queue_take(&q, b"", 2).await.unwrap(), vec![b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(s.queue_take(&q, b"", 5).await.unwrap(), vec![b"3".to_vec()]);
    assert_eq!(s.queue_take(&q, b"p", 5).await.unwrap(), vec![b"x".to_vec()]);
    assert!(s.queue_take(&q, b"", 5).await.unwrap().is_empty());
}

async fn queue_partition_limit_is_resource_exhausted(b: Backend) {
    let (s, _d) = store(b).await;
    let q = queue(&s).await;
    let items: Vec<Vec<u8>> = (0..5000).map(|i| i.to_string().into_bytes()).collect();
    s.queue_put(&q, b"", &items, 60).await.unwrap();
    let err = s.queue_put(&q, b"", &[b"one more".to_vec()], 60).await.unwrap_err();
    assert!(matches!(err, StoreError::ResourceExhausted(_)), "{err}");
    // The failed put added nothing.
    assert_eq!(s.queue_len(&q, b"", false).await.unwrap(), 5000);
    let big = vec![0u8; 1024 * 1024 + 1];
    assert!(matches!(s.queue_put(&q, b"other", &[big], 60).await.unwrap_err(), StoreError::Invalid(_)));
}

async fn queue_partition_expires_after_ttl(b: Backend) {
    let (s, _d) = store(b).await;
    let q = queue(&s).await;
    s.queue_put(&q, b"short", &[b"v".to_vec()], 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.queue_len(&q, b"short", false).await.unwrap(), 0);
    assert!(s.queue_take(&q, b"short", 1).await.unwrap().is_empty());
}

async fn blocking_get_wakes_on_put(b: Backend) {
    let (s, _d) = store(b).await;
    let q = queue(&s).await;
    let getter = {
        let (s, q) = (s.clone(), q.clone());
        tokio::spawn(async move { s.queue_get(&q, b"", 1, Duration::from_secs(10)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.queue_put(&q, b"", &[b"late".to_vec()], 60).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), getter).await.expect("woken by the put").unwrap();
    assert_eq!(got, vec![b"late".to_vec()]);
}

async fn named_objects_follow_creation_modes(b: Backend) {
    let (s, _d) = store(b).await;
    let lookup = s.get_or_create_object(ObjectKind::Dict, "", "d", CreationMode::Lookup, "t").await;
    assert!(matches!(lookup, Err(StoreError::NotFound(_))));
    let (a, created) = s.get_or_create_object(ObjectKind::Dict, "", "d", CreationMode::CreateIfMissing, "t").await.unwrap();
    assert!(created && a.id.starts_with("di-"));
    let (b, created) = s.get_or_create_object(ObjectKind::Dict, "", "d", CreationMode::CreateIfMissing, "t").await.unwrap();
    assert!(!created && a.id == b.id);
    let again = s.get_or_create_object(ObjectKind::Dict, "", "d", CreationMode::CreateFailIfExists, "t").await;
    assert!(matches!(again, Err(StoreError::AlreadyExists(_))));
    let bad = s.get_or_create_object(ObjectKind::Dict, "", "bad name", CreationMode::CreateIfMissing, "t").await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
}

async fn ephemeral_objects_are_reaped_without_heartbeats(b: Backend) {
    let (s, _d) = store(b).await;
    let (e, _) = s.get_or_create_object(ObjectKind::Dict, "", "", CreationMode::Ephemeral, "t").await.unwrap();
    s.dict_update(&e.id, &[(b"k".to_vec(), b"v".to_vec())], false).await.unwrap();
    assert_eq!(s.reap(60.0).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.reap(0.01).await.unwrap(), 1);
    assert!(matches!(s.dict_get(&e.id, b"k").await, Err(StoreError::NotFound(_))));
}

async fn secrets_are_sealed_and_updatable(b: Backend) {
    let (s, d) = store(b).await;
    let env: BTreeMap<String, String> = [("TOKEN".to_string(), "plain-marker-123".to_string())].into();
    let info = s.secret_get_or_create("", "s", CreationMode::CreateFailIfExists, &env, &[], "t").await.unwrap();
    assert_eq!(info.keys, vec!["TOKEN".to_string()]);
    s.secret_update(&info.object.id, &[("OTHER".into(), Some("2".into())), ("TOKEN".into(), None)]).await.unwrap();
    let values = s.secret_values(&info.object.id).await.unwrap();
    assert_eq!(values.into_iter().collect::<Vec<_>>(), vec![("OTHER".to_string(), "2".to_string())]);
    let missing = s.secret_get_or_create("", "s", CreationMode::Lookup, &BTreeMap::new(), &["TOKEN".into()], "t").await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
    let bad: BTreeMap<String, String> = [("1BAD".to_string(), "x".to_string())].into();
    assert!(matches!(
        s.secret_get_or_create("", "s2", CreationMode::CreateIfMissing, &bad, &[], "t").await,
        Err(StoreError::Invalid(_))
    ));
    for f in std::fs::read_dir(d.path()).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap().to_string_lossy().starts_with("ferry.db") {
            let bytes = std::fs::read(&f).unwrap();
            assert!(!bytes.windows(16).any(|w| w == b"plain-marker-123"), "secret in clear in {}", f.display());
        }
    }
}

async fn tokens_verify_and_revoke(b: Backend) {
    let (s, _d) = store(b).await;
    let (id, secret) = s.create_token("ci").await.unwrap();
    assert!(s.verify_token(&id, &secret).await.unwrap());
    assert!(!s.verify_token(&id, "as-wrong").await.unwrap());
    s.revoke_token(&id).await.unwrap();
    assert!(!s.verify_token(&id, &secret).await.unwrap());
    assert!(matches!(s.revoke_token(&id).await, Err(StoreError::NotFound(_))));
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn versions_keep_definitions_and_rollback_restores_them(b: Backend) {
    let (s, _d) = store(b).await;
    let app = s.create_app("", Some("svc"), "svc", AppState::Deployed, "", "t").await.unwrap();
    let f = s.create_function(&app.id, "f").await.unwrap();
    let g = s.create_function(&app.id, "g").await.unwrap();
    s.set_function_definition(&f.id, b"f-v1").await.unwrap();
    s.set_function_definition(&g.id, b"g-v1").await.unwrap();
    let info = DeploymentInfo { deployed_by: "t".into(), tag: "first".into(), ..Default::default() };
    let v1 = s.record_deployment(&app.id, &info, &map(&[("f", &f.id), ("g", &g.id)]), &BTreeMap::new()).await.unwrap();
    assert_eq!(v1.version, 1);

    // v2 changes f and drops g: g is no longer found.
    s.set_function_definition(&f.id, b"f-v2").await.unwrap();
    let v2 = s.record_deployment(&app.id, &DeploymentInfo::default(), &map(&[("f", &f.id)]), &BTreeMap::new()).await.unwrap();
    assert_eq!(v2.version, 2);
    assert!(v2.function_ids.contains(&g.id));
    assert!(s.function_by_tag(&app.id, "g").await.unwrap().is_none());

    // Rolling back to v1 restores both definitions and is version 3.
    let v3 = s.rollback_deployment(&app.id, 1, "t").await.unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(s.function(&f.id).await.unwrap().definition.unwrap(), b"f-v1");
    assert_eq!(s.function_by_tag(&app.id, "g").await.unwrap().unwrap().definition.unwrap(), b"g-v1");
    let history = s.deployments(&app.id).await.unwrap();
    assert_eq!(history.iter().map(|d| d.version).collect::<Vec<_>>(), vec![3, 2, 1]);
    assert_eq!(history[0].rollback_version, Some(1));
    assert_eq!(history[0].info.tag, "first");
    assert_eq!(history[2].info.tag, "first");
    assert!(s.rollback_deployment(&app.id, 9, "t").await.is_err());
}

async fn a_tick_is_recorded_once_and_only_for_live_apps(b: Backend) {
    let (s, _d) = store(b).await;
    let app = s.create_app("", None, "run", AppState::Ephemeral, "", "t").await.unwrap();
    let f = s.create_function(&app.id, "tick").await.unwrap();
    s.set_schedules(&app.id, &map(&[(&f.id, "{}")])).await.unwrap();
    assert_eq!(s.live_schedules().await.unwrap().len(), 1);
    assert!(s.record_schedule_tick(&f.id, 10.0).await.unwrap());
    assert!(!s.record_schedule_tick(&f.id, 10.0).await.unwrap(), "the same tick fires once");
    assert!(!s.record_schedule_tick(&f.id, 9.0).await.unwrap(), "an earlier tick never fires");
    assert!(s.record_schedule_tick(&f.id, 12.0).await.unwrap());
    // Publishing again keeps the last tick.
    s.set_schedules(&app.id, &map(&[(&f.id, "{}")])).await.unwrap();
    assert_eq!(s.live_schedules().await.unwrap()[0].last_tick, Some(12.0));
    s.set_app_state(&app.id, AppState::Stopped).await.unwrap();
    assert!(s.live_schedules().await.unwrap().is_empty());
    assert!(!s.record_schedule_tick(&f.id, 14.0).await.unwrap(), "a stopped app's schedule does not fire");
    s.set_schedules(&app.id, &BTreeMap::new()).await.unwrap();
}

async fn gpu_fallback_lists_survive_a_reopen(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(b).await;
    {
        let store = db.open(dir.path()).await;
        store.set_function_gpu_choices("fu-1", Some("H100:1,A100:1")).await.unwrap();
        store.set_function_gpu_choices("fu-2", Some("T4:1")).await.unwrap();
        store.set_function_gpu_choices("fu-2", None).await.unwrap();
    }
    let store = db.open(dir.path()).await;
    assert_eq!(store.function_gpu_choices("fu-1").await.unwrap().as_deref(), Some("H100:1,A100:1"));
    assert_eq!(store.function_gpu_choices("fu-2").await.unwrap(), None);
}

async fn dicts_keep_bytes_and_order_pages(b: Backend) {
    let (s, _d) = store(b).await;
    let (d, _) = s.get_or_create_object(ObjectKind::Dict, "", "dd", CreationMode::CreateIfMissing, "t").await.unwrap();
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0u8..5).map(|i| (vec![i, 0xff], vec![0, i])).collect();
    assert!(s.dict_update(&d.id, &entries, false).await.unwrap());
    assert!(!s.dict_update(&d.id, &[(vec![0, 0xff], b"new".to_vec())], true).await.unwrap(), "if_not_exists keeps the key");
    assert_eq!(s.dict_get(&d.id, &[0, 0xff]).await.unwrap(), Some(vec![0, 0]));
    s.dict_update(&d.id, &[(vec![0, 0xff], b"new".to_vec())], false).await.unwrap();
    assert_eq!(s.dict_get(&d.id, &[0, 0xff]).await.unwrap(), Some(b"new".to_vec()));
    assert_eq!(s.dict_len(&d.id).await.unwrap(), 5);
    let page = s.dict_page(&d.id, None, 2).await.unwrap();
    assert_eq!(page.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![0, 1]);
    let next = s.dict_page(&d.id, Some(&page[1].0), 10).await.unwrap();
    assert_eq!(next.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(s.dict_pop(&d.id, &[4, 0xff]).await.unwrap(), Some(vec![0, 4]));
    assert_eq!(s.dict_pop(&d.id, &[4, 0xff]).await.unwrap(), None);
    s.dict_clear(&d.id).await.unwrap();
    assert_eq!(s.dict_len(&d.id).await.unwrap(), 0);
    assert!(matches!(s.dict_get("di-missing", b"k").await, Err(StoreError::NotFound(_))));
}

async fn queue_iteration_follows_a_cursor(b: Backend) {
    let (s, _d) = store(b).await;
    let q = queue(&s).await;
    s.queue_put(&q, b"", &[b"a".to_vec(), b"b".to_vec()], 60).await.unwrap();
    let items = s.queue_next_items(&q, b"", "", Duration::from_millis(10)).await.unwrap();
    assert_eq!(items.iter().map(|i| i.value.clone()).collect::<Vec<_>>(), vec![b"a".to_vec(), b"b".to_vec()]);
    let after = items[1].entry_id.clone();
    let waiter = {
        let (s, q, after) = (s.clone(), q.clone(), after.clone());
        tokio::spawn(async move { s.queue_next_items(&q, b"", &after, Duration::from_secs(10)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.queue_put(&q, b"", &[b"c".to_vec()], 60).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("woken by the put").unwrap();
    assert_eq!(got.iter().map(|i| i.value.clone()).collect::<Vec<_>>(), vec![b"c".to_vec()]);
    let summary = s.queue_summary(&q, 0).await.unwrap();
    assert_eq!((summary.num_partitions, summary.total_items), (1, 3));
    s.queue_clear(&q, b"", true).await.unwrap();
    assert_eq!(s.queue_len(&q, b"", true).await.unwrap(), 0);
}

async fn calls_record_inputs_answers_and_items(b: Backend) {
    let (s, _d) = store(b).await;
    let input_with_id = |id: String, idx: i32| CallWrite::Input {
        id,
        call_id: "fc-1".into(),
        function_id: "fu-1".into(),
        idx,
        payload: vec![idx as u8; 3],
        created_at: 1.0 + idx as f64,
    };
    let input = |idx: i32| input_with_id(format!("in-{idx}"), idx);
    let call = CallWrite::Call { id: "fc-1".into(), function_id: "fu-1".into(), invocation_type: 4, created_at: 1.0 };
    let out = s.calls_write(&[call, input(0), input(1)]).await.unwrap();
    assert_eq!(out, vec![WriteOutcome::Done; 3]);
    let retried = input_with_id("in-other".into(), 1);
    assert_eq!(s.calls_write(&[retried]).await.unwrap(), vec![WriteOutcome::Existing("in-1".into())]);
    assert_eq!(s.queued_inputs().await.unwrap().len(), 2);
    let answer = ferry_store::AnswerRecord {
        input_id: "in-0".into(),
        call_id: "fc-1".into(),
        idx: 0,
        state: "done".into(),
        retry_count: 0,
        task_id: "ta-1".into(),
        result: b"r0".to_vec(),
        data_format: 1,
        finished_at: 5.0,
        duration: Some(0.5),
        seq: 7,
    };
    assert_eq!(s.calls_write(&[CallWrite::Answer(answer.clone())]).await.unwrap(), vec![WriteOutcome::Done]);
    assert_eq!(s.calls_write(&[CallWrite::Answer(answer)]).await.unwrap(), vec![WriteOutcome::Ignored], "answered once");
    let c = s.call("fc-1").await.unwrap().unwrap();
    assert_eq!((c.num_inputs, c.num_unfinished, c.last_seq, c.cancelled), (2, 1, 7, false));
    let answers = s.call_answers_after("fc-1", 0, 10).await.unwrap();
    assert_eq!((answers.len(), answers[0].result.as_slice(), answers[0].duration), (1, &b"r0"[..], Some(0.5)));
    assert_eq!(s.call_answers_in_range("fc-1", 0, 1).await.unwrap().len(), 1);
    assert_eq!(s.last_answer_seq().await.unwrap(), 7);
    s.calls_write(&[CallWrite::DataOut { call_id: "fc-1".into(), idx: 1, chunk: b"x".to_vec() }]).await.unwrap();
    assert_eq!(s.call_data_out("fc-1", 0, 10).await.unwrap(), vec![(1, b"x".to_vec())]);
    assert_eq!(s.input_payload("in-1").await.unwrap(), Some(vec![1, 1, 1]));
    s.calls_write(&[CallWrite::Forget { call_id: "fc-1".into() }]).await.unwrap();
    assert!(s.call("fc-1").await.unwrap().is_none());
    assert_eq!(s.input_payload("in-1").await.unwrap(), None, "its inputs went with the call");
    assert!(s.call_data_out("fc-1", 0, 10).await.unwrap().is_empty(), "and its items");
    assert!(s.queued_inputs().await.unwrap().is_empty());

    // An answer and its call's forget in one batch (a warm `.remote()`): nothing stays behind.
    let call2 = CallWrite::Call { id: "fc-2".into(), function_id: "fu-1".into(), invocation_type: 4, created_at: 2.0 };
    let input2 = CallWrite::Input { id: "in-2".into(), call_id: "fc-2".into(), function_id: "fu-1".into(), idx: 0, payload: vec![2], created_at: 2.0 };
    s.calls_write(&[call2, input2]).await.unwrap();
    let answer2 = ferry_store::AnswerRecord {
        input_id: "in-2".into(),
        call_id: "fc-2".into(),
        idx: 0,
        state: "done".into(),
        retry_count: 0,
        task_id: "ta-1".into(),
        result: b"r2".to_vec(),
        data_format: 1,
        finished_at: 6.0,
        duration: None,
        seq: 8,
    };
    let out = s.calls_write(&[CallWrite::Answer(answer2), CallWrite::Forget { call_id: "fc-2".into() }]).await.unwrap();
    assert_eq!(out, vec![WriteOutcome::Done, WriteOutcome::Done]);
    assert!(s.call("fc-2").await.unwrap().is_none());
    assert_eq!(s.input_payload("in-2").await.unwrap(), None);
    assert!(s.queued_inputs().await.unwrap().is_empty());
}

async fn call_graph_survives_the_parent_call_being_forgotten(b: Backend) {
    let (s, _d) = store(b).await;
    let call = |id: &str, f: &str| CallWrite::Call { id: id.into(), function_id: f.into(), invocation_type: 4, created_at: 1.0 };
    let input = |id: &str, call_id: &str, f: &str| CallWrite::Input {
        id: id.into(),
        call_id: call_id.into(),
        function_id: f.into(),
        idx: 0,
        payload: vec![1],
        created_at: 1.0,
    };
    s.calls_write(&[call("fc-root", "fu-web"), input("in-root", "fc-root", "fu-web")]).await.unwrap();
    s.calls_write(&[call("fc-kid", "fu-job"), input("in-kid", "fc-kid", "fu-job")]).await.unwrap();
    assert!(s.record_call_edge("fc-kid", "fu-job", "in-root", Some("ta-web")).await.unwrap());
    assert!(!s.record_call_edge("fc-other", "fu-job", "in-unknown", None).await.unwrap(), "no parent, no edge");
    let (calls, inputs, cut) = s.call_graph("fc-kid", 100).await.unwrap();
    assert!(!cut);
    assert_eq!(calls.iter().map(|c| (c.call_id.as_str(), c.function_id.as_str())).collect::<Vec<_>>(), vec![("fc-root", "fu-web"), ("fc-kid", "fu-job")]);
    assert_eq!(calls[1].parent_input_id.as_deref(), Some("in-root"));
    assert_eq!(inputs.len(), 2);
    // The parent finishes, its call is read and forgotten: the edge keeps what the graph needs.
    s.set_parent_status("in-root", 1).await.unwrap();
    s.calls_write(&[CallWrite::Forget { call_id: "fc-root".into() }]).await.unwrap();
    let (calls, inputs, _) = s.call_graph("fc-kid", 100).await.unwrap();
    assert_eq!(calls[0].function_id, "fu-web");
    let root = inputs.iter().find(|i| i.input_id == "in-root").expect("the parent input is remembered");
    assert_eq!((root.status, root.task_id.as_str(), root.state.as_deref()), (Some(1), "ta-web", None));
    let kid = inputs.iter().find(|i| i.input_id == "in-kid").unwrap();
    assert_eq!(kid.state.as_deref(), Some("queued"));
    assert_eq!(s.expire_call_edges(f64::MAX).await.unwrap(), 1);
}

async fn logs_follow_waits_for_new_lines(b: Backend) {
    let (s, _d) = store(b).await;
    let app = s.create_app("", None, "run", AppState::Ephemeral, "", "t").await.unwrap();
    let first = s.append_log(&app.id, "ta-1", "fu-1", 1, "one\n").await.unwrap();
    let follower = {
        let (s, id) = (s.clone(), app.id.clone());
        tokio::spawn(async move { s.follow_logs(&id, first, Duration::from_secs(10)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.append_log(&app.id, "ta-1", "fu-1", 2, "two\n").await.unwrap();
    let (entries, _) = tokio::time::timeout(Duration::from_secs(2), follower).await.expect("woken by the line").unwrap();
    assert_eq!(entries.iter().map(|e| (e.fd, e.data.as_str())).collect::<Vec<_>>(), vec![(2, "two\n")]);
    assert_eq!(s.logs_in_range(&app.id, 0.0, f64::MAX, 1).await.unwrap()[0].data, "two\n");
}

async fn environments_are_unique_by_name(b: Backend) {
    let (s, _d) = store(b).await;
    assert_eq!(s.default_environment().await.unwrap().name, "main");
    s.create_environment("dev").await.unwrap();
    assert!(matches!(s.create_environment("dev").await, Err(StoreError::AlreadyExists(_))));
    let renamed = s.rename_environment("dev", Some("staging"), Some("stg")).await.unwrap();
    assert_eq!((renamed.name.as_str(), renamed.webhook_suffix.as_str(), renamed.is_default), ("staging", "stg", false));
    assert_eq!(s.list_environments().await.unwrap().len(), 2);
    s.delete_environment("staging").await.unwrap();
    assert!(matches!(s.delete_environment("main").await, Err(StoreError::FailedPrecondition(_))));
}

async fn web_routes_point_labels_at_functions(b: Backend) {
    let (s, _d) = store(b).await;
    let app = s.create_app("", Some("web"), "web", AppState::Deployed, "", "t").await.unwrap();
    let routes = vec![("hello".to_string(), String::new(), true), ("other".to_string(), "m".to_string(), false)];
    s.set_web_routes(&app.id, "fu-1", &routes).await.unwrap();
    let r = s.web_route("hello").await.unwrap().unwrap();
    assert!(r.requires_proxy_auth && r.app_live && r.function_id == "fu-1");
    let r = s.web_route("other").await.unwrap().unwrap();
    assert!(!r.requires_proxy_auth && r.method_name == "m");
    s.retain_web_routes(&app.id, &[]).await.unwrap();
    assert!(s.web_route("hello").await.unwrap().is_none());
}

ferry_store::backend_tests!(
    web_routes_point_labels_at_functions,
    queue_is_fifo_per_partition,
    queue_partition_limit_is_resource_exhausted,
    queue_partition_expires_after_ttl,
    blocking_get_wakes_on_put,
    named_objects_follow_creation_modes,
    ephemeral_objects_are_reaped_without_heartbeats,
    secrets_are_sealed_and_updatable,
    tokens_verify_and_revoke,
    versions_keep_definitions_and_rollback_restores_them,
    a_tick_is_recorded_once_and_only_for_live_apps,
    gpu_fallback_lists_survive_a_reopen,
    dicts_keep_bytes_and_order_pages,
    queue_iteration_follows_a_cursor,
    calls_record_inputs_answers_and_items,
    call_graph_survives_the_parent_call_being_forgotten,
    logs_follow_waits_for_new_lines,
    environments_are_unique_by_name,
);
