//! `POST /webhooks/stripe`: verification, effects, exactly-once, ordering.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn assert_error(res: reqwest::Response, status: u16, code: &str) {
    assert_eq!(res.status(), status);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn every_rejection_leaves_no_trace() {
    let app = spawn(&[]).await;
    let event = succeeded("evt_reject", "pi_reject", "acme");
    let body = serde_json::to_vec(&event).unwrap();
    let now = unix_now() as i64;
    let good_sig = v1_signature(&body, WEBHOOK_SECRET, now);

    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "forged",
            body.clone(),
            Some(sign(&body, "whsec_attacker", now)),
        ),
        (
            "stale",
            body.clone(),
            Some(sign(&body, WEBHOOK_SECRET, now - 301)),
        ),
        (
            "future",
            body.clone(),
            // Well past the tolerance: the service reads its clock a moment
            // after `now`, and a second boundary in between would bring
            // `now + 301` back within 300 s.
            Some(sign(&body, WEBHOOK_SECRET, now + 310)),
        ),
        ("missing header", body.clone(), None),
        (
            "garbled header",
            body.clone(),
            Some("t=banana,v1=xyz".into()),
        ),
        ("empty header", body.clone(), Some(String::new())),
        (
            "v0 only",
            body.clone(),
            Some(format!("t={now},v0={good_sig}")),
        ),
        (
            "tampered body",
            serde_json::to_vec(&succeeded("evt_reject", "pi_reject", "other")).unwrap(),
            Some(sign(&body, WEBHOOK_SECRET, now)),
        ),
    ];
    for (name, body, header) in cases {
        let res = app.webhook_raw(body, header).await;
        assert_eq!(res.status(), 400, "{name}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_signature", "{name}");
    }

    for (name, body) in [
        ("not json", b"this is not json".to_vec()),
        ("not an event", br#"{"hello":"world"}"#.to_vec()),
        (
            "event without object",
            br#"{"id":"evt_x","type":"payment_intent.succeeded","data":{}}"#.to_vec(),
        ),
        (
            "payment intent of ours missing fields",
            br#"{"id":"evt_y","type":"payment_intent.succeeded","data":{"object":{"id":"pi_y",
                "metadata":{"org_id":"acme","sku":"compliance-pack"}}}}"#
                .to_vec(),
        ),
    ] {
        let header = sign(&body, WEBHOOK_SECRET, now);
        let res = app.webhook_raw(body, Some(header)).await;
        assert_eq!(res.status(), 400, "{name}");
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_payload",
            "{name}"
        );
    }

    let mut huge = event.clone();
    huge["data"]["object"]["description"] = json!("x".repeat(300_000));
    let huge = serde_json::to_vec(&huge).unwrap();
    let header = sign(&huge, WEBHOOK_SECRET, now);
    assert_error(
        app.webhook_raw(huge, Some(header)).await,
        413,
        "payload_too_large",
    )
    .await;

    assert!(app.actions("acme").await.is_empty());
    assert!(app.actions("other").await.is_empty());
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], false);
}

#[tokio::test]
async fn tolerance_is_inclusive_and_a_rotated_secret_still_verifies() {
    let app = spawn(&[]).await;
    let event = succeeded("evt_edge", "pi_edge", "acme");
    let body = serde_json::to_vec(&event).unwrap();
    let t = unix_now() as i64 - 290;
    let res = app
        .webhook_raw(body.clone(), Some(sign(&body, OLD_WEBHOOK_SECRET, t)))
        .await;
    assert_eq!(res.status(), 200);
    // Several v1 values: one matching is enough.
    let event = succeeded("evt_multi", "pi_multi", "acme2");
    let body = serde_json::to_vec(&event).unwrap();
    let now = unix_now() as i64;
    let header = format!(
        "t={now},v1={},v1={}",
        "0".repeat(64),
        v1_signature(&body, WEBHOOK_SECRET, now)
    );
    assert_eq!(app.webhook_raw(body, Some(header)).await.status(), 200);
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], true);
    assert_eq!(app.entitlements("acme2").await["entitlements"][SKU], true);
}

