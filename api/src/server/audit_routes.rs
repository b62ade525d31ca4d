//! Issue 6 over HTTP: an account's statement, the reconciliation report, invoices.
//!
//! Statements and the report are folds of the log (`projections::statement`,
//! `projections::reconcile`), not of the snapshot: they need every event with its revision.
//! The handler reads the log page by page through the engine task ([`AUDIT_PAGE`] events a
//! request: the account's stream with `Request::Events`, the whole log with
//! `Request::ReadAll`), so commands queue behind one page read at a time, never behind the
//! whole read; the fold itself runs on a blocking thread. Reports hold the whole log in
//! memory while they run, so at most one runs at a time (others wait their turn).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{extract::State, Json};
use ledger::account::AccountState;
use ledger::clock::Timestamp;
use ledger::decide::Command;
use projections::reconcile::{self, Report, ReportError};
use projections::statement::{self, LoggedEvent, Statement};
use scheduler::{EngineError, Outcome};
use tokio::sync::Semaphore;

use super::auth::Principal;
use super::engine_task::Request as EngineRequest;
use super::problem::{ApiError, Problem};
use super::routes::{AccountId, Body, Params};
use super::wire::{InvoiceBody, InvoiceRequest, ReconciliationQuery, ReportFormat, StatementQuery};
use super::AppState;
use crate::audit::LoadedLog;

/// Events read from the log per request to the engine task.
pub const AUDIT_PAGE: usize = 1_000;

/// Reports running at once (each holds the whole log in memory).
const REPORTS_AT_ONCE: usize = 1;

fn reports() -> &'static Semaphore {
    static REPORTS: OnceLock<Semaphore> = OnceLock::new();
    REPORTS.get_or_init(|| Semaphore::new(REPORTS_AT_ONCE))
}

fn instant(name: &str, text: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse(text).map_err(|error| {
        ApiError::invalid(
            StatusCode::BAD_REQUEST,
            format!("{name}: {error}; give an RFC 3339 instant such as 2025-04-01T00:00:00+08:00"),
        )
    })
}

fn failed(what: &str, error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "{what} failed");
    ApiError::internal(format!("{what} failed"))
}

/// The account's stream, decoded; `None` when the account is not open.
async fn account_events(
    state: &AppState,
    account: &str,
) -> Result<Option<Vec<LoggedEvent>>, ApiError> {
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .engine
            .call(|reply| EngineRequest::Events {
                account: account.to_string(),
                after,
                limit: AUDIT_PAGE,
                reply,
            })
            .await??;
        let Some(page) = page else {
            return Ok(None);
        };
        let full = page.events.len() == AUDIT_PAGE;
        for (record, event) in page.events {
            after = Some(record.revision);
            events.push(LoggedEvent {
                revision: Some(record.revision),
                event,
            });
        }
        if !full {
            return Ok(Some(events));
        }
    }
}

/// As-of: the account's state at `as_of` as a replay of its stream up to that instant gives
/// it, with that instant, when `as_of` is before the account's last event (the snapshot only
/// knows the state after it); `None` when the snapshot answers (`as_of` absent, or at or after
/// that event).
pub(super) async fn state_before_last_event(
    state: &AppState,
    account: &str,
    as_of: Option<Timestamp>,
) -> Result<Option<(AccountState, Timestamp)>, ApiError> {
    let Some(as_of) = as_of else {
        return Ok(None);
    };
    if as_of >= state.engine.last_event_at(account)? {
        return Ok(None);
    }
    let events = account_events(state, account)
        .await?
        .ok_or_else(|| ApiError::unknown_account(account))?;
    let id = account.to_string();
    let past = tokio::task::spawn_blocking(move || statement::state_as_of(&id, &events, as_of))
        .await
        .map_err(|error| failed("replaying the account", error))?;
    Ok(Some((past, as_of)))
}

/// The whole log, grouped by account, read page by page until an empty page.
async fn whole_log(state: &AppState) -> Result<LoadedLog, ApiError> {
    let mut loaded = LoadedLog::default();
    let mut after = 0;
    loop {
        let page = state
            .engine
            .call(|reply| EngineRequest::ReadAll {
                after,
                limit: AUDIT_PAGE,
                reply,
            })
            .await?
            .map_err(EngineError::from)?;
        let Some(last) = page.last() else {
            return Ok(loaded);
        };
        after = last.position;
        loaded
            .add_page(page)
            .map_err(|error| failed("decoding the log", error))?;
    }
}

