//! The conformance suite every `EventLog` backend must pass (used by `tests/conformance.rs`
//! on SQLite, and on KurrentDB when a server is given).
//!
//! Each case is a `pub async fn` taking the log under test; [`run_all`] runs them all. A
//! case panics (with a message saying what broke) on failure: this is test support.
//!
//! The cases do not assume an empty log: a KurrentDB server may hold other data, and other
//! cases may run at the same time on the same log. Each case writes only to streams named
//! with its own random prefix, starts by appending a marker event whose position bounds
//! what it reads from `$all`, and ignores every event of other streams.

use std::time::Duration;

use uuid::Uuid;

use super::{
    AppendOutcome, EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, Subscription,
};

/// How long a case waits for a subscription to deliver one event.
pub const SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Events read per `read_all` page by the cases (small, so paging itself is exercised).
const PAGE: usize = 7;

/// Runs every case on `log`.
pub async fn run_all<L: EventLog>(log: &L) {
    append_and_read_back(log).await;
    conflict_on_stale_revision(log).await;
    idempotent_retry(log).await;
    global_order_across_streams(log).await;
    subscription_sees_history_then_live(log).await;
    subscriber_resumes_from_checkpoint(log).await;
}

/// A fresh stream-name prefix for one case.
fn prefix(case: &str) -> String {
    format!("conformance-{case}-{}", Uuid::new_v4().simple())
}

/// A test event; its payload says which one it is.
pub fn test_event(n: u64) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: "ConformanceTested".to_owned(),
        version: 2,
        data: format!(r#"{{"n":{n},"text":"é \"quoted\""}}"#).into_bytes(),
    }
}

fn test_events(from: u64, count: u64) -> Vec<NewEvent> {
    (from..from + count).map(test_event).collect()
}

fn assert_same(recorded: &RecordedEvent, new: &NewEvent, stream: &str, revision: u64) {
    assert_eq!(recorded.id, new.id, "event id");
    assert_eq!(recorded.stream, stream, "stream of {}", new.id);
    assert_eq!(recorded.revision, revision, "revision of {}", new.id);
    assert_eq!(recorded.event_type, new.event_type, "type of {}", new.id);
    assert_eq!(recorded.version, new.version, "version of {}", new.id);
    assert_eq!(recorded.data, new.data, "payload of {}", new.id);
}

async fn append<L: EventLog>(
    log: &L,
    stream: &str,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
) -> AppendOutcome {
    match log.append(stream, expected, events).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("append to {stream} at {expected:?} failed: {e}"),
    }
}

/// Appends a marker event to its own stream: the events of the case follow its position.
async fn marker<L: EventLog>(log: &L, prefix: &str) -> u64 {
    append(
        log,
        &format!("{prefix}-marker"),
        ExpectedRevision::NoStream,
        vec![test_event(0)],
    )
    .await
    .last_position
}

fn is_ours(event: &RecordedEvent, prefix: &str) -> bool {
    event.stream.starts_with(prefix) && !event.stream.ends_with("-marker")
}

/// Every event of the case's streams after `after`, through `read_all` in small pages.
async fn read_ours<L: EventLog>(log: &L, after: u64, prefix: &str) -> Vec<RecordedEvent> {
    let mut ours = Vec::new();
    let mut after = after;
    loop {
        let page = match log.read_all(after, PAGE).await {
            Ok(page) => page,
            Err(e) => panic!("read_all after {after} failed: {e}"),
        };
        let Some(last) = page.last() else {
            return ours;
        };
        assert!(page.len() <= PAGE, "read_all returned more than asked");
        for event in &page {
            assert!(
                event.position > after,
                "read_all position {} not after {after}",
                event.position
            );
            after = event.position;
        }
        after = last.position;
        ours.extend(page.into_iter().filter(|e| is_ours(e, prefix)));
    }
}

async fn read_stream<L: EventLog>(log: &L, stream: &str) -> Vec<RecordedEvent> {
    match log.read_stream(stream, 0, 1_000).await {
        Ok(events) => events,
        Err(e) => panic!("read_stream {stream} failed: {e}"),
    }
}

async fn next_within<S: Subscription>(sub: &mut S) -> RecordedEvent {
    match tokio::time::timeout(SUBSCRIPTION_TIMEOUT, sub.next()).await {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("the subscription failed: {e}"),
        Err(_) => panic!("the subscription delivered nothing for {SUBSCRIPTION_TIMEOUT:?}"),
    }
}

