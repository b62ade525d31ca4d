//! Property tests of SPEC §10 (I1, I2, I3, I5, I6) and a fuzz test of the scenario parser
//! (SPEC §11).
//!
//! The pure-core tests drive `due` + `decide` + `evolve` exactly as `Engine::execute` does
//! without a pool (everything due in every account first, then the command's account's due
//! events and the command's events), with the engine's cross-account routing of lease,
//! order and record ids, over random command sequences for 2–3 accounts
//! with random time jumps that deliberately land on and around due instants (period ends,
//! carry-over windows, lease TTLs, exhaustion). Each checker returns `Result` so that the
//! `checkers_catch_*` tests can show it fails on a corrupted trace (no vacuous property).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ledger::account::AccountState;
use ledger::amount::lease_cost;
use ledger::clock::{Timestamp, DAY_S, PERIOD_S};
use ledger::decide::{self, Command, Context, ErrorCode, LeaseRequest, Refusal};
use ledger::due;
use ledger::event::{Event, EventBody, JobKind, LeaseEnd};
use ledger::log::sqlite::SqliteLog;
use ledger::Dcu;
use projections::views;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use scheduler::{Engine, EngineError, Target};

// ---------------------------------------------------------------------------------------
// Commands and their generator
// ---------------------------------------------------------------------------------------

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
const PLANS: [&str; 5] = ["trial", "basic", "advanced", "extension", "platinum"];
const MODELS: [&str; 3] = ["dc100-40g", "dc100-80g", "h100"];
const KINDS: [JobKind; 4] = [
    JobKind::GpuRun,
    JobKind::GpuDebug,
    JobKind::RunShell,
    JobKind::RunTask,
];
/// 2025-04-01T00:00:00+08:00.
const START_S: i64 = 1_743_436_800;

/// How far the clock moves before a command.
#[derive(Debug, Clone)]
enum Jump {
    Stay,
    Seconds(i64),
    /// To the next due instant of an account (period end, window end, TTL, exhaustion,
    /// reclaim), plus an offset of -1, 0 or +1 s: lands exactly on the boundaries.
    ToDue {
        account: usize,
        offset: i64,
    },
}

/// A lease id: a fixed one, or (resolved when the command runs) one of the running leases.
#[derive(Debug, Clone)]
enum LeaseRef {
    Id(u8),
    Running(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        account: usize,
        edu: bool,
    },
    Buy {
        account: usize,
        plan: usize,
        order: u8,
    },
    Login {
        account: usize,
    },
    Storage {
        account: usize,
        gb: u64,
    },
    Meter {
        account: usize,
        model: usize,
        cards: u32,
        seconds: u64,
        record: u8,
    },
    Lease {
        account: usize,
        lease: u8,
        kind: usize,
        model: usize,
        cards: u32,
        workers: u32,
    },
    Heartbeat {
        lease: LeaseRef,
    },
    Release {
        lease: LeaseRef,
    },
    Ban {
        account: usize,
    },
    /// A runner's heartbeat round: one heartbeat per running lease, at the same instant.
    HeartbeatAll,
}

#[derive(Debug, Clone)]
struct Step {
    jump: Jump,
    op: Op,
    /// I5: apply the same command again at the same instant.
    repeat: bool,
}

#[derive(Debug, Clone)]
struct Story {
    accounts: usize,
    /// M6: the lease TTL (0 turns expiry off, so leases run into exhaustion and period ends).
    ttl_s: u32,
    steps: Vec<Step>,
    /// Where I3 probes `as_of` instants (indices into the candidate instants).
    probes: Vec<u16>,
}

