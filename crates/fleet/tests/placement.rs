//! Placement over workers recorded in a real store (SQLite in a temp dir).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_fleet::{Assignment, Demand, Fleet, FleetConfig, Placement, RemoteExit};
use ferry_store::{NewWorker, NewWorkerTask, Store};

async fn fleet(local: bool) -> (tempfile::TempDir, Store, Fleet) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(dir.path(), Default::default(), None).await.unwrap();
    let config = FleetConfig { heartbeat_timeout: Duration::from_secs(30), local_containers: local, placement_wait: Duration::from_millis(300) };
    (dir, store.clone(), Fleet::new(store, config))
}

async fn worker(store: &Store, name: &str, cpu: f64, labels: &[(&str, &str)]) -> String {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let w = NewWorker { name: name.into(), labels: serde_json::to_string(&labels).unwrap(), cpu, memory_mib: 4096, ..Default::default() };
    store.register_worker(&w).await.unwrap()
}

fn on(p: &Placement) -> &str {
    match p {
        Placement::Local => "local",
        Placement::Worker { name, .. } => name,
    }
}

async fn place_one(fleet: &Fleet, demand: &Demand, n: usize) -> String {
    let p = fleet.place(demand, 0, 1.0).await.unwrap();
    let Placement::Worker { id, name } = &p else { return "local".into() };
    let task = NewWorkerTask { task_id: format!("ta-{n}"), worker_id: id.clone(), app_id: "ap".into(), function_id: "fu".into(), cpu: demand.cpu, memory_mib: demand.memory_mib, replica: None, gpus: 0 };
    fleet.assign(task, &Assignment::default()).await.unwrap();
    name.clone()
}

#[tokio::test]
async fn spreads_load_and_honours_labels_resources_and_drain() {
    let (_dir, store, fleet) = fleet(false).await;
    // No worker yet and no local containers: a clear error after the wait.
    let err = fleet.place(&Demand::default(), 0, 1.0).await.unwrap_err();
    assert!(err.contains("no worker host is ready"), "{err}");

    worker(&store, "a", 2.0, &[("region", "eu")]).await;
    worker(&store, "b", 2.0, &[("region", "us"), ("cloud", "aws")]).await;
    let mut count = BTreeMap::new();
    for n in 0..6 {
        *count.entry(place_one(&fleet, &Demand::default(), n).await).or_insert(0) += 1;
    }
    assert_eq!(count.get("a"), Some(&3), "{count:?}");
    assert_eq!(count.get("b"), Some(&3), "{count:?}");

    // Labels: region (any of a list) and cloud.
    let eu = Demand { labels: [("region".to_string(), vec!["eu".to_string(), "ap".to_string()])].into(), ..Default::default() };
    assert_eq!(on(&fleet.place(&eu, 0, 1.0).await.unwrap()), "a");
    let aws = Demand { labels: [("cloud".to_string(), vec!["aws".to_string()])].into(), ..Default::default() };
    assert_eq!(on(&fleet.place(&aws, 0, 1.0).await.unwrap()), "b");
    let gcp = Demand { labels: [("cloud".to_string(), vec!["gcp".to_string()])].into(), ..Default::default() };
    let err = fleet.place(&gcp, 0, 1.0).await.unwrap_err();
    assert!(err.contains("cloud=gcp"), "{err}");

    // Resources: a request that fits only where CPUs are free goes there.
    worker(&store, "big", 16.0, &[]).await;
    let heavy = Demand { cpu: 8.0, ..Default::default() };
    assert_eq!(on(&fleet.place(&heavy, 0, 1.0).await.unwrap()), "big");

    // Drained workers take nothing new.
    store.set_worker_state("big", "draining").await.unwrap();
    store.set_worker_state("b", "draining").await.unwrap();
    for _ in 0..3 {
        assert_eq!(on(&fleet.place(&Demand::default(), 0, 1.0).await.unwrap()), "a");
    }

    // What workers cannot run is refused with the reason when the server runs no containers.
    let volumes = Demand { local_only: Some("function f mounts Volumes".into()), ..Default::default() };
    let err = fleet.place(&volumes, 0, 1.0).await.unwrap_err();
    assert!(err.contains("mounts Volumes") && err.contains("--no-local-containers"), "{err}");
}

