//! Image builds on the prepared base: RUN with network, cache hits, failures, COPY, metadata.

mod common;

use common::{argv, base, run};
use ferry_runtime::{BuildOptions, BuildSettings, ContainerRuntime, ContainerSpec, ContextFile, Error, HostContextFile, ImageBuilder, LayerSpec, LogLine, Stream};

fn sink() -> (ferry_runtime::LogSink, tokio::sync::mpsc::UnboundedReceiver<LogLine>) {
    tokio::sync::mpsc::unbounded_channel()
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<LogLine>) -> Vec<LogLine> {
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    lines
}

#[tokio::test]
async fn run_steps_build_a_layer_and_the_second_build_is_cached() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    // A unique marker keeps this build from being a cache hit of an earlier test run.
    let marker = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let spec = LayerSpec::on(
        &base,
        &["RUN python -m pip install six==1.17.0", &format!("RUN echo hi > /hi.txt && echo built {marker}")],
    );
    let (tx, mut rx) = sink();
    let built = builder.build(&spec, &tx).await.expect("build");
    assert!(!built.cached);
    let lines = drain(&mut rx);
    let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    assert!(text.iter().any(|l| l.contains("Successfully installed six-1.17.0")), "pip output is streamed: {text:#?}");
    assert!(lines.iter().any(|l| l.stream == Stream::Stdout && l.text == format!("built {marker}")), "{text:#?}");
    assert!(text.iter().any(|l| l.starts_with("ferry: step 1/2")), "{text:#?}");

    let fs = store.layer_fs(&built.id);
    assert_eq!(std::fs::read_to_string(fs.join("hi.txt")).unwrap(), "hi\n", "the layer holds only what the steps wrote");
    assert!(!fs.join("usr/bin/python3").exists());
    assert!(!fs.join("etc").exists(), "bind mount points of existing files are not copied up");

    let again = builder.build(&spec, &tx).await.expect("cached build");
    assert_eq!(again.id, built.id);
    assert!(again.cached);
    assert!(drain(&mut rx).is_empty(), "a cache hit runs nothing");

    let runtime = ContainerRuntime::new(store);
    let check = "import six; print(six.__version__, open('/hi.txt').read().strip())";
    let mut c = runtime.spawn(ContainerSpec::new(built.id.clone(), argv(&["python", "-c", check]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "1.17.0 hi");

    // This test builds a fresh layer each run; do not let them pile up in the cached store.
    let store = runtime.store();
    let err = store.remove(&base).unwrap_err();
    assert!(matches!(err, Error::LayerInUse { .. }), "{err}");
    store.remove(&built.id).unwrap();
    assert!(!store.contains(&built.id));
}

#[tokio::test]
async fn a_failing_run_reports_its_exit_code_and_output() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    let spec = LayerSpec::on(&base, &["RUN echo before-failure && echo oops >&2 && exit 3", "RUN echo never"]);
    let (tx, mut rx) = sink();
    let err = builder.build(&spec, &tx).await.unwrap_err();
    match &err {
        Error::BuildStepFailed { command, code, tail } => {
            assert_eq!(*code, 3);
            assert!(command.contains("exit 3"), "{command}");
            assert!(tail.contains("before-failure") && tail.contains("oops"), "{tail}");
        }
        other => panic!("expected BuildStepFailed, got {other}"),
    }
    assert!(err.to_string().contains("exit code 3"), "{err}");
    assert!(!drain(&mut rx).iter().any(|l| l.text == "never"));
    assert!(store.layers().unwrap().iter().all(|id| store.layer(id).unwrap().origin != ferry_runtime::LayerOrigin::Build { commands: spec.commands.clone() }));
}

