//! OrgActor: one per org, the only owner of that org's state.
//!
//! A change is applied in one order: persist (durable), then fold into the
//! ledger, then publish to the SseHub, then answer. Changes are pipelined:
//! each is decided against the ledger *ahead* (the durable one plus every
//! write still in flight) and handed to the PersistenceActor at once, so an
//! org with many webhooks in flight fills one group commit instead of
//! waiting one commit per webhook. Writes come back in the order they were
//! sent and are applied in that order; every answer, a duplicate's
//! included, waits for the writes decided before it.
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dashmap::DashMap;

use crate::ask::{Ask, Bounded, Request};
pub use crate::catalog::Product;
use crate::ledger::Ledger;
use crate::live_intents::LiveIntents;
use crate::metrics::Metrics;
use crate::model::{now_ms, Action, ActionKind, ActionStatus, OrgActorId};
use crate::org_event::{Entitlements, OrgEvent, Snapshot};
use crate::persistence::{self, Persist, PersistError};
use crate::sse_hub::{self, Publish, SubscribedOrgs};
use crate::store::jetstream::{AppendError, OrgMessage};
use crate::store::ActionStore;
use crate::store_reader::{self, LoadOrg};
use crate::stripe_api::{OpenIntent, StripeError};

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    #[error("unknown sku `{0}`")]
    UnknownSku(String),
    #[error("the org is already entitled to `{0}`")]
    AlreadyEntitled(String),
    #[error("the org is busy; try again")]
    Overloaded,
    #[error("the action store is unavailable: {0}")]
    PersistenceUnavailable(String),
    /// A Stripe event about one of our orgs whose object cannot be read.
    #[error("{0}")]
    UnreadableEvent(String),
    /// Another node wrote the org's log first; a fresh read decides again.
    #[error("another node wrote this org first; try again")]
    Stale,
    #[error("{0}")]
    Stripe(#[from] StripeError),
}

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    Duplicate,
    Ignored,
}

pub type OrgAnswer<T> = Result<T, OrgError>;

/// What an org actor asks of Stripe: a PaymentIntent carrying
/// `metadata.org_id` and `metadata.sku`. Declared here, with the org's other
/// messages, and handled by the StripeActor, so that the org actor does not
/// depend on the actor that depends on it.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<OpenIntent, StripeError>")]
pub struct CreatePaymentIntent {
    pub org_id: String,
    pub sku: String,
    pub amount: i64,
    pub currency: String,
    /// Stripe's key for this purchase, the same for every attempt at it.
    pub idempotency_key: String,
}

/// A payment attempt's result, from `payment_intent.succeeded` / `payment_failed`.
#[derive(Clone, Debug)]
pub struct ApplyPayment {
    pub event_id: String,
    pub payment_intent_id: String,
    pub sku: String,
    pub succeeded: bool,
    pub amount: i64,
    pub currency: String,
}

/// A refund or dispute of a PaymentIntent. `sku` is `None` when the event
/// did not say; the ledger may know it from the payment.
#[derive(Clone, Debug)]
pub struct ApplyRevocation {
    pub event_id: String,
    pub kind: ActionKind,
    pub payment_intent_id: String,
    pub sku: Option<String>,
    pub amount: i64,
    pub currency: String,
    /// Set once the actor has checked the log for messages it had not seen
    /// (JetStream), before it answers that no known SKU is revoked.
    pub log_checked: bool,
}

/// Development fallback: the same effect as a successful payment.
#[derive(Clone, Debug)]
pub struct SimulatePayment {
    pub sku: String,
}

#[derive(Clone, Debug)]
pub struct GetSnapshot;

/// The org's one open PaymentIntent for a SKU, created when there is none.
#[derive(Clone, Debug)]
pub struct OpenPaymentIntent {
    pub sku: String,
}

