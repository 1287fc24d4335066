//! The service as a separate process, for tests that signal or kill it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::*;

pub use testkit::process::{free_port, ServiceProcess};

pub const BIN: &str = env!("CARGO_BIN_EXE_entitlements");

pub fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:{port}"
[auth]
jwt_secret = "{JWT_SECRET}"
[stripe]
webhook_secrets = ["{WEBHOOK_SECRET}"]
api_base = "http://127.0.0.1:9"
[store]
path = "{}"
{extra}
"#,
        dir.join("actions.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary with `config` plus `env` overrides; waits until ready.
pub async fn start_service(config: &Path, port: u16, env: &[(&str, &str)]) -> ServiceProcess {
    start_service_with_stdout(config, port, env, Stdio::null()).await
}

/// As `start`, with the service's log lines (stdout) sent to `stdout`;
/// `RUST_LOG` is `warn` unless `env` sets it.
pub async fn start_service_with_stdout(
    config: &Path,
    port: u16,
    env: &[(&str, &str)],
    stdout: Stdio,
) -> ServiceProcess {
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::inherit());
    ServiceProcess::start(command, port, "/readyz", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn send(client: &reqwest::Client, base: &str, event: &Value) -> Option<u16> {
    let body = serde_json::to_vec(event).unwrap();
    let header = sign_now(&body, WEBHOOK_SECRET);
    let res = client
        .post(format!("{base}/webhooks/stripe"))
        .header("Stripe-Signature", header)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    Some(res.status().as_u16())
}

/// The load: per org, a failed attempt, a success, and for some a refund.
pub fn load(orgs: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for o in 0..orgs {
        let org = format!("org{o}");
        events.push(failed(&format!("evt_f_{o}"), &format!("pi_{o}"), &org));
        events.push(succeeded(&format!("evt_s_{o}"), &format!("pi_{o}"), &org));
        if o % 3 == 0 {
            events.push(refunded(
                &format!("evt_r_{o}"),
                &format!("pi_{o}"),
                Some((&org, SKU)),
            ));
        }
    }
    events
}

/// Checks every org against what its events mean, through a fresh in-process app.
pub async fn check_store(dir: Arc<tempfile::TempDir>, orgs: usize, overrides: &[(&str, &str)]) {
    let app = spawn_in(dir, overrides).await;
    for o in 0..orgs {
        let org = format!("org{o}");
        let actions = app.actions(&org).await;
        let expected = if o % 3 == 0 { 3 } else { 2 };
        assert_eq!(actions.len(), expected, "{org}: {actions:?}");
        let ent = app.entitlements(&org).await;
        assert_eq!(ent["entitlements"][SKU], o % 3 != 0, "{org}");
        assert_eq!(ent["seq"], expected as u64, "{org}");
    }
}
