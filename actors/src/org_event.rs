//! What browsers see of an org: its snapshot and its stream events.

use std::collections::BTreeMap;

use serde::Serialize;

/// SKU → entitled, listing every configured SKU.
pub type Entitlements = BTreeMap<String, bool>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub org_id: String,
    pub entitlements: Entitlements,
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrgEventKind {
    Snapshot,
    Changed,
    PaymentFailed,
}

impl OrgEventKind {
    pub fn name(self) -> &'static str {
        match self {
            OrgEventKind::Snapshot => "org.entitlements.snapshot",
            OrgEventKind::Changed => "org.entitlements.changed",
            OrgEventKind::PaymentFailed => "org.payment.failed",
        }
    }
}

/// One stream event, serialised once however many connections receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgEvent {
    pub seq: u64,
    pub kind: OrgEventKind,
    /// The event's `data` line: JSON, camelCase keys.
    pub data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangedData<'a> {
    org_id: &'a str,
    entitlements: &'a Entitlements,
    seq: u64,
    sku: &'a str,
    cause: &'a str,
    action_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentFailedData<'a> {
    org_id: &'a str,
    seq: u64,
    sku: &'a str,
    payment_intent_id: &'a str,
    action_id: &'a str,
}

impl OrgEvent {
    pub fn snapshot(snapshot: &Snapshot) -> Self {
        Self {
            seq: snapshot.seq,
            kind: OrgEventKind::Snapshot,
            data: serde_json::to_string(snapshot).expect("plain data serialises"),
        }
    }

    pub fn changed(
        org_id: &str,
        entitlements: &Entitlements,
        seq: u64,
        sku: &str,
        cause: &str,
        action_id: &str,
    ) -> Self {
        let data = ChangedData {
            org_id,
            entitlements,
            seq,
            sku,
            cause,
            action_id,
        };
        Self {
            seq,
            kind: OrgEventKind::Changed,
            data: serde_json::to_string(&data).expect("plain data serialises"),
        }
    }

    pub fn payment_failed(
        org_id: &str,
        seq: u64,
        sku: &str,
        payment_intent_id: &str,
        action_id: &str,
    ) -> Self {
        let data = PaymentFailedData {
            org_id,
            seq,
            sku,
            payment_intent_id,
            action_id,
        };
        Self {
            seq,
            kind: OrgEventKind::PaymentFailed,
            data: serde_json::to_string(&data).expect("plain data serialises"),
        }
    }
}