/// Events after `last_event_id`, for a reconnecting stream.
#[derive(Clone, Debug)]
pub struct ReplaySince {
    pub last_event_id: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Replay {
    /// Exactly the missed events, in order (possibly none).
    Events(Vec<Arc<OrgEvent>>),
    /// The gap cannot be filled (unknown id, or too old): start over.
    Snapshot(Snapshot),
}

#[derive(Clone, Debug)]
pub struct ListActions {
    pub limit: u32,
}

/// A message of the org's subject that some node appended (the follower of
/// the whole stream hands each to the org's live actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observe(pub OrgMessage);

impl Request for ApplyPayment {
    type Answer = OrgAnswer<Outcome>;
}
impl Request for ApplyRevocation {
    type Answer = OrgAnswer<Outcome>;
}
impl Request for SimulatePayment {
    type Answer = OrgAnswer<Entitlements>;
}
impl Request for GetSnapshot {
    type Answer = OrgAnswer<Snapshot>;
}
impl Request for OpenPaymentIntent {
    type Answer = OrgAnswer<OpenIntent>;
}
impl Request for ReplaySince {
    type Answer = OrgAnswer<Replay>;
}
impl Request for ListActions {
    type Answer = OrgAnswer<Vec<Action>>;
}

/// What every org actor shares: where to persist, publish and pay.
pub struct OrgDeps {
    pub store: ActionStore,
    /// Where the org's history is read from when the actor starts.
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
enum State {
    Loading,
    Ready {
        /// What reads, snapshots and streams see: only durable actions.
        durable: Ledger,
        /// `durable` plus every action still being written: what a new
        /// change is decided against. The two meet whenever nothing is in
        /// flight; a failed write stops the actor, so `ahead` never has to
        /// be rolled back.
        ahead: Ledger,
    },
    /// The store could not be read; every message is refused and the actor
    /// stops, so the next request tries a fresh load.
    Failed(String),
}

/// A change decided but not yet answered.
struct Pending {
    ticket: u64,
    /// `None` for an answer that only waits for the writes before it (a
    /// duplicate of a change still being written, say).
    action: Option<Action>,
    /// The write's result, once it is back.
    written: Option<Result<(), OrgError>>,
    answer: Answer,
    span: tracing::Span,
}

/// Sends a change's answer, given the durable ledger it was applied to.
type Answer = Box<dyn FnOnce(Result<&Ledger, OrgError>)>;

pub struct OrgActor {
    org_id: String,
    deps: Arc<OrgDeps>,
    registry: Arc<DashMap<String, Bounded<OrgActor>>>,
    state: State,
    /// Changes in the order they were decided, answered from the front.
    pending: VecDeque<Pending>,
    next_ticket: u64,
    writes_in_flight: usize,
    /// A write failed: changes are refused and the actor stops once its
    /// writes in flight are back.
    broken: Option<OrgError>,
    recent: VecDeque<Arc<OrgEvent>>,
    open_intents: HashMap<String, OpenIntent>,
    last_active: Instant,
    /// Names this actor, not the org, to the PersistenceActor and in
    /// `LiveIntents`.
    id: OrgActorId,
    /// JetStream only: the stream sequence of the org's last message known
    /// here (0: none), which the next append expects to still be the last.
    log_seq: u64,
    /// JetStream only: decided changes waiting for the append in flight.
    unsent: Vec<(u64, Action)>,
    /// JetStream only: the tickets of the append in flight.
    appending: Vec<u64>,
    /// JetStream only: the newest message another node wrote that arrived
    /// while our own changes were in flight; looked at once they are back.
    deferred: Option<OrgMessage>,
}

impl OrgActor {
    pub fn new(
        org_id: String,
        deps: Arc<OrgDeps>,
        registry: Arc<DashMap<String, Bounded<OrgActor>>>,
    ) -> Self {
        Self {
            org_id,
            deps,
            registry,
            state: State::Loading,
            pending: VecDeque::new(),
            next_ticket: 0,
            writes_in_flight: 0,
            broken: None,
            recent: VecDeque::new(),
            open_intents: HashMap::new(),
            last_active: Instant::now(),
            id: OrgActorId::next(),
            log_seq: 0,
            unsent: Vec::new(),
            appending: Vec::new(),
            deferred: None,
        }
    }

    fn jetstream(&self) -> Option<&crate::store::JetStreamStore> {
        match &self.deps.store {
            ActionStore::JetStream(js) => Some(js),
            _ => None,
        }
    }

