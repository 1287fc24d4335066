use actix_web::{web, HttpResponse};
use actors::model::Action;
use actors::org::{GetSnapshot, ListActions};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{self, ErrorBody};
use crate::startup::AppState;

/// The org's entitlements and action counter.
#[utoipa::path(
    get,
    path = "/v1/entitlements",
    tag = "entitlements",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Every configured SKU with whether the org owns it, and the org's `seq`.",
            body = openapi::Snapshot),
        (status = 401, description = "`unauthorized`: the access token is missing, malformed, badly signed or expired.",
            body = ErrorBody),
        (status = 503, description = "`overloaded` (the org's mailbox is full) or `persistence_unavailable` (the org could not be loaded).",
            body = ErrorBody),
    ),
)]
pub async fn entitlements(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = state.directory.ask(&caller.org_id, GetSnapshot).await?;
    Ok(HttpResponse::Ok().json(snapshot))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActionsQuery {
    /// How many actions, newest first.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<u32>,
}

/// The org's actions, newest first.
#[derive(Serialize, ToSchema)]
struct Actions {
    #[schema(value_type = Vec<openapi::Action>)]
    actions: Vec<Action>,
}

/// The org's action log, newest first.
#[utoipa::path(
    get,
    path = "/v1/actions",
    tag = "entitlements",
    security(("bearerAuth" = [])),
    params(ActionsQuery),
    responses(
        (status = 200, description = "The newest `limit` actions, newest first.", body = Actions),
        (status = 400, description = "`invalid_request`: `limit` is not between 1 and 500.",
            body = ErrorBody,
            example = json!({"error": {"code": "invalid_request", "message": "limit must be between 1 and 500"}})),
        (status = 401, description = "`unauthorized`: the access token is missing, malformed, badly signed or expired.",
            body = ErrorBody),
        (status = 503, description = "`overloaded` (the org's mailbox is full) or `persistence_unavailable` (the org could not be loaded).",
            body = ErrorBody),
    ),
)]
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
    Ok(HttpResponse::Ok().json(Actions { actions }))
}
