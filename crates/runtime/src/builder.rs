//! Builds image layers from Dockerfile commands.
//!
//! A layer is (parent, commands, context files). `RUN` steps execute in a container whose
//! overlay upper directory is the new layer's directory; everything else edits the image
//! config. The layer id hashes the inputs, so the same inputs are a cache hit.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::base;
use crate::container::{host_network_files, launch_container, BindMount, LaunchRequest, Network};
use crate::dockerfile::{parse_env, split_words, Instruction};
use crate::error::{Error, IoContext, Result};
use crate::logs::{LogLine, LogSink, Tail};
use crate::packages::{PackageAccess, HOST_DIR};
use crate::registry::{self, RegistryConfig, RegistryCredentials};
use crate::store::{now_unix, remove_tree, ImageConfig, ImageStore, LayerId, LayerOrigin, LayerRecord};

/// A file the client uploads with a layer (`context_files`), addressed by its path in the
/// build context, e.g. `/modal_requirements.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    pub path: String,
    pub data: Vec<u8>,
}

/// A context file that already exists on the host (e.g. an uploaded mount's blob): copied
/// into the build instead of held in memory. `sha256` (hex) stands for its content in the
/// layer id, so it must be the file's real digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostContextFile {
    pub path: String,
    pub source: PathBuf,
    pub sha256: String,
    /// Permission bits to give the copy (e.g. 0o755); `None` keeps the source's.
    pub mode: Option<u32>,
}

/// Everything that defines one layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerSpec {
    /// Tags the `FROM` line may name (Modal sends `base` → the parent image).
    pub base_images: Vec<(String, LayerId)>,
    /// Dockerfile commands, the first being `FROM`.
    pub commands: Vec<String>,
    pub context_files: Vec<ContextFile>,
    /// More context files, from host paths (what `COPY . /dest` of an uploaded mount needs).
    pub context_host_files: Vec<HostContextFile>,
    /// Values for `ARG`s.
    pub build_args: Vec<(String, String)>,
    /// Extra environment for `RUN` steps only, e.g. secrets. Not stored in the image; only the
    /// names count towards the layer id, so a changed secret value does not force a rebuild.
    pub build_env: Vec<(String, String)>,
    /// Host paths visible to `RUN` steps (volumes, mounts); their contents are not hashed.
    pub build_mounts: Vec<BindMount>,
    /// GPUs for `RUN` steps (e.g. to compile CUDA kernels); not part of the layer id.
    pub gpus: Vec<crate::gpu::GpuDevice>,
    /// Credentials for pulling a registry `FROM` image; not part of the layer id.
    pub registry_credentials: Option<RegistryCredentials>,
}

impl LayerSpec {
    /// A layer on top of `parent` (the shape of every Modal layer after the base).
    pub fn on(parent: &LayerId, commands: &[&str]) -> Self {
        let mut all = vec!["FROM base".to_string()];
        all.extend(commands.iter().map(|c| c.to_string()));
        LayerSpec { base_images: vec![("base".into(), parent.clone())], commands: all, ..Default::default() }
    }
}

/// The result of [`ImageBuilder::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltLayer {
    pub id: LayerId,
    /// True when the layer was already in the store and nothing ran.
    pub cached: bool,
    pub config: ImageConfig,
}

/// Options that do not change what a layer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Rebuild even if the layer is cached (Modal's `force_build`).
    pub force: bool,
    /// Kill a step that runs longer than this and fail the build.
    pub step_timeout: Option<std::time::Duration>,
}

