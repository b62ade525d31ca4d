//! The embedded SQLite event log: the default `EventLog`.
//!
//! # Layout
//!
//! One database file, `events.db`, in the data directory, in WAL mode with
//! `synchronous=FULL`: a commit returns only once it is in the write-ahead log on disk, so an
//! acknowledged append survives a crash or a power cut, and a process killed at any moment
//! leaves no half-written append (a transaction is all or nothing).
//!
//! One table, `events`: the global position is the `INTEGER PRIMARY KEY AUTOINCREMENT` (never
//! reused, so it only grows, from 1), the event id is `UNIQUE`, and `UNIQUE(stream, revision)`
//! backs the per-stream order. `PRAGMA user_version` holds the schema version.
//!
//! # Tamper evidence (schema version 2)
//!
//! Each row carries two SHA-256 chain links, computed by the writer at insert, inside the
//! same transaction:
//!
//! - `stream_hash` = SHA-256(previous `stream_hash` of the same stream, or 32 zero bytes ‖
//!   id (16 bytes) ‖ stream ‖ revision ‖ type ‖ version ‖ data), where `revision` is 8 bytes
//!   and `version` 4 bytes big-endian, and each variable-length field (stream, type, data) is
//!   preceded by its length as 8 bytes big-endian (so no two rows hash alike by shifting
//!   bytes between fields);
//! - `log_hash` = SHA-256(previous row's `log_hash` in position order, or zeros ‖ position
//!   (8 bytes big-endian) ‖ `stream_hash`).
//!
//! [`verify_chain`] walks the whole log and names the first row whose links do not hold
//! (an edited byte, a deleted or swapped row, a revision gap). Removing rows from the very
//! end of the log cannot be seen by the chain alone; compare the last `log_hash` with one kept
//! elsewhere for that.
//!
//! # Writing
//!
//! One dedicated thread owns the only write connection. Appends reach it through a bounded
//! channel; it takes every request waiting (up to [`MAX_BATCH_APPENDS`] requests or about
//! [`MAX_BATCH_EVENTS`] events) and writes them in one transaction; a request that conflicts
//! or is invalid fails alone, refused before anything of it is written (and should the
//! database refuse a write, the batch is written again with a savepoint per request). After
//! the `COMMIT`
//! (one fsync for the whole batch) it publishes the last committed position and answers every
//! request. The expected-revision check uses an in-memory map stream → last revision and
//! position, filled lazily from the database. The map is a hint, not the truth: the database's
//! `UNIQUE(stream, revision)` refuses a write at a taken revision, and on such a refusal the
//! writer decides that request again from the database itself.
//!
//! Only one `SqliteLog` may write a given directory at a time (the map assumes it owns the
//! stream heads; a second writer could not corrupt the log, thanks to the constraints, but
//! its appends would see spurious errors and its subscriptions would not see the other's
//! commits).
//!
//! # Retries
//!
//! An append whose first event id is already stored is a retry: if all its ids are stored,
//! in the same stream, at consecutive revisions, in the same order, with the same content, and
//! at the place its expected revision designates, it answers the original outcome (revision
//! and position of the last of those events) and writes nothing. Anything else is
//! `LogError::Invalid`: a caller reused ids for different events.
//! Recognising a retry costs one indexed lookup (the first event id) per append; the other
//! ids are checked by the `UNIQUE` constraint on insert, and only on its refusal one by one.
//!
//! # Appending no events
//!
//! An append of zero events writes nothing. Its expected revision is still checked (a
//! mismatch is `Conflict`). On a stream with events it answers the stream's current last
//! revision and the position of its last event. On a stream without events there is no
//! revision to report (`AppendOutcome` has no "none"), so it answers `Invalid`.
//!
//! # Reading
//!
//! Reads use separate connections (WAL lets them run beside the writer), kept in a small pool
//! and used from `tokio::task::spawn_blocking`, so they never block the async runtime.
//! Subscriptions read history in pages, then wait on a `watch` channel of the last committed
//! position, which the writer updates after each commit.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{
    AppendOutcome, EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, Subscription,
    MAX_READ_COUNT,
};

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "events.db";

/// Version of the schema this code writes (`PRAGMA user_version`). A database with a higher
/// version was written by a newer release and is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 2;

/// Capacity of the channel from appenders to the writer thread. It bounds the memory queued
/// appends can hold when the disk falls behind: a full queue makes `append` wait (back
/// pressure) instead of growing without limit. It holds several full batches, so while the
/// writer commits one batch the next one is already waiting and no fsync is wasted.
pub const QUEUE_CAPACITY: usize = 4 * MAX_BATCH_APPENDS;

/// Most append requests the writer puts in one transaction. It bounds how long the first
/// request of a batch waits for the others and how much a failed commit fails at once.
pub const MAX_BATCH_APPENDS: usize = 256;

/// The writer stops adding requests to a batch once it holds this many events (a single
/// request may carry up to `MAX_EVENTS_PER_APPEND`, so a batch may exceed it by that much).
pub const MAX_BATCH_EVENTS: usize = 50_000;

