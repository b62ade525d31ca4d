//! Unit tests of the domain rules on the pure core (no log, no engine): each test names the
//! rule it checks. The golden stories in `tests/scenarios/` show the same rules end to end.

use ledger::account::{AccountState, BucketSource, BucketState};
use ledger::amount::{lease_cost, Dcu};
use ledger::clock::Timestamp;
use ledger::decide::{decide, Command, Context, ErrorCode, LeaseRequest, Refusal};
use ledger::due::{advance, due, exhaustion_at, live};
use ledger::event::{Event, EventBody, JobKind, LeaseEnd, RevokeReason};

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("valid instant")
}

fn dcu(text: &str) -> Dcu {
    Dcu::parse(text).expect("valid amount")
}

/// One account driven through the pure core exactly as the engine drives it.
struct World {
    state: AccountState,
    context: Context,
    log: Vec<Event>,
}

impl World {
    fn new() -> World {
        let mut world = World {
            state: AccountState::new("stu"),
            context: Context::default(),
            log: Vec::new(),
        };
        world.ok("2025-03-01T00:00:00Z", Command::Open { edu: false });
        world
    }

    fn run(&mut self, instant: &str, command: Command) -> Result<(), Refusal> {
        let now = at(instant);
        for event in due(&self.state, now) {
            self.state.evolve(&event);
            self.log.push(event);
        }
        let events = decide(&self.state, &self.context, &command, now)?;
        for event in events {
            self.state.evolve(&event);
            self.log.push(event);
        }
        assert!(self.state.conservation_holds(), "I1 after {command:?}");
        Ok(())
    }

    fn ok(&mut self, instant: &str, command: Command) {
        self.run(instant, command).expect("command accepted");
    }

    fn refused(&mut self, instant: &str, command: Command) -> ErrorCode {
        self.run(instant, command)
            .expect_err("command refused")
            .code
    }

    fn buy(&mut self, instant: &str, order: &str, plan: &str) {
        self.ok(instant, buy(order, plan));
    }

    fn at(&self, instant: &str) -> AccountState {
        advance(&self.state, at(instant))
    }
}

fn buy(order: &str, plan: &str) -> Command {
    Command::Buy {
        order: order.into(),
        plan: plan.into(),
        price_cny: None,
        price_reason: None,
    }
}

fn lease(id: &str, model: &str, cards: u32) -> Command {
    Command::RequestLease(LeaseRequest {
        lease: id.into(),
        kind: JobKind::GpuRun,
        model: model.into(),
        cards_per_worker: cards,
        workers: 1,
    })
}

fn usage(record: &str, model: &str, cards: u32, seconds: u64) -> Command {
    Command::RecordUsage {
        record: record.into(),
        model: model.into(),
        cards,
        seconds,
        started_at: None,
    }
}

#[test]
fn r_p1_new_period_grants_the_plan_and_its_cap() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "basic");
    let state = &world.state;
    assert_eq!(state.active_total(), dcu("56.6"));
    assert_eq!(state.parallelism_cap(), 4);
    assert_eq!(state.storage_allowance_gb(), 100, "K2: beta storage");
    assert_eq!(
        state.period.as_ref().map(|p| p.ends_at),
        Some(at("2025-05-01T00:00:00Z"))
    );
}

#[test]
fn r_p2_upgrade_refreshes_plan_and_extension_expiry_and_moves_the_queue() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.buy("2025-04-02T00:00:00Z", "o2", "extension");
    world.buy("2025-04-03T00:00:00Z", "o3", "trial"); // renewal: queued
    world.buy("2025-04-10T00:00:00Z", "o4", "advanced");
    let state = &world.state;
    let new_end = at("2025-05-10T00:00:00Z");
    assert!(state.buckets.iter().all(|bucket| bucket.ends_at == new_end));
    assert_eq!(state.active_total(), dcu("530"));
    assert_eq!(state.parallelism_cap(), 8);
    assert_eq!(
        state.chain_ends_at(),
        Some(at("2025-06-09T00:00:00Z")),
        "queue moved back"
    );
    // M12: no proration; the old plan's credit is kept whole.
}

