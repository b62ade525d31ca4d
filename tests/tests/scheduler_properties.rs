//! Property tests of the scheduler (M4, SPEC I1, I3, I4, I6) over random sequences of lease
//! requests, heartbeats, releases, purchases, usage, time jumps and restarts, through the
//! real engine on a real SQLite log and a small pool that is often full.

use std::collections::BTreeMap;

use ledger::account::AccountState;
use ledger::amount::lease_cost;
use ledger::clock::Timestamp;
use ledger::decide::{Command, Context, LeaseRequest};
use ledger::event::JobKind;
use ledger::log::sqlite::SqliteLog;
use proptest::prelude::*;
use scheduler::{Engine, NodeSpec, Outcome, Pool, Target};

const ACCOUNTS: [&str; 3] = ["a", "b", "c"];
const PLANS: [&str; 4] = ["trial", "basic", "advanced", "extension"];
const MODELS: [&str; 2] = ["dc100-40g", "dc100-80g"];

#[derive(Debug, Clone)]
enum Op {
    Request {
        account: usize,
        lease: u8,
        model: usize,
        cards: u32,
        workers: u32,
    },
    Heartbeat(u8),
    Release(u8),
    Buy {
        account: usize,
        plan: usize,
        order: u8,
    },
    Meter {
        account: usize,
        seconds: u64,
        record: u8,
    },
    Advance(i64),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..24u8, 0..2usize, 1..4u32, 1..3u32).prop_map(
            |(account, lease, model, cards, workers)| Op::Request { account, lease, model, cards, workers }
        ),
        4 => (0..24u8).prop_map(Op::Heartbeat),
        3 => (0..24u8).prop_map(Op::Release),
        2 => (0..3usize, 0..4usize, 0..12u8).prop_map(|(account, plan, order)| Op::Buy { account, plan, order }),
        1 => (0..3usize, 1..20_000u64, 0..8u8).prop_map(|(account, seconds, record)| Op::Meter { account, seconds, record }),
        5 => prop_oneof![1..120i64, 60..4_000i64, 86_400..40 * 86_400i64].prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

fn pool() -> Pool {
    let node = |node: &str, model: &str, cards| NodeSpec {
        node: node.into(),
        model: model.into(),
        cards,
    };
    let specs = [
        node("n1", "dc100-80g", 3),
        node("n2", "dc100-40g", 2),
        node("n3", "dc100-80g", 2),
    ];
    Pool::new(&specs, &MODELS).expect("valid pool")
}

fn lease_id(lease: u8) -> String {
    format!("l{lease}")
}

/// I4 and the pool's bookkeeping: the cards the pool counts as used are exactly the cards
/// of running leases, never more than the pool has; queued leases are exactly the queues.
fn check_pool(engine: &Engine<SqliteLog>) -> Result<(), TestCaseError> {
    let pool = engine.pool().expect("engine has a pool");
    let total: u32 = pool.nodes().iter().map(|node| node.cards).sum();
    prop_assert!(
        pool.cards_in_use() <= total,
        "I4: more cards used than the pool has"
    );
    let mut held: BTreeMap<String, u32> = BTreeMap::new();
    let mut queued = 0usize;
    for account in ACCOUNTS {
        let Some(state) = engine.state(account) else {
            continue;
        };
        for running in state.running.values() {
            for place in &running.placement {
                *held.entry(place.node.clone()).or_default() += place.cards;
            }
            prop_assert_eq!(
                running.placement.iter().map(|p| p.cards).sum::<u32>(),
                running.terms.cards
            );
            // I6: never billed beyond the time the cards were held.
            let held_cost = lease_cost(
                running.terms.rate_dcu_per_hour,
                running.terms.cards,
                running.metered_through.seconds_since(running.granted_at),
            );
            prop_assert!(running.charged <= held_cost, "I6: charged beyond held time");
        }
        queued += state.queued_leases.len();
        prop_assert!(state.conservation_holds(), "I1 for {}", account);
    }
    for node in pool.nodes() {
        let used = node.used;
        prop_assert_eq!(
            used,
            held.get(&node.node).copied().unwrap_or(0),
            "node {}",
            &node.node
        );
    }
    let in_queues: usize = MODELS.iter().map(|model| engine.queue(model).len()).sum();
    prop_assert_eq!(in_queues, queued, "queues hold exactly the queued leases");
    Ok(())
}

async fn open(dir: &std::path::Path) -> Engine<SqliteLog> {
    let log = SqliteLog::open(dir).expect("log opens");
    Engine::open_with_pool(log, Context::default(), Some(pool()))
        .await
        .expect("engine opens")
}

