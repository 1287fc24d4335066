//! The Stripe emulator localstripe, as the tests use it: its API, paying
//! a PaymentIntent as a browser would, and webhook endpoints.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::*;

pub const SECRET_KEY: &str = "sk_test_entitlements";
pub const GOOD_CARD: &str = "4242424242424242";
/// Attaches, then declines when charged.
pub const DECLINED_CARD: &str = "4000000000000341";
/// localstripe posts webhooks ~1 s after the event, one endpoint after
/// another; a loaded machine with many endpoints needs more.
pub const WEBHOOK_WAIT: Duration = Duration::from_secs(60);

/// An org id no other test (or earlier run) uses.
pub fn unique_org(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pi-{tag}-{}-{nanos}", std::process::id())
}

/// A client for localstripe's API, authenticated like the service.
pub struct LocalStripe {
    pub base: String,
    pub client: reqwest::Client,
}

impl LocalStripe {
    pub fn new() -> Self {
        Self {
            base: localstripe_url(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .basic_auth(SECRET_KEY, None::<&str>)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .basic_auth(SECRET_KEY, None::<&str>)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    pub async fn payment_intent(&self, id: &str) -> Value {
        self.get(&format!("/v1/payment_intents/{id}")).await
    }

    /// Every object of a list endpoint, following `has_more`.
    pub async fn list_all(&self, path: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        let joiner = if path.contains('?') { '&' } else { '?' };
        loop {
            let page = match &after {
                None => self.get(&format!("{path}{joiner}limit=100")).await,
                Some(id) => {
                    self.get(&format!("{path}{joiner}limit=100&starting_after={id}"))
                        .await
                }
            };
            let data = page["data"].as_array().unwrap().clone();
            after = data.last().map(|o| o["id"].as_str().unwrap().to_owned());
            all.extend(data);
            if page["has_more"] != true || after.is_none() {
                return all;
            }
        }
    }

    /// The PaymentIntents localstripe holds for this org and SKU.
    pub async fn payment_intents_for(&self, org: &str, sku: &str) -> Vec<Value> {
        self.list_all("/v1/payment_intents")
            .await
            .into_iter()
            .filter(|pi| pi["metadata"]["org_id"] == org && pi["metadata"]["sku"] == sku)
            .collect()
    }

    /// The id of the `event_type` event about this PaymentIntent.
    pub async fn event_id(&self, event_type: &str, payment_intent: &str) -> String {
        let ids: Vec<String> = self
            .list_all("/v1/events")
            .await
            .into_iter()
            .filter(|e| e["type"] == event_type && e["data"]["object"]["id"] == payment_intent)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "one {event_type} event for {payment_intent}: {ids:?}"
        );
        ids.into_iter().next().unwrap()
    }

    /// Pays `payment_intent` with `card` as Stripe.js would: a
    /// PaymentMethod, attached, then confirmed. Returns the confirm answer.
    pub async fn pay(&self, payment_intent: &str, card: &str) -> (u16, Value) {
        let (status, pm) = self
            .post(
                "/v1/payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", card),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2030"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        assert_eq!(status, 200, "payment method: {pm}");
        let pm = pm["id"].as_str().unwrap();
        let (status, body) = self
            .post(
                &format!("/v1/payment_intents/{payment_intent}"),
                &[("payment_method", pm)],
            )
            .await;
        assert_eq!(status, 200, "attach: {body}");
        self.post(
            &format!("/v1/payment_intents/{payment_intent}/confirm"),
            &[],
        )
        .await
    }

    /// Registers a webhook endpoint for the PaymentIntent events, pointing
    /// at `app`, signed with the app's current secret.
    pub async fn webhook_endpoint(&self, tag: &str, app: &TestApp) -> WebhookEndpoint {
        let name = format!("{tag}-{}", unique_org("hook"));
        let url = app.url("/webhooks/stripe");
        let res = self
            .client
            .post(format!("{}/_config/webhooks/{name}", self.base))
            .form(&[
                ("url", url.as_str()),
                ("secret", WEBHOOK_SECRET),
                ("events[]", "payment_intent.succeeded"),
                ("events[]", "payment_intent.payment_failed"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "register webhook {name}");
        WebhookEndpoint {
            base: self.base.clone(),
            name,
            url,
        }
    }
}

/// A localstripe webhook endpoint, retired on drop (even when the test
/// panics) so later events are not posted to an app nobody watches.
/// localstripe cannot delete an endpoint; re-registering it for an event
/// type that never happens has the same effect.
pub struct WebhookEndpoint {
    base: String,
    name: String,
    url: String,
}

impl Drop for WebhookEndpoint {
    fn drop(&mut self) {
        // Blocking std I/O: Drop cannot await, and this is one tiny request.
        let Some(authority) = self.base.strip_prefix("http://") else {
            return;
        };
        let body = format!(
            "url={}&secret=retired&events[]=retired.never",
            self.url.replace(':', "%3A").replace('/', "%2F")
        );
        let request = format!(
            "POST /_config/webhooks/{} HTTP/1.1\r\nHost: {authority}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.name,
            body.len()
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(authority) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(request.as_bytes());
            let _ = std::io::Read::read(&mut stream, &mut [0u8; 256]);
        }
    }
}

/// Opens (or gets back) the org's PaymentIntent for `sku` through the
/// service; the answer must be 200.
pub async fn create_intent(app: &TestApp, org: &str, sku: &str) -> Value {
    let res = app
        .post(
            org,
            "/v1/billing/payment-intents",
            serde_json::json!({ "sku": sku }),
        )
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "payment intent for {org}/{sku}: {body}");
    body
}

/// The PaymentIntent id of a `POST /v1/billing/payment-intents` answer.
pub fn id_of(intent: &Value) -> String {
    intent["paymentIntentId"].as_str().unwrap().to_owned()
}