    fn skus(&self) -> Arc<[String]> {
        self.deps
            .settings
            .products
            .iter()
            .map(|p| p.sku.clone())
            .collect()
    }

    fn product(&self, sku: &str) -> Option<&Product> {
        self.deps.settings.products.iter().find(|p| p.sku == sku)
    }

    /// The durable ledger, or the error to answer with (and the actor stops).
    fn ledger(&mut self, ctx: &mut Context<Self>) -> Result<&mut Ledger, OrgError> {
        self.last_active = Instant::now();
        match &mut self.state {
            State::Ready { durable, .. } => Ok(durable),
            State::Failed(msg) => {
                let err = OrgError::PersistenceUnavailable(msg.clone());
                ctx.stop();
                Err(err)
            }
            State::Loading => unreachable!("messages wait for the load (ctx.wait in started)"),
        }
    }

    /// The ledger a new change is decided against: the durable one plus
    /// every action still being written.
    fn ledger_ahead(&mut self, ctx: &mut Context<Self>) -> Result<&Ledger, OrgError> {
        if let Some(err) = &self.broken {
            return Err(err.clone());
        }
        self.ledger(ctx)?;
        let State::Ready { ahead, .. } = &self.state else {
            unreachable!("ledger() answered Ok")
        };
        Ok(ahead)
    }

    fn remember(&mut self, event: Arc<OrgEvent>) {
        if self.recent.len() == self.deps.settings.recent_events {
            self.recent.pop_front();
        }
        self.recent.push_back(event);
    }

    /// Queues a decided change: writes `action` (if any) now, and answers
    /// through `answer` once it and everything decided before it is durable
    /// and applied.
    fn commit(
        &mut self,
        action: Option<Action>,
        ctx: &mut Context<Self>,
        answer: impl FnOnce(Result<&Ledger, OrgError>) + 'static,
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
        if action.is_none() && self.pending.is_empty() {
            return answer(Ok(durable));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if let Some(action) = &action {
            ahead.fold(action);
            if self.jetstream().is_some() {
                self.unsent.push((ticket, action.clone()));
            } else {
                let write = persistence::persist(&self.deps.persistence, self.id, action.clone());
                self.writes_in_flight += 1;
                ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
                    act.writes_in_flight -= 1;
                    let result = result.map_err(|e| match e {
                        PersistError::Overloaded => OrgError::Overloaded,
                        PersistError::Unavailable(msg) => OrgError::PersistenceUnavailable(msg),
                    });
                    act.written(ticket, result);
                    act.settle(ctx);
                }));
            }
        }
        self.pending.push_back(Pending {
            ticket,
            action,
            written: None,
            answer: Box::new(answer),
            span,
        });
        self.append_unsent(ctx);
    }

    /// JetStream: appends every change decided since the last append, in one
    /// message, unless an append is still in flight (its ack tells the
    /// sequence the next one must expect).
    fn append_unsent(&mut self, ctx: &mut Context<Self>) {
        if !self.appending.is_empty() || self.unsent.is_empty() || self.broken.is_some() {
            return;
        }
        let Some(js) = self.jetstream().cloned() else {
            return;
        };
        let (tickets, actions): (Vec<u64>, Vec<Action>) = self.unsent.drain(..).unzip();
        // Names the command, never the org and seq: two nodes racing for one
        // seq must both reach the sequence check, not be told "duplicate".
        let message_id = message_id(&actions, self.id, tickets[0]);
        let (org_id, expected) = (self.org_id.clone(), self.log_seq);
        let metrics = self.deps.metrics.clone();
        self.appending = tickets;
        self.writes_in_flight += 1;
        let append = async move {
            let started = Instant::now();
            let result = js.append(&org_id, expected, &message_id, &actions).await;
            metrics
                .jetstream_publish_seconds
                .observe(started.elapsed().as_secs_f64());
            result
        };
        ctx.spawn(append.into_actor(self).map(|result, act, ctx| {
            act.writes_in_flight -= 1;
            let tickets = std::mem::take(&mut act.appending);
            match result {
                Ok(sequence) => {
                    act.log_seq = sequence;
                    for ticket in tickets {
                        act.written(ticket, Ok(()));
                    }
                }
                Err(e) => {
                    let err = match e {
                        AppendError::Stale { .. } => {
                            act.deps.metrics.jetstream_conflicts.inc();
                            OrgError::Stale
                        }
                        AppendError::Unavailable(msg) => OrgError::PersistenceUnavailable(msg),
                    };
                    // The first failure answers it and everything after it.
                    act.written(tickets[0], Err(err));
                }
            }
            act.settle(ctx);
            act.append_unsent(ctx);
            if act.writes_in_flight == 0 && act.pending.is_empty() {
                if let Some(message) = act.deferred.take() {
                    act.observe(message, ctx);
                }
            }
        }));
    }

