use actix_web::{web, HttpRequest, HttpResponse};
use actors::ask::{ask, AskError};
use actors::metrics::{Mailbox, WebhookOutcome};
use actors::org::Outcome;
use actors::stripe::HandleEvent;
use actors::{signature, stripe_event};
use futures_util::StreamExt;
use serde_json::json;
use tracing::Instrument;

use crate::auth::unix_now;
use crate::error::ApiError;
use crate::startup::AppState;

/// Stripe's webhook: verify, parse, hand to the StripeActor, and answer 200
/// only once the effect is durable (or the event is a duplicate or not ours).
pub async fn stripe_webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = handle(&req, payload, &state).await;
    state.metrics.webhook(match &result {
        Ok(Outcome::Recorded) => WebhookOutcome::Recorded,
        Ok(Outcome::Duplicate) => WebhookOutcome::Duplicate,
        Ok(Outcome::Ignored) => WebhookOutcome::Ignored,
        Err(ApiError::InvalidSignature(_)) => WebhookOutcome::InvalidSignature,
        Err(ApiError::PayloadTooLarge(_)) => WebhookOutcome::TooLarge,
        Err(ApiError::Overloaded) => WebhookOutcome::Overloaded,
        Err(ApiError::PersistenceUnavailable(_)) => WebhookOutcome::Unavailable,
        Err(_) => WebhookOutcome::InvalidPayload,
    });
    result?;
    Ok(HttpResponse::Ok().json(json!({ "received": true })))
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Outcome, ApiError> {
    let body = read_limited(payload, state.settings.server.max_body_bytes).await?;
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

    let span = tracing::info_span!("webhook", event_id = %event.id, event_type = %event.event_type);
    async move {
        let outcome = match ask(&state.stripe, HandleEvent(event)).await {
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
