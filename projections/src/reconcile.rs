//! The reconciliation report (issue 6) for `[from, to)`, per account and in total.
//!
//! Balance = active + inactive − arrears (the booked balance, see `statement`); consumed =
//! metered usage (every `Charge.amount`, covered by credit or not). The identity
//! `opening + granted − consumed − expired − forfeited = closing` is then exact: carry-over
//! and activation move credit between active and inactive, and arrears paid by new credit
//! moves it from a bucket to the arrears, neither changes the balance.
//!
//! Revenue is what purchase events recorded as paid (P6) when they happened in the range.
//! Deferred revenue at an instant is the unspent credit valued at the price paid per DCU of
//! its bucket (a carry-over bucket inherits the weighted price of what it carried), plus the
//! price of plans bought but queued (their credit does not exist yet). Recognised revenue of
//! the range = revenue + deferred at the start − deferred at the end (consumed, expired and
//! forfeited credit is recognised). Money is rounded half up to the cent only in the totals
//! of deferred revenue.

use std::collections::{BTreeMap, HashMap};

use ledger::account::{AccountState, BucketSource};
use ledger::clock::{Timestamp, DAY_S};
use ledger::event::{BucketId, EventBody, Payment};
use ledger::Dcu;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use crate::statement::{booked_before, kind_name, walk, Balances, LoggedEvent};

/// Most business days a report lists day by day (ten years).
pub const MAX_REPORT_DAYS: i64 = 3_660;

/// One end of the range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct End {
    #[serde(flatten)]
    pub balances: Balances,
    /// Unspent credit valued at its price paid, plus queued plans (CNY, to the cent).
    pub deferred_cny: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Revenue {
    pub edu_cny: Decimal,
    pub non_edu_cny: Decimal,
    pub plans_cny: Decimal,
    pub extensions_cny: Decimal,
    pub total_cny: Decimal,
    /// Revenue of the range whose orders were invoiced by the end of the range.
    pub invoiced_cny: Decimal,
    /// Revenue of the range whose orders were not yet invoiced at the end of the range.
    pub not_invoiced_cny: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consumed {
    pub model: String,
    /// The job kind of a lease, or `usage` for a usage record (M11).
    pub kind: String,
    pub amount: Dcu,
}

/// The figures of one account, or of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub opening: End,
    pub closing: End,
    /// By source: `plan:trial`, `extension`, ...
    pub granted_by_source: BTreeMap<String, Dcu>,
    pub granted: Dcu,
    pub consumed_by: Vec<Consumed>,
    pub consumed: Dcu,
    pub expired: Dcu,
    pub forfeited: Dcu,
    pub revenue: Revenue,
    pub recognised_cny: Decimal,
    /// Invoices recorded in the range.
    pub invoices_recorded_cny: Decimal,
    /// Everything paid up to the end of the range and not yet invoiced then.
    pub not_invoiced_at_close_cny: Decimal,
    /// opening + granted − consumed − expired − forfeited = closing, exactly.
    pub identity_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountFigures {
    pub account: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// One business day (Asia/Shanghai) of the range, all accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DayRow {
    pub day: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub opening_balance: Dcu,
    pub granted: Dcu,
    pub consumed: Dcu,
    pub expired: Dcu,
    pub forfeited: Dcu,
    pub closing_balance: Dcu,
    pub revenue_cny: Decimal,
    pub invoices_recorded_cny: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub from: Timestamp,
    pub to: Timestamp,
    pub accounts: Vec<AccountFigures>,
    pub total: Figures,
    pub days: Vec<DayRow>,
    pub identity_ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("from ({from}) must be before to ({to})")]
    EmptyRange { from: Timestamp, to: Timestamp },
    #[error("the range spans more than {MAX_REPORT_DAYS} business days")]
    TooLong,
}

