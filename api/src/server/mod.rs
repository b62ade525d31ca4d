//! `dcu serve`: the REST face of the ledger (axum on tokio).
//!
//! - `engine_task`: the one task that owns `Engine<StoreLog>` (SQLite, or KurrentDB with the
//!   `kurrentdb` feature); handlers reach it through a bounded channel with a oneshot reply.
//! - `routes`: the endpoints and the OpenAPI document generated from them (`utoipa`).
//! - `audit_routes`: statements, the reconciliation report and invoices (issue 6).
//! - `auth`: bearer tokens (admin; account tokens stored as hashes in `DIR/tokens.jsonl`).
//! - `problem`: RFC 9457 errors and the SPEC code ↔ HTTP status table.
//! - `wire`: request and response shapes.
//!
//! Shutdown (SIGINT/SIGTERM or `RunningServer::shutdown`): stop accepting, let in-flight
//! requests finish (each waits for its append to be durable), drain the engine's queue,
//! close the log.

pub mod audit_routes;
pub mod auth;
pub mod engine_task;
pub mod problem;
pub mod routes;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use ledger::catalog::Catalog;
use ledger::decide::Context;
use scheduler::{Engine, NodeSpec, Pool};
use tokio::sync::oneshot;

use crate::store::{Store, StoreLog};

pub use engine_task::{system_clock, Clock, DEFAULT_TIMER_POLL, ENGINE_QUEUE_CAPACITY};

use auth::TokenStore;
use engine_task::EngineHandle;

/// Largest request body accepted (a real one is well under 1 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A request body must arrive whole within this time, or the answer is 408
/// `request_timeout` and the connection is closed.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./dcu-data";
/// Without `--pool`: this many nodes of [`DEFAULT_POOL_CARDS`] cards for each model.
pub const DEFAULT_POOL_NODES: usize = 4;
pub const DEFAULT_POOL_CARDS: u32 = 8;

/// How to run a server.
pub struct ServeOptions {
    /// `admin.token`, `tokens.jsonl`, and the SQLite log unless `store` says otherwise.
    pub data_dir: PathBuf,
    /// Where the event log lives; `None`: `sqlite:` + `data_dir`.
    pub store: Option<Store>,
    pub listen: String,
    /// A catalog JSON file; default: the manual's tables.
    pub catalog: Option<PathBuf>,
    /// The admin token; `None`: `DIR/admin.token` (created if missing).
    pub admin_token: Option<String>,
    /// `now` for commands; the engine never lets it go backwards.
    pub clock: Clock,
    /// M4: a JSON file `[{"node", "model", "cards"}]`, in placement order; default:
    /// [`DEFAULT_POOL_NODES`] × [`DEFAULT_POOL_CARDS`] cards of each catalog model.
    pub pool: Option<PathBuf>,
    /// The timer sleeps until the next deadline but at most this long (real time) before it
    /// looks again; tests with a manual clock set it short.
    pub timer_poll: Duration,
}

impl ServeOptions {
    pub fn new(data_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            data_dir,
            store: None,
            listen: DEFAULT_LISTEN.into(),
            catalog: None,
            admin_token: None,
            clock: system_clock(),
            pool: None,
            timer_poll: DEFAULT_TIMER_POLL,
        }
    }
}

