//! The engine (ARCHITECTURE "How a command flows"): the one owner of every account's state,
//! the GPU pool, the FIFO queues and the deadlines of time-driven events.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ledger::account::AccountState;
use ledger::clock::Timestamp;
use ledger::decide::{self, Command, Context, ErrorCode, Refusal};
use ledger::due;
use ledger::event::{Event, EventBody, LeaseTerms, Placement, RevokeReason, EVENT_VERSION};
use ledger::log::{EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, MAX_READ_COUNT};
use projections::views::{self, BalanceView, LeaseView, OrderView, QuotaView};
use serde::Serialize;
use uuid::Uuid;

use crate::pool::{ModelUse, Pool};

/// Most commands one batch carries: one group commit for all of them. A batch waits for its
/// slowest append, so a bound keeps the first caller's wait short.
pub const MAX_BATCH_COMMANDS: usize = 1_024;

/// Most deadlines one `tick` handles before it returns; the caller ticks again. Keeps one
/// call from holding the engine for long after a long downtime.
const MAX_DEADLINES_PER_TICK: usize = 1_000_000;

const STREAM_PREFIX: &str = "account-";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("the log holds an event this build cannot read at position {position}: {message}")]
    Corrupt { position: u64, message: String },
    /// An append failed after its events were folded into memory: the engine stops (fail
    /// stop) rather than serve a state the log does not hold. A restart reloads the log.
    #[error("the engine stopped after an append failed ({0}); restart it to reload the log")]
    Stopped(String),
}

/// Who a command is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Account(String),
    /// Lease commands (heartbeat, release) find their account through the lease.
    Lease(String),
}

/// The answer to a command that was carried out (or had already been carried out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Account {
        account: String,
        edu: bool,
    },
    Order(OrderView),
    Lease(LeaseView),
    Usage {
        account: String,
        record: String,
        cost: ledger::Dcu,
    },
    Done {
        account: String,
    },
    Invoice(InvoiceView),
}

/// An invoice as recorded (issue 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceView {
    pub account: String,
    pub invoice: String,
    pub orders: Vec<String>,
    pub amount_cny: rust_decimal::Decimal,
    pub item: String,
}

/// The pool's capacity, use and queues (`GET /v1/pool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolView {
    pub models: Vec<ModelQueue>,
    pub nodes: Vec<crate::pool::Node>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelQueue {
    #[serde(flatten)]
    pub cards: ModelUse,
    pub queued: usize,
}

struct Slot {
    state: AccountState,
    /// The stream's last revision; `None` while it has no events.
    revision: Option<u64>,
}

/// The single owner of every account's state.
pub struct Engine<L: EventLog> {
    log: L,
    context: Context,
    accounts: HashMap<String, Slot>,
    /// Lease, order and usage record ids are unique across accounts.
    lease_owner: HashMap<String, String>,
    order_owner: HashMap<String, String>,
    record_owner: HashMap<String, String>,
    invoice_owner: HashMap<String, String>,
    /// M4: `None` runs without a pool (every admitted lease finds cards).
    pool: Option<Pool>,
    /// M4: per model, queued leases in arrival order: (lease, account).
    queues: BTreeMap<String, VecDeque<(String, String)>>,
    /// §9: the next instant something is due, per account, ordered for the timer.
    deadlines: BTreeSet<(Timestamp, String)>,
    deadline_of: HashMap<String, Timestamp>,
    /// Set when cards came back; the queues are then tried.
    cards_freed: bool,
    clock: Timestamp,
    events_appended: u64,
    /// Events folded into memory and not yet durable, per account in staging order; one
    /// `flush` appends them all at once, so they share a group commit.
    pending: Vec<Pending>,
    pending_of: HashMap<String, usize>,
    /// Set when a flush failed: every later call answers `EngineError::Stopped`.
    stopped: Option<String>,
}

struct Pending {
    account: String,
    /// The stream's revision before the first staged event.
    expected: Option<u64>,
    events: Vec<Event>,
}

fn stream_of(account: &str) -> String {
    format!("{STREAM_PREFIX}{account}")
}

fn decode(recorded: &RecordedEvent) -> Result<Event, EngineError> {
    Event::decode(&recorded.event_type, recorded.version, &recorded.data).map_err(|error| {
        EngineError::Corrupt {
            position: recorded.position,
            message: error.to_string(),
        }
    })
}

