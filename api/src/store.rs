//! Where the event log lives, as named on the command line (`dcu serve --store`,
//! `dcu migrate --from/--to`), and [`StoreLog`], the log the server runs on: the embedded
//! SQLite log or, when built with the `kurrentdb` feature, KurrentDB, behind one
//! `EventLog` type by delegation.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
#[cfg(feature = "kurrentdb")]
use ledger::log::kurrentdb::{KurrentLog, KurrentSubscription};
use ledger::log::sqlite::{SqliteLog, SqliteSubscription};
use ledger::log::{
    AppendOutcome, EventLog, ExpectedRevision, LogError, NewEvent, RecordedEvent, Subscription,
};

/// A store named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// `sqlite:DIR`.
    Sqlite(PathBuf),
    /// A KurrentDB connection string.
    KurrentDb(String),
}

impl std::str::FromStr for Store {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Store> {
        if let Some(dir) = text.strip_prefix("sqlite:") {
            if dir.is_empty() {
                bail!("sqlite: needs a directory, e.g. sqlite:/var/lib/dcu");
            }
            return Ok(Store::Sqlite(PathBuf::from(dir)));
        }
        let scheme = text.split("://").next().unwrap_or_default();
        if text.contains("://")
            && [
                "kurrentdb",
                "kurrentdb+discover",
                "kdb",
                "kdb+discover",
                "esdb",
                "esdb+discover",
            ]
            .contains(&scheme)
        {
            return Ok(Store::KurrentDb(text.to_owned()));
        }
        bail!("unknown store {text:?}: expected sqlite:DIR or kurrentdb://HOST:PORT?tls=false")
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Sqlite(dir) => write!(f, "sqlite:{}", dir.display()),
            // The connection string may carry credentials: show its scheme and hosts only.
            Store::KurrentDb(url) => {
                let shown = url.split(['?', '@']).next().unwrap_or_default();
                let shown = if url.contains('@') {
                    let scheme = shown.split("://").next().unwrap_or_default();
                    let hosts = url
                        .split('@')
                        .nth(1)
                        .and_then(|rest| rest.split('?').next())
                        .unwrap_or_default();
                    format!("{scheme}://{hosts}")
                } else {
                    shown.to_owned()
                };
                write!(f, "{shown}")
            }
        }
    }
}

/// The error for a KurrentDB store in a build without the feature.
#[cfg(not(feature = "kurrentdb"))]
pub fn no_kurrentdb() -> anyhow::Error {
    anyhow::anyhow!(
        "this dcu was built without KurrentDB support (cargo feature `kurrentdb`; build with \
         `cargo build --release -p api --features kurrentdb`)"
    )
}

/// Opens the SQLite log of `dir`; with `must_exist`, a directory without a log is refused.
pub fn open_sqlite(dir: &std::path::Path, must_exist: bool) -> anyhow::Result<SqliteLog> {
    if must_exist && !dir.join(ledger::log::sqlite::DB_FILE_NAME).is_file() {
        bail!("{} holds no event log", dir.display());
    }
    SqliteLog::open(dir).with_context(|| format!("cannot open the log in {}", dir.display()))
}

/// Refuses a SQLite log whose hash chains are broken (an event changed, deleted or moved
/// behind the log's back), naming the first broken event. A log that does not exist yet
/// passes. The check reads every event once.
pub fn check_sqlite_chain(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.join(ledger::log::sqlite::DB_FILE_NAME).is_file() {
        return Ok(());
    }
    let report = ledger::log::sqlite::verify_chain(dir)
        .with_context(|| format!("cannot check the log in {}", dir.display()))?;
    if let Some(broken) = report.broken {
        bail!(
            "the log in {} is NOT intact: first broken event at position {} (stream {}, \
             revision {}): {}; see `dcu verify --data {}`",
            dir.display(),
            broken.position,
            broken.stream,
            broken.revision,
            broken.reason,
            dir.display()
        );
    }
    Ok(())
}

/// Connects to KurrentDB (lazily: an unreachable server shows on the first operation).
#[cfg(feature = "kurrentdb")]
pub fn open_kurrentdb(url: &str) -> anyhow::Result<KurrentLog> {
    KurrentLog::connect(url).context("cannot connect to KurrentDB")
}

