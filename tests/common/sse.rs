//! A small SSE client for the tests: frames, reads bounded in time, and
//! the stream request with a token or `Last-Event-ID`.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::TestApp;

/// One frame of the event stream (the lines up to a blank line).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comments: Vec<String>,
}

impl Frame {
    pub fn is_comment(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none()
    }

    pub fn event(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    pub fn id(&self) -> u64 {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("frame without id: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("frame id is not a number: {self:?}"))
    }

    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("frame without data: {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .json()
            .as_object()
            .unwrap_or_else(|| panic!("data is not an object: {self:?}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

pub fn parse_frame(text: &str) -> Frame {
    let mut frame = Frame::default();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comments.push(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => {
                frame.data = Some(match frame.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_owned(),
                })
            }
            _ => {} // `retry` and unknown fields are not used here
        }
    }
    frame
}

pub type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// What a read of the stream gave.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The server closed the body.
    End,
    /// Nothing within the time asked for.
    Timeout,
}

pub struct SseClient {
    body: Body,
    buf: Vec<u8>,
    ended: bool,
}

/// How long a read waits for something that must come.
pub const MUST_ARRIVE: Duration = Duration::from_secs(10);

impl SseClient {
    pub fn from_response(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200, "stream answered {}", res.status());
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type is {content_type:?}"
        );
        SseClient {
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next frame, the end of the body, or a timeout.
    pub async fn read(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.take_frame() {
                return Read::Frame(frame);
            }
            if self.ended {
                assert!(
                    self.buf.iter().all(|b| b.is_ascii_whitespace()),
                    "body ended inside a frame: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return Read::End;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Read::Timeout,
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                // A reset connection counts as the end of the body.
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    pub fn take_frame(&mut self) -> Option<Frame> {
        // Normalise CRLF, then split on the first blank line.
        if self.buf.contains(&b'\r') {
            let text = String::from_utf8_lossy(&self.buf).replace("\r\n", "\n");
            self.buf = text.into_bytes();
        }
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
        let text = std::str::from_utf8(&raw[..end]).expect("stream is UTF-8");
        Some(parse_frame(text))
    }

    /// The next event (comments skipped); panics on end or timeout.
    pub async fn next_event(&mut self) -> Frame {
        self.next_event_within(MUST_ARRIVE).await
    }

    pub async fn next_event_within(&mut self, within: Duration) -> Frame {
        match self.try_next_event(within).await {
            Read::Frame(f) => f,
            other => panic!("expected an event within {within:?}, got {other:?}"),
        }
    }

    /// The next event (comments skipped), the end, or a timeout.
    pub async fn try_next_event(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Frame(f) if f.is_comment() => continue,
                other => return other,
            }
        }
    }

    /// Asserts that no event arrives for `quiet` (comments are fine).
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        match self.try_next_event(quiet).await {
            Read::Timeout => {}
            other => panic!("expected no event for {quiet:?}, got {other:?}"),
        }
    }

    /// Events until the body ends; panics if it does not end within `within`.
    pub async fn events_until_end(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_next_event(left).await {
                Read::Frame(f) => events.push(f),
                Read::End => return events,
                Read::Timeout => panic!(
                    "the stream did not end within {within:?} (got {} events)",
                    events.len()
                ),
            }
        }
    }
}

pub fn stream_client() -> reqwest::Client {
    // No overall timeout: a stream outlives any one request's budget. Each
    // read is bounded instead.
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Sends the stream request; the response is not yet checked.
pub async fn request_stream(
    app: &TestApp,
    bearer: Option<&str>,
    query_token: Option<&str>,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut url = app.url("/v1/stream");
    if let Some(t) = query_token {
        url = format!("{url}?access_token={t}");
    }
    let mut req = stream_client()
        .get(url)
        .header("Accept", "text/event-stream");
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    tokio::time::timeout(MUST_ARRIVE, req.send())
        .await
        .expect("stream headers within 10s")
        .expect("stream request")
}

/// A stream for `org` with the Authorization header.
pub async fn open(app: &TestApp, org: &str) -> SseClient {
    SseClient::from_response(request_stream(app, Some(&app.token(org)), None, None).await)
}

/// A stream for `org` resuming after `last_event_id`.
pub async fn resume(app: &TestApp, org: &str, last_event_id: &str) -> SseClient {
    SseClient::from_response(
        request_stream(app, Some(&app.token(org)), None, Some(last_event_id)).await,
    )
}
