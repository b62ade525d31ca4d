//! The core of dcu-ledger: what happened, and what it means.
//!
//! - `amount`: `Dcu`, exact decimals at scale 6; the one place where rounding (M5) lives.
//! - `clock`: whole-second UTC instants and the period lengths (U2–U4).
//! - `catalog`: plans, GPU models and prices; the manual's tables by default (SPEC §2).
//! - `event`: the log's vocabulary, each event with a type name and a version.
//! - `account`: `AccountState` and `evolve`; the burn order (D1).
//! - `decide`: commands → events or a refusal with a SPEC error code (pure).
//! - `due`: time-driven events in time order (SPEC §9) (pure).
//! - `log`: the append-only event log (trait; SQLite backend).
//! - `vecmap`: the compact sorted map an account keeps its leases and orders in.
//!
//! `account`, `decide` and `due` do no I/O, read no clock and take no lock: time is always
//! an argument. That is what makes replay, `as_of` queries and scenarios exact.
#![forbid(unsafe_code)]

pub mod account;
pub mod amount;
pub mod catalog;
pub mod clock;
pub mod decide;
pub mod due;
pub mod event;
pub mod log;
pub mod vecmap;

pub use account::AccountState;
pub use amount::Dcu;
pub use clock::Timestamp;
pub use decide::{decide, Command, Context, ErrorCode, Refusal};
pub use due::due;
pub use event::{Event, EventBody};
