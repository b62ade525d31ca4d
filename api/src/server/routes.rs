//! The HTTP endpoints, their extractors, and the OpenAPI document generated from them.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger::clock::Timestamp;
use ledger::decide::{Command, ErrorCode, LeaseRequest};
use projections::views::{self, LeaseState};
use scheduler::{Outcome, Target};
use serde::de::DeserializeOwned;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::audit_routes::state_before_last_event;
use super::auth::Principal;
use super::engine_task::{LeaseAnswer, LeaseFailure, LeaseInfo, Request as EngineRequest};
use super::problem::{ApiError, LeaseProblem, Problem};
use super::wire::*;
use super::{AppState, BODY_READ_TIMEOUT};

/// A JSON body; any rejection (syntax, type, unknown field, size, content type) becomes a
/// 4xx problem with code `invalid_request`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // The whole body must arrive within BODY_READ_TIMEOUT (a slow or stalled sender does
        // not hold the connection open); the connection is closed after the 408.
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Json::<T>::from_request(request, state));
        let Ok(parsed) = read.await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s: send the whole body at once",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ));
        };
        parsed
            .map(|Json(value)| Body(value))
            .map_err(|rejection: JsonRejection| {
                ApiError::invalid(rejection.status(), rejection.body_text())
            })
    }
}

/// A query string; unknown parameters and bad values answer 400 `invalid_request`.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|rejection: QueryRejection| {
                ApiError::invalid(StatusCode::BAD_REQUEST, rejection.body_text())
            })
    }
}

/// The `{id}` of an account path.
pub struct AccountId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AccountId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| AccountId(id))
            .map_err(|rejection: PathRejection| {
                ApiError::invalid(StatusCode::BAD_REQUEST, rejection.body_text())
            })
    }
}

fn parse_as_of(as_of: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    as_of
        .map(|text| {
            Timestamp::parse(&text).map_err(|error| {
                ApiError::invalid(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "as_of: {error}; give an RFC 3339 instant such as 2025-04-01T00:00:00Z"
                    ),
                )
            })
        })
        .transpose()
}

async fn execute(state: &AppState, account: String, command: Command) -> Result<Outcome, ApiError> {
    let outcome = state
        .engine
        .call(|reply| EngineRequest::Execute {
            target: Target::Account(account),
            command,
            reply,
        })
        .await??;
    Ok(outcome)
}

fn unexpected(outcome: &Outcome) -> ApiError {
    tracing::error!(?outcome, "the engine answered with an unexpected outcome");
    ApiError::internal("unexpected answer from the engine")
}

