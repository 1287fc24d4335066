//! StripeActor: the service's side of Stripe.
//!
//! It creates PaymentIntents, keeps the Stripe catalog in place (on the one
//! actor that opens PaymentIntents), and takes verified webhook events and
//! routes each to the org it is about. Calls to Stripe run as futures beside
//! the actor, so one slow call never holds up another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::Instrument;

use crate::ask::{Ask, Request};
use crate::catalog::{self, Product};
use crate::directory::OrgDirectory;
use crate::metrics::{EventOutcome, Metrics};
use crate::model::ActionKind;
use crate::org::{ApplyPayment, ApplyRevocation, CreatePaymentIntent, OrgError, Outcome};
use crate::org_id::OrgId;
use crate::store::PaymentIntentOwner;
use crate::store_reader::{find_intent_owner, FindIntentOwner};
use crate::stripe_api::IntentRequest;
pub use crate::stripe_api::{OpenIntent, StripeApi, StripeError, StripeSettings};
use crate::stripe_event::{EventEffect, RevocationKind, StripeEvent};

/// A webhook event whose signature was verified.
#[derive(Clone, Debug)]
pub struct HandleEvent(pub StripeEvent);

impl Request for HandleEvent {
    type Answer = Result<Outcome, OrgError>;
}

/// The first retry of a catalog Stripe could not take; doubled up to the max.
const CATALOG_RETRY_FIRST: Duration = Duration::from_secs(1);
const CATALOG_RETRY_MAX: Duration = Duration::from_secs(60);

/// The catalog as the actor knows it: which products still need their
/// Product and Price, and the Price ids of those in place.
struct Catalog {
    pending: Vec<Product>,
    prices: HashMap<String, String>,
    retry_in: Duration,
}

pub struct StripeActor {
    api: StripeApi,
    directory: OrgDirectory,
    /// Where a PaymentIntent's org is looked up for events without metadata.
    owners: Recipient<FindIntentOwner>,
    metrics: Metrics,
    /// Only on the actor that opens PaymentIntents.
    catalog: Option<Catalog>,
}

impl StripeActor {
    pub fn new(
        api: StripeApi,
        directory: OrgDirectory,
        owners: Recipient<FindIntentOwner>,
        metrics: Metrics,
    ) -> Self {
        Self {
            api,
            directory,
            owners,
            metrics,
            catalog: None,
        }
    }

    /// Makes this the actor that keeps the catalog in Stripe: it starts on
    /// the actor's start, in the background, and is retried until Stripe
    /// has taken every product.
    pub fn with_catalog(mut self, products: Arc<[Product]>) -> Self {
        self.catalog = Some(Catalog {
            pending: products.to_vec(),
            prices: HashMap::new(),
            retry_in: CATALOG_RETRY_FIRST,
        });
        self
    }

    fn sync_catalog(&mut self, ctx: &mut Context<Self>) {
        let Some(catalog) = &self.catalog else { return };
        let pending = catalog.pending.clone();
        let api = self.api.clone();
        let attempt = async move {
            let mut results = Vec::with_capacity(pending.len());
            for product in pending {
                let result = catalog::ensure_product(&api, &product).await;
                results.push((product, result));
            }
            results
        };
        // Beside the actor's other work, not in its way: a Stripe that hangs
        // must not hold up PaymentIntents or reconciliation. One pass at a
        // time: the next is scheduled only when this one is done.
        ctx.spawn(attempt.into_actor(self).map(|results, act, ctx| {
            let Some(catalog) = &mut act.catalog else { return };
            catalog.pending.clear();
            let mut last_error = None;
            for (product, result) in results {
                match result {
                    Ok(price_id) => {
                        catalog.prices.insert(product.sku, price_id);
                    }
                    Err(e) => {
                        last_error = Some(format!("{}: {e}", product.sku));
                        catalog.pending.push(product);
                    }
                }
            }
            act.metrics.catalog_pending_products.set(catalog.pending.len() as i64);
            match last_error {
                None => tracing::info!(products = catalog.prices.len(), "Stripe catalog in place"),
                Some(error) => {
                    let retry_in = catalog.retry_in;
                    catalog.retry_in = (retry_in * 2).min(CATALOG_RETRY_MAX);
                    tracing::warn!(
                        pending = catalog.pending.len(),
                        %error,
                        ?retry_in,
                        "Stripe catalog not in place yet; PaymentIntents go without a price id until it is"
                    );
                    ctx.run_later(retry_in, |act, ctx| act.sync_catalog(ctx));
                }
            }
        }));
    }
}

impl Actor for StripeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(catalog) = &self.catalog {
            self.metrics
                .catalog_pending_products
                .set(catalog.pending.len() as i64);
            self.sync_catalog(ctx);
        }
    }
}

impl Handler<CreatePaymentIntent> for StripeActor {
    type Result = ResponseFuture<Result<OpenIntent, StripeError>>;

    fn handle(&mut self, msg: CreatePaymentIntent, _: &mut Context<Self>) -> Self::Result {
        let api = self.api.clone();
        let price_id = self
            .catalog
            .as_ref()
            .and_then(|c| c.prices.get(&msg.sku).cloned());
        Box::pin(async move {
            let request = |price_id| IntentRequest {
                org_id: &msg.org_id,
                sku: &msg.sku,
                amount: msg.amount,
                currency: &msg.currency,
                price_id,
                idempotency_key: &msg.idempotency_key,
            };
            // One key per purchase, whatever the catalog knows: a key that
            // changed with the catalog could open a second chargeable
            // PaymentIntent for one purchase. An earlier attempt made before
            // the Price was known used the key without `price_id`, and
            // Stripe refuses the key with other parameters; ask as it did.
            let intent = match api
                .create_payment_intent(request(price_id.as_deref()))
                .await
            {
                Err(e) if e.idempotency_conflict && price_id.is_some() => {
                    tracing::info!(org_id = %msg.org_id, sku = %msg.sku,
                        "this purchase's PaymentIntent was opened before the price was known; reusing it");
                    api.create_payment_intent(request(None)).await?
                }
                other => other?,
            };
            tracing::info!(org_id = %msg.org_id, sku = %msg.sku, payment_intent_id = %intent.payment_intent_id, price_id = price_id.as_deref().unwrap_or(""), "payment intent opened");
            Ok(intent)
        })
    }
}

