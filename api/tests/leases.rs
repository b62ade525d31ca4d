//! Lease endpoints, the pool and the timer of `dcu serve` over real HTTP, with a manual
//! clock (SPEC §7 M1–M4, M6, M10).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api::server::{start, RunningServer, ServeOptions};
use ledger::clock::Timestamp;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";
const T0: &str = "2025-04-01T00:00:00Z";

struct Server {
    server: RunningServer,
    base: String,
    client: Client,
    clock: Arc<AtomicI64>,
}

fn at(text: &str) -> i64 {
    Timestamp::parse(text).expect("test instant").seconds()
}

fn rfc3339(seconds: i64) -> String {
    Timestamp(seconds).to_string()
}

/// Starts a server on `dir` whose pool is `pool` (written to `dir/pool.json`), at `now`.
/// The timer looks at the manual clock every 20 ms of real time.
async fn launch(dir: &Path, pool: &Value, now: i64) -> Server {
    let clock = Arc::new(AtomicI64::new(now));
    let reader = Arc::clone(&clock);
    let pool_file = dir.join("pool.json");
    std::fs::write(&pool_file, pool.to_string()).unwrap();
    let mut options = ServeOptions::new(dir.to_path_buf());
    options.listen = "127.0.0.1:0".into();
    options.admin_token = Some(ADMIN.into());
    options.pool = Some(pool_file);
    options.timer_poll = Duration::from_millis(20);
    options.clock = Arc::new(move || Timestamp(reader.load(Ordering::SeqCst)));
    let server = start(options).await.expect("server starts");
    Server {
        base: format!("http://{}", server.addr),
        server,
        client: Client::new(),
        clock,
    }
}

fn pool_of(nodes: &[(&str, &str, u32)]) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|(node, model, cards)| json!({"node": node, "model": model, "cards": cards}))
            .collect(),
    )
}

