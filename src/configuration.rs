//! Typed configuration: `config.toml` (or `--config PATH`), then
//! `ENTITLEMENTS__<SECTION>__<KEY>` overrides, then validation. Keys left out
//! take the contract's defaults; an unknown key or a value that cannot work
//! stops start-up with one line naming the key.

use std::net::ToSocketAddrs;
use std::path::Path;

use actors::secret::Secret;
use serde::{Deserialize, Deserializer};

pub const DEVELOPMENT_JWT_SECRET: &str = "dev-only-secret";
const PLACEHOLDER_SECRET_KEY: &str = "sk_test_...";
const PLACEHOLDER_WEBHOOK_SECRET: &str = "whsec_...";
const ENV_PREFIX: &str = "ENTITLEMENTS__";

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub stripe: StripeSettings,
    pub store: StoreSettings,
    pub clickhouse: ClickHouseSettings,
    pub jetstream: JetStreamSettings,
    pub persistence: PersistenceSettings,
    pub orgs: OrgSettings,
    pub sse: SseSettings,
    pub logging: LoggingSettings,
    pub products: Vec<ProductSettings>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub bind: String,
    pub environment: Environment,
    pub max_body_bytes: usize,
    /// A request body not fully received by then is answered 408 and its
    /// connection closed.
    pub body_timeout_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub jwt_secret: Secret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeSettings {
    pub secret_key: Secret,
    pub publishable_key: String,
    #[serde(deserialize_with = "one_or_many")]
    pub webhook_secrets: Vec<Secret>,
    pub api_base: String,
    pub tolerance_secs: u64,
    pub reconcile_interval_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    ClickHouse,
    JetStream,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: Backend,
    pub path: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Secret,
    pub table: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamSettings {
    pub servers: Vec<String>,
    pub stream: String,
    pub subject_prefix: String,
    pub replicas: usize,
    pub user: String,
    pub password: Secret,
    pub credentials_file: String,
    pub clickhouse_projection: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceSettings {
    pub batch_max_rows: usize,
    pub batch_max_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrgSettings {
    pub idle_stop_secs: u64,
    pub mailbox: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SseSettings {
    pub keep_alive_secs: u64,
    pub client_queue: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSettings {
    pub format: LogFormat,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSettings {
    pub sku: String,
    pub name: String,
    pub amount: i64,
    pub currency: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            auth: AuthSettings::default(),
            stripe: StripeSettings::default(),
            store: StoreSettings::default(),
            clickhouse: ClickHouseSettings::default(),
            jetstream: JetStreamSettings::default(),
            persistence: PersistenceSettings::default(),
            orgs: OrgSettings::default(),
            sse: SseSettings::default(),
            logging: LoggingSettings::default(),
            products: vec![ProductSettings {
                sku: "compliance-pack".into(),
                name: "Compliance Pack".into(),
                amount: 99900,
                currency: "usd".into(),
            }],
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8787".into(),
            environment: Environment::Development,
            max_body_bytes: 262_144,
            body_timeout_secs: 10,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: Secret::new(DEVELOPMENT_JWT_SECRET),
        }
    }
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            secret_key: Secret::new(PLACEHOLDER_SECRET_KEY),
            publishable_key: "pk_test_...".into(),
            webhook_secrets: vec![Secret::new(PLACEHOLDER_WEBHOOK_SECRET)],
            api_base: "https://api.stripe.com".into(),
            tolerance_secs: 300,
            reconcile_interval_secs: 300,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            path: "data/actions.db".into(),
        }
    }
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            user: "default".into(),
            password: Secret::default(),
            table: "actions".into(),
        }
    }
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: "ENTITLEMENTS".into(),
            subject_prefix: "entitlements".into(),
            replicas: 1,
            user: String::new(),
            password: Secret::default(),
            credentials_file: String::new(),
            clickhouse_projection: true,
        }
    }
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        Self {
            batch_max_rows: 1000,
            batch_max_ms: 20,
        }
    }
}

impl Default for OrgSettings {
    fn default() -> Self {
        Self {
            idle_stop_secs: 600,
            mailbox: 256,
        }
    }
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            keep_alive_secs: 15,
            client_queue: 64,
        }
    }
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
        }
    }
}

/// `webhook_secrets` as a TOML array, or as one string (comma-separated) from the environment.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|p| Secret::new(p.trim())).collect(),
        OneOrMany::Many(v) => v.into_iter().map(Secret::new).collect(),
    })
}

