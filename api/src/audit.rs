//! Read-only audit commands over a data directory (issue 6): `dcu statement`, `dcu explain`,
//! `dcu reconcile`, `dcu verify`, `dcu replay --verify`. They never write to the log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::bail;
use ledger::account::{AccountState, BucketState};
use ledger::clock::Timestamp;
use ledger::decide::Context;
use ledger::due;
use ledger::event::{Event, EventBody};
use ledger::log::sqlite::{verify_chain, SqliteLog, DB_FILE_NAME};
use ledger::log::{EventLog, RecordedEvent, MAX_READ_COUNT};
use ledger::Dcu;
use projections::reconcile::{self, Report};
use projections::statement::{self, booked_before, LoggedEvent, Statement};
use projections::views;
use scheduler::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

const STREAM_PREFIX: &str = "account-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JsonOrCsv {
    Json,
    Csv,
}

/// The audit subcommands, flattened into `dcu`'s.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Every change of an account's balance, with the event that caused it (docs/reconciliation.md).
    Statement {
        account: String,
        /// The data directory holding the log.
        #[arg(long)]
        data: PathBuf,
        /// Start of the range (RFC 3339), inclusive; default: since the account opened.
        #[arg(long)]
        from: Option<String>,
        /// End of the range (RFC 3339), exclusive.
        #[arg(long, conflicts_with = "as_of")]
        to: Option<String>,
        /// The statement as of this instant (inclusive); default: the log's last instant.
        #[arg(long)]
        as_of: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: TextOrJson,
    },
    /// Which buckets make up an account's balance and which events made each, in plain words.
    Explain {
        account: String,
        #[arg(long)]
        data: PathBuf,
        /// Default: the log's last instant.
        #[arg(long)]
        as_of: Option<String>,
    },
    /// The reconciliation report of [from, to), per account and in total, with daily rows.
    Reconcile {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "json")]
        format: JsonOrCsv,
    },
    /// Checks every hash-chain link of the log and names the first broken event.
    Verify {
        #[arg(long)]
        data: PathBuf,
    },
    /// Rebuilds every account from the log; with --verify, twice (engine and stream by stream)
    /// and compares, printing a digest per projection.
    Replay {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        verify: bool,
    },
}

/// Runs an audit command, writing its output to stdout.
pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    let text = match command {
        AuditCommand::Statement {
            account,
            data,
            from,
            to,
            as_of,
            format,
        } => {
            let log = load(&data).await?;
            let from = from.as_deref().map(instant).transpose()?;
            let to_given = to.is_some();
            let to = match (to, as_of) {
                (Some(to), _) => instant(&to)?,
                (None, Some(as_of)) => instant(&as_of)?.plus_seconds(1),
                (None, None) => log.last_at.unwrap_or_default().plus_seconds(1),
            };
            if let Some(from) = from.filter(|from| *from >= to) {
                bail!(
                    "--from ({from}) must be before --to ({to}, {}; the statement covers \
                     [from, to))",
                    if to_given {
                        "as given"
                    } else {
                        "by default one second after the log's last event or --as-of"
                    }
                );
            }
            let statement = log.statement(&account, from, to)?;
            match format {
                TextOrJson::Json => serde_json::to_string_pretty(&statement)? + "\n",
                TextOrJson::Text => render_statement(&statement),
            }
        }
        AuditCommand::Explain {
            account,
            data,
            as_of,
        } => {
            let log = load(&data).await?;
            let as_of = match as_of {
                Some(as_of) => instant(&as_of)?,
                None => log.last_at.unwrap_or_default(),
            };
            explain(&log, &account, as_of)?
        }
        AuditCommand::Reconcile {
            data,
            from,
            to,
            format,
        } => {
            let log = load(&data).await?;
            let report = reconcile::reconcile(&log.accounts, instant(&from)?, instant(&to)?)?;
            match format {
                JsonOrCsv::Json => serde_json::to_string_pretty(&report)? + "\n",
                JsonOrCsv::Csv => reconcile::to_csv(&report),
            }
        }
        AuditCommand::Verify { data } => verify(&data)?,
        AuditCommand::Replay { data, verify } => replay(&data, verify).await?,
    };
    use std::io::Write as _;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn instant(text: &str) -> anyhow::Result<Timestamp> {
    // The parse error already names the text and what is wrong with it.
    Ok(Timestamp::parse(text)?)
}

