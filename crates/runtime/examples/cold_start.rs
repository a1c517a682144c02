//! Measures container cold start: spawn → python exits → wait returns, for a container whose
//! image is already built. Run as root:
//!
//! ```text
//! cargo run --release -p ferry-runtime --example cold_start [-- DATA_DIR [RUNS]]
//! ```
//!
//! Prints median/p90/min wall times for `python -c pass` and `python -c "import json, asyncio"`
//! in a container (with memory and cpu limits, as a task gets them) with disk or memory
//! scratch, with a private network (slirp4netns), and the same programs run directly on the
//! host for comparison.

use std::time::{Duration, Instant};

use ferry_runtime::{ContainerRuntime, ContainerSpec, ImageStore, Network, Scratch};

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<50} p50 {:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   (n={})",
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(samples[0]),
        samples.len()
    );
}

#[tokio::main]
async fn main() -> ferry_runtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "/var/tmp/ferry-test".into());
    let runs: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(50);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
    tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            eprintln!("{}", l.text)
        }
    });
    let base = ferry_runtime::prepare_base(data_dir.as_ref(), "3.11", &tx).await?;
    let runtime = ContainerRuntime::new(ImageStore::open(&data_dir)?);

    for (label, code) in [("pass", "pass"), ("import json, asyncio", "import json, asyncio")] {
        // Interleaved, so background load hits every variant alike.
        let mut disk = Vec::new();
        let mut memory = Vec::new();
        let mut private = Vec::new();
        let mut host = Vec::new();
        for i in 0..runs + 2 {
            for (scratch, network, samples) in [
                (Scratch::Disk, Network::Host, &mut disk),
                (Scratch::Memory, Network::Host, &mut memory),
                (Scratch::Disk, Network::Private, &mut private),
            ] {
                let mut spec = ContainerSpec::new(base.layer.clone(), vec!["python3".into(), "-c".into(), code.into()]);
                spec.limits.memory_mib = Some(512);
                spec.limits.cpu_cores = Some(1.0);
                spec.scratch = scratch;
                spec.network = network;
                let t = Instant::now();
                let mut c = runtime.spawn(spec).await?;
                let status = c.wait().await?;
                let elapsed = t.elapsed();
                assert!(status.success(), "{status:?}");
                if i >= 2 {
                    samples.push(elapsed);
                }
            }
            let t = Instant::now();
            let status = tokio::process::Command::new("/usr/bin/python3").args(["-c", code]).status().await.expect("host python");
            assert!(status.success());
            if i >= 2 {
                host.push(t.elapsed());
            }
        }
        stats(&format!("container, disk scratch:   \"{label}\""), disk);
        stats(&format!("container, memory scratch: \"{label}\""), memory);
        stats(&format!("container, private network: \"{label}\""), private);
        stats(&format!("host /usr/bin/python3:     \"{label}\""), host);
    }
    Ok(())
}
