//! Operator commands: `ferry status` (what runs, what waits, what the data dir holds) and
//! `ferry doctor` (is this host ready to run Ferry, and how to fix what is not).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `ferry status`: apps from the store, live load from a running server's `/metrics`, and the
/// data dir's disk use and the server's memory.
pub async fn status(data_dir: &Path) -> anyhow::Result<()> {
    if !crate::database_server() && !data_dir.join("ferry.db").exists() {
        anyhow::bail!("{} holds no Ferry database: start one with `ferry serve --data-dir {}`", data_dir.display(), data_dir.display());
    }
    let store = crate::open_store(data_dir, Default::default()).await?;
    println!("Data dir {}", data_dir.display());

    // What a running server holds in memory, from its /metrics.
    let dashboard = std::fs::read_to_string(data_dir.join("dashboard.url")).ok();
    let metrics = dashboard.as_deref().and_then(|u| fetch_metrics(u.trim()).ok());
    match (&dashboard, &metrics) {
        (Some(url), Some(_)) => println!("Server: running, dashboard at {}", url.trim()),
        (Some(url), None) => println!("Server: not answering at {} (stopped?)", url.trim()),
        (None, _) => println!("Server: unknown (no dashboard.url: not started with a dashboard)"),
    }
    if let Some(pid) = find_server(data_dir) {
        println!("  pid {pid}, resident memory {}", rss(pid).map(human).unwrap_or_else(|| "?".into()));
    }

    println!("\nApps running or deployed:");
    let mut any = false;
    for env in store.list_environments().await? {
        for app in store.list_apps(&env.name).await? {
            if !app.state.is_live() {
                continue;
            }
            any = true;
            let label = app.name.clone().unwrap_or_else(|| app.description.clone());
            println!("  {:<28} {:<22} {:?} since {}", app.id, label, app.state, crate::config::format_time(app.created_at));
        }
    }
    if !any {
        println!("  none");
    }

    if let Some(m) = &metrics {
        println!("\nContainers:");
        let states: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("ferry_containers{")).collect();
        for (k, v) in &states {
            println!("  {:<10} {v}", label_value(k, "state").unwrap_or_default());
        }
        println!("\nInputs waiting and running, by function:");
        let mut by_fn: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("ferry_function_inputs{")) {
            let (Some(f), Some(s)) = (label_value(k, "function_id"), label_value(k, "state")) else { continue };
            let e = by_fn.entry(f).or_default();
            if s == "queued" { e.0 += v } else { e.1 += v }
        }
        if by_fn.values().all(|(q, r)| *q == 0.0 && *r == 0.0) {
            println!("  none");
        }
        for (f, (q, r)) in by_fn.into_iter().filter(|(_, (q, r))| *q > 0.0 || *r > 0.0) {
            let tag = store.function(&f).await.map(|r| r.tag).unwrap_or_default();
            println!("  {f:<28} {tag:<22} queued {q:.0}, running {r:.0}");
        }
    }

    println!("\nDisk use:");
    let mut entries: Vec<_> = std::fs::read_dir(data_dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    let mut total = 0;
    for e in entries {
        let size = du(&e.path());
        total += size;
        println!("  {:<24} {:>10}", e.file_name().to_string_lossy(), human(size));
    }
    println!("  {:<24} {:>10}", "total", human(total));
    if let Some((free, all)) = free_space(data_dir) {
        println!("  filesystem: {} free of {}", human(free), human(all));
    }
    if let Some((avail, all)) = meminfo() {
        println!("Host memory: {} available of {}", human(avail), human(all));
    }
    Ok(())
}

/// GET `/metrics` of a dashboard on this host; returns `series → value`.
fn fetch_metrics(base: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let hostport = base.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("not an http URL"))?.trim_end_matches('/');
    let addr: SocketAddr = hostport.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (head, text) = body.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("bad answer"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "answered {head}");
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect())
}

