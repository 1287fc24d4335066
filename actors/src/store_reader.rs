//! StoreReader: grouped reads, the read-side twin of the PersistenceActor's
//! group commit.
//!
//! Two reads happen per request rather than per deploy: an org actor
//! rebuilding its state when it starts, and a refund or dispute without
//! metadata looking up which org its PaymentIntent belongs to. On
//! ClickHouse every query has a fixed cost of milliseconds of server CPU,
//! so one query per request would cost more than the writes. Here the keys
//! waiting are read together, `MAX_KEYS_PER_READ` to a query, with a few
//! queries in flight. Rounds of reads start at most once per `min_interval`
//! (the group commit's spacing on ClickHouse, none on SQLite), so that keys
//! gather between them; a lone key after a quiet spell is read at once.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::batch::{self, Batched, GroupCommit, Waiting};
use crate::metrics::Metrics;
use crate::model::Action;
use crate::store::{ActionStore, PaymentIntentOwner, StoreError};

/// Keys named in one query: keeps each answer (and its `IN` list) modest.
const MAX_KEYS_PER_READ: usize = 128;
/// Queries in flight at once.
const MAX_READS_IN_FLIGHT: usize = 4;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Requests waiting to be read: each key with who asked.
type Queue<T> = Vec<(String, Reply<T>)>;

/// Read one org's actions, oldest first; send it with [`load_org`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct LoadOrg {
    pub org_id: String,
    pub reply: Reply<Vec<Action>>,
}

/// Which org and SKU a PaymentIntent's payments were recorded for, if any;
/// send it with [`find_intent_owner`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct FindIntentOwner {
    pub payment_intent_id: String,
    pub reply: Reply<Option<PaymentIntentOwner>>,
}

/// Asks the reader for `org_id`'s actions.
pub fn load_org(
    to: &Recipient<LoadOrg>,
    org_id: String,
) -> impl Future<Output = Result<Vec<Action>, StoreError>> + 'static {
    let (reply, answer) = oneshot::channel();
    to.do_send(LoadOrg { org_id, reply });
    stopped_is_unavailable(answer)
}

/// Asks the reader who owns `payment_intent_id`.
pub fn find_intent_owner(
    to: &Recipient<FindIntentOwner>,
    payment_intent_id: String,
) -> impl Future<Output = Result<Option<PaymentIntentOwner>, StoreError>> + 'static {
    let (reply, answer) = oneshot::channel();
    to.do_send(FindIntentOwner {
        payment_intent_id,
        reply,
    });
    stopped_is_unavailable(answer)
}

async fn stopped_is_unavailable<T>(
    answer: oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    answer
        .await
        .unwrap_or_else(|_| Err(StoreError::unavailable("the store reader stopped")))
}

pub struct StoreReader {
    store: ActionStore,
    orgs: Queue<Vec<Action>>,
    intents: Queue<Option<PaymentIntentOwner>>,
    /// `MAX_READS_IN_FLIGHT` reads, rounds spaced by `min_interval`.
    commit: GroupCommit,
    /// Which kind the last read was, so that neither kind starves the other.
    last_read_orgs: bool,
    /// Keys allowed to wait; beyond it a read fails at once (its request
    /// answers 503 and Stripe or the browser tries again).
    max_waiting: usize,
    metrics: Metrics,
}

impl StoreReader {
    pub fn new(
        store: ActionStore,
        min_interval: Duration,
        max_waiting: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            orgs: Vec::new(),
            intents: Vec::new(),
            commit: GroupCommit::new(min_interval, MAX_READS_IN_FLIGHT),
            last_read_orgs: false,
            max_waiting,
            metrics,
        }
    }

    fn admit(&mut self, ctx: &mut Context<Self>) -> Result<(), StoreError> {
        if self.orgs.len() + self.intents.len() >= self.max_waiting {
            return Err(StoreError::unavailable(
                "too many store reads are waiting; try again",
            ));
        }
        // Behind the messages already queued, so that requests arriving
        // together are read together.
        batch::schedule_flush(self, ctx);
        Ok(())
    }

    fn spawn_read<V, T>(
        &mut self,
        ctx: &mut Context<Self>,
        read: impl Future<Output = Result<HashMap<String, V>, StoreError>> + 'static,
        mut batch: HashMap<String, Vec<Reply<T>>>,
        finish: fn(Option<V>) -> T,
        queue: fn(&mut Self) -> &mut Queue<T>,
    ) where
        V: 'static,
        T: Clone + 'static,
    {
        batch::spawn(self, ctx, read, move |result, act, _| {
            // One org's corrupt row fails the read of every org read with
            // it: that org is told, the others are read again (without it).
            let corrupt_org = match &result {
                Err(err @ StoreError::Corrupt { org_id, .. }) => {
                    batch.remove(org_id).map(|replies| (err.clone(), replies))
                }
                _ => None,
            };
            match corrupt_org {
                Some((err, replies)) => {
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                    let others = batch.into_iter().flat_map(|(key, replies)| {
                        replies.into_iter().map(move |r| (key.clone(), r))
                    });
                    queue(act).splice(0..0, others);
                }
                None => answer(batch, result, finish),
            }
        });
    }
}

