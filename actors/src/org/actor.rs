//! The org actor's state, its start (the org's history, read once) and
//! stop, and the path of a decided change: through the [`Pipeline`] to the
//! store, then made what reads see, published and answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;

use crate::ask::Bounded;
use crate::catalog::Product;
use crate::ledger::{Ledger, Standing};
use crate::live_intents::LiveIntents;
use crate::metrics::{Metrics, StoreOperation};
use crate::model::{Action, ActionKind, ActionStatus, OrgActorId};
use crate::org_event::OrgEvent;
use crate::org_id::OrgId;
use crate::persistence::{self, Persist, PersistError};
use crate::sse_hub::{self, Publish, SubscribedOrgs};
use crate::store::{ActionStore, JetStreamStore, StoreError};
use crate::store_reader::{self, LoadOrg};
use crate::stripe_api::OpenIntent;

use super::messages::{CreatePaymentIntent, OrgError};
use super::pipeline::{Pipeline, Settled};
use super::replay::RecentEvents;

#[derive(Clone, Debug)]
pub struct OrgSettings {
    pub products: Arc<[Product]>,
    pub mailbox: usize,
    pub idle_stop: Duration,
    /// Stream events kept in memory for reconnecting browsers.
    pub recent_events: usize,
    /// A reconnect missing more events than this gets a snapshot instead.
    pub max_replay: usize,
}

/// What every org actor shares: where to persist, publish and pay.
pub struct OrgDeps {
    pub store: ActionStore,
    /// Where the org's history is read from (at start, and for replays).
    pub loader: Recipient<LoadOrg>,
    pub persistence: Recipient<Persist>,
    pub hub: Recipient<Publish>,
    pub stripe: Recipient<CreatePaymentIntent>,
    pub settings: OrgSettings,
    pub metrics: Metrics,
    /// The PaymentIntents of live org actors, for events without metadata.
    pub live_intents: LiveIntents,
    /// Orgs with browsers listening on this node: their actors stay live.
    pub subscribed: SubscribedOrgs,
}

// One per actor and `Ready` nearly always: boxing would only add a hop.
#[allow(clippy::large_enum_variant)]
pub(super) enum State {
    Loading,
    Ready {
        /// Every action decided, durable or still being written: what a
        /// new change is decided against. A refused write stops the actor,
        /// so it never has to be rolled back.
        ahead: Ledger,
        /// What reads, snapshots and streams see: the org as of its last
        /// durable action. Each change carries the standing `ahead` gave
        /// right after it, and takes its place here once it settles.
        durable: Standing,
    },
    /// The store could not be read; every message is refused and the actor
    /// stops, so the next request tries a fresh load.
    Failed(StoreError),
}

/// Sends a change's answer, given the org as of that change.
pub(super) type Answer = Box<dyn FnOnce(Result<&Standing, OrgError>)>;

/// What the pipeline carries beside each change: its answer, its span, and
/// the org as of that change (which reads see once it is durable).
pub(super) type Waiting = (Answer, tracing::Span, Standing);

pub struct OrgActor {
    pub(super) org_id: OrgId,
    pub(super) deps: Arc<OrgDeps>,
    /// The directory's map of live actors: a stopping actor takes itself
    /// out, unless a newer actor of the org has already taken its place.
    registry: Arc<DashMap<OrgId, Bounded<OrgActor>>>,
    pub(super) state: State,
    /// Decided changes, each with its answer, its span and its standing.
    pub(super) pipeline: Pipeline<Waiting>,
    pub(super) recent: RecentEvents,
    pub(super) open_intents: HashMap<String, OpenIntent>,
    last_active: Instant,
    /// Names this actor, not the org, to the PersistenceActor and in
    /// `LiveIntents`.
    pub(super) id: OrgActorId,
    /// JetStream only: the stream sequence of the org's last message known
    /// here (0: none), which the next append expects to still be the last.
    pub(super) log_seq: u64,
    /// JetStream only: the newest message another node wrote that arrived
    /// while our own changes were in flight; looked at once they are back.
    pub(super) deferred: Option<crate::store::jetstream::OrgMessage>,
}

impl OrgActor {
    pub fn new(
        org_id: OrgId,
        deps: Arc<OrgDeps>,
        registry: Arc<DashMap<OrgId, Bounded<OrgActor>>>,
    ) -> Self {
        Self {
            org_id,
            recent: RecentEvents::new(deps.settings.recent_events),
            deps,
            registry,
            state: State::Loading,
            pipeline: Pipeline::default(),
            open_intents: HashMap::new(),
            last_active: Instant::now(),
            id: OrgActorId::next(),
            log_seq: 0,
            deferred: None,
        }
    }

    pub(super) fn jetstream(&self) -> Option<&JetStreamStore> {
        match &self.deps.store {
            ActionStore::JetStream(js) => Some(js),
            _ => None,
        }
    }

    pub(super) fn skus(&self) -> Arc<[String]> {
        self.deps
            .settings
            .products
            .iter()
            .map(|p| p.sku.clone())
            .collect()
    }