fn jump() -> impl Strategy<Value = Jump> {
    prop_oneof![
        6 => Just(Jump::Stay),
        24 => (1i64..=100).prop_map(Jump::Seconds),
        6 => (100i64..=6 * 3600).prop_map(Jump::Seconds),
        1 => (DAY_S..=20 * DAY_S).prop_map(Jump::Seconds),
        1 => (PERIOD_S - DAY_S..=PERIOD_S + DAY_S).prop_map(Jump::Seconds),
        3 => (0usize..3, -1i64..=1).prop_map(|(account, offset)| Jump::ToDue { account, offset }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0usize..3;
    let lease_ref = || {
        prop_oneof![
            3 => (0usize..8).prop_map(LeaseRef::Running),
            1 => (0u8..24).prop_map(LeaseRef::Id),
        ]
    };
    prop_oneof![
        6 => (account.clone(), any::<bool>()).prop_map(|(account, edu)| Op::Open { account, edu }),
        18 => (account.clone(), 0usize..PLANS.len(), 0u8..40)
            .prop_map(|(account, plan, order)| Op::Buy { account, plan, order }),
        3 => account.clone().prop_map(|account| Op::Login { account }),
        3 => (account.clone(), prop_oneof![6 => 0u64..=100, 1 => 101u64..=200])
            .prop_map(|(account, gb)| Op::Storage { account, gb }),
        6 => (
            account.clone(),
            prop_oneof![8 => 0usize..2, 1 => Just(2usize)],
            0u32..=3,
            prop_oneof![
                6 => prop::sample::select(vec![0u64, 1, 59, 600, 3600]),
                1 => prop::sample::select(vec![7200u64, 20_000, 100_000, 366 * 86_400 + 1]),
            ],
            0u8..12,
        )
            .prop_map(|(account, model, cards, seconds, record)| Op::Meter {
                account,
                model,
                cards,
                seconds,
                record,
            }),
        20 => (
            account.clone(),
            0u8..24,
            0usize..KINDS.len(),
            prop_oneof![16 => 0usize..2, 1 => Just(2usize)],
            prop_oneof![1 => Just(0u32), 16 => 1u32..=2, 2 => 3u32..=5],
            prop_oneof![16 => Just(1u32), 1 => Just(0u32), 3 => 2u32..=3],
        )
            .prop_map(|(account, lease, kind, model, cards, workers)| Op::Lease {
                account,
                lease,
                // Mostly well-formed: several workers are for run_task (M1).
                kind: if workers > 1 && kind > 0 { 3 } else { kind },
                model,
                cards,
                workers,
            }),
        30 => lease_ref().prop_map(|lease| Op::Heartbeat { lease }),
        5 => lease_ref().prop_map(|lease| Op::Release { lease }),
        1 => account.prop_map(|account| Op::Ban { account }),
        15 => Just(Op::HeartbeatAll),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (jump(), op(), prop::bool::weighted(0.3)).prop_map(|(jump, op, repeat)| Step {
        jump,
        op,
        repeat,
    })
}

/// Setup steps that open every account and buy it a plan, so that most stories get going.
fn setup(accounts: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for account in 0..accounts {
        steps.push(Step {
            jump: Jump::Stay,
            op: Op::Open {
                account,
                edu: account == 1,
            },
            repeat: false,
        });
        steps.push(Step {
            jump: Jump::Seconds(1),
            op: Op::Buy {
                account,
                plan: account % 3,
                order: 100 + account as u8,
            },
            repeat: false,
        });
    }
    steps
}

fn story(max_steps: usize) -> impl Strategy<Value = Story> {
    (
        2usize..=3,
        prop::sample::select(vec![90u32, 90, 30, 0]),
        prop::bool::weighted(0.75),
        prop::collection::vec(step(), 1..=max_steps),
        prop::collection::vec(any::<u16>(), 24),
    )
        .prop_map(|(accounts, ttl_s, with_setup, random, probes)| {
            let mut steps = if with_setup {
                setup(accounts)
            } else {
                Vec::new()
            };
            steps.extend(random);
            Story {
                accounts,
                ttl_s,
                steps,
                probes,
            }
        })
}

/// The commands of an op, addressed as the engine addresses them; `running` lists the ids of
/// the running leases of every account (to resolve `LeaseRef::Running`).
fn commands(op: &Op, accounts: usize, running: &[String]) -> Vec<(Target, Command)> {
    if let Op::HeartbeatAll = op {
        return running
            .iter()
            .map(|lease| {
                let target = Target::Lease(lease.clone());
                (
                    target,
                    Command::Heartbeat {
                        lease: lease.clone(),
                    },
                )
            })
            .collect();
    }
    vec![command(op, accounts, running)]
}

fn command(op: &Op, accounts: usize, running: &[String]) -> (Target, Command) {
    let lease_id = |lease: &LeaseRef| match lease {
        LeaseRef::Running(index) if !running.is_empty() => running[index % running.len()].clone(),
        LeaseRef::Running(index) => format!("l{index}"),
        LeaseRef::Id(id) => format!("l{id}"),
    };
    let name = |account: usize| Target::Account(ACCOUNTS[account % accounts].to_string());
    match op {
        Op::Open { account, edu } => (name(*account), Command::Open { edu: *edu }),
        Op::Buy {
            account,
            plan,
            order,
        } => (
            name(*account),
            Command::Buy {
                order: format!("o{order}"),
                plan: PLANS[*plan].into(),
                price_cny: None,
                price_reason: None,
            },
        ),
        Op::Login { account } => (name(*account), Command::Login),
        Op::Storage { account, gb } => (name(*account), Command::Storage { gb: *gb }),
        Op::Meter {
            account,
            model,
            cards,
            seconds,
            record,
        } => (
            name(*account),
            Command::RecordUsage {
                record: format!("r{record}"),
                model: MODELS[*model].into(),
                cards: *cards,
                seconds: *seconds,
                started_at: None,
            },
        ),
        Op::Lease {
            account,
            lease,
            kind,
            model,
            cards,
            workers,
        } => (
            name(*account),
            Command::RequestLease(LeaseRequest {
                lease: format!("l{lease}"),
                kind: KINDS[*kind],
                model: MODELS[*model].into(),
                cards_per_worker: *cards,
                workers: *workers,
            }),
        ),
        Op::Heartbeat { lease } => (
            Target::Lease(lease_id(lease)),
            Command::Heartbeat {
                lease: lease_id(lease),
            },
        ),
        Op::Release { lease } => (
            Target::Lease(lease_id(lease)),
            Command::Release {
                lease: lease_id(lease),
            },
        ),
        Op::Ban { account } => (
            name(*account),
            Command::Ban {
                reason: "mining".into(),
            },
        ),
        Op::HeartbeatAll => (
            Target::Lease("l0".into()),
            Command::Heartbeat { lease: "l0".into() },
        ),
    }
}

// ---------------------------------------------------------------------------------------
// The pure-core world: `Engine::try_execute` without the log
// ---------------------------------------------------------------------------------------

/// How many events one command appended: the due events first, then its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Appended {
    due: usize,
    decided: usize,
}

/// What a command answered, comparable across repeats (SPEC §11's answer, as the engine
/// builds it from the state).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Refused(ErrorCode),
    Order(Option<views::OrderView>),
    Lease(Option<views::LeaseView>),
    Usage(Option<Dcu>),
    Done,
}

#[derive(Default)]
struct World {
    context: Context,
    states: BTreeMap<String, AccountState>,
    /// Every account's events, in append order.
    logs: BTreeMap<String, Vec<Event>>,
    lease_owner: HashMap<String, String>,
    order_owner: HashMap<String, String>,
    record_owner: HashMap<String, String>,
    /// After each command: its instant and every account's state.
    snapshots: Vec<(Timestamp, BTreeMap<String, AccountState>)>,
}

impl World {
    fn new(lease_ttl_s: u32) -> World {
        World {
            context: Context {
                lease_ttl_s,
                ..Context::default()
            },
            ..World::default()
        }
    }

    fn route(&self, target: &Target, command: &Command) -> Result<String, Refusal> {
        let account = match target {
            Target::Account(account) => account.clone(),
            Target::Lease(lease) => match self.lease_owner.get(lease) {
                Some(owner) => owner.clone(),
                None => return Err(Refusal::new(ErrorCode::UnknownLease, "no lease")),
            },
        };
        let foreign = |owners: &HashMap<String, String>, id: &str| {
            owners.get(id).is_some_and(|owner| owner != &account)
        };
        match command {
            Command::Buy { order, .. } if foreign(&self.order_owner, order) => {
                Err(Refusal::invalid("foreign order"))
            }
            Command::RecordUsage { record, .. } if foreign(&self.record_owner, record) => {
                Err(Refusal::invalid("foreign record"))
            }
            Command::RequestLease(request) if foreign(&self.lease_owner, &request.lease) => {
                Err(Refusal::invalid("foreign lease"))
            }
            _ => Ok(account),
        }
    }

    /// Runs a command at `now`; returns the answer and how many events were appended.
    fn execute(
        &mut self,
        target: &Target,
        command: &Command,
        now: Timestamp,
    ) -> (Answer, Appended) {
        let ticked = self.tick(now);
        let none = Appended {
            due: ticked,
            decided: 0,
        };
        let account = match self.route(target, command) {
            Ok(account) => account,
            Err(refusal) => return (Answer::Refused(refusal.code), none),
        };
        let mut next = self
            .states
            .get(&account)
            .cloned()
            .unwrap_or_else(|| AccountState::new(&account));
        let mut events = due::due(&next, now);
        for event in &events {
            next.evolve(event);
        }
        let mut appended = Appended {
            due: ticked + events.len(),
            decided: 0,
        };
        let decided = decide::decide(&next, &self.context, command, now);
        if let Ok(decided) = &decided {
            for event in decided {
                next.evolve(event);
            }
            appended.decided = decided.len();
            events.extend(decided.iter().cloned());
        }
        if !events.is_empty() {
            for event in &events {
                let (owners, id) = match &event.body {
                    EventBody::LeaseGranted { lease, .. } => (&mut self.lease_owner, lease),
                    EventBody::PlanStarted { order, .. }
                    | EventBody::PlanUpgraded { order, .. }
                    | EventBody::PlanQueued { order, .. }
                    | EventBody::ExtensionGranted { order, .. } => (&mut self.order_owner, order),
                    EventBody::UsageRecorded { record, .. } => (&mut self.record_owner, record),
                    _ => continue,
                };
                owners.insert(id.clone(), account.clone());
            }
            self.logs.entry(account.clone()).or_default().extend(events);
            self.states.insert(account.clone(), next);
        }
        let answer = match decided {
            Err(refusal) => Answer::Refused(refusal.code),
            Ok(_) => self.answer(&account, command, now),
        };
        (answer, appended)
    }

    fn answer(&self, account: &str, command: &Command, now: Timestamp) -> Answer {
        let Some(state) = self.states.get(account) else {
            return Answer::Done;
        };
        match command {
            Command::Buy { order, .. } => Answer::Order(views::order(state, order)),
            Command::RecordUsage { record, .. } => {
                Answer::Usage(state.records.get(record).map(|usage| usage.cost))
            }
            Command::RequestLease(LeaseRequest { lease, .. })
            | Command::Heartbeat { lease }
            | Command::Release { lease } => Answer::Lease(views::lease(state, lease, now)),
            _ => Answer::Done,
        }
    }

    /// SPEC §9, as the engine does before every command: everything due up to `now` in
    /// every account is appended (the engine goes deadline by deadline across accounts; per
    /// account that is the same events as one `due` call). Returns how many were appended.
    fn tick(&mut self, now: Timestamp) -> usize {
        let mut appended = 0;
        for (account, state) in &mut self.states {
            let events = due::due(state, now);
            for event in &events {
                state.evolve(event);
            }
            appended += events.len();
            self.logs.entry(account.clone()).or_default().extend(events);
        }
        appended
    }

    fn running(&self) -> Vec<String> {
        self.states
            .values()
            .flat_map(|state| state.running.keys().cloned())
            .collect()
    }

    fn snapshot(&mut self, now: Timestamp) {
        self.snapshots.push((now, self.states.clone()));
    }
}

/// A repeat of a command at the same instant that had an effect (I5), if any.
#[derive(Debug)]
#[allow(dead_code)] // read through `Debug` in the failure message
struct RepeatFailure {
    command: Command,
    now: Timestamp,
    first: Answer,
    second: Answer,
    events: Appended,
}

struct Run {
    world: World,
    now: Timestamp,
    repeat_failures: Vec<RepeatFailure>,
    /// Repeats whose first application had an effect (for coverage).
    effective_repeats: usize,
}

/// I5 is about commands with an identity (SPEC §4, M10, M11, A3): orders, usage records,
/// leases, and the permanent ban. A login or a storage report is a new fact each time.
fn repeatable(command: &Command) -> bool {
    !matches!(
        command,
        Command::Open { .. } | Command::Login | Command::Storage { .. }
    )
}

fn resolve(jump: &Jump, world: &World, accounts: usize, now: Timestamp) -> Timestamp {
    match jump {
        Jump::Stay => now,
        Jump::Seconds(seconds) => now.plus_seconds(*seconds),
        Jump::ToDue { account, offset } => world
            .states
            .get(ACCOUNTS[account % accounts])
            .and_then(due::next_due_at)
            .map_or(now, |instant| instant.plus_seconds(*offset).max(now)),
    }
}

/// Runs a story through the pure core, checking `check` after every command.
fn run_story(
    story: &Story,
    mut check: impl FnMut(&World, Timestamp) -> Result<(), String>,
) -> Result<Run, String> {
    let mut run = Run {
        world: World::new(story.ttl_s),
        now: Timestamp(START_S),
        repeat_failures: Vec::new(),
        effective_repeats: 0,
    };
    for (index, step) in story.steps.iter().enumerate() {
        run.now = resolve(&step.jump, &run.world, story.accounts, run.now);
        for (target, command) in commands(&step.op, story.accounts, &run.world.running()) {
            let (first, appended) = run.world.execute(&target, &command, run.now);
            if step.repeat && repeatable(&command) {
                // Due events at the same instant may still appear on the repeat: a command's
                // own charge can make the account exhausted at `now` (M7), and the engine
                // appends that revocation before the next command (SPEC §9). Only the
                // command's own events count for I5.
                let (second, events) = run.world.execute(&target, &command, run.now);
                if appended.decided > 0 && !matches!(first, Answer::Refused(_)) {
                    run.effective_repeats += 1;
                }
                if events.decided > 0 || first != second {
                    run.repeat_failures.push(RepeatFailure {
                        command: command.clone(),
                        now: run.now,
                        first,
                        second,
                        events,
                    });
                }
            }
        }
        run.world.snapshot(run.now);
        check(&run.world, run.now).map_err(|message| {
            format!(
                "after step {index} ({:?}) at {}: {message}",
                step.op, run.now
            )
        })?;
    }
    Ok(run)
}

// ---------------------------------------------------------------------------------------
// Checkers
// ---------------------------------------------------------------------------------------

/// What the events of one account say, summed independently of `evolve`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sums {
    granted: Dcu,
    spent: Dcu,
    expired: Dcu,
    forfeited: Dcu,
    metered: Dcu,
    arrears: Dcu,
}

