use actix_web::{web, HttpResponse};

use crate::startup::AppState;

/// Metrics, in the OpenMetrics text exposition that Prometheus scrapes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenMetrics text exposition (Prometheus text format).",
            body = String, content_type = "application/openmetrics-text; version=1.0.0"),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}
