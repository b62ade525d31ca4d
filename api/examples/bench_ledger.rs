//! Benchmarks of the event log and the projection (docs/performance.md, "Event log and
//! simulation"). Not a test: run it in release mode and read the table.
//!
//! ```sh
//! cargo run --release -p api --example bench_ledger -- [ACCOUNTS] [EVENTS_PER_ACCOUNT] [APPENDERS]
//! ```
//!
//! 1. Durable append throughput: `APPENDERS` tasks append every account's events through
//!    `SqliteLog` (group commit), one command's events per append, vs raw `rusqlite`
//!    inserts of the same rows into the same schema, 1,000 rows per transaction, one
//!    process, same `WAL` + `synchronous=FULL`. Also a single sequential appender (what one
//!    engine does, command after command).
//! 2. Full replay: `Engine::open` over the populated log (decode + fold of every account)
//!    vs a raw `SELECT` of every column of every row.
//! 3. Projection memory: resident set growth while building 100,000 `AccountState`s (open,
//!    a plan, a lease granted, metered twice, released) in a map, vs the same number of empty
//!    states.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ledger::account::AccountState;
use ledger::clock::Timestamp;
use ledger::decide::{self, Command, Context, LeaseRequest};
use ledger::due;
use ledger::event::{Event, JobKind, EVENT_VERSION};
use ledger::log::sqlite::{SqliteLog, DB_FILE_NAME};
use ledger::log::{EventLog, ExpectedRevision, NewEvent};
use scheduler::Engine;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const START: i64 = 1_735_689_600;
const RAW_BATCH_ROWS: usize = 1_000;
const MEMORY_ACCOUNTS: usize = 100_000;

/// Applies a command to a state in memory (due events first), as the engine would.
fn apply(
    state: &mut AccountState,
    context: &Context,
    command: &Command,
    now: Timestamp,
) -> Vec<Event> {
    let mut events = due::due(state, now);
    for event in &events {
        state.evolve(event);
    }
    if let Ok(decided) = decide::decide(state, context, command, now) {
        for event in &decided {
            state.evolve(event);
        }
        events.extend(decided);
    }
    events
}

/// One account's history, as the commands' event groups: open, buy `advanced`, then leases
/// of one 80 GB card that heartbeat twice and are released, until about `target` events.
fn history(index: usize, target: usize, context: &Context) -> (AccountState, Vec<Vec<Event>>) {
    let id = format!("acct-{index:07}");
    let mut state = AccountState::new(&id);
    let mut at = START + (index as i64 % 86_400);
    let mut groups = Vec::new();
    let mut count = 0;
    let mut push = |events: Vec<Event>, groups: &mut Vec<Vec<Event>>| {
        count += events.len();
        groups.push(events);
        count
    };
    let open = Command::Open {
        edu: index & 1 == 0,
    };
    push(
        apply(&mut state, context, &open, Timestamp(at)),
        &mut groups,
    );
    let buy = Command::Buy {
        order: format!("{id}-o"),
        plan: "advanced".into(),
        price_cny: None,
        price_reason: None,
    };
    let mut total = push(apply(&mut state, context, &buy, Timestamp(at)), &mut groups);
    let mut lease_number = 0;
    while total < target {
        lease_number += 1;
        let lease = format!("{id}-l{lease_number}");
        at += 10;
        let request = Command::RequestLease(LeaseRequest {
            lease: lease.clone(),
            kind: JobKind::GpuRun,
            model: "dc100-80g".into(),
            cards_per_worker: 1,
            workers: 1,
        });
        push(
            apply(&mut state, context, &request, Timestamp(at)),
            &mut groups,
        );
        for _ in 0..2 {
            at += 30;
            let heartbeat = Command::Heartbeat {
                lease: lease.clone(),
            };
            push(
                apply(&mut state, context, &heartbeat, Timestamp(at)),
                &mut groups,
            );
        }
        at += 30;
        let release = Command::Release { lease };
        total = push(
            apply(&mut state, context, &release, Timestamp(at)),
            &mut groups,
        );
    }
    (state, groups)
}

