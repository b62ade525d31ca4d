//! Benchmark of the scheduler (docs/performance.md, "Scheduler"). Not a test: run it in
//! release mode and read the table.
//!
//! ```sh
//! cargo run --release -p api --example bench_scheduler -- [RUNNING_LEASES] [HEARTBEATS]
//! ```
//!
//! The `Engine` over `SqliteLog` in a temporary directory, one command at a time (as the
//! engine task of `dcu serve` runs them), virtual time:
//!
//! 1. Admission: `RUNNING_LEASES` requests granted (1 card of `dc100-80g` each, 4 per
//!    account on an `advanced` plan, a pool of exactly that many cards); as many refused
//!    (`parallelism_exceeded`: nothing appended); a tenth as many queued (the pool is full).
//! 2. Heartbeats over the running leases, round-robin, virtual time advancing 1 s every 333
//!    heartbeats (each lease heartbeats every 30 s, as M6's runner does).
//! 3. Baselines in the same run: `SqliteLog` appends of one `LeaseMetered`-sized event each,
//!    one after another (what the engine awaits per command), and the same appends from 64
//!    concurrent tasks (group commit); `Engine::lease_status` (a query, no append).

use std::sync::Arc;
use std::time::Instant;

use ledger::clock::Timestamp;
use ledger::decide::{Command, Context, LeaseRequest};
use ledger::event::JobKind;
use ledger::log::sqlite::SqliteLog;
use ledger::log::{EventLog, ExpectedRevision, NewEvent};
use scheduler::{Engine, Pool, Target};
use uuid::Uuid;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const START: i64 = 1_743_465_600; // 2025-04-01T00:00:00Z
const LEASES_PER_ACCOUNT: usize = 4;
const HEARTBEATS_PER_SECOND: usize = 333;
const CONCURRENT_APPENDERS: usize = 64;

fn lease_request(lease: String) -> Command {
    Command::RequestLease(LeaseRequest {
        lease,
        kind: JobKind::GpuRun,
        model: "dc100-80g".into(),
        cards_per_worker: 1,
        workers: 1,
    })
}

fn rate(count: usize, seconds: f64) -> String {
    format!("{:>10.0}/s", count as f64 / seconds)
}

fn row(what: &str, count: usize, seconds: f64) {
    println!(
        "| {what:<52} | {count:>8} | {seconds:>8.3} s | {} |",
        rate(count, seconds)
    );
}

async fn open_accounts(
    engine: &mut Engine<SqliteLog>,
    prefix: &str,
    count: usize,
    now: Timestamp,
) -> AnyResult<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for index in 0..count {
        let id = format!("{prefix}-{index:06}");
        engine
            .execute(
                Target::Account(id.clone()),
                Command::Open { edu: true },
                now,
            )
            .await?;
        engine
            .execute(
                Target::Account(id.clone()),
                Command::Buy {
                    order: format!("order-{id}"),
                    plan: "advanced".into(),
                    price_cny: None,
                    price_reason: None,
                },
                now,
            )
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// A `LeaseMetered`-sized payload for the raw append baselines.
fn metered_like() -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: "BenchMetered".into(),
        version: 1,
        data: br#"{"at":"2025-04-01T00:00:30Z","type":"LeaseMetered","lease":"lease-000000-0","through":"2025-04-01T00:00:30Z","charge":{"buckets":[{"bucket":1,"amount":"0.021333"}],"arrears":"0"}}"#.to_vec(),
    }
}

/// Heartbeats per batch in the batched run: what waits in the engine task's queue under load.
const HEARTBEAT_BATCH: usize = 256;

