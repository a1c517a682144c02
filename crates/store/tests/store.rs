//! The store's rules, checked against a real SQLite database in a temporary data dir.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_store::{CreationMode, ObjectKind, Store, StoreError};

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Store::open(dir.path(), Default::default()).await.unwrap(), dir)
}

async fn queue(store: &Store) -> String {
    let (q, _) = store.get_or_create_object(ObjectKind::Queue, "", "q", CreationMode::CreateIfMissing, "t").await.unwrap();
    q.id
}

#[tokio::test]
async fn queue_is_fifo_per_partition() {
    let (s, _d) = store().await;
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

#[tokio::test]
async fn queue_partition_limit_is_resource_exhausted() {
    let (s, _d) = store().await;
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

#[tokio::test]
async fn queue_partition_expires_after_ttl() {
    let (s, _d) = store().await;
    let q = queue(&s).await;
    s.queue_put(&q, b"short", &[b"v".to_vec()], 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.queue_len(&q, b"short", false).await.unwrap(), 0);
    assert!(s.queue_take(&q, b"short", 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn blocking_get_wakes_on_put() {
    let (s, _d) = store().await;
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

#[tokio::test]
async fn named_objects_follow_creation_modes() {
    let (s, _d) = store().await;
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

#[tokio::test]
async fn ephemeral_objects_are_reaped_without_heartbeats() {
    let (s, _d) = store().await;
    let (e, _) = s.get_or_create_object(ObjectKind::Dict, "", "", CreationMode::Ephemeral, "t").await.unwrap();
    s.dict_update(&e.id, &[(b"k".to_vec(), b"v".to_vec())], false).await.unwrap();
    assert_eq!(s.reap(60.0).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.reap(0.01).await.unwrap(), 1);
    assert!(matches!(s.dict_get(&e.id, b"k").await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn secrets_are_sealed_and_updatable() {
    let (s, d) = store().await;
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

#[tokio::test]
async fn tokens_verify_and_revoke() {
    let (s, _d) = store().await;
    let (id, secret) = s.create_token("ci").await.unwrap();
    assert!(s.verify_token(&id, &secret).await.unwrap());
    assert!(!s.verify_token(&id, "as-wrong").await.unwrap());
    s.revoke_token(&id).await.unwrap();
    assert!(!s.verify_token(&id, &secret).await.unwrap());
    assert!(matches!(s.revoke_token(&id).await, Err(StoreError::NotFound(_))));
}

mod deployments {
    use std::collections::BTreeMap;

    use ferry_store::{AppState, DeploymentInfo};

    use super::store;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[tokio::test]
    async fn versions_keep_definitions_and_rollback_restores_them() {
        let (s, _d) = store().await;
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

    #[tokio::test]
    async fn a_tick_is_recorded_once_and_only_for_live_apps() {
        let (s, _d) = store().await;
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
}

#[tokio::test]
async fn gpu_fallback_lists_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), ferry_store::Durability::Full).await.unwrap();
        store.set_function_gpu_choices("fu-1", Some("H100:1,A100:1")).await.unwrap();
        store.set_function_gpu_choices("fu-2", Some("T4:1")).await.unwrap();
        store.set_function_gpu_choices("fu-2", None).await.unwrap();
    }
    let store = Store::open(dir.path(), ferry_store::Durability::Full).await.unwrap();
    assert_eq!(store.function_gpu_choices("fu-1").await.unwrap().as_deref(), Some("H100:1,A100:1"));
    assert_eq!(store.function_gpu_choices("fu-2").await.unwrap(), None);
}
