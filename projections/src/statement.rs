//! Statements (issue 6): every change of an account's balance, one line per amount moved,
//! each naming the event that caused it, with the balance before and after.
//!
//! A statement is a fold of the account's events. `AccountState::evolve` gives the state
//! before and after each event; the lines are read off the amounts the event carries
//! (`Charge.debits`, `arrears_paid`, `PeriodEnded.carried`, `BucketExpired`,
//! `Banned.forfeited`), never recomputed. Balance here is the booked balance
//! `active + inactive − arrears`: what the log says, plus the time-driven events that are due
//! but not written yet (a query folds them in memory, SPEC §9; they have no revision).
//! Running leases' unbilled seconds (D4's live view) are not booked, so they are not lines.

use ledger::account::{AccountState, BucketState};
use ledger::clock::Timestamp;
use ledger::due;
use ledger::event::{BucketAmount, Charge, Event, EventBody};
use ledger::Dcu;
use rust_decimal::Decimal;
use serde::Serialize;

/// An event of an account's stream; `revision` is `None` for an event that is due but not
/// written yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub revision: Option<u64>,
    pub event: Event,
}

/// The events of an account as booked strictly before `until`: the recorded ones, then the
/// time-driven events due before `until` that no command has written yet.
pub fn booked_before(id: &str, recorded: &[LoggedEvent], until: Timestamp) -> Vec<LoggedEvent> {
    let mut events: Vec<LoggedEvent> = recorded
        .iter()
        .filter(|logged| logged.event.at < until)
        .cloned()
        .collect();
    let state = AccountState::replay(id, events.iter().map(|logged| &logged.event));
    let last = until.plus_seconds(-1);
    if last >= state.clock {
        events.extend(due::due(&state, last).into_iter().map(|event| LoggedEvent {
            revision: None,
            event,
        }));
    }
    events
}

/// As-of: the state a replay of the log up to `as_of` gives (events at ≤ `as_of`), with
/// everything due up to `as_of` folded in. Views (`views::balance`, `views::quota`) of it at
/// `as_of` are the answers the live engine gave at that instant.
pub fn state_as_of(id: &str, recorded: &[LoggedEvent], as_of: Timestamp) -> AccountState {
    let state = AccountState::replay(
        id,
        recorded
            .iter()
            .filter(|logged| logged.event.at <= as_of)
            .map(|logged| &logged.event),
    );
    due::advance(&state, as_of.max(state.clock))
}

/// Active, inactive, arrears and the balance they make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Balances {
    pub active: Dcu,
    pub inactive: Dcu,
    pub arrears: Dcu,
    /// active + inactive − arrears.
    pub balance: Dcu,
}

impl Balances {
    pub fn of(state: &AccountState) -> Balances {
        let active = state.active_total();
        let inactive = state.inactive_total();
        Balances {
            active,
            inactive,
            arrears: state.arrears,
            balance: active + inactive - state.arrears,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// New credit from an order (plan or extension pack).
    Grant,
    /// Credit taken from a bucket by metering or a usage record.
    Spend,
    /// Usage the buckets could not cover (D2).
    Arrears,
    /// New credit paying arrears (D2).
    ArrearsPaid,
    /// Credit that can no longer be used (C3).
    Expiry,
    /// Unspent period credit moved into an inactive carry-over bucket (C1).
    CarryOver,
    /// An inactive carry-over bucket became spendable (C2).
    Activation,
    /// Credit forfeited at a ban (A3).
    Forfeit,
}

/// One amount moved by one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    pub at: Timestamp,
    /// The stream revision of the event (`null`: due, not written yet).
    pub revision: Option<u64>,
    pub event: &'static str,
    pub kind: LineKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What it was for: the order, lease or usage record.
    pub detail: String,
    /// Changes of active, inactive and arrears.
    pub active: Dcu,
    pub inactive: Dcu,
    pub arrears: Dcu,
    /// The change of the balance (active + inactive − arrears).
    pub amount: Dcu,
    pub balance_before: Dcu,
    pub balance_after: Dcu,
}

/// An order (purchase) in the statement's range, with what it paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderLine {
    pub at: Timestamp,
    pub revision: Option<u64>,
    pub event: &'static str,
    pub order: String,
    pub plan: String,
    pub edu: bool,
    pub price_cny: Decimal,
    /// The invoice covering it at the end of the statement, if any.
    pub invoice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    pub at: Timestamp,
    pub revision: Option<u64>,
    pub invoice: String,
    pub item: String,
    pub orders: Vec<String>,
    pub amount_cny: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub account: String,
    /// `[from, to)`; `from` null: since the account opened.
    pub from: Option<Timestamp>,
    pub to: Timestamp,
    pub opening: Balances,
    pub closing: Balances,
    pub lines: Vec<StatementLine>,
    pub orders: Vec<OrderLine>,
    pub invoices: Vec<InvoiceLine>,
    /// Every event's lines sum to the change `evolve` made to the balance.
    pub consistent: bool,
}