#[test]
fn r_p3_renewal_is_queued_and_cannot_be_spent_early() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "basic");
    world.buy("2025-04-05T00:00:00Z", "o2", "trial");
    assert_eq!(
        world.state.active_total(),
        dcu("56.6"),
        "queued credit does not exist yet"
    );
    assert_eq!(world.state.queue.len(), 1);
    world.ok(
        "2025-04-06T00:00:00Z",
        usage("u1", "dc100-80g", 1, 3600 * 30),
    );
    assert_eq!(world.state.active_total(), dcu("0"));
    assert_eq!(
        world.state.arrears,
        dcu("20.2"),
        "D2: over-use is arrears, not queued credit"
    );
}

#[test]
fn r_p4_queued_plan_starts_at_period_end_and_activates_the_carry_over() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "basic");
    world.buy("2025-04-05T00:00:00Z", "o2", "basic");
    let state = world.at("2025-05-01T00:00:00Z");
    assert_eq!(state.period.as_ref().map(|p| p.order.as_str()), Some("o2"));
    let carry = state
        .buckets
        .iter()
        .find(|bucket| bucket.source == BucketSource::CarryOver)
        .expect("C1 then C2");
    assert_eq!(carry.state, BucketState::Active);
    assert_eq!(carry.ends_at, at("2025-05-31T00:00:00Z"));
    assert_eq!(state.active_total(), dcu("113.2"));
}

#[test]
fn r_p5_extension_needs_a_current_period_and_expires_with_it() {
    let mut world = World::new();
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", buy("o1", "extension")),
        ErrorCode::NoCurrentPeriod
    );
    world.buy("2025-04-01T00:00:00Z", "o2", "trial");
    world.buy("2025-04-20T00:00:00Z", "o3", "extension");
    let pack = world
        .state
        .buckets
        .iter()
        .find(|b| b.source == BucketSource::Extension);
    assert_eq!(pack.map(|b| b.ends_at), Some(at("2025-05-01T00:00:00Z")));
}

#[test]
fn r_p6_a_price_other_than_the_list_needs_a_reason() {
    let mut world = World::new();
    let discounted = |reason: Option<&str>| Command::Buy {
        order: "o1".into(),
        plan: "trial".into(),
        price_cny: Some("100".parse().expect("decimal")),
        price_reason: reason.map(String::from),
    };
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", discounted(None)),
        ErrorCode::InvalidRequest
    );
    world.ok("2025-04-01T00:00:00Z", discounted(Some("campus promotion")));
    let recorded = world.log.iter().find_map(|event| match &event.body {
        EventBody::PlanStarted { payment, .. } => Some(payment.clone()),
        _ => None,
    });
    let payment = recorded.expect("K1: the purchase records its payment");
    assert_eq!(payment.list_price_cny.to_string(), "135");
    assert_eq!(payment.price_cny.to_string(), "100");
}

#[test]
fn r_i5_same_order_twice_has_one_effect_and_another_plan_is_refused() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    let events = world.log.len();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    assert_eq!(world.log.len(), events);
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", buy("o1", "basic")),
        ErrorCode::InvalidRequest
    );
}

#[test]
fn r_i5_same_order_with_another_price_or_reason_is_refused() {
    let mut world = World::new();
    let priced = |price: Option<&str>, reason: Option<&str>| Command::Buy {
        order: "o1".into(),
        plan: "trial".into(),
        price_cny: price.map(|price| price.parse().expect("decimal")),
        price_reason: reason.map(String::from),
    };
    world.ok(
        "2025-04-01T00:00:00Z",
        priced(Some("100000"), Some("campus deal")),
    );
    let events = world.log.len();
    // The exact same request again (and the same price written another way) answers the
    // first result and writes nothing.
    world.ok(
        "2025-04-01T00:00:01Z",
        priced(Some("100000"), Some("campus deal")),
    );
    world.ok(
        "2025-04-01T00:00:01Z",
        priced(Some("100000.00"), Some(" campus deal ")),
    );
    assert_eq!(world.log.len(), events);
    for (price, reason) in [
        (Some("10"), Some("")),
        (Some("10"), Some("campus deal")),
        (Some("100000"), Some("another reason")),
        (Some("100000"), None),
        (None, None),
    ] {
        assert_eq!(
            world.refused("2025-04-01T00:00:02Z", priced(price, reason)),
            ErrorCode::InvalidRequest,
            "price {price:?}, reason {reason:?}"
        );
    }
    assert_eq!(world.log.len(), events, "a refusal writes nothing");
    // An order at the list price: a repeat naming that price, or none, is the same order.
    world.buy("2025-04-02T00:00:00Z", "o2", "trial");
    let events = world.log.len();
    world.ok(
        "2025-04-02T00:00:01Z",
        Command::Buy {
            order: "o2".into(),
            plan: "trial".into(),
            price_cny: Some("135".parse().expect("decimal")),
            price_reason: None,
        },
    );
    world.buy("2025-04-02T00:00:01Z", "o2", "trial");
    assert_eq!(world.log.len(), events);
    let discounted = Command::Buy {
        order: "o2".into(),
        plan: "trial".into(),
        price_cny: Some("100".parse().expect("decimal")),
        price_reason: Some("late discount".into()),
    };
    assert_eq!(
        world.refused("2025-04-02T00:00:02Z", discounted),
        ErrorCode::InvalidRequest
    );
}