impl Settings {
    /// Reads `path`, applies the environment's overrides, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, std::env::vars())
    }

    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError(format!("config file: {}", e.message())))?;
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let [section, key] = path.as_slice() else {
                return Err(ConfigError(format!(
                    "{name}: expected ENTITLEMENTS__<SECTION>__<KEY>"
                )));
            };
            let table = root
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| ConfigError(format!("{name}: `{section}` is not a section")))?;
            table.insert(key.clone(), env_value(&raw));
        }
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(root))
            .map_err(|e| ConfigError(format!("{}: {}", e.path(), e.inner().message())))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self
            .server
            .bind
            .to_socket_addrs()
            .map(|mut a| a.next().is_none())
            .unwrap_or(true)
        {
            return fail("server.bind", "must be a host:port to listen on");
        }
        if self.server.max_body_bytes == 0 {
            return fail("server.max_body_bytes", "must be positive");
        }
        if self.server.body_timeout_secs == 0 {
            return fail("server.body_timeout_secs", "must be positive");
        }
        if self.auth.jwt_secret.is_empty() {
            return fail("auth.jwt_secret", "must not be empty");
        }
        if self.server.environment == Environment::Production {
            // The development placeholders of config.toml must not go live.
            let development = [
                (
                    "auth.jwt_secret",
                    self.auth.jwt_secret.expose() == DEVELOPMENT_JWT_SECRET,
                ),
                (
                    "stripe.secret_key",
                    self.stripe.secret_key.expose() == PLACEHOLDER_SECRET_KEY,
                ),
                (
                    "stripe.webhook_secrets",
                    self.stripe
                        .webhook_secrets
                        .iter()
                        .any(|s| s.expose() == PLACEHOLDER_WEBHOOK_SECRET),
                ),
            ];
            if let Some((key, _)) = development
                .iter()
                .find(|(_, is_development)| *is_development)
            {
                return fail(key, "production must not use the development value");
            }
        }
        if self.stripe.webhook_secrets.is_empty()
            || self.stripe.webhook_secrets.iter().any(Secret::is_empty)
        {
            return fail(
                "stripe.webhook_secrets",
                "must list at least one non-empty secret",
            );
        }
        if !(self.stripe.api_base.starts_with("http://")
            || self.stripe.api_base.starts_with("https://"))
        {
            return fail("stripe.api_base", "must be an http(s) URL");
        }
        if self.stripe.secret_key.is_empty() {
            return fail("stripe.secret_key", "must not be empty");
        }
        if self.persistence.batch_max_rows == 0 {
            return fail("persistence.batch_max_rows", "must be positive");
        }
        if self.orgs.mailbox == 0 {
            return fail("orgs.mailbox", "must be positive");
        }
        if self.orgs.idle_stop_secs == 0 {
            return fail("orgs.idle_stop_secs", "must be positive");
        }
        if self.sse.client_queue == 0 {
            return fail("sse.client_queue", "must be positive");
        }
        if self.sse.keep_alive_secs == 0 {
            return fail("sse.keep_alive_secs", "must be positive");
        }
        if self.store.backend == Backend::Embedded && self.store.path.is_empty() {
            return fail("store.path", "must name the embedded store file");
        }
        if self.store.backend == Backend::JetStream {
            let js = &self.jetstream;
            if js.servers.is_empty() || js.servers.iter().any(String::is_empty) {
                return fail(
                    "jetstream.servers",
                    "must list at least one NATS server URL",
                );
            }
            let name_ok = |name: &str| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !name_ok(&js.stream) {
                return fail("jetstream.stream", "must be letters, digits, `_` and `-`");
            }
            if !js.subject_prefix.split('.').all(name_ok) {
                return fail(
                    "jetstream.subject_prefix",
                    "must be dot-separated tokens of letters, digits, `_` and `-`",
                );
            }
            if !(1..=5).contains(&js.replicas) {
                return fail("jetstream.replicas", "must be 1 to 5");
            }
        }
        let clickhouse_used = self.store.backend == Backend::ClickHouse
            || (self.store.backend == Backend::JetStream && self.jetstream.clickhouse_projection);
        if clickhouse_used
            && (self.clickhouse.table.is_empty()
                || !self
                    .clickhouse
                    .table
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return fail(
                "clickhouse.table",
                "must be letters, digits and underscores",
            );
        }
        if self.products.is_empty() {
            return fail("products", "must list at least one product");
        }
        for (i, p) in self.products.iter().enumerate() {
            if !actors::org_id::is_identifier(&p.sku) {
                return fail(
                    &format!("products[{i}].sku"),
                    "must be 1 to 64 of A-Za-z0-9_-",
                );
            }
            if self.products[..i].iter().any(|q| q.sku == p.sku) {
                return fail(&format!("products[{i}].sku"), "is listed twice");
            }
            if p.amount <= 0 {
                return fail(&format!("products[{i}].amount"), "must be positive");
            }
            if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return fail(
                    &format!("products[{i}].currency"),
                    "must be a lowercase ISO 4217 code",
                );
            }
        }
        Ok(())
    }
}

