//! The JetStream backend: the action log of many nodes.
//!
//! One stream holds every org's actions; org O's are messages on
//! `<prefix>.org.O`, each carrying one or more actions (a busy org's pending
//! actions go in one message, so it still group-commits). An org actor
//! publishes with `Nats-Expected-Last-Subject-Sequence` set to the stream
//! sequence of the org's last message it knows: JetStream refuses the write
//! of a node whose view is stale, inside the replicated log, whatever the
//! timing. That check, not a lease, is what keeps one org's `seq`s unique
//! across nodes.
//!
//! Each message also records the subject sequence it was published after
//! (`prev`), so a reader that follows the whole stream can tell whether a
//! message is the direct successor of what it knows or whether it missed one.
//!
//! Beside the stream: a KV bucket of PaymentIntent owners (so a refund
//! without metadata reaching any node finds its org), and one of leases
//! (reconciliation with Stripe runs on one node at a time, to save work).

mod append;
mod record;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

pub use self::append::AppendError;
pub use self::record::{decode, encode, OrgMessage};
use super::{PaymentIntentOwner, StoreError};
use crate::model::Action;
use crate::secret::Secret;

#[derive(Clone, Debug)]
pub struct JetStreamSettings {
    pub servers: Vec<String>,
    pub stream: String,
    pub subject_prefix: String,
    pub replicas: usize,
    pub user: String,
    pub password: Secret,
    pub credentials_file: String,
    /// Upper bound on every request, a publish's ack included.
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct JetStreamStore {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: String,
    subject_prefix: String,
    replicas: usize,
    timeout: Duration,
    owners: kv::Store,
}

/// How long start-up waits for JetStream to create the stream and buckets.
const SETUP_WAIT: Duration = Duration::from_secs(30);

fn unavailable(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::unavailable_from(format_args!("JetStream {what}"), e)
}

impl JetStreamStore {
    /// Connects (the first connection must succeed within `timeout`; NATS
    /// reconnects by itself after that), then creates the stream and the
    /// owners bucket when missing.
    pub async fn connect(settings: JetStreamSettings) -> Result<Self, StoreError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("entitlements")
            .connection_timeout(settings.timeout)
            .request_timeout(Some(settings.timeout));
        if !settings.user.is_empty() {
            options = options
                .user_and_password(settings.user.clone(), settings.password.expose().to_owned());
        }
        if !settings.credentials_file.is_empty() {
            options = options
                .credentials_file(&settings.credentials_file)
                .await
                .map_err(|e| unavailable("credentials file", e))?;
        }
        let servers: Vec<async_nats::ServerAddr> = settings
            .servers
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| unavailable("server address", e))?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(settings.timeout)
            .build(client.clone());
        let replicas = settings.replicas.max(1);
        // A cluster that is electing its meta leader (just started, or a
        // server just restarted) times such requests out for a few seconds:
        // start-up waits for it, for a bounded time.
        let deadline = std::time::Instant::now() + SETUP_WAIT;
        loop {
            match Self::set_up(&client, &context, &settings, replicas).await {
                Ok(store) => return Ok(store),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "JetStream not ready; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates (or updates) the owners bucket and the stream.
    async fn set_up(
        client: &async_nats::Client,
        context: &jetstream::Context,
        settings: &JetStreamSettings,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let owners = context
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}_intent_owners", settings.stream),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("owners bucket", e))?;
        let store = Self {
            client: client.clone(),
            context: context.clone(),
            stream: settings.stream.clone(),
            subject_prefix: settings.subject_prefix.clone(),
            replicas,
            timeout: settings.timeout,
            owners,
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    pub fn org_subject(&self, org_id: &str) -> String {
        format!("{}.org.{org_id}", self.subject_prefix)
    }

    /// The subjects of every org: what a follower of all orgs filters on.
    pub fn all_orgs_subject(&self) -> String {
        format!("{}.org.>", self.subject_prefix)
    }

    /// The org a subject of ours names.
    pub fn org_of_subject<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.subject_prefix.as_str())?
            .strip_prefix(".org.")
            .filter(|org| !org.is_empty() && !org.contains('.'))
    }

    fn leases_bucket(&self) -> String {
        format!("{}_leases", self.stream)
    }

    /// Creates the stream when missing, and brings its config to what this
    /// node expects when it differs.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.all_orgs_subject()],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            // The stream is the truth: nothing ages out of it.
            max_age: Duration::ZERO,
            retention: stream::RetentionPolicy::Limits,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.context
            .create_or_update_stream(config)
            .await
            .map_err(|e| unavailable("create stream", e))?;
        Ok(())
    }

