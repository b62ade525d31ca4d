//! `AccountState` and `evolve`: what the events of one account mean.
//!
//! `evolve` applies an event exactly as recorded; it decides nothing. Amounts moved by an
//! event (debits, arrears paid, carried and expired credit) are in the event itself, so the
//! fold is a plain sum and a replay is exact (I3). The burn order (D1) that fills a `Charge`
//! lives here, once, in `AccountState::plan_charge`.

use crate::vecmap::{reserve_small, VecMap};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::amount::{lease_cost, Dcu};
use crate::clock::Timestamp;
use crate::event::{
    BucketAmount, BucketId, Charge, Event, EventBody, LeaseEnd, LeaseTerms, Placement, PlanTerms,
    PurchaseEffect, RevokeReason,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BucketSource {
    Plan { plan: String, rank: u32 },
    Extension,
    CarryOver,
}

impl BucketSource {
    /// D1: carry-over, then extension packs, then plan credit by rank, lowest first.
    fn burn_class(&self) -> (u8, u32) {
        match self {
            BucketSource::CarryOver => (0, 0),
            BucketSource::Extension => (1, 0),
            BucketSource::Plan { rank, .. } => (2, *rank),
        }
    }

    /// The wire name: `plan:basic`, `extension`, `carry_over`.
    pub fn label(&self) -> String {
        match self {
            BucketSource::Plan { plan, .. } => format!("plan:{plan}"),
            BucketSource::Extension => "extension".into(),
            BucketSource::CarryOver => "carry_over".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketState {
    /// Spendable until `ends_at` (its expiry).
    Active,
    /// Carry-over waiting for a plan until `ends_at` (its window's end).
    Inactive,
}

/// A live bucket of credit. Closed buckets (expired, carried over, forfeited) leave the
/// state; their amounts stay in the totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    pub id: BucketId,
    pub source: BucketSource,
    pub order: Option<String>,
    pub granted: Dcu,
    pub remaining: Dcu,
    pub state: BucketState,
    pub ends_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    pub order: String,
    pub terms: PlanTerms,
    pub started_at: Timestamp,
    pub ends_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedPlan {
    pub order: String,
    pub terms: PlanTerms,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningLease {
    pub terms: LeaseTerms,
    pub placement: Vec<Placement>,
    pub granted_at: Timestamp,
    pub last_heartbeat_at: Timestamp,
    /// The instant up to which it has been charged.
    pub metered_through: Timestamp,
    pub charged: Dcu,
}

impl RunningLease {
    /// M5: what it costs from its grant up to `instant`, minus what it was already charged.
    pub fn pending_cost(&self, instant: Timestamp) -> Dcu {
        let seconds = instant.seconds_since(self.granted_at);
        let total = lease_cost(self.terms.rate_dcu_per_hour, self.terms.cards, seconds);
        (total - self.charged).max(Dcu::ZERO)
    }

    /// M6: the instant it expires for lack of heartbeats, if expiry is on.
    pub fn expires_at(&self) -> Option<Timestamp> {
        (self.terms.ttl_s > 0).then(|| self.last_heartbeat_at.plus_seconds(self.terms.ttl_s.into()))
    }
}

/// M4: a lease waiting for cards. Waiting is not billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueuedLease {
    pub terms: LeaseTerms,
    pub queued_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndedLease {
    pub kind: crate::event::JobKind,
    pub model: String,
    pub end: LeaseEnd,
    pub reason: Option<RevokeReason>,
    pub charged: Dcu,
    pub ended_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRecord {
    pub plan: String,
    pub effect: PurchaseEffect,
    /// What the order paid (P6), in CNY.
    pub price_cny: Decimal,
    /// The list price in force when it was recorded, and the reason for another price: a
    /// repeat of the order must ask for the same price and reason (I5).
    pub list_price_cny: Decimal,
    pub price_reason: Option<String>,
    /// The invoice that covers it, once one was recorded.
    pub invoice: Option<String>,
}

/// An invoice recorded for paid orders of the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceRecord {
    pub orders: Vec<String>,
    pub amount_cny: Decimal,
    pub item: String,
    pub recorded_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub model: String,
    pub cards: u32,
    pub seconds: u64,
    pub cost: Dcu,
}

/// Running sums since the account opened, for I1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub granted: Dcu,
    pub spent: Dcu,
    pub expired: Dcu,
    pub forfeited: Dcu,
    pub metered: Dcu,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountState {
    pub id: String,
    pub opened: bool,
    pub edu: bool,
    pub banned: bool,
    /// The instant of the last event applied.
    pub clock: Timestamp,
    pub period: Option<Period>,
    pub queue: Vec<QueuedPlan>,
    pub buckets: Vec<Bucket>,
    pub next_bucket: BucketId,
    pub arrears: Dcu,
    pub totals: Totals,
    pub storage_used_gb: u64,
    pub storage_reclaimed: bool,
    pub last_login_at: Option<Timestamp>,
    /// S2: when the last period ended with none after it (cleared when a period starts or
    /// the storage is reclaimed).
    pub lapsed_at: Option<Timestamp>,
    pub running: VecMap<RunningLease>,
    pub queued_leases: VecMap<QueuedLease>,
    pub ended: VecMap<EndedLease>,
    pub orders: VecMap<OrderRecord>,
    pub records: VecMap<UsageRecord>,
    pub invoices: VecMap<InvoiceRecord>,
}

impl AccountState {
    pub fn new(id: &str) -> AccountState {
        AccountState {
            id: id.into(),
            next_bucket: 1,
            ..AccountState::default()
        }
    }

    /// Folds a sequence of events from the empty state.
    pub fn replay<'a>(id: &str, events: impl IntoIterator<Item = &'a Event>) -> AccountState {
        let mut state = AccountState::new(id);
        for event in events {
            state.evolve(event);
        }
        state
    }

    pub fn active_total(&self) -> Dcu {
        self.buckets_in(BucketState::Active)
            .map(|bucket| bucket.remaining)
            .sum()
    }

    pub fn inactive_total(&self) -> Dcu {
        self.buckets_in(BucketState::Inactive)
            .map(|bucket| bucket.remaining)
            .sum()
    }

    /// D2: what the user sees as their balance, from recorded events only.
    pub fn available(&self) -> Dcu {
        self.active_total() - self.arrears
    }

    /// D4: the balance counting running leases as metered up to `instant`.
    pub fn live_available(&self, instant: Timestamp) -> Dcu {
        self.available() - self.pending_cost(instant)
    }

    /// What the running leases would be charged if metered up to `instant`.
    pub fn pending_cost(&self, instant: Timestamp) -> Dcu {
        self.running
            .values()
            .map(|lease| lease.pending_cost(instant))
            .sum()
    }

    pub fn units_in_use(&self) -> u32 {
        self.running.values().map(|lease| lease.terms.units).sum()
    }

    /// M3: units of the account's queued leases (they count against the cap too).
    pub fn units_queued(&self) -> u32 {
        self.queued_leases
            .values()
            .map(|lease| lease.terms.units)
            .sum()
    }

    /// M10: whether this account has ever had this lease id.
    pub fn knows_lease(&self, lease: &str) -> bool {
        self.running.contains_key(lease)
            || self.queued_leases.contains_key(lease)
            || self.ended.contains_key(lease)
    }

    pub fn parallelism_cap(&self) -> u32 {
        self.period
            .as_ref()
            .map_or(0, |period| period.terms.parallelism_cap)
    }

    pub fn storage_allowance_gb(&self) -> u64 {
        self.period
            .as_ref()
            .map_or(0, |period| period.terms.storage_allowance_gb.into())
    }

    /// The instant the last period of the chain (current, then queued) ends.
    pub fn chain_ends_at(&self) -> Option<Timestamp> {
        let period_end = self.period.as_ref()?.ends_at;
        Some(period_end.plus_seconds(crate::clock::PERIOD_S * self.queue.len() as i64))
    }

    fn buckets_in(&self, state: BucketState) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .filter(move |bucket| bucket.state == state)
    }

    fn bucket_mut(&mut self, id: BucketId) -> Option<&mut Bucket> {
        self.buckets.iter_mut().find(|bucket| bucket.id == id)
    }

    /// D1 + D2: splits a charge over the active buckets in burn order; the rest is arrears.
    pub fn plan_charge(&self, amount: Dcu) -> Charge {
        let mut order: Vec<&Bucket> = self
            .buckets_in(BucketState::Active)
            .filter(|bucket| bucket.remaining.is_positive())
            .collect();
        order.sort_by_key(|bucket| (bucket.source.burn_class(), bucket.ends_at, bucket.id));
        let mut left = amount;
        let mut debits = Vec::new();
        for bucket in order {
            if !left.is_positive() {
                break;
            }
            let take = left.min(bucket.remaining);
            debits.push(BucketAmount {
                bucket: bucket.id,
                amount: take,
            });
            left -= take;
        }
        Charge {
            amount,
            debits,
            arrears_added: left.max(Dcu::ZERO),
        }
    }

    /// D2: what new credit of `amount` pays towards arrears.
    pub fn arrears_paid_by(&self, amount: Dcu) -> Dcu {
        self.arrears.min(amount).max(Dcu::ZERO)
    }

    /// D1 + D2: what a plan starting at `at` pays towards arrears. The inactive carry-over
    /// that its start activates (C2) burns first, so it pays first; the plan pays the rest.
    pub fn arrears_paid_by_plan_start(&self, grant: Dcu, at: Timestamp) -> Dcu {
        let activated: Dcu = self
            .buckets_in(BucketState::Inactive)
            .filter(|bucket| bucket.ends_at > at)
            .map(|bucket| bucket.remaining)
            .sum();
        (self.arrears - activated).max(Dcu::ZERO).min(grant)
    }

    /// Applies one event. Never fails: events are facts. Debug builds check I1 and I2.
    pub fn evolve(&mut self, event: &Event) {
        debug_assert!(event.at >= self.clock, "events go forward in time");
        self.clock = self.clock.max(event.at);
        let at = event.at;
        match &event.body {
            EventBody::AccountOpened { account, edu } => {
                self.id.clone_from(account);
                self.opened = true;
                self.edu = *edu;
            }
            EventBody::PlanStarted {
                order,
                terms,
                payment,
                bucket,
                period_ends_at,
                arrears_paid,
            } => {
                self.start_period(order, terms, at, *period_ends_at);
                self.grant_plan(order, terms, *bucket, *period_ends_at, *arrears_paid);
                self.record_order(order, &terms.plan, PurchaseEffect::Started, payment);
            }
            EventBody::PlanUpgraded {
                order,
                terms,
                payment,
                bucket,
                period_ends_at,
                arrears_paid,
            } => {
                // P2: plan and extension credit of the replaced period is refreshed.
                for refreshed in &mut self.buckets {
                    if refreshed.state == BucketState::Active
                        && refreshed.source != BucketSource::CarryOver
                    {
                        refreshed.ends_at = *period_ends_at;
                    }
                }
                self.start_period(order, terms, at, *period_ends_at);
                self.grant_plan(order, terms, *bucket, *period_ends_at, *arrears_paid);
                self.record_order(order, &terms.plan, PurchaseEffect::Upgraded, payment);
            }
            EventBody::PlanQueued {
                order,
                terms,
                payment,
            } => {
                self.queue.push(QueuedPlan {
                    order: order.clone(),
                    terms: terms.clone(),
                });
                self.record_order(order, &terms.plan, PurchaseEffect::Queued, payment);
            }
            EventBody::QueuedPlanStarted {
                order,
                bucket,
                period_ends_at,
                arrears_paid,
            } => {
                let position = self.queue.iter().position(|queued| &queued.order == order);
                if let Some(queued) = position.map(|index| self.queue.remove(index)) {
                    self.start_period(order, &queued.terms, at, *period_ends_at);
                    self.grant_plan(
                        order,
                        &queued.terms,
                        *bucket,
                        *period_ends_at,
                        *arrears_paid,
                    );
                }
            }
            EventBody::ExtensionGranted {
                order,
                grant_dcu,
                payment,
                bucket,
                expires_at,
                arrears_paid,
            } => {
                self.add_bucket(
                    *bucket,
                    BucketSource::Extension,
                    Some(order.clone()),
                    *grant_dcu,
                    *expires_at,
                    *arrears_paid,
                );
                self.totals.granted += *grant_dcu;
                self.record_order(order, "extension", PurchaseEffect::Granted, payment);
            }
            EventBody::PeriodEnded {
                carried,
                carry_over_bucket,
                window_ends_at,
            } => self.end_period(at, carried, *carry_over_bucket, *window_ends_at),
            EventBody::CarryOverActivated {
                bucket,
                expires_at,
                arrears_paid,
            } => {
                if let Some(activated) = self.bucket_mut(*bucket) {
                    activated.state = BucketState::Active;
                    activated.ends_at = *expires_at;
                    activated.remaining -= *arrears_paid;
                }
                self.pay_arrears(*arrears_paid);
            }
            EventBody::BucketExpired { bucket, amount } => {
                self.buckets.retain(|kept| kept.id != *bucket);
                self.totals.expired += *amount;
            }
            EventBody::LoggedIn => self.last_login_at = Some(at),
            EventBody::StorageReported { gb } => self.storage_used_gb = *gb,
            EventBody::StorageReclaimed { .. } => {
                self.storage_used_gb = 0;
                self.storage_reclaimed = true;
                self.lapsed_at = None;
            }
            EventBody::Banned { forfeited, .. } => {
                self.banned = true;
                for item in forfeited {
                    self.totals.forfeited += item.amount;
                }
                self.buckets.clear();
                self.queue.clear();
            }
            EventBody::UsageRecorded {
                record,
                model,
                cards,
                seconds,
                charge,
                ..
            } => {
                self.apply_charge(charge);
                self.records.insert(
                    record.clone(),
                    UsageRecord {
                        model: model.clone(),
                        cards: *cards,
                        seconds: *seconds,
                        cost: charge.amount,
                    },
                );
            }
            EventBody::LeaseQueued { lease, terms } => {
                self.queued_leases.insert(
                    lease.clone(),
                    QueuedLease {
                        terms: terms.clone(),
                        queued_at: at,
                    },
                );
            }
            EventBody::LeaseGranted {
                lease,
                terms,
                placement,
            } => {
                self.queued_leases.remove(lease);
                self.running.insert(
                    lease.clone(),
                    RunningLease {
                        terms: terms.clone(),
                        placement: placement.clone(),
                        granted_at: at,
                        last_heartbeat_at: at,
                        metered_through: at,
                        charged: Dcu::ZERO,
                    },
                );
            }
            EventBody::LeaseMetered {
                lease,
                heartbeat,
                charge,
                ..
            } => {
                if let Some(running) = self.running.get_mut(lease) {
                    running.metered_through = at;
                    running.charged += charge.amount;
                    if *heartbeat {
                        running.last_heartbeat_at = at;
                    }
                }
                self.apply_charge(charge);
            }
            EventBody::LeaseEnded { lease, end, reason } => {
                if let Some(queued) = self.queued_leases.remove(lease) {
                    self.ended.insert(
                        lease.clone(),
                        EndedLease {
                            kind: queued.terms.kind,
                            model: queued.terms.model,
                            end: *end,
                            reason: *reason,
                            charged: Dcu::ZERO,
                            ended_at: at,
                        },
                    );
                }
                if let Some(running) = self.running.remove(lease) {
                    self.ended.insert(
                        lease.clone(),
                        EndedLease {
                            kind: running.terms.kind,
                            model: running.terms.model,
                            end: *end,
                            reason: *reason,
                            charged: running.charged,
                            ended_at: at,
                        },
                    );
                }
            }
            EventBody::InvoiceRecorded {
                invoice,
                orders,
                amount_cny,
                item,
            } => {
                for order in orders {
                    if let Some(record) = self.orders.get_mut(order) {
                        record.invoice = Some(invoice.clone());
                    }
                }
                self.invoices.insert(
                    invoice.clone(),
                    InvoiceRecord {
                        orders: orders.clone(),
                        amount_cny: *amount_cny,
                        item: item.clone(),
                        recorded_at: at,
                    },
                );
            }
        }
        self.debug_check();
    }

    fn start_period(&mut self, order: &str, terms: &PlanTerms, at: Timestamp, ends_at: Timestamp) {
        self.period = Some(Period {
            order: order.into(),
            terms: terms.clone(),
            started_at: at,
            ends_at,
        });
        self.lapsed_at = None;
    }

    fn grant_plan(
        &mut self,
        order: &str,
        terms: &PlanTerms,
        bucket: BucketId,
        ends_at: Timestamp,
        arrears_paid: Dcu,
    ) {
        let source = BucketSource::Plan {
            plan: terms.plan.clone(),
            rank: terms.rank,
        };
        self.add_bucket(
            bucket,
            source,
            Some(order.into()),
            terms.grant_dcu,
            ends_at,
            arrears_paid,
        );
        self.totals.granted += terms.grant_dcu;
    }

    fn add_bucket(
        &mut self,
        id: BucketId,
        source: BucketSource,
        order: Option<String>,
        granted: Dcu,
        ends_at: Timestamp,
        arrears_paid: Dcu,
    ) {
        reserve_small(&mut self.buckets);
        self.buckets.push(Bucket {
            id,
            source,
            order,
            granted,
            remaining: granted - arrears_paid,
            state: BucketState::Active,
            ends_at,
        });
        self.next_bucket = self.next_bucket.max(id.saturating_add(1));
        self.pay_arrears(arrears_paid);
    }

    fn pay_arrears(&mut self, paid: Dcu) {
        self.arrears -= paid;
        self.totals.spent += paid;
    }

    fn record_order(
        &mut self,
        order: &str,
        plan: &str,
        effect: PurchaseEffect,
        payment: &crate::event::Payment,
    ) {
        self.orders.insert(
            order.into(),
            OrderRecord {
                plan: plan.into(),
                effect,
                price_cny: payment.price_cny,
                list_price_cny: payment.list_price_cny,
                price_reason: payment.price_reason.clone(),
                invoice: None,
            },
        );
    }

    fn apply_charge(&mut self, charge: &Charge) {
        for debit in &charge.debits {
            if let Some(bucket) = self.bucket_mut(debit.bucket) {
                bucket.remaining -= debit.amount;
            }
            self.totals.spent += debit.amount;
        }
        self.arrears += charge.arrears_added;
        self.totals.metered += charge.amount;
    }

    /// C1: plan and extension credit of the ended period becomes one inactive bucket.
    fn end_period(
        &mut self,
        at: Timestamp,
        carried: &[BucketAmount],
        carry_over_bucket: Option<BucketId>,
        window_ends_at: Timestamp,
    ) {
        self.buckets.retain(|bucket| {
            bucket.source == BucketSource::CarryOver || bucket.state != BucketState::Active
        });
        let amount: Dcu = carried.iter().map(|item| item.amount).sum();
        if let Some(id) = carry_over_bucket {
            reserve_small(&mut self.buckets);
            self.buckets.push(Bucket {
                id,
                source: BucketSource::CarryOver,
                order: None,
                granted: amount,
                remaining: amount,
                state: BucketState::Inactive,
                ends_at: window_ends_at,
            });
            self.next_bucket = self.next_bucket.max(id.saturating_add(1));
        }
        self.period = None;
        if self.queue.is_empty() {
            self.lapsed_at = Some(at);
        }
    }

    /// I1 and I2, checked after every fold step in debug builds.
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            for bucket in &self.buckets {
                debug_assert!(
                    !bucket.remaining.is_negative(),
                    "I2: bucket {} < 0",
                    bucket.id
                );
                debug_assert!(
                    bucket.remaining <= bucket.granted,
                    "I2: bucket {}",
                    bucket.id
                );
            }
            debug_assert!(!self.arrears.is_negative(), "arrears < 0");
            debug_assert!(self.conservation_holds(), "I1 broken for {}", self.id);
        }
    }

    /// I1: granted = spent + expired + forfeited + remaining, and spent = metered − arrears.
    pub fn conservation_holds(&self) -> bool {
        let remaining = self.active_total() + self.inactive_total();
        let totals = &self.totals;
        totals.granted == totals.spent + totals.expired + totals.forfeited + remaining
            && totals.spent == totals.metered - self.arrears
    }
}
