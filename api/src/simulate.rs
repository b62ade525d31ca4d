//! `dcu simulate`: replays a public GPU cluster trace through the real engine over a real
//! SQLite log, in virtual time (it never sleeps). Mappings and policies are in
//! `docs/simulation.md`; in short:
//!
//! - each GPU task is a lease request at its creation time (an instant counted from
//!   [`TRACE_EPOCH`]) and a release at its deletion time; CPU-only tasks and tasks that never
//!   started are counted and skipped; a 2025 instance without a creation time existed at the
//!   trace's start, one without a deletion time runs to the trace's end;
//! - the tenant is `app_name` (2025) or an FNV-1a hash of the task name into `--accounts`
//!   accounts (2023);
//! - each account opens and buys the smallest plan whose cap fits its largest job that fits
//!   any plan, renews it (queued, P3) a day before each period ends while it still has jobs
//!   to come, and buys an extension pack before a request when its live balance is under a
//!   tenth of its plan's grant, at most `--packs-per-month` per 30 days.
//!
//! Every step goes through `Engine::execute` at its instant, taken from one time-ordered
//! queue (a binary heap); the engine's `tick` does period ends, exhaustion and lease TTLs.
//! The report is read back from the log at the end.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use ledger::amount::Dcu;
use ledger::catalog::Catalog;
use ledger::clock::{Timestamp, DAY_S, PERIOD_S};
use ledger::decide::{self, Command, Context, LeaseRequest};
use ledger::event::{Event, EventBody, JobKind, LeaseEnd, RevokeReason};
use ledger::log::sqlite::SqliteLog;
use ledger::log::{EventLog, MAX_READ_COUNT};
use projections::views::LeaseState;
use scheduler::{Engine, EngineError, NodeSpec, Pool, Target};
use serde::Serialize;

use crate::traces::{Trace, TraceFormat};

/// Trace time 0 is this instant: 2025-01-01T00:00:00Z.
pub const TRACE_EPOCH: i64 = 1_735_689_600;
/// Default number of accounts the 2023 trace (which has no tenant column) is hashed into.
pub const DEFAULT_ACCOUNTS: u32 = 64;
/// Default extension packs an account buys at most per 30 days.
pub const DEFAULT_PACKS_PER_MONTH: u32 = 4;
/// Default heartbeat interval: 0, no heartbeats and lease expiry off. Heartbeats every 30 s
/// would multiply the events of the 2023 trace (tasks run for weeks) by thousands.
pub const DEFAULT_HEARTBEAT_S: u32 = 0;
/// With heartbeats on, the lease TTL is this many heartbeat intervals (30 s and 90 s, M6).
pub const TTL_HEARTBEATS: u32 = 3;
/// Without `--pool`: this many nodes of 8 cards of each model (the scenario default).
/// Steps decided between two group commits. Larger batches share more fsyncs; this many
/// events are at stake (in memory only) if the process dies mid-run, which for a simulation
/// only means running it again.
pub const COMMIT_EVERY_STEPS: usize = 1_000;
pub const DEFAULT_POOL_NODES: usize = 16;
pub const DEFAULT_POOL_CARDS: u32 = 8;
/// An account tops up when its live balance is under this share of its plan's grant.
pub const LOW_BALANCE_DIVISOR: i64 = 10;
/// The renewal is bought this long before the period ends.
pub const RENEW_BEFORE_S: i64 = DAY_S;
/// Most accounts a run may hash into.
pub const MAX_ACCOUNTS: u32 = 1_000_000;

/// What `dcu simulate` is asked to do.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub format: Option<TraceFormat>,
    pub accounts: u32,
    pub pool: Option<Vec<NodeSpec>>,
    pub heartbeat_s: u32,
    pub packs_per_month: u32,
    /// Show a progress bar on stderr (only honoured when stderr is a terminal).
    pub progress: bool,
}

