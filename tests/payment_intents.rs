//! PaymentIntents and Stripe webhooks end to end, against the Stripe
//! emulator localstripe (started by `tests/run`, reached at
//! `LOCALSTRIPE_URL`). Nothing here is faked: the service creates the
//! PaymentIntent through its Stripe client, the test pays it on localstripe
//! as a browser would, and localstripe sends the signed webhook.
//!
//! localstripe is shared by every test (and every test binary) of a run, and
//! its webhook endpoints are global: an event for this test's org may also be
//! posted to other tests' apps. Every test therefore uses org ids of its own,
//! so another app only records an event for an org nobody asserts about.
//! Each endpoint is retired when its test ends.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const SECRET_KEY: &str = "sk_test_entitlements";
const GOOD_CARD: &str = "4242424242424242";
/// Attaches, then declines when charged.
const DECLINED_CARD: &str = "4000000000000341";
/// localstripe posts webhooks ~1 s after the event, one endpoint after
/// another; a loaded machine with many endpoints needs more.
const WEBHOOK_WAIT: Duration = Duration::from_secs(60);

/// An org id no other test (or earlier run) uses.
fn unique_org(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pi-{tag}-{}-{nanos}", std::process::id())
}

/// The app, pointed at localstripe. Reconciliation from the Events API is
/// off, so an entitlement can only have come through the webhook.
async fn spawn_on_localstripe() -> TestApp {
    let base = localstripe_url();
    spawn(&[
        ("ENTITLEMENTS__STRIPE__API_BASE", base.as_str()),
        ("ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS", "0"),
    ])
    .await
}

/// A client for localstripe's API, authenticated like the service.
struct LocalStripe {
    base: String,
    client: reqwest::Client,
}