    /// Records a write's result on its pending change.
    fn written(&mut self, ticket: u64, result: Result<(), OrgError>) {
        // Tickets in `pending` are consecutive; a missing one was already
        // answered because a write before it failed.
        if let Some(front) = self.pending.front().map(|p| p.ticket) {
            if let Some(p) = ticket
                .checked_sub(front)
                .and_then(|i| self.pending.get_mut(i as usize))
            {
                p.written = Some(result);
            }
        }
    }

    /// Folds a durable action into the ledger and tells everyone who needs
    /// to know: the PaymentIntent map, the open intents, the browsers.
    fn apply_durable(&mut self, action: &Action) -> Arc<OrgEvent> {
        let State::Ready { durable, .. } = &mut self.state else {
            unreachable!("actions are applied to a ready ledger")
        };
        let event = Arc::new(durable.apply(action));
        self.deps
            .live_intents
            .insert(self.id, &action.external_id, &self.org_id, &action.sku);
        if action.kind == ActionKind::Payment && action.status == ActionStatus::Delivered {
            self.open_intents.remove(&action.sku);
        }
        sse_hub::publish(
            &self.deps.hub,
            &self.deps.metrics,
            Publish {
                org_id: self.org_id.clone(),
                event: event.clone(),
            },
        );
        tracing::info!(
            kind = action.kind.as_str(),
            status = action.status.as_str(),
            "action recorded"
        );
        event
    }

    /// Applies and answers, from the front, every change whose write (and
    /// every write before it) is back.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.action.is_none() || p.written.is_some())
        {
            let p = self.pending.pop_front().expect("checked above");
            let _entered = p.span.enter();
            match p.written {
                None | Some(Ok(())) => {
                    let event = p.action.as_ref().map(|action| self.apply_durable(action));
                    let State::Ready { durable, .. } = &self.state else {
                        unreachable!("changes are decided on a ready ledger")
                    };
                    (p.answer)(Ok(durable));
                    if let Some(event) = event {
                        self.remember(event);
                    }
                }
                Some(Err(err)) => {
                    if err == OrgError::Stale {
                        tracing::info!(
                            later_changes = self.pending.len(),
                            "another node wrote this org first; it is read again"
                        );
                    } else {
                        tracing::warn!(error = %err, later_changes = self.pending.len(),
                            "action not recorded; the org reloads from the store");
                    }
                    (p.answer)(Err(err.clone()));
                    // Everything decided after it assumed it.
                    for later in self.pending.drain(..) {
                        (later.answer)(Err(err.clone()));
                    }
                    self.unsent.clear();
                    self.broken = Some(err);
                }
            }
        }
        // Stop only once every write is back, so that the rebuild reads
        // whatever of them landed.
        if self.broken.is_some() && self.writes_in_flight == 0 {
            ctx.stop();
        }
    }

    fn new_action(
        &self,
        seq: u64,
        id: String,
        kind: ActionKind,
        status: ActionStatus,
        payment: PaymentDetails<'_>,
    ) -> Action {
        Action {
            id,
            org_id: self.org_id.clone(),
            seq,
            kind,
            status,
            sku: payment.sku.to_owned(),
            external_id: payment.payment_intent_id.to_owned(),
            event_id: payment.event_id.map(str::to_owned),
            amount: payment.amount,
            currency: payment.currency.to_owned(),
            created_at_ms: now_ms(),
            simulated: false,
        }
    }
}