#[test]
fn r_m11_a_usage_record_covers_at_least_one_second() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    let events = world.log.len();
    assert_eq!(
        world.refused("2025-04-02T00:00:00Z", usage("r0", "dc100-80g", 1, 0)),
        ErrorCode::InvalidRequest
    );
    assert_eq!(world.log.len(), events, "nothing stored");
    assert!(!world.state.records.contains_key("r0"));
    world.ok("2025-04-02T00:00:00Z", usage("r0", "dc100-80g", 1, 1));
}

#[test]
fn r_a1_account_ids_dot_and_dot_dot_are_refused_at_open() {
    for id in [".", ".."] {
        let state = AccountState::new(id);
        let refusal = decide(
            &state,
            &Context::default(),
            &Command::Open { edu: false },
            at("2025-04-01T00:00:00Z"),
        )
        .expect_err("refused");
        assert_eq!(refusal.code, ErrorCode::InvalidRequest, "{id:?}");
        assert!(refusal.message.contains("URL"), "{}", refusal.message);
    }
    for id in ["...", ".a", "a.", "a..b"] {
        let state = AccountState::new(id);
        let opened = decide(
            &state,
            &Context::default(),
            &Command::Open { edu: false },
            at("2025-04-01T00:00:00Z"),
        );
        assert!(opened.is_ok(), "{id:?}: {opened:?}");
    }
}

#[test]
fn r_m10_lease_ids_dot_and_dot_dot_are_refused() {
    let mut world = World::new();
    world.ok("2025-04-01T00:00:00Z", buy("o1", "basic"));
    for id in [".", ".."] {
        let refused = world.refused("2025-04-01T00:00:01Z", lease(id, "dc100-80g", 1));
        assert_eq!(refused, ErrorCode::InvalidRequest, "{id:?}");
    }
    world.ok("2025-04-01T00:00:01Z", lease("...", "dc100-80g", 1));
}

#[test]
fn r_d2_usage_that_would_take_arrears_past_the_bound_is_refused() {
    let mut world = World::new();
    // 4096 cards × 366 days of dc100-80g: 92 106 915.84 DCU a record, all arrears.
    let big = |record: &str| usage(record, "dc100-80g", 4_096, 31_622_400);
    for index in 0..10 {
        world.ok("2025-04-01T00:00:00Z", big(&format!("r{index}")));
    }
    assert_eq!(world.state.arrears, dcu("921069158.4"));
    let events = world.log.len();
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", big("r10")),
        ErrorCode::InvalidRequest
    );
    assert_eq!(world.log.len(), events, "nothing stored");
    assert_eq!(world.state.arrears, dcu("921069158.4"));
    // What still fits the bound is recorded; the bound itself is reachable, not passable.
    world.ok("2025-04-01T00:00:00Z", usage("r11", "dc100-80g", 1, 1));
    let bound = Dcu::from_micros(1_000_000_000 * 1_000_000);
    assert!(world.state.arrears <= bound && world.state.totals.metered <= bound);
    // The log stays readable: every amount in it parses back (U1).
    let replayed = AccountState::replay("stu", &world.log);
    assert_eq!(replayed, world.state);
}

