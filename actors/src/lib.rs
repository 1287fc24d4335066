//! The actors behind the entitlements service. This crate knows nothing of
//! HTTP: the service translates requests into the messages defined here.
//!
//! An event takes one path: StripeActor → OrgActor → PersistenceActor
//! (durable) → the org's ledger → SseHub.

pub mod ask;
pub mod catalog;
pub mod directory;
pub mod follower;
pub mod intent_indexer;
pub mod lease;
pub mod ledger;
pub mod live_intents;
pub mod metrics;
pub mod model;
pub mod org;
pub mod org_event;
pub mod persistence;
pub mod projection;
pub mod reconciler;
pub mod secret;
pub mod signature;
pub mod sse_hub;
pub mod store;
pub mod store_reader;
pub mod stripe;
pub mod stripe_api;
pub mod stripe_event;
