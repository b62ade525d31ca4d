//! A baseline for `scripts/bench-api.sh`: an axum server answering `GET /` with "ok", on the
//! same tokio runtime as `dcu serve` (multi-threaded, one worker per core, everything
//! enabled). What the balance endpoint's throughput is compared with.
//!
//! `cargo run --release -p api --example trivial_http -- 127.0.0.1:8090`

use std::process::ExitCode;

use axum::routing::get;
use axum::Router;

fn main() -> ExitCode {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".to_string());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("trivial_http: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        eprintln!("trivial_http listening on {}", listener.local_addr()?);
        let app = Router::new().route("/", get(|| async { "ok" }));
        axum::serve(listener, app).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("trivial_http: {error}");
            ExitCode::FAILURE
        }
    }
}
