//! `store.backend = "clickhouse"` against the real server the test command
//! starts: batching, no doubles, state rebuilt after restarts and crashes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::process::*;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;

fn overrides(table: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ENTITLEMENTS__STORE__BACKEND", "clickhouse".into()),
        ("ENTITLEMENTS__CLICKHOUSE__URL", clickhouse_url()),
        ("ENTITLEMENTS__CLICKHOUSE__TABLE", table.into()),
    ]
}

async fn spawn_clickhouse(table: &str) -> TestApp {
    spawn_clickhouse_with(table, &[]).await
}

async fn spawn_clickhouse_with(table: &str, extra: &[(&str, &str)]) -> TestApp {
    let owned = overrides(table);
    let mut env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    spawn(&env).await
}

#[tokio::test]
async fn one_org_s_concurrent_webhooks_share_inserts_and_keep_a_gapless_order() {
    let table = unique_table("t_busy_org");
    // Writes at least 300 ms apart: the first row goes alone, the rest of
    // the burst waits for the next INSERT, unless the org held it back.
    let app = spawn_clickhouse_with(
        &table,
        &[("ENTITLEMENTS__PERSISTENCE__BATCH_MAX_MS", "300")],
    )
    .await;
    let events: Vec<Value> = (0..50)
        .map(|i| {
            if i % 10 == 9 {
                succeeded(&format!("evt_busy_{i}"), &format!("pi_busy_{i}"), "busy")
            } else {
                failed(&format!("evt_busy_{i}"), &format!("pi_busy_{i}"), "busy")
            }
        })
        .collect();
    // Every event twice: a duplicate of a change still being written must
    // wait for that write too.
    let statuses = app.webhook_statuses(events.iter().chain(&events)).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // One write at a time per org would be 50 inserts, 300 ms apart.
    let inserts = app.metric("entitlements_persist_batches_total").await;
    assert!(inserts <= 5, "{inserts} inserts for one org's 50 webhooks");
    let seqs = clickhouse_query(&format!(
        "SELECT groupArray(seq) FROM (SELECT seq FROM {table} ORDER BY seq)"
    ))
    .await;
    let expected: Vec<String> = (1..=50).map(|s| s.to_string()).collect();
    assert_eq!(seqs, format!("[{}]", expected.join(",")));
    let ent = app.entitlements("busy").await;
    assert_eq!(ent["seq"], 50);
    assert_eq!(ent["entitlements"][SKU], true);
    drop_table(&table).await;
}

