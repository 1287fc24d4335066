//! The wire form of the org log's messages: compact keys, every field of
//! each action, and the sequence the message was published after.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{Action, ActionKind, ActionStatus};

/// One message of an org's subject, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct OrgMessage {
    /// Its stream sequence.
    pub sequence: u64,
    /// The stream sequence of the org's message before it (0: none).
    pub prev: u64,
    pub actions: Vec<Action>,
}

/// The wire form of a message: compact keys, every field of the action.
#[derive(Serialize, Deserialize)]
struct Record {
    prev: u64,
    actions: Vec<RecordAction>,
}

#[derive(Serialize, Deserialize)]
struct RecordAction {
    id: String,
    seq: u64,
    kind: ActionKind,
    status: ActionStatus,
    sku: String,
    pi: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    amount: i64,
    currency: String,
    at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    sim: bool,
}

pub fn encode(prev: u64, actions: &[Action]) -> Bytes {
    let record = Record {
        prev,
        actions: actions
            .iter()
            .map(|a| RecordAction {
                id: a.id.clone(),
                seq: a.seq,
                kind: a.kind,
                status: a.status,
                sku: a.sku.clone(),
                pi: a.external_id.clone(),
                event: a.event_id.clone(),
                amount: a.amount,
                currency: a.currency.clone(),
                at: a.created_at_ms,
                sim: a.simulated,
            })
            .collect(),
    };
    serde_json::to_vec(&record)
        .expect("a record always serializes")
        .into()
}

/// Reads a message of `org_id`'s subject; `None` when it is not one of ours.
pub fn decode(org_id: &str, sequence: u64, payload: &[u8]) -> Option<OrgMessage> {
    let record: Record = serde_json::from_slice(payload).ok()?;
    let actions = record
        .actions
        .into_iter()
        .map(|a| Action {
            id: a.id,
            org_id: org_id.to_owned(),
            seq: a.seq,
            kind: a.kind,
            status: a.status,
            sku: a.sku,
            external_id: a.pi,
            event_id: a.event,
            amount: a.amount,
            currency: a.currency,
            created_at_ms: a.at,
            simulated: a.sim,
        })
        .collect();
    Some(OrgMessage {
        sequence,
        prev: record.prev,
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(seq: u64) -> Action {
        Action {
            id: format!("pay_pi_{seq}"),
            org_id: "acme".into(),
            seq,
            kind: ActionKind::Payment,
            status: ActionStatus::Delivered,
            sku: "pack".into(),
            external_id: format!("pi_{seq}"),
            event_id: Some(format!("evt_{seq}")),
            amount: 100,
            currency: "usd".into(),
            created_at_ms: 1_700_000_000_000,
            simulated: seq == 2,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let actions = vec![action(1), action(2)];
        let message = decode("acme", 9, &encode(4, &actions)).unwrap();
        assert_eq!(message.sequence, 9);
        assert_eq!(message.prev, 4);
        assert_eq!(message.actions, actions);
    }

    #[test]
    fn a_foreign_payload_is_not_a_record() {
        assert_eq!(decode("acme", 1, b"hello"), None);
    }
}
