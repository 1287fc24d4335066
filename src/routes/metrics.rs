use actix_web::{web, HttpResponse};

use crate::startup::AppState;

/// The OpenMetrics text exposition, which Prometheus scrapes.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}
