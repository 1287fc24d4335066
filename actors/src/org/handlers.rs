//! One handler per request: each asks [`decide`](super::decide) what the
//! request comes to against the ledger ahead, and hands the result to the
//! pipeline (`commit`), or answers from the org as of its last durable
//! action.

use actix::prelude::*;

use crate::ask::Ask;
use crate::catalog::Product;
use crate::ledger::{Ledger, Standing};
use crate::model::now_ms;
use crate::stripe_api::StripeError;

use super::actor::OrgActor;
use super::decide::{self, Decision};
use super::messages::*;
use super::replay::{self, ReplayPlan};

impl OrgActor {
    /// Decides a change against the ledger ahead and the configured products.
    fn decide_ahead(
        &mut self,
        ctx: &mut Context<Self>,
        decide: impl FnOnce(&Ledger, &[Product]) -> Decision,
    ) -> Result<Decision, OrgError> {
        let products = self.deps.settings.products.clone();
        self.ledger_ahead(ctx).map(|l| decide(l, &products))
    }

    /// Commits a decision whose answer is `Outcome`.
    fn commit_outcome(
        &mut self,
        decision: Decision,
        reply: tokio::sync::oneshot::Sender<OrgAnswer<Outcome>>,
        ctx: &mut Context<Self>,
    ) {
        let (action, outcome) = match decision {
            Decision::Duplicate => (None, Outcome::Duplicate),
            Decision::Record(action) => (Some(action), Outcome::Recorded),
            // Nothing to wait for: nothing of it is, or will be, written.
            Decision::Ignored => return drop(reply.send(Ok(Outcome::Ignored))),
        };
        self.commit(action, ctx, move |l| {
            let _ = reply.send(l.map(|_| outcome));
        });
    }
}

impl Handler<Ask<ApplyPayment>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<ApplyPayment>, ctx: &mut Context<Self>) {
        let Ask {
            request: r,
            reply,
            span,
        } = ask;
        let _entered = span.enter();
        let decision = match self.decide_ahead(ctx, |l, products| {
            decide::payment(l, products, &r, now_ms())
        }) {
            Ok(decision) => decision,
            Err(e) => return drop(reply.send(Err(e))),
        };
        if decision == Decision::Ignored {
            tracing::warn!(org_id = %self.org_id, event_id = %r.event_id, sku = %r.sku,
                "payment for an unknown sku ignored");
        }
        self.commit_outcome(decision, reply, ctx);
    }
}

impl Handler<Ask<ApplyRevocation>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<ApplyRevocation>, ctx: &mut Context<Self>) {
        let Ask {
            request: r,
            reply,
            span,
        } = ask;
        let _entered = span.enter();
        let decision = match self.decide_ahead(ctx, |l, products| {
            decide::revocation(l, products, &r, now_ms())
        }) {
            Ok(decision) => decision,
            Err(e) => return drop(reply.send(Err(e))),
        };
        if decision != Decision::Ignored {
            return self.commit_outcome(decision, reply, ctx);
        }
        // On many nodes the payment may be in a message another node wrote
        // that this one has not seen: an answer that writes nothing gets no
        // sequence check, so look before answering.
        if self.jetstream().is_some() && !r.log_checked {
            if !self.pipeline.is_idle() {
                // Reading now would race our own appends; a fresh actor
                // reads the org whole.
                return drop(reply.send(Err(OrgError::Stale)));
            }
            let waiting_span = span.clone();
            // ctx.wait: nothing else is decided until it is answered.
            ctx.wait(self.read_newer().map(move |result, act, ctx| match result {
                Ok(()) => {
                    let request = ApplyRevocation {
                        log_checked: true,
                        ..r
                    };
                    let ask = Ask {
                        request,
                        reply,
                        span: waiting_span,
                    };
                    act.handle(ask, ctx);
                }
                Err(e) => drop(reply.send(Err(OrgError::ReadFailed(e)))),
            }));
            return;
        }
        tracing::warn!(org_id = %self.org_id, event_id = %r.event_id, payment_intent_id = %r.payment_intent_id,
            "revocation names no known sku; ignored");
        drop(reply.send(Ok(Outcome::Ignored)));
    }
}

