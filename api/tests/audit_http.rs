//! Issue 6 over HTTP (statements, the reconciliation report, invoices) and issue 7's
//! `dcu serve --store`, on an ephemeral port with a manual clock.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api::server::{start, RunningServer, ServeOptions};
use api::store::Store;
use ledger::clock::Timestamp;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";

struct Server {
    server: RunningServer,
    base: String,
    client: Client,
    clock: Arc<AtomicI64>,
}

fn at(text: &str) -> i64 {
    Timestamp::parse(text).expect("test instant").seconds()
}

async fn launch_with(mut options: ServeOptions, now: i64) -> Server {
    let clock = Arc::new(AtomicI64::new(now));
    let reader = Arc::clone(&clock);
    options.listen = "127.0.0.1:0".into();
    options.admin_token = Some(ADMIN.into());
    options.clock = Arc::new(move || Timestamp(reader.load(Ordering::SeqCst)));
    let server = start(options).await.expect("server starts");
    Server {
        base: format!("http://{}", server.addr),
        server,
        client: Client::new(),
        clock,
    }
}

async fn launch(dir: &Path, now: i64) -> Server {
    launch_with(ServeOptions::new(dir.to_path_buf()), now).await
}

impl Server {
    fn set_now(&self, text: &str) {
        self.clock.store(at(text), Ordering::SeqCst);
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.raw(method, path, token, body).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, ADMIN, body).await;
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn open(&self, id: &str) {
        self.ok(
            Method::POST,
            "/v1/accounts",
            Some(json!({"id": id, "edu": true})),
        )
        .await;
    }

    async fn buy(&self, id: &str, order: &str, plan: &str) {
        self.ok(
            Method::POST,
            &format!("/v1/accounts/{id}/orders"),
            Some(json!({"order": order, "plan": plan})),
        )
        .await;
    }
}

/// The manual's worked example (SPEC §5), driven over HTTP with the manual clock; the due
/// events up to July 14 are written by a last command (a login) at that instant.
async fn worked_example(server: &Server) {
    server.open("xiaoming").await;
    server.buy("xiaoming", "ord-0401", "trial").await;
    server.set_now("2025-04-20T00:00:00+08:00");
    server
        .ok(
            Method::POST,
            "/v1/accounts/xiaoming/usage",
            Some(json!({"record": "usage-april", "model": "dc100-40g", "cards": 1, "seconds": 28125})),
        )
        .await;
    server.set_now("2025-05-15T00:00:00+08:00");
    server.buy("xiaoming", "ord-0515", "basic").await;
    server.set_now("2025-07-14T00:00:00+08:00");
    server
        .ok(Method::POST, "/v1/accounts/xiaoming/logins", None)
        .await;
}

fn dcu(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcu"))
        .args(args)
        .output()
        .expect("dcu runs")
}

const TO: &str = "2025-07-14T00:00:01+08:00";

