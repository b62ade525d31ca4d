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
    /// Replays a GPU cluster trace (Alibaba 2023 or 2025 CSV) through the engine in virtual
    /// time and prints what happened (docs/simulation.md).
    Simulate(SimulateArgs),
    /// Serves the REST API (docs/api.md) until SIGINT or SIGTERM.
    Serve {
        /// The data directory: `admin.token`, `tokens.jsonl`, and the event log unless
        /// `--store` names another (default: ./dcu-data, or DIR of `--store sqlite:DIR`).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Where the event log lives: sqlite:DIR (the same as `--data DIR`), or
        /// kurrentdb://HOST:2113?tls=false when built with the `kurrentdb` feature.
        #[arg(long)]
        store: Option<String>,
        /// Address to listen on.
        #[arg(long, default_value = api::server::DEFAULT_LISTEN)]
        listen: String,
        /// A catalog JSON file (default: the manual's tables).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// The GPU pool, a JSON file `[{"node", "model", "cards"}]` in placement order
        /// (default: 4 nodes × 8 cards of each model).
        #[arg(long)]
        pool: Option<PathBuf>,
    },
    /// Copies the event log to another store, in global order with its event ids; run again
    /// to resume after an interruption; verifies counts per stream and in total at the end.
    Migrate {
        /// The source: sqlite:DIR (or a kurrentdb:// URL when built with `kurrentdb`).
        #[arg(long)]
        from: String,
        /// The target: sqlite:DIR or kurrentdb://HOST:2113?tls=false (feature `kurrentdb`).
        #[arg(long)]
        to: String,
        /// Copy at most this many events, then stop (run again to continue).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// statement, explain, reconcile, verify, replay (docs/reconciliation.md).
    #[command(flatten)]
    Audit(api::audit::AuditCommand),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The trace CSV file.
    #[arg(long)]
    trace: PathBuf,
    /// The trace format (default: picked from the header).
    #[arg(long, value_enum)]
    format: Option<api::traces::TraceFormat>,
    /// Accounts the 2023 trace (no tenant column) is hashed into.
    #[arg(
        long,
        default_value_t = api::simulate::DEFAULT_ACCOUNTS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(api::simulate::MAX_ACCOUNTS))
    )]
    accounts: u32,
    /// A JSON array of {"node", "model", "cards"} (default: 16 nodes × 8 cards per model).
    #[arg(long)]
    pool: Option<PathBuf>,
    /// Heartbeat every S seconds while a lease runs (TTL = 3 S); 0: none, TTL off.
    #[arg(long, default_value_t = api::simulate::DEFAULT_HEARTBEAT_S)]
    heartbeat_s: u32,
    /// Extension packs an account buys at most per 30 days.
    #[arg(long, default_value_t = api::simulate::DEFAULT_PACKS_PER_MONTH)]
    packs_per_month: u32,
    /// Keep the log in this directory (it must not hold a log yet); default: a temporary
    /// directory, removed afterwards.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
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
            Commands::Simulate(args) => simulate(args).await,
            Commands::Serve {
                data,
                store,
                listen,
                catalog,
                pool,
            } => serve(data, store, listen, catalog, pool).await,
            Commands::Migrate { from, to, limit } => migrate(from, to, limit).await,
            Commands::Audit(command) => api::audit::run(command).await,
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

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let pool = match &args.pool {
        Some(path) => Some(api::simulate::load_pool(path)?),
        None => None,
    };
    let options = api::simulate::SimulateOptions {
        format: args.format,
        accounts: args.accounts,
        pool,
        heartbeat_s: args.heartbeat_s,
        packs_per_month: args.packs_per_month,
        progress: true,
    };
    let report = api::simulate::simulate(&args.trace, args.data, &options).await?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        api::simulate::render_table(&report)
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    if !report.conservation_ok {
        anyhow::bail!("conservation (SPEC I1) does not hold at the end of the run");
    }
    Ok(())
}

async fn serve(
    data: Option<PathBuf>,
    store: Option<String>,
    listen: String,
    catalog: Option<PathBuf>,
    pool: Option<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store: Option<api::store::Store> = store
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--store")?;
    let data = match (data, &store) {
        (Some(data), _) => data,
        (None, Some(api::store::Store::Sqlite(dir))) => dir.clone(),
        (None, _) => PathBuf::from(api::server::DEFAULT_DATA_DIR),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut options = api::server::ServeOptions::new(data);
    options.store = store;
    options.listen = listen;
    options.catalog = catalog;
    options.pool = pool;
    options.admin_token = std::env::var(api::server::auth::ADMIN_TOKEN_ENV).ok();
    api::server::serve(options).await
}

async fn migrate(from: String, to: String, limit: Option<u64>) -> anyhow::Result<()> {
    let report = api::migrate::run(&from, &to, limit).await?;
    println!("dcu migrate: {report}");
    Ok(())
}
