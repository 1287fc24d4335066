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
//! after the mailbox is drained (actix handles every queued message before
//! the context's own items). When a write's acks release many writers at
//! once, their next rows arrive together; flushing on the first of them would
//! write it alone and make all the others wait for that one-row INSERT.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::drain::{Drain, DrainWaiters};
use crate::intent_indexer::IndexIntents;
use crate::metrics::{Mailbox, Metrics};
use crate::model::{Action, OrgActorId};
use crate::store::{ActionStore, PaymentIntentOwner, StoreError};

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
    #[error("the action store is unavailable: {0}")]
    Unavailable(String),
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
            .unwrap_or_else(|_| Err(PersistError::Unavailable("persistence stopped".into())))
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

/// A row's writer and the answer it waits for.
type Waiter = (OrgActorId, Reply);

pub struct PersistenceActor {
    store: ActionStore,
    settings: PersistenceSettings,
    pending: VecDeque<(Action, Waiter)>,
    in_flight: bool,
    last_write_started: Option<Instant>,
    timer_armed: bool,
    /// After a failed write, writes wait until then (doubling backoff) and
    /// new rows are refused at once, so writers get a fast 503.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Writers that had a row refused or not stored, and when. Their later
    /// rows were decided assuming that one, so they are refused too, even
    /// once the store is back; the org's next actor writes under a new id.
    refused_writers: HashMap<OrgActorId, Instant>,
    /// `refused_writers` is pruned when it reaches this size.
    refused_writers_prune_at: usize,
    drain_waiters: DrainWaiters,
    stats: PersistenceStats,
    metrics: Metrics,
    /// A `Flush` is queued behind the messages already in the mailbox.
    flush_scheduled: bool,
    /// Told the owners of the PaymentIntents in each durable batch, for
    /// stores that index them apart.
    intent_index: Option<Recipient<IndexIntents>>,
}

/// Sent to itself: consider a write once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after its last refused row a writer is remembered. An org actor
/// goes on sending rows until its writes before the refused one are back
/// (each bounded by `write_timeout`, 3 s in the service), then stops; every
/// row it sends in between is refused and renews the entry.
const REFUSED_WRITER_MEMORY: Duration = Duration::from_secs(60);
const MIN_REFUSED_WRITERS_PRUNE_AT: usize = 1024;

impl PersistenceActor {
    pub fn new(store: ActionStore, settings: PersistenceSettings, metrics: Metrics) -> Self {
        Self {
            store,
            settings,
            pending: VecDeque::new(),
            in_flight: false,
            last_write_started: None,
            timer_armed: false,
            retry_at: None,
            backoff: MIN_BACKOFF,
            refused_writers: HashMap::new(),
            refused_writers_prune_at: MIN_REFUSED_WRITERS_PRUNE_AT,
            drain_waiters: DrainWaiters::default(),
            stats: PersistenceStats::default(),
            metrics,
            flush_scheduled: false,
            intent_index: None,
        }
    }

    pub fn with_intent_index(mut self, index: Recipient<IndexIntents>) -> Self {
        self.intent_index = Some(index);
        self
    }

