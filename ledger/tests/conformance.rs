//! The `EventLog` conformance suite (`ledger::log::conformance`) on every backend.
//!
//! SQLite: always, one test per case, each on a fresh log.
//!
//! KurrentDB (cargo feature `kurrentdb`): the cases need a server, so they are `#[ignore]`d
//! and cargo lists them as ignored. To run them:
//! `DCU_KURRENTDB_URL='kurrentdb://localhost:2113?tls=false' cargo test -p ledger
//! --features kurrentdb --test conformance -- --ignored`. Run with `--ignored` but without
//! the variable, they fail saying why (never a silent pass).

use ledger::log::conformance;
use ledger::log::sqlite::SqliteLog;

fn sqlite() -> (tempfile::TempDir, SqliteLog) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SqliteLog::open(dir.path()).expect("open the SQLite log");
    (dir, log)
}

#[tokio::test]
async fn sqlite_append_and_read_back() {
    let (_dir, log) = sqlite();
    conformance::append_and_read_back(&log).await;
}

#[tokio::test]
async fn sqlite_conflict_on_stale_revision() {
    let (_dir, log) = sqlite();
    conformance::conflict_on_stale_revision(&log).await;
}

#[tokio::test]
async fn sqlite_idempotent_retry() {
    let (_dir, log) = sqlite();
    conformance::idempotent_retry(&log).await;
}

#[tokio::test]
async fn sqlite_global_order_across_streams() {
    let (_dir, log) = sqlite();
    conformance::global_order_across_streams(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_subscription_sees_history_then_live() {
    let (_dir, log) = sqlite();
    conformance::subscription_sees_history_then_live(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_subscriber_resumes_from_checkpoint() {
    let (_dir, log) = sqlite();
    conformance::subscriber_resumes_from_checkpoint(&log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_run_all_on_one_log() {
    let (_dir, log) = sqlite();
    conformance::run_all(&log).await;
}

/// CI builds the tests without the `kurrentdb` feature and has no KurrentDB server: this
/// ignored test is how its output says, every run, that the KurrentDB cases did not run.
#[cfg(not(feature = "kurrentdb"))]
#[test]
#[ignore = "KurrentDB conformance NOT run: needs `--features kurrentdb` and DCU_KURRENTDB_URL (a server)"]
fn kurrentdb_conformance_not_run_in_this_build() {}

#[cfg(feature = "kurrentdb")]
mod kurrentdb {
    use std::time::Duration;

    use ledger::log::conformance;
    use ledger::log::kurrentdb::KurrentLog;
    use ledger::log::{EventLog, ExpectedRevision, LogError};

    const URL_ENV: &str = "DCU_KURRENTDB_URL";

    /// The log on the server named by `DCU_KURRENTDB_URL`; fails the test, saying why, when
    /// the variable is unset.
    fn server() -> KurrentLog {
        let Ok(url) = std::env::var(URL_ENV) else {
            eprintln!(
                "KurrentDB conformance NOT run: {URL_ENV} is not set \
                 (e.g. kurrentdb://localhost:2113?tls=false)"
            );
            panic!("{URL_ENV} is not set: no KurrentDB server to run the conformance cases on");
        };
        KurrentLog::connect(&url).expect("connect to KurrentDB")
    }

    #[tokio::test]
    #[ignore = "needs a KurrentDB server: set DCU_KURRENTDB_URL and pass --ignored"]
    async fn kurrentdb_append_and_read_back() {
        conformance::append_and_read_back(&server()).await;
    }

    #[tokio::test]
    #[ignore = "needs a KurrentDB server: set DCU_KURRENTDB_URL and pass --ignored"]
    async fn kurrentdb_conflict_on_stale_revision() {
        conformance::conflict_on_stale_revision(&server()).await;
    }

    #[tokio::test]
    #[ignore = "needs a KurrentDB server: set DCU_KURRENTDB_URL and pass --ignored"]
    async fn kurrentdb_idempotent_retry() {
        conformance::idempotent_retry(&server()).await;
    }

    #[tokio::test]
    #[ignore = "needs a KurrentDB server: set DCU_KURRENTDB_URL and pass --ignored"]
    async fn kurrentdb_global_order_across_streams() {
        conformance::global_order_across_streams(&server()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a KurrentDB server: set DCU_KURRENTDB_URL and pass --ignored"]
    async fn kurrentdb_subscription_sees_history_then_live() {
        conformance::subscription_sees_history_then_live(&server()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a KurrentDB server: set DCU_KURRENTDB_URL and pass --ignored"]
    async fn kurrentdb_subscriber_resumes_from_checkpoint() {
        conformance::subscriber_resumes_from_checkpoint(&server()).await;
    }

    /// Runs without a server: nothing listens on this loopback port, so every operation must
    /// fail with `LogError::Storage` in bounded time, without a panic or a hang.
    #[tokio::test]
    async fn kurrentdb_unreachable_server_is_a_storage_error() {
        let log = KurrentLog::connect("kurrentdb://127.0.0.1:1?tls=false&maxDiscoverAttempts=2")
            .expect("a well-formed connection string");
        let limit = Duration::from_secs(60);
        let append = tokio::time::timeout(
            limit,
            log.append(
                "unreachable",
                ExpectedRevision::Any,
                vec![conformance::test_event(1)],
            ),
        )
        .await
        .expect("append gave up in time");
        assert!(matches!(append, Err(LogError::Storage(_))), "{append:?}");
        let read = tokio::time::timeout(limit, log.read_all(0, 10))
            .await
            .expect("read_all gave up in time");
        assert!(matches!(read, Err(LogError::Storage(_))), "{read:?}");
    }
}