/// Folds `events` from the empty state, calling `visit(before, event)` for each, with the
/// state before the event is applied. The state is never copied, so a walk costs what a
/// replay costs, whatever the length of the account's history.
pub fn walk(
    id: &str,
    events: &[LoggedEvent],
    mut visit: impl FnMut(&AccountState, &LoggedEvent),
) -> AccountState {
    walk_with_after(
        id,
        events,
        |before, logged| visit(before, logged),
        |(), _| {},
    )
}

/// [`walk`], calling `after(state)` once each event is applied; `visit` hands `after` what it
/// needs of the state before (`T`).
pub fn walk_with_after<T>(
    id: &str,
    events: &[LoggedEvent],
    mut visit: impl FnMut(&AccountState, &LoggedEvent) -> T,
    mut after: impl FnMut(T, &AccountState),
) -> AccountState {
    let mut state = AccountState::new(id);
    for logged in events {
        let seen = visit(&state, logged);
        state.evolve(&logged.event);
        after(seen, &state);
    }
    state
}

/// The statement of `[from, to)` of one account (from `None`: from the start).
pub fn statement(
    id: &str,
    recorded: &[LoggedEvent],
    from: Option<Timestamp>,
    to: Timestamp,
) -> Statement {
    let events = booked_before(id, recorded, to);
    let mut opening = Balances::default();
    let mut opened = false;
    let mut lines = Vec::new();
    let mut orders = Vec::new();
    let mut invoices = Vec::new();
    let mut consistent = true;
    let closing_state = walk_with_after(
        id,
        &events,
        |before, logged| {
            let inside = from.is_none_or(|from| logged.event.at >= from);
            if !inside {
                return None;
            }
            if !opened {
                opening = Balances::of(before);
                opened = true;
            }
            let start = Balances::of(before).balance;
            let mut event_lines = event_lines(before, logged);
            let mut running = start;
            for line in &mut event_lines {
                line.balance_before = running;
                running += line.amount;
                line.balance_after = running;
            }
            collect_orders(logged, &mut orders, &mut invoices);
            Some((running, event_lines))
        },
        |seen, after| {
            if let Some((running, event_lines)) = seen {
                if running != Balances::of(after).balance {
                    consistent = false;
                }
                lines.extend(event_lines);
            }
        },
    );
    let closing = Balances::of(&closing_state);
    if !opened {
        opening = closing;
    }
    for order in &mut orders {
        order.invoice = closing_state
            .orders
            .get(&order.order)
            .and_then(|record| record.invoice.clone());
    }
    Statement {
        account: id.into(),
        from,
        to,
        opening,
        closing,
        lines,
        orders,
        invoices,
        consistent,
    }
}