#[tokio::main]
async fn main() -> AnyResult<()> {
    let mut args = std::env::args().skip(1);
    let running: usize = args.next().map_or(Ok(10_000), |text| text.parse())?;
    let heartbeats: usize = args.next().map_or(Ok(20_000), |text| text.parse())?;
    let accounts = running.div_ceil(LEASES_PER_ACCOUNT);
    let running = accounts * LEASES_PER_ACCOUNT;
    let queued = running / 10;

    let dir = tempfile::tempdir()?;
    let log = SqliteLog::open(dir.path())?;
    let context = Context::default();
    let models: Vec<&str> = context
        .catalog
        .models
        .iter()
        .map(|model| model.id.as_str())
        .collect();
    let nodes = running.div_ceil(8);
    let pool = Pool::uniform(&models, nodes, 8)?;
    let mut engine = Engine::open_with_pool(log, context.clone(), Some(pool)).await?;
    let now = Timestamp(START);

    println!("running leases {running}, accounts {accounts}, heartbeats {heartbeats}");
    println!();
    println!("| what | count | time | rate |");
    println!("|---|---:|---:|---:|");

    let started = Instant::now();
    let ids = open_accounts(&mut engine, "acct", accounts, now).await?;
    row(
        "setup: open + buy (2 commands per account)",
        accounts * 2,
        started.elapsed().as_secs_f64(),
    );

    // 1. Admission.
    let started = Instant::now();
    for (index, id) in ids.iter().enumerate() {
        for slot in 0..LEASES_PER_ACCOUNT {
            let lease = format!("lease-{index:06}-{slot}");
            engine
                .execute(Target::Account(id.clone()), lease_request(lease), now)
                .await?;
        }
    }
    row(
        "admission: granted (1 append each)",
        running,
        started.elapsed().as_secs_f64(),
    );
    let pool_view = engine.pool_view().ok_or("no pool")?;
    let free: u32 = pool_view
        .models
        .iter()
        .filter(|model| model.cards.model == "dc100-80g")
        .map(|model| model.cards.free)
        .sum();
    assert_eq!(
        free as usize,
        nodes * 8 - running,
        "every grant took a card"
    );

    let started = Instant::now();
    let mut refused = 0;
    for (index, id) in ids.iter().enumerate() {
        for slot in 0..LEASES_PER_ACCOUNT {
            let lease = format!("over-{index:06}-{slot}");
            if engine
                .execute(Target::Account(id.clone()), lease_request(lease), now)
                .await
                .is_err()
            {
                refused += 1;
            }
        }
    }
    row(
        "admission: refused (parallelism_exceeded, no append)",
        refused,
        started.elapsed().as_secs_f64(),
    );

    let waiting = open_accounts(
        &mut engine,
        "wait",
        queued.div_ceil(LEASES_PER_ACCOUNT),
        now,
    )
    .await?;
    // Fill what the last node left free, so every request below queues.
    let mut fillers = 0;
    while engine
        .pool_view()
        .and_then(|view| {
            view.models
                .iter()
                .find(|model| model.cards.model == "dc100-80g")
                .map(|model| model.cards.free)
        })
        .unwrap_or(0)
        > 0
    {
        let id = &waiting[fillers / LEASES_PER_ACCOUNT];
        engine
            .execute(
                Target::Account(id.clone()),
                lease_request(format!("fill-{fillers}")),
                now,
            )
            .await?;
        fillers += 1;
    }
    let started = Instant::now();
    let mut queued_count = 0;
    'accounts: for (index, id) in waiting.iter().enumerate() {
        for slot in 0..LEASES_PER_ACCOUNT {
            if index * LEASES_PER_ACCOUNT + slot < fillers {
                continue;
            }
            if queued_count == queued {
                break 'accounts;
            }
            engine
                .execute(
                    Target::Account(id.clone()),
                    lease_request(format!("queued-{index:06}-{slot}")),
                    now,
                )
                .await?;
            queued_count += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let in_queue = engine.queue("dc100-80g").len();
    row("admission: queued (1 append each)", in_queue, elapsed);

    // 2. Heartbeats.
    let leases: Vec<String> = (0..accounts)
        .flat_map(|index| {
            (0..LEASES_PER_ACCOUNT).map(move |slot| format!("lease-{index:06}-{slot}"))
        })
        .collect();
    let appended_before = engine.events_appended();
    let started = Instant::now();
    let mut clock = START;
    for beat in 0..heartbeats {
        if beat % HEARTBEATS_PER_SECOND == 0 {
            clock += 1;
        }
        let lease = &leases[beat % leases.len()];
        engine
            .execute(
                Target::Lease(lease.clone()),
                Command::Heartbeat {
                    lease: lease.clone(),
                },
                Timestamp(clock),
            )
            .await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    row(
        &format!("heartbeats over {running} running leases"),
        heartbeats,
        elapsed,
    );
    // 2b. The same heartbeats in batches, as the server's engine task sends them when
    // requests wait in its queue: one group commit per batch.
    let started = Instant::now();
    let mut batch = Vec::with_capacity(HEARTBEAT_BATCH);
    for beat in 0..heartbeats {
        if beat % HEARTBEATS_PER_SECOND == 0 {
            clock += 1;
        }
        let lease = &leases[beat % leases.len()];
        let command = Command::Heartbeat {
            lease: lease.clone(),
        };
        batch.push((Target::Lease(lease.clone()), command, Timestamp(clock)));
        if batch.len() == HEARTBEAT_BATCH || beat + 1 == heartbeats {
            for result in engine.execute_batch(std::mem::take(&mut batch)).await {
                result?;
            }
        }
    }
    row(
        &format!("heartbeats over {running} running leases, batches of {HEARTBEAT_BATCH}"),
        heartbeats,
        started.elapsed().as_secs_f64(),
    );
    let appended = engine.events_appended() - appended_before;
    let still_running = leases
        .iter()
        .filter(|lease| {
            engine
                .lease_status(lease, Timestamp(clock))
                .is_ok_and(|view| view.state == projections::views::LeaseState::Granted)
        })
        .count();
    assert_eq!(still_running, running, "no lease expired during the run");

    // 3. Baselines.
    let started = Instant::now();
    for lease in leases.iter().take(heartbeats) {
        let _ = engine.lease_status(lease, Timestamp(clock));
    }
    row(
        "baseline: Engine::lease_status (query, no append)",
        heartbeats.min(leases.len()),
        started.elapsed().as_secs_f64(),
    );
    let raw_dir = tempfile::tempdir()?;
    let log = Arc::new(SqliteLog::open(raw_dir.path())?);
    let started = Instant::now();
    for index in 0..heartbeats {
        let stream = format!("bench-{}", index % accounts);
        log.append(&stream, ExpectedRevision::Any, vec![metered_like()])
            .await?;
    }
    row(
        "baseline: SqliteLog append, 1 event, sequential",
        heartbeats,
        started.elapsed().as_secs_f64(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..CONCURRENT_APPENDERS {
        let log = Arc::clone(&log);
        let share = heartbeats / CONCURRENT_APPENDERS;
        tasks.push(tokio::spawn(async move {
            for index in 0..share {
                let stream = format!("bench-c{task}-{}", index % 16);
                log.append(&stream, ExpectedRevision::Any, vec![metered_like()])
                    .await?;
            }
            Ok::<usize, ledger::log::LogError>(share)
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    row(
        &format!("baseline: SqliteLog append, 1 event, {CONCURRENT_APPENDERS} tasks"),
        done,
        started.elapsed().as_secs_f64(),
    );
    println!();
    println!(
        "heartbeats appended {appended} events ({:.2} per heartbeat); engine events in total {}",
        appended as f64 / (2 * heartbeats) as f64,
        engine.events_appended()
    );
    engine.log().close().await?;
    log.close().await?;
    Ok(())
}
