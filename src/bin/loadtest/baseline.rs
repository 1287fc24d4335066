//! The baselines: as many requests as the load sent, with its client and
//! concurrency, to the bare webhook handler (`src/bin/bare_webhook.rs`), and
//! to the same handler as the durable floor (`--durable-store`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use testkit::procfs::{CpuSample, CpuSpent};
use testkit::signing::sign_now;

use crate::http::RawClient;
use crate::workers::run_jobs;
use crate::{new_histogram, Ctx, WEBHOOK_PATH};

pub struct BaselineReport {
    pub name: &'static str,
    pub requests: u64,
    pub secs: f64,
    pub latency: Histogram<u64>,
    /// The baseline server's CPU time over its run (`--baseline-pid`).
    pub cpu: Option<CpuSpent>,
}

/// `total` of the load's own signed webhooks (`bodies`, in turn) to the
/// handler at `url` (its process `pid`), with the load's client and
/// concurrency; `None` without a `url`.
pub async fn run_baseline(
    ctx: &Arc<Ctx>,
    name: &'static str,
    url: Option<&str>,
    pid: Option<u32>,
    total: usize,
    bodies: Arc<[Bytes]>,
) -> anyhow::Result<Option<BaselineReport>> {
    let Some(url) = url else {
        return Ok(None);
    };
    let timeout = Duration::from_secs(ctx.args.timeout_secs);
    let bare = RawClient::new(url.trim_end_matches('/'), timeout).await?;
    let latency = Arc::new(Mutex::new(new_histogram()));
    let target = Arc::new((bare, bodies));
    let cpu_before = pid.and_then(CpuSample::take);
    let started = Instant::now();
    let send = {
        let (ctx, latency) = (ctx.clone(), latency.clone());
        move |i: usize| {
            let (ctx, latency, target) = (ctx.clone(), latency.clone(), target.clone());
            async move {
                let (bare, bodies) = &*target;
                let body = &bodies[i % bodies.len()];
                let signature = sign_now(body, &ctx.webhook_secret);
                let permit = ctx.inflight.acquire().await.expect("never closed");
                let start = Instant::now();
                let res = bare
                    .post_json(WEBHOOK_PATH, &[("Stripe-Signature", &signature)], body)
                    .await
                    .map(|r| r.status);
                let elapsed = start.elapsed();
                drop(permit);
                latency
                    .lock()
                    .unwrap()
                    .saturating_record(elapsed.as_micros() as u64);
                match res {
                    Ok(200) => {}
                    Ok(s) => ctx.violation("baseline", 1, || format!("{name} answered {s}")),
                    Err(e) => ctx.violation("baseline", 1, || format!("{name}: {e}")),
                }
            }
        }
    };
    let _ = run_jobs(ctx.args.concurrency, total, send).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(pid.and_then(CpuSample::take))
        .map(|(before, after)| after.since(&before));
    let latency = latency.lock().unwrap().clone();
    Ok(Some(BaselineReport {
        name,
        requests: latency.len(),
        secs,
        latency,
        cpu,
    }))
}
