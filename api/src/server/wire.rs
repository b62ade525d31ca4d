//! The API's own request and response shapes (ARCHITECTURE: only `api` knows the wire).
//! Amounts are decimal strings, instants RFC 3339, field names as in SPEC §11.

use ledger::account::BucketState;
use ledger::catalog::Catalog;
use ledger::clock::Timestamp;
use ledger::event::{JobKind, LeaseTerms, PurchaseEffect, RevokeReason};
use ledger::Dcu;
use projections::views::{BalanceView, BucketView, LeaseState, OrderView, QuotaView};
use scheduler::PoolView;

use super::engine_task::LeaseInfo;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most events one page of `GET /v1/accounts/{id}/events` returns.
pub const MAX_EVENTS_PAGE: usize = 1_000;
/// The page size when `limit` is not given.
pub const DEFAULT_EVENTS_PAGE: usize = 100;

/// A1: open an account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountRequest {
    /// 1 to 128 printable ASCII characters, no spaces or `/`, not `.` or `..`.
    pub id: String,
    /// Edu users pay edu prices (P6).
    #[serde(default)]
    pub edu: bool,
}

/// P1–P6: record an order (idempotent by `order`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub order: String,
    /// `trial`, `basic`, `advanced` or `extension` (the catalog's ids).
    pub plan: String,
    /// A price other than the list price (decimal string); needs `price_reason`.
    #[serde(
        default,
        deserialize_with = "ledger::amount::plain::non_negative_option"
    )]
    #[schema(value_type = Option<String>)]
    pub price_cny: Option<Decimal>,
    #[serde(default)]
    pub price_reason: Option<String>,
}

/// M11: GPU-seconds measured elsewhere.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    /// The record id (idempotent).
    pub record: String,
    pub model: String,
    /// 1 to 4096.
    pub cards: u32,
    /// 1 to 31 622 400 (366 days).
    pub seconds: u64,
}

/// S1: storage used now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageRequest {
    pub gb: u64,
}

/// A3: ban an account (permanent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    pub reason: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AsOfQuery {
    /// RFC 3339; default: the server's now. A past instant is answered by a replay of the
    /// account's log up to it.
    pub as_of: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a larger stream revision; default: from the start.
    pub after: Option<u64>,
    /// 1 to 1000; default 100.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountBody {
    pub account: String,
    pub edu: bool,
    pub banned: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody {
    pub account: String,
    pub order: String,
    pub plan: String,
    /// `started`, `upgraded`, `queued` or `granted`.
    #[schema(value_type = String)]
    pub effect: PurchaseEffect,
}

