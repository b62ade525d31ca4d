//! The KurrentDB event log (cargo feature `kurrentdb`): `EventLog` over a KurrentDB server
//! or cluster, through the official gRPC client (`kurrentdb` crate).
//!
//! # Mapping
//!
//! - A stream is a KurrentDB stream of the same name. Names starting with `$` are KurrentDB's
//!   system streams and are refused (`LogError::Invalid`).
//! - `ExpectedRevision` → `StreamState`: `Exact(r)` → `StreamRevision(r)`, `NoStream` →
//!   `NoStream`, `Any` → `Any`. `WrongExpectedVersion` → `LogError::Conflict`.
//! - Event ids are passed through (`EventData::id`). KurrentDB recognises a retried append
//!   (same ids at the same expected revision) and answers success without writing again.
//!   It guarantees this for `NoStream` and `Exact`; for `Any` it is only best effort (the
//!   server's documentation says so). Unlike SQLite, KurrentDB does not make event ids unique
//!   across the log, so an id reused *elsewhere* is not detected.
//! - The event type is KurrentDB's event type, unchanged (so the server's UI and projections
//!   see `PlanPurchased`). The schema **version is in the event's custom metadata**, as the
//!   JSON object `{"version": N}`.
//! - The payload is stored as a JSON event (content type `application/json`, bytes kept
//!   exactly) when it is a JSON document without surrounding whitespace, else as a binary
//!   event; either way it is read back byte for byte.
//! - The global position is the event's **commit position** in `$all`. Events written
//!   through gRPC are "implicitly committed": each has its own commit position (equal to its
//!   prepare position), strictly increasing in `$all` order, so it fits `RecordedEvent`'s
//!   contract. (Events of a legacy TCP explicit transaction share one commit position; this
//!   backend never writes such events and refuses to deliver them out of order: a read that
//!   meets a non-increasing position fails with `LogError::Storage`.)
//! - Reads of `$all` and the subscription skip system events (stream or type starting with
//!   `$`): the log holds only the product's events.
//!
//! # Subscription
//!
//! `subscribe_all(p)` is a catch-up subscription to `$all` from commit position `p`
//! (exclusive). It connects lazily on the first `next`. When the connection or the server
//! fails, it resubscribes from the position of the last event it delivered, with exponential
//! backoff ([`RETRY_BASE_DELAY`] doubling up to [`RETRY_MAX_DELAY`]), at most
//! [`MAX_RESUBSCRIBE_ATTEMPTS`] times in a row; an event delivered resets the count. Past
//! that, `next` answers `LogError::Storage`; the caller may subscribe again from
//! [`KurrentSubscription::position`].
//!
//! Known risk (read in the client's source, not observed): `kurrentdb` 1.2's subscription
//! loops without end if the server closes the stream *without* an error status; nothing
//! here guards against that yet.
//!
//! Not yet run against a real server: see docs/operations.md.

use std::future::Future;
use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, Position,
    ReadAllOptions, ReadStreamOptions, ResolvedEvent, StreamPosition, StreamState,
    SubscribeToAllOptions,
};
use serde::{Deserialize, Serialize};

use super::{
    AppendOutcome, EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, Subscription,
    MAX_READ_COUNT,
};

/// Resubscriptions tried in a row (without an event delivered in between) before the
/// subscription gives up with `LogError::Storage`.
pub const MAX_RESUBSCRIBE_ATTEMPTS: u32 = 8;

/// Delay before the first resubscription; it doubles at each further attempt.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(200);

/// Longest delay between two resubscriptions.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(10);

/// Events read from `$all` per request while paging past system events.
const READ_ALL_PAGE: usize = 1_000;

/// The delay before resubscription attempt `attempt` (1 for the first).
pub fn retry_delay(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    RETRY_BASE_DELAY
        .saturating_mul(1_u32 << doublings)
        .min(RETRY_MAX_DELAY)
}

/// The custom metadata of every event this log writes.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
}

/// The KurrentDB event log. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct KurrentLog {
    client: Client,
}

impl std::fmt::Debug for KurrentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentLog").finish_non_exhaustive()
    }
}

