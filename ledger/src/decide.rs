//! `decide`: a command at `now` becomes events, or a refusal with a SPEC error code. Pure.
//!
//! `decide` sees the state after `due(state, now)` has been folded in; it never reads a
//! clock and never writes. The same command twice has one effect (I5): orders, usage
//! records and leases are keyed by their ids, and a repeat produces no events.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::account::{AccountState, OrderRecord};
use crate::amount::{lease_cost, Dcu, MAX_ABS_DCU};
use crate::catalog::{self, Catalog};
use crate::clock::{Timestamp, PERIOD_S};
use crate::due::{metering, Emitter};
use crate::event::Event;
use crate::event::{
    BucketAmount, Charge, EventBody, JobKind, LeaseEnd, LeaseTerms, Payment, Placement, PlanTerms,
    RevokeReason,
};

/// Bounds on what one command may ask for; each far above real use.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_CARDS_PER_WORKER: u32 = 64;
pub const MAX_WORKERS: u32 = 64;
/// M11: one usage record covers at most a year of GPU time per card.
pub const MAX_USAGE_SECONDS: u64 = 366 * 86_400;
pub const MAX_USAGE_CARDS: u32 = 4_096;
pub const MAX_STORAGE_GB: u64 = 1_000_000_000;
pub const MAX_REASON_LEN: usize = 1_000;
/// Most orders one invoice may cover.
pub const MAX_INVOICE_ORDERS: usize = 1_000;
/// M3: a lease is admitted only if the balance lasts at least this long at its burn rate.
pub const MIN_CREDIT_SECONDS: u64 = 60;

/// The error codes of SPEC §11 (the REST API uses the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnknownAccount,
    AccountExists,
    AccountBanned,
    NoCurrentPeriod,
    InsufficientCredit,
    ParallelismExceeded,
    MultiCardNotSupported,
    StorageOverAllowance,
    UnknownLease,
    LeaseNotActive,
    TimeWentBackwards,
    InvalidRequest,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownAccount => "unknown_account",
            ErrorCode::AccountExists => "account_exists",
            ErrorCode::AccountBanned => "account_banned",
            ErrorCode::NoCurrentPeriod => "no_current_period",
            ErrorCode::InsufficientCredit => "insufficient_credit",
            ErrorCode::ParallelismExceeded => "parallelism_exceeded",
            ErrorCode::MultiCardNotSupported => "multi_card_not_supported",
            ErrorCode::StorageOverAllowance => "storage_over_allowance",
            ErrorCode::UnknownLease => "unknown_lease",
            ErrorCode::LeaseNotActive => "lease_not_active",
            ErrorCode::TimeWentBackwards => "time_went_backwards",
            ErrorCode::InvalidRequest => "invalid_request",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A command refused, with the code and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::InvalidRequest, message)
    }
}

/// What a command needs besides the state: the catalog in force and the lease settings.
#[derive(Debug, Clone)]
pub struct Context {
    pub catalog: Catalog,
    /// M6: 0 turns lease expiry off.
    pub lease_ttl_s: u32,
}

impl Default for Context {
    fn default() -> Context {
        Context {
            catalog: Catalog::default(),
            lease_ttl_s: 90,
        }
    }
}

/// A lease request (M1, M2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub lease: String,
    pub kind: JobKind,
    pub model: String,
    pub cards_per_worker: u32,
    pub workers: u32,
}

/// Commands addressed to one account. Lease commands are routed to the lease's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open {
        edu: bool,
    },
    Buy {
        order: String,
        plan: String,
        /// P6: a price other than the list price, with its reason.
        price_cny: Option<Decimal>,
        price_reason: Option<String>,
    },
    Login,
    Storage {
        gb: u64,
    },
    Ban {
        reason: String,
    },
    RecordUsage {
        record: String,
        model: String,
        cards: u32,
        seconds: u64,
        started_at: Option<Timestamp>,
    },
    RequestLease(LeaseRequest),
    Heartbeat {
        lease: String,
    },
    Release {
        lease: String,
    },
    /// An invoice (技术服务费) for paid orders of the account; its amount is the sum of
    /// their prices. The same invoice id again with the same orders has one effect.
    RecordInvoice {
        invoice: String,
        orders: Vec<String>,
    },
}