/// The report of `[from, to)` over the accounts' recorded events.
pub fn reconcile(
    accounts: &BTreeMap<String, Vec<LoggedEvent>>,
    from: Timestamp,
    to: Timestamp,
) -> Result<Report, ReportError> {
    if from >= to {
        return Err(ReportError::EmptyRange { from, to });
    }
    let days = day_bounds(from, to)?;
    let mut rows: Vec<DayRow> = days
        .iter()
        .map(|(start, end)| DayRow {
            day: start.business_day(),
            from: *start,
            to: *end,
            ..DayRow::default()
        })
        .collect();
    let mut per_account = Vec::new();
    let mut total = Figures::default();
    let mut consumed_total: BTreeMap<(String, String), Dcu> = BTreeMap::new();
    for (id, recorded) in accounts {
        let (figures, consumed) = account_figures(id, recorded, from, to, &days, &mut rows);
        add_figures(&mut total, &figures);
        for ((model, kind), amount) in consumed {
            *consumed_total.entry((model, kind)).or_default() += amount;
        }
        per_account.push(AccountFigures {
            account: id.clone(),
            figures,
        });
    }
    total.consumed_by = consumed_rows(consumed_total);
    total.identity_ok = identity(&total);
    let mut balance = total.opening.balances.balance;
    for row in &mut rows {
        row.opening_balance = balance;
        balance = balance + row.granted - row.consumed - row.expired - row.forfeited;
        row.closing_balance = balance;
    }
    for account in &mut per_account {
        normalize(&mut account.figures);
    }
    normalize(&mut total);
    for row in &mut rows {
        row.revenue_cny = row.revenue_cny.normalize();
        row.invoices_recorded_cny = row.invoices_recorded_cny.normalize();
    }
    let identity_ok = total.identity_ok
        && per_account
            .iter()
            .all(|account| account.figures.identity_ok)
        && balance == total.closing.balances.balance;
    Ok(Report {
        from,
        to,
        accounts: per_account,
        total,
        days: rows,
        identity_ok,
    })
}

/// Money without trailing zeros (`0`, not `0.0`).
fn normalize(figures: &mut Figures) {
    for end in [&mut figures.opening, &mut figures.closing] {
        end.deferred_cny = end.deferred_cny.normalize();
    }
    let revenue = &mut figures.revenue;
    for value in [
        &mut revenue.edu_cny,
        &mut revenue.non_edu_cny,
        &mut revenue.plans_cny,
        &mut revenue.extensions_cny,
        &mut revenue.total_cny,
        &mut revenue.invoiced_cny,
        &mut revenue.not_invoiced_cny,
        &mut figures.recognised_cny,
        &mut figures.invoices_recorded_cny,
        &mut figures.not_invoiced_at_close_cny,
    ] {
        *value = value.normalize();
    }
}

fn identity(figures: &Figures) -> bool {
    figures.opening.balances.balance + figures.granted
        - figures.consumed
        - figures.expired
        - figures.forfeited
        == figures.closing.balances.balance
}

fn add_figures(total: &mut Figures, figures: &Figures) {
    let add_end = |sum: &mut End, end: &End| {
        sum.balances.active += end.balances.active;
        sum.balances.inactive += end.balances.inactive;
        sum.balances.arrears += end.balances.arrears;
        sum.balances.balance += end.balances.balance;
        sum.deferred_cny += end.deferred_cny;
    };
    add_end(&mut total.opening, &figures.opening);
    add_end(&mut total.closing, &figures.closing);
    for (source, amount) in &figures.granted_by_source {
        *total.granted_by_source.entry(source.clone()).or_default() += *amount;
    }
    total.granted += figures.granted;
    total.consumed += figures.consumed;
    total.expired += figures.expired;
    total.forfeited += figures.forfeited;
    let revenue = &mut total.revenue;
    revenue.edu_cny += figures.revenue.edu_cny;
    revenue.non_edu_cny += figures.revenue.non_edu_cny;
    revenue.plans_cny += figures.revenue.plans_cny;
    revenue.extensions_cny += figures.revenue.extensions_cny;
    revenue.total_cny += figures.revenue.total_cny;
    revenue.invoiced_cny += figures.revenue.invoiced_cny;
    revenue.not_invoiced_cny += figures.revenue.not_invoiced_cny;
    total.recognised_cny += figures.recognised_cny;
    total.invoices_recorded_cny += figures.invoices_recorded_cny;
    total.not_invoiced_at_close_cny += figures.not_invoiced_at_close_cny;
}

fn consumed_rows(consumed: BTreeMap<(String, String), Dcu>) -> Vec<Consumed> {
    consumed
        .into_iter()
        .map(|((model, kind), amount)| Consumed {
            model,
            kind,
            amount,
        })
        .collect()
}

/// Business-day bounds covering `[from, to)`: cut at each +08:00 midnight.
fn day_bounds(from: Timestamp, to: Timestamp) -> Result<Vec<(Timestamp, Timestamp)>, ReportError> {
    let days = (to.seconds() - from.seconds()) / DAY_S + 2;
    if days > MAX_REPORT_DAYS {
        return Err(ReportError::TooLong);
    }
    let mut bounds = Vec::new();
    let mut start = from;
    while start < to {
        let end = start.next_business_midnight().min(to);
        bounds.push((start, end));
        start = end;
    }
    Ok(bounds)
}