#[tokio::test]
async fn success_entitles_failure_records_and_unknown_types_are_acknowledged() {
    let app = spawn(&[]).await;
    let res = app.webhook(&failed("evt_f1", "pi_1", "acme")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"received": true})
    );
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], false);

    let res = app.webhook(&succeeded("evt_s1", "pi_1", "acme")).await;
    assert_eq!(res.status(), 200);
    let ent = app.entitlements("acme").await;
    assert_eq!(ent["entitlements"], json!({SKU: true, OTHER_SKU: false}));
    assert_eq!(ent["seq"], 2);

    let actions = app.actions("acme").await;
    assert_eq!(actions.len(), 2);
    let (newest, oldest) = (&actions[0], &actions[1]);
    assert_eq!(
        (newest["kind"].as_str(), newest["status"].as_str()),
        (Some("payment"), Some("delivered"))
    );
    assert_eq!(newest["externalId"], "pi_1");
    assert_eq!(newest["eventId"], "evt_s1");
    assert_eq!(newest["simulated"], false);
    assert_eq!(
        (oldest["kind"].as_str(), oldest["status"].as_str()),
        (Some("payment"), Some("failed"))
    );
    assert_eq!(oldest["eventId"], "evt_f1");

    let other = json!({"id": "evt_c1", "object": "event", "type": "customer.created", "data": {"object": {"id": "cus_1"}}});
    let res = app.webhook(&other).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"received": true})
    );
    // A payment intent that is not ours (no metadata) is acknowledged, not applied.
    let mut foreign = succeeded("evt_foreign", "pi_foreign", "acme");
    foreign["data"]["object"]["metadata"] = json!({});
    app.deliver(&foreign).await;
    assert_eq!(app.actions("acme").await.len(), 2);
}

#[tokio::test]
async fn concurrent_duplicates_have_one_effect() {
    let app = spawn(&[]).await;
    let event = succeeded("evt_dup", "pi_dup", "acme");
    let statuses = app.webhook_statuses(std::iter::repeat_n(&event, 40)).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // A second event about the same PaymentIntent is the same payment.
    app.deliver(&succeeded("evt_dup_2", "pi_dup", "acme")).await;
    let actions = app.actions("acme").await;
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(app.entitlements("acme").await["seq"], 1);
    // Each failed attempt is its own action, but each only once.
    for _ in 0..3 {
        for id in ["evt_fail_a", "evt_fail_b"] {
            app.deliver(&failed(id, "pi_dup2", "acme")).await;
        }
    }
    assert_eq!(app.actions("acme").await.len(), 3);
}

#[tokio::test]
async fn redelivery_after_a_restart_is_a_duplicate() {
    let app = spawn(&[]).await;
    app.deliver(&succeeded("evt_r1", "pi_r1", "acme")).await;
    app.deliver(&failed("evt_r2", "pi_r2", "acme")).await;
    let dir = app.stop().await;

    let app = spawn_in(dir, &[]).await;
    let ent = app.entitlements("acme").await;
    assert_eq!(ent["entitlements"][SKU], true);
    assert_eq!(ent["seq"], 2);
    app.deliver(&succeeded("evt_r1", "pi_r1", "acme")).await;
    app.deliver(&failed("evt_r2", "pi_r2", "acme")).await;
    assert_eq!(app.actions("acme").await.len(), 2);
    // The seq continues where it left off.
    app.deliver(&refunded("evt_r3", "pi_r1", Some(("acme", SKU))))
        .await;
    let ent = app.entitlements("acme").await;
    assert_eq!(ent["seq"], 3);
    assert_eq!(ent["entitlements"][SKU], false);
}

#[tokio::test]
async fn a_refund_or_dispute_before_the_success_still_wins() {
    let app = spawn(&[]).await;
    app.deliver(&refunded("evt_ref", "pi_ooo", Some(("acme", SKU))))
        .await;
    app.deliver(&succeeded("evt_ok", "pi_ooo", "acme")).await;
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], false);
    let kinds: Vec<String> = app
        .actions("acme")
        .await
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["payment", "refund"]);

    app.deliver(&dispute_created(
        "evt_dsp",
        "pi_ooo2",
        Some(("globex", SKU)),
    ))
    .await;
    app.deliver(&succeeded("evt_ok2", "pi_ooo2", "globex"))
        .await;
    assert_eq!(app.entitlements("globex").await["entitlements"][SKU], false);
}

