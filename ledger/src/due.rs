//! `due`: the time-driven events of an account, in time order (SPEC §9). Pure.
//!
//! Period ends, activations, expiries, queued starts, lease expiries, exhaustion and storage
//! reclaims follow from the state alone. `due(state, now)` finds the earliest such instant,
//! emits that instant's events in the order of §9, folds them into a scratch copy, and
//! repeats until the next instant is after `now`. Commands append these first; queries fold
//! them in memory; the scheduler's timers use `next_due_at`.

use crate::account::{AccountState, Bucket, BucketSource, BucketState};
use crate::amount::Dcu;
use crate::clock::{Timestamp, CARRY_OVER_WINDOW_S, PERIOD_S, RETENTION_S};
use crate::event::{BucketAmount, Event, EventBody, LeaseEnd, RevokeReason};

/// Most instants one `due` call may process. An account produces a handful per 30 days, so
/// this is centuries of history; reaching it means a bug, and stopping beats spinning.
const MAX_DUE_ROUNDS: usize = 100_000;

/// Collects events and folds each into a scratch state as it is emitted, so that every
/// later decision sees the effect of the earlier ones.
pub(crate) struct Emitter {
    pub state: AccountState,
    pub events: Vec<Event>,
}

impl Emitter {
    pub fn new(state: AccountState) -> Emitter {
        Emitter {
            state,
            events: Vec::new(),
        }
    }

    pub fn emit(&mut self, at: Timestamp, body: EventBody) {
        let event = Event { at, body };
        self.state.evolve(&event);
        self.events.push(event);
    }

    /// M5: charges every running lease up to `at` (a metering that changes nothing is not
    /// written).
    pub fn meter_running(&mut self, at: Timestamp, heartbeat: bool) {
        let leases: Vec<String> = self.state.running.keys().cloned().collect();
        for lease in leases {
            self.meter(&lease, at, heartbeat);
        }
    }

    pub fn meter(&mut self, lease: &str, at: Timestamp, heartbeat: bool) {
        if let Some(event) = metering(&self.state, lease, at, heartbeat) {
            self.state.evolve(&event);
            self.events.push(event);
        }
    }

    pub fn end_running(&mut self, at: Timestamp, end: LeaseEnd, reason: Option<RevokeReason>) {
        let leases: Vec<String> = self.state.running.keys().cloned().collect();
        for lease in leases {
            self.emit(at, EventBody::LeaseEnded { lease, end, reason });
        }
    }

    /// C2: activates every inactive carry-over bucket whose window holds `at`.
    pub fn activate_carry_over(&mut self, at: Timestamp, period_ends_at: Timestamp) {
        let waiting: Vec<(u32, Dcu)> = self
            .state
            .buckets
            .iter()
            .filter(|bucket| bucket.state == BucketState::Inactive && bucket.ends_at > at)
            .map(|bucket| (bucket.id, bucket.remaining))
            .collect();
        for (bucket, remaining) in waiting {
            let arrears_paid = self.state.arrears_paid_by(remaining);
            self.emit(
                at,
                EventBody::CarryOverActivated {
                    bucket,
                    expires_at: period_ends_at,
                    arrears_paid,
                },
            );
        }
    }
}

/// M5, M6: the event that charges a running lease up to `at`; `None` when it would change
/// nothing (the same metering twice has one effect, M10).
pub fn metering(
    state: &AccountState,
    lease: &str,
    at: Timestamp,
    heartbeat: bool,
) -> Option<Event> {
    let running = state.running.get(lease)?;
    let unchanged =
        running.metered_through == at && (!heartbeat || running.last_heartbeat_at == at);
    if unchanged {
        return None;
    }
    let body = EventBody::LeaseMetered {
        lease: lease.into(),
        heartbeat,
        seconds_total: at.seconds_since(running.granted_at),
        charge: state.plan_charge(running.pending_cost(at)),
    };
    Some(Event { at, body })
}

