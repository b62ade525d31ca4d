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
    /// Serves the REST API (docs/api.md) until SIGINT or SIGTERM.
    Serve {
        /// The data directory: the event log, `admin.token`, `tokens.jsonl`.
        #[arg(long, default_value = api::server::DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = api::server::DEFAULT_LISTEN)]
        listen: String,
        /// A catalog JSON file (default: the manual's tables).
        #[arg(long)]
        catalog: Option<PathBuf>,
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
            Commands::Serve {
                data,
                listen,
                catalog,
            } => serve(data, listen, catalog).await,
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
    let opened = std::fs::File::open(&file)
        .with_context(|| format!("cannot read the scenario file {}", file.display()))?;
    let input = std::io::BufReader::new(opened);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match data {
        Some(dir) => api::scenario::run(input, &dir, &mut out).await,
        None => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            api::scenario::run(input, dir.path(), &mut out).await
        }
    }
}

async fn serve(data: PathBuf, listen: String, catalog: Option<PathBuf>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut options = api::server::ServeOptions::new(data);
    options.listen = listen;
    options.catalog = catalog;
    options.admin_token = std::env::var(api::server::auth::ADMIN_TOKEN_ENV).ok();
    api::server::serve(options).await
}
