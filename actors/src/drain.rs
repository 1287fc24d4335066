//! `Drain`: write everything pending, then answer. The actors that buffer
//! writes (the PersistenceActor, the IntentIndexer) handle it at graceful
//! shutdown; its own module so that neither depends on the other for it.

use actix::prelude::*;
use tokio::sync::oneshot;

/// Write everything pending, then answer (for graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// The answers owed to `Drain` senders, given once nothing is left to write.
#[derive(Default)]
pub(crate) struct DrainWaiters(Vec<oneshot::Sender<()>>);

impl DrainWaiters {
    /// A `Drain` answer that resolves at the next `release`.
    pub(crate) fn wait(&mut self) -> ResponseFuture<()> {
        let (tx, rx) = oneshot::channel();
        self.0.push(tx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    pub(crate) fn release(&mut self) {
        for waiter in self.0.drain(..) {
            let _ = waiter.send(());
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
