//! The many-node mode (`store.backend = "jetstream"`) against the test
//! command's 3-server NATS cluster: several nodes of the real app on one
//! stream, R1 and R3. One effect per event whichever nodes receive it, each
//! org's seqs gapless and never repeated, every node's browsers seeing every
//! change, PaymentIntent owners shared, and the expected-sequence check that
//! refuses a stale writer, raced directly.

mod common;

use std::time::Duration;

use common::sse::*;
use common::*;
use serde_json::{json, Value};

const CHANGED: &str = "org.entitlements.changed";

async fn node(stream: &str, replicas: usize) -> TestApp {
    spawn(&as_pairs(&jetstream_overrides(stream, replicas))).await
}

/// Sends `event` to `app` until it answers 200, as Stripe retries a 503.
async fn deliver_until_200(app: &TestApp, event: &Value) {
    for _ in 0..20 {
        let res = app.webhook(event).await;
        match res.status().as_u16() {
            200 => return,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!(
                "{} answered {other}: {}",
                event["id"],
                res.text().await.unwrap()
            ),
        }
    }
    panic!("{} was never recorded", event["id"]);
}

/// The org's actions as `node` lists them, after checking the log's shape:
/// seqs n, n-1, ..., 1 (newest first) and no action id twice.
async fn sound_log(node: &TestApp, org: &str) -> Vec<Value> {
    let actions = node.actions(org).await;
    let seqs: Vec<u64> = actions.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=actions.len() as u64).rev().collect();
    assert_eq!(
        seqs, expected,
        "seqs of {org} are not gapless and unique: {actions:#?}"
    );
    let mut ids: Vec<&str> = actions.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        actions.len(),
        "an action of {org} is recorded twice"
    );
    actions
}

