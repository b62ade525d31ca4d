//! The log's vocabulary: everything that can happen to an account.
//!
//! Each event has a type name (its variant) and a schema version (`EVENT_VERSION`), stored
//! beside the JSON payload, so that an old payload can be upcast when a shape changes.
//! Events record the facts and the amounts decided when they happened (K1): folding them
//! never consults the catalog.

use rust_decimal::Decimal;
use std::borrow::Cow;

use serde::de::{self, value::MapAccessDeserializer, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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
    /// M4: a queued lease that no longer fits the pool even with every card free (the pool
    /// was made smaller at a restart) is cancelled rather than left to block its queue.
    PoolTooSmall,
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

/// Defines `EventBody` once and derives from that one list: its serde form (internally
/// tagged by `type`, as stored), its type names, and a one-pass decoder that reads a
/// variant's fields straight from the payload once its tag is known
/// (`EventBody::from_fields`), so decoding does not buffer every event the way serde's
/// internally tagged and flattened derives do.
macro_rules! event_bodies {
    ($(
        $(#[$meta:meta])*
        $variant:ident $({ $($field:ident : $ty:ty),* $(,)? })?
    ),* $(,)?) => {
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "type", deny_unknown_fields)]
        pub enum EventBody {
            $( $(#[$meta])* $variant $({ $($field: $ty),* })? ),*
        }

        impl EventBody {
            /// The type name stored beside the payload.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( EventBody::$variant { .. } => stringify!($variant) ),*
                }
            }

            /// Reads the fields of variant `tag` from the rest of a payload's map; `None`
            /// for a tag this build does not know.
            fn from_fields<'de, A: MapAccess<'de>>(
                tag: &str,
                map: A,
            ) -> Result<Option<EventBody>, A::Error> {
                match tag {
                    $( stringify!($variant) => {
                        #[derive(Deserialize)]
                        #[serde(deny_unknown_fields)]
                        struct Fields { $($($field: $ty),*)? }
                        #[allow(unused_variables)]
                        let fields = Fields::deserialize(MapAccessDeserializer::new(map))?;
                        Ok(Some(EventBody::$variant $({ $($field: fields.$field),* })?))
                    } )*
                    _ => Ok(None),
                }
            }
        }
    };
}

/// Everything that can happen to an account, with the instant it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at: Timestamp,
    #[serde(flatten)]
    pub body: EventBody,
}

event_bodies! {

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

/// Reads `{"at": …, "type": …, fields…}`. `Event::encode` writes `at` and `type` first, and
/// then the variant's fields are read in the same pass; a payload with its keys in another
/// order is still read, through a buffered `serde_json::Value`.
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event: a map with `at`, `type` and the type's fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut at: Option<Timestamp> = None;
        let mut tag: Option<Cow<'de, str>> = None;
        let mut buffered = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(CowStr)? {
            match key.as_ref() {
                "at" if at.is_none() => at = Some(map.next_value()?),
                "type" if tag.is_none() => tag = Some(map.next_value_seed(CowStr)?),
                _ => {
                    let value: serde_json::Value = map.next_value()?;
                    buffered.insert(key.into_owned(), value);
                }
            }
            if let (Some(at), Some(tag), true) = (at, tag.as_ref(), buffered.is_empty()) {
                return match EventBody::from_fields(tag, map)? {
                    Some(body) => Ok(Event { at, body }),
                    None => Err(de::Error::custom(format_args!(
                        "unknown event type `{tag}`"
                    ))),
                };
            }
        }
        // The slow path: keys in another order than `encode` writes them.
        let at = at.ok_or_else(|| de::Error::missing_field("at"))?;
        let tag = tag.ok_or_else(|| de::Error::missing_field("type"))?;
        buffered.insert("type".into(), serde_json::Value::String(tag.into_owned()));
        let body = EventBody::deserialize(serde_json::Value::Object(buffered))
            .map_err(de::Error::custom)?;
        Ok(Event { at, body })
    }
}

/// A string borrowed from the payload where it can be (no escapes), owned where it must be.
struct CowStr;

impl<'de> DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The item every invoice is issued for (the manual: 技术服务费, "technical service fee").
pub const INVOICE_ITEM: &str = "技术服务费";

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn opened() -> Event {
        Event {
            at: Timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
            body: EventBody::AccountOpened {
                account: "alice".into(),
                edu: true,
            },
        }
    }

    #[test]
    fn r_i3_encode_then_decode_gives_the_event_back() {
        let metered = Event {
            at: Timestamp::parse("2026-01-01T00:10:00Z").unwrap(),
            body: EventBody::LeaseMetered {
                lease: "l\"1".into(),
                heartbeat: true,
                seconds_total: 600,
                charge: Charge {
                    amount: Dcu::parse("1.5").unwrap(),
                    debits: vec![BucketAmount {
                        bucket: 1,
                        amount: Dcu::parse("1.5").unwrap(),
                    }],
                    arrears_added: Dcu::ZERO,
                },
            },
        };
        let logged_in = Event {
            at: Timestamp::parse("2026-01-01T00:00:01Z").unwrap(),
            body: EventBody::LoggedIn,
        };
        for event in [opened(), metered, logged_in] {
            let data = event.encode();
            let back = Event::decode(event.body.type_name(), EVENT_VERSION, &data).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn r_i3_keys_in_another_order_decode_to_the_same_event() {
        let data =
            br#"{"account":"alice","type":"AccountOpened","edu":true,"at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(Event::decode("AccountOpened", 1, data).unwrap(), opened());
        let data =
            br#"{"type":"AccountOpened","at":"2026-01-01T00:00:00Z","account":"alice","edu":true}"#;
        assert_eq!(Event::decode("AccountOpened", 1, data).unwrap(), opened());
    }

    #[test]
    fn r_i3_a_payload_this_build_does_not_understand_is_refused() {
        let cases: [(&str, &[u8]); 6] = [
            ("AccountOpened", br#"{"at":"2026-01-01T00:00:00Z","type":"AccountOpened","account":"a","edu":true,"extra":1}"#),
            ("AccountOpened", br#"{"extra":1,"at":"2026-01-01T00:00:00Z","type":"AccountOpened","account":"a","edu":true}"#),
            ("AccountOpened", br#"{"at":"2026-01-01T00:00:00Z","type":"AccountOpened","account":"a"}"#),
            ("Nope", br#"{"at":"2026-01-01T00:00:00Z","type":"Nope"}"#),
            ("AccountOpened", br#"{"type":"AccountOpened","account":"a","edu":true}"#),
            ("AccountOpened", br#"[1,2]"#),
        ];
        for (event_type, data) in cases {
            let result = Event::decode(event_type, 1, data);
            assert!(
                matches!(result, Err(DecodeError::Payload(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(data)
            );
        }
        let opened = opened().encode();
        assert!(matches!(
            Event::decode("LoggedIn", 1, &opened),
            Err(DecodeError::TypeMismatch { .. })
        ));
        assert!(matches!(
            Event::decode("AccountOpened", 2, &opened),
            Err(DecodeError::UnknownVersion { .. })
        ));
    }
}
