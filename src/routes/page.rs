use actix_web::{web, HttpResponse};

use crate::auth::issue_token;
use crate::configuration::Environment;
use crate::startup::AppState;

const PAGE: &str = include_str!("../page.html");
/// The org the development page acts as.
const DEMO_ORG: &str = "demo";
const DEMO_TOKEN_TTL_SECS: u64 = 3600;

/// The demo purchase page.
///
/// In development it carries a token for the demo org; in production the
/// embedding app hands it one (`#token=`).
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    responses(
        (status = 200, description = "The demo purchase page.", body = String,
            content_type = "text/html"),
    ),
)]
pub async fn page(state: web::Data<AppState>) -> HttpResponse {
    let (token, environment) = match state.settings.server.environment {
        Environment::Development => (
            issue_token(
                state.settings.auth.jwt_secret.expose(),
                DEMO_ORG,
                DEMO_TOKEN_TTL_SECS,
            ),
            "development",
        ),
        Environment::Production => (String::new(), "production"),
    };
    let html = PAGE
        .replace("{{TOKEN}}", &token)
        .replace("{{ENVIRONMENT}}", environment);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(html)
}