/// Checks an id (account, order, lease, record): 1 to 128 printable ASCII characters
/// without spaces, so it is safe in logs, URLs and stream names.
pub fn check_id(what: &str, id: &str) -> Result<(), Refusal> {
    let fine = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b'/');
    if !fine {
        return Err(Refusal::invalid(format!(
            "{what} must be 1 to {MAX_ID_LEN} printable ASCII characters without spaces or '/'"
        )));
    }
    if id == "." || id == ".." {
        // A path segment of `.` or `..` is resolved away by URL normalisation, so such an
        // account or lease could never be reached at `/v1/accounts/{id}` or `/v1/leases/{id}`.
        return Err(Refusal::invalid(format!(
            "{what} must not be \".\" or \"..\" (they cannot be addressed in a URL): pick \
             another id"
        )));
    }
    Ok(())
}

/// A reason (a price's, a ban's) is kept in the log and shown to people: at most
/// `MAX_REASON_LEN` bytes, and no control characters.
fn reason_is_fine(reason: &str) -> bool {
    reason.len() <= MAX_REASON_LEN && !reason.chars().any(char::is_control)
}

/// The events a command produces at `now`, given the state after the due events.
pub fn decide(
    state: &AccountState,
    context: &Context,
    command: &Command,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    match command {
        Command::Open { edu } => open(state, *edu, now),
        Command::Buy {
            order,
            plan,
            price_cny,
            price_reason,
        } => buy(
            state,
            context,
            order,
            plan,
            *price_cny,
            price_reason.as_deref(),
            now,
        ),
        Command::Login => {
            require_open(state)?;
            Ok(vec![event(now, EventBody::LoggedIn)])
        }
        Command::Storage { gb } => {
            require_open(state)?;
            if *gb > MAX_STORAGE_GB {
                return Err(Refusal::invalid(format!(
                    "gb must be at most {MAX_STORAGE_GB}"
                )));
            }
            Ok(vec![event(now, EventBody::StorageReported { gb: *gb })])
        }
        Command::Ban { reason } => ban(state, reason, now),
        Command::RecordUsage {
            record,
            model,
            cards,
            seconds,
            started_at,
        } => record_usage(
            state,
            context,
            record,
            model,
            *cards,
            *seconds,
            *started_at,
            now,
        ),
        Command::RequestLease(request) => request_lease(state, context, request, now),
        Command::Heartbeat { lease } => heartbeat(state, lease, now),
        Command::Release { lease } => release(state, lease, now),
        Command::RecordInvoice { invoice, orders } => record_invoice(state, invoice, orders, now),
    }
}

/// Invoices: only paid orders of this account, none invoiced twice; the same invoice id
/// with the same orders again answers the first and writes nothing.
fn record_invoice(
    state: &AccountState,
    invoice: &str,
    orders: &[String],
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    require_open(state)?;
    check_id("invoice", invoice)?;
    if let Some(recorded) = state.invoices.get(invoice) {
        let same_orders = recorded.orders.len() == orders.len()
            && orders.iter().all(|order| recorded.orders.contains(order));
        return if same_orders {
            Ok(Vec::new())
        } else {
            Err(Refusal::invalid(format!(
                "invoice {invoice:?} was already recorded for other orders ({})",
                recorded.orders.join(", ")
            )))
        };
    }
    if orders.is_empty() || orders.len() > MAX_INVOICE_ORDERS {
        return Err(Refusal::invalid(format!(
            "an invoice covers 1 to {MAX_INVOICE_ORDERS} orders"
        )));
    }
    let mut amount_cny = Decimal::ZERO;
    for (index, order) in orders.iter().enumerate() {
        check_id("order", order)?;
        if orders[..index].contains(order) {
            return Err(Refusal::invalid(format!(
                "order {order:?} is listed twice on invoice {invoice:?}"
            )));
        }
        let Some(record) = state.orders.get(order) else {
            return Err(Refusal::invalid(format!(
                "order {order:?} is not an order of account {:?}",
                state.id
            )));
        };
        if let Some(other) = &record.invoice {
            return Err(Refusal::invalid(format!(
                "order {order:?} is already invoiced on invoice {other:?}"
            )));
        }
        if !record.price_cny.is_sign_positive() || record.price_cny.is_zero() {
            return Err(Refusal::invalid(format!(
                "order {order:?} was not paid (price {} CNY): nothing to invoice",
                record.price_cny
            )));
        }
        amount_cny += record.price_cny;
    }
    let body = EventBody::InvoiceRecorded {
        invoice: invoice.into(),
        orders: orders.to_vec(),
        amount_cny: amount_cny.normalize(),
        item: crate::event::INVOICE_ITEM.into(),
    };
    Ok(vec![event(now, body)])
}