#[test]
fn r_c1_c2_c3_the_manuals_worked_example() {
    let mut world = World::new();
    world.buy("2025-03-31T16:00:00Z", "o1", "trial");
    world.ok("2025-04-20T00:00:00Z", usage("u1", "dc100-40g", 1, 28_125));
    let may_1 = world.at("2025-04-30T16:00:00Z");
    assert_eq!(
        (may_1.active_total(), may_1.inactive_total()),
        (dcu("0"), dcu("10"))
    );
    world.buy("2025-05-14T16:00:00Z", "o2", "basic");
    assert_eq!(world.state.active_total(), dcu("66.6"));
    let jun_14 = world.at("2025-06-13T16:00:00Z");
    assert_eq!(
        (jun_14.active_total(), jun_14.inactive_total()),
        (dcu("0"), dcu("56.6"))
    );
    assert_eq!(jun_14.totals.expired, dcu("10"), "C3: carried once only");
    let jul_14 = world.at("2025-07-13T16:00:00Z");
    assert_eq!(
        (jul_14.inactive_total(), jul_14.totals.expired),
        (dcu("0"), dcu("66.6"))
    );
}

#[test]
fn r_c4_an_upgrade_carries_nothing_over_and_keeps_the_carry_over_expiry() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.buy("2025-05-11T00:00:00Z", "o2", "trial"); // activates 20 carried, expiring Jun 10
    world.buy("2025-05-21T00:00:00Z", "o3", "basic");
    let carry = world
        .state
        .buckets
        .iter()
        .find(|b| b.source == BucketSource::CarryOver);
    assert_eq!(carry.map(|b| b.ends_at), Some(at("2025-06-10T00:00:00Z")));
    assert_eq!(world.state.inactive_total(), dcu("0"));
    let jun_10 = world.at("2025-06-10T00:00:00Z");
    assert_eq!(jun_10.totals.expired, dcu("20"));
    assert_eq!(jun_10.active_total(), dcu("76.6"));
}

#[test]
fn r_d1_burn_order_carry_over_then_extension_then_lower_rank_plan() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.buy("2025-05-02T00:00:00Z", "o2", "trial"); // carry-over 20 active
    world.buy("2025-05-03T00:00:00Z", "o3", "extension");
    world.buy("2025-05-04T00:00:00Z", "o4", "basic"); // upgrade: trial 20 + basic 56.6
                                                      // 35.84 DCU (28 h at 1.28): 20 from carry-over, 10 from the pack, 5.84 from trial
                                                      // (rank 1) before basic.
    world.ok(
        "2025-05-05T00:00:00Z",
        usage("u1", "dc100-40g", 1, 28 * 3600),
    );
    let remaining = |source: BucketSource| {
        world
            .state
            .buckets
            .iter()
            .filter(|b| b.source == source)
            .map(|b| b.remaining)
            .sum::<Dcu>()
    };
    assert_eq!(remaining(BucketSource::CarryOver), dcu("0"));
    assert_eq!(remaining(BucketSource::Extension), dcu("0"));
    let trial = BucketSource::Plan {
        plan: "trial".into(),
        rank: 1,
    };
    let basic = BucketSource::Plan {
        plan: "basic".into(),
        rank: 2,
    };
    assert_eq!(remaining(trial), dcu("14.16"));
    assert_eq!(remaining(basic), dcu("56.6"));
}

#[test]
fn r_d2_arrears_are_paid_first_by_later_credit() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.ok(
        "2025-04-02T00:00:00Z",
        usage("u1", "dc100-40g", 1, 20 * 3600),
    );
    assert_eq!(world.state.arrears, dcu("5.6"));
    assert_eq!(world.state.available(), dcu("-5.6"));
    world.buy("2025-04-03T00:00:00Z", "o2", "extension");
    assert_eq!(
        (world.state.arrears, world.state.active_total()),
        (dcu("0"), dcu("4.4"))
    );
}