fn sums_of(events: &[Event]) -> Result<Sums, String> {
    let mut sums = Sums::default();
    let mut queued: HashMap<&str, Dcu> = HashMap::new();
    let charge = |sums: &mut Sums, charge: &ledger::event::Charge| -> Result<(), String> {
        let debited: Dcu = charge.debits.iter().map(|debit| debit.amount).sum();
        if debited + charge.arrears_added != charge.amount
            || charge.amount.is_negative()
            || charge.arrears_added.is_negative()
            || charge
                .debits
                .iter()
                .any(|debit| !debit.amount.is_positive())
        {
            return Err(format!("charge does not add up: {charge:?}"));
        }
        sums.metered += charge.amount;
        sums.spent += debited;
        sums.arrears += charge.arrears_added;
        Ok(())
    };
    let pay = |sums: &mut Sums, paid: Dcu| {
        sums.spent += paid;
        sums.arrears -= paid;
    };
    for event in events {
        match &event.body {
            EventBody::PlanStarted {
                terms,
                arrears_paid,
                ..
            }
            | EventBody::PlanUpgraded {
                terms,
                arrears_paid,
                ..
            } => {
                sums.granted += terms.grant_dcu;
                pay(&mut sums, *arrears_paid);
            }
            EventBody::PlanQueued { order, terms, .. } => {
                queued.insert(order, terms.grant_dcu);
            }
            EventBody::QueuedPlanStarted {
                order,
                arrears_paid,
                ..
            } => {
                sums.granted += queued
                    .get(order.as_str())
                    .copied()
                    .ok_or_else(|| format!("queued plan {order} started but never queued"))?;
                pay(&mut sums, *arrears_paid);
            }
            EventBody::ExtensionGranted {
                grant_dcu,
                arrears_paid,
                ..
            } => {
                sums.granted += *grant_dcu;
                pay(&mut sums, *arrears_paid);
            }
            EventBody::CarryOverActivated { arrears_paid, .. } => pay(&mut sums, *arrears_paid),
            EventBody::BucketExpired { amount, .. } => sums.expired += *amount,
            EventBody::Banned { forfeited, .. } => {
                sums.forfeited += forfeited.iter().map(|item| item.amount).sum::<Dcu>();
            }
            EventBody::UsageRecorded { charge: c, .. }
            | EventBody::LeaseMetered { charge: c, .. } => {
                charge(&mut sums, c)?;
            }
            _ => {}
        }
        if sums.arrears.is_negative() {
            return Err(format!("arrears below zero after {event:?}"));
        }
    }
    Ok(sums)
}