async fn each_event_once_across_nodes(replicas: usize) {
    let stream = stream_name(&format!("ONCE_R{replicas}"));
    let (a, b) = (node(&stream, replicas).await, node(&stream, replicas).await);
    let org = "org-race";
    let mut events = vec![succeeded("evt_pay_1", "pi_1", org)];
    for i in 0..6 {
        events.push(failed(&format!("evt_fail_{i}"), &format!("pi_f{i}"), org));
    }
    // A second success event about the same PaymentIntent: no second effect.
    events.push(succeeded("evt_pay_1_again", "pi_1", org));
    events.push(refunded("evt_refund_1", "pi_1", Some((org, SKU))));

    // Every event three times to each node, all at once.
    let sends = events.iter().flat_map(|e| {
        let (a, b) = (&a, &b);
        (0..3).flat_map(move |_| [deliver_until_200(a, e), deliver_until_200(b, e)])
    });
    futures_util::future::join_all(sends).await;

    let on_a = sound_log(&a, org).await;
    // Node B may still be catching up with A's last write through its follower.
    let on_b = eventually(Duration::from_secs(10), || async {
        let on_b = b.actions(org).await;
        (on_b == on_a).then_some(on_b)
    })
    .await;
    assert_eq!(
        on_b.len(),
        1 + 6 + 1,
        "one payment, six failures, one refund: {on_a:#?}"
    );
    let kinds = |kind: &str| on_a.iter().filter(|x| x["kind"] == kind).count();
    assert_eq!((kinds("payment"), kinds("refund")), (7, 1));
    for node in [&a, &b] {
        let ent = node.entitlements(org).await;
        assert_eq!(ent["entitlements"][SKU], false, "refunded: {ent}");
        assert_eq!(ent["seq"], 8);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn each_event_has_one_effect_however_many_nodes_receive_it_r1() {
    each_event_once_across_nodes(1).await;
}

#[tokio::test]
async fn each_event_has_one_effect_however_many_nodes_receive_it_r3() {
    each_event_once_across_nodes(3).await;
}

/// Many orgs, each with distinct events arriving at both nodes at once: the
/// nodes race for the same orgs' next seqs. Whether a given run sees
/// refused appends depends on timing; what it must never see does not.
#[tokio::test]
async fn nodes_racing_for_many_orgs_leave_every_log_gapless() {
    let stream = stream_name("CONTEND");
    let (a, b) = (node(&stream, 3).await, node(&stream, 3).await);
    let orgs: Vec<String> = (0..12).map(|i| format!("org-contend-{i}")).collect();
    let mut events = Vec::new();
    for org in &orgs {
        for i in 0..8 {
            events.push((
                i,
                failed(&format!("evt_c_{org}_{i}"), &format!("pi_c_{org}_{i}"), org),
            ));
        }
    }
    let mut sends = Vec::new();
    for (i, event) in &events {
        // Alternate nodes, and send a third of them to both.
        let first = if i % 2 == 0 { &a } else { &b };
        sends.push(deliver_until_200(first, event));
        if i % 3 == 0 {
            sends.push(deliver_until_200(if i % 2 == 0 { &b } else { &a }, event));
        }
    }
    futures_util::future::join_all(sends).await;
    for org in &orgs {
        let on_a = sound_log(&a, org).await;
        assert_eq!(on_a.len(), 8, "{org}: {on_a:#?}");
        eventually(Duration::from_secs(10), || async {
            (b.actions(org).await == on_a).then_some(())
        })
        .await;
    }
    let conflicts = a.metric("entitlements_jetstream_conflicts_total").await
        + b.metric("entitlements_jetstream_conflicts_total").await;
    eprintln!("appends refused by the sequence check in this run: {conflicts}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_browser_on_one_node_sees_every_change_written_through_another() {
    let stream = stream_name("FANOUT");
    let (a, b) = (node(&stream, 3).await, node(&stream, 3).await);
    let org = "org-fanout";
    let mut browser = open(&b, org).await;
    let snapshot = browser.next_event().await;
    assert_eq!(snapshot.id(), 0);

    a.deliver(&succeeded("evt_f_pay", "pi_fan", org)).await;
    a.deliver(&failed("evt_f_fail", "pi_fan2", org)).await;
    a.deliver(&refunded("evt_f_refund", "pi_fan", None)).await;

    let frames = [
        browser.next_event().await,
        browser.next_event().await,
        browser.next_event().await,
    ];
    let ids: Vec<u64> = frames.iter().map(Frame::id).collect();
    assert_eq!(ids, [1, 2, 3], "in seq order: {frames:?}");
    assert_eq!(frames[0].event(), CHANGED);
    assert_eq!(frames[0].json()["entitlements"][SKU], true);
    assert_eq!(frames[1].event(), "org.payment.failed");
    assert_eq!(frames[2].json()["cause"], "refund");
    assert_eq!(frames[2].json()["entitlements"][SKU], false);

    // Resuming on node B after the first event gets exactly what followed,
    // though node A wrote it and B's org actor may never have held it.
    let mut resumed = resume(&b, org, "1").await;
    let replayed = [resumed.next_event().await, resumed.next_event().await];
    assert_eq!(replayed.iter().map(Frame::id).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(replayed[1].json(), frames[2].json());

    // A third node that starts now replays them from the stream.
    let c = node(&stream, 3).await;
    let mut late = resume(&c, org, "0").await;
    let from_c = [
        late.next_event().await,
        late.next_event().await,
        late.next_event().await,
    ];
    assert_eq!(from_c.iter().map(Frame::id).collect::<Vec<_>>(), [1, 2, 3]);
    for app in [a, b, c] {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_refund_without_metadata_on_another_node_finds_its_org_without_stripe() {
    let stream = stream_name("OWNERS");
    // Stripe is unreachable (api_base is a closed port): the owner must
    // come from the shared bucket.
    let a = node(&stream, 3).await;
    let org = "org-owner";
    a.deliver(&succeeded("evt_o_pay", "pi_owned", org)).await;
    a.stop().await;

    let b = node(&stream, 3).await;
    b.deliver(&refunded("evt_o_refund", "pi_owned", None)).await;
    let actions = sound_log(&b, org).await;
    assert_eq!(actions.len(), 2, "{actions:#?}");
    assert_eq!(actions[0]["kind"], "refund");
    assert_eq!(b.entitlements(org).await["entitlements"][SKU], false);
    b.stop().await;
}

#[tokio::test]
async fn state_and_history_survive_every_node_stopping() {
    let stream = stream_name("RESTART");
    let a = node(&stream, 3).await;
    let org = "org-restart";
    a.deliver(&succeeded("evt_r_pay", "pi_r", org)).await;
    let sim = a
        .post(
            org,
            "/v1/billing/simulate-success",
            json!({ "sku": OTHER_SKU }),
        )
        .await;
    assert_eq!(sim.status(), 200);
    let before = sound_log(&a, org).await;
    a.stop().await;

    let b = node(&stream, 3).await;
    assert_eq!(sound_log(&b, org).await, before);
    let ent = b.entitlements(org).await;
    assert_eq!(ent["seq"], 2);
    assert_eq!(ent["entitlements"][SKU], true);
    assert_eq!(ent["entitlements"][OTHER_SKU], true);
    // A redelivery after the restart is still a duplicate.
    b.deliver(&succeeded("evt_r_pay", "pi_r", org)).await;
    assert_eq!(b.actions(org).await.len(), 2);
    b.stop().await;
}

/// The fence itself: appends that all expect the same last message of an
/// org, raced from separate connections. Exactly one may land.
async fn one_of_racing_appends_lands(replicas: usize) {
    use actors::model::{now_ms, Action, ActionKind, ActionStatus};
    use actors::store::jetstream::AppendError;
    use actors::store::JetStreamStore;

    let stream = stream_name(&format!("FENCE_R{replicas}"));
    let settings = jetstream_store_settings(&stream, replicas);
    let mut writers = Vec::new();
    for _ in 0..8 {
        writers.push(JetStreamStore::connect(settings.clone()).await.unwrap());
    }
    let action = |writer: usize, seq: u64| Action {
        id: format!("fail_evt_{writer}_{seq}"),
        org_id: "org-fence".into(),
        seq,
        kind: ActionKind::Payment,
        status: ActionStatus::Failed,
        sku: SKU.into(),
        external_id: format!("pi_{writer}"),
        event_id: Some(format!("evt_{writer}_{seq}")),
        amount: 1,
        currency: "usd".into(),
        created_at_ms: now_ms(),
        simulated: false,
    };
    let mut expected = 0;
    for round in 1..=5u64 {
        let appends = writers.iter().enumerate().map(|(i, w)| {
            let actions = [action(i, round)];
            let message_id = format!("evt_{i}_{round}");
            async move { w.append("org-fence", expected, &message_id, &actions).await }
        });
        let results = futures_util::future::join_all(appends).await;
        let landed: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(landed.len(), 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(_) | Err(AppendError::Stale { .. }))),
            "the others are refused as stale: {results:?}"
        );
        expected = landed[0];
    }
    let messages = writers[0].org_messages_after("org-fence", 0).await.unwrap();
    let seqs: Vec<u64> = messages
        .iter()
        .flat_map(|m| m.actions.iter().map(|a| a.seq))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let prevs: Vec<u64> = messages.iter().map(|m| m.prev).collect();
    let sequences: Vec<u64> = messages.iter().map(|m| m.sequence).collect();
    assert_eq!(prevs[0], 0);
    assert_eq!(
        prevs[1..],
        sequences[..4],
        "each message follows the one before"
    );
}

#[tokio::test]
async fn of_racing_appends_expecting_one_last_message_exactly_one_lands_r1() {
    one_of_racing_appends_lands(1).await;
}

#[tokio::test]
async fn of_racing_appends_expecting_one_last_message_exactly_one_lands_r3() {
    one_of_racing_appends_lands(3).await;
}

#[tokio::test]
async fn clickhouse_is_fed_from_the_stream_once_per_action() {
    let stream = stream_name("PROJECT");
    let table = unique_table("projected");
    let overrides = jetstream_projection_overrides(&stream, &table);
    let a = spawn(&as_pairs(&overrides)).await;
    let b = spawn(&as_pairs(&overrides)).await;
    let mut events = Vec::new();
    for org in 0..10 {
        let org = format!("org-proj-{org}");
        events.push(succeeded(
            &format!("evt_p_{org}"),
            &format!("pi_p_{org}"),
            &org,
        ));
        events.push(failed(
            &format!("evt_pf_{org}"),
            &format!("pi_pf_{org}"),
            &org,
        ));
    }
    let sends = events
        .iter()
        .flat_map(|e| [deliver_until_200(&a, e), deliver_until_200(&b, e)]);
    futures_util::future::join_all(sends).await;

    let count = format!("SELECT count() FROM {table} FINAL");
    eventually(Duration::from_secs(20), || async {
        (clickhouse_query(&count).await == "20").then_some(())
    })
    .await;
    // Each action once per node-independent id; no (org, seq) twice.
    let distinct = format!("SELECT uniqExact(org_id, seq) FROM {table} FINAL");
    assert_eq!(clickhouse_query(&distinct).await, "20");
    let projected = a.metric("entitlements_projection_rows_total").await
        + b.metric("entitlements_projection_rows_total").await;
    assert!(projected >= 20, "the nodes projected {projected} rows");
    a.stop().await;
    b.stop().await;
    drop_table(&table).await;
}

#[tokio::test]
async fn one_node_at_a_time_holds_the_reconciliation_lease_until_it_lapses() {
    use actors::lease::Lease;
    use actors::store::JetStreamStore;

    let stream = stream_name("LEASE");
    let settings = jetstream_store_settings(&stream, 3);
    let ttl = Duration::from_secs(2);
    let node = |name: &'static str| {
        let settings = settings.clone();
        async move {
            let store = JetStreamStore::connect(settings).await.unwrap();
            Lease::new(store.leases(ttl).await.unwrap(), "reconciler", name.into())
        }
    };
    let (a, b) = (node("a").await, node("b").await);
    assert!(a.hold().await, "a free lease is taken");
    assert!(!b.hold().await, "a held lease is not");
    assert!(a.hold().await, "its holder renews it");
    // Once its holder stops renewing, it lapses and another node takes it.
    eventually(Duration::from_secs(20), || async {
        b.hold().await.then_some(())
    })
    .await;
    assert!(!a.hold().await, "and the first holder no longer has it");
}
