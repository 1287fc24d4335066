//! The ClickHouse backend of the action log.
//!
//! One `ReplacingMergeTree` table sorted by `(org_id, id)`, and beside it an
//! index of PaymentIntent owners sorted by PaymentIntent. Action ids are
//! deterministic, so a batch written twice (a retry after a timeout whose
//! first attempt did land, or an event redelivered after a crash) only adds
//! copies of rows that already exist; merges drop them eventually and every
//! read keeps one row per id at once (`FINAL`, or for org histories by
//! dropping repeats here, which costs the server less).
//!
//! The SQL sticks to what both ClickHouse 18.16 (Debian's package, used in
//! tests) and current releases / ClickHouse Cloud accept: `String` rather than
//! `LowCardinality`/`Enum`, `UInt8` rather than `Bool`, no `Nullable`. For the
//! same reason the client runs with validation off: 18.16 lacks the
//! `RowBinaryWithNamesAndTypes` format that validation relies on, so rows
//! travel as plain `RowBinary` and `ActionRow` must match the DDL column for
//! column.

mod rows;
mod schema;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use tokio::sync::Semaphore;

use self::rows::{ActionRow, OwnerRow};
use super::{Cause, PaymentIntentOwner, StoreError};
use crate::model::Action;
use crate::secret::Secret;

#[derive(Clone, Debug)]
pub struct ClickHouseSettings {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Empty means the user's default database.
    pub database: String,
    /// Empty means `default`.
    pub user: String,
    pub password: Secret,
    /// Must match `[A-Za-z0-9_]+`: it is the one thing put into SQL as text.
    pub table: String,
    /// Upper bound on every operation, connecting included.
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct ClickHouseStore {
    client: Client,
    table: String,
    timeout: Duration,
    /// Kept only to scrub it from error messages, in case anything echoes it.
    password: Secret,
    /// Caps the queries in flight: thousands of orgs loading at once would
    /// otherwise overrun the server's own limit and all time out; queued
    /// ones wait their turn within the same timeout.
    queries: Arc<Semaphore>,
}

/// Queries in flight at once, well under ClickHouse's default limit of 100.
const MAX_CONCURRENT_QUERIES: usize = 32;

impl ClickHouseStore {
    /// Builds the client; connects lazily, so this never touches the network.
    pub fn new(settings: ClickHouseSettings) -> Result<Self, StoreError> {
        let table_ok = !settings.table.is_empty()
            && settings
                .table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !table_ok {
            return Err(StoreError::unavailable(format!(
                "invalid ClickHouse table name {:?}: use only A-Z, a-z, 0-9 and _",
                settings.table
            )));
        }

        let mut client = Client::default()
            .with_url(&settings.url)
            .with_validation(false);
        if !settings.database.is_empty() {
            client = client.with_database(&settings.database);
        }
        // Always name the user: 18.16 treats a password sent without a user
        // as user "" ("Unknown user") instead of `default`.
        let user = match settings.user.as_str() {
            "" => "default",
            user => user,
        };
        client = client.with_user(user);
        if !settings.password.is_empty() {
            client = client.with_password(settings.password.expose());
        }

        Ok(ClickHouseStore {
            client,
            table: settings.table,
            timeout: settings.timeout,
            password: settings.password,
            queries: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded("ping", self.client.query("SELECT 1").execute())
            .await
    }

    /// One INSERT for the whole batch. If the timeout fires mid-stream the
    /// request is dropped and the server discards the partial INSERT; if it
    /// fires after the server committed, the caller's retry only writes
    /// duplicates, which reads collapse.
    pub async fn insert_batch(&self, rows: Vec<Action>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let insert = async {
            let mut insert = self.client.insert::<ActionRow>(&self.table).await?;
            for row in rows {
                insert.write(&ActionRow::from(row)).await?;
            }
            insert.end().await
        };
        self.bounded("insert", insert).await
    }

    /// Adds PaymentIntent owners to the index, in one INSERT.
    pub async fn insert_intent_owners(
        &self,
        owners: Vec<(String, PaymentIntentOwner)>,
    ) -> Result<(), StoreError> {
        if owners.is_empty() {
            return Ok(());
        }
        let table = Self::intent_owners_table(&self.table);
        let insert = async {
            let mut insert = self.client.insert::<OwnerRow>(&table).await?;
            for (external_id, owner) in owners {
                let row = OwnerRow {
                    external_id,
                    org_id: owner.org_id,
                    sku: owner.sku,
                };
                insert.write(&row).await?;
            }
            insert.end().await
        };
        self.bounded("insert_intent_owners", insert).await
    }

    /// Every action of each org, in one query. Without `FINAL`, which costs
    /// this server about twice the CPU: repeats of an action are identical,
    /// so the first row of each id is kept here instead.
    pub async fn actions_of_orgs(
        &self,
        org_ids: &[String],
    ) -> Result<HashMap<String, Vec<Action>>, StoreError> {
        let mut orgs: HashMap<String, Vec<Action>> =
            org_ids.iter().map(|o| (o.clone(), Vec::new())).collect();
        if org_ids.is_empty() {
            return Ok(orgs);
        }
        let placeholders = vec!["?"; org_ids.len()].join(", ");
        let sql = format!(
            "SELECT ?fields FROM `{}` WHERE org_id IN ({placeholders}) ORDER BY org_id, seq, id",
            self.table
        );
        let mut query = self.client.query(&sql);
        for org_id in org_ids {
            query = query.bind(org_id.as_str());
        }
        let rows = self
            .bounded("org_actions", query.fetch_all::<ActionRow>())
            .await?;
        let mut seen = HashSet::new();
        for row in rows {
            if !seen.insert((row.org_id.clone(), row.id.clone())) {
                continue;
            }
            let action = Action::try_from(row)?;
            orgs.entry(action.org_id.clone()).or_default().push(action);
        }
        Ok(orgs)
    }

    pub async fn recent_actions(
        &self,
        org_id: &str,
        limit: u32,
    ) -> Result<Vec<Action>, StoreError> {
        let sql = format!(
            "SELECT ?fields FROM `{}` FINAL WHERE org_id = ? ORDER BY seq DESC, id DESC LIMIT ?",
            self.table
        );
        let query = self.client.query(&sql).bind(org_id).bind(limit);
        let rows = self
            .bounded("recent_actions", query.fetch_all::<ActionRow>())
            .await?;
        rows.into_iter().map(Action::try_from).collect()
    }

    /// The org and SKU of each PaymentIntent the index knows. Any one row
    /// answers (every action about a PaymentIntent names the same org and
    /// SKU), so this read needs no `FINAL`.
    pub async fn owners_of_intents(
        &self,
        payment_intent_ids: &[String],
    ) -> Result<HashMap<String, PaymentIntentOwner>, StoreError> {
        if payment_intent_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let placeholders = vec!["?"; payment_intent_ids.len()].join(", ");
        let sql = format!(
            "SELECT ?fields FROM `{}` WHERE external_id IN ({placeholders})",
            Self::intent_owners_table(&self.table)
        );
        let mut query = self.client.query(&sql);
        for id in payment_intent_ids {
            query = query.bind(id.as_str());
        }
        let rows = self
            .bounded("owners_of_intents", query.fetch_all::<OwnerRow>())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let owner = PaymentIntentOwner {
                    org_id: r.org_id,
                    sku: r.sku,
                };
                (r.external_id, owner)
            })
            .collect())
    }

