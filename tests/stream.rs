//! The contract's stream, `GET /v1/stream`, over HTTP: snapshots, changes,
//! fan-out, resume with `Last-Event-ID` (from memory and from the store),
//! keep-alive, token expiry, slow clients and unsubscribing.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use common::sse::*;
use common::*;
use serde_json::{json, Value};

const SNAPSHOT: &str = "org.entitlements.snapshot";
const CHANGED: &str = "org.entitlements.changed";
const PAYMENT_FAILED: &str = "org.payment.failed";

/// Every test is bounded: nothing here may hang.
async fn bounded<F: Future<Output = ()>>(secs: u64, test: F) {
    tokio::time::timeout(Duration::from_secs(secs), test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"));
}

// ---------------------------------------------------------------------------
// Other helpers.

async fn connections_become(app: &TestApp, n: u64, within: Duration) {
    eventually(within, || async {
        (app.metric("entitlements_stream_connections").await == n).then_some(())
    })
    .await;
}

async fn simulate(app: &TestApp, org: &str, sku: &str) {
    let res = app
        .post(org, "/v1/billing/simulate-success", json!({ "sku": sku }))
        .await;
    assert_eq!(res.status(), 200, "simulate-success");
}

async fn deliver(app: &TestApp, event: &Value) {
    let res = app.webhook(event).await;
    let status = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(status, 200, "webhook {}: {body}", event["id"]);
}

fn succeeded_sku(event_id: &str, pi: &str, org: &str, sku: &str) -> Value {
    payment_intent_event(event_id, "payment_intent.succeeded", pi, org, sku)
}

/// action id by seq, from GET /v1/actions.
async fn action_ids(app: &TestApp, org: &str) -> BTreeMap<u64, String> {
    app.actions(org)
        .await
        .iter()
        .map(|a| {
            (
                a["seq"].as_u64().unwrap(),
                a["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ents(sku: bool, other: bool) -> Value {
    json!({ SKU: sku, OTHER_SKU: other })
}

fn assert_snapshot(frame: &Frame, org: &str, seq: u64, entitlements: Value) {
    assert_eq!(frame.event(), SNAPSHOT, "{frame:?}");
    assert_eq!(frame.id(), seq, "{frame:?}");
    assert_eq!(
        frame.json(),
        json!({ "orgId": org, "entitlements": entitlements, "seq": seq }),
        "{frame:?}"
    );
}

/// A changed event, checked whole: keys, id = seq, and every value.
fn assert_changed(
    frame: &Frame,
    org: &str,
    seq: u64,
    sku: &str,
    cause: &str,
    action_id: &str,
    entitlements: &Value,
) {
    assert_eq!(frame.event(), CHANGED, "{frame:?}");
    assert_eq!(frame.id(), seq, "{frame:?}");
    assert_eq!(
        frame.keys(),
        ["actionId", "cause", "entitlements", "orgId", "seq", "sku"],
        "{frame:?}"
    );
    assert_eq!(
        frame.json(),
        json!({ "orgId": org, "entitlements": entitlements, "seq": seq,
                "sku": sku, "cause": cause, "actionId": action_id }),
        "{frame:?}"
    );
}

fn assert_failed(frame: &Frame, org: &str, seq: u64, pi: &str, action_id: &str) {
    assert_eq!(frame.event(), PAYMENT_FAILED, "{frame:?}");
    assert_eq!(frame.id(), seq, "{frame:?}");
    assert_eq!(
        frame.keys(),
        ["actionId", "orgId", "paymentIntentId", "seq", "sku"],
        "{frame:?}"
    );
    assert_eq!(
        frame.json(),
        json!({ "orgId": org, "seq": seq, "sku": SKU,
                "paymentIntentId": pi, "actionId": action_id }),
        "{frame:?}"
    );
}

fn ids(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(Frame::id).collect()
}

/// `n` failed payments for `org`, `chunk` at a time; event ids `{tag}_{i}`.
async fn failed_payments(app: &TestApp, org: &str, tag: &str, n: usize, chunk: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| failed(&format!("evt_{tag}_{i}"), &format!("pi_{tag}_{i}"), org))
        .collect();
    for batch in events.chunks(chunk) {
        futures_util::future::join_all(batch.iter().map(|e| deliver(app, e))).await;
    }
}

// ---------------------------------------------------------------------------
// 1. The first event, and who may open a stream.

#[tokio::test]
async fn first_event_is_a_snapshot_with_header_or_query_token() {
    bounded(60, async {
        let app = spawn(&[]).await;
        simulate(&app, "acme", SKU).await;

        // Authorization header.
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 1, ents(true, false));

        // ?access_token= (what EventSource can do).
        let token = app.token("acme");
        let res = request_stream(&app, None, Some(&token), None).await;
        let mut q = SseClient::from_response(res);
        assert_snapshot(&q.next_event().await, "acme", 1, ents(true, false));

        // An org that never did anything: seq 0, every SKU listed, false.
        let mut fresh = open(&app, "newco").await;
        assert_snapshot(&fresh.next_event().await, "newco", 0, ents(false, false));

        // After the snapshot both connections are live.
        simulate(&app, "acme", OTHER_SKU).await;
        for s in [&mut s, &mut q] {
            let e = s.next_event().await;
            assert_eq!((e.event(), e.id()), (CHANGED, 2), "{e:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn stream_without_a_valid_token_is_401_with_the_error_envelope() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let now = unix_now();
        let cases: Vec<(&str, Option<String>, Option<String>)> = vec![
            ("no token", None, None),
            ("garbage header", Some("not-a-jwt".into()), None),
            ("garbage query", None, Some("not-a-jwt".into())),
            (
                "wrong secret",
                Some(token("another-secret", "acme", now + 3600)),
                None,
            ),
            (
                "wrong secret in query",
                None,
                Some(token("another-secret", "acme", now + 3600)),
            ),
            ("expired", Some(token(JWT_SECRET, "acme", now - 60)), None),
            (
                "expired in query",
                None,
                Some(token(JWT_SECRET, "acme", now - 60)),
            ),
            (
                "invalid org claim",
                Some(token(JWT_SECRET, "a/b", now + 3600)),
                None,
            ),
        ];
        for (name, bearer, query) in cases {
            let res = request_stream(&app, bearer.as_deref(), query.as_deref(), None).await;
            assert_eq!(res.status(), 401, "{name}");
            let body: Value = res
                .json()
                .await
                .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
            assert_eq!(body["error"]["code"], "unauthorized", "{name}: {body}");
            assert!(body["error"]["message"].is_string(), "{name}: {body}");
            assert_eq!(body.as_object().unwrap().len(), 1, "{name}: {body}");
            assert_eq!(
                body["error"].as_object().unwrap().len(),
                2,
                "{name}: {body}"
            );
        }
        // Nothing was left subscribed by the refused requests.
        assert_eq!(app.metric("entitlements_stream_connections").await, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Changes.

#[tokio::test]
async fn simulated_and_paid_changes_arrive_as_changed_events() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));

        simulate(&app, "acme", SKU).await;
        let simulated = s.next_event().await;

        deliver(
            &app,
            &succeeded_sku("evt_paid", "pi_paid", "acme", OTHER_SKU),
        )
        .await;
        let paid = s.next_event().await;

        let actions = action_ids(&app, "acme").await;
        assert_changed(
            &simulated,
            "acme",
            1,
            SKU,
            "simulated",
            &actions[&1],
            &ents(true, false),
        );
        assert_changed(
            &paid,
            "acme",
            2,
            OTHER_SKU,
            "payment",
            &actions[&2],
            &ents(true, true),
        );
        assert_eq!(actions[&2], "pay_pi_paid");

        // The stream agrees with GET /v1/entitlements.
        let now = app.entitlements("acme").await;
        assert_eq!(now["entitlements"], paid.json()["entitlements"]);
        assert_eq!(now["seq"], 2);
    })
    .await;
}

#[tokio::test]
async fn failed_payment_arrives_as_payment_failed() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));

        deliver(&app, &failed("evt_fail_1", "pi_f", "acme")).await;
        deliver(&app, &failed("evt_fail_2", "pi_f", "acme")).await;
        let first = s.next_event().await;
        let second = s.next_event().await;
        let actions = action_ids(&app, "acme").await;
        assert_failed(&first, "acme", 1, "pi_f", &actions[&1]);
        assert_failed(&second, "acme", 2, "pi_f", &actions[&2]);
        assert_ne!(actions[&1], actions[&2], "each attempt is its own action");

        // Entitlements unchanged.
        assert_eq!(
            app.entitlements("acme").await["entitlements"],
            ents(false, false)
        );
    })
    .await;
}

