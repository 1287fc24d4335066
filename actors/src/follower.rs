//! The stream follower: one per node in the many-node mode.
//!
//! It reads every org's messages as the stream orders them (an ordered
//! consumer: no acks, recreated by the client on a gap) and hands each to
//! the org's actor on this node, if there is one, so that live actors stay
//! current whichever node wrote (conflicting appends stay rare) and browsers
//! here see every change of their org. An actor's own appends come back too
//! and are skipped by sequence. Correctness never rests on this: an actor
//! that missed a message is refused at its next append and reads the org.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::directory::OrgDirectory;
use crate::metrics::Metrics;
use crate::org::Observe;
use crate::org_id::OrgId;
use crate::store::jetstream::decode;
use crate::store::JetStreamStore;

const RETRY_AFTER: Duration = Duration::from_secs(1);
const REOFFER_EVERY: Duration = Duration::from_millis(50);

/// Follows the stream until `stop` turns true.
pub async fn follow(
    store: JetStreamStore,
    directory: OrgDirectory,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    // Live actors loaded what was there when they started: only what comes
    // after this node started matters. After a failure, on from where the
    // last pass stopped.
    let mut deliver = DeliverPolicy::New;
    if let Ok(mut stream) = store.context().get_stream(store.stream_name()).await {
        if let Ok(info) = stream.info().await {
            // From a known point, so that a failed first consumer does not
            // skip what was written before the next one.
            deliver = DeliverPolicy::ByStartSequence {
                start_sequence: info.state.last_sequence + 1,
            };
        }
    }
    loop {
        let pass = follow_from(&store, &directory, &metrics, deliver);
        let last_seen = tokio::select! {
            last = pass => last,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        if let Some(sequence) = last_seen {
            deliver = DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_AFTER) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// One ordered consumer's life; answers the last stream sequence it saw.
async fn follow_from(
    store: &JetStreamStore,
    directory: &OrgDirectory,
    metrics: &Metrics,
    deliver_policy: DeliverPolicy,
) -> Option<u64> {
    let mut last_seen = match deliver_policy {
        DeliverPolicy::ByStartSequence { start_sequence } => Some(start_sequence - 1),
        _ => None,
    };
    let stream = match store
        .context()
        .get_stream_no_info(store.stream_name())
        .await
    {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "stream follower cannot reach the stream; retrying");
            return last_seen;
        }
    };
    let config = OrderedConfig {
        filter_subject: store.all_orgs_subject(),
        deliver_policy,
        ..Default::default()
    };
    let messages = match stream.create_consumer(config).await {
        Ok(consumer) => consumer.messages().await,
        Err(e) => {
            tracing::warn!(error = %e, "stream follower cannot create its consumer; retrying");
            return last_seen;
        }
    };
    let mut messages = match messages {
        Ok(messages) => messages,
        Err(e) => {
            tracing::warn!(error = %e, "stream follower cannot read; retrying");
            return last_seen;
        }
    };
    tracing::info!("following the stream");
    // The newest message each busy actor could not take: offered again each
    // tick (an actor that gets a later message than it knows reads what it
    // missed, so the newest is enough).
    let mut refused: HashMap<OrgId, Observe> = HashMap::new();
    let mut tick = tokio::time::interval(REOFFER_EVERY);
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = tick.tick(), if !refused.is_empty() => {
                let offers: Vec<(OrgId, Observe)> = refused.drain().collect();
                for (org_id, message) in offers {
                    if let Err(message) = directory.observe(&org_id, message) {
                        refused.insert(org_id, message);
                    }
                }
                continue;
            }
        };
        let Some(message) = message else { break };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "stream follower lost its consumer; recreating");
                return last_seen;
            }
        };
        let Ok(sequence) = message.info().map(|info| info.stream_sequence) else {
            continue;
        };
        last_seen = Some(sequence);
        metrics.follower_messages.inc();
        let Some(subject_org) = store.org_of_subject(message.subject.as_str()) else {
            continue;
        };
        let Ok(org_id) = OrgId::parse(subject_org) else {
            tracing::error!(subject = %message.subject, sequence, "stream message of no valid org id");
            continue;
        };
        match decode(&org_id, sequence, &message.payload) {
            Some(org_message) => {
                refused.remove(&org_id);
                if let Err(message) = directory.observe(&org_id, Observe(org_message)) {
                    refused.insert(org_id, message);
                }
            }
            None => tracing::error!(%org_id, sequence, "stream message is not an action record"),
        }
    }
    last_seen
}
