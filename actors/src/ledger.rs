//! The pure fold of an org's actions into its state. The org actor owns one;
//! it is rebuilt from the store when the actor starts, so everything here is
//! derived from actions and nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{Action, ActionKind, ActionStatus};
use crate::org_event::{Entitlements, OrgEvent, Snapshot};

/// What the org's actions say about one PaymentIntent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentRecord {
    pub sku: String,
    pub paid: bool,
    /// Refunded or disputed. Wins over `paid` whatever order they came in.
    pub revoked: bool,
}

#[derive(Clone)]
pub struct Ledger {
    org_id: String,
    skus: Arc<[String]>,
    seq: u64,
    applied_events: HashSet<String>,
    intents: HashMap<String, IntentRecord>,
    /// Delivered payments per SKU: part of the idempotency key of the next
    /// PaymentIntent, so a repurchase after a refund gets a new one.
    purchases: HashMap<String, u32>,
}

impl Ledger {
    pub fn new(org_id: String, skus: Arc<[String]>) -> Self {
        Self {
            org_id,
            skus,
            seq: 0,
            applied_events: HashSet::new(),
            intents: HashMap::new(),
            purchases: HashMap::new(),
        }
    }

    /// Rebuilds from stored actions (any order), returning the ledger.
    pub fn from_actions(org_id: String, skus: Arc<[String]>, mut actions: Vec<Action>) -> Self {
        actions.sort_by_key(|a| a.seq);
        let mut ledger = Self::new(org_id, skus);
        for action in &actions {
            ledger.fold(action);
        }
        ledger
    }

    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    pub fn has_applied_event(&self, event_id: &str) -> bool {
        self.applied_events.contains(event_id)
    }

    pub fn intent(&self, payment_intent_id: &str) -> Option<&IntentRecord> {
        self.intents.get(payment_intent_id)
    }

    pub fn purchases(&self, sku: &str) -> u32 {
        self.purchases.get(sku).copied().unwrap_or(0)
    }

    pub fn is_entitled(&self, sku: &str) -> bool {
        self.intents
            .values()
            .any(|i| i.sku == sku && i.paid && !i.revoked)
    }

    pub fn entitlements(&self) -> Entitlements {
        self.skus
            .iter()
            .map(|sku| (sku.clone(), self.is_entitled(sku)))
            .collect()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            org_id: self.org_id.clone(),
            entitlements: self.entitlements(),
            seq: self.seq,
        }
    }

    /// Folds one action in and returns the stream event it produces.
    pub fn apply(&mut self, action: &Action) -> OrgEvent {
        self.fold(action);
        self.event_for(action)
    }

    /// Folds one action in, without building its stream event (for a state
    /// that no browser sees).
    pub fn fold(&mut self, action: &Action) {
        self.seq = self.seq.max(action.seq);
        if let Some(event_id) = &action.event_id {
            self.applied_events.insert(event_id.clone());
        }
        let intent = self.intents.entry(action.external_id.clone()).or_default();
        intent.sku.clone_from(&action.sku);
        match (action.kind, action.status) {
            (ActionKind::Payment, ActionStatus::Delivered) => {
                intent.paid = true;
                *self.purchases.entry(action.sku.clone()).or_default() += 1;
            }
            (ActionKind::Payment, ActionStatus::Failed) => {}
            (ActionKind::Refund | ActionKind::Dispute, _) => intent.revoked = true,
        }
    }

    /// The stream event of an action just folded in.
    fn event_for(&self, action: &Action) -> OrgEvent {
        if action.status == ActionStatus::Failed {
            return OrgEvent::payment_failed(
                &self.org_id,
                action.seq,
                &action.sku,
                &action.external_id,
                &action.id,
            );
        }
        let cause = if action.simulated {
            "simulated"
        } else {
            action.kind.as_str()
        };
        OrgEvent::changed(
            &self.org_id,
            &self.entitlements(),
            action.seq,
            &action.sku,
            cause,
            &action.id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(seq: u64, id: &str, kind: ActionKind, status: ActionStatus, pi: &str) -> Action {
        Action {
            id: id.into(),
            org_id: "acme".into(),
            seq,
            kind,
            status,
            sku: "pack".into(),
            external_id: pi.into(),
            event_id: Some(format!("evt_{id}")),
            amount: 100,
            currency: "usd".into(),
            created_at_ms: 0,
            simulated: false,
        }
    }

    fn skus() -> Arc<[String]> {
        vec!["pack".to_string(), "other".to_string()].into()
    }

    #[test]
    fn payment_entitles_and_refund_revokes() {
        let mut ledger = Ledger::new("acme".into(), skus());
        ledger.apply(&action(
            1,
            "a1",
            ActionKind::Payment,
            ActionStatus::Delivered,
            "pi_1",
        ));
        assert!(ledger.is_entitled("pack"));
        assert!(!ledger.is_entitled("other"));
        ledger.apply(&action(
            2,
            "a2",
            ActionKind::Refund,
            ActionStatus::Delivered,
            "pi_1",
        ));
        assert!(!ledger.is_entitled("pack"));
        assert_eq!(ledger.seq(), 2);
        assert!(ledger.has_applied_event("evt_a1"));
        assert_eq!(ledger.entitlements().len(), 2);
    }

    #[test]
    fn refund_before_payment_still_wins() {
        let mut ledger = Ledger::new("acme".into(), skus());
        ledger.apply(&action(
            1,
            "a1",
            ActionKind::Dispute,
            ActionStatus::Delivered,
            "pi_1",
        ));
        let event = ledger.apply(&action(
            2,
            "a2",
            ActionKind::Payment,
            ActionStatus::Delivered,
            "pi_1",
        ));
        assert!(!ledger.is_entitled("pack"));
        assert!(event.data.contains(r#""pack":false"#), "{}", event.data);
    }

    #[test]
    fn failed_payment_changes_nothing_and_rebuild_matches() {
        let actions = vec![
            action(
                2,
                "a2",
                ActionKind::Payment,
                ActionStatus::Delivered,
                "pi_2",
            ),
            action(1, "a1", ActionKind::Payment, ActionStatus::Failed, "pi_1"),
        ];
        let ledger = Ledger::from_actions("acme".into(), skus(), actions);
        assert!(ledger.is_entitled("pack"));
        assert_eq!(ledger.seq(), 2);
        assert_eq!(ledger.intent("pi_1").map(|i| i.paid), Some(false));
        assert_eq!(ledger.purchases("pack"), 1);
    }
}
