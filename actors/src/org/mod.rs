//! OrgActor: one per org, the only owner of that org's state.
//!
//! A change is applied in one order: fold into the ledger ahead when
//! decided; persist (durable); then, in the order decided, its standing
//! becomes what reads see, it is published to the SseHub (when a browser on
//! this node watches the org), and it is answered. Changes are pipelined:
//! each is decided against the ledger *ahead* (the durable actions plus every
//! write still in flight) and handed to the PersistenceActor at once, so an
//! org with many webhooks in flight fills one group commit instead of
//! waiting one commit per webhook. Changes are applied and answered in the
//! order they were decided; every answer, a duplicate's included, waits for
//! the writes decided before it.
//!
//! When the store refuses a write, that change and every change decided
//! after it (they assumed it) are answered with the error, nothing of them
//! is applied, and once the writes still in flight have come back the actor
//! stops, so the next message rebuilds state from the store (the truth, even
//! about a write that timed out but landed).
//!
//! On the JetStream backend (many nodes) the actor appends to its org's
//! subject itself: one append in flight at a time, carrying every change
//! decided meanwhile, each expecting the org's last message to be the one
//! the actor knows. A refusal (another node wrote first) is answered
//! `Stale` and stops the actor; the directory then asks a fresh actor, which
//! reads the org again and decides again (the event may now be a
//! duplicate). Messages other nodes wrote reach a live actor as `Observe`.
//!
//! The parts, each in a file of its own:
//! - [`messages`]: the requests and answers;
//! - [`decide`]: the contract's webhook rules, pure;
//! - [`pipeline`]: the writes in flight and the refusal rule, without actix;
//! - [`replay`]: what a reconnecting browser gets;
//! - `actor`: the actor's state, its start (loading history) and stop, and
//!   how a decided change goes through the pipeline;
//! - `handlers`: one handler per request, wiring the rules to the actor;
//! - `log`: the JetStream backend's appends and the messages other nodes
//!   wrote.

mod actor;
pub mod decide;
mod handlers;
mod log;
pub mod messages;
pub mod pipeline;
pub mod replay;

pub use crate::catalog::Product;
pub use actor::{OrgActor, OrgDeps, OrgSettings};
pub use messages::*;
