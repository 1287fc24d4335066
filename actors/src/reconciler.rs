//! Reconciler: catches up on Stripe events that webhooks never delivered.
//!
//! Stripe stops retrying a webhook after a few days and never resends events
//! created while an endpoint was disabled. So at start and every interval
//! this actor lists the event types the service acts on from the Events API
//! and feeds each through the StripeActor, the same exactly-once path as a
//! webhook: events already applied are duplicates and change nothing.
//!
//! Where to start: after a successful pass, from when that pass began
//! (minus a margin for events created while it ran). After a restart, from
//! the newest event-caused action in the store minus one interval and the
//! margin, which reaches back past the last pass before the stop. With an
//! empty store, from Stripe's three-day retry window. A failed pass changes
//! nothing and is tried again at the next interval; it never delays
//! start-up. With many nodes, a lease lets one node at a time run passes;
//! the others skip theirs.

use std::time::Duration;

use actix::prelude::*;

use crate::ask::{AskError, Bounded};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::org::Outcome;
use crate::store::ActionStore;
use crate::stripe::{HandleEvent, StripeActor, StripeApi};
use crate::stripe_event;
use tracing::Instrument;

/// The event types the service acts on.
const EVENT_TYPES: [&str; 4] = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
];
/// Events created while a pass runs, or with a clock a little off, are
/// listed again by the next pass.
const MARGIN_SECS: i64 = 60;
const FIRST_RUN_LOOKBACK_SECS: i64 = 3 * 24 * 3600;
/// Bounds one pass: 100 pages of 100 events per type.
const MAX_PAGES: usize = 100;

pub struct Reconciler {
    api: StripeApi,
    stripe: Bounded<StripeActor>,
    store: ActionStore,
    interval: Duration,
    metrics: Metrics,
    /// Unix seconds the next pass lists from; `None` until known.
    since: Option<i64>,
    running: bool,
    /// Many nodes: a pass runs only while this node holds the lease.
    lease: Option<std::sync::Arc<Lease>>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub listed: u64,
    pub applied: u64,
}

impl Reconciler {
    pub fn new(
        api: StripeApi,
        stripe: Bounded<StripeActor>,
        store: ActionStore,
        interval: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            api,
            stripe,
            store,
            interval,
            metrics,
            since: None,
            running: false,
            lease: None,
        }
    }

    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(std::sync::Arc::new(lease));
        self
    }

    fn run_pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let (api, stripe, store) = (self.api.clone(), self.stripe.clone(), self.store.clone());
        let (known_since, interval) = (self.since, self.interval);
        let lease = self.lease.clone();
        let pass = async move {
            if let Some(lease) = lease {
                if !lease.hold().await {
                    tracing::debug!("another node holds the reconciliation lease; pass skipped");
                    return Ok(None);
                }
            }
            let started = now_ms() / 1000;
            let since = match known_since {
                Some(since) => since,
                None => match store.newest_event_action_ms().await {
                    Ok(Some(newest_ms)) => {
                        newest_ms / 1000 - interval.as_secs() as i64 - MARGIN_SECS
                    }
                    Ok(None) => started - FIRST_RUN_LOOKBACK_SECS,
                    Err(e) => return Err(format!("cannot read where to start: {e}")),
                },
            };
            let report = reconcile_since(&api, &stripe, since).await?;
            Ok(Some((report, started - MARGIN_SECS)))
        };
        ctx.spawn(pass.into_actor(self).map(|result, act, _| {
            act.running = false;
            match result {
                Ok(None) => {}
                Ok(Some((report, next_since))) => {
                    act.since = Some(next_since);
                    act.metrics.reconciled_events.inc_by(report.applied);
                    if report.applied > 0 {
                        tracing::info!(listed = report.listed, applied = report.applied, "reconciled missed Stripe events");
                    } else {
                        tracing::debug!(listed = report.listed, "reconciliation found nothing missed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciliation with Stripe failed; trying again later"),
            }
        }));
    }
}

async fn reconcile_since(
    api: &StripeApi,
    stripe: &Bounded<StripeActor>,
    since: i64,
) -> Result<PassReport, String> {
    let mut report = PassReport::default();
    for event_type in EVENT_TYPES {
        let mut starting_after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = api
                .list_events(event_type, since, starting_after.as_deref())
                .await
                .map_err(|e| format!("listing {event_type}: {e}"))?;
            for raw in &page.events {
                let event = match stripe_event::parse(raw) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "listed event is not a usable Stripe event; skipped");
                        continue;
                    }
                };
                report.listed += 1;
                let event_id = event.id.clone();
                let span = tracing::info_span!(
                    "reconciled_event",
                    event_id = %event.id,
                    event_type = %event.event_type,
                    org_id = tracing::field::Empty,
                );
                match stripe.ask(HandleEvent(event)).instrument(span).await {
                    Ok(Ok(Outcome::Recorded)) => {
                        report.applied += 1;
                        tracing::info!(%event_id, "missed event applied by reconciliation");
                    }
                    Ok(Ok(Outcome::Duplicate | Outcome::Ignored)) => {}
                    Ok(Err(e)) => return Err(format!("applying {event_id}: {e}")),
                    Err(AskError::Full(_)) => return Err("the Stripe actor is busy".into()),
                    Err(AskError::Stopped(_) | AskError::Dropped) => {
                        return Err("the service is stopping".into())
                    }
                }
            }
            match (page.has_more, page.last_id) {
                (true, Some(id)) => starting_after = Some(id),
                _ => break,
            }
        }
    }
    Ok(report)
}

impl Actor for Reconciler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.run_pass(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.run_pass(ctx));
    }
}