/// M7: the first whole-second instant, not before the state's clock, at which the running
/// leases' costs reach the balance. `None` without running leases.
pub fn exhaustion_at(state: &AccountState) -> Option<Timestamp> {
    if state.running.is_empty() {
        return None;
    }
    let available = state.available();
    let start = state.clock;
    let exhausted = |instant: Timestamp| state.pending_cost(instant) >= available;
    if exhausted(start) {
        return Some(start);
    }
    // Exponential search for an instant that is exhausted, then bisection: the pending cost
    // only grows with time. Every running lease burns at least one µDCU per hour, so a bound
    // exists; the cap on steps keeps a pathological state from spinning.
    let mut low = 0i64; // not exhausted at start + low
    let mut high = 1i64;
    while !exhausted(start.plus_seconds(high)) {
        low = high;
        high = high.checked_mul(2)?;
        if high > crate::clock::MAX_S {
            return None;
        }
    }
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if exhausted(start.plus_seconds(middle)) {
            high = middle;
        } else {
            low = middle;
        }
    }
    Some(start.plus_seconds(high))
}

/// S2: when the storage of a lapsed account is reclaimed.
pub fn reclaim_at(state: &AccountState) -> Option<Timestamp> {
    if state.period.is_some() {
        return None;
    }
    let lapsed_at = state.lapsed_at?;
    let last_seen = state
        .last_login_at
        .map_or(lapsed_at, |login| login.max(lapsed_at));
    Some(last_seen.plus_seconds(RETENTION_S))
}

/// The earliest instant at which something is due for this account.
pub fn next_due_at(state: &AccountState) -> Option<Timestamp> {
    let lease_expiries = state
        .running
        .values()
        .filter_map(|lease| lease.expires_at());
    let bucket_ends = state.buckets.iter().map(|bucket| bucket.ends_at);
    let period_end = state.period.as_ref().map(|period| period.ends_at);
    lease_expiries
        .chain(bucket_ends)
        .chain(period_end)
        .chain(exhaustion_at(state))
        .chain(reclaim_at(state))
        .min()
}

/// The time-driven events of `state` up to and including `now`, in time order.
pub fn due(state: &AccountState, now: Timestamp) -> Vec<Event> {
    match next_due_at(state) {
        Some(instant) if instant <= now => {}
        _ => return Vec::new(),
    }
    let mut emitter = Emitter::new(state.clone());
    for _ in 0..MAX_DUE_ROUNDS {
        match next_due_at(&emitter.state) {
            Some(instant) if instant <= now => {
                let at = instant.max(emitter.state.clock);
                step(&mut emitter, at);
            }
            _ => break,
        }
    }
    emitter.events
}

/// Advances a state through everything due up to `now` (for queries: nothing is written).
pub fn advance(state: &AccountState, now: Timestamp) -> AccountState {
    let mut advanced = state.clone();
    for event in due(state, now) {
        advanced.evolve(&event);
    }
    advanced
}

/// D4: the state as a query at `as_of` sees it: everything due folded in, and running leases
/// charged up to `as_of` in memory. Nothing is written; a lease that later expires for lack
/// of heartbeats gives back what it showed beyond its last heartbeat.
pub fn live(state: &AccountState, as_of: Timestamp) -> AccountState {
    let mut emitter = Emitter::new(advance(state, as_of));
    let at = as_of.max(emitter.state.clock);
    emitter.meter_running(at, false);
    emitter.state
}

/// One instant's events, in the order of SPEC §9.
fn step(emitter: &mut Emitter, at: Timestamp) {
    expire_leases(emitter, at);
    meter_and_exhaust(emitter, at);
    expire_active_buckets(emitter, at);
    end_period(emitter, at);
    end_windows(emitter, at);
    reclaim_storage(emitter, at);
}

/// M6: a lease with no heartbeat for its TTL expires, billed to its last heartbeat.
fn expire_leases(emitter: &mut Emitter, at: Timestamp) {
    let expired: Vec<String> = emitter
        .state
        .running
        .iter()
        .filter(|(_, lease)| lease.expires_at().is_some_and(|expiry| expiry <= at))
        .map(|(id, _)| id.clone())
        .collect();
    for lease in expired {
        let body = EventBody::LeaseEnded {
            lease,
            end: LeaseEnd::Expired,
            reason: None,
        };
        emitter.emit(at, body);
    }
}

