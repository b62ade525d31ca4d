//! The event log: the only truth of the product.
//!
//! `EventLog` is shaped so that both the embedded SQLite log and KurrentDB can serve it:
//! streams with revisions (optimistic concurrency through an expected revision), a global
//! position over all streams, event ids chosen by the writer (a retried append with the same
//! ids is recognised, not duplicated), and a catch-up subscription (history, then live).
//!
//! The log stores events as opaque records (type name, version, JSON payload); it knows
//! nothing of the domain. Decoding into `crate::event::Event` happens above it.

pub mod conformance;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod sqlite;

use std::future::Future;

use uuid::Uuid;

/// Most events one append may carry. An append is one account's due events plus one
/// command's events; a few hundred is already pathological, so this bound only protects
/// the writer from a runaway caller.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Most events one read may return; callers page with `from`.
pub const MAX_READ_COUNT: usize = 100_000;

/// Longest stream name and event type name an append may carry.
pub const MAX_STREAM_NAME_BYTES: usize = 512;
pub const MAX_EVENT_TYPE_BYTES: usize = 256;

/// The checks every backend makes before an append: a stream name of 1 to
/// `MAX_STREAM_NAME_BYTES` bytes, at most `MAX_EVENTS_PER_APPEND` events, type names of 1 to
/// `MAX_EVENT_TYPE_BYTES` bytes, and no event id twice. `reserved_prefix`: a prefix the
/// backend keeps for itself (KurrentDB's `$` system streams and types).
pub fn validate_append(
    stream: &str,
    events: &[NewEvent],
    reserved_prefix: Option<char>,
) -> Result<(), LogError> {
    let invalid = |message: String| Err(LogError::Invalid(message));
    if stream.is_empty() {
        return invalid("the stream name is empty".to_owned());
    }
    if stream.len() > MAX_STREAM_NAME_BYTES {
        return invalid(format!(
            "the stream name is {} bytes long, more than {MAX_STREAM_NAME_BYTES}",
            stream.len()
        ));
    }
    let reserved = |name: &str| reserved_prefix.is_some_and(|prefix| name.starts_with(prefix));
    if reserved(stream) {
        return invalid(format!(
            "stream {stream}: the name's prefix is reserved by the store"
        ));
    }
    if events.len() > MAX_EVENTS_PER_APPEND {
        return invalid(format!(
            "{} events in one append, more than {MAX_EVENTS_PER_APPEND}",
            events.len()
        ));
    }
    let mut ids = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        let type_name = &event.event_type;
        if type_name.is_empty() || type_name.len() > MAX_EVENT_TYPE_BYTES || reserved(type_name) {
            return invalid(format!(
                "event {}: the type name must be 1 to {MAX_EVENT_TYPE_BYTES} bytes, without the \
                 store's reserved prefix",
                event.id
            ));
        }
        if !ids.insert(event.id) {
            return invalid(format!("event id {} appears twice in one append", event.id));
        }
    }
    Ok(())
}

/// What the writer expects the stream's revision to be before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    /// No check at all.
    Any,
    /// The stream must not exist yet (it has no events).
    NoStream,
    /// The stream's last event must have exactly this revision (revisions start at 0).
    Exact(u64),
}

/// An event as the writer hands it to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Chosen by the writer; the same id appended again to the same place is a retry.
    pub id: Uuid,
    /// The event's type name, e.g. `PlanPurchased`.
    pub event_type: String,
    /// The schema version of the payload, for upcasting old events.
    pub version: u32,
    /// The payload: JSON bytes.
    pub data: Vec<u8>,
}

/// An event as the log stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream: String,
    /// Position inside its stream, from 0, without gaps.
    pub revision: u64,
    /// Position in the whole log, strictly increasing in commit order (from 1; gaps allowed).
    pub position: u64,
    pub event_type: String,
    pub version: u32,
    pub data: Vec<u8>,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Revision of the last event of the stream after the append.
    pub last_revision: u64,
    /// Global position of the last event written by this append.
    pub last_position: u64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LogError {
    /// Someone else wrote first: the stream's revision is not the expected one.
    #[error("stream {stream}: expected revision {expected:?}, found {actual:?}")]
    Conflict {
        stream: String,
        expected: ExpectedRevision,
        /// The stream's current last revision, `None` when it has no events.
        actual: Option<u64>,
    },
    /// The request itself is wrong (too many events, an event id reused elsewhere...).
    #[error("invalid append: {0}")]
    Invalid(String),
    /// The storage failed; nothing of this append was acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The log has been closed.
    #[error("the event log is closed")]
    Closed,
}

/// A catch-up subscription: every recorded event after the start position, history first,
/// then live events as they are committed, in global order, each exactly once.
pub trait Subscription: Send {
    /// The next event; waits for one when the subscriber has caught up.
    fn next(&mut self) -> impl Future<Output = Result<RecordedEvent, LogError>> + Send;
}

/// The log. Implementations: `sqlite::SqliteLog` (embedded default); KurrentDB (feature).
pub trait EventLog: Send + Sync + 'static {
    type Sub: Subscription;

    /// Appends `events` to `stream` atomically if its revision is `expected`.
    /// Acknowledged (Ok) only once durable. A retry of an append whose event ids are already
    /// stored at the same place answers the original outcome without writing again.
    fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, LogError>> + Send;

    /// Up to `max_count` events of `stream` with revision >= `from_revision`, in order.
    fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, LogError>> + Send;

    /// Up to `max_count` events of the whole log with position > `after_position`, in order.
    fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, LogError>> + Send;

    /// A catch-up subscription to the whole log from after `after_position` (0: the start).
    fn subscribe_all(&self, after_position: u64) -> Self::Sub;
}
