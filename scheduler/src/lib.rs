//! The engine: the one owner of all account states, which turns commands into appended
//! events.
//!
//! - `engine`: routes a command to its account (lease commands by the lease's account),
//!   folds the due events, runs `decide`, and appends both in one append with the stream's
//!   revision as the expected revision. Answers queries from memory at any `as_of`.
//!
//! The GPU pool, FIFO queues and timers (M4) grow here.
#![forbid(unsafe_code)]

pub mod engine;

pub use engine::{Engine, EngineError, Outcome, Target};
