//! Seeding a fresh data dir's base from another data dir. Alone in its test binary because
//! it sets an environment variable.

mod common;

use common::{argv, base, data_dir, run};
use ferry_runtime::{ContainerRuntime, ContainerSpec, ImageStore};

#[tokio::test]
async fn a_fresh_data_dir_copies_its_base_from_the_seed() {
    let Some((_, layer)) = base().await else { return };
    let fresh = std::path::PathBuf::from(format!("/var/tmp/ferry-seed-test-{}", std::process::id()));
    // The only test in this binary, so no other thread reads the environment meanwhile.
    std::env::set_var("FERRY_BASE_SEED", data_dir());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let copied = ferry_runtime::prepare_base(&fresh, "3.11.12", &tx).await.expect("prepare from seed");
    std::env::remove_var("FERRY_BASE_SEED");
    assert_eq!(copied.layer, layer);
    assert!(copied.created && copied.python_version.starts_with("3.11."), "{copied:?}");
    assert!(rx.try_recv().unwrap().text.contains("copying base"));

    let again = ferry_runtime::prepare_base(&fresh, "3.11", &tx).await.unwrap();
    assert!(!again.created, "the second prepare finds the base in place");

    let runtime = ContainerRuntime::new(ImageStore::open(&fresh).unwrap());
    let mut c = runtime.spawn(ContainerSpec::new(layer, argv(&["python", "-c", "print('seeded')"]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "seeded");
    std::fs::remove_dir_all(&fresh).unwrap();
}