/// Every account's events as the log recorded them.
#[derive(Debug, Default)]
pub struct LoadedLog {
    pub accounts: BTreeMap<String, Vec<LoggedEvent>>,
    pub first_at: Option<Timestamp>,
    pub last_at: Option<Timestamp>,
    pub events: u64,
}

impl LoadedLog {
    fn recorded(&self, account: &str) -> anyhow::Result<&[LoggedEvent]> {
        match self.accounts.get(account) {
            Some(events) => Ok(events),
            None => bail!("no account {account:?} in the log"),
        }
    }

    pub fn statement(
        &self,
        account: &str,
        from: Option<Timestamp>,
        to: Timestamp,
    ) -> anyhow::Result<Statement> {
        Ok(statement::statement(
            account,
            self.recorded(account)?,
            from,
            to,
        ))
    }
}

fn open_existing(dir: &Path) -> anyhow::Result<SqliteLog> {
    let path = dir.join(DB_FILE_NAME);
    if !path.exists() {
        bail!("no event log at {}", path.display());
    }
    Ok(SqliteLog::open(dir)?)
}

/// Reads the whole log of `dir`, grouped by account.
pub async fn load(dir: &Path) -> anyhow::Result<LoadedLog> {
    // A statement or a report of a forged log would present the forgery as the books: the
    // chains come first.
    crate::store::check_sqlite_chain(dir)?;
    let log = open_existing(dir)?;
    let loaded = load_from(&log).await;
    log.close().await?;
    loaded
}

async fn load_from(log: &SqliteLog) -> anyhow::Result<LoadedLog> {
    let mut loaded = LoadedLog::default();
    let mut after = 0;
    loop {
        let page = log.read_all(after, MAX_READ_COUNT).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        loaded.add_page(page)?;
    }
    Ok(loaded)
}

impl LoadedLog {
    /// Adds a page of the whole log (global order): account events are decoded and grouped;
    /// other streams are skipped.
    pub fn add_page(&mut self, page: Vec<RecordedEvent>) -> anyhow::Result<()> {
        for recorded in page {
            let Some(account) = recorded.stream.strip_prefix(STREAM_PREFIX) else {
                continue;
            };
            let event = Event::decode(&recorded.event_type, recorded.version, &recorded.data)
                .map_err(|e| anyhow::anyhow!("position {}: {e}", recorded.position))?;
            self.first_at = Some(self.first_at.map_or(event.at, |at| at.min(event.at)));
            self.last_at = Some(self.last_at.map_or(event.at, |at| at.max(event.at)));
            self.events += 1;
            self.accounts
                .entry(account.to_string())
                .or_default()
                .push(LoggedEvent {
                    revision: Some(recorded.revision),
                    event,
                });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Text

/// An instant in business time with UTC in brackets: `2025-05-15 00:00:00 +08:00
/// [2025-05-14T16:00:00Z]`.
pub fn business_time(at: Timestamp) -> String {
    let local = at
        .in_business_time()
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default();
    format!("{local} +08:00 [{at}]")
}

fn revision_text(revision: Option<u64>) -> String {
    revision.map_or_else(|| "due".to_string(), |r| r.to_string())
}

pub fn render_statement(statement: &Statement) -> String {
    let mut out = String::new();
    let from = statement
        .from
        .map_or_else(|| "the account's opening".to_string(), business_time);
    let _ = writeln!(out, "Statement of {}", statement.account);
    let _ = writeln!(out, "from {from}");
    let _ = writeln!(out, "to   {} (exclusive)", business_time(statement.to));
    let balances = |name: &str, b: &statement::Balances| {
        format!(
            "{name} balance {} DCU (active {}, inactive {}, arrears {})",
            b.balance, b.active, b.inactive, b.arrears
        )
    };
    let _ = writeln!(out, "{}", balances("Opening", &statement.opening));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<19} {:>4} {:<18} {:<12} {:>6} {:<11} {:>10} {:>10} {:>10}  detail",
        "at (+08:00)", "rev", "event", "kind", "bucket", "source", "amount", "before", "after"
    );
    for line in &statement.lines {
        let at = business_time(line.at);
        let at = at.split(" +08:00").next().unwrap_or_default();
        let movement = if line.amount.is_zero() {
            format!(
                "moves active {}, inactive {}, arrears {}",
                signed(line.active),
                signed(line.inactive),
                signed(line.arrears)
            )
        } else {
            String::new()
        };
        let detail = if movement.is_empty() {
            line.detail.clone()
        } else {
            format!("{} ({movement})", line.detail)
        };
        let kind = serde_json::to_value(line.kind)
            .ok()
            .and_then(|value| value.as_str().map(String::from))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<19} {:>4} {:<18} {:<12} {:>6} {:<11} {:>10} {:>10} {:>10}  {}",
            at,
            revision_text(line.revision),
            line.event,
            kind,
            line.bucket.map_or_else(String::new, |b| b.to_string()),
            line.source.clone().unwrap_or_default(),
            signed(line.amount),
            line.balance_before.to_string(),
            line.balance_after.to_string(),
            detail
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", balances("Closing", &statement.closing));
    if !statement.orders.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Orders:");
        for order in &statement.orders {
            let _ = writeln!(
                out,
                "  {}  rev {}  {}  order {}  {}  {} CNY{}  {}",
                business_time(order.at),
                revision_text(order.revision),
                order.event,
                order.order,
                order.plan,
                order.price_cny,
                if order.edu { " (edu)" } else { "" },
                order
                    .invoice
                    .as_ref()
                    .map_or_else(|| "not invoiced".to_string(), |i| format!("invoice {i}"))
            );
        }
    }
    if !statement.invoices.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Invoices:");
        for invoice in &statement.invoices {
            let _ = writeln!(
                out,
                "  {}  rev {}  invoice {}  {}  {} CNY  orders {}",
                business_time(invoice.at),
                revision_text(invoice.revision),
                invoice.invoice,
                invoice.item,
                invoice.amount_cny,
                invoice.orders.join(", ")
            );
        }
    }
    if !statement.consistent {
        let _ = writeln!(
            out,
            "\nWARNING: some event's lines do not add up to its change of balance"
        );
    }
    out
}

