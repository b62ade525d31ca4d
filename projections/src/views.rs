//! Balance, quota and lease views (SPEC §6 D3, D4; §8 S1; §11).

use ledger::account::{AccountState, BucketState};
use ledger::clock::Timestamp;
use ledger::due;
use ledger::event::{LeaseEnd, Placement, PurchaseEffect, RevokeReason};
use ledger::Dcu;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketView {
    pub id: u32,
    pub source: String,
    pub state: BucketState,
    pub remaining: Dcu,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ends_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BalanceView {
    pub account: String,
    pub active: Dcu,
    pub inactive: Dcu,
    pub arrears: Dcu,
    pub available: Dcu,
    pub expired: Dcu,
    pub forfeited: Dcu,
    pub buckets: Vec<BucketView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaView {
    pub account: String,
    pub plan: Option<String>,
    pub period_ends_at: Option<Timestamp>,
    pub parallelism_cap: u32,
    pub units_in_use: u32,
    /// M3: units of queued leases, which count against the cap too.
    pub units_queued: u32,
    pub storage_allowance_gb: u64,
    pub storage_used_gb: u64,
    pub storage_reclaimed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Granted,
    Queued,
    Released,
    Expired,
    Revoked,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    pub lease: String,
    pub account: String,
    pub state: LeaseState,
    pub reason: Option<RevokeReason>,
    pub charged: Dcu,
    /// M4: where a granted lease's cards are (empty without a pool, or once it ended).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<Placement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub account: String,
    pub order: String,
    pub plan: String,
    pub effect: PurchaseEffect,
}

/// D3, D4: the balance at `as_of`, with running leases metered up to it in memory.
pub fn balance(state: &AccountState, as_of: Timestamp) -> BalanceView {
    let nothing_due = due::next_due_at(state).is_none_or(|instant| instant > as_of);
    if nothing_due && state.running.is_empty() {
        // D4 would change nothing: no lease to count, nothing due. Skip the copy.
        return balance_of_live(state);
    }
    balance_of_live(&due::live(state, as_of))
}

/// The balance of a state that is already live at its instant.
pub fn balance_of_live(live: &AccountState) -> BalanceView {
    let mut buckets: Vec<BucketView> = live
        .buckets
        .iter()
        .map(|bucket| {
            let active = bucket.state == BucketState::Active;
            BucketView {
                id: bucket.id,
                source: bucket.source.label(),
                state: bucket.state,
                remaining: bucket.remaining,
                expires_at: active.then_some(bucket.ends_at),
                window_ends_at: (!active).then_some(bucket.ends_at),
            }
        })
        .collect();
    buckets.sort_by_key(|bucket| bucket.id);
    BalanceView {
        account: live.id.clone(),
        active: live.active_total(),
        inactive: live.inactive_total(),
        arrears: live.arrears,
        available: live.available(),
        expired: live.totals.expired,
        forfeited: live.totals.forfeited,
        buckets,
    }
}

/// S1, M3: what the account may use at `as_of`.
pub fn quota(state: &AccountState, as_of: Timestamp) -> QuotaView {
    let live = due::advance(state, as_of);
    QuotaView {
        account: live.id.clone(),
        plan: live.period.as_ref().map(|period| period.terms.plan.clone()),
        period_ends_at: live.period.as_ref().map(|period| period.ends_at),
        parallelism_cap: live.parallelism_cap(),
        units_in_use: live.units_in_use(),
        units_queued: live.units_queued(),
        storage_allowance_gb: live.storage_allowance_gb(),
        storage_used_gb: live.storage_used_gb,
        storage_reclaimed: live.storage_reclaimed,
    }
}

/// A lease's state at `as_of`; `charged` is live for a running lease (D4).
pub fn lease(state: &AccountState, lease: &str, as_of: Timestamp) -> Option<LeaseView> {
    let live = due::live(state, as_of);
    lease_of_live(&live, lease)
}

/// A lease's view in a state that is already live at its instant.
pub fn lease_of_live(live: &AccountState, lease: &str) -> Option<LeaseView> {
    if let Some(running) = live.running.get(lease) {
        return Some(LeaseView {
            lease: lease.into(),
            account: live.id.clone(),
            state: LeaseState::Granted,
            reason: None,
            charged: running.charged,
            placement: running.placement.clone(),
        });
    }
    if live.queued_leases.contains_key(lease) {
        return Some(LeaseView {
            lease: lease.into(),
            account: live.id.clone(),
            state: LeaseState::Queued,
            reason: None,
            charged: Dcu::ZERO,
            placement: Vec::new(),
        });
    }
    let ended = live.ended.get(lease)?;
    let state = match ended.end {
        LeaseEnd::Released => LeaseState::Released,
        LeaseEnd::Expired => LeaseState::Expired,
        LeaseEnd::Revoked => LeaseState::Revoked,
        LeaseEnd::Cancelled => LeaseState::Cancelled,
    };
    Some(LeaseView {
        lease: lease.into(),
        account: live.id.clone(),
        state,
        reason: ended.reason,
        charged: ended.charged,
        placement: Vec::new(),
    })
}

/// P1–P5: how an order took effect.
pub fn order(state: &AccountState, order: &str) -> Option<OrderView> {
    let record = state.orders.get(order)?;
    Some(OrderView {
        account: state.id.clone(),
        order: order.into(),
        plan: record.plan.clone(),
        effect: record.effect,
    })
}