/// The writer's map of stream heads is cleared when it grows past this many streams; heads
/// are reloaded from the database on next use, so this only bounds memory.
const MAX_CACHED_STREAMS: usize = 100_000;

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// Events a subscription reads per page while catching up.
const SUBSCRIPTION_PAGE: usize = 1_000;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V2: &str = "
CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    stream      TEXT    NOT NULL CHECK (length(stream) > 0),
    revision    INTEGER NOT NULL CHECK (revision >= 0),
    event_type  TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 0),
    data        BLOB    NOT NULL,
    stream_hash BLOB    NOT NULL DEFAULT (zeroblob(32)) CHECK (length(stream_hash) = 32),
    log_hash    BLOB    NOT NULL DEFAULT (zeroblob(32)) CHECK (length(log_hash) = 32),
    UNIQUE (stream, revision)
) STRICT;
";

/// A SHA-256 chain link.
pub type Hash = [u8; 32];

/// The link before the first one.
pub const ZERO_HASH: Hash = [0; 32];

/// `stream_hash` of a row (see the module documentation).
pub fn stream_hash(
    previous: &Hash,
    id: &Uuid,
    stream: &str,
    revision: u64,
    event_type: &str,
    version: u32,
    data: &[u8],
) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(id.as_bytes());
    hasher.update((stream.len() as u64).to_be_bytes());
    hasher.update(stream.as_bytes());
    hasher.update(revision.to_be_bytes());
    hasher.update((event_type.len() as u64).to_be_bytes());
    hasher.update(event_type.as_bytes());
    hasher.update(version.to_be_bytes());
    hasher.update((data.len() as u64).to_be_bytes());
    hasher.update(data);
    hasher.finalize().into()
}

/// `log_hash` of a row (see the module documentation).
pub fn log_hash(previous: &Hash, position: u64, stream_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(position.to_be_bytes());
    hasher.update(stream_hash);
    hasher.finalize().into()
}

/// The first row whose chain links do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub position: u64,
    pub stream: String,
    pub revision: u64,
    pub reason: String,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Rows checked (up to and including the broken one).
    pub events: u64,
    pub streams: u64,
    /// The last row's `log_hash` (hex), when the chain holds.
    pub head: Option<String>,
    pub broken: Option<BrokenLink>,
}

fn hex(hash: &[u8]) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The log holds every account's history: readable by the service's user only (its WAL and
/// shared-memory files are created by SQLite with the same mode).
/// Creates the file (empty: SQLite makes it a new database) or restricts the existing one,
/// before SQLite opens it.
#[cfg(unix)]
fn restrict_to_owner(path: &Path) -> Result<(), LogError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |e: std::io::Error| {
        LogError::Storage(format!(
            "cannot restrict {} to its owner: {e}",
            path.display()
        ))
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) -> Result<(), LogError> {
    Ok(())
}

/// Checks every link of the log in `dir` (read only) and names the first broken row.
pub fn verify_chain(dir: &Path) -> Result<ChainReport, LogError> {
    let path = dir.join(DB_FILE_NAME);
    if !path.exists() {
        return Err(LogError::Storage(format!(
            "no event log at {}",
            path.display()
        )));
    }
    let conn = open_reader_connection(&path)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_storage)?;
    if version != SCHEMA_VERSION {
        return Err(LogError::Storage(format!(
            "the event log has schema version {version}; only version {SCHEMA_VERSION} carries hash chains"
        )));
    }
    let mut statement = conn
        .prepare(
            "SELECT position, id, stream, revision, event_type, version, data, stream_hash, \
             log_hash FROM events ORDER BY position",
        )
        .map_err(sql_storage)?;
    let mut rows = statement.query([]).map_err(sql_storage)?;
    let mut heads: HashMap<String, (u64, Hash)> = HashMap::new();
    let mut previous_log = ZERO_HASH;
    let mut events = 0_u64;
    while let Some(row) = rows.next().map_err(sql_storage)? {
        events += 1;
        let position: u64 = row.get(0).map_err(sql_storage)?;
        let stream: String = row.get(2).map_err(sql_storage)?;
        let revision: u64 = row.get(3).map_err(sql_storage)?;
        let broken = |reason: String| BrokenLink {
            position,
            stream: stream.clone(),
            revision,
            reason,
        };
        let fields = (|| -> rusqlite::Result<_> {
            let id: Vec<u8> = row.get(1)?;
            let event_type: String = row.get(4)?;
            let version: u32 = row.get(5)?;
            let data: Vec<u8> = row.get(6)?;
            let stored_stream: Vec<u8> = row.get(7)?;
            let stored_log: Vec<u8> = row.get(8)?;
            Ok((id, event_type, version, data, stored_stream, stored_log))
        })();
        let (id, event_type, version, data, stored_stream, stored_log) = match fields {
            Ok(fields) => fields,
            Err(e) => {
                return Ok(ChainReport {
                    events,
                    streams: heads.len() as u64,
                    head: None,
                    broken: Some(broken(format!("unreadable row: {e}"))),
                })
            }
        };
        let (expected_revision, previous_stream) = match heads.get(&stream) {
            Some((last, hash)) => (last.saturating_add(1), *hash),
            None => (0, ZERO_HASH),
        };
        let mut problem = None;
        if revision != expected_revision {
            problem = Some(format!(
                "revision {revision} follows revision {} of its stream (a row is missing or moved)",
                expected_revision as i128 - 1
            ));
        }
        let id = Uuid::from_slice(&id).unwrap_or_default();
        let computed_stream = stream_hash(
            &previous_stream,
            &id,
            &stream,
            revision,
            &event_type,
            version,
            &data,
        );
        if problem.is_none() && stored_stream != computed_stream {
            problem = Some(
                "stream_hash does not match the row's content and its stream's previous link \
                 (the row was edited, or a row before it in its stream was)"
                    .to_owned(),
            );
        }
        let computed_log = log_hash(&previous_log, position, &computed_stream);
        if problem.is_none() && stored_log != computed_log {
            problem = Some(
                "log_hash does not follow from the previous row's log_hash (a row before it was \
                 deleted, inserted or changed)"
                    .to_owned(),
            );
        }
        if let Some(reason) = problem {
            return Ok(ChainReport {
                events,
                streams: heads.len() as u64,
                head: None,
                broken: Some(broken(reason)),
            });
        }
        heads.insert(stream, (revision, computed_stream));
        previous_log = computed_log;
    }
    Ok(ChainReport {
        events,
        streams: heads.len() as u64,
        head: (events > 0).then(|| hex(&previous_log)),
        broken: None,
    })
}