impl Server {
    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn advance(&self, seconds: i64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
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
        if !status.is_success() {
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(content_type, "application/problem+json", "{path}");
        }
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(ADMIN), body).await
    }

    /// Opens an account with an advanced plan (500 DCU, 8 units).
    async fn open(&self, id: &str) {
        let (status, _) = self
            .admin(Method::POST, "/v1/accounts", Some(json!({"id": id})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = self
            .admin(
                Method::POST,
                &format!("/v1/accounts/{id}/orders"),
                Some(json!({"order": format!("order-{id}"), "plan": "advanced"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    async fn token(&self, id: &str) -> String {
        let (status, body) = self
            .admin(Method::POST, &format!("/v1/accounts/{id}/tokens"), None)
            .await;
        assert_eq!(status, StatusCode::CREATED);
        body["token"].as_str().unwrap().to_string()
    }

    async fn lease(
        &self,
        account: &str,
        lease: &str,
        cards: u32,
        workers: u32,
    ) -> (StatusCode, Value) {
        let kind = if workers > 1 { "run_task" } else { "gpu_run" };
        self.admin(
            Method::POST,
            "/v1/leases",
            Some(json!({"lease": lease, "account": account, "kind": kind,
                "model": "dc100-80g", "cards": cards, "workers": workers})),
        )
        .await
    }

    async fn post(&self, lease: &str, action: &str) -> (StatusCode, Value) {
        self.admin(Method::POST, &format!("/v1/leases/{lease}/{action}"), None)
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.admin(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn state(&self, lease: &str) -> String {
        let body = self.get(&format!("/v1/leases/{lease}")).await;
        body["state"].as_str().unwrap().to_string()
    }

    /// (free cards, queued) of a model.
    async fn pool_use(&self, model: &str) -> (u64, u64) {
        let pool = self.get("/v1/pool").await;
        let entry = pool["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["model"] == model)
            .unwrap()
            .clone();
        (
            entry["free"].as_u64().unwrap(),
            entry["queued"].as_u64().unwrap(),
        )
    }

    async fn event_types(&self, account: &str) -> Vec<String> {
        let page = self
            .get(&format!("/v1/accounts/{account}/events?limit=1000"))
            .await;
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["event_type"].as_str().unwrap().to_string())
            .collect()
    }

    async fn stop(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// M4, K3, M10: a granted lease says where its cards are and what it may use; the same id
/// again answers its state with 200.
#[tokio::test]
async fn r_m4_grant_places_cards_and_tells_k3_limits() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 1), ("n2", "dc100-80g", 4)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;

    let (status, lease) = server.lease("alice", "job-1", 2, 2).await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
    assert_eq!(lease["state"], "granted");
    assert_eq!(lease["placement"], json!([{"node": "n2", "cards": 4}]));
    assert_eq!(
        (lease["cards"].as_u64(), lease["units"].as_u64()),
        (Some(4), Some(8))
    );
    let limits = &lease["limits"];
    assert_eq!(limits["cpus"], 80, "8 units × 10 CPUs");
    assert_eq!(limits["scratch_gb"], 968, "8 units × 121 GB");
    assert_eq!(limits["per_card"], json!({"cpus": 6, "memory_gb": 80}));
    assert_eq!(lease["expires_at"], rfc3339(at(T0) + 90));

    let (status, again) = server.lease("alice", "job-1", 2, 2).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "granted");
    assert_eq!(again["placement"], lease["placement"]);
    assert_eq!(
        server
            .event_types("alice")
            .await
            .iter()
            .filter(|kind| *kind == "LeaseGranted")
            .count(),
        1,
        "the repeat stored nothing"
    );

    let pool = server.get("/v1/pool").await;
    assert_eq!(
        pool["models"],
        json!([{"model": "dc100-80g", "cards": 5, "free": 1, "queued": 0}])
    );
    assert_eq!(
        pool["nodes"][1],
        json!({"node": "n2", "model": "dc100-80g", "cards": 4, "free": 0})
    );

    let listed = server.get("/v1/accounts/alice/leases").await;
    assert_eq!(listed["leases"][0]["lease"], "job-1");
    assert_eq!(listed["next_after"], Value::Null);
    server.stop().await;
}

/// M4: a request that finds no free cards waits (202) in strict FIFO order and is granted
/// when cards come back; cancelling a queued lease takes it out of the queue.
#[tokio::test]
async fn r_m4_queue_when_full_and_grant_when_cards_free() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 2)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    server.open("bob").await;

    assert_eq!(
        server.lease("alice", "a1", 2, 1).await.0,
        StatusCode::CREATED
    );
    let (status, queued) = server.lease("bob", "b1", 2, 1).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["state"], "queued");
    assert_eq!(queued["placement"], json!([]));
    // Strict FIFO: one card would not fit either, and it waits behind b1.
    assert_eq!(
        server.lease("alice", "a2", 1, 1).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        server.lease("alice", "a3", 1, 1).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(server.pool_use("dc100-80g").await, (0, 3));
    // M3: queued units count against the cap, and the quota shows them.
    let quota = server.get("/v1/accounts/alice/quota").await;
    assert_eq!(
        (&quota["units_in_use"], &quota["units_queued"]),
        (&json!(4), &json!(4))
    );
    // Another account's lease id is refused, not answered.
    let (status, problem) = server.lease("bob", "a1", 1, 1).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["code"], "invalid_request");

    let (status, cancelled) = server.post("a3", "cancel").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(server.pool_use("dc100-80g").await, (0, 2));

    server.advance(10);
    let (status, released) = server.post("a1", "release").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(released["state"], "released");
    assert_ne!(released["charged"], "0");
    // M10: released again answers its final state.
    let (status, again) = server.post("a1", "release").await;
    assert_eq!(
        (status, &again["charged"]),
        (StatusCode::OK, &released["charged"])
    );

    // b1 (first in line) got the two cards; a2 still waits.
    let b1 = server.get("/v1/leases/b1").await;
    assert_eq!(b1["state"], "granted");
    assert_eq!(b1["placement"], json!([{"node": "n1", "cards": 2}]));
    assert_eq!(server.state("a2").await, "queued");
    // Bob's snapshot shows the grant made by Alice's release (a cross-account change).
    let bob = server.get("/v1/accounts/bob/leases").await;
    assert_eq!(bob["leases"][0]["state"], "granted");

    server.post("b1", "release").await;
    assert_eq!(server.state("a2").await, "granted");
    assert_eq!(server.pool_use("dc100-80g").await, (1, 0));
    server.stop().await;
}

/// M6, M10: heartbeats meter; after the TTL lapses the heartbeat is refused with
/// `lease_not_active` and the problem says the lease expired; it was billed to its last
/// heartbeat.
#[tokio::test]
async fn r_m6_heartbeats_meter_and_expiry_is_told_to_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 8)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    server.lease("alice", "job", 1, 1).await;

    server.advance(30);
    let (status, first) = server.post("job", "heartbeat").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"], "granted");
    assert_eq!(
        first["charged"], "0.021333",
        "2.56 × 30 s / 3600, rounded half up"
    );
    assert_eq!(first["expires_at"], rfc3339(server.now() + 90));

    server.advance(30);
    let (_, second) = server.post("job", "heartbeat").await;
    assert_eq!(second["charged"], "0.042667");
    let last_heartbeat = server.now();

    server.advance(91);
    let (status, problem) = server.post("job", "heartbeat").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "lease_not_active");
    assert_eq!(problem["lease"], "job");
    assert_eq!(problem["state"], "expired");
    let lease = server.get("/v1/leases/job").await;
    assert_eq!(lease["state"], "expired");
    assert_eq!(
        lease["charged"], second["charged"],
        "billed to its last heartbeat"
    );
    assert_eq!(lease["ended_at"], rfc3339(last_heartbeat + 90));

    // A lease that never existed is 404, not 409.
    let (status, problem) = server.post("nope", "heartbeat").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_lease"))
    );
    server.stop().await;
}

