//! Webhook delivery as Stripe does it: each payment's events in order,
//! retried with backoff on 503, optionally paced to a rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::signing::sign_now;

use crate::script::{Chain, Event};
use crate::{Ctx, WEBHOOK_PATH};

/// With `--rate`: send n goes out at `start + n / rate`.
pub struct Pace {
    start: tokio::time::Instant,
    interval: Duration,
    sends: AtomicU64,
}

impl Pace {
    /// Sends at `rate` a second in all, from now.
    pub fn new(rate: f64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            interval: Duration::from_secs_f64(1.0 / rate),
            sends: AtomicU64::new(0),
        }
    }

    async fn next_slot(&self) {
        let n = self.sends.fetch_add(1, Ordering::Relaxed);
        let at = self.start + self.interval.mul_f64(n as f64);
        tokio::time::sleep_until(at).await;
    }
}

/// One payment's events, in order; a doubled step sends both copies at once.
pub async fn run_chain(ctx: &Ctx, chain: &Chain) {
    for step in &chain.steps {
        if step.copies == 1 {
            deliver(ctx, &step.event).await;
        } else {
            let copies = (0..step.copies).map(|_| deliver(ctx, &step.event));
            futures_util::future::join_all(copies).await;
        }
    }
}

/// Delivers one webhook like Stripe: retried with backoff on 503 (or a
/// failed connection); anything but 200 or 503 is a violation.
async fn deliver(ctx: &Ctx, event: &Event) -> bool {
    if ctx.track_send_times {
        ctx.send_times
            .lock()
            .unwrap()
            .entry(event.action_id.clone())
            .or_insert_with(Instant::now);
    }
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=ctx.args.max_attempts {
        if let Some(pace) = ctx.pace.get() {
            pace.next_slot().await;
        }
        let signature = sign_now(&event.body, &ctx.webhook_secret);
        let permit = ctx.inflight.acquire().await.expect("never closed");
        let start = Instant::now();
        let result = ctx
            .webhooks
            .post_json(
                WEBHOOK_PATH,
                &[("Stripe-Signature", &signature)],
                &event.body,
            )
            .await
            .map(|r| (r.status, r.body));
        let elapsed = start.elapsed();
        drop(permit);
        ctx.requests.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok((status, body)) => {
                ctx.latency
                    .lock()
                    .unwrap()
                    .saturating_record(elapsed.as_micros() as u64);
                match status {
                    200 => {
                        ctx.acknowledged.fetch_add(1, Ordering::SeqCst);
                        ctx.progress.inc(1);
                        return true;
                    }
                    503 => {
                        ctx.retries_503.fetch_add(1, Ordering::SeqCst);
                        let code = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "unknown".into());
                        *ctx.codes_503.lock().unwrap().entry(code).or_default() += 1;
                    }
                    other => {
                        ctx.violation("unexpected_status", 1, || {
                            format!(
                                "{} ({}) answered {other}: {}",
                                event.id,
                                event.kind,
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            )
                        });
                        return false;
                    }
                }
            }
            Err(e) => {
                ctx.transport_errors.fetch_add(1, Ordering::SeqCst);
                if attempt == ctx.args.max_attempts {
                    ctx.violation("gave_up", 1, || format!("{}: {e}", event.id));
                    return false;
                }
            }
        }
        if attempt < ctx.args.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
    ctx.violation("gave_up", 1, || {
        format!(
            "{} still answered 503 after {} attempts",
            event.id, ctx.args.max_attempts
        )
    });
    false
}