impl From<OrderView> for OrderBody {
    fn from(view: OrderView) -> Self {
        OrderBody {
            account: view.account,
            order: view.order,
            plan: view.plan,
            effect: view.effect,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BucketBody {
    pub id: u32,
    pub source: String,
    /// `active` or `inactive`.
    #[schema(value_type = String)]
    pub state: BucketState,
    #[schema(value_type = String)]
    pub remaining: Dcu,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub window_ends_at: Option<Timestamp>,
}

impl From<BucketView> for BucketBody {
    fn from(view: BucketView) -> Self {
        BucketBody {
            id: view.id,
            source: view.source,
            state: view.state,
            remaining: view.remaining,
            expires_at: view.expires_at,
            window_ends_at: view.window_ends_at,
        }
    }
}

/// D3: the balance; `available = active − arrears`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceBody {
    pub account: String,
    #[schema(value_type = String)]
    pub active: Dcu,
    #[schema(value_type = String)]
    pub inactive: Dcu,
    #[schema(value_type = String)]
    pub arrears: Dcu,
    #[schema(value_type = String)]
    pub available: Dcu,
    #[schema(value_type = String)]
    pub expired: Dcu,
    #[schema(value_type = String)]
    pub forfeited: Dcu,
    pub buckets: Vec<BucketBody>,
}

impl From<BalanceView> for BalanceBody {
    fn from(view: BalanceView) -> Self {
        BalanceBody {
            account: view.account,
            active: view.active,
            inactive: view.inactive,
            arrears: view.arrears,
            available: view.available,
            expired: view.expired,
            forfeited: view.forfeited,
            buckets: view.buckets.into_iter().map(BucketBody::from).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaBody {
    pub account: String,
    pub plan: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub period_ends_at: Option<Timestamp>,
    pub parallelism_cap: u32,
    pub units_in_use: u32,
    /// M3, M4: units of the account's queued leases (they count against the cap too).
    pub units_queued: u32,
    pub storage_allowance_gb: u64,
    pub storage_used_gb: u64,
    pub storage_reclaimed: bool,
}

impl From<QuotaView> for QuotaBody {
    fn from(view: QuotaView) -> Self {
        QuotaBody {
            account: view.account,
            plan: view.plan,
            period_ends_at: view.period_ends_at,
            parallelism_cap: view.parallelism_cap,
            units_in_use: view.units_in_use,
            units_queued: view.units_queued,
            storage_allowance_gb: view.storage_allowance_gb,
            storage_used_gb: view.storage_used_gb,
            storage_reclaimed: view.storage_reclaimed,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBody {
    pub account: String,
    pub record: String,
    /// M5/M11: what the record cost.
    #[schema(value_type = String)]
    pub cost: Dcu,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DoneBody {
    pub account: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenBody {
    pub account: String,
    /// Shown once; only its hash is kept.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventItem {
    pub event_type: String,
    /// Position in the account's stream, from 0.
    pub revision: u64,
    /// Position in the whole log.
    pub position: u64,
    /// The decoded event (`at`, `type` and its fields).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventsBody {
    pub account: String,
    pub events: Vec<EventItem>,
    /// Pass as `after` for the next page; null when this page was not full.
    pub next_after: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    pub status: String,
}

/// Most leases one page of `GET /v1/accounts/{id}/leases` returns.
pub const MAX_LEASES_PAGE: usize = 1_000;
/// The page size when `limit` is not given.
pub const DEFAULT_LEASES_PAGE: usize = 100;

fn one() -> u32 {
    1
}

/// M1, M2: a lease request. The lease id is the idempotency key (M10).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequestBody {
    pub lease: String,
    pub account: String,
    /// `gpu_run`, `gpu_debug`, `run_shell` or `run_task`.
    #[schema(value_type = String)]
    pub kind: JobKind,
    /// A catalog GPU model id.
    pub model: String,
    /// Cards per worker (≥ 1).
    pub cards: u32,
    /// ≥ 1; more than 1 only for `run_task`. Default 1.
    #[serde(default = "one")]
    pub workers: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeasesQuery {
    /// Only leases whose id sorts after this one; default: from the first.
    pub after: Option<String>,
    /// 1 to 1000; default 100.
    pub limit: Option<usize>,
}

/// One worker's cards (M4).
#[derive(Debug, Serialize, ToSchema)]
pub struct PlacementBody {
    pub node: String,
    pub cards: u32,
}

/// What each card comes with (K3, from the catalog).
#[derive(Debug, Serialize, ToSchema)]
pub struct CardLimitsBody {
    pub cpus: u32,
    pub memory_gb: u32,
}

/// K3: what the job may use; beyond it the runner reports a quota error.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsBody {
    /// The lease's parallelism units (M2).
    pub units: u32,
    pub cpus_per_unit: u32,
    pub scratch_gb_per_unit: u32,
    /// `units × cpus_per_unit`.
    pub cpus: u64,
    /// `units × scratch_gb_per_unit`.
    pub scratch_gb: u64,
    pub per_card: CardLimitsBody,
}

impl LimitsBody {
    pub fn of(terms: &LeaseTerms, catalog: &Catalog) -> Option<LimitsBody> {
        let model = catalog.model(&terms.model)?;
        Some(LimitsBody {
            units: terms.units,
            cpus_per_unit: catalog.cpus_per_unit,
            scratch_gb_per_unit: catalog.scratch_gb_per_unit,
            cpus: u64::from(terms.units) * u64::from(catalog.cpus_per_unit),
            scratch_gb: u64::from(terms.units) * u64::from(catalog.scratch_gb_per_unit),
            per_card: CardLimitsBody {
                cpus: model.cpus_per_card,
                memory_gb: model.memory_gb_per_card,
            },
        })
    }
}

/// A lease: its state and, while it runs, where its cards are and what it may use.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseBody {
    pub lease: String,
    pub account: String,
    /// `granted`, `queued`, `released`, `expired`, `revoked` or `cancelled`.
    #[schema(value_type = String)]
    pub state: LeaseState,
    /// Why it ended (`credit_exhausted`, `plan_expired`, `account_banned`, or the M3 code
    /// that cancelled it in the queue); null otherwise.
    #[schema(value_type = Option<String>)]
    pub reason: Option<RevokeReason>,
    /// Total charged so far (live while it runs, D4).
    #[schema(value_type = String)]
    pub charged: Dcu,
    #[schema(value_type = Option<String>)]
    pub kind: Option<JobKind>,
    pub model: Option<String>,
    /// Cards per worker, workers, cards and units: known while granted or queued.
    pub cards_per_worker: Option<u32>,
    pub workers: Option<u32>,
    pub cards: Option<u32>,
    pub units: Option<u32>,
    /// M4: the nodes and cards of a granted lease (empty otherwise).
    pub placement: Vec<PlacementBody>,
    /// K3: set while granted (and while queued, for what it will get).
    pub limits: Option<LimitsBody>,
    /// M6: heartbeat before this instant or the lease expires (null when TTL is off).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub granted_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_heartbeat_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub queued_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
}

impl LeaseBody {
    pub fn of(info: LeaseInfo, catalog: &Catalog) -> LeaseBody {
        let terms = info.terms.as_ref();
        LeaseBody {
            limits: terms.and_then(|terms| LimitsBody::of(terms, catalog)),
            cards_per_worker: terms.map(|terms| terms.cards_per_worker),
            workers: terms.map(|terms| terms.workers),
            cards: terms.map(|terms| terms.cards),
            units: terms.map(|terms| terms.units),
            lease: info.view.lease,
            account: info.view.account,
            state: info.view.state,
            reason: info.view.reason,
            charged: info.view.charged,
            kind: info.kind,
            model: info.model,
            placement: info
                .view
                .placement
                .into_iter()
                .map(|placement| PlacementBody {
                    node: placement.node,
                    cards: placement.cards,
                })
                .collect(),
            expires_at: info.expires_at,
            granted_at: info.granted_at,
            last_heartbeat_at: info.last_heartbeat_at,
            queued_at: info.queued_at,
            ended_at: info.ended_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeasesBody {
    pub account: String,
    pub leases: Vec<LeaseBody>,
    /// Pass as `after` for the next page; null when this page was not full.
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolModelBody {
    pub model: String,
    pub cards: u32,
    pub free: u32,
    /// Leases waiting in this model's FIFO queue.
    pub queued: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolNodeBody {
    pub node: String,
    pub model: String,
    pub cards: u32,
    pub free: u32,
}

/// M4: capacity, use and queue lengths per model, and every node in placement order.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolBody {
    pub models: Vec<PoolModelBody>,
    pub nodes: Vec<PoolNodeBody>,
}

impl From<PoolView> for PoolBody {
    fn from(view: PoolView) -> Self {
        PoolBody {
            models: view
                .models
                .into_iter()
                .map(|model| PoolModelBody {
                    model: model.cards.model,
                    cards: model.cards.cards,
                    free: model.cards.free,
                    queued: model.queued,
                })
                .collect(),
            nodes: view
                .nodes
                .into_iter()
                .map(|node| PoolNodeBody {
                    node: node.node,
                    model: node.model,
                    cards: node.cards,
                    free: node.free,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Issue 6: statements, the reconciliation report, invoices.

/// Record an invoice (发票) for paid orders of the account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvoiceRequest {
    /// The invoice id (idempotent: the same id with the same orders answers the same invoice).
    pub invoice: String,
    /// 1 to 1000 paid orders of this account, none invoiced yet, none twice.
    pub orders: Vec<String>,
}

/// An invoice as recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceBody {
    pub account: String,
    pub invoice: String,
    pub orders: Vec<String>,
    /// The sum of the orders' prices paid (CNY, decimal string).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String)]
    pub amount_cny: Decimal,
    /// Always 技术服务费 (technical service fee).
    pub item: String,
}

impl From<scheduler::InvoiceView> for InvoiceBody {
    fn from(view: scheduler::InvoiceView) -> Self {
        InvoiceBody {
            account: view.account,
            invoice: view.invoice,
            orders: view.orders,
            amount_cny: view.amount_cny,
            item: view.item,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// RFC 3339, inclusive; default: since the account opened.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default: one second after the server's now (everything up to
    /// and including now).
    pub to: Option<String>,
}

/// The report's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReconciliationQuery {
    /// RFC 3339, inclusive.
    pub from: String,
    /// RFC 3339, exclusive; at most 3660 business days after `from`.
    pub to: String,
    /// `json` (default) or `csv`.
    #[param(inline)]
    pub format: Option<ReportFormat>,
}