/// The `Nats-Msg-Id` of an append: the event ids of its actions (a
/// simulated payment has none; this actor's id and the ticket name it).
fn message_id(actions: &[Action], actor: OrgActorId, first_ticket: u64) -> String {
    use std::fmt::Write;
    let mut id = String::new();
    for action in actions {
        match &action.event_id {
            Some(event_id) => id.push_str(event_id),
            None => {
                let _ = write!(id, "request-{}-{actor:?}-{first_ticket}", node_nonce());
            }
        }
        id.push(' ');
    }
    if id.len() <= 128 {
        return id.trim_end().to_owned();
    }
    // Long batches: a digest of the ids keeps the header small.
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Tells this process's request ids from another node's.
fn node_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| format!("{}-{}", std::process::id(), now_ms()))
}

/// What an action records about the money: the product, the PaymentIntent
/// and the event that moved it.
struct PaymentDetails<'a> {
    sku: &'a str,
    payment_intent_id: &'a str,
    event_id: Option<&'a str>,
    amount: i64,
    currency: &'a str,
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
                    let load = store_reader::load_org(&self.deps.loader, self.org_id.clone());
                    Box::pin(async move { Ok((load.await?, 0)) })
                }
            };
        // ctx.wait: no message is handled before the state is rebuilt.
        ctx.wait(history.into_actor(self).map(|result, act, _| match result {
            Ok((actions, log_seq)) => {
                let actions: Vec<Action> = actions;
                act.log_seq = log_seq;
                let mut ledger = Ledger::new(act.org_id.clone(), act.skus());
                let keep = act.deps.settings.recent_events;
                let skip = actions.len().saturating_sub(keep);
                for (i, action) in actions.iter().enumerate() {
                    if i >= skip {
                        act.remember(Arc::new(ledger.apply(action)));
                    } else {
                        ledger.fold(action);
                    }
                }
                tracing::debug!(org_id = %act.org_id, seq = ledger.seq(), "org state rebuilt");
                for (payment_intent_id, intent) in ledger.intents() {
                    act.deps.live_intents.insert(
                        act.id,
                        payment_intent_id,
                        &act.org_id,
                        &intent.sku,
                    );
                }
                act.state = State::Ready {
                    ahead: ledger.clone(),
                    durable: ledger,
                };
                // Browsers still listening (an earlier actor of the org
                // stopped) may have missed the newest events; each drops
                // what it already has by seq.
                if act.deps.subscribed.contains(&act.org_id) {
                    for event in &act.recent {
                        sse_hub::publish(
                            &act.deps.hub,
                            &act.deps.metrics,
                            Publish {
                                org_id: act.org_id.clone(),
                                event: event.clone(),
                            },
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(org_id = %act.org_id, error = %e, "org state could not be loaded");
                act.state = State::Failed(e.to_string());
            }
        }));
        let idle_stop = self.deps.settings.idle_stop;
        let check_every =
            (idle_stop / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        ctx.run_interval(check_every, move |act, ctx| {
            let writing = act.writes_in_flight > 0 || !act.pending.is_empty();
            // On many nodes, an org that browsers here listen to stays live:
            // its actor is what brings them other nodes' changes. (On one
            // node every change goes through the org's actor, so an idle one
            // may stop; it comes back with the next change.)
            let watched = act.jetstream().is_some() && act.deps.subscribed.contains(&act.org_id);
            // A failed load is never kept: the next actor tries again.
            if matches!(act.state, State::Failed(_)) {
                return ctx.stop();
            }
            if !writing && !watched && act.last_active.elapsed() >= idle_stop {
                ctx.stop();
            }
        });
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        let me = ctx.address();
        self.registry
            .remove_if(&self.org_id, |_, actor| *actor.addr() == me);
        if let State::Ready { durable, .. } = &self.state {
            let ids = durable.intents().map(|(id, _)| id);
            self.deps.live_intents.remove_claims(self.id, ids);
        }
        self.deps.metrics.live_org_actors.dec();
        Running::Stop
    }
}

impl Handler<Ask<ApplyPayment>> for OrgActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: r,
            reply,
            span,
        }: Ask<ApplyPayment>,
        ctx: &mut Context<Self>,
    ) {
        let _entered = span.enter();
        let seq = match self.ledger_ahead(ctx) {
            Err(e) => return drop(reply.send(Err(e))),
            Ok(l)
                if l.has_applied_event(&r.event_id)
                    || (r.succeeded && l.intent(&r.payment_intent_id).is_some_and(|i| i.paid)) =>
            {
                return self.commit(None, ctx, move |l| {
                    let _ = reply.send(l.map(|_| Outcome::Duplicate));
                });
            }
            Ok(l) => l.next_seq(),
        };
        if self.product(&r.sku).is_none() {
            tracing::warn!(org_id = %self.org_id, event_id = %r.event_id, sku = %r.sku, "payment for an unknown sku ignored");
            return drop(reply.send(Ok(Outcome::Ignored)));
        }
        let (id, status) = if r.succeeded {
            // One delivered payment per PaymentIntent, whichever event says so.
            (
                format!("pay_{}", r.payment_intent_id),
                ActionStatus::Delivered,
            )
        } else {
            // Each failed attempt is its own action.
            (format!("fail_{}", r.event_id), ActionStatus::Failed)
        };
        let action = self.new_action(
            seq,
            id,
            ActionKind::Payment,
            status,
            PaymentDetails {
                sku: &r.sku,
                payment_intent_id: &r.payment_intent_id,
                event_id: Some(&r.event_id),
                amount: r.amount,
                currency: &r.currency,
            },
        );
        self.commit(Some(action), ctx, move |l| {
            let _ = reply.send(l.map(|_| Outcome::Recorded));
        });
    }
}

