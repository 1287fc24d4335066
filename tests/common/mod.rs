//! Black-box test harness: the real application on port 0, with its own
//! temporary config and store, driven over HTTP; the test services' (Stripe
//! emulator, ClickHouse, NATS) settings. What the loadtest and benches share
//! with the tests is in the `testkit` crate.
// Each test file uses part of the harness, and of what it passes on from testkit.
#![allow(dead_code, unused_imports)]

pub mod localstripe;
pub mod process;
pub mod sse;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use entitlements::configuration::Settings;
use entitlements::startup::{Application, Stopper};
use serde_json::Value;
use testkit::events::{self, Price};
pub use testkit::signing::{sign, sign_now, v1_signature};
pub use testkit::token::{jwt_signature, token};
pub use testkit::unix_now;

pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
pub const OLD_WEBHOOK_SECRET: &str = "whsec_test_rotated_out";
pub const JWT_SECRET: &str = "test-jwt-secret";
pub const SKU: &str = "compliance-pack";
pub const OTHER_SKU: &str = "audit-pack";

/// Where localstripe listens, when the test command started it.
pub fn localstripe_url() -> String {
    std::env::var("LOCALSTRIPE_URL").expect(
        "LOCALSTRIPE_URL is not set: run the tests with `tests/run`, which starts the Stripe emulator",
    )
}

/// A config for one test: its own store file, test secrets, port 0.
/// `extra` is TOML appended to it; later keys of a section win because the
/// file is built section by section from `overrides`.
pub fn config(dir: &std::path::Path, overrides: &[(&str, &str)]) -> Settings {
    let store = dir.join("actions.db");
    let text = format!(
        r#"
[server]
bind = "127.0.0.1:0"
[auth]
jwt_secret = "{JWT_SECRET}"
[stripe]
secret_key = "sk_test_entitlements"
publishable_key = "pk_test_entitlements"
webhook_secrets = ["{OLD_WEBHOOK_SECRET}", "{WEBHOOK_SECRET}"]
api_base = "http://127.0.0.1:9"
[store]
path = "{}"
[[products]]
sku = "{SKU}"
name = "Compliance Pack"
amount = 99900
currency = "usd"
[[products]]
sku = "{OTHER_SKU}"
name = "Audit Pack"
amount = 25000
currency = "usd"
"#,
        store.display()
    );
    let env = overrides
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::from_toml(&text, env).expect("test config is valid")
}

pub struct TestApp {
    pub base: String,
    pub settings: Settings,
    pub client: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
    stopper: Stopper,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the app with a fresh directory.
pub async fn spawn(overrides: &[(&str, &str)]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    spawn_in(dir, overrides).await
}

/// Starts the app on an existing directory (a restart keeps the store).
pub async fn spawn_in(dir: Arc<tempfile::TempDir>, overrides: &[(&str, &str)]) -> TestApp {
    let settings = config(dir.path(), overrides);
    spawn_with(dir, settings).await
}

pub async fn spawn_with(dir: Arc<tempfile::TempDir>, settings: Settings) -> TestApp {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let app_settings = settings.clone();
    let thread = std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            match Application::build(app_settings).await {
                Ok(app) => {
                    let _ = tx.send(Ok((app.port(), app.stopper())));
                    app.run_until_stopped().await.unwrap();
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (port, stopper) = rx.await.unwrap().expect("app starts");
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        settings,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        dir,
        stopper,
        thread: Some(thread),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn token(&self, org: &str) -> String {
        token(JWT_SECRET, org, unix_now() + 3600)
    }

    pub async fn get(&self, org: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(self.token(org))
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, org: &str, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(self.token(org))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn entitlements(&self, org: &str) -> Value {
        let res = self.get(org, "/v1/entitlements").await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    pub async fn actions(&self, org: &str) -> Vec<Value> {
        let res = self.get(org, "/v1/actions?limit=500").await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["actions"].as_array().unwrap().clone()
    }

    /// One sample of `/metrics` (a counter's `_total`, a gauge, or a
    /// histogram's `_sum` / `_count`), as a whole number.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                let value: f64 = l
                    .strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()?;
                Some(value as u64)
            })
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Sends `event` and expects 200 `{"received":true}`.
    pub async fn deliver(&self, event: &Value) {
        let res = self.webhook(event).await;
        let status = res.status();
        let body = res.text().await.unwrap();
        assert_eq!(status, 200, "{} answered {body}", event["id"]);
        assert_eq!(body, r#"{"received":true}"#);
    }

    /// Sends `event` signed with the current webhook secret, now.
    pub async fn webhook(&self, event: &Value) -> reqwest::Response {
        let body = serde_json::to_vec(event).unwrap();
        let header = sign_now(&body, WEBHOOK_SECRET);
        self.webhook_raw(body, Some(header)).await
    }

    /// Sends every event at once; the statuses, in the events' order.
    pub async fn webhook_statuses<'a>(
        &self,
        events: impl IntoIterator<Item = &'a Value>,
    ) -> Vec<u16> {
        let sends = events.into_iter().map(|e| self.webhook(e));
        futures_util::future::join_all(sends)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect()
    }

    pub async fn webhook_raw(&self, body: Vec<u8>, header: Option<String>) -> reqwest::Response {
        let mut req = self.client.post(self.url("/webhooks/stripe")).body(body);
        if let Some(h) = header {
            req = req.header("Stripe-Signature", h);
        }
        req.header("Content-Type", "application/json")
            .send()
            .await
            .unwrap()
    }

    /// Graceful stop (as on SIGTERM); returns the directory for a restart.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.stopper.stop().await;
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        self.dir.clone()
    }
}

/// The price of every product event the tests send, whatever its SKU.
pub fn price(sku: &str) -> Price<'_> {
    Price {
        sku,
        amount: 99900,
        currency: "usd",
    }
}

pub fn payment_intent_event(
    event_id: &str,
    event_type: &str,
    pi: &str,
    org: &str,
    sku: &str,
) -> Value {
    events::payment_intent(event_id, event_type, pi, org, &price(sku))
}

pub fn succeeded(event_id: &str, pi: &str, org: &str) -> Value {
    payment_intent_event(event_id, events::SUCCEEDED, pi, org, SKU)
}

pub fn failed(event_id: &str, pi: &str, org: &str) -> Value {
    payment_intent_event(event_id, events::PAYMENT_FAILED, pi, org, SKU)
}

/// `charge.refunded` for a full refund; `owner` (org, SKU) is the charge's metadata.
pub fn refunded(event_id: &str, pi: &str, owner: Option<(&str, &str)>) -> Value {
    let (org, sku) = owner.unzip();
    events::charge_refunded(event_id, pi, &price(sku.unwrap_or(SKU)), org)
}

pub fn dispute_created(event_id: &str, pi: &str, owner: Option<(&str, &str)>) -> Value {
    let (org, sku) = owner.unzip();
    events::dispute_created(event_id, pi, &price(sku.unwrap_or(SKU)), org)
}

/// Polls `check` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ClickHouse server the test command started.
pub fn clickhouse_url() -> String {
    std::env::var("CLICKHOUSE_URL").expect(
        "CLICKHOUSE_URL is not set: run the tests with `tests/run`, which starts ClickHouse",
    )
}

/// A table name no other test uses.
pub fn unique_table(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "{prefix}_{}_{}_{n}",
        std::process::id(),
        actors::model::now_ms()
    )
}