fn signed(amount: Dcu) -> String {
    if amount.is_positive() {
        format!("+{amount}")
    } else {
        amount.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Explain

/// What happened to one bucket, in order.
#[derive(Default)]
struct BucketStory {
    origin: String,
    notes: Vec<String>,
    spent: Dcu,
    charges: u32,
    first_spend: Option<Timestamp>,
    last_spend: Option<Timestamp>,
    /// For a carry-over bucket: (bucket, amount) carried into it.
    carried_from: Vec<(u32, Dcu)>,
}

fn event_name(logged: &LoggedEvent) -> String {
    format!(
        "[{} {}]",
        match logged.revision {
            Some(revision) => format!("event rev {revision}"),
            None => "due event, not yet written".into(),
        },
        logged.event.body.type_name()
    )
}

fn explain(log: &LoadedLog, account: &str, as_of: Timestamp) -> anyhow::Result<String> {
    let recorded = log.recorded(account)?;
    let events = booked_before(account, recorded, as_of.plus_seconds(1));
    let mut stories: BTreeMap<u32, BucketStory> = BTreeMap::new();
    let state = statement::walk(account, &events, |before, logged| {
        story_step(&mut stories, before, logged);
    });
    let live = due::live(&state, as_of.max(state.clock));
    let balance = views::balance_of_live(&live);
    let mut out = String::new();
    let _ = writeln!(out, "Account {account}, as of {}", business_time(as_of));
    if !state.opened {
        let _ = writeln!(out, "The account was not open yet.");
        return Ok(out);
    }
    if live.banned {
        let _ = writeln!(
            out,
            "The account is banned: its credit was forfeited and it cannot buy or run jobs."
        );
    }
    match &live.period {
        Some(period) => {
            let _ = writeln!(
                out,
                "Current plan: {} (order {}), period from {} until {}.",
                period.terms.plan,
                period.order,
                business_time(period.started_at),
                business_time(period.ends_at)
            );
        }
        None => {
            let _ = writeln!(out, "No current plan.");
        }
    }
    for queued in &live.queue {
        let _ = writeln!(
            out,
            "Waiting to start after the current period: {} (order {}).",
            queued.terms.plan, queued.order
        );
    }
    let _ = writeln!(
        out,
        "Balance: {} DCU usable now ({} DCU active − {} DCU owed), plus {} DCU of carry-over \
         waiting for a plan.",
        balance.available, balance.active, balance.arrears, balance.inactive
    );
    if live.buckets.is_empty() {
        let _ = writeln!(out, "There is no credit left in any bucket.");
    } else {
        let _ = writeln!(out, "\nThe credit is made of these buckets:");
    }
    let mut buckets = live.buckets.clone();
    buckets.sort_by_key(|bucket| bucket.id);
    for bucket in &buckets {
        let state_text = match bucket.state {
            BucketState::Active => format!("usable until {}", business_time(bucket.ends_at)),
            BucketState::Inactive => format!(
                "NOT usable yet: it becomes usable if a plan starts before {}, else it expires then",
                business_time(bucket.ends_at)
            ),
        };
        let _ = writeln!(
            out,
            "\n* Bucket {} ({}): {} DCU left of {} DCU; {}.",
            bucket.id,
            bucket.source.label(),
            bucket.remaining,
            bucket.granted,
            state_text
        );
        if let Some(story) = stories.get(&bucket.id) {
            write_story(&mut out, story, &stories, "    ");
        }
    }
    let running_unbilled: Dcu = state
        .running
        .values()
        .map(|running| running.pending_cost(as_of.max(state.clock)))
        .sum();
    if !live.running.is_empty() {
        let _ = writeln!(out, "\nRunning jobs:");
        for (lease, running) in &live.running {
            let _ = writeln!(
                out,
                "* Lease {lease}: {} on {} × {} card(s) since {}, {} DCU so far.",
                statement::kind_name(running.terms.kind),
                running.terms.model,
                running.terms.cards,
                business_time(running.granted_at),
                running.charged
            );
        }
        let _ = writeln!(
            out,
            "  ({running_unbilled} DCU of that is counted live and will be billed at the next heartbeat.)"
        );
    }
    if live.arrears.is_positive() {
        let _ = writeln!(
            out,
            "\n{} DCU of usage could not be covered by credit (arrears); the next credit \
             (a purchase or an activated carry-over) pays it first.",
            live.arrears
        );
    }
    let _ = writeln!(
        out,
        "\nSo far: {} DCU granted, {} DCU used, {} DCU expired, {} DCU forfeited.",
        live.totals.granted, live.totals.metered, live.totals.expired, live.totals.forfeited
    );
    Ok(out)
}

fn write_story(
    out: &mut String,
    story: &BucketStory,
    stories: &BTreeMap<u32, BucketStory>,
    indent: &str,
) {
    let _ = writeln!(out, "{indent}{}", story.origin);
    for (from, amount) in &story.carried_from {
        let _ = writeln!(out, "{indent}- {amount} DCU came from bucket {from}:");
        if let Some(origin) = stories.get(from) {
            let deeper = format!("{indent}    ");
            write_story(out, origin, stories, &deeper);
        }
    }
    for note in &story.notes {
        let _ = writeln!(out, "{indent}{note}");
    }
    if story.charges > 0 {
        let (first, last) = (
            story.first_spend.unwrap_or_default(),
            story.last_spend.unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "{indent}{} DCU of it was used by {} charge(s) between {} and {}.",
            story.spent,
            story.charges,
            business_time(first),
            business_time(last)
        );
    }
}

fn story_step(
    stories: &mut BTreeMap<u32, BucketStory>,
    before: &AccountState,
    logged: &LoggedEvent,
) {
    let at = business_time(logged.event.at);
    let name = event_name(logged);
    let price = |order: &str| {
        before
            .orders
            .get(order)
            .map(|record| format!(", paid {} CNY", record.price_cny))
            .unwrap_or_default()
    };
    let mut granted = |bucket: u32, what: String, arrears_paid: Dcu| {
        let story = stories.entry(bucket).or_default();
        story.origin = format!("Granted on {at} by {what} {name}.");
        if arrears_paid.is_positive() {
            story
                .notes
                .push(format!("{arrears_paid} DCU of it paid arrears at once."));
        }
    };
    match &logged.event.body {
        EventBody::PlanStarted {
            order,
            terms,
            payment,
            bucket,
            arrears_paid,
            ..
        }
        | EventBody::PlanUpgraded {
            order,
            terms,
            payment,
            bucket,
            arrears_paid,
            ..
        } => granted(
            *bucket,
            format!(
                "order {order} (plan {}, {} DCU, paid {} CNY)",
                terms.plan, terms.grant_dcu, payment.price_cny
            ),
            *arrears_paid,
        ),
        EventBody::QueuedPlanStarted {
            order,
            bucket,
            arrears_paid,
            ..
        } => {
            let plan = before
                .queue
                .iter()
                .find(|queued| &queued.order == order)
                .map(|queued| queued.terms.plan.clone())
                .unwrap_or_default();
            granted(
                *bucket,
                format!(
                    "order {order} (plan {plan}{}), which was waiting and started when the period before it ended",
                    price(order)
                ),
                *arrears_paid,
            );
        }
        EventBody::ExtensionGranted {
            order,
            grant_dcu,
            payment,
            bucket,
            arrears_paid,
            ..
        } => granted(
            *bucket,
            format!(
                "order {order} (extension pack, {grant_dcu} DCU, paid {} CNY)",
                payment.price_cny
            ),
            *arrears_paid,
        ),
        _ => {}
    }
    match &logged.event.body {
        EventBody::PlanUpgraded {
            order,
            period_ends_at,
            ..
        } => {
            for bucket in &before.buckets {
                let refreshed = bucket.state == BucketState::Active
                    && bucket.source != ledger::account::BucketSource::CarryOver;
                if refreshed {
                    stories.entry(bucket.id).or_default().notes.push(format!(
                        "On {at} the upgrade by order {order} moved its expiry to {} {name}.",
                        business_time(*period_ends_at)
                    ));
                }
            }
        }
        EventBody::PeriodEnded {
            carried,
            carry_over_bucket: Some(into),
            window_ends_at,
        } => {
            let story = stories.entry(*into).or_default();
            let total: Dcu = carried.iter().map(|item| item.amount).sum();
            story.origin = format!(
                "Made on {at} when the period ended: {total} DCU of unused credit carried over \
                 (once only), waiting for a plan until {} {name}.",
                business_time(*window_ends_at)
            );
            story.carried_from = carried
                .iter()
                .map(|item| (item.bucket, item.amount))
                .collect();
        }
        EventBody::CarryOverActivated {
            bucket,
            expires_at,
            arrears_paid,
        } => {
            let story = stories.entry(*bucket).or_default();
            story.notes.push(format!(
                "Activated on {at} because a plan started inside its window; it now expires on {} {name}.",
                business_time(*expires_at)
            ));
            if arrears_paid.is_positive() {
                story
                    .notes
                    .push(format!("{arrears_paid} DCU of it paid arrears then."));
            }
        }
        EventBody::UsageRecorded { charge, .. } | EventBody::LeaseMetered { charge, .. } => {
            for debit in &charge.debits {
                let story = stories.entry(debit.bucket).or_default();
                story.spent += debit.amount;
                story.charges += 1;
                story.first_spend.get_or_insert(logged.event.at);
                story.last_spend = Some(logged.event.at);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Verify and replay

fn verify(dir: &Path) -> anyhow::Result<String> {
    let report = verify_chain(dir)?;
    match report.broken {
        Some(broken) => bail!(
            "the log is NOT intact: first broken event at position {} (stream {}, revision {}): {} \
             ({} events checked)",
            broken.position,
            broken.stream,
            broken.revision,
            broken.reason,
            report.events
        ),
        None => Ok(format!(
            "dcu verify: ok, {} events in {} streams, every link holds; head log_hash {}\n",
            report.events,
            report.streams,
            report.head.unwrap_or_else(|| "(empty log)".into())
        )),
    }
}

/// SHA-256 of the canonical JSON of a value (keys in a fixed order: structs and BTreeMaps).
pub fn digest<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let bytes = serde_json::to_vec(value)?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// The three projections of a set of account states and their events.
#[derive(Debug, PartialEq, Eq)]
pub struct Digests {
    pub states: String,
    pub balances: String,
    pub reconciliation: String,
}

fn digests(
    states: &BTreeMap<String, AccountState>,
    events: &BTreeMap<String, Vec<LoggedEvent>>,
    range: Option<(Timestamp, Timestamp)>,
) -> anyhow::Result<Digests> {
    let balances: BTreeMap<&String, views::BalanceView> = states
        .iter()
        .filter(|(_, state)| state.opened)
        .map(|(id, state)| {
            let at = range.map_or(state.clock, |(_, last)| last).max(state.clock);
            (id, views::balance(state, at))
        })
        .collect();
    let totals = match range {
        Some((first, last)) => {
            Some(reconcile::reconcile(events, first, last.plus_seconds(1))?.total)
        }
        None => None,
    };
    Ok(Digests {
        states: digest(states)?,
        balances: digest(&balances)?,
        reconciliation: digest(&totals)?,
    })
}

async fn replay(dir: &Path, verify: bool) -> anyhow::Result<String> {
    if verify {
        // A replay of a forged log would verify the forgery: the chains come first.
        crate::store::check_sqlite_chain(dir)?;
    }
    let log = open_existing(dir)?;
    let loaded = load_from(&log).await?;
    let range = loaded.first_at.zip(loaded.last_at);
    // 1. The engine's own recovery path.
    let engine = Engine::open(log, Context::default()).await?;
    let engine_states: BTreeMap<String, AccountState> = engine
        .account_ids()
        .filter_map(|id| engine.state(id).map(|state| (id.clone(), state.clone())))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dcu replay: {} events, {} accounts, last instant {}",
        loaded.events,
        engine_states.len(),
        loaded.last_at.map_or_else(|| "-".into(), business_time)
    );
    let engine_digests = digests(&engine_states, &loaded.accounts, range)?;
    if verify {
        // 2. A fresh fold, stream by stream, from reads of each stream.
        let mut streams: BTreeMap<String, Vec<LoggedEvent>> = BTreeMap::new();
        for account in loaded.accounts.keys() {
            let mut events = Vec::new();
            let mut from = 0;
            loop {
                let page = engine
                    .log()
                    .read_stream(&format!("{STREAM_PREFIX}{account}"), from, MAX_READ_COUNT)
                    .await?;
                let Some(last) = page.last() else { break };
                from = last.revision + 1;
                for recorded in page {
                    let event =
                        Event::decode(&recorded.event_type, recorded.version, &recorded.data)
                            .map_err(|e| anyhow::anyhow!("position {}: {e}", recorded.position))?;
                    events.push(LoggedEvent {
                        revision: Some(recorded.revision),
                        event,
                    });
                }
            }
            streams.insert(account.clone(), events);
        }
        let folded: BTreeMap<String, AccountState> = streams
            .iter()
            .map(|(id, events)| {
                let state = AccountState::replay(id, events.iter().map(|logged| &logged.event));
                (id.clone(), state)
            })
            .collect();
        let first_difference = engine_states
            .keys()
            .chain(folded.keys())
            .find(|id| {
                let a = engine_states.get(*id).map(serde_json::to_value);
                let b = folded.get(*id).map(serde_json::to_value);
                match (a, b) {
                    (Some(Ok(a)), Some(Ok(b))) => a != b,
                    _ => true,
                }
            })
            .cloned();
        let folded_digests = digests(&folded, &streams, range)?;
        engine.log().close().await?;
        if let Some(account) = first_difference {
            bail!("replay differs: account {account:?} is not the same in the engine and in a fresh fold of its stream");
        }
        if engine_digests != folded_digests {
            bail!("replay differs: the projections' digests are not the same in both rebuilds");
        }
    } else {
        engine.log().close().await?;
    }
    let _ = writeln!(
        out,
        "account states            sha256 {}",
        engine_digests.states
    );
    let _ = writeln!(
        out,
        "balances at last instant  sha256 {}",
        engine_digests.balances
    );
    let _ = writeln!(
        out,
        "reconciliation totals     sha256 {}",
        engine_digests.reconciliation
    );
    if verify {
        let _ = writeln!(
            out,
            "verified: the engine's recovery and a fresh fold stream by stream agree on every account and every digest"
        );
    }
    Ok(out)
}

/// A report over a loaded log (for tests).
pub fn report(log: &LoadedLog, from: Timestamp, to: Timestamp) -> anyhow::Result<Report> {
    Ok(reconcile::reconcile(&log.accounts, from, to)?)
}
