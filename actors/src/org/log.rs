//! The JetStream backend: the org actor appends its changes to the org's
//! subject itself, each append expecting the org's last message to be the
//! one the actor knows (the check inside the replicated log that keeps two
//! nodes from both writing one `seq`), and brings its ledger up to the
//! messages other nodes wrote.

use std::time::Instant;

use actix::prelude::*;

use crate::model::{now_ms, Action, OrgActorId};
use crate::store::jetstream::{AppendError, OrgMessage};

use super::actor::{OrgActor, State};
use super::messages::{Observe, OrgError};

impl OrgActor {
    /// Appends every change decided since the last append, in one message,
    /// unless an append is still in flight.
    pub(super) fn append_unsent(&mut self, ctx: &mut Context<Self>) {
        if self.jetstream().is_none() {
            return;
        }
        let Some(actions) = self.pipeline.next_append() else {
            return;
        };
        // Cloned only for an append that goes out: this runs on every commit.
        let js = self.jetstream().cloned().expect("checked above");
        // Names the command (its events, or this actor and node), never the
        // org alone: two nodes racing for one seq must both reach the
        // sequence check, not be told "duplicate".
        let message_id = message_id(&actions, self.id, actions[0].seq);
        let (org_id, expected) = (self.org_id.clone(), self.log_seq);
        let metrics = self.deps.metrics.clone();
        let append = async move {
            let started = Instant::now();
            let result = js.append(&org_id, expected, &message_id, &actions).await;
            metrics
                .jetstream_publish_seconds
                .observe(started.elapsed().as_secs_f64());
            result
        };
        ctx.spawn(append.into_actor(self).map(|result, act, ctx| {
            let result = match result {
                Ok(sequence) => {
                    act.log_seq = sequence;
                    Ok(())
                }
                Err(AppendError::Stale { .. }) => {
                    act.deps.metrics.jetstream_conflicts.inc();
                    Err(OrgError::Stale)
                }
                Err(AppendError::Unavailable(e)) => Err(OrgError::NotRecorded(e)),
            };
            act.pipeline.append_back(result);
            act.settle(ctx);
            act.append_unsent(ctx);
            if act.pipeline.is_idle() {
                if let Some(message) = act.deferred.take() {
                    act.observe(message, ctx);
                }
            }
        }));
    }

    /// Brings the ledger up to a message of the org's log some node wrote.
    pub(super) fn observe(&mut self, message: OrgMessage, ctx: &mut Context<Self>) {
        if message.sequence <= self.log_seq || !matches!(self.state, State::Ready { .. }) {
            return;
        }
        // Changes of our own in flight were decided without this message.
        // If it came after them it is looked at once they are back; if
        // before, their append is refused and the org read again.
        if !self.pipeline.is_idle() || self.pipeline.refusal().is_some() {
            self.deferred = Some(message);
            return;
        }
        if message.prev == self.log_seq {
            return self.apply_observed(message);
        }
        // A message in between never reached us: read what we missed.
        // ctx.wait: nothing is decided on the ledger while it catches up.
        let catch_up = self.read_newer();
        ctx.wait(catch_up.map(|result, act, ctx| {
            if let Err(e) = result {
                tracing::warn!(org_id = %act.org_id, error = %e,
                    "could not read the org's newer messages; it reloads");
                ctx.stop();
            }
        }));
    }

    /// Reads and applies the org's messages after the last one known here
    /// (run it inside `ctx.wait`, so nothing is decided meanwhile).
    pub(super) fn read_newer(
        &self,
    ) -> impl ActorFuture<Self, Output = Result<(), crate::store::StoreError>> {
        let js = self
            .jetstream()
            .cloned()
            .expect("only on the JetStream backend");
        let (org_id, after) = (self.org_id.clone(), self.log_seq);
        async move { js.org_messages_after(&org_id, after).await }
            .into_actor(self)
            .map(|result, act, _| {
                for message in result? {
                    if message.prev == act.log_seq {
                        act.apply_observed(message);
                    }
                }
                Ok(())
            })
    }

    /// Applies a message another node appended, the direct successor of
    /// what this actor knows.
    fn apply_observed(&mut self, message: OrgMessage) {
        let _span =
            tracing::info_span!("observed", org_id = %self.org_id, sequence = message.sequence)
                .entered();
        // Only with nothing of ours in flight (see `observe`): the ledger
        // ahead holds only durable actions.
        for action in message.actions {
            let State::Ready { ahead, .. } = &mut self.state else {
                unreachable!("observed only on a ready ledger")
            };
            ahead.fold(&action);
            let standing = ahead.standing();
            self.apply_durable(action, standing);
        }
        self.log_seq = message.sequence;
    }
}

impl Handler<Observe> for OrgActor {
    type Result = ();

    fn handle(&mut self, Observe(message): Observe, ctx: &mut Context<Self>) {
        self.observe(message, ctx);
    }
}

/// The `Nats-Msg-Id` of an append: the event ids of its actions (a
/// simulated payment has none; this actor's id and the append's first seq
/// name it).
fn message_id(actions: &[Action], actor: OrgActorId, first_seq: u64) -> String {
    use std::fmt::Write;
    let mut id = String::new();
    for action in actions {
        match &action.event_id {
            Some(event_id) => id.push_str(event_id),
            None => {
                let _ = write!(id, "request-{}-{actor:?}-{first_seq}", node_nonce());
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
