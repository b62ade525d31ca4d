//! Integration tests of `ledger::log::sqlite::SqliteLog`.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ledger::log::sqlite::{SqliteLog, SqliteSubscription, DB_FILE_NAME, SCHEMA_VERSION};
use ledger::log::{
    EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, Subscription,
    MAX_EVENTS_PER_APPEND,
};
use uuid::Uuid;

fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        version: 1,
        data: format!(r#"{{"n":{n}}}"#).into_bytes(),
    }
}

fn events(count: u64) -> Vec<NewEvent> {
    (0..count).map(|n| event("Tested", n)).collect()
}

fn open_temp() -> (tempfile::TempDir, SqliteLog) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SqliteLog::open(dir.path()).expect("open log");
    (dir, log)
}

async fn read_everything(log: &SqliteLog) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_all(after, 1_000).await.expect("read_all");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.position;
        all.extend(page);
    }
}

async fn next_within(sub: &mut SqliteSubscription) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("subscription timed out")
        .expect("subscription failed")
}

fn assert_send<T: Send>(_: &T) {}

fn assert_same_event(recorded: &RecordedEvent, new: &NewEvent) {
    assert_eq!(recorded.id, new.id);
    assert_eq!(recorded.event_type, new.event_type);
    assert_eq!(recorded.version, new.version);
    assert_eq!(recorded.data, new.data);
}

#[tokio::test]
async fn log_append_and_read_back() {
    let (dir, log) = open_temp();
    assert!(dir.path().join(DB_FILE_NAME).exists());
    let written = events(3);
    let outcome = log
        .append("account-1", ExpectedRevision::NoStream, written.clone())
        .await
        .expect("append");
    assert_eq!(outcome.last_revision, 2);
    assert_eq!(outcome.last_position, 3);
    assert_eq!(log.last_position(), 3);

    let read = log.read_stream("account-1", 0, 100).await.expect("read");
    assert_eq!(read.len(), 3);
    for (i, (recorded, new)) in read.iter().zip(&written).enumerate() {
        assert_same_event(recorded, new);
        assert_eq!(recorded.stream, "account-1");
        assert_eq!(recorded.revision, i as u64);
        assert_eq!(recorded.position, i as u64 + 1);
    }
    let middle = log.read_stream("account-1", 1, 1).await.expect("read");
    assert_eq!(middle.len(), 1);
    assert_eq!(middle[0].revision, 1);
    assert_eq!(log.read_all(0, 100).await.expect("read_all"), read);
    assert_eq!(log.read_all(2, 100).await.expect("read_all"), read[2..]);
    assert!(log
        .read_stream("other", 0, 100)
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn log_database_is_wal_with_schema_version() {
    let (dir, log) = open_temp();
    log.close().await.expect("close");
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).expect("open db");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode.to_lowercase(), "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn log_refuses_a_newer_schema_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(SqliteLog::open(dir.path()).expect("open"));
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).expect("open db");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("set user_version");
    drop(conn);
    assert!(matches!(
        SqliteLog::open(dir.path()),
        Err(LogError::Storage(_))
    ));
}

#[tokio::test]
async fn log_conflict_on_stale_revision() {
    let (_dir, log) = open_temp();
    log.append("s", ExpectedRevision::NoStream, events(2))
        .await
        .expect("first append");
    let stale = log.append("s", ExpectedRevision::Exact(0), events(1)).await;
    assert_eq!(
        stale,
        Err(LogError::Conflict {
            stream: "s".to_owned(),
            expected: ExpectedRevision::Exact(0),
            actual: Some(1),
        })
    );
    let ahead = log.append("s", ExpectedRevision::Exact(7), events(1)).await;
    assert!(matches!(
        ahead,
        Err(LogError::Conflict {
            actual: Some(1),
            ..
        })
    ));
    assert_eq!(log.read_stream("s", 0, 100).await.expect("read").len(), 2);
    let fresh = log
        .append("s", ExpectedRevision::Exact(1), events(1))
        .await
        .expect("append at the right revision");
    assert_eq!(fresh.last_revision, 2);
}

