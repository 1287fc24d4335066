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

use common::localstripe::*;
use common::*;
use serde_json::{json, Value};

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

#[tokio::test]
async fn a_metadata_less_refund_before_the_success_is_placed_through_stripe_and_wins() {
    let app = spawn_on_localstripe().await;
    let stripe = LocalStripe::new();
    let org = unique_org("early-refund");
    let intent = create_intent(&app, &org, SKU).await;
    let pi = id_of(&intent);
    // The charge's refund arrives first and names only the PaymentIntent.
    let res = app
        .webhook(&refunded(&format!("evt_refund_{org}"), &pi, None))
        .await;
    assert_eq!(res.status(), 200);
    let actions = app.actions(&org).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["kind"], "refund");
    assert_eq!(actions[0]["sku"], SKU);
    // Then the success: recorded, but the refund wins.
    assert_eq!(stripe.pay(&pi, GOOD_CARD).await.0, 200);
    let res = app
        .webhook(&succeeded(&format!("evt_paid_{org}"), &pi, &org))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.actions(&org).await.len(), 2);
    assert_eq!(app.entitlements(&org).await["entitlements"][SKU], false);

    // A PaymentIntent Stripe does not know is not ours: acknowledged, ignored.
    let res = app
        .webhook(&refunded("evt_refund_foreign", "pi_not_on_stripe", None))
        .await;
    assert_eq!(res.status(), 200);
}
