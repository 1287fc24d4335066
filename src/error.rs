//! The HTTP boundary's errors, each rendered as the contract's envelope
//! `{"error":{"code","message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::org::OrgError;
use actors::store::StoreError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unknown sku `{0}`")]
    UnknownSku(String),
    #[error("the org already owns `{0}`")]
    AlreadyEntitled(String),
    #[error("not found")]
    NotFound,
    /// The path exists; `allow` is the methods it answers (RFC 9110: a 405
    /// carries them in `Allow`).
    #[error("method not allowed; this path answers {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    InvalidPayload(String),
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the body did not arrive within {0} s")]
    RequestTimeout(u64),
    #[error("Stripe request failed: {0}")]
    Stripe(String),
    #[error("{0}")]
    PersistenceUnavailable(String),
    /// The store did not take the change (any kind: the message names it).
    #[error("the action could not be recorded: {0}")]
    NotRecorded(#[source] StoreError),
    /// A read of the store failed (any kind: the message names it).
    #[error("the action store could not be read: {0}")]
    ReadFailed(#[source] StoreError),
    #[error("the service is overloaded; retry later")]
    Overloaded,
    #[error("{0}")]
    StoreUnavailable(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::UnknownSku(_) => "unknown_sku",
            ApiError::AlreadyEntitled(_) => "already_entitled",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::InvalidSignature(_) => "invalid_signature",
            ApiError::InvalidPayload(_) => "invalid_payload",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Stripe(_) => "stripe_error",
            // The contract has no codes of their own for a failed read, a
            // conflict or a corrupt row: each is the org's change or state
            // that could not be recorded or loaded, which is this code.
            ApiError::PersistenceUnavailable(_)
            | ApiError::NotRecorded(_)
            | ApiError::ReadFailed(_) => "persistence_unavailable",
            ApiError::Overloaded => "overloaded",
            ApiError::StoreUnavailable(_) => "store_unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::InvalidRequest(_)
            | ApiError::UnknownSku(_)
            | ApiError::InvalidSignature(_)
            | ApiError::InvalidPayload(_) => StatusCode::BAD_REQUEST,
            ApiError::AlreadyEntitled(_) => StatusCode::CONFLICT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Stripe(_) => StatusCode::BAD_GATEWAY,
            ApiError::PersistenceUnavailable(_)
            | ApiError::NotRecorded(_)
            | ApiError::ReadFailed(_)
            | ApiError::Overloaded
            | ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        // The rest of a body that never came is not waited for: the
        // connection is closed with the answer.
        match self {
            ApiError::RequestTimeout(_) => {
                response.force_close();
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((actix_web::http::header::ALLOW, *allow));
            }
            _ => {}
        }
        response.json(json!({ "error": { "code": self.code(), "message": self.to_string() } }))
    }
}

impl From<OrgError> for ApiError {
    fn from(e: OrgError) -> Self {
        match e {
            OrgError::UnknownSku(sku) => ApiError::UnknownSku(sku),
            OrgError::AlreadyEntitled(sku) => ApiError::AlreadyEntitled(sku),
            OrgError::Overloaded => ApiError::Overloaded,
            OrgError::PersistenceUnavailable(msg) => {
                ApiError::PersistenceUnavailable(format!("the action could not be recorded: {msg}"))
            }
            OrgError::NotRecorded(e) => ApiError::NotRecorded(e),
            OrgError::ReadFailed(e) => ApiError::ReadFailed(e),
            OrgError::UnreadableEvent(reason) => ApiError::InvalidPayload(reason),
            OrgError::Stale => ApiError::PersistenceUnavailable(
                "other nodes kept writing this org first; try again".into(),
            ),
            OrgError::Stripe(e) => ApiError::Stripe(e.message),
        }
    }
}