    /// When the newest action caused by a Stripe event was recorded.
    pub async fn newest_event_action_ms(&self) -> Result<Option<i64>, StoreError> {
        // max() over no rows is 0 on every version; 0 means none.
        let sql = format!(
            "SELECT max(created_at_ms) FROM `{}` WHERE event_id != ''",
            self.table
        );
        let newest = self
            .bounded(
                "newest_event_action_ms",
                self.client.query(&sql).fetch_one::<i64>(),
            )
            .await?;
        Ok((newest > 0).then_some(newest))
    }

    /// Runs one operation under the configured timeout and turns every
    /// failure into `Unavailable`, scrubbed of the password.
    async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, StoreError> {
        self.bounded_for(op, self.timeout, fut).await
    }

    async fn bounded_for<T>(
        &self,
        op: &str,
        timeout: Duration,
        fut: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, StoreError> {
        let bounded = async {
            let _permit = self
                .queries
                .acquire()
                .await
                .expect("the semaphore is never closed");
            fut.await
        };
        let (message, source) = match tokio::time::timeout(timeout, bounded).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => {
                // The crate's top-level text can be as vague as "client error
                // (Connect)"; the cause chain says "Connection refused".
                let mut message = format!("clickhouse {op}: {err}");
                let mut source = std::error::Error::source(&err);
                while let Some(cause) = source {
                    let cause_text = cause.to_string();
                    if !message.contains(&cause_text) {
                        message = format!("{message}: {cause_text}");
                    }
                    source = cause.source();
                }
                // Kept as the source only without a password to scrub.
                let source: Option<Cause> = match self.password.is_empty() {
                    true => Some(Arc::new(err)),
                    false => None,
                };
                (message, source)
            }
            Err(elapsed) => {
                let message = format!("clickhouse {op}: no answer within {timeout:?}");
                (message, Some(Arc::new(elapsed) as Cause))
            }
        };
        let message = if self.password.is_empty() {
            message
        } else {
            message.replace(self.password.expose(), "<redacted>")
        };
        Err(StoreError::Unavailable { message, source })
    }
}