#[tokio::test]
async fn orgs_starting_together_and_their_bare_refunds_are_read_with_few_queries() {
    let table = unique_table("t_cold");
    let app = spawn_clickhouse(&table).await;
    let orgs: Vec<String> = (0..200).map(|i| format!("cold{i}")).collect();
    for (i, org) in orgs.iter().enumerate() {
        let event = if i % 2 == 0 {
            succeeded(&format!("evt_cold_{i}"), &format!("pi_cold_{i}"), org)
        } else {
            failed(&format!("evt_cold_{i}"), &format!("pi_cold_{i}"), org)
        };
        app.deliver(&event).await;
    }
    app.stop().await;
    // Every PaymentIntent's owner is indexed by the time the process exits.
    let owners_table = format!("{table}_intent_owners");
    let indexed = format!("SELECT uniqExact(external_id) FROM {owners_table}");
    assert_eq!(clickhouse_query(&indexed).await, "200");
    // A store without the index (an earlier version's) gets it built from
    // its actions at start.
    clickhouse_query(&format!("DROP TABLE {owners_table}")).await;

    // A new process: every org actor starts from ClickHouse, all at once.
    let app = spawn_clickhouse(&table).await;
    assert_eq!(clickhouse_query(&indexed).await, "200");
    let reads = orgs.iter().map(|org| app.entitlements(org));
    let states = futures_util::future::join_all(reads).await;
    for (i, ent) in states.iter().enumerate() {
        assert_eq!(ent["seq"], 1, "{}: {ent}", orgs[i]);
        assert_eq!(ent["entitlements"][SKU], i % 2 == 0, "{}: {ent}", orgs[i]);
    }
    let loaded = app.metric("entitlements_org_load_orgs_sum").await;
    let queries = app.metric("entitlements_org_load_orgs_count").await;
    assert_eq!(loaded, 200);
    assert!(queries * 4 <= 200, "{queries} queries loaded 200 orgs");
    // A refund without metadata for a live org is routed by what its actor
    // knows, without a read.
    app.deliver(&refunded("evt_cold_refund_0", "pi_cold_0", None))
        .await;
    assert_eq!(app.entitlements("cold0").await["entitlements"][SKU], false);
    assert_eq!(app.metric("entitlements_intent_lookups_count").await, 0);
    app.stop().await;

    // Refunds without metadata for orgs no actor holds, all at once: each
    // org is found through the index, the lookups grouped.
    let app = spawn_clickhouse(&table).await;
    let refunds: Vec<Value> = (2..200)
        .step_by(2)
        .map(|i| {
            refunded(
                &format!("evt_cold_refund_{i}"),
                &format!("pi_cold_{i}"),
                None,
            )
        })
        .collect();
    let sends = refunds.iter().map(|e| app.deliver(e));
    futures_util::future::join_all(sends).await;
    for (i, org) in orgs.iter().enumerate().step_by(2) {
        let ent = app.entitlements(org).await;
        assert_eq!(ent["seq"], 2, "{org}: {ent}");
        assert_eq!(ent["entitlements"][SKU], false, "{org} ({i}): {ent}");
    }
    let looked_up = app.metric("entitlements_intent_lookups_sum").await;
    let lookups = app.metric("entitlements_intent_lookups_count").await;
    assert_eq!(looked_up, 99);
    assert!(
        lookups * 4 <= 99,
        "{lookups} queries looked up 99 PaymentIntents"
    );
    drop_table(&table).await;
}

#[tokio::test]
async fn a_thousand_concurrent_webhooks_over_a_hundred_orgs_are_a_thousand_rows_in_few_inserts() {
    let table = unique_table("t_load");
    let app = spawn_clickhouse(&table).await;
    let events: Vec<Value> = (0..1000)
        .map(|i| {
            let org = format!("org{}", i % 100);
            if i < 100 {
                succeeded(&format!("evt_{i}"), &format!("pi_{i}"), &org)
            } else {
                failed(&format!("evt_{i}"), &format!("pi_{i}"), &org)
            }
        })
        .collect();
    let statuses: Vec<u16> = futures_util::stream::iter(events.iter().map(|e| app.webhook(e)))
        .buffer_unordered(256)
        .map(|r| r.status().as_u16())
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    assert_eq!(
        clickhouse_query(&format!("SELECT count() FROM {table}")).await,
        "1000"
    );
    assert_eq!(
        clickhouse_query(&format!("SELECT uniqExact(id) FROM {table}")).await,
        "1000"
    );
    let inserts = app.metric("entitlements_persist_batches_total").await;
    assert!(inserts * 4 < 1000, "{inserts} inserts for 1000 rows");
    // Each org's seq is gapless: 1..=10.
    let per_org = clickhouse_query(&format!(
        "SELECT org_id, min(seq), max(seq), count() FROM {table} GROUP BY org_id ORDER BY org_id"
    ))
    .await;
    assert_eq!(per_org.lines().count(), 100);
    for line in per_org.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(&cols[1..], ["1", "10", "10"], "{line}");
    }
    for o in [0, 42, 99] {
        let ent = app.entitlements(&format!("org{o}")).await;
        assert_eq!(ent["entitlements"][SKU], true);
        assert_eq!(ent["seq"], 10);
    }
    drop_table(&table).await;
}

