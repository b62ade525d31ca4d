//! The engine and the GPU pool.
//!
//! - `engine`: the one owner of all account states, the pool, the FIFO queues and the
//!   deadlines. Routes a command to its account (lease commands by the lease's account),
//!   folds everything due up to `now` across accounts in time order, runs `decide`, and
//!   appends with the stream's revision as the expected revision. Answers queries from
//!   memory at any `as_of`.
//! - `pool`: nodes and cards, first-fit placement (M4).
#![forbid(unsafe_code)]

pub mod engine;
pub mod pool;

pub use engine::{Engine, EngineError, InvoiceView, Outcome, PoolView, Target};
pub use pool::{NodeSpec, Pool};
