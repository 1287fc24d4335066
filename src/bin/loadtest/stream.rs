//! Stream subscribers: each holds `GET /v1/stream` open for one org, checks
//! that it sees every `seq` once and in order (reconnecting with
//! `Last-Event-ID` when dropped), and measures how long each change took
//! from the sending of the webhook that caused it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;
use testkit::sse::{Frame, Parser};
use tokio::sync::{oneshot, watch};

use crate::new_histogram;

/// Action id → when the first webhook that records it was sent.
pub type SendTimes = Arc<Mutex<HashMap<String, Instant>>>;

/// What one subscriber saw; read by the main task at the end.
#[derive(Default)]
pub struct SubscriberState {
    /// Highest `seq` seen (snapshot or change).
    pub last: AtomicU64,
    pub changes: AtomicU64,
    pub doubled: AtomicU64,
    /// Seqs skipped (a jump, or a snapshot in place of missed events).
    pub missing: AtomicU64,
    pub reconnects: AtomicU64,
    pub retried_503: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    pub latency: Mutex<Option<Histogram<u64>>>,
}

pub struct Subscriber {
    pub org: usize,
    pub state: Arc<SubscriberState>,
    pub task: tokio::task::JoinHandle<()>,
}

pub struct StreamConfig {
    pub client: reqwest::Client,
    pub url: String,
    pub send_times: SendTimes,
    pub stop: watch::Receiver<bool>,
}

/// Starts a subscriber; `ready` fires with the first snapshot's seq (or an error).
pub fn spawn(
    org: usize,
    config: Arc<StreamConfig>,
    ready: oneshot::Sender<Result<u64, String>>,
) -> Subscriber {
    let state = Arc::new(SubscriberState::default());
    let task = tokio::spawn(run(config, state.clone(), ready));
    Subscriber { org, state, task }
}

async fn run(
    config: Arc<StreamConfig>,
    state: Arc<SubscriberState>,
    ready: oneshot::Sender<Result<u64, String>>,
) {
    let mut ready = Some(ready);
    let mut latency = new_histogram();
    let mut stop = config.stop.clone();
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut req = config.client.get(&config.url);
        if ready.is_none() {
            req = req.header(
                "Last-Event-ID",
                state.last.load(Ordering::SeqCst).to_string(),
            );
        }
        let response = tokio::select! {
            r = req.send() => r,
            _ = stop.changed() => break,
        };
        let mut response = match response {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                let msg = format!("stream answered {status}: {}", truncate(&body, 200));
                // 503 (busy, or the store is slow) is retried like a
                // browser's EventSource would; anything else is final.
                if status != 503 || failures >= 20 {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(msg));
                        return;
                    }
                }
                state.retried_503.fetch_add(1, Ordering::SeqCst);
                note(&state, msg);
                failures += 1;
                if failures > 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                continue;
            }
            Err(e) => {
                let msg = format!("stream connection failed: {e}");
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(msg));
                    return;
                }
                note(&state, msg);
                failures += 1;
                if failures > 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
                continue;
            }
        };
        failures = 0;
        let mut parser = Parser::default();
        loop {
            let chunk = tokio::select! {
                c = response.chunk() => c,
                _ = stop.changed() => {
                    store_latency(&state, latency);
                    return;
                }
            };
            let bytes = match chunk {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => {
                    note(&state, format!("stream read failed: {e}"));
                    break;
                }
            };
            match parser.push(&bytes) {
                Ok(frames) => {
                    for frame in frames.into_iter().filter(|f| !f.is_comment()) {
                        on_event(&config, &state, &mut latency, &mut ready, frame);
                    }
                }
                Err(e) => {
                    note(&state, format!("stream is not UTF-8: {e}"));
                    break;
                }
            }
        }
        if *stop.borrow() {
            break;
        }
        // Dropped (e.g. too slow): resume after the last seq seen.
        state.reconnects.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err("stopped before the first snapshot".into()));
    }
    store_latency(&state, latency);
}

fn store_latency(state: &SubscriberState, latency: Histogram<u64>) {
    *state.latency.lock().unwrap() = Some(latency);
}

fn note(state: &SubscriberState, msg: String) {
    let mut errors = state.errors.lock().unwrap();
    if errors.len() < 5 {
        errors.push(msg);
    }
}

fn on_event(
    config: &StreamConfig,
    state: &SubscriberState,
    latency: &mut Histogram<u64>,
    ready: &mut Option<oneshot::Sender<Result<u64, String>>>,
    event: Frame,
) {
    let received = Instant::now();
    let Some(seq) = event
        .id
        .as_deref()
        .and_then(|id| id.trim().parse::<u64>().ok())
    else {
        note(
            state,
            format!("stream event without a numeric id: {:?}", event.event()),
        );
        return;
    };
    let last = state.last.load(Ordering::SeqCst);
    match event.event() {
        "org.entitlements.snapshot" => {
            if let Some(tx) = ready.take() {
                state.last.store(seq, Ordering::SeqCst);
                let _ = tx.send(Ok(seq));
                return;
            }
            // A reconnect that could not be replayed: the events between
            // are gone for this subscriber.
            if seq > last {
                state.missing.fetch_add(seq - last, Ordering::SeqCst);
                state.last.store(seq, Ordering::SeqCst);
            }
        }
        "org.entitlements.changed" | "org.payment.failed" => {
            state.changes.fetch_add(1, Ordering::SeqCst);
            if seq <= last {
                state.doubled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if seq > last + 1 {
                state.missing.fetch_add(seq - last - 1, Ordering::SeqCst);
            }
            state.last.store(seq, Ordering::SeqCst);
            let action_id = serde_json::from_str::<Value>(event.data.as_deref().unwrap_or(""))
                .ok()
                .and_then(|v| v["actionId"].as_str().map(str::to_owned));
            let sent = action_id.and_then(|id| config.send_times.lock().unwrap().get(&id).copied());
            if let Some(sent) = sent {
                let us = received.saturating_duration_since(sent).as_micros() as u64;
                latency.saturating_record(us.max(1));
            }
        }
        other => note(state, format!("unexpected stream event `{other}`")),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