/// M6, §9: the timer appends a TTL expiry at its instant with no request at all, and the
/// cards return to the pool (which only the engine holds: a query cannot fold it).
#[tokio::test]
async fn r_m6_timer_expires_a_lease_without_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 2)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    server.lease("alice", "job", 2, 1).await;
    assert_eq!(server.pool_use("dc100-80g").await, (0, 0));

    server.advance(600);
    // Only the timer runs now (polling the manual clock every 20 ms of real time).
    let mut appended = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (status, page) = server
            .admin(Method::GET, "/v1/accounts/alice/events?limit=1000", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        if page["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["event_type"] == "LeaseEnded")
        {
            appended = true;
            break;
        }
    }
    assert!(appended, "the timer appended the expiry");
    let events = server.event_types("alice").await;
    assert_eq!(events.last().map(String::as_str), Some("LeaseEnded"));
    assert_eq!(server.pool_use("dc100-80g").await, (2, 0));
    let lease = server.get("/v1/leases/job").await;
    assert_eq!(lease["state"], "expired");
    assert_eq!(lease["ended_at"], rfc3339(at(T0) + 90), "at its instant");
    let listed = server.get("/v1/accounts/alice/leases").await;
    assert_eq!(listed["leases"][0]["state"], "expired");
    server.stop().await;
}