/// Runs the story; with `restarts` false, `Op::Restart` does nothing. Returns the accounts'
/// final states.
async fn run(ops: Vec<Op>, restarts: bool) -> Result<Vec<Option<AccountState>>, TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut engine = open(dir.path()).await;
    let mut now = Timestamp::parse("2025-04-01T00:00:00Z").expect("instant");
    for account in ACCOUNTS {
        let command = Command::Open { edu: false };
        engine
            .execute(Target::Account(account.into()), command, now)
            .await
            .expect("opens");
        let buy = Command::Buy {
            order: format!("{account}-first"),
            plan: "advanced".into(),
            price_cny: None,
            price_reason: None,
        };
        engine
            .execute(Target::Account(account.into()), buy, now)
            .await
            .expect("buys");
    }
    for op in ops {
        match op {
            Op::Advance(seconds) => {
                now = now.plus_seconds(seconds);
                engine.tick(now).await.expect("tick");
            }
            Op::Restart if !restarts => {}
            Op::Restart => {
                let before: Vec<_> = ACCOUNTS.iter().map(|a| engine.state(a).cloned()).collect();
                let pool_before = engine.pool_view();
                engine.log().close().await.expect("log closes");
                drop(engine);
                engine = open(dir.path()).await;
                let after: Vec<_> = ACCOUNTS.iter().map(|a| engine.state(a).cloned()).collect();
                prop_assert_eq!(before, after, "I3: a restart rebuilds the same states");
                prop_assert_eq!(pool_before, engine.pool_view(), "the same cards and queues");
            }
            Op::Request {
                account,
                lease,
                model,
                cards,
                workers,
            } => {
                let request = LeaseRequest {
                    lease: lease_id(lease),
                    kind: if workers > 1 {
                        JobKind::RunTask
                    } else {
                        JobKind::GpuRun
                    },
                    model: MODELS[model].into(),
                    cards_per_worker: cards,
                    workers,
                };
                let known = engine
                    .state(ACCOUNTS[account])
                    .is_some_and(|s| s.knows_lease(&request.lease));
                let outcome = engine
                    .execute(
                        Target::Account(ACCOUNTS[account].into()),
                        Command::RequestLease(request),
                        now,
                    )
                    .await;
                if let (false, Ok(Outcome::Lease(_))) = (known, &outcome) {
                    let state = engine.state(ACCOUNTS[account]).expect("state");
                    prop_assert!(
                        state.units_in_use() + state.units_queued() <= state.parallelism_cap(),
                        "I4: units within the cap at admission"
                    );
                }
            }
            Op::Heartbeat(lease) => {
                let _ = engine
                    .execute(
                        Target::Lease(lease_id(lease)),
                        Command::Heartbeat {
                            lease: lease_id(lease),
                        },
                        now,
                    )
                    .await;
            }
            Op::Release(lease) => {
                let _ = engine
                    .execute(
                        Target::Lease(lease_id(lease)),
                        Command::Release {
                            lease: lease_id(lease),
                        },
                        now,
                    )
                    .await;
            }
            Op::Buy {
                account,
                plan,
                order,
            } => {
                let command = Command::Buy {
                    order: format!("{}-{order}", ACCOUNTS[account]),
                    plan: PLANS[plan].into(),
                    price_cny: None,
                    price_reason: None,
                };
                let _ = engine
                    .execute(Target::Account(ACCOUNTS[account].into()), command, now)
                    .await;
            }
            Op::Meter {
                account,
                seconds,
                record,
            } => {
                let command = Command::RecordUsage {
                    record: format!("{}-r{record}", ACCOUNTS[account]),
                    model: "dc100-80g".into(),
                    cards: 1,
                    seconds,
                    started_at: None,
                };
                let _ = engine
                    .execute(Target::Account(ACCOUNTS[account].into()), command, now)
                    .await;
            }
        }
        check_pool(&engine)?;
    }
    let states = ACCOUNTS.iter().map(|a| engine.state(a).cloned()).collect();
    engine.log().close().await.expect("log closes");
    Ok(states)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn r_i4_m4_cards_never_exceed_the_pool_and_restarts_rebuild_it(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let with_restarts = runtime.block_on(run(ops.clone(), true))?;
        let without = runtime.block_on(run(ops, false))?;
        prop_assert_eq!(
            with_restarts,
            without,
            "I3: restarts change nothing that happens after them (queued leases included)"
        );
    }
}