    /// The bucket of leases whose entries expire `ttl` after their last write.
    pub async fn leases(&self, ttl: Duration) -> Result<kv::Store, StoreError> {
        self.context
            .create_or_update_key_value(kv::Config {
                bucket: self.leases_bucket(),
                history: 1,
                max_age: ttl,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("leases bucket", e))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::unavailable("not connected to NATS"));
        }
        self.context
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| unavailable("stream", e))?
            .get_info()
            .await
            .map_err(|e| unavailable("stream info", e))?;
        Ok(())
    }

    async fn stream(&self) -> Result<stream::Stream<()>, StoreError> {
        self.context
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| unavailable("stream", e))
    }

    /// The org's messages after stream sequence `after`, oldest first, read
    /// from the stream's leader (so a write just acknowledged is seen).
    pub async fn org_messages_after(
        &self,
        org_id: &str,
        after: u64,
    ) -> Result<Vec<OrgMessage>, StoreError> {
        let stream = self.stream().await?;
        let subject = self.org_subject(org_id);
        let mut messages = Vec::new();
        let mut next = after + 1;
        loop {
            let read = stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let raw = match read {
                Ok(raw) => raw,
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(unavailable("read", e)),
            };
            next = raw.sequence + 1;
            match decode(org_id, raw.sequence, &raw.payload) {
                Some(message) => messages.push(message),
                None => {
                    return Err(StoreError::Corrupt {
                        org_id: org_id.to_owned(),
                        row: format!("stream message {}", raw.sequence),
                        message: "not an action record".into(),
                        source: None,
                    })
                }
            }
        }
        Ok(messages)
    }

    /// Every action of one org, oldest first.
    async fn org_actions(&self, org_id: &str) -> Result<Vec<Action>, StoreError> {
        let messages = self.org_messages_after(org_id, 0).await?;
        Ok(messages.into_iter().flat_map(|m| m.actions).collect())
    }

    /// Every action of each org, oldest first.
    pub async fn actions_of_orgs(
        &self,
        org_ids: &[String],
    ) -> Result<HashMap<String, Vec<Action>>, StoreError> {
        let mut orgs = HashMap::with_capacity(org_ids.len());
        for org_id in org_ids {
            orgs.insert(org_id.clone(), self.org_actions(org_id).await?);
        }
        Ok(orgs)
    }

    pub async fn recent_actions(
        &self,
        org_id: &str,
        limit: u32,
    ) -> Result<Vec<Action>, StoreError> {
        let mut actions = self.org_actions(org_id).await?;
        actions.reverse();
        actions.truncate(limit as usize);
        Ok(actions)
    }

    /// When the stream's newest message was written (Unix ms).
    pub async fn newest_event_action_ms(&self) -> Result<Option<i64>, StoreError> {
        let info = self
            .stream()
            .await?
            .get_info()
            .await
            .map_err(|e| unavailable("stream info", e))?;
        if info.state.messages == 0 {
            return Ok(None);
        }
        Ok(Some(
            (info.state.last_timestamp.unix_timestamp_nanos() / 1_000_000) as i64,
        ))
    }

    pub async fn owners_of_intents(
        &self,
        payment_intent_ids: &[String],
    ) -> Result<HashMap<String, PaymentIntentOwner>, StoreError> {
        let mut owners = HashMap::new();
        for id in payment_intent_ids {
            let Some(value) = self
                .owners
                .get(id.as_str())
                .await
                .map_err(|e| unavailable("owner lookup", e))?
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&value);
            if let Some((org_id, sku)) = text.split_once('\n') {
                owners.insert(
                    id.clone(),
                    PaymentIntentOwner {
                        org_id: org_id.to_owned(),
                        sku: sku.to_owned(),
                    },
                );
            }
        }
        Ok(owners)
    }
}
