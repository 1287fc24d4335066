//! The baseline: as many requests as the load sent, with its client and
//! concurrency, to `GET /healthz` or to a bare webhook handler.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use testkit::procfs::process_cpu_secs;
use testkit::signing::sign_now;

use crate::workers::run_jobs;
use crate::{new_histogram, Ctx};

pub struct BaselineReport {
    pub name: &'static str,
    pub requests: u64,
    pub secs: f64,
    pub latency: Histogram<u64>,
    /// The baseline server's CPU time over its run (`--baseline-pid`).
    pub cpu_secs: Option<f64>,
}

pub enum BaselineTarget {
    Healthz {
        url: String,
    },
    /// The load's own signed webhooks, to a bare handler.
    Bare {
        url: String,
        bodies: Vec<Bytes>,
    },
}

/// `total` requests to the baseline with the load's client and concurrency.
pub async fn run_baseline(ctx: &Arc<Ctx>, total: usize, target: BaselineTarget) -> BaselineReport {
    let latency = Arc::new(Mutex::new(new_histogram()));
    let name = match target {
        BaselineTarget::Healthz { .. } => "GET /healthz (baseline)",
        BaselineTarget::Bare { .. } => "bare handler (baseline)",
    };
    let target = Arc::new(target);
    let cpu_before = ctx.args.baseline_pid.and_then(process_cpu_secs);
    let started = Instant::now();
    let send = {
        let (ctx, latency) = (ctx.clone(), latency.clone());
        move |i: usize| {
            let (ctx, latency, target) = (ctx.clone(), latency.clone(), target.clone());
            async move {
                let request = match &*target {
                    BaselineTarget::Healthz { url } => ctx.client.get(url.as_str()),
                    BaselineTarget::Bare { url, bodies } => {
                        let body = bodies[i % bodies.len()].clone();
                        ctx.client
                            .post(url.as_str())
                            .header("Stripe-Signature", sign_now(&body, &ctx.webhook_secret))
                            .header("Content-Type", "application/json")
                            .body(body)
                    }
                };
                let permit = ctx.inflight.acquire().await.expect("never closed");
                let start = Instant::now();
                let res = async {
                    let r = request.send().await?;
                    let status = r.status().as_u16();
                    r.bytes().await.map(|_| status)
                }
                .await;
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
    let cpu_secs = cpu_before
        .zip(ctx.args.baseline_pid.and_then(process_cpu_secs))
        .map(|(before, after)| after - before);
    let latency = latency.lock().unwrap().clone();
    BaselineReport {
        name,
        requests: latency.len(),
        secs,
        latency,
        cpu_secs,
    }
}
