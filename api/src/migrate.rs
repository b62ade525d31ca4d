//! `dcu migrate --from STORE --to STORE`: copies an event log to another store.
//!
//! Stores: `sqlite:DIR` (the embedded log in DIR) and, when built with the `kurrentdb`
//! feature, a KurrentDB connection string (`kurrentdb://HOST:2113?tls=false`, ...).
//!
//! # Copy
//!
//! The source is read with `read_all`, in global order. Each run of consecutive events of
//! one stream becomes one append to the target, with the same event ids, types, versions
//! and payloads, and the expected revision the source order implies (`NoStream` for
//! revision 0, else `Exact(revision - 1)`): the target gets the same streams, revisions and
//! global order. Nothing else may write to the target during a migration.
//!
//! # Resuming
//!
//! A migration stopped at any point (crash, Ctrl-C, `--limit N`, which stops after writing N
//! events) is resumed by running it again. The first time a stream shows up, the copy reads
//! how many events the target stream already holds; the source events at those revisions
//! are compared with the target's (same id, type, version, payload) and skipped, the rest is
//! appended after them. A difference stops the migration with an error: the target is not
//! a copy of this source. Appends carry the expected revision, so a concurrent writer on the
//! target makes the migration fail (`Conflict`) rather than interleave.
//!
//! # Verification
//!
//! After the copy, both logs are read whole: the number of events per stream and in total,
//! and for each stream a digest of its event ids in revision order, must be equal.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context as _};
use ledger::log::{EventLog, ExpectedRevision, NewEvent, RecordedEvent};

#[cfg(not(feature = "kurrentdb"))]
use crate::store::no_kurrentdb;
#[cfg(feature = "kurrentdb")]
use crate::store::open_kurrentdb;
pub use crate::store::Store;
use crate::store::{check_sqlite_chain, open_sqlite};

/// Events read from the source per page.
pub const PAGE: usize = 1_000;

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Events read from the source.
    pub read: u64,
    /// Events appended to the target by this run.
    pub written: u64,
    /// Events found already in the target (copied by an earlier, interrupted run).
    pub skipped: u64,
    /// Whether the copy stopped at `limit` before the end of the source.
    pub stopped_at_limit: bool,
}

/// The shape of a log, for verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSummary {
    pub total: u64,
    /// Per stream: event count and a digest of its ids in revision order.
    pub streams: BTreeMap<String, (u64, u64)>,
}

/// Copies `source` into `target` in global order (see the module documentation), writing at
/// most `limit` events (all when `None`).
pub async fn copy<S: EventLog, T: EventLog>(
    source: &S,
    target: &T,
    limit: Option<u64>,
) -> anyhow::Result<CopyReport> {
    let mut report = CopyReport::default();
    // Per stream: the target's next revision, read once per stream and then kept.
    let mut heads: HashMap<String, u64> = HashMap::new();
    let mut after = 0;
    loop {
        let page = source
            .read_all(after, PAGE)
            .await
            .with_context(|| format!("cannot read the source after position {after}"))?;
        let Some(last) = page.last() else {
            return Ok(report);
        };
        let last_position = last.position;
        for run in runs(page) {
            let left = match limit {
                Some(limit) => limit.saturating_sub(report.written),
                None => u64::MAX,
            };
            let outcome = copy_run(target, &run, &mut heads, left).await?;
            report.written += outcome.written;
            report.skipped += outcome.skipped;
            report.read += outcome.written + outcome.skipped;
            if outcome.written + outcome.skipped < run.len() as u64 {
                report.stopped_at_limit = true;
                return Ok(report);
            }
        }
        after = last_position;
    }
}

/// Splits a page into runs of consecutive events of one stream.
fn runs(page: Vec<RecordedEvent>) -> Vec<Vec<RecordedEvent>> {
    let mut runs: Vec<Vec<RecordedEvent>> = Vec::new();
    for event in page {
        match runs.last_mut() {
            Some(run)
                if run.last().is_some_and(|e| e.stream == event.stream)
                    && run.len() < ledger::log::MAX_EVENTS_PER_APPEND =>
            {
                run.push(event)
            }
            _ => runs.push(vec![event]),
        }
    }
    runs
}

fn expected_before(revision: u64) -> ExpectedRevision {
    match revision.checked_sub(1) {
        None => ExpectedRevision::NoStream,
        Some(previous) => ExpectedRevision::Exact(previous),
    }
}

fn to_new(event: &RecordedEvent) -> NewEvent {
    NewEvent {
        id: event.id,
        event_type: event.event_type.clone(),
        version: event.version,
        data: event.data.clone(),
    }
}

fn same(a: &RecordedEvent, b: &RecordedEvent) -> bool {
    a.id == b.id
        && a.stream == b.stream
        && a.revision == b.revision
        && a.event_type == b.event_type
        && a.version == b.version
        && a.data == b.data
}

