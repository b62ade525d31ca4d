//! The engine's batches: many commands, one group commit, the same answers and the same log
//! as one command after another; a failed append stops the engine.

use ledger::clock::Timestamp;
use ledger::decide::{Command, Context, LeaseRequest};
use ledger::event::JobKind;
use ledger::log::sqlite::SqliteLog;
use scheduler::{Engine, EngineError, Outcome, Pool, Target};

fn at(seconds: i64) -> Timestamp {
    Timestamp::parse("2025-04-01T00:00:00Z")
        .expect("instant")
        .plus_seconds(seconds)
}

fn account(id: &str) -> Target {
    Target::Account(id.into())
}

/// Two accounts, each with a plan, and `leases` leases of one 40 GB card each, spread over
/// them; then the heartbeats and releases of every lease.
fn story(leases: usize) -> Vec<(Target, Command, Timestamp)> {
    let mut commands = Vec::new();
    for id in ["a", "b"] {
        commands.push((account(id), Command::Open { edu: false }, at(0)));
        let buy = Command::Buy {
            order: format!("{id}-1"),
            plan: "advanced".into(),
            price_cny: None,
            price_reason: None,
        };
        commands.push((account(id), buy, at(0)));
    }
    for index in 0..leases {
        let request = LeaseRequest {
            lease: format!("l{index}"),
            kind: JobKind::GpuRun,
            model: "dc100-40g".into(),
            cards_per_worker: 1,
            workers: 1,
        };
        let owner = if index % 2 == 0 { "a" } else { "b" };
        commands.push((account(owner), Command::RequestLease(request), at(1)));
    }
    for index in 0..leases {
        let lease = format!("l{index}");
        let heartbeat = Command::Heartbeat {
            lease: lease.clone(),
        };
        commands.push((Target::Lease(lease), heartbeat, at(31)));
    }
    for index in 0..leases {
        let lease = format!("l{index}");
        let release = Command::Release {
            lease: lease.clone(),
        };
        commands.push((Target::Lease(lease), release, at(45)));
    }
    commands
}

async fn engine(dir: &std::path::Path) -> Engine<SqliteLog> {
    let log = SqliteLog::open(dir).expect("log opens");
    let models = ["dc100-40g", "dc100-80g"];
    let pool = Pool::uniform(&models, 2, 4).expect("pool");
    Engine::open_with_pool(log, Context::default(), Some(pool))
        .await
        .expect("engine opens")
}

#[tokio::test]
async fn a_batch_answers_and_logs_like_one_command_after_another() {
    let commands = story(12); // 12 leases, 8 cards: four of them queue
    let one_by_one_dir = tempfile::tempdir().expect("temp dir");
    let mut one_by_one = engine(one_by_one_dir.path()).await;
    let mut expected: Vec<Result<Outcome, String>> = Vec::new();
    for (target, command, now) in commands.clone() {
        let result = one_by_one.execute(target, command, now).await;
        expected.push(result.map_err(|error| error.to_string()));
    }
    let batched_dir = tempfile::tempdir().expect("temp dir");
    let mut batched = engine(batched_dir.path()).await;
    let mut answers = Vec::new();
    for chunk in commands.chunks(7) {
        let results = batched.execute_batch(chunk.to_vec()).await;
        answers.extend(
            results
                .into_iter()
                .map(|result| result.map_err(|error| error.to_string())),
        );
    }
    assert_eq!(answers, expected);
    for id in ["a", "b"] {
        assert_eq!(batched.state(id), one_by_one.state(id), "account {id}");
    }
    let stats = batched.log().stats();
    assert!(
        stats.batches < one_by_one.log().stats().batches,
        "fewer commits: {} batched vs {} one by one",
        stats.batches,
        one_by_one.log().stats().batches
    );
    // What the log holds is what memory held: a restart folds to the same states.
    let before: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| batched.state(id).cloned())
        .collect();
    batched.log().close().await.expect("closes");
    drop(batched);
    let reopened = engine(batched_dir.path()).await;
    let after: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| reopened.state(id).cloned())
        .collect();
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_failed_append_stops_the_engine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = engine(dir.path()).await;
    let open = engine
        .execute(account("a"), Command::Open { edu: false }, at(0))
        .await;
    assert!(open.is_ok());
    engine.log().close().await.expect("closes");
    let login = engine.execute(account("a"), Command::Login, at(1)).await;
    assert!(matches!(login, Err(EngineError::Log(_))), "{login:?}");
    let after = engine.execute(account("a"), Command::Login, at(2)).await;
    assert!(matches!(after, Err(EngineError::Stopped(_))), "{after:?}");
    let batch = engine
        .execute_batch(vec![(account("a"), Command::Login, at(3))])
        .await;
    assert!(matches!(batch[0], Err(EngineError::Stopped(_))));
}
