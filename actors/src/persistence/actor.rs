//! The PersistenceActor itself: its group commit (`crate::batch`), the
//! backoff after a failed write, and which writers it refuses.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::refused::RefusedWriters;
use super::{
    CheckReady, GetStats, Persist, PersistError, PersistenceSettings, PersistenceStats, Reply,
};
use crate::batch::{self, Batched, GroupCommit, Waiting};
use crate::drain::{Drain, DrainWaiters};
use crate::intent_indexer::IndexIntents;
use crate::metrics::{Mailbox, Metrics, StoreOperation};
use crate::model::{Action, OrgActorId};
use crate::store::{ActionStore, PaymentIntentOwner, StoreError};

/// A row's writer and the answer it waits for.
type Waiter = (OrgActorId, Reply);

pub struct PersistenceActor {
    store: ActionStore,
    settings: PersistenceSettings,
    pending: VecDeque<(Action, Waiter)>,
    /// One write in flight, spaced by `settings.min_interval`.
    commit: GroupCommit,
    /// After a failed write, writes wait until then (doubling backoff) and
    /// new rows are refused at once, so writers get a fast 503.
    retry_at: Option<Instant>,
    backoff: Duration,
    refused_writers: RefusedWriters,
    drain_waiters: DrainWaiters,
    stats: PersistenceStats,
    metrics: Metrics,
    /// Told the owners of the PaymentIntents in each durable batch, for
    /// stores that index them apart.
    intent_index: Option<Recipient<IndexIntents>>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl PersistenceActor {
    pub fn new(store: ActionStore, settings: PersistenceSettings, metrics: Metrics) -> Self {
        Self {
            store,
            commit: GroupCommit::new(settings.min_interval, 1),
            settings,
            pending: VecDeque::new(),
            retry_at: None,
            backoff: MIN_BACKOFF,
            refused_writers: RefusedWriters::new(),
            drain_waiters: DrainWaiters::default(),
            stats: PersistenceStats::default(),
            metrics,
            intent_index: None,
        }
    }

    pub fn with_intent_index(mut self, index: Recipient<IndexIntents>) -> Self {
        self.intent_index = Some(index);
        self
    }

    /// Answers `err` and refuses the writer's later rows.
    fn refuse(&mut self, (writer, reply): Waiter, err: PersistError) {
        self.refused_writers.insert(writer, Instant::now());
        let _ = reply.send(Err(err));
    }

    fn written(&mut self, result: Result<(), StoreError>, batch: WrittenBatch) {
        let WrittenBatch {
            started,
            row_count,
            waiters,
            owners,
        } = batch;
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.metrics.persisted_batches.inc();
                self.metrics.persisted_rows.inc_by(row_count);
                self.stats.batches += 1;
                self.stats.rows += row_count;
                self.retry_at = None;
                self.backoff = MIN_BACKOFF;
                for (_, (_, reply)) in waiters {
                    let _ = reply.send(Ok(()));
                }
                if let Some(index) = self.intent_index.as_ref().filter(|_| !owners.is_empty()) {
                    index.do_send(IndexIntents(owners));
                }
            }
            Err(err @ StoreError::Conflict { .. }) => self.conflicted(err, waiters),
            Err(err) => {
                tracing::warn!(error = %err, rows = row_count, backoff_ms = self.backoff.as_millis() as u64, "action batch not stored");
                self.stats.failed_batches += 1;
                self.metrics.store_error(StoreOperation::Write, err.kind());
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                let err = PersistError::Store(err);
                for (_, waiter) in waiters {
                    self.refuse(waiter, err.clone());
                }
                // Rows queued behind the failed write would only wait out
                // the backoff: tell their writers now.
                for (_, waiter) in std::mem::take(&mut self.pending) {
                    self.refuse(waiter, err.clone());
                }
            }
        }
    }

    /// One row of the batch gives an (org, seq) that another stored action
    /// holds. The store answers, so there is no backoff and the queue goes
    /// on; nothing of the batch was written (one transaction). Its writer
    /// is told `Conflict` and stops to re-read its org; the batch's other
    /// writers are refused too (their later rows assumed these) and try
    /// again as new actors.
    fn conflicted(&mut self, conflict: StoreError, waiters: Vec<(String, Waiter)>) {
        let StoreError::Conflict {
            org_id,
            seq,
            action_id,
            ..
        } = &conflict
        else {
            unreachable!("called with a conflict")
        };
        tracing::error!(%org_id, seq, %action_id, error = %conflict, rows = waiters.len(),
            "action conflicts with a stored one; its org actor re-reads the org");
        self.stats.failed_batches += 1;
        self.metrics
            .store_error(StoreOperation::Write, conflict.kind());
        let not_stored = PersistError::Store(StoreError::unavailable(format!(
            "not stored: action {action_id} of org {org_id}, written with it, conflicted"
        )));
        let conflicting = action_id.clone();
        for (id, waiter) in waiters {
            match id == conflicting {
                true => self.refuse(waiter, PersistError::Store(conflict.clone())),
                false => self.refuse(waiter, not_stored.clone()),
            }
        }
        // Queued rows of the writers just refused assumed the rows refused.
        let (refused, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, (writer, _))| self.refused_writers.contains(writer));
        self.pending = kept;
        for (_, waiter) in refused {
            self.refuse(waiter, not_stored.clone());
        }
    }
}