/// The log `dcu serve` runs on.
#[derive(Debug)]
pub enum StoreLog {
    Sqlite(SqliteLog),
    #[cfg(feature = "kurrentdb")]
    /// Boxed: the client is large, and the enum is moved around with the engine.
    Kurrent(Box<KurrentLog>),
}

impl StoreLog {
    /// Opens `store` (a SQLite directory is created on first use).
    pub fn open(store: &Store) -> anyhow::Result<StoreLog> {
        match store {
            Store::Sqlite(dir) => Ok(StoreLog::Sqlite(open_sqlite(dir, false)?)),
            #[cfg(feature = "kurrentdb")]
            Store::KurrentDb(url) => Ok(StoreLog::Kurrent(Box::new(open_kurrentdb(url)?))),
            #[cfg(not(feature = "kurrentdb"))]
            Store::KurrentDb(_) => Err(no_kurrentdb()),
        }
    }

    /// Stops appends and waits until every acknowledged one is durable (SQLite's writer
    /// thread). KurrentDB acknowledges only durable appends: nothing to wait for.
    pub async fn close(&self) -> Result<(), LogError> {
        match self {
            StoreLog::Sqlite(log) => log.close().await,
            #[cfg(feature = "kurrentdb")]
            StoreLog::Kurrent(_) => Ok(()),
        }
    }
}

/// The subscription of a [`StoreLog`].
#[derive(Debug)]
pub enum StoreSub {
    Sqlite(SqliteSubscription),
    #[cfg(feature = "kurrentdb")]
    Kurrent(Box<KurrentSubscription>),
}

impl Subscription for StoreSub {
    async fn next(&mut self) -> Result<RecordedEvent, LogError> {
        match self {
            StoreSub::Sqlite(sub) => sub.next().await,
            #[cfg(feature = "kurrentdb")]
            StoreSub::Kurrent(sub) => sub.next().await,
        }
    }
}

impl EventLog for StoreLog {
    type Sub = StoreSub;

    async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, LogError> {
        match self {
            StoreLog::Sqlite(log) => log.append(stream, expected, events).await,
            #[cfg(feature = "kurrentdb")]
            StoreLog::Kurrent(log) => log.append(stream, expected, events).await,
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        match self {
            StoreLog::Sqlite(log) => log.read_stream(stream, from_revision, max_count).await,
            #[cfg(feature = "kurrentdb")]
            StoreLog::Kurrent(log) => log.read_stream(stream, from_revision, max_count).await,
        }
    }

    async fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, LogError> {
        match self {
            StoreLog::Sqlite(log) => log.read_all(after_position, max_count).await,
            #[cfg(feature = "kurrentdb")]
            StoreLog::Kurrent(log) => log.read_all(after_position, max_count).await,
        }
    }

    fn subscribe_all(&self, after_position: u64) -> StoreSub {
        match self {
            StoreLog::Sqlite(log) => StoreSub::Sqlite(log.subscribe_all(after_position)),
            #[cfg(feature = "kurrentdb")]
            StoreLog::Kurrent(log) => {
                StoreSub::Kurrent(Box::new(log.subscribe_all(after_position)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_parse() {
        assert_eq!(
            "sqlite:/tmp/x".parse::<Store>().ok(),
            Some(Store::Sqlite(PathBuf::from("/tmp/x")))
        );
        assert_eq!(
            "kurrentdb://h:2113?tls=false".parse::<Store>().ok(),
            Some(Store::KurrentDb("kurrentdb://h:2113?tls=false".to_owned()))
        );
        for bad in ["sqlite:", "", "/tmp/x", "http://h", "kurrentdb"] {
            assert!(bad.parse::<Store>().is_err(), "{bad}");
        }
    }

    #[test]
    fn stores_display_without_credentials() {
        let store: Result<Store, _> = "kurrentdb://admin:changeit@h:2113?tls=false".parse();
        assert_eq!(
            store.map(|store| store.to_string()).ok().as_deref(),
            Some("kurrentdb://h:2113")
        );
    }

    #[cfg(not(feature = "kurrentdb"))]
    #[test]
    fn kurrentdb_without_the_feature_is_refused_naming_it() {
        let store = Store::KurrentDb("kurrentdb://h:2113?tls=false".into());
        let error = StoreLog::open(&store).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("`kurrentdb`")),
            "{error:?}"
        );
    }
}