/// An environment value is read as a TOML value when it is one (numbers,
/// booleans, arrays), and as a plain string otherwise.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_takes_the_contract_defaults() {
        let s = Settings::from_toml("", env(&[])).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8787");
        assert_eq!(s.persistence.batch_max_ms, 20);
        assert_eq!(s.products[0].sku, "compliance-pack");
        assert_eq!(s.store.backend, Backend::Embedded);
    }

    #[test]
    fn environment_overrides_keys() {
        let s = Settings::from_toml(
            "[stripe]\nsecret_key = \"sk_file\"\n",
            env(&[
                ("ENTITLEMENTS__STRIPE__SECRET_KEY", "sk_env"),
                ("ENTITLEMENTS__PERSISTENCE__BATCH_MAX_MS", "5"),
                ("ENTITLEMENTS__STRIPE__WEBHOOK_SECRETS", "whsec_a,whsec_b"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(s.stripe.secret_key.expose(), "sk_env");
        assert_eq!(s.persistence.batch_max_ms, 5);
        let secrets: Vec<&str> = s
            .stripe
            .webhook_secrets
            .iter()
            .map(Secret::expose)
            .collect();
        assert_eq!(secrets, vec!["whsec_a", "whsec_b"]);
    }

    #[test]
    fn printing_the_settings_never_shows_a_secret() {
        let secrets = [
            "jwt-s3cret-value",
            "sk_live_s3cret",
            "whsec_s3cret_one",
            "whsec_s3cret_two",
            "clickhouse-pa55word",
            "nats-pa55word",
        ];
        let s = Settings::from_toml(
            &format!(
                "[auth]\njwt_secret = \"{}\"\n[stripe]\nsecret_key = \"{}\"\n\
                 webhook_secrets = [\"{}\", \"{}\"]\n[clickhouse]\npassword = \"{}\"\n\
                 [jetstream]\nuser = \"svc\"\npassword = \"{}\"\n",
                secrets[0], secrets[1], secrets[2], secrets[3], secrets[4], secrets[5]
            ),
            env(&[]),
        )
        .unwrap();
        assert_eq!(s.auth.jwt_secret.expose(), secrets[0]);
        assert_eq!(s.jetstream.password.expose(), secrets[5]);
        let printed = format!("{s:?} {s:#?}");
        for secret in secrets {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert_eq!(printed.matches("<redacted>").count(), 2 * secrets.len());
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            ("[store]\nbackend = \"postgres\"", "store.backend"),
            ("[stripe]\nwebhook_secrets = []", "stripe.webhook_secrets"),
            (
                "[[products]]\nsku = \"x\"\nname = \"X\"\namount = 0\ncurrency = \"usd\"",
                "products[0].amount",
            ),
            ("[server]\nenvironment = \"production\"", "auth.jwt_secret"),
            (
                "[server]\nenvironment = \"production\"\n[auth]\njwt_secret = \"s3cret\"",
                "stripe.secret_key",
            ),
            (
                "[server]\nenvironment = \"production\"\n[auth]\njwt_secret = \"s3cret\"\n[stripe]\nsecret_key = \"sk_live_x\"",
                "stripe.webhook_secrets",
            ),
            ("[server]\nbogus = 1", "server"),
            (
                "[store]\nbackend = \"jetstream\"\n[jetstream]\nservers = []",
                "jetstream.servers",
            ),
            (
                "[store]\nbackend = \"jetstream\"\n[jetstream]\nsubject_prefix = \"a..b\"",
                "jetstream.subject_prefix",
            ),
            (
                "[store]\nbackend = \"jetstream\"\n[jetstream]\nreplicas = 0",
                "jetstream.replicas",
            ),
        ];
        for (text, key) in cases {
            let err = Settings::from_toml(text, env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }
}