#[derive(Debug, Clone, Copy, Default)]
struct RunOutcome {
    written: u64,
    skipped: u64,
}

/// The target's next revision of `stream` (its event count), read through.
async fn target_next_revision<T: EventLog>(target: &T, stream: &str) -> anyhow::Result<u64> {
    let mut next = 0_u64;
    loop {
        let page = target
            .read_stream(stream, next, PAGE)
            .await
            .with_context(|| format!("cannot read the target stream {stream}"))?;
        if page.is_empty() {
            return Ok(next);
        }
        next += page.len() as u64;
    }
}

/// Copies one run (events of one stream at consecutive revisions): the events the target
/// already holds are compared and skipped, then at most `left` of the others are appended.
async fn copy_run<T: EventLog>(
    target: &T,
    run: &[RecordedEvent],
    heads: &mut HashMap<String, u64>,
    left: u64,
) -> anyhow::Result<RunOutcome> {
    let Some(first) = run.first() else {
        return Ok(RunOutcome::default());
    };
    let stream = first.stream.as_str();
    let base = first.revision;
    if run.iter().zip(base..).any(|(e, r)| e.revision != r) {
        bail!("source stream {stream}: revisions are not consecutive from {base}");
    }
    let next = match heads.get(stream) {
        Some(next) => *next,
        None => {
            let next = target_next_revision(target, stream).await?;
            heads.insert(stream.to_owned(), next);
            next
        }
    };
    if next < base {
        bail!(
            "target stream {stream} ends at revision {next} but the source continues at {base}: \
             it is not a copy of this source"
        );
    }

    // The part the target already holds: compare it.
    let present = usize::try_from(next - base)
        .unwrap_or(usize::MAX)
        .min(run.len());
    if present > 0 {
        let copies = target
            .read_stream(stream, base, present)
            .await
            .with_context(|| format!("cannot read the target stream {stream}"))?;
        let matched = run
            .iter()
            .zip(&copies)
            .take_while(|(source, copy)| same(source, copy))
            .count();
        if matched < present {
            bail!(
                "target stream {stream} differs from the source at revision {}: it is not a \
                 copy of this source",
                base + matched as u64
            );
        }
    }

    let rest = &run[present..];
    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
    let rest = &rest[..take];
    let Some(rest_first) = rest.first() else {
        return Ok(RunOutcome {
            written: 0,
            skipped: present as u64,
        });
    };
    let from = rest_first.revision;
    let outcome = target
        .append(
            stream,
            expected_before(from),
            rest.iter().map(to_new).collect(),
        )
        .await
        .with_context(|| {
            format!("cannot append to the target stream {stream} from revision {from}")
        })?;
    let last = from + rest.len() as u64 - 1;
    if outcome.last_revision != last {
        bail!(
            "target stream {stream}: copied revisions {from}..={last} but it reports last \
             revision {}",
            outcome.last_revision
        );
    }
    heads.insert(stream.to_owned(), last + 1);
    Ok(RunOutcome {
        written: rest.len() as u64,
        skipped: present as u64,
    })
}

/// Reads `log` whole: counts per stream and in total, and per-stream id digests.
pub async fn summarize<L: EventLog>(log: &L) -> anyhow::Result<LogSummary> {
    let mut summary = LogSummary::default();
    let mut after = 0;
    loop {
        let page = log
            .read_all(after, PAGE)
            .await
            .with_context(|| format!("cannot read the log after position {after}"))?;
        let Some(last) = page.last() else {
            return Ok(summary);
        };
        after = last.position;
        for event in &page {
            summary.total += 1;
            let entry = summary.streams.entry(event.stream.clone()).or_default();
            if event.revision != entry.0 {
                bail!(
                    "stream {}: revision {} where {} was expected",
                    event.stream,
                    event.revision,
                    entry.0
                );
            }
            entry.0 += 1;
            entry.1 = digest(entry.1, event);
        }
    }
}