fn event(at: Timestamp, body: EventBody) -> Event {
    Event { at, body }
}

fn require_open(state: &AccountState) -> Result<(), Refusal> {
    if state.opened {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::UnknownAccount,
            format!("account {:?} is not open", state.id),
        ))
    }
}

fn require_not_banned(state: &AccountState) -> Result<(), Refusal> {
    if state.banned {
        Err(Refusal::new(
            ErrorCode::AccountBanned,
            format!("account {:?} is banned", state.id),
        ))
    } else {
        Ok(())
    }
}

/// A1
fn open(state: &AccountState, edu: bool, now: Timestamp) -> Result<Vec<Event>, Refusal> {
    if state.opened {
        return Err(Refusal::new(
            ErrorCode::AccountExists,
            format!("account {:?} already exists", state.id),
        ));
    }
    check_id("account", &state.id)?;
    let body = EventBody::AccountOpened {
        account: state.id.clone(),
        edu,
    };
    Ok(vec![event(now, body)])
}

/// P6: the price recorded for an order.
fn payment(
    context: &Context,
    edu: bool,
    list: (Decimal, Decimal),
    price_cny: Option<Decimal>,
    price_reason: Option<&str>,
) -> Result<Payment, Refusal> {
    let list_price_cny = if edu { list.1 } else { list.0 };
    let reason = given_reason(price_reason);
    if reason.is_some_and(|reason| !reason_is_fine(reason)) {
        return Err(Refusal::invalid(format!(
            "price_reason must be at most {MAX_REASON_LEN} bytes without control characters"
        )));
    }
    let price = price_cny.unwrap_or(list_price_cny);
    if !catalog::price_is_valid(price) {
        return Err(Refusal::invalid(
            "price_cny must be between 0 and 1e9 CNY with at most 2 decimals",
        ));
    }
    if price != list_price_cny && reason.is_none() {
        return Err(Refusal::invalid(format!(
            "a price other than the list price ({list_price_cny} CNY) needs a price_reason"
        )));
    }
    // U1: amounts are kept without trailing zeros (10.50 is recorded as 10.5).
    Ok(Payment {
        catalog_version: context.catalog.version.clone(),
        edu,
        list_price_cny: list_price_cny.normalize(),
        price_cny: price.normalize(),
        price_reason: reason.map(String::from),
    })
}

/// The reason a request gives, as it is recorded: trimmed, and none when empty.
fn given_reason(price_reason: Option<&str>) -> Option<&str> {
    price_reason
        .map(str::trim)
        .filter(|reason| !reason.is_empty())
}

/// I5: an order id already recorded answers the first effect only if the request is the
/// same: the same plan, the same price (none given means the list price recorded then) and
/// the same reason. Anything else is refused, so a changed order never passes as recorded.
fn repeat_order(
    order: &str,
    recorded: &OrderRecord,
    plan: &str,
    price_cny: Option<Decimal>,
    price_reason: Option<&str>,
) -> Result<Vec<Event>, Refusal> {
    if recorded.plan != plan {
        return Err(Refusal::invalid(format!(
            "order {order:?} was already recorded for plan {:?}: use a new order id for \
             another plan",
            recorded.plan
        )));
    }
    let price = price_cny.unwrap_or(recorded.list_price_cny);
    let reason = given_reason(price_reason);
    if price != recorded.price_cny || reason != recorded.price_reason.as_deref() {
        let recorded_reason = match &recorded.price_reason {
            Some(reason) => format!("reason {reason:?}"),
            None => "no reason".into(),
        };
        return Err(Refusal::invalid(format!(
            "order {order:?} was already recorded at {} CNY with {recorded_reason}: send the \
             same price_cny and price_reason again, or use a new order id",
            recorded.price_cny
        )));
    }
    Ok(Vec::new())
}