#[test]
fn r_m3_admission_refusals_in_the_specs_order() {
    let mut world = World::new();
    let bad_shape = Command::RequestLease(LeaseRequest {
        lease: "l0".into(),
        kind: JobKind::GpuRun,
        model: "dc100-80g".into(),
        cards_per_worker: 1,
        workers: 2,
    });
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", bad_shape),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", lease("l1", "dc100-40g", 2)),
        ErrorCode::NoCurrentPeriod
    );
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", lease("l1", "dc100-40g", 2)),
        ErrorCode::MultiCardNotSupported
    );
    world.ok("2025-04-01T00:00:00Z", Command::Storage { gb: 101 });
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", lease("l1", "dc100-80g", 2)),
        ErrorCode::StorageOverAllowance
    );
    world.ok("2025-04-01T00:00:00Z", Command::Storage { gb: 100 });
    assert_eq!(
        world.refused("2025-04-01T00:00:00Z", lease("l1", "dc100-80g", 2)),
        ErrorCode::ParallelismExceeded
    );
    world.ok("2025-04-01T00:00:00Z", lease("l1", "dc100-80g", 1));
    assert_eq!(
        world.refused("2025-04-01T00:00:01Z", lease("l2", "dc100-40g", 1)),
        ErrorCode::ParallelismExceeded
    );
    // Spend all but 0.04 DCU: a 2.56 DCU/h card needs 0.042667 for 60 s.
    world.ok(
        "2025-04-01T00:00:01Z",
        Command::Release { lease: "l1".into() },
    );
    let left = world.state.available();
    let seconds = (left - dcu("0.04")).micros() as u64 * 3600 / 1_280_000;
    world.ok("2025-04-01T00:00:02Z", usage("u1", "dc100-40g", 1, seconds));
    assert!(world.state.available() < dcu("0.042667"));
    assert_eq!(
        world.refused("2025-04-01T00:00:03Z", lease("l3", "dc100-80g", 1)),
        ErrorCode::InsufficientCredit
    );
}

#[test]
fn r_m6_ttl_expiry_bills_to_the_last_heartbeat() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.ok("2025-04-01T00:00:00Z", lease("l1", "dc100-80g", 1));
    world.ok(
        "2025-04-01T00:00:30Z",
        Command::Heartbeat { lease: "l1".into() },
    );
    // D4: a live view at 00:01:50 shows 110 s; the lease expires at 00:02:00 (30 + 90).
    assert_eq!(
        live(&world.state, at("2025-04-01T00:01:50Z"))
            .running
            .get("l1")
            .expect("l1 is there")
            .charged,
        lease_cost(dcu("2.56"), 1, 110)
    );
    let later = world.at("2025-04-01T00:05:00Z");
    let ended = &later.ended.get("l1").expect("l1 is there");
    assert_eq!(
        (ended.end, ended.ended_at),
        (LeaseEnd::Expired, at("2025-04-01T00:02:00Z"))
    );
    assert_eq!(
        ended.charged,
        lease_cost(dcu("2.56"), 1, 30),
        "gives back what it showed past 00:00:30"
    );
    assert_eq!(
        world.refused(
            "2025-04-01T00:05:00Z",
            Command::Heartbeat { lease: "l1".into() }
        ),
        ErrorCode::LeaseNotActive
    );
}

#[test]
fn r_m7_exhaustion_revokes_every_lease_at_the_exact_second() {
    let mut world = World::new();
    world.context.lease_ttl_s = 0;
    world.buy("2025-04-01T00:00:00Z", "o1", "basic"); // 56.6 DCU
    world.ok("2025-04-01T00:00:00Z", lease("a", "dc100-80g", 1));
    world.ok("2025-04-01T01:00:00Z", lease("b", "dc100-40g", 1));
    // After 1 h: 54.04 left, burning 3.84 DCU/h: it runs out about 14.07 h later.
    let instant = exhaustion_at(&world.state).expect("running leases run out");
    let granted = at("2025-04-01T01:00:00Z");
    let seconds = instant.seconds_since(granted);
    let cost = |s: u64| lease_cost(dcu("2.56"), 1, 3600 + s) + lease_cost(dcu("1.28"), 1, s);
    assert!(
        cost(seconds) >= dcu("56.6") && cost(seconds - 1) < dcu("56.6"),
        "first such second"
    );
    let after = advance(&world.state, instant);
    assert!(after.running.is_empty());
    assert!(after
        .ended
        .values()
        .all(|l| l.reason == Some(RevokeReason::CreditExhausted)));
    assert!(
        after.arrears < lease_cost(dcu("3.84"), 1, 1),
        "less than one second's cost"
    );
    assert!(after.conservation_holds());
}

