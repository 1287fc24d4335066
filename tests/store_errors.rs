//! Store failures told apart, seen from outside: a corrupt row in the
//! embedded SQLite store is answered, logged and counted as corrupt, for its
//! org only, and read once per request rather than retried.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::*;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn a_corrupt_row_is_answered_logged_and_counted_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "[logging]\nformat = \"json\"\n");
    let client = reqwest::Client::new();
    let (broken, fine) = ("org_corrupt_row", "org_fine_row");
    {
        let service = start_service(&config, port, &[]).await;
        for (i, org) in [broken, fine].into_iter().enumerate() {
            let payment = succeeded(&format!("evt_corrupt_{i}"), &format!("pi_corrupt_{i}"), org);
            assert_eq!(send(&client, &service.base, &payment).await, Some(200));
        }
        // Dropped: killed, with both rows durable.
    }
    let spoiled = rusqlite::Connection::open(dir.path().join("actions.db"))
        .unwrap()
        .execute(
            "UPDATE actions SET kind = 'bogus' WHERE org_id = ?1",
            [broken],
        )
        .unwrap();
    assert_eq!(spoiled, 1);

    let mut service =
        start_service_with_stdout(&config, port, &[("RUST_LOG", "warn")], Stdio::piped()).await;
    let entitlements = |org: &str| {
        client
            .get(format!("{}/v1/entitlements", service.base))
            .bearer_auth(token(JWT_SECRET, org, unix_now() + 600))
            .send()
    };

    // A read of the org says that a read failed, and why.
    let res = entitlements(broken).await.unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "persistence_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    for part in ["could not be read", "corrupt", broken, "pay_pi_corrupt_0"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // So does a webhook for it; Stripe will retry, nothing is written.
    let payment = succeeded("evt_corrupt_2", "pi_corrupt_2", broken);
    assert_eq!(send(&client, &service.base, &payment).await, Some(503));
    // Another org is not affected.
    assert_eq!(entitlements(fine).await.unwrap().status(), 200);

    // Counted as corrupt, once per request: nothing retries behind them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = client
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "entitlements_webhooks_total{outcome=\"corrupt\"} 1",
        "entitlements_store_errors_by_kind_total{operation=\"read\",kind=\"corrupt\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in\n{metrics}"
        );
    }

    // Logged as an error naming the org and the row.
    service.signal("TERM");
    let mut stdout = service.child.stdout.take().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    })
    .await
    .unwrap();
    let errors: Vec<Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert!(
        errors
            .iter()
            .any(|l| l["fields"]["org_id"] == broken && l["fields"]["row"] == "pay_pi_corrupt_0"),
        "no ERROR line naming {broken} and its row in\n{output}"
    );
}
