//! Reconciliation with Stripe's Events API (against localstripe): payments
//! whose webhooks never arrived still become entitlements and actions, once,
//! even when the webhooks do arrive later.

mod common;

use std::time::Duration;

use common::localstripe::*;
use common::*;
use serde_json::Value;

/// The app on localstripe with reconciliation every `interval_secs`.
async fn spawn_reconciling(dir: std::sync::Arc<tempfile::TempDir>, interval_secs: &str) -> TestApp {
    let base = localstripe_url();
    spawn_in(
        dir,
        &[
            ("ENTITLEMENTS__STRIPE__API_BASE", base.as_str()),
            (
                "ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS",
                interval_secs,
            ),
        ],
    )
    .await
}

/// A PaymentIntent made on localstripe for `org`, as the service makes them.
async fn open_intent(stripe: &LocalStripe, org: &str) -> String {
    let (status, pi) = stripe
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "99900"),
                ("currency", "usd"),
                ("metadata[org_id]", org),
                ("metadata[sku]", SKU),
            ],
        )
        .await;
    assert_eq!(status, 200, "{pi}");
    pi["id"].as_str().unwrap().to_owned()
}

async fn entitled(app: &TestApp, org: &str) -> Option<()> {
    (app.entitlements(org).await["entitlements"][SKU] == true).then_some(())
}

/// The event as Stripe lists it, signed now and posted as its webhook.
async fn deliver_late(app: &TestApp, stripe: &LocalStripe, event_id: &str) {
    let event = stripe.get(&format!("/v1/events/{event_id}")).await;
    app.deliver(&event).await;
}

#[tokio::test]
async fn payments_confirmed_while_the_service_was_down_are_applied_when_it_starts() {
    let stripe = LocalStripe::new();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    // The service has run before (its store knows an older payment)...
    let app = spawn_reconciling(dir.clone(), "3600").await;
    let before = unique_org("rec-before");
    app.deliver(&succeeded(
        &format!("evt_{before}"),
        &format!("pi_{before}"),
        &before,
    ))
    .await;
    let dir_again = app.stop().await;
    assert!(std::sync::Arc::ptr_eq(&dir, &dir_again));

    // ...then, while it is down, two payments are attempted; no webhook reaches it.
    let org = unique_org("rec-down");
    let paid = open_intent(&stripe, &org).await;
    assert_eq!(stripe.pay(&paid, GOOD_CARD).await.0, 200);
    let declined_org = unique_org("rec-declined");
    let declined = open_intent(&stripe, &declined_org).await;
    assert_eq!(stripe.pay(&declined, DECLINED_CARD).await.0, 402);

    let app = spawn_reconciling(dir, "3600").await;
    eventually(WEBHOOK_WAIT, || entitled(&app, &org)).await;
    let succeeded_event = stripe.event_id("payment_intent.succeeded", &paid).await;
    let actions = app.actions(&org).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["eventId"], succeeded_event.as_str());
    assert_eq!(actions[0]["externalId"], paid.as_str());
    assert_eq!(actions[0]["status"], "delivered");

    let failed_event = stripe
        .event_id("payment_intent.payment_failed", &declined)
        .await;
    let failed_actions = eventually(WEBHOOK_WAIT, || async {
        let actions = app.actions(&declined_org).await;
        (!actions.is_empty()).then_some(actions)
    })
    .await;
    assert_eq!(failed_actions.len(), 1);
    assert_eq!(failed_actions[0]["status"], "failed");
    assert_eq!(failed_actions[0]["eventId"], failed_event.as_str());
    assert_eq!(
        app.entitlements(&declined_org).await["entitlements"][SKU],
        false
    );
    assert!(app.metric("entitlements_reconciled_events_total").await >= 2);

    // The webhooks arriving late change nothing.
    deliver_late(&app, &stripe, &succeeded_event).await;
    deliver_late(&app, &stripe, &failed_event).await;
    assert_eq!(app.actions(&org).await.len(), 1);
    assert_eq!(app.actions(&declined_org).await.len(), 1);
    assert_eq!(app.entitlements(&org).await["seq"], 1);
}

#[tokio::test]
async fn payments_whose_webhooks_never_come_are_applied_by_the_next_pass() {
    let stripe = LocalStripe::new();
    let app = spawn_reconciling(std::sync::Arc::new(tempfile::tempdir().unwrap()), "1").await;
    // The service is up, but no webhook endpoint points at it.
    let org = unique_org("rec-live");
    let paid = open_intent(&stripe, &org).await;
    assert_eq!(stripe.pay(&paid, GOOD_CARD).await.0, 200);
    eventually(WEBHOOK_WAIT, || entitled(&app, &org)).await;
    let event_id = stripe.event_id("payment_intent.succeeded", &paid).await;
    assert_eq!(app.actions(&org).await[0]["eventId"], event_id.as_str());
    assert!(app.metric("entitlements_reconciled_events_total").await >= 1);
    // Later passes (every second) list it again, and the webhook arrives
    // late: still one action. (The metric also counts other tests' events:
    // localstripe is shared, and this app applies every org's.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    deliver_late(&app, &stripe, &event_id).await;
    let actions = app.actions(&org).await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(app.entitlements(&org).await["seq"], 1);
}

#[tokio::test]
async fn an_unreachable_stripe_neither_delays_start_up_nor_stops_the_service() {
    let app = spawn(&[("ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS", "1")]).await; // api_base: a closed port
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    app.deliver(&succeeded("evt_up", "pi_up", "acme")).await;
    assert_eq!(app.metric("entitlements_reconciled_events_total").await, 0);
    let body: Value = app
        .get("acme", "/v1/entitlements")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["entitlements"][SKU], true);
}