/// Builds layers into an [`ImageStore`].
///
/// ```no_run
/// # async fn demo(store: ferry_runtime::ImageStore) -> ferry_runtime::Result<()> {
/// use ferry_runtime::{ImageBuilder, LayerSpec};
/// let builder = ImageBuilder::new(store);
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
/// tokio::spawn(async move { while let Some(line) = rx.recv().await { println!("{}", line.text) } });
/// let spec = LayerSpec {
///     commands: vec!["FROM python:3.11-slim-bookworm".into(), "RUN pip install six".into()],
///     ..Default::default()
/// };
/// let built = builder.build(&spec, &tx).await?;
/// println!("layer {} (cached: {})", built.id, built.cached);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    store: ImageStore,
    settings: Arc<BuildSettings>,
    in_flight: Arc<Mutex<HashMap<LayerId, Arc<tokio::sync::Mutex<()>>>>>,
}

/// What the operator sets once for every build: package access, registry mirrors, and whether
/// a Python series Ferry cannot provide is refused rather than stood in for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildSettings {
    pub packages: PackageAccess,
    pub registries: RegistryConfig,
    /// Refuse `python_version`s Ferry does not make (and no registry has) instead of building
    /// them on the nearest series it makes (`base::stand_in_python`).
    pub exact_python: bool,
}

/// Where a build's context files are visible during COPY steps.
const CONTEXT_MOUNT: &str = "/.ferry-context";

/// COPY semantics in the image's own shell: `$1` = source under the context, `$2` = dest.
const COPY_SCRIPT: &str = r#"set -e
src="/.ferry-context/$1"; dest="$2"
if [ -d "$src" ]; then mkdir -p "$dest"; cp -a "$src/." "$dest/"
else case "$dest" in
  */) mkdir -p "$dest"; cp -a "$src" "$dest" ;;
  *) if [ -d "$dest" ]; then cp -a "$src" "$dest/"; else mkdir -p "$(dirname "$dest")"; cp -a "$src" "$dest"; fi ;;
esac; fi"#;

enum Parent {
    Layer(LayerId),
    /// Ferry's own Debian base; `stands_in_for` is the series the image asked for when Ferry
    /// cannot make it and the nearest one it makes is used instead.
    Base { python: String, stands_in_for: Option<String> },
    Scratch,
    /// A registry image, pulled when the layer is not cached.
    Registry { reference: String },
}

impl ImageBuilder {
    pub fn new(store: ImageStore) -> Self {
        Self::with_settings(store, BuildSettings::default())
    }

    /// A builder whose steps get the host's package access and whose `FROM` lines may name
    /// registry images.
    pub fn with_settings(store: ImageStore, settings: BuildSettings) -> Self {
        ImageBuilder { store, settings: Arc::new(settings), in_flight: Arc::default() }
    }