/// An account's statement of `[from, to)` (admin, or its own token): every change of its
/// balance with the event that caused it, its orders and invoices (docs/reconciliation.md).
#[utoipa::path(get, path = "/v1/accounts/{id}/statement", tag = "audit",
    params(("id" = String, Path, description = "account id"), StatementQuery),
    responses(
        (status = 200, description = "the statement, as `dcu statement --format json` prints it: `account, from, to, opening, closing, lines, orders, invoices, consistent`", body = Object),
        (status = 400, description = "invalid_request (from, to, from not before to)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_statement(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Params(query): Params<StatementQuery>,
) -> Result<Json<Statement>, ApiError> {
    principal.require_reader(&id)?;
    let from = query
        .from
        .as_deref()
        .map(|text| instant("from", text))
        .transpose()?;
    let to = match query.to.as_deref() {
        Some(text) => instant("to", text)?,
        None => state.engine.now().plus_seconds(1),
    };
    if from.is_some_and(|from| from >= to) {
        return Err(ApiError::invalid(
            StatusCode::BAD_REQUEST,
            "from must be before to",
        ));
    }
    let events = account_events(&state, &id)
        .await?
        .ok_or_else(|| ApiError::unknown_account(&id))?;
    let statement =
        tokio::task::spawn_blocking(move || statement::statement(&id, &events, from, to))
            .await
            .map_err(|error| failed("the statement", error))?;
    Ok(Json(statement))
}

/// The reconciliation report of `[from, to)`, per account, in total and per business day
/// (admin). `format=csv` answers `text/csv`.
#[utoipa::path(get, path = "/v1/reconciliation", tag = "audit",
    params(ReconciliationQuery),
    responses(
        (status = 200, description = "the report, as `dcu reconcile` prints it (`from, to, accounts, total, days, identity_ok`), or its CSV", content(
            (Object = "application/json"),
            (String = "text/csv"))),
        (status = 400, description = "invalid_request (from, to, format, from not before to, more than 3660 business days)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden (an account token)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_reconciliation(
    State(state): State<AppState>,
    principal: Principal,
    Params(query): Params<ReconciliationQuery>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let from = instant("from", &query.from)?;
    let to = instant("to", &query.to)?;
    // The range is checked before the log is read (an empty fold costs only the day rows).
    reconcile::reconcile(&BTreeMap::new(), from, to).map_err(range_error)?;
    let _turn = reports()
        .acquire()
        .await
        .map_err(|error| failed("waiting for the report's turn", error))?;
    let loaded = whole_log(&state).await?;
    let report: Report =
        tokio::task::spawn_blocking(move || reconcile::reconcile(&loaded.accounts, from, to))
            .await
            .map_err(|error| failed("the report", error))?
            .map_err(range_error)?;
    Ok(match query.format.unwrap_or_default() {
        ReportFormat::Json => Json(report).into_response(),
        ReportFormat::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            reconcile::to_csv(&report),
        )
            .into_response(),
    })
}

fn range_error(error: ReportError) -> ApiError {
    ApiError::invalid(StatusCode::BAD_REQUEST, error.to_string())
}

/// Record an invoice for paid orders of the account (admin). Its amount is the sum of the
/// orders' prices paid; the item is 技术服务费. The same invoice id with the same orders
/// again answers the same invoice (201 again) and writes nothing.
#[utoipa::path(post, path = "/v1/accounts/{id}/invoices", tag = "audit",
    params(("id" = String, Path, description = "account id")),
    request_body = InvoiceRequest,
    responses(
        (status = 201, description = "recorded (or recorded before with the same orders)", body = InvoiceBody),
        (status = 403, description = "forbidden (an account token)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request, naming the order: not this account's, already invoiced, listed twice, not paid; no orders or more than 1000; the invoice id used for other orders or by another account", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_invoice(
    State(state): State<AppState>,
    principal: Principal,
    AccountId(id): AccountId,
    Body(request): Body<InvoiceRequest>,
) -> Result<(StatusCode, Json<InvoiceBody>), ApiError> {
    principal.require_admin()?;
    let command = Command::RecordInvoice {
        invoice: request.invoice,
        orders: request.orders,
    };
    let outcome = state
        .engine
        .call(|reply| EngineRequest::Execute {
            target: scheduler::Target::Account(id),
            command,
            reply,
        })
        .await??;
    match outcome {
        Outcome::Invoice(view) => Ok((StatusCode::CREATED, Json(view.into()))),
        other => {
            tracing::error!(?other, "the engine answered with an unexpected outcome");
            Err(ApiError::internal("unexpected answer from the engine"))
        }
    }
}
