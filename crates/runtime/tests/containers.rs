//! Containers from the prepared base: isolation, limits, env, logs, signals.

mod common;

use common::{argv, base, run};
use ferry_runtime::{ContainerRuntime, ContainerSpec};

#[tokio::test]
async fn python_runs_in_a_container() {
    let Some((store, base)) = base().await else { return };
    let runtime = ContainerRuntime::new(store);
    let spec = ContainerSpec::new(base, argv(&["python", "-c", "import os, sys; print(os.getpid(), sys.version_info[:2]); print('to err', file=sys.stderr)"]));
    let mut c = runtime.spawn(spec).await.expect("spawn");
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.trim(), "2 (3, 11)", "python is pid 2 under Ferry's init");
    assert_eq!(err.trim(), "to err");
}