/// I1 for one account: from its events (independently of `evolve`) and from its state.
fn check_conservation(state: &AccountState, events: &[Event]) -> Result<Sums, String> {
    let sums = sums_of(events)?;
    let remaining = state.active_total() + state.inactive_total();
    if sums.granted != sums.spent + sums.expired + sums.forfeited + remaining {
        return Err(format!(
            "I1 {}: granted {} != spent {} + expired {} + forfeited {} + remaining {}",
            state.id, sums.granted, sums.spent, sums.expired, sums.forfeited, remaining
        ));
    }
    if sums.spent != sums.metered - sums.arrears {
        return Err(format!(
            "I1 {}: spent {} != metered {} - arrears {}",
            state.id, sums.spent, sums.metered, sums.arrears
        ));
    }
    let totals = &state.totals;
    let from_state = Sums {
        granted: totals.granted,
        spent: totals.spent,
        expired: totals.expired,
        forfeited: totals.forfeited,
        metered: totals.metered,
        arrears: state.arrears,
    };
    if from_state != sums {
        return Err(format!(
            "I1 {}: state totals {from_state:?} != event sums {sums:?}",
            state.id
        ));
    }
    if !state.conservation_holds() {
        return Err(format!("I1 {}: conservation_holds() is false", state.id));
    }
    Ok(sums)
}

/// I1 per account and summed over accounts.
fn check_i1(world: &World) -> Result<(), String> {
    let mut total = Sums::default();
    let mut remaining = Dcu::ZERO;
    for (account, state) in &world.states {
        let events = world.logs.get(account).map_or(&[][..], Vec::as_slice);
        let sums = check_conservation(state, events)?;
        total.granted += sums.granted;
        total.spent += sums.spent;
        total.expired += sums.expired;
        total.forfeited += sums.forfeited;
        total.metered += sums.metered;
        total.arrears += sums.arrears;
        remaining += state.active_total() + state.inactive_total();
    }
    if total.granted != total.spent + total.expired + total.forfeited + remaining
        || total.spent != total.metered - total.arrears
    {
        return Err(format!("I1 in total: {total:?}, remaining {remaining}"));
    }
    Ok(())
}

/// I2: no bucket below zero or above its grant (and no negative arrears).
fn check_i2(state: &AccountState) -> Result<(), String> {
    for bucket in &state.buckets {
        if bucket.remaining.is_negative() || bucket.remaining > bucket.granted {
            return Err(format!(
                "I2 {}: bucket {} remaining {} granted {}",
                state.id, bucket.id, bucket.remaining, bucket.granted
            ));
        }
    }
    if state.arrears.is_negative() {
        return Err(format!("{}: arrears {} < 0", state.id, state.arrears));
    }
    Ok(())
}

fn check_d2(state: &AccountState) -> Result<(), String> {
    if state.arrears.is_positive() && state.active_total().is_positive() {
        return Err(format!(
            "D2 {}: arrears {} while active credit {}",
            state.id,
            state.arrears,
            state.active_total()
        ));
    }
    Ok(())
}

fn same_state(left: &AccountState, right: &AccountState) -> Result<(), String> {
    let left_json = serde_json::to_string(left).map_err(|error| error.to_string())?;
    let right_json = serde_json::to_string(right).map_err(|error| error.to_string())?;
    if left != right || left_json != right_json {
        return Err(format!("states differ:\n  {left_json}\n  {right_json}"));
    }
    Ok(())
}

/// I3 (replay): folding an account's log from the empty state gives its live state.
fn check_replay(world: &World) -> Result<(), String> {
    for (account, state) in &world.states {
        let replayed = AccountState::replay(account, &world.logs[account]);
        same_state(&replayed, state)
            .map_err(|message| format!("I3 replay {account}: {message}"))?;
    }
    Ok(())
}

/// I3 (as of): for an instant `t`, let `S_t` be the state the live run had right after the
/// last command at or before `t` (the empty state if none). Then
/// `advance(replay(events with at <= t), t) == advance(S_t, t)`: the log cut at `t` (which may
/// hold due events that a later command appended for instants <= t) means the same as the
/// live state at `t`.
fn check_replay_as_of(world: &World, t: Timestamp) -> Result<(), String> {
    let live_at = world
        .snapshots
        .iter()
        .rev()
        .find(|(now, _)| *now <= t)
        .map(|(_, states)| states);
    for (account, events) in &world.logs {
        let cut: Vec<&Event> = events.iter().filter(|event| event.at <= t).collect();
        let replayed = due::advance(&AccountState::replay(account, cut), t);
        let empty = AccountState::new(account);
        let live = live_at
            .and_then(|states| states.get(account))
            .unwrap_or(&empty);
        same_state(&replayed, &due::advance(live, t))
            .map_err(|message| format!("I3 as of {t} for {account}: {message}"))?;
        // The queries agree too (D4).
        if views::balance(&replayed, t) != views::balance(live, t) {
            return Err(format!("I3 as of {t} for {account}: balances differ"));
        }
    }
    Ok(())
}