/// P1–P6
fn buy(
    state: &AccountState,
    context: &Context,
    order: &str,
    plan: &str,
    price_cny: Option<Decimal>,
    price_reason: Option<&str>,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    require_open(state)?;
    check_id("order", order)?;
    if let Some(recorded) = state.orders.get(order) {
        return repeat_order(order, recorded, plan, price_cny, price_reason);
    }
    let catalog = &context.catalog;
    if plan == catalog.extension.id {
        let pack = &catalog.extension;
        let payment = payment(
            context,
            state.edu,
            (pack.price_cny, pack.edu_price_cny),
            price_cny,
            price_reason,
        )?;
        require_not_banned(state)?;
        return extension(state, order, pack.grant_dcu, payment, now);
    }
    let Some(plan) = catalog.plan(plan) else {
        return Err(Refusal::invalid(format!("unknown plan {plan:?}")));
    };
    let payment = payment(
        context,
        state.edu,
        (plan.price_cny, plan.edu_price_cny),
        price_cny,
        price_reason,
    )?;
    require_not_banned(state)?;
    let terms = PlanTerms {
        plan: plan.id.clone(),
        rank: plan.rank,
        grant_dcu: plan.grant_dcu,
        parallelism_cap: plan.parallelism_cap,
        storage_allowance_gb: catalog.storage_allowance_gb(plan),
    };
    let order = order.to_string();
    let bucket = state.next_bucket;
    let period_ends_at = now.plus_seconds(PERIOD_S);
    let arrears_paid = state.arrears_paid_by(terms.grant_dcu);
    match &state.period {
        None => {
            let mut emitter = Emitter::new(state.clone());
            let body = EventBody::PlanStarted {
                order,
                arrears_paid: state.arrears_paid_by_plan_start(terms.grant_dcu, now),
                terms,
                payment,
                bucket,
                period_ends_at,
            };
            emitter.emit(now, body);
            emitter.activate_carry_over(now, period_ends_at);
            Ok(emitter.events)
        }
        Some(current) if terms.rank > current.terms.rank => {
            let body = EventBody::PlanUpgraded {
                order,
                terms,
                payment,
                bucket,
                period_ends_at,
                arrears_paid,
            };
            Ok(vec![event(now, body)])
        }
        Some(_) => Ok(vec![event(
            now,
            EventBody::PlanQueued {
                order,
                terms,
                payment,
            },
        )]),
    }
}

/// P5
fn extension(
    state: &AccountState,
    order: &str,
    grant_dcu: Dcu,
    payment: Payment,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    let Some(period) = &state.period else {
        return Err(Refusal::new(
            ErrorCode::NoCurrentPeriod,
            "an extension pack needs a current period: buy a plan first",
        ));
    };
    let body = EventBody::ExtensionGranted {
        order: order.into(),
        grant_dcu,
        payment,
        bucket: state.next_bucket,
        expires_at: period.ends_at,
        arrears_paid: state.arrears_paid_by(grant_dcu),
    };
    Ok(vec![event(now, body)])
}

/// A3: running leases are metered up to the ban and revoked; all credit is forfeited;
/// queued plans are cancelled. A second ban changes nothing.
fn ban(state: &AccountState, reason: &str, now: Timestamp) -> Result<Vec<Event>, Refusal> {
    require_open(state)?;
    if state.banned {
        return Ok(Vec::new());
    }
    if given_reason(Some(reason)).is_none() || !reason_is_fine(reason) {
        return Err(Refusal::invalid(format!(
            "a ban needs a reason (the audit trail keeps it): 1 to {MAX_REASON_LEN} bytes \
             without control characters"
        )));
    }
    let mut emitter = Emitter::new(state.clone());
    emitter.meter_running(now, false);
    emitter.end_running(now, LeaseEnd::Revoked, Some(RevokeReason::AccountBanned));
    let queued: Vec<String> = emitter.state.queued_leases.keys().cloned().collect();
    for lease in queued {
        let body = EventBody::LeaseEnded {
            lease,
            end: LeaseEnd::Cancelled,
            reason: Some(RevokeReason::AccountBanned),
        };
        emitter.emit(now, body);
    }
    let forfeited = emitter
        .state
        .buckets
        .iter()
        .filter(|bucket| bucket.remaining.is_positive())
        .map(|bucket| BucketAmount {
            bucket: bucket.id,
            amount: bucket.remaining,
        })
        .collect();
    let cancelled_orders = emitter
        .state
        .queue
        .iter()
        .map(|queued| queued.order.clone())
        .collect();
    let body = EventBody::Banned {
        reason: reason.into(),
        forfeited,
        cancelled_orders,
    };
    emitter.emit(now, body);
    Ok(emitter.events)
}

