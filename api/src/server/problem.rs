//! RFC 9457 problem details: every error the server answers, with a SPEC §11 code.
//!
//! Status ↔ code table (also in `docs/api.md`):
//!
//! | code | status |
//! |---|---|
//! | `unknown_account`, `unknown_lease`, `not_found` | 404 |
//! | `method_not_allowed` | 405 |
//! | `account_exists`, `account_banned`, `no_current_period`, `insufficient_credit`, `parallelism_exceeded`, `storage_over_allowance`, `lease_not_active`, `time_went_backwards` | 409 |
//! | `invalid_request` from the domain (unknown plan or model, bad id, out-of-range number) | 422 |
//! | `invalid_request` from the body or query (malformed JSON 400, wrong type or unknown field 422, wrong content type 415, over 64 KiB 413) | 4xx |
//! | `multi_card_not_supported` | 422 |
//! | `request_timeout` (the body did not arrive whole within 10 s) | 408 |
//! | `unauthorized` (no or bad bearer token) | 401 |
//! | `forbidden` (an account token on an admin call) | 403 |
//! | `internal` (the log failed; nothing was acknowledged) | 500 |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger::decide::{ErrorCode, Refusal};
use scheduler::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the `code` says what went wrong.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP reason phrase.
    pub title: String,
    pub status: u16,
    /// What to fix.
    pub detail: String,
    /// A SPEC §11 error code, or `unauthorized`, `forbidden`, `not_found`,
    /// `request_timeout`, `internal`.
    pub code: String,
    /// The same text as `detail`, under the name the scenario files use.
    pub message: String,
    /// `lease_not_active`: the lease, its state (`queued`, `released`, `expired`, `revoked`,
    /// `cancelled`) and its end reason, so the runner learns why it must stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a lease problem adds to the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseProblem {
    pub lease: String,
    pub state: String,
    pub reason: Option<String>,
}

/// An error answer: a status and a problem document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub lease: Option<Box<LeaseProblem>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            lease: None,
        }
    }

    /// The same error, telling the lease's state and end reason.
    pub fn with_lease(mut self, lease: LeaseProblem) -> Self {
        self.lease = Some(Box::new(lease));
        self
    }

    pub fn invalid(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::new(status, ErrorCode::InvalidRequest.as_str(), message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The answer for an account the caller may not see: the same as an unknown one.
    pub fn unknown_account(account: &str) -> Self {
        ApiError::from(Refusal::new(
            ErrorCode::UnknownAccount,
            format!("account {account:?} is not open"),
        ))
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.message.clone(),
            code: self.code.clone(),
            message: self.message.clone(),
            lease: self.lease.as_ref().map(|lease| lease.lease.clone()),
            state: self.lease.as_ref().map(|lease| lease.state.clone()),
            reason: self.lease.as_ref().and_then(|lease| lease.reason.clone()),
        }
    }
}

/// The HTTP status of a SPEC error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::UnknownAccount | ErrorCode::UnknownLease => StatusCode::NOT_FOUND,
        ErrorCode::AccountExists
        | ErrorCode::AccountBanned
        | ErrorCode::NoCurrentPeriod
        | ErrorCode::InsufficientCredit
        | ErrorCode::ParallelismExceeded
        | ErrorCode::StorageOverAllowance
        | ErrorCode::LeaseNotActive
        | ErrorCode::TimeWentBackwards => StatusCode::CONFLICT,
        ErrorCode::InvalidRequest | ErrorCode::MultiCardNotSupported => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::new(
            status_of(refusal.code),
            refusal.code.as_str(),
            refusal.message,
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Refused(refusal) => refusal.into(),
            EngineError::Stopped(reason) => {
                tracing::error!(%reason, "the engine has stopped");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service stopped after a storage failure; it answers again once restarted",
                )
            }
            other => {
                tracing::error!(error = %other, "engine failure");
                ApiError::internal("the event log failed; nothing of this request was stored")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        response
    }
}
