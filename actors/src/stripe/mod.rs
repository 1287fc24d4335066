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

mod routing;

use crate::ask::{Ask, Request};
use crate::catalog::{self, Product};
use crate::directory::OrgDirectory;
use crate::metrics::{EventOutcome, Metrics};
use crate::org::{CreatePaymentIntent, OrgError, Outcome};
use crate::store_reader::FindIntentOwner;
use crate::stripe_api::IntentRequest;
pub use crate::stripe_api::{OpenIntent, StripeApi, StripeError, StripeSettings};
use crate::stripe_event::StripeEvent;

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
    /// Shared with each event's routing future: one clone per event.
    parts: Arc<Parts>,
    /// Only on the actor that opens PaymentIntents.
    catalog: Option<Catalog>,
}

struct Parts {
    api: StripeApi,
    directory: OrgDirectory,
    /// Where a PaymentIntent's org is looked up for events without metadata.
    owners: Recipient<FindIntentOwner>,
    metrics: Metrics,
}

impl StripeActor {
    pub fn new(
        api: StripeApi,
        directory: OrgDirectory,
        owners: Recipient<FindIntentOwner>,
        metrics: Metrics,
    ) -> Self {
        Self {
            parts: Arc::new(Parts {
                api,
                directory,
                owners,
                metrics,
            }),
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
        let api = self.parts.api.clone();
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
            act.parts.metrics.catalog_pending_products.set(catalog.pending.len() as i64);
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
            self.parts
                .metrics
                .catalog_pending_products
                .set(catalog.pending.len() as i64);
            self.sync_catalog(ctx);
        }
    }
}

impl Handler<CreatePaymentIntent> for StripeActor {
    type Result = ResponseFuture<Result<OpenIntent, StripeError>>;

    fn handle(&mut self, msg: CreatePaymentIntent, _: &mut Context<Self>) -> Self::Result {
        let api = self.parts.api.clone();
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
        let parts = self.parts.clone();
        actix::spawn(
            async move {
                let Parts {
                    api,
                    directory,
                    owners,
                    metrics,
                } = &*parts;
                let answer = routing::route(event, api, directory, owners).await;
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
