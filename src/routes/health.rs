use actix_web::{web, HttpResponse};
use actors::persistence::CheckReady;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::startup::AppState;

/// The answer of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `ok` from `/healthz`, `ready` from `/readyz`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up.", body = Status,
            example = json!({"status": "ok"})),
    ),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Status { status: "ok" })
}

/// Readiness: ready when the action store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The action store answers.", body = Status,
            example = json!({"status": "ready"})),
        (status = 503, description = "`store_unavailable`: the action store does not answer.",
            body = ErrorBody,
            example = json!({"error": {"code": "store_unavailable", "message": "connection refused"}})),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.persistence.send(CheckReady).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(Status { status: "ready" })),
        Ok(Err(e)) => Err(ApiError::StoreUnavailable(e.to_string())),
        Err(e) => Err(ApiError::StoreUnavailable(format!(
            "persistence is not running: {e}"
        ))),
    }
}