impl Batched for StoreReader {
    fn group_commit(&mut self) -> &mut GroupCommit {
        &mut self.commit
    }

    fn waiting(&self) -> Waiting {
        match self.orgs.is_empty() && self.intents.is_empty() {
            true => Waiting::Nothing,
            false => Waiting::Some,
        }
    }

    fn start_batch(&mut self, ctx: &mut Context<Self>) {
        let orgs_next = !self.orgs.is_empty() && (self.intents.is_empty() || !self.last_read_orgs);
        if orgs_next {
            self.last_read_orgs = true;
            let batch = take_batch(&mut self.orgs);
            let org_ids: Vec<String> = batch.keys().cloned().collect();
            self.metrics.org_load_orgs.observe(org_ids.len() as f64);
            let store = self.store.clone();
            let read = async move { store.actions_of_orgs(&org_ids).await };
            self.spawn_read(ctx, read, batch, Option::unwrap_or_default, |r| &mut r.orgs);
        } else {
            self.last_read_orgs = false;
            let batch = take_batch(&mut self.intents);
            let ids: Vec<String> = batch.keys().cloned().collect();
            self.metrics.intent_lookups.observe(ids.len() as f64);
            let store = self.store.clone();
            let read = async move { store.owners_of_intents(&ids).await };
            self.spawn_read(ctx, read, batch, std::convert::identity, |r| &mut r.intents);
        }
    }
}

/// Takes up to `MAX_KEYS_PER_READ` waiting requests, grouped by key: the
/// same key twice (an org actor restarted while its predecessor's load
/// waited) is read once and answered twice.
fn take_batch<T>(waiting: &mut Queue<T>) -> HashMap<String, Vec<Reply<T>>> {
    let take = waiting.len().min(MAX_KEYS_PER_READ);
    let mut batch: HashMap<String, Vec<Reply<T>>> = HashMap::new();
    for (key, reply) in waiting.drain(..take) {
        batch.entry(key).or_default().push(reply);
    }
    batch
}

fn answer<V, T: Clone>(
    batch: HashMap<String, Vec<Reply<T>>>,
    result: Result<HashMap<String, V>, StoreError>,
    finish: fn(Option<V>) -> T,
) {
    match result {
        Ok(mut found) => {
            for (key, mut replies) in batch {
                let value = finish(found.remove(&key));
                let last = replies.pop().expect("every key has a reply");
                for reply in replies {
                    let _ = reply.send(Ok(value.clone()));
                }
                let _ = last.send(Ok(value));
            }
        }
        Err(err) => {
            for reply in batch.into_values().flatten() {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

impl Actor for StoreReader {
    type Context = Context<Self>;
}

impl Handler<LoadOrg> for StoreReader {
    type Result = ();

    fn handle(&mut self, LoadOrg { org_id, reply }: LoadOrg, ctx: &mut Context<Self>) {
        match self.admit(ctx) {
            Ok(()) => self.orgs.push((org_id, reply)),
            Err(e) => drop(reply.send(Err(e))),
        }
    }
}

impl Handler<FindIntentOwner> for StoreReader {
    type Result = ();

    fn handle(&mut self, msg: FindIntentOwner, ctx: &mut Context<Self>) {
        match self.admit(ctx) {
            Ok(()) => self.intents.push((msg.payment_intent_id, msg.reply)),
            Err(e) => drop(msg.reply.send(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    /// One org's corrupt row must not fail the loads read in the same query.
    #[actix::test]
    async fn a_corrupt_row_fails_its_own_org_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("actions.db");
        let store = ActionStore::Embedded(EmbeddedStore::new(&path));
        store.migrate().await.expect("create the store");
        let rows = vec![
            Action::test_payment("acme", "a1", 1),
            Action::test_payment("broken", "b1", 1),
        ];
        store.insert_batch(rows).await.expect("store the rows");
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute("UPDATE actions SET kind = 'bogus' WHERE id = 'b1'", []))
            .expect("spoil a row");

        let reader = StoreReader::new(store, Duration::ZERO, 100, Metrics::new())
            .start()
            .recipient();
        // Both are queued before the reader runs: one query reads them.
        let broken = load_org(&reader, "broken".into());
        let acme = load_org(&reader, "acme".into());
        let (broken, acme) = (broken.await, acme.await);

        assert!(
            matches!(&broken, Err(StoreError::Corrupt { org_id, row, .. })
                if org_id == "broken" && row == "b1"),
            "{broken:?}"
        );
        let acme = acme.expect("acme's actions");
        assert_eq!(
            acme.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["a1"]
        );
    }
}
