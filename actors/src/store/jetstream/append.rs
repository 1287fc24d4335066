//! Writing the org log: one append per batch of an org's actions, refused
//! by JetStream when another node wrote the org first.

use async_nats::jetstream;

use super::{encode, JetStreamStore};
use crate::model::{Action, ActionKind, ActionStatus};
use crate::store::StoreError;

/// Why an append did not land.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the org first: the caller's view is stale.
    #[error("another node wrote this org first (expected last sequence {expected})")]
    Stale { expected: u64 },
    /// NATS did not take or acknowledge the write; it may or may not have
    /// landed.
    #[error("the stream did not acknowledge the write: {0}")]
    Unavailable(#[source] StoreError),
}

/// Whether JetStream refused a publish because the subject's last message
/// was not the expected one. An R1 stream answers error code 10071 (with
/// the actual sequence); a clustered one 10164, "wrong last sequence"
/// without it, which async-nats 0.51 does not map to `WrongLastSequence`.
fn refused_by_sequence_check(e: &jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| {
            js.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || js.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}

impl JetStreamStore {
    /// Appends `actions` to the org's subject if its last message is still
    /// `expected` (0: none yet). Answers the new message's stream sequence.
    ///
    /// A duplicate ack (the msg-id was seen in the duplicate window) is
    /// answered as `Stale`: this call did not write, whoever did, so the
    /// caller reads the org again rather than trusting its own batch.
    pub async fn append(
        &self,
        org_id: &str,
        expected: u64,
        message_id: &str,
        actions: &[Action],
    ) -> Result<u64, AppendError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(encode(expected, actions))
            .message_id(message_id)
            .expected_last_subject_sequence(expected);
        let ack = async {
            self.context
                .send_publish(self.org_subject(org_id), publish)
                .await?
                .await
        };
        let write = tokio::time::timeout(self.timeout, ack);
        let owners = self.record_owners(org_id, actions);
        let (written, ()) = futures_util::future::join(write, owners).await;
        match written {
            Ok(Ok(ack)) if ack.duplicate => Err(AppendError::Stale { expected }),
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) if refused_by_sequence_check(&e) => Err(AppendError::Stale { expected }),
            Ok(Err(e)) => Err(AppendError::Unavailable(StoreError::unavailable_from(
                "JetStream publish",
                e,
            ))),
            Err(elapsed) => Err(AppendError::Unavailable(StoreError::unavailable_from(
                format_args!("no ack within {:?}", self.timeout),
                elapsed,
            ))),
        }
    }

    /// Writes the owners of the delivered payments in `actions` to the
    /// shared bucket, beside the append. Not part of what a 200 promises: a
    /// missing owner is still found through Stripe.
    async fn record_owners(&self, org_id: &str, actions: &[Action]) {
        let paid = actions
            .iter()
            .filter(|a| a.kind == ActionKind::Payment && a.status == ActionStatus::Delivered);
        for action in paid {
            let owner = format!("{org_id}\n{}", action.sku);
            if let Err(e) = self.owners.put(&action.external_id, owner.into()).await {
                tracing::warn!(payment_intent_id = %action.external_id, error = %e,
                    "PaymentIntent owner not shared");
            }
        }
    }
}
