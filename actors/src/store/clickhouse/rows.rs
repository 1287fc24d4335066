//! The ClickHouse tables' rows, and how actions map to them.

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::model::{Action, ActionKind, ActionStatus};
use crate::store::StoreError;

/// One table row. Field order and types must match the DDL in `migrate`
/// exactly, because plain `RowBinary` carries no column names or types.
#[derive(Row, Serialize, Deserialize)]
pub(super) struct ActionRow {
    pub(super) id: String,
    pub(super) org_id: String,
    pub(super) seq: u64,
    pub(super) kind: String,
    pub(super) status: String,
    pub(super) sku: String,
    pub(super) external_id: String,
    /// Empty string for "no event" (simulated payments): avoids `Nullable`.
    pub(super) event_id: String,
    pub(super) amount: i64,
    pub(super) currency: String,
    pub(super) created_at_ms: i64,
    /// 0/1; `UInt8` because 18.16 has no `Bool`.
    pub(super) simulated: u8,
}

#[derive(Row, Serialize, Deserialize)]
pub(super) struct OwnerRow {
    pub(super) external_id: String,
    pub(super) org_id: String,
    pub(super) sku: String,
}

impl From<Action> for ActionRow {
    fn from(a: Action) -> Self {
        ActionRow {
            id: a.id,
            org_id: a.org_id,
            seq: a.seq,
            kind: a.kind.as_str().to_owned(),
            status: a.status.as_str().to_owned(),
            sku: a.sku,
            external_id: a.external_id,
            event_id: a.event_id.unwrap_or_default(),
            amount: a.amount,
            currency: a.currency,
            created_at_ms: a.created_at_ms,
            simulated: u8::from(a.simulated),
        }
    }
}

impl TryFrom<ActionRow> for Action {
    type Error = StoreError;

    fn try_from(r: ActionRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str, value: &str| StoreError::Corrupt {
            org_id: r.org_id.clone(),
            row: r.id.clone(),
            message: format!("unknown {what} {value:?}"),
            source: None,
        };
        let kind = ActionKind::parse(&r.kind).ok_or_else(|| corrupt("kind", &r.kind))?;
        let status = ActionStatus::parse(&r.status).ok_or_else(|| corrupt("status", &r.status))?;
        Ok(Action {
            id: r.id,
            org_id: r.org_id,
            seq: r.seq,
            kind,
            status,
            sku: r.sku,
            external_id: r.external_id,
            event_id: Some(r.event_id).filter(|e| !e.is_empty()),
            amount: r.amount,
            currency: r.currency,
            created_at_ms: r.created_at_ms,
            simulated: r.simulated != 0,
        })
    }
}
