//! Folds of the log into the answers users ask for.
//!
//! - `views`: the balance (D3, D4), quota (S1, M3) and lease views of one account at an
//!   instant, the shapes of SPEC §11.
//! - `statement`: every change of an account's balance, line by line, and as-of replays.
//! - `reconcile`: the reconciliation report of a range (issue 6).
//!
//! Every view is a pure function of an account's state and `as_of`: it can always be
//! dropped and rebuilt from the log (I3).
#![forbid(unsafe_code)]

pub mod reconcile;
pub mod statement;
pub mod views;
