//! The log's vocabulary: everything that can happen to an account.
//!
//! Each event has a type name (its variant) and a schema version (`EVENT_VERSION`), stored
//! beside the JSON payload, so that an old payload can be upcast when a shape changes.
//! Events record the facts and the amounts decided when they happened (K1): folding them
//! never consults the catalog.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::amount::Dcu;
use crate::clock::Timestamp;

/// Schema version of every event type written by this code.
pub const EVENT_VERSION: u32 = 1;

pub type BucketId = u32;

/// A plan's terms as they were in force when it was bought (K1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanTerms {
    pub plan: String,
    pub rank: u32,
    pub grant_dcu: Dcu,
    pub parallelism_cap: u32,
    /// The storage allowance it gives (K2 already applied).
    pub storage_allowance_gb: u32,
}

/// What the order paid (P6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    pub catalog_version: String,
    pub edu: bool,
    pub list_price_cny: Decimal,
    pub price_cny: Decimal,
    /// Why the operator recorded a price other than the list price.
    pub price_reason: Option<String>,
}

/// How a purchase took effect (SPEC §11: `effect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseEffect {
    Started,
    Upgraded,
    Queued,
    Granted,
}

/// A debit taken from one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketAmount {
    pub bucket: BucketId,
    pub amount: Dcu,
}

/// A charge split by the burn order (D1); what buckets could not cover is arrears (D2).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    pub amount: Dcu,
    pub debits: Vec<BucketAmount>,
    pub arrears_added: Dcu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    GpuRun,
    GpuDebug,
    RunShell,
    RunTask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEnd {
    Released,
    Expired,
    Revoked,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    CreditExhausted,
    PlanExpired,
    AccountBanned,
    /// M4: a queued lease that no longer passes admission when cards free up is cancelled
    /// with the code it fails.
    NoCurrentPeriod,
    StorageOverAllowance,
    InsufficientCredit,
    ParallelismExceeded,
}

/// The card placement of one worker (M4): which node, how many cards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub node: String,
    pub cards: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTerms {
    pub kind: JobKind,
    pub model: String,
    pub cards_per_worker: u32,
    pub workers: u32,
    /// M2: cards per worker × workers.
    pub cards: u32,
    /// M2: cards × units per card.
    pub units: u32,
    pub rate_dcu_per_hour: Dcu,
    /// M6: 0 turns expiry off.
    pub ttl_s: u32,
}

/// Everything that can happen to an account, with the instant it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventBody {
    /// A1
    AccountOpened { account: String, edu: bool },
    /// P1: a new period starts with this plan.
    PlanStarted {
        order: String,
        terms: PlanTerms,
        payment: Payment,
        bucket: BucketId,
        period_ends_at: Timestamp,
        arrears_paid: Dcu,
    },
    /// P2: a higher plan replaces the current period at once.
    PlanUpgraded {
        order: String,
        terms: PlanTerms,
        payment: Payment,
        bucket: BucketId,
        period_ends_at: Timestamp,
        arrears_paid: Dcu,
    },
    /// P3: a renewal or downgrade waits for the end of the chain.
    PlanQueued {
        order: String,
        terms: PlanTerms,
        payment: Payment,
    },
    /// P4: the first queued plan starts.
    QueuedPlanStarted {
        order: String,
        bucket: BucketId,
        period_ends_at: Timestamp,
        arrears_paid: Dcu,
    },
    /// P5
    ExtensionGranted {
        order: String,
        grant_dcu: Dcu,
        payment: Payment,
        bucket: BucketId,
        expires_at: Timestamp,
        arrears_paid: Dcu,
    },
    /// C1: the period ended; its unspent plan and extension credit became one inactive bucket.
    PeriodEnded {
        carried: Vec<BucketAmount>,
        carry_over_bucket: Option<BucketId>,
        window_ends_at: Timestamp,
    },
    /// C2
    CarryOverActivated {
        bucket: BucketId,
        expires_at: Timestamp,
        arrears_paid: Dcu,
    },
    /// C3: credit that can no longer be used.
    BucketExpired { bucket: BucketId, amount: Dcu },
    /// A2
    LoggedIn,
    /// S1
    StorageReported { gb: u64 },
    /// S2
    StorageReclaimed { gb: u64 },
    /// A3
    Banned {
        reason: String,
        forfeited: Vec<BucketAmount>,
        cancelled_orders: Vec<String>,
    },
    /// M11
    UsageRecorded {
        record: String,
        model: String,
        cards: u32,
        seconds: u64,
        started_at: Timestamp,
        charge: Charge,
    },
    /// M4: a lease passed admission but found no free cards; it waits in its model's queue.
    LeaseQueued { lease: String, terms: LeaseTerms },
    /// M3, M4: a lease holds cards from now on (at once, or when its turn in the queue came).
    LeaseGranted {
        lease: String,
        terms: LeaseTerms,
        placement: Vec<Placement>,
    },
    /// M5, M6: GPU-seconds of a running lease charged up to `through` (= `at`).
    LeaseMetered {
        lease: String,
        heartbeat: bool,
        seconds_total: u64,
        charge: Charge,
    },
    /// M6, M7, M8, M10, A3: the lease holds no cards any more.
    LeaseEnded {
        lease: String,
        end: LeaseEnd,
        reason: Option<RevokeReason>,
    },
    /// An invoice (发票) issued for paid orders of the account, for the item `item`
    /// (技术服务费); `amount_cny` is the sum of the orders' prices paid.
    InvoiceRecorded {
        invoice: String,
        orders: Vec<String>,
        amount_cny: Decimal,
        item: String,
    },
}