#[tokio::test]
async fn build_env_and_mounts_reach_run_steps_but_not_the_image() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    let (tx, _rx) = sink();
    let dir = std::env::temp_dir().join(format!("ferry-build-mount-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weights.bin"), "w").unwrap();
    let mut spec = LayerSpec::on(&base, &["RUN test \"$API_TOKEN\" = s3cret && cp /mnt/data/weights.bin /weights.bin"]);
    spec.build_env = vec![("API_TOKEN".into(), "s3cret".into())];
    spec.build_mounts = vec![ferry_runtime::BindMount::read_only(&dir, "/mnt/data")];
    let built = builder.build(&spec, &tx).await.expect("build with secret and mount");
    assert_eq!(built.config.env_get("API_TOKEN"), None, "build env is not image env");
    assert_eq!(std::fs::read_to_string(store.layer_fs(&built.id).join("weights.bin")).unwrap(), "w");

    let mut rotated = spec.clone();
    rotated.build_env = vec![("API_TOKEN".into(), "rotated".into())];
    assert!(builder.build(&rotated, &tx).await.unwrap().cached, "a new secret value is not a new layer");
    store.remove(&built.id).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_step_over_the_time_limit_is_killed() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store);
    let (tx, _rx) = sink();
    let options = BuildOptions { step_timeout: Some(std::time::Duration::from_millis(500)), ..Default::default() };
    // The step closes its output before it hangs: the limit covers the exit, not only output.
    let spec = LayerSpec::on(&base, &["RUN echo started && exec >/dev/null 2>&1 && sleep 30"]);
    let started = std::time::Instant::now();
    let err = builder.build_with(&spec, options, &tx).await.unwrap_err();
    assert!(matches!(&err, Error::BuildStepTimedOut { tail, .. } if tail.contains("started")), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(25), "the step was killed, not waited for");
}

#[tokio::test]
async fn env_workdir_cmd_and_copy_accumulate_across_layers() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    let (tx, _rx) = sink();
    let first = builder
        .build(
            &LayerSpec::on(&base, &["ENV APP_HOME=/srv/app GREETING='hello there'", "WORKDIR /srv/app", "ENV PATH=/srv/app/bin:$PATH"]),
            &tx,
        )
        .await
        .expect("env layer");
    let mut spec = LayerSpec::on(
        &first.id,
        &[
            "COPY /config/settings.txt settings.txt",
            "COPY /bin/ bin/",
            "RUN chmod +x bin/hello && test \"$GREETING\" = 'hello there'",
            r#"CMD ["hello"]"#,
        ],
    );
    spec.context_files = vec![
        ContextFile { path: "/config/settings.txt".into(), data: b"debug=1\n".to_vec() },
        ContextFile { path: "/bin/hello".into(), data: b"#!/bin/sh\necho \"$GREETING from $(pwd): $(cat settings.txt)\"\n".to_vec() },
    ];
    let host_dir = std::env::temp_dir().join(format!("ferry-host-context-{}", std::process::id()));
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("blob"), "print('from a mount')\n").unwrap();
    spec.context_host_files = vec![HostContextFile {
        path: "src/tool.py".into(),
        source: host_dir.join("blob"),
        sha256: "5bd3c0b3e8c3a1b9d5d3b35a4e9d5fb1d1b0c2e4a3f6e7d8c9b0a1f2e3d4c5b6".into(),
        mode: Some(0o755),
    }];
    spec.commands.insert(3, "COPY . /opt/ctx".into());
    let second = builder.build(&spec, &tx).await.expect("copy layer");
    std::fs::remove_dir_all(&host_dir).unwrap();
    let tool = store.layer_fs(&second.id).join("opt/ctx/src/tool.py");
    assert_eq!(std::fs::read_to_string(&tool).unwrap(), "print('from a mount')\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777, 0o755);
    assert!(store.layer_fs(&second.id).join("opt/ctx/config/settings.txt").exists(), "`COPY .` takes every context file");
    assert_eq!(second.config.workdir.as_deref(), Some("/srv/app"));
    assert_eq!(second.config.env_get("APP_HOME"), Some("/srv/app"));
    assert!(second.config.env_get("PATH").unwrap().starts_with("/srv/app/bin:/usr/local/sbin"));
    assert_eq!(second.config.cmd.as_deref(), Some(&["hello".to_string()][..]));
    assert!(!store.layer_fs(&second.id).join(".ferry-context").exists(), "no build scaffolding in the layer");

    let runtime = ContainerRuntime::new(store);
    let mut c = runtime.spawn(ContainerSpec::new(second.id, Vec::new())).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert_eq!(out.trim(), "hello there from /srv/app: debug=1");
}

