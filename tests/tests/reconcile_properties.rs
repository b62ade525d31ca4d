//! Property tests of issue 6 over random histories: the reconciliation identity holds
//! exactly for any range; a statement's lines sum to its balance change; as-of equals the
//! answer the ledger gave at that instant.
//!
//! Histories are driven through the pure core as `Engine::execute` does without a pool
//! (the account's due events, then the command's), for two accounts, with time jumps that
//! cross period ends, carry-over windows and lease TTLs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use ledger::account::AccountState;
use ledger::clock::{Timestamp, DAY_S};
use ledger::decide::{self, Command, Context, LeaseRequest};
use ledger::due;
use ledger::event::JobKind;
use projections::reconcile::reconcile;
use projections::statement::{booked_before, state_as_of, statement, Balances, LoggedEvent};
use projections::views::{self, BalanceView};
use proptest::prelude::*;

const ACCOUNTS: [&str; 2] = ["alice", "bob"];
const PLANS: [&str; 4] = ["trial", "basic", "advanced", "extension"];
const MODELS: [&str; 2] = ["dc100-40g", "dc100-80g"];
/// 2025-04-01T00:00:00+08:00.
const START_S: i64 = 1_743_436_800;

#[derive(Debug, Clone)]
enum Op {
    Open(usize, bool),
    Buy(usize, usize, u8),
    Usage(usize, usize, u32, u64, u8),
    Lease(usize, usize, u8),
    Heartbeat(usize, u8),
    Release(usize, u8),
    Invoice(usize, u8, Vec<u8>),
    Ban(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    prop_oneof![
        2 => (account.clone(), any::<bool>()).prop_map(|(a, edu)| Op::Open(a, edu)),
        5 => (account.clone(), 0..PLANS.len(), 0u8..6).prop_map(|(a, p, o)| Op::Buy(a, p, o)),
        4 => (account.clone(), 0..MODELS.len(), 1u32..3, 0u64..200_000, 0u8..6)
            .prop_map(|(a, m, c, s, r)| Op::Usage(a, m, c, s, r)),
        3 => (account.clone(), 0..MODELS.len(), 0u8..3).prop_map(|(a, m, l)| Op::Lease(a, m, l)),
        3 => (account.clone(), 0u8..3).prop_map(|(a, l)| Op::Heartbeat(a, l)),
        2 => (account.clone(), 0u8..3).prop_map(|(a, l)| Op::Release(a, l)),
        2 => (account.clone(), 0u8..4, prop::collection::vec(0u8..6, 1..3))
            .prop_map(|(a, i, o)| Op::Invoice(a, i, o)),
        1 => account.prop_map(Op::Ban),
    ]
}

fn jump() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(0i64),
        2 => 1i64..120,
        2 => 60i64..7_200,
        2 => Just(DAY_S),
        2 => (1i64..40).prop_map(|days| days * DAY_S),
    ]
}

/// One account's log and the balance the ledger answered at each instant (the last answer
/// of that instant).
#[derive(Default)]
struct History {
    logs: BTreeMap<String, Vec<LoggedEvent>>,
    answers: BTreeMap<String, BTreeMap<Timestamp, BalanceView>>,
    end: Timestamp,
}

fn command(op: &Op) -> (usize, Command) {
    let order = |a: usize, o: u8| format!("{}-ord-{o}", ACCOUNTS[a]);
    let lease = |a: usize, l: u8| format!("{}-lease-{l}", ACCOUNTS[a]);
    match op {
        Op::Open(a, edu) => (*a, Command::Open { edu: *edu }),
        Op::Buy(a, p, o) => (
            *a,
            Command::Buy {
                order: order(*a, *o),
                plan: PLANS[*p].into(),
                price_cny: None,
                price_reason: None,
            },
        ),
        Op::Usage(a, m, cards, seconds, r) => (
            *a,
            Command::RecordUsage {
                record: format!("{}-rec-{r}", ACCOUNTS[*a]),
                model: MODELS[*m].into(),
                cards: *cards,
                seconds: *seconds,
                started_at: None,
            },
        ),
        Op::Lease(a, m, l) => (
            *a,
            Command::RequestLease(LeaseRequest {
                lease: lease(*a, *l),
                kind: if *m == 0 {
                    JobKind::GpuDebug
                } else {
                    JobKind::RunTask
                },
                model: MODELS[*m].into(),
                cards_per_worker: 1,
                workers: 1,
            }),
        ),
        Op::Heartbeat(a, l) => (
            *a,
            Command::Heartbeat {
                lease: lease(*a, *l),
            },
        ),
        Op::Release(a, l) => (
            *a,
            Command::Release {
                lease: lease(*a, *l),
            },
        ),
        Op::Invoice(a, i, orders) => (
            *a,
            Command::RecordInvoice {
                invoice: format!("{}-inv-{i}", ACCOUNTS[*a]),
                orders: orders.iter().map(|o| order(*a, *o)).collect(),
            },
        ),
        Op::Ban(a) => (
            *a,
            Command::Ban {
                reason: "mining".into(),
            },
        ),
    }
}

