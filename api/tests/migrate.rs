//! `dcu migrate` from SQLite to SQLite: copy, interruption and resume, verification.

use std::path::Path;
use std::process::Command;

use ledger::log::sqlite::SqliteLog;
use ledger::log::{EventLog, ExpectedRevision, NewEvent, RecordedEvent};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: format!("Tested{}", n % 3),
        version: 1 + (n % 2) as u32,
        data: format!(r#"{{"n":{n}}}"#).into_bytes(),
    }
}

/// A source log: 3 streams, appends of 1 to 3 events, interleaved; 20 events.
async fn make_source(dir: &Path) -> Vec<RecordedEvent> {
    let log = SqliteLog::open(dir).expect("open source");
    let streams = ["account-a", "account-b", "scheduler"];
    let mut heads: [Option<u64>; 3] = [None; 3];
    let mut n = 0;
    let mut round = 0_usize;
    while n < 20 {
        let index = round % 3;
        let count = (1 + round % 3).min(20 - n as usize) as u64;
        let expected = match heads[index] {
            Some(r) => ExpectedRevision::Exact(r),
            None => ExpectedRevision::NoStream,
        };
        let events = (n..n + count).map(event).collect();
        let outcome = log
            .append(streams[index], expected, events)
            .await
            .expect("append to the source");
        heads[index] = Some(outcome.last_revision);
        n += count;
        round += 1;
    }
    let all = read_all(&log).await;
    log.close().await.expect("close source");
    all
}

async fn read_all(log: &SqliteLog) -> Vec<RecordedEvent> {
    log.read_all(0, 100_000).await.expect("read_all")
}

async fn read_dir(dir: &Path) -> Vec<RecordedEvent> {
    let log = SqliteLog::open(dir).expect("open");
    let all = read_all(&log).await;
    log.close().await.expect("close");
    all
}

/// Same streams, revisions, ids, types, versions, payloads, in the same global order.
fn assert_copy(source: &[RecordedEvent], target: &[RecordedEvent]) {
    let key = |e: &RecordedEvent| {
        (
            e.stream.clone(),
            e.revision,
            e.id,
            e.event_type.clone(),
            e.version,
            e.data.clone(),
        )
    };
    let source: Vec<_> = source.iter().map(key).collect();
    let target: Vec<_> = target.iter().map(key).collect();
    assert_eq!(source, target);
}

fn dcu_migrate(from: &Path, to: &Path, limit: Option<u64>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcu"));
    command
        .arg("migrate")
        .arg("--from")
        .arg(format!("sqlite:{}", from.display()))
        .arg("--to")
        .arg(format!("sqlite:{}", to.display()));
    if let Some(limit) = limit {
        command.arg("--limit").arg(limit.to_string());
    }
    command.output().expect("dcu runs")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn migrate_copies_everything_and_verifies() {
    let src = tempfile::tempdir().expect("temp dir");
    let dst = tempfile::tempdir().expect("temp dir");
    let source = make_source(src.path()).await;
    assert_eq!(source.len(), 20);

    let output = dcu_migrate(src.path(), &dst.path().join("copy"), None);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("wrote 20"), "{text}");
    assert!(text.contains("verified: 20 events in 3 streams"), "{text}");
    assert_copy(&source, &read_dir(&dst.path().join("copy")).await);

    // Running it again is harmless: everything is recognised, nothing written.
    let again = dcu_migrate(src.path(), &dst.path().join("copy"), None);
    assert!(again.status.success(), "{again:?}");
    let text = stdout(&again);
    assert!(text.contains("wrote 0, already present 20"), "{text}");
    assert_copy(&source, &read_dir(&dst.path().join("copy")).await);
}