/// Instants worth probing: every command instant and event instant, one second either side,
/// and a few far beyond the end (to cross the last period end and carry-over window).
fn probe_instants(world: &World, probes: &[u16]) -> Vec<Timestamp> {
    let mut candidates = BTreeSet::new();
    for (now, _) in &world.snapshots {
        candidates.insert(*now);
        candidates.insert(now.plus_seconds(1));
    }
    for event in world.logs.values().flatten() {
        candidates.insert(event.at);
        candidates.insert(event.at.plus_seconds(-1));
        candidates.insert(event.at.plus_seconds(1));
    }
    let last = world
        .snapshots
        .last()
        .map_or(Timestamp(START_S), |(now, _)| *now);
    for days in [1, 15, 29, 30, 31, 45, 59, 60, 61, 75, 90, 120] {
        candidates.insert(last.plus_seconds(days * DAY_S));
    }
    let candidates: Vec<Timestamp> = candidates.into_iter().collect();
    let mut chosen: Vec<Timestamp> = probes
        .iter()
        .map(|probe| candidates[usize::from(*probe) % candidates.len()])
        .collect();
    chosen.extend(candidates.iter().rev().take(12));
    chosen.sort();
    chosen.dedup();
    chosen
}

/// I6: for each lease, metering starts at its grant, is monotone, stops at its end, and the
/// total charged is exactly M5's cost of the seconds billed and never more than the cost of
/// the time the cards were held.
fn check_i6(world: &World, now: Timestamp) -> Result<(), String> {
    struct Held {
        granted_at: Timestamp,
        rate: Dcu,
        cards: u32,
        ended_at: Option<Timestamp>,
        seconds_billed: u64,
        charged: Dcu,
        ttl_s: u32,
        last_heartbeat_at: Timestamp,
        /// Meterings that were not heartbeats: (account, instant).
        loose: Vec<(String, Timestamp)>,
    }
    let mut leases: BTreeMap<String, Held> = BTreeMap::new();
    let mut period_ends: BTreeSet<(String, Timestamp)> = BTreeSet::new();
    for (account, events) in &world.logs {
        for event in events {
            match &event.body {
                // §9: running leases are metered before a period ends and before credit
                // expires (an activated carry-over can expire inside a period, C4).
                EventBody::PeriodEnded { .. } | EventBody::BucketExpired { .. } => {
                    period_ends.insert((account.clone(), event.at));
                }
                EventBody::LeaseGranted { lease, terms, .. } => {
                    if leases.contains_key(lease) {
                        return Err(format!("I6: lease {lease} granted twice"));
                    }
                    leases.insert(
                        lease.clone(),
                        Held {
                            granted_at: event.at,
                            rate: terms.rate_dcu_per_hour,
                            cards: terms.cards,
                            ended_at: None,
                            seconds_billed: 0,
                            charged: Dcu::ZERO,
                            ttl_s: terms.ttl_s,
                            last_heartbeat_at: event.at,
                            loose: Vec::new(),
                        },
                    );
                }
                EventBody::LeaseMetered {
                    lease,
                    seconds_total,
                    charge,
                    heartbeat,
                } => {
                    let held = leases
                        .get_mut(lease)
                        .ok_or_else(|| format!("I6: {lease} metered before its grant"))?;
                    if let Some(ended_at) = held.ended_at {
                        return Err(format!(
                            "I6: {lease} metered at {} after it ended at {ended_at}",
                            event.at
                        ));
                    }
                    let held_s = event.at.seconds_since(held.granted_at);
                    if event.at < held.granted_at || *seconds_total != held_s {
                        return Err(format!(
                            "I6: {lease} metered {seconds_total} s at {} but held {held_s} s",
                            event.at
                        ));
                    }
                    if *seconds_total < held.seconds_billed {
                        return Err(format!("I6: {lease} metering went backwards"));
                    }
                    held.seconds_billed = *seconds_total;
                    held.charged += charge.amount;
                    if *heartbeat {
                        held.last_heartbeat_at = event.at;
                    } else {
                        held.loose.push((account.clone(), event.at));
                    }
                }
                EventBody::LeaseEnded { lease, end, .. } => {
                    let held = leases
                        .get_mut(lease)
                        .ok_or_else(|| format!("I6: {lease} ended but never granted"))?;
                    if held.ended_at.is_some() {
                        return Err(format!("I6: {lease} ended twice"));
                    }
                    // M6: it expires exactly one TTL after its grant or last heartbeat.
                    let expiry = held.last_heartbeat_at.plus_seconds(held.ttl_s.into());
                    if *end == LeaseEnd::Expired && (held.ttl_s == 0 || event.at != expiry) {
                        return Err(format!(
                            "M6: {lease} expired at {} but its TTL ran out at {expiry}",
                            event.at
                        ));
                    }
                    held.ended_at = Some(event.at);
                }
                _ => {}
            }
        }
        // The state's view of each lease agrees with its events.
        let state = &world.states[account];
        for (lease, running) in &state.running {
            let held = leases
                .get(lease)
                .ok_or_else(|| format!("I6: {lease} unknown"))?;
            if running.charged != held.charged {
                return Err(format!(
                    "I6: {lease} state charged {} != events",
                    running.charged
                ));
            }
        }
        for (lease, ended) in &state.ended {
            let held = leases
                .get(lease)
                .ok_or_else(|| format!("I6: {lease} unknown"))?;
            if ended.charged != held.charged || Some(ended.ended_at) != held.ended_at {
                return Err(format!("I6: ended {lease} disagrees with its events"));
            }
        }
    }
    for (lease, held) in &leases {
        // M6, M8: besides heartbeats, a lease is metered only when it ends (release, ban,
        // exhaustion), at a period end or when credit expires; so an expired lease is billed
        // to its last heartbeat unless a period ended or credit expired in between.
        for (account, at) in &held.loose {
            if held.ended_at != Some(*at) && !period_ends.contains(&(account.clone(), *at)) {
                return Err(format!(
                    "M6: {lease} metered at {at} without a heartbeat or an end"
                ));
            }
        }
        let end = held.ended_at.unwrap_or(now);
        let held_s = end.seconds_since(held.granted_at);
        if held.seconds_billed > held_s {
            return Err(format!(
                "I6: {lease} billed {} s but held {held_s} s",
                held.seconds_billed
            ));
        }
        let exact = lease_cost(held.rate, held.cards, held.seconds_billed);
        let ceiling = lease_cost(held.rate, held.cards, held_s);
        if held.charged != exact || held.charged > ceiling {
            return Err(format!(
                "I6: {lease} charged {} for {} s billed (M5: {exact}), held {held_s} s (max {ceiling})",
                held.charged, held.seconds_billed
            ));
        }
    }
    Ok(())
}