impl LocalStripe {
    fn new() -> Self {
        Self {
            base: localstripe_url(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Value {
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

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
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

    async fn payment_intent(&self, id: &str) -> Value {
        self.get(&format!("/v1/payment_intents/{id}")).await
    }

    /// Every object of a list endpoint, following `has_more`.
    async fn list_all(&self, path: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = match &after {
                None => self.get(&format!("{path}?limit=100")).await,
                Some(id) => {
                    self.get(&format!("{path}?limit=100&starting_after={id}"))
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
    async fn payment_intents_for(&self, org: &str, sku: &str) -> Vec<Value> {
        self.list_all("/v1/payment_intents")
            .await
            .into_iter()
            .filter(|pi| pi["metadata"]["org_id"] == org && pi["metadata"]["sku"] == sku)
            .collect()
    }

    /// The id of the `event_type` event about this PaymentIntent.
    async fn event_id(&self, event_type: &str, payment_intent: &str) -> String {
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
    async fn pay(&self, payment_intent: &str, card: &str) -> (u16, Value) {
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
    async fn webhook_endpoint(&self, tag: &str, app: &TestApp) -> WebhookEndpoint {
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
struct WebhookEndpoint {
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

async fn create_intent(app: &TestApp, org: &str, sku: &str) -> Value {
    let res = app
        .post(org, "/v1/billing/payment-intents", json!({ "sku": sku }))
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "payment intent for {org}/{sku}: {body}");
    body
}

fn id_of(intent: &Value) -> String {
    intent["paymentIntentId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn creates_a_payment_intent_on_stripe_with_the_orgs_metadata() {
    let app = spawn_on_localstripe().await;
    let stripe = LocalStripe::new();
    let org = unique_org("create");

    let body = create_intent(&app, &org, SKU).await;
    let id = id_of(&body);
    assert!(id.starts_with("pi_"), "{body}");
    let client_secret = body["clientSecret"].as_str().unwrap();
    assert!(
        client_secret.starts_with(&format!("{id}_secret_")),
        "{body}"
    );
    assert_eq!(body["publishableKey"], "pk_test_entitlements");
    assert_eq!(body["amount"], 99900);
    assert_eq!(body["currency"], "usd");
    assert_eq!(
        body.as_object().unwrap().len(),
        5,
        "exactly the contract's keys: {body}"
    );

    let pi = stripe.payment_intent(&id).await;
    assert_eq!(pi["id"], id.as_str());
    assert_eq!(pi["amount"], 99900);
    assert_eq!(pi["currency"], "usd");
    assert_eq!(pi["client_secret"], client_secret);
    assert_eq!(pi["metadata"]["org_id"], org.as_str());
    assert_eq!(pi["metadata"]["sku"], SKU);
    assert_eq!(pi["status"], "requires_payment_method");

    // The other product is priced from its own config.
    let other = create_intent(&app, &org, OTHER_SKU).await;
    assert_eq!(other["amount"], 25000);
    let pi = stripe.payment_intent(&id_of(&other)).await;
    assert_eq!(pi["amount"], 25000);
    assert_eq!(pi["metadata"]["sku"], OTHER_SKU);

    // Opening an intent is not a purchase: nothing recorded, nothing owned.
    assert!(app.actions(&org).await.is_empty());
    let ent = app.entitlements(&org).await;
    assert_eq!(ent["entitlements"], json!({ SKU: false, OTHER_SKU: false }));
    assert_eq!(ent["seq"], 0);
}

#[tokio::test]
async fn repeated_and_concurrent_calls_share_one_payment_intent() {
    let app = spawn_on_localstripe().await;
    let stripe = LocalStripe::new();
    let org = unique_org("dedupe");
    let other_org = unique_org("dedupe-other");

    // 20 at once, before any intent exists.
    let calls = (0..20).map(|_| create_intent(&app, &org, SKU));
    let bodies = futures_util::future::join_all(calls).await;
    let ids: HashSet<String> = bodies.iter().map(id_of).collect();
    assert_eq!(ids.len(), 1, "concurrent calls got {ids:?}");
    let id = ids.into_iter().next().unwrap();
    let secrets: HashSet<&str> = bodies
        .iter()
        .map(|b| b["clientSecret"].as_str().unwrap())
        .collect();
    assert_eq!(secrets.len(), 1);

    // Then one after another.
    for _ in 0..3 {
        assert_eq!(id_of(&create_intent(&app, &org, SKU).await), id);
    }

    // Another SKU or another org is another purchase.
    let other_sku = id_of(&create_intent(&app, &org, OTHER_SKU).await);
    let other_org_id = id_of(&create_intent(&app, &other_org, SKU).await);
    assert_ne!(other_sku, id);
    assert_ne!(other_org_id, id);
    assert_ne!(other_org_id, other_sku);

    // Stripe holds exactly one intent per org and SKU.
    let held = stripe.payment_intents_for(&org, SKU).await;
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_eq!(held[0]["id"], id.as_str());
    assert_eq!(stripe.payment_intents_for(&org, OTHER_SKU).await.len(), 1);
    assert_eq!(stripe.payment_intents_for(&other_org, SKU).await.len(), 1);
}

#[tokio::test]
async fn a_restarted_service_gets_the_same_payment_intent_back() {
    let app = spawn_on_localstripe().await;
    let stripe = LocalStripe::new();
    let org = unique_org("restart");
    let first = id_of(&create_intent(&app, &org, SKU).await);

    // The open intent is only in memory; Stripe's idempotency key carries
    // it across the restart.
    let dir = app.stop().await;
    let base = localstripe_url();
    let app = spawn_in(
        dir,
        &[
            ("ENTITLEMENTS__STRIPE__API_BASE", base.as_str()),
            ("ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS", "0"),
        ],
    )
    .await;
    assert_eq!(id_of(&create_intent(&app, &org, SKU).await), first);
    let held = stripe.payment_intents_for(&org, SKU).await;
    assert_eq!(held.len(), 1, "{held:#?}");
}

#[tokio::test]
async fn a_paid_intent_entitles_the_org_through_the_webhook() {
    let app = spawn_on_localstripe().await;
    let stripe = LocalStripe::new();
    let _endpoint = stripe.webhook_endpoint("pi-success", &app).await;
    let org = unique_org("paid");

    let id = id_of(&create_intent(&app, &org, SKU).await);
    let (status, confirmed) = stripe.pay(&id, GOOD_CARD).await;
    assert_eq!(status, 200, "confirm: {confirmed}");
    assert_eq!(confirmed["status"], "succeeded");
    let event_id = stripe.event_id("payment_intent.succeeded", &id).await;

    let ent = eventually(WEBHOOK_WAIT, || async {
        let ent = app.entitlements(&org).await;
        (ent["entitlements"][SKU] == true).then_some(ent)
    })
    .await;
    assert_eq!(
        ent,
        json!({"orgId": org, "entitlements": {SKU: true, OTHER_SKU: false}, "seq": 1})
    );

    let actions = app.actions(&org).await;
    assert_eq!(actions.len(), 1, "{actions:#?}");
    let action = &actions[0];
    assert_eq!(action["kind"], "payment");
    assert_eq!(action["status"], "delivered");
    assert_eq!(action["sku"], SKU);
    assert_eq!(action["externalId"], id.as_str());
    assert_eq!(action["eventId"], event_id.as_str());
    assert_eq!(action["amount"], 99900);
    assert_eq!(action["currency"], "usd");
    assert_eq!(action["simulated"], false);
    assert_eq!(action["seq"], 1);

    let res = app.get(&org, "/v1/billing/products").await;
    let products: Value = res.json().await.unwrap();
    assert_eq!(products["products"][0]["sku"], SKU);
    assert_eq!(products["products"][0]["entitled"], true);

    // Owned now: no second intent, and Stripe still holds just the one.
    let res = app
        .post(&org, "/v1/billing/payment-intents", json!({ "sku": SKU }))
        .await;
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "already_entitled");
    assert!(body["error"]["message"].is_string());
    assert_eq!(stripe.payment_intents_for(&org, SKU).await.len(), 1);
    // The other product can still be bought.
    create_intent(&app, &org, OTHER_SKU).await;
}

#[tokio::test]
async fn a_declined_card_records_a_failed_payment_and_the_intent_can_be_retried() {
    let app = spawn_on_localstripe().await;
    let stripe = LocalStripe::new();
    let _endpoint = stripe.webhook_endpoint("pi-declined", &app).await;
    let org = unique_org("declined");

    let id = id_of(&create_intent(&app, &org, SKU).await);
    let (status, declined) = stripe.pay(&id, DECLINED_CARD).await;
    assert_eq!(status, 402, "confirm: {declined}");
    assert_eq!(declined["error"]["code"], "card_declined");
    let failed_event = stripe.event_id("payment_intent.payment_failed", &id).await;

    let failed = eventually(WEBHOOK_WAIT, || async {
        app.actions(&org).await.into_iter().next()
    })
    .await;
    assert_eq!(failed["kind"], "payment");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["sku"], SKU);
    assert_eq!(failed["externalId"], id.as_str());
    assert_eq!(failed["eventId"], failed_event.as_str());
    assert_eq!(failed["simulated"], false);
    assert_eq!(app.actions(&org).await.len(), 1);
    // The failure is recorded; entitlements are unchanged.
    assert_eq!(
        app.entitlements(&org).await,
        json!({"orgId": org, "entitlements": {SKU: false, OTHER_SKU: false}, "seq": 1})
    );

    // The intent is still open (requires_payment_method): the buyer gets
    // the same one back and pays it with another card.
    assert_eq!(id_of(&create_intent(&app, &org, SKU).await), id);
    assert_eq!(
        stripe.payment_intent(&id).await["status"],
        "requires_payment_method"
    );
    let (status, confirmed) = stripe.pay(&id, GOOD_CARD).await;
    assert_eq!(status, 200, "confirm: {confirmed}");
    let paid_event = stripe.event_id("payment_intent.succeeded", &id).await;

    eventually(WEBHOOK_WAIT, || async {
        let ent = app.entitlements(&org).await;
        (ent["entitlements"][SKU] == true).then_some(())
    })
    .await;
    let actions = app.actions(&org).await;
    assert_eq!(actions.len(), 2, "{actions:#?}");
    assert_eq!(actions[0]["status"], "delivered");
    assert_eq!(actions[0]["externalId"], id.as_str());
    assert_eq!(actions[0]["eventId"], paid_event.as_str());
    assert_eq!(actions[0]["seq"], 2);
    assert_eq!(actions[1]["id"], failed["id"]);
    assert_eq!(stripe.payment_intents_for(&org, SKU).await.len(), 1);
}

#[tokio::test]
async fn a_key_stripe_rejects_is_a_bad_gateway_without_the_key() {
    // localstripe accepts any key of the form `sk_<something>`, so a wrong
    // but well-formed key cannot be tested here; one of another form is
    // refused with 401, as real Stripe refuses a wrong key.
    const BAD_KEY: &str = "not_a_stripe_key_4f9a";
    let base = localstripe_url();
    let app = spawn(&[
        ("ENTITLEMENTS__STRIPE__API_BASE", base.as_str()),
        ("ENTITLEMENTS__STRIPE__SECRET_KEY", BAD_KEY),
        ("ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS", "0"),
    ])
    .await;
    let stripe = LocalStripe::new();
    let org = unique_org("badkey");

    // The emulator itself refuses the key.
    let res = stripe
        .client
        .get(format!("{base}/v1/payment_intents"))
        .basic_auth(BAD_KEY, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    for _ in 0..2 {
        let res = app
            .post(&org, "/v1/billing/payment-intents", json!({ "sku": SKU }))
            .await;
        assert_eq!(res.status(), 502);
        let text = res.text().await.unwrap();
        assert!(!text.contains(BAD_KEY), "the key leaked: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "stripe_error", "{body}");
        assert!(body["error"]["message"].is_string());
    }
    assert!(stripe.payment_intents_for(&org, SKU).await.is_empty());
    assert!(app.actions(&org).await.is_empty());
}
