//! The org actor's requests and answers: what routes, the StripeActor and
//! the stream follower send it, and the one request it makes of Stripe.

use std::sync::Arc;

use actix::prelude::*;

use crate::ask::Request;
use crate::model::{Action, ActionKind};
use crate::org_event::{Entitlements, OrgEvent, Snapshot};
use crate::store::jetstream::OrgMessage;
use crate::store::StoreError;
use crate::stripe_api::{OpenIntent, StripeError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    #[error("unknown sku `{0}`")]
    UnknownSku(String),
    #[error("the org is already entitled to `{0}`")]
    AlreadyEntitled(String),
    #[error("the org is busy; try again")]
    Overloaded,
    #[error("the action store is unavailable: {0}")]
    PersistenceUnavailable(String),
    /// The store did not take the change; on a conflict the org is read
    /// again before anything else is decided.
    #[error("the action could not be recorded: {0}")]
    NotRecorded(#[source] StoreError),
    /// The org's actions (or a PaymentIntent's owner) could not be read.
    #[error("the action store could not be read: {0}")]
    ReadFailed(#[source] StoreError),
    /// A Stripe event about one of our orgs whose object cannot be read.
    #[error("{0}")]
    UnreadableEvent(String),
    /// Another node wrote the org's log first; a fresh read decides again.
    #[error("another node wrote this org first; try again")]
    Stale,
    #[error("{0}")]
    Stripe(#[from] StripeError),
}

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    Duplicate,
    Ignored,
}

pub type OrgAnswer<T> = Result<T, OrgError>;

/// What an org actor asks of Stripe: a PaymentIntent carrying
/// `metadata.org_id` and `metadata.sku`. Declared here, with the org's other
/// messages, and handled by the StripeActor, so that the org actor does not
/// depend on the actor that depends on it.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<OpenIntent, StripeError>")]
pub struct CreatePaymentIntent {
    pub org_id: String,
    pub sku: String,
    pub amount: i64,
    pub currency: String,
    /// Stripe's key for this purchase, the same for every attempt at it.
    pub idempotency_key: String,
}

/// A payment attempt's result, from `payment_intent.succeeded` / `payment_failed`.
#[derive(Clone, Debug)]
pub struct ApplyPayment {
    pub event_id: String,
    pub payment_intent_id: String,
    pub sku: String,
    pub succeeded: bool,
    pub amount: i64,
    pub currency: String,
}

/// A refund or dispute of a PaymentIntent. `sku` is `None` when the event
/// did not say; the ledger may know it from the payment.
#[derive(Clone, Debug)]
pub struct ApplyRevocation {
    pub event_id: String,
    pub kind: ActionKind,
    pub payment_intent_id: String,
    pub sku: Option<String>,
    pub amount: i64,
    pub currency: String,
    /// Set once the actor has checked the log for messages it had not seen
    /// (JetStream), before it answers that no known SKU is revoked.
    pub log_checked: bool,
}

/// Development fallback: the same effect as a successful payment.
#[derive(Clone, Debug)]
pub struct SimulatePayment {
    pub sku: String,
}

#[derive(Clone, Debug)]
pub struct GetSnapshot;

/// The org's one open PaymentIntent for a SKU, created when there is none.
#[derive(Clone, Debug)]
pub struct OpenPaymentIntent {
    pub sku: String,
}

/// Events after `last_event_id`, for a reconnecting stream.
#[derive(Clone, Debug)]
pub struct ReplaySince {
    pub last_event_id: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Replay {
    /// Exactly the missed events, in order (possibly none).
    Events(Vec<Arc<OrgEvent>>),
    /// The gap cannot be filled (unknown id, or too old): start over.
    Snapshot(Snapshot),
}

#[derive(Clone, Debug)]
pub struct ListActions {
    pub limit: u32,
}

/// A message of the org's subject that some node appended (the follower of
/// the whole stream hands each to the org's live actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observe(pub OrgMessage);

impl Request for ApplyPayment {
    type Answer = OrgAnswer<Outcome>;
}
impl Request for ApplyRevocation {
    type Answer = OrgAnswer<Outcome>;
}
impl Request for SimulatePayment {
    type Answer = OrgAnswer<Entitlements>;
}
impl Request for GetSnapshot {
    type Answer = OrgAnswer<Snapshot>;
}
impl Request for OpenPaymentIntent {
    type Answer = OrgAnswer<OpenIntent>;
}
impl Request for ReplaySince {
    type Answer = OrgAnswer<Replay>;
}
impl Request for ListActions {
    type Answer = OrgAnswer<Vec<Action>>;
}