    pub(super) fn product(&self, sku: &str) -> Option<&Product> {
        self.deps.settings.products.iter().find(|p| p.sku == sku)
    }

    /// The org as of its last durable action, or the error to answer with
    /// (and the actor stops).
    pub(super) fn durable(&mut self, ctx: &mut Context<Self>) -> Result<&Standing, OrgError> {
        self.last_active = Instant::now();
        match &mut self.state {
            State::Ready { durable, .. } => Ok(durable),
            State::Failed(e) => {
                let err = OrgError::ReadFailed(e.clone());
                ctx.stop();
                Err(err)
            }
            State::Loading => unreachable!("messages wait for the load (ctx.wait in started)"),
        }
    }

    /// The ledger a new change is decided against: every durable action
    /// and every one still being written.
    pub(super) fn ledger_ahead(&mut self, ctx: &mut Context<Self>) -> Result<&Ledger, OrgError> {
        if let Some(err) = self.pipeline.refusal() {
            return Err(err.clone());
        }
        self.durable(ctx)?;
        let State::Ready { ahead, .. } = &self.state else {
            unreachable!("durable() answered Ok")
        };
        Ok(ahead)
    }

    /// Queues a decided change: writes `action` (if any) now, and answers
    /// through `answer` once it and everything decided before it is durable
    /// and applied.
    pub(super) fn commit(
        &mut self,
        action: Option<Action>,
        ctx: &mut Context<Self>,
        answer: impl FnOnce(Result<&Standing, OrgError>) + 'static,
    ) {
        let span = tracing::info_span!(
            "record_action",
            org_id = %self.org_id,
            event_id = action.as_ref().and_then(|a| a.event_id.as_deref()).unwrap_or("-"),
            action_id = action.as_ref().map_or("-", |a| a.id.as_str()),
            seq = action.as_ref().map_or(0, |a| a.seq),
        );
        let State::Ready { durable, ahead } = &mut self.state else {
            unreachable!("changes are decided on a ready ledger")
        };
        if let Some(action) = &action {
            ahead.fold(action);
        }
        let standing = ahead.standing();
        let written = action.clone();
        let ticket = match self
            .pipeline
            .push(action, (Box::new(answer), span, standing))
        {
            Ok(ticket) => ticket,
            Err((answer, ..)) => return answer(Ok(durable)),
        };
        if let Some(action) = written {
            if self.jetstream().is_some() {
                self.pipeline.hold_for_append(ticket, action);
            } else {
                let write = persistence::persist(&self.deps.persistence, self.id, action);
                self.pipeline.write_sent();
                ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
                    let result = result.map_err(|e| match e {
                        PersistError::Overloaded => OrgError::Overloaded,
                        PersistError::Store(e) => OrgError::NotRecorded(e),
                    });
                    act.pipeline.write_back(ticket, result);
                    act.settle(ctx);
                }));
            }
        }
        self.append_unsent(ctx);
    }

    /// Makes `standing`, the org as of `action`, what reads see, and tells
    /// everyone who needs to know: the PaymentIntent map, the open intents,
    /// the browsers, the recent events.
    pub(super) fn apply_durable(&mut self, action: Action, standing: Standing) {
        let State::Ready { durable, .. } = &mut self.state else {
            unreachable!("actions are applied to a ready ledger")
        };
        durable.clone_from(&standing);
        self.deps
            .live_intents
            .insert(self.id, &action.external_id, &self.org_id, &action.sku);
        if action.kind == ActionKind::Payment && action.status == ActionStatus::Delivered {
            self.open_intents.remove(&action.sku);
        }
        tracing::info!(
            kind = action.kind.as_str(),
            status = action.status.as_str(),
            "action recorded"
        );
        // The SseHub hears of the change only if a browser on this node
        // watches the org: most orgs have none, and the hub's inbox is on
        // another thread. Skipping loses nothing: a stream subscribes at the
        // hub before it asks this actor for its snapshot or replay, so one
        // that subscribes after this check gets this change from that answer.
        if self.deps.subscribed.contains(&self.org_id) {
            let event = Arc::new(standing.event_for(&action));
            self.publish(event.clone());
            self.recent.remember(event);
        } else {
            self.recent.remember_unbuilt(action, standing);
        }
    }

    /// Hands a change to the SseHub.
    fn publish(&self, event: Arc<OrgEvent>) {
        let publish = Publish {
            org_id: self.org_id.to_string(),
            event,
        };
        sse_hub::publish(&self.deps.hub, &self.deps.metrics, publish);
    }

    /// Applies and answers, in the order decided, every change whose write
    /// (and every write before it) is back.
    pub(super) fn settle(&mut self, ctx: &mut Context<Self>) {
        while let Some(settled) = self.pipeline.next_settled() {
            match settled {
                Settled::Applied {
                    action,
                    answer: (answer, span, standing),
                } => {
                    let _entered = span.enter();
                    // Nothing written: the org stands as the change before
                    // it left it.
                    if let Some(action) = action {
                        self.apply_durable(action, standing);
                    }
                    let State::Ready { durable, .. } = &self.state else {
                        unreachable!("changes are decided on a ready ledger")
                    };
                    answer(Ok(durable));
                }
                Settled::Refused {
                    error,
                    answer: (answer, span, _),
                    first,
                } => {
                    let _entered = span.enter();
                    let later_changes = self.pipeline.waiting();
                    // Logged once, on the change whose own write was refused.
                    if first && error == OrgError::Stale {
                        tracing::info!(
                            later_changes,
                            "another node wrote this org first; it is read again"
                        );
                    } else if first {
                        tracing::warn!(error = %error, later_changes,
                            "action not recorded; the org reloads from the store");
                    }
                    answer(Err(error));
                }
            }
        }
        if self.pipeline.should_stop() {
            ctx.stop();
        }
    }

    /// Rebuilds the org's state from its history, oldest action first.
    fn rebuilt(&mut self, actions: Vec<Action>, log_seq: u64) {
        self.log_seq = log_seq;
        let mut ledger = Ledger::new(self.org_id.to_string(), self.skus());
        // Only the newest events can be replayed from memory; building the
        // others' stream events would be wasted.
        let skip = actions
            .len()
            .saturating_sub(self.deps.settings.recent_events);
        for (i, action) in actions.into_iter().enumerate() {
            ledger.fold(&action);
            if i >= skip {
                self.recent.remember_unbuilt(action, ledger.standing());
            }
        }
        tracing::debug!(org_id = %self.org_id, seq = ledger.seq(), "org state rebuilt");
        for (payment_intent_id, intent) in ledger.intents() {
            self.deps
                .live_intents
                .insert(self.id, payment_intent_id, &self.org_id, &intent.sku);
        }
        self.state = State::Ready {
            durable: ledger.standing(),
            ahead: ledger,
        };
        // Browsers still listening (an earlier actor of the org stopped) may
        // have missed the newest events; each drops what it already has by
        // seq. (Checked once here rather than by `publish` per event.)
        if self.deps.subscribed.contains(&self.org_id) {
            for event in self.recent.events() {
                self.publish(event);
            }
        }
    }
}