/// M11: each usage record costs exactly M5 of its seconds.
fn check_usage_costs(world: &World) -> Result<(), String> {
    for event in world.logs.values().flatten() {
        if let EventBody::UsageRecorded {
            model,
            cards,
            seconds,
            charge,
            ..
        } = &event.body
        {
            let rate = world
                .context
                .catalog
                .model(model)
                .map(|gpu| gpu.rate_dcu_per_hour)
                .ok_or_else(|| format!("usage of unknown model {model}"))?;
            if charge.amount != lease_cost(rate, *cards, *seconds) {
                return Err(format!("M11: usage {event:?} not charged by M5"));
            }
        }
    }
    Ok(())
}

/// The number of cases: `n`, or `n × DCU_PROPTEST_SCALE` for a longer local hunt.
fn cases(n: u32) -> u32 {
    std::env::var("DCU_PROPTEST_SCALE")
        .ok()
        .and_then(|scale| scale.parse::<u32>().ok())
        .map_or(n, |scale| n.saturating_mul(scale.max(1)))
}

fn ok(result: Result<(), String>) -> Result<(), TestCaseError> {
    result.map_err(TestCaseError::fail)
}

// ---------------------------------------------------------------------------------------
// Properties of the pure core
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    #[test]
    fn r_i1_conservation(story in story(60)) {
        ok(run_story(&story, |world, _| check_i1(world)).map(drop))?;
    }

    #[test]
    fn r_d2_arrears_only_while_no_active_credit(story in story(60)) {
        // D2: usage takes every active bucket before it becomes arrears, and new active
        // credit pays arrears first; so arrears and active credit never coexist.
        ok(run_story(&story, |world, now| {
            world.states.values().try_for_each(|state| {
                check_d2(state)?;
                check_d2(&due::advance(state, now.plus_seconds(3600)))
            })
        })
        .map(drop))?;
    }

    #[test]
    fn r_i2_bucket_never_negative_or_above_grant(story in story(60)) {
        let run = run_story(&story, |world, now| {
            world.states.values().try_for_each(check_i2)?;
            // Also inside every query's in-memory fold (D4).
            world
                .states
                .values()
                .try_for_each(|state| check_i2(&due::live(state, now.plus_seconds(45))))
        });
        ok(run.map(drop))?;
    }

    #[test]
    fn r_i3_replay_equals_live(story in story(60)) {
        let run = run_story(&story, |world, _| check_replay(world)).map_err(TestCaseError::fail)?;
        for t in probe_instants(&run.world, &story.probes) {
            ok(check_replay_as_of(&run.world, t))?;
        }
    }

    #[test]
    fn r_i5_same_command_twice_has_one_effect(story in story(60)) {
        let run = run_story(&story, |_, _| Ok(())).map_err(TestCaseError::fail)?;
        prop_assert!(
            run.repeat_failures.is_empty(),
            "I5: {:#?}",
            run.repeat_failures
        );
    }

    #[test]
    fn r_i6_metering_never_bills_more_than_held_time(story in story(60)) {
        ok(run_story(&story, |world, now| {
            check_i6(world, now)?;
            check_usage_costs(world)
        })
        .map(drop))?;
    }
}

// ---------------------------------------------------------------------------------------
// The engine over SQLite: restart replays to the same state
// ---------------------------------------------------------------------------------------

async fn engine_story(story: Story) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
    let open = |dir: &std::path::Path| SqliteLog::open(dir).map_err(|error| error.to_string());
    let mut world = World::new(story.ttl_s);
    let mut engine = Engine::open(open(dir.path())?, world.context.clone())
        .await
        .map_err(|error| error.to_string())?;
    let mut now = Timestamp(START_S);
    for step in &story.steps {
        now = resolve(&step.jump, &world, story.accounts, now);
        for (target, command) in commands(&step.op, story.accounts, &world.running()) {
            let times = if step.repeat && repeatable(&command) {
                2
            } else {
                1
            };
            let mut answers = Vec::new();
            for _ in 0..times {
                let before = engine.events_appended();
                let outcome = engine.execute(target.clone(), command.clone(), now).await;
                let outcome = match outcome {
                    Ok(outcome) => Ok(outcome),
                    Err(EngineError::Refused(refusal)) => Err(refusal.code),
                    Err(error) => return Err(format!("engine failed: {error}")),
                };
                let appended = engine.events_appended() - before;
                let (_, expected) = world.execute(&target, &command, now);
                if appended != (expected.due + expected.decided) as u64 {
                    return Err(format!(
                        "engine appended {appended} events for {command:?}, the core {expected:?}"
                    ));
                }
                answers.push((outcome, expected));
            }
            // I5 through the engine: the repeat adds no events of its own (only due events
            // may appear, see `run_story`) and answers the same.
            if let [(first, _), (second, appended)] = answers.as_slice() {
                if first != second || appended.decided != 0 {
                    return Err(format!(
                        "I5 engine {command:?} at {now}: {first:?} then {second:?} (+{appended:?})"
                    ));
                }
            }
        }
        // The engine holds exactly the pure core's states.
        for (account, state) in &world.states {
            let held = engine
                .state(account)
                .ok_or_else(|| format!("engine lacks {account}"))?;
            same_state(held, state).map_err(|message| format!("engine vs core: {message}"))?;
        }
    }
    let live: BTreeMap<String, AccountState> = engine
        .account_ids()
        .map(|account| (account.clone(), engine.state(account).cloned().unwrap()))
        .collect();
    let clock = engine.clock();
    engine
        .log()
        .close()
        .await
        .map_err(|error| error.to_string())?;
    drop(engine);
    let reopened = Engine::open(open(dir.path())?, world.context.clone())
        .await
        .map_err(|error| error.to_string())?;
    let ids: BTreeSet<&String> = reopened.account_ids().collect();
    if ids != live.keys().collect() {
        return Err(format!("accounts after restart: {ids:?}"));
    }
    for (account, state) in &live {
        let replayed = reopened
            .state(account)
            .ok_or_else(|| format!("{account} missing after restart"))?;
        same_state(replayed, state)
            .map_err(|message| format!("I3 restart {account}: {message}"))?;
        if reopened.balance(account, clock).ok() != engine_balance(state, clock) {
            return Err(format!("I3 restart {account}: balance differs"));
        }
    }
    reopened
        .log()
        .close()
        .await
        .map_err(|error| error.to_string())?;
    Ok(())
}