#[tokio::test]
async fn refund_and_dispute_arrive_as_changed_events_that_revoke() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));

        deliver(&app, &succeeded_sku("evt_p1", "pi_1", "acme", SKU)).await;
        deliver(&app, &succeeded_sku("evt_p2", "pi_2", "acme", OTHER_SKU)).await;
        deliver(&app, &refunded("evt_r", "pi_1", Some(("acme", SKU)))).await;
        // No metadata: the PaymentIntent leads back to the org and SKU.
        deliver(&app, &dispute_created("evt_d", "pi_2", None)).await;

        let frames = [
            s.next_event().await,
            s.next_event().await,
            s.next_event().await,
            s.next_event().await,
        ];
        let actions = action_ids(&app, "acme").await;
        let expected = [
            (1, SKU, "payment", ents(true, false)),
            (2, OTHER_SKU, "payment", ents(true, true)),
            (3, SKU, "refund", ents(false, true)),
            (4, OTHER_SKU, "dispute", ents(false, false)),
        ];
        for (frame, (seq, sku, cause, ents)) in frames.iter().zip(expected) {
            assert_changed(frame, "acme", seq, sku, cause, &actions[&seq], &ents);
        }
        assert_eq!(
            app.entitlements("acme").await["entitlements"],
            ents(false, false)
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Fan-out.

#[tokio::test]
async fn every_tab_of_an_org_gets_every_event_and_other_orgs_get_none() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let mut tabs = Vec::new();
        for _ in 0..3 {
            let mut t = open(&app, "acme").await;
            assert_snapshot(&t.next_event().await, "acme", 0, ents(false, false));
            tabs.push(t);
        }
        let mut other = open(&app, "globex").await;
        assert_snapshot(&other.next_event().await, "globex", 0, ents(false, false));

        simulate(&app, "acme", SKU).await;
        deliver(&app, &failed("evt_f1", "pi_f1", "acme")).await;
        deliver(&app, &succeeded_sku("evt_s2", "pi_s2", "acme", OTHER_SKU)).await;
        deliver(
            &app,
            &refunded("evt_r2", "pi_s2", Some(("acme", OTHER_SKU))),
        )
        .await;
        deliver(&app, &failed("evt_f2", "pi_f2", "acme")).await;

        let mut seen = Vec::new();
        for t in &mut tabs {
            let mut frames = Vec::new();
            for _ in 0..5 {
                frames.push(t.next_event().await);
            }
            assert_eq!(ids(&frames), [1, 2, 3, 4, 5]);
            for f in &frames {
                assert_eq!(f.json()["orgId"], "acme", "{f:?}");
            }
            seen.push(frames);
        }
        assert_eq!(seen[0], seen[1], "tabs saw different events");
        assert_eq!(seen[0], seen[2], "tabs saw different events");

        // The other org's stream got none of it...
        other.assert_quiet(Duration::from_secs(1)).await;
        // ...and is alive: its own change is the next thing it gets.
        simulate(&app, "globex", OTHER_SKU).await;
        let e = other.next_event().await;
        let actions = action_ids(&app, "globex").await;
        assert_changed(
            &e,
            "globex",
            1,
            OTHER_SKU,
            "simulated",
            &actions[&1],
            &ents(false, true),
        );
        // And acme's tabs got nothing of globex.
        for t in &mut tabs {
            t.assert_quiet(Duration::from_millis(300)).await;
        }
        // Every change handed to the hub has been fanned out.
        assert_eq!(app.metric("entitlements_sse_hub_queue").await, 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Resume with Last-Event-ID.

#[tokio::test]
async fn resume_gets_exactly_the_missed_events_and_no_snapshot() {
    bounded(60, async {
        let app = spawn(&[]).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));
        simulate(&app, "acme", SKU).await; // 1
        deliver(&app, &failed("evt_f1", "pi_f1", "acme")).await; // 2
        let read: Vec<Frame> = vec![s.next_event().await, s.next_event().await];
        assert_eq!(ids(&read), [1, 2]);
        let last_seen = read.last().unwrap().id.clone().unwrap();
        drop(s);

        // Missed while disconnected.
        deliver(&app, &succeeded_sku("evt_s3", "pi_s3", "acme", OTHER_SKU)).await; // 3
        deliver(&app, &failed("evt_f4", "pi_f4", "acme")).await; // 4
        deliver(
            &app,
            &refunded("evt_r5", "pi_s3", Some(("acme", OTHER_SKU))),
        )
        .await; // 5
        deliver(
            &app,
            &dispute_created("evt_d6", "pi_simulated_acme_1", Some(("acme", SKU))),
        )
        .await; // 6
        let actions = action_ids(&app, "acme").await;
        assert_eq!(actions.len(), 6);

        let mut r = resume(&app, "acme", &last_seen).await;
        let first = r.next_event().await;
        assert_ne!(first.event(), SNAPSHOT, "a resume must not start over");
        let mut missed = vec![first];
        for _ in 0..3 {
            missed.push(r.next_event().await);
        }
        assert_eq!(ids(&missed), [3, 4, 5, 6]);
        assert_changed(
            &missed[0],
            "acme",
            3,
            OTHER_SKU,
            "payment",
            &actions[&3],
            &ents(true, true),
        );
        assert_failed(&missed[1], "acme", 4, "pi_f4", &actions[&4]);
        assert_changed(
            &missed[2],
            "acme",
            5,
            OTHER_SKU,
            "refund",
            &actions[&5],
            &ents(true, false),
        );
        assert_changed(
            &missed[3],
            "acme",
            6,
            SKU,
            "dispute",
            &actions[&6],
            &ents(false, false),
        );
        // Then nothing more until the next change, which arrives live.
        r.assert_quiet(Duration::from_millis(500)).await;
        simulate(&app, "acme", OTHER_SKU).await; // 7
        let live = r.next_event().await;
        assert_eq!((live.event(), live.id()), (CHANGED, 7), "{live:?}");

        // Resuming from the very first snapshot's id (0) replays everything.
        let mut all = resume(&app, "acme", "0").await;
        let mut frames = Vec::new();
        for _ in 0..7 {
            frames.push(all.next_event().await);
        }
        assert_eq!(ids(&frames), [1, 2, 3, 4, 5, 6, 7]);
        assert!(frames.iter().all(|f| f.event() != SNAPSHOT), "{frames:?}");
        all.assert_quiet(Duration::from_millis(500)).await;
    })
    .await;
}

