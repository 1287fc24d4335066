//! The registry of live org actors: addresses only, never state.
//!
//! An org's actor is started on first use, on one of a few arbiters (threads)
//! chosen by the org id, and removes itself when it stops. A request that
//! meets a stopping actor is sent again to a fresh one, which rebuilds the
//! org from the store; that is safe because every request is idempotent.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;

use crate::ask::{Ask, AskError, Bounded, Request};
use crate::metrics::Mailbox;
use crate::org::{Observe, OrgActor, OrgDeps, OrgError};
use crate::org_id::OrgId;
use crate::store::PaymentIntentOwner;

#[derive(Clone)]
pub struct OrgDirectory {
    actors: Arc<DashMap<OrgId, Bounded<OrgActor>>>,
    deps: Arc<OrgDeps>,
    arbiters: Arc<[ArbiterHandle]>,
}

/// How many times a request follows an org to a restarted actor.
const ATTEMPTS: usize = 3;

impl OrgDirectory {
    pub fn new(deps: OrgDeps, arbiters: Vec<ArbiterHandle>) -> Self {
        assert!(!arbiters.is_empty(), "org actors need at least one arbiter");
        Self {
            actors: Arc::new(DashMap::new()),
            deps: Arc::new(deps),
            arbiters: arbiters.into(),
        }
    }

    fn actor(&self, org_id: &OrgId) -> Bounded<OrgActor> {
        if let Some(actor) = self.actors.get(org_id).filter(|a| a.connected()) {
            return actor.clone();
        }
        let mut entry = self
            .actors
            .entry(org_id.clone())
            .or_insert_with(|| self.start(org_id));
        if !entry.connected() {
            *entry = self.start(org_id);
        }
        entry.clone()
    }

    fn start(&self, org_id: &OrgId) -> Bounded<OrgActor> {
        let mut hasher = DefaultHasher::new();
        org_id.hash(&mut hasher);
        let arbiter = &self.arbiters[hasher.finish() as usize % self.arbiters.len()];
        let (org_id, deps, registry) = (org_id.clone(), self.deps.clone(), self.actors.clone());
        let mailbox = self.deps.settings.mailbox;
        let addr =
            OrgActor::start_in_arbiter(arbiter, move |_| OrgActor::new(org_id, deps, registry));
        Bounded::new(addr, mailbox)
    }

    /// Hands a message of the org's log to its actor here, if it has one,
    /// or starts one when browsers here watch the org (the fresh actor reads
    /// the org, this message included). Never waits: `Err` gives the
    /// message back when the actor's mailbox is full, to be offered again.
    pub fn observe(&self, org_id: &OrgId, message: Observe) -> Result<(), Observe> {
        let live = self
            .actors
            .get(org_id)
            .filter(|a| a.connected())
            .map(|a| a.clone());
        match live {
            // try_send: refused past the actor's mailbox capacity.
            Some(actor) => match actor.addr().try_send(message) {
                Err(SendError::Full(message)) => Err(message),
                Ok(()) => Ok(()),
                // Stopped: a successor reads the org when it starts; start
                // one now if browsers here wait for the org's changes.
                Err(SendError::Closed(_)) => {
                    if self.deps.subscribed.contains(org_id) {
                        self.actors
                            .remove_if(org_id, |_, a| a.addr() == actor.addr());
                        let _ = self.actor(org_id);
                    }
                    Ok(())
                }
            },
            None if self.deps.subscribed.contains(org_id) => {
                let _ = self.actor(org_id);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The owner of a PaymentIntent some live org actor knows.
    pub fn live_intent_owner(&self, payment_intent_id: &str) -> Option<PaymentIntentOwner> {
        self.deps.live_intents.owner(payment_intent_id)
    }

    /// Sends `request` to the org's actor and waits for its answer.
    /// A full mailbox is `Overloaded` at once.
    pub async fn ask<R, T>(&self, org_id: &OrgId, mut request: R) -> R::Answer
    where
        R: Request<Answer = Result<T, OrgError>> + Clone,
        T: Send + 'static,
        OrgActor: Handler<Ask<R>>,
    {
        for _ in 0..ATTEMPTS {
            let actor = self.actor(org_id);
            match actor.ask(request.clone()).await {
                // Another node wrote the org first: a fresh actor reads it
                // again and decides again.
                Ok(Err(OrgError::Stale)) => {
                    self.deps.metrics.jetstream_retries.inc();
                }
                Ok(answer) => return answer,
                Err(AskError::Full(_)) => {
                    self.deps.metrics.mailbox_full(Mailbox::Org);
                    return Err(OrgError::Overloaded);
                }
                Err(AskError::Stopped(r)) => request = r,
                Err(AskError::Dropped) => {}
            }
            self.actors
                .remove_if(org_id, |_, a| a.addr() == actor.addr());
        }
        Err(OrgError::PersistenceUnavailable(
            "the org could not be loaded, or other nodes kept writing it first".into(),
        ))
    }
}