fn day_index(days: &[(Timestamp, Timestamp)], at: Timestamp) -> Option<usize> {
    days.iter()
        .position(|(start, end)| *start <= at && at < *end)
}

/// Price paid per DCU of each live bucket, kept through the fold.
#[derive(Default)]
struct Prices {
    per_dcu: HashMap<BucketId, Decimal>,
}

impl Prices {
    fn price_of(payment: &Payment, grant: Dcu) -> Decimal {
        if grant.is_positive() {
            payment.price_cny / grant.decimal()
        } else {
            Decimal::ZERO
        }
    }

    fn follow(&mut self, before: &AccountState, body: &EventBody) {
        match body {
            EventBody::PlanStarted {
                terms,
                payment,
                bucket,
                ..
            }
            | EventBody::PlanUpgraded {
                terms,
                payment,
                bucket,
                ..
            } => {
                self.per_dcu
                    .insert(*bucket, Prices::price_of(payment, terms.grant_dcu));
            }
            EventBody::QueuedPlanStarted { order, bucket, .. } => {
                let grant = before
                    .queue
                    .iter()
                    .find(|queued| &queued.order == order)
                    .map_or(Dcu::ZERO, |queued| queued.terms.grant_dcu);
                let price = before
                    .orders
                    .get(order)
                    .map_or(Decimal::ZERO, |record| record.price_cny);
                let per_dcu = if grant.is_positive() {
                    price / grant.decimal()
                } else {
                    Decimal::ZERO
                };
                self.per_dcu.insert(*bucket, per_dcu);
            }
            EventBody::ExtensionGranted {
                grant_dcu,
                payment,
                bucket,
                ..
            } => {
                self.per_dcu
                    .insert(*bucket, Prices::price_of(payment, *grant_dcu));
            }
            EventBody::PeriodEnded {
                carried,
                carry_over_bucket: Some(into),
                ..
            } => {
                let amount: Dcu = carried.iter().map(|item| item.amount).sum();
                let value: Decimal = carried
                    .iter()
                    .map(|item| item.amount.decimal() * self.get(item.bucket))
                    .sum();
                let per_dcu = if amount.is_positive() {
                    value / amount.decimal()
                } else {
                    Decimal::ZERO
                };
                self.per_dcu.insert(*into, per_dcu);
            }
            _ => {}
        }
    }

    fn get(&self, bucket: BucketId) -> Decimal {
        self.per_dcu.get(&bucket).copied().unwrap_or_default()
    }

    /// Deferred revenue of a state: unspent credit at its price, plus queued plans.
    fn deferred(&self, state: &AccountState) -> Decimal {
        let credit: Decimal = state
            .buckets
            .iter()
            .map(|bucket| bucket.remaining.decimal() * self.get(bucket.id))
            .sum();
        let queued: Decimal = state
            .queue
            .iter()
            .filter_map(|queued| state.orders.get(&queued.order))
            .map(|record| record.price_cny)
            .sum();
        cents(credit + queued)
    }
}