/// What a write in flight answers once it is back.
struct WrittenBatch {
    started: Instant,
    row_count: u64,
    /// Each row's id and who waits for it.
    waiters: Vec<(String, Waiter)>,
    owners: Vec<(String, PaymentIntentOwner)>,
}

impl Batched for PersistenceActor {
    fn group_commit(&mut self) -> &mut GroupCommit {
        &mut self.commit
    }

    fn waiting(&self) -> Waiting {
        match self.pending.len() {
            0 => Waiting::Nothing,
            n if n >= self.settings.batch_max_rows => Waiting::Full,
            _ => Waiting::Some,
        }
    }

    fn not_before(&self) -> Option<Instant> {
        self.retry_at
    }

    fn start_batch(&mut self, ctx: &mut Context<Self>) {
        let take = self.pending.len().min(self.settings.batch_max_rows);
        let (rows, waiters): (Vec<Action>, Vec<(String, Waiter)>) = self
            .pending
            .drain(..take)
            .map(|(action, waiter)| {
                let id = action.id.clone();
                (action, (id, waiter))
            })
            .unzip();
        let owners: Vec<(String, PaymentIntentOwner)> = match self.intent_index {
            Some(_) => rows
                .iter()
                .map(|a| {
                    let owner = PaymentIntentOwner {
                        org_id: a.org_id.clone(),
                        sku: a.sku.clone(),
                    };
                    (a.external_id.clone(), owner)
                })
                .collect(),
            None => Vec::new(),
        };
        let store = self.store.clone();
        let timeout = self.settings.write_timeout;
        let row_count = rows.len() as u64;
        self.metrics.batch_rows.observe(row_count as f64);
        let write = async move {
            match tokio::time::timeout(timeout, store.insert_batch(rows)).await {
                Ok(result) => result,
                Err(elapsed) => Err(StoreError::unavailable_from(
                    format_args!("write timed out after {timeout:?}"),
                    elapsed,
                )),
            }
        };
        let batch = WrittenBatch {
            started: Instant::now(),
            row_count,
            waiters,
            owners,
        };
        batch::spawn(self, ctx, write, move |result, act, _| {
            act.written(result, batch)
        });
    }

    fn drained(&mut self) {
        self.drain_waiters.release();
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;
}

impl Handler<Persist> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, persist: Persist, ctx: &mut Context<Self>) {
        let Persist {
            writer,
            action,
            reply,
        } = persist;
        if self.refused_writers.contains(&writer) {
            let err = PersistError::Store(StoreError::unavailable(
                "an earlier action of this org actor was not stored",
            ));
            self.refuse((writer, reply), err);
        } else if let Some(retry_at) = self.retry_at.filter(|t| *t > Instant::now()) {
            let wait_ms = (retry_at - Instant::now()).as_millis();
            let err = PersistError::Store(StoreError::unavailable(format!(
                "store failed recently; next attempt in {wait_ms} ms"
            )));
            self.refuse((writer, reply), err);
        } else if self.pending.len() >= self.settings.max_pending {
            self.metrics.mailbox_full(Mailbox::Persistence);
            self.refuse((writer, reply), PersistError::Overloaded);
        } else {
            self.pending.push_back((action, (writer, reply)));
            batch::schedule_flush(self, ctx);
        }
    }
}

impl Handler<CheckReady> for PersistenceActor {
    type Result = ResponseFuture<Result<(), PersistError>>;

    fn handle(&mut self, _: CheckReady, _: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let timeout = self.settings.write_timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(PersistError::Store(e)),
                Err(_) => Err(StoreError::unavailable("ping timed out").into()),
            }
        })
    }
}

impl Handler<Drain> for PersistenceActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.drain_waiters.wait();
        batch::flush(self, ctx);
        answer
    }
}

impl Handler<GetStats> for PersistenceActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}

#[cfg(test)]
mod tests;
