//! StripeActor: the service's side of Stripe.
//!
//! It creates PaymentIntents through async-stripe (against
//! `stripe.api_base`, so tests can point it at an emulator), and it takes
//! verified webhook events and routes each to the org it is about. Both jobs
//! run as futures beside the actor, so one slow call never holds up another.

use std::collections::HashMap;
use std::time::Duration;

use ::stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeRequest};
use actix::prelude::*;
use stripe_core::payment_intent::{
    CreatePaymentIntent as StripeCreatePaymentIntent, RetrievePaymentIntent,
};

use crate::ask::{Ask, Request};
use crate::directory::OrgDirectory;
use crate::metrics::{EventOutcome, Metrics};
use crate::model::ActionKind;
use crate::org::{ApplyPayment, ApplyRevocation, OrgError, Outcome};
use crate::store::PaymentIntentOwner;
use crate::store_reader::{find_intent_owner, FindIntentOwner};
use crate::stripe_event::{EventEffect, RevocationKind, StripeEvent};

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: String,
    pub api_base: String,
    pub timeout: Duration,
}

/// A failed Stripe call, with any secret removed from the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StripeError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenIntent {
    pub payment_intent_id: String,
    pub client_secret: String,
    pub amount: i64,
    pub currency: String,
}

/// Create a PaymentIntent carrying `metadata.org_id` and `metadata.sku`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<OpenIntent, StripeError>")]
pub struct CreatePaymentIntent {
    pub org_id: String,
    pub sku: String,
    pub amount: i64,
    pub currency: String,
    pub idempotency_key: String,
}

/// A webhook event whose signature was verified.
#[derive(Clone, Debug)]
pub struct HandleEvent(pub StripeEvent);

impl Request for HandleEvent {
    type Answer = Result<Outcome, OrgError>;
}

/// A configured Stripe client; built before the actor so that bad settings
/// stop start-up.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
    secret_key: String,
    timeout: Duration,
}

impl StripeApi {
    pub fn new(settings: &StripeSettings) -> Result<Self, StripeError> {
        let client = ClientBuilder::new(settings.secret_key.clone())
            .url(settings.api_base.clone())
            .timeout(settings.timeout)
            .build()
            .map_err(|e| StripeError(format!("invalid Stripe client settings: {e}")))?;
        Ok(Self {
            client,
            secret_key: settings.secret_key.clone(),
            timeout: settings.timeout,
        })
    }
}

/// One page of `GET /v1/events`, newest first, each event as raw JSON.
pub struct EventPage {
    pub events: Vec<Vec<u8>>,
    /// The id of the last (oldest) event on the page, to page on from.
    pub last_id: Option<String>,
    pub has_more: bool,
}

#[derive(serde::Serialize)]
struct ListEventsQuery<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    created: CreatedRange,
    limit: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_after: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct CreatedRange {
    gte: i64,
}

impl StripeApi {
    /// The org and SKU in a PaymentIntent's metadata; `None` when Stripe
    /// does not know it or it carries none.
    pub async fn payment_intent_owner(
        &self,
        payment_intent_id: &str,
    ) -> Result<Option<PaymentIntentOwner>, StripeError> {
        let request = RetrievePaymentIntent::new(payment_intent_id);
        let intent = match tokio::time::timeout(self.timeout, request.send(&self.client)).await {
            Ok(Ok(intent)) => intent,
            Ok(Err(::stripe::StripeError::Stripe(_, 404))) => return Ok(None),
            Ok(Err(e)) => return Err(StripeError(redact(&describe(e), &self.secret_key))),
            Err(_) => {
                return Err(StripeError(format!(
                    "Stripe did not answer within {:?}",
                    self.timeout
                )))
            }
        };
        Ok(
            match (intent.metadata.get("org_id"), intent.metadata.get("sku")) {
                (Some(org_id), Some(sku)) => Some(PaymentIntentOwner {
                    org_id: org_id.clone(),
                    sku: sku.clone(),
                }),
                _ => None,
            },
        )
    }