fn engine_balance(state: &AccountState, as_of: Timestamp) -> Option<views::BalanceView> {
    state
        .opened
        .then(|| views::balance(state, as_of.max(state.clock)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn r_i3_engine_restart_replays_to_the_same_state(story in story(40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        ok(runtime.block_on(engine_story(story)))?;
    }
}

// ---------------------------------------------------------------------------------------
// The scenario parser never panics on garbage
// ---------------------------------------------------------------------------------------

const KEYS: [&str; 22] = [
    "at",
    "cmd",
    "account",
    "edu",
    "plan",
    "order",
    "gb",
    "reason",
    "model",
    "cards",
    "seconds",
    "record",
    "lease",
    "kind",
    "workers",
    "config",
    "lease_ttl_s",
    "pool",
    "node",
    "price_cny",
    "price_reason",
    "line",
];
const CMDS: [&str; 13] = [
    "open",
    "buy",
    "login",
    "storage",
    "ban",
    "meter",
    "lease",
    "heartbeat",
    "release",
    "balance",
    "quota",
    "lease_status",
    "explode",
];

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(u32::MAX),
            json!(u32::MAX as u64 + 1),
            json!(1e308),
            json!(-0.0),
            json!(366 * 86_400),
            json!(366 * 86_400 + 1),
            json!("2025-04-01T00:00:00Z"),
            json!("2025-05-01T00:00:00+08:00"),
            json!("9989-01-01T00:00:00Z"),
            json!("9999-12-31T23:59:59Z"),
            json!("0000-01-01T00:00:00Z"),
            json!("1970-01-01T00:00:00Z"),
            json!("2025-04-01T00:00:00.999999999Z"),
            json!("trial"),
            json!("extension"),
            json!("dc100-80g"),
            json!("dc100-40g"),
            json!("run_task"),
            json!("gpu_run"),
            json!("alice"),
            json!("l1"),
            json!("o1"),
            json!(""),
            json!(" "),
            json!("a/b"),
            json!("1e30"),
            json!("99999999999.1234567"),
            json!("-5"),
        ]),
        ".{0,40}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(KEYS.to_vec()).prop_map(String::from),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// An object that looks like a scenario line: `at` and `cmd` mostly right, the other keys
/// known or not, their values of any type.
fn line_object() -> impl Strategy<Value = serde_json::Value> {
    let at = prop_oneof![
        4 => (0i64..120 * DAY_S).prop_map(|offset| {
            serde_json::Value::String(Timestamp(START_S + offset).to_rfc3339())
        }),
        1 => json_leaf(),
    ];
    let cmd = prop_oneof![
        5 => prop::sample::select(CMDS.to_vec()).prop_map(|cmd| serde_json::json!(cmd)),
        1 => json_leaf(),
    ];
    let fields = prop::collection::btree_map(
        prop_oneof![
            6 => prop::sample::select(KEYS.to_vec()).prop_map(String::from),
            1 => ".{0,8}",
        ],
        prop_oneof![3 => json_leaf(), 1 => json_value()],
        0..7,
    );
    (
        prop::option::weighted(0.9, at),
        prop::option::weighted(0.9, cmd),
        fields,
    )
        .prop_map(|(at, cmd, fields)| {
            let mut object: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().collect();
            if let Some(at) = at {
                object.insert("at".into(), at);
            }
            if let Some(cmd) = cmd {
                object.insert("cmd".into(), cmd);
            }
            serde_json::Value::Object(object)
        })
}

fn garbage_line() -> impl Strategy<Value = String> {
    let text = |value: serde_json::Value| value.to_string();
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        3 => json_value().prop_map(text),
        8 => line_object().prop_map(text),
        1 => (1usize..3000, any::<bool>()).prop_map(|(depth, object)| {
            if object {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
            } else {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            }
        }),
        1 => (60_000usize..70_000).prop_map(|length| {
            format!(
                "{{\"at\":\"2025-04-01T00:00:00Z\",\"cmd\":\"open\",\"account\":\"{}\"}}",
                "x".repeat(length)
            )
        }),
        1 => "[0-9]{1,400}",
        1 => (json_value(), prop::option::of(0u64..=u64::MAX)).prop_map(|(pool, ttl)| {
            serde_json::json!({"config": {"lease_ttl_s": ttl, "pool": pool}}).to_string()
        }),
    ]
    .prop_map(|line| line.replace(['\n', '\r'], " "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]

    #[test]
    fn scenario_parser_never_panics_on_garbage(
        lines in prop::collection::vec(garbage_line(), 1..40)
    ) {
        let input = lines.join("\n");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let output = runtime
            .block_on(api::scenario::run_to_string(&input))
            .map_err(|error| TestCaseError::fail(format!("run failed: {error:#}")))?;
        let output: Vec<&str> = output.lines().collect();
        prop_assert_eq!(output.len(), input.lines().count());
        for (index, line) in output.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|error| TestCaseError::fail(format!("output {line:?}: {error}")))?;
            prop_assert!(value.is_object(), "output is not an object: {}", line);
            prop_assert_eq!(value.get("line"), Some(&serde_json::json!(index + 1)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checkers can fail, and the generator reaches the interesting states
// ---------------------------------------------------------------------------------------

/// A fixed story: two accounts, plans, leases with heartbeats, usage, a TTL expiry, period
/// ends and carry-over.
fn fixed_world() -> World {
    let story = Story {
        accounts: 2,
        ttl_s: 90,
        steps: {
            let mut steps = setup(2);
            let mut push = |jump, op| {
                steps.push(Step {
                    jump,
                    op,
                    repeat: false,
                })
            };
            let lease = |account, lease, model| Op::Lease {
                account,
                lease,
                kind: 0,
                model,
                cards: 1,
                workers: 1,
            };
            push(Jump::Seconds(5), lease(0, 0, 1));
            push(Jump::Seconds(5), lease(1, 1, 0));
            for _ in 0..3 {
                push(
                    Jump::Seconds(30),
                    Op::Heartbeat {
                        lease: LeaseRef::Id(0),
                    },
                );
                push(
                    Jump::Stay,
                    Op::Heartbeat {
                        lease: LeaseRef::Id(1),
                    },
                );
            }
            push(
                Jump::Seconds(10),
                Op::Meter {
                    account: 0,
                    model: 1,
                    cards: 2,
                    seconds: 3600,
                    record: 0,
                },
            );
            push(
                Jump::Seconds(20),
                Op::Release {
                    lease: LeaseRef::Id(0),
                },
            );
            push(Jump::Seconds(500), Op::Login { account: 1 });
            push(
                Jump::ToDue {
                    account: 0,
                    offset: 0,
                },
                Op::Login { account: 0 },
            );
            push(Jump::Seconds(PERIOD_S), Op::Login { account: 0 });
            steps
        },
        probes: Vec::new(),
    };
    run_story(&story, |_, _| Ok(()))
        .expect("fixed story runs")
        .world
}

fn corrupt_first(world: &mut World, edit: impl FnMut(&mut Event) -> bool) {
    let changed = world.logs.values_mut().flatten().any(edit);
    assert!(changed, "nothing to corrupt");
}

#[test]
fn checkers_pass_on_the_fixed_story() {
    let world = fixed_world();
    let now = world.snapshots.last().expect("steps").0;
    check_i1(&world).expect("I1");
    world.states.values().try_for_each(check_i2).expect("I2");
    check_replay(&world).expect("I3");
    check_i6(&world, now).expect("I6");
    check_usage_costs(&world).expect("M11");
    for t in probe_instants(&world, &[0, 7, 13, 99]) {
        check_replay_as_of(&world, t).expect("I3 as of");
    }
    let types: BTreeSet<&str> = world
        .logs
        .values()
        .flatten()
        .map(|event| event.body.type_name())
        .collect();
    for wanted in ["LeaseMetered", "LeaseEnded", "PeriodEnded", "UsageRecorded"] {
        assert!(
            types.contains(wanted),
            "fixed story lacks {wanted}: {types:?}"
        );
    }
}

#[test]
fn checkers_catch_a_charge_that_does_not_add_up() {
    let mut world = fixed_world();
    corrupt_first(&mut world, |event| match &mut event.body {
        EventBody::LeaseMetered { charge, .. } if !charge.debits.is_empty() => {
            charge.debits[0].amount += Dcu::from_micros(1);
            true
        }
        _ => false,
    });
    assert!(check_i1(&world).is_err());
}

#[test]
fn checkers_catch_totals_that_disagree_with_the_events() {
    let mut world = fixed_world();
    let state = world.states.values_mut().next().expect("an account");
    state.totals.expired += Dcu::from_micros(1);
    assert!(check_i1(&world).is_err());
}

#[test]
fn checkers_catch_a_bucket_above_its_grant_or_below_zero() {
    let world = fixed_world();
    let state = world
        .snapshots
        .iter()
        .flat_map(|(_, states)| states.values())
        .find(|state| !state.buckets.is_empty())
        .expect("an account with credit");
    check_i2(state).expect("I2 holds");
    let mut above = state.clone();
    let bucket = above.buckets.first_mut().expect("a bucket");
    bucket.remaining = bucket.granted + Dcu::from_micros(1);
    assert!(check_i2(&above).is_err());
    let mut below = state.clone();
    let bucket = below.buckets.first_mut().expect("a bucket");
    bucket.remaining = Dcu::from_micros(-1);
    assert!(check_i2(&below).is_err());
}

#[test]
fn checkers_catch_a_replay_that_differs() {
    let mut world = fixed_world();
    let log = world.logs.values_mut().next().expect("a log");
    let index = log
        .iter()
        .rposition(|event| matches!(event.body, EventBody::LoggedIn))
        .expect("a login");
    log.remove(index);
    assert!(check_replay(&world).is_err());
    // The live state at some instant disagrees with the log cut there.
    let mut world = fixed_world();
    let (now, states) = world.snapshots.last_mut().expect("steps");
    let state = states.values_mut().next().expect("an account");
    state.storage_used_gb += 1;
    let now = *now;
    assert!(check_replay_as_of(&world, now).is_err());
}

#[test]
fn checkers_catch_billing_beyond_held_time() {
    let mut world = fixed_world();
    let now = world.snapshots.last().expect("steps").0;
    corrupt_first(&mut world, |event| match &mut event.body {
        EventBody::LeaseMetered { seconds_total, .. } => {
            *seconds_total += 1;
            true
        }
        _ => false,
    });
    assert!(check_i6(&world, now).is_err());
    let mut world = fixed_world();
    corrupt_first(&mut world, |event| match &mut event.body {
        EventBody::LeaseMetered { charge, .. } => {
            charge.amount += Dcu::from_micros(1);
            true
        }
        _ => false,
    });
    assert!(check_i6(&world, now).is_err());
    // Metering after the end.
    let mut world = fixed_world();
    let log = world
        .logs
        .values_mut()
        .find(|log| {
            log.iter()
                .any(|event| matches!(event.body, EventBody::LeaseEnded { .. }))
        })
        .expect("an ended lease");
    let metering = log
        .iter()
        .rposition(|event| matches!(event.body, EventBody::LeaseMetered { .. }))
        .expect("a metering");
    let ended = log
        .iter()
        .position(|event| matches!(event.body, EventBody::LeaseEnded { .. }))
        .expect("an end");
    let moved = log.remove(metering);
    let place = if metering < ended { ended } else { ended + 1 };
    log.insert(place, moved);
    assert!(check_i6(&world, now).is_err());
}

/// Samples the generator (fixed seed) and checks that stories reach what the properties are
/// about: grants, upgrades, queued starts, carry-over, expiries, TTL expiries, exhaustion,
/// bans, reclaims, arrears and effective repeats.
#[test]
fn generator_reaches_the_interesting_states() {
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = story(60);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut effective_repeats = 0;
    for _ in 0..128 {
        let story = strategy.new_tree(&mut runner).expect("a story").current();
        let run = run_story(&story, |_, _| Ok(())).expect("story runs");
        effective_repeats += run.effective_repeats;
        for event in run.world.logs.values().flatten() {
            let name = match &event.body {
                EventBody::LeaseEnded { end, reason, .. } => {
                    format!("LeaseEnded:{end:?}:{reason:?}")
                }
                EventBody::LeaseMetered { charge, .. }
                | EventBody::UsageRecorded { charge, .. }
                    if charge.arrears_added.is_positive() =>
                {
                    format!("{}:arrears", event.body.type_name())
                }
                body => body.type_name().into(),
            };
            *seen.entry(name).or_default() += 1;
        }
    }
    for wanted in [
        "PlanStarted",
        "PlanUpgraded",
        "PlanQueued",
        "QueuedPlanStarted",
        "ExtensionGranted",
        "PeriodEnded",
        "CarryOverActivated",
        "BucketExpired",
        "Banned",
        "UsageRecorded",
        "StorageReclaimed",
        "LeaseGranted",
        "LeaseMetered",
        "LeaseMetered:arrears",
        "UsageRecorded:arrears",
        "LeaseEnded:Released:None",
        "LeaseEnded:Expired:None",
        "LeaseEnded:Revoked:Some(CreditExhausted)",
        "LeaseEnded:Revoked:Some(PlanExpired)",
        "LeaseEnded:Revoked:Some(AccountBanned)",
    ] {
        assert!(
            seen.contains_key(wanted),
            "generator never reaches {wanted}: {seen:#?}"
        );
    }
    eprintln!("events over 128 stories: {seen:#?}; effective repeats: {effective_repeats}");
    assert!(
        effective_repeats > 50,
        "too few effective repeats: {effective_repeats}"
    );
}