impl Actor for OrgActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.deps.metrics.live_org_actors.inc();
        // Requests are bounded by `Bounded`; this bounds what try_send
        // (the stream follower's `Observe`) may queue.
        ctx.set_mailbox_capacity(self.deps.settings.mailbox);
        // On JetStream the history comes with the sequence of its last
        // message, which the first append must expect.
        let history: std::pin::Pin<Box<dyn std::future::Future<Output = _>>> =
            match self.jetstream().cloned() {
                Some(js) => {
                    let org_id = self.org_id.clone();
                    Box::pin(async move {
                        let messages = js.org_messages_after(&org_id, 0).await?;
                        let last = messages.last().map_or(0, |m| m.sequence);
                        let actions = messages.into_iter().flat_map(|m| m.actions).collect();
                        Ok::<_, crate::store::StoreError>((actions, last))
                    })
                }
                None => {
                    let load = store_reader::load_org(&self.deps.loader, self.org_id.to_string());
                    Box::pin(async move { Ok((load.await?, 0)) })
                }
            };
        // ctx.wait: no message is handled before the state is rebuilt.
        ctx.wait(history.into_actor(self).map(|result, act, _| match result {
            Ok((actions, log_seq)) => act.rebuilt(actions, log_seq),
            Err(e) => {
                act.deps.metrics.store_error(StoreOperation::Read, e.kind());
                match e.row() {
                    // Loading again gives the same answer until the row is
                    // repaired: for an operator, not for a retry.
                    Some(row) => tracing::error!(org_id = %act.org_id, row, error = %e,
                        "org state could not be loaded: a stored row needs repair"),
                    None => tracing::warn!(org_id = %act.org_id, error = %e, "org state could not be loaded"),
                }
                act.state = State::Failed(e);
            }
        }));
        let idle_stop = self.deps.settings.idle_stop;
        let check_every =
            (idle_stop / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        ctx.run_interval(check_every, move |act, ctx| {
            // On many nodes, an org that browsers here listen to stays live:
            // its actor is what brings them other nodes' changes. (On one
            // node every change goes through the org's actor, so an idle one
            // may stop; it comes back with the next change.)
            let watched = act.jetstream().is_some() && act.deps.subscribed.contains(&act.org_id);
            // A failed load is never kept: the next actor tries again.
            if matches!(act.state, State::Failed(_)) {
                return ctx.stop();
            }
            if act.pipeline.is_idle() && !watched && act.last_active.elapsed() >= idle_stop {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        let me = ctx.address();
        self.registry
            .remove_if(&self.org_id, |_, actor| *actor.addr() == me);
        // The ledger ahead names every PaymentIntent this actor claimed (and
        // perhaps some of refused writes, never claimed): only this actor's
        // own claims are given up.
        if let State::Ready { ahead, .. } = &self.state {
            let ids = ahead.intents().map(|(id, _)| id);
            self.deps.live_intents.remove_claims(self.id, ids);
        }
        self.deps.metrics.live_org_actors.dec();
        Running::Stop
    }
}