/// Drops a test's actions table and the index the service made beside it.
pub async fn drop_table(table: &str) {
    clickhouse_query(&format!("DROP TABLE IF EXISTS {table}_intent_owners")).await;
    clickhouse_query(&format!("DROP TABLE IF EXISTS {table}")).await;
}

/// Runs one SQL statement over ClickHouse's HTTP interface; the body of the answer.
pub async fn clickhouse_query(sql: &str) -> String {
    let res = reqwest::Client::new()
        .post(clickhouse_url())
        .body(sql.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{sql}: {text}");
    text.trim().to_owned()
}

/// The NATS cluster the test command started, as `jetstream.servers` takes it.
pub fn nats_servers() -> Vec<String> {
    std::env::var("NATS_URLS")
        .expect("NATS_URLS is not set: run the tests with `tests/run`, which starts a NATS cluster")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Overrides that put an app on its own JetStream stream (named `stream`),
/// with `replicas` replicas and no ClickHouse projection.
pub fn jetstream_overrides(stream: &str, replicas: usize) -> Vec<(String, String)> {
    let servers = nats_servers()
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        ("ENTITLEMENTS__STORE__BACKEND".into(), "jetstream".into()),
        (
            "ENTITLEMENTS__JETSTREAM__SERVERS".into(),
            format!("[{servers}]"),
        ),
        ("ENTITLEMENTS__JETSTREAM__STREAM".into(), stream.into()),
        (
            "ENTITLEMENTS__JETSTREAM__SUBJECT_PREFIX".into(),
            stream.to_lowercase(),
        ),
        (
            "ENTITLEMENTS__JETSTREAM__REPLICAS".into(),
            replicas.to_string(),
        ),
        (
            "ENTITLEMENTS__JETSTREAM__CLICKHOUSE_PROJECTION".into(),
            "false".into(),
        ),
        (
            "ENTITLEMENTS__STRIPE__RECONCILE_INTERVAL_SECS".into(),
            "0".into(),
        ),
    ]
}

/// Overrides for an app on its own R3 stream that projects into `table`.
pub fn jetstream_projection_overrides(stream: &str, table: &str) -> Vec<(String, String)> {
    let mut overrides = jetstream_overrides(stream, 3);
    overrides.retain(|(k, _)| k != "ENTITLEMENTS__JETSTREAM__CLICKHOUSE_PROJECTION");
    overrides.push(("ENTITLEMENTS__CLICKHOUSE__URL".into(), clickhouse_url()));
    overrides.push(("ENTITLEMENTS__CLICKHOUSE__TABLE".into(), table.into()));
    overrides
}

/// A stream name no other test uses.
pub fn stream_name(prefix: &str) -> String {
    unique_table(prefix).to_uppercase()
}

/// Settings for a `JetStreamStore` of its own on `stream`, as the service
/// would build them from `jetstream_overrides`.
pub fn jetstream_store_settings(stream: &str, replicas: usize) -> actors::store::JetStreamSettings {
    actors::store::JetStreamSettings {
        servers: nats_servers(),
        stream: stream.into(),
        subject_prefix: stream.to_lowercase(),
        replicas,
        user: String::new(),
        password: Default::default(),
        credentials_file: String::new(),
        timeout: Duration::from_secs(10),
    }
}

/// `overrides` as `spawn` takes them.
pub fn as_pairs(overrides: &[(String, String)]) -> Vec<(&str, &str)> {
    overrides
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Runs `tests/support/clickhouse-server.sh <action>` (start, stop).
pub fn clickhouse_script(action: &str) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/clickhouse-server.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "clickhouse-server.sh {action}");
}

/// SIGKILLs the ClickHouse server the test command started.
pub fn kill_clickhouse() {
    let run_dir = std::env::var("RUN_DIR").unwrap_or_else(|_| "/tmp/entitlements-test".into());
    let pid_file = PathBuf::from(run_dir).join("clickhouse-server.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: this test needs the ClickHouse server that tests/run started",
            pid_file.display()
        )
    });
    let status = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_file(pid_file);
}