fn cents(value: Decimal) -> Decimal {
    value
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

type ConsumedMap = BTreeMap<(String, String), Dcu>;

/// Applies an update to the day row of the event being folded.
type DayUpdater<'a> = dyn FnMut(&mut dyn FnMut(&mut DayRow)) + 'a;

fn account_figures(
    id: &str,
    recorded: &[LoggedEvent],
    from: Timestamp,
    to: Timestamp,
    days: &[(Timestamp, Timestamp)],
    rows: &mut [DayRow],
) -> (Figures, ConsumedMap) {
    let events = booked_before(id, recorded, to);
    let mut figures = Figures::default();
    let mut consumed: ConsumedMap = BTreeMap::new();
    let mut prices = Prices::default();
    let mut opening: Option<End> = None;
    let mut period_orders: Vec<String> = Vec::new();
    let closing_state = walk(id, &events, |before, logged| {
        let at = logged.event.at;
        let body = &logged.event.body;
        if at >= from && opening.is_none() {
            opening = Some(End {
                balances: Balances::of(before),
                deferred_cny: prices.deferred(before),
            });
        }
        if at >= from {
            let day = day_index(days, at);
            let mut row = |update: &mut dyn FnMut(&mut DayRow)| {
                if let Some(row) = day.and_then(|index| rows.get_mut(index)) {
                    update(row);
                }
            };
            flows(
                before,
                body,
                &mut figures,
                &mut consumed,
                &mut row,
                &mut period_orders,
            );
        }
        prices.follow(before, body);
    });
    let closing = End {
        balances: Balances::of(&closing_state),
        deferred_cny: prices.deferred(&closing_state),
    };
    figures.opening = opening.unwrap_or(closing);
    figures.closing = closing;
    for order in &period_orders {
        if let Some(record) = closing_state.orders.get(order) {
            if record.invoice.is_some() {
                figures.revenue.invoiced_cny += record.price_cny;
            } else {
                figures.revenue.not_invoiced_cny += record.price_cny;
            }
        }
    }
    let paid: Decimal = closing_state
        .orders
        .values()
        .map(|record| record.price_cny)
        .sum();
    let invoiced: Decimal = closing_state
        .invoices
        .values()
        .map(|invoice| invoice.amount_cny)
        .sum();
    figures.not_invoiced_at_close_cny = paid - invoiced;
    figures.recognised_cny =
        figures.revenue.total_cny + figures.opening.deferred_cny - figures.closing.deferred_cny;
    figures.consumed_by = consumed_rows(consumed.clone());
    figures.identity_ok = identity(&figures);
    (figures, consumed)
}

/// The flows of one event inside the range.
fn flows(
    before: &AccountState,
    body: &EventBody,
    figures: &mut Figures,
    consumed: &mut ConsumedMap,
    row: &mut DayUpdater<'_>,
    period_orders: &mut Vec<String>,
) {
    let mut grant = |figures: &mut Figures, source: String, amount: Dcu| {
        *figures.granted_by_source.entry(source).or_default() += amount;
        figures.granted += amount;
        row(&mut |day: &mut DayRow| day.granted += amount);
    };
    match body {
        EventBody::PlanStarted { terms, .. } | EventBody::PlanUpgraded { terms, .. } => {
            grant(figures, format!("plan:{}", terms.plan), terms.grant_dcu);
        }
        EventBody::QueuedPlanStarted { order, .. } => {
            if let Some(queued) = before.queue.iter().find(|queued| &queued.order == order) {
                grant(
                    figures,
                    format!("plan:{}", queued.terms.plan),
                    queued.terms.grant_dcu,
                );
            }
        }
        EventBody::ExtensionGranted { grant_dcu, .. } => {
            grant(figures, BucketSource::Extension.label(), *grant_dcu);
        }
        _ => {}
    }
    let mut paid = |figures: &mut Figures, order: &str, payment: &Payment, extension: bool| {
        let price = payment.price_cny;
        let revenue = &mut figures.revenue;
        revenue.total_cny += price;
        if payment.edu {
            revenue.edu_cny += price;
        } else {
            revenue.non_edu_cny += price;
        }
        if extension {
            revenue.extensions_cny += price;
        } else {
            revenue.plans_cny += price;
        }
        period_orders.push(order.into());
        row(&mut |day: &mut DayRow| day.revenue_cny += price);
    };
    match body {
        EventBody::PlanStarted { order, payment, .. }
        | EventBody::PlanUpgraded { order, payment, .. }
        | EventBody::PlanQueued { order, payment, .. } => paid(figures, order, payment, false),
        EventBody::ExtensionGranted { order, payment, .. } => paid(figures, order, payment, true),
        _ => {}
    }
    let mut consume = |figures: &mut Figures, model: &str, kind: String, amount: Dcu| {
        figures.consumed += amount;
        *consumed.entry((model.into(), kind)).or_default() += amount;
        row(&mut |day: &mut DayRow| day.consumed += amount);
    };
    match body {
        EventBody::UsageRecorded { model, charge, .. } => {
            consume(figures, model, "usage".into(), charge.amount)
        }
        EventBody::LeaseMetered { lease, charge, .. } => {
            let (model, kind) = before.running.get(lease).map_or_else(
                || ("unknown".to_string(), "unknown".to_string()),
                |running| (running.terms.model.clone(), kind_name(running.terms.kind)),
            );
            consume(figures, &model, kind, charge.amount);
        }
        EventBody::BucketExpired { amount, .. } => {
            figures.expired += *amount;
            row(&mut |day: &mut DayRow| day.expired += *amount);
        }
        EventBody::Banned { forfeited, .. } => {
            let amount: Dcu = forfeited.iter().map(|item| item.amount).sum();
            figures.forfeited += amount;
            row(&mut |day: &mut DayRow| day.forfeited += amount);
        }
        EventBody::InvoiceRecorded { amount_cny, .. } => {
            figures.invoices_recorded_cny += *amount_cny;
            row(&mut |day: &mut DayRow| day.invoices_recorded_cny += *amount_cny);
        }
        _ => {}
    }
}

/// The report as CSV: one row per account, one `total` row, then one row per business day.
pub fn to_csv(report: &Report) -> String {
    let mut out = String::from(
        "scope,name,from,to,opening_balance,granted,consumed,expired,forfeited,closing_balance,\
         opening_active,opening_inactive,opening_arrears,closing_active,closing_inactive,\
         closing_arrears,revenue_cny,edu_revenue_cny,non_edu_revenue_cny,plan_revenue_cny,\
         extension_revenue_cny,deferred_open_cny,deferred_close_cny,recognised_cny,\
         invoices_recorded_cny,not_invoiced_at_close_cny,identity_ok\n",
    );
    let figures_row = |scope: &str, name: &str, figures: &Figures| {
        let o = &figures.opening;
        let c = &figures.closing;
        let r = &figures.revenue;
        format!(
            "{scope},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(name),
            report.from,
            report.to,
            o.balances.balance,
            figures.granted,
            figures.consumed,
            figures.expired,
            figures.forfeited,
            c.balances.balance,
            o.balances.active,
            o.balances.inactive,
            o.balances.arrears,
            c.balances.active,
            c.balances.inactive,
            c.balances.arrears,
            r.total_cny,
            r.edu_cny,
            r.non_edu_cny,
            r.plans_cny,
            r.extensions_cny,
            o.deferred_cny,
            c.deferred_cny,
            figures.recognised_cny,
            figures.invoices_recorded_cny,
            figures.not_invoiced_at_close_cny,
            figures.identity_ok,
        )
    };
    for account in &report.accounts {
        out.push_str(&figures_row("account", &account.account, &account.figures));
    }
    out.push_str(&figures_row("total", "", &report.total));
    for day in &report.days {
        out.push_str(&format!(
            "day,{},{},{},{},{},{},{},{},{},,,,,,,{},,,,,,,,{},,\n",
            day.day,
            day.from,
            day.to,
            day.opening_balance,
            day.granted,
            day.consumed,
            day.expired,
            day.forfeited,
            day.closing_balance,
            day.revenue_cny,
            day.invoices_recorded_cny,
        ));
    }
    out
}

/// A text cell (an account id, a day), quoted when it needs it. Text a spreadsheet would
/// read as a formula (`=`, `+`, `-`, `@`, a tab or a carriage return first) is neutralised
/// with a leading `'` inside a quoted cell. Amount cells never come here: a negative amount
/// such as `-1.5` stays a number.
fn csv_field(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("\"'{}\"", text.replace('"', "\"\""))
    } else if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: &str, closing_balance: Dcu) -> AccountFigures {
        let mut figures = Figures::default();
        figures.closing.balances.balance = closing_balance;
        AccountFigures {
            account: id.into(),
            figures,
        }
    }

    #[test]
    fn csv_text_cells_that_look_like_formulas_are_neutralised_amounts_are_not() {
        let minus = Dcu::from_micros(-1_500_000);
        let report = Report {
            from: Timestamp::default(),
            to: Timestamp::default(),
            accounts: vec![
                account("=HYPERLINK(\"http:evil\",\"x\")", minus),
                account("+1", minus),
                account("-1+2", minus),
                account("@SUM(A1)", minus),
                account("\tx", minus),
                account("\rx", minus),
                account("a=b", minus),
                account("plain,comma", minus),
            ],
            total: Figures::default(),
            days: Vec::new(),
            identity_ok: true,
        };
        let csv = to_csv(&report);
        let names: Vec<&str> = csv
            .lines()
            .filter_map(|line| line.strip_prefix("account,"))
            .map(|rest| rest.split_once(",1970").map_or(rest, |(name, _)| name))
            .collect();
        assert_eq!(
            names,
            [
                "\"'=HYPERLINK(\"\"http:evil\"\",\"\"x\"\")\"",
                "\"'+1\"",
                "\"'-1+2\"",
                "\"'@SUM(A1)\"",
                "\"'\tx\"",
                "\"'\rx\"",
                "a=b",
                "\"plain,comma\"",
            ]
        );
        // The closing balance (column 10) of every account row is the bare number -1.5.
        let row = csv
            .lines()
            .find(|line| line.starts_with("account,\"'+1\","))
            .expect("row of +1");
        assert_eq!(row.split(',').nth(9), Some("-1.5"), "{row}");
    }
}
