//! PersistenceActor: group commit of action rows into the store.
//!
//! Each writer sends one `Persist` and hears back only once the batch holding
//! its row is durable. A lone request is written at once (no timer to wait
//! for); rows that arrive while a write is in flight wait for it and then go
//! together in the next batch, so batches grow with load instead of queries
//! multiplying. `min_interval` spaces writes for stores that want few, large
//! inserts (ClickHouse); the embedded store uses zero.
//!
//! A new row does not start a write by itself: it schedules one flush for
//! after the mailbox is drained (`crate::batch`). When a write's acks release
//! many writers at once, their next rows arrive together; flushing on the
//! first of them would write it alone and make all the others wait for that
//! one-row INSERT.

mod actor;
mod refused;

use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::model::{Action, OrgActorId};
use crate::store::StoreError;

pub use self::actor::PersistenceActor;

#[derive(Clone, Debug)]
pub struct PersistenceSettings {
    pub batch_max_rows: usize,
    /// Least time between the starts of two writes.
    pub min_interval: Duration,
    /// A write that has not finished by then counts as failed.
    pub write_timeout: Duration,
    /// Rows allowed to wait; beyond it a writer is told `Overloaded`.
    pub max_pending: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// The store did not take the row (`Conflict`: it never will), or the
    /// row was refused untried (`Unavailable`) because the store failed just
    /// before or an earlier row of its writer was not stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many actions are waiting to be stored")]
    Overloaded,
}

/// Store one action; `reply` hears once it is durable. Send it with
/// [`persist`]. The message carries its own reply channel because answering
/// through `Addr::send` costs actix a response channel, a boxed future and a
/// spawned task for every row: half of the actor's time per row under load.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    /// The org actor that decided `action`, having assumed that every row
    /// it sent before is stored too.
    pub writer: OrgActorId,
    pub action: Action,
    pub reply: oneshot::Sender<Result<(), PersistError>>,
}

/// Hands `action` to the actor and resolves once it is durable. Never
/// refused for a full mailbox: `max_pending` bounds the rows waiting and is
/// answered with `Overloaded`.
pub fn persist(
    to: &Recipient<Persist>,
    writer: OrgActorId,
    action: Action,
) -> impl Future<Output = Result<(), PersistError>> + 'static {
    let (reply, answer) = oneshot::channel();
    to.do_send(Persist {
        writer,
        action,
        reply,
    });
    async move {
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::unavailable("persistence stopped").into()))
    }
}

/// Whether the store answers now (for `/readyz`).
#[derive(Message)]
#[rtype(result = "Result<(), PersistError>")]
pub struct CheckReady;

/// What the actor has done, for tests and benchmarks.
#[derive(Message)]
#[rtype(result = "PersistenceStats")]
pub struct GetStats;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistenceStats {
    pub batches: u64,
    pub rows: u64,
    pub failed_batches: u64,
}

type Reply = oneshot::Sender<Result<(), PersistError>>;