impl Handler<Ask<SimulatePayment>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<SimulatePayment>, ctx: &mut Context<Self>) {
        let Ask {
            request: r, reply, ..
        } = ask;
        let Some(product) = self.product(&r.sku).cloned() else {
            return drop(reply.send(Err(OrgError::UnknownSku(r.sku))));
        };
        let action = match self
            .ledger_ahead(ctx)
            .map(|l| decide::simulation(l, &product, now_ms()))
        {
            Ok(Decision::Record(action)) => Some(action),
            // Already entitled: answered once the writes before it are back.
            Ok(Decision::Duplicate | Decision::Ignored) => None,
            Err(e) => return drop(reply.send(Err(e))),
        };
        self.commit(action, ctx, move |l| {
            let _ = reply.send(l.map(Standing::entitlements));
        });
    }
}

impl Handler<Ask<GetSnapshot>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<GetSnapshot>, ctx: &mut Context<Self>) {
        let _ = ask.reply.send(self.durable(ctx).map(Standing::snapshot));
    }
}

impl Handler<Ask<OpenPaymentIntent>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<OpenPaymentIntent>, ctx: &mut Context<Self>) {
        let Ask {
            request: r, reply, ..
        } = ask;
        let Some(product) = self.product(&r.sku).cloned() else {
            return drop(reply.send(Err(OrgError::UnknownSku(r.sku))));
        };
        let purchases = match self.durable(ctx) {
            Ok(l) if l.is_entitled(&r.sku) => {
                return drop(reply.send(Err(OrgError::AlreadyEntitled(r.sku))))
            }
            Ok(l) => l.purchases(&r.sku),
            Err(e) => return drop(reply.send(Err(e))),
        };
        if let Some(open) = self.open_intents.get(&r.sku) {
            return drop(reply.send(Ok(open.clone())));
        }
        let create = self.deps.stripe.send(CreatePaymentIntent {
            org_id: self.org_id.to_string(),
            sku: product.sku.clone(),
            amount: product.amount,
            currency: product.currency.clone(),
            idempotency_key: decide::purchase_key(&self.org_id, &product, purchases),
        });
        // ctx.wait: concurrent calls for this org queue behind this one and
        // then find the intent already open.
        ctx.wait(create.into_actor(self).map(move |result, act, _| {
            let answer = match result {
                Ok(Ok(intent)) => {
                    act.open_intents.insert(product.sku, intent.clone());
                    Ok(intent)
                }
                Ok(Err(e)) => Err(OrgError::Stripe(e)),
                Err(_) => Err(OrgError::Stripe(StripeError::new(
                    "the Stripe client is not running",
                ))),
            };
            let _ = reply.send(answer);
        }));
    }
}

impl Handler<Ask<ReplaySince>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<ReplaySince>, ctx: &mut Context<Self>) {
        let Ask {
            request: r, reply, ..
        } = ask;
        let max_replay = self.deps.settings.max_replay;
        let (seq, snapshot) = match self.durable(ctx) {
            Ok(l) => (l.seq(), l.snapshot()),
            Err(e) => return drop(reply.send(Err(e))),
        };
        let after = r.last_event_id;
        let answer = match self.recent.plan(after, seq, max_replay) {
            ReplayPlan::Events(events) => Replay::Events(events),
            ReplayPlan::Snapshot => Replay::Snapshot(snapshot),
            ReplayPlan::FromStore => {
                // Not ctx.wait: this reads durable rows and changes nothing,
                // and the stream drops live events it already got from here
                // by `seq`.
                let replay = replay::from_store(
                    &self.deps.loader,
                    self.org_id.to_string(),
                    self.skus(),
                    after,
                    snapshot,
                );
                actix::spawn(async move {
                    let _ = reply.send(Ok(replay.await));
                });
                return;
            }
        };
        let _ = reply.send(Ok(answer));
    }
}

impl Handler<Ask<ListActions>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<ListActions>, ctx: &mut Context<Self>) {
        let Ask {
            request: r, reply, ..
        } = ask;
        if let Err(e) = self.durable(ctx) {
            return drop(reply.send(Err(e)));
        }
        let store = self.deps.store.clone();
        let org_id = self.org_id.clone();
        actix::spawn(async move {
            let answer = store
                .recent_actions(&org_id, r.limit)
                .await
                .map_err(OrgError::ReadFailed);
            let _ = reply.send(answer);
        });
    }
}
