//! Two stores on one PostgreSQL database, as two `ferry serve` replicas are: a write on one
//! wakes the blocking reads of the other, and writers that read first take turns across them.
//! And a database that is not there gives a clear error in time, naming it without its
//! password.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ferry_store::testing::{Backend, TestDatabase};
use ferry_store::{AppState, CreationMode, ObjectKind, Store, StoreError};

async fn replicas() -> (Store, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::new(Backend::Postgres).await;
    // Replicas share the secret key; here they share the data dir that holds it.
    let a = db.open(dir.path()).await;
    let b = db.open(dir.path()).await;
    (a, b, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_one_replica_wakes_a_get_on_the_other() {
    let (a, b, _d) = replicas().await;
    let (q, _) = a.get_or_create_object(ObjectKind::Queue, "", "shared", CreationMode::CreateIfMissing, "t").await.unwrap();
    let (q2, created) = b.get_or_create_object(ObjectKind::Queue, "", "shared", CreationMode::CreateIfMissing, "t").await.unwrap();
    assert!(!created && q2.id == q.id, "both replicas see one queue");
    for round in 0..3 {
        let getter = {
            let (b, q) = (b.clone(), q.id.clone());
            tokio::spawn(async move { b.queue_get(&q, b"", 1, Duration::from_secs(30)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let put_at = Instant::now();
        a.queue_put(&q.id, b"", &[format!("item {round}").into_bytes()], 60).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), getter).await.expect("woken by the other replica's put").unwrap();
        assert_eq!(got, vec![format!("item {round}").into_bytes()]);
        assert!(put_at.elapsed() < Duration::from_secs(1), "woken promptly, not by a timeout: {:?}", put_at.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_followers_and_schedule_loops_hear_the_other_replica() {
    let (a, b, _d) = replicas().await;
    let app = a.create_app("", None, "run", AppState::Ephemeral, "", "t").await.unwrap();
    let follower = {
        let (b, id) = (b.clone(), app.id.clone());
        tokio::spawn(async move { b.follow_logs(&id, 0, Duration::from_secs(30)).await.unwrap() })
    };
    let schedules = b.schedules_changed();
    let changed = schedules.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.append_log(&app.id, "ta-1", "", 1, "hello\n").await.unwrap();
    let (entries, _) = tokio::time::timeout(Duration::from_secs(2), follower).await.expect("woken").unwrap();
    assert_eq!(entries[0].data, "hello\n");
    a.set_schedules(&app.id, &[("fu-1".to_string(), "{}".to_string())].into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), changed).await.expect("the other replica's schedule loop is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_taking_from_one_queue_get_each_item_once() {
    let (a, b, _d) = replicas().await;
    let (q, _) = a.get_or_create_object(ObjectKind::Queue, "", "work", CreationMode::CreateIfMissing, "t").await.unwrap();
    let items: Vec<Vec<u8>> = (0..400).map(|i: i32| i.to_string().into_bytes()).collect();
    for chunk in items.chunks(100) {
        a.queue_put(&q.id, b"", chunk, 600).await.unwrap();
    }
    let mut takers = Vec::new();
    for s in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let q = q.id.clone();
        takers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.queue_take(&q, b"", 3).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for t in takers {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 400, "no item twice, none lost");
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 400);
    assert_eq!(b.queue_len(&q.id, b"", true).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_tick_fires_on_one_replica_only() {
    let (a, b, _d) = replicas().await;
    let app = a.create_app("", None, "cron", AppState::Deployed, "", "t").await.unwrap();
    a.set_schedules(&app.id, &[("fu-1".to_string(), "{}".to_string())].into()).await.unwrap();
    for tick in 1..20 {
        let (x, y) = tokio::join!(a.record_schedule_tick("fu-1", tick as f64), b.record_schedule_tick("fu-1", tick as f64));
        assert!(x.unwrap() ^ y.unwrap(), "tick {tick} fires exactly once");
    }
}

#[tokio::test]
async fn a_database_that_is_not_there_is_a_clear_error_in_time() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://ferry:hunter2secret@127.0.0.1:{port}/ferry");
    let started = Instant::now();
    let err = Store::connect(dir.path(), Default::default(), Some(&url)).await.err().expect("refused");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{msg}");
    assert!(msg.contains(&format!("postgres://ferry@127.0.0.1:{port}/ferry")), "{msg}");
    assert!(!msg.contains("hunter2secret"), "{msg}");

    let err = Store::connect(dir.path(), Default::default(), Some("mysql://u:hunter2secret@h/d")).await.err().expect("refused");
    assert!(matches!(err, StoreError::Invalid(_)) && !err.to_string().contains("hunter2secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_named_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let good = TestDatabase::new(Backend::Postgres).await.url.unwrap();
    let bad = good.replacen("ferry-test-password", "not-the-password-42", 1);
    assert_ne!(good, bad);
    let err = Store::connect(dir.path(), Default::default(), Some(&bad)).await.err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{msg}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(!msg.contains("not-the-password-42") && !msg.contains("ferry-test-password"), "{msg}");
}