impl Handler<Ask<ApplyRevocation>> for OrgActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: r,
            reply,
            span,
        }: Ask<ApplyRevocation>,
        ctx: &mut Context<Self>,
    ) {
        let _entered = span.enter();
        let (seq, sku) = match self.ledger_ahead(ctx) {
            Err(e) => return drop(reply.send(Err(e))),
            Ok(l) if l.has_applied_event(&r.event_id) => {
                return self.commit(None, ctx, move |l| {
                    let _ = reply.send(l.map(|_| Outcome::Duplicate));
                });
            }
            // The event may not name the SKU; the payment it revokes does.
            Ok(l) => (
                l.next_seq(),
                r.sku
                    .clone()
                    .or_else(|| l.intent(&r.payment_intent_id).map(|i| i.sku.clone())),
            ),
        };
        let Some(sku) = sku.filter(|s| self.product(s).is_some()) else {
            // On many nodes the payment may be in a message another node
            // wrote that this one has not seen: an answer that writes
            // nothing gets no sequence check, so look before answering.
            if let (Some(js), false) = (self.jetstream().cloned(), r.log_checked) {
                if self.writes_in_flight > 0 || !self.pending.is_empty() {
                    // Reading now would race our own appends; a fresh
                    // actor reads the org whole.
                    return drop(reply.send(Err(OrgError::Stale)));
                }
                let (org_id, after) = (self.org_id.clone(), self.log_seq);
                let waiting_span = span.clone();
                ctx.wait(
                    async move { js.org_messages_after(&org_id, after).await }
                        .into_actor(self)
                        .map(move |result, act, ctx| match result {
                            Ok(messages) => {
                                for message in messages {
                                    if message.prev == act.log_seq {
                                        act.apply_observed(message);
                                    }
                                }
                                let request = ApplyRevocation {
                                    log_checked: true,
                                    ..r
                                };
                                act.handle(
                                    Ask {
                                        request,
                                        reply,
                                        span: waiting_span,
                                    },
                                    ctx,
                                );
                            }
                            Err(e) => {
                                let _ = reply
                                    .send(Err(OrgError::PersistenceUnavailable(e.to_string())));
                            }
                        }),
                );
                return;
            }
            tracing::warn!(org_id = %self.org_id, event_id = %r.event_id, payment_intent_id = %r.payment_intent_id,
                "revocation names no known sku; ignored");
            return drop(reply.send(Ok(Outcome::Ignored)));
        };
        let action = self.new_action(
            seq,
            format!("{}_{}", r.kind.as_str(), r.event_id),
            r.kind,
            ActionStatus::Delivered,
            PaymentDetails {
                sku: &sku,
                payment_intent_id: &r.payment_intent_id,
                event_id: Some(&r.event_id),
                amount: r.amount,
                currency: &r.currency,
            },
        );
        self.commit(Some(action), ctx, move |l| {
            let _ = reply.send(l.map(|_| Outcome::Recorded));
        });
    }
}

