//! The contract's plain endpoints, errors and auth, on the embedded store.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = spawn(&[]).await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("# TYPE entitlements_persist_rows counter"),
        "{text}"
    );
    assert!(text.contains("entitlements_live_org_actors 0"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn products_list_every_sku_with_the_orgs_state() {
    let app = spawn(&[]).await;
    let res = app.get("acme", "/v1/billing/products").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let products = body["products"].as_array().unwrap();
    assert_eq!(products.len(), 2);
    assert_eq!(
        products[0],
        json!({"sku": SKU, "name": "Compliance Pack", "amount": 99900, "currency": "usd", "entitled": false})
    );
    assert_eq!(products[1]["sku"], OTHER_SKU);
}

#[tokio::test]
async fn simulate_success_entitles_and_records_a_simulated_action() {
    let app = spawn(&[]).await;
    let res = app
        .post("acme", "/v1/billing/simulate-success", json!({"sku": SKU}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"entitlements": {SKU: true, OTHER_SKU: false}}));

    let ent = app.entitlements("acme").await;
    assert_eq!(
        ent,
        json!({"orgId": "acme", "entitlements": {SKU: true, OTHER_SKU: false}, "seq": 1})
    );

    let actions = app.actions("acme").await;
    assert_eq!(actions.len(), 1);
    let a = &actions[0];
    assert_eq!(a["kind"], "payment");
    assert_eq!(a["status"], "delivered");
    assert_eq!(a["sku"], SKU);
    assert_eq!(a["seq"], 1);
    assert_eq!(a["simulated"], true);
    assert_eq!(a["eventId"], Value::Null);
    assert_eq!(a["amount"], 99900);
    assert_eq!(a["currency"], "usd");
    assert!(a["externalId"].as_str().unwrap().starts_with("pi_"));
    assert!(a["createdAt"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "amount",
            "createdAt",
            "currency",
            "eventId",
            "externalId",
            "id",
            "kind",
            "seq",
            "simulated",
            "sku",
            "status"
        ]
    );

    // Already entitled: no second purchase, no second action.
    let res = app
        .post("acme", "/v1/billing/simulate-success", json!({"sku": SKU}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.actions("acme").await.len(), 1);
    // The products view agrees.
    let body: Value = app
        .get("acme", "/v1/billing/products")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["products"][0]["entitled"], true);
}

#[tokio::test]
async fn simulate_success_is_not_found_in_production() {
    let app = spawn(&[("ENTITLEMENTS__SERVER__ENVIRONMENT", "production")]).await;
    let res = app
        .post("acme", "/v1/billing/simulate-success", json!({"sku": SKU}))
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    assert_eq!(app.entitlements("acme").await["seq"], 0);
}

#[tokio::test]
async fn unknown_sku_is_rejected_without_effect() {
    let app = spawn(&[]).await;
    for path in [
        "/v1/billing/simulate-success",
        "/v1/billing/payment-intents",
    ] {
        let res = app.post("acme", path, json!({"sku": "nope"})).await;
        assert_eq!(res.status(), 400, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unknown_sku", "{path}");
        assert!(body["error"]["message"].as_str().unwrap().contains("nope"));
    }
    assert!(app.actions("acme").await.is_empty());
}

#[tokio::test]
async fn payment_intent_for_an_owned_sku_is_a_conflict() {
    let app = spawn(&[]).await;
    app.post("acme", "/v1/billing/simulate-success", json!({"sku": SKU}))
        .await;
    let res = app
        .post("acme", "/v1/billing/payment-intents", json!({"sku": SKU}))
        .await;
    assert_eq!(res.status(), 409);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "already_entitled"
    );
}

#[tokio::test]
async fn stripe_unreachable_is_a_bad_gateway_without_secrets() {
    let app = spawn(&[]).await; // api_base points at a closed port
    let res = app
        .post("acme", "/v1/billing/payment-intents", json!({"sku": SKU}))
        .await;
    assert_eq!(res.status(), 502);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stripe_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("sk_test_entitlements"), "{message}");
}

#[tokio::test]
async fn actions_limit_is_validated_and_newest_come_first() {
    let app = spawn(&[]).await;
    for (i, pi) in ["pi_a", "pi_b", "pi_c"].iter().enumerate() {
        let res = app.webhook(&failed(&format!("evt_f{i}"), pi, "acme")).await;
        assert_eq!(res.status(), 200);
    }
    let body: Value = app
        .get("acme", "/v1/actions?limit=2")
        .await
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 2]);
    let body: Value = app.get("acme", "/v1/actions").await.json().await.unwrap();
    assert_eq!(body["actions"].as_array().unwrap().len(), 3);
    for bad in ["0", "501", "-1", "ten"] {
        let res = app.get("acme", &format!("/v1/actions?limit={bad}")).await;
        assert_eq!(res.status(), 400, "limit={bad}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_request"
        );
    }
}

#[tokio::test]
async fn tokens_are_required_valid_and_scoped_to_their_org() {
    let app = spawn(&[]).await;
    let expired = token(JWT_SECRET, "acme", unix_now() - 10);
    let forged = token("some-other-secret", "acme", unix_now() + 3600);
    let bad_org = token(JWT_SECRET, "acme/../other", unix_now() + 3600);
    for auth in [
        None,
        Some("garbage".to_string()),
        Some(expired),
        Some(forged),
        Some(bad_org),
    ] {
        let mut req = app.client.get(app.url("/v1/entitlements"));
        if let Some(t) = &auth {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "unauthorized"
        );
    }
    // The query-string token is for the stream only.
    let res = app
        .client
        .get(app.url(&format!(
            "/v1/entitlements?access_token={}",
            app.token("acme")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // Org isolation: one org's purchase is invisible to another.
    app.post("acme", "/v1/billing/simulate-success", json!({"sku": SKU}))
        .await;
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], true);
    let other = app.entitlements("globex").await;
    assert_eq!(
        other,
        json!({"orgId": "globex", "entitlements": {SKU: false, OTHER_SKU: false}, "seq": 0})
    );
    assert!(app.actions("globex").await.is_empty());
}

#[tokio::test]
async fn malformed_requests_use_the_error_envelope() {
    let app = spawn(&[]).await;
    let res = app
        .client
        .post(app.url("/v1/billing/simulate-success"))
        .bearer_auth(app.token("acme"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_request"
    );

    let res = app
        .client
        .get(app.url("/no/such/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );

    let res = app
        .client
        .delete(app.url("/v1/entitlements"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn the_demo_page_carries_a_token_only_in_development() {
    let app = spawn(&[]).await;
    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    let token = html
        .split(r#"name="entitlements-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    assert!(!token.is_empty());
    // The token is a working token for the demo org.
    let res = app
        .client
        .get(app.url("/v1/entitlements"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["orgId"], "demo");

    let prod = spawn(&[("ENTITLEMENTS__SERVER__ENVIRONMENT", "production")]).await;
    let html = prod
        .client
        .get(prod.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"name="entitlements-token" content="""#));
    assert!(html.contains(r#"content="production""#));
}
