//! A database that goes away under a running store: the next operation fails within the
//! connection timeout with an error naming the database without its password. (A test binary
//! of its own: errors name the one database server of the process.)

use std::time::{Duration, Instant};

use ferry_store::{CreationMode, ObjectKind, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_a_clear_error_in_time() {
    // A cluster of this test's own, stopped under the running store.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/pg-test-cluster.sh");
    let cluster = tempfile::tempdir().unwrap();
    let dir = cluster.path().join("pg");
    let out = std::process::Command::new("bash").arg(script).arg("start").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let data = tempfile::tempdir().unwrap();
    let s = Store::connect(data.path(), Default::default(), Some(&url)).await.unwrap();
    let (d, _) = s.get_or_create_object(ObjectKind::Dict, "", "d", CreationMode::CreateIfMissing, "t").await.unwrap();
    let stopped = std::process::Command::new("bash").arg(script).arg("stop").arg(&dir).status().unwrap();
    assert!(stopped.success());
    let started = Instant::now();
    let err = s.dict_get(&d.id, b"k").await.err().expect("the database is gone");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{msg}");
    assert!(msg.contains(&ferry_store::redact_database_url(&url)) && !msg.contains("ferry-test-password"), "{msg}");
}