#[tokio::test]
async fn unsupported_inputs_fail_clearly() {
    let Some((store, base)) = base().await else { return };
    let base_python = store.layer(&base).unwrap().config.python_version;
    let strict = ImageBuilder::with_settings(store.clone(), BuildSettings { exact_python: true, ..Default::default() });
    let (tx, mut rx) = sink();
    let python312 = LayerSpec { commands: vec!["FROM python:3.12-slim-bookworm".into()], ..Default::default() };
    let err = strict.build(&python312, &tx).await.unwrap_err();
    assert!(err.to_string().contains("3.11 (Debian bookworm)"), "{err}");
    // Without `exact_python`, the nearest series Ferry makes stands in, and the log says so.
    let builder = ImageBuilder::new(store);
    // Forced, so that a layer an earlier run left is built again and says so again.
    let built = builder.build_with(&python312, BuildOptions { force: true, ..Default::default() }, &tx).await.unwrap();
    assert!(base_python.as_deref().is_some_and(|v| v.starts_with("3.11.")), "{base_python:?}");
    assert_eq!(built.config.python_version, base_python);
    let mut said = String::new();
    while let Ok(line) = rx.try_recv() {
        said.push_str(&line.text);
    }
    assert!(said.contains("Python 3.12 is not one this Ferry host makes"), "{said}");
    let err = builder.build(&LayerSpec { commands: vec!["FROM ubuntu:24.04".into()], ..Default::default() }, &tx).await.unwrap_err();
    // Not a Ferry base: a registry image, and no registry is configured.
    assert!(matches!(err, Error::RegistryNotConfigured { .. }) && err.to_string().contains("--registry-mirror default=URL"), "{err}");
    let err = builder.build(&LayerSpec::on(&base, &["COPY /missing.txt /x"]), &tx).await.unwrap_err();
    assert!(matches!(err, Error::CopySourceMissing { .. }), "{err}");
}

#[tokio::test]
async fn debian_slim_reference_resolves_to_the_prepared_base() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    let (tx, mut rx) = sink();
    let spec = LayerSpec {
        commands: vec!["FROM python:3.11.12-slim-bookworm".into(), "RUN python --version && pip --version && uv --version".into()],
        ..Default::default()
    };
    let built = builder.build(&spec, &tx).await.expect("build on base");
    assert_eq!(store.layer(&built.id).unwrap().parent, Some(base));
    if !built.cached {
        let text: Vec<String> = drain(&mut rx).into_iter().map(|l| l.text).collect();
        assert!(text.iter().any(|l| l.starts_with("Python 3.11")), "{text:#?}");
        assert!(text.iter().any(|l| l.starts_with("uv ")), "{text:#?}");
    }
    assert_eq!(built.config.python_version.as_deref().map(|v| &v[..5]), Some("3.11."));
}

/// The exact layer `Image.debian_slim()` sends with builder 2025.06. Slow (installs
/// build-essential, about 250 MB), so it only runs on request:
/// `cargo test -p ferry-runtime --test builder -- --ignored debian_slim_recipe`.
#[tokio::test]
#[ignore]
async fn debian_slim_recipe_builds() {
    let Some((store, _)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    let (tx, mut rx) = sink();
    let printer = tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            eprintln!("build: {}", l.text);
        }
    });
    let spec = LayerSpec {
        commands: [
            "FROM python:3.11.12-slim-bookworm",
            "RUN apt-get update",
            "RUN apt-get install -y gcc gfortran build-essential",
            "RUN pip install --upgrade pip wheel uv",
            "RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections",
            r#"CMD ["sleep", "172800"]"#,
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    // Forced, so that the recipe really runs each time this test is asked for.
    let built = builder.build_with(&spec, BuildOptions { force: true, ..Default::default() }, &tx).await.expect("debian_slim layer");
    drop(tx);
    let _ = printer.await;
    let runtime = ContainerRuntime::new(store);
    let mut c = runtime.spawn(ContainerSpec::new(built.id, argv(&["sh", "-c", "gcc --version | head -1; python -m pip --version"]))).await.unwrap();
    let (out, err, status) = run(&mut c).await;
    assert_eq!(status.code, 0, "stderr: {err}");
    assert!(out.contains("gcc") && out.contains("pip"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_of_one_layer_run_it_once() {
    let Some((store, base)) = base().await else { return };
    let builder = ImageBuilder::new(store.clone());
    let marker = format!("once-{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let spec = LayerSpec::on(&base, &[&format!("RUN echo {marker}")]);
    let (tx, mut rx) = sink();
    let (a, b) = tokio::join!(builder.build(&spec, &tx), builder.build(&spec, &tx));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id, b.id);
    assert_eq!([a.cached, b.cached].iter().filter(|c| !**c).count(), 1, "exactly one build ran");
    assert_eq!(drain(&mut rx).iter().filter(|l| l.text == marker).count(), 1);
    store.remove(&a.id).unwrap();
}