    /// Answers `err` and refuses the writer's later rows (for
    /// `REFUSED_WRITER_MEMORY` after this one).
    fn refuse(&mut self, (writer, reply): Waiter, err: PersistError) {
        let now = Instant::now();
        if self.refused_writers.len() >= self.refused_writers_prune_at {
            self.refused_writers
                .retain(|_, at| now.duration_since(*at) < REFUSED_WRITER_MEMORY);
            self.refused_writers_prune_at =
                (self.refused_writers.len() * 2).max(MIN_REFUSED_WRITERS_PRUNE_AT);
        }
        self.refused_writers.insert(writer, now);
        let _ = reply.send(Err(err));
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        if self.pending.is_empty() {
            self.drain_waiters.release();
            return;
        }
        let now = Instant::now();
        let spacing = self
            .last_write_started
            .map(|t| self.settings.min_interval.saturating_sub(now - t))
            .unwrap_or_default();
        let full = self.pending.len() >= self.settings.batch_max_rows;
        let wait = if full && self.retry_at.is_none() {
            Duration::ZERO
        } else {
            spacing
        };
        let wait = wait.max(
            self.retry_at
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or_default(),
        );
        if !wait.is_zero() {
            if !self.timer_armed {
                self.timer_armed = true;
                ctx.run_later(wait, |act, ctx| {
                    act.timer_armed = false;
                    act.maybe_flush(ctx);
                });
            }
            return;
        }

        let take = self.pending.len().min(self.settings.batch_max_rows);
        let (rows, waiters): (Vec<Action>, Vec<Waiter>) = self.pending.drain(..take).unzip();
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
        self.in_flight = true;
        self.last_write_started = Some(now);
        let store = self.store.clone();
        let timeout = self.settings.write_timeout;
        let row_count = rows.len() as u64;
        self.metrics.batch_rows.observe(row_count as f64);
        let write = async move {
            match tokio::time::timeout(timeout, store.insert_batch(rows)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "write timed out after {timeout:?}"
                ))),
            }
        };
        ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            act.in_flight = false;
            act.metrics.flush_seconds.observe(now.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    act.metrics.persisted_batches.inc();
                    act.metrics.persisted_rows.inc_by(row_count);
                    act.stats.batches += 1;
                    act.stats.rows += row_count;
                    act.retry_at = None;
                    act.backoff = MIN_BACKOFF;
                    for (_, reply) in waiters {
                        let _ = reply.send(Ok(()));
                    }
                    if let Some(index) = act.intent_index.as_ref().filter(|_| !owners.is_empty()) {
                        index.do_send(IndexIntents(owners));
                    }
                }
                Err(StoreError::Unavailable(msg)) => {
                    tracing::warn!(error = %msg, rows = row_count, backoff_ms = act.backoff.as_millis() as u64, "action batch not stored");
                    act.stats.failed_batches += 1;
                    act.metrics.store_errors.inc();
                    act.retry_at = Some(Instant::now() + act.backoff);
                    act.backoff = (act.backoff * 2).min(MAX_BACKOFF);
                    let err = PersistError::Unavailable(msg);
                    for waiter in waiters {
                        act.refuse(waiter, err.clone());
                    }
                    // Rows queued behind the failed write would only wait
                    // out the backoff: tell their writers now.
                    for (_, waiter) in std::mem::take(&mut act.pending) {
                        act.refuse(waiter, err.clone());
                    }
                }
            }
            act.maybe_flush(ctx);
        }));
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
        if self.refused_writers.contains_key(&writer) {
            let err = PersistError::Unavailable(
                "an earlier action of this org actor was not stored".into(),
            );
            self.refuse((writer, reply), err);
        } else if let Some(retry_at) = self.retry_at.filter(|t| *t > Instant::now()) {
            let wait_ms = (retry_at - Instant::now()).as_millis();
            let err = PersistError::Unavailable(format!(
                "store failed recently; next attempt in {wait_ms} ms"
            ));
            self.refuse((writer, reply), err);
        } else if self.pending.len() >= self.settings.max_pending {
            self.metrics.mailbox_full(Mailbox::Persistence);
            self.refuse((writer, reply), PersistError::Overloaded);
        } else {
            self.pending.push_back((action, (writer, reply)));
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<Flush> for PersistenceActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.maybe_flush(ctx);
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
                Ok(Err(StoreError::Unavailable(msg))) => Err(PersistError::Unavailable(msg)),
                Err(_) => Err(PersistError::Unavailable("ping timed out".into())),
            }
        })
    }
}

impl Handler<Drain> for PersistenceActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.drain_waiters.wait();
        self.maybe_flush(ctx);
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
mod tests {
    use super::*;
    use crate::model::{now_ms, ActionKind, ActionStatus};
    use crate::store::{ClickHouseSettings, ClickHouseStore, EmbeddedStore};

    fn action(org_id: &str, id: &str, seq: u64) -> Action {
        Action {
            id: id.into(),
            org_id: org_id.into(),
            seq,
            kind: ActionKind::Payment,
            status: ActionStatus::Delivered,
            sku: "pro".into(),
            external_id: format!("pi_{id}"),
            event_id: None,
            amount: 100,
            currency: "usd".into(),
            created_at_ms: now_ms(),
            simulated: true,
        }
    }