    pub fn settings(&self) -> &BuildSettings {
        &self.settings
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Builds the layer (or finds it cached). Output goes to `log` line by line as it
    /// happens; a failing `RUN` gives [`Error::BuildStepFailed`] with its exit code and the
    /// last lines of output.
    pub async fn build(&self, spec: &LayerSpec, log: &LogSink) -> Result<BuiltLayer> {
        self.build_with(spec, BuildOptions::default(), log).await
    }

    pub async fn build_with(&self, spec: &LayerSpec, options: BuildOptions, log: &LogSink) -> Result<BuiltLayer> {
        let lines = logical_lines(&spec.commands);
        let instructions = lines.iter().map(|c| Instruction::parse(c)).collect::<Result<Vec<_>>>()?;
        let from = match instructions.first() {
            Some(Instruction::From(r)) => r.clone(),
            _ => {
                return Err(Error::BadCommand {
                    command: lines.first().cloned().unwrap_or_default(),
                    reason: "a layer's first command must be FROM".into(),
                })
            }
        };
        let parent = self.resolve_from(&from, spec)?;
        let parent_id = match &parent {
            Parent::Layer(id) => Some(id.clone()),
            Parent::Base { python, .. } => Some(base::base_layer_id(python)?),
            Parent::Scratch => None,
            Parent::Registry { reference } => Some(registry::reference_key(reference)),
        };
        let id = layer_id(parent_id.as_ref(), spec);

        let lock = {
            let mut map = self.in_flight.lock().expect("lock poisoned");
            map.entry(id.clone()).or_default().clone()
        };
        let result = {
            let _guard = lock.lock().await;
            let target = Target { id: id.clone(), parent, parent_id, from: &from, instructions: &instructions, lines: &lines };
            self.build_locked(target, spec, options, log).await
        };
        // Forget the lock unless another build of this layer holds it (clones happen under
        // the map's mutex, so the count is exact here).
        let mut map = self.in_flight.lock().expect("lock poisoned");
        if Arc::strong_count(&lock) == 2 {
            map.remove(&id);
        }
        result
    }

    async fn build_locked(&self, target: Target<'_>, spec: &LayerSpec, options: BuildOptions, log: &LogSink) -> Result<BuiltLayer> {
        let Target { id, mut parent, mut parent_id, from, instructions, lines } = target;
        if self.store.contains(&id) && !options.force {
            let record = self.store.layer(&id)?;
            self.store.touch(&id);
            return Ok(BuiltLayer { id, cached: true, config: record.config });
        }
        if let Parent::Registry { reference } = &parent {
            let pulled = registry::pull(&self.store, &self.settings.registries, reference, spec.registry_credentials.as_ref(), log).await;
            match (pulled, base::parse_base_reference(reference)) {
                // A Python series Ferry cannot make, and the registry does not have it either.
                (Err(e), Ok(python)) => {
                    let Err(Error::UnsupportedPython { requested, available }) = base::suite_for_python(&python) else { return Err(e) };
                    match self.stand_in(&python) {
                        Some(stand_in) => {
                            let _ = log.send(LogLine::system(format!("ferry: `{reference}` is not in the configured registries: {e}")));
                            parent = stand_in;
                        }
                        None => {
                            return Err(Error::UnsupportedPython { requested, available: format!("{available} (`{reference}` is not in the configured registries either: {e})") })
                        }
                    }
                }
                (pulled, _) => parent_id = Some(pulled?),
            }
        }
        if let Parent::Base { python, stands_in_for } = &parent {
            let base = base::prepare_in(&self.store, python, log).await?;
            parent_id = Some(base.layer.clone());
            let series: String = python.split('.').take(2).collect::<Vec<_>>().join(".");
            if let Some(requested) = stands_in_for {
                let _ = log.send(LogLine::system(format!(
                    "ferry: Python {requested} is not one this Ferry host makes (it makes {}); `{from}` runs on Ferry's Debian {} base with Python {} instead. Ask for python_version=\"{series}\" to match it, or start `ferry serve --exact-python` to refuse such images",
                    base::available_pythons().join(" and "),
                    base.suite,
                    base.python_version
                )));
            } else if !base.python_version.starts_with(&series) || from.rsplit('-').next() != Some(base.suite.as_str()) {
                let _ = log.send(LogLine::system(format!(
                    "ferry: `{from}` is provided by Ferry's Debian {} base with Python {}",
                    base.suite, base.python_version
                )));
            }
        }
        let staging = self.store.staging_dir(&format!("build-{}", &id.as_str()[..12]))?;
        let job = BuildJob { id: &id, parent: parent_id, instructions, lines, spec, staging: &staging, options };
        let result = self.run_steps(job, log).await;
        match result {
            Ok(record) => {
                if options.force && self.store.contains(&id) {
                    let old = self.store.staging_dir("replaced")?;
                    let _ = std::fs::rename(self.store.layer_fs(&id).parent().expect("layer dir"), old.join("layer"));
                    remove_tree(&old);
                }
                let config = record.config.clone();
                self.store.commit(&staging, &record)?;
                let _ = log.send(LogLine::system(format!("ferry: built layer {id}")));
                Ok(BuiltLayer { id, cached: false, config })
            }
            Err(e) => {
                remove_tree(&staging);
                Err(e)
            }
        }
    }

    fn resolve_from(&self, reference: &str, spec: &LayerSpec) -> Result<Parent> {
        if let Some((_, id)) = spec.base_images.iter().find(|(tag, _)| tag == reference) {
            if !self.store.contains(id) {
                return Err(Error::LayerNotFound(id.to_string()));
            }
            return Ok(Parent::Layer(id.clone()));
        }
        if reference == "scratch" {
            return Ok(Parent::Scratch);
        }
        if let Some(id) = LayerId::parse(reference).filter(|id| self.store.contains(id)) {
            return Ok(Parent::Layer(id));
        }
        match base::parse_base_reference(reference) {
            Ok(python) => match base::suite_for_python(&python) {
                Ok(_) => Ok(Parent::Base { python, stands_in_for: None }),
                // A Python Ferry cannot make itself may still come from a configured registry,
                // and failing that the nearest series Ferry makes stands in for it.
                Err(e) if self.settings.registries.is_empty() => self.stand_in(&python).ok_or(e),
                Err(_) => Ok(Parent::Registry { reference: reference.to_string() }),
            },
            Err(_) => {
                registry::parse_reference(reference)?;
                Ok(Parent::Registry { reference: reference.to_string() })
            }
        }
    }

    /// Ferry's base of the nearest series it makes, for a requested one it does not, unless the
    /// operator asked for exact versions.
    fn stand_in(&self, python: &str) -> Option<Parent> {
        if self.settings.exact_python {
            return None;
        }
        let series = base::stand_in_python(python)?;
        Some(Parent::Base { python: series.to_string(), stands_in_for: Some(python.to_string()) })
    }

    async fn run_steps(&self, job: BuildJob<'_>, log: &LogSink) -> Result<LayerRecord> {
        let BuildJob { id, parent, instructions, lines, spec, staging, options } = job;
        let upper = staging.join("fs");
        let work = staging.join("work");
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
        }
        let (mut config, lowers) = match &parent {
            Some(p) => {
                let chain = self.store.chain(p)?;
                let lowers = chain.iter().map(|r| self.store.layer_fs(&r.id)).collect::<Vec<_>>();
                (chain[0].config.clone(), lowers)
            }
            None => (ImageConfig::default(), Vec::new()),
        };
        let context = staging.join("context");
        write_context(&context, &spec.context_files, &spec.context_host_files)?;
        let provided: HashMap<&str, &str> = spec.build_args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut args: Vec<(String, String)> = Vec::new();
        let mut cmd_set_here = false;
        let (gpu_binds, gpu_env) = match spec.gpus.as_slice() {
            [] => (Vec::new(), Vec::new()),
            devices => {
                let plan = crate::gpu::passthrough(devices)?;
                let mut env = plan.env;
                let current = config.env_get("LD_LIBRARY_PATH");
                env.push(("LD_LIBRARY_PATH".into(), crate::gpu::append_paths(current, &plan.library_dirs)));
                (plan.binds, env)
            }
        };
        let mut used_context = false;
        let host_env = self.settings.packages.env().to_vec();
        let host_binds = self.settings.packages.binds(&staging.join("host")).ctx(|| "writing the build's apt configuration".into())?;

        let host_forwards = self.settings.packages.loopback_forwards();
        let step = StepRunner { store: &self.store, lowers: &lowers, upper: &upper, work: &work, log, timeout: options.step_timeout, forwards: &host_forwards };
        let total = instructions.len() - 1;
        for (n, (ins, text)) in instructions.iter().zip(lines).enumerate().skip(1) {
            let _ = log.send(LogLine::system(format!("ferry: step {n}/{total}: {}", text.trim())));
            let lookup = |k: &str| config.env_get(k).map(str::to_string).or_else(|| args.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()));
            match ins {
                Instruction::From(_) => {
                    return Err(Error::UnsupportedCommand { command: text.clone(), reason: "multi-stage builds are not supported; one FROM per layer".into() })
                }
                Instruction::Run(form) => {
                    // Host package settings first: the image's ENV, ARGs and secrets override them.
                    let mut env = host_env.clone();
                    for (k, v) in args.iter().chain(&config.env).chain(&gpu_env).chain(&spec.build_env) {
                        upsert(&mut env, k, v.clone());
                    }
                    let binds = host_binds.iter().chain(&gpu_binds).chain(&spec.build_mounts).cloned().collect();
                    step.run(text, form.argv(&config.shell()), env, &config, binds).await?;
                }
                Instruction::Env(rest) => {
                    for (k, v) in parse_env(rest, &lookup)? {
                        config.env_set(&k, v);
                    }
                }
                Instruction::Workdir(rest) => {
                    let dir = split_words(rest, &lookup)?.join(" ");
                    let dir = absolute(&dir, config.workdir.as_deref());
                    config.workdir = Some(dir.clone());
                    step.run(text, vec!["mkdir".into(), "-p".into(), dir], config.env.clone(), &config, Vec::new()).await?;
                }
                Instruction::Copy { from: Some(image), sources, dest } => {
                    let dest = absolute(&split_words(dest, &lookup)?.concat(), config.workdir.as_deref());
                    let tool = uv_tool(image, sources).ok_or_else(|| Error::UnsupportedCommand {
                        command: text.clone(),
                        reason: "COPY --from another image needs a registry; Ferry only provides the uv binaries (the astral-sh/uv image) from its bases".into(),
                    })?;
                    let script = r#"set -e; src="$(command -v "$1")"; mkdir -p "$(dirname "$2")"; cp "$src" "$2""#;
                    let argv = vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into(), tool.into(), dest];
                    step.run(text, argv, config.env.clone(), &config, Vec::new()).await?;
                }
                Instruction::Copy { from: None, sources, dest } => {
                    let dest = split_words(dest, &lookup)?.concat();
                    let mut dest = absolute(&dest, config.workdir.as_deref());
                    if sources.len() > 1 && !dest.ends_with('/') {
                        dest.push('/');
                    }
                    for src in sources {
                        let rel = context_relative(src);
                        check_context(&rel, src, spec)?;
                        let argv = vec!["/bin/sh".into(), "-c".into(), COPY_SCRIPT.into(), "sh".into(), rel, dest.clone()];
                        let binds = vec![BindMount::read_only(&context, CONTEXT_MOUNT)];
                        step.run(text, argv, config.env.clone(), &config, binds).await?;
                        used_context = true;
                    }
                }
                Instruction::Cmd(form) => {
                    config.cmd = Some(form.argv(&config.shell()));
                    cmd_set_here = true;
                }
                Instruction::Entrypoint(form) => {
                    config.entrypoint = Some(form.argv(&config.shell()));
                    if !cmd_set_here {
                        config.cmd = None;
                    }
                }
                Instruction::Arg { name, default } => {
                    let value = provided.get(name.as_str()).map(|v| v.to_string()).or_else(|| default.clone()).unwrap_or_default();
                    upsert(&mut args, name, value);
                }
                Instruction::User(rest) => config.user = Some(split_words(rest, &lookup)?.concat()),
                Instruction::Shell(argv) => config.shell = Some(argv.clone()),
                Instruction::Ignored(_) => {}
            }
        }
        if used_context {
            // The bind's mount point is not part of the image.
            let _ = std::fs::remove_dir(upper.join(CONTEXT_MOUNT.trim_start_matches('/')));
        }
        if !host_binds.is_empty() {
            // Mount points of the host's package files are not part of the image.
            remove_tree(&upper.join(HOST_DIR.trim_start_matches('/')));
            remove_tree(&staging.join("host"));
        }
        remove_tree(&work);
        remove_tree(&context);
        if config.python_version.is_none() {
            // A Python this layer added (`add_python=`'s standalone tree, a RUN that installed
            // one): the worker runs the client with it.
            config.python_version = crate::registry::python_in(&upper);
        }
        Ok(LayerRecord {
            id: id.clone(),
            parent,
            config,
            origin: LayerOrigin::Build { commands: spec.commands.clone() },
            created_at: now_unix(),
        })
    }
}