#[tokio::test]
async fn statement_over_http_matches_the_cli_and_the_report_balances() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), at("2025-04-01T00:00:00+08:00")).await;
    worked_example(&server).await;

    let statement = server
        .ok(
            Method::GET,
            "/v1/accounts/xiaoming/statement?to=2025-07-14T00:00:01%2B08:00",
            None,
        )
        .await;
    let kinds: Vec<&str> = statement["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "grant",
            "spend",
            "carry_over",
            "grant",
            "activation",
            "expiry",
            "carry_over",
            "expiry"
        ]
    );
    assert_eq!(statement["consistent"], true);
    assert_eq!(statement["closing"]["balance"], "0");
    // Without `to`: up to and including the server's now (July 14), the same statement.
    let default_to = server
        .ok(Method::GET, "/v1/accounts/xiaoming/statement", None)
        .await;
    assert_eq!(default_to, statement);
    // A range in the middle: opening balance 10 on May 15 (the carry-over).
    let may = server
        .ok(
            Method::GET,
            "/v1/accounts/xiaoming/statement?from=2025-05-15T00:00:00%2B08:00&to=2025-05-16T00:00:00%2B08:00",
            None,
        )
        .await;
    assert_eq!(may["opening"]["balance"], "10");
    assert_eq!(may["closing"]["balance"], "66.6");

    // The report: April to July, the identity holds, 444 CNY of revenue.
    let report = server
        .ok(
            Method::GET,
            "/v1/reconciliation?from=2025-04-01T00:00:00%2B08:00&to=2025-08-01T00:00:00%2B08:00",
            None,
        )
        .await;
    assert_eq!(report["identity_ok"], true);
    assert_eq!(report["total"]["revenue"]["total_cny"], "444");
    assert_eq!(report["accounts"][0]["account"], "xiaoming");
    // CSV.
    let response = server
        .raw(
            Method::GET,
            "/v1/reconciliation?from=2025-04-01T00:00:00%2B08:00&to=2025-08-01T00:00:00%2B08:00&format=csv",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let csv = response.text().await.unwrap();
    assert!(csv.starts_with("scope,name,from,to,"), "{csv}");
    assert!(csv.contains("\naccount,xiaoming,"), "{csv}");

    // Bounded inputs: a huge range, a backwards range, a bad format, a missing bound.
    for query in [
        "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        "from=2025-08-01T00:00:00Z&to=2025-04-01T00:00:00Z",
        "from=2025-04-01T00:00:00Z&to=2025-08-01T00:00:00Z&format=xml",
        "from=2025-04-01T00:00:00Z",
        "from=yesterday&to=2025-08-01T00:00:00Z",
    ] {
        let (status, problem) = server
            .call(
                Method::GET,
                &format!("/v1/reconciliation?{query}"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(problem["code"], "invalid_request", "{query}");
    }
    let (status, problem) = server
        .call(
            Method::GET,
            "/v1/accounts/xiaoming/statement?from=2025-08-01T00:00:00Z&to=2025-04-01T00:00:00Z",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _) = server
        .call(Method::GET, "/v1/accounts/nobody/statement", ADMIN, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    server.server.shutdown().await.unwrap();

    // The CLI on the same log: the same statement, the same report.
    let data = dir.path().to_str().unwrap();
    let output = dcu(&[
        "statement",
        "xiaoming",
        "--data",
        data,
        "--to",
        TO,
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{output:?}");
    let cli: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(cli, statement);
    let output = dcu(&[
        "reconcile",
        "--data",
        data,
        "--from",
        "2025-04-01T00:00:00+08:00",
        "--to",
        "2025-08-01T00:00:00+08:00",
    ]);
    assert!(output.status.success(), "{output:?}");
    let cli: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(cli, report);
}

#[tokio::test]
async fn invoices_are_recorded_once_and_repeat_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), at("2025-04-01T00:00:00+08:00")).await;
    server.open("xiaoming").await;
    server.buy("xiaoming", "ord-0401", "trial").await;
    server.set_now("2025-04-02T00:00:00+08:00");
    server.buy("xiaoming", "ord-0402", "extension").await;

    let body = json!({"invoice": "inv-1", "orders": ["ord-0401", "ord-0402"]});
    let (status, invoice) = server
        .call(
            Method::POST,
            "/v1/accounts/xiaoming/invoices",
            ADMIN,
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{invoice}");
    assert_eq!(invoice["account"], "xiaoming");
    assert_eq!(invoice["invoice"], "inv-1");
    assert_eq!(invoice["orders"], json!(["ord-0401", "ord-0402"]));
    assert_eq!(invoice["item"], "技术服务费");
    let trial_and_pack = server
        .ok(Method::GET, "/v1/accounts/xiaoming/statement", None)
        .await["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|order| order["price_cny"].as_str().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(
        invoice["amount_cny"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        trial_and_pack
    );
    let events_before = server
        .ok(Method::GET, "/v1/accounts/xiaoming/events?limit=1000", None)
        .await["events"]
        .as_array()
        .unwrap()
        .len();

    // The same invoice again: the same answer, nothing written.
    let (status, again) = server
        .call(
            Method::POST,
            "/v1/accounts/xiaoming/invoices",
            ADMIN,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, invoice);
    let events_after = server
        .ok(Method::GET, "/v1/accounts/xiaoming/events?limit=1000", None)
        .await["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(events_after, events_before);

    // An order already invoiced: 422 naming it.
    let (status, problem) = server
        .call(
            Method::POST,
            "/v1/accounts/xiaoming/invoices",
            ADMIN,
            Some(json!({"invoice": "inv-2", "orders": ["ord-0401"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "invalid_request");
    assert!(
        problem["detail"].as_str().unwrap().contains("ord-0401"),
        "{problem}"
    );
    // The statement marks both orders invoiced; the report counts them invoiced.
    let statement = server
        .ok(Method::GET, "/v1/accounts/xiaoming/statement", None)
        .await;
    assert_eq!(statement["invoices"][0]["invoice"], "inv-1");
    assert!(statement["orders"]
        .as_array()
        .unwrap()
        .iter()
        .all(|order| order["invoice"] == "inv-1"));
    // Bad bodies.
    for bad in [
        json!({"invoice": "inv-3", "orders": []}),
        json!({"invoice": "inv-3", "orders": ["nope"]}),
        json!({"invoice": "inv-3", "orders": ["ord-0401"], "extra": 1}),
    ] {
        let (status, problem) = server
            .call(
                Method::POST,
                "/v1/accounts/xiaoming/invoices",
                ADMIN,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
    }
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/accounts/nobody/invoices",
            ADMIN,
            Some(json!({"invoice": "inv-9", "orders": ["ord-0401"]})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn account_tokens_read_their_own_statement_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), at("2025-04-01T00:00:00+08:00")).await;
    server.open("xiaoming").await;
    server.open("lihua").await;
    server.buy("xiaoming", "ord-0401", "trial").await;
    let token = server
        .ok(Method::POST, "/v1/accounts/xiaoming/tokens", None)
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, own) = server
        .call(Method::GET, "/v1/accounts/xiaoming/statement", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["account"], "xiaoming");
    let (status, other) = server
        .call(Method::GET, "/v1/accounts/lihua/statement", &token, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(other["code"], "unknown_account");
    let (status, forbidden) = server
        .call(
            Method::GET,
            "/v1/reconciliation?from=2025-04-01T00:00:00Z&to=2025-05-01T00:00:00Z",
            &token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden["code"], "forbidden");
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/accounts/xiaoming/invoices",
            &token,
            Some(json!({"invoice": "inv-1", "orders": ["ord-0401"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .call(Method::GET, "/v1/accounts/xiaoming/statement", "bad", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The OpenAPI document lists the new operations.
    let doc = server.ok(Method::GET, "/openapi.json", None).await;
    for path in [
        "/v1/accounts/{id}/statement",
        "/v1/accounts/{id}/invoices",
        "/v1/reconciliation",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    server.server.shutdown().await.unwrap();
}

/// `ServeOptions::store`: the log in one directory, the tokens in another; a restart keeps
/// the balances.
#[tokio::test]
async fn store_option_keeps_balances_across_a_restart() {
    let tokens = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    let options = || {
        let mut options = ServeOptions::new(tokens.path().to_path_buf());
        options.store = Some(Store::Sqlite(log.path().to_path_buf()));
        options
    };
    let server = launch_with(options(), at("2025-04-01T00:00:00+08:00")).await;
    server.open("xiaoming").await;
    server.buy("xiaoming", "ord-0401", "trial").await;
    let before = server
        .ok(Method::GET, "/v1/accounts/xiaoming/balance", None)
        .await;
    server.server.shutdown().await.unwrap();
    assert!(log.path().join("events.db").is_file());
    assert!(!tokens.path().join("events.db").exists());

    let server = launch_with(options(), at("2025-04-01T00:00:00+08:00")).await;
    let after = server
        .ok(Method::GET, "/v1/accounts/xiaoming/balance", None)
        .await;
    assert_eq!(after, before);
    assert_eq!(after["active"], "20");
    server.server.shutdown().await.unwrap();
}

/// Kills the child when dropped (a failed assertion must not leave a server running).
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve_binary(store: &str, port: u16) -> Serving {
    Serving(
        Command::new(env!("CARGO_BIN_EXE_dcu"))
            .args([
                "serve",
                "--store",
                store,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("DCU_ADMIN_TOKEN", ADMIN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dcu serve starts"),
    )
}

async fn wait_healthy(client: &Client, base: &str) {
    for _ in 0..200 {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await {
            if response.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("dcu serve did not become healthy at {base}");
}

/// `dcu serve --store sqlite:DIR`: serves, keeps the log (and the tokens) in DIR, and a
/// restart keeps the balances.
#[tokio::test]
async fn dcu_serve_store_sqlite_serves_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().display());
    let client = Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve_binary(&store, port);
    wait_healthy(&client, &base).await;
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
    };
    let opened = post("/v1/accounts", json!({"id": "xiaoming", "edu": true}))
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::CREATED);
    let order = post(
        "/v1/accounts/xiaoming/orders",
        json!({"order": "ord-1", "plan": "trial"}),
    )
    .await
    .unwrap();
    assert!(order.status().is_success());
    let balance = |base: String| {
        let client = client.clone();
        async move {
            client
                .get(format!("{base}/v1/accounts/xiaoming/balance"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let before = balance(base.clone()).await;
    assert_eq!(before["active"], "20");
    // An acknowledged write is durable: even a kill keeps it.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    drop(server);
    assert!(dir.path().join("events.db").is_file());

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = serve_binary(&store, port);
    wait_healthy(&client, &base).await;
    let after = balance(base).await;
    assert_eq!(after["active"], before["active"]);
    assert_eq!(after["buckets"], before["buckets"]);
}

/// Without the `kurrentdb` feature, a KurrentDB store is refused naming the feature.
#[cfg(not(feature = "kurrentdb"))]
#[test]
fn dcu_serve_refuses_kurrentdb_without_the_feature() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dcu"))
        .args([
            "serve",
            "--data",
            dir.path().to_str().unwrap(),
            "--store",
            "kurrentdb://localhost:2113?tls=false",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("DCU_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("dcu runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`kurrentdb`"), "{stderr}");
    let output = dcu(&["serve", "--store", "postgres://x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--store"));
}
