//! Which org each PaymentIntent of a live org actor belongs to.
//!
//! Refunds and disputes usually arrive without metadata and name only their
//! PaymentIntent. While the org's actor is live its ledger knows that
//! PaymentIntent already, and this map lets the StripeActor route the event
//! without a store query. Org actors add their PaymentIntents as they load
//! and record them and remove them when they stop, so the map never holds
//! more than live actors hold anyway. A miss is not an answer: the caller
//! asks the store, then Stripe.

use std::sync::Arc;

use dashmap::DashMap;

use crate::store::PaymentIntentOwner;

#[derive(Clone, Default)]
pub struct LiveIntents {
    owners: Arc<DashMap<String, PaymentIntentOwner>>,
}

impl LiveIntents {
    pub fn insert(&self, payment_intent_id: &str, org_id: &str, sku: &str) {
        if self.owners.contains_key(payment_intent_id) {
            return;
        }
        let owner = PaymentIntentOwner {
            org_id: org_id.to_owned(),
            sku: sku.to_owned(),
        };
        self.owners.insert(payment_intent_id.to_owned(), owner);
    }

    /// Forgets `org_id`'s PaymentIntents (its actor is stopping). An entry
    /// another org claimed in the meantime stays.
    pub fn remove_org<'a>(&self, org_id: &str, payment_intent_ids: impl Iterator<Item = &'a str>) {
        for id in payment_intent_ids {
            self.owners.remove_if(id, |_, owner| owner.org_id == org_id);
        }
    }

    pub fn owner(&self, payment_intent_id: &str) -> Option<PaymentIntentOwner> {
        self.owners.get(payment_intent_id).map(|o| o.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_org_forgets_only_its_own_payment_intents() {
        let live = LiveIntents::default();
        live.insert("pi_1", "acme", "pro");
        live.insert("pi_2", "acme", "pro");
        live.insert("pi_3", "globex", "team");
        // A second claim does not move a PaymentIntent to another org.
        live.insert("pi_1", "globex", "team");
        assert_eq!(live.owner("pi_1").unwrap().org_id, "acme");

        live.remove_org("acme", ["pi_1", "pi_2", "pi_3"].into_iter());
        assert_eq!(live.owner("pi_1"), None);
        assert_eq!(live.owner("pi_2"), None);
        let globex = live.owner("pi_3").unwrap();
        assert_eq!(
            (globex.org_id.as_str(), globex.sku.as_str()),
            ("globex", "team")
        );
    }
}