/// M11: usage measured elsewhere, charged when recorded (D2: even when banned).
#[allow(clippy::too_many_arguments)]
fn record_usage(
    state: &AccountState,
    context: &Context,
    record: &str,
    model: &str,
    cards: u32,
    seconds: u64,
    started_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    require_open(state)?;
    check_id("record", record)?;
    if let Some(recorded) = state.records.get(record) {
        let same =
            recorded.model == model && recorded.cards == cards && recorded.seconds == seconds;
        return if same {
            Ok(Vec::new())
        } else {
            Err(Refusal::invalid(format!(
                "record {record:?} was already recorded with other values"
            )))
        };
    }
    let Some(gpu) = context.catalog.model(model) else {
        return Err(Refusal::invalid(format!("unknown GPU model {model:?}")));
    };
    if cards == 0 || cards > MAX_USAGE_CARDS {
        return Err(Refusal::invalid(format!(
            "cards must be 1 to {MAX_USAGE_CARDS}"
        )));
    }
    if seconds == 0 || seconds > MAX_USAGE_SECONDS {
        return Err(Refusal::invalid(format!(
            "seconds must be 1 to {MAX_USAGE_SECONDS}: a usage record covers at least one second"
        )));
    }
    let cost = lease_cost(gpu.rate_dcu_per_hour, cards, seconds);
    let charge = state.plan_charge(cost);
    check_totals_bound(state, &charge)?;
    let body = EventBody::UsageRecorded {
        record: record.into(),
        model: model.into(),
        cards,
        seconds,
        started_at: started_at.unwrap_or(now.plus_seconds(-(seconds as i64))),
        charge,
    };
    Ok(vec![event(now, body)])
}

/// U1, D2: no account total (arrears, metered, spent) may pass [`MAX_ABS_DCU`], the largest
/// amount the ledger holds. Only a usage record (M11) can get there: lease metering spends at
/// most the active credit plus less than a second of the leases' cost (M7), so it is never
/// refused.
fn check_totals_bound(state: &AccountState, charge: &Charge) -> Result<(), Refusal> {
    let bound = Dcu::whole(MAX_ABS_DCU);
    let debited: Dcu = charge.debits.iter().map(|debit| debit.amount).sum();
    let totals = [
        ("arrears", state.arrears + charge.arrears_added),
        ("metered", state.totals.metered + charge.amount),
        ("spent", state.totals.spent + debited),
    ];
    match totals.iter().find(|(_, total)| *total > bound) {
        None => Ok(()),
        Some((name, total)) => Err(Refusal::invalid(format!(
            "this record's cost ({} DCU) would take the account's {name} total to {total} DCU, \
             past the bound of {MAX_ABS_DCU} DCU: record less usage (fewer cards or seconds)",
            charge.amount
        ))),
    }
}

