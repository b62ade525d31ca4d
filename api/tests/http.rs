//! `dcu serve` over real HTTP, on an ephemeral port, with a manual clock.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use api::server::{start, RunningServer, ServeOptions};
use ledger::clock::Timestamp;
use ledger::decide::Context;
use ledger::log::sqlite::SqliteLog;
use reqwest::{Client, Method, StatusCode};
use scheduler::Engine;
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

async fn launch(dir: &Path, admin: Option<&str>, now: i64) -> Server {
    let clock = Arc::new(AtomicI64::new(now));
    let reader = Arc::clone(&clock);
    let mut options = ServeOptions::new(dir.to_path_buf());
    options.listen = "127.0.0.1:0".into();
    options.admin_token = admin.map(str::to_string);
    options.clock = Arc::new(move || Timestamp(reader.load(Ordering::SeqCst)));
    let server = start(options).await.expect("server starts");
    Server {
        base: format!("http://{}", server.addr),
        server,
        client: Client::new(),
        clock,
    }
}

impl Server {
    fn set_now(&self, text: &str) {
        self.clock.store(at(text), Ordering::SeqCst);
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(ADMIN), body).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.admin(method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    async fn open(&self, id: &str) {
        let (status, _) = self
            .admin(
                Method::POST,
                "/v1/accounts",
                Some(json!({"id": id, "edu": true})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }

    async fn balance(&self, id: &str) -> Value {
        self.ok(Method::GET, &format!("/v1/accounts/{id}/balance"), None)
            .await
    }
}

/// SPEC §5: the manual's worked example, through the API.
#[tokio::test]
async fn r_c1_c2_c3_manual_worked_example_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00+08:00")).await;
    server.open("xiaoming").await;
    let order = server
        .ok(
            Method::POST,
            "/v1/accounts/xiaoming/orders",
            Some(json!({"order": "ord-0401", "plan": "trial"})),
        )
        .await;
    assert_eq!(order["effect"], "started");
    let balance = server.balance("xiaoming").await;
    assert_eq!(balance["active"], "20");
    assert_eq!(balance["buckets"][0]["expires_at"], "2025-04-30T16:00:00Z");

    server.set_now("2025-04-20T00:00:00+08:00");
    let usage = server
        .ok(
            Method::POST,
            "/v1/accounts/xiaoming/usage",
            Some(json!({"record": "usage-april", "model": "dc100-40g", "cards": 1, "seconds": 28125})),
        )
        .await;
    assert_eq!(usage["cost"], "10");

    server.set_now("2025-04-30T23:59:59+08:00");
    assert_eq!(server.balance("xiaoming").await["active"], "10");

    server.set_now("2025-05-01T00:00:00+08:00");
    let balance = server.balance("xiaoming").await;
    assert_eq!(
        (balance["active"].as_str(), balance["inactive"].as_str()),
        (Some("0"), Some("10"))
    );
    assert_eq!(
        balance["buckets"][0]["window_ends_at"],
        "2025-05-30T16:00:00Z"
    );

    server.set_now("2025-05-15T00:00:00+08:00");
    let order = server
        .ok(
            Method::POST,
            "/v1/accounts/xiaoming/orders",
            Some(json!({"order": "ord-0515", "plan": "basic"})),
        )
        .await;
    assert_eq!(order["effect"], "started");
    // The same order again: the same answer, one effect (I5).
    let again = server
        .ok(
            Method::POST,
            "/v1/accounts/xiaoming/orders",
            Some(json!({"order": "ord-0515", "plan": "basic"})),
        )
        .await;
    assert_eq!(again, order);
    let balance = server.balance("xiaoming").await;
    assert_eq!(balance["active"], "66.6");
    assert_eq!(balance["inactive"], "0");

    // as_of in the future: folded in memory, nothing written.
    let later = server
        .ok(
            Method::GET,
            "/v1/accounts/xiaoming/balance?as_of=2025-07-14T00:00:00%2B08:00",
            None,
        )
        .await;
    assert_eq!(later["expired"], "66.6");

    server.set_now("2025-06-14T00:00:00+08:00");
    let balance = server.balance("xiaoming").await;
    assert_eq!(
        (balance["active"].as_str(), balance["inactive"].as_str()),
        (Some("0"), Some("56.6"))
    );
    assert_eq!(balance["expired"], "10");

    server.set_now("2025-07-14T00:00:00+08:00");
    let balance = server.balance("xiaoming").await;
    assert_eq!(balance["active"], "0");
    assert_eq!(balance["inactive"], "0");
    assert_eq!(balance["expired"], "66.6");
    let quota = server
        .ok(Method::GET, "/v1/accounts/xiaoming/quota", None)
        .await;
    assert_eq!(quota["plan"], Value::Null);
    assert_eq!(quota["parallelism_cap"], 0);

    // As-of in the past (issue 6): the answer a replay of the log up to that instant gives,
    // not today's state.
    for (as_of, active, inactive, expired) in [
        ("2025-04-30T23:59:59%2B08:00", "10", "0", "0"),
        ("2025-05-01T00:00:00%2B08:00", "0", "10", "0"),
        ("2025-05-15T00:00:00%2B08:00", "66.6", "0", "0"),
        ("2025-06-14T00:00:00%2B08:00", "0", "56.6", "10"),
    ] {
        let past = server
            .ok(
                Method::GET,
                &format!("/v1/accounts/xiaoming/balance?as_of={as_of}"),
                None,
            )
            .await;
        assert_eq!(
            (&past["active"], &past["inactive"], &past["expired"]),
            (&json!(active), &json!(inactive), &json!(expired)),
            "balance as of {as_of}"
        );
    }
    let past_quota = server
        .ok(
            Method::GET,
            "/v1/accounts/xiaoming/quota?as_of=2025-05-20T00:00:00%2B08:00",
            None,
        )
        .await;
    assert_eq!(past_quota["plan"], "basic");
    assert_eq!(past_quota["parallelism_cap"], 4);
    assert_eq!(past_quota["period_ends_at"], "2025-06-13T16:00:00Z");

    // The log, paged.
    let first = server
        .ok(Method::GET, "/v1/accounts/xiaoming/events?limit=2", None)
        .await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    assert_eq!(first["events"][0]["event_type"], "AccountOpened");
    assert_eq!(first["events"][0]["revision"], 0);
    assert_eq!(first["events"][0]["event"]["account"], "xiaoming");
    assert_eq!(first["next_after"], 1);
    let rest = server
        .ok(
            Method::GET,
            "/v1/accounts/xiaoming/events?after=1&limit=1000",
            None,
        )
        .await;
    assert_eq!(rest["events"][0]["revision"], 2);
    assert_eq!(rest["next_after"], Value::Null);
    server.server.shutdown().await.unwrap();
}

/// Admin / own account / other account / no token / bad token.
#[tokio::test]
async fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("alice").await;
    server.open("bob").await;
    let mint = |id: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server
                .admin(Method::POST, &format!("/v1/accounts/{id}/tokens"), None)
                .await;
            assert_eq!(status, StatusCode::CREATED);
            body["token"].as_str().unwrap().to_string()
        }
    };
    let alice = mint("alice").await;
    let bob = mint("bob").await;
    assert_ne!(alice, bob);

    let reads = [
        "/v1/accounts/alice",
        "/v1/accounts/alice/balance",
        "/v1/accounts/alice/quota",
        "/v1/accounts/alice/events",
    ];
    for path in reads {
        let cases: [(Option<&str>, StatusCode, Option<&str>); 5] = [
            (Some(ADMIN), StatusCode::OK, None),
            (Some(&alice), StatusCode::OK, None),
            (Some(&bob), StatusCode::NOT_FOUND, Some("unknown_account")),
            (None, StatusCode::UNAUTHORIZED, Some("unauthorized")),
            (
                Some("not-a-token"),
                StatusCode::UNAUTHORIZED,
                Some("unauthorized"),
            ),
        ];
        for (token, status, code) in cases {
            let (got, body) = server.call(Method::GET, path, token, None).await;
            assert_eq!(got, status, "{path} with {token:?}: {body}");
            if let Some(code) = code {
                assert_eq!(body["code"], code, "{path}");
            }
        }
    }
    // Another account's data looks exactly like a missing account.
    let (_, hidden) = server
        .call(Method::GET, "/v1/accounts/alice/balance", Some(&bob), None)
        .await;
    let (_, missing) = server
        .call(Method::GET, "/v1/accounts/nobody/balance", Some(&bob), None)
        .await;
    let (_, missing_admin) = server
        .admin(Method::GET, "/v1/accounts/alice2/balance", None)
        .await;
    assert_eq!(hidden["code"], missing["code"]);
    assert_eq!(hidden["status"], missing_admin["status"]);

    // Admin-only calls: 403 for any account token, even on its own account.
    let writes = [
        ("/v1/accounts", json!({"id": "carol"})),
        (
            "/v1/accounts/alice/orders",
            json!({"order": "o1", "plan": "trial"}),
        ),
        (
            "/v1/accounts/alice/usage",
            json!({"record": "r", "model": "dc100-40g", "cards": 1, "seconds": 1}),
        ),
        ("/v1/accounts/alice/logins", json!(null)),
        ("/v1/accounts/alice/storage", json!({"gb": 1})),
        ("/v1/accounts/alice/ban", json!({"reason": "x"})),
        ("/v1/accounts/alice/tokens", json!(null)),
    ];
    for (path, body) in writes {
        let (status, problem) = server
            .call(Method::POST, path, Some(&alice), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(problem["code"], "forbidden");
        let (status, _) = server.call(Method::POST, path, None, Some(body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Nothing of those was stored.
    let events = server
        .ok(Method::GET, "/v1/accounts/alice/events", None)
        .await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);

    // Any token reads the catalog; operations need none.
    let (status, catalog) = server
        .call(Method::GET, "/v1/catalog", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(catalog["plans"].is_array());
    let (status, _) = server.call(Method::GET, "/v1/catalog", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // Minting for an unknown account is 404.
    let (status, _) = server
        .admin(Method::POST, "/v1/accounts/nobody/tokens", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.server.shutdown().await.unwrap();
}

/// method, path, content type, body, expected status, expected code.
type BadCase<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

/// Bad input: always a 4xx problem+json with a code, never a 5xx, nothing stored.
#[tokio::test]
async fn bad_inputs_are_4xx_problems_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("a").await;
    server
        .ok(
            Method::POST,
            "/v1/accounts/a/orders",
            Some(json!({"order": "o1", "plan": "trial"})),
        )
        .await;
    let before = server.ok(Method::GET, "/v1/accounts/a/events", None).await;
    let huge = "x".repeat(70 * 1024);
    let json_ct = Some("application/json");
    let cases: Vec<BadCase> = vec![
        ("POST", "/v1/accounts", json_ct, "{\"id\":".into(), 400, "invalid_request"),
        ("POST", "/v1/accounts", json_ct, "{\"id\":1}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts", json_ct, "{\"id\":\"z\",\"edu\":\"yes\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts", json_ct, "{\"id\":\"z\",\"admin\":true}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts", json_ct, "{\"id\":\"has space\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts", None, "{\"id\":\"z\"}".into(), 415, "invalid_request"),
        ("POST", "/v1/accounts", json_ct, format!("{{\"id\":\"{huge}\"}}"), 413, "invalid_request"),
        ("POST", "/v1/accounts", json_ct, "{\"id\":\"a\"}".into(), 409, "account_exists"),
        ("POST", "/v1/accounts/a/orders", json_ct, "{\"order\":\"o2\",\"plan\":\"platinum\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/orders", json_ct, "{\"order\":\"o1\",\"plan\":\"basic\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/orders", json_ct, "{\"order\":\"o3\",\"plan\":\"basic\",\"price_cny\":\"abc\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/orders", json_ct, "{\"order\":\"o5\",\"plan\":\"basic\",\"price_cny\":\"-5\",\"price_reason\":\"x\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/orders", json_ct, "{\"order\":\"o6\",\"plan\":\"basic\",\"price_cny\":\"1\"}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/nobody/orders", json_ct, "{\"order\":\"o4\",\"plan\":\"basic\"}".into(), 404, "unknown_account"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"h100\",\"cards\":1,\"seconds\":1}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"dc100-40g\",\"cards\":-1,\"seconds\":1}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"dc100-40g\",\"cards\":1,\"seconds\":1e30}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"dc100-40g\",\"cards\":1,\"seconds\":99999999999999999999999}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"dc100-40g\",\"cards\":1,\"seconds\":18446744073709551615}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"dc100-40g\",\"cards\":0,\"seconds\":1}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/usage", json_ct, "{\"record\":\"r\",\"model\":\"dc100-40g\",\"cards\":1}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/storage", json_ct, "{\"gb\":-5}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/storage", json_ct, "{\"gb\":18446744073709551615}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/ban", json_ct, "{}".into(), 422, "invalid_request"),
        ("POST", "/v1/accounts/a/ban", json_ct, format!("{{\"reason\":\"{}\"}}", "y".repeat(5000)), 422, "invalid_request"),
        ("GET", "/v1/accounts/a/balance?as_of=yesterday", None, String::new(), 400, "invalid_request"),
        ("GET", "/v1/accounts/a/balance?as_of=9999-12-31T00:00:00Z", None, String::new(), 400, "invalid_request"),
        ("GET", "/v1/accounts/a/quota?as_of=2025-13-01T00:00:00Z", None, String::new(), 400, "invalid_request"),
        ("GET", "/v1/accounts/a/balance?at=2025-01-01T00:00:00Z", None, String::new(), 400, "invalid_request"),
        ("GET", "/v1/accounts/a/events?limit=0", None, String::new(), 400, "invalid_request"),
        ("GET", "/v1/accounts/a/events?limit=100000", None, String::new(), 400, "invalid_request"),
        ("GET", "/v1/accounts/a/events?after=-1", None, String::new(), 400, "invalid_request"),
        ("DELETE", "/v1/accounts", None, String::new(), 405, "method_not_allowed"),
        ("GET", "/v1/nothing-here", None, String::new(), 404, "not_found"),
    ];
    for (method, path, content_type, body, status, code) in cases {
        let mut request = server
            .client
            .request(method.parse().unwrap(), format!("{}{}", server.base, path))
            .bearer_auth(ADMIN);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if !body.is_empty() {
            request = request.body(body.clone());
        }
        let response = request.send().await.expect("sent");
        let got = response.status().as_u16();
        let content = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let problem: Value = response.json().await.expect("problem body");
        let shown = &body[..body.len().min(80)];
        assert_eq!(got, status, "{method} {path} {shown}: {problem}");
        assert_eq!(content, "application/problem+json", "{method} {path}");
        assert_eq!(problem["code"], code, "{method} {path} {shown}");
        assert_eq!(problem["status"], status);
        assert!(!problem["detail"].as_str().unwrap_or_default().is_empty());
    }
    let after = server.ok(Method::GET, "/v1/accounts/a/events", None).await;
    assert_eq!(before, after, "a refused request stored something");
    let (status, _) = server.admin(Method::GET, "/v1/accounts/z", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No 5xx was ever answered.
    let metrics = server.call(Method::GET, "/metrics", None, None).await.1;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(!metrics.contains("status=\"5"), "{metrics}");
    server.server.shutdown().await.unwrap();
}

/// I5 over HTTP: an order id again answers its first result only for the very same request;
/// another price or reason is refused and stores nothing.
#[tokio::test]
async fn r_i5_an_order_again_with_another_price_is_refused_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("bob").await;
    let first = json!({"order": "o1", "plan": "trial", "price_cny": "100000", "price_reason": "campus deal"});
    let answer = server
        .ok(Method::POST, "/v1/accounts/bob/orders", Some(first.clone()))
        .await;
    let before = server
        .ok(Method::GET, "/v1/accounts/bob/events", None)
        .await;
    let again = server
        .ok(Method::POST, "/v1/accounts/bob/orders", Some(first))
        .await;
    assert_eq!(again, answer, "the same request answers the first result");
    for body in [
        json!({"order": "o1", "plan": "trial", "price_cny": "10", "price_reason": ""}),
        json!({"order": "o1", "plan": "trial", "price_cny": "100000", "price_reason": "other"}),
        json!({"order": "o1", "plan": "trial"}),
    ] {
        let (status, problem) = server
            .admin(Method::POST, "/v1/accounts/bob/orders", Some(body.clone()))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(problem["code"], "invalid_request");
        assert!(
            problem["detail"].as_str().unwrap().contains("new order id"),
            "{problem}"
        );
    }
    let after = server
        .ok(Method::GET, "/v1/accounts/bob/events", None)
        .await;
    assert_eq!(before, after, "a refused order stored something");
    server.server.shutdown().await.unwrap();
}

/// U1 over HTTP: `price_cny` is a plain decimal string; anything else is refused, nothing is
/// stored, and the problem says what to write.
#[tokio::test]
async fn r_u1_price_cny_must_be_a_plain_decimal_string_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("bob").await;
    let before = server
        .ok(Method::GET, "/v1/accounts/bob/events", None)
        .await;
    for price in [
        json!("1e5"),
        json!("1E-2"),
        json!("+10"),
        json!("10."),
        json!(".5"),
        json!("1_0"),
        json!(" 10"),
        json!(10),
    ] {
        let body =
            json!({"order": "o1", "plan": "trial", "price_cny": price, "price_reason": "deal"});
        let (status, problem) = server
            .admin(Method::POST, "/v1/accounts/bob/orders", Some(body))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{price}: {problem}"
        );
        assert_eq!(problem["code"], "invalid_request");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("plain decimal"),
            "{price}: {problem}"
        );
    }
    let after = server
        .ok(Method::GET, "/v1/accounts/bob/events", None)
        .await;
    assert_eq!(before, after, "a refused order stored something");
    let order =
        json!({"order": "o1", "plan": "trial", "price_cny": "10.50", "price_reason": "deal"});
    server
        .ok(Method::POST, "/v1/accounts/bob/orders", Some(order))
        .await;
    server.server.shutdown().await.unwrap();
}

/// M11 over HTTP: a usage record of 0 seconds is refused and stores nothing.
#[tokio::test]
async fn r_m11_usage_of_zero_seconds_is_refused_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("bob").await;
    let before = server
        .ok(Method::GET, "/v1/accounts/bob/events", None)
        .await;
    let body = json!({"record": "r0", "model": "dc100-80g", "cards": 1, "seconds": 0});
    let (status, problem) = server
        .admin(Method::POST, "/v1/accounts/bob/usage", Some(body))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "invalid_request");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("seconds must be 1"));
    let after = server
        .ok(Method::GET, "/v1/accounts/bob/events", None)
        .await;
    assert_eq!(before, after, "a refused record stored something");
    server.server.shutdown().await.unwrap();
}

