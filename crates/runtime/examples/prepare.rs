//! Prepares a base image, as `ferry images prepare` does:
//! `cargo run -p ferry-runtime --example prepare -- DATA_DIR PYTHON_VERSION`.

#[tokio::main]
async fn main() -> ferry_runtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "/var/tmp/ferry-test".into());
    let python = args.next().unwrap_or_else(|| "3.11".into());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ferry_runtime::LogLine>();
    let printer = tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            println!("{}", l.text)
        }
    });
    let base = ferry_runtime::prepare_base(data_dir.as_ref(), &python, &tx).await;
    drop(tx);
    let _ = printer.await;
    let base = base?;
    println!("layer {} (Debian {}, Python {}, newly made: {})", base.layer, base.suite, base.python_version, base.created);
    Ok(())
}
