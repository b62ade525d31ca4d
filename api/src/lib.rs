//! The faces of dcu-ledger.
//!
//! - `scenario`: `dcu scenario FILE`, the JSON-lines replay of a customer's story (SPEC §11).
//! - `simulate`, `traces`: `dcu simulate --trace FILE`, a public GPU trace replayed in
//!   virtual time through the engine (docs/simulation.md).
//!
//! Only this crate knows the wire shapes: request and response types are its own.
#![forbid(unsafe_code)]

pub mod audit;
pub mod migrate;
pub mod scenario;
pub mod server;
pub mod simulate;
pub mod store;
pub mod traces;
