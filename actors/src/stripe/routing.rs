//! Which org a verified event belongs to, and handing it to that org: from
//! the event's metadata, else (a refund or dispute, whose charge does not
//! carry its PaymentIntent's metadata) from the live org actors, the store
//! or Stripe. An event that names no org of ours is acknowledged and
//! recorded nowhere: a Stripe account serves other integrations too.

use actix::Recipient;

use crate::directory::OrgDirectory;
use crate::model::ActionKind;
use crate::org::{ApplyPayment, ApplyRevocation, OrgError, Outcome};
use crate::org_id::OrgId;
use crate::store::PaymentIntentOwner;
use crate::store_reader::{find_intent_owner, FindIntentOwner};
use crate::stripe_api::StripeApi;
use crate::stripe_event::{EventEffect, RevocationKind, StripeEvent};

/// Sends an event to the org it is about. Events that name no org of ours
/// are acknowledged and ignored: they belong to other integrations.
pub(super) async fn route(
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

/// Names the org on the event's span (declared with an empty `org_id` by
/// whoever asked), so that every later line of the event carries it.
fn routed_to(org_id: &str) {
    tracing::Span::current().record("org_id", org_id);
    tracing::debug!("event routed to its org");
}
