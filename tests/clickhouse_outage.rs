//! ClickHouse killed and restarted under load. A test binary of its own:
//! cargo runs test binaries one at a time, so no other test loses its
//! server. It needs the server that `tests/run` started (and can restart).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::test]
async fn clickhouse_killed_and_restarted_mid_load_loses_nothing_and_doubles_nothing() {
    let table = unique_table("t_outage");
    let url = clickhouse_url();
    let app = spawn(&[
        ("ENTITLEMENTS__STORE__BACKEND", "clickhouse"),
        ("ENTITLEMENTS__CLICKHOUSE__URL", &url),
        ("ENTITLEMENTS__CLICKHOUSE__TABLE", &table),
    ])
    .await;
    let events = load(60);
    let (first, rest) = events.split_at(events.len() / 3);
    for event in first {
        assert_eq!(app.webhook(event).await.status(), 200);
    }

    kill_clickhouse();
    // While the store is down: a bounded, clear refusal, and nothing applied.
    let started = Instant::now();
    let res = app.webhook(&rest[0]).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "persistence_unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a writer must hear back within a few seconds"
    );
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "store_unavailable"
    );

    // Load keeps coming, Stripe-style: retried until acknowledged, while the
    // server comes back part-way through.
    let restart = tokio::task::spawn_blocking(|| {
        std::thread::sleep(Duration::from_secs(2));
        clickhouse_script("start");
    });
    let mut pending: Vec<&Value> = rest.iter().collect();
    let mut refused = 0;
    for _round in 0..120 {
        let statuses: Vec<u16> = futures_util::stream::iter(pending.iter().map(|e| app.webhook(e)))
            .buffered(32)
            .map(|r| r.status().as_u16())
            .collect()
            .await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 503),
            "{statuses:?}"
        );
        refused += statuses.iter().filter(|s| **s == 503).count();
        pending = pending
            .into_iter()
            .zip(statuses)
            .filter(|(_, s)| *s != 200)
            .map(|(e, _)| e)
            .collect();
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    restart.await.unwrap();
    assert!(
        pending.is_empty(),
        "{} events never acknowledged after ClickHouse came back",
        pending.len()
    );
    assert!(
        refused > 0,
        "the outage should have refused some deliveries"
    );
    eventually(Duration::from_secs(10), || {
        let req = app.client.get(app.url("/readyz")).send();
        async move { req.await.ok().filter(|r| r.status() == 200) }
    })
    .await;

    // Every org exactly as its events say, and one row per action.
    for event in first.iter().step_by(7) {
        assert_eq!(
            app.webhook(event).await.status(),
            200,
            "a redelivered event is a duplicate"
        );
    }
    let dir = app.stop().await;
    check_store(
        dir,
        60,
        &[
            ("ENTITLEMENTS__STORE__BACKEND", "clickhouse"),
            ("ENTITLEMENTS__CLICKHOUSE__URL", &url),
            ("ENTITLEMENTS__CLICKHOUSE__TABLE", &table),
        ],
    )
    .await;
    let ids: HashSet<String> = clickhouse_query(&format!("SELECT id FROM {table} FINAL"))
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 60 * 2 + 20);
    drop_table(&table).await;
}