#[tokio::test]
async fn migrate_interrupted_by_limit_resumes_without_loss_or_duplicate() {
    let src = tempfile::tempdir().expect("temp dir");
    let dst = tempfile::tempdir().expect("temp dir");
    let source = make_source(src.path()).await;

    // Limits that cut inside multi-event appends of the source, so the resumed run meets
    // appends whose first events are already in the target.
    let mut copied = 0;
    for limit in [2_u64, 5, 4] {
        let output = dcu_migrate(src.path(), dst.path(), Some(limit));
        assert!(output.status.success(), "{output:?}");
        let text = stdout(&output);
        assert!(text.contains("stopped at the limit"), "{text}");
        copied += limit;
        let partial = read_dir(dst.path()).await;
        assert_eq!(partial.len() as u64, copied);
        assert_copy(&source[..copied as usize], &partial);
    }

    let output = dcu_migrate(src.path(), dst.path(), None);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("verified: 20 events in 3 streams"), "{text}");
    assert_copy(&source, &read_dir(dst.path()).await);
}

#[tokio::test]
async fn migrate_resumes_over_a_prefix_copied_in_other_appends() {
    let src = tempfile::tempdir().expect("temp dir");
    let dst = tempfile::tempdir().expect("temp dir");
    let source = make_source(src.path()).await;

    // The target already holds the first 7 events, written one per append (as a crashed
    // migration cut differently could have left them).
    let target = SqliteLog::open(dst.path()).expect("open target");
    for e in &source[..7] {
        let expected = match e.revision {
            0 => ExpectedRevision::NoStream,
            r => ExpectedRevision::Exact(r - 1),
        };
        let new = NewEvent {
            id: e.id,
            event_type: e.event_type.clone(),
            version: e.version,
            data: e.data.clone(),
        };
        target
            .append(&e.stream, expected, vec![new])
            .await
            .expect("prefix");
    }
    let report = api::migrate::migrate_logs(
        &SqliteLog::open(src.path()).expect("open source"),
        &target,
        None,
    )
    .await
    .expect("migrate");
    assert_eq!(report.copy.read, 20);
    assert_eq!(report.copy.written, 13);
    assert_eq!(report.copy.skipped, 7);
    assert_eq!(report.verified.map(|s| s.total), Some(20));
    assert_copy(&source, &read_all(&target).await);
}

#[tokio::test]
async fn migrate_refuses_a_target_that_is_not_a_copy() {
    let src = tempfile::tempdir().expect("temp dir");
    let dst = tempfile::tempdir().expect("temp dir");
    let source = make_source(src.path()).await;
    let target = SqliteLog::open(dst.path()).expect("open target");
    target
        .append(
            &source[0].stream,
            ExpectedRevision::NoStream,
            vec![event(99)],
        )
        .await
        .expect("foreign event");
    target.close().await.expect("close");
    drop(target);

    let output = dcu_migrate(src.path(), dst.path(), None);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("not a copy of this source"), "{message}");
}

#[tokio::test]
async fn migrate_refuses_a_target_holding_another_log_before_writing() {
    let src = tempfile::tempdir().expect("temp dir");
    let dst = tempfile::tempdir().expect("temp dir");
    let source = make_source(src.path()).await;
    let target = SqliteLog::open(dst.path()).expect("open target");
    target
        .append("elsewhere", ExpectedRevision::NoStream, vec![event(99)])
        .await
        .expect("foreign stream");
    let result = api::migrate::migrate_logs(
        &SqliteLog::open(src.path()).expect("open source"),
        &target,
        None,
    )
    .await;
    let message = format!("{:#}", result.expect_err("a foreign target is refused"));
    assert!(message.contains("not a copy of this source"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert_eq!(source.len(), 20);
    let held = read_all(&target).await;
    assert_eq!(held.len(), 1, "the foreign log is left as it was");
    target.close().await.expect("close");
}

#[test]
fn migrate_bad_stores_exit_non_zero_with_a_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nothing-here");
    let output = dcu_migrate(&missing, &dir.path().join("to"), None);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("holds no event log"), "{message}");

    let output = Command::new(env!("CARGO_BIN_EXE_dcu"))
        .args(["migrate", "--from", "postgres://x", "--to", "sqlite:/tmp/y"])
        .output()
        .expect("dcu runs");
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("unknown store"), "{message}");
}