fn label_value(series: &str, label: &str) -> Option<String> {
    let start = series.find(&format!("{label}=\""))? + label.len() + 2;
    let rest = &series[start..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The `ferry serve` process using this data dir, by its command line.
fn find_server(data_dir: &Path) -> Option<u32> {
    let want = data_dir.canonicalize().ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.first().is_some_and(|a| a.ends_with("ferry")) || !args.iter().any(|a| a == "serve") {
            continue;
        }
        let dir = args
            .iter()
            .position(|a| a == "--data-dir")
            .and_then(|i| args.get(i + 1).map(PathBuf::from))
            .or_else(|| args.iter().find_map(|a| a.strip_prefix("--data-dir=").map(PathBuf::from)))
            .or_else(|| std::env::var_os("FERRY_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(crate::config::default_data_dir);
        let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
        if cwd.join(&dir).canonicalize().ok().as_ref() == Some(&want) {
            return Some(pid);
        }
    }
    None
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let get = |k: &str| -> Option<u64> {
        Some(text.lines().find(|l| l.starts_with(k))?.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((get("MemAvailable:")?, get("MemTotal:")?))
}

/// Bytes under a path (apparent sizes; symlinks not followed; hard links counted once per name).
fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| du(&e.path())).sum()).unwrap_or(0)
}

/// Free and total bytes of the filesystem holding `path` (or its nearest existing parent).
fn free_space(path: &Path) -> Option<(u64, u64)> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64 * st.f_frsize as u64, st.f_blocks as u64 * st.f_frsize as u64))
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut i) = (n as f64, 0);
    while v >= 1024.0 && i < 4 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

struct Check {
    name: &'static str,
    ok: bool,
    /// Optional checks warn instead of failing.
    optional: bool,
    detail: String,
    fix: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, ok, optional: false, detail: detail.into(), fix: fix.into() }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