/// What a build resolved before taking the layer's lock.
struct Target<'a> {
    id: LayerId,
    parent: Parent,
    parent_id: Option<LayerId>,
    from: &'a str,
    instructions: &'a [Instruction],
    lines: &'a [String],
}

/// One build's inputs, resolved.
struct BuildJob<'a> {
    id: &'a LayerId,
    parent: Option<LayerId>,
    instructions: &'a [Instruction],
    lines: &'a [String],
    spec: &'a LayerSpec,
    staging: &'a Path,
    options: BuildOptions,
}

/// Processes and threads one build step may run.
const BUILD_PIDS: u64 = 8192;
/// What one build step may add to its layer (a CUDA toolkit fits).
const BUILD_DISK_MIB: u64 = 64 * 1024;

struct StepRunner<'a> {
    store: &'a ImageStore,
    lowers: &'a [PathBuf],
    upper: &'a Path,
    work: &'a Path,
    log: &'a LogSink,
    timeout: Option<std::time::Duration>,
    /// The operator's package sources on the host's loopback, served into the step's own.
    forwards: &'a [crate::net::PortForward],
}

impl StepRunner<'_> {
    /// Runs one build step in a container writing into the layer, streaming its output.
    async fn run(&self, text: &str, argv: Vec<String>, env: Vec<(String, String)>, config: &ImageConfig, extra: Vec<BindMount>) -> Result<()> {
        // Build steps are isolated like every container: a network namespace of their own with
        // outbound NAT (where slirp4netns is installed), pids and disk limits.
        let network = crate::probe::effective_network(self.store.root(), Network::Private, false);
        let mut binds = match network {
            Network::Private => {
                let mut b = vec![BindMount::read_only(crate::net::resolv_conf(self.store.root())?, "/etc/resolv.conf")];
                b.extend(host_network_files().into_iter().filter(|b| b.target == "/etc/hosts"));
                b
            }
            _ => host_network_files(),
        };
        binds.extend(extra);
        let request = LaunchRequest {
            lowers: self.lowers.to_vec(),
            upper_dir: Some((self.upper.to_path_buf(), self.work.to_path_buf())),
            disk_scratch: true,
            argv,
            env,
            workdir: config.workdir.clone().unwrap_or_else(|| "/".into()),
            user: config.user.clone(),
            binds,
            limits: crate::cgroup::Limits { pids: Some(BUILD_PIDS), disk_mib: Some(BUILD_DISK_MIB), memory_mib: crate::cgroup::default_memory_mib(), ..Default::default() },
            network,
            hostname: "ferry-build".into(),
            stdin: false,
            raw_output: false,
            tty: None,
            image: None,
            forwards: if network == Network::Host { Vec::new() } else { self.forwards.to_vec() },
            allowed_cidrs: None,
        };
        let mut container = launch_container(self.store, request).await.map_err(|e| match e {
            Error::Spawn { source, .. } => Error::BuildStepFailed { command: text.trim().to_string(), code: 127, tail: source.to_string() },
            other => other,
        })?;
        let mut lines = container.logs().expect("fresh container has logs");
        let mut tail = Tail::default();
        let forward = async {
            while let Some(line) = lines.recv().await {
                tail.push(&line.text);
                let _ = self.log.send(line);
            }
        };
        // One deadline for the output and the exit: a step may close its output and go on.
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let status = match deadline {
            None => {
                forward.await;
                Some(container.wait().await?)
            }
            Some(at) => match tokio::time::timeout_at(at, forward).await {
                Ok(()) => tokio::time::timeout_at(at, container.wait()).await.ok().transpose()?,
                Err(_) => None,
            },
        };
        let Some(status) = status else {
            container.kill(crate::Signal::Kill)?;
            container.wait().await?;
            let limit = self.timeout.expect("timed out only with a timeout");
            return Err(Error::BuildStepTimedOut { command: text.trim().to_string(), seconds: limit.as_secs_f64(), tail: tail.text() });
        };
        if status.code != 0 {
            return Err(Error::BuildStepFailed { command: text.trim().to_string(), code: status.code, tail: tail.text() });
        }
        Ok(())
    }
}