/// An account's event, decoded from the log.
struct Decoded {
    account: String,
    revision: u64,
    event: Event,
}

/// Decodes the events of account streams in a page; other streams are skipped.
fn decode_page(page: Vec<RecordedEvent>) -> Result<Vec<Decoded>, EngineError> {
    let mut decoded = Vec::with_capacity(page.len());
    for recorded in page {
        if !recorded.stream.starts_with(STREAM_PREFIX) {
            continue;
        }
        let event = decode(&recorded)?;
        let mut account = recorded.stream;
        account.replace_range(..STREAM_PREFIX.len(), "");
        decoded.push(Decoded {
            account,
            revision: recorded.revision,
            event,
        });
    }
    Ok(decoded)
}

fn encode(event: &Event) -> NewEvent {
    NewEvent {
        // Time-ordered ids keep the log's unique id index append-mostly (random v4 ids
        // scatter its inserts over the whole B-tree).
        id: Uuid::now_v7(),
        event_type: event.body.type_name().into(),
        version: EVENT_VERSION,
        data: event.encode(),
    }
}

impl<L: EventLog> Engine<L> {
    /// Opens the engine without a pool: every admitted lease finds cards.
    pub async fn open(log: L, context: Context) -> Result<Engine<L>, EngineError> {
        Engine::open_with_pool(log, context, None).await
    }

    /// Opens the engine over a log, folding every stream from the start (I3), then puts
    /// the running leases back on their cards and the queued ones back in their queues, in
    /// the order they were queued.
    pub async fn open_with_pool(
        log: L,
        context: Context,
        pool: Option<Pool>,
    ) -> Result<Engine<L>, EngineError> {
        let mut engine = Engine {
            log,
            context,
            accounts: HashMap::new(),
            lease_owner: HashMap::new(),
            order_owner: HashMap::new(),
            record_owner: HashMap::new(),
            invoice_owner: HashMap::new(),
            pool,
            queues: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::new(),
            cards_freed: false,
            clock: Timestamp::default(),
            events_appended: 0,
            pending: Vec::new(),
            pending_of: HashMap::new(),
            stopped: None,
        };
        let mut queued_order: Vec<(String, String, String)> = Vec::new();
        // A pipeline of three: while this task folds page n, a blocking thread decodes page
        // n + 1 and the log reads page n + 2. The fold stays in log order.
        let mut after = 0;
        let mut decoding: Option<tokio::task::JoinHandle<Result<Vec<Decoded>, EngineError>>> = None;
        loop {
            let page = engine.log.read_all(after, MAX_READ_COUNT).await?;
            let next = page.last().map(|last| last.position).map(|last| {
                after = last;
                tokio::task::spawn_blocking(move || decode_page(page))
            });
            if let Some(previous) = decoding.take() {
                let decoded = previous.await.map_err(|error| EngineError::Corrupt {
                    position: after,
                    message: format!("decoding a page of the log failed: {error}"),
                })??;
                for Decoded {
                    account,
                    revision,
                    event,
                } in decoded
                {
                    engine.clock = engine.clock.max(event.at);
                    if let EventBody::LeaseQueued { lease, terms } = &event.body {
                        queued_order.push((terms.model.clone(), lease.clone(), account.clone()));
                    }
                    let slot = engine.slot_mut(&account);
                    slot.state.evolve(&event);
                    slot.revision = Some(revision);
                    engine.index(&account, &event);
                }
            }
            match next {
                Some(next) => decoding = Some(next),
                None => break,
            }
        }
        for (model, lease, account) in queued_order {
            let still_queued = engine
                .state(&account)
                .is_some_and(|state| state.queued_leases.contains_key(&lease));
            if still_queued {
                engine
                    .queues
                    .entry(model)
                    .or_default()
                    .push_back((lease, account));
            }
        }
        let accounts: Vec<String> = engine.accounts.keys().cloned().collect();
        for account in accounts {
            if let (Some(pool), Some(state)) = (engine.pool.as_mut(), engine.accounts.get(&account))
            {
                for running in state.state.running.values() {
                    pool.take(&running.placement);
                }
            }
            engine.reschedule(&account);
        }
        // Cards may have come back just before a stop, before the queue was served.
        engine.cards_freed = !engine.queues.is_empty();
        Ok(engine)
    }

