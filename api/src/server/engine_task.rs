//! The engine task: the one owner of `Engine<StoreLog>` (ARCHITECTURE "The runtime shape
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
use std::time::Duration;

use ledger::account::AccountState;
use ledger::catalog::Catalog;
use ledger::clock::Timestamp;
use ledger::decide::{Command, ErrorCode, Refusal};
use ledger::due;
use ledger::event::{Event, JobKind, LeaseTerms};
use ledger::log::{EventLog, LogError, RecordedEvent};
use projections::views::{self, BalanceView, LeaseView, QuotaView};
use scheduler::{Engine, EngineError, Outcome, PoolView, Target};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreLog;

use super::problem::ApiError;
use axum::http::StatusCode;

/// Requests waiting for the engine task. The engine serves one request in well under a
/// millisecond plus its share of a group-committed append, so 1024 waiting requests is about
/// a second of backlog: enough to absorb a burst from every console at once, small enough
/// that a stuck log shows up as back-pressure (handlers wait for a slot) instead of memory
/// growing without bound.
pub const ENGINE_QUEUE_CAPACITY: usize = 1024;

/// How long the timer sleeps at most between looks at the engine's next deadline (real
/// time). With the system clock the timer wakes at the deadline itself; this bound matters
/// for a manual clock (tests), which the timer cannot see move.
pub const DEFAULT_TIMER_POLL: Duration = Duration::from_secs(1);

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

/// A lease with what the runner needs besides its view: its terms while it runs or waits,
/// and its instants.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub view: LeaseView,
    pub kind: Option<JobKind>,
    pub model: Option<String>,
    /// Known while the lease is granted or queued.
    pub terms: Option<LeaseTerms>,
    pub granted_at: Option<Timestamp>,
    pub last_heartbeat_at: Option<Timestamp>,
    /// M6: when it expires without another heartbeat (`None` when TTL is off).
    pub expires_at: Option<Timestamp>,
    pub queued_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
}

/// A lease's info in a state that is already live at its instant.
pub fn lease_info(live: &AccountState, lease: &str) -> Option<LeaseInfo> {
    let view = views::lease_of_live(live, lease)?;
    let mut info = LeaseInfo {
        view,
        kind: None,
        model: None,
        terms: None,
        granted_at: None,
        last_heartbeat_at: None,
        expires_at: None,
        queued_at: None,
        ended_at: None,
    };
    if let Some(running) = live.running.get(lease) {
        info.kind = Some(running.terms.kind);
        info.model = Some(running.terms.model.clone());
        info.terms = Some(running.terms.clone());
        info.granted_at = Some(running.granted_at);
        info.last_heartbeat_at = Some(running.last_heartbeat_at);
        info.expires_at = running.expires_at();
    } else if let Some(queued) = live.queued_leases.get(lease) {
        info.kind = Some(queued.terms.kind);
        info.model = Some(queued.terms.model.clone());
        info.terms = Some(queued.terms.clone());
        info.queued_at = Some(queued.queued_at);
    } else if let Some(ended) = live.ended.get(lease) {
        info.kind = Some(ended.kind);
        info.model = Some(ended.model.clone());
        info.ended_at = Some(ended.ended_at);
    }
    Some(info)
}

/// A lease command carried out (or found already carried out, M10).
#[derive(Debug)]
pub struct LeaseAnswer {
    pub info: LeaseInfo,
    /// The lease existed before this command (a repeated request answers 200).
    pub existed: bool,
}

/// A lease command refused; `info` is the lease's state when it exists (so a heartbeat
/// refused with `lease_not_active` tells the runner why).
#[derive(Debug)]
pub struct LeaseFailure {
    pub error: EngineError,
    pub info: Option<LeaseInfo>,
}

