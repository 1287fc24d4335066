//! OrgLoader: group reads of org histories, the read-side twin of the
//! PersistenceActor's group commit.
//!
//! Every org actor rebuilds its state from the store when it starts. When
//! many start at once (a fresh deploy, a burst of new orgs), one query per
//! org costs ClickHouse its fixed per-query price every time; here the
//! orgs waiting are read together, `MAX_ORGS_PER_READ` to a query, with a
//! few queries in flight. A lone org is read at once.

use std::collections::HashMap;
use std::future::Future;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::Action;
use crate::store::{ActionStore, StoreError};

/// Orgs named in one query: keeps each answer (and its `IN` list) modest.
const MAX_ORGS_PER_READ: usize = 128;
/// Queries in flight at once.
const MAX_READS_IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Vec<Action>, StoreError>>;

/// Read one org's actions, oldest first; send it with [`load`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct LoadOrg {
    pub org_id: String,
    pub reply: Reply,
}

/// Asks the loader for `org_id`'s actions.
pub fn load(
    to: &Recipient<LoadOrg>,
    org_id: String,
) -> impl Future<Output = Result<Vec<Action>, StoreError>> + 'static {
    let (reply, answer) = oneshot::channel();
    to.do_send(LoadOrg { org_id, reply });
    async move {
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the org loader stopped".into())))
    }
}

/// Sent to itself: read what waits once the mailbox is drained.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

pub struct OrgLoader {
    store: ActionStore,
    waiting: Vec<(String, Reply)>,
    reads_in_flight: usize,
    flush_scheduled: bool,
    /// Orgs allowed to wait; beyond it a load fails at once (the org
    /// answers 503 and the next request tries again).
    max_waiting: usize,
    metrics: Metrics,
}

impl OrgLoader {
    pub fn new(store: ActionStore, max_waiting: usize, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            waiting: Vec::new(),
            reads_in_flight: 0,
            flush_scheduled: false,
            max_waiting,
        }
    }

    fn read_waiting(&mut self, ctx: &mut Context<Self>) {
        while self.reads_in_flight < MAX_READS_IN_FLIGHT && !self.waiting.is_empty() {
            let take = self.waiting.len().min(MAX_ORGS_PER_READ);
            // The same org twice (an actor restarted while its
            // predecessor's load waited) is read once and answered twice.
            let mut batch: HashMap<String, Vec<Reply>> = HashMap::new();
            for (org_id, reply) in self.waiting.drain(..take) {
                batch.entry(org_id).or_default().push(reply);
            }
            let org_ids: Vec<String> = batch.keys().cloned().collect();
            self.metrics.org_load_orgs.observe(org_ids.len() as f64);
            self.reads_in_flight += 1;
            let store = self.store.clone();
            let read = async move { store.actions_of_orgs(&org_ids).await };
            ctx.spawn(read.into_actor(self).map(move |result, act, ctx| {
                act.reads_in_flight -= 1;
                answer(batch, result);
                act.read_waiting(ctx);
            }));
        }
    }
}

fn answer(
    batch: HashMap<String, Vec<Reply>>,
    result: Result<HashMap<String, Vec<Action>>, StoreError>,
) {
    match result {
        Ok(mut orgs) => {
            for (org_id, mut replies) in batch {
                let actions = orgs.remove(&org_id).unwrap_or_default();
                let last = replies.pop().expect("every entry has a reply");
                for reply in replies {
                    let _ = reply.send(Ok(actions.clone()));
                }
                let _ = last.send(Ok(actions));
            }
        }
        Err(StoreError::Unavailable(msg)) => {
            for reply in batch.into_values().flatten() {
                let _ = reply.send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}

impl Actor for OrgLoader {
    type Context = Context<Self>;
}

impl Handler<LoadOrg> for OrgLoader {
    type Result = ();

    fn handle(&mut self, LoadOrg { org_id, reply }: LoadOrg, ctx: &mut Context<Self>) {
        if self.waiting.len() >= self.max_waiting {
            let _ = reply.send(Err(StoreError::Unavailable(
                "too many orgs are loading; try again".into(),
            )));
            return;
        }
        self.waiting.push((org_id, reply));
        if !self.flush_scheduled {
            // Behind the messages already queued, so that orgs starting
            // together are read together.
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl Handler<Flush> for OrgLoader {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.read_waiting(ctx);
    }
}
