//! The Stripe catalog against localstripe: each configured product becomes
//! a Product whose id is its SKU with one active Price (`lookup_key` = SKU),
//! kept in place across amount changes, concurrent starts and a Stripe that
//! cannot be reached at start.
//!
//! localstripe has Products but no Prices; `tests/support/localstripe_launcher.py`
//! adds Prices with Stripe's rules for `lookup_key` and `transfer_lookup_key`.
//! Every test uses SKUs of its own, since localstripe is shared by the run.

mod common;

use std::time::Duration;

use common::localstripe::*;
use common::*;
use entitlements::configuration::{ProductSettings, Settings};
use serde_json::{json, Value};

const CATALOG_WAIT: Duration = Duration::from_secs(90);

fn unique_sku(tag: &str) -> String {
    // Stripe Product ids and the contract's SKUs: `A-Za-z0-9_-`.
    unique_org(&format!("sku-{tag}"))
}

fn product(sku: &str, name: &str, amount: i64) -> ProductSettings {
    ProductSettings {
        sku: sku.to_owned(),
        name: name.to_owned(),
        amount,
        currency: "usd".into(),
    }
}

/// Settings on a fresh directory selling `products`, with Stripe at `api_base`.
fn settings_with(
    api_base: &str,
    products: Vec<ProductSettings>,
) -> (std::sync::Arc<tempfile::TempDir>, Settings) {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut settings = config(
        dir.path(),
        &[
            ("ENTITLEMENTS__STRIPE__API_BASE", api_base),
            ("ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS", "0"),
        ],
    );
    settings.products = products;
    (dir, settings)
}

async fn spawn_selling(products: Vec<ProductSettings>) -> TestApp {
    let (dir, settings) = settings_with(&localstripe_url(), products);
    spawn_with(dir, settings).await
}

async fn catalog_in_place(app: &TestApp) {
    eventually(CATALOG_WAIT, || async {
        (app.metric("entitlements_stripe_catalog_pending_products")
            .await
            == 0)
            .then_some(())
    })
    .await;
}

/// Every Price localstripe holds for the Product `sku`, active or not.
async fn prices_of(stripe: &LocalStripe, sku: &str) -> Vec<Value> {
    stripe.list_all(&format!("/v1/prices?product={sku}")).await
}

fn active(prices: &[Value]) -> Vec<&Value> {
    prices.iter().filter(|p| p["active"] == true).collect()
}