    /// Lists events of one type created at or after `since` (Unix seconds).
    /// Read as raw JSON, not as async-stripe's typed events, for the same
    /// reason webhooks are: the account's API version may differ.
    pub async fn list_events(
        &self,
        event_type: &str,
        since: i64,
        starting_after: Option<&str>,
    ) -> Result<EventPage, StripeError> {
        use miniserde::json::Value;
        let query = ListEventsQuery {
            event_type,
            created: CreatedRange { gte: since },
            limit: 100,
            starting_after,
        };
        let request = stripe_client_core::RequestBuilder::new(
            stripe_client_core::StripeMethod::Get,
            "/events",
        )
        .query(&query)
        .customize::<Value>();
        let page = match tokio::time::timeout(self.timeout, request.send(&self.client)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return Err(StripeError(redact(&describe(e), &self.secret_key))),
            Err(_) => {
                return Err(StripeError(format!(
                    "Stripe did not answer within {:?}",
                    self.timeout
                )))
            }
        };
        let Value::Object(page) = page else {
            return Err(StripeError("the event list is not an object".into()));
        };
        let has_more = matches!(page.get("has_more"), Some(Value::Bool(true)));
        let Some(Value::Array(data)) = page.get("data") else {
            return Err(StripeError("the event list has no data".into()));
        };
        let last_id = match data.last() {
            Some(Value::Object(event)) => match event.get("id") {
                Some(Value::String(id)) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        };
        let events = data
            .iter()
            .map(|event| miniserde::json::to_string(event).into_bytes())
            .collect();
        Ok(EventPage {
            events,
            last_id,
            has_more,
        })
    }
}

pub struct StripeActor {
    api: StripeApi,
    directory: OrgDirectory,
    /// Where a PaymentIntent's org is looked up for events without metadata.
    owners: Recipient<FindIntentOwner>,
    metrics: Metrics,
}

impl StripeActor {
    pub fn new(
        api: StripeApi,
        directory: OrgDirectory,
        owners: Recipient<FindIntentOwner>,
        metrics: Metrics,
    ) -> Self {
        Self {
            api,
            directory,
            owners,
            metrics,
        }
    }
}

impl Actor for StripeActor {
    type Context = Context<Self>;
}

impl Handler<CreatePaymentIntent> for StripeActor {
    type Result = ResponseFuture<Result<OpenIntent, StripeError>>;

    fn handle(&mut self, msg: CreatePaymentIntent, _: &mut Context<Self>) -> Self::Result {
        let StripeApi {
            client,
            secret_key,
            timeout,
        } = self.api.clone();
        Box::pin(async move {
            let currency = msg
                .currency
                .parse::<stripe_types::Currency>()
                .map_err(|_| StripeError(format!("unsupported currency `{}`", msg.currency)))?;
            let metadata = HashMap::from([
                ("org_id".to_owned(), msg.org_id.clone()),
                ("sku".to_owned(), msg.sku.clone()),
            ]);
            let key = IdempotencyKey::new(&msg.idempotency_key)
                .map_err(|e| StripeError(format!("bad idempotency key: {e}")))?;
            let request = StripeCreatePaymentIntent::new(msg.amount, currency)
                .metadata(metadata)
                .customize()
                .request_strategy(RequestStrategy::Idempotent(key));
            let intent = match tokio::time::timeout(timeout, request.send(&client)).await {
                Ok(Ok(intent)) => intent,
                Ok(Err(e)) => return Err(StripeError(redact(&describe(e), &secret_key))),
                Err(_) => {
                    return Err(StripeError(format!(
                        "Stripe did not answer within {timeout:?}"
                    )))
                }
            };
            let client_secret = intent.client_secret.ok_or_else(|| {
                StripeError("Stripe returned a PaymentIntent without a client secret".into())
            })?;
            tracing::info!(org_id = %msg.org_id, sku = %msg.sku, payment_intent_id = %intent.id.as_str(), "payment intent opened");
            Ok(OpenIntent {
                payment_intent_id: intent.id.as_str().to_owned(),
                client_secret,
                amount: intent.amount,
                currency: intent.currency.to_string(),
            })
        })
    }
}

fn describe(error: ::stripe::StripeError) -> String {
    match error {
        ::stripe::StripeError::Stripe(api, status) => format!(
            "Stripe answered {status}: {}",
            api.message.as_deref().unwrap_or("no message")
        ),
        other => other.to_string(),
    }
}

/// Stripe echoes (part of) a rejected key in its message; no key may reach
/// a client or a log line.
fn redact(message: &str, secret_key: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let is_key = ["sk_", "rk_", "pk_"].iter().any(|p| word.starts_with(p))
                || (!secret_key.is_empty() && word.contains(secret_key));
            if is_key {
                "[redacted]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Handler<Ask<HandleEvent>> for StripeActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: HandleEvent(event),
            reply,
        }: Ask<HandleEvent>,
        _: &mut Context<Self>,
    ) {
        let api = self.api.clone();
        let directory = self.directory.clone();
        let owners = self.owners.clone();
        let metrics = self.metrics.clone();
        actix::spawn(async move {
            let answer = route(event, &api, &directory, &owners).await;
            match answer {
                Ok(Outcome::Recorded) => metrics.event(EventOutcome::Applied),
                Ok(Outcome::Duplicate) => metrics.event(EventOutcome::Duplicate),
                Ok(Outcome::Ignored) => metrics.event(EventOutcome::Ignored),
                Err(_) => {}
            }
            let _ = reply.send(answer);
        });
    }
}

