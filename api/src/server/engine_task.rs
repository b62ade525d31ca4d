//! The engine task: the one owner of `Engine<SqliteLog>` (ARCHITECTURE "The runtime shape
//! we suggest"). Handlers send it a request through a bounded channel and wait on a oneshot
//! for the answer; the task serves them one at a time, so no lock guards domain state.
//!
//! Reads of an account's state (account, balance, quota) skip the queue: after each command
//! the task publishes the account's state in a [`Snapshot`] (an `Arc` swapped under a short
//! lock) before it answers, and handlers fold their view from it. A read therefore sees every
//! write acknowledged before it, exactly as when it queued behind them; queries never change
//! the engine's state, so folding outside the task gives the same answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ledger::account::AccountState;
use ledger::clock::Timestamp;
use ledger::decide::{Command, ErrorCode, Refusal};
use ledger::event::Event;
use ledger::log::sqlite::SqliteLog;
use ledger::log::{EventLog, LogError, RecordedEvent};
use projections::views::{self, BalanceView, QuotaView};
use scheduler::{Engine, EngineError, Outcome, Target};
use tokio::sync::{mpsc, oneshot};

use super::problem::ApiError;
use axum::http::StatusCode;

/// Requests waiting for the engine task. The engine serves one request in well under a
/// millisecond plus its share of a group-committed append, so 1024 waiting requests is about
/// a second of backlog: enough to absorb a burst from every console at once, small enough
/// that a stuck log shows up as back-pressure (handlers wait for a slot) instead of memory
/// growing without bound.
pub const ENGINE_QUEUE_CAPACITY: usize = 1024;

/// The server's clock: `now` for every command and the default `as_of` for every query.
/// Production uses the system clock; tests pass a manual one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock, truncated to whole seconds (U4).
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0);
        Timestamp(i64::try_from(seconds).unwrap_or(i64::MAX))
    })
}

/// What `GET /v1/accounts/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub account: String,
    pub edu: bool,
    pub banned: bool,
}

/// One page of an account's stream.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<(RecordedEvent, Event)>,
}

pub enum Request {
    Execute {
        target: Target,
        command: Command,
        reply: oneshot::Sender<Result<Outcome, EngineError>>,
    },
    Events {
        account: String,
        /// Revisions strictly after this one; `None`: from the start.
        after: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<Result<Option<EventPage>, EngineError>>,
    },
}

/// Every account's state as of the last command the engine task finished, and the engine's
/// clock then. Written only by the engine task, before it answers the command.
#[derive(Default)]
pub struct Snapshot {
    accounts: RwLock<HashMap<String, Arc<AccountState>>>,
    clock: AtomicI64,
}

impl Snapshot {
    fn publish(&self, engine: &Engine<SqliteLog>, account: Option<&str>) {
        let mut accounts = self
            .accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match account {
            Some(account) => {
                if let Some(state) = engine.state(account) {
                    accounts.insert(account.to_string(), Arc::new(state.clone()));
                }
            }
            None => {
                for id in engine.account_ids() {
                    if let Some(state) = engine.state(id) {
                        accounts.insert(id.clone(), Arc::new(state.clone()));
                    }
                }
            }
        }
        drop(accounts);
        self.clock.store(engine.clock().0, Ordering::Release);
    }

    /// An open account's state.
    fn opened(&self, account: &str) -> Result<Arc<AccountState>, Refusal> {
        self.accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(account)
            .filter(|state| state.opened)
            .cloned()
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::UnknownAccount,
                    format!("account {account:?} is not open"),
                )
            })
    }

    fn clock(&self) -> Timestamp {
        Timestamp(self.clock.load(Ordering::Acquire))
    }
}

/// The handlers' side: the channel for commands and log reads, the snapshot for state reads.
#[derive(Clone)]
pub struct EngineHandle {
    sender: mpsc::Sender<Request>,
    snapshot: Arc<Snapshot>,
    clock: Clock,
}

impl EngineHandle {
    /// `now` as the engine task would take it: never before the engine's clock.
    fn now(&self) -> Timestamp {
        (self.clock)().max(self.snapshot.clock())
    }