/// What handlers share: one `Arc`, so the extractors' clones of it cost one count each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
pub struct Shared {
    pub engine: EngineHandle,
    pub tokens: Arc<TokenStore>,
    pub catalog: Arc<serde_json::Value>,
    pub metrics: Arc<Metrics>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// One route's request counts by (method, status).
type CountsByMethodAndStatus = BTreeMap<(&'static str, u16), u64>;

/// Request counts and the number of events appended, in Prometheus text.
#[derive(Default)]
pub struct Metrics {
    /// Route template → (method, status) → count. A request allocates only the first time
    /// its route is seen.
    requests: Mutex<BTreeMap<String, CountsByMethodAndStatus>>,
    pub events_appended: Arc<AtomicU64>,
}

impl Metrics {
    fn count(&self, method: &'static str, route: &str, status: u16) {
        if let Ok(mut requests) = self.requests.lock() {
            let by_route = match requests.get_mut(route) {
                Some(by_route) => by_route,
                None => requests.entry(route.to_string()).or_default(),
            };
            *by_route.entry((method, status)).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP dcu_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE dcu_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            let counts = requests.iter().flat_map(|(route, by_route)| {
                by_route
                    .iter()
                    .map(move |((method, status), count)| (method, route, status, count))
            });
            for (method, route, status, count) in counts {
                let _ = writeln!(
                    out,
                    "dcu_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP dcu_events_appended_total Events appended to the log by this process.\n",
        );
        out.push_str("# TYPE dcu_events_appended_total counter\n");
        let _ = writeln!(
            out,
            "dcu_events_appended_total {}",
            self.events_appended.load(Ordering::Relaxed)
        );
        out
    }
}

/// Counts and logs every request. Labels are bounded: the route template (not the path) and
/// a known method.
async fn observe(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state.metrics.count(method, route, status);
    tracing::info!(
        method,
        route,
        status,
        elapsed_us = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

pub fn router(state: AppState) -> Router {
    use audit_routes::{get_reconciliation, get_statement, post_invoice};
    use routes::*;
    Router::new()
        .route("/v1/accounts", post(open_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/orders", post(post_order))
        .route("/v1/accounts/{id}/balance", get(get_balance))
        .route("/v1/accounts/{id}/quota", get(get_quota))
        .route("/v1/accounts/{id}/events", get(get_events))
        .route("/v1/accounts/{id}/usage", post(post_usage))
        .route("/v1/accounts/{id}/logins", post(post_login))
        .route("/v1/accounts/{id}/storage", post(post_storage))
        .route("/v1/accounts/{id}/ban", post(post_ban))
        .route("/v1/accounts/{id}/tokens", post(post_token))
        .route("/v1/accounts/{id}/leases", get(get_account_leases))
        .route("/v1/accounts/{id}/statement", get(get_statement))
        .route("/v1/accounts/{id}/invoices", post(post_invoice))
        .route("/v1/reconciliation", get(get_reconciliation))
        .route("/v1/leases", post(post_lease))
        .route("/v1/leases/{id}", get(get_lease))
        .route("/v1/leases/{id}/heartbeat", post(post_heartbeat))
        .route("/v1/leases/{id}/release", post(post_release))
        .route("/v1/leases/{id}/cancel", post(post_cancel))
        .route("/v1/pool", get(get_pool))
        .route("/v1/catalog", get(get_catalog))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A server running in the background.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight requests, drains the engine, closes the log.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await.context("the server task failed")?
    }
}

/// Opens the log (`store`, default the SQLite log in `data_dir`), starts the engine task and
/// listens.
pub async fn start(options: ServeOptions) -> anyhow::Result<RunningServer> {
    let dir = options.data_dir;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let catalog = match &options.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the catalog {}", path.display()))?;
            Catalog::from_json(&text).with_context(|| format!("bad catalog {}", path.display()))?
        }
        None => Catalog::default(),
    };
    // One server per data directory (and per SQLite log): a second one would hand out the
    // same cards again and race the first one's writes.
    let mut locks = vec![lock_dir(&dir)?];
    if let Some(Store::Sqlite(log_dir)) = &options.store {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("cannot create the log directory {}", log_dir.display()))?;
        if log_dir.canonicalize().ok() != dir.canonicalize().ok() {
            locks.push(lock_dir(log_dir)?);
        }
    }
    // Listening first: a busy port is found before anything is opened.
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let admin = auth::admin_token(&dir, options.admin_token)?;
    let tokens = Arc::new(TokenStore::load(&dir, &admin)?);
    let catalog_json = serde_json::to_value(&catalog)?;
    let pool = load_pool(options.pool.as_deref(), &catalog)?;
    let store = options
        .store
        .clone()
        .unwrap_or_else(|| Store::Sqlite(dir.clone()));
    if let Store::Sqlite(log_dir) = &store {
        // A log changed behind its back is refused rather than served (SPEC I3: the log is
        // the only truth, so a forged event would become a balance).
        crate::store::check_sqlite_chain(log_dir)?;
    }
    let log = StoreLog::open(&store)?;
    let mut engine = Engine::open_with_pool(
        log,
        Context {
            catalog,
            ..Context::default()
        },
        Some(pool),
    )
    .await?;
    // What fell due while the server was down (TTL expiries, period ends) and queued leases
    // that fit the free cards are appended, at their own instants, before the first request.
    let now = (options.clock)().max(engine.clock());
    engine.tick(now).await?;
    let metrics = Arc::new(Metrics::default());
    let (engine, engine_task) = engine_task::spawn(
        engine,
        options.clock,
        Arc::clone(&metrics.events_appended),
        options.timer_poll,
    );
    let addr = listener.local_addr()?;
    let app = router(AppState(Arc::new(Shared {
        engine,
        tokens,
        catalog: Arc::new(catalog_json),
        metrics,
    })));
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    tracing::info!(%addr, data = %dir.display(), %store, "dcu serve listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
                tracing::info!("shutting down: finishing in-flight requests");
            })
            .await;
        // The router (and every engine handle in it) is gone: the engine drains its queue
        // and closes the log.
        let closed = engine_task.await.context("the engine task panicked")?;
        served.context("the HTTP server failed")?;
        closed.context("closing the log failed")?;
        // Released only now that the log is closed.
        drop(locks);
        tracing::info!("log closed; bye");
        Ok(())
    });
    Ok(RunningServer {
        addr,
        shutdown: Some(shutdown_tx),
        task,
    })
}

/// The name of the lock file a running server holds in its data directory.
pub const LOCK_FILE_NAME: &str = "serve.lock";

/// Takes the exclusive lock of a directory (an OS file lock: it goes away with the process,
/// even after kill -9), or says which directory another process is serving.
fn lock_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another dcu process is serving {} (it holds {}): stop it first, or give this \
             one another --data",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// M4: the pool from a `--pool` file (checked by `Pool::new`), or the default.
fn load_pool(path: Option<&std::path::Path>, catalog: &Catalog) -> anyhow::Result<Pool> {
    let models: Vec<&str> = catalog
        .models
        .iter()
        .map(|model| model.id.as_str())
        .collect();
    let pool = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the pool {}", path.display()))?;
            let specs: Vec<NodeSpec> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "bad pool {}: expected [{{\"node\", \"model\", \"cards\"}}]",
                    path.display()
                )
            })?;
            Pool::new(&specs, &models).with_context(|| format!("bad pool {}", path.display()))?
        }
        None => Pool::uniform(&models, DEFAULT_POOL_NODES, DEFAULT_POOL_CARDS)?,
    };
    Ok(pool)
}

/// `dcu serve`: runs until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let server = start(options).await?;
    wait_for_signal().await;
    server.shutdown().await
}

async fn wait_for_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT"),
        () = terminate => tracing::info!("SIGTERM"),
    }
}