/// `ferry doctor`: checks the host and says how to fix each failure. Fails when a required
/// check fails.
pub fn doctor(data_dir: &Path, host: IpAddr, ports: &[u16]) -> anyhow::Result<()> {
    let mut checks = Vec::new();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(check("kernel", !kernel.is_empty(), format!("Linux {}", kernel.trim()), "Ferry runs on Linux only"));

    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    checks.push(check(
        "overlayfs",
        fs.lines().any(|l| l.trim_end().ends_with("overlay")),
        "the kernel's overlay filesystem (container roots and image layers)",
        "load it with `modprobe overlay` (and add `overlay` to /etc/modules-load.d/)",
    ));

    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let (cg_ok, cg_detail) = match &v2 {
        Some(c) => {
            let missing: Vec<_> = ["memory", "cpu", "pids"].into_iter().filter(|k| !c.split_whitespace().any(|x| x == *k)).collect();
            (missing.is_empty(), if missing.is_empty() { "cgroup v2 with memory, cpu, pids".to_string() } else { format!("cgroup v2 lacks {}", missing.join(", ")) })
        }
        None => {
            let v1 = ["memory", "cpu", "pids"].iter().all(|c| Path::new("/sys/fs/cgroup").join(c).exists());
            (v1, if v1 { "cgroup v1 with memory, cpu, pids".into() } else { "no cgroup memory/cpu/pids controllers found".into() })
        }
    };
    checks.push(check("cgroups", cg_ok, cg_detail, "mount cgroup2 at /sys/fs/cgroup (or the v1 memory, cpu and pids hierarchies) and enable the controllers"));

    let ns_ok = ["mnt", "pid", "ipc", "uts", "net"].iter().all(|n| Path::new("/proc/self/ns").join(n).exists());
    checks.push(check("namespaces", ns_ok, "mount, pid, ipc, uts and net namespaces", "use a kernel built with CONFIG_NAMESPACES (and its parts)"));
    let max_userns: i64 = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let mut userns = check(
        "user namespaces",
        max_userns > 0,
        format!("user.max_user_namespaces = {max_userns}"),
        "`sysctl -w user.max_user_namespaces=15000` (and kernel.unprivileged_userns_clone=1 where it exists)",
    );
    userns.optional = true;
    checks.push(userns);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    checks.push(check("root", root, "containers are made with namespaces, mounts and cgroups, which need root", "run `ferry serve` as root (or in a privileged container)"));

    for (tool, pkg, optional) in [("debootstrap", "debootstrap", false), ("slirp4netns", "slirp4netns", true)] {
        let found = which(tool);
        let mut c = check(
            if optional { "slirp4netns" } else { "debootstrap" },
            found.is_some(),
            found.map(|p| p.display().to_string()).unwrap_or_else(|| format!("{tool} not on PATH")),
            format!("`apt-get install {pkg}`"),
        );
        c.optional = optional;
        checks.push(c);
    }

    let min_free = 5u64 << 30;
    match free_space(data_dir) {
        Some((free, _)) => checks.push(check(
            "disk space",
            free >= min_free,
            format!("{} free for {}", human(free), data_dir.display()),
            format!("free at least {} (base images and layers), or use --data-dir on a larger disk", human(min_free)),
        )),
        None => checks.push(check("disk space", false, "cannot read the filesystem's free space", "check that the data dir's parent exists")),
    }

    checks.push(data_dir_check(data_dir));
    let key = data_dir.join("secret.key");
    if let Ok(m) = std::fs::metadata(&key) {
        let mode = m.permissions().mode() & 0o777;
        checks.push(check("secret key", mode & 0o077 == 0, format!("{} mode {mode:o}", key.display()), format!("`chmod 600 {}`", key.display())));
    }

    for port in ports {
        let free = TcpListener::bind(SocketAddr::new(host, *port)).is_ok();
        let serving = std::fs::read_to_string(data_dir.join("dashboard.url")).is_ok_and(|u| fetch_metrics(u.trim()).is_ok());
        let mut c = check(
            "port",
            free,
            format!("{host}:{port} {}", if free { "is free" } else { "is in use" }),
            if serving { "a Ferry server already runs on this data dir (see `ferry status`)".to_string() } else { format!("stop what listens on {port}, or pick another with --port / --dashboard-port") },
        );
        c.optional = serving;
        checks.push(c);
    }

    checks.push(client_check());

    let mut failed = 0;
    for c in &checks {
        let tag = if c.ok { "ok  " } else if c.optional { "warn" } else { "FAIL" };
        println!("{tag} {:<16} {}", c.name, c.detail);
        if !c.ok {
            println!("     fix: {}", c.fix);
            if !c.optional {
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    println!("This host can run Ferry.");
    Ok(())
}

fn data_dir_check(dir: &Path) -> Check {
    let name = "data dir";
    let Ok(meta) = std::fs::metadata(dir) else {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let creatable = parent.exists() || parent.parent().is_some();
        return check(name, creatable, format!("{} does not exist yet; `ferry serve` creates it", dir.display()), format!("`mkdir -p {}`", dir.display()));
    };
    if !meta.is_dir() {
        return check(name, false, format!("{} is not a directory", dir.display()), "choose another --data-dir");
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let writable = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    let mode = meta.permissions().mode() & 0o777;
    if !writable {
        return check(name, false, format!("{} is not writable by this user", dir.display()), format!("`chown -R $(id -u) {}` or run as its owner", dir.display()));
    }
    check(
        name,
        mode & 0o022 == 0,
        format!("{} mode {mode:o}", dir.display()),
        format!("`chmod go-w {}`: others must not change Ferry's database and keys", dir.display()),
    )
}

/// The modal client next to this checkout (`.venv`) or on PATH must be the pinned version.
fn client_check() -> Check {
    let pinned = ferry_proto::CLIENT_VERSION;
    let python = [PathBuf::from(".venv/bin/python")]
        .into_iter()
        .find(|p| p.exists())
        .or_else(|| which("modal").and_then(|m| Some(m.parent()?.join("python"))).filter(|p| p.exists()));
    let Some(python) = python else {
        let mut c = check("modal client", false, "no .venv here and no `modal` on PATH", format!("`pip install modal=={pinned}` where your apps run"));
        c.optional = true;
        return c;
    };
    let out = std::process::Command::new(&python).args(["-c", "import modal; print(modal.__version__)"]).output();
    let version = out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match version {
        Some(v) => check("modal client", v == pinned, format!("modal {v} ({})", python.display()), format!("`{} -m pip install modal=={pinned}`", python.display())),
        None => check("modal client", false, format!("{} cannot import modal", python.display()), format!("`{} -m pip install modal=={pinned}`", python.display())),
    }
}