pub enum Request {
    Execute {
        target: Target,
        command: Command,
        reply: oneshot::Sender<Result<Outcome, EngineError>>,
    },
    /// A lease command. With `caller` set (an account token), a lease of another account
    /// answers `unknown_lease`, as if it did not exist.
    Lease {
        target: Target,
        command: Command,
        caller: Option<String>,
        reply: oneshot::Sender<Result<LeaseAnswer, LeaseFailure>>,
    },
    LeaseStatus {
        lease: String,
        caller: Option<String>,
        reply: oneshot::Sender<Result<LeaseInfo, Refusal>>,
    },
    Pool {
        reply: oneshot::Sender<Option<PoolView>>,
    },
    Events {
        account: String,
        /// Revisions strictly after this one; `None`: from the start.
        after: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<Result<Option<EventPage>, EngineError>>,
    },
    /// One page of the whole log in global order (the audit reads: the handler asks page by
    /// page and folds outside the task, so writes go between pages).
    ReadAll {
        /// Positions strictly after this one (0: from the start).
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<RecordedEvent>, LogError>>,
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
    /// Publishes the given accounts' states (all of them with `None`) and the clock.
    fn publish(&self, engine: &Engine<StoreLog>, accounts_changed: Option<&[String]>) {
        let mut accounts = self
            .accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut put = |id: &String| {
            if let Some(state) = engine.state(id) {
                accounts.insert(id.clone(), Arc::new(state.clone()));
            }
        };
        match accounts_changed {
            Some(ids) => ids.iter().for_each(&mut put),
            None => engine.account_ids().for_each(&mut put),
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
    catalog: Arc<Catalog>,
}

/// One page of an account's leases, ordered by lease id.
#[derive(Debug)]
pub struct LeasePage {
    pub leases: Vec<LeaseInfo>,
    /// The last lease id when the page was full.
    pub next_after: Option<String>,
}

impl EngineHandle {
    /// `now` as the engine task would take it: never before the engine's clock.
    pub fn now(&self) -> Timestamp {
        (self.clock)().max(self.snapshot.clock())
    }

    /// The instant of the account's last event: an `as_of` before it is answered by a
    /// replay of the account's stream, not by the snapshot.
    pub fn last_event_at(&self, account: &str) -> Result<Timestamp, Refusal> {
        Ok(self.snapshot.opened(account)?.clock)
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

    /// The catalog the engine runs with (K3 limits).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// An account's leases (running, queued and ended) with ids after `after`, at most
    /// `limit`, folded from the snapshot at now.
    pub fn leases(
        &self,
        account: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<LeasePage, Refusal> {
        let state = self.snapshot.opened(account)?;
        let live = due::live(&state, self.now().max(state.clock));
        let mut ids: Vec<&String> = live
            .running
            .after(after)
            .map(|(id, _)| id)
            .take(limit)
            .chain(
                live.queued_leases
                    .after(after)
                    .map(|(id, _)| id)
                    .take(limit),
            )
            .chain(live.ended.after(after).map(|(id, _)| id).take(limit))
            .collect();
        ids.sort();
        ids.dedup();
        ids.truncate(limit);
        let next_after = (ids.len() == limit)
            .then(|| ids.last().map(|id| (*id).clone()))
            .flatten();
        let leases = ids
            .into_iter()
            .filter_map(|id| lease_info(&live, id))
            .collect();
        Ok(LeasePage { leases, next_after })
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
    engine: Engine<StoreLog>,
    clock: Clock,
    events_appended: Arc<AtomicU64>,
    timer_poll: Duration,
) -> (EngineHandle, tokio::task::JoinHandle<Result<(), LogError>>) {
    let (sender, receiver) = mpsc::channel(ENGINE_QUEUE_CAPACITY);
    let snapshot = Arc::new(Snapshot::default());
    let catalog = Arc::new(engine.context().catalog.clone());
    let publisher = Publisher::all(&engine, &snapshot);
    let task = tokio::spawn(run(
        engine,
        publisher,
        receiver,
        Arc::clone(&clock),
        Arc::clone(&snapshot),
        events_appended,
        timer_poll,
    ));
    let handle = EngineHandle {
        sender,
        snapshot,
        clock,
        catalog,
    };
    (handle, task)
}

/// Republishes the accounts whose stream revision moved since they were last published.
struct Publisher {
    published: HashMap<String, Option<u64>>,
}

fn events_in(revision: Option<u64>) -> u64 {
    revision.map_or(0, |revision| revision + 1)
}

impl Publisher {
    fn all(engine: &Engine<StoreLog>, snapshot: &Snapshot) -> Publisher {
        snapshot.publish(engine, None);
        let published = engine
            .account_ids()
            .map(|id| (id.clone(), engine.revision(id)))
            .collect();
        Publisher { published }
    }

    /// After a command or a tick: `appended` events were appended; `hint` is the account
    /// the command was for. When the hint's stream grew by all of them only it is
    /// republished; otherwise (a tick, a queued grant of another account) every account
    /// whose revision moved is (a scan of revisions, no clones of unchanged states).
    fn changed(
        &mut self,
        engine: &Engine<StoreLog>,
        snapshot: &Snapshot,
        hint: Option<&str>,
        appended: u64,
    ) {
        if appended == 0 {
            snapshot.publish(engine, Some(&[]));
            return;
        }
        if let Some(account) = hint {
            let before = self.published.get(account).copied().flatten();
            let now = engine.revision(account);
            if events_in(now).saturating_sub(events_in(before)) == appended {
                self.published.insert(account.to_string(), now);
                snapshot.publish(engine, Some(&[account.to_string()]));
                return;
            }
        }
        let changed: Vec<String> = engine
            .account_ids()
            .filter(|id| self.published.get(*id).copied().flatten() != engine.revision(id))
            .cloned()
            .collect();
        for id in &changed {
            self.published.insert(id.clone(), engine.revision(id));
        }
        snapshot.publish(engine, Some(&changed));
    }
}

/// How long the timer may sleep: until the next deadline, at most `poll`.
fn timer_delay(engine: &Engine<StoreLog>, now: Timestamp, poll: Duration) -> Duration {
    match engine.next_deadline() {
        Some(deadline) if deadline <= now => Duration::ZERO,
        Some(deadline) => {
            let seconds = u64::try_from(deadline.0.saturating_sub(now.0)).unwrap_or(u64::MAX);
            poll.min(Duration::from_secs(seconds))
        }
        None => poll,
    }
}

async fn run(
    mut engine: Engine<StoreLog>,
    mut publisher: Publisher,
    mut receiver: mpsc::Receiver<Request>,
    clock: Clock,
    snapshot: Arc<Snapshot>,
    events_appended: Arc<AtomicU64>,
    timer_poll: Duration,
) -> Result<(), LogError> {
    events_appended.store(engine.events_appended(), Ordering::Relaxed);
    loop {
        // Never backwards: the engine's clock is the last instant it has seen.
        let now = clock().max(engine.clock());
        let delay = timer_delay(&engine, now, timer_poll);
        tokio::select! {
            request = receiver.recv() => {
                let Some(request) = request else { break };
                // Whatever else waits in the queue joins this batch: one group commit for
                // all its commands, so the log's fsync is shared under load.
                let mut batch = vec![request];
                while batch.len() < MAX_BATCH_REQUESTS {
                    match receiver.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                if !serve_batch(&mut engine, &snapshot, &mut publisher, batch, &clock).await {
                    break;
                }
            }
            () = tokio::time::sleep(delay) => {
                // The timer: whatever is due is appended at its own instant, even if no
                // request comes.
                let now = clock().max(engine.clock());
                if engine.next_deadline().is_some_and(|deadline| deadline <= now)
                    && !tick(&mut engine, &snapshot, &mut publisher, now).await
                {
                    break;
                }
            }
        }
        events_appended.store(engine.events_appended(), Ordering::Relaxed);
    }
    if engine.is_stopped() {
        // Fail stop: the engine's memory is ahead of the log. Nothing more is served from
        // it (reads keep the last published, durable snapshot; commands answer 503); the
        // service must be restarted, which reloads the log.
        tracing::error!("engine task: stopped after a failed append; restart the service");
    } else {
        tracing::info!("engine task: queue drained, closing the log");
    }
    engine.log().close().await
}

/// A timer tick. `false` when the engine stopped (its commit failed).
async fn tick(
    engine: &mut Engine<StoreLog>,
    snapshot: &Snapshot,
    publisher: &mut Publisher,
    now: Timestamp,
) -> bool {
    let before = engine.events_appended();
    match engine.tick(now).await {
        Ok(handled) => {
            if handled > 0 {
                tracing::debug!(handled, %now, "timer tick");
            }
            publisher.changed(engine, snapshot, None, engine.events_appended() - before);
            true
        }
        Err(error) if engine.is_stopped() => {
            tracing::error!(%error, "timer tick failed; the engine stops");
            false
        }
        Err(error) => {
            tracing::error!(%error, "timer tick refused");
            true
        }
    }
}

/// A lease's info at `now`, from the engine's state.
fn lease_info_at(engine: &Engine<StoreLog>, lease: &str, now: Timestamp) -> Option<LeaseInfo> {
    let owner = engine.lease_owner(lease)?;
    let state = engine.state(owner)?;
    let live = due::live(state, now.max(state.clock));
    lease_info(&live, lease)
}

fn unknown_lease(lease: &str) -> Refusal {
    Refusal::new(ErrorCode::UnknownLease, format!("no lease {lease:?}"))
}

/// Most requests served as one batch. Commands of a batch share a commit; each caller
/// waits for the whole batch, so a bound keeps that wait short.
const MAX_BATCH_REQUESTS: usize = 256;

/// An answer that may be sent only once the batch's events are durable.
enum Deferred {
    Execute {
        reply: oneshot::Sender<Result<Outcome, EngineError>>,
        result: Result<Outcome, EngineError>,
    },
    Lease {
        reply: oneshot::Sender<Result<LeaseAnswer, LeaseFailure>>,
        answer: Box<Result<LeaseAnswer, LeaseFailure>>,
    },
}

/// Serves a batch in order. Commands are decided and folded in memory one after another
/// (each sees the ones before it) and their answers held back; before any other request,
/// and at the end, everything held is committed in one group commit and then answered. A
/// failed commit stops the engine: the held callers, and every later one, learn it.
/// `false` when the engine stopped (a commit failed): the task ends.
async fn serve_batch(
    engine: &mut Engine<StoreLog>,
    snapshot: &Snapshot,
    publisher: &mut Publisher,
    batch: Vec<Request>,
    clock: &Clock,
) -> bool {
    let mut held: Vec<Deferred> = Vec::new();
    let mut before = engine.events_appended();
    for request in batch {
        let now = clock().max(engine.clock());
        if let Some(other) = hold(engine, request, now, &mut held) {
            if !release_held(engine, snapshot, publisher, &mut held, before).await {
                return false;
            }
            serve(engine, snapshot, publisher, other, now).await;
            before = engine.events_appended();
        }
    }
    release_held(engine, snapshot, publisher, &mut held, before).await
}

/// Stages a command and holds its answer; any other request is handed back.
fn hold(
    engine: &mut Engine<StoreLog>,
    request: Request,
    now: Timestamp,
    held: &mut Vec<Deferred>,
) -> Option<Request> {
    match request {
        Request::Execute {
            target,
            command,
            reply,
        } => {
            let result = engine.execute_staged(&target, &command, now);
            held.push(Deferred::Execute { reply, result });
            None
        }
        Request::Lease {
            target,
            command,
            caller,
            reply,
        } => {
            let answer = stage_lease(engine, target, command, caller.as_deref(), now);
            held.push(Deferred::Lease {
                reply,
                answer: Box::new(answer),
            });
            None
        }
        other => Some(other),
    }
}

/// Commits what the held commands staged, publishes the accounts that moved (before the
/// answers: whoever saw an answer reads the new state), then answers. `false` when the
/// engine stopped.
async fn release_held(
    engine: &mut Engine<StoreLog>,
    snapshot: &Snapshot,
    publisher: &mut Publisher,
    held: &mut Vec<Deferred>,
    before: u64,
) -> bool {
    if held.is_empty() {
        return !engine.is_stopped();
    }
    let committed = engine.commit().await;
    if committed.is_ok() {
        // Only what is durable is published: after a failed commit the snapshot keeps the
        // last durable state.
        publisher.changed(engine, snapshot, None, engine.events_appended() - before);
    }
    for deferred in held.drain(..) {
        let failure = committed
            .as_ref()
            .err()
            .map(|error| EngineError::Stopped(error.to_string()));
        match deferred {
            Deferred::Execute { reply, result } => {
                let _ = reply.send(match failure {
                    Some(error) if result.is_ok() => Err(error),
                    _ => result,
                });
            }
            Deferred::Lease { reply, answer } => {
                let _ = reply.send(match failure {
                    Some(error) if answer.is_ok() => Err(LeaseFailure { error, info: None }),
                    _ => *answer,
                });
            }
        }
    }
    committed.is_ok()
}

/// Stages a lease command and works out its answer from the staged state. An account
/// token naming a lease of another account is answered as if the lease did not exist.
// The result has the shape of the reply it fills, and is moved into it once.
#[allow(clippy::result_large_err)]
fn stage_lease(
    engine: &mut Engine<StoreLog>,
    target: Target,
    command: Command,
    caller: Option<&str>,
    now: Timestamp,
) -> Result<LeaseAnswer, LeaseFailure> {
    let (lease, hint) = match (&target, &command) {
        (Target::Lease(lease), _) => (lease.clone(), engine.lease_owner(lease).map(str::to_string)),
        (Target::Account(account), Command::RequestLease(request)) => {
            (request.lease.clone(), Some(account.clone()))
        }
        (Target::Account(account), _) => (String::new(), Some(account.clone())),
    };
    if caller.is_some_and(|caller| hint.as_deref() != Some(caller)) {
        return Err(LeaseFailure {
            error: unknown_lease(&lease).into(),
            info: None,
        });
    }
    let existed = hint
        .as_deref()
        .is_some_and(|account| engine.lease_owner(&lease) == Some(account));
    let result = engine.execute_staged(&target, &command, now);
    match result {
        Ok(_) => match lease_info_at(engine, &lease, now) {
            Some(info) => Ok(LeaseAnswer { info, existed }),
            None => Err(LeaseFailure {
                error: unknown_lease(&lease).into(),
                info: None,
            }),
        },
        Err(error) => {
            let not_active = matches!(
                &error,
                EngineError::Refused(refusal) if refusal.code == ErrorCode::LeaseNotActive
            );
            let info = not_active
                .then(|| lease_info_at(engine, &lease, now))
                .flatten();
            Err(LeaseFailure { error, info })
        }
    }
}

async fn serve(
    engine: &mut Engine<StoreLog>,
    snapshot: &Snapshot,
    publisher: &mut Publisher,
    request: Request,
    now: Timestamp,
) {
    let before = engine.events_appended();
    match request {
        command @ (Request::Execute { .. } | Request::Lease { .. }) => {
            let mut held = Vec::new();
            if hold(engine, command, now, &mut held).is_none() {
                // A stop is seen by the caller of `serve` through `Engine::is_stopped`.
                let _running = release_held(engine, snapshot, publisher, &mut held, before).await;
            }
        }
        Request::LeaseStatus {
            lease,
            caller,
            reply,
        } => {
            let visible = match (&caller, engine.lease_owner(&lease)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(caller), Some(owner)) => caller == owner,
            };
            let answer = visible
                .then(|| lease_info_at(engine, &lease, now))
                .flatten()
                .ok_or_else(|| unknown_lease(&lease));
            let _ = reply.send(answer);
        }
        Request::Pool { reply } => {
            let _ = reply.send(engine.pool_view());
        }
        Request::Events {
            account,
            after,
            limit,
            reply,
        } => {
            let _ = reply.send(events(engine, &account, after, limit).await);
        }
        Request::ReadAll {
            after,
            limit,
            reply,
        } => {
            let _ = reply.send(engine.log().read_all(after, limit).await);
        }
    }
}

async fn events(
    engine: &Engine<StoreLog>,
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