fn run(steps: &[(i64, Op)]) -> History {
    let context = Context::default();
    let mut states: BTreeMap<String, AccountState> = ACCOUNTS
        .iter()
        .map(|id| (id.to_string(), AccountState::new(id)))
        .collect();
    let mut history = History::default();
    let mut now = Timestamp(START_S);
    for (jump, op) in steps {
        now = now.plus_seconds(*jump);
        let (account, command) = command(op);
        let id = ACCOUNTS[account].to_string();
        let state = states.get_mut(&id).unwrap();
        let log = history.logs.entry(id.clone()).or_default();
        let mut events = due::due(state, now);
        let mut next = state.clone();
        for event in &events {
            next.evolve(event);
        }
        if let Ok(decided) = decide::decide(&next, &context, &command, now) {
            for event in &decided {
                next.evolve(event);
            }
            events.extend(decided);
        }
        // What the command made due at `now` (exhaustion) is appended at once, as the
        // engine's second tick does.
        let after = due::due(&next, now);
        for event in &after {
            next.evolve(event);
        }
        events.extend(after);
        for event in events {
            let revision = log.len() as u64;
            log.push(LoggedEvent {
                revision: Some(revision),
                event,
            });
        }
        *state = next;
        if state.opened {
            let answer = views::balance(state, now);
            history.answers.entry(id).or_default().insert(now, answer);
        }
    }
    history.end = now;
    history
}

fn steps() -> impl Strategy<Value = Vec<(i64, Op)>> {
    let opening = Just(vec![(0i64, Op::Open(0, true)), (0, Op::Open(1, false))]);
    (opening, prop::collection::vec((jump(), op()), 1..40)).prop_map(|(mut first, rest)| {
        first.extend(rest);
        first
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn i6_reconciliation_identity_holds_for_any_range(
        steps in steps(),
        cut_a in 0.0f64..1.0,
        cut_b in 0.0f64..1.0,
    ) {
        let history = run(&steps);
        let span = history.end.seconds() - START_S + 2 * DAY_S;
        let a = START_S - DAY_S + (span as f64 * cut_a) as i64;
        let b = START_S - DAY_S + (span as f64 * cut_b) as i64;
        let (from, to) = (Timestamp(a.min(b)), Timestamp(a.max(b) + 1));
        let report = reconcile(&history.logs, from, to).unwrap();
        prop_assert!(report.identity_ok, "{report:#?}");
        for account in &report.accounts {
            // The ends are the booked states at `from` and `to`, independently folded.
            let log = &history.logs[&account.account];
            for (end, instant) in [(&account.figures.opening, from), (&account.figures.closing, to)] {
                let booked = booked_before(&account.account, log, instant);
                let state = AccountState::replay(&account.account, booked.iter().map(|l| &l.event));
                prop_assert_eq!(end.balances, Balances::of(&state));
                prop_assert!(state.conservation_holds());
            }
            prop_assert!(!account.figures.closing.deferred_cny.is_sign_negative());
        }
        // Over everything, granted and consumed are the state's own totals.
        let all = reconcile(&history.logs, Timestamp(START_S), history.end.plus_seconds(1)).unwrap();
        for account in &all.accounts {
            let log = &history.logs[&account.account];
            let booked = booked_before(&account.account, log, history.end.plus_seconds(1));
            let state = AccountState::replay(&account.account, booked.iter().map(|l| &l.event));
            prop_assert_eq!(account.figures.granted, state.totals.granted);
            prop_assert_eq!(account.figures.consumed, state.totals.metered);
            prop_assert_eq!(account.figures.expired, state.totals.expired);
            prop_assert_eq!(account.figures.forfeited, state.totals.forfeited);
        }
        let days: ledger::Dcu = report.days.iter().map(|d| d.granted - d.consumed - d.expired - d.forfeited).sum();
        prop_assert_eq!(report.total.opening.balances.balance + days, report.total.closing.balances.balance);
    }

    #[test]
    fn i6_statement_lines_sum_to_the_balance_change(
        steps in steps(),
        cut in 0.0f64..1.0,
    ) {
        let history = run(&steps);
        let span = history.end.seconds() - START_S + DAY_S;
        let from = Timestamp(START_S + (span as f64 * cut) as i64);
        for (id, log) in &history.logs {
            for from in [None, Some(from)] {
                let statement = statement(id, log, from, history.end.plus_seconds(DAY_S));
                prop_assert!(statement.consistent);
                let sum: ledger::Dcu = statement.lines.iter().map(|line| line.amount).sum();
                prop_assert_eq!(statement.opening.balance + sum, statement.closing.balance);
                for pair in statement.lines.windows(2) {
                    prop_assert_eq!(pair[0].balance_after, pair[1].balance_before);
                }
                for line in &statement.lines {
                    prop_assert_eq!(line.amount, line.active + line.inactive - line.arrears);
                }
            }
        }
    }

    #[test]
    fn i6_as_of_equals_the_answer_given_at_that_instant(steps in steps()) {
        let history = run(&steps);
        for (id, answers) in &history.answers {
            let log = &history.logs[id];
            for (at, answer) in answers {
                let state = state_as_of(id, log, *at);
                prop_assert_eq!(&views::balance(&state, *at), answer, "{} at {}", id, at);
                // The statement as of that instant closes at the same booked balance.
                let statement = statement(id, log, None, at.plus_seconds(1));
                let live = due::live(&state, *at);
                let unbilled: ledger::Dcu = state
                    .running
                    .values()
                    .map(|lease| lease.pending_cost(*at))
                    .sum();
                prop_assert_eq!(
                    statement.closing.balance,
                    live.active_total() + live.inactive_total() - live.arrears + unbilled
                );
            }
        }
    }
}