fn encode(event: &Event) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(), // time-ordered, as the engine writes them
        event_type: event.body.type_name().into(),
        version: EVENT_VERSION,
        data: event.encode(),
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn per_second(count: usize, seconds: f64) -> f64 {
    count as f64 / seconds.max(1e-9)
}

struct Stream {
    name: String,
    appends: Vec<Vec<NewEvent>>,
}

async fn group_commit(dir: &Path, streams: Vec<Stream>, appenders: usize) -> AnyResult<f64> {
    let log = Arc::new(SqliteLog::open(dir)?);
    let streams = Arc::new(streams);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (log, streams, next) = (log.clone(), streams.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(stream) = streams.get(index) else {
                    return Ok::<(), ledger::log::LogError>(());
                };
                let mut revision: Option<u64> = None;
                for append in &stream.appends {
                    let expected =
                        revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                    let outcome = log.append(&stream.name, expected, append.clone()).await?;
                    revision = Some(outcome.last_revision);
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    log.close().await?;
    Ok(seconds)
}

async fn sequential(dir: &Path, streams: &[Stream], limit: usize) -> AnyResult<(usize, f64)> {
    let log = SqliteLog::open(dir)?;
    let started = Instant::now();
    let mut written = 0;
    'outer: for stream in streams {
        let mut revision: Option<u64> = None;
        for append in &stream.appends {
            let expected = revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            let outcome = log.append(&stream.name, expected, append.clone()).await?;
            revision = Some(outcome.last_revision);
            written += append.len();
            if written >= limit {
                break 'outer;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    log.close().await?;
    Ok((written, seconds))
}

fn raw_insert(dir: &Path, streams: &[Stream]) -> AnyResult<f64> {
    // The same schema: let the log create it, then write with rusqlite alone.
    let log = SqliteLog::open(dir)?;
    drop(log);
    let mut conn = rusqlite::Connection::open(dir.join(DB_FILE_NAME))?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let rows: Vec<(&str, u64, &NewEvent)> = streams
        .iter()
        .flat_map(|stream| {
            stream
                .appends
                .iter()
                .flatten()
                .enumerate()
                .map(move |(revision, event)| (stream.name.as_str(), revision as u64, event))
        })
        .collect();
    let started = Instant::now();
    for batch in rows.chunks(RAW_BATCH_ROWS) {
        let transaction = conn.transaction()?;
        {
            let mut statement = transaction.prepare_cached(
                "INSERT INTO events (id, stream, revision, event_type, version, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (stream, revision, event) in batch {
                statement.execute(rusqlite::params![
                    event.id.as_bytes(),
                    stream,
                    revision,
                    event.event_type,
                    event.version,
                    event.data
                ])?;
            }
        }
        transaction.commit()?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn raw_scan(dir: &Path) -> AnyResult<(usize, f64)> {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE_NAME))?;
    let started = Instant::now();
    let mut statement = conn.prepare(
        "SELECT position, id, stream, revision, event_type, version, data FROM events \
         ORDER BY position",
    )?;
    let mut rows = statement.query([])?;
    let (mut count, mut bytes) = (0_usize, 0_usize);
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(1)?;
        let stream: String = row.get(2)?;
        let event_type: String = row.get(4)?;
        let data: Vec<u8> = row.get(6)?;
        let _: i64 = row.get(0)?;
        let _: i64 = row.get(3)?;
        let _: i64 = row.get(5)?;
        bytes += id.len() + stream.len() + event_type.len() + data.len();
        count += 1;
    }
    std::hint::black_box(bytes);
    Ok((count, started.elapsed().as_secs_f64()))
}

fn memory(context: &Context) -> (f64, f64) {
    let before = rss_bytes();
    let empty: HashMap<String, AccountState> = (0..MEMORY_ACCOUNTS)
        .map(|index| {
            let id = format!("acct-{index:07}");
            (id.clone(), AccountState::new(&id))
        })
        .collect();
    let empty_per = (rss_bytes().saturating_sub(before)) as f64 / MEMORY_ACCOUNTS as f64;
    drop(empty);
    let before = rss_bytes();
    let mut states: HashMap<String, AccountState> = HashMap::with_capacity(MEMORY_ACCOUNTS);
    for index in 0..MEMORY_ACCOUNTS {
        // Open, plan, one lease granted, metered twice, released: 6 to 7 events.
        let (state, _) = history(index, 5, context);
        states.insert(state.id.clone(), state);
    }
    let full_per = (rss_bytes().saturating_sub(before)) as f64 / MEMORY_ACCOUNTS as f64;
    std::hint::black_box(&states);
    (empty_per, full_per)
}

#[tokio::main]
async fn main() -> AnyResult<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let accounts = args.first().copied().unwrap_or(5_000);
    let per_account = args.get(1).copied().unwrap_or(100);
    let appenders = args.get(2).copied().unwrap_or(64);
    let context = Context {
        lease_ttl_s: 0,
        ..Context::default()
    };

    // Memory first, while the heap is small.
    let (empty_per, full_per) = memory(&context);

    let started = Instant::now();
    let streams: Vec<Stream> = (0..accounts)
        .map(|index| {
            let (state, groups) = history(index, per_account, &context);
            Stream {
                name: format!("account-{}", state.id),
                appends: groups
                    .iter()
                    .filter(|group| !group.is_empty())
                    .map(|group| group.iter().map(encode).collect())
                    .collect(),
            }
        })
        .collect();
    let events: usize = streams
        .iter()
        .map(|s| s.appends.iter().map(Vec::len).sum::<usize>())
        .sum();
    let appends: usize = streams.iter().map(|s| s.appends.len()).sum();
    let bytes: usize = streams
        .iter()
        .flat_map(|s| s.appends.iter().flatten())
        .map(|e| e.data.len())
        .sum();
    eprintln!(
        "generated {events} events ({appends} appends, {} B/event) for {accounts} accounts in {:.1} s",
        bytes / events.max(1),
        started.elapsed().as_secs_f64()
    );

    let group_dir = tempfile::tempdir()?;
    let group_s = group_commit(group_dir.path(), streams_clone(&streams), appenders).await?;
    let raw_dir = tempfile::tempdir()?;
    let raw_s = raw_insert(raw_dir.path(), &streams)?;
    let seq_dir = tempfile::tempdir()?;
    let (seq_events, seq_s) = sequential(seq_dir.path(), &streams, 20_000).await?;

    let log = SqliteLog::open(group_dir.path())?;
    let replay_started = Instant::now();
    let engine = Engine::open(log, context.clone()).await?;
    let replay_s = replay_started.elapsed().as_secs_f64();
    let folded = engine.account_ids().count();
    engine.log().close().await?;
    drop(engine);
    let (scanned, scan_s) = raw_scan(group_dir.path())?;

    let group = per_second(events, group_s);
    let raw = per_second(events, raw_s);
    let replay = per_second(events, replay_s);
    let scan = per_second(scanned, scan_s);
    println!("| measure | figure | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| durable append, group commit, {appenders} appenders, {events} events in {appends} appends | {group:.0} events/s ({group_s:.2} s) | raw rusqlite, {RAW_BATCH_ROWS} rows/txn: {raw:.0} events/s ({raw_s:.2} s) | {:.2} |",
        group / raw
    );
    println!(
        "| durable append, 1 sequential appender (first {seq_events} events) | {:.0} events/s, {:.0} appends/s | — | — |",
        per_second(seq_events, seq_s),
        per_second(seq_events * appends / events.max(1), seq_s)
    );
    println!(
        "| full replay, Engine::open, {folded} accounts, {events} events | {replay:.0} events/s ({replay_s:.2} s) | raw SELECT scan: {scan:.0} events/s ({scan_s:.2} s) | {:.2} |",
        replay / scan
    );
    println!(
        "| projection memory, {MEMORY_ACCOUNTS} accounts (plan + 1 lease, ~7 events) | {full_per:.0} B/account (RSS) | empty AccountState: {empty_per:.0} B/account | — |"
    );
    Ok(())
}

fn streams_clone(streams: &[Stream]) -> Vec<Stream> {
    streams
        .iter()
        .map(|stream| Stream {
            name: stream.name.clone(),
            appends: stream.appends.clone(),
        })
        .collect()
}