    fn slot_mut(&mut self, account: &str) -> &mut Slot {
        // Looked up before inserting: `entry` would allocate the key for every event folded.
        if !self.accounts.contains_key(account) {
            let slot = Slot {
                state: AccountState::new(account),
                revision: None,
            };
            self.accounts.insert(account.to_string(), slot);
        }
        // An invariant, not an input: the slot was inserted just above if it was missing.
        self.accounts
            .get_mut(account)
            .expect("the account's slot exists")
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    pub fn log(&self) -> &L {
        &self.log
    }

    /// The latest instant the engine has seen.
    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    pub fn events_appended(&self) -> u64 {
        self.events_appended
    }

    pub fn account_ids(&self) -> impl Iterator<Item = &String> {
        self.accounts.keys()
    }

    pub fn state(&self, account: &str) -> Option<&AccountState> {
        self.accounts.get(account).map(|slot| &slot.state)
    }

    pub fn pool(&self) -> Option<&Pool> {
        self.pool.as_ref()
    }

    /// The earliest instant at which something is due for some account.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(instant, _)| *instant)
    }

    /// Capacity, use and queue lengths per model, and every node.
    pub fn pool_view(&self) -> Option<PoolView> {
        let pool = self.pool.as_ref()?;
        let models = pool
            .use_by_model()
            .into_iter()
            .map(|cards| ModelQueue {
                queued: self.queues.get(&cards.model).map_or(0, VecDeque::len),
                cards,
            })
            .collect();
        Some(PoolView {
            models,
            nodes: pool.nodes().to_vec(),
        })
    }

