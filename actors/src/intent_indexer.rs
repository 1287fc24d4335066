//! IntentIndexer: keeps the store's index of PaymentIntent owners, which a
//! refund or dispute without metadata is routed by once its org actor has
//! stopped (ClickHouse only: SQLite indexes its actions table directly).
//!
//! The index is not part of what a webhook's 200 promises; the action rows
//! are. So it is written apart from them, at most once per `flush_every`, in
//! one INSERT (`crate::batch`, one write in flight). Written with every
//! batch of actions (a materialized view did that) it doubled the parts
//! ClickHouse creates and then merges, and cost
//! about a fifth of the ingest rate at 256 connections. Until an owner is
//! written, and if its write fails or the process dies first, the
//! PaymentIntent is still found: its org actor stays live far longer than
//! `flush_every`, and Stripe keeps the PaymentIntent's metadata.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;

use crate::batch::{self, Batched, GroupCommit, Waiting};
use crate::drain::{Drain, DrainWaiters};
use crate::store::{ClickHouseStore, PaymentIntentOwner, StoreError};

/// Owners of PaymentIntents whose actions are durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct IndexIntents(pub Vec<(String, PaymentIntentOwner)>);

/// Owners held for the next write at most; beyond, new ones are dropped
/// (and found through Stripe instead).
const MAX_PENDING: usize = 100_000;

pub struct IntentIndexer {
    store: ClickHouseStore,
    /// One write in flight, at most one a `flush_every`.
    commit: GroupCommit,
    pending: HashMap<String, PaymentIntentOwner>,
    dropped: usize,
    /// Writes failed in a row. Only the first is a warning: an outage would
    /// otherwise log one each `flush_every` for as long as it lasts.
    failed_writes: u32,
    drain_waiters: DrainWaiters,
}

impl IntentIndexer {
    pub fn new(store: ClickHouseStore, flush_every: Duration) -> Self {
        Self {
            store,
            commit: GroupCommit::new(flush_every, 1),
            pending: HashMap::new(),
            dropped: 0,
            failed_writes: 0,
            drain_waiters: DrainWaiters::default(),
        }
    }

    fn written(
        &mut self,
        result: Result<(), StoreError>,
        owners: Vec<(String, PaymentIntentOwner)>,
    ) {
        if let Err(e) = result {
            self.failed_writes += 1;
            if self.failed_writes == 1 {
                tracing::warn!(error = %e, owners = owners.len(),
                    "PaymentIntent owners not indexed yet; retried every flush_every");
            } else {
                tracing::debug!(error = %e, owners = owners.len(),
                    failed_writes = self.failed_writes, "PaymentIntent owners still not indexed");
            }
            // Newer owners win; the bound still holds.
            let room = MAX_PENDING.saturating_sub(self.pending.len());
            self.dropped += owners.len().saturating_sub(room);
            for (id, owner) in owners.into_iter().take(room) {
                self.pending.entry(id).or_insert(owner);
            }
            // Draining gives up rather than retry until stopped.
            self.drain_waiters.release();
            return;
        }
        if self.failed_writes > 0 {
            tracing::info!(
                failed_writes = self.failed_writes,
                "PaymentIntent owners indexed again"
            );
            self.failed_writes = 0;
        }
    }
}

impl Batched for IntentIndexer {
    fn group_commit(&mut self) -> &mut GroupCommit {
        &mut self.commit
    }

    fn waiting(&self) -> Waiting {
        if self.pending.is_empty() {
            Waiting::Nothing
        } else if self.drain_waiters.is_empty() {
            Waiting::Some
        } else {
            // Shutdown does not wait out `flush_every`.
            Waiting::Full
        }
    }

    fn start_batch(&mut self, ctx: &mut Context<Self>) {
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "PaymentIntent owners not indexed: too many waiting"
            );
            self.dropped = 0;
        }
        let owners: Vec<_> = self.pending.drain().collect();
        let store = self.store.clone();
        let write = async move {
            let result = store.insert_intent_owners(owners.clone()).await;
            (result, owners)
        };
        batch::spawn(self, ctx, write, |(result, owners), act, _| {
            act.written(result, owners)
        });
    }

    fn drained(&mut self) {
        self.drain_waiters.release();
    }
}

impl Actor for IntentIndexer {
    type Context = Context<Self>;
}

impl Handler<IndexIntents> for IntentIndexer {
    type Result = ();

    fn handle(&mut self, IndexIntents(owners): IndexIntents, ctx: &mut Context<Self>) {
        for (payment_intent_id, owner) in owners {
            if self.pending.len() < MAX_PENDING {
                self.pending.insert(payment_intent_id, owner);
            } else {
                self.dropped += 1;
            }
        }
        batch::schedule_flush(self, ctx);
    }
}

/// Writes what is waiting, then answers (for graceful shutdown).
impl Handler<Drain> for IntentIndexer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.drain_waiters.wait();
        batch::flush(self, ctx);
        answer
    }
}