/// Account tokens manage only their own leases: another account's lease answers 404 as if
/// it did not exist; the pool is the admin's.
#[tokio::test]
async fn account_tokens_manage_only_their_own_leases() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 8)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    server.open("bob").await;
    let alice = server.token("alice").await;
    let bob = server.token("bob").await;
    let request = |account: &str, lease: &str| json!({"lease": lease, "account": account, "kind": "gpu_debug", "model": "dc100-80g", "cards": 1});

    let (status, _) = server
        .call(
            Method::POST,
            "/v1/leases",
            Some(&alice),
            Some(request("alice", "a1")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, problem) = server
        .call(
            Method::POST,
            "/v1/leases",
            Some(&alice),
            Some(request("bob", "a2")),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_account"))
    );

    for (method, path) in [
        (Method::GET, "/v1/leases/a1"),
        (Method::POST, "/v1/leases/a1/heartbeat"),
        (Method::POST, "/v1/leases/a1/release"),
        (Method::POST, "/v1/leases/a1/cancel"),
    ] {
        let (status, problem) = server.call(method.clone(), path, Some(&bob), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(problem["code"], "unknown_lease");
    }
    let (status, _) = server
        .call(Method::GET, "/v1/accounts/alice/leases", Some(&bob), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.call(Method::GET, "/v1/pool", Some(&bob), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .call(Method::POST, "/v1/leases/a1/heartbeat", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Bob's attempts changed nothing; Alice manages her own lease.
    assert_eq!(server.state("a1").await, "granted");
    let (status, own) = server
        .call(Method::POST, "/v1/leases/a1/heartbeat", Some(&alice), None)
        .await;
    assert_eq!(
        (status, own["state"].as_str()),
        (StatusCode::OK, Some("granted"))
    );
    let (status, listed) = server
        .call(Method::GET, "/v1/accounts/alice/leases", Some(&alice), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["leases"].as_array().map(Vec::len), Some(1));
    let (status, released) = server
        .call(Method::POST, "/v1/leases/a1/release", Some(&alice), None)
        .await;
    assert_eq!(
        (status, released["state"].as_str()),
        (StatusCode::OK, Some("released"))
    );
    server.stop().await;
}

/// M1–M3: malformed lease requests are 4xx problems and store nothing.
#[tokio::test]
async fn bad_lease_bodies_are_4xx_problems_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 8), ("n2", "dc100-40g", 8)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    let before = server.event_types("alice").await.len();
    let base = json!({"lease": "job", "account": "alice", "kind": "gpu_run", "model": "dc100-80g", "cards": 1});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("cards", json!(0)), 422, "invalid_request"),
        (with("workers", json!(2)), 422, "invalid_request"),
        (with("workers", json!(0)), 422, "invalid_request"),
        (with("model", json!("h100")), 422, "invalid_request"),
        (with("cards", json!(1_u64 << 40)), 422, "invalid_request"),
        (with("cards", json!(-1)), 422, "invalid_request"),
        (with("cards", json!(100_000)), 422, "invalid_request"),
        (with("kind", json!("mining")), 422, "invalid_request"),
        (with("lease", json!("has space")), 422, "invalid_request"),
        (with("lease", json!("")), 422, "invalid_request"),
        (with("extra", json!(1)), 422, "invalid_request"),
        (with("account", json!("nobody")), 404, "unknown_account"),
        (
            json!({"lease": "job", "account": "alice", "kind": "gpu_run", "model": "dc100-40g", "cards": 2}),
            422,
            "multi_card_not_supported",
        ),
        (
            json!({"lease": "job", "account": "alice"}),
            422,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, problem) = server
            .admin(Method::POST, "/v1/leases", Some(body.clone()))
            .await;
        assert_eq!(got.as_u16(), status, "{body}: {problem}");
        assert_eq!(problem["code"], code, "{body}");
    }
    let response = server
        .client
        .post(format!("{}/v1/leases", server.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, _) = server
        .admin(Method::GET, "/v1/accounts/alice/leases?limit=0", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        server.event_types("alice").await.len(),
        before,
        "nothing stored"
    );
    assert_eq!(server.pool_use("dc100-80g").await, (8, 0));
    server.stop().await;
}

/// Restart recovery (M4, M6): running leases keep their cards, the queue keeps its order,
/// and a lease whose TTL lapsed while the server was down expires at that instant, billed
/// to its last heartbeat.
#[tokio::test]
async fn r_m4_restart_keeps_cards_and_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 1), ("n2", "dc100-80g", 1)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    server.open("bob").await;
    assert_eq!(
        server.lease("alice", "a1", 1, 1).await.0,
        StatusCode::CREATED
    );
    assert_eq!(server.lease("bob", "b1", 1, 1).await.0, StatusCode::CREATED);
    assert_eq!(
        server.lease("bob", "b2", 1, 1).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        server.lease("alice", "a2", 1, 1).await.0,
        StatusCode::ACCEPTED
    );
    server.stop().await;

    let server = launch(dir.path(), &pool, at(T0) + 10).await;
    let a1 = server.get("/v1/leases/a1").await;
    let b1 = server.get("/v1/leases/b1").await;
    assert_eq!(a1["placement"], json!([{"node": "n1", "cards": 1}]));
    assert_eq!(b1["placement"], json!([{"node": "n2", "cards": 1}]));
    assert_eq!(server.pool_use("dc100-80g").await, (0, 2));
    // Queue order survives: b2 was first in line.
    server.post("b1", "release").await;
    assert_eq!(server.state("b2").await, "granted");
    assert_eq!(server.state("a2").await, "queued");
    server.advance(10);
    let (status, beat) = server.post("a1", "heartbeat").await;
    assert_eq!(status, StatusCode::OK);
    let last_heartbeat = server.now();
    server.stop().await;

    // Down for ten minutes: every TTL lapsed meanwhile.
    let server = launch(dir.path(), &pool, last_heartbeat + 600).await;
    let a1 = server.get("/v1/leases/a1").await;
    assert_eq!(a1["state"], "expired");
    assert_eq!(
        a1["charged"], beat["charged"],
        "billed to its last heartbeat"
    );
    assert_eq!(a1["ended_at"], rfc3339(last_heartbeat + 90));
    // The expiries were appended at start-up (before any request), and a2 got cards then.
    assert!(server
        .event_types("alice")
        .await
        .iter()
        .any(|kind| kind == "LeaseEnded"));
    assert_ne!(server.state("a2").await, "queued");
    assert_eq!(server.pool_use("dc100-80g").await.1, 0);
    server.stop().await;
}