/// The instructions of a command list: `from_dockerfile` sends a Dockerfile's raw lines (blank
/// lines, `#` comments, a trailing `\` continuing a line, possibly followed by spaces), and the
/// client's own methods use continuations too (`poetry_install_from_file`). One element with
/// newlines inside (`run_commands` of a multi-line script) stays one instruction.
fn logical_lines(commands: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for element in commands {
        let trimmed = element.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let end = element.trim_end();
        let (text, continues) = match end.strip_suffix('\\') {
            Some(head) if !head.ends_with('\\') => (head, true),
            _ => (element.as_str(), false),
        };
        let joined = match current.take() {
            Some(mut c) => {
                c.push_str(text);
                c
            }
            None => text.to_string(),
        };
        if continues {
            current = Some(joined);
        } else {
            out.push(joined);
        }
    }
    out.extend(current);
    out
}

fn upsert(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_string(), value)),
    }
}

/// The uv tool a `COPY --from=<registry>/astral-sh/uv:<tag> /uv <dest>` asks for.
fn uv_tool(image: &str, sources: &[String]) -> Option<&'static str> {
    // The reference without its registry host (a first part with a dot or a port).
    let path = match image.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') => rest,
        _ => image,
    };
    if !path.starts_with("astral-sh/uv") || sources.len() != 1 {
        return None;
    }
    match sources[0].trim_start_matches('/') {
        "uv" => Some("uv"),
        "uvx" => Some("uvx"),
        _ => None,
    }
}

