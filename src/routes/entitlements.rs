use actix_web::{web, HttpResponse};
use actors::org::{GetSnapshot, ListActions};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::startup::AppState;

pub async fn entitlements(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = state.directory.ask(&caller.org_id, GetSnapshot).await?;
    Ok(HttpResponse::Ok().json(snapshot))
}

#[derive(Deserialize)]
pub struct ActionsQuery {
    limit: Option<u32>,
}

pub async fn actions(
    caller: Caller,
    query: web::Query<ActionsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let actions = state
        .directory
        .ask(&caller.org_id, ListActions { limit })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "actions": actions })))
}
