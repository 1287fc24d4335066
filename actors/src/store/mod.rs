//! The durable action log. Three backends behind one small API: the embedded
//! SQLite file (the default; needs no other service), ClickHouse (one node),
//! and NATS JetStream (any number of nodes; its writes go through
//! `JetStreamStore::append`, a per-org compare-and-set, not `insert_batch`).
//!
//! Every read collapses repeats of one action id, so a batch written twice
//! (a retry after a timeout whose first attempt did land) is harmless.

mod clickhouse;
mod embedded;
pub mod jetstream;

pub use self::clickhouse::{ClickHouseSettings, ClickHouseStore};
pub use self::embedded::EmbeddedStore;
pub use self::jetstream::{JetStreamSettings, JetStreamStore};

use std::collections::HashMap;

use crate::model::Action;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or refused the operation; the caller
    /// may retry. The message never carries credentials.
    #[error("action store unavailable: {0}")]
    Unavailable(String),
}

/// The org and SKU a PaymentIntent was recorded for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentIntentOwner {
    pub org_id: String,
    pub sku: String,
}

// The ClickHouse variant is ~400 bytes, but a store is never stored in bulk:
// it is cloned into each read or write, where boxing would add an allocation
// to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum ActionStore {
    Embedded(EmbeddedStore),
    ClickHouse(ClickHouseStore),
    JetStream(JetStreamStore),
}

impl ActionStore {
    /// Creates the table and indexes when they are missing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            ActionStore::Embedded(s) => s.migrate().await,
            ActionStore::ClickHouse(s) => s.migrate().await,
            ActionStore::JetStream(s) => s.migrate().await,
        }
    }

    /// Answers when the store can serve reads and writes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            ActionStore::Embedded(s) => s.ping().await,
            ActionStore::ClickHouse(s) => s.ping().await,
            ActionStore::JetStream(s) => s.ping().await,
        }
    }

    /// Writes one batch in one transaction / one INSERT. Returns only once
    /// the rows are durable.
    pub async fn insert_batch(&self, rows: Vec<Action>) -> Result<(), StoreError> {
        match self {
            ActionStore::Embedded(s) => s.insert_batch(rows).await,
            ActionStore::ClickHouse(s) => s.insert_batch(rows).await,
            // Org actors append to their org's subject themselves, with the
            // expected-sequence check that batching across orgs would lose.
            ActionStore::JetStream(_) => Err(StoreError::Unavailable(
                "the JetStream log is written by org actors, not in batches".into(),
            )),
        }
    }

    /// Every action of one org, oldest first (ascending `seq`), one row per id.
    pub async fn org_actions(&self, org_id: &str) -> Result<Vec<Action>, StoreError> {
        let mut orgs = self.actions_of_orgs(&[org_id.to_owned()]).await?;
        Ok(orgs.remove(org_id).unwrap_or_default())
    }

    /// Every action of each of `org_ids` (one entry per org, maybe empty),
    /// oldest first, one row per id, read together.
    pub async fn actions_of_orgs(
        &self,
        org_ids: &[String],
    ) -> Result<HashMap<String, Vec<Action>>, StoreError> {
        match self {
            ActionStore::Embedded(s) => s.actions_of_orgs(org_ids).await,
            ActionStore::ClickHouse(s) => s.actions_of_orgs(org_ids).await,
            ActionStore::JetStream(s) => s.actions_of_orgs(org_ids).await,
        }
    }

    /// The newest `limit` actions of one org, newest first.
    pub async fn recent_actions(
        &self,
        org_id: &str,
        limit: u32,
    ) -> Result<Vec<Action>, StoreError> {
        match self {
            ActionStore::Embedded(s) => s.recent_actions(org_id, limit).await,
            ActionStore::ClickHouse(s) => s.recent_actions(org_id, limit).await,
            ActionStore::JetStream(s) => s.recent_actions(org_id, limit).await,
        }
    }

    /// When the newest action caused by a Stripe event was recorded (Unix
    /// ms): where reconciliation with Stripe's Events API picks up.
    pub async fn newest_event_action_ms(&self) -> Result<Option<i64>, StoreError> {
        match self {
            ActionStore::Embedded(s) => s.newest_event_action_ms().await,
            ActionStore::ClickHouse(s) => s.newest_event_action_ms().await,
            ActionStore::JetStream(s) => s.newest_event_action_ms().await,
        }
    }

    /// The org and SKU of each of `payment_intent_ids` that has a recorded
    /// action (absent: none), read together. Used when a charge or dispute
    /// arrives without metadata.
    pub async fn owners_of_intents(
        &self,
        payment_intent_ids: &[String],
    ) -> Result<HashMap<String, PaymentIntentOwner>, StoreError> {
        match self {
            ActionStore::Embedded(s) => s.owners_of_intents(payment_intent_ids).await,
            ActionStore::ClickHouse(s) => s.owners_of_intents(payment_intent_ids).await,
            ActionStore::JetStream(s) => s.owners_of_intents(payment_intent_ids).await,
        }
    }
}