/// FNV-1a over the id bytes, chained: order-sensitive, not cryptographic.
fn digest(previous: u64, event: &RecordedEvent) -> u64 {
    let mut hash = previous ^ 0xcbf2_9ce4_8422_2325;
    for byte in event.id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Checks that `target` holds the same streams, counts and ids as `source`.
pub async fn verify<S: EventLog, T: EventLog>(
    source: &S,
    target: &T,
) -> anyhow::Result<LogSummary> {
    let expected = summarize(source).await.context("reading the source")?;
    let actual = summarize(target).await.context("reading the target")?;
    if actual.total != expected.total {
        bail!(
            "verification failed: the source has {} events, the target {}",
            expected.total,
            actual.total
        );
    }
    for (stream, (count, digest)) in &expected.streams {
        match actual.streams.get(stream) {
            Some((c, _)) if c != count => {
                bail!("verification failed: stream {stream} has {count} events in the source, {c} in the target")
            }
            Some((_, d)) if d != digest => {
                bail!("verification failed: stream {stream} has other event ids in the target")
            }
            Some(_) => {}
            None => bail!("verification failed: stream {stream} is missing from the target"),
        }
    }
    if let Some(extra) = actual
        .streams
        .keys()
        .find(|s| !expected.streams.contains_key(*s))
    {
        bail!("verification failed: the target has a stream {extra} the source does not");
    }
    Ok(expected)
}

/// What `dcu migrate` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub copy: CopyReport,
    /// The verified summary; `None` when the copy stopped at its limit (nothing to verify yet).
    pub verified: Option<LogSummary>,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "read {} events, wrote {}, already present {}",
            self.copy.read, self.copy.written, self.copy.skipped
        )?;
        match &self.verified {
            Some(summary) => write!(
                f,
                "; verified: {} events in {} streams, equal in source and target",
                summary.total,
                summary.streams.len()
            ),
            None => write!(f, "; stopped at the limit: run again to continue"),
        }
    }
}

/// Refuses, before anything is written, a target that is neither empty nor what an
/// interrupted migrate of this source left: its events, in global order, must be the
/// source's first events (same ids, same streams).
async fn check_target_is_a_prefix<S: EventLog, T: EventLog>(
    source: &S,
    target: &T,
) -> anyhow::Result<()> {
    let (mut source_after, mut target_after) = (0, 0);
    let mut pending = std::collections::VecDeque::new();
    loop {
        let page = target
            .read_all(target_after, PAGE)
            .await
            .with_context(|| format!("cannot read the target after position {target_after}"))?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        target_after = last.position;
        for held in page {
            if pending.is_empty() {
                let next = source.read_all(source_after, PAGE).await.with_context(|| {
                    format!("cannot read the source after position {source_after}")
                })?;
                if let Some(last) = next.last() {
                    source_after = last.position;
                }
                pending.extend(next);
            }
            let matches = pending
                .pop_front()
                .is_some_and(|expected| expected.id == held.id && expected.stream == held.stream);
            if !matches {
                bail!(
                    "the target already holds a log that is not a copy of this source (its \
                     event {} at position {} in stream {} is not the source's); nothing was \
                     written: migrate into an empty store, or into the one an interrupted \
                     migrate of this source left",
                    held.id,
                    held.position,
                    held.stream
                );
            }
        }
    }
}

/// Copies then verifies (unless stopped at `limit`).
pub async fn migrate_logs<S: EventLog, T: EventLog>(
    source: &S,
    target: &T,
    limit: Option<u64>,
) -> anyhow::Result<MigrateReport> {
    check_target_is_a_prefix(source, target).await?;
    let copy = copy(source, target, limit).await?;
    let verified = if copy.stopped_at_limit {
        None
    } else {
        Some(verify(source, target).await?)
    };
    Ok(MigrateReport { copy, verified })
}

/// `dcu migrate`: parses the stores, copies, verifies.
pub async fn run(from: &str, to: &str, limit: Option<u64>) -> anyhow::Result<MigrateReport> {
    let from: Store = from.parse().context("--from")?;
    let to: Store = to.parse().context("--to")?;
    if from == to {
        bail!("--from and --to name the same store");
    }
    match (&from, &to) {
        (Store::Sqlite(a), Store::Sqlite(b)) => {
            if let (Ok(a), Ok(b)) = (a.canonicalize(), b.canonicalize()) {
                if a == b {
                    bail!("--from and --to name the same directory");
                }
            }
            check_sqlite_chain(a)?;
            let source = open_sqlite(a, true)?;
            let target = open_sqlite(b, false)?;
            migrate_logs(&source, &target, limit).await
        }
        #[cfg(feature = "kurrentdb")]
        (Store::Sqlite(a), Store::KurrentDb(url)) => {
            check_sqlite_chain(a)?;
            let source = open_sqlite(a, true)?;
            migrate_logs(&source, &open_kurrentdb(url)?, limit).await
        }
        #[cfg(feature = "kurrentdb")]
        (Store::KurrentDb(url), Store::Sqlite(b)) => {
            let target = open_sqlite(b, false)?;
            migrate_logs(&open_kurrentdb(url)?, &target, limit).await
        }
        #[cfg(feature = "kurrentdb")]
        (Store::KurrentDb(a), Store::KurrentDb(b)) => {
            migrate_logs(&open_kurrentdb(a)?, &open_kurrentdb(b)?, limit).await
        }
        #[cfg(not(feature = "kurrentdb"))]
        _ => Err(no_kurrentdb()),
    }
}
