//! HTTP routes: each translates a request into a message and the answer
//! back into JSON. No business logic lives here.

pub(crate) mod billing;
pub(crate) mod entitlements;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod page;
pub(crate) mod stream;
pub(crate) mod webhook;

use actix_web::{web, HttpResponse};

use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(16 * 1024)
            .error_handler(|err, _| {
                ApiError::InvalidRequest(format!("invalid JSON body: {err}")).into()
            }),
    )
    .app_data(
        web::QueryConfig::default().error_handler(|err, _| {
            ApiError::InvalidRequest(format!("invalid query: {err}")).into()
        }),
    )
    .service(get("/", page::page))
    .service(get("/healthz", health::healthz))
    .service(get("/readyz", health::readyz))
    .service(get("/metrics", metrics::metrics))
    .service(get("/openapi.json", crate::openapi::openapi_json))
    .service(get("/v1/billing/products", billing::products))
    .service(post("/v1/billing/payment-intents", billing::payment_intent))
    .service(post(
        "/v1/billing/simulate-success",
        billing::simulate_success,
    ))
    .service(get("/v1/entitlements", entitlements::entitlements))
    .service(get("/v1/actions", entitlements::actions))
    .service(get("/v1/stream", stream::stream))
    .service(post("/webhooks/stripe", webhook::stripe_webhook))
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::NotFound)
    }));
}

fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| method_not_allowed("GET")))
}

fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|| method_not_allowed("POST")))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}
