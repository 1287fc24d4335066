//! The actors behind the entitlements service. This crate knows nothing of
//! HTTP: the service translates requests into the messages defined here.
//!
//! # Life of a webhook
//!
//! An event takes one path, and its 200 waits for step 5:
//!
//! 1. The service's route checks `Stripe-Signature` with
//!    [`signature::verify`] and reads the event with [`stripe_event::parse`]
//!    into a [`stripe_event::StripeEvent`], whose [`stripe_event::EventEffect`]
//!    is all that the rest of the path needs.
//! 2. It asks its worker's [`stripe::StripeActor`] with
//!    [`stripe::HandleEvent`]. The actor finds the org (the `routing` module
//!    beside it): from the event's metadata, else (a refund or dispute
//!    without it) from the live org actors ([`live_intents::LiveIntents`]),
//!    the store ([`store_reader::FindIntentOwner`]) or Stripe
//!    ([`stripe_api::StripeApi::payment_intent_owner`]), and checks it as an
//!    [`org_id::OrgId`]. An event that names no org of ours is answered
//!    [`org::Outcome::Ignored`].
//! 3. [`directory::OrgDirectory::ask`] hands [`org::ApplyPayment`] or
//!    [`org::ApplyRevocation`] to the org's [`org::OrgActor`], started (and
//!    loaded from the store) if it is not live.
//! 4. The org actor asks [`org::decide`] what the event comes to against its
//!    [`ledger::Ledger`] ahead (the durable actions plus every write in flight):
//!    a duplicate, nothing of ours, or the action to write, which joins the
//!    [`org::pipeline::Pipeline`] of changes answered in the order decided.
//! 5. The actions become durable: through the
//!    [`persistence::PersistenceActor`]'s group commit into SQLite or
//!    ClickHouse ([`store::ActionStore`]), or on the `jetstream` backend by
//!    the org actor's own append
//!    ([`store::jetstream::JetStreamStore::append`]), which the stream
//!    refuses if another node wrote the org first.
//! 6. Only then the org's standing as of them becomes what reads see, the
//!    request is answered, and the change goes to browsers: [`sse_hub::Publish`] to the
//!    [`sse_hub::SseHub`] when a browser on this node watches the org (and,
//!    with many nodes, to every node's org actor
//!    through the stream's [`follower`]).

pub mod ask;
mod batch;
pub mod catalog;
pub mod directory;
pub mod drain;
pub mod follower;
pub mod intent_indexer;
pub mod lease;
pub mod ledger;
pub mod live_intents;
pub mod metrics;
pub mod model;
pub mod org;
pub mod org_event;
pub mod org_id;
pub mod persistence;
pub mod projection;
pub mod reconciler;
pub mod scheduling;
pub mod secret;
pub mod signature;
pub mod sse_hub;
pub mod store;
pub mod store_reader;
pub mod stripe;
pub mod stripe_api;
pub mod stripe_event;