impl Default for SimulateOptions {
    fn default() -> SimulateOptions {
        SimulateOptions {
            format: None,
            accounts: DEFAULT_ACCOUNTS,
            pool: None,
            heartbeat_s: DEFAULT_HEARTBEAT_S,
            packs_per_month: DEFAULT_PACKS_PER_MONTH,
            progress: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskCounts {
    /// Rows of the trace.
    pub rows: u64,
    /// Rows without a GPU (skipped).
    pub cpu_only: u64,
    /// GPU rows that never started in the trace (skipped).
    pub never_started: u64,
    /// Lease requests sent (rows = cpu_only + never_started + submitted).
    pub submitted: u64,
    /// Submitted jobs bigger than the largest plan's cap (refused, `parallelism_exceeded`,
    /// unless an earlier check refused them first).
    pub over_largest_cap: u64,
    /// Requests answered `granted` at once.
    pub granted_at_once: u64,
    /// Requests answered `queued` (M4).
    pub queued: u64,
    /// Leases that got cards (at once or from the queue).
    pub granted: u64,
    pub refused: BTreeMap<String, u64>,
    pub released: u64,
    pub expired: u64,
    pub revoked: BTreeMap<String, u64>,
    /// Queued leases that ended without cards, by reason (`released` when the task ended
    /// while it waited).
    pub cancelled: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PurchaseCounts {
    pub plans_started: u64,
    pub renewals_queued: u64,
    pub extensions: u64,
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DcuTotals {
    pub granted: Dcu,
    /// Metered usage (M5), including what became arrears.
    pub consumed: Dcu,
    pub spent: Dcu,
    pub arrears: Dcu,
    pub expired: Dcu,
    pub carried_over: Dcu,
    pub forfeited: Dcu,
    pub remaining: Dcu,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueWait {
    /// Leases that were queued and then granted.
    pub count: u64,
    pub p50_s: u64,
    pub p99_s: u64,
    pub max_s: u64,
}

/// What a run did; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: TraceFormat,
    pub accounts: u64,
    pub pool_cards: BTreeMap<String, u32>,
    pub heartbeat_s: u32,
    pub lease_ttl_s: u32,
    pub trace_start: String,
    pub trace_end: String,
    pub tasks: TaskCounts,
    pub heartbeats_sent: u64,
    /// Refused opens, releases and heartbeats (`release:unknown_lease`); expected empty.
    pub other_refused: BTreeMap<String, u64>,
    pub purchases: PurchaseCounts,
    pub dcu: DcuTotals,
    pub queue_wait: QueueWait,
    pub events_appended: u64,
    pub wall_s: f64,
    pub events_per_s: f64,
    /// SPEC I1 over every account and in total at the end.
    pub conservation_ok: bool,
}

/// FNV-1a, 64 bits: a stable hash (the same on every machine and release).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reads a trace file; errors name the file and the line.
pub fn load_trace(path: &Path, format: Option<TraceFormat>) -> anyhow::Result<Trace> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the trace {}", path.display()))?;
    Trace::read(std::io::BufReader::new(file), format)
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// Reads a pool file: a JSON array of `{"node", "model", "cards"}` (as in a scenario's
/// config line).
pub fn load_pool(path: &Path) -> anyhow::Result<Vec<NodeSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the pool file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON array of {{\"node\", \"model\", \"cards\"}}",
            path.display()
        )
    })
}

/// A GPU job of the trace, as a lease.
#[derive(Debug, Clone)]
struct Job {
    lease: String,
    account: usize,
    model: &'static str,
    cards: u32,
    submit: i64,
    end: i64,
}

#[derive(Debug, Clone)]
struct Tenant {
    id: String,
    edu: bool,
    first: i64,
    last_submit: i64,
    plan: String,
    grant: Dcu,
    packs: HashMap<i64, u32>,
}

/// One step of the simulation; at one instant they run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Open { account: usize },
    Buy { account: usize, renewal: u32 },
    Release { job: usize },
    Heartbeat { job: usize },
    Request { job: usize },
}

fn instant(seconds: i64) -> Timestamp {
    Timestamp(TRACE_EPOCH + seconds)
}

fn safe_id(candidate: &str, fallback: impl FnOnce() -> String) -> String {
    if decide::check_id("id", candidate).is_ok() {
        candidate.to_string()
    } else {
        fallback()
    }
}

/// Builds the jobs and tenants of a trace.
fn plan_jobs(
    trace: &Trace,
    options: &SimulateOptions,
    catalog: &Catalog,
    counts: &mut TaskCounts,
) -> anyhow::Result<(Vec<Job>, Vec<Tenant>)> {
    let accounts = options.accounts.clamp(1, MAX_ACCOUNTS);
    let largest_cap = catalog
        .plans
        .iter()
        .map(|plan| plan.parallelism_cap)
        .max()
        .unwrap_or(0);
    let units_per_card = |model: &str| catalog.model(model).map_or(1, |m| m.units_per_card);
    let mut tenant_index: HashMap<String, usize> = HashMap::new();
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut jobs = Vec::new();
    let mut leases = HashSet::new();
    let mut largest_job: Vec<u32> = Vec::new();
    for row in &trace.rows {
        counts.rows += 1;
        if row.num_gpu == 0 {
            counts.cpu_only += 1;
            continue;
        }
        // 2023: no scheduled time = never started. 2025: creation and scheduled are both
        // empty for an instance that existed before the trace began (it starts at 0).
        let (submit, started) = match trace.format {
            TraceFormat::Alibaba2023 => (row.creation.unwrap_or(0), row.scheduled.is_some()),
            TraceFormat::Alibaba2025 => match row.creation {
                Some(creation) => (creation, row.scheduled.is_some()),
                None => (0, true),
            },
        };
        if !started {
            counts.never_started += 1;
            continue;
        }
        let end = row.deletion.unwrap_or(trace.end).max(submit);
        let (model, cards) = if row.num_gpu == 1 && row.gpu_milli < 1_000 {
            ("dc100-40g", 1)
        } else {
            ("dc100-80g", row.num_gpu)
        };
        let units = cards * units_per_card(model);
        let tenant_key = match &row.tenant {
            Some(tenant) => safe_id(tenant, || format!("t-{:016x}", fnv1a(tenant))),
            None => format!("acct-{:03}", fnv1a(&row.id) % u64::from(accounts)),
        };
        let account = *tenant_index.entry(tenant_key.clone()).or_insert_with(|| {
            tenants.push(Tenant {
                edu: fnv1a(&tenant_key) & 1 == 1,
                id: tenant_key,
                first: submit,
                last_submit: submit,
                plan: String::new(),
                grant: Dcu::ZERO,
                packs: HashMap::new(),
            });
            largest_job.push(0);
            tenants.len() - 1
        });
        let tenant = &mut tenants[account];
        tenant.first = tenant.first.min(submit);
        tenant.last_submit = tenant.last_submit.max(submit);
        if units <= largest_cap {
            largest_job[account] = largest_job[account].max(units);
        } else {
            counts.over_largest_cap += 1;
        }
        let mut lease = safe_id(&row.id, || format!("task-{}", row.line));
        if !leases.insert(lease.clone()) {
            lease = format!("{lease}-line{}", row.line);
            leases.insert(lease.clone());
        }
        counts.submitted += 1;
        jobs.push(Job {
            lease,
            account,
            model,
            cards,
            submit,
            end,
        });
    }
    let mut plans: Vec<_> = catalog.plans.iter().collect();
    plans.sort_by_key(|plan| (plan.parallelism_cap, plan.rank));
    for (tenant, largest) in tenants.iter_mut().zip(largest_job) {
        let plan = plans
            .iter()
            .find(|plan| plan.parallelism_cap >= largest)
            .or(plans.last())
            .context("the catalog has no plans")?;
        tenant.plan.clone_from(&plan.id);
        tenant.grant = plan.grant_dcu;
    }
    Ok((jobs, tenants))
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

fn reason_name(reason: Option<RevokeReason>) -> String {
    match reason {
        None => "released".into(),
        Some(reason) => serde_json::to_value(reason)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{reason:?}")),
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Replays `trace` on a fresh log in `dir`.
pub async fn run(trace: &Trace, options: &SimulateOptions, dir: &Path) -> anyhow::Result<Report> {
    let started = Instant::now();
    let catalog = Catalog::default();
    let models: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
    let pool = match &options.pool {
        Some(specs) => Pool::new(specs, &models)?,
        None => Pool::uniform(&models, DEFAULT_POOL_NODES, DEFAULT_POOL_CARDS)?,
    };
    let mut pool_cards = BTreeMap::new();
    for node in pool.nodes() {
        *pool_cards.entry(node.model.clone()).or_insert(0) += node.cards;
    }
    let lease_ttl_s = options.heartbeat_s.saturating_mul(TTL_HEARTBEATS);
    let context = Context {
        catalog: catalog.clone(),
        lease_ttl_s,
    };
    let mut counts = TaskCounts::default();
    let (jobs, mut tenants) = plan_jobs(trace, options, &catalog, &mut counts)?;

    let log = SqliteLog::open(dir)?;
    if log.last_position() > 0 {
        anyhow::bail!(
            "{} already holds an event log; simulate needs an empty directory",
            dir.display()
        );
    }
    let mut engine = Engine::open_with_pool(log, context, Some(pool)).await?;

    let mut queue: BinaryHeap<Reverse<(i64, Step)>> = BinaryHeap::new();
    for (account, tenant) in tenants.iter().enumerate() {
        queue.push(Reverse((tenant.first, Step::Open { account })));
        queue.push(Reverse((
            tenant.first,
            Step::Buy {
                account,
                renewal: 0,
            },
        )));
        let mut renewal = 1_u32;
        loop {
            let starts = tenant.first + i64::from(renewal) * PERIOD_S;
            if starts > tenant.last_submit {
                break;
            }
            let at = (starts - RENEW_BEFORE_S).max(tenant.first);
            queue.push(Reverse((at, Step::Buy { account, renewal })));
            renewal += 1;
        }
    }
    for (job, spec) in jobs.iter().enumerate() {
        queue.push(Reverse((spec.submit, Step::Request { job })));
    }

    let progress = if options.progress && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(jobs.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} tasks ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    } else {
        None
    };

    let mut purchases = PurchaseCounts::default();
    let mut heartbeats_sent = 0_u64;
    let mut other_refused = BTreeMap::new();
    let mut accepted: HashSet<usize> = HashSet::new();
    let mut last_at = 0_i64;
    let mut staged = 0_usize;
    while let Some(Reverse((at, step))) = queue.pop() {
        // Steps are decided at once (each sees the ones before it) and made durable in
        // batches: one group commit per batch, the same log as one commit per step.
        staged += 1;
        if staged.is_multiple_of(COMMIT_EVERY_STEPS) {
            engine.commit().await?;
        }
        last_at = last_at.max(at);
        let now = instant(at);
        match step {
            Step::Open { account } => {
                let tenant = &tenants[account];
                let command = Command::Open { edu: tenant.edu };
                let target = Target::Account(tenant.id.clone());
                if let Err(code) = refused_ok(engine.execute_staged(&target, &command, now))? {
                    bump(&mut other_refused, &format!("open:{code}"));
                }
            }
            Step::Buy { account, renewal } => {
                let tenant = &tenants[account];
                let command = Command::Buy {
                    order: format!("{}-plan{renewal}", tenant.id),
                    plan: tenant.plan.clone(),
                    price_cny: None,
                    price_reason: None,
                };
                let target = Target::Account(tenant.id.clone());
                match refused_ok(engine.execute_staged(&target, &command, now))? {
                    Ok(_) if renewal == 0 => purchases.plans_started += 1,
                    Ok(_) => purchases.renewals_queued += 1,
                    Err(code) => bump(&mut purchases.refused, &code),
                }
            }
            Step::Request { job } => {
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
                let spec = &jobs[job];
                let tenant = &mut tenants[spec.account];
                top_up(&mut engine, tenant, options, at, &mut purchases).await?;
                let kind = if spec.cards > 1 {
                    JobKind::RunTask
                } else {
                    JobKind::GpuRun
                };
                let request = LeaseRequest {
                    lease: spec.lease.clone(),
                    kind,
                    model: spec.model.to_string(),
                    cards_per_worker: spec.cards,
                    workers: 1,
                };
                let target = Target::Account(tenant.id.clone());
                let command = Command::RequestLease(request);
                match refused_ok(engine.execute_staged(&target, &command, now))? {
                    Ok(scheduler::Outcome::Lease(view)) => {
                        match view.state {
                            LeaseState::Granted => counts.granted_at_once += 1,
                            LeaseState::Queued => counts.queued += 1,
                            _ => {}
                        }
                        accepted.insert(job);
                        queue.push(Reverse((spec.end, Step::Release { job })));
                        if options.heartbeat_s > 0 {
                            let next = at + i64::from(options.heartbeat_s);
                            if next < spec.end {
                                queue.push(Reverse((next, Step::Heartbeat { job })));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(code) => bump(&mut counts.refused, &code),
                }
            }
            Step::Heartbeat { job } => {
                let spec = &jobs[job];
                let account = &tenants[spec.account].id;
                let (running, waiting) = engine.state(account).map_or((false, false), |state| {
                    (
                        state.running.contains_key(&spec.lease),
                        state.queued_leases.contains_key(&spec.lease),
                    )
                });
                if running {
                    let command = Command::Heartbeat {
                        lease: spec.lease.clone(),
                    };
                    let target = Target::Lease(spec.lease.clone());
                    match refused_ok(engine.execute_staged(&target, &command, now))? {
                        Ok(_) => heartbeats_sent += 1,
                        Err(code) => bump(&mut other_refused, &format!("heartbeat:{code}")),
                    }
                }
                let next = at + i64::from(options.heartbeat_s);
                if (running || waiting) && next < spec.end {
                    queue.push(Reverse((next, Step::Heartbeat { job })));
                }
            }
            Step::Release { job } => {
                if accepted.contains(&job) {
                    let lease = jobs[job].lease.clone();
                    let command = Command::Release {
                        lease: lease.clone(),
                    };
                    let target = Target::Lease(lease);
                    if let Err(code) = refused_ok(engine.execute_staged(&target, &command, now))? {
                        bump(&mut other_refused, &format!("release:{code}"));
                    }
                }
            }
        }
    }
    engine.commit().await?;
    let end = last_at.max(trace.end);
    engine.tick(instant(end)).await?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let mut report = Report {
        format: trace.format,
        accounts: tenants.len() as u64,
        pool_cards,
        heartbeat_s: options.heartbeat_s,
        lease_ttl_s,
        trace_start: instant(0).to_rfc3339(),
        trace_end: instant(end).to_rfc3339(),
        tasks: counts,
        heartbeats_sent,
        other_refused,
        purchases,
        dcu: DcuTotals::default(),
        queue_wait: QueueWait::default(),
        events_appended: engine.events_appended(),
        wall_s: 0.0,
        events_per_s: 0.0,
        conservation_ok: true,
    };
    tally_log(&engine, &mut report).await?;
    tally_states(&engine, &mut report);
    engine.log().close().await?;
    report.wall_s = started.elapsed().as_secs_f64();
    report.events_per_s = report.events_appended as f64 / report.wall_s.max(1e-9);
    Ok(report)
}

/// A refusal is an answer (its code); anything else (the log failed) ends the run.
fn refused_ok(
    result: Result<scheduler::Outcome, EngineError>,
) -> anyhow::Result<Result<scheduler::Outcome, String>> {
    match result {
        Ok(outcome) => Ok(Ok(outcome)),
        Err(EngineError::Refused(refusal)) => Ok(Err(refusal.code.as_str().to_string())),
        Err(error) => Err(error.into()),
    }
}

/// The top-up policy: before a request, an account whose live balance is under a tenth of
/// its plan's grant buys an extension pack, at most `packs_per_month` per 30 days counted
/// from its first purchase.
async fn top_up(
    engine: &mut Engine<SqliteLog>,
    tenant: &mut Tenant,
    options: &SimulateOptions,
    at: i64,
    purchases: &mut PurchaseCounts,
) -> anyhow::Result<()> {
    let Some(state) = engine.state(&tenant.id) else {
        return Ok(());
    };
    let now = instant(at);
    let low = Dcu::from_micros(tenant.grant.micros() / LOW_BALANCE_DIVISOR);
    let has_period = state.period.as_ref().is_some_and(|p| p.ends_at > now);
    if !has_period || state.live_available(now) >= low {
        return Ok(());
    }
    let month = (at - tenant.first) / PERIOD_S;
    let bought = tenant.packs.entry(month).or_insert(0);
    if *bought >= options.packs_per_month {
        return Ok(());
    }
    *bought += 1;
    let command = Command::Buy {
        order: format!("{}-ext{month}-{}", tenant.id, bought),
        plan: "extension".into(),
        price_cny: None,
        price_reason: None,
    };
    let target = Target::Account(tenant.id.clone());
    match refused_ok(engine.execute_staged(&target, &command, now))? {
        Ok(_) => purchases.extensions += 1,
        Err(code) => bump(&mut purchases.refused, &code),
    }
    Ok(())
}

/// Lease outcomes, queue waits and carry-over, read back from the log.
async fn tally_log(engine: &Engine<SqliteLog>, report: &mut Report) -> anyhow::Result<()> {
    let mut queued_at: HashMap<String, Timestamp> = HashMap::new();
    let mut waits = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.log().read_all(after, MAX_READ_COUNT).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for recorded in &page {
            let event = Event::decode(&recorded.event_type, recorded.version, &recorded.data)
                .map_err(|e| anyhow::anyhow!("position {}: {e}", recorded.position))?;
            let tasks = &mut report.tasks;
            match &event.body {
                EventBody::LeaseQueued { lease, .. } => {
                    queued_at.insert(lease.clone(), event.at);
                }
                EventBody::LeaseGranted { lease, .. } => {
                    tasks.granted += 1;
                    if let Some(queued) = queued_at.remove(lease) {
                        waits.push(event.at.seconds_since(queued));
                    }
                }
                EventBody::LeaseEnded { end, reason, .. } => match end {
                    LeaseEnd::Released => tasks.released += 1,
                    LeaseEnd::Expired => tasks.expired += 1,
                    LeaseEnd::Revoked => bump(&mut tasks.revoked, &reason_name(*reason)),
                    LeaseEnd::Cancelled => bump(&mut tasks.cancelled, &reason_name(*reason)),
                },
                EventBody::PeriodEnded { carried, .. } => {
                    for amount in carried {
                        report.dcu.carried_over += amount.amount;
                    }
                }
                _ => {}
            }
        }
    }
    waits.sort_unstable();
    report.queue_wait = QueueWait {
        count: waits.len() as u64,
        p50_s: percentile(&waits, 0.50),
        p99_s: percentile(&waits, 0.99),
        max_s: waits.last().copied().unwrap_or(0),
    };
    Ok(())
}

/// DCU totals and I1 over every account.
fn tally_states(engine: &Engine<SqliteLog>, report: &mut Report) {
    let dcu = &mut report.dcu;
    let mut every_account_ok = true;
    for account in engine.account_ids() {
        let Some(state) = engine.state(account) else {
            continue;
        };
        every_account_ok &= state.conservation_holds();
        let totals = &state.totals;
        dcu.granted += totals.granted;
        dcu.consumed += totals.metered;
        dcu.spent += totals.spent;
        dcu.expired += totals.expired;
        dcu.forfeited += totals.forfeited;
        dcu.arrears += state.arrears;
        dcu.remaining += state.active_total() + state.inactive_total();
    }
    let in_total = dcu.granted == dcu.spent + dcu.expired + dcu.forfeited + dcu.remaining
        && dcu.spent == dcu.consumed - dcu.arrears;
    report.conservation_ok = every_account_ok && in_total;
}

/// Loads the trace and runs it in `data` (which must not hold a log) or a temporary
/// directory.
pub async fn simulate(
    trace_path: &Path,
    data: Option<PathBuf>,
    options: &SimulateOptions,
) -> anyhow::Result<Report> {
    let trace = load_trace(trace_path, options.format)?;
    match data {
        Some(dir) => run(&trace, options, &dir).await,
        None => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            run(&trace, options, dir.path()).await
        }
    }
}

/// The report as a table.
pub fn render_table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<28} {value}");
    };
    let map = |values: &BTreeMap<String, u64>| {
        if values.is_empty() {
            "0".to_string()
        } else {
            values
                .iter()
                .map(|(key, count)| format!("{key} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let tasks = &report.tasks;
    line(
        "trace",
        format!(
            "{} ({} .. {})",
            report.format.name(),
            report.trace_start,
            report.trace_end
        ),
    );
    line("accounts", report.accounts.to_string());
    line("pool cards", format!("{:?}", report.pool_cards));
    line(
        "heartbeat / ttl (s)",
        format!("{} / {}", report.heartbeat_s, report.lease_ttl_s),
    );
    line("rows", tasks.rows.to_string());
    line("  cpu-only (skipped)", tasks.cpu_only.to_string());
    line("  never started (skipped)", tasks.never_started.to_string());
    line("  submitted", tasks.submitted.to_string());
    line("  over largest cap", tasks.over_largest_cap.to_string());
    line("granted at once", tasks.granted_at_once.to_string());
    line("queued", tasks.queued.to_string());
    line("granted (total)", tasks.granted.to_string());
    line("refused", map(&tasks.refused));
    line("released", tasks.released.to_string());
    line("expired (ttl)", tasks.expired.to_string());
    line("revoked", map(&tasks.revoked));
    line("cancelled while queued", map(&tasks.cancelled));
    line("heartbeats sent", report.heartbeats_sent.to_string());
    line("other refusals", map(&report.other_refused));
    let purchases = &report.purchases;
    line(
        "plans started / renewals",
        format!(
            "{} / {}",
            purchases.plans_started, purchases.renewals_queued
        ),
    );
    line("extension packs", purchases.extensions.to_string());
    line("purchases refused", map(&purchases.refused));
    let dcu = &report.dcu;
    line("DCU granted", dcu.granted.to_string());
    line("DCU consumed (metered)", dcu.consumed.to_string());
    line("DCU spent", dcu.spent.to_string());
    line("DCU arrears", dcu.arrears.to_string());
    line("DCU expired", dcu.expired.to_string());
    line("DCU carried over", dcu.carried_over.to_string());
    line("DCU forfeited", dcu.forfeited.to_string());
    line("DCU remaining", dcu.remaining.to_string());
    let wait = &report.queue_wait;
    line(
        "queue wait p50 / p99 / max",
        format!(
            "{} s / {} s / {} s (n = {})",
            wait.p50_s, wait.p99_s, wait.max_s, wait.count
        ),
    );
    line("events appended", report.events_appended.to_string());
    line("wall seconds", format!("{:.2}", report.wall_s));
    line("events per second", format!("{:.0}", report.events_per_s));
    line("conservation_ok", report.conservation_ok.to_string());
    out
}
