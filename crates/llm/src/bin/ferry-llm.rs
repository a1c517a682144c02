//! Stand-alone entry point for `ferry llm`, used before (and besides) the `ferry` binary.
use clap::Parser;

#[derive(Parser)]
#[command(name = "ferry-llm", about = "Ferry model serving (same as `ferry llm`)")]
struct Cli {
    #[command(subcommand)]
    cmd: ferry_llm::LlmCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ferry_llm::run(cli.cmd).await
}
