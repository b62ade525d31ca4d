//! The faces of dcu-ledger.
//!
//! - `scenario`: `dcu scenario FILE`, the JSON-lines replay of a customer's story (SPEC §11).
//!
//! Only this crate knows the wire shapes: request and response types are its own.
#![forbid(unsafe_code)]

pub mod scenario;
pub mod server;
