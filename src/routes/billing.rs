use actix_web::{web, HttpResponse};
use actors::org::{GetSnapshot, OpenPaymentIntent, SimulatePayment};
use actors::org_event::Entitlements;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::configuration::Environment;
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::startup::AppState;

/// A configured product and whether the caller's org owns it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProductView<'a> {
    #[schema(example = "compliance-pack")]
    sku: &'a str,
    #[schema(example = "Compliance Pack")]
    name: &'a str,
    /// In minor units (cents).
    #[schema(example = 99900)]
    amount: i64,
    #[schema(example = "usd")]
    currency: &'a str,
    entitled: bool,
}

/// Every configured product.
#[derive(Serialize, ToSchema)]
struct Products<'a> {
    products: Vec<ProductView<'a>>,
}

/// The products on sale, each with whether the caller's org owns it.
#[utoipa::path(
    get,
    path = "/v1/billing/products",
    tag = "billing",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Every configured product.", body = Products),
        (status = 401, description = "`unauthorized`: the access token is missing, malformed, badly signed or expired.",
            body = ErrorBody),
        (status = 503, description = "`overloaded` (the org's mailbox is full) or `persistence_unavailable` (the org could not be loaded).",
            body = ErrorBody),
    ),
)]
pub async fn products(
    caller: Caller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let snapshot = state.directory.ask(&caller.org_id, GetSnapshot).await?;
    let products: Vec<ProductView> = state
        .products
        .iter()
        .map(|p| ProductView {
            sku: &p.sku,
            name: &p.name,
            amount: p.amount,
            currency: &p.currency,
            entitled: snapshot.entitlements.get(&p.sku).copied().unwrap_or(false),
        })
        .collect();
    Ok(HttpResponse::Ok().json(Products { products }))
}

/// The product to buy.
#[derive(Deserialize, ToSchema)]
pub struct SkuBody {
    #[schema(example = "compliance-pack")]
    sku: String,
}

/// A PaymentIntent for the browser to confirm with Stripe.js.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct PaymentIntentView {
    #[schema(example = "pi_3MtwBwLkdIwHu7ix28a3tqPa")]
    payment_intent_id: String,
    client_secret: String,
    #[schema(example = "pk_test_...")]
    publishable_key: String,
    /// In minor units (cents).
    #[schema(example = 99900)]
    amount: i64,
    #[schema(example = "usd")]
    currency: String,
}

/// Opens (or returns the open) PaymentIntent for a product.
///
/// The PaymentIntent carries `metadata.org_id` and `metadata.sku`. While one is
/// open for the org and SKU, the same one comes back.
#[utoipa::path(
    post,
    path = "/v1/billing/payment-intents",
    tag = "billing",
    security(("bearerAuth" = [])),
    request_body = SkuBody,
    responses(
        (status = 200, description = "The org's open PaymentIntent for the SKU.", body = PaymentIntentView),
        (status = 400, description = "`unknown_sku`: no such product; `invalid_request`: the body is not `{\"sku\"}`.",
            body = ErrorBody,
            example = json!({"error": {"code": "unknown_sku", "message": "unknown sku `nope`"}})),
        (status = 401, description = "`unauthorized`: the access token is missing, malformed, badly signed or expired.",
            body = ErrorBody),
        (status = 409, description = "`already_entitled`: the org already owns the SKU.",
            body = ErrorBody,
            example = json!({"error": {"code": "already_entitled", "message": "the org already owns `compliance-pack`"}})),
        (status = 502, description = "`stripe_error`: Stripe's API failed or could not be reached.",
            body = ErrorBody),
        (status = 503, description = "`overloaded` (the org's mailbox is full) or `persistence_unavailable`.",
            body = ErrorBody),
    ),
)]
pub async fn payment_intent(
    caller: Caller,
    body: web::Json<SkuBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sku = body.into_inner().sku;
    let intent = state
        .directory
        .ask(&caller.org_id, OpenPaymentIntent { sku })
        .await?;
    Ok(HttpResponse::Ok().json(PaymentIntentView {
        payment_intent_id: intent.payment_intent_id,
        client_secret: intent.client_secret,
        publishable_key: state.settings.stripe.publishable_key.clone(),
        amount: intent.amount,
        currency: intent.currency,
    }))
}

/// The org's entitlements after a simulated payment.
#[derive(Serialize, ToSchema)]
struct SimulatedPayment {
    #[schema(value_type = crate::openapi::Entitlements)]
    entitlements: Entitlements,
}

/// Development only: the effect of a successful payment without Stripe.
///
/// Same effects as a real payment; the action is marked `simulated`. An owned
/// SKU is not bought twice. Answers 404 in production.
#[utoipa::path(
    post,
    path = "/v1/billing/simulate-success",
    tag = "billing",
    security(("bearerAuth" = [])),
    request_body = SkuBody,
    responses(
        (status = 200, description = "The org's entitlements afterwards.", body = SimulatedPayment),
        (status = 400, description = "`unknown_sku`: no such product; `invalid_request`: the body is not `{\"sku\"}`.",
            body = ErrorBody),
        (status = 401, description = "`unauthorized`: the access token is missing, malformed, badly signed or expired.",
            body = ErrorBody),
        (status = 404, description = "`not_found`: the service runs in production.", body = ErrorBody),
        (status = 503, description = "`overloaded` or `persistence_unavailable`: the action could not be recorded.",
            body = ErrorBody),
    ),
)]
pub async fn simulate_success(
    caller: Caller,
    body: web::Json<SkuBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.settings.server.environment == Environment::Production {
        return Err(ApiError::NotFound);
    }
    let sku = body.into_inner().sku;
    let entitlements = state
        .directory
        .ask(&caller.org_id, SimulatePayment { sku })
        .await?;
    Ok(HttpResponse::Ok().json(SimulatedPayment { entitlements }))
}
