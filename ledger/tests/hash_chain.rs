//! Tamper evidence of the SQLite log (issue 6): every row is chained by `stream_hash` and
//! `log_hash`; `verify_chain` names the first row whose links do not hold.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use ledger::log::sqlite::{verify_chain, SqliteLog, DB_FILE_NAME};
use ledger::log::{EventLog, ExpectedRevision, NewEvent};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: "Tested".to_owned(),
        version: 1,
        data: format!(r#"{{"n":{n}}}"#).into_bytes(),
    }
}

/// Three streams, interleaved: a (0..3), b (0..3), c (0..3) → positions 1..=9, in batches.
async fn filled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SqliteLog::open(dir.path()).expect("open");
    for round in 0..3 {
        for stream in ["a", "b", "c"] {
            let expected = if round == 0 {
                ExpectedRevision::NoStream
            } else {
                ExpectedRevision::Exact(round - 1)
            };
            log.append(stream, expected, vec![event(round)])
                .await
                .expect("append");
        }
    }
    log.close().await.expect("close");
    dir
}

fn sql(dir: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE_NAME)).expect("open db");
    conn.execute_batch(statement).expect("tamper");
}

fn broken_at(dir: &Path) -> (u64, String, u64) {
    let report = verify_chain(dir).expect("verify runs");
    let broken = report.broken.expect("the chain must be broken");
    (broken.position, broken.stream, broken.revision)
}

#[tokio::test]
async fn chain_of_an_untouched_log_holds_and_survives_reopening() {
    let dir = filled().await;
    let report = verify_chain(dir.path()).expect("verify");
    assert_eq!(report.broken, None);
    assert_eq!((report.events, report.streams), (9, 3));
    // Appends after a reopen continue the chain.
    let log = SqliteLog::open(dir.path()).expect("reopen");
    log.append("a", ExpectedRevision::Exact(2), vec![event(9), event(10)])
        .await
        .expect("append");
    log.close().await.expect("close");
    let report = verify_chain(dir.path()).expect("verify");
    assert_eq!((report.events, report.broken), (11, None));
}

#[tokio::test]
async fn chain_one_byte_of_one_event_changed_is_found_at_that_event() {
    let dir = filled().await;
    // Position 5 is stream b, revision 1: {"n":1} → {"n":7}.
    sql(
        dir.path(),
        "UPDATE events SET data = CAST('{\"n\":7}' AS BLOB) WHERE position = 5",
    );
    assert_eq!(broken_at(dir.path()), (5, "b".to_owned(), 1));
}

#[tokio::test]
async fn chain_deleted_row_is_found_at_the_next_event() {
    let dir = filled().await;
    // Delete position 4 (stream a, revision 1): the next row, position 5, no longer follows.
    sql(dir.path(), "DELETE FROM events WHERE position = 4");
    assert_eq!(broken_at(dir.path()), (5, "b".to_owned(), 1));
}

#[tokio::test]
async fn chain_deleted_row_with_relinked_log_hash_is_found_by_its_stream() {
    let dir = filled().await;
    // Even a forger who fixes nothing else: deleting stream c's revision 0 leaves revision 1
    // of c without its predecessor.
    sql(dir.path(), "DELETE FROM events WHERE position = 3");
    assert_eq!(broken_at(dir.path()), (4, "a".to_owned(), 1));
}

#[tokio::test]
async fn chain_two_rows_with_swapped_data_are_found_at_the_first() {
    let dir = filled().await;
    // Swap the payloads of positions 2 (b, 0) and 7 (a, 2).
    sql(
        dir.path(),
        "UPDATE events SET data = CASE position \
           WHEN 2 THEN (SELECT data FROM events WHERE position = 7) \
           ELSE (SELECT data FROM events WHERE position = 2) END \
         WHERE position IN (2, 7)",
    );
    assert_eq!(broken_at(dir.path()), (2, "b".to_owned(), 0));
}

#[tokio::test]
async fn chain_edited_hash_is_found() {
    let dir = filled().await;
    sql(
        dir.path(),
        "UPDATE events SET log_hash = zeroblob(32) WHERE position = 8",
    );
    assert_eq!(broken_at(dir.path()), (8, "b".to_owned(), 2));
}

#[tokio::test]
async fn chain_a_version_1_log_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    sql(dir.path(), "PRAGMA user_version = 1");
    let error = SqliteLog::open(dir.path()).expect_err("refused");
    assert!(error.to_string().contains("schema version 1"), "{error}");
}