/// The item every invoice is issued for (the manual: 技术服务费, "technical service fee").
pub const INVOICE_ITEM: &str = "技术服务费";

impl EventBody {
    /// The type name stored beside the payload.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::AccountOpened { .. } => "AccountOpened",
            EventBody::PlanStarted { .. } => "PlanStarted",
            EventBody::PlanUpgraded { .. } => "PlanUpgraded",
            EventBody::PlanQueued { .. } => "PlanQueued",
            EventBody::QueuedPlanStarted { .. } => "QueuedPlanStarted",
            EventBody::ExtensionGranted { .. } => "ExtensionGranted",
            EventBody::PeriodEnded { .. } => "PeriodEnded",
            EventBody::CarryOverActivated { .. } => "CarryOverActivated",
            EventBody::BucketExpired { .. } => "BucketExpired",
            EventBody::LoggedIn => "LoggedIn",
            EventBody::StorageReported { .. } => "StorageReported",
            EventBody::StorageReclaimed { .. } => "StorageReclaimed",
            EventBody::Banned { .. } => "Banned",
            EventBody::UsageRecorded { .. } => "UsageRecorded",
            EventBody::LeaseQueued { .. } => "LeaseQueued",
            EventBody::LeaseGranted { .. } => "LeaseGranted",
            EventBody::LeaseMetered { .. } => "LeaseMetered",
            EventBody::LeaseEnded { .. } => "LeaseEnded",
            EventBody::InvoiceRecorded { .. } => "InvoiceRecorded",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event type {event_type} version {version} is not known to this build")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("event payload does not decode: {0}")]
    Payload(String),
    #[error("event payload is of type {found}, stored as {stored}")]
    TypeMismatch { stored: String, found: String },
}

impl Event {
    /// The JSON payload stored in the log.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a stored payload, upcasting older versions (there are none yet).
    pub fn decode(event_type: &str, version: u32, data: &[u8]) -> Result<Event, DecodeError> {
        if version != EVENT_VERSION {
            return Err(DecodeError::UnknownVersion {
                event_type: event_type.into(),
                version,
            });
        }
        let event: Event = serde_json::from_slice(data)
            .map_err(|error| DecodeError::Payload(error.to_string()))?;
        if event.body.type_name() != event_type {
            return Err(DecodeError::TypeMismatch {
                stored: event_type.into(),
                found: event.body.type_name().into(),
            });
        }
        Ok(event)
    }
}
