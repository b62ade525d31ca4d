//! The engine task: the one owner of `Engine<SqliteLog>` (ARCHITECTURE "The runtime shape
//! we suggest"). Handlers send it a request through a bounded channel and wait on a oneshot
//! for the answer; the task serves them one at a time, so no lock guards domain state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ledger::clock::Timestamp;
use ledger::decide::{Command, Refusal};
use ledger::event::Event;
use ledger::log::sqlite::SqliteLog;
use ledger::log::{EventLog, LogError, RecordedEvent};
use projections::views::{BalanceView, QuotaView};
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
    Balance {
        account: String,
        as_of: Option<Timestamp>,
        reply: oneshot::Sender<Result<BalanceView, Refusal>>,
    },
    Quota {
        account: String,
        as_of: Option<Timestamp>,
        reply: oneshot::Sender<Result<QuotaView, Refusal>>,
    },
    Account {
        account: String,
        reply: oneshot::Sender<Option<AccountSummary>>,
    },
    Events {
        account: String,
        /// Revisions strictly after this one; `None`: from the start.
        after: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<Result<Option<EventPage>, EngineError>>,
    },
}

/// The handlers' side of the channel.
#[derive(Clone)]
pub struct EngineHandle {
    sender: mpsc::Sender<Request>,
}

impl EngineHandle {
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
    let task = tokio::spawn(run(engine, receiver, clock, events_appended));
    (EngineHandle { sender }, task)
}

async fn run(
    mut engine: Engine<SqliteLog>,
    mut receiver: mpsc::Receiver<Request>,
    clock: Clock,
    events_appended: Arc<AtomicU64>,
) -> Result<(), LogError> {
    events_appended.store(engine.events_appended(), Ordering::Relaxed);
    while let Some(request) = receiver.recv().await {
        // Never backwards: the engine's clock is the last instant it has seen.
        let now = clock().max(engine.clock());
        serve(&mut engine, request, now).await;
        events_appended.store(engine.events_appended(), Ordering::Relaxed);
    }
    tracing::info!("engine task: queue drained, closing the log");
    engine.log().close().await
}

async fn serve(engine: &mut Engine<SqliteLog>, request: Request, now: Timestamp) {
    match request {
        Request::Execute {
            target,
            command,
            reply,
        } => {
            let result = engine.execute(target, command, now).await;
            let _ = reply.send(result);
        }
        Request::Balance {
            account,
            as_of,
            reply,
        } => {
            let _ = reply.send(engine.balance(&account, as_of.unwrap_or(now)));
        }
        Request::Quota {
            account,
            as_of,
            reply,
        } => {
            let _ = reply.send(engine.quota(&account, as_of.unwrap_or(now)));
        }
        Request::Account { account, reply } => {
            let summary = engine
                .state(&account)
                .filter(|state| state.opened)
                .map(|state| AccountSummary {
                    account: state.id.clone(),
                    edu: state.edu,
                    banned: state.banned,
                });
            let _ = reply.send(summary);
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