fn absolute(path: &str, workdir: Option<&str>) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        let base = workdir.unwrap_or("/").trim_end_matches('/');
        format!("{base}/{path}")
    }
}

/// A COPY source as a path relative to the context root ("." for all of it).
fn context_relative(src: &str) -> String {
    let parts: Vec<String> = Path::new(src)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn check_context(rel: &str, src: &str, spec: &LayerSpec) -> Result<()> {
    let paths = spec.context_files.iter().map(|f| &f.path).chain(spec.context_host_files.iter().map(|f| &f.path));
    let rels: Vec<String> = paths.map(|p| context_relative(p)).collect();
    let present = rel == "." || rels.iter().any(|f| f == rel || f.starts_with(&format!("{rel}/")));
    if present {
        return Ok(());
    }
    Err(Error::CopySourceMissing { source_path: src.to_string(), have: if rels.is_empty() { "none".into() } else { rels.join(", ") } })
}

fn write_context(dir: &Path, files: &[ContextFile], host_files: &[HostContextFile]) -> Result<()> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let place = |context_path: &str| -> Result<PathBuf> {
        let path = dir.join(context_relative(context_path));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        Ok(path)
    };
    for f in files {
        let path = place(&f.path)?;
        std::fs::write(&path, &f.data).ctx(|| format!("writing context file {}", path.display()))?;
    }
    for f in host_files {
        let path = place(&f.path)?;
        std::fs::copy(&f.source, &path).ctx(|| format!("copying context file {}", f.source.display()))?;
        if let Some(mode) = f.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                .ctx(|| format!("setting the mode of {}", path.display()))?;
        }
    }
    Ok(())
}

