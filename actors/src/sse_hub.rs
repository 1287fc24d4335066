//! SseHub: who is listening to which org, and fan-out of that org's events.
//!
//! Each connection has a bounded queue. A connection whose queue is full is
//! dropped on the spot (its sender is removed, so its stream ends after what
//! it already holds); the browser reconnects with `Last-Event-ID` and the org
//! actor replays what it missed. Nobody is ever waited for.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::org_event::OrgEvent;

pub type SubscriberId = u64;

/// Register a connection for an org's events.
#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    pub org_id: String,
}

pub struct Subscription {
    pub id: SubscriberId,
    pub events: mpsc::Receiver<Arc<OrgEvent>>,
}

/// A connection went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub org_id: String,
    pub id: SubscriberId,
}

/// An org's change, already durable and applied.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish {
    pub org_id: String,
    pub event: Arc<OrgEvent>,
}

/// Hands a change to the hub without waiting, counted in
/// `entitlements_sse_hub_queue` until the hub has taken it.
///
/// The hub's inbox has no bound of its own, on purpose: dropping a change
/// here would leave browsers a stale view with no gap to notice (they
/// resume by `seq`, and this one was never sent). What bounds it is
/// upstream: each change follows a durable write, so it grows no faster
/// than the store accepts actions, and the hub spends on each one a
/// `try_send` per subscriber, never a wait (a browser that cannot keep up
/// is dropped at its own queue and resumes with `Last-Event-ID`). A queue
/// that keeps growing is the hub falling behind the write rate: browsers
/// then see changes late, never wrong or missing.
pub fn publish(hub: &Recipient<Publish>, metrics: &Metrics, change: Publish) {
    metrics.sse_hub_queue.inc();
    hub.do_send(change);
}

/// Which orgs have streams open on this node, and how many: written by the
/// hub alone, read by org actors (an org being watched stays live) and by
/// the stream follower of the many-node mode.
#[derive(Clone, Default)]
pub struct SubscribedOrgs(Arc<DashMap<String, usize>>);

impl SubscribedOrgs {
    pub fn contains(&self, org_id: &str) -> bool {
        self.0.contains_key(org_id)
    }

    fn set(&self, org_id: &str, streams: usize) {
        if streams == 0 {
            self.0.remove(org_id);
        } else {
            self.0.insert(org_id.to_owned(), streams);
        }
    }
}

/// One browser stream: its id and the bounded queue its response reads.
type Subscriber = (SubscriberId, mpsc::Sender<Arc<OrgEvent>>);

pub struct SseHub {
    client_queue: usize,
    next_id: SubscriberId,
    /// Org id → that org's streams.
    subscribers: HashMap<String, Vec<Subscriber>>,
    subscribed: SubscribedOrgs,
    metrics: Metrics,
}

impl SseHub {
    pub fn new(client_queue: usize, subscribed: SubscribedOrgs, metrics: Metrics) -> Self {
        Self {
            client_queue: client_queue.max(1),
            next_id: 0,
            subscribers: HashMap::new(),
            subscribed,
            metrics,
        }
    }

    /// Keeps `subscribed` in step with the org's list of streams.
    fn streams_changed(&mut self, org_id: &str) {
        let streams = self.subscribers.get(org_id).map_or(0, Vec::len);
        if streams == 0 {
            self.subscribers.remove(org_id);
        }
        self.subscribed.set(org_id, streams);
    }
}

impl Actor for SseHub {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for SseHub {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = mpsc::channel(self.client_queue);
        self.next_id += 1;
        let id = self.next_id;
        self.subscribers
            .entry(msg.org_id.clone())
            .or_default()
            .push((id, tx));
        self.streams_changed(&msg.org_id);
        self.metrics.stream_connections.inc();
        MessageResult(Subscription { id, events: rx })
    }
}

impl Handler<Unsubscribe> for SseHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        if let Some(list) = self.subscribers.get_mut(&msg.org_id) {
            let before = list.len();
            list.retain(|(id, _)| *id != msg.id);
            self.metrics
                .stream_connections
                .dec_by((before - list.len()) as i64);
            self.streams_changed(&msg.org_id);
        }
    }
}

impl Handler<Publish> for SseHub {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.metrics.sse_hub_queue.dec();
        let Some(list) = self.subscribers.get_mut(&msg.org_id) else {
            return;
        };
        let before = list.len();
        let mut slow = 0;
        list.retain(|(_, tx)| match tx.try_send(msg.event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                slow += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if slow > 0 {
            tracing::info!(org_id = %msg.org_id, slow, "dropped stream connections that could not keep up");
        }
        self.metrics.stream_dropped_slow.inc_by(slow);
        let dropped = before - list.len();
        self.metrics.stream_connections.dec_by(dropped as i64);
        if dropped > 0 {
            self.streams_changed(&msg.org_id);
        }
    }
}
