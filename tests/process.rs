//! The binary as a user runs it: configuration errors, the token command,
//! SIGTERM draining, and `kill -9` in the middle of a load.

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::*;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use testkit::token::base64url;

#[test]
fn a_config_that_cannot_work_stops_start_up_with_one_line_naming_the_key() {
    let cases = [
        (
            "[persistence]\nbatch_max_rows = 0",
            "persistence.batch_max_rows",
        ),
        (
            "[[products]]\nsku = \"x\"\nname = \"X\"\namount = -5\ncurrency = \"usd\"",
            "products[0].amount",
        ),
        ("[orgs]\nmailbox = \"many\"", "orgs.mailbox"),
    ];
    for (extra, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), free_port(), extra);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(
            !dir.path().join("actions.db").exists(),
            "nothing is half-started"
        );
    }
    // Section-level mistakes, through the file and through the environment.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), "");
    for (var, value, key) in [
        ("ENTITLEMENTS__STORE__BACKEND", "postgres", "store.backend"),
        (
            "ENTITLEMENTS__STRIPE__WEBHOOK_SECRETS",
            "[]",
            "stripe.webhook_secrets",
        ),
        ("ENTITLEMENTS__SERVER__ENVIRONMENT", "production", ""),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config).env(var, value);
        if value == "production" {
            cmd.env("ENTITLEMENTS__AUTH__JWT_SECRET", "dev-only-secret");
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{var}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let key = if key.is_empty() {
            "auth.jwt_secret"
        } else {
            key
        };
        assert!(stderr.contains(key), "{var}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn the_token_command_prints_a_token_for_the_org() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), "");
    let out = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "token",
            "--org",
            "acme",
            "--ttl-secs",
            "120",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims = base64url::decode(parts[1]);
    let claims: Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["org"], "acme");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        (unix_now() + 100..=unix_now() + 121).contains(&exp),
        "{exp}"
    );
    // The signature checks out under the configured secret, computed here.
    assert_eq!(
        parts[2],
        jwt_signature(JWT_SECRET, &format!("{}.{}", parts[0], parts[1]))
    );

    let bad = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "token",
            "--org",
            "no/slash",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_with_every_acknowledged_event_stored() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let mut service = start_service(&config, port, &[]).await;
    let client = reqwest::Client::new();
    let events = load(30);
    for event in &events {
        assert_eq!(send(&client, &service.base, event).await, Some(200));
    }
    // A burst in flight when the signal arrives: whatever was acknowledged must be stored.
    let burst: Vec<Value> = (0..50)
        .map(|i| failed(&format!("evt_burst_{i}"), &format!("pi_b{i}"), "late"))
        .collect();
    let sends =
        futures_util::future::join_all(burst.iter().map(|e| send(&client, &service.base, e)));
    let (statuses, ()) = tokio::join!(sends, async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        service.signal("TERM");
    });
    let status = tokio::task::spawn_blocking(move || {
        let status = service.child.wait().unwrap();
        std::mem::forget(service); // already reaped
        status
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    let acknowledged = statuses.iter().filter(|s| **s == Some(200)).count();

    check_store(dir.clone(), 30, &[]).await;
    let app = spawn_in(dir, &[]).await;
    assert!(app.actions("late").await.len() >= acknowledged);
}

#[tokio::test]
async fn kill_9_mid_load_then_redelivery_until_2xx_ends_exactly_as_the_events_say() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let port = free_port();
    let config = write_config(dir.path(), port, "");
    let client = reqwest::Client::new();
    let events = load(300);

    let service = start_service(&config, port, &[]).await;
    let base = service.base.clone();
    // Half the load, 32 at a time, killed once some of it is acknowledged.
    let first_half = &events[..events.len() / 2];
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    let sends = futures_util::stream::iter(first_half.iter().map(|e| {
        let (client, base, acknowledged) = (&client, &base, &acknowledged);
        async move {
            let status = send(client, base, e).await;
            if status == Some(200) {
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            status
        }
    }))
    .buffered(32)
    .collect::<Vec<_>>();
    let (statuses, ()) = tokio::join!(sends, async {
        eventually(Duration::from_secs(20), || {
            let n = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
            async move { (n >= 60).then_some(()) }
        })
        .await;
        service.signal("KILL");
    });
    drop(service);
    let refused = statuses.iter().filter(|s| **s != Some(200)).count();
    eprintln!(
        "kill -9 left {refused} of {} events unacknowledged",
        first_half.len()
    );
    let mut unacknowledged: Vec<&Value> = first_half
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| **s != Some(200))
        .map(|(e, _)| e)
        .collect();
    // Stripe also redelivers some that were acknowledged (it cannot know).
    unacknowledged.extend(first_half.iter().step_by(4));
    unacknowledged.extend(&events[events.len() / 2..]);

    let service = start_service(&config, port, &[]).await;
    for _round in 0..20 {
        let results = futures_util::future::join_all(
            unacknowledged
                .iter()
                .map(|e| send(&client, &service.base, e)),
        )
        .await;
        unacknowledged = unacknowledged
            .into_iter()
            .zip(results)
            .filter(|(_, s)| *s != Some(200))
            .map(|(e, _)| e)
            .collect();
        if unacknowledged.is_empty() {
            break;
        }
    }
    assert!(unacknowledged.is_empty());
    drop(service);
    check_store(dir, 300, &[]).await;
}

/// With `logging.format = "json"` and `RUST_LOG=debug`, every line about one
/// webhook carries its `event_id` and its `org_id`: the route's, the
/// StripeActor's (which finds the org) and the org actor's (which records
/// the action) alike.
#[tokio::test]
async fn one_webhooks_log_lines_all_carry_its_event_id_and_org_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, "[logging]\nformat = \"json\"\n");
    let mut service = start_service_with_stdout(
        &config,
        port,
        &[("RUST_LOG", "debug")],
        std::process::Stdio::piped(),
    )
    .await;
    let client = reqwest::Client::new();
    let (event_id, org) = ("evt_log_path_1", "org_log_path");
    let payment = succeeded(event_id, "pi_log_path_1", org);
    assert_eq!(send(&client, &service.base, &payment).await, Some(200));
    // A refund without metadata: its org is found on the way, not named.
    let refund = refunded("evt_log_path_2", "pi_log_path_1", None);
    assert_eq!(send(&client, &service.base, &refund).await, Some(200));
    service.signal("TERM");
    let mut stdout = service.child.stdout.take().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        assert_eq!(service.child.wait().unwrap().code(), Some(0));
        std::mem::forget(service); // already reaped
        text
    })
    .await
    .unwrap();

    let lines: Vec<Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    for event_id in [event_id, "evt_log_path_2"] {
        let of_event: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(event_id))
            .collect();
        let field = |line: &Value, name: &str| {
            line["span"][name]
                .as_str()
                .or(line["fields"][name].as_str())
                .map(str::to_owned)
        };
        for line in &of_event {
            assert_eq!(field(line, "event_id").as_deref(), Some(event_id), "{line}");
            assert_eq!(field(line, "org_id").as_deref(), Some(org), "{line}");
        }
        let targets: std::collections::BTreeSet<&str> = of_event
            .iter()
            .filter_map(|l| l["target"].as_str())
            .collect();
        for target in [
            "entitlements::routes::webhook",
            "actors::stripe",
            "actors::org",
        ] {
            // A module's own lines or its submodules' (actors::org::actor).
            let from_module = |t: &&str| {
                t.strip_prefix(target)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            };
            assert!(
                targets.iter().any(from_module),
                "{event_id}: no line from {target} among {targets:?}"
            );
        }
    }
}