#[tokio::test]
async fn each_product_gets_a_product_and_one_active_price_and_intents_carry_it() {
    let stripe = LocalStripe::new();
    let (first, second) = (unique_sku("a"), unique_sku("b"));
    let app = spawn_selling(vec![
        product(&first, "First Pack", 1500),
        product(&second, "Second Pack", 4200),
    ])
    .await;
    catalog_in_place(&app).await;

    for (sku, name, amount) in [(&first, "First Pack", 1500), (&second, "Second Pack", 4200)] {
        let stripe_product = stripe.get(&format!("/v1/products/{sku}")).await;
        assert_eq!(stripe_product["name"], name);
        assert_eq!(stripe_product["active"], true);
        let prices = prices_of(&stripe, sku).await;
        assert_eq!(prices.len(), 1, "{prices:?}");
        let price = &prices[0];
        assert_eq!(price["active"], true);
        assert_eq!(price["lookup_key"], sku.as_str());
        assert_eq!(price["unit_amount"], amount);
        assert_eq!(price["currency"], "usd");

        let org = unique_org("catalog");
        let intent = create_intent(&app, &org, sku).await;
        let pi = stripe.payment_intent(&id_of(&intent)).await;
        assert_eq!(pi["metadata"]["price_id"], price["id"], "{pi}");
        assert_eq!(pi["metadata"]["sku"], sku.as_str());
        assert_eq!(pi["amount"], amount);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_changed_amount_gets_a_new_price_and_the_old_one_is_deactivated() {
    let stripe = LocalStripe::new();
    let sku = unique_sku("change");

    let app = spawn_selling(vec![product(&sku, "Pack", 1500)]).await;
    catalog_in_place(&app).await;
    app.stop().await;
    let original = prices_of(&stripe, &sku).await;
    assert_eq!(original.len(), 1, "{original:?}");

    // A new amount and name: one new Price, the old one inactive and
    // without the lookup key, the Product renamed.
    let app = spawn_selling(vec![product(&sku, "Pack, renamed", 1800)]).await;
    catalog_in_place(&app).await;
    let prices = prices_of(&stripe, &sku).await;
    assert_eq!(prices.len(), 2, "{prices:?}");
    let now = active(&prices);
    assert_eq!(now.len(), 1, "{prices:?}");
    assert_eq!(now[0]["unit_amount"], 1800);
    assert_eq!(now[0]["lookup_key"], sku.as_str());
    let old = prices
        .iter()
        .find(|p| p["id"] == original[0]["id"])
        .unwrap();
    assert_eq!(old["active"], false, "{old}");
    assert_eq!(old["lookup_key"], Value::Null, "{old}");
    assert_eq!(
        stripe.get(&format!("/v1/products/{sku}")).await["name"],
        "Pack, renamed"
    );

    let org = unique_org("changed");
    let intent = create_intent(&app, &org, &sku).await;
    assert_eq!(intent["amount"], 1800);
    let pi = stripe.payment_intent(&id_of(&intent)).await;
    assert_eq!(pi["metadata"]["price_id"], now[0]["id"]);
    app.stop().await;

    // Back to the first amount: the earlier Price stays retired and a new
    // one takes the lookup key (a replayed creation would hand back the
    // inactive Price).
    let app = spawn_selling(vec![product(&sku, "Pack", 1500)]).await;
    catalog_in_place(&app).await;
    let prices = prices_of(&stripe, &sku).await;
    assert_eq!(prices.len(), 3, "{prices:?}");
    let now = active(&prices);
    assert_eq!(now.len(), 1, "{prices:?}");
    assert_eq!(now[0]["unit_amount"], 1500);
    assert_ne!(now[0]["id"], original[0]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn nodes_starting_together_make_one_product_and_one_price() {
    let stripe = LocalStripe::new();
    let sku = unique_sku("together");
    let apps = futures_util::future::join_all(
        (0..4).map(|_| spawn_selling(vec![product(&sku, "Shared Pack", 2500)])),
    )
    .await;
    for app in &apps {
        catalog_in_place(app).await;
    }
    let prices = prices_of(&stripe, &sku).await;
    assert_eq!(prices.len(), 1, "one Price for four nodes: {prices:?}");
    assert_eq!(prices[0]["active"], true);
    let products: Vec<Value> = stripe
        .list_all("/v1/products")
        .await
        .into_iter()
        .filter(|p| p["id"] == sku.as_str())
        .collect();
    assert_eq!(products.len(), 1);

    for app in &apps {
        let intent = create_intent(app, &unique_org("together"), &sku).await;
        let pi = stripe.payment_intent(&id_of(&intent)).await;
        assert_eq!(pi["metadata"]["price_id"], prices[0]["id"]);
    }
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn start_up_does_not_wait_for_stripe_and_the_catalog_lands_once_it_answers() {
    let stripe = LocalStripe::new();
    let sku = unique_sku("late");
    // A port with nothing behind it yet: Stripe "down".
    let port = common::process::free_port();
    let (dir, settings) = settings_with(
        &format!("http://127.0.0.1:{port}"),
        vec![product(&sku, "Late Pack", 3300)],
    );
    let app = spawn_with(dir, settings).await;

    // Started and serving while Stripe cannot be reached.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        app.metric("entitlements_stripe_catalog_pending_products")
            .await,
        1
    );
    let res = app
        .post(
            &unique_org("late"),
            "/v1/billing/payment-intents",
            json!({ "sku": sku }),
        )
        .await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stripe_error", "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.metric("entitlements_stripe_catalog_pending_products")
            .await,
        1,
        "nothing can be in place while Stripe is unreachable"
    );

    // Stripe comes back on that port (a plain TCP relay to localstripe).
    let relay = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let target = localstripe_url().trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    catalog_in_place(&app).await;
    let prices = prices_of(&stripe, &sku).await;
    assert_eq!(prices.len(), 1, "{prices:?}");
    assert_eq!(prices[0]["unit_amount"], 3300);

    let intent = create_intent(&app, &unique_org("late"), &sku).await;
    let pi = stripe.payment_intent(&id_of(&intent)).await;
    assert_eq!(pi["metadata"]["price_id"], prices[0]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_purchase_opened_before_the_price_was_known_gets_its_payment_intent_back() {
    let stripe = LocalStripe::new();
    let sku = unique_sku("before");
    let org = unique_org("before");
    // An earlier attempt at this purchase, made while the catalog was not in
    // place: the same key, no `price_id` (the service's key: org, SKU,
    // terms, purchases so far).
    let key = format!("entitlements:{org}:{sku}:1900usd:0");
    let res = stripe
        .client
        .post(format!("{}/v1/payment_intents", stripe.base))
        .basic_auth(SECRET_KEY, None::<&str>)
        .header("Idempotency-Key", &key)
        .form(&[
            ("amount", "1900"),
            ("currency", "usd"),
            ("metadata[org_id]", org.as_str()),
            ("metadata[sku]", sku.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let earlier: Value = res.json().await.unwrap();

    let app = spawn_selling(vec![product(&sku, "Before Pack", 1900)]).await;
    catalog_in_place(&app).await;
    let intent = create_intent(&app, &org, &sku).await;
    assert_eq!(
        intent["paymentIntentId"], earlier["id"],
        "one PaymentIntent per purchase, whether or not the price was known"
    );
    assert_eq!(stripe.payment_intents_for(&org, &sku).await.len(), 1);
    app.stop().await;
}