impl Handler<Ask<SimulatePayment>> for OrgActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: r, reply, ..
        }: Ask<SimulatePayment>,
        ctx: &mut Context<Self>,
    ) {
        let Some(product) = self.product(&r.sku).cloned() else {
            return drop(reply.send(Err(OrgError::UnknownSku(r.sku))));
        };
        let seq = match self.ledger_ahead(ctx) {
            Err(e) => return drop(reply.send(Err(e))),
            // Already paid for: a second simulated purchase would double-charge.
            Ok(l) if l.is_entitled(&r.sku) => {
                return self.commit(None, ctx, move |l| {
                    let _ = reply.send(l.map(Ledger::entitlements));
                });
            }
            Ok(l) => l.next_seq(),
        };
        let payment_intent_id = format!("pi_simulated_{}_{seq}", self.org_id);
        let mut action = self.new_action(
            seq,
            format!("pay_{payment_intent_id}"),
            ActionKind::Payment,
            ActionStatus::Delivered,
            PaymentDetails {
                sku: &product.sku,
                payment_intent_id: &payment_intent_id,
                event_id: None,
                amount: product.amount,
                currency: &product.currency,
            },
        );
        action.simulated = true;
        self.commit(Some(action), ctx, move |l| {
            let _ = reply.send(l.map(Ledger::entitlements));
        });
    }
}

impl Handler<Ask<GetSnapshot>> for OrgActor {
    type Result = ();

    fn handle(&mut self, ask: Ask<GetSnapshot>, ctx: &mut Context<Self>) {
        let _ = ask.reply.send(self.ledger(ctx).map(|l| l.snapshot()));
    }
}

impl Handler<Ask<OpenPaymentIntent>> for OrgActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: r, reply, ..
        }: Ask<OpenPaymentIntent>,
        ctx: &mut Context<Self>,
    ) {
        let Some(product) = self.product(&r.sku).cloned() else {
            return drop(reply.send(Err(OrgError::UnknownSku(r.sku))));
        };
        let purchases = match self.ledger(ctx) {
            Ok(l) if l.is_entitled(&r.sku) => {
                return drop(reply.send(Err(OrgError::AlreadyEntitled(r.sku))))
            }
            Ok(l) => l.purchases(&r.sku),
            Err(e) => return drop(reply.send(Err(e))),
        };
        if let Some(open) = self.open_intents.get(&r.sku) {
            return drop(reply.send(Ok(open.clone())));
        }
        // The key is the same for every attempt at this purchase, so even a
        // restarted service gets Stripe's existing PaymentIntent back.
        let idempotency_key = format!(
            "entitlements:{}:{}:{}{}:{}",
            self.org_id, product.sku, product.amount, product.currency, purchases
        );
        let create = self.deps.stripe.send(CreatePaymentIntent {
            org_id: self.org_id.clone(),
            sku: product.sku.clone(),
            amount: product.amount,
            currency: product.currency.clone(),
            idempotency_key,
        });
        // ctx.wait: concurrent calls for this org queue behind this one and
        // then find the intent already open.
        ctx.wait(create.into_actor(self).map(move |result, act, _| {
            let answer = match result {
                Ok(Ok(intent)) => {
                    act.open_intents.insert(product.sku, intent.clone());
                    Ok(intent)
                }
                Ok(Err(e)) => Err(OrgError::Stripe(e)),
                Err(_) => Err(OrgError::Stripe(StripeError::new(
                    "the Stripe client is not running",
                ))),
            };
            let _ = reply.send(answer);
        }));
    }
}