impl KurrentLog {
    /// A log on the server or cluster of `url`, a KurrentDB connection string such as
    /// `kurrentdb://localhost:2113?tls=false` or
    /// `kurrentdb+discover://node1:2113,node2:2113,node3:2113`. Must be called inside a tokio
    /// runtime. Connects lazily: an unreachable server shows on the first operation.
    pub fn connect(url: &str) -> Result<KurrentLog, LogError> {
        let settings: ClientSettings = url
            .parse()
            .map_err(|e| LogError::Invalid(format!("bad KurrentDB connection string: {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| LogError::Storage("the KurrentDB log needs a tokio runtime".to_owned()))?;
        let client = Client::with_runtime_handle(runtime, settings)
            .map_err(|e| LogError::Storage(format!("cannot create the KurrentDB client: {e}")))?;
        Ok(KurrentLog { client })
    }

    /// The log over an existing client.
    pub fn from_client(client: Client) -> KurrentLog {
        KurrentLog { client }
    }

    /// Global position of the last event of the log, system events included (0 when empty).
    pub async fn last_position(&self) -> Result<u64, LogError> {
        let options = ReadAllOptions::default()
            .position(StreamPosition::End)
            .max_count(1);
        let mut read = self.client.read_all(&options).await.map_err(storage)?;
        match read.next().await.map_err(storage)? {
            Some(resolved) => Ok(resolved.get_original_event().position.commit),
            None => Ok(0),
        }
    }

    async fn append_events(
        &self,
        stream: String,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, LogError> {
        super::validate_append(&stream, &events, Some('$'))?;
        let Some(last_id) = events.last().map(|e| e.id) else {
            return self.empty_append(&stream, expected).await;
        };
        let data = events
            .into_iter()
            .map(to_event_data)
            .collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default().stream_state(stream_state(expected));
        let written = self
            .client
            .append_to_stream(stream.as_str(), &options, data)
            .await
            .map_err(|e| append_error(&stream, expected, e))?;
        let last_revision = written.next_expected_version;
        let mut last_position = written.position.commit;
        if last_position == 0 || last_position == u64::MAX {
            // A retry recognised by the server may come back without a position: read the
            // last event of the append, and make sure it is ours.
            let read = self.read_stream_events(&stream, last_revision, 1).await?;
            match read.first() {
                Some(event) if event.id == last_id => last_position = event.position,
                _ => {
                    return Err(LogError::Storage(format!(
                        "stream {stream}: the append succeeded but its last event {last_id} \
                         is not at revision {last_revision}"
                    )))
                }
            }
        }
        Ok(AppendOutcome {
            last_revision,
            last_position,
        })
    }

    /// An append of no events: checks the expected revision against the stream's last event.
    async fn empty_append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
    ) -> Result<AppendOutcome, LogError> {
        let options = ReadStreamOptions::default()
            .position(StreamPosition::End)
            .max_count(1);
        let last = match self.client.read_stream(stream, &options).await {
            Ok(mut read) => match read.next().await {
                Ok(Some(resolved)) => Some(to_recorded(&resolved, true)?),
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => None,
                Err(e) => return Err(storage(e)),
            },
            Err(kurrentdb::Error::ResourceNotFound) => None,
            Err(e) => return Err(storage(e)),
        };
        let actual = last.as_ref().map(|e| e.revision);
        let matches = match expected {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => actual.is_none(),
            ExpectedRevision::Exact(r) => actual == Some(r),
        };
        if !matches {
            return Err(LogError::Conflict {
                stream: stream.to_owned(),
                expected,
                actual,
            });
        }
        match last {
            Some(event) => Ok(AppendOutcome {
                last_revision: event.revision,
                last_position: event.position,
            }),
            None => Err(LogError::Invalid(format!(
                "nothing to append and stream {stream} has no events: no revision to report"
            ))),
        }
    }

    async fn read_stream_events(
        &self,
        stream: &str,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        if stream.is_empty() {
            return Err(LogError::Invalid("the stream name is empty".to_owned()));
        }
        let count = max_count.min(MAX_READ_COUNT);
        if count == 0 {
            return Ok(Vec::new());
        }
        let options = ReadStreamOptions::default()
            .position(StreamPosition::Position(from_revision))
            .max_count(count);
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => events.push(to_recorded(&resolved, true)?),
                Ok(None) => return Ok(events),
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(storage(e)),
            }
            if events.len() >= count {
                return Ok(events);
            }
        }
    }

    async fn read_all_events(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        let count = max_count.min(MAX_READ_COUNT);
        let mut events = Vec::new();
        let mut after = after_position;
        while events.len() < count {
            let options = ReadAllOptions::default()
                .position(from_position(after))
                .max_count(READ_ALL_PAGE);
            let mut read = self.client.read_all(&options).await.map_err(storage)?;
            let mut raw = 0_usize;
            while let Some(resolved) = read.next().await.map_err(storage)? {
                raw += 1;
                let Some(event) = resolved.event.as_ref() else {
                    continue;
                };
                let position = event.position.commit;
                if position <= after {
                    if position == after && raw == 1 {
                        // The read starts *at* the position: the event already handed out.
                        continue;
                    }
                    return Err(non_increasing(after, position));
                }
                after = position;
                if is_system(&resolved) {
                    continue;
                }
                events.push(to_recorded(&resolved, false)?);
                if events.len() >= count {
                    return Ok(events);
                }
            }
            if raw < READ_ALL_PAGE {
                break;
            }
        }
        Ok(events)
    }
}

impl EventLog for KurrentLog {
    type Sub = KurrentSubscription;

    fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendOutcome, LogError>> + Send {
        self.append_events(stream.to_owned(), expected, events)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, LogError>> + Send {
        let stream = stream.to_owned();
        async move {
            self.read_stream_events(&stream, from_revision, max_count)
                .await
        }
    }

    fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, LogError>> + Send {
        self.read_all_events(after_position, max_count)
    }

    fn subscribe_all(&self, after_position: u64) -> KurrentSubscription {
        KurrentSubscription {
            client: self.client.clone(),
            after: after_position,
            inner: None,
            failures: 0,
        }
    }
}

/// A catch-up subscription to `$all` that resubscribes from its last delivered position.
pub struct KurrentSubscription {
    client: Client,
    /// Commit position of the last event handed out (or the start position).
    after: u64,
    inner: Option<kurrentdb::Subscription>,
    /// Failed attempts in a row since the last event delivered.
    failures: u32,
}

impl std::fmt::Debug for KurrentSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KurrentSubscription")
            .field("after", &self.after)
            .field("connected", &self.inner.is_some())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl KurrentSubscription {
    /// Commit position of the last event handed out (the start position before the first):
    /// the checkpoint to resubscribe from.
    pub fn position(&self) -> u64 {
        self.after
    }

    async fn next_event(&mut self) -> Result<RecordedEvent, LogError> {
        loop {
            let inner = match self.inner.as_mut() {
                Some(inner) => inner,
                None => {
                    // The client's own retry is off: this loop resubscribes itself, from the
                    // position it knows it delivered.
                    let options =
                        SubscribeToAllOptions::default().position(from_position(self.after));
                    self.inner
                        .insert(self.client.subscribe_to_all(&options).await)
                }
            };
            match inner.next().await {
                Ok(resolved) => {
                    let Some(event) = resolved.event.as_ref() else {
                        continue;
                    };
                    let position = event.position.commit;
                    if position <= self.after {
                        if position == self.after {
                            // Resubscribing from a position delivers that event again.
                            continue;
                        }
                        return Err(non_increasing(self.after, position));
                    }
                    if is_system(&resolved) {
                        continue;
                    }
                    let recorded = to_recorded(&resolved, false)?;
                    self.failures = 0;
                    self.after = recorded.position;
                    return Ok(recorded);
                }
                Err(error) => {
                    self.inner = None;
                    if matches!(error, kurrentdb::Error::AccessDenied) {
                        return Err(storage(error));
                    }
                    self.failures = self.failures.saturating_add(1);
                    if self.failures > MAX_RESUBSCRIBE_ATTEMPTS {
                        return Err(LogError::Storage(format!(
                            "the subscription to $all failed {MAX_RESUBSCRIBE_ATTEMPTS} times in \
                             a row after position {}; last error: {error}",
                            self.after
                        )));
                    }
                    tokio::time::sleep(retry_delay(self.failures)).await;
                }
            }
        }
    }
}

impl Subscription for KurrentSubscription {
    fn next(&mut self) -> impl Future<Output = Result<RecordedEvent, LogError>> + Send {
        self.next_event()
    }
}

// ---------------------------------------------------------------------------------------
// Conversions

fn stream_state(expected: ExpectedRevision) -> StreamState {
    match expected {
        ExpectedRevision::Any => StreamState::Any,
        ExpectedRevision::NoStream => StreamState::NoStream,
        ExpectedRevision::Exact(r) => StreamState::StreamRevision(r),
    }
}

/// `$all` read from after `position` (a read from a position includes the event there).
fn from_position(position: u64) -> StreamPosition<Position> {
    if position == 0 {
        StreamPosition::Start
    } else {
        StreamPosition::Position(Position {
            commit: position,
            prepare: position,
        })
    }
}

fn storage(error: kurrentdb::Error) -> LogError {
    LogError::Storage(format!("KurrentDB: {error}"))
}

fn append_error(stream: &str, expected: ExpectedRevision, error: kurrentdb::Error) -> LogError {
    match error {
        kurrentdb::Error::WrongExpectedVersion { current, .. } => LogError::Conflict {
            stream: stream.to_owned(),
            expected,
            actual: match current {
                CurrentRevision::Current(r) => Some(r),
                CurrentRevision::NoStream => None,
            },
        },
        kurrentdb::Error::ResourceDeleted => {
            LogError::Invalid(format!("stream {stream} was deleted in KurrentDB"))
        }
        other => storage(other),
    }
}

fn non_increasing(after: u64, position: u64) -> LogError {
    LogError::Storage(format!(
        "KurrentDB $all position {position} does not follow {after}: events of a legacy \
         explicit transaction share a commit position, which this log does not support"
    ))
}

fn is_system(resolved: &ResolvedEvent) -> bool {
    resolved
        .event
        .as_ref()
        .is_none_or(|event| event.stream_id().starts_with('$') || event.event_type.starts_with('$'))
}

fn to_event_data(event: NewEvent) -> Result<EventData, LogError> {
    let NewEvent {
        id,
        event_type,
        version,
        data,
    } = event;
    let base = match std::str::from_utf8(&data)
        .ok()
        .and_then(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).ok())
    {
        // Only an exact JSON document (no surrounding whitespace) is sent as JSON: a raw
        // value is serialized verbatim, so the bytes read back are the bytes written.
        Some(raw) if raw.get().len() == data.len() => {
            EventData::json(&event_type, &raw).map_err(|e| LogError::Invalid(e.to_string()))?
        }
        _ => EventData::binary(&event_type, bytes::Bytes::from(data)),
    };
    base.id(id)
        .metadata_as_json(&Meta { version })
        .map_err(|e| LogError::Invalid(format!("event {id}: {e}")))
}

fn to_recorded(resolved: &ResolvedEvent, from_stream: bool) -> Result<RecordedEvent, LogError> {
    let Some(event) = resolved.event.as_ref() else {
        return Err(LogError::Storage(
            "KurrentDB returned a link to a missing event".to_owned(),
        ));
    };
    let meta: Meta = serde_json::from_slice(&event.custom_metadata).map_err(|e| {
        LogError::Storage(format!(
            "event {} of stream {}: no schema version in its metadata ({e})",
            event.id,
            event.stream_id()
        ))
    })?;
    // Reads of `$all` carry the commit position; reads of a stream may not (the index does
    // not keep it): there the server gives the event's log (prepare) position, which equals
    // the commit position of an implicitly committed event.
    let position = if !from_stream || event.position.commit != u64::MAX {
        event.position.commit
    } else {
        event.position.prepare
    };
    if position == u64::MAX {
        return Err(LogError::Storage(format!(
            "event {} of stream {}: KurrentDB gave no position",
            event.id,
            event.stream_id()
        )));
    }
    Ok(RecordedEvent {
        id: event.id,
        stream: event.stream_id().to_owned(),
        revision: event.revision,
        position,
        event_type: event.event_type.clone(),
        version: meta.version,
        data: event.data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_is_bounded() {
        assert_eq!(retry_delay(1), RETRY_BASE_DELAY);
        assert_eq!(retry_delay(2), RETRY_BASE_DELAY * 2);
        assert_eq!(retry_delay(3), RETRY_BASE_DELAY * 4);
        assert_eq!(retry_delay(40), RETRY_MAX_DELAY);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX_DELAY);
    }

    #[test]
    fn expected_revision_maps_to_stream_state() {
        assert_eq!(stream_state(ExpectedRevision::Any), StreamState::Any);
        assert_eq!(
            stream_state(ExpectedRevision::NoStream),
            StreamState::NoStream
        );
        assert_eq!(
            stream_state(ExpectedRevision::Exact(7)),
            StreamState::StreamRevision(7)
        );
    }

    #[test]
    fn wrong_expected_version_is_a_conflict() {
        let error = kurrentdb::Error::WrongExpectedVersion {
            expected: StreamState::StreamRevision(0),
            current: CurrentRevision::Current(3),
        };
        assert_eq!(
            append_error("s", ExpectedRevision::Exact(0), error),
            LogError::Conflict {
                stream: "s".to_owned(),
                expected: ExpectedRevision::Exact(0),
                actual: Some(3),
            }
        );
        let missing = kurrentdb::Error::WrongExpectedVersion {
            expected: StreamState::StreamRevision(0),
            current: CurrentRevision::NoStream,
        };
        assert!(matches!(
            append_error("s", ExpectedRevision::Exact(0), missing),
            LogError::Conflict { actual: None, .. }
        ));
    }

    #[test]
    fn system_names_are_refused() {
        let event = NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: "T".to_owned(),
            version: 1,
            data: b"{}".to_vec(),
        };
        assert!(matches!(
            crate::log::validate_append("$all", std::slice::from_ref(&event), Some('$')),
            Err(LogError::Invalid(_))
        ));
        let system_type = NewEvent {
            event_type: "$>".to_owned(),
            ..event.clone()
        };
        assert!(matches!(
            crate::log::validate_append("s", &[system_type], Some('$')),
            Err(LogError::Invalid(_))
        ));
        assert!(crate::log::validate_append("s", &[event], Some('$')).is_ok());
    }

    #[test]
    fn bad_connection_string_is_invalid() {
        assert!(matches!(
            KurrentLog::connect("http://nowhere"),
            Err(LogError::Invalid(_))
        ));
    }
}
