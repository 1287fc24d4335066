//! The calls the service makes to Stripe's API, through async-stripe and
//! against `stripe.api_base` (so tests can point it at an emulator).
//!
//! Every call has one timeout, and no error message it returns can carry a
//! key: Stripe echoes (part of) a rejected key in its messages.

use std::collections::HashMap;
use std::time::Duration;

use ::stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeRequest};
use miniserde::json::{Object, Value};
use stripe_client_core::CustomizableStripeRequest;
use stripe_client_core::{RequestBuilder, StripeMethod};
use stripe_core::payment_intent::{
    CreatePaymentIntent as StripeCreatePaymentIntent, RetrievePaymentIntent,
};

use crate::secret::Secret;
use crate::store::PaymentIntentOwner;

#[derive(Clone, Debug)]
pub struct StripeSettings {
    pub secret_key: Secret,
    pub api_base: String,
    pub timeout: Duration,
}

/// A failed Stripe call, with any secret removed from the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StripeError {
    pub message: String,
    /// The HTTP status Stripe answered with; `None` when it did not answer.
    pub status: Option<u16>,
    /// Stripe's `idempotency_error`: the key was first used with other
    /// parameters.
    pub idempotency_conflict: bool,
}

impl StripeError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: None,
            idempotency_conflict: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenIntent {
    pub payment_intent_id: String,
    pub client_secret: String,
    pub amount: i64,
    pub currency: String,
}

/// What a PaymentIntent is created with.
#[derive(Clone, Debug)]
pub struct IntentRequest<'a> {
    pub org_id: &'a str,
    pub sku: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    /// The catalog's Price for the SKU, when it is known.
    pub price_id: Option<&'a str>,
    pub idempotency_key: &'a str,
}

/// A configured Stripe client; built before the actors so that bad settings
/// stop start-up.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
    secret_key: Secret,
    timeout: Duration,
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
    pub fn new(settings: &StripeSettings) -> Result<Self, StripeError> {
        let client = ClientBuilder::new(settings.secret_key.expose())
            .url(settings.api_base.clone())
            .timeout(settings.timeout)
            .build()
            .map_err(|e| StripeError::new(format!("invalid Stripe client settings: {e}")))?;
        Ok(Self {
            client,
            secret_key: settings.secret_key.clone(),
            timeout: settings.timeout,
        })
    }

    /// Sends one request, bounded by the client's timeout.
    async fn send<T: miniserde::Deserialize>(
        &self,
        request: CustomizableStripeRequest<T>,
    ) -> Result<T, StripeError> {
        match tokio::time::timeout(self.timeout, request.send(&self.client)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.failure(e)),
            Err(_) => Err(StripeError::new(format!(
                "Stripe did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn failure(&self, error: ::stripe::StripeError) -> StripeError {
        let (message, status, idempotency_conflict) = match error {
            ::stripe::StripeError::Stripe(api, status) => (
                format!(
                    "Stripe answered {status}: {}",
                    api.message.as_deref().unwrap_or("no message")
                ),
                Some(status),
                api.type_.as_str() == "idempotency_error",
            ),
            other => (other.to_string(), None, false),
        };
        StripeError {
            message: redact(&message, self.secret_key.expose()),
            status,
            idempotency_conflict,
        }
    }

    /// A raw JSON call, for the endpoints read without async-stripe's types
    /// (events, whose shape follows the account's API version, and the
    /// catalog, whose crate would be built for four calls).
    pub(crate) async fn call_json(
        &self,
        request: RequestBuilder,
        strategy: RequestStrategy,
    ) -> Result<Object, StripeError> {
        let request = request.customize::<Value>().request_strategy(strategy);
        match self.send(request).await? {
            Value::Object(object) => Ok(object),
            _ => Err(StripeError::new(
                "Stripe answered with something other than an object",
            )),
        }
    }

    /// Creates a PaymentIntent carrying `metadata.org_id` and
    /// `metadata.sku` (and `metadata.price_id` when the Price is known).
    pub async fn create_payment_intent(
        &self,
        intent: IntentRequest<'_>,
    ) -> Result<OpenIntent, StripeError> {
        let currency = intent
            .currency
            .parse::<stripe_types::Currency>()
            .map_err(|_| StripeError::new(format!("unsupported currency `{}`", intent.currency)))?;
        let mut metadata = HashMap::from([
            ("org_id".to_owned(), intent.org_id.to_owned()),
            ("sku".to_owned(), intent.sku.to_owned()),
        ]);
        if let Some(price_id) = intent.price_id {
            metadata.insert("price_id".to_owned(), price_id.to_owned());
        }
        let key = IdempotencyKey::new(intent.idempotency_key)
            .map_err(|e| StripeError::new(format!("bad idempotency key: {e}")))?;
        let request = StripeCreatePaymentIntent::new(intent.amount, currency)
            .metadata(metadata)
            .customize()
            .request_strategy(RequestStrategy::Idempotent(key));
        let created = self.send(request).await?;
        let client_secret = created.client_secret.ok_or_else(|| {
            StripeError::new("Stripe returned a PaymentIntent without a client secret")
        })?;
        Ok(OpenIntent {
            payment_intent_id: created.id.as_str().to_owned(),
            client_secret,
            amount: created.amount,
            currency: created.currency.to_string(),
        })
    }

    /// The org and SKU in a PaymentIntent's metadata; `None` when Stripe
    /// does not know it or it carries none.
    pub async fn payment_intent_owner(
        &self,
        payment_intent_id: &str,
    ) -> Result<Option<PaymentIntentOwner>, StripeError> {
        let intent = match self
            .send(RetrievePaymentIntent::new(payment_intent_id).customize())
            .await
        {
            Ok(intent) => intent,
            Err(e) if e.status == Some(404) => return Ok(None),
            Err(e) => return Err(e),
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
        let query = ListEventsQuery {
            event_type,
            created: CreatedRange { gte: since },
            limit: 100,
            starting_after,
        };
        let request = RequestBuilder::new(StripeMethod::Get, "/events").query(&query);
        let page = self.call_json(request, RequestStrategy::Once).await?;
        let has_more = matches!(page.get("has_more"), Some(Value::Bool(true)));
        let Some(Value::Array(data)) = page.get("data") else {
            return Err(StripeError::new("the event list has no data"));
        };
        let last_id = data.last().and_then(|event| match event {
            Value::Object(event) => str_field(event, "id").map(str::to_owned),
            _ => None,
        });
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

/// A string field of a raw Stripe object.
pub(crate) fn str_field<'a>(object: &'a Object, key: &str) -> Option<&'a str> {
    match object.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// No key may reach a client or a log line.
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
}