/// M4, I4: restarted with a smaller pool, a queued lease that no longer fits even an empty
/// pool is cancelled (`pool_too_small`) instead of holding its queue back, and the one behind
/// it gets the cards that are free.
#[tokio::test]
async fn r_m4_a_queued_lease_the_smaller_pool_cannot_hold_is_cancelled_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 2)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    server.open("alice").await;
    server.open("bob").await;
    assert_eq!(
        server.lease("alice", "a1", 2, 1).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        server.lease("alice", "a2", 2, 1).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        server.lease("bob", "b1", 1, 1).await.0,
        StatusCode::ACCEPTED
    );
    server.stop().await;

    let smaller = pool_of(&[("n1", "dc100-80g", 1), ("n2", "dc100-80g", 1)]);
    let server = launch(dir.path(), &smaller, at(T0) + 10).await;
    // a1 keeps its two cards on n1 (the node stays full until it ends).
    let a1 = server.get("/v1/leases/a1").await;
    assert_eq!(a1["placement"], json!([{"node": "n1", "cards": 2}]));
    let a2 = server.get("/v1/leases/a2").await;
    assert_eq!(
        (&a2["state"], &a2["reason"]),
        (&json!("cancelled"), &json!("pool_too_small")),
        "{a2}"
    );
    let b1 = server.get("/v1/leases/b1").await;
    assert_eq!(b1["state"], "granted", "{b1}");
    assert_eq!(b1["placement"], json!([{"node": "n2", "cards": 1}]));
    assert_eq!(server.pool_use("dc100-80g").await.1, 0, "nothing queued");
    server.stop().await;
}

/// The OpenAPI document lists the lease endpoints.
#[tokio::test]
async fn openapi_lists_the_lease_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_of(&[("n1", "dc100-80g", 1)]);
    let server = launch(dir.path(), &pool, at(T0)).await;
    let (status, doc) = server.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/leases",
        "/v1/leases/{id}",
        "/v1/leases/{id}/heartbeat",
        "/v1/leases/{id}/release",
        "/v1/leases/{id}/cancel",
        "/v1/accounts/{id}/leases",
        "/v1/pool",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    server.stop().await;
}

/// A bad `--pool` file stops the server from starting, with the reason.
#[tokio::test]
async fn bad_pool_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for pool in [
        json!([{"node": "n1", "model": "h100", "cards": 1}]),
        json!([{"node": "n1", "model": "dc100-80g", "cards": 0}]),
        json!({"node": "n1"}),
    ] {
        let pool_file = dir.path().join("pool.json");
        std::fs::write(&pool_file, pool.to_string()).unwrap();
        let mut options = ServeOptions::new(dir.path().to_path_buf());
        options.listen = "127.0.0.1:0".into();
        options.admin_token = Some(ADMIN.into());
        options.pool = Some(pool_file);
        let error = start(options).await.err().expect("refused");
        assert!(format!("{error:#}").contains("pool"), "{error:#}");
    }
}