#[test]
fn r_m8_period_end_meters_then_revokes_without_a_renewal() {
    let mut world = World::new();
    world.context.lease_ttl_s = 0;
    world.buy("2025-04-01T00:00:00Z", "o1", "advanced");
    world.ok("2025-04-30T23:00:00Z", lease("l1", "dc100-40g", 1));
    let after = world.at("2025-05-01T00:00:00Z");
    let ended = &after.ended.get("l1").expect("l1 is there");
    assert_eq!(
        (ended.end, ended.reason),
        (LeaseEnd::Revoked, Some(RevokeReason::PlanExpired))
    );
    assert_eq!(ended.charged, dcu("1.28"));
    assert_eq!(after.inactive_total(), dcu("498.72"));
}

#[test]
fn r_m8_a_queued_renewal_keeps_leases_running() {
    let mut world = World::new();
    world.context.lease_ttl_s = 0;
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.buy("2025-04-02T00:00:00Z", "o2", "trial");
    world.ok("2025-04-30T23:00:00Z", lease("l1", "dc100-40g", 1));
    let after = world.at("2025-05-01T00:00:00Z");
    assert_eq!(
        after.running.get("l1").expect("l1 is there").charged,
        dcu("1.28"),
        "metered up to the period end"
    );
    assert_eq!(after.active_total(), dcu("38.72"));
}

#[test]
fn r_m9_a_lower_cap_keeps_running_leases_and_refuses_new_ones() {
    let mut world = World::new();
    world.context.lease_ttl_s = 0;
    world.buy("2025-04-01T00:00:00Z", "o1", "advanced");
    world.buy("2025-04-02T00:00:00Z", "o2", "trial");
    world.ok("2025-04-30T00:00:00Z", lease("l1", "dc100-80g", 3)); // 6 units
    world.ok(
        "2025-05-02T00:00:00Z",
        Command::Heartbeat { lease: "l1".into() },
    );
    assert!(world.state.running.contains_key("l1"));
    assert_eq!(world.state.parallelism_cap(), 2);
    assert_eq!(
        world.refused("2025-05-02T00:00:00Z", lease("l2", "dc100-40g", 1)),
        ErrorCode::ParallelismExceeded
    );
}

#[test]
fn r_m10_release_twice_and_request_again_have_one_effect() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.ok("2025-04-01T00:00:00Z", lease("l1", "dc100-80g", 1));
    world.ok(
        "2025-04-01T00:00:10Z",
        Command::Release { lease: "l1".into() },
    );
    let events = world.log.len();
    world.ok(
        "2025-04-01T00:00:20Z",
        Command::Release { lease: "l1".into() },
    );
    world.ok("2025-04-01T00:00:20Z", lease("l1", "dc100-80g", 1));
    assert_eq!(world.log.len(), events);
    assert_eq!(
        world.state.ended.get("l1").expect("l1 is there").charged,
        lease_cost(dcu("2.56"), 1, 10)
    );
}

#[test]
fn r_a3_ban_forfeits_revokes_and_refuses_but_still_records_usage() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.buy("2025-04-02T00:00:00Z", "o2", "trial");
    world.ok("2025-04-03T00:00:00Z", lease("l1", "dc100-80g", 1));
    world.ok(
        "2025-04-03T00:01:00Z",
        Command::Ban {
            reason: "mining".into(),
        },
    );
    let state = &world.state;
    assert_eq!(
        state.ended.get("l1").expect("l1 is there").reason,
        Some(RevokeReason::AccountBanned)
    );
    assert_eq!(
        state.totals.forfeited,
        dcu("20") - lease_cost(dcu("2.56"), 1, 60)
    );
    assert!(state.queue.is_empty(), "queued plans cancelled");
    assert_eq!(
        world.refused("2025-04-04T00:00:00Z", buy("o3", "basic")),
        ErrorCode::AccountBanned
    );
    assert_eq!(
        world.refused("2025-04-04T00:00:00Z", lease("l2", "dc100-40g", 1)),
        ErrorCode::AccountBanned
    );
    world.ok("2025-04-04T00:00:00Z", usage("u1", "dc100-40g", 1, 3600));
    assert_eq!(world.state.arrears, dcu("1.28"));
}