#[tokio::test]
async fn log_no_stream_on_existing_stream_conflicts() {
    let (_dir, log) = open_temp();
    let missing = log.append("s", ExpectedRevision::Exact(0), events(1)).await;
    assert_eq!(
        missing,
        Err(LogError::Conflict {
            stream: "s".to_owned(),
            expected: ExpectedRevision::Exact(0),
            actual: None,
        })
    );
    log.append("s", ExpectedRevision::NoStream, events(1))
        .await
        .expect("create");
    let again = log.append("s", ExpectedRevision::NoStream, events(1)).await;
    assert_eq!(
        again,
        Err(LogError::Conflict {
            stream: "s".to_owned(),
            expected: ExpectedRevision::NoStream,
            actual: Some(0),
        })
    );
    let any = log
        .append("s", ExpectedRevision::Any, events(2))
        .await
        .expect("any");
    assert_eq!(any.last_revision, 2);
}

#[tokio::test]
async fn log_idempotent_retry_returns_same_outcome_and_writes_nothing() {
    let (_dir, log) = open_temp();
    let original = events(3);
    let first = log
        .append("s", ExpectedRevision::NoStream, original.clone())
        .await
        .expect("append");
    log.append("other", ExpectedRevision::Any, events(2))
        .await
        .expect("other append");
    let before = log.stats();
    let everything = read_everything(&log).await;

    let retry = log
        .append("s", ExpectedRevision::NoStream, original.clone())
        .await
        .expect("retry");
    assert_eq!(retry, first);
    let retry_any = log
        .append("s", ExpectedRevision::Any, original.clone())
        .await
        .expect("retry with Any");
    assert_eq!(retry_any, first);
    // A retry of the first two events answers the outcome of those two.
    let prefix = log
        .append("s", ExpectedRevision::NoStream, original[..2].to_vec())
        .await
        .expect("retry of a prefix");
    assert_eq!(prefix.last_revision, 1);
    assert_eq!(prefix.last_position, 2);

    assert_eq!(log.stats().events_written, before.events_written);
    assert_eq!(read_everything(&log).await, everything);
    // The stream goes on from where it was.
    let next = log
        .append("s", ExpectedRevision::Exact(2), events(1))
        .await
        .expect("next append");
    assert_eq!(next.last_revision, 3);
}

#[tokio::test]
async fn log_partial_id_overlap_is_invalid() {
    let (_dir, log) = open_temp();
    let original = events(3);
    log.append("s", ExpectedRevision::NoStream, original.clone())
        .await
        .expect("append");
    let everything = read_everything(&log).await;

    // A new first event followed by a stored one.
    let mut tail_overlap = vec![event("New", 0)];
    tail_overlap.push(original[1].clone());
    // Stored events followed by a new one.
    let mut head_overlap = original.clone();
    head_overlap.push(event("New", 1));
    // The stored events in another order.
    let mut reordered = original.clone();
    reordered.swap(1, 2);
    // The same ids with another payload.
    let mut changed = original.clone();
    changed[1].data = b"{}".to_vec();
    let cases = [
        ("s", ExpectedRevision::Any, tail_overlap),
        ("s", ExpectedRevision::Any, head_overlap),
        ("s", ExpectedRevision::Any, reordered),
        ("s", ExpectedRevision::Any, changed),
        ("elsewhere", ExpectedRevision::Any, original.clone()),
        ("s", ExpectedRevision::Exact(5), original.clone()),
        (
            "s",
            ExpectedRevision::Any,
            vec![original[0].clone(), original[2].clone()],
        ),
    ];
    for (stream, expected, batch) in cases {
        let result = log.append(stream, expected, batch).await;
        assert!(
            matches!(result, Err(LogError::Invalid(_))),
            "expected Invalid, got {result:?}"
        );
    }
    assert_eq!(read_everything(&log).await, everything);
}