#[tokio::test]
async fn refunds_and_disputes_revoke_what_the_payment_bought() {
    let app = spawn(&[]).await;
    app.deliver(&succeeded("evt_p", "pi_p", "acme")).await;
    // A partial refund changes nothing.
    let mut partial = refunded("evt_partial", "pi_p", Some(("acme", SKU)));
    partial["data"]["object"]["refunded"] = json!(false);
    partial["data"]["object"]["amount_refunded"] = json!(100);
    app.deliver(&partial).await;
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], true);
    // A charge without metadata: its PaymentIntent leads back to the org.
    app.deliver(&refunded("evt_full", "pi_p", None)).await;
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], false);
    let refund = &app.actions("acme").await[0];
    assert_eq!(refund["kind"], "refund");
    assert_eq!(refund["status"], "delivered");
    assert_eq!(refund["externalId"], "pi_p");
    assert_eq!(refund["sku"], SKU);

    // Buying again after the refund, then a dispute without metadata.
    app.deliver(&succeeded("evt_p2", "pi_p2", "acme")).await;
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], true);
    app.deliver(&dispute_created("evt_d2", "pi_p2", None)).await;
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], false);
    assert_eq!(app.actions("acme").await[0]["kind"], "dispute");

    // A metadata-less refund of a PaymentIntent the store has never seen can
    // only be placed by asking Stripe; Stripe is unreachable here, so the
    // event is refused (Stripe retries it) and nothing is recorded.
    let res = app
        .webhook(&refunded("evt_unknown", "pi_never_seen", None))
        .await;
    assert_error(res, 502, "stripe_error").await;
    assert_eq!(app.actions("acme").await.len(), 4);
}

#[tokio::test]
async fn a_full_mailbox_is_a_503_and_stripe_retries_complete_the_work() {
    // A "Stripe" that accepts connections and never answers: the org actor
    // waits on it while opening a PaymentIntent, so its mailbox fills.
    let stalled_stripe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_base = format!("http://{}", stalled_stripe.local_addr().unwrap());
    let app = spawn(&[
        ("ENTITLEMENTS__ORGS__MAILBOX", "1"),
        ("ENTITLEMENTS__STRIPE__API_BASE", &api_base),
    ])
    .await;
    let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        let mut accepted_tx = Some(accepted_tx);
        while let Ok((conn, _)) = stalled_stripe.accept().await {
            connections.push(conn);
            if let Some(tx) = accepted_tx.take() {
                let _ = tx.send(());
            }
        }
    });
    let opening = tokio::spawn({
        let (client, url, token) = (
            app.client.clone(),
            app.url("/v1/billing/payment-intents"),
            app.token("busy"),
        );
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"sku": SKU}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // The org actor is now waiting on "Stripe".
    tokio::time::timeout(std::time::Duration::from_secs(10), accepted)
        .await
        .unwrap()
        .unwrap();

    let events: Vec<Value> = (0..60)
        .map(|i| failed(&format!("evt_burst_{i}"), &format!("pi_burst_{i}"), "busy"))
        .collect();
    let app_ref = &app;
    let mut sends: futures_util::stream::FuturesUnordered<_> = events
        .iter()
        .map(|e| async move {
            let app = app_ref;
            let res = app.webhook(e).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (e, status, body["error"]["code"].as_str().map(str::to_owned))
        })
        .collect();
    let mut pending: Vec<&Value> = Vec::new();
    let mut overloaded = 0;
    // At most a couple fit the mailbox (and wait); the rest are refused at once.
    while overloaded < 55 {
        let (event, status, code) = sends.next().await.unwrap();
        assert_eq!(
            status, 503,
            "only a full mailbox answers before Stripe does"
        );
        assert_eq!(code.as_deref(), Some("overloaded"));
        overloaded += 1;
        pending.push(event);
    }
    // "Stripe" answers at last (the connection closes): the org drains.
    held.abort();
    assert_eq!(opening.await.unwrap(), 502);
    while let Some((event, status, _)) = sends.next().await {
        if status != 200 {
            assert_eq!(status, 503);
            pending.push(event);
        }
    }
    // Retried as Stripe would, until each is taken. Each round waits for
    // every answer, so the org's mailbox is empty when the next begins and
    // at least one of its webhooks gets in: a round that takes none is a
    // bug, not load. (A fixed number of rounds was a clock in disguise: with
    // a mailbox of one, a slow machine takes one a round.)
    while !pending.is_empty() {
        let results = futures_util::future::join_all(pending.iter().map(|e| app.webhook(e))).await;
        let mut retry = Vec::new();
        for (event, res) in pending.iter().zip(results) {
            match res.status().as_u16() {
                200 => {}
                503 => {
                    let body: Value = res.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "overloaded");
                    retry.push(*event);
                }
                other => panic!("unexpected status {other}"),
            }
        }
        assert!(
            retry.len() < pending.len(),
            "none of {} webhooks taken with the org's mailbox empty",
            pending.len()
        );
        pending = retry;
    }
    let actions = app.actions("busy").await;
    assert_eq!(actions.len(), 60);
    let ids: HashSet<&str> = actions
        .iter()
        .map(|a| a["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 60);
    let seqs: HashSet<u64> = actions.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=60).collect());
}