    async fn stored_ids(store: &ActionStore, org_id: &str) -> Vec<String> {
        let actions = store.org_actions(org_id).await.expect("read the store");
        actions.into_iter().map(|a| a.id).collect()
    }

    /// An org actor decides each change against everything it sent before.
    /// Once one of its rows is refused, a later row of it that found room
    /// would land without the row it assumed: a gap in the org's seqs.
    #[actix::test]
    async fn a_refused_writers_later_rows_are_refused_even_when_there_is_room() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = ActionStore::Embedded(EmbeddedStore::new(dir.path().join("actions.db")));
        store.migrate().await.expect("create the store");
        let settings = PersistenceSettings {
            batch_max_rows: 100,
            min_interval: Duration::ZERO,
            write_timeout: Duration::from_secs(10),
            max_pending: 1,
        };
        let to = PersistenceActor::new(store.clone(), settings, Metrics::new())
            .start()
            .recipient();
        let (acme, globex) = (OrgActorId::next(), OrgActorId::next());

        // Both are in the mailbox before the actor runs: the first row
        // waits for its write, the second finds no room.
        let first = persist(&to, acme, action("acme", "a1", 1));
        let second = persist(&to, acme, action("acme", "a2", 2));
        assert_eq!(first.await, Ok(()));
        assert_eq!(second.await, Err(PersistError::Overloaded));

        // There is room again, but a3 was decided assuming a2.
        let third = persist(&to, acme, action("acme", "a3", 3)).await;
        assert!(
            matches!(third, Err(PersistError::Unavailable(_))),
            "{third:?}"
        );
        // Other writers are not affected; nor is the org's next actor.
        let acme_again = OrgActorId::next();
        assert_eq!(
            persist(&to, globex, action("globex", "g1", 1)).await,
            Ok(())
        );
        assert_eq!(
            persist(&to, acme_again, action("acme", "a2", 2)).await,
            Ok(())
        );

        assert_eq!(stored_ids(&store, "acme").await, ["a1", "a2"]);
        assert_eq!(stored_ids(&store, "globex").await, ["g1"]);
    }

    /// The same after a failed write: once the backoff is over the store
    /// gets another try, but not with a row that assumed the failed one.
    #[actix::test]
    async fn a_failed_writers_later_rows_never_reach_the_store() {
        // A ClickHouse address nothing listens on: every write fails.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = ClickHouseStore::new(ClickHouseSettings {
            url: format!("http://127.0.0.1:{port}"),
            database: String::new(),
            user: String::new(),
            password: crate::secret::Secret::default(),
            table: "actions".into(),
            timeout: Duration::from_secs(5),
        })
        .expect("valid settings");
        let settings = PersistenceSettings {
            batch_max_rows: 100,
            min_interval: Duration::ZERO,
            write_timeout: Duration::from_secs(5),
            max_pending: 100,
        };
        let addr =
            PersistenceActor::new(ActionStore::ClickHouse(store), settings, Metrics::new()).start();
        let to = addr.clone().recipient();
        let failed_batches = || async {
            addr.send(GetStats)
                .await
                .expect("actor alive")
                .failed_batches
        };
        let (acme, globex) = (OrgActorId::next(), OrgActorId::next());

        let first = persist(&to, acme, action("acme", "a1", 1)).await;
        assert!(
            matches!(first, Err(PersistError::Unavailable(_))),
            "{first:?}"
        );
        assert_eq!(failed_batches().await, 1);

        // Past the first backoff (100 ms), a new writer's row is tried...
        tokio::time::sleep(MIN_BACKOFF + Duration::from_millis(50)).await;
        let other = persist(&to, globex, action("globex", "g1", 1)).await;
        assert!(
            matches!(other, Err(PersistError::Unavailable(_))),
            "{other:?}"
        );
        assert_eq!(failed_batches().await, 2);

        // ...and past the next one (200 ms), acme's a2 is refused untried.
        tokio::time::sleep(MIN_BACKOFF * 2 + Duration::from_millis(50)).await;
        let second = persist(&to, acme, action("acme", "a2", 2)).await;
        assert!(
            matches!(second, Err(PersistError::Unavailable(_))),
            "{second:?}"
        );
        assert_eq!(failed_batches().await, 2, "a2 must not have been written");
    }
}
