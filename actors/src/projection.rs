//! The ClickHouse projection of the many-node mode: the audit log, fed from
//! the stream.
//!
//! Every node runs one; they share one durable consumer, so each message is
//! handed to one of them. A batch is what arrives within a second, up to
//! `batch_max_rows` messages: one INSERT a second at most under load, large
//! ones (ClickHouse's own guidance), and messages are acknowledged only after
//! their INSERT. A crash between the two re-delivers them; the rows they
//! insert again have the same ids, which `ReplacingMergeTree` and every read
//! collapse. A ClickHouse outage fails no webhook: the projection retries
//! and lags, and catches up once ClickHouse is back.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::metrics::{Metrics, StoreOperation};
use crate::model::now_ms;
use crate::store::jetstream::decode;
use crate::store::{ClickHouseStore, JetStreamStore};

/// The durable consumer's name, shared by every node.
const CONSUMER: &str = "clickhouse_projection";
/// How long a batch gathers messages before it is inserted.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Unacknowledged messages are handed to another node after this.
const ACK_WAIT: Duration = Duration::from_secs(60);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Projection {
    pub stream: JetStreamStore,
    pub clickhouse: ClickHouseStore,
    pub batch_max_rows: usize,
    pub metrics: Metrics,
}

impl Projection {
    /// Projects until `stop` turns true; the batch in hand is inserted and
    /// acknowledged first.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut retry = RETRY_MIN;
        while !*stop.borrow() {
            match self.project_batches(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "ClickHouse projection paused; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn project_batches(&self, stop: &mut watch::Receiver<bool>) -> Result<(), String> {
        // Here rather than at start: a node starts and takes webhooks while
        // ClickHouse is down.
        self.clickhouse
            .migrate()
            .await
            .map_err(|e| format!("ClickHouse table: {e}"))?;
        let stream = self
            .stream
            .context()
            .get_stream_no_info(self.stream.stream_name())
            .await
            .map_err(|e| format!("stream: {e}"))?;
        let config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            filter_subject: self.stream.all_orgs_subject(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: (self.batch_max_rows * 4) as i64,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(CONSUMER, config)
            .await
            .map_err(|e| format!("consumer: {e}"))?;
        loop {
            let batch = consumer
                .batch()
                .max_messages(self.batch_max_rows)
                .expires(BATCH_WAIT)
                .messages();
            let mut batch = tokio::select! {
                batch = batch => batch.map_err(|e| format!("fetch: {e}"))?,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            };
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| format!("fetch: {e}"))?);
            }
            if messages.is_empty() {
                self.metrics.projection_lag_messages.set(0);
                continue;
            }
            let mut rows = Vec::new();
            let mut newest = None;
            for message in &messages {
                let Ok(info) = message.info() else { continue };
                newest = Some((info.published, info.pending));
                let org = self.stream.org_of_subject(message.subject.as_str());
                match org.and_then(|org| decode(org, info.stream_sequence, &message.payload)) {
                    Some(org_message) => rows.extend(org_message.actions),
                    None => tracing::error!(
                        sequence = info.stream_sequence,
                        "stream message is not an action record; not projected"
                    ),
                }
            }
            let row_count = rows.len();
            self.insert(rows, stop).await?;
            for message in &messages {
                if let Err(e) = message.ack().await {
                    // Not acknowledged: it comes again, and its rows collapse.
                    tracing::debug!(error = %e, "projection ack failed");
                }
            }
            self.metrics.projection_rows.inc_by(row_count as u64);
            if let Some((published, pending)) = newest {
                let age_ms = now_ms() - (published.unix_timestamp_nanos() / 1_000_000) as i64;
                self.metrics
                    .projection_lag_seconds
                    .set(age_ms.max(0) as f64 / 1000.0);
                self.metrics.projection_lag_messages.set(pending as i64);
            }
            tracing::debug!(
                messages = messages.len(),
                rows = row_count,
                "projected into ClickHouse"
            );
        }
    }

    /// Inserts until it succeeds: ClickHouse being down only delays the
    /// audit log. Gives up (the messages come again) only when stopping.
    async fn insert(
        &self,
        rows: Vec<crate::model::Action>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut retry = RETRY_MIN;
        loop {
            match self.clickhouse.insert_batch(rows.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.metrics.store_error(StoreOperation::Write, e.kind());
                    tracing::warn!(error = %e, rows = rows.len(), "projection INSERT failed; retrying");
                }
            }
            if *stop.borrow() {
                return Err("stopping with a batch not inserted".into());
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }
}