/// The case's events from `sub`, up to and including the event `until`; every position
/// strictly after the previous one.
async fn collect_until<S: Subscription>(
    sub: &mut S,
    prefix: &str,
    until: Uuid,
    mut after: u64,
) -> Vec<RecordedEvent> {
    let mut ours = Vec::new();
    loop {
        let event = next_within(sub).await;
        assert!(
            event.position > after,
            "subscription position {} not after {after}",
            event.position
        );
        after = event.position;
        let done = event.id == until;
        if is_ours(&event, prefix) {
            ours.push(event);
        }
        if done {
            return ours;
        }
    }
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// Appended events read back from their stream and from `$all`, same ids, types, versions,
/// payloads; revisions from 0; reading from a revision; a missing stream reads empty.
pub async fn append_and_read_back<L: EventLog>(log: &L) {
    let prefix = prefix("read-back");
    let start = marker(log, &prefix).await;
    let stream = format!("{prefix}-a");
    let written = test_events(1, 3);
    let outcome = append(log, &stream, ExpectedRevision::NoStream, written.clone()).await;
    assert_eq!(outcome.last_revision, 2);
    assert!(outcome.last_position > start);

    let read = read_stream(log, &stream).await;
    assert_eq!(read.len(), 3);
    for (revision, (recorded, new)) in read.iter().zip(&written).enumerate() {
        assert_same(recorded, new, &stream, revision as u64);
    }
    assert_eq!(read[2].position, outcome.last_position);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));

    let middle = log
        .read_stream(&stream, 1, 1)
        .await
        .unwrap_or_else(|e| panic!("read from revision 1: {e}"));
    assert_eq!(ids(&middle), vec![written[1].id]);
    assert!(log
        .read_stream(&stream, 3, 10)
        .await
        .unwrap_or_else(|e| panic!("read past the end: {e}"))
        .is_empty());
    assert!(read_stream(log, &format!("{prefix}-missing"))
        .await
        .is_empty());

    let all = read_ours(log, start, &prefix).await;
    assert_eq!(all, read, "read_all and read_stream disagree");

    let more = append(log, &stream, ExpectedRevision::Exact(2), test_events(4, 1)).await;
    assert_eq!(more.last_revision, 3);
    let any = append(log, &stream, ExpectedRevision::Any, test_events(5, 2)).await;
    assert_eq!(any.last_revision, 5);
    assert!(any.last_position > more.last_position);
    assert_eq!(read_stream(log, &stream).await.len(), 6);
}

/// A stale or future expected revision, `NoStream` on an existing stream and `Exact` on a
/// missing one are `Conflict` with the stream's actual revision, and write nothing.
pub async fn conflict_on_stale_revision<L: EventLog>(log: &L) {
    let prefix = prefix("conflict");
    let stream = format!("{prefix}-a");
    let missing = log
        .append(&stream, ExpectedRevision::Exact(0), test_events(0, 1))
        .await;
    assert_eq!(
        missing,
        Err(LogError::Conflict {
            stream: stream.clone(),
            expected: ExpectedRevision::Exact(0),
            actual: None,
        })
    );
    append(log, &stream, ExpectedRevision::NoStream, test_events(0, 2)).await;
    for expected in [
        ExpectedRevision::Exact(0),
        ExpectedRevision::Exact(7),
        ExpectedRevision::NoStream,
    ] {
        let refused = log.append(&stream, expected, test_events(10, 1)).await;
        assert_eq!(
            refused,
            Err(LogError::Conflict {
                stream: stream.clone(),
                expected,
                actual: Some(1),
            })
        );
    }
    assert_eq!(read_stream(log, &stream).await.len(), 2, "a conflict wrote");
    let fresh = append(log, &stream, ExpectedRevision::Exact(1), test_events(3, 1)).await;
    assert_eq!(fresh.last_revision, 2);
}

/// The same events (same ids) appended again at the same place answer the original outcome
/// and write nothing, with `NoStream` and with `Exact`, even after the log moved on.
pub async fn idempotent_retry<L: EventLog>(log: &L) {
    let prefix = prefix("retry");
    let start = marker(log, &prefix).await;
    let stream = format!("{prefix}-a");
    let other = format!("{prefix}-b");

    let first_events = test_events(0, 3);
    let first = append(
        log,
        &stream,
        ExpectedRevision::NoStream,
        first_events.clone(),
    )
    .await;
    append(log, &other, ExpectedRevision::NoStream, test_events(10, 2)).await;
    let retried = append(log, &stream, ExpectedRevision::NoStream, first_events).await;
    assert_eq!(
        retried, first,
        "a NoStream retry answers the original outcome"
    );

    let second_events = test_events(3, 2);
    let second = append(
        log,
        &stream,
        ExpectedRevision::Exact(2),
        second_events.clone(),
    )
    .await;
    append(log, &other, ExpectedRevision::Exact(1), test_events(12, 1)).await;
    let retried = append(log, &stream, ExpectedRevision::Exact(2), second_events).await;
    assert_eq!(
        retried, second,
        "an Exact retry answers the original outcome"
    );

    assert_eq!(read_stream(log, &stream).await.len(), 5, "a retry wrote");
    assert_eq!(
        read_ours(log, start, &prefix).await.len(),
        8,
        "a retry wrote"
    );
}

