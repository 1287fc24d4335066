//! The service's metrics, one registry per application (so several apps in
//! one process, as in tests, do not mix their numbers). Actors record into
//! it; the HTTP side renders it at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::StoreErrorKind;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WebhookOutcome {
    Recorded,
    Duplicate,
    Ignored,
    InvalidSignature,
    InvalidPayload,
    TooLarge,
    Overloaded,
    Unavailable,
    /// The body did not arrive within `server.body_timeout_secs`.
    RequestTimeout,
    /// Stripe could not be asked whose PaymentIntent an event is about.
    StripeError,
    /// The event's action conflicts with a stored one of its org.
    Conflict,
    /// A stored row of the event's org cannot be read.
    Corrupt,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub outcome: WebhookOutcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    Duplicate,
    Ignored,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub outcome: EventOutcome,
}

/// What a failed store operation was doing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StoreOperation {
    Read,
    Write,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub operation: StoreOperation,
    pub kind: StoreErrorKind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Mailbox {
    Org,
    Stripe,
    Persistence,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailboxLabels {
    pub mailbox: Mailbox,
}

/// Label values in Prometheus' snake_case rather than the variant names.
macro_rules! snake_case_label {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self { $(Self::$variant => $name),* })
            }
        }
    };
}

snake_case_label!(WebhookOutcome {
    Recorded => "recorded",
    Duplicate => "duplicate",
    Ignored => "ignored",
    InvalidSignature => "invalid_signature",
    InvalidPayload => "invalid_payload",
    TooLarge => "too_large",
    Overloaded => "overloaded",
    Unavailable => "unavailable",
    StripeError => "stripe_error",
    RequestTimeout => "request_timeout",
    Conflict => "conflict",
    Corrupt => "corrupt",
});
snake_case_label!(StoreOperation { Read => "read", Write => "write" });
snake_case_label!(StoreErrorKind {
    Unavailable => "unavailable",
    Conflict => "conflict",
    Corrupt => "corrupt",
});
snake_case_label!(EventOutcome { Applied => "applied", Duplicate => "duplicate", Ignored => "ignored" });
snake_case_label!(Mailbox { Org => "org", Stripe => "stripe", Persistence => "persistence" });