const SELECT_EVENT: &str =
    "SELECT position, id, stream, revision, event_type, version, data FROM events";

/// Counters of the writer, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Appends answered `Ok` (including retries and empty appends).
    pub appends: u64,
    /// Transactions committed that wrote at least one event (one fsync each).
    pub batches: u64,
    /// Events written.
    pub events_written: u64,
}

#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    batches: AtomicU64,
    events_written: AtomicU64,
}

/// The embedded SQLite event log. See the module documentation.
///
/// Dropping it stops the writer like [`SqliteLog::close`], blocking until queued appends are
/// written.
/// (An append future leaked with `mem::forget` while waiting for queue space would keep the
/// writer waiting for it; dropped futures are fine.)
#[derive(Debug)]
pub struct SqliteLog {
    sender: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    read: Arc<ReadSide>,
    counters: Arc<Counters>,
}

impl SqliteLog {
    /// Opens (creating on first use) the log in `dir`, and starts its writer thread.
    pub fn open(dir: &Path) -> Result<SqliteLog, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            LogError::Storage(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE_NAME);
        restrict_to_owner(&path)?;
        let mut conn = open_writer_connection(&path)?;
        migrate(&mut conn)?;
        let last_position: u64 = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(sql_storage)?;

        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let (committed_tx, committed_rx) = watch::channel(last_position);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            conn,
            heads: HashMap::new(),
            tip: None,
            committed: committed_tx,
            counters: Arc::clone(&counters),
        };
        let handle = std::thread::Builder::new()
            .name("ledger-log-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|e| LogError::Storage(format!("cannot start the writer thread: {e}")))?;

        Ok(SqliteLog {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            read: Arc::new(ReadSide {
                path,
                idle: Mutex::new(Vec::new()),
                committed: committed_rx,
            }),
            counters,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.read.path
    }

    /// The writer's counters.
    pub fn stats(&self) -> LogStats {
        LogStats {
            appends: self.counters.appends.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            events_written: self.counters.events_written.load(Ordering::Relaxed),
        }
    }

    /// Global position of the last committed event (0 when the log is empty).
    pub fn last_position(&self) -> u64 {
        *self.read.committed.borrow()
    }

    /// Stops accepting appends, lets the writer finish every append already queued or being
    /// queued, and waits for its thread to end. Appends after this answer `LogError::Closed`;
    /// reads keep working; subscriptions deliver what was committed, then answer `Closed`.
    /// Calling it again does nothing.
    pub async fn close(&self) -> Result<(), LogError> {
        let Some(handle) = self.stop_writer() else {
            return Ok(());
        };
        let joined = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || handle.join().is_ok())
                .await
                .unwrap_or(false),
            Err(_) => handle.join().is_ok(),
        };
        if joined {
            Ok(())
        } else {
            Err(LogError::Storage("the writer thread failed".to_owned()))
        }
    }

    /// Drops the sender (the writer ends once the queue is drained and no append is still
    /// being queued) and hands back the writer's thread to join.
    fn stop_writer(&self) -> Option<JoinHandle<()>> {
        drop(lock_ignoring_poison(&self.sender).take());
        lock_ignoring_poison(&self.writer).take()
    }

    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>, LogError> {
        let guard = self
            .sender
            .lock()
            .map_err(|_| LogError::Storage("the append channel lock is poisoned".to_owned()))?;
        guard.clone().ok_or(LogError::Closed)
    }
}