/// Sends an event to the org it is about. Events that name no org of ours
/// are acknowledged and ignored: they belong to other integrations.
async fn route(
    event: StripeEvent,
    api: &StripeApi,
    directory: &OrgDirectory,
    owners: &Recipient<FindIntentOwner>,
) -> Result<Outcome, OrgError> {
    let event_id = event.id;
    match event.effect {
        EventEffect::PaymentSucceeded(facts) | EventEffect::PaymentFailed(facts) => {
            let succeeded = event.event_type == "payment_intent.succeeded";
            let (Some(org_id), Some(sku)) = (facts.org_id.filter(|o| valid_org_id(o)), facts.sku)
            else {
                tracing::info!(%event_id, "payment intent without our metadata; ignored");
                return Ok(Outcome::Ignored);
            };
            let request = ApplyPayment {
                event_id,
                payment_intent_id: facts.payment_intent_id,
                sku,
                succeeded,
                amount: facts.amount,
                currency: facts.currency,
            };
            directory.ask(&org_id, request).await
        }
        EventEffect::Revoked(facts) => {
            let Some(payment_intent_id) = facts.payment_intent_id else {
                tracing::warn!(%event_id, "refund or dispute names no payment intent; ignored");
                return Ok(Outcome::Ignored);
            };
            let (org_id, sku) = match facts.org_id.filter(|o| valid_org_id(o)) {
                Some(org_id) => (org_id, facts.sku),
                None => match owner_of(&payment_intent_id, api, directory, owners).await? {
                    Some(owner) => (owner.org_id, facts.sku.or(Some(owner.sku))),
                    None => {
                        tracing::warn!(%event_id, %payment_intent_id, "refund or dispute of a payment intent that is not ours; ignored");
                        return Ok(Outcome::Ignored);
                    }
                },
            };
            let kind = match facts.kind {
                RevocationKind::Refund => ActionKind::Refund,
                RevocationKind::Dispute => ActionKind::Dispute,
            };
            let request = ApplyRevocation {
                event_id,
                kind,
                payment_intent_id,
                sku,
                amount: facts.amount,
                currency: facts.currency,
                log_checked: false,
            };
            directory.ask(&org_id, request).await
        }
        EventEffect::Unreadable {
            payment_intent_id,
            reason,
        } => {
            let ours = match &payment_intent_id {
                Some(id) => owner_of(id, api, directory, owners).await?.is_some(),
                None => false,
            };
            if ours {
                tracing::warn!(%event_id, %reason, "an event of ours that cannot be read; refused");
                return Err(OrgError::UnreadableEvent(reason));
            }
            tracing::info!(%event_id, "an unreadable event that names nothing of ours; ignored");
            Ok(Outcome::Ignored)
        }
        EventEffect::Ignored => Ok(Outcome::Ignored),
    }
}

/// The org of a PaymentIntent named by an event without metadata: from the
/// live org actors, else the action log, else (when the event arrives before
/// the payment's success, say) Stripe itself.
async fn owner_of(
    payment_intent_id: &str,
    api: &StripeApi,
    directory: &OrgDirectory,
    owners: &Recipient<FindIntentOwner>,
) -> Result<Option<PaymentIntentOwner>, OrgError> {
    if let Some(owner) = directory.live_intent_owner(payment_intent_id) {
        return Ok(Some(owner));
    }
    match find_intent_owner(owners, payment_intent_id.to_owned()).await {
        Ok(Some(owner)) => Ok(Some(owner)),
        Ok(None) => Ok(api
            .payment_intent_owner(payment_intent_id)
            .await?
            .filter(|owner| valid_org_id(&owner.org_id))),
        Err(e) => Err(OrgError::PersistenceUnavailable(e.to_string())),
    }
}

/// The contract's org id: 1 to 64 of `A-Za-z0-9_-`.
pub fn valid_org_id(org_id: &str) -> bool {
    (1..=64).contains(&org_id.len())
        && org_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_keys_from_messages() {
        let msg = "Invalid API Key provided: sk_test_abc123 for acct";
        assert_eq!(
            redact(msg, "sk_test_abc123"),
            "Invalid API Key provided: [redacted] for acct"
        );
        assert_eq!(redact("key mysecret!", "mysecret"), "key [redacted]");
    }

    #[test]
    fn org_ids_follow_the_contract() {
        assert!(valid_org_id("acme_Co-1"));
        assert!(!valid_org_id(""));
        assert!(!valid_org_id("a/b"));
        assert!(!valid_org_id(&"a".repeat(65)));
    }
}
