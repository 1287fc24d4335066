use actix_web::{web, HttpResponse};
use actors::persistence::CheckReady;
use serde_json::json;

use crate::error::ApiError;
use crate::startup::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when the action store answers.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.persistence.send(CheckReady).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(json!({ "status": "ready" }))),
        Ok(Err(e)) => Err(ApiError::StoreUnavailable(e.to_string())),
        Err(e) => Err(ApiError::StoreUnavailable(format!(
            "persistence is not running: {e}"
        ))),
    }
}
