//! The engine (ARCHITECTURE "How a command flows").

use std::collections::HashMap;

use ledger::account::AccountState;
use ledger::clock::Timestamp;
use ledger::decide::{self, Command, Context, ErrorCode, Refusal};
use ledger::due;
use ledger::event::{Event, EventBody, EVENT_VERSION};
use ledger::log::{EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, MAX_READ_COUNT};
use projections::views::{self, BalanceView, LeaseView, OrderView, QuotaView};
use serde::Serialize;
use uuid::Uuid;

/// How often a conflicting append is retried after reloading the stream. Only a second
/// writer causes conflicts; a few retries absorb a race, more would hide a bug.
const MAX_APPEND_ATTEMPTS: usize = 3;

const STREAM_PREFIX: &str = "account-";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("the log holds an event this build cannot read at position {position}: {message}")]
    Corrupt { position: u64, message: String },
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
    clock: Timestamp,
    events_appended: u64,
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

fn encode(event: &Event) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: event.body.type_name().into(),
        version: EVENT_VERSION,
        data: event.encode(),
    }
}

impl<L: EventLog> Engine<L> {
    /// Opens the engine over a log, folding every stream from the start (I3).
    pub async fn open(log: L, context: Context) -> Result<Engine<L>, EngineError> {
        let mut engine = Engine {
            log,
            context,
            accounts: HashMap::new(),
            lease_owner: HashMap::new(),
            order_owner: HashMap::new(),
            record_owner: HashMap::new(),
            clock: Timestamp::default(),
            events_appended: 0,
        };
        let mut after = 0;
        loop {
            let page = engine.log.read_all(after, MAX_READ_COUNT).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for recorded in &page {
                let Some(account) = recorded.stream.strip_prefix(STREAM_PREFIX) else {
                    continue;
                };
                let event = decode(recorded)?;
                engine.clock = engine.clock.max(event.at);
                let slot = engine
                    .accounts
                    .entry(account.to_string())
                    .or_insert_with(|| Slot {
                        state: AccountState::new(account),
                        revision: None,
                    });
                slot.state.evolve(&event);
                slot.revision = Some(recorded.revision);
                index(
                    &mut engine.lease_owner,
                    &mut engine.order_owner,
                    &mut engine.record_owner,
                    account,
                    &event,
                );
            }
        }
        Ok(engine)
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

    fn check_time(&self, now: Timestamp) -> Result<(), Refusal> {
        if now < self.clock {
            return Err(Refusal::new(
                ErrorCode::TimeWentBackwards,
                format!("{now} is before the last instant seen, {}", self.clock),
            ));
        }
        Ok(())
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
            _ => Ok(account),
        }
    }

    /// Carries out a command at `now`: due events first, then the command's, in one append.
    pub async fn execute(
        &mut self,
        target: Target,
        command: Command,
        now: Timestamp,
    ) -> Result<Outcome, EngineError> {
        self.check_time(now)?;
        if let Command::RequestLease(request) = &command {
            // M10: an existing lease id answers that lease's state.
            // A lease id of another account is refused like a foreign order id: answering
            // would show one account's lease to another.
            if let Some(owner) = self.lease_owner.get(&request.lease) {
                if target != Target::Account(owner.clone()) {
                    return Err(Refusal::invalid(format!(
                        "lease {:?} belongs to another account",
                        request.lease
                    ))
                    .into());
                }
                return self.lease_outcome(owner, &request.lease, now);
            }
        }
        let account = self.route(&target, &command)?;
        decide::check_id("account", &account)?;
        self.clock = now;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_execute(&account, &command, now).await {
                Err(EngineError::Log(LogError::Conflict { .. }))
                    if attempts < MAX_APPEND_ATTEMPTS =>
                {
                    self.reload(&account).await?;
                }
                result => return result,
            }
        }
    }

    async fn try_execute(
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
        let mut next = slot.state.clone();
        let revision = slot.revision;
        let mut events = due::due(&next, now);
        for event in &events {
            next.evolve(event);
        }
        let decided = decide::decide(&next, &self.context, command, now);
        if let Ok(decided) = &decided {
            for event in decided {
                next.evolve(event);
            }
            events.extend(decided.iter().cloned());
        }
        if !events.is_empty() {
            self.append(account, revision, &events, next).await?;
        }
        decided?;
        self.outcome(account, command, now)
    }

    async fn append(
        &mut self,
        account: &str,
        revision: Option<u64>,
        events: &[Event],
        next: AccountState,
    ) -> Result<(), EngineError> {
        let expected = revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
        let records = events.iter().map(encode).collect();
        let outcome = self
            .log
            .append(&stream_of(account), expected, records)
            .await?;
        for event in events {
            index(
                &mut self.lease_owner,
                &mut self.order_owner,
                &mut self.record_owner,
                account,
                event,
            );
        }
        self.events_appended += events.len() as u64;
        self.accounts.insert(
            account.to_string(),
            Slot {
                state: next,
                revision: Some(outcome.last_revision),
            },
        );
        Ok(())
    }

    /// Folds what another writer appended since our last read.
    async fn reload(&mut self, account: &str) -> Result<(), EngineError> {
        let slot = self
            .accounts
            .entry(account.to_string())
            .or_insert_with(|| Slot {
                state: AccountState::new(account),
                revision: None,
            });
        let from = slot.revision.map_or(0, |revision| revision + 1);
        let page = self
            .log
            .read_stream(&stream_of(account), from, MAX_READ_COUNT)
            .await?;
        for recorded in &page {
            let event = decode(recorded)?;
            slot.state.evolve(&event);
            slot.revision = Some(recorded.revision);
            index(
                &mut self.lease_owner,
                &mut self.order_owner,
                &mut self.record_owner,
                account,
                &event,
            );
        }
        Ok(())
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
}

fn unknown_account(account: &str) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownAccount,
        format!("account {account:?} is not open"),
    )
}

fn index(
    leases: &mut HashMap<String, String>,
    orders: &mut HashMap<String, String>,
    records: &mut HashMap<String, String>,
    account: &str,
    event: &Event,
) {
    let (map, id) = match &event.body {
        EventBody::LeaseGranted { lease, .. } => (leases, lease),
        EventBody::PlanStarted { order, .. }
        | EventBody::PlanUpgraded { order, .. }
        | EventBody::PlanQueued { order, .. }
        | EventBody::ExtensionGranted { order, .. } => (orders, order),
        EventBody::UsageRecorded { record, .. } => (records, record),
        _ => return,
    };
    map.insert(id.clone(), account.to_string());
}