/// Appends to several streams come out of `read_all` in commit order with strictly
/// increasing positions equal to those the appends answered.
pub async fn global_order_across_streams<L: EventLog>(log: &L) {
    let prefix = prefix("order");
    let start = marker(log, &prefix).await;
    let streams = [
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}-c"),
    ];
    let mut heads: [Option<u64>; 3] = [None; 3];
    let mut expected = Vec::new();
    for round in 0..4_u64 {
        for (index, stream) in streams.iter().enumerate() {
            let count = 1 + (round + index as u64) % 2;
            let events = test_events(round * 10 + index as u64, count);
            let revision = match heads[index] {
                Some(r) => ExpectedRevision::Exact(r),
                None => ExpectedRevision::NoStream,
            };
            let outcome = append(log, stream, revision, events.clone()).await;
            heads[index] = Some(outcome.last_revision);
            let last_id = events.last().map(|e| e.id);
            expected.extend(events.into_iter().map(|e| (stream.clone(), e.id)));
            // The position the append answered is the one read_all shows for its last event.
            let all = read_ours(log, start, &prefix).await;
            let last = all.iter().find(|e| Some(e.id) == last_id);
            assert_eq!(
                last.map(|e| e.position),
                Some(outcome.last_position),
                "append outcome position"
            );
        }
    }
    let all = read_ours(log, start, &prefix).await;
    let got: Vec<(String, Uuid)> = all.iter().map(|e| (e.stream.clone(), e.id)).collect();
    assert_eq!(got, expected, "read_all is not in commit order");
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
}

/// A subscription from before the case's events delivers the history, then live events
/// appended while it waits, in order, each once.
pub async fn subscription_sees_history_then_live<L: EventLog>(log: &L) {
    let prefix = prefix("subscription");
    let start = marker(log, &prefix).await;
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");
    let history_a = test_events(0, 2);
    let history_b = test_events(2, 1);
    append(log, &a, ExpectedRevision::NoStream, history_a.clone()).await;
    append(log, &b, ExpectedRevision::NoStream, history_b.clone()).await;
    let history: Vec<Uuid> = history_a.iter().chain(&history_b).map(|e| e.id).collect();

    let mut sub = log.subscribe_all(start);
    let last_history = history[history.len() - 1];
    let seen = collect_until(&mut sub, &prefix, last_history, start).await;
    assert_eq!(ids(&seen), history, "history");
    let after_history = seen.last().map_or(start, |e| e.position);

    // The subscriber is caught up and waits; the append lands while it waits.
    let live = test_events(3, 2);
    let live_ids: Vec<Uuid> = live.iter().map(|e| e.id).collect();
    let waiting = async { collect_until(&mut sub, &prefix, live_ids[1], after_history).await };
    let writing = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        append(log, &a, ExpectedRevision::Exact(1), live).await
    };
    let (seen_live, _) = tokio::join!(waiting, writing);
    assert_eq!(ids(&seen_live), live_ids, "live events");

    // One more, to show nothing was delivered twice in between.
    let tail = test_events(5, 1);
    let tail_id = tail[0].id;
    append(log, &b, ExpectedRevision::Exact(0), tail).await;
    let after_live = seen_live.last().map_or(after_history, |e| e.position);
    let seen_tail = collect_until(&mut sub, &prefix, tail_id, after_live).await;
    assert_eq!(
        ids(&seen_tail),
        vec![tail_id],
        "an event was delivered twice"
    );
}

/// A subscriber that stops (drops its subscription) and subscribes again from the position
/// of the last event it handled misses nothing and sees nothing twice: mid-history and
/// after live events.
pub async fn subscriber_resumes_from_checkpoint<L: EventLog>(log: &L) {
    let prefix = prefix("resume");
    let start = marker(log, &prefix).await;
    let a = format!("{prefix}-a");
    let b = format!("{prefix}-b");
    let mut written: Vec<Uuid> = Vec::new();
    for (stream, expected, events) in [
        (&a, ExpectedRevision::NoStream, test_events(0, 2)),
        (&b, ExpectedRevision::NoStream, test_events(2, 2)),
    ] {
        written.extend(events.iter().map(|e| e.id));
        append(log, stream, expected, events).await;
    }

    // First run: handles two events of the history, then stops.
    let mut first = log.subscribe_all(start);
    let handled = collect_until(&mut first, &prefix, written[1], start).await;
    let checkpoint = handled.last().map_or(start, |e| e.position);
    drop(first);

    // While it is stopped, more events are committed.
    let more = test_events(4, 2);
    written.extend(more.iter().map(|e| e.id));
    append(log, &a, ExpectedRevision::Exact(1), more).await;

    // Second run, from the checkpoint: the rest of history and the new events.
    let mut second = log.subscribe_all(checkpoint);
    let last = written[written.len() - 1];
    let resumed = collect_until(&mut second, &prefix, last, checkpoint).await;
    let checkpoint = resumed.last().map_or(checkpoint, |e| e.position);
    drop(second);

    let mut all_seen = ids(&handled);
    all_seen.extend(ids(&resumed));
    assert_eq!(all_seen, written, "missed or duplicated across a restart");

    // Third run, from a checkpoint at the head: only what comes next.
    let mut third = log.subscribe_all(checkpoint);
    let tail = test_events(6, 1);
    let tail_id = tail[0].id;
    append(log, &b, ExpectedRevision::Exact(1), tail).await;
    let seen = collect_until(&mut third, &prefix, tail_id, checkpoint).await;
    assert_eq!(
        ids(&seen),
        vec![tail_id],
        "replayed events before the checkpoint"
    );
}
