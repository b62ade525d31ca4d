//! Scenario files (SPEC §11): timed commands and queries, one JSON object per line, run
//! against a fresh embedded log with a manual clock. Every input line gives exactly one
//! output line; a bad line gives an error line and the run goes on.

use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use ledger::clock::Timestamp;
use ledger::decide::{Command, Context, ErrorCode, LeaseRequest, Refusal};
use ledger::event::JobKind;
use ledger::log::sqlite::SqliteLog;
use ledger::log::EventLog;
use rust_decimal::Decimal;
use scheduler::{Engine, EngineError, NodeSpec, Pool, Target};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Longest input line read; a longer one is refused as malformed (a real line is < 1 KiB).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Without a `pool` line: 16 nodes × 8 cards of each model (SPEC §11).
pub const DEFAULT_POOL_NODES: usize = 16;
pub const DEFAULT_POOL_CARDS: u32 = 8;

/// The optional first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioConfig {
    #[serde(default = "default_ttl")]
    pub lease_ttl_s: u32,
    #[serde(default)]
    pub pool: Option<Vec<NodeSpec>>,
}

fn default_ttl() -> u32 {
    90
}

impl Default for ScenarioConfig {
    fn default() -> ScenarioConfig {
        ScenarioConfig {
            lease_ttl_s: default_ttl(),
            pool: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenArgs {
    account: String,
    #[serde(default)]
    edu: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyArgs {
    account: String,
    plan: String,
    order: String,
    #[serde(
        default,
        deserialize_with = "ledger::amount::plain::non_negative_option"
    )]
    price_cny: Option<Decimal>,
    #[serde(default)]
    price_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountArgs {
    account: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageArgs {
    account: String,
    gb: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanArgs {
    account: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterArgs {
    account: String,
    model: String,
    cards: u32,
    seconds: u64,
    record: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseArgs {
    account: String,
    lease: String,
    kind: JobKind,
    model: String,
    cards: u32,
    #[serde(default = "one")]
    workers: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceArgs {
    account: String,
    invoice: String,
    orders: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseIdArgs {
    lease: String,
}

/// One parsed line.
enum Step {
    Execute(Target, Command),
    Balance(String),
    Quota(String),
    LeaseStatus(String),
    /// Not in SPEC §11: stops and reopens the engine on the same log, to show recovery.
    Restart,
}

fn args<T: serde::de::DeserializeOwned>(cmd: &str, rest: Map<String, Value>) -> Result<T, String> {
    serde_json::from_value(Value::Object(rest)).map_err(|error| format!("{cmd}: {error}"))
}

fn parse_step(cmd: &str, rest: Map<String, Value>) -> Result<Step, String> {
    let account = |account: String| Target::Account(account);
    Ok(match cmd {
        "open" => {
            let a: OpenArgs = args(cmd, rest)?;
            Step::Execute(account(a.account), Command::Open { edu: a.edu })
        }
        "buy" => {
            let a: BuyArgs = args(cmd, rest)?;
            let command = Command::Buy {
                order: a.order,
                plan: a.plan,
                price_cny: a.price_cny,
                price_reason: a.price_reason,
            };
            Step::Execute(account(a.account), command)
        }
        "login" => Step::Execute(
            account(args::<AccountArgs>(cmd, rest)?.account),
            Command::Login,
        ),
        "storage" => {
            let a: StorageArgs = args(cmd, rest)?;
            Step::Execute(account(a.account), Command::Storage { gb: a.gb })
        }
        "ban" => {
            let a: BanArgs = args(cmd, rest)?;
            Step::Execute(account(a.account), Command::Ban { reason: a.reason })
        }
        "meter" => {
            let a: MeterArgs = args(cmd, rest)?;
            let command = Command::RecordUsage {
                record: a.record,
                model: a.model,
                cards: a.cards,
                seconds: a.seconds,
                started_at: None,
            };
            Step::Execute(account(a.account), command)
        }
        "lease" => {
            let a: LeaseArgs = args(cmd, rest)?;
            let request = LeaseRequest {
                lease: a.lease,
                kind: a.kind,
                model: a.model,
                cards_per_worker: a.cards,
                workers: a.workers,
            };
            Step::Execute(account(a.account), Command::RequestLease(request))
        }
        "heartbeat" => {
            let lease = args::<LeaseIdArgs>(cmd, rest)?.lease;
            Step::Execute(Target::Lease(lease.clone()), Command::Heartbeat { lease })
        }
        "release" => {
            let lease = args::<LeaseIdArgs>(cmd, rest)?.lease;
            Step::Execute(Target::Lease(lease.clone()), Command::Release { lease })
        }
        "invoice" => {
            let a: InvoiceArgs = args(cmd, rest)?;
            let command = Command::RecordInvoice {
                invoice: a.invoice,
                orders: a.orders,
            };
            Step::Execute(account(a.account), command)
        }
        "balance" => Step::Balance(args::<AccountArgs>(cmd, rest)?.account),
        "quota" => Step::Quota(args::<AccountArgs>(cmd, rest)?.account),
        "lease_status" => Step::LeaseStatus(args::<LeaseIdArgs>(cmd, rest)?.lease),
        "restart" => {
            args::<NoArgs>(cmd, rest)?;
            Step::Restart
        }
        other => return Err(format!("unknown cmd {other:?}")),
    })
}

/// A line split into its instant, its command name and its step. The instant is returned
/// even when the rest is malformed, so the error line can carry it.
fn parse_line(text: &str) -> (Option<Timestamp>, Option<String>, Result<Step, String>) {
    if text.len() > MAX_LINE_BYTES {
        return (
            None,
            None,
            Err(format!("line longer than {MAX_LINE_BYTES} bytes")),
        );
    }
    let mut object = match parse_json(text) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return (None, None, Err("a line must be a JSON object".into())),
        Err(message) => return (None, None, Err(message)),
    };
    let at = match object.remove("at") {
        Some(Value::String(text)) => match Timestamp::parse(&text) {
            Ok(at) => at,
            Err(error) => return (None, None, Err(format!("at: {error}"))),
        },
        Some(_) => return (None, None, Err("at must be an RFC 3339 string".into())),
        None => return (None, None, Err("missing at".into())),
    };
    let cmd = match object.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        _ => return (Some(at), None, Err("missing cmd (a string)".into())),
    };
    let step = parse_step(&cmd, object);
    (Some(at), Some(cmd), step)
}

/// A line's JSON value. A key repeated in any object of the line (at the top or nested, as
/// in a config line's pool entries) is refused, naming the key: serde_json would keep the
/// last value without a word. One pass: the value is built while the keys are checked.
fn parse_json(text: &str) -> Result<Value, String> {
    let repeated = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_str(text);
    let value = UniqueKeys {
        repeated: &repeated,
    }
    .deserialize(&mut reader)
    .and_then(|value| reader.end().map(|()| value))
    .map_err(|error| format!("not JSON: {error}"))?;
    match repeated.into_inner() {
        Some(key) => Err(format!("duplicate key {key:?}")),
        None => Ok(value),
    }
}

/// Builds a JSON value and keeps the first key (in text order) repeated in one object.
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    repeated: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.repeated.borrow_mut().get_or_insert(key);
                map.next_value_seed(self)?;
            } else {
                let value = map.next_value_seed(self)?;
                object.insert(key, value);
            }
        }
        Ok(Value::Object(object))
    }
}

fn parse_config(text: &str) -> Option<Result<ScenarioConfig, String>> {
    // A config line with a repeated key is refused by `parse_line`, with the same message.
    let Ok(Value::Object(object)) = parse_json(text) else {
        return None;
    };
    let config = object.get("config")?;
    if object.len() != 1 {
        return Some(Err("a config line holds only \"config\"".into()));
    }
    Some(
        serde_json::from_value::<ScenarioConfig>(config.clone())
            .map_err(|error| format!("config: {error}"))
            .and_then(check_config),
    )
}

fn check_config(config: ScenarioConfig) -> Result<ScenarioConfig, String> {
    pool_of(&config)?;
    Ok(config)
}

/// M4: the pool a scenario runs on.
fn pool_of(config: &ScenarioConfig) -> Result<Pool, String> {
    let catalog = ledger::catalog::Catalog::default();
    let models: Vec<&str> = catalog
        .models
        .iter()
        .map(|model| model.id.as_str())
        .collect();
    let pool = match &config.pool {
        Some(nodes) => Pool::new(nodes, &models),
        None => Pool::uniform(&models, DEFAULT_POOL_NODES, DEFAULT_POOL_CARDS),
    };
    pool.map_err(|error| format!("config: {error}"))
}

/// Runs the scenario read from `input` on a fresh log in `data_dir`, writing one line per
/// input line. Lines are read one at a time, as bytes: a line that is not UTF-8 is a
/// malformed line like any other, and only a failure to read the input stops the run.
pub async fn run<R: BufRead, W: Write>(
    mut input: R,
    data_dir: &Path,
    out: &mut W,
) -> anyhow::Result<()> {
    let log = SqliteLog::open(data_dir)?;
    if !log.read_all(0, 1).await?.is_empty() {
        anyhow::bail!(
            "{} already holds a log; a scenario runs on a fresh one",
            data_dir.display()
        );
    }
    let mut runner = Runner {
        engine: None,
        log: Some(log),
        last_at: None,
        data_dir: data_dir.to_path_buf(),
        config: ScenarioConfig::default(),
    };
    let mut bytes = Vec::new();
    let mut line = 0;
    loop {
        bytes.clear();
        let read = input.read_until(b'\n', &mut bytes);
        if read.context("cannot read the scenario input")? == 0 {
            break;
        }
        line += 1;
        let text = trim_line_end(&bytes);
        let output = match std::str::from_utf8(text) {
            Ok(text) => runner.line(line, text).await,
            Err(_) => {
                let refusal = Refusal::invalid(format!("line {line}: not UTF-8 text"));
                error_line(line, None, &refusal)
            }
        };
        serde_json::to_writer(&mut *out, &output)?;
        out.write_all(b"\n")?;
    }
    if let Some(engine) = runner.engine {
        engine.log().close().await?;
    }
    out.flush()?;
    Ok(())
}

/// A line without its `\n` or `\r\n` (as `str::lines` reads it).
fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// Runs a scenario in a temporary directory and returns its output (for tests and docs).
pub async fn run_to_string(input: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let mut out = Vec::new();
    run(input.as_bytes(), dir.path(), &mut out).await?;
    Ok(String::from_utf8(out)?)
}

struct Runner {
    engine: Option<Engine<SqliteLog>>,
    log: Option<SqliteLog>,
    last_at: Option<Timestamp>,
    data_dir: std::path::PathBuf,
    config: ScenarioConfig,
}

fn error_line(line: usize, at: Option<Timestamp>, refusal: &Refusal) -> Value {
    json!({"line": line, "at": at, "error": {"code": refusal.code, "message": refusal.message}})
}

impl Runner {
    async fn engine(&mut self, config: ScenarioConfig) -> anyhow::Result<&mut Engine<SqliteLog>> {
        if self.engine.is_none() {
            self.config = config.clone();
            let log = self
                .log
                .take()
                .ok_or_else(|| anyhow::anyhow!("log already taken"))?;
            let context = Context {
                lease_ttl_s: config.lease_ttl_s,
                ..Context::default()
            };
            let pool = pool_of(&config).map_err(anyhow::Error::msg)?;
            self.engine = Some(Engine::open_with_pool(log, context, Some(pool)).await?);
        }
        self.engine
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no engine"))
    }

    async fn line(&mut self, line: usize, text: &str) -> Value {
        if line == 1 {
            if let Some(config) = parse_config(text) {
                return match config {
                    Ok(config) => match self.engine(config.clone()).await {
                        Ok(_) => json!({"line": line, "at": null, "config": config}),
                        Err(error) => error_line(line, None, &storage_refusal(&error.to_string())),
                    },
                    Err(message) => {
                        let refusal = Refusal::invalid(format!("line {line}: {message}"));
                        error_line(line, None, &refusal)
                    }
                };
            }
        }
        let (at, cmd, step) = parse_line(text);
        let (at, cmd, step) = match (at, cmd, step) {
            (Some(at), Some(cmd), Ok(step)) => (at, cmd, step),
            (at, _, step) => {
                let message = step.err().unwrap_or_default();
                let refusal = Refusal::invalid(format!("line {line}: {message}"));
                return error_line(line, at, &refusal);
            }
        };
        if self.last_at.is_some_and(|last| at < last) {
            let refusal = Refusal::new(
                ErrorCode::TimeWentBackwards,
                format!("line {line}: {at} is before the previous line's instant"),
            );
            return error_line(line, Some(at), &refusal);
        }
        self.last_at = Some(at);
        match self.step(step, at).await {
            Ok(body) => {
                let mut output = Map::new();
                output.insert("line".into(), json!(line));
                output.insert("at".into(), json!(at));
                output.insert("cmd".into(), json!(cmd));
                if let Value::Object(fields) = body {
                    output.extend(fields);
                }
                Value::Object(output)
            }
            Err(refusal) => error_line(line, Some(at), &refusal),
        }
    }

    /// Stops the engine as a crash or a deploy would (the log closed, every in-memory state
    /// dropped) and opens a new one on the same data directory: everything is rebuilt from
    /// the log.
    async fn restart(&mut self) -> anyhow::Result<Value> {
        if let Some(engine) = self.engine.take() {
            engine.log().close().await?;
        }
        self.log = Some(SqliteLog::open(&self.data_dir)?);
        let config = self.config.clone();
        let engine = self.engine(config).await?;
        Ok(json!({ "restarted": true, "clock": engine.clock() }))
    }

    async fn step(&mut self, step: Step, at: Timestamp) -> Result<Value, Refusal> {
        let internal = |error: &dyn std::fmt::Display| storage_refusal(&error.to_string());
        if let Step::Restart = step {
            return self.restart().await.map_err(|error| internal(&error));
        }
        let engine = self
            .engine(ScenarioConfig::default())
            .await
            .map_err(|error| internal(&error))?;
        // The clock moves to this line's instant for queries too: what fell due meanwhile
        // (across accounts, M4 grants included) is appended first, as the server's timer
        // would have done.
        let refused = |error: EngineError| match error {
            EngineError::Refused(refusal) => refusal,
            error => internal(&error),
        };
        engine.tick(at).await.map_err(refused)?;
        let value = match step {
            Step::Execute(target, command) => {
                let outcome = engine.execute(target, command, at).await.map_err(refused)?;
                serde_json::to_value(outcome)
            }
            Step::Balance(account) => serde_json::to_value(engine.balance(&account, at)?),
            Step::Quota(account) => serde_json::to_value(engine.quota(&account, at)?),
            Step::LeaseStatus(lease) => serde_json::to_value(engine.lease_status(&lease, at)?),
            // Answered above; a restart never reaches the engine's clock.
            Step::Restart => Ok(Value::Null),
        };
        value.map_err(|error| internal(&error))
    }
}

/// A failure of the machinery rather than of the line. It has no code of its own in the
/// SPEC; it is reported as an error line so the run can go on, and named in the message.
fn storage_refusal(message: &str) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidRequest,
        format!("internal error: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_key_in_any_object_is_named() {
        let top = r#"{"at":"2025-04-01T00:00:00Z","cmd":"balance","account":"a","account":"b"}"#;
        assert_eq!(parse_json(top), Err("duplicate key \"account\"".into()));
        let nested =
            r#"{"config":{"pool":[{"node":"n1","model":"dc100-40g","cards":8,"cards":1}]}}"#;
        assert_eq!(parse_json(nested), Err("duplicate key \"cards\"".into()));
        // The same key in two objects, or escaped differently, is not / is a repeat.
        let apart = r#"{"a":{"k":1},"b":[{"k":2},{"k":3}],"k":null}"#;
        assert!(parse_json(apart).is_ok());
        assert_eq!(
            parse_json(r#"{"k":1,"\u006b":2}"#),
            Err("duplicate key \"k\"".into())
        );
        assert!(parse_json("{").is_err_and(|message| message.starts_with("not JSON: ")));
    }

    #[tokio::test]
    async fn a_repeated_key_gives_an_error_line_and_the_run_goes_on() -> anyhow::Result<()> {
        let input = concat!(
            r#"{"config":{"pool":[{"node":"n1","model":"dc100-40g","cards":8,"cards":1}]}}"#,
            "\n",
            r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"a","account":"b"}"#,
            "\n",
            r#"{"at":"2025-04-01T00:00:00Z","cmd":"open","account":"a"}"#,
            "\n",
        );
        let output = run_to_string(input).await?;
        let lines: Vec<Value> = output
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        assert_eq!(lines.len(), 3);
        for (number, key) in [(1, "cards"), (2, "account")] {
            let line = &lines[number - 1];
            assert_eq!(line["error"]["code"], "invalid_request", "{line}");
            assert_eq!(
                line["error"]["message"],
                format!("line {number}: duplicate key {key:?}"),
                "{line}"
            );
        }
        assert_eq!(lines[2]["cmd"], "open", "{}", lines[2]);
        assert_eq!(lines[2]["account"], "a", "{}", lines[2]);
        Ok(())
    }
}