#[tokio::test]
async fn local_host_competes_and_keeps_what_workers_cannot_run() {
    let (_dir, store, fleet) = fleet(true).await;
    assert_eq!(fleet.place(&Demand::default(), 0, 4.0).await.unwrap(), Placement::Local);
    worker(&store, "a", 4.0, &[]).await;
    // An idle server and an idle worker of the same size: either; a busy server: the worker.
    assert_eq!(on(&fleet.place(&Demand::default(), 8, 4.0).await.unwrap()), "a");
    let gpu = Demand { local_only: Some("function f asks for GPUs".into()), ..Default::default() };
    assert_eq!(fleet.place(&gpu, 8, 4.0).await.unwrap(), Placement::Local);
}

#[tokio::test]
async fn a_silent_worker_loses_its_tasks() {
    let (_dir, store, fleet) = fleet(false).await;
    let id = worker(&store, "a", 2.0, &[]).await;
    let task = NewWorkerTask { task_id: "ta-x".into(), worker_id: id.clone(), app_id: "ap".into(), function_id: "fu".into(), cpu: 0.0, memory_mib: 0, replica: None, gpus: 0 };
    let remote = fleet.assign(task, &Assignment::default()).await.unwrap();
    store.mark_lost_workers(-1.0).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), remote.wait()).await.unwrap(), RemoteExit::Lost);
    // The lost worker is no candidate any more.
    assert!(fleet.place(&Demand::default(), 0, 1.0).await.is_err());
}

#[tokio::test]
async fn gpu_requests_go_to_workers_with_free_matching_cards() {
    let (_dir, store, fleet) = fleet(true).await;
    let gpu_worker = |name: &str, types: &[&str]| NewWorker {
        name: name.into(),
        labels: "{}".into(),
        cpu: 8.0,
        memory_mib: 4096,
        gpus: types.len() as i64,
        gpu_types: serde_json::to_string(types).unwrap(),
        ..Default::default()
    };
    store.register_worker(&gpu_worker("cpu-only", &[])).await.unwrap();
    let t4 = store.register_worker(&gpu_worker("t4", &["T4"])).await.unwrap();
    store.register_worker(&gpu_worker("a100s", &["A100-80GB", "A100-80GB"])).await.unwrap();
    let ask = |list: &[&str], local_lacks_gpus: bool| Demand {
        gpu: Some(ferry_gpu::GpuChoices::parse_list(list).unwrap()),
        local_lacks_gpus,
        ..Default::default()
    };
    // Only the worker whose cards answer to the request, never the server's own host that lacks them.
    assert_eq!(on(&fleet.place(&ask(&["A100"], true), 0, 1.0).await.unwrap()), "a100s");
    assert_eq!(on(&fleet.place(&ask(&["A100:2"], true), 0, 1.0).await.unwrap()), "a100s");
    assert_eq!(on(&fleet.place(&ask(&["H100", "T4"], true), 0, 1.0).await.unwrap()), "t4");
    // A busy card: the request goes where a fallback's card is free.
    let busy = NewWorkerTask { task_id: "ta-t4".into(), worker_id: t4, app_id: "ap".into(), function_id: "fu".into(), cpu: 0.0, memory_mib: 0, replica: None, gpus: 1 };
    fleet.assign(busy, &Assignment::default()).await.unwrap();
    assert_eq!(on(&fleet.place(&ask(&["T4", "A100"], true), 0, 1.0).await.unwrap()), "a100s");
    // Nobody has an H100: an error at once, naming what the workers have.
    let err = fleet.place(&ask(&["H100"], true), 0, 1.0).await.unwrap_err();
    assert!(err.contains("no worker host has GPUs for gpu=\"H100\"") && err.contains("a100s: 2 GPUs: A100-80GB, A100-80GB"), "{err}");
    // A server whose own host has the cards may still run it itself.
    assert_eq!(on(&fleet.place(&ask(&["H100"], false), 0, 1.0).await.unwrap()), "local");
}