/// M1, M2: the structural checks of a lease request.
fn check_lease_shape(context: &Context, request: &LeaseRequest) -> Result<LeaseTerms, Refusal> {
    check_id("lease", &request.lease)?;
    let Some(model) = context.catalog.model(&request.model) else {
        return Err(Refusal::invalid(format!(
            "unknown GPU model {:?}",
            request.model
        )));
    };
    if request.cards_per_worker == 0 || request.cards_per_worker > MAX_CARDS_PER_WORKER {
        return Err(Refusal::invalid(format!(
            "cards per worker must be 1 to {MAX_CARDS_PER_WORKER}"
        )));
    }
    if request.workers == 0 || request.workers > MAX_WORKERS {
        return Err(Refusal::invalid(format!(
            "workers must be 1 to {MAX_WORKERS}"
        )));
    }
    if request.workers > 1 && request.kind != JobKind::RunTask {
        return Err(Refusal::invalid(
            "only run_task jobs may have more than one worker",
        ));
    }
    // Bounded above (64 × 64, and the catalog's units per card), so these cannot overflow;
    // checked all the same.
    let cards = request.cards_per_worker.saturating_mul(request.workers);
    let units = cards
        .checked_mul(model.units_per_card)
        .ok_or_else(|| Refusal::invalid("the lease's units do not fit a 32-bit count"))?;
    Ok(LeaseTerms {
        kind: request.kind,
        model: model.id.clone(),
        cards_per_worker: request.cards_per_worker,
        workers: request.workers,
        cards,
        units,
        rate_dcu_per_hour: model.rate_dcu_per_hour,
        ttl_s: context.lease_ttl_s,
    })
}

/// M3: admission, checked in the SPEC's order; the first that applies wins.
pub fn admit(
    state: &AccountState,
    context: &Context,
    request: &LeaseRequest,
    now: Timestamp,
) -> Result<LeaseTerms, Refusal> {
    let terms = check_lease_shape(context, request)?;
    check_admission(state, context, &terms, state.units_queued(), now)?;
    Ok(terms)
}

/// M4: a queued lease is checked again (M3) when cards free up for it; its own units are
/// already among the queued ones.
pub fn admit_queued(
    state: &AccountState,
    context: &Context,
    lease: &str,
    now: Timestamp,
) -> Result<LeaseTerms, Refusal> {
    let Some(queued) = state.queued_leases.get(lease) else {
        return Err(lease_refusal(state, lease));
    };
    let other_queued = state.units_queued().saturating_sub(queued.terms.units);
    check_admission(state, context, &queued.terms, other_queued, now)?;
    Ok(queued.terms.clone())
}

/// The account checks of M3, after the shape checks.
fn check_admission(
    state: &AccountState,
    context: &Context,
    terms: &LeaseTerms,
    queued_units: u32,
    now: Timestamp,
) -> Result<(), Refusal> {
    require_open(state)?;
    require_not_banned(state)?;
    if state.period.is_none() {
        return Err(Refusal::new(
            ErrorCode::NoCurrentPeriod,
            "no current period: buy a plan first",
        ));
    }
    let multi_card = context
        .catalog
        .model(&terms.model)
        .is_some_and(|model| model.multi_card);
    if !multi_card && terms.cards > 1 {
        return Err(Refusal::new(
            ErrorCode::MultiCardNotSupported,
            format!("{} jobs may hold one card only", terms.model),
        ));
    }
    if state.storage_used_gb > state.storage_allowance_gb() {
        return Err(Refusal::new(
            ErrorCode::StorageOverAllowance,
            format!(
                "storage used ({} GB) is over the allowance ({} GB): free some space first",
                state.storage_used_gb,
                state.storage_allowance_gb()
            ),
        ));
    }
    let live = state.live_available(now);
    let minute = lease_cost(terms.rate_dcu_per_hour, terms.cards, MIN_CREDIT_SECONDS);
    if !live.is_positive() || live < minute {
        return Err(Refusal::new(
            ErrorCode::InsufficientCredit,
            format!(
                "balance {live} DCU lasts less than {MIN_CREDIT_SECONDS} s of this job ({minute} DCU)"
            ),
        ));
    }
    let in_use = state.units_in_use() + queued_units;
    if in_use + terms.units > state.parallelism_cap() {
        return Err(Refusal::new(
            ErrorCode::ParallelismExceeded,
            format!(
                "{} units granted or queued + {} requested exceed the cap of {}",
                in_use,
                terms.units,
                state.parallelism_cap()
            ),
        ));
    }
    Ok(())
}

/// M3, M10: without a pool, every admitted lease finds its cards.
fn request_lease(
    state: &AccountState,
    context: &Context,
    request: &LeaseRequest,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    place_lease(state, context, request, Some(Vec::new()), now)
}

