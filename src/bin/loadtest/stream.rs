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
use tokio::sync::{oneshot, watch};

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
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
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
        let mut parser = SseParser::default();
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
            for event in parser.push(&bytes) {
                on_event(&config, &state, &mut latency, &mut ready, event);
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
    event: SseEvent,
) {
    let received = Instant::now();
    let Some(seq) = event
        .id
        .as_deref()
        .and_then(|id| id.trim().parse::<u64>().ok())
    else {
        note(
            state,
            format!("stream event without a numeric id: {:?}", event.event),
        );
        return;
    };
    let last = state.last.load(Ordering::SeqCst);
    match event.event.as_str() {
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
            let action_id = serde_json::from_str::<Value>(&event.data)
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

#[derive(Debug, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental `text/event-stream` parser (lines end in LF or CRLF).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if self.has_data || !event.event.is_empty() {
                    events.push(event);
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.current.event = value.to_owned(),
                "id" => self.current.id = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        self.buffer.drain(..start);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_events_and_comments() {
        let mut p = SseParser::default();
        assert!(p
            .push(b": keep-alive\n\nevent: org.entitlements.snap")
            .is_empty());
        let events =
            p.push(b"shot\r\nid: 0\ndata: {\"seq\":0}\n\nid: 1\nevent: x\ndata: a\ndata: b\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "org.entitlements.snapshot".into(),
                    id: Some("0".into()),
                    data: "{\"seq\":0}".into()
                },
                SseEvent {
                    event: "x".into(),
                    id: Some("1".into()),
                    data: "a\nb".into()
                }
            ]
        );
    }
}