#[tokio::test]
async fn resume_at_the_current_seq_gets_nothing_until_the_next_change() {
    bounded(60, async {
        let app = spawn(&[]).await;
        simulate(&app, "acme", SKU).await;
        deliver(&app, &failed("evt_f", "pi_f", "acme")).await;
        assert_eq!(app.entitlements("acme").await["seq"], 2);

        let mut r = resume(&app, "acme", "2").await;
        r.assert_quiet(Duration::from_millis(1500)).await;
        simulate(&app, "acme", OTHER_SKU).await;
        let first = r.next_event().await;
        let actions = action_ids(&app, "acme").await;
        assert_changed(
            &first,
            "acme",
            3,
            OTHER_SKU,
            "simulated",
            &actions[&3],
            &ents(true, true),
        );

        // The same for an org that never did anything, resuming at 0.
        let mut fresh = resume(&app, "newco", "0").await;
        fresh.assert_quiet(Duration::from_millis(500)).await;
        simulate(&app, "newco", SKU).await;
        let e = fresh.next_event().await;
        assert_eq!((e.event(), e.id()), (CHANGED, 1), "{e:?}");
    })
    .await;
}

#[tokio::test]
async fn resume_from_an_id_never_issued_starts_with_a_snapshot() {
    bounded(60, async {
        let app = spawn(&[]).await;
        simulate(&app, "acme", SKU).await;
        deliver(&app, &failed("evt_f", "pi_f", "acme")).await;

        for id in ["3", "99", "18446744073709551615", "abc", "-1", "1.5", ""] {
            let mut r = resume(&app, "acme", id).await;
            let first = r.next_event().await;
            assert_snapshot(&first, "acme", 2, ents(true, false));
            drop(r);
        }

        // After such a snapshot, the stream is live.
        let mut r = resume(&app, "acme", "99").await;
        assert_snapshot(&r.next_event().await, "acme", 2, ents(true, false));
        simulate(&app, "acme", OTHER_SKU).await;
        let e = r.next_event().await;
        assert_eq!((e.event(), e.id()), (CHANGED, 3), "{e:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Resume after a restart: the missed events come from the store.

/// What the org's events must be, seq by seq: (kind, sku, cause, entitlements).
fn expected_after_restart(
    failed_count: u64,
) -> Vec<(u64, &'static str, &'static str, &'static str, Value)> {
    let mut out = vec![
        (1, CHANGED, SKU, "simulated", ents(true, false)),
        (2, CHANGED, OTHER_SKU, "payment", ents(true, true)),
    ];
    for i in 0..failed_count {
        out.push((3 + i, PAYMENT_FAILED, SKU, "", Value::Null));
    }
    let n = 3 + failed_count;
    out.push((n, CHANGED, OTHER_SKU, "refund", ents(true, false)));
    out.push((n + 1, CHANGED, SKU, "dispute", ents(false, false)));
    out.push((n + 2, CHANGED, SKU, "payment", ents(true, false)));
    out
}

fn check_replayed(
    frames: &[Frame],
    from: u64,
    expected: &[(u64, &str, &str, &str, Value)],
    actions: &BTreeMap<u64, String>,
) {
    let want: Vec<_> = expected.iter().filter(|e| e.0 > from).collect();
    assert_eq!(
        ids(frames),
        want.iter().map(|e| e.0).collect::<Vec<_>>(),
        "replay after {from} is not gapless and in order"
    );
    for (frame, (seq, kind, sku, cause, ents)) in frames.iter().zip(want) {
        if *kind == PAYMENT_FAILED {
            let pi = frame.json()["paymentIntentId"].as_str().unwrap().to_owned();
            assert!(pi.starts_with("pi_many_"), "{frame:?}");
            assert_failed(frame, "acme", *seq, &pi, &actions[seq]);
        } else {
            assert_changed(frame, "acme", *seq, sku, cause, &actions[seq], ents);
        }
    }
}

#[tokio::test]
async fn resume_after_a_restart_replays_the_missed_events_from_the_store() {
    bounded(180, async {
        // More missed events than the org keeps in memory (256), so an old
        // id can only be served from the store.
        const FAILED: u64 = 300;
        // Frequent keep-alives: the server notices the dropped stream (and
        // the graceful stop below does not wait for it).
        let app = spawn(&[("ENTITLEMENTS__SSE__KEEP_ALIVE_SECS", "1")]).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));
        simulate(&app, "acme", SKU).await; // 1
        let e = s.next_event().await;
        assert_eq!(e.id(), 1);
        drop(s);
        connections_become(&app, 0, Duration::from_secs(30)).await;

        deliver(&app, &succeeded_sku("evt_p2", "pi_p2", "acme", OTHER_SKU)).await; // 2
        failed_payments(&app, "acme", "many", FAILED as usize, 16).await; // 3..=302
        let n = 3 + FAILED;
        deliver(&app, &refunded("evt_r", "pi_p2", Some(("acme", OTHER_SKU)))).await; // n
        deliver(
            &app,
            &dispute_created("evt_d", "pi_simulated_acme_1", Some(("acme", SKU))),
        )
        .await; // n+1
        deliver(&app, &succeeded_sku("evt_p3", "pi_p3", "acme", SKU)).await; // n+2
        let last = n + 2;
        assert_eq!(app.entitlements("acme").await["seq"], last);
        let expected = expected_after_restart(FAILED);

        // Restart: the org actor's memory is gone.
        let dir = tokio::time::timeout(Duration::from_secs(60), app.stop())
            .await
            .expect("graceful stop within 60s");
        let app = spawn_in(dir, &[]).await;
        let actions = action_ids(&app, "acme").await;
        assert_eq!(actions.len() as u64, last, "every action survived");

        // From seq 1: more than memory holds, so from the store.
        let mut r = resume(&app, "acme", "1").await;
        let mut frames = Vec::new();
        for _ in 1..last {
            frames.push(r.next_event().await);
        }
        assert_ne!(frames[0].event(), SNAPSHOT);
        check_replayed(&frames, 1, &expected, &actions);
        r.assert_quiet(Duration::from_millis(500)).await;

        // A recent id: the tail.
        let from = last - 3;
        let mut t = resume(&app, "acme", &from.to_string()).await;
        let mut tail = Vec::new();
        for _ in from..last {
            tail.push(t.next_event().await);
        }
        check_replayed(&tail, from, &expected, &actions);

        // Both then get the next change live, exactly once.
        simulate(&app, "acme", OTHER_SKU).await;
        for c in [&mut r, &mut t] {
            let e = c.next_event().await;
            assert_eq!((e.event(), e.id()), (CHANGED, last + 1), "{e:?}");
            assert_eq!(e.json()["entitlements"], ents(true, true));
            c.assert_quiet(Duration::from_millis(300)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn resume_after_a_restart_with_a_small_gap() {
    bounded(90, async {
        let app = spawn(&[("ENTITLEMENTS__SSE__KEEP_ALIVE_SECS", "1")]).await;
        simulate(&app, "acme", SKU).await; // 1
        deliver(&app, &failed("evt_f2", "pi_f2", "acme")).await; // 2
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 2, ents(true, false));
        drop(s);
        connections_become(&app, 0, Duration::from_secs(30)).await;
        deliver(&app, &succeeded_sku("evt_p3", "pi_p3", "acme", OTHER_SKU)).await; // 3
        deliver(
            &app,
            &refunded("evt_r4", "pi_simulated_acme_1", Some(("acme", SKU))),
        )
        .await; // 4

        let dir = tokio::time::timeout(Duration::from_secs(60), app.stop())
            .await
            .expect("graceful stop within 60s");
        let app = spawn_in(dir, &[]).await;
        let actions = action_ids(&app, "acme").await;

        let mut r = resume(&app, "acme", "2").await;
        let a = r.next_event().await;
        let b = r.next_event().await;
        assert_changed(
            &a,
            "acme",
            3,
            OTHER_SKU,
            "payment",
            &actions[&3],
            &ents(true, true),
        );
        assert_changed(
            &b,
            "acme",
            4,
            SKU,
            "refund",
            &actions[&4],
            &ents(false, true),
        );
        r.assert_quiet(Duration::from_millis(500)).await;
    })
    .await;
}

/// The org actor stops when idle (its memory of recent events goes with
/// it); a stream still open meanwhile keeps getting changes, and a resume
/// afterwards is served from the store.
#[tokio::test]
async fn resume_after_the_org_actor_went_idle() {
    bounded(60, async {
        let app = spawn(&[("ENTITLEMENTS__ORGS__IDLE_STOP_SECS", "1")]).await;
        let mut open_tab = open(&app, "acme").await;
        assert_snapshot(&open_tab.next_event().await, "acme", 0, ents(false, false));
        simulate(&app, "acme", SKU).await; // 1
        deliver(&app, &failed("evt_f2", "pi_f2", "acme")).await; // 2
        deliver(
            &app,
            &refunded("evt_r3", "pi_simulated_acme_1", Some(("acme", SKU))),
        )
        .await; // 3
        eventually(Duration::from_secs(15), || async {
            (app.metric("entitlements_live_org_actors").await == 0).then_some(())
        })
        .await;

        let actions = action_ids(&app, "acme").await; // wakes the org again
        let mut r = resume(&app, "acme", "1").await;
        let a = r.next_event().await;
        let b = r.next_event().await;
        assert_failed(&a, "acme", 2, "pi_f2", &actions[&2]);
        assert_changed(
            &b,
            "acme",
            3,
            SKU,
            "refund",
            &actions[&3],
            &ents(false, false),
        );

        // The tab that stayed open across the actor's stop got 1..=3, then
        // gets the next change like the resumed one.
        let got: Vec<Frame> = vec![
            open_tab.next_event().await,
            open_tab.next_event().await,
            open_tab.next_event().await,
        ];
        assert_eq!(ids(&got), [1, 2, 3]);
        simulate(&app, "acme", OTHER_SKU).await; // 4
        for c in [&mut open_tab, &mut r] {
            let e = c.next_event().await;
            assert_eq!((e.event(), e.id()), (CHANGED, 4), "{e:?}");
            assert_eq!(e.json()["entitlements"], ents(false, true));
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 6. Keep-alive.

#[tokio::test]
async fn keep_alive_comments_arrive_with_no_events() {
    bounded(60, async {
        let app = spawn(&[("ENTITLEMENTS__SSE__KEEP_ALIVE_SECS", "1")]).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));
        // Several comments in a row, each within a few seconds of the last
        // (the first may come at once, so one is not enough).
        for i in 0..3 {
            match s.read(Duration::from_secs(5)).await {
                Read::Frame(f) => {
                    assert!(f.is_comment(), "comment #{i}: got an event {f:?}");
                    assert!(!f.comments.is_empty(), "{f:?}");
                }
                other => panic!("no keep-alive comment #{i} within 5s: {other:?}"),
            }
        }
        // Still live.
        simulate(&app, "acme", SKU).await;
        let e = s.next_event().await;
        assert_eq!((e.event(), e.id()), (CHANGED, 1));
    })
    .await;
}

// ---------------------------------------------------------------------------
// 7. Token expiry.

#[tokio::test]
async fn the_stream_ends_when_the_token_expires() {
    bounded(60, async {
        let app = spawn(&[("ENTITLEMENTS__SSE__KEEP_ALIVE_SECS", "1")]).await;
        let exp = unix_now() + 3;
        let short = token(JWT_SECRET, "acme", exp);
        let res = request_stream(&app, None, Some(&short), None).await;
        let mut s = SseClient::from_response(res);
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));
        // Live before expiry.
        simulate(&app, "acme", SKU).await;
        assert_eq!(s.next_event().await.id(), 1);
        // Ends within a few seconds after exp; no more events on the way.
        let rest = s.events_until_end(Duration::from_secs(15)).await;
        assert!(rest.is_empty(), "{rest:?}");

        // Once past exp, the same token cannot reopen it.
        while unix_now() <= exp {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let res = request_stream(&app, None, Some(&short), None).await;
        assert_eq!(res.status(), 401);
        connections_become(&app, 0, Duration::from_secs(10)).await;
    })
    .await;
}

#[tokio::test]
async fn the_stream_ends_at_expiry_even_with_the_default_keep_alive() {
    // With no traffic at all on the connection, expiry must still close it.
    bounded(60, async {
        let app = spawn(&[]).await;
        let short = token(JWT_SECRET, "acme", unix_now() + 2);
        let res = request_stream(&app, Some(&short), None, None).await;
        let mut s = SseClient::from_response(res);
        assert_snapshot(&s.next_event().await, "acme", 0, ents(false, false));
        let rest = s.events_until_end(Duration::from_secs(10)).await;
        assert!(rest.is_empty(), "{rest:?}");
    })
    .await;
}

/// RFC 7519 §4.1.4: `exp` is the time "on or after which the JWT MUST NOT be
/// accepted". A token whose exp is the current second is expired; the stream
/// would also have nothing to live for (it ends at exp).
#[tokio::test]
async fn a_token_at_its_exp_second_is_refused() {
    bounded(30, async {
        let app = spawn(&[]).await;
        // Start just after a second begins, so the request is made within
        // the second `exp` (the check below would pass anyway after it).
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let into_second = Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
        tokio::time::sleep(Duration::from_millis(1010) - into_second).await;
        let exp = unix_now();
        let t = token(JWT_SECRET, "acme", exp);
        let res = request_stream(&app, Some(&t), None, None).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        // If the clock moved on meanwhile, the token is past exp anyway.
        assert_eq!(
            status, 401,
            "a token with exp = now ({exp}) was accepted; answer: {body:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// 8. Slow clients.

/// Reads `org`'s stream until it has seen `last`, reconnecting with
/// `Last-Event-ID` whenever the server closes the body. Returns every event
/// seen and how many reconnects it took.
async fn follow(app: &TestApp, org: &str, mut client: SseClient, last: u64) -> (Vec<Frame>, u32) {
    let mut events: Vec<Frame> = Vec::new();
    let mut reconnects = 0;
    let mut last_id: Option<u64> = None;
    loop {
        match client.try_next_event(Duration::from_secs(30)).await {
            Read::Frame(f) => {
                if f.event() != SNAPSHOT {
                    last_id = Some(f.id());
                    events.push(f);
                } else {
                    assert!(last_id.is_none(), "a resume got a snapshot: {f:?}");
                    last_id = Some(f.id());
                }
                if last_id == Some(last) {
                    return (events, reconnects);
                }
            }
            Read::End => {
                reconnects += 1;
                let id = last_id.expect("the snapshot came first").to_string();
                client = resume(app, org, &id).await;
            }
            Read::Timeout => panic!(
                "follower stuck after {:?} ({} events)",
                last_id,
                events.len()
            ),
        }
    }
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_loses_nothing_on_reconnect() {
    bounded(240, async {
        let app = spawn(&[("ENTITLEMENTS__SSE__CLIENT_QUEUE", "2")]).await;
        const N: u64 = 150;
        // Large ids make each event ~100 KB, so that N of them are far more
        // than the socket buffers between the server and an unread client
        // can hold: the server must fall behind on the slow connection.
        let pad = "x".repeat(50_000);
        let events: Vec<Value> = (0..N)
            .map(|i| {
                failed(
                    &format!("evt_{i}_{pad}"),
                    &format!("pi_{i}_{pad}"),
                    "slowco",
                )
            })
            .collect();

        // The slow client: the response is kept, its body never polled.
        let slow_res = request_stream(&app, Some(&app.token("slowco")), None, None).await;
        assert_eq!(slow_res.status(), 200);

        // The healthy reader follows along in its own task.
        let healthy = open(&app, "slowco").await;
        connections_become(&app, 2, Duration::from_secs(10)).await;
        // Run concurrently with the webhooks on this task.
        let follower = follow(&app, "slowco", healthy, N);
        let produce = async {
            for e in &events {
                deliver(&app, e).await;
            }
        };
        let ((seen, reconnects), ()) = tokio::join!(follower, produce);
        assert_eq!(
            ids(&seen),
            (1..=N).collect::<Vec<_>>(),
            "the healthy reader missed or repeated events ({reconnects} reconnects)"
        );
        eprintln!("healthy reader reconnected {reconnects} times");

        let dropped = app.metric("entitlements_stream_dropped_slow_total").await;
        assert!(
            dropped > u64::from(reconnects),
            "the slow client was not dropped: dropped_slow_total = {dropped}, \
             healthy reconnects = {reconnects}"
        );

        // The slow client now reads: what it holds, then the end of the body.
        let mut slow = SseClient::from_response(slow_res);
        assert_snapshot(&slow.next_event().await, "slowco", 0, ents(false, false));
        let got = slow.events_until_end(Duration::from_secs(30)).await;
        let k = got.last().map_or(0, Frame::id);
        assert_eq!(
            ids(&got),
            (1..=k).collect::<Vec<_>>(),
            "before the drop: gapless and in order"
        );
        assert!(k < N, "the slow client got everything; it was not dropped");

        // It reconnects with its last id and gets exactly the rest.
        let mut again = resume(&app, "slowco", &k.to_string()).await;
        let mut rest = Vec::new();
        for _ in k..N {
            rest.push(again.next_event().await);
        }
        assert_ne!(rest[0].event(), SNAPSHOT);
        assert_eq!(ids(&rest), (k + 1..=N).collect::<Vec<_>>());
        again.assert_quiet(Duration::from_millis(500)).await;

        let actions = action_ids(&app, "slowco").await;
        for f in got.iter().chain(&rest) {
            assert_eq!(f.event(), PAYMENT_FAILED);
            assert_eq!(
                f.json()["actionId"],
                actions[&f.id()].as_str(),
                "seq {}",
                f.id()
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 9. Unsubscribe.

#[tokio::test]
async fn connections_return_to_zero_after_clients_disconnect() {
    bounded(60, async {
        // A closed connection is only noticed when a write to it fails, so
        // keep-alives must be frequent for this to be quick.
        let app = spawn(&[("ENTITLEMENTS__SSE__KEEP_ALIVE_SECS", "1")]).await;
        assert_eq!(app.metric("entitlements_stream_connections").await, 0);
        let mut a = open(&app, "acme").await;
        let mut b = open(&app, "acme").await;
        let mut c = open(&app, "globex").await;
        for s in [&mut a, &mut b, &mut c] {
            s.next_event().await;
        }
        connections_become(&app, 3, Duration::from_secs(5)).await;

        // One tab goes away; the others stay subscribed and live.
        drop(a);
        let started = tokio::time::Instant::now();
        connections_become(&app, 2, Duration::from_secs(10)).await;
        eprintln!("one disconnect noticed after {:?}", started.elapsed());
        simulate(&app, "acme", SKU).await;
        assert_eq!(b.next_event().await.id(), 1);

        drop(b);
        drop(c);
        let started = tokio::time::Instant::now();
        connections_become(&app, 0, Duration::from_secs(10)).await;
        eprintln!("all disconnects noticed after {:?}", started.elapsed());
    })
    .await;
}

// ---------------------------------------------------------------------------
// Shutdown with open streams.

/// Streams never finish on their own (they last until the token expires), so
/// a graceful stop must end them rather than wait for them: otherwise every
/// stop with a browser connected takes the full shutdown timeout, and an
/// orchestrator's SIGKILL may come before the final flush. The browsers
/// reconnect with `Last-Event-ID` and lose nothing.
#[tokio::test]
async fn graceful_stop_is_not_held_up_by_open_streams() {
    bounded(90, async {
        let app = spawn(&[]).await;
        simulate(&app, "acme", SKU).await;
        let mut s = open(&app, "acme").await;
        assert_snapshot(&s.next_event().await, "acme", 1, ents(true, false));

        // The stop completes promptly (not after the 30s shutdown timeout)...
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let stop = tokio::spawn(async move { app.stop().await });
        let dir = tokio::time::timeout_at(deadline, stop)
            .await
            .expect("graceful stop with an open stream took more than 10s")
            .unwrap();
        // ...and the stream has ended (the server closed it).
        let rest = s.events_until_end(Duration::from_secs(5)).await;
        assert!(rest.is_empty(), "{rest:?}");

        // And the store is whole for the next start.
        let app = spawn_in(dir, &[]).await;
        let mut r = resume(&app, "acme", "0").await;
        let e = r.next_event().await;
        assert_eq!((e.event(), e.id()), (CHANGED, 1), "{e:?}");
    })
    .await;
}