/// M3, M4, M10: an admitted lease is granted on `placement`, or queued when the pool had no
/// cards for it (`None`). The pool is the scheduler's; this only records its answer.
pub fn place_lease(
    state: &AccountState,
    context: &Context,
    request: &LeaseRequest,
    placement: Option<Vec<Placement>>,
    now: Timestamp,
) -> Result<Vec<Event>, Refusal> {
    if state.knows_lease(&request.lease) {
        return Ok(Vec::new());
    }
    let terms = admit(state, context, request, now)?;
    let lease = request.lease.clone();
    let body = match placement {
        Some(placement) => EventBody::LeaseGranted {
            lease,
            terms,
            placement,
        },
        None => EventBody::LeaseQueued { lease, terms },
    };
    Ok(vec![event(now, body)])
}

/// M4: the outcome for a queued lease whose turn came: granted on `placement` if it still
/// passes admission, else cancelled with the code it fails as its reason.
pub fn grant_queued(
    state: &AccountState,
    context: &Context,
    lease: &str,
    placement: Vec<Placement>,
    now: Timestamp,
) -> Event {
    let body = match admit_queued(state, context, lease, now) {
        Ok(terms) => EventBody::LeaseGranted {
            lease: lease.into(),
            terms,
            placement,
        },
        Err(refusal) => return cancelled(lease, cancel_reason(refusal.code), now),
    };
    event(now, body)
}

/// M4: a queued lease that will never be granted, cancelled with `reason` (the scheduler's
/// own reasons, such as a pool too small for it).
pub fn cancel_queued(lease: &str, reason: RevokeReason, now: Timestamp) -> Event {
    cancelled(lease, Some(reason), now)
}

fn cancelled(lease: &str, reason: Option<RevokeReason>, now: Timestamp) -> Event {
    let body = EventBody::LeaseEnded {
        lease: lease.into(),
        end: LeaseEnd::Cancelled,
        reason,
    };
    event(now, body)
}

/// The reason a queued lease is cancelled with, from the admission code it failed.
fn cancel_reason(code: ErrorCode) -> Option<RevokeReason> {
    match code {
        ErrorCode::AccountBanned => Some(RevokeReason::AccountBanned),
        ErrorCode::NoCurrentPeriod => Some(RevokeReason::NoCurrentPeriod),
        ErrorCode::StorageOverAllowance => Some(RevokeReason::StorageOverAllowance),
        ErrorCode::InsufficientCredit => Some(RevokeReason::InsufficientCredit),
        ErrorCode::ParallelismExceeded => Some(RevokeReason::ParallelismExceeded),
        _ => None,
    }
}

fn lease_refusal(state: &AccountState, lease: &str) -> Refusal {
    if state.knows_lease(lease) {
        Refusal::new(
            ErrorCode::LeaseNotActive,
            format!("lease {lease:?} is not running"),
        )
    } else {
        Refusal::new(ErrorCode::UnknownLease, format!("no lease {lease:?}"))
    }
}

/// M6: a heartbeat meters the seconds since the last metering.
fn heartbeat(state: &AccountState, lease: &str, now: Timestamp) -> Result<Vec<Event>, Refusal> {
    if !state.running.contains_key(lease) {
        return Err(lease_refusal(state, lease));
    }
    Ok(metering(state, lease, now, true).into_iter().collect())
}

/// M10: release meters up to now and ends the lease; an ended lease answers its final state.
fn release(state: &AccountState, lease: &str, now: Timestamp) -> Result<Vec<Event>, Refusal> {
    if state.ended.contains_key(lease) {
        return Ok(Vec::new());
    }
    if state.queued_leases.contains_key(lease) {
        // M4: releasing a queued lease cancels it.
        let body = EventBody::LeaseEnded {
            lease: lease.into(),
            end: LeaseEnd::Cancelled,
            reason: None,
        };
        return Ok(vec![event(now, body)]);
    }
    if !state.running.contains_key(lease) {
        return Err(lease_refusal(state, lease));
    }
    let mut events: Vec<Event> = metering(state, lease, now, false).into_iter().collect();
    let body = EventBody::LeaseEnded {
        lease: lease.into(),
        end: LeaseEnd::Released,
        reason: None,
    };
    events.push(event(now, body));
    Ok(events)
}
