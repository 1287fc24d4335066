use actix_web::{web, HttpRequest, HttpResponse};
use actors::ask::{AskError, Bounded};
use actors::metrics::{Mailbox, WebhookOutcome};
use actors::model::unix_now;
use actors::org::Outcome;
use actors::store::StoreErrorKind;
use actors::stripe::{HandleEvent, StripeActor};
use actors::{signature, stripe_event};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::Instrument;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::startup::AppState;

/// The webhook's answer once the event is taken care of.
#[derive(Serialize, ToSchema)]
pub struct Received {
    #[schema(example = true)]
    received: bool,
}

/// Stripe's webhook: verify, parse, hand to the StripeActor, and answer 200
/// only once the effect is durable (or the event is a duplicate or not ours).
///
/// The raw body is checked against `Stripe-Signature`: HMAC-SHA256 of
/// `"{t}.{body}"` with any configured webhook secret, `t` within
/// `stripe.tolerance_secs` of now. Acts on `payment_intent.succeeded`,
/// `payment_intent.payment_failed`, `charge.refunded` (fully refunded) and
/// `charge.dispute.created`; each event has one effect however often it comes.
#[utoipa::path(
    post,
    path = "/webhooks/stripe",
    tag = "webhooks",
    params(
        ("Stripe-Signature" = String, Header,
            description = "`t=<unix>,v1=<hex>[,v1=<hex>...]`: `t` the time of signing (within \
                `stripe.tolerance_secs` of now), each `v1` the hex HMAC-SHA256 of `\"{t}.{raw body}\"` \
                with a webhook secret. No example is given: a fixed one would be outside the \
                tolerance, and only the secret's holder can make a valid one."),
    ),
    request_body(content = crate::openapi::StripeEvent, content_type = "application/json",
        description = "A Stripe event, signed as sent by Stripe (at most `server.max_body_bytes`)."),
    responses(
        (status = 200, description = "The event's effect is durably recorded, or it is a duplicate, or a type the service does not act on.",
            body = Received),
        (status = 400, description = "`invalid_signature`: no `v1` matches a configured secret, or `t` is outside the tolerance; `invalid_payload`: the body is not a Stripe event.",
            body = ErrorBody,
            example = json!({"error": {"code": "invalid_signature", "message": "no signature matches"}})),
        (status = 408, description = "`request_timeout`: the body was not fully received within `server.body_timeout_secs`; the connection is closed.",
            body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is larger than `server.max_body_bytes`.",
            body = ErrorBody),
        (status = 503, description = "`persistence_unavailable`: the effect could not be recorded; `overloaded`: the org's mailbox is full. Stripe retries; nothing is half-applied.",
            body = ErrorBody),
    ),
)]
pub async fn stripe_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    stripe: web::Data<Bounded<StripeActor>>,
) -> Result<HttpResponse, ApiError> {
    let result = handle(&req, payload, &state, &stripe).await;
    state.metrics.webhook(match &result {
        Ok(Outcome::Recorded) => WebhookOutcome::Recorded,
        Ok(Outcome::Duplicate) => WebhookOutcome::Duplicate,
        Ok(Outcome::Ignored) => WebhookOutcome::Ignored,
        Err(ApiError::InvalidSignature(_)) => WebhookOutcome::InvalidSignature,
        Err(ApiError::PayloadTooLarge(_)) => WebhookOutcome::TooLarge,
        Err(ApiError::RequestTimeout(_)) => WebhookOutcome::RequestTimeout,
        Err(ApiError::Overloaded) => WebhookOutcome::Overloaded,
        Err(ApiError::PersistenceUnavailable(_) | ApiError::StoreUnavailable(_)) => {
            WebhookOutcome::Unavailable
        }
        Err(ApiError::NotRecorded(e) | ApiError::ReadFailed(e)) => match e.kind() {
            StoreErrorKind::Unavailable => WebhookOutcome::Unavailable,
            StoreErrorKind::Conflict => WebhookOutcome::Conflict,
            StoreErrorKind::Corrupt => WebhookOutcome::Corrupt,
        },
        Err(ApiError::Stripe(_)) => WebhookOutcome::StripeError,
        Err(ApiError::InvalidPayload(_)) => WebhookOutcome::InvalidPayload,
        // Answers no webhook gets; every variant is named so that a new one
        // is counted on purpose, not as whatever a catch-all says.
        Err(
            ApiError::Unauthorized(_)
            | ApiError::InvalidRequest(_)
            | ApiError::UnknownSku(_)
            | ApiError::AlreadyEntitled(_)
            | ApiError::NotFound
            | ApiError::MethodNotAllowed { .. },
        ) => WebhookOutcome::InvalidPayload,
    });
    result?;
    Ok(HttpResponse::Ok().json(Received { received: true }))
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    stripe_actor: &Bounded<StripeActor>,
) -> Result<Outcome, ApiError> {
    let server = &state.settings.server;
    let mut read = std::pin::pin!(read_limited(payload, server.max_body_bytes));
    // A webhook's body has nearly always arrived with its headers: read it
    // at once, and arm the body timeout (a timer per request) only for one
    // still on its way.
    let body = match futures_util::poll!(read.as_mut()) {
        std::task::Poll::Ready(body) => body?,
        std::task::Poll::Pending => tokio::time::timeout(
            std::time::Duration::from_secs(server.body_timeout_secs),
            read,
        )
        .await
        .map_err(|_| ApiError::RequestTimeout(server.body_timeout_secs))??,
    };
    let header = req
        .headers()
        .get("Stripe-Signature")
        .and_then(|h| h.to_str().ok());
    let stripe = &state.settings.stripe;
    signature::verify(
        header,
        &body,
        &stripe.webhook_secrets,
        stripe.tolerance_secs,
        unix_now() as i64,
    )
    .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
    let event = stripe_event::parse(&body).map_err(|e| ApiError::InvalidPayload(e.to_string()))?;

    // One span for the event's whole path: the StripeActor records its
    // `org_id` once known, and the org actor and its write run inside it.
    let span = tracing::info_span!(
        "webhook",
        event_id = %event.id,
        event_type = %event.event_type,
        org_id = tracing::field::Empty,
    );
    async move {
        let outcome = match stripe_actor.ask(HandleEvent(event)).await {
            Ok(answer) => answer?,
            Err(AskError::Full(_)) => {
                state.metrics.mailbox_full(Mailbox::Stripe);
                return Err(ApiError::Overloaded);
            }
            Err(AskError::Stopped(_) | AskError::Dropped) => {
                return Err(ApiError::PersistenceUnavailable(
                    "the service is stopping".into(),
                ))
            }
        };
        match outcome {
            Outcome::Recorded => tracing::debug!("webhook applied"),
            Outcome::Duplicate => tracing::info!("duplicate webhook acknowledged"),
            Outcome::Ignored => tracing::debug!("webhook not acted on"),
        }
        Ok(outcome)
    }
    .instrument(span)
    .await
}

/// The raw body, refused with 413 as soon as it grows past `limit`.
async fn read_limited(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidPayload(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