/// The content address of a layer.
fn layer_id(parent: Option<&LayerId>, spec: &LayerSpec) -> LayerId {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"ferry-layer-v1");
    field(parent.map(|p| p.as_str()).unwrap_or("scratch").as_bytes());
    for c in &spec.commands {
        field(c.as_bytes());
    }
    // In-memory and host files hash alike: path, hex digest (and mode where one is set).
    let mut files: Vec<(String, String)> = spec
        .context_files
        .iter()
        .map(|f| (context_relative(&f.path), hex::encode(Sha256::digest(&f.data))))
        .chain(spec.context_host_files.iter().map(|f| {
            let digest = match f.mode {
                Some(mode) => format!("{}:{:o}", f.sha256.to_ascii_lowercase(), mode & 0o7777),
                None => f.sha256.to_ascii_lowercase(),
            };
            (context_relative(&f.path), digest)
        }))
        .collect();
    files.sort();
    for (path, digest) in &files {
        field(path.as_bytes());
        field(digest.as_bytes());
    }
    let mut args = spec.build_args.clone();
    args.sort();
    for (k, v) in &args {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let mut secret_names: Vec<&str> = spec.build_env.iter().map(|(k, _)| k.as_str()).collect();
    secret_names.sort();
    for name in secret_names {
        field(b"env");
        field(name.as_bytes());
    }
    for m in &spec.build_mounts {
        field(b"mount");
        field(m.target.as_bytes());
    }
    // A private image cached with one login is not served to a request without it.
    if let Some(c) = &spec.registry_credentials {
        field(b"registry-user");
        field(c.username.as_bytes());
    }
    LayerId::from_hasher(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> LayerId {
        LayerId::parse(&"a".repeat(64)).unwrap()
    }

    #[test]
    fn layer_ids_depend_on_every_input() {
        let spec = LayerSpec::on(&parent(), &["RUN echo hi"]);
        let same = layer_id(Some(&parent()), &spec.clone());
        assert_eq!(layer_id(Some(&parent()), &spec), same);
        let mut other_cmd = spec.clone();
        other_cmd.commands[1] = "RUN echo ho".into();
        let mut with_file = spec.clone();
        with_file.context_files.push(ContextFile { path: "/x".into(), data: b"1".to_vec() });
        let mut other_file = with_file.clone();
        other_file.context_files[0].data = b"2".to_vec();
        let ids = [
            same,
            layer_id(None, &spec),
            layer_id(Some(&parent()), &other_cmd),
            layer_id(Some(&parent()), &with_file),
            layer_id(Some(&parent()), &other_file),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn dockerfile_lines_join_and_skip_comments() {
        let lines: Vec<String> = ["", "# syntax comment", "FROM base", "RUN a && \\ ", "  # inside", "  b && \\", "  c", "", "ENV X=1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(logical_lines(&lines), vec!["FROM base", "RUN a &&   b &&   c", "ENV X=1"]);
        assert_eq!(logical_lines(&["RUN echo a\necho b".to_string()]), vec!["RUN echo a\necho b"]);
    }

    #[test]
    fn copy_sources() {
        assert_eq!(context_relative("/modal_requirements.txt"), "modal_requirements.txt");
        assert_eq!(context_relative("."), ".");
        assert_eq!(context_relative("/python/."), "python");
        let spec = LayerSpec {
            context_files: vec![ContextFile { path: "/python/bin/python3".into(), data: vec![] }],
            context_host_files: vec![HostContextFile { path: "app/main.py".into(), source: "/x".into(), sha256: "ab".into(), mode: None }],
            ..Default::default()
        };
        assert!(check_context("python", "/python/.", &spec).is_ok());
        assert!(check_context("app", "./app", &spec).is_ok());
        let err = check_context("other.txt", "other.txt", &spec).unwrap_err().to_string();
        assert!(err.contains("other.txt") && err.contains("python/bin/python3"), "{err}");
        assert_eq!(absolute("sub", Some("/app")), "/app/sub");
        assert_eq!(uv_tool("registry.example/astral-sh/uv:0.5", &["/uv".into()]), Some("uv"));
        assert_eq!(uv_tool("busybox", &["/bin/sh".into()]), None);
    }
}