impl Handler<Ask<HandleEvent>> for StripeActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: HandleEvent(event),
            reply,
            span,
        }: Ask<HandleEvent>,
        _: &mut Context<Self>,
    ) {
        let api = self.api.clone();
        let directory = self.directory.clone();
        let owners = self.owners.clone();
        let metrics = self.metrics.clone();
        actix::spawn(
            async move {
                let answer = route(event, &api, &directory, &owners).await;
                match answer {
                    Ok(Outcome::Recorded) => metrics.event(EventOutcome::Applied),
                    Ok(Outcome::Duplicate) => metrics.event(EventOutcome::Duplicate),
                    Ok(Outcome::Ignored) => metrics.event(EventOutcome::Ignored),
                    Err(_) => {}
                }
                let _ = reply.send(answer);
            }
            .instrument(span),
        );
    }
}

/// Names the org on the event's span (declared with an empty `org_id` by
/// whoever asked), so that every later line of the event carries it.
fn routed_to(org_id: &str) {
    tracing::Span::current().record("org_id", org_id);
    tracing::debug!("event routed to its org");
}

/// Sends an event to the org it is about. Events that name no org of ours
/// are acknowledged and ignored: they belong to other integrations.
async fn route(
    event: StripeEvent,
    api: &StripeApi,
    directory: &OrgDirectory,
    owners: &Recipient<FindIntentOwner>,
) -> Result<Outcome, OrgError> {
    let event_id = event.id;
    match event.effect {
        EventEffect::PaymentSucceeded(facts) | EventEffect::PaymentFailed(facts) => {
            let succeeded = event.event_type == "payment_intent.succeeded";
            let org_id = facts.org_id.and_then(|o| OrgId::parse(&o).ok());
            let (Some(org_id), Some(sku)) = (org_id, facts.sku) else {
                tracing::info!(%event_id, "payment intent without our metadata; ignored");
                return Ok(Outcome::Ignored);
            };
            let request = ApplyPayment {
                event_id,
                payment_intent_id: facts.payment_intent_id,
                sku,
                succeeded,
                amount: facts.amount,
                currency: facts.currency,
            };
            routed_to(&org_id);
            directory.ask(&org_id, request).await
        }
        EventEffect::Revoked(facts) => {
            let Some(payment_intent_id) = facts.payment_intent_id else {
                tracing::warn!(%event_id, "refund or dispute names no payment intent; ignored");
                return Ok(Outcome::Ignored);
            };
            let (org_id, sku) = match facts.org_id.and_then(|o| OrgId::parse(&o).ok()) {
                Some(org_id) => (org_id, facts.sku),
                None => match owner_of(&payment_intent_id, api, directory, owners).await? {
                    Some((org_id, owner)) => (org_id, facts.sku.or(Some(owner.sku))),
                    None => {
                        tracing::warn!(%event_id, %payment_intent_id, "refund or dispute of a payment intent that is not ours; ignored");
                        return Ok(Outcome::Ignored);
                    }
                },
            };
            let kind = match facts.kind {
                RevocationKind::Refund => ActionKind::Refund,
                RevocationKind::Dispute => ActionKind::Dispute,
            };
            let request = ApplyRevocation {
                event_id,
                kind,
                payment_intent_id,
                sku,
                amount: facts.amount,
                currency: facts.currency,
                log_checked: false,
            };
            routed_to(&org_id);
            directory.ask(&org_id, request).await
        }
        EventEffect::Unreadable {
            payment_intent_id,
            reason,
        } => {
            let ours = match &payment_intent_id {
                Some(id) => owner_of(id, api, directory, owners).await?.is_some(),
                None => false,
            };
            if ours {
                tracing::warn!(%event_id, %reason, "an event of ours that cannot be read; refused");
                return Err(OrgError::UnreadableEvent(reason));
            }
            tracing::info!(%event_id, "an unreadable event that names nothing of ours; ignored");
            Ok(Outcome::Ignored)
        }
        EventEffect::Ignored => Ok(Outcome::Ignored),
    }
}

/// The org of a PaymentIntent named by an event without metadata: from the
/// live org actors, else the action log, else (when the event arrives before
/// the payment's success, say) Stripe itself.
async fn owner_of(
    payment_intent_id: &str,
    api: &StripeApi,
    directory: &OrgDirectory,
    owners: &Recipient<FindIntentOwner>,
) -> Result<Option<(OrgId, PaymentIntentOwner)>, OrgError> {
    let owner = match directory.live_intent_owner(payment_intent_id) {
        Some(owner) => Some(owner),
        None => match find_intent_owner(owners, payment_intent_id.to_owned()).await {
            Ok(Some(owner)) => Some(owner),
            Ok(None) => api.payment_intent_owner(payment_intent_id).await?,
            Err(e) => return Err(OrgError::ReadFailed(e)),
        },
    };
    // Stripe's metadata is anyone's to write: only an org id of the
    // contract's form is ours.
    Ok(owner.and_then(|owner| Some((OrgId::parse(&owner.org_id).ok()?, owner))))
}
