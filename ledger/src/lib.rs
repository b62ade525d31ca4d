//! The core of dcu-ledger.
//!
//! - `log`: the append-only event log (trait, SQLite backend).
#![forbid(unsafe_code)]

pub mod log;
