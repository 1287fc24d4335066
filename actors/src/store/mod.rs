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
use std::sync::Arc;

use crate::model::Action;

/// What made a store operation fail, kept for logs and for `source()`.
/// Shared, so that one failed read can answer every request of its batch.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a store operation failed. The kinds call for different answers: only
/// `Unavailable` may pass by itself; a conflict or a corrupt row stays until
/// someone re-reads the org or repairs the row.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, did not answer in time, or refused
    /// the operation for now; the caller may retry. The message never
    /// carries credentials.
    #[error("action store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// A write gives an (org, seq) that another stored action holds: the
    /// writer decided on a stale view of the org. The same row never lands.
    #[error("action {action_id} of org {org_id} conflicts with the stored action at seq {seq}")]
    Conflict {
        org_id: String,
        seq: u64,
        action_id: String,
        #[source]
        source: Option<Cause>,
    },
    /// A stored row that cannot be read as an action. Reading it again gives
    /// the same answer until the row is repaired.
    #[error("stored row {row} of org {org_id} is corrupt: {message}")]
    Corrupt {
        org_id: String,
        /// The action id, or where the row is when its id cannot be read.
        row: String,
        message: String,
        #[source]
        source: Option<Cause>,
    },
}

/// Two errors are the same failure when they say the same thing; their
/// sources are how it came about, not what it is.
impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.to_string() == other.to_string()
    }
}

impl Eq for StoreError {}

/// The kind of a [`StoreError`], for metrics and decisions.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StoreErrorKind {
    Unavailable,
    Conflict,
    Corrupt,
}

impl StoreError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// `Unavailable`, saying `what` failed and keeping `source`.
    pub fn unavailable_from(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Unavailable {
            message: format!("{what}: {source}"),
            source: Some(Arc::new(source)),
        }
    }

    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::Unavailable { .. } => StoreErrorKind::Unavailable,
            StoreError::Conflict { .. } => StoreErrorKind::Conflict,
            StoreError::Corrupt { .. } => StoreErrorKind::Corrupt,
        }
    }

    /// The row a conflict or a corrupt row is about: the action id, or
    /// where the unreadable row is.
    pub fn row(&self) -> Option<&str> {
        match self {
            StoreError::Unavailable { .. } => None,
            StoreError::Conflict { action_id, .. } => Some(action_id),
            StoreError::Corrupt { row, .. } => Some(row),
        }
    }

    /// The org a conflict or a corrupt row belongs to.
    pub fn org_id(&self) -> Option<&str> {
        match self {
            StoreError::Unavailable { .. } => None,
            StoreError::Conflict { org_id, .. } | StoreError::Corrupt { org_id, .. } => {
                Some(org_id)
            }
        }
    }
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
            ActionStore::JetStream(_) => Err(StoreError::unavailable(
                "the JetStream log is written by org actors, not in batches",
            )),
        }
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

    /// The org and SKU of each of `payment_intent_ids` with a recorded
    /// delivered payment (ClickHouse: any recorded action), read together;
    /// absent: none. Used when a refund or dispute arrives without metadata;
    /// the rest are asked of Stripe.
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