/// M7 and M8's metering: at the exhaustion second, at a period end, or when active credit
/// expires (an activated carry-over keeps its own expiry through an upgrade, C4, so it can
/// expire inside a period), running leases are charged up to now, so that the seconds before
/// it are paid by the credit that was spendable then (D1); at exhaustion they are revoked.
fn meter_and_exhaust(emitter: &mut Emitter, at: Timestamp) {
    let exhausted = exhaustion_at(&emitter.state).is_some_and(|instant| instant <= at);
    let period_ends = emitter
        .state
        .period
        .as_ref()
        .is_some_and(|period| period.ends_at <= at);
    let credit_expires = emitter
        .state
        .buckets
        .iter()
        .any(|bucket| bucket.state == BucketState::Active && bucket.ends_at <= at);
    if exhausted || period_ends || credit_expires {
        emitter.meter_running(at, false);
    }
    if exhausted {
        emitter.end_running(at, LeaseEnd::Revoked, Some(RevokeReason::CreditExhausted));
    }
}

/// C3, C4: an active carry-over bucket expires at its expiry. Plan and extension credit
/// expiring with the period is carried over instead (C1), unless it somehow outlived it.
fn expire_active_buckets(emitter: &mut Emitter, at: Timestamp) {
    let period_end = emitter.state.period.as_ref().map(|period| period.ends_at);
    expire_buckets(emitter, at, |bucket| {
        bucket.state == BucketState::Active
            && (bucket.source == BucketSource::CarryOver || period_end != Some(bucket.ends_at))
    });
}

/// C3: every bucket that `which` picks and whose end is due expires, by bucket.
fn expire_buckets(emitter: &mut Emitter, at: Timestamp, which: impl Fn(&Bucket) -> bool) {
    let expiring: Vec<BucketAmount> = emitter
        .state
        .buckets
        .iter()
        .filter(|bucket| bucket.ends_at <= at && which(bucket))
        .map(|bucket| BucketAmount {
            bucket: bucket.id,
            amount: bucket.remaining,
        })
        .collect();
    for item in expiring {
        let body = EventBody::BucketExpired {
            bucket: item.bucket,
            amount: item.amount,
        };
        emitter.emit(at, body);
    }
}

/// C1, then P4 with its C2 activations, then M8.
fn end_period(emitter: &mut Emitter, at: Timestamp) {
    let Some(period) = emitter.state.period.as_ref() else {
        return;
    };
    if period.ends_at > at {
        return;
    }
    let carried: Vec<BucketAmount> = emitter
        .state
        .buckets
        .iter()
        .filter(|bucket| bucket.state == BucketState::Active)
        .filter(|bucket| bucket.source != BucketSource::CarryOver)
        .filter(|bucket| bucket.remaining.is_positive())
        .map(|bucket| BucketAmount {
            bucket: bucket.id,
            amount: bucket.remaining,
        })
        .collect();
    let carry_over_bucket = (!carried.is_empty()).then_some(emitter.state.next_bucket);
    emitter.emit(
        at,
        EventBody::PeriodEnded {
            carried,
            carry_over_bucket,
            window_ends_at: at.plus_seconds(CARRY_OVER_WINDOW_S),
        },
    );
    start_queued_plan(emitter, at);
    // M8: without a following period, or without credit after it, running leases stop.
    let stop = emitter.state.period.is_none() || !emitter.state.available().is_positive();
    if stop && !emitter.state.running.is_empty() {
        emitter.end_running(at, LeaseEnd::Revoked, Some(RevokeReason::PlanExpired));
    }
}

/// P4: the first queued plan starts at the end of the period before it.
fn start_queued_plan(emitter: &mut Emitter, at: Timestamp) {
    let Some(queued) = emitter.state.queue.first() else {
        return;
    };
    let order = queued.order.clone();
    let grant = queued.terms.grant_dcu;
    let period_ends_at = at.plus_seconds(PERIOD_S);
    let body = EventBody::QueuedPlanStarted {
        order,
        bucket: emitter.state.next_bucket,
        period_ends_at,
        arrears_paid: emitter.state.arrears_paid_by_plan_start(grant, at),
    };
    emitter.emit(at, body);
    emitter.activate_carry_over(at, period_ends_at);
}

/// C3: inactive carry-over whose window ended without a plan expires.
fn end_windows(emitter: &mut Emitter, at: Timestamp) {
    expire_buckets(emitter, at, |bucket| bucket.state == BucketState::Inactive);
}

/// S2: storage of a lapsed account is reclaimed 15 days after the lapse or the last login.
fn reclaim_storage(emitter: &mut Emitter, at: Timestamp) {
    if reclaim_at(&emitter.state).is_some_and(|instant| instant <= at) {
        let gb = emitter.state.storage_used_gb;
        emitter.emit(at, EventBody::StorageReclaimed { gb });
    }
}
