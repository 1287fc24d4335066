//! The stream subscribers as a whole: connected before the load, each
//! waiting for its first snapshot; after it, caught up and reported on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use tokio::sync::{oneshot, watch};

use crate::script;
use crate::stream::{self, StreamConfig, Subscriber};
use crate::{new_histogram, Ctx};

pub async fn start_subscribers(
    ctx: &Arc<Ctx>,
    prefix: &str,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Subscriber>> {
    let s = ctx.args.subscribers;
    if s == 0 {
        return Ok(Vec::new());
    }
    // Streams hold their connection; no overall timeout.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .build()
        .context("building the stream client")?;
    let mut subscribers = Vec::new();
    let mut readies = Vec::new();
    for o in 0..ctx.args.orgs {
        let org = script::org_id(prefix, o);
        let config = Arc::new(StreamConfig {
            client: client.clone(),
            url: format!("{}/v1/stream?access_token={}", ctx.base, ctx.token(&org)),
            send_times: ctx.send_times.clone(),
            stop: stop.clone(),
        });
        for _ in 0..s {
            readies.push((o, org.clone(), config.clone()));
        }
    }
    // Connect C at a time, each waiting for its first snapshot.
    let deadline = Instant::now() + Duration::from_secs(120);
    for wave in readies.chunks(ctx.args.concurrency) {
        let mut waiting = Vec::new();
        for (o, org, config) in wave {
            let (tx, rx) = oneshot::channel();
            subscribers.push(stream::spawn(*o, config.clone(), tx));
            waiting.push((org, rx));
        }
        for (org, rx) in waiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx).await {
                Ok(Ok(Ok(0))) => {}
                Ok(Ok(Ok(seq))) => bail!(
                    "{org} already has actions (snapshot seq {seq}): use a fresh --org-prefix"
                ),
                Ok(Ok(Err(e))) => bail!("subscriber for {org}: {e}"),
                Ok(Err(_)) => bail!("subscriber for {org} ended before its snapshot"),
                Err(_) => bail!("stream subscribers did not all get their snapshot within 120 s"),
            }
        }
    }
    Ok(subscribers)
}

pub struct StreamReport {
    pub connections: usize,
    pub changes: u64,
    pub lost: u64,
    pub doubled: u64,
    pub reconnects: u64,
    pub retried_503: u64,
    pub latency: Histogram<u64>,
}

pub async fn finish_streams(
    ctx: &Ctx,
    subscribers: Vec<Subscriber>,
    targets: &[u64],
    stop: watch::Sender<bool>,
) -> Option<StreamReport> {
    if subscribers.is_empty() {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(ctx.args.stream_wait_secs);
    loop {
        let behind = subscribers
            .iter()
            .filter(|s| s.state.last.load(Ordering::SeqCst) < targets[s.org])
            .count();
        if behind == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let mut report = StreamReport {
        connections: subscribers.len(),
        changes: 0,
        lost: 0,
        doubled: 0,
        reconnects: 0,
        retried_503: 0,
        latency: new_histogram(),
    };
    for s in subscribers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.task).await;
        let st = &s.state;
        let expected = targets[s.org];
        let last = st.last.load(Ordering::SeqCst);
        let lost = st.missing.load(Ordering::SeqCst) + expected.saturating_sub(last);
        let doubled = st.doubled.load(Ordering::SeqCst);
        report.changes += st.changes.load(Ordering::SeqCst);
        report.lost += lost;
        report.doubled += doubled;
        report.reconnects += st.reconnects.load(Ordering::SeqCst);
        report.retried_503 += st.retried_503.load(Ordering::SeqCst);
        let errors = st.errors.lock().unwrap().clone();
        ctx.violation("stream_lost", lost, || {
            format!(
                "org #{}: subscriber missed {lost} of {expected} events (last seq {last}); {errors:?}",
                s.org
            )
        });
        ctx.violation("stream_doubled", doubled, || {
            format!("org #{}: subscriber got {doubled} events twice", s.org)
        });
        if let Some(h) = st.latency.lock().unwrap().take() {
            let _ = report.latency.add(&h);
        }
    }
    Some(report)
}