impl Drop for SqliteLog {
    fn drop(&mut self) {
        if let Some(handle) = self.stop_writer() {
            // The writer needs no async runtime, and it only has the queued appends left.
            let _ = handle.join();
        }
    }
}

impl EventLog for SqliteLog {
    type Sub = SqliteSubscription;

    fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, LogError>> + Send {
        let stream = stream.to_owned();
        async move {
            super::validate_append(&stream, &events, None)?;
            let sender = self.sender()?;
            let (reply, answer) = oneshot::channel();
            let request = AppendRequest {
                stream,
                expected,
                events,
                reply,
            };
            sender.send(request).await.map_err(|_| LogError::Closed)?;
            drop(sender);
            answer.await.map_err(|_| {
                LogError::Storage(
                    "the writer stopped before answering; the append was not acknowledged"
                        .to_owned(),
                )
            })?
        }
    }

    fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, LogError>> + Send {
        let stream = stream.to_owned();
        let read = Arc::clone(&self.read);
        async move {
            if stream.is_empty() {
                return Err(LogError::Invalid("the stream name is empty".to_owned()));
            }
            let count = max_count.min(MAX_READ_COUNT);
            if count == 0 {
                return Ok(Vec::new());
            }
            let from = clamp_to_i64(from_revision);
            run_read(read, move |conn| {
                query_events(
                    conn,
                    &format!("{SELECT_EVENT} WHERE stream = ?1 AND revision >= ?2 ORDER BY revision LIMIT ?3"),
                    params![stream, from, count],
                )
            })
            .await
        }
    }

    fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, LogError>> + Send {
        let read = Arc::clone(&self.read);
        async move { read_all_from(read, after_position, max_count).await }
    }

    fn subscribe_all(&self, after_position: u64) -> SqliteSubscription {
        SqliteSubscription {
            read: Arc::clone(&self.read),
            committed: self.read.committed.clone(),
            after: after_position,
            buffer: VecDeque::new(),
        }
    }
}

/// A catch-up subscription to a `SqliteLog`: pages of history, then live commits.
#[derive(Debug)]
pub struct SqliteSubscription {
    read: Arc<ReadSide>,
    committed: watch::Receiver<u64>,
    /// Position of the last event handed out (or the start position).
    after: u64,
    buffer: VecDeque<RecordedEvent>,
}

impl SqliteSubscription {
    /// Position of the last event handed out (the start position before the first): the
    /// checkpoint to resubscribe from.
    pub fn position(&self) -> u64 {
        self.after
    }
}

impl Subscription for SqliteSubscription {
    async fn next(&mut self) -> Result<RecordedEvent, LogError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = event.position;
                return Ok(event);
            }
            // Mark the current commit as seen *before* reading: a commit that the read
            // misses is published afterwards, so `changed` below wakes up for it.
            self.committed.borrow_and_update();
            let page = read_all_from(Arc::clone(&self.read), self.after, SUBSCRIPTION_PAGE).await?;
            if !page.is_empty() {
                self.buffer.extend(page);
                continue;
            }
            if self.committed.changed().await.is_err() {
                // The writer has stopped: deliver what it committed last, then end.
                let page =
                    read_all_from(Arc::clone(&self.read), self.after, SUBSCRIPTION_PAGE).await?;
                if page.is_empty() {
                    return Err(LogError::Closed);
                }
                self.buffer.extend(page);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation

// ---------------------------------------------------------------------------------------
// Connections and schema

fn sql_storage(e: rusqlite::Error) -> LogError {
    LogError::Storage(e.to_string())
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn clamp_to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn open_writer_connection(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open(path)
        .map_err(|e| LogError::Storage(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_storage)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql_storage)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LogError::Storage(format!(
            "cannot put {} in WAL mode (journal mode is {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql_storage)?;
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(sql_storage)?;
    if synchronous < 2 {
        return Err(LogError::Storage(
            "cannot set synchronous=FULL on the event log".to_owned(),
        ));
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), LogError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_storage)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_storage)?;
    match version {
        0 => {
            let tables: i64 = tx
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql_storage)?;
            if tables > 0 {
                return Err(LogError::Storage(
                    "the database has an events table but no schema version: refusing to guess"
                        .to_owned(),
                ));
            }
            tx.execute_batch(SCHEMA_V2).map_err(sql_storage)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql_storage)?;
        }
        SCHEMA_VERSION => {}
        1 => {
            return Err(LogError::Storage(
                "the event log has schema version 1 (no hash chains); this build writes version 2 \
                 and does not migrate it: start from a fresh data directory (no deployed data \
                 predates version 2)"
                    .to_owned(),
            ));
        }
        other => {
            return Err(LogError::Storage(format!(
                "the event log has schema version {other}; this build knows versions up to {SCHEMA_VERSION}"
            )));
        }
    }
    tx.commit().map_err(sql_storage)
}