fn collect_orders(
    logged: &LoggedEvent,
    orders: &mut Vec<OrderLine>,
    invoices: &mut Vec<InvoiceLine>,
) {
    let event = &logged.event;
    let order_line = |order: &str, plan: &str, payment: &ledger::event::Payment| OrderLine {
        at: event.at,
        revision: logged.revision,
        event: event.body.type_name(),
        order: order.into(),
        plan: plan.into(),
        edu: payment.edu,
        price_cny: payment.price_cny,
        invoice: None,
    };
    match &event.body {
        EventBody::PlanStarted {
            order,
            terms,
            payment,
            ..
        }
        | EventBody::PlanUpgraded {
            order,
            terms,
            payment,
            ..
        }
        | EventBody::PlanQueued {
            order,
            terms,
            payment,
        } => orders.push(order_line(order, &terms.plan, payment)),
        EventBody::ExtensionGranted { order, payment, .. } => {
            orders.push(order_line(order, "extension", payment))
        }
        EventBody::InvoiceRecorded {
            invoice,
            orders: covered,
            amount_cny,
            item,
        } => invoices.push(InvoiceLine {
            at: event.at,
            revision: logged.revision,
            invoice: invoice.clone(),
            item: item.clone(),
            orders: covered.clone(),
            amount_cny: *amount_cny,
        }),
        _ => {}
    }
}

struct LineMaker<'a> {
    logged: &'a LoggedEvent,
    before: &'a AccountState,
    lines: Vec<StatementLine>,
}

impl LineMaker<'_> {
    fn push(
        &mut self,
        kind: LineKind,
        bucket: Option<u32>,
        detail: String,
        (active, inactive, arrears): (Dcu, Dcu, Dcu),
    ) {
        if active.is_zero() && inactive.is_zero() && arrears.is_zero() {
            return;
        }
        let source = bucket.and_then(|id| self.source_of(id));
        self.lines.push(StatementLine {
            at: self.logged.event.at,
            revision: self.logged.revision,
            event: self.logged.event.body.type_name(),
            kind,
            bucket,
            source,
            detail,
            active,
            inactive,
            arrears,
            amount: active + inactive - arrears,
            balance_before: Dcu::ZERO,
            balance_after: Dcu::ZERO,
        });
    }

    fn source_of(&self, id: u32) -> Option<String> {
        self.before
            .buckets
            .iter()
            .find(|bucket| bucket.id == id)
            .map(|bucket| bucket.source.label())
    }

    fn state_of(&self, id: u32) -> BucketState {
        self.before
            .buckets
            .iter()
            .find(|bucket| bucket.id == id)
            .map_or(BucketState::Active, |bucket| bucket.state)
    }

    fn grant(&mut self, bucket: u32, source: String, order: &str, grant: Dcu, paid: Dcu) {
        let zero = Dcu::ZERO;
        if !grant.is_zero() {
            self.lines.push(StatementLine {
                at: self.logged.event.at,
                revision: self.logged.revision,
                event: self.logged.event.body.type_name(),
                kind: LineKind::Grant,
                bucket: Some(bucket),
                source: Some(source.clone()),
                detail: format!("order {order}"),
                active: grant,
                inactive: zero,
                arrears: zero,
                amount: grant,
                balance_before: zero,
                balance_after: zero,
            });
        }
        self.arrears_paid(bucket, Some(source), paid);
    }

    fn arrears_paid(&mut self, bucket: u32, source: Option<String>, paid: Dcu) {
        if paid.is_zero() {
            return;
        }
        let zero = Dcu::ZERO;
        self.lines.push(StatementLine {
            at: self.logged.event.at,
            revision: self.logged.revision,
            event: self.logged.event.body.type_name(),
            kind: LineKind::ArrearsPaid,
            bucket: Some(bucket),
            source: source.or_else(|| self.source_of(bucket)),
            detail: "new credit pays arrears (D2)".into(),
            active: -paid,
            inactive: zero,
            arrears: -paid,
            amount: zero,
            balance_before: zero,
            balance_after: zero,
        });
    }

    fn charge(&mut self, charge: &Charge, detail: &str) {
        for debit in &charge.debits {
            self.push(
                LineKind::Spend,
                Some(debit.bucket),
                detail.into(),
                (-debit.amount, Dcu::ZERO, Dcu::ZERO),
            );
        }
        self.push(
            LineKind::Arrears,
            None,
            format!("{detail}: not covered by credit"),
            (Dcu::ZERO, Dcu::ZERO, charge.arrears_added),
        );
    }

    fn remove(&mut self, kind: LineKind, item: &BucketAmount, detail: String) {
        let change = match self.state_of(item.bucket) {
            BucketState::Active => (-item.amount, Dcu::ZERO, Dcu::ZERO),
            BucketState::Inactive => (Dcu::ZERO, -item.amount, Dcu::ZERO),
        };
        self.push(kind, Some(item.bucket), detail, change);
    }
}