/// A1 over HTTP: `.` and `..` cannot be opened (no URL could reach them).
#[tokio::test]
async fn r_a1_account_ids_dot_and_dot_dot_are_refused_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    for id in [".", ".."] {
        let (status, problem) = server
            .admin(Method::POST, "/v1/accounts", Some(json!({"id": id})))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{id}: {problem}");
        assert_eq!(problem["code"], "invalid_request");
    }
    server.open("...").await;
    server.server.shutdown().await.unwrap();
}

/// A body that never arrives whole (slowloris: `Content-Length: 100`, 5 bytes sent) is
/// answered 408 with a problem after the body-read timeout, and the connection is closed.
#[tokio::test]
async fn a_stalled_request_body_times_out_with_408_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    let stream = tokio::net::TcpStream::connect(server.server.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\"",
        server.server.addr
    );
    // Readiness and try_* only: the test does not need tokio's io-util.
    let mut sent = 0;
    while sent < head.len() {
        stream.writable().await.unwrap();
        match stream.try_write(&head.as_bytes()[sent..]) {
            Ok(written) => sent += written,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => panic!("write failed: {error}"),
        }
    }
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read_to_end = async {
        let mut buffer = [0u8; 4096];
        loop {
            stream.readable().await.unwrap();
            match stream.try_read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => answer.extend_from_slice(&buffer[..read]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    };
    let read = tokio::time::timeout(
        api::server::BODY_READ_TIMEOUT + std::time::Duration::from_secs(10),
        read_to_end,
    )
    .await;
    assert!(read.is_ok(), "the connection was held open");
    let elapsed = started.elapsed();
    assert!(elapsed >= api::server::BODY_READ_TIMEOUT - std::time::Duration::from_secs(1));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    let (status, _) = server.admin(Method::GET, "/v1/accounts/a", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was opened");
    server.server.shutdown().await.unwrap();
}

/// Many clients writing to one account at once; I1 holds afterwards and the arithmetic adds
/// up; every acknowledged write survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r_i1_concurrent_writers_conserve_credit() {
    const CLIENTS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await);
    server.open("busy").await;
    server
        .ok(
            Method::POST,
            "/v1/accounts/busy/orders",
            Some(json!({"order": "base", "plan": "advanced"})),
        )
        .await;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let server = Arc::clone(&server);
        tasks.push(tokio::spawn(async move {
            // Each usage costs 2.56 × 360 / 3600 = 0.256 DCU; each pack grants 10.
            // Every record is sent twice (idempotent).
            for _ in 0..2 {
                server
                    .ok(
                        Method::POST,
                        "/v1/accounts/busy/usage",
                        Some(json!({"record": format!("u-{client}"), "model": "dc100-80g", "cards": 1, "seconds": 360})),
                    )
                    .await;
            }
            if client % 4 == 0 {
                let order = server
                    .ok(
                        Method::POST,
                        "/v1/accounts/busy/orders",
                        Some(json!({"order": format!("ext-{client}"), "plan": "extension"})),
                    )
                    .await;
                assert_eq!(order["effect"], "granted");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let packs = CLIENTS.div_ceil(4);
    let expected = rust_decimal::Decimal::from(500 + 10 * packs)
        - rust_decimal::Decimal::new(256, 3) * rust_decimal::Decimal::from(CLIENTS);
    let balance = server.balance("busy").await;
    let active: rust_decimal::Decimal = balance["active"].as_str().unwrap().parse().unwrap();
    assert_eq!(active, expected);
    assert_eq!(balance["arrears"], "0");
    let server = Arc::into_inner(server).expect("no other owner");
    server.server.shutdown().await.unwrap();

    // Folded from the log alone: the same state, and I1 holds.
    let log = SqliteLog::open(dir.path()).unwrap();
    let engine = Engine::open(log, Context::default()).await.unwrap();
    let state = engine.state("busy").expect("account in the log");
    assert!(state.conservation_holds());
    assert_eq!(state.records.len(), CLIENTS);
    assert_eq!(state.active_total().decimal(), expected);
    engine.log().close().await.unwrap();
}

/// A restart on the same directory keeps every balance, the admin token file and the
/// account tokens.
#[tokio::test]
async fn restart_keeps_balances_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let start_at = at("2025-04-01T00:00:00Z");
    let server = launch(dir.path(), None, start_at).await;
    let token_file = dir.path().join("admin.token");
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut balances = Vec::new();
    let mut tokens = Vec::new();
    for (index, plan) in ["trial", "basic", "advanced"].iter().enumerate() {
        let id = format!("acct-{index}");
        let (status, _) = server
            .call(
                Method::POST,
                "/v1/accounts",
                Some(&admin),
                Some(json!({"id": id})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = server
            .call(
                Method::POST,
                &format!("/v1/accounts/{id}/orders"),
                Some(&admin),
                Some(json!({"order": format!("o-{index}"), "plan": plan})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = server
            .call(Method::POST, &format!("/v1/accounts/{id}/usage"), Some(&admin), Some(json!({"record": format!("r-{index}"), "model": "dc100-40g", "cards": 1, "seconds": 1000 + index})))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, token) = server
            .call(
                Method::POST,
                &format!("/v1/accounts/{id}/tokens"),
                Some(&admin),
                None,
            )
            .await;
        tokens.push(token["token"].as_str().unwrap().to_string());
        let (_, balance) = server
            .call(
                Method::GET,
                &format!("/v1/accounts/{id}/balance"),
                Some(&admin),
                None,
            )
            .await;
        balances.push((id, balance));
    }
    server.server.shutdown().await.unwrap();

    let server = launch(dir.path(), None, start_at).await;
    for ((id, balance), token) in balances.iter().zip(&tokens) {
        let (status, again) = server
            .call(
                Method::GET,
                &format!("/v1/accounts/{id}/balance"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(&again, balance, "{id}");
        let (status, _) = server
            .call(
                Method::GET,
                &format!("/v1/accounts/{id}/balance"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    server.server.shutdown().await.unwrap();
}

/// Two servers on one data directory would hand out the same cards twice (I4) and race
/// each other's writes: the second is refused while the first runs, and a server whose port
/// is taken opens nothing.
#[tokio::test]
async fn r_i4_one_server_per_data_directory_and_a_busy_port_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = launch(dir.path(), Some("admin-secret"), at("2025-04-01T00:00:00Z")).await;
    let mut options = ServeOptions::new(dir.path().to_path_buf());
    options.listen = "127.0.0.1:0".into();
    options.admin_token = Some("admin-secret".into());
    let refused = start(options)
        .await
        .err()
        .expect("a second server is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("another dcu process is serving"),
        "{message}"
    );
    let (status, _) = first.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "the first server runs on");

    let fresh = tempfile::tempdir().unwrap();
    let mut options = ServeOptions::new(fresh.path().join("data"));
    options.listen = first.server.addr.to_string();
    options.admin_token = Some("admin-secret".into());
    let refused = start(options).await.err().expect("a busy port is refused");
    assert!(
        format!("{refused:#}").contains("cannot listen"),
        "{refused:#}"
    );
    assert!(
        !fresh
            .path()
            .join("data")
            .join(ledger::log::sqlite::DB_FILE_NAME)
            .exists(),
        "no log was created"
    );
    first.server.shutdown().await.unwrap();
}

/// The server clock never goes backwards: a clock set back is taken as the engine's clock.
#[tokio::test]
async fn r_u4_clock_never_goes_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-05-01T00:00:00Z")).await;
    server.open("a").await;
    server.set_now("2025-04-01T00:00:00Z");
    let order = server
        .ok(
            Method::POST,
            "/v1/accounts/a/orders",
            Some(json!({"order": "o", "plan": "trial"})),
        )
        .await;
    assert_eq!(order["effect"], "started");
    let balance = server.balance("a").await;
    assert_eq!(balance["buckets"][0]["expires_at"], "2025-05-31T00:00:00Z");
    server.server.shutdown().await.unwrap();
}

/// /openapi.json names every endpoint; /metrics counts requests and events.
#[tokio::test]
async fn openapi_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("m").await;
    let (status, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/accounts",
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/orders",
        "/v1/accounts/{id}/balance",
        "/v1/accounts/{id}/quota",
        "/v1/accounts/{id}/events",
        "/v1/accounts/{id}/usage",
        "/v1/accounts/{id}/logins",
        "/v1/accounts/{id}/storage",
        "/v1/accounts/{id}/ban",
        "/v1/accounts/{id}/tokens",
        "/v1/catalog",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["BalanceBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    server.ok(Method::POST, "/v1/accounts/m/logins", None).await;
    server
        .ok(
            Method::POST,
            "/v1/accounts/m/storage",
            Some(json!({"gb": 5})),
        )
        .await;
    let quota = server.ok(Method::GET, "/v1/accounts/m/quota", None).await;
    assert_eq!(quota["storage_used_gb"], 5);
    server
        .ok(
            Method::POST,
            "/v1/accounts/m/ban",
            Some(json!({"reason": "mining"})),
        )
        .await;
    let account = server.ok(Method::GET, "/v1/accounts/m", None).await;
    assert_eq!(account["banned"], true);
    let (_, text) = server.call(Method::GET, "/metrics", None, None).await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains(
            "dcu_http_requests_total{method=\"POST\",route=\"/v1/accounts\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("dcu_events_appended_total 4"), "{text}");
    server.server.shutdown().await.unwrap();
}

/// Shutdown while writes are in flight: every write that was acknowledged is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = launch(dir.path(), Some(ADMIN), at("2025-04-01T00:00:00Z")).await;
    server.open("s").await;
    server
        .ok(
            Method::POST,
            "/v1/accounts/s/orders",
            Some(json!({"order": "o", "plan": "advanced"})),
        )
        .await;
    let mut tasks = Vec::new();
    for index in 0..60 {
        let client = server.client.clone();
        let url = format!("{}/v1/accounts/s/usage", server.base);
        tasks.push(tokio::spawn(async move {
            let record = format!("r-{index}");
            let response = client
                .post(url)
                .bearer_auth(ADMIN)
                .json(&json!({"record": record, "model": "dc100-40g", "cards": 1, "seconds": 10}))
                .send()
                .await;
            match response {
                Ok(response) if response.status() == StatusCode::OK => Some(record),
                _ => None,
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    server.server.shutdown().await.unwrap();
    let mut acknowledged = Vec::new();
    for task in tasks {
        if let Some(record) = task.await.unwrap() {
            acknowledged.push(record);
        }
    }
    let log = SqliteLog::open(dir.path()).unwrap();
    let engine = Engine::open(log, Context::default()).await.unwrap();
    let state = engine.state("s").expect("account in the log");
    eprintln!(
        "{} of 60 writes acknowledged before shutdown",
        acknowledged.len()
    );
    for record in &acknowledged {
        assert!(
            state.records.contains_key(record),
            "{record} acknowledged but lost"
        );
    }
    assert!(state.conservation_holds());
    engine.log().close().await.unwrap();
}