#[tokio::test]
async fn a_restart_rebuilds_state_from_clickhouse_and_repeated_rows_collapse() {
    let table = unique_table("t_restart");
    let app = spawn_clickhouse(&table).await;
    for event in [
        succeeded("evt_a1", "pi_a1", "acme"),
        failed("evt_a2", "pi_a2", "acme"),
        payment_intent_event(
            "evt_a3",
            "payment_intent.succeeded",
            "pi_a3",
            "acme",
            OTHER_SKU,
        ),
        refunded("evt_a4", "pi_a3", Some(("acme", OTHER_SKU))),
    ] {
        app.deliver(&event).await;
    }
    let before = app.entitlements("acme").await;
    app.stop().await;

    // A batch written twice (a retry after a timeout that did land).
    clickhouse_query(&format!(
        "INSERT INTO {table} SELECT * FROM {table} WHERE org_id = 'acme'"
    ))
    .await;
    assert_eq!(
        clickhouse_query(&format!("SELECT count() FROM {table}")).await,
        "8"
    );

    // A new process with a fresh directory: everything comes from ClickHouse.
    let app = spawn_clickhouse(&table).await;
    let after = app.entitlements("acme").await;
    assert_eq!(after, before);
    assert_eq!(after["seq"], 4);
    assert_eq!(after["entitlements"][SKU], true);
    assert_eq!(after["entitlements"][OTHER_SKU], false);
    let actions = app.actions("acme").await;
    let seqs: Vec<u64> = actions.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 3, 2, 1]);

    // Redelivered events are duplicates; a PaymentIntent leads back to its org.
    app.deliver(&succeeded("evt_a1", "pi_a1", "acme")).await;
    app.deliver(&refunded("evt_a5", "pi_a1", None)).await;
    let ent = app.entitlements("acme").await;
    assert_eq!(ent["seq"], 5);
    assert_eq!(ent["entitlements"][SKU], false);
    assert_eq!(app.actions("acme").await.len(), 5);
    drop_table(&table).await;
}

#[tokio::test]
async fn kill_9_of_the_service_mid_load_then_redelivery_ends_exactly_as_the_events_say() {
    let table = unique_table("t_kill");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let owned = overrides(&table);
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let client = reqwest::Client::new();
    let events = load(100);
    let service = start_service(&config, port, &env).await;
    let base = service.base.clone();
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    let sends = futures_util::stream::iter(events.iter().map(|e| {
        let (client, base, acknowledged) = (&client, &base, &acknowledged);
        async move {
            let status = send(client, base, e).await;
            if status == Some(200) {
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (e, status)
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>();
    let (results, ()) = tokio::join!(sends, async {
        eventually(std::time::Duration::from_secs(30), || {
            let n = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
            async move { (n >= 50).then_some(()) }
        })
        .await;
        service.signal("KILL");
    });
    drop(service);
    // Stripe redelivers everything unacknowledged, and some acknowledged ones too.
    let mut pending: Vec<&Value> = results
        .iter()
        .filter(|(_, s)| *s != Some(200))
        .map(|(e, _)| *e)
        .collect();
    eprintln!(
        "kill -9 left {} of {} events unacknowledged",
        pending.len(),
        events.len()
    );
    pending.extend(events.iter().step_by(5));

    let service = start_service(&config, port, &env).await;
    for _round in 0..20 {
        let statuses =
            futures_util::future::join_all(pending.iter().map(|e| send(&client, &service.base, e)))
                .await;
        pending = pending
            .into_iter()
            .zip(statuses)
            .filter(|(_, s)| *s != Some(200))
            .map(|(e, _)| e)
            .collect();
        if pending.is_empty() {
            break;
        }
    }
    assert!(pending.is_empty());
    drop(service);

    check_store(dir, 100, &env).await;
    // No doubles even in the raw table: one row per action id.
    let counts: HashMap<String, u64> = clickhouse_query(&format!(
        "SELECT 'rows', count() FROM {table} UNION ALL SELECT 'ids', uniqExact(id) FROM {table}"
    ))
    .await
    .lines()
    .map(|l| {
        let (k, v) = l.split_once('\t').unwrap();
        (k.to_owned(), v.parse().unwrap())
    })
    .collect();
    assert_eq!(counts["ids"], 100 * 2 + 34, "{counts:?}");
    drop_table(&table).await;
}
