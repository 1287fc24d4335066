use actix_web::{web, HttpResponse};
use actors::org::{GetSnapshot, OpenPaymentIntent, SimulatePayment};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Caller;
use crate::configuration::Environment;
use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProductView<'a> {
    sku: &'a str,
    name: &'a str,
    amount: i64,
    currency: &'a str,
    entitled: bool,
}

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
    Ok(HttpResponse::Ok().json(json!({ "products": products })))
}

#[derive(Deserialize)]
pub struct SkuBody {
    sku: String,
}

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
    Ok(HttpResponse::Ok().json(json!({
        "paymentIntentId": intent.payment_intent_id,
        "clientSecret": intent.client_secret,
        "publishableKey": state.settings.stripe.publishable_key,
        "amount": intent.amount,
        "currency": intent.currency,
    })))
}

/// Development only: the effect of a successful payment without Stripe.
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
    Ok(HttpResponse::Ok().json(json!({ "entitlements": entitlements })))
}
