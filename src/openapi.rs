//! The contract as an OpenAPI 3.1 document, generated from the route
//! annotations in `routes/` and served at `GET /openapi.json`.
//!
//! Types of the `actors` crate, which knows nothing of HTTP, are described here
//! by schema-only mirrors (`Snapshot`, `Action`, the stream's events); the
//! black-box test `tests/openapi.rs` checks real answers against them.

#![allow(dead_code)] // schema-only types: described, never built

use actix_web::{web, HttpResponse};
use std::collections::BTreeMap;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::routes;
use crate::startup::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "entitlements",
        description = "Stripe payments turned into an org's entitlements: buy a product, \
            receive Stripe's webhooks, and follow the org's entitlements live.\n\n\
            Every non-2xx JSON answer is `{\"error\":{\"code\",\"message\"}}` (`ErrorBody`); \
            a known path asked with another method answers 405 `method_not_allowed`, \
            an unknown path 404 `not_found`. JSON keys are camelCase.",
    ),
    paths(
        routes::page::page,
        routes::health::healthz,
        routes::health::readyz,
        routes::metrics::metrics,
        openapi_json,
        routes::billing::products,
        routes::billing::payment_intent,
        routes::billing::simulate_success,
        routes::entitlements::entitlements,
        routes::entitlements::actions,
        routes::stream::stream,
        routes::webhook::stripe_webhook,
    ),
    components(schemas(ErrorBody, Snapshot, EntitlementsChanged, PaymentFailed, StreamEvent)),
    modifiers(&Security),
    tags(
        (name = "billing", description = "Products and payments."),
        (name = "entitlements", description = "What an org owns, its action log and its live stream."),
        (name = "webhooks", description = "Called by Stripe."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
        (name = "page", description = "The demo purchase page."),
    ),
)]
pub struct ApiDoc;

/// Adds the two ways of presenting an access token.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <jwt>`: HS256 with `auth.jwt_secret`, claims `org` \
                         (1 to 64 characters of `A-Za-z0-9_-`) and `exp` (Unix seconds). A token \
                         sees its own org only.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "accessToken",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The same JWT as `?access_token=<jwt>`, for `GET /v1/stream` only, since \
                 EventSource cannot set headers.",
            ))),
        );
    }
}

/// The document for this service, with its configured SKUs as the enum of
/// every request's `sku` (rendered once, at start).
pub fn document(skus: &[String]) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    doc["components"]["schemas"]["SkuBody"]["properties"]["sku"]["enum"] = serde_json::json!(skus);
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises")
}

/// This document: the service's contract in OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object,
            content_type = "application/json"),
    ),
)]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// Every non-2xx JSON answer.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "unauthorized", "message": "missing access token"}}))]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// snake_case, one of `unauthorized`, `invalid_request`, `unknown_sku`,
    /// `already_entitled`, `not_found`, `method_not_allowed`,
    /// `invalid_signature`, `invalid_payload`, `payload_too_large`,
    /// `stripe_error`, `persistence_unavailable`, `overloaded`,
    /// `store_unavailable`.
    #[schema(example = "unknown_sku")]
    code: String,
    /// For people; not to be parsed.
    message: String,
}

/// An org's entitlements: `GET /v1/entitlements`, and the stream's
/// `org.entitlements.snapshot` event.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    #[schema(example = "acme")]
    org_id: String,
    entitlements: Entitlements,
    /// The org's action counter: every recorded action takes the next number.
    #[schema(example = 3)]
    seq: u64,
}

/// SKU → entitled, listing every configured SKU.
#[derive(ToSchema)]
#[schema(example = json!({"compliance-pack": true, "audit-pack": false}))]
pub struct Entitlements(BTreeMap<String, bool>);

/// The stream's resumption header.
#[derive(IntoParams)]
#[into_params(parameter_in = Header, names("Last-Event-ID"))]
pub struct LastEventId(
    /// The `id` (`seq`) of the last event received: the stream resumes after
    /// it when the missed events are still known, else starts from a
    /// snapshot; an id the service never issued also starts from a snapshot,
    /// so any value is accepted.
    #[param(nullable = false)]
    Option<String>,
);

/// One event of `GET /v1/stream`, as a client parses it.
#[derive(ToSchema)]
pub struct StreamEvent {
    event: StreamEventName,
    /// The org's `seq` after the event, as a decimal string.
    #[schema(example = "3")]
    id: String,
    /// JSON: `Snapshot`, `EntitlementsChanged` or `PaymentFailed`, by `event`.
    #[schema(
        content_media_type = "application/json",
        example = "{\"orgId\":\"acme\",\"entitlements\":{\"compliance-pack\":true},\"seq\":3}"
    )]
    data: String,
}

#[derive(ToSchema)]
pub enum StreamEventName {
    #[schema(rename = "org.entitlements.snapshot")]
    Snapshot,
    #[schema(rename = "org.entitlements.changed")]
    Changed,
    #[schema(rename = "org.payment.failed")]
    PaymentFailed,
}

/// One recorded action of an org.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Deterministic: derived from the Stripe event or the PaymentIntent.
    id: String,
    seq: u64,
    kind: ActionKind,
    status: ActionStatus,
    #[schema(example = "compliance-pack")]
    sku: String,
    /// The PaymentIntent the action is about.
    #[schema(example = "pi_3MtwBwLkdIwHu7ix28a3tqPa")]
    external_id: String,
    /// The Stripe event that caused it; null for simulated payments.
    #[schema(example = "evt_1NG8Du2eZvKYlo2CUI79vXWy")]
    event_id: Option<String>,
    /// In minor units (cents).
    #[schema(example = 99900)]
    amount: i64,
    #[schema(example = "usd")]
    currency: String,
    /// RFC 3339, UTC.
    #[schema(format = DateTime, example = "2024-05-01T12:00:00.000Z")]
    created_at: String,
    simulated: bool,
}

#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Payment,
    Refund,
    Dispute,
}

#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Delivered,
    Failed,
}

/// The stream's `org.entitlements.changed` event.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementsChanged {
    org_id: String,
    entitlements: Entitlements,
    seq: u64,
    sku: String,
    cause: ChangeCause,
    action_id: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeCause {
    Payment,
    Refund,
    Dispute,
    Simulated,
}

/// The stream's `org.payment.failed` event.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailed {
    org_id: String,
    seq: u64,
    sku: String,
    payment_intent_id: String,
    action_id: String,
}

/// A Stripe event, of which the service reads `id`, `type` and `data.object`.
#[derive(ToSchema)]
pub struct StripeEvent {
    #[schema(example = "evt_1NG8Du2eZvKYlo2CUI79vXWy", min_length = 1)]
    id: String,
    /// e.g. `payment_intent.succeeded`; types not acted on are acknowledged.
    #[schema(rename = "type", example = "payment_intent.succeeded", min_length = 1)]
    event_type: String,
    data: StripeEventData,
}

#[derive(ToSchema)]
pub struct StripeEventData {
    /// The PaymentIntent, charge or dispute; a PaymentIntent carries
    /// `metadata.org_id` and `metadata.sku`.
    #[schema(value_type = Object)]
    object: (),
}
