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

use crate::model::OrgActorId;
use crate::store::PaymentIntentOwner;

struct Entry {
    owner: PaymentIntentOwner,
    claimant: OrgActorId,
}

#[derive(Clone, Default)]
pub struct LiveIntents {
    owners: Arc<DashMap<String, Entry>>,
}

impl LiveIntents {
    /// `claimant`, an actor of `org_id`, knows this PaymentIntent. A
    /// PaymentIntent already claimed by another org stays with that org; of
    /// one org's actors the latest to claim it holds it (a new actor may load
    /// it before the previous one has stopped).
    pub fn insert(&self, claimant: OrgActorId, payment_intent_id: &str, org_id: &str, sku: &str) {
        if let Some(mut entry) = self.owners.get_mut(payment_intent_id) {
            if entry.owner.org_id == org_id {
                entry.claimant = claimant;
            }
            return;
        }
        let owner = PaymentIntentOwner {
            org_id: org_id.to_owned(),
            sku: sku.to_owned(),
        };
        self.owners
            .insert(payment_intent_id.to_owned(), Entry { owner, claimant });
    }

    /// Forgets the PaymentIntents `claimant` claimed (its actor is
    /// stopping). Entries claimed since by another actor stay.
    pub fn remove_claims<'a>(
        &self,
        claimant: OrgActorId,
        payment_intent_ids: impl Iterator<Item = &'a str>,
    ) {
        for id in payment_intent_ids {
            self.owners
                .remove_if(id, |_, entry| entry.claimant == claimant);
        }
    }

    pub fn owner(&self, payment_intent_id: &str) -> Option<PaymentIntentOwner> {
        self.owners.get(payment_intent_id).map(|e| e.owner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_forgets_only_what_it_still_claims() {
        let live = LiveIntents::default();
        let (acme, globex) = (OrgActorId::next(), OrgActorId::next());
        live.insert(acme, "pi_1", "acme", "pro");
        live.insert(acme, "pi_2", "acme", "pro");
        live.insert(globex, "pi_3", "globex", "team");
        // A second claim does not move a PaymentIntent to another org.
        live.insert(globex, "pi_1", "globex", "team");
        assert_eq!(live.owner("pi_1").unwrap().org_id, "acme");

        live.remove_claims(acme, ["pi_1", "pi_2", "pi_3"].into_iter());
        assert_eq!(live.owner("pi_1"), None);
        assert_eq!(live.owner("pi_2"), None);
        let globex_pi = live.owner("pi_3").unwrap();
        assert_eq!(
            (globex_pi.org_id.as_str(), globex_pi.sku.as_str()),
            ("globex", "team")
        );
    }

    #[test]
    fn a_stopping_actor_leaves_what_its_successor_claimed() {
        let live = LiveIntents::default();
        let (old, new) = (OrgActorId::next(), OrgActorId::next());
        live.insert(old, "pi_1", "acme", "pro");
        live.insert(old, "pi_2", "acme", "pro");
        // The org's new actor loads pi_1 before the old one has stopped.
        live.insert(new, "pi_1", "acme", "pro");

        live.remove_claims(old, ["pi_1", "pi_2"].into_iter());
        assert_eq!(live.owner("pi_1").unwrap().org_id, "acme");
        assert_eq!(live.owner("pi_2"), None);

        live.remove_claims(new, ["pi_1"].into_iter());
        assert_eq!(live.owner("pi_1"), None);
    }
}