    /// The queued leases of a model, first in line first.
    pub fn queue(&self, model: &str) -> Vec<(String, String)> {
        self.queues
            .get(model)
            .map(|queue| queue.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn check_time(&self, now: Timestamp) -> Result<(), Refusal> {
        if now < self.clock {
            return Err(Refusal::new(
                ErrorCode::TimeWentBackwards,
                format!("{now} is before the last instant seen, {}", self.clock),
            ));
        }
        Ok(())
    }

    /// §9 across accounts: appends every account's due events up to `now`, earliest instant
    /// first, granting queued leases (M4) as cards come back. Returns how many deadlines it
    /// handled; the timer of `dcu serve` and every command call it.
    pub async fn tick(&mut self, now: Timestamp) -> Result<usize, EngineError> {
        self.check_running()?;
        let handled = self.tick_staged(now);
        self.flush().await?;
        handled.map_err(EngineError::from)
    }

    fn tick_staged(&mut self, now: Timestamp) -> Result<usize, Refusal> {
        self.check_time(now)?;
        let mut handled = 0;
        while handled < MAX_DEADLINES_PER_TICK {
            let Some((instant, account)) = self.deadlines.first().cloned() else {
                break;
            };
            if instant > now {
                break;
            }
            handled += 1;
            self.clock = self.clock.max(instant);
            self.run_due(&account, instant);
            self.grant_waiting(instant);
        }
        self.clock = self.clock.max(now);
        self.grant_waiting(now);
        Ok(handled)
    }

    /// Stages an account's due events up to `now` (nothing if none are due).
    fn run_due(&mut self, account: &str, now: Timestamp) {
        let Some(slot) = self.accounts.get(account) else {
            return;
        };
        let events = due::due(&slot.state, now);
        if events.is_empty() {
            // Nothing was due after all: forget a deadline that has come (until the state
            // changes), but keep a later one: this is also called for an account whose turn
            // in a queue came, and its timers must still fire.
            if self.deadline_of.get(account).is_some_and(|at| *at <= now) {
                self.forget_deadline(account);
            }
            return;
        }
        self.stage(account, &events);
    }

    /// M4: grants queued leases, first in line first per model, while cards allow. A lease
    /// whose turn came but that no longer passes admission is cancelled with that code.
    fn grant_waiting(&mut self, now: Timestamp) {
        while std::mem::take(&mut self.cards_freed) {
            let models: Vec<String> = self.queues.keys().cloned().collect();
            for model in models {
                self.grant_model(&model, now);
            }
        }
    }

    fn grant_model(&mut self, model: &str, now: Timestamp) {
        loop {
            let Some((lease, account)) = self.queues.get(model).and_then(|q| q.front()).cloned()
            else {
                return;
            };
            self.run_due(&account, now);
            let Some(slot) = self.accounts.get(&account) else {
                self.drop_from_queue(model, &lease);
                continue;
            };
            // Its turn comes when its cards are free; only then is M3 checked again. So a
            // queued lease's fate depends on its own model's cards and queue alone, never on
            // other models or on when the engine last started.
            let Some(terms) = slot
                .state
                .queued_leases
                .get(&lease)
                .map(|queued| &queued.terms)
            else {
                self.drop_from_queue(model, &lease);
                continue;
            };
            let Some(placement) = self.place(&terms.model, terms.cards_per_worker, terms.workers)
            else {
                if !self.never_fits(terms) {
                    return;
                }
                // The pool was made smaller (a restart with another pool) than this lease
                // needs: left at the head, it would hold its whole queue back forever.
                let event = decide::cancel_queued(&lease, RevokeReason::PoolTooSmall, now);
                self.stage(&account, std::slice::from_ref(&event));
                continue;
            };
            let placement = match decide::admit_queued(&slot.state, &self.context, &lease, now) {
                Ok(_) => placement,
                Err(_) => Vec::new(),
            };
            let event = decide::grant_queued(&slot.state, &self.context, &lease, placement, now);
            self.stage(&account, std::slice::from_ref(&event));
        }
    }

    /// M4: whether a lease of these terms could not be placed even in the empty pool (it
    /// could only wait forever).
    fn never_fits(&self, terms: &LeaseTerms) -> bool {
        self.pool.as_ref().is_some_and(|pool| {
            !pool.can_ever_place(&terms.model, terms.cards_per_worker, terms.workers)
        })
    }

    fn place(&self, model: &str, cards_per_worker: u32, workers: u32) -> Option<Vec<Placement>> {
        match &self.pool {
            Some(pool) => pool.place(model, cards_per_worker, workers),
            None => Some(Vec::new()),
        }
    }

    fn drop_from_queue(&mut self, model: &str, lease: &str) {
        if let Some(queue) = self.queues.get_mut(model) {
            queue.retain(|(queued, _)| queued != lease);
            if queue.is_empty() {
                self.queues.remove(model);
            }
        }
    }

    fn forget_deadline(&mut self, account: &str) {
        if let Some(instant) = self.deadline_of.remove(account) {
            self.deadlines.remove(&(instant, account.to_string()));
        }
    }

    /// Moves an account's deadline to its state's next due instant.
    fn reschedule(&mut self, account: &str) {
        self.forget_deadline(account);
        let next = self.state(account).and_then(due::next_due_at);
        if let Some(instant) = next {
            self.deadlines.insert((instant, account.to_string()));
            self.deadline_of.insert(account.to_string(), instant);
        }
    }

    /// The account a command is for, after the cross-account id checks.
    fn route(&self, target: &Target, command: &Command) -> Result<String, Refusal> {
        let account = match target {
            Target::Account(account) => account.clone(),
            Target::Lease(lease) => match self.lease_owner.get(lease) {
                Some(owner) => owner.clone(),
                None => {
                    return Err(Refusal::new(
                        ErrorCode::UnknownLease,
                        format!("no lease {lease:?}"),
                    ))
                }
            },
        };
        let foreign = |owners: &HashMap<String, String>, id: &str| {
            owners.get(id).is_some_and(|owner| owner != &account)
        };
        match command {
            Command::Buy { order, .. } if foreign(&self.order_owner, order) => Err(
                Refusal::invalid(format!("order {order:?} belongs to another account")),
            ),
            Command::RecordUsage { record, .. } if foreign(&self.record_owner, record) => Err(
                Refusal::invalid(format!("record {record:?} belongs to another account")),
            ),
            Command::RecordInvoice { invoice, .. } if foreign(&self.invoice_owner, invoice) => Err(
                Refusal::invalid(format!("invoice {invoice:?} belongs to another account")),
            ),
            // A lease id of another account is refused like a foreign order id: answering
            // would show one account's lease to another.
            Command::RequestLease(request) if foreign(&self.lease_owner, &request.lease) => {
                Err(Refusal::invalid(format!(
                    "lease {:?} belongs to another account",
                    request.lease
                )))
            }
            _ => Ok(account),
        }
    }

    /// Whether a failed append stopped the engine (see `EngineError::Stopped`).
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_some()
    }

    fn check_running(&self) -> Result<(), EngineError> {
        match &self.stopped {
            Some(reason) => Err(EngineError::Stopped(reason.clone())),
            None => Ok(()),
        }
    }

    /// Carries out a command at `now`: everything due up to `now` first (all accounts, in
    /// time order), then the command's events, appended with its account's due events.
    /// Answers once they are durable.
    pub async fn execute(
        &mut self,
        target: Target,
        command: Command,
        now: Timestamp,
    ) -> Result<Outcome, EngineError> {
        self.check_running()?;
        let result = self.execute_staged(&target, &command, now);
        self.flush().await?;
        result
    }

    /// Carries out many commands, in order, as `execute` would one after another, but with
    /// one group commit for all their events: each answer is given only once every event of
    /// the batch is durable. If that fails, every command that had been carried out answers
    /// the failure (refusals stay refusals) and the engine stops.
    pub async fn execute_batch(
        &mut self,
        commands: Vec<(Target, Command, Timestamp)>,
    ) -> Vec<Result<Outcome, EngineError>> {
        if let Err(error) = self.check_running() {
            return commands
                .iter()
                .map(|_| Err(EngineError::Stopped(error.to_string())))
                .collect();
        }
        let mut results: Vec<Result<Outcome, EngineError>> = commands
            .iter()
            .take(MAX_BATCH_COMMANDS)
            .map(|(target, command, now)| self.execute_staged(target, command, *now))
            .collect();
        results.extend(commands.iter().skip(MAX_BATCH_COMMANDS).map(|_| {
            Err(Refusal::invalid(format!(
                "a batch holds at most {MAX_BATCH_COMMANDS} commands"
            ))
            .into())
        }));
        if let Err(error) = self.flush().await {
            let failure = error.to_string();
            for result in &mut results {
                if result.is_ok() {
                    *result = Err(EngineError::Stopped(failure.clone()));
                }
            }
        }
        results
    }

    /// Decides a command and folds its events into memory at once (the next command sees
    /// them); nothing is durable, and no answer may be given, until `commit`. For callers
    /// that batch commands themselves (the server's engine task).
    pub fn execute_staged(
        &mut self,
        target: &Target,
        command: &Command,
        now: Timestamp,
    ) -> Result<Outcome, EngineError> {
        self.check_running()?;
        self.tick_staged(now)?;
        let account = self.route(target, command)?;
        decide::check_id("account", &account)?;
        let result = self.try_execute(&account, command, now);
        // What the command itself made due at `now` (its charge exhausting the credit, say)
        // is appended with it, not at the next command.
        self.tick_staged(now)?;
        result
    }

    fn try_execute(
        &mut self,
        account: &str,
        command: &Command,
        now: Timestamp,
    ) -> Result<Outcome, EngineError> {
        let empty = Slot {
            state: AccountState::new(account),
            revision: None,
        };
        let slot = self.accounts.get(account).unwrap_or(&empty);
        let mut events = due::due(&slot.state, now);
        // The common case has nothing due: decide on the cached state itself, with no copy
        // (an account's state grows with its history; copying it per command would not).
        let scratch = (!events.is_empty()).then(|| {
            let mut scratch = slot.state.clone();
            events.iter().for_each(|event| scratch.evolve(event));
            scratch
        });
        let current = scratch.as_ref().unwrap_or(&slot.state);
        let decided = match command {
            Command::RequestLease(request) if self.pool.is_some() => {
                self.decide_placement(current, request, now)
            }
            _ => decide::decide(current, &self.context, command, now),
        };
        if let Ok(decided) = &decided {
            events.extend(decided.iter().cloned());
        }
        if !events.is_empty() {
            self.stage(account, &events);
        }
        decided?;
        self.outcome(account, command, now)
    }

    /// M3 then M4: an admitted request is granted if its model's queue is empty and the
    /// pool has the cards, else it joins the queue (strict FIFO: never ahead of it).
    fn decide_placement(
        &self,
        state: &AccountState,
        request: &decide::LeaseRequest,
        now: Timestamp,
    ) -> Result<Vec<Event>, Refusal> {
        if state.knows_lease(&request.lease) {
            return Ok(Vec::new());
        }
        let terms = decide::admit(state, &self.context, request, now)?;
        if self.never_fits(&terms) {
            return Err(Refusal::invalid(format!(
                "{} worker(s) of {} {} card(s) each do not fit in this pool even when it is \
                 empty (a worker's cards are on one node): it would wait forever",
                terms.workers, terms.cards_per_worker, terms.model
            )));
        }
        let queue_empty = self.queues.get(&terms.model).is_none_or(VecDeque::is_empty);
        let placement = if queue_empty {
            self.place(&terms.model, terms.cards_per_worker, terms.workers)
        } else {
            None
        };
        decide::place_lease(state, &self.context, request, placement, now)
    }

    /// Folds an account's events into memory at once (so the next command sees them) and
    /// keeps them for the next `flush`; the indexes, the pool, the queues and the deadline
    /// follow.
    fn stage(&mut self, account: &str, events: &[Event]) {
        let expected = self.accounts.get(account).and_then(|slot| slot.revision);
        let index = *self
            .pending_of
            .entry(account.to_string())
            .or_insert_with(|| {
                self.pending.push(Pending {
                    account: account.to_string(),
                    expected,
                    events: Vec::new(),
                });
                self.pending.len() - 1
            });
        self.pending[index].events.extend(events.iter().cloned());
        for event in events {
            let freed = self.freed_placement(account, event);
            let slot = self.slot_mut(account);
            slot.state.evolve(event);
            slot.revision = Some(slot.revision.map_or(0, |revision| revision + 1));
            self.index(account, event);
            self.follow_pool(account, freed, event);
        }
        self.events_appended += events.len() as u64;
        self.reschedule(account);
    }

    /// Makes every staged command durable (see `flush`); after an error the engine stops.
    pub async fn commit(&mut self) -> Result<(), EngineError> {
        self.check_running()?;
        self.flush().await
    }

    /// Appends everything staged, one append per account, all at once: the log's writer
    /// commits them together. Each append carries the stream's revision before its events
    /// as the expected revision, so a second writer can never slip in unnoticed; if any
    /// append fails the engine stops.
    async fn flush(&mut self) -> Result<(), EngineError> {
        self.pending_of.clear();
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let log = &self.log;
        let appends = pending.iter().map(|staged| {
            let expected = staged
                .expected
                .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            let records = staged.events.iter().map(encode).collect();
            let stream = stream_of(&staged.account);
            async move { log.append(&stream, expected, records).await }
        });
        let outcomes = futures_util::future::join_all(appends).await;
        for (staged, outcome) in pending.iter().zip(outcomes) {
            match outcome {
                Ok(outcome) => debug_assert_eq!(
                    Some(outcome.last_revision),
                    self.accounts
                        .get(&staged.account)
                        .and_then(|slot| slot.revision),
                    "revisions only grow, one per event"
                ),
                Err(error) => {
                    self.stopped = Some(error.to_string());
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }

    /// The cards a `LeaseEnded` event gives back: the placement of that running lease.
    fn freed_placement(&self, account: &str, event: &Event) -> Option<Vec<Placement>> {
        let EventBody::LeaseEnded { lease, .. } = &event.body else {
            return None;
        };
        let running = self.state(account)?.running.get(lease)?;
        Some(running.placement.clone())
    }

    /// Keeps the pool and the queues in step with a lease event just appended and folded.
    fn follow_pool(&mut self, account: &str, freed: Option<Vec<Placement>>, event: &Event) {
        match &event.body {
            EventBody::LeaseQueued { lease, terms } => {
                let queue = self.queues.entry(terms.model.clone()).or_default();
                queue.push_back((lease.clone(), account.to_string()));
            }
            EventBody::LeaseGranted {
                lease,
                terms,
                placement,
            } => {
                if let Some(pool) = self.pool.as_mut() {
                    pool.take(placement);
                }
                self.drop_from_queue(&terms.model, lease);
            }
            EventBody::LeaseEnded { lease, .. } => match freed {
                Some(placement) => {
                    if let Some(pool) = self.pool.as_mut() {
                        pool.give_back(&placement);
                    }
                    self.cards_freed = true;
                }
                None => {
                    let model = self
                        .state(account)
                        .and_then(|state| state.ended.get(lease))
                        .map(|ended| ended.model.clone());
                    if let Some(model) = model {
                        self.drop_from_queue(&model, lease);
                        // The lease behind it may fit now.
                        self.cards_freed = true;
                    }
                }
            },
            _ => {}
        }
    }

    fn lease_outcome(
        &self,
        account: &str,
        lease: &str,
        now: Timestamp,
    ) -> Result<Outcome, EngineError> {
        let state = self
            .state(account)
            .ok_or_else(|| unknown_account(account))?;
        views::lease(state, lease, now)
            .map(Outcome::Lease)
            .ok_or_else(|| {
                Refusal::new(ErrorCode::UnknownLease, format!("no lease {lease:?}")).into()
            })
    }

    fn outcome(
        &self,
        account: &str,
        command: &Command,
        now: Timestamp,
    ) -> Result<Outcome, EngineError> {
        let state = self
            .state(account)
            .ok_or_else(|| unknown_account(account))?;
        Ok(match command {
            Command::Open { .. } => Outcome::Account {
                account: account.into(),
                edu: state.edu,
            },
            Command::Buy { order, .. } => match views::order(state, order) {
                Some(view) => Outcome::Order(view),
                None => {
                    return Err(Refusal::invalid(format!("order {order:?} not recorded")).into())
                }
            },
            Command::RecordUsage { record, .. } => Outcome::Usage {
                account: account.into(),
                record: record.clone(),
                cost: state
                    .records
                    .get(record)
                    .map(|usage| usage.cost)
                    .unwrap_or_default(),
            },
            Command::RequestLease(request) => {
                return self.lease_outcome(account, &request.lease, now)
            }
            Command::Heartbeat { lease } | Command::Release { lease } => {
                return self.lease_outcome(account, lease, now)
            }
            Command::RecordInvoice { invoice, .. } => match state.invoices.get(invoice) {
                Some(record) => Outcome::Invoice(InvoiceView {
                    account: account.into(),
                    invoice: invoice.clone(),
                    orders: record.orders.clone(),
                    amount_cny: record.amount_cny,
                    item: record.item.clone(),
                }),
                None => {
                    return Err(
                        Refusal::invalid(format!("invoice {invoice:?} not recorded")).into(),
                    )
                }
            },
            Command::Login | Command::Storage { .. } | Command::Ban { .. } => Outcome::Done {
                account: account.into(),
            },
        })
    }

    /// D3, D4: the balance at `as_of` (not before the account's last event).
    pub fn balance(&self, account: &str, as_of: Timestamp) -> Result<BalanceView, Refusal> {
        let state = self.opened(account)?;
        Ok(views::balance(state, as_of.max(state.clock)))
    }

    pub fn quota(&self, account: &str, as_of: Timestamp) -> Result<QuotaView, Refusal> {
        let state = self.opened(account)?;
        Ok(views::quota(state, as_of.max(state.clock)))
    }

    pub fn lease_status(&self, lease: &str, as_of: Timestamp) -> Result<LeaseView, Refusal> {
        let unknown = || Refusal::new(ErrorCode::UnknownLease, format!("no lease {lease:?}"));
        let owner = self.lease_owner.get(lease).ok_or_else(unknown)?;
        let state = self.opened(owner)?;
        views::lease(state, lease, as_of.max(state.clock)).ok_or_else(unknown)
    }

    fn opened(&self, account: &str) -> Result<&AccountState, Refusal> {
        self.state(account)
            .filter(|state| state.opened)
            .ok_or_else(|| unknown_account(account))
    }

    fn index(&mut self, account: &str, event: &Event) {
        let (map, id) = match &event.body {
            EventBody::LeaseGranted { lease, .. } | EventBody::LeaseQueued { lease, .. } => {
                (&mut self.lease_owner, lease)
            }
            EventBody::PlanStarted { order, .. }
            | EventBody::PlanUpgraded { order, .. }
            | EventBody::PlanQueued { order, .. }
            | EventBody::ExtensionGranted { order, .. } => (&mut self.order_owner, order),
            EventBody::UsageRecorded { record, .. } => (&mut self.record_owner, record),
            EventBody::InvoiceRecorded { invoice, .. } => (&mut self.invoice_owner, invoice),
            _ => return,
        };
        map.insert(id.clone(), account.to_string());
    }

    /// An account stream's last revision (`None` while it has no events). The server
    /// compares it with what it last published to find the accounts a command or a tick
    /// changed.
    pub fn revision(&self, account: &str) -> Option<u64> {
        self.accounts.get(account).and_then(|slot| slot.revision)
    }

    /// The account a lease belongs to.
    pub fn lease_owner(&self, lease: &str) -> Option<&str> {
        self.lease_owner.get(lease).map(String::as_str)
    }
}

fn unknown_account(account: &str) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownAccount,
        format!("account {account:?} is not open"),
    )
}
