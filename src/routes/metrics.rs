use std::fmt::Write;

use actix_web::{web, HttpResponse};
use actors::persistence::GetStats;
use actors::sse_hub::GetHubStats;

use crate::startup::AppState;

/// Prometheus text exposition of what the actors report.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let persistence = state.persistence.send(GetStats).await.unwrap_or_default();
    let hub = state.hub.send(GetHubStats).await.unwrap_or_default();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "entitlements_live_org_actors",
        "gauge",
        "Org actors alive now.",
        state.directory.live() as u64,
    );
    metric(
        "entitlements_stream_connections",
        "gauge",
        "Open stream connections.",
        hub.connections as u64,
    );
    metric(
        "entitlements_stream_dropped_slow_total",
        "counter",
        "Stream connections dropped for a full queue.",
        hub.dropped_slow,
    );
    metric(
        "entitlements_persist_batches_total",
        "counter",
        "Action batches written.",
        persistence.batches,
    );
    metric(
        "entitlements_persist_rows_total",
        "counter",
        "Action rows written.",
        persistence.rows,
    );
    metric(
        "entitlements_persist_failed_batches_total",
        "counter",
        "Action batches the store refused.",
        persistence.failed_batches,
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}