fn open_reader_connection(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open(path)
        .map_err(|e| LogError::Storage(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_storage)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(sql_storage)?;
    Ok(conn)
}

// ---------------------------------------------------------------------------------------
// Reading

#[derive(Debug)]
struct ReadSide {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Last committed position, published by the writer after each commit.
    committed: watch::Receiver<u64>,
}

impl ReadSide {
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let pooled = lock_ignoring_poison(&self.idle).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = lock_ignoring_poison(&self.idle);
        if idle.len() < MAX_IDLE_READERS && conn.is_autocommit() {
            idle.push(conn);
        }
        result
    }
}

/// Runs a read on the blocking pool (or inline outside a Tokio runtime).
async fn run_read<T, F>(read: Arc<ReadSide>, f: F) -> Result<T, LogError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, LogError> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(move || read.with_connection(f))
            .await
            .map_err(|e| LogError::Storage(format!("the read task failed: {e}")))?,
        Err(_) => read.with_connection(f),
    }
}

async fn read_all_from(
    read: Arc<ReadSide>,
    after_position: u64,
    max_count: usize,
) -> Result<Vec<RecordedEvent>, LogError> {
    let count = max_count.min(MAX_READ_COUNT);
    if count == 0 {
        return Ok(Vec::new());
    }
    let after = clamp_to_i64(after_position);
    run_read(read, move |conn| {
        query_events(
            conn,
            &format!("{SELECT_EVENT} WHERE position > ?1 ORDER BY position LIMIT ?2"),
            params![after, count],
        )
    })
    .await
}

fn query_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, LogError> {
    let mut statement = conn.prepare_cached(sql).map_err(sql_storage)?;
    let rows = statement
        .query_map(params, recorded_event)
        .map_err(sql_storage)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| LogError::Storage(format!("unreadable event row: {e}")))
}

fn recorded_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let id: [u8; 16] = row.get(1)?;
    Ok(RecordedEvent {
        position: row.get(0)?,
        id: Uuid::from_bytes(id),
        stream: row.get(2)?,
        revision: row.get(3)?,
        event_type: row.get(4)?,
        version: row.get(5)?,
        data: row.get(6)?,
    })
}

// ---------------------------------------------------------------------------------------
// Writing

#[derive(Debug)]
struct AppendRequest {
    stream: String,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendOutcome, LogError>>,
}

/// The last event of a stream.
#[derive(Debug, Clone, Copy)]
struct Head {
    revision: u64,
    position: u64,
    /// The stream's chain link at this head (the next event's `previous`).
    stream_hash: Hash,
}

/// The log's last event: the global chain link and the highest position ever used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tip {
    log_hash: Hash,
    position: u64,
}

/// An event as stored, looked up by id to recognise a retry.
struct StoredEvent {
    stream: String,
    revision: u64,
    position: u64,
    event_type: String,
    version: u32,
    data: Vec<u8>,
}

/// Why one request could not be applied.
enum Attempt {
    /// The request is refused (conflict, invalid); nothing of it was written.
    Refused(LogError),
    /// SQLite failed while applying it.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Attempt {
    fn from(e: rusqlite::Error) -> Self {
        Attempt::Sql(e)
    }
}

/// Why a request failed, and how far the failure reaches.
enum Failure {
    /// This request fails alone; the rest of the batch goes on.
    Request(LogError),
    /// The transaction is lost: the whole batch fails.
    Batch(LogError),
}

/// How a batch's requests are kept apart inside its transaction.
#[derive(Clone, Copy)]
enum Mode {
    /// No savepoints: the fast path, while the database refuses no write.
    Direct,
    /// Each request in its own savepoint, so a refused write undoes that request alone.
    Savepoints,
}

/// Why an attempt to write a batch stopped.
enum Abort {
    /// The database refused a write without savepoints: try again with them.
    Careful,
    /// The transaction is lost: the whole batch fails.
    Fail(LogError),
}

/// A batch's transaction, committed.
struct Written {
    pending: HashMap<String, Option<Head>>,
    tip: Tip,
    results: Vec<Result<AppendOutcome, LogError>>,
    events_written: u64,
    last_position: Option<u64>,
}

/// A request applied inside the batch's transaction.
struct Applied {
    outcome: AppendOutcome,
    /// The stream's new head, when the request wrote events.
    written: Option<(Head, u64)>,
    /// The log's new tip, when the request wrote events.
    tip: Option<Tip>,
}