impl Handler<Ask<ReplaySince>> for OrgActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: r, reply, ..
        }: Ask<ReplaySince>,
        ctx: &mut Context<Self>,
    ) {
        let max_replay = self.deps.settings.max_replay;
        let ledger = match self.ledger(ctx) {
            Ok(l) => l,
            Err(e) => return drop(reply.send(Err(e))),
        };
        let seq = ledger.seq();
        let after = r.last_event_id;
        if after > seq || (seq - after) as usize > max_replay {
            return drop(reply.send(Ok(Replay::Snapshot(ledger.snapshot()))));
        }
        let fallback = ledger.snapshot();
        let covered = after == seq || self.recent.front().is_some_and(|e| e.seq <= after + 1);
        if covered {
            let events = self
                .recent
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect();
            return drop(reply.send(Ok(Replay::Events(events))));
        }
        // Older than memory: rebuild the events from the store. Not
        // ctx.wait: this reads durable rows and changes nothing, and the
        // stream drops live events it already got from here by `seq`.
        let store = self.deps.store.clone();
        let org_id = self.org_id.clone();
        let skus = self.skus();
        actix::spawn(async move {
            let answer = match store.org_actions(&org_id).await {
                Ok(actions) => {
                    let mut replayed = Ledger::new(org_id, skus);
                    let events = actions
                        .iter()
                        .map(|a| replayed.apply(a))
                        .filter(|e| e.seq > after)
                        .map(Arc::new)
                        .collect();
                    Replay::Events(events)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay from the store failed; sending a snapshot");
                    Replay::Snapshot(fallback)
                }
            };
            let _ = reply.send(Ok(answer));
        });
    }
}

impl Handler<Ask<ListActions>> for OrgActor {
    type Result = ();

    fn handle(
        &mut self,
        Ask {
            request: r, reply, ..
        }: Ask<ListActions>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(e) = self.ledger(ctx) {
            return drop(reply.send(Err(e)));
        }
        let store = self.deps.store.clone();
        let org_id = self.org_id.clone();
        actix::spawn(async move {
            let answer = store
                .recent_actions(&org_id, r.limit)
                .await
                .map_err(|e| OrgError::PersistenceUnavailable(e.to_string()));
            let _ = reply.send(answer);
        });
    }
}

impl Handler<Observe> for OrgActor {
    type Result = ();

    fn handle(&mut self, Observe(message): Observe, ctx: &mut Context<Self>) {
        self.observe(message, ctx);
    }
}

impl OrgActor {
    /// Brings the ledger up to a message of the org's log some node wrote.
    fn observe(&mut self, message: OrgMessage, ctx: &mut Context<Self>) {
        if message.sequence <= self.log_seq || !matches!(self.state, State::Ready { .. }) {
            return;
        }
        // Changes of our own in flight were decided without this message.
        // If it came after them it is looked at once they are back; if
        // before, their append is refused and the org read again.
        if self.writes_in_flight > 0 || !self.pending.is_empty() || self.broken.is_some() {
            self.deferred = Some(message);
            return;
        }
        if message.prev == self.log_seq {
            return self.apply_observed(message);
        }
        // A message in between never reached us: read what we missed.
        let Some(js) = self.jetstream().cloned() else {
            return;
        };
        let (org_id, after) = (self.org_id.clone(), self.log_seq);
        // ctx.wait: nothing is decided on the ledger while it catches up.
        ctx.wait(
            async move { js.org_messages_after(&org_id, after).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(messages) => {
                        for message in messages {
                            if message.prev == act.log_seq {
                                act.apply_observed(message);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(org_id = %act.org_id, error = %e,
                            "could not read the org's newer messages; it reloads");
                        ctx.stop();
                    }
                }),
        );
    }
}

impl OrgActor {
    /// Applies a message another node appended, the direct successor of
    /// what this actor knows.
    fn apply_observed(&mut self, message: OrgMessage) {
        let _span =
            tracing::info_span!("observed", org_id = %self.org_id, sequence = message.sequence)
                .entered();
        for action in &message.actions {
            let event = self.apply_durable(action);
            self.remember(event);
            if let State::Ready { ahead, .. } = &mut self.state {
                ahead.fold(action);
            }
        }
        self.log_seq = message.sequence;
    }
}