#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    registry: Registry,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub events: Family<EventLabels, Counter>,
    pub batch_rows: Histogram,
    pub flush_seconds: Histogram,
    pub org_load_orgs: Histogram,
    pub intent_lookups: Histogram,
    pub persisted_batches: Counter,
    pub persisted_rows: Counter,
    /// Every failed store operation; `store_errors_by_kind` splits them.
    pub store_errors: Counter,
    store_errors_by_kind: Family<StoreErrorLabels, Counter>,
    pub stream_connections: Gauge,
    pub stream_dropped_slow: Counter,
    pub sse_hub_queue: Gauge,
    pub live_org_actors: Gauge,
    pub mailbox_full: Family<MailboxLabels, Counter>,
    pub reconciled_events: Counter,
    pub catalog_pending_products: Gauge,
    pub jetstream_publish_seconds: Histogram,
    pub jetstream_conflicts: Counter,
    pub jetstream_retries: Counter,
    pub follower_messages: Counter,
    pub projection_rows: Counter,
    pub projection_lag_messages: Gauge,
    pub projection_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("entitlements");
        let inner = Inner {
            webhooks: Family::default(),
            events: Family::default(),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            flush_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            org_load_orgs: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            intent_lookups: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            persisted_batches: Counter::default(),
            persisted_rows: Counter::default(),
            store_errors: Counter::default(),
            store_errors_by_kind: Family::default(),
            stream_connections: Gauge::default(),
            stream_dropped_slow: Counter::default(),
            sse_hub_queue: Gauge::default(),
            live_org_actors: Gauge::default(),
            mailbox_full: Family::default(),
            reconciled_events: Counter::default(),
            catalog_pending_products: Gauge::default(),
            jetstream_publish_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            jetstream_conflicts: Counter::default(),
            jetstream_retries: Counter::default(),
            follower_messages: Counter::default(),
            projection_rows: Counter::default(),
            projection_lag_messages: Gauge::default(),
            projection_lag_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "webhooks",
            "Webhook requests by outcome",
            inner.webhooks.clone(),
        );
        registry.register(
            "events",
            "Stripe events by what became of them",
            inner.events.clone(),
        );
        registry.register(
            "persist_batch_rows",
            "Rows per action batch written",
            inner.batch_rows.clone(),
        );
        registry.register(
            "persist_flush_seconds",
            "Time to write one action batch",
            inner.flush_seconds.clone(),
        );
        registry.register(
            "org_load_orgs",
            "Orgs whose history one store read loaded (org actors starting)",
            inner.org_load_orgs.clone(),
        );
        registry.register(
            "intent_lookups",
            "PaymentIntents one store read looked up the org of (refunds and disputes without metadata)",
            inner.intent_lookups.clone(),
        );
        registry.register(
            "persist_batches",
            "Action batches written",
            inner.persisted_batches.clone(),
        );
        registry.register(
            "persist_rows",
            "Action rows written",
            inner.persisted_rows.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed",
            inner.store_errors.clone(),
        );
        registry.register(
            "store_errors_by_kind",
            "Store reads and writes of org actions that failed, by operation and kind \
             (a conflict or a corrupt row does not pass by itself)",
            inner.store_errors_by_kind.clone(),
        );
        registry.register(
            "stream_connections",
            "Open stream connections",
            inner.stream_connections.clone(),
        );
        registry.register(
            "stream_dropped_slow",
            "Stream connections dropped because their queue was full",
            inner.stream_dropped_slow.clone(),
        );
        registry.register(
            "sse_hub_queue",
            "Changes handed to the SseHub and not yet fanned out",
            inner.sse_hub_queue.clone(),
        );
        registry.register(
            "live_org_actors",
            "Org actors alive now",
            inner.live_org_actors.clone(),
        );
        registry.register(
            "mailbox_full",
            "Requests refused because a mailbox was full",
            inner.mailbox_full.clone(),
        );
        registry.register(
            "reconciled_events",
            "Events applied by reconciliation with the Stripe Events API",
            inner.reconciled_events.clone(),
        );
        registry.register(
            "stripe_catalog_pending_products",
            "Configured products whose Product or Price is not yet in place in Stripe",
            inner.catalog_pending_products.clone(),
        );
        registry.register(
            "jetstream_publish_seconds",
            "Time from an org's append to JetStream's ack",
            inner.jetstream_publish_seconds.clone(),
        );
        registry.register(
            "jetstream_conflicts",
            "Appends JetStream refused because another node wrote the org first",
            inner.jetstream_conflicts.clone(),
        );
        registry.register(
            "jetstream_retries",
            "Requests decided again on a fresh read of their org after a refused append",
            inner.jetstream_retries.clone(),
        );
        registry.register(
            "follower_messages",
            "Stream messages this node's follower has read",
            inner.follower_messages.clone(),
        );
        registry.register(
            "projection_rows",
            "Actions the ClickHouse projection inserted",
            inner.projection_rows.clone(),
        );
        registry.register(
            "projection_lag_messages",
            "Stream messages not yet projected into ClickHouse",
            inner.projection_lag_messages.clone(),
        );
        registry.register(
            "projection_lag_seconds",
            "Age of the newest message the ClickHouse projection inserted, when it inserted it",
            inner.projection_lag_seconds.clone(),
        );
        Self(Arc::new(Inner { registry, ..inner }))
    }

    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.0
            .webhooks
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    pub fn event(&self, outcome: EventOutcome) {
        self.0.events.get_or_create(&EventLabels { outcome }).inc();
    }

    /// Counts a failed store read or write, in both store metrics.
    pub fn store_error(&self, operation: StoreOperation, kind: StoreErrorKind) {
        self.0.store_errors.inc();
        self.0
            .store_errors_by_kind
            .get_or_create(&StoreErrorLabels { operation, kind })
            .inc();
    }

    pub fn mailbox_full(&self, mailbox: Mailbox) {
        self.0
            .mailbox_full
            .get_or_create(&MailboxLabels { mailbox })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl std::ops::Deref for Metrics {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_names_and_values() {
        let metrics = Metrics::new();
        metrics.webhook(WebhookOutcome::Recorded);
        metrics.persisted_rows.inc_by(3);
        metrics.live_org_actors.inc();
        metrics.store_error(StoreOperation::Read, StoreErrorKind::Corrupt);
        let text = metrics.render();
        assert!(
            text.contains("entitlements_webhooks_total{outcome=\"recorded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE entitlements_persist_rows counter"),
            "{text}"
        );
        assert!(text.contains("entitlements_persist_rows_total 3"), "{text}");
        assert!(text.contains("entitlements_live_org_actors 1"), "{text}");
        assert!(text.contains("entitlements_store_errors_total 1"), "{text}");
        assert!(
            text.contains(
                "entitlements_store_errors_by_kind_total{operation=\"read\",kind=\"corrupt\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