#[tokio::test]
async fn log_empty_append_reports_current_state_and_writes_nothing() {
    let (_dir, log) = open_temp();
    let on_empty = log.append("s", ExpectedRevision::Any, Vec::new()).await;
    assert!(
        matches!(on_empty, Err(LogError::Invalid(_))),
        "{on_empty:?}"
    );
    let written = log
        .append("s", ExpectedRevision::NoStream, events(2))
        .await
        .expect("append");
    log.append("other", ExpectedRevision::Any, events(1))
        .await
        .expect("other");
    let current = log
        .append("s", ExpectedRevision::Exact(1), Vec::new())
        .await
        .expect("empty append");
    assert_eq!(current, written);
    let mismatch = log
        .append("s", ExpectedRevision::NoStream, Vec::new())
        .await;
    assert!(matches!(mismatch, Err(LogError::Conflict { .. })));
    assert_eq!(read_everything(&log).await.len(), 3);
}

#[tokio::test]
async fn log_global_order_across_streams() {
    let (_dir, log) = open_temp();
    let mut outcomes = Vec::new();
    for round in 0..5 {
        for stream in ["a", "b", "c"] {
            let outcome = log
                .append(stream, ExpectedRevision::Any, events(round % 3 + 1))
                .await
                .expect("append");
            outcomes.push((stream, outcome));
        }
    }
    let all = read_everything(&log).await;
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    // Each append's last event sits at the position it reported, in append order.
    let positions: Vec<u64> = outcomes.iter().map(|(_, o)| o.last_position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    for (stream, outcome) in &outcomes {
        let at = all
            .iter()
            .find(|e| e.position == outcome.last_position)
            .expect("event at reported position");
        assert_eq!(at.stream, *stream);
        assert_eq!(at.revision, outcome.last_revision);
    }
    for stream in ["a", "b", "c"] {
        let revisions: Vec<u64> = all
            .iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.revision)
            .collect();
        assert_eq!(revisions, (0..revisions.len() as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn log_concurrent_appends_to_different_streams_succeed_and_are_group_committed() {
    let (_dir, log) = open_temp();
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                log.append(
                    &format!("stream-{i}"),
                    ExpectedRevision::NoStream,
                    events(2),
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("task").expect("append");
        assert_eq!(outcome.last_revision, 1);
    }
    let stats = log.stats();
    assert_eq!(stats.appends, 200);
    assert_eq!(stats.events_written, 400);
    assert!(
        stats.batches >= 1 && stats.batches <= stats.appends,
        "{stats:?}"
    );
    eprintln!(
        "200 concurrent appends committed in {} batches",
        stats.batches
    );
    let all = read_everything(&log).await;
    assert_eq!(all.len(), 400);
    assert_eq!(all.iter().map(|e| e.id).collect::<HashSet<_>>().len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn log_concurrent_appends_with_same_expected_revision_exactly_one_wins() {
    let (_dir, log) = open_temp();
    let log = Arc::new(log);
    log.append("s", ExpectedRevision::NoStream, events(1))
        .await
        .expect("create");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let log = Arc::clone(&log);
            tokio::spawn(
                async move { log.append("s", ExpectedRevision::Exact(0), events(2)).await },
            )
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(outcome) => {
                wins += 1;
                assert_eq!(outcome.last_revision, 2);
            }
            Err(LogError::Conflict { actual, .. }) => assert_eq!(actual, Some(2)),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    let stream = log.read_stream("s", 0, 100).await.expect("read");
    assert_eq!(
        stream.iter().map(|e| e.revision).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn log_conflicting_request_fails_alone_in_a_batch() {
    let (_dir, log) = open_temp();
    let log = Arc::new(log);
    for i in 0..100 {
        log.append(&format!("s{i}"), ExpectedRevision::NoStream, events(1))
            .await
            .expect("create");
    }
    // Even streams get a correct expectation, odd ones a stale one, all at once.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let expected = if i % 2 == 0 {
                    ExpectedRevision::Exact(0)
                } else {
                    ExpectedRevision::NoStream
                };
                (i, log.append(&format!("s{i}"), expected, events(1)).await)
            })
        })
        .collect();
    for task in tasks {
        let (i, result) = task.await.expect("task");
        if i % 2 == 0 {
            assert_eq!(result.expect("valid append").last_revision, 1);
        } else {
            assert!(
                matches!(result, Err(LogError::Conflict { .. })),
                "{result:?}"
            );
        }
    }
    for i in 0..100 {
        let len = log
            .read_stream(&format!("s{i}"), 0, 10)
            .await
            .expect("read")
            .len();
        assert_eq!(len, if i % 2 == 0 { 2 } else { 1 });
    }
}

/// A request whose second event reuses a stored id is refused by the database after its
/// first event was written: the batch is written again with savepoints, so that request
/// leaves nothing behind and every other request of the batch is still written.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn log_request_refused_mid_write_fails_alone_in_a_batch() {
    let (_dir, log) = open_temp();
    let log = Arc::new(log);
    let taken = events(1);
    log.append("taken", ExpectedRevision::NoStream, taken.clone())
        .await
        .expect("create");
    let before = read_everything(&log).await.len();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let log = Arc::clone(&log);
            let mut batch = events(2);
            if i % 3 == 0 {
                batch[1] = taken[0].clone();
            }
            tokio::spawn(async move {
                let result = log
                    .append(&format!("s{i}"), ExpectedRevision::NoStream, batch)
                    .await;
                (i, result)
            })
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        let (i, result) = task.await.expect("task");
        if i % 3 == 0 {
            assert!(matches!(result, Err(LogError::Invalid(_))), "{result:?}");
        } else {
            assert_eq!(result.expect("valid append").last_revision, 1);
            written += 2;
        }
    }
    let everything = read_everything(&log).await;
    assert_eq!(everything.len(), before + written);
    for i in (0..100).step_by(3) {
        let stream = log
            .read_stream(&format!("s{i}"), 0, 10)
            .await
            .expect("read");
        assert!(stream.is_empty(), "s{i} kept {} events", stream.len());
    }
    let positions: Vec<u64> = everything.iter().map(|e| e.position).collect();
    assert!(positions.windows(2).all(|pair| pair[1] == pair[0] + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_subscription_sees_history_then_live_events_exactly_once_in_order() {
    let (_dir, log) = open_temp();
    let log = Arc::new(log);
    // Created before anything is written.
    let mut early = log.subscribe_all(0);
    for i in 0..5 {
        log.append(&format!("h{i}"), ExpectedRevision::Any, events(2))
            .await
            .expect("history");
    }
    // Created after the history.
    let mut late = log.subscribe_all(0);
    let writer = {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            for i in 0..50 {
                log.append(&format!("live{}", i % 4), ExpectedRevision::Any, events(1))
                    .await
                    .expect("live");
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut seen_early = Vec::new();
    let mut seen_late = Vec::new();
    for _ in 0..60 {
        seen_early.push(next_within(&mut early).await);
        seen_late.push(next_within(&mut late).await);
    }
    writer.await.expect("writer");
    let all = read_everything(&log).await;
    assert_eq!(all.len(), 60);
    assert_eq!(seen_early, all);
    assert_eq!(seen_late, all);
    // Nothing more until something is written.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), early.next())
            .await
            .is_err()
    );
    let extra = log
        .append("extra", ExpectedRevision::Any, events(1))
        .await
        .expect("extra");
    let next = next_within(&mut late).await;
    assert_eq!(next.position, extra.last_position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_subscribe_from_checkpoint_misses_nothing_and_sees_nothing_twice() {
    let (_dir, log) = open_temp();
    for i in 0..30 {
        log.append(&format!("s{}", i % 3), ExpectedRevision::Any, events(1))
            .await
            .expect("append");
    }
    let mut seen = Vec::new();
    let mut first = log.subscribe_all(0);
    for _ in 0..10 {
        seen.push(next_within(&mut first).await);
    }
    let checkpoint = first.position();
    assert_eq!(checkpoint, seen[9].position);
    drop(first);

    let mut resumed = log.subscribe_all(checkpoint);
    for i in 0..10 {
        log.append("after", ExpectedRevision::Any, events(1))
            .await
            .expect("append");
        if i == 5 {
            for _ in 0..15 {
                seen.push(next_within(&mut resumed).await);
            }
        }
    }
    for _ in 0..15 {
        seen.push(next_within(&mut resumed).await);
    }
    assert_eq!(seen, read_everything(&log).await);
    assert_eq!(seen.iter().map(|e| e.id).collect::<HashSet<_>>().len(), 40);
}

#[tokio::test]
async fn log_reopen_after_close_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SqliteLog::open(dir.path()).expect("open");
    log.append("a", ExpectedRevision::NoStream, events(3))
        .await
        .expect("append");
    log.append("b", ExpectedRevision::NoStream, events(2))
        .await
        .expect("append");
    let before = read_everything(&log).await;
    let mut sub = log.subscribe_all(0);
    let closing = log.close();
    assert_send(&closing);
    closing.await.expect("close");
    log.close().await.expect("second close is a no-op");
    assert_eq!(
        log.append("a", ExpectedRevision::Any, events(1)).await,
        Err(LogError::Closed)
    );
    // Reads still work, and the subscription delivers what was committed, then ends.
    assert_eq!(read_everything(&log).await, before);
    for expected in &before {
        assert_eq!(&next_within(&mut sub).await, expected);
    }
    assert_eq!(sub.next().await, Err(LogError::Closed));
    drop(log);

    let log = SqliteLog::open(dir.path()).expect("reopen");
    assert_eq!(read_everything(&log).await, before);
    assert_eq!(log.last_position(), 5);
    let next = log
        .append("a", ExpectedRevision::Exact(2), events(1))
        .await
        .expect("append after reopen");
    assert_eq!(next.last_revision, 3);
    assert!(next.last_position > 5);
    // Idempotence survives a restart: the writer's memory is gone, the database is not.
    let retried = log
        .append(
            "b",
            ExpectedRevision::NoStream,
            before[3..5]
                .iter()
                .map(|e| NewEvent {
                    id: e.id,
                    event_type: e.event_type.clone(),
                    version: e.version,
                    data: e.data.clone(),
                })
                .collect(),
        )
        .await
        .expect("retry after reopen");
    assert_eq!(retried.last_revision, 1);
    assert_eq!(retried.last_position, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_close_finishes_queued_appends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(SqliteLog::open(dir.path()).expect("open"));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let batch = events(1);
                let id = batch[0].id;
                (
                    id,
                    log.append(&format!("s{i}"), ExpectedRevision::Any, batch)
                        .await,
                )
            })
        })
        .collect();
    tokio::task::yield_now().await;
    log.close().await.expect("close");
    let mut acknowledged = Vec::new();
    for task in tasks {
        let (id, result) = task.await.expect("task");
        match result {
            Ok(outcome) => acknowledged.push((id, outcome)),
            Err(LogError::Closed) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    drop(log);
    let log = SqliteLog::open(dir.path()).expect("reopen");
    let all: HashMap<Uuid, RecordedEvent> = read_everything(&log)
        .await
        .into_iter()
        .map(|e| (e.id, e))
        .collect();
    for (id, outcome) in acknowledged {
        let stored = all.get(&id).expect("acknowledged event is stored");
        assert_eq!(stored.position, outcome.last_position);
    }
}

#[tokio::test]
async fn log_hostile_inputs_are_invalid_without_panic() {
    let (_dir, log) = open_temp();
    let too_many = events(MAX_EVENTS_PER_APPEND as u64 + 1);
    let invalid = |r: &Result<_, LogError>| matches!(r, Err(LogError::Invalid(_)));

    assert!(invalid(
        &log.append("s", ExpectedRevision::Any, too_many).await
    ));
    assert!(invalid(
        &log.append("", ExpectedRevision::Any, events(1)).await
    ));
    assert!(invalid(
        &log.append(&"x".repeat(100_000), ExpectedRevision::Any, events(1))
            .await
    ));
    let twice = event("Twice", 0);
    assert!(invalid(
        &log.append("s", ExpectedRevision::Any, vec![twice.clone(), twice])
            .await
    ));
    let mut untyped = event("", 0);
    assert!(invalid(
        &log.append("s", ExpectedRevision::Any, vec![untyped.clone()])
            .await
    ));
    untyped.event_type = "T".repeat(10_000);
    assert!(invalid(
        &log.append("s", ExpectedRevision::Any, vec![untyped]).await
    ));
    assert!(matches!(
        log.append("s", ExpectedRevision::Exact(u64::MAX), events(1))
            .await,
        Err(LogError::Conflict { actual: None, .. })
    ));
    assert!(matches!(
        log.read_stream("", 0, 10).await,
        Err(LogError::Invalid(_))
    ));
    assert!(read_everything(&log).await.is_empty());

    // Odd but valid inputs.
    let exactly_max = events(MAX_EVENTS_PER_APPEND as u64);
    let outcome = log
        .append("big", ExpectedRevision::NoStream, exactly_max)
        .await
        .expect("the maximum is accepted");
    assert_eq!(outcome.last_revision, MAX_EVENTS_PER_APPEND as u64 - 1);
    let mut odd = event("Odd", 0);
    odd.data = vec![0, 255, 0, 0xfe];
    log.append(
        "stream with spaces, \u{1F600} and \0 nul",
        ExpectedRevision::Any,
        vec![odd],
    )
    .await
    .expect("odd stream name and binary payload");
    assert!(log
        .read_all(u64::MAX, usize::MAX)
        .await
        .expect("read_all")
        .is_empty());
    assert!(log
        .read_stream("big", u64::MAX, usize::MAX)
        .await
        .expect("read_stream")
        .is_empty());
    assert!(log.read_all(0, 0).await.expect("read_all").is_empty());
    assert_eq!(
        log.read_stream("big", 0, usize::MAX)
            .await
            .expect("read_stream")
            .len(),
        MAX_EVENTS_PER_APPEND
    );
}

// ---------------------------------------------------------------------------------------
// Crash test: a child process (this test binary, re-executed) appends forever and prints
// each acknowledged append; the parent kills it with SIGKILL and checks the log.

const CHILD_ENV: &str = "LEDGER_SQLITE_LOG_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "crash_child_appends_forever";
const EVENTS_PER_APPEND: u64 = 3;
const CHILD_TASKS: u64 = 8;

/// Not a test on its own: does nothing unless run as the child of the crash test.
#[test]
fn crash_child_appends_forever() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let log = Arc::new(SqliteLog::open(Path::new(&dir)).expect("open"));
        let tasks: Vec<_> = (0..CHILD_TASKS)
            .map(|task| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let stream = format!("crash-{task}");
                    for seq in 0_u64.. {
                        let batch: Vec<NewEvent> = (0..EVENTS_PER_APPEND)
                            .map(|part| NewEvent {
                                id: Uuid::new_v4(),
                                event_type: "Tick".to_owned(),
                                version: 1,
                                data: format!(r#"{{"task":{task},"seq":{seq},"part":{part}}}"#)
                                    .into_bytes(),
                            })
                            .collect();
                        let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
                        let outcome = log
                            .append(&stream, ExpectedRevision::Any, batch)
                            .await
                            .expect("append");
                        print_ack(&stream, outcome.last_revision, outcome.last_position, &ids);
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
}

fn print_ack(stream: &str, revision: u64, position: u64, ids: &[Uuid]) {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ack {stream} {revision} {position} {}", ids.join(",")).expect("write");
    out.flush().expect("flush");
}

struct Ack {
    stream: String,
    revision: u64,
    position: u64,
    ids: Vec<Uuid>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut fields = line.strip_prefix("ack ")?.split(' ');
    let ack = Ack {
        stream: fields.next()?.to_owned(),
        revision: fields.next()?.parse().ok()?,
        position: fields.next()?.parse().ok()?,
        ids: fields
            .next()?
            .split(',')
            .map(Uuid::parse_str)
            .collect::<Result<_, _>>()
            .ok()?,
    };
    (ack.ids.len() == EVENTS_PER_APPEND as usize && fields.next().is_none()).then_some(ack)
}

/// Runs the child until it has acknowledged `wanted` appends, kills it with SIGKILL, and
/// returns every append it acknowledged (including lines printed just before the kill).
fn run_child_and_kill(dir: &Path, wanted: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut acks = Vec::new();
    while acks.len() < wanted {
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("the child stopped acknowledging appends");
        if line.starts_with("ack ") {
            acks.push(parse_ack(&line).expect("well-formed ack line"));
        }
    }
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    // Lines already in the pipe were acknowledged too. A line cut by the kill is no ack.
    acks.extend(receiver.try_iter().filter_map(|line| parse_ack(&line)));
    acks
}

async fn check_log_after_crash(dir: &Path, acks: &[Ack]) {
    let log = SqliteLog::open(dir).expect("reopen after kill");
    let all = read_everything(&log).await;
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));

    // Every stream: revisions from 0 without gaps, made of whole appends.
    let mut streams: BTreeMap<&str, Vec<&RecordedEvent>> = BTreeMap::new();
    for event in &all {
        streams
            .entry(event.stream.as_str())
            .or_default()
            .push(event);
    }
    for (stream, events) in &streams {
        assert_eq!(
            events.len() as u64 % EVENTS_PER_APPEND,
            0,
            "stream {stream} holds part of an append"
        );
        let mut group = None;
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.revision, i as u64, "gap in stream {stream}");
            let data: serde_json::Value =
                serde_json::from_slice(&event.data).expect("intact payload");
            let part = data["part"].as_u64().expect("part");
            assert_eq!(part, i as u64 % EVENTS_PER_APPEND, "stream {stream}");
            let key = (data["task"].as_u64(), data["seq"].as_u64());
            if part == 0 {
                group = Some(key);
            } else {
                assert_eq!(group, Some(key), "stream {stream}: an append split up");
            }
            assert_eq!(format!("crash-{}", key.0.expect("task")), *stream);
        }
    }

    // Every acknowledged append is there, where it was acknowledged.
    let by_id: HashMap<Uuid, &RecordedEvent> = all.iter().map(|e| (e.id, e)).collect();
    for ack in acks {
        for (i, id) in ack.ids.iter().enumerate() {
            let stored = by_id.get(id).expect("acknowledged event lost");
            assert_eq!(stored.stream, ack.stream);
            assert_eq!(
                stored.revision + (EVENTS_PER_APPEND - 1 - i as u64),
                ack.revision
            );
        }
        let last = by_id.get(&ack.ids[ack.ids.len() - 1]).expect("last event");
        assert_eq!(last.position, ack.position);
    }
    log.close().await.expect("close");
}

#[test]
fn log_kill_9_loses_no_acknowledged_append_and_leaves_no_partial_one() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut acks = Vec::new();
    // Several rounds: each child resumes appending to the log the previous one was killed in.
    for _ in 0..3 {
        acks.extend(run_child_and_kill(dir.path(), 300));
        runtime.block_on(check_log_after_crash(dir.path(), &acks));
    }
    assert!(acks.len() >= 900);
}

#[tokio::test]
async fn log_stale_stream_cache_is_corrected_by_the_database() {
    let (dir, log) = open_temp();
    log.append("s", ExpectedRevision::NoStream, events(1))
        .await
        .expect("create");
    // Another connection writes behind the writer's back: its cached head of "s" is stale.
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).expect("open db");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn.execute(
        "INSERT INTO events (id, stream, revision, event_type, version, data) \
         VALUES (?1, 's', 1, 'Sneaky', 1, x'7b7d')",
        [Uuid::new_v4().as_bytes()],
    )
    .expect("external insert");
    drop(conn);

    let stale = log.append("s", ExpectedRevision::Exact(0), events(1)).await;
    assert!(
        matches!(
            stale,
            Err(LogError::Conflict {
                actual: Some(1),
                ..
            })
        ),
        "{stale:?}"
    );
    let any = log
        .append("s", ExpectedRevision::Any, events(1))
        .await
        .expect("append with Any");
    assert_eq!(any.last_revision, 2);
    let revisions: Vec<u64> = log
        .read_stream("s", 0, 10)
        .await
        .expect("read")
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(revisions, vec![0, 1, 2]);
}