/// The lines of one event, from the amounts it carries.
fn event_lines(before: &AccountState, logged: &LoggedEvent) -> Vec<StatementLine> {
    let mut maker = LineMaker {
        logged,
        before,
        lines: Vec::new(),
    };
    match &logged.event.body {
        EventBody::PlanStarted {
            order,
            terms,
            bucket,
            arrears_paid,
            ..
        }
        | EventBody::PlanUpgraded {
            order,
            terms,
            bucket,
            arrears_paid,
            ..
        } => maker.grant(
            *bucket,
            format!("plan:{}", terms.plan),
            order,
            terms.grant_dcu,
            *arrears_paid,
        ),
        EventBody::QueuedPlanStarted {
            order,
            bucket,
            arrears_paid,
            ..
        } => {
            let terms = before.queue.iter().find(|queued| &queued.order == order);
            if let Some(queued) = terms {
                maker.grant(
                    *bucket,
                    format!("plan:{}", queued.terms.plan),
                    order,
                    queued.terms.grant_dcu,
                    *arrears_paid,
                );
            }
        }
        EventBody::ExtensionGranted {
            order,
            grant_dcu,
            bucket,
            arrears_paid,
            ..
        } => maker.grant(
            *bucket,
            "extension".into(),
            order,
            *grant_dcu,
            *arrears_paid,
        ),
        EventBody::PeriodEnded {
            carried,
            carry_over_bucket,
            ..
        } => {
            for item in carried {
                let into = carry_over_bucket.map_or_else(String::new, |id| format!(" {id}"));
                maker.push(
                    LineKind::CarryOver,
                    Some(item.bucket),
                    format!("period ended: carried into carry-over bucket{into}"),
                    (-item.amount, item.amount, Dcu::ZERO),
                );
            }
        }
        EventBody::CarryOverActivated {
            bucket,
            arrears_paid,
            ..
        } => {
            let remaining = before
                .buckets
                .iter()
                .find(|found| found.id == *bucket)
                .map_or(Dcu::ZERO, |found| found.remaining);
            maker.push(
                LineKind::Activation,
                Some(*bucket),
                "a plan started inside the carry-over window".into(),
                (remaining, -remaining, Dcu::ZERO),
            );
            maker.arrears_paid(*bucket, None, *arrears_paid);
        }
        EventBody::BucketExpired { bucket, amount } => {
            let item = BucketAmount {
                bucket: *bucket,
                amount: *amount,
            };
            maker.remove(LineKind::Expiry, &item, "credit expired".into());
        }
        EventBody::Banned {
            forfeited, reason, ..
        } => {
            for item in forfeited {
                maker.remove(LineKind::Forfeit, item, format!("banned: {reason}"));
            }
        }
        EventBody::UsageRecorded {
            record,
            model,
            cards,
            seconds,
            charge,
            ..
        } => maker.charge(
            charge,
            &format!("usage record {record} ({model}, {cards} card(s), {seconds} s)"),
        ),
        EventBody::LeaseMetered {
            lease,
            seconds_total,
            charge,
            ..
        } => {
            let what = before
                .running
                .get(lease)
                .map_or_else(String::new, |running| {
                    format!(
                        ", {} {} × {} card(s)",
                        kind_name(running.terms.kind),
                        running.terms.model,
                        running.terms.cards
                    )
                });
            maker.charge(
                charge,
                &format!("lease {lease}{what}, metered to {seconds_total} s"),
            );
        }
        _ => {}
    }
    maker.lines
}

/// The wire name of a job kind.
pub fn kind_name(kind: ledger::event::JobKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|value| value.as_str().map(String::from))
        .unwrap_or_default()
}
