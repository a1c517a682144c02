//! What container isolation costs: cold start, and TCP connect latency and throughput from a
//! container against the same program on the host. Run as root (bench/isolation/run.sh):
//!
//! ```text
//! cargo run --release -p ferry-runtime --example isolation -- cold   [DATA_DIR [RUNS]]
//! cargo run --release -p ferry-runtime --example isolation -- network [DATA_DIR]
//! ```
//!
//! `cold` times spawn → `python3 -c pass` exits → wait, interleaving the host network with
//! the default private network; run it once with `FERRY_USERNS=0` to see what the user
//! namespace adds. `network` makes a network namespace of its own whose loopback answers on
//! 192.0.2.1 (a sink listener there stands for "the internet"), then measures from the host
//! (same namespace), from a container through slirp4netns' NAT, and from a container through
//! a forwarded loopback port (the path a task takes to the control plane).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ferry_runtime::{ContainerRuntime, ContainerSpec, ImageStore, Network, PortForward};

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!("{name:<44} p50 {:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   (n={})", ms(pick(0.5)), ms(pick(0.9)), ms(samples[0]), samples.len());
}

/// Accepts connections; reads to EOF, then answers "ok" (throughput) or just closes.
fn sink(addr: &str) -> u16 {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                let _ = conn.write_all(b"ok");
            });
        }
    });
    port
}

const CLIENT: &str = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
lat = []
for _ in range(200):
    t = time.perf_counter()
    s = socket.create_connection((host, port)); s.shutdown(socket.SHUT_WR); s.recv(2); s.close()
    lat.append(time.perf_counter() - t)
lat.sort()
chunk = b"x" * (1 << 20)
s = socket.create_connection((host, port))
t = time.perf_counter()
for _ in range(512):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR); s.recv(2)
secs = time.perf_counter() - t
print(f"connect p50 {lat[100]*1000:.3f} ms p90 {lat[180]*1000:.3f} ms   throughput {512/secs:.0f} MiB/s")
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ferry_runtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "cold".into());
    let data_dir = args.next().unwrap_or_else(|| "/var/tmp/ferry-test".into());
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
    tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            eprintln!("{}", l.text)
        }
    });
    let base = ferry_runtime::prepare_base(data_dir.as_ref(), "3.11", &tx).await?;
    let runtime = ContainerRuntime::new(ImageStore::open(&data_dir)?);
    let userns = if std::env::var("FERRY_USERNS").as_deref() == Ok("0") { "no user namespace" } else { "user namespace" };

    if what == "cold" {
        let (mut host, mut private) = (Vec::new(), Vec::new());
        for i in 0..runs + 2 {
            for (network, samples) in [(Network::Host, &mut host), (Network::Private, &mut private)] {
                let mut spec = ContainerSpec::new(base.layer.clone(), vec!["python3".into(), "-c".into(), "pass".into()]);
                spec.limits.memory_mib = Some(512);
                spec.limits.cpu_cores = Some(1.0);
                spec.network = network;
                let t = Instant::now();
                let mut c = runtime.spawn(spec).await?;
                let status = c.wait().await?;
                assert!(status.success(), "{status:?}");
                if i >= 2 {
                    samples.push(t.elapsed());
                }
            }
        }
        stats(&format!("cold start, host network, {userns}"), host);
        stats(&format!("cold start, private network, {userns}"), private);
        return Ok(());
    }

    // SAFETY: unshare of the network namespace affects only this (the only) thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "{}", std::io::Error::last_os_error());
    for a in [&["link", "set", "lo", "up"][..], &["addr", "add", "192.0.2.1/32", "dev", "lo"]] {
        assert!(std::process::Command::new("ip").args(a).status().unwrap().success());
    }
    let outside = sink("192.0.2.1:0");
    let local = sink("127.0.0.1:0");
    let out = std::process::Command::new("/usr/bin/python3").args(["-c", CLIENT, "192.0.2.1", &outside.to_string()]).output().unwrap();
    println!("host -> listener:                       {}", String::from_utf8_lossy(&out.stdout).trim());
    for (label, network, host, port, forwards) in [
        ("container (slirp4netns NAT) -> listener:", Network::Private, "192.0.2.1", outside, vec![]),
        ("container (forwarded port) -> listener:", Network::Blocked, "127.0.0.1", local, vec![PortForward { port: local, target: format!("127.0.0.1:{local}").parse().unwrap() }]),
    ] {
        let mut spec = ContainerSpec::new(base.layer.clone(), vec!["python3".into(), "-c".into(), CLIENT.into(), host.into(), port.to_string()]);
        spec.network = network;
        spec.forwards = forwards;
        let mut c = runtime.spawn(spec).await?;
        let mut logs = c.logs().unwrap();
        let mut text = String::new();
        while let Some(l) = logs.recv().await {
            text += &l.text;
        }
        c.wait().await?;
        println!("{label:<40} {text} ({userns})");
    }
    Ok(())
}