/// A Stripe account serves other integrations: their correctly signed
/// events are acknowledged and recorded nowhere, whatever their objects
/// lack, unless they name one of our orgs or a PaymentIntent of ours.
#[tokio::test]
async fn signed_events_that_are_not_ours_are_acknowledged_whatever_they_lack() {
    let app = spawn(&[]).await;
    app.deliver(&succeeded("evt_n_pay", "pi_ours", "acme"))
        .await;
    let foreign = [
        // A PaymentIntent of another integration: no metadata, no amount.
        json!({"id": "evt_n1", "type": "payment_intent.succeeded",
               "data": {"object": {"id": "pi_foreign", "metadata": {}}}}),
        json!({"id": "evt_n2", "type": "payment_intent.payment_failed",
               "data": {"object": {"id": "pi_foreign2"}}}),
        // A dispute naming no PaymentIntent and no org.
        json!({"id": "evt_n3", "type": "charge.dispute.created",
               "data": {"object": {"id": "dp_foreign"}}}),
    ];
    for event in &foreign {
        app.deliver(event).await;
    }
    // Unreadable but ours: by metadata, or by its PaymentIntent.
    let ours = [
        json!({"id": "evt_o1", "type": "charge.refunded",
               "data": {"object": {"id": "ch_1", "metadata": {"org_id": "acme"}}}}),
        json!({"id": "evt_o2", "type": "charge.refunded",
               "data": {"object": {"id": "ch_2", "payment_intent": "pi_ours"}}}),
    ];
    for event in &ours {
        let res = app.webhook(event).await;
        assert_eq!(res.status(), 400, "{}", event["id"]);
        assert_eq!(
            res.json::<Value>().await.unwrap()["error"]["code"],
            "invalid_payload"
        );
    }
    let actions = app.actions("acme").await;
    assert_eq!(actions.len(), 1, "only the payment: {actions:#?}");
    assert_eq!(app.entitlements("acme").await["entitlements"][SKU], true);
    let ignored = app
        .metric("entitlements_events_total{outcome=\"ignored\"}")
        .await;
    assert_eq!(
        ignored, 3,
        "a fresh app: only the foreign events were ignored"
    );
    let invalid = app
        .metric("entitlements_webhooks_total{outcome=\"invalid_payload\"}")
        .await;
    assert_eq!(invalid, 2);
}

/// Connections that send a webhook's headers and then stop: each is
/// answered 408 `request_timeout` and closed once `server.body_timeout_secs`
/// has passed, and a good webhook is served meanwhile.
#[tokio::test]
async fn bodies_that_never_arrive_are_cut_and_block_nobody() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SLOW: usize = 2000;
    // Both ends of every connection live in this process.
    raise_open_files_limit(2 * SLOW as u64 + 512);
    let app = spawn(&[("ENTITLEMENTS__SERVER__BODY_TIMEOUT_SECS", "2")]).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Stripe-Signature: t=1,v1=00\r\nContent-Length: 500\r\n\r\n{{\"id\":"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        slow.push(conn);
    }
    // Served while the slow connections are held open.
    app.deliver(&succeeded("evt_slow_good", "pi_slow_good", "acme"))
        .await;

    let answers = slow.into_iter().map(|mut conn| async move {
        let mut answer = Vec::new();
        // The server closes the connection after its answer: read to EOF.
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
            .await
            .expect("the slow connection was closed in time")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    });
    for answer in futures_util::future::join_all(answers).await {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    let timed_out = app
        .metric("entitlements_webhooks_total{outcome=\"request_timeout\"}")
        .await;
    assert_eq!(timed_out, SLOW as u64);
    assert_eq!(app.actions("acme").await.len(), 1);
}

/// Raises this process's soft limit on open files to `wanted` (at most the
/// hard limit).
fn raise_open_files_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(wanted.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}