#[test]
fn r_s2_storage_is_reclaimed_15_days_after_the_later_of_lapse_and_login() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.ok("2025-04-10T00:00:00Z", Command::Storage { gb: 42 });
    world.ok("2025-05-05T00:00:00Z", Command::Login);
    assert_eq!(world.at("2025-05-19T23:59:59Z").storage_used_gb, 42);
    let reclaimed = world.at("2025-05-20T00:00:00Z");
    assert!(reclaimed.storage_reclaimed && reclaimed.storage_used_gb == 0);
    // A period that starts first prevents it.
    let mut saved = World::new();
    saved.buy("2025-04-01T00:00:00Z", "o1", "trial");
    saved.buy("2025-05-10T00:00:00Z", "o2", "trial");
    assert!(!saved.at("2025-06-01T00:00:00Z").storage_reclaimed);
}

#[test]
fn r_i3_replaying_the_recorded_events_gives_the_live_state() {
    let mut world = World::new();
    world.buy("2025-04-01T00:00:00Z", "o1", "trial");
    world.ok("2025-04-01T00:00:00Z", lease("l1", "dc100-80g", 1));
    world.ok(
        "2025-04-01T00:00:30Z",
        Command::Heartbeat { lease: "l1".into() },
    );
    world.buy("2025-06-15T00:00:00Z", "o2", "basic");
    let replayed = AccountState::replay("stu", &world.log);
    assert_eq!(replayed, world.state);
}

#[test]
fn r_p6_prices_compare_by_value_and_reasons_refuse_control_characters() {
    let mut world = World::new();
    let priced = |order: &str, price: &str, reason: &str| Command::Buy {
        order: order.into(),
        plan: "trial".into(),
        price_cny: Some(price.parse().expect("decimal")),
        price_reason: Some(reason.into()),
    };
    let refused = world.refused("2025-04-01T00:00:00Z", priced("o1", "99", "promo\u{0}"));
    assert_eq!(refused, ErrorCode::InvalidRequest);
    world.ok("2025-04-01T00:00:00Z", priced("o2", "99.100", "promo"));
    for reason in ["mining\n", "", "   "] {
        let ban = Command::Ban {
            reason: reason.into(),
        };
        assert_eq!(
            world.refused("2025-04-02T00:00:00Z", ban),
            ErrorCode::InvalidRequest,
            "A3: a ban needs a printable reason, not {reason:?}"
        );
    }
}

#[test]
fn r_u1_prices_and_invoice_amounts_are_kept_without_trailing_zeros() {
    let mut world = World::new();
    let priced = |order: &str, plan: &str, price: &str| Command::Buy {
        order: order.into(),
        plan: plan.into(),
        price_cny: Some(price.parse().expect("a decimal")),
        price_reason: Some("promotion".into()),
    };
    world.ok("2025-04-01T00:00:00Z", priced("o1", "basic", "100.50"));
    world.ok("2025-04-02T00:00:00Z", priced("o2", "extension", "59.5"));
    assert_eq!(
        world
            .state
            .orders
            .get("o1")
            .expect("o1")
            .price_cny
            .to_string(),
        "100.5"
    );
    let invoice = |orders: &[&str]| Command::RecordInvoice {
        invoice: "inv-1".into(),
        orders: orders.iter().map(|order| order.to_string()).collect(),
    };
    world.ok("2025-04-03T00:00:00Z", invoice(&["o1", "o2"]));
    let recorded = world.state.invoices.get("inv-1").expect("invoice");
    assert_eq!(recorded.amount_cny.to_string(), "160", "100.5 + 59.5");
    // The same orders in another order are the same invoice: it answers the first.
    let events = world.log.len();
    world.ok("2025-04-04T00:00:00Z", invoice(&["o2", "o1"]));
    assert_eq!(world.log.len(), events, "nothing written again");
    assert_eq!(
        world.refused("2025-04-04T00:00:00Z", invoice(&["o1"])),
        ErrorCode::InvalidRequest
    );
}