    /// D3, D4: the balance at `as_of` (default: now), folded from the snapshot.
    pub fn balance(&self, account: &str, as_of: Option<Timestamp>) -> Result<BalanceView, Refusal> {
        let state = self.snapshot.opened(account)?;
        let as_of = as_of.unwrap_or_else(|| self.now());
        Ok(views::balance(&state, as_of.max(state.clock)))
    }

    /// S1: the quota at `as_of` (default: now), folded from the snapshot.
    pub fn quota(&self, account: &str, as_of: Option<Timestamp>) -> Result<QuotaView, Refusal> {
        let state = self.snapshot.opened(account)?;
        let as_of = as_of.unwrap_or_else(|| self.now());
        Ok(views::quota(&state, as_of.max(state.clock)))
    }

    /// An open account's summary; `None` if it is not open.
    pub fn account(&self, account: &str) -> Option<AccountSummary> {
        let state = self.snapshot.opened(account).ok()?;
        Some(AccountSummary {
            account: state.id.clone(),
            edu: state.edu,
            banned: state.banned,
        })
    }

    /// Sends a request and waits for its answer.
    pub async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            )
        };
        self.sender
            .send(make(reply))
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())
    }
}

/// Starts the engine task. It ends when every handle is dropped and the queue is drained,
/// then closes the log (every acknowledged append is durable).
pub fn spawn(
    engine: Engine<SqliteLog>,
    clock: Clock,
    events_appended: Arc<AtomicU64>,
) -> (EngineHandle, tokio::task::JoinHandle<Result<(), LogError>>) {
    let (sender, receiver) = mpsc::channel(ENGINE_QUEUE_CAPACITY);
    let snapshot = Arc::new(Snapshot::default());
    snapshot.publish(&engine, None);
    let task = tokio::spawn(run(
        engine,
        receiver,
        Arc::clone(&clock),
        Arc::clone(&snapshot),
        events_appended,
    ));
    let handle = EngineHandle {
        sender,
        snapshot,
        clock,
    };
    (handle, task)
}

async fn run(
    mut engine: Engine<SqliteLog>,
    mut receiver: mpsc::Receiver<Request>,
    clock: Clock,
    snapshot: Arc<Snapshot>,
    events_appended: Arc<AtomicU64>,
) -> Result<(), LogError> {
    events_appended.store(engine.events_appended(), Ordering::Relaxed);
    while let Some(request) = receiver.recv().await {
        // Never backwards: the engine's clock is the last instant it has seen.
        let now = clock().max(engine.clock());
        serve(&mut engine, &snapshot, request, now).await;
        events_appended.store(engine.events_appended(), Ordering::Relaxed);
    }
    tracing::info!("engine task: queue drained, closing the log");
    engine.log().close().await
}

async fn serve(
    engine: &mut Engine<SqliteLog>,
    snapshot: &Snapshot,
    request: Request,
    now: Timestamp,
) {
    match request {
        Request::Execute {
            target,
            command,
            reply,
        } => {
            // Only the target's account can change (a lease target: republish them all).
            let account = match &target {
                Target::Account(account) => Some(account.clone()),
                Target::Lease(_) => None,
            };
            let result = engine.execute(target, command, now).await;
            // Published before the answer: whoever saw the answer reads the new state.
            snapshot.publish(engine, account.as_deref());
            let _ = reply.send(result);
        }
        Request::Events {
            account,
            after,
            limit,
            reply,
        } => {
            let _ = reply.send(events(engine, &account, after, limit).await);
        }
    }
}

async fn events(
    engine: &Engine<SqliteLog>,
    account: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Option<EventPage>, EngineError> {
    if !engine.state(account).is_some_and(|state| state.opened) {
        return Ok(None);
    }
    let from = after.map_or(0, |revision| revision.saturating_add(1));
    let recorded = engine
        .log()
        .read_stream(&format!("account-{account}"), from, limit)
        .await?;
    let mut events = Vec::with_capacity(recorded.len());
    for record in recorded {
        let event =
            Event::decode(&record.event_type, record.version, &record.data).map_err(|error| {
                EngineError::Corrupt {
                    position: record.position,
                    message: error.to_string(),
                }
            })?;
        events.push((record, event));
    }
    Ok(Some(EventPage { events }))
}
