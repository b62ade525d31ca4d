//! `dcu`: the dcu-ledger command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dcu",
    version,
    about = "The billing and quota core of a GPU cloud for students"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Replays a scenario file (JSON lines, SPEC §11) on a fresh embedded log; one JSON line
    /// out per line in.
    Scenario {
        /// The scenario file.
        file: PathBuf,
        /// Keep the log in this directory (it must not hold a log yet); default: a temporary
        /// directory, removed afterwards.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dcu: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Commands::Scenario { file, data } => scenario(file, data).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dcu: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn scenario(file: PathBuf, data: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let input = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the scenario file {}", file.display()))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match data {
        Some(dir) => api::scenario::run(&input, &dir, &mut out).await,
        None => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            api::scenario::run(&input, dir.path(), &mut out).await
        }
    }
}
