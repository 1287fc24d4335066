//! The many-node mode under faults, against the test command's 3-server
//! NATS cluster: the stream's leader killed under load, every node restarted
//! in turn under load, the whole cluster unreachable. Each test loads two
//! or more nodes with webhooks that a Stripe-like sender retries until 200,
//! checks that nothing but 200 or 503 was ever answered, and then that
//! every org's log holds each effect once with gapless seqs.
//!
//! The tests kill, pause and restart the shared cluster's servers, so they
//! run one at a time (`FAULTS`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::RwLock;
use std::time::Duration;

use common::*;
use serde_json::Value;

static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLUSTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/nats-cluster.sh");

/// Runs `nats-cluster.sh args...` on the test command's cluster; its stdout.
async fn cluster(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(CLUSTER)
            .args(&args)
            .output()
            .expect("nats-cluster.sh runs");
        assert!(
            out.status.success(),
            "nats-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .await
    .unwrap()
}

async fn node(stream: &str) -> TestApp {
    spawn(&as_pairs(&jetstream_overrides(stream, 3))).await
}

/// What a Stripe-like sender saw: every status answered, by code.
#[derive(Default)]
struct Answers(BTreeMap<u16, u64>);

/// Delivers `event` to `nodes` in turn, from the `turn`th, until one
/// answers 200: a 503, a refused connection or a stopping node
/// means "try again", as Stripe (behind a load balancer) does.
async fn deliver_until_200(
    client: &reqwest::Client,
    nodes: &RwLock<Vec<String>>,
    turn: usize,
    event: &Value,
    answers: &RwLock<Answers>,
) {
    let body = serde_json::to_vec(event).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for attempt in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} was never recorded",
            event["id"]
        );
        let base = {
            let nodes = nodes.read().unwrap();
            nodes[(turn + attempt) % nodes.len()].clone()
        };
        let sent = client
            .post(format!("{base}/webhooks/stripe"))
            .header("Stripe-Signature", sign_now(&body, WEBHOOK_SECRET))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await;
        // A connection error: that node is gone; another takes it.
        if let Ok(res) = sent {
            let status = res.status().as_u16();
            *answers.write().unwrap().0.entry(status).or_default() += 1;
            if status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each org's events: a success, failed attempts, a second success event
/// about the same PaymentIntent, and a refund without metadata.
fn load(orgs: usize, failures: usize) -> Vec<(String, Vec<Value>)> {
    (0..orgs)
        .map(|o| {
            let org = format!("org-fault-{o}");
            let mut events = vec![succeeded(
                &format!("evt_{org}_pay"),
                &format!("pi_{org}"),
                &org,
            )];
            for f in 0..failures {
                events.push(failed(
                    &format!("evt_{org}_f{f}"),
                    &format!("pi_{org}_f{f}"),
                    &org,
                ));
            }
            events.push(succeeded(
                &format!("evt_{org}_pay2"),
                &format!("pi_{org}"),
                &org,
            ));
            events.push(refunded(
                &format!("evt_{org}_refund"),
                &format!("pi_{org}"),
                None,
            ));
            (org, events)
        })
        .collect()
}

/// Sends every org's events in order (each after the one before it is
/// recorded, as one customer's payments come), all orgs at once.
async fn send_all(
    nodes: &RwLock<Vec<String>>,
    orgs: &[(String, Vec<Value>)],
    answers: &RwLock<Answers>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let per_org = orgs.iter().enumerate().map(|(o, (_, events))| {
        let client = &client;
        async move {
            for (i, event) in events.iter().enumerate() {
                deliver_until_200(client, nodes, o + i, event, answers).await;
            }
        }
    });
    futures_util::future::join_all(per_org).await;
}

/// Every org's log, read through `node`, holds each effect once: seqs
/// n..1, one delivered payment, every failure, one refund, not entitled.
async fn assert_every_effect_once(node: &TestApp, orgs: &[(String, Vec<Value>)], failures: usize) {
    for (org, _) in orgs {
        // Reads go to the stream's leader, which a restarted cluster may
        // still be electing.
        let actions: Vec<Value> = eventually(Duration::from_secs(30), || async {
            let res = node.get(org, "/v1/actions?limit=500").await;
            if res.status() != 200 {
                return None;
            }
            let body: Value = res.json().await.unwrap();
            Some(body["actions"].as_array().unwrap().clone())
        })
        .await;
        let seqs: Vec<u64> = actions.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
        let gapless: Vec<u64> = (1..=actions.len() as u64).rev().collect();
        assert_eq!(seqs, gapless, "{org}: {actions:#?}");
        assert_eq!(actions.len(), failures + 2, "{org}: {actions:#?}");
        let refunds = actions.iter().filter(|a| a["kind"] == "refund").count();
        assert_eq!(refunds, 1, "{org}");
        // The node's org actor may still be catching up with what the other
        // node wrote (its follower recreates its consumer after a leader
        // change); it must get there.
        eventually(Duration::from_secs(30), || async {
            let ent = node.get(org, "/v1/entitlements").await;
            if ent.status() != 200 {
                return None;
            }
            let ent: Value = ent.json().await.unwrap();
            (ent["seq"] == actions.len() && ent["entitlements"][SKU] == false).then_some(())
        })
        .await;
    }
}

fn assert_only_200_or_503(answers: &RwLock<Answers>) {
    let answers = answers.read().unwrap();
    eprintln!("answers by status: {:?}", answers.0);
    assert!(
        answers.0.keys().all(|s| *s == 200 || *s == 503),
        "Stripe may only ever be told 200 or 503: {:?}",
        answers.0
    );
}

#[tokio::test]
async fn killing_the_streams_leader_under_load_loses_nothing() {
    let _one_at_a_time = FAULTS.lock().await;
    let stream = stream_name("KILL_LEADER");
    let (a, b) = (node(&stream).await, node(&stream).await);
    let nodes = RwLock::new(vec![a.base.clone(), b.base.clone()]);
    let orgs = load(16, 40);
    let answers = RwLock::new(Answers::default());

    let leader = cluster(&["leader", &stream]).await;
    let server = leader.trim_start_matches('n').to_owned();
    // Once the load is well under way (not after a fixed time: this
    // machine's speed varies), so that most of it meets the election.
    let kill = async {
        while answers.read().unwrap().0.values().sum::<u64>() < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cluster(&["kill", &server]).await;
    };
    futures_util::future::join(send_all(&nodes, &orgs, &answers), kill).await;
    cluster(&["restart", &server]).await;

    assert_only_200_or_503(&answers);
    assert!(
        answers.read().unwrap().0.contains_key(&503),
        "the leader was killed while webhooks were still being written"
    );
    assert_every_effect_once(&a, &orgs, 40).await;
    assert_every_effect_once(&b, &orgs, 40).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn restarting_every_node_in_turn_under_load_loses_nothing() {
    let _one_at_a_time = FAULTS.lock().await;
    let stream = stream_name("ROLLING");
    let mut running = vec![node(&stream).await, node(&stream).await];
    let nodes = RwLock::new(running.iter().map(|n| n.base.clone()).collect::<Vec<_>>());
    let orgs = load(16, 12);
    let answers = RwLock::new(Answers::default());

    let roll = async {
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Surge: the new node serves before the old one is drained
            // (SIGTERM's path: stop accepting, answer what is in flight).
            let new = node(&stream).await;
            let old = running.remove(0);
            {
                let mut bases = nodes.write().unwrap();
                bases.retain(|b| *b != old.base);
                bases.push(new.base.clone());
            }
            running.push(new);
            old.stop().await;
        }
    };
    futures_util::future::join(send_all(&nodes, &orgs, &answers), roll).await;

    assert_only_200_or_503(&answers);
    for node in &running {
        assert_every_effect_once(node, &orgs, 12).await;
    }
    for node in running {
        node.stop().await;
    }
}

#[tokio::test]
async fn readyz_is_503_while_nats_cannot_be_reached_and_nothing_is_acknowledged() {
    let _one_at_a_time = FAULTS.lock().await;
    let stream = stream_name("UNREACHABLE");
    let app = node(&stream).await;
    let org = "org-unreachable";
    let ready = |app: &TestApp| {
        let res = app.client.get(app.url("/readyz")).send();
        async move { res.await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&app).await, 200);

    for server in ["1", "2", "3"] {
        cluster(&["pause", server]).await;
    }
    eventually(Duration::from_secs(30), || async {
        (ready(&app).await == 503).then_some(())
    })
    .await;
    let event = succeeded("evt_unreachable", "pi_unreachable", org);
    let res = app.webhook(&event).await;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    for server in ["1", "2", "3"] {
        cluster(&["resume", server]).await;
    }
    assert_eq!(status, 503, "nothing durable, so no 200: {body}");
    assert!(
        body.contains("persistence_unavailable") || body.contains("overloaded"),
        "{body}"
    );

    eventually(Duration::from_secs(60), || async {
        (ready(&app).await == 200).then_some(())
    })
    .await;
    // Stripe's retry now lands, once.
    eventually(Duration::from_secs(60), || async {
        (app.webhook(&event).await.status() == 200).then_some(())
    })
    .await;
    let actions = app.actions(org).await;
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert_eq!(app.entitlements(org).await["entitlements"][SKU], true);
    app.stop().await;
}

#[tokio::test]
async fn a_node_paused_mid_load_wakes_to_a_log_it_cannot_overwrite() {
    use common::process::{free_port, start_service, write_config};
    let _one_at_a_time = FAULTS.lock().await;
    let stream = stream_name("PAUSED_NODE");
    let overrides = jetstream_overrides(&stream, 3);
    // Node A as a process of its own, to be stopped (SIGSTOP) with its
    // decisions and appends in flight while node B goes on writing.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let a = start_service(&config, port, &as_pairs(&overrides)).await;
    let b = node(&stream).await;
    let nodes = RwLock::new(vec![a.base.clone(), b.base.clone()]);
    let orgs = load(12, 30);
    let answers = RwLock::new(Answers::default());

    let pause = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.signal("STOP");
        tokio::time::sleep(Duration::from_secs(2)).await;
        a.signal("CONT");
    };
    futures_util::future::join(send_all(&nodes, &orgs, &answers), pause).await;

    assert_only_200_or_503(&answers);
    assert_every_effect_once(&b, &orgs, 30).await;
    // Node A woke with a stale view; it must come to the log's state.
    let client = reqwest::Client::new();
    for (org, _) in &orgs {
        let expected = b.entitlements(org).await;
        eventually(Duration::from_secs(30), || async {
            let res = client
                .get(format!("{}/v1/entitlements", a.base))
                .bearer_auth(token(JWT_SECRET, org, unix_now() + 600))
                .send()
                .await
                .ok()?;
            let on_a: Value = res.json().await.ok()?;
            // (A's config lists only the default product.)
            let same = on_a["seq"] == expected["seq"]
                && on_a["entitlements"][SKU] == expected["entitlements"][SKU];
            same.then_some(())
        })
        .await;
    }
    let metrics = reqwest::get(format!("{}/metrics", a.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("entitlements_jetstream_conflicts_total "))
        .unwrap_or("none");
    eprintln!("node A after its pause: {refused}");
    drop(a);
    b.stop().await;
}

#[tokio::test]
async fn a_clickhouse_outage_fails_no_webhook_and_the_projection_catches_up() {
    let _one_at_a_time = FAULTS.lock().await;
    let stream = stream_name("CH_OUTAGE");
    let table = unique_table("projected_outage");
    let overrides = jetstream_projection_overrides(&stream, &table);
    let app = spawn(&as_pairs(&overrides)).await;
    let count = format!("SELECT count() FROM {table} FINAL");
    let projected = |n: usize| {
        let count = count.clone();
        async move {
            let res = reqwest::Client::new()
                .post(clickhouse_url())
                .body(count)
                .send()
                .await;
            let text = res.ok()?.text().await.ok()?;
            (text.trim() == n.to_string()).then_some(())
        }
    };
    let deliver = |payments: std::ops::Range<usize>| {
        let app = &app;
        async move {
            for i in payments {
                let (event, pi, org) = (
                    format!("evt_cho_{i}"),
                    format!("pi_cho_{i}"),
                    format!("org-cho-{i}"),
                );
                app.deliver(&succeeded(&event, &pi, &org)).await;
            }
        }
    };
    deliver(0..5).await;
    eventually(Duration::from_secs(20), || projected(5)).await;

    tokio::task::spawn_blocking(kill_clickhouse).await.unwrap();
    // ClickHouse is down: every webhook is still acknowledged, at once.
    deliver(5..15).await;
    // The projection's INSERTs fail meanwhile, and it says so.
    eventually(Duration::from_secs(10), || async {
        (app.metric("entitlements_store_errors_total").await > 0).then_some(())
    })
    .await;
    tokio::task::spawn_blocking(|| clickhouse_script("start"))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), || projected(15)).await;
    let distinct = format!("SELECT uniqExact(org_id, seq) FROM {table} FINAL");
    assert_eq!(clickhouse_query(&distinct).await, "15");
    app.stop().await;
    drop_table(&table).await;
}