/// Open an account (admin).
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts",
    request_body = OpenAccountRequest,
    responses(
        (status = 201, body = AccountBody),
        (status = 409, description = "account_exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn open_account(
    State(state): State<AppState>,
    principal: Principal,
    Body(request): Body<OpenAccountRequest>,
) -> Result<(StatusCode, Json<AccountBody>), ApiError> {
    principal.require_admin()?;
    match execute(&state, request.id, Command::Open { edu: request.edu }).await? {
        Outcome::Account { account, edu } => Ok((
            StatusCode::CREATED,
            Json(AccountBody {
                account,
                edu,
                banned: false,
            }),
        )),
        other => Err(unexpected(&other)),
    }
}

/// An account (admin, or its own token).
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_account(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
) -> Result<Json<AccountBody>, ApiError> {
    principal.require_reader(&id)?;
    let summary = state
        .engine
        .account(&id)
        .ok_or_else(|| ApiError::unknown_account(&id))?;
    Ok(Json(AccountBody {
        account: summary.account,
        edu: summary.edu,
        banned: summary.banned,
    }))
}

/// Record an order (admin; idempotent by order id).
#[utoipa::path(post, path = "/v1/accounts/{id}/orders", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    request_body = OrderRequest,
    responses((status = 200, body = OrderBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "account_banned, no_current_period", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (unknown plan, order id again with another plan, price or reason)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_order(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Body(request): Body<OrderRequest>,
) -> Result<Json<OrderBody>, ApiError> {
    principal.require_admin()?;
    let command = Command::Buy {
        order: request.order,
        plan: request.plan,
        price_cny: request.price_cny,
        price_reason: request.price_reason,
    };
    match execute(&state, id, command).await? {
        Outcome::Order(view) => Ok(Json(view.into())),
        other => Err(unexpected(&other)),
    }
}

/// The balance at `as_of` (admin, or its own token).
#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts",
    params(("id" = String, Path, description = "account id"), AsOfQuery),
    responses((status = 200, body = BalanceBody),
        (status = 400, description = "invalid_request (as_of)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_balance(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Params(query): Params<AsOfQuery>,
) -> Result<Json<BalanceBody>, ApiError> {
    principal.require_reader(&id)?;
    let as_of = parse_as_of(query.as_of)?;
    let view = match state_before_last_event(&state, &id, as_of).await? {
        Some((past, as_of)) => views::balance(&past, as_of),
        None => state.engine.balance(&id, as_of)?,
    };
    Ok(Json(view.into()))
}

/// The quota at `as_of` (admin, or its own token).
#[utoipa::path(get, path = "/v1/accounts/{id}/quota", tag = "accounts",
    params(("id" = String, Path, description = "account id"), AsOfQuery),
    responses((status = 200, body = QuotaBody),
        (status = 400, description = "invalid_request (as_of)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_quota(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Params(query): Params<AsOfQuery>,
) -> Result<Json<QuotaBody>, ApiError> {
    principal.require_reader(&id)?;
    let as_of = parse_as_of(query.as_of)?;
    let view = match state_before_last_event(&state, &id, as_of).await? {
        Some((past, as_of)) => views::quota(&past, as_of),
        None => state.engine.quota(&id, as_of)?,
    };
    Ok(Json(view.into()))
}

/// The account's log, paged (admin, or its own token).
#[utoipa::path(get, path = "/v1/accounts/{id}/events", tag = "accounts",
    params(("id" = String, Path, description = "account id"), EventsQuery),
    responses((status = 200, body = EventsBody),
        (status = 400, description = "invalid_request (after, limit)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_events(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Params(query): Params<EventsQuery>,
) -> Result<Json<EventsBody>, ApiError> {
    principal.require_reader(&id)?;
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_EVENTS_PAGE}"),
        ));
    }
    let page = state
        .engine
        .call(|reply| EngineRequest::Events {
            account: id.clone(),
            after: query.after,
            limit,
            reply,
        })
        .await??
        .ok_or_else(|| ApiError::unknown_account(&id))?;
    let full = page.events.len() == limit;
    let next_after = page
        .events
        .last()
        .filter(|_| full)
        .map(|(record, _)| record.revision);
    let events = page
        .events
        .into_iter()
        .map(|(record, event)| EventItem {
            event_type: record.event_type,
            revision: record.revision,
            position: record.position,
            event: serde_json::to_value(&event).unwrap_or_default(),
        })
        .collect();
    Ok(Json(EventsBody {
        account: id,
        events,
        next_after,
    }))
}

/// Record external usage (M11; admin; idempotent by record id).
#[utoipa::path(post, path = "/v1/accounts/{id}/usage", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    request_body = UsageRequest,
    responses((status = 200, body = UsageBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (unknown model, out-of-range number)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_usage(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Body(request): Body<UsageRequest>,
) -> Result<Json<UsageBody>, ApiError> {
    principal.require_admin()?;
    let command = Command::RecordUsage {
        record: request.record,
        model: request.model,
        cards: request.cards,
        seconds: request.seconds,
        started_at: None,
    };
    match execute(&state, id, command).await? {
        Outcome::Usage {
            account,
            record,
            cost,
        } => Ok(Json(UsageBody {
            account,
            record,
            cost,
        })),
        other => Err(unexpected(&other)),
    }
}

async fn done(state: &AppState, id: String, command: Command) -> Result<Json<DoneBody>, ApiError> {
    match execute(state, id, command).await? {
        Outcome::Done { account } => Ok(Json(DoneBody { account })),
        other => Err(unexpected(&other)),
    }
}

/// Record a login (A2; admin). No body.
#[utoipa::path(post, path = "/v1/accounts/{id}/logins", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = DoneBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_login(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
) -> Result<Json<DoneBody>, ApiError> {
    principal.require_admin()?;
    done(&state, id, Command::Login).await
}

/// Report storage used now (S1; admin).
#[utoipa::path(post, path = "/v1/accounts/{id}/storage", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    request_body = StorageRequest,
    responses((status = 200, body = DoneBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_storage(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Body(request): Body<StorageRequest>,
) -> Result<Json<DoneBody>, ApiError> {
    principal.require_admin()?;
    done(&state, id, Command::Storage { gb: request.gb }).await
}

/// Ban an account (A3; admin; permanent).
#[utoipa::path(post, path = "/v1/accounts/{id}/ban", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    request_body = BanRequest,
    responses((status = 200, body = DoneBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_ban(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Body(request): Body<BanRequest>,
) -> Result<Json<DoneBody>, ApiError> {
    principal.require_admin()?;
    done(
        &state,
        id,
        Command::Ban {
            reason: request.reason,
        },
    )
    .await
}

/// Mint a token that reads only this account (admin). The token is shown once.
#[utoipa::path(post, path = "/v1/accounts/{id}/tokens", tag = "accounts",
    params(("id" = String, Path, description = "account id")),
    responses((status = 201, body = TokenBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_token(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
) -> Result<(StatusCode, Json<TokenBody>), ApiError> {
    principal.require_admin()?;
    if state.engine.account(&id).is_none() {
        return Err(ApiError::unknown_account(&id));
    }
    let token = state.tokens.mint(&id)?;
    tracing::info!(account = %id, "account token minted");
    Ok((StatusCode::CREATED, Json(TokenBody { account: id, token })))
}

/// The `{id}` of a lease path.
pub struct LeaseId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for LeaseId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| LeaseId(id))
            .map_err(|rejection: PathRejection| {
                ApiError::invalid(StatusCode::BAD_REQUEST, rejection.body_text())
            })
    }
}

/// The account an account token is limited to; `None` for the admin.
fn caller_of(principal: &Principal) -> Option<String> {
    match principal {
        Principal::Admin => None,
        Principal::Account(account) => Some(account.clone()),
    }
}

fn lease_problem(failure: LeaseFailure) -> ApiError {
    let error = ApiError::from(failure.error);
    match failure.info {
        Some(info) if error.code == ErrorCode::LeaseNotActive.as_str() => {
            let state = serde_json::to_value(info.view.state)
                .ok()
                .and_then(|value| value.as_str().map(str::to_string))
                .unwrap_or_default();
            let reason = info.view.reason.and_then(|reason| {
                serde_json::to_value(reason)
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_string))
            });
            let message = format!("{}; the lease is {state}", error.message);
            ApiError { message, ..error }.with_lease(LeaseProblem {
                lease: info.view.lease,
                state,
                reason,
            })
        }
        _ => error,
    }
}

async fn lease_command(
    state: &AppState,
    principal: &Principal,
    target: Target,
    command: Command,
) -> Result<LeaseAnswer, ApiError> {
    let caller = caller_of(principal);
    state
        .engine
        .call(|reply| EngineRequest::Lease {
            target,
            command,
            caller,
            reply,
        })
        .await?
        .map_err(lease_problem)
}

fn lease_body(state: &AppState, info: LeaseInfo) -> Json<LeaseBody> {
    Json(LeaseBody::of(info, state.engine.catalog()))
}

/// Request a lease (M1–M4; admin, or the account's own token). The lease id is the
/// idempotency key: the same id again answers that lease's state (200).
#[utoipa::path(post, path = "/v1/leases", tag = "leases",
    request_body = LeaseRequestBody,
    responses(
        (status = 201, description = "granted: cards placed", body = LeaseBody),
        (status = 202, description = "queued: waiting for cards (strict FIFO per model)", body = LeaseBody),
        (status = 200, description = "this lease id exists: its state", body = LeaseBody),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "account_banned, no_current_period, storage_over_allowance, insufficient_credit, parallelism_exceeded", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (bad shape, unknown model, lease id of another account), multi_card_not_supported", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn post_lease(
    State(state): State<AppState>,
    principal: Principal,
    Body(request): Body<LeaseRequestBody>,
) -> Result<(StatusCode, Json<LeaseBody>), ApiError> {
    principal.require_reader(&request.account)?;
    let command = Command::RequestLease(LeaseRequest {
        lease: request.lease,
        kind: request.kind,
        model: request.model,
        cards_per_worker: request.cards,
        workers: request.workers,
    });
    let answer = lease_command(
        &state,
        &principal,
        Target::Account(request.account),
        command,
    )
    .await?;
    let status = match (answer.existed, answer.info.view.state) {
        (true, _) => StatusCode::OK,
        (false, LeaseState::Queued) => StatusCode::ACCEPTED,
        (false, _) => StatusCode::CREATED,
    };
    Ok((status, lease_body(&state, answer.info)))
}

/// Heartbeat a running lease (M6): meters it up to now and moves its expiry.
#[utoipa::path(post, path = "/v1/leases/{id}/heartbeat", tag = "leases",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, description = "still granted", body = LeaseBody),
        (status = 404, description = "unknown_lease", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "lease_not_active: the problem's `state` and `reason` say why (queued, released, expired, revoked, cancelled)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn post_heartbeat(
    State(state): State<AppState>,
    principal: Principal,
    LeaseId(id): LeaseId,
) -> Result<Json<LeaseBody>, ApiError> {
    let command = Command::Heartbeat { lease: id.clone() };
    let answer = lease_command(&state, &principal, Target::Lease(id), command).await?;
    Ok(lease_body(&state, answer.info))
}

/// Release a lease (end of job; M10: once, then it answers its final state). A queued
/// lease is cancelled.
#[utoipa::path(post, path = "/v1/leases/{id}/release", tag = "leases",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, description = "its final state", body = LeaseBody),
        (status = 404, description = "unknown_lease", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn post_release(
    State(state): State<AppState>,
    principal: Principal,
    LeaseId(id): LeaseId,
) -> Result<Json<LeaseBody>, ApiError> {
    let command = Command::Release { lease: id.clone() };
    let answer = lease_command(&state, &principal, Target::Lease(id), command).await?;
    Ok(lease_body(&state, answer.info))
}

/// Cancel a lease: a queued one leaves its queue (`cancelled`); a running one is released
/// (the same as `/release`).
#[utoipa::path(post, path = "/v1/leases/{id}/cancel", tag = "leases",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, description = "its final state", body = LeaseBody),
        (status = 404, description = "unknown_lease", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn post_cancel(
    state: State<AppState>,
    principal: Principal,
    id: LeaseId,
) -> Result<Json<LeaseBody>, ApiError> {
    post_release(state, principal, id).await
}

/// A lease's state (admin, or its account's token).
#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, body = LeaseBody),
        (status = 404, description = "unknown_lease", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get_lease(
    State(state): State<AppState>,
    principal: Principal,
    LeaseId(id): LeaseId,
) -> Result<Json<LeaseBody>, ApiError> {
    let caller = caller_of(&principal);
    let info = state
        .engine
        .call(|reply| EngineRequest::LeaseStatus {
            lease: id,
            caller,
            reply,
        })
        .await??;
    Ok(lease_body(&state, info))
}

/// An account's leases, running, queued and ended, by lease id, paged (admin, or its own
/// token).
#[utoipa::path(get, path = "/v1/accounts/{id}/leases", tag = "leases",
    params(("id" = String, Path, description = "account id"), LeasesQuery),
    responses(
        (status = 200, body = LeasesBody),
        (status = 400, description = "invalid_request (after, limit)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get_account_leases(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Params(query): Params<LeasesQuery>,
) -> Result<Json<LeasesBody>, ApiError> {
    principal.require_reader(&id)?;
    let limit = query.limit.unwrap_or(DEFAULT_LEASES_PAGE);
    if limit == 0 || limit > MAX_LEASES_PAGE {
        return Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_LEASES_PAGE}"),
        ));
    }
    let page = state.engine.leases(&id, query.after.as_deref(), limit)?;
    let catalog = state.engine.catalog();
    Ok(Json(LeasesBody {
        account: id,
        leases: page
            .leases
            .into_iter()
            .map(|info| LeaseBody::of(info, catalog))
            .collect(),
        next_after: page.next_after,
    }))
}

/// The GPU pool: capacity, use and queue length per model, and every node (admin).
#[utoipa::path(get, path = "/v1/pool", tag = "leases",
    responses((status = 200, body = PoolBody)),
    security(("bearer" = [])))]
pub async fn get_pool(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<PoolBody>, ApiError> {
    principal.require_admin()?;
    let view = state
        .engine
        .call(|reply| EngineRequest::Pool { reply })
        .await?
        .ok_or_else(|| ApiError::internal("the server runs without a pool"))?;
    Ok(Json(view.into()))
}

/// The catalog in force (any token).
#[utoipa::path(get, path = "/v1/catalog", tag = "catalog",
    responses((status = 200, description = "the catalog (SPEC §2)", body = Object)),
    security(("bearer" = [])))]
pub async fn get_catalog(
    State(state): State<AppState>,
    _principal: Principal,
) -> Json<serde_json::Value> {
    Json(state.catalog.as_ref().clone())
}

/// Liveness (no token).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
    })
}

/// Prometheus text: request counts by method, route and status; events appended.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Anything else: 404 as a problem.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /openapi.json",
    )
}

/// A known path with another method: 405 as a problem.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take this method; see /openapi.json",
    )
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "dcu-ledger", description = "The billing core of a GPU cloud for students. See docs/api.md."),
    paths(open_account, get_account, post_order, get_balance, get_quota, get_events, post_usage,
        post_login, post_storage, post_ban, post_token, post_lease, post_heartbeat, post_release,
        post_cancel, get_lease, get_account_leases, get_pool, get_catalog, healthz, metrics,
        openapi, super::audit_routes::get_statement, super::audit_routes::get_reconciliation,
        super::audit_routes::post_invoice),
    components(schemas(Problem)),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;