struct Writer {
    conn: Connection,
    /// Committed head of each stream touched lately: `None` means the stream has no events.
    heads: HashMap<String, Option<Head>>,
    /// The committed tip of the log, once read; only this writer moves it. `None` after a
    /// failure: read again.
    tip: Option<Tip>,
    committed: watch::Sender<u64>,
    counters: Arc<Counters>,
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

fn request_error(e: rusqlite::Error) -> LogError {
    if e.sqlite_error_code() == Some(ErrorCode::TooBig) {
        LogError::Invalid(format!("an event is too large for the log: {e}"))
    } else {
        sql_storage(e)
    }
}

fn check_expected(
    stream: &str,
    expected: ExpectedRevision,
    head: Option<Head>,
) -> Result<(), LogError> {
    let actual = head.map(|h| h.revision);
    let matches = match expected {
        ExpectedRevision::Any => true,
        ExpectedRevision::NoStream => actual.is_none(),
        ExpectedRevision::Exact(r) => actual == Some(r),
    };
    if matches {
        Ok(())
    } else {
        Err(LogError::Conflict {
            stream: stream.to_owned(),
            expected,
            actual,
        })
    }
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<AppendRequest>) {
        // Ends when every sender is gone (the log is closed) and the queue is drained.
        while let Some(first) = receiver.blocking_recv() {
            let mut events = first.events.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_APPENDS && events < MAX_BATCH_EVENTS {
                match receiver.try_recv() {
                    Ok(request) => {
                        events += request.events.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
        }
    }

    fn write_batch(&mut self, batch: Vec<AppendRequest>) {
        // A request nobody waits for any more (its caller gave up) is not written: it was
        // never acknowledged, and skipping it keeps the log free of appends nobody knows of.
        let batch: Vec<AppendRequest> =
            batch.into_iter().filter(|r| !r.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        // First without savepoints: every refusal (conflict, retry, invalid) is decided
        // before anything of its request is written, so a refused request leaves nothing
        // behind. Only a write the database itself refuses (a stale cached head, an id taken
        // by another event) could leave part of a request in the transaction: then the whole
        // transaction is rolled back and the batch is written again, each request in its own
        // savepoint. Savepoints cost a statement journal of every page a request touches.
        let written = match self.write_transaction(&batch, Mode::Direct) {
            Err(Abort::Careful) => self.write_transaction(&batch, Mode::Savepoints),
            other => other,
        };
        match written {
            Ok(written) => self.finish_batch(batch, written),
            Err(Abort::Fail(e)) => self.fail_batch(batch, e),
            Err(Abort::Careful) => self.fail_batch(
                batch,
                LogError::Storage("a write was refused with savepoints too".to_owned()),
            ),
        }
    }

    /// Writes every request of the batch in one transaction and commits it.
    fn write_transaction(&mut self, batch: &[AppendRequest], mode: Mode) -> Result<Written, Abort> {
        if !self.conn.is_autocommit() {
            // Left over from a failed rollback or an aborted attempt: start clean.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| Abort::Fail(sql_storage(e)))?;

        // Heads written by this batch, merged into `heads` once committed.
        let mut pending: HashMap<String, Option<Head>> = HashMap::new();
        let mut tip = self
            .committed_tip()
            .map_err(|e| Abort::Fail(sql_storage(e)))?;
        let mut results = Vec::with_capacity(batch.len());
        let mut events_written = 0_u64;
        let mut last_position = None;
        for request in batch {
            let applied = match mode {
                Mode::Savepoints => self.apply(&mut pending, &mut tip, request),
                Mode::Direct => self.apply_direct(&pending, tip, request)?,
            };
            match applied {
                Ok(applied) => {
                    if let Some((head, count)) = applied.written {
                        pending.insert(request.stream.clone(), Some(head));
                        events_written += count;
                        last_position = Some(head.position);
                    }
                    if let Some(written) = applied.tip {
                        tip = written;
                    }
                    results.push(Ok(applied.outcome));
                }
                Err(Failure::Request(e)) => results.push(Err(e)),
                Err(Failure::Batch(e)) => return Err(Abort::Fail(e)),
            }
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            return Err(Abort::Fail(LogError::Storage(format!(
                "the commit failed: {e}"
            ))));
        }
        Ok(Written {
            pending,
            tip,
            results,
            events_written,
            last_position,
        })
    }

    /// After the commit: the heads and tip become the committed ones, and every request is
    /// answered.
    fn finish_batch(&mut self, batch: Vec<AppendRequest>, written: Written) {
        if self.heads.len() + written.pending.len() > MAX_CACHED_STREAMS {
            self.heads.clear();
        }
        self.heads.extend(written.pending);
        self.tip = Some(written.tip);
        if let Some(position) = written.last_position {
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters
                .events_written
                .fetch_add(written.events_written, Ordering::Relaxed);
            self.committed.send_replace(position);
        }
        for (request, result) in batch.into_iter().zip(written.results) {
            if result.is_ok() {
                self.counters.appends.fetch_add(1, Ordering::Relaxed);
            }
            let _ = request.reply.send(result);
        }
    }

    /// Applies one request without a savepoint. A refusal is decided before anything is
    /// written; a write the database refuses aborts the attempt (`Abort::Careful`), since
    /// part of the request may already be in the transaction.
    fn apply_direct(
        &mut self,
        pending: &HashMap<String, Option<Head>>,
        tip: Tip,
        request: &AppendRequest,
    ) -> Result<Result<Applied, Failure>, Abort> {
        match self.try_apply(pending, tip, request, false) {
            Ok(applied) => Ok(Ok(applied)),
            Err(Attempt::Refused(e)) => Ok(Err(Failure::Request(e))),
            Err(Attempt::Sql(_)) => Err(Abort::Careful),
        }
    }

    /// Rolls back the batch's transaction and fails every request of it. The heads map is
    /// cleared: after a failure nothing in it is trusted.
    fn fail_batch(&mut self, batch: Vec<AppendRequest>, error: LogError) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.heads.clear();
        self.tip = None;
        for request in batch {
            let _ = request.reply.send(Err(error.clone()));
        }
    }

    /// Applies one request inside its own savepoint.
    fn apply(
        &mut self,
        pending: &mut HashMap<String, Option<Head>>,
        tip: &mut Tip,
        request: &AppendRequest,
    ) -> Result<Applied, Failure> {
        self.conn
            .execute_batch("SAVEPOINT append")
            .map_err(|e| Failure::Batch(sql_storage(e)))?;
        let mut attempt = self.try_apply(pending, *tip, request, false);
        if matches!(&attempt, Err(Attempt::Sql(e)) if is_constraint(e)) {
            // The cached head was stale, or an id of the append (not the first) is taken:
            // undo, and decide again from the database alone.
            self.rollback_to_savepoint()?;
            pending.remove(&request.stream);
            self.heads.remove(&request.stream);
            // Someone wrote behind the writer's back: the tip it keeps may be stale too.
            self.tip = None;
            *tip = self
                .read_tip()
                .map_err(|e| Failure::Batch(sql_storage(e)))?;
            attempt = self.try_apply(pending, *tip, request, true);
        }
        match attempt {
            Ok(applied) => {
                self.conn
                    .execute_batch("RELEASE append")
                    .map_err(|e| Failure::Batch(sql_storage(e)))?;
                Ok(applied)
            }
            Err(failure) => {
                self.rollback_to_savepoint()?;
                self.conn
                    .execute_batch("RELEASE append")
                    .map_err(|e| Failure::Batch(sql_storage(e)))?;
                Err(Failure::Request(match failure {
                    Attempt::Refused(e) => e,
                    Attempt::Sql(e) => {
                        pending.remove(&request.stream);
                        self.heads.remove(&request.stream);
                        request_error(e)
                    }
                }))
            }
        }
    }

    fn rollback_to_savepoint(&self) -> Result<(), Failure> {
        if self.conn.is_autocommit() {
            // SQLite rolled the whole transaction back itself (I/O error, disk full...).
            return Err(Failure::Batch(LogError::Storage(
                "the transaction was rolled back by the storage".to_owned(),
            )));
        }
        self.conn
            .execute_batch("ROLLBACK TO append")
            .map_err(|e| Failure::Batch(sql_storage(e)))
    }

    /// Decides and writes one request. `from_database`: ignore the heads map and check every
    /// id, after the database refused a write.
    fn try_apply(
        &mut self,
        pending: &HashMap<String, Option<Head>>,
        tip: Tip,
        request: &AppendRequest,
        from_database: bool,
    ) -> Result<Applied, Attempt> {
        let stream = request.stream.as_str();
        if let Some(first) = request.events.first() {
            if let Some(stored) = self.stored_event(first.id)? {
                return self.retry_outcome(request, stored);
            }
            if from_database {
                for event in &request.events[1..] {
                    if self.stored_event(event.id)?.is_some() {
                        return Err(Attempt::Refused(LogError::Invalid(format!(
                            "event id {} is already stored, but not the append's first event {}: \
                             ids reused for different events",
                            event.id, first.id
                        ))));
                    }
                }
            }
        }

        let head = match pending.get(stream) {
            Some(head) if !from_database => *head,
            _ => self.committed_head(stream, from_database)?,
        };
        check_expected(stream, request.expected, head).map_err(Attempt::Refused)?;

        if request.events.is_empty() {
            return match head {
                Some(head) => Ok(Applied {
                    outcome: AppendOutcome {
                        last_revision: head.revision,
                        last_position: head.position,
                    },
                    written: None,
                    tip: None,
                }),
                None => Err(Attempt::Refused(LogError::Invalid(format!(
                    "nothing to append and stream {stream} has no events: no revision to report"
                )))),
            };
        }

        let mut revision = match head {
            Some(head) => head.revision.checked_add(1).ok_or_else(|| {
                Attempt::Refused(LogError::Invalid(format!("stream {stream} is full")))
            })?,
            None => 0,
        };
        // The chain links: the stream's from its head, the log's from the batch's tip (both
        // include what this batch wrote before this append).
        let mut previous_stream: Hash = head.map_or(ZERO_HASH, |head| head.stream_hash);
        let (mut previous_log, mut position) = (tip.log_hash, tip.position);
        let mut statement = self.conn.prepare_cached(
            "INSERT INTO events (position, id, stream, revision, event_type, version, data, \
             stream_hash, log_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut last = None;
        for event in &request.events {
            position = position.saturating_add(1);
            let linked = stream_hash(
                &previous_stream,
                &event.id,
                stream,
                revision,
                &event.event_type,
                event.version,
                &event.data,
            );
            let logged = log_hash(&previous_log, position, &linked);
            statement.execute(params![
                position,
                event.id.as_bytes(),
                stream,
                revision,
                event.event_type,
                event.version,
                event.data,
                linked,
                logged,
            ])?;
            previous_stream = linked;
            previous_log = logged;
            last = Some(Head {
                revision,
                position,
                stream_hash: linked,
            });
            revision = revision.saturating_add(1);
        }
        let Some(last) = last else {
            return Err(Attempt::Refused(LogError::Storage(
                "no event written".to_owned(),
            )));
        };
        Ok(Applied {
            outcome: AppendOutcome {
                last_revision: last.revision,
                last_position: last.position,
            },
            written: Some((last, request.events.len() as u64)),
            tip: Some(Tip {
                log_hash: previous_log,
                position: last.position,
            }),
        })
    }

    /// The committed tip of the log, from memory or (then kept) from the database.
    fn committed_tip(&mut self) -> Result<Tip, rusqlite::Error> {
        if let Some(tip) = self.tip {
            return Ok(tip);
        }
        let tip = self.read_tip()?;
        self.tip = Some(tip);
        Ok(tip)
    }

    /// The tip as the database has it (inside a transaction: with what it wrote so far).
    fn read_tip(&self) -> Result<Tip, rusqlite::Error> {
        let (log_hash, last): (Hash, u64) = self
            .conn
            .prepare_cached("SELECT log_hash, position FROM events ORDER BY position DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get::<_, [u8; 32]>(0)?, r.get::<_, u64>(1)?)))
            .optional()?
            .unwrap_or((ZERO_HASH, 0));
        // AUTOINCREMENT never reuses a position, even of a deleted last row.
        let sequence: Option<u64> = self
            .conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'events'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(Tip {
            log_hash,
            position: last.max(sequence.unwrap_or(0)),
        })
    }

    /// The committed head of `stream`, from the map or (then cached) from the database.
    fn committed_head(
        &mut self,
        stream: &str,
        from_database: bool,
    ) -> Result<Option<Head>, rusqlite::Error> {
        if !from_database {
            if let Some(head) = self.heads.get(stream) {
                return Ok(*head);
            }
        }
        let head = self
            .conn
            .prepare_cached(
                "SELECT revision, position, stream_hash FROM events WHERE stream = ?1 \
                 ORDER BY revision DESC LIMIT 1",
            )?
            .query_row(params![stream], |r| {
                Ok(Head {
                    revision: r.get(0)?,
                    position: r.get(1)?,
                    stream_hash: r.get::<_, [u8; 32]>(2)?,
                })
            })
            .optional()?;
        // Read before this batch wrote to the stream (else it would be in `pending`), so it is
        // the committed state, safe to cache even if the batch fails.
        if self.heads.len() >= MAX_CACHED_STREAMS {
            self.heads.clear();
        }
        self.heads.insert(stream.to_owned(), head);
        Ok(head)
    }

    fn stored_event(&self, id: Uuid) -> Result<Option<StoredEvent>, rusqlite::Error> {
        self.conn
            .prepare_cached(
                "SELECT stream, revision, position, event_type, version, data \
                 FROM events WHERE id = ?1",
            )?
            .query_row(params![id.as_bytes()], |r| {
                Ok(StoredEvent {
                    stream: r.get(0)?,
                    revision: r.get(1)?,
                    position: r.get(2)?,
                    event_type: r.get(3)?,
                    version: r.get(4)?,
                    data: r.get(5)?,
                })
            })
            .optional()
    }

    /// The outcome of the original append, if `request` is exactly a retry of it.
    fn retry_outcome(
        &self,
        request: &AppendRequest,
        first: StoredEvent,
    ) -> Result<Applied, Attempt> {
        let invalid = |message: String| Err(Attempt::Refused(LogError::Invalid(message)));
        let base = first.revision;
        let mut stored = Some(first);
        let mut last = None;
        for (index, event) in request.events.iter().enumerate() {
            let found = match stored.take() {
                Some(found) => Some(found),
                None => self.stored_event(event.id)?,
            };
            let Some(found) = found else {
                return invalid(format!(
                    "event id {} is not stored while other ids of the same append are: \
                     a retry must carry exactly the original events",
                    event.id
                ));
            };
            if found.stream != request.stream {
                return invalid(format!(
                    "event id {} is already stored in stream {}",
                    event.id, found.stream
                ));
            }
            if Some(found.revision) != base.checked_add(index as u64) {
                return invalid(format!(
                    "event id {} is already stored, but not in this order or not in one append",
                    event.id
                ));
            }
            if found.event_type != event.event_type
                || found.version != event.version
                || found.data != event.data
            {
                return invalid(format!(
                    "event id {} is already stored with a different content",
                    event.id
                ));
            }
            last = Some((found.revision, found.position));
        }
        let consistent = match request.expected {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => base == 0,
            ExpectedRevision::Exact(r) => r.checked_add(1) == Some(base),
        };
        if !consistent {
            return invalid(format!(
                "the events are already stored in stream {} from revision {base}, not where \
                 the expected revision {:?} puts them",
                request.stream, request.expected
            ));
        }
        let Some((last_revision, last_position)) = last else {
            return invalid("a retry without events".to_owned());
        };
        Ok(Applied {
            outcome: AppendOutcome {
                last_revision,
                last_position,
            },
            written: None,
            tip: None,
        })
    }
}
